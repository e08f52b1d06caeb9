//! The harness for Redis topologies, checked against real processes: [`RedisCluster`] (six
//! nodes: keys routed, slots migrated whole and held half-migrated, a takeover, a kill, a
//! restart and a pause with automatic failover) and [`SentinelGroup`] (a requested failover,
//! a killed primary replaced, and restarted as a replica).
//!
//! Each test owns its topology; what it measures (start and failover times) is printed
//! (`-- --nocapture`).

use std::time::{Duration, Instant};

use dlock_tests::{NodeRole, RedisCluster, SentinelGroup};

/// How long an automatic failover may take: detection (node timeout or down-after, 1 s),
/// agreement, election (a split vote makes the sentinels try again after twice their
/// failover timeout, 6 s) and promotion, on a loaded two-core machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// A blocking connection to a node.
fn conn(port: u16) -> redis::Connection {
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|err| panic!("{url}: {err}"));
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("setting a read timeout");
    conn
}

/// One command on `port`, whatever it answers.
fn try_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn(port))
}

/// One command on `port`; panics if it is refused.
fn cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    try_cmd(port, args).unwrap_or_else(|err| panic!("{args:?} on {port}: {err}"))
}

/// `SET key value` on `port`, then `WAIT` until one replica has it.
fn set_replicated(port: u16, key: &str, value: &str) {
    let mut conn = conn(port);
    let reply: String = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut conn)
        .unwrap_or_else(|err| panic!("SET on {port}: {err}"));
    assert_eq!(reply, "OK");
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .unwrap_or_else(|err| panic!("WAIT on {port}: {err}"));
    assert_eq!(acked, 1, "the write on {port} reached no replica within 5 s");
}

/// The redirection `port` answers for `GET key`: (`"MOVED"` or `"ASK"`, target port), or
/// `None` if it serves the key.
fn redirection(port: u16, key: &str) -> Option<(String, u16)> {
    match try_cmd::<Option<String>>(port, &["GET", key]) {
        Ok(_) => None,
        Err(err) => {
            let code = err.code().map(str::to_owned);
            let target = err.redirect_node().and_then(|(addr, _slot)| addr.rsplit(':').next()?.parse().ok());
            match (code, target) {
                (Some(code), Some(target)) => Some((code, target)),
                _ => panic!("GET {key:?} on {port}: {err}"),
            }
        }
    }
}

/// Whether anything accepts connections on `port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster

