//! Where annotated functions find their [`LockService`]: one global, any number by name, and
//! a task-scoped stand-in for the global one ([`with_service`], for tests).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{OnceLock, PoisonError, RwLock};

use crate::error::Error;
use crate::request::LockRequest;
use crate::service::LockService;

static GLOBAL: OnceLock<LockService> = OnceLock::new();

tokio::task_local! {
    /// The service that stands in for the global one within [`with_service`].
    static SCOPED: LockService;
}
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
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// dlock::register("payments", dlock::LockService::new(dlock::MemoryBackend::new()))?;
/// assert!(dlock::named("payments").is_ok());
/// # Ok(()) }
/// ```
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

/// The global service — or, inside [`with_service`], the service given there — or
/// [`Error::NotRegistered`].
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// dlock::set_global(dlock::LockService::builder(dlock::MemoryBackend::new()).key_prefix("app:").build())?;
/// assert_eq!(dlock::global()?.key_prefix(), "app:");
/// # Ok(()) }
/// ```
pub fn global() -> Result<LockService, Error> {
    SCOPED
        .try_with(LockService::clone)
        .ok()
        .or_else(|| GLOBAL.get().cloned())
        .ok_or(Error::NotRegistered { service: None })
}

/// Run `fut` with `service` standing in for the global service: annotated functions without
/// `service = "…"`, and [`lock`], use it inside `fut` (on this task; tasks spawned from it do
/// not inherit it), while the rest of the process — other tests running in parallel — keeps
/// the real global service, or none.
///
/// For tests: each can run the code under test against a service of its own (say over a
/// fresh [`MemoryBackend`](crate::MemoryBackend)), so parallel tests do not share locks by
/// accident, without registering anything process-wide. Like
/// `tracing::subscriber::with_default`.
///
/// ```
/// use dlock::distributed_lock;
///
/// #[distributed_lock(key = "user:<id>")]
/// async fn pay(id: u64) -> Result<u64, dlock::Error> {
///     Ok(dlock::fencing_token().unwrap_or_default())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// let service = dlock::LockService::new(dlock::MemoryBackend::new());
/// let token = dlock::with_service(service, pay(7)).await?;
/// assert!(token > 0);
/// # Ok(()) }
/// ```
pub fn with_service<F: Future>(service: LockService, fut: F) -> impl Future<Output = F::Output> {
    SCOPED.scope(service, fut)
}

/// The service registered under `name`, or [`Error::NotRegistered`].
///
/// ```
/// assert!(matches!(dlock::named("nobody"), Err(dlock::Error::NotRegistered { .. })));
/// ```
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
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// dlock::set_global(dlock::LockService::new(dlock::MemoryBackend::new()))?;
/// let guard = dlock::lock("report:daily").await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub fn lock(key: impl Into<String>) -> LockRequest {
    LockRequest::new(global().map(|service| service.shared), vec![key.into()])
}

/// A request for `key` on the service registered as `service`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), dlock::Error> {
/// dlock::register("reports", dlock::LockService::new(dlock::MemoryBackend::new()))?;
/// let guard = dlock::lock_with("reports", "report:daily").await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub fn lock_with(service: &str, key: impl Into<String>) -> LockRequest {
    LockRequest::new(named(service).map(|service| service.shared), vec![key.into()])
}
