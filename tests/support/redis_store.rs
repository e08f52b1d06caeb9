//! [`RedisStore`]: a key namespace of one test's own on a Redis server, as a [`Store`], and
//! what only Redis can show (owner tokens, lock keys, the fencing counter, a raw connection).

use std::sync::Arc;

use dlock::backend::BoxFuture;
use dlock::{LockBackend, RedisBackend};
use redis::aio::MultiplexedConnection;

use super::redis::{inspector, redis_cmd, shared_redis_url, unique_prefix};
use super::store::{Features, Store};

/// One test's namespace `dlock-test:<test>:<pid>-<random>:` on a Redis server: lock keys under
/// `…lock:`, its own fencing counter `…fence`. Clients are `RedisBackend`s with connections of
/// their own, so they contend in Redis exactly like separate processes; a separate plain
/// connection inspects what Redis holds.
#[derive(Debug, Clone)]
pub struct RedisStore {
    url: String,
    namespace: String,
    prefix: String,
    fence_key: String,
    conn: MultiplexedConnection,
}

impl RedisStore {
    /// A namespace on the machine's shared Redis ([`shared_redis_url`]).
    pub async fn shared(test_name: &str) -> Self {
        Self::on(&shared_redis_url(), test_name).await
    }

    /// A namespace on the Redis at `url`.
    pub async fn on(url: &str, test_name: &str) -> Self {
        let namespace = unique_prefix(test_name);
        Self {
            url: url.to_owned(),
            prefix: format!("{namespace}lock:"),
            fence_key: format!("{namespace}fence"),
            namespace,
            conn: inspector(url).await,
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of this store's fencing counter.
    pub fn fence_key(&self) -> &str {
        &self.fence_key
    }

    /// A plain connection to the server (not dlock's), for inspection and raw commands.
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// The value stored under `key` (without the prefix): its owner token, `None` if absent.
    pub async fn stored_value(&self, key: &str) -> Option<String> {
        redis_cmd(&mut self.conn(), &["GET", &self.full_key(key)]).await
    }

    /// Every lock key in the store right now, prefix included, sorted (`KEYS <prefix>*`).
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            redis_cmd(&mut self.conn(), &["KEYS", &format!("{}*", self.prefix)]).await;
        keys.sort();
        keys
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>> {
        Box::pin(async {
            let backend = RedisBackend::builder(self.url.as_str())
                .fence_key(self.fence_key.as_str())
                .connect()
                .await
                .unwrap_or_else(|err| panic!("connecting a RedisBackend to {}: {err}", self.url));
            Arc::new(backend) as Arc<dyn LockBackend>
        })
    }

    /// `EXISTS`.
    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { redis_cmd(&mut self.conn(), &["EXISTS", &self.full_key(key)]).await })
    }

    /// `DEL`.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let full_key = self.full_key(key);
            let removed: i64 = redis_cmd(&mut self.conn(), &["DEL", &full_key]).await;
            assert_eq!(removed, 1, "{full_key} was not held");
        })
    }

    fn features(&self) -> Features {
        Features { release_notices: true, handoff: true, isolated: false }
    }

    /// Deletes every key whose name contains the namespace: lock keys, the fencing counter,
    /// and what dlock keeps beside a lock key (its waiting line).
    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn();
            let keys: Vec<String> = redis_cmd(&mut conn, &["KEYS", &format!("*{}*", self.namespace)]).await;
            if !keys.is_empty() {
                let mut del = vec!["DEL"];
                del.extend(keys.iter().map(String::as_str));
                let _: i64 = redis_cmd(&mut conn, &del).await;
            }
        })
    }

    fn owner<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Option<String>>> {
        Box::pin(async move { Some(self.stored_value(key).await) })
    }

    fn held_keys(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        Box::pin(async move { Some(self.keys().await) })
    }

    fn fencing_counter(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            let value: Option<u64> = redis_cmd(&mut self.conn(), &["GET", &self.fence_key]).await;
            Some(value.unwrap_or(0))
        })
    }
}
