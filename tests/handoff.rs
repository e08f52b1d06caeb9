//! Hand-off across processes: the waiting line in Redis.
//!
//! A process whose waiter is subscribed to a key's notices joins the key's waiting line in
//! Redis when its attempt finds the key held; a release hands the key straight to the first
//! process still in line and tells only that process, on its channel for the key. Each test
//! owns a private `redis-server`. Separate `RedisBackend`s stand for separate processes (each has its own
//! connections, so Redis cannot tell them apart); one test kills a real OS process.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dlock::backend::{
    BackendErrorKind, FullKey, HANDOFF_LEASE, ReleaseNotice, ReleaseOutcome, TryAcquire, WAITER_RECHECK,
};
use dlock::{Error, LockBackend, LockService, MemoryBackend};
use dlock_tests::support::process::worker_job;
use dlock_tests::{
    FaultyBackend, Op, RedisServer, Rule, Worker, connect_redis, connect_redis_with, inspector, poll_until,
    redis_cmd,
};
use redis::aio::MultiplexedConnection as Conn;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(10);

/// A place in a waiting line: `<arrival µs>:<until ms>:<hand-off lease ms>:<process id>`.
struct Place {
    owner: String,
    arrived: u64,
    until: u64,
    /// `<hand-off lease ms>:<process id>`, as stored.
    rest: String,
}

/// The places in line for `key` (its waiting-line hash), first first.
async fn places(conn: &Conn, key: &str) -> Vec<Place> {
    let line = dlock::RedisBackend::line_key(key);
    let fields: Vec<(String, String)> = redis_cmd(&mut conn.clone(), &["HGETALL", &line]).await;
    let mut places: Vec<Place> = fields
        .into_iter()
        .map(|(owner, place)| {
            let mut parts = place.splitn(3, ':');
            let mut number = || parts.next().and_then(|n| n.parse::<u64>().ok()).expect("a number");
            let (arrived, until) = (number(), number());
            let rest = parts.next().expect("lease and process").to_owned();
            Place { owner, arrived, until, rest }
        })
        .collect();
    places.sort_by_key(|place| place.arrived);
    places
}

/// The owner tokens waiting in line for `key`, first first.
async fn line(conn: &Conn, key: &str) -> Vec<String> {
    places(conn, key).await.into_iter().map(|place| place.owner).collect()
}

/// Whether `key` is held (its lock key exists).
async fn exists(conn: &Conn, key: &str) -> bool {
    redis_cmd(&mut conn.clone(), &["EXISTS", key]).await
}

/// The owner holding `key`, from the lock's value (`<token>:<owner>`).
async fn holder_of(conn: &Conn, key: &str) -> Option<String> {
    let value: Option<String> = redis_cmd(&mut conn.clone(), &["GET", key]).await;
    value.map(|value| dlock_tests::lock_value(&value).1.to_owned())
}

async fn wait_for_line(conn: &Conn, key: &str, len: usize) {
    poll_until(Duration::from_secs(5), &format!("{len} in line for {key}"), || async {
        line(conn, key).await.len() == len
    })
    .await;
}

fn acquired(outcome: Result<TryAcquire, dlock::backend::BackendError>) -> u64 {
    match outcome.expect("try_acquire answers") {
        TryAcquire::Acquired { fencing_token } => fencing_token,
        held => panic!("expected Acquired, got {held:?}"),
    }
}

fn held(outcome: Result<TryAcquire, dlock::backend::BackendError>) {
    assert!(matches!(outcome, Ok(TryAcquire::Held { .. })), "expected Held, got {outcome:?}");
}

