//! The command connections of one Redis backend: one multiplexed connection (or, on Redis
//! Cluster, one cluster connection) per tokio runtime that uses the backend, made by the
//! backend's [`Connector`].
//!
//! A connection's driver task runs on the runtime that made it, so each runtime gets its own:
//! a runtime that ends takes only its own connection with it, and a service registered once
//! keeps working from every other runtime and from the next one (the `#[tokio::test]`
//! pattern). Finding the connection costs one uncontended lock and map lookup per call.
//!
//! A connection that misses a call timeout or breaks is replaced: the next call on that
//! runtime connects anew. A connection that went silent without closing (a dead host, a NAT
//! that dropped the flow) therefore costs one call timeout, not every call after it. TCP
//! keepalive and `TCP_USER_TIMEOUT` also make the kernel give up on such a connection. A
//! replaced connection that an acquisition went unanswered on is kept a while longer, so that
//! its release can follow it there (see [`unanswered`](super::unanswered)).
//!
//! Replicated acquisitions, whose `WAIT` holds up the connection it is sent on, each take a
//! connection of their own instead: [`lanes`](super::lanes), made of these.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::runtime::{Handle, Id};
use tokio::sync::watch;

use super::error::{call_error, connect_error, late};
use crate::backend::{BackendError, BackendErrorKind, BoxFuture};
use crate::id_hash::IdMap;

/// TCP settings for every connection: keepalive probes after 5 s of silence, and the kernel
/// gives up on data unacknowledged for twice the call timeout (at least 1 s). (Nagle stays on, as redis-rs leaves it:
/// with many tasks on one multiplexed connection it coalesces their commands into fewer
/// packets, which measured cheaper for Redis than `TCP_NODELAY`.)
pub(super) fn tcp_settings(call_timeout: Duration) -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(5);
    TcpSettings::default().set_keepalive(keepalive).set_user_timeout(user_timeout(call_timeout))
}

/// How long the kernel keeps data unacknowledged before it gives up on the connection
/// (`TCP_USER_TIMEOUT`): twice the call timeout, at least 1 s. After that, what a closed
/// connection was sent can no longer arrive.
pub(super) fn user_timeout(call_timeout: Duration) -> Duration {
    // A call timeout meant as "no bound" (`Duration::MAX`) must neither overflow nor exceed
    // what `TCP_USER_TIMEOUT` takes (an `int` of milliseconds; more is `EINVAL`).
    call_timeout
        .saturating_mul(2)
        .clamp(Duration::from_secs(1), Duration::from_millis(i32::MAX.unsigned_abs().into()))
}

/// Makes a backend's command connections: to one server, to the primary the sentinels name,
/// or to a cluster.
pub(super) trait Connector: Send + Sync + 'static {
    /// A new connection, made on (and driven by) the current runtime.
    fn connect(&self) -> BoxFuture<'_, RedisResult<Conn>>;

    /// Changes when connections made earlier no longer reach the right server (the sentinels
    /// named a new primary): a connection made at another epoch is replaced before its next
    /// call.
    fn epoch(&self) -> u64 {
        0
    }

    /// A call failed in a way that may mean the server moved: no answer, a broken connection,
    /// or `READONLY` (the server is a replica now).
    fn suspect(&self) {}

    /// Whether a connection that missed a call timeout or broke is replaced by a new one
    /// (yes, by default). A cluster connection is not: it repairs each node's connection
    /// itself, and making a new one waits for every node — one silent node would then cost
    /// calls to every shard their call timeout.
    fn replace_failed(&self) -> bool {
        true
    }

    /// Whether the connections reach a Redis Cluster (and follow its `MOVED`/`ASK`). On a
    /// connection to one server, a `MOVED` means a cluster node was named where a single
    /// server belongs.
    fn is_cluster(&self) -> bool {
        false
    }
}

/// A connection to one server (made from a [`redis::Client`]).
pub(super) struct ServerConnector {
    pub(super) client: redis::Client,
    pub(super) config: AsyncConnectionConfig,
}

impl Connector for ServerConnector {
    fn connect(&self) -> BoxFuture<'_, RedisResult<Conn>> {
        Box::pin(async move {
            Ok(Conn::Server(self.client.get_multiplexed_async_connection_with_config(&self.config).await?))
        })
    }
}

