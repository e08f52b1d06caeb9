//! What users read: every error message says what happened to which key and what to do, and
//! reads once — a message says its own level, the cause comes from `source()` (so `{:#}` with
//! anyhow prints each sentence once).

use std::time::Duration;

use dlock::{Error, LockService, MemoryBackend, RedisBackend};
use dlock_tests::RedisServer;

/// The chain of an error, level by level.
fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut levels = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        levels.push(cause.to_string());
        source = cause.source();
    }
    levels
}

/// No level repeats the text of the level below it.
fn assert_reads_once(levels: &[String]) {
    for pair in levels.windows(2) {
        assert!(!pair[0].contains(&pair[1]), "{:?} repeats its cause {:?}", pair[0], pair[1]);
    }
}

#[tokio::test]
async fn a_refused_connection_reads_once_and_says_what_to_do() {
    let port = dlock_tests::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = RedisBackend::connect(&url).await.expect_err("nobody listens there");
    let levels = chain(&err);
    assert_reads_once(&levels);
    assert!(levels[0].contains("could not be reached") && levels[0].contains("check"), "{levels:?}");
    assert!(levels.iter().any(|level| level.contains(&url)), "the URL is named: {levels:?}");
    let printed = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(printed.matches("could not connect").count(), 1, "{printed}");
}

/// A backend failure after connect names the key, says what to do, and what failed where.
#[tokio::test]
async fn a_failure_after_connect_names_the_key_the_remedy_and_the_call() {
    let mut server = RedisServer::start();
    let backend = RedisBackend::builder(server.url())
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let service = LockService::builder(backend).key_prefix("app:").build();
    server.pause();
    let err = service.lock("user:7").await.expect_err("Redis is frozen");
    server.resume();
    let levels = chain(&err);
    assert_reads_once(&levels);
    assert!(levels[0].contains("`app:user:7`"), "the key is named: {levels:?}");
    assert!(levels[0].contains("raise its call timeout"), "the remedy is given: {levels:?}");
    assert!(
        levels[1].contains("the acquire script") && levels[1].contains("200ms"),
        "what failed: {levels:?}"
    );
}

/// A key that something else wrote (a hash where dlock keeps its lock string): Redis refuses
/// the script (`WRONGTYPE`). The message names the key and says what to check, and the cause
/// says what Redis answered.
#[tokio::test]
async fn a_key_something_else_wrote_names_the_key_and_what_to_check() {
    let server = RedisServer::start();
    let mut conn = dlock_tests::inspector(&server.url()).await;
    let _: i64 = dlock_tests::redis_cmd(&mut conn, &["HSET", "app:user:7", "field", "value"]).await;
    let backend = RedisBackend::connect(&server.url()).await.expect("connect");
    let service = LockService::builder(backend).key_prefix("app:").build();
    let err = service.lock("user:7").await.expect_err("the key holds a hash");
    let levels = chain(&err);
    assert_reads_once(&levels);
    assert!(levels[0].contains("`app:user:7`"), "the key is named: {levels:?}");
    assert!(
        levels[0].contains("nothing else writes keys under the service's prefix"),
        "the remedy: {levels:?}"
    );
    assert!(levels.iter().any(|level| level.contains("WRONGTYPE")), "what Redis answered: {levels:?}");
}

/// Timeouts and lost locks name the key and say what to do, in one level.
#[tokio::test]
async fn timeouts_and_losses_name_the_key_and_the_remedy() {
    let backend = MemoryBackend::new();
    let service = LockService::builder(backend.clone()).key_prefix("app:").build();
    let guard = service.lock("order:1").await.expect("lock");
    let err = service.lock("order:1").wait(Duration::from_millis(10)).await.expect_err("held");
    let levels = chain(&err);
    assert_eq!(levels.len(), 1, "{levels:?}");
    assert!(levels[0].contains("`app:order:1`") && levels[0].contains("raise `wait`"), "{levels:?}");
    drop(guard);

    let guard = service.lock("order:2").ttl(Duration::from_millis(60)).renew(false).await.expect("lock");
    let reason = guard.lost().await;
    let err = Error::Lost { key: "app:order:2".into(), reason };
    let levels = chain(&err);
    assert_eq!(levels.len(), 1, "{levels:?}");
    assert!(levels[0].contains("`app:order:2`") && levels[0].contains("retry it"), "{levels:?}");
}

/// Locking outside any tokio runtime is `Error::NoRuntime`, saying so — not a panic, not
/// `InvalidInput`. (Polled once by hand: there is no runtime to `.await` in.)
#[test]
fn locking_outside_a_runtime_is_no_runtime() {
    use std::future::IntoFuture;
    use std::task::{Context, Poll, Waker};

    let service = LockService::new(MemoryBackend::new());
    let mut lock = std::pin::pin!(service.lock("k").into_future());
    match lock.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Err(err @ Error::NoRuntime)) => {
            assert!(err.to_string().contains("runtime"), "{err}");
        }
        Poll::Ready(other) => panic!("expected Error::NoRuntime, got {other:?}"),
        Poll::Pending => panic!("expected Error::NoRuntime at once, got Pending"),
    }
}
