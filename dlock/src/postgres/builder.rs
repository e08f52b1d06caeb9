//! [`PostgresBackendBuilder`]: the options, checking a URL, connecting, and preparing the schema
//! (read its version; create or migrate it when allowed).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::in_flight::InFlight;
use super::listen::Listener;
use super::pool::Pools;
use super::runtime::Background;
use super::sql::Statements;
use super::{Inner, PostgresBackend, backend_error, clean_up_periodically, errors, schema};
use crate::backend::{BackendError, BackendErrorKind};
use crate::error::Error;

/// Options for [`PostgresBackend`]; see [`PostgresBackend::builder`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// use std::time::Duration;
///
/// let postgres = dlock::PostgresBackend::builder("postgres://app@db.internal/app")
///     .schema("locks")
///     .pool_size(4)
///     .call_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # let _ = postgres; Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "call .connect().await to get the backend"]
pub struct PostgresBackendBuilder {
    url: String,
    listen_url: Option<String>,
    schema: String,
    pool_size: usize,
    call_timeout: Duration,
    listen: bool,
    migrate_on_connect: bool,
    cleanup_after: Option<Duration>,
}

impl std::fmt::Debug for PostgresBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold a password.
        f.debug_struct("PostgresBackendBuilder")
            .field("url", &errors::redact(&self.url))
            .field("listen_url", &self.listen_url.as_deref().map(errors::redact))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("call_timeout", &self.call_timeout)
            .field("listen", &self.listen)
            .field("migrate_on_connect", &self.migrate_on_connect)
            .field("cleanup_after", &self.cleanup_after)
            .finish()
    }
}

