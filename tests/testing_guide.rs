//! The README's "Testing code that uses dlock", as a test suite a user would write:
//!
//! - one global Redis service, set up once (a `OnceCell`) by whichever test runs first, used
//!   by many `#[tokio::test]`s — each on its own runtime, running in parallel, while the
//!   runtime that set the service up ends with its test;
//! - `dlock::with_service` for a test that wants a service of its own (an in-process
//!   `MemoryBackend`) without touching the global one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dlock::{Error, LockService, MemoryBackend, RedisBackend, distributed_lock};
use tokio::sync::OnceCell;

/// The code under test: an annotated function on the global service.
#[distributed_lock(key = "guide:account:<id>", ttl = "5s", wait = "10s")]
async fn deposit(id: u32, hold: Duration) -> Result<u64, Error> {
    tokio::time::sleep(hold).await;
    Ok(dlock::fencing_token().unwrap_or_default())
}

/// The global service, set up by the first test that needs it.
async fn setup() {
    static GLOBAL: OnceCell<()> = OnceCell::const_new();
    GLOBAL
        .get_or_init(|| async {
            let redis =
                RedisBackend::connect(&dlock_tests::shared_redis_url()).await.expect("connect to Redis");
            let prefix = dlock_tests::unique_prefix("testing-guide");
            dlock::set_global(LockService::builder(redis).key_prefix(prefix).build()).expect("set once");
        })
        .await;
}

/// Each test locks its own account, and account 0 that every test shares: whichever test's
/// runtime set up the service may have ended already.
async fn a_test_of_the_suite(id: u32) {
    setup().await;
    let first = deposit(id, Duration::ZERO).await.expect("own account");
    let second = deposit(id, Duration::ZERO).await.expect("own account again");
    assert!(second > first, "tokens increase: {first}, {second}");
    // Shared with every other test, running at the same time on other runtimes.
    deposit(0, Duration::from_millis(20)).await.expect("the shared account");
}

#[tokio::test]
async fn suite_1() {
    a_test_of_the_suite(1).await;
}
#[tokio::test]
async fn suite_2() {
    a_test_of_the_suite(2).await;
}
#[tokio::test]
async fn suite_3() {
    a_test_of_the_suite(3).await;
}
#[tokio::test]
async fn suite_4() {
    a_test_of_the_suite(4).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_5() {
    a_test_of_the_suite(5).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_6() {
    a_test_of_the_suite(6).await;
}
#[tokio::test]
async fn suite_7() {
    a_test_of_the_suite(7).await;
}
#[tokio::test]
async fn suite_8() {
    a_test_of_the_suite(8).await;
}
#[tokio::test]
async fn suite_9() {
    a_test_of_the_suite(9).await;
}

/// A test with a service of its own: the code under test locks in a fresh `MemoryBackend`,
/// not in the global Redis service, even while other tests hold the same key there.
#[tokio::test]
async fn a_test_with_its_own_service() {
    setup().await;
    let own = MemoryBackend::new();
    let holding = AtomicBool::new(false);
    let service = LockService::new(own.clone());
    let token = dlock::with_service(service, async {
        let token = deposit(0, Duration::ZERO).await.expect("in the test's own service");
        holding.store(own.held_count() == 0, Ordering::SeqCst);
        token
    })
    .await;
    assert_eq!(token, 1, "the first token of the test's own backend");
    assert!(holding.load(Ordering::SeqCst), "released in the test's own backend");
    // Outside the scope, the global service again.
    assert!(deposit(99, Duration::ZERO).await.expect("global") > 1_000_000, "a Redis token (µs epoch)");
}
