//! Guarantees under faults, each test on a private `redis-server` it owns:
//!
//! - a service made in one runtime serves every runtime of the process, also after the one
//!   that made it ended (its subscriber, which wakes waiters, moves to dlock's own runtime,
//!   started or not, and waiters that wait meanwhile keep hearing releases); a guard dropped
//!   while its runtime shuts down is still released;
//! - a connection that goes silent without closing (black-holed by a proxy this file owns) is
//!   replaced: commands within two call timeouts, the subscriber by its health check; an
//!   acquisition held up on its way (the proxy holds its bytes) that the release of the request
//!   that gave up on it overtook does not keep the key, also when the runtime it was sent from
//!   ended first (the release is then sent again once the kernel has given up on its bytes);
//!   the connections kept for such acquisitions are one each, and let go in time (also when
//!   one owner of several released, when the caller's clock was paused and advanced, and under
//!   a call timeout meant as no bound);
//! - fencing tokens keep increasing across a Redis that lost its data;
//! - the ACL recipe of the README works with a user confined to the service's prefix, and a
//!   user confined elsewhere cannot send notices; replayed notices are ignored;
//! - a release Redis refuses half-way changes nothing; a waiter rides out `OOM`;
//! - re-entrant bodies of one key running side by side in one task take turns.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dlock::backend::BackendErrorKind;
use dlock::{Error, LockService, MemoryBackend, RedisBackend, distributed_lock};
use dlock_tests::support::runtime::runtime;
use dlock_tests::{BlackHoleProxy, MARGIN, RedisServer, inspector, poll_until, redis_cmd};

/// The call timeout of these tests' backends.
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// When the kernel gives up on data these tests' connections sent and nobody acknowledged
/// (`TCP_USER_TIMEOUT`: twice the call timeout, at least 1 s): after that, a closed
/// connection's last bytes can no longer arrive.
const KERNEL_GIVES_UP: Duration = Duration::from_secs(1);
const _: () = assert!(CALL_TIMEOUT.as_millis() * 2 <= KERNEL_GIVES_UP.as_millis());

async fn connect(url: &str) -> RedisBackend {
    dlock_tests::connect_redis_with(url, CALL_TIMEOUT).await
}

/// Whether `key` exists on the server at `url`, asked from a runtime of its own.
fn exists(url: &str, key: &str) -> bool {
    runtime(false).block_on(async {
        let mut conn = inspector(url).await;
        redis_cmd::<bool>(&mut conn, &["EXISTS", key]).await
    })
}

// ---------------------------------------------------------------------------------------------
// Runtimes that come and go.

/// One global service set up once, used by many `#[tokio::test]`s each on its own runtime: the
/// runtime that made the service ends first. Later runtimes of both flavours lock without a
/// backend error, and a release reaches a waiter of another service by notice (promptly, not
/// on its one-second recheck).
#[test]
fn a_service_serves_runtimes_after_the_one_that_made_it_ended() {
    serves_runtimes_after_the_one_that_made_it_ended(false);
}

/// As above, made on a multi-thread runtime, where the backends' subscribers (which wake
/// waiters) run until it ends — here after a hand-off there, so that the subscriber's
/// connection and a subscription were made on it — and then move to dlock's own runtime: the
/// waiters of later runtimes still hear releases.
#[test]
fn a_service_made_on_a_multi_thread_runtime_serves_runtimes_after_it_ended() {
    serves_runtimes_after_the_one_that_made_it_ended(true);
}

/// A backend connected on a multi-thread runtime that ends at once — whether or not its
/// workers had started the subscriber's task — still hears releases on later runtimes: the
/// subscriber is handed over to dlock's own runtime, started or not. Several rounds, since
/// which of the two happens is a race.
#[test]
fn a_backend_whose_runtime_ended_right_after_connecting_still_hears_releases() {
    let server = RedisServer::start();
    let url = server.url();
    for round in 0..8 {
        let made = runtime(true);
        let (holder, waiter) = made.block_on(async {
            (LockService::new(connect(&url).await), LockService::new(connect(&url).await))
        });
        drop(made);
        let handoff = runtime(false).block_on(handoff_between(&holder, &waiter, &format!("round {round}")));
        assert!(handoff < MARGIN, "round {round}: the waiter got the key {handoff:?} after the release");
    }
}

/// A waiter that waits on another runtime while the multi-thread runtime that runs its
/// backend's subscriber ends keeps hearing releases: it is woken when the subscriber's
/// connection goes with that runtime, and is subscribed again from dlock's own runtime.
#[test]
fn a_waiter_keeps_hearing_releases_across_the_end_of_the_subscribers_runtime() {
    let server = RedisServer::start();
    let url = server.url();
    let made = runtime(true);
    let (holder, waiter) = made
        .block_on(async { (LockService::new(connect(&url).await), LockService::new(connect(&url).await)) });
    let here = runtime(false);
    let guard = here.block_on(holder.lock("live").into_future()).expect("take the key");
    let (got_in, got_in_rx) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        runtime(true).block_on(async move {
            let guard = waiter.lock("live").wait(Duration::from_secs(20)).await.expect("the waiter's turn");
            let _ = got_in.send(Instant::now());
            guard.release().await.expect("release");
        });
    });
    // The waiter subscribes (through the subscriber on `made`) and listens.
    std::thread::sleep(CALL_TIMEOUT + Duration::from_millis(200));
    drop(made);
    // The subscriber starts over on dlock's runtime and subscribes the waiter again.
    std::thread::sleep(CALL_TIMEOUT + Duration::from_millis(200));
    let released = Instant::now();
    assert!(here.block_on(guard.release()).expect("release"));
    let got_in = got_in_rx.recv_timeout(Duration::from_secs(20)).expect("the waiter got the key");
    waiting.join().expect("the waiting thread");
    let handoff = got_in - released;
    assert!(handoff < MARGIN, "the waiter got the key {handoff:?} after the release");
}

fn serves_runtimes_after_the_one_that_made_it_ended(made_multi_thread: bool) {
    let server = RedisServer::start();
    let url = server.url();
    let made = runtime(made_multi_thread);
    let (holder, waiter) = made
        .block_on(async { (LockService::new(connect(&url).await), LockService::new(connect(&url).await)) });
    if made_multi_thread {
        // The waiter's subscription is made, and used, on the runtime about to end.
        let handoff = made.block_on(handoff_between(&holder, &waiter, "before the end"));
        assert!(handoff < MARGIN, "the waiter got the key {handoff:?} after the release");
    }
    drop(made);

    for (round, multi_thread) in [false, true, false, true].into_iter().enumerate() {
        let handoff =
            runtime(multi_thread).block_on(handoff_between(&holder, &waiter, &format!("round {round}")));
        assert!(
            handoff < MARGIN,
            "round {round} (multi-thread: {multi_thread}): the waiter got the key {handoff:?} after the release"
        );
    }
}

