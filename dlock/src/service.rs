//! [`LockService`]: a backend plus defaults, and the acquisition algorithm.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::backend::{HANDOFF_LEASE, LockBackend, ReleaseNotice, ReleaseWatch, TryAcquire, WAITER_RECHECK};
use crate::context;
use crate::error::{BackendError, BackendErrorKind, Error};
use crate::guard::{HeldKey, LockGuard};
use crate::keeper::{self, Job, KeptKey, Registration};
use crate::lease::Lease;
use crate::request::LockRequest;

/// The default lease: 30 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The default time to wait for a lock: 30 s.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The shortest ttl dlock accepts: shorter leases cannot be renewed reliably.
pub const MIN_TTL: Duration = Duration::from_millis(10);
/// The longest ttl dlock accepts (one year): the lease is renewed while held, so a long ttl
/// only lengthens how long a crashed holder blocks others.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long after a waiter's last attempt a backend may still hand it the key (the
/// [`LockBackend`] contract, point 6); a key this process may have been handed is released
/// until then, and its lease has ended by itself `ttl` later.
const HANDED_OVER_WITHIN: Duration = WAITER_RECHECK.saturating_mul(5);

/// A lock backend with its defaults: what annotated functions and [`lock`](crate::lock) use.
///
/// Cloning is cheap; clones share the backend, the defaults and the local wait queues.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::builder(dlock::MemoryBackend::new())
///     .key_prefix("payments:")
///     .default_ttl(Duration::from_secs(10))
///     .default_wait(Duration::from_secs(2))
///     .build();
/// let guard = service.lock("user:42").await?; // the backend sees "payments:user:42"
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockService {
    pub(crate) inner: Arc<ServiceInner>,
}

#[derive(Debug)]
pub(crate) struct ServiceInner {
    pub(crate) id: u64,
    pub(crate) backend: Arc<dyn LockBackend>,
    prefix: String,
    default_ttl: Duration,
    default_wait: Duration,
    /// One FIFO queue per key that tasks of this process are waiting for or holding: only its
    /// head competes in the backend.
    queues: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

/// Builds a [`LockService`]; see [`LockService::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the service"]
pub struct LockServiceBuilder {
    backend: Arc<dyn LockBackend>,
    prefix: String,
    default_ttl: Duration,
    default_wait: Duration,
}

impl LockServiceBuilder {
    /// Prepend `prefix` to every key this service locks (for example `"myapp:lock:"`), so
    /// several applications can share one Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease used when a call gives no `ttl` (default 30 s). Values are kept within
    /// [`MIN_TTL`] and [`MAX_TTL`].
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        self
    }

    /// How long a call waits for a lock when it gives no `wait` (default 30 s).
    pub fn default_wait(mut self, wait: Duration) -> Self {
        self.default_wait = wait;
        self
    }

    /// The service.
    pub fn build(self) -> LockService {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        LockService {
            inner: Arc::new(ServiceInner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                backend: self.backend,
                prefix: self.prefix,
                default_ttl: self.default_ttl,
                default_wait: self.default_wait,
                queues: Mutex::default(),
            }),
        }
    }
}

impl fmt::Debug for LockService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockService")
            .field("backend", &self.inner.backend.name())
            .field("key_prefix", &self.inner.prefix)
            .field("default_ttl", &self.inner.default_ttl)
            .field("default_wait", &self.inner.default_wait)
            .finish()
    }
}

impl LockService {
    /// A service over `backend` with the default settings (no prefix, ttl 30 s, wait 30 s).
    pub fn new(backend: impl LockBackend) -> Self {
        Self::builder(backend).build()
    }

    /// A builder to set the key prefix, default ttl and default wait.
    pub fn builder(backend: impl LockBackend) -> LockServiceBuilder {
        Self::builder_from_arc(Arc::new(backend))
    }

    /// Like [`builder`](Self::builder), for a backend that is already shared.
    pub fn builder_from_arc(backend: Arc<dyn LockBackend>) -> LockServiceBuilder {
        LockServiceBuilder {
            backend,
            prefix: String::new(),
            default_ttl: DEFAULT_TTL,
            default_wait: DEFAULT_WAIT,
        }
    }

