//! Everything that touches dlock's backend-author API (`dlock::backend`), in one place: the
//! backend for a URL, the recording wrapper that logs every backend call, and the planted bugs
//! (all in the backend but `body-before-lease`, which the manual-API tasks plant on themselves).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dlock::RedisBackend;
use dlock::backend::{
    BackendError, BackendErrorKind, BoxFuture, FullKey, LockBackend, MemoryBackend, ReleaseNotice,
    ReleaseOutcome, ReleaseWatch, TryAcquire,
};
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::forcer::KeyForcer;
use crate::history::{CallKind, CallResult, Event, Recorder};
use crate::redis_url::{redact, scheme};

/// The longest first lease of a key handed over by a release (dlock's `HANDOFF_LEASE`).
pub const HANDOFF_LEASE: Duration = dlock::backend::HANDOFF_LEASE;

/// A bug planted into the backend, to show that the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Plant {
    /// `release` deletes the key whoever holds it (a release script without its owner check).
    ReleaseWithoutOwnerCheck,
    /// `renew` answers "still yours" without asking the store, so a holder whose lease ended
    /// in the store keeps running.
    TrustExpiredLease,
    /// Not in the backend but in the manual-API tasks: they race the work against
    /// `guard.lost()` biased the wrong way, the body first — what `#[distributed_lock]` did
    /// before dlock fixed it. A process frozen past its lease (`pause-worker`) then runs the
    /// body on to its next write when it resumes.
    BodyBeforeLease,
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReleaseWithoutOwnerCheck => "release-without-owner-check",
            Self::TrustExpiredLease => "trust-expired-lease",
            Self::BodyBeforeLease => "body-before-lease",
        })
    }
}

/// How to reach a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSettings {
    /// `memory` (the checker's in-process backend), or any URL `dlock::connect` knows.
    pub url: String,
    /// The service's key prefix: every lock key lives under it.
    pub prefix: String,
    /// The bound on every backend call (every backend takes it: `redis://` through
    /// `RedisBackend::builder`, the others through `dlock::connect_with`).
    pub call_timeout: Duration,
    /// Replicas that must acknowledge every acquisition, and how long to wait for them
    /// (`replicas_acknowledge`); `None`: dlock's default, no waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
}

/// `--replicas N[:WAIT]`: replicas that must acknowledge every acquisition (Redis `WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// How many.
    pub count: u32,
    /// How long an acquisition waits for them.
    pub wait: Duration,
}

impl std::str::FromStr for Replicas {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (count, wait) = text.split_once(':').unwrap_or((text, "100ms"));
        let count = count
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{count}` in `{text}` is not a number of replicas (1 or more)"))?;
        let wait = humantime::parse_duration(wait)
            .map_err(|err| format!("`{wait}` in `{text}` is not a duration ({err}); write e.g. 1:100ms"))?;
        Ok(Self { count, wait })
    }
}

impl fmt::Display for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.count, humantime::format_duration(self.wait))
    }
}

/// A connected backend, and a way to delete one of its keys behind its holder's back.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The backend, as dlock sees it (before recording and planted bugs).
    pub backend: Arc<dyn LockBackend>,
    /// Deletes a key regardless of its owner.
    pub forcer: KeyForcer,
}

/// Why [`backend_for`] could not connect.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL itself is wrong, or names a backend this build of dlock does not have: trying
    /// again cannot help.
    Invalid(String),
    /// The backend did not answer (it may be down for a moment: a server fault).
    Unreachable(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(msg) | Self::Unreachable(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ConnectError {}

/// The backend for `settings.url`:
///
/// - `memory`: a new, empty `MemoryBackend` (clones of the result share it) — the checker's
///   in-process mode, with `force_expire` for `drop-key`;
/// - `redis://…`: a `RedisBackend` with the run's call timeout (`dlock::connect` has no way to
///   pass one), `DEL` for `drop-key` and the planted release bug;
/// - any other URL: whatever `dlock::connect_with(url, …)` makes of it (`redis-cluster://`,
///   `redis-sentinel://`, `postgres://`), with the run's call timeout; keys are deleted (for
///   `drop-key` and the planted release bug) as [`KeyForcer::for_url`] can: by `DEL` on a
///   cluster or a Sentinel group's primary, not on PostgreSQL or over TLS.
pub async fn backend_for(settings: &BackendSettings) -> Result<Connected, ConnectError> {
    let url = settings.url.as_str();
    if url == "memory" {
        let memory = MemoryBackend::new();
        return Ok(Connected { backend: Arc::new(memory.clone()), forcer: KeyForcer::Memory(memory) });
    }
    let backend: Arc<dyn LockBackend> = if scheme(url) == "redis" {
        let mut builder = RedisBackend::builder(url).call_timeout(settings.call_timeout);
        if let Some(r) = settings.replicas {
            builder = builder.replicas_acknowledge(r.count, r.wait);
        }
        Arc::new(builder.connect().await.map_err(|err| connect_error(url, &err))?)
    } else {
        let mut options = dlock::ConnectOptions::default().call_timeout(settings.call_timeout);
        if let Some(r) = settings.replicas {
            options = options.replicas_acknowledge(r.count, r.wait);
        }
        dlock::connect_with(url, options).await.map_err(|err| connect_error(url, &err))?
    };
    let forcer = KeyForcer::for_url(url, settings.call_timeout);
    Ok(Connected { backend, forcer })
}

fn connect_error(url: &str, err: &dlock::Error) -> ConnectError {
    let msg = format!("connecting the lock backend to {}: {err}", redact(url));
    match err {
        dlock::Error::Backend { .. } => ConnectError::Unreachable(msg),
        _ => ConnectError::Invalid(msg),
    }
}

/// The backend a worker's service uses: `real`, with `plant` (if any) planted into it, seen
/// through a recorder that writes every call (and every hand-off notice) to `recorder`.
pub fn instrument(real: &Connected, plant: Option<Plant>, recorder: Arc<Recorder>) -> Arc<dyn LockBackend> {
    let inner: Arc<dyn LockBackend> = match plant {
        None | Some(Plant::BodyBeforeLease) => Arc::clone(&real.backend),
        Some(plant) => {
            Arc::new(Planted { inner: Arc::clone(&real.backend), forcer: real.forcer.clone(), plant })
        }
    };
    Arc::new(Recording { inner, recorder })
}

/// A backend with a bug planted into it.
struct Planted {
    inner: Arc<dyn LockBackend>,
    forcer: KeyForcer,
    plant: Plant,
}

impl fmt::Debug for Planted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Planted").field("inner", &self.inner).field("plant", &self.plant).finish()
    }
}

