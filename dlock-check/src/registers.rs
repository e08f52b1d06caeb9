//! The two registers each section reads and writes for its key: one in a **fenced store**
//! (it refuses a token lower than the highest it has seen for the key) and one **unfenced**
//! counter. Both log every write they apply, in the order they applied them, so the checker
//! knows exactly which writes landed — also those of a worker killed before it heard back.
//!
//! The store is the checker's own, independent of the lock backend under test: a private
//! `redis-server` (or, for the in-process backend, a map in memory). A PostgreSQL store would
//! be one more variant of [`Registers`].
//!
//! Fencing covers the read too: the fenced read registers the token, so a holder whose lease
//! ended can neither read after a newer holder did nor write after a newer holder read. With
//! tokens that strictly increase, no update of the fenced register can be lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::history::StepResult;

/// The bound on every store call.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses `token` if it is lower than `max` (tokens as decimal strings: a Lua number would
/// round tokens above 2^53).
const LUA_LT: &str = "local function lt(a, b) if #a ~= #b then return #a < #b end return a < b end\n";

/// `KEYS[1]` the register's hash; `ARGV[1]` the token. `{1, value}` or `{0, max}`.
const FENCED_READ: &str = "
local max = redis.call('HGET', KEYS[1], 'max') or '0'
if lt(ARGV[1], max) then return {0, max} end
redis.call('HSET', KEYS[1], 'max', ARGV[1])
return {1, redis.call('HGET', KEYS[1], 'value') or '0'}";

/// `KEYS[1]` the hash, `KEYS[2]` the log; `ARGV[1]` token, `ARGV[2]` value, `ARGV[3]` write id.
const FENCED_WRITE: &str = "
local max = redis.call('HGET', KEYS[1], 'max') or '0'
if lt(ARGV[1], max) then return {0, max} end
redis.call('HSET', KEYS[1], 'max', ARGV[1], 'value', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3] .. '=' .. ARGV[2])
return {1, ARGV[1]}";

/// A write that a register applied: which section wrote it, and the value it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landed {
    /// `<worker>.<op>`.
    pub id: String,
    /// The value written.
    pub v: i64,
}

/// What the store holds for one key at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStore {
    /// The fenced register's value.
    pub fenced_value: i64,
    /// The highest token the fenced register saw.
    pub fenced_max: u64,
    /// Every write the fenced register applied, in order.
    pub fenced_log: Vec<Landed>,
    /// The unfenced counter's value.
    pub counter_value: i64,
    /// Every write the counter applied, in order.
    pub counter_log: Vec<Landed>,
}

/// A write id: the worker and the call that wrote.
pub fn write_id(worker: u32, op: u64) -> String {
    format!("{worker}.{op}")
}

/// The store.
#[derive(Debug, Clone)]
pub enum Registers {
    /// In a Redis server the checker owns.
    Redis(RedisRegisters),
    /// In this process (for the in-process lock backend).
    Memory(MemoryRegisters),
}

impl Registers {
    /// A store in memory, shared by clones.
    pub fn memory() -> Self {
        Self::Memory(MemoryRegisters::default())
    }

