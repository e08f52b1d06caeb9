//! The fault schedule: which faults a run applies, in which order, and what each one did.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::history::WorkerId;

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A worker process that holds a lock is SIGKILLed inside its section (and replaced).
    KillWorker,
    /// A worker process that holds a lock is SIGSTOPped for longer than the ttl, then SIGCONTed.
    PauseWorker,
    /// The backend server is SIGSTOPped for longer than the ttl, then resumed.
    PauseServer,
    /// The backend server is SIGKILLed and started again, empty, on the same port.
    RestartServer,
    /// The backend loses one held key (deleted behind its holder's back, as a failover to a
    /// replica that missed the write would).
    DropKey,
    /// The checker's proxy stops forwarding on every open connection to the backend, for good;
    /// new connections work.
    Blackhole,
    /// Some workers (at least one holder among them) are cut off from the backend (their
    /// network namespace routes its address into a black hole), then reconnected.
    Partition,
    /// Some workers (a holder among them) are cut off from one node of a topology the checker
    /// started — the primary that serves a held key — while the other nodes stay reachable,
    /// then reconnected: the cluster's other shards, or a Sentinel group's sentinels, go on
    /// answering them.
    PartitionPrimary,
    /// The checker's proxy delays everything between workers and the backend.
    Latency,
    /// A topology's primary (the one serving a held key) hands over to its replica by the
    /// topology's own command, unasked by dlock: `CLUSTER FAILOVER TAKEOVER` on the replica,
    /// or `SENTINEL FAILOVER`. Writes the replica had not received are lost.
    Failover,
    /// A topology's primary (the one serving a held key) is SIGKILLed; its replica is elected
    /// in its place, and it comes back, empty, as the replica.
    KillPrimary,
}

impl FaultKind {
    /// Every kind, in the order of the default schedule.
    pub const ALL: [FaultKind; 11] = [
        Self::KillWorker,
        Self::PauseWorker,
        Self::PauseServer,
        Self::DropKey,
        Self::Partition,
        Self::PartitionPrimary,
        Self::Latency,
        Self::Failover,
        Self::KillPrimary,
        Self::RestartServer,
        Self::Blackhole,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::KillWorker => "kill-worker",
            Self::PauseWorker => "pause-worker",
            Self::PauseServer => "pause-server",
            Self::RestartServer => "restart-server",
            Self::DropKey => "drop-key",
            Self::Blackhole => "blackhole",
            Self::Partition => "partition",
            Self::PartitionPrimary => "partition-primary",
            Self::Latency => "latency",
            Self::Failover => "failover",
            Self::KillPrimary => "kill-primary",
        }
    }

    /// Whether it acts on the backend server (so needs a server the checker started).
    pub fn needs_own_server(self) -> bool {
        matches!(
            self,
            Self::PauseServer
                | Self::RestartServer
                | Self::DropKey
                | Self::Failover
                | Self::KillPrimary
                | Self::PartitionPrimary
        )
    }

    /// Whether it acts on worker processes (so needs workers in their own processes).
    pub fn needs_processes(self) -> bool {
        matches!(self, Self::KillWorker | Self::PauseWorker | Self::Partition | Self::PartitionPrimary)
    }

    /// Whether it needs the workers in network namespaces of their own.
    pub fn needs_namespaces(self) -> bool {
        matches!(self, Self::Partition | Self::PartitionPrimary)
    }

    /// Whether it needs the checker's proxy between workers and the backend.
    pub fn needs_proxy(self) -> bool {
        matches!(self, Self::Blackhole | Self::Latency)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of the schedule: `kind[:duration[:delay]]` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// What.
    pub kind: FaultKind,
    /// How long it lasts (pauses, partition, latency); `None`: the default for the run.
    pub duration: Option<Duration>,
    /// The added delay, each way (latency only).
    pub delay: Option<Duration>,
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let name = parts.next().unwrap_or_default();
        let kind = FaultKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault `{name}`; the faults are {}", names.join(", "))
        })?;
        let mut durations = Vec::new();
        for part in parts {
            durations.push(humantime::parse_duration(part).map_err(|err| {
                format!("`{part}` in `{text}` is not a duration ({err}); write e.g. 1500ms or 2s")
            })?);
        }
        let (duration, delay) = match (kind, durations.as_slice()) {
            (_, []) => (None, None),
            (FaultKind::Latency, [delay]) => (None, Some(*delay)),
            (FaultKind::Latency, [delay, duration]) => (Some(*duration), Some(*delay)),
            (
                FaultKind::PauseWorker
                | FaultKind::PauseServer
                | FaultKind::Partition
                | FaultKind::PartitionPrimary,
                [duration],
            ) => (Some(*duration), None),
            (FaultKind::RestartServer, [down]) => (Some(*down), None),
            _ => {
                return Err(format!(
                    "`{text}`: {name} takes {}",
                    match kind {
                        FaultKind::Latency => "at most a delay and a duration (latency:200ms:3s)",
                        FaultKind::RestartServer =>
                            "at most how long the server stays down (restart-server:500ms)",
                        FaultKind::PauseWorker
                        | FaultKind::PauseServer
                        | FaultKind::Partition
                        | FaultKind::PartitionPrimary => {
                            "at most a duration (e.g. pause-server:2s)"
                        }
                        _ => "no duration",
                    }
                ));
            }
        };
        Ok(Self { kind, duration, delay })
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if let Some(delay) = self.delay {
            write!(f, ":{}", humantime::format_duration(delay))?;
        }
        if let Some(duration) = self.duration {
            write!(f, ":{}", humantime::format_duration(duration))?;
        }
        Ok(())
    }
}

