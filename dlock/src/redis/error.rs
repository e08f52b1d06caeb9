//! From redis-rs errors and odd replies to [`BackendError`]s that say what failed where.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError, Value};

use crate::backend::{BackendError, BackendErrorKind};

/// A redis-rs error as the cause of a [`BackendError`]. redis-rs puts its own cause's text in
/// its message *and* returns that cause from `source()`, so a chain printed with `{:#}` would
/// say it twice: this cause ends the chain when its message already says what is below.
#[derive(Debug)]
pub(super) struct RedisCause(pub(super) RedisError);

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for RedisCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let below = std::error::Error::source(&self.0)?;
        (!self.0.to_string().contains(&below.to_string())).then_some(below)
    }
}

/// What kind of failure `err` is, for callers that retry some and not others.
pub(super) fn classify(err: &RedisError) -> BackendErrorKind {
    let code = err.code();
    if err.kind() == ErrorKind::AuthenticationFailed
        || matches!(code, Some("WRONGPASS" | "NOAUTH"))
        || wraps_refused_credentials(err)
    {
        BackendErrorKind::Auth
    } else if code == Some("NOPERM") || err.to_string().contains("can't run this command") {
        // Inside a script, Redis reports a command the user may not run as a plain error.
        BackendErrorKind::Permission
    } else if err.is_timeout() {
        BackendErrorKind::Timeout
    } else if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        BackendErrorKind::Connection
    } else if matches!(
        code,
        Some(
            "LOADING"
                | "READONLY"
                | "MASTERDOWN"
                | "TRYAGAIN"
                | "OOM"
                | "BUSY"
                | "NOREPLICAS"
                | "MISCONF"
                | "MOVED"
                | "ASK"
                | "CLUSTERDOWN"
        )
    ) {
        // Loading after a restart, a failover under way, a replica, out of memory, a busy
        // script, too few replicas for `min-replicas-to-write`, a failed background save with
        // `stop-writes-on-bgsave-error`, a Redis Cluster failover under way (the cluster
        // connection's few quick retries used up: `MOVED`/`ASK` to a primary that is gone,
        // `CLUSTERDOWN` until a replica takes its slots): the server cannot serve now and may
        // soon.
        BackendErrorKind::Unavailable
    } else {
        BackendErrorKind::Other
    }
}

/// Whether `err` is the cluster client's "Failed to create initial connections", an `Io` error
/// that carries, as text only, a node's refusal of the credentials: the nodes were reached,
/// and retrying or checking the network will not help.
fn wraps_refused_credentials(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Io && {
        let text = err.to_string();
        ["AuthenticationFailed", "WRONGPASS", "NOAUTH"].iter().any(|refusal| text.contains(refusal))
    }
}

/// Whether `err` is a server's answer that it is no Redis Cluster node (`cluster-enabled no`):
/// a `redis-cluster://` URL, or the nodes of a cluster backend, that name a single server.
#[cfg(feature = "redis-cluster")]
pub(super) fn is_not_a_cluster(err: &BackendError) -> bool {
    std::error::Error::source(err)
        .and_then(|cause| cause.downcast_ref::<RedisCause>())
        .is_some_and(|cause| cause.0.to_string().contains("cluster support disabled"))
}

/// A call `what` (e.g. "the acquire script") that Redis at `url` refused or that broke; on a
/// connection to one server unless `cluster`.
pub(super) fn call_error(url: &str, what: &str, err: RedisError, cluster: bool) -> BackendError {
    if let Some(message) = wrong_kind_of_server(url, what, &err, cluster) {
        // No retry mends it: the URL names the wrong kind of server.
        return BackendError::with_source(BackendErrorKind::Other, message, RedisCause(err));
    }
    let kind = classify(&err);
    let message = match kind {
        BackendErrorKind::Auth => {
            format!("Redis at {url} refused {what}: it wants a password, or refused the one in the URL")
        }
        BackendErrorKind::Permission => format!("the Redis user at {url} may not run {what}"),
        _ => format!("Redis at {url} failed {what}"),
    };
    BackendError::with_source(kind, message, RedisCause(err))
}

