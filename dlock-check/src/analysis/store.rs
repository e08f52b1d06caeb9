//! The store's side of the check: the fenced register must lose no update and hold every write
//! reported `Ok`; the unfenced counter's lost updates are counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::windows::Windows;
use super::{Finding, History, Section, Tally, ViolationKind};
use crate::history::{Event, OpId, StepKind, StepResult};
use crate::registers::Landed;

/// Count fenced writes and refusals per window, lost updates of both registers, and writes
/// reported `Ok` that the fenced register does not have.
pub(super) fn check(history: &History, sections: &[Section], windows: &Windows, tally: &mut Tally) {
    let write_time = write_times(sections);
    for worker in &history.workers {
        for event in &worker.events {
            if let Event::StepEnd { step, result, at, .. } = event {
                let row = &mut tally.rows[windows.row_of(at.wall)];
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
        let fenced = lost_updates(&store.fenced_log, &write_time, windows);
        let counter = lost_updates(&store.counter_log, &write_time, windows);
        for (row, lost, at) in &fenced.per_row {
            tally.rows[*row].fenced_lost_updates += lost;
            if *lost > 0 {
                tally.violations.push(Finding {
                    kind: ViolationKind::FencedLostUpdate,
                    key: Some(key.clone()),
                    row: *row,
                    at_s: windows.secs(*at),
                    detail: format!("the fenced register lost {lost} update(s) in this window"),
                });
            }
        }
        for (row, lost, _) in &counter.per_row {
            tally.rows[*row].unfenced_lost_updates += lost;
        }
        tally.marks.extend(fenced.marks.into_iter().map(|t| (key.clone(), t, true)));
        tally.marks.extend(counter.marks.into_iter().map(|t| (key.clone(), t, false)));
        let landed = store.fenced_log.len() as i64;
        if landed - store.fenced_value != fenced.per_row.iter().map(|(_, l, _)| l).sum::<i64>() {
            tally
                .notes
                .push(format!("key {key}: the fenced register's log does not add up (a checker bug?)"));
        }
        let landed_ids: HashSet<&str> = store.fenced_log.iter().map(|l| l.id.as_str()).collect();
        for (id, at) in reported_ok.get(key.as_str()).into_iter().flatten() {
            if !landed_ids.contains(id.as_str()) {
                let row = windows.row_of(*at);
                tally.violations.push(Finding {
                    kind: ViolationKind::StoreLostWrite,
                    key: Some(key.clone()),
                    row,
                    at_s: windows.secs(*at),
                    detail: format!("fenced write {id} was reported Ok but is not in the store's log"),
                });
            }
        }
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
