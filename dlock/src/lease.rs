//! One held lease: whether it is lost, and the hand-shake that keeps renewals from being sent
//! after a release. The renewals themselves are sent by the [keeper](crate::keeper).
//!
//! Before a guard releases, it marks its lease released, waiting for a renewal already on the
//! wire (if any) to finish, so no renewal is ever sent after a release.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

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
    pub(crate) fn begin_renewal(&self) -> Option<InFlight<'_>> {
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
pub(crate) struct InFlight<'a>(&'a Lease);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.renewal.lock().unwrap_or_else(PoisonError::into_inner).1 = false;
        self.0.renewal_done.notify_waiters();
    }
}