    /// A request for the lock on `key`; set `.ttl()`, `.wait()`, `.renew()`, then `.await` it.
    pub fn lock(&self, key: impl Into<String>) -> LockRequest {
        LockRequest::new(Ok(self.clone()), vec![key.into()])
    }

    /// A request for all of `keys` at once.
    ///
    /// Duplicates are merged and the keys are taken in one deterministic (sorted) order, so
    /// two calls over overlapping sets never deadlock each other. It is all or nothing: if any
    /// key cannot be had within `wait`, those already taken are released. One renewal keeps
    /// them all, and the guard is lost if any one of them is.
    pub fn lock_all<I, K>(&self, keys: I) -> LockRequest
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        LockRequest::new(Ok(self.clone()), keys.into_iter().map(Into::into).collect())
    }

    /// The backend this service uses.
    pub fn backend(&self) -> &dyn LockBackend {
        &*self.inner.backend
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The ttl used when a call gives none.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// The wait used when a call gives none.
    pub fn default_wait(&self) -> Duration {
        self.inner.default_wait
    }

    /// Take the locks on `keys`: the algorithm behind every request.
    pub(crate) async fn acquire(
        &self,
        mut keys: Vec<String>,
        ttl: Option<Duration>,
        wait: Option<Duration>,
        renew: bool,
    ) -> Result<LockGuard, Error> {
        let ttl = ttl.unwrap_or(self.inner.default_ttl);
        let wait = wait.unwrap_or(self.inner.default_wait);
        validate(&keys, ttl)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidInput {
            what: "runtime",
            reason: "dlock locks must be awaited inside a tokio runtime (it keeps leases on tokio tasks)"
                .into(),
        })?;
        keys.sort_unstable();
        keys.dedup();

        // Re-entrancy: keys this task already holds are not taken again.
        let mut reentered = Vec::new();
        let prefix = &self.inner.prefix;
        keys.retain(|key| match context::held(self.inner.id, prefix, key) {
            Some(frame) => {
                reentered.push(frame);
                false
            }
            None => true,
        });
        // Re-entering a lock whose lease has ended (or that its holder released) would grant
        // a key this task no longer holds.
        if let Some((frame, reason)) = reentered.iter().find_map(|f| f.lease.lost_reason().map(|r| (f, r))) {
            return Err(Error::Lost { key: frame.key.to_string(), reason });
        }
        if keys.is_empty() {
            return Ok(LockGuard::reentrant(self.clone(), reentered));
        }

        let started = Instant::now();
        // `wait(Duration::MAX)` means "wait as long as it takes".
        let deadline = started.checked_add(wait).unwrap_or_else(|| far_future(started));
        // Each pass is one attempt at the whole set; a pass only repeats when the lease it got
        // had already ended (see below).
        loop {
            // A new owner token per pass: a late release of the last pass's keys (still being
            // retried in the background) must not match this pass's locks.
            let owner = owner_token();
            let mut claim = Claim::new(Arc::clone(&self.inner.backend), Arc::clone(&owner), None);
            let mut held: Vec<HeldKey> = Vec::with_capacity(keys.len());
            let mut tickets = Vec::with_capacity(keys.len());
            // The lease starts with the first key; the keeper renews the keys taken so far while
            // the request waits for the next ones.
            let mut kept: Option<(Arc<Lease>, Registration)> = None;
            for key in &keys {
                let full_key: Arc<str> = if prefix.is_empty() {
                    Arc::from(key.as_str())
                } else {
                    Arc::from([prefix.as_str(), key].concat())
                };
                let outcome = async {
                    let ticket = self.queue_ticket(&full_key, deadline, started).await?;
                    let ask = Ask { ttl, renew, deadline, started };
                    let (token, lease) = self.acquire_one(&full_key, &mut claim, ask).await?;
                    Ok::<_, Error>((ticket, token, lease))
                }
                .await;
                match outcome {
                    Ok((ticket, fencing_token, (sent, lease))) => {
                        tickets.push(ticket);
                        let key = KeptKey { key: Arc::clone(&full_key), sent, lease };
                        match &kept {
                            Some((_, registration)) => registration.add_key(key),
                            None => {
                                let lease = Lease::new(key.deadline(), renew);
                                let job = Job {
                                    backend: Arc::clone(&self.inner.backend),
                                    keys: Mutex::new(vec![key]),
                                    owner: Arc::clone(&owner),
                                    ttl,
                                    renew,
                                    lease: Arc::clone(&lease),
                                };
                                kept = Some((lease, keeper::register(&handle, job)));
                            }
                        }
                        held.push(HeldKey { full_key, fencing_token });
                    }
                    Err(err) => {
                        drop(kept);
                        if matches!(err, Error::Timeout { .. }) {
                            // The backend answers: free what this set took before returning.
                            claim.release_now().await;
                        }
                        // Otherwise `claim` frees them in the background when dropped here.
                        tracing::debug!(target: "dlock", error = %err, "lock not acquired");
                        return Err(err);
                    }
                }
            }
            let Some((lease, registration)) = kept else {
                return Err(no_key()); // `validate` made sure there is one
            };
            // The lease may have ended before the request could hand it over: a key taken early
            // was lost while the request waited for a later one, or the backend answered too late.
            // Give it back and try again while `wait` allows.
            if lease.lost_reason().is_some() {
                drop(registration);
                claim.release_now().await;
                drop(tickets);
                let now = Instant::now();
                if now < deadline {
                    continue;
                }
                let key = held.first().map(|h| h.full_key.to_string()).unwrap_or_default();
                return Err(Error::Timeout { key, waited: now - started });
            }
            claim.disarm();
            tracing::debug!(target: "dlock", keys = ?held.iter().map(|h| &h.full_key).collect::<Vec<_>>(),
                waited = ?started.elapsed(), "lock acquired");
            return Ok(LockGuard::owned(self.clone(), held, reentered, owner, lease, registration, tickets));
        }
    }

    /// Wait (FIFO, within this process) until this task is at the head of `full_key`'s queue.
    async fn queue_ticket(
        &self,
        full_key: &Arc<str>,
        deadline: Instant,
        started: Instant,
    ) -> Result<QueueTicket, Error> {
        let queue = {
            let mut queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(queues.entry(Arc::clone(full_key)).or_default())
        };
        // Made before waiting: if this call is dropped while it waits, the ticket still removes
        // the queue once nobody else uses it.
        let mut ticket =
            QueueTicket { service: Arc::clone(&self.inner), key: Arc::clone(full_key), guard: None };
        // Nobody of this process holds or waits for the key: the common case, without a timer.
        // (A tokio mutex hands itself to its queued waiters in order, so this never jumps it.)
        let guard = match Arc::clone(&queue).try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                let wait = tokio::time::timeout_at(deadline, queue.lock_owned());
                match Box::pin(wait).await {
                    Ok(guard) => guard,
                    Err(_) => {
                        return Err(Error::Timeout { key: full_key.to_string(), waited: started.elapsed() });
                    }
                }
            }
        };
        ticket.guard = Some(guard);
        Ok(ticket)
    }

    /// Compete in the backend for one key until acquired or `deadline`. Returns the fencing
    /// token, and the lease: the instant it is counted from and how long it lasts (the ttl, or
    /// [`HANDOFF_LEASE`] if shorter, for a key handed over by a release).
    ///
    /// The first attempt is made here; only if it does not take the key does the request wait,
    /// in [`wait_for_key`](Self::wait_for_key) (boxed, so that the future of every request does
    /// not carry the state of waiting).
    async fn acquire_one(
        &self,
        full_key: &Arc<str>,
        claim: &mut Claim,
        ask: Ask,
    ) -> Result<(u64, (Instant, Duration)), Error> {
        let mut claimed = false;
        let (sent, outcome) = self.attempt(full_key, claim, &mut claimed, ask.ttl).await;
        if let Ok(TryAcquire::Acquired { fencing_token }) = outcome {
            return Ok((fencing_token, (sent, ask.ttl)));
        }
        Box::pin(self.wait_for_key(full_key, claim, claimed, ask, sent, outcome)).await
    }

    /// One acquire attempt, sent now. Returns when it was sent, and the answer.
    ///
    /// The key is claimed before the request leaves: if the caller is dropped while the request
    /// is on the wire, the claim releases whatever the request may have taken.
    async fn attempt(
        &self,
        full_key: &Arc<str>,
        claim: &mut Claim,
        claimed: &mut bool,
        ttl: Duration,
    ) -> (Instant, Result<TryAcquire, BackendError>) {
        let sent = Instant::now();
        // Until then the key may be handed over, and that lease ends by itself.
        let until = sent + ttl + HANDED_OVER_WITHIN;
        match claim.keys.last_mut() {
            Some((_, last)) if *claimed => *last = until,
            _ => {
                claim.keys.push((Arc::clone(full_key), until));
                *claimed = true;
            }
        }
        (sent, self.inner.backend.try_acquire(full_key, &claim.owner, ttl).await)
    }

    /// The rest of [`acquire_one`](Self::acquire_one) once an attempt, sent at `sent`, came
    /// back with `outcome` and not the key: wait for release notices (or a timer) and try
    /// again until acquired or `deadline`.
    async fn wait_for_key(
        &self,
        full_key: &Arc<str>,
        claim: &mut Claim,
        // Whether the claim holds this key (the last entry of `claim.keys`).
        mut claimed: bool,
        ask: Ask,
        mut sent: Instant,
        mut outcome: Result<TryAcquire, BackendError>,
    ) -> Result<(u64, (Instant, Duration)), Error> {
        let Ask { ttl, renew, deadline, started } = ask;
        let backend = &*self.inner.backend;
        let mut watch: Option<ReleaseWatch> = None;
        let mut watched = false;
        let mut backoff = Duration::from_millis(2);
        // Whether an attempt put this request in the backend's waiting line (contract,
        // point 6): from then on the key may be handed to it at any time.
        let mut in_line = false;
        let mut error_pause = Duration::from_millis(50);
        loop {
            // Once in line, the claim stays while this waits, and releasing it (this call
            // dropped or given up) also takes the request out of line or frees what was
            // handed over.
            let (remaining, newest_token) = match outcome {
                Ok(TryAcquire::Acquired { fencing_token }) => return Ok((fencing_token, (sent, ttl))),
                Ok(TryAcquire::Held { remaining, newest_token }) => {
                    in_line |= newest_token.is_some();
                    if !in_line && claimed {
                        claim.keys.pop();
                        claimed = false;
                    }
                    (remaining, newest_token)
                }
                // The claim keeps the key: the script may have run even though its answer was
                // lost, and the owner-checked release touches nothing else (and the next
                // attempt, by the same owner, finds the key its own).
                Err(err) => {
                    let transient = matches!(
                        err.kind(),
                        BackendErrorKind::Connection
                            | BackendErrorKind::Timeout
                            | BackendErrorKind::Unavailable
                    );
                    // The attempt may have joined the line before its answer was lost: keep
                    // the claim, so that giving up withdraws it.
                    in_line |= watched;
                    let err = Error::backend(backend.name(), Some(full_key), err);
                    // A request that already found the key held and waits rides out a backend
                    // that stops answering for a moment (a restart, a failover) within its
                    // wait; a first attempt reports the error at once.
                    let now = Instant::now();
                    if !watched || !transient || now >= deadline {
                        return Err(err);
                    }
                    tracing::debug!(target: "dlock", key = %full_key, error = %err, "backend error while waiting; trying again");
                    tokio::time::sleep_until((now + error_pause).min(deadline)).await;
                    error_pause = (error_pause * 2).min(WAITER_RECHECK);
                    (sent, outcome) = self.attempt(full_key, claim, &mut claimed, ttl).await;
                    continue;
                }
            };
            error_pause = Duration::from_millis(50);
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout { key: full_key.to_string(), waited: now - started });
            }
            if !watched {
                // Register for release notices, then try again at once: a release between the
                // failed attempt and the registration is then not missed.
                watched = true;
                // Notices are only a speed-up: a backend that cannot give them (or not before
                // `deadline`) leaves this waiter on its timer.
                watch = match tokio::time::timeout_at(deadline, backend.watch_releases(full_key)).await {
                    Ok(Ok(watch)) => watch,
                    Ok(Err(err)) => {
                        tracing::debug!(target: "dlock", key = %full_key, error = %err, "no release notices; polling");
                        None
                    }
                    Err(_) => None,
                };
                if watch.is_some() {
                    (sent, outcome) = self.attempt(full_key, claim, &mut claimed, ttl).await;
                    continue;
                }
            }
            // Fallback timer: a holder that crashed releases nothing, its key just expires.
            // A little jitter spreads waiters of several processes, but never by much: the
            // holder's lease bounds how long a crashed holder can block. A waiter that hears
            // notices still asks every `WAITER_RECHECK`, which keeps its place in a
            // backend's waiting line and covers a hand-off notice it missed.
            let holder_left = remaining.unwrap_or(backoff) + Duration::from_millis(1);
            let nap = match &watch {
                Some(_) => {
                    holder_left.min(WAITER_RECHECK)
                        + jitter_up_to((holder_left / 20).min(Duration::from_millis(20)))
                }
                None => holder_left.min(backoff + jitter_up_to(backoff / 2)),
            };
            backoff = (backoff * 2).min(Duration::from_millis(100));
            let wake = (now + nap).min(deadline);
            match watch.as_mut() {
                None => tokio::time::sleep_until(wake).await,
                Some(w) => loop {
                    match tokio::time::timeout_at(wake, w.released()).await {
                        // Handed to this request after its last attempt (a newer token than
                        // that attempt saw): the lease, of at most `HANDOFF_LEASE`, began
                        // after `sent` reached the backend. A hand-off from before that attempt
                        // is stale (the attempt found the key held by another), and one with
                        // little of its lease known to be left is better renewed; a request
                        // that is not renewed needs its whole ttl, which a hand-off may not
                        // give. Asking again settles all three: the key is found this owner's
                        // and given a full ttl, with a new token.
                        Ok(ReleaseNotice::Granted { owner, fencing_token }) if owner == claim.owner => {
                            let fresh = newest_token.is_some_and(|newest| fencing_token > newest);
                            let lease = ttl.min(HANDOFF_LEASE);
                            if fresh && (renew || lease == ttl) && Instant::now() < sent + lease / 2 {
                                return Ok((fencing_token, (sent, lease)));
                            }
                            break;
                        }
                        // Handed to a waiter elsewhere: nothing to try until it is released
                        // again.
                        Ok(ReleaseNotice::Granted { .. }) => {}
                        Ok(ReleaseNotice::Released) | Err(_) => break,
                    }
                },
            }
            (sent, outcome) = self.attempt(full_key, claim, &mut claimed, ttl).await;
        }
    }
}

