use dlock::distributed_lock;

const TTL_SECS: u64 = 10;

#[distributed_lock(key = "user:<user_id>", ttl = TTL_SECS)]
async fn integer_const(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", wait = std::time::Instant::now())]
async fn instant(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
