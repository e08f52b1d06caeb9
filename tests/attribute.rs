//! `#[distributed_lock]` at run time: what the generated code does, checked against the lock
//! store itself — a `MemoryBackend`, and the machine's shared Redis (each test in a key
//! namespace of its own, inspected over a separate connection).
//!
//! Every test in [`on_both_backends!`] runs twice, as `memory_backend::<name>` and
//! `redis_backend::<name>`. Each run registers a named service of its own
//! (`attribute:<backend>:<name>`, connected in the test's own runtime: a `RedisBackend`'s
//! tasks end with the runtime that connected it) and declares the annotated fns it needs
//! inside its body with `service = SVC`, so tests never share a service, a key prefix or a
//! fencing counter. The global service is touched by one test only
//! ([`global_service_is_used_when_no_service_is_named`]); one test freezes a private
//! `redis-server` ([`dropping_a_call_while_its_acquire_is_on_the_wire_leaves_no_ownerless_lock`]).
//!
//! Ordering is shown by evidence recorded under the lock (instants taken inside bodies,
//! fencing tokens, flags), and "released" by looking at the store; sleeps only give a
//! violation the chance to happen and are followed by an assertion.
//!
//! Tests that document a dlock bug are named for the behaviour they expect and fail until it
//! is fixed: `lock_errors_name_the_full_key_as_documented`,
//! `dropping_a_call_that_waits_for_its_second_key_frees_the_first`,
//! `dropping_a_call_while_its_acquire_is_on_the_wire_leaves_no_ownerless_lock`.

#[path = "support/mod.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dlock::{Error, LostReason, distributed_lock};
use support::{Store, poll_until};
use tokio::sync::{Barrier, oneshot};

/// Slack on top of a bound the library promises (a loaded two-core machine).
const MARGIN: Duration = Duration::from_millis(300);

/// How long a lock may take to disappear from the store after a background release. Far
/// below the default ttl (30 s), so expiry cannot pass for a release.
const RELEASE_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
}

/// A fresh store for one test, with a service over it registered as `name`.
async fn setup(backend: Backend, name: &'static str) -> Store {
    let store = match backend {
        Backend::Memory => Store::memory(name),
        Backend::Redis => Store::redis(&support::shared_redis_url(), name).await,
    };
    dlock::register(name, store.service().await).unwrap_or_else(|err| panic!("registering `{name}`: {err}"));
    store
}

/// Redis: the owner token stored under `key` (panics if the key is absent). Memory: `None`.
async fn owner_of(store: &Store, key: &str) -> Option<String> {
    store
        .stored_value(key)
        .await
        .map(|value| value.unwrap_or_else(|| panic!("`{}` is not in Redis", store.full_key(key))))
}

/// How many keys the store holds (memory only).
fn held_count(store: &Store) -> Option<usize> {
    match store {
        Store::Memory { backend, .. } => Some(backend.held_count()),
        Store::Redis { .. } => None,
    }
}

fn assert_owner_token(owner: &str) {
    assert!(
        owner.len() == 32 && owner.chars().all(|c| c.is_ascii_hexdigit()),
        "the lock's value is an owner token (128 bits in hex), not `{owner}`"
    );
}

fn assert_strictly_increasing(tokens: &[u64], what: &str) {
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "{what}: fencing tokens not strictly increasing: {tokens:?}"
    );
}

/// Fails to compile unless `future` can be handed to `tokio::spawn`.
fn send_static<F: Future + Send + 'static>(future: F) -> F {
    future
}

/// What a store holds, seen from inside a body.
#[derive(Debug)]
struct Contents {
    /// Whether the key the body expects is held.
    held: bool,
    /// Redis: every lock key, prefixed.
    keys: Option<Vec<String>>,
    /// Memory: how many keys are held.
    count: Option<usize>,
}

impl Contents {
    async fn of(store: &Store, key: &str) -> Self {
        Self { held: store.is_held(key).await, keys: store.keys().await, count: held_count(store) }
    }

    /// `key` is held, and nothing else is.
    fn assert_only(&self, store: &Store, key: &str) {
        assert!(self.held, "`{key}` was not held inside the body: {self:?}");
        match (&self.keys, self.count) {
            (Some(keys), _) => assert_eq!(keys, &[store.full_key(key).to_string()], "the lock keys in Redis"),
            (None, Some(count)) => assert_eq!(count, 1, "memory holds one key, and it is `{key}`"),
            (None, None) => unreachable!("a store is Redis or memory"),
        }
    }
}

/// An application error that can carry a lock error.
#[derive(Debug, PartialEq)]
enum AppError {
    Lock(String),
    Rejected { id: u32, held: bool },
}

impl From<Error> for AppError {
    fn from(err: Error) -> Self {
        AppError::Lock(err.to_string())
    }
}

fn check(id: u32, fail: bool, held: bool) -> Result<(), AppError> {
    if fail { Err(AppError::Rejected { id, held }) } else { Ok(()) }
}

