//! The runtime against a Sentinel-managed primary.
//!
//! - The whole conformance suite (`conformance/`) on one group (a primary, a replica, three
//!   sentinels) that this binary starts for all of its tests, each test in a key namespace of
//!   its own.
//! - Failovers, each test on a group of its own ([`SentinelGroup`]): `SENTINEL FAILOVER` and
//!   `kill -9` of the primary under load (nothing granted twice, tokens keep increasing, locks
//!   usable again within the failover time + 1 s), and a lease the new primary does not have,
//!   reported lost at once; calls failing by the thousand ask the sentinels again at most
//!   once per 200 ms; the `+switch-master` listener backs off while the sentinels fail and
//!   listens again once one is back.

use dlock_tests::RedisSentinelStore;
use dlock_tests::shared_topology::shared_sentinel_group;

async fn sentinel_store(test_name: &str) -> RedisSentinelStore {
    let (sentinels, master) = shared_sentinel_group();
    RedisSentinelStore::on(&sentinels, &master, test_name, std::time::Duration::from_secs(2)).await
}

dlock_tests::conformance_suite!(sentinel_store);

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlock::{LockService, RedisSentinelBackend};
use dlock_tests::support::contention::{assert_replicated_lock_kept, contend_through};
use dlock_tests::{RedisServer, SentinelGroup, free_port, inspector, poll_until, redis_cmd, subscribers_on};
use tokio::task::block_in_place;

async fn backend_of(group: &SentinelGroup, replicated: bool) -> RedisSentinelBackend {
    let mut builder = RedisSentinelBackend::builder(group.sentinel_urls(), group.master_name())
        .call_timeout(Duration::from_secs(1));
    if replicated {
        builder = builder.replicas_acknowledge(1, Duration::from_millis(500));
    }
    builder.connect().await.unwrap_or_else(|err| panic!("connecting to the test's sentinel group: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_moves_the_backend_and_keeps_replicated_locks() {
    let group = block_in_place(SentinelGroup::start);
    let backend = backend_of(&group, true).await;
    let before = backend.primary_address();
    let service = LockService::builder(backend.clone()).key_prefix("failover:").build();
    let other_backend = backend_of(&group, false).await;
    let other = LockService::builder(other_backend.clone()).key_prefix("failover:").build();
    let held = service.lock("acct").ttl(Duration::from_secs(6)).await.expect("take");
    let old_primary = group.primary_port();
    // A waiter subscribed on the old primary before the failover...
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            other.lock("acct").wait(Duration::from_secs(30)).ttl(Duration::from_secs(30)).await
        })
    };
    let channel = other_backend.notice_channel("failover:acct");
    poll_until(Duration::from_secs(5), "the waiter subscribed on the primary", || {
        let channel = channel.clone();
        async move { subscribers_on(old_primary, &channel, false) == 1 }
    })
    .await;
    let started = Instant::now();
    let new_primary = block_in_place(|| group.failover());
    eprintln!("SENTINEL FAILOVER to {new_primary} took {:?}", started.elapsed());
    poll_until(Duration::from_secs(5), "the backend moving to the new primary", || {
        let backend = backend.clone();
        async move { backend.failovers_followed() >= 1 }
    })
    .await;
    assert_ne!(backend.primary_address(), before);
    assert!(backend.primary_address().ends_with(&format!(":{new_primary}")), "{}", backend.primary_address());
    // ...is subscribed again on the new one.
    poll_until(Duration::from_secs(10), "the waiter's subscription moving to the new primary", || {
        let channel = channel.clone();
        async move { subscribers_on(new_primary, &channel, false) == 1 }
    })
    .await;
    // Past the ttl: only renewals on the new primary keep the lock.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !held.is_lost(),
        "the replicated lock survived the failover and its renewals reached the new primary"
    );
    assert!(!waiter.is_finished(), "the waiter still waits: the lock is still held");
    let token = held.fencing_token();
    held.release().await.expect("release on the new primary");
    let next = waiter.await.expect("waiter task").expect("the waiter takes the key on the new primary");
    assert!(next.fencing_token() > token, "tokens increase across the failover");
    next.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_new_primary_lacks_is_reported_lost_at_once() {
    let group = block_in_place(SentinelGroup::start);
    let backend = backend_of(&group, false).await;
    let service = LockService::builder(backend.clone()).key_prefix("lacks:").build();
    // A ttl of 60 s: the next scheduled renewal is 20 s away.
    let held = service.lock("acct").ttl(Duration::from_secs(60)).await.expect("take");
    // The replica loses the lock (as a replica that had not received it would).
    dlock_tests::replica_forgets(&group.server_url(group.replica_port()), "lacks:acct", false).await;
    block_in_place(|| group.failover());
    let failed_over = Instant::now();
    let took = poll_until(Duration::from_secs(10), "the lease reported lost after the failover", || {
        let lost = held.is_lost();
        async move { lost }
    })
    .await;
    eprintln!(
        "a lease the new primary lacks: reported lost {took:?} after the failover (its next scheduled renewal was ~20 s away)"
    );
    assert!(failed_over.elapsed() < Duration::from_secs(15));
    assert!(matches!(held.release().await, Err(dlock::Error::Lost { .. }) | Ok(_)));
}

