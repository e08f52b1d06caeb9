use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>", tll = "10s")]
async fn typo(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", timeout = "10s")]
async fn synonym(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", retries = 3, color = "blue")]
async fn unrelated(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
