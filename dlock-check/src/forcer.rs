//! Deleting a lock key behind its holder's back: the `drop-key` fault (a store that loses a
//! key, as a failover to a replica that missed the write does) and the planted release bug.
//!
//! One server (`redis://`) gets a `DEL` on a connection of its own; a Redis Cluster
//! (`redis-cluster://`) a `DEL` routed by the key's slot to the primary that serves it; a
//! Sentinel group (`redis-sentinel://`) a `DEL` on the primary the sentinels name, asked again
//! when the one it had refuses (`READONLY`: it was demoted by a failover). The in-process
//! backend has `MemoryBackend::force_expire`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dlock::backend::MemoryBackend;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Deletes a lock key whoever holds it.
#[derive(Clone)]
pub enum KeyForcer {
    /// `MemoryBackend::force_expire`.
    Memory(MemoryBackend),
    /// `DEL` on a connection of its own (made on first use, and again after it failed).
    Redis(RedisForcer),
    /// A backend the checker cannot delete keys of (yet): `delete` fails, saying why.
    Unsupported {
        /// Why not.
        why: String,
    },
}

/// Deletes keys of one Redis deployment.
#[derive(Clone)]
pub struct RedisForcer {
    /// Where the key lives.
    store: Arc<Store>,
    /// The connection, once made (and until a `DEL` on it fails).
    conn: Arc<tokio::sync::Mutex<Option<StoreConn>>>,
    /// The bound on connecting and on the command.
    call_timeout: Duration,
}

/// The Redis deployment a [`RedisForcer`] deletes from.
enum Store {
    /// One server.
    Server(redis::Client),
    /// A Redis Cluster, by its seed nodes (boxed: a cluster client is large).
    Cluster(Box<ClusterClient>),
    /// A Sentinel group: its sentinels, the name of its primary, and the URL of that primary
    /// with `{}` where its address goes (credentials and database kept).
    Sentinel { sentinels: Vec<redis::Client>, master: String, primary_url: String },
}

/// A connection to a [`Store`].
#[derive(Clone)]
enum StoreConn {
    /// To one server (also the Sentinel group's primary).
    Server(MultiplexedConnection),
    /// To a cluster, routing each command by its key.
    Cluster(ClusterConnection),
}

impl fmt::Debug for KeyForcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("KeyForcer::Memory"),
            Self::Redis(redis) => write!(f, "KeyForcer::Redis({redis:?})"),
            Self::Unsupported { why } => write!(f, "KeyForcer::Unsupported({why})"),
        }
    }
}

impl KeyForcer {
    /// A forcer for the backend at `url`: `redis://`, `redis-cluster://` or
    /// `redis-sentinel://` (without TLS), or one whose `delete` says why it cannot.
    pub fn for_url(url: &str, call_timeout: Duration) -> Self {
        match Store::parse(url) {
            Ok(store) => {
                Self::Redis(RedisForcer { store: Arc::new(store), conn: Arc::default(), call_timeout })
            }
            Err(why) => Self::Unsupported { why },
        }
    }

    /// Connect now rather than at the first delete (a fault aimed at a holder must not spend
    /// the holder's section connecting).
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(redis) => redis.connection().await.map(drop),
            Self::Unsupported { why } => Err(why.clone()),
        }
    }

    /// Whether it can delete keys at all.
    pub fn supported(&self) -> bool {
        !matches!(self, Self::Unsupported { .. })
    }

    /// Delete `full_key` (prefix included); `Ok(true)` if it existed. A `DEL` that fails (the
    /// server restarted, or was demoted by a failover, since the last one) is tried once more,
    /// on a new connection.
    pub async fn delete(&self, full_key: &str) -> Result<bool, String> {
        match self {
            Self::Memory(memory) => Ok(memory.force_expire(full_key)),
            Self::Redis(redis) => redis.delete(full_key).await,
            Self::Unsupported { why } => Err(why.clone()),
        }
    }
}

impl fmt::Debug for RedisForcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.store.kind())
    }
}

impl RedisForcer {
    /// The connection, made now if there is none (or the last one failed).
    async fn connection(&self) -> Result<StoreConn, String> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        let made = tokio::time::timeout(self.call_timeout, self.store.connect())
            .await
            .map_err(|_| format!("connecting to the {} for DEL timed out", self.store.kind()))??;
        Ok(conn.insert(made).clone())
    }

    /// See [`KeyForcer::delete`].
    async fn delete(&self, full_key: &str) -> Result<bool, String> {
        let mut last = String::new();
        for _ in 0..2 {
            let conn = self.connection().await?;
            let answer = tokio::time::timeout(self.call_timeout, conn.del(full_key))
                .await
                .map_err(|_| format!("DEL {full_key} timed out"))?;
            match answer {
                Ok(deleted) => return Ok(deleted > 0),
                Err(err) => {
                    last = format!("DEL {full_key}: {err}");
                    self.conn.lock().await.take();
                }
            }
        }
        Err(last)
    }
}

