//! Fencing tokens: storage that rejects a writer whose lease has ended.
//!
//! ```text
//! cargo run --example fencing
//! ```
//!
//! A lock alone cannot stop a holder that was paused (a long GC or VM pause, a slow disk)
//! past its lease from writing afterwards: when it wakes, it does not know it lost the lock.
//! dlock gives every holder a fencing token that strictly increases across successive holders
//! of a key; storage that remembers the highest token it has seen, and refuses writes with a
//! smaller one, turns the stale write into a clean error (Kleppmann, "How to do distributed
//! locking").

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A record store that checks fencing tokens, as a database row with a `fence` column would
/// (`UPDATE … SET value = ?, fence = ? WHERE id = ? AND fence <= ?`).
#[derive(Default)]
struct FencedStore {
    /// (highest token seen, value)
    row: Mutex<(u64, String)>,
}

impl FencedStore {
    fn write(&self, token: u64, value: &str) -> Result<(), String> {
        let mut row = self.row.lock().unwrap_or_else(PoisonError::into_inner);
        if token < row.0 {
            return Err(format!("rejected: token {token} is older than {} already written", row.0));
        }
        *row = (token, value.to_owned());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = dlock::LockService::new(dlock::MemoryBackend::new());
    let store = Arc::new(FencedStore::default());
    let ttl = Duration::from_millis(200);

    // A takes the lock without renewal, then "pauses" past its lease.
    let a = service.lock("invoice:7").ttl(ttl).renew(false).await?;
    let token_a = a.fencing_token();
    println!("A holds invoice:7 with token {token_a}, then pauses for {:?}", ttl * 2);
    tokio::time::sleep(ttl * 2).await;

    // Meanwhile the lease ended; B gets the lock and writes.
    let b = service.lock("invoice:7").ttl(ttl).await?;
    let token_b = b.fencing_token();
    store.write(token_b, "paid by B")?;
    println!("B holds invoice:7 with token {token_b} and writes: ok");

    // A wakes up. dlock already knows A's lease is over...
    println!("A wakes: guard.is_lost() = {}", a.is_lost());
    // ...and if A writes anyway, the store refuses the stale token.
    match store.write(token_a, "paid by A") {
        Ok(()) => return Err("the stale write was accepted: fencing failed".into()),
        Err(why) => println!("A writes with token {token_a}: {why}"),
    }
    println!("A's release reports still-ours = {}", a.release().await?);
    b.release().await?;
    let row = store.row.lock().unwrap_or_else(PoisonError::into_inner).clone();
    println!("stored: {:?} (token {})", row.1, row.0);
    Ok(())
}
