//! Deleting a key behind dlock's back (`drop-key`, the planted release bug) where the store
//! asks for credentials: a Sentinel group whose sentinels have a password of their own.
//!
//! Starts its own `redis-server`s (it must be installed).

use std::time::Duration;

use dlock_check::forcer::KeyForcer;
use dlock_check::servers::{Mode, RedisServer};

const BOUND: Duration = Duration::from_secs(5);

async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"));
    let connecting = match &client {
        Ok(client) => tokio::time::timeout(BOUND, client.get_multiplexed_async_connection()).await,
        Err(err) => panic!("a client for port {port}: {err}"),
    };
    match connecting {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => panic!("connecting to port {port}: {err}"),
        Err(_) => panic!("connecting to port {port} took over {BOUND:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_deleted_through_sentinels_that_have_a_password() {
    let dir = std::env::temp_dir().join(format!("dlock-check-forcer-{}", std::process::id()));
    let primary = RedisServer::start(&dir, "primary").expect("a primary");
    let conf = format!("sentinel monitor guarded 127.0.0.1 {} 1\n", primary.port());
    let sentinel = RedisServer::start_with(&dir, "sentinel", Mode::Sentinel(conf), |_| Ok(Vec::new()))
        .expect("a sentinel");
    // The sentinel's password (`@` in it: the URL carries it percent-encoded).
    let mut to_sentinel = connection(sentinel.port()).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("resetpass")
        .arg(">s@cret")
        .query_async(&mut to_sentinel)
        .await
        .expect("a password on the sentinel");
    let mut to_primary = connection(primary.port()).await;
    let _: () = redis::cmd("SET")
        .arg("dlock-check:forcer:k")
        .arg("1")
        .query_async(&mut to_primary)
        .await
        .expect("SET");

    let without =
        KeyForcer::for_url(&format!("redis-sentinel://127.0.0.1:{}/guarded", sentinel.port()), BOUND);
    let refused = without.ready().await.expect_err("a sentinel with a password refuses a client without it");
    assert!(refused.contains("NOAUTH") || refused.contains("uthentication"), "{refused}");

    let url = format!("redis-sentinel://127.0.0.1:{}/guarded?sentinel_password=s%40cret", sentinel.port());
    let forcer = KeyForcer::for_url(&url, BOUND);
    forcer.ready().await.expect("the forcer reaches the primary the sentinel names");
    assert_eq!(forcer.delete("dlock-check:forcer:k").await, Ok(true));
    let left: Option<String> =
        redis::cmd("GET").arg("dlock-check:forcer:k").query_async(&mut to_primary).await.expect("GET");
    assert_eq!(left, None, "the key is gone from the primary");
    assert_eq!(forcer.delete("dlock-check:forcer:k").await, Ok(false), "a second delete finds nothing");

    drop((sentinel, primary));
    let _ = std::fs::remove_dir_all(&dir);
}
