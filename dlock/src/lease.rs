//! The life of a lease after acquisition: renewal every ttl/3, and loss detection.
//!
//! One task per guard keeps the lease. Before the guard releases, it marks the lease released
//! (waiting for a renewal already on the wire, if any, to finish) and aborts the task, so no
//! renewal is ever sent after a release, and the task never outlives its guard.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::error::LostReason;
use crate::service::QueueTicket;

/// How much earlier than the backend's own expiry dlock considers a lease over.
///
/// The deadline is measured from the moment the acquire (or renew) request was *sent*, so
/// network time only shortens it. The margin covers clocks that advance at slightly different
/// rates on the client and the backend (1 % of the ttl, as the Redlock analysis suggests) plus
/// 2 ms for scheduling: the body is dropped at `sent + ttl - margin`, before the backend can
/// let anybody else in.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// Shared state of one held lease (one or several keys).
#[derive(Debug)]
pub(crate) struct Lease {
    lost: watch::Sender<Option<LostReason>>,
    /// `(released, renewal in flight)`: the hand-shake between the keeper and the release.
    renewal: Mutex<(bool, bool)>,
    renewal_done: Notify,
    /// This process's places at the head of the keys' local queues: given up on release, and
    /// as soon as the lease is lost (the backend may already let another owner in).
    tickets: Mutex<Vec<QueueTicket>>,
}

impl Lease {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            lost: watch::channel(None).0,
            renewal: Mutex::new((false, false)),
            renewal_done: Notify::new(),
            tickets: Mutex::default(),
        })
    }

    pub(crate) fn hold_tickets(&self, tickets: Vec<QueueTicket>) {
        *self.tickets.lock().unwrap_or_else(PoisonError::into_inner) = tickets;
    }

    /// Let the next task of this process compete for the keys.
    pub(crate) fn drop_tickets(&self) {
        let tickets = std::mem::take(&mut *self.tickets.lock().unwrap_or_else(PoisonError::into_inner));
        drop(tickets);
    }

    /// Stop renewals for good; returns once no renewal is on the wire.
    pub(crate) async fn stop_renewals(&self) {
        loop {
            let done = self.renewal_done.notified();
            {
                let mut state = self.renewal.lock().unwrap_or_else(PoisonError::into_inner);
                state.0 = true;
                if !state.1 {
                    return;
                }
            }
            done.await;
        }
    }

    /// Called by the keeper before sending a renewal: `None` once the lease is released. The
    /// renewal counts as on the wire until the returned value is dropped (also when the keeper
    /// is cancelled mid-call).
    fn begin_renewal(&self) -> Option<InFlight<'_>> {
        let mut state = self.renewal.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 {
            return None;
        }
        state.1 = true;
        Some(InFlight(self))
    }

    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        *self.lost.borrow()
    }

    pub(crate) fn mark_lost(&self, reason: LostReason) {
        self.lost.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
        self.drop_tickets();
    }

    /// Resolves when the lease is lost; never, if it is not.
    pub(crate) async fn lost(&self) -> LostReason {
        let mut rx = self.lost.subscribe();
        // The sender lives in `self`, so it cannot be dropped while we borrow it: `Err` and
        // `None` cannot happen.
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| *r);
        reason.unwrap_or(LostReason::Refused)
    }
}

/// A renewal on the wire; see [`Lease::begin_renewal`].
struct InFlight<'a>(&'a Lease);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.renewal.lock().unwrap_or_else(PoisonError::into_inner).1 = false;
        self.0.renewal_done.notify_waiters();
    }
}

/// What the keeper task needs to keep one lease.
pub(crate) struct Keeper {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) keys: Vec<String>,
    pub(crate) owner: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) renew: bool,
    /// When the acquire request that won the lease was sent.
    pub(crate) sent_at: Instant,
    pub(crate) lease: Arc<Lease>,
}

impl Keeper {
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(self) {
        let margin = safety_margin(self.ttl);
        let mut deadline = self.sent_at + self.ttl.saturating_sub(margin);
        if !self.renew {
            tokio::time::sleep_until(deadline).await;
            self.lost(LostReason::Expired);
            return;
        }
        let every = self.ttl / 3;
        let mut next = self.sent_at + every;
        loop {
            tokio::time::sleep_until(next.min(deadline)).await;
            if Instant::now() >= deadline {
                self.lost(LostReason::Unconfirmed);
                return;
            }
            let Some(in_flight) = self.lease.begin_renewal() else { return };
            let sent = Instant::now();
            let outcome = tokio::time::timeout_at(deadline, self.renew_all()).await;
            drop(in_flight);
            match outcome {
                Ok(Ok(true)) => {
                    deadline = sent + self.ttl.saturating_sub(margin);
                    next = sent + every;
                }
                Ok(Ok(false)) => {
                    self.lost(LostReason::Refused);
                    return;
                }
                Ok(Err(())) => {
                    // A failed renewal is retried soon; the deadline still bounds the whole.
                    next = Instant::now() + (every / 4).max(Duration::from_millis(5));
                }
                Err(_) => {
                    self.lost(LostReason::Unconfirmed);
                    return;
                }
            }
        }
    }

    /// `Ok(true)`: every key renewed; `Ok(false)`: some key refused; `Err`: backend failure.
    async fn renew_all(&self) -> Result<bool, ()> {
        for key in &self.keys {
            match self.backend.renew(key, &self.owner, self.ttl).await {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(err) => {
                    tracing::warn!(target: "dlock", key = %key, error = %err, "lease renewal failed; retrying until the lease deadline");
                    return Err(());
                }
            }
        }
        tracing::trace!(target: "dlock", keys = ?self.keys, "lease renewed");
        Ok(true)
    }

    fn lost(&self, reason: LostReason) {
        tracing::warn!(target: "dlock", keys = ?self.keys, %reason, "lock lost");
        self.lease.mark_lost(reason);
    }
}
