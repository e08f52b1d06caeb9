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

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::connection::{Conn, SentOn};

type Entries = HashMap<(String, String), Vec<(Conn, Instant)>>;

/// The unanswered acquisitions of one backend, by (lock, owner): the connections they were
/// sent on, each kept until a release of that owner takes it, or until a given time.
#[derive(Default)]
pub(super) struct Unanswered {
    entries: Mutex<Entries>,
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

impl Unanswered {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Every update is one insert or remove: a poisoned map is consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An acquisition of `key` for `owner` about to be sent; if its answer never comes, its
    /// connection is kept for `keep`.
    pub(super) fn attempt<'a>(&'a self, key: &'a str, owner: &'a str, keep: Duration) -> Attempt<'a> {
        Attempt { unanswered: self, key, owner, keep, sent_on: SentOn::default(), answered: false }
    }

    /// The connections that unanswered acquisitions of `key` for `owner` were sent on (each
    /// given out once), each with how long it is still to be kept.
    pub(super) fn take(&self, key: &str, owner: &str) -> Vec<(Conn, Instant)> {
        let mut entries = self.entries();
        if entries.is_empty() {
            return Vec::new();
        }
        prune(&mut entries);
        entries.remove(&(key.to_owned(), owner.to_owned())).unwrap_or_default()
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
        let Some(conn) = self.sent_on.take() else { return };
        let until = Instant::now() + self.keep;
        let mut entries = self.unanswered.entries();
        prune(&mut entries);
        entries.entry((self.key.to_owned(), self.owner.to_owned())).or_default().push((conn, until));
    }
}

/// Forget connections kept long enough.
fn prune(entries: &mut Entries) {
    let now = Instant::now();
    entries.retain(|_, sent| {
        sent.retain(|(_, until)| *until > now);
        !sent.is_empty()
    });
}
