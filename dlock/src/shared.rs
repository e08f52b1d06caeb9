//! [`Shared`]: what a service's acquisitions and guards share — the backend, the key prefix,
//! the defaults and the local queues. [`LockService`](crate::LockService) is a handle to it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{FullKey, LockBackend};
use crate::local_queue::LocalQueues;

/// One service's state.
pub(crate) struct Shared {
    /// Tells services apart in a task's held locks (re-entrancy is per service).
    pub(crate) id: u64,
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) prefix: String,
    pub(crate) default_ttl: Duration,
    pub(crate) default_wait: Duration,
    /// One FIFO queue per key that tasks of this process are waiting for or holding: only its
    /// head competes in the backend.
    pub(crate) queues: Arc<LocalQueues>,
    /// The backend's [`lease_epochs`](LockBackend::lease_epochs), if it has them.
    pub(crate) lease_epochs: Option<watch::Receiver<u64>>,
}

impl Shared {
    pub(crate) fn new(
        backend: Arc<dyn LockBackend>,
        prefix: String,
        default_ttl: Duration,
        default_wait: Duration,
        lease_epochs: Option<watch::Receiver<u64>>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backend,
            prefix,
            default_ttl,
            default_wait,
            queues: Arc::default(),
            lease_epochs,
        }
    }

    /// The backend's lease epoch now (`None`: it has none).
    pub(crate) fn lease_epoch(&self) -> Option<u64> {
        self.lease_epochs.as_ref().map(|epochs| *epochs.borrow())
    }

    /// `key` as this service's backend stores it.
    pub(crate) fn full_key(&self, key: &str) -> FullKey {
        FullKey::new(&self.prefix, key)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockService")
            .field("backend", &self.backend.name())
            .field("key_prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("default_wait", &self.default_wait)
            .finish()
    }
}
