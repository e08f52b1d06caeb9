//! Acquisitions whose statement may still take effect on the server, and the release of their
//! owner sent behind each one on its own connection, so that it cannot be overtaken.
//!
//! A caller that gives up on an acquisition (a timeout, a dropped request) leaves its statement
//! on the wire. dlock cancels it, but a cancel reaches the server on a connection of its own: it
//! may come before the statement starts (and is then ignored) or not at all. The request's claim
//! meanwhile releases the key, on another pooled connection, with nothing ordering the two
//! statements. A release that ran first would find nothing to free, and the acquisition,
//! committing after it, would leave the key held by an owner that gave up, for its whole ttl —
//! also when its bytes were only held up on the way (a retransmission, a buffering middlebox)
//! and arrive after the client closed the connection: the server runs what it received before
//! the close.
//!
//! So the pool reports when an abandoned statement has ended (a round trip sent after it on
//! its connection came back), and a release waits for that, for at most one call timeout,
//! before it runs on a pooled connection. One that has not ended by then keeps its connection
//! out of the pool, and its owner's release is also sent there, behind it: a connection runs
//! its statements in order, so that release runs after the acquisition, whenever that runs.
//! The connection is kept until that release is answered, and for at most the acquisition's
//! ttl and two call timeouts after it was given up (see [`Settling::release_behind`]).
//!
//! A connection is driven by a task on the runtime that made it (see `pool.rs`): when that
//! runtime ends (a current-thread runtime leaving `block_on`), the connection closes, and
//! nothing more can be sent behind the acquisition there, while its bytes may still be on their
//! way (a socket closed by its client still delivers what it was sent) or its statement still
//! running (the server does not notice a client gone while it runs one). The release is then
//! sent again on connections of its own, at doubling intervals, until a late acquisition would
//! have run out anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

/// One acquisition under way: its id and its [`State`], sent to its [`Settling`] and to the
/// releases that wait for it.
struct Attempt {
    id: u64,
    state: watch::Sender<State>,
}

/// Where an acquisition under way stands.
#[derive(Clone, Copy, Default)]
struct State {
    /// A release of its owner asked to go behind it.
    release_wanted: bool,
    /// Its connection is kept for that: a release no longer waits for it.
    kept: bool,
}

/// The acquisitions under way, by (key, owner). One (key, owner) may have several: a request
/// whose attempt timed out asks again with the same owner while the first may still be on the
/// wire.
type Entries = HashMap<(String, String), Vec<Attempt>>;

struct Shared {
    entries: Mutex<Entries>,
    behind: Arc<Behind>,
}

/// What sending a release behind an abandoned acquisition takes; also once the backend is gone
/// (a release that asked before may still have to go).
pub(super) struct Behind {
    /// The release statement (`$1` key, `$2` owner).
    release: String,
    call_timeout: Duration,
    /// For a connection of its own, when the one behind the acquisition closed first.
    config: tokio_postgres::Config,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Every update is one insert, flag or remove: a poisoned map is consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acquisitions of one backend whose statements have not ended.
pub(super) struct InFlight {
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

/// One acquisition's statement, until it has ended on the server (or its connection is given
/// up): dropped then.
pub(super) struct Settling {
    shared: Weak<Shared>,
    entry: (String, String),
    id: u64,
    ttl: Duration,
    /// Says when a release of this owner asks to be sent behind the statement; closed when
    /// the backend is gone.
    state: watch::Receiver<State>,
}

impl InFlight {
    /// `release` is the release statement; abandoned acquisitions' connections are kept for
    /// their ttl and two `call_timeout`s; `config` makes a connection when one closed first.
    pub(super) fn new(release: String, call_timeout: Duration, config: tokio_postgres::Config) -> Self {
        let behind = Arc::new(Behind { release, call_timeout, config });
        let shared = Shared { entries: Mutex::default(), behind };
        Self { shared: Arc::new(shared), next_id: AtomicU64::new(0) }
    }

