//! The checker end to end, as CI runs it: a short schedule of every fault on Redis, failovers
//! of a Redis Cluster and of a Sentinel group, and a run on the in-process backend find no
//! violations in today's dlock, and each planted bug is found (with a bug-free run as the
//! control).
//!
//! Redis runs start their own private `redis-server`s (it must be installed). The tests take
//! turns: each measures recovery times against a bound on a two-core machine.

use std::path::PathBuf;
use std::time::Duration;

use dlock_check::analysis::{Analysis, ViolationKind};
use dlock_check::backends::Plant;
use dlock_check::config::{BackendChoice, RunConfig, default_call_timeout};
use dlock_check::schedule::{FaultKind, FaultSpec};
use dlock_check::servers::ServerKind;
use dlock_check::workload::{ModeChoice, Workload};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TTL: Duration = Duration::from_millis(400);

fn config(name: &str, backend: BackendChoice) -> RunConfig {
    let recovery_bound = TTL + Duration::from_secs(1);
    RunConfig {
        backend,
        workers: 3,
        workload: Workload {
            tasks: 3,
            keys: vec!["a".into(), "b".into()],
            mode: ModeChoice::Mixed,
            ttl: TTL,
            wait: Duration::from_secs(1),
            think_min: Duration::from_millis(2),
            think_max: Duration::from_millis(15),
            long_every: 5,
            long_think: TTL.mul_f64(1.5),
            seed: rand_seed(),
        },
        faults: Vec::new(),
        baseline: Duration::from_secs(2),
        settle: recovery_bound + Duration::from_millis(200),
        fault_duration: TTL * 2,
        latency: Duration::from_millis(50),
        recovery_bound,
        plant: None,
        call_timeout: default_call_timeout(TTL),
        replicas: None,
        out_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dlock-check-{name}")),
        worker_exe: PathBuf::from(env!("CARGO_BIN_EXE_dlock-check")),
        verbose: true,
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
}

async fn check(config: RunConfig) -> Analysis {
    checked(config).await.analysis
}

/// How many runs a check gets when the machine's wall clock steps during them.
const RUNS_WHEN_THE_CLOCK_STEPS: usize = 3;

/// The run, its check and what each fault recorded. A run whose history is unreliable only
/// because the wall clock stepped (the machine's clock sync, not the lock) is run again, up
/// to [`RUNS_WHEN_THE_CLOCK_STEPS`] runs in all; any other unreliable history fails the test.
async fn checked(config: RunConfig) -> dlock_check::Checked {
    let mut run = 1;
    loop {
        let checked =
            dlock_check::check(config.clone()).await.unwrap_or_else(|err| panic!("the run failed: {err:#}"));
        eprintln!("{}", dlock_check::report::text_report(&checked.config, &checked.analysis));
        if checked.analysis.unreliable_only_for_a_clock_step() && run < RUNS_WHEN_THE_CLOCK_STEPS {
            eprintln!("run {run}: {:?}; running again", checked.analysis.notes);
            run += 1;
            continue;
        }
        assert!(checked.analysis.valid, "the history is unreliable: {:?}", checked.analysis.notes);
        return checked;
    }
}

/// The run really exercised the lock: sections on every key, long ones renewed to the end.
fn assert_exercised(analysis: &Analysis) {
    for key in ["a", "b"] {
        assert!(analysis.sections.iter().filter(|s| s.key == key).count() >= 5, "too few sections on {key}");
    }
    let renewed = analysis
        .sections
        .iter()
        .filter(|s| s.long && s.outcome == Some(dlock_check::history::Outcome::Ok))
        .count();
    assert!(renewed > 0, "no long section (renewed past its ttl) finished");
}

/// Each of `kinds` once, in order, with the run's durations.
fn schedule(kinds: &[FaultKind]) -> Vec<FaultSpec> {
    kinds.iter().map(|&kind| FaultSpec { kind, duration: None, delay: None }).collect()
}

fn overlaps(analysis: &Analysis) -> usize {
    analysis.violations.iter().filter(|v| v.kind == ViolationKind::Overlap).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_has_no_violations() {
    let _turn = SERIAL.lock().await;
    let mut config = config("memory", BackendChoice::Memory);
    // The one fault the in-process backend takes: it loses a held key.
    config.faults = vec![FaultSpec { kind: FaultKind::DropKey, duration: None, delay: None }];
    let analysis = check(config).await;
    assert_exercised(&analysis);
    assert!(analysis.passed(), "violations: {:#?}", analysis.violations);
}

/// Every fault a single server takes, in the default order (the server's restart and the black
/// hole last), on a server of `kind` the checker starts: no violation, and every fault had
/// sections in its window.
async fn short_schedule_has_no_violations(name: &str, kind: ServerKind) -> Analysis {
    let mut config = config(name, BackendChoice::Managed(kind));
    config.baseline = Duration::from_secs(1);
    config.faults = schedule(&[
        FaultKind::KillWorker,
        FaultKind::PauseWorker,
        FaultKind::PauseServer,
        FaultKind::DropKey,
        FaultKind::Partition,
        FaultKind::Latency,
        FaultKind::RestartServer,
        FaultKind::Blackhole,
    ]);
    let analysis = check(config).await;
    assert_exercised(&analysis);
    assert!(analysis.passed(), "violations: {:#?}", analysis.violations);
    for row in &analysis.rows[1..] {
        if let Some(why) = &row.skipped {
            eprintln!("skipped {}: {why}", row.label);
            assert!(
                row.label == "partition",
                "only a partition may be skipped (no namespaces): {}",
                row.label
            );
            continue;
        }
        assert!(row.sections > 0, "no section in the window of {}", row.label);
    }
    // Inside at least one section (its tasks may hold both keys).
    assert!(
        analysis.total.killed >= 1,
        "the killed worker was inside no section: {:?}",
        analysis.rows[1].note
    );
    analysis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_short_schedule_has_no_violations() {
    let _turn = SERIAL.lock().await;
    short_schedule_has_no_violations("redis", ServerKind::Redis).await;
}

/// The same schedule on a private PostgreSQL. Its restart is a crash that keeps the data, so
/// nothing is excused as lost with it; its pause freezes every process of the server, so the
/// calls in flight time out (a pause of the postmaster alone would leave open connections
/// answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_short_schedule_has_no_violations() {
    let _turn = SERIAL.lock().await;
    let analysis = short_schedule_has_no_violations("postgres", ServerKind::Postgres).await;
    let row = |label: &str| {
        analysis.rows.iter().find(|r| r.label.starts_with(label)).unwrap_or_else(|| panic!("no {label} row"))
    };
    let restart = row("restart-server");
    assert_eq!(restart.label, "restart-server (crash, data kept)");
    assert_eq!(restart.lost_with_server_data, 0, "the restart lost nothing, so nothing is excused by it");
    let paused = row("pause-server");
    assert!(paused.errors > 0, "no call failed while the server was frozen: {paused:?}");
}

/// A topology the checker starts fails over under the workload — by the topology's own
/// command, by killing the primary of a held key, and by freezing it past the failure
/// detection — loses a held key on the primary that serves it, and has a holder cut off from
/// every one of its nodes, then from that primary alone, and nothing is violated: no two
/// holders unexcused, no token going back across the failovers, no fenced update lost, and
/// every key in use again within the recovery bound after the replica serves (or the
/// partition heals).
async fn topology_failovers_have_no_violations(name: &str, kind: ServerKind) {
    let _turn = SERIAL.lock().await;
    let mut config = config(name, BackendChoice::Managed(kind));
    config.baseline = Duration::from_secs(1);
    config.faults =
        schedule(&[FaultKind::Failover, FaultKind::KillPrimary, FaultKind::KillWorker, FaultKind::DropKey]);
    // And the primary frozen past the topology's failure detection (1 s), then thawed: it
    // serves on, with the locks its clients take, until it hears it was replaced.
    config.faults.push(FaultSpec {
        kind: FaultKind::PauseServer,
        duration: Some(Duration::from_millis(2500)),
        delay: None,
    });
    // And a holder (with up to half the workers) cut off from every node for 2 ttl, then from
    // the primary of a held key alone for longer than a long section, so that the other keys
    // come free meanwhile.
    config.faults.push(FaultSpec { kind: FaultKind::Partition, duration: None, delay: None });
    config.faults.push(FaultSpec {
        kind: FaultKind::PartitionPrimary,
        duration: Some(Duration::from_secs(2)),
        delay: None,
    });
    let checked = checked(config).await;
    let analysis = &checked.analysis;
    assert_exercised(analysis);
    assert!(analysis.passed(), "violations: {:#?}", analysis.violations);
    for row in &analysis.rows[1..] {
        assert_eq!(row.skipped, None, "{} was not applied", row.label);
        assert!(row.sections > 0, "no section in the window of {}", row.label);
        assert!(row.recovered, "{} did not recover in time: {:?} ms", row.label, row.recovery_ms);
    }
    // The topology really changed hands, each time.
    for row in &analysis.rows[1..3] {
        let note = row.note.as_deref().unwrap_or_default();
        assert!(note.contains("→ replica") && note.contains("back as its replica"), "{}: {note}", row.label);
    }
    // The failover by command was aimed at a holder of a long section on the old primary: the
    // old primary's locks were read from before the command (that holder's among them), and
    // its scripts followed, until it was demoted. (Without them no overlap on a lock it
    // granted meanwhile could be excused.)
    let failover = &checked.run.history.faults[0];
    let aimed = failover.note.as_deref().unwrap_or_default();
    if aimed.contains(" held key ") {
        assert!(
            !failover.granted_by_old_primary.is_empty() || !failover.old_primary_scripts.is_empty(),
            "nothing read on the old primary: {aimed}"
        );
    }
    assert!(
        checked.run.history.faults[1].granted_by_old_primary.is_empty(),
        "a killed primary grants nothing"
    );
    // The key went from the primary that served it (routed by its slot, or to the primary the
    // sentinels name after two failovers), under its holder.
    let dropped = &checked.run.history.faults[3];
    let note = dropped.note.as_deref().unwrap_or_default();
    assert!(dropped.label.starts_with("drop-key"), "{}", dropped.label);
    assert!(!note.contains("found no key"), "the DEL missed the held key: {note}");
    if note.starts_with("held by") {
        assert!(dropped.data_lost.is_some(), "{}: {note}", dropped.label);
    }
    // The partitions reached the nodes the workers were given (each node announces an address
    // of its own that the namespaces route, not loopback).
    assert_cut_off_and_back(&checked, 5);
    let from_primary = assert_cut_off_and_back(&checked, 6);
    assert!(from_primary.label.starts_with("partition-primary"), "{}", from_primary.label);
    assert!(!from_primary.cut_off_keys.is_empty(), "{}: the primary serves no key", from_primary.label);
    // Cut off from one primary, a worker still took the keys the others serve (a cluster's other
    // shards; a Sentinel group has one primary, which serves every key).
    for key in ["a", "b"].into_iter().filter(|k| !from_primary.cut_off_keys.iter().any(|c| c == k)) {
        assert!(
            analysis.sections.iter().any(|s| {
                from_primary.cut_off_workers.contains(&s.worker)
                    && s.key == key
                    && (from_primary.start.wall..from_primary.end.wall).contains(&s.enter)
            }),
            "{}: no cut-off worker took key {key}, served by another primary, meanwhile",
            from_primary.label
        );
    }
}

/// Fault `index` cut workers off, their calls failed while it lasted, and each of them held a
/// lock again after it healed.
fn assert_cut_off_and_back(
    checked: &dlock_check::Checked,
    index: usize,
) -> &dlock_check::schedule::FaultRecord {
    let cut = &checked.run.history.faults[index];
    assert!(cut.label.starts_with("partition"), "{}", cut.label);
    assert!(!cut.cut_off_workers.is_empty(), "{}: nobody was cut off", cut.label);
    let row = &checked.analysis.rows[index + 1];
    assert!(row.errors + row.lost > 0, "no call failed in {}: {row:?}", cut.label);
    for worker in &cut.cut_off_workers {
        assert!(
            checked.analysis.sections.iter().any(|s| s.worker == *worker && s.enter > cut.end.wall),
            "w{worker} held no lock after {} healed",
            cut.label
        );
    }
    cut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failovers_have_no_violations() {
    topology_failovers_have_no_violations("redis-cluster", ServerKind::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_failovers_have_no_violations() {
    topology_failovers_have_no_violations("redis-sentinel", ServerKind::RedisSentinel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_trusts_an_expired_lease_is_caught() {
    let _turn = SERIAL.lock().await;
    let mut config = config("trust-expired-lease", BackendChoice::Memory);
    config.plant = Some(Plant::TrustExpiredLease);
    let analysis = check(config).await;
    assert!(overlaps(&analysis) > 0, "no overlap found: {:#?}", analysis.total);
    assert!(
        analysis.violations.iter().any(|v| v.detail.contains("never told Lost")),
        "the holders whose lease ended were never told"
    );
    // Fencing still holds the line the lock no longer does.
    assert_eq!(analysis.total.fenced_lost_updates, 0);
    assert!(analysis.total.fenced_rejected > 0);
}

/// A run on one key where many waiters give up (a short wait) while in Redis' waiting line:
/// leaving the line is a release by an owner that does not hold the key.
fn contended(name: &str, kind: ServerKind, plant: Option<Plant>) -> RunConfig {
    let mut config = config(name, BackendChoice::Managed(kind));
    config.workload.keys = vec!["a".into()];
    config.workload.wait = Duration::from_millis(100);
    config.workload.long_every = 0;
    config.plant = plant;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_owner_check_is_caught() {
    let _turn = SERIAL.lock().await;
    let control = check(contended("release-control", ServerKind::Redis, None)).await;
    assert!(control.passed(), "the run without the bug has violations: {:#?}", control.violations);
    assert!(control.total.timeouts > 0, "no waiter gave up: the run does not exercise the bug");
    let planted = check(contended(
        "release-without-owner-check",
        ServerKind::Redis,
        Some(Plant::ReleaseWithoutOwnerCheck),
    ))
    .await;
    assert!(overlaps(&planted) > 0, "no overlap found: {:#?}", planted.total);
}

/// The same bug on a Redis Cluster: the planted release deletes the key on the primary that
/// serves it (routed by its slot), and the checker finds the overlaps. (The control is the
/// cluster test above, with no violation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_owner_check_is_caught_on_a_cluster() {
    let _turn = SERIAL.lock().await;
    let planted = check(contended(
        "release-without-owner-check-cluster",
        ServerKind::RedisCluster,
        Some(Plant::ReleaseWithoutOwnerCheck),
    ))
    .await;
    assert!(planted.total.timeouts > 0, "no waiter gave up: the run does not exercise the bug");
    assert!(overlaps(&planted) > 0, "no overlap found: {:#?}", planted.total);
}

/// The same bug on PostgreSQL, whose waiters do not release when they give up (a waiting
/// process is a column, not a place in a line): here the owner that does not hold the key is a
/// holder frozen past its lease, whose release, once it runs again, deletes the row of the
/// key's next holder. Sections are often long, so that the next holder still holds it when that
/// happens, and waits short, so that a task soon asks again and finds the row gone (the planted
/// delete sends no notice). The control is the same run without the bug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_owner_check_is_caught_on_postgres() {
    let _turn = SERIAL.lock().await;
    let run = |name: &str, plant| {
        let mut config = config(name, BackendChoice::Managed(ServerKind::Postgres));
        config.workload.keys = vec!["a".into()];
        config.workload.wait = Duration::from_millis(100);
        config.workload.long_every = 2;
        config.faults = schedule(&[FaultKind::PauseWorker; 3]);
        config.plant = plant;
        config
    };
    let control = check(run("release-control-postgres", None)).await;
    assert!(control.passed(), "the run without the bug has violations: {:#?}", control.violations);
    assert!(control.total.frozen_holders > 0, "no frozen holder: the run does not exercise the bug");
    let planted =
        check(run("release-without-owner-check-postgres", Some(Plant::ReleaseWithoutOwnerCheck))).await;
    assert!(overlaps(&planted) > 0, "no overlap found: {:#?}", planted.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_polled_before_its_lease_is_caught() {
    let _turn = SERIAL.lock().await;
    // The manual-API tasks race their work against `guard.lost()` with the body first (what
    // the attribute did before dlock fixed it); a worker frozen past its lease in a long
    // section then sends its write when it resumes. The short schedule above is the control:
    // the same pauses, the loss first, no violation.
    let mut config = config("body-before-lease", BackendChoice::Managed(ServerKind::Redis));
    config.baseline = Duration::from_secs(1);
    config.workload.mode = ModeChoice::Manual;
    config.plant = Some(Plant::BodyBeforeLease);
    config.faults = vec![FaultSpec { kind: FaultKind::PauseWorker, duration: None, delay: None }; 2];
    let analysis = check(config).await;
    assert!(overlaps(&analysis) > 0, "no overlap found: {:#?}", analysis.rows);
    assert!(
        analysis.violations.iter().any(|v| v.detail.contains("acted again after its lease ended")),
        "the frozen holder's write after its lease is not what was found: {:#?}",
        analysis.violations
    );
    assert_eq!(analysis.total.fenced_lost_updates, 0, "the fenced register refuses the late write");
}

/// A process of this machine, as `/proc` shows it.
struct Proc {
    pid: u32,
    cmdline: Vec<u8>,
    cwd: PathBuf,
    ppid: Option<u32>,
}

/// The processes running now (not exited, not waiting to be reaped).
fn running_processes() -> Vec<Proc> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            if matches!(fields.next(), Some("Z" | "X")) {
                return None;
            }
            Some(Proc {
                pid,
                cmdline: std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default(),
                ppid: fields.next().and_then(|ppid| ppid.parse().ok()),
            })
        })
        .collect()
}

/// The `redis-server`s running now in a directory under `dir` (each runs in its `--dir`; it
/// rewrites its command line, so that cannot say).
fn servers_under(dir: &std::path::Path) -> Vec<u32> {
    running_processes()
        .into_iter()
        .filter(|p| p.cmdline.starts_with(b"redis-server") && p.cwd.starts_with(dir))
        .map(|p| p.pid)
        .collect()
}

/// The `redis-cli`s running now that `parent` started; with `parent` `None`, those among
/// `pids`.
fn redis_clis(parent: Option<u32>, pids: &[u32]) -> Vec<u32> {
    running_processes()
        .into_iter()
        .filter(|p| {
            let ours = match parent {
                Some(parent) => p.ppid == Some(parent),
                None => pids.contains(&p.pid),
            };
            p.cmdline.starts_with(b"redis-cli") && ours
        })
        .map(|p| p.pid)
        .collect()
}

/// Ctrl-C while `redis-cli --cluster create` joins the nodes: no `redis-cli` outlives the
/// checker. Before, it was left behind, waiting for ever for nodes that were gone (CI left one
/// per run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_redis_cli_makes_the_cluster_leaves_no_redis_cli_running() {
    let _turn = SERIAL.lock().await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dlock-check-ctrl-c-create");
    let checker = start_checker("redis-cluster", &out);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let started = loop {
        let started = redis_clis(Some(checker.id()), &[]);
        if !started.is_empty() {
            break started;
        }
        assert!(std::time::Instant::now() < deadline, "no redis-cli made its cluster in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    interrupt(checker).await;
    none_left("redis-cli", || redis_clis(None, &started)).await;
}

/// Wait until `find` finds no process: killed processes are reaped by init a moment after the
/// checker exits; none may still run 2 s later.
async fn none_left(what: &str, find: impl Fn() -> Vec<u32>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = find();
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} still running after Ctrl-C: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The checker on `backend`, quiet, writing under `out`.
fn start_checker(backend: &str, out: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_dlock-check"))
        .args(["--backend", backend, "--quiet", "--out"])
        .arg(out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("starting dlock-check: {err}"))
}

/// Ctrl-C to `checker`: it exits with 130.
async fn interrupt(mut checker: std::process::Child) {
    let pid = i32::try_from(checker.id()).unwrap_or_else(|_| panic!("pid {} out of range", checker.id()));
    if let Err(err) =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT)
    {
        panic!("SIGINT to dlock-check: {err}");
    }
    let status = tokio::task::spawn_blocking(move || checker.wait()).await;
    let code = match status {
        Ok(Ok(status)) => status.code(),
        other => panic!("waiting for dlock-check: {other:?}"),
    };
    assert_eq!(code, Some(130), "interrupted");
}

/// Ctrl-C while the checker is forming a cluster (a thread holds the servers, not the run):
/// it exits with 130, and no `redis-server` it started runs on. Without `kill_leftovers` the
/// nodes started so far outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_a_cluster_forms_leaves_no_server_running() {
    let _turn = SERIAL.lock().await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dlock-check-ctrl-c");
    let checker = start_checker("redis-cluster", &out);
    // Interrupt it once some of its nodes run, before the cluster is made.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while servers_under(&out).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no node of its cluster started in 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    interrupt(checker).await;
    none_left("redis-servers", || servers_under(&out)).await;
}

/// The same for a private PostgreSQL interrupted while it is made: exit 130, and neither a
/// server process (found by its working directory, the data directory) nor its data directory
/// outlives the checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_postgres_starts_leaves_no_server_or_data() {
    let _turn = SERIAL.lock().await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dlock-check-ctrl-c-postgres");
    let checker = start_checker("postgres", &out);
    let homes = format!("dlock-check-pg-{}-", checker.id());
    let ours = |path: &std::path::Path| path.to_string_lossy().contains(&homes);
    let data_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| ours(p))
            .collect()
    };
    let servers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok().map(|cwd| (e.file_name(), cwd)))
            .filter(|(_, cwd)| ours(cwd))
            .map(|(pid, cwd)| format!("{} in {}", pid.to_string_lossy(), cwd.display()))
            .collect()
    };
    // Interrupt it once its PostgreSQL's directory exists: while initdb runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while data_dirs().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no PostgreSQL directory made in 20 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    interrupt(checker).await;
    // A killed postmaster's processes exit when they notice; none may stay.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (dirs, left) = (data_dirs(), servers());
        if dirs.is_empty() && left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after Ctrl-C, directories {dirs:?} and processes {left:?} remain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
