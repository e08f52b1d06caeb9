//! [`RedisClusterBackend`]: locks in a Redis Cluster, each on the shard that owns its key's slot.
//!
//! Commands go through redis-rs's cluster connection (one per tokio runtime, as for one
//! server), which routes each script by its first key's slot and follows `MOVED` and `ASK`
//! during resharding and failover without surfacing them; a node that lost the scripts after
//! a failover answers `NOSCRIPT`, and the script is sent again in full. Every name a lock uses
//! lives in its key's slot (see [`layout`](mod@super::layout)), so each script touches one shard;
//! while a slot is half migrated, a script that names a moved and an unmoved key gets
//! `TRYAGAIN`, and the engine asks again with the lock key alone. A node that stops answering
//! has its own connection repaired by the cluster connection once that connection breaks (the
//! kernel gives up on unacknowledged data after two call timeouts) or a slot refresh finds it
//! silent — a call that timed out alone leaves it in place; the connection as a whole is
//! kept (making a new one waits for every node, so one silent node would stall every shard).
//!
//! So the release sent behind an acquisition whose answer never came (see
//! [`unanswered`](super::unanswered)) goes on the node's stream that the acquisition went on
//! only while the node's connection has not been replaced in between; it is sent again later
//! regardless (`Engine::release_behind`), which bounds how long a late acquisition keeps its
//! key, not its whole ttl.
//!
//! Notices go over sharded pub/sub: the release script announces with `SPUBLISH`, which stays
//! within the key's shard, and the notifier subscribes with `SSUBSCRIBE` on a RESP3 cluster
//! connection of its own. When a node loses a slot (a migration, a failover) it drops the
//! slot's subscriptions with an `SUNSUBSCRIBE` push; the notifier then subscribes again, which
//! the cluster connection routes to the slot's new shard. Each such event, and each
//! subscription the cluster connection makes again after a reconnect, wakes that channel's
//! waiters to check again.
//!
//! A failover is noticed by [`cluster_epochs`](super::cluster_epochs), which polls the
//! cluster's configuration and has the service renew every lease at once when a replica took
//! over.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult, Value};

use super::cluster_epochs::{ClusterEpochs, read_epoch};
use super::connection::{Conn, Connections, Connector, tcp_settings};
use super::engine::{self, Engine, LeaseActivity, Replicated, Replication};
use super::error::{is_not_a_cluster, redact};
use super::lanes::Lanes;
use super::layout;
use super::notify::{Feed, FeedEvent, FeedSink, FeedSource, Notifier, Outcome};
use super::scripts::Scripts;
use super::tls::TlsOptions;
use super::{RedisBackend, check_options};
use crate::backend::{BackendError, BoxFuture};
use crate::error::Error;

/// Locks in a Redis Cluster (Redis ≥ 7: notices use sharded pub/sub).
///
/// The same locks as [`RedisBackend`], spread over the cluster's shards by key: each lock, its
/// waiting line and its channels live in the lock key's slot, so one shard serves each lock
/// and a failover or a resharding moves a lock whole. Give related keys a hash tag
/// (`order:{42}:pay`, `order:{42}:ship`) to keep them on one shard; dlock does not need it.
///
/// Resharding (`MOVED`, `ASK`) and failovers are followed without errors reaching callers
/// while the cluster answers within the call timeout; a lock that a failover lost (the replica
/// had not received it) is reported [`Lost`](crate::Error::Lost) to its holder within about a
/// second of the failover (while it may hold a lease, a service on the backend reads `CLUSTER
/// NODES` once a second, and renews every lease at once when a primary has taken over), and its fencing tokens keep
/// increasing — they come from the server's clock, so this holds while the promoted replica's
/// clock is not behind the old primary's by more than the failover takes (the README's
/// guarantee 6).
///
/// An acquisition whose answer never came (it missed the call timeout) may still run later,
/// held up on its way. Its owner's release is also sent behind it, as on one server, but the
/// cluster connection keeps one connection per node and may replace a node's meanwhile (one
/// that broke, or that a slot refresh after a resharding or failover elsewhere found silent):
/// the release then goes on the new one and may run first. It is sent again later — once the
/// acquisition's bytes can no longer arrive, then at doubling intervals until a late
/// acquisition would have run out — so such an acquisition keeps the key until the next of
/// those releases (at most as long again as it was held up after the release, or two call
/// timeouts if that is longer), not for its whole ttl. On one server (and under Sentinel) the release runs
/// behind it on its own connection while that connection lasts (the README's guarantee 4).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let cluster = dlock::RedisClusterBackend::connect([
///     "redis://10.0.0.1:7000",
///     "redis://10.0.0.2:7000",
///     "redis://10.0.0.3:7000",
/// ])
/// .await?;
/// dlock::set_global(dlock::LockService::new(cluster))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisClusterBackend {
    engine: Arc<Engine>,
    nodes: Arc<[String]>,
    epochs: Arc<ClusterEpochs>,
}

