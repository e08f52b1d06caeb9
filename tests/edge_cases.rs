//! Edge cases found in review: each test pins one interleaving that used to let two holders
//! believe they hold one key, leave a key held after a cancelled release, or panic on input.
//!
//! A [`FaultyBackend`] around `MemoryBackend` injects the faults (lost answers, refused or
//! failing renewals, slow requests and answers) on tokio's paused clock, so each interleaving
//! is exact. A `MovingBackend` (in this file) moves to another server between answering an
//! acquisition and the service keeping its lease, as a Sentinel or Cluster failover may.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::backend::{BackendError, BackendErrorKind, BoxFuture, FullKey, ReleaseOutcome, TryAcquire};
use dlock::{Error, LockBackend, LockService, LostReason, MemoryBackend};
use dlock_tests::{FaultyBackend, Op, Rule, poll_until};
use tokio::sync::{Notify, watch};

/// A service over a fault-injecting wrapper of a fresh `MemoryBackend`, and both.
fn faulty_service() -> (FaultyBackend, MemoryBackend, LockService) {
    let memory = MemoryBackend::new();
    let faulty = FaultyBackend::new(memory.clone());
    (faulty.clone(), memory, LockService::new(faulty))
}

/// A set whose first key was lost while it waited for the second is given back and taken
/// again — under a new owner token, so the still-retried release of the first pass cannot
/// delete the second pass's lock.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_pass_is_not_released_by_the_previous_pass() {
    let (f, memory, svc) = faulty_service();
    // Someone else holds "b" for 150 ms, so the set waits for it while holding "a".
    let held =
        memory.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_millis(150)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    f.inject(Rule::refuse(Op::Renew).once()); // "a" is lost while waiting
    // Its release reaches the store, but the answer is lost: it goes to background retry.
    f.inject(Rule::lose_answer(Op::Release, BackendErrorKind::Timeout).key("a").once());
    let guard = svc
        .lock_all(["a", "b"])
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(2))
        .await
        .expect("the set, on a second pass");
    tokio::time::sleep(Duration::from_millis(5)).await; // let the background retry run
    let intruder =
        memory.try_acquire(&FullKey::new("", "a"), "intruder", Duration::from_secs(10)).await.expect("try");
    assert!(
        !matches!(intruder, TryAcquire::Acquired { .. }) || guard.is_lost(),
        "two holders of `a`: the guard says held, and an intruder acquired it"
    );
}

/// A renewal that started before the set took its second key does not extend the lease past
/// that key's own expiry.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_renewal_covers_only_the_keys_it_renewed() {
    let (f, memory, svc) = faulty_service();
    let held =
        memory.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_millis(60)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    // The answer to a successful acquire of "b" arrives 80 ms late.
    f.inject(Rule::delay_answer(Op::TryAcquire, Duration::from_millis(80)).key("b").if_acquired());
    let failing = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // From then on renewals fail (no answer from the backend).
        failing.inject(Rule::fail(Op::Renew, BackendErrorKind::Timeout));
    });
    let guard = svc
        .lock_all(["a", "b"])
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(2))
        .await
        .expect("the set");
    for _ in 0..2000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if guard.is_lost() {
            return;
        }
        let intruder = memory
            .try_acquire(&FullKey::new("", "b"), "intruder", Duration::from_secs(10))
            .await
            .expect("try");
        assert!(
            !matches!(intruder, TryAcquire::Acquired { .. }),
            "an intruder took `b` while the guard is not lost"
        );
    }
    panic!("renewals failed, yet the guard was never reported lost");
}

