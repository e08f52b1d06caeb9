//! The Lua scripts that make each Redis operation one atomic step.
//!
//! They run with `EVALSHA` and fall back to `EVAL` when Redis answers `NOSCRIPT` (after a
//! restart or `SCRIPT FLUSH`); see `RedisBackend::eval`. On the common path (the lock was
//! free; the release found nobody waiting) each answers one integer: parsing a reply is a
//! large part of a client's cost per call, and an array costs several times an integer.
//!
//! Every key a script touches is passed in `KEYS` (`KEYS[1]` the lock, `KEYS[2]` its waiting
//! line; see [`layout`](super::layout)), so ACLs check them and Redis Cluster routes them.
//! The channels of waiting processes are derived from the line's name inside the script.
//!
//! **Fencing tokens** are the Redis server's time in µs when drawn, or the lock's last token
//! plus one if that is greater (a hand-off, or a re-acquisition, drawn within the same µs). The
//! lock's value carries its token (`<token>:<owner>`), so nothing else is stored and nothing
//! piles up; a lock Redis lost (a restart without persistence, a failover to a replica that
//! missed it, eviction) gets, from its next holder, a token above every token it handed out —
//! as long as the server clock has not gone back since then (each token is drawn by a script
//! of its own, and Redis runs scripts one at a time, each taking well over a µs).
//!
//! **Refusals change nothing.** Each script's first write is one that Redis may refuse
//! (`OOM`, `NOPERM`) without harm: the acquire script's is the `SET … NX` that takes the lock,
//! and Redis refuses an `OOM` only at a script's first write; the keys are all declared, so
//! key permissions are checked before it runs. A release that would publish checks first that
//! the user may (`redis.acl_check_cmd`, Redis ≥ 7), so it never hands a key over without
//! telling.

use std::sync::OnceLock;

use crate::backend::HANDOFF_LEASE;

/// A Lua script and its SHA-1 digest (what `EVALSHA` names it by), computed on first use.
pub(super) struct Lua {
    pub(super) source: String,
    sha: OnceLock<String>,
}

impl Lua {
    fn new(source: String) -> Self {
        Self { source, sha: OnceLock::new() }
    }

    /// The lowercase hex SHA-1 of the source.
    pub(super) fn sha(&self) -> &str {
        self.sha.get_or_init(|| redis::Script::new(&self.source).get_hash().to_owned())
    }
}

/// The scripts, for notices sent with `PUBLISH` (one Redis, or a primary with replicas) or
/// `SPUBLISH` (Redis Cluster's sharded pub/sub, Redis ≥ 7).
pub(super) struct Scripts {
    pub(super) acquire: Lua,
    pub(super) release: Lua,
    pub(super) renew: Lua,
}

impl Scripts {
    /// The scripts that announce with `PUBLISH`.
    pub(super) fn plain() -> &'static Scripts {
        static PLAIN: OnceLock<Scripts> = OnceLock::new();
        PLAIN.get_or_init(|| Scripts::with_publish("PUBLISH"))
    }

    /// The scripts that announce with `SPUBLISH`.
    #[allow(dead_code, reason = "for the Redis Cluster backend")]
    pub(super) fn sharded() -> &'static Scripts {
        static SHARDED: OnceLock<Scripts> = OnceLock::new();
        SHARDED.get_or_init(|| Scripts::with_publish("SPUBLISH"))
    }

    fn with_publish(publish: &str) -> Scripts {
        Scripts {
            acquire: Lua::new(ACQUIRE.to_owned()),
            release: Lua::new(
                RELEASE
                    .replace("PUBLISH", publish)
                    .replace("HANDOFF_MS", &HANDOFF_LEASE.as_millis().to_string()),
            ),
            renew: Lua::new(RENEW.to_owned()),
        }
    }
}

