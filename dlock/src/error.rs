//! [`Error`]: the one error type of dlock, and [`LostReason`], why a held lock was lost.

use std::time::Duration;

use crate::backend::{BackendError, BackendErrorKind};

/// Everything that can go wrong while taking, holding or releasing a lock.
///
/// Every message says what to do next, and names the key (or service) concerned when there is
/// one: an invalid ttl, or [`NoRuntime`](Self::NoRuntime), concerns no key (and
/// [`key`](Self::key) is `None` for them).
/// The enum is `#[non_exhaustive]`: match the variants you act on and keep a `_` arm.
///
/// Annotated functions return it through their own error type (`E: From<dlock::Error>`),
/// so `anyhow::Error`, `Box<dyn Error>` and `std::io::Error` all work out of the box.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let _held = service.lock("user:1").await.unwrap();
/// match service.lock("user:1").wait(std::time::Duration::ZERO).await {
///     Err(dlock::Error::Timeout { key, .. }) => assert_eq!(key, "user:1"),
///     other => panic!("expected a timeout, got {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No lock service was registered under the name the call asked for.
    #[error(
        "no dlock lock service is registered {}; register one at start-up with {}",
        match service { Some(name) => format!("under the name `{name}`"), None => "as the global service".to_owned() },
        match service { Some(name) => format!("`dlock::register(\"{name}\", LockService::new(backend))`"), None => "`dlock::set_global(LockService::new(backend))`".to_owned() },
    )]
    NotRegistered {
        /// The name asked for; `None` for the global service.
        service: Option<String>,
    },

    /// A service was already registered under that name (or as the global one).
    #[error(
        "a dlock lock service is already registered {}; register each service once, at start-up",
        match service { Some(name) => format!("under the name `{name}`"), None => "as the global service".to_owned() },
    )]
    AlreadyRegistered {
        /// The name; `None` for the global service.
        service: Option<String>,
    },

    /// The lock was not acquired within the `wait` the call allowed.
    #[error(
        "timed out after {} waiting for lock `{key}` (another holder kept it); raise `wait`, or return a \"busy\" answer to the caller",
        humanize(*waited)
    )]
    Timeout {
        /// The full key (service prefix included).
        key: String,
        /// How long the call waited before giving up.
        waited: Duration,
    },

    /// The lock was held, then lost before the holder was done with it.
    #[error(
        "lost lock `{key}`: {reason}; the protected work was stopped — retry it, it did not complete under the lock"
    )]
    Lost {
        /// The full key (service prefix included).
        key: String,
        /// Why the lease ended.
        reason: LostReason,
    },

    /// The backend failed (unreachable, timed out, refused the command).
    ///
    /// The message says what to do, by the kind of failure; what exactly failed, and the
    /// underlying error, follow as its [`source`](std::error::Error::source) chain (printed
    /// by `{:#}` with anyhow, or by walking `source()`).
    #[error("lock backend `{backend}` failed{}: {}", match key { Some(k) => format!(" on lock `{k}`"), None => String::new() }, remedy(source.kind(), key.is_some()))]
    Backend {
        /// The key concerned, when the failure happened on one.
        key: Option<String>,
        /// The backend's name (`"redis"`, `"memory"`, …).
        backend: &'static str,
        /// What the backend reported.
        #[source]
        source: BackendError,
    },

    /// A lock was requested outside a tokio runtime: dlock keeps leases, waits and background
    /// releases on tokio, so lock requests and annotated functions must be awaited inside one.
    #[error(
        "dlock was called outside a tokio runtime; await lock requests and annotated functions inside one (e.g. under `#[tokio::main]` or `#[tokio::test]`)"
    )]
    NoRuntime,

    /// The caller passed something dlock cannot use (an empty key, a zero ttl, a bad URL).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid (`"key"`, `"ttl"`, `"Redis URL"`, …).
        what: &'static str,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
}

