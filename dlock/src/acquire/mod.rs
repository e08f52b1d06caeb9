//! The acquisition algorithm: from what a request asks ([`LockSpec`]) to a [`LockGuard`].
//!
//! 1. Check the request, sort and merge its keys (one order for everybody: no deadlock).
//! 2. Keys the current task already holds are re-entered, not taken again.
//! 3. A *pass* takes the other keys one by one, each first at the head of its local queue
//!    ([`LocalQueues`](crate::local_queue::LocalQueues)) and then in the backend
//!    ([`key::take`]), under one owner token. The lease starts with the first key: the keeper
//!    renews the keys taken so far while the pass waits for the next, and the lease keeps
//!    their local queue places, which it gives up as soon as it is lost. A key taken while
//!    the backend's lease epoch moved (a failover) is renewed at once, in case the keeper's
//!    check of every lease ran before the key was kept.
//! 4. If the lease ended before the pass could hand it over (a key taken early was lost while
//!    it waited for a later one), everything is given back and a new pass starts, while `wait`
//!    allows. Whatever a failed or abandoned pass took is released by its
//!    [`Claim`].

mod key;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::backend::FullKey;
use crate::claim::Claim;
use crate::context::{self, Frame};
use crate::error::Error;
use crate::guard::{HeldKey, LockGuard, Owned};
use crate::keeper::{self, Job, KeptKey, Registration};
use crate::lease::Lease;
use crate::limits;
use crate::shared::Shared;
use crate::time::saturating_add;

/// What a request asks for, before the service's defaults fill the gaps.
#[derive(Debug, Clone)]
pub(crate) struct LockSpec {
    pub(crate) keys: Vec<String>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    pub(crate) renew: bool,
}

/// What one request asks of each of its keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub(crate) ttl: Duration,
    /// Whether the keeper renews the lease while it is held.
    pub(crate) auto_renew: bool,
    /// When the request gives up.
    pub(crate) deadline: Instant,
    /// When the request began (for the wait it reports).
    pub(crate) started: Instant,
}

/// Take the locks `spec` asks for on `shared`'s backend.
pub(crate) async fn acquire(shared: &Arc<Shared>, spec: LockSpec) -> Result<LockGuard, Error> {
    let LockSpec { mut keys, ttl, wait, renew } = spec;
    let ttl = ttl.unwrap_or(shared.default_ttl);
    let wait = wait.unwrap_or(shared.default_wait);
    limits::validate(&keys, ttl)?;
    let handle = Handle::try_current().map_err(|_| Error::NoRuntime)?;
    keys.sort_unstable();
    keys.dedup();

    // Re-entrancy: keys this task already holds are not taken again.
    let mut reentered = Vec::new();
    keys.retain(|key| match context::held(shared.id, key) {
        Some(frame) => {
            reentered.push(frame);
            false
        }
        None => true,
    });
    // Re-entering a lock whose lease has ended (or that its holder released) would grant a key
    // this task no longer holds.
    if let Some((frame, reason)) = reentered.iter().find_map(|f| f.lease.lost_reason().map(|r| (f, r))) {
        return Err(Error::Lost { key: frame.key.to_string(), reason });
    }
    let started = Instant::now();
    // `wait(Duration::MAX)` means "wait as long as it takes".
    let deadline = saturating_add(started, wait);
    if keys.is_empty() {
        return Ok(LockGuard::reentrant(Arc::clone(shared), reentered, deadline));
    }
    let keys: Vec<FullKey> = keys.iter().map(|key| shared.full_key(key)).collect();
    for key in &keys {
        shared
            .backend
            .check_key(key)
            .map_err(|reason| Error::InvalidInput { what: "key", reason: format!("`{key}`: {reason}") })?;
    }

    let ask = Ask { ttl, auto_renew: renew, deadline, started };
    loop {
        let mut pass = Pass::new(shared, &handle, ask);
        if let Some((lease, keeper)) = pass.run(&keys).await? {
            return Ok(pass.into_guard(lease, keeper, reentered));
        }
        // The lease ended before the pass could hand it over; try again while `wait` allows.
        let now = Instant::now();
        if now >= ask.deadline {
            return Err(Error::Timeout { key: keys[0].to_string(), waited: now - started });
        }
    }
}

/// One attempt at the whole set of keys, under one owner token.
struct Pass<'a> {
    shared: &'a Arc<Shared>,
    handle: &'a Handle,
    ask: Ask,
    /// What this pass took and has not handed to a guard.
    claim: Claim,
    held: Vec<HeldKey>,
    /// The lease and its keeper registration, from the first key on. The lease keeps the
    /// local queue places of the keys taken.
    kept: Option<(Arc<Lease>, Registration)>,
}

