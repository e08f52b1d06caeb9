//! [`LockGuard`]: proof that the locks are held, and the way to let them go.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::backend::{FullKey, LockBackend};
use crate::background;
use crate::claim::{Claim, ClaimedKey};
use crate::context::{self, Frame};
use crate::error::{Error, LostReason};
use crate::keeper::Registration;
use crate::lease::Lease;
use crate::shared::Shared;

/// One key held by a guard.
#[derive(Debug, Clone)]
pub(crate) struct HeldKey {
    pub(crate) key: FullKey,
    pub(crate) fencing_token: u64,
}

/// Holds one or several locks until released or dropped.
///
/// While it lives, the lease is renewed in the background every ttl/3 (unless the request
/// said `.renew(false)`; a key handed over by a release is first renewed sooner, see
/// [`HANDOFF_LEASE`](crate::backend::HANDOFF_LEASE)), by a task on the runtime the lock was
/// taken on (on dlock's own thread once that runtime has ended): a guard kept between two
/// `block_on`s of a current-thread runtime is not renewed while that runtime idles (use a
/// multi-thread runtime, or a ttl that covers the pause). If
/// the lease is lost — a renewal refused, or not confirmed before
/// the lease could have ended — [`is_lost`](Self::is_lost) turns true and
/// [`lost`](Self::lost) resolves: stop the protected work then.
///
/// [`release`](Self::release) lets go and says whether the lock was still ours. Dropping the
/// guard releases it too, in the background: on the current tokio runtime, or on dlock's own
/// when there is none or the current one is shutting down.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let guard = service.lock("order:7").await?;
/// let token = guard.fencing_token(); // pass it to storage that checks it
/// assert!(token > 0 && !guard.is_lost());
/// assert!(guard.release().await?, "it was still ours");
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    shared: Arc<Shared>,
    /// Keys this guard took from the backend (empty for a purely re-entrant guard).
    held: Vec<HeldKey>,
    /// Keys the task already held when this guard was asked for.
    reentered: Vec<Frame>,
    owned: Option<Owned>,
    /// When the request that made this guard gives up: also how long an annotated body waits
    /// for its turn among re-entrant bodies of its keys.
    pub(crate) deadline: Instant,
}

/// What only a guard that took keys from the backend has.
pub(crate) struct Owned {
    pub(crate) owner: Arc<str>,
    pub(crate) lease: Arc<Lease>,
    pub(crate) keeper: Registration,
}

impl LockGuard {
    /// A guard over `held`, taken from the backend, and `reentered`, which the task held before.
    /// Its lease keeps the keys' local queue places until released or lost.
    pub(crate) fn owned(
        shared: Arc<Shared>,
        held: Vec<HeldKey>,
        reentered: Vec<Frame>,
        owned: Owned,
        deadline: Instant,
    ) -> Self {
        Self { shared, held, reentered, owned: Some(owned), deadline }
    }

    /// A guard over keys the task already held: it releases nothing.
    pub(crate) fn reentrant(shared: Arc<Shared>, reentered: Vec<Frame>, deadline: Instant) -> Self {
        Self { shared, held: Vec::new(), reentered, owned: None, deadline }
    }

    /// The key (the first one, for a guard over several keys), as requested, without the
    /// service's prefix.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("app:").build();
    /// let guard = service.lock("user:1").await?;
    /// assert_eq!(guard.key(), "user:1");
    /// # Ok(()) }
    /// ```
    pub fn key(&self) -> &str {
        self.keys().next().unwrap_or_default()
    }

