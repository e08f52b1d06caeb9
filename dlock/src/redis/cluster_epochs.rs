//! [`ClusterEpochs`]: tells a Redis Cluster backend's leases that the cluster changed hands.
//!
//! A failover promotes a replica, and a lock its old primary had not yet passed on to that
//! replica is gone. Redis Cluster tells clients nothing when it happens, so the watch asks:
//! every [`POLL`] it reads `CLUSTER NODES` from one node and takes the highest configuration
//! epoch among the primaries that serve slots. A promoted replica serves its slots under an
//! epoch above every other node's (with the cluster's agreement it takes a new one; with
//! `TAKEOVER` it takes a new one unless its own is already the highest), so every failover
//! raises that number. When it has risen, and the node no longer sees a failover under way (a
//! failed primary still holding slots, with a replica that can take them), the watch moves
//! the backend's
//! [`lease_epochs`](crate::LockBackend::lease_epochs) on: the service then renews every lease
//! it holds on the cluster at once, and a lease the new primary lacks is reported lost within
//! about a poll of the failover rather than at its next scheduled renewal.
//!
//! Other changes may raise it too (a slot migration can): they only cost one early renewal of
//! each lease. The watch asks only while a lease the backend granted may still be alive
//! ([`LeaseActivity`]): a process that holds no lock sends nothing.

use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError};
use tokio::sync::watch;

use super::connection::{Conn, Connections};
use super::engine::LeaseActivity;
use crate::backend::{BackendError, BackendErrorKind};
use crate::background::{self, Lasting};

/// How often the watch reads the cluster's configuration.
const POLL: Duration = Duration::from_secs(1);

/// The lease epochs of one cluster backend; the watch starts when they are first asked for
/// (a service is built on the backend), and stops when the backend is gone.
pub(super) struct ClusterEpochs {
    /// The epoch read when the backend connected, before it granted any lease.
    at_connect: Option<u64>,
    /// Whether the backend may hold leases (its engine notes them).
    activity: Arc<LeaseActivity>,
    epochs: OnceLock<watch::Receiver<u64>>,
}

impl ClusterEpochs {
    /// Epochs counted from the cluster's configuration epoch when the backend connected (`None`:
    /// it could not be read then, or a failover was under way; the watch's first settled
    /// reading then renews every lease once, and stands for it), watched while `activity` says
    /// the backend may hold leases.
    pub(super) fn new(at_connect: Option<u64>, activity: Arc<LeaseActivity>) -> Self {
        Self { at_connect, activity, epochs: OnceLock::new() }
    }

    /// A receiver of the epochs, starting the watch on the backend's command connections
    /// `conns` if it has not started.
    pub(super) fn subscribe(&self, conns: &Arc<Connections>) -> watch::Receiver<u64> {
        self.epochs
            .get_or_init(|| {
                let (sender, receiver) = watch::channel(0);
                let watch = Watch {
                    conns: Arc::downgrade(conns),
                    activity: Arc::clone(&self.activity),
                    sender,
                    seen: self.at_connect,
                };
                background::spawn_lasting(watch);
                receiver
            })
            .clone()
    }
}

/// The watch: polls while the backend's connections live and it may hold leases.
struct Watch {
    conns: Weak<Connections>,
    activity: Arc<LeaseActivity>,
    sender: watch::Sender<u64>,
    /// The highest epoch of a serving primary seen so far.
    seen: Option<u64>,
}

impl Lasting for Watch {
    fn run(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(conns) = self.conns.upgrade() else { return };
                if !self.activity.may_hold_leases() {
                    // A failover now loses nothing of this process's; a later reading still
                    // sees the epoch it raised, and renews what is held then once more.
                    continue;
                }
                match read_epoch(&conns).await {
                    Ok(Some(epoch)) => self.saw(epoch),
                    // Not settled yet (a failover under way): asked again at the next poll.
                    Ok(None) => {}
                    Err(err) if err.kind() == BackendErrorKind::Permission => {
                        tracing::warn!(target: "dlock", error = %err, "the Redis user may not run CLUSTER NODES (`+cluster|nodes`): a lease a cluster failover loses is reported at its next renewal, not within a second");
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(target: "dlock", error = %err, "could not read the Redis Cluster's epoch; asking again shortly");
                    }
                }
            }
        })
    }

    /// Nothing is left half done: the next run polls again.
    fn interrupted(&mut self) {}
}

impl Watch {
    /// The cluster, settled, has primaries serving slots under configuration epochs up to `epoch`.
    fn saw(&mut self, epoch: u64) {
        match self.seen {
            Some(seen) if epoch > seen => {
                self.seen = Some(epoch);
                tracing::debug!(target: "dlock", epoch, "the Redis Cluster's configuration changed: renewing every lease at once");
                self.sender.send_modify(|epochs| *epochs += 1);
            }
            Some(_) => {}
            // No settled reading since the backend connected (a failover was under way then, or
            // the configuration could not be read), and it may hold leases now: a failover may
            // have ended since one was granted, so this first reading renews them all once.
            None => {
                self.seen = Some(epoch);
                tracing::debug!(target: "dlock", epoch, "the Redis Cluster's first settled configuration: renewing every lease at once");
                self.sender.send_modify(|epochs| *epochs += 1);
            }
        }
    }
}

