//! The statements of the PostgreSQL backend: acquire, renew, release, the fenced-write check
//! and cleanup, each one statement (one round trip, atomic), built once per schema.
//!
//! # The lease table
//!
//! `<schema>.dlock_locks` has one row per key ever locked (until cleanup removes it):
//!
//! | column | meaning |
//! |---|---|
//! | `key` (primary key) | the full key, service prefix included |
//! | `owner` | the holder's random owner token; `NULL` once released |
//! | `token` | the fencing token of the latest holder, drawn from the sequence `dlock_tokens` |
//! | `expires_at` | when the lease ends (or ended); a release sets it to the release time |
//! | `waiting_until` | a waiting process asked for a release notice until then; `-infinity` after a release that sent one |
//!
//! # Time
//!
//! Expiry is judged by the database server's clock, with `clock_timestamp()`: `now()` is the
//! start of the transaction, which for the fenced-write check inside an application's
//! transaction can be long past, and even for a single statement is earlier than the moment a
//! row lock waited for is granted — a lease that ended while a renewal waited must not be
//! renewed. The acquire statement reads the clock once (in a sub-select) so that the decision
//! "take it or not" and the new lease agree.
//!
//! # Atomicity
//!
//! Each statement locks the key's row before it judges it (`INSERT … ON CONFLICT DO UPDATE`
//! locks the conflicting row; `UPDATE` locks what it updates and re-checks its condition on
//! the newest row version if it had to wait), so two statements on one key never both see it
//! free, and an owner check cannot pass on a row another owner has just taken.

use sha2::{Digest, Sha256};

/// How long a waiting process's request for a release notice lasts. dlock asks again about
/// every `WAITER_RECHECK` (1 s) while it waits, renewing the request; a process that stopped
/// asking (it got the key, gave up, or died) costs at most this long of needless notices.
pub(super) const WAITING_LIFETIME_MS: u64 = 3_000;

/// How many free rows one cleanup statement removes at most.
pub(super) const CLEANUP_BATCH: i64 = 1_000;

/// The statements for one schema.
#[derive(Debug)]
pub(super) struct Statements {
    /// `$1` key, `$2` owner, `$3` ttl ms, `$4` ask for a notice. One row: `token` (the new
    /// fencing token, or `NULL` when the key is held by another owner) and `remaining_ms` (of
    /// the lease now on the key).
    pub(super) acquire: String,
    /// `$1` key, `$2` owner, `$3` ttl ms. A row (`true`) when renewed, none when not.
    pub(super) renew: String,
    /// `$1` key, `$2` owner. A row when released, saying whether a release notice went out
    /// (someone waited); none when the owner did not hold the key.
    pub(super) release: String,
    /// `$1` key, `$2` token: raises SQLSTATE `DL001` unless the lock is held with that token.
    pub(super) check: String,
    /// `$1` retention µs: removes up to [`CLEANUP_BATCH`] rows free for longer; returns one
    /// row per row removed.
    pub(super) cleanup: String,
    /// `dlock_<8 hex digits of the schema's hash>_`: what every release channel of this
    /// schema starts with.
    channel_prefix: String,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let channel_prefix = format!("dlock_{}_", &hex_sha256(schema.as_bytes())[..8]);
        let lease = "$3 * interval '1 millisecond'";
        let tokens = quote_literal(&format!("{s}.dlock_tokens"));
        let acquire = format!(
            "INSERT INTO {s}.dlock_locks AS l (key, owner, token, expires_at) \
             VALUES ($1, $2, nextval({tokens}), clock_timestamp() + {lease}) \
             ON CONFLICT (key) DO UPDATE SET (owner, token, expires_at, waiting_until) = ( \
               SELECT CASE WHEN c.take THEN $2 ELSE l.owner END, \
                      CASE WHEN c.take THEN nextval({tokens}) ELSE l.token END, \
                      CASE WHEN c.take THEN c.now + {lease} ELSE l.expires_at END, \
                      CASE WHEN c.take OR NOT $4 THEN l.waiting_until \
                           ELSE greatest(l.waiting_until, c.now + interval '{WAITING_LIFETIME_MS} milliseconds') END \
               FROM (SELECT n.now, l.owner IS NULL OR l.expires_at <= n.now OR l.owner = $2 AS take \
                     FROM (SELECT clock_timestamp() AS now) n) c) \
             RETURNING CASE WHEN l.owner = $2 THEN l.token END AS token, \
               greatest(0, ceil(extract(epoch FROM l.expires_at - clock_timestamp()) * 1000))::int8 AS remaining_ms"
        );
        let renew = format!(
            "UPDATE {s}.dlock_locks SET expires_at = clock_timestamp() + {lease} \
             WHERE key = $1 AND owner = $2 AND expires_at > clock_timestamp() RETURNING true"
        );
        let release = format!(
            "UPDATE {s}.dlock_locks AS l SET owner = NULL, expires_at = clock_timestamp(), \
               waiting_until = CASE WHEN l.waiting_until > clock_timestamp() THEN '-infinity'::timestamptz END \
             WHERE l.key = $1 AND l.owner = $2 AND l.expires_at > clock_timestamp() \
             RETURNING CASE WHEN l.waiting_until = '-infinity' \
               THEN (SELECT true FROM pg_notify({channel}, '')) ELSE false END AS notified",
            channel = channel_sql(&channel_prefix, "l.key"),
        );
        let check = format!("SELECT {s}.dlock_check($1, $2)");
        // The doomed rows are picked (and locked) once, before the delete: a `key IN
        // (subquery)` may be planned to rescan the subquery.
        let cleanup = format!(
            "WITH doomed AS MATERIALIZED ( \
               SELECT key FROM {s}.dlock_locks \
               WHERE expires_at < clock_timestamp() - $1 * interval '1 microsecond' \
                 AND (waiting_until IS NULL OR waiting_until < clock_timestamp()) \
               LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED) \
             DELETE FROM {s}.dlock_locks AS l USING doomed WHERE l.key = doomed.key \
             RETURNING true"
        );
        Self { acquire, renew, release, check, cleanup, channel_prefix }
    }

    /// The channel on which releases of `key` are announced (when someone waits): the schema's
    /// prefix and 160 bits of the key's SHA-256, so that any key fits PostgreSQL's 63-byte
    /// identifiers and keys of different schemas never share a channel. The release statement
    /// computes the same name in SQL (`channel_sql`).
    pub(super) fn channel(&self, key: &str) -> String {
        let mut name = String::with_capacity(self.channel_prefix.len() + 40);
        name.push_str(&self.channel_prefix);
        name.push_str(&hex_sha256(key.as_bytes())[..40]);
        name
    }
}

/// SQL for the channel of the key in the expression `key` (see [`Statements::channel`]).
fn channel_sql(prefix: &str, key: &str) -> String {
    format!("'{prefix}' || left(encode(sha256(convert_to({key}, 'UTF8')), 'hex'), 40)")
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a quoted SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fit_identifiers_and_differ_by_schema() {
        let a = Statements::new("dlock");
        let b = Statements::new("other");
        let long_key = "k".repeat(5000);
        let channel = a.channel(&long_key);
        assert_eq!(channel.len(), 55, "{channel}");
        assert!(channel.len() <= 63, "PostgreSQL identifiers hold 63 bytes");
        assert!(channel.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_ne!(a.channel("k"), b.channel("k"));
        // SHA-256("k"), as `sha256(convert_to('k', 'UTF8'))` gives it in SQL.
        assert!(a.channel("k").ends_with("_8254c329a92850f6d539dd376f4816ee2764517d"));
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("my\"schema"), "\"my\"\"schema\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
