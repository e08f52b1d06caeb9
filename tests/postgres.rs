//! The PostgreSQL backend against real servers.
//!
//! - On the machine's shared server (`postgres://postgres@127.0.0.1:5432/test`, or
//!   `DLOCK_TEST_POSTGRES_URL`), each test in a schema of its own (`dlock_t_<test>_<pid>_<random>`,
//!   dropped at the end, also on panic): the statements' semantics (no revived lease, owner
//!   checks, tokens across cleanup), the schema (concurrent first use, versions, explicit
//!   migration), release notices (sent only when someone waits, long keys), key checks, fenced
//!   writes in the application's transaction, a backend outliving the runtime that made it,
//!   several processes contending; acquisitions whose caller gave up that run late (held up on
//!   their way through a `BlackHoleProxy`, or deaf to their cancel, also when the runtime they
//!   were sent from ends right after) and must not outlive their owner's release.
//! - On a private server (`initdb` + `pg_ctl` from `/usr/lib/postgresql/*/bin`, on a free port
//!   in a temp dir, run as the `postgres` user when the test runs as root; removed on drop):
//!   pool and listening connections killed with `pg_terminate_backend`, a statement stuck
//!   behind a row lock, the server stopped and restarted under load, a wrong password; and
//!   PgBouncer (transaction mode) in front of it, when `pgbouncer` is installed.
//! - The whole conformance suite (`dlock_tests::conformance_suite!`) on the shared server, through
//!   [`PostgresStore`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dlock::backend::{BackendErrorKind, BoxFuture, FullKey, LockBackend, TryAcquire};
use dlock::tokio_postgres::{self, NoTls};
use dlock::{Error, LockService, LostReason, PostgresBackend};
use dlock_tests::support::process::worker_job;
use dlock_tests::support::runtime::runtime;
use dlock_tests::{BlackHoleProxy, Features, MARGIN, Store, Worker, chain, free_port, poll_until};

async fn postgres_store(test_name: &str) -> PostgresStore {
    PostgresStore::shared(test_name).await
}

dlock_tests::conformance_suite!(postgres_store);

// ---------------------------------------------------------------------------------------------
// Harness.

/// The machine's shared PostgreSQL (`DLOCK_TEST_POSTGRES_URL`, default the `test` database on
/// 127.0.0.1:5432 as `postgres`).
fn shared_url() -> String {
    std::env::var("DLOCK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test run uses: `dlock_t_<test>_<pid>_<random>`, within 63 bytes.
fn unique_schema(test_name: &str) -> String {
    let tail = format!("_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let head: String = test_name.chars().take(63 - 8 - tail.len()).collect();
    format!("dlock_t_{head}{tail}")
}

/// A plain connection for inspecting and changing what the backend stores.
async fn inspector(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .unwrap_or_else(|_| {
                panic!("connecting to {url} for inspection timed out; is PostgreSQL running?")
            })
            .unwrap_or_else(|err| {
                panic!("connecting to {url} for inspection: {err}; is PostgreSQL running?")
            });
    tokio::spawn(connection);
    client
}

/// Drops the schema when the test ends, also on panic (with `psql`, which works outside a
/// runtime).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([self.url.as_str(), "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One test's lock store on a PostgreSQL server: a schema of its own. It makes independent
/// clients ("processes": each a backend with its own pool and listener) and inspects the
/// lease table.
pub struct PostgresStore {
    url: String,
    schema: String,
    prefix: String,
    call_timeout: Duration,
    conn: tokio_postgres::Client,
    _drop: DropSchema,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("url", &self.url).field("schema", &self.schema).finish()
    }
}

impl PostgresStore {
    /// A schema of its own on the shared server.
    pub async fn shared(test_name: &str) -> Self {
        Self::on(&shared_url(), test_name, PostgresBackend::DEFAULT_CALL_TIMEOUT).await
    }

    async fn on(url: &str, test_name: &str, call_timeout: Duration) -> Self {
        let schema = unique_schema(test_name);
        Self {
            url: url.to_owned(),
            prefix: format!("{test_name}:lock:"),
            call_timeout,
            conn: inspector(url).await,
            _drop: DropSchema { url: url.to_owned(), schema: schema.clone() },
            schema,
        }
    }

    fn builder(&self) -> dlock::PostgresBackendBuilder {
        PostgresBackend::builder(self.url.as_str())
            .schema(self.schema.as_str())
            .call_timeout(self.call_timeout)
    }

    /// A new client: its own pool and listening connection.
    async fn backend(&self) -> PostgresBackend {
        self.builder().connect().await.unwrap_or_else(|err| panic!("connecting to {}: {err}", self.url))
    }

    /// The row of `key` (unprefixed): owner, token, whether the lease is live.
    async fn row(&self, key: &str) -> Option<(Option<String>, i64, bool)> {
        let rows = self
            .conn
            .query(
                &format!(
                    "SELECT owner, token, expires_at > clock_timestamp() FROM \"{}\".dlock_locks WHERE key = $1",
                    self.schema
                ),
                &[&self.full_key(key).as_str()],
            )
            .await
            .unwrap_or_else(|err| panic!("reading the row of {key}: {err}"));
        rows.first().map(|row| (row.get(0), row.get(1), row.get(2)))
    }

    /// Run one statement; panic if it fails.
    async fn sql(&self, statement: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
        self.conn.execute(statement, params).await.unwrap_or_else(|err| panic!("{statement}: {err}"))
    }

    /// Count the release statements that run (an `UPDATE` with `SET owner = NULL`), whether or
    /// not they free a row: see [`releases_run`](Self::releases_run).
    async fn log_releases(&self) {
        let schema = &self.schema;
        self.sql(&format!("CREATE TABLE \"{schema}\".release_log (at timestamptz)"), &[]).await;
        self.sql(
            &format!(
                "CREATE FUNCTION \"{schema}\".log_release() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF current_query() LIKE 'UPDATE%SET owner = NULL%' THEN \
                 INSERT INTO \"{schema}\".release_log VALUES (clock_timestamp()); END IF; \
                 RETURN NULL; END $$"
            ),
            &[],
        )
        .await;
        self.sql(
            &format!(
                "CREATE TRIGGER log_release AFTER UPDATE ON \"{schema}\".dlock_locks FOR EACH STATEMENT \
                 EXECUTE FUNCTION \"{schema}\".log_release()"
            ),
            &[],
        )
        .await;
    }

    /// How many release statements ran since [`log_releases`](Self::log_releases).
    async fn releases_run(&self) -> i64 {
        let count = format!("SELECT count(*) FROM \"{}\".release_log", self.schema);
        self.conn.query_one(&count, &[]).await.unwrap_or_else(|err| panic!("{count}: {err}")).get(0)
    }

    /// Make inserting the row of a key ending in `:slow` take `ms` milliseconds before it
    /// touches the table, ignoring cancels (a statement the cancel dlock sends does not stop);
    /// with `first_only`, only the first such insert.
    async fn slow_inserts(&self, ms: u64, first_only: bool) {
        let schema = &self.schema;
        self.sql(&format!("CREATE SEQUENCE \"{schema}\".slow_inserts"), &[]).await;
        let first_only =
            if first_only { format!("nextval('\"{schema}\".slow_inserts') = 1") } else { "true".into() };
        self.sql(
            &format!(
                "CREATE FUNCTION \"{schema}\".slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 DECLARE done_at timestamptz := clock_timestamp() + interval '{ms} milliseconds'; BEGIN \
                 IF {first_only} THEN \
                 WHILE clock_timestamp() < done_at LOOP \
                 BEGIN PERFORM pg_sleep(0.01); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; \
                 END IF; RETURN NEW; END $$"
            ),
            &[],
        )
        .await;
        self.sql(
            &format!(
                "CREATE TRIGGER slow_insert BEFORE INSERT ON \"{schema}\".dlock_locks FOR EACH ROW \
                 WHEN (NEW.key LIKE '%:slow') EXECUTE FUNCTION \"{schema}\".slow_insert()"
            ),
            &[],
        )
        .await;
    }
}

impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>> {
        Box::pin(async move { Arc::new(self.backend().await) as Arc<dyn LockBackend> })
    }

    /// A row with an owner and a lease that has not ended, by the server's clock.
    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { matches!(self.row(key).await, Some((Some(_), _, true))) })
    }

    /// An operator's `DELETE` of the row.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let statement =
                format!("DELETE FROM \"{}\".dlock_locks WHERE key = $1 AND owner IS NOT NULL", self.schema);
            assert_eq!(self.sql(&statement, &[&self.full_key(key).as_str()]).await, 1, "{key} was not held");
        })
    }

    fn features(&self) -> Features {
        Features { release_notices: true, ..Features::default() }
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema), &[]).await;
        })
    }

    fn owner<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Option<String>>> {
        Box::pin(async move {
            Some(match self.row(key).await {
                Some((owner, _, true)) => owner,
                _ => None,
            })
        })
    }

    fn held_keys(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        Box::pin(async move {
            let rows = self
                .conn
                .query(
                    &format!(
                        "SELECT key FROM \"{}\".dlock_locks WHERE owner IS NOT NULL AND expires_at > clock_timestamp() \
                         AND starts_with(key, $1) ORDER BY key",
                        self.schema
                    ),
                    &[&self.prefix],
                )
                .await
                // Before the first client, the schema does not exist yet: nothing is held.
                .unwrap_or_default();
            Some(rows.iter().map(|row| row.get(0)).collect())
        })
    }
}

fn acquired(outcome: TryAcquire, what: &str) -> u64 {
    match outcome {
        TryAcquire::Acquired { fencing_token } => fencing_token,
        held => panic!("{what}: expected Acquired, got {held:?}"),
    }
}

/// A backend that counts acquire attempts (to show waiting does not poll).
#[derive(Debug)]
struct CountingAcquires {
    inner: PostgresBackend,
    attempts: Arc<AtomicUsize>,
}

