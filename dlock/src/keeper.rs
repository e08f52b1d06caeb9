//! The keeper: one task per tokio runtime renews every lease held from that runtime, and
//! marks a lease lost when a renewal is refused or not confirmed in time.
//!
//! A lease is registered when it is acquired and unregistered when it is released, which costs
//! a map insert and remove; the task only wakes when a renewal or a deadline is due (a
//! registration wakes it only when it is due before the task's timer), so locks held for less
//! than a third of their lease (ttl/3; less for a key handed over, see
//! [`HANDOFF_LEASE`](crate::backend::HANDOFF_LEASE)) never wake it. Each renewal runs as its own short
//! task, so a slow backend delays no other lease. The task ends after being idle for a while,
//! and is started again by the next registration.
//!
//! When a backend moves to another server (its [`lease_epochs`](LockBackend::lease_epochs)
//! change: a Sentinel or Cluster failover), every lease kept on it is due at once
//! ([`renew_now`]), also one whose renewal is on the wire then (that renewal may have gone to
//! the old server: its answer does not put the lease off again), and one registered or given
//! a key just after the move ([`Registration::due_now`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{FullKey, LockBackend};
use crate::error::LostReason;
use crate::id_hash::IdMap;
use crate::lease::{Lease, Term};

/// How long the task waits with no lease to keep before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// With nothing due sooner, the task still wakes this often. Any registration due later than
/// its timer (every lease with a ttl over 3 s) then needs no wake-up at all.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// One keeper per runtime (usually one in a process).
static KEEPERS: Mutex<Vec<(Id, Arc<Keeper>)>> = Mutex::new(Vec::new());

/// What it takes to keep one lease.
pub(crate) struct Job {
    pub(crate) backend: Arc<dyn LockBackend>,
    /// Its keys, each with the lease the backend last gave it. Grows while a request for
    /// several keys takes them one by one.
    pub(crate) keys: Mutex<Vec<KeptKey>>,
    pub(crate) owner: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) lease: Arc<Lease>,
}

/// One key of a lease, with the term the backend last gave it.
#[derive(Debug, Clone)]
pub(crate) struct KeptKey {
    pub(crate) key: FullKey,
    pub(crate) term: Term,
}

/// A lease being kept; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    keeper: Arc<Keeper>,
    id: u64,
}

impl Registration {
    /// Keep `key` too (a request for several keys took its next one).
    ///
    /// The key's lease may end before the lease's others (it was sent earlier than their
    /// last renewal, or it was handed over with a shorter lease): the deadline and the next
    /// renewal are brought forward to match it.
    pub(crate) fn add_key(&self, key: KeptKey) {
        let mut state = self.keeper.lock();
        let Some(entry) = state.entries.get_mut(&self.id) else { return };
        let (deadline, due) = (key.term.deadline(), key.term.due());
        entry.job.keys.lock().unwrap_or_else(PoisonError::into_inner).push(key);
        entry.job.lease.cap(deadline);
        entry.deadline = entry.deadline.min(deadline);
        let due = if entry.job.auto_renew { due } else { entry.deadline };
        if due < entry.due {
            let old = entry.due;
            entry.due = due;
            state.schedule.remove(&(old, self.id));
            state.schedule.insert((due, self.id));
            state.wake_if_before(&self.keeper.wake, due);
        }
    }

    /// Renew the lease at once (a lease without renewal: check it), as [`renew_now`] does:
    /// for a lease registered, or a key added, after the backend's lease epoch moved — that
    /// `renew_now` may have run before this lease was there to be reached.
    pub(crate) fn due_now(&self) {
        let mut state = self.keeper.lock();
        let now = Instant::now();
        state.due_now(self.id, now);
        state.wake_if_before(&self.keeper.wake, now);
    }
}

/// When the lease of `keys` may have ended, and when it is due for renewal (or, without
/// renewal, when it must be reported lost): the earliest of its keys'.
fn deadline_and_due(keys: &[KeptKey], auto_renew: bool) -> Option<Schedule> {
    let deadline = keys.iter().map(|k| k.term.deadline()).min()?;
    let due = if auto_renew { keys.iter().map(|k| k.term.due()).min()? } else { deadline };
    Some(Schedule { deadline, due })
}

