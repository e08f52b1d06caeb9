//! Fenced writes in the same transaction: with the locks in the application's own PostgreSQL,
//! a write can check that its lock is still held — with its fencing token — in the very
//! transaction that writes, and commits only if it is.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example postgres_fencing
//! ```
//!
//! A holder that is paused past its lease (a long GC or VM pause, a slow disk) does not know it
//! lost the lock when it wakes. Here it wakes and tries to debit an account after the next
//! holder has already done so: `check_fence` (the SQL function `dlock_check`) finds the lock
//! held with a newer token, the transaction fails, and nothing of it is written. The check
//! also locks the lease row until the transaction ends, so once it has passed, no other holder
//! can start before the write has committed or rolled back.
//!
//! The example works in a schema of its own, `dlock_example`, and drops it at the end.

use std::time::Duration;

use dlock::tokio_postgres::{self, NoTls};
use dlock::{LockService, PostgresBackend};

const SCHEMA: &str = "dlock_example";

/// Debit `amount` from account 7 in one transaction that is fenced by the lock `key`.
async fn debit(
    app: &mut tokio_postgres::Client,
    backend: &PostgresBackend,
    key: &str,
    token: u64,
    amount: i64,
) -> Result<i64, tokio_postgres::Error> {
    let txn = app.transaction().await?;
    // First statement of the transaction: the lock must be held with this token, and stays so
    // until the commit.
    backend.check_fence(&txn, key, token).await?;
    let row = txn
        .query_one(
            &format!("UPDATE {SCHEMA}.accounts SET balance = balance - $1 WHERE id = 7 RETURNING balance"),
            &[&amount],
        )
        .await?;
    txn.commit().await?;
    Ok(row.get(0))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let backend = PostgresBackend::builder(url.as_str()).schema(SCHEMA).connect().await?;
    let service = LockService::builder(backend.clone()).key_prefix("bank:").build();
    let (mut app, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(connection);
    app.batch_execute(&format!(
        "DROP TABLE IF EXISTS {SCHEMA}.accounts; \
         CREATE TABLE {SCHEMA}.accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO {SCHEMA}.accounts VALUES (7, 100);"
    ))
    .await?;
    println!("Account 7 holds 100. Two holders of the lock `bank:account:7` debit 30 each.\n");
    // A: takes the lock with a short lease, then stalls past it before writing.
    let a = service.lock("account:7").ttl(Duration::from_millis(300)).renew(false).await?;
    let a_token = a.fencing_token();
    // The key as stored (the service's prefix, then the key the lock is taken with).
    let full_key = a.full_key().to_owned();
    println!("A holds the lock with fencing token {a_token}, then stalls past its 300 ms lease…");
    let reason = a.lost().await;
    println!("  (A's lease ended: {reason})");

    // B: gets the lock once A's lease has ended, and debits.
    let b = service.lock("account:7").ttl(Duration::from_secs(10)).await?;
    let balance = debit(&mut app, &backend, &full_key, b.fencing_token(), 30).await?;
    println!("B holds the lock with fencing token {} and debits 30: balance {balance}.", b.fencing_token());

    // A wakes up and writes as if it still held the lock.
    match debit(&mut app, &backend, &full_key, a_token, 30).await {
        Ok(balance) => {
            return Err(format!("A's stale debit went through (balance {balance}): that is a bug").into());
        }
        Err(err) if PostgresBackend::is_not_held(&err) => {
            let (message, detail) = err
                .as_db_error()
                .map_or((String::new(), ""), |db| (db.message().to_owned(), db.detail().unwrap_or_default()));
            println!(
                "A wakes and debits 30 with token {a_token}: refused ({message}: {detail}); nothing was written."
            );
        }
        Err(err) => return Err(err.into()),
    }
    b.release().await?;
    drop(a);

    let balance: i64 =
        app.query_one(&format!("SELECT balance FROM {SCHEMA}.accounts WHERE id = 7"), &[]).await?.get(0);
    println!("\nBalance: {balance} (one debit of 30, as the lock promised).");
    app.batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE")).await?;
    if balance == 70 { Ok(()) } else { Err("the balance is wrong".into()) }
}