/// Options for [`RedisClusterBackend`]; see [`RedisClusterBackend::builder`].
#[derive(Clone)]
#[must_use = "call .connect().await to get the backend"]
pub struct RedisClusterBackendBuilder {
    nodes: Vec<String>,
    call_timeout: Duration,
    replication: Option<Replication>,
    tls: TlsOptions,
}

impl fmt::Debug for RedisClusterBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterBackendBuilder")
            .field("nodes", &self.nodes.iter().map(|node| redact(node)).collect::<Vec<_>>())
            .field("call_timeout", &self.call_timeout)
            .field("replication", &self.replication)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisClusterBackendBuilder {
    /// Bound on every call, and on connecting (default 2 s). A call that follows a `MOVED` or
    /// `ASK` redirection is still one call.
    ///
    /// ```
    /// let builder = dlock::RedisClusterBackend::builder(["redis://10.0.0.1:7000"])
    ///     .call_timeout(std::time::Duration::from_millis(500));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Require `replicas` replicas of the key's shard to acknowledge every acquisition within
    /// `timeout` (`WAIT`, sent in one pipeline with the acquisition to the shard's primary,
    /// never to the whole cluster). As for
    /// [`RedisBackendBuilder::replicas_acknowledge`](crate::RedisBackendBuilder::replicas_acknowledge):
    /// it narrows the failover window, it does not make Redis a consensus store.
    ///
    /// ```
    /// let builder = dlock::RedisClusterBackend::builder(["redis://10.0.0.1:7000"])
    ///     .replicas_acknowledge(1, std::time::Duration::from_millis(100));
    /// // `builder.connect().await?` then connects with these options.
    /// assert!(!format!("{builder:?}").is_empty());
    /// ```
    pub fn replicas_acknowledge(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = Some(Replication { replicas, timeout });
        self
    }

    /// Trust the certificate authorities in `pem` (the contents of a PEM file) for the
    /// cluster's `rediss://` nodes, instead of the public ones; see
    /// [`RedisBackendBuilder::tls_root_certificates`](crate::RedisBackendBuilder::tls_root_certificates).
    /// Every node's certificate must hold the host name or IP address the cluster announces
    /// for it.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = dlock::RedisClusterBackend::builder(["rediss://10.0.0.1:7000"])
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

    /// Present `certificate` (PEM) with its private `key` (PEM) to nodes that verify their
    /// clients; see
    /// [`RedisBackendBuilder::tls_client_certificate`](crate::RedisBackendBuilder::tls_client_certificate).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = dlock::RedisClusterBackend::builder(["rediss://10.0.0.1:7000"])
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

    /// Connect to the cluster through the seed nodes, and check that it answers.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let cluster = dlock::RedisClusterBackend::builder(["redis://10.0.0.1:7000"]).connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<RedisClusterBackend, Error> {
        check_options(self.call_timeout, self.replication)?;
        if self.nodes.is_empty() {
            return Err(Error::InvalidInput {
                what: "Redis Cluster nodes",
                reason: "no seed node was given; pass at least one redis://host:port of the cluster".into(),
            });
        }
        let shown = self.nodes.iter().map(|node| redact(node)).collect::<Vec<_>>().join(",");
        let invalid = |err: &dyn fmt::Display| Error::InvalidInput {
            what: "Redis Cluster nodes",
            reason: format!(
                "`{shown}` are not Redis URLs ({err}); expected redis://[[user]:password@]host[:port] for each seed node, all with the same credentials"
            ),
        };
        for node in &self.nodes {
            super::check_query(node, &redact(node), "Redis Cluster nodes")?;
        }
        self.tls.prepare_nodes(&self.nodes, &shown)?;
        let settings =
            ClusterSettings { nodes: self.nodes.clone(), call_timeout: self.call_timeout, tls: self.tls };
        let client = settings.client(ProtocolVersion::RESP2, None).map_err(|err| invalid(&err))?;
        let conns =
            Connections::new(ClusterConnector(client.clone()), self.call_timeout, format!("cluster {shown}"));
        let pong: Result<String, BackendError> = conns
            .call("PING", |mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await;
        pong.map_err(|err| {
            if is_not_a_cluster(&err) {
                // Waiting will not help: the URL names the wrong kind of server.
                Error::InvalidInput {
                    what: "Redis Cluster nodes",
                    reason: format!(
                        "`{shown}`: a seed node is not a Redis Cluster node (it answered that cluster support is disabled); for a single Redis server use a redis://host:port URL (RedisBackend), for a cluster list nodes of it (servers run with cluster-enabled yes)"
                    ),
                }
            } else {
                Error::backend("redis-cluster", None, err)
            }
        })?;
        // Read before any lease is granted: a failover from here on raises it.
        let epoch = read_epoch(&conns).await.unwrap_or_else(|err| {
            tracing::debug!(target: "dlock", error = %err, "could not read the Redis Cluster's epoch");
            None
        });
        let notifier = Notifier::start(ClusterFeeds(settings), self.call_timeout);
        let call_timeout = self.call_timeout;
        let replicated = self.replication.map(|wanted| {
            let (client, url) = (client.clone(), format!("cluster {shown}"));
            let lanes = Lanes::new(call_timeout, url.clone(), move || {
                Connections::new(ClusterConnector(client.clone()), call_timeout, url.clone())
            });
            Replicated { wanted, lanes }
        });
        let activity = Arc::new(LeaseActivity::new());
        let engine =
            Engine::new(conns, notifier, Scripts::sharded(), replicated).with_activity(Arc::clone(&activity));
        tracing::debug!(target: "dlock", nodes = %shown, "connected to Redis Cluster");
        Ok(RedisClusterBackend {
            engine: Arc::new(engine),
            nodes: self.nodes.iter().map(|n| redact(n)).collect(),
            epochs: Arc::new(ClusterEpochs::new(epoch, activity)),
        })
    }
}

