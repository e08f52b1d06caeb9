//! A hand-written SVG of the wait distributions (cumulative, log-scale time axis).

use std::fmt::Write as _;

use crate::lockers::Contender;
use crate::stats::fmt_us;

fn colour(c: Contender) -> &'static str {
    match c {
        Contender::Floor => "#7f7f7f",
        Contender::FloorPubsub => "#9467bd",
        Contender::Rslock => "#d62728",
        Contender::Dlock => "#1f77b4",
        Contender::DlockAttr => "#2ca02c",
    }
}

/// `series`: per contender, the waits in ns (any order). One CDF line each, on a log axis
/// from 10 µs to the largest decade needed, with p50/p99 marked.
pub fn wait_cdf(title: &str, series: &[(Contender, Vec<u64>)]) -> String {
    let (w, h) = (900.0_f64, 520.0_f64);
    let (left, right, top, bottom) = (70.0, 230.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_ns = series.iter().flat_map(|(_, v)| v.iter().copied()).max().unwrap_or(1_000_000).max(1);
    let lo = 1.0_f64; // log10(10 µs in µs)
    let hi = (max_ns as f64 / 1000.0).log10().ceil().max(lo + 1.0);
    let x = |us: f64| left + (us.max(10.0).log10() - lo) / (hi - lo) * pw;
    let y = |q: f64| top + (1.0 - q) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ =
        writeln!(s, r#"<text x="{left}" y="28" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    // Grid and axes.
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99] {
        let yy = y(q);
        let dash = if q == 0.5 || q == 0.99 { r#" stroke-dasharray="4 3""# } else { "" };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"{dash}/><text x="{:.1}" y="{:.1}" text-anchor="end">{q}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0
        );
    }
    let mut decade = lo;
    while decade <= hi + 1e-9 {
        let xx = x(10f64.powf(decade));
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            tick(decade)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">wait for the lock (log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">fraction of waits ≤ x</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Lines and legend.
    for (i, (c, waits)) in series.iter().enumerate() {
        let mut v = waits.clone();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let n = v.len();
        let step = (n / 600).max(1);
        let mut pts = String::new();
        let mut idx = 0;
        while idx < n {
            let q = (idx + 1) as f64 / n as f64;
            let _ = write!(pts, "{:.1},{:.1} ", x(v[idx] as f64 / 1000.0), y(q));
            idx += step;
        }
        let _ = write!(pts, "{:.1},{:.1}", x(v[n - 1] as f64 / 1000.0), y(1.0));
        let col = colour(*c);
        let dash = if *c == Contender::DlockAttr { r#" stroke-dasharray="6 4""# } else { "" };
        let _ =
            writeln!(s, r#"<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"{dash}/>"#);
        let p50 = v[(n / 2).min(n - 1)] as f64 / 1000.0;
        let p99 = v[((n * 99).div_ceil(100)).clamp(1, n) - 1] as f64 / 1000.0;
        for (p, q) in [(p50, 0.5), (p99, 0.99)] {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{col}"/>"#, x(p), y(q));
        }
        let ly = top + 10.0 + i as f64 * 54.0;
        let lx = left + pw + 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{col}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(c.label())
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">p50 {}  p99 {}</text><text x="{:.1}" y="{:.1}">max {}  n={n}</text>"#,
            lx + 28.0,
            ly + 20.0,
            fmt_us(p50),
            fmt_us(p99),
            lx + 28.0,
            ly + 35.0,
            fmt_us(v[n - 1] as f64 / 1000.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An axis label for 10^decade µs: `10µs`, `1ms`, `100ms`, `1s`.
fn tick(decade: f64) -> String {
    let us = 10f64.powf(decade).round();
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.0}ms", us / 1000.0)
    } else {
        format!("{:.0}s", us / 1_000_000.0)
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