impl Planted {
    /// The buggy release: the real one, and then, if the key was not ours, a delete anyway.
    async fn release_anyway(&self, key: &FullKey, ours: bool) -> Result<(), BackendError> {
        if !ours {
            self.forcer.delete(key.as_str()).await.map_err(|msg| {
                BackendError::new(BackendErrorKind::Other, format!("planted release: {msg}"))
            })?;
        }
        Ok(())
    }
}

impl LockBackend for Planted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        self.inner.try_acquire(key, owner, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        match self.plant {
            Plant::ReleaseWithoutOwnerCheck => Box::pin(async move {
                let outcome = self.inner.release(key, owner).await?;
                self.release_anyway(key, outcome.was_held).await?;
                Ok(ReleaseOutcome::new(true).with_others_waiting(outcome.others_waiting))
            }),
            Plant::TrustExpiredLease | Plant::BodyBeforeLease => self.inner.release(key, owner),
        }
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        match self.plant {
            Plant::TrustExpiredLease => Box::pin(async { Ok(true) }),
            Plant::ReleaseWithoutOwnerCheck | Plant::BodyBeforeLease => self.inner.renew(key, owner, ttl),
        }
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        self.inner.watch_releases(key)
    }
}

/// Forwards every call and records it, with when it was sent and when it came back.
struct Recording {
    inner: Arc<dyn LockBackend>,
    recorder: Arc<Recorder>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Recording {
    fn record(
        &self,
        key: &FullKey,
        owner: &str,
        call: CallKind,
        ttl: Option<Duration>,
        sent: Stamp,
        result: CallResult,
    ) {
        self.recorder.record(&Event::Call {
            key: key.unprefixed().to_owned(),
            owner: owner.to_owned(),
            call,
            ttl_ms: ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            sent,
            returned: Stamp::now(),
            result,
        });
    }
}

fn error_result(err: &BackendError) -> CallResult {
    CallResult::Error { msg: format!("{:?}: {err}", err.kind()) }
}

fn bool_result(answer: &Result<bool, BackendError>) -> CallResult {
    match answer {
        Ok(true) => CallResult::True,
        Ok(false) => CallResult::False,
        Err(err) => error_result(err),
    }
}

impl LockBackend for Recording {
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
        Box::pin(async move {
            let sent = Stamp::now();
            let answer = self.inner.try_acquire(key, owner, ttl).await;
            let result = match &answer {
                Ok(TryAcquire::Acquired { fencing_token }) => CallResult::Acquired { token: *fencing_token },
                Ok(TryAcquire::Held { .. }) => CallResult::Held,
                Err(err) => error_result(err),
            };
            self.record(key, owner, CallKind::Acquire, Some(ttl), sent, result);
            answer
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        Box::pin(async move {
            let sent = Stamp::now();
            let answer = self.inner.release(key, owner).await;
            let result = match &answer {
                Ok(outcome) if outcome.was_held => CallResult::True,
                Ok(_) => CallResult::False,
                Err(err) => error_result(err),
            };
            self.record(key, owner, CallKind::Release, None, sent, result);
            answer
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let sent = Stamp::now();
            let answer = self.inner.renew(key, owner, ttl).await;
            self.record(key, owner, CallKind::Renew, Some(ttl), sent, bool_result(&answer));
            answer
        })
    }

    /// The inner watch, relayed through a task that records every hand-off notice.
    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        Box::pin(async move {
            let Some(mut inner) = self.inner.watch_releases(key).await? else { return Ok(None) };
            let (tx, rx) = tokio::sync::watch::channel(ReleaseNotice::default());
            let recorder = Arc::clone(&self.recorder);
            let key = key.unprefixed().to_owned();
            let relay = tokio::spawn(async move {
                loop {
                    let notice = inner.released().await;
                    if let ReleaseNotice::Granted { owner, fencing_token } = &notice {
                        recorder.record(&Event::Granted {
                            key: key.clone(),
                            owner: owner.to_string(),
                            token: *fencing_token,
                            at: Stamp::now(),
                        });
                    }
                    if tx.send(notice).is_err() {
                        break;
                    }
                }
            });
            Ok(Some(ReleaseWatch::new(rx, Some(Box::new(AbortOnDrop(relay))))))
        })
    }
}

/// Ends the relay task when the watch it feeds is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_parse_with_an_optional_wait() {
        let one: Replicas = "1".parse().unwrap();
        assert_eq!(one, Replicas { count: 1, wait: Duration::from_millis(100) });
        let two: Replicas = "2:250ms".parse().unwrap();
        assert_eq!(two, Replicas { count: 2, wait: Duration::from_millis(250) });
        assert_eq!(two.to_string(), "2:250ms");
        assert!("0".parse::<Replicas>().unwrap_err().contains("1 or more"));
        assert!("1:soon".parse::<Replicas>().unwrap_err().contains("not a duration"));
    }
}
