//! Waiting for a held key: a waiter gets in only after the release, and promptly; a wait ends
//! at `wait` with `Timeout`; `wait(0)` is one attempt; tasks of one process are served in the
//! order they came; release notices are a speed-up, never trusted for safety, and not needed;
//! where the store hands keys over, clients are served in the order they came.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use dlock::backend::ReleaseNotice;
use dlock::{Error, LockService};

use super::{LONG_TTL, LONG_WAIT, assert_timeout, requires};
use crate::support::faulty::{FaultyBackend, Op, Rule};
use crate::support::poll::{MARGIN, poll_until};
use crate::support::store::Store;

/// The holder marks, before it releases, that it is about to let go; the waiter records what
/// it saw when it got in. Exclusion means the waiter can only have seen "released".
async fn waiter_gets_in_only_after_release(store: &dyn Store, holder: LockService, waiter: LockService) {
    let holding = Arc::new(AtomicBool::new(true));
    let guard = holder.lock("handoff").ttl(LONG_TTL).await.expect("holder acquires");
    let holder_token = guard.fencing_token();

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let waiter_task = tokio::spawn({
        let holding = Arc::clone(&holding);
        async move {
            started_tx.send(()).expect("the test is listening");
            let guard = waiter.lock("handoff").ttl(LONG_TTL).wait(LONG_WAIT).await?;
            let got_in = Instant::now();
            let saw_holder = holding.load(Ordering::SeqCst);
            let token = guard.fencing_token();
            guard.release().await?;
            Ok::<_, Error>((saw_holder, token, got_in))
        }
    });
    started_rx.await.expect("waiter task started");
    // Give the waiter every chance to (wrongly) get in while the lock is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter_task.is_finished(), "the waiter finished while the holder still held the lock");
    assert!(store.is_held("handoff").await);

    holding.store(false, Ordering::SeqCst);
    let released_at = Instant::now();
    assert!(guard.release().await.expect("release succeeds"));

    let (saw_holder, token, got_in) = tokio::time::timeout(LONG_WAIT, waiter_task)
        .await
        .expect("the waiter gets in after the release")
        .expect("waiter task did not panic")
        .expect("waiter acquires and releases");
    assert!(!saw_holder, "the waiter got in while the holder held the lock");
    assert!(got_in >= released_at);
    assert!(token > holder_token, "next holder's token {token} > {holder_token}");
    let handoff = got_in - released_at;
    assert!(handoff < MARGIN, "the waiter noticed the release after {handoff:?}, not promptly");
}

/// A waiter of another client gets in after the holder's release, not before, and promptly.
pub async fn waiter_in_other_service_gets_in_only_after_release(store: &dyn Store) {
    waiter_gets_in_only_after_release(store, store.service().await, store.service().await).await;
}

/// A waiter of the same service (queued in this process) gets in after the release, not
/// before, and promptly.
pub async fn waiter_in_same_service_gets_in_only_after_release(store: &dyn Store) {
    let service = store.service().await;
    waiter_gets_in_only_after_release(store, service.clone(), service).await;
}

async fn timeout_bounds(store: &dyn Store, holder: LockService, waiter: LockService) {
    let guard = holder.lock("busy").ttl(LONG_TTL).await.expect("holder acquires");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let (key, waited) = assert_timeout(waiter.lock("busy").wait(wait).await, "waiting on a held lock");
    let elapsed = started.elapsed();
    assert!(waited >= wait, "Timeout.waited {waited:?} < wait {wait:?}");
    assert!(elapsed >= wait, "gave up after {elapsed:?}, before wait {wait:?}");
    assert!(elapsed < wait + MARGIN, "gave up after {elapsed:?}, long after wait {wait:?}");
    assert!(key.ends_with("busy"), "Timeout names the key: {key}");
    assert!(store.is_held("busy").await, "the holder's lock is untouched");
    assert!(guard.release().await.expect("release"));
}

/// A wait on a key another client holds ends at `wait` with a `Timeout` naming the key.
pub async fn wait_expires_into_timeout_in_the_backend(store: &dyn Store) {
    timeout_bounds(store, store.service().await, store.service().await).await;
}

