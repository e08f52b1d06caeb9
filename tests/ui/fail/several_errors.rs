use dlock::distributed_lock;

// Every mistake in one attribute is reported at once, and the function itself still exists
// (the call in `main` compiles), so one typo does not bury the rest of the crate in errors.
#[distributed_lock(key = "user:<usr_id>", tll = "10s", wait = "soon", renew = 1)]
async fn pay(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

fn main() {
    let _future = pay(42);
}
