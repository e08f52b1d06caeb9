//! Applying one fault of the schedule to a running lab, aimed at a lock holder where the fault
//! acts on one, and recording what was done and when.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use rand::seq::IndexedRandom;

use crate::clock::Stamp;
use crate::history::WorkerId;
use crate::lab::{Lab, lock};
use crate::live::Holding;
use crate::netns::Cut;
use crate::schedule::{DataLost, FaultKind, FaultRecord, FaultSpec};
use crate::servers::{FailedOver, ManagedServer};

/// How long to look for a worker inside a section before aiming at any worker.
const FIND_HOLDER: Duration = Duration::from_secs(3);

/// Apply `spec` now; returns once the fault is over (a pause resumed, a server answering
/// again, …).
pub(crate) async fn apply(lab: &mut Lab, spec: &FaultSpec) -> anyhow::Result<FaultRecord> {
    let duration = spec.duration.unwrap_or(lab.config.fault_duration);
    let d = humantime::format_duration(duration);
    let mut record = FaultRecord::starting(*spec);
    match spec.kind {
        FaultKind::KillWorker => {
            let holder = find_holder(lab, Aim::ProcessHolder).await;
            let target = aim(lab, holder.as_ref())?;
            record.start = Stamp::now();
            record.end = lab.kill_worker(target).await?;
            lab.live.poll();
            record.note = Some(match &holder {
                Some(h) if lab.live.is_open(h.worker, h.op) => {
                    format!(
                        "inside its section on key {} (entered {:.0} ms before)",
                        h.key,
                        since_ms(h, &record.start)
                    )
                }
                Some(h) => format!("its section on key {} had just ended when it died", h.key),
                None => "no worker was inside a section: killed one anyway".into(),
            });
            lab.live.forget(target);
            record.killed_workers.push(target);
            record.label = format!("kill-worker w{target}");
            let slot = lab.workers.iter().find(|w| w.id == target).map_or(0, |w| w.slot);
            let replacement = lab.spawn_worker(slot).await?;
            record.note = record.note.map(|n| format!("{n}; replaced by w{replacement}"));
        }
        FaultKind::PauseWorker => {
            let holder = find_holder(lab, Aim::ProcessHolder).await;
            let target = aim(lab, holder.as_ref())?;
            record.start = Stamp::now();
            lab.signal(target, Signal::SIGSTOP)?;
            tokio::time::sleep(duration).await;
            lab.signal(target, Signal::SIGCONT)?;
            record.end = Stamp::now();
            record.paused_workers.push(target);
            record.label = format!("pause-worker w{target} {d}");
            record.note = Some(match &holder {
                Some(h) => format!("holding key {}", h.key),
                None => "no worker was inside a section: paused one anyway".into(),
            });
        }
        FaultKind::PauseServer if lab.config.backend.is_topology() => {
            // The primary serving a held key is frozen; its replica may be elected meanwhile.
            let target = PrimaryAim::find(lab).await?;
            let (server, aim, keys) = (Arc::clone(&target.server), target.aim.clone(), target.keys.clone());
            let done =
                tokio::task::spawn_blocking(move || lock(&server).pause_primary(&aim, &keys, duration))
                    .await
                    .context("the pause thread panicked")??;
            record.label = format!("pause-server (key {}'s primary) {d}", target.key);
            target.record(&mut record, done);
        }
        FaultKind::PauseServer => {
            let server = Arc::clone(lab.server.as_ref().context("no server of our own to pause")?);
            record.start = Stamp::now();
            lock(&server).pause()?;
            tokio::time::sleep(duration).await;
            lock(&server).resume()?;
            record.end = Stamp::now();
            record.label = format!("pause-server {d}");
        }
        FaultKind::RestartServer => {
            let server = Arc::clone(lab.server.as_ref().context("no server of our own to restart")?);
            let down = spec.duration.unwrap_or(Duration::ZERO);
            record.start = Stamp::now();
            let keeps_data = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
                let mut server = lock(&server);
                server.kill()?;
                std::thread::sleep(down);
                server.start_again()?;
                Ok(server.keeps_data())
            })
            .await
            .context("the restart thread panicked")??;
            record.end = Stamp::now();
            if keeps_data {
                // Nothing is excused: every lock it granted is still there.
                record.label = "restart-server (crash, data kept)".into();
            } else {
                record.label = "restart-server (empty)".into();
                record.data_lost = Some(DataLost::EveryKey);
            }
            record.note = Some(format!(
                "answering again {:.0} ms after the kill",
                (record.end.wall - record.start.wall) as f64 / 1e6
            ));
        }
        FaultKind::DropKey => {
            // A holder with a renewal ahead can be told Lost in time; one that finishes before
            // its next renewal cannot learn of the loss at all (dlock's documented limit).
            let holder = find_holder(lab, Aim::LongHolder).await;
            let key = match &holder {
                Some(h) => h.key.clone(),
                None => lab.config.workload.keys.choose(&mut rand::rng()).cloned().unwrap_or_default(),
            };
            let forcer = lab.forcer.clone().context("no way to delete keys of this backend")?;
            record.start = Stamp::now();
            let deleted = forcer.delete(&format!("{}{key}", lab.prefix)).await.map_err(anyhow::Error::msg)?;
            // The key went somewhere between sending the delete and its answer.
            record.end = Stamp::now();
            record.label = format!("drop-key {key}");
            if deleted {
                record.data_lost = Some(DataLost::Keys(vec![key.clone()]));
            }
            record.note = Some(match (&holder, deleted) {
                (Some(h), true) => format!("held by w{}", h.worker),
                (None, true) => "deleted".into(),
                // A long section has at least 0.8 ttl left when aimed at: its key should be there.
                (Some(h), false) => format!("held by w{} by its history, but the DEL found no key", h.worker),
                (None, false) => "the key was not held any more: nothing dropped".into(),
            });
        }
        FaultKind::Failover | FaultKind::KillPrimary => {
            // Aimed at a holder with a renewal ahead: the fault is whether dlock tells it in
            // time when the new primary lacks its lease.
            let target = PrimaryAim::find(lab).await?;
            let (server, aim, keys) = (Arc::clone(&target.server), target.aim.clone(), target.keys.clone());
            let kill = spec.kind == FaultKind::KillPrimary;
            let done = tokio::task::spawn_blocking(move || lock(&server).fail_over(&aim, &keys, kill))
                .await
                .context("the failover thread panicked")??;
            record.label = format!("{} (key {})", spec.kind.name(), target.key);
            target.record(&mut record, done);
        }
        FaultKind::Blackhole => {
            let proxy = lab.proxy.as_ref().context("no proxy to black-hole")?;
            record.start = Stamp::now();
            let silenced = proxy.blackhole();
            record.end = record.start;
            record.label = format!("blackhole ({silenced} connections)");
        }
        FaultKind::Latency => {
            let delay = spec.delay.unwrap_or(lab.config.latency);
            let proxy = lab.proxy.as_ref().context("no proxy to slow down")?;
            record.start = Stamp::now();
            proxy.set_delay(delay);
            tokio::time::sleep(duration).await;
            proxy.set_delay(Duration::ZERO);
            record.end = Stamp::now();
            record.label = format!("latency +{} each way {d}", humantime::format_duration(delay));
        }
        FaultKind::Partition => {
            let holder = find_holder(lab, Aim::ProcessHolder).await;
            let first = aim(lab, holder.as_ref())?;
            let names = cut_off(lab, first, Cut::Backend, duration, &mut record).await?;
            record.label = format!("partition {names} {d}");
            record.note = holder.map(|h| format!("w{} held key {}", h.worker, h.key));
        }
        FaultKind::PartitionPrimary => {
            // Aimed at a holder with a renewal ahead, as a failover is: whether dlock tells it
            // in time when the one node that has its lease stops answering it.
            let target = PrimaryAim::find(lab).await?;
            let (server, aim_key, keys) =
                (Arc::clone(&target.server), target.aim.clone(), target.keys.clone());
            let primary = tokio::task::spawn_blocking(move || lock(&server).primary_of(&aim_key, &keys))
                .await
                .context("the topology thread panicked")??;
            let first = aim(lab, target.holder.as_ref())?;
            let names = cut_off(lab, first, Cut::Node(*primary.addr.ip()), duration, &mut record).await?;
            record.cut_off_keys = primary
                .served
                .iter()
                .filter_map(|k| k.strip_prefix(target.prefix.as_str()).map(str::to_owned))
                .collect();
            record.label = format!("partition-primary {names} from {} {d}", primary.addr);
            record.note = Some(format!(
                "it serves key {}; {}",
                record.cut_off_keys.join(", "),
                match &target.holder {
                    Some(h) => format!("w{} held key {}", h.worker, h.key),
                    None => "no long section was running".into(),
                }
            ));
        }
    }
    Ok(record)
}

