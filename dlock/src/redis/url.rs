//! The URL forms of the cluster and sentinel backends, for [`connect`](fn@crate::connect):
//!
//! - `redis-cluster://[[user]:password@]host:port,host:port,…` (`rediss-cluster://` for TLS):
//!   seed nodes, all with the same credentials;
//! - `redis-sentinel://[[user]:password@]host:port,host:port,…/<master name>[/<db>][?sentinel_password=…]`:
//!   sentinels, the primary's credentials (and the sentinels' password, if they have one).

#![cfg_attr(not(all(feature = "redis-cluster", feature = "redis-sentinel")), allow(dead_code))]

use super::error::redact;
use crate::error::Error;

/// The parts of a `redis-cluster://` or `redis-sentinel://` URL before its path.
struct Hosts<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    rest: &'a str,
}

fn invalid(url: &str, expected: &str, why: &str) -> Error {
    Error::InvalidInput {
        what: "backend URL",
        reason: format!("`{}` {why}; expected {expected}", redact(url)),
    }
}

fn hosts<'a>(url: &'a str, scheme: &str, expected: &str) -> Result<Hosts<'a>, Error> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .ok_or_else(|| invalid(url, expected, "has another scheme"))?;
    // The last `@` ends the credentials, even when the password holds a `/`, `?` or `@` that
    // was not escaped (hosts and the path have none).
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let (hosts, rest) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).filter(|host| !host.is_empty()).collect();
    if hosts.is_empty() {
        return Err(invalid(url, expected, "names no host"));
    }
    Ok(Hosts { userinfo, hosts, rest })
}

const CLUSTER_FORM: &str =
    "redis-cluster://[[user]:password@]host:port,host:port,… (rediss-cluster:// for TLS)";

/// The seed node URLs of a `redis-cluster://` (or `rediss-cluster://`) URL.
pub(crate) fn cluster_nodes(url: &str) -> Result<Vec<String>, Error> {
    let (scheme, node_scheme) = if url.starts_with("rediss-cluster:") {
        ("rediss-cluster", "rediss")
    } else {
        ("redis-cluster", "redis")
    };
    let parts = hosts(url, scheme, CLUSTER_FORM)?;
    if !matches!(parts.rest, "" | "/") {
        return Err(invalid(
            url,
            CLUSTER_FORM,
            "has a path or query, which a cluster URL does not take (a cluster has one database)",
        ));
    }
    Ok(parts
        .hosts
        .iter()
        .map(|host| match parts.userinfo {
            Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}"),
            None => format!("{node_scheme}://{host}"),
        })
        .collect())
}

const SENTINEL_FORM: &str =
    "redis-sentinel://[[user]:password@]host:port,host:port,…/<master name>[/<db>][?sentinel_password=…]";

/// What a `redis-sentinel://` URL says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    pub(crate) sentinels: Vec<String>,
    pub(crate) master_name: String,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// The parts of a `redis-sentinel://` URL.
pub(crate) fn sentinel(url: &str) -> Result<SentinelUrl, Error> {
    let parts = hosts(url, "redis-sentinel", SENTINEL_FORM)?;
    let (path, query) = match parts.rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => (parts.rest, ""),
    };
    let mut segments = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty());
    let master_name = segments.next().ok_or_else(|| invalid(url, SENTINEL_FORM, "names no master"))?;
    let db = match segments.next() {
        Some(db) => {
            db.parse().map_err(|_| invalid(url, SENTINEL_FORM, "has a database that is not a number"))?
        }
        None => 0,
    };
    if segments.next().is_some() {
        return Err(invalid(url, SENTINEL_FORM, "has more path than a master name and a database"));
    }
    let mut sentinel_password = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_password", value)) if sentinel_password.is_none() => {
                sentinel_password = Some(value)
            }
            Some(("sentinel_password", _)) => {
                return Err(invalid(url, SENTINEL_FORM, "has sentinel_password twice"));
            }
            _ => {
                return Err(invalid(
                    url,
                    SENTINEL_FORM,
                    "has a query parameter other than sentinel_password",
                ));
            }
        }
    }
    // As redis-rs reads `redis://` URLs: `user:password`, `:password` or `user`,
    // percent-encoded.
    let (username, password) = match parts.userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, password)) => ((!user.is_empty()).then(|| decode(user)), Some(decode(password))),
            None => ((!userinfo.is_empty()).then(|| decode(userinfo)), None),
        },
        None => (None, None),
    };
    let sentinels = parts
        .hosts
        .iter()
        .map(|host| match sentinel_password {
            Some(password) => format!("redis://:{password}@{host}"),
            None => format!("redis://{host}"),
        })
        .collect();
    Ok(SentinelUrl { sentinels, master_name: master_name.to_owned(), db, username, password })
}

/// `text` with its `%XX` escapes decoded (an escape that is not one stays as it is).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_seed_nodes() {
        assert_eq!(
            cluster_nodes("redis-cluster://:pw@10.0.0.1:7000,10.0.0.2:7000").ok(),
            Some(vec!["redis://:pw@10.0.0.1:7000".to_owned(), "redis://:pw@10.0.0.2:7000".to_owned()])
        );
        assert_eq!(cluster_nodes("rediss-cluster://h:7000/").ok(), Some(vec!["rediss://h:7000".to_owned()]));
        for bad in ["redis-cluster://", "redis-cluster://h:1/0", "redis-cluster://:secret@"] {
            match cluster_nodes(bad) {
                Err(Error::InvalidInput { reason, .. }) => {
                    assert!(reason.contains("expected redis-cluster://"), "{reason}");
                    assert!(!reason.contains("secret"), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_db() {
        assert_eq!(
            sentinel("redis-sentinel://app:pw@s1:26379,s2:26379/payments/2?sentinel_password=sp").ok(),
            Some(SentinelUrl {
                sentinels: vec!["redis://:sp@s1:26379".to_owned(), "redis://:sp@s2:26379".to_owned()],
                master_name: "payments".to_owned(),
                db: 2,
                username: Some("app".to_owned()),
                password: Some("pw".to_owned()),
            })
        );
        assert_eq!(
            sentinel("redis-sentinel://s1:26379/mymaster").ok().map(|u| (u.sentinels, u.db, u.password)),
            Some((vec!["redis://s1:26379".to_owned()], 0, None))
        );
        // Percent-encoded credentials are decoded; a password with an unescaped `/` still
        // ends at the last `@`.
        assert_eq!(
            sentinel("redis-sentinel://app:p%40ss@s1:26379/m").ok().map(|u| (u.username, u.password)),
            Some((Some("app".to_owned()), Some("p@ss".to_owned())))
        );
        assert_eq!(
            sentinel("redis-sentinel://:pa/ss@s1:26379/m").ok().map(|u| (u.password, u.master_name)),
            Some((Some("pa/ss".to_owned()), "m".to_owned()))
        );
        for bad in [
            "redis-sentinel://s1:26379",
            "redis-sentinel://s1:26379/m/x",
            "redis-sentinel://s1:26379/m/0/extra",
            "redis-sentinel://s1:26379/m?password=x",
            "redis-sentinel://s1:26379/m?sentinel_password=a&sentinel_password=b",
        ] {
            assert!(matches!(sentinel(bad), Err(Error::InvalidInput { .. })), "{bad}");
        }
    }
}
