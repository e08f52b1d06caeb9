//! Deleting a lock key behind its holder's back: the `drop-key` fault (a store that loses a
//! key, as a failover to a replica that missed the write does) and the planted release bug.
//!
//! One server (`redis://`) gets a `DEL` on a connection of its own; a Redis Cluster
//! (`redis-cluster://`) a `DEL` routed by the key's slot to the primary that serves it; a
//! Sentinel group (`redis-sentinel://`) a `DEL` on the primary the sentinels name, asked again
//! when the one it had refuses (`READONLY`: it was demoted by a failover). PostgreSQL
//! (`postgres://`) gets a `DELETE` of the key's row from dlock's lease table, in the default
//! schema (the one `dlock::connect` uses): the row and its lease are gone, as after a restore
//! from a backup that predates them; the token sequence is untouched. The in-process backend
//! has `MemoryBackend::force_expire`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dlock::backend::MemoryBackend;
use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Deletes a lock key whoever holds it.
#[derive(Clone)]
pub enum KeyForcer {
    /// `MemoryBackend::force_expire`.
    Memory(MemoryBackend),
    /// `DEL` (Redis) or `DELETE` of the key's row (PostgreSQL) on a connection of its own
    /// (made on first use, and again after it failed).
    Store(StoreForcer),
    /// A backend the checker cannot delete keys of (yet): `delete` fails, saying why.
    Unsupported {
        /// Why not.
        why: String,
    },
}

/// Deletes keys of one Redis deployment or PostgreSQL database.
#[derive(Clone)]
pub struct StoreForcer {
    /// Where the key lives.
    store: Arc<Store>,
    /// The connection, once made (and until a `DEL` on it fails).
    conn: Arc<tokio::sync::Mutex<Option<StoreConn>>>,
    /// The bound on connecting and on the command.
    call_timeout: Duration,
}

/// The Redis deployment or PostgreSQL database a [`StoreForcer`] deletes from.
enum Store {
    /// One server.
    Server(redis::Client),
    /// A Redis Cluster, by its seed nodes (boxed: a cluster client is large).
    Cluster(Box<ClusterClient>),
    /// A Sentinel group: its sentinels, the name of its primary, and the primary's
    /// credentials and database.
    Sentinel { sentinels: Vec<redis::Client>, master: String, primary: redis::RedisConnectionInfo },
    /// A PostgreSQL database (boxed: a configuration is large).
    Postgres(Box<tokio_postgres::Config>),
}

/// A connection to a [`Store`].
#[derive(Clone)]
enum StoreConn {
    /// To one server (also the Sentinel group's primary).
    Server(MultiplexedConnection),
    /// To a cluster, routing each command by its key.
    Cluster(ClusterConnection),
    /// To PostgreSQL (its connection task ends when the last clone is dropped).
    Postgres(Arc<tokio_postgres::Client>),
}

impl fmt::Debug for KeyForcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("KeyForcer::Memory"),
            Self::Store(store) => write!(f, "KeyForcer::Store({store:?})"),
            Self::Unsupported { why } => write!(f, "KeyForcer::Unsupported({why})"),
        }
    }
}

impl KeyForcer {
    /// A forcer for the backend at `url`: `redis://`, `redis-cluster://` or
    /// `redis-sentinel://` (without TLS), `postgres://`, or one whose `delete` says why it
    /// cannot.
    pub fn for_url(url: &str, call_timeout: Duration) -> Self {
        match Store::parse(url, call_timeout) {
            Ok(store) => {
                Self::Store(StoreForcer { store: Arc::new(store), conn: Arc::default(), call_timeout })
            }
            Err(why) => Self::Unsupported { why },
        }
    }

