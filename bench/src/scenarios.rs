//! The in-process scenarios.
//!
//! Each timed scenario runs in rounds: every round runs every contender once, in an order that
//! rotates from round to round, and a contender's figures pool its rounds. On a shared machine
//! whose load changes during the run, that spreads the changes over all contenders alike
//! instead of charging them to whoever ran at the wrong moment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::lockers::{Contender, CpuMark, Lockers, Locks, Result, XorShift, attr_mem_op, rss_kib};
use crate::stats::Summary;

/// How many errors a task tolerates before it gives up (they are reported, not hidden).
const MAX_TASK_ERRORS: usize = 20;

/// `contenders` rotated by `round`.
pub fn round_order(contenders: &[Contender], round: usize) -> Vec<Contender> {
    let mut order = contenders.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left(round % n);
    }
    order
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UncontendedRow {
    pub contender: Contender,
    pub rounds: usize,
    pub cycles: usize,
    pub secs: f64,
    pub cycles_per_sec: f64,
    /// cycles/s of each round, in round order.
    pub round_rates: Vec<f64>,
    /// Lock + unlock, one cycle.
    pub latency: Summary,
    /// CPU time per cycle: this process (all threads), and the Redis server.
    pub client_cpu_us: f64,
    pub server_cpu_us: f64,
    /// Context switches of this process's threads per cycle (each is a thread put to sleep
    /// or woken: what cross-thread wake-ups cost).
    pub switches_per_cycle: f64,
}

/// What a contender gathered over the rounds of the uncontended scenario.
#[derive(Debug, Default)]
pub struct UncontendedAcc {
    cycles: usize,
    secs: f64,
    lat: Vec<u64>,
    round_rates: Vec<f64>,
    /// Cycles and seconds of the round under way (its slices so far).
    round_cycles: usize,
    round_secs: f64,
    client_cpu_ns: u64,
    server_cpu_ns: u64,
    switches: u64,
}

