//! Holding locks safely against real Redis, under faults.
//!
//! The same properties as `holding.rs` (which runs on a recording in-memory backend with a
//! paused clock), here against real `redis-server` processes and real time:
//!
//! 1. renewal keeps a lock for 3× its ttl while another OS process keeps trying;
//! 2. the key deleted under a running annotated body cancels it within ttl/3 (+ margin);
//! 3. Redis frozen (SIGSTOP) for longer than ttl: the body is dropped before its lease ends,
//!    no two holders (tasks and a second process) ever overlap, and all works after SIGCONT;
//! 4. 1000 pairs of calls over {a, b} and {b, a}: no deadlock, no timeout;
//! 5. fencing tokens strictly increase across 1000 holders from two processes;
//! 6. no renewal reaches Redis after a release or a drop (seen with `MONITOR`);
//! 7. `renew = false`: the body is cancelled before the lease ends, with `LostReason::Expired`.
//!
//! Every test owns its `redis-server` ([`RedisServer::start`]). The tests take turns (see
//! [`SERIAL`]): several of them measure latencies against a deadline, and the machine may
//! have two cores. Cross-process tests re-execute this binary as a worker
//! ([`holding_redis_worker`]).

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dlock::{Error, LockService, LostReason};
use dlock_tests::support::process::{say, stdin_closed, worker_job};
use dlock_tests::{
    RedisServer, Worker, connect_redis, connect_redis_with, inspector, poll_until, redis_cmd as cmd,
};
use redis::aio::MultiplexedConnection;

/// The lease of most tests here.
const TTL: Duration = Duration::from_millis(300);

/// Slack for scheduling and a loopback round trip, on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(100);

/// The tests take turns: each measures real time against deadlines, and a 2000-task or
/// two-process test running next to it would measure the machine, not dlock.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Helpers

/// Register `service` as `name` (each name is used by one test only).
fn register(name: &str, service: LockService) {
    dlock::register(name, service).unwrap_or_else(|err| panic!("registering `{name}`: {err}"));
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_nanos()
}

/// What a body did: when it was entered, when it was dropped (finished or cancelled), and
/// whether it reached the code after its long `.await`.
#[derive(Debug, Clone, Default)]
struct Probe {
    entered: Arc<Mutex<Option<Instant>>>,
    dropped: Arc<Mutex<Option<Instant>>>,
    reached: Arc<AtomicBool>,
    /// `dlock::fencing_token()` when entered.
    token: Arc<AtomicU64>,
}

/// Records the drop time of the body that holds it.
struct ProbeGuard(Probe);