/// A wait behind a holder of the same service ends at `wait` with a `Timeout` naming the key.
pub async fn wait_expires_into_timeout_in_the_local_queue(store: &dyn Store) {
    let service = store.service().await;
    timeout_bounds(store, service.clone(), service).await;
}

/// `wait(0)` is one acquire attempt: on a held key a prompt `Timeout`, on a free one the lock.
pub async fn wait_zero_is_a_single_attempt(store: &dyn Store) {
    let holder = store.service().await;
    let (service, faulty) = store.faulty_service().await;
    let guard = holder.lock("once").ttl(LONG_TTL).await.expect("holder acquires");

    let started = Instant::now();
    let (_, waited) =
        assert_timeout(service.lock("once").wait(Duration::ZERO).await, "wait(0) on a held lock");
    let elapsed = started.elapsed();
    assert_eq!(faulty.count(Op::TryAcquire), 1, "wait(0) makes exactly one acquire attempt");
    assert!(elapsed < Duration::from_millis(100), "wait(0) took {elapsed:?}");
    assert!(waited < Duration::from_millis(100), "Timeout.waited {waited:?} for wait(0)");

    assert!(guard.release().await.expect("release"));
    let guard = service.lock("once").wait(Duration::ZERO).await.expect("wait(0) on a free lock acquires");
    assert_eq!(faulty.count(Op::TryAcquire), 2, "one attempt on the free lock");
    assert!(guard.release().await.expect("release"));
}

/// Tasks of one process waiting for a key are served in the order they came.
pub async fn local_waiters_are_served_in_fifo_order(store: &dyn Store) {
    let service = store.service().await;
    let key = "fifo";
    let first = service.lock(key).await.expect("first");
    let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (service, order) = (service.clone(), Arc::clone(&order));
        let mut waiter = Box::pin(async move {
            let guard = service.lock(key).wait(Duration::from_secs(10)).await.expect("in turn");
            order.lock().await.push(i);
            guard.release().await.expect("release");
        });
        // Waiter i comes before waiter i+1: its first poll, here, puts it in the key's local
        // queue behind `first` (nothing before the queue waits), before waiter i+1 exists.
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(waiter.as_mut().poll(cx))).await;
        assert!(first_poll.is_pending(), "waiter {i} got in while `first` held the key");
        tasks.push(tokio::spawn(waiter));
    }
    first.release().await.expect("release first");
    for task in tasks {
        task.await.expect("join");
    }
    assert_eq!(*order.lock().await, (0..8).collect::<Vec<_>>(), "{service:?}");
}

/// A client whose backend gives it no release notices (every watch refused) still waits as
/// promised: its wait ends at `wait` while the key is held, and once the holder lets go it
/// gets in — not before, and promptly, on its own timer.
pub async fn a_waiter_without_release_notices_gets_in_on_its_timer(store: &dyn Store) {
    let holder = store.service().await;
    let (waiter, faulty) = store.faulty_service().await;
    faulty.inject(Rule::refuse(Op::WatchReleases));
    let guard = holder.lock("deaf").ttl(LONG_TTL).await.expect("holder acquires");

    let wait = Duration::from_millis(300);
    let started = Instant::now();
    assert_timeout(waiter.lock("deaf").wait(wait).await, "waiting without notices");
    let elapsed = started.elapsed();
    assert!(elapsed >= wait && elapsed < wait + MARGIN, "wait({wait:?}) ended after {elapsed:?}");
    assert!(faulty.count(Op::WatchReleases) >= 1, "the waiter asked for notices (and got none)");

    let holding = Arc::new(AtomicBool::new(true));
    let waiting = tokio::spawn({
        let holding = Arc::clone(&holding);
        async move {
            let guard = waiter.lock("deaf").ttl(LONG_TTL).wait(LONG_WAIT).await?;
            let (got_in, saw_holder) = (Instant::now(), holding.load(Ordering::SeqCst));
            let token = guard.fencing_token();
            guard.release().await?;
            Ok::<_, Error>((saw_holder, token, got_in))
        }
    });
    // Give the waiter every chance to (wrongly) get in while the lock is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the waiter got in while the key was held");
    holding.store(false, Ordering::SeqCst);
    let released_at = Instant::now();
    let holder_token = guard.fencing_token();
    assert!(guard.release().await.expect("release"));
    let (saw_holder, token, got_in) = tokio::time::timeout(LONG_WAIT, waiting)
        .await
        .expect("the waiter gets in after the release")
        .expect("waiter task did not panic")
        .expect("the waiter acquires and releases");
    assert!(!saw_holder, "the waiter got in while the holder held the lock");
    assert!(token > holder_token, "next holder's token {token} > {holder_token}");
    let handoff = got_in - released_at;
    assert!(handoff < MARGIN, "the waiter noticed the release after {handoff:?}, not promptly");
}