/// When a lease is next due (for renewal, or, without renewal, to be reported lost), and when
/// it may have ended in the backend.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    due: Instant,
    deadline: Instant,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.keeper.lock();
        if let Some(entry) = state.entries.remove(&self.id) {
            state.schedule.remove(&(entry.due, self.id));
        }
    }
}

/// Renew at once every lease kept for `backend`, on every runtime: the backend may have lost
/// them all (it moved to another server). A lease without renewal is checked instead, and
/// keeps its end ([`recheck_once`]).
pub(crate) fn renew_now(backend: &Weak<dyn LockBackend>) {
    let keepers: Vec<Arc<Keeper>> =
        KEEPERS.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(_, k)| Arc::clone(k)).collect();
    let now = Instant::now();
    for keeper in keepers {
        let mut state = keeper.lock();
        let ids: Vec<u64> = state
            .entries
            .iter()
            .filter(|(_, entry)| std::ptr::addr_eq(Arc::as_ptr(&entry.job.backend), backend.as_ptr()))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            state.due_now(id, now);
        }
        state.wake_if_before(&keeper.wake, now);
    }
}

/// Renew `backend`'s leases at once whenever its [`lease_epochs`](LockBackend::lease_epochs)
/// change, for as long as the backend lives. Returns a receiver of those epochs, for the
/// acquisitions to tell whether one changed while they ran ([`Registration::due_now`]).
pub(crate) fn follow_lease_epochs(backend: &Arc<dyn LockBackend>) -> Option<watch::Receiver<u64>> {
    let mut epochs = backend.lease_epochs()?;
    let seen = epochs.clone();
    let backend = Arc::downgrade(backend);
    crate::background::spawn_here(async move {
        while epochs.changed().await.is_ok() {
            if backend.strong_count() == 0 {
                return;
            }
            tracing::debug!(target: "dlock", "the backend moved to another server: renewing every lease at once");
            renew_now(&backend);
        }
    });
    Some(seen)
}

/// Keep `job`'s lease on the current runtime.
pub(crate) fn register(handle: &Handle, job: Job) -> Registration {
    let keeper = keeper_for(handle.id());
    // A job always has its first key; without one, it is due (and lost) at once.
    let Schedule { deadline, due } =
        deadline_and_due(&job.keys.lock().unwrap_or_else(PoisonError::into_inner), job.auto_renew)
            .unwrap_or_else(|| {
                let now = Instant::now();
                Schedule { deadline: now, due: now }
            });
    let mut state = keeper.lock();
    state.next_id += 1;
    let id = state.next_id;
    state.entries.insert(id, Entry { job: Arc::new(job), due, deadline });
    state.schedule.insert((due, id));
    let idle = state.task.as_ref().is_none_or(JoinHandle::is_finished);
    if idle {
        state.armed = None;
        state.task = Some(handle.spawn(run(Arc::clone(&keeper))));
    } else {
        state.wake_if_before(&keeper.wake, due);
    }
    drop(state);
    if idle {
        relist(handle.id(), &keeper);
    }
    Registration { keeper, id }
}

/// Put `keeper`, whose task was just started again, back in the process-wide list if it was
/// forgotten while idle (`keeper_for` forgets idle keepers, but a thread's cache may still
/// hand one out): [`renew_now`] reaches only the keepers listed. A runtime may then have two
/// keepers listed, which costs a second task, not a lease.
fn relist(id: Id, keeper: &Arc<Keeper>) {
    let mut keepers = KEEPERS.lock().unwrap_or_else(PoisonError::into_inner);
    if !keepers.iter().any(|(_, listed)| Arc::ptr_eq(listed, keeper)) {
        keepers.push((id, Arc::clone(keeper)));
    }
}

