//! The check: from the recorded history to per-fault counts and a list of violations.
//!
//! Per key:
//!
//! - **Overlaps.** Two sections overlap when the later one entered its body before the earlier
//!   one's body ended. The pair is *excused* in three cases, counted apart: the earlier holder
//!   was told `Lost` and its body ended before its lease could have ended (the backend let the
//!   other in early — it lost the key — and dlock stopped the holder in time: **lost before
//!   deadline**); the earlier holder's process was frozen by the checker (SIGSTOP) before the
//!   later one's grant was known, and started nothing after its lease ended (**frozen holder**: a paused process cannot be told anything,
//!   what matters is that it does not act once it runs again); or the server lost the key
//!   (`restart-server`, `drop-key`) while the earlier holder ran, the later one was granted the
//!   key after that, and the earlier one ended within its lease (**lost with the server's
//!   data**: at-most-one-holder holds only as long as the backend keeps its data, and a holder
//!   that ends before its next renewal cannot learn of the loss; the fenced store is what
//!   protects the data then). Every other overlap is a violation.
//! - **Token order.** Taken in the order the sections entered, each token is greater than every
//!   one before it — where that is the order the backend granted them: the earlier section entered
//!   before the call that granted the later one was sent.
//! - **Fenced store.** The fenced register lost no update: its final value equals the number of
//!   writes it applied (those reported `Ok`, plus any whose answer never came back), and every
//!   write reported `Ok` is among them. The unfenced counter's lost updates are counted the same
//!   way and shown, not judged.
//! - **Liveness.** After a fault ends, every key sees a new section enter within the recovery
//!   bound (ttl + 1 s by default) — counted from when a holder the fault did not disturb (its
//!   section spans the fault's end and finishes `Ok`) let go, if there was one — and every
//!   worker alive then gets an answer from the backend again (a call sent after the fault's end
//!   that does not fail) before the fault's window ends.
//!
//! Cross-process order uses the wall clock (all workers run on one machine); a wall clock that
//! stepped during the run makes the history unreliable, and the analysis says so.
//!
//! A section's lease end — the earliest moment the backend could have let another owner in
//! without losing data — comes from the backend calls the recording wrapper saw: the latest
//! acquire or confirmed renewal of the section's owner, `sent + ttl` (a key handed over by a
//! release: its owner's last attempt `+ min(ttl, HANDOFF_LEASE)`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{self, Stamp};
use crate::history::{Event, Mode, OpId, Outcome, StepKind, WorkerId};
use crate::registers::KeyStore;
use crate::schedule::FaultRecord;
pub use overlaps::{DataLoss, classify};
use windows::Windows;

/// A wall-clock step larger than this during a run makes cross-process order unreliable.
const CLOCK_STEP_TOLERANCE_NS: i64 = 50_000_000;

/// What one worker recorded, and what the coordinator knows about its process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerHistory {
    /// Its id.
    pub worker: WorkerId,
    /// When it was started.
    pub started: Option<Stamp>,
    /// When it was killed by a fault (reaped), if it was.
    pub killed: Option<Stamp>,
    /// When it exited otherwise, if it did before the end of the run.
    pub exited: Option<Stamp>,
    /// Its exit status, when it exited before it was told to stop.
    #[serde(default)]
    pub crashed: Option<String>,
    /// Its events, in the order written.
    pub events: Vec<Event>,
}

/// Everything the check looks at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// When the workload started.
    pub run_start: Stamp,
    /// When the workers were told to stop.
    pub run_end: Stamp,
    /// The lease every section asks for.
    pub ttl: Duration,
    /// How soon sections must resume after a fault ends.
    pub recovery_bound: Duration,
    /// The lock keys.
    pub keys: Vec<String>,
    /// Every worker, killed ones included.
    pub workers: Vec<WorkerHistory>,
    /// The faults, in order, skipped ones included.
    pub faults: Vec<FaultRecord>,
    /// The store at the end.
    pub store: BTreeMap<String, KeyStore>,
}

/// How a section's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndKind {
    /// It returned, or dlock dropped it.
    Returned,
    /// Its worker was killed inside it: it ended when the process was reaped.
    Killed,
    /// Its end was not recorded (the worker died otherwise, or the run ended first).
    Unfinished,
}

