//! What the current task holds: the basis of [`fencing_token()`], [`fencing_token_for()`] and
//! of re-entrancy.
//!
//! Each annotated call (and [`LockGuard::scope`](crate::LockGuard::scope)) runs its body inside
//! a task-local *scope*: the keys that body holds, on top of those its callers hold. A nested
//! lock request on a key in the stack does not go to the backend again (it re-enters), but
//! re-entrant bodies of one key that run side by side in one task (`join!`, `select!`) take
//! turns: each key of a scope has a *gate*, which a re-entrant body holds while it runs, and
//! the body's own scope gives the key a fresh gate for the calls nested in it. In the scope of
//! the guard that took the keys, its keys share one gate, kept in the lease and made only when
//! a re-entrant body first needs it (so re-entrant bodies of different keys of one acquisition
//! take turns too): a body that is never re-entered costs no allocation.

use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use crate::backend::FullKey;
use crate::lease::{Gate, Lease};

tokio::task_local! {
    static HELD: Vec<Frame>;
}

/// One lock held by the current task, in one scope.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) service_id: u64,
    pub(crate) key: FullKey,
    pub(crate) fencing_token: u64,
    pub(crate) lease: Arc<Lease>,
    /// Held by a re-entrant body of this key running inside this scope. `None`: the gate of
    /// the lease itself (made only when needed), for the scope of the guard that took the key.
    gate: Option<Gate>,
    /// The gate the body of this scope passed to run: the enclosing scope's. Its holder is this
    /// very body, so a request in here to pass it again has the turn already. `None` for the
    /// scope of the guard that took the key.
    entered_through: Option<Gate>,
    /// How deep the scope is: frames of one scope share it, the innermost has the largest.
    depth: usize,
}

impl Frame {
    /// A frame for the scope of the guard that took the key.
    pub(crate) fn new(service_id: u64, key: FullKey, fencing_token: u64, lease: Arc<Lease>) -> Self {
        Self { service_id, key, fencing_token, lease, gate: None, entered_through: None, depth: 0 }
    }

    /// The same lock, for a nested (re-entrant) scope: with a gate of its own.
    pub(crate) fn nested(&self) -> Self {
        Self { gate: Some(Gate::default()), entered_through: Some(self.gate()), ..self.clone() }
    }

    fn gate(&self) -> Gate {
        self.gate.clone().unwrap_or_else(|| self.lease.gate())
    }

    /// Wait until no other re-entrant body of this key in this scope runs.
    ///
    /// Asked from inside a body that passed this very gate (a guard's `scope` entered again
    /// within itself), waiting would wait for that body, so for itself: the turn is then taken
    /// among the bodies nested where the request is made, as a request made there would.
    pub(crate) async fn pass_gate(&self) -> OwnedMutexGuard<()> {
        let gate = self.gate();
        let nested = HELD.try_with(|frames| {
            let passed =
                |f: &Frame| f.entered_through.as_ref().is_some_and(|through| Arc::ptr_eq(through, &gate));
            if !frames.iter().any(passed) {
                return None;
            }
            // The innermost frame of this key: no body of this task holds its gate (one that
            // did would have a frame of the key further in).
            frames
                .iter()
                .rev()
                .find(|f| f.service_id == self.service_id && f.key == self.key)
                .map(Frame::gate)
        });
        nested.ok().flatten().unwrap_or(gate).lock_owned().await
    }
}

/// The fencing token of the innermost lock the current task holds, or `None` outside any.
///
/// Inside a `#[distributed_lock]` body it is the token the backend issued for that lock.
/// Tokens strictly increase across successive holders of one key on one backend: pass it to
/// your storage layer with each write and have it reject writes that carry a smaller token
/// than one it has seen, so a holder whose lease ended (a long GC pause, a partition) cannot
/// overwrite newer data.
///
/// In a body that holds several keys, each key has its own token, and no one value fences
/// them all: it returns `None` then (unless the tokens happen to be equal). Use
/// [`fencing_token_for`] with the key whose storage you write.
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
    HELD.try_with(|frames| {
        let innermost = frames.last()?;
        let scope = frames.iter().rev().take_while(|f| f.depth == innermost.depth);
        let mut tokens = scope.map(|f| f.fencing_token);
        let first = tokens.next()?;
        tokens.all(|t| t == first).then_some(first)
    })
    .ok()
    .flatten()
}

/// The fencing token of `key` — named as in the attribute or the request, without the
/// service's prefix — if the current task holds it; the innermost holder's if several scopes
/// do.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// # let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let guard = service.lock_all(["account:7", "account:9"]).await?;
/// guard.scope(async {
///     let from = dlock::fencing_token_for("account:7").expect("held");
///     let to = dlock::fencing_token_for("account:9").expect("held");
///     // debit with `from` in account 7's storage, credit with `to` in account 9's
/// #   assert_ne!(from, to);
///     assert_eq!(dlock::fencing_token_for("account:8"), None);
/// }).await;
/// # Ok(()) }
/// ```
pub fn fencing_token_for(key: &str) -> Option<u64> {
    HELD.try_with(|frames| frames.iter().rev().find(|f| f.key.unprefixed() == key).map(|f| f.fencing_token))
        .ok()
        .flatten()
}

/// The innermost frame for `key` (as the caller wrote it) on service `service_id`, if this
/// task holds it.
pub(crate) fn held(service_id: u64, key: &str) -> Option<Frame> {
    HELD.try_with(|frames| {
        frames.iter().rev().find(|f| f.service_id == service_id && f.key.unprefixed() == key).cloned()
    })
    .ok()
    .flatten()
}

/// `fut`, run in a new scope holding `frames` on top of the locks this task holds now.
///
/// Not an `async fn`: it stores `fut` once, in the task-local future it returns.
pub(crate) fn with_frames<F: std::future::Future>(
    mut frames: Vec<Frame>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let mut stack = HELD.try_with(Clone::clone).unwrap_or_default();
    let depth = stack.last().map_or(1, |f| f.depth + 1);
    for frame in &mut frames {
        frame.depth = depth;
    }
    // Outside any scope (the common case) the new frames are the whole stack: no copy.
    if stack.is_empty() {
        return HELD.scope(frames, fut);
    }
    stack.extend(frames);
    HELD.scope(stack, fut)
}
