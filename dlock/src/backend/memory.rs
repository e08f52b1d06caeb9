//! [`MemoryBackend`]: locks inside one process, with the same semantics as Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    BackendError, BoxFuture, FullKey, LockBackend, ReleaseNotice, ReleaseOutcome, ReleaseWatch, TryAcquire,
};
use crate::time::saturating_add;

/// An in-process lock store: the embedded default for examples and single-instance services,
/// and the double for fast tests.
///
/// It keeps Redis's semantics — leases that expire after their ttl (on tokio's clock, so
/// `tokio::time::pause` works in tests), owner-checked release and renew, strictly increasing
/// fencing tokens — and wakes waiters on release without polling. It does not coordinate
/// processes: use [`RedisBackend`](crate::RedisBackend) for that.
///
/// Cloning is cheap and clones share the same locks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let guard = service.lock("user:42").await?;
/// assert!(service.lock("user:42").wait(std::time::Duration::ZERO).await.is_err());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    holdings: HashMap<FullKey, Holding>,
    watchers: HashMap<FullKey, watch::Sender<ReleaseNotice>>,
    last_token: u64,
    /// `holdings.len()` after the last sweep of expired leases; the next sweep runs at twice it.
    swept_at: usize,
}

/// Who holds a key, until when.
#[derive(Debug)]
struct Holding {
    owner: String,
    expires_at: Instant,
}

impl MemoryBackend {
    /// An empty store.
    ///
    /// ```
    /// assert_eq!(dlock::MemoryBackend::new().held_count(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are held right now (expired leases not counted): handy in tests of code
    /// that locks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::MemoryBackend::new();
    /// let service = dlock::LockService::new(backend.clone());
    /// let guard = service.lock("user:1").await?;
    /// assert_eq!(backend.held_count(), 1);
    /// guard.release().await?;
    /// assert_eq!(backend.held_count(), 0);
    /// # Ok(()) }
    /// ```
    pub fn held_count(&self) -> usize {
        let now = Instant::now();
        self.inner.lock().holdings.values().filter(|l| l.expires_at > now).count()
    }

    /// Drop a key (the full key, prefix included) as if its lease had expired or an operator
    /// deleted it: for tests of what code does when its lock is lost. Returns whether it was
    /// held (a lease that had already run out was not).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::MemoryBackend::new();
    /// let service = dlock::LockService::builder(backend.clone()).key_prefix("app:").build();
    /// let guard = service.lock("user:1").await?;
    /// assert!(backend.force_expire("app:user:1"));
    /// assert!(!guard.release().await?, "the lock was no longer ours");
    /// # Ok(()) }
    /// ```
    pub fn force_expire(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut state = self.inner.lock();
        // A lease that ran out is dropped too, but it was not held (as `held_count` counts).
        let held = state.holdings.remove(key).is_some_and(|holding| holding.expires_at > now);
        if held {
            state.notify(key);
        }
        held
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this mutex cannot leave `State` half-updated in a way that
        // breaks exclusion (every update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn notify(&mut self, key: &str) {
        if let Some(tx) = self.watchers.get(key) {
            tx.send_replace(ReleaseNotice::Released);
        }
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.holdings.len() >= self.swept_at.max(1024) {
            self.holdings.retain(|_, l| l.expires_at > now);
            self.swept_at = self.holdings.len() * 2;
        }
    }
}

