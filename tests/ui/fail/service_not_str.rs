use dlock::distributed_lock;

const SERVICE_ID: u32 = 7;

#[distributed_lock(key = "user:<user_id>", service = SERVICE_ID)]
async fn integer_const(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", service = name)]
async fn owned_name(user_id: u64, name: String) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
