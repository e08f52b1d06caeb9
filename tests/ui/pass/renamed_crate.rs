//! `crate = …` for a renamed or re-exported dlock.
#![deny(warnings)]

pub extern crate dlock as dlock1;

mod deps {
    pub use dlock1 as locks;
}

#[dlock1::distributed_lock(key = "user:<user_id>", crate = dlock1)]
pub async fn path_form(user_id: u64) -> Result<u64, dlock1::Error> {
    Ok(user_id)
}

#[dlock1::distributed_lock(key = "user:<user_id>", crate = "dlock1", ttl = "1s")]
pub async fn string_form(user_id: u64) -> Result<u64, dlock1::Error> {
    Ok(user_id)
}

#[dlock1::distributed_lock(key = "user:<user_id>", crate = ::dlock1)]
pub async fn absolute(user_id: u64) -> Result<u64, dlock1::Error> {
    Ok(user_id)
}

#[deps::locks::distributed_lock(key = "user:<user_id>", crate = crate::deps::locks, ttl = std::time::Duration::from_secs(1))]
pub async fn reexported(user_id: u64) -> Result<u64, dlock1::Error> {
    Ok(user_id)
}

fn main() {}
