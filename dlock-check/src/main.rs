//! The `dlock-check` binary: run a check from the command line (or, re-executed by the
//! checker, one worker process).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use dlock_check::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Worker { spec }) => return dlock_check::worker::main(spec),
        Some(Command::Recheck { dir }) => {
            return match dlock_check::recheck(dir) {
                Ok(checked) => finish(&checked),
                Err(err) => {
                    eprintln!("dlock-check: {err:#}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            eprintln!("dlock-check: cannot find its own binary to start workers from: {err}");
            return ExitCode::from(2);
        }
    };
    let config = match cli.check.config(exe) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dlock-check: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dlock-check: no tokio runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            checked = dlock_check::check(config) => Some(checked),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Whatever the run left (servers, namespaces, workers) is dropped with it, before exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    // A server still held by a thread that had not finished (a topology forming, a failover
    // settling) is killed here: the process ends, its children must not outlive it.
    dlock_check::servers::kill_leftovers();
    match outcome {
        None => {
            eprintln!("dlock-check: interrupted; servers, namespaces and workers were stopped");
            ExitCode::from(130)
        }
        Some(Err(err)) => {
            eprintln!("dlock-check: {err:#}");
            ExitCode::from(2)
        }
        Some(Ok(checked)) => finish(&checked),
    }
}

/// Print the report; the exit status says pass (0), violations (1) or an unreliable history (2).
fn finish(checked: &dlock_check::Checked) -> ExitCode {
    // A reader that went away (`| head`) is no reason to panic: the report is on disk.
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", dlock_check::report::text_report(&checked.config, &checked.analysis));
    let _ = writeln!(
        out,
        "\nreport: {} (and report.txt, report.md, timeline-*.svg, history/)",
        checked.written.json.display()
    );
    match dlock_check::report::verdict(&checked.analysis) {
        "pass" => ExitCode::SUCCESS,
        "fail" => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}
