//! [`PostgresBackend`]: locks in a PostgreSQL database — a lease table, release notices over
//! LISTEN/NOTIFY, and fencing checked inside the application's own transactions.

mod builder;
mod errors;
mod in_flight;
mod listen;
mod pool;
mod runtime;
mod schema;
mod sql;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::types::Type;

pub use self::builder::PostgresBackendBuilder;
use self::in_flight::InFlight;
use self::listen::Listener;
use self::pool::Pools;
use self::runtime::Background;
use self::sql::Statements;
use crate::backend::{
    BackendError, BackendErrorKind, BoxFuture, CONFIRMATION_WAIT, FullKey, LockBackend, ReleaseOutcome,
    ReleaseWatch, TryAcquire,
};
use crate::error::Error;

/// The longest key (in bytes) the PostgreSQL backend stores: keys are the lease table's
/// primary key, and a B-tree entry must fit in a third of a page (2704 bytes with 8 kB pages).
const MAX_KEY_BYTES: usize = 2048;

/// Locks in a PostgreSQL database, shared by every process that connects to it (cargo feature
/// `postgres`).
///
/// A held lock is a row in a lease table, not an open connection: a thousand held locks use
/// no more connections than the pool (default 10 per tokio runtime). Acquire, renew and release are one
/// statement each (one round trip, atomic), judged by the database server's clock. Fencing
/// tokens come from a sequence, so they strictly increase per key and survive restarts; a
/// failover to an asynchronous standby can lose the sequence's latest advance along with the
/// latest locks (replicate synchronously where that matters).
/// Waiting processes hear releases over LISTEN/NOTIFY on one extra connection per backend, and
/// a release sends a NOTIFY only when somebody waits. Application code can make its own writes
/// conditional on still holding the lock, in the same transaction (see
/// [`check_fence`](Self::check_fence)).
///
/// The schema (default `dlock`: the table `dlock_locks`, the sequence `dlock_tokens`, the
/// function `dlock_check`, the version table `dlock_version`) is created or migrated by
/// [`connect`](Self::connect), under an advisory lock so that processes starting together do
/// not collide; turn that off with
/// [`migrate_on_connect(false)`](PostgresBackendBuilder::migrate_on_connect) where the
/// application's role may not create tables, and run
/// [`PostgresBackendBuilder::migrate`] from a deploy step instead.
///
/// Every call is bounded by the call timeout (default 2 s); a call that times out has its
/// statement cancelled on the server and its connection replaced. Each tokio runtime that
/// uses the backend gets a pool of its own, driven by that runtime (so a statement never
/// crosses threads), and the listener runs on a thread of the backend's own: the backend works
/// from any tokio runtime, also after the one that created it has ended.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let postgres = dlock::PostgresBackend::connect("postgres://app:secret@127.0.0.1:5432/app").await?;
/// dlock::set_global(dlock::LockService::new(postgres))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pools,
    /// Acquisitions whose statement may still take effect: a release waits for its own, and
    /// goes behind it.
    in_flight: InFlight,
    statements: Statements,
    listener: Option<Listener>,
    schema: String,
    /// The URL with the password masked, for messages.
    url: String,
    call_timeout: Duration,
    /// The server stores text in an encoding other than UTF-8: only ASCII keys are safe.
    ascii_keys_only: bool,
    /// Declared last: dropped after the listener, whose task runs on it.
    _background: Arc<Background>,
}

impl PostgresBackend {
    /// The default bound on every call, and on connecting: 2 s.
    ///
    /// ```
    /// assert_eq!(dlock::PostgresBackend::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(2));
    /// ```
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

    /// The default pool size: 10 connections.
    ///
    /// ```
    /// assert_eq!(dlock::PostgresBackend::DEFAULT_POOL_SIZE, 10);
    /// ```
    pub const DEFAULT_POOL_SIZE: usize = 10;

    /// The default schema: `dlock`.
    ///
    /// ```
    /// assert_eq!(dlock::PostgresBackend::DEFAULT_SCHEMA, "dlock");
    /// ```
    pub const DEFAULT_SCHEMA: &'static str = "dlock";

