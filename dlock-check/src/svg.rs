//! The timeline of one key as an SVG: one row per worker, each section a bar from entry to
//! end (coloured by how it ended), faults shaded, overlaps and lost updates marked. The top
//! panel shows the whole run; one zoomed panel per fault follows.

use std::fmt::Write as _;

use crate::analysis::{Analysis, EndKind, History, Section};
use crate::history::Outcome;

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const ROW: f64 = 13.0;
const GAP: f64 = 3.0;

const OK: &str = "#4c78a8";
const LOST: &str = "#f58518";
const KILLED: &str = "#7f7f7f";
const OTHER: &str = "#b279a2";
const BAD: &str = "#d62728";
const FAULT: &str = "#fbe3c9";
const FENCED_LOST: &str = "#d62728";
const UNFENCED_LOST: &str = "#555555";

/// One panel: a time range (wall ns) and a title.
struct Panel {
    title: String,
    from: i64,
    to: i64,
    /// The whole run: faults are labelled by their number only.
    overview: bool,
}

/// The SVG timeline of `key`.
pub fn timeline(history: &History, analysis: &Analysis, key: &str) -> String {
    let mut sections: Vec<&Section> = analysis.sections.iter().filter(|s| s.key == key).collect();
    sections.sort_by_key(|s| s.enter);
    let workers: Vec<u32> = history.workers.iter().map(|w| w.worker).collect();
    let ttl = i64::try_from(history.ttl.as_nanos()).unwrap_or(i64::MAX / 4);
    let (start, end) = (history.run_start.wall, history.run_end.wall.max(history.run_start.wall + 1));

    let mut panels =
        vec![Panel { title: "whole run (faults by number)".into(), from: start, to: end, overview: true }];
    for (i, fault) in history.faults.iter().enumerate() {
        if fault.skipped.is_some() {
            continue;
        }
        let recovery = analysis.rows.get(i + 1).and_then(|r| r.recovery_ms).map_or(0, |ms| (ms * 1e6) as i64);
        let from = (fault.start.wall - ttl * 3 / 2).max(start);
        let to = (fault.end.wall + recovery.max(ttl) + ttl * 3 / 2).min(end);
        panels.push(Panel {
            title: format!("#{} {}", i + 1, fault.label),
            from,
            to: to.max(from + 1),
            overview: false,
        });
    }

    let panel_height = 22.0 + workers.len() as f64 * (ROW + GAP) + 16.0 + 24.0;
    let height = 46.0 + panels.len() as f64 * (panel_height + 12.0) + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let overlaps = overlap_spans(&sections, analysis);
    let tokens = sections.iter().map(|s| s.token);
    let (lo, hi) = (tokens.clone().min().unwrap_or(0), tokens.max().unwrap_or(0));
    let lost: Vec<&(String, i64, bool)> =
        analysis.lost_update_marks.iter().filter(|(k, _, _)| k == key).collect();
    let fenced_lost = lost.iter().filter(|m| m.2).count();
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">key {} — {} sections, tokens {lo}…{hi}, {} overlap(s) that are violations, fenced register lost {} update(s)</text>"#,
        escape(key),
        sections.len(),
        overlaps.len(),
        fenced_lost
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="36" fill="#444">time in seconds since the run started (wall clock); one row per worker; shaded: a fault in effect</text>"##
    );
    let mut y = 46.0;
    for panel in &panels {
        draw_panel(&mut svg, history, analysis, &sections, &workers, &overlaps, &lost, panel, y, start);
        y += panel_height + 12.0;
    }
    legend(&mut svg, y + 8.0);
    svg.push_str("</svg>\n");
    svg
}

/// Overlaps that are violations, as (from, to) in wall ns.
fn overlap_spans(sections: &[&Section], analysis: &Analysis) -> Vec<(i64, i64)> {
    let mut spans = Vec::new();
    let mut running: Vec<&Section> = Vec::new();
    for later in sections {
        running.retain(|earlier| earlier.end > later.enter);
        for earlier in &running {
            if analysis.offending.contains(&(earlier.worker, earlier.op))
                && analysis.offending.contains(&(later.worker, later.op))
            {
                spans.push((later.enter, earlier.end.min(later.end)));
            }
        }
        running.push(later);
    }
    spans
}

