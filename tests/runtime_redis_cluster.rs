//! The runtime against Redis Cluster.
//!
//! - The whole conformance suite (`conformance/`) on one 6-node cluster (3 primaries, 3
//!   replicas) that this binary starts for all of its tests ([`shared_cluster`]), each test in
//!   a key namespace of its own.
//! - Cluster-only behaviour, each test on a cluster of its own ([`RedisCluster`]): keys spread
//!   over shards, notices on sharded channels, a slot migrated while its locks are taken and
//!   released (`ASK`, `MOVED`), a primary killed under load and a `CLUSTER FAILOVER TAKEOVER`
//!   (tokens keep increasing, locks usable again within the failover time + 1 s, nothing
//!   granted twice); an acquisition held up on its way (a proxy its primary announces itself
//!   behind) whose node connection a slot refresh replaced, which must not keep its key after
//!   its owner's release for longer than it was held up; without a refresh, timed-out calls
//!   leave the node's connection in place and the release runs behind the acquisition.

use dlock_tests::RedisClusterStore;
use dlock_tests::shared_topology::shared_cluster_seeds;

async fn cluster_store(test_name: &str) -> RedisClusterStore {
    RedisClusterStore::on(&shared_cluster_seeds(), test_name).await
}

dlock_tests::conformance_suite!(cluster_store);

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::{LockBackend, LockService, RedisClusterBackend};
use dlock_tests::support::contention::{assert_replicated_lock_kept, contend_through};
use dlock_tests::{
    FaultyBackend, NodeRole, Op, RedisCluster, Store, inspector, poll_until, redis_cmd, subscribers_on,
};
use tokio::task::block_in_place;

/// A cluster of this test's own (blocking: started off the runtime's worker).
fn own_cluster() -> RedisCluster {
    block_in_place(RedisCluster::start)
}

async fn backend(cluster: &RedisCluster, call_timeout: Duration) -> RedisClusterBackend {
    RedisClusterBackend::builder(cluster.seed_urls())
        .call_timeout(call_timeout)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to the test's cluster: {err}"))
}

/// Two services under `prefix`, each on a backend (a process, as far as the cluster can
/// tell) of its own.
async fn two_services(cluster: &RedisCluster, prefix: &str) -> (LockService, LockService) {
    let service = async || {
        LockService::builder(backend(cluster, Duration::from_secs(2)).await).key_prefix(prefix).build()
    };
    (service().await, service().await)
}

/// A primary of `cluster` other than the one on `port`.
fn another_primary(cluster: &RedisCluster, port: u16) -> u16 {
    cluster
        .nodes()
        .into_iter()
        .find(|node| node.port != port && matches!(node.role, NodeRole::Primary))
        .expect("another primary")
        .port
}

