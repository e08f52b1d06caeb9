//! One held lease: whether it is lost, and the hand-shake that keeps renewals from being sent
//! after a release. The renewals themselves are sent by the [keeper](crate::keeper).
//!
//! Before a guard releases, it marks its lease released, waiting for a renewal already on the
//! wire (if any) to finish, so no renewal is ever sent after a release.
//!
//! Everything sits behind one mutex: a lease is created and dropped with every lock, so it is
//! kept to one allocation and a few uncontended lock operations.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::LostReason;
use crate::local_queue::QueueTicket;

/// A gate re-entrant bodies take turns at (see [`context`](crate::context)).
pub(crate) type Gate = Arc<tokio::sync::Mutex<()>>;

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

/// One term the backend granted a key: how long, counted from when the request that got it
/// (an acquire, or a renewal) was *sent*, so network time only shortens it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Term {
    pub(crate) sent: Instant,
    /// The ttl, or less for a key handed over by a release (see
    /// [`HANDOFF_LEASE`](crate::backend::HANDOFF_LEASE)) until its first renewal.
    pub(crate) length: Duration,
}

impl Term {
    /// Past this, the key's lease may have ended in the backend: `sent + length - margin`.
    pub(crate) fn deadline(&self) -> Instant {
        self.sent + self.length.saturating_sub(safety_margin(self.length))
    }

    /// When the term is due for renewal: a third of the way through.
    pub(crate) fn due(&self) -> Instant {
        self.sent + self.length / 3
    }
}

/// Shared state of one held lease (one or several keys).
#[derive(Debug)]
pub(crate) struct Lease {
    state: Mutex<State>,
    /// Woken when the lease is lost (or released).
    lost_changed: Notify,
    /// Woken when a renewal on the wire is done.
    renewal_done: Notify,
    /// Whether the keeper renews the lease (decides how an expired deadline is reported).
    auto_renew: bool,
    /// The gate of this lease's keys in the scope of the guard that took them (see
    /// [`context`](crate::context)): made when a re-entrant body first needs it.
    gate: OnceLock<Gate>,
}

#[derive(Debug)]
struct State {
    /// Why the lease was lost, once it is (`Released` once its holder let it go).
    lost: Option<LostReason>,
    /// Renewals stopped for good (the holder is releasing).
    renewals_stopped: bool,
    /// A renewal is on the wire.
    renewing: bool,
    /// Past this instant the lease may have ended in the backend: the earliest over its keys
    /// of `sent + lease - margin`, for the last confirmed acquire or renewal of each (the lease
    /// is the ttl, or less for a key handed over).
    deadline: Instant,
    /// This process's places at the head of the keys' local queues: given up on release (once
    /// every key's release is answered, or the lease has ended), and as soon as the lease is
    /// lost (the backend may already let another owner in).
    tickets: Vec<QueueTicket>,
}