/// Cut a minority of the live workers — `first`, and more up to half of them — off as `cut`
/// says for `duration`, then reconnect them. The record gets the window and who was cut; the
/// answer names them (`w1,w2`).
async fn cut_off(
    lab: &Lab,
    first: WorkerId,
    cut: Cut,
    duration: Duration,
    record: &mut FaultRecord,
) -> anyhow::Result<String> {
    let alive: Vec<(WorkerId, u32)> = lab.alive().map(|w| (w.id, w.slot)).collect();
    let count = (alive.len() / 2).max(1);
    let mut chosen: Vec<(WorkerId, u32)> = alive.iter().copied().filter(|(w, _)| *w == first).collect();
    chosen.extend(alive.iter().copied().filter(|(w, _)| *w != first).take(count.saturating_sub(1)));
    let ns = lab.namespaces.as_ref().context("no network namespaces")?;
    record.start = Stamp::now();
    // The slots cut off so far (a slot whose partition failed took back what it added).
    let mut cut_slots: Vec<(WorkerId, u32)> = Vec::new();
    let partitioned: anyhow::Result<()> = chosen.iter().try_for_each(|&(w, slot)| {
        ns.partition(slot as usize, cut)?;
        cut_slots.push((w, slot));
        Ok(())
    });
    if partitioned.is_ok() {
        tokio::time::sleep(duration).await;
    }
    // Every slot cut off is healed, also after a partition that failed half-way. One that
    // cannot be is still cut off: the rest of the run would blame dlock for it, so the run
    // stops here and says so.
    let unhealed: Vec<String> = cut_slots
        .iter()
        .filter_map(|&(w, slot)| ns.heal(slot as usize, cut).err().map(|err| format!("w{w}: {err:#}")))
        .collect();
    record.end = Stamp::now();
    if !unhealed.is_empty() {
        let also =
            partitioned.err().map(|err| format!(" (after cutting off failed: {err:#})")).unwrap_or_default();
        bail!(
            "the partition could not be lifted, so {} still cut off{also}: {}",
            if unhealed.len() == 1 { "a worker is" } else { "workers are" },
            unhealed.join("; ")
        );
    }
    partitioned?;
    record.cut_off_workers = chosen.iter().map(|(w, _)| *w).collect();
    Ok(chosen.iter().map(|(w, _)| format!("w{w}")).collect::<Vec<_>>().join(","))
}

