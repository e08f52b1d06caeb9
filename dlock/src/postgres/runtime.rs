//! The backend's own thread and tokio runtime, for what serves every runtime of the process
//! and must outlive whichever one created the backend: the listening connection and its task,
//! and the periodic cleanup. (The cancel requests of timed-out statements, and the releases
//! sent behind those of them that were acquisitions, must also outlive the backend: they run
//! on dlock's own runtime, see `pool.rs` and `in_flight.rs`.)
//!
//! Spawned on a caller's runtime, such a task would die with that runtime (the
//! `#[tokio::test]` pattern: a global service made in one test's runtime, used from the next),
//! and stall while that runtime is not being driven (a current-thread runtime between two
//! `block_on`s). On a runtime of its own it is always driven; waiters on any runtime hear it
//! through channels. The thread ends when the backend's last clone is dropped. (Statements do
//! not go through it: each runtime has its own pool, see `pool.rs`.)

use std::fmt;
use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A current-thread runtime on a thread of its own; shut down when dropped.
pub(super) struct Background {
    handle: Handle,
    /// Dropping it ends the thread, which then drops the runtime (a runtime may not be dropped
    /// inside async code, where a backend may well be dropped).
    _stop: oneshot::Sender<()>,
}

impl Background {
    /// Start the thread. Fails only if the OS refuses a thread or the runtime cannot be built.
    pub(super) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name("dlock-postgres".into()).spawn(move || {
            // Resolves (with an error) when the sender is dropped.
            let _ = runtime.block_on(stopped);
            // Dropping the runtime here, outside async code, cancels the connection tasks.
            drop(runtime);
        })?;
        Ok(Self { handle, _stop: stop })
    }

    /// Run `task` on the background runtime.
    pub(super) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}
