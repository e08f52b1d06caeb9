//! User names never clash with generated ones: the expansion uses absolute paths and
//! hygienic locals, so shadowing `format`, `Result`, `run`, `Duration`, … changes nothing.
#![deny(warnings)]
#![allow(dead_code, unused_macros, non_camel_case_types)]

use dlock::distributed_lock;

mod __private {}
mod dlock_shadow {
    pub mod __private {}
}

struct LockRequest;
struct Option;
fn request() {}
struct Duration;
struct String;
struct Vec;
trait From {}
fn run() {}
fn key_part() {}
fn check_result() {}
fn duration() {}

macro_rules! format {
    ($($t:tt)*) => {
        compile_error!("the user's own `format!` was called")
    };
}

macro_rules! vec {
    ($($t:tt)*) => {
        compile_error!("the user's own `vec!` was called")
    };
}

#[derive(Debug)]
pub struct MyError;

impl std::convert::From<dlock::Error> for MyError {
    fn from(_: dlock::Error) -> Self {
        MyError
    }
}

type Result<T> = std::result::Result<T, MyError>;

#[distributed_lock(key = "user:<user_id>", ttl = "10s", wait = "1s", renew = false)]
async fn shadowed(user_id: u64) -> Result<u64> {
    Ok(user_id)
}

// Parameters named like the generated locals.
#[distributed_lock(key = "<__dlock_request>:<__dlock_body>:<__dlock_value>")]
async fn generated_names(
    __dlock_request: u64,
    __dlock_body: u64,
    __dlock_value: u64,
    __dlock_fake: u64,
    __dlock_result: u64,
) -> Result<u64> {
    Ok(__dlock_request + __dlock_body + __dlock_value + __dlock_fake + __dlock_result)
}

// A body that defines items and locals with those names.
#[distributed_lock(key = "k:<id>")]
async fn body_names(id: u64) -> Result<u64> {
    let __dlock_request = id;
    fn run(x: u64) -> u64 {
        x
    }
    Ok(run(__dlock_request))
}

fn main() {}