/// What one fault of the schedule did, for the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What was asked for.
    pub spec: FaultSpec,
    /// A short description of what was done (`pause-worker w2 for 2s`).
    pub label: String,
    /// When it began (the signal sent, the route added, …).
    pub start: Stamp,
    /// When it ended (the worker resumed, the server answering again, …); equal to `start`
    /// for an instant fault (a kill, a black hole, a dropped key).
    pub end: Stamp,
    /// Workers frozen (SIGSTOP) by it.
    pub paused_workers: Vec<WorkerId>,
    /// Workers killed by it.
    pub killed_workers: Vec<WorkerId>,
    /// Workers cut off from the backend, or from one node of it, by it (`partition`,
    /// `partition-primary`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_off_workers: Vec<WorkerId>,
    /// The run's lock keys (without the prefix) on the one node they were cut off from
    /// (`partition-primary`); the other keys stayed reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_off_keys: Vec<String>,
    /// Something worth knowing about how it went (e.g. the worker was not inside a section).
    pub note: Option<String>,
    /// Why it was not applied, if it was not.
    pub skipped: Option<String>,
    /// What the backend server lost in it, if anything: locks it forgot (`restart-server`,
    /// `drop-key`) or may have forgotten (the keys a failed-over primary served), so that a
    /// holder cannot have known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_lost: Option<DataLost>,
    /// The fencing tokens of the locks the old primary held after a failover by command began
    /// and until it was demoted: it kept granting locks (to processes that had not heard of the
    /// failover yet) that its replica never got. A section that entered after `start` counts
    /// as lost with the server's data only with one of these tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_by_old_primary: Vec<u64>,
    /// The scripts the old primary ran on the run's lock keys in the same time, from `MONITOR`:
    /// (server time in µs, lock key without the prefix). A lock it granted has a fencing token
    /// (the server's time in µs) within [`SCRIPT_TOKEN_SLACK_US`] of one of these; that also
    /// counts as granted by the old primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_primary_scripts: Vec<(i64, String)>,
}

impl FaultRecord {
    /// The record of `spec`, about to be applied now: nothing done yet.
    pub(crate) fn starting(spec: FaultSpec) -> Self {
        Self {
            spec,
            label: spec.kind.name().to_owned(),
            start: Stamp::now(),
            end: Stamp::now(),
            paused_workers: Vec::new(),
            cut_off_workers: Vec::new(),
            cut_off_keys: Vec::new(),
            killed_workers: Vec::new(),
            note: None,
            skipped: None,
            data_lost: None,
            granted_by_old_primary: Vec::new(),
            old_primary_scripts: Vec::new(),
        }
    }
}

/// How far (µs) a lock's fencing token may be from the `MONITOR` time of the script that
/// granted it: the script reads the server's clock a moment after `MONITOR` stamps the command.
pub const SCRIPT_TOKEN_SLACK_US: i64 = 500;

/// Locks the backend server lost in a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataLost {
    /// Every lock (the server was restarted empty).
    EveryKey,
    /// These lock keys (without the prefix).
    Keys(Vec<String>),
}

impl FaultRecord {
    /// Whether the server lost the lock of `key` in this fault.
    pub fn lost_key(&self, key: &str) -> bool {
        match &self.data_lost {
            None => false,
            Some(DataLost::EveryKey) => true,
            Some(DataLost::Keys(keys)) => keys.iter().any(|k| k == key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_with_their_durations() {
        let spec: FaultSpec = "pause-server:2s".parse().unwrap();
        assert_eq!(
            spec,
            FaultSpec { kind: FaultKind::PauseServer, duration: Some(Duration::from_secs(2)), delay: None }
        );
        let spec: FaultSpec = "latency:200ms:3s".parse().unwrap();
        assert_eq!(spec.delay, Some(Duration::from_millis(200)));
        assert_eq!(spec.duration, Some(Duration::from_secs(3)));
        assert_eq!(spec.to_string(), "latency:200ms:3s");
        assert!("kill-worker:2s".parse::<FaultSpec>().unwrap_err().contains("no duration"));
        assert!("nap".parse::<FaultSpec>().unwrap_err().contains("kill-worker, pause-worker"));
    }
}
