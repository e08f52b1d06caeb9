//! The `postgres` scenario group: dlock's PostgreSQL backend beside a raw SQL floor on the same
//! server, in one run.
//!
//! The floor runs the very statements dlock's backend runs (the acquire `INSERT … ON CONFLICT
//! DO UPDATE … RETURNING` and the owner-checked release `UPDATE`, unprepared, one round trip
//! each) on plain `tokio-postgres` connections — one per task, no pool — and retries every
//! 1 ms while the key is held. Nothing else: no renewal, no queue, no notices. dlock's
//! contenders are its manual API and its attribute over a `PostgresBackend` (pool of 10,
//! connections driven on the backend's own thread, LISTEN/NOTIFY for waiters).
//!
//! Scenarios: uncontended lock+unlock cycles (contenders interleaved in 50-cycle slices);
//! 8 tasks on one key with 1 ms sections (throughput, per-task min/max, wait percentiles);
//! hand-off from one client to another (from the release call to the next holder running, in
//! round trips of one lock statement: on a server that flushes its WAL at every commit, that
//! is mostly the flush, and a `SELECT 1` is a far smaller unit).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dlock::tokio_postgres::types::Type;
use dlock::tokio_postgres::{self, Client, NoTls};
use dlock::{LockService, PostgresBackend};
use serde::Serialize;
use tokio::time::Instant;

use crate::lockers::{Result, XorShift, unix_nanos};
use crate::stats::{Summary, fmt_us};

const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(30);
const SPIN: Duration = Duration::from_millis(1);
const SLICE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Contender {
    /// The same statements on plain connections; spin every 1 ms when held.
    Floor,
    /// `service.lock(key).await` + `guard.release().await`.
    Dlock,
    /// `#[dlock::distributed_lock(...)]`.
    DlockAttr,
}

const ALL: [Contender; 3] = [Contender::Floor, Contender::Dlock, Contender::DlockAttr];

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Floor => "floor (raw SQL)",
            Contender::Dlock => "dlock manual",
            Contender::DlockAttr => "dlock #[attr]",
        }
    }
}

/// The floor: dlock's two statements for its schema, on connections of its own.
struct Floor {
    acquire: String,
    release: String,
}

impl Floor {
    /// The statements dlock's backend builds for `schema` (see `dlock/src/postgres/sql.rs`),
    /// written out: the floor must pay for exactly the same server work. (The channel prefix
    /// in the release differs — dlock hashes the schema name into it — but the floor never
    /// asks for notices, so that branch never runs.)
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let tokens = format!("'{s}.dlock_tokens'");
        let lease = "$3 * interval '1 millisecond'";
        let acquire = format!(
            "INSERT INTO {s}.dlock_locks AS l (key, owner, token, expires_at) \
             VALUES ($1, $2, nextval({tokens}), clock_timestamp() + {lease}) \
             ON CONFLICT (key) DO UPDATE SET (owner, token, expires_at, waiting_until) = ( \
               SELECT CASE WHEN c.take THEN $2 ELSE l.owner END, \
                      CASE WHEN c.take THEN nextval({tokens}) ELSE l.token END, \
                      CASE WHEN c.take THEN c.now + {lease} ELSE l.expires_at END, \
                      CASE WHEN c.take OR NOT $4 THEN l.waiting_until \
                           ELSE greatest(l.waiting_until, c.now + interval '3000 milliseconds') END \
               FROM (SELECT n.now, l.owner IS NULL OR l.expires_at <= n.now OR l.owner = $2 AS take \
                     FROM (SELECT clock_timestamp() AS now) n) c) \
             RETURNING CASE WHEN l.owner = $2 THEN l.token END AS token, \
               greatest(0, ceil(extract(epoch FROM l.expires_at - clock_timestamp()) * 1000))::int8 AS remaining_ms"
        );
        let release = format!(
            "UPDATE {s}.dlock_locks AS l SET owner = NULL, expires_at = clock_timestamp(), \
               waiting_until = CASE WHEN l.waiting_until > clock_timestamp() THEN '-infinity'::timestamptz END \
             WHERE l.key = $1 AND l.owner = $2 AND l.expires_at > clock_timestamp() \
             RETURNING CASE WHEN l.waiting_until = '-infinity' \
               THEN (SELECT true FROM pg_notify('dlock_00000000_' || left(encode(sha256(convert_to(l.key, 'UTF8')), 'hex'), 40), '')) ELSE false END AS notified"
        );
        Self { acquire, release }
    }

    async fn try_lock(&self, client: &Client, key: &str, owner: &str) -> Result<bool> {
        let ttl = TTL.as_millis() as i64;
        let rows = client
            .query_typed(
                &self.acquire,
                &[(&key, Type::TEXT), (&owner, Type::TEXT), (&ttl, Type::INT8), (&false, Type::BOOL)],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<i64>>(0)).is_some())
    }

    async fn lock(&self, client: &Client, key: &str, owner: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while !self.try_lock(client, key, owner).await? {
            if Instant::now() >= deadline {
                return Err(format!("floor: {key} not acquired within {WAIT:?}").into());
            }
            tokio::time::sleep(SPIN).await;
        }
        Ok(())
    }

    async fn unlock(&self, client: &Client, key: &str, owner: &str) -> Result<()> {
        let rows = client.query_typed(&self.release, &[(&key, Type::TEXT), (&owner, Type::TEXT)]).await?;
        if rows.is_empty() {
            return Err(format!("floor: {key} was no longer ours at release").into());
        }
        Ok(())
    }
}

