//! Timestamps that can be compared across the worker processes of one machine.
//!
//! Every event carries two readings taken together: the wall clock (`CLOCK_REALTIME`) and the
//! monotonic clock (`CLOCK_MONOTONIC`). Both are system-wide on Linux, so readings from
//! different processes on the same machine are comparable. The checker orders events across
//! processes by the **wall clock**; the monotonic reading is kept so that a wall clock that
//! was stepped during a run (NTP, an operator) is detected instead of silently reordering
//! the history (see [`max_step`]).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One reading of both clocks, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// `CLOCK_REALTIME`: nanoseconds since the Unix epoch. What the checker orders by.
    pub wall: i64,
    /// `CLOCK_MONOTONIC`: nanoseconds since an unspecified moment (boot, on Linux).
    pub mono: i64,
}

impl Stamp {
    /// Both clocks, now.
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Self { wall, mono: monotonic_ns() }
    }

    /// A stamp with only a wall-clock reading (for hand-made histories in tests).
    pub fn at_wall(wall: i64) -> Self {
        Self { wall, mono: wall }
    }

    /// How far the wall clock moved relative to the monotonic clock since `earlier`:
    /// zero when neither was stepped.
    pub fn skew_since(&self, earlier: &Stamp) -> i64 {
        (self.wall - self.mono) - (earlier.wall - earlier.mono)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (0 if the clock cannot be read, which Linux never does).
fn monotonic_ns() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec().saturating_mul(1_000_000_000).saturating_add(t.tv_nsec()))
}

/// The largest wall-clock step, in nanoseconds, seen over `stamps` relative to the first one
/// (the two clocks also drift apart by a few microseconds per second while NTP slews the
/// wall clock; that is what the tolerance in the report is for).
pub fn max_step<'a>(stamps: impl IntoIterator<Item = &'a Stamp>) -> i64 {
    let mut stamps = stamps.into_iter();
    let Some(first) = stamps.next() else { return 0 };
    stamps.map(|s| s.skew_since(first).abs()).max().unwrap_or(0)
}

/// Nanoseconds to milliseconds, for reports.
pub fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_one_process_agree_with_each_other() {
        let a = Stamp::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = Stamp::now();
        assert!(b.wall > a.wall && b.mono > a.mono, "{a:?} then {b:?}");
        assert!(b.skew_since(&a).abs() < 2_000_000, "no step between two readings: {a:?} {b:?}");
    }

    #[test]
    fn a_stepped_wall_clock_is_seen() {
        let a = Stamp { wall: 1_000, mono: 10 };
        let b = Stamp { wall: 5_000_000_000, mono: 20 };
        assert!(max_step([&a, &b]) > 4_000_000_000);
        assert_eq!(max_step([&a]), 0);
    }
}
