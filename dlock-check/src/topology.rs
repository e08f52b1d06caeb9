//! Topologies the checker starts and fails over itself: a Redis Cluster of three primaries and
//! three replicas, and a primary with one replica watched by three sentinels. Every node is a
//! [`RedisServer`] of its own (a free loopback port, its own directory, killed when dropped).
//!
//! Both settle before they are used and after every failover: each node agrees on who serves
//! what, no node is flagged failing, and every replica is linked to its primary. A fault
//! therefore always starts from a whole topology, and ends only once it is whole again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::clock::Stamp;
use crate::servers::{FailedOver, ManagedServer, Mode, RedisServer, ServerKind, free_port};

/// How long a topology may take to form, or to settle again after a failover.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// The cluster's `cluster-node-timeout`: how long a silent primary may go before the others
/// take it for failing and its replica is elected in its place.
const NODE_TIMEOUT_MS: u64 = 1000;

/// The sentinels' `down-after-milliseconds`.
const DOWN_AFTER_MS: u64 = 1000;

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "dlock-check";

/// Start a server or a topology of `kind`, its files under `dir/name`.
pub fn start(kind: ServerKind, dir: &Path, name: &str) -> anyhow::Result<Box<dyn ManagedServer>> {
    match kind {
        ServerKind::Redis => Ok(Box::new(RedisServer::start(dir, name)?)),
        ServerKind::RedisCluster => Ok(Box::new(RedisCluster::start(&dir.join(name))?)),
        ServerKind::RedisSentinel => Ok(Box::new(SentinelGroup::start(&dir.join(name))?)),
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
        let nodes = (0..6)
            .map(|i| {
                RedisServer::start_with(dir, &format!("node-{i}"), Mode::Data, |_| {
                    // The bus port is picked too: port + 10000 may be taken.
                    let bus = free_port()?;
                    Ok([
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
                    .to_vec())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Self { nodes };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
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

impl ManagedServer for RedisCluster {
    fn kind(&self) -> &'static str {
        "Redis Cluster"
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.nodes.iter_mut().try_for_each(ManagedServer::kill)
    }

    fn fail_over(&mut self, aim: &str, keys: &[String], kill: bool) -> anyhow::Result<FailedOver> {
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
        let (old, new, new_id) = (primary.port, replica.port, replica.id.clone());
        let watch = if kill { None } else { Some(GrantWatch::start(old, served.clone())?) };
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
        let granted_by_old_primary = match watch {
            Some(watch) => watch.until_demoted()?,
            None => {
                // It comes back empty, with its nodes.conf: the cluster makes it the new
                // primary's replica.
                self.node_mut(old)?.start_again()?;
                Vec::new()
            }
        };
        self.wait_settled()?;
        Ok(FailedOver {
            serving,
            begun: begun_at,
            granted_by_old_primary,
            keys: served,
            note: format!(
                "{how}: primary {old} → replica {new}, serving {:.2} s later; {old} back as its replica after {:.2} s",
                took.as_secs_f64(),
                begun.elapsed().as_secs_f64()
            ),
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
        let primary = RedisServer::start_with(dir, "data-0", Mode::Data, |_| {
            Ok(SYNC_AT_ONCE.map(String::from).to_vec())
        })?;
        let p = primary.port();
        let replica = RedisServer::start_with(dir, "data-1", Mode::Data, |_| Ok(replica_of(p)))?;
        let conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {p} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} 3000\n"
        );
        let sentinels = (0..3)
            .map(|i| {
                RedisServer::start_with(dir, &format!("sentinel-{i}"), Mode::Sentinel(conf.clone()), |_| {
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
            let master = pairs(query(sentinel, &["SENTINEL", "MASTER", MASTER_NAME])?);
            if master.get("flags").map(String::as_str) != Some("master")
                || master.get("num-other-sentinels").map(String::as_str) != Some("2")
            {
                return Err(format!("sentinel {sentinel} sees the primary as {master:?}"));
            }
            let replicas: Vec<Vec<String>> = query(sentinel, &["SENTINEL", "REPLICAS", MASTER_NAME])?;
            let replicas: Vec<BTreeMap<String, String>> = replicas.into_iter().map(pairs).collect();
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
        let sentinels: Vec<String> =
            self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
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
        let watch = if kill { None } else { Some(GrantWatch::start(old, keys.to_vec())?) };
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
        let granted_by_old_primary = match watch {
            Some(watch) => watch.until_demoted()?,
            None => {
                // Back empty, as the new primary's replica (as the sentinels would make it).
                let node = self.data.iter_mut().find(|d| d.port() == old).context("no old primary")?;
                node.set_extra(replica_of(new));
                node.start_again()?;
                Vec::new()
            }
        };
        poll(SETTLE_BOUND, "the sentinels settling", || self.settled())?;
        Ok(FailedOver {
            serving,
            begun: begun_at,
            granted_by_old_primary,
            keys: keys.to_vec(),
            note: format!(
                "{how}: primary {old} → replica {new}, serving {:.2} s later; {old} back as its replica after {:.2} s",
                took.as_secs_f64(),
                begun.elapsed().as_secs_f64()
            ),
        })
    }
}

/// The locks an old primary holds from just before a failover by command until it is
/// demoted: a thread reads, every millisecond on a connection of its own, the role and the
/// values of `keys` in one transaction, and keeps the fencing token of every lock it sees
/// while the node is still a primary serving them (a cluster node that redirects them, or
/// says it is a replica, takes no more writes for them). A lock it grants then is lost with it when the replica
/// takes over; a lock it granted before is there too. What a read between two polls misses
/// (a lock taken and released within a millisecond) is not excused, never the other way.
struct GrantWatch {
    port: u16,
    demoted: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<BTreeSet<u64>, String>>,
}

impl GrantWatch {
    fn start(port: u16, keys: Vec<String>) -> anyhow::Result<Self> {
        let bound = Duration::from_secs(2);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(bound)?;
        conn.set_read_timeout(Some(bound))?;
        let demoted = Arc::new(AtomicBool::new(false));
        let seen_demoted = Arc::clone(&demoted);
        let thread = std::thread::spawn(move || {
            let mut tokens = BTreeSet::new();
            let mut failures = 0;
            let mut read = redis::pipe();
            read.atomic().cmd("ROLE");
            for key in &keys {
                read.cmd("GET").arg(key);
            }
            loop {
                let mut replies = match read.query::<Vec<redis::Value>>(&mut conn) {
                    Ok(replies) => {
                        failures = 0;
                        replies.into_iter()
                    }
                    // A cluster node that no longer serves the keys' slots redirects: it takes
                    // no more writes for them.
                    Err(err) if err.to_string().to_ascii_lowercase().contains("moved") => {
                        seen_demoted.store(true, Ordering::SeqCst);
                        return Ok(tokens);
                    }
                    // A primary made a replica closes its clients' connections: connect again,
                    // and the next read says whether it was that.
                    Err(err) => {
                        failures += 1;
                        if failures > 50 {
                            return Err(format!("reading the locks on {port}: {err}"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        if let Ok(again) = client.get_connection_with_timeout(bound) {
                            let _ = again.set_read_timeout(Some(bound));
                            conn = again;
                        }
                        continue;
                    }
                };
                let role: Vec<redis::Value> = match replies.next().map(redis::from_redis_value) {
                    Some(Ok(role)) => role,
                    Some(Err(err)) => return Err(format!("ROLE on {port}: {err}")),
                    None => return Err(format!("an empty reply from {port}")),
                };
                let primary = role.into_iter().next().and_then(|r| redis::from_redis_value::<String>(r).ok());
                if primary.as_deref() != Some("master") {
                    // Demoted: what it holds from now on is the new primary's.
                    seen_demoted.store(true, Ordering::SeqCst);
                    return Ok(tokens);
                }
                let values =
                    replies.filter_map(|v| redis::from_redis_value::<Option<String>>(v).ok().flatten());
                tokens.extend(values.filter_map(|v| v.split(':').next()?.parse::<u64>().ok()));
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Ok(Self { port, demoted, thread })
    }

    /// Wait until the old primary is seen demoted; the tokens of the locks it held until then.
    fn until_demoted(self) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + SETTLE_BOUND;
        while !self.demoted.load(Ordering::SeqCst) && !self.thread.is_finished() {
            if Instant::now() >= deadline {
                bail!("waited {SETTLE_BOUND:?} for the old primary {} to be demoted", self.port);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let tokens = self.thread.join().map_err(|_| anyhow::anyhow!("the lock reader panicked"))?;
        Ok(tokens.map_err(anyhow::Error::msg)?.into_iter().collect())
    }
}

/// A primary's new replica (a killed primary, back empty) syncs at once, not after 5 s.
const SYNC_AT_ONCE: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// The arguments that make a data node a replica of the one on `port` (and, once it is
/// promoted, sync its own new replica at once).
fn replica_of(port: u16) -> Vec<String> {
    let mut args = vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()];
    args.extend(SYNC_AT_ONCE.map(String::from));
    args
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

/// A flat `[name, value, name, value, …]` reply as a map.
fn pairs(flat: Vec<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        map.insert(name, value);
    }
    map
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
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {what} (is redis-cli installed?)"))?;
    let deadline = Instant::now() + SETTLE_BOUND;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let said = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status}: {}", said.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
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
    fn flat_replies_and_info_fields_read() {
        let map = pairs(["flags", "master", "port", "7001", "odd"].map(String::from).to_vec());
        assert_eq!(map.get("port").map(String::as_str), Some("7001"));
        assert_eq!(map.len(), 2);
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master"), None);
    }
}
