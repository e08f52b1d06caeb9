//! The report: the per-fault table (plain text and Markdown), the JSON file, and the timeline
//! SVGs, written into the run's output directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::analysis::{Analysis, History, Row};
use crate::config::{RunConfig, default_call_timeout};
use crate::schedule::FaultRecord;
use crate::svg;
use crate::workload::ModeChoice;

/// The clock assumption, as the report states it.
pub const CLOCK_ASSUMPTION: &str = "every worker runs on this machine; events of different processes are ordered by the wall clock (CLOCK_REALTIME), which all processes share; a wall-clock step during the run (checked against CLOCK_MONOTONIC) invalidates the run";

/// What `report.json` holds.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// `pass`, `fail` (violations) or `invalid` (the history cannot be trusted).
    pub verdict: &'static str,
    /// The run's id.
    pub run_id: &'a str,
    /// How the run was configured.
    pub config: &'a RunConfig,
    /// How events of different processes are ordered.
    pub clock_assumption: &'static str,
    /// What each fault did.
    pub faults: &'a [FaultRecord],
    /// The check's result.
    pub analysis: &'a Analysis,
}

/// `pass`, `fail` or `invalid`.
pub fn verdict(analysis: &Analysis) -> &'static str {
    if !analysis.valid {
        "invalid"
    } else if analysis.passed() {
        "pass"
    } else {
        "fail"
    }
}