/// Keys that land on three different primaries.
fn keys_on_every_shard(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut owners = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let owner = cluster.primary_for_key(&format!("{prefix}{key}"));
        if !owners.contains(&owner) {
            owners.push(owner);
            keys.push(key);
        }
        if keys.len() == 3 {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_reach_waiters_on_every_shard_over_sharded_channels() {
    let cluster = own_cluster();
    let prefix = "handoff:";
    let keys = keys_on_every_shard(&cluster, prefix);
    let a = LockService::builder(backend(&cluster, Duration::from_secs(2)).await).key_prefix(prefix).build();
    let b_backend = backend(&cluster, Duration::from_secs(2)).await;
    let b = LockService::builder(b_backend.clone()).key_prefix(prefix).build();
    for key in &keys {
        let held = a.lock(key.as_str()).ttl(Duration::from_secs(30)).await.expect("a takes the key");
        let waiter = {
            let b = b.clone();
            let key = key.clone();
            tokio::spawn(async move {
                b.lock(key.as_str()).wait(Duration::from_secs(20)).ttl(Duration::from_secs(30)).await
            })
        };
        // The waiter's channel is a sharded channel on the key's own primary, and nowhere else.
        let channel = b_backend.notice_channel(&format!("{prefix}{key}"));
        let owner = cluster.primary_for_key(&format!("{prefix}{key}"));
        subscribed(owner, &channel, 1, "the waiter subscribing on its key's shard").await;
        for node in cluster.nodes() {
            if node.port != owner && matches!(node.role, dlock_tests::NodeRole::Primary) {
                assert_eq!(
                    subscribers_on(node.port, &channel, true),
                    0,
                    "{channel} on another primary {}",
                    node.port
                );
            }
        }
        let token = held.fencing_token();
        let released = Instant::now();
        held.release().await.expect("release");
        let got = waiter.await.expect("waiter task").expect("the waiter gets the key");
        eprintln!("{key} (shard {owner}): hand-off in {:?}", released.elapsed());
        assert!(got.fencing_token() > token, "tokens increase across the hand-off");
        got.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_while_its_locks_are_taken_and_released_surfaces_no_error() {
    let cluster = own_cluster();
    let prefix = "migrate:";
    let (a, b) = two_services(&cluster, prefix).await;
    let full = format!("{prefix}acct");
    let slot = cluster.key_slot(&full);
    let source = cluster.primary_for_key(&full);
    let target = another_primary(&cluster, source);
    let mut last_token = 0;
    let mut check = |token: u64| {
        assert!(token > last_token, "token {token} after {last_token}");
        last_token = token;
    };

    let held = a.lock("acct").ttl(Duration::from_secs(30)).await.expect("before the migration");
    check(held.fencing_token());
    let migration = block_in_place(|| cluster.begin_slot_migration(slot, target));
    // MIGRATING on the source, IMPORTING on the target, the key still on the source.
    assert!(
        matches!(b.lock("acct").wait(Duration::ZERO).await, Err(dlock::Error::Timeout { .. })),
        "still held"
    );
    held.release().await.expect("release while MIGRATING");
    let held = b.lock("acct").ttl(Duration::from_secs(30)).await.expect("take while MIGRATING");
    check(held.fencing_token());
    // The key moves to the target: the source answers ASK, the cluster connection follows it.
    block_in_place(|| migration.move_keys());
    assert!(
        matches!(a.lock("acct").wait(Duration::ZERO).await, Err(dlock::Error::Timeout { .. })),
        "held across the move"
    );
    held.release().await.expect("release after the key moved (ASK)");
    let held = a.lock("acct").ttl(Duration::from_secs(30)).await.expect("take after the key moved (ASK)");
    check(held.fencing_token());
    block_in_place(|| migration.finish());
    assert_eq!(block_in_place(|| cluster.primary_for_key(&full)), target);
    // The slot is the target's now: MOVED, then routed there directly.
    held.release().await.expect("release after the slot moved (MOVED)");
    for _ in 0..5 {
        let held = b.lock("acct").ttl(Duration::from_secs(30)).await.expect("take after the slot moved");
        check(held.fencing_token());
        held.release().await.expect("release");
    }
}

/// The fields and the time to live (ms) of the hash `key` on the node at `port`, which is
/// importing its slot (`ASKING` before each command, on the same connection).
fn importing_hash(port: u16, key: &str) -> (usize, i64) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a client of the target");
    let mut conn = client.get_connection().expect("a connection to the target");
    redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("HLEN")
        .arg(key)
        .cmd("ASKING")
        .ignore()
        .cmd("PTTL")
        .arg(key)
        .query(&mut conn)
        .unwrap_or_else(|err| panic!("HLEN and PTTL of {key} on {port}: {err}"))
}

/// A waiter that gives up while its key's slot is half migrated — the lock still on the
/// source, its waiting line already on the target, so a script naming both is refused with
/// `TRYAGAIN` — leaves the waiting line all the same (a one-key `HDEL`, routed to wherever
/// the line is), rather than keeping a place that a release would hand the key to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_while_its_slot_migrates_leaves_the_waiting_line() {
    let cluster = own_cluster();
    let prefix = "leave:";
    let (a, b) = two_services(&cluster, prefix).await;
    let full = format!("{prefix}acct");
    let source = cluster.primary_for_key(&full);
    let target = another_primary(&cluster, source);
    let held = a.lock("acct").ttl(Duration::from_secs(30)).await.expect("take");
    let waiter = tokio::spawn(async move { b.lock("acct").wait(Duration::from_secs(30)).await });
    // The waiter's place in line, on the source.
    let mut on_source = inspector(&format!("redis://127.0.0.1:{source}")).await;
    let pattern = format!("{full}#dlock:line*");
    dlock_tests::poll_until(Duration::from_secs(5), "the waiter in the waiting line", || {
        let (mut conn, pattern) = (on_source.clone(), pattern.clone());
        async move { redis_cmd::<Vec<String>>(&mut conn, &["KEYS", &pattern]).await.len() == 1 }
    })
    .await;
    let line = redis_cmd::<Vec<String>>(&mut on_source, &["KEYS", &pattern]).await.remove(0);
    // Half migrated: the line moves, the lock stays.
    let migration = block_in_place(|| cluster.begin_slot_migration(cluster.key_slot(&full), target));
    assert!(block_in_place(|| migration.move_key(&line)), "the line was on the source");
    let (places, left_ms) = block_in_place(|| importing_hash(target, &line));
    assert_eq!(places, 1, "the waiter's place, on the target");
    // The waiter gives up (its task is dropped: the claim releases its key in the background).
    let gave_up = Instant::now();
    waiter.abort();
    assert!(waiter.await.is_err_and(|err| err.is_cancelled()), "the waiter was still waiting");
    // Only its leaving can take the place out before the line's own time runs out.
    let bound = Duration::from_millis(u64::try_from(left_ms).expect("a line with a time to live"))
        .saturating_sub(Duration::from_millis(300));
    dlock_tests::poll_until(bound, "the waiter's place gone before the line would expire", || async {
        block_in_place(|| importing_hash(target, &line)).0 == 0
    })
    .await;
    eprintln!(
        "the place was gone {:?} after the waiter gave up (the line had {left_ms} ms left)",
        gave_up.elapsed()
    );
    held.release().await.expect("release while the slot migrates");
    block_in_place(|| migration.finish());
}

/// A waiter's subscription follows its key's slot to another shard: the source drops it when
/// the slot moves (SUNSUBSCRIBE) and the notifier makes it again on the target's shard, where
/// the hand-off is then heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiters_subscription_follows_its_slot_to_another_shard() {
    let cluster = own_cluster();
    let a =
        LockService::builder(backend(&cluster, Duration::from_secs(2)).await).key_prefix("follow:").build();
    let b_backend = backend(&cluster, Duration::from_secs(2)).await;
    let b = LockService::builder(b_backend.clone()).key_prefix("follow:").build();
    let full = "follow:acct";
    let source = cluster.primary_for_key(full);
    let target = another_primary(&cluster, source);
    let held = a.lock("acct").ttl(Duration::from_secs(30)).await.expect("take");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("acct").wait(Duration::from_secs(30)).ttl(Duration::from_secs(30)).await
        })
    };
    let channel = b_backend.notice_channel(full);
    subscribed(source, &channel, 1, "the waiter subscribed on the source").await;
    block_in_place(|| cluster.migrate_slot(cluster.key_slot(full), target));
    let (source_replica, target_replica) = (cluster.replica_of(source), cluster.replica_of(target));
    dlock_tests::poll_until(
        Duration::from_secs(10),
        "the subscription made again on the target's shard",
        || {
            let channel = channel.clone();
            async move {
                subscribers_on(target, &channel, true) + subscribers_on(target_replica, &channel, true) == 1
            }
        },
    )
    .await;
    assert_eq!(subscribers_on(source, &channel, true) + subscribers_on(source_replica, &channel, true), 0);
    hands_over(held, waiter, "on the target").await;
}

/// Release `held`, then check that `waiter` takes the key under a newer token, and release it.
async fn hands_over(
    held: dlock::LockGuard,
    waiter: tokio::task::JoinHandle<Result<dlock::LockGuard, dlock::Error>>,
    what: &str,
) {
    let token = held.fencing_token();
    let released = held.release().await.unwrap_or_else(|err| panic!("{what}: release: {err}"));
    assert!(released, "{what}: the holder held the key");
    let next = waiter
        .await
        .unwrap_or_else(|err| panic!("{what}: the waiter's task: {err}"))
        .unwrap_or_else(|err| panic!("{what}: the waiter takes the key: {err}"));
    assert!(next.fencing_token() > token, "{what}: tokens increase across the hand-off");
    next.release().await.unwrap_or_else(|err| panic!("{what}: the waiter's release: {err}"));
}

/// A primary that stops answering (SIGSTOP: a dead host that sends no RST) costs calls to its
/// own shard their call timeout, not calls to the other shards: the cluster connection is
/// kept and repaired node by node, not replaced (a new one would wait for every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_does_not_stall_the_other_shards() {
    let mut cluster = own_cluster();
    let prefix = "silent:";
    let keys = keys_on_every_shard(&cluster, prefix);
    let call_timeout = Duration::from_millis(500);
    let service = LockService::builder(backend(&cluster, call_timeout).await).key_prefix(prefix).build();
    for key in &keys {
        service.lock(key.as_str()).await.expect("every shard answers").release().await.expect("release");
    }
    let silent = cluster.primary_for_key(&format!("{prefix}{}", keys[0]));
    cluster.pause(silent);
    let started = Instant::now();
    let err = service.lock(keys[0].as_str()).wait(Duration::ZERO).await.expect_err("the silent shard");
    assert!(matches!(err, dlock::Error::Backend { .. }), "{err:?}");
    eprintln!("the silent shard's call failed after {:?}", started.elapsed());
    for round in 0..3 {
        for key in &keys[1..] {
            let started = Instant::now();
            let guard = service
                .lock(key.as_str())
                .wait(Duration::ZERO)
                .await
                .unwrap_or_else(|err| panic!("round {round}: {key} on a healthy shard: {err}"));
            assert!(started.elapsed() < call_timeout, "{key}: {:?}", started.elapsed());
            guard.release().await.expect("release");
        }
    }
    cluster.resume(silent);
}

