//! The check on hand-made histories: each rule, on a history that keeps it and on one that
//! breaks it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::history::{CallKind, CallResult, Event, Mode, Outcome, StepKind, StepResult};
use crate::registers::{KeyStore, Landed, write_id};
use crate::schedule::{DataLost, FaultKind, FaultRecord, FaultSpec};

/// Milliseconds after the (made-up) start of the run.
fn at(ms: i64) -> Stamp {
    Stamp::at_wall(1_000_000_000_000 + ms * 1_000_000)
}

/// Builds one worker's events.
struct W {
    worker: WorkerId,
    events: Vec<Event>,
    killed: Option<Stamp>,
}

/// A section as the test describes it.
struct S {
    op: OpId,
    key: &'static str,
    token: u64,
    /// When the acquire call that granted it was sent.
    acquired: i64,
    enter: i64,
    /// `None`: the body's end was never recorded.
    end: Option<i64>,
    outcome: Option<Outcome>,
    /// Write steps sent at these times (after the two reads at `enter`).
    writes_at: Vec<i64>,
}

impl S {
    fn new(op: OpId, key: &'static str, token: u64, enter: i64, end: i64) -> Self {
        Self {
            op,
            key,
            token,
            acquired: enter - 1,
            enter,
            end: Some(end),
            outcome: Some(Outcome::Ok),
            writes_at: vec![end - 1],
        }
    }
    fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }
    fn lost(self) -> Self {
        self.outcome(Outcome::Lost { reason: "Refused".into() })
    }
    fn writes(mut self, at: &[i64]) -> Self {
        self.writes_at = at.to_vec();
        self
    }
    fn unfinished(mut self) -> Self {
        self.end = None;
        self.outcome = None;
        self
    }
}

impl W {
    fn new(worker: WorkerId) -> Self {
        Self { worker, events: vec![], killed: None }
    }

    fn owner(&self, op: OpId) -> String {
        format!("owner-{}-{op}", self.worker)
    }

    fn section(mut self, s: S) -> Self {
        let owner = self.owner(s.op);
        self.events.push(Event::Invoke {
            op: s.op,
            task: 0,
            key: s.key.into(),
            mode: Mode::Attribute,
            long: false,
            at: at(s.acquired),
        });
        self.events.push(Event::Call {
            key: s.key.into(),
            owner,
            call: CallKind::Acquire,
            ttl_ms: Some(1000),
            sent: at(s.acquired),
            returned: at(s.acquired),
            result: CallResult::Acquired { token: s.token },
        });
        self.events.push(Event::Enter { op: s.op, token: s.token, at: at(s.enter) });
        self.events.push(Event::StepStart { op: s.op, step: StepKind::FencedRead, at: at(s.enter) });
        for &w in &s.writes_at {
            self.events.push(Event::StepStart { op: s.op, step: StepKind::FencedWrite, at: at(w) });
        }
        if let Some(end) = s.end {
            self.events.push(Event::BodyEnd { op: s.op, at: at(end) });
        }
        if let Some(outcome) = s.outcome {
            self.events.push(Event::Done { op: s.op, outcome, at: at(s.end.unwrap_or(s.enter)) });
        }
        self
    }

    fn renew(mut self, op: OpId, key: &str, sent: i64, ok: bool) -> Self {
        self.events.push(Event::Call {
            key: key.into(),
            owner: self.owner(op),
            call: CallKind::Renew,
            ttl_ms: Some(1000),
            sent: at(sent),
            returned: at(sent + 1),
            result: if ok { CallResult::True } else { CallResult::False },
        });
        self
    }

    fn killed_at(mut self, ms: i64) -> Self {
        self.killed = Some(at(ms));
        self
    }

    fn done(mut self) -> WorkerHistory {
        // A worker that was not killed stopped on request, and said goodbye last.
        if self.killed.is_none() && !self.events.iter().any(|e| matches!(e, Event::Bye { .. })) {
            let last = self.events.iter().filter_map(stamp_of).max_by_key(|s| s.wall).unwrap_or(at(0));
            self.events.push(Event::Bye { complete: true, at: last });
        }
        WorkerHistory {
            worker: self.worker,
            started: Some(at(0)),
            killed: self.killed,
            exited: None,
            crashed: None,
            events: self.events,
        }
    }
}

