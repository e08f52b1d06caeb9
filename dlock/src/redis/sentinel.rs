//! [`RedisSentinelBackend`]: locks on the primary that Redis Sentinel names, followed through
//! failovers.
//!
//! [`Primary`] is where the sentinels say the primary is: the address a majority of the
//! sentinels that answer name, once it answers `ROLE` as a primary. They are asked at
//! connect, when a sentinel announces `+switch-master` for the group (a task listens on one
//! sentinel at a time, and asks again after each (re)subscription), and whenever a call
//! suggests the server moved — no answer, a broken connection, or `READONLY` (the old primary,
//! now a replica) — at most once per 200 ms. Each new answer bumps an epoch: every runtime's
//! command connection made before is replaced before its next call, a call that was running
//! on the old primary when the epoch changed is reported `Unavailable` (an acquisition or a
//! renewal there must not count), the notifier subscribes again on the new primary (waking
//! every waiter to check again), and every service renews its leases at once.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};
use tokio::sync::watch;

use super::connection::{Conn, Connections, Connector, ServerConnector, connection_config, tcp_settings};
use super::engine::{self, Engine, Replicated, Replication};
use super::error::{classify, redact};
use super::layout;
use super::notify::{Feed, FeedSource, Notifier, server_feed};
use super::scripts::Scripts;
use super::{RedisBackend, check_options};
use crate::backend::{BackendError, BackendErrorKind, BoxFuture};
use crate::background;
use crate::error::Error;

/// Locks on a Redis primary with replicas, managed by Redis Sentinel.
///
/// The same locks as [`RedisBackend`], on whichever server the sentinels name as the primary
/// of the group: dlock asks them at connect, listens for their `+switch-master` announcements,
/// and asks again whenever the server stops answering or turns out to be a replica. After a
/// failover every connection moves to the new primary, waiters subscribe again there, and each
/// held lock meets its next renewal on the new primary: a lock the new primary does not have
/// (the replica had not received it) is reported [`Lost`](crate::Error::Lost) to its holder,
/// never silently kept. Fencing tokens keep increasing across the failover — they come from
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
            .finish()
    }
}

impl RedisSentinelBackendBuilder {
    /// Bound on every call (to the primary or to a sentinel), and on connecting (default 2 s).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .call_timeout(std::time::Duration::from_millis(500))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The user and password for the primary (the sentinels' own credentials go in their
    /// URLs).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .credentials(Some("locks"), "s3cret")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
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
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::builder(["redis://10.0.0.1:26379"], "payments")
    ///     .replicas_acknowledge(1, std::time::Duration::from_millis(100))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn replicas_acknowledge(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = Some(Replication { replicas, timeout });
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
            sentinels.push(info.set_tcp_settings(tcp_settings(self.call_timeout)));
        }
        if sentinels.is_empty() {
            return Err(Error::InvalidInput {
                what: "Sentinel URL",
                reason: "no sentinel was given; pass the addresses of the group's sentinels".into(),
            });
        }
        let (epochs, _) = watch::channel(0);
        let primary = Arc::new(Primary {
            sentinels,
            master_name: self.master_name.clone(),
            username: self.username,
            password: self.password,
            db: self.db,
            call_timeout: self.call_timeout,
            current: Mutex::new(None),
            epoch: AtomicU64::new(0),
            epochs,
            resolving: tokio::sync::Mutex::new(()),
            suspected: AtomicBool::new(false),
            last_resolved: Mutex::new(None),
        });
        primary.resolve().await.map_err(|err| Error::backend("redis-sentinel", None, err))?;
        let url = format!("sentinel group {} ({} sentinels)", self.master_name, primary.sentinels.len());
        let conns = Connections::new(Arc::clone(&primary), self.call_timeout, url.clone());
        let pong: Result<String, BackendError> = conns
            .call("PING", |mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await;
        pong.map_err(|err| Error::backend("redis-sentinel", None, err))?;
        background::spawn_here(listen_for_switches(Arc::downgrade(&primary)));
        let notifier = Notifier::start(Arc::clone(&primary), self.call_timeout);
        let replicated = self.replication.map(|wanted| Replicated {
            wanted,
            conns: Connections::new(Arc::clone(&primary), self.call_timeout, url.clone()),
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
    /// if any, go through [`RedisSentinelBackendBuilder::credentials`]. An unknown master name
    /// or no sentinel answering is [`Error::Backend`] within the call timeout per sentinel.
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
        self.primary.current().map(|(_, address)| address).unwrap_or_default()
    }

    /// How many times the backend has moved to another primary since it connected.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let redis = dlock::RedisSentinelBackend::connect(["redis://10.0.0.1:26379"], "payments").await?;
    /// assert_eq!(redis.failovers_followed(), 0);
    /// # Ok(()) }
    /// ```
    pub fn failovers_followed(&self) -> u64 {
        self.primary.epoch.load(Ordering::Acquire).saturating_sub(1)
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
    |backend: &RedisSentinelBackend| Some(backend.primary.epochs.subscribe())
);

impl fmt::Debug for RedisSentinelBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinelBackend")
            .field("master_name", &self.primary.master_name)
            .field("primary", &self.primary_address())
            .field("call_timeout", &self.engine.conns.call_timeout())
            .finish_non_exhaustive()
    }
}

