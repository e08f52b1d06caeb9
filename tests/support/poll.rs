//! Waiting for a condition without sleeping and hoping: [`poll_until`] polls it and fails the
//! test if it does not hold within a bound; [`MARGIN`] is the slack tests allow on top of a
//! bound the library promises.

use std::future::Future;
use std::time::{Duration, Instant};

/// Slack allowed on top of a bound the library promises (scheduling on a loaded 2-core
/// machine, the waiter's retry timer on backends without release notices).
pub const MARGIN: Duration = Duration::from_millis(300);

/// Poll `cond` every 10 ms until it holds; panic with `what` if it does not within `bound`.
/// Returns how long it took.
pub async fn poll_until<F, Fut>(bound: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not true within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