fn history(workers: Vec<WorkerHistory>, end_ms: i64) -> History {
    History {
        run_start: at(0),
        run_end: at(end_ms),
        ttl: Duration::from_secs(1),
        recovery_bound: Duration::from_secs(2),
        keys: vec!["k".into()],
        workers,
        faults: vec![],
        store: BTreeMap::new(),
    }
}

fn fault(kind: FaultKind, start: i64, end: i64, paused: &[WorkerId]) -> FaultRecord {
    FaultRecord {
        spec: FaultSpec { kind, duration: None, delay: None },
        label: kind.name().into(),
        start: at(start),
        end: at(end),
        paused_workers: paused.to_vec(),
        cut_off_workers: Vec::new(),
        cut_off_keys: Vec::new(),
        killed_workers: vec![],
        note: None,
        skipped: None,
        data_lost: None,
        granted_by_old_primary: Vec::new(),
        old_primary_scripts: Vec::new(),
    }
}

/// A fault in which the server lost `lost` (restart-server: every key; drop-key: one).
fn losing(kind: FaultKind, start: i64, end: i64, lost: DataLost) -> FaultRecord {
    FaultRecord { data_lost: Some(lost), ..fault(kind, start, end, &[]) }
}

fn kinds(analysis: &Analysis) -> Vec<ViolationKind> {
    analysis.violations.iter().map(|v| v.kind).collect()
}

#[test]
fn sections_one_after_another_with_rising_tokens_pass() {
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 1, 10, 50)).section(S::new(1, "k", 3, 110, 150)).done(),
            W::new(1).section(S::new(0, "k", 2, 60, 100)).done(),
        ],
        200,
    );
    let a = analyse(&h);
    assert!(a.passed(), "{:?}", a.violations);
    assert!(a.valid);
    assert_eq!((a.total.sections, a.total.ok, a.total.overlaps), (3, 3, 0));
}

#[test]
fn an_overlap_whose_earlier_holder_finished_ok_is_a_violation() {
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 1, 10, 500)).done(),
            W::new(1).section(S::new(0, "k", 2, 200, 300)).done(),
        ],
        600,
    );
    let a = analyse(&h);
    assert_eq!(kinds(&a), [ViolationKind::Overlap]);
    assert_eq!(a.total.overlaps, 1);
    assert!(a.violations[0].detail.contains("never told Lost"), "{}", a.violations[0].detail);
    assert!(a.offending.contains(&(0, 0)) && a.offending.contains(&(1, 0)));
}

#[test]
fn an_earlier_holder_told_lost_before_its_lease_ended_is_excused() {
    // Acquired at 9 with a 1 s ttl: its lease could not end before 1009. Another entered at
    // 200 (the backend lost the key); it was told Lost and stopped at 400.
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 1, 10, 400).lost()).done(),
            W::new(1).section(S::new(0, "k", 2, 200, 300)).done(),
        ],
        600,
    );
    let a = analyse(&h);
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!((a.total.overlaps, a.total.lost_before_deadline), (0, 1));
    assert_eq!(a.excused.len(), 1);
}

#[test]
fn an_earlier_holder_told_lost_after_its_lease_ended_is_a_violation() {
    // Lease until 1009; the other entered at 1100 legitimately; the holder still ran until
    // 1300 before it was told.
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 1, 10, 1300).lost().writes(&[20])).done(),
            W::new(1).section(S::new(0, "k", 2, 1100, 1200)).done(),
        ],
        1500,
    );
    let a = analyse(&h);
    assert_eq!(kinds(&a), [ViolationKind::Overlap]);
    assert!(
        a.violations[0].detail.contains("291.0 ms after its lease could have ended"),
        "{}",
        a.violations[0].detail
    );
}

