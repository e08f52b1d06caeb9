//! [`BackendError`]: what a backend reports when a call fails, with a coarse [`BackendErrorKind`].

/// An error reported by a [`LockBackend`](super::LockBackend) implementation.
///
/// Backends build it from a message and, usually, the underlying error.
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
    /// Anything else the backend reported.
    Other,
}

impl BackendError {
    /// A backend error with a message and no underlying cause.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { message: message.into(), kind, source: None }
    }

    /// A backend error caused by `source`.
    pub fn with_source(
        kind: BackendErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { message: message.into(), kind, source: Some(Box::new(source)) }
    }

    /// What kind of failure this was.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }
}
