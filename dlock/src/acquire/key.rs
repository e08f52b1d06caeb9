//! Taking one key: the first attempt, and — only if it finds the key held — waiting for it,
//! as an explicit state machine.
//!
//! # How waiting works
//!
//! A request that finds the key held first registers for release notices
//! ([`LockBackend::watch_releases`]) and asks again at once, so that a release between the two
//! is not missed. From then on each round is: **judge** the last answer (acquired → done;
//! held → wait; a backend error → pause, or give up), **wait** for a release notice or a timer,
//! then **ask** again. The timer is what notices a crashed holder: its key is never released,
//! it expires, so a waiter never sleeps past the holder's remaining lease (nor, once it hears
//! notices, past [`WAITER_RECHECK`], which also keeps its place in a backend's waiting line).
//! A notice that hands the key to this request ([`ReleaseNotice::Granted`]) ends the wait
//! without asking, when it is fresh (see the [`LockBackend`] contract, point 6).
//!
//! The key is claimed before each attempt leaves: if the request is dropped while an attempt
//! is on the wire, or while it waits in a backend's waiting line, the claim releases (or
//! withdraws) whatever the backend may have given it.

use std::time::Duration;

use tokio::time::Instant;

use super::Ask;
use crate::backend::{
    BackendError, BackendErrorKind, FullKey, HANDOFF_LEASE, LockBackend, ReleaseNotice, ReleaseWatch,
    TryAcquire, WAITER_RECHECK,
};
use crate::claim::{Claim, ClaimedKey};
use crate::error::Error;
use crate::lease::Term;
use crate::time::jitter_up_to;

/// How long after a waiter's last attempt a backend may still hand it the key (the
/// [`LockBackend`] contract, point 6); a key this process may have been handed is released
/// until then, and its lease has ended by itself `ttl` later.
const HANDED_OVER_WITHIN: Duration = WAITER_RECHECK.saturating_mul(5);

/// A key given to a request: its fencing token and the term of its lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) fencing_token: u64,
    pub(crate) term: Term,
}

/// Compete in the backend for `key` until acquired or `ask.deadline`.
///
/// The first attempt is made here; only if it does not take the key does the request wait
/// (boxed, so that the future of every request does not carry the state of waiting).
pub(crate) async fn take(
    backend: &dyn LockBackend,
    key: &FullKey,
    claim: &mut Claim,
    ask: Ask,
) -> Result<Grant, Error> {
    let mut asker = Asker { backend, key, claim, claimed: false, ttl: ask.ttl };
    let answer = asker.ask().await;
    if let Ok(TryAcquire::Acquired { fencing_token }) = answer.outcome {
        return Ok(Grant { fencing_token, term: Term { sent: answer.sent, length: ask.ttl } });
    }
    Box::pin(Waiting::new(asker, ask).run(answer)).await
}

/// What an attempt said, and when it was sent.
struct Answer {
    sent: Instant,
    outcome: Result<TryAcquire, BackendError>,
}

/// Sends attempts for one key, claiming the key before each leaves.
struct Asker<'a> {
    backend: &'a dyn LockBackend,
    key: &'a FullKey,
    claim: &'a mut Claim,
    /// Whether the claim holds this key (its last entry).
    claimed: bool,
    ttl: Duration,
}

impl Asker<'_> {
    /// One acquire attempt, sent now.
    async fn ask(&mut self) -> Answer {
        let sent = Instant::now();
        // Until then the key may be handed over, and that lease ends by itself.
        let ends_by = sent + self.ttl + HANDED_OVER_WITHIN;
        match self.claim.keys.last_mut() {
            Some(last) if self.claimed => last.ends_by = ends_by,
            _ => {
                self.claim.keys.push(ClaimedKey { key: self.key.clone(), ends_by });
                self.claimed = true;
            }
        }
        Answer { sent, outcome: self.backend.try_acquire(self.key, &self.claim.owner, self.ttl).await }
    }

    /// The backend holds nothing of this request for the key: nothing to release.
    fn unclaim(&mut self) {
        if self.claimed {
            self.claim.keys.pop();
            self.claimed = false;
        }
    }
}

