//! Waiting without polling on Redis: release notices, shared subscriptions, nothing left
//! subscribed. (Local FIFO order, on every backend, is in the conformance suite.)
//!
//! Each test owns a private `redis-server`, so counting pub/sub channels on the server is exact.

use std::sync::Arc;
use std::time::Duration;

use dlock::backend::{FullKey, ReleaseOutcome};
use dlock::{Error, LockService, RedisBackend};
use dlock_tests::{RedisServer, inspector, poll_until};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The channels the server has subscribers for: dlock's notice channels (`<key>#dlock:to:<process>{…}`).
async fn server_channels(url: &str) -> Vec<String> {
    let mut conn = inspector(url).await;
    redis::cmd("PUBSUB").arg("CHANNELS").arg("*#dlock:*").query_async(&mut conn).await.expect("PUBSUB")
}

/// A holder with a long lease releases early: the waiter must be woken by the release notice,
/// since its own timer (the holder's remaining lease, ~30 s) is far past its `wait`.
#[tokio::test]
async fn redis_waiter_is_woken_by_the_release_not_by_a_timer() {
    let server = RedisServer::start();
    let a = LockService::new(RedisBackend::connect(&server.url()).await.expect("connect a"));
    let b_backend = RedisBackend::connect(&server.url()).await.expect("connect b");
    let b = LockService::new(b_backend.clone());
    let held = a.lock("k").ttl(Duration::from_secs(30)).await.expect("a holds");
    let waiter = tokio::spawn(async move {
        let guard = b.lock("k").wait(Duration::from_secs(5)).await?;
        let at = Instant::now();
        guard.release().await?;
        Ok::<_, Error>(at)
    });
    poll_until(Duration::from_secs(5), "the waiter subscribed", || {
        let backend = b_backend.clone();
        async move { backend.subscribed_channels() == 1 }
    })
    .await;
    let released_at = Instant::now();
    assert!(held.release().await.expect("release"));
    let acquired_at = waiter.await.expect("join").expect("woken by the release notice within wait");
    let hand_off = acquired_at - released_at;
    // Its timer would have fired only after a recheck (1 s), the holder's lease being 30 s.
    assert!(hand_off < dlock::backend::WAITER_RECHECK / 2, "hand-off took {hand_off:?}");
    poll_until(Duration::from_secs(5), "the subscription was dropped", || {
        let backend = b_backend.clone();
        async move { backend.subscribed_channels() == 0 }
    })
    .await;
}

/// A crashed holder releases nothing: its key expires, and the waiter's fallback timer (the
/// remaining lease the failed attempt reported) lets it in right after.
#[tokio::test]
async fn redis_waiter_gets_an_expired_key_without_a_notice() {
    let server = RedisServer::start();
    let a = LockService::new(RedisBackend::connect(&server.url()).await.expect("connect a"));
    let b = LockService::new(RedisBackend::connect(&server.url()).await.expect("connect b"));
    let crashed = a.lock("k").ttl(Duration::from_millis(400)).renew(false).await.expect("a holds");
    std::mem::forget(crashed); // never released: the holder "crashed"
    let started = Instant::now();
    let guard = b.lock("k").wait(Duration::from_secs(5)).await.expect("in after the lease expired");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "waited {waited:?} for a 400 ms lease");
    guard.release().await.expect("release");
}

