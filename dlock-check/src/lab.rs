//! What a run sets up and owns — its servers, namespaces, proxies and worker processes — and
//! the operations faults use on them: the [`Lab`]. [`crate::coordinator`] builds one and tears
//! it down; [`crate::faults`] acts on it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::backends::{self, BackendSettings, Connected, Plant};
use crate::clock::Stamp;
use crate::config::{BackendChoice, RunConfig};
use crate::forcer::KeyForcer;
use crate::history::{Event, Recorder, WorkerId};
use crate::live::Live;
use crate::netns::Namespaces;
use crate::proxy::Proxy;
use crate::redis_url::with_host;
use crate::registers::Registers;
use crate::servers::ManagedServer;
use crate::worker::{StoreSpec, WorkerSpec};
use crate::workload::{self, WorkerContext};

/// A worker process (or, for the in-process backend, task) the run started.
pub(crate) struct WorkerProc {
    pub(crate) id: WorkerId,
    pub(crate) slot: u32,
    pub(crate) history: PathBuf,
    pub(crate) started: Stamp,
    pub(crate) killed: Option<Stamp>,
    pub(crate) exited: Option<Stamp>,
    /// How it ended, when it exited before it was told to stop.
    pub(crate) crashed: Option<String>,
    pub(crate) handle: WorkerHandle,
}

pub(crate) enum WorkerHandle {
    Process { child: Child, stdin: Option<ChildStdin> },
    InProcess { stop: watch::Sender<bool>, task: Option<tokio::task::JoinHandle<()>> },
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        match &mut self.handle {
            WorkerHandle::Process { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            WorkerHandle::InProcess { stop, task } => {
                stop.send_replace(true);
                if let Some(task) = task.take() {
                    task.abort();
                }
            }
        }
    }
}

/// What a run set up, and what the faults act on.
pub(crate) struct Lab {
    pub(crate) config: RunConfig,
    pub(crate) run_id: String,
    pub(crate) prefix: String,
    pub(crate) server: Option<Arc<Mutex<Box<dyn ManagedServer>>>>,
    pub(crate) store_server: Option<Box<dyn ManagedServer>>,
    pub(crate) namespaces: Option<Namespaces>,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) store_proxy: Option<Proxy>,
    pub(crate) workers: Vec<WorkerProc>,
    pub(crate) live: Live,
    pub(crate) forcer: Option<KeyForcer>,
    pub(crate) memory: Option<(Connected, Registers)>,
    pub(crate) history_dir: PathBuf,
}

impl Lab {
    pub(crate) fn say(&self, what: impl fmt::Display) {
        if self.config.verbose {
            eprintln!("dlock-check: {what}");
        }
    }

    /// Signal the process of `worker` (by the pid it reported, else the child's).
    pub(crate) fn signal(&self, worker: WorkerId, signal: Signal) -> anyhow::Result<()> {
        let proc = self.worker(worker)?;
        let pid = match (&proc.handle, self.live.pid(worker)) {
            (WorkerHandle::Process { .. }, Some(pid)) => pid,
            (WorkerHandle::Process { child, .. }, None) => child.id(),
            (WorkerHandle::InProcess { .. }, _) => bail!("worker {worker} runs in this process"),
        };
        // One that exited by itself is a zombie until reaped, and a zombie takes any signal
        // without error: the fault would be recorded though it did nothing.
        if crate::procfs::has_exited(pid) {
            bail!("worker {worker} ({pid}) has exited by itself");
        }
        let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        kill(pid, signal).with_context(|| format!("sending {signal} to worker {worker} ({pid})"))
    }

    /// Note the worker processes that have exited by themselves since the last look (reaped
    /// here, as `stop_workers` would): they are no longer [`alive`](Self::alive), so no fault
    /// aims at them, and their crash makes the run's history untrusted.
    pub(crate) fn note_exits(&mut self) {
        for w in &mut self.workers {
            if w.killed.is_some() || w.exited.is_some() {
                continue;
            }
            if let WorkerHandle::Process { child, .. } = &mut w.handle
                && let Ok(Some(status)) = child.try_wait()
            {
                let last =
                    crate::history::read_all(&w.history).iter().rev().find_map(crate::analysis::stamp_of);
                w.exited = Some(last.unwrap_or_else(Stamp::now));
                w.crashed = Some(status.to_string());
            }
        }
    }

