//! `dlock-check`: a fault-injecting safety checker for dlock.
//!
//! Worker processes take locks on a few keys through `#[distributed_lock]` and the manual API
//! and do a read–think–write on two registers per key (one fenced by the lock's token, one
//! not) while the checker applies faults: killed and frozen workers, a frozen or restarted
//! server, a lost key, silent connections, partitions, latency. Every operation is recorded;
//! afterwards the history is checked for overlapping holders, fencing tokens that go
//! backwards, lost updates and stalls, and reported per fault (table, JSON, SVG timelines).
//! See `README.md` for how to run it and how to read the report.
//!
//! The parts, in the order a run uses them: [`cli`] → [`config`] → [`coordinator`] (with
//! [`servers`], [`postgres_server`] and [`topology`], [`netns`], [`proxy`], [`redis_url`],
//! held in the run's `lab`) starts [`worker`]s,
//! which run the [`workload`] over [`backends`] (keys deleted behind dlock's back by
//! [`forcer`]) and [`registers`] and write [`history`] (timestamped by [`clock`]); `faults`
//! applies the [`schedule`], aimed by the [`live`] view; [`analysis`] checks the history,
//! [`report`] and [`svg`] show it.

pub mod analysis;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod config;
pub mod coordinator;
mod faults;
pub mod forcer;
pub mod history;
mod lab;
pub mod live;
pub mod netns;
pub mod postgres_server;
mod procfs;
pub mod proxy;
pub mod redis_url;
pub mod registers;
pub mod report;
pub mod schedule;
pub mod servers;
pub mod svg;
pub mod topology;
pub mod worker;
pub mod workload;

use analysis::Analysis;
use config::RunConfig;
use coordinator::RunOutput;

/// A finished check: what was recorded, what the check found, where the report is.
#[derive(Debug)]
pub struct Checked {
    /// The run.
    pub run: RunOutput,
    /// The check.
    pub analysis: Analysis,
    /// The report's files.
    pub written: report::Written,
    /// How the run was configured.
    pub config: RunConfig,
}

/// Run `config`, check the history and write the report.
pub async fn check(config: RunConfig) -> anyhow::Result<Checked> {
    let run = coordinator::run(config.clone()).await?;
    judge(run, &config)
}

/// Check the run recorded in `dir` again (after a change to the checker, say) and rewrite its
/// report.
pub fn recheck(dir: &std::path::Path) -> anyhow::Result<Checked> {
    let (run, config) = RunOutput::load(dir)?;
    judge(run, &config)
}

fn judge(run: RunOutput, config: &RunConfig) -> anyhow::Result<Checked> {
    let analysis = analysis::analyse(&run.history);
    let written = report::write(&config.out_dir, &run.run_id, config, &run.history, &analysis)?;
    Ok(Checked { run, analysis, written, config: config.clone() })
}
