//! [`connect`]: a backend chosen by a URL, so that where the locks live is configuration
//! (`DLOCK_BACKEND=redis://…`) and the code that locks never changes.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{LockBackend, MemoryBackend};
use crate::error::Error;

/// Options for [`connect_with`] that every networked backend takes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let options = dlock::ConnectOptions::default().call_timeout(std::time::Duration::from_millis(500));
/// let backend = dlock::connect_with("memory:", options).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConnectOptions {
    call_timeout: Option<Duration>,
    replicas: Option<(u32, Duration)>,
}

impl ConnectOptions {
    /// Bound on every call to the backend, and on connecting (each backend's default when not
    /// set: 2 s for Redis, see the backends' builders).
    ///
    /// ```
    /// let options = dlock::ConnectOptions::default().call_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Require `replicas` replicas to acknowledge every acquisition within `timeout`: the
    /// Redis backends' `replicas_acknowledge` (see
    /// [`RedisBackendBuilder::replicas_acknowledge`](crate::RedisBackendBuilder::replicas_acknowledge)
    /// for what it does and does not promise). A URL of another backend is then
    /// [`Error::InvalidInput`]: it has no such option, and ignoring it would promise what is
    /// not done.
    ///
    /// ```
    /// let options = dlock::ConnectOptions::default()
    ///     .replicas_acknowledge(1, std::time::Duration::from_millis(100));
    /// ```
    pub fn replicas_acknowledge(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some((replicas, timeout));
        self
    }
}

/// Connect to the backend `url` names, by its scheme:
///
/// | scheme | backend |
/// |---|---|
/// | `memory:` | [`MemoryBackend`]: in this process only (tests, one instance); nothing may follow `memory:` |
/// | `redis://`, `rediss://` | [`RedisBackend`](crate::RedisBackend) (feature `redis`; `rediss` needs `tls`) |
/// | `redis-cluster://[[user]:password@]host:port,host:port,…` (`rediss-cluster://`) | [`RedisClusterBackend`](crate::RedisClusterBackend) (feature `redis-cluster`) |
/// | `redis-sentinel://[[user]:password@]host:port,…/<master>[/<db>][?sentinel_password=…]` | [`RedisSentinelBackend`](crate::RedisSentinelBackend) (feature `redis-sentinel`) |
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
    connect_with(url, ConnectOptions::default()).await
}

