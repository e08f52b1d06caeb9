//! dlock's own runtime: one thread per process, started on first use, for the work that must
//! not die with the runtime that happened to start it.
//!
//! A service registered once serves every runtime of the process (the `#[tokio::test]`
//! pattern: one global service, a new runtime per test). Work tied to no caller — a backend's
//! subscriber connection, the release of a guard dropped as its runtime shuts down — runs
//! here. Everything else stays on the caller's runtime, where it costs nothing extra: the
//! release of a dropped guard is spawned there first ([`spawn`]), and only when that runtime
//! cancels it (it is shutting down) is the work handed over here ([`Rescue`]).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// dlock's runtime, started on first use. It runs until the process exits.
///
/// Falls back to the caller's runtime if the thread cannot be started (the work then still
/// runs while that runtime lives).
pub(crate) fn handle() -> Option<&'static Handle> {
    static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(target: "dlock", error = %err, "could not start dlock's background runtime");
                    return None;
                }
            };
            let handle = runtime.handle().clone();
            let started = std::thread::Builder::new()
                .name("dlock-background".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()));
            match started {
                Ok(_) => Some(handle),
                Err(err) => {
                    tracing::error!(target: "dlock", error = %err, "could not start dlock's background thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Run `work` on dlock's runtime.
pub(crate) fn spawn_here<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match handle() {
        Some(handle) => drop(handle.spawn(work)),
        None => {
            if let Ok(current) = Handle::try_current() {
                drop(current.spawn(work));
            }
        }
    }
}

/// Run `work` in the background: on the caller's runtime when there is one, else on dlock's.
///
/// Work that must not be lost when the caller's runtime shuts down keeps what it needs in a
/// value whose `Drop` hands the rest to [`spawn_here`] when it sees [`Rescue::Cancelled`]
/// (see [`Claim`](crate::claim::Claim)).
pub(crate) fn spawn<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match Handle::try_current() {
        Ok(current) => drop(current.spawn(work)),
        Err(_) => spawn_here(work),
    }
}

/// Where unfinished background work goes when the value that carries it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescue {
    /// Dropped by its owner (a caller that gave up): spawn the rest in the background.
    Abandoned,
    /// Dropped because the task running it was cancelled — its runtime is shutting down:
    /// only dlock's runtime can finish it.
    Cancelled,
}
