//! Users who deny clippy's restriction lints about shadowing and patterns get none from the
//! expansion (this file is also the example `ui_pass_restriction`, which CI checks with clippy):
//! the rebinding `let id = id;` that moves a parameter into the body shadows it by
//! construction, and the view a key reads through a pattern matches a reference.
#![deny(warnings, unused_results, unused_qualifications, missing_docs, unreachable_pub)]
#![deny(clippy::all, clippy::pedantic, clippy::nursery)]
#![deny(
    clippy::shadow_same,
    clippy::shadow_reuse,
    clippy::shadow_unrelated,
    clippy::pattern_type_mismatch,
    clippy::used_underscore_binding,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::let_underscore_untyped,
    clippy::ref_patterns
)]
#![allow(clippy::unused_async)]

use dlock::distributed_lock;

/// A point.
#[derive(Debug)]
pub struct Point {
    /// Across.
    pub x: u64,
    /// Down.
    pub y: u64,
}

/// Moves the point.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "point:<id>")]
pub async fn plain(id: u64, mut step: u64) -> Result<u64, dlock::Error> {
    step = step.saturating_add(1);
    Ok(id.saturating_add(step))
}

/// Moves a pair.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "pair:<first>")]
pub async fn whole_pattern((first, second): (u64, u64), Point { x, y }: Point) -> Result<u64, dlock::Error> {
    Ok(first.saturating_add(second).saturating_add(x).saturating_add(y))
}

/// Reads a key through patterns that leave part of the value unbound.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "part:<first>:<x>")]
pub async fn partial_pattern(
    (first, _): (u64, u64),
    Point { x, .. }: Point,
    _: u64,
) -> Result<u64, dlock::Error> {
    Ok(first.saturating_add(x))
}

/// A body that shadows a parameter is linted as in the plain function, so it says so.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "shadow:<id>")]
pub async fn body_shadows(id: u64) -> Result<u64, dlock::Error> {
    #[expect(clippy::shadow_reuse, reason = "the body's own shadowing is still linted")]
    let id = id.saturating_add(1);
    Ok(id)
}

fn main() {}