/// One `#[tokio::test]` per backend for each fn: `memory_backend::<name>` and
/// `redis_backend::<name>`. In the body, `$store` is the test's [`Store`] and `SVC` the name
/// its service is registered under.
macro_rules! on_both_backends {
    ($($fns:tt)*) => {
        on_backend!(memory_backend, Memory, "attribute:memory:", $($fns)*);
        on_backend!(redis_backend, Redis, "attribute:redis:", $($fns)*);
    };
}

/// One module of [`on_both_backends`]: its tests on `Backend::$backend`, each registering its
/// service as `$prefix<name>`.
macro_rules! on_backend {
    ($module:ident, $backend:ident, $prefix:literal, $(
        $(#[doc = $doc:literal])*
        async fn $name:ident($store:ident) $body:block
    )*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[doc = $doc])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    const SVC: &str = concat!($prefix, stringify!($name));
                    let $store = setup(Backend::$backend, SVC).await;
                    $body
                    $store.cleanup().await;
                }
            )*
        }
    };
}

on_both_backends! {
    /// 1. Inside the body the key is held in the store (Redis: the prefixed key exists and
    /// holds a fresh owner token), `fencing_token()` is the token drawn for this acquisition
    /// (Redis: the fencing counter's value), tokens strictly increase across successive
    /// calls and interleaved manual guards, and the key is free as soon as the call returns.
    async fn body_runs_with_the_lock_held_and_a_fresh_fencing_token(store) {
        #[derive(Debug)]
        struct Inside {
            held: bool,
            owner: Option<String>,
            token: Option<u64>,
            counter: Option<u64>,
        }

        #[distributed_lock(key = "held:<id>", service = SVC)]
        async fn observe(id: u32, store: &Store) -> Result<Inside, Error> {
            let key = format!("held:{id}");
            Ok(Inside {
                held: store.is_held(&key).await,
                owner: owner_of(store, &key).await,
                token: dlock::fencing_token(),
                counter: store.fencing_counter(&key).await,
            })
        }

        let key = "held:7";
        let service = dlock::named(SVC).unwrap();
        let mut tokens = Vec::new();
        let mut owners = Vec::new();
        for round in 0..3 {
            assert_eq!(dlock::fencing_token(), None, "no token outside a body");
            let inside = observe(7, &store).await.unwrap_or_else(|err| panic!("round {round}: {err}"));
            assert!(inside.held, "round {round}: `{key}` was not held while the body ran");
            let token = inside.token.expect("fencing_token() is Some inside the body");
            if store.is_redis() {
                let owner = inside.owner.expect("Redis shows the owner");
                assert_owner_token(&owner);
                owners.push(owner);
                assert_eq!(
                    inside.counter,
                    Some(token),
                    "round {round}: the body's token is not the one Redis drew for this acquisition"
                );
            }
            tokens.push(token);
            assert!(store.is_free(key).await, "round {round}: `{key}` still held after the call returned Ok");
            // A manual guard in between draws from the same sequence.
            let guard = service.lock(key).await.unwrap();
            tokens.push(guard.fencing_token());
            assert!(guard.release().await.unwrap());
        }
        assert_strictly_increasing(&tokens, "annotated calls interleaved with manual guards");
        owners.sort();
        owners.dedup();
        assert_eq!(owners.len(), if store.is_redis() { 3 } else { 0 }, "each call has its own owner token");
    }

    /// 2a. Four calls on one key started together take turns: the [enter, exit] intervals
    /// recorded inside the bodies do not overlap, each enters only after the previous one
    /// exited, and their tokens increase in that order.
    async fn concurrent_calls_on_one_key_take_turns(store) {
        #[distributed_lock(key = "turns:<id>", service = SVC, wait = "10s")]
        async fn take_turn(id: u32, hold: Duration) -> Result<(Instant, Instant, Option<u64>), Error> {
            let enter = Instant::now();
            tokio::time::sleep(hold).await;
            Ok((enter, Instant::now(), dlock::fencing_token()))
        }

        let calls: Vec<_> = (0..4).map(|_| tokio::spawn(take_turn(1, Duration::from_millis(100)))).collect();
        let mut turns = Vec::new();
        for call in calls {
            turns.push(call.await.expect("no panic").expect("every call gets its turn within wait"));
        }
        turns.sort_by_key(|turn| turn.0);
        for pair in turns.windows(2) {
            let ((_, exit, _), (enter, _, _)) = (pair[0], pair[1]);
            assert!(exit <= enter, "two bodies on `turns:1` overlapped: {turns:?}");
        }
        let tokens: Vec<u64> = turns.iter().map(|t| t.2.expect("token inside the body")).collect();
        assert_strictly_increasing(&tokens, "successive holders");
        assert!(store.is_free("turns:1").await);
    }

    /// 2b. A call on a key another process holds waits for it: still pending while the other
    /// holds, and its body is entered only after the other's release began.
    async fn call_waits_while_another_process_holds_the_key(store) {
        #[distributed_lock(key = "turns:<id>", service = SVC, wait = "10s")]
        async fn enter(id: u32) -> Result<Instant, Error> {
            Ok(Instant::now())
        }

        let other = store.service().await;
        let guard = other.lock("turns:2").await.unwrap();
        let call = tokio::spawn(enter(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!call.is_finished(), "the call finished while another process held its key");
        let releasing = Instant::now();
        assert!(guard.release().await.unwrap());
        let entered = tokio::time::timeout(RELEASE_BOUND, call)
            .await
            .expect("the waiting call got in promptly after the release")
            .expect("no panic")
            .expect("acquired within wait");
        assert!(entered >= releasing, "the body ran before the other process released the key");
    }

    /// 2c. Calls on different keys run in parallel: both bodies reach a two-party barrier
    /// (impossible if one excluded the other). Control: on one key the same barrier is never
    /// met, so the check can fail.
    async fn calls_on_different_keys_run_in_parallel(store) {
        #[distributed_lock(key = "meet:<id>", service = SVC, wait = "10s")]
        async fn meet(id: u32, barrier: Arc<Barrier>) -> Result<(), Error> {
            barrier.wait().await;
            Ok(())
        }

        let barrier = Arc::new(Barrier::new(2));
        let a = tokio::spawn(meet(1, Arc::clone(&barrier)));
        let b = tokio::spawn(meet(2, Arc::clone(&barrier)));
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), async { (a.await, b.await) })
            .await
            .expect("calls on `meet:1` and `meet:2` did not run their bodies at the same time");
        a.expect("no panic").expect("meet:1");
        b.expect("no panic").expect("meet:2");

        let barrier = Arc::new(Barrier::new(2));
        let mut a = tokio::spawn(meet(3, Arc::clone(&barrier)));
        let mut b = tokio::spawn(meet(3, Arc::clone(&barrier)));
        let met =
            tokio::time::timeout(Duration::from_millis(500), async { ((&mut a).await, (&mut b).await) })
                .await;
        assert!(met.is_err(), "two calls on `meet:3` were inside their bodies at once: {met:?}");
        a.abort();
        b.abort();
        poll_until(RELEASE_BOUND, "`meet:3` released after both calls were aborted", || {
            store.is_free("meet:3")
        })
        .await;
    }

    /// 3a. Released when the body returns, `Ok` or `Err` (an application error through `?`,
    /// returned unchanged): the key is gone from the store as soon as the call returns.
    async fn released_after_ok_and_after_err(store) {
        #[distributed_lock(key = "res:<id>", service = SVC)]
        async fn fallible(id: u32, fail: bool, store: &Store) -> Result<u32, AppError> {
            let held = store.is_held(&format!("res:{id}")).await;
            check(id, fail, held)?;
            Ok(id + 100)
        }

        assert_eq!(fallible(1, false, &store).await, Ok(101));
        assert!(store.is_free("res:1").await, "still held after the body returned Ok");
        assert_eq!(fallible(2, true, &store).await, Err(AppError::Rejected { id: 2, held: true }));
        assert!(store.is_free("res:2").await, "still held after the body returned Err");
    }

    /// 3b. Released when the body panics: the spawned call's `JoinError` is the body's panic,
    /// and the key (ttl 30 s) leaves the store within a bounded poll; a new call then gets it.
    async fn released_after_the_body_panics(store) {
        #[distributed_lock(key = "panic:<id>", service = SVC)]
        async fn panics(
            id: u32,
            entered: oneshot::Sender<()>,
            go: oneshot::Receiver<()>,
        ) -> Result<(), Error> {
            let _ = entered.send(());
            let _ = go.await;
            if id > 0 {
                panic!("deliberate panic in the body of panic:{id}");
            }
            Ok(())
        }
        #[distributed_lock(key = "panic:<id>", service = SVC, wait = "1s")]
        async fn after(id: u32) -> Result<u32, Error> {
            Ok(id)
        }

        let (entered_tx, entered_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        let call = tokio::spawn(panics(1, entered_tx, go_rx));
        entered_rx.await.expect("the body ran");
        assert!(store.is_held("panic:1").await, "not held while the body ran");
        go_tx.send(()).unwrap();
        let err = call.await.expect_err("the body panicked");
        assert!(err.is_panic(), "{err}");
        let message = err.into_panic().downcast::<String>().map(|m| *m).unwrap_or_default();
        assert!(message.contains("deliberate panic"), "the JoinError is the body's panic: {message:?}");
        let took =
            poll_until(RELEASE_BOUND, "`panic:1` released after the panic", || store.is_free("panic:1"))
                .await;
        eprintln!("released {took:?} after the panic");
        assert_eq!(after(1).await.expect("the key is free for the next call"), 1);
    }

    /// 3c. Released when the caller drops the future mid-body: the body was running with the
    /// key held, the future is dropped, the key (ttl 30 s) leaves the store within a bounded
    /// poll, and a new call gets it at once.
    async fn released_after_the_caller_drops_the_future(store) {
        #[distributed_lock(key = "drop:<id>", service = SVC)]
        async fn long(id: u32, entered: oneshot::Sender<()>, reached: Arc<AtomicBool>) -> Result<(), Error> {
            let _ = entered.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            reached.store(true, Ordering::SeqCst);
            Ok(())
        }
        #[distributed_lock(key = "drop:<id>", service = SVC, wait = "1s")]
        async fn after(id: u32) -> Result<u32, Error> {
            Ok(id)
        }

        let reached = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = oneshot::channel();
        let mut call = Box::pin(long(1, entered_tx, Arc::clone(&reached)));
        tokio::select! {
            result = &mut call => panic!("the long body returned: {result:?}"),
            entered = entered_rx => entered.expect("the body ran"),
        }
        assert!(store.is_held("drop:1").await, "not held while the body ran");
        drop(call);
        let took = poll_until(RELEASE_BOUND, "`drop:1` released after the future was dropped", || {
            store.is_free("drop:1")
        })
        .await;
        eprintln!("released {took:?} after the drop");
        let started = Instant::now();
        assert_eq!(after(1).await.expect("the key is free for the next call"), 1);
        assert!(started.elapsed() < MARGIN, "the next call waited {:?}", started.elapsed());
        assert!(!reached.load(Ordering::SeqCst));
    }

    /// 3d. Dropped while it waits for its second key, a call must give back the first one it
    /// already took (ttl 10 s, so expiry cannot pass for a release) — as it does when that
    /// wait ends in `Error::Timeout` instead.
    async fn dropping_a_call_that_waits_for_its_second_key_frees_the_first(store) {
        #[distributed_lock(
            key = "first:<id>",
            key = "second:<id>",
            service = SVC,
            ttl = "10s",
            wait = "200ms"
        )]
        async fn brief(id: u32, ran: Arc<AtomicBool>) -> Result<u32, Error> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }
        #[distributed_lock(
            key = "first:<id>",
            key = "second:<id>",
            service = SVC,
            ttl = "10s",
            wait = "10s"
        )]
        async fn patient(id: u32, ran: Arc<AtomicBool>) -> Result<u32, Error> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }

        let other = store.service().await;
        let ran = Arc::new(AtomicBool::new(false));

        // "first:1" sorts first: taken, then the wait for "second:1" times out and gives it back.
        let guard = other.lock("second:1").await.unwrap();
        assert!(matches!(brief(1, Arc::clone(&ran)).await, Err(Error::Timeout { .. })));
        assert!(store.is_free("first:1").await, "a timed-out call kept the key it had taken");

        // The same wait, ended by the caller dropping the call.
        let mut call = Box::pin(patient(1, Arc::clone(&ran)));
        tokio::select! {
            result = &mut call => panic!("the call finished while `second:1` was held: {result:?}"),
            _ = poll_until(RELEASE_BOUND, "the call took `first:1` and waits for `second:1`", || {
                store.is_held("first:1")
            }) => {}
        }
        drop(call);
        let freed = tokio::time::timeout(RELEASE_BOUND, async {
            while store.is_held("first:1").await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(guard.release().await.unwrap());
        // Leaves nothing behind in the shared Redis, also if the assertion below fails.
        store.cleanup().await;
        assert!(!ran.load(Ordering::SeqCst));
        assert!(
            freed.is_ok(),
            "`first:1` is still held {RELEASE_BOUND:?} after the call waiting for `second:1` was dropped: \
             it stays locked, by an owner nobody knows, until its 10 s ttl ends"
        );
    }

    /// 4. With the key held — by another process, then by another call of this process —
    /// `wait = "0s"` fails at once and `wait = "200ms"` after about 200 ms, both with
    /// `Error::Timeout` and without running the body. Once free, the same calls run.
    async fn busy_key_times_out_without_running_the_body(store) {
        #[distributed_lock(key = "busy:<id>", service = SVC, wait = "0s")]
        async fn now(id: u32, ran: Arc<AtomicBool>) -> Result<u32, Error> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }
        #[distributed_lock(key = "busy:<id>", service = SVC, wait = "200ms")]
        async fn briefly(id: u32, ran: Arc<AtomicBool>) -> Result<u32, Error> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }
        #[distributed_lock(key = "busy:<id>", service = SVC)]
        async fn hold(
            id: u32,
            entered: oneshot::Sender<()>,
            go: oneshot::Receiver<()>,
        ) -> Result<u32, Error> {
            let _ = entered.send(());
            let _ = go.await;
            Ok(id)
        }

        async fn expect_timeouts(id: u32, holder: &str) {
            let ran = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            match now(id, Arc::clone(&ran)).await {
                Err(Error::Timeout { key, .. }) => assert!(key.ends_with(&format!("busy:{id}")), "{key}"),
                other => panic!("wait 0s, key held by {holder}: expected Timeout, got {other:?}"),
            }
            let single = started.elapsed();
            assert!(single < MARGIN, "wait 0s took {single:?}: not a single attempt");
            let started = Instant::now();
            match briefly(id, Arc::clone(&ran)).await {
                Err(Error::Timeout { waited, .. }) => {
                    assert!(
                        waited >= Duration::from_millis(200),
                        "gave up after {waited:?}, before wait ended"
                    )
                }
                other => panic!("wait 200ms, key held by {holder}: expected Timeout, got {other:?}"),
            }
            let brief = started.elapsed();
            assert!(
                brief >= Duration::from_millis(200) && brief < Duration::from_millis(200) + MARGIN,
                "wait 200ms took {brief:?}"
            );
            assert!(!ran.load(Ordering::SeqCst), "a body ran although its lock was not acquired ({holder})");
        }

        // Held by another process.
        let other = store.service().await;
        let guard = other.lock("busy:1").await.unwrap();
        expect_timeouts(1, "another process").await;
        assert!(guard.release().await.unwrap());
        let ran = Arc::new(AtomicBool::new(false));
        assert_eq!(now(1, Arc::clone(&ran)).await.unwrap(), 1);
        assert_eq!(briefly(1, Arc::clone(&ran)).await.unwrap(), 1);
        assert!(ran.load(Ordering::SeqCst));

        // Held by another call of this process (the in-process queue).
        let (entered_tx, entered_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        let holder = tokio::spawn(hold(2, entered_tx, go_rx));
        entered_rx.await.expect("the holder's body ran");
        expect_timeouts(2, "another call of this process").await;
        go_tx.send(()).unwrap();
        assert_eq!(holder.await.unwrap().unwrap(), 2);
        assert_eq!(now(2, Arc::new(AtomicBool::new(false))).await.unwrap(), 2);
    }

    /// The `key` of the `Timeout` and `Lost` errors an annotated fn returns is, as `Error`'s
    /// docs say, "the full key (service prefix included)": the name the store holds.
    async fn lock_errors_name_the_full_key_as_documented(store) {
        #[distributed_lock(key = "named:<id>", service = SVC, wait = "0s")]
        async fn busy(id: u32) -> Result<u32, Error> {
            Ok(id)
        }
        #[distributed_lock(key = "named:<id>", service = SVC, ttl = "100ms", renew = false)]
        async fn overlong(id: u32) -> Result<u32, Error> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(id)
        }

        let other = store.service().await;
        let guard = other.lock("named:1").await.unwrap();
        let timeout_key = match busy(1).await {
            Err(Error::Timeout { key, .. }) => key,
            other => panic!("expected Timeout, got {other:?}"),
        };
        assert!(guard.release().await.unwrap());
        let lost_key = match overlong(2).await {
            Err(Error::Lost { key, .. }) => key,
            other => panic!("expected Lost, got {other:?}"),
        };
        // Leaves nothing behind in the shared Redis, also if the assertion below fails.
        store.cleanup().await;
        assert_eq!(
            (timeout_key.as_str(), lost_key.as_str()),
            (store.full_key("named:1").as_str(), store.full_key("named:2").as_str()),
            "Error::Timeout.key and Error::Lost.key are documented to include the service prefix"
        );
    }

    /// 5. The generated future is `Send + 'static` (checked at compile time by `tokio::spawn`
    /// and `send_static`) and runs on another task with the lock held.
    async fn spawned_call_runs_under_the_lock(store) {
        #[distributed_lock(key = "spawned:<id>", service = SVC)]
        async fn spawned(
            id: u32,
            payload: String,
            entered: oneshot::Sender<Option<u64>>,
            go: oneshot::Receiver<()>,
        ) -> Result<String, Error> {
            let _ = entered.send(dlock::fencing_token());
            let _ = go.await;
            Ok(format!("{payload}-{id}"))
        }

        for id in 0..3 {
            let (entered_tx, entered_rx) = oneshot::channel();
            let (go_tx, go_rx) = oneshot::channel();
            let call = tokio::spawn(send_static(spawned(id, "job".to_owned(), entered_tx, go_rx)));
            let token = entered_rx.await.expect("the spawned body ran");
            assert!(token.is_some(), "no fencing token inside the spawned call");
            assert!(
                store.is_held(&format!("spawned:{id}")).await,
                "spawned:{id} not held while its body ran"
            );
            go_tx.send(()).unwrap();
            assert_eq!(call.await.expect("no panic").expect("acquired"), format!("job-{id}"));
            assert!(store.is_free(&format!("spawned:{id}")).await);
        }
    }

    /// 6. Several keys: both held while the body runs (another process cannot take either),
    /// both free right after; `fencing_token_for` gives each key's token, and
    /// `fencing_token()` is `None` (no one token fences both keys). Calls naming the keys in
    /// opposite orders, run concurrently, neither deadlock nor overlap.
    async fn several_keys_are_all_held_and_all_released(store) {
        #[distributed_lock(key = "b:<y>", key = "a:<x>", service = SVC, wait = "5s")]
        async fn both(x: u32, y: u32, store: &Store) -> Result<(bool, bool, Option<u64>), Error> {
            let a = store.is_held(&format!("a:{x}")).await;
            let b = store.is_held(&format!("b:{y}")).await;
            assert_eq!(dlock::fencing_token(), None, "one token cannot fence two keys");
            let b_token = dlock::fencing_token_for(&format!("b:{y}")).expect("b's token");
            if let Some(counter) = store.fencing_counter(&format!("b:{y}")).await {
                assert_eq!(b_token, counter, "fencing_token_for(b) is not the token drawn for b");
            }
            Ok((a, b, dlock::fencing_token_for(&format!("a:{x}"))))
        }
        /// What both orders do while holding: note when they held the keys.
        async fn hold_a_moment(log: &std::sync::Mutex<Vec<(Instant, Instant)>>) {
            let enter = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            log.lock().unwrap().push((enter, Instant::now()));
        }
        #[distributed_lock(key = "a:<x>", key = "b:<y>", service = SVC, wait = "5s")]
        async fn ab(
            x: u32,
            y: u32,
            log: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
        ) -> Result<(), Error> {
            hold_a_moment(&log).await;
            Ok(())
        }
        #[distributed_lock(key = "b:<y>", key = "a:<x>", service = SVC, wait = "5s")]
        async fn ba(
            x: u32,
            y: u32,
            log: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
        ) -> Result<(), Error> {
            hold_a_moment(&log).await;
            Ok(())
        }

        let other = store.service().await;
        let guard = other.lock("a:1").await.unwrap();
        let before = guard.fencing_token();
        assert!(guard.release().await.unwrap());
        let (a, b, token) = both(1, 2, &store).await.unwrap();
        assert!(a && b, "not both held inside the body: a:1 {a}, b:2 {b}");
        assert!(store.is_free("a:1").await && store.is_free("b:2").await, "not both released after the call");
        // The body's token for a:1 is the one drawn for it, after `before`.
        let token = token.expect("a token for a:1 inside the body");
        assert!(token > before, "token {token} is not newer than the previous holder's {before} of a:1");
        if let Some(counter) = store.fencing_counter("a:1").await {
            assert_eq!(token, counter, "fencing_token_for(a:1) is not the token drawn for a:1");
        }
        let guard = other.lock("a:1").await.unwrap();
        assert!(guard.fencing_token() > token);
        assert!(guard.release().await.unwrap());

        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        for round in 0..10 {
            let x = tokio::spawn(ab(3, 4, Arc::clone(&log)));
            let y = tokio::spawn(ba(3, 4, Arc::clone(&log)));
            let (x, y) = (x.await.unwrap(), y.await.unwrap());
            assert!(x.is_ok() && y.is_ok(), "round {round}: {x:?} / {y:?} (deadlock between orders?)");
        }
        let mut log = log.lock().unwrap().clone();
        log.sort();
        assert_eq!(log.len(), 20);
        assert!(log.windows(2).all(|w| w[0].1 <= w[1].0), "calls over {{a:3, b:4}} overlapped: {log:?}");
        assert!(store.is_free("a:3").await && store.is_free("b:4").await);
    }

    /// 7. Re-entrancy: a nested annotated call on the key the task holds runs without waiting
    /// (its `wait = "200ms"` would otherwise time out), sees the outer token, and does not
    /// release the outer lock. A nested call on another key sees its own (innermost) token,
    /// and the outer one is back after it. A call from a task spawned inside the body is not
    /// re-entrant: it times out.
    async fn nested_call_on_the_held_key_is_reentrant(store) {
        #[derive(Debug)]
        struct Seen {
            outer: Option<u64>,
            inner: Result<Option<u64>, Error>,
            after_inner: Option<u64>,
            owner_before: Option<String>,
            owner_after: Option<String>,
            held_after_inner: bool,
            other_key: Option<u64>,
            after_other_key: Option<u64>,
            spawned: Result<Option<u64>, Error>,
        }

        #[distributed_lock(key = "re:<id>", service = SVC, wait = "5s")]
        async fn outer(id: u32, store: &Store) -> Result<Seen, Error> {
            let key = format!("re:{id}");
            let outer = dlock::fencing_token();
            let owner_before = owner_of(store, &key).await;
            let nested = inner(id).await;
            let after_inner = dlock::fencing_token();
            let held_after_inner = store.is_held(&key).await;
            let owner_after = owner_of(store, &key).await;
            let other_key = other(id).await?;
            let after_other_key = dlock::fencing_token();
            let spawned = tokio::spawn(inner(id)).await.expect("no panic");
            Ok(Seen {
                outer,
                inner: nested,
                after_inner,
                owner_before,
                owner_after,
                held_after_inner,
                other_key,
                after_other_key,
                spawned,
            })
        }
        #[distributed_lock(key = "re:<id>", service = SVC, wait = "200ms")]
        async fn inner(id: u32) -> Result<Option<u64>, Error> {
            Ok(dlock::fencing_token())
        }
        #[distributed_lock(key = "re-other:<id>", service = SVC, wait = "200ms")]
        async fn other(id: u32) -> Result<Option<u64>, Error> {
            Ok(dlock::fencing_token())
        }

        let started = Instant::now();
        let seen = outer(1, &store).await.expect("outer call");
        let outer_token = seen.outer.expect("outer token");
        let inner_token =
            seen.inner.as_ref().expect("the nested call on the held key did not wait (re-entrant)");
        assert_eq!(*inner_token, Some(outer_token), "the nested body sees the outer lock's token");
        assert_eq!(seen.after_inner, Some(outer_token));
        assert!(seen.held_after_inner, "the nested call released the outer call's lock");
        assert_eq!(seen.owner_before, seen.owner_after, "the nested call changed the lock's owner");
        let other_token = seen.other_key.expect("token inside the nested call on another key");
        assert_ne!(other_token, outer_token, "a nested call on another key sees that key's token");
        assert_eq!(seen.after_other_key, Some(outer_token), "the outer token is back after the nested call");
        assert!(
            matches!(seen.spawned, Err(Error::Timeout { .. })),
            "a call from a task spawned in the body got the outer task's lock: {:?}",
            seen.spawned
        );
        // The one 200 ms wait is the spawned task's; the re-entrant call did not wait.
        assert!(started.elapsed() < Duration::from_millis(200) + MARGIN, "took {:?}", started.elapsed());
        assert!(store.is_free("re:1").await && store.is_free("re-other:1").await);
    }

    /// 8. `renew = false` with a body longer than the ttl: the call returns
    /// `Err(Lost { reason: Expired })` about when the lease ends, not when the body would
    /// have; the body's code after its long `.await` never runs (also not later); the key
    /// is gone afterwards.
    async fn no_renewal_cancels_a_body_that_outlives_its_ttl(store) {
        #[distributed_lock(key = "norenew:<id>", service = SVC, ttl = "300ms", renew = false)]
        async fn overlong(id: u32, reached: Arc<AtomicBool>) -> Result<u32, Error> {
            tokio::time::sleep(Duration::from_millis(800)).await;
            reached.store(true, Ordering::SeqCst);
            Ok(id)
        }

        let ttl = Duration::from_millis(300);
        let reached = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let result = overlong(1, Arc::clone(&reached)).await;
        let took = started.elapsed();
        match result {
            Err(Error::Lost { key, reason: LostReason::Expired }) => {
                assert!(key.ends_with("norenew:1"), "{key}")
            }
            other => panic!("expected Lost {{ reason: Expired }}, got {other:?}"),
        }
        assert!(took >= ttl - dlock::__private::safety_margin(ttl), "cancelled after {took:?}, before the lease ended");
        assert!(took < ttl + MARGIN, "cancelled after {took:?}, long after the {ttl:?} lease");
        assert!(!reached.load(Ordering::SeqCst), "the body ran past its ttl");
        poll_until(RELEASE_BOUND, "`norenew:1` gone after the lease ended", || store.is_free("norenew:1"))
            .await;
        // Past the point where the body would have finished: it was dropped, not detached.
        tokio::time::sleep(
            (started + Duration::from_millis(800) + MARGIN).saturating_duration_since(Instant::now()),
        )
        .await;
        assert!(!reached.load(Ordering::SeqCst), "the body kept running after the call returned Lost");
    }

    /// 9. Keys from a binding inside a parameter pattern, from a field path of a borrowed
    /// parameter, with literal `{}` (hash tags), and from `self`: the store holds exactly the
    /// key `<prefix><id>:<user id>` (Redis `KEYS`; memory: one key, that one).
    async fn keys_from_patterns_fields_and_self_are_exact(store) {
        struct Wrapper(u64);
        struct User {
            id: String,
        }
        struct Req {
            user: User,
        }
        struct Ledger {
            region: &'static str,
        }

        #[distributed_lock(key = "<id>:<req.user.id>", service = SVC)]
        async fn pattern(Wrapper(id): Wrapper, req: &Req, store: &Store) -> Result<Contents, Error> {
            Ok(Contents::of(store, &format!("{id}:{}", req.user.id)).await)
        }
        #[distributed_lock(key = "{tag:<id>}:cart", service = SVC)]
        async fn hash_tag(id: u64, store: &Store) -> Result<Contents, Error> {
            Ok(Contents::of(store, &format!("{{tag:{id}}}:cart")).await)
        }
        impl Ledger {
            #[distributed_lock(key = "ledger:<self.region>", service = SVC)]
            async fn close(&self, store: &Store) -> Result<Contents, Error> {
                Ok(Contents::of(store, &format!("ledger:{}", self.region)).await)
            }
        }

        let req = Req { user: User { id: "u-7".to_owned() } };
        pattern(Wrapper(42), &req, &store).await.unwrap().assert_only(&store, "42:u-7");
        assert!(store.is_free("42:u-7").await);
        hash_tag(9, &store).await.unwrap().assert_only(&store, "{tag:9}:cart");
        assert!(store.is_free("{tag:9}:cart").await);
        Ledger { region: "eu" }.close(&store).await.unwrap().assert_only(&store, "ledger:eu");
        assert!(store.is_free("ledger:eu").await);
    }

    /// 10. `anyhow::Result<T>` and `std::io::Result<T>` (and a boxed error) as return types:
    /// the value passes through when the key is free; a busy key's `Error::Timeout` reaches
    /// the caller inside them (downcast; `io::ErrorKind::TimedOut`), without running the body.
    async fn foreign_error_types_carry_the_timeout(store) {
        #[distributed_lock(key = "foreign:<id>", service = SVC, wait = "0s")]
        async fn with_anyhow(id: u32, ran: Arc<AtomicBool>) -> anyhow::Result<u32> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }
        #[distributed_lock(key = "foreign:<id>", service = SVC, wait = "0s")]
        async fn with_io(id: u32, ran: Arc<AtomicBool>) -> std::io::Result<u32> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }
        #[distributed_lock(key = "foreign:<id>", service = SVC, wait = "0s")]
        async fn with_box(
            id: u32,
            ran: Arc<AtomicBool>,
        ) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
            ran.store(true, Ordering::SeqCst);
            Ok(id)
        }

        let ran = Arc::new(AtomicBool::new(false));
        assert_eq!(with_anyhow(1, Arc::clone(&ran)).await.unwrap(), 1);
        assert_eq!(with_io(2, Arc::clone(&ran)).await.unwrap(), 2);
        assert_eq!(with_box(3, Arc::clone(&ran)).await.unwrap(), 3);

        let other = store.service().await;
        let guard = other.lock("foreign:1").await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));

        let err = with_anyhow(1, Arc::clone(&ran)).await.expect_err("busy");
        assert!(
            matches!(err.downcast_ref::<Error>(), Some(Error::Timeout { .. })),
            "anyhow error is not a dlock Timeout: {err:?}"
        );

        let err = with_io(1, Arc::clone(&ran)).await.expect_err("busy");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err:?}");
        assert!(
            matches!(err.get_ref().and_then(|e| e.downcast_ref::<Error>()), Some(Error::Timeout { .. })),
            "io error does not wrap a dlock Timeout: {err:?}"
        );

        let err = with_box(1, Arc::clone(&ran)).await.expect_err("busy");
        assert!(matches!(err.downcast_ref::<Error>(), Some(Error::Timeout { .. })), "{err:?}");

        assert!(!ran.load(Ordering::SeqCst), "a body ran although its lock was busy");
        assert!(guard.release().await.unwrap());
    }
}

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

    let server = support::RedisServer::start();
    let url = server.url();
    let backend = dlock::RedisBackend::connect(&url).await.expect("connect to the private redis-server");
    dlock::register(SVC, dlock::LockService::new(backend)).expect("register");
    let mut conn = support::inspector(&url).await;
    // The last fencing token drawn for a key (its counter lives beside the lock).
    let fence = |conn: &redis::aio::MultiplexedConnection, key: &str| {
        let mut conn = conn.clone();
        let state = dlock::RedisBackend::state_key(key);
        async move {
            redis::cmd("HGET")
                .arg(&state)
                .arg("f")
                .query_async::<Option<u64>>(&mut conn)
                .await
                .expect("HGET the fencing counter")
        }
    };
    // Loads the acquire script into Redis's cache, so the frozen EVALSHA cannot come back
    // as NOSCRIPT (and be retried as EVAL by a future that no longer exists).
    let ran = Arc::new(AtomicBool::new(false));
    assert_eq!(call(0, Arc::clone(&ran)).await.expect("acquire while Redis runs"), 0);
    assert!(fence(&conn, "wire:0").await.is_some(), "wire:0 drew a token");
    assert_eq!(fence(&conn, "wire:1").await, None, "nothing drew a token for wire:1 yet");

    server.pause();
    let ran = Arc::new(AtomicBool::new(false));
    let gave_up = tokio::time::timeout(Duration::from_millis(300), call(1, Arc::clone(&ran))).await;
    assert!(gave_up.is_err(), "a call finished while Redis was frozen: {gave_up:?}");
    server.resume();

    // The dropped call's script ran once Redis was thawed: it drew a token for wire:1.
    poll_until(RELEASE_BOUND, "Redis ran the dropped call's acquire script", || {
        let counter = fence(&conn, "wire:1");
        async move { counter.await.is_some() }
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
