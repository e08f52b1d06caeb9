//! Other OS processes: the running test binary re-executed as a [`Worker`], killed (and
//! reaped) on drop, so a failing test leaves none behind.
//!
//! A binary that needs workers has one `#[ignore]`d test that is the worker's body: it runs
//! [`worker_job`] and does nothing when that is `None` (a normal `--ignored` run). The parent
//! starts it with [`Worker::spawn`]`(that test's name, mode, url)`; the worker reports with
//! [`say`], and stops when the parent closes its stdin ([`stdin_closed`]) or kills it.
//!
//! ```ignore
//! #[tokio::test]
//! #[ignore = "worker process for the tests of this file; they start it"]
//! async fn worker() {
//!     let Some(job) = dlock_tests::support::process::worker_job() else { return };
//!     match job.mode.as_str() { "hold" => { /* … */ say("HOLDING 7"); } other => panic!("{other}") }
//! }
//!
//! let mut worker = Worker::spawn("worker", "hold", &server.url());
//! let token = worker.line_starting("HOLDING ", Duration::from_secs(20)).await;
//! worker.kill().await;
//! ```

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use super::poll::poll_until;

/// Tells a worker what to do.
const MODE_ENV: &str = "DLOCK_TEST_WORKER_MODE";
/// Tells a worker which Redis to use.
const URL_ENV: &str = "DLOCK_TEST_WORKER_URL";
/// Lines a worker prints for its parent start with this (libtest may print `test … ` before
/// it on the same line).
const SAYS: &str = "WORKER ";

/// What a worker process was started to do.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    /// The mode its parent gave, e.g. `"increment"` or `"wait 500"`.
    pub mode: String,
    /// The Redis URL its parent gave.
    pub url: String,
}

/// In a worker process: what its parent asked for. `None` when the worker test was run
/// directly (then it does nothing).
pub fn worker_job() -> Option<WorkerJob> {
    let mode = std::env::var(MODE_ENV).ok()?;
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| panic!("{URL_ENV} is set for workers"));
    Some(WorkerJob { mode, url })
}

/// In a worker process: tell the parent `line` (it sees it in [`Worker::lines`]).
pub fn say(line: &str) {
    println!("{SAYS}{line}");
}

/// In a worker process: resolves when the parent closes this process's stdin (its way of
/// saying "stop"; [`Worker::finish`] does it).
pub async fn stdin_closed() {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
}

/// This test binary running one `#[ignore]`d test as a worker process. Killed and reaped when
/// dropped.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl Worker {
    /// Start this binary running only the ignored test `worker_test`, told to do `mode` on the
    /// Redis at `url`. Its stderr goes to the test's; what it [`say`]s is collected.
    pub fn spawn(worker_test: &str, mode: &str, url: &str) -> Self {
        let exe = std::env::current_exe().expect("the path of this test binary");
        let mut child = Command::new(exe)
            .args(["--exact", worker_test, "--nocapture", "--ignored", "--test-threads=1"])
            .env(MODE_ENV, mode)
            .env(URL_ENV, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning a worker process");
        let pid = child.id().expect("a worker that was just started has a pid");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("the worker's stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn({
            let lines = Arc::clone(&lines);
            async move {
                let mut stdout = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = stdout.next_line().await {
                    if let Some((_, said)) = line.split_once(SAYS) {
                        lines.lock().unwrap_or_else(PoisonError::into_inner).push(said.to_owned());
                    }
                }
            }
        });
        Self { child, pid, stdin, lines, reader }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every line the worker has said so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Wait until the worker has said `line`; panic if it does not within `bound`.
    pub async fn wait_for_line(&self, line: &str, bound: Duration) {
        poll_until(bound, &format!("worker said {line:?}"), || async {
            self.lines().iter().any(|l| l == line)
        })
        .await;
    }

    /// Wait until the worker has said a line starting with `prefix`, and return the rest of
    /// it; panic if it does not within `bound`.
    pub async fn line_starting(&self, prefix: &str, bound: Duration) -> String {
        poll_until(bound, &format!("worker said `{prefix}…`"), || async {
            self.lines().iter().any(|l| l.starts_with(prefix))
        })
        .await;
        let lines = self.lines();
        let line = lines.iter().find(|l| l.starts_with(prefix)).expect("just seen");
        line[prefix.len()..].trim().to_owned()
    }

    /// Kill the worker (SIGKILL) and reap it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("killing a worker process");
    }

    /// Wait for the worker to exit by itself, however long that takes.
    pub async fn wait(mut self) -> ExitStatus {
        self.child.wait().await.expect("waiting for a worker process")
    }

    /// Close the worker's stdin (its signal to stop) and wait for it to exit within `bound`
    /// (killed, and a panic, if it does not); its status and every line it said.
    pub async fn finish(mut self, bound: Duration) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let status = match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(status) => status.expect("waiting for a worker process"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("worker process {} did not finish within {bound:?}", self.pid);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), &mut self.reader)
            .await
            .expect("the worker's stdout closes when it exits")
            .expect("reading the worker's stdout");
        (status, self.lines())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Err only if it already exited. Tokio reaps a killed child in the background.
        let _ = self.child.start_kill();
        self.reader.abort();
    }
}
