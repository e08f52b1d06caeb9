//! One run, start to finish: start the servers, namespaces and proxies it needs, start the
//! workers, apply the fault schedule while they work, stop them, collect the history and the
//! store, and tear everything down again.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::analysis::{History, WorkerHistory};
use crate::backends::{self, BackendSettings, Plant};
use crate::clock::Stamp;
use crate::config::{BackendChoice, RunConfig, skip_reason};
use crate::faults;
use crate::forcer::KeyForcer;
use crate::history::{self, WorkerId};
use crate::lab::{Lab, WorkerHandle};
use crate::live::Live;
use crate::netns::{self, Namespaces};
use crate::proxy::Proxy;
use crate::redis_url::{proxied_server, scheme};
use crate::registers::Registers;
use crate::schedule::{FaultKind, FaultRecord};
use crate::servers::RedisServer;
use crate::topology::{self, NodeAddrs};

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The run's id (also in every key it used).
    pub run_id: String,
    /// The recorded history.
    pub history: History,
}

/// What `run.json` holds: everything about a run but the events, which stay in
/// `history/worker-<id>.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    run_id: String,
    config: RunConfig,
    history: History,
}

impl RunOutput {
    /// Write `run.json` into the run's directory, so the history can be checked again later.
    fn save(&self, config: &RunConfig) -> anyhow::Result<()> {
        let mut history = self.history.clone();
        for worker in &mut history.workers {
            worker.events.clear();
        }
        let recorded = Recorded { run_id: self.run_id.clone(), config: config.clone(), history };
        let path = config.out_dir.join("run.json");
        std::fs::write(&path, serde_json::to_vec(&recorded)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// A run recorded in `dir` (its `run.json` and `history/`), and how it was configured.
    pub fn load(dir: &std::path::Path) -> anyhow::Result<(Self, RunConfig)> {
        let path = dir.join("run.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut recorded: Recorded = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a dlock-check run", path.display()))?;
        for worker in &mut recorded.history.workers {
            worker.events =
                history::read_all(&dir.join("history").join(format!("worker-{}.jsonl", worker.worker)));
        }
        let mut config = recorded.config;
        config.out_dir = dir.to_path_buf();
        Ok((Self { run_id: recorded.run_id, history: recorded.history }, config))
    }
}

/// Run the workload under the schedule; record everything.
pub async fn run(config: RunConfig) -> anyhow::Result<RunOutput> {
    if config.workers == 0 || config.workload.tasks == 0 || config.workload.keys.is_empty() {
        bail!("a run needs at least one worker, one task and one key");
    }
    let run_id = format!("{:08x}", rand::random::<u32>());
    std::fs::create_dir_all(&config.out_dir)
        .with_context(|| format!("creating {}", config.out_dir.display()))?;
    let history_dir = config.out_dir.join("history");
    // A re-used directory must not mix an old run's files into this one.
    if history_dir.exists() {
        std::fs::remove_dir_all(&history_dir)
            .with_context(|| format!("clearing {}", history_dir.display()))?;
    }
    std::fs::create_dir_all(&history_dir)?;
    let prefix = format!("dlock-check:{run_id}:");
    let wants_partition = config.faults.iter().any(|f| f.kind.needs_namespaces());
    let netns_status = if wants_partition && !config.backend.in_process() { netns::probe() } else { Ok(()) };
    let skips: Vec<Option<String>> =
        config.faults.iter().map(|f| skip_reason(&config, f.kind, &netns_status)).collect();
    let applied =
        |kind: FaultKind| config.faults.iter().zip(&skips).any(|(f, s)| f.kind == kind && s.is_none());

    let mut lab = Lab {
        config: config.clone(),
        run_id: run_id.clone(),
        prefix: prefix.clone(),
        server: None,
        store_server: None,
        namespaces: None,
        proxy: None,
        store_proxy: None,
        workers: Vec::new(),
        live: Live::default(),
        forcer: None,
        memory: None,
        history_dir: history_dir.clone(),
    };
    let servers_dir = config.out_dir.join("servers");
    // The namespaces come first: a topology's nodes must listen where the workers in them can
    // reach them.
    if FaultKind::ALL.iter().any(|k| k.needs_namespaces() && applied(*k)) {
        lab.say("creating network namespaces");
        lab.namespaces = Some(Namespaces::create(&run_id[..4], config.workers)?);
    }
    // The backend.
    let upstream: Option<SocketAddr> = match &config.backend {
        BackendChoice::Memory => {
            let connected = backends::backend_for(&BackendSettings {
                url: "memory".into(),
                prefix: prefix.clone(),
                call_timeout: config.call_timeout,
                replicas: config.replicas,
            })
            .await?;
            lab.forcer = Some(connected.forcer.clone());
            lab.memory = Some((connected, Registers::memory()));
            None
        }
        BackendChoice::Managed(kind) => {
            lab.say(format!("starting the backend's {kind}"));
            let dir = servers_dir.clone();
            let kind = *kind;
            let addrs = NodeAddrs(lab.namespaces.as_ref().map(Namespaces::topology_ips).unwrap_or_default());
            let server = tokio::task::spawn_blocking(move || topology::start(kind, &dir, "backend", &addrs))
                .await
                .context("starting the backend panicked")??;
            lab.say(format!("the backend is up: {}", crate::redis_url::redact(&server.url())));
            // Connected now, and only when `drop-key` will delete a key (the planted release
            // bug deletes through each worker's own forcer).
            if applied(FaultKind::DropKey) {
                let forcer = KeyForcer::for_url(&server.url(), config.call_timeout);
                forcer.ready().await.map_err(anyhow::Error::msg)?;
                lab.forcer = Some(forcer);
            }
            let addr = server.addr();
            lab.server = Some(Arc::new(Mutex::new(server)));
            addr
        }
        BackendChoice::Url(url) => {
            // Connect once here, so that a URL dlock::connect does not know, or a server that
            // is not there, ends the run now, not as workers that cannot start.
            let probe = backends::backend_for(&BackendSettings {
                url: url.clone(),
                prefix: prefix.clone(),
                call_timeout: config.call_timeout,
                replicas: config.replicas,
            })
            .await?;
            if config.plant == Some(Plant::ReleaseWithoutOwnerCheck) && !probe.forcer.supported() {
                bail!(
                    "--plant {} deletes keys behind dlock's back, which dlock-check cannot do on {} yet",
                    Plant::ReleaseWithoutOwnerCheck,
                    crate::redis_url::redact(url)
                );
            }
            drop(probe);
            let needs_proxy = applied(FaultKind::Partition)
                || FaultKind::ALL.iter().any(|k| k.needs_proxy() && applied(*k));
            match proxied_server(url) {
                Ok(addr) if needs_proxy => Some(addr),
                _ => None,
            }
        }
    };
    if !config.backend.in_process() {
        lab.say("starting the store's redis-server");
        lab.store_server = Some(Box::new(RedisServer::start(&servers_dir, "store")?));
    }
    if let Some(upstream) = upstream
        && (lab.namespaces.is_some() || FaultKind::ALL.iter().any(|k| k.needs_proxy() && applied(*k)))
    {
        let mut addrs: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
        if let Some(ns) = &lab.namespaces {
            addrs.extend(ns.slots().iter().map(|s| IpAddr::from(s.backend_ip)));
        }
        lab.proxy = Some(Proxy::start(&addrs, upstream).await?);
    }
    if let (Some(ns), Some(store)) = (&lab.namespaces, &lab.store_server) {
        let addrs: Vec<IpAddr> = ns.slots().iter().map(|s| IpAddr::from(s.store_ip)).collect();
        let store_addr = store.addr().context("the store is one redis-server")?;
        lab.store_proxy = Some(Proxy::start(&addrs, store_addr).await?);
    }

    let run_start = Stamp::now();
    lab.say(format!("starting {} workers × {} tasks", config.workers, config.workload.tasks));
    for slot in 0..config.workers {
        lab.spawn_worker(slot).await?;
    }
    warm_up(&mut lab).await;
    tokio::time::sleep(config.baseline).await;

    let mut records = Vec::new();
    for (i, (spec, skip)) in config.faults.iter().zip(&skips).enumerate() {
        if let Some(reason) = skip {
            lab.say(format!("fault {}/{}: {spec} skipped: {reason}", i + 1, config.faults.len()));
            let now = Stamp::now();
            records.push(FaultRecord {
                spec: *spec,
                label: spec.to_string(),
                start: now,
                end: now,
                paused_workers: Vec::new(),
                cut_off_workers: Vec::new(),
                cut_off_keys: Vec::new(),
                killed_workers: Vec::new(),
                note: None,
                skipped: Some(reason.clone()),
                data_lost: None,
                granted_by_old_primary: Vec::new(),
                old_primary_scripts: Vec::new(),
            });
            continue;
        }
        lab.say(format!("fault {}/{}: {spec}", i + 1, config.faults.len()));
        let record = faults::apply(&mut lab, spec).await?;
        lab.say(format!(
            "  {}{}",
            record.label,
            record.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
        ));
        records.push(record);
        tokio::time::sleep(config.settle).await;
    }

    let run_end = Stamp::now();
    lab.say("stopping the workers");
    stop_workers(&mut lab).await;
    let store = final_store(&lab).await?;
    if let BackendChoice::Url(url) = &config.backend {
        if scheme(url) == "redis" {
            clean_up_keys(url, &prefix).await;
        } else {
            lab.say(format!(
                "the run's locks (under `{prefix}`) are left to expire on {}: dlock-check cleans up a run's keys only on redis://",
                crate::redis_url::redact(url)
            ));
        }
    }
    let workers = lab
        .workers
        .iter()
        .map(|w| WorkerHistory {
            worker: w.id,
            started: Some(w.started),
            killed: w.killed,
            exited: w.exited,
            crashed: w.crashed.clone(),
            events: history::read_all(&w.history),
        })
        .collect();
    let history = History {
        run_start,
        run_end,
        ttl: config.workload.ttl,
        recovery_bound: config.recovery_bound,
        keys: config.workload.keys.clone(),
        workers,
        faults: records,
        store,
    };
    let output = RunOutput { run_id, history };
    output.save(&config)?;
    Ok(output)
}

/// Wait until every worker has entered a section (at most 15 s), so faults hit a running
/// workload.
async fn warm_up(lab: &mut Lab) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        lab.live.poll();
        let waiting: Vec<WorkerId> =
            lab.alive().map(|w| w.id).filter(|&w| lab.live.entered(w) == 0).collect();
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            lab.say(format!("workers {waiting:?} entered no section within 15 s; going on"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tell every worker to stop; each finishes the call it is in. Whatever has not exited in
/// time is killed (and reported as exited then).
async fn stop_workers(lab: &mut Lab) {
    let workload = &lab.config.workload;
    let grace = workload.wait + workload.long_think + lab.config.call_timeout + Duration::from_secs(3);
    for w in &mut lab.workers {
        match &mut w.handle {
            WorkerHandle::Process { stdin, child } => {
                // A worker that is gone already, unasked, crashed: its history ends with its
                // last event.
                if w.killed.is_none()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    let last = history::read_all(&w.history).iter().rev().find_map(crate::analysis::stamp_of);
                    w.exited = Some(last.unwrap_or_else(Stamp::now));
                    w.crashed = Some(status.to_string());
                }
                drop(stdin.take());
            }
            WorkerHandle::InProcess { stop, .. } => {
                stop.send_replace(true);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    for w in &mut lab.workers {
        if w.killed.is_some() {
            continue;
        }
        match &mut w.handle {
            WorkerHandle::Process { child, .. } => loop {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    eprintln!("dlock-check: worker {} did not stop in {grace:?}; killing it", w.id);
                    let _ = child.kill();
                    let _ = child.wait();
                    w.exited = Some(Stamp::now());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
            WorkerHandle::InProcess { task, .. } => {
                if let Some(task) = task.take() {
                    let abort = task.abort_handle();
                    if tokio::time::timeout_at(deadline, task).await.is_err() {
                        eprintln!("dlock-check: in-process worker {} did not stop in {grace:?}", w.id);
                        abort.abort();
                        w.exited = Some(Stamp::now());
                    }
                }
            }
        }
    }
}

async fn final_store(lab: &Lab) -> anyhow::Result<BTreeMap<String, crate::registers::KeyStore>> {
    let keys = &lab.config.workload.keys;
    match (&lab.memory, &lab.store_server) {
        (Some((_, registers)), _) => registers.final_state(keys).await,
        (None, Some(server)) => Registers::redis(&server.url(), &lab.prefix).await?.final_state(keys).await,
        (None, None) => bail!("no store"),
    }
}

/// Delete this run's keys from a server the checker does not own (best effort).
async fn clean_up_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await
    else {
        return;
    };
    let pattern = format!("{prefix}*");
    let Ok(Ok(keys)) = tokio::time::timeout(
        Duration::from_secs(5),
        redis::cmd("KEYS").arg(&pattern).query_async::<Vec<String>>(&mut conn),
    )
    .await
    else {
        return;
    };
    if !keys.is_empty() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            redis::cmd("DEL").arg(&keys).query_async::<i64>(&mut conn),
        )
        .await;
    }
}
