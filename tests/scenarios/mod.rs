//! Behaviour every backend must show, written once against a [`Store`] and run by
//! `runtime_memory` (a fresh `MemoryBackend` per test) and `runtime_redis` (a private key
//! namespace on the shared Redis per test) through [`all_scenarios!`].
//!
//! "Another process" is a second [`LockService`] made by [`Store::service`]: on Redis it has its
//! own connection, so the two contend in Redis itself and not in dlock's in-process queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlock::{Error, LockService, LostReason};

use crate::support::{Store, poll_until};

/// Slack allowed on top of a bound the library promises (scheduling on a loaded 2-core
/// machine, the waiter's retry timer on backends without release notices).
pub const MARGIN: Duration = Duration::from_millis(300);

const LONG_TTL: Duration = Duration::from_secs(10);
const LONG_WAIT: Duration = Duration::from_secs(10);

/// Expands to one `#[tokio::test]` per scenario; `$store` is an `async fn(&str) -> Store`
/// called with the test's name.
macro_rules! all_scenarios {
    ($store:path) => {
        $crate::scenarios::all_scenarios!(@each $store;
            acquire_and_release,
            waiter_in_other_service_gets_in_only_after_release,
            waiter_in_same_service_gets_in_only_after_release,
            expired_lease_lets_another_in_and_late_release_leaves_it_intact,
            leaked_guard_blocks_others_for_at_most_ttl,
            leaked_guard_blocks_same_service_for_at_most_ttl,
            abandoned_lease_blocks_others_for_at_most_ttl,
            fencing_tokens_strictly_increase_across_200_holders,
            wait_expires_into_timeout_in_the_backend,
            wait_expires_into_timeout_in_the_local_queue,
            wait_zero_is_a_single_attempt,
            invalid_input_is_rejected_before_any_backend_call,
            dropped_guard_is_released_in_the_background,
            aborted_task_releases_its_guard,
            lock_all_over_overlapping_sets_neither_deadlocks_nor_overlaps,
            lock_all_is_all_or_nothing,
            abandoned_lock_all_frees_the_keys_it_took,
            lock_all_does_not_hand_out_keys_that_expired_while_waiting,
            key_prefix_is_applied_in_the_backend,
            guard_debug_shows_keys_token_and_state,
            timeout_error_names_the_key,
            timeout_error_key_is_the_full_key_as_documented,
            renewal_keeps_the_lock_past_its_ttl,
            deleted_lock_is_reported_lost_and_release_says_so,
            reentrant_in_scope_without_prefix,
            reentrant_in_scope_with_key_prefix,
        );
    };
    (@each $store:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $store(stringify!($name)).await;
                $crate::scenarios::$name(&store).await;
                store.cleanup().await;
            }
        )*
    };
}
pub(crate) use all_scenarios;

fn assert_timeout(result: Result<dlock::LockGuard, Error>, what: &str) -> (String, Duration) {
    match result {
        Err(Error::Timeout { key, waited }) => (key, waited),
        Ok(guard) => panic!("{what}: expected Error::Timeout, got the lock: {guard:?}"),
        Err(err) => panic!("{what}: expected Error::Timeout, got {err:?} ({err})"),
    }
}

