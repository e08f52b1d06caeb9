//! The runtime against `MemoryBackend`: the whole conformance suite (`conformance/`, a fresh
//! `MemoryBackend` per test), plus what only this binary may do — the process-wide global
//! service — and paused-clock tests of when leases end.

use std::time::Duration;

use dlock::{Error, LockService, MemoryBackend};
use dlock_tests::MemoryStore;

async fn memory_store(test_name: &str) -> MemoryStore {
    MemoryStore::new(test_name)
}

dlock_tests::conformance_suite!(memory_store);

/// The only test in this binary that touches the global service (it is process-wide and can
/// be set once), and the named registry's error paths.
#[tokio::test]
async fn registry_global_and_named_services() {
    // Before registration: errors, not panics.
    let err = dlock::lock("reg:1").await.expect_err("no global service yet");
    assert!(matches!(err, Error::NotRegistered { service: None }), "{err:?}");
    assert!(err.to_string().contains("dlock::set_global"), "says how to register: {err}");
    assert!(matches!(dlock::global(), Err(Error::NotRegistered { service: None })));

    let err = dlock::lock_with("nope", "reg:1").await.expect_err("nothing registered as `nope`");
    assert!(matches!(&err, Error::NotRegistered { service: Some(name) } if name == "nope"), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("`nope`") && message.contains("dlock::register(\"nope\""), "{message}");
    assert!(matches!(dlock::named("nope"), Err(Error::NotRegistered { .. })));

    // The global service, once.
    let backend = MemoryBackend::new();
    dlock::set_global(LockService::builder(backend.clone()).key_prefix("global:").build())
        .expect("first set_global succeeds");
    let err = dlock::set_global(LockService::new(MemoryBackend::new())).expect_err("second set_global");
    assert!(matches!(err, Error::AlreadyRegistered { service: None }), "{err:?}");
    assert!(err.to_string().contains("already registered"), "{err}");
    assert_eq!(dlock::global().expect("registered").key_prefix(), "global:", "the first service stays");

    let guard = dlock::lock("reg:1").ttl(Duration::from_secs(5)).await.expect("global service works");
    assert_eq!(backend.held_count(), 1, "the global service's backend holds the key");
    assert!(backend.force_expire("global:reg:1"), "stored under the global service's prefix");
    assert!(!guard.release().await.expect("release"), "force-expired, so no longer ours");

    // Named services, once per name.
    let named_backend = MemoryBackend::new();
    dlock::register("mem-a", LockService::new(named_backend.clone())).expect("first registration");
    let err =
        dlock::register("mem-a", LockService::new(MemoryBackend::new())).expect_err("second registration");
    assert!(matches!(&err, Error::AlreadyRegistered { service: Some(name) } if name == "mem-a"), "{err:?}");
    let guard = dlock::lock_with("mem-a", "reg:2").await.expect("named service works");
    assert_eq!(named_backend.held_count(), 1, "the named service's backend, not the global one, holds it");
    assert!(guard.release().await.expect("release"));
    assert_eq!(named_backend.held_count(), 0);
}

/// The memory backend runs on tokio's clock, so leases can be tested with paused time: a
/// waiter on a lease that ends without a release (a leaked or crashed holder) gets in when it
/// ends — "a crashed holder blocks others for at most ttl" — not up to a quarter of the ttl
/// later. 20 rounds, because the waiter's retry timer is randomised.
#[tokio::test(start_paused = true)]
async fn waiter_gets_in_when_an_unreleased_lease_ends() {
    let ttl = Duration::from_secs(60);
    let mut late = Vec::new();
    for round in 0..20 {
        let backend = MemoryBackend::new();
        let service = LockService::new(backend.clone());
        let other = LockService::new(backend.clone());
        let guard = service.lock("paused").ttl(ttl).renew(false).await.expect("acquire");
        let started = tokio::time::Instant::now();
        let next = other.lock("paused").wait(ttl * 2).await.expect("the waiter gets in after the ttl");
        let waited = started.elapsed();
        assert!(waited >= ttl, "round {round}: got in after {waited:?}, before the ttl");
        if waited > ttl + Duration::from_secs(1) {
            late.push(waited);
        }
        assert!(guard.is_lost());
        assert!(next.fencing_token() > guard.fencing_token());
        assert!(!guard.release().await.expect("release"));
        assert!(next.release().await.expect("release"));
        assert_eq!(backend.held_count(), 0);
    }
    assert!(late.is_empty(), "waiters got in more than 1 s after a {ttl:?} lease ended: {late:?}");
}

/// On the paused clock a lease's end is exact: it ends at its ttl from the acquire, a renewal
/// moves the end to a ttl from the renewal, and an owner taking its key again gets a ttl from
/// then — not a moment more (the conformance suite can only bound these within `MARGIN`).
#[tokio::test(start_paused = true)]
async fn leases_end_exactly_a_ttl_after_the_acquire_renewal_or_retake() {
    use dlock::LockBackend;
    use dlock::backend::{FullKey, TryAcquire};

    let backend = MemoryBackend::new();
    let key = FullKey::new("", "exact");
    let ttl = Duration::from_secs(60);
    let tick = Duration::from_millis(1);
    let taken = |outcome: TryAcquire| matches!(outcome, TryAcquire::Acquired { .. });

    // A lease from the acquire.
    assert!(taken(backend.try_acquire(&key, "a", ttl).await.expect("acquire")));
    tokio::time::advance(ttl - tick).await;
    assert_eq!(backend.held_count(), 1, "held until its ttl");
    tokio::time::advance(tick).await;
    assert_eq!(backend.held_count(), 0, "ended at its ttl");

    // A lease from a renewal.
    assert!(taken(backend.try_acquire(&key, "b", ttl).await.expect("acquire")));
    tokio::time::advance(ttl / 2).await;
    assert!(backend.renew(&key, "b", ttl).await.expect("renew"));
    tokio::time::advance(ttl - tick).await;
    assert_eq!(backend.held_count(), 1, "held until a ttl after the renewal");
    tokio::time::advance(tick).await;
    assert_eq!(backend.held_count(), 0, "ended a ttl after the renewal");

    // A lease from taking the key again.
    assert!(taken(backend.try_acquire(&key, "c", ttl).await.expect("acquire")));
    tokio::time::advance(ttl / 2).await;
    assert!(taken(backend.try_acquire(&key, "c", ttl).await.expect("take again")));
    tokio::time::advance(ttl - tick).await;
    assert_eq!(backend.held_count(), 1, "held until a ttl after it was taken again");
    tokio::time::advance(tick).await;
    assert_eq!(backend.held_count(), 0, "ended a ttl after it was taken again");
}
