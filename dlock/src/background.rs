//! dlock's own runtime: one thread per process, started on first use, for the work that must
//! not die with the runtime that happened to start it.
//!
//! A service registered once serves every runtime of the process (the `#[tokio::test]`
//! pattern: one global service, a new runtime per test). Work tied to no caller — the watch
//! that renews every lease when a backend moves to another server, the release of a guard
//! dropped as its runtime shuts down, the wait for the answer of a Redis release sent behind
//! an unanswered acquisition, the cancel of an abandoned PostgreSQL statement and the release
//! sent behind it — runs here. Everything
//! else stays on the caller's runtime, where it costs nothing extra: the release of a dropped
//! guard is spawned there first ([`spawn`]), and only when that runtime cancels it (it is
//! shutting down), or — a current-thread runtime — does not start it soon (nobody blocks on it
//! any more), is the work handed over here ([`Rescue`]). A backend's subscriber, which
//! wakes waiters, runs on the runtime that made the backend when that is a multi-thread one,
//! and moves here if that runtime ends first ([`spawn_lasting`]).

use std::future::Future;
#[cfg(feature = "redis")]
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

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

/// Work that lasts as long as its owner (a backend's subscriber), and can start over from what
/// it keeps in itself. (Only the Redis backends keep subscribers, so only their builds have it.)
#[cfg(feature = "redis")]
pub(crate) trait Lasting: Send + 'static {
    /// Run until the work is done. When its runtime shuts down this is dropped half-way;
    /// [`interrupted`](Lasting::interrupted) is then called, and it runs again on dlock's
    /// runtime.
    fn run(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Its run was cut short: put right what the run left half done before it starts over.
    fn interrupted(&mut self);
}

/// Run `work` on the caller's runtime if that is a multi-thread one, and on dlock's runtime
/// otherwise; if the caller's runtime shuts down before `work` is done, it starts over on
/// dlock's.
///
/// On the caller's multi-thread runtime, work that wakes the caller's tasks (a notice that a
/// lock is free) reaches them without a hop to another thread — and waking a parked thread is
/// what a hand-off mostly costs on an idle machine. A current-thread runtime runs its tasks
/// only while some caller blocks on it, so work for every runtime of the process cannot live
/// there.
#[cfg(feature = "redis")]
pub(crate) fn spawn_lasting(work: impl Lasting) {
    let work: Box<dyn Lasting> = Box::new(work);
    match Handle::try_current() {
        Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => {
            drop(current.spawn(run_lasting(work)));
        }
        _ => spawn_here(run_lasting(work)),
    }
}

/// The task that runs `work`. The guard is made before the task exists: a runtime that shuts
/// down before it ever polled the task drops the guard with it, and the work is handed over
/// all the same.
#[cfg(feature = "redis")]
fn run_lasting(work: Box<dyn Lasting>) -> impl Future<Output = ()> + Send + 'static {
    let mut carried = HandOver(Some(work));
    async move {
        if let Some(work) = carried.0.as_mut() {
            work.run().await;
        }
        // Done: nothing to hand over.
        drop(carried.0.take());
    }
}

/// Carries [`Lasting`] work; dropped with the work unfinished (its runtime cancelled the
/// task, or never ran it), it starts the work over on dlock's runtime.
#[cfg(feature = "redis")]
struct HandOver(Option<Box<dyn Lasting>>);

#[cfg(feature = "redis")]
impl Drop for HandOver {
    fn drop(&mut self) {
        let Some(mut work) = self.0.take() else { return };
        work.interrupted();
        // A panic in the work is a bug: starting it again would only repeat it.
        if std::thread::panicking() {
            return;
        }
        if let Some(dlocks) = handle() {
            drop(dlocks.spawn(run_lasting(work)));
        }
    }
}

