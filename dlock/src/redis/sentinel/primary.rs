//! [`Primary`]: where the sentinels say the primary of a group is, and the task that listens
//! for their `+switch-master` announcements. It is the sentinel backend's [`Connector`] (its
//! command connections go to the current primary) and [`FeedSource`] (so does its pub/sub).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};
use tokio::sync::watch;

use super::super::connection::{Conn, Connector, ServerConnector, connection_config, tcp_settings};
use super::super::error::{RefusedCertificate, classify};
use super::super::notify::{Feed, FeedSource, server_feed};
use crate::backend::{BackendError, BackendErrorKind, BoxFuture};
use crate::background;

/// Where the sentinels say the primary is.
pub(super) struct Primary {
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    call_timeout: Duration,
    /// A client of the primary, and its `host:port`.
    current: Mutex<Option<(redis::Client, String)>>,
    /// The primary's replication ID (`master_replid` in `INFO replication`) when the backend
    /// moved there or last checked it; `None` if it could not be read (an ACL without
    /// `+info`). A primary found again at the same address with another one is another
    /// primary: it was a replica in between (a failover and a failover back, A→B→A, during
    /// which it took the other's data) or it restarted (perhaps without its data; a restart
    /// that kept it costs one needless check of every lease).
    history: Mutex<Option<String>>,
    /// Bumped each time the sentinels name another primary, or the one at the same address
    /// has another history (1 after connecting).
    epoch: AtomicU64,
    epochs: watch::Sender<u64>,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
    /// A resolution was asked for and has not started yet.
    suspected: AtomicBool,
    /// When the last resolution began.
    last_started: Mutex<Option<Instant>>,
}

/// The cause of a resolution that failed because every sentinel that answered monitors no
/// master of that name (see [`is_unknown_master`]).
#[derive(Debug)]
struct UnknownMaster;

impl std::fmt::Display for UnknownMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no sentinel that answered monitors a master of that name")
    }
}

impl std::error::Error for UnknownMaster {}

/// Whether `err` says that the sentinels monitor no master of the name given.
pub(super) fn is_unknown_master(err: &BackendError) -> bool {
    std::error::Error::source(err).is_some_and(|cause| cause.is::<UnknownMaster>())
}

/// The cause of a resolution that failed because an address given as a sentinel is a Redis
/// server that knows no `SENTINEL` command (see [`is_not_a_sentinel`]).
#[derive(Debug)]
struct NotASentinel;

impl std::fmt::Display for NotASentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an address given as a sentinel is a Redis server that is not a sentinel")
    }
}

impl std::error::Error for NotASentinel {}

/// Whether `err` says that an address given as a sentinel is no sentinel.
pub(super) fn is_not_a_sentinel(err: &BackendError) -> bool {
    std::error::Error::source(err).is_some_and(|cause| cause.is::<NotASentinel>())
}

/// Whether a sentinel's failed answer says it knows no `SENTINEL` command: a Redis server
/// (Redis 7 quotes the command with `'`, Redis 6 with a backtick).
fn knows_no_sentinel_command(err: &redis::RedisError) -> bool {
    let text = err.to_string().to_ascii_lowercase();
    text.contains("unknown command") && text.contains("sentinel")
}

/// What a sentinel that monitors no master of the name asked for is reported as.
const NO_SUCH_MASTER: &str = "the sentinel knows no such master";

/// What a named primary that answers `ROLE` as a replica is reported as.
const NOT_A_PRIMARY: &str = "it is not a primary (yet)";

/// The shortest time between two resolutions asked for by failing calls.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(200);

