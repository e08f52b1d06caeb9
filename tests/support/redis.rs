//! Reaching Redis: the machine's shared server ([`shared_redis_url`], and [`unique_prefix`],
//! the key namespace that keeps one test apart from every other user of it), dlock's client
//! ([`connect_redis`], [`connect_redis_with`]), and a plain connection that is not dlock's
//! ([`inspector`], [`redis_cmd`]: one raw command, for inspection or fault injection;
//! [`subscribers_on`]: who listens on a channel of a private server; [`replica_forgets`]: a
//! private replica loses a lock, as one that had not received it).

use std::time::Duration;

use dlock::RedisBackend;
use redis::aio::MultiplexedConnection;

/// The machine's shared Redis (`DLOCK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
/// Tests that use it must confine themselves to keys under a [`unique_prefix`].
pub fn shared_redis_url() -> String {
    std::env::var("DLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `dlock-test:<test_name>:<pid>-<random>:`: a key namespace no other test run uses.
pub fn unique_prefix(test_name: &str) -> String {
    format!("dlock-test:{test_name}:{}-{:08x}:", std::process::id(), rand::random::<u32>())
}

/// A `RedisBackend` on `url` with its default call timeout; panics if it cannot connect.
pub async fn connect_redis(url: &str) -> RedisBackend {
    RedisBackend::connect(url).await.unwrap_or_else(|err| panic!("connecting a RedisBackend to {url}: {err}"))
}

/// A `RedisBackend` on `url` whose every call gives up after `call_timeout`; panics if it
/// cannot connect.
pub async fn connect_redis_with(url: &str, call_timeout: Duration) -> RedisBackend {
    RedisBackend::builder(url)
        .call_timeout(call_timeout)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting a RedisBackend to {url}: {err}"))
}

/// A plain `redis` connection for inspecting what the store holds.
pub async fn inspector(url: &str) -> MultiplexedConnection {
    let client =
        redis::Client::open(url).unwrap_or_else(|err| panic!("opening a Redis client for {url}: {err}"));
    tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} for inspection timed out; is Redis running there?"))
        .unwrap_or_else(|err| panic!("connecting to {url} for inspection: {err}; is Redis running there?"))
}

/// Run one raw command (`args[0]` and its arguments); panic if Redis refuses it.
pub async fn redis_cmd<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|err| panic!("{args:?}: {err}"))
}

/// How many clients are subscribed to `channel` on the private server at `port`: `PUBSUB
/// NUMSUB`, or with `sharded` `PUBSUB SHARDNUMSUB` (a cluster node's sharded channels).
pub fn subscribers_on(port: u16, channel: &str, sharded: bool) -> i64 {
    let numsub = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
    let (_, count): (String, i64) = super::redis_process::query(port, &["PUBSUB", numsub, channel])
        .unwrap_or_else(|err| panic!("PUBSUB {numsub} {channel}: {err}"));
    count
}

/// Make the private replica at `url` lose the lock `key` once it has received it, as a replica
/// that had not received it would have: it is made writable (`replica-read-only no`) and the
/// key is removed there alone. A cluster replica (`cluster`) redirects key writes to its
/// primary even then, so it is emptied with `FLUSHALL`, the keyless write it serves itself.
pub async fn replica_forgets(url: &str, key: &str, cluster: bool) {
    let client = redis::Client::open(url).unwrap_or_else(|err| panic!("{url}: {err}"));
    let mut conn = client.get_multiplexed_async_connection().await.expect("replica connection");
    if cluster {
        let _: () = redis_cmd(&mut conn, &["READONLY"]).await;
    }
    super::poll::poll_until(Duration::from_secs(5), "the replica receiving the lock", || {
        let mut conn = conn.clone();
        async move { redis_cmd::<bool>(&mut conn, &["EXISTS", key]).await }
    })
    .await;
    let _: () = redis_cmd(&mut conn, &["CONFIG", "SET", "replica-read-only", "no"]).await;
    if cluster {
        let _: () = redis_cmd(&mut conn, &["FLUSHALL"]).await;
    } else {
        let _: i64 = redis_cmd(&mut conn, &["DEL", key]).await;
    }
    assert!(!redis_cmd::<bool>(&mut conn, &["EXISTS", key]).await, "the replica no longer has {key}");
}
