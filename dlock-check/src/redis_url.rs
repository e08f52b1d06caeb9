//! Backend URLs: pointed at the checker's proxy, resolved, and shown without their password.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::Context;

/// The URL's scheme (`redis`, `postgres`, `redis-cluster`, …), or the whole text if it has
/// none.
pub fn scheme(url: &str) -> &str {
    url.split_once(':').map_or(url, |(scheme, _)| scheme)
}

/// `url` with its host and port replaced (user, password, database and query kept).
pub fn with_host(url: &str, host: IpAddr, port: u16) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").with_context(|| format!("`{url}` has no scheme"))?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    Ok(format!("{scheme}://{userinfo}{host}:{port}{tail}"))
}

/// The address a URL of one server points at (`redis://` without a port: 6379; `postgres://`:
/// 5432).
pub fn socket_addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if scheme.starts_with("postgres") { 5432 } else { 6379 };
    let hostport =
        if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:{default_port}") };
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to nothing"))
}

/// Where the checker's TCP proxy can stand between the workers and the backend at `url` (for
/// `blackhole`, `latency` and `partition`): a plain-TCP URL that names one server, which
/// clients then talk to alone. `Err` says why not.
pub fn proxied_server(url: &str) -> Result<SocketAddr, String> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    match scheme {
        "redis" | "postgres" | "postgresql" => socket_addr_of(url).map_err(|err| format!("{err:#}")),
        "redis-cluster" | "redis-sentinel" | "rediss-cluster" | "rediss-sentinel" => Err(format!(
            "a `{scheme}://` backend is several servers, and clients go to the addresses the servers give them, past a proxy that fronts one"
        )),
        _ => Err(format!("the proxy fronts a plain-TCP server of one address; not a `{scheme}://` backend")),
    }
}

/// The URL with any password masked: the one in its credentials (which end at the last `@`,
/// as dlock reads them, so a password holding `/`, `?` or `@` is masked whole) and the value
/// of any query parameter whose name says password (`sentinel_password=…`, `password=…`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            (format!("{user}:***@"), host)
        }
        None => (String::new(), rest),
    };
    let masked = match rest.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                        format!("{name}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}://{credentials}{masked}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_re_pointed_and_redacted() {
        let to = IpAddr::from([10, 1, 2, 1]);
        assert_eq!(with_host("redis://127.0.0.1:6379", to, 7000).unwrap(), "redis://10.1.2.1:7000");
        assert_eq!(with_host("redis://:pw@h:1/2?x=y", to, 7000).unwrap(), "redis://:pw@10.1.2.1:7000/2?x=y");
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://u:se/c?r@et@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(
            redact("redis-sentinel://h:1/m?sentinel_password=x&y=z"),
            "redis-sentinel://h:1/m?sentinel_password=***&y=z"
        );
        assert_eq!(socket_addr_of("redis://:pw@127.0.0.1:6390/1").unwrap().port(), 6390);
        assert_eq!(socket_addr_of("redis://127.0.0.1").unwrap().port(), 6379);
        assert_eq!(socket_addr_of("postgres://u:pw@127.0.0.1/db").unwrap().port(), 5432);
        assert_eq!(proxied_server("postgres://127.0.0.1:5433/db").unwrap().port(), 5433);
        assert!(
            proxied_server("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap_err().contains("several")
        );
        assert!(proxied_server("rediss://h:1").is_err());
    }
}
