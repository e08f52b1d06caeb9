//! Several processes × several tasks on one key: the cross-process hand-off.
//!
//! The parent re-executes this binary with the hidden `--child` mode. Each child connects,
//! warms up, prints `ready`, waits for `go` on stdin, then runs its tasks for the given time.
//! Every section it records:
//! - `acquired`: SystemTime ns right after the acquire returned;
//! - the stamp it read from the stamp key right after acquiring (written by the previous
//!   holder right before its release: SystemTime ns taken just before the stamp `SET`);
//! - `release_start`: SystemTime ns right before the release call (after the stamp `SET`).
//!
//! The parent merges all sections of all children by `acquired` and takes, for each one, the
//! time since the previous section's `release_start`: the exact release → next-acquire
//! hand-off (the stamp read through Redis gives the same figure plus the stamp `SET`'s own
//! round trip, and is reported next to it). The merge also checks mutual exclusion: a
//! section acquired before the previous one began to release would be an overlap.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::lockers::{Contender, Floor, Held, Lockers, Result, WAIT, ping_rtts, unix_nanos};
use crate::stats::Summary;

/// What the parent tells each child (as command-line arguments after `--child`).
#[derive(Debug, Clone)]
pub struct ChildArgs {
    pub contender: Contender,
    pub redis: String,
    pub prefix: String,
    pub tasks: usize,
    pub secs: f64,
    pub hold_ms: u64,
}

impl ChildArgs {
    fn to_args(&self) -> Vec<String> {
        vec![
            "--child".into(),
            "--contender".into(),
            self.contender.id().into(),
            "--redis".into(),
            self.redis.clone(),
            "--prefix".into(),
            self.prefix.clone(),
            "--tasks".into(),
            self.tasks.to_string(),
            "--secs".into(),
            self.secs.to_string(),
            "--hold-ms".into(),
            self.hold_ms.to_string(),
        ]
    }
}

/// One child's report.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    pid: u32,
    /// `[acquired_ns, release_start_ns, stamp_ns (0: none), stamp_pid, release_end_ns, wait_ns]`
    sections: Vec<[u64; 6]>,
    /// Sections per task of this child.
    per_task: Vec<u64>,
    errors: usize,
}

fn stamp_key(prefix: &str, c: Contender) -> String {
    format!("{prefix}stamp:{}", c.id())
}

