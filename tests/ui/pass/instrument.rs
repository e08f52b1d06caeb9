//! Stacked with `#[tracing::instrument]`, in either order.
#![deny(warnings)]

use dlock::distributed_lock;
use tracing::instrument;

#[instrument]
#[distributed_lock(key = "user:<user_id>", ttl = "10s")]
pub async fn instrument_outside(user_id: u64) -> Result<u64, dlock::Error> {
    tracing::info!("paying");
    Ok(user_id)
}

#[distributed_lock(key = "user:<user_id>", ttl = "10s")]
#[instrument(err)]
pub async fn instrument_inside(user_id: u64) -> Result<u64, dlock::Error> {
    tracing::info!("paying");
    Ok(user_id)
}

// Parameters the attribute renames to move them into the body (`_`, `(a, _)`), on either side.
#[instrument]
#[distributed_lock(key = "pair:<a>")]
pub async fn patterns_outside(_: u8, (a, _): (u64, u64)) -> Result<u64, dlock::Error> {
    Ok(a)
}

#[distributed_lock(key = "pair:<a>")]
#[instrument]
pub async fn patterns_inside(_: u8, (a, _): (u64, u64)) -> Result<u64, dlock::Error> {
    Ok(a)
}

pub struct Service {
    pub id: u64,
}

impl Service {
    #[instrument(skip(self), fields(service = self.id))]
    #[distributed_lock(key = "service:<self.id>:<user_id>")]
    pub async fn method(&self, user_id: u64) -> Result<u64, dlock::Error> {
        Ok(self.id + user_id)
    }

    #[distributed_lock(key = "service:<self.id>:<user_id>")]
    #[instrument(skip_all)]
    pub async fn method_inside(&mut self, user_id: u64) -> Result<u64, dlock::Error> {
        self.id += 1;
        Ok(self.id + user_id)
    }
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    assert_send(instrument_outside(1));
    assert_send(instrument_inside(1));
    assert_send(patterns_outside(1, (2, 3)));
    assert_send(patterns_inside(1, (2, 3)));
}