/// A primary the sentinels name again at the address the backend uses, but with another
/// history, counts as a failover: after a failover and a failover back (A→B→A) A was B's
/// replica in between and took B's data, which may lack a lease held on A. Once a sentinel
/// announces the switch every lease is renewed at once, and one the primary lacks is reported
/// lost. Before the fix only the address was compared: nothing moved, and the lost lease was
/// found at its next renewal, 20 s later here (found by review).
///
/// A sentinel refuses `PUBLISH` on `+switch-master` ("Only HELLO messages are accepted"), so
/// the backend listens to a plain server, first in its list, that relays the announcement (it
/// names no primary: the three sentinels decide where the primary is). The primary's history
/// changes as a promotion changes it: after the lease is removed there, `REPLICAOF` a server
/// that is not there and `REPLICAOF NO ONE` give it a new replication ID, at the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_back_to_the_primary_in_use_renews_every_lease_at_once() {
    let group = block_in_place(SentinelGroup::start);
    let relay = block_in_place(RedisServer::start);
    let sentinels: Vec<String> = std::iter::once(relay.url()).chain(group.sentinel_urls()).collect();
    let backend = RedisSentinelBackend::builder(sentinels, group.master_name())
        .call_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connecting with the relay first");
    let primary = group.primary_port();
    assert!(backend.primary_address().ends_with(&format!(":{primary}")), "on {}", backend.primary_address());
    let service = LockService::builder(backend.clone()).key_prefix("back:").build();
    // A ttl of 60 s: the next scheduled renewal is 20 s away.
    let held = service.lock("acct").ttl(Duration::from_secs(60)).await.expect("take");
    let relay_port = relay.port();
    poll_until(
        Duration::from_secs(5),
        "the backend listening for +switch-master on the relay",
        || async move { subscribers_on(relay_port, "+switch-master", false) == 1 },
    )
    .await;

    // A took B's data, which lacks the lease, and became a primary again.
    let mut on_primary = inspector(&group.server_url(primary)).await;
    let _: i64 = redis_cmd(&mut on_primary, &["DEL", "back:acct"]).await;
    let nowhere = free_port().to_string();
    let _: () = redis_cmd(&mut on_primary, &["REPLICAOF", "127.0.0.1", &nowhere]).await;
    let _: () = redis_cmd(&mut on_primary, &["REPLICAOF", "NO", "ONE"]).await;
    let mut on_relay = inspector(&relay.url()).await;
    let payload = format!("{} 127.0.0.1 {primary} 127.0.0.1 {primary}", group.master_name());
    let heard: i64 = redis_cmd(&mut on_relay, &["PUBLISH", "+switch-master", &payload]).await;
    assert_eq!(heard, 1, "the backend hears the announcement");

    let took =
        poll_until(Duration::from_secs(2), "the lease reported lost after the announced switch", || {
            let lost = held.is_lost();
            async move { lost }
        })
        .await;
    eprintln!(
        "a lease the primary lost in an A→B→A: reported lost {took:?} after the announcement (its next renewal was ~20 s away)"
    );
    assert_eq!(backend.failovers_followed(), 1, "the primary with another history counts as a failover");
    assert!(backend.primary_address().ends_with(&format!(":{primary}")), "on {}", backend.primary_address());
    assert!(matches!(held.release().await, Err(dlock::Error::Lost { .. }) | Ok(_)));
}

