//! Edge cases found in review: each test pins one interleaving that used to let two holders
//! believe they hold one key, leave a key held after a cancelled release, or panic on input.
//!
//! A `Faulty` wrapper around `MemoryBackend` injects the faults (lost answers, refused or
//! failing renewals, slow answers) on tokio's paused clock, so each interleaving is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dlock::backend::{
    BackendError, BackendErrorKind, BoxFuture, FullKey, ReleaseOutcome, ReleaseWatch, TryAcquire,
};
use dlock::{Error, LockBackend, LockService, LostReason, MemoryBackend};

#[derive(Debug, Clone, Default)]
struct Faulty {
    inner: MemoryBackend,
    /// Releases of "a" still happen, but this many of their answers are lost.
    lose_release_answers: Arc<AtomicUsize>,
    /// Refuse the next renewal.
    refuse_next_renewal: Arc<AtomicBool>,
    /// Renewals fail (no answer from the backend).
    renewals_fail: Arc<AtomicBool>,
    /// The answer to a successful acquire of "b" arrives this many ms late.
    slow_b_answer_ms: Arc<AtomicUsize>,
    /// Every release answer arrives this many ms late.
    slow_release_ms: Arc<AtomicUsize>,
}

fn injected() -> BackendError {
    BackendError::new(BackendErrorKind::Timeout, "injected fault")
}

fn ms(n: &AtomicUsize) -> Duration {
    Duration::from_millis(u64::try_from(n.load(Ordering::SeqCst)).unwrap_or(0))
}

impl LockBackend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        Box::pin(async move {
            let outcome = self.inner.try_acquire(key, owner, ttl).await;
            if key == "b" && matches!(outcome, Ok(TryAcquire::Acquired { .. })) {
                tokio::time::sleep(ms(&self.slow_b_answer_ms)).await;
            }
            outcome
        })
    }
    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        Box::pin(async move {
            tokio::time::sleep(ms(&self.slow_release_ms)).await;
            let outcome = self.inner.release(key, owner).await;
            if key == "a"
                && self
                    .lose_release_answers
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(injected());
            }
            outcome
        })
    }
    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            if self.renewals_fail.load(Ordering::SeqCst) {
                return Err(injected());
            }
            if self.refuse_next_renewal.swap(false, Ordering::SeqCst) {
                return Ok(false);
            }
            self.inner.renew(key, owner, ttl).await
        })
    }
    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        self.inner.watch_releases(key)
    }
}

/// A set whose first key was lost while it waited for the second is given back and taken
/// again — under a new owner token, so the still-retried release of the first pass cannot
/// delete the second pass's lock.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_pass_is_not_released_by_the_previous_pass() {
    let f = Faulty::default();
    let svc = LockService::new(f.clone());
    // Someone else holds "b" for 150 ms, so the set waits for it while holding "a".
    let held =
        f.inner.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_millis(150)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    f.refuse_next_renewal.store(true, Ordering::SeqCst); // "a" is lost while waiting
    f.lose_release_answers.store(1, Ordering::SeqCst); // its release goes to background retry
    let guard = svc
        .lock_all(["a", "b"])
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(2))
        .await
        .expect("the set, on a second pass");
    tokio::time::sleep(Duration::from_millis(5)).await; // let the background retry run
    let intruder =
        f.inner.try_acquire(&FullKey::new("", "a"), "intruder", Duration::from_secs(10)).await.expect("try");
    assert!(
        !matches!(intruder, TryAcquire::Acquired { .. }) || guard.is_lost(),
        "two holders of `a`: the guard says held, and an intruder acquired it"
    );
}

/// A renewal that started before the set took its second key does not extend the lease past
/// that key's own expiry.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_renewal_covers_only_the_keys_it_renewed() {
    let f = Faulty::default();
    let svc = LockService::new(f.clone());
    let held =
        f.inner.try_acquire(&FullKey::new("", "b"), "someone", Duration::from_millis(60)).await.expect("b");
    assert!(matches!(held, TryAcquire::Acquired { .. }));
    f.slow_b_answer_ms.store(80, Ordering::SeqCst);
    let failing = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        failing.renewals_fail.store(true, Ordering::SeqCst);
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
        let intruder = f
            .inner
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
    let f = Faulty::default();
    let svc = LockService::new(f.clone());
    let guard = svc.lock_all(["a", "b"]).ttl(Duration::from_secs(30)).await.expect("both");
    f.slow_release_ms.store(100, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(Duration::from_millis(150), guard.release()).await;
    assert!(gave_up.is_err(), "the release should still have been running");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(f.inner.held_count(), 0, "a key stayed held after a cancelled release");
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