/// Six nodes: three primaries with a replica each; every key is served by the primary
/// `primary_for_key` names and redirected (`MOVED`) there by the others; a slot migrated
/// whole, and one held half-migrated (`ASK`); nothing left running after the drop.
#[test]
fn cluster_routes_keys_and_migrates_slots() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("[timing] cluster start: {:?}", started.elapsed());

    let nodes = cluster.nodes();
    let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
    assert_eq!(
        cluster.seed_urls(),
        ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>()
    );
    let primaries: Vec<u16> =
        nodes.iter().filter(|node| node.role == NodeRole::Primary).map(|node| node.port).collect();
    assert_eq!(primaries.len(), 3, "{nodes:?}");
    for primary in &primaries {
        let replica = cluster.replica_of(*primary);
        assert!(nodes.contains(&dlock_tests::ClusterNode {
            port: replica,
            role: NodeRole::Replica { primary: *primary }
        }));
    }

    // Keys land where primary_for_key says; the other primaries redirect there.
    let mut served_by = Vec::new();
    for index in 0..30 {
        let key = format!("key-{index}");
        let owner = cluster.primary_for_key(&key);
        assert!(primaries.contains(&owner), "{key} is served by {owner}, not a primary");
        let reply: String = cmd(owner, &["SET", &key, "v"]);
        assert_eq!(reply, "OK");
        for other in primaries.iter().filter(|port| **port != owner) {
            assert_eq!(redirection(*other, &key), Some(("MOVED".to_owned(), owner)), "GET {key} on {other}");
        }
        served_by.push(owner);
    }
    for primary in &primaries {
        assert!(served_by.contains(primary), "none of 30 keys is served by {primary}");
    }

    // A whole slot moves, with its key.
    let key = "migrated";
    let slot = cluster.key_slot(key);
    let source = cluster.primary_for_key(key);
    let target = *primaries.iter().find(|port| **port != source).expect("three primaries");
    let _: String = cmd(source, &["SET", key, "value"]);
    let started = Instant::now();
    cluster.migrate_slot(slot, target);
    eprintln!("[timing] migrate_slot (one key): {:?}", started.elapsed());
    assert_eq!(cluster.primary_for_key(key), target);
    assert_eq!(cmd::<Option<String>>(target, &["GET", key]).as_deref(), Some("value"));
    assert_eq!(redirection(source, key), Some(("MOVED".to_owned(), target)));

    // A slot held half-migrated: one key moved (ASK from the source), one not.
    let (moved, stays) = ("{half}moved", "{half}stays");
    let slot = cluster.key_slot(moved);
    let source = cluster.primary_for_key(moved);
    let target = *primaries.iter().find(|port| **port != source).expect("three primaries");
    let _: String = cmd(source, &["SET", moved, "1"]);
    let _: String = cmd(source, &["SET", stays, "2"]);
    let migration = cluster.begin_slot_migration(slot, target);
    assert_eq!((migration.slot(), migration.source(), migration.target()), (slot, source, target));
    assert!(migration.move_key(moved));
    assert!(!migration.move_key(moved), "the key is no longer on the source");
    assert_eq!(redirection(source, moved), Some(("ASK".to_owned(), target)));
    assert_eq!(cmd::<Option<String>>(source, &["GET", stays]).as_deref(), Some("2"));
    // The target serves the moved key only to a client that says ASKING.
    assert_eq!(redirection(target, moved), Some(("MOVED".to_owned(), source)));
    let mut asking = conn(target);
    let _: String = redis::cmd("ASKING").query(&mut asking).expect("ASKING");
    let value: Option<String> = redis::cmd("GET").arg(moved).query(&mut asking).expect("GET after ASKING");
    assert_eq!(value.as_deref(), Some("1"));
    assert_eq!(migration.move_keys(), 1, "the key left on the source moves");
    migration.finish();
    assert_eq!(cluster.primary_for_key(stays), target);
    assert_eq!(cmd::<Option<String>>(target, &["GET", stays]).as_deref(), Some("2"));
    assert_eq!(redirection(source, moved), Some(("MOVED".to_owned(), target)));

    drop(cluster);
    for port in ports {
        assert!(!listening(port), "node {port} still listens after the cluster was dropped");
    }
}

/// A takeover promotes the replica (its former primary follows it); a killed primary is
/// replaced by its replica, and comes back as that one's replica when restarted; a paused
/// primary is replaced too, and follows its successor once resumed.
#[test]
fn cluster_fails_over() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("[timing] cluster start: {:?}", started.elapsed());
    let key = "failover-key";

    let first = cluster.primary_for_key(key);
    let second = cluster.replica_of(first);
    set_replicated(first, key, "1");
    let started = Instant::now();
    cluster.failover_takeover(second);
    eprintln!("[timing] cluster failover_takeover: {:?}", started.elapsed());
    assert_eq!(cluster.primary_for_key(key), second);
    assert_eq!(cluster.replica_of(second), first);
    assert_eq!(role_of(&cluster, first), NodeRole::Replica { primary: second });
    assert_eq!(cmd::<Option<String>>(second, &["GET", key]).as_deref(), Some("1"));

    // Kill the new primary: its replica (the first) takes over, with the data.
    set_replicated(second, key, "2");
    let started = Instant::now();
    cluster.kill(second);
    let promoted = cluster.wait_for_failover(second, FAILOVER_BOUND);
    eprintln!("[timing] cluster kill -> failover: {:?}", started.elapsed());
    assert_eq!(promoted, first);
    assert_eq!(cluster.primary_for_key(key), first);
    assert_eq!(role_of(&cluster, second), NodeRole::Killed);
    assert_eq!(cmd::<Option<String>>(first, &["GET", key]).as_deref(), Some("2"));

    let started = Instant::now();
    cluster.restart(second);
    eprintln!("[timing] cluster restart -> rejoined as a replica: {:?}", started.elapsed());
    assert_eq!(role_of(&cluster, second), NodeRole::Replica { primary: first });
    set_replicated(first, key, "3");

    // Pause the primary: its replica takes over; resumed, it follows.
    let started = Instant::now();
    cluster.pause(first);
    assert_eq!(role_of(&cluster, first), NodeRole::Paused);
    let promoted = cluster.wait_for_failover(first, FAILOVER_BOUND);
    eprintln!("[timing] cluster pause -> failover: {:?}", started.elapsed());
    assert_eq!(promoted, second);
    cluster.resume(first);
    cluster.wait_settled(Duration::from_secs(30));
    assert_eq!(role_of(&cluster, first), NodeRole::Replica { primary: second });
    assert_eq!(cmd::<Option<String>>(second, &["GET", key]).as_deref(), Some("3"));
}

