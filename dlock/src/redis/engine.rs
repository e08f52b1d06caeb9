//! [`Engine`]: the lock operations every Redis backend shares — the scripts, sent over the
//! backend's command connections, and its release notices. [`RedisBackend`](super::RedisBackend),
//! [`RedisClusterBackend`](super::cluster::RedisClusterBackend) and
//! [`RedisSentinelBackend`](super::sentinel::RedisSentinelBackend) differ only in how they
//! connect.
//!
//! A release also goes out behind every unanswered acquisition of the same owner and key, on
//! that acquisition's connection (see [`unanswered`](super::unanswered)); `replicas_acknowledge`
//! adds a `WAIT` to each acquisition, in the same round trip, on a connection of the
//! acquisition's own (see [`lanes`](super::lanes)).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind, Value};

use super::connection::{Conn, Connections, SentOn, user_timeout};
use super::error::{is_try_again, not_replicated, unexpected};
use super::lanes::Lanes;
use super::layout;
use super::notify::Notifier;
use super::scripts::{Lua, Scripts};
use super::unanswered::{Kept, Unanswered};
use crate::backend::{
    BackendError, BackendErrorKind, CONFIRMATION_WAIT, FullKey, HANDOFF_LEASE, ReleaseOutcome, ReleaseWatch,
    TryAcquire, WAITER_RECHECK,
};
use crate::background;

/// How long a waiting process keeps its place in a key's waiting line without asking again.
/// dlock asks about every [`WAITER_RECHECK`]; a process that stopped asking (it crashed) is
/// not handed the lock after this.
const WAITING_LIFETIME: Duration = WAITER_RECHECK.saturating_mul(3);

/// How many replicas must acknowledge an acquisition, and how long to wait for them
/// (`WAIT <replicas> <timeout>`, sent with the acquisition on the same connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replication {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

/// Acquisitions that wait for replicas, each on a connection of its own while it runs
/// ([`Lanes`]): `WAIT` blocks the connection it is sent on until it returns, and neither
/// renewals and releases nor other acquisitions may queue behind it.
pub(super) struct Replicated {
    pub(super) wanted: Replication,
    pub(super) lanes: Lanes,
}

/// Until when a lease this backend granted may still be alive: each was asked for, or
/// renewed, within its ttl. Work that matters only while leases are held (the cluster's
/// failover watch) stays idle otherwise.
#[derive(Debug)]
pub(super) struct LeaseActivity {
    base: Instant,
    /// Milliseconds after `base`.
    until: AtomicU64,
}

#[cfg_attr(
    not(feature = "redis-cluster"),
    allow(dead_code, reason = "kept for the cluster's failover watch only")
)]
impl LeaseActivity {
    pub(super) fn new() -> Self {
        Self { base: Instant::now(), until: AtomicU64::new(0) }
    }

    /// A lease of up to `ttl` may be granted, or was renewed, now.
    fn note(&self, ttl: Duration) {
        self.until.fetch_max(millis(self.base.elapsed() + ttl), Ordering::Relaxed);
    }

    /// Whether a lease this backend granted may still be alive.
    pub(super) fn may_hold_leases(&self) -> bool {
        millis(self.base.elapsed()) < self.until.load(Ordering::Relaxed)
    }
}

/// The lock operations of one Redis backend.
pub(super) struct Engine {
    pub(super) conns: Arc<Connections>,
    pub(super) notifier: Arc<Notifier>,
    /// Kept for backends that need it (see [`LeaseActivity`]); the others skip the bookkeeping.
    activity: Option<Arc<LeaseActivity>>,
    /// Names this backend's channels: a hand-off is told to the one process it goes to.
    process: Arc<str>,
    scripts: &'static Scripts,
    replication: Option<Replicated>,
    /// Acquisitions whose answer never came, and the connections they were sent on.
    unanswered: Unanswered,
}

impl Engine {
    pub(super) fn new(
        conns: Arc<Connections>,
        notifier: Notifier,
        scripts: &'static Scripts,
        replication: Option<Replicated>,
    ) -> Self {
        let process = Arc::from(format!("{:016x}", rand::random::<u64>()));
        if replication.is_some() {
            // A hand-off is a write of the releasing process's, which no `WAIT` of this one
            // covered: the waiter asks again, and that acquisition waits for the replicas.
            notifier.hand_offs_as_releases();
        }
        Self {
            conns,
            notifier: Arc::new(notifier),
            activity: None,
            process,
            scripts,
            replication,
            unanswered: Unanswered::default(),
        }
    }