/// The backend protocol step by step (the `LockBackend` contract, point 6).
#[tokio::test]
async fn releases_hand_the_key_to_the_first_process_in_line() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let (a, b, c) = (connect_redis(&url).await, connect_redis(&url).await, connect_redis(&url).await);

    let first = acquired(a.try_acquire(&FullKey::new("", "k"), "owner-a", TTL).await);
    // Not subscribed yet: an attempt does not join the line (it could not hear a hand-off).
    held(b.try_acquire(&FullKey::new("", "k"), "owner-b", TTL).await);
    assert!(line(&conn, "k").await.is_empty());
    let mut b_watch =
        b.watch_releases(&FullKey::new("", "k")).await.expect("watch").expect("redis has notices");
    let mut c_watch =
        c.watch_releases(&FullKey::new("", "k")).await.expect("watch").expect("redis has notices");
    held(b.try_acquire(&FullKey::new("", "k"), "owner-b", TTL).await);
    held(c.try_acquire(&FullKey::new("", "k"), "owner-c", TTL).await);
    // Asking again keeps a process's place.
    held(b.try_acquire(&FullKey::new("", "k"), "owner-b", TTL).await);
    assert_eq!(line(&conn, "k").await, ["owner-b", "owner-c"]);
    // A place lasts 3 s after the last ask; the state hash expires by itself.
    let now_ms = {
        let (secs, micros): (u64, u64) = redis_cmd(&mut conn, &["TIME"]).await;
        secs * 1000 + micros / 1000
    };
    for Place { owner, until, .. } in places(&conn, "k").await {
        assert!(
            until > now_ms && until <= now_ms + 3_000,
            "{owner}'s place lasts until {until} (now {now_ms})"
        );
    }
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", &dlock::RedisBackend::line_key("k")]).await;
    assert!(pttl > 0 && pttl <= 3_000, "the line expires in {pttl} ms");

    // a's release hands the key to b, with a lease of b's ttl capped at HANDOFF_LEASE (5 s;
    // b renews it like any lease), and tells b alone.
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(true)
    );
    let notice = tokio::time::timeout(Duration::from_secs(5), b_watch.released()).await.expect("b hears");
    let ReleaseNotice::Granted { owner, fencing_token: handed } = notice else {
        panic!("expected a hand-off, got {notice:?}")
    };
    assert_eq!(&*owner, "owner-b");
    assert!(handed > first, "a hand-off draws a new fencing token");
    assert_eq!(holder_of(&conn, "k").await.as_deref(), Some("owner-b"));
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "k"]).await;
    let handoff_ms = i64::try_from(TTL.min(HANDOFF_LEASE).as_millis()).expect("ms");
    assert!(
        pttl > handoff_ms - 1_000 && pttl <= handoff_ms,
        "b's lease is the hand-off lease: {pttl} ms left"
    );
    assert_eq!(line(&conn, "k").await, ["owner-c"]);

    // b asking again before it heard (a missed notice) gets the key, with a fresh token and a
    // lease of its full ttl.
    let again = acquired(b.try_acquire(&FullKey::new("", "k"), "owner-b", TTL).await);
    assert!(again > handed);
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "k"]).await;
    assert!(pttl > 9_000 && pttl <= 10_000, "asking again gives b its ttl: {pttl} ms left");

    // b's release goes to c; c's release finds nobody in line and frees the key without a
    // notice: whoever waits is in line (b, still subscribed, is not, and hears nothing).
    assert_eq!(
        b.release(&FullKey::new("", "k"), "owner-b").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(true)
    );
    let notice = tokio::time::timeout(Duration::from_secs(5), c_watch.released()).await.expect("c hears");
    assert!(
        matches!(&notice, ReleaseNotice::Granted { owner, fencing_token } if &**owner == "owner-c" && *fencing_token > again),
        "{notice:?}"
    );
    assert_eq!(
        c.release(&FullKey::new("", "k"), "owner-c").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(false)
    );
    let heard = tokio::time::timeout(Duration::from_millis(100), b_watch.released()).await;
    assert!(heard.is_err(), "b heard {heard:?}");
    assert!(!exists(&conn, "k").await && line(&conn, "k").await.is_empty());

    // A release by an owner that does not hold the key takes it out of line.
    acquired(a.try_acquire(&FullKey::new("", "k"), "owner-a", TTL).await);
    held(b.try_acquire(&FullKey::new("", "k"), "owner-b", TTL).await);
    held(c.try_acquire(&FullKey::new("", "k"), "owner-c", TTL).await);
    assert_eq!(line(&conn, "k").await, ["owner-b", "owner-c"]);
    assert!(
        !b.release(&FullKey::new("", "k"), "owner-b").await.expect("release").was_held,
        "b never held it"
    );
    assert_eq!(line(&conn, "k").await, ["owner-c"]);
    drop(b_watch);

    // An owner that got the key by itself while still in line (its process could not hear
    // hand-offs for a moment, so it asked without queueing) leaves the line when it releases:
    // the key is never handed back to it (and nobody is told: nobody else waits).
    let () = redis_cmd(&mut conn, &["DEL", "k"]).await; // a's lease ended
    acquired(a.try_acquire(&FullKey::new("", "k"), "owner-c", TTL).await); // a's backend is not subscribed
    assert_eq!(line(&conn, "k").await, ["owner-c"], "still in line while holding");
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-c").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(false)
    );
    assert!(!exists(&conn, "k").await && line(&conn, "k").await.is_empty(), "freed, not handed to itself");
    acquired(a.try_acquire(&FullKey::new("", "k"), "owner-a", TTL).await);
    held(c.try_acquire(&FullKey::new("", "k"), "owner-c", TTL).await);

    // A place whose process stopped asking (its time in line is over) is skipped.
    let now_ms = {
        let (secs, micros): (u64, u64) = redis_cmd(&mut conn, &["TIME"]).await;
        secs * 1000 + micros / 1000
    };
    let line_key = dlock::RedisBackend::line_key("k");
    let Place { arrived, rest, .. } = places(&conn, "k").await.remove(0);
    let _: i64 =
        redis_cmd(&mut conn, &["HSET", &line_key, "owner-c", &format!("{arrived}:{}:{rest}", now_ms - 1)])
            .await;
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(true)
    );
    assert!(!redis_cmd::<bool>(&mut conn, &["EXISTS", "k"]).await, "nobody left in line: the key is free");
    // c's process is told (its place was there, its time up), so it hears a plain release.
    let notice = tokio::time::timeout(Duration::from_secs(5), c_watch.released()).await.expect("c hears");
    assert_eq!(notice, ReleaseNotice::Released);
    drop(c_watch);
    assert!(line(&conn, "k").await.is_empty(), "no place left behind");
}

