//! What `#[distributed_lock]` expands to calls. Not a stable API: use the attribute.

use crate::error::Error;
use crate::registry;
use crate::request::LockRequest;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

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

/// Acquire per `request`, run `body` while held, release; a lock error becomes `R`'s error.
///
/// The body is dropped (cancelled at its current `.await`) if the lease is lost, and the call
/// returns `Error::Lost`; the lease is checked before the body is polled, so a body is never
/// resumed once its lease has ended. If the body finishes while the lease holds, its result is
/// returned even if the lease is lost right after: its effects happened, and retrying could
/// repeat them.
///
/// The body comes boxed: an annotated call nested in another's body then adds its own state
/// to the outer future once, instead of once per layer of wrapping (a future passed by value
/// through an `async fn` is stored twice), which made nested calls overflow the stack.
async fn run<R, B>(request: LockRequest, body: Pin<Box<B>>, lock_error: fn(Error) -> R) -> R
where
    B: Future<Output = R>,
{
    let guard = match request.acquire().await {
        Ok(guard) => guard,
        Err(error) => return lock_error(error),
    };
    let outcome = match guard.lost_reason() {
        Some(reason) => Err(reason),
        None => {
            // A re-entrant body waits for its turn among re-entrant bodies of its keys in this
            // task, as long as the request would have waited for the lock.
            let _turn = match guard.pass_gates_until(guard.deadline).await {
                Ok(turn) => turn,
                Err(error) => return lock_error(error),
            };
            let mut body = std::pin::pin!(guard.scoped(body));
            let mut lost = std::pin::pin!(guard.lost());
            // The lease is looked at before the body at every wake-up: a process that was
            // frozen past its lease (a GC pause, SIGSTOP) must not run the body on to its next
            // `.await` — its next write — once the lease has ended. The look is a plain check;
            // the loss is waited for (a timer at the deadline) only once the body waits too,
            // so a body that finishes at once costs no timer.
            std::future::poll_fn(|cx| {
                if let Some(reason) = guard.lost_reason() {
                    return Poll::Ready(Err(reason));
                }
                if let Poll::Ready(result) = body.as_mut().poll(cx) {
                    return Poll::Ready(Ok(result));
                }
                lost.as_mut().poll(cx).map(Err)
            })
            .await
        }
    };
    match outcome {
        Ok(result) => {
            if let Err(err) = guard.release().await {
                // The body's result stands; the release is retried in the background.
                tracing::warn!(target: "dlock", error = %err, "release after the body failed");
            }
            result
        }
        Err(reason) => {
            let key = guard.full_key().to_owned();
            drop(guard);
            lock_error(Error::Lost { key, reason })
        }
    }
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

// ---- Appended for dlock-macros: the return-type checks, the call the expansion makes, and the
// compile-time bounds check of a `ttl` literal. Only the items below are named by the
// expansion (with `request` above).

/// The return type of an annotated function: a `Result`.
///
/// The expansion names `<Ret as LockedReturn>::from_result` at the return type (or, when no
/// alias can make `Ret` a `Result`, only `<Ret as LockedReturn>::check()`): a path, not a
/// bound on a function, so the error names no function of dlock, and the impl is
/// `do_not_recommend` so it does not point at dlock's source either.
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` needs the function to return `Result<T, E>` where `E: From<dlock::Error>`, but it returns `{Self}`",
    label = "this return type cannot carry a `dlock::Error`",
    note = "the lock can time out or be lost, and the function reports that through its error type",
    note = "return e.g. `Result<T, dlock::Error>`, `anyhow::Result<T>`, `std::io::Result<T>`, or `Result<T, YourError>` with `impl From<dlock::Error> for YourError`"
)]
pub trait LockedReturn: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Error;
    /// `self` as the `Result` it is.
    fn into_result(self) -> Result<Self::Ok, Self::Error>;
    /// The inverse of `into_result`.
    fn from_result(result: Result<Self::Ok, Self::Error>) -> Self;
    /// Named by the expansion only for the error it reports when `Self` is no `Result`.
    fn check() {}
}

#[diagnostic::do_not_recommend]
impl<T, E> LockedReturn for Result<T, E> {
    type Ok = T;
    type Error = E;
    fn into_result(self) -> Self {
        self
    }
    fn from_result(result: Self) -> Self {
        result
    }
}

/// The error type of an annotated function: it must be able to carry a `dlock::Error`.
/// The expansion names `<<Ret as LockedReturn>::Error as LockedError>::from_lock_error` at the
/// return type, which is where a missing `From<dlock::Error>` is reported.
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` needs the error type `{Self}` to implement `From<dlock::Error>`",
    label = "the error type in this return type cannot carry a `dlock::Error`",
    note = "add `impl From<dlock::Error> for {Self}` (the lock's errors are returned as `Err(e.into())`), or return `Result<T, dlock::Error>` or `anyhow::Result<T>`"
)]
pub trait LockedError: Sized {
    /// `error.into()`.
    fn from_lock_error(error: Error) -> Self;
}