/// `kill -9` of a primary under load: six tasks of two clients take `acct` in a loop (each
/// section checks for a second holder and a token going back), while a holder whose
/// acquisition a replica acknowledged (`replicas_acknowledge`) keeps another key of the same
/// shard across the kill. Afterwards: the replicated lock is still held, by its holder alone,
/// and renewed on the new primary; `acct` is usable again soon after the failover (see the
/// bound below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_without_two_holders_or_a_token_going_back() {
    let cluster = Arc::new(std::sync::Mutex::new(own_cluster()));
    let (seeds, victim, held_key) = {
        let cluster = cluster.lock().unwrap();
        let victim = cluster.primary_for_key("kill:acct");
        let held_key = (0..)
            .map(|i| format!("held{i}"))
            .find(|key| cluster.primary_for_key(&format!("kill:{key}")) == victim)
            .expect("a key on the same shard");
        (cluster.seed_urls(), victim, held_key)
    };
    let connect = |replicated: bool| {
        let seeds = seeds.clone();
        async move {
            let mut builder = RedisClusterBackend::builder(seeds).call_timeout(Duration::from_secs(1));
            if replicated {
                builder = builder.replicas_acknowledge(1, Duration::from_millis(500));
            }
            LockService::builder(builder.connect().await.expect("connect")).key_prefix("kill:").build()
        }
    };
    let holder = connect(true).await;
    let held =
        holder.lock(held_key.as_str()).ttl(Duration::from_secs(5)).await.expect("the replicated holder");
    let clients = vec![connect(false).await, connect(false).await];
    let other = clients[0].clone();
    let faulted = Arc::clone(&cluster);
    let seen = contend_through(clients, "acct", move || {
        let mut cluster = faulted.lock().unwrap();
        cluster.kill(victim);
        let new_primary = cluster.wait_for_failover(victim, Duration::from_secs(30));
        eprintln!("primary {victim} killed; replica {new_primary} took over");
    })
    .await;
    eprintln!("kill -9 of the key's primary: {seen:?}");
    seen.assert_usable_after_the_failover();
    assert_replicated_lock_kept(held, &other, held_key.as_str()).await;
}

/// Replicated acquisitions of one service on one shard, at once, while the shard's replica
/// does not acknowledge (`SIGSTOP`ped): each has a cluster connection of its own, so each
/// fails with `NotReplicated` after the wait for replicas, within the call timeout, and leaves
/// its key free. Before, they shared one connection to the shard's primary, on which each
/// `WAIT` held up the acquisitions queued behind it until they missed the call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisitions_a_shards_replica_does_not_acknowledge_each_fail_with_not_replicated() {
    const ACQUISITIONS: usize = 6;
    let call_timeout = Duration::from_millis(1500);
    let mut cluster = own_cluster();
    let service = LockService::new(
        RedisClusterBackend::builder(cluster.seed_urls())
            .call_timeout(call_timeout)
            .replicas_acknowledge(1, Duration::from_millis(500))
            .connect()
            .await
            .expect("connect"),
    );
    // One slot, one shard: the hash tag.
    let keys: Vec<String> = (0..ACQUISITIONS).map(|i| format!("{{replicated}}:acct-{i}")).collect();
    let primary = cluster.primary_for_key(&keys[0]);
    let replica = block_in_place(|| cluster.replica_of(primary));
    let guard = service.lock(keys[0].as_str()).await.expect("acknowledged by the replica");
    assert!(guard.release().await.expect("release"));
    cluster.pause(replica);
    let calls: Vec<_> = keys
        .iter()
        .map(|key| {
            let (service, key) = (service.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = service.lock(key.as_str()).ttl(Duration::from_secs(30)).await;
                let outcome = match result {
                    Err(dlock::Error::Backend { source, .. }) => format!("{:?} {source}", source.kind()),
                    other => format!("{other:?}"),
                };
                (key, outcome, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("join"));
    }
    cluster.resume(replica);
    for (key, outcome, elapsed) in &outcomes {
        assert!(
            outcome.starts_with("NotReplicated "),
            "{key}: {outcome} after {elapsed:?}; all: {outcomes:#?}"
        );
        assert!(*elapsed < call_timeout, "{key}: {elapsed:?}; all: {outcomes:#?}");
    }
    let conn = inspector(&format!("redis://127.0.0.1:{primary}")).await;
    for key in &keys {
        poll_until(Duration::from_secs(2), &format!("{key} released (not left for its 30 s ttl)"), || {
            let mut conn = conn.clone();
            async move { !redis_cmd::<bool>(&mut conn, &["EXISTS", key]).await }
        })
        .await;
    }
}

/// A silent primary (`SIGSTOP`) does not stall replicated acquisitions on the other shards,
/// also those that need a connection the backend did not have yet (each replicated
/// acquisition in flight has one of its own): they are acknowledged within the call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_does_not_stall_replicated_acquisitions_on_the_other_shards() {
    let mut cluster = own_cluster();
    let call_timeout = Duration::from_millis(1500);
    let service = LockService::new(
        RedisClusterBackend::builder(cluster.seed_urls())
            .call_timeout(call_timeout)
            .replicas_acknowledge(1, Duration::from_secs(1))
            .connect()
            .await
            .expect("connect"),
    );
    let keys: Vec<String> = (0..4).map(|i| format!("{{healthy}}:acct-{i}")).collect();
    let healthy = cluster.primary_for_key(&keys[0]);
    let silent = block_in_place(|| cluster.nodes())
        .iter()
        .find(|node| node.port != healthy && matches!(node.role, NodeRole::Primary))
        .map(|node| node.port)
        .expect("another primary");
    let guard = service.lock(keys[0].as_str()).await.expect("acknowledged by the replica");
    assert!(guard.release().await.expect("release"));
    cluster.pause(silent);
    let calls: Vec<_> = keys
        .iter()
        .map(|key| {
            let (service, key) = (service.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = service.lock(key.as_str()).wait(Duration::ZERO).await;
                let outcome = match result {
                    Ok(guard) => {
                        let _ = guard.release().await;
                        "acquired".to_owned()
                    }
                    Err(err) => format!("{err}"),
                };
                (key, outcome, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("join"));
    }
    cluster.resume(silent);
    for (key, outcome, elapsed) in &outcomes {
        assert_eq!(outcome, "acquired", "{key} after {elapsed:?}; all: {outcomes:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_held_locks_and_their_renewals() {
    let cluster = own_cluster();
    let a = LockService::builder(
        RedisClusterBackend::builder(cluster.seed_urls())
            .replicas_acknowledge(1, Duration::from_millis(500))
            .connect()
            .await
            .expect("connect"),
    )
    .key_prefix("takeover:")
    .build();
    let b_backend = backend(&cluster, Duration::from_secs(2)).await;
    let b = LockService::builder(b_backend.clone()).key_prefix("takeover:").build();
    let held = a.lock("acct").ttl(Duration::from_secs(3)).await.expect("take");
    let primary = cluster.primary_for_key("takeover:acct");
    let replica = cluster.replica_of(primary);
    // A waiter subscribed on the old primary before the takeover...
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("acct").wait(Duration::from_secs(30)).ttl(Duration::from_secs(30)).await
        })
    };
    let channel = b_backend.notice_channel("takeover:acct");
    subscribed(primary, &channel, 1, "the waiter subscribed on the key's primary").await;
    block_in_place(|| cluster.failover_takeover(replica));
    assert_eq!(cluster.primary_for_key("takeover:acct"), replica);
    // Past the ttl: only renewals on the new primary keep it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!held.is_lost(), "the lock survived the takeover and its renewals reached the new primary");
    assert!(!waiter.is_finished(), "the waiter still waits: the lock is still held");
    // ...and is subscribed in the key's shard again: the old primary dropped the subscription
    // when it lost the slot (SUNSUBSCRIBE), and the notifier made it again (sharded channels
    // are served by every node of the shard: the new primary or its replica).
    assert_eq!(
        subscribers_on(primary, &channel, true) + subscribers_on(replica, &channel, true),
        1,
        "the waiter's channel is subscribed once in the shard after the takeover"
    );
    let token = held.fencing_token();
    held.release().await.expect("release on the new primary");
    let next = waiter.await.expect("waiter task").expect("the waiter takes the key after the takeover");
    assert!(next.fencing_token() > token, "tokens increase across the takeover");
    next.release().await.expect("release");
}

/// How a test fails the primary on `primary` over to its replica `replica`.
#[derive(Debug, Clone, Copy)]
enum Failover {
    /// `CLUSTER FAILOVER TAKEOVER` on the replica.
    Takeover,
    /// `kill -9` of the primary; its replica is elected.
    Kill,
}

/// A takeover by a replica that lacks a held lock (it had not received it): the holder hears
/// of it within a poll of the cluster's configuration, not at its next renewal (20 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_new_primary_lacks_is_reported_lost_soon_after_a_takeover() {
    lease_the_new_primary_lacks(Failover::Takeover).await;
}

