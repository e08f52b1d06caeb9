//! What [`RedisServer`](super::server::RedisServer), [`RedisCluster`](super::cluster::RedisCluster)
//! and [`SentinelGroup`](super::sentinel::SentinelGroup) share: a `redis-server` process in a
//! directory of its own (logging to a file there, killed on drop), a temporary directory
//! removed on drop, one-command blocking connections with timeouts, and a bounded poll.
//!
//! Everything here blocks the calling thread.

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` may take to say it is ready and answer PING.
pub(crate) const SPAWN_BOUND: Duration = Duration::from_secs(10);

/// Connect, read and write timeout of the harness's own connections: a paused server must
/// not hang the harness.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// How often bounded waits look again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A directory under the system's temp dir, removed (with everything in it) on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<tmp>/dlock-test-<kind>-<pid>-<seq>`, created empty.
    pub(crate) fn new(kind: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dlock-test-{kind}-{}-{seq}", std::process::id()));
        // A directory left by an earlier process with the same pid: start afresh.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("creating the temp dir {}: {err}", path.display()));
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `<self>/<name>`, created.
    pub(crate) fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl fmt::Debug for TempDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TempDir").field(&self.path).finish()
    }
}

/// One `redis-server` (data node or sentinel) on a fixed loopback port, run from a fixed
/// directory with fixed arguments, so it can be killed and started again as the same node.
/// Its stdout and stderr go to `redis.log` in its directory (appended across restarts).
/// Dropping it kills it (SIGKILL, which also ends a paused process) and reaps it.
pub(crate) struct RedisProcess {
    port: u16,
    dir: PathBuf,
    args: Vec<OsString>,
    /// What its log says once it serves clients.
    ready_line: &'static str,
    child: Option<Child>,
    paused: bool,
}

impl RedisProcess {
    /// A process not started yet: `redis-server <args>`, with `dir` as its working directory.
    pub(crate) fn new(port: u16, dir: PathBuf, args: Vec<OsString>, ready_line: &'static str) -> Self {
        Self { port, dir, args, ready_line, child: None, paused: false }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Started and not killed (it may be paused).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Running and not paused: it answers.
    pub(crate) fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start it and wait until its log (what it wrote since this start) says it is ready and
    /// it answers PING. `Err` (with the tail of its log) if it exits or does not get there
    /// within [`SPAWN_BOUND`]; then nothing is left running.
    pub(crate) fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server on port {} is already running", self.port);
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|err| format!("opening the log file {}: {err}", log_path.display()))?;
        let from = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let log_err = log.try_clone().map_err(|err| format!("cloning the log file handle: {err}"))?;
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| format!("spawning redis-server (is it installed?): {err}"))?;
        let deadline = Instant::now() + SPAWN_BOUND;
        loop {
            if let Some(status) = child.try_wait().map_err(|err| format!("polling redis-server: {err}"))? {
                return Err(format!(
                    "redis-server on port {} exited with {status}; its log ({}):\n{}",
                    self.port,
                    log_path.display(),
                    self.log_tail(20)
                ));
            }
            // Our own process must have bound the port (its log says so): something else
            // that answers on the port is not it.
            if log_since(&log_path, from).contains(self.ready_line) && answers_ping(self.port) {
                self.child = Some(child);
                self.paused = false;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} was not ready within {SPAWN_BOUND:?}; its log ({}):\n{}",
                    self.port,
                    log_path.display(),
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`spawn`](Self::spawn), retried for a while: after a kill the port may not be
    /// bindable at once. Panics with the last error.
    pub(crate) fn respawn(&mut self) {
        let deadline = Instant::now() + SPAWN_BOUND;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("restarting redis-server on port {} failed, retrying: {err}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("could not restart redis-server on port {}: {err}", self.port),
            }
        }
    }

    /// SIGKILL (also ends a paused process) and reap. A no-op if it is not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Err only if it already exited, which is what we want.
            let _ = child.kill();
            child.wait().expect("reaping a killed redis-server");
        }
        self.paused = false;
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub(crate) fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("signalling redis-server on port {}: it is not running", self.port));
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running `kill` to signal redis-server");
        assert!(status.success(), "`kill {signal} {pid}` failed: {status}");
    }

    /// The last `lines` lines of its log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// For a failure message: `--- <kind> <port> (running|paused|killed), <log path>:` and
    /// the last 12 lines of its log, on lines of their own.
    pub(crate) fn report(&self, kind: &str) -> String {
        let state = if !self.is_running() {
            "killed"
        } else if self.is_paused() {
            "paused"
        } else {
            "running"
        };
        format!("\n--- {kind} {} ({state}), {}:\n{}", self.port, self.log_path().display(), self.log_tail(12))
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl fmt::Debug for RedisProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisProcess")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("paused", &self.paused)
            .finish()
    }
}

/// What `path` holds from byte `from` on (empty if it cannot be read).
fn log_since(path: &Path, from: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// The last `lines` lines of the file at `path`, or a note that it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// A blocking connection to `127.0.0.1:port` whose connect, reads and writes give up after
/// a second.
pub(crate) fn connect(port: u16) -> Result<redis::Connection, String> {
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).map_err(|err| format!("{url}: {err}"))?;
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|err| format!("connecting to {url}: {err}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(|err| format!("{url}: {err}"))?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(|err| format!("{url}: {err}"))?;
    Ok(conn)
}

/// Run `args` (command and arguments) on `conn`.
pub(crate) fn run<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    args: &[&str],
) -> Result<T, String> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn).map_err(|err| format!("{args:?}: {err}"))
}

/// Run `args` on a fresh connection to `port`.
pub(crate) fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let mut conn = connect(port)?;
    run(&mut conn, args).map_err(|err| format!("port {port}: {err}"))
}

/// Whether something on `port` answers a RESP `PING` (`+PONG`, or an error such as `-NOAUTH`
/// from a server with a password: either way, Redis is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(stream.read(&mut reply), Ok(n) if n > 0 && (reply[0] == b'+' || reply[0] == b'-'))
}

/// The value of `field` in an `INFO` reply (`field:value` lines).
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// What `ROLE` says a data node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeenRole {
    Primary,
    /// A replica configured to follow the primary on this port.
    Replica(u16),
}

/// Ask `ROLE` on `conn`.
pub(crate) fn role(conn: &mut redis::Connection) -> Result<SeenRole, String> {
    let reply: Vec<redis::Value> = run(conn, &["ROLE"])?;
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    match reply.first().and_then(text).as_deref() {
        Some("master") => Ok(SeenRole::Primary),
        Some("slave") => {
            let port = reply.get(2).and_then(text).and_then(|port| port.parse().ok());
            port.map(SeenRole::Replica).ok_or_else(|| format!("ROLE: no primary port in {reply:?}"))
        }
        _ => Err(format!("ROLE: unexpected reply {reply:?}")),
    }
}

/// Call `attempt` every [`POLL_INTERVAL`] until it returns `Ok`, at most for `bound`;
/// `Err` carries what the last attempt said.
pub(crate) fn poll<T>(bound: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + bound;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