    /// Connect now rather than at the first delete (a fault aimed at a holder must not spend
    /// the holder's section connecting).
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Store(store) => store.connection().await.map(drop),
            Self::Unsupported { why } => Err(why.clone()),
        }
    }

    /// Whether it can delete keys at all.
    pub fn supported(&self) -> bool {
        !matches!(self, Self::Unsupported { .. })
    }

    /// Delete `full_key` (prefix included); `Ok(true)` if it existed. A `DEL` that fails or
    /// times out (the server restarted, or was demoted by a failover, since the last one) is
    /// tried once more, on a new connection.
    pub async fn delete(&self, full_key: &str) -> Result<bool, String> {
        match self {
            Self::Memory(memory) => Ok(memory.force_expire(full_key)),
            Self::Store(store) => store.delete(full_key).await,
            Self::Unsupported { why } => Err(why.clone()),
        }
    }
}

impl fmt::Debug for StoreForcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.store.kind())
    }
}

impl StoreForcer {
    /// The connection, made now if there is none (or the last one failed).
    async fn connection(&self) -> Result<StoreConn, String> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        let made = self.store.connect(self.call_timeout).await?;
        Ok(conn.insert(made).clone())
    }

    /// See [`KeyForcer::delete`].
    async fn delete(&self, full_key: &str) -> Result<bool, String> {
        let mut last = String::new();
        let verb = self.store.delete_verb();
        for _ in 0..2 {
            let conn = self.connection().await?;
            match tokio::time::timeout(self.call_timeout, conn.del(full_key)).await {
                Ok(Ok(deleted)) => return Ok(deleted > 0),
                Ok(Err(err)) => last = format!("{verb} {full_key}: {err}"),
                Err(_) => last = format!("{verb} {full_key} timed out"),
            }
            self.conn.lock().await.take();
        }
        Err(last)
    }
}