/// A single attempt that finds the key held never joined the line, so giving up costs no
/// release; a waiter that did join withdraws once it gives up.
#[tokio::test]
async fn only_waiters_in_line_withdraw_when_they_give_up() {
    let server = RedisServer::start();
    let url = server.url();
    let conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("try").ttl(TTL).await.expect("holder");
    let faulty = FaultyBackend::new(connect_redis(&url).await);
    let service = LockService::new(faulty.clone());
    let err = service.lock("try").wait(Duration::ZERO).await.expect_err("held");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(
        (faulty.count(Op::TryAcquire), faulty.count(Op::Release)),
        (1, 0),
        "one attempt, nothing to withdraw"
    );
    let err = service.lock("try").wait(Duration::from_millis(200)).await.expect_err("held");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(faulty.count(Op::Release), 1, "joined the line, so it withdrew");
    assert!(line(&conn, "try").await.is_empty());
    assert!(guard.release().await.expect("release"));
}

/// Three processes wait behind a holder; they get the key in the order they came (that a
/// hand-off needs no attempt of the waiter's own is pinned by the scripted tests below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_processes_are_served_in_arrival_order() {
    let server = RedisServer::start();
    let url = server.url();
    let conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("turns").ttl(TTL).await.expect("holder");
    let first = guard.fencing_token();
    let order: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let mut waiters = Vec::new();
    for n in 0..3 {
        let service = LockService::new(connect_redis(&url).await);
        let order = Arc::clone(&order);
        waiters.push(tokio::spawn(async move {
            let guard = service.lock("turns").ttl(TTL).wait(Duration::from_secs(10)).await?;
            order.lock().unwrap_or_else(PoisonError::into_inner).push((n, guard.fencing_token()));
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.release().await
        }));
        // The next one comes only once this one is in line.
        wait_for_line(&conn, "turns", n + 1).await;
    }
    assert!(guard.release().await.expect("release"));
    for waiter in waiters {
        assert!(waiter.await.expect("join").expect("each waiter gets the key and releases it"));
    }
    let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(order.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1, 2], "first come, first served");
    let tokens: Vec<u64> = std::iter::once(first).chain(order.iter().map(|(_, t)| *t)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "fencing tokens increase: {tokens:?}");
    assert!(!exists(&conn, "turns").await && line(&conn, "turns").await.is_empty());
}

/// A waiter that stops waiting leaves the line: at once when its wait runs out, soon after
/// when its caller drops it. The holder's release then frees the key instead of handing it
/// to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_give_up_leave_the_line() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("gone").ttl(TTL).await.expect("holder");

    let timed_out = LockService::new(connect_redis(&url).await);
    let err = timed_out.lock("gone").wait(Duration::from_millis(300)).await.expect_err("held");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(line(&conn, "gone").await.is_empty(), "out of line when the Timeout is returned");

    let dropped = LockService::new(connect_redis(&url).await);
    let call =
        tokio::spawn(async move { dropped.lock("gone").wait(Duration::from_secs(30)).await.map(drop) });
    wait_for_line(&conn, "gone", 1).await;
    call.abort();
    wait_for_line(&conn, "gone", 0).await;

    assert!(guard.release().await.expect("release"));
    assert!(
        !redis_cmd::<bool>(&mut conn, &["EXISTS", "gone"]).await,
        "the key is free, not handed to a gone waiter"
    );
}

