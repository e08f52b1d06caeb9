//! Where annotated functions find their [`LockService`]: one global, and any number by name.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use crate::error::Error;
use crate::request::LockRequest;
use crate::service::LockService;

static GLOBAL: OnceLock<LockService> = OnceLock::new();
static NAMED: RwLock<Option<HashMap<String, LockService>>> = RwLock::new(None);

/// Make `service` the one annotated functions (without `service = "…"`) and [`lock`] use.
///
/// Call it once at start-up. A second call returns [`Error::AlreadyRegistered`] and leaves
/// the first service in place.
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// dlock::set_global(dlock::LockService::new(dlock::MemoryBackend::new()))?;
/// assert!(dlock::set_global(dlock::LockService::new(dlock::MemoryBackend::new())).is_err());
/// # Ok(()) }
/// ```
pub fn set_global(service: LockService) -> Result<(), Error> {
    GLOBAL.set(service).map_err(|_| Error::AlreadyRegistered { service: None })
}

/// Register `service` under `name`, for `#[distributed_lock(service = "name", …)]` and
/// [`lock_with`]. Each name can be registered once; a second registration is
/// [`Error::AlreadyRegistered`].
pub fn register(name: impl Into<String>, service: LockService) -> Result<(), Error> {
    let name = name.into();
    let mut named = NAMED.write().unwrap_or_else(PoisonError::into_inner);
    let map = named.get_or_insert_with(HashMap::new);
    if map.contains_key(&name) {
        return Err(Error::AlreadyRegistered { service: Some(name) });
    }
    map.insert(name, service);
    Ok(())
}

/// The global service, or [`Error::NotRegistered`].
pub fn global() -> Result<LockService, Error> {
    GLOBAL.get().cloned().ok_or(Error::NotRegistered { service: None })
}

/// The service registered under `name`, or [`Error::NotRegistered`].
pub fn named(name: &str) -> Result<LockService, Error> {
    NAMED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|map| map.get(name).cloned())
        .ok_or_else(|| Error::NotRegistered { service: Some(name.to_owned()) })
}

/// A request for `key` on the global service; `.await` it for a [`LockGuard`](crate::LockGuard).
///
/// With no global service registered, awaiting it returns [`Error::NotRegistered`].
pub fn lock(key: impl Into<String>) -> LockRequest {
    LockRequest::new(global().map(|service| service.shared), vec![key.into()])
}

/// A request for `key` on the service registered as `service`.
pub fn lock_with(service: &str, key: impl Into<String>) -> LockRequest {
    LockRequest::new(named(service).map(|service| service.shared), vec![key.into()])
}
