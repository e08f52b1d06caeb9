//! [`Claim`]: keys this process may hold in the backend that no guard looks after — what an
//! acquisition took before it hands them to a guard, and what a guard's release has not sent
//! yet — released in the background if the work is abandoned.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{FullKey, LockBackend};
use crate::lease::Lease;

/// Keys this process may hold in the backend and has not released yet.
///
/// If the work is abandoned — an acquisition failed, or its caller dropped it while it waited
/// for a later key or while a request was on the wire; a release was dropped half-way — the
/// claim releases the keys left (owner-checked, so nothing else is touched). A release that
/// gets no answer is retried in the background until it does, or until the lease it targets
/// has ended anyway, so no lock is left behind without an owner for its whole ttl.
pub(crate) struct Claim {
    backend: Arc<dyn LockBackend>,
    pub(crate) owner: Arc<str>,
    /// In the order they were claimed; released last first.
    pub(crate) keys: Vec<ClaimedKey>,
    /// For a guard's release: its lease, marked released, and whose local queue places are
    /// given up once the keys are.
    lease: Option<Arc<Lease>>,
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
        Self { backend, owner, keys: Vec::new(), lease }
    }

    /// Release the claimed keys now; what fails is retried in the background.
    pub(crate) async fn release_now(&mut self) {
        // A key leaves the claim only once answered, so a caller that drops this half-way
        // leaves the rest to the claim's `Drop`.
        let mut i = self.keys.len();
        while i > 0 {
            i -= 1;
            if self.backend.release(&self.keys[i].key, &self.owner).await.is_ok() {
                self.keys.remove(i);
            }
        }
        self.release_in_background();
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
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (backend, owner, lease) =
            (Arc::clone(&self.backend), Arc::clone(&self.owner), self.lease.clone());
        let keys = std::mem::take(&mut self.keys);
        handle.spawn(async move {
            for ClaimedKey { key, ends_by } in keys.into_iter().rev() {
                let mut pause = Duration::from_millis(50);
                loop {
                    match backend.release(&key, &owner).await {
                        Ok(_) => break,
                        Err(err) if Instant::now() < ends_by => {
                            tracing::debug!(target: "dlock", key = %key, error = %err, "retrying the release of an abandoned lock");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        Err(_) => break, // the lease has ended by itself
                    }
                }
            }
            if let Some(lease) = lease {
                lease.drop_tickets();
            }
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release_in_background();
    }
}
