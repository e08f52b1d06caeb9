//! Latency summaries.

use serde::Serialize;

/// A distribution of durations, in microseconds (fractional).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean_us: f64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Nearest-rank percentile of sorted nanoseconds.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Summary {
    /// Summarise nanosecond samples (sorted in place).
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        if samples.is_empty() {
            return Self::default();
        }
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            n: samples.len(),
            mean_us: sum as f64 / samples.len() as f64 / 1000.0,
            min_us: us(samples[0]),
            p50_us: us(pct(samples, 50.0)),
            p90_us: us(pct(samples, 90.0)),
            p99_us: us(pct(samples, 99.0)),
            max_us: us(samples[samples.len() - 1]),
        }
    }
}

/// A duration in µs for a table cell: `850µs`, `12.3ms`, `1.20s`.
pub fn fmt_us(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0}ns", v * 1000.0)
    } else if v < 1000.0 {
        format!("{v:.0}µs")
    } else if v < 1_000_000.0 {
        format!("{:.2}ms", v / 1000.0)
    } else {
        format!("{:.2}s", v / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let s = Summary::of(&mut v);
        assert_eq!(s.n, 100);
        assert!((s.p50_us - 50.0).abs() < 1e-9);
        assert!((s.p99_us - 99.0).abs() < 1e-9);
        assert!((s.max_us - 100.0).abs() < 1e-9);
        assert_eq!(Summary::of(&mut []).n, 0);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_us(0.5), "500ns");
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(12_345.0), "12.35ms");
        assert_eq!(fmt_us(1_200_000.0), "1.20s");
    }
}