impl PostgresBackendBuilder {
    /// The defaults, for `url` (see [`PostgresBackend::builder`]).
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            listen_url: None,
            schema: PostgresBackend::DEFAULT_SCHEMA.to_owned(),
            pool_size: PostgresBackend::DEFAULT_POOL_SIZE,
            call_timeout: PostgresBackend::DEFAULT_CALL_TIMEOUT,
            listen: true,
            migrate_on_connect: true,
            cleanup_after: Some(Duration::from_secs(3600)),
        }
    }

    /// The schema dlock's table, sequence and function live in (default `dlock`). Every
    /// process that shares locks must use the same one; two schemas are two independent lock
    /// namespaces.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").schema("app_locks").connect().await?;
    /// assert_eq!(backend.schema(), "app_locks");
    /// # Ok(()) }
    /// ```
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens (default 10), per tokio runtime that uses the
    /// backend (most processes have one). Each acquire, renew or release holds one for a
    /// single round trip; held locks hold none.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").pool_size(4).connect().await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Bound on every call, on connecting and on preparing the schema (default 2 s).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// use std::time::Duration;
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app")
    ///     .call_timeout(Duration::from_millis(500))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Whether waiting processes listen for release notices (default `true`). Without them a
    /// waiter re-checks on a timer (every few milliseconds, backing off to 100 ms, never past
    /// the holder's remaining lease): more statements and slower hand-offs, still correct.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").listen(false).connect().await?;
    /// assert_eq!(backend.listening_channels(), 0);
    /// # Ok(()) }
    /// ```
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Where the listening connection goes, when it must not go where the pool does.
    ///
    /// LISTEN is session state: through PgBouncer in transaction mode it would be lost. Point
    /// the pool at PgBouncer and this at the PostgreSQL server itself (one connection per
    /// process).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// // Statements through PgBouncer (transaction mode), LISTEN straight to the server.
    /// let backend = dlock::PostgresBackend::builder("postgres://app@pgbouncer:6432/app")
    ///     .listen_url("postgres://app@db:5432/app")
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(url.into());
        self
    }

    /// Whether [`connect`](Self::connect) creates or migrates the schema when it is missing or
    /// older than this dlock (default `true`). With `false`, connecting to a schema that is not
    /// ready is an error that says to run [`migrate`](Self::migrate).
    ///
    /// On by default so that `connect` is all a service needs, as with Redis; it costs one
    /// query when the schema is up to date, and needs CREATE rights only when it is not.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// // The schema is migrated by a deploy step; the service only checks it.
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").migrate_on_connect(false).connect().await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate_on_connect = migrate;
        self
    }

    /// How long a free row (released, or expired) stays in the lease table before a
    /// background cleanup removes it (default one hour); `None`: never. Rows are kept for a
    /// while because most keys are locked again soon; removing one loses nothing (fencing
    /// tokens come from a sequence, not from the row).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// use std::time::Duration;
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app")
    ///     .cleanup_after(Some(Duration::from_secs(24 * 3600)))
    ///     .connect()
    ///     .await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn cleanup_after(mut self, after: Option<Duration>) -> Self {
        self.cleanup_after = after;
        self
    }

    /// Connect, check the server answers (and accepts the credentials), and create or migrate
    /// the schema if needed (see [`migrate_on_connect`](Self::migrate_on_connect)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").connect().await?;
    /// let service = dlock::LockService::new(backend);
    /// # let _ = service;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<PostgresBackend, Error> {
        let url = errors::redact(&self.url);
        let config = self.config(&self.url)?;
        let listen_config = match &self.listen_url {
            Some(listen_url) => self.config(listen_url)?,
            None => config.clone(),
        };
        let background = Arc::new(Background::start().map_err(|err| {
            backend_error(BackendError::with_source(
                BackendErrorKind::Other,
                "could not start the PostgreSQL backend's thread",
                err,
            ))
        })?);
        let pool = Pools::new(config, self.pool_size, url.clone(), self.schema.clone(), self.call_timeout);
        let ascii_keys_only = tokio::time::timeout(self.call_timeout, self.prepare(&pool, &url))
            .await
            .map_err(|_| {
                backend_error(BackendError::new(
                    BackendErrorKind::Timeout,
                    format!(
                        "could not connect to {url} and check dlock's schema `{}` within {:?}; is PostgreSQL running and reachable?",
                        self.schema, self.call_timeout
                    ),
                ))
            })??;
        let listener = self.listen.then(|| Listener::start(listen_config, &background, self.call_timeout));
        tracing::debug!(target: "dlock", url = %url, schema = %self.schema, "connected to PostgreSQL");
        let statements = Statements::new(&self.schema);
        let in_flight = InFlight::new(statements.release.clone(), self.call_timeout, pool.config().clone());
        let inner = Arc::new(Inner {
            pool,
            in_flight,
            statements,
            listener,
            schema: self.schema,
            url,
            call_timeout: self.call_timeout,
            ascii_keys_only,
            _background: Arc::clone(&background),
        });
        if let Some(after) = self.cleanup_after {
            background.spawn(clean_up_periodically(Arc::downgrade(&inner), after));
        }
        Ok(PostgresBackend { inner })
    }

    /// Create or migrate the schema now, and return the version it had before (0: it did not
    /// exist). For a deploy step run with a role that may create tables, when services connect
    /// with [`migrate_on_connect(false)`](Self::migrate_on_connect). Idempotent.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let before = dlock::PostgresBackend::builder("postgres://admin@db/app").migrate().await?;
    /// println!("dlock schema was at version {before}");
    /// # Ok(()) }
    /// ```
    pub async fn migrate(self) -> Result<i32, Error> {
        let url = errors::redact(&self.url);
        let config = self.config(&self.url)?;
        let schema = self.schema.clone();
        let migrating = async {
            let (mut client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|err| errors::connect_error(&url, &schema, "connect", err))?;
            let driver = tokio::spawn(connection);
            let result = schema::migrate(&mut client, &schema)
                .await
                .map_err(|err| errors::connect_error(&url, &schema, "migrate dlock's schema", err));
            drop(client);
            let _ = driver.await;
            result
        };
        match tokio::time::timeout(self.call_timeout, migrating).await {
            Ok(result) => result.map_err(backend_error),
            Err(_) => {
                Err(backend_error(errors::timeout_error(&url, "the migration", self.call_timeout, true)))
            }
        }
    }

    /// Parse and check a URL of this builder.
    fn config(&self, url: &str) -> Result<tokio_postgres::Config, Error> {
        let shown = errors::redact(url);
        let invalid = |reason: String| Error::InvalidInput { what: "PostgreSQL URL", reason };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(format!(
                "`{shown}` is not a PostgreSQL URL; expected postgres://[user[:password]@]host[:port]/database"
            )));
        }
        let mut config = tokio_postgres::Config::from_str(url).map_err(|err| {
            invalid(format!(
                "`{shown}` is not a PostgreSQL URL ({err}); expected postgres://[user[:password]@]host[:port]/database"
            ))
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(invalid(format!(
                "`{shown}` names no host; expected postgres://[user[:password]@]host[:port]/database"
            )));
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(invalid(format!(
                "`{shown}` asks for TLS (sslmode=require), which dlock's PostgreSQL backend does not support yet; connect over a private network or a TLS-terminating proxy, with sslmode=disable"
            )));
        }
        if self.call_timeout.is_zero() {
            return Err(Error::InvalidInput {
                what: "call timeout",
                reason: "it must be greater than zero".into(),
            });
        }
        if self.pool_size == 0 {
            return Err(Error::InvalidInput { what: "pool size", reason: "it must be at least 1".into() });
        }
        if self.schema.is_empty() || self.schema.len() > 63 || self.schema.contains('\0') {
            return Err(Error::InvalidInput {
                what: "schema",
                reason: format!(
                    "`{}` cannot name a PostgreSQL schema: it must be 1 to 63 bytes, without NUL",
                    self.schema
                ),
            });
        }
        config.connect_timeout(self.call_timeout);
        if config.get_application_name().is_none() {
            config.application_name("dlock");
        }
        Ok(config)
    }

    /// Check the server, the credentials and the schema on one pooled connection; migrate if
    /// allowed and needed. Returns whether only ASCII keys are safe (the server's encoding).
    async fn prepare(&self, pool: &Pools, url: &str) -> Result<bool, Error> {
        let schema = &self.schema;
        let mut object = pool.get("checking dlock's schema").await.map_err(backend_error)?;
        let client: &mut tokio_postgres::Client = &mut object;
        let failed = |what: &str| {
            let what = what.to_owned();
            move |err| backend_error(errors::connect_error(url, schema, &what, err))
        };
        let mut version =
            schema::read_version(client, schema).await.map_err(failed("read dlock's schema version"))?;
        if version.is_none_or(|v| v.version < schema::VERSION) {
            if !self.migrate_on_connect {
                return Err(backend_error(BackendError::new(
                    BackendErrorKind::Other,
                    format!(
                        "dlock's schema `{schema}` at {url} is {} (this dlock needs version {}); run `PostgresBackend::builder(url).schema(..).migrate()` with a role that may create tables, or allow `migrate_on_connect`",
                        version.map_or("missing".to_owned(), |v| format!("at version {}", v.version)),
                        schema::VERSION
                    ),
                )));
            }
            let before = schema::migrate(client, schema).await.map_err(failed("create dlock's schema"))?;
            tracing::info!(target: "dlock", schema = %schema, from = before, to = schema::VERSION, "migrated dlock's PostgreSQL schema");
            version =
                schema::read_version(client, schema).await.map_err(failed("read dlock's schema version"))?;
        }
        if let Some(v) = version
            && v.compatible > schema::VERSION
        {
            return Err(backend_error(BackendError::new(
                BackendErrorKind::Other,
                format!(
                    "dlock's schema `{schema}` at {url} is at version {}, made by a newer dlock, and no longer works with this one (version {}); upgrade dlock in this process",
                    v.version,
                    schema::VERSION
                ),
            )));
        }
        let rows = client
            .query_typed("SELECT current_setting('server_encoding')", &[])
            .await
            .map_err(failed("read the server encoding"))?;
        let encoding: String = rows.first().map(|row| row.get(0)).unwrap_or_default();
        Ok(encoding != "UTF8")
    }
}
