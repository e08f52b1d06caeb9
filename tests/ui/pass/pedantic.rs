//! Users who deny `clippy::pedantic` get no lint from the expansion that the plain function
//! would not draw (this file is also the example `ui_pass_pedantic`, which CI checks with
//! clippy). `_`-prefixed parameters are the usual way to keep an argument the body does not
//! use: a guard or an extractor kept for its side effect.
#![deny(warnings)]
#![deny(clippy::pedantic)]
#![allow(clippy::unused_async)]

use dlock::distributed_lock;

/// Kept for its `Drop`.
pub struct Audit;

/// Runs the job.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "job:<id>")]
pub async fn underscore_params(id: u64, _audit: Audit) -> Result<u64, dlock::Error> {
    Ok(id)
}

/// Runs the job, with a pattern that binds an underscored name.
///
/// # Errors
///
/// When the lock is not acquired.
#[distributed_lock(key = "job:<id>")]
pub async fn underscore_in_pattern(id: u64, (_audit, _): (Audit, u8)) -> Result<u64, dlock::Error> {
    Ok(id)
}

fn main() {
    let _ = (underscore_params, underscore_in_pattern);
}
