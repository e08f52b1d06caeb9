use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>")]
fn pay(user_id: u64) -> Result<(), dlock::Error> {
    let _ = user_id;
    Ok(())
}

#[distributed_lock(key = "config")]
struct Config;

trait Payments {
    #[distributed_lock(key = "user:<user_id>")]
    async fn pay(&self, user_id: u64) -> Result<(), dlock::Error>;
}

fn main() {}