/// As above, when the primary is killed and its replica elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_new_primary_lacks_is_reported_lost_soon_after_a_killed_primary_fails_over() {
    lease_the_new_primary_lacks(Failover::Kill).await;
}

async fn lease_the_new_primary_lacks(failover: Failover) {
    let mut cluster = own_cluster();
    let service =
        LockService::builder(backend(&cluster, Duration::from_secs(2)).await).key_prefix("lacks:").build();
    // The watch asks only while a lease may be held: a lock of 1 s, released, and then
    // nothing once that second has passed.
    let brief = service.lock("brief").ttl(Duration::from_secs(1)).await.expect("take");
    assert!(brief.release().await.expect("release"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let asked = cluster_nodes_calls(&cluster).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cluster_nodes_calls(&cluster).await, asked, "no CLUSTER NODES while no lease may be held");
    // A ttl of 60 s: the next scheduled renewal is 20 s away.
    let held = service.lock("acct").ttl(Duration::from_secs(60)).await.expect("take");
    let primary = cluster.primary_for_key("lacks:acct");
    let replica = cluster.replica_of(primary);
    dlock_tests::replica_forgets(&format!("redis://127.0.0.1:{replica}"), "lacks:acct", true).await;
    let started = Instant::now();
    match failover {
        Failover::Takeover => block_in_place(|| cluster.failover_takeover(replica)),
        Failover::Kill => {
            cluster.kill(primary);
            let elected = block_in_place(|| cluster.wait_for_failover(primary, Duration::from_secs(30)));
            assert_eq!(elected, replica);
        }
    }
    let failover_took = started.elapsed();
    let took = reported_lost(&held, "the failover").await;
    eprintln!(
        "{failover:?}: the failover took {failover_took:?}; a lease the new primary lacks was reported lost {took:?} after it (its next scheduled renewal was ~20 s away)"
    );
    assert!(!held.release().await.expect("release"), "the release reports the lock was no longer held");
    // The key is free on the new primary: it is taken again at once.
    let next = service.lock("acct").wait(Duration::ZERO).await.expect("the key is free after the loss");
    assert!(next.release().await.expect("release"));
    // The watch behind this stops with its backend: no more `CLUSTER NODES` once it is gone
    // (one poll may be under way as it goes).
    drop(service);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = cluster_nodes_calls(&cluster).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cluster_nodes_calls(&cluster).await, asked, "the watch stopped with its backend");
}

/// Let the cluster serve the slots it can while a shard is down
/// (`cluster-require-full-coverage no` on every node).
async fn serve_without_full_coverage(cluster: &RedisCluster) {
    for node in cluster.nodes() {
        let mut conn = inspector(&format!("redis://127.0.0.1:{}", node.port)).await;
        let _: () = redis_cmd(&mut conn, &["CONFIG", "SET", "cluster-require-full-coverage", "no"]).await;
    }
}

