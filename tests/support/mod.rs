//! Shared harness for the runtime integration tests.
//!
//! - [`RedisServer`]: a private `redis-server` on a free loopback port, owned by one test
//!   (stop / restart on the same port / pause / resume, killed on drop, also on panic).
//! - [`shared_redis_url`] and [`unique_prefix`]: the machine's shared Redis, and key prefixes
//!   that keep concurrent tests (and other users of that server) apart.
//! - [`Store`]: one test's view of a backend — it makes independent clients ("processes")
//!   over the same lock store and inspects what the store holds.
//! - [`Counting`]: a [`LockBackend`] wrapper that counts the calls dlock makes.
//! - [`poll_until`]: a bounded poll that asserts a condition.
//! - [`redis_cmd`]: one raw Redis command for inspection or fault injection.
//! - [`worker_command`]: this test binary re-executed as a worker process.
//!
//! Included by several test binaries with `#[path = "support/mod.rs"] mod support;`; each
//! uses only part of it.
#![allow(dead_code)]

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dlock::backend::{BackendError, BoxFuture, FullKey, ReleaseOutcome, ReleaseWatch, TryAcquire};
use dlock::{LockBackend, LockService, LockServiceBuilder};

/// How long a fresh `redis-server` may take to answer PING.
const STARTUP_BOUND: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by one test, on its own loopback port, with no persistence.
///
/// Dropping it kills the process (SIGKILL, which also ends a paused one) and reaps it.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl RedisServer {
    /// Start a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start a server on a free port with extra arguments (e.g. `["--requirepass", "s3cret"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        // The port is free when we look, but another process could take it before
        // redis-server binds it: try a few ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self { child: None, port, args: args.clone(), log: log_path(port) };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("could not start redis-server after 5 attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://:<password>@127.0.0.1:<port>`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (SIGKILL) and wait for it to exit: clients see their connections drop
    /// and new connections refused. A no-op if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Err only if it already exited, which is what we want.
            let _ = child.kill();
            child.wait().expect("reaping the stopped redis-server");
        }
    }

    /// Start the server again on the same port (stopping it first if it runs). Its data is
    /// gone: there is no persistence.
    pub fn restart(&mut self) {
        self.stop();
        // The old socket may linger for a moment: retry the bind for a while.
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("redis-server restart on port {} failed, retrying: {err}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("could not restart redis-server on port {}: {err}", self.port),
            }
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("signalling redis-server: it is not running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running `kill` to signal redis-server");
        assert!(status.success(), "`kill {signal} {pid}` failed: {status}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log)
            .map_err(|err| format!("creating the log file {}: {err}", self.log.display()))?;
        let log_err = log.try_clone().map_err(|err| format!("cloning the log file handle: {err}"))?;
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--dir"])
            .arg(std::env::temp_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| format!("spawning redis-server (is it installed?): {err}"))?;
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            if let Some(status) = child.try_wait().map_err(|err| format!("polling redis-server: {err}"))? {
                return Err(format!("redis-server exited with {status}; its log:\n{}", self.log_tail()));
            }
            // Our own server must have bound the port (its log says so): something else that
            // answers on the port is not it.
            let ready = std::fs::read_to_string(&self.log)
                .is_ok_and(|log| log.contains("Ready to accept connections"));
            if ready && answers_ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {STARTUP_BOUND:?}; its log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer").field("port", &self.port).field("pid", &self.pid()).finish()
    }
}

