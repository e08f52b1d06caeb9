use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>", ttl = "10 parsecs")]
async fn unknown_unit(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", wait = "ten seconds")]
async fn words(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "0s")]
async fn zero_ttl(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "5ms")]
async fn too_short(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = 10)]
async fn no_unit(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
