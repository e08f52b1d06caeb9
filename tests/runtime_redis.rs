//! The runtime against real Redis.
//!
//! - The whole conformance suite (`conformance/`) on the machine's shared Redis
//!   ([`dlock_tests::shared_redis_url`]), each test in a key namespace of its own.
//! - Redis-only behaviour on the shared server: stored owner tokens, contention over a
//!   non-atomic counter, named registration.
//! - Failure behaviour, each test on a private `redis-server` it owns ([`RedisServer`]):
//!   server stopped / restarted / paused, bad URLs, wrong password, closed port, `SCRIPT FLUSH`,
//!   and two OS processes contending (this binary re-executed as a [`Worker`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dlock::backend::BackendErrorKind;
use dlock::{Error, LockService, LostReason, RedisBackend};
use dlock_tests::support::process::{say, worker_job};
use dlock_tests::{
    FaultyBackend, MARGIN, Op, RedisServer, RedisStore, Store, Worker, chain, connect_redis_with, free_port,
    inspector, poll_until, redis_cmd, shared_redis_url, unique_prefix,
};

async fn redis_store(test_name: &str) -> RedisStore {
    RedisStore::shared(test_name).await
}

dlock_tests::conformance_suite!(redis_store);

/// The call timeout of the failure tests: every Redis call must give up within it.
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