impl Primary {
    /// The primary of `master_name` that `sentinels` will name; not asked yet (see
    /// [`resolve`](Self::resolve)).
    pub(super) fn new(
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        username: Option<String>,
        password: Option<String>,
        db: i64,
        call_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            sentinels,
            master_name,
            username,
            password,
            db,
            call_timeout,
            current: Mutex::new(None),
            history: Mutex::new(None),
            epoch: AtomicU64::new(0),
            epochs: watch::channel(0).0,
            resolving: tokio::sync::Mutex::new(()),
            suspected: AtomicBool::new(false),
            last_started: Mutex::new(None),
        })
    }

    pub(super) fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `host:port` of the primary now, once one was found.
    pub(super) fn address(&self) -> Option<String> {
        self.current().map(|(_, address)| address)
    }

    /// How many times the sentinels have named a new primary, or the one in use was found with
    /// another history (1 after connecting).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Hears each change of [`epoch`](Self::epoch).
    pub(super) fn epochs(&self) -> watch::Receiver<u64> {
        self.epochs.subscribe()
    }

    fn current(&self) -> Option<(redis::Client, String)> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Ask every sentinel where the primary is; take the address a majority of those that
    /// answered name (a sentinel cut off with an old primary may still name it), check that it
    /// says it is a primary, and move there if it is not where the backend is now. If it is,
    /// check its history instead ([`check_history`](Self::check_history)).
    pub(super) async fn resolve(&self) -> Result<(), BackendError> {
        self.resolve_after(false).await
    }

    /// [`resolve`](Self::resolve), but not sooner than [`RESOLVE_INTERVAL`] after the last
    /// resolution began — also one that was still running when this was asked for.
    async fn resolve_spaced(&self) -> Result<(), BackendError> {
        self.resolve_after(true).await
    }

    /// One resolution, `spaced` or at once, then the history check if nothing moved.
    async fn resolve_after(&self, spaced: bool) -> Result<(), BackendError> {
        let unchanged = {
            let _one = self.resolving.lock().await;
            let last = *self.last_started.lock().unwrap_or_else(PoisonError::into_inner);
            if let (true, Some(last)) = (spaced, last) {
                tokio::time::sleep_until((last + RESOLVE_INTERVAL).into()).await;
            }
            self.begin_resolving();
            self.resolve_once().await?
        };
        if let Some(unchanged) = unchanged {
            self.check_history(unchanged).await;
        }
        Ok(())
    }

    /// The sentinels named the primary the backend uses: ask it for its replication ID, and
    /// if it is not the one it had, count it as a new primary (bump the epoch: connections,
    /// subscriptions and every lease are checked again, as after a move). Asked outside the
    /// resolution lock, so that a silent primary delays no other resolution; a resolution
    /// that moved or checked meanwhile wins. A primary that does not answer, refuses `INFO`
    /// or answers as a replica (a failover under way) changes nothing: the calls that fail
    /// and the next resolutions ask again.
    async fn check_history(&self, unchanged: Unchanged) {
        let Unchanged { client, address, history: before } = unchanged;
        let ask = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&connection_config(self.call_timeout))
                .await?;
            replication_id(&mut conn).await
        };
        let now = match tokio::time::timeout(self.call_timeout, ask).await {
            Ok(Ok(Some(now))) => now,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                tracing::debug!(target: "dlock", primary = %address, error = %err, "could not read the primary's replication ID");
                return;
            }
            Err(_) => {
                tracing::debug!(target: "dlock", primary = %address, "the primary did not say its replication ID in time");
                return;
            }
        };
        let _one = self.resolving.lock().await;
        if self.address().as_deref() != Some(address.as_str()) {
            return;
        }
        {
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if *history != before {
                return;
            }
            *history = Some(now.clone());
        }
        if before.is_some_and(|before| before != now) {
            tracing::info!(target: "dlock", master = %self.master_name, primary = %address,
                "the primary the sentinels name is at the same address with another history (it was a replica in between, or restarted): checking everything again");
            self.bump();
        }
    }

    /// Count a new primary: every connection, subscription and lease follows.
    fn bump(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.epochs.send_replace(epoch);
    }

    /// A resolution begins: calls that fail from now on ask for another one.
    fn begin_resolving(&self) {
        *self.last_started.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.suspected.store(false, Ordering::Release);
    }

    /// One resolution; `Some` if the sentinels name the primary the backend uses.
    async fn resolve_once(&self) -> Result<Option<Unchanged>, BackendError> {
        let asks = self.sentinels.iter().map(|sentinel| async move {
            let answer = tokio::time::timeout(self.call_timeout, self.named_by(sentinel)).await;
            (sentinel, answer)
        });
        let mut votes: Vec<((String, u16), usize)> = Vec::new();
        let mut failures = Vec::new();
        let mut answered = 0;
        // Sentinels that could not be asked, and sentinels that answered they monitor no
        // master of that name.
        let (mut unreachable, mut unknown) = (0, 0);
        // Addresses that answered as Redis servers that are no sentinel.
        let mut not_sentinels = Vec::new();
        for (sentinel, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Ok(address)) => {
                    answered += 1;
                    match votes.iter_mut().find(|(named, _)| *named == address) {
                        Some((_, count)) => *count += 1,
                        None => votes.push((address, 1)),
                    }
                }
                Ok(Err(err)) => {
                    if err.kind() == redis::ErrorKind::Client && err.to_string().contains(NO_SUCH_MASTER) {
                        unknown += 1;
                    } else if knows_no_sentinel_command(&err) {
                        not_sentinels.push(sentinel.addr().to_string());
                    } else if matches!(
                        classify(&err),
                        BackendErrorKind::Connection | BackendErrorKind::Timeout
                    ) {
                        unreachable += 1;
                    }
                    failures.push(format!("{}: {err}", sentinel.addr()));
                }
                Err(_) => {
                    unreachable += 1;
                    failures.push(format!("{}: no answer within {:?}", sentinel.addr(), self.call_timeout));
                }
            }
        }
        votes.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let unavailable = |why: String| {
            BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "no primary for `{}`: {why}; check the sentinels and the master name",
                    self.master_name
                ),
            )
        };
        let Some(((host, port), count)) = votes.first().cloned() else {
            let failed = failures.join("; ");
            if let Some(refusal) = RefusedCertificate::of(&failed) {
                // Not a missing primary: no sentinel could be asked. Retrying will not help.
                return Err(BackendError::new(
                    BackendErrorKind::Connection,
                    format!(
                        "no primary for `{}`: no sentinel could be asked over TLS ({failed}): {}",
                        self.master_name,
                        refusal.explain(true)
                    ),
                ));
            }
            if !not_sentinels.is_empty() && not_sentinels.len() + unknown + unreachable == failures.len() {
                // A Redis server given where a sentinel belongs: waiting will not help.
                return Err(BackendError::with_source(
                    BackendErrorKind::Other,
                    format!(
                        "no primary for `{}`: {} answered as a Redis server that is not a sentinel ({failed}); give the addresses of the sentinels (`redis-server --sentinel`, port 26379 by default), not those of the Redis servers they watch",
                        self.master_name,
                        not_sentinels.join(", ")
                    ),
                    NotASentinel,
                ));
            }
            if unknown > 0 && unknown + unreachable == failures.len() {
                // Every sentinel that answered monitors no such master: waiting will not help.
                return Err(BackendError::with_source(
                    BackendErrorKind::Other,
                    format!(
                        "no primary for `{}`: the sentinels that answered monitor no master of that name ({failed}); check the master name (`sentinel monitor <name> …` in their configuration)",
                        self.master_name
                    ),
                    UnknownMaster,
                ));
            }
            if unreachable == failures.len() {
                return Err(BackendError::new(
                    BackendErrorKind::Connection,
                    format!(
                        "no primary for `{}`: no sentinel could be reached ({failed}); check that the sentinels run and their addresses",
                        self.master_name
                    ),
                ));
            }
            return Err(unavailable(format!("no sentinel named one ({failed})")));
        };
        if count * 2 <= answered {
            return Err(unavailable(format!("the {answered} sentinels that answered disagree ({votes:?})")));
        }
        let address = format!("{host}:{port}");
        if let Some((client, now)) = self.current()
            && now == address
        {
            let history = self.history.lock().unwrap_or_else(PoisonError::into_inner).clone();
            return Ok(Some(Unchanged { client, address, history }));
        }
        let (client, history) = self.primary_at(host, port).await.map_err(|err| {
            // A primary that refuses the credentials is an `Auth` error, not a missing primary;
            // one that is not a primary (yet) is a failover under way.
            let kind = match classify(&err) {
                BackendErrorKind::Other if err.to_string().contains(NOT_A_PRIMARY) => BackendErrorKind::Unavailable,
                kind => kind,
            };
            BackendError::new(
                kind,
                format!(
                    "no primary for `{}`: {address}, which the sentinels name, does not answer as a primary ({err}); check the sentinels, the master name and the primary's credentials",
                    self.master_name
                ),
            )
        })?;
        tracing::info!(target: "dlock", master = %self.master_name, primary = %address, "the sentinels name a new primary; moving there");
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((client, address));
        *self.history.lock().unwrap_or_else(PoisonError::into_inner) = history;
        self.bump();
        Ok(None)
    }

    /// The primary's address as one sentinel names it.
    async fn named_by(&self, sentinel: &ConnectionInfo) -> RedisResult<(String, u16)> {
        let client = redis::Client::open(sentinel.clone())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&connection_config(self.call_timeout))
            .await?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await?;
        named.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, NO_SUCH_MASTER)))
    }

    /// A client of the server at `host:port` (with TLS if the sentinels use it), once it
    /// answers `ROLE` as a primary, and its replication ID if it says it.
    async fn primary_at(&self, host: String, port: u16) -> RedisResult<(redis::Client, Option<String>)> {
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let addr = match self.sentinels.first().map(ConnectionInfo::addr) {
            Some(ConnectionAddr::TcpTls { insecure, tls_params, .. }) => {
                ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
            }
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = addr
            .into_connection_info()?
            .set_redis_settings(redis_info)
            .set_tcp_settings(tcp_settings(self.call_timeout));
        let primary = redis::Client::open(info)?;
        let check = async {
            let mut conn = primary
                .get_multiplexed_async_connection_with_config(&connection_config(self.call_timeout))
                .await?;
            let role = redis::cmd("ROLE").query_async::<Vec<redis::Value>>(&mut conn).await?;
            if !matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master") {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, NOT_A_PRIMARY)));
            }
            // Without it (an ACL without `+info`), a primary found again at this address with
            // another history is not told from this one.
            let history = replication_id(&mut conn).await.unwrap_or_else(|err| {
                tracing::debug!(target: "dlock", error = %err, "could not read the primary's replication ID");
                None
            });
            Ok(history)
        };
        let history = tokio::time::timeout(self.call_timeout, check)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "no answer to ROLE")))??;
        Ok((primary, history))
    }

    /// Ask the sentinels again, in the background (once, however many calls ask).
    fn suspect_now(self: &Arc<Self>) {
        if self.suspected.swap(true, Ordering::AcqRel) {
            return;
        }
        let primary = Arc::clone(self);
        background::spawn_here(async move {
            // At most one resolution begun per RESOLVE_INTERVAL, however many calls fail.
            if let Err(err) = primary.resolve_spaced().await {
                tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary failed");
            }
        });
    }
}

