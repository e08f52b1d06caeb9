//! [`SentinelGroup`]: a Redis primary, its replica and three sentinels watching them, all on
//! loopback and owned by one test — the primary killed, restarted, paused or failed over at
//! will, every process killed and every file removed on drop (also on panic).
//!
//! Every method blocks the calling thread until what it did has settled (bounded waits that
//! panic with what they last saw and the tail of the processes' logs). Call them from a
//! plain `#[test]`, before the runtime work of an async test, or from an async test through
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`. Each call
//! opens its own short-lived connections, so a group can be shared (`&SentinelGroup` is
//! `Send`) between threads.
//!
//! Sentinel mode is `redis-server <conf> --sentinel`: Debian's `redis-server` package has it
//! (the `redis-sentinel` package only adds a service around the same binary).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::redis_process::{RedisProcess, SeenRole, TempDir, connect, info_field, poll, query, role, run};
use super::server::free_port;

/// How long the group may take to form (the replica in sync, every sentinel knowing the
/// primary, the replica and the other two), and a restarted node to be back.
const FORM_BOUND: Duration = Duration::from_secs(30);

/// How long a requested failover may take.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// The default `down-after-milliseconds`.
const DEFAULT_DOWN_AFTER: Duration = Duration::from_millis(1000);

/// `failover-timeout`: also how long a sentinel waits before it tries the same failover
/// again (twice this).
const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// The sentinels' clocks (`SENTINEL DEBUG`), sped up from 10 s and 2 s: `INFO` to the data
/// nodes every second (roles seen, replicas found), hello messages every 500 ms (sentinels
/// found; a restarted former primary is made a replica after 4 of these, not 8 s).
const SENTINEL_DEBUG: [&str; 4] = ["info-period", "1000", "publish-period", "500"];

/// Sentinels in a group, and how many must agree that the primary is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;

/// A primary, one replica of it (`replicaof`) and three sentinels monitoring it (quorum 2,
/// `down-after-milliseconds` 1000 by default, `failover-timeout` 3000, `parallel-syncs` 1),
/// each process on a free loopback port in a temporary directory of its own, holding its
/// config file (which the sentinels rewrite) and its log (`redis.log`), with no persistence
/// of data.
///
/// Processes are named by their port. Dropping the group kills every process (SIGKILL,
/// which also ends a paused one) and removes the directories, also when the test panics.
pub struct SentinelGroup {
    name: String,
    /// The two data nodes: the one started as the primary, then the one started as its replica.
    data: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
    /// Sentinels that monitor nothing ([`start_unaware_sentinel`](Self::start_unaware_sentinel)).
    unaware: Vec<RedisProcess>,
    down_after: Duration,
    /// Dropped after the processes.
    dir: TempDir,
}

impl SentinelGroup {
    /// Start a group with `down-after-milliseconds` 1000; returns once the replica is in sync
    /// (`master_link_status:up`) and each sentinel knows the primary, the replica and the
    /// other two sentinels (`SENTINEL MASTER`: `num-slaves` 1, `num-other-sentinels` 2).
    /// Panics (with the processes' log tails) if it does not get there within 30 s.
    pub fn start() -> Self {
        Self::start_with(DEFAULT_DOWN_AFTER)
    }

    /// [`start`](Self::start) with `down-after-milliseconds` `down_after`: how long the
    /// primary may not answer before a sentinel takes it for down.
    pub fn start_with(down_after: Duration) -> Self {
        let dir = TempDir::new("sentinel");
        let name = "dlock-primary".to_owned();
        let primary = start_data_node(&dir, 0, None);
        let replica = start_data_node(&dir, 1, Some(primary.port()));
        let mut group = Self {
            name,
            data: vec![primary, replica],
            sentinels: Vec::new(),
            unaware: Vec::new(),
            down_after,
            dir,
        };
        let (primary, replica) = (group.data[0].port(), group.data[1].port());
        poll(FORM_BOUND, || group.replica_in_sync(replica, primary))
            .unwrap_or_else(|seen| group.fail(&format!("{replica} syncing with {primary}"), &seen));
        for index in 0..SENTINELS {
            let sentinel = start_sentinel(&group.dir, index, &group.name, primary, down_after);
            group.sentinels.push(sentinel);
        }
        poll(FORM_BOUND, || {
            for sentinel in &group.sentinels {
                group.sentinel_knows_all(sentinel.port(), primary, &[replica])?;
            }
            Ok(())
        })
        .unwrap_or_else(|seen| group.fail("the sentinels finding each other and the replica", &seen));
        group
    }

    /// The name the sentinels monitor the primary under.
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// The `down-after-milliseconds` the sentinels run with.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|sentinel| format!("redis://127.0.0.1:{}", sentinel.port())).collect()
    }

    /// `redis-sentinel://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>/<master name>`: the
    /// whole group, for a client that asks the sentinels where the primary is.
    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.sentinels.iter().map(|sentinel| format!("127.0.0.1:{}", sentinel.port())).collect();
        format!("redis-sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// `redis://127.0.0.1:<port>` of the data node on `port` (panics if there is none).
    pub fn server_url(&self, port: u16) -> String {
        assert!(
            self.data.iter().any(|node| node.port() == port),
            "no data node of this group is on port {port} (data nodes: {:?})",
            self.data_ports()
        );
        format!("redis://127.0.0.1:{port}")
    }

    /// The ports of the two data nodes: the one started as the primary, then its replica.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(RedisProcess::port).collect()
    }

    /// The primary's port, per the sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`), once every
    /// running, unpaused sentinel says the same (panics if they do not within 30 s).
    pub fn primary_port(&self) -> u16 {
        poll(FAILOVER_BOUND, || self.announced_primary())
            .unwrap_or_else(|seen| self.fail("the sentinels agreeing on the primary", &seen))
    }

    /// The port of the data node that is not the [`primary_port`](Self::primary_port).
    pub fn replica_port(&self) -> u16 {
        let primary = self.primary_port();
        self.data_ports().into_iter().find(|port| *port != primary).expect("a group has two data nodes")
    }

    /// Kill the current primary (SIGKILL; per [`primary_port`](Self::primary_port)) and reap
    /// it; returns its port. Nothing is waited for: see
    /// [`wait_for_new_primary`](Self::wait_for_new_primary).
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        self.kill(port);
        port
    }

    /// Kill the process (data node or sentinel) on `port` (SIGKILL) and reap it; a no-op if
    /// it is not running.
    pub fn kill(&mut self, port: u16) {
        self.process_mut(port).kill();
    }

    /// Start the process on `port` again (killing it first if it runs), on the same port,
    /// from the same directory and config file (which the sentinels may have rewritten). A
    /// data node's data is gone (no persistence). Returns once it is back: a data node that
    /// is not the primary the sentinels announce is a replica of that primary, in sync, and
    /// known to every sentinel as a replica that is up (a killed former primary comes back as
    /// a primary and is reconfigured by the sentinels); a sentinel knows the primary and the
    /// other two sentinels again. Panics if this does not happen within 30 s.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        let is_sentinel = self.sentinels.iter().any(|sentinel| sentinel.port() == port);
        self.process_mut(port).respawn();
        if is_sentinel {
            apply_sentinel_debug(port);
            let primary = self.primary_port();
            poll(FORM_BOUND, || self.sentinel_knows_all(port, primary, &[]))
                .unwrap_or_else(|seen| self.fail(&format!("restarted sentinel {port} rejoining"), &seen));
            return;
        }
        let primary = self.primary_port();
        if primary == port {
            return;
        }
        poll(FORM_BOUND, || {
            self.replica_in_sync(port, primary)?;
            for sentinel in self.sentinels.iter().filter(|sentinel| sentinel.is_up()) {
                self.sentinel_sees_replica_up(sentinel.port(), port)?;
            }
            Ok(())
        })
        .unwrap_or_else(|seen| {
            self.fail(&format!("restarted {port} becoming a replica of {primary}"), &seen)
        });
    }

    /// Freeze the process (data node or sentinel) on `port` (SIGSTOP): connections stay open,
    /// nothing is answered.
    pub fn pause(&mut self, port: u16) {
        self.process_mut(port).pause();
    }

    /// Thaw a process frozen with [`pause`](Self::pause) (SIGCONT); returns once it answers
    /// PING.
    pub fn resume(&mut self, port: u16) {
        self.process_mut(port).resume();
        poll(FORM_BOUND, || query::<String>(port, &["PING"]).map(drop))
            .unwrap_or_else(|seen| self.fail(&format!("{port} answering after SIGCONT"), &seen));
    }

    /// Fail the primary over (`SENTINEL FAILOVER <name>` to a sentinel: no agreement needed)
    /// and wait until every running sentinel announces the other data node as the primary,
    /// that node answers `ROLE` as a primary and the former primary (if it runs) is its
    /// replica, in sync. Returns the new primary's port. Panics if this does not happen
    /// within 30 s.
    pub fn failover(&self) -> u16 {
        self.fail_over(true)
    }

    /// [`failover`](Self::failover), without waiting for the former primary to become a
    /// replica (one that [refuses](Self::refuse_demotion) never does).
    pub fn failover_leaving_old_primary(&self) -> u16 {
        self.fail_over(false)
    }

    /// Make the data node on `port` refuse `REPLICAOF` (an ACL rule on its default user, the
    /// one the sentinels use): a failover then leaves it a primary that goes on answering
    /// writes, as a primary the sentinels cannot reach is left.
    pub fn refuse_demotion(&self, port: u16) {
        let reply: String = query(port, &["ACL", "SETUSER", "default", "-replicaof", "-slaveof"])
            .unwrap_or_else(|err| panic!("refusing REPLICAOF on {port}: {err}"));
        assert_eq!(reply, "OK", "ACL SETUSER on {port}");
    }

    /// Start a sentinel that monitors nothing, and return its URL. It answers, and clients
    /// may subscribe to its `+switch-master`, but it never names this group's primary and
    /// never announces a switch of it — as a sentinel cut off from the others together with
    /// the old primary neither takes part in a failover nor hears of it.
    pub fn start_unaware_sentinel(&mut self) -> String {
        let index = self.sentinels.len() + self.unaware.len();
        let sentinel_dir = self.dir.subdir(&format!("sentinel-{index}"));
        let conf = sentinel_dir.join("sentinel.conf");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            write_config(
                &conf,
                &format!("port {port}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\n", sentinel_dir.display()),
            );
            let args = vec![conf.clone().into_os_string(), "--sentinel".into()];
            let mut sentinel = RedisProcess::new(port, sentinel_dir.clone(), args, "Sentinel ID is");
            match sentinel.spawn() {
                Ok(()) => {
                    self.unaware.push(sentinel);
                    return format!("redis://127.0.0.1:{port}");
                }
                Err(err) => last_error = err,
            }
        }
        panic!("could not start a sentinel after 5 attempts: {last_error}");
    }

    fn fail_over(&self, wait_for_rejoin: bool) -> u16 {
        let old = self.primary_port();
        let sentinel = self
            .sentinels
            .iter()
            .find(|sentinel| sentinel.is_up())
            .map(RedisProcess::port)
            .unwrap_or_else(|| panic!("failover: no sentinel is running and unpaused"));
        // A sentinel refuses while it still takes the replica for unfit (`NOGOODSLAVE`, e.g.
        // right after a restart) or a failover runs (`INPROG`): ask again until it accepts.
        poll(FAILOVER_BOUND, || match query::<String>(sentinel, &["SENTINEL", "FAILOVER", &self.name]) {
            Ok(reply) if reply == "OK" => Ok(()),
            Ok(reply) => Err(format!("SENTINEL FAILOVER said {reply:?}")),
            Err(err) => Err(err),
        })
        .unwrap_or_else(|seen| self.fail(&format!("sentinel {sentinel} accepting SENTINEL FAILOVER"), &seen));
        let old_is_up = wait_for_rejoin && self.process(old).is_up();
        poll(FAILOVER_BOUND, || {
            let new = self.new_primary(old)?;
            if old_is_up {
                self.replica_in_sync(old, new)?;
            }
            Ok(new)
        })
        .unwrap_or_else(|seen| self.fail(&format!("the failover away from {old}"), &seen))
    }

    /// After the primary on `old_port` was killed (or paused): wait, at most `bound`, until
    /// every running sentinel announces another data node as the primary and that node
    /// answers `ROLE` as a primary; returns its port.
    pub fn wait_for_new_primary(&self, old_port: u16, bound: Duration) -> u16 {
        poll(bound, || self.new_primary(old_port))
            .unwrap_or_else(|seen| self.fail(&format!("the sentinels failing over from {old_port}"), &seen))
    }

    // -----------------------------------------------------------------------------------------
    // Internals

    fn process(&self, port: u16) -> &RedisProcess {
        self.data
            .iter()
            .chain(&self.sentinels)
            .find(|process| process.port() == port)
            .unwrap_or_else(|| panic!("no process of this group is on port {port}"))
    }

    fn process_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.data
            .iter_mut()
            .chain(&mut self.sentinels)
            .find(|process| process.port() == port)
            .unwrap_or_else(|| panic!("no process of this group is on port {port}"))
    }

    /// The primary every running, unpaused sentinel announces, or what they say if they do
    /// not agree.
    fn announced_primary(&self) -> Result<u16, String> {
        let mut seen = Vec::new();
        for sentinel in self.sentinels.iter().filter(|sentinel| sentinel.is_up()) {
            let addr: Vec<String> =
                query(sentinel.port(), &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])?;
            let port = addr.get(1).and_then(|port| port.parse::<u16>().ok());
            seen.push(port.ok_or_else(|| format!("sentinel {}: address {addr:?}", sentinel.port()))?);
        }
        match seen.first() {
            Some(first) if seen.iter().all(|port| port == first) => Ok(*first),
            Some(_) => Err(format!("the sentinels announce different primaries: {seen:?}")),
            None => Err("no sentinel is running and unpaused".to_owned()),
        }
    }

    /// The primary all sentinels announce, if it is not `old` and says it is a primary.
    fn new_primary(&self, old: u16) -> Result<u16, String> {
        let new = self.announced_primary()?;
        if new == old {
            return Err(format!("the sentinels still announce {old}"));
        }
        match connect(new).and_then(|mut conn| role(&mut conn))? {
            SeenRole::Primary => Ok(new),
            SeenRole::Replica(of) => Err(format!("the announced primary {new} is still a replica of {of}")),
        }
    }

    /// `Ok` once `replica` is a replica of `primary` with its link up, and `primary` sees it
    /// online.
    fn replica_in_sync(&self, replica: u16, primary: u16) -> Result<(), String> {
        let mut conn = connect(replica)?;
        match role(&mut conn)? {
            SeenRole::Replica(of) if of == primary => {}
            other => return Err(format!("{replica} is {other:?}, not a replica of {primary}")),
        }
        let info: String = run(&mut conn, &["INFO", "replication"])?;
        if info_field(&info, "master_link_status") != Some("up") {
            return Err(format!("{replica}: master_link_status is not up"));
        }
        let info: String = query(primary, &["INFO", "replication"])?;
        let online = (0..4)
            .filter_map(|index| info_field(&info, &format!("slave{index}")))
            .any(|slave| slave.contains(&format!("port={replica},")) && slave.contains("state=online"));
        if !online {
            return Err(format!("{primary} does not list {replica} as an online replica"));
        }
        Ok(())
    }

    /// `Ok` once `sentinel` monitors `primary` as a primary that is up, knows the other two
    /// sentinels and (if any are given) exactly `replicas`, each up.
    fn sentinel_knows_all(&self, sentinel: u16, primary: u16, replicas: &[u16]) -> Result<(), String> {
        // redis-rs reads a flat `[field, value, …]` reply as a map.
        let master: HashMap<String, String> = query(sentinel, &["SENTINEL", "MASTER", &self.name])?;
        let field = |name: &str| master.get(name).map(String::as_str).unwrap_or("");
        if field("port") != primary.to_string() || field("flags") != "master" {
            return Err(format!(
                "sentinel {sentinel} sees primary {}:{} flagged {:?}, not {primary} up",
                field("ip"),
                field("port"),
                field("flags")
            ));
        }
        if field("num-other-sentinels") != (SENTINELS - 1).to_string() {
            return Err(format!(
                "sentinel {sentinel} knows {} other sentinels",
                field("num-other-sentinels")
            ));
        }
        if field("quorum") != QUORUM.to_string() {
            return Err(format!("sentinel {sentinel} has quorum {}", field("quorum")));
        }
        if !replicas.is_empty() {
            if field("num-slaves") != replicas.len().to_string() {
                return Err(format!("sentinel {sentinel} knows {} replicas", field("num-slaves")));
            }
            for replica in replicas {
                self.sentinel_sees_replica_up(sentinel, *replica)?;
            }
        }
        Ok(())
    }

    /// `Ok` once `sentinel` lists `replica` as a replica that is up and linked to its primary.
    fn sentinel_sees_replica_up(&self, sentinel: u16, replica: u16) -> Result<(), String> {
        let listed: Vec<HashMap<String, String>> = query(sentinel, &["SENTINEL", "REPLICAS", &self.name])?;
        let entry = listed
            .into_iter()
            .find(|entry| entry.get("port").is_some_and(|port| *port == replica.to_string()))
            .ok_or_else(|| format!("sentinel {sentinel} does not list {replica} as a replica"))?;
        let flags = entry.get("flags").map(String::as_str).unwrap_or("");
        let link = entry.get("master-link-status").map(String::as_str).unwrap_or("");
        if flags != "slave" || link != "ok" {
            return Err(format!(
                "sentinel {sentinel} sees replica {replica} flagged {flags:?}, master-link-status {link:?}"
            ));
        }
        Ok(())
    }

    /// Panic with `what` did not happen, what was `seen` last, and the tail of every
    /// process's log.
    fn fail(&self, what: &str, seen: &str) -> ! {
        let logs: String = (self.data.iter().map(|node| node.report("data node")))
            .chain(self.sentinels.iter().map(|sentinel| sentinel.report("sentinel")))
            .collect();
        panic!("Sentinel group: {what}: did not happen; last seen: {seen}\nthe processes' logs:{logs}");
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for process in self.sentinels.iter_mut().chain(&mut self.unaware).chain(&mut self.data) {
            process.kill();
        }
        // `dir` (dropped after this) removes the directories.
    }
}