/// The connection settings of every command connection: every call is bounded by
/// [`Connections::call`], which also covers connecting, so a second timer per call inside
/// redis-rs would only add cost.
pub(super) fn connection_config(call_timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_connection_timeout(Some(call_timeout)).set_response_timeout(None)
}

/// A command connection: to one server, or to a cluster (which routes each command by its
/// first key's slot and follows `MOVED`/`ASK` itself).
#[derive(Clone)]
pub(super) enum Conn {
    Server(MultiplexedConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Whether everything sent on this connection and its clones goes on one TCP stream, in
    /// order: one server's multiplexed connection does. A cluster connection holds one stream
    /// per node, and replaces a node's when it broke or when a slot refresh (after a `MOVED`,
    /// say) finds it silent — a timed-out call alone does not — so two commands for one slot
    /// may go on two streams.
    pub(super) fn is_one_stream(&self) -> bool {
        match self {
            Conn::Server(_) => true,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => false,
        }
    }
}

/// Where a call was sent: the connection, once it has one, and which connection that is (its
/// clones share one number, unique in the process).
#[derive(Default)]
pub(super) struct SentOn(Mutex<Option<(Conn, u64)>>);

impl SentOn {
    fn put(&self, conn: Conn, generation: u64) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((conn, generation));
    }

