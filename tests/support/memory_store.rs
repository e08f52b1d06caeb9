//! [`MemoryStore`]: a fresh [`MemoryBackend`] per test, as a [`Store`].

use std::sync::Arc;

use dlock::backend::{BoxFuture, TryAcquire};
use dlock::{LockBackend, MemoryBackend};

use super::store::{Features, Store};

/// One test's [`MemoryBackend`]. Its clients share the one in-process store; services still
/// get a key prefix, so prefix handling is exercised on every backend.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    backend: MemoryBackend,
    prefix: String,
}

impl MemoryStore {
    /// A fresh, empty store for the test `test_name`.
    pub fn new(test_name: &str) -> Self {
        Self { backend: MemoryBackend::new(), prefix: format!("{test_name}:lock:") }
    }

    /// The backend every client shares.
    pub fn backend(&self) -> &MemoryBackend {
        &self.backend
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>> {
        Box::pin(async { Arc::new(self.backend.clone()) as Arc<dyn LockBackend> })
    }

    /// A probe acquire on the backend, released at once if it succeeded (it draws a fencing
    /// token, which only widens the gaps between tokens).
    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let full_key = self.full_key(key);
            let probe = "dlock-test-probe";
            match self
                .backend
                .try_acquire(&full_key, probe, dlock::MIN_TTL)
                .await
                .expect("memory never fails")
            {
                TryAcquire::Held { .. } => true,
                TryAcquire::Acquired { .. } => {
                    let released = self.backend.release(&full_key, probe).await.expect("memory never fails");
                    assert!(released.was_held);
                    false
                }
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let full_key = self.full_key(key);
            assert!(self.backend.force_expire(&full_key), "{full_key} was not held");
        })
    }

    fn features(&self) -> Features {
        Features { release_notices: true, handoff: false, isolated: true }
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        // The store goes with the test.
        Box::pin(async {})
    }

    fn held_count(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async { Some(self.backend.held_count()) })
    }
}
