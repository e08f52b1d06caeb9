//! The Lua scripts that make each Redis operation one atomic step.
//!
//! They run with `EVALSHA` and fall back to `EVAL` when Redis answers `NOSCRIPT` (after a
//! restart or `SCRIPT FLUSH`); see `RedisBackend::eval`. On the common path (the lock was
//! free; the release found nobody waiting) each answers one integer: parsing a reply is a
//! large part of a client's cost per call, and an array costs several times an integer.
//!
//! The acquire and release scripts get `KEYS[1]`, the lock, and `KEYS[2]`, the fencing
//! counter. A held lock's waiting processes live in two keys the scripts name after the lock
//! (`line` and `asked` below), so that the common case — nobody waits — passes and touches
//! no more than before (passing them as `KEYS` cost ~20 % of throughput with 64 tasks):
//! `dlock:queue:<lock>`, the waiting owners in arrival order (a sorted set scored by arrival
//! time in µs), and `dlock:queue-entries:<lock>`, what each asked for (a hash: owner token →
//! `"<until ms>:<lease ms>:<inbox>"`, `until` in Redis server time, `lease` what a hand-off
//! gives it, `inbox` the pub/sub channel of the waiting process). Both expire on their own once
//! nobody has asked for a while.

use std::sync::OnceLock;

/// A Lua script and its SHA-1 digest (what `EVALSHA` names it by), computed on first use.
pub(super) struct Lua {
    pub(super) source: &'static str,
    sha: OnceLock<String>,
}

impl Lua {
    const fn new(source: &'static str) -> Self {
        Self { source, sha: OnceLock::new() }
    }

    /// The lowercase hex SHA-1 of the source.
    pub(super) fn sha(&self) -> &str {
        self.sha.get_or_init(|| redis::Script::new(self.source).get_hash().to_owned())
    }
}

/// Take the lock if free and draw a fencing token; otherwise report the holder's time left.
///
/// `ARGV[1]` owner token, `ARGV[2]` ttl (ms); and only to queue the owner if the lock is held
/// (left out when it could not hear a hand-off: every argument costs Redis time on every
/// call), `ARGV[3]` how long (ms) to keep it in the waiting line, `ARGV[4]` the channel on
/// which its process hears hand-offs and `ARGV[5]` the lease (ms) a hand-off gives it (its
/// ttl, capped at `HANDOFF_LEASE`).
/// Returns the fencing token (an integer, at least 1) when acquired; when held, `{pttl}`
/// (`pttl` < 0: unknown), or `{pttl, newest token}` if the owner is now in line (the newest
/// token drawn so far tells a later hand-off from a stale one).
///
/// A lock already handed to this owner by a release (it asked again before hearing the
/// notice) counts as acquired, with a fresh lease and token.
pub(super) static ACQUIRE: Lua = Lua::new(
    r"
local queue = ARGV[3] ~= nil
local mine = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not mine and redis.call('GET', KEYS[1]) == ARGV[1] then
  mine = redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if mine then
  if queue and redis.call('ZREM', 'dlock:queue:' .. KEYS[1], ARGV[1]) == 1 then
    redis.call('HDEL', 'dlock:queue-entries:' .. KEYS[1], ARGV[1])
  end
  return redis.call('INCR', KEYS[2])
end
if not queue then
  return {redis.call('PTTL', KEYS[1])}
end
local line, asked = 'dlock:queue:' .. KEYS[1], 'dlock:queue-entries:' .. KEYS[1]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', line, 'NX', tonumber(now[1]) * 1000000 + tonumber(now[2]), ARGV[1])
redis.call('HSET', asked, ARGV[1], string.format('%d:%s:%s', now_ms + tonumber(ARGV[3]), ARGV[5], ARGV[4]))
redis.call('PEXPIRE', line, ARGV[3])
redis.call('PEXPIRE', asked, ARGV[3])
return {redis.call('PTTL', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
",
);

/// Free the lock if `ARGV[1]` owns it and hand it to the first other process still waiting.
/// If the line held only places whose time was up, announce the release on the key's channel
/// (`dlock:released:<lock>`, as `RedisBackend::release_channel` names it; built here only
/// when needed) — their processes may still wait, out of line; with no line, say nothing: every
/// process that waits and can hear notices is in line. An owner that does not hold the lock
/// leaves the waiting line instead; one that does leaves it too.
///
/// Returns 0 when the lock was not (any more) this owner's; 1 when it was freed and nobody
/// was told; 2 when it was handed over (published to the new owner's process only, on its
/// inbox channel, as `g:<token>:<owner>:<key channel>`) or freed with a notice that some
/// process received (published on the key's channel as `r`).
pub(super) static RELEASE: Lua = Lua::new(
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('ZREM', 'dlock:queue:' .. KEYS[1], ARGV[1]) == 1 then
    redis.call('HDEL', 'dlock:queue-entries:' .. KEYS[1], ARGV[1])
  end
  return 0
end
redis.call('DEL', KEYS[1])
local line = 'dlock:queue:' .. KEYS[1]
if redis.call('EXISTS', line) == 1 then
  local asked = 'dlock:queue-entries:' .. KEYS[1]
  if redis.call('ZREM', line, ARGV[1]) == 1 then
    redis.call('HDEL', asked, ARGV[1])
  end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _ = 1, 16 do
    local waiter = redis.call('ZRANGE', line, 0, 0)[1]
    if not waiter then
      break
    end
    redis.call('ZREM', line, waiter)
    local wanted = redis.call('HGET', asked, waiter)
    redis.call('HDEL', asked, waiter)
    local until_ms, lease, inbox = string.match(wanted or '', '^(%d+):(%d+):(.+)$')
    if until_ms and tonumber(until_ms) >= now_ms then
      redis.call('SET', KEYS[1], waiter, 'PX', lease)
      local token = redis.call('INCR', KEYS[2])
      redis.call('PUBLISH', inbox, string.format('g:%d:%s:dlock:released:%s', token, waiter, KEYS[1]))
      return 2
    end
  end
  if redis.call('PUBLISH', 'dlock:released:' .. KEYS[1], 'r') > 0 then
    return 2
  end
end
return 1
",
);

/// Extend the lease to `ARGV[2]` ms if `ARGV[1]` owns the lock. Returns 1 or 0.
pub(super) static RENEW: Lua = Lua::new(
    r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
);
