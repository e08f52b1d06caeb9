//! Servers the checker starts, owns and faults: a private `redis-server` here, and the
//! topologies of [`crate::topology`] (a Redis Cluster, a primary with a replica and
//! sentinels), each an implementation of [`ManagedServer`].
//!
//! A managed server listens on a free loopback port, keeps its files in a directory of its
//! own, and is killed when dropped. The checker signals only the processes it started and
//! those they run (a PostgreSQL server's backends, found by their parent's pid).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::schedule::FaultKind;

/// How long a fresh server may take to answer.
pub(crate) const STARTUP_BOUND: Duration = Duration::from_secs(10);

/// A server the checker started and may stop, freeze and restart.
pub trait ManagedServer: Send + Sync + fmt::Debug {
    /// What it is (`redis-server`).
    fn kind(&self) -> &'static str;

    /// The URL a client uses to reach it directly.
    fn url(&self) -> String;

    /// The one address clients reach it at (what a proxy forwards to); `None` for a topology
    /// of several servers, whose clients go to the addresses the servers give them.
    fn addr(&self) -> Option<SocketAddr>;

    /// Freeze it (SIGSTOP): connections stay open, nothing is answered. A topology is not
    /// frozen whole ([`ServerKind::takes`] keeps the fault from it): by default, an error.
    fn pause(&mut self) -> anyhow::Result<()> {
        bail!("the checker fails a {} over; it does not pause it whole", self.kind())
    }

    /// Thaw it (SIGCONT).
    fn resume(&mut self) -> anyhow::Result<()> {
        bail!("the checker never paused the {}", self.kind())
    }

    /// Kill it (SIGKILL, or a server's own shutdown that is as abrupt) and reap it:
    /// connections drop, new ones are refused.
    fn kill(&mut self) -> anyhow::Result<()>;

    /// Whether [`start_again`](Self::start_again) finds what it had before the kill (a
    /// PostgreSQL recovering from its write-ahead log), rather than starting empty (a
    /// `redis-server` without persistence).
    fn keeps_data(&self) -> bool {
        false
    }

    /// Start it again on the same address (killing it first if it runs), empty unless it
    /// [`keeps_data`](Self::keeps_data); returns once it answers. A topology is not restarted
    /// whole: by default, an error.
    fn start_again(&mut self) -> anyhow::Result<()> {
        bail!("the checker fails a {} over; it does not restart it whole", self.kind())
    }

    /// Fail the primary that serves the lock key `aim` over to its replica — by killing it
    /// (SIGKILL) when `kill`, else by the topology's own command — and return once the replica
    /// serves as the primary and the old one is back as its replica. `keys` are the run's lock
    /// keys (with their prefix); the answer says which the failed-over primary served.
    fn fail_over(&mut self, aim: &str, keys: &[String], kill: bool) -> anyhow::Result<FailedOver> {
        let _ = (aim, keys, kill);
        bail!("a single {} has no replica to fail over to", self.kind())
    }

    /// Where the primary that serves the lock key `aim` is reached, once the topology is whole,
    /// and which of `keys` it serves.
    fn primary_of(&self, aim: &str, keys: &[String]) -> anyhow::Result<PrimaryAt> {
        let _ = (aim, keys);
        bail!("a single {} is one node: it has no primary to single out", self.kind())
    }

    /// Freeze the primary that serves `aim` (SIGSTOP) for `pause`, then thaw it, and return once
    /// the topology is whole again: its replica may have been elected meanwhile (then the old
    /// primary, thawed, served on until it heard), or not.
    fn pause_primary(&mut self, aim: &str, keys: &[String], pause: Duration) -> anyhow::Result<FailedOver> {
        let _ = (aim, keys, pause);
        bail!("a single {} is paused whole (`pause-server`)", self.kind())
    }
}

/// What an old primary did while it ran on after a failover began (see [`FailedOver`]).
#[derive(Debug, Clone, Default)]
pub struct OldPrimary {
    /// The fencing tokens of the locks on the run's keys it was seen holding.
    pub tokens: Vec<u64>,
    /// (server time in µs, lock key) of every script it ran on a run's key (from `MONITOR`).
    pub scripts: Vec<(i64, String)>,
}

