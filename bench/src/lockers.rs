//! The contenders behind one interface: the raw Redis floor, rslock, dlock's manual API and
//! dlock's attribute.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::time::Instant;

/// The bench's error type: every failure becomes a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// The lease every contender asks for.
pub const TTL: Duration = Duration::from_secs(10);
/// How long a contender may wait for one lock before the bench counts an error.
pub const WAIT: Duration = Duration::from_secs(30);
/// The floor's retry interval when the key is held.
pub const SPIN: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Contender {
    /// `SET key owner NX PX ttl` + owner-checked delete script; spin every 1 ms when held.
    Floor,
    /// `rslock::LockManager` with one URL, its `acquire` (retry loop) and `release`.
    Rslock,
    /// `service.lock(key).await` + `guard.release().await`.
    Dlock,
    /// `#[dlock::distributed_lock(...)]` on an `async fn`.
    DlockAttr,
    /// Diagnostic, hand-off scenario only: the floor's `SET NX`, woken by a `PUBLISH` in the
    /// release script over one permanent pub/sub subscription per process (no spin).
    FloorPubsub,
}

impl Contender {
    pub const ALL: [Contender; 4] =
        [Contender::Floor, Contender::Rslock, Contender::Dlock, Contender::DlockAttr];

    pub fn label(self) -> &'static str {
        match self {
            Contender::Floor => "floor (SET NX)",
            Contender::Rslock => "rslock 0.10",
            Contender::Dlock => "dlock manual",
            Contender::DlockAttr => "dlock #[attr]",
            Contender::FloorPubsub => "floor + pub/sub",
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Contender::Floor => "floor",
            Contender::Rslock => "rslock",
            Contender::Dlock => "dlock",
            Contender::DlockAttr => "dlock_attr",
            Contender::FloorPubsub => "floor_pubsub",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().chain([Contender::FloorPubsub]).find(|c| c.id() == s)
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The owner-checked delete of the floor (the same check rslock and dlock make, without
/// dlock's `PUBLISH`).
const FLOOR_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The raw floor: what a hand-written Redis lock costs, on one multiplexed connection (or, in
/// the `cluster` group, one redis-rs cluster connection, which routes each command by its key's
/// slot).
#[derive(Clone)]
pub struct Floor<C = MultiplexedConnection> {
    conn: C,
    release: Script,
}

impl Floor {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(Self::on(conn))
    }
}

impl<C: redis::aio::ConnectionLike + Clone + Send + Sync> Floor<C> {
    /// The floor over `conn`.
    pub fn on(conn: C) -> Self {
        Self { conn, release: Script::new(FLOOR_RELEASE) }
    }

    /// One `SET NX PX`: true when taken.
    pub async fn try_lock(&self, key: &str, owner: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(reply.is_some())
    }

    /// Spin: retry `SET NX` every [`SPIN`] until taken (or [`WAIT`] passed).
    pub async fn lock(&self, key: &str, owner: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.try_lock(key, owner).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("floor: {key} not acquired within {WAIT:?}").into());
            }
            tokio::time::sleep(SPIN).await;
        }
    }

    pub async fn unlock(&self, key: &str, owner: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self.release.key(key).arg(owner).invoke_async(&mut conn).await?;
        Ok(deleted == 1)
    }
}

/// A held lock of any contender but the attribute (whose lock lives inside the call).
pub enum Held {
    Floor { key: String, owner: String },
    Rslock(rslock::LockGuard),
    Dlock(dlock::LockGuard),
}

/// Everything one process needs to run any contender against one Redis.
#[derive(Clone)]
pub struct Lockers {
    pub floor: Floor,
    pub rslock: rslock::LockManager,
    pub dlock: dlock::LockService,
    /// Raw keys of the floor and rslock start with this; dlock's service prepends it.
    pub prefix: String,
    /// A plain connection for the bench's own commands (PING, stamps, PUBSUB).
    pub conn: MultiplexedConnection,
    pub redis_backend: dlock::RedisBackend,
}