#[allow(clippy::too_many_arguments)]
fn draw_panel(
    svg: &mut String,
    history: &History,
    analysis: &Analysis,
    sections: &[&Section],
    workers: &[u32],
    overlaps: &[(i64, i64)],
    lost: &[&(String, i64, bool)],
    panel: &Panel,
    top: f64,
    run_start: i64,
) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: i64| LEFT + (t - panel.from) as f64 / (panel.to - panel.from) as f64 * plot_w;
    let rows_top = top + 20.0;
    let rows_h = workers.len() as f64 * (ROW + GAP);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"#,
        top + 12.0,
        escape(&panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{rows_top:.1}" width="{plot_w:.1}" height="{:.1}" fill="#fafafa" stroke="#ccc"/>"##,
        rows_h + 16.0
    );
    // Faults.
    for (number, fault) in history.faults.iter().enumerate().filter(|(_, f)| f.skipped.is_none()) {
        if fault.end.wall < panel.from || fault.start.wall > panel.to {
            continue;
        }
        let label = if panel.overview { format!("#{}", number + 1) } else { fault.label.clone() };
        let (x0, x1) = (x(fault.start.wall.max(panel.from)), x(fault.end.wall.min(panel.to)));
        let w = (x1 - x0).max(2.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.1}" y="{rows_top:.1}" width="{w:.1}" height="{:.1}" fill="{FAULT}"><title>{}</title></rect>"#,
            rows_h + 16.0,
            escape(&fault.label)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#a0522d" font-size="10">{}</text>"##,
            x0 + 2.0,
            rows_top + 9.0,
            escape(&label)
        );
    }
    // Overlap spans behind the bars.
    for &(from, to) in overlaps {
        if to < panel.from || from > panel.to {
            continue;
        }
        let (x0, x1) = (x(from.max(panel.from)), x(to.min(panel.to)));
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.1}" y="{rows_top:.1}" width="{:.1}" height="{rows_h:.1}" fill="{BAD}" opacity="0.25"/>"#,
            (x1 - x0).max(2.0)
        );
    }
    // Rows and bars.
    for (r, worker) in workers.iter().enumerate() {
        let y = rows_top + r as f64 * (ROW + GAP) + GAP;
        let killed = history.workers.iter().any(|w| w.worker == *worker && w.killed.is_some());
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">w{worker}{}</text>"#,
            LEFT - 6.0,
            y + ROW - 3.0,
            if killed { " †" } else { "" }
        );
        for s in sections.iter().filter(|s| s.worker == *worker) {
            if s.end < panel.from || s.enter > panel.to {
                continue;
            }
            let (x0, x1) = (x(s.enter.max(panel.from)), x(s.end.min(panel.to)));
            let w = (x1 - x0).max(1.0);
            let offending = analysis.offending.contains(&(s.worker, s.op));
            let fill = colour(s);
            let stroke =
                if offending { format!(r#" stroke="{BAD}" stroke-width="1.5""#) } else { String::new() };
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{w:.2}" height="{ROW}" fill="{fill}"{stroke}><title>w{} t{} op {} token {} {:.3}–{:.3}s {}</title></rect>"#,
                s.worker,
                s.task,
                s.op,
                s.token,
                (s.enter - run_start) as f64 / 1e9,
                (s.end - run_start) as f64 / 1e9,
                escape(&outcome_text(s))
            );
            let label = s.token.to_string();
            if w > 7.0 * label.len() as f64 + 4.0 {
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" fill="white" font-size="9">{label}</text>"#,
                    x0 + 2.0,
                    y + ROW - 3.0
                );
            }
        }
    }
    // Lost updates.
    let marks_y = rows_top + rows_h + 12.0;
    for (_, at, fenced) in lost.iter().map(|m| (&m.0, m.1, m.2)) {
        if at < panel.from || at > panel.to {
            continue;
        }
        let mx = x(at);
        let colour = if fenced { FENCED_LOST } else { UNFENCED_LOST };
        let _ = writeln!(
            svg,
            r#"<path d="M{:.1},{:.1} l4,-8 l-8,0 z" fill="{colour}"><title>{} lost update</title></path>"#,
            mx + 0.0,
            marks_y,
            if fenced { "fenced register:" } else { "unfenced counter:" }
        );
    }
    // Axis.
    let axis_y = rows_top + rows_h + 16.0;
    let span_s = (panel.to - panel.from) as f64 / 1e9;
    let step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|s| span_s / s <= 14.0)
        .unwrap_or(600.0);
    let first = ((panel.from - run_start) as f64 / 1e9 / step).ceil() as i64;
    let last = ((panel.to - run_start) as f64 / 1e9 / step).floor() as i64;
    for i in first..=last {
        let t = i as f64 * step;
        let tx = x(run_start + (t * 1e9) as i64);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{axis_y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#888"/>"##,
            axis_y + 4.0
        );
        let decimals = if step < 0.1 {
            2
        } else if step < 1.0 {
            1
        } else {
            0
        };
        let _ = writeln!(
            svg,
            r##"<text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#444" font-size="10">{t:.decimals$}</text>"##,
            axis_y + 14.0
        );
    }
}