    /// Every key this guard covers, in acquisition (sorted) order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock_all(["b", "a"]).await?;
    /// assert_eq!(guard.keys().collect::<Vec<_>>(), ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        let mut keys: Vec<&str> = self
            .held
            .iter()
            .map(|h| h.key.unprefixed())
            .chain(self.reentered.iter().map(|f| f.key.unprefixed()))
            .collect();
        keys.sort_unstable();
        keys.into_iter()
    }

    /// The (first) key as the backend stores it, the service's prefix included: what errors
    /// name, and what a fenced write inside the backend checks (e.g.
    /// `PostgresBackend::check_fence`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("app:").build();
    /// let guard = service.lock("account:7").await?;
    /// assert_eq!(guard.full_key(), "app:account:7");
    /// # Ok(()) }
    /// ```
    pub fn full_key(&self) -> &str {
        let held = self.held.iter().map(|h| h.key.as_str());
        held.chain(self.reentered.iter().map(|f| f.key.as_str())).min().unwrap_or_default()
    }

    /// The fencing token of the (first) key: strictly greater than any token issued before
    /// for that key on this backend. A re-entrant guard issues none: it has the token of the
    /// guard that took the key. See [`fencing_token()`](crate::fencing_token).
    ///
    /// A guard of several keys (`lock_all`) has a token per key, and one key's token fences
    /// only that key's storage: use [`fencing_tokens`](Self::fencing_tokens) there.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let first = service.lock("k").await?;
    /// let token = first.fencing_token();
    /// first.release().await?;
    /// assert!(service.lock("k").await?.fencing_token() > token);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fencing_tokens().next().map_or(0, |(_, t)| t)
    }

    /// Each key with its fencing token, in acquisition order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock_all(["from:1", "to:2"]).await?;
    /// for (key, token) in guard.fencing_tokens() {
    ///     println!("write to {key}'s storage with token {token}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn fencing_tokens(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let mut tokens: Vec<(&str, u64)> = self
            .held
            .iter()
            .map(|h| (h.key.unprefixed(), h.fencing_token))
            .chain(self.reentered.iter().map(|f| (f.key.unprefixed(), f.fencing_token)))
            .collect();
        tokens.sort_unstable();
        tokens.into_iter()
    }

    /// True when this guard was granted without a backend call because the task already held
    /// every key (re-entrancy). Such a guard releases nothing; the outer holder does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let outer = service.lock("k").await?;
    /// assert!(!outer.is_reentrant());
    /// outer.scope(async {
    ///     let inner = service.lock("k").await.unwrap();
    ///     assert!(inner.is_reentrant());
    /// }).await;
    /// # Ok(()) }
    /// ```
    pub fn is_reentrant(&self) -> bool {
        self.owned.is_none()
    }

    /// Whether the lease (or, for several keys, any of them) has been lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("k").ttl(std::time::Duration::from_millis(50)).renew(false).await?;
    /// assert!(!guard.is_lost());
    /// tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    /// assert!(guard.is_lost(), "without renewal the lease ended at its ttl");
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.leases().find_map(|l| l.lost_reason())
    }

    /// Resolves when the lease is lost, with the reason; never, while it is kept.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// # let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// # async fn do_the_work() {}
    /// let guard = service.lock("job:nightly").await?;
    /// tokio::select! {
    ///     // `biased`, the loss first: the work is never resumed once the lease has ended
    ///     // (say, after the process was frozen past it).
    ///     biased;
    ///     reason = guard.lost() => eprintln!("stopped: lock lost ({reason})"),
    ///     () = do_the_work() => {}
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) -> LostReason {
        let mut waiters: Vec<Pin<Box<dyn Future<Output = LostReason> + Send + '_>>> =
            self.leases().map(|lease| Box::pin(lease.lost()) as Pin<Box<_>>).collect();
        // No lease (cannot happen for a live guard): never resolves, like a kept lease.
        std::future::poll_fn(|cx| {
            // The clock is read at every poll, not only when the deadline's timer fires: a
            // process frozen past its lease (SIGSTOP, a long GC-like stall) is woken by
            // whatever its tasks waited for, and a task polled before the runtime has fired
            // its timers must still see the loss first.
            if let Some(reason) = self.lost_reason() {
                return Poll::Ready(reason);
            }
            for waiter in &mut waiters {
                if let Poll::Ready(reason) = waiter.as_mut().poll(cx) {
                    return Poll::Ready(reason);
                }
            }
            Poll::Pending
        })
        .await
    }

    fn leases(&self) -> impl Iterator<Item = &Arc<Lease>> + '_ {
        self.owned.iter().map(|o| &o.lease).chain(self.reentered.iter().map(|f| &f.lease))
    }

    /// Run `fut` as the holder of this guard's locks: inside it, [`fencing_token()`] and
    /// [`fencing_token_for()`] return this guard's tokens, and nested requests for these keys
    /// are re-entrant.
    ///
    /// For a guard that re-entered keys the task already held, the body waits until no other
    /// re-entrant body of those keys runs in this task (two bodies under one key never run at
    /// once, even side by side in a `join!`). Inside its own scope, `scope` takes its turn among the
    /// bodies nested there, as a new request for the keys made there would: never for itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("job:nightly").await?;
    /// let token = guard.scope(async { dlock::fencing_token() }).await;
    /// assert_eq!(token, Some(guard.fencing_token()));
    /// # Ok(()) }
    /// ```
    ///
    /// [`fencing_token()`]: crate::fencing_token
    /// [`fencing_token_for()`]: crate::fencing_token_for
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        let _turn = self.pass_gates().await;
        self.scoped(fut).await
    }

    /// `fut`, run in this guard's scope (see [`scope`](Self::scope)), without waiting for
    /// the gates: the caller has passed them.
    pub(crate) fn scoped<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        context::with_frames(self.scope_frames(), fut)
    }

    /// The turn of this body among re-entrant bodies of its keys, waited for until `deadline`.
    pub(crate) async fn pass_gates_until(
        &self,
        deadline: Instant,
    ) -> Result<Vec<OwnedMutexGuard<()>>, Error> {
        // No re-entered key, no gate: skip the timer (this is every call that is not nested).
        if self.reentered.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        tokio::time::timeout_at(deadline, self.pass_gates())
            .await
            .map_err(|_| Error::Timeout { key: self.full_key().to_owned(), waited: started.elapsed() })
    }

    /// The turn of this body among re-entrant bodies of its keys (in key order, so two bodies
    /// never wait for each other).
    async fn pass_gates(&self) -> Vec<OwnedMutexGuard<()>> {
        let mut turn = Vec::with_capacity(self.reentered.len());
        for frame in &self.reentered {
            turn.push(frame.pass_gate().await);
        }
        turn
    }

    /// The frames of this guard's scope: every key, with gates of their own.
    fn scope_frames(&self) -> Vec<Frame> {
        let owned = self.owned.iter().flat_map(|owned| {
            self.held
                .iter()
                .map(|h| Frame::new(self.shared.id, h.key.clone(), h.fencing_token, Arc::clone(&owned.lease)))
        });
        owned.chain(self.reentered.iter().map(Frame::nested)).collect()
    }

    /// Release the locks now.
    ///
    /// `Ok(true)`: every key was still ours and is now free. `Ok(false)`: at least one had
    /// already been lost (expired or taken over) — whatever ran under it was not protected
    /// throughout. Renewal stops before the release is sent. A re-entrant guard releases
    /// nothing: it returns `Ok(true)` while the outer holder still holds the keys, `Ok(false)`
    /// once they were lost or the outer holder released them.
    ///
    /// `Err`: the backend did not answer a key's release. That key is then released again in
    /// the background, until it is answered or its lease has ended by itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
    /// let service = dlock::LockService::new(dlock::MemoryBackend::new());
    /// let guard = service.lock("k").await?;
    /// assert!(guard.release().await?, "it was still ours");
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<bool, Error> {
        match self.owned.take() {
            Some(owned) => Release::begin(&self.shared, std::mem::take(&mut self.held), owned).run().await,
            None => Ok(self.lost_reason().is_none()),
        }
    }
}