impl Lease {
    pub(crate) fn new(deadline: Instant, auto_renew: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                lost: None,
                renewals_stopped: false,
                renewing: false,
                deadline,
                tickets: Vec::new(),
            }),
            lost_changed: Notify::new(),
            renewal_done: Notify::new(),
            auto_renew,
            gate: OnceLock::new(),
        })
    }

    /// The gate re-entrant bodies of this lease's keys take turns at.
    pub(crate) fn gate(&self) -> Gate {
        Arc::clone(self.gate.get_or_init(Gate::default))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves `State` consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep `ticket` (the place of a key just taken under this lease) until the lease is
    /// released or lost — dropped at once, if it is already lost.
    pub(crate) fn hold_ticket(&self, ticket: QueueTicket) {
        // Whatever is dropped here is dropped outside the lease's lock: a ticket takes the
        // service's queue lock.
        let _dropped = {
            let mut state = self.state();
            if state.lost.is_some() {
                Some(ticket)
            } else {
                state.tickets.push(ticket);
                None
            }
        };
    }

    /// Let the next task of this process compete for the keys, once `until` has come: a head
    /// start for other processes that wait for them. The next task — one waiting now, or one
    /// that asks later — waits for it itself, so it ends even if nothing drives the runtime
    /// that released.
    pub(crate) fn drop_tickets_with_head_start(&self, until: Instant) {
        let tickets = std::mem::take(&mut self.state().tickets);
        for ticket in &tickets {
            ticket.head_start_until(until);
        }
        drop(tickets);
    }

    /// Let the next task of this process compete for the keys.
    pub(crate) fn drop_tickets(&self) {
        // Dropped outside the lease's lock: a ticket takes the service's queue lock.
        let tickets = std::mem::take(&mut self.state().tickets);
        drop(tickets);
    }

    /// Stop renewals for good; `true` if no renewal is on the wire (else
    /// [`stop_renewals`](Self::stop_renewals) waits for it). A caller that bounds that wait
    /// with a timer calls this first and skips the timer when nothing is on the wire.
    pub(crate) fn stop_renewals_now(&self) -> bool {
        let mut state = self.state();
        state.renewals_stopped = true;
        !state.renewing
    }

    /// Stop renewals for good; returns once no renewal is on the wire.
    pub(crate) async fn stop_renewals(&self) {
        loop {
            // Registered before the check: a renewal finishing in between is not missed.
            let done = self.renewal_done.notified();
            {
                let mut state = self.state();
                state.renewals_stopped = true;
                if !state.renewing {
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
        let mut state = self.state();
        if state.renewals_stopped {
            return None;
        }
        state.renewing = true;
        Some(InFlight(self))
    }

    /// Why the lease was lost, if it was — including a deadline that passed before the keeper
    /// got to report it.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        let state = self.state();
        state.lost.or_else(|| (Instant::now() >= state.deadline).then(|| self.expiry_reason()))
    }

    fn expiry_reason(&self) -> LostReason {
        if self.auto_renew { LostReason::Unconfirmed } else { LostReason::Expired }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.state().deadline
    }

    /// A key whose own lease ends earlier joined: the lease lasts at most until `deadline`.
    pub(crate) fn cap(&self, deadline: Instant) {
        let mut state = self.state();
        state.deadline = state.deadline.min(deadline);
    }

    /// A renewal was confirmed: the lease now lasts until `deadline`.
    pub(crate) fn extend(&self, deadline: Instant) {
        let mut state = self.state();
        state.deadline = state.deadline.max(deadline);
    }

    pub(crate) fn mark_lost(&self, reason: LostReason) {
        let tickets = {
            let mut state = self.state();
            state.lost.get_or_insert(reason);
            std::mem::take(&mut state.tickets)
        };
        drop(tickets);
        self.lost_changed.notify_waiters();
    }

    /// The holder released the lock: a re-entrant guard that outlived it must not look held.
    pub(crate) fn mark_released(&self) {
        let first = {
            let mut state = self.state();
            let first = state.lost.is_none();
            state.lost.get_or_insert(LostReason::Released);
            first
        };
        if first {
            self.lost_changed.notify_waiters();
        }
    }

    /// Resolves when the lease is lost; never, if it is not.
    ///
    /// Besides waiting for the keeper's report, it watches the deadline itself, so a loss by
    /// time is seen at the deadline even when the keeper task is slow to be scheduled.
    pub(crate) async fn lost(&self) -> LostReason {
        loop {
            // Registered before the check: a loss reported in between is not missed.
            let changed = self.lost_changed.notified();
            let deadline = {
                let state = self.state();
                if let Some(reason) = state.lost {
                    return reason;
                }
                state.deadline
            };
            tokio::select! {
                () = changed => {}
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
        self.0.state().renewing = false;
        self.0.renewal_done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Lease;
    use crate::backend::FullKey;
    use crate::error::LostReason;
    use crate::local_queue::LocalQueues;

    /// The keeper may report a lease lost before the acquisition hands it a key's local queue
    /// place: the place must be given up then, not at release.
    #[tokio::test]
    async fn a_lease_lost_before_it_holds_its_queue_places_gives_them_up_at_once() {
        let queues = Arc::new(LocalQueues::default());
        let key = FullKey::new("", "k");
        let far = Instant::now() + Duration::from_secs(60);
        let ticket = queues.enter(&key, far).await.expect("the queue is free");
        let lease = Lease::new(far, true);
        lease.mark_lost(LostReason::Refused);
        lease.hold_ticket(ticket);

        let next = queues.enter(&key, Instant::now() + Duration::from_millis(200)).await;
        assert!(next.is_some(), "the next task of the process still waits for a place held by a lost lease");
    }
}
