//! The [`LockBackend`] trait: the one thing a new lock store implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::BackendError;

/// A boxed, `Send` future: what [`LockBackend`] methods return, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of one acquire attempt.
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
///    [`TryAcquire::Held`] with the time the current lease has left, if known.
/// 2. **Owner-checked release and renew.** [`release`](Self::release) and
///    [`renew`](Self::renew) act only if `owner` holds the key at that moment, atomically, and
///    return `false` (touching nothing) otherwise — in particular after the lease expired and
///    another owner took the key.
/// 3. **Leases end.** A key whose lease is not renewed becomes free after `ttl`.
/// 4. **Bounded calls.** No call blocks past the backend's own call timeout; a backend that
///    cannot answer returns an error instead.
/// 5. **Release notices are hints.** [`watch_releases`](Self::watch_releases) may miss or
///    repeat notices; dlock always re-checks with `try_acquire` and never relies on them for
///    safety, only for speed.
/// 6. **Hand-off (optional).** A backend may give a released key straight to an owner
///    that is waiting for it, and announce that with [`ReleaseNotice::Granted`]. Only an owner
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
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages and traces (`"redis"`, `"memory"`).
    fn name(&self) -> &'static str;

    /// Try once to take `key` for `owner` with a lease of `ttl`. See the contract, point 1.
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>>;

    /// Release `key` if `owner` holds it; `Ok(false)` if it did not (any more).
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Like [`release`](Self::release), and also tell whether other clients of the backend
    /// (other processes) were waiting for `key`, or the key was handed to one of them:
    /// `Ok((was_ours, others_waiting))`.
    ///
    /// dlock uses it for fairness across processes: when others wait, the releasing process's
    /// own next waiter lets them go first for a moment (after a hand-off its attempt could
    /// only fail, and would take time from the process the key went to). The default reports
    /// no waiters.
    fn release_and_check_waiters<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(bool, bool), BackendError>> {
        Box::pin(async move { Ok((self.release(key, owner).await?, false)) })
    }

    /// Extend the lease on `key` to `ttl` from now if `owner` holds it; `Ok(false)` if not.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Register interest in releases of `key`, before an acquire attempt.
    ///
    /// Return `Ok(None)` (the default) when the backend has no way to announce releases;
    /// waiters then retry on a jittered timer bounded by the holder's remaining lease.
    fn watch_releases<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }
}

/// About how often a waiting dlock request asks the backend again (see the contract,
/// point 6). Between two asks it waits for a release notice.
pub const WAITER_RECHECK: Duration = Duration::from_secs(1);

/// The longest first lease a backend may give an owner it hands a key to (see the contract,
/// point 6): a waiting process that died in line can be handed the key before the backend
/// forgets it, and then keeps others out for this long at most, instead of its whole ttl. A
/// live owner renews it like any lease (a third of the way through, to its full ttl). A
/// request with `.renew(false)` and a longer ttl does not take a hand-off on trust: it asks
/// again, which gives it the key with its full ttl and a new fencing token.
pub const HANDOFF_LEASE: Duration = Duration::from_secs(5);

/// What a release notice says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReleaseNotice {
    /// The key was released (or may have been: the backend lost track, say after a
    /// reconnect). Waiters try to acquire it.
    #[default]
    Released,
    /// The key was released and handed straight to `owner` (see the contract, point 6).
    Granted {
        /// The owner token the key now belongs to.
        owner: Arc<str>,
        /// The fencing token of that owner's new lease.
        fencing_token: u64,
    },
}

/// A registration for release notices on one key, made by
/// [`LockBackend::watch_releases`].
///
/// It wraps a [`watch::Receiver`] to which the backend sends a [`ReleaseNotice`] on every
/// release of the key; a notice sent after the watch was made and before
/// [`released`](Self::released) is awaited is not missed (a later one may replace it).
/// Whatever the backend puts in `keep_alive` is dropped with the watch (for example, to
/// unsubscribe when the last local waiter leaves).
pub struct ReleaseWatch {
    rx: watch::Receiver<ReleaseNotice>,
    _keep_alive: Option<Box<dyn Send + Sync>>,
}

impl ReleaseWatch {
    /// A watch over `rx`, holding `keep_alive` until dropped.
    pub fn new(rx: watch::Receiver<ReleaseNotice>, keep_alive: Option<Box<dyn Send + Sync>>) -> Self {
        Self { rx, _keep_alive: keep_alive }
    }

    /// Resolves at the next release notice (or at once if one came since the last call) with
    /// what it said. If the backend dropped the sender, it never resolves; callers always
    /// bound it by time.
    pub async fn released(&mut self) -> ReleaseNotice {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

impl fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseWatch").field("last", &*self.rx.borrow()).finish_non_exhaustive()
    }
}
