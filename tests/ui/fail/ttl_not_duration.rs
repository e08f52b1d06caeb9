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

// A binding of a pattern that leaves part of the argument unbound is a reference here.
#[distributed_lock(key = "user:<user_id>", wait = lock_wait)]
async fn from_pattern(user_id: u64, (lock_wait, _): (std::time::Duration, u8)) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