/// Redis restarts while two processes wait in line (it keeps nothing on disk, so the line,
/// the holder's key and the subscriptions are gone): both waiters still get the key, one
/// after the other, soon after Redis is back, and nothing of the line is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_line_get_the_key_after_a_restart() {
    let mut server = RedisServer::start();
    let url = server.url();
    let conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("restart").ttl(Duration::from_secs(2)).await.expect("holder");
    let held: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::default();
    let mut waiters = Vec::new();
    for n in 0..2 {
        let service = LockService::new(connect_redis(&url).await);
        let held = Arc::clone(&held);
        waiters.push(tokio::spawn(async move {
            let guard = service.lock("restart").ttl(TTL).wait(Duration::from_secs(20)).await?;
            let entered = Instant::now();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let left = Instant::now();
            held.lock().unwrap_or_else(PoisonError::into_inner).push((n, entered, left));
            guard.release().await
        }));
        wait_for_line(&conn, "restart", n + 1).await;
    }
    server.restart();
    let back = Instant::now();
    let conn = inspector(&url).await; // the old connection went with the server
    for waiter in waiters {
        let outcome = waiter.await.expect("join");
        assert!(outcome.is_ok(), "each waiter gets the key after the restart: {outcome:?}");
    }
    let held = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(held.len(), 2);
    let (first, second) = if held[0].1 < held[1].1 { (held[0], held[1]) } else { (held[1], held[0]) };
    assert!(first.2 <= second.1, "one after the other: {held:?}");
    let done = second.2 - back;
    // Well under a recheck (1 s): the waiters ask again as soon as their subscriptions are back.
    assert!(done < WAITER_RECHECK * 9 / 10, "both done {done:?} after the restart");
    // The old holder's key went with the restart: its release says so.
    assert!(!guard.release().await.unwrap_or(false));
    assert!(!exists(&conn, "restart").await && line(&conn, "restart").await.is_empty());
    eprintln!("after the restart both waiters were done in {done:?}");
}

/// Redis goes away for good while a request waits: the request keeps trying until its wait
/// ends and then reports why it could not get the key (the backend error, not a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_reports_a_backend_that_stays_away_when_its_wait_ends() {
    let mut server = RedisServer::start();
    let url = server.url();
    let conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let _guard = holder.lock("away").ttl(TTL).await.expect("holder");
    let waiter = LockService::new(connect_redis_with(&url, Duration::from_millis(200)).await);
    let wait = Duration::from_millis(1500);
    let call = tokio::spawn(async move {
        let started = Instant::now();
        (waiter.lock("away").wait(wait).await.map(drop), started.elapsed())
    });
    wait_for_line(&conn, "away", 1).await;
    server.stop();
    let (outcome, took) = call.await.expect("join");
    assert!(matches!(outcome, Err(Error::Backend { .. })), "{outcome:?}");
    assert!(took >= wait, "kept trying for its whole wait, returned after {took:?}");
    // The last attempt starts at the deadline and may take up to one call timeout.
    assert!(took < wait + Duration::from_millis(200) * 3, "returned {took:?} after it was called");
}

/// The Redis a waiting request talks to turns into a read-only replica for a while (what a
/// client may reach during a failover): the request keeps trying through the `READONLY`
/// answers, and gets the key once the server takes writes again and the holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_a_read_only_spell() {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let begin = ["REPLICAOF", "127.0.0.1", &port];
    rides_out_a_spell(
        "ro",
        async |conn| command(conn, &begin).await,
        async |conn| {
            command(conn, &["REPLICAOF", "NO", "ONE"]).await;
        },
    )
    .await;
}

/// The Redis a waiting request talks to refuses writes for a while because too few replicas
/// are connected (`min-replicas-to-write`: `NOREPLICAS`), which is as passing as a read-only
/// spell: the request keeps trying, and gets the key once writes are taken again. Before, the
/// refusal was an `Other` error and the waiter gave up at its next ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_a_spell_without_enough_replicas() {
    let on = ["CONFIG", "SET", "min-replicas-to-write", "1"];
    let off = ["CONFIG", "SET", "min-replicas-to-write", "0"];
    rides_out_a_spell("nr", async |conn| command(conn, &on).await, async |conn| command(conn, &off).await)
        .await;
}

/// The Redis a waiting request talks to refuses writes because its last background save
/// failed (`stop-writes-on-bgsave-error`: `MISCONF`, say a full disk): as passing as the spells
/// above, until an operator mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_a_spell_of_failed_saves() {
    let begin = async |conn: &mut Conn| {
        // A directory where the save's file goes: the save is written, then cannot be moved
        // into place.
        let (_, dir): (String, String) = redis_cmd(conn, &["CONFIG", "GET", "dir"]).await;
        let in_the_way = std::path::Path::new(&dir).join("dump.rdb").join("in-the-way");
        std::fs::create_dir_all(&in_the_way).unwrap_or_else(|e| panic!("mkdir {in_the_way:?}: {e}"));
        command(conn, &["CONFIG", "SET", "save", "3600 1"]).await;
        let _: String = redis_cmd(conn, &["BGSAVE"]).await;
        poll_until(Duration::from_secs(10), "the background save failed", || {
            let mut conn = conn.clone();
            async move {
                let info: String = redis_cmd(&mut conn, &["INFO", "persistence"]).await;
                info.contains("rdb_last_bgsave_status:err") && info.contains("rdb_bgsave_in_progress:0")
            }
        })
        .await;
        let refused: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg("1").query_async(conn).await;
        let refusal = refused.expect_err("writes are refused after a failed save");
        assert_eq!(refusal.code(), Some("MISCONF"), "{refusal}");
    };
    let end =
        async |conn: &mut Conn| command(conn, &["CONFIG", "SET", "stop-writes-on-bgsave-error", "no"]).await;
    rides_out_a_spell("ms", begin, end).await;
}