/// One section: a call whose body ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    /// The worker.
    pub worker: WorkerId,
    /// The call, numbered per worker.
    pub op: OpId,
    /// The task of the worker.
    pub task: u32,
    /// The key.
    pub key: String,
    /// Attribute or manual.
    pub mode: Mode,
    /// Thinks for longer than the ttl.
    pub long: bool,
    /// Body entered (wall ns).
    pub enter: i64,
    /// Body ended (wall ns).
    pub end: i64,
    /// How it ended.
    pub end_kind: EndKind,
    /// The fencing token.
    pub token: u64,
    /// The call's outcome, if it returned.
    pub outcome: Option<Outcome>,
    /// The earliest moment the backend could have let another owner in (wall ns).
    pub lease_end: Option<i64>,
    /// When the backend call that granted it was sent (wall ns): it was granted after this.
    pub granted_after: Option<i64>,
    /// When the grant was known (wall ns): the granting call returned, or the hand-off notice
    /// came. It was granted before this.
    #[serde(default)]
    pub granted_by: Option<i64>,
    /// Its worker was frozen by the checker while it ran.
    pub paused: bool,
    /// When the first freeze of its worker while it ran began (wall ns).
    #[serde(default)]
    pub frozen_from: Option<i64>,
    /// When each step was sent (wall ns).
    pub steps: Vec<(StepKind, i64)>,
}

impl Section {
    fn told_lost(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Lost { .. }))
    }

    fn label(&self) -> String {
        format!("w{}/t{} op {} token {}", self.worker, self.task, self.op, self.token)
    }
}

/// How an overlap is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OverlapClass {
    /// Told `Lost`, body ended before its lease could have ended: allowed.
    LostBeforeDeadline,
    /// Frozen by the checker, started nothing after its lease ended: allowed.
    FrozenHolder,
    /// The server lost the key (restarted empty, or the key deleted) while the earlier holder
    /// ran within its lease, and the later one was granted the key after that: allowed —
    /// at-most-one-holder holds only as long as the backend keeps its data; the fenced store
    /// is what protects the data then.
    LostWithServerData {
        /// The fault that lost the data (its label).
        fault: String,
    },
    /// A violation, and why.
    Violation {
        /// What the earlier holder did wrong.
        reason: String,
    },
}

/// What kind of rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// Two holders at once, not excused.
    Overlap,
    /// A token not greater than the one before it.
    TokenRegression,
    /// The fenced register lost an update.
    FencedLostUpdate,
    /// A fenced write reported `Ok` is not in the register's log.
    StoreLostWrite,
    /// A key saw no section within the recovery bound after a fault ended.
    Liveness,
    /// A worker got no answer from the backend between a fault's end and the end of its window.
    WorkerStalled,
}

/// One broken rule (or one excused overlap), with the evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// Which rule.
    pub kind: ViolationKind,
    /// The key, when it concerns one.
    pub key: Option<String>,
    /// The row (fault window) it falls in.
    pub row: usize,
    /// When, in seconds since the run started.
    pub at_s: f64,
    /// What happened, in words.
    pub detail: String,
}

/// The counts of one fault window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// `baseline`, or what the fault did.
    pub label: String,
    /// Why the fault was not applied.
    pub skipped: Option<String>,
    /// Something worth knowing about how the fault went.
    pub note: Option<String>,
    /// Window start, seconds since the run started.
    pub start_s: f64,
    /// Window end.
    pub end_s: f64,
    /// Sections entered in the window.
    pub sections: usize,
    /// Calls that returned `Ok` (this and the next four: counted where the call ended).
    pub ok: usize,
    /// Calls told `Lost`.
    pub lost: usize,
    /// Calls that timed out waiting.
    pub timeouts: usize,
    /// Calls that failed with a backend (or other) error.
    pub errors: usize,
    /// Sections whose worker was killed inside them (counted where it died).
    pub killed: usize,
    /// Overlaps that are violations.
    pub overlaps: usize,
    /// Overlaps excused: told `Lost` before the lease could have ended.
    pub lost_before_deadline: usize,
    /// Overlaps excused: the holder was frozen and did nothing after its lease.
    pub frozen_holders: usize,
    /// Overlaps excused: the server lost the key (`restart-server`, `drop-key`) while the
    /// holder ran within its lease.
    #[serde(default)]
    pub lost_with_server_data: usize,
    /// Tokens not greater than the one before.
    pub token_regressions: usize,
    /// Fenced writes reported `Ok`.
    pub fenced_writes: usize,
    /// Fenced reads and writes refused for a stale token.
    pub fenced_rejected: usize,
    /// Updates the fenced register lost.
    pub fenced_lost_updates: i64,
    /// Updates the unfenced counter lost.
    pub unfenced_lost_updates: i64,
    /// After the fault ended: how long until every key saw a section again (ms); `None` for the
    /// baseline, or when some key never did within the window. In the total: the slowest, and
    /// `None` when some key never recovered after some fault.
    pub recovery_ms: Option<f64>,
    /// Whether every key recovered within the bound (always true for the baseline).
    pub recovered: bool,
    /// Workers alive after the fault that got no answer from the backend before the window
    /// ended.
    pub stalled_workers: Vec<WorkerId>,
    /// Violations in this window.
    pub violations: usize,
}