/// The keeper of runtime `id`: the one this thread used last if it is that runtime's, else
/// from the process-wide list.
fn keeper_for(id: Id) -> Arc<Keeper> {
    thread_local! {
        static LAST: RefCell<Option<(Id, Arc<Keeper>)>> = const { RefCell::new(None) };
    }
    let cached =
        LAST.with(|last| last.borrow().as_ref().filter(|(rt, _)| *rt == id).map(|(_, k)| Arc::clone(k)));
    if let Some(keeper) = cached {
        return keeper;
    }
    let keeper = {
        let mut keepers = KEEPERS.lock().unwrap_or_else(PoisonError::into_inner);
        match keepers.iter().find(|(rt, _)| *rt == id) {
            Some((_, keeper)) => Arc::clone(keeper),
            None => {
                // Forget keepers of runtimes that are gone.
                keepers.retain(|(_, k)| !k.lock().task.as_ref().is_none_or(JoinHandle::is_finished));
                let keeper = Arc::new(Keeper::default());
                keepers.push((id, Arc::clone(&keeper)));
                keeper
            }
        }
    };
    LAST.with(|last| *last.borrow_mut() = Some((id, Arc::clone(&keeper))));
    keeper
}

#[derive(Debug, Default)]
struct Keeper {
    state: Mutex<State>,
    /// Wakes the task when a registration is due before its timer.
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    entries: IdMap<u64, Entry>,
    /// `(when due, id)`: the next renewal, or the deadline of a lease without renewal.
    schedule: BTreeSet<(Instant, u64)>,
    next_id: u64,
    task: Option<JoinHandle<()>>,
    /// When the sleeping task's timer fires; `None` while it is awake (it then looks at the
    /// schedule before sleeping again). A registration due later needs no wake-up.
    armed: Option<Instant>,
}

impl State {
    /// Make `id` (if it is still kept) due at `now`.
    fn due_now(&mut self, id: u64, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            let old = std::mem::replace(&mut entry.due, now);
            self.schedule.remove(&(old, id));
            self.schedule.insert((now, id));
        }
    }

    /// Wake the task if it sleeps past `due`.
    fn wake_if_before(&mut self, wake: &Notify, due: Instant) {
        if self.armed.is_some_and(|armed| due < armed) {
            self.armed = Some(due);
            wake.notify_one();
        }
    }
}

#[derive(Debug)]
struct Entry {
    job: Arc<Job>,
    due: Instant,
    /// Past this, the lease may have ended in the backend: the earliest of its keys'.
    deadline: Instant,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .field("auto_renew", &self.auto_renew)
            .finish()
    }
}

impl Keeper {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves `State` consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stop keeping `id`, and report its lease lost.
    fn lose(&self, id: u64, job: &Job, reason: LostReason) {
        {
            let mut state = self.lock();
            if let Some(entry) = state.entries.remove(&id) {
                state.schedule.remove(&(entry.due, id));
            }
        }
        tracing::warn!(target: "dlock", job = ?job, %reason, "lock lost");
        job.lease.mark_lost(reason);
    }

    /// Schedule `id` again (if it is still kept).
    fn reschedule(&self, id: u64, next: impl FnOnce(&Entry) -> Schedule) {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(&id) else { return };
        let Schedule { due, deadline } = next(entry);
        // The entry that fired was taken off the schedule, but since then a key added
        // (`add_key`) or a move of the backend (`due_now`, `renew_now`: this renewal may have
        // gone to the old server) may have put it back: one entry per lease, or renewals would
        // run twice, and not later than that.
        let old = entry.due;
        let due = if state.schedule.remove(&(old, id)) { due.min(old) } else { due };
        let Some(entry) = state.entries.get_mut(&id) else { return };
        entry.due = due;
        entry.deadline = deadline;
        state.schedule.insert((due, id));
        state.wake_if_before(&self.wake, due);
    }
}

/// The keeper's task. The carrier is made before the task exists: if the runtime shuts down
/// under the task — also before it ever polled it (a current-thread runtime whose `block_on`
/// returned with the guard) — the leases it keeps move to dlock's runtime.
fn run(keeper: Arc<Keeper>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let moves_on = MovesOn(Some(Arc::clone(&keeper)));
    keep(keeper, moves_on)
}