/// What `err` tells, if it shows that the URL names the wrong kind of server: a cluster node
/// answering `MOVED`/`ASK` on a connection to one server, or a sentinel, which knows no
/// scripts. Both answer `PING`, so connecting alone does not show it.
fn wrong_kind_of_server(url: &str, what: &str, err: &RedisError, cluster: bool) -> Option<String> {
    if !cluster && matches!(err.code(), Some("MOVED" | "ASK")) {
        return Some(format!(
            "Redis at {url} is a Redis Cluster node: it answered {what} with {} (another node serves the key's slot); connect with redis-cluster://host:port,host:port,… (RedisClusterBackend)",
            err.code().unwrap_or("MOVED")
        ));
    }
    let text = err.to_string().to_ascii_lowercase();
    // Redis 7 quotes the command with `'`, Redis 6 with a backtick.
    (text.contains("unknown command") && text.contains("eval")).then(|| {
        format!(
            "Redis at {url} runs no scripts ({what}): it is a Redis Sentinel, not the primary it watches; connect with redis-sentinel://host:port,…/<master name> (RedisSentinelBackend)"
        )
    })
}

/// Whether `err` is Redis Cluster's `TRYAGAIN`: the script named keys of a slot in migration,
/// some moved and some not. A script that names only the lock key can run.
pub(super) fn is_try_again(err: &BackendError) -> bool {
    std::error::Error::source(err)
        .and_then(|cause| cause.downcast_ref::<RedisCause>())
        .is_some_and(|cause| cause.0.code() == Some("TRYAGAIN"))
}

/// A call `what` that got no answer within `timeout`.
pub(super) fn late(url: &str, what: &str, timeout: Duration) -> BackendError {
    BackendError::new(
        BackendErrorKind::Timeout,
        format!("Redis at {url} did not answer {what} within {timeout:?}"),
    )
}

/// Whose certificate a failed TLS handshake was refused over, as rustls words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusedCertificate {
    /// dlock did not accept the server's certificate ("invalid peer certificate: UnknownIssuer",
    /// "… BadSignature", "… NotValidForName").
    Server,
    /// The server verifies clients (`tls-auth-clients yes`) and was shown no certificate
    /// ("received fatal alert: CertificateRequired").
    NoneFromClient,
    /// The server did not accept the client certificate it was shown ("received fatal alert:
    /// UnknownCA", "… BadCertificate", "… CertificateUnknown").
    Client,
}

impl RefusedCertificate {
    /// The refusal `text` (a failure's message) tells of, if any.
    pub(super) fn of(text: &str) -> Option<Self> {
        if text.contains("invalid peer certificate") {
            Some(Self::Server)
        } else if text.contains("received fatal alert: CertificateRequired") {
            Some(Self::NoneFromClient)
        } else if ["UnknownCA", "BadCertificate", "CertificateUnknown"]
            .iter()
            .any(|alert| text.contains(&format!("received fatal alert: {alert}")))
        {
            Some(Self::Client)
        } else {
            None
        }
    }

    /// What was refused, and what to do about it: of one server, or of `several`.
    pub(super) fn explain(self, several: bool) -> String {
        let (they, its, s) = if several { ("they", "their", "s") } else { ("it", "its", "") };
        match self {
            Self::Server => format!(
                "{its} TLS certificate{s} {} not accepted; if a private authority signed {}, pass that authority's certificate with tls_root_certificates, and use a host name or IP address the certificate holds",
                if several { "were" } else { "was" },
                if several { "them" } else { "it" },
            ),
            Self::NoneFromClient => format!(
                "{they} require{} a TLS client certificate (tls-auth-clients); present one with tls_client_certificate",
                if several { "" } else { "s" }
            ),
            Self::Client => format!(
                "{they} did not accept the TLS client certificate; present one that {its} tls-ca-cert-file authority signed, with tls_client_certificate"
            ),
        }
    }
}

/// Connecting to `url` failed.
pub(super) fn connect_error(url: &str, err: RedisError) -> BackendError {
    let message = match RefusedCertificate::of(&err.to_string()) {
        Some(refusal) => format!("could not connect to Redis at {url}: {}", refusal.explain(false)),
        None => format!("could not connect to Redis at {url}"),
    };
    BackendError::with_source(classify(&err), message, RedisCause(err))
}

