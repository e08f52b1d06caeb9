use dlock::distributed_lock;

#[distributed_lock(key = "user:<user_id>")]
async fn returns_u64(user_id: u64) -> u64 {
    user_id
}

#[distributed_lock(key = "user:<user_id>")]
async fn returns_nothing(user_id: u64) {
    let _ = user_id;
}

#[distributed_lock(key = "user:<user_id>")]
async fn returns_option(user_id: u64) -> Option<u64> {
    Some(user_id)
}

#[distributed_lock(key = "user:<user_id>")]
async fn returns_tuple(user_id: u64) -> (u64, u64) {
    (user_id, user_id)
}

#[distributed_lock(key = "user:<user_id>")]
async fn returns_impl_trait(user_id: u64) -> impl std::fmt::Display {
    user_id
}

fn main() {}
