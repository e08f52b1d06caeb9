//! [`contend_through`]: many tasks of several clients take one key in a loop while a fault
//! runs, checking every section: nobody else inside, a token above every token before.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dlock::{LockGuard, LockService};

/// What [`contend_through`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Contention {
    /// Sections run in all.
    pub sections: usize,
    /// How long the fault took (it returns once the topology has failed over).
    pub fault_took: Duration,
    /// From the fault's start to the last section that began before it.
    pub last_before: Duration,
    /// From the fault's end (the failover complete) to the first section after it: how long
    /// after the topology recovered the key was usable again.
    pub usable_after_recovery: Duration,
    /// Lock attempts that failed with a backend error (the failover itself).
    pub backend_errors: usize,
}

/// Six tasks (spread over `clients`) take `key` in a loop, with a 5 s ttl, while `fault` runs
/// on a blocking thread; every section checks that nobody else is inside and that its token
/// is above every token granted before (panicking otherwise), and the load runs on until 20
/// sections have passed after the fault.
pub async fn contend_through<F>(clients: Vec<LockService>, key: &'static str, fault: F) -> Contention
where
    F: FnOnce() + Send + 'static,
{
    let inside = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(0));
    let sections = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let entries: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, service) in clients.iter().cycle().take(6).enumerate() {
        let (service, inside, newest, sections, errors, entries, stop) = (
            service.clone(),
            Arc::clone(&inside),
            Arc::clone(&newest),
            Arc::clone(&sections),
            Arc::clone(&errors),
            Arc::clone(&entries),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let guard =
                    match service.lock(key).ttl(Duration::from_secs(5)).wait(Duration::from_secs(30)).await {
                        Ok(guard) => guard,
                        // The failover itself: the shard does not answer for a moment.
                        Err(dlock::Error::Backend { .. }) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(err) => panic!("task {i}: {err}"),
                    };
                entries.lock().unwrap_or_else(PoisonError::into_inner).push(Instant::now());
                assert!(!inside.swap(true, Ordering::SeqCst), "task {i}: two holders at once");
                let token = guard.fencing_token();
                let before = newest.fetch_max(token, Ordering::SeqCst);
                assert!(token > before, "task {i}: token {token} is not above {before}");
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, Ordering::SeqCst);
                sections.fetch_add(1, Ordering::SeqCst);
                // A release the failover swallowed leaves the lock to its background retries
                // (or its ttl): the checks above still hold, `usable_after_recovery` shows it.
                let _ = guard.release().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sections.load(Ordering::SeqCst);
    assert!(before > 10, "the load runs before the fault ({before} sections)");
    let fault_started = Instant::now();
    tokio::task::spawn_blocking(fault).await.expect("the fault");
    let fault_ended = Instant::now();
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
    let entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
    let last_before =
        entries.iter().filter(|at| **at < fault_started).max().copied().unwrap_or(fault_started);
    let first_after = entries.iter().filter(|at| **at >= fault_ended).min().copied().unwrap_or(fault_ended);
    Contention {
        sections: sections.load(Ordering::SeqCst),
        fault_took: fault_ended - fault_started,
        last_before: fault_started.saturating_duration_since(last_before),
        usable_after_recovery: first_after - fault_ended,
        backend_errors: errors.load(Ordering::SeqCst),
    }
}

impl Contention {
    /// The key was usable again within 1 s of the failover, unless the dead primary had
    /// acknowledged a release its replica never received: that lock then stays until its ttl
    /// (5 s from its acquisition), as it must — nobody can tell it was released.
    pub fn assert_usable_after_the_failover(&self) {
        assert!(
            self.usable_after_recovery < Duration::from_secs(5) + Duration::from_secs(1),
            "the key was usable again only {:?} after the failover ({self:?})",
            self.usable_after_recovery
        );
    }
}

/// After a failover: `held`, a lock whose acquisition a replica acknowledged before it, is
/// still its holder's — nobody else (`other`) gets `key`, and past its ttl (checked over 6 s)
/// it is still renewed, now on the new primary; then it is released there.
pub async fn assert_replicated_lock_kept(held: LockGuard, other: &LockService, key: &str) {
    for _ in 0..2 {
        assert!(!held.is_lost(), "the replicated lock was kept");
        assert!(
            matches!(other.lock(key).wait(Duration::ZERO).await, Err(dlock::Error::Timeout { .. })),
            "nobody else gets the replicated lock"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    held.release().await.expect("release on the new primary");
}