fn log_path(port: u16) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("dlock-test-redis-{}-{seq}-{port}.log", std::process::id()))
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range (so no
/// outgoing connection can take it before a server binds it), and different from the ports
/// this process handed out before (so concurrent tests do not pick the same one).
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(12000);
    let low = high - 10000;
    let next = NEXT.get_or_init(|| AtomicU16::new(low + rand::random::<u16>() % (high - low)));
    for _ in 0..(high - low) {
        let candidate = next.fetch_add(1, Ordering::Relaxed);
        let port = low + candidate.wrapping_sub(low) % (high - low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Whether something on `port` answers a RESP `PING` (`+PONG`, or an error such as `-NOAUTH`
/// from a server with a password: either way, Redis is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(stream.read(&mut reply), Ok(n) if n > 0 && (reply[0] == b'+' || reply[0] == b'-'))
}

/// The machine's shared Redis (`DLOCK_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
/// Tests that use it must confine themselves to keys under a [`unique_prefix`].
pub fn shared_redis_url() -> String {
    std::env::var("DLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `dlock-test:<test_name>:<pid>-<random>:`: a key namespace no other test run uses.
pub fn unique_prefix(test_name: &str) -> String {
    format!("dlock-test:{test_name}:{}-{:08x}:", std::process::id(), rand::random::<u32>())
}

/// A plain `redis` connection for inspecting what the store holds.
pub async fn inspector(url: &str) -> redis::aio::MultiplexedConnection {
    let client =
        redis::Client::open(url).unwrap_or_else(|err| panic!("opening a Redis client for {url}: {err}"));
    tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} for inspection timed out; is Redis running there?"))
        .unwrap_or_else(|err| panic!("connecting to {url} for inspection: {err}; is Redis running there?"))
}

/// Run one raw command (`args[0]` and its arguments); panic if Redis refuses it.
pub async fn redis_cmd<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|err| panic!("{args:?}: {err}"))
}

/// This test binary, to be run as a worker process: it runs only the `#[ignore]`d test
/// `test_name`, whose body does nothing unless the environment the caller adds says what to
/// do. Its stdin is closed unless the caller pipes it; stderr goes to the test's.
pub fn worker_command(test_name: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut command = Command::new(exe);
    command
        .args(["--exact", test_name, "--nocapture", "--ignored", "--test-threads=1"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Poll `cond` every 10 ms until it holds; panic with `what` if it does not within `bound`.
/// Returns how long it took.
pub async fn poll_until<F, Fut>(bound: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not true within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One test's lock store: a fresh [`dlock::MemoryBackend`], or a key namespace on a Redis
/// server. [`Store::service`] makes independent clients of it — for Redis each with its own
/// connection, so they contend in Redis exactly like separate processes.
pub enum Store {
    Memory { backend: dlock::MemoryBackend, prefix: String },
    Redis { url: String, prefix: String, conn: redis::aio::MultiplexedConnection },
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory { prefix, .. } => f.debug_struct("Store::Memory").field("prefix", prefix).finish(),
            Self::Redis { url, prefix, .. } => {
                f.debug_struct("Store::Redis").field("url", url).field("prefix", prefix).finish()
            }
        }
    }
}

impl Store {
    /// A fresh in-process store. Services still get a key prefix, so prefix handling is
    /// exercised on every backend.
    pub fn memory(test_name: &str) -> Self {
        Self::Memory { backend: dlock::MemoryBackend::new(), prefix: format!("{test_name}:lock:") }
    }

    /// A namespace of its own on the Redis at `url` (lock keys and fencing counter).
    pub async fn redis(url: &str, test_name: &str) -> Self {
        let namespace = unique_prefix(test_name);
        Self::Redis { url: url.to_owned(), prefix: format!("{namespace}lock:"), conn: inspector(url).await }
    }

    /// The key prefix every service of this store uses.
    pub fn prefix(&self) -> &str {
        match self {
            Self::Memory { prefix, .. } | Self::Redis { prefix, .. } => prefix,
        }
    }

    /// `key` as the backend stores it.
    pub fn full_key(&self, key: &str) -> FullKey {
        FullKey::new(self.prefix(), key)
    }

    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis { .. })
    }

    /// A new client backend over this store.
    pub async fn backend(&self) -> Arc<dyn LockBackend> {
        match self {
            Self::Memory { backend, .. } => Arc::new(backend.clone()),
            Self::Redis { url, .. } => Arc::new(
                dlock::RedisBackend::builder(url.as_str())
                    .connect()
                    .await
                    .unwrap_or_else(|err| panic!("connecting a RedisBackend to {url}: {err}")),
            ),
        }
    }

    /// A builder for a new, independent service over this store, with the store's prefix.
    pub async fn builder(&self) -> LockServiceBuilder {
        LockService::builder_from_arc(self.backend().await).key_prefix(self.prefix())
    }

    /// A new, independent service over this store.
    pub async fn service(&self) -> LockService {
        self.builder().await.build()
    }

    /// A service whose backend counts the calls made to it.
    pub async fn counting_service(&self) -> (LockService, Arc<Counts>) {
        let counting = Counting::new(self.backend().await);
        let counts = Arc::clone(&counting.counts);
        (LockService::builder(counting).key_prefix(self.prefix()).build(), counts)
    }

    /// Whether `key` (unprefixed) is held in the store right now.
    ///
    /// Redis: `EXISTS`. Memory: a probe acquire on the backend (released at once if it
    /// succeeded; it draws a fencing token, which only widens the gaps between tokens).
    pub async fn is_held(&self, key: &str) -> bool {
        let full_key = self.full_key(key);
        match self {
            Self::Memory { backend, .. } => {
                let probe = "dlock-test-probe";
                match backend.try_acquire(&full_key, probe, dlock::MIN_TTL).await.expect("memory never fails")
                {
                    TryAcquire::Held { .. } => true,
                    TryAcquire::Acquired { .. } => {
                        assert!(
                            backend.release(&full_key, probe).await.expect("memory never fails").was_held
                        );
                        false
                    }
                }
            }
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("EXISTS")
                    .arg(full_key.as_str())
                    .query_async::<bool>(&mut conn)
                    .await
                    .unwrap_or_else(|err| panic!("EXISTS {full_key}: {err}"))
            }
        }
    }

    /// Whether `key` (unprefixed) is free right now.
    pub async fn is_free(&self, key: &str) -> bool {
        !self.is_held(key).await
    }

    /// Redis: `Some(value)` of `key` (the owner token; `None` inside when absent).
    /// Memory: `None`, it cannot show owners.
    pub async fn stored_value(&self, key: &str) -> Option<Option<String>> {
        match self {
            Self::Memory { .. } => None,
            Self::Redis { conn, .. } => {
                let full_key = self.full_key(key);
                let mut conn = conn.clone();
                Some(
                    redis::cmd("GET")
                        .arg(full_key.as_str())
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .unwrap_or_else(|err| panic!("GET {full_key}: {err}")),
                )
            }
        }
    }

    /// Remove `key` behind its holder's back (an operator's `DEL`, a failover that lost it).
    pub async fn delete(&self, key: &str) {
        let full_key = self.full_key(key);
        match self {
            Self::Memory { backend, .. } => {
                assert!(backend.force_expire(&full_key), "{full_key} was not held")
            }
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let removed: i64 = redis::cmd("DEL")
                    .arg(full_key.as_str())
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_else(|err| panic!("DEL {full_key}: {err}"));
                assert_eq!(removed, 1, "{full_key} was not held");
            }
        }
    }

    /// Every lock key in the store right now, prefix included, sorted: Redis
    /// `KEYS <prefix>*`; for memory, `None` (it cannot list keys; see `held_count`).
    pub async fn keys(&self) -> Option<Vec<String>> {
        let mut keys = self.all_keys().await?;
        keys.retain(|key| !key.contains("#dlock:"));
        Some(keys)
    }

    /// Every key in the store under the prefix, dlock's state hashes (`…#dlock:state…`)
    /// included, sorted: Redis only.
    pub async fn all_keys(&self) -> Option<Vec<String>> {
        match self {
            Self::Memory { .. } => None,
            Self::Redis { conn, prefix, .. } => {
                let mut keys: Vec<String> =
                    redis_cmd(&mut conn.clone(), &["KEYS", &format!("{prefix}*")]).await;
                keys.sort();
                Some(keys)
            }
        }
    }

    /// Redis: the last fencing token drawn for `key` (unprefixed), if its state hash has one.
    /// Memory: `None`.
    pub async fn fencing_counter(&self, key: &str) -> Option<u64> {
        match self {
            Self::Memory { .. } => None,
            Self::Redis { conn, .. } => {
                let state = dlock::RedisBackend::state_key(&self.full_key(key));
                redis_cmd(&mut conn.clone(), &["HGET", &state, "f"]).await
            }
        }
    }

    /// Remove what the test left in Redis (its lock keys and dlock's state hashes).
    pub async fn cleanup(&self) {
        if let Self::Redis { conn, .. } = self {
            let keys = self.all_keys().await.unwrap_or_default();
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn.clone())
                    .await
                    .unwrap_or_else(|err| panic!("DEL {keys:?}: {err}"));
            }
        }
    }
}

