//! Small helpers about instants and delays, shared by the layers that schedule things.

use std::time::Duration;

use tokio::time::Instant;

/// An instant later than any wait or lease: about 30 years on.
pub(crate) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(30 * 365 * 24 * 3600)
}

/// `now + d`, or [`far_future`] when that would overflow.
pub(crate) fn saturating_add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| far_future(now))
}

/// A random duration up to `d`, so waiters that failed together do not retry together.
pub(crate) fn jitter_up_to(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>())
}
