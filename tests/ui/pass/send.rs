//! The generated future is `Send` whenever the body is, so annotated functions work with
//! `tokio::spawn`.
#![deny(warnings)]

use std::sync::Arc;

use dlock::distributed_lock;

fn assert_send<T: Send>(_: T) {}

pub struct Store {
    pub id: u64,
    pub data: tokio::sync::Mutex<Vec<u64>>,
}

#[distributed_lock(key = "user:<user_id>", ttl = "10s")]
pub async fn free(user_id: u64, name: String) -> Result<usize, dlock::Error> {
    tokio::task::yield_now().await;
    Ok(name.len() + user_id as usize)
}

impl Store {
    #[distributed_lock(key = "store:<self.id>:<value>")]
    pub async fn push(&self, value: u64) -> Result<usize, dlock::Error> {
        let mut data = self.data.lock().await;
        data.push(value);
        tokio::task::yield_now().await;
        Ok(data.len())
    }

    #[distributed_lock(key = "store:<self.id>")]
    pub async fn owned(self: Arc<Self>) -> Result<u64, dlock::Error> {
        tokio::task::yield_now().await;
        Ok(self.id)
    }
}

/// `Send` but not `Sync`: a shared borrow of it is not `Send`.
pub struct Counter(std::cell::Cell<u32>);

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.get())
    }
}

// A binding of a pattern that leaves part of the argument unbound (so the key sees it through
// a borrow), of a type that is `Send` but not `Sync`: the borrow ends before the first
// `.await`.
#[distributed_lock(key = "counter:<counter>")]
pub async fn pattern_key((counter, _): (Counter, std::cell::RefCell<u8>)) -> Result<u32, dlock::Error> {
    tokio::task::yield_now().await;
    Ok(counter.0.get())
}

fn main() {
    assert_send(free(1, String::new()));
    let store = Arc::new(Store { id: 1, data: tokio::sync::Mutex::new(Vec::new()) });
    assert_send(store.push(1));
    assert_send(store.clone().owned());
    assert_send(pattern_key((Counter(std::cell::Cell::new(1)), std::cell::RefCell::new(0))));

    let runtime = tokio::runtime::Builder::new_current_thread().build();
    if let Ok(runtime) = runtime {
        runtime.block_on(async move {
            let _ = tokio::spawn(async move { store.push(2).await }).await;
        });
    }
}
