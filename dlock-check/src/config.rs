//! What a run is asked to do — the backend, the workload, the schedule and its timing — and
//! which faults can be applied to it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::Plant;
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
    /// A server the checker starts (and may fault): today a private `redis-server`.
    Managed(ServerKind),
    /// A backend the user runs, reached through `dlock::connect(url)`: only faults on the
    /// workers' side apply.
    Url(String),
}

impl BackendChoice {
    /// `memory` (or `memory:`), `redis` (a private server), or a URL `dlock::connect` knows
    /// (`redis://…`, and whatever schemes it adds: `redis-cluster://…`, `postgres://…`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "memory" | "memory:" => Ok(Self::Memory),
            "redis" => Ok(Self::Managed(ServerKind::Redis)),
            url if url.contains("://") => Ok(Self::Url(url.to_owned())),
            other => Err(format!(
                "`{other}`: expected `memory`, `redis` (a private redis-server the checker starts and can fault) or a backend URL for dlock::connect, e.g. redis://127.0.0.1:6379 (a server you run: worker-side faults only)"
            )),
        }
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
            || kind == FaultKind::PauseServer
            || kind == FaultKind::RestartServer)
    {
        return Some("the in-process backend has no worker processes, server or connections to fault".into());
    }
    if let BackendChoice::Url(url) = &config.backend {
        if kind.needs_own_server() {
            return Some(format!(
                "{} was not started by dlock-check, which faults only servers it started: use `--backend redis` (a private redis-server)",
                redact(url)
            ));
        }
        if kind.needs_proxy() || kind == FaultKind::Partition {
            if let Err(why) = proxied_server(url) {
                return Some(why);
            }
        }
    }
    if kind == FaultKind::Partition
        && let Err(why) = netns
    {
        return Some(format!("network namespaces are not available here ({why})"));
    }
    None
}