/// A guard's release, begun: the claim on its keys exists before anything is awaited, so the
/// keys are released even if the release is dropped before it ran.
struct Release {
    held: Vec<HeldKey>,
    lease: Arc<Lease>,
    keeper: Registration,
    backend: Arc<dyn LockBackend>,
    /// The keys not yet released: if this is dropped half-way (its caller gave up, or its
    /// runtime shut down), the claim releases them in the background.
    pending: Claim,
}

impl Release {
    fn begin(shared: &Shared, held: Vec<HeldKey>, owned: Owned) -> Self {
        let Owned { owner, lease, keeper } = owned;
        let backend = Arc::clone(&shared.backend);
        let mut pending = Claim::new(Arc::clone(&backend), owner, Some(Arc::clone(&lease)));
        let ends_by = lease.deadline();
        pending.keys = held.iter().map(|h| ClaimedKey { key: h.key.clone(), ends_by }).collect();
        Self { held, lease, keeper, backend, pending }
    }

    async fn run(self) -> Result<bool, Error> {
        let Self { held, lease, keeper, backend, mut pending } = self;
        // No renewal may be sent after the release: stop them, and give one on the wire a
        // moment to come back, so the release sees what it said. No longer: its answer may
        // never come while the runtime that sent it idles (a guard dropped at the end of a
        // `block_on`), and a renewal that lands after the release is owner-checked: it finds
        // the key not this owner's and changes nothing.
        // (With none on the wire, as almost always, no timer is set up.)
        if !lease.stop_renewals_now() {
            let _ = tokio::time::timeout(RENEWAL_ON_THE_WIRE, lease.stop_renewals()).await;
        }
        drop(keeper);
        let lost_before = lease.lost_reason().is_some();
        lease.mark_released();
        let released = pending.release_now().await;
        let all_ours = !lost_before && released.all_held;
        let others_waiting = released.others_waiting;
        let first_err = released.first_error.map(|(key, err)| {
            tracing::warn!(target: "dlock", key = %key, error = %err, "release failed; retrying in the background until the lease ends");
            Error::backend(backend.name(), Some(&key), err)
        });
        // Only now may the next task of this process compete for the keys. When other
        // processes wait for them too (or a key was handed to one), it gives them a head start
        // first: without it the lock would mostly stay in this process, whose next waiter is
        // woken without a round trip; and after a hand-off its attempt could only fail, taking
        // CPU and Redis time from the hand-off (measured: 3.6 → 2.4 round trips per hand-off).
        // The next task waits for the head start itself: a timer here would be on this
        // runtime, which may idle from now on (a current-thread runtime whose `block_on` ends).
        // A key whose release failed is still this process's: the claim, which retries it in
        // the background, gives the places up once that is answered or the lease has ended.
        if first_err.is_none() {
            if others_waiting {
                lease.drop_tickets_with_head_start(Instant::now() + CROSS_PROCESS_COURTESY);
            } else {
                lease.drop_tickets();
            }
        }
        tracing::debug!(target: "dlock", keys = ?held.iter().map(|h| &h.key).collect::<Vec<_>>(), still_ours = all_ours, "lock released");
        match first_err {
            Some(err) => Err(err),
            None => Ok(all_ours),
        }
    }
}

