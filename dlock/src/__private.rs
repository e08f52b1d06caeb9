//! What `#[distributed_lock]` expands to calls. Not a stable API: use the attribute.

use crate::error::Error;
use crate::registry;
use crate::request::LockRequest;
use std::future::Future;

pub use ::core::time::Duration;
pub use ::std::format;

/// How much earlier than the backend's own expiry dlock considers a lease over (for tests
/// and benchmarks that check the bound; the README gives the formula).
pub use crate::lease::safety_margin;

/// The request an annotated call makes: on the service registered as `service`, or on the
/// global one; the attribute adds the options it was given with `LockRequest`'s own builder.
pub fn request(service: Option<&'static str>, keys: Vec<String>) -> LockRequest {
    let service = match service {
        Some(name) => registry::named(name),
        None => registry::global(),
    };
    LockRequest::new(service.map(|service| service.shared), keys)
}

/// Acquire per `request`, run `body` while held, release; the error cases become `R`'s error.
///
/// The body is dropped (cancelled at its current `.await`) if the lease is lost, and the call
/// returns `Error::Lost`. If the body finishes, its result is returned even if the lease was
/// lost at the same instant: its effects happened, and retrying could repeat them.
pub async fn run<R, F>(request: LockRequest, body: F) -> R
where
    R: LockResult,
    R::Err: LockError,
    F: Future<Output = R>,
{
    let guard = match request.acquire().await {
        Ok(guard) => guard,
        Err(err) => return R::from_lock_error(err),
    };
    let outcome = if let Some(reason) = guard.lost_reason() {
        Err(reason)
    } else {
        // A re-entrant body waits for its turn among re-entrant bodies of its keys in this
        // task, as long as the request would have waited for the lock.
        let body = guard.scope_until(guard.deadline, body);
        tokio::select! {
            biased;
            result = body => match result {
                Ok(result) => Ok(result),
                Err(err) => return R::from_lock_error(err),
            },
            reason = guard.lost() => Err(reason),
        }
    };
    match outcome {
        Ok(result) => {
            if let Err(err) = guard.release().await {
                // The body's result stands; the lease expires at its ttl.
                tracing::warn!(target: "dlock", error = %err, "release after the body failed");
            }
            result
        }
        Err(reason) => {
            let key = guard.full_key().to_owned();
            drop(guard);
            R::from_lock_error(Error::Lost { key, reason })
        }
    }
}

/// The return type of an annotated function: a `Result` (whose error type must then carry a
/// `dlock::Error`, see [`LockError`]).
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` needs the function to return `Result<T, E>` where `E: From<dlock::Error>`, but it returns `{Self}`",
    label = "this return type cannot carry a `dlock::Error`",
    note = "the lock can time out or be lost, and the function reports that through its error type",
    note = "return e.g. `Result<T, dlock::Error>`, `anyhow::Result<T>`, `std::io::Result<T>`, or `Result<T, YourError>` with `impl From<dlock::Error> for YourError`"
)]
pub trait LockResult: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
    /// `Err(error.into())`.
    fn from_lock_error(error: Error) -> Self
    where
        Self::Err: LockError;
}

impl<T, E> LockResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    fn from_lock_error(error: Error) -> Self
    where
        E: LockError,
    {
        Err(E::from(error))
    }
}

/// The error type of an annotated function must be able to carry a `dlock::Error`.
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` needs the error type `{Self}` to implement `From<dlock::Error>`",
    label = "the error type in this return type cannot carry a `dlock::Error`",
    note = "add `impl From<dlock::Error> for {Self}` (the lock's errors are returned as `Err(e.into())`), or return `Result<T, dlock::Error>` or `anyhow::Result<T>`"
)]
pub trait LockError: From<Error> {}

impl<E: From<Error>> LockError for E {}

/// Instantiated at the return type's span so a wrong type is reported there.
pub fn check_result<R: LockResult>()
where
    R::Err: LockError,
{
}

/// A value interpolated into a lock key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in a lock key: it does not implement `std::fmt::Display`",
    label = "used in a `#[distributed_lock]` key, so it must implement `Display`",
    note = "implement `std::fmt::Display` for `{Self}`, or use one of its fields that does, e.g. `<order.id>`"
)]
pub trait KeyPart: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> KeyPart for T {}

/// Requires `Display`: makes a non-`Display` placeholder an error at its span (and only there).
pub fn key_part<T: KeyPart>(value: &T) -> &dyn std::fmt::Display {
    value
}

/// Identity that pins a `service = EXPR` expression to `&'static str`.
pub const fn service_name(name: &'static str) -> &'static str {
    name
}

/// Identity that pins a `ttl`/`wait` expression to `Duration`.
pub const fn duration(d: Duration) -> Duration {
    d
}