/// Where the sentinels say the primary is.
struct Primary {
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    call_timeout: Duration,
    /// A client of the primary, and its `host:port`.
    current: Mutex<Option<(redis::Client, String)>>,
    /// Bumped each time the sentinels name another primary (1 after connecting).
    epoch: AtomicU64,
    epochs: watch::Sender<u64>,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
    /// A resolution was asked for and has not started yet.
    suspected: AtomicBool,
    /// When the last resolution ended.
    last_resolved: Mutex<Option<Instant>>,
}

/// The shortest time between two resolutions asked for by failing calls.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(200);

impl Primary {
    fn current(&self) -> Option<(redis::Client, String)> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Ask every sentinel where the primary is; take the address a majority of those that
    /// answered name (a sentinel cut off with an old primary may still name it), check that it
    /// says it is a primary, and move there if it is not where the backend is now.
    async fn resolve(&self) -> Result<(), BackendError> {
        let _one = self.resolving.lock().await;
        self.suspected.store(false, Ordering::Release);
        let outcome = self.resolve_once().await;
        *self.last_resolved.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        outcome
    }

    async fn resolve_once(&self) -> Result<(), BackendError> {
        let asks = self.sentinels.iter().map(|sentinel| async move {
            let answer = tokio::time::timeout(self.call_timeout, self.named_by(sentinel)).await;
            (sentinel, answer)
        });
        let mut votes: Vec<((String, u16), usize)> = Vec::new();
        let mut failures = Vec::new();
        let mut answered = 0;
        for (sentinel, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(address)) => {
                    answered += 1;
                    match votes.iter_mut().find(|(named, _)| *named == address) {
                        Some((_, count)) => *count += 1,
                        None => votes.push((address, 1)),
                    }
                }
                Ok(Err(err)) => failures.push(format!("{}: {err}", sentinel.addr())),
                Err(_) => {
                    failures.push(format!("{}: no answer within {:?}", sentinel.addr(), self.call_timeout))
                }
            }
        }
        votes.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let unavailable = |why: String| {
            BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "no primary for `{}`: {why}; check the sentinels and the master name",
                    self.master_name
                ),
            )
        };
        let Some(((host, port), count)) = votes.first().cloned() else {
            return Err(unavailable(format!("no sentinel named one ({})", failures.join("; "))));
        };
        if count * 2 <= answered {
            return Err(unavailable(format!("the {answered} sentinels that answered disagree ({votes:?})")));
        }
        let address = format!("{host}:{port}");
        if self.current().is_some_and(|(_, now)| now == address) {
            return Ok(());
        }
        let client = self.primary_at(host, port).await.map_err(|err| {
            // A primary that refuses the credentials is an `Auth` error, not a missing primary.
            BackendError::new(
                classify(&err),
                format!(
                    "no primary for `{}`: {address}, which the sentinels name, does not answer as a primary ({err}); check the sentinels, the master name and the primary's credentials",
                    self.master_name
                ),
            )
        })?;
        tracing::info!(target: "dlock", master = %self.master_name, primary = %address, "the sentinels name a new primary; moving there");
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((client, address));
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.epochs.send_replace(epoch);
        Ok(())
    }

    /// The primary's address as one sentinel names it.
    async fn named_by(&self, sentinel: &ConnectionInfo) -> RedisResult<(String, u16)> {
        let client = redis::Client::open(sentinel.clone())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&connection_config(self.call_timeout))
            .await?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await?;
        named.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "the sentinel knows no such master"))
        })
    }

    /// A client of the server at `host:port` (with TLS if the sentinels use it), once it
    /// answers `ROLE` as a primary.
    async fn primary_at(&self, host: String, port: u16) -> RedisResult<redis::Client> {
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let addr = match self.sentinels.first().map(ConnectionInfo::addr) {
            Some(ConnectionAddr::TcpTls { insecure, tls_params, .. }) => {
                ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
            }
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = addr
            .into_connection_info()?
            .set_redis_settings(redis_info)
            .set_tcp_settings(tcp_settings(self.call_timeout));
        let primary = redis::Client::open(info)?;
        let check = async {
            let mut conn = primary
                .get_multiplexed_async_connection_with_config(&connection_config(self.call_timeout))
                .await?;
            redis::cmd("ROLE").query_async::<Vec<redis::Value>>(&mut conn).await
        };
        let role = tokio::time::timeout(self.call_timeout, check)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "no answer to ROLE")))??;
        match role.first() {
            Some(redis::Value::BulkString(role)) if role == b"master" => Ok(primary),
            _ => Err(redis::RedisError::from((redis::ErrorKind::Client, "it is not a primary (yet)"))),
        }
    }

    /// Ask the sentinels again, in the background (once, however many calls ask).
    fn suspect_now(self: &Arc<Self>) {
        if self.suspected.swap(true, Ordering::AcqRel) {
            return;
        }
        let primary = Arc::clone(self);
        background::spawn_here(async move {
            // At most one resolution per RESOLVE_INTERVAL, however many calls fail meanwhile.
            let last = *primary.last_resolved.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(last) = last {
                tokio::time::sleep_until((last + RESOLVE_INTERVAL).into()).await;
            }
            if let Err(err) = primary.resolve().await {
                tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary failed");
            }
        });
    }
}