/// The target of a topology fault: the primary that serves a held key.
struct PrimaryAim {
    holder: Option<Holding>,
    /// The key (without the run's prefix).
    key: String,
    server: Arc<Mutex<Box<dyn ManagedServer>>>,
    prefix: String,
    /// The run's lock keys and the aimed one, with the prefix.
    keys: Vec<String>,
    aim: String,
}

impl PrimaryAim {
    /// A holder of a long section with a renewal ahead (else any key).
    async fn find(lab: &mut Lab) -> anyhow::Result<Self> {
        let holder = find_holder(lab, Aim::LongHolder).await;
        let key = match &holder {
            Some(h) => h.key.clone(),
            None => lab.config.workload.keys.choose(&mut rand::rng()).cloned().unwrap_or_default(),
        };
        let server = Arc::clone(lab.server.as_ref().context("no topology of our own to fault")?);
        let prefix = lab.prefix.clone();
        let keys = lab.config.workload.keys.iter().map(|k| format!("{prefix}{k}")).collect();
        let aim = format!("{prefix}{key}");
        Ok(Self { holder, key, server, prefix, keys, aim })
    }

    /// Put what the fault did into `record`.
    fn record(&self, record: &mut FaultRecord, done: FailedOver) {
        // The loss began with the kill, the command or the freeze, not when the fault was
        // asked for (the topology is checked whole first); it is over once the topology
        // serves again (the old primary's return as a replica is recovery, measured from
        // there).
        record.start = done.begun;
        record.end = done.serving;
        if done.failed_over {
            // What the old primary had not passed on is gone: the locks it served may be, and
            // those it granted until it was demoted (to processes that had not heard yet).
            let unprefixed = |key: &str| key.strip_prefix(self.prefix.as_str()).map(str::to_owned);
            record.data_lost = Some(DataLost::Keys(done.keys.iter().filter_map(|k| unprefixed(k)).collect()));
            record.granted_by_old_primary = done.old_primary.tokens;
            record.old_primary_scripts = done
                .old_primary
                .scripts
                .into_iter()
                .filter_map(|(at, k)| Some((at, unprefixed(&k)?)))
                .collect();
        }
        record.note = Some(match &self.holder {
            Some(h) => format!("{}; w{} held key {}", done.note, h.worker, h.key),
            None => format!("{}; no long section was running", done.note),
        });
    }
}