    /// Kill `worker` (SIGKILL) and reap it; returns when it is gone (the live view still shows
    /// what it held: the caller forgets it).
    pub(crate) async fn kill_worker(&mut self, worker: WorkerId) -> anyhow::Result<Stamp> {
        self.note_exits();
        if self.worker(worker)?.exited.is_some() {
            bail!("worker {worker} had exited by itself before it was to be killed");
        }
        self.signal(worker, Signal::SIGKILL)?;
        let proc = self.workers.iter_mut().find(|w| w.id == worker).context("no such worker")?;
        if let WorkerHandle::Process { child, .. } = &mut proc.handle {
            // `ip netns exec` execs the worker, so the child is the worker itself.
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            // It may have exited by itself just before the signal (a zombie takes it): that
            // is a crash, not this fault's kill.
            if std::os::unix::process::ExitStatusExt::signal(&status) != Some(Signal::SIGKILL as i32) {
                let last =
                    crate::history::read_all(&proc.history).iter().rev().find_map(crate::analysis::stamp_of);
                proc.exited = Some(last.unwrap_or_else(Stamp::now));
                proc.crashed = Some(status.to_string());
                bail!("worker {worker} had exited by itself ({status}) before it was killed");
            }
        }
        let gone = Stamp::now();
        proc.killed = Some(gone);
        Ok(gone)
    }

    fn worker(&self, worker: WorkerId) -> anyhow::Result<&WorkerProc> {
        self.workers.iter().find(|w| w.id == worker).with_context(|| format!("no worker {worker}"))
    }

    /// Start a new worker in `slot`.
    pub(crate) async fn spawn_worker(&mut self, slot: u32) -> anyhow::Result<WorkerId> {
        let id = WorkerId::try_from(self.workers.len()).context("too many workers")?;
        let history = self.history_dir.join(format!("worker-{id}.jsonl"));
        let handle = match &self.memory {
            Some((connected, registers)) => {
                let recorder = Arc::new(Recorder::create(&history).context("creating a history file")?);
                recorder.record(&Event::Hello {
                    worker: id,
                    pid: std::process::id(),
                    slot,
                    at: Stamp::now(),
                });
                let spec = self.spec(id, slot, history.clone());
                let ctx = WorkerContext {
                    worker: id,
                    workload: self.config.workload.clone(),
                    backend: backends::instrument(connected, self.config.plant, Arc::clone(&recorder)),
                    prefix: self.prefix.clone(),
                    service_name: spec.service_name(),
                    registers: registers.clone(),
                    recorder: Arc::clone(&recorder),
                    body_before_lease: self.config.plant == Some(Plant::BodyBeforeLease),
                };
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(async move {
                    if let Err(err) = workload::run(ctx, stopped).await {
                        eprintln!("dlock-check: in-process worker {id}: {err:#}");
                    }
                    recorder.record(&Event::Bye { complete: recorder.complete(), at: Stamp::now() });
                });
                WorkerHandle::InProcess { stop, task: Some(task) }
            }
            None => {
                let spec = self.spec(id, slot, history.clone());
                let mut command = match &self.namespaces {
                    Some(ns) => ns.command(slot as usize, &self.config.worker_exe)?,
                    None => Command::new(&self.config.worker_exe),
                };
                let log = std::fs::File::create(self.history_dir.join(format!("worker-{id}.log")))?;
                command
                    .arg("worker")
                    .arg("--spec")
                    .arg(serde_json::to_string(&spec)?)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(log);
                let mut child = command.spawn().with_context(|| {
                    format!("starting worker {id} ({})", self.config.worker_exe.display())
                })?;
                let stdin = child.stdin.take();
                WorkerHandle::Process { child, stdin }
            }
        };
        self.live.follow(id, history.clone());
        self.workers.push(WorkerProc {
            id,
            slot,
            history,
            started: Stamp::now(),
            killed: None,
            exited: None,
            crashed: None,
            handle,
        });
        Ok(id)
    }

    fn spec(&self, worker: WorkerId, slot: u32, history: PathBuf) -> WorkerSpec {
        let backend_url = self.backend_url(slot);
        let store = match (&self.store_server, &self.store_proxy, &self.namespaces) {
            (Some(server), Some(proxy), Some(ns)) => StoreSpec::Redis {
                url: ns
                    .slots()
                    .get(slot as usize)
                    .and_then(|s| with_host(&server.url(), s.store_ip.into(), proxy.port()).ok())
                    .unwrap_or_else(|| server.url()),
                prefix: self.prefix.clone(),
            },
            (Some(server), _, _) => StoreSpec::Redis { url: server.url(), prefix: self.prefix.clone() },
            (None, _, _) => StoreSpec::Memory,
        };
        WorkerSpec {
            worker,
            slot,
            run_id: self.run_id.clone(),
            backend: BackendSettings {
                url: backend_url,
                prefix: self.prefix.clone(),
                call_timeout: self.config.call_timeout,
                replicas: self.config.replicas,
            },
            store,
            history,
            workload: self.config.workload.clone(),
            plant: self.config.plant,
        }
    }

