//! The double-payment problem, and `#[distributed_lock]` solving it.
//!
//! A user has unpaid orders; each payment is allocated to the oldest unpaid orders first.
//! When the same user pays twice at once, two handlers read the same unpaid orders and both
//! allocate to them: one order is paid twice and another not at all. A `tokio::sync::Mutex`
//! cannot help once the handlers run in different processes — the lock has to live outside.
//!
//! ```text
//! cargo run --example payments                 # Redis at $REDIS_URL (default redis://127.0.0.1:6379)
//!                                              # if reachable, else the in-process backend
//! cargo run --example payments -- --workers 4  # how many processes pay at once (Redis only)
//! DLOCK_BACKEND=postgres://postgres@127.0.0.1/test cargo run --example payments
//!                                              # the locks on PostgreSQL (the ledger stays in
//!                                              # Redis, or in the process without it)
//! DLOCK_BACKEND=redis-cluster://127.0.0.1:7000,127.0.0.1:7001 cargo run --example payments
//! DLOCK_BACKEND=redis-sentinel://127.0.0.1:26379/mymaster cargo run --example payments
//!                                              # the locks on a Redis Cluster, or on the
//!                                              # primary the sentinels name
//! ```
//!
//! It runs the scenario without the lock, then with it, first as tasks in this process and
//! then — when Redis is reachable — as several worker processes, and checks the ledger after
//! each run.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock::distributed_lock;
use dlock_examples::with_causes;
use redis::AsyncCommands;

/// Money in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cents(i64);

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// What a payment was allocated to.
#[derive(Debug)]
struct Receipt {
    allocations: Vec<(String, Cents)>,
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Lock(#[from] dlock::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] redis::RedisError),
}

/// Unpaid order amounts, per user: in this process, or in Redis for several processes.
#[derive(Clone)]
enum Ledger {
    Memory(Arc<Mutex<BTreeMap<String, i64>>>),
    Redis { conn: redis::aio::ConnectionManager, key: String },
}

impl Ledger {
    /// Orders `o1`, `o2`, `o3` with these amounts due (oldest first).
    async fn reset(&self, due: &[i64]) -> Result<(), PayError> {
        let orders: Vec<(String, i64)> =
            due.iter().enumerate().map(|(i, d)| (format!("o{}", i + 1), *d)).collect();
        match self {
            Ledger::Memory(map) => {
                *map.lock().unwrap_or_else(PoisonError::into_inner) = orders.into_iter().collect()
            }
            Ledger::Redis { conn, key } => {
                let mut conn = conn.clone();
                let _: () = conn.del(key).await?;
                let _: () = conn.hset_multiple(key, &orders).await?;
            }
        }
        Ok(())
    }

    async fn due(&self) -> Result<BTreeMap<String, i64>, PayError> {
        Ok(match self {
            Ledger::Memory(map) => map.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            Ledger::Redis { conn, key } => conn.clone().hgetall(key).await?,
        })
    }

