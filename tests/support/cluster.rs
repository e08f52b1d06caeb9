//! [`RedisCluster`]: a Redis Cluster of six `redis-server` processes on loopback (three
//! primaries, each with one replica), owned by one test — nodes killed, restarted, paused,
//! failed over and slots migrated (also held half-migrated, [`SlotMigration`]) at will, every
//! process killed and every file removed on drop (also on panic).
//!
//! Every method blocks the calling thread until what it did has settled (bounded waits that
//! panic with what they last saw and the tail of the nodes' logs). Call them from a plain
//! `#[test]`, before the runtime work of an async test, or from an async test through
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`. Each call
//! opens its own short-lived connections, so a cluster can be shared (`&RedisCluster` is
//! `Send`) between threads.
//!
//! "Settled" below means: every running, unpaused node answers, reports `cluster_state:ok`,
//! and sees the same owner for each of the 16384 slots (all covered, each by a running,
//! unpaused primary); every node agrees with every other on what each running node is
//! (primary, or replica of which primary), no view flags a running node as failing, and
//! every running replica's link to its primary is up (`master_link_status:up`); and no slot
//! is half-migrated (so wait for nothing but [`SlotMigration`]'s own steps while one is).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_process::{
    RedisProcess, SeenRole, TempDir, connect, info_field, poll, query, role, run, tail,
};
use super::server::free_port;
use super::tls::Certificates;

/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// Nodes of a cluster: three primaries, three replicas.
const NODES: usize = 6;

/// How long the cluster may take to form (`redis-cli --cluster create` and every node
/// agreeing), and a restarted node to rejoin.
const FORM_BOUND: Duration = Duration::from_secs(60);

/// How long a takeover, a slot migration or an agreement on who serves a slot may take.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// The default `cluster-node-timeout`.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A Redis Cluster owned by one test: six `redis-server` processes on free loopback ports
/// (three primaries, three replicas, created by `redis-cli --cluster create
/// --cluster-replicas 1`), each in its own temporary directory with its `nodes.conf` and its
/// log (`redis.log`), with no persistence of data.
///
/// Nodes are named by their port. Dropping the cluster kills every process (SIGKILL, which
/// also ends a paused one) and removes the directories, also when the test panics.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
    /// `CLUSTER MYID` of each node (kept across restarts: it is in `nodes.conf`).
    ids: Vec<String>,
    /// What a node served when it was last killed or paused, while it is down.
    down: HashMap<u16, Shard>,
    /// Each node's TLS port, for a cluster started with [`RedisCluster::start_tls`].
    tls_ports: Vec<u16>,
    node_timeout: Duration,
    /// Dropped after `nodes`: the processes are gone before their directories.
    dir: TempDir,
}

/// One node of a [`RedisCluster`] and what it is now ([`RedisCluster::nodes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its client port on 127.0.0.1 (the cluster bus is on `port + 10000`).
    pub port: u16,
    /// What it is, as it says itself (`ROLE`).
    pub role: NodeRole,
}

/// What a node of a [`RedisCluster`] is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// A primary (it may serve no slot).
    Primary,
    /// A replica of the primary on port `primary`.
    Replica {
        /// The port of the primary it follows.
        primary: u16,
    },
    /// Stopped with [`RedisCluster::pause`]: not asked.
    Paused,
    /// Killed with [`RedisCluster::kill`] and not restarted.
    Killed,
}

/// The slots a primary served and its replicas, recorded when it is killed or paused.
#[derive(Debug, Clone)]
struct Shard {
    slots: Vec<u16>,
    replicas: Vec<u16>,
}

impl RedisCluster {
    /// Start a cluster with `cluster-node-timeout` 1000 ms; returns once it has settled (see
    /// the module docs): every node `cluster_state:ok`, all agreeing on all 16384 slots, and
    /// every replica in sync with its primary. Panics (with the nodes' log tails) if it does
    /// not get there within a minute.
    pub fn start() -> Self {
        Self::start_with(DEFAULT_NODE_TIMEOUT)
    }

    /// [`start`](Self::start) with `cluster-node-timeout` `node_timeout`: how long a node may
    /// not answer before it is taken for failing (and its replica fails over).
    pub fn start_with(node_timeout: Duration) -> Self {
        Self::start_nodes(node_timeout, None)
    }

