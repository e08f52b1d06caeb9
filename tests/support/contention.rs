//! [`contend_through`]: many tasks of several clients take one key in a loop while a fault
//! runs, checking every section: nobody else inside, a token above every token before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dlock::LockService;

/// Many tasks of two clients take one key in a loop while `fault` runs; every section checks
/// that nobody else is inside and that its token is above every token granted before.
/// Returns how long the key was unavailable around the fault (the longest gap between two
/// sections) and the number of sections.
pub async fn contend_through<F>(clients: Vec<LockService>, key: &'static str, fault: F) -> (Duration, usize)
where
    F: FnOnce() + Send + 'static,
{
    let inside = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(0));
    let sections = Arc::new(AtomicUsize::new(0));
    let last_exit = Arc::new(std::sync::Mutex::new(Instant::now()));
    let longest_gap = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, service) in clients.iter().cycle().take(6).enumerate() {
        let (service, inside, newest, sections, last_exit, longest_gap, stop) = (
            service.clone(),
            Arc::clone(&inside),
            Arc::clone(&newest),
            Arc::clone(&sections),
            Arc::clone(&last_exit),
            Arc::clone(&longest_gap),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let guard =
                    match service.lock(key).ttl(Duration::from_secs(5)).wait(Duration::from_secs(30)).await {
                        Ok(guard) => guard,
                        // The failover itself: the shard does not answer for a moment.
                        Err(dlock::Error::Backend { .. }) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(err) => panic!("task {i}: {err}"),
                    };
                let entered = Instant::now();
                {
                    let gap = entered - *last_exit.lock().unwrap();
                    let mut longest = longest_gap.lock().unwrap();
                    *longest = (*longest).max(gap);
                }
                assert!(!inside.swap(true, Ordering::SeqCst), "task {i}: two holders at once");
                let token = guard.fencing_token();
                let before = newest.fetch_max(token, Ordering::SeqCst);
                assert!(token > before, "task {i}: token {token} is not above {before}");
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, Ordering::SeqCst);
                *last_exit.lock().unwrap() = Instant::now();
                sections.fetch_add(1, Ordering::SeqCst);
                // A release the failover swallowed leaves the lock to its ttl: the check above
                // still holds, the gap shows it.
                let _ = guard.release().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sections.load(Ordering::SeqCst);
    assert!(before > 10, "the load runs before the fault ({before} sections)");
    tokio::task::spawn_blocking(fault).await.expect("the fault");
    // Run on until sections flow again.
    let resumed = sections.load(Ordering::SeqCst);
    super::poll::poll_until(Duration::from_secs(30), "sections resuming after the fault", || {
        let sections = Arc::clone(&sections);
        async move { sections.load(Ordering::SeqCst) > resumed + 20 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a contending task panicked");
    }
    let gap = *longest_gap.lock().unwrap();
    (gap, sections.load(Ordering::SeqCst))
}