    /// An acquisition of `key` for `owner` with a lease of `ttl` is about to be sent.
    pub(super) fn begin(&self, key: &str, owner: &str, ttl: Duration) -> Settling {
        let (state, hears) = watch::channel(State::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = (key.to_owned(), owner.to_owned());
        self.shared.entries().entry(entry.clone()).or_default().push(Attempt { id, state });
        Settling { shared: Arc::downgrade(&self.shared), entry, id, ttl, state: hears }
    }

    /// A release of `key` by `owner` is about to run: ask every acquisition of theirs still
    /// under way to have it sent behind itself too (see [`Settling::release_behind`]), and
    /// wait, at most `bound`, until each of those has ended or had its connection kept for
    /// that.
    pub(super) async fn before_release(&self, key: &str, owner: &str, bound: Duration) {
        let ends: Vec<watch::Receiver<State>> = {
            let mut entries = self.shared.entries();
            // Nearly always empty: no allocation then.
            if entries.is_empty() {
                return;
            }
            let Some(attempts) = entries.get_mut(&(key.to_owned(), owner.to_owned())) else { return };
            attempts
                .iter()
                .filter_map(|attempt| {
                    attempt.state.send_modify(|state| state.release_wanted = true);
                    (!attempt.state.borrow().kept).then(|| attempt.state.subscribe())
                })
                .collect()
        };
        // Each ends once its connection is kept, or (with an error) once its sender is
        // dropped: that statement has ended.
        let all = futures_util::future::join_all(ends.into_iter().map(|mut ends| async move {
            let _ = ends.wait_for(|state| state.kept).await;
        }));
        let _ = tokio::time::timeout(bound, all).await;
    }
}

impl Settling {
    /// The statement was given up on at `abandoned`, and has not ended within a round trip
    /// sent after it (held up on its way, or stuck; or its connection closed first): keep
    /// `client`, the connection it went on, until a release of this owner's asks, then send
    /// that release on it, behind the statement, and wait for its answer. Kept until the
    /// acquisition's ttl and two call timeouts have passed since `abandoned` (a statement that
    /// turns up later still is not worth a connection), and for at least a call timeout after
    /// the release was sent.
    ///
    /// `behind` is taken with [`behind`](Self::behind) while the backend lives: this goes on
    /// after it is dropped, for a release that asked before.
    ///
    /// Call it once the statement's cancel request has been answered (see `pool.rs`): the
    /// server ignores a cancel that reaches a session waiting for its next statement. A cancel
    /// that still arrives while this release runs (its answer did not come within its bound, or
    /// the configuration names several servers and tokio-postgres's own cancel, which does not
    /// wait for one, was used) cancels the release, which is then sent again on the same
    /// connection (a cancel stops one statement at most). If the
    /// connection closes without an answer, the release is sent again on connections of its own
    /// (see [`release_again`]).
    pub(super) async fn release_behind(
        &mut self,
        client: &tokio_postgres::Client,
        abandoned: Instant,
        behind: Arc<Behind>,
    ) {
        self.keep();
        let call_timeout = behind.call_timeout;
        let until = later(abandoned, self.ttl.saturating_add(call_timeout.saturating_mul(2)));
        if !self.release_wanted_by(until).await {
            return;
        }
        let (key, owner) = (self.entry.0.as_str(), self.entry.1.as_str());
        let bound = until.max(later(Instant::now(), call_timeout));
        let released = loop {
            let released = tokio::time::timeout_at(
                bound,
                client.query_typed(&behind.release, &[(&key, Type::TEXT), (&owner, Type::TEXT)]),
            )
            .await;
            match released {
                Ok(Err(err)) if err.code() == Some(&SqlState::QUERY_CANCELED) => {
                    tracing::debug!(target: "dlock", key, error = %err, "a release behind an abandoned acquisition was cancelled; sending it again");
                }
                released => break released,
            }
        };
        let answer = match &released {
            Ok(Ok(rows)) => format!("released: {}", !rows.is_empty()),
            Ok(Err(err)) => format!("failed: {err}"),
            Err(_) => "no answer in time".to_owned(),
        };
        tracing::debug!(target: "dlock", key, answer = %answer, "released behind an abandoned acquisition");
        // No answer from the server: the connection closed (its runtime ended, or it broke).
        if matches!(&released, Ok(Err(err)) if err.code().is_none()) {
            release_again(&behind, key, owner, until).await;
        }
    }