impl LockBackend for CountingAcquires {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> dlock::backend::BoxFuture<'a, Result<TryAcquire, dlock::backend::BackendError>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.try_acquire(key, owner, ttl)
    }
    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> dlock::backend::BoxFuture<'a, Result<dlock::backend::ReleaseOutcome, dlock::backend::BackendError>>
    {
        self.inner.release(key, owner)
    }
    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> dlock::backend::BoxFuture<'a, Result<bool, dlock::backend::BackendError>> {
        self.inner.renew(key, owner, ttl)
    }
    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> dlock::backend::BoxFuture<
        'a,
        Result<Option<dlock::backend::ReleaseWatch>, dlock::backend::BackendError>,
    > {
        self.inner.watch_releases(key)
    }
}

// ---------------------------------------------------------------------------------------------
// The statements.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_renew_release_keep_the_row_and_report_the_lease() {
    let store = PostgresStore::shared("statements").await;
    let backend = store.backend().await;
    let key = store.full_key("k");
    let ttl = Duration::from_secs(5);

    let t1 = acquired(backend.try_acquire(&key, "owner-a", ttl).await.expect("acquire"), "a free key");
    assert!(t1 > 0);
    assert_eq!(store.row("k").await, Some((Some("owner-a".into()), t1 as i64, true)));
    match backend.try_acquire(&key, "owner-b", ttl).await.expect("acquire") {
        TryAcquire::Held { remaining: Some(left), newest_token: None } => {
            assert!(left <= ttl && left > ttl - Duration::from_secs(1), "remaining {left:?} of a 5 s lease")
        }
        other => panic!("a held key: {other:?}"),
    }
    assert!(!backend.renew(&key, "owner-b", ttl).await.expect("renew"), "another owner cannot renew");
    assert!(!backend.release(&key, "owner-b").await.expect("release").was_held, "nor release");
    assert!(store.is_held("k").await);
    assert!(backend.renew(&key, "owner-a", ttl).await.expect("renew"));
    // The same owner asking again (its earlier answer was lost) gets the key with a new token.
    let t2 = acquired(backend.try_acquire(&key, "owner-a", ttl).await.expect("acquire"), "its own key");
    assert!(t2 > t1);
    let outcome = backend.release(&key, "owner-a").await.expect("release");
    assert!(outcome.was_held && !outcome.others_waiting, "{outcome:?}");
    // Released: the row stays, free, with its token.
    assert_eq!(store.row("k").await, Some((None, t2 as i64, false)));
    assert!(!backend.release(&key, "owner-a").await.expect("release").was_held, "a second release");
    let t3 = acquired(backend.try_acquire(&key, "owner-b", ttl).await.expect("acquire"), "a released key");
    assert!(t3 > t2);
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_never_renewed_or_released_and_goes_to_the_next_owner() {
    let store = PostgresStore::shared("expired").await;
    let backend = store.backend().await;
    let key = store.full_key("k");
    let t1 =
        acquired(backend.try_acquire(&key, "a", Duration::from_millis(50)).await.expect("acquire"), "free");
    poll_until(Duration::from_secs(2), "the lease expires on the server's clock", || async {
        matches!(store.row("k").await, Some((Some(_), _, false)))
    })
    .await;
    assert!(
        !backend.renew(&key, "a", Duration::from_secs(10)).await.expect("renew"),
        "renew revived an expired lease"
    );
    assert!(matches!(store.row("k").await, Some((Some(_), _, false))), "the row is untouched");
    assert!(!backend.release(&key, "a").await.expect("release").was_held);
    let t2 =
        acquired(backend.try_acquire(&key, "b", Duration::from_secs(10)).await.expect("acquire"), "expired");
    assert!(t2 > t1);
    assert!(!backend.renew(&key, "a", Duration::from_secs(10)).await.expect("renew"));
    assert!(!backend.release(&key, "a").await.expect("release").was_held);
    assert_eq!(store.row("k").await, Some((Some("b".into()), t2 as i64, true)), "b's lease is intact");
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_when_cleanup_removes_rows() {
    let store = PostgresStore::shared("cleanup").await;
    let backend = store.backend().await;
    let ttl = Duration::from_secs(5);
    let mut last = 0;
    for round in 0..3 {
        for key in ["a", "b"] {
            let key = store.full_key(key);
            let token = acquired(backend.try_acquire(&key, "o", ttl).await.expect("acquire"), "free");
            assert!(token > last, "round {round}: token {token} after {last}");
            last = token;
            assert!(backend.release(&key, "o").await.expect("release").was_held);
        }
        // A held key is never removed; free ones are.
        let held = store.full_key("held");
        acquired(backend.try_acquire(&held, "h", ttl).await.expect("acquire"), "held");
        let removed = backend.cleanup(Duration::ZERO).await.expect("cleanup");
        if removed != 2 {
            let rows = store
                .conn
                .query(
                    &format!(
                        "SELECT key, owner, token::text, expires_at::text, waiting_until::text, clock_timestamp()::text, xmin::text, xmax::text \
                         FROM \"{}\".dlock_locks ORDER BY key",
                        store.schema
                    ),
                    &[],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|row| {
                            (0..8).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect::<Vec<_>>().join(" | ")
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_else(|err| vec![format!("{err}")]);
            panic!("round {round}: cleanup removed {removed} rows, not 2; the table now: {rows:#?}");
        }
        assert!(store.row("a").await.is_none() && store.row("b").await.is_none());
        assert!(store.is_held("held").await);
        assert!(backend.release(&held, "h").await.expect("release").was_held);
    }
    store.cleanup().await;
}

/// `cleanup(after)` measures "free for longer than `after`" to the microsecond: with zero,
/// a row released a moment ago goes too (it was read as at least a millisecond, so a
/// cleanup right after a release kept the row about one time in four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_with_no_retention_removes_a_row_released_a_moment_ago() {
    let store = PostgresStore::shared("cleanup_now").await;
    let backend = store.backend().await;
    let key = store.full_key("k");
    for round in 0..40 {
        acquired(backend.try_acquire(&key, "o", Duration::from_secs(5)).await.expect("acquire"), "free");
        assert!(backend.release(&key, "o").await.expect("release").was_held);
        let removed = backend.cleanup(Duration::ZERO).await.expect("cleanup");
        assert_eq!(removed, 1, "round {round}: the released row was kept");
        assert!(store.row("k").await.is_none(), "round {round}");
    }
    store.cleanup().await;
}

/// A retention longer than any row can have been free (up to `Duration::MAX`) keeps every
/// row, instead of overflowing the server's interval arithmetic into an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_with_an_enormous_retention_keeps_every_row() {
    let store = PostgresStore::shared("cleanup_never").await;
    let backend = store.backend().await;
    let key = store.full_key("k");
    acquired(backend.try_acquire(&key, "o", Duration::from_secs(5)).await.expect("acquire"), "free");
    assert!(backend.release(&key, "o").await.expect("release").was_held);
    let ancient =
        format!("UPDATE \"{}\".dlock_locks SET expires_at = '1970-01-01' WHERE key = $1", store.schema);
    assert_eq!(store.sql(&ancient, &[&key.as_str()]).await, 1);
    for after in [Duration::from_secs(200 * 365 * 24 * 3600), Duration::from_secs(u64::MAX), Duration::MAX] {
        assert_eq!(backend.cleanup(after).await.expect("cleanup"), 0, "after {after:?}");
    }
    assert_eq!(
        backend.cleanup(Duration::from_secs(3600)).await.expect("cleanup"),
        1,
        "a row free since 1970"
    );
    store.cleanup().await;
}

/// A call that ran out of time waiting for a pooled connection says so; before, it said its
/// statement "was cancelled", which sent the reader looking for a slow statement.
#[tokio::test(flavor = "current_thread")]
async fn a_call_that_waited_for_a_pooled_connection_says_so_when_it_times_out() {
    let store = PostgresStore::shared("pool_wait").await;
    let backend = store
        .builder()
        .pool_size(1)
        .call_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let ttl = Duration::from_secs(10);
    let (held, other) = (store.full_key("held"), store.full_key("other"));
    acquired(backend.try_acquire(&held, "o", ttl).await.expect("acquire"), "free");
    // Another transaction locks the row: an acquire of `held` waits on it, on the only pooled
    // connection, and `other` waits for that connection.
    let (mut client, connection) = tokio_postgres::connect(&store.url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    let txn = client.transaction().await.expect("begin");
    let lock_row = format!("SELECT 1 FROM \"{}\".dlock_locks WHERE key = $1 FOR UPDATE", store.schema);
    assert_eq!(txn.execute(&lock_row, &[&held.as_str()]).await.expect("lock the row"), 1);
    // Spawned in this order on this one thread: the first takes the connection.
    let first = tokio::spawn({
        let (backend, held) = (backend.clone(), held.clone());
        async move { backend.try_acquire(&held, "p", ttl).await }
    });
    let second = tokio::spawn({
        let backend = backend.clone();
        async move { backend.try_acquire(&other, "p", ttl).await }
    });
    let (first, second) = (first.await.expect("join"), second.await.expect("join"));
    // Let go of the row before anything can fail: the cancelled statement's cleanup waits on it.
    txn.rollback().await.expect("rollback");
    store.cleanup().await;
    let first = first.expect_err("blocked behind the row lock");
    assert_eq!(first.kind(), BackendErrorKind::Timeout, "{first}");
    assert!(first.to_string().contains("the statement was cancelled"), "{first}");
    let second = second.expect_err("no connection came free in time");
    assert_eq!(second.kind(), BackendErrorKind::Timeout, "{second}");
    assert!(second.to_string().contains("came free"), "{second}");
    assert!(!second.to_string().contains("cancelled"), "{second}");
}

/// With `cleanup_after`, each backend removes old free rows by itself, on a connection it
/// closes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_cleanup_removes_free_rows_and_keeps_no_connection() {
    let store = PostgresStore::shared("auto_cleanup").await;
    let app_name = format!("dlock_cl_{:08x}", rand::random::<u32>());
    let url = format!("{}?application_name={app_name}", store.url);
    // Rows free for any time at all go; the cleanup runs about every second.
    let backend = PostgresBackend::builder(url)
        .schema(store.schema.as_str())
        .cleanup_after(Some(Duration::ZERO))
        .connect()
        .await
        .expect("connect");
    let (free, held) = (store.full_key("free"), store.full_key("held"));
    acquired(backend.try_acquire(&free, "o", Duration::from_secs(10)).await.expect("acquire"), "free");
    assert!(backend.release(&free, "o").await.expect("release").was_held);
    acquired(backend.try_acquire(&held, "o", Duration::from_secs(10)).await.expect("acquire"), "free");
    let pooled = pids(&store.conn, &app_name).await;
    poll_until(Duration::from_secs(5), "the released row is removed", || async {
        store.row("free").await.is_none()
    })
    .await;
    assert!(store.is_held("held").await, "a held row stays");
    poll_until(Duration::from_secs(5), "the cleanup's connection is closed again", || async {
        pids(&store.conn, &app_name).await == pooled
    })
    .await;
    store.cleanup().await;
}

/// A call timeout meant as "no bound" (`Duration::MAX`) connects, locks, and lets the background
/// cleanup run. Before, the cleanup's own bound (ten call timeouts) overflowed: its task
/// panicked and no row was ever removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_call_timeout_connects_locks_and_cleans_up() {
    let store = PostgresStore::shared("huge_timeout").await;
    let backend = store
        .builder()
        .call_timeout(Duration::MAX)
        .cleanup_after(Some(Duration::ZERO))
        .connect()
        .await
        .expect("connect with an enormous call timeout");
    let key = store.full_key("k");
    acquired(backend.try_acquire(&key, "o", Duration::from_secs(10)).await.expect("acquire"), "free");
    assert!(backend.release(&key, "o").await.expect("release").was_held);
    poll_until(Duration::from_secs(5), "the released row is removed by the background cleanup", || async {
        store.row("k").await.is_none()
    })
    .await;
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The schema.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_starting_together_create_the_schema_once() {
    let store = PostgresStore::shared("first_use").await;
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let builder = store.builder().call_timeout(Duration::from_secs(10));
            tokio::spawn(async move { builder.connect().await })
        })
        .collect();
    for connect in connects {
        connect.await.expect("no panic").expect("every concurrent first use succeeds");
    }
    let rows = store
        .conn
        .query(&format!("SELECT version, compatible FROM \"{}\".dlock_version", store.schema), &[])
        .await
        .expect("the version table exists");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].get::<_, i32>(0), rows[0].get::<_, i32>(1)), (1, 1));
    // Idempotent: migrating again finds version 1 and changes nothing.
    assert_eq!(store.builder().migrate().await.expect("migrate"), 1);
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_connect_a_missing_schema_says_to_migrate() {
    let store = PostgresStore::shared("no_migrate").await;
    let err = store.builder().migrate_on_connect(false).connect().await.expect_err("the schema is missing");
    let text = chain(&err);
    assert!(text.contains("missing") && text.contains("migrate()"), "{text}");
    assert_eq!(store.builder().migrate().await.expect("an explicit migration"), 0, "nothing was there");
    let backend = store.builder().migrate_on_connect(false).connect().await.expect("migrated");
    acquired(
        backend.try_acquire(&store.full_key("k"), "o", Duration::from_secs(1)).await.expect("acquire"),
        "free",
    );

    // A schema made by a newer, incompatible dlock is refused with a remedy.
    store
        .sql(&format!("UPDATE \"{}\".dlock_version SET version = 9, compatible = 9", store.schema), &[])
        .await;
    let err = store.builder().connect().await.expect_err("an incompatible schema");
    assert!(chain(&err).contains("upgrade dlock"), "{err}");
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Keys.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_work_with_notices_and_keys_it_cannot_store_are_rejected_up_front() {
    let store = PostgresStore::shared("long_keys").await;
    // Random hex does not compress: the key really takes MAX_KEY_BYTES in the index.
    let room = PostgresBackend::MAX_KEY_BYTES - store.prefix().len();
    let long: String =
        (0..room).map(|_| char::from(b"0123456789abcdef"[rand::random::<u32>() as usize % 16])).collect();
    let (holder, waiter) = (store.service().await, store.service().await);
    let guard = holder.lock(&long).ttl(Duration::from_secs(10)).await.expect("a 2048-byte key");
    let waiting = tokio::spawn({
        let long = long.clone();
        async move { waiter.lock(&long).wait(Duration::from_secs(10)).await.map(|g| (g, Instant::now())) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    assert!(guard.release().await.expect("release"));
    let (next, got_in) = waiting.await.expect("no panic").expect("the waiter gets the long key");
    assert!(got_in - released < MARGIN, "woken {:?} after the release: no notice?", got_in - released);
    next.release().await.expect("release");

    let too_long = format!("{long}x");
    for (key, says) in [(too_long.as_str(), "2048 bytes"), ("nul\0key", "NUL")] {
        match holder.lock(key).await {
            Err(Error::InvalidInput { what: "key", reason }) => assert!(reason.contains(says), "{reason}"),
            other => panic!("{key:.20}…: expected InvalidInput, got {other:?}"),
        }
    }
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Waiting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_notify_and_a_release_notifies_only_when_someone_waits() {
    let store = PostgresStore::shared("notify").await;
    let holder = store.backend().await;
    let key = store.full_key("k");
    let ttl = Duration::from_secs(10);

    // Nobody waits: no NOTIFY.
    acquired(holder.try_acquire(&key, "h", ttl).await.expect("acquire"), "free");
    let quiet = holder.release(&key, "h").await.expect("release");
    assert!(quiet.was_held && !quiet.others_waiting, "{quiet:?}");

    // A waiter in another "process" waits through a 1.5 s hold asking a handful of times.
    let attempts = Arc::new(AtomicUsize::new(0));
    let waiter_pg = store.backend().await;
    let waiter_backend = CountingAcquires { inner: waiter_pg.clone(), attempts: Arc::clone(&attempts) };
    let waiter_service = LockService::builder(waiter_backend).key_prefix(store.prefix()).build();
    acquired(holder.try_acquire(&key, "h", ttl).await.expect("acquire"), "free");
    let waiting = tokio::spawn(async move {
        let guard = waiter_service.lock("k").ttl(ttl).wait(Duration::from_secs(10)).await;
        (guard, Instant::now(), waiter_service)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished());
    let released = Instant::now();
    let outcome = holder.release(&key, "h").await.expect("release");
    assert!(outcome.was_held && outcome.others_waiting, "the release saw the waiter: {outcome:?}");
    let (guard, got_in, _waiter_service) = waiting.await.expect("no panic");
    let guard = guard.expect("the waiter gets the key");
    let woken = got_in - released;
    assert!(woken < MARGIN, "the waiter got in {woken:?} after the release");
    let asked = attempts.load(Ordering::SeqCst);
    // First attempt, again once listening, about one per WAITER_RECHECK (1 s), the winning one.
    assert!(asked <= 5, "{asked} attempts in 1.5 s: the waiter polled");
    guard.release().await.expect("release");
    assert_eq!(waiter_pg.listening_channels(), 0, "the channel goes with the last waiter");
    store.cleanup().await;
}

/// A waiter whose release notices cannot be heard (its listening server, `listen_url`, is
/// unreachable) asks as often as one without a listener, and gets a released key at once.
/// Before, it stood in its registration for the whole call timeout (10 s here), then asked
/// once a second, though no notice could come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_listening_server_is_unreachable_polls_for_the_key() {
    let store = PostgresStore::shared("deaf").await;
    let holder = store.backend().await;
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let waiter_pg = store
        .builder()
        .call_timeout(Duration::from_secs(10))
        .listen_url(nowhere)
        .connect()
        .await
        .expect("statements go to the server; only the listener is unreachable");
    let waiter = LockService::builder(waiter_pg.clone()).key_prefix(store.prefix()).build();
    let key = store.full_key("k");
    acquired(holder.try_acquire(&key, "h", Duration::from_secs(30)).await.expect("acquire"), "free");
    let waiting = tokio::spawn(async move {
        let guard = waiter.lock("k").wait(Duration::from_secs(30)).await;
        (guard, Instant::now())
    });
    poll_until(Duration::from_secs(5), "the waiter registers for notices", || async {
        waiter_pg.listening_channels() == 1
    })
    .await;
    let released = Instant::now();
    assert!(holder.release(&key, "h").await.expect("release").was_held);
    let (guard, got_in) = waiting.await.expect("no panic");
    let guard = guard.expect("the waiter gets the released key");
    let after = got_in - released;
    assert!(after < MARGIN * 2, "the waiter got in {after:?} after the release");
    assert!(guard.release().await.expect("release"));
    store.cleanup().await;
}

/// A lock request dropped while its acquire statement runs leaves nothing held — also when the
/// cancel dlock sends does not stop that statement (it reached the server before the statement
/// started, or could not be sent) and the statement commits after the request's claim sent its
/// release on another connection. Here a trigger makes the statement take 1 s before it
/// touches the row, and ignores the cancel while it does: long enough for the cancel, sent
/// 100 ms in, to arrive inside it on a loaded machine (a cancel arriving after it would stop
/// the statement, and the test would wait in vain for the late commit; 300 ms was too short
/// under CI's load once the cancel ran on dlock's own runtime). Within the call timeout (2 s),
/// so the release waits for the statement to end.
///
/// Before the fix, the release ran first, found nothing to free, and the acquisition then
/// committed: the key stayed held by nobody for its whole ttl (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_whose_acquisition_commits_late_leaves_nothing_held() {
    let store = PostgresStore::shared("dropped_late").await;
    let service = store.service().await;
    drop(service.lock("warm").await.expect("the first lock makes the schema"));
    store.slow_inserts(1000, false).await;
    let outcome =
        tokio::time::timeout(Duration::from_millis(100), service.lock("slow").ttl(Duration::from_secs(30)))
            .await;
    assert!(outcome.is_err(), "the request was dropped while its statement ran");
    drop(outcome);
    poll_until(Duration::from_secs(5), "the late statement committing", || async {
        store.row("slow").await.is_some()
    })
    .await;
    poll_until(Duration::from_secs(3), "the late acquisition released", || async {
        !store.is_held("slow").await
    })
    .await;
    store.cleanup().await;
}

/// The same with a statement that outlasts the release's wait for it (one call timeout, 500 ms
/// here): the trigger makes it take 1.5 s and ignore the cancel, as a statement stuck behind
/// another transaction's row lock does when its cancel missed. Its owner's release, sent behind
/// it on its connection, frees the key once it commits.
///
/// Before the fix, the release ran after its 500 ms wait, found nothing, and the statement then
/// committed: the key stayed held for its whole ttl (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_whose_acquisition_outlasts_the_releases_wait_leaves_nothing_held() {
    let store = PostgresStore::shared("dropped_later").await;
    let backend = store.builder().call_timeout(FAULT_TIMEOUT).connect().await.expect("connect");
    let service = LockService::builder(backend).key_prefix(store.prefix()).build();
    drop_a_request_deaf_to_its_cancel_and_see_the_key_freed(&service, &store).await;
    store.cleanup().await;
}

/// Drop a request for `slow` while its acquisition sits 1.5 s in a trigger that ignores the
/// cancel (longer than the release's wait), and check that the key is free within two call
/// timeouts of the late statement committing: its owner's release ran behind it. Read, not
/// taken: the trigger slows every acquisition of the key.
async fn drop_a_request_deaf_to_its_cancel_and_see_the_key_freed(
    service: &LockService,
    store: &PostgresStore,
) {
    store.slow_inserts(1500, false).await;
    let outcome =
        tokio::time::timeout(Duration::from_millis(100), service.lock("slow").ttl(Duration::from_secs(30)))
            .await;
    assert!(outcome.is_err(), "the request was dropped while its statement ran");
    drop(outcome);
    poll_until(Duration::from_secs(5), "the late statement committing", || async {
        store.row("slow").await.is_some()
    })
    .await;
    let deadline = Instant::now() + FAULT_TIMEOUT * 2 + MARGIN;
    while store.is_held("slow").await {
        assert!(
            Instant::now() < deadline,
            "the key stayed held after the request was dropped: row (owner, token, live) {:?}",
            store.row("slow").await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backend on the shared server through a proxy whose connections can be made to go silent,
/// with every connection of its pool open (10, filled by concurrent calls), on `store`'s schema.
async fn silenceable_backend(store: &PostgresStore, proxy: &BlackHoleProxy) -> PostgresBackend {
    drop(store.backend().await); // makes the schema
    let backend = PostgresBackend::builder(format!("postgres://postgres@127.0.0.1:{}/test", proxy.port()))
        .schema(store.schema.as_str())
        .call_timeout(Duration::from_millis(500))
        .listen(false)
        .cleanup_after(None)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting through the proxy: {err}"));
    let keys: Vec<FullKey> =
        (0..PostgresBackend::DEFAULT_POOL_SIZE).map(|i| store.full_key(&format!("fill{i}"))).collect();
    let filled = futures_util::future::join_all(
        keys.iter().map(|key| backend.try_acquire(key, "o", Duration::from_secs(30))),
    )
    .await;
    assert!(filled.iter().all(Result::is_ok), "{filled:?}");
    assert_eq!(backend.pool_connections(), PostgresBackend::DEFAULT_POOL_SIZE);
    backend
}

/// Every pooled connection goes silent at once (a NAT or firewall that forgot its flows, an
/// address that moved in a failover) while new connections work: one call gives up at its
/// call timeout, and the next works, on a new connection.
///
/// Before the fix, each call took the next silent connection from the pool and timed out in
/// turn: ten calls failed, for five seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_pooled_connections_cost_one_call() {
    let store = PostgresStore::shared("silent_pool").await;
    let proxy = BlackHoleProxy::start(5432).await;
    let backend = silenceable_backend(&store, &proxy).await;
    proxy.black_hole();
    let key = store.full_key("k");
    let mut failures = Vec::new();
    while backend.try_acquire(&key, "o", Duration::from_secs(5)).await.is_err() {
        failures.push(());
        assert!(failures.len() <= PostgresBackend::DEFAULT_POOL_SIZE, "never recovered");
    }
    assert_eq!(failures.len(), 1, "calls that failed after the pool's connections went silent");
    store.cleanup().await;
}

/// The same seen by a holder: its lease outlives its ttl on renewals through new connections.
/// Before the fix, the keeper's retries each took another silent connection, and the lease was
/// lost although the server answered any new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_its_pooled_connections_going_silent() {
    let store = PostgresStore::shared("silent_lease").await;
    let proxy = BlackHoleProxy::start(5432).await;
    let backend = silenceable_backend(&store, &proxy).await;
    let service = LockService::builder(backend).key_prefix(store.prefix()).build();
    let ttl = Duration::from_secs(3);
    let guard = service.lock("k").ttl(ttl).await.expect("lock");
    proxy.black_hole();
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert!(!guard.is_lost(), "the lease was lost");
    assert!(store.is_held("k").await, "the lease is live on the server past its first ttl");
    assert!(guard.release().await.expect("release"));
    store.cleanup().await;
}

/// A backend dropped leaves no task behind on the runtimes it served (each keeps one that
/// forgets its pool when the runtime ends). Before the fix, that task waited for the runtime's
/// end: one more for every backend made and dropped, such as `connect` retried through an
/// outage.
#[tokio::test(flavor = "current_thread")]
async fn dropped_backends_leave_no_task_behind() {
    let store = PostgresStore::shared("no_tasks_left").await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    // The inspector's connection, which the store keeps.
    let before = tasks();
    for _ in 0..20 {
        drop(store.backend().await);
    }
    poll_until(Duration::from_secs(5), "no task left by 20 dropped backends", || async { tasks() == before })
        .await;
    store.cleanup().await;
}

/// The listening connection going silent (a dead host, a NAT that forgot the flow) is found
/// by its health check and replaced, and a waiter then hears its release over the new one.
/// Before the fix, nothing noticed: the channels stayed "listening" on a connection that
/// would never deliver, until the set of channels changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listening_connection_is_replaced() {
    let store = PostgresStore::shared("silent_listener").await;
    let holder = store.service().await;
    let proxy = BlackHoleProxy::start(5432).await;
    let waiter_backend = store
        .builder()
        .call_timeout(Duration::from_millis(500))
        .listen_url(format!("postgres://postgres@127.0.0.1:{}/test", proxy.port()))
        .connect()
        .await
        .expect("connect");
    let waiter = LockService::builder(waiter_backend.clone()).key_prefix(store.prefix()).build();
    let held = holder.lock("k").ttl(Duration::from_secs(30)).await.expect("lock");
    let waiting = tokio::spawn(async move { waiter.lock("k").wait(Duration::from_secs(30)).await });
    // Its LISTEN is confirmed once it asks for release notices in the lease table.
    let asks_for_notices = format!(
        "SELECT count(*) FROM \"{}\".dlock_locks WHERE key = $1 AND waiting_until > clock_timestamp()",
        store.schema
    );
    let key = store.full_key("k");
    poll_until(Duration::from_secs(5), "the waiter listening", || async {
        let asking: i64 =
            store.conn.query_one(&asks_for_notices, &[&key.as_str()]).await.expect("query").get(0);
        asking == 1 && proxy.accepted() == 1
    })
    .await;
    proxy.black_hole();
    poll_until(Duration::from_secs(5), "a new listening connection", || async { proxy.accepted() == 2 })
        .await;
    held.release().await.expect("release");
    let next = waiting.await.expect("waiter task").expect("the waiter takes the key");
    next.release().await.expect("release");
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Fenced writes in the application's transaction.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_commits_only_while_its_lock_is_held_with_its_token() {
    let store = PostgresStore::shared("fence").await;
    let backend = store.backend().await;
    let service = LockService::builder(backend.clone()).key_prefix(store.prefix()).build();
    let full_key = |key: &str| format!("{}{key}", service.key_prefix());
    let (mut app, connection) = tokio_postgres::connect(&store.url, NoTls).await.expect("app connection");
    tokio::spawn(connection);
    let table = format!("\"{}\".ledger", store.schema);
    store.sql(&format!("CREATE TABLE {table} (writer bigint)"), &[]).await;

    // Held with this token: the write commits.
    let guard = service.lock("account").ttl(Duration::from_millis(300)).renew(false).await.expect("lock");
    let token = guard.fencing_token();
    let txn = app.transaction().await.expect("begin");
    backend.check_fence(&txn, &full_key(guard.key()), token).await.expect("held: the check passes");
    txn.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&(token as i64)]).await.expect("write");
    txn.commit().await.expect("commit");

    // The lease ran out and another owner took the key: the stale holder's write fails.
    assert_eq!(guard.lost().await, LostReason::Expired);
    let next = service.lock("account").ttl(Duration::from_secs(10)).await.expect("the next holder");
    let txn = app.transaction().await.expect("begin");
    let err = backend.check_fence(&txn, &full_key("account"), token).await.expect_err("a stale token");
    assert!(PostgresBackend::is_not_held(&err), "{err:?}");
    let db = err.as_db_error().expect("a server error");
    assert!(db.message().contains("not held with fencing token"), "{}", db.message());
    assert_eq!(db.detail(), Some(format!("it is held with fencing token {}", next.fencing_token()).as_str()));
    drop(txn);
    next.release().await.expect("release");

    // While a transaction that passed the check lives, nobody else can take the key, even
    // once the lease is gone. (Through the SQL other drivers would use.)
    let short = service.lock("account").ttl(Duration::from_millis(300)).renew(false).await.expect("lock");
    let txn = app.transaction().await.expect("begin");
    txn.query(backend.check_sql(), &[&full_key("account"), &(short.fencing_token() as i64)])
        .await
        .expect("current token");
    assert_eq!(short.lost().await, LostReason::Expired);
    poll_until(Duration::from_secs(2), "the lease ends on the server", || async {
        matches!(store.row("account").await, Some((Some(_), _, false)))
    })
    .await;
    let key = store.full_key("account");
    let other = store.builder().call_timeout(Duration::from_millis(300)).connect().await.expect("connect");
    let started = Instant::now();
    let blocked = other.try_acquire(&key, "intruder", Duration::from_secs(10)).await;
    assert!(matches!(&blocked, Err(e) if e.kind() == BackendErrorKind::Timeout), "{blocked:?}");
    assert!(started.elapsed() < Duration::from_millis(300) + MARGIN, "bounded: {:?}", started.elapsed());
    // The timed-out statement is cancelled on the server, not left to run once the row is free.
    poll_until(Duration::from_secs(2), "the blocked statement is cancelled", || async {
        let waiting: i64 = store
            .conn
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()", &[])
            .await
            .expect("pg_stat_activity")
            .get(0);
        waiting == 0
    })
    .await;
    txn.commit().await.expect("commit");
    assert!(
        matches!(store.row("account").await, Some((Some(owner), _, false)) if owner != "intruder"),
        "the cancelled attempt took nothing"
    );
    acquired(other.try_acquire(&key, "intruder", Duration::from_secs(10)).await.expect("acquire"), "expired");

    let rows = app.query(&format!("SELECT writer FROM {table}"), &[]).await.expect("read");
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(),
        [token as i64],
        "only the fenced write"
    );
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Runtimes.

/// The `#[tokio::test]` pattern: one backend made in a runtime, used from another while the
/// first is idle (not being driven), and after the first has ended. Each runtime gets its own
/// pool, so the second runtime's calls never wait on the idle one; the first runtime's
/// connections close with it; the listener, started when the first runtime made the backend,
/// runs on the backend's own thread and still wakes waiters afterwards.
#[test]
fn a_backend_outlives_the_runtime_that_made_it() {
    let current_thread =
        || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let app_name = format!("dlock_rt_{:08x}", rand::random::<u32>());
    let first = current_thread();
    let (store, backend, first_pids) = first.block_on(async {
        let store = PostgresStore::shared("runtimes").await;
        let url = format!("{}?application_name={app_name}", store.url);
        let backend =
            PostgresBackend::builder(url).schema(store.schema.as_str()).connect().await.expect("connect");
        let key = store.full_key("k");
        acquired(backend.try_acquire(&key, "a", Duration::from_secs(5)).await.expect("acquire"), "free");
        assert!(backend.release(&key, "a").await.expect("release").was_held);
        let pids = pids(&store.conn, &app_name).await;
        (store, backend, pids)
    });
    assert_eq!(
        first_pids.len(),
        1,
        "one pooled connection so far (the listener connects when someone waits)"
    );

    // The first runtime still exists but nothing drives it.
    let second = current_thread();
    second.block_on(async {
        let key = FullKey::new("", "idle");
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            backend.try_acquire(&key, "b", Duration::from_secs(5)),
        )
        .await;
        acquired(
            answered.expect("the backend answers while the first runtime idles").expect("acquire"),
            "free",
        );
    });
    drop(first);

    second.block_on(async {
        // The store's inspector connection died with the first runtime: a new one.
        let store = PostgresStore { conn: inspector(&store.url).await, ..store };
        poll_until(Duration::from_secs(5), "the first runtime's connection closes with it", || async {
            let now = pids(&store.conn, &app_name).await;
            !now.contains(&first_pids[0])
        })
        .await;
        // The backend waits; another client holds and releases. The backend's listener was
        // started while the first runtime ran.
        let service = LockService::builder(backend.clone()).key_prefix(store.prefix()).build();
        let holder = store.service().await;
        let guard = holder.lock("k").await.expect("acquire");
        let waiting = tokio::spawn(async move {
            service.lock("k").wait(Duration::from_secs(10)).await.map(|g| (g, Instant::now()))
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        guard.release().await.expect("release");
        let (next, got_in) = waiting.await.expect("no panic").expect("the waiter gets in");
        assert!(
            got_in - released < MARGIN,
            "woken {:?} after the release: the listener is gone?",
            got_in - released
        );
        next.release().await.expect("release");
        store.cleanup().await;
    });
}

/// The server processes of the connections named `app_name`.
async fn pids(conn: &tokio_postgres::Client, app_name: &str) -> Vec<i32> {
    let rows = conn
        .query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", &[&app_name])
        .await
        .expect("pg_stat_activity");
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

// ---------------------------------------------------------------------------------------------
// Several OS processes: this binary re-executed as workers.

/// 4 worker processes × 25 increments of a counter row read and written back (not atomic) under
/// one lock; every increment records its fencing token. Exclusion makes the total exact; the
/// tokens of successive writes strictly increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_increment_a_counter_exactly() {
    let store = PostgresStore::shared("processes").await;
    // Create the schema before the workers start (they would also manage it between them).
    drop(store.backend().await);
    let table = format!("\"{}\".counter", store.schema);
    store.sql(&format!("CREATE TABLE {table} (n bigint NOT NULL, last_token bigint NOT NULL)"), &[]).await;
    store.sql(&format!("INSERT INTO {table} VALUES (0, 0)"), &[]).await;
    let mode = format!("counter {} {}", store.schema, store.prefix());
    let workers: Vec<Worker> = (0..4).map(|_| Worker::spawn("worker", &mode, &store.url)).collect();
    for worker in workers {
        let (status, lines) = worker.finish(Duration::from_secs(120)).await;
        assert!(status.success(), "a worker failed: {status}; it said {lines:?}");
    }
    let rows = store.conn.query(&format!("SELECT n FROM {table}"), &[]).await.expect("read");
    assert_eq!(rows[0].get::<_, i64>(0), 100, "lost updates: the lock did not exclude");
    store.cleanup().await;
}

/// Does nothing unless run as a [`Worker`] by a test above.
#[tokio::test]
#[ignore = "a worker process for other tests"]
async fn worker() {
    let Some(job) = worker_job() else { return };
    let [mode, schema, prefix] = job.mode.splitn(3, ' ').collect::<Vec<_>>()[..] else {
        panic!("worker mode `{}`: expected `counter <schema> <prefix>`", job.mode)
    };
    assert_eq!(mode, "counter");
    let backend = PostgresBackend::builder(job.url.as_str()).schema(schema).connect().await.expect("connect");
    let service = LockService::builder(backend).key_prefix(prefix).build();
    let app = inspector(&job.url).await;
    let table = format!("\"{schema}\".counter");
    for _ in 0..25 {
        let guard = service
            .lock("counter")
            .ttl(Duration::from_secs(5))
            .wait(Duration::from_secs(60))
            .await
            .expect("lock");
        let token = guard.fencing_token() as i64;
        let row = app.query_one(&format!("SELECT n, last_token FROM {table}"), &[]).await.expect("read");
        let (n, last): (i64, i64) = (row.get(0), row.get(1));
        assert!(token > last, "token {token} after {last}: tokens went backwards");
        tokio::task::yield_now().await;
        app.execute(&format!("UPDATE {table} SET n = $1, last_token = $2"), &[&(n + 1), &token])
            .await
            .expect("write");
        assert!(guard.release().await.expect("release"), "still ours at release");
    }
}

// ---------------------------------------------------------------------------------------------
// A private server, for faults.

/// A PostgreSQL cluster owned by one test: `initdb` in a temp dir, `pg_ctl` on a free port,
/// trust (or password) auth, no fsync. Stopped and removed on drop.
struct PrivateServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivateServer {
    fn start() -> Self {
        Self::start_with_password(None)
    }

    /// With `password`, the `postgres` user has it and every connection must give it.
    fn start_with_password(password: Option<&str>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|p| p.join("initdb").exists())
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!(
            "dlock-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let server = Self { dir, port, bin };
        server.chown();
        let mut initdb = vec![
            server.bin.join("initdb").display().to_string(),
            "-D".into(),
            server.data().display().to_string(),
            "-U".into(),
            "postgres".into(),
            "--no-sync".into(),
        ];
        match password {
            Some(password) => {
                let file = server.dir.join("pw");
                std::fs::write(&file, password).expect("password file");
                server.chown();
                initdb.extend(["-A".into(), "scram-sha-256".into(), format!("--pwfile={}", file.display())]);
            }
            None => initdb.extend(["-A".into(), "trust".into()]),
        }
        server.run(&initdb);
        server.start_again();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.run(&[
            self.bin.join("pg_ctl").display().to_string(),
            "-D".into(),
            self.data().display().to_string(),
            "-o".into(),
            options,
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
            "-t".into(),
            "30".into(),
            "start".into(),
        ]);
    }

    /// Stop at once (`immediate`: like a crash; clients see their connections drop).
    fn stop(&self) {
        self.run(&[
            self.bin.join("pg_ctl").display().to_string(),
            "-D".into(),
            self.data().display().to_string(),
            "-m".into(),
            "immediate".into(),
            "-w".into(),
            "stop".into(),
        ]);
    }

    fn chown(&self) {
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&self.dir).status();
            assert!(status.is_ok_and(|s| s.success()), "chown {}", self.dir.display());
        }
    }

    /// Run a server command, as `postgres` when this runs as root (initdb and postgres refuse
    /// root).
    fn run(&self, argv: &[String]) {
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        let output = command.stdin(Stdio::null()).output().unwrap_or_else(|err| panic!("{argv:?}: {err}"));
        assert!(
            output.status.success(),
            "{argv:?} failed: {}\n{}\nlog: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !is_root() {
            let _ = Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Terminate the server processes of connections whose `application_name` is `name`; returns
/// how many.
async fn terminate(admin: &tokio_postgres::Client, name: &str) -> i64 {
    let row = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .expect("pg_terminate_backend");
    row.get(0)
}

const FAULT_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pool_connection_is_replaced_and_the_lease_is_kept() {
    let server = PrivateServer::start();
    let url = format!("{}?application_name=dlock_pool_kill", server.url());
    let admin = inspector(&server.url()).await;
    let backend =
        PostgresBackend::builder(url.as_str()).call_timeout(FAULT_TIMEOUT).connect().await.expect("connect");
    let service = LockService::new(backend.clone());
    let ttl = Duration::from_millis(900);
    let guard = service.lock("k").ttl(ttl).await.expect("lock");
    // Over three leases, kill every pool connection every 200 ms: renewals go on.
    let until = Instant::now() + ttl * 3;
    let mut killed = 0;
    while Instant::now() < until {
        killed += terminate(&admin, "dlock_pool_kill").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!guard.is_lost(), "the lease was lost after {killed} killed connections");
    }
    assert!(killed >= 3, "only {killed} connections were killed");
    assert!(guard.release().await.expect("release"), "still ours");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listening_connection_is_remade_and_waiters_still_wake() {
    let server = PrivateServer::start();
    let admin = inspector(&server.url()).await;
    let builder = |name: &str| {
        PostgresBackend::builder(format!("{}?application_name={name}", server.url()))
            .call_timeout(FAULT_TIMEOUT)
    };
    let holder = LockService::new(builder("dlock_holder").connect().await.expect("connect"));
    // The waiter's listener: its own URL, so that only it is killed.
    let waiter_backend =
        builder("dlock_waiter_pool").listen_url(format!("{}?application_name=dlock_listener", server.url()));
    let waiter = LockService::new(waiter_backend.connect().await.expect("connect"));
    for round in 0..2 {
        let guard = holder.lock("k").ttl(Duration::from_secs(30)).await.expect("lock");
        let waiter = waiter.clone();
        let waiting = tokio::spawn(async move {
            waiter.lock("k").wait(Duration::from_secs(20)).await.map(|g| (g, Instant::now()))
        });
        poll_until(Duration::from_secs(5), "the listener connects", || async {
            connections(&admin, "dlock_listener").await > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(terminate(&admin, "dlock_listener").await, 1, "round {round}: one listening connection");
        // Until it is back the waiter is on its timer; once it is, a release wakes it.
        poll_until(Duration::from_secs(5), "the listener reconnects", || async {
            connections(&admin, "dlock_listener").await > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let released = Instant::now();
        guard.release().await.expect("release");
        let (next, got_in) = waiting.await.expect("no panic").expect("the waiter gets in");
        assert!(got_in - released < MARGIN, "round {round}: woken {:?} after the release", got_in - released);
        next.release().await.expect("release");
    }
    drop(server);
}

async fn connections(admin: &tokio_postgres::Client, name: &str) -> i64 {
    admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&name])
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Holders and waiters loop on a few keys while the server is stopped (like a crash) and
/// started again 2 s later. Every lock call ends within its bound; every holder at the stop
/// learns its lease is lost (unconfirmed) no later than a ttl after the stop — its last
/// confirmed renewal was sent before it, so its lease could not last longer — the work
/// resumes after the restart, and no key's tokens ever go backwards: the sequence is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_and_restarted_under_load() {
    let server = Arc::new(PrivateServer::start());
    let backend =
        PostgresBackend::builder(server.url()).call_timeout(FAULT_TIMEOUT).connect().await.expect("connect");
    let services = [
        LockService::new(backend.clone()),
        LockService::new(
            PostgresBackend::builder(server.url())
                .call_timeout(FAULT_TIMEOUT)
                .connect()
                .await
                .expect("connect"),
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let last_tokens: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>> = Arc::default();
    let (cycles, errors, overruns) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let losses: Arc<std::sync::Mutex<Vec<(Instant, LostReason)>>> = Arc::default();
    let ttl = Duration::from_millis(600);
    let mut tasks = Vec::new();
    for task in 0..6 {
        let service = services[task % 2].clone();
        let (stop, last_tokens, cycles, errors, overruns, losses) = (
            Arc::clone(&stop),
            Arc::clone(&last_tokens),
            Arc::clone(&cycles),
            Arc::clone(&errors),
            Arc::clone(&overruns),
            Arc::clone(&losses),
        );
        tasks.push(tokio::spawn(async move {
            let key = format!("k{}", task % 3);
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let wait = Duration::from_millis(700);
                match service.lock(&key).ttl(ttl).wait(wait).await {
                    Ok(guard) => {
                        let token = guard.fencing_token();
                        {
                            let mut last = last_tokens.lock().expect("not poisoned");
                            let before = last.insert(key.clone(), token).unwrap_or(0);
                            assert!(token > before, "{key}: token {token} after {before}");
                        }
                        // Hold across renewals.
                        tokio::select! {
                            reason = guard.lost() => {
                                losses.lock().expect("not poisoned").push((Instant::now(), reason));
                            }
                            () = tokio::time::sleep(ttl * 2) => {}
                        }
                        let _ = guard.release().await;
                        cycles.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // wait + the hold + a call in flight + the release's call: nothing hangs.
                if asked.elapsed() > wait + ttl * 2 + FAULT_TIMEOUT * 3 + MARGIN {
                    overruns.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    poll_until(Duration::from_secs(20), "work runs", || async { cycles.load(Ordering::SeqCst) >= 6 }).await;
    let stopped_at = Instant::now();
    tokio::task::spawn_blocking({
        let server = Arc::clone(&server);
        move || server.stop()
    })
    .await
    .expect("stopped");
    let cycles_at_stop = cycles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(errors.load(Ordering::SeqCst) > 0, "calls failed while the server was down");
    tokio::task::spawn_blocking({
        let server = Arc::clone(&server);
        move || server.start_again()
    })
    .await
    .expect("started");
    let restarted_at = Instant::now();
    poll_until(Duration::from_secs(20), "work resumes after the restart", || async {
        cycles.load(Ordering::SeqCst) >= cycles_at_stop + 6
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("tasks end")
            .expect("no assertion failed");
    }
    assert_eq!(overruns.load(Ordering::SeqCst), 0, "a lock call outlived its bound");
    let losses = losses.lock().expect("not poisoned").clone();
    let during: Vec<_> = losses.iter().filter(|(at, _)| *at >= stopped_at && *at < restarted_at).collect();
    assert!(!during.is_empty(), "no holder learned of its loss while the server was down: {losses:?}");
    for (at, reason) in during {
        assert_eq!(*reason, LostReason::Unconfirmed);
        let after = *at - stopped_at;
        assert!(
            after < ttl + MARGIN,
            "a holder learned of its loss {after:?} after the stop, past its {ttl:?} lease"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_prompt_classified_and_name_the_url_without_the_password() {
    // Nobody listens on the port.
    let url = format!("postgres://app:hunter2@127.0.0.1:{}/test", free_port());
    let started = Instant::now();
    let err = PostgresBackend::builder(url.as_str())
        .call_timeout(FAULT_TIMEOUT)
        .connect()
        .await
        .expect_err("closed port");
    assert!(started.elapsed() < FAULT_TIMEOUT + MARGIN, "{:?}", started.elapsed());
    let Error::Backend { backend: "postgres", source, .. } = &err else { panic!("{err:?}") };
    assert_eq!(source.kind(), BackendErrorKind::Connection, "{err}");
    let text = chain(&err);
    assert!(text.contains("app:***@127.0.0.1") && !text.contains("hunter2"), "{text}");
    assert!(text.contains("running and reachable"), "{text}");

    // A wrong password.
    let server = PrivateServer::start_with_password(Some("s3cret"));
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", server.port);
    let err = PostgresBackend::connect(&wrong).await.expect_err("a wrong password");
    let Error::Backend { source, .. } = &err else { panic!("{err:?}") };
    assert_eq!(source.kind(), BackendErrorKind::Auth, "{err}");
    assert!(chain(&err).contains("credentials") && !chain(&err).contains("wrong@"), "{err}");
    let right = format!("postgres://postgres:s3cret@127.0.0.1:{}/postgres", server.port);
    PostgresBackend::connect(&right).await.expect("the right password");

    // Bad URLs.
    for bad in ["redis://127.0.0.1", "postgres://h/db?sslmode=require", "postgres://h:notaport/db"] {
        match PostgresBackend::connect(bad).await {
            Err(Error::InvalidInput { what: "PostgreSQL URL", reason }) => {
                assert!(reason.contains("postgres://") || reason.contains("TLS"), "{reason}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// PgBouncer in transaction mode.

/// A private PgBouncer in transaction mode in front of a private server; dropped with it.
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PgBouncer {
    fn start(server: &PrivateServer) -> Option<Self> {
        Self::start_to(server.port)
    }

    /// In front of the server (or proxy) listening on `upstream`.
    fn start_to(upstream: u16) -> Option<Self> {
        let exe =
            ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"].into_iter().map(Path::new).find(|p| p.exists())?;
        let dir = std::env::temp_dir().join(format!(
            "dlock-pgb-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n\
                 auth_file = {}\npool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n\
                 unix_socket_dir =\nlogfile = {}\n",
                upstream,
                dir.join("users.txt").display(),
                dir.join("log").display()
            ),
        )
        .expect("pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("users.txt");
        if is_root() {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        }
        // As root, PgBouncer itself becomes `postgres` (`-u`), so that the child killed on drop
        // is PgBouncer (a `runuser` in between would die alone and leave PgBouncer running).
        let mut command = Command::new(exe);
        if is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pgbouncer");
        let bouncer = Self { child, port, _dir: TempDir(dir) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(bouncer)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What it has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything through PgBouncer in transaction mode (4 server connections shared by every
/// client, no prepared statements): schema creation, acquire, renew, release, waiting (the
/// listener goes to the server directly), fenced writes. Skipped, saying so, when `pgbouncer`
/// is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_through_pgbouncer_in_transaction_mode() {
    let server = PrivateServer::start();
    let Some(bouncer) = PgBouncer::start(&server) else {
        eprintln!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    };
    let connect = || PostgresBackend::builder(bouncer.url()).listen_url(server.url()).pool_size(8).connect();
    let (a, b) = (connect().await.expect("connect through PgBouncer"), connect().await.expect("connect"));
    let (sa, sb) = (LockService::new(a.clone()), LockService::new(b));
    // Many tasks over few server connections: every statement may land on another one.
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let service = if task % 2 == 0 { sa.clone() } else { sb.clone() };
        let inside = Arc::clone(&inside);
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..20 {
                let guard =
                    service.lock("k").ttl(Duration::from_secs(5)).wait(Duration::from_secs(30)).await?;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                assert!(guard.fencing_token() > last);
                last = guard.fencing_token();
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(guard.release().await?);
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("no panic").expect("locks through PgBouncer");
    }
    // Waiting: a release notice reaches a waiter through the direct listener.
    let guard = sa.lock("w").ttl(Duration::from_secs(10)).await.expect("lock");
    let waiting =
        tokio::spawn(
            async move { sb.lock("w").wait(Duration::from_secs(10)).await.map(|g| (g, Instant::now())) },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (next, got_in) = waiting.await.expect("no panic").expect("the waiter gets in");
    assert!(got_in - released < MARGIN, "woken {:?} after the release", got_in - released);
    // A fenced write in a transaction through PgBouncer.
    let mut app = inspector(&bouncer.url()).await;
    let txn = app.transaction().await.expect("begin");
    a.check_fence(&txn, "w", next.fencing_token()).await.expect("held");
    txn.commit().await.expect("commit");
    next.release().await.expect("release");
    drop(bouncer);
    drop(server);
}

/// Through PgBouncer in transaction mode, a dropped request whose acquisition outlasts the
/// release's wait (deaf to its cancel for 1.5 s) leaves nothing held: PgBouncer runs one
/// client's statements in order, so the release sent behind it on its client connection runs
/// after it. Skipped, saying so, when `pgbouncer` is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_an_acquisition_that_outlasts_the_releases_wait_leaves_nothing_held() {
    let server = PrivateServer::start();
    let Some(bouncer) = PgBouncer::start(&server) else {
        eprintln!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    };
    let store = PostgresStore::on(&server.url(), "bouncer_late", FAULT_TIMEOUT).await;
    let backend = PostgresBackend::builder(bouncer.url())
        .schema(store.schema.as_str())
        .listen_url(server.url())
        .call_timeout(FAULT_TIMEOUT)
        .connect()
        .await
        .expect("connect through PgBouncer");
    let service = LockService::builder(backend).key_prefix(store.prefix()).build();
    drop_a_request_deaf_to_its_cancel_and_see_the_key_freed(&service, &store).await;
    // The harness stops what it started: no PgBouncer is left listening.
    let port = bouncer.port;
    drop(bouncer);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PgBouncer still listens on {port} after its drop"
    );
    drop(server);
}

/// The cancel dlock sends for an abandoned statement through PgBouncer must reach PostgreSQL
/// and leave PgBouncer serving. PgBouncer 1.18 forwards a cancel on a server connection of its
/// own, and mishandles a cancel whose client closed its side before that forwarding ended: it
/// drops it, or exits (`FATAL ... disconnect_client(): bad client state: 0`, pgbouncer#801),
/// closing every client's connection. Here PgBouncer's connections to PostgreSQL go through a
/// proxy that holds back the next one made (the cancel's) until the abandoned acquisition has
/// committed. Skipped, saying so, when `pgbouncer` is not installed.
///
/// Before the fix, tokio-postgres's cancel closed its side as soon as it was written
/// (`client unexpected eof` in PgBouncer's log): the cancel was never forwarded here; without
/// the proxy, PgBouncer exited with that FATAL in 4 runs of 10 of the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_pgbouncer_waits_for_it_and_does_not_crash_it() {
    let server = PrivateServer::start();
    let proxy = BlackHoleProxy::start(server.port).await;
    let Some(bouncer) = PgBouncer::start_to(proxy.port()) else {
        eprintln!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    };
    let store = PostgresStore::on(&server.url(), "bouncer_cancel", FAULT_TIMEOUT).await;
    let backend = PostgresBackend::builder(bouncer.url())
        .schema(store.schema.as_str())
        .listen_url(server.url())
        .call_timeout(FAULT_TIMEOUT)
        .connect()
        .await
        .expect("connect through PgBouncer");
    store.slow_inserts(1500, false).await;
    let key = store.full_key("slow");
    // PgBouncer's server connection made by connecting is idle now, and runs the acquisition.
    proxy.hold_next(1);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        backend.try_acquire(&key, "owner", Duration::from_secs(30)),
    )
    .await;
    assert!(abandoned.is_err(), "the acquisition was given up on while it ran");
    drop(abandoned);
    poll_until(Duration::from_secs(5), "the late statement committing", || async {
        store.row("slow").await.is_some()
    })
    .await;
    // The cancel reaches PostgreSQL now; PgBouncer closes its client once it was sent.
    proxy.deliver_next();
    let forwarded = tokio::time::timeout(Duration::from_secs(5), async {
        while !bouncer.log().contains("successfully sent cancel request") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let serves = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(Ok((client, connection))) =
                tokio::time::timeout(MARGIN, tokio_postgres::connect(&bouncer.url(), NoTls)).await
            {
                tokio::spawn(connection);
                if client.simple_query("SELECT 1").await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let log = bouncer.log();
    assert!(
        forwarded.is_ok() && serves.is_ok() && !log.contains("FATAL"),
        "PgBouncer forwarded the cancel: {}, still serves clients: {}; it logged:\n{log}",
        forwarded.is_ok(),
        serves.is_ok()
    );
    assert!(backend.release(&key, "owner").await.is_ok(), "a release through PgBouncer");
    // Read, not taken: the trigger slows every acquisition of the key.
    poll_until(FAULT_TIMEOUT * 2 + MARGIN, "the late acquisition released", || async {
        !store.is_held("slow").await
    })
    .await;
    drop(bouncer);
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// A retried acquisition, and a schema name with a dollar-quote tag in it.

/// A request whose first acquire attempt timed out asks again with the same owner, and gets
/// the key; its release must still wait for the first attempt, which may commit late (its
/// cancel missed) and would take the key again for that owner after the release.
///
/// Before the fix, the second attempt's bookkeeping replaced the first's, and was removed when
/// it was answered: the release ran at once, and the first attempt then left the key held by
/// nobody for its whole ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_a_retried_acquisition_waits_for_the_abandoned_first_attempt() {
    let store = PostgresStore::shared("retried_late").await;
    let backend = store.backend().await;
    let schema = &store.schema;
    store.slow_inserts(700, true).await;
    let key = store.full_key("slow");
    let ttl = Duration::from_secs(30);
    // The first attempt is given up on while it runs (as a call timeout does).
    let first = tokio::time::timeout(Duration::from_millis(100), backend.try_acquire(&key, "o", ttl)).await;
    assert!(first.is_err(), "the first attempt was given up on while it ran");
    drop(first);
    // The request asks again with the same owner, gets the key, and releases it.
    acquired(backend.try_acquire(&key, "o", ttl).await.expect("second attempt"), "the second attempt");
    assert!(backend.release(&key, "o").await.expect("release").was_held);
    // Once the first attempt's statement has ended, nothing may be held.
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' \
         AND query LIKE 'INSERT INTO \"{schema}\".dlock_locks%'"
    );
    poll_until(Duration::from_secs(5), "the first attempt's statement ended", || async {
        let n: i64 = store.conn.query_one(&running, &[]).await.expect("pg_stat_activity").get(0);
        n == 0
    })
    .await;
    assert_eq!(
        store.row("slow").await.map(|(owner, _, live)| (owner, live)),
        Some((None, false)),
        "the key is free"
    );
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// An acquisition held up on its way (the proxy holds back what its connection sends).

/// A backend on `store`'s schema through `proxy`, with a 500 ms call timeout, its pooled
/// connections named `app_name` (`application_name`), and one connection in its pool.
async fn held_up_backend(store: &PostgresStore, proxy: &BlackHoleProxy, app_name: &str) -> PostgresBackend {
    drop(store.backend().await); // makes the schema
    let backend = PostgresBackend::builder(format!(
        "postgres://postgres@127.0.0.1:{}/test?application_name={app_name}",
        proxy.port()
    ))
    .schema(store.schema.as_str())
    .call_timeout(FAULT_TIMEOUT)
    .listen(false)
    .cleanup_after(None)
    .connect()
    .await
    .unwrap_or_else(|err| panic!("connecting through the proxy: {err}"));
    assert_eq!(backend.pool_connections(), 1, "connect checked the schema on one pooled connection");
    backend
}

/// How many of the sessions named `app_name` have run the release statement last.
async fn sessions_that_released(store: &PostgresStore, app_name: &str) -> i64 {
    let released = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle' \
         AND query LIKE 'UPDATE \"{}\".dlock_locks AS l SET owner = NULL%'",
        store.schema
    );
    store.conn.query_one(&released, &[&app_name]).await.expect("pg_stat_activity").get(0)
}

/// The token on `key`'s row (unprefixed): it grows with every acquisition that takes the key.
async fn token_of(store: &PostgresStore, key: &str) -> i64 {
    store.row(key).await.map_or(0, |(_, token, _)| token)
}

/// The acquisition of `late` that `proxy` holds up has not run yet (its token is still
/// `before`): deliver it, see it run, and see another owner take the key within two call
/// timeouts — `after` says after what, for the message.
async fn deliver_and_see_another_owner_take_it(
    store: &PostgresStore,
    proxy: &BlackHoleProxy,
    before: i64,
    after: &str,
) {
    assert_eq!(token_of(store, "late").await, before, "the held-up acquisition has not run");
    proxy.deliver_held();
    poll_until(MARGIN, "the held-up acquisition runs", || async { token_of(store, "late").await > before })
        .await;
    another_owner_takes(store, "late", FAULT_TIMEOUT * 2 + MARGIN, after).await;
}

/// Wait, at most `bound`, until another owner takes `key` (unprefixed) on a client of its own;
/// panic showing the row if it stays held.
async fn another_owner_takes(store: &PostgresStore, key: &str, bound: Duration, what: &str) {
    let other = store.backend().await;
    let full = store.full_key(key);
    let taken = tokio::time::timeout(bound, async {
        loop {
            if let Ok(TryAcquire::Acquired { .. }) =
                other.try_acquire(&full, "next", Duration::from_secs(5)).await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if taken.is_err() {
        panic!("the key stayed held {what}: row (owner, token, live) {:?}", store.row(key).await);
    }
    assert!(other.release(&full, "next").await.expect("release").was_held);
}

/// An acquisition held up on its way to PostgreSQL (a slow path: the proxy holds back what its
/// connection sends, the cancel dlock sends goes through at once and finds nothing running)
/// times out; its claim's release, sent on another connection once its wait for the
/// acquisition (one call timeout) is over, finds nothing. When the held-up statement runs after
/// all, the key must not stay held for the owner that gave up (for its whole ttl): another
/// client gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_overtaken_by_its_claims_release_does_not_keep_the_key() {
    let store = PostgresStore::shared("overtaken").await;
    let proxy = BlackHoleProxy::start(5432).await;
    let app_name = format!("dlock_overtaken_{}", std::process::id());
    let backend = held_up_backend(&store, &proxy, &app_name).await;
    let service = LockService::builder(backend).key_prefix(store.prefix()).build();
    // The key's row, on the pooled connection, whose last statement is then a release.
    let guard = service.lock("late").wait(Duration::ZERO).await.expect("lock through the proxy");
    assert!(guard.release().await.expect("release"));
    let before = token_of(&store, "late").await;
    assert_eq!(sessions_that_released(&store, &app_name).await, 1);

    proxy.hold();
    match service.lock("late").ttl(Duration::from_secs(30)).wait(Duration::ZERO).await {
        Err(Error::Backend { source, .. }) => {
            assert_eq!(source.kind(), BackendErrorKind::Timeout, "{source}")
        }
        other => panic!("the held-up acquisition ended with {other:?}, not a call timeout"),
    }
    // The claim's release, on a new connection, runs while the acquisition is still held up.
    poll_until(FAULT_TIMEOUT * 2 + MARGIN, "the claim's release runs", || async {
        sessions_that_released(&store, &app_name).await == 2
    })
    .await;
    deliver_and_see_another_owner_take_it(&store, &proxy, before, "after the request gave up").await;
    store.cleanup().await;
}

/// The same, one call at a time on the backend: an acquisition held up on its way times out;
/// the same owner asks again, on a new connection, takes the key and releases it (a request
/// that rode out the timeout, then its guard). When the held-up acquisition runs after that,
/// it must not take the key again for that owner, whose release is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acquisition_does_not_outlive_its_owners_release_on_a_new_connection() {
    let store = PostgresStore::shared("late_owner").await;
    let proxy = BlackHoleProxy::start(5432).await;
    let app_name = format!("dlock_late_owner_{}", std::process::id());
    let backend = held_up_backend(&store, &proxy, &app_name).await;
    let key = store.full_key("late");
    let ttl = Duration::from_secs(30);

    proxy.hold();
    let held_up = backend.try_acquire(&key, "owner", ttl).await;
    assert!(
        matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
        "the held-up acquisition ended with {held_up:?}, not a call timeout"
    );
    let token = acquired(backend.try_acquire(&key, "owner", ttl).await.expect("asked again"), "asked again");
    assert!(backend.release(&key, "owner").await.expect("release on the new connection").was_held);
    deliver_and_see_another_owner_take_it(&store, &proxy, token as i64, "after its owner released it").await;
    store.cleanup().await;
}

/// An acquisition held up on its way times out on a current-thread runtime, and that runtime
/// ends right after (a `#[tokio::test]`, a CLI that leaves `block_on`): the connection it went
/// on is driven by that runtime and closes with it, so nothing can be sent behind it there any
/// more, while the closed socket still delivers the acquisition. The request's claim releases
/// the key from another runtime, on a new connection, before the held-up statement runs. When
/// it runs after all, the key must not stay held for the owner that gave up (for its whole ttl
/// of 30 s): another client gets it within two call timeouts.
///
/// Before the fix, the closed connection's failed round trip counted as the statement having
/// ended: the release ran at once and nothing was sent again; the key stayed held.
#[test]
fn a_late_acquisition_does_not_keep_the_key_after_its_runtime_ended() {
    late_acquisition_after_its_runtime_ended(false, false);
}

/// As above, with the backend dropped as well once its runtime ended (a `#[tokio::test]` that
/// makes a backend of its own): the release sent again must not depend on the backend living
/// on.
///
/// Before the fix, the release behind the acquisition and its resending ran on the backend's
/// own thread, which ends with the backend: the key stayed held for its whole ttl.
#[test]
fn a_late_acquisition_does_not_keep_the_key_after_its_runtime_and_backend_are_gone() {
    late_acquisition_after_its_runtime_ended(false, true);
}

/// As above, with the owner's release sent from that current-thread runtime just before it
/// ends (the owner asked again on a new connection, took the key and released it): the
/// release behind the held-up acquisition must not depend on that runtime running on.
#[test]
fn a_late_acquisition_does_not_outlive_a_release_sent_just_before_its_runtime_ended() {
    late_acquisition_after_its_runtime_ended(true, false);
}

fn late_acquisition_after_its_runtime_ended(released_on_that_runtime: bool, backend_dropped: bool) {
    let outer = runtime(true);
    let name = match (released_on_that_runtime, backend_dropped) {
        (true, _) => "late_rt_owner",
        (false, false) => "late_rt_claim",
        (false, true) => "late_rt_dropped",
    };
    let store = outer.block_on(PostgresStore::shared(name));
    let proxy = outer.block_on(BlackHoleProxy::start(5432));
    let app_name = format!("dlock_{name}_{}", std::process::id());
    let backend = outer.block_on(held_up_backend(&store, &proxy, &app_name));
    outer.block_on(store.log_releases());
    let key = store.full_key("late");
    let ttl = Duration::from_secs(30);
    let caller = runtime(false);
    let service = LockService::builder(backend.clone()).key_prefix(store.prefix()).build();
    // The caller's pooled connection, whose acquisition is then held up.
    caller.block_on(async {
        let guard = service.lock("late").wait(Duration::ZERO).await.expect("lock through the proxy");
        assert!(guard.release().await.expect("release"));
    });
    let releases = outer.block_on(store.releases_run()) + 1;
    proxy.hold();
    let before = caller.block_on(async {
        if released_on_that_runtime {
            let held_up = backend.try_acquire(&key, "owner", ttl).await;
            assert!(
                matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
                "the held-up acquisition ended with {held_up:?}, not a call timeout"
            );
            let token =
                acquired(backend.try_acquire(&key, "owner", ttl).await.expect("asked again"), "asked again");
            assert!(backend.release(&key, "owner").await.expect("release on the new connection").was_held);
            token as i64
        } else {
            let before = token_of(&store, "late").await;
            match service.lock("late").ttl(ttl).wait(Duration::ZERO).await {
                Err(Error::Backend { source, .. }) => {
                    assert_eq!(source.kind(), BackendErrorKind::Timeout, "{source}")
                }
                other => panic!("the held-up acquisition ended with {other:?}, not a call timeout"),
            }
            before
        }
    });
    drop(caller);
    if backend_dropped {
        drop((service, backend));
    }
    outer.block_on(async {
        // The claim's release (or the owner's, done already) runs while the acquisition is
        // still held up.
        poll_until(FAULT_TIMEOUT * 2 + MARGIN, "the release runs", || async {
            store.releases_run().await >= releases
        })
        .await;
        deliver_and_see_another_owner_take_it(&store, &proxy, before, "after its runtime ended").await;
        store.cleanup().await;
    });
}

/// An acquisition held up on its way times out, and so does the cancel request dlock sends
/// for it (a connection of its own, on the same slow path), past the 5 s dlock waits for the
/// cancel's answer. The owner's release is then sent behind the acquisition; when the held-up
/// bytes arrive, the acquisition commits and the release runs, and the cancel, arriving while
/// the release runs, cancels it. The key must not stay held for the owner that gave up:
/// another client gets it soon after.
///
/// Before the fix, the cancelled release was not sent again: the key stayed held for its
/// whole ttl (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_behind_hit_by_the_late_cancel_is_sent_again() {
    let store = PostgresStore::shared("cancel_hits_release").await;
    let proxy = BlackHoleProxy::start(5432).await;
    let app_name = format!("dlock_cancel_hits_{}", std::process::id());
    let backend = held_up_backend(&store, &proxy, &app_name).await;
    let key = store.full_key("late");
    let ttl = Duration::from_secs(30);
    // The pooled connection, whose acquisition is then held up, with the key's row.
    acquired(backend.try_acquire(&key, "warm-up", ttl).await.expect("warm-up"), "warm-up");
    assert!(backend.release(&key, "warm-up").await.expect("release").was_held);
    // A release that frees a held row takes 1 s, and stops at a cancel.
    let schema = &store.schema;
    store
        .sql(
            &format!(
                "CREATE FUNCTION \"{schema}\".slow_release() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
            ),
            &[],
        )
        .await;
    store
        .sql(
            &format!(
                "CREATE TRIGGER slow_release BEFORE UPDATE ON \"{schema}\".dlock_locks FOR EACH ROW \
                 WHEN (OLD.owner IS NOT NULL AND NEW.owner IS NULL) EXECUTE FUNCTION \"{schema}\".slow_release()"
            ),
            &[],
        )
        .await;
    let before = token_of(&store, "late").await;
    // The pooled connection holds what it is sent, and so does the next one made: the cancel's.
    proxy.hold();
    proxy.hold_next(1);
    let held_up = backend.try_acquire(&key, "owner", ttl).await;
    assert!(
        matches!(&held_up, Err(err) if err.kind() == BackendErrorKind::Timeout),
        "the held-up acquisition ended with {held_up:?}, not a call timeout"
    );
    // Runs on a new connection, finds nothing, and is also sent behind the acquisition.
    assert!(!backend.release(&key, "owner").await.expect("release").was_held);
    assert_eq!(token_of(&store, "late").await, before, "the held-up acquisition has not run");
    proxy.deliver_held();
    let releasing = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' \
         AND query LIKE 'UPDATE \"{schema}\".dlock_locks AS l SET owner = NULL%'"
    );
    // Once dlock gave up waiting for the cancel's answer (5 s after it was sent).
    poll_until(Duration::from_secs(5) + MARGIN * 2, "the release behind the acquisition runs", || async {
        let n: i64 = store.conn.query_one(&releasing, &[&app_name]).await.expect("pg_stat_activity").get(0);
        n == 1
    })
    .await;
    assert!(token_of(&store, "late").await > before, "the held-up acquisition ran first");
    // The cancel arrives now.
    proxy.deliver_next();
    another_owner_takes(&store, "late", Duration::from_secs(2) + MARGIN, "after its release was cancelled")
        .await;
    store.cleanup().await;
}

/// A schema name is any identifier of up to 63 bytes; one that contains the dollar-quote tag of
/// `dlock_check`'s body (`$dlock$`) must work like any other.
///
/// Before the fix, the tag in the schema name ended the function's body early: connecting
/// failed with a syntax error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_with_the_function_body_quote_works() {
    let schema = format!("t$dlock$x_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let url = shared_url();
    let _drop = DropSchema { url: url.clone(), schema: schema.clone() };
    let backend = PostgresBackend::builder(url.as_str())
        .schema(schema.as_str())
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting with schema {schema}: {err}"));
    let key = FullKey::new("dollar:", "k");
    let token =
        acquired(backend.try_acquire(&key, "o", Duration::from_secs(5)).await.expect("acquire"), "acquire");
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    let txn = client.transaction().await.expect("begin");
    backend.check_fence(&txn, key.as_str(), token).await.expect("the fence holds");
    txn.rollback().await.expect("rollback");
    assert!(backend.release(&key, "o").await.expect("release").was_held);
}
