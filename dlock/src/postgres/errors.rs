//! What a failed PostgreSQL call means: a [`BackendErrorKind`] for the service, and a message
//! that names the server (password masked), what failed and what to do.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::backend::{BackendError, BackendErrorKind};

/// The SQLSTATE `dlock_check` raises when the lock is not held with the given token.
pub(super) const NOT_HELD: &str = "DL001";

/// Sort a `tokio_postgres` error into the kinds the service acts on: transient ones
/// (`Connection`, `Timeout`, `Unavailable`) are ridden out by a waiting request.
pub(super) fn classify(err: &tokio_postgres::Error) -> BackendErrorKind {
    if let Some(code) = err.code() {
        return classify_code(code.code());
    }
    if err.is_closed() {
        return BackendErrorKind::Connection;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::TimedOut => BackendErrorKind::Timeout,
                _ => BackendErrorKind::Connection,
            };
        }
        source = cause.source();
    }
    // Client-side authentication failures (a password the server asked for and the URL lacks)
    // carry no SQLSTATE.
    let text = err.to_string();
    if text.contains("password") || text.contains("authentication") {
        BackendErrorKind::Auth
    } else {
        BackendErrorKind::Other
    }
}

fn classify_code(code: &str) -> BackendErrorKind {
    match code {
        // invalid_authorization_specification, invalid_password
        "28000" | "28P01" => BackendErrorKind::Auth,
        // cannot_connect_now (starting up, shutting down, recovering), too_many_connections
        // and the rest of insufficient_resources, read_only_sql_transaction (a standby),
        // lock_not_available, serialization_failure, deadlock_detected
        "57P03" | "25006" | "55P03" | "40001" | "40P01" => BackendErrorKind::Unavailable,
        c if c.starts_with("53") => BackendErrorKind::Unavailable,
        // admin_shutdown, crash_shutdown, idle_session_timeout (the server ended this
        // connection: a statement sent as an idle session is ended gets it), connection_exception
        "57P01" | "57P02" | "57P05" => BackendErrorKind::Connection,
        c if c.starts_with("08") => BackendErrorKind::Connection,
        // query_canceled: a statement_timeout, or the cancel dlock sends after a call timeout
        "57014" => BackendErrorKind::Timeout,
        _ => BackendErrorKind::Other,
    }
}

/// What to do about an error of this kind (or SQLSTATE), for messages.
fn remedy(err: &tokio_postgres::Error, kind: BackendErrorKind, schema: &str) -> String {
    let code = err.code();
    if code == Some(&SqlState::UNDEFINED_TABLE)
        || code == Some(&SqlState::INVALID_SCHEMA_NAME)
        || code == Some(&SqlState::UNDEFINED_FUNCTION)
        || code == Some(&SqlState::UNDEFINED_OBJECT)
    {
        return format!(
            "dlock's tables in schema `{schema}` are missing (dropped after connecting?); reconnect, which creates them, or run `PostgresBackend::builder(url).migrate()`"
        );
    }
    if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return format!(
            "grant the connecting role USAGE on schema `{schema}`, SELECT, INSERT, UPDATE, DELETE on `{schema}.dlock_locks` and USAGE on `{schema}.dlock_tokens`"
        );
    }
    if code == Some(&SqlState::INVALID_CATALOG_NAME) {
        return "the database in the URL does not exist; create it or fix the URL".into();
    }
    match kind {
        BackendErrorKind::Auth => {
            "PostgreSQL refused the credentials; check the user and password in the URL (and pg_hba.conf)".into()
        }
        BackendErrorKind::Connection | BackendErrorKind::Timeout => {
            "is PostgreSQL running and reachable at that address?".into()
        }
        BackendErrorKind::Unavailable => {
            "the server cannot serve right now (starting up, shutting down, out of connections, or a read-only standby); dlock retries while it waits, otherwise try again shortly".into()
        }
        _ => "check the URL, the server's log and the connecting role's privileges".into(),
    }
}

/// A call that failed with `err`.
pub(super) fn call_error(url: &str, schema: &str, what: &str, err: tokio_postgres::Error) -> BackendError {
    let kind = classify(&err);
    let message =
        format!("PostgreSQL at {url} failed {what}: {}; {}", detail(&err), remedy(&err, kind, schema));
    BackendError::with_source(kind, message, err)
}

