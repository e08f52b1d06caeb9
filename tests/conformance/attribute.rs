//! `#[distributed_lock]` at run time: what the generated code does, checked against the lock
//! store itself.
//!
//! Each scenario registers a service of its own over the store, named
//! `conformance:<scenario>`, and declares the annotated fns it needs inside its body with
//! `service = SVC`, so scenarios never share a service. (The global service, an unregistered
//! one and Redis frozen mid-acquire are in the `attribute` test binary.)
//!
//! Ordering is shown by evidence recorded under the lock (instants taken inside bodies,
//! fencing tokens, flags), and "released" by looking at the store; sleeps only give a
//! violation the chance to happen and are followed by an assertion.
//!
//! Scenarios that document a dlock bug are named for the behaviour they expect and fail until
//! it is fixed: `lock_errors_name_the_full_key_as_documented`,
//! `dropping_a_call_that_waits_for_its_second_key_frees_the_first`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dlock::{Error, LostReason, distributed_lock};
use tokio::sync::{Barrier, oneshot};

use crate::support::poll::{MARGIN, poll_until};
use crate::support::store::Store;

/// How long a lock may take to disappear from the store after a background release. Far
/// below the default ttl (30 s), so expiry cannot pass for a release.
const RELEASE_BOUND: Duration = Duration::from_secs(2);

/// Register a service over a new client of `store` as `name`.
async fn register(name: &'static str, store: &dyn Store) {
    dlock::register(name, store.service().await).unwrap_or_else(|err| {
        panic!("registering `{name}`: {err} (conformance_suite! is called once per test binary)")
    });
}

/// The owner token stored under `key` where the store shows owners (panics if the key is
/// absent); `None` where it cannot.
async fn owner_of(store: &dyn Store, key: &str) -> Option<String> {
    store
        .owner(key)
        .await
        .map(|owner| owner.unwrap_or_else(|| panic!("`{}` is not in the store", store.full_key(key))))
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
    /// Every lock key, prefixed, where the store can list them (Redis).
    keys: Option<Vec<String>>,
    /// How many keys are held, where the store can count them (memory).
    count: Option<usize>,
}

impl Contents {
    async fn of(store: &dyn Store, key: &str) -> Self {
        Self {
            held: store.is_held(key).await,
            keys: store.held_keys().await,
            count: store.held_count().await,
        }
    }

