//! What the current task holds: the basis of [`fencing_token()`] and of re-entrancy.
//!
//! Each annotated call (and [`LockGuard::scope`](crate::LockGuard::scope)) runs its body inside
//! a task-local frame listing the locks held so far on this task, innermost last. A nested
//! lock request on a key in that list does not go to the backend again.

use std::sync::Arc;

use crate::backend::FullKey;
use crate::lease::Lease;

tokio::task_local! {
    static HELD: Vec<Frame>;
}

/// One lock held by the current task.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) service_id: u64,
    pub(crate) key: FullKey,
    pub(crate) fencing_token: u64,
    pub(crate) lease: Arc<Lease>,
}

/// The fencing token of the innermost lock the current task holds, or `None` outside any.
///
/// Inside a `#[distributed_lock]` body it is the token the backend issued for that lock (for
/// several keys, the first key in acquisition order). Tokens strictly increase across
/// successive holders of one key on one backend: pass it to your storage layer with each
/// write and have it reject writes that carry a smaller token than one it has seen, so a
/// holder whose lease ended (a long GC pause, a partition) cannot overwrite newer data.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// # let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let guard = service.lock("account:7").await?;
/// guard.scope(async {
///     let token = dlock::fencing_token().expect("inside a held lock");
///     // storage.write_if_token_at_least(token, ...)
/// #   assert!(token > 0);
/// }).await;
/// assert_eq!(dlock::fencing_token(), None);
/// # Ok(()) }
/// ```
pub fn fencing_token() -> Option<u64> {
    HELD.try_with(|frames| frames.last().map(|f| f.fencing_token)).ok().flatten()
}

/// The frame for `key` (as the caller wrote it) on service `service_id`, if this task holds it.
pub(crate) fn held(service_id: u64, key: &str) -> Option<Frame> {
    HELD.try_with(|frames| {
        frames.iter().rev().find(|f| f.service_id == service_id && f.key.unprefixed() == key).cloned()
    })
    .ok()
    .flatten()
}

/// Run `fut` with `frames` pushed onto this task's held locks.
pub(crate) async fn with_frames<F: std::future::Future>(frames: Vec<Frame>, fut: F) -> F::Output {
    if frames.is_empty() {
        return fut.await;
    }
    let mut stack = HELD.try_with(Clone::clone).unwrap_or_default();
    stack.extend(frames);
    HELD.scope(stack, fut).await
}
