//! The stdout table, the ratios, the targets and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cluster::ClusterReport;
use crate::handoff::HandoffRow;
use crate::lockers::Contender;
use crate::scenarios::{ClientMemoryRow, ContendedRow, ManyKeysRow, MemoryCycleRow, UncontendedRow};
use crate::stats::fmt_us;

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub redis: String,
    pub quick: bool,
    pub prefix: String,
    pub cores: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub started_unix: u64,
    pub total_secs: f64,
    pub redis_version: String,
    pub rounds: usize,
    pub dlock_rev: String,
    /// 1000 sequential PINGs before the first scenario.
    pub rtt_start: crate::stats::Summary,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub uncontended: Vec<UncontendedRow>,
    pub contended: Vec<ContendedRow>,
    pub handoff: Vec<HandoffRow>,
    pub many_keys: Vec<ManyKeysRow>,
    pub memory_backend: Vec<MemoryCycleRow>,
    pub client_memory: Option<ClientMemoryRow>,
    /// The `cluster` group, when it ran in the same invocation (also in `cluster.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    pub table: String,
}

/// One figure of a contender against the floor and against rslock (value / theirs).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub scenario: String,
    pub contender: Contender,
    pub metric: &'static str,
    pub value: f64,
    pub vs_floor: Option<f64>,
    pub vs_rslock: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub scenario: String,
    pub contender: String,
    pub target: String,
    pub value: String,
    pub met: bool,
}

/// A text table with right-aligned columns (the first left-aligned).
struct Table {
    rows: Vec<Vec<String>>,
    /// How many leading columns are left-aligned.
    left: usize,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|s| (*s).to_owned()).collect()], left: 1 }
    }

    fn left(mut self, n: usize) -> Self {
        self.left = n;
        self
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|i| self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
            .collect();
        for (n, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = width[i] - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if i < self.left {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            let _ = writeln!(out, "  {}", line.trim_end());
            if n == 0 {
                let total = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
                let _ = writeln!(out, "  {}", "-".repeat(total));
            }
        }
    }
}

fn ratio(v: f64, of: Option<f64>) -> Option<f64> {
    of.filter(|o| *o > 0.0).map(|o| v / o)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}×"))
}

