//! Servers the checker starts, owns and faults: today a private `redis-server`; later a
//! private PostgreSQL (`initdb` + `pg_ctl`), a Redis Cluster, a Sentinel topology — each one
//! more implementation of [`ManagedServer`].
//!
//! A managed server listens on a free loopback port, keeps its files in a directory of its
//! own, and is killed when dropped. The checker never signals a process it did not start.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a fresh server may take to answer.
const STARTUP_BOUND: Duration = Duration::from_secs(10);

/// A server the checker started and may stop, freeze and restart.
pub trait ManagedServer: Send + Sync + fmt::Debug {
    /// What it is (`redis-server`).
    fn kind(&self) -> &'static str;

    /// The URL a client uses to reach it directly.
    fn url(&self) -> String;

    /// The address it listens on (what a proxy forwards to).
    fn addr(&self) -> SocketAddr;

    /// Freeze it (SIGSTOP): connections stay open, nothing is answered.
    fn pause(&mut self) -> anyhow::Result<()>;

    /// Thaw it (SIGCONT).
    fn resume(&mut self) -> anyhow::Result<()>;

    /// Kill it (SIGKILL) and reap it: connections drop, new ones are refused.
    fn kill(&mut self) -> anyhow::Result<()>;

    /// Start it again, empty, on the same address (killing it first if it runs); returns once
    /// it answers.
    fn start_again(&mut self) -> anyhow::Result<()>;
}

/// The kinds of server the checker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// A single `redis-server`, without persistence.
    Redis,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis-server",
        })
    }
}

/// Start a server of `kind`, its files under `dir`.
pub fn start(kind: ServerKind, dir: &Path, name: &str) -> anyhow::Result<Box<dyn ManagedServer>> {
    match kind {
        ServerKind::Redis => Ok(Box::new(RedisServer::start(dir, name)?)),
    }
}

/// A private `redis-server` on a loopback port: no persistence (`--save "" --appendonly no`),
/// so a restart starts it empty.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
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
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The port is free when we look, but something could take it before redis-server
        // binds it: try a few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Self { child: None, port, log: dir.join("redis.log"), dir: dir.clone() };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context("could not start redis-server (is it installed?)")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let log_err = log.try_clone()?;
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
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("spawning redis-server")?;
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited with {status}; see {}", self.log.display());
            }
            // Our own server must say it is ready: something else answering on the port is not it.
            let ready =
                std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("Ready to accept connections"));
            if ready && answers_ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server on port {} did not answer within {STARTUP_BOUND:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to redis-server {pid}"))
    }
}

impl ManagedServer for RedisServer {
    fn kind(&self) -> &'static str {
        "redis-server"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Err only if it already exited, which is what we want.
            let _ = child.kill();
            child.wait().context("reaping redis-server")?;
        }
        Ok(())
    }

    fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        // The old socket may linger for a moment: retry the bind for a while.
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(err) => return Err(err.context(format!("restarting redis-server on port {}", self.port))),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