impl Store {
    /// The store a backend URL names, or why the checker cannot delete from it.
    fn parse(url: &str, call_timeout: Duration) -> Result<Self, String> {
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        let cannot = |why: &str| {
            format!(
                "dlock-check cannot delete a key of the backend at {} ({why}; see KeyForcer in src/forcer.rs)",
                crate::redis_url::redact(url)
            )
        };
        match scheme {
            "redis" => redis::Client::open(url).map(Self::Server).map_err(|err| cannot(&err.to_string())),
            "redis-cluster" => {
                let (userinfo, hosts, rest) = split_hosts(url);
                if !matches!(rest, "" | "/") {
                    return Err(cannot("a cluster URL has no path or query"));
                }
                let settings = credentials(userinfo, "").map_err(|why| cannot(&why))?;
                let seeds = hosts
                    .iter()
                    .map(|host| node(host, &settings))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|why| cannot(&why))?;
                ClusterClient::new(seeds)
                    .map(|client| Self::Cluster(Box::new(client)))
                    .map_err(|err| cannot(&err.to_string()))
            }
            "redis-sentinel" => {
                let (userinfo, hosts, rest) = split_hosts(url);
                let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
                // The sentinels' own password, read as dlock reads it (`sentinel_password`, the
                // one parameter its URL has).
                let mut sentinel_auth = redis::RedisConnectionInfo::default();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    match pair.split_once('=') {
                        Some(("sentinel_password", password)) => {
                            sentinel_auth =
                                credentials(&format!(":{password}@"), "").map_err(|why| cannot(&why))?;
                        }
                        _ => return Err(cannot("a query parameter other than sentinel_password")),
                    }
                }
                let mut path = rest.trim_start_matches('/').splitn(2, '/');
                let master =
                    path.next().filter(|name| !name.is_empty()).ok_or_else(|| cannot("no primary name"))?;
                let primary =
                    credentials(userinfo, path.next().unwrap_or_default()).map_err(|why| cannot(&why))?;
                let sentinels = hosts
                    .iter()
                    .map(|host| {
                        node(host, &sentinel_auth)
                            .and_then(|info| redis::Client::open(info).map_err(|err| err.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|why| cannot(&why))?;
                Ok(Self::Sentinel { sentinels, master: master.to_owned(), primary })
            }
            "postgres" | "postgresql" => {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(|err| cannot(&format!("{err}")))?;
                config.connect_timeout(call_timeout).application_name("dlock-check drop-key");
                Ok(Self::Postgres(Box::new(config)))
            }
            _ => Err(cannot(
                "only redis://, redis-cluster:// and redis-sentinel:// without TLS, and postgres://",
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Server(_) => "Redis server",
            Self::Cluster(_) => "Redis Cluster",
            Self::Sentinel { .. } => "Sentinel group's primary",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// What deleting a key is called there, for messages.
    fn delete_verb(&self) -> &'static str {
        if matches!(self, Self::Postgres(_)) { "DELETE" } else { "DEL" }
    }

    /// A connection, within `call_timeout` (on a Sentinel group, each sentinel gets its share).
    async fn connect(&self, call_timeout: Duration) -> Result<StoreConn, String> {
        let late = || format!("connecting to the {} for {} timed out", self.kind(), self.delete_verb());
        match self {
            Self::Server(client) => {
                tokio::time::timeout(call_timeout, client.get_multiplexed_async_connection())
                    .await
                    .map_err(|_| late())?
                    .map(StoreConn::Server)
                    .map_err(|err| format!("connecting for DEL: {err}"))
            }
            Self::Cluster(client) => tokio::time::timeout(call_timeout, client.get_async_connection())
                .await
                .map_err(|_| late())?
                .map(StoreConn::Cluster)
                .map_err(|err| format!("connecting to the cluster for DEL: {err}")),
            Self::Sentinel { sentinels, master, primary } => {
                let share = call_timeout / u32::try_from(sentinels.len()).unwrap_or(u32::MAX).max(1);
                let mut last = format!("no sentinel named the primary `{master}`");
                for sentinel in sentinels {
                    let asked = tokio::time::timeout(share, primary_of(sentinel, master, primary)).await;
                    match asked {
                        Ok(Ok(conn)) => return Ok(StoreConn::Server(conn)),
                        Ok(Err(err)) => last = err,
                        Err(_) => {
                            last = format!(
                                "a sentinel did not name `{master}`, or its primary did not answer, in time"
                            )
                        }
                    }
                }
                Err(last)
            }
            Self::Postgres(config) => {
                let (client, connection) =
                    tokio::time::timeout(call_timeout, config.connect(tokio_postgres::NoTls))
                        .await
                        .map_err(|_| late())?
                        .map_err(|err| format!("connecting to PostgreSQL for DELETE: {err}"))?;
                // It runs until the client is dropped (after a failed statement, or with the
                // forcer).
                tokio::spawn(connection);
                Ok(StoreConn::Postgres(Arc::new(client)))
            }
        }
    }
}

/// A connection to the primary that `sentinel` names `master`, with the primary's credentials.
async fn primary_of(
    sentinel: &redis::Client,
    master: &str,
    settings: &redis::RedisConnectionInfo,
) -> Result<MultiplexedConnection, String> {
    let mut conn =
        sentinel.get_multiplexed_async_connection().await.map_err(|err| format!("a sentinel: {err}"))?;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|err| format!("asking a sentinel for `{master}`: {err}"))?;
    let info = redis::ConnectionAddr::Tcp(host.clone(), port)
        .into_connection_info()
        .map_err(|err| err.to_string())?
        .set_redis_settings(settings.clone());
    let client = redis::Client::open(info).map_err(|err| err.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("connecting to the primary {host}:{port} for DEL: {err}"))
}

/// The user, password (percent-decoded, as redis-rs reads a URL's) and database of a URL's
/// `userinfo@` and path.
fn credentials(userinfo: &str, db: &str) -> Result<redis::RedisConnectionInfo, String> {
    let db = if db.is_empty() { String::new() } else { format!("/{db}") };
    let info = format!("redis://{userinfo}127.0.0.1{db}").into_connection_info().map_err(|_| {
        "credentials or a database it cannot read (percent-encode `/`, `?`, `#`, `@` in them)".to_owned()
    })?;
    Ok(info.redis_settings().clone())
}

/// The address `host:port` (`[v6]:port` too) with `settings`.
fn node(host: &str, settings: &redis::RedisConnectionInfo) -> Result<redis::ConnectionInfo, String> {
    let (name, port) = host.rsplit_once(':').ok_or_else(|| format!("`{host}` has no port"))?;
    let port: u16 = port.parse().map_err(|_| format!("`{host}` has no valid port"))?;
    let name = name.trim_start_matches('[').trim_end_matches(']').to_owned();
    redis::ConnectionAddr::Tcp(name, port)
        .into_connection_info()
        .map(|info| info.set_redis_settings(settings.clone()))
        .map_err(|err| err.to_string())
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
    /// Delete `key`; how many keys (rows) went.
    async fn del(mut self, key: &str) -> Result<u64, String> {
        let del = redis::cmd("DEL").arg(key).clone();
        let text = |err: redis::RedisError| err.to_string();
        match &mut self {
            Self::Server(conn) => del.query_async(conn).await.map_err(text),
            Self::Cluster(conn) => del.query_async(conn).await.map_err(text),
            Self::Postgres(client) => {
                client.execute(POSTGRES_DELETE, &[&key]).await.map_err(|err| err.to_string())
            }
        }
    }
}

/// A lock's row in dlock's lease table, in the schema `dlock::connect` uses (its default).
const POSTGRES_DELETE: &str = r#"DELETE FROM "dlock".dlock_locks WHERE key = $1"#;

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
        let KeyForcer::Store(redis) = forcer else { panic!("{forcer:?}") };
        let Store::Sentinel { sentinels, master, primary } = &*redis.store else {
            panic!("not a sentinel store")
        };
        assert_eq!((sentinels.len(), master.as_str()), (2, "mymaster"));
        assert_eq!((primary.username(), primary.password(), primary.db()), (Some("u"), Some("p"), 3));
        // Credentials are read, not pasted into a template: `{}` and encoded `/`, `@` stay theirs.
        let settings = credentials("u:pa%2Fs%40s{}@", "").unwrap();
        assert_eq!(settings.password(), Some("pa/s@s{}"));
        assert!(credentials("u:pa/ss@", "").is_err(), "an unencoded `/` is refused, not misread");
        let info = node("[::1]:7000", &settings).unwrap();
        assert!(matches!(info.addr(), redis::ConnectionAddr::Tcp(host, 7000) if host == "::1"));
        assert!(node("127.0.0.1", &settings).is_err());
        assert!(
            KeyForcer::for_url("redis-cluster://127.0.0.1:1,127.0.0.1:2", Duration::from_secs(1)).supported()
        );
        let forcer = KeyForcer::for_url(
            "redis-sentinel://127.0.0.1:1,127.0.0.1:2/mymaster?sentinel_password=s%40p",
            Duration::from_secs(1),
        );
        let KeyForcer::Store(redis) = forcer else { panic!("{forcer:?}") };
        let Store::Sentinel { sentinels, .. } = &*redis.store else { panic!("not a sentinel store") };
        let sentinel = sentinels[0].get_connection_info().redis_settings();
        assert_eq!((sentinel.username(), sentinel.password()), (None, Some("s@p")));
        let postgres = KeyForcer::for_url("postgres://u:secret@127.0.0.1:5433/db", Duration::from_secs(1));
        let KeyForcer::Store(forcer) = &postgres else { panic!("{postgres:?}") };
        assert!(matches!(&*forcer.store, Store::Postgres(_)));
        assert!(POSTGRES_DELETE.contains(&format!("\"{}\".", dlock::PostgresBackend::DEFAULT_SCHEMA)));
        assert!(!format!("{postgres:?}").contains("secret"));
    }

    #[test]
    fn other_backends_are_refused_with_the_reason() {
        for (url, why) in [
            ("rediss-cluster://127.0.0.1:1", "without TLS"),
            ("postgres://127.0.0.1:notaport/test", "invalid connection string"),
            ("redis-sentinel://127.0.0.1:1/m?sentinel_password=x&db=2", "other than sentinel_password"),
            ("redis-sentinel://127.0.0.1:1", "no primary name"),
        ] {
            let forcer = KeyForcer::for_url(url, Duration::from_secs(1));
            let KeyForcer::Unsupported { why: got } = &forcer else { panic!("{url}: {forcer:?}") };
            assert!(got.contains(why) && !got.contains("sentinel_password=x"), "{url}: {got}");
        }
    }
}
