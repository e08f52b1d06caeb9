//! What a run is asked to do — the backend, the workload, the schedule and its timing — and
//! which faults can be applied to it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::{Plant, Replicas};
use crate::redis_url::{proxied_server, redact};
use crate::schedule::{FaultKind, FaultSpec};
use crate::servers::ServerKind;
use crate::workload::Workload;

/// Which backend a run checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "url", rename_all = "kebab-case")]
pub enum BackendChoice {
    /// The in-process `MemoryBackend`: every worker in the checker's own process.
    Memory,
    /// A server the checker starts (and may fault): a private `redis-server` or PostgreSQL, or
    /// a topology it fails over (a Redis Cluster, a Sentinel group).
    Managed(ServerKind),
    /// A backend the user runs, reached through `dlock::connect(url)`: only faults on the
    /// workers' side apply.
    Url(String),
}

impl BackendChoice {
    /// `memory` (or `memory:`), `redis`, `redis-cluster`, `redis-sentinel` or `postgres`
    /// (servers the checker starts), or a URL `dlock::connect` knows (`redis://…`, `redis-cluster://…`,
    /// `redis-sentinel://…`, `postgres://…`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "memory" | "memory:" => Ok(Self::Memory),
            "redis" => Ok(Self::Managed(ServerKind::Redis)),
            "redis-cluster" => Ok(Self::Managed(ServerKind::RedisCluster)),
            "redis-sentinel" => Ok(Self::Managed(ServerKind::RedisSentinel)),
            "postgres" => Ok(Self::Managed(ServerKind::Postgres)),
            url if url.contains("://") => Ok(Self::Url(url.to_owned())),
            other => Err(format!(
                "`{other}`: expected `memory`; `redis`, `redis-cluster`, `redis-sentinel` or `postgres` (a private redis-server, a 6-node cluster, a primary + replica + 3 sentinels, or a private PostgreSQL, which the checker starts and can fault); or a backend URL for dlock::connect, e.g. redis://127.0.0.1:6379 (a server you run: worker-side faults only)"
            )),
        }
    }

    /// The faults a run applies when `--faults` is not given: every one that applies to this
    /// backend (a URL's are all, the server's reported as skipped), lasting damage last.
    pub fn default_faults(&self) -> Vec<FaultKind> {
        match self {
            Self::Managed(kind) => kind.default_faults(),
            Self::Memory | Self::Url(_) => FaultKind::ALL
                .into_iter()
                .filter(|f| !matches!(f, FaultKind::Failover | FaultKind::KillPrimary))
                .collect(),
        }
    }

    /// Whether it is a topology the checker started (a cluster, a Sentinel group).
    pub fn is_topology(&self) -> bool {
        matches!(self, Self::Managed(kind) if kind.is_topology())
    }

    /// Whether the workers run in the checker's own process.
    pub fn in_process(&self) -> bool {
        matches!(self, Self::Memory)
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Managed(kind) => write!(f, "{kind} (started by dlock-check)"),
            Self::Url(url) => f.write_str(&redact(url)),
        }
    }
}

/// Everything one run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The backend under test.
    pub backend: BackendChoice,
    /// Worker processes (in-process workers for the memory backend).
    pub workers: u32,
    /// What each worker does.
    pub workload: Workload,
    /// The fault schedule.
    pub faults: Vec<FaultSpec>,
    /// Quiet time before the first fault.
    pub baseline: Duration,
    /// Quiet time after each fault ends.
    pub settle: Duration,
    /// How long pauses, partitions and latency last unless the fault says.
    pub fault_duration: Duration,
    /// The added delay of `latency` unless the fault says.
    pub latency: Duration,
    /// How soon sections must resume after a fault ends.
    pub recovery_bound: Duration,
    /// A planted bug.
    pub plant: Option<Plant>,
    /// The bound on every backend call.
    pub call_timeout: Duration,
    /// Replicas that must acknowledge every acquisition (`--replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// Where the history and the report go.
    pub out_dir: PathBuf,
    /// The `dlock-check` binary, run as `worker` for worker processes.
    pub worker_exe: PathBuf,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// The bound on every backend call when `--call-timeout` is not given: `min(2 s, ttl / 2)`.