impl<'a> Pass<'a> {
    fn new(shared: &'a Arc<Shared>, handle: &'a Handle, ask: Ask) -> Self {
        // A new owner token per pass: a late release of the last pass's keys (still being
        // retried in the background) must not match this pass's locks.
        let claim = Claim::new(Arc::clone(&shared.backend), owner_token(), None);
        Self { shared, handle, ask, claim, held: Vec::new(), kept: None }
    }

    /// Take every key. `Ok(Some(..))`: all held, under this lease, which this keeper
    /// registration keeps; `Ok(None)`: the lease ended before every key was taken (and the
    /// keys were given back).
    async fn run(&mut self, keys: &[FullKey]) -> Result<Option<(Arc<Lease>, Registration)>, Error> {
        for key in keys {
            if let Err(err) = self.take(key).await {
                if matches!(err, Error::Timeout { .. }) {
                    // The backend answers: free what this pass took before returning.
                    self.give_back().await;
                } else {
                    // The claim frees them in the background when dropped here, and then gives
                    // up their local queue places.
                    drop(self.kept.take());
                }
                tracing::debug!(target: "dlock", error = %err, "lock not acquired");
                return Err(err);
            }
        }
        // The lease may have ended before the request could hand it over: a key taken early
        // was lost while the request waited for a later one, or the backend answered too late.
        // (Every pass has a key, so it has a lease.)
        if let Some((lease, _)) = &self.kept
            && lease.lost_reason().is_none()
        {
            return Ok(self.kept.take());
        }
        self.give_back().await;
        Ok(None)
    }

    /// Stop keeping what this pass took, free it now, then let the next task of this process
    /// compete for it: at once if every release was answered; otherwise the claim, which
    /// retries the rest in the background, gives the places up once that is done (until then
    /// the backend still holds a key for this process, and the next task would only find it
    /// held).
    async fn give_back(&mut self) {
        let lease = self.kept.take().map(|(lease, _keeper)| lease);
        let released = self.claim.release_now().await;
        if let Some(lease) = lease
            && released.first_error.is_none()
        {
            lease.drop_tickets();
        }
    }

    /// Take `key`: first its local queue, then the backend; then keep its lease.
    async fn take(&mut self, key: &FullKey) -> Result<(), Error> {
        let Some(ticket) = self.shared.queues.enter(key, self.ask.deadline).await else {
            return Err(Error::Timeout { key: key.to_string(), waited: self.ask.started.elapsed() });
        };
        // If the backend's lease epoch moves before the key is kept (it moved to another server
        // while the key was taken, or just after), the keeper's check of every lease it keeps
        // (`keeper::renew_now`) may already have run without this one: it is checked at once.
        let epoch = self.shared.lease_epoch();
        let grant = key::take(&*self.shared.backend, key, &mut self.claim, self.ask).await?;
        let kept = KeptKey { key: key.clone(), term: grant.term };
        match &self.kept {
            Some((_, registration)) => registration.add_key(kept),
            None => {
                let lease = Lease::new(kept.term.deadline(), self.ask.auto_renew);
                let job = Job {
                    backend: Arc::clone(&self.shared.backend),
                    keys: Mutex::new(vec![kept]),
                    owner: Arc::clone(&self.claim.owner),
                    ttl: self.ask.ttl,
                    auto_renew: self.ask.auto_renew,
                    lease: Arc::clone(&lease),
                };
                // Renewed while the pass goes on: an abandoned pass releases its keys until
                // this lease has ended, not only until their first lease would have.
                self.claim.kept_by(&lease);
                self.kept = Some((lease, keeper::register(self.handle, job)));
            }
        }
        if let Some((lease, registration)) = &self.kept {
            if self.shared.lease_epoch() != epoch {
                registration.due_now();
            }
            // Given up as soon as the lease is lost (at once, if it already is): the backend
            // may then let another owner in, and the next task of this process may compete.
            lease.hold_ticket(ticket);
        }
        self.held.push(HeldKey { key: key.clone(), fencing_token: grant.fencing_token });
        Ok(())
    }

    /// Hand everything to a guard.
    fn into_guard(mut self, lease: Arc<Lease>, keeper: Registration, reentered: Vec<Frame>) -> LockGuard {
        self.claim.disarm();
        tracing::debug!(target: "dlock", keys = ?self.held.iter().map(|h| &h.key).collect::<Vec<_>>(),
            waited = ?self.ask.started.elapsed(), "lock acquired");
        let owned = Owned { owner: Arc::clone(&self.claim.owner), lease, keeper };
        let held = std::mem::take(&mut self.held);
        LockGuard::owned(Arc::clone(self.shared), held, reentered, owned, self.ask.deadline)
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