/// `holder` takes a key, `waiter` waits for it, `holder` releases it: how long after the
/// release the waiter held it.
async fn handoff_between(holder: &LockService, waiter: &LockService, what: &str) -> Duration {
    let guard = holder.lock("seq").await.unwrap_or_else(|err| panic!("{what}: {err}"));
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            let guard = waiter.lock("seq").wait(Duration::from_secs(10)).await?;
            let got_in = Instant::now();
            guard.release().await?;
            Ok::<_, Error>(got_in)
        }
    });
    // The waiter subscribes and asks again before it listens. It waits for the subscription
    // at most a call timeout, then listens anyway, falling back on its one-second recheck: a
    // release after that reaches it promptly only if the subscription was made.
    tokio::time::sleep(CALL_TIMEOUT + Duration::from_millis(200)).await;
    let released = Instant::now();
    assert!(guard.release().await.unwrap_or_else(|err| panic!("{what}: release: {err}")));
    let got_in = waiting.await.expect("join").unwrap_or_else(|err| panic!("{what}: waiter: {err}"));
    got_in - released
}

/// Two runtimes on their own threads lock one key in turns while the runtime that made the
/// service ends mid-way: no call fails, and the two never hold the key at once.
#[test]
fn runtimes_side_by_side_keep_working_when_the_one_that_made_the_service_ends() {
    const ROUNDS: usize = 60;
    let server = RedisServer::start();
    let url = server.url();
    let made = runtime(true);
    let service = made.block_on(async { LockService::new(connect(&url).await) });
    // The making runtime keeps locking too, until it is shut down.
    made.spawn({
        let service = service.clone();
        async move {
            loop {
                if let Ok(guard) = service.lock("side").wait(Duration::from_secs(5)).await {
                    let _ = guard.release().await;
                }
            }
        }
    });
    let inside = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|n| {
            let (service, inside, done) = (service.clone(), Arc::clone(&inside), Arc::clone(&done));
            std::thread::spawn(move || {
                runtime(n == 0).block_on(async move {
                    for round in 0..ROUNDS {
                        let guard = service
                            .lock("side")
                            .wait(Duration::from_secs(10))
                            .await
                            .unwrap_or_else(|err| panic!("thread {n}, round {round}: {err}"));
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        inside.store(false, Ordering::SeqCst);
                        guard
                            .release()
                            .await
                            .unwrap_or_else(|err| panic!("thread {n}, round {round}: release: {err}"));
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < ROUNDS / 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(made);
    for thread in threads {
        thread.join().expect("a locking thread failed");
    }
    assert_eq!(done.load(Ordering::SeqCst), 2 * ROUNDS);
}

/// A guard still held when its runtime shuts down (a task that never finished, the end of a
/// test) is released at once, not left for its ttl; so is the lock of an annotated body that
/// panics out of `block_on`.
#[test]
fn a_guard_dropped_as_its_runtime_shuts_down_is_released_promptly() {
    const SVC: &str = "faults:shutdown";
    #[distributed_lock(key = "panics", service = SVC, ttl = "30s")]
    async fn panics() -> Result<(), Error> {
        panic!("the body panics");
    }

    let server = RedisServer::start();
    let url = server.url();
    let service = runtime(false).block_on(async { LockService::new(connect(&url).await) });
    dlock::register(SVC, service.clone()).expect("register");

    let rt = runtime(false);
    rt.block_on(async {
        let guard = service.lock("held").ttl(Duration::from_secs(30)).await.expect("lock");
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
    });
    assert!(exists(&url, "held"), "held while the runtime lives");
    let dropped = Instant::now();
    drop(rt);
    while exists(&url, "held") {
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "still held {:?} after its runtime ended",
            dropped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let rt = runtime(true);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(panics())));
    assert!(panicked.is_err(), "the body panicked");
    drop(rt);
    let dropped = Instant::now();
    while exists(&url, "panics") {
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "still held {:?} after the panic",
            dropped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guard dropped in a `block_on` whose body then awaits something else (a synchronous program
/// that blocks on one current-thread runtime per operation): the release task starts and hands
/// its command to the connection, whose driver runs on that runtime; the `block_on` returns
/// before the driver sent it. The key is still released promptly, not left for its ttl.
#[test]
fn a_release_begun_on_a_runtime_that_then_idles_is_still_sent() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = runtime(false);
    let service = rt.block_on(async { LockService::new(connect(&url).await) });
    rt.block_on(async {
        let guard = service.lock("idle").ttl(Duration::from_secs(30)).await.expect("lock");
        drop(guard);
        // The release task runs up to its call on the connection, then this returns.
        tokio::task::yield_now().await;
    });
    let dropped = Instant::now();
    while exists(&url, "idle") {
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "still held {:?} after the guard was dropped",
            dropped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// Silent connections.

/// The command connection goes silent: the call that hits it gives up at its call timeout, the
/// connection is replaced, and locking works again within two call timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_within_two_call_timeouts() {
    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let service = LockService::new(connect(&proxy.url()).await);
    let guard = service.lock("silent").wait(Duration::ZERO).await.expect("lock through the proxy");
    assert!(guard.release().await.expect("release"));

    proxy.black_hole();
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match service.lock("silent").wait(Duration::ZERO).await {
            Ok(guard) => {
                assert!(guard.release().await.expect("release on the new connection"));
                break;
            }
            Err(err) => {
                failures += 1;
                assert!(
                    started.elapsed() < CALL_TIMEOUT * 2 + MARGIN,
                    "still failing {:?} after the connection went silent ({failures} failures): {err}",
                    started.elapsed()
                );
            }
        }
    }
    let took = started.elapsed();
    assert!(took < CALL_TIMEOUT * 2 + MARGIN, "locking worked again after {took:?}");
    eprintln!("locking worked again {took:?} after the connection went silent ({failures} calls failed)");
}

/// The subscriber connection goes silent: its health check notices within a check and a call
/// timeout and subscribes again on a new connection, so waiters hear notices again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_connection_is_replaced() {
    let server = RedisServer::start();
    let url = server.url();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let mut conn = inspector(&url).await;
    let holder = LockService::new(connect(&url).await);
    let waiter_backend = connect(&proxy.url()).await;
    let channel = waiter_backend.notice_channel("quiet");
    let waiter = LockService::new(waiter_backend);
    let guard = holder.lock("quiet").ttl(Duration::from_secs(20)).await.expect("holder");
    let call =
        tokio::spawn(async move { waiter.lock("quiet").wait(Duration::from_secs(20)).await.map(drop) });
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let counts: (String, i64) = redis_cmd(&mut conn, &["PUBSUB", "NUMSUB", &channel]).await;
            counts.1
        }
    };
    poll_until(Duration::from_secs(5), "the waiter subscribes", || {
        let counted = subscribers(&mut conn);
        async move { counted.await >= 1 }
    })
    .await;

    let accepted = proxy.accepted();
    proxy.black_hole();
    let silenced = Instant::now();
    // The silent connection stays open (the proxy keeps it), so the server counts it too: a
    // second subscriber is the waiter's new connection.
    let bound = Duration::from_secs(1) + CALL_TIMEOUT * 2 + MARGIN * 2;
    poll_until(bound, "the waiter subscribes again on a new connection", || {
        let counted = subscribers(&mut conn);
        async move { counted.await >= 2 }
    })
    .await;
    eprintln!("the subscriber was replaced {:?} after its connection went silent", silenced.elapsed());
    assert!(proxy.accepted() > accepted, "the new subscriber connection came through the proxy");
    assert!(guard.release().await.expect("release"));
    call.await.expect("join").expect("the waiter gets the key");
}

/// How many scripts the server has run by `EVALSHA`.
async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis_cmd(conn, &["INFO", "commandstats"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// An acquisition held up on its way to Redis (a slow path: the proxy holds back what its
/// connection sends) times out; its claim's release, sent on a new connection, gets there
/// first and finds nothing. When the held-up script runs after all, the key must not stay
/// held for the owner that gave up (for its whole ttl): another client gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_overtaken_by_its_claims_release_does_not_keep_the_key() {
    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let mut conn = inspector(&server.url()).await;
    let service = LockService::new(connect(&proxy.url()).await);
    // Makes the runtime's connection, and loads the scripts: each later call is one EVALSHA.
    let guard = service.lock("late").wait(Duration::ZERO).await.expect("lock through the proxy");
    assert!(guard.release().await.expect("release"));
    let before = evalsha_calls(&mut conn).await;

    proxy.hold();
    let ttl = Duration::from_secs(30);
    match service.lock("late").ttl(ttl).wait(Duration::ZERO).await {
        Err(Error::Backend { source, .. }) => {
            assert_eq!(source.kind(), BackendErrorKind::Timeout, "{source}")
        }
        other => panic!("the held-up acquisition ended with {other:?}, not a call timeout"),
    }
    // The claim's release, on a new connection, runs while the acquisition is still held up.
    poll_until(CALL_TIMEOUT * 2 + MARGIN, "the claim's release runs", || {
        let mut conn = conn.clone();
        async move { evalsha_calls(&mut conn).await > before }
    })
    .await;
    assert_eq!(evalsha_calls(&mut conn).await, before + 1, "only the release has run");
    proxy.deliver_held();
    poll_until(MARGIN, "the held-up acquisition runs", || {
        let mut conn = conn.clone();
        async move { evalsha_calls(&mut conn).await >= before + 2 }
    })
    .await;

    let other = LockService::new(connect(&server.url()).await);
    let wait = CALL_TIMEOUT * 2 + MARGIN;
    let guard = match other.lock("late").wait(wait).await {
        Ok(guard) => guard,
        Err(err) => {
            let value: Option<String> = redis_cmd(&mut conn, &["GET", "late"]).await;
            let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "late"]).await;
            panic!("the key stayed held after the request gave up ({err}): value {value:?}, {pttl} ms left");
        }
    };
    assert!(guard.release().await.expect("release"));
}

/// The same, one call at a time on the backend: an acquisition held up on its way times out; the
/// same owner asks again, on a new connection, takes the key and releases it (a request that
/// rode out the timeout, then its guard). When the held-up acquisition runs after that, it must
/// not take the key for that owner, whose release is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acquisition_does_not_outlive_its_owners_release_on_a_new_connection() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let mut conn = inspector(&server.url()).await;
    let backend = connect(&proxy.url()).await;
    let key = FullKey::new("", "late-owner");
    let ttl = Duration::from_secs(30);
    // Makes the runtime's connection, and loads the scripts: each later call is one EVALSHA.
    assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
    assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    let before = evalsha_calls(&mut conn).await;

    proxy.hold();
    let held_up = backend.try_acquire(&key, "owner", ttl).await;
    assert!(
        matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
        "the held-up acquisition ended with {held_up:?}, not a call timeout"
    );
    let again = backend.try_acquire(&key, "owner", ttl).await;
    assert!(matches!(again, Ok(TryAcquire::Acquired { .. })), "asked again on a new connection: {again:?}");
    assert!(backend.release(&key, "owner").await.expect("release on the new connection").was_held);
    assert_eq!(evalsha_calls(&mut conn).await, before + 2, "the held-up acquisition has not run yet");

    proxy.deliver_held();
    poll_until(MARGIN, "the held-up acquisition runs", || {
        let mut conn = conn.clone();
        async move { evalsha_calls(&mut conn).await >= before + 3 }
    })
    .await;
    let taken = tokio::time::timeout(CALL_TIMEOUT * 2 + MARGIN, async {
        loop {
            if let Ok(TryAcquire::Acquired { .. }) = backend.try_acquire(&key, "next", ttl).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if taken.is_err() {
        let value: Option<String> = redis_cmd(&mut conn, &["GET", "late-owner"]).await;
        let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "late-owner"]).await;
        panic!("the key stayed held after its owner released it: value {value:?}, {pttl} ms left");
    }
    assert!(backend.release(&key, "next").await.expect("release").was_held);
}

/// An acquisition held up on its way times out on a current-thread runtime, and that runtime
/// ends right after (a `#[tokio::test]`, a CLI that leaves `block_on`): the connection it went
/// on dies with it, and nothing can be sent behind it there any more. The request's claim
/// releases the key from dlock's own runtime, on a new connection, before the held-up script
/// runs. When it runs after all, the key must not stay held for the owner that gave up (for its
/// whole ttl of 30 s): another client gets it once the acquisition's bytes can no longer
/// arrive (the release is sent again then).
#[test]
fn a_late_acquisition_does_not_keep_the_key_after_its_runtime_ended() {
    late_acquisition_after_its_runtime_ended(false);
}

/// As above, with the owner's release sent from that current-thread runtime before it ends
/// (the owner asked again on a new connection, took the key and released it): the release
/// behind the held-up acquisition must not depend on that runtime running on afterwards.
#[test]
fn a_late_acquisition_does_not_outlive_a_release_sent_just_before_its_runtime_ended() {
    late_acquisition_after_its_runtime_ended(true);
}

fn late_acquisition_after_its_runtime_ended(released_on_that_runtime: bool) {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let outer = runtime(true);
    let server = RedisServer::start();
    let proxy = outer.block_on(BlackHoleProxy::start(server.port()));
    let url = proxy.url();
    let backend = outer.block_on(connect(&url));
    let mut conn = outer.block_on(inspector(&server.url()));
    let key = FullKey::new("", "late-runtime");
    let ttl = Duration::from_secs(30);
    let caller = runtime(false);
    let releases = if released_on_that_runtime {
        // Makes the caller's connection, and loads the scripts: each later call is one EVALSHA.
        caller.block_on(async {
            assert!(matches!(
                backend.try_acquire(&key, "warm-up", ttl).await,
                Ok(TryAcquire::Acquired { .. })
            ));
            assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
        });
        let before = outer.block_on(evalsha_calls(&mut conn));
        proxy.hold();
        caller.block_on(async {
            let held_up = backend.try_acquire(&key, "owner", ttl).await;
            assert!(
                matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
                "the held-up acquisition ended with {held_up:?}, not a call timeout"
            );
            let again = backend.try_acquire(&key, "owner", ttl).await;
            assert!(
                matches!(again, Ok(TryAcquire::Acquired { .. })),
                "asked again on a new connection: {again:?}"
            );
            assert!(backend.release(&key, "owner").await.expect("release on the new connection").was_held);
        });
        before + 2
    } else {
        let service = LockService::new(backend);
        caller.block_on(async {
            let guard =
                service.lock("late-runtime").wait(Duration::ZERO).await.expect("lock through the proxy");
            assert!(guard.release().await.expect("release"));
        });
        let before = outer.block_on(evalsha_calls(&mut conn));
        proxy.hold();
        caller.block_on(async {
            match service.lock("late-runtime").ttl(ttl).wait(Duration::ZERO).await {
                Err(Error::Backend { source, .. }) => {
                    assert_eq!(source.kind(), BackendErrorKind::Timeout, "{source}")
                }
                other => panic!("the held-up acquisition ended with {other:?}, not a call timeout"),
            }
        });
        before + 1
    };
    drop(caller);
    outer.block_on(async {
        // The claim's release (or the owner's, done already) runs while the acquisition is
        // still held up.
        poll_until(CALL_TIMEOUT * 2 + MARGIN, "the release runs", || {
            let mut conn = conn.clone();
            async move { evalsha_calls(&mut conn).await >= releases }
        })
        .await;
        assert_eq!(evalsha_calls(&mut conn).await, releases, "the held-up acquisition has not run yet");
        proxy.deliver_held();
        poll_until(MARGIN, "the held-up acquisition runs", || {
            let mut conn = conn.clone();
            async move { evalsha_calls(&mut conn).await > releases }
        })
        .await;
        let other = LockService::new(connect(&server.url()).await);
        let guard = match other.lock("late-runtime").wait(KERNEL_GIVES_UP + MARGIN).await {
            Ok(guard) => guard,
            Err(err) => {
                let value: Option<String> = redis_cmd(&mut conn, &["GET", "late-runtime"]).await;
                let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "late-runtime"]).await;
                panic!(
                    "the key stayed held after its owner gave up ({err}): value {value:?}, {pttl} ms left"
                );
            }
        };
        assert!(guard.release().await.expect("release"));
    });
}

/// An acquisition held up on its way times out on a current-thread runtime, its owner releases
/// (behind it on its connection, and on a new one), and the runtime ends, closing that
/// connection before the release behind could follow the acquisition. The release is sent
/// again once the acquisition's bytes can no longer arrive: when the kernel gives up on them
/// (`TCP_USER_TIMEOUT`: twice the call timeout, but at least 1 s — here 1 s), not before.
#[test]
fn a_release_is_sent_again_only_once_the_late_acquisition_can_no_longer_arrive() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let outer = runtime(true);
    let server = RedisServer::start();
    let proxy = outer.block_on(BlackHoleProxy::start(server.port()));
    let backend = outer.block_on(connect(&proxy.url()));
    let mut conn = outer.block_on(inspector(&server.url()));
    let key = FullKey::new("", "sent-again");
    let ttl = Duration::from_secs(30);
    let caller = runtime(false);
    // Makes the caller's connection, and loads the scripts: each later call is one EVALSHA.
    caller.block_on(async {
        assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
        assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    });
    let before = outer.block_on(evalsha_calls(&mut conn));
    proxy.hold();
    let gave_up = caller.block_on(async {
        let held_up = backend.try_acquire(&key, "owner", ttl).await;
        let gave_up = Instant::now();
        assert!(
            matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
            "the held-up acquisition ended with {held_up:?}, not a call timeout"
        );
        assert!(!backend.release(&key, "owner").await.expect("release on a new connection").was_held);
        gave_up
    });
    drop(caller);
    outer.block_on(async {
        poll_until(KERNEL_GIVES_UP + CALL_TIMEOUT + MARGIN, "the release sent again", || {
            let mut conn = conn.clone();
            async move { evalsha_calls(&mut conn).await >= before + 2 }
        })
        .await;
    });
    let sent_again = gave_up.elapsed();
    // (Less 100 ms for the time between the give-up and this test's reading of the clock.)
    assert!(
        sent_again + Duration::from_millis(100) >= KERNEL_GIVES_UP,
        "sent again {sent_again:?} after the give-up, before the kernel gives up on the acquisition ({KERNEL_GIVES_UP:?})"
    );
    proxy.deliver_held();
}

