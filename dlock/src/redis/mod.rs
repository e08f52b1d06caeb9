//! [`RedisBackend`]: locks in one Redis server, shared by every process that connects to it.
//!
//! `mod.rs` is the backend and its builder; [`engine`] runs the lock operations every Redis
//! backend shares, [`layout`] names what a lock stores in Redis, [`scripts`] are the atomic
//! steps, [`connection`] keeps one command connection per runtime, [`unanswered`] keeps the
//! connection of an acquisition whose answer never came, for its owner's release to follow it
//! there, [`notify`] runs the pub/sub connection, [`error`] turns failures into messages.

#[cfg(feature = "redis-cluster")]
pub(crate) mod cluster;
#[cfg(feature = "redis-cluster")]
mod cluster_epochs;
mod connection;
mod engine;
mod error;
mod lanes;
mod layout;
mod notify;
mod scripts;
#[cfg(feature = "redis-sentinel")]
pub(crate) mod sentinel;
mod tls;
mod unanswered;
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
pub(crate) mod url;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;

use self::connection::{Connections, ServerConnector, connection_config};
use self::engine::{Engine, Replicated, Replication};
use self::error::redact;
use self::lanes::Lanes;
use self::notify::{Notifier, ServerFeeds};
use self::scripts::Scripts;
use self::tls::TlsOptions;
use crate::backend::BackendError;
use crate::error::Error;

/// Locks in a single Redis server (or a primary with replicas; see the README's guarantees).
///
/// Every command is bounded by the call timeout (default 2 s), so an unreachable or hung
/// Redis yields [`Error::Backend`] promptly instead of a hang; once Redis is back, the same
/// backend works again. Each tokio runtime that uses the backend gets its own multiplexed
/// connection (a runtime that ends takes only its own with it); a connection that misses a
/// call timeout is replaced.
///
/// A lock is one Redis string, `<prefix><key>`, holding its fencing token and a random 128-bit
/// owner token (`<token>:<owner>`), with a `PX` expiry. While processes wait for it,
/// `<prefix><key>#dlock:line{…}` is their waiting line, and each waiting process hears releases
/// and hand-offs on a channel of its own, `<prefix><key>#dlock:to:<process>{…}`: all under the
/// service's prefix
/// and in the lock key's Redis Cluster slot (the README's "Redis requirements" has the details
/// and an ACL recipe). Fencing tokens are the Redis server's time in µs (or the last token + 1),
/// so they keep increasing across a Redis that lost its data.
///
/// Processes waiting for a held key line up in Redis, and a release hands the key straight to
/// the first one still waiting: first come, first served across processes, one round trip
/// less per hand-off, and no herd of retries. A process joins the line once it is
/// subscribed, keeps its place by asking again every [`WAITER_RECHECK`](crate::backend::WAITER_RECHECK), and leaves it when
/// its waiter gives up; one that was killed while waiting is passed over once it has not asked
/// for 3 s (until then it may be handed the key, which then stays locked for the ttl it asked
/// for or [`HANDOFF_LEASE`](crate::backend::HANDOFF_LEASE), whichever is shorter).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let redis = dlock::RedisBackend::connect("redis://:secret@127.0.0.1:6379/0").await?;
/// dlock::set_global(dlock::LockService::new(redis))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    engine: Arc<Engine>,
    /// The server's `maxmemory-policy`, when it may evict dlock's keys.
    evicting_policy: Option<String>,
}