/// A re-entrant guard that outlives its outer holder's release reports itself lost, and no
/// new request re-enters through it.
#[tokio::test(flavor = "current_thread")]
async fn a_reentrant_guard_does_not_outlive_the_outer_release() {
    let store = MemoryBackend::new();
    let svc = LockService::new(store.clone());
    let outer = svc.lock("k").await.expect("outer");
    let inner = outer.scope(async { svc.lock("k").await }).await.expect("re-entrant");
    assert!(inner.is_reentrant());
    outer.release().await.expect("release");
    assert!(inner.is_lost(), "the escaped re-entrant guard must not look held");
    let other = LockService::new(store).lock("k").wait(Duration::ZERO).await.expect("free after release");
    let nested = inner.scope(async { svc.lock("k").wait(Duration::ZERO).await }).await;
    assert!(
        matches!(nested, Err(Error::Lost { reason: LostReason::Released, .. })),
        "re-entered a released lock: {nested:?}"
    );
    other.release().await.expect("release other");
}

/// A release whose caller gives up half-way still frees every key, in the background.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_release_still_frees_every_key() {
    let (f, memory, svc) = faulty_service();
    let guard = svc.lock_all(["a", "b"]).ttl(Duration::from_secs(30)).await.expect("both");
    // Every release reaches the store 100 ms late.
    f.inject(Rule::delay(Op::Release, Duration::from_millis(100)));
    let gave_up = tokio::time::timeout(Duration::from_millis(150), guard.release()).await;
    assert!(gave_up.is_err(), "the release should still have been running");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(memory.held_count(), 0, "a key stayed held after a cancelled release");
}

/// Extreme durations: "wait forever" works, an absurd ttl is refused, nothing panics.
#[tokio::test(flavor = "current_thread")]
async fn extreme_durations_do_not_panic() {
    let svc = LockService::new(MemoryBackend::new());
    let guard = svc.lock("k").wait(Duration::MAX).await.expect("free key, however long the wait");
    guard.release().await.expect("release");
    let huge = svc.lock("k").ttl(Duration::from_secs(u64::MAX / 2)).await;
    assert!(matches!(huge, Err(Error::InvalidInput { what: "ttl", .. })), "{huge:?}");
    let store = MemoryBackend::new();
    let outcome =
        store.try_acquire(&FullKey::new("", "k"), "o", Duration::MAX).await.expect("the backend saturates");
    assert!(matches!(outcome, TryAcquire::Acquired { .. }));
}

/// A release the backend fails to answer (a broken connection; the driver of a runtime that is
/// shutting down, under a guard dropped as it ends) is sent again in the background until it
/// is answered: the key is free within moments, not left held for the rest of its ttl. The
/// caller of `release()` still hears that its release failed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_release_is_retried_not_left_for_its_ttl() {
    let (f, memory, svc) = faulty_service();
    let free = |key: &'static str| {
        let memory = memory.clone();
        async move {
            let attempt = memory.try_acquire(&FullKey::new("", key), "other", Duration::from_secs(1)).await;
            matches!(attempt, Ok(TryAcquire::Acquired { .. }))
        }
    };

    // `guard.release()`, answered by an error.
    let guard = svc.lock("released").ttl(Duration::from_secs(30)).await.expect("released");
    f.inject(Rule::fail(Op::Release, BackendErrorKind::Connection).key("released").once());
    assert!(
        matches!(guard.release().await, Err(Error::Backend { .. })),
        "the caller hears that its release failed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(free("released").await, "still held 1 s after a failed release (its ttl is 30 s)");

    // A guard dropped, whose background release fails the same way.
    let guard = svc.lock("dropped").ttl(Duration::from_secs(30)).await.expect("dropped");
    f.inject(Rule::fail(Op::Release, BackendErrorKind::Connection).key("dropped").once());
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(free("dropped").await, "still held 1 s after a dropped guard's release failed");
    let releases = f.calls_of(Op::Release).iter().filter(|c| c.key == "dropped").count();
    assert_eq!(releases, 2, "one failed release, one retry");
}

