//! Liveness: after a fault ends, every key sees a new section within the recovery bound, and
//! every worker alive then hears from the backend again before the fault's window ends.

use super::sections::duration_ns;
use super::windows::Windows;
use super::{Finding, History, Section, Tally, ViolationKind};
use crate::clock;
use crate::history::{CallResult, Event, Outcome};

/// Measure each fault's recovery and find the keys and workers that did not recover.
pub(super) fn check(history: &History, windows: &Windows, sections: &[Section], tally: &mut Tally) {
    let Tally { rows, violations, .. } = tally;
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