/// Acquisitions held up on their way time out: their connections are kept, one per
/// connection however many acquisitions went unanswered on it, and each is let go (with its
/// socket) once a late run of its acquisitions would have run out anyway — also when no call
/// comes after them to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_kept_for_unanswered_acquisitions_are_one_each_and_let_go_in_time() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let backend = Arc::new(connect(&proxy.url()).await);
    let ttl = Duration::from_millis(100);
    assert_eq!(backend.kept_connections(), 0);
    for (round, acquisitions) in [(1, 4), (2, 3)] {
        // Makes the runtime's connection, which then holds back what it is sent.
        let warm = FullKey::new("", &format!("kept-warm-up-{round}"));
        assert!(matches!(backend.try_acquire(&warm, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
        proxy.hold();
        // Side by side on the runtime's connection; it times out and is replaced after them.
        let calls = (0..acquisitions).map(|n| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                let key = FullKey::new("", &format!("kept-{round}-{n}"));
                backend.try_acquire(&key, &format!("owner-{round}-{n}"), ttl).await
            })
        });
        for call in calls.collect::<Vec<_>>() {
            let answer = call.await.expect("join");
            assert!(
                matches!(&answer, Err(err) if err.kind() == BackendErrorKind::Timeout),
                "a held-up acquisition ended with {answer:?}, not a call timeout"
            );
        }
        assert_eq!(
            backend.kept_connections(),
            round,
            "one kept connection per connection, after round {round}"
        );
    }
    // Kept for the ttl and two call timeouts after the last acquisition on it gave up.
    let kept_for = ttl + CALL_TIMEOUT * 2;
    poll_until(kept_for + MARGIN, "the kept connections are let go", || {
        let backend = Arc::clone(&backend);
        async move { backend.kept_connections() == 0 }
    })
    .await;
}

