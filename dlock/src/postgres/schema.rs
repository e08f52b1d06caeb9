//! The schema dlock keeps in PostgreSQL, and its migrations: versioned, idempotent, safe when
//! several processes run them at once.
//!
//! Everything lives in one schema (default `dlock`), under names that start with `dlock_`, so
//! that a schema shared with other tables (`public`) is safe too:
//!
//! - `dlock_locks`: the lease table (see `sql.rs` for its columns);
//! - `dlock_tokens`: the sequence fencing tokens are drawn from;
//! - `dlock_check(key text, token bigint)`: the fenced-write check for applications' own
//!   transactions;
//! - `dlock_version`: one row, the schema's `version` and `compatible`, the oldest version of
//!   dlock's statements that still work on it (a later dlock that only adds things keeps it
//!   low, so older processes keep working during a rolling upgrade).
//!
//! Migrating takes a transaction-scoped advisory lock named after the schema, so concurrent
//! first uses from several processes run one after the other and the later ones find nothing
//! to do; it needs no session state, so it works through PgBouncer in transaction mode.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::errors::NOT_HELD;
use super::sql::quote_ident;

/// The schema version this dlock creates and uses.
pub(super) const VERSION: i32 = 1;

/// What a schema's version row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Version {
    pub(super) version: i32,
    pub(super) compatible: i32,
}

/// The schema's version, or `None` when dlock's objects are not there (yet).
pub(super) async fn read_version(
    client: &Client,
    schema: &str,
) -> Result<Option<Version>, tokio_postgres::Error> {
    let query = format!("SELECT version, compatible FROM {}.dlock_version", quote_ident(schema));
    match client.query_typed(&query, &[]).await {
        Ok(rows) => Ok(rows.first().map(|row| Version { version: row.get(0), compatible: row.get(1) })),
        Err(err)
            if err.code() == Some(&SqlState::UNDEFINED_TABLE)
                || err.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Bring `schema` to [`VERSION`]: create what is missing, apply what is newer. Returns the
/// version found before (0: nothing was there). Safe to run from several processes at once.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<i32, tokio_postgres::Error> {
    let s = quote_ident(schema);
    let txn = client.transaction().await?;
    let lock_name = format!("dlock migrate {schema}");
    txn.query_typed("SELECT pg_advisory_xact_lock(hashtext($1))", &[(&lock_name, Type::TEXT)]).await?;
    // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists
    // (say, made by an administrator for a role that may only create inside it).
    let exists = !txn
        .query_typed("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[(&schema, Type::TEXT)])
        .await?
        .is_empty();
    if !exists {
        txn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}")).await?;
    }
    txn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.dlock_version ( \
           only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), \
           version integer NOT NULL, \
           compatible integer NOT NULL)"
    ))
    .await?;
    let rows = txn.query_typed(&format!("SELECT version FROM {s}.dlock_version"), &[]).await?;
    let found: i32 = rows.first().map_or(0, |row| row.get(0));
    for (version, step) in steps(schema) {
        if version > found {
            txn.batch_execute(&step).await?;
        }
    }
    if found < VERSION {
        txn.query_typed(
            &format!(
                "INSERT INTO {s}.dlock_version (version, compatible) VALUES ($1, $2) \
                 ON CONFLICT (only_row) DO UPDATE SET version = excluded.version, compatible = excluded.compatible"
            ),
            &[(&VERSION, Type::INT4), (&COMPATIBLE, Type::INT4)],
        )
        .await?;
    }
    txn.commit().await?;
    Ok(found)
}

/// The oldest schema version whose statements work on a schema at [`VERSION`].
const COMPATIBLE: i32 = 1;

/// Each version's SQL, in order. Never edit a released step: add a new one.
fn steps(schema: &str) -> Vec<(i32, String)> {
    let s = quote_ident(schema);
    let locks = format!("{s}.dlock_locks");
    // The dollar-quote tag of dlock_check's body: one the schema's name does not contain.
    let mut tag = "$dlock$".to_owned();
    let mut n = 0;
    while schema.contains(&tag) {
        n += 1;
        tag = format!("$dlock{n}$");
    }
    vec![(
        1,
        format!(
            "CREATE SEQUENCE IF NOT EXISTS {s}.dlock_tokens AS bigint; \
             CREATE TABLE IF NOT EXISTS {locks} ( \
               key text PRIMARY KEY, \
               owner text, \
               token bigint NOT NULL, \
               expires_at timestamptz NOT NULL, \
               waiting_until timestamptz \
             ) WITH (fillfactor = 70); \
             COMMENT ON TABLE {locks} IS 'dlock leases: one row per key; owner NULL = free. Fencing tokens come from dlock_tokens.'; \
             CREATE OR REPLACE FUNCTION {s}.dlock_check(lock_key text, fencing_token bigint) RETURNS void \
             LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS {tag} \
             DECLARE held record; \
             BEGIN \
               SELECT l.owner, l.token, l.expires_at INTO held FROM {locks} l WHERE l.key = lock_key FOR SHARE; \
               IF NOT FOUND OR held.owner IS NULL OR held.token IS DISTINCT FROM fencing_token \
                  OR held.expires_at <= clock_timestamp() THEN \
                 RAISE EXCEPTION USING ERRCODE = '{NOT_HELD}', \
                   MESSAGE = format('dlock: lock %L is not held with fencing token %s', lock_key, fencing_token), \
                   DETAIL = CASE WHEN NOT FOUND OR held.owner IS NULL THEN 'the lock is free' \
                                 WHEN held.token IS DISTINCT FROM fencing_token THEN format('it is held with fencing token %s', held.token) \
                                 ELSE 'its lease has ended' END, \
                   HINT = 'roll back: the work is no longer protected by the lock; take the lock again and redo it'; \
               END IF; \
             END {tag}; \
             COMMENT ON FUNCTION {s}.dlock_check(text, bigint) IS \
               'Raises SQLSTATE {NOT_HELD} unless the dlock lock (full key, service prefix included) is held with this fencing token; \
             locks the lease row FOR SHARE, so no other owner can take the key until the calling transaction ends.';"
        ),
    )]
}