/// The Redis a waiting request talks to is stuck in a long script (`BUSY`, README "What dlock
/// guarantees", 4, lists it among the refusals a waiter rides out): the request keeps trying,
/// and gets the key once the script is killed and the holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_a_busy_script() {
    let begin = async |conn: &mut Conn| {
        command(conn, &["CONFIG", "SET", "busy-reply-threshold", "100"]).await;
        let (_, port): (String, String) = redis_cmd(conn, &["CONFIG", "GET", "port"]).await;
        let mut busy = inspector(&format!("redis://127.0.0.1:{port}")).await;
        // A read-only script that never ends, until `SCRIPT KILL`.
        tokio::spawn(async move {
            let _: redis::RedisResult<()> =
                redis::cmd("EVAL").arg("while true do end").arg(0).query_async(&mut busy).await;
        });
        poll_until(Duration::from_secs(10), "the server answers BUSY", || {
            let mut conn = conn.clone();
            async move {
                let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                ping.err().is_some_and(|err| err.code() == Some("BUSY"))
            }
        })
        .await;
    };
    let end = async |conn: &mut Conn| command(conn, &["SCRIPT", "KILL"]).await;
    rides_out_a_spell("busy", begin, end).await;
}

/// `args`, sent on `conn`, answered `OK`.
async fn command(conn: &mut Conn, args: &[&str]) {
    let () = redis_cmd(conn, args).await;
}

/// A request waits for `key`, held on a server of its own; `begin` makes the server refuse
/// writes, for longer than a recheck, then `end` mends it. The request must still be waiting
/// then, and get the key soon after the holder lets go.
async fn rides_out_a_spell(key: &str, begin: impl AsyncFnOnce(&mut Conn), end: impl AsyncFnOnce(&mut Conn)) {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let held = holder.lock(key).ttl(TTL).await.expect("holder");
    let waiter = LockService::new(connect_redis(&url).await);
    let waited = key.to_owned();
    let call = tokio::spawn(async move { waiter.lock(waited).ttl(TTL).wait(Duration::from_secs(15)).await });
    wait_for_line(&conn, key, 1).await;

    begin(&mut conn).await;
    // Longer than a recheck: the waiter asks at least once while the server refuses writes.
    tokio::time::sleep(WAITER_RECHECK + Duration::from_millis(500)).await;
    let gave_up = call.is_finished();
    end(&mut conn).await;
    assert!(!gave_up, "the waiter gave up while the server refused writes: {:?}", call.await);
    // A server that turned replica may have dropped the holder's key when it synced; either
    // way it lets go.
    let _ = held.release().await;
    let released = Instant::now();

    let guard = call.await.expect("join").expect("the waiter gets the key once the server takes writes");
    let took = released.elapsed();
    assert!(took < WAITER_RECHECK * 3, "the waiter got the key {took:?} after the holder let go");
    assert!(guard.release().await.expect("release"));
}

// ---------------------------------------------------------------------------------------------
// Real processes: this test binary re-executed as a worker.

/// A short ttl for a killed worker: the longest anyone can be kept out by it.
const WORKER_TTL: Duration = Duration::from_millis(500);

/// Not a test: the body of the worker processes that the tests below start
/// ([`Worker::spawn`]), in mode `wait <ttl ms>` (for the key `line` with that ttl, until
/// killed) or `turn <n>` (wait for the key `turns`, then append `<n>` to the Redis list
/// `order` while holding it). Run directly, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process for the multi-process tests; they start it"]
async fn handoff_worker() {
    let Some(job) = worker_job() else { return };
    let (mode, url) = (job.mode, job.url);
    let service = LockService::new(connect_redis(&url).await);
    match mode.split_once(' ') {
        Some(("turn", n)) => {
            let guard = service.lock("turns").ttl(TTL).wait(Duration::from_secs(20)).await.expect("its turn");
            let _: i64 = redis_cmd(&mut inspector(&url).await, &["RPUSH", "order", n]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(guard.release().await.expect("release"), "held to the end");
        }
        Some(("wait", ttl_ms)) => {
            let ttl = Duration::from_millis(ttl_ms.parse().expect("a ttl in ms"));
            let _ = service.lock("line").ttl(ttl).wait(Duration::from_secs(30)).await;
            panic!("the waiting worker was not killed within 30 s");
        }
        _ => panic!("unknown worker mode {mode:?}"),
    }
}

/// Four OS processes line up behind a holder in this one; releases hand the key down the line
/// in the order they came, each process holding it in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_turns_in_arrival_order() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("turns").ttl(TTL).await.expect("holder");
    let mut workers = Vec::new();
    for n in 0..4 {
        workers.push(Worker::spawn("handoff_worker", &format!("turn {n}"), &url));
        wait_for_line(&conn, "turns", n + 1).await;
    }
    assert!(guard.release().await.expect("release"));
    for worker in workers {
        let status = worker.wait().await;
        assert!(status.success(), "a worker failed: {status}");
    }
    let order: Vec<String> = redis_cmd(&mut conn, &["LRANGE", "order", "0", "-1"]).await;
    assert_eq!(order, ["0", "1", "2", "3"], "first come, first served across processes");
    assert!(!exists(&conn, "turns").await && line(&conn, "turns").await.is_empty());
}

