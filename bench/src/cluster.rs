//! The `cluster` scenario group: dlock's `RedisClusterBackend` beside the raw floor on the same
//! Redis Cluster, in one run.
//!
//! The floor is the single-Redis floor ([`Floor`]: `SET key owner NX PX ttl`, then the
//! owner-checked delete script by `EVALSHA`, retry every 1 ms while held) on a redis-rs async
//! cluster connection, which routes each command by its key's slot. dlock's contenders are its
//! manual API and its attribute over a `RedisClusterBackend`. rslock has no cluster support
//! (it talks to independent servers, Redlock-style) and is left out.
//!
//! Scenarios: the uncontended cycle and 64 tasks over 10 000 keys, both shared with the
//! single-Redis group ([`scenarios::uncontended`], [`scenarios::many_keys`]); and a hand-off
//! between two clients (two backends, as two processes would have) alternating on one key,
//! counted in round trips of a `PING` to that key's shard primary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::ConnectionAddr;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use serde::Serialize;
use tokio::time::Instant;

use crate::lockers::{self, Contender, Floor, Locks, Result, TTL, WAIT, XorShift, unix_nanos};
use crate::report::{Meta, Ratio, Target};
use crate::scenarios::{self, ManyKeysRow, UncontendedRow};
use crate::stats::{Summary, fmt_us};

/// The contenders of the group (rslock has no cluster support).
pub const CONTENDERS: [Contender; 3] = [Contender::Floor, Contender::Dlock, Contender::DlockAttr];

/// The attribute's service.
const SERVICE: &str = "bench_cluster";

/// Logical keys that every contender locks in turn: each contender's key for them is chosen
/// (by a numeric suffix) to hash to the same slot as the floor's, so that all of them are
/// served by the same shard primary, as on one server they are served by the same Redis.
const SHARED_NAMES: [&str; 2] = ["uncontended", "handoff"];

/// Everything the group needs, on one cluster.
pub struct ClusterLockers {
    floor: Floor<ClusterConnection>,
    dlock: dlock::LockService,
    prefix: String,
    /// The bench's own cluster connection (PING, INFO routed to one node).
    conn: ClusterConnection,
    /// Plain connections to each primary, by address (`INFO cpu`, the clean-up's `SCAN`).
    primaries: Vec<(String, MultiplexedConnection)>,
    /// The keys of [`SHARED_NAMES`], per contender.
    shared: Vec<(Contender, &'static str, String)>,
}

impl ClusterLockers {
    /// The floor's and dlock's clients on the cluster with seed nodes `seeds`, under `prefix`;
    /// registers the attribute's service.
    pub async fn connect(seeds: &[String], prefix: &str) -> Result<Self> {
        let floor = Floor::on(ClusterClient::new(seeds.to_vec())?.get_async_connection().await?);
        let conn = ClusterClient::new(seeds.to_vec())?.get_async_connection().await?;
        let primaries = connect_primaries(&conn, &seeds[0]).await?;
        let dlock = bench_service(connect_backend(seeds).await?, prefix);
        dlock::register(SERVICE, dlock.clone())?;
        let mut lk =
            ClusterLockers { floor, dlock, prefix: prefix.to_owned(), conn, primaries, shared: Vec::new() };
        for name in SHARED_NAMES {
            for c in CONTENDERS {
                let key = lk.aligned_key(c, name)?;
                lk.shared.push((c, name, key));
            }
        }
        Ok(lk)
    }

    /// The key `c` passes to its API for the logical key `name` (as `Lockers::key`).
    fn plain_key(&self, c: Contender, name: &str) -> String {
        match c {
            Contender::Dlock | Contender::DlockAttr => format!("{}:{name}", c.id()),
            _ => format!("{}{}:{name}", self.prefix, c.id()),
        }
    }

    /// The name Redis sees for `key` of `c`: dlock prepends its prefix (the attribute `bench:`
    /// too).
    fn redis_name(&self, c: Contender, key: &str) -> String {
        match c {
            Contender::Dlock => format!("{}{key}", self.prefix),
            Contender::DlockAttr => format!("{}bench:{key}", self.prefix),
            _ => key.to_owned(),
        }
    }

