//! [`LockService`]: a backend plus defaults — what annotated functions and the manual API lock
//! with — and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::LockBackend;
use crate::limits::{DEFAULT_TTL, DEFAULT_WAIT, MAX_TTL, MIN_TTL};
use crate::request::LockRequest;
use crate::shared::Shared;

/// A lock backend with its defaults: what annotated functions and [`lock`](crate::lock) use.
///
/// Cloning is cheap; clones share the backend, the defaults and the local wait queues.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::builder(dlock::MemoryBackend::new())
///     .key_prefix("payments:")
///     .default_ttl(Duration::from_secs(10))
///     .default_wait(Duration::from_secs(2))
///     .build();
/// let guard = service.lock("user:42").await?; // the backend sees "payments:user:42"
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockService {
    pub(crate) shared: Arc<Shared>,
}

/// Builds a [`LockService`]; see [`LockService::builder`].
///
/// ```
/// let service = dlock::LockService::builder(dlock::MemoryBackend::new())
///     .key_prefix("app:")
///     .default_ttl(std::time::Duration::from_secs(10))
///     .build();
/// assert_eq!(service.default_ttl(), std::time::Duration::from_secs(10));
/// ```
#[derive(Debug)]
#[must_use = "call .build() to get the service"]
pub struct LockServiceBuilder {
    backend: Arc<dyn LockBackend>,
    prefix: String,
    default_ttl: Duration,
    default_wait: Duration,
}

impl LockServiceBuilder {
    /// Prepend `prefix` to every key this service locks (for example `"myapp:lock:"`), so
    /// several applications can share one Redis.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::MemoryBackend::new();
    /// let service = dlock::LockService::builder(backend.clone()).key_prefix("myapp:").build();
    /// let guard = service.lock("user:42").await?;
    /// assert_eq!(guard.key(), "user:42"); // the key as written; the backend holds "myapp:user:42"
    /// # Ok(()) }
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease used when a call gives no `ttl` (default 30 s). Values are kept within
    /// [`MIN_TTL`] and [`MAX_TTL`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new())
    ///     .default_ttl(Duration::from_secs(5))
    ///     .build();
    /// assert_eq!(service.default_ttl(), Duration::from_secs(5));
    /// ```
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        self
    }

    /// How long a call waits for a lock when it gives no `wait` (default 30 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new())
    ///     .default_wait(Duration::from_millis(500))
    ///     .build();
    /// assert_eq!(service.default_wait(), Duration::from_millis(500));
    /// ```
    pub fn default_wait(mut self, wait: Duration) -> Self {
        self.default_wait = wait;
        self
    }

    /// The service.
    ///
    /// ```
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new()).build();
    /// assert_eq!(service.key_prefix(), "");
    /// ```
    pub fn build(self) -> LockService {
        let lease_epochs = crate::keeper::follow_lease_epochs(&self.backend);
        LockService {
            shared: Arc::new(Shared::new(
                self.backend,
                self.prefix,
                self.default_ttl,
                self.default_wait,
                lease_epochs,
            )),
        }
    }
}

impl fmt::Debug for LockService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl LockService {
    /// A service over `backend` with the default settings (no prefix, ttl 30 s, wait 30 s).
    ///
    /// ```
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// assert_eq!(service.default_ttl(), dlock::DEFAULT_TTL);
    /// ```
    pub fn new(backend: impl LockBackend) -> Self {
        Self::builder(backend).build()
    }

    /// A builder to set the key prefix, default ttl and default wait.
    ///
    /// ```
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("app:").build();
    /// assert_eq!(service.key_prefix(), "app:");
    /// ```
    pub fn builder(backend: impl LockBackend) -> LockServiceBuilder {
        Self::builder_from_arc(Arc::new(backend))
    }

    /// Like [`builder`](Self::builder), for a backend that is already shared.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let backend: Arc<dyn dlock::LockBackend> = Arc::new(dlock::MemoryBackend::new());
    /// let a = dlock::LockService::builder_from_arc(Arc::clone(&backend)).key_prefix("a:").build();
    /// let b = dlock::LockService::builder_from_arc(backend).key_prefix("b:").build();
    /// assert_eq!(a.backend().name(), b.backend().name());
    /// ```
    pub fn builder_from_arc(backend: Arc<dyn LockBackend>) -> LockServiceBuilder {
        LockServiceBuilder {
            backend,
            prefix: String::new(),
            default_ttl: DEFAULT_TTL,
            default_wait: DEFAULT_WAIT,
        }
    }

