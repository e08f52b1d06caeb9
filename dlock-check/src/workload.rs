//! What one worker does: T tasks, each repeatedly taking a random key (through
//! `#[distributed_lock]` or the manual API) and doing a read–think–write on the key's fenced
//! register and unfenced counter, recording every step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dlock::{LockBackend, LockService};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::Stamp;
use crate::history::{Event, Mode, OpId, Outcome, Recorder, StepKind, StepResult, WorkerId};
use crate::registers::{Registers, write_id};

/// Which API the tasks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModeChoice {
    /// Every task uses `#[distributed_lock]`.
    Attribute,
    /// Every task uses `service.lock(key)…` and `guard.release()`.
    Manual,
    /// Even-numbered tasks use the attribute, odd-numbered ones the manual API.
    Mixed,
}

/// The work every worker does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Tasks per worker.
    pub tasks: u32,
    /// The lock keys (without prefix).
    pub keys: Vec<String>,
    /// Attribute, manual or both.
    pub mode: ModeChoice,
    /// The lease.
    pub ttl: Duration,
    /// How long a call waits for its lock.
    pub wait: Duration,
    /// The shortest think time between read and write.
    pub think_min: Duration,
    /// The longest (ordinary) think time.
    pub think_max: Duration,
    /// About one section in this many is long (0: none).
    pub long_every: u32,
    /// How long a long section thinks (longer than the ttl: its lease must be renewed).
    pub long_think: Duration,
    /// Seed of the tasks' random choices.
    pub seed: u64,
}

/// One worker: its id, its service, its store and its history.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// Its id.
    pub worker: WorkerId,
    /// What to do.
    pub workload: Workload,
    /// The backend its service uses (recorded, possibly with a planted bug).
    pub backend: Arc<dyn LockBackend>,
    /// The service's key prefix.
    pub prefix: String,
    /// A name to register the service under, unique in the process.
    pub service_name: &'static str,
    /// The registers.
    pub registers: Registers,
    /// Its history.
    pub recorder: Arc<Recorder>,
    /// The planted bug `body-before-lease`: manual-API tasks poll the body before the loss.
    pub body_before_lease: bool,
}