/// Wait (at most 15 s) until every node of `views` flags each of `ports` failed — `fail`, as
/// the cluster agreed, not only suspected (`fail?`) — or, with `failed` false, none does.
async fn fail_flags(views: &[u16], ports: &[u16], failed: bool, what: &str) {
    let mut conns = Vec::new();
    for view in views {
        conns.push(inspector(&format!("redis://127.0.0.1:{view}")).await);
    }
    dlock_tests::poll_until(Duration::from_secs(15), what, || {
        let conns = conns.clone();
        async move {
            for mut conn in conns {
                let nodes: String = redis_cmd(&mut conn, &["CLUSTER", "NODES"]).await;
                let flagged = |port: &u16| {
                    nodes.lines().any(|line| line.contains(&format!(":{port}@")) && line.contains(",fail "))
                };
                let seen = if failed { ports.iter().all(flagged) } else { !ports.iter().any(flagged) };
                if !seen {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// `CLUSTER FAILOVER TAKEOVER` by `replica` after it forgot `key` (as if the lock had not
/// reached it), without waiting for the rest of the cluster to settle; returns once `replica`
/// serves as a primary.
async fn take_over_lacking(replica: u16, key: &str) {
    dlock_tests::replica_forgets(&format!("redis://127.0.0.1:{replica}"), key, true).await;
    let mut promoted = inspector(&format!("redis://127.0.0.1:{replica}")).await;
    let _: () = redis_cmd(&mut promoted, &["CLUSTER", "FAILOVER", "TAKEOVER"]).await;
    dlock_tests::poll_until(Duration::from_secs(15), "the replica serving as a primary", || {
        let mut conn = promoted.clone();
        async move {
            let role: Vec<redis::Value> = redis_cmd(&mut conn, &["ROLE"]).await;
            matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
        }
    })
    .await;
}

/// Wait, at most 10 s, until `held` is reported lost after `what`; returns how long it took.
async fn reported_lost(held: &dlock::LockGuard, what: &str) -> Duration {
    dlock_tests::poll_until(Duration::from_secs(10), &format!("the lease reported lost after {what}"), || {
        let lost = held.is_lost();
        async move { lost }
    })
    .await
}

/// How many `CLUSTER NODES` calls the running nodes of `cluster` have served.
async fn cluster_nodes_calls(cluster: &RedisCluster) -> u64 {
    cluster_nodes_stat(cluster, "calls").await
}

/// The `CLUSTER NODES` count `stat` (`calls`, `rejected_calls`) of `INFO commandstats`, summed
/// over the running nodes of `cluster`.
async fn cluster_nodes_stat(cluster: &RedisCluster, stat: &str) -> u64 {
    let mut total = 0;
    for node in block_in_place(|| cluster.nodes()).into_iter().filter(|node| node.role != NodeRole::Killed) {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("node connection");
        let stats: String =
            redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO commandstats");
        total += stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_cluster|nodes:"))
            .and_then(|fields| fields.split(',').find_map(|field| field.strip_prefix(&format!("{stat}="))))
            .map_or(0, |n| n.parse::<u64>().expect("a count"));
    }
    total
}

/// A user whose ACL denies `CLUSTER NODES` (the README: without `+cluster|nodes` a lease a
/// failover lost is reported at its next renewal) still connects and locks; the failover
/// watch, refused, stops at once instead of being refused every second while a lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_denied_cluster_nodes_locks_and_the_watch_stops_asking() {
    let cluster = own_cluster();
    let ports: Vec<u16> = block_in_place(|| cluster.nodes()).into_iter().map(|node| node.port).collect();
    for port in &ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("node connection");
        let _: () = dlock_tests::redis_cmd(
            &mut conn,
            &["ACL", "SETUSER", "locker", "on", ">secret", "~*", "&*", "+@all", "-cluster|nodes"],
        )
        .await;
    }
    let seeds: Vec<String> =
        ports.iter().map(|port| format!("redis://locker:secret@127.0.0.1:{port}")).collect();
    let backend =
        RedisClusterBackend::builder(seeds).connect().await.expect("connect as the restricted user");
    let service = LockService::builder(backend).key_prefix("acl:").build();
    let held = service.lock("acct").ttl(Duration::from_secs(30)).await.expect("take as the restricted user");
    // The watch polls after 1 s while the lock is held, is refused, and stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = cluster_nodes_stat(&cluster, "rejected_calls").await;
    assert!(refused >= 1, "CLUSTER NODES was asked for and refused");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        cluster_nodes_stat(&cluster, "rejected_calls").await,
        refused,
        "the refused watch stopped asking"
    );
    assert!(held.release().await.expect("release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_an_unclosed_brace_are_refused_before_any_call() {
    let store = RedisClusterStore::on(&shared_cluster_seeds(), "brace").await;
    let service = store.service().await;
    match service.lock("user:{42").await {
        Err(dlock::Error::InvalidInput { reason, .. }) => assert!(reason.contains("hash tag"), "{reason}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let guard = service.lock("user:{42}:cart").await.expect("a closed tag is fine");
    guard.release().await.expect("release");
}

/// One silent node (SIGSTOPped, with a node timeout long enough that the cluster does not fail
/// it over) is its own shard's trouble alone. A waiter that gives up on a key of the silent
/// shard leaves a subscription there that cannot be dropped yet; the waiters on the other
/// shards stay subscribed and get their hand-offs meanwhile, and a backend connected while the
/// node is silent subscribes too. Once the node answers, its shard is served again.
///
/// Before the fix, the unanswered `SUNSUBSCRIBE` replaced the notice connection, and a new one
/// (like any new connection to the cluster) could not be made while a node was silent: every
/// waiter of the process lost its subscription until the node came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_leaves_notices_on_the_other_shards_alone() {
    let mut cluster = block_in_place(|| RedisCluster::start_with(Duration::from_secs(60)));
    let prefix = "silent:";
    let keys = keys_on_every_shard(&cluster, prefix);
    let full = |key: &String| format!("{prefix}{key}");
    let (quiet, steady, late) = (&keys[0], &keys[1], &keys[2]);
    let silent = cluster.primary_for_key(&full(quiet));
    let call_timeout = Duration::from_millis(500);
    let service = |backend: RedisClusterBackend| LockService::builder(backend).key_prefix(prefix).build();
    let holder = service(backend(&cluster, call_timeout).await);
    let mut held = Vec::new();
    for key in &keys {
        held.push(
            holder.lock(key.as_str()).ttl(Duration::from_secs(60)).await.expect("the holder takes the key"),
        );
    }
    let wait_for = |service: &LockService, key: &String| {
        let (service, key) = (service.clone(), key.clone());
        tokio::spawn(async move {
            service.lock(key.as_str()).wait(Duration::from_secs(60)).ttl(Duration::from_secs(60)).await
        })
    };

    let early_backend = backend(&cluster, call_timeout).await;
    let early = service(early_backend.clone());
    let steady_waiter = wait_for(&early, steady);
    let quiet_waiter = wait_for(&early, quiet);
    let steady_channel = early_backend.notice_channel(&full(steady));
    let quiet_channel = early_backend.notice_channel(&full(quiet));
    let steady_primary = cluster.primary_for_key(&full(steady));
    subscribed(steady_primary, &steady_channel, 1, "the steady shard's waiter subscribing").await;
    subscribed(silent, &quiet_channel, 1, "the quiet shard's waiter subscribing").await;

    block_in_place(|| cluster.pause(silent));
    quiet_waiter.abort();
    assert!(quiet_waiter.await.is_err_and(|err| err.is_cancelled()), "the quiet shard's waiter gave up");
    let late_backend = backend(&cluster, call_timeout).await;
    let late_waiter = wait_for(&service(late_backend.clone()), late);
    subscribed(
        cluster.primary_for_key(&full(late)),
        &late_backend.notice_channel(&full(late)),
        1,
        "a waiter of a backend connected while a node is silent subscribing",
    )
    .await;
    // The quiet shard's unsubscribe has failed (and been tried again) meanwhile; the steady
    // shard's subscription stood throughout.
    let watched_from = Instant::now();
    while watched_from.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            subscribers_on(steady_primary, &steady_channel, true),
            1,
            "the steady shard's subscription dropped while node {silent} was silent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut held = held.into_iter();
    let (quiet_held, steady_held, late_held) =
        (held.next().expect("three"), held.next().expect("three"), held.next().expect("three"));
    hands_over(steady_held, steady_waiter, "the steady shard").await;
    hands_over(late_held, late_waiter, "the third shard").await;

    block_in_place(|| cluster.resume(silent));
    subscribed(silent, &quiet_channel, 0, "the quiet shard's channel dropped once its node answers").await;
    let quiet_waiter = wait_for(&early, quiet);
    subscribed(silent, &quiet_channel, 1, "a new waiter on the quiet shard subscribing").await;
    hands_over(quiet_held, quiet_waiter, "the quiet shard, once its node answers").await;
}

/// A backend that connects while a failover is under way (a failed primary still holding
/// slots, its replica not promoted yet) takes no baseline then; the first settled reading it
/// gets may already count a takeover that a lease it granted meanwhile did not survive. So that
/// reading renews every lease at once. Here another shard stays unsettled (its primary
/// SIGSTOPped, its replica told not to fail over) while the backend connects, takes a lease,
/// and the lease's own shard is taken over by a replica that lacks it; the loss is reported
/// once the stopped primary answers again and the cluster settles, not at the lease's next
/// renewal (20 s away). Before the fix the first settled reading was only the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_while_the_backend_had_no_settled_reading_is_not_missed() {
    let mut cluster = own_cluster();
    serve_without_full_coverage(&cluster).await;
    let primary = cluster.primary_for_key("unsettled:acct");
    let replica = cluster.replica_of(primary);
    let stopped = another_primary(&cluster, primary);
    let stopped_replica = cluster.replica_of(stopped);
    let mut patient = inspector(&format!("redis://127.0.0.1:{stopped_replica}")).await;
    let _: () = redis_cmd(&mut patient, &["CONFIG", "SET", "cluster-replica-no-failover", "yes"]).await;
    block_in_place(|| cluster.pause(stopped));
    let live: Vec<u16> =
        cluster.nodes().iter().map(|node| node.port).filter(|port| *port != stopped).collect();
    fail_flags(&live, &[stopped], true, "every node flagging the stopped primary failed").await;

    let service = LockService::builder(backend(&cluster, Duration::from_secs(2)).await)
        .key_prefix("unsettled:")
        .build();
    let held = service.lock("acct").ttl(Duration::from_secs(60)).await.expect("take");
    take_over_lacking(replica, "unsettled:acct").await;
    // Unsettled until the stopped primary answers and the nodes clear its flag.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_lost(), "no settled reading yet, so nothing to go on");
    block_in_place(|| cluster.resume(stopped));
    fail_flags(&live, &[stopped], false, "every node clearing the stopped primary's flag").await;
    let took = reported_lost(&held, "the cluster settled").await;
    eprintln!(
        "a lease lost in a takeover before the backend's first settled reading was reported lost {took:?} after the cluster settled"
    );
    assert!(!held.release().await.expect("release"), "the lock was no longer held");
}

/// A notice is forwarded while a command of the notice connection waits on a silent node (the
/// subscriber task never awaits a command: `redis/notify.rs`). Here a waiter is handed its key
/// on one shard while the unsubscribe of another waiter's channel waits out its 3 s call
/// timeout on a SIGSTOPped node; the waiter takes the key from the hand-off notice, without
/// asking again (it would have, at its next recheck a second later, had the notice waited
/// behind the unsubscribe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_is_not_held_up_by_a_command_waiting_on_a_silent_node() {
    let mut cluster = block_in_place(|| RedisCluster::start_with(Duration::from_secs(60)));
    let prefix = "stuck:";
    let keys = keys_on_every_shard(&cluster, prefix);
    let full = |key: &String| format!("{prefix}{key}");
    let (quiet, steady) = (&keys[0], &keys[1]);
    let silent = cluster.primary_for_key(&full(quiet));
    let call_timeout = Duration::from_secs(3);
    let holder = LockService::builder(backend(&cluster, call_timeout).await).key_prefix(prefix).build();
    let quiet_held = holder.lock(quiet.as_str()).ttl(Duration::from_secs(60)).await.expect("the quiet key");
    let steady_held =
        holder.lock(steady.as_str()).ttl(Duration::from_secs(60)).await.expect("the steady key");
    let waiter_backend = backend(&cluster, call_timeout).await;
    let recorded = FaultyBackend::new(waiter_backend.clone());
    assert!(recorded.lease_epochs().is_some(), "the wrapped backend's moves still reach the keeper");
    let waiter = LockService::builder(recorded.clone()).key_prefix(prefix).build();
    let wait_for = |key: &String| {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move { waiter.lock(key.as_str()).wait(Duration::from_secs(60)).await })
    };
    let steady_waiter = wait_for(steady);
    let quiet_waiter = wait_for(quiet);
    for (key, what) in [(steady, "the steady waiter subscribing"), (quiet, "the quiet waiter subscribing")] {
        let (port, channel) =
            (cluster.primary_for_key(&full(key)), waiter_backend.notice_channel(&full(key)));
        subscribed(port, &channel, 1, what).await;
    }

    block_in_place(|| cluster.pause(silent));
    quiet_waiter.abort();
    assert!(quiet_waiter.await.is_err_and(|err| err.is_cancelled()), "the quiet waiter gave up");
    // Its unsubscribe is on its way to the silent node, where it waits out the call timeout.
    let released = Instant::now();
    let token = steady_held.fencing_token();
    assert!(steady_held.release().await.expect("release"), "the holder held the steady key");
    let next =
        steady_waiter.await.expect("the steady waiter's task").expect("the steady waiter gets the key");
    let got_in = released.elapsed();
    assert!(next.fencing_token() > token);
    let asked: Vec<_> = recorded
        .calls_of(Op::TryAcquire)
        .into_iter()
        .filter(|call| call.key == full(steady) && call.at > released.into())
        .collect();
    assert!(
        asked.is_empty(),
        "the waiter asked again {got_in:?} after the release instead of hearing its hand-off: {asked:?}"
    );
    assert!(
        got_in < call_timeout,
        "the hand-off came {got_in:?} after the release, past the unsubscribe's wait"
    );
    next.release().await.expect("release");
    block_in_place(|| cluster.resume(silent));
    drop(quiet_held);
}

/// A shard lost for good (its primary and its replica both down, the cluster serving the rest
/// with `cluster-require-full-coverage no`) does not blind the failover watch: a takeover on
/// another shard by a replica that lacks a held lock is still reported within a poll, not at
/// the lease's next renewal (20 s away).
///
/// Before the fix, the watch took the dead shard's failed primary, still holding its slots, for
/// a failover under way, and waited for it to end for as long as the shard stayed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_for_good_does_not_hide_a_failover_of_another() {
    let mut cluster = own_cluster();
    serve_without_full_coverage(&cluster).await;
    let primary = cluster.primary_for_key("dead:acct");
    let replica = cluster.replica_of(primary);
    let dead_primary = another_primary(&cluster, primary);
    let dead_replica = cluster.replica_of(dead_primary);
    let live: Vec<u16> = cluster
        .nodes()
        .iter()
        .map(|node| node.port)
        .filter(|port| ![dead_primary, dead_replica].contains(port))
        .collect();
    cluster.kill(dead_replica);
    cluster.kill(dead_primary);
    // Down for good, as every node sees it: both flagged `fail`, not only suspected (`fail?`).
    // (A backend connecting before that reads no settled epoch, and would take its first
    // reading — maybe after the takeover below — for the starting point.)
    fail_flags(&live, &[dead_primary, dead_replica], true, "every node flagging the dead shard failed").await;
    let mut watcher = inspector(&format!("redis://127.0.0.1:{primary}")).await;
    let state: String = redis_cmd(&mut watcher, &["CLUSTER", "INFO"]).await;
    assert!(state.contains("cluster_state:ok"), "the cluster serves the other shards: {state}");

    let service =
        LockService::builder(backend(&cluster, Duration::from_secs(2)).await).key_prefix("dead:").build();
    let held = service.lock("acct").ttl(Duration::from_secs(60)).await.expect("take");
    take_over_lacking(replica, "dead:acct").await;
    let took = reported_lost(&held, "the takeover").await;
    eprintln!(
        "with a shard down for good, a lease the new primary lacks was reported lost {took:?} after the takeover"
    );
    assert!(!held.release().await.expect("release"), "the lock was no longer held");
}

/// A request waiting for a key whose primary is killed rides the failover out: until the
/// replica takes over, the shard's other nodes answer `MOVED` to the dead primary (and, with
/// full coverage required, every node `CLUSTERDOWN`) once the cluster connection's quick
/// retries are used up; that is a passing outage, like `READONLY`, not a failure to report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_the_failover_of_a_killed_primary() {
    let mut cluster = own_cluster();
    let a = LockService::builder(
        RedisClusterBackend::builder(cluster.seed_urls())
            .replicas_acknowledge(1, Duration::from_millis(500))
            .connect()
            .await
            .expect("connect"),
    )
    .key_prefix("ride:")
    .build();
    let b_backend = backend(&cluster, Duration::from_secs(2)).await;
    let b = LockService::builder(b_backend.clone()).key_prefix("ride:").build();
    let held = a.lock("acct").ttl(Duration::from_secs(30)).await.expect("take");
    let primary = cluster.primary_for_key("ride:acct");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock("acct").wait(Duration::from_secs(60)).ttl(Duration::from_secs(30)).await
        })
    };
    let channel = b_backend.notice_channel("ride:acct");
    subscribed(primary, &channel, 1, "the waiter waiting, subscribed on the key's primary").await;
    cluster.kill(primary);
    block_in_place(|| cluster.wait_for_failover(primary, Duration::from_secs(30)));
    hands_over(held, waiter, "after the kill").await;
}