/// Whether this request hears release notices for the key.
enum Notices {
    /// Not registered yet: the first answer that finds the key held registers.
    NotRequested,
    Heard(ReleaseWatch),
    /// The backend has none, or could not give them in time: timers only.
    Unavailable,
}

/// What to do next.
enum Step {
    /// Ask again now.
    Ask,
    /// After a backend error: ask again at `until`.
    Pause {
        until: Instant,
    },
    /// The key is held: wait for a notice until `until`, then ask again. The attempt that
    /// found it held was sent at `sent` and saw `newest_token` (for judging hand-offs).
    Wait {
        until: Instant,
        sent: Instant,
        newest_token: Option<u64>,
    },
    Done(Result<Grant, Error>),
}

/// Waiting for one key.
struct Waiting<'a> {
    asker: Asker<'a>,
    ask: Ask,
    notices: Notices,
    /// Whether an attempt put this request in the backend's waiting line (contract, point 6):
    /// from then on the key may be handed to it at any time, so the claim stays while it waits
    /// and releasing it (the request dropped or given up) takes the request out of line.
    in_line: bool,
    /// The timer's step while there are no notices: doubles up to 100 ms.
    poll: Duration,
    /// The pause after a backend error: doubles up to [`WAITER_RECHECK`].
    error_pause: Duration,
}

impl<'a> Waiting<'a> {
    fn new(asker: Asker<'a>, ask: Ask) -> Self {
        Self {
            asker,
            ask,
            notices: Notices::NotRequested,
            in_line: false,
            poll: Duration::from_millis(2),
            error_pause: FIRST_ERROR_PAUSE,
        }
    }

    async fn run(mut self, mut answer: Answer) -> Result<Grant, Error> {
        loop {
            match self.judge(answer).await {
                Step::Done(result) => return result,
                Step::Ask => {}
                Step::Pause { until } => tokio::time::sleep_until(until).await,
                Step::Wait { until, sent, newest_token } => {
                    if let Some(grant) = self.wait(until, sent, newest_token).await {
                        return Ok(grant);
                    }
                }
            }
            answer = self.asker.ask().await;
        }
    }

    /// What the last answer means for this request.
    async fn judge(&mut self, answer: Answer) -> Step {
        let Answer { sent, outcome } = answer;
        match outcome {
            Ok(TryAcquire::Acquired { fencing_token }) => {
                Step::Done(Ok(Grant { fencing_token, term: Term { sent, length: self.ask.ttl } }))
            }
            Ok(TryAcquire::Held { remaining, newest_token }) => {
                self.in_line |= newest_token.is_some();
                if !self.in_line {
                    self.asker.unclaim();
                }
                self.error_pause = FIRST_ERROR_PAUSE;
                let now = Instant::now();
                if now >= self.ask.deadline {
                    return Step::Done(Err(self.timeout(now)));
                }
                if matches!(self.notices, Notices::NotRequested) {
                    self.notices = self.register().await;
                    if matches!(self.notices, Notices::Heard(_)) {
                        // Ask again at once: a release between the attempt and the
                        // registration is then not missed.
                        return Step::Ask;
                    }
                }
                Step::Wait { until: self.nap_end(now, remaining), sent, newest_token }
            }
            // The claim keeps the key: the script may have run even though its answer was
            // lost, and the owner-checked release touches nothing else (and the next attempt,
            // by the same owner, finds the key its own).
            Err(err) => {
                let transient = matches!(
                    err.kind(),
                    BackendErrorKind::Connection | BackendErrorKind::Timeout | BackendErrorKind::Unavailable
                );
                let waiting = !matches!(self.notices, Notices::NotRequested);
                // The attempt may have joined the line before its answer was lost: keep the
                // claim, so that giving up withdraws it.
                self.in_line |= waiting;
                let backend = self.asker.backend.name();
                let err = Error::backend(backend, Some(self.asker.key), err);
                // A request that already found the key held and waits rides out a backend
                // that stops answering for a moment (a restart, a failover) within its wait;
                // a first attempt reports the error at once.
                let now = Instant::now();
                if !waiting || !transient || now >= self.ask.deadline {
                    return Step::Done(Err(err));
                }
                tracing::debug!(target: "dlock", key = %self.asker.key, error = %err, "backend error while waiting; trying again");
                let until = (now + self.error_pause).min(self.ask.deadline);
                self.error_pause = (self.error_pause * 2).min(WAITER_RECHECK);
                Step::Pause { until }
            }
        }
    }

