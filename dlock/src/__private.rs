//! What `#[distributed_lock]` expands to calls. Not a stable API: use the attribute.

use crate::error::Error;
use crate::registry;
use std::future::Future;

pub use ::core::time::Duration;
pub use ::std::format;

/// Everything the attribute decided about one call.
#[derive(Debug)]
pub struct LockSpec {
    keys: Vec<String>,
    ttl: Option<Duration>,
    wait: Option<Duration>,
    renew: bool,
    service: Option<&'static str>,
}

impl LockSpec {
    /// A spec for `keys` with the service's defaults.
    pub fn new(keys: Vec<String>) -> Self {
        Self { keys, ttl: None, wait: None, renew: true, service: None }
    }

    /// The lease.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Whether to renew.
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// The named service to use instead of the global one.
    pub fn service(mut self, name: &'static str) -> Self {
        self.service = Some(name);
        self
    }
}

/// Acquire per `spec`, run `body` while held, release; the error cases become `E`.
///
/// The body is dropped (cancelled at its current `.await`) if the lease is lost, and the call
/// returns `Error::Lost`. If the body finishes, its result is returned even if the lease was
/// lost at the same instant: its effects happened, and retrying could repeat them.
pub async fn run<T, E, F>(spec: LockSpec, body: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let service = match spec.service {
        Some(name) => registry::named(name),
        None => registry::global(),
    }?;
    let guard = service.acquire(spec.keys, spec.ttl, spec.wait, spec.renew).await?;
    let outcome = {
        let body = guard.scope(body);
        tokio::select! {
            biased;
            result = body => Ok(result),
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
            let key = guard.key().to_owned();
            drop(guard);
            Err(Error::Lost { key, reason }.into())
        }
    }
}

/// The return type of an annotated function must be able to carry a `dlock::Error`.
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` functions must return `Result<T, E>` where `E: From<dlock::Error>`; `{Self}` is not such a type",
    label = "this return type cannot carry a `dlock::Error`",
    note = "the lock can time out or be lost, and the function reports that through its error type",
    note = "return `Result<T, dlock::Error>`, `anyhow::Result<T>`, `std::io::Result<T>`, or implement `From<dlock::Error>` for your error type"
)]
pub trait LockResult {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
}

impl<T, E: From<Error>> LockResult for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// Instantiated at the return type's span so a wrong type is reported there.
pub fn check_result<R: LockResult>() {}

/// A value interpolated into a lock key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in a lock key: it does not implement `std::fmt::Display`",
    label = "used in a `key` template of `#[distributed_lock]`",
    note = "key placeholders are formatted with `Display`; implement `Display` for `{Self}`, or name a field that is `Display`, e.g. `<order.id>`"
)]
pub trait KeyPart: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> KeyPart for T {}

/// Identity, requiring `Display`: makes a non-`Display` placeholder an error at its span.
pub fn key_part<T: KeyPart + ?Sized>(value: &T) -> &T {
    value
}

/// Identity that pins a `ttl`/`wait` expression to `Duration`.
pub const fn duration(d: Duration) -> Duration {
    d
}
