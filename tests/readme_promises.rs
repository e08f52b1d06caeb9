//! Promises of the README that no other test pinned: each test names its README line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::{Error, LockService, MemoryBackend};
use dlock_tests::{FaultyBackend, MARGIN, Op};
use tokio::net::TcpListener;

/// A TCP server that accepts every connection and never says a word (a dead host behind a
/// NAT, a wedged server): returns its port; the accepted sockets are kept open.
async fn silent_server() -> u16 {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).await.unwrap_or_else(|err| panic!("binding a free port: {err}"));
    let port = listener.local_addr().unwrap_or_else(|err| panic!("its address: {err}")).port();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    port
}

const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// README "What dlock guarantees", 4: "Every Redis call is bounded by the call timeout
/// (default 2 s), connecting included".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_redis_ends_within_the_call_timeout() {
    let port = silent_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        dlock::RedisBackend::builder(url.as_str()).call_timeout(CALL_TIMEOUT).connect(),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "RedisBackend::connect to a silent server: {took:?}, {:?}",
        outcome.as_ref().map(Result::is_ok)
    );
    assert!(matches!(outcome, Ok(Err(Error::Backend { .. }))), "{:?}", outcome.map(|r| r.err()));
    assert!(took < CALL_TIMEOUT + MARGIN, "connect took {took:?}, call timeout {CALL_TIMEOUT:?}");
}

/// The same through `dlock::connect`, with the default call timeout of 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_redis_by_url_ends_within_the_default_call_timeout() {
    let port = silent_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), dlock::connect(&url)).await;
    let took = started.elapsed();
    eprintln!("dlock::connect to a silent server: {took:?}, {:?}", outcome.as_ref().map(Result::is_ok));
    assert!(matches!(outcome, Ok(Err(Error::Backend { .. }))), "{:?}", outcome.map(|r| r.err()));
    assert!(took < Duration::from_secs(2) + MARGIN, "connect took {took:?}");
}

/// README "Cluster": a node that stops answering costs its call timeout; connecting is a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_cluster_node_ends_within_the_call_timeout() {
    let port = silent_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        dlock::RedisClusterBackend::builder([url]).call_timeout(CALL_TIMEOUT).connect(),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "RedisClusterBackend::connect to a silent node: {took:?}, {:?}",
        outcome.as_ref().map(Result::is_ok)
    );
    assert!(matches!(outcome, Ok(Err(Error::Backend { .. }))), "{:?}", outcome.map(|r| r.err()));
    assert!(took < CALL_TIMEOUT + MARGIN, "connect took {took:?}, call timeout {CALL_TIMEOUT:?}");
}

/// Sentinel: "no sentinel answering is a connection failure, within the call timeout per
/// sentinel" (rustdoc of `RedisSentinelBackend::connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_sentinel_ends_within_the_call_timeout() {
    let port = silent_server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        dlock::RedisSentinelBackend::builder([url], "mymaster").call_timeout(CALL_TIMEOUT).connect(),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "RedisSentinelBackend::connect to a silent sentinel: {took:?}, {:?}",
        outcome.as_ref().map(Result::is_ok)
    );
    assert!(matches!(outcome, Ok(Err(Error::Backend { .. }))), "{:?}", outcome.map(|r| r.err()));
    assert!(took < CALL_TIMEOUT + MARGIN, "connect took {took:?}, call timeout {CALL_TIMEOUT:?}");
}

/// README "PostgreSQL", "Bounds and errors": "Every call, waiting for a pooled connection
/// included, is bounded by the call timeout".
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_postgres_ends_within_the_call_timeout() {
    let port = silent_server().await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        dlock::PostgresBackend::builder(url).call_timeout(CALL_TIMEOUT).connect(),
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "PostgresBackend::connect to a silent server: {took:?}, {:?}",
        outcome.as_ref().map(Result::is_ok)
    );
    assert!(matches!(outcome, Ok(Err(Error::Backend { .. }))), "{:?}", outcome.map(|r| r.err()));
    assert!(took < CALL_TIMEOUT + MARGIN, "connect took {took:?}, call timeout {CALL_TIMEOUT:?}");
}

/// README "Testing code that uses dlock": `with_service` is task-scoped; "tasks spawned inside
/// do not inherit it". This binary registers no global service.
#[tokio::test]
async fn tasks_spawned_inside_with_service_do_not_inherit_it() {
    let service = LockService::builder(MemoryBackend::new()).key_prefix("scoped:").build();
    let (here, spawned) = dlock::with_service(service, async {
        let here = dlock::global().map(|s| s.key_prefix().to_owned());
        let spawned = tokio::spawn(async { dlock::global().map(|s| s.key_prefix().to_owned()) }).await;
        (here, spawned)
    })
    .await;
    assert_eq!(here.expect("the scoped service stands in for the global one"), "scoped:");
    assert!(
        matches!(spawned.expect("no panic"), Err(Error::NotRegistered { service: None })),
        "a spawned task must not see the scoped service"
    );
}

