//! Acquisitions whose statement may still take effect on the server. A release of the same
//! key by the same owner waits for them first, so that it cannot overtake one.
//!
//! A caller that gives up on an acquisition (a timeout, a dropped request) leaves its statement
//! on the wire. dlock cancels it, but a cancel reaches the server on a connection of its own: it
//! may come before the statement starts (and is then ignored) or not at all. The request's claim
//! meanwhile releases the key, on another pooled connection, with nothing ordering the two
//! statements. A release that ran first would find nothing to free, and the acquisition,
//! committing after it, would leave the key held by nobody for its whole ttl. The pool
//! therefore reports when an abandoned statement has ended — a round trip sent after it on its
//! connection came back — and the release waits for that, for at most one call timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// The acquisitions under way, by (key, owner), each with its id and a receiver that hears
/// when it ends. One (key, owner) may have several: a request whose attempt timed out asks
/// again with the same owner while the first may still be on the wire.
type Entries = HashMap<(String, String), Vec<(u64, watch::Receiver<()>)>>;
type Map = Mutex<Entries>;

fn lock(map: &Map) -> MutexGuard<'_, Entries> {
    // Every update is one insert or remove: a poisoned map is consistent.
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The acquisitions of one backend whose statements have not ended.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    map: Arc<Map>,
    next_id: AtomicU64,
}

/// One acquisition's statement, until it has ended on the server: dropped then.
#[derive(Debug)]
pub(super) struct Settling {
    map: Weak<Map>,
    entry: (String, String),
    id: u64,
    _ended: watch::Sender<()>,
}

impl InFlight {
    /// An acquisition of `key` for `owner` is about to be sent.
    pub(super) fn begin(&self, key: &str, owner: &str) -> Settling {
        let (ended, hears) = watch::channel(());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = (key.to_owned(), owner.to_owned());
        lock(&self.map).entry(entry.clone()).or_default().push((id, hears));
        Settling { map: Arc::downgrade(&self.map), entry, id, _ended: ended }
    }

    /// Wait, at most `bound`, until no acquisition of `key` for `owner` may still take effect.
    pub(super) async fn settled(&self, key: &str, owner: &str, bound: Duration) {
        let hears: Vec<watch::Receiver<()>> = {
            let map = lock(&self.map);
            // Nearly always empty: no allocation then.
            if map.is_empty() {
                return;
            }
            match map.get(&(key.to_owned(), owner.to_owned())) {
                Some(entries) => entries.iter().map(|(_, hears)| hears.clone()).collect(),
                None => return,
            }
        };
        // Each resolves (with an error) once its sender is dropped: that statement ended.
        let all = futures_util::future::join_all(hears.into_iter().map(|mut hears| async move {
            let _ = hears.changed().await;
        }));
        let _ = tokio::time::timeout(bound, all).await;
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(map) = self.map.upgrade() {
            let mut map = lock(&map);
            if let Some(entries) = map.get_mut(&self.entry) {
                entries.retain(|(id, _)| *id != self.id);
                if entries.is_empty() {
                    map.remove(&self.entry);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::InFlight;

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_its_own_acquisition_only() {
        let in_flight = InFlight::default();
        let settling = in_flight.begin("k", "o");
        // Another owner, or another key: nothing to wait for.
        let start = tokio::time::Instant::now();
        in_flight.settled("k", "other", Duration::from_secs(5)).await;
        in_flight.settled("other", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The same: until it has ended.
        let ended = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(settling);
        });
        in_flight.settled("k", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        ended.await.expect("task");
        // Bounded when it does not end.
        let _stuck = in_flight.begin("k", "o");
        in_flight.settled("k", "o", Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(2300));
        assert_eq!(super::lock(&in_flight.map).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_every_attempt_of_its_owner() {
        let in_flight = InFlight::default();
        // The first attempt timed out and is still on the wire; the retry is answered.
        let first = in_flight.begin("k", "o");
        drop(in_flight.begin("k", "o"));
        let start = tokio::time::Instant::now();
        let ended = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        in_flight.settled("k", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        ended.await.expect("task");
        assert!(super::lock(&in_flight.map).is_empty());
    }
}