/// Two owners' acquisitions went unanswered on one connection, one with a short ttl and one
/// with a long one. Once the long one's owner has released (its release took the connection
/// to follow the acquisition there) and the short one's time is up, no owner needs the
/// connection any more: it is let go then, not kept as long as the released owner's ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_is_let_go_once_no_owner_it_was_kept_for_needs_it() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let backend = Arc::new(connect(&proxy.url()).await);
    let warm = FullKey::new("", "kept-owners-warm-up");
    assert!(matches!(
        backend.try_acquire(&warm, "warm-up", Duration::from_secs(1)).await,
        Ok(TryAcquire::Acquired { .. })
    ));
    proxy.hold();
    let (short, long) = (Duration::from_millis(100), Duration::from_secs(20));
    // Side by side on the runtime's connection, held up on their way.
    let calls = [("kept-owners-short", short), ("kept-owners-long", long)].map(|(key, ttl)| {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            backend.try_acquire(&FullKey::new("", key), &format!("{key}-owner"), ttl).await
        })
    });
    for call in calls {
        let answer = call.await.expect("join");
        assert!(
            matches!(&answer, Err(err) if err.kind() == BackendErrorKind::Timeout),
            "a held-up acquisition ended with {answer:?}, not a call timeout"
        );
    }
    let gave_up = Instant::now();
    assert_eq!(backend.kept_connections(), 1, "one connection, kept for both owners");
    // The long one's owner releases (on a new connection; its release behind the acquisition
    // waits in the proxy).
    let key = FullKey::new("", "kept-owners-long");
    assert!(!backend.release(&key, "kept-owners-long-owner").await.expect("release").was_held);
    assert_eq!(backend.kept_connections(), 1, "still kept for the short one's owner, who has not released");
    // The short one's late run no longer matters after its ttl and two call timeouts.
    let needed_until = short + CALL_TIMEOUT * 2;
    let let_go = poll_until(needed_until + MARGIN, "the kept connection let go", || {
        let backend = Arc::clone(&backend);
        async move { backend.kept_connections() == 0 }
    })
    .await;
    assert!(gave_up.elapsed() + MARGIN >= needed_until, "let go too early: {let_go:?}");
}

