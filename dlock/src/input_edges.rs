//! Malformed and edge inputs thrown at every entry point a user's input reaches before a lock
//! is taken: no panic, the right error, and no secret (every one spelled with `SECRET`) in an
//! error's `Display` or `Debug`, nor in a builder's `Debug`.

use std::time::Duration;

use crate::{ConnectOptions, Error, connect_with};

/// Every secret in these tables contains this, and nothing else does.
const SECRET: &str = "SECRET";

/// Options that fail fast against a port where nothing listens.
fn quick() -> ConnectOptions {
    ConnectOptions::default().call_timeout(Duration::from_millis(500))
}

/// `url` through `connect_with`: no panic, an error (or a backend), no secret shown.
async fn connect_shows_no_secret(url: &str) -> Result<String, Error> {
    match connect_with(url, quick()).await {
        Ok(backend) => Ok(format!("{backend:?}")),
        Err(err) => {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(SECRET), "{url}: a secret in the error: {shown}");
            Err(err)
        }
    }
}

#[tokio::test]
async fn malformed_urls_are_invalid_input_without_panic_or_secret() {
    let mut urls =
        vec!["", ":", "://", "host=127.0.0.1 port=1 password=SECRET", "zookeeper://:SECRET@h", "memory"];
    if cfg!(feature = "redis") {
        urls.extend([
            "redis://",
            "redis://[",
            "redis://[::1",
            "redis://:SECRET@[::1",
            "redis://:SECRET@127.0.0.1:99999",
            "redis://:SECRET@127.0.0.1:1/18446744073709551615",
            "redis://:SECRET@127.0.0.1:1/x",
            "redis://0.0.0.0",
            "redis:SECRET@127.0.0.1",
        ]);
    }
    if cfg!(feature = "redis-cluster") {
        urls.extend([
            "redis-cluster://",
            "redis-cluster://,,,",
            "redis-cluster://@",
            "redis-cluster://:SECRET@",
            "redis-cluster://:SECRET@h:1/0",
            "redis-cluster://:SECRET@h:1?x=1",
            "rediss-cluster:",
            "redis-cluster::SECRET@h:1",
        ]);
    }
    if cfg!(feature = "redis-sentinel") {
        urls.extend([
            "redis-sentinel://",
            "redis-sentinel://@/",
            "redis-sentinel://:SECRET@",
            "redis-sentinel://:SECRET@127.0.0.1:1",
            "redis-sentinel://127.0.0.1:1?sentinel_password=SECRET",
            "redis-sentinel://127.0.0.1:1/m/x?sentinel_password=SECRET",
            "redis-sentinel://127.0.0.1:1/m/0/extra?sentinel_password=SECRET",
            "redis-sentinel://:SECRET@127.0.0.1:1/m/x?sentinel_password=SECRET",
            "redis-sentinel://127.0.0.1:1/m/18446744073709551615?sentinel_password=SECRET",
            "redis-sentinel://127.0.0.1:1/m?sentinel_password=SECRET&other=1",
            "redis-sentinel://127.0.0.1:1/m?sentinel_password",
        ]);
    }
    if cfg!(feature = "postgres") {
        urls.extend([
            "postgres://",
            "postgres://[",
            "postgres://app:SECRET@[::1/x",
            "postgres://app:SECRET@127.0.0.1:99999/x",
            "postgres://app:SECRET@127.0.0.1:1/x?sslmode=require",
            "postgres://app:SECRET@127.0.0.1:1/x?sslmode=bogus",
            "postgres://127.0.0.1:1/x?password=SECRET&sslmode=require",
            "postgres://127.0.0.1:1/x?pass%77ord=SECRET&sslmode=require",
            "postgres://app:SECRET/SECRET@127.0.0.1:1/x?sslmode=require",
            "postgres://app:SECRET?SECRET@127.0.0.1:1/x?sslmode=require",
            "postgres://127.0.0.1:1/x?connect_timeout=18446744073709551615&password=SECRET",
            "postgres:host=127.0.0.1 port=1 user=app password=SECRET",
            "postgresql:password=SECRET",
        ]);
    }
    for url in urls {
        match connect_shows_no_secret(url).await {
            Err(Error::InvalidInput { what, reason }) => {
                assert!(!what.is_empty() && !reason.is_empty(), "{url}");
            }
            other => panic!("{url}: expected InvalidInput, got {other:?}"),
        }
    }
}