///
/// A connection that goes silent without closing costs one call timeout before dlock replaces
/// it, by design. With half the ttl, a renewal sent at ttl/3 on a silent connection gives up
/// at 5/6 of the ttl, and the one sent on the new connection can still be confirmed before the
/// lease ends; and every key is free again within ttl + 1 s of the connection going silent.
/// dlock's own default (2 s) suits its default ttl (30 s); a ttl shorter than the call timeout
/// is a misconfiguration (a silent connection then outlasts every lease).
pub fn default_call_timeout(ttl: Duration) -> Duration {
    (ttl / 2).min(Duration::from_secs(2))
}

/// The faults that cannot be applied to this run, and why.
pub fn skip_reason(config: &RunConfig, kind: FaultKind, netns: &Result<(), String>) -> Option<String> {
    let in_process = config.backend.in_process();
    if in_process
        && (kind.needs_processes()
            || kind.needs_proxy()
            || kind.needs_own_server() && kind != FaultKind::DropKey)
    {
        return Some("the in-process backend has no worker processes, server or connections to fault".into());
    }
    if let BackendChoice::Managed(server) = config.backend
        && let Err(why) = server.takes(kind)
    {
        return Some(why);
    }
    if let BackendChoice::Url(url) = &config.backend {
        if kind.needs_own_server() {
            let own = if crate::redis_url::scheme(url).starts_with("postgres") {
                "a private PostgreSQL: `--backend postgres`"
            } else {
                "a private redis-server: `--backend redis`"
            };
            return Some(format!(
                "{} was not started by dlock-check, which faults only servers it started (it can start {own})",
                redact(url)
            ));
        }
        if (kind.needs_proxy() || kind == FaultKind::Partition)
            && let Err(why) = proxied_server(url)
        {
            return Some(why);
        }
    }
    if kind.needs_namespaces()
        && let Err(why) = netns
    {
        return Some(format!("network namespaces are not available here ({why})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::ModeChoice;

    fn config(backend: &str) -> RunConfig {
        RunConfig {
            backend: BackendChoice::parse(backend).unwrap(),
            workers: 1,
            workload: Workload {
                tasks: 1,
                keys: vec!["k".into()],
                mode: ModeChoice::Mixed,
                ttl: Duration::from_secs(1),
                wait: Duration::from_secs(1),
                think_min: Duration::ZERO,
                think_max: Duration::ZERO,
                long_every: 0,
                long_think: Duration::ZERO,
                seed: 0,
            },
            faults: Vec::new(),
            baseline: Duration::ZERO,
            settle: Duration::ZERO,
            fault_duration: Duration::ZERO,
            latency: Duration::ZERO,
            recovery_bound: Duration::ZERO,
            plant: None,
            call_timeout: default_call_timeout(Duration::from_secs(1)),
            replicas: None,
            out_dir: PathBuf::new(),
            worker_exe: PathBuf::new(),
            verbose: false,
        }
    }

    fn skipped(backend: &str, kind: FaultKind) -> Option<String> {
        skip_reason(&config(backend), kind, &Ok(()))
    }

    #[test]
    fn backends_parse_and_a_url_gets_the_faults_the_checker_can_apply_to_it() {
        assert_eq!(BackendChoice::parse("memory:").unwrap(), BackendChoice::Memory);
        assert_eq!(BackendChoice::parse("redis").unwrap(), BackendChoice::Managed(ServerKind::Redis));
        assert!(BackendChoice::parse("redis-clusters").is_err(), "a word that is no URL");
        // A private server: everything but failing over and cutting workers off from one of
        // several nodes.
        let topology_only =
            |kind| matches!(kind, FaultKind::Failover | FaultKind::KillPrimary | FaultKind::PartitionPrimary);
        for kind in FaultKind::ALL {
            assert_eq!(skipped("redis", kind).is_some(), topology_only(kind), "{kind}");
        }
        assert!(skipped("redis", FaultKind::PartitionPrimary).is_some_and(|why| why.contains("`partition`")));
        assert_eq!(BackendChoice::parse("redis").unwrap().default_faults().len(), 8);
        // A private PostgreSQL takes the same: it is one server on one address.
        assert_eq!(BackendChoice::parse("postgres").unwrap(), BackendChoice::Managed(ServerKind::Postgres));
        assert!(!BackendChoice::parse("postgres").unwrap().is_topology());
        for kind in FaultKind::ALL {
            let why = skipped("postgres", kind);
            assert_eq!(why.is_some(), topology_only(kind), "{kind}");
            let fails_over = matches!(kind, FaultKind::Failover | FaultKind::KillPrimary);
            assert!(why.is_none_or(|why| why.contains("without a standby") == fails_over), "{kind}");
        }
        // A private topology: failovers, a frozen primary, a dropped key, workers cut off from
        // it and the workers' faults; no restarting or proxying it.
        for topology in ["redis-cluster", "redis-sentinel"] {
            let choice = BackendChoice::parse(topology).unwrap();
            assert!(matches!(choice, BackendChoice::Managed(kind) if kind.is_topology()));
            assert!(choice.is_topology());
            assert_eq!(
                choice.default_faults(),
                [
                    FaultKind::KillWorker,
                    FaultKind::PauseWorker,
                    FaultKind::PauseServer,
                    FaultKind::DropKey,
                    FaultKind::Partition,
                    FaultKind::PartitionPrimary,
                    FaultKind::Failover,
                    FaultKind::KillPrimary
                ]
            );
            for kind in [FaultKind::RestartServer, FaultKind::Blackhole, FaultKind::Latency] {
                assert!(skipped(topology, kind).is_some_and(|why| why.contains("several servers")), "{kind}");
            }
        }
        // Nobody fails over the in-process backend or a server somebody else runs.
        assert!(skipped("memory", FaultKind::Failover).is_some());
        assert!(
            skipped("redis-cluster://127.0.0.1:7000", FaultKind::KillPrimary)
                .unwrap()
                .contains("not started")
        );
        // A server somebody else runs: never its server, but the proxy's faults.
        assert!(
            skipped("redis://:pw@127.0.0.1:6390", FaultKind::RestartServer).unwrap().contains("not started")
        );
        assert!(!skipped("redis://:pw@127.0.0.1:6390", FaultKind::RestartServer).unwrap().contains("pw"));
        assert_eq!(skipped("redis://127.0.0.1:6390", FaultKind::Blackhole), None);
        assert_eq!(skipped("postgres://127.0.0.1/db", FaultKind::Latency), None);
        // Each points at the private server the checker can start for it.
        for (url, own) in
            [("postgres://127.0.0.1/db", "`--backend postgres`"), ("redis://h:1", "`--backend redis`")]
        {
            assert!(skipped(url, FaultKind::PauseServer).is_some_and(|why| why.contains(own)), "{url}");
        }
        // Several servers: no proxy in front of them; the workers' own faults still apply.
        let cluster = "redis-cluster://127.0.0.1:7000,127.0.0.1:7001";
        for kind in [FaultKind::Blackhole, FaultKind::Latency, FaultKind::Partition] {
            assert!(skipped(cluster, kind).is_some_and(|why| why.contains("several servers")), "{kind}");
        }
        assert_eq!(skipped(cluster, FaultKind::PauseWorker), None);
        // Its nodes' addresses are its own: only a topology the checker started is cut off
        // from one of them.
        assert!(skipped(cluster, FaultKind::PartitionPrimary).is_some_and(|why| why.contains("not started")));
    }

    #[test]
    fn the_call_timeout_is_half_the_ttl_up_to_two_seconds() {
        assert_eq!(default_call_timeout(Duration::from_millis(400)), Duration::from_millis(200));
        assert_eq!(default_call_timeout(Duration::from_secs(30)), Duration::from_secs(2));
    }
}