/// What one request asks of each of its keys.
#[derive(Debug, Clone, Copy)]
struct Ask {
    ttl: Duration,
    /// Whether the lease is renewed while held.
    renew: bool,
    /// When the request gives up.
    deadline: Instant,
    /// When the request began (for the wait it reports).
    started: Instant,
}

/// Keys this process may hold in the backend and has not released yet: those an acquisition
/// took before handing them to a [`LockGuard`], and those a guard's release has not sent yet.
///
/// If the work is abandoned — an acquisition failed, or its caller dropped it while it waited
/// for a later key or while a request was on the wire; a release was dropped half-way — the
/// claim releases the keys left (owner-checked, so nothing else is touched). A release that
/// gets no answer is retried in the background until it does, or until the lease it targets
/// has ended anyway, so no lock is left behind without an owner for its whole ttl.
pub(crate) struct Claim {
    backend: Arc<dyn LockBackend>,
    owner: Arc<str>,
    /// Each key with the instant after which its lease has ended anyway.
    pub(crate) keys: Vec<(Arc<str>, Instant)>,
    /// For a guard's release: its lease, marked released, and whose local queue places are
    /// given up once the keys are.
    lease: Option<Arc<Lease>>,
}

impl Claim {
    pub(crate) fn new(backend: Arc<dyn LockBackend>, owner: Arc<str>, lease: Option<Arc<Lease>>) -> Self {
        Self { backend, owner, keys: Vec::new(), lease }
    }

