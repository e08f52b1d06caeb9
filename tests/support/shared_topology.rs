//! Topologies shared by every test of one test binary: started by the first test that asks,
//! stopped when the test process exits. Statics are never dropped, so a watchdog process
//! (started with the first topology) waits for the test process to exit, then kills every
//! process running in one of its temp dirs (`<tmp>/dlock-test-*-<pid>-*`) and removes them.
//!
//! `DLOCK_TEST_CLUSTER_SEEDS` (comma-separated `redis://` URLs) runs the tests against a
//! cluster the user runs instead; `DLOCK_TEST_SENTINELS` (comma-separated `redis://` URLs of
//! sentinels watching a master named `DLOCK_TEST_SENTINEL_MASTER`, default `mymaster`) against
//! a sentinel group.

use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::cluster::RedisCluster;
use super::sentinel::SentinelGroup;

/// Seed URLs of the binary's shared Redis Cluster (started on first use).
pub fn shared_cluster_seeds() -> Vec<String> {
    if let Ok(seeds) = std::env::var("DLOCK_TEST_CLUSTER_SEEDS") {
        return seeds.split(',').map(str::to_owned).collect();
    }
    static CLUSTER: OnceLock<Mutex<RedisCluster>> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        reap_on_exit();
        Mutex::new(RedisCluster::start())
    });
    cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).seed_urls()
}

/// Sentinel URLs and master name of the binary's shared sentinel group (started on first use).
pub fn shared_sentinel_group() -> (Vec<String>, String) {
    if let Ok(sentinels) = std::env::var("DLOCK_TEST_SENTINELS") {
        let master = std::env::var("DLOCK_TEST_SENTINEL_MASTER").unwrap_or_else(|_| "mymaster".to_owned());
        return (sentinels.split(',').map(str::to_owned).collect(), master);
    }
    static GROUP: OnceLock<Mutex<SentinelGroup>> = OnceLock::new();
    let group = GROUP.get_or_init(|| {
        reap_on_exit();
        Mutex::new(SentinelGroup::start())
    });
    let group = group.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    (group.sentinel_urls(), group.master_name().to_owned())
}

/// Start the watchdog, once per process.
fn reap_on_exit() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = r#"
pid=$1; tmp=$2
while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
for dir in "$tmp"/dlock-test-*-"$pid"-*; do
  [ -d "$dir" ] || continue
  for proc in /proc/[0-9]*; do
    case "$(readlink "$proc/cwd" 2>/dev/null)" in "$dir"*) kill -9 "${proc#/proc/}" 2>/dev/null;; esac
  done
  rm -rf "$dir"
done
"#;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("dlock-test-reaper")
            .arg(std::process::id().to_string())
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(err) = spawned {
            eprintln!("could not start the watchdog that stops shared topologies at exit: {err}");
        }
    });
}