/// What [`ManagedServer::fail_over`] did.
#[derive(Debug, Clone)]
pub struct FailedOver {
    /// When the replica served as the primary (the topology agreed on it).
    pub serving: crate::clock::Stamp,
    /// When it was done: the kill, or the command sent (after the topology was checked whole).
    pub begun: crate::clock::Stamp,
    /// What the old primary did from `begun` until it was demoted, when it ran on (a failover
    /// by command, a pause): the locks it granted then its replica never got. Empty when it
    /// was killed.
    pub old_primary: OldPrimary,
    /// The run's lock keys the old primary served: what its unreplicated writes could lose.
    pub keys: Vec<String>,
    /// What happened, for the report (`127.0.0.1:7001 → 127.0.0.1:7004, serving 1.8 s after
    /// the kill`).
    pub note: String,
    /// Whether the replica took over (a paused primary may keep its place).
    pub failed_over: bool,
}

/// A topology's primary, as [`ManagedServer::primary_of`] finds it.
#[derive(Debug, Clone)]
pub struct PrimaryAt {
    /// Where its clients reach it.
    pub addr: std::net::SocketAddrV4,
    /// The run's lock keys it serves (with their prefix).
    pub served: Vec<String>,
}

/// The kinds of server the checker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// A single `redis-server`, without persistence.
    Redis,
    /// A Redis Cluster of three primaries and three replicas ([`crate::topology::RedisCluster`]).
    RedisCluster,
    /// A primary, a replica and three sentinels ([`crate::topology::SentinelGroup`]).
    RedisSentinel,
    /// A single PostgreSQL server ([`crate::postgres_server::PostgresServer`]).
    Postgres,
}

impl ServerKind {
    /// Whether it is several servers, failed over rather than paused or restarted as one.
    pub fn is_topology(self) -> bool {
        matches!(self, Self::RedisCluster | Self::RedisSentinel)
    }

    /// Whether `fault` can be applied to it; `Err` says why not.
    pub fn takes(self, fault: FaultKind) -> Result<(), String> {
        let server_fault = fault.needs_own_server() || fault.needs_proxy();
        match (self.is_topology(), fault) {
            (false, FaultKind::Failover | FaultKind::KillPrimary) if self == Self::Postgres => {
                Err("the checker's PostgreSQL is one server, without a standby to fail over to".into())
            }
            (false, FaultKind::Failover | FaultKind::KillPrimary) => {
                Err("a single redis-server has no replica to fail over to (try `--backend redis-cluster` or `redis-sentinel`)".into())
            }
            (
                true,
                FaultKind::Failover
                | FaultKind::KillPrimary
                | FaultKind::PauseServer
                | FaultKind::DropKey
                | FaultKind::PartitionPrimary,
            ) => Ok(()),
            (false, FaultKind::PartitionPrimary) => {
                Err(format!("a single {self} is one node: `partition` cuts workers off from it"))
            }
            (true, _) if server_fault => Err(format!(
                "a {self} is several servers: the checker fails its primaries over (`failover`, \
                 `kill-primary`), pauses one (`pause-server`), deletes a key on one (`drop-key`), \
                 cuts workers off from one (`partition-primary`) or all of them (`partition`) \
                 rather than restarting or proxying one"
            )),
            _ => Ok(()),
        }
    }

    /// The faults a run applies when `--faults` is not given: all it takes, lasting damage
    /// last.
    pub fn default_faults(self) -> Vec<FaultKind> {
        FaultKind::ALL.into_iter().filter(|&f| self.takes(f).is_ok()).collect()
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis-server",
            Self::RedisCluster => "Redis Cluster (3 primaries, 3 replicas)",
            Self::RedisSentinel => "Sentinel group (a primary, a replica, 3 sentinels)",
            Self::Postgres => "PostgreSQL server",
        })
    }
}

/// A private `redis-server` on a loopback port: no persistence (`--save "" --appendonly no`),
/// so a restart starts it empty.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Where its clients reach it: loopback, or an address the checker's network namespaces
    /// route to as well ([`crate::netns::Namespaces::topology_ip`]).
    reach: Ipv4Addr,
    dir: PathBuf,
    log: PathBuf,
    mode: Mode,
    extra: Vec<String>,
}

