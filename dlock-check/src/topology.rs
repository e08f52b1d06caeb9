//! Topologies the checker starts and fails over itself: a Redis Cluster of three primaries and
//! three replicas, and a primary with one replica watched by three sentinels. Every node is a
//! [`RedisServer`] of its own (a free loopback port, its own directory, killed when dropped),
//! reached — when the run partitions workers — at an address of its own as well
//! ([`NodeAddrs`]), which it announces to clients.
//!
//! Both settle before they are used and after every failover: each node agrees on who serves
//! what, no node is flagged failing, and every replica is linked to its primary. A fault
//! therefore always starts from a whole topology, and ends only once it is whole again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::clock::Stamp;
use crate::postgres_server::PostgresServer;
use crate::servers::{
    FailedOver, ManagedServer, Mode, OldPrimary, PrimaryAt, RedisServer, ServerKind, free_port,
};

/// How long a topology may take to form, or to settle again after a failover.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// The cluster's `cluster-node-timeout`: how long a silent primary may go before the others
/// take it for failing and its replica is elected in its place.
const NODE_TIMEOUT_MS: u64 = 1000;

/// The sentinels' `down-after-milliseconds`.
const DOWN_AFTER_MS: u64 = 1000;

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "dlock-check";

/// Where the nodes of a topology are reached: node `k` at the `k`-th address (the last one
/// for any beyond) as well as on loopback, or every node on loopback alone when there are
/// none. Each node announces its address to clients, so that workers in the checker's network
/// namespaces can be cut off from one node, or all of them, by routes.
#[derive(Debug, Clone, Default)]
pub struct NodeAddrs(pub Vec<Ipv4Addr>);

impl NodeAddrs {
    fn of(&self, k: usize) -> Ipv4Addr {
        self.0.get(k).or(self.0.last()).copied().unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

/// Start a server or a topology of `kind`, its files under `dir/name`, a topology's nodes
/// reached at `addrs`. A single server is reached on loopback (a partition cuts it off
/// through a proxy).
pub fn start(
    kind: ServerKind,
    dir: &Path,
    name: &str,
    addrs: &NodeAddrs,
) -> anyhow::Result<Box<dyn ManagedServer>> {
    match kind {
        ServerKind::Redis => Ok(Box::new(RedisServer::start(dir, name)?)),
        ServerKind::RedisCluster => Ok(Box::new(RedisCluster::start_at(&dir.join(name), addrs)?)),
        ServerKind::RedisSentinel => Ok(Box::new(SentinelGroup::start_at(&dir.join(name), addrs)?)),
        ServerKind::Postgres => Ok(Box::new(PostgresServer::start(dir, name)?)),
    }
}

/// A Redis Cluster on loopback: six nodes made into three primaries with a replica each by
/// `redis-cli --cluster create --cluster-replicas 1`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster").field("ports", &self.ports()).finish()
    }
}