/// An acquisition that fewer replicas than `wanted` acknowledged within `timeout`.
pub(super) fn not_replicated(url: &str, wanted: u32, acked: i64, timeout: Duration) -> BackendError {
    BackendError::new(
        BackendErrorKind::NotReplicated,
        format!(
            "Redis at {url} took the lock, but {acked} of the {wanted} replicas required acknowledged it within {timeout:?}; it was released (check the replicas' health and lag, or lower replicas_acknowledge)"
        ),
    )
}

/// A reply no script of this version gives: another dlock version (or something else) may
/// share the keys.
pub(super) fn unexpected(url: &str, what: &str, reply: &Value) -> BackendError {
    BackendError::new(
        BackendErrorKind::Other,
        format!(
            "Redis at {url} answered {what} with {reply:?}, which this version of dlock does not expect; do processes running different dlock versions share this Redis?"
        ),
    )
}

/// The URL with its passwords (in the credentials, or a query parameter such as `pass` or
/// `sentinel_password`) replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let (head, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        // `redis:pw@host`: not a URL redis-rs takes, and still no place to show a password.
        None => match url.split_once(':') {
            Some((scheme, rest)) => (format!("{scheme}:"), rest),
            None => (String::new(), url),
        },
    };
    // The last `@` ends the credentials, even when the password holds a `/`, `?` or `@` that
    // was not escaped (a host or a path has none).
    let (masked, host_and_path) = match rest.rsplit_once('@') {
        Some((userinfo, host_and_path)) => {
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => "***@".to_owned(),
            };
            (masked, host_and_path)
        }
        None => (String::new(), rest),
    };
    // Passwords in the query: `redis+unix:///…?pass=`, `redis-sentinel://…?sentinel_password=`.
    let host_and_path = match host_and_path.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("pass") => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => host_and_path.to_owned(),
    };
    format!("{head}{masked}{host_and_path}")
}

#[cfg(test)]
mod tests {
    use super::{RefusedCertificate, classify, redact};
    use crate::backend::BackendErrorKind;

    /// What a Redis Cluster answers while a failover is under way, once the cluster
    /// connection's own retries are used up, is a passing outage that a waiter rides out.
    #[test]
    fn cluster_redirections_and_cluster_down_are_passing() {
        for reply in
            ["MOVED 3699 127.0.0.1:7000", "ASK 3699 127.0.0.1:7000", "CLUSTERDOWN The cluster is down"]
        {
            let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).expect("an error reply");
            let err = value.extract_error().expect_err("an error reply");
            assert_eq!(classify(&err), BackendErrorKind::Unavailable, "{reply}");
        }
    }

    #[test]
    fn certificate_refusals_are_told_apart() {
        let of = RefusedCertificate::of;
        assert_eq!(of("invalid peer certificate: UnknownIssuer"), Some(RefusedCertificate::Server));
        assert_eq!(
            of("Io: received fatal alert: CertificateRequired"),
            Some(RefusedCertificate::NoneFromClient)
        );
        assert_eq!(of("received fatal alert: UnknownCA"), Some(RefusedCertificate::Client));
        assert_eq!(of("Connection refused (os error 111)"), None);
        assert!(RefusedCertificate::NoneFromClient.explain(false).contains("tls_client_certificate"));
        assert!(
            RefusedCertificate::Server.explain(true).starts_with("their TLS certificates were not accepted")
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("redis://:hunter2@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact("redis://alice:hunter2@host"), "redis://alice:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("not a url"), "not a url");
        // A password with `/`, `?` or `@` that was not escaped stays hidden.
        assert_eq!(redact("redis://:p/a?s@s@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact("redis://alice@host"), "redis://***@host");
        assert_eq!(
            redact("redis+unix:///run/r.sock?db=1&pass=hunter2"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redact("redis-sentinel://s:26379?sentinel_password=hunter2"),
            "redis-sentinel://s:26379?sentinel_password=***"
        );
        assert_eq!(redact("redis:hunter2@host"), "redis:***@host");
    }
}
