//! Any `Result<T, E>` with `E: From<dlock::Error>`, however it is spelled.
#![deny(warnings)]

use dlock::distributed_lock;

#[distributed_lock(key = "a:<id>")]
pub async fn dlock_error(id: u64) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "a:<id>")]
pub async fn anyhow_result(id: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(id > 0, "id must be positive");
    Ok(id)
}

#[distributed_lock(key = "a:<id>")]
pub async fn io_result(id: u64) -> std::io::Result<u64> {
    Ok(id)
}

#[distributed_lock(key = "a:<id>")]
pub async fn boxed_error(id: u64) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let parsed: u64 = "7".parse()?;
    Ok(id + parsed)
}

#[derive(Debug)]
pub enum AppError {
    Lock(dlock::Error),
    Io(std::io::Error),
}

impl From<dlock::Error> for AppError {
    fn from(error: dlock::Error) -> Self {
        AppError::Lock(error)
    }
}

impl From<std::io::Error> for AppError {
    fn from(error: std::io::Error) -> Self {
        AppError::Io(error)
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[distributed_lock(key = "a:<id>")]
pub async fn alias(id: u64) -> AppResult<u64> {
    let _ = std::fs::metadata("/")?;
    Ok(id)
}

pub mod nested {
    pub type Result<T, E = super::AppError> = std::result::Result<T, E>;
}

#[distributed_lock(key = "a:<id>")]
pub async fn alias_with_default(id: u64) -> nested::Result<()> {
    let _ = id;
    Ok(())
}

#[distributed_lock(key = "a:<id>")]
pub async fn unit_ok(id: u64) -> Result<(), AppError> {
    let _ = id;
    Ok(())
}

fn main() {}