    /// `c`'s key for `name`, in the slot of the floor's key for it.
    fn aligned_key(&self, c: Contender, name: &str) -> Result<String> {
        let floor = self.plain_key(Contender::Floor, name);
        if c == Contender::Floor {
            return Ok(floor);
        }
        let slot = Slot::for_key(&floor);
        (0..1_000_000u32)
            .map(|n| self.plain_key(c, &format!("{name}:{n}")))
            .find(|key| Slot::for_key(self.redis_name(c, key)) == slot)
            .ok_or_else(|| format!("no key of {c} for {name} in the floor's slot").into())
    }

    /// Route to the primary that serves `key` (the name Redis sees).
    fn primary_of(key: &str) -> RoutingInfo {
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)))
    }

    /// One `PING` to the primary of `route`, through the bench's cluster connection: ns.
    async fn ping(&self, route: &RoutingInfo) -> Result<u64> {
        let mut conn = self.conn.clone();
        let t = Instant::now();
        conn.route_command(redis::cmd("PING"), route.clone()).await?;
        Ok(t.elapsed().as_nanos() as u64)
    }

    /// `n` PINGs to the primary of `route` after a warm-up.
    async fn pings(&self, route: &RoutingInfo, n: usize) -> Result<Vec<u64>> {
        for _ in 0..n / 10 + 1 {
            self.ping(route).await?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.ping(route).await?);
        }
        Ok(out)
    }

    /// `INFO server` of the primary of `route`: its port and Redis version.
    async fn node_info(&self, route: &RoutingInfo) -> Result<(String, String)> {
        let mut conn = self.conn.clone();
        let info: String = redis::from_redis_value(
            conn.route_command(redis::cmd("INFO").arg("server").clone(), route.clone()).await?,
        )?;
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("?").trim().to_owned();
        Ok((field("tcp_port:"), field("redis_version:")))
    }

    /// Delete everything under the run's prefix, on every primary.
    pub async fn clean_up(&self) -> Result<usize> {
        let mut deleted = 0;
        for (_, conn) in &self.primaries {
            let mut conn = conn.clone();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    // One DEL per key: a cluster node refuses a DEL of keys in several slots.
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("DEL").arg(key).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await?;
                    deleted += keys.len();
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

impl Locks for ClusterLockers {
    fn key(&self, c: Contender, name: &str) -> String {
        match self.shared.iter().find(|(sc, sn, _)| *sc == c && *sn == name) {
            Some((_, _, key)) => key.clone(),
            None => self.plain_key(c, name),
        }
    }

    async fn op(&self, c: Contender, key: &str, hold: Duration) -> Result<Duration> {
        let start = Instant::now();
        match c {
            Contender::Floor => {
                let owner = lockers::floor_owner();
                self.floor.lock(key, &owner).await?;
                let waited = start.elapsed();
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                if !self.floor.unlock(key, &owner).await? {
                    return Err(format!("floor: {key} was no longer ours at release").into());
                }
                Ok(waited)
            }
            Contender::Dlock => {
                let guard = self.dlock.lock(key).ttl(TTL).wait(WAIT).await?;
                let waited = start.elapsed();
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                if !guard.release().await? {
                    return Err("dlock: the lock was no longer ours at release".into());
                }
                Ok(waited)
            }
            Contender::DlockAttr => Ok(attr_op(key, hold).await? - start),
            Contender::Rslock | Contender::FloorPubsub => {
                Err(format!("{c} does not run on a Redis Cluster").into())
            }
        }
    }

    /// The CPU time of all primaries (`INFO cpu`, asked concurrently). Replicas, which apply
    /// every write too, are not counted.
    async fn server_cpu_ns(&self) -> Result<u64> {
        let infos = futures_util::future::try_join_all(self.primaries.iter().map(|(_, conn)| {
            let mut conn = conn.clone();
            async move { redis::cmd("INFO").arg("cpu").query_async::<String>(&mut conn).await }
        }))
        .await?;
        Ok(infos.iter().map(|info| lockers::info_cpu_ns(info)).sum())
    }
}

/// The attribute contender on the cluster (service `bench_cluster`).
#[dlock::distributed_lock(key = "bench:<k>", ttl = "10s", wait = "30s", service = "bench_cluster")]
async fn attr_op(k: &str, hold: Duration) -> std::result::Result<Instant, dlock::Error> {
    let entered = Instant::now();
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    Ok(entered)
}

/// A `RedisClusterBackend` on `seeds` (call timeout 2 s).
async fn connect_backend(seeds: &[String]) -> std::result::Result<dlock::RedisClusterBackend, dlock::Error> {
    dlock::RedisClusterBackend::builder(seeds.to_vec()).call_timeout(Duration::from_secs(2)).connect().await
}

/// The bench's service on `backend`: keys under `prefix`, the bench's ttl and wait.
fn bench_service(backend: dlock::RedisClusterBackend, prefix: &str) -> dlock::LockService {
    dlock::LockService::builder(backend).key_prefix(prefix).default_ttl(TTL).default_wait(WAIT).build()
}

/// The cluster's primaries (`CLUSTER NODES`), with a plain connection to each: the seed URL's
/// settings (credentials, database) at the node's address.
async fn connect_primaries(
    conn: &ClusterConnection,
    seed: &str,
) -> Result<Vec<(String, MultiplexedConnection)>> {
    let mut conn = conn.clone();
    let nodes: String = redis::from_redis_value(
        conn.route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?,
    )?;
    let seed = redis::Client::open(seed)?.get_connection_info().clone();
    let mut primaries = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else { continue };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
            continue;
        }
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else { continue };
        let info = seed.clone().set_addr(ConnectionAddr::Tcp(host.to_owned(), port.parse()?));
        let node = redis::Client::open(info)?.get_multiplexed_async_connection().await?;
        primaries.push((addr.to_owned(), node));
    }
    if primaries.is_empty() {
        return Err(format!("no primary in CLUSTER NODES:\n{nodes}").into());
    }
    primaries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(primaries)
}