/// `kill -9` of the primary under load, as for the cluster: a replicated lock held across it
/// stays its holder's; the loaded key is usable again soon after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_without_two_holders_or_a_token_going_back() {
    let group = Arc::new(Mutex::new(block_in_place(SentinelGroup::start)));
    let (sentinels, master) = {
        let group = group.lock().unwrap();
        (group.sentinel_urls(), group.master_name().to_owned())
    };
    let connect = |replicated: bool| {
        let (sentinels, master) = (sentinels.clone(), master.clone());
        async move {
            let mut builder =
                RedisSentinelBackend::builder(sentinels, &master).call_timeout(Duration::from_secs(1));
            if replicated {
                builder = builder.replicas_acknowledge(1, Duration::from_millis(500));
            }
            LockService::builder(builder.connect().await.expect("connect")).key_prefix("kill:").build()
        }
    };
    let holder = connect(true).await;
    let held = holder.lock("held").ttl(Duration::from_secs(5)).await.expect("the replicated holder");
    let clients = vec![connect(false).await, connect(false).await];
    let other = clients[0].clone();
    let faulted = Arc::clone(&group);
    let seen = contend_through(clients, "acct", move || {
        let mut group = faulted.lock().unwrap();
        let old = group.kill_primary();
        let new = group.wait_for_new_primary(old, Duration::from_secs(30));
        eprintln!("primary {old} killed; the sentinels promoted {new}");
    })
    .await;
    eprintln!("kill -9 of the primary: {seen:?}");
    seen.assert_usable_after_the_failover();
    assert_replicated_lock_kept(held, &other, "held").await;
}

/// Calls that fail at once (the primary is gone; its port refuses connections) make the
/// backend ask the sentinels again, but at most once per 200 ms however many calls fail: a
/// flood of failing calls is not passed on to the sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_calls_ask_the_sentinels_at_most_every_200_ms() {
    const WINDOW: Duration = Duration::from_secs(2);
    // The sentinels would wait a minute before failing over: none happens during the test.
    let mut group = block_in_place(|| SentinelGroup::start_with(Duration::from_secs(60)));
    let backend = RedisSentinelBackend::builder(group.sentinel_urls(), group.master_name())
        .call_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to the test's sentinel group: {err}"));
    let service = LockService::builder(backend).key_prefix("spacing:").build();
    let primary = group.primary_port();
    block_in_place(|| group.kill(primary));
    let connections_before = sentinel_connections(&group);
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                while started.elapsed() < WINDOW {
                    match service.lock(format!("k{task}")).wait(Duration::ZERO).await {
                        Ok(guard) => panic!("locked {} with the primary killed", guard.key()),
                        Err(_) => failed += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.expect("a locking task panicked");
    }
    let elapsed = started.elapsed();
    let sentinels = group.sentinel_urls().len() as u64;
    // Less the connection each count itself made to each sentinel.
    let asks = sentinel_connections(&group) - connections_before - sentinels;
    // Each resolution asks every sentinel once.
    let resolutions = asks / sentinels;
    let bound = u64::try_from(elapsed.as_millis() / 200).unwrap_or(u64::MAX) + 2;
    eprintln!(
        "{failed} failed calls in {elapsed:?} asked the sentinels {asks} times ({resolutions} resolutions)"
    );
    assert!(failed > 100, "the calls failed at once, many times ({failed})");
    assert!(resolutions >= 2, "failing calls make the backend ask the sentinels again ({resolutions})");
    assert!(resolutions <= bound, "{resolutions} resolutions in {elapsed:?}: more than one per 200 ms");
}