/// A waiting process that asked for `worker_ttl` is SIGKILLed just before the holder
/// releases: the key is handed to the dead process (its place in line has not run out), and
/// the next waiter gets it once that lease ends. Returns how long the next waiter was kept
/// out after the release, and the lease the dead process was handed (its PTTL right then).
async fn kill_first_in_line(worker_ttl: Duration) -> (Duration, i64) {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let holder = LockService::new(connect_redis(&url).await);
    let guard = holder.lock("line").ttl(TTL).await.expect("holder");

    let mut worker = Worker::spawn("handoff_worker", &format!("wait {}", worker_ttl.as_millis()), &url);
    wait_for_line(&conn, "line", 1).await;
    let dead_owner = line(&conn, "line").await.remove(0);

    let next = LockService::new(connect_redis(&url).await);
    let waiter = tokio::spawn(async move {
        let guard = next.lock("line").ttl(TTL).wait(Duration::from_secs(20)).await?;
        let at = Instant::now();
        guard.release().await?;
        Ok::<_, Error>(at)
    });
    wait_for_line(&conn, "line", 2).await;

    worker.kill().await;
    let released_at = Instant::now();
    assert!(guard.release().await.expect("release"));
    assert_eq!(
        holder_of(&conn, "line").await,
        Some(dead_owner),
        "handed to the first in line, which is dead"
    );
    let handed: i64 = redis_cmd(&mut conn, &["PTTL", "line"]).await;
    let acquired_at = waiter.await.expect("join").expect("the next waiter gets the key");
    (acquired_at - released_at, handed)
}

/// A dead waiter that asked for a short ttl keeps the next one out for that ttl plus at most
/// one recheck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_waiting_process_keeps_others_out_for_at_most_its_ttl() {
    let (kept_out, _) = kill_first_in_line(WORKER_TTL).await;
    // Slack for a loaded machine, as below.
    let bound = WORKER_TTL + WAITER_RECHECK + Duration::from_secs(1);
    assert!(kept_out < bound, "kept out {kept_out:?} by a dead waiter (bound {bound:?})");
    eprintln!("a killed waiter kept the next one out for {kept_out:?} (its ttl: {WORKER_TTL:?})");
}

/// A dead waiter that asked for a long ttl (60 s) is handed only `HANDOFF_LEASE` (5 s): it
/// keeps the next one out for that plus at most one recheck, not for its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_waiting_process_with_a_long_ttl_keeps_others_out_for_at_most_the_hand_off_lease() {
    let (kept_out, handed) = kill_first_in_line(Duration::from_secs(60)).await;
    let cap = i64::try_from(HANDOFF_LEASE.as_millis()).expect("ms");
    assert!(handed > 0 && handed <= cap, "the dead waiter was handed {handed} ms (cap {cap} ms)");
    // Slack for a loaded machine: the point is 5 s, not the 60 s the dead waiter asked for.
    let bound = HANDOFF_LEASE + WAITER_RECHECK + Duration::from_secs(1);
    assert!(kept_out < bound, "kept out {kept_out:?} by a dead waiter (bound {bound:?})");
    eprintln!("a killed waiter with a 60 s ttl kept the next one out for {kept_out:?}");
}

// ---------------------------------------------------------------------------------------------
// When the service trusts a hand-off notice: a scripted key on tokio's paused clock.

/// One key, `k`, that someone else holds as far as a waiter can tell: a [`FaultyBackend`]
/// over a `MemoryBackend` answers every attempt on it `Held` with newest token 1 (so the
/// waiter is in line), until [`announce`](Line::announce) hands the key over.
#[derive(Debug, Clone)]
struct Line {
    memory: MemoryBackend,
    faulty: FaultyBackend,
}

impl Line {
    fn new() -> Self {
        let memory = MemoryBackend::new();
        let faulty = FaultyBackend::new(memory.clone());
        faulty
            .inject(Rule::answer(TryAcquire::Held { remaining: Some(TTL), newest_token: Some(1) }).key("k"));
        Self { memory, faulty }
    }

    fn attempts(&self) -> usize {
        self.faulty.count(Op::TryAcquire)
    }

    fn renewals(&self) -> usize {
        self.faulty.count(Op::Renew)
    }

    /// The ttl the latest renewal asked for.
    fn renewed_for(&self) -> Option<Duration> {
        self.faulty.last(Op::Renew).and_then(|call| call.ttl)
    }

