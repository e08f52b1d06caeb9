use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>", ttl = "10s", ttl = "20s")]
async fn ttl_twice(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", renew = true, wait = "1s", renew = false)]
async fn renew_twice(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