impl fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelGroup")
            .field("name", &self.name)
            .field("data", &self.data)
            .field("sentinels", &self.sentinels)
            .field("down_after", &self.down_after)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Write `text` to `path`.
fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
}

/// Start data node `index` in `<dir>/data-<index>` on a free port, from a config file there
/// (`redis.conf`: the sentinels rewrite it when they change the node's role, so a restart
/// keeps the role), a replica of `replica_of` if given.
fn start_data_node(dir: &TempDir, index: usize, replica_of: Option<u16>) -> RedisProcess {
    let node_dir = dir.subdir(&format!("data-{index}"));
    let conf = node_dir.join("redis.conf");
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\nsave \"\"\nappendonly no\n\
             # Full syncs (a new replica, a former primary rejoining) start at once.\n\
             repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n",
            node_dir.display()
        );
        if let Some(primary) = replica_of {
            text.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
        }
        write_config(&conf, &text);
        let mut node = RedisProcess::new(
            port,
            node_dir.clone(),
            vec![conf.clone().into_os_string()],
            "Ready to accept connections",
        );
        match node.spawn() {
            Ok(()) => return node,
            Err(err) => last_error = err,
        }
    }
    panic!("could not start data node {index} after 5 attempts: {last_error}");
}

/// Start sentinel `index` in `<dir>/sentinel-<index>` on a free port, monitoring the primary
/// on `primary` as `name`, from a config file there (which it rewrites), with its clocks
/// sped up ([`SENTINEL_DEBUG`]).
fn start_sentinel(
    dir: &TempDir,
    index: usize,
    name: &str,
    primary: u16,
    down_after: Duration,
) -> RedisProcess {
    let sentinel_dir = dir.subdir(&format!("sentinel-{index}"));
    let conf = sentinel_dir.join("sentinel.conf");
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\n\
             sentinel resolve-hostnames no\nsentinel announce-hostnames no\n\
             sentinel monitor {name} 127.0.0.1 {primary} {QUORUM}\n\
             sentinel down-after-milliseconds {name} {}\n\
             sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {name} 1\n",
            sentinel_dir.display(),
            down_after.as_millis()
        );
        write_config(&conf, &text);
        let args = vec![conf.clone().into_os_string(), "--sentinel".into()];
        let mut sentinel = RedisProcess::new(port, sentinel_dir.clone(), args, "Sentinel ID is");
        match sentinel.spawn() {
            Ok(()) => {
                apply_sentinel_debug(port);
                return sentinel;
            }
            Err(err) => last_error = err,
        }
    }
    panic!("could not start sentinel {index} after 5 attempts: {last_error}");
}

/// Speed up the sentinel's clocks ([`SENTINEL_DEBUG`]; not kept across restarts).
fn apply_sentinel_debug(port: u16) {
    let mut args = vec!["SENTINEL", "DEBUG"];
    args.extend(SENTINEL_DEBUG);
    let reply: String = query(port, &args).unwrap_or_else(|err| panic!("sentinel {port}: {err}"));
    assert_eq!(reply, "OK", "{args:?} on sentinel {port}");
}
