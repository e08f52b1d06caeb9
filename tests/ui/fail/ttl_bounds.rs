// A `ttl` literal outside `dlock::MIN_TTL..=dlock::MAX_TTL` fails to compile, with the error on
// the literal; the bounds are dlock's own constants. `wait` has no such bounds.
use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>", ttl = "5ms")]
async fn too_short(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "400d", wait = "1000d")]
async fn too_long(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

pub struct Account {
    pub id: u64,
}

impl Account {
    #[distributed_lock(key = "account:<self.id>", ttl = "366d")]
    pub async fn in_a_method<T: Send>(&self, value: T) -> Result<T, dlock::Error> {
        Ok(value)
    }
}

pub extern crate dlock as dlock1;

#[dlock1::distributed_lock(key = "user:<user_id>", ttl = "1ms", crate = dlock1)]
async fn renamed_crate(user_id: u64) -> Result<u64, dlock1::Error> {
    Ok(user_id)
}

// Reported together with the attribute's other mistakes.
#[distributed_lock(key = "user:<usr_id>", ttl = "9ms")]
async fn with_other_errors(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