/// Options for [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Clone)]
#[must_use = "call .connect().await to get the backend"]
pub struct RedisBackendBuilder {
    url: String,
    call_timeout: Duration,
    replication: Option<Replication>,
    tls: TlsOptions,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("url", &redact(&self.url))
            .field("call_timeout", &self.call_timeout)
            .field("replication", &self.replication)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisBackendBuilder {
    /// Bound on every Redis call, and on connecting (default 2 s).
    ///
    /// ```
    /// let builder = dlock::RedisBackend::builder("redis://127.0.0.1:6379")
    ///     .call_timeout(std::time::Duration::from_millis(500));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Require `replicas` replicas to acknowledge every acquisition within `timeout` (Redis
    /// `WAIT`, sent with the acquisition on the same connection). An acquisition they do not
    /// acknowledge in time is released and fails with a
    /// [`BackendErrorKind::NotReplicated`](crate::backend::BackendErrorKind::NotReplicated)
    /// error. A key a release hands to a waiting request is asked for again, so it is
    /// acknowledged the same way.
    ///
    /// `WAIT` holds up its connection until it returns, so each acquisition in flight has a
    /// connection of its own (renewals and releases keep the shared one): acquisitions running
    /// at once each fail with `NotReplicated` after `timeout`, none queues behind another's
    /// wait. Up to 32 such connections per tokio runtime are made as needed and kept for
    /// reuse; an acquisition past that waits for one to come free, within the call timeout.
    /// `timeout` must be shorter than the call timeout, which bounds the acquisition and its
    /// wait together: leave it room for a round trip (and for connecting, the first time), or
    /// replicas that do not acknowledge show as a call `Timeout` rather than `NotReplicated`.
    ///
    /// The `WAIT` goes out in one round trip with the acquisition, before its answer is known,
    /// so an attempt that finds the key held waits for the replicas too. While they keep up
    /// that costs little (they have already acknowledged this connection's writes); while
    /// fewer than `replicas` answer, such an attempt takes the whole `timeout` — when every
    /// acquisition fails with `NotReplicated` anyway.
    ///
    /// This narrows the window in which a failover to a replica loses a lock that was just
    /// taken; it does not make Redis a consensus store (a replica that acknowledged may still
    /// not be the one promoted, and renewals are not waited for). Off by default.
    ///
    /// ```
    /// let builder = dlock::RedisBackend::builder("redis://127.0.0.1:6379")
    ///     .replicas_acknowledge(1, std::time::Duration::from_millis(100));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn replicas_acknowledge(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = Some(Replication { replicas, timeout });
        self
    }

    /// Trust the certificate authorities in `pem` (the contents of a PEM file: one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) for the `rediss://` connection, instead of the
    /// public ones: for a server whose certificate a private authority signed. The host in
    /// the URL must be a name or IP address the server's certificate holds.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = dlock::RedisBackend::builder("rediss://redis.internal:6380")
    ///     .tls_root_certificates(std::fs::read("/etc/redis/tls/ca.pem")?)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Present `certificate` (PEM: the client's certificate, then any intermediates) with its
    /// private `key` (PEM) to a server that verifies its clients (`tls-auth-clients yes`).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = dlock::RedisBackend::builder("rediss://redis.internal:6380")
    ///     .tls_root_certificates(std::fs::read("/etc/redis/tls/ca.pem")?)
    ///     .tls_client_certificate(std::fs::read("client.pem")?, std::fs::read("client.key")?)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((certificate.into(), key.into()));
        self
    }

    /// Connect, and check that Redis answers (and accepts the credentials in the URL).
    ///
    /// It also reads the server's `maxmemory` and `maxmemory-policy` (when the user may run
    /// `CONFIG GET`) and warns, through `tracing`, when Redis may evict dlock's keys; see
    /// [`RedisBackend::may_evict_locks`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisBackend::builder("redis://127.0.0.1:6379").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<RedisBackend, Error> {
        let url = redact(&self.url);
        let invalid_url = |err: &dyn fmt::Display| Error::InvalidInput {
            what: "Redis URL",
            reason: format!(
                "`{url}` is not a Redis URL ({err}); expected redis://[[user]:password@]host[:port][/db], or rediss:// for TLS"
            ),
        };
        let info = self.url.as_str().into_connection_info().map_err(|err| invalid_url(&err))?;
        check_query(&self.url, &url, "Redis URL")?;
        check_options(self.call_timeout, self.replication)?;
        let info = self.tls.apply(info, &url)?;
        let info = info.set_tcp_settings(connection::tcp_settings(self.call_timeout));
        let client = redis::Client::open(info).map_err(|err| invalid_url(&err))?;
        let connector =
            ServerConnector { client: client.clone(), config: connection_config(self.call_timeout) };
        let conns = Connections::new(connector, self.call_timeout, url.clone());
        let pong: Result<String, BackendError> = conns
            .call("PING", |mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await;
        pong.map_err(|err| Error::backend("redis", None, err))?;
        let evicting_policy = evicting_policy(&conns).await;
        if let Some(policy) = &evicting_policy {
            tracing::warn!(target: "dlock", url = %url, policy = %policy,
                "Redis may evict dlock's keys (maxmemory is set and maxmemory-policy is not noeviction): a lock could vanish while held; run Redis for dlock with maxmemory-policy noeviction");
        }
        tracing::debug!(target: "dlock", url = %url, "connected to Redis");
        let call_timeout = self.call_timeout;
        let replicated = self.replication.map(|wanted| {
            let (client, lane_url) = (client.clone(), url.clone());
            let lanes = Lanes::new(call_timeout, url.clone(), move || {
                let config = connection_config(call_timeout);
                Connections::new(
                    ServerConnector { client: client.clone(), config },
                    call_timeout,
                    lane_url.clone(),
                )
            });
            Replicated { wanted, lanes }
        });
        let notifier = Notifier::start(ServerFeeds(client), self.call_timeout);
        let engine = Engine::new(conns, notifier, Scripts::plain(), replicated);
        Ok(RedisBackend { engine: Arc::new(engine), evicting_policy })
    }
}