fn rate(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

fn mark(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// Build the table, the ratios and the targets from the rows.
pub fn finish(report: &mut Report) {
    let mut out = String::new();
    let mut ratios = Vec::new();
    let mut targets = Vec::new();
    let m = &report.meta;
    let _ = writeln!(
        out,
        "dlock-bench — dlock {}, Redis {} ({}), {} cores, {} rounds per scenario, load {} → {}{}",
        m.dlock_rev,
        m.redis,
        m.redis_version,
        m.cores,
        m.rounds,
        m.loadavg_start,
        m.loadavg_end,
        if m.quick { ", --quick" } else { "" }
    );
    let _ = writeln!(
        out,
        "PING RTT at start: p50 {} p99 {} (on a VM whose idle vCPUs halt, an idle machine shows ~3× the RTT of a busy one)",
        fmt_us(m.rtt_start.p50_us),
        fmt_us(m.rtt_start.p99_us)
    );
    let _ = writeln!(
        out,
        "floor = SET NX PX + owner-checked DEL script on one multiplexed connection (contended: retry every 1 ms); \
         ttl 10 s, wait 30 s for all; ratios = contender / floor and / rslock"
    );

    uncontended_section(&mut out, &report.uncontended, "", &mut ratios, &mut targets);

    // Contended, one key.
    let mut holds: Vec<u64> = report.contended.iter().map(|r| r.hold_ms).collect();
    holds.dedup();
    for hold in holds {
        let rows: Vec<&ContendedRow> = report.contended.iter().filter(|r| r.hold_ms == hold).collect();
        let first = rows[0];
        let scen = format!("contended_{hold}ms");
        let _ = writeln!(
            out,
            "\n== {} tasks of one process on one key, critical section {hold} ms, {:.0} s ==",
            first.tasks,
            first.secs.round()
        );
        let get = |c: Contender| rows.iter().find(|r| r.contender == c).copied();
        let (floor, rs) = (get(Contender::Floor), get(Contender::Rslock));
        let mut t = Table::new(&[
            "contender",
            "sections/s",
            "wait p50",
            "wait p99",
            "wait max",
            "per-task min/max",
            "round min/max",
            "err",
            "sect/s ×floor",
            "×rslock",
            "p99 ×floor",
            "×rslock",
        ]);
        for r in &rows {
            let sf = ratio(r.sections_per_sec, floor.map(|f| f.sections_per_sec));
            let sr = ratio(r.sections_per_sec, rs.map(|f| f.sections_per_sec));
            let pf = ratio(r.wait.p99_us, floor.map(|f| f.wait.p99_us));
            let pr = ratio(r.wait.p99_us, rs.map(|f| f.wait.p99_us));
            t.row(vec![
                r.contender.label().into(),
                rate(r.sections_per_sec),
                fmt_us(r.wait.p50_us),
                fmt_us(r.wait.p99_us),
                fmt_us(r.wait.max_us),
                format!("{}/{}", r.per_task_min, r.per_task_max),
                format!("{:.2}", r.fairness),
                r.errors.to_string(),
                fmt_ratio(sf),
                fmt_ratio(sr),
                fmt_ratio(pf),
                fmt_ratio(pr),
            ]);
            ratios.push(Ratio {
                scenario: scen.clone(),
                contender: r.contender,
                metric: "sections_per_sec",
                value: r.sections_per_sec,
                vs_floor: sf,
                vs_rslock: sr,
            });
            ratios.push(Ratio {
                scenario: scen.clone(),
                contender: r.contender,
                metric: "wait_p99_us",
                value: r.wait.p99_us,
                vs_floor: pf,
                vs_rslock: pr,
            });
        }
        t.render(&mut out);
        if hold == 1 {
            for c in [Contender::Dlock, Contender::DlockAttr] {
                let Some(r) = get(c) else { continue };
                let mut line = format!("  targets, {}:", c.label());
                if let Some(f) = floor {
                    let pooled = r.sections_per_sec / f.sections_per_sec;
                    let v = paired_median(&r.round_rates, &f.round_rates);
                    push(
                        &mut targets,
                        &mut line,
                        &scen,
                        c,
                        "sections/s ≥ 0.95× spin floor",
                        format!("{v:.2}× (pooled {pooled:.2}×)"),
                        v >= 0.95,
                    );
                }
                if let Some(s) = rs {
                    let v = r.wait.p99_us / s.wait.p99_us;
                    push(
                        &mut targets,
                        &mut line,
                        &scen,
                        c,
                        "wait p99 ≤ 0.10× rslock's",
                        format!("{v:.3}×"),
                        v <= 0.1,
                    );
                }
                let v = r.fairness;
                push(
                    &mut targets,
                    &mut line,
                    &scen,
                    c,
                    "per-task min/max ≥ 0.70 (median over rounds)",
                    format!("{v:.2}"),
                    v >= 0.7,
                );
                let _ = writeln!(out, "{line}");
            }
        }
    }

    // Cross-process hand-off.
    if !report.handoff.is_empty() {
        let rows = &report.handoff;
        let first = &rows[0];
        let _ = writeln!(
            out,
            "\n== {} processes × {} tasks on one key, critical section {} ms, {:.0} s each: release → next acquire ==",
            first.procs,
            first.tasks_per_proc,
            first.hold_ms,
            first.secs.round()
        );
        let floor = rows.iter().find(|r| r.contender == Contender::Floor).map(|r| r.handoff_cross.p50_us);
        let rs = rows.iter().find(|r| r.contender == Contender::Rslock).map(|r| r.handoff_cross.p50_us);
        let mut t = Table::new(&[
            "contender",
            "sections/s",
            "wait p50",
            "wait p99",
            "per-proc min/max",
            "per-task min/max",
            "cross n",
            "cross p50",
            "cross p99",
            "same-proc p50",
            "all p50",
            "stamp p50",
            "release call",
            "RTT idle/loaded",
            "cross in RTTs",
            "overlaps",
            "err",
            "×floor",
            "×rslock",
        ]);
        for r in rows {
            let (vf, vr) = (ratio(r.handoff_cross.p50_us, floor), ratio(r.handoff_cross.p50_us, rs));
            t.row(vec![
                r.contender.label().into(),
                rate(r.sections_per_sec),
                fmt_us(r.wait.p50_us),
                fmt_us(r.wait.p99_us),
                format!("{:.2}", crate::scenarios::median(&r.round_proc_fairness)),
                format!("{:.2}", crate::scenarios::median(&r.round_task_fairness)),
                r.handoff_cross.n.to_string(),
                fmt_us(r.handoff_cross.p50_us),
                fmt_us(r.handoff_cross.p99_us),
                // Strict FIFO across processes can leave no same-process hand-off at all.
                if r.handoff_same.n == 0 { "—".into() } else { fmt_us(r.handoff_same.p50_us) },
                fmt_us(r.handoff_all.p50_us),
                fmt_us(r.stamp_cross.p50_us),
                fmt_us(r.release_call.p50_us),
                format!("{}/{}", fmt_us(r.rtt_idle.p50_us), fmt_us(r.rtt_loaded.p50_us)),
                format!("{:.1} / {:.1}", r.cross_p50_in_idle_rtts, r.cross_p50_in_loaded_rtts),
                r.overlaps.to_string(),
                r.errors.to_string(),
                fmt_ratio(vf),
                fmt_ratio(vr),
            ]);
            ratios.push(Ratio {
                scenario: "handoff".into(),
                contender: r.contender,
                metric: "handoff_cross_p50_us",
                value: r.handoff_cross.p50_us,
                vs_floor: vf,
                vs_rslock: vr,
            });
        }
        t.render(&mut out);
        let _ = writeln!(
            out,
            "  cross = hand-offs where the next holder is in another process (n of them); same-proc = the next holder is in the\n  \
             releasing process; stamp = cross measured through the Redis stamp key (adds the stamp SET's RTT); release call = the\n  \
             release call alone; RTT = PING p50 before (idle) and during (loaded) the run; per-proc, per-task = min/max sections\n  \
             within a round (median over rounds); floor + pub/sub = diagnostic: SET NX woken by a PUBLISH, no spin"
        );
        if let Some(r) = rows.iter().find(|r| r.contender == Contender::Dlock) {
            let v = r.cross_p50_in_loaded_rtts;
            let mut line = format!("  target, {}:", Contender::Dlock.label());
            push(
                &mut targets,
                &mut line,
                "handoff",
                Contender::Dlock,
                "cross-process hand-off p50 ≤ 3 loopback RTTs (PING p50 measured during the run)",
                format!(
                    "{v:.1} RTTs ({}; idle RTTs: {:.1})",
                    fmt_us(r.handoff_cross.p50_us),
                    r.cross_p50_in_idle_rtts
                ),
                v <= 3.0,
            );
            let _ = writeln!(out, "{line}");
        }
    }

    many_keys_section(&mut out, &report.many_keys, "", &mut ratios);

    // MemoryBackend.
    if !report.memory_backend.is_empty() {
        let _ = writeln!(
            out,
            "\n== MemoryBackend uncontended cycle ({} iterations; no floor/rslock equivalent) ==",
            report.memory_backend[0].iters
        );
        let mut t = Table::new(&["contender", "runtime", "ns/cycle", "p50", "p99", "< 2 µs"]).left(2);
        for r in &report.memory_backend {
            let met = r.ns_per_cycle < 2000.0;
            t.row(vec![
                r.contender.label().into(),
                r.runtime.into(),
                format!("{:.0}", r.ns_per_cycle),
                fmt_us(r.latency.p50_us),
                fmt_us(r.latency.p99_us),
                mark(met).into(),
            ]);
            // The target is judged where applications run: a task on the multi-thread runtime.
            if r.runtime == "multi_thread" {
                targets.push(Target {
                    scenario: "memory_backend".into(),
                    contender: r.contender.label().into(),
                    target: "cycle < 2 µs (multi-thread runtime)".into(),
                    value: format!("{:.0} ns", r.ns_per_cycle),
                    met,
                });
            }
        }
        t.render(&mut out);
    }

    // Client memory.
    if let Some(r) = &report.client_memory {
        let _ = writeln!(
            out,
            "\n== client memory: dlock manual on Redis, {} distinct keys locked+released by {} tasks; every {}th key contended by a second client ==",
            r.keys, r.tasks, r.contended_every
        );
        let mut t = Table::new(&[
            "keys",
            "ops/s",
            "RSS before",
            "RSS after",
            "growth",
            "channels (client/server/NUMSUB)",
            "err",
        ]);
        t.row(vec![
            r.keys.to_string(),
            rate(r.ops_per_sec),
            format!("{:.1} MiB", r.rss_before_kib as f64 / 1024.0),
            format!("{:.1} MiB", r.rss_after_kib as f64 / 1024.0),
            format!("{:+.1}%", r.growth_pct),
            format!("{}/{}/{}", r.client_subscribed_channels, r.server_channels, r.server_numsub),
            r.errors.to_string(),
        ]);
        t.render(&mut out);
        let mut line = "  targets:".to_owned();
        let met = r.growth_pct.abs() <= 10.0;
        push(
            &mut targets,
            &mut line,
            "client_memory",
            Contender::Dlock,
            "RSS within 10%",
            format!("{:+.1}%", r.growth_pct),
            met,
        );
        let zero = r.client_subscribed_channels == 0 && r.server_channels == 0 && r.server_numsub == 0;
        push(
            &mut targets,
            &mut line,
            "client_memory",
            Contender::Dlock,
            "subscribed channels = 0",
            format!("{}/{}/{}", r.client_subscribed_channels, r.server_channels, r.server_numsub),
            zero,
        );
        let _ = writeln!(out, "{line}");
    }

    targets_section(&mut out, &targets);

    report.table = out;
    report.ratios = ratios;
    report.targets = targets;
}

/// The median over rounds of `a[i] / b[i]` (round i of both ran back to back).
fn paired_median(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).filter(|(_, b)| **b > 0.0).map(|(a, b)| a / b).collect();
    crate::scenarios::median(&ratios)
}

fn push(
    targets: &mut Vec<Target>,
    line: &mut String,
    scenario: &str,
    c: Contender,
    target: &str,
    value: String,
    met: bool,
) {
    let _ = write!(line, " {target} → {value} {};", mark(met));
    targets.push(Target {
        scenario: scenario.into(),
        contender: c.label().into(),
        target: target.into(),
        value,
        met,
    });
}

/// `name` within a scenario group (`scope` empty for the single-Redis scenarios).
fn scoped(scope: &str, name: &str) -> String {
    if scope.is_empty() { name.to_owned() } else { format!("{scope}_{name}") }
}

/// The heading's prefix for a scenario group.
fn heading(scope: &str) -> String {
    if scope.is_empty() { String::new() } else { format!("{scope}: ") }
}

/// A table's header, without the `×rslock` column when rslock did not run (the cluster).
fn header_with_rslock<'a>(cells: &[&'a str], rslock: bool) -> Vec<&'a str> {
    cells.iter().copied().filter(|c| rslock || *c != "×rslock").collect()
}