/// A subscription on a primary that is killed is made again on the replica that takes over
/// its slots. A dead node sends no `SUNSUBSCRIBE`, and the cluster connection makes a node's
/// subscriptions again only when that node comes back: the notifier must make them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_a_killed_primary_is_made_again_on_its_successor() {
    let mut cluster = own_cluster();
    let watcher = backend(&cluster, Duration::from_secs(2)).await;
    let key = dlock::backend::FullKey::new("killsub:", "acct");
    let primary = cluster.primary_for_key(&key);
    let replica = cluster.replica_of(primary);
    let _watch = watcher.watch_releases(&key).await.expect("watch").expect("the cluster backend announces");
    let channel = watcher.notice_channel(&key);
    subscribed(primary, &channel, 1, "subscribed on the key's primary").await;
    cluster.kill(primary);
    assert_eq!(block_in_place(|| cluster.wait_for_failover(primary, Duration::from_secs(30))), replica);
    subscribed(replica, &channel, 1, "subscribed again on the replica that took over").await;
}

/// Wait (up to 10 s) until `count` connections are subscribed to `channel` on the node at
/// `port`.
async fn subscribed(port: u16, channel: &str, count: i64, what: &str) {
    dlock_tests::poll_until(Duration::from_secs(10), what, || async move {
        subscribers_on(port, channel, true) == count
    })
    .await;
}