    /// This engine, noting its [`LeaseActivity`] in `activity`.
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code, reason = "for the cluster backend"))]
    pub(super) fn with_activity(mut self, activity: Arc<LeaseActivity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// A lease of up to `ttl` may be granted, or was renewed, now.
    fn note_activity(&self, ttl: Duration) {
        if let Some(activity) = &self.activity {
            activity.note(ttl);
        }
    }

    /// The channel on which this backend hears releases and hand-offs of `key`.
    pub(super) fn notice_channel(&self, key: &str) -> String {
        layout::notice_channel(key, &self.process)
    }

    /// Run `script` on `keys` with the arguments `args` adds; with `wait`, followed on the
    /// same connection by `WAIT`, whose answer (how many replicas acknowledged) comes second.
    ///
    /// It is sent as `EVALSHA`; a Redis that does not know the script (after a restart, a
    /// failover or `SCRIPT FLUSH`) answers `NOSCRIPT`, and it is sent again as `EVAL`, which
    /// also loads it. The command is built directly rather than through `redis::Script`, which
    /// copies every argument twice: this is the path every lock and release takes.
    ///
    /// With `sent_on`, the connection it is sent on is put there.
    async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &Lua,
        keys: &[&str],
        wait: Option<Replication>,
        sent_on: Option<&SentOn>,
        args: impl Fn(&mut Cmd),
    ) -> Result<(T, Option<i64>), BackendError> {
        let call = |mut conn: Conn| async move { send_script(&mut conn, script, keys, &args, wait).await };
        match (&self.replication, wait) {
            (Some(replicated), Some(_)) => replicated.lanes.call_noting(what, sent_on, call).await,
            _ => self.conns.call_noting(what, sent_on, call).await,
        }
    }

    /// One acquire script on the lock `key`, joining its waiting line `line` if given.
    async fn acquire_once(
        &self,
        key: &FullKey,
        owner: &str,
        ttl: Duration,
        line: Option<&str>,
        sent_on: &SentOn,
    ) -> Result<(Value, Option<i64>), BackendError> {
        let keys: &[&str] = match line {
            Some(line) => &[key.as_str(), line],
            None => &[key.as_str()],
        };
        let wait = self.replication.as_ref().map(|replicated| replicated.wanted);
        self.eval("the acquire script", &self.scripts.acquire, keys, wait, Some(sent_on), |cmd| {
            cmd.arg(owner).arg(millis(ttl));
            if line.is_some() {
                cmd.arg(millis(WAITING_LIFETIME)).arg(millis(ttl.min(HANDOFF_LEASE))).arg(&*self.process);
            }
        })
        .await
    }

    /// One release script on `keys` (the lock, and its waiting line if it may be named).
    async fn release_once(&self, keys: &[&str], owner: &str) -> Result<(i64, Option<i64>), BackendError> {
        self.eval("the release script", &self.scripts.release, keys, None, None, |cmd| {
            cmd.arg(owner);
        })
        .await
    }

    pub(super) async fn try_acquire(
        &self,
        key: &FullKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, BackendError> {
        // Taken now, or handed over later (within the ttl) to this owner in line.
        self.note_activity(ttl);
        // Join the waiting line only when a hand-off notice would be heard.
        let line = self.notifier.is_subscribed(|| self.notice_channel(key)).then(|| layout::line(key));
        // If the answer never comes, the script may still run, later: the connection it went on
        // is kept, and this owner's release of the key is sent there too, behind it.
        let keep = ttl.saturating_add(self.conns.call_timeout().saturating_mul(2));
        let mut attempt = self.unanswered.attempt(key, owner, keep);
        let answer = match self.acquire_once(key, owner, ttl, line.as_deref(), &attempt.sent_on).await {
            // A cluster slot in migration: ask without joining the line (the waiter then
            // waits on its timer until the slot has moved).
            Err(err) if line.is_some() && is_try_again(&err) => {
                self.acquire_once(key, owner, ttl, None, &attempt.sent_on).await
            }
            answer => answer,
        };
        if !matches!(&answer, Err(err) if err.kind() == BackendErrorKind::Timeout) {
            attempt.answered();
        }
        drop(attempt);
        let (answer, acked): (Value, _) = answer?;
        let number = |value: Option<&Value>| match value {
            Some(&Value::Int(n)) => u64::try_from(n).ok(),
            _ => None,
        };
        match answer {
            Value::Int(token) => {
                if let (Some(Replicated { wanted, .. }), Some(acked)) = (&self.replication, acked)
                    && acked < i64::from(wanted.replicas)
                {
                    // The lock is taken on the primary only: the caller's claim releases it.
                    return Err(not_replicated(self.conns.url(), wanted.replicas, acked, wanted.timeout));
                }
                Ok(TryAcquire::Acquired { fencing_token: u64::try_from(token).unwrap_or(0) })
            }
            Value::Array(held) => Ok(TryAcquire::Held {
                remaining: number(held.first()).map(Duration::from_millis),
                newest_token: number(held.get(1)),
            }),
            other => Err(unexpected(self.conns.url(), "the acquire script", &other)),
        }
    }

    pub(super) async fn release(&self, key: &FullKey, owner: &str) -> Result<ReleaseOutcome, BackendError> {
        let line = layout::line(key);
        for kept in self.unanswered.take(key, owner) {
            self.release_behind(kept, key, &line, owner).await;
        }
        let (outcome, _): (i64, _) = match self.release_once(&[key.as_str(), &line], owner).await {
            // A cluster slot in migration: leave the line by itself, wherever it is now (else a
            // waiter that gave up would keep its place, and a release could hand the key to
            // it), then free the lock alone (waiters find it on their timer). In that order: a
            // hand-off that reached this owner before it left the line is freed by the release.
            Err(err) if is_try_again(&err) => {
                self.leave_line(&line, owner).await;
                self.release_once(&[key.as_str()], owner).await?
            }
            answer => answer?,
        };
        // 2: handed to a waiting process, or clients subscribed to the key heard the release
        // (possibly this process's own): this process's next task for the key steps back for a
        // moment either way (see `Release::run` in `guard.rs`).
        Ok(ReleaseOutcome::new(outcome >= 1).with_others_waiting(outcome == 2))
    }

    /// Send the release of `key` by `owner` on the connection `kept`, where an acquisition of
    /// theirs went unanswered: it runs after that acquisition, if that ever runs (see
    /// [`unanswered`](super::unanswered)). The release that answers the caller goes on the
    /// current connection.
    ///
    /// The release is handed to the connection here, in the caller's task: the connection's
    /// driver runs on the runtime that made it, which may be the caller's, and a current-thread
    /// runtime may stop running right after this release returns. Its answer is awaited on
    /// dlock's runtime, which keeps the connection open until it comes, or until a late
    /// acquisition matters no more.
    ///
    /// If the connection is closed without an answer, the release could not follow the
    /// acquisition there: its runtime ended (which closed it), or it broke. The acquisition's
    /// bytes may still be on their way (a socket closed by its client still delivers what it
    /// was sent), so the release is sent again on a current connection once they can no longer
    /// arrive — the kernel gives up on data unacknowledged for twice the call timeout, at
    /// least 1 s (see [`user_timeout`]) — and again at doubling intervals
    /// until a late acquisition would have run out anyway (for a path that acknowledged the
    /// bytes and still holds them: a buffering proxy). Only this owner's lock is touched, and an
    /// owner does not take a lock again after its release.
    ///
    /// On a cluster connection an answer does not show that the release ran behind the
    /// acquisition: the connection holds one stream per node and may have replaced the node's
    /// since (after it broke, or when a slot refresh found it silent; see
    /// [`Conn::is_one_stream`]). The release is then sent again on that schedule whatever the
    /// answer, so a late acquisition there keeps the key until the next of those releases, not
    /// for its whole ttl.
    async fn release_behind(&self, kept: Kept, key: &FullKey, line: &str, owner: &str) {
        let Kept { mut conn, noted, until } = kept;
        let one_stream = conn.is_one_stream();
        let script = &self.scripts.release;
        let (key, line, owner) = (key.to_string(), line.to_owned(), owner.to_owned());
        // `noted` and `until` are on the system's clock; from here on, delays from now, for
        // dlock's runtime (its clock is neither the caller's, which a test may have paused,
        // nor the one these times were noted on). Without adding to an instant: a call timeout
        // meant as "no bound" would overflow.
        let now = Instant::now();
        let call_timeout = self.conns.call_timeout();
        let matters_for = until.saturating_duration_since(now);
        let answer_within = matters_for.max(call_timeout);
        let undeliverable_in =
            user_timeout(call_timeout).saturating_sub(now.saturating_duration_since(noted));
        let mut sent = Box::pin({
            let (key, line, owner) = (key.clone(), line.clone(), owner.clone());
            async move {
                let args = |cmd: &mut Cmd| {
                    cmd.arg(&owner);
                };
                send_script::<i64>(&mut conn, script, &[key.as_str(), line.as_str()], &args, None).await
            }
        });
        // Hand the release to the connection now.
        let answered = std::future::poll_fn(|cx| std::task::Poll::Ready(sent.as_mut().poll(cx))).await;
        let conns = Arc::clone(&self.conns);
        background::spawn_here(async move {
            let answer = match answered {
                std::task::Poll::Ready(answer) => Some(answer),
                std::task::Poll::Pending => tokio::time::timeout(answer_within, sent).await.ok(),
            };
            tracing::debug!(target: "dlock", key, ?answer, "released behind an unanswered acquisition");
            // Redis answered on the acquisition's stream (even with an error: it ran behind the
            // acquisition), or it never did within the time a late acquisition matters.
            let closed = matches!(&answer, Some(Err(err)) if err.code().is_none());
            if answer.is_none() || (one_stream && !closed) {
                return;
            }
            let started = tokio::time::Instant::now();
            let mut wait = undeliverable_in.min(matters_for);
            loop {
                tokio::time::sleep_until(started + wait).await;
                let released = conns
                    .call("the release script", |mut conn| {
                        let (key, line, owner) = (&key, &line, &owner);
                        async move {
                            let args = |cmd: &mut Cmd| {
                                cmd.arg(owner.as_str());
                            };
                            send_script::<i64>(&mut conn, script, &[key.as_str(), line.as_str()], &args, None)
                                .await
                        }
                    })
                    .await;
                tracing::debug!(target: "dlock", key, answer = ?released, "released again: the unanswered acquisition's connection closed first, or may have been replaced");
                if wait >= matters_for {
                    return;
                }
                wait = wait.saturating_mul(2).max(call_timeout).min(matters_for);
            }
        });
    }

    /// How many connections are kept for releases to follow unanswered acquisitions.
    pub(super) fn kept_connections(&self) -> usize {
        self.unanswered.kept_connections()
    }

    /// Take `owner`'s place out of the waiting line `line` (one key: routed to its slot's
    /// node, following `ASK` in a migration). A place left behind runs out by itself within
    /// `WAITING_LIFETIME`, so a failure is only logged.
    async fn leave_line(&self, line: &str, owner: &str) {
        let left = self
            .conns
            .call("leaving the waiting line", |mut conn| async move {
                redis::cmd("HDEL").arg(line).arg(owner).query_async::<i64>(&mut conn).await
            })
            .await;
        if let Err(err) = left {
            tracing::debug!(target: "dlock", line, error = %err, "could not leave a waiting line; the place runs out by itself");
        }
    }

    pub(super) async fn renew(
        &self,
        key: &FullKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let (renewed, _): (i64, _) = self
            .eval("the renew script", &self.scripts.renew, &[key.as_str()], None, None, |cmd| {
                cmd.arg(owner).arg(millis(ttl));
            })
            .await?;
        if renewed == 1 {
            self.note_activity(ttl);
        }
        Ok(renewed == 1)
    }

    pub(super) async fn watch_releases(&self, key: &FullKey) -> ReleaseWatch {
        self.notifier.watch(self.notice_channel(key), self.conns.call_timeout().min(CONFIRMATION_WAIT)).await
    }
}