impl RedisCluster {
    /// Start the six nodes under `dir`, make them a cluster, and return once it has settled.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_at(dir, &NodeAddrs::default())
    }

    /// [`start`](Self::start), the nodes reached (and announcing themselves) at `addrs`.
    pub fn start_at(dir: &Path, addrs: &NodeAddrs) -> anyhow::Result<Self> {
        let nodes = (0..6)
            .map(|i| {
                let reach = addrs.of(i);
                RedisServer::start_at(dir, &format!("node-{i}"), Mode::Data, reach, |_| {
                    // The bus port is picked too: port + 10000 may be taken.
                    let bus = free_port()?;
                    let mut args: Vec<String> = [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        &NODE_TIMEOUT_MS.to_string(),
                        "--cluster-port",
                        &bus.to_string(),
                        // A replica may always stand in, however long it was cut off.
                        "--cluster-replica-validity-factor",
                        "0",
                        SYNC_AT_ONCE[0],
                        SYNC_AT_ONCE[1],
                    ]
                    .map(String::from)
                    .to_vec();
                    if !reach.is_loopback() {
                        args.extend(["--cluster-announce-ip".into(), reach.to_string()]);
                    }
                    Ok(args)
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Self { nodes };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(cluster.nodes.iter().map(|n| n.reached_at().to_string()));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        run_bounded(create, "redis-cli --cluster create", &dir.join("create.log"))?;
        cluster.wait_settled()?;
        Ok(cluster)
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|n| n.is_running()).map(RedisServer::port)
    }

    fn node_mut(&mut self, port: u16) -> anyhow::Result<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port() == port).with_context(|| format!("no node on port {port}"))
    }

    /// The cluster as every running node sees it, if they all see it whole: `cluster_state:ok`,
    /// nobody flagged failing, three primaries sharing all 16384 slots alike in every view, and
    /// every replica linked to its primary.
    fn settled(&self) -> Result<Vec<NodeLine>, String> {
        let mut agreed: Option<Vec<NodeLine>> = None;
        for port in self.running() {
            let info: String = query(port, &["CLUSTER", "INFO"])?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            let view = NodeLine::parse_all(&query::<String>(port, &["CLUSTER", "NODES"])?);
            if let Some(failing) = view.iter().find(|n| n.failing()) {
                return Err(format!("node {port} flags node {} failing", failing.port));
            }
            let primaries: Vec<&NodeLine> = view.iter().filter(|n| !n.slots.is_empty()).collect();
            let covered: u32 = primaries
                .iter()
                .flat_map(|n| &n.slots)
                .map(|(a, b)| u32::from(b.saturating_sub(*a)) + 1)
                .sum();
            if primaries.len() != 3 || covered != 16384 || view.len() != 6 {
                return Err(format!("node {port} sees {} primaries over {covered} slots", primaries.len()));
            }
            match &agreed {
                Some(first) if !same_owners(first, &view) => {
                    return Err(format!("node {port} disagrees on who serves which slots"));
                }
                Some(_) => {}
                None => agreed = Some(view),
            }
        }
        let view = agreed.ok_or("no node runs")?;
        // Every primary has its replica (a failover needs one to fail over to).
        if let Some(alone) = view
            .iter()
            .filter(|n| !n.slots.is_empty())
            .find(|p| !view.iter().any(|r| r.master.as_deref() == Some(p.id.as_str())))
        {
            return Err(format!("primary {} has no replica (yet)", alone.port));
        }
        for replica in view.iter().filter(|n| n.slots.is_empty()) {
            let info: String = query(replica.port, &["INFO", "replication"])?;
            if info_field(&info, "master_link_status") != Some("up") {
                return Err(format!("replica {} is not linked to its primary yet", replica.port));
            }
        }
        Ok(view)
    }

    fn wait_settled(&self) -> anyhow::Result<Vec<NodeLine>> {
        poll(SETTLE_BOUND, "the cluster settling", || self.settled())
    }

    /// Whether every running node but `gone` has `replica` serving `slot`, with
    /// `cluster_state:ok`.
    fn serves(&self, replica: &str, slot: u16, gone: Option<u16>) -> Result<(), String> {
        for port in self.running().filter(|p| Some(*p) != gone) {
            let info: String = query(port, &["CLUSTER", "INFO"])?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            let view = NodeLine::parse_all(&query::<String>(port, &["CLUSTER", "NODES"])?);
            if !view.iter().any(|n| n.id == replica && n.serves(slot)) {
                return Err(format!("node {port} does not have the replica serving slot {slot} yet"));
            }
        }
        Ok(())
    }
}

/// The primary that serves a key's slot, its replica, and the run's keys it serves.
struct Shard {
    slot: u16,
    primary: NodeLine,
    replica: NodeLine,
    served: Vec<String>,
}

impl RedisCluster {
    /// Once the cluster is whole: the shard of `aim`, and which of `keys` it serves.
    fn shard(&self, aim: &str, keys: &[String]) -> anyhow::Result<Shard> {
        let view = self.wait_settled()?;
        let any = view.first().context("an empty cluster")?.port;
        let slot_of = |key: &str| -> anyhow::Result<u16> {
            query(any, &["CLUSTER", "KEYSLOT", key]).map_err(anyhow::Error::msg)
        };
        let slot = slot_of(aim)?;
        let primary = view.iter().find(|n| n.serves(slot)).context("nobody serves the key's slot")?;
        let replica = view
            .iter()
            .find(|n| n.master.as_deref() == Some(primary.id.as_str()))
            .with_context(|| format!("primary {} has no replica", primary.port))?;
        let mut served = Vec::new();
        for key in keys {
            if primary.serves(slot_of(key)?) {
                served.push(key.clone());
            }
        }
        Ok(Shard { slot, primary: primary.clone(), replica: replica.clone(), served })
    }
}