/// A set that gives up waiting for its second key gives the first back; when that release
/// fails, it is retried for as long as the first key's lease lasts, which the renewals while
/// the set waited made longer than its first ttl. Before the fix the retries stopped at the
/// end of the first key's *first* lease (its ttl plus the hand-off allowance, 6 s here), and
/// the key stayed held by nobody until its last renewal ran out.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_set_that_gave_up_retries_the_release_of_a_key_it_kept_renewed() {
    let (f, memory, svc) = faulty_service();
    let held =
        memory.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_secs(60)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    // The release of "a" fails twice: in the request's own release, and in the first retry.
    f.inject(Rule::fail(Op::Release, BackendErrorKind::Connection).key("a").times(2));
    let got = svc.lock_all(["a", "b"]).ttl(Duration::from_secs(1)).wait(Duration::from_secs(10)).await;
    assert!(matches!(got, Err(Error::Timeout { .. })), "`b` is held for 60 s: {got:?}");
    assert!(f.calls_of(Op::Renew).len() >= 20, "`a` was renewed while the set waited for `b`");
    // The retries pause 50 ms, then 100 ms; the last renewal of "a" lasts until at least
    // 10.6 s after the set began.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = memory.try_acquire(&FullKey::new("", "a"), "other", Duration::from_secs(1)).await;
    assert!(
        matches!(other, Ok(TryAcquire::Acquired { .. })),
        "`a` is still held 300 ms after the set gave up: {other:?}; releases of `a`: {}",
        f.calls_of(Op::Release).iter().filter(|c| c.key == "a").count()
    );
}

/// Past its `wait`, a set still gives each next key one attempt (as `wait(0)` does: a set of
/// free keys is taken however short its wait), so on a backend that answers slower than the
/// wait it ends up to one call per key late — and gives up at the first key it does not get at
/// once, without trying the keys after it. Here every acquire reaches the store 400 ms late:
/// `a` is answered at 400 ms, `b` (in flight at the 500 ms deadline) at 800 ms, and `c`, held,
/// at 1200 ms; `d` is never tried. The README (point 4) states this bound.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_set_past_its_wait_gives_each_next_key_one_attempt_and_stops_at_the_first_held() {
    let (f, memory, svc) = faulty_service();
    let held =
        memory.try_acquire(&FullKey::new("", "c"), "someone", Duration::from_secs(60)).await.expect("c");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    f.inject(Rule::delay(Op::TryAcquire, Duration::from_millis(400)));
    let started = tokio::time::Instant::now();
    let got = svc.lock_all(["a", "b", "c", "d"]).wait(Duration::from_millis(500)).await;
    let took = started.elapsed();
    assert!(matches!(got, Err(Error::Timeout { ref key, .. }) if key == "c"), "{got:?}");
    assert_eq!(took, Duration::from_millis(1200), "one attempt at each of a, b, c; none at d");
    let tried: Vec<String> = f.calls_of(Op::TryAcquire).into_iter().map(|call| call.key).collect();
    assert_eq!(tried, ["a", "b", "c"], "past its wait the set tried only the next key, once");
    assert_eq!(memory.held_count(), 1, "the set gave back `a` and `b`");
}

/// A set that gives up waiting for its second key keeps its place at the head of the first
/// key's local queue until the release of that key is answered: when the release fails and is
/// retried in the background (failing again once), the next task of the process waits in the local queue for the
/// retry, then finds the key free at its first attempt. Before the fix the set gave up its
/// place as soon as its own release had failed: the next task asked the backend for a key
/// this process still held (three attempts, a watch, and a wait on the backend instead of one
/// attempt), and a backend blip that failed the release could fail that task's first attempt
/// too.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_set_that_gave_up_keeps_its_local_place_until_its_release_is_answered() {
    let (f, memory, svc) = faulty_service();
    let held =
        memory.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_secs(60)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    // The set's release of "a" fails, and so does the first retry in the background; the
    // second, 50 ms later, frees it.
    f.inject(Rule::fail(Op::Release, BackendErrorKind::Connection).key("a").times(2));
    let got = svc.lock_all(["a", "b"]).ttl(Duration::from_secs(10)).wait(Duration::from_millis(100)).await;
    assert!(matches!(got, Err(Error::Timeout { .. })), "`b` is held for 60 s: {got:?}");
    let set_owner = f.calls_of(Op::TryAcquire)[0].owner.clone();

    let next = svc.lock("a").ttl(Duration::from_secs(10)).wait(Duration::from_secs(5)).await;
    let next = next.unwrap_or_else(|err| panic!("`a` is free 50 ms after the set gave up: {err}"));
    asked_once_after_the_last_release(&f, "a", set_owner.as_deref());
    assert!(next.release().await.expect("release"));
}

