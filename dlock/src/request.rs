//! [`LockRequest`]: what `lock(key)` returns, configured with builder calls and awaited.

use std::fmt;
use std::future::IntoFuture;
use std::time::Duration;

use std::sync::Arc;

use crate::acquire::{self, LockSpec};
use crate::backend::BoxFuture;
use crate::error::Error;
use crate::guard::LockGuard;
use crate::shared::Shared;

/// A request for one or several locks; `.await` it to get a [`LockGuard`].
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// # dlock::set_global(dlock::LockService::new(dlock::MemoryBackend::new()))?;
/// let guard = dlock::lock("user:42")
///     .ttl(Duration::from_secs(10))      // the lease, renewed every ttl/3 while held
///     .wait(Duration::from_millis(500))  // give up with Error::Timeout after this
///     .await?;
/// assert_eq!(guard.key(), "user:42");
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "a lock request does nothing until it is awaited"]
pub struct LockRequest {
    /// The service, or why there is none (not registered).
    service: Result<Arc<Shared>, Error>,
    spec: LockSpec,
}

impl LockRequest {
    pub(crate) fn new(service: Result<Arc<Shared>, Error>, keys: Vec<String>) -> Self {
        Self { service, spec: LockSpec { keys, ttl: None, wait: None, renew: true } }
    }

    /// Take the locks.
    pub(crate) async fn acquire(self) -> Result<LockGuard, Error> {
        acquire::acquire(&self.service?, self.spec).await
    }

    /// The lease (default: the service's, 30 s). While the guard lives the lease is renewed
    /// every ttl/3, so ttl bounds how long a crashed holder blocks others, not how long the
    /// work may take. A ttl below [`MIN_TTL`](crate::MIN_TTL) or above [`MAX_TTL`](crate::MAX_TTL)
    /// fails the request with [`Error::InvalidInput`] (the service's default is clamped instead).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("k").ttl(std::time::Duration::from_secs(5)).await?;
    /// # guard.release().await?; Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.spec.ttl = Some(ttl);
        self
    }

    /// How long to wait for the lock (default: the service's, 30 s); `Duration::ZERO` makes
    /// one attempt (at each key of a [`lock_all`](crate::LockService::lock_all), which gives
    /// every key that one attempt also once `wait` has run out).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let _held = service.lock("k").await?;
    /// let busy = service.lock("k").wait(std::time::Duration::ZERO).await;
    /// assert!(matches!(busy, Err(dlock::Error::Timeout { .. })));
    /// # Ok(()) }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.spec.wait = Some(wait);
        self
    }

    /// Whether to renew the lease while the guard lives (default `true`). With `false` the
    /// lease ends at ttl, and the guard reports itself lost
    /// ([`LostReason::Expired`](crate::LostReason::Expired)) a safety margin before that (1 % of
    /// the ttl, plus a tenth of the ttl clamped to 2–20 ms), while the backend may still hold it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("k").ttl(std::time::Duration::from_millis(50)).renew(false).await?;
    /// assert_eq!(guard.lost().await, dlock::LostReason::Expired);
    /// # Ok(()) }
    /// ```
    pub fn renew(mut self, renew: bool) -> Self {
        self.spec.renew = renew;
        self
    }
}

impl IntoFuture for LockRequest {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = BoxFuture<'static, Result<LockGuard, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

impl fmt::Debug for LockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockRequest")
            .field("keys", &self.spec.keys)
            .field("ttl", &self.spec.ttl)
            .field("wait", &self.spec.wait)
            .field("renew", &self.spec.renew)
            .finish_non_exhaustive()
    }
}
