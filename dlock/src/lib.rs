//! Declarative distributed locks for async Rust.
//!
//! ```ignore
//! #[dlock::distributed_lock(key = "user:<user_id>", ttl = "10s")]
//! async fn pay(user_id: u64, amount: Cents) -> Result<Receipt, PayError> { /* … */ }
//! ```
//!
//! See the [README](https://crates.io/crates/dlock) for the tour; this page lists the parts.
//!
//! - [`distributed_lock`]: the attribute (feature `macros`, on by default).
//! - [`LockService`]: a [`LockBackend`] plus defaults; register one with [`set_global`] or
//!   [`register`].
//! - Backends: [`MemoryBackend`] (in-process) and [`RedisBackend`] (feature `redis`, on by
//!   default; `rediss://` with feature `tls`).
//! - The manual API: [`lock`] / [`LockService::lock`] → [`LockRequest`] → [`LockGuard`].
//! - [`fencing_token`]: the token of the innermost lock the current task holds.
//! - [`Error`]: everything that can go wrong, each message naming the key and the remedy.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod context;
mod error;
mod guard;
mod lease;
mod memory;
mod registry;
mod request;
mod service;

#[cfg(feature = "redis")]
mod redis;

pub use backend::{BoxFuture, LockBackend, ReleaseWatch, TryAcquire};
pub use context::fencing_token;
pub use error::{BackendError, BackendErrorKind, Error, LostReason};
pub use guard::LockGuard;
pub use lease::safety_margin;
pub use memory::MemoryBackend;
pub use registry::{global, lock, lock_with, named, register, set_global};
pub use request::LockRequest;
pub use service::{DEFAULT_TTL, DEFAULT_WAIT, LockService, LockServiceBuilder, MIN_TTL};

#[cfg(feature = "redis")]
pub use crate::redis::{RedisBackend, RedisBackendBuilder};

#[cfg(feature = "macros")]
#[doc(inline)]
pub use dlock_macros::distributed_lock;

#[cfg(doctest)]
#[doc = include_str!("../../dlock-macros/src/attribute.md")]
struct DistributedLockDoctests;

/// Not a stable API: the paths `#[distributed_lock]` expands to.
#[doc(hidden)]
pub mod __private;