    /// Announce a hand-off to the waiting owner (the owner of the latest attempt) under
    /// `token`; `take` also gives it the key: the store holds it for that owner (for an hour,
    /// so that only dlock's own deadlines matter here), and the owner's next attempt finds it
    /// its own, with a new token (`token + 1`).
    async fn announce(&self, token: u64, take: bool) {
        let owner = self.faulty.last(Op::TryAcquire).and_then(|call| call.owner).expect("someone waits");
        if take {
            self.faulty.clear();
            let key = FullKey::new("", "k");
            let handed = self.memory.try_acquire(&key, &owner, Duration::from_secs(3600)).await;
            assert!(matches!(handed, Ok(TryAcquire::Acquired { .. })), "{handed:?}");
            self.faulty.inject(Rule::answer(TryAcquire::Acquired { fencing_token: token + 1 }).key("k"));
        }
        assert_eq!(self.faulty.grant("k", &owner, token), 1, "the waiter watches `k`");
    }
}

/// Let every ready task run, without letting the paused clock move.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// A waiter that tried twice (once before subscribing, once after) and now waits.
async fn waiting(line: &Line, ttl: Duration) -> tokio::task::JoinHandle<Result<dlock::LockGuard, Error>> {
    waiting_renewed(line, ttl, true).await
}

/// [`waiting`], with or without renewal.
async fn waiting_renewed(
    line: &Line,
    ttl: Duration,
    renew: bool,
) -> tokio::task::JoinHandle<Result<dlock::LockGuard, Error>> {
    let service = LockService::new(line.faulty.clone());
    let call =
        tokio::spawn(
            async move { service.lock("k").ttl(ttl).renew(renew).wait(Duration::from_secs(60)).await },
        );
    settle().await;
    assert_eq!(line.attempts(), 2, "tried, subscribed, tried again, and waits");
    call
}

/// A hand-off announced after the waiter's last attempt (a newer token) is the lock: no
/// further attempt, and the guard carries the announced token.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_fresh_hand_off_is_taken_without_asking_again() {
    let line = Line::new();
    let call = waiting(&line, TTL).await;
    line.announce(7, true).await;
    let guard = call.await.expect("join").expect("handed over");
    assert_eq!(guard.fencing_token(), 7);
    assert_eq!(line.attempts(), 2, "no attempt after the hand-off");
    assert!(guard.release().await.expect("release"));
}

/// A hand-off notice whose token is not newer than what the waiter's last attempt saw comes
/// from before that attempt, which found the key held by someone else: the waiter asks again
/// instead of believing it holds the key. A hand-off to another owner wakes nobody here.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stale_hand_off_is_not_trusted() {
    let line = Line::new();
    let call = waiting(&line, TTL).await;
    line.announce(1, false).await; // the token the last attempt already saw
    settle().await;
    assert_eq!(line.attempts(), 3, "asked again");
    assert!(!call.is_finished(), "still waiting: the key is someone else's");

    assert_eq!(line.faulty.grant("k", "another", 9), 1);
    settle().await;
    assert_eq!(line.attempts(), 3, "a hand-off to another owner is nothing to try for");
    assert!(!call.is_finished());

    line.announce(10, true).await;
    let guard = call.await.expect("join").expect("handed over");
    assert_eq!(guard.fencing_token(), 10);
    assert!(guard.release().await.expect("release"));
}

/// A hand-off that comes when half the waiter's ttl has passed since its last attempt (the
/// moment its lease is counted from) is confirmed by asking again, which renews it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_late_hand_off_is_confirmed_by_asking_again() {
    let line = Line::new();
    let ttl = Duration::from_millis(900);
    let call = waiting(&line, ttl).await;
    tokio::time::advance(Duration::from_millis(600)).await; // before the 1 s recheck
    line.announce(7, true).await;
    let guard = call.await.expect("join").expect("handed over");
    assert_eq!(line.attempts(), 3, "asked again");
    assert_eq!(guard.fencing_token(), 8, "the token of the renewing attempt");
    assert!(guard.release().await.expect("release"));
}

