//! Free functions: every option, several keys, hash tags, every form of `ttl` and `wait`,
//! and `?` / `return` in the body.
#![deny(warnings)]

use std::time::Duration;

use dlock::distributed_lock;

#[derive(Debug)]
pub enum PayError {
    Lock(dlock::Error),
    Declined,
}

impl From<dlock::Error> for PayError {
    fn from(error: dlock::Error) -> Self {
        PayError::Lock(error)
    }
}

pub struct Cents(pub u64);

#[distributed_lock(key = "user:<user_id>")]
pub async fn minimal(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

/// Docs and other attributes stay on the function.
#[distributed_lock(key = "user:<user_id>", ttl = "10s", wait = "500ms", service = "payments", renew = true)]
#[inline]
pub async fn every_option(user_id: u64, amount: Cents) -> Result<u64, PayError> {
    if amount.0 == 0 {
        return Err(PayError::Declined);
    }
    let checked = check(amount.0)?;
    Ok(user_id + checked)
}

fn check(amount: u64) -> Result<u64, PayError> {
    Ok(amount)
}

#[distributed_lock(key = "user:<from>", key = "user:<to>", ttl = "1m30s", wait = "0s")]
pub async fn several_keys(from: u64, to: u64, amount: u64) -> Result<(), dlock::Error> {
    let _ = (from, to, amount);
    Ok(())
}

// Redis Cluster hash tags: `{` and `}` are plain text in a key.
#[distributed_lock(key = "{user:<user_id>}:cart", key = "{user:<user_id>}:orders")]
pub async fn hash_tags(user_id: u64) -> Result<(), dlock::Error> {
    let _ = user_id;
    Ok(())
}

// Braces around a word that is no binding are text too: `{user}` here, not the value.
#[distributed_lock(key = "{user}:<user_id>", key = "{}:{ user_id }")]
pub async fn literal_braces(user_id: u64) -> Result<(), dlock::Error> {
    let _ = user_id;
    Ok(())
}

// A key without placeholders is one fixed lock; `<>`s may sit next to each other.
#[distributed_lock(key = "cron:daily-report", renew = false, ttl = "1h")]
pub async fn fixed_key() -> Result<(), dlock::Error> {
    Ok(())
}

#[distributed_lock(key = "<tenant>:<user_id>-<tenant>>")]
pub async fn adjacent(tenant: &str, user_id: u64) -> Result<(), dlock::Error> {
    let _ = (tenant, user_id);
    Ok(())
}

const TTL: Duration = Duration::from_secs(5);
const PAYMENTS: &str = "payments";

#[distributed_lock(key = "k", ttl = Duration::from_millis(250), wait = TTL, service = PAYMENTS)]
pub async fn duration_expressions() -> Result<(), dlock::Error> {
    Ok(())
}

// `ttl` and `wait` may use the arguments: they are evaluated before the body runs.
#[distributed_lock(key = "job:<id>", ttl = lease, wait = lease / 2)]
pub async fn duration_from_argument(id: u32, lease: Duration) -> Result<Duration, dlock::Error> {
    let _ = id;
    Ok(lease)
}

// `ttl` given as a `macro_rules!` fragment.
macro_rules! locked {
    ($name:ident, $key:literal, $ttl:expr) => {
        #[distributed_lock(key = $key, ttl = $ttl)]
        pub async fn $name(id: u64) -> Result<u64, dlock::Error> {
            Ok(id)
        }
    };
}

locked!(from_macro, "macro:<id>", "2s");

// `return` with `?` inside nested closures and blocks keeps its meaning.
#[distributed_lock(key = "user:<user_id>")]
pub async fn control_flow(user_id: u64, amounts: Vec<u64>) -> Result<u64, PayError> {
    let total: u64 = amounts.iter().map(|a| a * 2).sum();
    for amount in &amounts {
        if *amount > 100 {
            return Err(PayError::Declined);
        }
    }
    let nested = async { Ok::<_, PayError>(1) }.await?;
    Ok(user_id + total + nested)
}

fn main() {}