    /// The longest key this backend stores, in bytes (service prefix included): 2048. Keys are
    /// the lease table's primary key, and a B-tree entry must fit a third of a page.
    ///
    /// ```
    /// assert_eq!(dlock::PostgresBackend::MAX_KEY_BYTES, 2048);
    /// ```
    pub const MAX_KEY_BYTES: usize = MAX_KEY_BYTES;

    /// The SQLSTATE `dlock_check` raises when the lock is not held with the token given:
    /// `DL001` (see [`check_fence`](Self::check_fence)).
    ///
    /// ```
    /// assert_eq!(dlock::PostgresBackend::NOT_HELD_SQLSTATE, "DL001");
    /// ```
    pub const NOT_HELD_SQLSTATE: &'static str = errors::NOT_HELD;

    /// Connect to the PostgreSQL at `url` with the default options.
    ///
    /// `url` is `postgres://[user[:password]@]host[:port]/database[?param=value…]` (or
    /// `postgresql://…`). A malformed URL is [`Error::InvalidInput`]; an unreachable server,
    /// refused credentials or a schema that cannot be created is [`Error::Backend`] within the
    /// call timeout.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::connect("postgresql://app:secret@db:5432/app").await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Options: schema, pool size, call timeout, release notices, migration, cleanup.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::builder("postgres://app@db/app").schema("locks").connect().await?;
    /// # let _ = backend;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> PostgresBackendBuilder {
        PostgresBackendBuilder::new(url.into())
    }

    /// The schema this backend uses.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// assert_eq!(backend.schema(), dlock::PostgresBackend::DEFAULT_SCHEMA);
    /// # Ok(()) }
    /// ```
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The SQL that checks a fence inside a transaction, for drivers other than
    /// `tokio-postgres`: `SELECT "<schema>".dlock_check($1, $2)` with `$1` the full key
    /// (`text`) and `$2` the fencing token (`bigint`). It raises SQLSTATE
    /// [`NOT_HELD_SQLSTATE`](Self::NOT_HELD_SQLSTATE) unless the lock is held with that token,
    /// and locks the lease row until the transaction ends (see [`check_fence`](Self::check_fence)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let postgres = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// assert_eq!(postgres.check_sql(), r#"SELECT "dlock".dlock_check($1, $2)"#);
    /// # Ok(()) }
    /// ```
    pub fn check_sql(&self) -> &str {
        &self.inner.statements.check
    }

    /// Make the rest of `transaction` conditional on the lock `key` still being held with
    /// `fencing_token`: an error with SQLSTATE [`NOT_HELD_SQLSTATE`](Self::NOT_HELD_SQLSTATE)
    /// (`DL001`) unless it is, which makes the transaction fail, so nothing it wrote commits.
    ///
    /// `key` is the full key, as stored: the service's prefix followed by the key the lock was
    /// taken with — what [`LockGuard::full_key`](crate::LockGuard::full_key) gives. The transaction must
    /// be on the database the backend uses.
    ///
    /// The check also locks the lease row (`FOR SHARE`) until the transaction ends: no other
    /// owner can take the key before the transaction has committed or rolled back, even if the
    /// lease runs out meanwhile — so a write made after a successful check can never
    /// interleave with the next holder's. The holder's own renewals wait for it too: keep such
    /// transactions shorter than the call timeout, and commit before releasing the lock. In a
    /// `REPEATABLE READ` or `SERIALIZABLE` transaction, check first (before other statements
    /// take the snapshot), or a renewal in between makes the check fail with a serialization
    /// error.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use dlock::tokio_postgres;
    ///
    /// let postgres = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// let service = dlock::LockService::new(postgres.clone());
    /// let (mut client, connection) = tokio_postgres::connect("postgres://app@db/app", tokio_postgres::NoTls).await?;
    /// tokio::spawn(connection);
    ///
    /// let guard = service.lock("account:7").await?;
    /// let txn = client.transaction().await?;
    /// postgres.check_fence(&txn, guard.full_key(), guard.fencing_token()).await?;
    /// txn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 7", &[]).await?;
    /// txn.commit().await?; // commits only if the lock was still ours at the check
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn check_fence(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        key: &str,
        fencing_token: u64,
    ) -> Result<(), tokio_postgres::Error> {
        // Tokens come from a bigint sequence; anything larger is no token of this backend.
        let token = i64::try_from(fencing_token).unwrap_or(-1);
        transaction
            .query_typed(&self.inner.statements.check, &[(&key, Type::TEXT), (&token, Type::INT8)])
            .await
            .map(drop)
    }

    /// Whether `err` says a [`check_fence`](Self::check_fence) (or `dlock_check`) found the
    /// lock not held with the token.
    ///
    /// ```
    /// # fn handle(err: &dlock::tokio_postgres::Error) {
    /// if dlock::PostgresBackend::is_not_held(err) {
    ///     // the lease ended or another holder took the lock: nothing was written
    /// }
    /// # }
    /// ```
    pub fn is_not_held(err: &tokio_postgres::Error) -> bool {
        err.code().is_some_and(|code| code.code() == errors::NOT_HELD)
    }

    /// Remove the rows that have been free (released, or expired) for longer than `after` from
    /// the lease table now, and return how many went: `Duration::ZERO` removes every free row,
    /// a retention longer than any row has existed removes none. The backend does this on its
    /// own every so often (see [`cleanup_after`](PostgresBackendBuilder::cleanup_after));
    /// fencing tokens keep increasing across it.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// let removed = backend.cleanup(std::time::Duration::from_secs(60)).await?;
    /// println!("removed {removed} rows free for over a minute");
    /// # Ok(()) }
    /// ```
    pub async fn cleanup(&self, after: Duration) -> Result<u64, Error> {
        self.inner.clean_up(after).await.map_err(backend_error)
    }

    /// How many channels this backend's listener listens to (or is about to): zero once no
    /// task of the process waits.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// assert_eq!(backend.listening_channels(), 0, "nobody waits yet");
    /// # Ok(()) }
    /// ```
    pub fn listening_channels(&self) -> usize {
        self.inner.listener.as_ref().map_or(0, Listener::channel_count)
    }

    /// How many connections the pools hold now (over all runtimes), not counting the listener.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let backend = dlock::PostgresBackend::connect("postgres://app@db/app").await?;
    /// assert!(backend.pool_connections() >= 1, "connect checked the schema on one");
    /// # Ok(()) }
    /// ```
    pub fn pool_connections(&self) -> usize {
        self.inner.pool.size()
    }
}

