//! [`RedisServer`]: a private `redis-server` on a free loopback port, owned by one test —
//! stopped, restarted on the same port, paused and resumed at will, killed on drop (also on
//! panic). Tests that stop, pause, flush or reconfigure Redis use one of these, never the
//! shared server.

use std::fmt;
use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};

use super::redis_process::{RedisProcess, TempDir};

/// A `redis-server` process owned by one test, on its own loopback port, with no persistence.
///
/// Dropping it kills the process (SIGKILL, which also ends a paused one), reaps it, and
/// removes its directory (its log).
pub struct RedisServer {
    process: RedisProcess,
    /// Dropped after the process.
    _dir: TempDir,
}

impl RedisServer {
    /// Start a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start a server on a free port with extra arguments (e.g. `["--requirepass", "s3cret"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        // The port is free when we look, but another process could take it before
        // redis-server binds it: try a few ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("redis");
            let mut args: Vec<std::ffi::OsString> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
                .into_iter()
                .chain(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
                .map(Into::into)
                .collect();
            args.push(dir.path().into());
            args.extend(extra_args.iter().map(Into::into));
            let mut process =
                RedisProcess::new(port, dir.path().to_owned(), args, "Ready to accept connections");
            match process.spawn() {
                Ok(()) => return Self { process, _dir: dir },
                Err(err) => last_error = err,
            }
        }
        panic!("could not start redis-server after 5 attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// `redis://:<password>@127.0.0.1:<port>`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}", self.port())
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Kill the server (SIGKILL) and wait for it to exit: clients see their connections drop
    /// and new connections refused. A no-op if it is not running.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port (stopping it first if it runs). Its data is
    /// gone: there is no persistence.
    pub fn restart(&mut self) {
        self.process.kill();
        // The old socket may linger for a moment: `respawn` retries the bind for a while.
        self.process.respawn();
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// Thaw a paused server (SIGCONT).
    pub fn resume(&mut self) {
        self.process.resume();
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer").field("port", &self.port()).field("pid", &self.pid()).finish()
    }
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