/// The result of the check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    /// False when the history cannot be trusted (a clock step, a history file incomplete).
    pub valid: bool,
    /// Remarks about the run.
    pub notes: Vec<String>,
    /// The baseline, then one row per fault of the schedule.
    pub rows: Vec<Row>,
    /// All windows together.
    pub total: Row,
    /// Every violation.
    pub violations: Vec<Finding>,
    /// Every excused overlap.
    pub excused: Vec<Finding>,
    /// Every section, for the timelines (not in the JSON report).
    #[serde(skip)]
    pub sections: Vec<Section>,
    /// Sections in an overlap that is a violation: (worker, op).
    #[serde(skip)]
    pub offending: HashSet<(WorkerId, OpId)>,
    /// Where the fenced register and the counter lost updates: (key, wall ns, fenced?).
    #[serde(skip)]
    pub lost_update_marks: Vec<(String, i64, bool)>,
}

impl Analysis {
    /// Whether the check found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether the history is unreliable only because the machine's wall clock stepped during
    /// the run (an NTP step, a VM's clock sync): nothing is wrong with the lock or the run, and
    /// running again is the remedy.
    pub fn unreliable_only_for_a_clock_step(&self) -> bool {
        !self.valid
            && !self.notes.is_empty()
            && self.notes.iter().all(|note| note.starts_with(CLOCK_STEP_NOTE))
    }
}

/// How the note about a wall-clock step begins.
const CLOCK_STEP_NOTE: &str = "the wall clock stepped by";

/// What the checks add up, while they run.
pub(super) struct Tally {
    rows: Vec<Row>,
    violations: Vec<Finding>,
    excused: Vec<Finding>,
    offending: HashSet<(WorkerId, OpId)>,
    marks: Vec<(String, i64, bool)>,
    notes: Vec<String>,
}

/// Check `history`.
pub fn analyse(history: &History) -> Analysis {
    let windows = Windows::new(history);
    let mut tally = Tally {
        rows: windows.rows.iter().map(|w| w.row.clone()).collect(),
        violations: Vec::new(),
        excused: Vec::new(),
        offending: HashSet::new(),
        marks: Vec::new(),
        notes: Vec::new(),
    };
    let valid = trustworthy(history, &mut tally.notes);
    let sections = sections::build(history);
    // A run in which no body ran checked nothing: it must not pass.
    let valid = valid
        && {
            if sections.is_empty() {
                tally.notes.push(
                "no section entered its body during the run (every call failed or timed out): nothing was checked"
                    .into(),
            );
            }
            !sections.is_empty()
        };
    count_outcomes(history, &sections, &windows, &mut tally.rows);
    overlaps::check(history, &sections, &windows, &mut tally);
    store::check(history, &sections, &windows, &mut tally);
    liveness::check(history, &windows, &sections, &mut tally);

    let Tally { mut rows, mut violations, mut excused, offending, marks, notes } = tally;
    for finding in &violations {
        rows[finding.row].violations += 1;
    }
    violations.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    excused.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let total = total_row(&rows, &windows);
    Analysis { valid, notes, rows, total, violations, excused, sections, offending, lost_update_marks: marks }
}

/// Whether the history can be trusted: no wall-clock step, every worker's history complete,
/// no worker that died unasked. Says why not in `notes`.
fn trustworthy(history: &History, notes: &mut Vec<String>) -> bool {
    let mut valid = true;
    // Clocks and completeness.
    let stamps: Vec<&Stamp> =
        history.workers.iter().flat_map(|w| w.events.iter().filter_map(event_stamp)).collect();
    let step = clock::max_step(stamps.iter().copied().chain([&history.run_start, &history.run_end]));
    if step > CLOCK_STEP_TOLERANCE_NS {
        valid = false;
        notes.push(format!(
            "{CLOCK_STEP_NOTE} {:.1} ms relative to the monotonic clock during the run: cross-process order is unreliable; run again",
            clock::ms(step)
        ));
    }
    for worker in &history.workers {
        if let Some(status) = &worker.crashed {
            valid = false;
            notes.push(format!(
                "worker {} exited on its own ({status}) before the run ended: see history/worker-{}.log",
                worker.worker, worker.worker
            ));
        }
        // A worker that stopped on request says goodbye last. One that has not, and was
        // neither killed by a fault nor seen exiting on its own (it died while being stopped,
        // or had to be killed then), left sections whose end nobody knows.
        let said_bye = worker.events.iter().any(|e| matches!(e, Event::Bye { .. }));
        if !said_bye && worker.killed.is_none() && worker.crashed.is_none() {
            valid = false;
            notes.push(format!(
                "worker {} ended without saying goodbye, and no fault killed it: its history is incomplete (see history/worker-{}.log)",
                worker.worker, worker.worker
            ));
        }
        if worker.events.iter().any(|e| matches!(e, Event::Bye { complete: false, .. })) {
            valid = false;
            notes.push(format!(
                "worker {} could not write every event: its history is incomplete",
                worker.worker
            ));
        }
    }
    valid
}

