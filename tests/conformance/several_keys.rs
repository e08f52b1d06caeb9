//! Several keys at once (`lock_all`): taken in one order so that overlapping sets neither
//! deadlock nor overlap, all or nothing, and nothing left behind by a request given up
//! half-way or kept waiting past a ttl.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{LONG_TTL, LONG_WAIT, assert_timeout};
use crate::support::poll::poll_until;
use crate::support::store::Store;

/// Four clients take overlapping sets of keys, 15 times each: no deadlock, and no key held
/// twice at once; the guard lists its keys sorted, duplicates merged.
pub async fn lock_all_over_overlapping_sets_neither_deadlocks_nor_overlaps(store: &dyn Store) {
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

/// A set with one key held elsewhere times out naming that key, and holds none of the others.
pub async fn lock_all_is_all_or_nothing(store: &dyn Store) {
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
pub async fn abandoned_lock_all_frees_the_keys_it_took(store: &dyn Store) {
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
pub async fn lock_all_does_not_hand_out_keys_that_expired_while_waiting(store: &dyn Store) {
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