/// The uncontended cycle: table, ratios, and the ≥ 0.90× floor target (attribute; the manual
/// API is shown against the same bar).
fn uncontended_section(
    out: &mut String,
    rows: &[UncontendedRow],
    scope: &str,
    ratios: &mut Vec<Ratio>,
    targets: &mut Vec<Target>,
) {
    let Some(first) = rows.first() else { return };
    let scenario = scoped(scope, "uncontended");
    let _ = writeln!(
        out,
        "\n== {}uncontended cycle: 1 task, 1 key, {} lock+unlock cycles after a warm-up ==",
        heading(scope),
        first.cycles
    );
    let floor = rows.iter().find(|r| r.contender == Contender::Floor).map(|r| r.cycles_per_sec);
    let rs = rows.iter().find(|r| r.contender == Contender::Rslock).map(|r| r.cycles_per_sec);
    let mut t = Table::new(&header_with_rslock(
        &[
            "contender",
            "cycles/s",
            "p50",
            "p99",
            "CPU/cycle client",
            "server",
            "ctx sw/cycle",
            "×floor",
            "×rslock",
        ],
        rs.is_some(),
    ));
    for r in rows {
        let (vf, vr) = (ratio(r.cycles_per_sec, floor), ratio(r.cycles_per_sec, rs));
        let mut cells = vec![
            r.contender.label().into(),
            rate(r.cycles_per_sec),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            format!("{:.1}µs", r.client_cpu_us),
            format!("{:.1}µs", r.server_cpu_us),
            format!("{:.2}", r.switches_per_cycle),
            fmt_ratio(vf),
        ];
        if rs.is_some() {
            cells.push(fmt_ratio(vr));
        }
        t.row(cells);
        ratios.push(Ratio {
            scenario: scenario.clone(),
            contender: r.contender,
            metric: "cycles_per_sec",
            value: r.cycles_per_sec,
            vs_floor: vf,
            vs_rslock: vr,
        });
    }
    t.render(out);
    let floor_row = rows.iter().find(|r| r.contender == Contender::Floor);
    for c in [Contender::DlockAttr, Contender::Dlock] {
        if let (Some(r), Some(f)) = (rows.iter().find(|r| r.contender == c), floor_row) {
            let pooled = r.cycles_per_sec / f.cycles_per_sec;
            let v = paired_median(&r.round_rates, &f.round_rates);
            let met = v >= 0.9;
            let goal = if c == Contender::DlockAttr { "target" } else { "(same bar, for reference)" };
            let _ = writeln!(
                out,
                "  {goal}: {} ≥ 0.90× floor cycles/s → {v:.2}× (median of per-round ratios; pooled {pooled:.2}×) {}",
                c.label(),
                mark(met)
            );
            if c == Contender::DlockAttr {
                targets.push(Target {
                    scenario: scenario.clone(),
                    contender: c.label().into(),
                    target: "≥ 0.90× floor cycles/s".into(),
                    value: format!("{v:.2}× (pooled {pooled:.2}×)"),
                    met,
                });
            }
        }
    }
}

