use dlock::distributed_lock;

#[distributed_lock(key = "")]
async fn empty_key(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id")]
async fn unterminated(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<>")]
async fn empty_placeholder(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user-id>")]
async fn invalid_placeholder(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

const KEY: &str = "user";

#[distributed_lock(key = KEY)]
async fn not_a_literal(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", key = "user:<user_id>")]
async fn same_key_twice(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