/// `CLUSTER NODES` from one node: the highest configuration epoch of a primary serving slots,
/// if that node sees no failover under way (see [`settled_epoch`]).
pub(super) async fn read_epoch(conns: &Arc<Connections>) -> Result<Option<u64>, BackendError> {
    let nodes: String = conns
        .call("CLUSTER NODES", |conn| async move {
            let Conn::Cluster(mut conn) = conn else {
                return Err(RedisError::from((
                    ErrorKind::Client,
                    "CLUSTER NODES needs a cluster connection",
                )));
            };
            let mut nodes = redis::cmd("CLUSTER");
            nodes.arg("NODES");
            let reply =
                conn.route_command(nodes, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)).await?;
            // A refusal (`NOPERM`) comes back as a value: make it the error it is.
            Ok(redis::from_redis_value(reply.extract_error()?)?)
        })
        .await?;
    Ok(settled_epoch(&nodes))
}

/// From a `CLUSTER NODES` reply (one node a line: id, address, flags, its primary, ping sent,
/// pong received, configuration epoch, link state, then its slots), the highest epoch of a
/// primary with slots that is not flagged `fail`; `None` if none was read, or while a failover
/// is under way: a failed primary still holds slots and has a replica not flagged `fail`,
/// which is about to take its place. A failed primary with no such replica (its whole shard
/// is down, the cluster serving the rest) waits for nothing, and must not hide failovers of
/// the other shards.
fn settled_epoch(nodes: &str) -> Option<u64> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<&str>>())
        .filter(|fields| fields.len() > 7)
        .collect();
    let flags = |fields: &[&str]| -> Vec<String> { fields[2].split(',').map(str::to_owned).collect() };
    let live_replica_of = |id: &str| {
        lines.iter().any(|fields| {
            let flags = flags(fields);
            fields[3] == id && flags.iter().any(|f| f == "slave") && !flags.iter().any(|f| f == "fail")
        })
    };
    let mut highest = None;
    for fields in &lines {
        let flags = flags(fields);
        // A primary serving slots: its slots follow the link state.
        if !flags.iter().any(|f| f == "master") || fields.len() <= 8 {
            continue;
        }
        if flags.iter().any(|f| f == "fail") {
            if live_replica_of(fields[0]) {
                return None;
            }
            continue;
        }
        highest = highest.max(fields[6].parse::<u64>().ok());
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::settled_epoch;

    const NODES: &str = "\
7ed8 127.0.0.1:7603@17603 master - 0 1796329614068 3 connected 10923-16383
64f8 127.0.0.1:7606@17606 slave 6fdd 0 1796329613464 1 connected
25bd 127.0.0.1:7604@17604 slave f9b9 0 1796329614068 2 connected
6fdd 127.0.0.1:7601@17601 myself,master - 0 1796329614000 1 connected 0-5460
2591 127.0.0.1:7605@17605 slave 7ed8 0 1796329614068 3 connected
f9b9 127.0.0.1:7602@17602 master - 0 1796329614068 2 connected 5461-10922
";

    #[test]
    fn the_epoch_is_the_highest_of_the_primaries_serving_slots() {
        assert_eq!(settled_epoch(NODES), Some(3));
        // 7604 took over 7602's slots under its own epoch (6, the highest already).
        let after = NODES
            .replace(
                "25bd 127.0.0.1:7604@17604 slave f9b9 0 1796329614068 2 connected",
                "25bd 127.0.0.1:7604@17604 master - 0 1796329614068 6 connected 5461-10922",
            )
            .replace(
                "f9b9 127.0.0.1:7602@17602 master - 0 1796329614068 2 connected 5461-10922",
                "f9b9 127.0.0.1:7602@17602 slave 25bd 0 1796329614068 6 connected",
            );
        assert_eq!(settled_epoch(&after), Some(6));
    }

    #[test]
    fn a_shard_down_for_good_does_not_hide_failovers_of_the_others() {
        // 7602 and its replica 7604 are both down: no failover will come for their slots.
        let dead = NODES
            .replace("7602@17602 master", "7602@17602 master,fail")
            .replace("7604@17604 slave", "7604@17604 slave,fail");
        assert_eq!(settled_epoch(&dead), Some(3));
        // 7605 took over 7603's slots meanwhile.
        let after = dead
            .replace(
                "2591 127.0.0.1:7605@17605 slave 7ed8 0 1796329614068 3 connected",
                "2591 127.0.0.1:7605@17605 master - 0 1796329614068 7 connected 10923-16383",
            )
            .replace(
                "7ed8 127.0.0.1:7603@17603 master - 0 1796329614068 3 connected 10923-16383",
                "7ed8 127.0.0.1:7603@17603 slave 2591 0 1796329614068 7 connected",
            );
        assert_eq!(settled_epoch(&after), Some(7));
    }

    #[test]
    fn a_failed_primary_still_holding_slots_is_a_failover_under_way() {
        assert_eq!(settled_epoch(&NODES.replace("7602@17602 master", "7602@17602 master,fail")), None);
        // Suspected only (`fail?`): no failover yet.
        assert_eq!(settled_epoch(&NODES.replace("7602@17602 master", "7602@17602 master,fail?")), Some(3));
        assert_eq!(settled_epoch(""), None);
        assert_eq!(settled_epoch("not a node line"), None);
    }
}
