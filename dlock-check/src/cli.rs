//! The command line: every option, with its default, turned into a [`RunConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::backends::{Plant, Replicas};
use crate::config::{BackendChoice, RunConfig, default_call_timeout};
use crate::schedule::{FaultKind, FaultSpec};
use crate::servers::ServerKind;
use crate::workload::{ModeChoice, Workload};

/// dlock-check: take locks under faults, record everything, check the history.
#[derive(Debug, Parser)]
#[command(name = "dlock-check", version, about, long_about = None)]
pub struct Cli {
    /// Internal: the worker processes the checker starts.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The check's options.
    #[command(flatten)]
    pub check: CheckArgs,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a recorded run again and rewrite its report (its directory: `--out` of the run).
    Recheck {
        /// The run's directory (holds `run.json` and `history/`).
        dir: PathBuf,
    },
    /// Run as a worker process (started by the checker itself).
    #[command(hide = true)]
    Worker {
        /// The worker's spec, as JSON.
        #[arg(long)]
        spec: String,
    },
}

/// Options of a check.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The backend under test: `redis` or `postgres` (a private redis-server or PostgreSQL the
    /// checker starts, so every fault but the failovers applies), `redis-cluster` or
    /// `redis-sentinel` (a private 6-node cluster, or a primary + replica + 3 sentinels, which
    /// the checker fails over), `memory`
    /// (the in-process backend: one process, no process or server faults) or a URL of a server
    /// you run, e.g. `redis://…`, `redis-cluster://…`, `postgres://…` (worker-side faults only).
    #[arg(long, default_value = "redis", value_parser = BackendChoice::parse)]
    pub backend: BackendChoice,

    /// Worker processes (for `memory`: independent services in the checker's process).
    #[arg(long, short = 'p', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,

    /// Tasks per worker.
    #[arg(long, short = 't', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub tasks: u32,

    /// Lock keys the tasks pick from at random.
    #[arg(long, short = 'k', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub keys: u32,

    /// Which API the tasks use: the attribute, the manual API, or both (even tasks / odd tasks).
    #[arg(long, value_enum, default_value_t = ModeChoice::Mixed)]
    pub mode: ModeChoice,

    /// The lease (`ttl`) every section asks for.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub ttl: Duration,

    /// How long a call waits for its lock.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub wait: Duration,

    /// Think time between read and write, `MIN..MAX`, uniformly drawn.
    #[arg(long, default_value = "5ms..30ms", value_parser = think_range)]
    pub think: (Duration, Duration),

    /// About one section in N is long: it thinks for `--long-think`, longer than the ttl, so
    /// its lease must be renewed (0: none).
    #[arg(long, default_value_t = 20)]
    pub long_every: u32,

    /// How long a long section thinks [default: 1.5 × ttl].
    #[arg(long, value_parser = duration)]
    pub long_think: Option<Duration>,

    /// The fault schedule (see `--help`).
    #[arg(
        long,
        value_delimiter = ',',
        help = "The faults, in order, comma-separated: kill-worker, pause-worker[:D], pause-server[:D], drop-key, partition[:D], partition-primary[:D], latency[:DELAY[:D]], failover, kill-primary, restart-server[:DOWN], blackhole. [default: all that apply to the backend, lasting damage last: for redis every one but partition-primary, failover and kill-primary; for redis-cluster and redis-sentinel those three, pause-server (of a primary), drop-key, partition (from every node) and the workers' faults]"
    )]
    pub faults: Option<Vec<FaultSpec>>,

    /// No faults at all (a baseline run).
    #[arg(long, conflicts_with = "faults")]
    pub no_faults: bool,

    /// Quiet time before the first fault.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub baseline: Duration,

    /// Quiet time after each fault ends [default: recovery bound + 2 s].
    #[arg(long, value_parser = duration)]
    pub settle: Option<Duration>,

    /// How long pauses, partitions and latency last, unless the fault says [default: 2 × ttl].
    #[arg(long, value_parser = duration)]
    pub fault_duration: Option<Duration>,

    /// The delay `latency` adds each way, unless the fault says.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub latency: Duration,

    /// After a fault ends, every key must see a section within this [default: ttl + 1 s].
    #[arg(long, value_parser = duration)]
    pub recovery_bound: Option<Duration>,

    /// Plant a bug, to see the checker catch it: into the backend (release-without-owner-check,
    /// trust-expired-lease) or the manual-API tasks (body-before-lease).
    #[arg(long, value_enum)]
    pub plant: Option<Plant>,

    /// The bound on every backend call [default: min(2 s, ttl / 2)]: a silent connection
    /// costs one call timeout before it is replaced, so it must be well under the ttl.
    #[arg(long, value_parser = duration)]
    pub call_timeout: Option<Duration>,

    /// Require N replicas to acknowledge every acquisition within WAIT [default WAIT: 100ms]
    /// (dlock's `replicas_acknowledge`, Redis `WAIT`): for `redis-cluster`, `redis-sentinel`
    /// and Redis URLs whose primaries have replicas. Off by default, as in dlock.
    #[arg(long, value_name = "N[:WAIT]")]
    pub replicas: Option<Replicas>,

    /// Where the history and the report go [default: target/dlock-check/run-UNIXTIME].
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Seed of the tasks' random choices [default: random].
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print only the report.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err}; write e.g. 500ms, 2s, 1m"))
}