/// The `--child` mode: run the tasks and print the report as one JSON line.
pub async fn child_main(args: ChildArgs) -> Result<()> {
    let lk = Arc::new(Lockers::connect(&args.redis, &args.prefix).await?);
    let c = args.contender;
    let pid = std::process::id();
    let key = lk.key(c, "xproc");
    let pubsub = match c {
        Contender::FloorPubsub => Some(Arc::new(PubsubFloor::start(&args.redis, &lk, &key).await?)),
        _ => None,
    };
    // Warm up: connections, script caches, dlock's subscriber task.
    let warm = lk.key(c, &format!("warm:{pid}"));
    match &pubsub {
        Some(p) => {
            let owner = p.lock(&warm).await?;
            p.unlock(&warm, &owner).await?;
        }
        None => {
            lk.op(c, &warm, Duration::ZERO).await?;
        }
    }

    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    if line.trim() != "go" {
        return Err(format!("child {pid}: expected `go`, got {line:?}").into());
    }

    let stamp = stamp_key(&args.prefix, c);
    let hold = Duration::from_millis(args.hold_ms);
    let end = Instant::now() + Duration::from_secs_f64(args.secs);
    let mut handles = Vec::new();
    for _ in 0..args.tasks {
        let (lk, key, stamp, pubsub) = (Arc::clone(&lk), key.clone(), stamp.clone(), pubsub.clone());
        handles.push(tokio::spawn(async move {
            let mut sections = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < end {
                match section(&lk, pubsub.as_deref(), c, &key, &stamp, hold, pid).await {
                    Ok(s) => sections.push(s),
                    Err(err) => {
                        errors += 1;
                        eprintln!("  child {pid} {c}: error: {err}");
                        if errors >= 20 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (sections, errors)
        }));
    }
    let mut report = ChildReport { pid, sections: Vec::new(), per_task: Vec::new(), errors: 0 };
    for h in handles {
        let (sections, errors) = h.await?;
        report.per_task.push(sections.len() as u64);
        report.sections.extend(sections);
        report.errors += errors;
    }
    let mut out = serde_json::to_vec(&report)?;
    out.push(b'\n');
    stdout.write_all(&out).await?;
    stdout.flush().await?;
    Ok(())
}

enum Holding {
    Lockers(Held),
    Pubsub(String),
}

async fn section(
    lk: &Lockers,
    pubsub: Option<&PubsubFloor>,
    c: Contender,
    key: &str,
    stamp: &str,
    hold: Duration,
    pid: u32,
) -> Result<[u64; 6]> {
    let mut conn = lk.conn.clone();
    let asked = Instant::now();
    let held = match pubsub {
        Some(p) => Holding::Pubsub(p.lock(key).await?),
        None => Holding::Lockers(lk.acquire(c, key).await?),
    };
    let acquired = unix_nanos();
    let wait = asked.elapsed().as_nanos() as u64;
    let previous: Option<String> = redis::cmd("GET").arg(stamp).query_async(&mut conn).await?;
    let (stamp_ns, stamp_pid) = previous
        .and_then(|v| {
            let (ns, p) = v.split_once(':')?;
            Some((ns.parse().ok()?, p.parse().ok()?))
        })
        .unwrap_or((0, 0));
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let value = format!("{}:{pid}", unix_nanos());
    redis::cmd("SET").arg(stamp).arg(value).query_async::<()>(&mut conn).await?;
    let release_start = unix_nanos();
    match (held, pubsub) {
        (Holding::Pubsub(owner), Some(p)) => p.unlock(key, &owner).await?,
        (Holding::Lockers(held), _) => lk.release(held).await?,
        (Holding::Pubsub(_), None) => return Err("pub/sub floor without its subscription".into()),
    }
    Ok([acquired, release_start, stamp_ns, stamp_pid, unix_nanos(), wait])
}

/// The release script of the pub/sub floor: the floor's owner-checked delete plus a
/// `PUBLISH` (what dlock's release script does, without the fencing counter).
const PUBSUB_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
return 0
";

/// The floor woken by release notices: one permanent subscription per process; every task
/// of the process retries `SET NX` at each notice (and every 50 ms as a fallback).
struct PubsubFloor {
    floor: Floor,
    conn: redis::aio::MultiplexedConnection,
    release: redis::Script,
    channel: String,
    notices: watch::Receiver<u64>,
}

impl PubsubFloor {
    async fn start(url: &str, lk: &Lockers, key: &str) -> Result<Self> {
        let channel = format!("{key}:released");
        let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let (tx, notices) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Self {
            floor: lk.floor.clone(),
            conn: lk.conn.clone(),
            release: redis::Script::new(PUBSUB_RELEASE),
            channel,
            notices,
        })
    }

    async fn lock(&self, key: &str) -> Result<String> {
        let owner = format!("{}-{}", std::process::id(), unix_nanos());
        let deadline = Instant::now() + WAIT;
        loop {
            let mut notices = self.notices.clone();
            notices.borrow_and_update();
            if self.floor.try_lock(key, &owner).await? {
                return Ok(owner);
            }
            if Instant::now() >= deadline {
                return Err(format!("floor + pub/sub: {key} not acquired within {WAIT:?}").into());
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notices.changed()).await;
        }
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let released: i64 =
            self.release.key(key).arg(owner).arg(&self.channel).invoke_async(&mut conn).await?;
        if released != 1 {
            return Err(format!("floor + pub/sub: {key} was no longer ours at release").into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HandoffRow {
    pub contender: Contender,
    pub procs: usize,
    pub tasks_per_proc: usize,
    pub hold_ms: u64,
    pub rounds: usize,
    pub secs: f64,
    pub sections: usize,
    pub sections_per_sec: f64,
    /// Sections per child process, summed over the rounds (child i of every round).
    pub per_proc_sections: Vec<usize>,
    /// min/max of the sections of the child processes, within each round.
    pub round_proc_fairness: Vec<f64>,
    /// Sections per task (all tasks of all children), summed over the rounds.
    pub per_task_sections: Vec<u64>,
    /// min/max of the sections of all tasks of all children, within each round.
    pub round_task_fairness: Vec<f64>,
    /// From asking for the lock to holding it.
    pub wait: Summary,
    /// Release start → next acquire, every hand-off.
    pub handoff_all: Summary,
    /// The same, only where the next holder is in another process.
    pub handoff_cross: Summary,
    /// The same, only where the next holder is in the same process.
    pub handoff_same: Summary,
    /// Cross-process hand-offs measured through the Redis stamp (adds the stamp SET's RTT).
    pub stamp_cross: Summary,
    /// How long the release call itself took (release start → the call returned).
    pub release_call: Summary,
    /// Sections that began before the previous one began to release (must be 0).
    pub overlaps: usize,
    pub errors: usize,
    /// PING round trip on an idle connection right before the children started.
    pub rtt_idle: Summary,
    /// PING round trip sampled every 2 ms by the parent while the children ran.
    pub rtt_loaded: Summary,
    pub cross_p50_in_idle_rtts: f64,
    pub cross_p50_in_loaded_rtts: f64,
}

/// What one contender gathered over the rounds.
#[derive(Debug, Default)]
pub struct HandoffAcc {
    procs: usize,
    tasks: usize,
    hold_ms: u64,
    rounds: usize,
    secs: f64,
    sections: usize,
    per_proc: Vec<usize>,
    round_proc_fairness: Vec<f64>,
    per_task: Vec<u64>,
    round_task_fairness: Vec<f64>,
    waits: Vec<u64>,
    every: Vec<u64>,
    cross: Vec<u64>,
    same: Vec<u64>,
    stamp_cross: Vec<u64>,
    release_call: Vec<u64>,
    overlaps: usize,
    errors: usize,
    rtt_idle: Vec<u64>,
    rtt_loaded: Vec<u64>,
}

/// One round: `procs` children × `args.tasks` tasks for `args.secs` with `args.contender`.
pub async fn run_round(lk: &Lockers, args: &ChildArgs, procs: usize, acc: &mut HandoffAcc) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(procs);
    for _ in 0..procs {
        let mut child = tokio::process::Command::new(&exe)
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("child stdout")?).lines();
        children.push((child, stdin, stdout));
    }
    for (_, _, stdout) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await??;
        if line.as_deref() != Some("ready") {
            return Err(format!("a child did not get ready: {line:?}").into());
        }
    }
    acc.rtt_idle.extend(ping_rtts(&lk.conn, 1000).await?);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (conn, stop) = (lk.conn.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut conn = conn;
            let mut rtts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                    rtts.push(t.elapsed().as_nanos() as u64);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rtts
        })
    };
    let started = Instant::now();
    for (_, stdin, _) in &mut children {
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let mut reports = Vec::with_capacity(procs);
    let limit = Duration::from_secs_f64(args.secs) + Duration::from_secs(60);
    for (mut child, _stdin, mut stdout) in children {
        let line = tokio::time::timeout(limit, stdout.next_line()).await??;
        let report: ChildReport = serde_json::from_str(line.as_deref().ok_or("a child printed no report")?)?;
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("child exited with {status}").into());
        }
        reports.push(report);
    }
    acc.secs += started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    acc.rtt_loaded.extend(sampler.await?);

    // Merge every section of every process in acquisition order.
    let mut all: Vec<(u64, u64, u64, u64, u32)> = Vec::new();
    acc.per_proc.resize(procs, 0);
    acc.per_task.resize(procs * args.tasks, 0);
    let mut task_counts = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        all.extend(r.sections.iter().map(|s| (s[0], s[1], s[2], s[3], r.pid)));
        acc.release_call.extend(r.sections.iter().map(|s| s[4].saturating_sub(s[1])));
        acc.waits.extend(r.sections.iter().map(|s| s[5]));
        acc.per_proc[i] += r.sections.len();
        for (t, n) in r.per_task.iter().enumerate() {
            if let Some(slot) = acc.per_task.get_mut(i * args.tasks + t) {
                *slot += n;
            }
        }
        task_counts.extend(r.per_task.iter().copied());
        acc.errors += r.errors;
    }
    let proc_counts: Vec<u64> = reports.iter().map(|r| r.sections.len() as u64).collect();
    acc.round_proc_fairness.push(min_over_max(&proc_counts));
    acc.round_task_fairness.push(min_over_max(&task_counts));
    all.sort_unstable_by_key(|s| s.0);
    for pair in all.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.0 < prev.1 {
            acc.overlaps += 1;
            continue;
        }
        let h = next.0 - prev.1;
        acc.every.push(h);
        if next.4 == prev.4 {
            acc.same.push(h);
        } else {
            acc.cross.push(h);
        }
    }
    for s in &all {
        if s.2 != 0 && s.3 != u64::from(s.4) && s.0 >= s.2 {
            acc.stamp_cross.push(s.0 - s.2);
        }
    }
    acc.sections += all.len();
    acc.rounds += 1;
    acc.procs = procs;
    acc.tasks = args.tasks;
    acc.hold_ms = args.hold_ms;
    Ok(())
}

