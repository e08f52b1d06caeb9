//! [`RedisSentinelBackend`]: locks on the primary that Redis Sentinel names, followed through
//! failovers. `mod.rs` is the backend and its builder; [`primary`] finds the primary and
//! follows it.
//!
//! [`Primary`] is where the sentinels say the primary is: the address a majority of the
//! sentinels that answer name, once it answers `ROLE` as a primary. They are asked at
//! connect, when a sentinel announces `+switch-master` for the group (a task listens on one
//! sentinel at a time, and asks again after each (re)subscription), and whenever a call
//! suggests the server moved — no answer, a broken connection, or `READONLY` (the old primary,
//! now a replica) — at most once per 200 ms, and every 5 s regardless. Each new answer bumps
//! an epoch, and so does the same answer when the primary there has another replication ID
//! than before (it was a replica in between, A→B→A, or restarted): every runtime's
//! command connection made before is replaced before its next call, a call that was running
//! on the old primary when the epoch changed is reported `Unavailable` (an acquisition or a
//! renewal there must not count), the notifier subscribes again on the new primary (waking
//! every waiter to check again), and every service renews its leases at once.

mod primary;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;

use self::primary::{Primary, listen_for_switches};
use super::connection::{Connections, tcp_settings};
use super::engine::{self, Engine, Replicated, Replication};
use super::error::redact;
use super::lanes::Lanes;
use super::layout;
use super::notify::Notifier;
use super::scripts::Scripts;
use super::tls::TlsOptions;
use super::{RedisBackend, check_options};
use crate::backend::BackendError;
use crate::background;
use crate::error::Error;

/// Locks on a Redis primary with replicas, managed by Redis Sentinel.
///
/// The same locks as [`RedisBackend`], on whichever server the sentinels name as the primary
/// of the group: dlock asks them at connect, listens for their `+switch-master` announcements,
/// and asks again whenever the server stops answering or turns out to be a replica. After a
/// failover (also one that ends where it began: a primary found again at the same address with
/// another replication ID, read with `INFO`, counts as a new one) every connection moves to the
/// new primary, waiters subscribe again there, and each held lock is renewed at once on the new
/// primary: a lock the new primary does not have (the replica had not received it) is reported
/// [`Lost`](crate::Error::Lost) to its holder, never silently kept. A user whose ACL lacks
/// `+info` on the data nodes gets only the address compared. Fencing tokens keep increasing across the failover — they come from
/// the server's clock, so this holds while the new primary's clock is not behind the old
/// one's by more than the failover takes (the README's guarantee 6).
///
/// A failover can lose a lock taken just before it; [`RedisSentinelBackendBuilder::replicas_acknowledge`]
/// narrows that window.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let redis = dlock::RedisSentinelBackend::connect(
///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
///     "payments",
/// )
/// .await?;
/// dlock::set_global(dlock::LockService::new(redis))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSentinelBackend {
    engine: Arc<Engine>,
    primary: Arc<Primary>,
}

/// Options for [`RedisSentinelBackend`]; see [`RedisSentinelBackend::builder`].
#[derive(Clone)]
#[must_use = "call .connect().await to get the backend"]
pub struct RedisSentinelBackendBuilder {
    sentinels: Vec<String>,
    master_name: String,
    call_timeout: Duration,
    replication: Option<Replication>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    tls: TlsOptions,
}