/// An acquisition given up on a runtime whose clock is paused and an hour ahead (a test that
/// advanced it) keeps its connection for the ttl and two call timeouts of real time, as any
/// other: what is kept is timed on the clock of the network and of Redis, which did not move.
#[test]
fn a_connection_kept_by_a_runtime_with_an_advanced_paused_clock_is_let_go_in_time() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let outer = runtime(true);
    let server = RedisServer::start();
    let proxy = outer.block_on(BlackHoleProxy::start(server.port()));
    let backend = outer.block_on(connect(&proxy.url()));
    let key = FullKey::new("", "paused-clock");
    let ttl = Duration::from_millis(100);
    let caller = runtime(false);
    caller.block_on(async {
        // Makes the caller's connection (on its own clock, running).
        assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
        assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(3600)).await;
        proxy.hold();
        // Sent on the caller's connection, held up on its way, and dropped by its caller.
        let mut acquisition = std::pin::pin!(backend.try_acquire(&key, "owner", ttl));
        let sending = Instant::now();
        while proxy.held_bytes() == 0 {
            std::future::poll_fn(|cx| {
                assert!(acquisition.as_mut().poll(cx).is_pending(), "the held-up acquisition answered");
                std::task::Poll::Ready(())
            })
            .await;
            // (On this clock a sleep would not wait: let the connection's driver write.)
            tokio::task::yield_now().await;
            assert!(sending.elapsed() < MARGIN, "the acquisition was not sent within {MARGIN:?}");
        }
    });
    assert_eq!(backend.kept_connections(), 1, "the dropped acquisition's connection is kept");
    outer.block_on(poll_until(ttl + CALL_TIMEOUT * 2 + MARGIN, "the kept connection let go", || async {
        backend.kept_connections() == 0
    }));
}

/// A call timeout meant as "no bound" (`Duration::MAX`): an acquisition dropped by its caller
/// before its answer came (here: held up on its way) keeps its connection, and the owner's
/// release goes behind it there — the times computed for both do not overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_dropped_under_an_enormous_call_timeout_is_released_behind() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let server = RedisServer::start();
    let proxy = BlackHoleProxy::start(server.port()).await;
    let mut conn = inspector(&server.url()).await;
    let backend = Arc::new(dlock_tests::connect_redis_with(&proxy.url(), Duration::MAX).await);
    let key = FullKey::new("", "enormous-timeout");
    let ttl = Duration::from_secs(30);
    // Makes the runtime's connection, and loads the scripts: each later call is one EVALSHA.
    assert!(matches!(backend.try_acquire(&key, "warm-up", ttl).await, Ok(TryAcquire::Acquired { .. })));
    assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    let before = evalsha_calls(&mut conn).await;
    proxy.hold();
    let acquisition = tokio::spawn({
        let (backend, key) = (Arc::clone(&backend), key.clone());
        async move { backend.try_acquire(&key, "owner", ttl).await }
    });
    poll_until(MARGIN, "the acquisition sent", || std::future::ready(proxy.held_bytes() > 0)).await;
    // Its caller gives up on it.
    acquisition.abort();
    match acquisition.await {
        Err(err) if err.is_cancelled() => {}
        other => panic!("the held-up acquisition was not just dropped: {other:?}"),
    }
    assert_eq!(backend.kept_connections(), 1, "the dropped acquisition's connection is kept");
    // The connection missed no call timeout: it is still the runtime's, and the release waits
    // there too, behind the release sent behind the acquisition.
    let release = tokio::spawn({
        let (backend, key) = (Arc::clone(&backend), key.clone());
        async move { backend.release(&key, "owner").await }
    });
    proxy.deliver_held();
    let released = release.await.expect("join").expect("release");
    assert!(!released.was_held, "the release behind the acquisition freed the key first");
    assert_eq!(evalsha_calls(&mut conn).await, before + 3, "the acquisition, then both releases");
    assert!(!redis_cmd::<bool>(&mut conn, &["EXISTS", "enormous-timeout"]).await, "the key is free");
    assert_eq!(backend.kept_connections(), 0, "the release took the kept connection");
}