/// What a [`RedisServer`] runs as.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A data node (plain, a replica or a cluster node, as its other arguments say).
    Data,
    /// A sentinel, with this configuration (written to `sentinel.conf` in its directory at
    /// every start: a sentinel needs a file it may rewrite).
    Sentinel(String),
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl RedisServer {
    /// Start one on a free port; `name` names its directory and log under `dir`.
    pub fn start(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, name, Mode::Data, |_| Ok(Vec::new()))
    }

    /// Start one as `mode` on a free port, with the arguments `extra` gives for that port
    /// (after the checker's own: port, loopback, no persistence, its directory).
    pub fn start_with(
        dir: &Path,
        name: &str,
        mode: Mode,
        extra: impl Fn(u16) -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Self> {
        Self::start_at(dir, name, mode, Ipv4Addr::LOCALHOST, extra)
    }

    /// [`start_with`](Self::start_with), reached at `reach` as well as on loopback when
    /// `reach` is not loopback (`--bind 127.0.0.1 <reach>`, with protected mode off: the
    /// address is one only the checker's own namespaces route to).
    pub fn start_at(
        dir: &Path,
        name: &str,
        mode: Mode,
        reach: Ipv4Addr,
        extra: impl Fn(u16) -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Self> {
        let dir = dir.join(name);
        // A fresh server starts from nothing: a re-used run directory may hold an earlier
        // run's files (a cluster node's nodes.conf would make it refuse to join a new cluster).
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        on_a_free_port(|port| {
            let mut server = Self {
                child: None,
                port,
                reach,
                log: dir.join("redis.log"),
                dir: dir.clone(),
                mode: mode.clone(),
                extra: extra(port)?,
            };
            server.spawn().map(|()| server)
        })
        .context("could not start redis-server (is it installed?)")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address its clients reach it at.
    pub fn reach(&self) -> Ipv4Addr {
        self.reach
    }

    /// The address and port its clients reach it at.
    pub fn reached_at(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.reach, self.port)
    }

    /// Whether it runs (it was not killed, or was started again).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Replace the arguments of its next start (e.g. a killed primary comes back as a
    /// replica).
    pub fn set_extra(&mut self, extra: Vec<String>) {
        self.extra = extra;
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let log_err = log.try_clone()?;
        let mut command = Command::new("redis-server");
        match &self.mode {
            Mode::Data => {
                command.args(["--save", "", "--appendonly", "no"]);
            }
            Mode::Sentinel(conf) => {
                let file = self.dir.join("sentinel.conf");
                std::fs::write(&file, conf).with_context(|| format!("writing {}", file.display()))?;
                // The file must come first.
                command.arg(&file).arg("--sentinel");
            }
        }
        command.args(["--port", &self.port.to_string()]);
        if self.reach.is_loopback() {
            command.args(["--bind", "127.0.0.1"]);
        } else {
            command.args(["--bind", &format!("127.0.0.1 {}", self.reach), "--protected-mode", "no"]);
        }
        let child = command
            .args(["--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("spawning redis-server")?;
        let child = started(child)?;
        // Our own server must say it is ready: something else answering on the port is not it.
        let ready_line = match self.mode {
            Mode::Data => "Ready to accept connections",
            Mode::Sentinel(_) => "Running mode=sentinel",
        };
        let port = self.port;
        let ready = || answers_ping(port);
        self.child = Some(await_ready(child, "redis-server", port, &self.log, ready_line, ready, |_| ())?);
        Ok(())
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        // One that exited by itself is a zombie until reaped, and a zombie takes any signal
        // without error: a pause of it would be recorded though nothing was frozen.
        if crate::procfs::has_exited(child.id()) {
            bail!("redis-server {} has exited by itself; see {}", child.id(), self.log.display());
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to redis-server {pid}"))
    }
}

impl ManagedServer for RedisServer {
    fn kind(&self) -> &'static str {
        "redis-server"
    }

    fn url(&self) -> String {
        format!("redis://{}", self.reached_at())
    }

    fn addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            end(child).context("reaping redis-server")?;
        }
        Ok(())
    }

    fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let port = self.port;
        respawn("redis-server", port, || self.spawn())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = end(child);
        }
    }
}

/// The server processes (and tools that drive them, such as `redis-cli --cluster create`)
/// started and not yet reaped, by pid, and whether the process is exiting (then no more may
/// start): what [`kill_leftovers`] kills.
static RUNNING: Mutex<(BTreeSet<u32>, bool)> = Mutex::new((BTreeSet::new(), false));