static OWNER_SEQ: AtomicU64 = AtomicU64::new(0);

pub fn floor_owner() -> String {
    format!("{}-{}", std::process::id(), OWNER_SEQ.fetch_add(1, Ordering::Relaxed))
}

impl Lockers {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let floor = Floor::connect(url).await?;
        let rslock = rslock::LockManager::new(vec![url.to_owned()]);
        let redis_backend = dlock::RedisBackend::connect(url).await?;
        let dlock = dlock::LockService::builder(redis_backend.clone())
            .key_prefix(prefix)
            .default_ttl(TTL)
            .default_wait(WAIT)
            .build();
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(Self { floor, rslock, dlock, prefix: prefix.to_owned(), conn, redis_backend })
    }

    /// The name `c` locks for the logical key `name` (what Redis sees for floor and rslock;
    /// dlock adds [`Self::prefix`] itself, and the attribute adds `bench:` too).
    pub fn key(&self, c: Contender, name: &str) -> String {
        match c {
            Contender::Floor | Contender::Rslock | Contender::FloorPubsub => {
                format!("{}{}:{name}", self.prefix, c.id())
            }
            Contender::Dlock => format!("{}:{name}", c.id()),
            Contender::DlockAttr => format!("{}:{name}", c.id()),
        }
    }

    /// Acquire, waiting in the contender's own way (not for the attribute).
    pub async fn acquire(&self, c: Contender, key: &str) -> Result<Held> {
        match c {
            Contender::Floor => {
                let owner = floor_owner();
                self.floor.lock(key, &owner).await?;
                Ok(Held::Floor { key: key.to_owned(), owner })
            }
            Contender::Rslock => {
                // rslock's `acquire` loops forever while Redis is unreachable: bound it.
                match tokio::time::timeout(WAIT, self.rslock.acquire(key, TTL)).await {
                    Ok(Ok(guard)) => Ok(Held::Rslock(guard)),
                    Ok(Err(err)) => Err(Box::new(err)),
                    Err(_) => Err(format!("rslock: {key} not acquired within {WAIT:?}").into()),
                }
            }
            Contender::Dlock => Ok(Held::Dlock(self.dlock.lock(key).ttl(TTL).wait(WAIT).await?)),
            Contender::DlockAttr => Err("the attribute has no acquire/release; use Lockers::op".into()),
            Contender::FloorPubsub => Err("floor + pub/sub runs only in the hand-off children".into()),
        }
    }

    pub async fn release(&self, held: Held) -> Result<()> {
        match held {
            Held::Floor { key, owner } => {
                if !self.floor.unlock(&key, &owner).await? {
                    return Err(format!("floor: {key} was no longer ours at release").into());
                }
            }
            Held::Rslock(guard) => guard.release().await,
            Held::Dlock(guard) => {
                if !guard.release().await? {
                    return Err("dlock: the lock was no longer ours at release".into());
                }
            }
        }
        Ok(())
    }

    /// One whole critical section: acquire, hold for `hold`, release. Returns how long the
    /// acquisition took (for the attribute: from the call to the body's first line).
    pub async fn op(&self, c: Contender, key: &str, hold: Duration) -> Result<Duration> {
        let start = Instant::now();
        if c == Contender::DlockAttr {
            let entered = attr_op(key, hold).await?;
            return Ok(entered - start);
        }
        let held = self.acquire(c, key).await?;
        let waited = start.elapsed();
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        self.release(held).await?;
        Ok(waited)
    }
}

/// What the shared scenarios (uncontended cycle, many keys) need of a set of contenders on one
/// store: one Redis ([`Lockers`]) or one Redis Cluster (`cluster::ClusterLockers`).
pub trait Locks: Send + Sync + 'static {
    /// The name `c` locks for the logical key `name` (see [`Lockers::key`]).
    fn key(&self, c: Contender, name: &str) -> String;

    /// One whole critical section (see [`Lockers::op`]).
    fn op(&self, c: Contender, key: &str, hold: Duration) -> impl Future<Output = Result<Duration>> + Send;

    /// CPU time the server side has used so far, in ns.
    fn server_cpu_ns(&self) -> impl Future<Output = Result<u64>> + Send;
}