async fn keep(keeper: Arc<Keeper>, mut moves_on: MovesOn) {
    let mut idle_since = None;
    loop {
        let now = Instant::now();
        let mut fired = Vec::new();
        let next = {
            let mut state = keeper.lock();
            while let Some(&(due, id)) = state.schedule.first() {
                if due > now {
                    break;
                }
                state.schedule.pop_first();
                if let Some(entry) = state.entries.get(&id) {
                    fired.push((id, Arc::clone(&entry.job), entry.deadline));
                }
            }
            if state.entries.is_empty() {
                let since = *idle_since.get_or_insert(now);
                if now >= since + IDLE_EXIT {
                    state.task = None;
                    moves_on.0 = None;
                    return;
                }
            } else {
                idle_since = None;
            }
            let next = state.schedule.first().map_or(now + IDLE_TICK, |&(due, _)| due.min(now + IDLE_TICK));
            state.armed = Some(next);
            next
        };
        for (id, job, deadline) in fired {
            if now >= deadline {
                let reason = if job.auto_renew { LostReason::Unconfirmed } else { LostReason::Expired };
                keeper.lose(id, &job, reason);
            } else if job.auto_renew {
                tokio::spawn(renew_once(Arc::clone(&keeper), id, job, deadline));
            } else {
                // A lease without renewal is due at its deadline; earlier only for `renew_now`.
                tokio::spawn(recheck_once(Arc::clone(&keeper), id, job, deadline));
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = keeper.wake.notified() => {}
        }
        keeper.lock().armed = None;
    }
}

/// Carries a keeper's task; dropped while the task runs — its runtime shuts down, while a
/// guard it renews may live on (returned from that runtime's `block_on`, moved to another
/// runtime) — it starts the task again on dlock's runtime. A lease whose renewal was on the
/// wire (its task was cancelled with the runtime) is put back on the schedule.
struct MovesOn(Option<Arc<Keeper>>);

impl Drop for MovesOn {
    fn drop(&mut self) {
        let Some(keeper) = self.0.take() else { return };
        // A panic in the task is a bug: starting it again would only repeat it.
        if std::thread::panicking() {
            return;
        }
        let mut state = keeper.lock();
        if state.entries.is_empty() {
            return;
        }
        let Some(dlocks) = crate::background::handle() else { return };
        let due: Vec<(Instant, u64)> = state.entries.iter().map(|(id, entry)| (entry.due, *id)).collect();
        state.schedule.extend(due);
        state.armed = None;
        state.task = Some(dlocks.spawn(run(Arc::clone(&keeper))));
    }
}

/// Send one renewal of every key of `job`, bounded by the lease deadline.
async fn renew_once(keeper: Arc<Keeper>, id: u64, job: Arc<Job>, deadline: Instant) {
    let Some(in_flight) = job.lease.begin_renewal() else { return };
    let sent = Instant::now();
    let outcome = tokio::time::timeout_at(deadline, renew_all(&job)).await;
    drop(in_flight);
    match outcome {
        Ok(Ok(renewed)) if renewed > 0 => {
            tracing::trace!(target: "dlock", job = ?job, "lease renewed");
            // The keys renewed now hold a full ttl from `sent`. Keys added after the renewal took
            // its list were not renewed: the lease lasts only as long as their own allows.
            let next = {
                let mut keys = job.keys.lock().unwrap_or_else(PoisonError::into_inner);
                for key in &mut keys[..renewed] {
                    key.term = Term { sent, length: job.ttl };
                }
                deadline_and_due(&keys, true)
            };
            let Some(next) = next else { return };
            job.lease.extend(next.deadline);
            keeper.reschedule(id, |_| next);
        }
        Ok(Ok(_)) => keeper.lose(id, &job, LostReason::Refused),
        Ok(Err(())) => {
            // Retried soon; the deadline still bounds the whole.
            // Spaced for the shortest lease among the keys (a key handed over may have less
            // than the ttl), so that several retries fit before its deadline.
            let shortest =
                job.keys.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|k| k.term.length).min();
            let retry = Instant::now() + (shortest.unwrap_or(job.ttl) / 12).max(Duration::from_millis(5));
            keeper.reschedule(id, |entry| Schedule {
                due: retry.min(entry.deadline),
                deadline: entry.deadline,
            });
        }
        Err(_) => keeper.lose(id, &job, LostReason::Unconfirmed),
    }
}

