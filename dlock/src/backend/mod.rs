//! For backend authors: the [`LockBackend`] contract and the types its methods take and return.
//!
//! Application code needs none of this beyond picking a backend ([`MemoryBackend`],
//! [`RedisBackend`](crate::RedisBackend), …) and handing it to a
//! [`LockService`](crate::LockService). A new lock store implements [`LockBackend`]; dlock's
//! service does everything else (waiting, fairness within a process, renewal, loss detection,
//! re-entrancy, key prefixes, cleanup of abandoned acquisitions).
//!
//! ```
//! use std::time::Duration;
//! use dlock::backend::{FullKey, LockBackend, TryAcquire};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock::backend::BackendError> {
//! // What the service does with a backend, one call at a time:
//! let backend = dlock::MemoryBackend::new();
//! let key = FullKey::new("app:", "user:42");
//! let TryAcquire::Acquired { fencing_token } = backend.try_acquire(&key, "owner-a", Duration::from_secs(5)).await? else {
//!     panic!("the key was free");
//! };
//! assert!(matches!(backend.try_acquire(&key, "owner-b", Duration::from_secs(5)).await?, TryAcquire::Held { .. }));
//! assert!(backend.renew(&key, "owner-a", Duration::from_secs(5)).await?);
//! assert!(backend.release(&key, "owner-a").await?.was_held);
//! # let _ = fencing_token;
//! # Ok(()) }
//! ```

mod error;
mod key;
mod memory;
mod notice;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use error::{BackendError, BackendErrorKind};
pub use key::FullKey;
pub use memory::MemoryBackend;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use notice::CONFIRMATION_WAIT;
pub use notice::{HANDOFF_LEASE, ReleaseNotice, ReleaseWatch, WAITER_RECHECK};

/// A boxed, `Send` future: what [`LockBackend`] methods return, so the trait stays object safe.
///
/// ```
/// use dlock::backend::BoxFuture;
/// fn answer(n: u64) -> BoxFuture<'static, u64> {
///     Box::pin(async move { n })
/// }
/// # let _ = answer(1);
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of one acquire attempt.
///
/// ```
/// use std::time::Duration;
/// use dlock::backend::{FullKey, LockBackend, TryAcquire};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::backend::BackendError> {
/// let backend = dlock::MemoryBackend::new();
/// let key = FullKey::new("", "k");
/// match backend.try_acquire(&key, "me", Duration::from_secs(5)).await? {
///     TryAcquire::Acquired { fencing_token } => assert!(fencing_token > 0),
///     TryAcquire::Held { remaining, .. } => panic!("held for another {remaining:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryAcquire {
    /// The caller now holds the lock, under this fencing token.
    Acquired {
        /// Strictly greater than every token this backend handed out before for the key.
        fencing_token: u64,
    },
    /// Another owner holds the lock.
    Held {
        /// How long the current lease has left, when the backend knows it.
        remaining: Option<Duration>,
        /// For a backend that hands keys over (see the [`LockBackend`] contract, point 6),
        /// when this attempt put the owner in its waiting line (or kept it there): the newest
        /// fencing token it had drawn when it answered. A hand-off to this owner announced
        /// with a greater token happened after this attempt; one with a token not greater is
        /// stale, and dlock asks again instead of trusting it. `None` when the owner is not
        /// waiting in line (dlock then has nothing to withdraw if it gives up).
        newest_token: Option<u64>,
    },
}

/// The outcome of a [`release`](LockBackend::release).
///
/// ```
/// use dlock::backend::ReleaseOutcome;
///
/// let freed = ReleaseOutcome::new(true);
/// assert!(freed.was_held && !freed.others_waiting);
/// assert!(freed.with_others_waiting(true).others_waiting);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseOutcome {
    /// The owner held the key and it is now free (or handed to a waiting owner); `false` when
    /// the owner did not hold it any more, and nothing was touched.
    pub was_held: bool,
    /// Other clients of the backend (other processes) were waiting for the key, or it was
    /// handed to one of them.
    ///
    /// dlock uses it for fairness across processes: when others wait, the releasing process's
    /// own next task for the key (one that waited, or one that asks right after) lets them go
    /// first for a moment (after a hand-off its attempt could only fail, and would take time
    /// from the process the key went to).
    pub others_waiting: bool,
}

impl ReleaseOutcome {
    /// An outcome with nobody else known to be waiting.
    ///
    /// ```
    /// assert!(!dlock::backend::ReleaseOutcome::new(false).was_held);
    /// ```
    pub fn new(was_held: bool) -> Self {
        Self { was_held, others_waiting: false }
    }