fn colour(s: &Section) -> &'static str {
    if s.end_kind == EndKind::Killed {
        return KILLED;
    }
    match &s.outcome {
        Some(Outcome::Ok) => OK,
        Some(Outcome::Lost { .. } | Outcome::LostAtRelease) => LOST,
        _ => OTHER,
    }
}

fn outcome_text(s: &Section) -> String {
    match (&s.outcome, s.end_kind) {
        (_, EndKind::Killed) => "killed inside".into(),
        (Some(Outcome::Ok), _) => "ok".into(),
        (Some(Outcome::Lost { reason }), _) => format!("lost ({reason})"),
        (Some(Outcome::LostAtRelease), _) => "lost, seen at release".into(),
        (Some(other), _) => format!("{other:?}"),
        (None, _) => "unfinished".into(),
    }
}

fn legend(svg: &mut String, y: f64) {
    let items = [
        (OK, "ok"),
        (LOST, "told Lost"),
        (KILLED, "killed inside"),
        (OTHER, "other outcome"),
        (FAULT, "fault in effect"),
    ];
    let mut x = LEFT;
    for (colour, text) in items {
        let _ =
            writeln!(svg, r#"<rect x="{x:.1}" y="{:.1}" width="14" height="10" fill="{colour}"/>"#, y - 9.0);
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{y:.1}">{text}</text>"#, x + 18.0);
        x += 40.0 + 7.0 * text.len() as f64;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{x:.1}" y="{:.1}" width="14" height="10" fill="{BAD}" opacity="0.35"/><text x="{:.1}" y="{y:.1}">overlap (violation)</text>"#,
        y - 9.0,
        x + 18.0
    );
    x += 150.0;
    let _ = writeln!(
        svg,
        r#"<path d="M{:.1},{y:.1} l4,-8 l-8,0 z" fill="{FENCED_LOST}"/><text x="{:.1}" y="{y:.1}">fenced lost update</text>"#,
        x + 4.0,
        x + 14.0
    );
    x += 140.0;
    let _ = writeln!(
        svg,
        r#"<path d="M{:.1},{y:.1} l4,-8 l-8,0 z" fill="{UNFENCED_LOST}"/><text x="{:.1}" y="{y:.1}">unfenced lost update</text>"#,
        x + 4.0,
        x + 14.0
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::analysis::{WorkerHistory, analyse};
    use crate::clock::Stamp;
    use crate::history::{CallKind, CallResult, Event, Mode};

    fn at(ms: i64) -> Stamp {
        Stamp::at_wall(1_000_000_000_000 + ms * 1_000_000)
    }

    /// Worker `w` holds `key` from `enter` to `end` with `token`, finishing Ok.
    fn worker(w: u32, key: &str, token: u64, enter: i64, end: i64) -> WorkerHistory {
        let events = vec![
            Event::Invoke { op: 0, task: 0, key: key.into(), mode: Mode::Manual, long: false, at: at(enter) },
            Event::Call {
                key: key.into(),
                owner: format!("o{w}"),
                call: CallKind::Acquire,
                ttl_ms: Some(1000),
                sent: at(enter),
                returned: at(enter),
                result: CallResult::Acquired { token },
            },
            Event::Enter { op: 0, token, at: at(enter) },
            Event::BodyEnd { op: 0, at: at(end) },
            Event::Done { op: 0, outcome: Outcome::Ok, at: at(end) },
        ];
        WorkerHistory { worker: w, started: Some(at(0)), killed: None, exited: None, crashed: None, events }
    }

    #[test]
    fn a_timeline_shows_every_section_and_marks_an_overlap() {
        let key = "k&<1>";
        let history = History {
            run_start: at(0),
            run_end: at(1000),
            ttl: Duration::from_secs(1),
            recovery_bound: Duration::from_secs(2),
            keys: vec![key.into()],
            workers: vec![worker(0, key, 1, 100, 600), worker(1, key, 2, 300, 400)],
            faults: vec![],
            store: BTreeMap::new(),
        };
        let analysis = analyse(&history);
        let svg = timeline(&history, &analysis, key);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("key k&amp;&lt;1&gt;"), "the key is escaped");
        assert_eq!(svg.matches("<title>w").count(), 2, "one bar per section");
        assert!(svg.contains(&format!(r#"fill="{BAD}" opacity="0.25""#)), "the overlap is shaded");
        assert_eq!(svg.matches(&format!(r#"stroke="{BAD}""#)).count(), 2, "both holders are outlined");
    }
}
