use dlock::distributed_lock;

#[distributed_lock]
async fn no_options(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(ttl = "10s")]
async fn only_ttl(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock("user:<user_id>")]
async fn unnamed_key(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