    /// The store in the Redis at `url`, every key under `prefix`.
    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("{url} is not a Redis URL"))?;
        let conn = tokio::time::timeout(STORE_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .with_context(|| format!("connecting to the store at {url} timed out"))?
            .with_context(|| format!("connecting to the store at {url}"))?;
        Ok(Self::Redis(RedisRegisters {
            conn,
            prefix: prefix.to_owned(),
            read: Arc::new(redis::Script::new(&format!("{LUA_LT}{FENCED_READ}"))),
            write: Arc::new(redis::Script::new(&format!("{LUA_LT}{FENCED_WRITE}"))),
        }))
    }

    /// Read the fenced register of `key`, presenting `token`.
    pub async fn fenced_read(&self, key: &str, token: u64) -> StepResult {
        match self {
            Self::Redis(r) => {
                let mut invocation = r.read.key(r.fenced(key));
                invocation.arg(token.to_string());
                let answer = r.bounded(invocation.invoke_async::<(i64, String)>(&mut r.conn.clone())).await;
                match answer {
                    Ok((1, value)) => parse_value(&value),
                    Ok((_, max)) => rejected(&max),
                    Err(msg) => StepResult::Error { msg },
                }
            }
            Self::Memory(m) => m.with(key, |state| {
                if token < state.fenced_max {
                    return StepResult::Rejected { max: state.fenced_max };
                }
                state.fenced_max = token;
                StepResult::Value { v: state.fenced_value }
            }),
        }
    }

    /// Write `value` to the fenced register of `key`, presenting `token`; `id` names the write.
    pub async fn fenced_write(&self, key: &str, token: u64, value: i64, id: &str) -> StepResult {
        match self {
            Self::Redis(r) => {
                let mut invocation = r.write.key(r.fenced(key));
                invocation.key(r.fenced_log(key)).arg(token.to_string()).arg(value).arg(id);
                let answer = r.bounded(invocation.invoke_async::<(i64, String)>(&mut r.conn.clone())).await;
                match answer {
                    Ok((1, _)) => StepResult::Written,
                    Ok((_, max)) => rejected(&max),
                    Err(msg) => StepResult::Error { msg },
                }
            }
            Self::Memory(m) => m.with(key, |state| {
                if token < state.fenced_max {
                    return StepResult::Rejected { max: state.fenced_max };
                }
                state.fenced_max = token;
                state.fenced_value = value;
                state.fenced_log.push(Landed { id: id.to_owned(), v: value });
                StepResult::Written
            }),
        }
    }

    /// Read the unfenced counter of `key`.
    pub async fn counter_read(&self, key: &str) -> StepResult {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                let mut get = redis::cmd("GET");
                get.arg(r.counter(key));
                match r.bounded(get.query_async::<Option<i64>>(&mut conn)).await {
                    Ok(v) => StepResult::Value { v: v.unwrap_or(0) },
                    Err(msg) => StepResult::Error { msg },
                }
            }
            Self::Memory(m) => m.with(key, |state| StepResult::Value { v: state.counter_value }),
        }
    }

    /// Write `value` to the unfenced counter of `key` (no check at all); `id` names the write.
    pub async fn counter_write(&self, key: &str, value: i64, id: &str) -> StepResult {
        match self {
            Self::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .set(r.counter(key), value)
                    .ignore()
                    .rpush(r.counter_log(key), format!("{id}={value}"))
                    .ignore();
                match r.bounded(pipe.query_async::<()>(&mut r.conn.clone())).await {
                    Ok(()) => StepResult::Written,
                    Err(msg) => StepResult::Error { msg },
                }
            }
            Self::Memory(m) => m.with(key, |state| {
                state.counter_value = value;
                state.counter_log.push(Landed { id: id.to_owned(), v: value });
                StepResult::Written
            }),
        }
    }

    /// What the store holds for each of `keys`.
    pub async fn final_state(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, KeyStore>> {
        let mut out = BTreeMap::new();
        for key in keys {
            let state = match self {
                Self::Redis(r) => r.key_state(key).await?,
                Self::Memory(m) => m.with(key, |state| state.clone()),
            };
            out.insert(key.clone(), state);
        }
        Ok(out)
    }
}

fn parse_value(text: &str) -> StepResult {
    match text.parse() {
        Ok(v) => StepResult::Value { v },
        Err(_) => StepResult::Error { msg: format!("the fenced register holds `{text}`, not a number") },
    }
}

fn rejected(max: &str) -> StepResult {
    match max.parse() {
        Ok(max) => StepResult::Rejected { max },
        Err(_) => StepResult::Error { msg: format!("the fenced register's max token is `{max}`") },
    }
}