impl ManagedServer for RedisCluster {
    fn kind(&self) -> &'static str {
        "Redis Cluster"
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.reached_at().to_string()).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.nodes.iter_mut().try_for_each(ManagedServer::kill)
    }

    fn fail_over(&mut self, aim: &str, keys: &[String], kill: bool) -> anyhow::Result<FailedOver> {
        let Shard { slot, primary, replica, served } = self.shard(aim, keys)?;
        let (old, new, new_id) = (primary.port, replica.port, replica.id);
        let watch = if kill { None } else { Some(OldPrimaryWatch::start(old, served.clone())?) };
        let begun = Instant::now();
        let begun_at = Stamp::now();
        let how = if kill {
            self.node_mut(old)?.kill()?;
            "kill -9"
        } else {
            let said: String =
                query(new, &["CLUSTER", "FAILOVER", "TAKEOVER"]).map_err(anyhow::Error::msg)?;
            if said != "OK" {
                bail!("CLUSTER FAILOVER TAKEOVER on {new} said {said}");
            }
            "CLUSTER FAILOVER TAKEOVER"
        };
        poll(SETTLE_BOUND, "the replica serving", || self.serves(&new_id, slot, kill.then_some(old)))?;
        let serving = Stamp::now();
        let took = begun.elapsed();
        let old_primary = match watch {
            Some(watch) => watch.until_demoted()?,
            None => {
                // It comes back empty, with its nodes.conf: the cluster makes it the new
                // primary's replica.
                self.node_mut(old)?.start_again()?;
                OldPrimary::default()
            }
        };
        self.wait_settled()?;
        Ok(handed_over(how, (old, new), (begun_at, begun, took), serving, old_primary, served))
    }

    fn primary_of(&self, aim: &str, keys: &[String]) -> anyhow::Result<PrimaryAt> {
        let Shard { primary, served, .. } = self.shard(aim, keys)?;
        let node = self.nodes.iter().find(|n| n.port() == primary.port).context("the primary is not ours")?;
        Ok(PrimaryAt { addr: node.reached_at(), served })
    }

    fn pause_primary(&mut self, aim: &str, keys: &[String], pause: Duration) -> anyhow::Result<FailedOver> {
        let Shard { slot, primary, replica, served } = self.shard(aim, keys)?;
        let watch = OldPrimaryWatch::start(primary.port, served.clone())?;
        let begun = Stamp::now();
        self.node_mut(primary.port)?.pause()?;
        std::thread::sleep(pause);
        self.node_mut(primary.port)?.resume()?;
        let view = self.wait_settled()?;
        let serving = Stamp::now();
        let owner = view.iter().find(|n| n.serves(slot)).context("nobody serves the key's slot")?;
        let failed_over = owner.id == replica.id;
        let old_primary = if failed_over { watch.until_demoted()? } else { watch.stop() };
        Ok(FailedOver {
            serving,
            begun,
            old_primary,
            keys: if failed_over { served } else { Vec::new() },
            failed_over,
            note: if failed_over {
                format!(
                    "primary {} paused {pause:?}: replica {} elected in its place",
                    primary.port, replica.port
                )
            } else {
                format!("primary {} paused {pause:?}: it kept its slots", primary.port)
            },
        })
    }
}

/// A primary and one replica, watched by three sentinels (quorum 2).
pub struct SentinelGroup {
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelGroup")
            .field("data", &self.data.iter().map(RedisServer::port).collect::<Vec<_>>())
            .field("sentinels", &self.sentinels.iter().map(RedisServer::port).collect::<Vec<_>>())
            .finish()
    }
}

