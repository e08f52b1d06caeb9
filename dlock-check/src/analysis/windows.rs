//! The windows a history is divided into: the baseline, then one per applied fault, each
//! lasting until the next one begins.

use super::{History, Row};

/// The fault windows: the baseline, then one per applied fault, each up to the next.
pub(super) struct Windows {
    pub(super) rows: Vec<Window>,
    pub(super) run_start: i64,
    pub(super) run_end: i64,
}

pub(super) struct Window {
    pub(super) row: Row,
    /// Applied (not skipped): takes part in `row_of`.
    pub(super) active: bool,
    pub(super) start: i64,
    pub(super) end: i64,
    /// When the fault ended (wall ns).
    pub(super) fault_end: Option<i64>,
}

impl Windows {
    pub(super) fn new(history: &History) -> Self {
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
    pub(super) fn row_of(&self, wall: i64) -> usize {
        let mut found = 0;
        for (i, w) in self.rows.iter().enumerate() {
            if w.active && w.start <= wall {
                found = i;
            }
        }
        found
    }

    pub(super) fn secs(&self, wall: i64) -> f64 {
        (wall - self.run_start) as f64 / 1e9
    }
}