/// The store in Redis.
#[derive(Clone)]
pub struct RedisRegisters {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    read: Arc<redis::Script>,
    write: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegisters").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisRegisters {
    fn fenced(&self, key: &str) -> String {
        format!("{}fenced:{key}", self.prefix)
    }
    fn fenced_log(&self, key: &str) -> String {
        format!("{}fenced-log:{key}", self.prefix)
    }
    fn counter(&self, key: &str) -> String {
        format!("{}counter:{key}", self.prefix)
    }
    fn counter_log(&self, key: &str) -> String {
        format!("{}counter-log:{key}", self.prefix)
    }

    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(STORE_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(format!("store: {err}")),
            Err(_) => Err(format!("store: no answer within {STORE_TIMEOUT:?}")),
        }
    }

    async fn key_state(&self, key: &str) -> anyhow::Result<KeyStore> {
        let mut conn = self.conn.clone();
        let (value, max): (Option<i64>, Option<String>) = self
            .bounded(redis::cmd("HMGET").arg(self.fenced(key)).arg("value").arg("max").query_async(&mut conn))
            .await
            .map_err(anyhow::Error::msg)?;
        let fenced_log: Vec<String> = self
            .bounded(redis::cmd("LRANGE").arg(self.fenced_log(key)).arg(0).arg(-1).query_async(&mut conn))
            .await
            .map_err(anyhow::Error::msg)?;
        let counter: Option<i64> = self
            .bounded(redis::cmd("GET").arg(self.counter(key)).query_async(&mut conn))
            .await
            .map_err(anyhow::Error::msg)?;
        let counter_log: Vec<String> = self
            .bounded(redis::cmd("LRANGE").arg(self.counter_log(key)).arg(0).arg(-1).query_async(&mut conn))
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(KeyStore {
            fenced_value: value.unwrap_or(0),
            fenced_max: max.and_then(|m| m.parse().ok()).unwrap_or(0),
            fenced_log: parse_log(&fenced_log)?,
            counter_value: counter.unwrap_or(0),
            counter_log: parse_log(&counter_log)?,
        })
    }
}

fn parse_log(entries: &[String]) -> anyhow::Result<Vec<Landed>> {
    entries
        .iter()
        .map(|entry| {
            let (id, v) = entry.rsplit_once('=').with_context(|| format!("malformed log entry `{entry}`"))?;
            let v = v.parse().with_context(|| format!("malformed value in log entry `{entry}`"))?;
            Ok(Landed { id: id.to_owned(), v })
        })
        .collect()
}

/// The store in this process.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegisters {
    keys: Arc<Mutex<HashMap<String, KeyStore>>>,
}

impl MemoryRegisters {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut KeyStore) -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        f(keys.entry(key.to_owned()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fenced_register_refuses_a_lower_token_on_read_and_on_write() {
        let store = Registers::memory();
        assert_eq!(store.fenced_read("k", 5).await, StepResult::Value { v: 0 });
        assert_eq!(store.fenced_write("k", 5, 1, "0.1").await, StepResult::Written);
        // A stale holder (token 4) may neither read nor write any more.
        assert_eq!(store.fenced_read("k", 4).await, StepResult::Rejected { max: 5 });
        // A newer holder's read fences out the older one's pending write.
        assert_eq!(store.fenced_read("k", 7).await, StepResult::Value { v: 1 });
        assert_eq!(store.fenced_write("k", 6, 2, "0.2").await, StepResult::Rejected { max: 7 });
        assert_eq!(store.fenced_write("k", 7, 2, "0.3").await, StepResult::Written);
        let state = &store.final_state(&["k".to_owned()]).await.unwrap()["k"];
        assert_eq!((state.fenced_value, state.fenced_max), (2, 7));
        assert_eq!(state.fenced_log.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), ["0.1", "0.3"]);
    }

    #[test]
    fn log_entries_parse() {
        let log = parse_log(&["3.17=5".to_owned()]).unwrap();
        assert_eq!(log, vec![Landed { id: "3.17".into(), v: 5 }]);
        assert!(parse_log(&["nonsense".to_owned()]).is_err());
    }
}