impl Probe {
    /// Call first thing in the body; keep the guard until the body ends.
    fn enter(&self) -> ProbeGuard {
        *self.entered.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.token.store(dlock::fencing_token().unwrap_or(0), Ordering::SeqCst);
        ProbeGuard(self.clone())
    }
    fn reach(&self) {
        self.reached.store(true, Ordering::SeqCst);
    }
    fn entered_at(&self) -> Option<Instant> {
        *self.entered.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn dropped_at(&self) -> Option<Instant> {
        *self.dropped.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn reached(&self) -> bool {
        self.reached.load(Ordering::SeqCst)
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        *self.0.dropped.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// One holder's time inside a body, in wall-clock nanoseconds (comparable across processes
/// on one machine).
#[derive(Debug, Clone)]
struct Interval {
    who: String,
    enter: u128,
    exit: u128,
}

type Sink = Arc<dyn Fn(Interval) + Send + Sync>;

/// Records `[creation, drop]` of itself as one [`Interval`].
struct Span {
    who: String,
    enter: u128,
    sink: Sink,
}

impl Span {
    fn enter(who: &str, sink: &Sink) -> Self {
        Self { who: who.to_owned(), enter: now_ns(), sink: Arc::clone(sink) }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        (self.sink)(Interval { who: std::mem::take(&mut self.who), enter: self.enter, exit: now_ns() });
    }
}

/// Panics if two intervals intersect.
fn assert_no_overlap(mut all: Vec<Interval>) {
    all.sort_by_key(|i| i.enter);
    let mut latest: Option<&Interval> = None;
    for interval in &all {
        assert!(interval.exit >= interval.enter, "{interval:?} ends before it starts");
        if let Some(prev) = latest {
            assert!(
                interval.enter >= prev.exit,
                "two holders of one key at once: {} held it [{}, {}] and {} entered at {} ({} µs before the first left)",
                prev.who,
                prev.enter,
                prev.exit,
                interval.who,
                interval.enter,
                (prev.exit - interval.enter) / 1000,
            );
        }
        if latest.is_none_or(|prev| interval.exit > prev.exit) {
            latest = Some(interval);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes: this binary re-executed.

/// Not a test: the body of the worker processes the tests below start ([`Worker::spawn`]).
/// Run directly, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process for the cross-process tests of this file; they start it"]
async fn holding_redis_worker() {
    let Some(job) = worker_job() else { return };
    let url = job.url;
    match job.mode.as_str() {
        "contend" => worker_contend(&url).await,
        "hammer" => worker_hammer(&url).await,
        "fence" => worker_fence(&url).await,
        other => panic!("unknown worker mode {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Renewal keeps the lock for 3× ttl against another process.

/// Worker: once the parent holds `keep` (it sets `go`), try for it over and over (50 ms
/// each), counting failures in `attempts`; when in, log `child-enter` and stop.
async fn worker_contend(url: &str) {
    let service = LockService::new(connect_redis(url).await);
    let mut conn = inspector(url).await;
    poll_until(Duration::from_secs(20), "the parent holds `keep`", || {
        let mut conn = conn.clone();
        async move { cmd::<bool>(&mut conn, &["EXISTS", "go"]).await }
    })
    .await;
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        match service.lock("keep").ttl(TTL).wait(Duration::from_millis(50)).await {
            Ok(guard) => {
                let _: i64 = cmd(&mut conn, &["RPUSH", "log", "child-enter"]).await;
                assert!(guard.release().await.expect("child releases"), "still the child's at release");
                return;
            }
            Err(Error::Timeout { .. }) => {
                let _: i64 = cmd(&mut conn, &["INCR", "attempts"]).await;
            }
            Err(err) => panic!("child: unexpected error: {err}"),
        }
        assert!(Instant::now() < give_up, "the child never got the lock");
    }
}

/// Holds `keep` for 3× its ttl once the other process is trying; returns how many times the
/// other process failed to get in meanwhile.
#[dlock::distributed_lock(key = "keep", ttl = "300ms", wait = "5s", service = "holding-redis-keep")]
async fn hold_for_three_ttls(mut conn: MultiplexedConnection) -> Result<(i64, Duration), Error> {
    let _: i64 = cmd(&mut conn, &["RPUSH", "log", "parent-enter"]).await;
    let () = cmd(&mut conn, &["SET", "go", "1"]).await;
    poll_until(Duration::from_secs(10), "the child tried and failed once", || {
        let mut conn = conn.clone();
        async move { cmd::<Option<i64>>(&mut conn, &["GET", "attempts"]).await.is_some() }
    })
    .await;
    let before: i64 = cmd(&mut conn, &["GET", "attempts"]).await;
    let held = Instant::now();
    tokio::time::sleep(TTL * 3).await;
    let after: i64 = cmd(&mut conn, &["GET", "attempts"]).await;
    let held = held.elapsed();
    let _: i64 = cmd(&mut conn, &["RPUSH", "log", "parent-exit"]).await;
    Ok((after - before, held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_another_process_out_for_three_ttls() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    register("holding-redis-keep", LockService::new(connect_redis(&url).await));
    let mut conn = inspector(&url).await;
    let child = Worker::spawn("holding_redis_worker", "contend", &url);

    let (failed_meanwhile, held) = hold_for_three_ttls(conn.clone()).await.expect("held throughout");
    assert!(held >= TTL * 3);

    // Once released, the other process gets in: it could have, had the lease lapsed.
    poll_until(Duration::from_secs(5), "the other process got in", || {
        let mut conn = conn.clone();
        async move {
            cmd::<Vec<String>>(&mut conn, &["LRANGE", "log", "0", "-1"])
                .await
                .contains(&"child-enter".to_owned())
        }
    })
    .await;
    let log: Vec<String> = cmd(&mut conn, &["LRANGE", "log", "0", "-1"]).await;
    assert_eq!(
        log,
        ["parent-enter", "parent-exit", "child-enter"],
        "the other process got in while the body ran"
    );
    eprintln!("held `keep` for {held:?}; the other process failed {failed_meanwhile} times meanwhile");
    assert!(
        failed_meanwhile >= 5,
        "the other process was trying all along: {failed_meanwhile} failed attempts"
    );
    let (status, _) = child.finish(Duration::from_secs(10)).await;
    assert!(status.success(), "the other process failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// 2. The key deleted under a running body.

const DEL_TTL: Duration = Duration::from_millis(600);

#[dlock::distributed_lock(key = "del", ttl = "600ms", wait = "5s", service = "holding-redis-del")]
async fn body_whose_key_is_deleted(probe: Probe) -> Result<(), Error> {
    let _guard = probe.enter();
    tokio::time::sleep(Duration::from_secs(10)).await;
    probe.reach();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_cancels_the_body_within_a_third_of_ttl() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let prefix = "holding:";
    register("holding-redis-del", LockService::builder(connect_redis(&url).await).key_prefix(prefix).build());
    let mut conn = inspector(&url).await;
    let full_key = format!("{prefix}del");

    // Delete at different points of the renewal cycle.
    let mut took = Vec::new();
    for delay in [Duration::ZERO, DEL_TTL / 6, DEL_TTL / 2] {
        let probe = Probe::default();
        let call = tokio::spawn({
            let probe = probe.clone();
            async move {
                let result = body_whose_key_is_deleted(probe).await;
                (result, Instant::now())
            }
        });
        poll_until(Duration::from_secs(5), "the body started", || async { probe.entered_at().is_some() })
            .await;
        tokio::time::sleep(delay).await;
        let removed: i64 = cmd(&mut conn, &["DEL", &full_key]).await;
        let deleted_at = Instant::now();
        assert_eq!(removed, 1, "{full_key} was held");

        let (result, returned_at) = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call returned")
            .expect("join");
        let elapsed = returned_at - deleted_at;
        took.push(elapsed);
        match result {
            Err(Error::Lost { key, reason }) => {
                assert_eq!(reason, LostReason::Refused);
                assert_eq!(key, "holding:del", "the key as Redis stores it (prefix included)");
            }
            other => panic!("expected Error::Lost, got {other:?}"),
        }
        assert!(!probe.reached(), "the body ran past its next .await after losing the lock");
        let dropped_at = probe.dropped_at().expect("the body was dropped");
        assert!(dropped_at <= returned_at, "the body was dropped before the call returned");
        assert!(elapsed <= DEL_TTL / 3 + SLACK, "Lost {elapsed:?} after the DEL; bound ttl/3 + {SLACK:?}");
        // dlock does not bring the key back.
        assert!(!cmd::<bool>(&mut conn, &["EXISTS", &full_key]).await, "the deleted key came back");
    }
    eprintln!("DEL → Err(Lost) took {took:?} (ttl {DEL_TTL:?}, renewal every {:?})", DEL_TTL / 3);
}

// ---------------------------------------------------------------------------------------------
// 3. Redis frozen for longer than the ttl.

/// How long Redis stays frozen: well over the ttl.
const FROZEN: Duration = Duration::from_millis(700);
/// The call timeout of the services in the freeze test.
const FREEZE_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Take `key` over and over until `stop`, recording each body as an interval. The body is
/// raced against `guard.lost()` like an annotated one.
async fn hammer(service: LockService, who: String, key: &'static str, sink: Sink, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match service.lock(key).ttl(TTL).wait(Duration::from_secs(1)).await {
            Ok(guard) => {
                let body = async {
                    let _span = Span::enter(&who, &sink);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                tokio::select! {
                    biased;
                    () = body => {}
                    _ = guard.lost() => {}
                }
                // A release during the freeze fails; the lease then expires by itself.
                let _ = guard.release().await;
            }
            Err(Error::Timeout { .. } | Error::Backend { .. }) => {}
            Err(err) => panic!("{who}: unexpected error: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(1 + rand::random::<u64>() % 8)).await;
    }
}

/// Worker: two independent clients hammer `hammer` until stdin closes; each body is printed
/// as `WORKER INTERVAL <who> <enter ns> <exit ns>`.
async fn worker_hammer(url: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let sink: Sink = Arc::new(|i: Interval| say(&format!("INTERVAL {} {} {}", i.who, i.enter, i.exit)));
    let pid = std::process::id();
    let mut tasks = Vec::new();
    for n in 0..2 {
        let service = LockService::new(connect_redis_with(url, FREEZE_CALL_TIMEOUT).await);
        tasks.push(tokio::spawn(hammer(
            service,
            format!("child-{pid}-{n}"),
            "hammer",
            Arc::clone(&sink),
            Arc::clone(&stop),
        )));
    }
    say("READY");
    // The parent closes our stdin to stop us.
    stdin_closed().await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("hammer stops")
            .expect("hammer task");
    }
}

fn parse_interval(line: &str) -> Option<Interval> {
    let mut parts = line.strip_prefix("INTERVAL ")?.split(' ');
    let who = parts.next()?.to_owned();
    let enter = parts.next()?.parse().ok()?;
    let exit = parts.next()?.parse().ok()?;
    Some(Interval { who, enter, exit })
}

// It waits its turn: the waiting line hands the key to waiting processes first, so a
// single attempt (`wait = "0s"`) would rarely find it free while five clients hammer it.
#[dlock::distributed_lock(key = "hammer", ttl = "300ms", wait = "3s", service = "holding-redis-freeze")]
async fn body_frozen_out(probe: Probe, sink: Sink) -> Result<(), Error> {
    let _guard = probe.enter();
    let _span = Span::enter("frozen", &sink);
    tokio::time::sleep(Duration::from_secs(10)).await;
    probe.reach();
    Ok(())
}

// After the thaw, the hammers' waiting places have expired or are refreshed as they retry;
// the long wait leaves room for that.
#[dlock::distributed_lock(key = "hammer", ttl = "300ms", wait = "10s", service = "holding-redis-freeze")]
async fn body_after_thaw(sink: Sink) -> Result<(), Error> {
    let _span = Span::enter("after-thaw", &sink);
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_cancels_the_body_before_its_lease_ends() {
    let _serial = SERIAL.lock().await;
    let mut server = RedisServer::start();
    let url = server.url();
    register("holding-redis-freeze", LockService::new(connect_redis_with(&url, FREEZE_CALL_TIMEOUT).await));
    let intervals: Arc<Mutex<Vec<Interval>>> = Arc::default();
    let sink: Sink = {
        let intervals = Arc::clone(&intervals);
        Arc::new(move |i| intervals.lock().unwrap_or_else(PoisonError::into_inner).push(i))
    };
    let ours = || intervals.lock().unwrap_or_else(PoisonError::into_inner).clone();

    // Holders: three clients in this process, two in another one.
    let child = Worker::spawn("holding_redis_worker", "hammer", &url);
    child.wait_for_line("READY", Duration::from_secs(10)).await;
    let intervals_in =
        |lines: Vec<String>| lines.iter().filter_map(|l| parse_interval(l)).collect::<Vec<_>>();
    let theirs = || intervals_in(child.lines());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for n in 0..3 {
        let service = LockService::new(connect_redis_with(&url, FREEZE_CALL_TIMEOUT).await);
        hammers.push(tokio::spawn(hammer(
            service,
            format!("task-{n}"),
            "hammer",
            Arc::clone(&sink),
            Arc::clone(&stop),
        )));
    }
    poll_until(Duration::from_secs(10), "both processes held the key a few times", || async {
        ours().len() >= 10 && theirs().len() >= 4
    })
    .await;

    // The body: whatever attempt wins (or is handed the key) was sent after `called_at`, so
    // the lease began after it; Redis freezes 30 ms into the body, before its first renewal.
    let probe = Probe::default();
    let mut attempts = 0;
    let (call, called_at) = loop {
        attempts += 1;
        assert!(attempts <= 1000, "the body never got the contended key in {attempts} attempts");
        let called_at = Instant::now();
        let call = tokio::spawn({
            let (probe, sink) = (probe.clone(), Arc::clone(&sink));
            async move { body_frozen_out(probe, sink).await }
        });
        poll_until(Duration::from_secs(5), "the attempt failed or the body started", || async {
            probe.entered_at().is_some() || call.is_finished()
        })
        .await;
        if probe.entered_at().is_some() {
            break (call, called_at);
        }
        match call.await.expect("join") {
            Err(Error::Timeout { .. }) => {}
            other => panic!("expected the key to be busy (Timeout), got {other:?}"),
        }
    };
    let entered_at = probe.entered_at().expect("entered");
    tokio::time::sleep_until((entered_at + Duration::from_millis(30)).into()).await;
    server.pause();
    let paused_at = Instant::now();
    let paused_ns = now_ns();

    let result = match tokio::time::timeout(Duration::from_secs(3), call).await {
        Ok(joined) => joined.expect("join"),
        Err(_) => panic!(
            "the call did not return within 3 s of the freeze (entered {:?} before the freeze; body dropped after {:?}, reached the end: {})",
            paused_at - entered_at,
            probe.dropped_at().map(|d| d - entered_at),
            probe.reached(),
        ),
    };
    assert!(
        matches!(result, Err(Error::Lost { reason: LostReason::Unconfirmed, .. })),
        "expected Lost(Unconfirmed), got {result:?}"
    );
    assert!(!probe.reached(), "the body ran on after the lease could have ended");
    let dropped_at = probe.dropped_at().expect("the body was dropped");
    // When the lease ends in Redis, at the latest. Frozen before the first renewal was due
    // (ttl/3 after the winning acquire, which was sent after `called_at`): no renewal was
    // confirmed, so at acquire-send + ttl, and the body was entered after that send.
    // Otherwise (a loaded machine may delay the freeze) a renewal sent before the freeze may
    // have been confirmed: at `paused_at + ttl`.
    let (lease_end, bound) = if paused_at < called_at + TTL / 3 {
        (entered_at + TTL, "entry + ttl")
    } else {
        (paused_at + TTL, "freeze + ttl")
    };
    // dlock aims at `safety_margin(ttl)` (5 ms) before the end: a failure here means the body
    // outlived its lease in Redis.
    assert!(
        dropped_at < lease_end,
        "body dropped {:?} after the lease could have ended ({bound}); entered {:?} before that",
        dropped_at - lease_end,
        lease_end - entered_at,
    );
    eprintln!(
        "freeze: body dropped {:?} after entering it, {:?} before {bound} (got the key on attempt {attempts}, froze Redis {:?} into the body)",
        dropped_at - entered_at,
        lease_end - dropped_at,
        paused_at - entered_at,
    );

    // Frozen for longer than the ttl: every lease in Redis ends meanwhile.
    tokio::time::sleep_until((paused_at + FROZEN).into()).await;
    server.resume();
    let resumed_at = Instant::now();
    let resumed_ns = now_ns();

    // Everything works again: a fresh lock through the same service, the annotated fn on the
    // contended key, and both processes' holders.
    let fresh = poll_until(Duration::from_secs(3), "a fresh lock after the thaw", || async {
        match dlock::lock_with("holding-redis-freeze", "fresh").wait(Duration::ZERO).await {
            Ok(guard) => guard.release().await.expect("release"),
            Err(_) => false,
        }
    })
    .await;
    body_after_thaw(Arc::clone(&sink)).await.expect("the annotated fn works after the thaw");
    let annotated = resumed_at.elapsed();
    poll_until(Duration::from_secs(10), "both processes held the key again after the thaw", || async {
        ours().iter().filter(|i| i.enter > resumed_ns).count() >= 5
            && theirs().iter().filter(|i| i.enter > resumed_ns).count() >= 2
    })
    .await;
    eprintln!("after the thaw: a fresh lock in {fresh:?}, the contended annotated fn done in {annotated:?}");

    stop.store(true, Ordering::SeqCst);
    for task in hammers {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("hammer stops")
            .expect("hammer task");
    }
    let (status, child_lines) = child.finish(Duration::from_secs(10)).await;
    assert!(status.success(), "the worker process failed: {status}");

    let (ours, theirs) = (ours(), intervals_in(child_lines));
    assert!(theirs.iter().any(|i| i.exit < paused_ns), "the other process held the key before the freeze");
    eprintln!(
        "freeze: {} bodies in this process, {} in the other, checked for overlap",
        ours.len(),
        theirs.len()
    );
    assert_no_overlap(ours.into_iter().chain(theirs).collect());
}

// ---------------------------------------------------------------------------------------------
// 4. Opposite key orders.

const PAIRS: usize = 1000;

/// Two holders at once of {a, b} (both services, any order).
static PAIR_OVERLAPS: AtomicUsize = AtomicUsize::new(0);
static PAIR_INSIDE: AtomicUsize = AtomicUsize::new(0);

async fn pair_body() -> Result<(), Error> {
    if PAIR_INSIDE.fetch_add(1, Ordering::SeqCst) != 0 {
        PAIR_OVERLAPS.fetch_add(1, Ordering::SeqCst);
    }
    tokio::task::yield_now().await;
    PAIR_INSIDE.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

#[dlock::distributed_lock(
    key = "<first>",
    key = "<second>",
    ttl = "5s",
    wait = "30s",
    service = "holding-redis-pairs-1"
)]
async fn pair_on_client_1(first: &'static str, second: &'static str) -> Result<(), Error> {
    pair_body().await
}

#[dlock::distributed_lock(
    key = "<first>",
    key = "<second>",
    ttl = "5s",
    wait = "30s",
    service = "holding-redis-pairs-2"
)]
async fn pair_on_client_2(first: &'static str, second: &'static str) -> Result<(), Error> {
    pair_body().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_key_orders_never_deadlock() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    // Two clients, so the keys are contended in Redis, not only in one process's queues.
    register("holding-redis-pairs-1", LockService::new(connect_redis(&url).await));
    register("holding-redis-pairs-2", LockService::new(connect_redis(&url).await));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let (x, y) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        calls.spawn(pair_on_client_1(x, y));
        calls.spawn(pair_on_client_2(y, x));
    }
    let all = tokio::time::timeout(Duration::from_secs(40), async {
        let mut results = Vec::with_capacity(2 * PAIRS);
        while let Some(result) = calls.join_next().await {
            results.push(result.expect("join"));
        }
        results
    })
    .await
    .expect("2000 calls over {a, b} / {b, a} finish: no deadlock");
    let elapsed = started.elapsed();
    let failed: Vec<&Error> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} calls failed, e.g. {}", failed.len(), all.len(), failed[0]);
    assert_eq!(all.len(), 2 * PAIRS);
    assert_eq!(PAIR_OVERLAPS.load(Ordering::SeqCst), 0, "two holders of {{a, b}} at once");
    eprintln!("{} calls over {{a, b}} and {{b, a}} from two clients in {elapsed:?}", 2 * PAIRS);
}

// ---------------------------------------------------------------------------------------------
// 5. Fencing tokens across processes.

const FENCED_PER_PROCESS: usize = 500;

/// Under the lock: the token must exceed the last one stored; store it and log it.
#[dlock::distributed_lock(key = "fenced", ttl = "5s", wait = "30s", service = "holding-redis-fence")]
async fn fenced_write(mut conn: MultiplexedConnection, pid: u32) -> Result<u64, Error> {
    let token = dlock::fencing_token().expect("an annotated body has a fencing token");
    let last: Option<u64> = cmd(&mut conn, &["GET", "last-token"]).await;
    assert!(token > last.unwrap_or(0), "process {pid} got token {token} after {last:?} was stored");
    let () = cmd(&mut conn, &["SET", "last-token", &token.to_string()]).await;
    let _: i64 = cmd(&mut conn, &["RPUSH", "tokens", &format!("{pid} {token}")]).await;
    Ok(token)
}

async fn worker_fence(url: &str) {
    register("holding-redis-fence", LockService::new(connect_redis(url).await));
    let conn = inspector(url).await;
    let pid = std::process::id();
    for _ in 0..FENCED_PER_PROCESS {
        fenced_write(conn.clone(), pid).await.expect("fenced write");
        // Let the other process in now and then.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_two_processes() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let started = Instant::now();
    let workers = [
        Worker::spawn("holding_redis_worker", "fence", &url),
        Worker::spawn("holding_redis_worker", "fence", &url),
    ];
    let mut pids = Vec::new();
    for worker in workers {
        pids.push(worker.pid());
        let (status, _) = worker.finish(Duration::from_secs(40)).await;
        assert!(status.success(), "a worker failed: {status}");
    }
    let elapsed = started.elapsed();

    let mut conn = inspector(&url).await;
    let log: Vec<String> = cmd(&mut conn, &["LRANGE", "tokens", "0", "-1"]).await;
    assert_eq!(log.len(), 2 * FENCED_PER_PROCESS, "every holder stored its token");
    let entries: Vec<(u32, u64)> = log
        .iter()
        .map(|entry| {
            let (pid, token) = entry.split_once(' ').expect("`pid token`");
            (pid.parse().expect("pid"), token.parse().expect("token"))
        })
        .collect();
    for pair in entries.windows(2) {
        assert!(pair[1].1 > pair[0].1, "tokens out of order in the stored sequence: {pair:?}");
    }
    for pid in &pids {
        assert_eq!(entries.iter().filter(|(p, _)| p == pid).count(), FENCED_PER_PROCESS, "holder {pid}");
    }
    let handovers = entries.windows(2).filter(|pair| pair[0].0 != pair[1].0).count();
    eprintln!(
        "{} fenced writes from two processes in {elapsed:?}; the lock changed process {handovers} times",
        log.len()
    );
    assert!(handovers >= 200, "the two processes alternated: {handovers} handovers");
}

// ---------------------------------------------------------------------------------------------
// 6. and 7. What reaches Redis: MONITOR.

/// A `MONITOR` connection: every command the server runs, including those scripts run
/// (source `lua`), in the order it ran them.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stream: TcpStream,
}

/// One command as `MONITOR` printed it.
#[derive(Debug, Clone)]
struct Seen {
    /// `lua` for commands a script ran, else the client's address.
    source: String,
    args: Vec<String>,
}

impl Seen {
    fn is_script_call(&self) -> bool {
        self.source != "lua"
            && matches!(
                self.args[0].to_ascii_uppercase().as_str(),
                "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO"
            )
    }
}

/// A script call and what it ran, or another client command (with `ran` empty).
#[derive(Debug)]
struct Call {
    call: Seen,
    ran: Vec<Vec<String>>,
}

impl Call {
    fn mentions(&self, key: &str) -> bool {
        self.call.args.iter().chain(self.ran.iter().flatten()).any(|a| a == key)
    }
    fn ran(&self, command: &str, key: &str) -> bool {
        self.ran.iter().any(|c| c[0].eq_ignore_ascii_case(command) && c.get(1).is_some_and(|k| k == key))
    }
}

impl Monitor {
    fn start(port: u16) -> Self {
        use std::io::{BufRead, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting for MONITOR");
        stream.write_all(b"MONITOR\r\n").expect("sending MONITOR");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("cloning the socket"));
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("reading MONITOR's reply");
        assert_eq!(ok.trim_end(), "+OK", "MONITOR refused");
        let lines = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in reader.lines() {
                    let Ok(line) = line else { return };
                    let line = line.strip_prefix('+').unwrap_or(&line).to_owned();
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            }
        });
        Self { lines, stream }
    }

    /// Everything the server ran up to now: sends `ECHO <marker>` and waits until the
    /// monitor has seen it.
    async fn collect(&self, conn: &mut MultiplexedConnection) -> Vec<Call> {
        let marker = format!("dlock-monitor-mark-{}", rand::random::<u64>());
        let _: String = cmd(conn, &["ECHO", &marker]).await;
        let quoted = format!("\"{marker}\"");
        poll_until(Duration::from_secs(5), "MONITOR saw the marker", || async {
            self.lines.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|l| l.ends_with(&quoted))
        })
        .await;
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut calls: Vec<Call> = Vec::new();
        for line in &lines {
            let seen = parse_monitor_line(line).unwrap_or_else(|| panic!("unparsable MONITOR line {line:?}"));
            if seen.source == "lua" {
                let call = calls.last_mut().expect("a script's commands follow its call");
                assert!(call.call.is_script_call(), "{line:?} does not follow a script call");
                call.ran.push(seen.args);
            } else {
                calls.push(Call { call: seen, ran: Vec::new() });
            }
        }
        calls
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// `1795666405.596054 [0 127.0.0.1:53372] "EVALSHA" "…" "1" "k"`.
fn parse_monitor_line(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let source = line[open + 1..close].split_once(' ')?.1.to_owned();
    let mut args = Vec::new();
    let mut chars = line[close + 1..].chars();
    loop {
        match chars.next() {
            None => break,
            Some(' ') => {}
            Some('"') => {
                let mut arg = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'n' => arg.push('\n'),
                            'r' => arg.push('\r'),
                            't' => arg.push('\t'),
                            'x' => {
                                let hex: String = chars.by_ref().take(2).collect();
                                arg.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                            }
                            other => arg.push(other),
                        },
                        c => arg.push(c),
                    }
                }
                args.push(arg);
            }
            Some(_) => return None,
        }
    }
    (!args.is_empty()).then_some(Seen { source, args })
}

#[dlock::distributed_lock(key = "annotated", ttl = "300ms", service = "holding-redis-monitor")]
async fn annotated_hold(hold: Duration) -> Result<(), Error> {
    tokio::time::sleep(hold).await;
    Ok(())
}

/// For `key`: the script calls before its release (the one that deleted it) that renewed it,
/// and every script call on it after the release (dlock talks to Redis in scripts only; the
/// test's own inspection commands are left out).
fn around_release<'a>(calls: &'a [Call], key: &str) -> (usize, Vec<&'a Call>) {
    let on_key: Vec<&Call> = calls.iter().filter(|c| c.call.is_script_call() && c.mentions(key)).collect();
    let releases: Vec<usize> = (0..on_key.len()).filter(|&i| on_key[i].ran("DEL", key)).collect();
    assert_eq!(releases.len(), 1, "one release of {key}: {on_key:#?}");
    let release = releases[0];
    let renewals = on_key[..release].iter().filter(|c| c.ran("PEXPIRE", key)).count();
    (renewals, on_key[release + 1..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_renewal_reaches_redis_after_release_or_drop() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let monitor = Monitor::start(server.port());
    let service = LockService::new(connect_redis(&url).await);
    register("holding-redis-monitor", service.clone());
    let mut conn = inspector(&url).await;

    // Each holds for 250 ms with a 300 ms ttl: renewed at 100 and 200 ms, then let go.
    let hold = Duration::from_millis(250);
    let released = async {
        let guard = service.lock("released").ttl(TTL).await.expect("acquire");
        tokio::time::sleep(hold).await;
        assert!(guard.release().await.expect("release"), "still ours at release");
    };
    let dropped = async {
        let guard = service.lock("dropped").ttl(TTL).await.expect("acquire");
        tokio::time::sleep(hold).await;
        drop(guard);
    };
    let annotated = async { annotated_hold(hold).await.expect("annotated call") };
    tokio::join!(released, dropped, annotated);
    poll_until(Duration::from_secs(2), "the dropped guard's background release", || {
        let mut conn = conn.clone();
        async move { !cmd::<bool>(&mut conn, &["EXISTS", "dropped"]).await }
    })
    .await;
    // Time for several renewal periods: a keeper left running would renew (or try to).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let calls = monitor.collect(&mut conn).await;
    for key in ["released", "dropped", "annotated"] {
        let (renewals, after) = around_release(&calls, key);
        assert!(renewals >= 1, "{key}: held for {hold:?} with ttl {TTL:?}, so renewed at least once");
        assert!(after.is_empty(), "{key}: commands after its release: {after:#?}");
        eprintln!("{key}: {renewals} renewals before the release, nothing after");
    }
}

#[dlock::distributed_lock(key = "once", ttl = "300ms", renew = false, service = "holding-redis-norenew")]
async fn outlives_its_lease(probe: Probe) -> Result<(), Error> {
    let _guard = probe.enter();
    tokio::time::sleep(TTL * 2).await;
    probe.reach();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_renewal_the_body_is_cancelled_before_the_lease_ends() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let monitor = Monitor::start(server.port());
    register("holding-redis-norenew", LockService::new(connect_redis(&url).await));
    let mut conn = inspector(&url).await;

    let probe = Probe::default();
    let called_at = Instant::now();
    let result = outlives_its_lease(probe.clone()).await;
    let returned_at = Instant::now();
    match result {
        Err(Error::Lost { key, reason }) => {
            assert_eq!(key, "once");
            assert_eq!(reason, LostReason::Expired);
        }
        other => panic!("expected Error::Lost, got {other:?}"),
    }
    assert!(!probe.reached(), "the body ran past the end of its lease");
    let entered_at = probe.entered_at().expect("the body ran");
    let dropped_at = probe.dropped_at().expect("the body was dropped");
    // The lease ends at acquire-send + ttl; the body was entered after the send. (dlock aims
    // at ttl - `safety_margin(ttl)`, 5 ms before that; a failure here means the body outlived
    // its lease in Redis.)
    assert!(
        dropped_at < entered_at + TTL,
        "body dropped {:?} after it was entered; the lease ended at most {TTL:?} after that",
        dropped_at - entered_at
    );
    // …and not much earlier than the safety margin asks (the send was after `called_at`).
    assert!(
        dropped_at >= called_at + TTL - dlock::__private::safety_margin(TTL),
        "body dropped {:?} after the call, before ttl - margin",
        dropped_at - called_at
    );
    assert!(returned_at >= dropped_at);
    eprintln!(
        "renew = false: body dropped {:?} after entry ({:?} before entry + ttl)",
        dropped_at - entered_at,
        (entered_at + TTL) - dropped_at
    );

    // The key is free (released or expired) and the next holder gets a greater token.
    let service = LockService::new(connect_redis(&url).await);
    let next =
        service.lock("once").ttl(TTL).wait(Duration::from_secs(2)).await.expect("the next holder gets in");
    let first = probe.token.load(Ordering::SeqCst);
    assert!(first > 0, "the body saw its fencing token");
    assert!(next.fencing_token() > first, "the next holder's token {} after {first}", next.fencing_token());
    next.release().await.expect("release");

    let calls = monitor.collect(&mut conn).await;
    let renewals: Vec<&Call> = calls.iter().filter(|c| c.ran("PEXPIRE", "once")).collect();
    assert!(renewals.is_empty(), "renew = false sent renewals: {renewals:#?}");
    // MONITOR saw the acquires: the body's, and the next holder's — more than one attempt of
    // it when the lost lease's key was still there (its release runs in the background).
    let acquires = calls.iter().filter(|c| c.ran("SET", "once")).count();
    assert!(
        acquires >= 2,
        "MONITOR saw {acquires} acquire attempts; expected the body's and the next holder's"
    );
}