    async fn pay_order(&self, order: &str, amount: i64) -> Result<(), PayError> {
        match self {
            Ledger::Memory(map) => {
                *map.lock().unwrap_or_else(PoisonError::into_inner).entry(order.to_owned()).or_default() -=
                    amount;
            }
            Ledger::Redis { conn, key } => {
                let _: i64 = conn.clone().hincr(key, order, -amount).await?;
            }
        }
        Ok(())
    }
}

/// The handler as first written: read the unpaid orders, allocate, write. Racy.
async fn pay_unlocked(ledger: &Ledger, user_id: u64, amount: Cents) -> Result<Receipt, PayError> {
    allocate(ledger, user_id, amount).await
}

/// The same handler, made safe by one line.
#[distributed_lock(key = "user:<user_id>", ttl = "10s", wait = "5s")]
async fn pay(ledger: &Ledger, user_id: u64, amount: Cents) -> Result<Receipt, PayError> {
    allocate(ledger, user_id, amount).await
}

async fn allocate(ledger: &Ledger, _user_id: u64, amount: Cents) -> Result<Receipt, PayError> {
    let due = ledger.due().await?;
    // The database round trips of a real service: the window in which a second payment of
    // the same user reads the same unpaid orders.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut left = amount.0;
    let mut allocations = Vec::new();
    for (order, owed) in due.iter().filter(|(_, owed)| **owed > 0) {
        if left == 0 {
            break;
        }
        let part = left.min(*owed);
        ledger.pay_order(order, part).await?;
        allocations.push((order.clone(), Cents(part)));
        left -= part;
    }
    Ok(Receipt { allocations })
}

const DUE: [i64; 3] = [3000, 3000, 3000];
const USER: u64 = 42;
const PAYMENT: Cents = Cents(3000);

fn describe(receipt: &Result<Receipt, PayError>) -> String {
    match receipt {
        Ok(r) => r.allocations.iter().map(|(o, c)| format!("{c} -> {o}")).collect::<Vec<_>>().join(", "),
        Err(err) => format!("error: {err}"),
    }
}

/// One order's line in the ledger: what it still owes, or that it was paid (or overpaid).
fn order_line(order: &str, due: i64) -> String {
    match due {
        0 => format!("{order} paid"),
        due if due > 0 => format!("{order} owes {}", Cents(due)),
        due => format!("{order} OVERPAID by {}", Cents(-due)),
    }
}

/// Print the ledger and say whether it is consistent with `payments` payments of PAYMENT.
async fn check(ledger: &Ledger, payments: usize) -> Result<bool, PayError> {
    let due = ledger.due().await?;
    let overpaid: Vec<_> = due.iter().filter(|(_, owed)| **owed < 0).collect();
    let paid: i64 = DUE.iter().sum::<i64>() - due.values().sum::<i64>();
    let expected = PAYMENT.0 * i64::try_from(payments).unwrap_or(i64::MAX);
    let view: Vec<String> = due.iter().map(|(order, due)| order_line(order, *due)).collect();
    println!("    ledger: {}", view.join(", "));
    if overpaid.is_empty() && paid == expected {
        println!("    OK: {} paid, each order paid at most once", Cents(paid));
        Ok(true)
    } else {
        if overpaid.is_empty() {
            println!("    WRONG: {} allocated to orders, {} expected", Cents(paid), Cents(expected));
        } else {
            println!(
                "    WRONG: orders {:?} were paid more than they owed: payments went to orders another payment had already paid ({} allocated, {} expected)",
                overpaid.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
                Cents(paid),
                Cents(expected),
            );
        }
        Ok(false)
    }
}

async fn in_process(ledger: &Ledger, locked: bool) -> Result<bool, PayError> {
    ledger.reset(&DUE).await?;
    println!(
        "  {} — two payments of {PAYMENT} by user {USER} at once:",
        if locked { "with #[distributed_lock]" } else { "without a lock" }
    );
    let (a, b) = if locked {
        tokio::join!(pay(ledger, USER, PAYMENT), pay(ledger, USER, PAYMENT))
    } else {
        tokio::join!(pay_unlocked(ledger, USER, PAYMENT), pay_unlocked(ledger, USER, PAYMENT))
    };
    println!("    payment 1: {}", describe(&a));
    println!("    payment 2: {}", describe(&b));
    check(ledger, 2).await
}

/// Start `workers` copies of this program, each making one payment at the same instant.
async fn across_processes(
    ledger: &Ledger,
    url: &str,
    workers: usize,
    locked: bool,
) -> Result<bool, PayError> {
    ledger.reset(&DUE[..]).await?;
    let Ledger::Redis { key, .. } = ledger else { return Ok(true) };
    let start_at = now_millis() + 700;
    println!(
        "  {} — {workers} worker processes, each paying {PAYMENT} for user {USER} at once:",
        if locked { "with #[distributed_lock]" } else { "without a lock" }
    );
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            println!("    cannot find this program to start workers: {err}");
            return Ok(false);
        }
    };
    let mut children = Vec::new();
    for i in 0..workers {
        let child = tokio::process::Command::new(&exe)
            .args(["--worker", url, key, &start_at.to_string(), if locked { "locked" } else { "unlocked" }])
            .stdout(Stdio::piped())
            .spawn();
        match child {
            Ok(child) => children.push((i, child)),
            Err(err) => println!("    worker {i} did not start: {err}"),
        }
    }
    for (i, child) in children {
        match child.wait_with_output().await {
            Ok(out) => print!("    worker {}: {}", i + 1, String::from_utf8_lossy(&out.stdout)),
            Err(err) => println!("    worker {}: {err}", i + 1),
        }
    }
    let paid = workers.min(DUE.len());
    check(ledger, paid).await
}

