//! [`RedisSentinelStore`]: a key namespace of one test's own on a Sentinel-managed primary, as
//! a [`Store`].

use std::sync::Arc;
use std::time::Duration;

use dlock::backend::BoxFuture;
use dlock::{LockBackend, RedisSentinelBackend};

use super::redis_store::RedisStore;
use super::store::{Features, Store};

/// One test's namespace on the primary of the sentinel group `master` that `sentinels` watch.
/// Clients are `RedisSentinelBackend`s ("other processes"); inspection goes straight to the
/// primary the sentinels name when the store is made (a [`RedisStore`] on it, sharing the
/// namespace).
#[derive(Debug, Clone)]
pub struct RedisSentinelStore {
    sentinels: Vec<String>,
    master: String,
    call_timeout: Duration,
    direct: RedisStore,
}

impl RedisSentinelStore {
    /// A namespace on the group's primary; clients use `call_timeout`.
    pub async fn on(sentinels: &[String], master: &str, test_name: &str, call_timeout: Duration) -> Self {
        let primary = primary_url(sentinels, master).await;
        let direct = RedisStore::on(&primary, test_name).await;
        Self { sentinels: sentinels.to_vec(), master: master.to_owned(), call_timeout, direct }
    }

    /// A new client of the group.
    pub async fn sentinel_client(&self) -> RedisSentinelBackend {
        RedisSentinelBackend::builder(self.sentinels.clone(), &self.master)
            .call_timeout(self.call_timeout)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connecting a RedisSentinelBackend to {:?}: {err}", self.sentinels))
    }
}

/// `redis://host:port` of the primary the first answering sentinel names.
pub async fn primary_url(sentinels: &[String], master: &str) -> String {
    for sentinel in sentinels {
        let Ok(client) = redis::Client::open(sentinel.as_str()) else { continue };
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await
        else {
            continue;
        };
        let named: Result<Option<(String, u16)>, _> =
            redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(master).query_async(&mut conn).await;
        if let Ok(Some((host, port))) = named {
            return format!("redis://{host}:{port}");
        }
    }
    panic!("no sentinel of {sentinels:?} names a primary for {master}")
}

impl Store for RedisSentinelStore {
    fn name(&self) -> &'static str {
        "redis-sentinel"
    }

    fn prefix(&self) -> &str {
        self.direct.prefix()
    }

    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>> {
        Box::pin(async { Arc::new(self.sentinel_client().await) as Arc<dyn LockBackend> })
    }

    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        self.direct.is_held(key)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        self.direct.delete(key)
    }

    fn features(&self) -> Features {
        Features { release_notices: true, handoff: true, isolated: false }
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        self.direct.cleanup()
    }

    fn owner<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Option<String>>> {
        self.direct.owner(key)
    }

    fn held_keys(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        self.direct.held_keys()
    }

    fn fencing_counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<u64>> {
        self.direct.fencing_counter(key)
    }
}