    /// Register for release notices. They are only a speed-up: a backend that cannot give
    /// them (or not before the deadline) leaves this request on its timer.
    async fn register(&self) -> Notices {
        let key = self.asker.key;
        match tokio::time::timeout_at(self.ask.deadline, self.asker.backend.watch_releases(key)).await {
            Ok(Ok(Some(watch))) => Notices::Heard(watch),
            Ok(Ok(None)) | Err(_) => Notices::Unavailable,
            Ok(Err(err)) => {
                tracing::debug!(target: "dlock", key = %key, error = %err, "no release notices; polling");
                Notices::Unavailable
            }
        }
    }

    /// When to ask again if no notice comes. A crashed holder releases nothing, its key just
    /// expires: a waiter never sleeps past the holder's remaining lease. A little jitter
    /// spreads waiters of several processes, but never by much. A waiter that hears notices
    /// still asks every [`WAITER_RECHECK`], which keeps its place in a backend's waiting line
    /// and covers a hand-off notice it missed.
    fn nap_end(&mut self, now: Instant, remaining: Option<Duration>) -> Instant {
        let holder_left = remaining.unwrap_or(self.poll) + Duration::from_millis(1);
        let nap = match &self.notices {
            Notices::Heard(watch) if watch.hears() => {
                holder_left.min(WAITER_RECHECK)
                    + jitter_up_to((holder_left / 20).min(Duration::from_millis(20)))
            }
            // Including a watch that does not hear now (its subscription is down or refused):
            // a release would go unannounced.
            Notices::Heard(_) | Notices::NotRequested | Notices::Unavailable => {
                holder_left.min(self.poll + jitter_up_to(self.poll / 2))
            }
        };
        self.poll = (self.poll * 2).min(Duration::from_millis(100));
        (now + nap).min(self.ask.deadline)
    }

    /// Wait for a notice until `until`. Returns the key if a fresh hand-off gave it to this
    /// request; `None` when it is time to ask again.
    async fn wait(&mut self, until: Instant, sent: Instant, newest_token: Option<u64>) -> Option<Grant> {
        let Notices::Heard(watch) = &mut self.notices else {
            tokio::time::sleep_until(until).await;
            return None;
        };
        loop {
            match tokio::time::timeout_at(until, watch.released()).await {
                Ok(ReleaseNotice::Granted { owner, fencing_token }) if owner == self.asker.claim.owner => {
                    // Handed to this request after its last attempt (a newer token than that
                    // attempt saw): the lease, of at most `HANDOFF_LEASE`, began after `sent`
                    // reached the backend. A hand-off from before that attempt is stale (the
                    // attempt found the key held by another), and one with little of its lease
                    // known to be left is better renewed; a request that is not renewed needs its
                    // whole ttl, which a hand-off may not give. Asking again settles all three:
                    // the key is found this owner's and given a full ttl, with a new token.
                    let fresh = newest_token.is_some_and(|newest| fencing_token > newest);
                    let length = self.ask.ttl.min(HANDOFF_LEASE);
                    let usable = self.ask.auto_renew || length == self.ask.ttl;
                    if fresh && usable && Instant::now() < sent + length / 2 {
                        return Some(Grant { fencing_token, term: Term { sent, length } });
                    }
                    return None;
                }
                // Handed to a waiter elsewhere: nothing to try until it is released again.
                Ok(ReleaseNotice::Granted { .. }) => {}
                Ok(ReleaseNotice::Released) | Err(_) => return None,
            }
        }
    }

    fn timeout(&self, now: Instant) -> Error {
        Error::Timeout { key: self.asker.key.to_string(), waited: now - self.ask.started }
    }
}

/// The first pause after a backend error while waiting.
const FIRST_ERROR_PAUSE: Duration = Duration::from_millis(50);