#[test]
fn a_confirmed_renewal_extends_the_lease_and_a_refused_one_does_not() {
    let base = |renewal_ok| {
        history(
            vec![
                W::new(0).section(S::new(0, "k", 1, 10, 1300).lost()).renew(0, "k", 600, renewal_ok).done(),
                W::new(1).section(S::new(0, "k", 2, 1200, 1250)).done(),
            ],
            1500,
        )
    };
    // Renewed at 600: the lease lasts until 1600, and 1300 is before that.
    let a = analyse(&base(true));
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!(a.total.lost_before_deadline, 1);
    // A refused renewal confirms nothing: the lease ended at 1009.
    let a = analyse(&base(false));
    assert_eq!(kinds(&a), [ViolationKind::Overlap]);
}

#[test]
fn a_key_handed_over_gets_its_lease_from_the_owners_last_attempt() {
    let mut w = W::new(0);
    let owner = w.owner(0);
    w.events.push(Event::Invoke {
        op: 0,
        task: 0,
        key: "k".into(),
        mode: Mode::Manual,
        long: false,
        at: at(0),
    });
    for sent in [0, 100] {
        w.events.push(Event::Call {
            key: "k".into(),
            owner: owner.clone(),
            call: CallKind::Acquire,
            ttl_ms: Some(1000),
            sent: at(sent),
            returned: at(sent + 1),
            result: CallResult::Held,
        });
    }
    w.events.push(Event::Granted { key: "k".into(), owner, token: 7, at: at(150) });
    w.events.push(Event::Enter { op: 0, token: 7, at: at(151) });
    w.events.push(Event::BodyEnd { op: 0, at: at(200) });
    let h = history(vec![w.done()], 300);
    let a = analyse(&h);
    // The hand-off lease is min(ttl, HANDOFF_LEASE) = 1 s from the last attempt (100 ms).
    assert_eq!(a.sections[0].lease_end, Some(at(1100).wall));
}

#[test]
fn a_frozen_holder_that_does_nothing_after_its_lease_is_excused_and_one_that_acts_is_not() {
    let run = |write_at: i64| {
        let mut h = history(
            vec![
                W::new(0).section(S::new(0, "k", 1, 10, 2100).lost().writes(&[write_at])).done(),
                W::new(1).section(S::new(0, "k", 2, 1100, 1200)).done(),
            ],
            3000,
        );
        h.faults = vec![fault(FaultKind::PauseWorker, 50, 2000, &[0])];
        analyse(&h)
    };
    // Its write was sent before the pause: nothing after its lease ended (1009).
    let a = run(40);
    assert!(a.violations.iter().all(|v| v.kind != ViolationKind::Overlap), "{:?}", a.violations);
    assert_eq!(a.total.frozen_holders, 1);
    // Resumed at 2000, it sent its write at 2050 before being stopped: a violation.
    let a = run(2050);
    assert!(a.violations.iter().any(|v| v.kind == ViolationKind::Overlap && v.detail.contains("frozen")));
}

#[test]
fn a_killed_holder_ends_when_its_process_is_gone() {
    let run = |other_enters: i64| {
        let h = history(
            vec![
                W::new(0).section(S::new(0, "k", 1, 10, 0).unfinished().writes(&[])).killed_at(500).done(),
                W::new(1).section(S::new(0, "k", 2, other_enters, other_enters + 50)).done(),
            ],
            2000,
        );
        analyse(&h)
    };
    let a = run(1100);
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!(a.total.killed, 1);
    let a = run(300);
    assert_eq!(kinds(&a), [ViolationKind::Overlap]);
    assert!(a.violations[0].detail.contains("killed only after"));
}

