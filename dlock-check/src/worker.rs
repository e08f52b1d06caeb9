//! A worker process: `dlock-check worker --spec <json>`, started by the coordinator. It
//! connects to the lock backend and the store, runs the workload and records its history
//! until its stdin closes (the coordinator stopping it, or dying).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::backends::{self, BackendSettings, ConnectError, Plant};
use crate::clock::Stamp;
use crate::history::{Event, Recorder, WorkerId};
use crate::registers::Registers;
use crate::workload::{self, WorkerContext, Workload};

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreSpec {
    /// In the worker's own process (only for in-process workers).
    Memory,
    /// A Redis the checker owns.
    Redis {
        /// Its URL, as this worker reaches it.
        url: String,
        /// Prefix of every register key.
        prefix: String,
    },
}

/// Everything a worker process needs to know, passed as JSON on its command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Its id.
    pub worker: WorkerId,
    /// Its slot (network namespace, when there are any).
    pub slot: u32,
    /// The run it belongs to.
    pub run_id: String,
    /// The lock backend, as this worker reaches it.
    pub backend: BackendSettings,
    /// The store.
    pub store: StoreSpec,
    /// Its history file.
    pub history: PathBuf,
    /// What to do.
    pub workload: Workload,
    /// A planted bug, if any.
    pub plant: Option<Plant>,
}

impl WorkerSpec {
    /// The name the worker registers its service under (unique within a process).
    pub fn service_name(&self) -> &'static str {
        Box::leak(format!("dlock-check:{}:w{}", self.run_id, self.worker).into_boxed_str())
    }
}

/// The entry point of a worker process.
pub fn main(spec: &str) -> ExitCode {
    let spec: WorkerSpec = match serde_json::from_str(spec) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("dlock-check worker: bad --spec: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dlock-check worker {}: no tokio runtime: {err}", spec.worker);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_process(&spec));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dlock-check worker {}: {err:#}", spec.worker);
            ExitCode::FAILURE
        }
    }
}

async fn run_process(spec: &WorkerSpec) -> anyhow::Result<()> {
    let recorder = Arc::new(
        Recorder::create(&spec.history)
            .with_context(|| format!("creating the history file {}", spec.history.display()))?,
    );
    recorder.record(&Event::Hello {
        worker: spec.worker,
        pid: std::process::id(),
        slot: spec.slot,
        at: Stamp::now(),
    });
    let (stop_tx, stop) = watch::channel(false);
    // The coordinator closes our stdin to stop us; if it dies, the pipe closes too.
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        let _ = stop_tx.send(true);
    });
    // A worker started while the backend is down (a respawn during a server fault) keeps
    // trying until it can connect or is told to stop; a URL that can never work ends it.
    let connected = loop {
        match backends::backend_for(&spec.backend).await {
            Ok(connected) => break connected,
            Err(ConnectError::Unreachable(msg)) if !*stop.borrow() => {
                eprintln!("dlock-check worker {}: {msg}; retrying", spec.worker);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    let registers = match &spec.store {
        StoreSpec::Memory => anyhow::bail!("a worker process cannot use an in-memory store"),
        StoreSpec::Redis { url, prefix } => Registers::redis(url, prefix).await?,
    };
    let backend = backends::instrument(&connected, spec.plant, Arc::clone(&recorder));
    let ctx = WorkerContext {
        worker: spec.worker,
        workload: spec.workload.clone(),
        backend,
        prefix: spec.backend.prefix.clone(),
        service_name: spec.service_name(),
        registers,
        recorder: Arc::clone(&recorder),
        body_before_lease: spec.plant == Some(Plant::BodyBeforeLease),
    };
    workload::run(ctx, stop).await?;
    recorder.record(&Event::Bye { complete: recorder.complete(), at: Stamp::now() });
    Ok(())
}