    /// The connection the call was sent on, and its number, if it got that far.
    pub(super) fn take(&self) -> Option<(Conn, u64)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The connections of one backend, by runtime.
pub(super) struct Connections {
    connector: Box<dyn Connector>,
    call_timeout: Duration,
    /// The URL with any password masked, for messages.
    url: String,
    by_runtime: Mutex<IdMap<Id, Taken>>,
    /// Runtimes with a task that forgets their connection when they shut down (one each, however
    /// often their connection is replaced).
    watched: Mutex<IdMap<Id, ()>>,
    /// Dropped with the connections: ends those tasks.
    alive: watch::Sender<()>,
}

/// A runtime's connection: as kept for the runtime, and as handed to one call.
#[derive(Clone)]
struct Taken {
    made: Made,
    conn: Conn,
}

/// Which connection a call ran on: what is left to know of it once the call has it.
#[derive(Clone, Copy)]
struct Made {
    /// Which of its runtime's connections it is.
    generation: u64,
    /// The connector's epoch when it was made.
    epoch: u64,
}

/// A call that failed.
struct Failure {
    err: BackendError,
    /// It suggests the server moved (`READONLY`: the server became a replica).
    moved: bool,
}

impl Connections {
    pub(super) fn new(connector: impl Connector, call_timeout: Duration, url: String) -> Arc<Self> {
        Arc::new(Self {
            connector: Box::new(connector),
            call_timeout,
            url,
            by_runtime: Mutex::default(),
            watched: Mutex::default(),
            alive: watch::Sender::new(()),
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    fn slots(&self) -> MutexGuard<'_, IdMap<Id, Taken>> {
        // Every update is one insert or remove: a poisoned map is still consistent.
        self.by_runtime.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run `call` on this runtime's connection, within the call timeout (connecting first if
    /// this runtime has none). `what` names the call in errors ("the acquire script").
    pub(super) async fn call<T, F, Fut>(self: &Arc<Self>, what: &str, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call_noting(what, None, call).await
    }

    /// [`call`](Self::call), putting the connection the call is sent on in `sent_on` (for a
    /// caller that may have to send more behind it, on the same connection, if the answer never
    /// comes: see [`unanswered`](super::unanswered)).
    pub(super) async fn call_noting<T, F, Fut>(
        self: &Arc<Self>,
        what: &str,
        sent_on: Option<&SentOn>,
        call: F,
    ) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call_within(what, sent_on, self.call_timeout, call).await
    }

    /// [`call_noting`](Self::call_noting) within `bound` (what is left of the call timeout of
    /// a caller that waited for a connection, see [`lanes`](super::lanes)).
    pub(super) async fn call_within<T, F, Fut>(
        self: &Arc<Self>,
        what: &str,
        sent_on: Option<&SentOn>,
        bound: Duration,
        call: F,
    ) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let runtime = current_runtime()?;
        let id = runtime.id();
        let mut used: Option<Made> = None;
        let outcome = tokio::time::timeout(bound, async {
            let Taken { made, conn } = self.connection(&runtime).await?;
            used = Some(made);
            if let Some(sent_on) = sent_on {
                sent_on.put(conn.clone(), made.generation);
            }
            call(conn).await.map_err(|err| Failure {
                // A server that became a replica (a failover) answers writes with `READONLY`.
                moved: err.code() == Some("READONLY"),
                err: call_error(&self.url, what, err, self.connector.is_cluster()),
            })
        })
        .await;
        let Failure { err, moved } = match outcome {
            // The server moved while the call ran (the sentinels named a new primary): what it
            // did happened on the old one, which the group is leaving. An acquisition or a
            // renewal there must not count; the caller asks again, on the new one.
            Ok(Ok(_)) if used.is_some_and(|made| made.epoch != self.connector.epoch()) => {
                return Err(BackendError::new(
                    BackendErrorKind::Unavailable,
                    format!("{} moved to another server while {what} ran; it is asked again there", self.url),
                ));
            }
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => Failure { err: late(&self.url, what, self.call_timeout), moved: false },
        };
        // A connection that missed its timeout may be silent for good; one that broke is
        // gone; one that reached a replica is of no use: replace it, and let the connector
        // look for the server again. Other errors Redis answered with leave it in place.
        if matches!(err.kind(), BackendErrorKind::Timeout | BackendErrorKind::Connection) || moved {
            self.connector.suspect();
            if let Some(made) = used
                && self.connector.replace_failed()
            {
                self.discard(id, made.generation);
            }
        }
        Err(err)
    }

    /// This runtime's connection, made now if it has none.
    async fn connection(self: &Arc<Self>, runtime: &Handle) -> Result<Taken, Failure> {
        let id = runtime.id();
        let epoch = self.connector.epoch();
        if let Some(slot) = self.slots().get(&id)
            && slot.made.epoch == epoch
        {
            return Ok(slot.clone());
        }
        let conn = self.connector.connect().await.map_err(|err| {
            self.connector.suspect();
            Failure { err: connect_error(&self.url, err), moved: false }
        })?;
        let mut slots = self.slots();
        if let Some(slot) = slots.get(&id)
            && slot.made.epoch == epoch
        {
            // Another call of this runtime connected meanwhile: use one connection.
            return Ok(slot.clone());
        }
        static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let taken = Taken { made: Made { generation, epoch }, conn };
        slots.insert(id, taken.clone());
        drop(slots);
        // Forget the runtime's connection when the runtime shuts down: it drops this task then.
        // The task ends by itself when the backend is dropped first.
        let first = self.watched.lock().unwrap_or_else(PoisonError::into_inner).insert(id, ()).is_none();
        if first {
            let forget = ForgetOnDrop { connections: Arc::downgrade(self), id };
            let mut backend_gone = self.alive.subscribe();
            runtime.spawn(async move {
                let _forget = forget;
                let _ = backend_gone.changed().await;
            });
        }
        Ok(taken)
    }

    /// Stop using connection `generation` of runtime `id` (if it is still the current one).
    fn discard(&self, id: Id, generation: u64) {
        let mut slots = self.slots();
        if slots.get(&id).is_some_and(|slot| slot.made.generation == generation) {
            slots.remove(&id);
            tracing::debug!(target: "dlock", url = %self.url, "replacing a Redis connection that timed out or broke");
        }
    }

    /// Stop using the connection of runtime `id`: a call left something running on it (see
    /// [`lanes`](super::lanes)). Its next call connects anew.
    pub(super) fn forget(&self, id: Id) {
        self.slots().remove(&id);
    }

    /// How many runtimes have a connection (for tests).
    pub(super) fn count(&self) -> usize {
        self.slots().len()
    }
}

/// The runtime the backend is called on.
pub(super) fn current_runtime() -> Result<Handle, BackendError> {
    Handle::try_current().map_err(|_| {
        BackendError::new(BackendErrorKind::Other, "the Redis backend was called outside a tokio runtime")
    })
}

/// Removes a runtime's connection when that runtime shuts down.
struct ForgetOnDrop {
    connections: Weak<Connections>,
    id: Id,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.slots().remove(&self.id);
            connections.watched.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        }
    }
}