/// Many tasks over many keys: table and ratios.
fn many_keys_section(out: &mut String, rows: &[ManyKeysRow], scope: &str, ratios: &mut Vec<Ratio>) {
    let Some(first) = rows.first() else { return };
    let _ = writeln!(
        out,
        "\n== {}{} tasks over {} keys (random key per op), lock+unlock, {:.0} s ==",
        heading(scope),
        first.tasks,
        first.keys,
        first.secs.round()
    );
    let floor = rows.iter().find(|r| r.contender == Contender::Floor).map(|r| r.ops_per_sec);
    let rs = rows.iter().find(|r| r.contender == Contender::Rslock).map(|r| r.ops_per_sec);
    let mut t = Table::new(&header_with_rslock(
        &[
            "contender",
            "ops/s",
            "p50",
            "p99",
            "max",
            "CPU/op client",
            "server",
            "ctx sw/op",
            "err",
            "×floor",
            "×rslock",
        ],
        rs.is_some(),
    ));
    for r in rows {
        let (vf, vr) = (ratio(r.ops_per_sec, floor), ratio(r.ops_per_sec, rs));
        let mut cells = vec![
            r.contender.label().into(),
            rate(r.ops_per_sec),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            fmt_us(r.latency.max_us),
            format!("{:.1}µs", r.client_cpu_us),
            format!("{:.1}µs", r.server_cpu_us),
            format!("{:.2}", r.switches_per_op),
            r.errors.to_string(),
            fmt_ratio(vf),
        ];
        if rs.is_some() {
            cells.push(fmt_ratio(vr));
        }
        t.row(cells);
        ratios.push(Ratio {
            scenario: scoped(scope, "many_keys"),
            contender: r.contender,
            metric: "ops_per_sec",
            value: r.ops_per_sec,
            vs_floor: vf,
            vs_rslock: vr,
        });
    }
    t.render(out);
}

