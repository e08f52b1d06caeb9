//! The connection pools — one per tokio runtime that uses the backend — and the one way every
//! statement runs: on a pooled connection, bounded by the call timeout, and never leaving a
//! connection that is still busy with a statement nobody waits for in a pool.
//!
//! # One pool per runtime
//!
//! A `tokio_postgres` connection is a future that must be polled for its client to get
//! answers. Each runtime that calls the backend gets a pool of its own, whose connections are
//! driven by tasks on that runtime: a statement and its answer never cross to another thread
//! (as they would through one shared pool on a thread of the backend's own — measured at
//! 0.83× the raw floor's uncontended rate, against 0.99× now). When a runtime ends, its
//! connections end with it and a task left on it forgets its pool; a runtime that exists but
//! is not being driven (a current-thread runtime between two `block_on`s) stalls only its own
//! callers, which are not running either. So a backend made in one runtime serves every runtime of the
//! process, also after the one that made it has ended (the `#[tokio::test]` pattern).
//!
//! Statements run unprepared (`query_typed`: parse, bind and execute in one round trip, with
//! the parameter types sent along), so no session state is needed — PgBouncer in transaction
//! mode hands each statement to whichever server connection is free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime};
use tokio::runtime::{Handle, Id};
use tokio::sync::watch;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use super::errors::{call_error, connect_error, timeout_error};
use super::in_flight::Settling;
use crate::backend::{BackendError, BackendErrorKind};

/// One statement's parameters with their types.
pub(super) type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

type ByRuntime = Mutex<HashMap<Id, Arc<deadpool_postgres::Pool>>>;

/// The pools of one backend, by runtime.
pub(super) struct Pools {
    by_runtime: Arc<ByRuntime>,
    config: tokio_postgres::Config,
    /// The most connections of each runtime's pool.
    size: usize,
    /// Where cancel requests go, when the configuration names one server.
    cancel_to: Option<CancelTo>,
    /// The URL with the password masked.
    url: String,
    schema: String,
    timeout: Duration,
    /// Dropped with the pools: ends the task each runtime keeps for forgetting its pool.
    alive: watch::Sender<()>,
}