impl RedisClusterBackend {
    /// Connect to the cluster through `nodes` (any of its nodes; more than one, so that one
    /// being down does not stop the start) with the default options.
    ///
    /// Each node is `redis://[[user]:password@]host[:port]` (`rediss://` with feature `tls`).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let cluster = dlock::RedisClusterBackend::connect(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<I>(nodes: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::builder(nodes).connect().await
    }

    /// Options: the call timeout, replicas that must acknowledge.
    ///
    /// ```
    /// let builder = dlock::RedisClusterBackend::builder(["redis://10.0.0.1:7000"]);
    /// ```
    pub fn builder<I>(nodes: I) -> RedisClusterBackendBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisClusterBackendBuilder {
            nodes: nodes.into_iter().map(Into::into).collect(),
            call_timeout: RedisBackend::DEFAULT_CALL_TIMEOUT,
            replication: None,
            tls: TlsOptions::default(),
        }
    }

    /// The channel on which this backend hears releases and hand-offs of `key` (the full
    /// key): a sharded channel in `key`'s slot.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let cluster = dlock::RedisClusterBackend::connect(["redis://10.0.0.1:7000"]).await?;
    /// assert!(cluster.notice_channel("app:user:42").starts_with("app:user:42#dlock:to:"));
    /// # Ok(()) }
    /// ```
    pub fn notice_channel(&self, key: &str) -> String {
        self.engine.notice_channel(key)
    }

    /// How many release channels this process is subscribed to (or about to be).
    #[doc(hidden)]
    pub fn subscribed_channels(&self) -> usize {
        self.engine.notifier.channel_count()
    }
}

