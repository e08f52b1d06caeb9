//! The check: from the recorded history to per-fault counts and a list of violations.
//!
//! Per key:
//!
//! - **Overlaps.** Two sections overlap when the later one entered its body before the earlier
//!   one's body ended. The pair is *excused* in two cases, counted apart: the earlier holder was
//!   told `Lost` and its body ended before its lease could have ended (the backend let the other
//!   in early — it lost the key — and dlock stopped the holder in time: **lost before
//!   deadline**); or the earlier holder's process was frozen by the checker (SIGSTOP) and started
//!   nothing after its lease ended (**frozen holder**: a paused process cannot be told anything,
//!   what matters is that it does not act once it runs again). Every other overlap is a
//!   violation.
//! - **Token order.** Taken in the order the sections entered, each token is greater than the
//!   one before — where that is the order the backend granted them: the earlier section entered
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::HANDOFF_LEASE;
use crate::clock::{self, Stamp};
use crate::history::{CallKind, CallResult, Event, Mode, OpId, Outcome, StepKind, StepResult, WorkerId};
use crate::registers::{KeyStore, Landed};
use crate::schedule::FaultRecord;

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
    /// Its worker was frozen by the checker while it ran.
    pub paused: bool,
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
    /// baseline, or when some key never did within the window.
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
}