#[test]
fn tokens_that_do_not_rise_are_regressions() {
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 5, 10, 50)).section(S::new(1, "k", 5, 210, 250)).done(),
            W::new(1).section(S::new(0, "k", 3, 110, 150)).done(),
        ],
        300,
    );
    let a = analyse(&h);
    // In the order of entry: 5 (at 10), 3 (at 110, lower: a regression), 5 (at 210, higher
    // than 3, but not than the 5 handed out at 10: a regression too).
    assert_eq!(a.total.token_regressions, 2);
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 4, 10, 50)).done(),
            W::new(1).section(S::new(0, "k", 4, 110, 150)).done(),
        ],
        300,
    );
    assert_eq!(kinds(&analyse(&h)), [ViolationKind::TokenRegression], "equal tokens do not rise");
}

#[test]
fn two_holders_granted_in_one_order_and_entered_in_the_other_are_no_regression() {
    // Token 8's acquire was sent at 99, before token 9's holder entered at 100: the backend
    // may well have granted 8 first (two holders at once: the overlap is what is counted).
    let mut late = S::new(0, "k", 8, 101, 150);
    late.acquired = 99;
    let h = history(
        vec![W::new(0).section(S::new(0, "k", 9, 100, 140)).done(), W::new(1).section(late).done()],
        300,
    );
    let a = analyse(&h);
    assert_eq!(a.total.token_regressions, 0);
    assert_eq!(kinds(&a), [ViolationKind::Overlap]);
}

/// A store whose fenced log holds `values`, written by worker 0's ops 0, 1, ….
fn store(values: &[i64], counter: &[i64]) -> BTreeMap<String, KeyStore> {
    let log =
        |vs: &[i64]| vs.iter().enumerate().map(|(i, &v)| Landed { id: write_id(0, i as u64), v }).collect();
    let state = KeyStore {
        fenced_value: values.last().copied().unwrap_or(0),
        fenced_max: 9,
        fenced_log: log(values),
        counter_value: counter.last().copied().unwrap_or(0),
        counter_log: log(counter),
    };
    BTreeMap::from([("k".to_owned(), state)])
}

fn three_sections() -> WorkerHistory {
    W::new(0)
        .section(S::new(0, "k", 1, 10, 50))
        .section(S::new(1, "k", 2, 110, 150))
        .section(S::new(2, "k", 3, 210, 250))
        .done()
}

#[test]
fn a_fenced_register_that_lost_an_update_is_a_violation_an_unfenced_one_is_counted() {
    let mut h = history(vec![three_sections()], 300);
    h.store = store(&[1, 2, 3], &[1, 2, 2]);
    let a = analyse(&h);
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!((a.total.fenced_lost_updates, a.total.unfenced_lost_updates), (0, 1));
    // 1, 2, 3, then a write of 2 (it read 1): two updates gone.
    h.store = store(&[1, 2, 3, 2], &[1, 2, 3]);
    let a = analyse(&h);
    assert_eq!(a.total.fenced_lost_updates, 2);
    assert_eq!(kinds(&a), [ViolationKind::FencedLostUpdate]);
}

#[test]
fn a_write_reported_ok_that_the_store_does_not_have_is_a_violation() {
    let mut w = W::new(0).section(S::new(0, "k", 1, 10, 50));
    w.events.push(Event::StepEnd {
        op: 0,
        step: StepKind::FencedWrite,
        result: StepResult::Written,
        at: at(45),
    });
    let mut h = history(vec![w.done()], 300);
    h.store = store(&[], &[]);
    let a = analyse(&h);
    assert_eq!(kinds(&a), [ViolationKind::StoreLostWrite]);
    assert_eq!(a.total.fenced_writes, 1);
    h.store = store(&[1], &[]);
    assert!(analyse(&h).passed());
}

#[test]
fn sections_must_resume_within_the_bound_after_a_fault() {
    let run = |next_enter: i64| {
        let mut h = history(
            vec![
                W::new(0)
                    .section(S::new(0, "k", 1, 10, 50))
                    .section(S::new(1, "k", 2, next_enter, next_enter + 10))
                    .done(),
            ],
            6000,
        );
        h.faults = vec![fault(FaultKind::PauseServer, 100, 1000, &[])];
        analyse(&h)
    };
    let a = run(2500);
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!(a.rows[1].recovery_ms, Some(1500.0));
    let a = run(3500);
    assert_eq!(kinds(&a), [ViolationKind::Liveness]);
    assert!(!a.rows[1].recovered);
}

