//! Sections rebuilt from a worker's events: when each entered and ended, how, with which
//! token — and, from the backend calls the recording wrapper saw, its owner, the earliest
//! moment its lease could have ended, and when the call that granted it was sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{EndKind, History, Section};
use crate::backends::HANDOFF_LEASE;
use crate::history::{CallKind, CallResult, Event, Mode, OpId, Outcome, WorkerId};

/// Rebuild every section from the events, with its lease end.
pub(super) fn build(history: &History) -> Vec<Section> {
    let mut pauses: HashMap<WorkerId, Vec<(i64, i64)>> = HashMap::new();
    for fault in &history.faults {
        for w in &fault.paused_workers {
            pauses.entry(*w).or_default().push((fault.start.wall, fault.end.wall));
        }
    }
    let ttl_ns = duration_ns(history.ttl);
    let mut sections = Vec::new();
    for worker in &history.workers {
        let leases = Leases::new(&worker.events, ttl_ns);
        let mut open: BTreeMap<OpId, Section> = BTreeMap::new();
        let mut invokes: HashMap<OpId, (u32, String, Mode, bool)> = HashMap::new();
        let mut done: HashMap<OpId, Outcome> = HashMap::new();
        for event in &worker.events {
            match event {
                Event::Invoke { op, task, key, mode, long, .. } => {
                    invokes.insert(*op, (*task, key.clone(), *mode, *long));
                }
                Event::Enter { op, token, at } => {
                    let Some((task, key, mode, long)) = invokes.get(op).cloned() else { continue };
                    open.insert(
                        *op,
                        Section {
                            worker: worker.worker,
                            op: *op,
                            task,
                            key,
                            mode,
                            long,
                            enter: at.wall,
                            end: i64::MAX,
                            end_kind: EndKind::Unfinished,
                            token: *token,
                            outcome: None,
                            lease_end: None,
                            granted_after: None,
                            granted_by: None,
                            paused: false,
                            frozen_from: None,
                            steps: Vec::new(),
                        },
                    );
                }
                Event::StepStart { op, step, at } => {
                    if let Some(s) = open.get_mut(op) {
                        s.steps.push((*step, at.wall));
                    }
                }
                Event::BodyEnd { op, at } => {
                    if let Some(s) = open.get_mut(op) {
                        s.end = at.wall;
                        s.end_kind = EndKind::Returned;
                    }
                }
                Event::Done { op, outcome, .. } => {
                    done.insert(*op, outcome.clone());
                }
                _ => {}
            }
        }
        let gone = worker.killed.or(worker.exited).map_or(history.run_end.wall, |s| s.wall);
        for (op, mut s) in open {
            s.outcome = done.remove(&op);
            if s.end_kind != EndKind::Returned {
                s.end = gone.max(s.enter);
                if worker.killed.is_some() {
                    s.end_kind = EndKind::Killed;
                }
            }
            s.lease_end = leases.lease_end(&s.key, s.token, s.end);
            s.granted_after = leases.granted_after.get(&(s.key.clone(), s.token)).copied();
            s.granted_by = leases.granted_by.get(&(s.key.clone(), s.token)).copied();
            s.frozen_from = pauses.get(&worker.worker).and_then(|list| {
                list.iter().filter(|&&(from, to)| from < s.end && to > s.enter).map(|&(from, _)| from).min()
            });
            s.paused = s.frozen_from.is_some();
            sections.push(s);
        }
    }
    sections
}

pub(super) fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One worker's backend calls, to find each section's owner and lease.
struct Leases {
    /// (key, token) → owner.
    owner_of: HashMap<(String, u64), String>,
    /// (key, token) → when the call that granted it was sent.
    granted_after: HashMap<(String, u64), i64>,
    /// (key, token) → when the grant was known: the granting call returned, or the notice
    /// came.
    granted_by: HashMap<(String, u64), i64>,
    /// (key, owner) → every (sent, lease length) that gave or confirmed its lease.
    confirmed: HashMap<(String, String), Vec<(i64, i64)>>,
}

impl Leases {
    fn new(events: &[Event], ttl_ns: i64) -> Self {
        let mut owner_of = HashMap::new();
        let mut granted_after = HashMap::new();
        let mut granted_by = HashMap::new();
        let mut confirmed: HashMap<(String, String), Vec<(i64, i64)>> = HashMap::new();
        // (key, owner) → when its attempts were sent, in order.
        let mut attempts: HashMap<(String, String), Vec<i64>> = HashMap::new();
        for event in events {
            match event {
                Event::Call { key, owner, call, ttl_ms, sent, returned, result } => {
                    let ttl =
                        ttl_ms.map_or(ttl_ns, |ms| i64::try_from(ms).unwrap_or(i64::MAX / 2) * 1_000_000);
                    let id = (key.clone(), owner.clone());
                    match (call, result) {
                        (CallKind::Acquire, CallResult::Acquired { token }) => {
                            owner_of.insert((key.clone(), *token), owner.clone());
                            granted_after.insert((key.clone(), *token), sent.wall);
                            granted_by.insert((key.clone(), *token), returned.wall);
                            confirmed.entry(id.clone()).or_default().push((sent.wall, ttl));
                            attempts.entry(id).or_default().push(sent.wall);
                        }
                        (CallKind::Acquire, _) => attempts.entry(id).or_default().push(sent.wall),
                        (CallKind::Renew, CallResult::True) => {
                            confirmed.entry(id).or_default().push((sent.wall, ttl))
                        }
                        _ => {}
                    }
                }
                Event::Granted { key, owner, token, at } => {
                    let id = (key.clone(), owner.clone());
                    // A notice for an owner of another process: not ours to track.
                    let Some(sent) = attempts.get(&id).and_then(|a| a.iter().rev().find(|&&t| t <= at.wall))
                    else {
                        continue;
                    };
                    owner_of.insert((key.clone(), *token), owner.clone());
                    granted_after.insert((key.clone(), *token), *sent);
                    granted_by.insert((key.clone(), *token), at.wall);
                    let lease = ttl_ns.min(duration_ns(HANDOFF_LEASE));
                    confirmed.entry(id).or_default().push((*sent, lease));
                }
                _ => {}
            }
        }
        Self { owner_of, granted_after, granted_by, confirmed }
    }

    /// The section's lease end: the latest `sent + lease` among its owner's confirmations
    /// sent before the body ended.
    fn lease_end(&self, key: &str, token: u64, body_end: i64) -> Option<i64> {
        let owner = self.owner_of.get(&(key.to_owned(), token))?;
        self.confirmed
            .get(&(key.to_owned(), owner.clone()))?
            .iter()
            .filter(|(sent, _)| *sent <= body_end)
            .map(|(sent, lease)| sent.saturating_add(*lease))
            .max()
    }
}