fn running() -> std::sync::MutexGuard<'static, (BTreeSet<u32>, bool)> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SIGKILL every server this process started that is still running (`redis-server`s, and
/// PostgreSQL postmasters, whose backends exit when they find it gone), and start no more:
/// for an exit while a thread still holds one (a Ctrl-C while a topology forms), which would
/// not drop it.
pub fn kill_leftovers() {
    let mut running = running();
    running.1 = true;
    for pid in std::mem::take(&mut running.0) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Note a child just started in [`RUNNING`]; if the process is exiting, kill it instead.
pub(crate) fn started(child: Child) -> anyhow::Result<Child> {
    let mut running = running();
    if running.1 {
        drop(running);
        let _ = end(child);
        bail!("dlock-check is exiting: no server starts now");
    }
    running.0.insert(child.id());
    Ok(child)
}

/// Whether `child` (noted by [`started`]) has exited: reaped and forgotten in [`RUNNING`] under
/// its lock, as [`end`] does.
pub(crate) fn try_reap(child: &mut Child) -> std::io::Result<Option<std::process::ExitStatus>> {
    let mut running = running();
    let status = child.try_wait()?;
    if status.is_some() {
        running.0.remove(&child.id());
    }
    Ok(status)
}

/// Kill and reap `child`, and forget it in [`RUNNING`]: all under its lock, so that
/// [`kill_leftovers`] never signals a pid reaped and perhaps given to another process.
pub(crate) fn end(mut child: Child) -> std::io::Result<std::process::ExitStatus> {
    let mut running = running();
    // Err only if it already exited, which is what we want.
    let _ = child.kill();
    let status = child.wait();
    running.0.remove(&child.id());
    status
}

/// Run `attempt` on a free port, and again on another if it fails (the port was free when
/// looked at, but something could take it before the server binds it): five tries.
pub(crate) fn on_a_free_port<T>(mut attempt: impl FnMut(u16) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..5 {
        match attempt(free_port()?) {
            Ok(done) => return Ok(done),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Wait, up to [`STARTUP_BOUND`], until the server `child` (`what`, on `port`) has written
/// `ready_line` to `log` and `answers()`; then it is ready. If it exits first, or is not
/// ready in time, `stop` is called on it (for processes it runs) and it is ended and reaped,
/// and the error points at the log.
pub(crate) fn await_ready(
    mut child: Child,
    what: &str,
    port: u16,
    log: &Path,
    ready_line: &str,
    answers: impl Fn() -> bool,
    stop: impl Fn(&Child),
) -> anyhow::Result<Child> {
    let deadline = Instant::now() + STARTUP_BOUND;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let _ = end(child);
                bail!("{what} exited with {status}; see {}", log.display());
            }
            Err(err) => {
                let _ = end(child);
                return Err(anyhow::Error::new(err).context(format!("waiting for {what}")));
            }
        }
        let ready = std::fs::read_to_string(log).is_ok_and(|l| l.contains(ready_line));
        if ready && answers() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop(&child);
            let _ = end(child);
            bail!("{what} on port {port} was not ready within {STARTUP_BOUND:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start a killed server again on its `port` by `spawn`: what the old one held (its socket,
/// shared memory) may linger for a moment, so it is retried for [`STARTUP_BOUND`].
pub(crate) fn respawn(
    what: &str,
    port: u16,
    mut spawn: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_BOUND;
    loop {
        match spawn() {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(err) => return Err(err.context(format!("restarting {what} on port {port}"))),
        }
    }
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range: an
/// outgoing connection cannot take it while a restarted server is about to bind it again.
pub fn free_port() -> anyhow::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(12000);
    let low = high - 10000;
    for _ in 0..1000 {
        let port = low + rand::random::<u16>() % (high - low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

/// Whether something on `port` answers a RESP `PING`.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    matches!(stream.read(&mut reply), Ok(n) if n > 0 && reply[0] == b'+')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `redis-server` that died by itself (here: SIGKILLed behind the checker's back) is a
    /// zombie until reaped: pausing or resuming it must fail, not record a pause that froze
    /// nothing.
    #[test]
    fn a_server_that_died_by_itself_is_not_paused() {
        let dir = std::env::temp_dir().join(format!("dlock-check-test-{}", std::process::id()));
        let mut server = RedisServer::start(&dir, "dead").unwrap();
        let pid = server.child.as_ref().unwrap().id();
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::procfs::state(pid) != Some('Z') {
            assert!(Instant::now() < deadline, "redis-server {pid} did not die");
            std::thread::yield_now();
        }
        let paused = server.pause();
        let resumed = server.resume();
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(paused.is_err(), "a dead redis-server was 'paused'");
        assert!(resumed.is_err(), "a dead redis-server was 'resumed'");
    }
}