/// Release notices are hints (contract, point 5): a waiter that hears of releases that did not
/// happen asks the store again each time, and stays out while the key is held.
pub async fn spurious_release_notices_do_not_let_a_waiter_in(store: &dyn Store) {
    if !requires(store, "release notices", store.features().release_notices) {
        return;
    }
    let holder = store.service().await;
    let (waiter, faulty) = store.faulty_service().await;
    let guard = holder.lock("hint").ttl(LONG_TTL).await.expect("holder acquires");
    let waiting = tokio::spawn(async move {
        let guard = waiter.lock("hint").ttl(LONG_TTL).wait(LONG_WAIT).await?;
        let token = guard.fencing_token();
        guard.release().await?;
        Ok::<_, Error>(token)
    });
    waits_with_notices(&faulty).await;

    let key = store.full_key("hint");
    for round in 0..5 {
        let asked = faulty.count(Op::TryAcquire);
        assert!(
            faulty.notify(&key, ReleaseNotice::Released) >= 1,
            "round {round}: the waiter watches `hint`"
        );
        poll_until(MARGIN, &format!("round {round}: the waiter asks the store again"), || async {
            faulty.count(Op::TryAcquire) > asked
        })
        .await;
        assert!(!waiting.is_finished(), "round {round}: a notice that lied let the waiter in");
    }
    assert!(store.is_held("hint").await, "the holder's key is untouched");

    let holder_token = guard.fencing_token();
    assert!(guard.release().await.expect("release"));
    let token = tokio::time::timeout(LONG_WAIT, waiting)
        .await
        .expect("the waiter gets in after the real release")
        .expect("waiter task did not panic")
        .expect("the waiter acquires and releases");
    assert!(token > holder_token, "next holder's token {token} > {holder_token}");
}

/// Where the store hands keys over (contract, point 6), three clients waiting behind a holder
/// get the key in the order they came, and their tokens increase in that order.
pub async fn waiting_clients_are_served_in_arrival_order(store: &dyn Store) {
    if !requires(store, "hand-off", store.features().handoff) {
        return;
    }
    let holder = store.service().await;
    let guard = holder.lock("turns").ttl(LONG_TTL).await.expect("holder acquires");
    let first = guard.fencing_token();
    let order: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let mut waiters = Vec::new();
    for n in 0..3 {
        let (service, faulty) = store.faulty_service().await;
        let order = Arc::clone(&order);
        waiters.push(tokio::spawn(async move {
            let guard = service.lock("turns").ttl(LONG_TTL).wait(LONG_WAIT).await?;
            order.lock().unwrap_or_else(PoisonError::into_inner).push((n, guard.fencing_token()));
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.release().await
        }));
        // The next one comes only once this one is in line.
        waits_with_notices(&faulty).await;
    }
    assert!(guard.release().await.expect("release"));
    for waiter in waiters {
        let released = tokio::time::timeout(LONG_WAIT, waiter).await.expect("every waiter gets its turn");
        assert!(released.expect("join").expect("each waiter gets the key and releases it"));
    }
    let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(order.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1, 2], "first come, first served");
    let tokens: Vec<u64> = std::iter::once(first).chain(order.iter().map(|(_, t)| *t)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "fencing tokens increase: {tokens:?}");
}

/// Wait until the one request made through `faulty` waits on notices: it found the key held,
/// registered for notices, and its second attempt (the one that puts it in a backend's
/// waiting line) has been answered.
async fn waits_with_notices(faulty: &FaultyBackend) {
    poll_until(Duration::from_secs(5), "the waiter registered for notices and asked again", || async {
        faulty.count(Op::WatchReleases) >= 1 && faulty.answered(Op::TryAcquire) >= 2
    })
    .await;
}
