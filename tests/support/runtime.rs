//! Tokio runtimes made by hand, for tests where runtimes come and go (a service made in one and
//! used in another, a current-thread runtime that ends right after a call).

/// A runtime with the timer and IO enabled: multi-thread (2 workers) or current-thread.
pub fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().unwrap_or_else(|err| panic!("a tokio runtime: {err}"))
}