/// Check that redis-rs reads every query parameter of `url` (shown as `shown`): it reads
/// `protocol` (and, for a Unix socket, `db`, `user` and `pass`) and ignores the rest, so
/// `redis://host?db=3` would be database 0 and `?password=` would send no password.
fn check_query(url: &str, shown: &str, what: &'static str) -> Result<(), Error> {
    // A URL that does not parse is reported by redis-rs's own parsing.
    let Some(parsed) = redis::parse_redis_url(url) else { return Ok(()) };
    let unix = matches!(parsed.scheme(), "unix" | "redis+unix" | "valkey+unix");
    let mut seen = Vec::new();
    for (key, _) in parsed.query_pairs() {
        let read = key == "protocol" || (unix && matches!(&*key, "db" | "user" | "pass"));
        if !read || seen.contains(&key) {
            return Err(Error::InvalidInput {
                what,
                reason: format!(
                    "`{shown}` has a query parameter that would be ignored (unknown, or given twice); only `protocol` is read (and `db`, `user`, `pass` for a Unix socket). Put the database in the path and the password before the host: redis://[[user]:password@]host[:port][/db]"
                ),
            });
        }
        seen.push(key);
    }
    Ok(())
}

/// Check the options every Redis backend's builder shares.
fn check_options(call_timeout: Duration, replication: Option<Replication>) -> Result<(), Error> {
    if call_timeout.is_zero() {
        return Err(Error::InvalidInput {
            what: "call timeout",
            reason: "it must be greater than zero".into(),
        });
    }
    if let Some(replication) = replication {
        if replication.replicas == 0 {
            return Err(Error::InvalidInput {
                what: "replicas_acknowledge",
                reason: "0 replicas is no requirement; leave the option out instead".into(),
            });
        }
        if replication.timeout.is_zero() || replication.timeout >= call_timeout {
            return Err(Error::InvalidInput {
                what: "replicas_acknowledge",
                reason: format!(
                    "the wait for replicas ({:?}) must be greater than zero and shorter than the call timeout ({call_timeout:?}), which bounds the acquisition and the wait together",
                    replication.timeout
                ),
            });
        }
    }
    Ok(())
}

