//! `dlock_tests`: what dlock's test binaries share — the backend conformance suite and the
//! harness it runs on.
//!
//! - [`conformance`]: the behaviour every [`LockBackend`](dlock::LockBackend) must show, run for
//!   a backend with one line, [`conformance_suite!`]`(store_ctor)`.
//! - [`support`]: one module per job — a [`Store`] (one test's lock store: independent
//!   clients of it, and a look inside), the stores of dlock's own backends ([`MemoryStore`],
//!   [`RedisStore`]), a fault-injecting backend wrapper ([`FaultyBackend`]), private
//!   `redis-server`s ([`RedisServer`]), private Redis topologies (a Redis Cluster,
//!   [`RedisCluster`]; a primary, its replica and three sentinels, [`SentinelGroup`]), the
//!   shared Redis, worker processes ([`Worker`]) and bounded polls ([`poll_until`]).
//!
//! A new backend gets the whole contract checked by a test binary of three lines (see
//! `tests/README.md`):
//!
//! ```ignore
//! async fn store(test: &str) -> MyStore { MyStore::new(test).await }
//! dlock_tests::conformance_suite!(store);
//! ```

pub mod conformance;
pub use support::shared_topology;

pub mod support {
    //! The harness, one job per module.

    pub mod black_hole;
    pub mod cluster;
    pub mod cluster_store;
    pub mod contention;
    pub mod faulty;
    pub mod memory_store;
    pub mod poll;
    pub mod process;
    pub mod redis;
    pub(crate) mod redis_process;
    pub mod redis_store;
    pub mod runtime;
    pub mod sentinel;
    pub mod sentinel_store;
    pub mod server;
    pub mod shared_topology;
    pub mod store;
    pub mod text;
    pub mod tls;
}

pub use support::black_hole::BlackHoleProxy;
pub use support::cluster::{ClusterNode, NodeRole, RedisCluster, SlotMigration};
pub use support::cluster_store::{RedisClusterStore, cluster_inspector};
pub use support::faulty::{Call, Fault, FaultyBackend, Op, Rule};
pub use support::memory_store::MemoryStore;
pub use support::poll::{MARGIN, poll_until};
pub use support::process::Worker;
pub use support::redis::{
    connect_redis, connect_redis_with, inspector, redis_cmd, replica_forgets, shared_redis_url,
    subscribers_on, unique_prefix,
};
pub use support::redis_store::{RedisStore, lock_value};
pub use support::sentinel::SentinelGroup;
pub use support::sentinel_store::{RedisSentinelStore, primary_url};
pub use support::server::{RedisServer, free_port};
pub use support::store::{Features, Store};
pub use support::text::chain;