    /// A request for the lock on `key`; set `.ttl()`, `.wait()`, `.renew()`, then `.await` it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("user:42").await?;
    /// assert_eq!(guard.key(), "user:42");
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, key: impl Into<String>) -> LockRequest {
        LockRequest::new(Ok(Arc::clone(&self.shared)), vec![key.into()])
    }

    /// A request for all of `keys` at once.
    ///
    /// Duplicates are merged and the keys are taken in one deterministic (sorted) order, so
    /// two calls over overlapping sets never deadlock each other. It is all or nothing: if any
    /// key cannot be had within `wait`, those already taken are released. Every key gets one
    /// attempt, as with a `wait` of zero, also once `wait` has run out: a set of free keys is
    /// taken however short its wait, and on a backend slower than the wait a set may end one
    /// call per key late (it stops at the first key that is not free). One renewal keeps
    /// them all, and the guard is lost if any one of them is. No keys at all is
    /// [`Error::InvalidInput`](crate::Error::InvalidInput).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock_all(["account:b", "account:a"]).await?;
    /// assert_eq!(guard.keys().collect::<Vec<_>>(), ["account:a", "account:b"]);
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lock_all<I, K>(&self, keys: I) -> LockRequest
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        LockRequest::new(Ok(Arc::clone(&self.shared)), keys.into_iter().map(Into::into).collect())
    }

    /// The backend this service uses.
    ///
    /// ```
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// assert_eq!(service.backend().name(), "memory");
    /// ```
    pub fn backend(&self) -> &dyn LockBackend {
        &*self.shared.backend
    }

    /// The key prefix.
    ///
    /// ```
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// assert_eq!(service.key_prefix(), "");
    /// ```
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The ttl used when a call gives none.
    ///
    /// ```
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// assert_eq!(service.default_ttl(), dlock::DEFAULT_TTL);
    /// ```
    pub fn default_ttl(&self) -> Duration {
        self.shared.default_ttl
    }

    /// The wait used when a call gives none.
    ///
    /// ```
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// assert_eq!(service.default_wait(), dlock::DEFAULT_WAIT);
    /// ```
    pub fn default_wait(&self) -> Duration {
        self.shared.default_wait
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::LockService;
    use crate::backend::{
        BackendError, BoxFuture, FullKey, LockBackend, MemoryBackend, ReleaseOutcome, ReleaseWatch,
        TryAcquire,
    };
    use crate::error::Error;
    use crate::limits::{MAX_TTL, MIN_TTL};

    /// `LockServiceBuilder::default_ttl`: "Values are kept within MIN_TTL and MAX_TTL".
    #[test]
    fn builder_default_ttl_is_kept_within_the_bounds() {
        let short = LockService::builder(MemoryBackend::new()).default_ttl(Duration::ZERO).build();
        assert_eq!(short.default_ttl(), MIN_TTL);
        let long = LockService::builder(MemoryBackend::new()).default_ttl(Duration::MAX).build();
        assert_eq!(long.default_ttl(), MAX_TTL);
    }

    /// A memory backend that rejects keys containing a space and counts the calls it gets.
    #[derive(Debug, Default)]
    struct Picky {
        inner: MemoryBackend,
        calls: Arc<AtomicUsize>,
    }

    impl LockBackend for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }
        fn check_key(&self, key: &FullKey) -> Result<(), String> {
            if key.contains(' ') { Err("keys may not contain spaces".into()) } else { Ok(()) }
        }
        fn try_acquire<'a>(
            &'a self,
            key: &'a FullKey,
            owner: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.try_acquire(key, owner, ttl)
        }
        fn release<'a>(
            &'a self,
            key: &'a FullKey,
            owner: &'a str,
        ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.release(key, owner)
        }
        fn renew<'a>(
            &'a self,
            key: &'a FullKey,
            owner: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, BackendError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.renew(key, owner, ttl)
        }
        fn watch_releases<'a>(
            &'a self,
            key: &'a FullKey,
        ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.watch_releases(key)
        }
    }

    /// `LockBackend::check_key`: "`Err` says why not (the service reports it as
    /// `Error::InvalidInput` before any call)" — also for a key among several that are fine.
    #[tokio::test]
    async fn a_key_the_backend_refuses_is_invalid_input_before_any_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let backend = Picky { inner: MemoryBackend::new(), calls: Arc::clone(&calls) };
        let service = LockService::builder(backend).key_prefix("app:").build();
        match service.lock_all(["a", "b c"]).await {
            Err(Error::InvalidInput { what: "key", reason }) => {
                assert!(reason.contains("app:b c") && reason.contains("spaces"), "{reason}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no backend call for a refused request");
    }

    /// `LockRequest::renew(false)`: without renewal the guard reports itself lost a safety
    /// margin *before* the ttl, while the backend still holds the key.
    #[tokio::test(start_paused = true)]
    async fn without_renewal_the_guard_is_lost_before_the_backend_lets_go() {
        let backend = MemoryBackend::new();
        let service = LockService::new(backend.clone());
        let ttl = Duration::from_secs(1);
        let guard = service.lock("k").ttl(ttl).renew(false).await.unwrap();
        let margin = crate::lease::safety_margin(ttl);
        tokio::time::advance(ttl - margin).await;
        assert!(guard.is_lost(), "lost at ttl - margin ({margin:?} before ttl)");
        assert_eq!(backend.held_count(), 1, "the backend still holds the key until ttl");
        assert!(!guard.release().await.unwrap(), "a lost guard's release reports it");
    }

    /// What the docs promise is `Send` (attribute.md, `LockGuard`, `LockRequest`): a guard, and
    /// the futures of taking, scoping, watching and releasing one, can cross `tokio::spawn`.
    #[test]
    fn guards_and_their_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::LockGuard>();
        send_sync::<LockService>();
        send_sync::<crate::LockRequest>();
        let service = LockService::new(MemoryBackend::new());
        send(&std::future::IntoFuture::into_future(service.lock("k")));
        send(&crate::with_service(service, async { 1 }));
        // Type-checked only: never called.
        let _ = |guard: crate::LockGuard| {
            send(&guard.scope(async { crate::fencing_token() }));
            send(&guard.lost());
            send(&guard.release());
        };
    }
}
