//! A private PostgreSQL the checker starts, owns and faults (`--backend postgres`): `initdb`
//! and the `postgres` server binary from `/usr/lib/postgresql/*/bin`, on a free loopback port
//! (TCP only, no Unix socket), a random password for its superuser, the C locale, no fsync.
//!
//! A pause and a kill reach every process of the server, not only the postmaster: its
//! backends and helpers each run in a session of their own (PostgreSQL's children call
//! `setsid`), so they are found by their parent instead, and the postmaster is stopped first
//! so that it forks no new one meanwhile.
//! PostgreSQL refuses to run as root: when the checker is root, the server runs as the
//! `postgres` user (made by the `postgresql` package), its data in a temporary directory only
//! that user may enter (so `TMPDIR`, if set, must be a directory that user can reach); its log
//! goes to the run's directory like every other server's.
//!
//! Unlike the checker's `redis-server`, PostgreSQL keeps what it committed: `restart-server`
//! is a crash — PostgreSQL's immediate shutdown (SIGQUIT: every process exits at once, no
//! checkpoint; SIGKILL for all if it takes longer than 5 s) — and a start on the same data,
//! which recovers from its write-ahead log. The postmaster reaps its own children on the way
//! out, so none is left to an init that may not reap. Fencing tokens come from a sequence, so
//! they go on from where they were; leases are rows, judged by the server's clock, so a lease
//! that ran out while the server was down is free when it is back.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};

use crate::procfs::{stat, state};
use crate::servers::{ManagedServer, await_ready, end, on_a_free_port, respawn, started};

/// The line the server logs once it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";