fn role_of(cluster: &RedisCluster, port: u16) -> NodeRole {
    cluster
        .nodes()
        .into_iter()
        .find(|node| node.port == port)
        .map(|node| node.role)
        .expect("a node of the cluster")
}

// ---------------------------------------------------------------------------------------------
// Sentinel

/// The group starts as configured; a requested failover swaps primary and replica.
#[test]
fn sentinel_group_fails_over_on_request() {
    let started = Instant::now();
    let group = SentinelGroup::start();
    eprintln!("[timing] sentinel group start: {:?}", started.elapsed());

    let data = group.data_ports();
    assert_eq!((group.primary_port(), group.replica_port()), (data[0], data[1]));
    let sentinels: Vec<String> = group.sentinel_urls();
    assert_eq!(sentinels.len(), 3);
    let hosts: Vec<&str> = sentinels.iter().map(|url| url.trim_start_matches("redis://")).collect();
    assert_eq!(group.url(), format!("redis-sentinel://{}/{}", hosts.join(","), group.master_name()));
    assert_eq!(group.server_url(data[0]), format!("redis://127.0.0.1:{}", data[0]));
    for url in &sentinels {
        let mut sentinel = redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(group.master_name())
            .query(&mut sentinel)
            .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        assert_eq!(addr, ["127.0.0.1".to_owned(), data[0].to_string()]);
    }
    set_replicated(data[0], "k", "1");

    let started = Instant::now();
    let new = group.failover();
    eprintln!("[timing] sentinel failover(): {:?}", started.elapsed());
    assert_eq!(new, data[1]);
    assert_eq!((group.primary_port(), group.replica_port()), (data[1], data[0]));
    assert_eq!(cmd::<Option<String>>(data[1], &["GET", "k"]).as_deref(), Some("1"));
    set_replicated(data[1], "k", "2");
    assert!(try_cmd::<String>(data[0], &["SET", "k", "3"]).is_err(), "the former primary is read-only now");
}

/// A killed primary is replaced by the replica; restarted, it comes back as a replica of the
/// new primary; nothing is left running after the drop.
#[test]
fn sentinel_group_replaces_a_killed_primary() {
    let started = Instant::now();
    let mut group = SentinelGroup::start();
    eprintln!("[timing] sentinel group start: {:?}", started.elapsed());
    let data = group.data_ports();
    set_replicated(data[0], "k", "1");

    let started = Instant::now();
    let old = group.kill_primary();
    assert_eq!(old, data[0]);
    assert!(!listening(old));
    let new = group.wait_for_new_primary(old, FAILOVER_BOUND);
    eprintln!("[timing] sentinel kill_primary -> new primary: {:?}", started.elapsed());
    assert_eq!(new, data[1]);
    assert_eq!(group.primary_port(), new);
    assert_eq!(cmd::<Option<String>>(new, &["GET", "k"]).as_deref(), Some("1"));

    let started = Instant::now();
    group.restart(old);
    eprintln!("[timing] sentinel restart -> replica: {:?}", started.elapsed());
    let role: Vec<redis::Value> = cmd(old, &["ROLE"]);
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"slave".to_vec())), "{role:?}");
    assert_eq!(group.replica_port(), old);
    set_replicated(new, "k", "2");
    assert_eq!(cmd::<Option<String>>(old, &["GET", "k"]).as_deref(), Some("2"));

    let ports: Vec<u16> =
        data.iter().copied().chain(group.sentinel_urls().iter().map(|url| port_of(url))).collect();
    drop(group);
    for port in ports {
        assert!(!listening(port), "{port} still listens after the group was dropped");
    }
}

/// A test that panics leaves no process behind, a paused one included: the topology is
/// dropped while the panic unwinds.
#[test]
fn a_panicking_test_leaves_nothing_running() {
    let ports = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut group = SentinelGroup::start();
        let replica = group.replica_port();
        group.pause(replica);
        let mut seen = group.data_ports();
        seen.extend(group.sentinel_urls().iter().map(|url| port_of(url)));
        assert!(seen.iter().all(|port| listening(*port)));
        *ports.lock().expect("the port list") = seen;
        panic!("the test fails with a paused replica");
    }));
    assert!(outcome.is_err());
    for port in ports.into_inner().expect("the port list") {
        assert!(!listening(port), "{port} still listens after the test panicked");
    }
}

/// The port at the end of a `redis://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or_else(|| panic!("no port in {url}"))
}