/// Run the worker's tasks until `stop` turns true; each task finishes the call it is in.
pub async fn run(ctx: WorkerContext, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let service =
        LockService::builder_from_arc(Arc::clone(&ctx.backend)).key_prefix(ctx.prefix.clone()).build();
    dlock::register(ctx.service_name, service.clone())
        .map_err(|err| anyhow::anyhow!("registering the worker's service: {err}"))?;
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..ctx.workload.tasks {
        let mode = match ctx.workload.mode {
            ModeChoice::Attribute => Mode::Attribute,
            ModeChoice::Manual => Mode::Manual,
            ModeChoice::Mixed if task % 2 == 0 => Mode::Attribute,
            ModeChoice::Mixed => Mode::Manual,
        };
        let runner = TaskRunner {
            ctx: ctx.clone(),
            service: service.clone(),
            task,
            mode,
            ops: Arc::clone(&ops),
            rng: StdRng::seed_from_u64(
                ctx.workload.seed ^ (u64::from(ctx.worker) << 32) ^ u64::from(task).wrapping_mul(0x9e37_79b9),
            ),
        };
        tasks.spawn(runner.run(stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

struct TaskRunner {
    ctx: WorkerContext,
    service: LockService,
    task: u32,
    mode: Mode,
    ops: Arc<AtomicU64>,
    rng: StdRng,
}

impl TaskRunner {
    async fn run(mut self, stop: watch::Receiver<bool>) {
        let workload = &self.ctx.workload;
        while !*stop.borrow() {
            let op = self.ops.fetch_add(1, Ordering::Relaxed);
            let key = workload.keys[self.rng.random_range(0..workload.keys.len())].clone();
            let long = workload.long_every > 0 && self.rng.random_ratio(1, workload.long_every);
            let think = if long {
                workload.long_think
            } else {
                let (min, max) = (workload.think_min, workload.think_max.max(workload.think_min));
                min + (max - min).mul_f64(self.rng.random::<f64>())
            };
            self.ctx.recorder.record(&Event::Invoke {
                op,
                task: self.task,
                key: key.clone(),
                mode: self.mode,
                long,
                at: Stamp::now(),
            });
            let section = Section { ctx: &self.ctx, key: &key, op, think };
            let outcome = match self.mode {
                Mode::Attribute => match attribute_section(&key, &section).await {
                    Ok(()) => Outcome::Ok,
                    Err(err) => outcome_of(&err),
                },
                Mode::Manual => manual_section(&self.service, &section).await,
            };
            let failed = matches!(outcome, Outcome::Backend { .. } | Outcome::Failed { .. });
            self.ctx.recorder.record(&Event::Done { op, outcome, at: Stamp::now() });
            if failed {
                // The backend is down: ask again soon, not in a tight loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One call's section: what the body does while the lock is held.
struct Section<'a> {
    ctx: &'a WorkerContext,
    key: &'a str,
    op: OpId,
    think: Duration,
}

#[dlock::distributed_lock(
    key = "<key>",
    ttl = section.ctx.workload.ttl,
    wait = section.ctx.workload.wait,
    service = section.ctx.service_name
)]
async fn attribute_section(key: &str, section: &Section<'_>) -> Result<(), dlock::Error> {
    section.body(dlock::fencing_token().unwrap_or(0)).await;
    Ok(())
}

/// The manual API, as its documentation shows it: race the work against `guard.lost()`,
/// `biased` with the loss first, so the work is never resumed once the lease has ended (a
/// process frozen past its lease, say, sees the loss before its body's timer).
async fn manual_section(service: &LockService, section: &Section<'_>) -> Outcome {
    let workload = &section.ctx.workload;
    let guard = match service.lock(section.key).ttl(workload.ttl).wait(workload.wait).await {
        Ok(guard) => guard,
        Err(err) => return outcome_of(&err),
    };
    let token = guard.fencing_token();
    let lost = if section.ctx.body_before_lease {
        // The planted bug: the body first.
        tokio::select! {
            biased;
            () = section.body(token) => None,
            reason = guard.lost() => Some(reason),
        }
    } else {
        tokio::select! {
            biased;
            reason = guard.lost() => Some(reason),
            () = section.body(token) => None,
        }
    };
    match lost {
        None => match guard.release().await {
            Ok(true) => Outcome::Ok,
            Ok(false) => Outcome::LostAtRelease,
            Err(err) => Outcome::Backend { msg: format!("release: {err}") },
        },
        Some(reason) => {
            drop(guard);
            Outcome::Lost { reason: format!("{reason:?}") }
        }
    }
}

fn outcome_of(err: &dlock::Error) -> Outcome {
    match err {
        dlock::Error::Timeout { .. } => Outcome::Timeout,
        dlock::Error::Lost { reason, .. } => Outcome::Lost { reason: format!("{reason:?}") },
        dlock::Error::Backend { .. } => Outcome::Backend { msg: err.to_string() },
        _ => Outcome::Failed { msg: err.to_string() },
    }
}

/// Records the end of the body when dropped: when it returns, and when dlock drops it.
struct BodyEnd<'a> {
    recorder: &'a Recorder,
    op: OpId,
}

impl Drop for BodyEnd<'_> {
    fn drop(&mut self) {
        self.recorder.record(&Event::BodyEnd { op: self.op, at: Stamp::now() });
    }
}

impl Section<'_> {
    /// Read both registers, think, write both back incremented.
    async fn body(&self, token: u64) {
        let recorder = &*self.ctx.recorder;
        recorder.record(&Event::Enter { op: self.op, token, at: Stamp::now() });
        let _end = BodyEnd { recorder, op: self.op };
        let registers = &self.ctx.registers;
        let id = write_id(self.ctx.worker, self.op);
        let fenced = self.step(StepKind::FencedRead, registers.fenced_read(self.key, token)).await;
        let counter = self.step(StepKind::CounterRead, registers.counter_read(self.key)).await;
        tokio::time::sleep(self.think).await;
        if let StepResult::Value { v } = fenced {
            self.step(StepKind::FencedWrite, registers.fenced_write(self.key, token, v + 1, &id)).await;
        }
        if let StepResult::Value { v } = counter {
            self.step(StepKind::CounterWrite, registers.counter_write(self.key, v + 1, &id)).await;
        }
    }

    async fn step(&self, step: StepKind, call: impl Future<Output = StepResult>) -> StepResult {
        let recorder = &self.ctx.recorder;
        recorder.record(&Event::StepStart { op: self.op, step, at: Stamp::now() });
        let result = call.await;
        recorder.record(&Event::StepEnd { op: self.op, step, result: result.clone(), at: Stamp::now() });
        result
    }
}