pub async fn acquire_and_release(store: &Store) {
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

/// The holder marks, before it releases, that it is about to let go; the waiter records what
/// it saw when it got in. Exclusion means the waiter can only have seen "released".
async fn waiter_gets_in_only_after_release(store: &Store, holder: LockService, waiter: LockService) {
    let holding = Arc::new(AtomicBool::new(true));
    let guard = holder.lock("handoff").ttl(LONG_TTL).await.expect("holder acquires");
    let holder_token = guard.fencing_token();

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let waiter_task = tokio::spawn({
        let holding = Arc::clone(&holding);
        async move {
            started_tx.send(()).expect("the test is listening");
            let guard = waiter.lock("handoff").ttl(LONG_TTL).wait(LONG_WAIT).await?;
            let got_in = Instant::now();
            let saw_holder = holding.load(Ordering::SeqCst);
            let token = guard.fencing_token();
            guard.release().await?;
            Ok::<_, Error>((saw_holder, token, got_in))
        }
    });
    started_rx.await.expect("waiter task started");
    // Give the waiter every chance to (wrongly) get in while the lock is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter_task.is_finished(), "the waiter finished while the holder still held the lock");
    assert!(store.is_held("handoff").await);

    holding.store(false, Ordering::SeqCst);
    let released_at = Instant::now();
    assert!(guard.release().await.expect("release succeeds"));

    let (saw_holder, token, got_in) = tokio::time::timeout(LONG_WAIT, waiter_task)
        .await
        .expect("the waiter gets in after the release")
        .expect("waiter task did not panic")
        .expect("waiter acquires and releases");
    assert!(!saw_holder, "the waiter got in while the holder held the lock");
    assert!(got_in >= released_at);
    assert!(token > holder_token, "next holder's token {token} > {holder_token}");
    let handoff = got_in - released_at;
    assert!(handoff < MARGIN, "the waiter noticed the release after {handoff:?}, not promptly");
}

pub async fn waiter_in_other_service_gets_in_only_after_release(store: &Store) {
    waiter_gets_in_only_after_release(store, store.service().await, store.service().await).await;
}

pub async fn waiter_in_same_service_gets_in_only_after_release(store: &Store) {
    let service = store.service().await;
    waiter_gets_in_only_after_release(store, service.clone(), service).await;
}

pub async fn expired_lease_lets_another_in_and_late_release_leaves_it_intact(store: &Store) {
    let (a_service, b_service, c_service) =
        (store.service().await, store.service().await, store.service().await);
    let ttl = Duration::from_secs(1);
    let started = Instant::now();
    let a = a_service.lock("lease").ttl(ttl).renew(false).await.expect("A acquires");
    let a_token = a.fencing_token();

    // B waits for A's lease to run out while A keeps its guard; A must learn of its loss
    // no later than B gets in.
    let (a_lost, b) = tokio::join!(
        async {
            let reason = a.lost().await;
            (reason, Instant::now())
        },
        async {
            let guard =
                b_service.lock("lease").ttl(LONG_TTL).wait(LONG_WAIT).await.expect("B gets in after A's ttl");
            (guard, Instant::now())
        }
    );
    let ((reason, a_lost_at), (b, b_in_at)) = (a_lost, b);
    assert_eq!(reason, LostReason::Expired);
    assert!(a.is_lost());
    let b_waited = b_in_at - started;
    assert!(
        b_waited >= ttl - Duration::from_millis(50),
        "B got in after {b_waited:?}, before A's ttl {ttl:?}"
    );
    assert!(b_waited < ttl + MARGIN, "B got in after {b_waited:?}, long after A's ttl {ttl:?}");
    assert!(a_lost_at <= b_in_at, "A was told of its loss {:?} after B got in", a_lost_at - b_in_at);
    assert!(b.fencing_token() > a_token);

    // A's late release must not touch B's lock.
    let b_value = store.stored_value("lease").await;
    assert!(
        !a.release().await.expect("a late release is not an error"),
        "A's release reports it was not ours"
    );
    assert!(store.is_held("lease").await, "B's lock survived A's late release");
    assert_eq!(store.stored_value("lease").await, b_value, "B's owner token is unchanged");
    assert_timeout(c_service.lock("lease").wait(Duration::ZERO).await, "C while B holds");
    assert!(!b.is_lost());
    assert!(b.release().await.expect("B releases"), "B's lock was still B's");
}

/// A guard leaked with `mem::forget` (renewal off) frees the key at its ttl.
async fn leaked_guard_blocks_for_at_most_ttl(a_service: LockService, b_service: LockService) {
    let ttl = Duration::from_millis(400);
    let started = Instant::now();
    let leaked = a_service.lock("leak").ttl(ttl).renew(false).await.expect("A acquires");
    std::mem::forget(leaked);
    let b = b_service.lock("leak").wait(LONG_WAIT).await.expect("B gets in once the leaked lease ends");
    let waited = started.elapsed();
    assert!(waited >= ttl - Duration::from_millis(50), "B got in after {waited:?}, before the ttl {ttl:?}");
    assert!(waited < ttl + MARGIN, "B got in after {waited:?}, long after the ttl {ttl:?}");
    assert!(b.release().await.expect("B releases"));
}

pub async fn leaked_guard_blocks_others_for_at_most_ttl(store: &Store) {
    leaked_guard_blocks_for_at_most_ttl(store.service().await, store.service().await).await;
}

/// Also for tasks of the same service, which queue locally behind the leaked guard.
pub async fn leaked_guard_blocks_same_service_for_at_most_ttl(store: &Store) {
    let service = store.service().await;
    leaked_guard_blocks_for_at_most_ttl(service.clone(), service).await;
}

/// A holder that crashed: it took the key through the backend and will never renew or release.
pub async fn abandoned_lease_blocks_others_for_at_most_ttl(store: &Store) {
    let service = store.service().await;
    let ttl = Duration::from_millis(400);
    let started = Instant::now();
    let outcome = service.backend().try_acquire(&store.full_key("crash"), "crashed-owner", ttl).await;
    let Ok(dlock::backend::TryAcquire::Acquired { fencing_token: crashed_token }) = outcome else {
        panic!("the crashed owner should have acquired: {outcome:?}")
    };
    let guard =
        service.lock("crash").wait(LONG_WAIT).await.expect("gets in once the crashed owner's lease ends");
    let waited = started.elapsed();
    assert!(waited >= ttl - Duration::from_millis(50), "got in after {waited:?}, before the ttl {ttl:?}");
    assert!(waited < ttl + MARGIN, "got in after {waited:?}, long after the ttl {ttl:?}");
    assert!(guard.fencing_token() > crashed_token);
    assert!(guard.release().await.expect("release"));
}

/// 200 holders from 4 tasks in 2 services; each records its token while it holds the lock, so
/// the log is in holding order.
pub async fn fencing_tokens_strictly_increase_across_200_holders(store: &Store) {
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

async fn timeout_bounds(store: &Store, holder: LockService, waiter: LockService) {
    let guard = holder.lock("busy").ttl(LONG_TTL).await.expect("holder acquires");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let (key, waited) = assert_timeout(waiter.lock("busy").wait(wait).await, "waiting on a held lock");
    let elapsed = started.elapsed();
    assert!(waited >= wait, "Timeout.waited {waited:?} < wait {wait:?}");
    assert!(elapsed >= wait, "gave up after {elapsed:?}, before wait {wait:?}");
    assert!(elapsed < wait + MARGIN, "gave up after {elapsed:?}, long after wait {wait:?}");
    assert!(key.ends_with("busy"), "Timeout names the key: {key}");
    assert!(store.is_held("busy").await, "the holder's lock is untouched");
    assert!(guard.release().await.expect("release"));
}

pub async fn wait_expires_into_timeout_in_the_backend(store: &Store) {
    timeout_bounds(store, store.service().await, store.service().await).await;
}

pub async fn wait_expires_into_timeout_in_the_local_queue(store: &Store) {
    let service = store.service().await;
    timeout_bounds(store, service.clone(), service).await;
}

pub async fn wait_zero_is_a_single_attempt(store: &Store) {
    let holder = store.service().await;
    let (service, counts) = store.counting_service().await;
    let guard = holder.lock("once").ttl(LONG_TTL).await.expect("holder acquires");

    let started = Instant::now();
    let (_, waited) =
        assert_timeout(service.lock("once").wait(Duration::ZERO).await, "wait(0) on a held lock");
    let elapsed = started.elapsed();
    assert_eq!(counts.try_acquire(), 1, "wait(0) makes exactly one acquire attempt");
    assert!(elapsed < Duration::from_millis(100), "wait(0) took {elapsed:?}");
    assert!(waited < Duration::from_millis(100), "Timeout.waited {waited:?} for wait(0)");

    assert!(guard.release().await.expect("release"));
    let guard = service.lock("once").wait(Duration::ZERO).await.expect("wait(0) on a free lock acquires");
    assert_eq!(counts.try_acquire(), 2, "one attempt on the free lock");
    assert!(guard.release().await.expect("release"));
}

pub async fn invalid_input_is_rejected_before_any_backend_call(store: &Store) {
    let (service, counts) = store.counting_service().await;
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
    assert_eq!(counts.total(), 0, "invalid requests must not reach the backend");

    // The boundary itself is valid.
    let guard = service.lock("k").ttl(dlock::MIN_TTL).await.expect("a ttl of exactly 10 ms is accepted");
    guard.release().await.expect("release");
}

pub async fn dropped_guard_is_released_in_the_background(store: &Store) {
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

pub async fn aborted_task_releases_its_guard(store: &Store) {
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

pub async fn lock_all_over_overlapping_sets_neither_deadlocks_nor_overlaps(store: &Store) {
    let occupancy: Arc<HashMap<&'static str, AtomicUsize>> =
        Arc::new(["a", "b", "c", "d"].into_iter().map(|k| (k, AtomicUsize::new(0))).collect());
    let sets: [&[&'static str]; 4] = [&["c", "a", "b", "a"], &["d", "c", "b"], &["c"], &["b", "d"]];
    let mut tasks = Vec::new();
    for (i, set) in sets.into_iter().enumerate() {
        let service = store.service().await;
        let occupancy = Arc::clone(&occupancy);
        tasks.push(tokio::spawn(async move {
            let mut expected: Vec<&str> = set.to_vec();
            expected.sort_unstable();
            expected.dedup();
            for round in 0..15 {
                let guard = service
                    .lock_all(set.iter().copied())
                    .ttl(LONG_TTL)
                    .wait(Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|err| panic!("set {i} round {round}: {err}"));
                assert_eq!(guard.keys().collect::<Vec<_>>(), expected, "keys: sorted, duplicates merged");
                let tokens: Vec<(&str, u64)> = guard.fencing_tokens().collect();
                assert_eq!(tokens.iter().map(|(k, _)| *k).collect::<Vec<_>>(), expected);
                for key in &expected {
                    assert_eq!(
                        occupancy[key].fetch_add(1, Ordering::SeqCst),
                        0,
                        "`{key}` held twice at once"
                    );
                }
                tokio::task::yield_now().await;
                for key in &expected {
                    occupancy[key].fetch_sub(1, Ordering::SeqCst);
                }
                assert!(guard.release().await.expect("release"), "set {i}: still ours at release");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("lock_all over overlapping sets deadlocked")
            .expect("task did not panic");
    }
}

pub async fn lock_all_is_all_or_nothing(store: &Store) {
    let holder = store.service().await;
    let service = store.service().await;
    let b = holder.lock("b").ttl(LONG_TTL).await.expect("holder takes b");
    let (key, _) = assert_timeout(
        service.lock_all(["a", "b", "c"]).ttl(LONG_TTL).wait(Duration::from_millis(200)).await,
        "lock_all with one key held elsewhere",
    );
    assert!(key.ends_with('b'), "the Timeout names the key that was busy: {key}");
    assert!(!store.is_held("a").await, "`a` was given back when `b` could not be had");
    assert!(!store.is_held("c").await, "`c` was never taken");
    assert!(b.release().await.expect("release"));
    let all = service.lock_all(["a", "b", "c"]).wait(Duration::ZERO).await.expect("all free now");
    assert!(all.release().await.expect("release"));
}

/// The caller gives up on a lock_all (drops the future, e.g. its own timeout) while it waits for
/// a later key: the keys it already took must be freed, not left held without an owner until
/// their ttl.
pub async fn abandoned_lock_all_frees_the_keys_it_took(store: &Store) {
    let (holder, service) = (store.service().await, store.service().await);
    let b = holder.lock("b").ttl(LONG_TTL).await.expect("holder takes b");
    let request = service.lock_all(["a", "b"]).ttl(LONG_TTL).wait(LONG_WAIT);
    let abandoned = tokio::time::timeout(Duration::from_millis(300), request).await;
    assert!(abandoned.is_err(), "lock_all should still be waiting for `b`: {abandoned:?}");
    poll_until(Duration::from_secs(2), "`a`, taken by the abandoned lock_all, is freed", || {
        store.is_free("a")
    })
    .await;
    assert!(b.release().await.expect("release"));
}

/// lock_all takes keys one after the other. While it waits for a later key, the earlier ones
/// must stay ours (renewed) — or, if their lease ran out meanwhile, the request must not
/// succeed: either way, two live holders of one key must never coexist.
pub async fn lock_all_does_not_hand_out_keys_that_expired_while_waiting(store: &Store) {
    let (x, y, z) = (store.service().await, store.service().await, store.service().await);
    let b = x.lock("b").ttl(LONG_TTL).await.expect("X takes b");
    let ttl = Duration::from_millis(200);
    let y_task = tokio::spawn(async move { y.lock_all(["a", "b"]).ttl(ttl).wait(LONG_WAIT).await });
    poll_until(Duration::from_secs(2), "Y takes `a` and starts waiting for `b`", || store.is_held("a")).await;

    // Y is stuck on `b` for longer than its ttl on `a`.
    let z_result = z.lock("a").ttl(LONG_TTL).wait(ttl * 3).await;
    assert!(b.release().await.expect("release"));
    let y_result =
        tokio::time::timeout(LONG_WAIT, y_task).await.expect("Y finishes").expect("Y did not panic");
    if let (Ok(z_guard), Ok(y_guard)) = (&z_result, &y_result) {
        panic!(
            "lock_all returned a guard over {:?} (lost: {}) while another live guard holds `a` ({z_guard:?}): \
             the earlier key's lease expired while lock_all waited for the later one",
            y_guard.keys().collect::<Vec<_>>(),
            y_guard.is_lost(),
        );
    }
}

pub async fn key_prefix_is_applied_in_the_backend(store: &Store) {
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
    // The bare key is not what is held (on the shared Redis, other users may own it: only probe
    // the private memory store).
    if !store.is_redis() {
        let unprefixed = dlock::backend::FullKey::new("", "user:42");
        let probe = backend.try_acquire(&unprefixed, "probe", dlock::MIN_TTL).await.expect("probe");
        assert!(
            matches!(probe, dlock::backend::TryAcquire::Acquired { .. }),
            "the unprefixed key is free: {probe:?}"
        );
        assert!(backend.release(&unprefixed, "probe").await.expect("release probe").was_held);
    }
    if let Some(value) = store.stored_value("user:42").await {
        assert!(value.is_some(), "Redis holds `{}`", store.full_key("user:42"));
    }
    assert!(guard.release().await.expect("release"));
}

pub async fn guard_debug_shows_keys_token_and_state(store: &Store) {
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

pub async fn timeout_error_names_the_key(store: &Store) {
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
pub async fn timeout_error_key_is_the_full_key_as_documented(store: &Store) {
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

pub async fn renewal_keeps_the_lock_past_its_ttl(store: &Store) {
    let (service, counts) = store.counting_service().await;
    let other = store.service().await;
    let ttl = Duration::from_millis(300);
    let guard = service.lock("renew").ttl(ttl).await.expect("acquire");
    // Work for four ttls; the lease must be kept throughout.
    let work = tokio::time::timeout(ttl * 4, guard.lost()).await;
    assert!(work.is_err(), "lease lost while the guard was alive: {work:?}");
    assert!(!guard.is_lost());
    assert!(counts.renew() >= 3, "renewed every ttl/3: {} renewals in 4 ttls", counts.renew());
    assert_timeout(other.lock("renew").wait(Duration::ZERO).await, "another service after 4 ttls");
    assert!(guard.release().await.expect("release"), "still ours after 4 ttls");
}

pub async fn deleted_lock_is_reported_lost_and_release_says_so(store: &Store) {
    let service = store.service().await;
    let other = store.service().await;
    let ttl = Duration::from_millis(300);
    let guard = service.lock("gone").ttl(ttl).await.expect("acquire");
    store.delete("gone").await;
    let intruder =
        other.lock("gone").ttl(LONG_TTL).wait(Duration::ZERO).await.expect("the deleted key is free");
    let reason = tokio::time::timeout(ttl, guard.lost()).await.expect("the loss is noticed within the ttl");
    assert_eq!(reason, LostReason::Refused);
    assert!(guard.is_lost());
    assert!(
        !guard.release().await.expect("release is not an error"),
        "release reports the lock was not ours"
    );
    assert!(store.is_held("gone").await, "the old holder's release left the new holder's lock alone");
    assert!(intruder.release().await.expect("release"));
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

pub async fn reentrant_in_scope_without_prefix(store: &Store) {
    let service = store.builder().await.key_prefix("").build();
    // No service prefix: keep the key in the store's namespace by hand.
    reentrant_in_scope(service, &store.full_key("re")).await;
}

pub async fn reentrant_in_scope_with_key_prefix(store: &Store) {
    assert!(!store.prefix().is_empty());
    reentrant_in_scope(store.service().await, "re").await;
}