/// Run `work` in the background: on the caller's runtime when there is one, else on dlock's.
///
/// A current-thread runtime runs its tasks only while some caller blocks on it: a guard
/// dropped at the end of a `block_on` (a program that keeps one runtime and blocks on it per
/// operation) would be released only at the next `block_on`, maybe long after its lease ran
/// out. So on such a runtime the work also waits on dlock's runtime, which takes it if the
/// caller's has not started it within [`IDLE_RUNTIME_GRACE`]. (It is started there first so that
/// a test on a paused clock, whose runtime is driven, sees it run on that clock.)
///
/// Work that must not be lost when the caller's runtime shuts down keeps what it needs in a
/// value whose `Drop` hands the rest to [`spawn_here`] when it sees [`Rescue::Cancelled`]
/// (see [`Claim`](crate::claim::Claim)).
pub(crate) fn spawn<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let current = match Handle::try_current() {
        Ok(current) => current,
        Err(_) => return spawn_here(work),
    };
    if current.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return drop(current.spawn(work));
    }
    // Whichever runtime gets to it first runs it.
    let slot = Arc::new(Mutex::new(Some(work)));
    let take = |slot: &Mutex<Option<F>>| slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let here = Arc::clone(&slot);
    drop(current.spawn(async move {
        if let Some(work) = take(&here) {
            work.await;
        }
    }));
    spawn_here(async move {
        tokio::time::sleep(IDLE_RUNTIME_GRACE).await;
        if let Some(work) = take(&slot) {
            work.await;
        }
    });
}

/// How long work spawned on a current-thread runtime waits for that runtime to start it before
/// dlock's runtime does ([`spawn`]).
const IDLE_RUNTIME_GRACE: Duration = Duration::from_millis(100);

/// Where unfinished background work goes when the value that carries it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescue {
    /// Dropped by its owner (a caller that gave up): spawn the rest in the background.
    Abandoned,
    /// Dropped because the task running it was cancelled — its runtime is shutting down:
    /// only dlock's runtime can finish it.
    Cancelled,
}

/// Tests of [`Lasting`] work, which only the Redis backends use.
#[cfg(test)]
#[cfg(feature = "redis")]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Says on which thread each of its runs started; runs until dropped.
    struct Probe {
        started_on: mpsc::Sender<String>,
        interruptions: Arc<AtomicUsize>,
    }

    impl Lasting for Probe {
        fn run(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            let _ = self.started_on.send(thread);
            Box::pin(std::future::pending())
        }

        fn interrupted(&mut self) {
            self.interruptions.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe() -> (Probe, mpsc::Receiver<String>, Arc<AtomicUsize>) {
        let (started_on, runs) = mpsc::channel();
        let interruptions = Arc::new(AtomicUsize::new(0));
        (Probe { started_on, interruptions: Arc::clone(&interruptions) }, runs, interruptions)
    }

    fn multi_thread(name: &str) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn lasting_work_runs_on_a_multi_thread_caller_then_moves_to_dlocks_runtime() {
        let (work, runs, interruptions) = probe();
        let caller = multi_thread("caller-worker");
        caller.block_on(async { spawn_lasting(work) });
        let first = runs.recv_timeout(Duration::from_secs(5)).expect("the work ran");
        assert_eq!(first, "caller-worker");
        drop(caller);
        let second = runs.recv_timeout(Duration::from_secs(5)).expect("the work ran again");
        assert_eq!(second, "dlock-background");
        assert_eq!(interruptions.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lasting_work_dropped_before_it_ever_ran_is_handed_over_too() {
        let (work, runs, interruptions) = probe();
        // What a runtime that shuts down before a worker polled the task does to it.
        drop(run_lasting(Box::new(work)));
        let started = runs.recv_timeout(Duration::from_secs(5)).expect("the work ran");
        assert_eq!(started, "dlock-background");
        assert_eq!(interruptions.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lasting_work_of_a_current_thread_caller_runs_on_dlocks_runtime() {
        let (work, runs, interruptions) = probe();
        let caller = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        caller.block_on(async { spawn_lasting(work) });
        drop(caller);
        let started = runs.recv_timeout(Duration::from_secs(5)).expect("the work ran");
        assert_eq!(started, "dlock-background");
        assert_eq!(interruptions.load(Ordering::SeqCst), 0);
    }
}
