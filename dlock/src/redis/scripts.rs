//! The Lua scripts that make each Redis operation one atomic step.
//!
//! They run with `EVALSHA` and fall back to `EVAL` when Redis answers `NOSCRIPT` (after a
//! restart or `SCRIPT FLUSH`); `redis::Script` does both.

use std::sync::LazyLock;

use redis::Script;

/// Take the lock if free and draw a fencing token; otherwise report the holder's time left.
///
/// `KEYS[1]` lock key, `KEYS[2]` fencing counter; `ARGV[1]` owner token, `ARGV[2]` ttl (ms).
/// Returns `{1, token}` when acquired, `{0, pttl}` when held (`pttl` < 0: unknown).
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// Delete the lock if `ARGV[1]` owns it, and announce the release on channel `ARGV[2]`.
/// Returns 0 when the lock was not (any more) this owner's, else 1 + the number of clients
/// that received the notice (the waiting processes).
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1 + redis.call('PUBLISH', ARGV[2], '1')
end
return 0
",
    )
});

/// Extend the lease to `ARGV[2]` ms if `ARGV[1]` owns the lock. Returns 1 or 0.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});