// ---------------------------------------------------------------------------------------------
// Redis that loses data.

/// Redis restarts empty (no persistence, as the tests and CI run it): the fencing counter is
/// gone, and the next token must still be greater than every token handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_after_redis_loses_its_data() {
    let mut server = RedisServer::start();
    let service = LockService::new(connect(&server.url()).await);
    let mut before = 0;
    for _ in 0..3 {
        let guard = service.lock("epoch").await.expect("lock");
        before = before.max(guard.fencing_token());
        assert!(guard.release().await.expect("release"));
    }
    server.restart();
    // The first calls may meet the old connection's end; a Redis that never answers again is a
    // failure, not a hang.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match service.lock("epoch").wait(Duration::ZERO).await {
            Ok(guard) => break guard,
            Err(err) => {
                assert!(Instant::now() < deadline, "no lock within 10 s of the restart: {err}");
                eprintln!("after the restart: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        after.fencing_token() > before,
        "token {} after the restart is not above {before}, handed out before it",
        after.fencing_token()
    );
    assert!(after.release().await.expect("release"));
}

/// A Redis whose `maxmemory-policy` may evict dlock's keys is reported at connect.
#[tokio::test]
async fn an_evicting_redis_is_reported() {
    let evicting = RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    assert!(connect(&evicting.url()).await.may_evict_locks());
    let safe = RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    assert!(!connect(&safe.url()).await.may_evict_locks());
    let unlimited = RedisServer::start();
    assert!(!connect(&unlimited.url()).await.may_evict_locks());
}

// ---------------------------------------------------------------------------------------------
// Keys confined by ACLs; forged and replayed notices.

/// The README's recipe, for a user whose keys and channels all start with `app:`.
const ACL_RECIPE: &[&str] = &[
    "on",
    ">app-password",
    "resetkeys",
    "~app:*",
    "resetchannels",
    "&app:*",
    "-@all",
    "+evalsha",
    "+eval",
    "+ping",
    "+subscribe",
    "+unsubscribe",
    "+get",
    "+set",
    "+del",
    "+pexpire",
    "+pttl",
    "+hget",
    "+hset",
    "+hdel",
    "+hgetall",
    "+exists",
    "+time",
    "+publish",
];

async fn acl_setuser(conn: &mut redis::aio::MultiplexedConnection, user: &str, rules: &[&str]) {
    let mut args = vec!["ACL", "SETUSER", user];
    args.extend_from_slice(rules);
    let () = redis_cmd(conn, &args).await;
}

/// A user confined to the prefix by the README's recipe can lock, wait, be handed the key,
/// renew and release; everything dlock stored lives under the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_recipe_confines_dlock_to_the_prefix() {
    let server = RedisServer::start();
    let mut admin = inspector(&server.url()).await;
    acl_setuser(&mut admin, "app", ACL_RECIPE).await;
    let url = format!("redis://app:app-password@127.0.0.1:{}", server.port());
    let service = |backend| LockService::builder(backend).key_prefix("app:").build();
    let holder = service(connect(&url).await);
    let waiter = service(connect(&url).await);

    // A ttl short enough that the keeper renews it while the waiter waits.
    let guard = holder.lock("user:1").ttl(Duration::from_millis(300)).await.expect("lock as the app user");
    let first = guard.fencing_token();
    let call = tokio::spawn(async move {
        let guard = waiter.lock("user:1").ttl(Duration::from_secs(5)).wait(Duration::from_secs(10)).await?;
        let token = guard.fencing_token();
        guard.release().await?;
        Ok::<_, Error>(token)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!guard.is_lost(), "renewed as the app user");
    assert!(guard.release().await.expect("release as the app user"));
    let handed = call.await.expect("join").expect("the waiter is handed the key");
    assert!(handed > first);

    let keys: Vec<String> = redis_cmd(&mut admin, &["KEYS", "*"]).await;
    assert!(keys.iter().all(|key| key.starts_with("app:")), "keys outside the prefix: {keys:?}");
}

