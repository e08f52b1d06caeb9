//! [`RedisBackend`]: locks in one Redis server, shared by every process that connects to it.

mod notify;
mod scripts;

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};

use std::sync::Arc;

use crate::backend::{
    BackendError, BackendErrorKind, BoxFuture, FullKey, HANDOFF_LEASE, LockBackend, ReleaseOutcome,
    ReleaseWatch, TryAcquire, WAITER_RECHECK,
};
use crate::error::Error;

/// How long a waiting process keeps its place in a key's waiting line without asking again.
/// dlock asks about every [`WAITER_RECHECK`]; a process that stopped asking (it crashed) is
/// not handed the lock after this.
const WAITING_LIFETIME: Duration = WAITER_RECHECK.saturating_mul(3);

/// Locks in a single Redis server (or a primary with replicas; see the README's guarantees).
///
/// One auto-reconnecting, multiplexed connection serves every lock of the process. Every
/// command is bounded by the call timeout (default 2 s), so an unreachable or hung Redis
/// yields [`Error::Backend`] promptly instead of a hang; once Redis is back, the same backend
/// works again.
///
/// A lock is one Redis string, `<prefix><key>`, holding a random 128-bit owner token, with a
/// `PX` expiry. Fencing tokens come from one counter key (default `dlock:fence`), incremented
/// in the same script that takes the lock.
///
/// Processes waiting for a held key line up in Redis (`dlock:queue:<prefix><key>` and
/// `dlock:queue-entries:<prefix><key>`, which expire on their own), and a release hands the
/// key straight to the first one still waiting, telling only that process (on its channel
/// `dlock:handoff:<random>`): first come, first served across processes, one round trip
/// less per hand-off, and no herd of retries. A process joins the line once it is
/// subscribed, keeps its place by asking again every [`WAITER_RECHECK`], and leaves it when
/// its waiter gives up; one that was killed while waiting is passed over once it has not asked
/// for 3 s (until then it may be handed the key, which then stays locked for the ttl it asked
/// for or [`HANDOFF_LEASE`], whichever is shorter). Waiting processes subscribe to
/// `dlock:released:<prefix><key>`, on which a release is announced only when the line held
/// nothing but places whose time was up.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// let redis = dlock::RedisBackend::connect("redis://:secret@127.0.0.1:6379/0").await?;
/// dlock::set_global(dlock::LockService::new(redis))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    call_timeout: Duration,
    fence_key: String,
    /// The URL with any password masked, for messages.
    url: String,
    notifier: Arc<notify::Notifier>,
}

/// Options for [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .connect().await to get the backend"]
pub struct RedisBackendBuilder {
    url: String,
    call_timeout: Duration,
    fence_key: String,
}

impl RedisBackendBuilder {
    /// Bound on every Redis call, and on connecting (default 2 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The key of the fencing-token counter (default `dlock:fence`).
    pub fn fence_key(mut self, key: impl Into<String>) -> Self {
        self.fence_key = key.into();
        self
    }

    /// Connect, and check that Redis answers (and accepts the credentials in the URL).
    pub async fn connect(self) -> Result<RedisBackend, Error> {
        let url = redact(&self.url);
        let client = redis::Client::open(self.url.as_str()).map_err(|err| Error::InvalidInput {
            what: "Redis URL",
            reason: format!(
                "`{url}` is not a Redis URL ({err}); expected redis://[:password@]host[:port][/db], or rediss:// for TLS"
            ),
        })?;
        if self.call_timeout.is_zero() {
            return Err(Error::InvalidInput {
                what: "call timeout",
                reason: "it must be greater than zero".into(),
            });
        }
        // Every call is bounded by `bounded`, which also covers waiting for a reconnect: a
        // second timer per call inside redis-rs would only add cost.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.call_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let timeout = self.call_timeout;
        let mut conn = connect_step(&url, timeout, client.get_connection_manager_with_config(config), || {
            format!("could not connect to {url} within {timeout:?}; is Redis running and reachable?")
        })
        .await?;
        let _: String = connect_step(&url, timeout, redis::cmd("PING").query_async(&mut conn), || {
            format!("{url} did not answer PING within {timeout:?}")
        })
        .await?;
        tracing::debug!(target: "dlock", url = %url, "connected to Redis");
        let notifier = Arc::new(notify::Notifier::start(client, self.call_timeout));
        Ok(RedisBackend { conn, call_timeout: self.call_timeout, fence_key: self.fence_key, url, notifier })
    }
}

impl RedisBackend {
    /// The default bound on every Redis call, and on connecting: 2 s.
    ///
    /// ```
    /// assert_eq!(dlock::RedisBackend::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(2));
    /// ```
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connect to the Redis at `url` with the default options.
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS (cargo
    /// feature `tls`). A malformed URL is [`Error::InvalidInput`]; an unreachable server or
    /// refused credentials is [`Error::Backend`] within the call timeout.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Options: call timeout, fencing counter key.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            fence_key: "dlock:fence".into(),
        }
    }

    /// The channel on which releases of `key` (as stored in Redis) are announced. The release
    /// script builds the same name itself (see `scripts::RELEASE`).
    pub fn release_channel(key: &str) -> String {
        format!("dlock:released:{key}")
    }

    /// How many release channels this process is subscribed to (or about to be): zero once
    /// no task of the process is waiting.
    pub fn subscribed_channels(&self) -> usize {
        self.notifier.channel_count()
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(call_error(&self.url, what, err)),
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!("Redis at {} did not answer {what} within {:?}", self.url, self.call_timeout),
            )),
        }
    }
}