impl Store {
    /// The store a backend URL names, or why the checker cannot delete from it.
    fn parse(url: &str) -> Result<Self, String> {
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        let cannot = |why: &str| {
            format!(
                "dlock-check cannot delete a key of the backend at {} ({why}; see KeyForcer in src/forcer.rs)",
                crate::redis_url::redact(url.split('?').next().unwrap_or(url))
            )
        };
        let client = |url: &str| redis::Client::open(url).map_err(|err| cannot(&err.to_string()));
        match scheme {
            "redis" => Ok(Self::Server(client(url)?)),
            "redis-cluster" => {
                let (userinfo, hosts, rest) = split_hosts(url);
                if !matches!(rest, "" | "/") {
                    return Err(cannot("a cluster URL has no path or query"));
                }
                let seeds: Vec<String> =
                    hosts.iter().map(|host| format!("redis://{userinfo}{host}")).collect();
                ClusterClient::new(seeds)
                    .map(|client| Self::Cluster(Box::new(client)))
                    .map_err(|err| cannot(&err.to_string()))
            }
            "redis-sentinel" => {
                let (userinfo, hosts, rest) = split_hosts(url);
                if rest.contains('?') {
                    return Err(cannot("sentinels with a password are not supported"));
                }
                let mut path = rest.trim_start_matches('/').splitn(2, '/');
                let master =
                    path.next().filter(|name| !name.is_empty()).ok_or_else(|| cannot("no primary name"))?;
                let db = path.next().map(|db| format!("/{db}")).unwrap_or_default();
                let sentinels = hosts
                    .iter()
                    .map(|host| client(&format!("redis://{host}")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    primary_url: format!("redis://{userinfo}{{}}{db}"),
                })
            }
            _ => Err(cannot("only redis://, redis-cluster:// and redis-sentinel:// without TLS")),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Server(_) => "Redis server",
            Self::Cluster(_) => "Redis Cluster",
            Self::Sentinel { .. } => "Sentinel group's primary",
        }
    }

    async fn connect(&self) -> Result<StoreConn, String> {
        match self {
            Self::Server(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(StoreConn::Server)
                .map_err(|err| format!("connecting for DEL: {err}")),
            Self::Cluster(client) => client
                .get_async_connection()
                .await
                .map(StoreConn::Cluster)
                .map_err(|err| format!("connecting to the cluster for DEL: {err}")),
            Self::Sentinel { sentinels, master, primary_url } => {
                let mut last = format!("no sentinel named the primary `{master}`");
                for sentinel in sentinels {
                    match primary_of(sentinel, master).await {
                        Ok(addr) => {
                            let url = primary_url.replace("{}", &addr);
                            let client = redis::Client::open(url.as_str()).map_err(|err| err.to_string())?;
                            return client
                                .get_multiplexed_async_connection()
                                .await
                                .map(StoreConn::Server)
                                .map_err(|err| format!("connecting to the primary {addr} for DEL: {err}"));
                        }
                        Err(err) => last = err,
                    }
                }
                Err(last)
            }
        }
    }
}

/// `host:port` of the primary that `sentinel` names `master`.
async fn primary_of(sentinel: &redis::Client, master: &str) -> Result<String, String> {
    let mut conn =
        sentinel.get_multiplexed_async_connection().await.map_err(|err| format!("a sentinel: {err}"))?;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|err| format!("asking a sentinel for `{master}`: {err}"))?;
    Ok(format!("{host}:{port}"))
}

/// The credentials (with their `@`), the hosts and the rest of a URL of several hosts.
fn split_hosts(url: &str) -> (&str, Vec<&str>, &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, _)) => rest.split_at(userinfo.len() + 1),
        None => ("", rest),
    };
    let (hosts, rest) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    (userinfo, hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect(), rest)
}

impl StoreConn {
    async fn del(mut self, key: &str) -> redis::RedisResult<i64> {
        let del = redis::cmd("DEL").arg(key).clone();
        match &mut self {
            Self::Server(conn) => del.query_async(conn).await,
            Self::Cluster(conn) => del.query_async(conn).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_redis_topology_are_understood() {
        assert_eq!(split_hosts("redis-cluster://a:1, b:2"), ("", vec!["a:1", "b:2"], ""));
        assert_eq!(
            split_hosts("redis-sentinel://u:p@a:1,b:2/mymaster/3"),
            ("u:p@", vec!["a:1", "b:2"], "/mymaster/3")
        );
        let forcer = KeyForcer::for_url(
            "redis-sentinel://u:p@127.0.0.1:1,127.0.0.1:2/mymaster/3",
            Duration::from_secs(1),
        );
        let KeyForcer::Redis(redis) = forcer else { panic!("{forcer:?}") };
        let Store::Sentinel { sentinels, master, primary_url } = &*redis.store else {
            panic!("not a sentinel store")
        };
        assert_eq!(
            (sentinels.len(), master.as_str(), primary_url.as_str()),
            (2, "mymaster", "redis://u:p@{}/3")
        );
        assert!(
            KeyForcer::for_url("redis-cluster://127.0.0.1:1,127.0.0.1:2", Duration::from_secs(1)).supported()
        );
    }

    #[test]
    fn other_backends_are_refused_with_the_reason() {
        for (url, why) in [
            ("rediss-cluster://127.0.0.1:1", "without TLS"),
            ("postgres://127.0.0.1/test", "without TLS"),
            ("redis-sentinel://127.0.0.1:1/m?sentinel_password=x", "password"),
            ("redis-sentinel://127.0.0.1:1", "no primary name"),
        ] {
            let forcer = KeyForcer::for_url(url, Duration::from_secs(1));
            let KeyForcer::Unsupported { why: got } = &forcer else { panic!("{url}: {forcer:?}") };
            assert!(got.contains(why) && !got.contains("sentinel_password=x"), "{url}: {got}");
        }
    }
}