/// A user confined to other keys and channels cannot publish on a lock's notice channel: it
/// cannot hand anybody a key. A notice recorded earlier and sent again (a replay) names an
/// owner token of a past acquisition or a token not newer than the waiter's last attempt: it is
/// ignored, and nobody gets in while the key is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_notices_make_no_second_holder() {
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = inspector(&url).await;
    acl_setuser(
        &mut admin,
        "forger",
        &["on", ">forger-password", "resetkeys", "~other:*", "resetchannels", "&other:*", "+@all"],
    )
    .await;
    let forger_url = format!("redis://forger:forger-password@127.0.0.1:{}", server.port());
    let mut forger = inspector(&forger_url).await;
    // Every channel a process hears `app:k` on lives under the key.
    let b_backend = connect(&url).await;
    let channel = b_backend.notice_channel("app:k");
    let refused = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("g:99999999999999999:anyone")
        .query_async::<i64>(&mut forger)
        .await;
    assert!(refused.is_err_and(|err| err.code() == Some("NOPERM")), "the forger published on {channel}");

    // Record a real hand-off notice, on b's channel.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut spy = client.get_async_pubsub().await.expect("spy connection");
    spy.subscribe(&channel).await.expect("spy subscribes");
    let service = |backend| LockService::builder(backend).key_prefix("app:").build();
    let (a, b) = (service(connect(&url).await), service(b_backend));
    let guard = a.lock("k").await.expect("a holds");
    let b_call = tokio::spawn(async move { b.lock("k").wait(Duration::from_secs(10)).await });
    poll_until(Duration::from_secs(5), "b waits in line", || {
        let mut admin = admin.clone();
        async move { redis_cmd::<i64>(&mut admin, &["HLEN", &RedisBackend::line_key("app:k")]).await >= 1 }
    })
    .await;
    assert!(guard.release().await.expect("release"));
    let b_guard = b_call.await.expect("join").expect("b is handed the key");
    use futures_util::StreamExt;
    let recorded: Vec<u8> = tokio::time::timeout(Duration::from_secs(5), spy.on_message().next())
        .await
        .expect("the spy heard the hand-off")
        .expect("a message")
        .get_payload_bytes()
        .to_vec();
    assert!(recorded.starts_with(b"g:"), "{:?}", String::from_utf8_lossy(&recorded));
    assert!(b_guard.release().await.expect("release"));

    // c holds, d waits; the old notice is sent again, to d's channel and to b's: nobody gets in
    // while c holds.
    let d_backend = connect(&url).await;
    let d_channel = d_backend.notice_channel("app:k");
    let (c, d) = (service(connect(&url).await), service(d_backend));
    let c_guard = c.lock("k").await.expect("c holds");
    let got_in = Arc::new(AtomicBool::new(false));
    let d_call = tokio::spawn({
        let got_in = Arc::clone(&got_in);
        async move {
            let guard = d.lock("k").wait(Duration::from_secs(10)).await?;
            got_in.store(true, Ordering::SeqCst);
            guard.release().await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for to in [&d_channel, &channel] {
        let _: i64 = redis_cmd(&mut admin, &["PUBLISH", to, &String::from_utf8_lossy(&recorded)]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!got_in.load(Ordering::SeqCst), "a replayed notice let d in while c holds the key");
    assert!(c_guard.release().await.expect("release"));
    assert!(d_call.await.expect("join").expect("d gets the key after c"));
}

// ---------------------------------------------------------------------------------------------
// Refusals change nothing.

/// A release that would hand the key to a waiting process, by a user who may not publish on
/// the key's channel, is refused before it changes anything: the key is not handed over
/// without telling the waiter (who would otherwise learn it only at its next recheck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_refused_for_want_of_publish_changes_nothing() {
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = inspector(&url).await;
    acl_setuser(&mut admin, "mute", &["on", ">mute-password", "~*", "resetchannels", "+@all"]).await;
    let mute_url = format!("redis://mute:mute-password@127.0.0.1:{}", server.port());
    let holder = LockService::new(connect(&mute_url).await);
    let waiter = LockService::new(connect(&url).await);
    let guard = holder.lock("mute").ttl(Duration::from_secs(1)).await.expect("lock");
    let value: String = redis_cmd(&mut admin, &["GET", "mute"]).await;
    let call = tokio::spawn(async move { waiter.lock("mute").wait(Duration::from_secs(10)).await });
    poll_until(Duration::from_secs(5), "the waiter is in line", || {
        let mut admin = admin.clone();
        async move { redis_cmd::<i64>(&mut admin, &["HLEN", &RedisBackend::line_key("mute")]).await >= 1 }
    })
    .await;

    let refused = guard.release().await;
    match refused {
        Err(Error::Backend { source, .. }) => {
            assert_eq!(source.kind(), BackendErrorKind::Permission, "{source}")
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    let now: Option<String> = redis_cmd(&mut admin, &["GET", "mute"]).await;
    assert_eq!(now.as_deref(), Some(value.as_str()), "the refused release changed the lock");
    // The waiter gets the key when the lease ends.
    let guard = call.await.expect("join").expect("the waiter gets the key after the lease");
    assert!(guard.release().await.expect("release"));
}

/// A waiter whose user may not subscribe to the key's notice channel (refused with `NOPERM`)
/// asks as often as one without notices, and gets the key as soon as it is released. Before,
/// it stood in its registration for the whole call timeout (10 s here), then asked once a
/// second, though no notice could reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_refused_its_subscription_polls_for_the_key() {
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = inspector(&url).await;
    acl_setuser(&mut admin, "deaf", &["on", ">deaf-password", "~*", "resetchannels", "+@all"]).await;
    let deaf_url = format!("redis://deaf:deaf-password@127.0.0.1:{}", server.port());
    let holder = LockService::new(connect(&url).await);
    let waiter = LockService::new(dlock_tests::connect_redis_with(&deaf_url, Duration::from_secs(10)).await);
    let guard = holder.lock("deaf").ttl(Duration::from_secs(30)).await.expect("lock");
    let call = tokio::spawn(async move {
        let guard = waiter.lock("deaf").wait(Duration::from_secs(30)).await;
        (guard, Instant::now())
    });
    poll_until(Duration::from_secs(5), "the waiter's subscription is refused", || {
        let mut admin = admin.clone();
        async move { !redis_cmd::<Vec<redis::Value>>(&mut admin, &["ACL", "LOG"]).await.is_empty() }
    })
    .await;
    let released = Instant::now();
    assert!(guard.release().await.expect("release"));
    let (guard, got_in) = call.await.expect("no panic");
    let guard = guard.expect("the waiter gets the key");
    let after = got_in - released;
    assert!(after < MARGIN * 2, "the waiter got in {after:?} after the release");
    assert!(guard.release().await.expect("release"));
}

/// Redis runs out of memory while a request waits: its attempts are refused with `OOM`, which
/// it rides out like a restart; once memory is free again it gets the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_an_out_of_memory_redis() {
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = inspector(&url).await;
    let holder = LockService::new(connect(&url).await);
    let waiter = LockService::new(connect(&url).await);
    let guard = holder.lock("oom").ttl(Duration::from_secs(10)).await.expect("holder");
    let call = tokio::spawn(async move { waiter.lock("oom").wait(Duration::from_secs(15)).await });
    poll_until(Duration::from_secs(5), "the waiter is in line", || {
        let mut admin = admin.clone();
        async move { redis_cmd::<i64>(&mut admin, &["HLEN", &RedisBackend::line_key("oom")]).await >= 1 }
    })
    .await;
    let () = redis_cmd(&mut admin, &["SET", "ballast", &"x".repeat(4 << 20)]).await;
    let () = redis_cmd(&mut admin, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    let () = redis_cmd(&mut admin, &["CONFIG", "SET", "maxmemory", "1mb"]).await;
    // The waiter's next attempts (one a second) are refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!call.is_finished(), "the waiter gave up on an out-of-memory Redis: {:?}", call.await);
    let () = redis_cmd(&mut admin, &["CONFIG", "SET", "maxmemory", "0"]).await;
    let _: i64 = redis_cmd(&mut admin, &["DEL", "ballast"]).await;
    let _ = guard.release().await;
    let guard = call.await.expect("join").expect("the waiter gets the key once memory is free");
    assert!(guard.release().await.expect("release"));
}

// ---------------------------------------------------------------------------------------------
// Concurrency inside one task.

/// Inside a body that holds `account:1`, two re-entrant withdrawals run side by side in one
/// task (`join!`): they take turns, so 100 pays one withdrawal of 80, not two.
#[tokio::test(flavor = "current_thread")]
async fn reentrant_bodies_side_by_side_take_turns() {
    const SVC: &str = "faults:join";
    static BALANCE: AtomicI64 = AtomicI64::new(100);
    static INSIDE: AtomicUsize = AtomicUsize::new(0);

    #[distributed_lock(key = "account:<id>", service = SVC, wait = "5s")]
    async fn withdraw(id: u32, amount: i64) -> Result<bool, Error> {
        assert_eq!(INSIDE.fetch_add(1, Ordering::SeqCst), 0, "two withdrawals of account {id} at once");
        let balance = BALANCE.load(Ordering::SeqCst);
        tokio::task::yield_now().await; // the other withdrawal would run here
        let paid = balance >= amount;
        if paid {
            BALANCE.store(balance - amount, Ordering::SeqCst);
        }
        // A nested call on the same key inside a re-entrant body does not wait for itself.
        audit(id).await?;
        INSIDE.fetch_sub(1, Ordering::SeqCst);
        Ok(paid)
    }

    #[distributed_lock(key = "account:<id>", service = SVC)]
    async fn audit(id: u32) -> Result<(), Error> {
        let _ = id;
        Ok(())
    }

    #[distributed_lock(key = "account:<id>", service = SVC)]
    async fn settle(id: u32) -> Result<(bool, bool), Error> {
        let (a, b) = tokio::join!(withdraw(id, 80), withdraw(id, 80));
        Ok((a?, b?))
    }

    dlock::register(SVC, LockService::new(MemoryBackend::new())).expect("register");
    let (a, b) = settle(1).await.expect("settle");
    assert!(a ^ b, "exactly one withdrawal is paid: {a}, {b}");
    assert_eq!(BALANCE.load(Ordering::SeqCst), 20, "100 - 80, once");
}

/// An annotated call awaited in another's body adds its state to the outer future once: the
/// body is boxed, so nesting does not multiply future sizes (which overflowed the stack).
#[test]
fn nested_annotated_calls_do_not_grow_the_future() {
    #[distributed_lock(key = "n:<id>", service = "faults:sizes")]
    async fn leaf(id: u32) -> Result<(), Error> {
        let _ = id;
        Ok(())
    }
    #[distributed_lock(key = "n:<id>", service = "faults:sizes")]
    async fn middle(id: u32) -> Result<(), Error> {
        leaf(id).await?;
        leaf(id).await
    }
    #[distributed_lock(key = "n:<id>", service = "faults:sizes")]
    async fn top(id: u32) -> Result<(), Error> {
        let (a, b) = tokio::join!(middle(id), middle(id));
        a.and(b)
    }
    let (leaf, top) = (std::mem::size_of_val(&leaf(1)), std::mem::size_of_val(&top(1)));
    assert_eq!(leaf, top, "a leaf call's future is {leaf} bytes, a call two levels up {top}");
}

/// The turns are bounded by the request's wait: a re-entrant body that cannot have its turn in
/// time returns `Timeout`.
#[tokio::test(flavor = "current_thread")]
async fn a_reentrant_body_waits_for_its_turn_at_most_its_wait() {
    const SVC: &str = "faults:turn-timeout";
    #[distributed_lock(key = "k", service = SVC, wait = "100ms")]
    async fn slow(log: Arc<Mutex<Vec<&'static str>>>) -> Result<(), Error> {
        log.lock().unwrap_or_else(PoisonError::into_inner).push("slow");
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }
    #[distributed_lock(key = "k", service = SVC)]
    async fn outer(log: Arc<Mutex<Vec<&'static str>>>) -> Result<(), Error> {
        let (a, b) = tokio::join!(slow(Arc::clone(&log)), slow(Arc::clone(&log)));
        assert!(a.is_ok(), "{a:?}");
        assert!(matches!(b, Err(Error::Timeout { .. })), "{b:?}");
        Ok(())
    }
    dlock::register(SVC, LockService::new(MemoryBackend::new())).expect("register");
    let log = Arc::new(Mutex::new(Vec::new()));
    outer(Arc::clone(&log)).await.expect("outer");
    assert_eq!(*log.lock().unwrap_or_else(PoisonError::into_inner), ["slow"], "only one body ran");
}

// ---------------------------------------------------------------------------------------------
// A process frozen while it holds a lock (a GC pause, SIGSTOP).

/// The process is frozen past its lease while the body waits on a timer; when it runs again,
/// both the body's timer and the lease's deadline have passed. The body must not run on —
/// not even to its next `.await` — because the lease has ended: it is dropped first. (Found
/// by dlock-check: the attribute polled the body before the lease, so a resumed body made one
/// more write after its lease had ended.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_body_resumed_after_its_lease_ended_does_not_run_on() {
    const SVC: &str = "faults:frozen";
    static WRITES: Mutex<Vec<tokio::time::Instant>> = Mutex::new(Vec::new());

    #[distributed_lock(key = "frozen", service = SVC, ttl = "100ms", renew = false)]
    async fn writer() -> Result<(), Error> {
        loop {
            tokio::time::sleep(Duration::from_millis(30)).await;
            WRITES.lock().unwrap_or_else(PoisonError::into_inner).push(tokio::time::Instant::now());
        }
    }

    dlock::register(SVC, LockService::new(MemoryBackend::new())).expect("register");
    let started = tokio::time::Instant::now();
    let call = tokio::spawn(writer());
    // Let the body write once, then freeze the whole process for 200 ms in one step: when it
    // runs again, its timer and its lease's deadline have both passed.
    tokio::time::sleep(Duration::from_millis(40)).await;
    tokio::time::advance(Duration::from_millis(200)).await;
    let outcome = call.await.expect("join");
    assert!(matches!(outcome, Err(Error::Lost { .. })), "{outcome:?}");
    let deadline = started + Duration::from_millis(100);
    let writes = WRITES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(!writes.is_empty(), "the body wrote while it held the lock");
    assert!(
        writes.iter().all(|&at| at < deadline),
        "the body wrote {:?} after its lease had ended",
        writes.iter().filter(|&&at| at >= deadline).map(|&at| at - started).collect::<Vec<_>>()
    );
}
