//! The expansion draws no warning on user code, from rustc or from clippy's default lints
//! (this file is also the example `ui_pass_no_warnings`, which CI checks with
//! `cargo clippy --all-targets -- -D warnings`): bodies of every shape, parameters the body
//! does not use, parameters only the attribute uses, patterns.
#![deny(warnings)]

use std::fmt::Display;
use std::sync::Arc;

use dlock::distributed_lock;

#[derive(Debug)]
pub struct AppError;

impl From<dlock::Error> for AppError {
    fn from(_: dlock::Error) -> Self {
        AppError
    }
}

// A one-line body: the braces around it are the user's, and were once taken for unnecessary.
#[rustfmt::skip]
#[distributed_lock(key = "touch:<id>")]
pub async fn touch(id: u64) -> Result<u64, AppError> { Ok(id) }

#[rustfmt::skip]
#[distributed_lock(key = "unit:<id>")]
pub async fn unit_ok(id: u64) -> Result<(), AppError> { let _ = id; Ok(()) }

// A parameter used only in the key, and one used only in `ttl`.
#[distributed_lock(key = "refresh:<user_id>", ttl = lease)]
pub async fn key_only(user_id: u64, lease: std::time::Duration) -> Result<(), AppError> {
    Ok(())
}

#[distributed_lock(key = "early:<id>")]
pub async fn early_return(id: u64) -> Result<u64, AppError> {
    if id == 0 {
        return Ok(0);
    }
    Ok(id * 2)
}

fn parse(text: &str) -> Result<u64, AppError> {
    text.parse().map_err(|_| AppError)
}

#[distributed_lock(key = "parse:<text>")]
pub async fn question_mark(text: &str) -> Result<u64, AppError> {
    let value = parse(text)?;
    Ok(value + 1)
}

#[distributed_lock(key = "mut:<id>")]
pub async fn mut_params(mut id: u64, mut names: Vec<String>) -> Result<usize, AppError> {
    id += 1;
    names.push(id.to_string());
    Ok(names.len())
}

#[distributed_lock(key = "ignored:<id>")]
pub async fn ignored_params(id: u64, _: String, _unused: Vec<u8>) -> Result<u64, AppError> {
    Ok(id)
}

#[distributed_lock(key = "impl:<id>")]
pub async fn impl_trait_inside(id: u64) -> Result<impl Display, AppError> {
    Ok(id)
}

#[distributed_lock(key = "generic:<id>")]
pub async fn generic_bounds<T, U>(id: T, values: U) -> Result<usize, AppError>
where
    T: Display + Send + Sync,
    U: IntoIterator<Item = u8> + Send,
{
    Ok(values.into_iter().count() + id.to_string().len())
}

pub struct Pair(pub String, pub String);

pub struct Config {
    pub id: u64,
    pub name: String,
}

// Patterns that bind the whole argument, and patterns that leave parts unbound.
#[distributed_lock(key = "pat:<a>:<id>")]
pub async fn patterns(
    (a, _): (u64, String),
    Pair(left, right): Pair,
    Config { id, .. }: Config,
    ref name: String,
    (mut count, _ignored): (u32, u8),
) -> Result<String, AppError> {
    count += 1;
    Ok(format!("{a}{left}{right}{id}{name}{count}"))
}

pub struct Account {
    pub id: u64,
}

impl Account {
    // `self` by value, used only in the key.
    #[rustfmt::skip]
    #[distributed_lock(key = "account:<self.id>")]
    pub async fn close(self) -> Result<(), AppError> { Ok(()) }

    #[distributed_lock(key = "account:<self.id>")]
    pub async fn shared(self: Arc<Self>, amount: u64) -> Result<u64, AppError> {
        Ok(self.id + amount)
    }

    #[distributed_lock(key = "account:<self.id>")]
    pub async fn rename(mut self, id: u64) -> Result<Self, AppError> {
        self.id = id;
        Ok(self)
    }
}

fn main() {
    let _ = (touch, unit_ok, key_only, early_return, question_mark, mut_params, ignored_params);
    let _ = (impl_trait_inside, generic_bounds::<u8, Vec<u8>>, patterns);
    let _ = (Account::close, Account::shared, Account::rename);
}
