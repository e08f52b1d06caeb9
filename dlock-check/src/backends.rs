//! Everything that touches dlock's backend-author API (`dlock::backend`), in one place: the
//! backend for a URL, the recording wrapper that logs every backend call, and the planted bugs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dlock::RedisBackend;
use dlock::backend::{
    BackendError, BackendErrorKind, BoxFuture, FullKey, LockBackend, MemoryBackend, ReleaseNotice,
    ReleaseOutcome, ReleaseWatch, TryAcquire,
};
use serde::{Deserialize, Serialize};

use crate::clock::Stamp;
use crate::history::{CallKind, CallResult, Event, Recorder};

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
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReleaseWithoutOwnerCheck => "release-without-owner-check",
            Self::TrustExpiredLease => "trust-expired-lease",
        })
    }
}

/// How to reach a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSettings {
    /// `memory`, or a `redis://` URL.
    pub url: String,
    /// The service's key prefix: every lock key (and the fencing counter) lives under it.
    pub prefix: String,
    /// The bound on every backend call.
    pub call_timeout: Duration,
}

/// A connected backend, and a way to delete one of its keys behind its holder's back.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The backend, as dlock sees it (before recording and planted bugs).
    pub backend: Arc<dyn LockBackend>,
    /// Deletes a key regardless of its owner.
    pub forcer: KeyForcer,
}

/// The backend for `settings.url`: `memory` (a new, empty `MemoryBackend`; clones of the
/// result share it) or `redis://…` (a `RedisBackend` with the call timeout, and its fencing
/// counter under the prefix).
pub async fn backend_for(settings: &BackendSettings) -> anyhow::Result<Connected> {
    let url = settings.url.as_str();
    if url == "memory" {
        let memory = MemoryBackend::new();
        return Ok(Connected { backend: Arc::new(memory.clone()), forcer: KeyForcer::Memory(memory) });
    }
    if url.starts_with("redis://") {
        let redis = RedisBackend::builder(url)
            .call_timeout(settings.call_timeout)
            .connect()
            .await
            .with_context(|| format!("connecting the lock backend to {url}"))?;
        let forcer = forcer_for(url, settings.call_timeout)?;
        return Ok(Connected { backend: Arc::new(redis), forcer });
    }
    bail!("unsupported backend URL `{url}`: expected `memory` or `redis://host:port`")
}

/// A [`KeyForcer`] for the Redis at `url` (the `drop-key` fault on a private server).
pub fn forcer_for(url: &str, call_timeout: Duration) -> anyhow::Result<KeyForcer> {
    let client = redis::Client::open(url).with_context(|| format!("{url} is not a Redis URL"))?;
    Ok(KeyForcer::Redis { client, conn: Arc::default(), call_timeout })
}

/// Deletes a lock key whoever holds it: the planted release bug, and the `drop-key` fault
/// (a backend that loses a key, as a failover to a replica that missed the write does).
#[derive(Clone)]
pub enum KeyForcer {
    /// `MemoryBackend::force_expire`.
    Memory(MemoryBackend),
    /// `DEL` on its own connection (made on first use).
    Redis {
        /// The server.
        client: redis::Client,
        /// The connection, once made.
        conn: Arc<tokio::sync::OnceCell<redis::aio::MultiplexedConnection>>,
        /// The bound on connecting and on the command.
        call_timeout: Duration,
    },
}

impl fmt::Debug for KeyForcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("KeyForcer::Memory"),
            Self::Redis { .. } => f.write_str("KeyForcer::Redis"),
        }
    }
}

impl KeyForcer {
    /// Connect now rather than at the first delete (a fault aimed at a holder must not spend
    /// the holder's section connecting).
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis { .. } => self.connection().await.map(drop),
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let Self::Redis { client, conn, call_timeout } = self else {
            return Err("not a Redis backend".into());
        };
        let connect = async {
            tokio::time::timeout(*call_timeout, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| "connecting for DEL timed out".to_owned())?
                .map_err(|err| format!("connecting for DEL: {err}"))
        };
        Ok(conn.get_or_try_init(|| connect).await?.clone())
    }

    /// Delete `full_key` (prefix included); `Ok(true)` if it existed.
    pub async fn delete(&self, full_key: &str) -> Result<bool, String> {
        match self {
            Self::Memory(memory) => Ok(memory.force_expire(full_key)),
            Self::Redis { call_timeout, .. } => {
                let mut conn = self.connection().await?;
                let deleted = tokio::time::timeout(
                    *call_timeout,
                    redis::cmd("DEL").arg(full_key).query_async::<i64>(&mut conn),
                )
                .await
                .map_err(|_| format!("DEL {full_key} timed out"))?
                .map_err(|err| format!("DEL {full_key}: {err}"))?;
                Ok(deleted > 0)
            }
        }
    }
}

/// The backend a worker's service uses: `real`, with `plant` (if any) planted into it, seen
/// through a recorder that writes every call (and every hand-off notice) to `recorder`.
pub fn instrument(real: &Connected, plant: Option<Plant>, recorder: Arc<Recorder>) -> Arc<dyn LockBackend> {
    let inner: Arc<dyn LockBackend> = match plant {
        None => Arc::clone(&real.backend),
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
            Plant::TrustExpiredLease => self.inner.release(key, owner),
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
            Plant::ReleaseWithoutOwnerCheck => self.inner.renew(key, owner, ttl),
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