    /// The backend URL a worker in `slot` uses: through the proxy when there is one.
    fn backend_url(&self, slot: u32) -> String {
        let direct = match (&self.config.backend, &self.server) {
            (BackendChoice::Memory, _) => return "memory".into(),
            (BackendChoice::Url(url), _) => url.clone(),
            (BackendChoice::Managed(_), Some(server)) => lock(server).url(),
            (BackendChoice::Managed(_), None) => return "memory".into(),
        };
        let Some(proxy) = &self.proxy else { return direct };
        let host: IpAddr = match self.namespaces.as_ref().and_then(|ns| ns.slots().get(slot as usize)) {
            Some(slot) => slot.backend_ip.into(),
            None => Ipv4Addr::LOCALHOST.into(),
        };
        with_host(&direct, host, proxy.port()).unwrap_or(direct)
    }

    /// The workers alive now (not killed).
    pub(crate) fn alive(&self) -> impl Iterator<Item = &WorkerProc> {
        self.workers.iter().filter(|w| w.killed.is_none() && w.exited.is_none())
    }
}

pub(crate) fn lock(
    server: &Mutex<Box<dyn ManagedServer>>,
) -> std::sync::MutexGuard<'_, Box<dyn ManagedServer>> {
    server.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
impl Lab {
    /// A lab for tests of one fault: the `memory` backend's options, no server, and one worker
    /// process, `child`, in slot 0, whose history goes to `dir`; network namespaces if given.
    pub(crate) fn for_tests(dir: &std::path::Path, child: Child, namespaces: Option<Namespaces>) -> Self {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["dlock-check", "--backend", "memory"])
            .unwrap_or_else(|e| panic!("options: {e}"));
        let config = cli.check.config("dlock-check".into()).unwrap_or_else(|e| panic!("config: {e}"));
        Lab {
            config,
            run_id: "test".into(),
            prefix: "test:".into(),
            server: None,
            store_server: None,
            namespaces,
            proxy: None,
            store_proxy: None,
            workers: vec![WorkerProc {
                id: 0,
                slot: 0,
                history: dir.join("worker-0.jsonl"),
                started: Stamp::now(),
                killed: None,
                exited: None,
                crashed: None,
                handle: WorkerHandle::Process { child, stdin: None },
            }],
            live: Live::default(),
            forcer: None,
            memory: None,
            history_dir: dir.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab with one worker process: `sh -c 'exit 3'`, which exits by itself at once. Its
    /// history directory (empty) is `dir`.
    fn lab_with_a_worker_that_exits(dir: &std::path::Path) -> (Lab, WorkerId) {
        let child = Command::new("sh")
            .args(["-c", "exit 3"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        let pid = child.id();
        let lab = Lab::for_tests(dir, child, None);
        // Exited, not reaped: a zombie, as a worker that crashed is until someone looks.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::procfs::state(pid) != Some('Z') {
            assert!(std::time::Instant::now() < deadline, "sh did not exit");
            std::thread::yield_now();
        }
        (lab, 0)
    }

    /// A fresh directory for one test's lab, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("dlock-check-lab-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_worker_that_died_by_itself_is_not_recorded_as_killed() {
        let dir = Dir::new("killed");
        let (mut lab, w) = lab_with_a_worker_that_exits(&dir.0);
        let killed = lab.kill_worker(w).await;
        let proc = lab.worker(w).unwrap();
        assert!(killed.is_err(), "kill-worker claimed to kill a worker that had exited");
        assert!(proc.killed.is_none(), "its crash is masked as a fault's kill");
        assert!(proc.crashed.is_some(), "its crash is not recorded");
    }

    #[test]
    fn a_worker_that_died_by_itself_is_not_paused() {
        let dir = Dir::new("paused");
        let (lab, w) = lab_with_a_worker_that_exits(&dir.0);
        assert!(lab.signal(w, Signal::SIGSTOP).is_err(), "pause-worker 'paused' a dead worker");
    }

    #[test]
    fn a_worker_that_died_by_itself_is_not_aimed_at() {
        let dir = Dir::new("aimed");
        let (mut lab, w) = lab_with_a_worker_that_exits(&dir.0);
        lab.note_exits();
        assert!(lab.alive().all(|p| p.id != w), "a dead worker is still a target");
        assert!(lab.worker(w).unwrap().crashed.is_some(), "its crash is not recorded");
    }
}
