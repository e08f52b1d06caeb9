use dlock::distributed_lock;

#[derive(Debug)]
pub struct PayError;

#[distributed_lock(key = "user:<user_id>")]
async fn pay(user_id: u64) -> Result<u64, PayError> {
    Ok(user_id)
}

// Converts from other errors, but not from `dlock::Error`.
#[derive(Debug)]
pub struct AppError;

impl From<std::io::Error> for AppError {
    fn from(_: std::io::Error) -> Self {
        AppError
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[distributed_lock(key = "user:<user_id>")]
async fn through_alias(user_id: u64) -> AppResult<u64> {
    Ok(user_id)
}

// A generic error type without the bound: the hint is the bound to add.
#[distributed_lock(key = "user:<user_id>")]
async fn generic<E>(user_id: u64) -> Result<u64, E> {
    Ok(user_id)
}

// An `impl Trait` in the return type.
#[distributed_lock(key = "user:<user_id>")]
async fn opaque(user_id: u64) -> Result<impl std::fmt::Display, PayError> {
    Ok(user_id)
}

fn main() {}