fn lock(map: &ByRuntime) -> MutexGuard<'_, HashMap<Id, Arc<deadpool_postgres::Pool>>> {
    // Every update is one insert or remove: a poisoned map is consistent.
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pools {
    pub(super) fn new(
        config: tokio_postgres::Config,
        size: usize,
        url: String,
        schema: String,
        timeout: Duration,
    ) -> Self {
        let alive = watch::Sender::new(());
        let cancel_to = CancelTo::of(&config);
        Self { by_runtime: Arc::default(), config, size, cancel_to, url, schema, timeout, alive }
    }

    /// The pool of the runtime this is called on, made on first use.
    fn current(&self) -> Result<Arc<deadpool_postgres::Pool>, BackendError> {
        let handle = Handle::try_current().map_err(|_| {
            BackendError::new(
                BackendErrorKind::Other,
                "the PostgreSQL backend was called outside a tokio runtime; call it from inside one",
            )
        })?;
        let id = handle.id();
        let mut pools = lock(&self.by_runtime);
        if let Some(pool) = pools.get(&id) {
            return Ok(Arc::clone(pool));
        }
        // The connections' driver tasks are spawned (by deadpool, with `tokio::spawn`) on this
        // runtime, as each connection is made inside a caller's call.
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        // No pool timeouts of its own: every call, waiting for a connection included, is
        // bounded by the call timeout in `query`.
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(self.size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| {
                BackendError::new(BackendErrorKind::Other, format!("could not make a connection pool: {err}"))
            })?;
        let pool = Arc::new(pool);
        pools.insert(id, Arc::clone(&pool));
        drop(pools);
        // Dropped with the runtime's tasks when it shuts down: forgets the pool, whose
        // connections have ended with their driver tasks. Ends by itself when the backend is
        // dropped first.
        let forget = Forget { by_runtime: Arc::downgrade(&self.by_runtime), id };
        let mut backend_gone = self.alive.subscribe();
        handle.spawn(async move {
            let _forget = forget;
            let _ = backend_gone.changed().await;
        });
        Ok(pool)
    }

    /// Run `sql` with `params` on a connection of this runtime's pool within the call
    /// timeout; `what` names the statement in messages.
    ///
    /// A call that times out while its statement is on the wire takes the connection out of
    /// the pool and cancels the statement on the server (a cancel request, then the connection
    /// is closed): a statement stuck behind a row lock must not delay the next caller of that
    /// connection. A call that times out also closes the pool's idle connections.
    pub(super) async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, BackendError> {
        self.query_settling(what, sql, params, None).await
    }

    /// [`query`](Self::query) for an acquisition, dropping `settling` once the statement has
    /// ended on the server: when answered, or — if its caller gave up while it was on the wire
    /// — once a round trip sent after it on the same connection came back. If that does not
    /// come back within a call timeout, the connection is kept (out of the pool) for the
    /// owner's release to be sent behind the statement (see `in_flight`).
    pub(super) async fn query_settling(
        &self,
        what: &str,
        sql: &str,
        params: &Params<'_>,
        settling: Option<Settling>,
    ) -> Result<Vec<Row>, BackendError> {
        let pool = self.current()?;
        // Whether the statement was sent: a timeout before is one of waiting for a connection.
        let sent = std::sync::atomic::AtomicBool::new(false);
        let call = async {
            let object = pool.get().await.map_err(|err| self.pool_error(what, err))?;
            sent.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut checkout = Checkout {
                object: Some(object),
                settling,
                timeout: self.timeout,
                cancel_to: &self.cancel_to,
            };
            let result = match checkout.object.as_deref() {
                Some(client) => client.query_typed(sql, params).await,
                None => {
                    return Err(BackendError::new(BackendErrorKind::Other, "internal: no pooled connection"));
                }
            };
            // Answered: the connection goes back to the pool (or, if it broke, is dropped when
            // next taken: deadpool checks `is_closed` then).
            checkout.finish();
            result.map_err(|err| call_error(&self.url, &self.schema, what, err))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                // The connection that did not answer is gone (`Checkout`). The idle ones
                // were made the same way, and may have gone silent with it (a NAT or firewall
                // that forgot its flows, an address that moved in a failover): close them
                // too, so the next call connects afresh instead of timing out on each in
                // turn. If they were fine, that costs a reconnect each.
                pool.retain(|_, _| false);
                Err(timeout_error(
                    &self.url,
                    what,
                    self.timeout,
                    sent.load(std::sync::atomic::Ordering::Relaxed),
                ))
            }
        }
    }

    /// A connection of this runtime's pool for several statements (connecting, migrating),
    /// bounded by the caller.
    pub(super) async fn get(&self, what: &str) -> Result<Object, BackendError> {
        self.current()?.get().await.map_err(|err| self.pool_error(what, err))
    }

    /// The configuration every pooled connection is made with.
    pub(super) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// How many connections the pools hold now, over all runtimes.
    pub(super) fn size(&self) -> usize {
        lock(&self.by_runtime).values().map(|pool| pool.status().size).sum()
    }

    /// How many runtimes have a pool now.
    pub(super) fn runtimes(&self) -> usize {
        lock(&self.by_runtime).len()
    }

    fn pool_error(&self, what: &str, err: PoolError) -> BackendError {
        match err {
            PoolError::Backend(err) => {
                connect_error(&self.url, &self.schema, &format!("connect for {what}"), err)
            }
            other => BackendError::new(
                BackendErrorKind::Other,
                format!("the connection pool for PostgreSQL at {} failed {what}: {other}", self.url),
            ),
        }
    }
}

/// Removes a runtime's pool from the map when dropped.
struct Forget {
    by_runtime: Weak<ByRuntime>,
    id: Id,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(by_runtime) = self.by_runtime.upgrade() {
            let pool = lock(&by_runtime).remove(&self.id);
            // Dropped outside the map's lock.
            drop(pool);
        }
    }
}

/// A pooled connection with a statement on the wire. Dropped before the answer came, it takes
/// the connection out of the pool, cancels the statement, and closes the connection once a
/// round trip sent behind the statement came back, or a call timeout passed — or, for an
/// acquisition that has not ended by then, once its owner's release has been sent behind it.
struct Checkout<'a> {
    object: Option<Object>,
    cancel_to: &'a Option<CancelTo>,
    /// Dropped once the statement has ended on the server.
    settling: Option<Settling>,
    /// How long to wait for an abandoned statement to end.
    timeout: Duration,
}

