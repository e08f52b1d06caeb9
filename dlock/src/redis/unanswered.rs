//! Acquisitions whose answer never came (the call timed out, or its caller dropped it), each
//! with the connection it was sent on: a release of the same lock by the same owner is also
//! sent behind it there, so that the acquisition cannot run after the release.
//!
//! Redis runs the commands of one connection in order, but nothing orders two connections. A
//! connection that missed its call timeout is replaced (see [`connection`](super::connection)),
//! so the release that a request's claim sends for an acquisition it gave up goes on a new one.
//! If the acquisition was only held up on its way (a retransmission, a middlebox that buffers),
//! that release may run first and find nothing, and the acquisition, running after it, would
//! leave the key held by an owner that gave up, for its whole ttl. The same release sent behind
//! the acquisition on its own connection runs after it, whenever it runs.
//!
//! On Redis Cluster the kept connection is a cluster connection: one stream per node, of which
//! it replaces a node's when it breaks or when a slot refresh finds it silent. The release sent
//! there goes on the node's stream the acquisition went on only if that was not replaced in
//! between, and an answer does not tell which: so there it is also sent again later, as for a
//! connection that closed (below), and a late acquisition keeps the key until the next of
//! those releases rather than not at all.
//!
//! A connection dies with the runtime that made it (its driver task runs there): an
//! acquisition that timed out on a current-thread runtime which then ended (a
//! `#[tokio::test]`, a CLI that leaves `block_on`) leaves nowhere to send that release, while
//! the closed socket may still deliver the acquisition. Its release is then sent again, on a
//! current connection, once those bytes can no longer arrive, and again until a late run would
//! have ended anyway (see `Engine::release_behind`).
//!
//! Each connection is kept once, however many acquisitions went unanswered on it, and let go
//! (closing its socket, once nothing else uses it) as soon as a late run of its acquisitions
//! no longer matters: a task on dlock's runtime watches the times while anything is kept.
//!
//! Those times are the system's clock (`std::time::Instant`), not the caller's tokio clock:
//! they are about the network and Redis's ttls, which a test's paused and advanced clock does
//! not move, and they are read on several runtimes (the caller's, the releasing one's,
//! dlock's), each of which may have a clock of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::connection::{Conn, SentOn};
use crate::background;

/// The unanswered acquisitions of one backend, by (lock, owner), and the connections they were
/// sent on: one clone of each connection however many acquisitions went unanswered on it,
/// kept while some owner's entry names it — until that owner's release has taken it, or until
/// a late run of that owner's acquisition no longer matters. A task on dlock's runtime forgets
/// what runs out as soon as it does (a kept connection keeps its socket open), while anything
/// is kept.
#[derive(Default)]
pub(super) struct Unanswered {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Default)]
struct Entries {
    by_owner: HashMap<(String, String), Vec<Noted>>,
    /// By connection number: the connection, while some list in `by_owner` names it.
    conns: HashMap<u64, Conn>,
    /// While a task forgets entries as they run out: when it looks next.
    sweep_at: Option<Instant>,
    /// Wakes that task, to look earlier.
    sweep_sooner: Arc<Notify>,
}

/// One connection an owner's acquisition of a lock went unanswered on.
#[derive(Clone, Copy)]
struct Noted {
    conn: u64,
    /// When the last of them was given up: it was sent before.
    noted: Instant,
    until: Instant,
}

/// A connection that an acquisition went unanswered on, as [`Unanswered::take`] gives it out.
pub(super) struct Kept {
    pub(super) conn: Conn,
    /// When the acquisition was given up (the latest, if several went on this connection): it
    /// was sent before that. On the system's clock.
    pub(super) noted: Instant,
    /// Until when a late run of it matters. On the system's clock.
    pub(super) until: Instant,
}

/// One acquisition: noted in its [`Unanswered`] when dropped without [`answered`](Self::answered).
pub(super) struct Attempt<'a> {
    unanswered: &'a Unanswered,
    key: &'a str,
    owner: &'a str,
    keep: Duration,
    /// Where it is sent.
    pub(super) sent_on: SentOn,
    answered: bool,
}

/// `now + d`, or about 30 years on when that would overflow (a call timeout or a ttl meant as
/// "no bound").
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

