//! `#[distributed_lock]` at run time, where it depends on one process's registry or on one
//! backend: a service nobody registered, the global service, and a call dropped while its
//! acquire is on the wire to a frozen Redis. What the generated code does on any backend is in
//! the conformance suite (`conformance/attribute.rs`), run by `runtime_memory` and
//! `runtime_redis`.
//!
//! The global service is touched by one test only
//! ([`global_service_is_used_when_no_service_is_named`]); one test freezes a private
//! `redis-server` ([`dropping_a_call_while_its_acquire_is_on_the_wire_leaves_no_ownerless_lock`]).
//!
//! Tests that document a dlock bug are named for the behaviour they expect and fail until it
//! is fixed: `dropping_a_call_while_its_acquire_is_on_the_wire_leaves_no_ownerless_lock`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dlock::{Error, distributed_lock};
use dlock_tests::{RedisServer, inspector, poll_until};

/// How long a lock may take to disappear from the store after a background release. Far
/// below the ttl of the lock it waits for (10 s), so expiry cannot pass for a release.
const RELEASE_BOUND: Duration = Duration::from_secs(2);

/// A service name nobody registered: `Err(NotRegistered { service: Some(name) })`, no panic,
/// and the body does not run.
#[tokio::test]
async fn unregistered_service_is_an_error_and_the_body_does_not_run() {
    #[distributed_lock(key = "nr:<id>", service = "never-registered")]
    async fn unregistered(id: u32, ran: &AtomicBool) -> Result<u32, Error> {
        ran.store(true, Ordering::SeqCst);
        Ok(id)
    }

    let ran = AtomicBool::new(false);
    match unregistered(1, &ran).await {
        Err(Error::NotRegistered { service }) => assert_eq!(service.as_deref(), Some("never-registered")),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "the body ran without a lock service");
}

/// The only test that touches the global service: without `service = …` a call is
/// `NotRegistered { service: None }` until `set_global`, then runs with the lock held in the
/// global service's backend.
#[tokio::test]
async fn global_service_is_used_when_no_service_is_named() {
    #[distributed_lock(key = "global:<id>")]
    async fn on_global(id: u32, backend: &dlock::MemoryBackend) -> Result<(usize, Option<u64>), Error> {
        Ok((backend.held_count(), dlock::fencing_token()))
    }

    let backend = dlock::MemoryBackend::new();
    match on_global(1, &backend).await {
        Err(Error::NotRegistered { service: None }) => {}
        other => panic!("expected NotRegistered for the global service, got {other:?}"),
    }
    dlock::set_global(dlock::LockService::new(backend.clone()))
        .expect("no other test sets the global service");
    let (held, token) = on_global(1, &backend).await.expect("the global service is used");
    assert_eq!(held, 1, "the lock was not held in the global service's backend");
    assert!(token.is_some());
    assert_eq!(backend.held_count(), 0, "released after the call");
}

/// Redis: a call dropped by its caller while its acquire script is on the wire. Redis is
/// frozen (SIGSTOP) so the script waits, unanswered, in the socket; the caller gives up after
/// 300 ms and drops the call; Redis is thawed and runs the script, taking the lock (ttl 10 s)
/// for an owner that no longer exists. It must be freed promptly — as dlock already does when
/// the same acquire ends in a backend error (`clean_up_after_failed_acquire`) — not held for
/// the whole ttl. (A private `redis-server`: this test freezes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_while_its_acquire_is_on_the_wire_leaves_no_ownerless_lock() {
    const SVC: &str = "attribute:redis:acquire-on-the-wire";
    #[distributed_lock(key = "wire:<id>", service = SVC, ttl = "10s", wait = "0s")]
    async fn call(id: u32, ran: Arc<AtomicBool>) -> Result<u32, Error> {
        ran.store(true, Ordering::SeqCst);
        Ok(id)
    }

    let mut server = RedisServer::start();
    let url = server.url();
    let backend = dlock::RedisBackend::connect(&url).await.expect("connect to the private redis-server");
    dlock::register(SVC, dlock::LockService::new(backend)).expect("register");
    let mut conn = inspector(&url).await;
    // The fencing token in a held lock's value (`<token>:<owner>`).
    let fence = |conn: &redis::aio::MultiplexedConnection, key: &str| {
        let mut conn = conn.clone();
        let key = key.to_owned();
        async move {
            let value: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET the lock");
            value.and_then(|value| dlock_tests::lock_value(&value).0)
        }
    };
    // Loads the acquire script into Redis's cache, so the frozen EVALSHA cannot come back
    // as NOSCRIPT (and be retried as EVAL by a future that no longer exists).
    let ran = Arc::new(AtomicBool::new(false));
    assert_eq!(call(0, Arc::clone(&ran)).await.expect("acquire while Redis runs"), 0);
    assert_eq!(fence(&conn, "wire:1").await, None, "nothing holds wire:1 yet");

    // How many scripts Redis has run by `EVALSHA` (the acquire is the call's only command).
    let evalsha_calls = |conn: &redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let info: String =
                redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO");
            info.lines()
                .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let before = evalsha_calls(&conn).await;
    server.pause();
    let ran = Arc::new(AtomicBool::new(false));
    let gave_up = tokio::time::timeout(Duration::from_millis(300), call(1, Arc::clone(&ran))).await;
    assert!(gave_up.is_err(), "a call finished while Redis was frozen: {gave_up:?}");
    server.resume();

    // The dropped call's script ran once Redis was thawed, and took wire:1 for an owner that
    // no longer exists (it may be given back already: the lock's value went with it).
    poll_until(RELEASE_BOUND, "Redis ran the dropped call's acquire script", || {
        let calls = evalsha_calls(&conn);
        async move { calls.await > before }
    })
    .await;
    let pttl: i64 = redis::cmd("PTTL").arg("wire:1").query_async(&mut conn).await.expect("PTTL");
    eprintln!(
        "after the thaw: fencing counter {:?}, PTTL of wire:1 {pttl} ms (-2: absent)",
        fence(&conn, "wire:1").await
    );
    let freed = tokio::time::timeout(RELEASE_BOUND, async {
        loop {
            let exists: bool =
                redis::cmd("EXISTS").arg("wire:1").query_async(&mut conn.clone()).await.expect("EXISTS");
            if !exists {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!ran.load(Ordering::SeqCst), "the dropped call's body ran");
    assert!(
        freed.is_ok(),
        "`wire:1` is still held {RELEASE_BOUND:?} after the call that was acquiring it was dropped: \
         the lock Redis granted to the dropped call stays, with an owner nobody knows, for its 10 s ttl"
    );
    assert_eq!(call(1, Arc::new(AtomicBool::new(false))).await.expect("wire:1 is free again"), 1);
}
