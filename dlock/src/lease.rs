//! One held lease: whether it is lost, and the hand-shake that keeps renewals from being sent
//! after a release. The renewals themselves are sent by the [keeper](crate::keeper).
//!
//! Before a guard releases, it marks its lease released, waiting for a renewal already on the
//! wire (if any) to finish, so no renewal is ever sent after a release.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::LostReason;
use crate::service::QueueTicket;

/// How much earlier than the backend's own expiry dlock considers a lease over.
///
/// The deadline is measured from the moment the acquire (or renew) request was *sent*, so
/// network time only shortens it. The margin covers clocks that advance at slightly different
/// rates on the client and the backend (1 % of the ttl, as the Redlock analysis suggests) plus
/// time for the cancellation to reach the body (a tenth of the ttl, between 2 and 20 ms): the
/// body is dropped at `sent + ttl - margin`, before the backend can let anybody else in.
pub fn safety_margin(ttl: Duration) -> Duration {
    // 1 % for clock-rate drift, plus time for the cancellation to reach the body: a tenth of
    // the ttl, at least 2 ms and at most 20 ms (timer granularity and task wake-ups under load).
    ttl / 100 + (ttl / 10).clamp(Duration::from_millis(2), Duration::from_millis(20))
}

/// Shared state of one held lease (one or several keys).
#[derive(Debug)]
pub(crate) struct Lease {
    lost: watch::Sender<Option<LostReason>>,
    /// `(released, renewal in flight)`: the hand-shake between the keeper and the release.
    renewal: Mutex<(bool, bool)>,
    renewal_done: Notify,
    /// Past this instant the lease may have ended in the backend (`sent + ttl - margin` of the
    /// last confirmed acquire or renewal).
    deadline: Mutex<Instant>,
    /// Whether the lease is renewed (decides how an expired deadline is reported).
    renewed: bool,
    /// This process's places at the head of the keys' local queues: given up on release, and
    /// as soon as the lease is lost (the backend may already let another owner in).
    tickets: Mutex<Vec<QueueTicket>>,
}

impl Lease {
    pub(crate) fn new(deadline: Instant, renewed: bool) -> Arc<Self> {
        Arc::new(Self {
            deadline: Mutex::new(deadline),
            renewed,
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

    /// Why the lease was lost, if it was — including a deadline that passed before the keeper
    /// got to report it.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        let reported = *self.lost.borrow();
        reported.or_else(|| (Instant::now() >= self.deadline()).then(|| self.expiry_reason()))
    }

    fn expiry_reason(&self) -> LostReason {
        if self.renewed { LostReason::Unconfirmed } else { LostReason::Expired }
    }

    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A key whose own lease ends earlier joined: the lease lasts at most until `deadline`.
    pub(crate) fn cap(&self, deadline: Instant) {
        let mut current = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        *current = (*current).min(deadline);
    }

    /// A renewal was confirmed: the lease now lasts until `deadline`.
    pub(crate) fn extend(&self, deadline: Instant) {
        let mut current = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        *current = (*current).max(deadline);
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

    /// The holder released the lock: a re-entrant guard that outlived it must not look held.
    pub(crate) fn mark_released(&self) {
        self.lost.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(LostReason::Released);
                true
            } else {
                false
            }
        });
    }

    /// Resolves when the lease is lost; never, if it is not.
    ///
    /// Besides waiting for the keeper's report, it watches the deadline itself, so a loss by
    /// time is seen at the deadline even when the keeper task is slow to be scheduled.
    pub(crate) async fn lost(&self) -> LostReason {
        let mut rx = self.lost.subscribe();
        loop {
            if let Some(reason) = *rx.borrow_and_update() {
                return reason;
            }
            let deadline = self.deadline();
            tokio::select! {
                // The sender lives in `self`, so `changed` cannot fail while we borrow it.
                _ = rx.changed() => {}
                () = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.deadline() {
                        self.mark_lost(self.expiry_reason());
                    }
                }
            }
        }
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