/// How long a releasing process's next task for a key (one that waited, or one that asks right
/// after) lets waiters of other processes go first: a few times a cross-process hand-off on a
/// LAN.
const CROSS_PROCESS_COURTESY: Duration = Duration::from_millis(2);

/// How long a release waits for a renewal on the wire to come back before it goes ahead.
const RENEWAL_ON_THE_WIRE: Duration = Duration::from_millis(100);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(owned) = self.owned.take() else { return };
        let mut release = Release::begin(&self.shared, std::mem::take(&mut self.held), owned);
        // On this runtime if there is one; if it is shutting down (the end of a test, a panic
        // unwinding through `block_on`), the claim moves the release to dlock's own runtime.
        release.pending = release.pending.in_background_task();
        // On a current-thread runtime the release may start there and then stall half-sent:
        // the `block_on` that started it returned, and nobody drives that runtime any more
        // (its request waits on that runtime's timer, or on a connection whose driver runs
        // there). dlock's runtime then releases the keys itself (owner-checked: a second
        // release of a key already released, or taken by another since, changes nothing).
        let done = Done(Arc::new(AtomicBool::new(false)));
        if let Ok(current) = Handle::try_current()
            && current.runtime_flavor() == RuntimeFlavor::CurrentThread
        {
            let mut backup = Claim::new(
                Arc::clone(&release.backend),
                Arc::clone(&release.pending.owner),
                Some(Arc::clone(&release.lease)),
            )
            .in_background_task();
            backup.keys = release
                .pending
                .keys
                .iter()
                .map(|k| ClaimedKey { key: k.key.clone(), ends_by: k.ends_by })
                .collect();
            let done = Arc::clone(&done.0);
            background::spawn_here(async move {
                tokio::time::sleep(STALLED_RELEASE).await;
                if done.load(Ordering::Acquire) {
                    backup.disarm();
                }
                // Dropped with keys left: released on dlock's runtime.
                drop(backup);
            });
        }
        background::spawn(async move {
            let _done = done;
            let _ = release.run().await;
        });
    }
}

/// Set when a dropped guard's release is done, or has handed what is left to its claim (it
/// was dropped half-way: its runtime shut down).
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How long a dropped guard's release may take on a current-thread runtime before dlock's
/// runtime sends it itself: longer than a release that was never started there takes to move
/// to dlock's runtime, a renewal on the wire included (100 ms + 100 ms).
const STALLED_RELEASE: Duration = Duration::from_millis(300);

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("fencing_token", &self.fencing_token())
            .field("reentrant", &self.is_reentrant())
            .field("lost", &self.is_lost())
            .finish()
    }
}
