//! [`Claim`]: keys this process may hold in the backend that no guard looks after — what an
//! acquisition took before it hands them to a guard, and what a guard's release has not sent
//! yet — released in the background if the work is abandoned.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{BackendError, FullKey, LockBackend};
use crate::background::{self, Rescue};
use crate::lease::Lease;

/// Keys this process may hold in the backend and has not released yet.
///
/// If the work is abandoned — an acquisition failed, or its caller dropped it while it waited
/// for a later key or while a request was on the wire; a release was dropped half-way — the
/// claim releases the keys left (owner-checked, so nothing else is touched). A release that
/// gets no answer is retried in the background until it does, or until the lease it targets
/// has ended anyway, so no lock is left behind without an owner for its whole ttl.
///
/// Background work runs on the caller's runtime; if that runtime shuts down before it is
/// done, the rest moves to dlock's own runtime (see [`background`]), so a guard dropped at
/// the end of a `#[tokio::test]` is still released.
pub(crate) struct Claim {
    backend: Arc<dyn LockBackend>,
    pub(crate) owner: Arc<str>,
    /// In the order they were claimed; released last first.
    pub(crate) keys: Vec<ClaimedKey>,
    /// The lease the keys are kept under: renewed, it lasts longer than each key's
    /// `ends_by`, so the keys are released until it has ended too. Released in the
    /// background, it is marked released, and its local queue places are given up once the
    /// keys are.
    lease: Option<Arc<Lease>>,
    /// What dropping the claim with keys left means.
    rescue: Rescue,
}

/// What [`Claim::release_now`] found.
#[derive(Debug)]
pub(crate) struct Released {
    /// Every answered key was still this owner's.
    pub(crate) all_held: bool,
    /// Some answer said other clients wait for its key.
    pub(crate) others_waiting: bool,
    /// The first key whose release got no answer (it is retried in the background), and why.
    pub(crate) first_error: Option<(FullKey, BackendError)>,
}

/// One claimed key.
#[derive(Debug)]
pub(crate) struct ClaimedKey {
    pub(crate) key: FullKey,
    /// After this the key's lease has ended by itself: releasing it is no longer needed.
    pub(crate) ends_by: Instant,
}

impl Claim {
    pub(crate) fn new(backend: Arc<dyn LockBackend>, owner: Arc<str>, lease: Option<Arc<Lease>>) -> Self {
        Self { backend, owner, keys: Vec::new(), lease, rescue: Rescue::Abandoned }
    }

    /// The claim of work that runs as a background task of its own: if the task is dropped
    /// before it is done, its runtime is shutting down, and the rest goes to dlock's runtime.
    pub(crate) fn in_background_task(mut self) -> Self {
        self.rescue = Rescue::Cancelled;
        self
    }

    /// Release the claimed keys now, last first; what fails is retried in the background,
    /// until answered or until its lease has ended (a failure is often the connection, or its
    /// runtime, ending under the call: the next attempt, on another connection, frees the key
    /// rather than leaving it held for the rest of its ttl).
    ///
    /// Returns what the answers said. Having got this far, its caller was not cancelled, so
    /// the retries run on this runtime (moving to dlock's own if this one shuts down first).
    pub(crate) async fn release_now(&mut self) -> Released {
        let mut released = Released { all_held: true, others_waiting: false, first_error: None };
        // A key leaves the claim only once answered, so a caller that drops this half-way
        // leaves the rest to the claim's `Drop`.
        let mut i = self.keys.len();
        while i > 0 {
            i -= 1;
            match self.backend.release(&self.keys[i].key, &self.owner).await {
                Ok(outcome) => {
                    released.all_held &= outcome.was_held;
                    released.others_waiting |= outcome.others_waiting;
                    self.keys.remove(i);
                }
                Err(err) => {
                    released.first_error.get_or_insert_with(|| (self.keys[i].key.clone(), err));
                }
            }
        }
        self.rescue = Rescue::Abandoned;
        self.release_in_background();
        released
    }

    /// The keys taken so far are kept (renewed) under `lease`: if the work is abandoned, they
    /// are released until that lease has ended, not only until their first lease would have.
    pub(crate) fn kept_by(&mut self, lease: &Arc<Lease>) {
        self.lease = Some(Arc::clone(lease));
    }

    /// The keys now belong to a guard.
    pub(crate) fn disarm(&mut self) {
        self.keys.clear();
    }

    fn release_in_background(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        if let Some(lease) = &self.lease {
            lease.mark_released();
        }
        let rest = Claim {
            backend: Arc::clone(&self.backend),
            owner: Arc::clone(&self.owner),
            keys: std::mem::take(&mut self.keys),
            lease: self.lease.take(),
            rescue: Rescue::Cancelled,
        };
        match self.rescue {
            Rescue::Abandoned => background::spawn(rest.finish()),
            Rescue::Cancelled => background::spawn_here(rest.finish()),
        }
    }

    /// Release every key, retrying each until answered or until its lease has ended by
    /// itself; then let the next local task compete for the keys.
    async fn finish(mut self) {
        while let Some(ClaimedKey { key, ends_by }) = self.keys.last() {
            let mut pause = Duration::from_millis(50);
            loop {
                match self.backend.release(key, &self.owner).await {
                    Ok(_) => break,
                    Err(err) if Instant::now() < self.ends_by(*ends_by) => {
                        tracing::debug!(target: "dlock", key = %key, error = %err, "retrying the release of an abandoned lock");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(_) => break, // the lease has ended by itself
                }
            }
            self.keys.pop();
        }
        if let Some(lease) = self.lease.take() {
            lease.drop_tickets();
        }
    }
}

impl Claim {
    /// When a key claimed until `ends_by` has ended by itself: then, or when the lease that
    /// renewed it ends, whichever is later.
    fn ends_by(&self, ends_by: Instant) -> Instant {
        self.lease.as_ref().map_or(ends_by, |lease| ends_by.max(lease.deadline()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release_in_background();
    }
}