/// A key handed over comes with at most `HANDOFF_LEASE` (so a dead waiter cannot keep it for
/// its whole ttl): the new holder renews it a third of the way through that lease, not of its
/// own ttl, and from then on holds it for its full ttl.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handed_over_lease_is_renewed_a_third_into_the_hand_off_lease() {
    let line = Line::new();
    let ttl = Duration::from_secs(60);
    let call = waiting(&line, ttl).await;
    line.announce(7, true).await;
    let guard = call.await.expect("join").expect("handed over");

    tokio::time::advance(HANDOFF_LEASE / 3 - Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(line.renewals(), 0, "not due yet");
    tokio::time::advance(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(line.renewals(), 1, "renewed a third into the hand-off lease (ttl/3 would be 20 s)");
    assert_eq!(line.renewed_for(), Some(ttl), "renewed to the full ttl");
    tokio::time::advance(HANDOFF_LEASE).await;
    settle().await;
    assert!(!guard.is_lost(), "the renewal extended the lease to the full ttl");
    assert_eq!(line.renewals(), 1, "the next renewal is a third into the full ttl");
    assert!(guard.release().await.expect("release"));
}

/// A request that is not renewed needs the whole lease it asked for, which a hand-off (at most
/// `HANDOFF_LEASE`) may not give: it does not take the notice on trust but asks again, and the
/// key, found its own, comes with its full ttl and a new token.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_without_renewal_asks_again_after_a_hand_off() {
    let line = Line::new();
    let ttl = Duration::from_secs(60);
    let call = waiting_renewed(&line, ttl, false).await;
    line.announce(7, true).await;
    let guard = call.await.expect("join").expect("handed over");
    assert_eq!(line.attempts(), 3, "asked again");
    assert_eq!(guard.fencing_token(), 8, "the token of the attempt that found the key its own");
    tokio::time::advance(HANDOFF_LEASE * 2).await;
    settle().await;
    assert!(!guard.is_lost(), "holds past the hand-off lease");
    assert_eq!(line.renewals(), 0, "and is never renewed");
    assert!(guard.release().await.expect("release"));
}

/// A renewal of a handed-over lease that fails is retried soon enough for the short lease:
/// with a 60 s ttl, retries spaced for the ttl (5 s) would all fall after the hand-off
/// lease's deadline and the lease would be lost.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_renewal_of_a_handed_over_lease_is_retried_within_it() {
    let line = Line::new();
    let ttl = Duration::from_secs(60);
    let call = waiting(&line, ttl).await;
    line.announce(7, true).await;
    let guard = call.await.expect("join").expect("handed over");
    line.faulty.inject(Rule::fail(Op::Renew, BackendErrorKind::Connection).times(2));

    // Step through the hand-off lease and past it; the keeper runs at each step.
    let mut elapsed = Duration::ZERO;
    while elapsed < HANDOFF_LEASE * 2 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        elapsed += Duration::from_millis(100);
    }
    assert_eq!(line.renewals(), 3, "two failed renewals and one that went through");
    assert!(!guard.is_lost(), "the lease was lost while its renewal was retried");
    assert!(guard.release().await.expect("release"));
}

/// The release script trusts nothing in the waiting line it did not check: a place under the
/// prefix that dlock did not write (a corrupted or foreign field) neither keeps the key held
/// for longer than a hand-off lease, nor makes the holder's release fail, and neither does a
/// line full of places whose time is up.
#[tokio::test]
async fn releases_are_not_derailed_by_malformed_places_in_line() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = inspector(&url).await;
    let a = connect_redis(&url).await;
    let key = FullKey::new("", "k");
    let line_key = dlock::RedisBackend::line_key("k");

    // A place asking for a hand-off lease of 11 days.
    acquired(a.try_acquire(&key, "owner-a", TTL).await);
    let _: i64 = redis_cmd(&mut conn, &["HSET", &line_key, "junk", "1:99999999999999:999999999:p"]).await;
    let _ = a.release(&key, "owner-a").await;
    let pttl: i64 = redis_cmd(&mut conn, &["PTTL", "k"]).await;
    assert!(
        pttl <= i64::try_from(HANDOFF_LEASE.as_millis()).unwrap_or(i64::MAX),
        "a released key is held for {pttl} ms by a place dlock never wrote"
    );
    let () = redis_cmd(&mut conn, &["DEL", "k", &line_key]).await;

    // A place asking for a hand-off lease of 0 ms (`SET … PX 0` is an error).
    acquired(a.try_acquire(&key, "owner-b", TTL).await);
    let _: i64 = redis_cmd(&mut conn, &["HSET", &line_key, "junk", "1:99999999999999:0:p"]).await;
    let released = a.release(&key, "owner-b").await;
    assert!(matches!(released, Ok(ReleaseOutcome { was_held: true, .. })), "release failed: {released:?}");
    let () = redis_cmd(&mut conn, &["DEL", "k", &line_key]).await;

    // More places whose time is up than Lua's `unpack` takes at once.
    acquired(a.try_acquire(&key, "owner-c", TTL).await);
    let _: i64 = redis_cmd(
        &mut conn,
        &[
            "EVAL",
            "for i = 1, 9000 do redis.call('HSET', KEYS[1], 'w' .. i, '1:1:1000:p') end return 1",
            "1",
            &line_key,
        ],
    )
    .await;
    let released = a.release(&key, "owner-c").await;
    assert!(matches!(released, Ok(ReleaseOutcome { was_held: true, .. })), "release failed: {released:?}");
    assert!(!exists(&conn, "k").await && line(&conn, "k").await.is_empty(), "freed, and the line cleared");
}