    /// [`start`](Self::start), each node also serving TLS with `certs`' server certificate on
    /// a port of its own ([`tls_seed_urls`](Self::tls_seed_urls)), the cluster bus over TLS
    /// too (`tls-cluster yes`): a client that comes over TLS is told the nodes' TLS ports, and
    /// must present a certificate `certs`' authority signed (`tls-auth-clients yes`; the nodes
    /// present theirs to each other). The harness itself keeps to the plain ports.
    pub fn start_tls(certs: &Certificates) -> Self {
        Self::start_nodes(DEFAULT_NODE_TIMEOUT, Some(certs))
    }

    fn start_nodes(node_timeout: Duration, tls: Option<&Certificates>) -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes: Vec<RedisProcess> = Vec::with_capacity(NODES);
        let mut tls_ports = Vec::new();
        for index in 0..NODES {
            let tls_port = tls.map(|certs| (certs, free_port()));
            nodes.push(start_node(&dir, index, node_timeout, tls_port));
            tls_ports.extend(tls_port.map(|(_, port)| port));
        }
        let mut cluster = Self { nodes, ids: Vec::new(), down: HashMap::new(), tls_ports, node_timeout, dir };
        cluster.create();
        cluster.ids = cluster
            .nodes
            .iter()
            .map(|node| {
                query::<String>(node.port(), &["CLUSTER", "MYID"])
                    .unwrap_or_else(|err| panic!("asking a cluster node for its id: {err}"))
            })
            .collect();
        cluster.settle(FORM_BOUND, "the new cluster settling", |_| Ok(()));
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node, killed or not, in start order: the seed
    /// nodes to give a cluster client.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("redis://127.0.0.1:{}", node.port())).collect()
    }

    /// `rediss://127.0.0.1:<TLS port>` of every node of a cluster started with
    /// [`start_tls`](Self::start_tls).
    pub fn tls_seed_urls(&self) -> Vec<String> {
        assert!(!self.tls_ports.is_empty(), "this cluster was not started with start_tls");
        self.tls_ports.iter().map(|port| format!("rediss://127.0.0.1:{port}")).collect()
    }

    /// The `cluster-node-timeout` the nodes run with.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// Every node (by port, in start order) and what it is now: running nodes are asked
    /// (`ROLE`), paused and killed ones are reported as such. Panics if a running node does
    /// not answer.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.nodes
            .iter()
            .map(|node| {
                let role = if !node.is_running() {
                    NodeRole::Killed
                } else if node.is_paused() {
                    NodeRole::Paused
                } else {
                    let seen = connect(node.port()).and_then(|mut conn| role(&mut conn));
                    match seen.unwrap_or_else(|err| panic!("asking node {} its role: {err}", node.port())) {
                        SeenRole::Primary => NodeRole::Primary,
                        SeenRole::Replica(primary) => NodeRole::Replica { primary },
                    }
                };
                ClusterNode { port: node.port(), role }
            })
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn key_slot(&self, key: &str) -> u16 {
        let port = self.any_up_node();
        let slot: i64 = query(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap_or_else(|err| panic!("CLUSTER KEYSLOT {key:?}: {err}"));
        u16::try_from(slot).unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} said {slot}"))
    }

    /// The port of the primary serving `key`'s slot, once every running node agrees on it
    /// (`CLUSTER KEYSLOT`, then `CLUSTER NODES` on every running node). While the slot is
    /// being migrated this is the source (the slot's owner until the migration finishes).
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let slot = self.key_slot(key);
        self.slot_owner(slot)
    }

    /// The port of the primary serving `slot`, once every running node agrees on it.
    pub fn slot_owner(&self, slot: u16) -> u16 {
        assert!(usize::from(slot) < SLOTS, "slot {slot} is not a hash slot (0..16384)");
        let agreed = poll(SETTLE_BOUND, || {
            let views = self.views()?;
            let owners: Vec<Option<u16>> =
                views.iter().map(|view| view.owners(&self.ports())[usize::from(slot)]).collect();
            match owners.first() {
                Some(Some(owner)) if owners.iter().all(|seen| *seen == Some(*owner)) => Ok(*owner),
                _ => Err(format!("owners of slot {slot} per running node: {owners:?}")),
            }
        });
        agreed
            .unwrap_or_else(|seen| self.fail(&format!("the nodes agreeing on who serves slot {slot}"), &seen))
    }

    /// The port of a replica of the primary on `primary_port`, once every running node agrees
    /// on its replicas (a running one if it has several). Panics if it has none.
    pub fn replica_of(&self, primary_port: u16) -> u16 {
        let primary_id = self.id(primary_port).to_owned();
        let replicas = poll(SETTLE_BOUND, || {
            let views = self.views()?;
            let sets: Vec<Vec<u16>> = views.iter().map(|view| view.replicas_of(&primary_id)).collect();
            match sets.first() {
                Some(set) if !set.is_empty() && sets.iter().all(|seen| seen == set) => Ok(set.clone()),
                _ => Err(format!("replicas of {primary_port} per running node: {sets:?}")),
            }
        })
        .unwrap_or_else(|seen| {
            self.fail(&format!("the nodes agreeing on a replica of {primary_port}"), &seen)
        });
        replicas.iter().copied().find(|port| self.node(*port).is_up()).unwrap_or(replicas[0])
    }

    /// Kill the node on `port` (SIGKILL) and reap it; a no-op if it is not running. If it
    /// served slots, what it served is remembered for [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill(&mut self, port: u16) {
        if !self.node(port).is_running() {
            return;
        }
        self.remember_shard(port);
        self.node_mut(port).kill();
    }

    /// Start the node on `port` again (killing it first if it runs), on the same port and
    /// from the same directory, so it is the same node (its `nodes.conf`): it rejoins — a
    /// primary that was failed over comes back as a replica of its successor. Its data is
    /// gone (no persistence). Returns once the cluster has settled (see the module docs);
    /// panics if it does not within a minute.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        self.node_mut(port).respawn();
        self.down.remove(&port);
        self.settle(FORM_BOUND, &format!("the cluster settling after node {port} restarted"), |_| Ok(()));
    }

    /// Freeze the node on `port` (SIGSTOP): connections stay open, nothing is answered, and
    /// after `cluster-node-timeout` the others take it for failing. If it served slots, what
    /// it served is remembered for [`wait_for_failover`](Self::wait_for_failover).
    pub fn pause(&mut self, port: u16) {
        self.remember_shard(port);
        self.node_mut(port).pause();
    }

    /// Thaw a node frozen with [`pause`](Self::pause) (SIGCONT); returns once it answers
    /// PING. Does not wait for the cluster to settle: see [`wait_settled`](Self::wait_settled).
    pub fn resume(&mut self, port: u16) {
        self.node_mut(port).resume();
        poll(SETTLE_BOUND, || query::<String>(port, &["PING"]).map(drop))
            .unwrap_or_else(|seen| self.fail(&format!("node {port} answering after SIGCONT"), &seen));
    }

    /// Wait until the cluster has settled (see the module docs), at most `bound`; panics with
    /// what was last seen and the nodes' log tails otherwise. E.g. after
    /// [`resume`](Self::resume), for a failed-over primary to come back as a replica.
    pub fn wait_settled(&self, bound: Duration) {
        self.settle(bound, "the cluster settling", |_| Ok(()));
    }

    /// Fail the replica on `replica_port` over, without the agreement of the other primaries
    /// (`CLUSTER FAILOVER TAKEOVER`), and wait until it is a primary serving its former
    /// primary's slots, that former primary (if it runs) is its replica, and the cluster has
    /// settled. Panics if the node is not a replica, or if this does not happen in 30 s.
    pub fn failover_takeover(&self, replica_port: u16) {
        let old_primary = match connect(replica_port).and_then(|mut conn| role(&mut conn)) {
            Ok(SeenRole::Replica(primary)) => primary,
            Ok(SeenRole::Primary) => {
                panic!("failover_takeover({replica_port}): it is a primary, not a replica")
            }
            Err(err) => panic!("failover_takeover({replica_port}): asking its role: {err}"),
        };
        let reply: String = query(replica_port, &["CLUSTER", "FAILOVER", "TAKEOVER"])
            .unwrap_or_else(|err| panic!("CLUSTER FAILOVER TAKEOVER on {replica_port}: {err}"));
        assert_eq!(reply, "OK", "CLUSTER FAILOVER TAKEOVER on {replica_port}");
        let old_is_up = self.node(old_primary).is_up();
        self.settle(SETTLE_BOUND, &format!("{replica_port} taking over from {old_primary}"), |agreed| {
            if agreed.role(replica_port) != Some(NodeRole::Primary) {
                return Err(format!("{replica_port} is {:?}, not a primary yet", agreed.role(replica_port)));
            }
            if old_is_up && agreed.role(old_primary) != Some(NodeRole::Replica { primary: replica_port }) {
                return Err(format!(
                    "the former primary {old_primary} is {:?}, not a replica of {replica_port} yet",
                    agreed.role(old_primary)
                ));
            }
            Ok(())
        });
    }

    /// After the primary on `old_primary_port` was [`kill`](Self::kill)ed (or
    /// [`pause`](Self::pause)d): wait, at most `bound`, until one of its replicas serves all
    /// its slots and the cluster has settled among the running nodes; returns that replica's
    /// port. Panics if it was not a primary serving slots when it went down, or on timeout.
    pub fn wait_for_failover(&self, old_primary_port: u16, bound: Duration) -> u16 {
        let shard = self.down.get(&old_primary_port).cloned().unwrap_or_else(|| {
            panic!(
                "wait_for_failover({old_primary_port}): it was not a primary serving slots when it was \
                 killed or paused (or it was not killed or paused)"
            )
        });
        self.settle(bound, &format!("a replica of {old_primary_port} taking over"), |agreed| {
            let owners: Vec<u16> = shard.slots.iter().map(|slot| agreed.owners[usize::from(*slot)]).collect();
            let new = owners[0];
            if owners.iter().any(|owner| *owner != new) {
                return Err(format!("the slots of {old_primary_port} are served by several nodes"));
            }
            if new == old_primary_port || !shard.replicas.contains(&new) {
                return Err(format!(
                    "its slots are served by {new}, not by one of its replicas {:?}",
                    shard.replicas
                ));
            }
            Ok(new)
        })
    }

    /// Move `slot` to the primary on `to_primary_port`: the whole resharding protocol
    /// (`CLUSTER SETSLOT … IMPORTING` on the target, `MIGRATING` on the source, `CLUSTER
    /// GETKEYSINSLOT` and `MIGRATE` until the slot is empty, then `SETSLOT … NODE` on the
    /// target, the source and every other primary); returns once the cluster has settled
    /// with the target serving the slot. [`begin_slot_migration`](Self::begin_slot_migration)
    /// does it in steps.
    pub fn migrate_slot(&self, slot: u16, to_primary_port: u16) {
        self.begin_slot_migration(slot, to_primary_port).finish();
    }

    /// Start moving `slot` to the primary on `to_primary_port` and stop half-way: the
    /// target is `IMPORTING` the slot and its owner `MIGRATING` it, no key has moved yet.
    /// Until [`SlotMigration::finish`], clients get `ASK` redirections for the slot's keys
    /// that are not (or no longer) on the source. Waits for the cluster to settle first;
    /// panics if the slot is already served by the target or the target is not a primary.
    pub fn begin_slot_migration(&self, slot: u16, to_primary_port: u16) -> SlotMigration<'_> {
        assert!(usize::from(slot) < SLOTS, "slot {slot} is not a hash slot (0..16384)");
        let source = self.settle(
            SETTLE_BOUND,
            &format!("the cluster settling before migrating slot {slot}"),
            |agreed| Ok(agreed.owners[usize::from(slot)]),
        );
        assert_ne!(source, to_primary_port, "slot {slot} is already served by {to_primary_port}");
        let target_role =
            self.nodes().into_iter().find(|node| node.port == to_primary_port).map(|node| node.role);
        assert_eq!(
            target_role,
            Some(NodeRole::Primary),
            "migrating slot {slot}: the target {to_primary_port} is not a running primary"
        );
        let slot_arg = slot.to_string();
        let source_id = self.id(source).to_owned();
        let target_id = self.id(to_primary_port).to_owned();
        expect_ok(to_primary_port, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source_id]);
        expect_ok(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target_id]);
        SlotMigration { cluster: self, slot, source, target: to_primary_port }
    }

    // -----------------------------------------------------------------------------------------
    // Internals

    /// `redis-cli --cluster create` over the six nodes, bounded.
    fn create(&self) {
        let out_path = self.dir.path().join("create.log");
        let out = std::fs::File::create(&out_path)
            .unwrap_or_else(|err| panic!("creating {}: {err}", out_path.display()));
        let out_err = out.try_clone().expect("cloning the redis-cli output file handle");
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let mut child = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(out_err)
            .spawn()
            .unwrap_or_else(|err| panic!("spawning redis-cli (is it installed?): {err}"));
        let deadline = Instant::now() + FORM_BOUND;
        let status = loop {
            if let Some(status) = child.try_wait().expect("polling redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(
                    "`redis-cli --cluster create` finishing",
                    &format!("it still ran after {FORM_BOUND:?}; its output:\n{}", tail(&out_path, 30)),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() || !output.contains("All 16384 slots covered") {
            self.fail(
                "`redis-cli --cluster create`",
                &format!(
                    "redis-cli {} exited with {status}; its output:\n{}",
                    args.join(" "),
                    tail(&out_path, 30)
                ),
            );
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisProcess::port).collect()
    }

    fn index(&self, port: u16) -> usize {
        self.nodes.iter().position(|node| node.port() == port).unwrap_or_else(|| {
            panic!("no node of this cluster is on port {port} (nodes: {:?})", self.ports())
        })
    }

    fn node(&self, port: u16) -> &RedisProcess {
        &self.nodes[self.index(port)]
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisProcess {
        let index = self.index(port);
        &mut self.nodes[index]
    }

    fn id(&self, port: u16) -> &str {
        &self.ids[self.index(port)]
    }

    fn any_up_node(&self) -> u16 {
        self.nodes
            .iter()
            .find(|node| node.is_up())
            .map(RedisProcess::port)
            .unwrap_or_else(|| panic!("no node of the cluster is running and unpaused"))
    }

    /// Remember which slots `port` serves and its replicas (per the first running node that
    /// answers), if it serves any; forget what it served before otherwise.
    fn remember_shard(&mut self, port: u16) {
        let Ok(views) = self.views() else { return };
        let Some(view) = views.first() else { return };
        let ports = self.ports();
        let owners = view.owners(&ports);
        let slots: Vec<u16> = (0..SLOTS)
            .filter(|slot| owners[*slot] == Some(port))
            .map(|slot| u16::try_from(slot).expect("a slot fits u16"))
            .collect();
        if slots.is_empty() {
            self.down.remove(&port);
        } else {
            let replicas = view.replicas_of(self.id(port));
            self.down.insert(port, Shard { slots, replicas });
        }
    }

    /// What every running, unpaused node says. `Err` if one does not answer.
    fn views(&self) -> Result<Vec<View>, String> {
        let plain_port = |port: u16| {
            // A TLS cluster lists its nodes by their TLS ports; the harness goes by the plain ones.
            self.tls_ports.iter().position(|tls| *tls == port).map_or(port, |index| self.nodes[index].port())
        };
        self.nodes
            .iter()
            .filter(|node| node.is_up())
            .map(|node| View::take(node.port(), &plain_port))
            .collect()
    }

    /// Poll until the cluster has settled and `extra` accepts it; panic after `bound`.
    fn settle<T>(
        &self,
        bound: Duration,
        what: &str,
        mut extra: impl FnMut(&Agreed) -> Result<T, String>,
    ) -> T {
        poll(bound, || {
            let agreed = self.agreed()?;
            extra(&agreed)
        })
        .unwrap_or_else(|seen| self.fail(what, &seen))
    }

    /// The cluster's state if it has settled, or what is not settled yet.
    fn agreed(&self) -> Result<Agreed, String> {
        let views = self.views()?;
        let ports = self.ports();
        let up: Vec<u16> = self.nodes.iter().filter(|node| node.is_up()).map(RedisProcess::port).collect();
        for view in &views {
            if !view.ok {
                return Err(format!("node {} does not report cluster_state:ok", view.port));
            }
        }
        // The same owner for every slot, everywhere: a running, unpaused primary.
        let first = views.first().ok_or("no node of the cluster is running and unpaused")?;
        let owners = first.owners(&ports);
        for view in &views[1..] {
            let theirs = view.owners(&ports);
            if let Some(slot) = (0..SLOTS).find(|slot| theirs[*slot] != owners[*slot]) {
                return Err(format!(
                    "slot {slot}: node {} says it is served by {:?}, node {} by {:?}",
                    first.port, owners[slot], view.port, theirs[slot]
                ));
            }
        }
        let mut owner_ports = Vec::with_capacity(SLOTS);
        for (slot, owner) in owners.iter().enumerate() {
            match owner {
                Some(port) if up.contains(port) => owner_ports.push(*port),
                Some(port) => return Err(format!("slot {slot} is served by {port}, which is down")),
                None => return Err(format!("slot {slot} is not served by any node")),
            }
        }
        // Each running node is, for every node, what it says it is.
        let mut roles = HashMap::new();
        for view in &views {
            let role = match view.role {
                SeenRole::Primary => NodeRole::Primary,
                SeenRole::Replica(primary) => NodeRole::Replica { primary },
            };
            let expected_flag = if role == NodeRole::Primary { "master" } else { "slave" };
            let expected_primary = match role {
                NodeRole::Replica { primary } => Some(self.id(primary)),
                _ => None,
            };
            let id = self.id(view.port);
            for other in &views {
                let line = other
                    .lines
                    .iter()
                    .find(|line| line.id == id)
                    .ok_or_else(|| format!("node {} does not know node {}", other.port, view.port))?;
                if let Some(flag) = line.flags.iter().find(|flag| BAD_FLAGS.contains(&flag.as_str())) {
                    return Err(format!("node {} flags node {} `{flag}`", other.port, view.port));
                }
                if !line.flags.iter().any(|flag| flag == expected_flag)
                    || line.primary.as_deref() != expected_primary
                {
                    return Err(format!(
                        "node {} says it is {role:?}, node {} sees it as {} of {:?}",
                        view.port,
                        other.port,
                        line.flags.join(","),
                        line.primary
                    ));
                }
            }
            if let NodeRole::Replica { primary } = role {
                if !up.contains(&primary) {
                    return Err(format!("node {} replicates {primary}, which is down", view.port));
                }
                if !view.link_up {
                    return Err(format!("replica {}: master_link_status is not up", view.port));
                }
            }
            roles.insert(view.port, role);
        }
        // No slot half-migrated.
        for view in &views {
            if let Some(slot) =
                view.lines.iter().find(|line| line.port == view.port).and_then(|line| line.pending.first())
            {
                return Err(format!("node {} is migrating or importing slot {slot}", view.port));
            }
        }
        Ok(Agreed { owners: owner_ports, roles })
    }

    /// Panic with `what` did not happen, what was `seen` last, and the tail of every node's log.
    fn fail(&self, what: &str, seen: &str) -> ! {
        let logs: String = self.nodes.iter().map(|node| node.report("node")).collect();
        panic!("Redis Cluster: {what}: did not happen; last seen: {seen}\nthe nodes' logs:{logs}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        // `dir` (dropped after this) removes the directories.
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .field("node_timeout", &self.node_timeout)
            .field("dir", &self.dir)
            .finish()
    }
}

/// A settled cluster, as every running, unpaused node sees it.
#[derive(Debug, Clone)]
struct Agreed {
    /// The port of the primary serving each slot (index = slot).
    owners: Vec<u16>,
    roles: HashMap<u16, NodeRole>,
}

impl Agreed {
    /// What the running, unpaused node on `port` is (`None` for a node that is down).
    fn role(&self, port: u16) -> Option<NodeRole> {
        self.roles.get(&port).copied()
    }
}

/// A slot moved in steps ([`RedisCluster::begin_slot_migration`]): the target `IMPORTING` it,
/// the source `MIGRATING` it. Move its keys with [`move_keys`](Self::move_keys) (or one key
/// with [`move_key`](Self::move_key)) and end it with [`finish`](Self::finish); dropped
/// without `finish`, the slot stays half-migrated.
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: u16,
    target: u16,
}

impl SlotMigration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of the primary the slot is moving from (it still owns it until `finish`).
    pub fn source(&self) -> u16 {
        self.source
    }

    /// The port of the primary the slot is moving to.
    pub fn target(&self) -> u16 {
        self.target
    }

    /// Move every key of the slot still on the source to the target (`CLUSTER
    /// GETKEYSINSLOT`, `MIGRATE … KEYS`, 100 keys at a time); returns how many moved.
    pub fn move_keys(&self) -> usize {
        let slot = self.slot.to_string();
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = query(self.source, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .unwrap_or_else(|err| panic!("CLUSTER GETKEYSINSLOT on {}: {err}", self.source));
            if keys.is_empty() {
                return moved;
            }
            let mut cmd = redis::cmd("MIGRATE");
            cmd.arg("127.0.0.1").arg(self.target).arg("").arg(0).arg(5000).arg("KEYS");
            for key in &keys {
                cmd.arg(key.as_slice());
            }
            let reply: String = connect(self.source)
                .and_then(|mut conn| cmd.query(&mut conn).map_err(|err| err.to_string()))
                .unwrap_or_else(|err| {
                    panic!(
                        "MIGRATE of {} keys of slot {slot} from {} to {}: {err}",
                        keys.len(),
                        self.source,
                        self.target
                    )
                });
            assert_eq!(reply, "OK", "MIGRATE of slot {slot}'s keys from {} to {}", self.source, self.target);
            moved += keys.len();
        }
    }

    /// Move `key` (which must hash to the slot) to the target with `MIGRATE`; returns whether
    /// it was on the source (`false`: no such key there, nothing moved).
    pub fn move_key(&self, key: &str) -> bool {
        let slot = self.cluster.key_slot(key);
        assert_eq!(
            slot, self.slot,
            "move_key({key:?}): the key is in slot {slot}, not in slot {}",
            self.slot
        );
        let target = self.target.to_string();
        let reply: String = query(self.source, &["MIGRATE", "127.0.0.1", &target, key, "0", "5000"])
            .unwrap_or_else(|err| panic!("MIGRATE {key:?} from {} to {}: {err}", self.source, self.target));
        match reply.as_str() {
            "OK" => true,
            "NOKEY" => false,
            other => {
                panic!("MIGRATE {key:?} from {} to {}: unexpected reply {other:?}", self.source, self.target)
            }
        }
    }

    /// Move the remaining keys, give the slot to the target (`CLUSTER SETSLOT … NODE` on the
    /// target, the source, then every other running primary) and wait until the cluster has
    /// settled with the target serving it.
    pub fn finish(self) {
        let cluster = self.cluster;
        let slot = self.slot.to_string();
        let target_id = cluster.id(self.target).to_owned();
        self.move_keys();
        expect_ok(self.target, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        expect_ok(self.source, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        for node in cluster.nodes() {
            if node.role == NodeRole::Primary && node.port != self.source && node.port != self.target {
                expect_ok(node.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
            }
        }
        let (source, target) = (self.source, self.target);
        cluster.settle(SETTLE_BOUND, &format!("slot {slot} moving from {source} to {target}"), |agreed| {
            match agreed.owners[usize::from(self.slot)] {
                owner if owner == target => Ok(()),
                owner => Err(format!("slot {slot} is still served by {owner}")),
            }
        });
    }
}

impl fmt::Debug for SlotMigration<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMigration")
            .field("slot", &self.slot)
            .field("source", &self.source)
            .field("target", &self.target)
            .finish()
    }
}

/// Flags of a node in `CLUSTER NODES` that a settled cluster shows for no running node.
const BAD_FLAGS: [&str; 4] = ["fail", "fail?", "handshake", "noaddr"];

/// What one node says: its `CLUSTER INFO` state, its `CLUSTER NODES` table, its `ROLE` and,
/// for a replica, its link to the primary.
#[derive(Debug)]
struct View {
    port: u16,
    ok: bool,
    lines: Vec<Line>,
    role: SeenRole,
    link_up: bool,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct Line {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The id of its primary, for a replica.
    primary: Option<String>,
    /// Slot ranges it serves (inclusive).
    slots: Vec<(u16, u16)>,
    /// Slots it is migrating or importing (listed on the node's own line only).
    pending: Vec<u16>,
}

impl View {
    /// What the node on `port` says, its nodes named by `plain_port` of the port it lists.
    fn take(port: u16, plain_port: &dyn Fn(u16) -> u16) -> Result<Self, String> {
        let mut conn = connect(port)?;
        let info: String =
            run(&mut conn, &["CLUSTER", "INFO"]).map_err(|err| format!("node {port}: {err}"))?;
        let nodes: String =
            run(&mut conn, &["CLUSTER", "NODES"]).map_err(|err| format!("node {port}: {err}"))?;
        let role = match role(&mut conn).map_err(|err| format!("node {port}: {err}"))? {
            SeenRole::Replica(primary) => SeenRole::Replica(plain_port(primary)),
            primary => primary,
        };
        let link_up = match role {
            SeenRole::Primary => false,
            SeenRole::Replica(_) => {
                let replication: String =
                    run(&mut conn, &["INFO", "replication"]).map_err(|err| format!("node {port}: {err}"))?;
                info_field(&replication, "master_link_status") == Some("up")
            }
        };
        let lines = nodes
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| parse_line(line).map(|line| Line { port: plain_port(line.port), ..line }))
            .collect::<Result<_, _>>()?;
        Ok(Self { port, ok: info_field(&info, "cluster_state") == Some("ok"), lines, role, link_up })
    }

    /// The port of the primary serving each slot, per this node (only ports of the cluster).
    fn owners(&self, ports: &[u16]) -> Vec<Option<u16>> {
        let mut owners = vec![None; SLOTS];
        for line in self.lines.iter().filter(|line| line.flags.iter().any(|flag| flag == "master")) {
            if !ports.contains(&line.port) {
                continue;
            }
            for (first, last) in &line.slots {
                for owner in &mut owners[usize::from(*first)..=usize::from(*last)] {
                    *owner = Some(line.port);
                }
            }
        }
        owners
    }

    /// The ports of the replicas of the node `primary_id`, per this node, ascending.
    fn replicas_of(&self, primary_id: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .lines
            .iter()
            .filter(|line| line.primary.as_deref() == Some(primary_id))
            .map(|line| line.port)
            .collect();
        ports.sort_unstable();
        ports
    }
}

/// `<id> <ip:port@cport[,hostname]> <flags> <primary|-> <ping-sent> <pong-recv> <epoch>
/// <link-state> <slot>…` where a slot is `n`, `a-b`, `[n->-id]` or `[n-<-id]`.
fn parse_line(text: &str) -> Result<Line, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let bad = || format!("unexpected CLUSTER NODES line {text:?}");
    if fields.len() < 8 {
        return Err(bad());
    }
    let address = fields[1].split(['@', ',']).next().ok_or_else(bad)?;
    let port = address.rsplit(':').next().and_then(|port| port.parse().ok()).ok_or_else(bad)?;
    let mut slots = Vec::new();
    let mut pending = Vec::new();
    for token in &fields[8..] {
        if let Some(inner) = token.strip_prefix('[') {
            let slot = inner.split('-').next().and_then(|slot| slot.parse().ok()).ok_or_else(bad)?;
            pending.push(slot);
        } else if let Some((first, last)) = token.split_once('-') {
            slots.push((first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?));
        } else {
            let slot = token.parse().map_err(|_| bad())?;
            slots.push((slot, slot));
        }
    }
    Ok(Line {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(str::to_owned).collect(),
        primary: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
        pending,
    })
}

/// Run `args` on `port` and panic unless it says OK.
fn expect_ok(port: u16, args: &[&str]) {
    let reply: String = query(port, args).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply, "OK", "{args:?} on {port}");
}