fn expect_backend_error(
    result: Result<impl std::fmt::Debug, Error>,
    what: &str,
) -> (Option<String>, BackendErrorKind, String) {
    match result {
        Err(err @ Error::Backend { .. }) => {
            let Error::Backend { key, backend, source } = &err else { unreachable!() };
            assert_eq!(*backend, "redis", "{what}: {err}");
            (key.clone(), source.kind(), chain(&err))
        }
        Err(err) => panic!("{what}: expected Error::Backend, got {err:?} ({err})"),
        Ok(value) => panic!("{what}: expected Error::Backend, got {value:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Redis-only behaviour on the shared server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_token_is_random_hex_and_lease_is_the_ttl() {
    let store = redis_store("owner_token").await;
    let service = store.service().await;
    let ttl = Duration::from_secs(5);
    let guard = service.lock("tok").ttl(ttl).await.expect("acquire");
    let value = store.stored_value("tok").await.expect("the lock key exists under the prefixed name");
    assert!(value.len() >= 32, "owner token `{value}` has at least 128 bits in hex");
    assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "owner token `{value}` is hex");

    let mut conn = store.conn();
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", &store.full_key("tok")]).await;
    assert!(pttl > 0 && pttl <= 5000, "PTTL {pttl} ms is the ttl of 5 s");
    assert!(guard.release().await.expect("release"));

    let guard = service.lock("tok").await.expect("acquire again");
    let second = store.stored_value("tok").await.expect("held");
    assert_ne!(second, value, "each acquisition has its own owner token");
    assert!(guard.release().await.expect("release"));
    store.cleanup().await;
}

/// 8 tasks (2 in each of 4 services, i.e. 4 Redis connections) × 50 increments of a counter
/// that is read, yielded on, and written back: only exclusion makes the total exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_increment_a_non_atomic_counter_exactly() {
    let store = redis_store("counter").await;
    let counter = store.full_key("counter-value");
    let conn = store.conn();
    let services =
        [store.service().await, store.service().await, store.service().await, store.service().await];
    let inside = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..8 {
        let service = services[task % 4].clone();
        let (mut conn, counter, inside) = (conn.clone(), counter.clone(), Arc::clone(&inside));
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let guard =
                    service.lock("counter").ttl(Duration::from_secs(5)).wait(Duration::from_secs(30)).await?;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                let value: Option<u64> = redis_cmd(&mut conn, &["GET", &counter]).await;
                tokio::task::yield_now().await;
                let next = (value.unwrap_or(0) + 1).to_string();
                let () = redis_cmd(&mut conn, &["SET", &counter, &next]).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(guard.release().await?, "still ours at release");
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("task did not panic").expect("task acquired and released");
    }
    let mut conn = conn.clone();
    let total: u64 = redis_cmd(&mut conn, &["GET", &counter]).await;
    assert_eq!(total, 400, "no lost updates");
    eprintln!("400 increments in {:?}", started.elapsed());
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_redis_service_is_used_by_lock_with() {
    let store = redis_store("named").await;
    let name = format!("redis-{}", rand::random::<u32>());
    dlock::register(name.as_str(), store.service().await).expect("register once");
    let guard = dlock::lock_with(&name, "n").await.expect("named service works");
    assert!(store.is_held("n").await, "the named service's prefix and server were used");
    assert!(guard.release().await.expect("release"));
    let err = dlock::register(name.as_str(), store.service().await).expect_err("second registration");
    assert!(matches!(err, Error::AlreadyRegistered { service: Some(_) }), "{err:?}");
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Failures, each on a private redis-server.

/// `held` (taken at `held_at` with `ttl`) cannot be renewed while Redis is away: it must be
/// reported lost, unconfirmed, before its lease could have ended in Redis.
async fn assert_lost_before_its_ttl(held: &dlock::LockGuard, held_at: Instant, ttl: Duration) {
    let reason = tokio::time::timeout(ttl + MARGIN, held.lost()).await.expect("the loss is reported");
    assert_eq!(reason, LostReason::Unconfirmed);
    assert!(
        held_at.elapsed() < ttl,
        "reported lost after {:?}, at or after the ttl {ttl:?}",
        held_at.elapsed()
    );
}

/// Wait until `service` takes and releases `key` again (Redis is back); how long that took.
async fn works_again(service: &LockService, key: &str, what: &str) -> Duration {
    poll_until(Duration::from_secs(5), what, || {
        let service = service.clone();
        async move {
            match service.lock(key).wait(Duration::ZERO).await {
                Ok(guard) => guard.release().await.expect("release once Redis is back"),
                Err(err) => {
                    eprintln!("not yet: {err}");
                    false
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_fails_within_call_timeout_and_same_service_recovers_after_restart() {
    let mut server = RedisServer::start();
    let service = LockService::new(connect_redis_with(&server.url(), CALL_TIMEOUT).await);
    // Long enough that dlock's safety margin (52 ms) dwarfs how late this test may observe
    // the loss on a busy machine.
    let ttl = Duration::from_secs(5);
    let held = service.lock("held").ttl(ttl).await.expect("acquire while Redis runs");
    let held_at = Instant::now();

    server.stop();
    let started = Instant::now();
    let result = service.lock("k").wait(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let (key, kind, message) = expect_backend_error(result, "lock while Redis is down");
    assert!(
        elapsed < CALL_TIMEOUT + MARGIN,
        "gave up after {elapsed:?}; the call timeout is {CALL_TIMEOUT:?}"
    );
    assert!(matches!(kind, BackendErrorKind::Connection | BackendErrorKind::Timeout), "{kind:?}: {message}");
    assert_eq!(key.as_deref(), Some("k"));
    assert!(message.contains("`k`"), "the message names the key: {message}");

    // The guard taken before the outage cannot be renewed: it is reported lost before its
    // lease could have ended in Redis.
    assert_lost_before_its_ttl(&held, held_at, ttl).await;
    drop(held);

    server.restart();
    let took = works_again(&service, "k", "the same service works again after the restart").await;
    eprintln!("recovered {took:?} after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_fails_within_call_timeout_and_recovers_on_resume() {
    let mut server = RedisServer::start();
    let service = LockService::new(connect_redis_with(&server.url(), CALL_TIMEOUT).await);
    // Long enough that dlock's safety margin (52 ms) dwarfs how late this test may observe
    // the loss on a busy machine.
    let ttl = Duration::from_secs(5);
    let held = service.lock("held").ttl(ttl).await.expect("acquire while Redis runs");
    let held_at = Instant::now();

    server.pause();
    let started = Instant::now();
    let result = service.lock("k").wait(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let (_, kind, message) = expect_backend_error(result, "lock while Redis is frozen");
    assert_eq!(kind, BackendErrorKind::Timeout, "{message}");
    assert!(elapsed >= CALL_TIMEOUT - Duration::from_millis(20), "gave up after {elapsed:?}");
    assert!(
        elapsed < CALL_TIMEOUT + MARGIN,
        "gave up after {elapsed:?}; the call timeout is {CALL_TIMEOUT:?}"
    );

    assert_lost_before_its_ttl(&held, held_at, ttl).await;

    server.resume();
    // A key this service never tried: the same service and connection work again.
    works_again(&service, "after", "the service works again after resume").await;
    drop(held);
}

/// An acquire whose answer timed out may still run in Redis later (here: when the frozen
/// server thaws). The caller was told `Error::Backend`, so nobody owns that lock: dlock's
/// owner-checked cleanup release must free it, not leave the key blocked for the whole ttl.
///
/// The cleanup is a single release bounded by the call timeout. Here it is lost because the
/// release script is not yet in Redis's script cache (no release has run since the server
/// started, as after any Redis restart): its `EVALSHA` is answered `NOSCRIPT` only after the
/// thaw, when the client has already given up and so never sends the `EVAL` fallback. A
/// network partition longer than the call timeout loses it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_that_timed_out_leaves_no_ownerless_lock() {
    let mut server = RedisServer::start();
    let service = LockService::new(connect_redis_with(&server.url(), CALL_TIMEOUT).await);
    let ttl = Duration::from_secs(10);
    // Loads the acquire script into the server's cache; no release has run yet.
    let warm = service.lock("warm").ttl(ttl).await.expect("acquire while Redis runs");

    server.pause();
    let result = service.lock("ghost").ttl(ttl).wait(Duration::ZERO).await;
    let (_, kind, message) = expect_backend_error(result, "lock while Redis is frozen");
    assert_eq!(kind, BackendErrorKind::Timeout, "{message}");
    // The outage outlasts the call timeout, so the cleanup attempt times out too.
    tokio::time::sleep(CALL_TIMEOUT * 2).await;
    server.resume();

    let mut conn = inspector(&server.url()).await;
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "ghost"]).await;
    eprintln!("PTTL of `ghost` after resume: {pttl} ms (-2: absent)");
    poll_until(Duration::from_secs(3), "the ownerless lock left by the timed-out acquire is freed", || {
        let mut conn = conn.clone();
        async move { !redis_cmd::<bool>(&mut conn, &["EXISTS", "ghost"]).await }
    })
    .await;
    assert!(warm.release().await.expect("release"));
}

/// Release notices are an optimisation: where Redis refuses `SUBSCRIBE` (an ACL, a proxy
/// without pub/sub), locks must still work and every wait must still end at `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_honoured_when_release_notices_are_unavailable() {
    let server = RedisServer::start_with(&[
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-subscribe",
        "-psubscribe",
        "-ssubscribe",
    ]);
    let call_timeout = Duration::from_secs(1);
    let holder = LockService::new(connect_redis_with(&server.url(), call_timeout).await);
    let waiter = LockService::new(connect_redis_with(&server.url(), call_timeout).await);
    let guard = holder.lock("k").ttl(Duration::from_secs(10)).await.expect("acquire without pub/sub");

    let wait = Duration::from_millis(100);
    let started = Instant::now();
    let result = waiter.lock("k").wait(wait).await;
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(
        elapsed < wait + MARGIN,
        "wait({wait:?}) gave up only after {elapsed:?} (call timeout {call_timeout:?})"
    );

    // Hand-over still works, on the waiter's timer.
    let handover = tokio::spawn(async move { waiter.lock("k").wait(Duration::from_secs(5)).await });
    assert!(guard.release().await.expect("release without pub/sub"));
    let next = handover.await.expect("waiter did not panic").expect("the waiter gets in after the release");
    assert!(next.release().await.expect("release"));
}

#[tokio::test]
async fn invalid_urls_are_invalid_input_that_shows_a_valid_url() {
    for url in ["http://x", "redis://", "not a url", "redis://127.0.0.1:notaport", "", "redis://0.0.0.0:6379"]
    {
        let started = Instant::now();
        match RedisBackend::connect(url).await {
            Err(err @ Error::InvalidInput { what, .. }) => {
                assert_eq!(what, "Redis URL", "{url:?}: {err}");
                let message = err.to_string();
                assert!(
                    message.contains("redis://"),
                    "{url:?}: the message shows what a valid URL looks like: {message}"
                );
            }
            Err(err) => panic!("{url:?}: expected Error::InvalidInput, got {err:?} ({err})"),
            Ok(backend) => panic!("{url:?}: accepted: {backend:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{url:?}: rejected only after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn zero_call_timeout_is_invalid_input() {
    let err = RedisBackend::builder(shared_redis_url())
        .call_timeout(Duration::ZERO)
        .connect()
        .await
        .expect_err("a zero call timeout");
    assert!(matches!(err, Error::InvalidInput { what: "call timeout", .. }), "{err:?}");
}

/// A call timeout meant as "no bound" (`Duration::MAX`) connects and locks. Before, the TCP
/// settings doubled it, which panicked (found by review; the Sentinel backend has the same test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_call_timeout_connects_and_locks() {
    let locking = tokio::spawn(async {
        let backend = RedisBackend::builder(shared_redis_url())
            .call_timeout(Duration::MAX)
            .connect()
            .await
            .expect("connect with an enormous call timeout");
        let service = LockService::builder(backend).key_prefix(unique_prefix("huge-timeout")).build();
        let guard = service.lock("k").await.expect("lock");
        let waiter = service.lock("k").wait(Duration::from_millis(50)).await;
        assert!(matches!(waiter, Err(Error::Timeout { .. })), "{waiter:?}");
        assert!(guard.release().await.expect("release"));
    });
    let outcome = locking.await;
    assert!(outcome.is_ok(), "locking panicked: {outcome:?}");
}

/// A key handed over by a release is not taken on trust by a waiter whose backend wants
/// replicas to acknowledge every acquisition: the hand-off was the releasing process's write,
/// which no `WAIT` covered. The waiter asks again, and that acquisition waits for the replicas —
/// here there are none, so it fails with `NotReplicated` and lets the key go. Before, the waiter
/// took the key from the hand-off notice, with no replica acknowledging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_handed_over_is_acknowledged_by_the_replicas_too() {
    let primary = RedisServer::start();
    let url = primary.url();
    let conn = inspector(&url).await;
    let holder = LockService::new(connect_redis_with(&url, Duration::from_secs(2)).await);
    let held =
        holder.lock("acct").ttl(Duration::from_secs(30)).await.expect("the holder (no replicas asked for)");
    let replicated = RedisBackend::builder(url.clone())
        .call_timeout(Duration::from_secs(2))
        .replicas_acknowledge(1, Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let waiter = LockService::new(replicated);
    let call = tokio::spawn(async move {
        waiter.lock("acct").ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).await
    });
    let line = RedisBackend::line_key("acct");
    poll_until(Duration::from_secs(5), "the replicated waiter in line", || {
        let (mut conn, line) = (conn.clone(), line.clone());
        async move { redis_cmd::<i64>(&mut conn, &["HLEN", &line]).await == 1 }
    })
    .await;
    assert!(held.release().await.expect("release"), "the holder held the key");
    let (key, kind, message) =
        expect_backend_error(call.await.expect("join"), "a hand-off no replica acknowledged");
    assert_eq!(kind, BackendErrorKind::NotReplicated, "{message}");
    assert_eq!(key.as_deref(), Some("acct"));
    poll_until(Duration::from_secs(2), "the unacknowledged key let go", || {
        let mut conn = conn.clone();
        async move { !redis_cmd::<bool>(&mut conn, &["EXISTS", "acct"]).await }
    })
    .await;
}

/// `replicas_acknowledge` on a primary whose replicas do not acknowledge (here: it has none):
/// the acquisition fails with `NotReplicated` after the wait, naming the key, and the lock it
/// took on the primary alone is released, not left for its ttl. With a replica that keeps up
/// (it acknowledges writes), the same option takes the lock and the replica has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_too_few_replicas_acknowledge_fails_and_is_released() {
    let primary = RedisServer::start();
    let backend = RedisBackend::builder(primary.url())
        .call_timeout(Duration::from_secs(2))
        .replicas_acknowledge(1, Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let service = LockService::new(backend);
    let started = Instant::now();
    let (key, kind, message) = expect_backend_error(
        service.lock("acct").ttl(Duration::from_secs(30)).await,
        "no replica acknowledges",
    );
    assert_eq!(kind, BackendErrorKind::NotReplicated, "{message}");
    assert_eq!(key.as_deref(), Some("acct"));
    assert!(message.contains("0 of the 1 replicas"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed within the call timeout: {:?}",
        started.elapsed()
    );
    let mut conn = inspector(&primary.url()).await;
    poll_until(Duration::from_secs(2), "the unreplicated lock released (not left for its 30 s ttl)", || {
        let mut conn = conn.clone();
        async move { !redis_cmd::<bool>(&mut conn, &["EXISTS", "acct"]).await }
    })
    .await;
    // The same through `dlock::connect_with`, as a service configured by URL takes it.
    let options = dlock::ConnectOptions::default().replicas_acknowledge(1, Duration::from_millis(200));
    let by_url =
        LockService::builder_from_arc(dlock::connect_with(&primary.url(), options).await.expect("connect"))
            .build();
    let (_, kind, message) = expect_backend_error(
        by_url.lock("acct").ttl(Duration::from_secs(30)).await,
        "no replica acknowledges",
    );
    assert_eq!(kind, BackendErrorKind::NotReplicated, "{message}");

    // A replica that keeps up acknowledges.
    let (_replica, mut replica_conn) = replica_of(&primary, &conn).await;
    // The same option, with room for a CI machine that stalls the replica for a moment.
    let guard = replicated_lock(&primary, Duration::from_secs(10), Duration::from_secs(5)).await;
    assert!(redis_cmd::<bool>(&mut replica_conn, &["EXISTS", "acct"]).await, "the replica has the lock");
    guard.release().await.expect("release");
    let _ = &mut conn;
}

/// Replicated acquisitions of one service that run at once while the replica does not
/// acknowledge (`SIGSTOP`ped): each waits for the replicas on a connection of its own, so every
/// one fails with `NotReplicated` after the wait for replicas, within the call timeout, and
/// leaves its key free. Before, they shared one connection, on which each `WAIT` held up the
/// acquisitions queued behind it: the third and later ones missed the call timeout and failed
/// with `Timeout`, and the timeout replaced the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisitions_the_replicas_do_not_acknowledge_each_fail_with_not_replicated() {
    let primary = RedisServer::start();
    unacknowledged_at_once(&primary, 6, Duration::from_millis(1500)).await;
}

/// More replicated acquisitions at once than a runtime has connections for them (32, see the
/// README's replicated acquisition): those past the bound wait for a connection to come free,
/// within the call timeout, and fail with `NotReplicated` like the others. The connections
/// are kept for the next acquisitions: the primary has 32 of them afterwards, not 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_acquisitions_past_the_connection_bound_wait_for_a_connection() {
    const BOUND: usize = 32;
    let primary = RedisServer::start();
    let (outcomes, _service) = unacknowledged_at_once(&primary, BOUND + 8, Duration::from_secs(3)).await;
    let mut conn = inspector(&primary.url()).await;
    let info: String = redis_cmd(&mut conn, &["INFO", "clients"]).await;
    let clients: usize = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("connected_clients in {info}"));
    // Beside the lanes: the backend's command connection and its subscriber, this test's two
    // inspectors.
    assert!(clients <= BOUND + 4, "{clients} clients on the primary: {info}; outcomes: {outcomes:#?}");
    let slowest = outcomes.iter().map(|(_, elapsed)| *elapsed).max().unwrap_or_default();
    assert!(slowest >= Duration::from_millis(2 * 500), "the last 8 waited for a connection: {outcomes:#?}");
}

/// `count` acquisitions of different keys at once, by one service on `primary` (with a replica
/// that acknowledges, then `SIGSTOP`ped), each required to be acknowledged within 500 ms under
/// `call_timeout`: checks that each failed with `NotReplicated` within the call timeout and
/// left its key free. Their outcomes and durations, and the service (with its connections).
async fn unacknowledged_at_once(
    primary: &RedisServer,
    count: usize,
    call_timeout: Duration,
) -> (Vec<(String, Duration)>, LockService) {
    let replica_wait = Duration::from_millis(500);
    let conn = inspector(&primary.url()).await;
    let (mut replica, _) = replica_of(primary, &conn).await;
    let backend = RedisBackend::builder(primary.url())
        .call_timeout(call_timeout)
        .replicas_acknowledge(1, replica_wait)
        .connect()
        .await
        .expect("connect");
    let service = LockService::new(backend);
    // In sync, the replica acknowledges: one acquisition takes its key. (Asked again if it
    // does not within the 500 ms: a loaded 2-core machine can hold the replica up that long.)
    poll_until(Duration::from_secs(10), "an acquisition acknowledged by the replica", || {
        let service = service.clone();
        async move {
            match service.lock("warm-up").await {
                Ok(guard) => guard.release().await.expect("release"),
                Err(Error::Backend { source, .. }) if source.kind() == BackendErrorKind::NotReplicated => {
                    false
                }
                Err(err) => panic!("the warm-up acquisition failed: {err}"),
            }
        }
    })
    .await;

    replica.pause();
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = service.lock(format!("acct-{i}")).ttl(Duration::from_secs(30)).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        let (result, elapsed) = call.await.expect("join");
        let outcome = match result {
            Err(Error::Backend { key, source, .. }) => format!("{:?} {:?} {source}", key, source.kind()),
            other => format!("{other:?}"),
        };
        outcomes.push((outcome, elapsed));
    }
    for (i, (outcome, elapsed)) in outcomes.iter().enumerate() {
        assert!(
            outcome.starts_with(&format!("Some(\"acct-{i}\") NotReplicated ")),
            "acquisition {i} of {count} at once: expected NotReplicated, got {outcome} after {elapsed:?}; all: {outcomes:#?}"
        );
        assert!(
            *elapsed < call_timeout,
            "acquisition {i} failed within the call timeout ({call_timeout:?}): {elapsed:?}; all: {outcomes:#?}"
        );
    }
    for i in 0..count {
        let key = format!("acct-{i}");
        poll_until(Duration::from_secs(2), &format!("{key} released (not left for its 30 s ttl)"), || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { !redis_cmd::<bool>(&mut conn, &["EXISTS", &key]).await }
        })
        .await;
    }
    replica.resume();
    (outcomes, service)
}

/// A read-only replica (what a client may reach during a failover) refuses the acquire
/// script's write: `Unavailable`, at once, naming the key — not a hang and not `Other`.
/// A private replica of `primary`, in sync: it acknowledges a write made through `conn` (a
/// connection to the primary). With a connection to the replica.
async fn replica_of(
    primary: &RedisServer,
    conn: &redis::aio::MultiplexedConnection,
) -> (RedisServer, redis::aio::MultiplexedConnection) {
    let replica = RedisServer::start();
    let mut replica_conn = inspector(&replica.url()).await;
    let () = redis_cmd(&mut replica_conn, &["REPLICAOF", "127.0.0.1", &primary.port().to_string()]).await;
    // `state=online` on the primary can come before the replica has loaded what it was sent
    // and acknowledges anything; in sync here means it acknowledges a write (within 200 ms,
    // under the inspector connection's own response timeout).
    poll_until(Duration::from_secs(10), "the replica acknowledging writes", || {
        let mut conn = conn.clone();
        async move {
            let () = redis_cmd(&mut conn, &["SET", "replica-probe", "1"]).await;
            redis_cmd::<i64>(&mut conn, &["WAIT", "1", "200"]).await == 1
        }
    })
    .await;
    (replica, replica_conn)
}

/// A wait for replicas as long as a call timeout meant as "no bound" (`Duration::MAX`) allows
/// is a wait that ends when the replicas answer: an acquisition a replica acknowledges takes
/// the lock. Before, the timeout went out as more milliseconds than Redis reads (an `i64`), and
/// every acquisition failed with `ERR timeout is not an integer or out of range` — after
/// taking, and then releasing, the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_wait_for_replicas_takes_the_lock() {
    let primary = RedisServer::start();
    let conn = inspector(&primary.url()).await;
    let (_replica, _) = replica_of(&primary, &conn).await;
    let guard = replicated_lock(&primary, Duration::MAX, Duration::MAX - Duration::from_secs(1)).await;
    assert!(guard.release().await.expect("release"));
}

/// `acct` on `primary`, through a backend with `call_timeout` that requires one replica to
/// acknowledge each acquisition within `replica_wait`.
async fn replicated_lock(
    primary: &RedisServer,
    call_timeout: Duration,
    replica_wait: Duration,
) -> dlock::LockGuard {
    let backend = RedisBackend::builder(primary.url())
        .call_timeout(call_timeout)
        .replicas_acknowledge(1, replica_wait)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    LockService::new(backend)
        .lock("acct")
        .ttl(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("acknowledged by the replica: {e:?}"))
}

#[tokio::test]
async fn a_read_only_replica_is_unavailable() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let mut conn = inspector(&replica.url()).await;
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .expect("REPLICAOF");
    let service = LockService::new(connect_redis_with(&replica.url(), CALL_TIMEOUT).await);
    let started = Instant::now();
    let (key, kind, message) = expect_backend_error(service.lock("k").await, "a read-only replica");
    assert_eq!(kind, BackendErrorKind::Unavailable, "{message}");
    assert_eq!(key.as_deref(), Some("k"));
    assert!(started.elapsed() < Duration::from_secs(1), "reported after {:?}", started.elapsed());
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_that_mentions_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    for (url, case) in
        [(server.url_with_password("wrong-pw"), "wrong password"), (server.url(), "no password")]
    {
        let started = Instant::now();
        let (_, kind, message) = expect_backend_error(RedisBackend::connect(&url).await, case);
        assert_eq!(kind, BackendErrorKind::Auth, "{case}: {message}");
        assert!(message.contains("password"), "{case}: the message mentions the password: {message}");
        assert!(!message.contains("wrong-pw"), "{case}: the message must not leak the password: {message}");
        assert!(started.elapsed() < Duration::from_secs(2), "{case}: took {:?}", started.elapsed());
    }
    let backend = connect_redis_with(&server.url_with_password("s3cret-pw"), CALL_TIMEOUT).await;
    assert!(!format!("{backend:?}").contains("s3cret-pw"), "Debug masks the password: {backend:?}");
    let guard = LockService::new(backend).lock("k").await.expect("the right password works");
    assert!(guard.release().await.expect("release"));
}

#[tokio::test]
async fn closed_port_is_a_prompt_connection_error() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let result = RedisBackend::builder(url.as_str()).call_timeout(CALL_TIMEOUT).connect().await;
    let elapsed = started.elapsed();
    let (key, kind, message) = expect_backend_error(result, "connect to a closed port");
    assert_eq!(kind, BackendErrorKind::Connection, "{message}");
    assert_eq!(key, None);
    assert!(message.contains(&url), "the message names the address: {message}");
    assert!(elapsed < CALL_TIMEOUT + MARGIN, "took {elapsed:?}");
}

/// After `SCRIPT FLUSH` (as after a Redis restart) `EVALSHA` answers NOSCRIPT: acquire, renew and
/// release must fall back to sending the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_is_survived_by_acquire_renew_and_release() {
    let server = RedisServer::start();
    let mut conn = inspector(&server.url()).await;
    let faulty = FaultyBackend::new(connect_redis_with(&server.url(), CALL_TIMEOUT).await);
    let service = LockService::new(faulty.clone());
    let guard = service.lock("k").await.expect("acquire");
    assert!(guard.release().await.expect("release"));

    let () = redis_cmd(&mut conn, &["SCRIPT", "FLUSH"]).await;
    let ttl = Duration::from_millis(300);
    let guard = service.lock("k").ttl(ttl).await.expect("acquire after SCRIPT FLUSH");
    let () = redis_cmd(&mut conn, &["SCRIPT", "FLUSH"]).await;
    let renewals = faulty.count(Op::Renew);
    let kept = tokio::time::timeout(ttl * 3, guard.lost()).await;
    assert!(kept.is_err(), "lease lost after SCRIPT FLUSH: {kept:?}");
    assert!(faulty.count(Op::Renew) >= renewals + 2, "renewed after the flush");
    let () = redis_cmd(&mut conn, &["SCRIPT", "FLUSH"]).await;
    assert!(guard.release().await.expect("release after SCRIPT FLUSH"), "still ours");
    let exists: bool = redis_cmd(&mut conn, &["EXISTS", "k"]).await;
    assert!(!exists, "the release deleted the key");
}

