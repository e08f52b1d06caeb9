//! `dlock-bench`: dlock side by side with rslock and the raw Redis floor.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- --redis redis://127.0.0.1:6379 [--quick]
//! ```
//!
//! See `bench/README.md` for what each scenario measures and how.

mod cluster;
mod handoff;
mod lockers;
mod postgres;
mod report;
mod scenarios;
mod stats;
mod svg;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::handoff::ChildArgs;
use crate::lockers::{Contender, Lockers, Locks, Result, unix_nanos};
use crate::report::{Meta, Report};

const USAGE: &str = "\
dlock-bench: dlock against rslock and the raw Redis floor, all on one Redis.

usage: dlock-bench [--redis URL] [--postgres URL] [--cluster URL,...] [--quick] [--only SCENARIO,...] [--secs S]
                   [--rounds N] [--memory-keys N] [--out DIR]
       dlock-bench [--redis URL] --cycles CONTENDER N

  --redis URL          Redis to use (default redis://127.0.0.1:6379); keys are prefixed per run
  --postgres URL       also run the `postgres` group: dlock's PostgreSQL backend beside a raw SQL
                       floor on that server (in a schema of its own, dropped at the end)
  --cluster URL[,URL]  also run the `cluster` group on the Redis Cluster with these seed nodes
                       (e.g. redis://127.0.0.1:7601,redis://127.0.0.1:7602): dlock's
                       RedisClusterBackend beside the raw floor on a redis-rs cluster connection
  --quick              a short run (about a minute)
  --only LIST          some of: uncontended,contended,handoff,many_keys,memory_backend,client_memory,
                       postgres, cluster (`--only postgres` and `--only cluster` need no Redis)
  --secs S             time per contender in each timed scenario (default 5, --quick 2)
  --rounds N           split each scenario into N rounds, contenders interleaved (default 5, --quick 2)
  --memory-keys N      keys for the client-memory scenario (default 1000000, --quick 100000)
  --out DIR            where latest.json and waits.svg go (default bench/results)
  --cycles C N         no report: N uncontended cycles of contender C (floor, rslock, dlock,
                       dlock_attr) after 1000 warm-up ones, on a current-thread runtime, for
                       counting instructions under `valgrind --tool=callgrind` (see README);
                       with --cluster, on the cluster (floor, dlock, dlock_attr)
";

const SCENARIOS: [&str; 8] = [
    "uncontended",
    "contended",
    "handoff",
    "many_keys",
    "memory_backend",
    "client_memory",
    "postgres",
    "cluster",
];

/// The scenario groups on a store of their own, run only when asked for.
const GROUPS: [&str; 2] = ["postgres", "cluster"];

/// The PostgreSQL of `--only postgres` without `--postgres`.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug)]
struct Config {
    redis: String,
    postgres: Option<String>,
    /// Seed nodes of the Redis Cluster for the `cluster` group.
    cluster: Option<Vec<String>>,
    quick: bool,
    only: Vec<String>,
    secs: Option<f64>,
    rounds: Option<usize>,
    memory_keys: Option<u64>,
    out: PathBuf,
}

enum Mode {
    Bench(Config),
    Child(ChildArgs),
    Cycles { redis: String, cluster: Option<Vec<String>>, contender: Contender, cycles: usize },
}

fn parse_args() -> std::result::Result<Mode, String> {
    let mut args = std::env::args().skip(1);
    let mut cfg = Config {
        redis: "redis://127.0.0.1:6379".into(),
        postgres: None,
        cluster: None,
        quick: false,
        only: SCENARIOS.iter().filter(|s| !GROUPS.contains(s)).map(|s| (*s).to_owned()).collect(),
        secs: None,
        rounds: None,
        memory_keys: None,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")),
    };
    let mut child = false;
    let mut cycles = None;
    let mut kv: HashMap<String, String> = HashMap::new();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--quick" => cfg.quick = true,
            "--child" => child = true,
            "--help" | "-h" => return Err(USAGE.to_owned()),
            "--redis" => cfg.redis = value("--redis")?,
            "--postgres" => cfg.postgres = Some(value("--postgres")?),
            "--cluster" => {
                let seeds: Vec<String> = value("--cluster")?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if seeds.is_empty() {
                    return Err(format!("--cluster needs at least one seed node URL\n\n{USAGE}"));
                }
                cfg.cluster = Some(seeds);
            }
            "--only" => {
                let list = value("--only")?;
                cfg.only = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = cfg.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!("unknown scenario `{bad}`\n\n{USAGE}"));
                }
            }
            "--secs" => cfg.secs = Some(value("--secs")?.parse().map_err(|e| format!("--secs: {e}"))?),
            "--rounds" => {
                let n: usize = value("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?;
                cfg.rounds = Some(n.max(1));
            }
            "--memory-keys" => {
                cfg.memory_keys =
                    Some(value("--memory-keys")?.parse().map_err(|e| format!("--memory-keys: {e}"))?);
            }
            "--out" => cfg.out = PathBuf::from(value("--out")?),
            "--cycles" => {
                let name = value("--cycles")?;
                let contender = Contender::parse(&name)
                    .filter(|c| Contender::ALL.contains(c) || cluster::CONTENDERS.contains(c))
                    .ok_or_else(|| format!("--cycles: unknown contender `{name}`\n\n{USAGE}"))?;
                let n = value("--cycles")?.parse().map_err(|e| format!("--cycles: {e}"))?;
                cycles = Some((contender, n));
            }
            "--contender" | "--prefix" | "--tasks" | "--hold-ms" => {
                let v = value(&arg)?;
                kv.insert(arg, v);
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    if let Some((contender, cycles)) = cycles {
        if cfg.cluster.is_some() && !cluster::CONTENDERS.contains(&contender) {
            return Err(format!("--cycles: {contender} does not run on a Redis Cluster\n\n{USAGE}"));
        }
        return Ok(Mode::Cycles { redis: cfg.redis, cluster: cfg.cluster, contender, cycles });
    }
    if cfg.postgres.is_some() && !cfg.only.iter().any(|s| s == "postgres") {
        cfg.only.push("postgres".to_owned());
    }
    if cfg.cluster.is_some() && !cfg.only.iter().any(|s| s == "cluster") {
        cfg.only.push("cluster".to_owned());
    }
    if cfg.cluster.is_none() && cfg.only.iter().any(|s| s == "cluster") {
        return Err(format!("the cluster group needs --cluster URL[,URL...] (its seed nodes)\n\n{USAGE}"));
    }
    if !child {
        return Ok(Mode::Bench(cfg));
    }
    let get = |k: &str| kv.get(k).cloned().ok_or_else(|| format!("--child needs {k}"));
    Ok(Mode::Child(ChildArgs {
        contender: Contender::parse(&get("--contender")?).ok_or("--child: unknown contender")?,
        redis: cfg.redis,
        prefix: get("--prefix")?,
        tasks: get("--tasks")?.parse().map_err(|e| format!("--tasks: {e}"))?,
        secs: cfg.secs.ok_or("--child needs --secs")?,
        hold_ms: get("--hold-ms")?.parse().map_err(|e| format!("--hold-ms: {e}"))?,
    }))
}

fn main() {
    let mode = match parse_args() {
        Ok(mode) => mode,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Mode::Cycles { redis, cluster, contender, cycles } = mode {
        // One thread, so that callgrind's count does not depend on which worker ran what.
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        if let Err(err) = runtime.block_on(count_cycles(&redis, cluster.as_deref(), contender, cycles)) {
            eprintln!("dlock-bench: {err}");
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    // Everything runs in a spawned task, on a runtime worker, as an application's handlers do
    // (code in `block_on` itself runs outside the workers and wakes them for every spawn).
    let outcome = runtime.block_on(async move {
        let work = tokio::spawn(async move {
            match mode {
                Mode::Bench(cfg) => bench(cfg).await,
                Mode::Child(args) => handoff::child_main(args).await,
                Mode::Cycles { .. } => Ok(()),
            }
        });
        match work.await {
            Ok(outcome) => outcome,
            Err(err) => Err(err.into()),
        }
    });
    if let Err(err) = outcome {
        eprintln!("dlock-bench: {err}");
        std::process::exit(1);
    }
}

/// `--cycles`: `cycles` uncontended lock+unlock cycles of `c` after 1000 warm-up ones, on one
/// Redis or (with `cluster`, its seed nodes) on a Redis Cluster. Under callgrind,
/// (instructions at N2 − instructions at N1) / (N2 − N1) is what one cycle costs the client,
/// without anything else the machine does.
async fn count_cycles(url: &str, cluster: Option<&[String]>, c: Contender, cycles: usize) -> Result<()> {
    if let Some(seeds) = cluster {
        // A fixed prefix: finding keys in the floor's slot costs a number of tries that
        // depends on the prefix, and it must cost the same in every run (the instruction count
        // of one cycle is a difference of two runs). Two `--cycles` runs on one cluster at
        // once would share keys: the second finds them held and waits (keys a crashed run
        // left expire with their 10 s ttl; nothing is deleted before the run).
        let prefix = "dlockbench:cycles:";
        let lk = cluster::ClusterLockers::connect(seeds, prefix).await?;
        // The uncontended scenario's key: on the floor's shard for every contender.
        let counted = run_cycles(&lk, c, "uncontended", cycles).await;
        lk.clean_up().await?;
        return counted;
    }
    let prefix = format!("dlockbench:{}:{}:", std::process::id(), unix_nanos() / 1_000_000);
    let lk = Lockers::connect(url, &prefix).await?;
    dlock::register("bench", lk.dlock.clone())?;
    let counted = run_cycles(&lk, c, "cycles", cycles).await;
    clean_up(&lk, &prefix).await?;
    counted
}

/// The cycles of [`count_cycles`] on `lk`'s key for `name`.
async fn run_cycles(lk: &impl Locks, c: Contender, name: &str, cycles: usize) -> Result<()> {
    let key = lk.key(c, name);
    for _ in 0..1000 {
        lk.op(c, &key, Duration::ZERO).await?;
    }
    let start = Instant::now();
    for _ in 0..cycles {
        lk.op(c, &key, Duration::ZERO).await?;
    }
    let per_cycle = start.elapsed().as_secs_f64() * 1e6 / cycles.max(1) as f64;
    eprintln!("{c}: {cycles} cycles, {per_cycle:.1} µs/cycle");
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

async fn bench(cfg: Config) -> Result<()> {
    let began = Instant::now();
    let wants = |s: &str| cfg.only.iter().any(|o| o == s);
    let secs = Duration::from_secs_f64(cfg.secs.unwrap_or(if cfg.quick { 2.0 } else { 5.0 }));
    let rounds = cfg.rounds.unwrap_or(if cfg.quick { 2 } else { 5 });
    if wants("postgres") {
        let url = cfg.postgres.as_deref().unwrap_or(DEFAULT_POSTGRES);
        postgres::run(url, cfg.quick, secs, rounds, &cfg.out).await?;
    }
    let mut cluster_report = None;
    if let Some(seeds) = cfg.cluster.as_deref().filter(|_| wants("cluster")) {
        cluster_report = Some(cluster::run(seeds, cfg.quick, secs, rounds, &cfg.out).await?);
    }
    if cfg.only.iter().all(|s| GROUPS.contains(&s.as_str())) {
        return Ok(());
    }
    let prefix = format!("dlockbench:{}:{}:", std::process::id(), unix_nanos() / 1_000_000);
    let lk = Arc::new(Lockers::connect(&cfg.redis, &prefix).await?);
    dlock::register("bench", lk.dlock.clone())?;
    let memory = dlock::LockService::builder(dlock::MemoryBackend::new())
        .default_ttl(lockers::TTL)
        .default_wait(lockers::WAIT)
        .build();
    dlock::register("bench_mem", memory.clone())?;

    let mut conn = lk.conn.clone();
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
    let redis_version =
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_owned();
    let mut report = Report {
        meta: Meta {
            redis: redact(&cfg.redis),
            quick: cfg.quick,
            prefix: prefix.clone(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            started_unix: unix_nanos() / 1_000_000_000,
            total_secs: 0.0,
            rounds: 0,
            dlock_rev: dlock_rev(),
            rtt_start: stats::Summary::of(&mut lockers::ping_rtts(&lk.conn, 1000).await?),
            redis_version,
        },
        uncontended: Vec::new(),
        contended: Vec::new(),
        handoff: Vec::new(),
        many_keys: Vec::new(),
        memory_backend: Vec::new(),
        client_memory: None,
        cluster: cluster_report,
        ratios: Vec::new(),
        targets: Vec::new(),
        table: String::new(),
    };
    eprintln!(
        "dlock-bench: Redis {} (key prefix {prefix}), {}",
        report.meta.redis, report.meta.redis_version
    );

    report.meta.rounds = rounds;
    if wants("uncontended") {
        let (cycles, warmup) = if cfg.quick { (1000, 200) } else { (10_000, 500) };
        report.uncontended =
            scenarios::uncontended(lk.as_ref(), "", &Contender::ALL, cycles, warmup, rounds).await?;
    }
    if wants("contended") {
        for hold in [0, 1] {
            let hold = Duration::from_millis(hold);
            eprintln!("contended: 8 tasks, {hold:?} sections, {secs:?} per contender in {rounds} rounds…");
            let mut accs: HashMap<Contender, scenarios::ContendedAcc> = HashMap::new();
            for round in 0..rounds {
                for c in scenarios::round_order(&Contender::ALL, round) {
                    let acc = accs.entry(c).or_default();
                    scenarios::contended_round(&lk, c, 8, hold, secs / rounds as u32, acc).await?;
                }
            }
            for c in Contender::ALL {
                report.contended.push(accs.remove(&c).unwrap_or_default().row(c));
            }
        }
    }
    if wants("handoff") {
        let contenders = [Contender::Floor, Contender::Rslock, Contender::Dlock, Contender::FloorPubsub];
        let hrounds = rounds.min(3);
        eprintln!("hand-off: 4 processes × 8 tasks, {secs:?} per contender in {hrounds} rounds…");
        let mut accs: HashMap<Contender, handoff::HandoffAcc> = HashMap::new();
        for round in 0..hrounds {
            for c in scenarios::round_order(&contenders, round) {
                let args = ChildArgs {
                    contender: c,
                    redis: cfg.redis.clone(),
                    prefix: prefix.clone(),
                    tasks: 8,
                    secs: secs.as_secs_f64() / hrounds as f64,
                    hold_ms: 1,
                };
                handoff::run_round(&lk, &args, 4, accs.entry(c).or_default()).await?;
            }
        }
        for c in contenders {
            report.handoff.push(accs.remove(&c).unwrap_or_default().row(c));
        }
    }
    if wants("many_keys") {
        report.many_keys = scenarios::many_keys(&lk, "", &Contender::ALL, 64, 10_000, secs, rounds).await?;
    }
    if wants("memory_backend") {
        let iters = if cfg.quick { 50_000 } else { 300_000 };
        for c in [Contender::Dlock, Contender::DlockAttr] {
            eprintln!("MemoryBackend: {c}, {iters} cycles…");
            report.memory_backend.push(scenarios::memory_cycle(&memory, c, iters, "multi_thread").await?);
            let row = scenarios::memory_cycle_current_thread(memory.clone(), c, iters).await?;
            report.memory_backend.push(row);
        }
    }
    if wants("client_memory") {
        let keys = cfg.memory_keys.unwrap_or(if cfg.quick { 100_000 } else { 1_000_000 });
        eprintln!(
            "client memory: {keys} distinct keys, 64 tasks, every {}th contended by a second client…",
            scenarios::CONTENDED_EVERY
        );
        let other_backend = dlock::RedisBackend::connect(cfg.redis.as_str()).await?;
        let other = dlock::LockService::builder(other_backend.clone())
            .key_prefix(prefix.as_str())
            .default_ttl(lockers::TTL)
            .default_wait(lockers::WAIT)
            .build();
        let mut row = scenarios::client_memory(Arc::clone(&lk), other, keys, 64).await?;
        let (client, server, numsub) = channels_left(&lk, &other_backend, &prefix, keys).await?;
        row.client_subscribed_channels = client;
        row.server_channels = server;
        row.server_numsub = numsub;
        report.client_memory = Some(row);
    }

    clean_up(&lk, &prefix).await?;
    report.meta.loadavg_end = loadavg();
    report.meta.total_secs = began.elapsed().as_secs_f64();
    report::finish(&mut report);
    print!("{}", report.table);

    std::fs::create_dir_all(&cfg.out)?;
    let json = cfg.out.join("latest.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    let series: Vec<(Contender, Vec<u64>)> = report
        .contended
        .iter()
        .filter(|r| r.hold_ms == 1)
        .map(|r| (r.contender, r.waits_ns.clone()))
        .collect();
    if !series.is_empty() {
        let title = format!(
            "Wait for the lock: 8 tasks on one key, 1 ms critical sections, {:.0} s per contender",
            secs.as_secs_f64()
        );
        std::fs::write(cfg.out.join("waits.svg"), svg::wait_cdf(&title, &series))?;
    }
    eprintln!("wrote {} (and waits.svg) in {:.0} s", json.display(), report.meta.total_secs);
    Ok(())
}

/// Release channels still subscribed at the end: both clients' counts, the server's channels
/// under the run prefix, and `PUBSUB NUMSUB` over a sample of the contended keys' channels.
async fn channels_left(
    lk: &Lockers,
    other: &dlock::RedisBackend,
    prefix: &str,
    keys: u64,
) -> Result<(usize, usize, u64)> {
    let mut conn = lk.conn.clone();
    // Every channel dlock uses for a key lives under the key, so under the run's prefix.
    let pattern = format!("{prefix}*");
    let last = (keys.saturating_sub(1) / scenarios::CONTENDED_EVERY) * scenarios::CONTENDED_EVERY;
    let sample: Vec<String> = (0..200u64)
        .map_while(|n| last.checked_sub(n * scenarios::CONTENDED_EVERY))
        .map(|i| other.notice_channel(&format!("{prefix}mem:{i}")))
        .collect();
    // Unsubscribing happens on dlock's subscriber task: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let client = lk.redis_backend.subscribed_channels() + other.subscribed_channels();
        let server: Vec<String> =
            redis::cmd("PUBSUB").arg("CHANNELS").arg(&pattern).query_async(&mut conn).await?;
        let numsub: HashMap<String, u64> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(&sample).query_async(&mut conn).await?;
        let numsub: u64 = numsub.values().sum();
        if (client == 0 && server.is_empty() && numsub == 0) || Instant::now() >= deadline {
            return Ok((client, server.len(), numsub));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delete whatever the run left under its prefix (stamps, fencing counter).
async fn clean_up(lk: &Lockers, prefix: &str) -> Result<()> {
    let mut conn = lk.conn.clone();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The dlock commit measured, with `+dirty` when `dlock/` or `dlock-macros/` has changes.
fn dlock_rev() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    match git(&["status", "--porcelain", "--", "dlock", "dlock-macros"]) {
        Some(changes) if !changes.is_empty() => format!("{rev}+dirty"),
        _ => rev,
    }
}