impl Locks for Lockers {
    fn key(&self, c: Contender, name: &str) -> String {
        Lockers::key(self, c, name)
    }

    fn op(&self, c: Contender, key: &str, hold: Duration) -> impl Future<Output = Result<Duration>> + Send {
        Lockers::op(self, c, key, hold)
    }

    fn server_cpu_ns(&self) -> impl Future<Output = Result<u64>> + Send {
        server_cpu_ns(&self.conn)
    }
}

/// The attribute contender: the lock is taken before the body runs and released after it.
#[dlock::distributed_lock(key = "bench:<k>", ttl = "10s", wait = "30s", service = "bench")]
async fn attr_op(k: &str, hold: Duration) -> std::result::Result<Instant, dlock::Error> {
    let entered = Instant::now();
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    Ok(entered)
}

/// The attribute over the in-process backend (service `bench_mem`).
#[dlock::distributed_lock(key = "bench:<k>", ttl = "10s", wait = "30s", service = "bench_mem")]
pub async fn attr_mem_op(k: &str) -> std::result::Result<(), dlock::Error> {
    Ok(())
}

/// The whole-process RSS in KiB, from `/proc/self/status`.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `n` sequential PINGs on `conn` (after a warm-up): each round-trip in ns.
pub async fn ping_rtts(conn: &MultiplexedConnection, n: usize) -> Result<Vec<u64>> {
    let mut conn = conn.clone();
    for _ in 0..n / 10 + 1 {
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        out.push(t.elapsed().as_nanos() as u64);
    }
    Ok(out)
}

/// Nanoseconds since the Unix epoch (the clock shared by the child processes).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A small, fast, seedable generator for picking keys (no need for `rand`).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// CPU time used so far by all threads of this process, in ns (`/proc/self/task/*/schedstat`),
/// and their context switches, voluntary and not (`/proc/self/task/*/status`).
pub fn process_cpu_ns_and_switches() -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return (0, 0) };
    let (mut cpu, mut switches) = (0, 0);
    for task in tasks.filter_map(|t| t.ok()) {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            cpu += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
            switches += s
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (cpu, switches)
}

/// CPU time the Redis server has used so far, in ns (`INFO cpu`; the whole server, so use a
/// Redis nobody else is loading for this figure to mean something).
pub async fn server_cpu_ns(conn: &MultiplexedConnection) -> Result<u64> {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    Ok(info_cpu_ns(&info))
}

/// `used_cpu_sys` + `used_cpu_user` of an `INFO cpu` answer, in ns.
pub fn info_cpu_ns(info: &str) -> u64 {
    let field = |name: &str| -> f64 {
        info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    ((field("used_cpu_sys:") + field("used_cpu_user:")) * 1e9) as u64
}

/// CPU used by this process and by the Redis server over a stretch of the run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub client_ns: u64,
    pub server_ns: u64,
    pub switches: u64,
}

impl CpuMark {
    pub async fn now(lk: &impl Locks) -> Result<Self> {
        let server_ns = lk.server_cpu_ns().await?;
        let (client_ns, switches) = process_cpu_ns_and_switches();
        Ok(Self { client_ns, server_ns, switches })
    }

    /// What was used since `self`.
    pub async fn since(self, lk: &impl Locks) -> Result<CpuMark> {
        let end = Self::now(lk).await?;
        Ok(CpuMark {
            client_ns: end.client_ns.saturating_sub(self.client_ns),
            server_ns: end.server_ns.saturating_sub(self.server_ns),
            switches: end.switches.saturating_sub(self.switches),
        })
    }
}