#[test]
fn a_key_that_never_recovers_is_the_slowest_recovery_of_the_run() {
    // The first fault's key is back 100 ms after it; after the second, no section ever enters.
    let mut h = history(
        vec![W::new(0).section(S::new(0, "k", 1, 10, 50)).section(S::new(1, "k", 2, 1100, 1150)).done()],
        6000,
    );
    h.faults =
        vec![fault(FaultKind::PauseServer, 500, 1000, &[]), fault(FaultKind::PauseServer, 2000, 2500, &[])];
    let a = analyse(&h);
    assert!(kinds(&a).contains(&ViolationKind::Liveness), "{:?}", a.violations);
    assert_eq!((a.rows[1].recovery_ms, a.rows[2].recovery_ms), (Some(100.0), None));
    assert!(!a.total.recovered);
    assert_eq!(a.total.recovery_ms, None, "the total's slowest recovery leaves out the one that never came");
}

#[test]
fn an_undisturbed_holder_across_the_faults_end_delays_the_recovery_clock() {
    // A section from 500 to 2600 that finishes Ok was not disturbed; the next one at 2700
    // came 100 ms after it let go.
    let mut h = history(
        vec![W::new(0).section(S::new(0, "k", 1, 500, 2600)).section(S::new(1, "k", 2, 2700, 2800)).done()],
        6000,
    );
    h.faults = vec![fault(FaultKind::PauseServer, 100, 1000, &[])];
    let a = analyse(&h);
    assert!(a.passed(), "{:?}", a.violations);
    assert_eq!(a.rows[1].recovery_ms, Some(100.0));
}

#[test]
fn a_worker_that_never_enters_again_is_stalled() {
    let mut h = history(
        vec![
            W::new(0).section(S::new(0, "k", 1, 10, 50)).section(S::new(1, "k", 3, 1200, 1300)).done(),
            W::new(1).section(S::new(0, "k", 2, 60, 90)).done(),
        ],
        5000,
    );
    h.faults = vec![fault(FaultKind::Blackhole, 1000, 1000, &[])];
    let a = analyse(&h);
    assert_eq!(kinds(&a), [ViolationKind::WorkerStalled]);
    assert_eq!(a.rows[1].stalled_workers, [1]);
}

#[test]
fn counts_land_in_the_window_of_their_fault() {
    let mut h = history(
        vec![
            W::new(0)
                .section(S::new(0, "k", 1, 10, 50))
                .section(S::new(1, "k", 2, 1500, 1550))
                .section(S::new(2, "k", 3, 1900, 2650).lost())
                .done(),
        ],
        4000,
    );
    h.faults =
        vec![fault(FaultKind::DropKey, 1000, 1000, &[]), fault(FaultKind::PauseServer, 2000, 2500, &[])];
    let a = analyse(&h);
    // The third section entered in the drop-key window and was told Lost in the pause's.
    let counts: Vec<(usize, usize, usize)> = a.rows.iter().map(|r| (r.sections, r.ok, r.lost)).collect();
    assert_eq!(counts, [(1, 1, 0), (2, 1, 0), (0, 0, 1)]);
    assert_eq!((a.rows[1].start_s, a.rows[1].end_s), (1.0, 2.0));
}

#[test]
fn a_stepped_wall_clock_makes_the_history_invalid() {
    let mut w = W::new(0).section(S::new(0, "k", 1, 10, 50));
    w.events.push(Event::Bye {
        complete: true,
        at: Stamp { wall: at(60).wall + 5_000_000_000, mono: at(60).mono },
    });
    let a = analyse(&history(vec![w.done()], 100));
    assert!(!a.valid);
    assert!(a.notes[0].contains("stepped"));
    assert!(a.unreliable_only_for_a_clock_step(), "running again is the remedy");
}

