//! The command connections of one [`RedisBackend`](super::RedisBackend): one multiplexed
//! connection per tokio runtime that uses the backend.
//!
//! A connection's driver task runs on the runtime that made it, so each runtime gets its own:
//! a runtime that ends takes only its own connection with it, and a service registered once
//! keeps working from every other runtime and from the next one (the `#[tokio::test]`
//! pattern). Finding the connection costs one uncontended lock and map lookup per call.
//!
//! A connection that misses a call timeout or breaks is replaced: the next call on that
//! runtime connects anew. A connection that went silent without closing (a dead host, a NAT
//! that dropped the flow) therefore costs one call timeout, not every call after it. TCP
//! keepalive and `TCP_USER_TIMEOUT` also make the kernel give up on such a connection.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::runtime::{Handle, Id};

use super::error::{call_error, classify, connect_error, late};
use crate::backend::{BackendError, BackendErrorKind};
use crate::id_hash::IdMap;

/// TCP settings for every connection: keepalive probes after 5 s of silence, and the kernel
/// gives up on data unacknowledged for `user_timeout`. (Nagle stays on, as redis-rs leaves it:
/// with many tasks on one multiplexed connection it coalesces their commands into fewer
/// packets, which measured cheaper for Redis than `TCP_NODELAY`.)
pub(super) fn tcp_settings(user_timeout: Duration) -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(5);
    TcpSettings::default().set_keepalive(keepalive).set_user_timeout(user_timeout)
}

/// The connections of one backend, by runtime.
pub(super) struct Connections {
    client: redis::Client,
    config: AsyncConnectionConfig,
    call_timeout: Duration,
    /// The URL with any password masked, for messages.
    url: String,
    by_runtime: Mutex<IdMap<Id, Slot>>,
}

/// One runtime's connection.
struct Slot {
    /// Tells a connection from the one that replaced it.
    generation: u64,
    conn: MultiplexedConnection,
}

impl Connections {
    pub(super) fn new(client: redis::Client, call_timeout: Duration, url: String) -> Arc<Self> {
        // Every call is bounded by `call`, which also covers connecting: a second timer per
        // call inside redis-rs would only add cost.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(call_timeout))
            .set_response_timeout(None);
        Arc::new(Self { client, config, call_timeout, url, by_runtime: Mutex::default() })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    fn slots(&self) -> MutexGuard<'_, IdMap<Id, Slot>> {
        // Every update is one insert or remove: a poisoned map is still consistent.
        self.by_runtime.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run `call` on this runtime's connection, within the call timeout (connecting first if
    /// this runtime has none). `what` names the call in errors ("the acquire script").
    pub(super) async fn call<T, F, Fut>(self: &Arc<Self>, what: &str, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let runtime = Handle::try_current().map_err(|_| {
            BackendError::new(BackendErrorKind::Other, "the Redis backend was called outside a tokio runtime")
        })?;
        let id = runtime.id();
        let mut used = None;
        let outcome = tokio::time::timeout(self.call_timeout, async {
            let (generation, conn) = self.connection(&runtime).await?;
            used = Some(generation);
            call(conn).await.map_err(|err| (classify(&err), call_error(&self.url, what, err)))
        })
        .await;
        let (kind, err) = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => (BackendErrorKind::Timeout, late(&self.url, what, self.call_timeout)),
        };
        // A connection that missed its timeout may be silent for good; one that broke is
        // gone: replace it. Errors Redis answered with leave it in place.
        if matches!(kind, BackendErrorKind::Timeout | BackendErrorKind::Connection)
            && let Some(generation) = used
        {
            self.discard(id, generation);
        }
        Err(err)
    }

    /// This runtime's connection, made now if it has none.
    async fn connection(
        self: &Arc<Self>,
        runtime: &Handle,
    ) -> Result<(u64, MultiplexedConnection), (BackendErrorKind, BackendError)> {
        let id = runtime.id();
        if let Some(slot) = self.slots().get(&id) {
            return Ok((slot.generation, slot.conn.clone()));
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|err| (classify(&err), connect_error(&self.url, err)))?;
        let mut slots = self.slots();
        if let Some(slot) = slots.get(&id) {
            // Another call of this runtime connected meanwhile: use one connection.
            return Ok((slot.generation, slot.conn.clone()));
        }
        static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slots.insert(id, Slot { generation, conn: conn.clone() });
        drop(slots);
        // Forget the connection when its runtime shuts down: the runtime drops this task then.
        let forget = ForgetOnDrop { connections: Arc::downgrade(self), id, generation };
        runtime.spawn(async move {
            let _forget = forget;
            std::future::pending::<()>().await;
        });
        Ok((generation, conn))
    }

    /// Stop using connection `generation` of runtime `id` (if it is still the current one).
    fn discard(&self, id: Id, generation: u64) {
        let mut slots = self.slots();
        if slots.get(&id).is_some_and(|slot| slot.generation == generation) {
            slots.remove(&id);
            tracing::debug!(target: "dlock", url = %self.url, "replacing a Redis connection that timed out or broke");
        }
    }

    /// How many runtimes have a connection (for tests).
    pub(super) fn count(&self) -> usize {
        self.slots().len()
    }
}

/// Removes a runtime's connection when that runtime shuts down.
struct ForgetOnDrop {
    connections: Weak<Connections>,
    id: Id,
    generation: u64,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.discard(self.id, self.generation);
        }
    }
}
