//! The connection pool and the one way every statement runs: on a pooled connection, bounded
//! by the call timeout, and never leaving a connection that is still busy with a statement
//! nobody waits for in the pool.
//!
//! Connections are made on the backend's own runtime (see `runtime.rs`), so they are driven
//! whichever runtime the caller is on. Statements run unprepared (`query_typed`: parse, bind
//! and execute in one round trip, with the parameter types sent along), so no session state is
//! needed — PgBouncer in transaction mode hands each statement to whichever server connection
//! is free.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Connect, Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use super::errors::{call_error, connect_error, timeout_error};
use super::runtime::Background;
use crate::backend::{BackendError, BackendErrorKind, BoxFuture};

/// One statement's parameters with their types.
pub(super) type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// The pool of one backend.
pub(super) struct Pool {
    pool: deadpool_postgres::Pool,
    background: Arc<Background>,
    /// The URL with the password masked.
    url: String,
    schema: String,
    timeout: Duration,
}

impl Pool {
    pub(super) fn new(
        config: tokio_postgres::Config,
        size: usize,
        background: Arc<Background>,
        url: String,
        schema: String,
        timeout: Duration,
    ) -> Result<Self, String> {
        let connect = OnBackground { background: Arc::clone(&background) };
        let manager =
            Manager::from_connect(config, connect, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        // No pool timeouts of its own: every call, waiting for a connection included, is
        // bounded by `timeout` in `query`.
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Self { pool, background, url, schema, timeout })
    }

    /// Run `sql` with `params` on a pooled connection within the call timeout; `what` names
    /// the statement in messages.
    ///
    /// A call that times out while its statement is on the wire takes the connection out of
    /// the pool and cancels the statement on the server (a cancel request, then the connection
    /// is closed): a statement stuck behind a row lock must neither delay the next caller of
    /// that connection nor take effect long after its caller gave up.
    pub(super) async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, BackendError> {
        let call = async {
            let object = self.pool.get().await.map_err(|err| self.pool_error(what, err))?;
            let mut checkout = Checkout { object: Some(object), background: &self.background };
            let client: &Client = checkout.object.as_deref().map(|wrapper| &**wrapper).ok_or_else(|| {
                BackendError::new(BackendErrorKind::Other, "internal: no pooled connection")
            })?;
            let result = client.query_typed(sql, params).await;
            // Answered: the connection goes back to the pool (or, if it broke, is dropped when
            // next taken: deadpool checks `is_closed` then).
            checkout.finish();
            result.map_err(|err| call_error(&self.url, &self.schema, what, err))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(&self.url, what, self.timeout)),
        }
    }

    /// A connection of the pool for several statements (connecting, migrating), bounded by the
    /// caller.
    pub(super) async fn get(&self, what: &str) -> Result<Object, BackendError> {
        self.pool.get().await.map_err(|err| self.pool_error(what, err))
    }

    /// How many connections the pool holds now (for tests and the bench).
    pub(super) fn size(&self) -> usize {
        self.pool.status().size
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

/// A pooled connection with a statement on the wire.
struct Checkout<'a> {
    object: Option<Object>,
    background: &'a Background,
}

impl Checkout<'_> {
    /// The statement was answered: return the connection to the pool.
    fn finish(&mut self) {
        drop(self.object.take());
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        // Dropped before the answer came (the call timed out, or its caller gave up).
        let Some(object) = self.object.take() else { return };
        let wrapper = Object::take(object);
        let cancel = wrapper.cancel_token();
        self.background.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), cancel.cancel_query(NoTls)).await;
            drop(wrapper);
        });
    }
}

/// Makes connections on the backend's runtime, which also drives them from then on.
struct OnBackground {
    background: Arc<Background>,
}

impl Connect for OnBackground {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        let config = config.clone();
        let connecting = self.background.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            // Spawned from inside the background runtime: it runs there.
            let driver = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(target: "dlock", error = %err, "a pooled PostgreSQL connection ended");
                }
            });
            Ok((client, driver))
        });
        Box::pin(async move {
            match connecting.await {
                Ok(result) => result,
                // The background runtime is gone, which happens only as the backend is dropped;
                // the caller's call timeout ends this call.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("status", &self.pool.status()).finish_non_exhaustive()
    }
}
