//! Methods: `&self`, `&mut self`, `self`, `self: Arc<Self>`, keys from `self`, trait impls
//! with native `async fn`, and a trait whose future must be `Send`.
#![deny(warnings)]

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use dlock::distributed_lock;

pub struct Account {
    pub id: u64,
    pub owner: Owner,
    pub balance: u64,
}

pub struct Owner {
    pub name: String,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account-{}", self.id)
    }
}

impl Account {
    #[distributed_lock(key = "account:<self.id>")]
    pub async fn balance(&self) -> Result<u64, dlock::Error> {
        Ok(self.balance)
    }

    #[distributed_lock(key = "account:<self.id>", key = "owner:<self.owner.name>")]
    pub async fn deposit(&mut self, amount: u64) -> Result<u64, dlock::Error> {
        self.balance += amount;
        Ok(self.balance)
    }

    #[distributed_lock(key = "<self>")]
    pub async fn close(self) -> Result<u64, dlock::Error> {
        Ok(self.balance)
    }

    #[distributed_lock(key = "<self>:<other>")]
    pub async fn shared(self: Arc<Self>, other: u64) -> Result<u64, dlock::Error> {
        Ok(self.balance + other)
    }

    #[distributed_lock(key = "account:<self.id>")]
    pub async fn mutable_binding(mut self) -> Result<Self, dlock::Error> {
        self.balance = 0;
        Ok(self)
    }

    // `Self` in the return type.
    #[distributed_lock(key = "account:<id>")]
    pub async fn open(id: u64) -> Result<Self, dlock::Error> {
        Ok(Account { id, owner: Owner { name: String::new() }, balance: 0 })
    }
}

#[allow(async_fn_in_trait)]
pub trait Ledger {
    async fn post(&self, entry: u64) -> Result<(), dlock::Error>;
}

impl Ledger for Account {
    #[distributed_lock(key = "ledger:<self.id>:<entry>")]
    async fn post(&self, entry: u64) -> Result<(), dlock::Error> {
        let _ = entry;
        Ok(())
    }
}

// A trait that requires a `Send` future: the generated future must be `Send` too.
pub trait Payments: Sync {
    fn pay(&self, user_id: u64) -> impl Future<Output = Result<u64, dlock::Error>> + Send;
}

pub struct Service;

impl Payments for Service {
    #[distributed_lock(key = "user:<user_id>")]
    async fn pay(&self, user_id: u64) -> Result<u64, dlock::Error> {
        Ok(user_id)
    }
}

// A default method in a trait.
#[allow(async_fn_in_trait)]
pub trait Audit {
    fn id(&self) -> u64;

    #[distributed_lock(key = "audit:<entry>")]
    async fn audit(&self, entry: u64) -> Result<u64, dlock::Error> {
        Ok(self.id() + entry)
    }
}

fn main() {}