impl SentinelGroup {
    /// Start the primary, its replica and the sentinels under `dir`, and return once every
    /// sentinel knows the replica and the other sentinels.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_at(dir, &NodeAddrs::default())
    }

    /// [`start`](Self::start), the data nodes reached at the first two of `addrs` and the
    /// sentinels at the next three (and announced there).
    pub fn start_at(dir: &Path, addrs: &NodeAddrs) -> anyhow::Result<Self> {
        let (primary_at, replica_at) = (addrs.of(0), addrs.of(1));
        let primary = RedisServer::start_at(dir, "data-0", Mode::Data, primary_at, |_| {
            let mut args = SYNC_AT_ONCE.map(String::from).to_vec();
            args.extend(announced_as(primary_at));
            Ok(args)
        })?;
        let p = primary.port();
        let replica = RedisServer::start_at(dir, "data-1", Mode::Data, replica_at, |_| {
            Ok(replica_of((primary_at, p), replica_at))
        })?;
        let sentinels = (0..3)
            .map(|i| {
                let reach = addrs.of(2 + i);
                let mut conf = format!(
                    "sentinel monitor {MASTER_NAME} {primary_at} {p} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n"
                );
                if !reach.is_loopback() {
                    conf.push_str(&format!("sentinel announce-ip {reach}\n"));
                }
                RedisServer::start_at(dir, &format!("sentinel-{i}"), Mode::Sentinel(conf), reach, |_| {
                    Ok(Vec::new())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for sentinel in &sentinels {
            // Sooner news of the data nodes (10 s and 2 s by default): a failover settles in
            // seconds, not tens of them. Older sentinels lack the command: they are slower.
            let _ = query::<String>(
                sentinel.port(),
                &["SENTINEL", "DEBUG", "info-period", "1000", "publish-period", "500"],
            );
        }
        let group = Self { data: vec![primary, replica], sentinels };
        poll(SETTLE_BOUND, "the sentinels settling", || group.settled())?;
        Ok(group)
    }

    /// The primary's port, if every running sentinel announces it, knows the other sentinels
    /// and sees every other running data node as its replica in sync.
    fn settled(&self) -> Result<u16, String> {
        let mut primary = None;
        for sentinel in self.sentinels.iter().filter(|s| s.is_running()).map(RedisServer::port) {
            let addr: Vec<String> = query(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
            let port: u16 = addr.get(1).and_then(|p| p.parse().ok()).ok_or("no primary announced")?;
            if primary.is_some_and(|p| p != port) {
                return Err(format!("sentinel {sentinel} announces another primary ({port})"));
            }
            primary = Some(port);
            // redis-rs reads a flat `[name, value, …]` reply as a map.
            let master: BTreeMap<String, String> = query(sentinel, &["SENTINEL", "MASTER", MASTER_NAME])?;
            if master.get("flags").map(String::as_str) != Some("master")
                || master.get("num-other-sentinels").map(String::as_str) != Some("2")
            {
                return Err(format!("sentinel {sentinel} sees the primary as {master:?}"));
            }
            let replicas: Vec<BTreeMap<String, String>> =
                query(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME])?;
            for data in self.data.iter().filter(|d| d.is_running() && d.port() != port) {
                let seen = replicas.iter().find(|r| r.get("port") == Some(&data.port().to_string()));
                let fine = seen.is_some_and(|r| {
                    r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                        && r.get("master-port") == Some(&port.to_string())
                });
                if !fine {
                    return Err(format!("sentinel {sentinel} sees replica {} as {seen:?}", data.port()));
                }
            }
        }
        let primary = primary.ok_or("no sentinel runs")?;
        let info: String = query(primary, &["INFO", "replication"])?;
        if info_field(&info, "role") != Some("master") {
            return Err(format!("the announced primary {primary} is not a primary (yet)"));
        }
        Ok(primary)
    }

    /// Whether every running sentinel announces `port`, and it acts as the primary.
    fn serves(&self, port: u16) -> Result<(), String> {
        for sentinel in self.sentinels.iter().filter(|s| s.is_running()).map(RedisServer::port) {
            let addr: Vec<String> = query(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
            if addr.get(1) != Some(&port.to_string()) {
                return Err(format!("sentinel {sentinel} announces {addr:?}"));
            }
        }
        let info: String = query(port, &["INFO", "replication"])?;
        match info_field(&info, "role") {
            Some("master") => Ok(()),
            role => Err(format!("{port} is {role:?} yet")),
        }
    }
}

impl ManagedServer for SentinelGroup {
    fn kind(&self) -> &'static str {
        "Sentinel group"
    }

    fn url(&self) -> String {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| s.reached_at().to_string()).collect();
        format!("redis-sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.data.iter_mut().chain(&mut self.sentinels).try_for_each(ManagedServer::kill)
    }

    fn fail_over(&mut self, _aim: &str, keys: &[String], kill: bool) -> anyhow::Result<FailedOver> {
        let old = poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        let new = self.data.iter().map(RedisServer::port).find(|&p| p != old).context("no replica")?;
        let watch = if kill { None } else { Some(OldPrimaryWatch::start(old, keys.to_vec())?) };
        let begun = Instant::now();
        let begun_at = Stamp::now();
        let how = if kill {
            self.data.iter_mut().find(|d| d.port() == old).context("no primary")?.kill()?;
            "kill -9"
        } else {
            let sentinel = self.sentinels.first().context("no sentinel")?.port();
            // A sentinel still busy with an earlier failover says INPROG: ask again. Any
            // other answer ends it (asking again after an OK that went astray would fail the
            // primary back).
            poll(SETTLE_BOUND, "a sentinel taking SENTINEL FAILOVER", || {
                match query::<String>(sentinel, &["SENTINEL", "FAILOVER", MASTER_NAME]) {
                    Err(err) if err.contains("INPROG") => Err(err),
                    answer => Ok(answer),
                }
            })?
            .map_err(anyhow::Error::msg)?;
            "SENTINEL FAILOVER"
        };
        poll(SETTLE_BOUND, "the replica serving", || self.serves(new))?;
        let serving = Stamp::now();
        let took = begun.elapsed();
        let old_primary = match watch {
            Some(watch) => watch.until_demoted()?,
            None => {
                // Back empty, as the new primary's replica (as the sentinels would make it).
                let new_at = self.data.iter().find(|d| d.port() == new).context("no new primary")?.reach();
                let node = self.data.iter_mut().find(|d| d.port() == old).context("no old primary")?;
                node.set_extra(replica_of((new_at, new), node.reach()));
                node.start_again()?;
                OldPrimary::default()
            }
        };
        poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        Ok(handed_over(how, (old, new), (begun_at, begun, took), serving, old_primary, keys.to_vec()))
    }

    fn primary_of(&self, _aim: &str, keys: &[String]) -> anyhow::Result<PrimaryAt> {
        let port = poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        let node = self.data.iter().find(|d| d.port() == port).context("the primary is not ours")?;
        Ok(PrimaryAt { addr: node.reached_at(), served: keys.to_vec() })
    }

    fn pause_primary(&mut self, _aim: &str, keys: &[String], pause: Duration) -> anyhow::Result<FailedOver> {
        let old = poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        let watch = OldPrimaryWatch::start(old, keys.to_vec())?;
        let begun = Stamp::now();
        let node = self.data.iter_mut().find(|d| d.port() == old).context("no primary")?;
        node.pause()?;
        std::thread::sleep(pause);
        node.resume()?;
        let now = poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        let serving = Stamp::now();
        let failed_over = now != old;
        let old_primary = if failed_over { watch.until_demoted()? } else { watch.stop() };
        Ok(FailedOver {
            serving,
            begun,
            old_primary,
            keys: if failed_over { keys.to_vec() } else { Vec::new() },
            failed_over,
            note: if failed_over {
                format!("primary {old} paused {pause:?}: replica {now} promoted in its place")
            } else {
                format!("primary {old} paused {pause:?}: it stayed the primary")
            },
        })
    }
}

/// What a failover (`how`: by command or by kill) from the `old` primary to the `new` did:
/// begun at `begun` (a stamp, and the instant `took` — until the replica served — and the
/// whole settling are measured from), serving at `serving`.
fn handed_over(
    how: &str,
    (old, new): (u16, u16),
    (begun_at, begun, took): (Stamp, Instant, Duration),
    serving: Stamp,
    old_primary: OldPrimary,
    keys: Vec<String>,
) -> FailedOver {
    FailedOver {
        serving,
        begun: begun_at,
        old_primary,
        keys,
        failed_over: true,
        note: format!(
            "{how}: primary {old} → replica {new}, serving {:.2} s later; {old} back as its replica after {:.2} s",
            took.as_secs_f64(),
            begun.elapsed().as_secs_f64()
        ),
    }
}

/// What an old primary did from just before a failover until it was demoted: the locks on
/// the run's keys it held, and the scripts it ran on them. Until it hears it was replaced, an
/// old primary (paused and thawed, or failed over by command) keeps granting locks, to
/// processes that have not heard either, and its replica never gets them.
///
/// Two threads, each on a connection of its own: one reads the role and the keys' values in
/// one pipeline every millisecond and keeps the fencing token of every lock it sees while the
/// node still serves them (a cluster node that redirects them, or says it is a replica, takes
/// no more writes for them); the other follows `MONITOR` and keeps the server time and lock
/// key of every script run on a run's key — a lock granted by a script has a token within a
/// fraction of a millisecond of that time, which catches the locks granted and released
/// between two reads, or granted the moment a paused node is thawed. What both miss is not
/// excused; nothing is excused that the old primary did not do.
struct OldPrimaryWatch {
    port: u16,
    /// When the reads saw the node demoted (wall clock, µs, as `MONITOR` stamps); 0 before.
    demoted: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    reads: std::thread::JoinHandle<BTreeSet<u64>>,
    monitor: std::thread::JoinHandle<Vec<(i64, String)>>,
}

impl OldPrimaryWatch {
    fn start(port: u16, keys: Vec<String>) -> anyhow::Result<Self> {
        let demoted = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let monitor = monitor_scripts(port, keys.clone(), Arc::clone(&stop))?;
        let reads = read_locks(port, keys, Arc::clone(&demoted), Arc::clone(&stop))?;
        Ok(Self { port, demoted, stop, reads, monitor })
    }

    /// Stop watching (the primary kept its place: it lost nothing).
    fn stop(self) -> OldPrimary {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.reads.join();
        let _ = self.monitor.join();
        OldPrimary::default()
    }

    /// Wait until the old primary is seen demoted; what it did until then.
    fn until_demoted(self) -> anyhow::Result<OldPrimary> {
        let deadline = Instant::now() + SETTLE_BOUND;
        while self.demoted.load(Ordering::SeqCst) == 0 && !self.reads.is_finished() {
            if Instant::now() >= deadline {
                self.stop.store(true, Ordering::SeqCst);
                bail!("waited {SETTLE_BOUND:?} for the old primary {} to be demoted", self.port);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // MONITOR lines are written after the command ran: let the last ones arrive.
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        let tokens = self.reads.join().map_err(|_| anyhow::anyhow!("the lock reader panicked"))?;
        let mut scripts = self.monitor.join().map_err(|_| anyhow::anyhow!("the MONITOR reader panicked"))?;
        // A replica still runs (and MONITOR shows) scripts it then refuses to write: only those
        // run before the demotion was seen count.
        let demoted = self.demoted.load(Ordering::SeqCst);
        if demoted > 0 {
            scripts.retain(|(at, _)| *at <= demoted);
        }
        Ok(OldPrimary { tokens: tokens.into_iter().collect(), scripts })
    }
}

/// The thread that reads the role and the locks on `port` every millisecond (see
/// [`OldPrimaryWatch`]); it sets `demoted` to the time it saw the node stop serving the keys.
fn read_locks(
    port: u16,
    keys: Vec<String>,
    demoted: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<BTreeSet<u64>>> {
    // Short: a paused node must be read again the moment it is thawed.
    let bound = Duration::from_millis(200);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(bound))?;
    // A pipeline, not a MULTI: a cluster refuses a transaction over keys of several slots
    // (CROSSSLOT). Its commands arrive together and run back to back all the same.
    let mut read = redis::pipe();
    read.cmd("ROLE");
    for key in &keys {
        read.cmd("GET").arg(key);
    }
    // The locks held as the fault begins are read here, before it does, not whenever the
    // thread gets round to it: a TAKEOVER can demote the node within milliseconds.
    let mut tokens = BTreeSet::new();
    if let Ok(replies) = read.query::<Vec<redis::Value>>(&mut conn) {
        tokens.extend(lock_tokens(replies.into_iter().skip(1)));
    }
    Ok(std::thread::spawn(move || {
        let mut failing_since: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            let mut replies = match read.query::<Vec<redis::Value>>(&mut conn) {
                Ok(replies) => {
                    failing_since = None;
                    replies.into_iter()
                }
                // A cluster node that no longer serves the keys' slots redirects: it takes no
                // more writes for them.
                Err(err) if err.to_string().to_ascii_lowercase().contains("moved") => {
                    demoted.store(now_micros(), Ordering::SeqCst);
                    return tokens;
                }
                // Paused, or a primary made a replica closed its clients' connections: connect
                // again, and a later read says which.
                Err(_) => {
                    if failing_since.get_or_insert_with(Instant::now).elapsed() > SETTLE_BOUND {
                        return tokens;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    if let Ok(again) = client.get_connection_with_timeout(bound) {
                        let _ = again.set_read_timeout(Some(bound));
                        conn = again;
                    }
                    continue;
                }
            };
            let role: Vec<redis::Value> =
                replies.next().and_then(|role| redis::from_redis_value(role).ok()).unwrap_or_default();
            let primary = role.into_iter().next().and_then(|r| redis::from_redis_value::<String>(r).ok());
            if primary.as_deref() != Some("master") {
                // Demoted: what it holds from now on is the new primary's.
                demoted.store(now_micros(), Ordering::SeqCst);
                return tokens;
            }
            tokens.extend(lock_tokens(replies));
            std::thread::sleep(Duration::from_millis(1));
        }
        tokens
    }))
}

/// The fencing tokens of the lock values (`<token>:<owner>`) among `replies`.
fn lock_tokens(replies: impl Iterator<Item = redis::Value>) -> impl Iterator<Item = u64> {
    replies
        .filter_map(|v| redis::from_redis_value::<Option<String>>(v).ok().flatten())
        .filter_map(|v| v.split(':').next()?.parse::<u64>().ok())
}

/// The wall clock in µs, as `MONITOR` stamps commands (at least 1).
fn now_micros() -> i64 {
    let wall = Stamp::now().wall;
    (wall / 1_000).max(1)
}

/// The thread that follows `MONITOR` on `port` until `stop` (or the connection closes), and
/// keeps (server time in µs, lock key) of every `EVAL`/`EVALSHA` whose first key is one of
/// `keys`.
fn monitor_scripts(
    port: u16,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Vec<(i64, String)>>> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to {port} for MONITOR"))?;
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    stream.write_all(b"MONITOR\r\n")?;
    // Following from here on, before the fault begins: the server said so.
    let mut lines = std::io::BufReader::new(stream);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !line.ends_with('\n') {
        match lines.read_line(&mut line) {
            Ok(0) => bail!("{port} closed the MONITOR connection"),
            Ok(_) => {}
            Err(err)
                if Instant::now() < deadline
                    && matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
            Err(err) => return Err(anyhow::Error::new(err).context(format!("MONITOR on {port}"))),
        }
    }
    if !line.starts_with("+OK") {
        bail!("MONITOR on {port} said {}", line.trim());
    }
    line.clear();
    Ok(std::thread::spawn(move || {
        let mut scripts = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if let Some((at, key)) = script_on(&line)
                        && keys.contains(&key)
                    {
                        scripts.push((at, key));
                    }
                    line.clear();
                }
                // A timeout keeps what was read of the line; any other error ends it.
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        scripts
    }))
}

/// (server time in µs, first key) of a `MONITOR` line for `EVAL`/`EVALSHA`, e.g.
/// `+1796342409.946004 [0 127.0.0.1:5000] "EVALSHA" "ab12…" "2" "app:k" "app:k#dlock:line" "o1"`.
fn script_on(line: &str) -> Option<(i64, String)> {
    let line = line.trim_end().strip_prefix('+')?;
    let (time, rest) = line.split_once(' ')?;
    let (secs, micros) = time.split_once('.')?;
    let at = secs.parse::<i64>().ok()?.checked_mul(1_000_000)?.checked_add(micros.parse::<i64>().ok()?)?;
    let args = quoted(rest.get(rest.find('"')?..)?);
    let command = args.first()?.to_ascii_lowercase();
    if command != "evalsha" && command != "eval" || args.get(2)?.parse::<u32>().ok()? == 0 {
        return None;
    }
    Some((at, args.get(3)?.clone()))
}

/// The `"…"` strings of a `MONITOR` line, unescaped (`\"`, `\\`; `\xNN` and the like become
/// `?`: lock keys and owners have none).
fn quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('x') => {
                        chars.next();
                        chars.next();
                        arg.push('?');
                    }
                    Some(escaped @ ('"' | '\\')) => arg.push(escaped),
                    Some(_) => arg.push('?'),
                    None => break,
                },
                c => arg.push(c),
            }
        }
        out.push(arg);
    }
    out
}