impl<E: From<Error>> LockedError for E {
    fn from_lock_error(error: Error) -> Self {
        E::from(error)
    }
}

/// `run` for the function's return type `R`; `lock_error` makes a lock error an `R`.
///
/// No bound here names `LockedReturn` or `LockedError`: the expansion builds `lock_error` from
/// `<<Ret as LockedReturn>::Error as LockedError>::from_lock_error`, written at the return
/// type, and that path is the one place a wrong return or error type is reported. (Bounds
/// here too were the same predicates at the same span, which rustc reports once only without
/// incremental compilation: `cargo check` showed each error twice, the second with this file.)
pub fn run_locked<R, F>(request: LockRequest, body: F, lock_error: fn(Error) -> R) -> impl Future<Output = R>
where
    F: Future<Output = R>,
{
    run(request, Box::pin(body), lock_error)
}

/// `lock_error` for [`run_locked`] when the return type cannot be named (it contains an
/// `impl Trait`): inferred from the body's output.
pub fn lock_error_of<R, F>(_body: &F) -> fn(Error) -> R
where
    R: LockedReturn,
    R::Error: LockedError,
    F: Future<Output = R>,
{
    |error| R::from_result(Err(R::Error::from_lock_error(error)))
}

/// A message built during constant evaluation, for the `panic!` of a compile-time check.
#[derive(Debug)]
pub struct ConstMessage {
    bytes: [u8; 400],
    len: usize,
}

impl ConstMessage {
    const fn new() -> Self {
        ConstMessage { bytes: [0; 400], len: 0 }
    }

    /// Appends `text` whole, or nothing if it does not fit (so the bytes stay UTF-8).
    const fn push(mut self, text: &str) -> Self {
        let text = text.as_bytes();
        if self.len + text.len() <= self.bytes.len() {
            let mut i = 0;
            while i < text.len() {
                self.bytes[self.len + i] = text[i];
                i += 1;
            }
            self.len += text.len();
        }
        self
    }

    /// Appends a whole number.
    const fn push_number(mut self, mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if self.len + count <= self.bytes.len() {
            while count > 0 {
                count -= 1;
                self.bytes[self.len] = digits[count];
                self.len += 1;
            }
        }
        self
    }

    /// Appends `d` as the attribute writes durations: `"365d"`, `"1m30s"`, `"10ms"`.
    const fn push_duration(mut self, d: Duration) -> Self {
        const UNITS: [(&str, u128); 5] =
            [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
        let mut millis = d.as_millis();
        if millis == 0 {
            return self.push("0ms");
        }
        let mut i = 0;
        while i < UNITS.len() {
            let (unit, size) = UNITS[i];
            if millis >= size {
                self = self.push_number((millis / size) as u64).push(unit);
                millis %= size;
            }
            i += 1;
        }
        self
    }

    /// Whether nothing is to be reported.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message.
    pub const fn as_str(&self) -> &str {
        match core::str::from_utf8(self.bytes.split_at(self.len).0) {
            Ok(text) => text,
            Err(_) => "",
        }
    }
}

/// Checks a `ttl` literal against [`MIN_TTL`](crate::MIN_TTL) and [`MAX_TTL`](crate::MAX_TTL)
/// during constant evaluation: empty when it is within them, else the compile error's text.
/// `written` is the literal as the user wrote it, quotes included.
pub const fn ttl_literal_error(ttl: Duration, written: &str) -> ConstMessage {
    let message = ConstMessage::new().push("`ttl = ").push(written).push("` is ");
    if ttl.as_nanos() < crate::MIN_TTL.as_nanos() {
        message
            .push("shorter than `dlock::MIN_TTL` (")
            .push_duration(crate::MIN_TTL)
            .push("): a lease that short cannot be renewed reliably; write e.g. `ttl = \"10s\"`")
    } else if ttl.as_nanos() > crate::MAX_TTL.as_nanos() {
        message.push("longer than `dlock::MAX_TTL` (").push_duration(crate::MAX_TTL).push(
            "): the lease is renewed while the body runs, so ttl only bounds how long a \
                 crashed holder blocks others; write e.g. `ttl = \"30s\"`",
        )
    } else {
        ConstMessage::new()
    }
}