/// Send `script` on `keys` with the arguments `args` adds on `conn` (see [`send`] for `wait`):
/// as `EVALSHA`, and again as `EVAL`, which also loads it, if the server answers `NOSCRIPT`.
async fn send_script<T: FromRedisValue>(
    conn: &mut Conn,
    script: &Lua,
    keys: &[&str],
    args: &impl Fn(&mut Cmd),
    wait: Option<Replication>,
) -> redis::RedisResult<(T, Option<i64>)> {
    match send(conn, script_command(script, true, keys, args), wait).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            send(conn, script_command(script, false, keys, args), wait).await
        }
        answer => answer,
    }
}

/// `script` with `keys` and the arguments `args` adds, by its digest or by its source.
fn script_command(script: &Lua, by_sha: bool, keys: &[&str], args: &impl Fn(&mut Cmd)) -> Cmd {
    let mut cmd = Cmd::with_capacity(12, 160 + keys.iter().map(|k| k.len()).sum::<usize>());
    if by_sha {
        cmd.arg("EVALSHA").arg(script.sha());
    } else {
        cmd.arg("EVAL").arg(&script.source);
    }
    cmd.arg(keys.len()).arg(keys);
    args(&mut cmd);
    cmd
}

/// Send `cmd` on `conn`; with `wait`, followed in one pipeline by `WAIT` — on a cluster the
/// pipeline goes, whole, to the node of the script's key, so `WAIT` asks about that node's
/// replicas and no other.
async fn send<T: FromRedisValue>(
    conn: &mut Conn,
    cmd: Cmd,
    wait: Option<Replication>,
) -> redis::RedisResult<(T, Option<i64>)> {
    match wait {
        None => cmd.query_async::<T>(conn).await.map(|answer| (answer, None)),
        Some(wait) => {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd).cmd("WAIT").arg(wait.replicas).arg(wait_millis(wait.timeout));
            pipe.query_async::<(T, i64)>(conn).await.map(|(answer, acked)| (answer, Some(acked)))
        }
    }
}