    /// `key` is held, and nothing else is.
    fn assert_only(&self, store: &dyn Store, key: &str) {
        assert!(self.held, "`{key}` was not held inside the body: {self:?}");
        match (&self.keys, self.count) {
            (Some(keys), _) => {
                assert_eq!(keys, &[store.full_key(key).to_string()], "the lock keys in the store")
            }
            (None, Some(count)) => assert_eq!(count, 1, "the store holds one key, and it is `{key}`"),
            // The store can show neither: `held` is all there is to check.
            (None, None) => {}
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

/// Inside the body the key is held in the store (where the store shows owners, as Redis
/// does: the prefixed key holds a fresh owner token), `fencing_token()` is the token drawn for
/// this acquisition (where the store shows its one fencing counter: that counter's value), tokens strictly increase across successive
/// calls and interleaved manual guards, and the key is free as soon as the call returns.
pub async fn body_runs_with_the_lock_held_and_a_fresh_fencing_token(store: &dyn Store) {
    const SVC: &str = "conformance:body_runs_with_the_lock_held_and_a_fresh_fencing_token";
    register(SVC, store).await;
    #[derive(Debug)]
    struct Inside {
        held: bool,
        owner: Option<String>,
        token: Option<u64>,
        counter: Option<u64>,
    }

    #[distributed_lock(key = "held:<id>", service = SVC)]
    async fn observe(id: u32, store: &dyn Store) -> Result<Inside, Error> {
        let key = format!("held:{id}");
        Ok(Inside {
            held: store.is_held(&key).await,
            owner: owner_of(store, &key).await,
            token: dlock::fencing_token(),
            counter: store.fencing_counter().await,
        })
    }

    let key = "held:7";
    let shows_owners = store.owner(key).await.is_some();
    let service = dlock::named(SVC).unwrap();
    let mut tokens = Vec::new();
    let mut owners = Vec::new();
    for round in 0..3 {
        assert_eq!(dlock::fencing_token(), None, "no token outside a body");
        let inside = observe(7, store).await.unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert!(inside.held, "round {round}: `{key}` was not held while the body ran");
        let token = inside.token.expect("fencing_token() is Some inside the body");
        if shows_owners {
            let owner = inside.owner.expect("the store shows the owner");
            assert_owner_token(&owner);
            owners.push(owner);
        }
        if let Some(counter) = inside.counter {
            assert_eq!(
                counter, token,
                "round {round}: the body's token is not the one the store drew for this acquisition"
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
    assert_eq!(owners.len(), if shows_owners { 3 } else { 0 }, "each call has its own owner token");
}

/// Four calls on one key started together take turns: the [enter, exit] intervals
/// recorded inside the bodies do not overlap, each enters only after the previous one
/// exited, and their tokens increase in that order.
pub async fn concurrent_calls_on_one_key_take_turns(store: &dyn Store) {
    const SVC: &str = "conformance:concurrent_calls_on_one_key_take_turns";
    register(SVC, store).await;
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

/// A call on a key another process holds waits for it: still pending while the other
/// holds, and its body is entered only after the other's release began.
pub async fn call_waits_while_another_process_holds_the_key(store: &dyn Store) {
    const SVC: &str = "conformance:call_waits_while_another_process_holds_the_key";
    register(SVC, store).await;
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

/// Calls on different keys run in parallel: both bodies reach a two-party barrier
/// (impossible if one excluded the other). Control: on one key the same barrier is never
/// met, so the check can fail.
pub async fn calls_on_different_keys_run_in_parallel(store: &dyn Store) {
    const SVC: &str = "conformance:calls_on_different_keys_run_in_parallel";
    register(SVC, store).await;
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
        tokio::time::timeout(Duration::from_millis(500), async { ((&mut a).await, (&mut b).await) }).await;
    assert!(met.is_err(), "two calls on `meet:3` were inside their bodies at once: {met:?}");
    a.abort();
    b.abort();
    poll_until(RELEASE_BOUND, "`meet:3` released after both calls were aborted", || store.is_free("meet:3"))
        .await;
}

/// Released when the body returns, `Ok` or `Err` (an application error through `?`,
/// returned unchanged): the key is gone from the store as soon as the call returns.
pub async fn released_after_ok_and_after_err(store: &dyn Store) {
    const SVC: &str = "conformance:released_after_ok_and_after_err";
    register(SVC, store).await;
    #[distributed_lock(key = "res:<id>", service = SVC)]
    async fn fallible(id: u32, fail: bool, store: &dyn Store) -> Result<u32, AppError> {
        let held = store.is_held(&format!("res:{id}")).await;
        check(id, fail, held)?;
        Ok(id + 100)
    }

    assert_eq!(fallible(1, false, store).await, Ok(101));
    assert!(store.is_free("res:1").await, "still held after the body returned Ok");
    assert_eq!(fallible(2, true, store).await, Err(AppError::Rejected { id: 2, held: true }));
    assert!(store.is_free("res:2").await, "still held after the body returned Err");
}

/// Released when the body panics: the spawned call's `JoinError` is the body's panic,
/// and the key (ttl 30 s) leaves the store within a bounded poll; a new call then gets it.
pub async fn released_after_the_body_panics(store: &dyn Store) {
    const SVC: &str = "conformance:released_after_the_body_panics";
    register(SVC, store).await;
    #[distributed_lock(key = "panic:<id>", service = SVC)]
    async fn panics(id: u32, entered: oneshot::Sender<()>, go: oneshot::Receiver<()>) -> Result<(), Error> {
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
        poll_until(RELEASE_BOUND, "`panic:1` released after the panic", || store.is_free("panic:1")).await;
    eprintln!("released {took:?} after the panic");
    assert_eq!(after(1).await.expect("the key is free for the next call"), 1);
}

/// Released when the caller drops the future mid-body: the body was running with the
/// key held, the future is dropped, the key (ttl 30 s) leaves the store within a bounded
/// poll, and a new call gets it at once.
pub async fn released_after_the_caller_drops_the_future(store: &dyn Store) {
    const SVC: &str = "conformance:released_after_the_caller_drops_the_future";
    register(SVC, store).await;
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

/// Dropped while it waits for its second key, a call must give back the first one it
/// already took (ttl 10 s, so expiry cannot pass for a release) — as it does when that
/// wait ends in `Error::Timeout` instead.
pub async fn dropping_a_call_that_waits_for_its_second_key_frees_the_first(store: &dyn Store) {
    const SVC: &str = "conformance:dropping_a_call_that_waits_for_its_second_key_frees_the_first";
    register(SVC, store).await;
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
    // Leaves nothing behind in a shared store, also if the assertion below fails.
    store.cleanup().await;
    assert!(!ran.load(Ordering::SeqCst));
    assert!(
        freed.is_ok(),
        "`first:1` is still held {RELEASE_BOUND:?} after the call waiting for `second:1` was dropped: \
         it stays locked, by an owner nobody knows, until its 10 s ttl ends"
    );
}

/// With the key held — by another process, then by another call of this process —
/// `wait = "0s"` fails at once and `wait = "200ms"` after about 200 ms, both with
/// `Error::Timeout` and without running the body. Once free, the same calls run.
pub async fn busy_key_times_out_without_running_the_body(store: &dyn Store) {
    const SVC: &str = "conformance:busy_key_times_out_without_running_the_body";
    register(SVC, store).await;
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
    async fn hold(id: u32, entered: oneshot::Sender<()>, go: oneshot::Receiver<()>) -> Result<u32, Error> {
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
                assert!(waited >= Duration::from_millis(200), "gave up after {waited:?}, before wait ended")
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
pub async fn lock_errors_name_the_full_key_as_documented(store: &dyn Store) {
    const SVC: &str = "conformance:lock_errors_name_the_full_key_as_documented";
    register(SVC, store).await;
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
    // Leaves nothing behind in a shared store, also if the assertion below fails.
    store.cleanup().await;
    assert_eq!(
        (timeout_key.as_str(), lost_key.as_str()),
        (store.full_key("named:1").as_str(), store.full_key("named:2").as_str()),
        "Error::Timeout.key and Error::Lost.key are documented to include the service prefix"
    );
}

/// The generated future is `Send + 'static` (checked at compile time by `tokio::spawn`
/// and `send_static`) and runs on another task with the lock held.
pub async fn spawned_call_runs_under_the_lock(store: &dyn Store) {
    const SVC: &str = "conformance:spawned_call_runs_under_the_lock";
    register(SVC, store).await;
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
        assert!(store.is_held(&format!("spawned:{id}")).await, "spawned:{id} not held while its body ran");
        go_tx.send(()).unwrap();
        assert_eq!(call.await.expect("no panic").expect("acquired"), format!("job-{id}"));
        assert!(store.is_free(&format!("spawned:{id}")).await);
    }
}

/// Several keys: both held while the body runs (another process cannot take either),
/// both free right after; `fencing_token()` is the first key's in sorted order. Calls
/// naming the keys in opposite orders, run concurrently, neither deadlock nor overlap.
pub async fn several_keys_are_all_held_and_all_released(store: &dyn Store) {
    const SVC: &str = "conformance:several_keys_are_all_held_and_all_released";
    register(SVC, store).await;
    #[distributed_lock(key = "b:<y>", key = "a:<x>", service = SVC, wait = "5s")]
    async fn both(x: u32, y: u32, store: &dyn Store) -> Result<(bool, bool, Option<u64>), Error> {
        let a = store.is_held(&format!("a:{x}")).await;
        let b = store.is_held(&format!("b:{y}")).await;
        Ok((a, b, dlock::fencing_token()))
    }
    /// What both orders do while holding: note when they held the keys.
    async fn hold_a_moment(log: &std::sync::Mutex<Vec<(Instant, Instant)>>) {
        let enter = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        log.lock().unwrap().push((enter, Instant::now()));
    }
    #[distributed_lock(key = "a:<x>", key = "b:<y>", service = SVC, wait = "5s")]
    async fn ab(x: u32, y: u32, log: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>) -> Result<(), Error> {
        hold_a_moment(&log).await;
        Ok(())
    }
    #[distributed_lock(key = "b:<y>", key = "a:<x>", service = SVC, wait = "5s")]
    async fn ba(x: u32, y: u32, log: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>) -> Result<(), Error> {
        hold_a_moment(&log).await;
        Ok(())
    }

    let other = store.service().await;
    let guard = other.lock("a:1").await.unwrap();
    let before = guard.fencing_token();
    assert!(guard.release().await.unwrap());
    let (a, b, token) = both(1, 2, store).await.unwrap();
    assert!(a && b, "not both held inside the body: a:1 {a}, b:2 {b}");
    assert!(store.is_free("a:1").await && store.is_free("b:2").await, "not both released after the call");
    // "a:1" sorts first: the body's token is the one drawn for it, after `before`.
    let token = token.expect("a token inside the body");
    assert!(token > before, "token {token} is not newer than the previous holder's {before} of a:1");
    if let Some(counter) = store.fencing_counter().await {
        // A store with one counter (Redis) draws a:1's token, then b:2's, from it.
        assert_eq!(token + 1, counter, "the body's token is not a:1's (the first key in sorted order)");
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

/// Re-entrancy: a nested annotated call on the key the task holds runs without waiting
/// (its `wait = "200ms"` would otherwise time out), sees the outer token, and does not
/// release the outer lock. A nested call on another key sees its own (innermost) token,
/// and the outer one is back after it. A call from a task spawned inside the body is not
/// re-entrant: it times out.
pub async fn nested_call_on_the_held_key_is_reentrant(store: &dyn Store) {
    const SVC: &str = "conformance:nested_call_on_the_held_key_is_reentrant";
    register(SVC, store).await;
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
    async fn outer(id: u32, store: &dyn Store) -> Result<Seen, Error> {
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
    let seen = outer(1, store).await.expect("outer call");
    let outer_token = seen.outer.expect("outer token");
    let inner_token = seen.inner.as_ref().expect("the nested call on the held key did not wait (re-entrant)");
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

/// `renew = false` with a body longer than the ttl: the call returns
/// `Err(Lost { reason: Expired })` about when the lease ends, not when the body would
/// have; the body's code after its long `.await` never runs (also not later); the key
/// is gone afterwards.
pub async fn no_renewal_cancels_a_body_that_outlives_its_ttl(store: &dyn Store) {
    const SVC: &str = "conformance:no_renewal_cancels_a_body_that_outlives_its_ttl";
    register(SVC, store).await;
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
    assert!(
        took >= ttl - dlock::__private::safety_margin(ttl),
        "cancelled after {took:?}, before the lease ended"
    );
    assert!(took < ttl + MARGIN, "cancelled after {took:?}, long after the {ttl:?} lease");
    assert!(!reached.load(Ordering::SeqCst), "the body ran past its ttl");
    poll_until(RELEASE_BOUND, "`norenew:1` gone after the lease ended", || store.is_free("norenew:1")).await;
    // Past the point where the body would have finished: it was dropped, not detached.
    tokio::time::sleep(
        (started + Duration::from_millis(800) + MARGIN).saturating_duration_since(Instant::now()),
    )
    .await;
    assert!(!reached.load(Ordering::SeqCst), "the body kept running after the call returned Lost");
}

/// Keys from a binding inside a parameter pattern, from a field path of a borrowed
/// parameter, with literal `{}` (hash tags), and from `self`: the store holds exactly the
/// key `<prefix><id>:<user id>` (a store that lists its keys, as Redis does: that key alone;
/// one that counts them, as memory does: one key, that one).
pub async fn keys_from_patterns_fields_and_self_are_exact(store: &dyn Store) {
    const SVC: &str = "conformance:keys_from_patterns_fields_and_self_are_exact";
    register(SVC, store).await;
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
    async fn pattern(Wrapper(id): Wrapper, req: &Req, store: &dyn Store) -> Result<Contents, Error> {
        Ok(Contents::of(store, &format!("{id}:{}", req.user.id)).await)
    }
    #[distributed_lock(key = "{tag:<id>}:cart", service = SVC)]
    async fn hash_tag(id: u64, store: &dyn Store) -> Result<Contents, Error> {
        Ok(Contents::of(store, &format!("{{tag:{id}}}:cart")).await)
    }
    impl Ledger {
        #[distributed_lock(key = "ledger:<self.region>", service = SVC)]
        async fn close(&self, store: &dyn Store) -> Result<Contents, Error> {
            Ok(Contents::of(store, &format!("ledger:{}", self.region)).await)
        }
    }

    let req = Req { user: User { id: "u-7".to_owned() } };
    pattern(Wrapper(42), &req, store).await.unwrap().assert_only(store, "42:u-7");
    assert!(store.is_free("42:u-7").await);
    hash_tag(9, store).await.unwrap().assert_only(store, "{tag:9}:cart");
    assert!(store.is_free("{tag:9}:cart").await);
    Ledger { region: "eu" }.close(store).await.unwrap().assert_only(store, "ledger:eu");
    assert!(store.is_free("ledger:eu").await);
}

/// `anyhow::Result<T>` and `std::io::Result<T>` (and a boxed error) as return types:
/// the value passes through when the key is free; a busy key's `Error::Timeout` reaches
/// the caller inside them (downcast; `io::ErrorKind::TimedOut`), without running the body.
pub async fn foreign_error_types_carry_the_timeout(store: &dyn Store) {
    const SVC: &str = "conformance:foreign_error_types_carry_the_timeout";
    register(SVC, store).await;
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