/// Start the `index`th node of a new cluster in `<dir>/node-<index>` on a free port (whose
/// bus port, +10000, is free too); tries another port if that one is taken meanwhile.
/// With `tls`, it also serves TLS on the given port, and the cluster bus is TLS.
fn start_node(
    dir: &TempDir,
    index: usize,
    node_timeout: Duration,
    tls: Option<(&Certificates, u16)>,
) -> RedisProcess {
    let node_dir = dir.subdir(&format!("node-{index}"));
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = cluster_port();
        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |name: &str, value: &str| args.extend([OsString::from(name), OsString::from(value)]);
        arg("--port", &port.to_string());
        arg("--bind", "127.0.0.1");
        arg("--daemonize", "no");
        arg("--save", "");
        arg("--appendonly", "no");
        arg("--cluster-enabled", "yes");
        arg("--cluster-config-file", "nodes.conf");
        arg("--cluster-node-timeout", &node_timeout.as_millis().to_string());
        // A replica may always fail over, however long it was cut off from its primary.
        arg("--cluster-replica-validity-factor", "0");
        // Full syncs (a new replica, a former primary rejoining) start at once.
        arg("--repl-diskless-sync", "yes");
        arg("--repl-diskless-sync-delay", "0");
        if let Some((certs, tls_port)) = tls {
            // Replicas follow their primary at the port the cluster names, its TLS port.
            arg("--tls-cluster", "yes");
            arg("--tls-replication", "yes");
            // The bus port stays the plain port's + 10000 (which `cluster_port` checked).
            arg("--cluster-port", &(port + 10000).to_string());
            args.extend(certs.server_args(tls_port, true).into_iter().map(OsString::from));
        }
        args.push("--dir".into());
        args.push(node_dir.clone().into_os_string());
        let mut node = RedisProcess::new(port, node_dir.clone(), args, "Ready to accept connections");
        match node.spawn() {
            Ok(()) => return node,
            Err(err) => last_error = err,
        }
    }
    panic!("could not start cluster node {index} after 5 attempts: {last_error}");
}

/// A loopback port below 55536 that is free, with its cluster bus port (`+ 10000`) free too.
/// The bus port comes from [`free_port`] (below the ephemeral range, and never handed out
/// twice by this process), so the client port is below that range as well and no other
/// server of this process gets either.
fn cluster_port() -> u16 {
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..200 {
        let bus = free_port();
        if bus >= 11024 && free(bus - 10000) {
            return bus - 10000;
        }
    }
    // An unusual ephemeral range: any pair of free ports will do.
    for _ in 0..10_000 {
        let port = 1024 + rand::random::<u16>() % (55535 - 1024);
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free loopback port pair (port, port + 10000) below 55536");
}
