//! [`BackendError`]: what a backend reports when a call fails, with a coarse [`BackendErrorKind`].

/// An error reported by a [`LockBackend`](super::LockBackend) implementation.
///
/// Backends build it from a message and, usually, the underlying error. Applications meet it
/// as the source of [`Error::Backend`](crate::Error::Backend):
///
/// ```
/// use dlock::backend::{BackendError, BackendErrorKind};
///
/// fn retry_later(err: &dlock::Error) -> bool {
///     matches!(err, dlock::Error::Backend { source, .. }
///         if matches!(source.kind(), BackendErrorKind::Timeout | BackendErrorKind::Unavailable))
/// }
/// let err = dlock::Error::Backend {
///     key: Some("user:1".into()),
///     backend: "redis",
///     source: BackendError::new(BackendErrorKind::Timeout, "Redis did not answer within 2s"),
/// };
/// assert!(retry_later(&err));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    message: String,
    kind: BackendErrorKind,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// A coarse classification of [`BackendError`]s, for callers that retry some and not others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend did not answer within its call timeout.
    Timeout,
    /// The backend could not be reached, or the connection broke.
    Connection,
    /// The backend answered that it cannot serve right now: Redis loading its data after a
    /// restart, a failover under way, a connection that reached a read-only replica, or a
    /// server out of memory.
    Unavailable,
    /// The backend refused the credentials.
    Auth,
    /// The backend's user may not run a command dlock needs, or not on these keys (Redis:
    /// `NOPERM`).
    Permission,
    /// The backend took the lock, but fewer replicas than required acknowledged it in time
    /// (Redis `WAIT`; see `replicas_acknowledge` on the Redis backends' builders). A failover
    /// now could lose the lock, so the acquisition is released and reported as this error.
    NotReplicated,
    /// Anything else the backend reported.
    Other,
}

impl BackendError {
    /// A backend error with a message and no underlying cause.
    ///
    /// ```
    /// use dlock::backend::{BackendError, BackendErrorKind};
    /// let err = BackendError::new(BackendErrorKind::Connection, "etcd at 10.0.0.7:2379 is unreachable");
    /// assert_eq!(err.to_string(), "etcd at 10.0.0.7:2379 is unreachable");
    /// ```
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { message: message.into(), kind, source: None }
    }

    /// A backend error caused by `source`: its message says what failed, `source()` why.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use dlock::backend::{BackendError, BackendErrorKind};
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    /// let err = BackendError::with_source(BackendErrorKind::Connection, "could not connect to 10.0.0.7:2379", io);
    /// assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("connection refused"));
    /// ```
    pub fn with_source(
        kind: BackendErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { message: message.into(), kind, source: Some(Box::new(source)) }
    }

    /// What kind of failure this was.
    ///
    /// ```
    /// use dlock::backend::{BackendError, BackendErrorKind};
    /// assert_eq!(BackendError::new(BackendErrorKind::Auth, "WRONGPASS").kind(), BackendErrorKind::Auth);
    /// ```
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }
}
