//! [`RedisClusterStore`]: a key namespace of one test's own on a Redis Cluster, as a [`Store`].

use std::sync::Arc;
use std::time::Duration;

use dlock::backend::BoxFuture;
use dlock::{LockBackend, RedisClusterBackend};
use redis::cluster_async::ClusterConnection;

use super::redis::unique_prefix;
use super::store::{Features, Store};

/// One test's namespace on a Redis Cluster reached through `seeds`. Clients are
/// `RedisClusterBackend`s with connections of their own ("other processes"); a plain cluster
/// connection inspects what the cluster holds.
#[derive(Clone)]
pub struct RedisClusterStore {
    seeds: Vec<String>,
    namespace: String,
    prefix: String,
    conn: ClusterConnection,
    call_timeout: Duration,
}

impl std::fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterStore").field("seeds", &self.seeds).field("prefix", &self.prefix).finish()
    }
}

impl RedisClusterStore {
    /// A namespace on the cluster at `seeds`, whose clients use the default call timeout.
    pub async fn on(seeds: &[String], test_name: &str) -> Self {
        Self::with_call_timeout(seeds, test_name, dlock::RedisBackend::DEFAULT_CALL_TIMEOUT).await
    }

    /// A namespace on the cluster at `seeds`, whose clients give up on a call after
    /// `call_timeout`.
    pub async fn with_call_timeout(seeds: &[String], test_name: &str, call_timeout: Duration) -> Self {
        let namespace = unique_prefix(test_name);
        Self {
            seeds: seeds.to_vec(),
            prefix: format!("{namespace}lock:"),
            namespace,
            conn: cluster_inspector(seeds).await,
            call_timeout,
        }
    }

    /// A plain cluster connection (not dlock's), for inspection and raw commands.
    pub fn conn(&self) -> ClusterConnection {
        self.conn.clone()
    }

    /// A new client of the cluster, as a `RedisClusterBackend`.
    pub async fn cluster_client(&self) -> RedisClusterBackend {
        RedisClusterBackend::builder(self.seeds.clone())
            .call_timeout(self.call_timeout)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connecting a RedisClusterBackend to {:?}: {err}", self.seeds))
    }

    async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut self.conn()).await.unwrap_or_else(|err| panic!("{args:?}: {err}"))
    }

    /// The value stored under `key` (without the prefix): `<token>:<owner>`.
    pub async fn stored_value(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", &self.full_key(key)]).await
    }
}

/// A plain connection to the cluster at `seeds`.
pub async fn cluster_inspector(seeds: &[String]) -> ClusterConnection {
    let client = redis::cluster::ClusterClient::new(seeds.to_vec())
        .unwrap_or_else(|err| panic!("a cluster client for {seeds:?}: {err}"));
    tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
        .await
        .unwrap_or_else(|_| panic!("connecting to the cluster {seeds:?} timed out"))
        .unwrap_or_else(|err| panic!("connecting to the cluster {seeds:?}: {err}"))
}

impl Store for RedisClusterStore {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>> {
        Box::pin(async { Arc::new(self.cluster_client().await) as Arc<dyn LockBackend> })
    }

    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.cmd(&["EXISTS", &self.full_key(key)]).await })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let full_key = self.full_key(key);
            let removed: i64 = self.cmd(&["DEL", &full_key]).await;
            assert_eq!(removed, 1, "{full_key} was not held");
        })
    }

    fn features(&self) -> Features {
        Features { release_notices: true, handoff: true, isolated: false }
    }

    /// Deletes every key of the namespace on every primary (`KEYS` goes to all of them).
    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let keys: Vec<String> = self.cmd(&["KEYS", &format!("*{}*", self.namespace)]).await;
            for key in keys {
                let _: i64 = self.cmd(&["DEL", &key]).await;
            }
        })
    }

    fn owner<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Option<String>>> {
        Box::pin(async move {
            Some(
                self.stored_value(key).await.map(|value| super::redis_store::lock_value(&value).1.to_owned()),
            )
        })
    }

    /// `KEYS` (which the cluster connection sends to every primary), without waiting lines.
    fn held_keys(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        Box::pin(async move {
            let mut keys: Vec<String> = self.cmd(&["KEYS", &format!("{}*", self.prefix)]).await;
            keys.retain(|key| !key.contains("#dlock:"));
            keys.sort();
            Some(keys)
        })
    }

    fn fencing_counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move {
            Some(
                self.stored_value(key)
                    .await
                    .and_then(|value| super::redis_store::lock_value(&value).0)
                    .unwrap_or(0),
            )
        })
    }
}
