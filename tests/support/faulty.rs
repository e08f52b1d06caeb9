//! [`FaultyBackend`]: a [`LockBackend`] wrapper that records every call dlock makes and
//! injects faults, per operation and per key, following a list of [`Rule`]s.
//!
//! It is the one test backend: counting calls, recording their order and time, refusing or
//! failing renewals, losing or delaying answers, hanging, reporting other waiters, scripting
//! the answer of an acquire attempt, and sending release notices (plain or hand-offs) to the
//! watches it handed out. Time is tokio's, so tests on a paused clock are exact.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dlock::LockBackend;
use dlock::backend::{
    BackendError, BackendErrorKind, BoxFuture, FullKey, ReleaseNotice, ReleaseOutcome, ReleaseWatch,
    TryAcquire,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// A [`LockBackend`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`LockBackend::try_acquire`].
    TryAcquire,
    /// [`LockBackend::release`].
    Release,
    /// [`LockBackend::renew`].
    Renew,
    /// [`LockBackend::watch_releases`].
    WatchReleases,
}

impl Op {
    /// Its place in [`State::answered`].
    fn index(self) -> usize {
        self as usize
    }
}

/// One call dlock made, as the wrapper saw it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// When it was made (tokio's clock).
    pub at: Instant,
    /// Which operation.
    pub op: Op,
    /// The key, as the backend sees it (the service's prefix included).
    pub key: String,
    /// The owner token it was made for (`None` for [`Op::WatchReleases`]).
    pub owner: Option<String>,
    /// The ttl it asked for ([`Op::TryAcquire`] and [`Op::Renew`]).
    pub ttl: Option<Duration>,
}

/// What a [`Rule`] does to a call.
///
/// `Refuse`, `Fail`, `Hang`, `Delay` and `Answer` act before the call reaches the wrapped
/// backend; `LoseAnswer`, `DelayAnswer` and `OthersWaiting` after it answered.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer "no" without reaching the store: a renewal `false`, a release "was not held", an
    /// acquire attempt `Held` (nothing known), a watch `None` (no notices).
    Refuse,
    /// Fail with a [`BackendError`] of this kind without reaching the store.
    Fail(BackendErrorKind),
    /// Never answer, and never reach the store.
    Hang,
    /// Reach the store this much later (a slow request).
    Delay(Duration),
    /// Answer an acquire attempt with this, without reaching the store.
    Answer(TryAcquire),
    /// Reach the store, then lose its answer: fail with a [`BackendError`] of this kind.
    LoseAnswer(BackendErrorKind),
    /// Reach the store, and answer this much later (a slow reply).
    DelayAnswer(Duration),
    /// A release answers that other clients wait for the key
    /// ([`ReleaseOutcome::others_waiting`]).
    OthersWaiting,
}

impl Fault {
    fn acts_before_the_call(&self) -> bool {
        matches!(self, Fault::Refuse | Fault::Fail(_) | Fault::Hang | Fault::Delay(_) | Fault::Answer(_))
    }
}

/// A fault for calls of one operation — on every key, or on one — every time, or for the next
/// `n` calls it matches.
///
/// Of the rules that match a call, the first (in the order they were injected) that acts
/// before the call and the first that acts after it apply; each uses up one of its times.
///
/// ```
/// use std::time::Duration;
/// use dlock::backend::{BackendErrorKind, TryAcquire};
/// use dlock_tests::{Op, Rule};
///
/// Rule::refuse(Op::Renew);                                            // every renewal, every key
/// Rule::fail(Op::Renew, BackendErrorKind::Connection).times(2);       // the next two renewals
/// Rule::lose_answer(Op::Release, BackendErrorKind::Timeout).key("a").once();
/// Rule::delay_answer(Op::TryAcquire, Duration::from_millis(80)).key("b").if_acquired();
/// Rule::answer(TryAcquire::Held { remaining: None, newest_token: Some(1) }).key("k");
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    op: Op,
    fault: Fault,
    key: Option<String>,
    times: Option<usize>,
    if_acquired: bool,
}

