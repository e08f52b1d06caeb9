use dlock::distributed_lock;

#[distributed_lock(key = "user:<usr_id>")]
async fn typo(user_id: u64, amount: u64) -> Result<u64, dlock::Error> {
    Ok(user_id + amount)
}

#[distributed_lock(key = "order:<order>")]
async fn unrelated(user_id: u64, amount: u64) -> Result<u64, dlock::Error> {
    Ok(user_id + amount)
}

#[distributed_lock(key = "job:<id>")]
async fn no_parameters() -> Result<(), dlock::Error> {
    Ok(())
}

#[distributed_lock(key = "user:<self.id>")]
async fn self_without_receiver(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {}