/// [`connect`], with options.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let options = dlock::ConnectOptions::default().call_timeout(std::time::Duration::from_millis(500));
/// let backend = dlock::connect_with("memory:", options).await?;
/// assert_eq!(backend.name(), "memory");
/// # Ok(()) }
/// ```
#[allow(unused_variables, reason = "options are used by the networked backends compiled in")]
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Arc<dyn LockBackend>, Error> {
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    #[cfg(feature = "redis")]
    let call_timeout = options.call_timeout.unwrap_or(crate::RedisBackend::DEFAULT_CALL_TIMEOUT);
    let redis_scheme =
        matches!(scheme, "redis" | "rediss" | "redis-cluster" | "rediss-cluster" | "redis-sentinel");
    if options.replicas.is_some()
        && !redis_scheme
        && supported().iter().any(|s| s.trim_end_matches([':', '/']) == scheme)
    {
        return Err(Error::InvalidInput {
            what: "replicas_acknowledge",
            reason: format!(
                "replica acknowledgement is an option of the Redis backends, and `{scheme}:` is not one; leave it out (for PostgreSQL, the server's synchronous_commit and synchronous_standby_names decide what a commit waits for)"
            ),
        });
    }
    match scheme {
        // `memory:` takes no host, path or option: anything more would be ignored.
        "memory" if matches!(url, "memory:" | "memory://") => Ok(Arc::new(MemoryBackend::new())),
        "memory" if url == "memory" => Err(Error::InvalidInput {
            what: "backend URL",
            reason: "`memory` lacks its colon; the in-process backend's URL is `memory:`".to_owned(),
        }),
        "memory" => Err(Error::InvalidInput {
            what: "backend URL",
            reason: format!(
                "`{}` has more than `memory:`, and the in-process backend takes no host, path or option; use `memory:`",
                redact_scheme(url)
            ),
        }),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let mut builder = crate::RedisBackend::builder(url).call_timeout(call_timeout);
            if let Some((replicas, timeout)) = options.replicas {
                builder = builder.replicas_acknowledge(replicas, timeout);
            }
            Ok(Arc::new(builder.connect().await?))
        }
        #[cfg(feature = "redis-cluster")]
        "redis-cluster" | "rediss-cluster" => {
            let nodes = crate::redis::url::cluster_nodes(url)?;
            let mut builder = crate::RedisClusterBackend::builder(nodes).call_timeout(call_timeout);
            if let Some((replicas, timeout)) = options.replicas {
                builder = builder.replicas_acknowledge(replicas, timeout);
            }
            Ok(Arc::new(builder.connect().await?))
        }
        #[cfg(feature = "redis-sentinel")]
        "redis-sentinel" => {
            let parts = crate::redis::url::sentinel(url)?;
            let mut builder = crate::RedisSentinelBackend::builder(parts.sentinels, &parts.master_name)
                .call_timeout(call_timeout)
                .db(parts.db);
            if let Some(password) = &parts.password {
                builder = builder.credentials(parts.username.as_deref(), password);
            }
            if let Some((replicas, timeout)) = options.replicas {
                builder = builder.replicas_acknowledge(replicas, timeout);
            }
            Ok(Arc::new(builder.connect().await?))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let mut builder = crate::PostgresBackend::builder(url);
            if let Some(timeout) = options.call_timeout {
                builder = builder.call_timeout(timeout);
            }
            Ok(Arc::new(builder.connect().await?))
        }
        _ => Err(Error::InvalidInput {
            what: "backend URL",
            reason: format!(
                "`{}` names no backend this build of dlock has; supported: {}{}",
                redact_scheme(url),
                supported().join(", "),
                if url.contains("://") {
                    ""
                } else {
                    // `127.0.0.1:6379`, `db:5432`: an address where a URL belongs.
                    " (a URL begins with its scheme: `redis://host:port`, not `host:port`)"
                }
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
    if cfg!(feature = "redis-cluster") {
        schemes.extend(["redis-cluster://", "rediss-cluster://"]);
    }
    if cfg!(feature = "redis-sentinel") {
        schemes.push("redis-sentinel://");
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
        // Not a URL (`host=db password=…`?): at most a scheme, never what follows it.
        None => match url.split_once(':') {
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) => {
                format!("{scheme}:…")
            }
            _ => "…".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ConnectOptions, connect, connect_with};
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

    /// An address without a scheme, and `memory` without its colon, are told as what they are:
    /// not "`127.0.0.1:…` names no backend", nor "`…` has more than `memory:`".
    #[tokio::test]
    async fn a_missing_scheme_or_colon_is_told_as_such() {
        for url in ["127.0.0.1:6379", "localhost:6379", "db.internal:5432"] {
            match connect(url).await.err() {
                Some(Error::InvalidInput { what: "backend URL", reason }) => {
                    assert!(
                        reason.contains("begins with its scheme") && reason.contains("redis://host:port"),
                        "{url}: {reason}"
                    );
                }
                other => panic!("{url}: expected InvalidInput, got {other:?}"),
            }
        }
        match connect("zookeeper://h").await.err() {
            Some(Error::InvalidInput { reason, .. }) => {
                assert!(!reason.contains("begins with its scheme"), "{reason}")
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        match connect("memory").await.err() {
            Some(Error::InvalidInput { what: "backend URL", reason }) => {
                assert!(reason.contains("lacks its colon") && reason.contains("`memory:`"), "{reason}");
                assert!(!reason.contains("has more than"), "{reason}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replica_acknowledgement_is_refused_where_it_would_do_nothing() {
        let options = ConnectOptions::default().replicas_acknowledge(1, Duration::from_millis(50));
        match connect_with("memory:", options).await.err() {
            Some(Error::InvalidInput { what: "replicas_acknowledge", reason }) => {
                assert!(reason.contains("Redis backends") && reason.contains("`memory:`"), "{reason}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        // An unknown scheme is still told as one.
        let unknown =
            connect_with("zookeeper://h", ConnectOptions::default().replicas_acknowledge(1, Duration::ZERO));
        assert!(matches!(unknown.await.err(), Some(Error::InvalidInput { what: "backend URL", .. })));
    }
}