/// Connecting (or preparing the schema) failed with `err`.
pub(super) fn connect_error(url: &str, schema: &str, what: &str, err: tokio_postgres::Error) -> BackendError {
    let kind = classify(&err);
    let message = format!("could not {what} at {url}: {}; {}", detail(&err), remedy(&err, kind, schema));
    BackendError::with_source(kind, message, err)
}

/// A call that got no answer within `timeout`: its statement was sent (and is cancelled), or,
/// with `sent` false, no pooled connection came free in time to send it on.
pub(super) fn timeout_error(url: &str, what: &str, timeout: Duration, sent: bool) -> BackendError {
    let message = if sent {
        format!(
            "PostgreSQL at {url} did not answer {what} within {timeout:?}; is it running, reachable and not overloaded? (the statement was cancelled)"
        )
    } else {
        format!(
            "no connection to PostgreSQL at {url} came free for {what} within {timeout:?}: every pooled connection was busy or could not be made; is it running and reachable, or is the pool (`pool_size`) too small for the load?"
        )
    };
    BackendError::new(BackendErrorKind::Timeout, message)
}

/// The server's own message when there is one (tokio_postgres's `Display` says only "db error").
fn detail(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => err.to_string(),
    }
}

/// The URL with its password (in the authority or a `password=` parameter) replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: a `key=value` connection string (`host=db password=…`) or a typo. What
        // follows `password` may be quoted, spaced or escaped: none of it is shown.
        return match url.to_ascii_lowercase().find("password") {
            Some(i) => format!("{}password=***…", url.get(..i).unwrap_or_default()),
            None if url.contains('@') => "***".to_owned(),
            None => url.to_owned(),
        };
    };
    // tokio-postgres takes everything before the first `@` as the credentials, a `/` or `?` in
    // the password included; a host never holds a `@`, so the credentials end at the last `@`
    // before the path or query that follows the first one.
    let (userinfo, rest) = match rest.split_once('@') {
        Some((first, after)) => {
            let host_end = after.find(['/', '?']).unwrap_or(after.len());
            let (host, tail) = after.split_at(host_end);
            match host.rsplit_once('@') {
                Some((more, host)) => (Some(format!("{first}@{more}")), format!("{host}{tail}")),
                None => (Some(first.to_owned()), after.to_owned()),
            }
        }
        None => (None, rest.to_owned()),
    };
    let userinfo = userinfo.map(|userinfo| match userinfo.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?']) => format!("{user}:***@"),
        Some(_) => "***@".to_owned(),
        None if userinfo.contains(['/', '?', '=']) => "***@".to_owned(),
        None => format!("{userinfo}@"),
    });
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest.as_str(), None),
    };
    let query = query.map(|query| {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                // tokio-postgres decodes parameter names: `pass%77ord` is `password`.
                Some((key, _)) if key == "password" || key.contains('%') => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        format!("?{}", params.join("&"))
    });
    format!("{scheme}://{}{before_query}{}", userinfo.unwrap_or_default(), query.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("postgres://app:hunter2@db:5432/prod"), "postgres://app:***@db:5432/prod");
        assert_eq!(redact("postgresql://app@db/prod"), "postgresql://app@db/prod");
        assert_eq!(redact("postgres://app:hun/ter2@db:5432/prod"), "postgres://app:***@db:5432/prod");
        assert_eq!(redact("postgres://app:hun?ter2@db/prod"), "postgres://app:***@db/prod");
        assert_eq!(redact("postgres://app:hun@ter2@db/prod"), "postgres://app:***@db/prod");
        assert_eq!(redact("postgres://db/prod?pass%77ord=hunter2"), "postgres://db/prod?pass%77ord=***");
        assert_eq!(redact("host=db user=app password=hunter2"), "host=db user=app password=***…");
        assert_eq!(
            redact("postgres://db/prod?user=app&password=hunter2&sslmode=disable"),
            "postgres://db/prod?user=app&password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://a:b@[::1]:5432"), "postgres://a:***@[::1]:5432");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(classify_code("28P01"), BackendErrorKind::Auth);
        assert_eq!(classify_code("57P03"), BackendErrorKind::Unavailable);
        assert_eq!(classify_code("53300"), BackendErrorKind::Unavailable);
        assert_eq!(classify_code("57P01"), BackendErrorKind::Connection);
        assert_eq!(classify_code("57P05"), BackendErrorKind::Connection);
        assert_eq!(classify_code("08006"), BackendErrorKind::Connection);
        assert_eq!(classify_code("57014"), BackendErrorKind::Timeout);
        assert_eq!(classify_code("42P01"), BackendErrorKind::Other);
    }
}