/// The task that took `key` after `first_owner` asked for it once, after the last release of
/// it: it waited in the local queue, not on the backend, for a key this process still held.
fn asked_once_after_the_last_release(f: &FaultyBackend, key: &str, first_owner: Option<&str>) {
    let calls = f.calls();
    let last_release = calls.iter().rposition(|c| c.op == Op::Release && c.key == key).expect("released");
    let attempts: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.op == Op::TryAcquire && c.key == key && c.owner.as_deref() != first_owner)
        .map(|(i, _)| i)
        .collect();
    assert!(
        attempts.len() == 1 && attempts[0] > last_release,
        "the next task asked for `{key}` before the release of it was answered \
         (its attempts are calls {attempts:?}, the answered release call {last_release}): {:?}",
        calls.iter().map(|c| (c.op, c.key.as_str())).collect::<Vec<_>>()
    );
}

/// A guard whose release fails keeps its key's local place until the release, retried in
/// the background, is answered: the next task of the process, waiting behind it, then finds
/// the key free at its first attempt. Before the fix the place went as soon as the failed
/// release returned, and that task asked the backend for a key this process still held.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_release_keeps_the_local_place_until_its_retry_is_answered() {
    let (f, _memory, svc) = faulty_service();
    let guard = svc.lock("k").ttl(Duration::from_secs(30)).await.expect("k");
    let first_owner = f.calls_of(Op::TryAcquire)[0].owner.clone();
    let next = tokio::spawn({
        let svc = svc.clone();
        async move { svc.lock("k").ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).await }
    });
    tokio::task::yield_now().await; // the next task queues behind the guard
    // The release fails, and so does the first retry; the second, 50 ms later, frees it.
    f.inject(Rule::fail(Op::Release, BackendErrorKind::Connection).key("k").times(2));
    assert!(matches!(guard.release().await, Err(Error::Backend { .. })), "the release failed");
    let next = next.await.expect("join");
    let next = next.unwrap_or_else(|err| panic!("`k` is free 50 ms after the failed release: {err}"));
    asked_once_after_the_last_release(&f, "k", first_owner.as_deref());
    assert!(next.release().await.expect("release"));
}

/// A set whose first key's lease ended while it waited for a later key gives up its place
/// at the head of the first key's local queue then, as a guard whose lease is lost does: the
/// next task of the process competes for a key that nobody holds any more. Before the fix the
/// set kept that place until it had every key or gave up (5 s here), and the next task waited
/// behind it until its own `wait` (3 s) ran out.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_set_gives_up_its_local_place_for_a_key_it_lost_while_waiting_for_another() {
    let (_f, memory, svc) = faulty_service();
    let held =
        memory.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_secs(5)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    let set = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.lock_all(["a", "b"])
                .ttl(Duration::from_secs(1))
                .renew(false)
                .wait(Duration::from_secs(10))
                .await
        }
    });
    while memory.held_count() < 2 {
        tokio::task::yield_now().await; // the set takes "a", then waits for "b"
    }
    let started = tokio::time::Instant::now();
    let next = svc.lock("a").ttl(Duration::from_secs(30)).wait(Duration::from_secs(3)).await;
    assert!(
        next.is_ok(),
        "the next task did not get `a`, whose lease the set had lost 1 s in: {next:?} after {:?}",
        started.elapsed()
    );
    drop(next);
    let set = set.await.expect("join").expect("the set, once `b` is free");
    assert!(!set.is_lost());
}