#[test]
fn a_worker_that_exited_on_its_own_makes_the_history_invalid() {
    let mut worker = W::new(0).section(S::new(0, "k", 1, 10, 0).unfinished().writes(&[])).done();
    worker.exited = Some(at(20));
    worker.crashed = Some("exit status: 101".into());
    let a = analyse(&history(vec![worker], 100));
    assert!(!a.valid);
    assert!(a.notes[0].contains("exited on its own (exit status: 101)"), "{:?}", a.notes);
    assert!(!a.unreliable_only_for_a_clock_step(), "a crashed worker is not the clock's doing");
    // Its open section ends with its last sign of life, not with the run.
    assert_eq!(a.sections[0].end, at(20).wall);
}

/// Worker 0 holds `k` from 10 (lease until 1009) and ends at `earlier_end` without being told
/// anything; worker 1 is granted `k` at `later_granted` and holds it 10 ms later for 30 ms;
/// the server lost `lost` from 100 to 150.
fn across_a_loss(earlier: S, later_granted: i64, lost: Option<FaultRecord>) -> Analysis {
    let mut later = S::new(0, "k", 2, later_granted + 10, later_granted + 40);
    later.acquired = later_granted;
    let mut h = history(vec![W::new(0).section(earlier).done(), W::new(1).section(later).done()], 3000);
    h.keys = vec!["k".into(), "other".into()];
    h.faults = lost.into_iter().collect();
    analyse(&h)
}

/// The violations of safety (liveness aside: these histories end soon after the fault).
fn safety(a: &Analysis) -> Vec<ViolationKind> {
    kinds(a)
        .into_iter()
        .filter(|k| !matches!(k, ViolationKind::Liveness | ViolationKind::WorkerStalled))
        .collect()
}

fn restart() -> Option<FaultRecord> {
    Some(losing(FaultKind::RestartServer, 100, 150, DataLost::EveryKey))
}

#[test]
fn a_holder_whose_key_the_server_lost_while_it_ran_within_its_lease_is_excused_in_its_own_column() {
    // It finished at 300, before its first renewal (at ttl/3 ≈ 343): it could not learn that
    // the restarted server had forgotten its key, and the other was granted the key at 160.
    let a = across_a_loss(S::new(0, "k", 1, 10, 300), 160, restart());
    assert_eq!(safety(&a), [], "{:?}", a.violations);
    assert_eq!((a.rows[1].overlaps, a.rows[1].lost_with_server_data), (0, 1));
    assert_eq!((a.total.lost_before_deadline, a.total.frozen_holders), (0, 0), "a column of its own");
    assert!(
        a.excused[0].detail.contains("lost with the server's data (restart-server)"),
        "{}",
        a.excused[0].detail
    );
    // drop-key of this key is the same in effect.
    let dropped = Some(losing(FaultKind::DropKey, 100, 101, DataLost::Keys(vec!["k".into()])));
    let a = across_a_loss(S::new(0, "k", 1, 10, 300), 160, dropped);
    assert_eq!(safety(&a), [], "{:?}", a.violations);
    assert_eq!(a.total.lost_with_server_data, 1);
    // Without a loss it is what it always was: a violation.
    let a = across_a_loss(S::new(0, "k", 1, 10, 300), 160, None);
    assert_eq!(safety(&a), [ViolationKind::Overlap]);
}