impl Connector for Arc<Primary> {
    fn connect(&self) -> BoxFuture<'_, RedisResult<Conn>> {
        Box::pin(async move {
            let Some((client, _)) = self.current() else {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "no primary known yet")));
            };
            ServerConnector { client, config: connection_config(self.call_timeout) }.connect().await
        })
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn suspect(&self) {
        self.suspect_now();
    }
}

impl FeedSource for Arc<Primary> {
    fn open(&self) -> BoxFuture<'_, RedisResult<Feed>> {
        Box::pin(async move {
            let mut epochs = self.epochs.subscribe();
            epochs.borrow_and_update();
            let Some((client, _)) = self.current() else {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "no primary known yet")));
            };
            let mut feed = server_feed(&client).await.inspect_err(|_| self.suspect_now())?;
            feed.moved = Box::pin(async move {
                let _ = epochs.changed().await;
            });
            Ok(feed)
        })
    }
}

/// The primary the sentinels name is the one the backend uses: what [`Primary::check_history`]
/// needs.
struct Unchanged {
    client: redis::Client,
    address: String,
    /// Its replication ID as last known.
    history: Option<String>,
}

/// `master_replid` from the server's `INFO replication`, if it says it is a primary there.
async fn replication_id(conn: &mut redis::aio::MultiplexedConnection) -> RedisResult<Option<String>> {
    let info: String = redis::cmd("INFO").arg("replication").query_async(conn).await?;
    Ok(parse_replication_id(&info))
}