/// The targets of a run, and how many were met.
fn targets_section(out: &mut String, targets: &[Target]) {
    if targets.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n== targets ==");
    let mut t = Table::new(&["scenario", "contender", "target", "value", ""]).left(4);
    for g in targets {
        t.row(vec![
            g.scenario.clone(),
            g.contender.clone(),
            g.target.clone(),
            g.value.clone(),
            mark(g.met).into(),
        ]);
    }
    t.render(out);
    let met = targets.iter().filter(|t| t.met).count();
    let _ = writeln!(out, "  {met} of {} targets met", targets.len());
}

/// The `cluster` group's table, ratios and targets.
pub fn finish_cluster(report: &mut ClusterReport) {
    let mut out = String::new();
    let mut ratios = Vec::new();
    let mut targets = Vec::new();
    let m = &report.meta;
    let _ = writeln!(
        out,
        "\ndlock-bench cluster — dlock {}, Redis Cluster {} ({}; primaries {}), {} cores, {} rounds per scenario, load {} → {}{}",
        m.dlock_rev,
        m.redis,
        m.redis_version,
        report.primaries.join(" "),
        m.cores,
        m.rounds,
        m.loadavg_start,
        m.loadavg_end,
        if m.quick { ", --quick" } else { "" }
    );
    let _ = writeln!(
        out,
        "PING RTT at start, through the cluster connection to the primary :{} (uncontended and hand-off keys): p50 {} p99 {}",
        report.shared_key_primary,
        fmt_us(m.rtt_start.p50_us),
        fmt_us(m.rtt_start.p99_us)
    );
    let _ = writeln!(
        out,
        "floor = SET NX PX + owner-checked DEL script (EVALSHA) on one redis-rs cluster connection (retry every 1 ms when held); \
         dlock = RedisClusterBackend; rslock has no cluster support; ttl 10 s, wait 30 s; server CPU = all primaries"
    );
    uncontended_section(&mut out, &report.uncontended, "cluster", &mut ratios, &mut targets);
    many_keys_section(&mut out, &report.many_keys, "cluster", &mut ratios);

    if let Some(first) = report.handoff.first() {
        let _ = writeln!(
            out,
            "\n== cluster: hand-off between two clients alternating on one key ({} per contender): release call → waiter holds ==",
            first.handoffs
        );
        let floor = report.handoff.iter().find(|r| r.contender == Contender::Floor).map(|r| r.latency.p50_us);
        let mut t = Table::new(&[
            "contender",
            "p50",
            "p90",
            "p99",
            "max",
            "release call p50",
            "RTT start/warm/idle",
            "p50 in RTTs start/warm/idle",
            "×floor",
        ]);
        for r in &report.handoff {
            let vf = ratio(r.latency.p50_us, floor);
            t.row(vec![
                r.contender.label().into(),
                fmt_us(r.latency.p50_us),
                fmt_us(r.latency.p90_us),
                fmt_us(r.latency.p99_us),
                fmt_us(r.latency.max_us),
                fmt_us(r.release_call.p50_us),
                format!(
                    "{}/{}/{}",
                    fmt_us(m.rtt_start.p50_us),
                    fmt_us(r.rtt_during.p50_us),
                    fmt_us(r.rtt_idle.p50_us)
                ),
                format!("{:.1} / {:.1} / {:.1}", r.p50_in_start_rtts, r.p50_in_rtts, r.p50_in_idle_rtts),
                fmt_ratio(vf),
            ]);
            ratios.push(Ratio {
                scenario: "cluster_handoff".into(),
                contender: r.contender,
                metric: "handoff_p50_us",
                value: r.latency.p50_us,
                vs_floor: vf,
                vs_rslock: None,
            });
        }
        t.render(&mut out);
        let _ = writeln!(
            out,
            "  two clients = two connections of their own (the floor: two cluster connections; dlock: two RedisClusterBackends);\n  \
             RTT = PING p50 to the key's shard primary: 1000 back to back at the start; 4 back to back in each hand-off's lead-in (warm);\n  \
             and one in each lead-in after the same idle gap (5-10 ms) as the release that follows it (idle: the state the release starts from);\n  \
             the floor's waiter retries SET NX every 1 ms (which keeps its machine warm); dlock's waits for the notice"
        );
        if let Some(r) = report.handoff.iter().find(|r| r.contender == Contender::Dlock) {
            let v = r.p50_in_idle_rtts;
            let mut line = format!("  target, {}:", Contender::Dlock.label());
            push(
                &mut targets,
                &mut line,
                "cluster_handoff",
                Contender::Dlock,
                "hand-off p50 ≤ 3 RTTs to the shard primary (PING p50 after the release's idle gap)",
                format!(
                    "{v:.1} RTTs ({}; in warm RTTs: {:.1}, start RTTs: {:.1})",
                    fmt_us(r.latency.p50_us),
                    r.p50_in_rtts,
                    r.p50_in_start_rtts
                ),
                v <= 3.0,
            );
            let _ = writeln!(out, "{line}");
        }
    }
    targets_section(&mut out, &targets);
    report.table = out;
    report.ratios = ratios;
    report.targets = targets;
}