#[test]
fn a_loss_of_data_excuses_only_a_holder_that_ran_when_it_happened() {
    let not_excused = |a: &Analysis, why: &str| {
        assert_eq!(safety(a), [ViolationKind::Overlap], "{why}");
        assert_eq!(a.total.lost_with_server_data, 0, "{why}");
    };
    // The earlier holder entered after the server came back: the loss explains nothing.
    not_excused(&across_a_loss(S::new(0, "k", 1, 200, 400), 250, restart()), "entered after the loss");
    // The later holder was granted the key before the loss: neither does it.
    let mut early = S::new(0, "k", 1, 10, 300);
    early.acquired = 5;
    not_excused(&across_a_loss(early, 90, restart()), "granted before the loss");
    // The server lost another key.
    let other = Some(losing(FaultKind::DropKey, 100, 101, DataLost::Keys(vec!["other".into()])));
    not_excused(&across_a_loss(S::new(0, "k", 1, 10, 300), 160, other), "another key was dropped");
    // The holder ran on past its lease (1009) unaware: dlock's fault, whatever the server lost.
    let a = across_a_loss(S::new(0, "k", 1, 10, 1300).writes(&[1200]), 160, restart());
    not_excused(&a, "ran past its lease");
    let overlap = a.violations.iter().find(|v| v.kind == ViolationKind::Overlap);
    assert!(overlap.is_some_and(|v| v.detail.contains("ran past its lease")), "{overlap:?}");
}

#[test]
fn a_failover_by_command_loses_the_locks_the_old_primary_granted_before_it_was_demoted() {
    // Failed over at 100; until it was demoted, the old primary held the lock with token 1.
    let failover = |tokens: &[u64]| {
        let mut f = losing(FaultKind::Failover, 100, 110, DataLost::Keys(vec!["k".into()]));
        f.granted_by_old_primary = tokens.to_vec();
        Some(f)
    };
    // Entered at 120, on a lock the old primary granted after the failover began, and ended
    // within its lease: its lock went with the old primary, and it could not have been told.
    let a = across_a_loss(S::new(0, "k", 1, 120, 300), 160, failover(&[1]));
    assert_eq!(safety(&a), [], "{:?}", a.violations);
    assert_eq!(a.total.lost_with_server_data, 1);
    assert!(a.excused[0].detail.contains("(failover)"), "{}", a.excused[0].detail);
    // Entered at 120 on a lock the old primary never had (the new one granted it): the
    // failover explains nothing.
    let a = across_a_loss(S::new(0, "k", 1, 120, 300), 160, failover(&[7]));
    assert_eq!(safety(&a), [ViolationKind::Overlap]);
    // A killed primary grants nothing after the kill: only what it held then was lost.
    let a = across_a_loss(S::new(0, "k", 1, 120, 300), 160, failover(&[]));
    assert_eq!(safety(&a), [ViolationKind::Overlap]);
    // A lock granted and let go between two reads, seen only as a script the old primary ran
    // on its key (MONITOR) a moment before the token's time: granted by it.
    let seen_run = |at: i64, key: &str| {
        let mut f = failover(&[]);
        if let Some(f) = f.as_mut() {
            f.old_primary_scripts = vec![(at, key.to_owned())];
        }
        f
    };
    // (Tokens are the server's time in µs; here the script ran at 0 and granted token 1.)
    let granted = || S::new(0, "k", 1, 120, 300);
    let a = across_a_loss(granted(), 160, seen_run(0, "k"));
    assert_eq!(safety(&a), [], "{:?}", a.violations);
    // A script on another key, or long before, says nothing of this lock.
    let a = across_a_loss(granted(), 160, seen_run(0, "other"));
    assert_eq!(safety(&a), [ViolationKind::Overlap]);
    let a = across_a_loss(granted(), 160, seen_run(-5_000, "k"));
    assert_eq!(safety(&a), [ViolationKind::Overlap]);
}

#[test]
fn a_loss_of_data_excuses_no_token_regression_and_no_fenced_lost_update() {
    // Across a restart, a token that goes back and a fenced register that loses an update are
    // still violations: fencing is what must hold when the lock cannot.
    let mut h = history(
        vec![
            W::new(0).section(S::new(0, "k", 5, 10, 50)).section(S::new(1, "k", 6, 300, 350)).done(),
            W::new(1).section(S::new(0, "k", 3, 200, 250)).done(),
        ],
        400,
    );
    h.faults = restart().into_iter().collect();
    h.store = store(&[1, 2, 1], &[1, 2, 3]);
    let a = analyse(&h);
    assert_eq!(a.total.token_regressions, 1);
    assert!(kinds(&a).contains(&ViolationKind::TokenRegression), "{:?}", a.violations);
    assert!(kinds(&a).contains(&ViolationKind::FencedLostUpdate), "{:?}", a.violations);
}