impl Inner {
    async fn clean_up(&self, after: Duration) -> Result<u64, BackendError> {
        let after = retention_micros(after);
        let mut removed = 0;
        loop {
            let rows = self
                .pool
                .query("the cleanup statement", &self.statements.cleanup, &[(&after, Type::INT8)])
                .await?;
            removed += rows.len() as u64;
            if (rows.len() as i64) < sql::CLEANUP_BATCH {
                return Ok(removed);
            }
        }
    }
}

/// Remove old free rows every so often, for as long as the backend lives, each time on a
/// connection of its own that is closed afterwards (the backend's runtime keeps no pool: a
/// connection left idle between two cleanups would cost the server a session for nothing).
async fn clean_up_periodically(inner: Weak<Inner>, after: Duration) {
    let period = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let jitter = Duration::from_millis(rand::random::<u64>() % (period.as_millis() as u64 / 4 + 1));
        tokio::time::sleep(period + jitter).await;
        let Some(inner) = inner.upgrade() else { return };
        let cleaning = async {
            let (client, connection) = inner.pool.config().connect(tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let after = retention_micros(after);
            loop {
                let rows = client.query_typed(&inner.statements.cleanup, &[(&after, Type::INT8)]).await?;
                if (rows.len() as i64) < sql::CLEANUP_BATCH {
                    break;
                }
            }
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        };
        // Connecting and a few batches; what is left waits for the next round.
        match tokio::time::timeout(inner.call_timeout.saturating_mul(10), cleaning).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(target: "dlock", error = %err, "cleaning up the lease table failed; trying again later")
            }
            Err(_) => {
                tracing::debug!(target: "dlock", "cleaning up the lease table timed out; trying again later")
            }
        }
    }
}

