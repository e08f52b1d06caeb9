//! [`Lanes`]: connections for calls that hold up the connection they are sent on — a
//! replicated acquisition, whose `WAIT` must follow its script on the same connection (`WAIT`
//! counts that connection's writes only) and blocks that connection until it returns. Each
//! such call has a connection of its own for as long as it runs, so one `WAIT` never delays
//! another acquisition: while the replicas do not acknowledge, every acquisition fails with
//! `NotReplicated` after its own wait, not with a call timeout after the waits queued before it.
//!
//! A lane is a [`Connections`] (one connection per runtime, replaced on a timeout, moved with
//! the server); a call takes the first lane its runtime is not using, and a new lane is made
//! when all are in use, up to [`MAX_LANES`]. Lanes are kept for the next calls, idle. Past the
//! bound a call waits for a lane to come free, within its call timeout.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::RedisError;
use tokio::runtime::Id;
use tokio::sync::Notify;

use super::connection::{Conn, Connections, SentOn, current_runtime};
use crate::backend::{BackendError, BackendErrorKind};
use crate::id_hash::IdMap;

/// How many calls of one runtime run at once, each on a connection of its own: a lane is a
/// bit of a runtime's mask in [`State::busy`].
pub(super) const MAX_LANES: usize = 32;

/// Connections of one backend for calls that hold up their connection.
pub(super) struct Lanes {
    /// Makes a lane (its connections are made when a runtime first calls on it).
    make: Box<dyn Fn() -> Arc<Connections> + Send + Sync>,
    call_timeout: Duration,
    /// The URL with any password masked, for messages.
    url: String,
    state: Mutex<State>,
    /// A lane came free.
    freed: Notify,
}

#[derive(Default)]
struct State {
    lanes: Vec<Arc<Connections>>,
    /// By runtime, the lanes a call of that runtime is using (bit `i`: lane `i`); a runtime
    /// with none is not here, so an ended runtime leaves nothing behind.
    busy: IdMap<Id, u64>,
}

const _: () = assert!(MAX_LANES <= u64::BITS as usize, "a lane is a bit of a u64");

impl Lanes {
    pub(super) fn new(
        call_timeout: Duration,
        url: String,
        make: impl Fn() -> Arc<Connections> + Send + Sync + 'static,
    ) -> Self {
        Self { make: Box::new(make), call_timeout, url, state: Mutex::default(), freed: Notify::new() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is one push or one bit: a poisoned state is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Connections::call_noting`] on a lane no other call of this runtime is using, all
    /// within the call timeout (waiting for a lane too, past [`MAX_LANES`]).
    pub(super) async fn call_noting<T, F, Fut>(
        &self,
        what: &str,
        sent_on: Option<&SentOn>,
        call: F,
    ) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let runtime = current_runtime()?.id();
        let started = tokio::time::Instant::now();
        let mut taken = self.take(runtime, started).await?;
        let left = self.call_timeout.saturating_sub(started.elapsed());
        let answer = taken.lane.call_within(what, sent_on, left, call).await;
        taken.done = true;
        answer
    }

    /// A lane for a call of `runtime` that started at `started`.
    async fn take(&self, runtime: Id, started: tokio::time::Instant) -> Result<Taken<'_>, BackendError> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the lanes are looked at: a lane freed in between wakes it.
            freed.as_mut().enable();
            {
                let mut state = self.state();
                let busy = state.busy.get(&runtime).copied().unwrap_or(0);
                // Lanes are taken lowest first: those below the first free one exist.
                let free = (!busy).trailing_zeros() as usize;
                if free < MAX_LANES {
                    if free == state.lanes.len() {
                        let lane = (self.make)();
                        state.lanes.push(lane);
                    }
                    if let Some(lane) = state.lanes.get(free).map(Arc::clone) {
                        *state.busy.entry(runtime).or_default() |= 1 << free;
                        return Ok(Taken { lanes: self, runtime, index: free, lane, done: false });
                    }
                }
            }
            let left = self.call_timeout.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, freed).await.is_err() {
                return Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    format!(
                        "Redis at {}: {MAX_LANES} acquisitions of this runtime were already waiting for replicas, each on a connection of its own, and none ended within the call timeout ({:?})",
                        self.url, self.call_timeout
                    ),
                ));
            }
        }
    }
}

/// One call's lane, given back when dropped.
struct Taken<'a> {
    lanes: &'a Lanes,
    runtime: Id,
    index: usize,
    lane: Arc<Connections>,
    /// The call ended (answered or timed out). A call dropped before may have left a `WAIT`
    /// running on the lane's connection: the next call there gets a new connection.
    done: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.lane.forget(self.runtime);
        }
        let mut state = self.lanes.state();
        if let Some(busy) = state.busy.get_mut(&self.runtime) {
            *busy &= !(1 << self.index);
            if *busy == 0 {
                state.busy.remove(&self.runtime);
            }
        }
        drop(state);
        self.lanes.freed.notify_waiters();
    }
}