impl Unanswered {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        lock(&self.entries)
    }

    /// An acquisition of `key` for `owner` about to be sent; if its answer never comes, its
    /// connection is kept for `keep`.
    pub(super) fn attempt<'a>(&'a self, key: &'a str, owner: &'a str, keep: Duration) -> Attempt<'a> {
        Attempt { unanswered: self, key, owner, keep, sent_on: SentOn::default(), answered: false }
    }

    /// The connections that unanswered acquisitions of `key` for `owner` were sent on (each
    /// given out once); a connection no other owner's entry names is let go here.
    pub(super) fn take(&self, key: &str, owner: &str) -> Vec<Kept> {
        let mut entries = self.entries();
        if entries.by_owner.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let noted = entries.by_owner.remove(&(key.to_owned(), owner.to_owned()));
        let kept = noted
            .into_iter()
            .flatten()
            .filter(|noted| noted.until > now)
            .filter_map(|Noted { conn, noted, until }| {
                Some(Kept { conn: entries.conns.get(&conn)?.clone(), noted, until })
            })
            .collect();
        entries.prune(now);
        kept
    }

    /// How many connections are kept.
    pub(super) fn kept_connections(&self) -> usize {
        self.entries().conns.len()
    }
}

impl Entries {
    /// Forget what is kept long enough, and the connections no entry names any more (a
    /// connection's time is that of the entries that name it: once the owner with the latest
    /// one has released, it is kept only as long as the others need it).
    fn prune(&mut self, now: Instant) {
        self.by_owner.retain(|_, noted| {
            noted.retain(|noted| noted.until > now);
            !noted.is_empty()
        });
        let named: HashSet<u64> = self.by_owner.values().flatten().map(|noted| noted.conn).collect();
        self.conns.retain(|conn, _| named.contains(conn));
    }

    /// When the next entry runs out.
    fn next_end(&self) -> Option<Instant> {
        self.by_owner.values().flatten().map(|noted| noted.until).min()
    }
}

impl Attempt<'_> {
    /// Its answer came: the script has run, or never will.
    pub(super) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let Some((conn, number)) = self.sent_on.take() else { return };
        let now = Instant::now();
        // A call timeout or a ttl meant as "no bound" keeps it for about 30 years.
        let until = later(now, self.keep);
        let mut entries = self.unanswered.entries();
        entries.prune(now);
        let noted = entries.by_owner.entry((self.key.to_owned(), self.owner.to_owned())).or_default();
        match noted.iter_mut().find(|noted| noted.conn == number) {
            Some(same) => {
                same.noted = now;
                same.until = same.until.max(until);
            }
            None => noted.push(Noted { conn: number, noted: now, until }),
        }
        entries.conns.entry(number).or_insert(conn);
        match entries.sweep_at {
            None => {
                entries.sweep_at = Some(until);
                drop(entries);
                background::spawn_here(sweep(Arc::downgrade(&self.unanswered.entries)));
            }
            Some(at) if until < at => entries.sweep_sooner.notify_one(),
            Some(_) => {}
        }
    }
}

/// Forget entries as they run out, until none is left (or the backend is gone). Dropped before
/// that (its runtime ended: dlock's runtime could not be started), it says so, and the next
/// unanswered acquisition starts another.
fn sweep(entries: Weak<Mutex<Entries>>) -> impl std::future::Future<Output = ()> + Send + 'static {
    // Made before the task exists: a task dropped before it ever ran drops it too.
    let sweeper = Sweeper { entries, ended: false };
    async move {
        loop {
            let (next, sooner) = {
                let Some(entries) = sweeper.entries.upgrade() else { break };
                let mut entries = lock(&entries);
                entries.prune(Instant::now());
                entries.sweep_at = entries.next_end();
                match entries.sweep_at {
                    Some(next) => (next, Arc::clone(&entries.sweep_sooner)),
                    None => break,
                }
            };
            // The system's clock, as a delay on the runtime this runs on.
            let sleep = tokio::time::sleep(next.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = sleep => {}
                () = sooner.notified() => {}
            }
        }
        sweeper.end();
    }
}

/// The running sweeper of some entries: dropped before its end, it marks none as running.
struct Sweeper {
    entries: Weak<Mutex<Entries>>,
    ended: bool,
}

impl Sweeper {
    /// It ran to its end: it has marked none as running itself.
    fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(entries) = self.entries.upgrade() {
            lock(&entries).sweep_at = None;
        }
    }
}

fn lock(entries: &Mutex<Entries>) -> MutexGuard<'_, Entries> {
    // Every update leaves the maps consistent before anything can panic: a poisoned map is
    // consistent.
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweeper that never runs to its end — dropped before it ran, as a runtime that ends
    /// drops its tasks (it runs on the caller's runtime when dlock's could not be started) —
    /// leaves no sweeper marked as running: the next unanswered acquisition starts another.
    #[test]
    fn a_sweeper_dropped_before_its_end_lets_the_next_acquisition_start_another() {
        let unanswered = Unanswered::default();
        // What the first unanswered acquisition does before it spawns the sweeper.
        lock(&unanswered.entries).sweep_at = Some(Instant::now() + Duration::from_secs(1));
        drop(sweep(Arc::downgrade(&unanswered.entries)));
        assert!(
            lock(&unanswered.entries).sweep_at.is_none(),
            "a dropped sweeper is still counted as running"
        );
    }
}