fn think_range(text: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = text.split_once("..").ok_or("expected MIN..MAX, e.g. 5ms..30ms")?;
    let (min, max) = (duration(min)?, duration(max)?);
    if min > max {
        return Err(format!("{text}: the minimum is greater than the maximum"));
    }
    Ok((min, max))
}

impl CheckArgs {
    /// The run these options describe; `worker_exe` is the binary to start workers from.
    pub fn config(&self, worker_exe: PathBuf) -> Result<RunConfig, String> {
        if self.ttl < dlock::MIN_TTL {
            return Err(format!("--ttl {:?} is under dlock's minimum of {:?}", self.ttl, dlock::MIN_TTL));
        }
        let recovery_bound = self.recovery_bound.unwrap_or(self.ttl + Duration::from_secs(1));
        let call_timeout = self.call_timeout.unwrap_or_else(|| default_call_timeout(self.ttl));
        if call_timeout.is_zero() {
            return Err("--call-timeout 0 would fail every backend call".into());
        }
        let out_dir = self.out.clone().unwrap_or_else(|| {
            let secs =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            PathBuf::from(format!("target/dlock-check/run-{secs}"))
        });
        let faults = match (&self.faults, self.no_faults) {
            (_, true) => Vec::new(),
            (Some(faults), false) => faults.clone(),
            (None, false) => self
                .backend
                .default_faults()
                .into_iter()
                .map(|kind| FaultSpec { kind, duration: None, delay: None })
                .collect(),
        };
        if self.plant == Some(Plant::BodyBeforeLease) && self.mode == ModeChoice::Attribute {
            return Err(format!(
                "--plant {} is planted into the manual-API tasks: use --mode manual or mixed",
                Plant::BodyBeforeLease
            ));
        }
        if self.replicas.is_some()
            && matches!(
                self.backend,
                BackendChoice::Memory | BackendChoice::Managed(ServerKind::Redis | ServerKind::Postgres)
            )
        {
            return Err(format!(
                "--replicas: the backend `{}` has no replicas to acknowledge anything (use --backend redis-cluster or redis-sentinel)",
                self.backend
            ));
        }
        if let (Some(replicas), BackendChoice::Managed(kind)) = (self.replicas, &self.backend)
            && kind.is_topology()
            && replicas.count > 1
        {
            return Err(format!(
                "--replicas {}: the checker's {kind} has one replica per primary; ask for 1",
                replicas.count
            ));
        }
        if faults.iter().any(|f| f.kind == FaultKind::Latency && f.delay.is_some_and(|d| d.is_zero())) {
            return Err("a latency of 0 adds nothing".into());
        }
        Ok(RunConfig {
            backend: self.backend.clone(),
            workers: self.workers,
            workload: Workload {
                tasks: self.tasks,
                keys: (0..self.keys).map(|i| format!("key-{i}")).collect(),
                mode: self.mode,
                ttl: self.ttl,
                wait: self.wait,
                think_min: self.think.0,
                think_max: self.think.1,
                long_every: self.long_every,
                long_think: self.long_think.unwrap_or(self.ttl.mul_f64(1.5)),
                seed: self.seed.unwrap_or_else(rand::random),
            },
            faults,
            baseline: self.baseline,
            settle: self.settle.unwrap_or(recovery_bound + Duration::from_secs(2)),
            fault_duration: self.fault_duration.unwrap_or(self.ttl * 2),
            latency: self.latency,
            recovery_bound,
            plant: self.plant,
            call_timeout,
            replicas: self.replicas,
            out_dir,
            worker_exe,
            verbose: !self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    fn config(args: &[&str]) -> Result<crate::config::RunConfig, String> {
        let cli = Cli::try_parse_from([&["dlock-check"], args].concat()).map_err(|e| e.to_string())?;
        cli.check.config("dlock-check".into())
    }

    #[test]
    fn replicas_are_asked_only_of_a_backend_that_has_them() {
        let refused = |args: &[&str], why: &str| {
            let err = config(args).expect_err("refused");
            assert!(err.contains(why), "{args:?}: {err}");
        };
        refused(&["--backend", "redis", "--replicas", "1"], "no replicas");
        refused(&["--backend", "memory", "--replicas", "1"], "no replicas");
        refused(&["--backend", "postgres", "--replicas", "1"], "no replicas");
        refused(&["--backend", "redis-sentinel", "--replicas", "2"], "one replica per primary");
        let taken = config(&["--backend", "redis-cluster", "--replicas", "1:50ms"]).expect("taken");
        assert_eq!(taken.replicas.map(|r| (r.count, r.wait.as_millis())), Some((1, 50)));
        // A URL: the checker cannot know; dlock asks the servers.
        assert!(config(&["--backend", "redis-cluster://127.0.0.1:7000", "--replicas", "2"]).is_ok());
    }
}