impl Checkout<'_> {
    /// The statement was answered: return the connection to the pool.
    fn finish(&mut self) {
        drop(self.object.take());
        drop(self.settling.take());
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        // Dropped before the answer came (the call timed out, or its caller gave up).
        let Some(object) = self.object.take() else { return };
        let wrapper = Object::take(object);
        let cancel = wrapper.cancel_token();
        let (settling, timeout, cancel_to) = (self.settling.take(), self.timeout, self.cancel_to.clone());
        // Taken now, while the backend surely lives: a release that asks before it is
        // dropped still goes behind the statement after.
        let behind = settling.as_ref().and_then(Settling::behind);
        // On dlock's runtime: not the caller's, which may end or stop being driven, nor the
        // backend's, which ends with the backend.
        crate::background::spawn_here(async move {
            // On this runtime's clock (the caller's may be paused).
            let abandoned = tokio::time::Instant::now();
            let cancel = async {
                let _ = tokio::time::timeout(Duration::from_secs(5), send_cancel(&cancel, cancel_to)).await;
            };
            // Answered after the abandoned statement (cancelled or not), on the same connection:
            // then it has ended, and `settling` goes at once (a release waits for that). An
            // error with no SQLSTATE is no answer: the connection closed (its driver's runtime
            // ended, say), which does not stop bytes already on their way, nor a statement
            // running on the server.
            let ended = async {
                let ended = match tokio::time::timeout(timeout, wrapper.simple_query("")).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(err)) => err.code().is_some(),
                    Err(_) => false,
                };
                settling.filter(|_| !ended)
            };
            let ((), unended) = tokio::join!(cancel, ended);
            // An acquisition that has not ended (held up on its way, or stuck behind a row
            // lock its cancel missed) may still commit: its connection is kept, out of the
            // pool, for its owner's release to go behind it (see `in_flight`). Sent only once
            // the cancel is answered, so that the cancel does not hit the release instead (a
            // release it still hits is sent again).
            if let (Some(mut settling), Some(behind)) = (unended, behind) {
                settling.release_behind(&wrapper, abandoned, behind).await;
            }
            drop(wrapper);
        });
    }
}

/// The one server a configuration names, for cancel requests.
#[derive(Clone)]
enum CancelTo {
    Tcp(String, u16),
    Addr(std::net::IpAddr, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl CancelTo {
    /// `None` when `config` names several servers (the connection went to one of them).
    fn of(config: &tokio_postgres::Config) -> Option<Self> {
        let port = match config.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return None,
        };
        match (config.get_hosts(), config.get_hostaddrs()) {
            (_, [addr]) if config.get_hosts().len() <= 1 => Some(Self::Addr(*addr, port)),
            ([tokio_postgres::config::Host::Tcp(host)], []) => Some(Self::Tcp(host.clone(), port)),
            #[cfg(unix)]
            ([tokio_postgres::config::Host::Unix(dir)], []) => {
                Some(Self::Unix(dir.join(format!(".s.PGSQL.{port}"))))
            }
            _ => None,
        }
    }
}

/// Send the cancel request of `token` and wait until the server has closed its connection,
/// which it does once it has acted on it (signalled the statement's server process; PgBouncer:
/// forwarded it). `tokio_postgres`'s own `cancel_query` closes its side as soon as the request
/// is written: PgBouncer 1.18 then crashes, closing every client's connection (pgbouncer#801),
/// and the cancel may reach the server after the release sent behind the statement.
async fn send_cancel(token: &tokio_postgres::CancelToken, to: Option<CancelTo>) {
    match to {
        Some(CancelTo::Tcp(host, port)) => {
            if let Ok(stream) = tokio::net::TcpStream::connect((host.as_str(), port)).await {
                cancel_on(token, stream).await;
            }
        }
        Some(CancelTo::Addr(addr, port)) => {
            if let Ok(stream) = tokio::net::TcpStream::connect((addr, port)).await {
                cancel_on(token, stream).await;
            }
        }
        #[cfg(unix)]
        Some(CancelTo::Unix(path)) => {
            if let Ok(stream) = tokio::net::UnixStream::connect(path).await {
                cancel_on(token, stream).await;
            }
        }
        None => {
            let _ = token.cancel_query(NoTls).await;
        }
    }
}

/// Send the cancel request on `stream`, then read until the server closes it.
async fn cancel_on<S>(token: &tokio_postgres::CancelToken, mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;

    if token.cancel_query_raw(KeepOpen(&mut stream), NoTls).await.is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// A stream whose shutdown only flushes: the cancel request is sent without closing our side.
struct KeepOpen<'a, S>(&'a mut S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for KeepOpen<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for KeepOpen<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("runtimes", &self.runtimes())
            .field("connections", &self.size())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