impl Connector for Arc<Primary> {
    fn connect(&self) -> BoxFuture<'_, RedisResult<Conn>> {
        Box::pin(async move {
            let Some((client, _)) = self.current() else {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "no primary known yet")));
            };
            ServerConnector { client, config: connection_config(self.call_timeout) }.connect().await
        })
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn suspect(&self) {
        self.suspect_now();
    }
}

impl FeedSource for Arc<Primary> {
    fn open(&self) -> BoxFuture<'_, RedisResult<Feed>> {
        Box::pin(async move {
            let mut epochs = self.epochs.subscribe();
            epochs.borrow_and_update();
            let Some((client, _)) = self.current() else {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "no primary known yet")));
            };
            let mut feed = server_feed(&client).await.inspect_err(|_| self.suspect_now())?;
            feed.moved = Box::pin(async move {
                let _ = epochs.changed().await;
            });
            Ok(feed)
        })
    }
}

/// Listen on one sentinel at a time for `+switch-master` of the group, and ask the sentinels
/// again when one comes, and after each (re)subscription (a switch announced while no sentinel
/// was listened to is not missed). Waits before each reconnect, longer while they fail. Ends
/// with the backend.
async fn listen_for_switches(primary: Weak<Primary>) {
    let mut next = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(strong) = primary.upgrade() else { return };
        let sentinel = strong.sentinels[next % strong.sentinels.len()].clone();
        next += 1;
        let call_timeout = strong.call_timeout;
        let master = strong.master_name.clone();
        drop(strong);
        let pubsub = async {
            let mut pubsub = redis::Client::open(sentinel)?.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let Ok(Ok(pubsub)) = tokio::time::timeout(call_timeout, pubsub).await else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            continue;
        };
        let subscribed_at = Instant::now();
        {
            let Some(strong) = primary.upgrade() else { return };
            if let Err(err) = strong.resolve().await {
                tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary failed");
            }
        }
        let (mut sink, mut messages) = pubsub.split();
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload: String = message.get_payload().unwrap_or_default();
                    // `<master> <old ip> <old port> <new ip> <new port>`
                    if payload.split(' ').next() == Some(master.as_str()) {
                        let Some(strong) = primary.upgrade() else { return };
                        if let Err(err) = strong.resolve().await {
                            tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary after +switch-master failed");
                        }
                    }
                }
                _ = health.tick() => {
                    if primary.strong_count() == 0 {
                        return;
                    }
                    let ping = tokio::time::timeout(call_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        // A sentinel that dropped us soon after we subscribed must not become a tight loop.
        if subscribed_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        } else {
            pause = Duration::from_millis(100);
        }
    }
}