    /// The same outcome, saying whether other clients were waiting.
    ///
    /// ```
    /// let outcome = dlock::backend::ReleaseOutcome::new(true).with_others_waiting(true);
    /// assert!(outcome.was_held && outcome.others_waiting);
    /// ```
    #[must_use]
    pub fn with_others_waiting(self, others_waiting: bool) -> Self {
        Self { others_waiting, ..self }
    }
}

/// A store that can hold leases on keys: the abstraction that keeps services independent of
/// any one lock library.
///
/// [`LockService`](crate::LockService) does everything else (waiting, renewal, re-entrancy,
/// key prefixes, tracing); a backend only answers these calls.
///
/// # Contract
/// Every implementation must hold all of these; dlock's guarantees rest on them.
///
/// 1. **Atomic acquire.** [`try_acquire`](Self::try_acquire) takes the key for `owner` for
///    `ttl` only if nobody holds it, in one atomic step, and then returns a fencing token
///    strictly greater than every token it returned before for that key. Otherwise it returns
///    [`TryAcquire::Held`] with the time the current lease has left, if known. An `owner`
///    that holds the key already takes it again the same way (a new token, a lease of `ttl`
///    from now): an attempt whose answer was lost on the way back is settled by the next.
/// 2. **Owner-checked release and renew.** [`release`](Self::release) and
///    [`renew`](Self::renew) act only if `owner` holds the key at that moment, atomically, and
///    report that it did not (touching nothing) otherwise — in particular after the lease
///    expired and another owner took the key.
/// 3. **Leases end.** A key whose lease is not renewed becomes free after `ttl`.
/// 4. **Bounded calls.** No call blocks past the backend's own call timeout; a backend that
///    cannot answer returns an error instead.
/// 5. **Release notices are hints.** [`watch_releases`](Self::watch_releases) may miss or
///    repeat notices; dlock always re-checks with `try_acquire` and never relies on them for
///    safety, only for speed. A backend whose notices can stop (a subscription not confirmed
///    yet, refused, or lost with its connection) says so with
///    [`ReleaseWatch::with_hearing`]: a waiter that does not hear polls instead.
/// 6. **Hand-off (optional).** A backend may give a released key straight to an owner
///    that is waiting for it, and announce that with [`ReleaseNotice::Granted`] (to every
///    watch of the key, if it likes: only the owner it names takes it). Only an owner
///    whose `try_acquire` for the key came back [`Held`](TryAcquire::Held) with a
///    `newest_token` (it is in line) may be chosen; the lease it gets lasts the `ttl` of that
///    owner's latest attempt or [`HANDOFF_LEASE`], whichever is shorter (at least that: dlock
///    counts on it; and at most that, so that a waiter that died in line does not keep the key
///    long), counted from a moment after that attempt reached the backend (dlock counts it from
///    when the attempt was sent, and renews it a third of the way through like any lease), and
///    its fencing token is greater than the `newest_token` that attempt reported. The owner's
///    next `try_acquire` for the key must then answer [`Acquired`](TryAcquire::Acquired) (with
///    a new fencing token and a fresh lease), so a missed notice costs time, never the lock. A
///    `release` by an owner takes it out of line, whether or not it holds the key. dlock asks
///    again about every [`WAITER_RECHECK`] while it waits (plus up to 20 ms of jitter and the
///    call itself; while the backend fails to answer, calls may be up to a call timeout longer
///    apart) and releases any key it may have been handed when it stops waiting; a backend must
///    forget a waiting owner that has not asked again within five of those intervals, so that a
///    crashed waiter is not handed a key after that. All clients of a key must share one
///    fencing counter: the token comparison above is what tells a fresh hand-off notice from a
///    stale one.
///
/// Keys arrive as [`FullKey`]s (the service's prefix included); owners are random tokens that
/// dlock makes anew for every acquisition.
///
/// # Example
///
/// A backend that wraps another and logs every release — the shape of any implementation:
///
/// ```
/// use std::time::Duration;
/// use dlock::backend::{BackendError, BoxFuture, FullKey, LockBackend, ReleaseOutcome, ReleaseWatch, TryAcquire};
///
/// #[derive(Debug)]
/// struct Logged<B>(B);
///
/// impl<B: LockBackend> LockBackend for Logged<B> {
///     fn name(&self) -> &'static str {
///         self.0.name()
///     }
///     fn try_acquire<'a>(&'a self, key: &'a FullKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
///         self.0.try_acquire(key, owner, ttl)
///     }
///     fn release<'a>(&'a self, key: &'a FullKey, owner: &'a str)
///         -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
///         println!("releasing {key}");
///         self.0.release(key, owner)
///     }
///     fn renew<'a>(&'a self, key: &'a FullKey, owner: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<bool, BackendError>> {
///         self.0.renew(key, owner, ttl)
///     }
///     fn watch_releases<'a>(&'a self, key: &'a FullKey)
///         -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
///         self.0.watch_releases(key)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::new(Logged(dlock::MemoryBackend::new()));
/// service.lock("user:1").await?.release().await?;
/// # Ok(()) }
/// ```
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages and traces (`"redis"`, `"memory"`).
    ///
    /// ```
    /// use dlock::LockBackend;
    /// assert_eq!(dlock::MemoryBackend::new().name(), "memory");
    /// ```
    fn name(&self) -> &'static str;

    /// Whether this backend can lock `key` at all; `Err` says why not (the service reports it
    /// as [`Error::InvalidInput`](crate::Error::InvalidInput) before any call). The default
    /// accepts every key.
    ///
    /// ```
    /// use dlock::LockBackend;
    /// let key = dlock::backend::FullKey::new("app:", "user:1");
    /// assert!(dlock::MemoryBackend::new().check_key(&key).is_ok());
    /// ```
    fn check_key(&self, key: &FullKey) -> Result<(), String> {
        let _ = key;
        Ok(())
    }

    /// Try once to take `key` for `owner` with a lease of `ttl`. See the contract, point 1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::backend::BackendError> {
    /// use std::time::Duration;
    /// use dlock::LockBackend;
    /// use dlock::backend::{FullKey, TryAcquire};
    /// let backend = dlock::MemoryBackend::new();
    /// let key = FullKey::new("app:", "user:1");
    /// let first = backend.try_acquire(&key, "owner-a", Duration::from_secs(10)).await?;
    /// assert!(matches!(first, TryAcquire::Acquired { .. }));
    /// let second = backend.try_acquire(&key, "owner-b", Duration::from_secs(10)).await?;
    /// assert!(matches!(second, TryAcquire::Held { .. }));
    /// # Ok(()) }
    /// ```
    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>>;

    /// Release `key` if `owner` holds it (contract, point 2), and say whether other clients of
    /// the backend were waiting for it (see [`ReleaseOutcome::others_waiting`]; report `false`
    /// if the backend cannot tell).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::backend::BackendError> {
    /// use std::time::Duration;
    /// use dlock::LockBackend;
    /// use dlock::backend::{FullKey, TryAcquire};
    /// let backend = dlock::MemoryBackend::new();
    /// let key = FullKey::new("app:", "user:1");
    /// backend.try_acquire(&key, "owner-a", Duration::from_secs(10)).await?;
    /// // Only the owner releases.
    /// assert!(!backend.release(&key, "owner-b").await?.was_held);
    /// assert!(backend.release(&key, "owner-a").await?.was_held);
    /// # Ok(()) }
    /// ```
    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>>;

    /// Extend the lease on `key` to `ttl` from now if `owner` holds it; `Ok(false)` if not.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::backend::BackendError> {
    /// use std::time::Duration;
    /// use dlock::LockBackend;
    /// use dlock::backend::{FullKey, TryAcquire};
    /// let backend = dlock::MemoryBackend::new();
    /// let key = FullKey::new("app:", "user:1");
    /// backend.try_acquire(&key, "owner-a", Duration::from_secs(10)).await?;
    /// assert!(backend.renew(&key, "owner-a", Duration::from_secs(10)).await?);
    /// assert!(!backend.renew(&key, "owner-b", Duration::from_secs(10)).await?);
    /// # Ok(()) }
    /// ```
    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Register interest in releases of `key`, before an acquire attempt.
    ///
    /// Return `Ok(None)` (the default) when the backend has no way to announce releases;
    /// waiters then retry on a jittered timer bounded by the holder's remaining lease.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::backend::BackendError> {
    /// use std::time::Duration;
    /// use dlock::LockBackend;
    /// use dlock::backend::{FullKey, TryAcquire};
    /// let backend = dlock::MemoryBackend::new();
    /// let key = FullKey::new("app:", "user:1");
    /// backend.try_acquire(&key, "owner-a", Duration::from_secs(10)).await?;
    /// let mut watch = backend.watch_releases(&key).await?.expect("MemoryBackend announces releases");
    /// backend.release(&key, "owner-a").await?;
    /// watch.released().await; // woken by the release
    /// # Ok(()) }
    /// ```
    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }

    /// A value that changes when leases this backend granted may all have been lost at once
    /// (it moved to another server: a Sentinel failover; a replica took over a Redis Cluster
    /// shard). On each change the service renews, at once, every lease it holds on this
    /// backend, so a lease the new server does not have is reported lost then rather than at
    /// its next scheduled renewal.
    ///
    /// `None` (the default): leases are renewed on their schedule only.
    ///
    /// ```
    /// use dlock::LockBackend;
    /// assert!(dlock::MemoryBackend::new().lease_epochs().is_none());
    /// ```
    fn lease_epochs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