fn min_over_max(v: &[u64]) -> f64 {
    match (v.iter().min(), v.iter().max()) {
        (Some(&min), Some(&max)) if max > 0 => min as f64 / max as f64,
        _ => 0.0,
    }
}

impl HandoffAcc {
    pub fn row(mut self, c: Contender) -> HandoffRow {
        let rtt_idle = Summary::of(&mut self.rtt_idle);
        let rtt_loaded = Summary::of(&mut self.rtt_loaded);
        let handoff_cross = Summary::of(&mut self.cross);
        let ratio = |rtt: &Summary| if rtt.p50_us > 0.0 { handoff_cross.p50_us / rtt.p50_us } else { 0.0 };
        HandoffRow {
            contender: c,
            procs: self.procs,
            tasks_per_proc: self.tasks,
            hold_ms: self.hold_ms,
            rounds: self.rounds,
            secs: self.secs,
            sections: self.sections,
            sections_per_sec: self.sections as f64 / self.secs,
            per_proc_sections: self.per_proc,
            round_proc_fairness: self.round_proc_fairness,
            per_task_sections: self.per_task,
            round_task_fairness: self.round_task_fairness,
            wait: Summary::of(&mut self.waits),
            handoff_all: Summary::of(&mut self.every),
            cross_p50_in_idle_rtts: ratio(&rtt_idle),
            cross_p50_in_loaded_rtts: ratio(&rtt_loaded),
            handoff_cross,
            handoff_same: Summary::of(&mut self.same),
            stamp_cross: Summary::of(&mut self.stamp_cross),
            release_call: Summary::of(&mut self.release_call),
            overlaps: self.overlaps,
            errors: self.errors,
            rtt_idle,
            rtt_loaded,
        }
    }
}