/// One slice of a round: one task, one key, `warmup` untimed cycles, then `cycles` timed
/// lock+unlock cycles.
///
/// A round interleaves short slices of every contender (see `main`), so that each sees the
/// same machine: on a VM whose vCPUs halt when idle, a cycle costs ~50 µs while the client
/// and Redis share a vCPU and ~140 µs while they do not, and the scheduler moves them between
/// those for stretches of tens or hundreds of ms — longer than a slice, shorter than a round.
pub async fn uncontended_slice<L: Locks>(
    lk: &L,
    c: Contender,
    cycles: usize,
    warmup: usize,
    acc: &mut UncontendedAcc,
) -> Result<()> {
    let key = lk.key(c, "uncontended");
    for _ in 0..warmup {
        lk.op(c, &key, Duration::ZERO).await?;
    }
    let cpu = CpuMark::now(lk).await?;
    let start = Instant::now();
    for _ in 0..cycles {
        let t = Instant::now();
        lk.op(c, &key, Duration::ZERO).await?;
        acc.lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let used = cpu.since(lk).await?;
    acc.cycles += cycles;
    acc.secs += secs;
    acc.round_cycles += cycles;
    acc.round_secs += secs;
    acc.client_cpu_ns += used.client_ns;
    acc.server_cpu_ns += used.server_ns;
    acc.switches += used.switches;
    Ok(())
}

/// Cycles per contender per slice of the uncontended scenario (see [`uncontended_slice`]).
pub const UNCONTENDED_SLICE: usize = 50;

/// The uncontended scenario: `cycles` lock+unlock cycles of each of `contenders` (after
/// `warmup` untimed ones), in `rounds` rounds, each of interleaved slices of
/// [`UNCONTENDED_SLICE`] cycles per contender (their order rotating every slice).
pub async fn uncontended<L: Locks>(
    lk: &L,
    group: &str,
    contenders: &[Contender],
    cycles: usize,
    warmup: usize,
    rounds: usize,
) -> Result<Vec<UncontendedRow>> {
    let per_round = cycles / rounds;
    let slices = (per_round / UNCONTENDED_SLICE).max(1);
    eprintln!(
        "{group}uncontended: {cycles} cycles per contender in {rounds} rounds, each of {slices} interleaved slices…"
    );
    let mut accs: HashMap<Contender, UncontendedAcc> = HashMap::new();
    for round in 0..rounds {
        for slice in 0..slices {
            for c in round_order(contenders, round * slices + slice) {
                let w = if round == 0 && slice == 0 { warmup } else { 0 };
                let acc = accs.entry(c).or_default();
                uncontended_slice(lk, c, per_round / slices, w, acc).await?;
            }
        }
        accs.values_mut().for_each(UncontendedAcc::end_round);
    }
    Ok(contenders.iter().map(|&c| accs.remove(&c).unwrap_or_default().row(c)).collect())
}

impl UncontendedAcc {
    /// The round's slices are done: record its rate.
    pub fn end_round(&mut self) {
        if self.round_cycles > 0 {
            self.round_rates.push(self.round_cycles as f64 / self.round_secs);
        }
        self.round_cycles = 0;
        self.round_secs = 0.0;
    }

    pub fn row(mut self, c: Contender) -> UncontendedRow {
        let ops = self.cycles.max(1) as f64;
        UncontendedRow {
            contender: c,
            rounds: self.round_rates.len(),
            cycles: self.cycles,
            secs: self.secs,
            cycles_per_sec: self.cycles as f64 / self.secs,
            latency: Summary::of(&mut self.lat),
            client_cpu_us: self.client_cpu_ns as f64 / 1000.0 / ops,
            server_cpu_us: self.server_cpu_ns as f64 / 1000.0 / ops,
            switches_per_cycle: self.switches as f64 / ops,
            round_rates: self.round_rates,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContendedRow {
    pub contender: Contender,
    pub tasks: usize,
    pub hold_ms: u64,
    pub rounds: usize,
    pub secs: f64,
    pub sections: u64,
    pub sections_per_sec: f64,
    /// sections/s of each round, in round order.
    pub round_rates: Vec<f64>,
    /// From asking for the lock to holding it.
    pub wait: Summary,
    /// Sections per task, summed over the rounds (task i of every round counts as task i).
    pub per_task_sections: Vec<u64>,
    pub per_task_min: u64,
    pub per_task_max: u64,
    /// min/max sections per task within each round.
    pub round_fairness: Vec<f64>,
    /// The median of `round_fairness`.
    pub fairness: f64,
    pub errors: usize,
    #[serde(skip)]
    pub waits_ns: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct ContendedAcc {
    tasks: usize,
    hold_ms: u64,
    secs: f64,
    per_task: Vec<u64>,
    waits: Vec<u64>,
    errors: usize,
    round_rates: Vec<f64>,
    round_fairness: Vec<f64>,
}

struct TaskOutcome {
    waits: Vec<u64>,
    errors: usize,
    finished: Instant,
}

/// `tasks` tasks of this process on one key, each looping acquire → hold → release until
/// `duration` has passed (a task already waiting then finishes its section; the rate is
/// taken over the real elapsed time).
pub async fn contended_round(
    lk: &Arc<Lockers>,
    c: Contender,
    tasks: usize,
    hold: Duration,
    duration: Duration,
    acc: &mut ContendedAcc,
) -> Result<()> {
    let key = lk.key(c, &format!("one:{}ms", hold.as_millis()));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (lk, key) = (Arc::clone(lk), key.clone());
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut out = TaskOutcome { waits: Vec::new(), errors: 0, finished: start };
            while Instant::now() < end {
                match lk.op(c, &key, hold).await {
                    Ok(waited) => out.waits.push(waited.as_nanos() as u64),
                    Err(err) => {
                        out.errors += 1;
                        eprintln!("  {c}: error: {err}");
                        if out.errors >= MAX_TASK_ERRORS {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out.finished = Instant::now();
            out
        }));
    }
    acc.tasks = tasks;
    acc.hold_ms = hold.as_millis() as u64;
    acc.per_task.resize(tasks, 0);
    let mut last = start;
    let mut counts = Vec::with_capacity(tasks);
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.await?;
        counts.push(out.waits.len() as u64);
        acc.per_task[i] += out.waits.len() as u64;
        acc.waits.extend_from_slice(&out.waits);
        acc.errors += out.errors;
        last = last.max(out.finished);
    }
    let secs = (last - start).as_secs_f64();
    acc.secs += secs;
    acc.round_rates.push(counts.iter().sum::<u64>() as f64 / secs);
    let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    acc.round_fairness.push(if max == 0 { 0.0 } else { min as f64 / max as f64 });
    Ok(())
}

impl ContendedAcc {
    pub fn row(mut self, c: Contender) -> ContendedRow {
        let sections: u64 = self.per_task.iter().sum();
        let wait = Summary::of(&mut self.waits);
        ContendedRow {
            contender: c,
            tasks: self.tasks,
            hold_ms: self.hold_ms,
            rounds: self.round_rates.len(),
            secs: self.secs,
            sections,
            sections_per_sec: sections as f64 / self.secs,
            round_rates: self.round_rates,
            wait,
            per_task_min: self.per_task.iter().copied().min().unwrap_or(0),
            per_task_max: self.per_task.iter().copied().max().unwrap_or(0),
            per_task_sections: self.per_task,
            fairness: median(&self.round_fairness),
            round_fairness: self.round_fairness,
            errors: self.errors,
            waits_ns: self.waits,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ManyKeysRow {
    pub contender: Contender,
    pub tasks: usize,
    pub keys: u64,
    pub rounds: usize,
    pub secs: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub round_rates: Vec<f64>,
    /// Lock + unlock, one op.
    pub latency: Summary,
    pub errors: usize,
    /// CPU time per op: this process (all threads), and the Redis server.
    pub client_cpu_us: f64,
    pub server_cpu_us: f64,
    /// Context switches of this process's threads per op.
    pub switches_per_op: f64,
}

#[derive(Debug, Default)]
pub struct ManyKeysAcc {
    tasks: usize,
    keys: u64,
    secs: f64,
    lat: Vec<u64>,
    errors: usize,
    round_rates: Vec<f64>,
    client_cpu_ns: u64,
    server_cpu_ns: u64,
    switches: u64,
}

/// `tasks` tasks, each locking and unlocking a random one of `keys` keys until `duration`.
pub async fn many_keys_round<L: Locks>(
    lk: &Arc<L>,
    c: Contender,
    tasks: usize,
    keys: u64,
    duration: Duration,
    round: usize,
    acc: &mut ManyKeysAcc,
) -> Result<()> {
    let cpu = CpuMark::now(lk.as_ref()).await?;
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let lk = Arc::clone(lk);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut rng = XorShift::new((round * tasks + t) as u64 + 1);
            let mut out = TaskOutcome { waits: Vec::new(), errors: 0, finished: start };
            while Instant::now() < end {
                let key = lk.key(c, &format!("many:{}", rng.below(keys)));
                let t0 = Instant::now();
                match lk.op(c, &key, Duration::ZERO).await {
                    Ok(_) => out.waits.push(t0.elapsed().as_nanos() as u64),
                    Err(err) => {
                        out.errors += 1;
                        eprintln!("  {c}: error: {err}");
                        if out.errors >= MAX_TASK_ERRORS {
                            break;
                        }
                    }
                }
            }
            out.finished = Instant::now();
            out
        }));
    }
    let mut last = start;
    let mut ops = 0;
    for h in handles {
        let out = h.await?;
        ops += out.waits.len();
        acc.lat.extend_from_slice(&out.waits);
        acc.errors += out.errors;
        last = last.max(out.finished);
    }
    let secs = (last - start).as_secs_f64();
    let used = cpu.since(lk.as_ref()).await?;
    acc.tasks = tasks;
    acc.keys = keys;
    acc.secs += secs;
    acc.round_rates.push(ops as f64 / secs);
    acc.client_cpu_ns += used.client_ns;
    acc.server_cpu_ns += used.server_ns;
    acc.switches += used.switches;
    Ok(())
}

/// The many-keys scenario: `tasks` tasks over `keys` keys, `duration` per contender, split
/// into `rounds` rounds (the contenders' order rotating every round).
pub async fn many_keys<L: Locks>(
    lk: &Arc<L>,
    group: &str,
    contenders: &[Contender],
    tasks: usize,
    keys: u64,
    duration: Duration,
    rounds: usize,
) -> Result<Vec<ManyKeysRow>> {
    eprintln!(
        "{group}many keys: {tasks} tasks over {keys} keys, {duration:?} per contender in {rounds} rounds…"
    );
    let mut accs: HashMap<Contender, ManyKeysAcc> = HashMap::new();
    for round in 0..rounds {
        for c in round_order(contenders, round) {
            let acc = accs.entry(c).or_default();
            many_keys_round(lk, c, tasks, keys, duration / rounds as u32, round, acc).await?;
        }
    }
    Ok(contenders.iter().map(|&c| accs.remove(&c).unwrap_or_default().row(c)).collect())
}

impl ManyKeysAcc {
    pub fn row(mut self, c: Contender) -> ManyKeysRow {
        let ops = self.lat.len() as u64;
        ManyKeysRow {
            contender: c,
            tasks: self.tasks,
            keys: self.keys,
            rounds: self.round_rates.len(),
            secs: self.secs,
            ops,
            ops_per_sec: ops as f64 / self.secs,
            round_rates: self.round_rates,
            latency: Summary::of(&mut self.lat),
            errors: self.errors,
            client_cpu_us: self.client_cpu_ns as f64 / 1000.0 / ops.max(1) as f64,
            server_cpu_us: self.server_cpu_ns as f64 / 1000.0 / ops.max(1) as f64,
            switches_per_op: self.switches as f64 / ops.max(1) as f64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryCycleRow {
    pub contender: Contender,
    /// Where the loop ran: a task on the multi-thread runtime, or a current-thread runtime.
    pub runtime: &'static str,
    pub iters: usize,
    pub ns_per_cycle: f64,
    /// Per-cycle latency from a separate, individually timed run of `iters / 10` cycles.
    pub latency: Summary,
}

/// Uncontended lock+release on `dlock::MemoryBackend`, `iters` times.
pub async fn memory_cycle(
    service: &dlock::LockService,
    c: Contender,
    iters: usize,
    runtime: &'static str,
) -> Result<MemoryCycleRow> {
    async fn one(service: &dlock::LockService, c: Contender) -> Result<()> {
        match c {
            Contender::DlockAttr => attr_mem_op("mem").await?,
            _ => {
                let guard = service.lock("bench:mem").await?;
                guard.release().await?;
            }
        }
        Ok(())
    }
    for _ in 0..iters / 10 {
        one(service, c).await?;
    }
    let start = Instant::now();
    for _ in 0..iters {
        one(service, c).await?;
    }
    let ns_per_cycle = start.elapsed().as_nanos() as f64 / iters as f64;
    let sampled = iters / 10;
    let mut lat = Vec::with_capacity(sampled);
    for _ in 0..sampled {
        let t = Instant::now();
        one(service, c).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    Ok(MemoryCycleRow { contender: c, runtime, iters, ns_per_cycle, latency: Summary::of(&mut lat) })
}

/// [`memory_cycle`] on a fresh current-thread runtime in its own thread.
pub async fn memory_cycle_current_thread(
    service: dlock::LockService,
    c: Contender,
    iters: usize,
) -> Result<MemoryCycleRow> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(memory_cycle(&service, c, iters, "current_thread")));
        let _ = tx.send(outcome);
    });
    rx.await?
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientMemoryRow {
    pub keys: u64,
    pub tasks: usize,
    /// Every this-many-th key is also locked at the same moment through a second client (its
    /// own `RedisBackend`, as another process would), so one of the two waits on release
    /// notices: subscribes, is woken, unsubscribes.
    pub contended_every: u64,
    pub contended_keys: u64,
    pub secs: f64,
    pub ops_per_sec: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / before, in percent.
    pub growth_pct: f64,
    /// `RedisBackend::subscribed_channels()` of both clients at the end of the run.
    pub client_subscribed_channels: usize,
    /// `PUBSUB CHANNELS <run prefix>*` on the server at the end of the run.
    pub server_channels: usize,
    /// `PUBSUB NUMSUB` summed over the release channels of a sample of contended keys.
    pub server_numsub: u64,
    pub errors: usize,
}

/// Every this-many-th key of the client-memory scenario is contended by a second client.
pub const CONTENDED_EVERY: u64 = 8;

/// Lock (and release) `keys` distinct keys with dlock manual on Redis, `tasks` at a time
/// (every [`CONTENDED_EVERY`]-th one also through `other` at the same moment), and compare
/// the process's RSS before and after.
pub async fn client_memory(
    lk: Arc<Lockers>,
    other: dlock::LockService,
    keys: u64,
    tasks: usize,
) -> Result<ClientMemoryRow> {
    // Warm up the allocator and every lazily built structure with a first, smaller pass.
    let warm = (keys / 20).max(10_000);
    lock_distinct(&lk, &other, "warm", warm, tasks).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before_kib = rss_kib().ok_or("cannot read VmRSS from /proc/self/status")?;
    let start = Instant::now();
    let errors = lock_distinct(&lk, &other, "mem", keys, tasks).await?;
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after_kib = rss_kib().ok_or("cannot read VmRSS from /proc/self/status")?;
    Ok(ClientMemoryRow {
        keys,
        tasks,
        contended_every: CONTENDED_EVERY,
        contended_keys: keys.div_ceil(CONTENDED_EVERY),
        secs,
        ops_per_sec: keys as f64 / secs,
        rss_before_kib,
        rss_after_kib,
        growth_pct: (rss_after_kib as f64 - rss_before_kib as f64) / rss_before_kib as f64 * 100.0,
        client_subscribed_channels: 0,
        server_channels: 0,
        server_numsub: 0,
        errors,
    })
}

async fn lock_once(service: &dlock::LockService, key: String) -> std::result::Result<(), dlock::Error> {
    let guard = service.lock(key).await?;
    guard.release().await?;
    Ok(())
}

async fn lock_distinct(
    lk: &Arc<Lockers>,
    other: &dlock::LockService,
    tag: &'static str,
    keys: u64,
    tasks: usize,
) -> Result<usize> {
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks as u64 {
        let (lk, other) = (Arc::clone(lk), other.clone());
        handles.push(tokio::spawn(async move {
            let mut errors = 0;
            let mut i = t;
            while i < keys {
                let key = format!("{tag}:{i}");
                let outcome = if i % CONTENDED_EVERY == 0 {
                    let (a, b) = tokio::join!(lock_once(&lk.dlock, key.clone()), lock_once(&other, key));
                    a.and(b)
                } else {
                    lock_once(&lk.dlock, key).await
                };
                if let Err(err) = outcome {
                    errors += 1;
                    eprintln!("  client memory: error: {err}");
                    if errors >= MAX_TASK_ERRORS {
                        break;
                    }
                }
                i += tasks as u64;
            }
            errors
        }));
    }
    let mut errors = 0;
    for h in handles {
        errors += h.await?;
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_and_medians() {
        let all = [Contender::Floor, Contender::Rslock, Contender::Dlock];
        assert_eq!(round_order(&all, 1), vec![Contender::Rslock, Contender::Dlock, Contender::Floor]);
        assert_eq!(round_order(&all, 3), all.to_vec());
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).abs() < 1e-12);
    }
}