/// `timeout` as `WAIT` takes it: milliseconds, at least 1 (0 would wait for ever) and at most
/// what Redis reads (an `i64`; more is refused as out of range). The cap is some 292 million
/// years, the wait a call timeout meant as "no bound" allows: the call timeout still ends it.
fn wait_millis(timeout: Duration) -> u64 {
    millis(timeout).min(i64::MAX.unsigned_abs())
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `impl LockBackend for $backend`, whose `engine` field does the work; `$name` is the
/// backend's name in errors, `$check` its key check (`fn(&str) -> Result<(), String>`),
/// `$epochs` (optional) its [`lease_epochs`](crate::LockBackend::lease_epochs).
macro_rules! lock_backend_via_engine {
    ($backend:ty, $name:literal, $check:expr) => {
        $crate::redis::engine::lock_backend_via_engine!($backend, $name, $check, |_: &$backend| None);
    };
    ($backend:ty, $name:literal, $check:expr, $epochs:expr) => {
        impl $crate::backend::LockBackend for $backend {
            fn name(&self) -> &'static str {
                $name
            }

            fn check_key(&self, key: &$crate::backend::FullKey) -> Result<(), String> {
                $check(key)
            }

            fn try_acquire<'a>(
                &'a self,
                key: &'a $crate::backend::FullKey,
                owner: &'a str,
                ttl: ::std::time::Duration,
            ) -> $crate::backend::BoxFuture<
                'a,
                Result<$crate::backend::TryAcquire, $crate::backend::BackendError>,
            > {
                Box::pin(self.engine.try_acquire(key, owner, ttl))
            }

            fn release<'a>(
                &'a self,
                key: &'a $crate::backend::FullKey,
                owner: &'a str,
            ) -> $crate::backend::BoxFuture<
                'a,
                Result<$crate::backend::ReleaseOutcome, $crate::backend::BackendError>,
            > {
                Box::pin(self.engine.release(key, owner))
            }

            fn renew<'a>(
                &'a self,
                key: &'a $crate::backend::FullKey,
                owner: &'a str,
                ttl: ::std::time::Duration,
            ) -> $crate::backend::BoxFuture<'a, Result<bool, $crate::backend::BackendError>> {
                Box::pin(self.engine.renew(key, owner, ttl))
            }

            fn watch_releases<'a>(
                &'a self,
                key: &'a $crate::backend::FullKey,
            ) -> $crate::backend::BoxFuture<
                'a,
                Result<Option<$crate::backend::ReleaseWatch>, $crate::backend::BackendError>,
            > {
                Box::pin(async move { Ok(Some(self.engine.watch_releases(key).await)) })
            }

            fn lease_epochs(&self) -> Option<::tokio::sync::watch::Receiver<u64>> {
                $epochs(self)
            }
        }
    };
}
pub(super) use lock_backend_via_engine;