/// A key released while other processes wait for it, on a current-thread runtime that then
/// idles: the next task of this process, on another runtime, still gets it (after the 2 ms
/// head start this process gives the other processes). Before the fix the head start was a
/// timer on the releasing runtime, which never fired while that runtime idled once it had
/// started it: the next task kept waiting behind a released key for its whole `wait`.
#[test]
fn the_head_start_after_a_release_does_not_wait_for_the_releasing_runtime() {
    let faulty = FaultyBackend::new(MemoryBackend::new());
    faulty.inject(Rule::others_waiting());
    let svc = LockService::new(faulty);
    let idle = current_thread();
    idle.block_on(async {
        let guard = svc.lock("k").ttl(Duration::from_secs(30)).await.expect("lock");
        assert!(guard.release().await.expect("release"));
        // The operation awaits something else before its `block_on` returns.
        tokio::task::yield_now().await;
    });
    let started = std::time::Instant::now();
    let got = current_thread().block_on(async { svc.lock("k").wait(Duration::from_secs(2)).await });
    assert!(
        got.is_ok(),
        "the next task of the process did not get a released key: {got:?} after {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// A guard dropped at the end of a `block_on` on a current-thread runtime that then idles (a
/// synchronous program that keeps one runtime and blocks on it per operation) is released at
/// once, not when that runtime is next driven. Before the fix, its release task waited on that
/// runtime, and another client waited for the whole ttl.
#[test]
fn a_guard_dropped_at_the_end_of_block_on_is_released_while_its_runtime_idles() {
    let backend: std::sync::Arc<dyn LockBackend> = std::sync::Arc::new(MemoryBackend::new());
    let (a, b) = (
        LockService::builder_from_arc(std::sync::Arc::clone(&backend)).build(),
        LockService::builder_from_arc(backend).build(),
    );
    let idle = current_thread();
    idle.block_on(async {
        let _guard = a.lock("k").ttl(Duration::from_secs(30)).await.expect("lock");
    });
    let got = current_thread().block_on(async { b.lock("k").wait(Duration::from_secs(5)).await });
    assert!(got.is_ok(), "the dropped guard's key was not released while its runtime idled: {got:?}");
    drop(idle);
}

/// As above, but the release task started before the `block_on` returned (the body awaited
/// something else after dropping the guard) and its request had not reached the store yet (a
/// command queued for a connection whose driver runs on that runtime): dlock's runtime sends
/// the release itself. Before the fix it was left half-sent on the idle runtime, and another
/// client waited for the whole ttl.
#[test]
fn a_guard_whose_release_started_before_its_runtime_went_idle_is_released() {
    let memory = MemoryBackend::new();
    let faulty = FaultyBackend::new(memory.clone());
    let (a, b) = (LockService::new(faulty.clone()), LockService::new(memory));
    let idle = current_thread();
    idle.block_on(async {
        let guard = a.lock("k").ttl(Duration::from_secs(30)).await.expect("lock");
        // The release reaches the store a little after it is sent, on this runtime's timer.
        faulty.inject(Rule::delay(Op::Release, Duration::from_millis(10)));
        drop(guard);
        // The body goes on awaiting: the release task starts, then the `block_on` returns.
        while faulty.count(Op::Release) == 0 {
            tokio::task::yield_now().await;
        }
    });
    let got = current_thread().block_on(async { b.lock("k").wait(Duration::from_secs(5)).await });
    assert!(got.is_ok(), "the dropped guard's release was left half-sent on its idle runtime: {got:?}");
    drop(idle);
}

/// A guard taken on one runtime and kept after that runtime ended — returned from its
/// `block_on`, then used on another — is still renewed: the keeper that ran on the ended
/// runtime moves to dlock's own. Before the fix its renewals stopped with the runtime, and the
/// guard was reported lost at its first deadline though it lived on, on a live runtime.
#[test]
fn a_guard_outliving_the_runtime_that_took_it_is_still_renewed() {
    let memory = MemoryBackend::new();
    let faulty = FaultyBackend::new(memory);
    let service = LockService::new(faulty.clone());
    let taken_on = current_thread();
    let guard =
        taken_on.block_on(async { service.lock("k").ttl(Duration::from_millis(600)).await.expect("lock") });
    drop(taken_on);
    current_thread().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while faulty.count(Op::Renew) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} renewals in 5 s of a 600 ms lease after its runtime ended (lost: {})",
                faulty.count(Op::Renew),
                guard.is_lost()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!guard.is_lost(), "the guard was reported lost");
        assert!(guard.release().await.expect("release"), "still ours");
    });
}

