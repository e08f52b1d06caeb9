use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>", renew = "yes")]
async fn renew_string(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", service = "")]
async fn empty_service(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", crate = 42)]
async fn bad_crate(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>" ttl = "1s")]
async fn missing_comma(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