/// How many connections the group's sentinels have accepted, in all. The backend asks each
/// sentinel where the primary is on a connection of its own, so each resolution adds one per
/// sentinel (a sentinel's `INFO` has no command statistics); the sentinels' links to each
/// other are made once, and this count's own connections are subtracted by the caller.
fn sentinel_connections(group: &SentinelGroup) -> u64 {
    group
        .sentinel_urls()
        .iter()
        .map(|url| {
            let client = redis::Client::open(url.as_str()).expect("client");
            let mut conn = client.get_connection().expect("connection to a sentinel");
            let stats: String = redis::cmd("INFO").arg("stats").query(&mut conn).expect("INFO");
            stats
                .lines()
                .find_map(|line| line.strip_prefix("total_connections_received:"))
                .and_then(|count| count.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no total_connections_received in a sentinel's INFO:\n{stats}"))
        })
        .sum()
}

/// The backend listens on one sentinel at a time for `+switch-master`. While the sentinels
/// fail, it waits longer between attempts (100 ms, doubling, at most 2 s) instead of
/// reconnecting in a loop; once a sentinel is back, it listens there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_listener_backs_off_while_the_sentinels_fail_and_comes_back() {
    let mut group = block_in_place(SentinelGroup::start);
    // A second "sentinel" that hangs up on every connection, counting them.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fake_url = format!("redis://{}", fake.local_addr().expect("address"));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let attempts = Arc::clone(&attempts);
        std::thread::spawn(move || {
            for stream in fake.incoming() {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
    }
    let sentinel = group.sentinel_urls()[0].clone();
    let sentinel_port: u16 = sentinel.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    let backend = RedisSentinelBackend::builder([sentinel, fake_url], group.master_name())
        .call_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect through the real sentinel");
    // The listener starts on the first sentinel: the real one.
    let listening = || async move { switch_listeners(sentinel_port) == 1 };
    poll_until(Duration::from_secs(5), "the listener subscribed on the real sentinel", listening).await;
    block_in_place(|| group.kill(sentinel_port));
    // It notices within its 1 s health check and the 1 s call timeout; then it alternates
    // between the dead sentinel (refused) and the fake (hung up on), pausing after each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = attempts.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = attempts.load(std::sync::atomic::Ordering::SeqCst) - before;
    eprintln!("the fake sentinel saw {during} connections in 6 s while both sentinels failed");
    // Backing off to 2 s, with every other attempt on the fake: about 2 in 6 s; without the
    // back-off (100 ms each) 30, without a pause thousands.
    assert!((1..=6).contains(&during), "{during} connections to the fake sentinel in 6 s");
    block_in_place(|| group.restart(sentinel_port));
    let back =
        poll_until(Duration::from_secs(10), "the listener back on the restarted sentinel", listening).await;
    eprintln!("listening on the restarted sentinel {back:?} after it was back");
    drop(backend);
}

/// How many clients of the sentinel on `port` are subscribed to something (`CLIENT LIST`'s
/// `sub=`): the backend's listener is the only subscriber of a test's own group.
fn switch_listeners(port: u16) -> usize {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
    let Ok(mut conn) = client.get_connection() else { return 0 };
    let Ok(list) = redis::cmd("CLIENT").arg("LIST").query::<String>(&mut conn) else { return 0 };
    list.lines()
        .filter(|line| line.split(' ').any(|field| field.starts_with("sub=") && field != "sub=0"))
        .count()
}

/// A backend follows a failover that neither its sentinel nor its primary tells it of. The
/// sentinel it listens on never hears of the switch: it monitors nothing, as one cut off from
/// the others with the old primary would. The old primary, which the sentinels cannot make a
/// replica, goes on answering as a primary. The backend asks the sentinels again every few
/// seconds and moves where the majority says, so it stops granting, on the old primary, a
/// lock that a backend connected after the failover holds on the new one.
///
/// Before the fix it stayed on the old primary for as long as that lasted: two holders of one
/// lock, with no end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_no_sentinel_announced_is_followed_by_asking_again() {
    let mut group = block_in_place(SentinelGroup::start);
    let unaware = block_in_place(|| group.start_unaware_sentinel());
    let old = group.primary_port();
    block_in_place(|| group.refuse_demotion(old));
    // The unaware sentinel first: the backend listens to it.
    let sentinels: Vec<String> = std::iter::once(unaware).chain(group.sentinel_urls()).collect();
    let early = RedisSentinelBackend::builder(sentinels, group.master_name())
        .call_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connecting with the unaware sentinel first");
    assert!(early.primary_address().ends_with(&format!(":{old}")), "on {}", early.primary_address());

    let new = block_in_place(|| group.failover_leaving_old_primary());
    let late = backend_of(&group, false).await;
    assert!(late.primary_address().ends_with(&format!(":{new}")), "on {}", late.primary_address());
    let late = LockService::builder(late).key_prefix("unheard:").build();
    let held = late.lock("acct").ttl(Duration::from_secs(60)).await.expect("the key, on the new primary");

    let failed_over = Instant::now();
    poll_until(Duration::from_secs(15), "the early backend moving to the new primary", || {
        let early = early.clone();
        async move { early.primary_address().ends_with(&format!(":{new}")) }
    })
    .await;
    eprintln!("the early backend moved {:?} after the failover", failed_over.elapsed());
    let early = LockService::builder(early).key_prefix("unheard:").build();
    assert!(
        matches!(early.lock("acct").await, Err(dlock::Error::Timeout { .. })),
        "the early backend sees the key held on the new primary"
    );
    held.release().await.expect("release");
}

/// Leases taken without renewal (`renew(false)`) at a failover: one the new primary has is
/// still held, with its end unchanged; one it lacks is reported lost at once, not at its ttl.
/// Before, the failover's re-check reported every lease without renewal `Expired` at once,
/// 59 s before its end, whether the new primary had it or not (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_checks_leases_taken_without_renewal_without_ending_them() {
    let group = block_in_place(SentinelGroup::start);
    let backend = backend_of(&group, false).await;
    let service = LockService::builder(backend.clone()).key_prefix("norenew:").build();
    let ttl = Duration::from_secs(60);
    let taken = Instant::now();
    let kept = service.lock("kept").ttl(ttl).renew(false).await.expect("take kept");
    let gone = service.lock("gone").ttl(ttl).renew(false).await.expect("take gone");
    // Replicated in order: once the replica has `gone` it has `kept` too.
    dlock_tests::replica_forgets(&group.server_url(group.replica_port()), "norenew:gone", false).await;
    block_in_place(|| group.failover());
    let reason = tokio::time::timeout(Duration::from_secs(10), gone.lost()).await.expect(
        "a lease without renewal that the new primary lacks is reported lost soon after the failover",
    );
    assert_eq!(reason, dlock::LostReason::Refused);
    assert!(
        !kept.is_lost(),
        "a lease without renewal that the new primary holds was reported lost at the failover"
    );
    let mut conn = dlock_tests::inspector(&group.server_url(group.primary_port())).await;
    let left: u64 = dlock_tests::redis_cmd(&mut conn, &["PTTL", "norenew:kept"]).await;
    // At most what was left of the ttl taken before the request (and a little for the check's
    // trip): the check did not renew it.
    let most = ttl.saturating_sub(taken.elapsed()) + Duration::from_millis(100);
    assert!(
        Duration::from_millis(left) <= most,
        "the check extended the lease: {left} ms left, {most:?} at most, {:?} after it was taken",
        taken.elapsed()
    );
    assert!(kept.release().await.expect("release"), "still held, on the new primary");
}

