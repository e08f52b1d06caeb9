//! Overlapping holders and token order, per key.

use std::collections::BTreeMap;

use super::windows::Windows;
use super::{EndKind, Finding, History, OverlapClass, Section, Tally, ViolationKind};
use crate::clock;
use crate::history::Outcome;
use crate::schedule::{DataLost, SCRIPT_TOKEN_SLACK_US};

/// When the backend server lost locks: which keys (`None`: all), from when to when (wall ns).
#[derive(Debug, Clone)]
pub struct DataLoss {
    /// The fault that lost them (its label).
    pub fault: String,
    /// The keys it lost; `None`: every key.
    pub keys: Option<Vec<String>>,
    /// When the loss began (the server killed, the delete sent, the failover asked for).
    pub start: i64,
    /// Locks (by fencing token) the old primary held after a failover began, until it was
    /// demoted: lost with it too.
    pub granted_after_start: Vec<u64>,
    /// The scripts the old primary ran meanwhile: (server µs, key). A lock whose token is
    /// within [`SCRIPT_TOKEN_SLACK_US`] of one on its key was granted by it.
    pub scripts: Vec<(i64, String)>,
}

impl DataLoss {
    /// Whether the old primary granted the lock with `token` on `key` after the loss began.
    fn granted_by_old_primary(&self, key: &str, token: u64) -> bool {
        self.granted_after_start.contains(&token)
            || i64::try_from(token).is_ok_and(|token| {
                self.scripts.iter().any(|(at, k)| k == key && (at - token).abs() <= SCRIPT_TOKEN_SLACK_US)
            })
    }
}

impl DataLoss {
    /// Every loss of data in `history`'s faults.
    pub fn of(history: &History) -> Vec<DataLoss> {
        history
            .faults
            .iter()
            .filter(|f| f.skipped.is_none())
            .filter_map(|f| {
                let keys = match f.data_lost.as_ref()? {
                    DataLost::EveryKey => None,
                    DataLost::Keys(keys) => Some(keys.clone()),
                };
                Some(DataLoss {
                    fault: f.label.clone(),
                    keys,
                    start: f.start.wall,
                    granted_after_start: f.granted_by_old_primary.clone(),
                    scripts: f.old_primary_scripts.clone(),
                })
            })
            .collect()
    }

    fn covers(&self, key: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key))
    }
}

/// Find every overlap (judged by [`classify`]) and every token that does not rise.
pub(super) fn check(history: &History, sections: &[Section], windows: &Windows, tally: &mut Tally) {
    let losses = DataLoss::of(history);
    let mut by_key: BTreeMap<&str, Vec<&Section>> = BTreeMap::new();
    for s in sections {
        by_key.entry(s.key.as_str()).or_default().push(s);
    }
    for (key, list) in &mut by_key {
        list.sort_by_key(|s| (s.enter, s.worker, s.op));
        // Overlaps: every earlier section still running when a later one entered. `running`
        // holds the sections entered so far that had not ended at the latest entry.
        let mut running: Vec<&Section> = Vec::new();
        for later in list.iter() {
            running.retain(|earlier| earlier.end > later.enter);
            for earlier in &running {
                let row = windows.row_of(later.enter);
                let class = classify(earlier, later, &losses);
                let detail = format!(
                    "{} entered at {:.3}s while {} (entered {:.3}s) still ran until {:.3}s",
                    later.label(),
                    windows.secs(later.enter),
                    earlier.label(),
                    windows.secs(earlier.enter),
                    windows.secs(earlier.end),
                );
                let finding = |kind, detail| Finding {
                    kind,
                    key: Some((*key).to_owned()),
                    row,
                    at_s: windows.secs(later.enter),
                    detail,
                };
                match class {
                    OverlapClass::LostBeforeDeadline => {
                        tally.rows[row].lost_before_deadline += 1;
                        tally.excused.push(finding(
                            ViolationKind::Overlap,
                            format!("{detail}; excused: told Lost before its lease could have ended"),
                        ));
                    }
                    OverlapClass::FrozenHolder => {
                        tally.rows[row].frozen_holders += 1;
                        tally.excused.push(finding(
                            ViolationKind::Overlap,
                            format!(
                                "{detail}; excused: its process was frozen and did nothing after its lease"
                            ),
                        ));
                    }
                    OverlapClass::LostWithServerData { fault } => {
                        tally.rows[row].lost_with_server_data += 1;
                        tally.excused.push(finding(
                            ViolationKind::Overlap,
                            format!(
                                "{detail}; excused: its key was lost with the server's data ({fault}) while it ran within its lease, and the other was granted the key after that"
                            ),
                        ));
                    }
                    OverlapClass::Violation { reason } => {
                        tally.rows[row].overlaps += 1;
                        tally.offending.insert((earlier.worker, earlier.op));
                        tally.offending.insert((later.worker, later.op));
                        tally.violations.push(finding(ViolationKind::Overlap, format!("{detail}: {reason}")));
                    }
                }
            }
            running.push(later);
        }
        // Token order: each token greater than that of every section entered before it —
        // where that order is certain: the earlier one entered before the later one's granting
        // call was sent (two holders at once can be granted in one order and enter in the
        // other; that is an overlap, counted above). Not only the one just before: a section
        // whose order is uncertain must not hide a regression past it.
        // `top[i]`: the section of highest token among `list[..=i]`.
        let mut top: Vec<usize> = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let best = match top.last() {
                Some(&j) if list[j].token >= s.token => j,
                _ => i,
            };
            top.push(best);
        }
        for (i, next) in list.iter().enumerate() {
            let sent = next.granted_after.unwrap_or(next.enter);
            let certain = list[..i].partition_point(|s| s.enter <= sent);
            let Some(prev) = certain.checked_sub(1).map(|c| list[top[c]]) else { continue };
            if next.token <= prev.token {
                let row = windows.row_of(next.enter);
                tally.rows[row].token_regressions += 1;
                tally.violations.push(Finding {
                    kind: ViolationKind::TokenRegression,
                    key: Some((*key).to_owned()),
                    row,
                    at_s: windows.secs(next.enter),
                    detail: format!(
                        "{} entered after {} with token {} ≤ {}",
                        next.label(),
                        prev.label(),
                        next.token,
                        prev.token
                    ),
                });
            }
        }
    }
}