/// A contender of the hand-off: one client (its own connections, as another process has).
#[derive(Clone)]
enum Client {
    Floor(Floor<ClusterConnection>),
    Dlock(dlock::LockService),
}

enum Held {
    Floor(String),
    Dlock(dlock::LockGuard),
}

impl Client {
    /// Acquire `key` (the floor: its full name), waiting in the contender's own way.
    async fn acquire(&self, key: &str) -> Result<Held> {
        match self {
            Client::Floor(floor) => {
                let owner = lockers::floor_owner();
                floor.lock(key, &owner).await?;
                Ok(Held::Floor(owner))
            }
            Client::Dlock(service) => Ok(Held::Dlock(service.lock(key).ttl(TTL).wait(WAIT).await?)),
        }
    }

    async fn release(&self, key: &str, held: Held) -> Result<()> {
        let ours = match (self, held) {
            (Client::Floor(floor), Held::Floor(owner)) => floor.unlock(key, &owner).await?,
            (_, Held::Dlock(guard)) => guard.release().await?,
            (Client::Dlock(_), Held::Floor(_)) => return Err("a floor lock held by a dlock client".into()),
        };
        if ours { Ok(()) } else { Err(format!("{key} was no longer ours at release").into()) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HandoffRow {
    pub contender: Contender,
    pub handoffs: usize,
    /// From the holder's release call to the waiter (in the other client) holding the lock.
    pub latency: Summary,
    /// The holder's release call alone.
    pub release_call: Summary,
    /// `PING` to the key's shard primary through the bench's cluster connection: 4 back to
    /// back in each hand-off's lead-in, the waiter already waiting (warm: each after the last).
    pub rtt_during: Summary,
    /// One `PING` to the key's shard primary in each hand-off's lead-in, after the same idle
    /// gap as the release that follows it, the waiter waiting: a round trip in the state the
    /// release starts from (the RTT the target counts in).
    pub rtt_idle: Summary,
    /// `latency.p50_us` over `rtt_during.p50_us`.
    pub p50_in_rtts: f64,
    /// `latency.p50_us` over `rtt_idle.p50_us`.
    pub p50_in_idle_rtts: f64,
    /// `latency.p50_us` over the PING p50 at the start of the group (`meta.rtt_start`: 1000
    /// back-to-back PINGs).
    pub p50_in_start_rtts: f64,
}

#[derive(Debug, Default)]
struct HandoffAcc {
    latency: Vec<u64>,
    release_call: Vec<u64>,
    rtt: Vec<u64>,
    rtt_idle: Vec<u64>,
}

/// `n` hand-offs of `key` between `clients[0]` and `clients[1]`, alternating: the holder waits
/// (the other client's acquire meanwhile finds the key held and waits), releases, and the
/// waiter becomes the next holder.
///
/// Each lead-in: 5 ms for the waiter to settle; 4 `PING`s back to back (warm RTTs); an idle
/// gap of 5–10 ms, one `PING` (the idle RTT), the same gap again, and the release. Both the
/// idle `PING` and the release start from the same state: nothing sent for the gap, the
/// waiter waiting. (On a VM whose idle vCPUs halt, a round trip that starts from idle costs
/// several warm ones: each side must be woken.)
async fn handoff_round(
    lk: &ClusterLockers,
    clients: &[Client; 2],
    key: &str,
    route: &RoutingInfo,
    n: usize,
    rng: &mut XorShift,
    acc: &mut HandoffAcc,
) -> Result<()> {
    let mut holder = 0;
    let mut held = clients[0].acquire(key).await?;
    for _ in 0..n {
        let waiter = {
            let (client, key) = (clients[1 - holder].clone(), key.to_owned());
            tokio::spawn(async move {
                let held = client.acquire(&key).await?;
                Ok::<_, lockers::BoxError>((held, Instant::now()))
            })
        };
        let gap = Duration::from_millis(5 + rng.below(6));
        tokio::time::sleep(Duration::from_millis(5)).await;
        for _ in 0..4 {
            acc.rtt.push(lk.ping(route).await?);
        }
        tokio::time::sleep(gap).await;
        acc.rtt_idle.push(lk.ping(route).await?);
        tokio::time::sleep(gap).await;
        let released = Instant::now();
        clients[holder].release(key, held).await?;
        acc.release_call.push(released.elapsed().as_nanos() as u64);
        let (next, granted) = waiter.await??;
        acc.latency.push(granted.saturating_duration_since(released).as_nanos() as u64);
        held = next;
        holder = 1 - holder;
    }
    clients[holder].release(key, held).await
}

/// Everything the group measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// `redis` = the seed nodes; `rtt_start` = PING to the uncontended key's primary through
    /// the cluster connection, before the first scenario.
    pub meta: Meta,
    /// Addresses of the primaries at the start.
    pub primaries: Vec<String>,
    /// The port of the primary serving the uncontended and hand-off keys.
    pub shared_key_primary: String,
    pub uncontended: Vec<UncontendedRow>,
    pub many_keys: Vec<ManyKeysRow>,
    pub handoff: Vec<HandoffRow>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    /// Keys deleted under the run's prefix at the end (the floor's and dlock's leftovers).
    pub keys_cleaned_up: usize,
    pub table: String,
}

/// Run the group on the cluster with seed nodes `seeds`; print the table and write
/// `cluster.json`. Returns the report (a full run also puts it into `latest.json`).
pub async fn run(
    seeds: &[String],
    quick: bool,
    secs: Duration,
    rounds: usize,
    out: &Path,
) -> Result<ClusterReport> {
    let began = Instant::now();
    let prefix = format!("dlockbench:{}:{}:", std::process::id(), unix_nanos() / 1_000_000);
    let lk = Arc::new(ClusterLockers::connect(seeds, &prefix).await?);
    // The hand-off's second client: another backend, its own connections and notice feed.
    let other = bench_service(connect_backend(seeds).await?, &prefix);
    let other_floor = Floor::on(ClusterClient::new(seeds.to_vec())?.get_async_connection().await?);
    let outcome = run_scenarios(&lk, &other, &other_floor, seeds, quick, secs, rounds).await;
    // Whatever happened, leave nothing behind.
    let cleaned = lk.clean_up().await;
    let mut report = outcome?;
    report.keys_cleaned_up = cleaned?;
    report.meta.loadavg_end = crate::loadavg();
    report.meta.total_secs = began.elapsed().as_secs_f64();
    crate::report::finish_cluster(&mut report);
    print!("{}", report.table);
    std::fs::create_dir_all(out)?;
    let json = out.join("cluster.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {} in {:.0} s", json.display(), report.meta.total_secs);
    Ok(report)
}

async fn run_scenarios(
    lk: &Arc<ClusterLockers>,
    other: &dlock::LockService,
    other_floor: &Floor<ClusterConnection>,
    seeds: &[String],
    quick: bool,
    secs: Duration,
    rounds: usize,
) -> Result<ClusterReport> {
    let shared_route = ClusterLockers::primary_of(&lk.key(Contender::Floor, "uncontended"));
    let (port, redis_version) = lk.node_info(&shared_route).await?;
    let rtt_start = Summary::of(&mut lk.pings(&shared_route, 1000).await?);
    let primaries: Vec<String> = lk.primaries.iter().map(|(addr, _)| addr.clone()).collect();
    eprintln!(
        "dlock-bench cluster: Redis {redis_version}, primaries {} (key prefix {}), uncontended and hand-off keys on :{port}, PING p50 {}",
        primaries.join(" "),
        lk.prefix,
        fmt_us(rtt_start.p50_us)
    );
    let mut report = ClusterReport {
        meta: Meta {
            redis: seeds.iter().map(|s| crate::redact(s)).collect::<Vec<_>>().join(","),
            quick,
            prefix: lk.prefix.clone(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_start: crate::loadavg(),
            loadavg_end: String::new(),
            started_unix: unix_nanos() / 1_000_000_000,
            total_secs: 0.0,
            redis_version,
            rounds,
            dlock_rev: crate::dlock_rev(),
            rtt_start,
        },
        primaries,
        shared_key_primary: port,
        uncontended: Vec::new(),
        many_keys: Vec::new(),
        handoff: Vec::new(),
        ratios: Vec::new(),
        targets: Vec::new(),
        keys_cleaned_up: 0,
        table: String::new(),
    };

    let (cycles, warmup) = if quick { (1000, 200) } else { (5000, 500) };
    report.uncontended =
        scenarios::uncontended(lk.as_ref(), "cluster ", &CONTENDERS, cycles, warmup, rounds).await?;
    report.many_keys = scenarios::many_keys(lk, "cluster ", &CONTENDERS, 64, 10_000, secs, rounds).await?;

    let n = if quick { 60 } else { 200 };
    let hrounds = rounds.min(n);
    eprintln!("cluster hand-off: {n} hand-offs between two clients per contender, in {hrounds} rounds…");
    let contenders = [Contender::Floor, Contender::Dlock];
    let mut accs: [HandoffAcc; 2] = Default::default();
    let mut rng = XorShift::new(unix_nanos());
    for round in 0..hrounds {
        for c in scenarios::round_order(&contenders, round) {
            let (i, clients, key) = match c {
                Contender::Floor => (
                    0,
                    [Client::Floor(lk.floor.clone()), Client::Floor(other_floor.clone())],
                    lk.key(c, "handoff"),
                ),
                _ => {
                    (1, [Client::Dlock(lk.dlock.clone()), Client::Dlock(other.clone())], lk.key(c, "handoff"))
                }
            };
            let route = ClusterLockers::primary_of(&lk.redis_name(c, &key));
            handoff_round(lk, &clients, &key, &route, n / hrounds, &mut rng, &mut accs[i]).await?;
        }
    }
    for (c, acc) in contenders.into_iter().zip(accs) {
        let HandoffAcc { mut latency, mut release_call, mut rtt, mut rtt_idle } = acc;
        let (latency, rtt_during) = (Summary::of(&mut latency), Summary::of(&mut rtt));
        let rtt_idle = Summary::of(&mut rtt_idle);
        report.handoff.push(HandoffRow {
            contender: c,
            handoffs: latency.n,
            p50_in_rtts: latency.p50_us / rtt_during.p50_us,
            p50_in_idle_rtts: latency.p50_us / rtt_idle.p50_us,
            rtt_idle,
            p50_in_start_rtts: latency.p50_us / report.meta.rtt_start.p50_us,
            latency,
            release_call: Summary::of(&mut release_call),
            rtt_during,
        });
    }
    Ok(report)
}