/// A lock key the cluster can serve: as on one server, and its derived names must share its
/// slot (they do, unless the key has a `{` that forms no hash tag).
fn check_key(key: &str) -> Result<(), String> {
    layout::check(key)?;
    if !layout::shares_slot(key) {
        return Err("it has a `{` that forms no Redis Cluster hash tag (`{}`, or no `}` after it), so its waiting line would land in another slot; close the tag (`user:{42}`) or leave braces out".to_owned());
    }
    Ok(())
}

engine::lock_backend_via_engine!(
    RedisClusterBackend,
    "redis-cluster",
    check_key,
    |backend: &RedisClusterBackend| Some(backend.epochs.subscribe(&backend.engine.conns))
);

impl fmt::Debug for RedisClusterBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterBackend")
            .field("nodes", &self.nodes)
            .field("call_timeout", &self.engine.conns.call_timeout())
            .finish_non_exhaustive()
    }
}

/// Command connections to the cluster.
struct ClusterConnector(ClusterClient);

impl Connector for ClusterConnector {
    fn connect(&self) -> BoxFuture<'_, RedisResult<Conn>> {
        Box::pin(async move { Ok(Conn::Cluster(self.0.get_async_connection().await?)) })
    }

    fn replace_failed(&self) -> bool {
        false
    }

    fn is_cluster(&self) -> bool {
        true
    }
}

/// How to reach the cluster: its seed nodes, the call timeout, TLS options.
struct ClusterSettings {
    nodes: Vec<String>,
    call_timeout: Duration,
    tls: TlsOptions,
}

impl ClusterSettings {
    /// A client of the cluster; with `pushes`, on RESP3, sending push messages there.
    fn client(
        &self,
        protocol: ProtocolVersion,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>,
    ) -> RedisResult<ClusterClient> {
        let Self { nodes, call_timeout, tls } = self;
        let call_timeout = *call_timeout;
        // Redirections (`MOVED`, `ASK`) and `TRYAGAIN` are retried a few times, quickly: the
        // engine answers a lasting `TRYAGAIN` (a slot half migrated) with a one-key script, and
        // the call timeout bounds the whole.
        let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .retries(5)
            .min_retry_wait(5)
            .max_retry_wait(100)
            // Connecting to the cluster connects to the seed nodes, then to the rest of the
            // slot map's nodes, each all at once: a node that accepts connections but does not
            // answer (paused, overloaded) costs two connection timeouts, which must fit in one
            // call timeout — a call that connects first is bounded by it as a whole — or no
            // new connection could be made while any one node is silent.
            .connection_timeout(call_timeout / 3)
            // Bounds each request to a node, and the `PING` that checks a node's connection when
            // the slots are refreshed or the node reconnects: a connection that does not answer
            // that `PING` is replaced. A request that timed out alone leaves the node's
            // connection in place (redis-rs sends it again there while its caller still waits).
            .response_timeout(call_timeout)
            // The call timeout bounds each call as a whole already (`Connections::call`): two
            // timers per call (that and the node's) instead of three.
            .overall_response_timeout(None)
            .tcp_settings(tcp_settings(call_timeout))
            .use_protocol(protocol);
        if let Some(pushes) = pushes {
            builder = builder.push_sender(pushes);
        }
        #[cfg(feature = "tls")]
        if let Some(certificates) = tls.certificates() {
            builder = builder.certs(certificates);
        }
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        builder.build()
    }
}

/// Sharded pub/sub connections to the cluster (RESP3, for push messages).
struct ClusterFeeds(ClusterSettings);

impl FeedSource for ClusterFeeds {
    fn open(&self) -> BoxFuture<'_, RedisResult<Feed>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = self.0.client(ProtocolVersion::RESP3, Some(tx))?;
            let conn = client.get_async_connection().await?;
            let expected = Arc::new(Mutex::new(HashMap::new()));
            let sink = ClusterSink { conn, expected: Arc::clone(&expected) };
            let events = futures_util::stream::unfold(rx, |mut rx| async move {
                let push = rx.recv().await?;
                Some((push, rx))
            })
            .filter_map(move |push| std::future::ready(event(push, &expected)))
            .boxed();
            Ok(Feed { sink: Box::new(sink), events, moved: Box::pin(std::future::pending()) })
        })
    }
}