/// Take the lock if free and draw a fencing token; otherwise report the holder's time left,
/// and, when asked to, put the owner in the waiting line.
///
/// `KEYS[1]` the lock; `KEYS[2]`, the waiting line, only when the owner is to join it (left out
/// when it could not hear a hand-off: every key and argument costs Redis time on every call).
/// `ARGV[1]` owner token, `ARGV[2]` ttl (ms); with the line, `ARGV[3]` how long (ms) to keep the
/// owner in it, `ARGV[4]` the lease (ms) a hand-off gives it (its ttl, capped at
/// `HANDOFF_LEASE`) and `ARGV[5]` the id of its process (whose channel hears the hand-off).
///
/// The lock's value is `<fencing token>:<owner>`; when the lock was free, the token's digits
/// are `TIME`'s seconds and its microseconds padded to six digits, the same text as
/// `string.format('%d', now_us)` for less of the server's time. Returns the fencing token when acquired;
/// when held, `{pttl}` (`pttl` < 0: unknown), or `{pttl, holder's token}` if the owner is now in
/// line (the newest token drawn so far tells a later hand-off from a stale one).
///
/// A lock already handed to this owner by a release (it asked again before hearing the
/// notice) counts as acquired, with a fresh lease and token. A waiting owner keeps its place
/// (its arrival time) when it asks again.
const ACQUIRE: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if redis.call('SET', KEYS[1], now[1] .. string.sub('00000', #now[2]) .. now[2] .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[2] then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return now_us
end
local held = redis.call('GET', KEYS[1])
local sep = held and string.find(held, ':', 1, true)
local last = sep and tonumber(string.sub(held, 1, sep - 1)) or 0
if sep and string.sub(held, sep + 1) == ARGV[1] then
  local token = math.max(last + 1, now_us)
  redis.call('SET', KEYS[1], string.format('%d', token) .. ':' .. ARGV[1], 'PX', ARGV[2])
  if KEYS[2] then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return token
end
if not KEYS[2] then
  return {redis.call('PTTL', KEYS[1])}
end
local now_ms = math.floor(now_us / 1000)
local place = redis.call('HGET', KEYS[2], ARGV[1])
local arrived = place and string.match(place, '^(%d+):') or string.format('%d', now_us)
redis.call('HSET', KEYS[2], ARGV[1], arrived .. ':' .. string.format('%d', now_ms + tonumber(ARGV[3])) .. ':' .. ARGV[4] .. ':' .. ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {redis.call('PTTL', KEYS[1]), last}
";

/// Free the lock if `ARGV[1]` owns it and hand it to the first owner still waiting in line
/// (earliest arrival, place not expired; a place whose hand-off lease is not between 1 ms and
/// `HANDOFF_LEASE` was not written by dlock and counts as expired), telling that owner's
/// process alone on its channel for the key (`g:<token>:<owner>`). If the line held only
/// places whose time was up, tell their processes that the key is free (`r`) — they may still wait, out of line; with no line, say
/// nothing: every process that waits and can hear notices is in line. An owner that does not
/// hold the lock leaves the waiting line instead; one that does leaves it too.
///
/// `KEYS[1]` the lock, `KEYS[2]` its waiting line (the channels are named after it). Without
/// `KEYS[2]` (a Redis Cluster slot in migration, where a script may not name a key that has
/// moved beside one that has not), it only frees the lock: waiters find it free on their timer. Permission
/// to publish is checked before anything changes. Returns 0 when the lock was not (any more)
/// this owner's; 1 when it was freed and nobody was told; 2 when it was handed over, or freed
/// with a notice that some process received.
const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
local sep = held and string.find(held, ':', 1, true)
if not sep or string.sub(held, sep + 1) ~= ARGV[1] then
  if KEYS[2] then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return 0
end
if not KEYS[2] or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
local channel_of = function(process)
  return KEYS[1] .. '#dlock:to:' .. process .. string.sub(KEYS[2], string.len(KEYS[1]) + 12)
end
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local now_ms = math.floor(now_us / 1000)
local fields = redis.call('HGETALL', KEYS[2])
local gone, told, next_owner, next_arrived, next_lease, next_process = {}, {}, nil, nil, nil, nil
for i = 1, #fields, 2 do
  local owner = fields[i]
  local arrived, until_ms, lease, process = string.match(fields[i + 1], '^(%d+):(%d+):(%d+):(.+)$')
  local lease_ms = tonumber(lease)
  if owner == ARGV[1] or not until_ms or tonumber(until_ms) < now_ms or lease_ms < 1 or lease_ms > HANDOFF_MS then
    gone[#gone + 1] = owner
    if process and owner ~= ARGV[1] then
      told[process] = true
    end
  elseif not next_owner or tonumber(arrived) < next_arrived then
    next_owner, next_arrived, next_lease, next_process = owner, tonumber(arrived), lease, process
  end
end
local to = {}
if next_owner then
  to[1] = channel_of(next_process)
else
  for process in pairs(told) do
    to[#to + 1] = channel_of(process)
  end
end
if redis.acl_check_cmd then
  for _, channel in ipairs(to) do
    if not redis.acl_check_cmd('PUBLISH', channel, 'r') then
      return redis.error_reply('NOPERM this user may not PUBLISH on ' .. channel .. ', where dlock hands locks over')
    end
  end
end
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 999, #gone)))
end
if next_owner then
  local token = math.max(tonumber(string.sub(held, 1, sep - 1)) + 1, now_us)
  redis.call('SET', KEYS[1], string.format('%d', token) .. ':' .. next_owner, 'PX', next_lease)
  redis.call('HDEL', KEYS[2], next_owner)
  redis.call('PUBLISH', to[1], string.format('g:%d:%s', token, next_owner))
  return 2
end
redis.call('DEL', KEYS[1])
local heard = 0
for _, channel in ipairs(to) do
  heard = heard + redis.call('PUBLISH', channel, 'r')
end
if heard > 0 then
  return 2
end
return 1
";

/// Extend the lease to `ARGV[2]` ms if `ARGV[1]` owns the lock. Returns 1 or 0.
const RENEW: &str = r"
local held = redis.call('GET', KEYS[1])
local sep = held and string.find(held, ':', 1, true)
if sep and string.sub(held, sep + 1) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