/// Calls per outcome: those that never entered where they returned; sections where they
/// entered, and their outcome where they ended (a holder told Lost by a fault counts in that
/// fault's window).
fn count_outcomes(history: &History, sections: &[Section], windows: &Windows, rows: &mut [Row]) {
    for worker in &history.workers {
        let entered: HashSet<OpId> = worker
            .events
            .iter()
            .filter_map(|e| if let Event::Enter { op, .. } = e { Some(*op) } else { None })
            .collect();
        for event in &worker.events {
            if let Event::Done { op, outcome, at } = event {
                if entered.contains(op) {
                    continue;
                }
                let row = &mut rows[windows.row_of(at.wall)];
                match outcome {
                    Outcome::Timeout => row.timeouts += 1,
                    Outcome::Lost { .. } => row.lost += 1,
                    _ => row.errors += 1,
                }
            }
        }
    }
    for s in sections {
        rows[windows.row_of(s.enter)].sections += 1;
        let row = &mut rows[windows.row_of(s.end)];
        match &s.outcome {
            Some(Outcome::Ok) => row.ok += 1,
            Some(Outcome::Lost { .. } | Outcome::LostAtRelease) => row.lost += 1,
            Some(Outcome::Timeout) => row.timeouts += 1,
            Some(_) => row.errors += 1,
            None => {}
        }
        if s.end_kind == EndKind::Killed {
            row.killed += 1;
        }
    }
}

/// When an event happened (a backend call: when it was sent).
pub fn stamp_of(event: &Event) -> Option<Stamp> {
    event_stamp(event).copied()
}

fn event_stamp(event: &Event) -> Option<&Stamp> {
    match event {
        Event::Hello { at, .. }
        | Event::Invoke { at, .. }
        | Event::Enter { at, .. }
        | Event::StepStart { at, .. }
        | Event::StepEnd { at, .. }
        | Event::BodyEnd { at, .. }
        | Event::Done { at, .. }
        | Event::Granted { at, .. }
        | Event::Bye { at, .. } => Some(at),
        Event::Call { sent, .. } => Some(sent),
    }
}

fn total_row(rows: &[Row], windows: &Windows) -> Row {
    let mut total = Row {
        label: "total".into(),
        start_s: 0.0,
        end_s: windows.secs(windows.run_end),
        recovered: rows.iter().all(|r| r.recovered),
        ..Row::default()
    };
    for r in rows {
        total.sections += r.sections;
        total.ok += r.ok;
        total.lost += r.lost;
        total.timeouts += r.timeouts;
        total.errors += r.errors;
        total.killed += r.killed;
        total.overlaps += r.overlaps;
        total.lost_before_deadline += r.lost_before_deadline;
        total.frozen_holders += r.frozen_holders;
        total.lost_with_server_data += r.lost_with_server_data;
        total.token_regressions += r.token_regressions;
        total.fenced_writes += r.fenced_writes;
        total.fenced_rejected += r.fenced_rejected;
        total.fenced_lost_updates += r.fenced_lost_updates;
        total.unfenced_lost_updates += r.unfenced_lost_updates;
        total.violations += r.violations;
        for w in &r.stalled_workers {
            if !total.stalled_workers.contains(w) {
                total.stalled_workers.push(*w);
            }
        }
        if let Some(ms) = r.recovery_ms {
            total.recovery_ms = Some(total.recovery_ms.map_or(ms, |t: f64| t.max(ms)));
        }
    }
    // The slowest recovery of the run: a fault after which some key never recovered outlasts
    // every measured one.
    if rows.iter().any(|r| !r.recovered && r.recovery_ms.is_none()) {
        total.recovery_ms = None;
    }
    total
}

mod liveness;
mod overlaps;
mod sections;
mod store;
#[cfg(test)]
mod tests;
mod windows;
