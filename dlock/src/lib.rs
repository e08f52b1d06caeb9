//! Declarative distributed locks for async Rust.
//!
//! Annotate a handler once; the lock key is built from its own arguments and checked at
//! compile time; the lock service is registered once at start-up.
//!
//! ```
//! use dlock::distributed_lock;
//!
//! #[derive(Debug)]
//! enum PayError { Busy(dlock::Error) }
//! impl From<dlock::Error> for PayError {
//!     fn from(err: dlock::Error) -> Self { PayError::Busy(err) }
//! }
//!
//! #[distributed_lock(key = "user:<user_id>", ttl = "10s")]
//! async fn pay(user_id: u64, cents: u64) -> Result<u64, PayError> {
//!     // Runs only while this process holds "user:<user_id>"; the lease is renewed meanwhile.
//!     let token = dlock::fencing_token().expect("held");
//!     Ok(token)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Redis for many processes: dlock::RedisBackend::connect("redis://127.0.0.1:6379").await?
//! dlock::set_global(dlock::LockService::new(dlock::MemoryBackend::new()))?;
//! let first = pay(42, 500).await.map_err(|e| format!("{e:?}"))?;
//! let second = pay(42, 500).await.map_err(|e| format!("{e:?}"))?;
//! assert!(second > first, "fencing tokens increase across holders");
//! # Ok(())
//! # }
//! ```
//!
//! The parts:
//!
//! - [`distributed_lock`]: the attribute (feature `macros`, on by default).
//! - [`LockService`]: a [`LockBackend`] plus defaults; register one with [`set_global`] or
//!   [`register`].
//! - Backends: [`MemoryBackend`] (in-process), [`RedisBackend`] (feature `redis`, on by
//!   default; `rediss://` with feature `tls`, a private authority through
//!   `tls_root_certificates` on the builder), `RedisClusterBackend` (feature
//!   `redis-cluster`), `RedisSentinelBackend` (feature `redis-sentinel`) and `PostgresBackend`
//!   (feature `postgres`); [`connect()`] picks one from a URL.
//! - The manual API: [`lock`] / [`LockService::lock`] / [`LockService::lock_all`] →
//!   [`LockRequest`] → [`LockGuard`].
//! - [`fencing_token`] / [`fencing_token_for`]: the fencing token of the lock the current task
//!   holds (the innermost), or of one key it holds.
//! - [`Error`]: everything that can go wrong, each message naming the remedy and the key
//!   concerned, if any.
//! - [`backend`]: for authors of a new backend — the [`LockBackend`] contract and the types
//!   its methods use.
//!
//! dlock runs on tokio: lock requests must be awaited inside a tokio runtime (the lease keeper
//! and background releases are tokio tasks).
//!
//! # Testing code that uses dlock
//!
//! One global service set up once serves every `#[tokio::test]`, each on its own runtime,
//! also after the runtime that set it up has ended. Set it up once (here in-process; a shared
//! Redis works the same):
//!
//! ```
//! use tokio::sync::OnceCell;
//!
//! #[dlock::distributed_lock(key = "user:<id>")]
//! async fn touch(id: u64) -> Result<u64, dlock::Error> {
//!     Ok(id)
//! }
//!
//! async fn setup() {
//!     static GLOBAL: OnceCell<()> = OnceCell::const_new();
//!     GLOBAL
//!         .get_or_init(|| async {
//!             let service = dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("test:").build();
//!             dlock::set_global(service).expect("set once");
//!         })
//!         .await;
//! }
//!
//! // Two "tests", each on a runtime of its own, the first ended before the second starts.
//! for _ in 0..2 {
//!     tokio::runtime::Runtime::new().unwrap().block_on(async {
//!         setup().await;
//!         assert_eq!(touch(7).await.unwrap(), 7);
//!     });
//! }
//! ```
//!
//! To run annotated code against a service of its own without touching the global one (so
//! tests running in parallel never share locks by accident), wrap the call in
//! [`with_service`] — task-scoped, like `tracing::subscriber::with_default`:
//!
//! ```
//! # #[dlock::distributed_lock(key = "user:<id>")]
//! # async fn touch(id: u64) -> Result<u64, dlock::Error> { Ok(id) }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = dlock::LockService::new(dlock::MemoryBackend::new());
//! assert_eq!(dlock::with_service(service, touch(7)).await.unwrap(), 7);
//! # }
//! ```
//!
//! `MemoryBackend` keeps Redis's semantics in the process (leases on tokio's clock, so
//! `tokio::time::pause` works; `held_count()` and `force_expire(key)` to look and to simulate
//! a lost lock); the README's "Testing code that uses dlock" has more.
//!
//! # How it is built
//!
//! Each layer uses only the ones below it:
//!
//! ```text
//! registry, __private      where annotated fns find their service; what the attribute calls
//! connect                  a backend chosen by a URL (it knows every backend)
//! service                  LockService + builder: the facade
//! request                  LockRequest: builder calls, then .await
//! acquire/                 the algorithm: passes over sorted keys, waiting for one key (key.rs)
//! guard                    LockGuard: holding, scope, release
//! shared                   what a service's acquisitions and guards share
//! claim, keeper, context   cleanup of abandoned work; renewal; what this task holds
//! lease                    one held lease: lost or not, renewals in flight
//! local_queue              the in-process FIFO per key
//! redis/, postgres/        the networked backends: redis/ one engine (engine.rs) for one server,
//!                          Sentinel (sentinel/) and Cluster (cluster.rs); postgres/ a lease table
//! limits, error            bounds and defaults; Error (it carries the backends' errors)
//! backend/                 the LockBackend contract and MemoryBackend
//! background, time,        dlock's own runtime thread for work that must outlive a caller's;
//! id_hash                  small helpers
//! ```
//!
//! The backends never depend on the service: they use only the contract, `Error` and the helpers
//! below them.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate's docs link to every backend and to the attribute. A build without some of them
// (`--no-default-features`, one backend alone) shows those links as plain text rather than
// failing `cargo doc`; docs.rs (`[package.metadata.docs.rs]`) and CI document every feature,
// where each link resolves.
#![cfg_attr(
    not(all(
        feature = "macros",
        feature = "redis",
        feature = "redis-cluster",
        feature = "redis-sentinel",
        feature = "postgres"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

mod acquire;
pub mod backend;
mod background;
mod claim;
mod connect;
mod context;
mod error;
mod guard;
mod id_hash;
#[cfg(test)]
mod input_edges;
mod keeper;
mod lease;
mod limits;
mod local_queue;
mod registry;
mod request;
mod service;
mod shared;
mod time;

#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
mod postgres;

pub use backend::{LockBackend, MemoryBackend};
pub use connect::{ConnectOptions, connect, connect_with};
pub use context::{fencing_token, fencing_token_for};
pub use error::{Error, LostReason};
pub use guard::LockGuard;
pub use limits::{DEFAULT_TTL, DEFAULT_WAIT, MAX_TTL, MIN_TTL};
pub use registry::{global, lock, lock_with, named, register, set_global, with_service};
pub use request::LockRequest;
pub use service::{LockService, LockServiceBuilder};

#[cfg(feature = "redis-cluster")]
pub use crate::redis::cluster::{RedisClusterBackend, RedisClusterBackendBuilder};
#[cfg(feature = "redis-sentinel")]
pub use crate::redis::sentinel::{RedisSentinelBackend, RedisSentinelBackendBuilder};
#[cfg(feature = "redis")]
pub use crate::redis::{RedisBackend, RedisBackendBuilder};

#[cfg(feature = "postgres")]
pub use crate::postgres::{PostgresBackend, PostgresBackendBuilder};

/// The `tokio-postgres` dlock's PostgreSQL backend is built on, for
/// [`PostgresBackend::check_fence`] in an application's own transactions.
#[cfg(feature = "postgres")]
#[doc(no_inline)]
pub use tokio_postgres;

#[cfg(feature = "macros")]
#[doc(inline)]
pub use dlock_macros::distributed_lock;

#[cfg(doctest)]
#[doc = include_str!("../../dlock-macros/src/attribute.md")]
struct DistributedLockDoctests;

/// Not a stable API: the paths `#[distributed_lock]` expands to.
#[doc(hidden)]
pub mod __private;