/// A guard kept between two `block_on`s of a current-thread runtime is not renewed while that
/// runtime idles (the keeper runs on it): as the README says, it is then reported lost once its
/// lease may have ended, and another client gets the key.
#[test]
fn a_guard_kept_across_an_idle_current_thread_runtime_is_reported_lost_when_its_lease_ends() {
    let memory = MemoryBackend::new();
    let (a, b) = (LockService::new(memory.clone()), LockService::new(memory));
    let idle = current_thread();
    let guard = idle.block_on(async { a.lock("k").ttl(Duration::from_millis(300)).await.expect("lock") });
    assert!(!guard.is_lost());
    // Nobody drives `idle` past the lease.
    std::thread::sleep(Duration::from_millis(400));
    assert!(guard.is_lost(), "a lease nobody could renew is reported lost");
    let got = current_thread().block_on(async { b.lock("k").wait(Duration::ZERO).await });
    assert!(got.is_ok(), "the key went to another client: {got:?}");
    drop(guard);
    drop(idle);
}

/// As above, with a renewal on the wire when the guard is dropped: its answer can only come
/// when the idle runtime is driven again, and the release does not wait for it (a renewal
/// landing after the release is owner-checked and changes nothing). Before the fix the release
/// waited for that answer, and the key stayed held until the renewed lease ran out.
#[test]
fn a_guard_dropped_with_a_renewal_on_the_wire_is_released_while_its_runtime_idles() {
    let memory = MemoryBackend::new();
    let faulty = FaultyBackend::new(memory.clone());
    let (a, b) = (LockService::new(faulty.clone()), LockService::new(memory));
    let idle = current_thread();
    idle.block_on(async {
        let _guard = a.lock("k").ttl(Duration::from_millis(900)).await.expect("lock");
        // The renewal, due at ttl/3 (300 ms), reaches the store; its answer takes 50 ms.
        faulty.inject(Rule::delay_answer(Op::Renew, Duration::from_millis(50)));
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert_eq!(faulty.count(Op::Renew), 1, "a renewal was sent");
        assert_eq!(faulty.answered(Op::Renew), 0, "and is still on the wire");
    });
    let got = current_thread().block_on(async { b.lock("k").wait(Duration::from_millis(600)).await });
    assert!(got.is_ok(), "the dropped guard's key was not released while its runtime idled: {got:?}");
    drop(idle);
}

/// A waiting request whose winning attempt's answer was lost (the key was taken for it, the
/// answer timed out on the way back) takes the key on its next attempt: the backend gives an
/// owner a key it already holds (contract, point 1). Before the fix the memory backend said
/// `Held` to its own owner, and the request waited on its own lock until `wait` ran out.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiter_whose_winning_answer_was_lost_takes_the_key_on_its_next_attempt() {
    let (faulty, memory, service) = faulty_service();
    let other = LockService::new(memory);
    let holder = other.lock("k").ttl(Duration::from_secs(30)).await.expect("holder");
    faulty.inject(Rule::lose_answer(Op::TryAcquire, BackendErrorKind::Timeout).if_acquired().once());
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = service.lock("k").ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).await;
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(holder.release().await.expect("release"));
    let (got, waited) = waiter.await.expect("the waiter's task");
    let guard = got.unwrap_or_else(|err| {
        panic!("the key was free 100 ms in, yet the waiter gave up after {waited:?}: {err}")
    });
    assert!(waited < Duration::from_secs(2), "the waiter took {waited:?}");
    assert!(guard.release().await.expect("release"));
}