/// A private PostgreSQL server; see the module's docs.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    /// `bin/` of the PostgreSQL installation.
    bin: PathBuf,
    /// The data directory's parent, owned by the user the server runs as; removed on drop.
    home: PathBuf,
    log: PathBuf,
    /// The user the server runs as (`postgres` when the checker is root).
    user: Option<User>,
    /// The superuser's password (a local user must not be able to log in and run programs as
    /// the server's user).
    password: String,
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl PostgresServer {
    /// Make a database cluster and start its server on a free port; `name` names its log's
    /// directory under `dir`.
    pub fn start(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let bin = installed_bin()?;
        let user = if geteuid().is_root() {
            Some(
                User::from_name("postgres")
                    .context("looking up the `postgres` user")?
                    .context("PostgreSQL refuses to run as root, and there is no `postgres` user to run it as (apt-get install postgresql makes one)")?,
            )
        } else {
            None
        };
        let logs = dir.join(name);
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let home = std::env::temp_dir().join(format!(
            "dlock-check-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // A new directory (never one that exists, which someone else could have made), which
        // only the server's user may enter.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .with_context(|| format!("creating {}", home.display()))?;
        let password = format!("{:032x}", rand::random::<u128>());
        let mut server =
            Self { child: None, port: 0, bin, home, log: logs.join("postgres.log"), user, password };
        server.hand_over(&server.home)?;
        let pwfile = server.home.join("pwfile");
        std::fs::write(&pwfile, &server.password).with_context(|| format!("writing {}", pwfile.display()))?;
        server.hand_over(&pwfile)?;
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(server.data())
            // `password` (sent in the clear, over loopback only): a SCRAM exchange costs the
            // client thousands of hash rounds per connection, and a fault makes every worker
            // reconnect at once.
            .args(["-U", "postgres", "-A", "password", "--locale=C", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let output = initdb.stdin(Stdio::null()).output().context("running initdb")?;
        if !output.status.success() {
            bail!("initdb failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        on_a_free_port(|port| {
            server.port = port;
            server.spawn()
        })
        .context("could not start PostgreSQL")?;
        Ok(server)
    }

    /// The directory holding the data directory, owned by the server's user, removed when the
    /// server is dropped.
    pub fn data_home(&self) -> &Path {
        &self.home
    }

    fn data(&self) -> PathBuf {
        self.home.join("data")
    }

    /// A command for one of the installation's programs, run as the server's user, in its
    /// directory (`initdb` and `postgres` look at their working directory).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.home);
        if let Some(user) = &self.user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }

    /// Give `path` to the server's user (when the checker is root).
    fn hand_over(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.user {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to the `postgres` user", path.display()))?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let log_err = log.try_clone()?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            // TCP only; messages in English, which the readiness check reads.
            .args(["-c", "unix_socket_directories=", "-c", "lc_messages=C"])
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            // Out of the checker's process group: a Ctrl-C at the checker's terminal is the
            // checker's to handle (it kills what it started).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = started(command.spawn().context("spawning postgres")?)?;
        let port = self.port;
        let answers = || TcpStream::connect(("127.0.0.1", port)).is_ok();
        let stop = |child: &Child| {
            let _ = kill_all(child);
        };
        self.child = Some(await_ready(child, "PostgreSQL", port, &self.log, READY_LINE, answers, stop)?);
        Ok(())
    }

    /// The pids of the postmaster and of every process it runs (its children); empty once
    /// killed.
    pub fn processes(&self) -> Vec<u32> {
        let Some(child) = &self.child else { return Vec::new() };
        let mut all = vec![child.id()];
        all.extend(children_of(child.id()));
        all
    }

    /// The postmaster's pid, if it runs: one that exited by itself (a zombie until reaped)
    /// is an error that points at the log.
    fn postmaster(&self) -> anyhow::Result<u32> {
        let child = self.child.as_ref().context("PostgreSQL is not running")?;
        match state(child.id()) {
            None | Some('Z' | 'X') => bail!("PostgreSQL has exited by itself; see {}", self.log.display()),
            Some(_) => Ok(child.id()),
        }
    }
}

/// Send SIGSTOP to `pid` and wait until it has stopped (a signal is delivered asynchronously),
/// or is gone; at most [`STOP_BOUND`].
fn stop(pid: u32) -> anyhow::Result<()> {
    kill(pid_of(pid)?, Signal::SIGSTOP).with_context(|| format!("stopping PostgreSQL process {pid}"))?;
    let deadline = Instant::now() + STOP_BOUND;
    loop {
        match state(pid) {
            None | Some('T' | 't' | 'Z' | 'X') => return Ok(()),
            Some(_) if Instant::now() >= deadline => {
                bail!("PostgreSQL process {pid} did not stop within {STOP_BOUND:?}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// How long a process may take to stop after SIGSTOP.
const STOP_BOUND: Duration = Duration::from_secs(1);

/// PostgreSQL's immediate shutdown (SIGQUIT to the postmaster, which tells every process to
/// exit at once and reaps them), thawing a paused server first; [`kill_all`] if the postmaster
/// has not exited within [`SHUTDOWN_BOUND`]. The postmaster is then reaped by [`end`].
fn shut_down_at_once(child: &Child) -> anyhow::Result<()> {
    let postmaster = child.id();
    for pid in children_of(postmaster).into_iter().chain([postmaster]) {
        let _ = kill(pid_of(pid)?, Signal::SIGCONT);
    }
    if kill(pid_of(postmaster)?, Signal::SIGQUIT).is_ok() {
        let deadline = Instant::now() + SHUTDOWN_BOUND;
        while Instant::now() < deadline {
            // Exited: a zombie until `end` reaps it (not reaped here, so that its pid stays
            // ours until `end` forgets it).
            if crate::procfs::has_exited(postmaster) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    kill_all(child)
}

/// How long an immediate shutdown may take before every process is SIGKILLed.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

/// SIGKILL the postmaster `child` and every process it runs (it is then reaped by [`end`]).
/// The postmaster is stopped first, so that it forks nothing new while its children die.
fn kill_all(child: &Child) -> anyhow::Result<()> {
    let postmaster = pid_of(child.id())?;
    // Killed even if it would not stop in time.
    let _ = stop(child.id());
    for pid in children_of(child.id()) {
        // It may have exited meanwhile.
        let _ = kill(pid_of(pid)?, Signal::SIGKILL);
    }
    kill(postmaster, Signal::SIGKILL).context("killing the postmaster")
}

impl ManagedServer for PostgresServer {
    fn kind(&self) -> &'static str {
        "PostgreSQL"
    }

    fn url(&self) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres", self.password, self.port)
    }

    fn addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// The postmaster first (frozen, it forks no new process), then every process it runs;
    /// returns once each has stopped.
    fn pause(&mut self) -> anyhow::Result<()> {
        let postmaster = self.postmaster()?;
        stop(postmaster)?;
        for pid in children_of(postmaster) {
            stop(pid)?;
        }
        Ok(())
    }

    /// Its children first, then the postmaster (which may fork again).
    fn resume(&mut self) -> anyhow::Result<()> {
        let postmaster = self.postmaster()?;
        for pid in children_of(postmaster).into_iter().chain([postmaster]) {
            kill(pid_of(pid)?, Signal::SIGCONT)
                .with_context(|| format!("resuming PostgreSQL process {pid}"))?;
        }
        Ok(())
    }

    /// PostgreSQL's immediate shutdown; see the module's docs.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            let killed = shut_down_at_once(&child);
            end(child).context("reaping postgres")?;
            killed?;
        }
        Ok(())
    }

    fn keeps_data(&self) -> bool {
        true
    }

    fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let port = self.port;
        respawn("PostgreSQL", port, || self.spawn())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn pid_of(pid: u32) -> anyhow::Result<Pid> {
    Ok(Pid::from_raw(i32::try_from(pid).context("pid out of range")?))
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// `bin/` of the newest PostgreSQL under `/usr/lib/postgresql` that has `initdb`.
fn installed_bin() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!("PostgreSQL's server programs are not in {} (apt-get install postgresql)", root.display())
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no initdb under {}/*/bin (apt-get install postgresql)", root.display()))
}