impl LockBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn check_key(&self, key: &FullKey) -> Result<(), String> {
        if key.contains('\0') {
            return Err("it contains a NUL character, which PostgreSQL text cannot hold".into());
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "it is {} bytes long (prefix included) and the PostgreSQL backend stores keys of up to {MAX_KEY_BYTES} bytes (they are the lease table's primary key); shorten it, e.g. by hashing its long part",
                key.len()
            ));
        }
        if self.inner.ascii_keys_only && !key.is_ascii() {
            return Err(format!(
                "it is not ASCII, and the database at {} does not store text as UTF-8; use ASCII keys, or a UTF8 database",
                self.inner.url
            ));
        }
        Ok(())
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            // Ask for a release notice only when one would be heard.
            let notice =
                inner.listener.as_ref().is_some_and(|l| l.is_listening(|| inner.statements.channel(key)));
            let settling = inner.in_flight.begin(key, owner, ttl);
            let ttl = millis(ttl);
            let rows = inner
                .pool
                .query_settling(
                    "the acquire statement",
                    &inner.statements.acquire,
                    &[
                        (&key.as_str(), Type::TEXT),
                        (&owner, Type::TEXT),
                        (&ttl, Type::INT8),
                        (&notice, Type::BOOL),
                    ],
                    Some(settling),
                )
                .await?;
            let row = rows.first().ok_or_else(|| inner.unexpected("the acquire statement"))?;
            let token: Option<i64> = row.try_get(0).map_err(|_| inner.unexpected("the acquire statement"))?;
            let remaining: i64 = row.try_get(1).map_err(|_| inner.unexpected("the acquire statement"))?;
            Ok(match token {
                Some(token) => TryAcquire::Acquired { fencing_token: u64::try_from(token).unwrap_or(0) },
                None => TryAcquire::Held {
                    remaining: Some(Duration::from_millis(u64::try_from(remaining).unwrap_or(0))),
                    newest_token: None,
                },
            })
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            // An acquisition of this owner's that its caller gave up on may still commit: this
            // release waits for it (a call timeout at most), and also goes behind it on its
            // connection (see `in_flight`).
            inner.in_flight.before_release(key, owner, inner.call_timeout).await;
            let rows = inner
                .pool
                .query(
                    "the release statement",
                    &inner.statements.release,
                    &[(&key.as_str(), Type::TEXT), (&owner, Type::TEXT)],
                )
                .await?;
            Ok(match rows.first() {
                None => ReleaseOutcome::new(false),
                Some(row) => ReleaseOutcome::new(true).with_others_waiting(row.try_get(0).unwrap_or(false)),
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let ttl = millis(ttl);
            let rows = inner
                .pool
                .query(
                    "the renew statement",
                    &inner.statements.renew,
                    &[(&key.as_str(), Type::TEXT), (&owner, Type::TEXT), (&ttl, Type::INT8)],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            match &inner.listener {
                Some(listener) => Ok(Some(
                    listener
                        .watch(inner.statements.channel(key), inner.call_timeout.min(CONFIRMATION_WAIT))
                        .await,
                )),
                None => Ok(None),
            }
        })
    }
}

impl Inner {
    /// An answer no statement of this version gives.
    fn unexpected(&self, what: &str) -> BackendError {
        BackendError::new(
            BackendErrorKind::Other,
            format!(
                "PostgreSQL at {} answered {what} in a way this version of dlock does not expect; do processes running different dlock versions share schema `{}`?",
                self.url, self.schema
            ),
        )
    }
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &self.inner.url)
            .field("schema", &self.inner.schema)
            .field("call_timeout", &self.inner.call_timeout)
            .field("pool", &self.inner.pool)
            .field("listening", &self.inner.listener.is_some())
            .finish_non_exhaustive()
    }
}

fn backend_error(source: BackendError) -> Error {
    Error::Backend { key: None, backend: "postgres", source }
}

/// A lease length for SQL: whole milliseconds, at least one (lengths are checked against
/// `MIN_TTL` and `MAX_TTL` before they get here).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The longest retention the cleanup statement is given: a thousand years, far past the
/// oldest row and far inside what the server's timestamp arithmetic can take.
const MAX_RETENTION: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// A cleanup retention for SQL: exact microseconds (zero stays zero: a row released a moment
/// ago is free for longer than that), capped at [`MAX_RETENTION`].
fn retention_micros(after: Duration) -> i64 {
    i64::try_from(after.min(MAX_RETENTION).as_micros()).unwrap_or(i64::MAX)
}
