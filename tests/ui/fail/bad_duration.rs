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

#[distributed_lock(key = "user:<user_id>", ttl = 10)]
async fn no_unit(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

// Units that other libraries accept, each with the hint for the unit meant.
#[distributed_lock(key = "user:<user_id>", ttl = "5M")]
async fn months(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "2y")]
async fn years(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", wait = "10 seconds")]
async fn word(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "1m 30s")]
async fn spaces(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", wait = "500us")]
async fn microseconds(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "1.5s")]
async fn fraction(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "30s1m")]
async fn out_of_order(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