impl Rule {
    /// `fault` on every call of `op`.
    pub fn new(op: Op, fault: Fault) -> Self {
        match fault {
            Fault::Answer(_) => assert_eq!(op, Op::TryAcquire, "Fault::Answer scripts acquire attempts"),
            Fault::OthersWaiting => assert_eq!(op, Op::Release, "Fault::OthersWaiting is a release's"),
            _ => {}
        }
        Self { op, fault, key: None, times: None, if_acquired: false }
    }

    /// [`Fault::Refuse`].
    pub fn refuse(op: Op) -> Self {
        Self::new(op, Fault::Refuse)
    }

    /// [`Fault::Fail`].
    pub fn fail(op: Op, kind: BackendErrorKind) -> Self {
        Self::new(op, Fault::Fail(kind))
    }

    /// [`Fault::Hang`].
    pub fn hang(op: Op) -> Self {
        Self::new(op, Fault::Hang)
    }

    /// [`Fault::Delay`].
    pub fn delay(op: Op, by: Duration) -> Self {
        Self::new(op, Fault::Delay(by))
    }

    /// [`Fault::Answer`], for acquire attempts.
    pub fn answer(outcome: TryAcquire) -> Self {
        Self::new(Op::TryAcquire, Fault::Answer(outcome))
    }

    /// [`Fault::LoseAnswer`].
    pub fn lose_answer(op: Op, kind: BackendErrorKind) -> Self {
        Self::new(op, Fault::LoseAnswer(kind))
    }

    /// [`Fault::DelayAnswer`].
    pub fn delay_answer(op: Op, by: Duration) -> Self {
        Self::new(op, Fault::DelayAnswer(by))
    }

    /// [`Fault::OthersWaiting`], for releases.
    pub fn others_waiting() -> Self {
        Self::new(Op::Release, Fault::OthersWaiting)
    }

    /// Only calls on `key` (the full key, as the backend sees it).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only the next `n` calls it matches.
    #[must_use]
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Only the next call it matches.
    #[must_use]
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Only acquire attempts that took the key (for faults that act after the call).
    #[must_use]
    pub fn if_acquired(mut self) -> Self {
        assert!(!self.fault.acts_before_the_call(), "if_acquired needs the answer: {:?}", self.fault);
        self.if_acquired = true;
        self
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.op == op && self.times != Some(0) && self.key.as_deref().is_none_or(|k| k == key)
    }
}

/// A [`LockBackend`] that forwards to another, records every call (see [`Call`]) and injects
/// the faults its [`Rule`]s describe. Clones share the rules and the record.
///
/// Its release watches are its own, fed by the wrapped backend's notices and by
/// [`notify`](Self::notify) / [`grant`](Self::grant), so a test can announce releases and
/// hand-offs the store never made.
///
/// ```
/// use std::time::Duration;
/// use dlock::{LockService, LostReason, MemoryBackend};
/// use dlock_tests::{FaultyBackend, Op, Rule};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let faulty = FaultyBackend::new(MemoryBackend::new());
/// let service = LockService::new(faulty.clone());
/// let guard = service.lock("k").ttl(Duration::from_millis(300)).await.unwrap();
/// faulty.inject(Rule::refuse(Op::Renew)); // from now on the store says "not yours"
/// assert_eq!(guard.lost().await, LostReason::Refused);
/// assert_eq!(faulty.count(Op::Renew), 1);
/// assert_eq!(faulty.count(Op::TryAcquire), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FaultyBackend {
    inner: Arc<dyn LockBackend>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    calls: Vec<Call>,
    /// Calls that answered, per [`Op::index`].
    answered: [usize; 4],
    /// The senders of the watches handed out, by full key.
    watches: Vec<(String, Arc<watch::Sender<ReleaseNotice>>)>,
}

impl FaultyBackend {
    /// Wrap `inner`, with no rules yet.
    pub fn new(inner: impl LockBackend) -> Self {
        Self::wrap(Arc::new(inner))
    }