/// A primary's new replica (a killed primary, back empty) syncs at once, not after 5 s.
const SYNC_AT_ONCE: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// The arguments that make a data node reached at `own` a replica of the `primary` (address
/// and port) (and, once it is promoted, sync its own new replica at once).
fn replica_of(primary: (Ipv4Addr, u16), own: Ipv4Addr) -> Vec<String> {
    let mut args = vec!["--replicaof".into(), primary.0.to_string(), primary.1.to_string()];
    args.extend(SYNC_AT_ONCE.map(String::from));
    args.extend(announced_as(own));
    args
}

/// The arguments that make a sentinel group's data node tell its primary (and so the
/// sentinels) it is at `reach`, when that is not loopback.
fn announced_as(reach: Ipv4Addr) -> Vec<String> {
    if reach.is_loopback() { Vec::new() } else { vec!["--replica-announce-ip".into(), reach.to_string()] }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The primary's id, for a replica.
    master: Option<String>,
    /// The slot ranges it serves, inclusive.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// Every well-formed line of a `CLUSTER NODES` reply (importing and migrating slots, in
    /// brackets, are not served yet and are left out).
    fn parse_all(text: &str) -> Vec<Self> {
        text.lines().filter_map(Self::parse).collect()
    }

    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, addr, flags, master) = (fields.first()?, fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let hostport = addr.split(['@', ',']).next()?;
        let port = hostport.rsplit_once(':')?.1.parse().ok()?;
        let slots = fields
            .get(8..)
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect();
        Some(Self {
            id: (*id).to_owned(),
            port,
            flags: flags.split(',').map(str::to_owned).collect(),
            master: (*master != "-").then(|| (*master).to_owned()),
            slots,
        })
    }

    fn failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Whether two views agree on which node serves which slots.