/// The mistakes a user makes with a cluster URL are told as what they are, at connect: a
/// `redis-cluster://` URL naming a Redis that is not a cluster node (the shared server) is
/// `InvalidInput` saying so and naming `redis://`, not "something dlock does not expect; check
/// that nothing else writes keys under the service's prefix"; a password the nodes refuse is
/// an `Auth` error, not "it could not be reached".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_tell_a_server_that_is_no_cluster_and_a_refused_password() {
    let single = dlock_tests::shared_redis_url();
    let not_a_cluster = RedisClusterBackend::builder([single.as_str()]).connect().await;
    match not_a_cluster {
        Err(dlock::Error::InvalidInput { what, reason }) => {
            assert_eq!(what, "Redis Cluster nodes");
            assert!(reason.contains("not a Redis Cluster node") && reason.contains("redis://"), "{reason}");
        }
        other => panic!("a server that is no cluster node: {other:?}"),
    }
    let through_url = dlock::connect(&single.replacen("redis://", "redis-cluster://", 1)).await.err();
    assert!(
        matches!(&through_url, Some(dlock::Error::InvalidInput { what: "Redis Cluster nodes", .. })),
        "the same through dlock::connect: {through_url:?}"
    );

    let seeds = shared_cluster_seeds();
    let wrong_password: Vec<String> =
        seeds.iter().map(|seed| seed.replacen("redis://", "redis://:wrong-password@", 1)).collect();
    let refused = RedisClusterBackend::builder(wrong_password).connect().await.err();
    let shown = refused.as_ref().map(ToString::to_string).unwrap_or_default();
    match &refused {
        Some(dlock::Error::Backend { source, .. }) => {
            assert_eq!(source.kind(), dlock::backend::BackendErrorKind::Auth, "{shown}: {source}");
            assert!(shown.contains("refused the credentials"), "{shown}");
            assert!(
                !format!("{shown} {source}").contains("wrong-password"),
                "the password is masked: {source}"
            );
        }
        other => panic!("a password the nodes refuse: {other:?}"),
    }
}