/// A call timeout meant as "no bound" (`Duration::MAX`) is taken or refused, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_call_timeout_does_not_panic() {
    // Nothing listens on port 1: the connection is refused at once.
    let connecting = tokio::spawn(async {
        RedisSentinelBackend::builder(["redis://127.0.0.1:1"], "nobody")
            .call_timeout(Duration::MAX)
            .connect()
            .await
            .map(drop)
    });
    let outcome = connecting.await;
    assert!(outcome.is_ok(), "connect panicked: {outcome:?}");
    assert!(outcome.expect("no panic").is_err(), "no sentinel answers");
    // And on a group that answers, it locks.
    let (sentinels, master) = shared_sentinel_group();
    let locking = tokio::spawn(async move {
        let backend = RedisSentinelBackend::builder(sentinels, &master)
            .call_timeout(Duration::MAX)
            .connect()
            .await
            .expect("connect with an enormous call timeout");
        let service = LockService::builder(backend)
            .key_prefix(format!("huge-timeout-{:08x}:", rand::random::<u32>()))
            .build();
        let guard = service.lock("k").await.expect("lock");
        guard.release().await.expect("release");
    });
    let outcome = locking.await;
    assert!(outcome.is_ok(), "locking panicked: {outcome:?}");
}

/// Connecting with a master name the sentinels do not monitor, to sentinels none of which
/// can be reached, or to a Redis server given as a sentinel, says so: not "it cannot serve
/// right now; retry shortly", which no retry would mend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_tell_an_unknown_master_and_unreachable_sentinels_from_a_failover() {
    let (sentinels, _) = shared_sentinel_group();
    let unknown = RedisSentinelBackend::builder(sentinels, "no-such-master").connect().await;
    match unknown {
        Err(dlock::Error::InvalidInput { what, reason }) => {
            assert_eq!(what, "Sentinel master name");
            assert!(reason.contains("no-such-master"), "{reason}");
        }
        other => panic!("an unknown master name: {other:?}"),
    }
    // Nothing listens on ports 1 and 2.
    let unreachable =
        RedisSentinelBackend::builder(["redis://127.0.0.1:1", "redis://127.0.0.1:2"], "m").connect().await;
    match unreachable {
        Err(dlock::Error::Backend { source, .. }) => {
            assert_eq!(source.kind(), dlock::backend::BackendErrorKind::Connection, "{source}");
        }
        other => panic!("no sentinel reachable: {other:?}"),
    }
    // The addresses of Redis servers where the sentinels' belong (the shared server is no
    // sentinel): a mistake in the URL, not a failover to wait out.
    let not_sentinels =
        RedisSentinelBackend::builder([dlock_tests::shared_redis_url()], "mymaster").connect().await;
    match not_sentinels {
        Err(dlock::Error::InvalidInput { what, reason }) => {
            assert_eq!(what, "Sentinel URL");
            assert!(reason.contains("not a sentinel") && reason.contains("26379"), "{reason}");
        }
        other => panic!("a Redis server given as a sentinel: {other:?}"),
    }
}

/// The other way round: a sentinel's address in a `redis://` URL connects (a sentinel answers
/// `PING`), and its refusal of the scripts says it is a sentinel and to use
/// `redis-sentinel://`, not only that it answered something unexpected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_url_naming_a_sentinel_says_to_use_redis_sentinel() {
    let (sentinels, _) = shared_sentinel_group();
    let backend = dlock::RedisBackend::connect(&sentinels[0]).await.expect("a sentinel answers PING");
    let service = LockService::builder(backend).key_prefix("single-url-sentinel:").build();
    let err = service.lock("k").wait(Duration::ZERO).await.expect_err("a sentinel runs no scripts");
    let dlock::Error::Backend { source, .. } = &err else { panic!("expected a backend error, got {err:?}") };
    let cause = source.to_string();
    assert!(cause.contains("sentinel") && cause.contains("redis-sentinel://"), "{cause}");
}