/// README "Changes from the design card": "a plain manual guard held outside those does not
/// make later requests of the same task re-entrant (they wait like any other caller, bounded
/// by `wait`)".
#[tokio::test(start_paused = true)]
async fn a_plain_manual_guard_does_not_make_later_requests_of_its_task_reentrant() {
    let service = LockService::new(MemoryBackend::new());
    let guard = service.lock("k").await.expect("first");
    let wait = Duration::from_millis(200);
    let started = tokio::time::Instant::now();
    let second = service.lock("k").wait(wait).await;
    assert!(matches!(second, Err(Error::Timeout { .. })), "{:?}", second.map(|g| g.is_reentrant()));
    assert_eq!(started.elapsed(), wait, "bounded by its wait");
    assert!(guard.release().await.expect("release"));
}

/// README "The attribute": `ttl` "(default 30 s)", `wait` "(default 30 s)". The rustdoc says
/// "the service's (30 s)": a service built with other defaults gives them to the attribute.
#[tokio::test(start_paused = true)]
async fn the_attributes_default_ttl_and_wait_are_30_s_on_a_default_service() {
    let faulty = Arc::new(FaultyBackend::new(MemoryBackend::new()));
    let service = LockService::builder_from_arc(faulty.clone()).build();
    dlock::register("readme_promises:defaults", service.clone()).expect("register");

    #[dlock::distributed_lock(key = "d:<id>", service = "readme_promises:defaults")]
    async fn defaults(id: u32) -> Result<u32, Error> {
        Ok(id)
    }

    assert_eq!(defaults(1).await.expect("free"), 1);
    let ttl = faulty.last(Op::TryAcquire).and_then(|call| call.ttl);
    assert_eq!(ttl, Some(Duration::from_secs(30)), "the attribute's default ttl");

    let held = service.lock("d:2").await.expect("hold");
    let started = tokio::time::Instant::now();
    assert!(matches!(defaults(2).await, Err(Error::Timeout { .. })));
    assert_eq!(started.elapsed(), Duration::from_secs(30), "the attribute's default wait");
    assert!(held.release().await.expect("release"));
}

/// README "Errors": "every message says what to do, and names the key when it concerns one
/// (the service, when none is registered under a name)".
#[tokio::test]
async fn error_messages_name_the_key_or_the_service_and_what_to_do() {
    let service = LockService::new(MemoryBackend::new());
    let _held = service.lock("named:key").await.expect("hold");
    let timeout = service.lock("named:key").wait(Duration::ZERO).await.expect_err("timeout");
    assert!(timeout.to_string().contains("named:key"), "{timeout}");
    assert_eq!(timeout.key(), Some("named:key"));

    #[dlock::distributed_lock(key = "named:<id>", service = "readme_promises:nobody")]
    async fn unregistered(id: u32) -> Result<u32, Error> {
        Ok(id)
    }
    let not_registered = unregistered(7).await.expect_err("not registered").to_string();
    assert!(not_registered.contains("`readme_promises:nobody`"), "{not_registered}");
    assert!(not_registered.contains("register one at start-up"), "{not_registered}");
}

/// README "What dlock guarantees", 7: "A re-entrant guard that outlives its outer holder
/// reports itself lost (`LostReason::Released`)"; "Changes from the design card":
/// "`LockGuard::release()` returns `Result<bool, Error>`: `true` when the lock was still ours".
#[tokio::test(start_paused = true)]
async fn a_reentrant_guard_that_outlived_its_holder_does_not_release_as_still_ours() {
    let service = LockService::new(MemoryBackend::new());
    let outer = service.lock("k").await.expect("outer");
    let inner =
        outer.scope(async { service.lock("k").wait(Duration::ZERO).await }).await.expect("re-entrant");
    assert!(inner.is_reentrant());
    assert!(outer.release().await.expect("outer release"));
    let reason = tokio::time::timeout(Duration::from_secs(1), inner.lost()).await.expect("reported lost");
    assert_eq!(reason, dlock::LostReason::Released);
    let still_ours = inner.release().await.expect("release");
    assert!(!still_ours, "release() says the lock was still ours after lost() said Released");
}

/// README "Where a lock lives": "Lock keys may not contain `#dlock:` (`Error::InvalidInput`),
/// so a derived name is never another lock" — the lock key `K` there is the full key, the
/// service's prefix included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_containing_the_reserved_marker_are_invalid_input_on_redis() {
    let prefix = dlock_tests::unique_prefix("keys_containing_the_reserved_marker");
    let backend = dlock_tests::connect_redis(&dlock_tests::shared_redis_url()).await;
    let plain = LockService::builder(backend.clone()).key_prefix(prefix.clone()).build();
    let in_key = plain.lock("user:1#dlock:line").wait(Duration::ZERO).await;
    assert!(
        matches!(in_key, Err(Error::InvalidInput { .. })),
        "{:?}",
        in_key.map(|g| g.full_key().to_owned())
    );
    // The marker formed across the prefix and the key.
    let split = LockService::builder(backend).key_prefix(format!("{prefix}x#dlo")).build();
    let across = split.lock("ck:line").wait(Duration::ZERO).await;
    match across {
        Err(Error::InvalidInput { .. }) => {}
        Ok(guard) => {
            let full = guard.full_key().to_owned();
            let _ = guard.release().await;
            panic!("the full key `{full}` contains `#dlock:` and was locked");
        }
        Err(other) => panic!("{other:?}"),
    }
}