#[test]
fn a_token_below_one_handed_out_before_is_a_regression_even_past_an_uncertain_pair() {
    // Token 10 entered at 100. Token 5's acquire was sent at 90, before that entry, so the pair
    // (10, 5) is not certain. Token 7's acquire was sent at 299, long after token 10 entered:
    // 7 after 10 is a regression for certain, whatever the section between them.
    let mut uncertain = S::new(0, "k", 5, 150, 190);
    uncertain.acquired = 90;
    let h = history(
        vec![
            W::new(0).section(S::new(0, "k", 10, 100, 140)).done(),
            W::new(1).section(uncertain).done(),
            W::new(2).section(S::new(0, "k", 7, 300, 340)).done(),
        ],
        500,
    );
    let a = analyse(&h);
    assert_eq!(a.total.token_regressions, 1, "{:?}", a.violations);
    assert_eq!(kinds(&a), [ViolationKind::TokenRegression]);
}

#[test]
fn a_holder_frozen_only_after_the_other_was_granted_its_key_is_not_excused() {
    // Worker 1 is granted `k` at 19 and enters at 20, while worker 0 holds it (lease until
    // 1009) and runs, not frozen. Only at 50 is worker 0 frozen (pause-worker aims at a
    // holder). The freeze cannot explain an overlap that began before it.
    let run = |pause: bool| {
        let mut later = S::new(0, "k", 2, 20, 30);
        later.acquired = 19;
        let mut h = history(
            vec![
                W::new(0).section(S::new(0, "k", 1, 10, 2100).lost().writes(&[40])).done(),
                W::new(1).section(later).done(),
            ],
            3000,
        );
        if pause {
            h.faults = vec![fault(FaultKind::PauseWorker, 50, 2000, &[0])];
        }
        analyse(&h)
    };
    assert_eq!(kinds(&run(false)), [ViolationKind::Overlap], "without the pause: a violation");
    let a = run(true);
    assert_eq!(a.total.frozen_holders, 0, "{:?}", a.excused);
    assert!(a.violations.iter().any(|v| v.kind == ViolationKind::Overlap), "{:?}", a.violations);
}

#[test]
fn a_run_in_which_no_section_ran_proves_nothing() {
    // Every call failed: nothing was checked, and the analysis must not say "pass".
    let mut w = W::new(0);
    for op in 0..3 {
        w.events.push(Event::Invoke {
            op,
            task: 0,
            key: "k".into(),
            mode: Mode::Attribute,
            long: false,
            at: at(10 * op as i64),
        });
        w.events.push(Event::Done {
            op,
            outcome: Outcome::Backend { msg: "connection refused".into() },
            at: at(10 * op as i64 + 1),
        });
    }
    let a = analyse(&history(vec![w.done()], 100));
    assert_eq!(a.total.sections, 0);
    assert!(!a.valid, "a run with no section passed as valid: {:?}", a.notes);
}

#[test]
fn a_worker_whose_history_stops_without_a_goodbye_makes_the_history_invalid() {
    // Worker 0 was neither killed by a fault nor seen to crash (it died while being stopped),
    // and its history has no `Bye`: its last section's end is unknown — it ran on past the
    // end of the run, when worker 1 entered and wrote. The analysis cannot vouch for this.
    let mut w0 = W::new(0).section(S::new(0, "k", 1, 150, 0).unfinished().writes(&[170])).done();
    w0.events.retain(|e| !matches!(e, Event::Bye { .. }));
    let w1 = W::new(1).section(S::new(0, "k", 2, 160, 180)).done();
    let a = analyse(&history(vec![w0, w1], 100));
    assert!(!a.valid, "a worker that vanished mid-section passed as valid: {:?}", a.sections);
    assert!(a.notes.iter().any(|n| n.contains("worker 0 ended without saying goodbye")), "{:?}", a.notes);
}