/// A backend that moves to another server right after it answers the acquisition of one key,
/// before the service has kept that lease: the new server lacks the key (it is released in
/// the store), the lease epoch moves, and the answer is handed back only once the service's
/// re-check of the leases it keeps has run (it renews `witness`, held before).
#[derive(Debug, Clone)]
struct MovingBackend {
    inner: MemoryBackend,
    epochs: Arc<watch::Sender<u64>>,
    /// The key whose acquisition is followed by the move.
    moves_after: Arc<Mutex<Option<String>>>,
    moved: Arc<AtomicBool>,
    /// Notified by each renewal of the witness after the move.
    witness_renewed: Arc<Notify>,
}

impl MovingBackend {
    fn new() -> Self {
        Self {
            inner: MemoryBackend::new(),
            epochs: Arc::new(watch::channel(0).0),
            moves_after: Arc::default(),
            moved: Arc::default(),
            witness_renewed: Arc::default(),
        }
    }
}

impl LockBackend for MovingBackend {
    fn name(&self) -> &'static str {
        "moving"
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        Box::pin(async move {
            let answer = self.inner.try_acquire(key, owner, ttl).await?;
            let moves =
                self.moves_after.lock().unwrap_or_else(|e| panic!("{e}")).as_deref() == Some(key.as_str());
            if moves && matches!(answer, TryAcquire::Acquired { .. }) {
                self.moves_after.lock().unwrap_or_else(|e| panic!("{e}")).take();
                // The server that answered is left; the new one never had the key.
                self.inner.release(key, owner).await?;
                self.moved.store(true, Ordering::SeqCst);
                self.epochs.send_modify(|epoch| *epoch += 1);
                // Hand the answer back only after the re-check of the kept leases ran.
                let swept =
                    tokio::time::timeout(Duration::from_secs(5), self.witness_renewed.notified()).await;
                assert!(swept.is_ok(), "the move did not renew the witness within 5 s");
            }
            Ok(answer)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        self.inner.release(key, owner)
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let renewed = self.inner.renew(key, owner, ttl).await;
            if self.moved.load(Ordering::SeqCst) && key.as_str() == "witness" {
                self.witness_renewed.notify_one();
            }
            renewed
        })
    }

    fn lease_epochs(&self) -> Option<watch::Receiver<u64>> {
        Some(self.epochs.subscribe())
    }
}

/// A lease whose acquisition was answered just before the backend moved to another server, but
/// kept by the service only after the move's re-check of every kept lease had run, is checked
/// at once too: the new server lacks it, so it is reported lost now, not at its next renewal
/// (10 s away here) — or, when that check ends it before the request has handed it over, the
/// request takes the key again, on the new server. Before the fix the caller held a guard for
/// a key the backend did not hold until that renewal (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_just_after_the_backend_moved_is_checked_at_once() {
    let backend = MovingBackend::new();
    let service = LockService::new(backend.clone());
    let ttl = Duration::from_secs(30);
    let witness = service.lock("witness").ttl(ttl).await.expect("the witness");
    *backend.moves_after.lock().unwrap_or_else(|e| panic!("{e}")) = Some("acct".to_owned());
    let held = service.lock("acct").ttl(ttl).await.expect("acct");
    let took = poll_until(
        Duration::from_secs(1),
        "the lease reported lost, or the key held on the new server",
        || {
            let settled = held.is_lost() || backend.inner.held_count() == 2;
            async move { settled }
        },
    )
    .await;
    eprintln!(
        "settled {took:?} after the guard was returned (lost: {}; its next renewal was 10 s away)",
        held.is_lost()
    );
    assert!(!witness.is_lost(), "the witness, which the new server has, is still held");
    let lost = held.is_lost();
    assert_eq!(held.release().await.expect("release"), !lost, "a guard not lost held its key");
    assert!(witness.release().await.expect("release the witness"), "the witness was still held");
}

/// A current-thread runtime, as `#[tokio::main(flavor = "current_thread")]` builds one.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}
