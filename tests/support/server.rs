//! [`RedisServer`]: a private `redis-server` on a free loopback port, owned by one test —
//! stopped, restarted on the same port, paused and resumed at will, killed on drop (also on
//! panic). Tests that stop, pause, flush or reconfigure Redis use one of these, never the
//! shared server.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

    /// The loopback port it listens on.
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