/// Many distinct keys waited on: one subscription per key while waited on, none afterwards,
/// in the client and on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscription_is_left_behind() {
    const KEYS: usize = 20_000;
    const TASKS: usize = 32;
    let server = RedisServer::start();
    let holder = LockService::new(RedisBackend::connect(&server.url()).await.expect("connect holder"));
    let waiter_backend = RedisBackend::connect(&server.url()).await.expect("connect waiter");
    let waiter = LockService::new(waiter_backend.clone());
    let next = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (holder, waiter, next) = (holder.clone(), waiter.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().await;
                    if *n == KEYS {
                        return Ok::<_, Error>(());
                    }
                    *n += 1;
                    *n
                };
                let key = format!("key:{i}");
                let held = holder.lock(&key).await?;
                if i % 10 == 0 {
                    // The waiter subscribes and joins the key's waiting line (or finds the key
                    // free when it asks again): it gets the key well before a recheck would.
                    let (waiter, wanted) = (waiter.clone(), key.clone());
                    let waiting = tokio::spawn(async move {
                        let started = Instant::now();
                        let guard = waiter.lock(&wanted).wait(Duration::from_secs(5)).await?;
                        let waited = started.elapsed();
                        guard.release().await?;
                        Ok::<_, Error>(waited)
                    });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    held.release().await?;
                    let waited = waiting.await.expect("join")?;
                    assert!(waited < dlock::backend::WAITER_RECHECK / 2, "{key}: waited {waited:?}");
                } else {
                    // The waiter subscribes; then a wait of zero-ish ends it.
                    let attempt = waiter.lock(&key).wait(Duration::from_millis(1)).await;
                    assert!(matches!(attempt, Err(Error::Timeout { .. })), "{attempt:?}");
                    held.release().await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("lock cycles");
    }
    assert_eq!(waiter_backend.subscribed_channels(), 0, "channels left in the client");
    poll_until(Duration::from_secs(5), "the server has no dlock channel left", || {
        let url = server.url();
        async move { server_channels(&url).await.is_empty() }
    })
    .await;
    // Waiting-line places of the waiters that gave up went with their releases, and a line
    // goes with its last place.
    let mut conn = inspector(&server.url()).await;
    let left: Vec<String> =
        redis::cmd("KEYS").arg("*#dlock:line*").query_async(&mut conn).await.expect("KEYS");
    assert!(left.is_empty(), "waiting lines left: {} (e.g. {:?})", left.len(), left.first());
}

/// The last waiter of a key leaves and a new one comes before the subscriber task caught up:
/// the channel is still subscribed, and the new waiter must be told so at once rather than
/// wait for a confirmation that will never come (it used to wait the whole call timeout).
#[tokio::test(flavor = "current_thread")]
async fn rewatching_a_channel_just_left_does_not_stall() {
    use dlock::LockBackend;
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url())
        .call_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    for round in 0..5 {
        let first = backend.watch_releases(&FullKey::new("", "k")).await.expect("watch");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        let started = Instant::now();
        let again = backend.watch_releases(&FullKey::new("", "k")).await.expect("watch again");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "round {round}: re-watching took {took:?}");
        drop(again);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The release script tells whether other processes wait for the key: they are in its waiting
/// line (subscribed, and asked since), and the key goes to the first of them.
#[tokio::test]
async fn release_reports_waiting_processes() {
    use dlock::LockBackend;
    let server = RedisServer::start();
    let a = RedisBackend::connect(&server.url()).await.expect("connect a");
    let b = RedisBackend::connect(&server.url()).await.expect("connect b");
    assert!(matches!(
        a.try_acquire(&FullKey::new("", "k"), "owner-a", Duration::from_secs(10)).await,
        Ok(dlock::backend::TryAcquire::Acquired { .. })
    ));
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(false),
        "nobody waits"
    );
    assert!(matches!(
        a.try_acquire(&FullKey::new("", "k"), "owner-a", Duration::from_secs(10)).await,
        Ok(dlock::backend::TryAcquire::Acquired { .. })
    ));
    let watch = b.watch_releases(&FullKey::new("", "k")).await.expect("watch").expect("redis has notices");
    // Subscribed but not asking: b is not waiting in line, and nothing is said.
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(false)
    );
    assert!(matches!(
        a.try_acquire(&FullKey::new("", "k"), "owner-a", Duration::from_secs(10)).await,
        Ok(dlock::backend::TryAcquire::Acquired { .. })
    ));
    assert!(matches!(
        b.try_acquire(&FullKey::new("", "k"), "owner-b", Duration::from_secs(10)).await,
        Ok(dlock::backend::TryAcquire::Held { newest_token: Some(_), .. })
    ));
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(true).with_others_waiting(true),
        "b waits"
    );
    assert_eq!(
        a.release(&FullKey::new("", "k"), "owner-a").await.expect("release"),
        ReleaseOutcome::new(false).with_others_waiting(false),
        "handed to b: not a's any more, nothing released, nothing announced"
    );
    assert!(b.release(&FullKey::new("", "k"), "owner-b").await.expect("release").was_held);
    drop(watch);
}