/// Check `history`.
pub fn analyse(history: &History) -> Analysis {
    let mut notes = Vec::new();
    let mut valid = true;
    let windows = Windows::new(history);
    let mut rows: Vec<Row> = windows.rows.iter().map(|w| w.row.clone()).collect();

    // Clocks and completeness.
    let stamps: Vec<&Stamp> =
        history.workers.iter().flat_map(|w| w.events.iter().filter_map(event_stamp)).collect();
    let step = clock::max_step(stamps.iter().copied().chain([&history.run_start, &history.run_end]));
    if step > CLOCK_STEP_TOLERANCE_NS {
        valid = false;
        notes.push(format!(
            "the wall clock stepped by {:.1} ms relative to the monotonic clock during the run: cross-process order is unreliable; run again",
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
        if worker.events.iter().any(|e| matches!(e, Event::Bye { complete: false, .. })) {
            valid = false;
            notes.push(format!(
                "worker {} could not write every event: its history is incomplete",
                worker.worker
            ));
        }
    }

    let sections = build_sections(history);
    let mut violations = Vec::new();
    let mut excused = Vec::new();
    let mut offending = HashSet::new();

    // Calls that did not enter, by when they returned.
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
    // Sections count where they entered; how they ended, where they ended (a holder told Lost
    // by a fault counts in that fault's window).
    for s in &sections {
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

    let mut by_key: BTreeMap<&str, Vec<&Section>> = BTreeMap::new();
    for s in &sections {
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
                let class = classify(earlier, later);
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
                        rows[row].lost_before_deadline += 1;
                        excused.push(finding(
                            ViolationKind::Overlap,
                            format!("{detail}; excused: told Lost before its lease could have ended"),
                        ));
                    }
                    OverlapClass::FrozenHolder => {
                        rows[row].frozen_holders += 1;
                        excused.push(finding(
                            ViolationKind::Overlap,
                            format!(
                                "{detail}; excused: its process was frozen and did nothing after its lease"
                            ),
                        ));
                    }
                    OverlapClass::Violation { reason } => {
                        rows[row].overlaps += 1;
                        offending.insert((earlier.worker, earlier.op));
                        offending.insert((later.worker, later.op));
                        violations.push(finding(ViolationKind::Overlap, format!("{detail}: {reason}")));
                    }
                }
            }
            running.push(later);
        }
        // Token order: each token greater than the one of the section entered before it —
        // where that order is certain: the earlier one entered before the later one's granting
        // call was sent (two holders at once can be granted in one order and enter in the
        // other; that is an overlap, counted above).
        for pair in list.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let certain = prev.enter <= next.granted_after.unwrap_or(next.enter);
            if next.token <= prev.token && certain {
                let row = windows.row_of(next.enter);
                rows[row].token_regressions += 1;
                violations.push(Finding {
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

    // The store.
    let mut marks = Vec::new();
    let write_time = write_times(&sections);
    for worker in &history.workers {
        for event in &worker.events {
            if let Event::StepEnd { step, result, at, .. } = event {
                let row = &mut rows[windows.row_of(at.wall)];
                match (step, result) {
                    (StepKind::FencedWrite, StepResult::Written) => row.fenced_writes += 1,
                    (StepKind::FencedRead | StepKind::FencedWrite, StepResult::Rejected { .. }) => {
                        row.fenced_rejected += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    let reported_ok = reported_writes(history);
    for key in &history.keys {
        let store = history.store.get(key).cloned().unwrap_or_default();
        let fenced = lost_updates(&store.fenced_log, &write_time, &windows);
        let counter = lost_updates(&store.counter_log, &write_time, &windows);
        for (row, lost, at) in &fenced.per_row {
            rows[*row].fenced_lost_updates += lost;
            if *lost > 0 {
                violations.push(Finding {
                    kind: ViolationKind::FencedLostUpdate,
                    key: Some(key.clone()),
                    row: *row,
                    at_s: windows.secs(*at),
                    detail: format!("the fenced register lost {lost} update(s) in this window"),
                });
            }
        }
        for (row, lost, _) in &counter.per_row {
            rows[*row].unfenced_lost_updates += lost;
        }
        marks.extend(fenced.marks.into_iter().map(|t| (key.clone(), t, true)));
        marks.extend(counter.marks.into_iter().map(|t| (key.clone(), t, false)));
        let landed = store.fenced_log.len() as i64;
        if landed - store.fenced_value != fenced.per_row.iter().map(|(_, l, _)| l).sum::<i64>() {
            notes.push(format!("key {key}: the fenced register's log does not add up (a checker bug?)"));
        }
        let landed_ids: HashSet<&str> = store.fenced_log.iter().map(|l| l.id.as_str()).collect();
        for (id, at) in reported_ok.get(key.as_str()).into_iter().flatten() {
            if !landed_ids.contains(id.as_str()) {
                let row = windows.row_of(*at);
                violations.push(Finding {
                    kind: ViolationKind::StoreLostWrite,
                    key: Some(key.clone()),
                    row,
                    at_s: windows.secs(*at),
                    detail: format!("fenced write {id} was reported Ok but is not in the store's log"),
                });
            }
        }
    }

    // Liveness.
    liveness(history, &windows, &sections, &mut rows, &mut violations);

    for finding in &violations {
        rows[finding.row].violations += 1;
    }
    violations.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    excused.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let total = total_row(&rows, &windows);
    Analysis { valid, notes, rows, total, violations, excused, sections, offending, lost_update_marks: marks }
}

/// Judge an overlap of `earlier` (still running) with `later` (entered meanwhile).
pub fn classify(earlier: &Section, later: &Section) -> OverlapClass {
    if earlier.told_lost() && earlier.lease_end.is_some_and(|lease_end| earlier.end <= lease_end) {
        return OverlapClass::LostBeforeDeadline;
    }
    let cutoff = earlier.lease_end.unwrap_or(later.enter);
    let acted_after = earlier.steps.iter().any(|(_, at)| *at > cutoff);
    if earlier.paused && !acted_after {
        return OverlapClass::FrozenHolder;
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
    if earlier.paused {
        reason.push_str("; its process had been frozen, and it acted again after its lease ended");
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

/// The fault windows: the baseline, then one per applied fault, each up to the next.
struct Windows {
    rows: Vec<Window>,
    run_start: i64,
    run_end: i64,
}

struct Window {
    row: Row,
    /// Applied (not skipped): takes part in `row_of`.
    active: bool,
    start: i64,
    end: i64,
    /// When the fault ended (wall ns).
    fault_end: Option<i64>,
}

impl Windows {
    fn new(history: &History) -> Self {
        let run_start = history.run_start.wall;
        let run_end = history.run_end.wall.max(run_start);
        let mut rows = vec![Window {
            row: Row { label: "baseline".into(), recovered: true, ..Row::default() },
            active: true,
            start: run_start,
            end: run_end,
            fault_end: None,
        }];
        for fault in &history.faults {
            let active = fault.skipped.is_none();
            rows.push(Window {
                row: Row {
                    label: fault.label.clone(),
                    skipped: fault.skipped.clone(),
                    note: fault.note.clone(),
                    recovered: true,
                    ..Row::default()
                },
                active,
                start: fault.start.wall,
                end: run_end,
                fault_end: active.then_some(fault.end.wall),
            });
        }
        // Each applied window ends where the next applied one starts.
        let active: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].active).collect();
        for pair in active.windows(2) {
            rows[pair[0]].end = rows[pair[1]].start;
        }
        let mut windows = Self { rows, run_start, run_end };
        for i in 0..windows.rows.len() {
            let (start, end, active) = (windows.rows[i].start, windows.rows[i].end, windows.rows[i].active);
            let row = &mut windows.rows[i].row;
            if active {
                row.start_s = (start - run_start) as f64 / 1e9;
                row.end_s = (end - run_start) as f64 / 1e9;
            }
        }
        windows
    }

    /// The applied window that `wall` falls in (before the run: the baseline; after: the last).
    fn row_of(&self, wall: i64) -> usize {
        let mut found = 0;
        for (i, w) in self.rows.iter().enumerate() {
            if w.active && w.start <= wall {
                found = i;
            }
        }
        found
    }

    fn secs(&self, wall: i64) -> f64 {
        (wall - self.run_start) as f64 / 1e9
    }
}

/// Rebuild every section from the events, with its lease end.
fn build_sections(history: &History) -> Vec<Section> {
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
                            paused: false,
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
            s.paused = pauses
                .get(&worker.worker)
                .is_some_and(|list| list.iter().any(|&(from, to)| from < s.end && to > s.enter));
            sections.push(s);
        }
    }
    sections
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One worker's backend calls, to find each section's owner and lease.
struct Leases {
    /// (key, token) → owner.
    owner_of: HashMap<(String, u64), String>,
    /// (key, token) → when the call that granted it was sent.
    granted_after: HashMap<(String, u64), i64>,
    /// (key, owner) → every (sent, lease length) that gave or confirmed its lease.
    confirmed: HashMap<(String, String), Vec<(i64, i64)>>,
}

impl Leases {
    fn new(events: &[Event], ttl_ns: i64) -> Self {
        let mut owner_of = HashMap::new();
        let mut granted_after = HashMap::new();
        let mut confirmed: HashMap<(String, String), Vec<(i64, i64)>> = HashMap::new();
        // (key, owner) → when its attempts were sent, in order.
        let mut attempts: HashMap<(String, String), Vec<i64>> = HashMap::new();
        for event in events {
            match event {
                Event::Call { key, owner, call, ttl_ms, sent, result, .. } => {
                    let ttl =
                        ttl_ms.map_or(ttl_ns, |ms| i64::try_from(ms).unwrap_or(i64::MAX / 2) * 1_000_000);
                    let id = (key.clone(), owner.clone());
                    match (call, result) {
                        (CallKind::Acquire, CallResult::Acquired { token }) => {
                            owner_of.insert((key.clone(), *token), owner.clone());
                            granted_after.insert((key.clone(), *token), sent.wall);
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
                    let lease = ttl_ns.min(duration_ns(HANDOFF_LEASE));
                    confirmed.entry(id).or_default().push((*sent, lease));
                }
                _ => {}
            }
        }
        Self { owner_of, granted_after, confirmed }
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

/// When each write id's section wrote (its write step, else its entry), in wall ns.
fn write_times(sections: &[Section]) -> HashMap<String, i64> {
    let mut times = HashMap::new();
    for s in sections {
        let at = s
            .steps
            .iter()
            .find(|(k, _)| matches!(k, StepKind::FencedWrite | StepKind::CounterWrite))
            .map_or(s.enter, |(_, at)| *at);
        times.insert(crate::registers::write_id(s.worker, s.op), at);
    }
    times
}

/// Fenced writes reported `Ok`, per key: (write id, when).
fn reported_writes(history: &History) -> HashMap<&str, Vec<(String, i64)>> {
    let mut out: HashMap<&str, Vec<(String, i64)>> = HashMap::new();
    for worker in &history.workers {
        let keys: HashMap<OpId, &str> = worker
            .events
            .iter()
            .filter_map(
                |e| if let Event::Invoke { op, key, .. } = e { Some((*op, key.as_str())) } else { None },
            )
            .collect();
        for event in &worker.events {
            if let Event::StepEnd { op, step: StepKind::FencedWrite, result: StepResult::Written, at } = event
                && let Some(key) = keys.get(op)
            {
                out.entry(key).or_default().push((crate::registers::write_id(worker.worker, *op), at.wall));
            }
        }
    }
    out
}

struct LostUpdates {
    /// (row, updates lost, when the first loss in the row happened, else the row's first write).
    per_row: Vec<(usize, i64, i64)>,
    /// When each write that overwrote a newer value landed.
    marks: Vec<i64>,
}

/// Updates a register lost, per window: the writes that landed in the window minus how much
/// the register grew over it (each write stores the value it read plus one, so a register
/// that lost nothing grows by one per write).
fn lost_updates(log: &[Landed], write_time: &HashMap<String, i64>, windows: &Windows) -> LostUpdates {
    // row → (updates lost, when the first write that lost one landed)
    let mut per_row: BTreeMap<usize, (i64, Option<i64>)> = BTreeMap::new();
    let mut marks = Vec::new();
    let mut prev_value = 0;
    let mut prev_at = windows.run_start;
    for landed in log {
        let at = write_time.get(&landed.id).copied().unwrap_or(prev_at);
        let lost_here = prev_value - landed.v + 1;
        let (lost, first) = per_row.entry(windows.row_of(at)).or_insert((0, None));
        *lost += lost_here;
        if lost_here > 0 {
            first.get_or_insert(at);
            marks.push(at);
        }
        prev_value = landed.v;
        prev_at = at;
    }
    LostUpdates {
        per_row: per_row
            .into_iter()
            .map(|(row, (lost, first))| (row, lost, first.unwrap_or(prev_at)))
            .collect(),
        marks,
    }
}

fn liveness(
    history: &History,
    windows: &Windows,
    sections: &[Section],
    rows: &mut [Row],
    violations: &mut Vec<Finding>,
) {
    let bound = duration_ns(history.recovery_bound);
    for (i, window) in windows.rows.iter().enumerate() {
        let Some(fault_end) = window.fault_end else { continue };
        // A key recovers when a section enters after the fault ended — counted from when a
        // holder that the fault did not disturb (it spans the fault's end and finishes Ok)
        // lets go, if there is one.
        let mut worst: Option<i64> = Some(0);
        for key in &history.keys {
            let on_key = || sections.iter().filter(|s| &s.key == key);
            let busy_until = on_key()
                .filter(|s| s.enter < fault_end && s.end > fault_end && s.outcome == Some(Outcome::Ok))
                .map(|s| s.end)
                .max()
                .unwrap_or(fault_end);
            let first = on_key().map(|s| s.enter).filter(|&t| t >= busy_until && t <= window.end).min();
            match first {
                Some(t) if t - busy_until <= bound => worst = worst.map(|w| w.max(t - busy_until)),
                Some(t) => {
                    worst = worst.map(|w| w.max(t - busy_until));
                    rows[i].recovered = false;
                    violations.push(Finding {
                        kind: ViolationKind::Liveness,
                        key: Some(key.clone()),
                        row: i,
                        at_s: windows.secs(fault_end),
                        detail: format!(
                            "key {key}: the first section after the fault ended entered {:.0} ms later (bound {:.0} ms)",
                            clock::ms(t - busy_until),
                            clock::ms(bound)
                        ),
                    });
                }
                None => {
                    worst = None;
                    rows[i].recovered = false;
                    violations.push(Finding {
                        kind: ViolationKind::Liveness,
                        key: Some(key.clone()),
                        row: i,
                        at_s: windows.secs(fault_end),
                        detail: format!(
                            "key {key}: no section entered in the {:.1} s between the fault's end and the end of its window",
                            clock::ms(window.end - busy_until) / 1e3
                        ),
                    });
                }
            }
        }
        rows[i].recovery_ms = worst.map(clock::ms);
        // Every worker alive after the fault hears from the backend again: a call sent after
        // the fault ended gets an answer (not an error) before the window ends.
        for worker in &history.workers {
            let alive_from = worker.started.map_or(history.run_start.wall, |s| s.wall).max(fault_end);
            let gone = worker.killed.or(worker.exited).map(|s| s.wall);
            if gone.is_some_and(|g| g <= window.end) || alive_from >= window.end {
                continue;
            }
            let answered = worker.events.iter().any(|e| {
                matches!(e, Event::Call { sent, returned, result, .. }
                    if sent.wall >= alive_from && returned.wall <= window.end
                        && !matches!(result, CallResult::Error { .. }))
            });
            if !answered {
                rows[i].stalled_workers.push(worker.worker);
                violations.push(Finding {
                    kind: ViolationKind::WorkerStalled,
                    key: None,
                    row: i,
                    at_s: windows.secs(fault_end),
                    detail: format!(
                        "worker {} got no answer from the backend in the {:.1} s after the fault ended",
                        worker.worker,
                        clock::ms(window.end - alive_from) / 1e3
                    ),
                });
            }
        }
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
    total
}

#[cfg(test)]
mod tests;
