//! [`connect`]: a backend chosen by a URL, so that where the locks live is configuration
//! (`DLOCK_BACKEND=redis://…`) and the code that locks never changes.

use std::sync::Arc;

use crate::backend::{LockBackend, MemoryBackend};
use crate::error::Error;

/// Connect to the backend `url` names, by its scheme:
///
/// | scheme | backend |
/// |---|---|
/// | `memory:` | [`MemoryBackend`]: in this process only (tests, one instance) |
/// | `redis://`, `rediss://` | [`RedisBackend`](crate::RedisBackend) (feature `redis`; `rediss` needs `tls`) |
/// | `postgres://`, `postgresql://` | [`PostgresBackend`](crate::PostgresBackend) (feature `postgres`) |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let url = std::env::var("DLOCK_BACKEND").unwrap_or_else(|_| "memory:".into());
/// let service = dlock::LockService::builder_from_arc(dlock::connect(&url).await?).build();
/// let guard = service.lock("user:42").await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// A URL with another scheme, or one whose backend was not compiled in, is
/// [`Error::InvalidInput`] naming the schemes this build supports.
pub async fn connect(url: &str) -> Result<Arc<dyn LockBackend>, Error> {
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    match scheme {
        "memory" => Ok(Arc::new(MemoryBackend::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(crate::RedisBackend::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(crate::PostgresBackend::connect(url).await?)),
        _ => Err(Error::InvalidInput {
            what: "backend URL",
            reason: format!(
                "`{}` names no backend this build of dlock has; supported: {}",
                redact_scheme(url),
                supported().join(", ")
            ),
        }),
    }
}

/// The schemes [`connect`] accepts in this build.
fn supported() -> Vec<&'static str> {
    let mut schemes = vec!["memory:"];
    if cfg!(feature = "redis") {
        schemes.extend(["redis://", "rediss://"]);
    }
    if cfg!(feature = "postgres") {
        schemes.extend(["postgres://", "postgresql://"]);
    }
    schemes
}

/// Only the scheme of `url`: the rest may hold a password.
fn redact_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://…"),
        None => url.chars().take(20).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::connect;
    use crate::error::Error;

    #[tokio::test]
    async fn schemes_choose_backends() {
        assert_eq!(connect("memory:").await.map(|b| b.name()).ok(), Some("memory"));
        let err = connect("zookeeper://secret@host").await.err();
        match err {
            Some(Error::InvalidInput { what: "backend URL", reason }) => {
                assert!(reason.contains("memory:"), "{reason}");
                assert!(!reason.contains("secret"), "the URL's secrets stay out of messages: {reason}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}