/// How many calls a [`Counting`] backend saw.
#[derive(Debug, Default)]
pub struct Counts {
    pub try_acquire: AtomicUsize,
    pub release: AtomicUsize,
    pub renew: AtomicUsize,
    pub watch_releases: AtomicUsize,
}

impl Counts {
    pub fn try_acquire(&self) -> usize {
        self.try_acquire.load(Ordering::SeqCst)
    }
    pub fn release(&self) -> usize {
        self.release.load(Ordering::SeqCst)
    }
    pub fn renew(&self) -> usize {
        self.renew.load(Ordering::SeqCst)
    }
    pub fn total(&self) -> usize {
        self.try_acquire() + self.release() + self.renew() + self.watch_releases.load(Ordering::SeqCst)
    }
}

/// A backend that forwards to another and counts the calls.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn LockBackend>,
    pub counts: Arc<Counts>,
}

impl Counting {
    pub fn new(inner: Arc<dyn LockBackend>) -> Self {
        Self { inner, counts: Arc::default() }
    }
}

impl LockBackend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<TryAcquire, BackendError>> {
        self.counts.try_acquire.fetch_add(1, Ordering::SeqCst);
        self.inner.try_acquire(key, owner, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, BackendError>> {
        self.counts.release.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, owner)
    }

    fn renew<'a>(
        &'a self,
        key: &'a FullKey,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.counts.renew.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(key, owner, ttl)
    }

    fn watch_releases<'a>(
        &'a self,
        key: &'a FullKey,
    ) -> BoxFuture<'a, Result<Option<ReleaseWatch>, BackendError>> {
        self.counts.watch_releases.fetch_add(1, Ordering::SeqCst);
        self.inner.watch_releases(key)
    }
}
