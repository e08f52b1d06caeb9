//! The in-process FIFO queue per key: tasks of one process that want the same key line up
//! here, and only the head of the line competes in the backend.
//!
//! One [`LocalQueues`] per service. A queue exists while some task waits for or holds its key
//! and is removed with the last [`QueueTicket`].
//!
//! A task leaving the head may give other processes a head start for its key
//! ([`QueueTicket::head_start_until`]): whichever task of this process is head next — one that
//! waited, or one that asks later — waits for its end on its own runtime, so the head start
//! ends even when the runtime of the task that left idles from then on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::backend::FullKey;

/// The queues of one service, by key.
#[derive(Debug, Default)]
pub(crate) struct LocalQueues {
    queues: Mutex<Queues>,
}

#[derive(Debug, Default)]
struct Queues {
    /// One key's queue: the head holds the mutex.
    by_key: HashMap<FullKey, Arc<tokio::sync::Mutex<()>>>,
    /// Until when this process's next head of a key does not compete for it: a head start its
    /// last head gave other processes. Entries past their end are dropped with each new one
    /// (they last milliseconds), so the map stays as small as the head starts under way.
    head_starts: HashMap<FullKey, Instant>,
}

impl LocalQueues {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every update is one insert or remove: a poisoned map is still consistent.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait (FIFO, within this process) until this task is at the head of `key`'s queue, and
    /// then for the end of a head start the last head gave other processes (at most until
    /// `deadline`); `None` if `deadline` comes before the head.
    pub(crate) async fn enter(self: &Arc<Self>, key: &FullKey, deadline: Instant) -> Option<QueueTicket> {
        let queue = Arc::clone(self.lock().by_key.entry(key.clone()).or_default());
        // Made before waiting: if this call is dropped while it waits, the ticket still removes
        // the queue once nobody else uses it.
        let mut ticket = QueueTicket { queues: Arc::clone(self), key: key.clone(), head: None };
        // Nobody of this process holds or waits for the key: the common case, without a timer.
        // (A tokio mutex hands itself to its queued waiters in order, so this never jumps it.)
        let head = match Arc::clone(&queue).try_lock_owned() {
            Ok(head) => head,
            Err(_) => Box::pin(tokio::time::timeout_at(deadline, queue.lock_owned())).await.ok()?,
        };
        ticket.head = Some(head);
        let head_start = self.lock().head_starts.get(key).copied();
        if let Some(until) = head_start
            && until > Instant::now()
        {
            Box::pin(tokio::time::sleep_until(until.min(deadline))).await;
        }
        Some(ticket)
    }
}

/// This task's place at the head of one key's local queue; the next task in line moves up
/// when it is dropped.
pub(crate) struct QueueTicket {
    queues: Arc<LocalQueues>,
    key: FullKey,
    head: Option<OwnedMutexGuard<()>>,
}

impl QueueTicket {
    /// The next head of this queue — a task already waiting, or one that asks later — does
    /// not compete before `until`: other processes that wait for the key get a head start.
    pub(crate) fn head_start_until(&self, until: Instant) {
        let mut queues = self.queues.lock();
        let now = Instant::now();
        queues.head_starts.retain(|_, end| *end > now);
        queues.head_starts.insert(self.key.clone(), until);
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        drop(self.head.take());
        let mut queues = self.queues.lock();
        // New references to a queue come only from the map, under this lock, or from one that
        // already counts; so a count of one (the map's own) means nobody waits on or holds it.
        if let Entry::Occupied(queue) = queues.by_key.entry(self.key.clone())
            && Arc::strong_count(queue.get()) == 1
        {
            queue.remove();
        }
    }
}

impl fmt::Debug for QueueTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTicket").field("key", &self.key).field("at_head", &self.head.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::LocalQueues;
    use crate::backend::FullKey;

    #[tokio::test]
    async fn tasks_enter_in_order_and_the_queue_goes_with_the_last_ticket() {
        let queues = Arc::new(LocalQueues::default());
        let key = FullKey::new("", "k");
        let far = Instant::now() + Duration::from_secs(60);
        let first = queues.enter(&key, far).await.expect("the queue is free");
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(queues.enter(&key, soon).await.is_none(), "the head is taken until the first ticket goes");
        drop(first);
        assert!(queues.lock().by_key.is_empty(), "no queue is kept for a key nobody wants");
        let again = queues.enter(&key, far).await.expect("free again");
        drop(again);
        assert!(queues.lock().by_key.is_empty());
    }

    /// A waiter dropped while it waits (before the head lets go, or after the head handed it
    /// the queue but before it ran) takes the queue with it once nobody else uses it.
    #[tokio::test]
    async fn a_cancelled_waiter_leaves_no_queue_behind() {
        let queues = Arc::new(LocalQueues::default());
        let key = FullKey::new("", "k");
        let far = Instant::now() + Duration::from_secs(60);
        let mut cx = Context::from_waker(Waker::noop());
        for handed_over in [false, true] {
            let head = queues.enter(&key, far).await.expect("the queue is free");
            let mut waiter = Box::pin(queues.enter(&key, far));
            assert!(waiter.as_mut().poll(&mut cx).is_pending(), "the head is taken");
            if handed_over {
                drop(head);
                drop(waiter);
            } else {
                drop(waiter);
                drop(head);
            }
            assert!(queues.lock().by_key.is_empty(), "a queue was kept (handed over: {handed_over})");
        }
    }
}