impl fmt::Debug for RedisSentinelBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinelBackendBuilder")
            .field("sentinels", &self.sentinels.iter().map(|url| redact(url)).collect::<Vec<_>>())
            .field("master_name", &self.master_name)
            .field("call_timeout", &self.call_timeout)
            .field("replication", &self.replication)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisSentinelBackendBuilder {
    /// Bound on every call (to the primary or to a sentinel), and on connecting (default 2 s).
    ///
    /// ```
    /// let builder = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .call_timeout(std::time::Duration::from_millis(500));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The user and password for the primary (the sentinels' own credentials go in their
    /// URLs).
    ///
    /// ```
    /// let builder = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .credentials(Some("locks"), "s3cret");
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").contains("s3cret"), "Debug masks the password");
    /// ```
    pub fn credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.to_owned());
        self
    }

    /// The database number on the primary (default 0).
    ///
    /// ```
    /// let builder = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments").db(2);
    /// ```
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Require `replicas` replicas to acknowledge every acquisition within `timeout`; see
    /// [`RedisBackendBuilder::replicas_acknowledge`](crate::RedisBackendBuilder::replicas_acknowledge).
    ///
    /// ```
    /// let builder = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .replicas_acknowledge(1, std::time::Duration::from_millis(100));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn replicas_acknowledge(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = Some(Replication { replicas, timeout });
        self
    }

    /// Trust the certificate authorities in `pem` (the contents of a PEM file) for the
    /// `rediss://` sentinels and the primaries they name, instead of the public ones; see
    /// [`RedisBackendBuilder::tls_root_certificates`](crate::RedisBackendBuilder::tls_root_certificates).
    /// The primaries are reached over TLS when the sentinels are, at the address the sentinels
    /// name, which their certificates must hold.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = dlock::RedisSentinelBackend::builder(["rediss://10.0.0.1:26379"], "payments")
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

    /// Present `certificate` (PEM) with its private `key` (PEM) to sentinels and primaries
    /// that verify their clients; see
    /// [`RedisBackendBuilder::tls_client_certificate`](crate::RedisBackendBuilder::tls_client_certificate).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = dlock::RedisSentinelBackend::builder(["rediss://10.0.0.1:26379"], "payments")
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

    /// Ask the sentinels for the primary, connect to it and check that it answers.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<RedisSentinelBackend, Error> {
        check_options(self.call_timeout, self.replication)?;
        if self.master_name.is_empty() {
            return Err(Error::InvalidInput {
                what: "Sentinel master name",
                reason: "it is empty; pass the name the sentinels monitor the primary under (`sentinel monitor <name> …`)".into(),
            });
        }
        let mut sentinels = Vec::with_capacity(self.sentinels.len());
        for url in &self.sentinels {
            let info = url.as_str().into_connection_info().map_err(|err| Error::InvalidInput {
                what: "Sentinel URL",
                reason: format!("`{}` is not a Redis URL ({err}); expected redis://[[user]:password@]host[:port] for each sentinel", redact(url)),
            })?;
            super::check_query(url, &redact(url), "Sentinel URL")?;
            let info = self.tls.apply(info, &redact(url))?;
            sentinels.push(info.set_tcp_settings(tcp_settings(self.call_timeout)));
        }
        if sentinels.is_empty() {
            return Err(Error::InvalidInput {
                what: "Sentinel URL",
                reason: "no sentinel was given; pass the addresses of the group's sentinels".into(),
            });
        }
        let primary = Primary::new(
            sentinels,
            self.master_name.clone(),
            self.username,
            self.password,
            self.db,
            self.call_timeout,
        );
        primary.resolve().await.map_err(|err| {
            if primary::is_unknown_master(&err) {
                Error::InvalidInput { what: "Sentinel master name", reason: err.to_string() }
            } else if primary::is_not_a_sentinel(&err) {
                Error::InvalidInput { what: "Sentinel URL", reason: err.to_string() }
            } else {
                Error::backend("redis-sentinel", None, err)
            }
        })?;
        let url = format!("sentinel group {} ({} sentinels)", self.master_name, self.sentinels.len());
        let conns = Connections::new(Arc::clone(&primary), self.call_timeout, url.clone());
        let pong: Result<String, BackendError> = conns
            .call("PING", |mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await;
        pong.map_err(|err| Error::backend("redis-sentinel", None, err))?;
        background::spawn_here(listen_for_switches(Arc::downgrade(&primary)));
        let notifier = Notifier::start(Arc::clone(&primary), self.call_timeout);
        let call_timeout = self.call_timeout;
        let replicated = self.replication.map(|wanted| {
            let (primary, lane_url) = (Arc::clone(&primary), url.clone());
            let lanes = Lanes::new(call_timeout, url.clone(), move || {
                Connections::new(Arc::clone(&primary), call_timeout, lane_url.clone())
            });
            Replicated { wanted, lanes }
        });
        let engine = Engine::new(conns, notifier, Scripts::plain(), replicated);
        tracing::debug!(target: "dlock", master = %self.master_name, "connected to the primary the sentinels name");
        Ok(RedisSentinelBackend { engine: Arc::new(engine), primary })
    }
}

impl RedisSentinelBackend {
    /// Connect to the primary of `master_name` that `sentinels` name, with the default
    /// options.
    ///
    /// Each sentinel is `redis://[[user]:password@]host[:port]`; the primary's credentials,
    /// if any, go through [`RedisSentinelBackendBuilder::credentials`]. A master name the
    /// sentinels that answer do not monitor is [`Error::InvalidInput`]; no sentinel answering
    /// is [`Error::Backend`] (a connection failure), within the call timeout per sentinel.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::connect(["redis://10.0.0.1:26379"], "payments").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<I>(sentinels: I, master_name: &str) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::builder(sentinels, master_name).connect().await
    }

    /// Options: the call timeout, the primary's credentials and database, replicas that must
    /// acknowledge.
    ///
    /// ```
    /// let builder = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments");
    /// ```
    pub fn builder<I>(sentinels: I, master_name: &str) -> RedisSentinelBackendBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisSentinelBackendBuilder {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.to_owned(),
            call_timeout: RedisBackend::DEFAULT_CALL_TIMEOUT,
            replication: None,
            username: None,
            password: None,
            db: 0,
            tls: TlsOptions::default(),
        }
    }

    /// `host:port` of the primary the backend uses now.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::connect(["redis://10.0.0.1:26379"], "payments").await?;
    /// println!("locks live on {}", redis.primary_address());
    /// # Ok(()) }
    /// ```
    pub fn primary_address(&self) -> String {
        self.primary.address().unwrap_or_default()
    }

    /// How many times the backend has moved to another primary since it connected (a primary
    /// found again at the same address with another replication ID counts).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::connect(["redis://10.0.0.1:26379"], "payments").await?;
    /// assert_eq!(redis.failovers_followed(), 0);
    /// # Ok(()) }
    /// ```
    pub fn failovers_followed(&self) -> u64 {
        self.primary.epoch().saturating_sub(1)
    }

    /// The channel on which this backend hears releases and hand-offs of `key` (the full key).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::connect(["redis://10.0.0.1:26379"], "payments").await?;
    /// assert!(redis.notice_channel("app:user:42").starts_with("app:user:42#dlock:to:"));
    /// # Ok(()) }
    /// ```
    pub fn notice_channel(&self, key: &str) -> String {
        self.engine.notice_channel(key)
    }
}

engine::lock_backend_via_engine!(
    RedisSentinelBackend,
    "redis-sentinel",
    layout::check,
    |backend: &RedisSentinelBackend| Some(backend.primary.epochs())
);

impl fmt::Debug for RedisSentinelBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinelBackend")
            .field("master_name", &self.primary.master_name())
            .field("primary", &self.primary_address())
            .field("call_timeout", &self.engine.conns.call_timeout())
            .finish_non_exhaustive()
    }
}