/// A URL that parses but reaches nothing: a backend error, still without the secret.
#[tokio::test]
async fn unreachable_servers_are_told_without_secrets() {
    let mut urls: Vec<&str> = Vec::new();
    if cfg!(feature = "redis") {
        urls.extend(["redis://:SECRET@127.0.0.1:1", "redis://user:SE%2FCRET@127.0.0.1:1/0"]);
    }
    if cfg!(feature = "redis-sentinel") {
        urls.extend(["redis-sentinel://app:SECRET@127.0.0.1:1/m?sentinel_password=SECRET"]);
    }
    if cfg!(feature = "postgres") {
        urls.extend([
            "postgres://app:SECRET@127.0.0.1:1/x",
            "postgres://127.0.0.1:1/x?password=SECRET",
            // tokio-postgres takes everything before the first `@` as the credentials, an
            // unescaped `/` or `?` in the password included.
            "postgres://app:SECRET/SECRET@127.0.0.1:1/x",
            "postgres://app:SECRET?SECRET@127.0.0.1:1/x",
            // and decodes parameter names.
            "postgres://127.0.0.1:1/x?pass%77ord=SECRET",
        ]);
    }
    for url in urls {
        match connect_shows_no_secret(url).await {
            Err(Error::Backend { .. } | Error::InvalidInput { .. }) => {}
            other => panic!("{url}: expected an error, got {other:?}"),
        }
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_unix_socket_passwords_stay_hidden() {
    for url in [
        "redis+unix:///tmp/dlock-review-none.sock?pass=SECRET",
        "unix:///tmp/dlock-review-none.sock?db=1&pass=SECRET",
        "valkey+unix:///tmp/dlock-review-none.sock?pass=SECRET",
    ] {
        let builder = crate::RedisBackend::builder(url).call_timeout(Duration::from_millis(300));
        let debug = format!("{builder:?}");
        assert!(!debug.contains(SECRET), "{url}: {debug}");
        let err = builder.connect().await.err().map(|err| format!("{err} {err:?}"));
        assert!(err.as_ref().is_some_and(|err| !err.contains(SECRET)), "{url}: {err:?}");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_builder_debug_hides_passwords() {
    for url in [
        "postgres://app:SECRET@db/x",
        "postgres://db/x?password=SECRET",
        "postgres://app:SECRET/SECRET@db/x",
        "host=db password=SECRET",
    ] {
        let builder = crate::PostgresBackend::builder(url).listen_url(url);
        let debug = format!("{builder:?}");
        assert!(!debug.contains(SECRET), "{url}: {debug}");
    }
}

/// Options that are not options of that URL are refused, not ignored.
#[tokio::test]
async fn options_that_would_be_ignored_are_invalid_input() {
    let mut urls = vec!["memory://127.0.0.1:6379", "memory:anything", "memory:?ttl=5"];
    if cfg!(feature = "redis-sentinel") {
        // The second `sentinel_password` silently replaced the first.
        urls.push("redis-sentinel://127.0.0.1:1/m?sentinel_password=a&sentinel_password=b");
    }
    for url in urls {
        match connect_with(url, quick()).await {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("{url}: expected InvalidInput, got {other:?}"),
        }
    }
}

/// Query parameters redis-rs ignores on a `redis://` URL (a database given as `?db=3` would
/// silently be database 0; a password given as `?password=` would be sent nowhere).
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_query_parameters_redis_ignores_are_invalid_input() {
    for url in [
        "redis://127.0.0.1:6379/?db=3",
        "redis://127.0.0.1:6379?password=SECRET",
        "redis://127.0.0.1:6379/0?protocl=resp3",
    ] {
        match connect_shows_no_secret(url).await {
            Err(Error::InvalidInput { what: "Redis URL", reason }) => {
                assert!(reason.contains("redis://"), "{url}: {reason}");
            }
            other => panic!("{url}: expected InvalidInput, got {other:?}"),
        }
    }
}

/// Odd but valid inputs work.
#[cfg(feature = "redis")]
#[tokio::test]
async fn odd_but_valid_redis_inputs_work() {
    let url = "redis://127.0.0.1:6379/0";
    let backend = connect_with(url, ConnectOptions::default().call_timeout(Duration::MAX)).await;
    let backend = backend.expect("Duration::MAX is no bound");
    let prefix = format!("dlock-reviewI-{}:", rand::random::<u64>());
    for service in [
        crate::LockService::builder_from_arc(backend.clone()).key_prefix(prefix.as_str()).build(),
        crate::LockService::builder_from_arc(backend.clone())
            .key_prefix(prefix.as_str())
            .default_ttl(Duration::MAX)
            .default_wait(Duration::MAX)
            .build(),
    ] {
        for key in
            ["ключ:🔒", "{user:7}:cart", "{}", "}{", "a{", "\u{0}", " ", "%00", "a".repeat(10_000).as_str()]
        {
            let guard = service.lock(key).wait(Duration::MAX).await.expect("an odd key");
            guard.release().await.expect("released");
        }
        assert!(matches!(
            service.lock("k").ttl(Duration::MAX).await,
            Err(Error::InvalidInput { what: "ttl", .. })
        ));
        assert!(matches!(
            service.lock("k").ttl(Duration::ZERO).await,
            Err(Error::InvalidInput { what: "ttl", .. })
        ));
        assert!(matches!(service.lock("").await, Err(Error::InvalidInput { what: "key", .. })));
        assert!(matches!(service.lock("a#dlock:b").await, Err(Error::InvalidInput { .. })));
    }
}