fn same_owners(a: &[NodeLine], b: &[NodeLine]) -> bool {
    let owners = |view: &[NodeLine]| {
        let mut owners: Vec<(String, Vec<(u16, u16)>)> =
            view.iter().filter(|n| !n.slots.is_empty()).map(|n| (n.id.clone(), n.slots.clone())).collect();
        owners.sort();
        owners
    };
    owners(a) == owners(b)
}

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// One command to the node on `port`, on a connection of its own, bounded.
fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let bound = Duration::from_secs(2);
    let fail = |err: redis::RedisError| format!("{} to {port}: {err}", args.join(" "));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(fail)?;
    let mut conn = client.get_connection_with_timeout(bound).map_err(fail)?;
    conn.set_read_timeout(Some(bound)).map_err(fail)?;
    conn.set_write_timeout(Some(bound)).map_err(fail)?;
    let (name, rest) = args.split_first().ok_or("an empty command")?;
    redis::cmd(name).arg(rest).query(&mut conn).map_err(fail)
}

/// Try `attempt` every 20 ms until it succeeds or `bound` has passed; the error says `what`
/// was awaited and what was seen last.
fn poll<T>(bound: Duration, what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> anyhow::Result<T> {
    let deadline = Instant::now() + bound;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                bail!("waited {bound:?} for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Run `command` to its end, within [`SETTLE_BOUND`], its output in `log` (`redis-cli` says
/// what went wrong on its standard output).
fn run_bounded(mut command: Command, what: &str, log: &Path) -> anyhow::Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {what} (is redis-cli installed?)"))?;
    // Noted with the servers: an exit while it runs (a Ctrl-C while the cluster forms) kills
    // it too, or it would wait for ever for nodes that are gone.
    let mut child = crate::servers::started(child)?;
    let deadline = Instant::now() + SETTLE_BOUND;
    loop {
        if let Some(status) = crate::servers::try_reap(&mut child)? {
            if status.success() {
                return Ok(());
            }
            let said = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status}: {}", said.trim());
        }
        if Instant::now() >= deadline {
            let _ = crate::servers::end(child);
            bail!("{what} did not finish within {SETTLE_BOUND:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse_with_slots_flags_and_primaries() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:7002@17002,host master - 0 1 2 connected 5461-10922 12000
c3 127.0.0.1:7004@17004 slave a1 0 1 1 connected
d4 127.0.0.1:7005@17005 master,fail? - 0 1 3 disconnected
garbage";
        let view = NodeLine::parse_all(text);
        assert_eq!(view.len(), 4);
        assert_eq!(view[0].slots, vec![(0, 5460)], "a migrating slot is not served yet");
        assert_eq!(view[1].port, 7002);
        assert_eq!(view[1].slots, vec![(5461, 10922), (12000, 12000)]);
        assert!(view[1].serves(12000) && !view[1].serves(11000));
        assert_eq!(view[2].master.as_deref(), Some("a1"));
        assert!(view[3].failing() && !view[0].failing());
        assert!(same_owners(&view, &view[..2]));
        assert!(!same_owners(&view, &view[1..]));
    }

    #[test]
    fn monitor_lines_give_the_time_and_key_of_each_script() {
        let line = "+1796342409.946004 [0 127.0.0.1:5000] \"EVALSHA\" \"ab12\" \"2\" \"app:k\" \"app:k#dlock:line{x}\" \"o\\\"1\"\r\n";
        assert_eq!(script_on(line), Some((1_796_342_409_946_004, "app:k".to_owned())));
        assert_eq!(quoted("\"a\\\\b\" \"c\\x41d\""), ["a\\b", "c?d"]);
        assert_eq!(script_on("+1.000001 [0 127.0.0.1:1] \"GET\" \"app:k\""), None, "not a script");
        assert_eq!(script_on("+1.000001 [0 127.0.0.1:1] \"EVAL\" \"return 1\" \"0\""), None, "no key");
        assert_eq!(script_on("OK"), None);
    }

    #[test]
    fn info_fields_read() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master"), None);
    }
}
