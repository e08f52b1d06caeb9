//! Redis URLs: pointed at the checker's proxy, resolved, and shown without their password.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::Context;

/// `url` with its host and port replaced (user, password, database and query kept).
pub fn with_host(url: &str, host: IpAddr, port: u16) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").with_context(|| format!("`{url}` has no scheme"))?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    Ok(format!("{scheme}://{userinfo}{host}:{port}{tail}"))
}

/// The address a Redis URL points at.
pub fn socket_addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:6379") };
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to nothing"))
}

/// The URL with any password masked.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..end].rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    format!("{scheme}://{user}:***@{host}{}", &rest[end..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
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
        assert_eq!(socket_addr_of("redis://:pw@127.0.0.1:6390/1").unwrap().port(), 6390);
        assert_eq!(socket_addr_of("redis://127.0.0.1").unwrap().port(), 6379);
    }
}
