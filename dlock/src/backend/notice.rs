//! Waiting without polling: [`ReleaseNotice`]s a backend sends through a [`ReleaseWatch`], and
//! the timing rules of a backend's waiting line ([`WAITER_RECHECK`], [`HANDOFF_LEASE`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// About how often a waiting dlock request asks the backend again (see the contract,
/// point 6). Between two asks it waits for a release notice.
///
/// ```
/// assert_eq!(dlock::backend::WAITER_RECHECK, std::time::Duration::from_secs(1));
/// ```
pub const WAITER_RECHECK: Duration = Duration::from_secs(1);

/// How long dlock's own backends wait, in `watch_releases`, for the server to confirm a new
/// subscription before they hand back a watch that does not [hear](ReleaseWatch::hears) yet:
/// the waiter then asks at the polling rhythm until the confirmation comes, instead of
/// standing still while a notice server that is down or refusing keeps it waiting.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) const CONFIRMATION_WAIT: Duration = Duration::from_millis(250);

/// The longest first lease a backend may give an owner it hands a key to (see the contract,
/// point 6): a waiting process that died in line can be handed the key before the backend
/// forgets it, and then keeps others out for this long at most, instead of its whole ttl. A
/// live owner renews it like any lease (a third of the way through, to its full ttl). A
/// request with `.renew(false)` and a longer ttl does not take a hand-off on trust: it asks
/// again, which gives it the key with its full ttl and a new fencing token.
///
/// ```
/// assert_eq!(dlock::backend::HANDOFF_LEASE, std::time::Duration::from_secs(5));
/// ```
pub const HANDOFF_LEASE: Duration = Duration::from_secs(5);

/// What a release notice says.
///
/// ```
/// use dlock::backend::ReleaseNotice;
/// // A hand-off is taken only by the owner it names.
/// let notice = ReleaseNotice::Granted { owner: "owner-a".into(), fencing_token: 42 };
/// assert!(matches!(&notice, ReleaseNotice::Granted { owner, .. } if &**owner == "owner-a"));
/// assert_eq!(ReleaseNotice::default(), ReleaseNotice::Released);
/// ```
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
/// [`LockBackend::watch_releases`](super::LockBackend::watch_releases).
///
/// It wraps a [`watch::Receiver`] to which the backend sends a [`ReleaseNotice`] on every
/// release of the key; a notice sent after the watch was made and before
/// [`released`](Self::released) is awaited is not missed (a later one may replace it).
/// Whatever the backend puts in `keep_alive` is dropped with the watch (for example, to
/// unsubscribe when the last local waiter leaves).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dlock::backend::{ReleaseNotice, ReleaseWatch};
/// let (tx, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
/// let mut watch = ReleaseWatch::new(rx, None);
/// tx.send_replace(ReleaseNotice::Released); // what a backend does on a release
/// assert_eq!(watch.released().await, ReleaseNotice::Released);
/// # }
/// ```
pub struct ReleaseWatch {
    rx: watch::Receiver<ReleaseNotice>,
    /// Whether notices are heard now; `None`: always.
    hearing: Option<watch::Receiver<bool>>,
    _keep_alive: Option<Box<dyn Send + Sync>>,
}

impl ReleaseWatch {
    /// A watch over `rx`, holding `keep_alive` until dropped.
    ///
    /// ```
    /// use dlock::backend::{ReleaseNotice, ReleaseWatch};
    /// let (tx, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// let watch = ReleaseWatch::new(rx, None);
    /// tx.send_replace(ReleaseNotice::Released); // what the backend does on a release
    /// # drop(watch);
    /// ```
    pub fn new(rx: watch::Receiver<ReleaseNotice>, keep_alive: Option<Box<dyn Send + Sync>>) -> Self {
        Self { rx, hearing: None, _keep_alive: keep_alive }
    }

    /// Say whether notices are heard at each moment: `hearing` is `true` while the backend's
    /// subscription for the key is confirmed (a backend whose notice connection is down, or
    /// whose subscription the server refused, sends `false`). A waiter whose watch does not
    /// hear asks again as often as one without notices (every 2 ms, doubling up to 100 ms)
    /// instead of every [`WAITER_RECHECK`]; when the subscription comes back, send the flag
    /// *and* a notice, so that waiters ask again (and register for notices) at once.
    ///
    /// ```
    /// use dlock::backend::{ReleaseNotice, ReleaseWatch};
    /// let (_notices, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// let (subscribed, hearing) = tokio::sync::watch::channel(false);
    /// let watch = ReleaseWatch::new(rx, None).with_hearing(hearing);
    /// assert!(!watch.hears(), "not subscribed yet");
    /// subscribed.send_replace(true);
    /// assert!(watch.hears());
    /// ```
    pub fn with_hearing(mut self, hearing: watch::Receiver<bool>) -> Self {
        self.hearing = Some(hearing);
        self
    }

    /// Whether release notices for the key are heard now (see
    /// [`with_hearing`](Self::with_hearing); a watch made without it always hears).
    ///
    /// ```
    /// use dlock::backend::{ReleaseNotice, ReleaseWatch};
    /// let (_notices, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// assert!(ReleaseWatch::new(rx, None).hears());
    /// ```
    pub fn hears(&self) -> bool {
        self.hearing.as_ref().is_none_or(|hearing| *hearing.borrow())
    }

    /// The flag given to [`with_hearing`](Self::with_hearing), if any: for a wrapping backend
    /// that relays the notices of the watch it wraps through a watch of its own.
    ///
    /// ```
    /// use dlock::backend::{ReleaseNotice, ReleaseWatch};
    /// let (_notices, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// let (_subscribed, hearing) = tokio::sync::watch::channel(false);
    /// let inner = ReleaseWatch::new(rx, None).with_hearing(hearing);
    /// let (_relayed, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// let mut outer = ReleaseWatch::new(rx, None);
    /// if let Some(hearing) = inner.hearing() {
    ///     outer = outer.with_hearing(hearing);
    /// }
    /// assert!(!outer.hears());
    /// ```
    pub fn hearing(&self) -> Option<watch::Receiver<bool>> {
        self.hearing.clone()
    }

    /// Resolves at the next release notice (or at once if one came since the last call) with
    /// what it said. If the backend dropped the sender, it never resolves; callers always
    /// bound it by time.
    ///
    /// ```
    /// use dlock::backend::{ReleaseNotice, ReleaseWatch};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (tx, rx) = tokio::sync::watch::channel(ReleaseNotice::Released);
    /// let mut watch = ReleaseWatch::new(rx, None);
    /// tx.send_replace(ReleaseNotice::Released);
    /// assert_eq!(watch.released().await, ReleaseNotice::Released);
    /// # }
    /// ```
    pub async fn released(&mut self) -> ReleaseNotice {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

impl fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseWatch")
            .field("last", &*self.rx.borrow())
            .field("hears", &self.hears())
            .finish_non_exhaustive()
    }
}
