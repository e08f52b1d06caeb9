//! A [`LockService`] over the backend: acquire and release, fencing tokens, key prefixes,
//! errors that name the key, bad input, re-entrancy, and the cleanup of guards that are dropped
//! or whose task is aborted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Error, LockService};

use super::{LONG_TTL, LONG_WAIT, assert_timeout};
use crate::support::poll::poll_until;
use crate::support::store::Store;

/// A free key is acquired (held in the store, under a token above 0), another client cannot
/// have it, the release frees it at once, and the next holder's token is greater.
pub async fn acquire_and_release(store: &dyn Store) {
    let service = store.service().await;
    let other = store.service().await;
    let guard = service.lock("acq").ttl(LONG_TTL).wait(LONG_WAIT).await.expect("a free lock is acquired");
    assert_eq!(guard.key(), "acq");
    assert_eq!(guard.keys().collect::<Vec<_>>(), ["acq"]);
    let token = guard.fencing_token();
    assert!(token > 0, "fencing tokens start above 0, got {token}");
    assert!(!guard.is_lost());
    assert!(!guard.is_reentrant());
    assert!(store.is_held("acq").await, "the backend holds the key while the guard lives");

    assert_timeout(other.lock("acq").wait(Duration::ZERO).await, "another service while held");

    assert!(guard.release().await.expect("release succeeds"), "the lock was still ours");
    assert!(!store.is_held("acq").await, "release frees the key at once");

    let again = other.lock("acq").wait(Duration::ZERO).await.expect("free again after release");
    assert!(again.fencing_token() > token, "{} > {token}", again.fencing_token());
    assert!(again.release().await.expect("release succeeds"));
}

/// 200 holders from 4 tasks in 2 services; each records its token while it holds the lock, so
/// the log is in holding order.
pub async fn fencing_tokens_strictly_increase_across_200_holders(store: &dyn Store) {
    let services = [store.service().await, store.service().await];
    let log = Arc::new(Mutex::new(Vec::with_capacity(200)));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let service = services[task % 2].clone();
        let (log, inside) = (Arc::clone(&log), Arc::clone(&inside));
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let guard = service.lock("fence").ttl(LONG_TTL).wait(Duration::from_secs(30)).await?;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                log.lock().expect("log lock").push(guard.fencing_token());
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(guard.release().await?, "lock was still ours at release");
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("holder task did not panic").expect("holder task acquired and released");
    }
    let log = log.lock().expect("log lock");
    assert_eq!(log.len(), 200);
    for pair in log.windows(2) {
        assert!(pair[0] < pair[1], "fencing tokens not strictly increasing: {} then {}", pair[0], pair[1]);
    }
}

/// Empty keys, no key, and a ttl under `MIN_TTL` are `InvalidInput` naming the input, before
/// any call reaches the backend; `MIN_TTL` itself is valid.
pub async fn invalid_input_is_rejected_before_any_backend_call(store: &dyn Store) {
    let (service, faulty) = store.faulty_service().await;
    let cases: Vec<(&str, dlock::LockRequest, &str)> = vec![
        ("empty key", service.lock(""), "key"),
        ("empty key among others", service.lock_all(["a", ""]), "key"),
        ("no key at all", service.lock_all(Vec::<String>::new()), "key"),
        ("ttl below 10 ms", service.lock("k").ttl(Duration::from_millis(9)), "ttl"),
        ("zero ttl", service.lock("k").ttl(Duration::ZERO), "ttl"),
    ];
    for (case, request, expected_what) in cases {
        match request.await {
            Err(err @ Error::InvalidInput { what, .. }) => {
                assert_eq!(what, expected_what, "{case}: {err}");
                assert!(err.to_string().contains(expected_what), "{case}: message names the input: {err}");
            }
            Ok(guard) => panic!("{case}: accepted: {guard:?}"),
            Err(err) => panic!("{case}: expected Error::InvalidInput, got {err:?}"),
        }
    }
    assert_eq!(faulty.total(), 0, "invalid requests must not reach the backend");

    // The boundary itself is valid.
    let guard = service.lock("k").ttl(dlock::MIN_TTL).await.expect("a ttl of exactly 10 ms is accepted");
    guard.release().await.expect("release");
}

/// A guard dropped without `release` frees its key in the background, long before its ttl.
pub async fn dropped_guard_is_released_in_the_background(store: &dyn Store) {
    let service = store.service().await;
    let guard = service.lock("drop").ttl(LONG_TTL).await.expect("acquire");
    assert!(store.is_held("drop").await);
    drop(guard);
    let took =
        poll_until(Duration::from_secs(2), "the dropped guard's key is freed", || store.is_free("drop"))
            .await;
    eprintln!("dropped guard released after {took:?}");
    let other = store.service().await;
    let guard = other.lock("drop").wait(Duration::ZERO).await.expect("free long before its 10 s ttl");
    assert!(guard.release().await.expect("release"));
}

/// A task aborted while it holds a guard frees the key in the background.
pub async fn aborted_task_releases_its_guard(store: &dyn Store) {
    let service = store.service().await;
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _guard = service.lock("abort").ttl(LONG_TTL).await.expect("acquire");
        held_tx.send(()).expect("the test is listening");
        std::future::pending::<()>().await;
    });
    held_rx.await.expect("task acquired the lock");
    assert!(store.is_held("abort").await);
    task.abort();
    let _ = task.await;
    poll_until(Duration::from_secs(2), "the aborted task's lock is freed", || store.is_free("abort")).await;
}

