//! The bounds and defaults of a lock request, and the checks every request passes before it
//! reaches a backend.

use std::time::Duration;

use crate::error::Error;

/// The default lease: 30 s.
///
/// ```
/// assert_eq!(dlock::DEFAULT_TTL, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The default time to wait for a lock: 30 s.
///
/// ```
/// assert_eq!(dlock::DEFAULT_WAIT, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The shortest ttl dlock accepts (10 ms): shorter leases cannot be renewed reliably.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let too_short = service.lock("k").ttl(dlock::MIN_TTL / 2).await;
/// assert!(matches!(too_short, Err(dlock::Error::InvalidInput { what: "ttl", .. })));
/// # }
/// ```
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// The longest ttl dlock accepts (one year): the lease is renewed while held, so a long ttl
/// only lengthens how long a crashed holder blocks others.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let too_long = service.lock("k").ttl(dlock::MAX_TTL * 2).await;
/// assert!(matches!(too_long, Err(dlock::Error::InvalidInput { what: "ttl", .. })));
/// # }
/// ```
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Check what a request asks for before anything is sent.
pub(crate) fn validate(keys: &[String], ttl: Duration) -> Result<(), Error> {
    if keys.is_empty() {
        return Err(no_key());
    }
    if keys.iter().any(String::is_empty) {
        return Err(Error::InvalidInput {
            what: "key",
            reason: "a lock key is empty; build keys from a non-empty name such as \"user:42\"".into(),
        });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidInput {
            what: "ttl",
            reason: format!(
                "{ttl:?} is longer than the maximum of {MAX_TTL:?}; the lease is renewed while held, so a ttl of seconds or minutes is enough"
            ),
        });
    }
    if ttl < MIN_TTL {
        return Err(Error::InvalidInput {
            what: "ttl",
            reason: format!(
                "{ttl:?} is shorter than the minimum of {MIN_TTL:?}; leases that short cannot be renewed reliably"
            ),
        });
    }
    Ok(())
}

/// A request without keys.
pub(crate) fn no_key() -> Error {
    Error::InvalidInput { what: "key", reason: "no key was given; pass at least one key".into() }
}