impl RedisBackend {
    /// Run `script` on `keys` (the lock, and the fencing counter for the scripts that draw
    /// tokens), with the arguments `args` adds.
    ///
    /// It is sent as `EVALSHA`; a Redis that does not know the script (after a restart or
    /// `SCRIPT FLUSH`) answers `NOSCRIPT`, and it is sent again as `EVAL`, which also loads
    /// it. The command is built directly rather than through `redis::Script`, which copies
    /// every argument twice: this is the path every lock and release takes.
    async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &scripts::Lua,
        keys: &[&str],
        args: impl Fn(&mut Cmd),
    ) -> Result<T, BackendError> {
        let command = |by_sha: bool| {
            let mut cmd = Cmd::with_capacity(12, 160 + keys.iter().map(|k| k.len()).sum::<usize>());
            if by_sha {
                cmd.arg("EVALSHA").arg(script.sha());
            } else {
                cmd.arg("EVAL").arg(script.source);
            }
            cmd.arg(keys.len()).arg(keys);
            args(&mut cmd);
            cmd
        };
        let mut conn = self.conn.clone();
        self.bounded(what, async {
            match command(true).query_async(&mut conn).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    command(false).query_async(&mut conn).await
                }
                answer => answer,
            }
        })
        .await
    }
}

impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        Box::pin(async move {
            // Join the waiting line only when a hand-off notice would be heard.
            let queue = self.notifier.is_subscribed(|| Self::release_channel(key));
            let answer: Value = self
                .eval("the acquire script", &scripts::ACQUIRE, &[key.as_str(), &self.fence_key], |cmd| {
                    cmd.arg(owner).arg(millis(ttl));
                    if queue {
                        cmd.arg(millis(WAITING_LIFETIME))
                            .arg(self.notifier.inbox())
                            .arg(millis(ttl.min(HANDOFF_LEASE)));
                    }
                })
                .await?;
            let number = |value: Option<&Value>| match value {
                Some(&Value::Int(n)) => u64::try_from(n).ok(),
                _ => None,
            };
            match answer {
                Value::Int(token) => {
                    Ok(TryAcquire::Acquired { fencing_token: u64::try_from(token).unwrap_or(0) })
                }
                Value::Array(held) => Ok(TryAcquire::Held {
                    remaining: number(held.first()).map(Duration::from_millis),
                    newest_token: number(held.get(1)),
                }),
                other => Err(unexpected(&self.url, "the acquire script", &other)),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        Box::pin(async move {
            let outcome: i64 = self
                .eval("the release script", &scripts::RELEASE, &[key.as_str(), &self.fence_key], |cmd| {
                    cmd.arg(owner);
                })
                .await?;
            // 2: handed to a waiting process, or clients subscribed to the key heard the
            // release (possibly this process's own): this process's next waiter steps back
            // for a moment either way (see `guard::release_owned`).
            Ok(ReleaseOutcome::new(outcome >= 1).with_others_waiting(outcome == 2))
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let renewed: i64 = self
                .eval("the renew script", &scripts::RENEW, &[key.as_str()], |cmd| {
                    cmd.arg(owner).arg(millis(ttl));
                })
                .await?;
            Ok(renewed == 1)
        })
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        Box::pin(
            async move { Ok(Some(self.notifier.watch(Self::release_channel(key), self.call_timeout).await)) },
        )
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("call_timeout", &self.call_timeout)
            .field("fence_key", &self.fence_key)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn classify(err: &RedisError) -> BackendErrorKind {
    if err.kind() == ErrorKind::AuthenticationFailed
        || err.to_string().contains("WRONGPASS")
        || err.to_string().contains("NOAUTH")
    {
        BackendErrorKind::Auth
    } else if err.is_timeout() {
        BackendErrorKind::Timeout
    } else if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        BackendErrorKind::Connection
    } else if matches!(err.code(), Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN")) {
        BackendErrorKind::Unavailable
    } else {
        BackendErrorKind::Other
    }
}

/// One step of connecting, within `timeout`; `late` says what did not happen in time.
async fn connect_step<T>(
    url: &str,
    timeout: Duration,
    step: impl Future<Output = Result<T, RedisError>>,
    late: impl FnOnce() -> String,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Error::backend("redis", None, connect_error(url, err))),
        Err(_) => Err(Error::backend("redis", None, BackendError::new(BackendErrorKind::Timeout, late()))),
    }
}

fn connect_error(url: &str, err: RedisError) -> BackendError {
    let kind = classify(&err);
    let hint = match kind {
        BackendErrorKind::Auth => "Redis refused the credentials; check the user and password in the URL",
        BackendErrorKind::Timeout | BackendErrorKind::Connection => {
            "is Redis running and reachable at that address?"
        }
        _ => "check the URL and the server",
    };
    BackendError::with_source(kind, format!("could not connect to {url}: {hint}"), err)
}

/// A reply no script of this version gives: another dlock version (or something else) may
/// share the keys.
fn unexpected(url: &str, what: &str, reply: &Value) -> BackendError {
    BackendError::new(
        BackendErrorKind::Other,
        format!(
            "Redis at {url} answered {what} with {reply:?}, which this version of dlock does not expect; do processes running different dlock versions share this Redis?"
        ),
    )
}

fn call_error(url: &str, what: &str, err: RedisError) -> BackendError {
    let kind = classify(&err);
    BackendError::with_source(kind, format!("Redis at {url} failed {what}"), err)
}

/// The URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("redis://:hunter2@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact("redis://alice:hunter2@host"), "redis://alice:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("not a url"), "not a url");
    }
}