/// The service's prefix is part of the key the backend holds; the guard reports the key as
/// requested.
pub async fn key_prefix_is_applied_in_the_backend(store: &dyn Store) {
    let service = store.service().await;
    assert_eq!(service.key_prefix(), store.prefix());
    let guard = service.lock("user:42").ttl(LONG_TTL).await.expect("acquire");
    assert_eq!(guard.key(), "user:42", "the guard reports the key as requested");
    let backend = service.backend();
    let probe = backend.try_acquire(&store.full_key("user:42"), "probe", LONG_TTL).await.expect("probe");
    assert!(
        matches!(probe, dlock::backend::TryAcquire::Held { .. }),
        "the prefixed key is the one held: {probe:?}"
    );
    // The bare key is not what is held (on a shared server other users may own it: only probe
    // a store this test has to itself).
    if store.features().isolated {
        let unprefixed = dlock::backend::FullKey::new("", "user:42");
        let probe = backend.try_acquire(&unprefixed, "probe", dlock::MIN_TTL).await.expect("probe");
        assert!(
            matches!(probe, dlock::backend::TryAcquire::Acquired { .. }),
            "the unprefixed key is free: {probe:?}"
        );
        assert!(backend.release(&unprefixed, "probe").await.expect("release probe").was_held);
    }
    if let Some(owner) = store.owner("user:42").await {
        assert!(owner.is_some(), "the store holds `{}`", store.full_key("user:42"));
    }
    assert!(guard.release().await.expect("release"));
}

/// `{guard:?}` shows the keys as requested, the fencing token and whether the lock is lost.
pub async fn guard_debug_shows_keys_token_and_state(store: &dyn Store) {
    let service = store.service().await;
    let guard = service.lock("dbg").ttl(Duration::from_millis(300)).await.expect("acquire");
    let text = format!("{guard:?}");
    assert!(text.starts_with("LockGuard"), "{text}");
    assert!(text.contains("\"dbg\""), "Debug shows the key: {text}");
    assert!(
        text.contains(&format!("fencing_token: {}", guard.fencing_token())),
        "Debug shows the token: {text}"
    );
    assert!(text.contains("lost: false"), "{text}");
    store.delete("dbg").await;
    tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("loss is noticed");
    let text = format!("{guard:?}");
    assert!(text.contains("lost: true"), "{text}");
    assert!(
        !text.contains(store.prefix()) || store.prefix().is_empty(),
        "keys are shown as requested: {text}"
    );
}

/// A `Timeout` names the key and says what to do; it converts to `io::ErrorKind::TimedOut`.
pub async fn timeout_error_names_the_key(store: &dyn Store) {
    let holder = store.service().await;
    let service = store.service().await;
    let guard = holder.lock("order:7").ttl(LONG_TTL).await.expect("acquire");
    let err = service.lock("order:7").wait(Duration::from_millis(50)).await.expect_err("held elsewhere");
    let message = err.to_string();
    assert!(message.contains("order:7"), "the message names the key: {message}");
    assert!(message.contains("wait"), "the message says what to do (raise `wait`): {message}");
    assert!(err.key().is_some_and(|k| k.ends_with("order:7")), "Error::key(): {:?}", err.key());
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(guard.release().await.expect("release"));
}

/// `Error::Timeout { key }` is documented as "the full key (service prefix included)".
pub async fn timeout_error_key_is_the_full_key_as_documented(store: &dyn Store) {
    let holder = store.service().await;
    let service = store.service().await;
    let guard = holder.lock("order:8").ttl(LONG_TTL).await.expect("acquire");
    let (key, _) = assert_timeout(service.lock("order:8").wait(Duration::ZERO).await, "held elsewhere");
    assert!(guard.release().await.expect("release"));
    assert_eq!(
        key,
        store.full_key("order:8").as_str(),
        "Error::Timeout.key is documented to include the service prefix"
    );
}

async fn reentrant_in_scope(service: LockService, key: &str) {
    let guard = service.lock(key).ttl(LONG_TTL).await.expect("acquire");
    let token = guard.fencing_token();
    assert_eq!(dlock::fencing_token(), None, "outside any scope");
    guard
        .scope(async {
            assert_eq!(dlock::fencing_token(), Some(token), "inside the guard's scope");
            let inner = service
                .lock(key)
                .wait(Duration::from_millis(200))
                .await
                .expect("a nested lock on a key the task holds is re-entrant");
            assert!(inner.is_reentrant());
            assert_eq!(inner.fencing_token(), token);
            assert_eq!(inner.key(), key);
            assert!(inner.release().await.expect("re-entrant release"), "a re-entrant release is Ok(true)");
        })
        .await;
    assert!(!guard.is_lost(), "the inner release did not release the outer lock");
    assert!(guard.release().await.expect("release"), "the outer lock was still held");
}

/// Within `guard.scope`, a request for the held key re-enters it (no prefix on the service).
pub async fn reentrant_in_scope_without_prefix(store: &dyn Store) {
    let service = store.builder().await.key_prefix("").build();
    // No service prefix: keep the key in the store's namespace by hand.
    reentrant_in_scope(service, &store.full_key("re")).await;
}

/// Within `guard.scope`, a request for the held key re-enters it (with the store's prefix).
pub async fn reentrant_in_scope_with_key_prefix(store: &dyn Store) {
    assert!(!store.prefix().is_empty());
    reentrant_in_scope(store.service().await, "re").await;
}