/// The server's `maxmemory-policy` if `maxmemory` is set and the policy may evict keys with an
/// expiry (every policy but `noeviction` may: dlock's keys all have one). `None` also when the
/// user may not read the configuration.
async fn evicting_policy(conns: &Arc<Connections>) -> Option<String> {
    let config: Vec<String> = conns
        .call("CONFIG GET", |mut conn| async move {
            redis::cmd("CONFIG").arg("GET").arg("maxmemory*").query_async(&mut conn).await
        })
        .await
        .ok()?;
    let value = |name: &str| config.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1));
    let limited = value("maxmemory").is_some_and(|bytes| bytes != "0");
    let policy = value("maxmemory-policy")?;
    (limited && policy != "noeviction").then(|| policy.clone())
}

impl RedisBackend {
    /// The default bound on every Redis call, and on connecting: 2 s.
    ///
    /// ```
    /// assert_eq!(dlock::RedisBackend::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(2));
    /// ```
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connect to the Redis at `url` with the default options.
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS (cargo
    /// feature `tls`). A malformed URL is [`Error::InvalidInput`], and so is a query parameter
    /// the connection would ignore (only `protocol` is read, and `db`, `user`, `pass` for a
    /// Unix socket); an unreachable server or refused credentials is [`Error::Backend`] within
    /// the call timeout.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisBackend::connect("redis://127.0.0.1:6379").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Options: the call timeout, replicas that must acknowledge, TLS certificates.
    ///
    /// ```
    /// let builder = dlock::RedisBackend::builder("redis://127.0.0.1:6379");
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            replication: None,
            tls: TlsOptions::default(),
        }
    }

    /// The channel on which this backend hears releases and hand-offs of `key` (the full key,
    /// as stored in Redis) while it waits for it: under the key, so an ACL that lets dlock's
    /// users write their keys' prefix (`~app:*`) and publish on it (`&app:*`) covers it.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisBackend::connect("redis://127.0.0.1:6379").await?;
    /// assert!(redis.notice_channel("app:user:42").starts_with("app:user:42#dlock:to:"));
    /// # Ok(()) }
    /// ```
    pub fn notice_channel(&self, key: &str) -> String {
        self.engine.notice_channel(key)
    }

    /// The hash that holds the waiting line of the lock `key` (the full key) while processes
    /// wait for it: one field per waiting process.
    ///
    /// ```
    /// let line = dlock::RedisBackend::line_key("app:user:42");
    /// assert!(line.starts_with("app:user:42#dlock:line"));
    /// ```
    pub fn line_key(key: &str) -> String {
        layout::line(key)
    }

    /// Whether the server may evict dlock's keys: `maxmemory` is set and `maxmemory-policy` is
    /// not `noeviction` (read at connect; `false` when the user may not read the
    /// configuration). A lock key evicted while held lets a second holder in; run Redis for
    /// dlock with `maxmemory-policy noeviction`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisBackend::connect("redis://127.0.0.1:6379").await?;
    /// if redis.may_evict_locks() {
    ///     eprintln!("configure Redis with maxmemory-policy noeviction");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn may_evict_locks(&self) -> bool {
        self.evicting_policy.is_some()
    }

    /// How many release channels this process is subscribed to (or about to be): zero once
    /// no task of the process is waiting.
    #[doc(hidden)]
    pub fn subscribed_channels(&self) -> usize {
        self.engine.notifier.channel_count()
    }

    /// How many runtimes have a command connection.
    #[doc(hidden)]
    pub fn connection_count(&self) -> usize {
        self.engine.conns.count()
    }

    /// How many connections are kept for releases to follow acquisitions whose answer never
    /// came (see the `unanswered` module).
    #[doc(hidden)]
    pub fn kept_connections(&self) -> usize {
        self.engine.kept_connections()
    }
}

engine::lock_backend_via_engine!(RedisBackend, "redis", layout::check);

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.engine.conns.url())
            .field("call_timeout", &self.engine.conns.call_timeout())
            .finish_non_exhaustive()
    }
}