/// Ask the backend whether it still holds every key of `job`, a lease without renewal, after
/// [`renew_now`]: each key is renewed to the end it already had, so the lease does not grow.
/// A key the backend no longer holds loses the lease now (`Refused`); otherwise it is due at
/// its deadline again, as before (an unanswered check changes nothing: it ends there anyway).
async fn recheck_once(keeper: Arc<Keeper>, id: u64, job: Arc<Job>, deadline: Instant) {
    let Some(in_flight) = job.lease.begin_renewal() else { return };
    let keys: Vec<(FullKey, Instant)> = job
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|k| (k.key.clone(), k.term.sent + k.term.length))
        .collect();
    let check = async {
        for (key, end) in &keys {
            let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match job.backend.renew(key, &job.owner, left).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(err) => {
                    tracing::warn!(target: "dlock", key = %key, error = %err, "could not check a lease without renewal; it ends at its deadline");
                    return true;
                }
            }
        }
        true
    };
    let held = tokio::time::timeout_at(deadline, check).await;
    drop(in_flight);
    if let Ok(false) = held {
        keeper.lose(id, &job, LostReason::Refused);
    } else {
        keeper.reschedule(id, |entry| Schedule { due: entry.deadline, deadline: entry.deadline });
    }
}

/// `Ok(n)`: the first `n` keys (all there were when it started) renewed; `Ok(0)`: some key
/// refused; `Err`: backend failure.
async fn renew_all(job: &Job) -> Result<usize, ()> {
    let keys: Vec<FullKey> =
        job.keys.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|k| k.key.clone()).collect();
    for key in &keys {
        match job.backend.renew(key, &job.owner, job.ttl).await {
            Ok(true) => {}
            Ok(false) => return Ok(0),
            Err(err) => {
                tracing::warn!(target: "dlock", key = %key, error = %err, "lease renewal failed; retrying until the lease deadline");
                return Err(());
            }
        }
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Entry, Job, Keeper, KeptKey, Registration, Schedule};
    use crate::backend::{FullKey, LockBackend, MemoryBackend, TryAcquire};
    use crate::lease::{Lease, Term};

    const TTL: Duration = Duration::from_secs(30);

    /// A keeper with one lease (id 1, key `a`, taken now with `ttl`) whose renewal has fired:
    /// it is off the schedule, on the wire. Its registration, and when it was taken.
    fn renewal_on_the_wire(ttl: Duration) -> (Arc<Keeper>, Registration, Instant) {
        let keeper = Arc::new(Keeper::default());
        let now = Instant::now();
        let key = KeptKey { key: FullKey::new("", "a"), term: Term { sent: now, length: ttl } };
        let (due, deadline) = (key.term.due(), key.term.deadline());
        let job = Job {
            backend: Arc::new(MemoryBackend::new()),
            keys: Mutex::new(vec![key]),
            owner: Arc::from("owner"),
            ttl,
            auto_renew: true,
            lease: Lease::new(deadline, true),
        };
        {
            let mut state = keeper.lock();
            state.entries.insert(1, Entry { job: Arc::new(job), due, deadline });
            state.schedule.insert((due, 1));
            // It fired: the renewal is on the wire.
            state.schedule.pop_first();
        }
        let registration = Registration { keeper: Arc::clone(&keeper), id: 1 };
        (keeper, registration, now)
    }

    /// The keeper takes a lease's entry off the schedule when it fires; if a key is added
    /// while that renewal is on the wire, `add_key` schedules the lease again, earlier, and
    /// the renewal's own rescheduling must replace that entry rather than add a second one
    /// (two entries per lease would renew it twice, forever).
    #[tokio::test]
    async fn a_key_added_during_a_renewal_leaves_one_schedule_entry() {
        let (keeper, registration, now) = renewal_on_the_wire(TTL);
        // A key handed over with a short lease joins meanwhile: due sooner.
        registration.add_key(KeptKey {
            key: FullKey::new("", "b"),
            term: Term { sent: now, length: Duration::from_secs(5) },
        });
        // The renewal comes back and schedules the next one.
        let next = now + Duration::from_secs(1);
        keeper.reschedule(1, |entry| Schedule { due: next, deadline: entry.deadline });

        let schedule: Vec<_> = keeper.lock().schedule.iter().copied().collect();
        assert_eq!(schedule, [(next, 1)], "one entry for the lease");
        drop(registration);
        assert!(keeper.lock().schedule.is_empty());
    }

    /// A move of the backend seen while a renewal is on the wire (`due_now` after a lease
    /// epoch moved, or `renew_now`) makes the lease due at once; that renewal may have gone to
    /// the old server, so when it comes back its rescheduling must not put the lease off to
    /// its next renewal. Before, it did: the check the move asked for was lost, and a lease the
    /// new server lacks was found only at ttl/3.
    #[tokio::test]
    async fn a_move_seen_during_a_renewal_still_renews_at_once_after_it() {
        let (keeper, registration, now) = renewal_on_the_wire(TTL);
        // The backend moves meanwhile.
        registration.due_now();
        let moved = keeper.lock().entries.get(&1).map(|entry| entry.due);
        // The renewal comes back and schedules the next one, a third of the ttl away.
        keeper.reschedule(1, |entry| Schedule { due: now + TTL / 3, deadline: entry.deadline });

        let schedule: Vec<_> = keeper.lock().schedule.iter().copied().collect();
        let moved = moved.unwrap_or_else(|| panic!("the lease is kept"));
        assert_eq!(schedule, [(moved, 1)], "one entry for the lease, due when the move made it due");
        drop(registration);
    }

    /// Take `key` for `owner` on `backend` and have the current runtime's keeper keep it.
    async fn kept(backend: &Arc<dyn LockBackend>, key: &str, owner: &str) -> Registration {
        let (key, ttl, sent) = (FullKey::new("", key), Duration::from_secs(30), Instant::now());
        let got = backend.try_acquire(&key, owner, ttl).await.unwrap_or_else(|err| panic!("acquire: {err}"));
        assert!(matches!(got, TryAcquire::Acquired { .. }), "{got:?}");
        let term = Term { sent, length: ttl };
        let job = Job {
            backend: Arc::clone(backend),
            keys: Mutex::new(vec![KeptKey { key, term }]),
            owner: Arc::from(owner),
            ttl,
            auto_renew: true,
            lease: Lease::new(term.deadline(), true),
        };
        super::register(&tokio::runtime::Handle::current(), job)
    }

    /// A keeper whose task ended while its runtime idled is forgotten from the process-wide
    /// list when another runtime's keeper is made; this thread's cache still hands it out.
    /// A lease it keeps afterwards must still be reached by `renew_now` (what a failover
    /// signalled through `lease_epochs` triggers): before the fix, it was not, and the lease's
    /// loss waited for its next scheduled renewal.
    #[test]
    fn renew_now_reaches_a_keeper_that_was_forgotten_while_idle() {
        let paused = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime")
        };
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let a = paused();
        a.block_on(async {
            let registration = kept(&backend, "first", "o1").await;
            drop(registration);
            backend.release(&FullKey::new("", "first"), "o1").await.expect("release");
            // The keeper's task ends, idle.
            tokio::time::sleep(super::IDLE_EXIT * 2).await;
        });
        // Another runtime's keeper is made, on another thread: the idle one is forgotten.
        let other = {
            let backend = Arc::clone(&backend);
            std::thread::spawn(move || paused().block_on(async { kept(&backend, "other", "o2").await }))
                .join()
                .expect("the other runtime's thread")
        };
        a.block_on(async {
            let registration = kept(&backend, "second", "o3").await;
            let due = |registration: &Registration| {
                registration.keeper.lock().entries.get(&registration.id).map(|entry| entry.due)
            };
            let scheduled = due(&registration);
            super::renew_now(&Arc::downgrade(&backend));
            // The clock is paused: `now` is when renew_now ran.
            assert_eq!(
                due(&registration),
                Some(Instant::now()),
                "renew_now did not reach the lease (due at {scheduled:?})"
            );
            drop(registration);
        });
        drop(other);
    }
}
