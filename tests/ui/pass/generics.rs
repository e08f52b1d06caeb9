//! Generic functions, where clauses, `impl Trait` arguments, lifetimes, and an `impl Trait`
//! in the return type.
#![deny(warnings)]

use std::fmt::{Debug, Display};

use dlock::distributed_lock;

#[distributed_lock(key = "item:<id>")]
pub async fn generic<T: Display + Send>(id: T) -> Result<String, dlock::Error> {
    Ok(id.to_string())
}

#[distributed_lock(key = "item:<id>:<extra>")]
pub async fn where_clause<T, U>(id: T, extra: U) -> Result<(T, U), dlock::Error>
where
    T: Display + Send,
    U: Display + Debug + Send,
{
    Ok((id, extra))
}

#[distributed_lock(key = "item:<id>")]
pub async fn impl_trait_arg(
    id: impl Display + Send,
    values: impl IntoIterator<Item = u8>,
) -> Result<u32, dlock::Error> {
    let _ = id;
    Ok(values.into_iter().map(u32::from).sum())
}

#[distributed_lock(key = "name:<name>")]
pub async fn borrowed<'a>(name: &'a str, rest: &'a [u8]) -> Result<&'a str, dlock::Error> {
    let _ = rest;
    Ok(name)
}

#[distributed_lock(key = "name:<name>")]
pub async fn elided(name: &str) -> Result<&str, dlock::Error> {
    Ok(name)
}

#[distributed_lock(key = "array:<id>")]
pub async fn const_generic<const N: usize>(id: u64) -> Result<[u64; N], dlock::Error> {
    Ok([id; N])
}

#[distributed_lock(key = "item:<id>")]
pub async fn returns_impl_trait(id: u64) -> Result<impl Display, dlock::Error> {
    Ok(id)
}

pub struct Repo<T>(pub T);

impl<T: Display + Sync> Repo<T> {
    #[distributed_lock(key = "repo:<self.0>:<key>")]
    pub async fn get<K>(&self, key: K) -> Result<String, dlock::Error>
    where
        K: Display + Send,
    {
        Ok(format!("{}/{}", self.0, key))
    }
}

fn main() {}