/// The files written.
#[derive(Debug)]
pub struct Written {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.txt`: the table and the violations.
    pub text: PathBuf,
    /// `report.md`: the table in Markdown.
    pub markdown: PathBuf,
    /// `timeline-<key>.svg`, one per key.
    pub timelines: Vec<PathBuf>,
}

/// Write every part of the report into `out_dir`.
pub fn write(
    out_dir: &Path,
    run_id: &str,
    config: &RunConfig,
    history: &History,
    analysis: &Analysis,
) -> anyhow::Result<Written> {
    let report = Report {
        verdict: verdict(analysis),
        run_id,
        config,
        clock_assumption: CLOCK_ASSUMPTION,
        faults: &history.faults,
        analysis,
    };
    let json = out_dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let text = out_dir.join("report.txt");
    std::fs::write(&text, text_report(config, analysis))
        .with_context(|| format!("writing {}", text.display()))?;
    let markdown = out_dir.join("report.md");
    let md = format!("{}\n\n{}", setup(config).join("  \n"), markdown_table(analysis));
    std::fs::write(&markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    let mut timelines = Vec::new();
    for key in &history.keys {
        let path = out_dir.join(format!("timeline-{}.svg", file_safe(key)));
        std::fs::write(&path, svg::timeline(history, analysis, key))
            .with_context(|| format!("writing {}", path.display()))?;
        timelines.push(path);
    }
    Ok(Written { json, text, markdown, timelines })
}

fn file_safe(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

const HEADERS: [&str; 16] = [
    "fault",
    "window s",
    "sections",
    "ok",
    "lost",
    "timeouts",
    "errors",
    "overlaps",
    "lost-before-deadline",
    "frozen-holder",
    "lost-with-server-data",
    "token-regressions",
    "fenced-lost",
    "fenced-rejected",
    "unfenced-lost",
    "recovery",
];

fn cells(row: &Row) -> Vec<String> {
    if let Some(why) = &row.skipped {
        let mut cells = vec![row.label.clone(), format!("skipped: {why}")];
        cells.resize(HEADERS.len(), String::new());
        return cells;
    }
    let no_fault =
        row.label == "baseline" || (row.label == "total" && row.recovery_ms.is_none() && row.recovered);
    let recovery = match (row.recovery_ms, row.recovered, no_fault) {
        (_, _, true) => "—".to_owned(),
        (Some(ms), true, _) => format!("{ms:.0} ms"),
        (Some(ms), false, _) => format!("{ms:.0} ms ✗"),
        (None, _, _) => "never ✗".to_owned(),
    };
    let recovery = if row.stalled_workers.is_empty() {
        recovery
    } else {
        let stalled: Vec<String> = row.stalled_workers.iter().map(|w| format!("w{w}")).collect();
        format!("{recovery}; stalled {}", stalled.join(","))
    };
    vec![
        row.label.clone(),
        format!("{:.1}–{:.1}", row.start_s, row.end_s),
        row.sections.to_string(),
        row.ok.to_string(),
        row.lost.to_string(),
        row.timeouts.to_string(),
        row.errors.to_string(),
        row.overlaps.to_string(),
        row.lost_before_deadline.to_string(),
        row.frozen_holders.to_string(),
        row.lost_with_server_data.to_string(),
        row.token_regressions.to_string(),
        row.fenced_lost_updates.to_string(),
        row.fenced_rejected.to_string(),
        row.unfenced_lost_updates.to_string(),
        recovery,
    ]
}

/// The table as aligned plain text.
pub fn text_table(analysis: &Analysis) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADERS.iter().map(|h| (*h).to_owned()).collect()];
    rows.extend(analysis.rows.iter().map(cells));
    rows.push(cells(&analysis.total));
    let skipped_row = |r: &Vec<String>| r[1].starts_with("skipped: ");
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| rows.iter().filter(|r| !skipped_row(r)).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if skipped_row(row) {
            let _ = writeln!(out, "{:<w$}  {}", row[0], row[1], w = widths[0]);
            continue;
        }
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c].saturating_sub(cell.chars().count());
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 || i == rows.len() - 2 {
            let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
        }
    }
    out
}

/// The table in Markdown.
pub fn markdown_table(analysis: &Analysis) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADERS.join(" | "), "---|".repeat(HEADERS.len()));
    for row in analysis.rows.iter().chain([&analysis.total]) {
        let mut cells = cells(row);
        if row.label == "total" {
            cells[0] = "**total**".into();
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// How the run was set up, in a few lines: the backend, the workload, the ttl and the call
/// timeout (and where it came from), the recovery bound.
pub fn setup(config: &RunConfig) -> Vec<String> {
    let w = &config.workload;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mode = match w.mode {
        ModeChoice::Attribute => "#[distributed_lock]",
        ModeChoice::Manual => "the manual API",
        ModeChoice::Mixed => "#[distributed_lock] and the manual API",
    };
    let call_timeout = if config.backend.in_process() {
        "no call timeout (in-process backend)".to_owned()
    } else {
        let source = if config.call_timeout == default_call_timeout(w.ttl) {
            "the default, min(2 s, ttl / 2)"
        } else {
            "--call-timeout"
        };
        let warning = if config.call_timeout > w.ttl / 2 {
            "; over half the ttl: a silent connection, which costs one call timeout, can outlast a lease, and recovery may exceed the bound"
        } else {
            ""
        };
        let replicas = match config.replicas {
            Some(r) => {
                format!(", every acquisition acknowledged by {} replica(s) within {}", r.count, d(r.wait))
            }
            None => String::new(),
        };
        format!("call timeout {} ({source}{warning}){replicas}", d(config.call_timeout))
    };
    vec![
        format!(
            "backend {}; {} workers × {} tasks over {} keys, through {mode}; seed {}",
            config.backend,
            config.workers,
            w.tasks,
            w.keys.len(),
            w.seed
        ),
        format!(
            "ttl {}, wait {}, {call_timeout}; recovery bound {}",
            d(w.ttl),
            d(w.wait),
            d(config.recovery_bound)
        ),
    ]
}

/// The setup, the table, the notes, and the violations (the first 50), as printed at the end
/// of a run.
pub fn text_report(config: &RunConfig, analysis: &Analysis) -> String {
    let mut out = setup(config).join("\n");
    out.push_str("\n\n");
    out.push_str(&text_table(analysis));
    for row in analysis.rows.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(out, "{}: {}", row.label, row.note.as_deref().unwrap_or_default());
    }
    for note in &analysis.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if !analysis.excused.is_empty() {
        let _ = writeln!(out, "\n{} excused overlap(s), e.g.:", analysis.excused.len());
        for f in analysis.excused.iter().take(5) {
            let _ = writeln!(out, "  [{}] {}", analysis.rows[f.row].label, f.detail);
        }
    }
    if analysis.violations.is_empty() {
        let _ = writeln!(out, "\nno violations");
    } else {
        let _ = writeln!(out, "\n{} violation(s):", analysis.violations.len());
        for f in analysis.violations.iter().take(50) {
            let key = f.key.as_deref().map(|k| format!(" key {k}:")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>8.3}s [{}] {:?}{key} {}",
                f.at_s, analysis.rows[f.row].label, f.kind, f.detail
            );
        }
        if analysis.violations.len() > 50 {
            let _ = writeln!(out, "  … and {} more (see report.json)", analysis.violations.len() - 50);
        }
    }
    out
}