/// Judge an overlap of `earlier` (still running) with `later` (entered meanwhile), knowing
/// when the server lost data (`losses`).
///
/// In this order: told `Lost` in time (**lost before deadline**); frozen by the checker and
/// inactive after its lease (**frozen holder**); the server lost the key while `earlier` held
/// it (entered by the time the loss began, or its lock was one the old primary held after a
/// failover by command began) and `later` was granted it after the loss began, and `earlier` ended within its
/// lease (**lost with the server's data**: nobody could have told it in time — a holder learns
/// of the loss at its next renewal, or when its process hears of the failover, and a section
/// may end before that). Everything else is a violation; a holder
/// that ran past its lease is one even when the server lost its key.
pub fn classify(earlier: &Section, later: &Section, losses: &[DataLoss]) -> OverlapClass {
    let within_lease = earlier.lease_end.is_some_and(|lease_end| earlier.end <= lease_end);
    if earlier.told_lost() && within_lease {
        return OverlapClass::LostBeforeDeadline;
    }
    let cutoff = earlier.lease_end.unwrap_or(later.enter);
    let acted_after = earlier.steps.iter().any(|(_, at)| *at > cutoff);
    // Only a freeze that began before the other's grant was known can have let it in: a holder
    // frozen after the key was handed to another held it with the other already.
    let frozen_first =
        earlier.frozen_from.is_some_and(|from| from <= later.granted_by.unwrap_or(later.enter));
    if earlier.paused && frozen_first && !acted_after {
        return OverlapClass::FrozenHolder;
    }
    let loss = losses.iter().find(|loss| {
        loss.covers(&earlier.key)
            && (earlier.enter <= loss.start || loss.granted_by_old_primary(&earlier.key, earlier.token))
            && later.granted_by.is_some_and(|granted| granted >= loss.start)
    });
    if let Some(loss) = loss
        && within_lease
        && earlier.end_kind != EndKind::Unfinished
    {
        return OverlapClass::LostWithServerData { fault: loss.fault.clone() };
    }
    let mut reason = match (&earlier.outcome, earlier.end_kind) {
        (_, EndKind::Killed) => "its process was killed only after the other entered".to_owned(),
        (_, EndKind::Unfinished) => "its end was never recorded".to_owned(),
        (Some(Outcome::Lost { reason }), _) => match earlier.lease_end {
            Some(lease_end) => format!(
                "it was told Lost ({reason}) only {:.1} ms after its lease could have ended",
                clock::ms(earlier.end - lease_end)
            ),
            None => format!("it was told Lost ({reason}), but its lease is not in the history"),
        },
        (Some(outcome), _) => format!("it was never told Lost (its call ended {})", outcome_text(outcome)),
        (None, _) => "its call never returned".to_owned(),
    };
    if earlier.paused && !frozen_first {
        reason.push_str("; its process was frozen only after the other had been granted the key");
    } else if earlier.paused {
        reason.push_str("; its process had been frozen, and it acted again after its lease ended");
    }
    if let Some(loss) = loss {
        reason
            .push_str(&format!("; the server had lost its key ({}), but it ran past its lease", loss.fault));
    }
    OverlapClass::Violation { reason }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok => "Ok".into(),
        Outcome::Timeout => "Timeout".into(),
        Outcome::Lost { reason } => format!("Lost ({reason})"),
        Outcome::LostAtRelease => "Ok, but release said the lock was no longer its own".into(),
        Outcome::Backend { msg } => format!("with a backend error: {msg}"),
        Outcome::Failed { msg } => format!("with an error: {msg}"),
    }
}