/// Confirmations the notifier's own `SSUBSCRIBE`s and `SUNSUBSCRIBE`s will bring, by
/// (subscribe?, channel): those are not news. Any other confirmation is: a subscription the
/// cluster connection made again (notices may have been missed), or one the server dropped
/// because its node no longer serves the channel's slot (a migration or a failover moved it:
/// it must be made again, on the new owner).
type Expected = Arc<Mutex<HashMap<(bool, String), usize>>>;

/// Count one confirmation the notifier is about to cause.
fn expect(expected: &Expected, subscribe: bool, channel: &str) {
    *expected
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((subscribe, channel.to_owned()))
        .or_default() += 1;
}

/// Whether a confirmation was one the notifier caused (and count it off).
fn was_expected(expected: &Expected, subscribe: bool, channel: String) -> bool {
    let mut expected = expected.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (subscribe, channel);
    match expected.get_mut(&key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            true
        }
        Some(_) => {
            expected.remove(&key);
            true
        }
        None => false,
    }
}

/// What a push from the cluster means to the notifier.
fn event(push: PushInfo, expected: &Expected) -> Option<FeedEvent> {
    let text = |value: Option<&Value>| match value {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage => match push.data.get(1) {
            Some(Value::BulkString(payload)) => {
                Some(FeedEvent::Message { channel: text(push.data.first())?, payload: payload.clone() })
            }
            _ => None,
        },
        PushKind::SSubscribe => {
            let channel = text(push.data.first())?;
            (!was_expected(expected, true, channel.clone())).then_some(FeedEvent::Resubscribed(channel))
        }
        PushKind::SUnsubscribe => {
            let channel = text(push.data.first())?;
            (!was_expected(expected, false, channel.clone())).then_some(FeedEvent::Unsubscribed(channel))
        }
        PushKind::Disconnection => Some(FeedEvent::Reconnected),
        _ => None,
    }
}

/// Subscribes on the cluster connection, one channel per command (channels of different keys
/// live in different slots, and one `SSUBSCRIBE` may name only one slot), all at once. A
/// channel whose node does not confirm in time is that node's trouble alone: the other
/// channels' subscriptions stand, and the cluster connection repairs the node's connection
/// (and subscribes it again) by itself.
struct ClusterSink {
    conn: ClusterConnection,
    expected: Expected,
}

impl ClusterSink {
    /// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) each channel, each bounded by `timeout`.
    fn each(&self, subscribe: bool, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome> {
        let (conn, expected) = (self.conn.clone(), Arc::clone(&self.expected));
        Box::pin(async move {
            let calls = channels.into_iter().map(|channel| {
                let (mut conn, expected) = (conn.clone(), Arc::clone(&expected));
                async move {
                    expect(&expected, subscribe, &channel);
                    let call = async {
                        if subscribe {
                            conn.ssubscribe(&channel).await
                        } else {
                            conn.sunsubscribe(&channel).await
                        }
                    };
                    if let Ok(Ok(())) = tokio::time::timeout(timeout, call).await {
                        return None;
                    }
                    // No confirmation is known to come: do not let the count swallow a later
                    // one (one that does come anyway is taken for news, and wakes waiters).
                    was_expected(&expected, subscribe, channel.clone());
                    Some(channel)
                }
            });
            let failed: Vec<String> =
                futures_util::future::join_all(calls).await.into_iter().flatten().collect();
            if failed.is_empty() { Outcome::Done } else { Outcome::Partly { failed } }
        })
    }
}

impl FeedSink for ClusterSink {
    fn subscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome> {
        self.each(true, channels, timeout)
    }

    fn unsubscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome> {
        self.each(false, channels, timeout)
    }

    /// `PING` to every primary, answered by the first that answers: the feed is broken only
    /// when none does. (A node that does not answer has its own connection repaired by the
    /// cluster connection, which subscribes it again; one node down or silent must not drop
    /// every shard's subscriptions.)
    fn ping(&self, timeout: Duration) -> BoxFuture<'static, Outcome> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let routing = RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::OneSucceeded),
            ));
            Outcome::of_whole(timeout, async move {
                conn.route_command(redis::cmd("PING"), routing).await.map(drop)
            })
            .await
        })
    }
}