    /// Release the claimed keys now; what fails is retried in the background.
    async fn release_now(&mut self) {
        // A key leaves the claim only once answered, so a caller that drops this half-way
        // leaves the rest to the claim's `Drop`.
        let mut i = self.keys.len();
        while i > 0 {
            i -= 1;
            let (key, _) = &self.keys[i];
            if self.backend.release(key, &self.owner).await.is_ok() {
                self.keys.remove(i);
            }
        }
        self.release_in_background();
    }

    /// The keys now belong to a guard.
    fn disarm(&mut self) {
        self.keys.clear();
    }

    fn release_in_background(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        if let Some(lease) = &self.lease {
            lease.mark_released();
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (backend, owner, lease) =
            (Arc::clone(&self.backend), Arc::clone(&self.owner), self.lease.clone());
        let keys = std::mem::take(&mut self.keys);
        handle.spawn(async move {
            for (key, until) in keys.into_iter().rev() {
                let mut pause = Duration::from_millis(50);
                loop {
                    match backend.release(&key, &owner).await {
                        Ok(_) => break,
                        Err(err) if Instant::now() < until => {
                            tracing::debug!(target: "dlock", key = %key, error = %err, "retrying the release of an abandoned lock");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        Err(_) => break, // the lease has ended by itself
                    }
                }
            }
            if let Some(lease) = lease {
                lease.drop_tickets();
            }
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release_in_background();
    }
}

/// A fresh owner token: 128 random bits as 32 lowercase hex digits.
fn owner_token() -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[usize::try_from((bits >> (124 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    Arc::from(std::str::from_utf8(&text).unwrap_or_default())
}

/// An instant later than any wait: about 30 years on.
pub(crate) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(30 * 365 * 24 * 3600)
}

/// A random duration up to `d`, so waiters that failed together do not retry together.
fn jitter_up_to(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>())
}

fn no_key() -> Error {
    Error::InvalidInput { what: "key", reason: "no key was given; pass at least one key".into() }
}

fn validate(keys: &[String], ttl: Duration) -> Result<(), Error> {
    if keys.is_empty() {
        return Err(no_key());
    }
    if keys.iter().any(String::is_empty) {
        return Err(Error::InvalidInput {
            what: "key",
            reason: "a lock key is empty; build keys from a non-empty name such as \"user:42\"".into(),
        });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidInput {
            what: "ttl",
            reason: format!(
                "{ttl:?} is longer than the maximum of {MAX_TTL:?}; the lease is renewed while held, so a ttl of seconds or minutes is enough"
            ),
        });
    }
    if ttl < MIN_TTL {
        return Err(Error::InvalidInput {
            what: "ttl",
            reason: format!(
                "{ttl:?} is shorter than the minimum of {MIN_TTL:?}; leases that short cannot be renewed reliably"
            ),
        });
    }
    Ok(())
}

/// This task's place at the head of one key's local queue.
#[derive(Debug)]
pub(crate) struct QueueTicket {
    service: Arc<ServiceInner>,
    key: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut queues = self.service.queues.lock().unwrap_or_else(PoisonError::into_inner);
        // New references to a queue come only from the map, under this lock, or from one that
        // already counts; so a count of one (the map's own) means nobody waits on or holds it.
        if let Entry::Occupied(queue) = queues.entry(Arc::clone(&self.key))
            && Arc::strong_count(queue.get()) == 1
        {
            queue.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::LockService;
    use crate::error::LostReason;
    use crate::lease::Lease;
    use crate::memory::MemoryBackend;

    /// The keeper may report a lease lost between the acquisition's last check and the guard
    /// taking the local queue places: they must be given up then, not at release.
    #[tokio::test]
    async fn a_lease_lost_before_it_holds_its_queue_places_gives_them_up_at_once() {
        let service = LockService::new(MemoryBackend::new());
        let key: Arc<str> = Arc::from("k");
        let far = Instant::now() + Duration::from_secs(60);
        let ticket = service.queue_ticket(&key, far, Instant::now()).await.expect("the queue is free");
        let lease = Lease::new(far, true);
        lease.mark_lost(LostReason::Refused);
        lease.hold_tickets(vec![ticket]);

        let next =
            tokio::time::timeout(Duration::from_millis(200), service.queue_ticket(&key, far, Instant::now()))
                .await;
        assert!(
            matches!(next, Ok(Ok(_))),
            "the next task of the process still waits for a place held by a lost lease: {next:?}"
        );
    }
}