/// Everything the group needs, on one server.
struct Bench {
    floor: Floor,
    /// One plain connection per task (the floor's), plus one for `SELECT 1`.
    clients: Vec<Client>,
    service: LockService,
    /// A second client ("another process") for the hand-off.
    other: LockService,
    prefix: String,
}

async fn plain_client(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

static OWNER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn owner() -> String {
    format!("floor-{}-{}", std::process::id(), OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

impl Bench {
    /// One cycle (acquire, hold, release) of `c` on `key`, the floor on connection `conn`.
    /// Returns how long the acquisition took (for the attribute: to the body's first line).
    async fn op(&self, c: Contender, conn: usize, key: &str, hold: Duration) -> Result<Duration> {
        let start = Instant::now();
        match c {
            Contender::Floor => {
                let (client, owner) = (&self.clients[conn], owner());
                let key = format!("{}{key}", self.prefix);
                self.floor.lock(client, &key, &owner).await?;
                let waited = start.elapsed();
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                self.floor.unlock(client, &key, &owner).await?;
                Ok(waited)
            }
            Contender::Dlock => {
                let guard = self.service.lock(key).ttl(TTL).wait(WAIT).await?;
                let waited = start.elapsed();
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                if !guard.release().await? {
                    return Err("dlock: no longer ours at release".into());
                }
                Ok(waited)
            }
            Contender::DlockAttr => Ok(attr_op(key, hold).await? - start),
        }
    }
}

#[dlock::distributed_lock(key = "<k>", ttl = "10s", wait = "30s", service = "bench_pg")]
async fn attr_op(k: &str, hold: Duration) -> std::result::Result<Instant, dlock::Error> {
    let entered = Instant::now();
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    Ok(entered)
}

#[derive(Debug, Serialize)]
struct UncontendedRow {
    contender: Contender,
    cycles: usize,
    cycles_per_sec: f64,
    /// Per round, this contender's rate over the floor's.
    round_ratios: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct ContendedRow {
    contender: Contender,
    sections_per_sec: f64,
    per_task_sections: Vec<u64>,
    fairness: f64,
    wait: Summary,
    errors: usize,
}

#[derive(Debug, Serialize)]
struct HandoffRow {
    contender: Contender,
    latency: Summary,
    /// The p50 latency in lock-statement round trips (`statement_rtt.p50_us`).
    p50_rtts: f64,
}

#[derive(Debug, Serialize)]
struct PgReport {
    url: String,
    server_version: String,
    schema: String,
    quick: bool,
    rounds: usize,
    rtt: Summary,
    /// One acquire or release statement of the floor, uncontended.
    statement_rtt: Summary,
    uncontended: Vec<UncontendedRow>,
    contended: Vec<ContendedRow>,
    handoff: Vec<HandoffRow>,
    table: String,
}

/// Run the group against the PostgreSQL at `url`; print the table and write `postgres.json`.
pub async fn run(url: &str, quick: bool, secs: Duration, rounds: usize, out: &Path) -> Result<()> {
    let schema = format!("dlockbench_{}_{}", std::process::id(), unix_nanos() / 1_000_000 % 1_000_000);
    let backend = PostgresBackend::builder(url).schema(schema.as_str()).connect().await?;
    let other_backend = PostgresBackend::builder(url).schema(schema.as_str()).connect().await?;
    let prefix = "pgbench:".to_owned();
    let build = |b: PostgresBackend| {
        LockService::builder(b).key_prefix(prefix.as_str()).default_ttl(TTL).default_wait(WAIT).build()
    };
    let service = build(backend.clone());
    dlock::register("bench_pg", service.clone())?;
    let mut clients = Vec::new();
    for _ in 0..9 {
        clients.push(plain_client(url).await?);
    }
    let bench =
        Arc::new(Bench { floor: Floor::new(&schema), clients, service, other: build(other_backend), prefix });
    let outcome = run_scenarios(&bench, url, &schema, quick, secs, rounds, out).await;
    // Whatever happened, leave nothing behind.
    let _ = bench.clients[8].batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    outcome
}

async fn run_scenarios(
    bench: &Arc<Bench>,
    url: &str,
    schema: &str,
    quick: bool,
    secs: Duration,
    rounds: usize,
    out: &Path,
) -> Result<()> {
    let rtt_client = &bench.clients[8];
    let server_version: String = rtt_client.query_one("SHOW server_version", &[]).await?.get(0);
    let mut rtts = Vec::new();
    for i in 0..1100 {
        let t = Instant::now();
        rtt_client.query_typed("SELECT 1", &[]).await?;
        if i >= 100 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    let rtt = Summary::of(&mut rtts);
    // One lock statement's round trip (parse, plan, row lock, commit with its WAL flush): the
    // unit hand-offs are counted in.
    let mut statements = Vec::new();
    for i in 0..300 {
        let (key, owner) = (format!("{}rtt:{i}", bench.prefix), owner());
        let t = Instant::now();
        bench.floor.lock(rtt_client, &key, &owner).await?;
        let locked = Instant::now();
        bench.floor.unlock(rtt_client, &key, &owner).await?;
        statements.push((locked - t).as_nanos() as u64);
        statements.push(locked.elapsed().as_nanos() as u64);
    }
    let statement_rtt = Summary::of(&mut statements);
    eprintln!(
        "postgres: PostgreSQL {server_version} at {}, SELECT 1 p50 {}, lock statement p50 {}",
        redact(url),
        fmt_us(rtt.p50_us),
        fmt_us(statement_rtt.p50_us)
    );

    // Uncontended.
    let cycles = if quick { 1000 } else { 5000 };
    let per_round = cycles / rounds;
    let slices = (per_round / SLICE).max(1);
    eprintln!(
        "postgres uncontended: {cycles} cycles per contender in {rounds} rounds of {slices} interleaved slices…"
    );
    for c in ALL {
        for _ in 0..200 {
            bench.op(c, 0, &format!("uncontended:{c:?}"), Duration::ZERO).await?;
        }
    }
    let mut time = [Duration::ZERO; 3];
    let mut done = [0usize; 3];
    let mut round_rates = vec![[0.0f64; 3]; rounds];
    for (round, rates) in round_rates.iter_mut().enumerate() {
        let mut round_time = [Duration::ZERO; 3];
        for slice in 0..slices {
            for i in rotation(round * slices + slice) {
                let c = ALL[i];
                let key = format!("uncontended:{c:?}");
                let t = Instant::now();
                for _ in 0..per_round / slices {
                    bench.op(c, 0, &key, Duration::ZERO).await?;
                }
                round_time[i] += t.elapsed();
                done[i] += per_round / slices;
            }
        }
        for i in 0..3 {
            time[i] += round_time[i];
            rates[i] = (per_round / slices * slices) as f64 / round_time[i].as_secs_f64();
        }
    }
    let uncontended: Vec<UncontendedRow> = ALL
        .iter()
        .enumerate()
        .map(|(i, &c)| UncontendedRow {
            contender: c,
            cycles: done[i],
            cycles_per_sec: done[i] as f64 / time[i].as_secs_f64(),
            round_ratios: round_rates.iter().map(|r| r[i] / r[0]).collect(),
        })
        .collect();

    // 8 tasks, one key, 1 ms sections.
    let hold = Duration::from_millis(1);
    eprintln!("postgres contended: 8 tasks, 1 ms sections, {secs:?} per contender in {rounds} rounds…");
    let mut per_task = [[0u64; 8]; 3];
    let mut waits: [Vec<u64>; 3] = Default::default();
    let mut errors = [0usize; 3];
    let mut elapsed = [0.0f64; 3];
    for round in 0..rounds {
        for i in rotation(round) {
            let c = ALL[i];
            let start = Instant::now() + Duration::from_millis(20);
            let end = start + secs / rounds as u32;
            let handles: Vec<_> = (0..8)
                .map(|task| {
                    let bench = Arc::clone(bench);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(start).await;
                        let (mut w, mut errs) = (Vec::new(), 0usize);
                        while Instant::now() < end {
                            match bench.op(c, task, &format!("contended:{c:?}"), hold).await {
                                Ok(waited) => w.push(waited.as_nanos() as u64),
                                Err(err) => {
                                    errs += 1;
                                    eprintln!("  {}: error: {err}", c.label());
                                    if errs > 20 {
                                        break;
                                    }
                                }
                            }
                        }
                        (w, errs, Instant::now())
                    })
                })
                .collect();
            let mut last = start;
            for (task, h) in handles.into_iter().enumerate() {
                let (w, errs, finished) = h.await?;
                per_task[i][task] += w.len() as u64;
                waits[i].extend(w);
                errors[i] += errs;
                last = last.max(finished);
            }
            elapsed[i] += (last - start).as_secs_f64();
        }
    }
    let contended: Vec<ContendedRow> = ALL
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let (min, max) = (
                per_task[i].iter().min().copied().unwrap_or(0),
                per_task[i].iter().max().copied().unwrap_or(0),
            );
            ContendedRow {
                contender: c,
                sections_per_sec: per_task[i].iter().sum::<u64>() as f64 / elapsed[i],
                per_task_sections: per_task[i].to_vec(),
                fairness: if max == 0 { 0.0 } else { min as f64 / max as f64 },
                wait: Summary::of(&mut waits[i]),
                errors: errors[i],
            }
        })
        .collect();

    // Hand-off from one client to another.
    let n = if quick { 50 } else { 200 };
    eprintln!("postgres hand-off: {n} releases to a waiting second client per contender…");
    let mut handoff = Vec::new();
    let mut rng = XorShift::new(unix_nanos());
    for c in [Contender::Floor, Contender::Dlock] {
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("handoff:{c:?}:{i}");
            let (released_tx, released_rx) = tokio::sync::oneshot::channel::<Instant>();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            let holder = {
                let (bench, key) = (Arc::clone(bench), key.clone());
                let lead = Duration::from_millis(20 + rng.below(10));
                tokio::spawn(async move {
                    let owner = owner();
                    let full = format!("{}{key}", bench.prefix);
                    let guard = match c {
                        Contender::Floor => {
                            bench.floor.lock(&bench.clients[0], &full, &owner).await?;
                            None
                        }
                        _ => Some(bench.service.lock(&key).await?),
                    };
                    let _ = ready_tx.send(());
                    // Let the waiter find the key held and settle into waiting.
                    tokio::time::sleep(lead).await;
                    let at = Instant::now();
                    let _ = released_tx.send(at);
                    match guard {
                        None => bench.floor.unlock(&bench.clients[0], &full, &owner).await?,
                        Some(guard) => {
                            guard.release().await?;
                        }
                    }
                    Ok::<_, crate::lockers::BoxError>(())
                })
            };
            ready_rx.await?;
            let running = match c {
                Contender::Floor => {
                    let owner = owner();
                    let full = format!("{}{key}", bench.prefix);
                    bench.floor.lock(&bench.clients[1], &full, &owner).await?;
                    let running = Instant::now();
                    bench.floor.unlock(&bench.clients[1], &full, &owner).await?;
                    running
                }
                _ => {
                    let guard = bench.other.lock(&key).await?;
                    let running = Instant::now();
                    guard.release().await?;
                    running
                }
            };
            holder.await??;
            let released = released_rx.await?;
            latencies.push(running.saturating_duration_since(released).as_nanos() as u64);
        }
        let latency = Summary::of(&mut latencies);
        handoff.push(HandoffRow { contender: c, p50_rtts: latency.p50_us / statement_rtt.p50_us, latency });
    }

    let mut report = PgReport {
        url: redact(url),
        server_version,
        schema: schema.to_owned(),
        quick,
        rounds,
        rtt,
        statement_rtt,
        uncontended,
        contended,
        handoff,
        table: String::new(),
    };
    report.table = table(&report);
    print!("{}", report.table);
    std::fs::create_dir_all(out)?;
    let json = out.join("postgres.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

/// The contenders' order in round `round`: each goes first, second and last in turn.
fn rotation(round: usize) -> [usize; 3] {
    [round % 3, (round + 1) % 3, (round + 2) % 3]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn table(r: &PgReport) -> String {
    let mut t = String::new();
    let un = |c: Contender| r.uncontended.iter().find(|row| row.contender == c);
    let co = |c: Contender| r.contended.iter().find(|row| row.contender == c);
    let ho = |c: Contender| r.handoff.iter().find(|row| row.contender == c);
    t.push_str(&format!(
        "\nPostgreSQL {} ({}), round trip p50: SELECT 1 {}, one lock statement (RTT below) {}\n\n",
        r.server_version,
        r.url,
        fmt_us(r.rtt.p50_us),
        fmt_us(r.statement_rtt.p50_us)
    ));
    t.push_str(
        "| scenario | floor (raw SQL) | dlock manual | dlock #[attr] | target |\n|---|---|---|---|---|\n",
    );
    let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("—".to_owned(), f);
    let floor_rate = un(Contender::Floor).map_or(0.0, |row| row.cycles_per_sec);
    let dlock_ratio = un(Contender::Dlock).map_or(0.0, |row| median(row.round_ratios.clone()));
    let attr_ratio = un(Contender::DlockAttr).map_or(0.0, |row| median(row.round_ratios.clone()));
    t.push_str(&format!(
        "| uncontended lock+unlock, cycles/s | {} | {} | {} | ≥ 0.9× floor: **{:.2}×** manual, **{:.2}×** attr (median of per-round ratios; pooled {:.2}×) |\n",
        cell(Some(floor_rate), &|v| format!("{v:.0}")),
        cell(un(Contender::Dlock).map(|row| row.cycles_per_sec), &|v| format!("{v:.0}")),
        cell(un(Contender::DlockAttr).map(|row| row.cycles_per_sec), &|v| format!("{v:.0}")),
        dlock_ratio,
        attr_ratio,
        un(Contender::Dlock).map_or(0.0, |row| row.cycles_per_sec) / floor_rate,
    ));
    let row = |name: &str, f: &dyn Fn(&ContendedRow) -> String, target: String| {
        format!(
            "| {name} | {} | {} | {} | {target} |\n",
            co(Contender::Floor).map_or("—".into(), f),
            co(Contender::Dlock).map_or("—".into(), f),
            co(Contender::DlockAttr).map_or("—".into(), f)
        )
    };
    t.push_str(&row(
        "8 tasks, 1 ms sections: sections/s",
        &|c| format!("{:.0}", c.sections_per_sec),
        String::new(),
    ));
    let fairness = co(Contender::Dlock).map_or(0.0, |c| c.fairness);
    t.push_str(&row(
        "8 tasks, 1 ms: per-task min/max",
        &|c| format!("{:.2}", c.fairness),
        format!("≥ 0.7: **{fairness:.2}**"),
    ));
    t.push_str(&row(
        "8 tasks, 1 ms: wait p50 / p99",
        &|c| format!("{} / {}", fmt_us(c.wait.p50_us), fmt_us(c.wait.p99_us)),
        "reported".into(),
    ));
    t.push_str(&row("8 tasks, 1 ms: errors", &|c| c.errors.to_string(), String::new()));
    let h = |c: Contender| {
        ho(c).map_or("—".into(), |h| {
            format!("{} = {:.1} RTT (p99 {})", fmt_us(h.latency.p50_us), h.p50_rtts, fmt_us(h.latency.p99_us))
        })
    };
    t.push_str(&format!(
        "| hand-off to another client, release call → next holder running, p50 | {} (1 ms spin) | {} | — | in round trips |\n",
        h(Contender::Floor),
        h(Contender::Dlock)
    ));
    t
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