/// A `redis://` URL naming a node of a cluster connects (the node answers `PING`), but the
/// keys of other nodes' slots are answered with `MOVED`: that is told as a URL of the wrong
/// kind, pointing to `redis-cluster://`, not as "it cannot serve right now; retry shortly".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_url_naming_a_cluster_node_says_to_use_redis_cluster() {
    let seed = shared_cluster_seeds().remove(0);
    let backend = dlock::RedisBackend::connect(&seed).await.expect("a cluster node answers PING");
    let service = LockService::builder(backend).key_prefix(dlock_tests::unique_prefix("single-url")).build();
    // Of three keys, at least one lies in a slot another of the three primaries serves.
    let mut refused = None;
    for key in ["a", "b", "c", "d", "e", "f"] {
        match service.lock(key).wait(Duration::ZERO).await {
            Ok(guard) => {
                guard.release().await.expect("release");
            }
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("a key served by another node is refused");
    let dlock::Error::Backend { source, .. } = &err else { panic!("expected a backend error, got {err:?}") };
    assert_ne!(source.kind(), dlock::backend::BackendErrorKind::Unavailable, "{err}: {source}");
    assert!(!err.to_string().contains("retry shortly"), "{err}");
    let cause = source.to_string();
    assert!(cause.contains("Redis Cluster node") && cause.contains("redis-cluster://"), "{cause}");
}

/// How many scripts the node behind `conn` has run by `EVALSHA`.
async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis_cmd(conn, &["INFO", "commandstats"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// A cluster of the test's own whose primary serving `key` announces itself behind a
/// [`BlackHoleProxy`](dlock_tests::BlackHoleProxy) (`cluster-announce-port`), once every node
/// names it there, and a backend (seeded with the other nodes) that reaches it through it.
struct BehindProxy {
    cluster: RedisCluster,
    primary: u16,
    proxy: dlock_tests::BlackHoleProxy,
    /// A connection straight to the primary.
    at_primary: redis::aio::MultiplexedConnection,
    backend: RedisClusterBackend,
}

async fn primary_behind_proxy(key: &str, call_timeout: Duration) -> BehindProxy {
    let cluster = own_cluster();
    let primary = cluster.primary_for_key(key);
    let proxy = dlock_tests::BlackHoleProxy::start(primary).await;
    let mut at_primary = inspector(&format!("redis://127.0.0.1:{primary}")).await;
    let _: () =
        redis_cmd(&mut at_primary, &["CONFIG", "SET", "cluster-announce-port", &proxy.port().to_string()])
            .await;
    let announced = format!("127.0.0.1:{}@", proxy.port());
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port).collect();
    poll_until(Duration::from_secs(10), "every node naming the key's primary at the proxy", || {
        let (ports, announced) = (ports.clone(), announced.clone());
        async move {
            for port in ports {
                let mut conn = inspector(&format!("redis://127.0.0.1:{port}")).await;
                let nodes: String = redis_cmd(&mut conn, &["CLUSTER", "NODES"]).await;
                if !nodes.contains(&announced) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let seeds: Vec<String> = ports
        .iter()
        .filter(|port| **port != primary)
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    let backend = RedisClusterBackend::builder(seeds)
        .call_timeout(call_timeout)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to the test's cluster: {err}"));
    BehindProxy { cluster, primary, proxy, at_primary, backend }
}

/// An acquisition held up on its way to its shard's primary (a proxy the primary announces
/// itself behind holds back what the connection sends) times out. Then the cluster's topology
/// changes elsewhere (a slot of another shard moves): the cluster connection asks every node
/// again, finds this node's connection silent and replaces it. The owner's release, sent
/// behind the acquisition "on its connection", now goes on the node's new connection, runs
/// first and finds nothing. When the held-up script runs after all, the key must not stay
/// held for the owner that released it, for its whole ttl of 30 s: another client gets it
/// within as long again as it was held up after the release (or two call timeouts) and a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acquisition_does_not_outlive_its_owners_release_after_the_node_connection_was_replaced() {
    use dlock::backend::{FullKey, TryAcquire};
    use dlock_tests::MARGIN;

    let call_timeout = Duration::from_millis(300);
    let name = "late-cluster";
    let key = FullKey::new("", name);
    let BehindProxy { cluster, primary, proxy, mut at_primary, backend } =
        primary_behind_proxy(name, call_timeout).await;
    // A key of another shard, whose (empty) slot moves to a third primary below.
    let elsewhere = (0..)
        .map(|i| format!("elsewhere-{i}"))
        .find(|other| cluster.primary_for_key(other) != primary)
        .expect("a key on another shard");
    let (from, moved_slot) = (cluster.primary_for_key(&elsewhere), cluster.key_slot(&elsewhere));
    let to = cluster
        .nodes()
        .into_iter()
        .find(|node| ![primary, from].contains(&node.port) && matches!(node.role, NodeRole::Primary))
        .expect("a third primary")
        .port;

    let ttl = Duration::from_secs(30);
    // Makes the node's connection, and loads the scripts: each later call is one EVALSHA.
    assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
    assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    let before = evalsha_calls(&mut at_primary).await;
    let accepted = proxy.accepted();

    proxy.hold();
    let held_up = backend.try_acquire(&key, "owner", ttl).await;
    assert!(
        matches!(&held_up, Err(err) if err.kind() == dlock::backend::BackendErrorKind::Timeout),
        "the held-up acquisition ended with {held_up:?}, not a call timeout"
    );

    // The slot of `elsewhere` moves (it holds no key): the next call there is answered `MOVED`,
    // and the cluster connection refreshes its slots, checking every node's connection.
    let slot = moved_slot.to_string();
    let mut at_to = inspector(&format!("redis://127.0.0.1:{to}")).await;
    let mut at_from = inspector(&format!("redis://127.0.0.1:{from}")).await;
    let to_id: String = redis_cmd(&mut at_to, &["CLUSTER", "MYID"]).await;
    let _: () = redis_cmd(&mut at_to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await;
    let _: () = redis_cmd(&mut at_from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await;
    let _: String = redis_cmd(&mut at_to, &["CLUSTER", "BUMPEPOCH"]).await;
    let other = FullKey::new("", &elsewhere);
    let _ = backend.try_acquire(&other, "mover", ttl).await;
    poll_until(Duration::from_secs(10), "the key's node connection replaced", || {
        let proxy = &proxy;
        async move { proxy.accepted() > accepted }
    })
    .await;

    // The owner releases: behind its unanswered acquisition, and then as usual.
    let released = Instant::now();
    let release = backend.release(&key, "owner").await.expect("the owner's release");
    assert!(!release.was_held, "the held-up acquisition has not run");
    assert!(evalsha_calls(&mut at_primary).await >= before + 2, "the releases ran first");
    let ran = evalsha_calls(&mut at_primary).await;

    proxy.deliver_held();
    poll_until(MARGIN, "the held-up acquisition runs", || {
        let mut conn = at_primary.clone();
        async move { evalsha_calls(&mut conn).await > ran }
    })
    .await;
    let held_up_for = released.elapsed();
    let bound = held_up_for * 2 + call_timeout * 2 + MARGIN;
    let taken = tokio::time::timeout(bound, async {
        loop {
            if let Ok(TryAcquire::Acquired { .. }) = backend.try_acquire(&key, "next", ttl).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if taken.is_err() {
        let value: Option<String> = redis_cmd(&mut at_primary, &["GET", name]).await;
        let pttl: i64 = redis_cmd(&mut at_primary, &["PTTL", name]).await;
        panic!(
            "the key stayed held {bound:?} after its owner released it (the late acquisition ran {held_up_for:?} after the release): value {value:?}, {pttl} ms left"
        );
    }
    eprintln!("the key was free again {:?} after its owner's release", released.elapsed());
    assert!(backend.release(&key, "next").await.expect("release").was_held);
}

/// Without a topology change, an acquisition held up on its way to its primary that times out
/// leaves the node's connection in place (a timed-out request alone does not make the cluster
/// connection replace a node's): its owner's release, sent behind it there, is held up and
/// times out too, and runs after it once the held bytes arrive. The key is free as soon as they
/// have run, not at the releases sent again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_leaves_its_node_connection_and_the_release_runs_behind_it() {
    use dlock::backend::{BackendErrorKind, FullKey, TryAcquire};
    use dlock_tests::MARGIN;

    let call_timeout = Duration::from_millis(300);
    let name = "late-cluster-kept";
    let key = FullKey::new("", name);
    let BehindProxy { cluster: _cluster, proxy, mut at_primary, backend, .. } =
        primary_behind_proxy(name, call_timeout).await;
    let ttl = Duration::from_secs(30);
    // Makes the node's connection, and loads the scripts: each later call is one EVALSHA.
    assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
    assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    let before = evalsha_calls(&mut at_primary).await;
    let accepted = proxy.accepted();

    proxy.hold();
    let held_up = backend.try_acquire(&key, "owner", ttl).await;
    assert!(
        matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
        "the held-up acquisition ended with {held_up:?}, not a call timeout"
    );
    let release = backend.release(&key, "owner").await;
    assert!(
        matches!(&release, Err(err) if err.kind() == BackendErrorKind::Timeout),
        "the release behind the held-up acquisition ended with {release:?}, not a call timeout"
    );
    assert_eq!(proxy.accepted(), accepted, "two timed-out calls replaced the node's connection");
    assert_eq!(evalsha_calls(&mut at_primary).await, before, "nothing has run yet");

    proxy.deliver_held();
    poll_until(MARGIN, "the held-up acquisition, and the releases behind it, run", || {
        let mut conn = at_primary.clone();
        async move {
            let exists: bool = redis_cmd(&mut conn, &["EXISTS", name]).await;
            evalsha_calls(&mut conn).await >= before + 2 && !exists
        }
    })
    .await;
    assert!(matches!(backend.try_acquire(&key, "next", ttl).await, Ok(TryAcquire::Acquired { .. })));
    assert!(backend.release(&key, "next").await.expect("release").was_held);
}