impl LockBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let outcome = match state.holdings.get_mut(key) {
            Some(holding) if holding.expires_at > now && holding.owner != owner => {
                TryAcquire::Held { remaining: Some(holding.expires_at - now), newest_token: None }
            }
            // Free, expired, or already this owner's (contract, point 1).
            Some(holding) => {
                holding.owner.clear();
                holding.owner.push_str(owner);
                holding.expires_at = saturating_add(now, ttl);
                state.last_token += 1;
                TryAcquire::Acquired { fencing_token: state.last_token }
            }
            None => {
                state.sweep_if_due(now);
                state.holdings.insert(
                    key.clone(),
                    Holding { owner: owner.to_owned(), expires_at: saturating_add(now, ttl) },
                );
                state.last_token += 1;
                TryAcquire::Acquired { fencing_token: state.last_token }
            }
        };
        drop(state);
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let ours =
            matches!(state.holdings.get(key.as_str()), Some(l) if l.owner == owner && l.expires_at > now);
        if ours {
            state.holdings.remove(key);
            state.notify(key);
        }
        drop(state);
        Box::pin(std::future::ready(Ok(ReleaseOutcome::new(ours))))
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let renewed = match state.holdings.get_mut(key) {
            Some(holding) if holding.owner == owner && holding.expires_at > now => {
                holding.expires_at = saturating_add(now, ttl);
                true
            }
            _ => false,
        };
        drop(state);
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        let mut state = self.inner.lock();
        let rx = match state.watchers.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(ReleaseNotice::Released);
                state.watchers.insert(key.clone(), tx);
                rx
            }
        };
        drop(state);
        let unwatch = Unwatch { inner: Arc::clone(&self.inner), key: key.clone() };
        Box::pin(std::future::ready(Ok(Some(ReleaseWatch::new(rx, Some(Box::new(unwatch)))))))
    }
}

/// Removes a key's notice channel when its last watcher goes.
struct Unwatch {
    inner: Arc<Inner>,
    key: FullKey,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        // `ReleaseWatch` drops its receiver before this guard, so a count of zero means no
        // watcher is left.
        if state.watchers.get(self.key.as_str()).is_some_and(|tx| tx.receiver_count() == 0) {
            state.watchers.remove(self.key.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lease_expires_and_tokens_increase() {
        let m = MemoryBackend::new();
        let k = &FullKey::new("", "k");
        let ttl = Duration::from_millis(100);
        let TryAcquire::Acquired { fencing_token: t1 } = m.try_acquire(k, "a", ttl).await.unwrap() else {
            panic!("first acquire must succeed")
        };
        assert!(matches!(
            m.try_acquire(k, "b", ttl).await.unwrap(),
            TryAcquire::Held { remaining: Some(_), .. }
        ));
        tokio::time::advance(Duration::from_millis(101)).await;
        let TryAcquire::Acquired { fencing_token: t2 } = m.try_acquire(k, "b", ttl).await.unwrap() else {
            panic!("acquire after expiry must succeed")
        };
        assert!(t2 > t1);
        // The old owner's late release and renew leave b's lock alone.
        assert!(!m.release(k, "a").await.unwrap().was_held);
        assert!(!m.renew(k, "a", ttl).await.unwrap());
        assert!(m.renew(k, "b", ttl).await.unwrap());
        assert!(m.release(k, "b").await.unwrap().was_held);
        assert_eq!(m.held_count(), 0);
    }

    /// `force_expire`: "Returns whether it was held" — a lease that has already run out was
    /// not held (`held_count` does not count it either).
    #[tokio::test(start_paused = true)]
    async fn force_expire_of_a_lease_that_ran_out_says_it_was_not_held() {
        let m = MemoryBackend::new();
        let k = &FullKey::new("", "k");
        let ttl = Duration::from_millis(100);
        assert!(matches!(m.try_acquire(k, "a", ttl).await.unwrap(), TryAcquire::Acquired { .. }));
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(m.held_count(), 0);
        assert!(!m.force_expire("k"), "the lease had ended: the key was not held");
        assert!(!m.force_expire("k"), "nothing left to drop");
        assert!(matches!(m.try_acquire(k, "b", ttl).await.unwrap(), TryAcquire::Acquired { .. }));
        assert!(m.force_expire("k"), "a live lease was held");
    }

    #[tokio::test]
    async fn watchers_are_woken_and_cleaned_up() {
        let m = MemoryBackend::new();
        let k = &FullKey::new("", "k");
        let mut w = m.watch_releases(k).await.unwrap().unwrap();
        m.try_acquire(k, "a", Duration::from_secs(5)).await.unwrap();
        assert!(m.release(k, "a").await.unwrap().was_held);
        assert_eq!(w.released().await, ReleaseNotice::Released); // already notified: returns at once
        drop(w);
        assert!(m.inner.lock().watchers.is_empty());
    }
}