/// What to do about a backend failure of this kind, on a lock's key (`on_key`) or not (when
/// connecting: no key was written yet, so none can be at fault).
fn remedy(kind: BackendErrorKind, on_key: bool) -> &'static str {
    match kind {
        BackendErrorKind::Timeout => {
            "it did not answer in time; check that it runs and is reachable, or raise its call timeout"
        }
        BackendErrorKind::Connection => {
            "it could not be reached; check that it runs, that the address is right and, over TLS, the certificates (the cause follows)"
        }
        BackendErrorKind::Unavailable => {
            "it cannot serve right now (loading, failing over, read-only or out of memory); retry shortly"
        }
        BackendErrorKind::Auth => "it refused the credentials; check the user and password",
        BackendErrorKind::Permission => {
            "its user lacks a permission dlock needs; grant what the README's ACL recipe lists"
        }
        BackendErrorKind::NotReplicated => {
            "too few replicas acknowledged the lock in time, so it was released; retry, and check the replicas"
        }
        _ if on_key => {
            "it answered something dlock does not expect (the cause follows and says what); unless the cause names another fix, check that nothing else writes keys under the service's prefix and that every process runs the same dlock version"
        }
        _ => {
            "it refused what dlock asked; the cause follows and says what, check the URL and the server's configuration"
        }
    }
}

/// Why a held lock was lost.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let guard = service.lock("k").ttl(std::time::Duration::from_millis(50)).renew(false).await?;
/// assert_eq!(guard.lost().await, dlock::LostReason::Expired);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// A renewal found the key gone or owned by someone else (expired, deleted, failover).
    Refused,
    /// No renewal was confirmed before the lease could have ended (backend slow or unreachable).
    Unconfirmed,
    /// Renewal was turned off (`renew(false)`) and the lease reached its end.
    Expired,
    /// The outer holder released the lock while a re-entrant guard for it was still alive.
    Released,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refused => "the backend refused the renewal (the key expired, was deleted, or is now held by another owner)",
            Self::Unconfirmed => "no renewal was confirmed before the lease could have ended (backend slow or unreachable)",
            Self::Expired => "the lease reached its ttl and renewal is off (`renew = false`)",
            Self::Released => "its outer holder released it while a re-entrant guard was still alive",
        })
    }
}

impl Error {
    /// The key this error concerns, if it concerns one (the full key, prefix included).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("app:").build();
    /// let _held = service.lock("user:1").await.unwrap();
    /// let err = service.lock("user:1").wait(std::time::Duration::ZERO).await.unwrap_err();
    /// assert_eq!(err.key(), Some("app:user:1"));
    /// # }
    /// ```
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Timeout { key, .. } | Self::Lost { key, .. } => Some(key),
            Self::Backend { key, .. } => key.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn backend(backend: &'static str, key: Option<&str>, source: BackendError) -> Self {
        Self::Backend { key: key.map(str::to_owned), backend, source }
    }
}

/// So that `std::io::Result<T>` can be the return type of an annotated function.
impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Timeout { .. } => std::io::ErrorKind::TimedOut,
            Error::Lost { .. } => std::io::ErrorKind::Interrupted,
            Error::InvalidInput { .. } => std::io::ErrorKind::InvalidInput,
            Error::Backend { source, .. } if source.kind() == BackendErrorKind::Timeout => {
                std::io::ErrorKind::TimedOut
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, err)
    }
}

/// `1.5s`, `250ms`: short and exact enough for messages.
pub(crate) fn humanize(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.3}s", d.as_secs_f64()).replace(".000s", "s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod remedy_tests {
    use crate::backend::{BackendError, BackendErrorKind};
    use crate::error::Error;

    /// A failure with no key (connecting: a database that does not exist, a server of the
    /// wrong kind) is not blamed on keys something else wrote under the prefix.
    #[test]
    fn an_unexpected_failure_blames_keys_only_when_it_concerns_one() {
        let cause = || BackendError::new(BackendErrorKind::Other, "database \"nosuchdb\" does not exist");
        let connecting = Error::backend("postgres", None, cause()).to_string();
        assert!(!connecting.contains("keys under the service's prefix"), "{connecting}");
        assert!(connecting.contains("check the URL"), "{connecting}");
        let on_key = Error::backend("redis", Some("app:k"), cause()).to_string();
        assert!(on_key.contains("nothing else writes keys under the service's prefix"), "{on_key}");
    }
}