async fn worker(
    url: &str,
    key: &str,
    start_at: u128,
    locked: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let backend = dlock::RedisBackend::connect(url).await?;
    dlock::set_global(lock_service(Some(backend)).await?)?;
    let client = redis::Client::open(url)?;
    let ledger = Ledger::Redis { conn: client.get_connection_manager().await?, key: key.to_owned() };
    tokio::time::sleep(Duration::from_millis(u64::try_from(start_at.saturating_sub(now_millis()))?)).await;
    let receipt =
        if locked { pay(&ledger, USER, PAYMENT).await } else { pay_unlocked(&ledger, USER, PAYMENT).await };
    println!("{}", describe(&receipt));
    Ok(())
}

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The lock service of every process: on the backend `DLOCK_BACKEND` names (any URL
/// `dlock::connect` takes: `redis://…`, `redis-cluster://…`, `redis-sentinel://…`,
/// `postgres://…`), else on `redis` (or in the
/// process, without Redis).
async fn lock_service(redis: Option<dlock::RedisBackend>) -> Result<dlock::LockService, dlock::Error> {
    let builder = match (std::env::var("DLOCK_BACKEND"), redis) {
        (Ok(url), _) if !url.is_empty() => dlock::LockService::builder_from_arc(dlock::connect(&url).await?),
        (_, Some(redis)) => dlock::LockService::builder(redis),
        (_, None) => dlock::LockService::builder(dlock::MemoryBackend::new()),
    };
    Ok(builder.key_prefix("payments-demo:").build())
}

/// The Redis to use, if one answers.
async fn connect_redis(url: &str) -> Option<(dlock::RedisBackend, redis::aio::ConnectionManager)> {
    let backend = dlock::RedisBackend::builder(url).call_timeout(Duration::from_millis(500)).connect().await;
    let backend = match backend {
        Ok(backend) => backend,
        Err(err) => {
            println!("Redis not reachable ({}).", with_causes(&err));
            return None;
        }
    };
    let conn = redis::Client::open(url).ok()?.get_connection_manager().await.ok()?;
    Some((backend, conn))
}

static OUTCOME: OnceLock<Mutex<Vec<bool>>> = OnceLock::new();

fn record(ok: bool, expected_ok: bool) {
    OUTCOME
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(ok == expected_ok);
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The error and what caused it, as text (`Debug` would print the structs).
            eprintln!("error: {err}");
            let mut cause = err.source();
            while let Some(source) = cause {
                eprintln!("  caused by: {source}");
                cause = source.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url, key, start_at, mode] = args.as_slice()
        && flag == "--worker"
    {
        return worker(url, key, start_at.parse()?, mode == "locked").await;
    }
    let workers = match args.iter().position(|a| a == "--workers") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .filter(|n| (2..=32).contains(n))
            .ok_or("--workers takes a number from 2 to 32")?,
        None => 3,
    };

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let run_id = format!("{:x}", now_millis());
    // `across`: the lock is shared by processes, so the run across processes shows it.
    let (ledger, across) = match connect_redis(&url).await {
        Some((backend, conn)) => {
            let service = lock_service(Some(backend)).await?;
            // An in-process lock (`DLOCK_BACKEND=memory:`) is each process's own: it cannot
            // keep processes apart, so the run across processes is left out.
            let shared = service.backend().name() != "memory";
            if shared {
                println!(
                    "Using Redis at {url} for the ledger and {} for the lock, shared by every process.\n",
                    service.backend().name()
                );
            } else {
                println!(
                    "Using Redis at {url} for the ledger and the in-process backend for the lock, which \
                     other processes do not share: the run across processes is left out.\n"
                );
            }
            dlock::set_global(service)?;
            (Ledger::Redis { conn, key: format!("payments-demo:{run_id}:orders") }, shared)
        }
        None => {
            println!(
                "Using the in-process backend (set REDIS_URL or start Redis to see several processes).\n"
            );
            dlock::set_global(lock_service(None).await?)?;
            (Ledger::Memory(Arc::default()), false)
        }
    };
    println!(
        "User {USER} owes {} on orders o1, o2, o3 (oldest first).\n",
        DUE.map(Cents).map(|c| c.to_string()).join(", ")
    );

    println!("In one process:");
    record(in_process(&ledger, false).await?, false);
    record(in_process(&ledger, true).await?, true);
    if across {
        println!("\nAcross processes:");
        record(across_processes(&ledger, &url, workers, false).await?, false);
        record(across_processes(&ledger, &url, workers, true).await?, true);
    }
    if let Ledger::Redis { conn, key } = &ledger {
        let _: () = conn.clone().del(key).await?;
    }
    let outcomes = OUTCOME.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner).clone();
    let locked_ok = outcomes.iter().skip(1).step_by(2).all(|ok| *ok);
    println!(
        "\n{}",
        if locked_ok {
            "Every run with #[distributed_lock] kept the ledger right."
        } else {
            "A run with #[distributed_lock] left the ledger wrong: that is a bug, please report it."
        }
    );
    if locked_ok { Ok(()) } else { Err("ledger inconsistent under the lock".into()) }
}