    /// Wrap a shared backend, with no rules yet.
    pub fn wrap(inner: Arc<dyn LockBackend>) -> Self {
        Self { inner, state: Arc::default() }
    }

    /// Add a rule (after the ones already there).
    pub fn inject(&self, rule: Rule) {
        self.state().rules.push(rule);
    }

    /// Remove every rule: calls go straight through again.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// Every call so far, in the order they were made.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The calls of `op` so far.
    pub fn calls_of(&self, op: Op) -> Vec<Call> {
        self.state().calls.iter().filter(|c| c.op == op).cloned().collect()
    }

    /// How many calls of `op` were made (faulted or not).
    pub fn count(&self, op: Op) -> usize {
        self.state().calls.iter().filter(|c| c.op == op).count()
    }

    /// How many calls were made, of every operation.
    pub fn total(&self) -> usize {
        self.state().calls.len()
    }

    /// How many calls of `op` have answered (their futures completed).
    pub fn answered(&self, op: Op) -> usize {
        self.state().answered[op.index()]
    }

    /// The latest call of `op`.
    pub fn last(&self, op: Op) -> Option<Call> {
        self.state().calls.iter().rev().find(|c| c.op == op).cloned()
    }

    /// Send `notice` to every live watch this wrapper handed out for `key` (the full key);
    /// how many it reached.
    pub fn notify(&self, key: &str, notice: ReleaseNotice) -> usize {
        let mut state = self.state();
        state.watches.retain(|(_, tx)| !tx.is_closed());
        let mut reached = 0;
        for (_, tx) in state.watches.iter().filter(|(k, _)| k == key) {
            tx.send_replace(notice.clone());
            reached += 1;
        }
        reached
    }

    /// Announce that `key` was handed to `owner` under `fencing_token`
    /// ([`ReleaseNotice::Granted`]); how many watches it reached. The store is not touched.
    pub fn grant(&self, key: &str, owner: &str, fencing_token: u64) -> usize {
        self.notify(key, ReleaseNotice::Granted { owner: Arc::from(owner), fencing_token })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a call and pick the rule that acts on it before it reaches the store.
    fn arrive(&self, op: Op, key: &FullKey, owner: Option<&str>, ttl: Option<Duration>) -> Option<Fault> {
        let mut state = self.state();
        let call =
            Call { at: Instant::now(), op, key: key.to_string(), owner: owner.map(str::to_owned), ttl };
        state.calls.push(call);
        take_fault(&mut state.rules, op, key, |rule| rule.fault.acts_before_the_call())
    }

    /// The rule that acts on an answer, if any.
    fn after(&self, op: Op, key: &FullKey, acquired: bool) -> Option<Fault> {
        take_fault(&mut self.state().rules, op, key, |rule| {
            !rule.fault.acts_before_the_call() && (acquired || !rule.if_acquired)
        })
    }

    /// One call: the fault before it, the wrapped backend's answer (made by `call`), the fault
    /// after it.
    async fn run<'a, T: Reply>(
        &'a self,
        op: Op,
        key: &'a FullKey,
        before: Option<Fault>,
        call: impl FnOnce() -> BoxFuture<'a, Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let answer = match before {
            None => call().await,
            Some(Fault::Delay(by)) => {
                tokio::time::sleep(by).await;
                call().await
            }
            Some(Fault::Refuse) => Ok(T::refused()),
            Some(Fault::Fail(kind)) => Err(injected(kind, op)),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Answer(outcome)) => Ok(T::scripted(outcome)),
            Some(after) => unreachable!("{after:?} acts after the call"),
        };
        let acquired = answer.as_ref().is_ok_and(Reply::acquired);
        let answer = match self.after(op, key, acquired) {
            None => answer,
            Some(Fault::LoseAnswer(kind)) => Err(injected(kind, op)),
            Some(Fault::DelayAnswer(by)) => {
                tokio::time::sleep(by).await;
                answer
            }
            Some(Fault::OthersWaiting) => answer.map(Reply::with_others_waiting),
            Some(before) => unreachable!("{before:?} acts before the call"),
        };
        self.state().answered[op.index()] += 1;
        answer
    }

    /// A watch of this wrapper's own over `inner`'s: it hears what `inner` hears, and what
    /// [`notify`](Self::notify) sends.
    fn relay(&self, key: &FullKey, mut inner: ReleaseWatch) -> ReleaseWatch {
        let hearing = inner.hearing();
        let (tx, rx) = watch::channel(ReleaseNotice::Released);
        let tx = Arc::new(tx);
        self.state().watches.push((key.to_string(), Arc::clone(&tx)));
        let forward = tokio::spawn(async move {
            loop {
                let notice = inner.released().await;
                if tx.send(notice).is_err() {
                    return;
                }
            }
        });
        let relayed = ReleaseWatch::new(rx, Some(Box::new(AbortOnDrop(forward.abort_handle()))));
        match hearing {
            Some(hearing) => relayed.with_hearing(hearing),
            None => relayed,
        }
    }
}