/// Which holder a fault aims at. Both prefer a long section with time left — a fault aimed at
/// a short one (a few ms) can land just after it ended — and settle for any holder when none
/// turns up in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// A holder in a worker process (in-process workers cannot be signalled), preferably in a
    /// long section with at least 100 ms left, looked for during 1 s.
    ProcessHolder,
    /// A holder in a long section with at least 0.8 ttl left — a renewal still ahead of it
    /// (renewals come every ttl/3 and one may be on the wire as the fault lands) — looked for
    /// during [`FIND_HOLDER`].
    LongHolder,
}

/// A section running now, looked for during [`FIND_HOLDER`].
async fn find_holder(lab: &mut Lab, aim: Aim) -> Option<Holding> {
    let started = tokio::time::Instant::now();
    let workload = &lab.config.workload;
    let (left, patience) = match aim {
        Aim::ProcessHolder => (Duration::from_millis(100), Duration::from_secs(1)),
        Aim::LongHolder => (workload.ttl.mul_f64(0.8), FIND_HOLDER),
    };
    let latest_start = duration_ns(workload.long_think) - duration_ns(left);
    loop {
        lab.note_exits();
        lab.live.poll();
        let alive: Vec<WorkerId> = lab.alive().map(|w| w.id).collect();
        let now = Stamp::now().wall;
        // Inside for at least a millisecond: past the entry, into the read-think-write.
        let holders: Vec<&Holding> = lab
            .live
            .holdings()
            .filter(|h| alive.contains(&h.worker) && now - h.since >= 1_000_000)
            .filter(|h| aim != Aim::ProcessHolder || lab.live.pid(h.worker).is_some())
            .collect();
        let long: Vec<&&Holding> =
            holders.iter().filter(|h| h.long && now - h.since <= latest_start).collect();
        if let Some(h) = long.choose(&mut rand::rng()) {
            return Some((**h).clone());
        }
        let waited = started.elapsed();
        if waited >= patience
            && let Some(h) = holders.choose(&mut rand::rng())
        {
            return Some((*h).clone());
        }
        if waited >= FIND_HOLDER {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The holder's worker, or any live worker when nobody holds anything.
fn aim(lab: &Lab, holder: Option<&Holding>) -> anyhow::Result<WorkerId> {
    match holder {
        Some(h) => Ok(h.worker),
        None => lab.alive().map(|w| w.id).next().context("no live worker to aim at"),
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn since_ms(h: &Holding, at: &Stamp) -> f64 {
    (at.wall - h.since) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;
    use crate::netns::Namespaces;

    /// A lab whose one worker (`sleep`, in slot 0) runs nowhere in particular, with a namespace
    /// for slot 0 (needs root and iproute2).
    fn lab_with_a_namespace(dir: &std::path::Path) -> Lab {
        let tag = format!("{:04x}", rand::random::<u16>());
        let namespaces = Namespaces::create(&tag, 1).unwrap_or_else(|e| panic!("namespaces: {e:#}"));
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        Lab::for_tests(dir, child, Some(namespaces))
    }

    /// `ip -n <ns> route show`.
    fn routes(ns: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", ns, "route", "show"])
            .output()
            .unwrap_or_else(|e| panic!("ip route show: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test]
    async fn a_partition_that_cannot_be_lifted_is_an_error() {
        if let Err(why) = crate::netns::probe() {
            eprintln!("skipped: no network namespaces here ({why})");
            return;
        }
        let dir = std::env::temp_dir().join(format!("dlock-check-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = lab_with_a_namespace(&dir);
        let slot = lab.namespaces.as_ref().unwrap().slots()[0].clone();
        let dest = slot.backend_ip.to_string();
        // While the partition is on, its route to the backend is turned from a black hole into
        // an `unreachable` one, as something else on the machine might: the worker stays cut
        // off, and deleting the black hole fails.
        let sabotage = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !routes(&slot.ns).contains(&format!("blackhole {dest}")) {
                assert!(tokio::time::Instant::now() < deadline, "the partition added no route");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let replaced = Command::new("ip")
                .args(["-n", &slot.ns, "route", "replace", "unreachable", &format!("{dest}/32")])
                .status()
                .unwrap();
            assert!(replaced.success());
        };
        let mut record =
            FaultRecord::starting(FaultSpec { kind: FaultKind::Partition, duration: None, delay: None });
        let (cut, ()) =
            tokio::join!(cut_off(&lab, 0, Cut::Backend, Duration::from_millis(500), &mut record), sabotage);
        let still = routes(&slot.ns);
        drop(lab);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(still.contains(&format!("unreachable {dest}")), "{still}");
        let err = cut.err().unwrap_or_else(|| {
            panic!("the partition was reported lifted while w0 was still cut off ({still:?})")
        });
        assert!(format!("{err:#}").contains("still cut off"), "{err:#}");
    }
}