// ---------------------------------------------------------------------------------------------
// Several OS processes: this test binary re-executed as a worker.

const INCREMENTS_PER_PROCESS: u64 = 100;

/// Not a test: the body of the worker processes the tests below start ([`Worker::spawn`]).
/// Run directly, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process for the multi-process tests; they start it"]
async fn worker() {
    let Some(job) = worker_job() else { return };
    let url = job.url;
    let service = LockService::new(connect_redis_with(&url, CALL_TIMEOUT).await);
    let pid = std::process::id();
    match job.mode.as_str() {
        // Increment a counter in Redis under the lock, logging entry and exit in Redis.
        "increment" => {
            let mut conn = inspector(&url).await;
            for _ in 0..INCREMENTS_PER_PROCESS {
                let guard = service
                    .lock("procs")
                    .ttl(Duration::from_secs(5))
                    .wait(Duration::from_secs(30))
                    .await
                    .expect("worker acquires");
                let token = guard.fencing_token().to_string();
                let _: i64 = redis_cmd(&mut conn, &["RPUSH", "log", &format!("enter {pid} {token}")]).await;
                let value: Option<u64> = redis_cmd(&mut conn, &["GET", "counter"]).await;
                tokio::task::yield_now().await;
                let () =
                    redis_cmd(&mut conn, &["SET", "counter", &(value.unwrap_or(0) + 1).to_string()]).await;
                let _: i64 = redis_cmd(&mut conn, &["RPUSH", "log", &format!("exit {pid} {token}")]).await;
                assert!(guard.release().await.expect("worker releases"), "still ours at release");
                // Let the other process in now and then.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        // Take the lock, say so, and hold it (renewing) until killed.
        "hold" => {
            let guard = service.lock("crash").ttl(Duration::from_millis(600)).await.expect("worker acquires");
            say(&format!("HOLDING {}", guard.fencing_token()));
            tokio::time::sleep(Duration::from_secs(30)).await;
            panic!("the holding worker was not killed within 30 s");
        }
        other => panic!("unknown worker mode {other:?}"),
    }
}

/// Two processes × 100 increments of a counter in Redis, under one lock. Each logs
/// `enter`/`exit` in Redis while holding it, so the log is in Redis's own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_contend_without_lost_updates() {
    let server = RedisServer::start();
    let started = Instant::now();
    let workers = [
        Worker::spawn("worker", "increment", &server.url()),
        Worker::spawn("worker", "increment", &server.url()),
    ];
    let pids: Vec<u32> = workers.iter().map(Worker::pid).collect();
    for worker in workers {
        let (status, _) = worker.finish(Duration::from_secs(60)).await;
        assert!(status.success(), "worker failed: {status}");
    }
    eprintln!("two processes × {INCREMENTS_PER_PROCESS} increments in {:?}", started.elapsed());

    let mut conn = inspector(&server.url()).await;
    let total: u64 = redis_cmd(&mut conn, &["GET", "counter"]).await;
    assert_eq!(total, 2 * INCREMENTS_PER_PROCESS, "no lost updates across processes");
    let log: Vec<String> = redis_cmd(&mut conn, &["LRANGE", "log", "0", "-1"]).await;
    assert_eq!(log.len() as u64, 4 * INCREMENTS_PER_PROCESS);
    let mut last_token = 0u64;
    let mut holders = Vec::new();
    for pair in log.chunks(2) {
        let enter: Vec<&str> = pair[0].split(' ').collect();
        let exit: Vec<&str> = pair[1].split(' ').collect();
        assert_eq!(enter[0], "enter", "log {pair:?}: an entry not followed by its own exit means overlap");
        assert_eq!(exit[0], "exit", "log {pair:?}");
        assert_eq!(enter[1..], exit[1..], "log {pair:?}: another holder exited inside this one's interval");
        let token: u64 = enter[2].parse().expect("token");
        assert!(
            token > last_token,
            "fencing tokens strictly increase across processes: {last_token} then {token}"
        );
        last_token = token;
        let pid: u32 = enter[1].parse().expect("pid");
        assert!(pids.contains(&pid), "log from an unknown process {pid}");
        if holders.last() != Some(&pid) {
            holders.push(pid);
        }
    }
    eprintln!("the lock changed process {} times", holders.len() - 1);
    assert!(holders.len() >= 3, "the processes took turns (holders in order: {holders:?})");
}

/// A process holding a lock is SIGKILLed: the others get in within its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_blocks_others_for_at_most_ttl() {
    let server = RedisServer::start();
    let mut worker = Worker::spawn("worker", "hold", &server.url());
    let worker_token: u64 =
        worker.line_starting("HOLDING ", Duration::from_secs(20)).await.parse().expect("a fencing token");

    let service = LockService::new(connect_redis_with(&server.url(), CALL_TIMEOUT).await);
    let err = service.lock("crash").wait(Duration::ZERO).await.expect_err("the worker holds it");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    let killed_at = Instant::now();
    worker.kill().await;
    let guard =
        service.lock("crash").wait(Duration::from_secs(5)).await.expect("gets in after the worker died");
    let blocked = killed_at.elapsed();
    let ttl = Duration::from_millis(600);
    assert!(blocked < ttl + MARGIN, "blocked {blocked:?} after the holder died; its ttl is {ttl:?}");
    assert!(guard.fencing_token() > worker_token);
    assert!(guard.release().await.expect("release"));
}

/// A backend dropped leaves no task behind on the runtime it served (each runtime keeps one
/// that forgets its connection when the runtime ends). Before the fix, that task waited for
/// the runtime's end: one more for every backend made and dropped.
#[tokio::test(flavor = "current_thread")]
async fn dropped_backends_leave_no_task_behind() {
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    for _ in 0..20 {
        drop(RedisBackend::connect(shared_redis_url().as_str()).await.expect("connect"));
    }
    poll_until(Duration::from_secs(5), "no task left by 20 dropped backends", || async { tasks() == before })
        .await;
}