/// `master_replid` of an `INFO replication` answer that says `role:master`.
fn parse_replication_id(info: &str) -> Option<String> {
    let field =
        |name: &str| info.lines().find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'));
    (field("role")? == "master").then(|| field("master_replid")).flatten().map(str::to_owned)
}

/// After a sentinel announced `+switch-master` to `announced`: ask the sentinels until a
/// majority of them name it too (the others learn of the switch a moment later), for at most
/// [`SWITCH_AGREEMENT`]. The announcement alone is not trusted: it moves the backend only
/// through the majority.
async fn follow_switch(primary: &Primary, announced: &str) {
    let deadline = Instant::now() + SWITCH_AGREEMENT;
    loop {
        if let Err(err) = primary.resolve().await {
            tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary after +switch-master failed");
        }
        if primary.address().as_deref() == Some(announced) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(RESOLVE_INTERVAL).await;
    }
}

/// How long, after a `+switch-master`, the sentinels are asked again until a majority agree.
const SWITCH_AGREEMENT: Duration = Duration::from_secs(10);

/// How often the sentinels are asked again while nothing else asked them: a sentinel cut off
/// from the others together with the old primary neither takes part in a failover nor hears
/// of it, and the old primary goes on answering as one, so neither `+switch-master` nor a
/// failing call would move a backend listening there.
const RECHECK: Duration = Duration::from_secs(5);