/// The fault of the first rule that matches `op` on `key` and passes `acts`; uses up one of
/// its times.
fn take_fault(rules: &mut [Rule], op: Op, key: &str, acts: impl Fn(&Rule) -> bool) -> Option<Fault> {
    let rule = rules.iter_mut().find(|rule| rule.matches(op, key) && acts(rule))?;
    if let Some(times) = &mut rule.times {
        *times -= 1;
    }
    Some(rule.fault.clone())
}

fn injected(kind: BackendErrorKind, op: Op) -> BackendError {
    BackendError::new(kind, format!("injected fault ({op:?})"))
}

/// Ends the task that relays notices when its watch is dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the answers of the four operations have in common, for [`FaultyBackend::run`].
trait Reply: Sized {
    /// The answer [`Fault::Refuse`] gives.
    fn refused() -> Self;
    /// The answer [`Fault::Answer`] gives.
    fn scripted(outcome: TryAcquire) -> Self {
        unreachable!("only acquire attempts are scripted, not {outcome:?}")
    }
    /// Whether this answer took the key.
    fn acquired(&self) -> bool {
        false
    }
    /// This answer, saying that others wait.
    fn with_others_waiting(self) -> Self {
        self
    }
}

impl Reply for TryAcquire {
    fn refused() -> Self {
        TryAcquire::Held { remaining: None, newest_token: None }
    }
    fn scripted(outcome: TryAcquire) -> Self {
        outcome
    }
    fn acquired(&self) -> bool {
        matches!(self, TryAcquire::Acquired { .. })
    }
}

impl Reply for ReleaseOutcome {
    fn refused() -> Self {
        ReleaseOutcome::new(false)
    }
    fn with_others_waiting(self) -> Self {
        ReleaseOutcome::with_others_waiting(self, true)
    }
}

impl Reply for bool {
    fn refused() -> Self {
        false
    }
}

impl Reply for Option<ReleaseWatch> {
    fn refused() -> Self {
        None
    }
}

impl LockBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn check_key(&self, key: &FullKey) -> Result<(), String> {
        self.inner.check_key(key)
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        let before = self.arrive(Op::TryAcquire, key, Some(owner), Some(ttl));
        Box::pin(self.run(Op::TryAcquire, key, before, move || self.inner.try_acquire(key, owner, ttl)))
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        let before = self.arrive(Op::Release, key, Some(owner), None);
        Box::pin(self.run(Op::Release, key, before, move || self.inner.release(key, owner)))
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let before = self.arrive(Op::Renew, key, Some(owner), Some(ttl));
        Box::pin(self.run(Op::Renew, key, before, move || self.inner.renew(key, owner, ttl)))
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        let before = self.arrive(Op::WatchReleases, key, None, None);
        Box::pin(async move {
            let watch =
                self.run(Op::WatchReleases, key, before, move || self.inner.watch_releases(key)).await;
            Ok(watch?.map(|inner| self.relay(key, inner)))
        })
    }

    /// The wrapped backend's: a Sentinel or Cluster backend behind faults still has its leases
    /// checked at once when it moves.
    fn lease_epochs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.lease_epochs()
    }
}
