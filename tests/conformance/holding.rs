//! Holding a key: renewal keeps it, and stops with the guard; a lease that is lost (deleted,
//! refused, unconfirmed, expired) is reported before another holder could be in; a leaked or
//! crashed holder blocks others for at most its ttl.

use std::time::{Duration, Instant};

use dlock::{LockService, LostReason};

use super::{LONG_TTL, LONG_WAIT, assert_timeout};
use crate::support::faulty::{Op, Rule};
use crate::support::poll::{MARGIN, poll_until};
use crate::support::store::Store;

/// A guard kept for four ttls is renewed every ttl/3 and never lost; nobody else gets in.
pub async fn renewal_keeps_the_lock_past_its_ttl(store: &dyn Store) {
    let (service, faulty) = store.faulty_service().await;
    let other = store.service().await;
    let ttl = Duration::from_millis(300);
    let guard = service.lock("renew").ttl(ttl).await.expect("acquire");
    // Work for four ttls; the lease must be kept throughout.
    let work = tokio::time::timeout(ttl * 4, guard.lost()).await;
    assert!(work.is_err(), "lease lost while the guard was alive: {work:?}");
    assert!(!guard.is_lost());
    let renewals = faulty.count(Op::Renew);
    assert!(renewals >= 3, "renewed every ttl/3: {renewals} renewals in 4 ttls");
    assert_timeout(other.lock("renew").wait(Duration::ZERO).await, "another service after 4 ttls");
    assert!(guard.release().await.expect("release"), "still ours after 4 ttls");
}

/// A key deleted behind its holder's back (an operator, a failover) is free for another at
/// once; the holder learns of it (`Refused`) within the ttl, and its release leaves the new
/// holder alone.
pub async fn deleted_lock_is_reported_lost_and_release_says_so(store: &dyn Store) {
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

/// Once a guard is released, or dropped and released in the background, no renewal of its
/// key reaches the store (a renewal task left running would send them).
pub async fn no_renewal_after_release_or_drop(store: &dyn Store) {
    let (service, faulty) = store.faulty_service().await;
    let ttl = Duration::from_millis(300);
    // Held for 250 ms with a 300 ms ttl: renewed at about 100 and 200 ms, then let go.
    let hold = Duration::from_millis(250);
    let released = service.lock("released").ttl(ttl).await.expect("acquire");
    tokio::time::sleep(hold).await;
    assert!(released.release().await.expect("release"), "still ours at release");
    let released_at = tokio::time::Instant::now();
    let dropped = service.lock("dropped").ttl(ttl).await.expect("acquire");
    tokio::time::sleep(hold).await;
    drop(dropped);
    poll_until(Duration::from_secs(2), "the dropped guard's background release", || store.is_free("dropped"))
        .await;
    let freed_at = tokio::time::Instant::now();
    // Time for several renewal periods: a renewal task left running would renew.
    let renewals = faulty.count(Op::Renew);
    tokio::time::sleep(ttl * 4).await;
    assert_eq!(
        faulty.count(Op::Renew),
        renewals,
        "renewals after release and drop: {:?}",
        faulty.calls_of(Op::Renew)
    );
    for (key, let_go) in [("released", released_at), ("dropped", freed_at)] {
        let full_key = store.full_key(key);
        let renewed: Vec<_> = faulty.calls_of(Op::Renew).into_iter().filter(|c| c.key == *full_key).collect();
        assert!(!renewed.is_empty(), "{key}: held for {hold:?} with a ttl of {ttl:?}, so renewed");
        assert!(renewed.iter().all(|c| c.at < let_go), "{key}: renewed after it was let go: {renewed:?}");
    }
}

/// A renewal the store refuses marks the guard lost (`Refused`) at once — within a third of
/// the ttl of the refusal, when the next renewal is due; the release that follows reports
/// that the lock was not ours, and still frees the key.
pub async fn refused_renewal_is_reported_lost_within_a_third_of_the_ttl(store: &dyn Store) {
    let (service, faulty) = store.faulty_service().await;
    let ttl = Duration::from_millis(900);
    let guard = service.lock("refused").ttl(ttl).await.expect("acquire");
    faulty.inject(Rule::refuse(Op::Renew));
    let refused_from = Instant::now();
    let reason = tokio::time::timeout(ttl, guard.lost()).await.expect("the refusal is noticed");
    let took = refused_from.elapsed();
    assert_eq!(reason, LostReason::Refused);
    assert!(took < ttl / 3 + MARGIN, "reported lost {took:?} after renewals were refused");
    assert!(guard.is_lost());
    assert!(!guard.release().await.expect("release"), "a lost guard reports it was not ours");
    assert!(store.is_free("refused").await, "the release after the loss freed the key anyway");
}

/// Renewals that never answer: the guard is reported lost (`Unconfirmed`) before its lease
/// could have ended in the store (`sent + ttl`; `sent` is before the acquire left).
pub async fn unanswered_renewal_is_reported_lost_before_the_lease_ends(store: &dyn Store) {
    let (service, faulty) = store.faulty_service().await;
    // Long enough that dlock's safety margin (70 ms) dwarfs how late this test may observe
    // the loss on a busy machine.
    let ttl = Duration::from_secs(5);
    let sent = Instant::now();
    let guard = service.lock("unanswered").ttl(ttl).await.expect("acquire");
    faulty.inject(Rule::hang(Op::Renew));
    let reason = tokio::time::timeout(ttl + MARGIN, guard.lost()).await.expect("the loss is reported");
    let lost_at = sent.elapsed();
    assert_eq!(reason, LostReason::Unconfirmed);
    assert!(
        lost_at < ttl,
        "reported lost {lost_at:?} after the acquire was sent, at or after the ttl {ttl:?}"
    );
    assert!(faulty.count(Op::Renew) >= 1, "a renewal was sent, and never answered");
}

/// A lease that is not renewed lets the next holder in at its ttl, not before; the old holder
/// learns of it no later, and its late release leaves the new holder's lock alone.
pub async fn expired_lease_lets_another_in_and_late_release_leaves_it_intact(store: &dyn Store) {
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
    let b_value = store.owner("lease").await;
    assert!(
        !a.release().await.expect("a late release is not an error"),
        "A's release reports it was not ours"
    );
    assert!(store.is_held("lease").await, "B's lock survived A's late release");
    assert_eq!(store.owner("lease").await, b_value, "B's owner token is unchanged");
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

/// A guard leaked by another client blocks this one for its ttl, no longer.
pub async fn leaked_guard_blocks_others_for_at_most_ttl(store: &dyn Store) {
    leaked_guard_blocks_for_at_most_ttl(store.service().await, store.service().await).await;
}

/// Also for tasks of the same service, which queue locally behind the leaked guard.
pub async fn leaked_guard_blocks_same_service_for_at_most_ttl(store: &dyn Store) {
    let service = store.service().await;
    leaked_guard_blocks_for_at_most_ttl(service.clone(), service).await;
}

/// A holder that crashed: it took the key through the backend and will never renew or release.
pub async fn abandoned_lease_blocks_others_for_at_most_ttl(store: &dyn Store) {
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