/// Listen on one sentinel at a time for `+switch-master` of the group, and ask the sentinels
/// again when one comes, after each (re)subscription (a switch announced while no sentinel
/// was listened to is not missed), and every [`RECHECK`] (a switch the sentinel listened to
/// never heard of is not missed either). Waits before each reconnect, longer while they fail.
/// Ends with the backend.
pub(super) async fn listen_for_switches(primary: Weak<Primary>) {
    let mut next = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(strong) = primary.upgrade() else { return };
        let sentinel = strong.sentinels[next % strong.sentinels.len()].clone();
        next += 1;
        let call_timeout = strong.call_timeout;
        let master = strong.master_name.clone();
        drop(strong);
        let pubsub = async {
            let mut pubsub = redis::Client::open(sentinel)?.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let Ok(Ok(pubsub)) = tokio::time::timeout(call_timeout, pubsub).await else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            continue;
        };
        let subscribed_at = Instant::now();
        {
            let Some(strong) = primary.upgrade() else { return };
            if let Err(err) = strong.resolve().await {
                tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary failed");
            }
        }
        let (mut sink, mut messages) = pubsub.split();
        let mut health = tokio::time::interval(Duration::from_secs(1));
        let mut recheck = tokio::time::interval_at((Instant::now() + RECHECK).into(), RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload: String = message.get_payload().unwrap_or_default();
                    // `<master> <old ip> <old port> <new ip> <new port>`
                    let fields: Vec<&str> = payload.split(' ').collect();
                    if let [name, _, _, ip, port] = fields.as_slice()
                        && *name == master
                    {
                        let Some(strong) = primary.upgrade() else { return };
                        follow_switch(&strong, &format!("{ip}:{port}")).await;
                    }
                }
                _ = recheck.tick() => {
                    let Some(strong) = primary.upgrade() else { return };
                    if let Err(err) = strong.resolve_spaced().await {
                        tracing::debug!(target: "dlock", error = %err, "asking the sentinels for the primary failed");
                    }
                }
                _ = health.tick() => {
                    if primary.strong_count() == 0 {
                        return;
                    }
                    let ping = tokio::time::timeout(call_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        // A sentinel that dropped us soon after we subscribed must not become a tight loop.
        if subscribed_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        } else {
            pause = Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_replication_id;

    #[test]
    fn the_replication_id_is_read_from_a_primary_only() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_failover_state:no-failover\r\nmaster_replid:8e1b2c\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:42\r\n";
        assert_eq!(parse_replication_id(primary).as_deref(), Some("8e1b2c"));
        let replica = primary.replace("role:master", "role:slave");
        assert_eq!(parse_replication_id(&replica), None);
        assert_eq!(parse_replication_id("role:master\r\n"), None);
        assert_eq!(parse_replication_id(""), None);
    }
}