    /// What sending a release behind the statement takes; `None` once the backend is gone.
    pub(super) fn behind(&self) -> Option<Arc<Behind>> {
        self.shared.upgrade().map(|shared| Arc::clone(&shared.behind))
    }

    /// Its connection is kept for a release behind it: releases no longer wait for it.
    fn keep(&self) {
        let Some(shared) = self.shared.upgrade() else { return };
        if let Some(attempt) = shared
            .entries()
            .get_mut(&self.entry)
            .and_then(|attempts| attempts.iter_mut().find(|attempt| attempt.id == self.id))
        {
            attempt.state.send_modify(|state| state.kept = true);
        }
    }

    /// Whether a release of this owner's asks (or has asked, also before the backend was
    /// dropped) to go behind the statement by `until`.
    async fn release_wanted_by(&mut self, until: Instant) -> bool {
        // The borrow `wait_for` returns is let go of at once (it holds the channel's lock).
        tokio::time::timeout_at(until, self.state.wait_for(|state| state.release_wanted))
            .await
            .is_ok_and(|wanted| wanted.is_ok())
    }
}

/// Send the release of `key` by `owner` on connections of its own, the acquisition's having
/// closed before it could go behind it there: a call timeout from now and again at doubling
/// intervals, the last at `until`, when a late run of the acquisition would have run out anyway.
/// A late acquisition is thus released about as late again as it ran. Only this owner's lock is
/// touched, and an owner does not take a lock again after its release.
async fn release_again(behind: &Behind, key: &str, owner: &str, until: Instant) {
    let call_timeout = behind.call_timeout;
    let start = Instant::now();
    let mut at = later(start, call_timeout).min(until);
    loop {
        tokio::time::sleep_until(at).await;
        let released = tokio::time::timeout(call_timeout, async {
            let (client, connection) = behind.config.connect(tokio_postgres::NoTls).await?;
            // Ends once `client` is dropped.
            let driver = tokio::spawn(connection);
            let rows = client.query_typed(&behind.release, &[(&key, Type::TEXT), (&owner, Type::TEXT)]).await;
            drop(client);
            let _ = driver.await;
            rows
        })
        .await;
        let answer = match &released {
            Ok(Ok(rows)) => format!("released: {}", !rows.is_empty()),
            Ok(Err(err)) => format!("failed: {err}"),
            Err(_) => "no answer in time".to_owned(),
        };
        tracing::debug!(target: "dlock", key, answer = %answer, "released again: an abandoned acquisition's connection closed first");
        if at >= until {
            return;
        }
        at = later(at, (at - start).max(call_timeout)).min(until);
    }
}

/// `by` after `at`, for deadlines made of the call timeout, which may be enormous
/// (`Duration::MAX`: no bound).
fn later(at: Instant, by: Duration) -> Instant {
    /// Past any lease (a year at most) and any process.
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(by.min(FAR)).unwrap_or(at)
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut entries = shared.entries();
            if let Some(attempts) = entries.get_mut(&self.entry) {
                attempts.retain(|attempt| attempt.id != self.id);
                if attempts.is_empty() {
                    entries.remove(&self.entry);
                }
            }
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("keys", &self.shared.entries().len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settling").field("key", &self.entry.0).field("id", &self.id).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::InFlight;

    const TTL: Duration = Duration::from_secs(30);

    fn in_flight() -> InFlight {
        InFlight::new("the release statement".into(), Duration::from_secs(2), tokio_postgres::Config::new())
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_its_own_acquisition_only() {
        let in_flight = in_flight();
        let settling = in_flight.begin("k", "o", TTL);
        // Another owner, or another key: nothing to wait for.
        let start = Instant::now();
        in_flight.before_release("k", "other", Duration::from_secs(5)).await;
        in_flight.before_release("other", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The same: until it has ended.
        let ended = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(settling);
        });
        in_flight.before_release("k", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        ended.await.expect("task");
        // Bounded when it does not end.
        let _stuck = in_flight.begin("k", "o", TTL);
        in_flight.before_release("k", "o", Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(2300));
        assert_eq!(in_flight.shared.entries().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_every_attempt_of_its_owner() {
        let in_flight = in_flight();
        // The first attempt timed out and is still on the wire; the retry is answered.
        let first = in_flight.begin("k", "o", TTL);
        drop(in_flight.begin("k", "o", TTL));
        let start = Instant::now();
        let ended = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        in_flight.before_release("k", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        ended.await.expect("task");
        assert!(in_flight.shared.entries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_acquisition_hears_its_owners_release_whenever_it_came() {
        let in_flight = in_flight();
        let start = Instant::now();
        let until = start + Duration::from_secs(10);
        // A release that came while the statement was still settling: heard later.
        let mut early = in_flight.begin("k", "o", TTL);
        let _other_owner = in_flight.begin("k", "p", TTL);
        in_flight.before_release("k", "o", Duration::from_millis(100)).await;
        early.keep();
        assert!(early.release_wanted_by(until).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // One whose connection is kept is not waited for, and hears the release that comes.
        let mut kept = in_flight.begin("k", "q", TTL);
        assert!(kept.behind().is_some_and(|behind| behind.call_timeout == Duration::from_secs(2)));
        kept.keep();
        let hears = tokio::spawn(async move { (kept.release_wanted_by(until).await, Instant::now()) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        in_flight.before_release("k", "q", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300), "a kept acquisition is not waited for");
        assert_eq!(hears.await.expect("task"), (true, start + Duration::from_millis(300)));
        // No release by `until`: not wanted.
        let mut unreleased = in_flight.begin("k", "r", TTL);
        assert!(!unreleased.release_wanted_by(until).await);
        assert_eq!(Instant::now(), until);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_made_of_an_enormous_call_timeout_are_far_off() {
        let now = Instant::now();
        assert!(super::later(now, Duration::MAX) > now + Duration::from_secs(29 * 365 * 24 * 3600));
        assert_eq!(super::later(now, Duration::from_secs(2)), now + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_stops_waiting_for_an_acquisition_once_its_connection_is_kept() {
        let in_flight = in_flight();
        let settling = in_flight.begin("k", "o", TTL);
        let start = Instant::now();
        let kept = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            settling.keep();
            settling
        });
        in_flight.before_release("k", "o", Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300), "the release goes behind it instead");
        let mut settling = kept.await.expect("task");
        assert!(settling.release_wanted_by(start + Duration::from_secs(10)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_asked_before_the_backend_was_dropped_is_still_heard() {
        let in_flight = in_flight();
        let mut asked = in_flight.begin("k", "o", TTL);
        let mut not_asked = in_flight.begin("k", "p", TTL);
        let behind = asked.behind().expect("the backend lives");
        asked.keep();
        in_flight.before_release("k", "o", Duration::from_secs(1)).await;
        drop(in_flight);
        assert!(asked.behind().is_none(), "the backend is gone");
        let until = Instant::now() + Duration::from_secs(10);
        assert!(asked.release_wanted_by(until).await);
        // No release can ask any more: not wanted, at once.
        let start = Instant::now();
        assert!(!not_asked.release_wanted_by(until).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(behind.release, "the release statement");
    }
}
