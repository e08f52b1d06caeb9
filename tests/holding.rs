//! Holding a lock: renewal, loss, `renew(false)`, re-entrancy, several keys.
//!
//! These run against a recording wrapper ([`FaultyBackend`]) around `MemoryBackend` on tokio's
//! paused clock, so the order and count of backend calls are exact and ttl-long scenarios take
//! no real time.
//! The same properties against real Redis (with faults) are in `holding_redis.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dlock::{Error, LockService, LostReason, MemoryBackend};
use dlock_tests::{FaultyBackend, Op, Rule};
use tokio::time::Instant;

/// A service over a recording wrapper of a fresh `MemoryBackend`, and both.
fn service() -> (FaultyBackend, MemoryBackend, LockService) {
    let memory = MemoryBackend::new();
    let faulty = FaultyBackend::new(memory.clone());
    (faulty.clone(), memory, LockService::new(faulty))
}

/// The keys of the calls of `op`, in order.
fn keys_of(faulty: &FaultyBackend, op: Op) -> Vec<String> {
    faulty.calls_of(op).into_iter().map(|call| call.key).collect()
}

const TTL: Duration = Duration::from_millis(300);

#[tokio::test(start_paused = true)]
async fn renewal_keeps_the_lock_for_three_ttls() {
    let (faulty, _, svc) = service();
    let guard = svc.lock("k").ttl(TTL).await.expect("acquire");
    tokio::time::sleep(TTL * 3).await;
    assert!(!guard.is_lost());
    // Another owner cannot get in meanwhile.
    let other = svc.lock("k").wait(Duration::ZERO).await;
    assert!(matches!(other, Err(Error::Timeout { .. })), "{other:?}");
    // Renewed every ttl/3: about 9 renewals in 3 ttls.
    let renews = faulty.count(Op::Renew);
    assert!((8..=10).contains(&renews), "{renews} renewals in 3 ttls");
    assert!(guard.release().await.expect("release"));
}

#[tokio::test(start_paused = true)]
async fn no_renewal_after_release_or_drop() {
    let (faulty, memory, svc) = service();
    let guard = svc.lock("a").ttl(TTL).await.expect("acquire");
    tokio::time::sleep(TTL / 2).await; // one renewal
    guard.release().await.expect("release");
    let released_at = faulty.last(Op::Release).expect("released").at;
    let dropped = svc.lock("b").ttl(TTL).await.expect("acquire");
    drop(dropped);
    tokio::time::sleep(TTL * 5).await;
    let renewed = keys_of(&faulty, Op::Renew);
    assert_eq!(renewed.iter().filter(|k| *k == "a").count(), 1, "{:?}", faulty.calls());
    assert_eq!(renewed.iter().filter(|k| *k == "b").count(), 0, "{:?}", faulty.calls());
    assert!(faulty.last(Op::Renew).expect("renewed").at < released_at);
    assert_eq!(memory.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_renewal_task_left_after_many_cycles() {
    let (faulty, memory, svc) = service();
    for i in 0..10_000 {
        let guard = svc.lock(format!("k{}", i % 7)).ttl(TTL).await.expect("acquire");
        if i % 2 == 0 {
            guard.release().await.expect("release");
        } else {
            drop(guard);
        }
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(faulty.count(Op::Renew), 0);
    // The keeper task itself ends after 10 s without a lease to keep.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0, "renewal or release tasks left behind");
    assert_eq!(memory.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn refused_renewal_marks_the_guard_lost_within_a_third_of_ttl() {
    let (faulty, _, svc) = service();
    let guard = svc.lock("k").ttl(TTL).await.expect("acquire");
    let start = Instant::now();
    faulty.inject(Rule::refuse(Op::Renew));
    let reason = guard.lost().await;
    assert_eq!(reason, LostReason::Refused);
    assert!(start.elapsed() <= TTL / 3 + Duration::from_millis(5), "{:?}", start.elapsed());
    assert!(guard.is_lost());
    assert!(!guard.release().await.expect("release"), "a lost guard reports it was not ours");
}

#[tokio::test(start_paused = true)]
async fn unanswered_renewal_is_lost_before_the_lease_ends() {
    let (faulty, _, svc) = service();
    let sent = Instant::now();
    let guard = svc.lock("k").ttl(TTL).await.expect("acquire");
    faulty.inject(Rule::hang(Op::Renew));
    assert_eq!(guard.lost().await, LostReason::Unconfirmed);
    let lease_end = sent + TTL;
    assert!(Instant::now() < lease_end, "lost must be reported before the lease could end");
    assert!(Instant::now() + dlock::__private::safety_margin(TTL) <= lease_end + Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn without_renewal_the_lease_ends_at_ttl() {
    let (faulty, _, svc) = service();
    let sent = Instant::now();
    let guard = svc.lock("k").ttl(TTL).renew(false).await.expect("acquire");
    assert_eq!(guard.lost().await, LostReason::Expired);
    assert!(Instant::now() < sent + TTL);
    assert_eq!(faulty.count(Op::Renew), 0);
}

/// A lease that reaches its deadline while nobody awaits `lost()` is marked lost by the
/// keeper, and the reason it records is the one its holder reads later: `Expired` for a lease
/// without renewal, `Unconfirmed` for one whose renewals kept failing until the deadline.
#[tokio::test(start_paused = true)]
async fn a_lease_that_ends_unwatched_records_why_it_was_lost() {
    let (faulty, _, svc) = service();
    let unrenewed = svc.lock("unrenewed").ttl(TTL).renew(false).await.expect("acquire");
    faulty.inject(Rule::fail(Op::Renew, dlock::backend::BackendErrorKind::Connection));
    let failing = svc.lock("failing").ttl(TTL).await.expect("acquire");
    // Past both deadlines: the keeper has marked both leases lost by now.
    tokio::time::sleep(TTL).await;
    assert!(faulty.count(Op::Renew) >= 2, "renewals were tried and failed: {:?}", faulty.calls());
    assert_eq!(unrenewed.lost().await, LostReason::Expired, "a lease without renewal ran out");
    assert_eq!(failing.lost().await, LostReason::Unconfirmed, "no renewal was confirmed");
}

#[tokio::test(start_paused = true)]
async fn expired_key_lets_the_next_owner_in_and_the_old_release_is_harmless() {
    let (_, _, svc) = service();
    let a = svc.lock("k").ttl(TTL).renew(false).await.expect("a");
    tokio::time::sleep(TTL + Duration::from_millis(1)).await;
    let b = svc.lock("k").ttl(TTL).wait(Duration::ZERO).await.expect("b gets in after a's lease ended");
    assert!(b.fencing_token() > a.fencing_token());
    assert!(!a.release().await.expect("late release"), "a's late release must report not-ours");
    // b still holds it.
    assert!(matches!(svc.lock("k").wait(Duration::ZERO).await, Err(Error::Timeout { .. })));
    assert!(b.release().await.expect("b release"));
}

#[tokio::test(start_paused = true)]
async fn nested_request_on_a_held_key_is_reentrant() {
    let (faulty, _, svc) = service();
    let outer = svc.lock("k").await.expect("outer");
    let token = outer.fencing_token();
    outer
        .scope(async {
            assert_eq!(dlock::fencing_token(), Some(token));
            let inner = svc.lock("k").wait(Duration::ZERO).await.expect("re-entrant");
            assert!(inner.is_reentrant());
            assert_eq!(inner.fencing_token(), token);
            inner.release().await.expect("inner release");
            // Still held by the outer guard after the inner one let go.
            let other = tokio::spawn({
                let svc = svc.clone();
                async move { svc.lock("k").wait(Duration::ZERO).await.map(|_| ()) }
            });
            assert!(
                matches!(other.await.expect("join"), Err(Error::Timeout { .. })),
                "spawned work is not re-entrant"
            );
        })
        .await;
    // One backend acquire: the nested request re-entered, and the spawned one queued behind the
    // holder in this process and gave up there.
    assert_eq!(faulty.count(Op::TryAcquire), 1, "{:?}", faulty.calls());
    assert!(outer.release().await.expect("outer release"));
    assert_eq!(dlock::fencing_token(), None);
}

/// A re-entrant guard's `scope`, entered again inside that same scope (or inside the scope of
/// another re-entrant guard of the same keys taken beside it), does not wait for the enclosing
/// body, which has the turn; and bodies entered that way side by side still take turns.
#[tokio::test(start_paused = true)]
async fn a_reentrant_scope_nested_in_a_scope_of_its_keys_does_not_wait_for_itself() {
    let (_, _, svc) = service();
    let outer = svc.lock("k").await.expect("outer");
    let token = outer.fencing_token();
    let inside = AtomicUsize::new(0);
    let body = || async {
        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two bodies of k at once");
        tokio::task::yield_now().await;
        inside.fetch_sub(1, Ordering::SeqCst);
        dlock::fencing_token()
    };
    let ran = outer
        .scope(async {
            let first = svc.lock("k").await.expect("re-entrant");
            let second = svc.lock("k").await.expect("re-entrant too");
            let nested = first.scope(async {
                let again = first.scope(async { dlock::fencing_token() }).await;
                let (a, b) = tokio::join!(second.scope(body()), second.scope(body()));
                (again, a, b)
            });
            tokio::time::timeout(Duration::from_secs(60), nested).await
        })
        .await;
    let tokens = ran.expect("a nested scope waited for its own enclosing scope");
    assert_eq!(tokens, (Some(token), Some(token), Some(token)));
    assert!(outer.release().await.expect("release"));
}

#[tokio::test(start_paused = true)]
async fn reentrancy_works_with_a_key_prefix() {
    let faulty = FaultyBackend::new(MemoryBackend::new());
    let svc = LockService::builder(faulty.clone()).key_prefix("app:").build();
    let outer = svc.lock("k").await.expect("outer");
    outer
        .scope(async {
            let inner = svc.lock("k").wait(Duration::ZERO).await.expect("re-entrant under a prefix");
            assert!(inner.is_reentrant());
            assert_eq!(inner.key(), "k");
        })
        .await;
    let calls: Vec<(Op, String)> = faulty.calls().into_iter().map(|call| (call.op, call.key)).collect();
    assert_eq!(calls, [(Op::TryAcquire, "app:k".to_owned())]);
    outer.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn several_keys_are_taken_in_sorted_order_and_all_or_nothing() {
    let (faulty, _, svc) = service();
    let guard = svc.lock_all(["b", "a", "b", "c"]).await.expect("all");
    assert_eq!(guard.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    let acquires = keys_of(&faulty, Op::TryAcquire);
    assert_eq!(acquires, ["a", "b", "c"]);
    guard.release().await.expect("release");

    // "c" is held elsewhere: taking {a, c} fails and leaves "a" free.
    let c = svc.lock("c").await.expect("c");
    let both = svc.lock_all(["a", "c"]).wait(Duration::from_millis(50)).await;
    assert!(matches!(both, Err(Error::Timeout { ref key, .. }) if key == "c"), "{both:?}");
    svc.lock("a")
        .wait(Duration::ZERO)
        .await
        .expect("a was released after the failure")
        .release()
        .await
        .expect("r");
    c.release().await.expect("release c");
}

#[tokio::test(start_paused = true)]
async fn several_keys_lost_if_any_is() {
    let (_, memory, svc) = service();
    let guard = svc.lock_all(["x", "y"]).ttl(TTL).await.expect("all");
    memory.force_expire("y");
    assert_eq!(guard.lost().await, LostReason::Refused);
}

/// A set whose lease ended while it waited for its last key gives back every key of that pass
/// at once, and the next pass takes them straight away: the set is not kept waiting for the
/// old pass's leases to run out (here, for `b`, a whole ttl).
#[tokio::test(start_paused = true)]
async fn a_pass_whose_lease_ended_gives_its_keys_back_before_the_next_pass() {
    let (faulty, memory, svc) = service();
    // Someone else holds `b` for half a ttl, so the set waits for it while holding `a`.
    let someone = LockService::new(memory.clone());
    let b = someone.lock("b").ttl(TTL / 2).renew(false).await.expect("someone takes b");
    std::mem::forget(b);
    // The renewal of `a`, a third of a ttl in, is refused: the pass's lease ends while it waits.
    faulty.inject(Rule::refuse(Op::Renew).once());
    let started = Instant::now();
    let guard = svc.lock_all(["a", "b"]).ttl(TTL).wait(TTL * 4).await.expect("the set, on a second pass");
    let took = started.elapsed();
    assert!(!guard.is_lost());
    let owners: Vec<Option<String>> =
        faulty.calls_of(Op::TryAcquire).into_iter().map(|call| call.owner).collect();
    assert_ne!(owners.first(), owners.last(), "taken by a second pass: {:?}", faulty.calls());
    // `b` is free at TTL / 2; the first pass's `b` (taken then) would last until 1.5 TTL.
    assert!(took < TTL, "the set took {took:?}: a pass waited for the previous pass's keys");
    assert!(guard.release().await.expect("release"));
    assert_eq!(memory.held_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_orders_never_deadlock() {
    let svc = LockService::new(MemoryBackend::new());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let keys = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
            let guard = svc.lock_all(keys).wait(Duration::from_secs(20)).await?;
            tokio::task::yield_now().await;
            guard.release().await
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join").expect("no deadlock, no timeout"));
    }
}

/// When other processes wait for a released key, this process's next waiter gives them a
/// head start (2 ms) before it competes; when nobody else waits, it competes at once.
#[tokio::test(start_paused = true)]
async fn the_next_local_waiter_yields_to_waiting_processes() {
    for others_waiting in [false, true] {
        let (faulty, _, svc) = service();
        if others_waiting {
            faulty.inject(Rule::others_waiting());
        }
        let held = svc.lock("k").await.expect("first");
        let next = tokio::spawn({
            let svc = svc.clone();
            async move { svc.lock("k").wait(Duration::from_secs(1)).await.map(|g| (Instant::now(), g)) }
        });
        tokio::task::yield_now().await; // the second task queues behind the first
        held.release().await.expect("release");
        let released_at = Instant::now();
        let (acquired_at, guard) = next.await.expect("join").expect("the next waiter gets it");
        let gap = acquired_at - released_at;
        if others_waiting {
            assert!(gap >= Duration::from_millis(2), "competed {gap:?} after the release");
        } else {
            assert!(gap < Duration::from_millis(1), "waited {gap:?} with nobody else waiting");
        }
        guard.release().await.expect("release");
    }
}

/// The head start goes to other processes also against a task of this process that asks
/// only after the release (a loop that releases and locks again): it too competes only once
/// the head start ends. Before, with the head start waited for by the next waiter itself, such
/// a task competed at once (found in review of that change).
#[tokio::test(start_paused = true)]
async fn a_task_asking_after_a_release_also_yields_to_waiting_processes() {
    let (faulty, _, svc) = service();
    faulty.inject(Rule::others_waiting());
    let held = svc.lock("k").await.expect("first");
    held.release().await.expect("release");
    let released_at = Instant::now();
    let again = svc.lock("k").wait(Duration::from_secs(1)).await.expect("the key, again");
    let gap = Instant::now() - released_at;
    assert!(gap >= Duration::from_millis(2), "competed {gap:?} after the release");
    again.release().await.expect("release");
}

/// `guard.lost()` reads the clock each time it is polled. A process frozen past its lease
/// (SIGSTOP, a stall) is woken by whatever its tasks waited for, and a task polled before the
/// runtime has fired its timers must still see the loss first. This is the documented
/// `select! { biased; reason = guard.lost() => …, () = work => … }`, which must never resume
/// the work once the lease has ended. Here the thread itself stands still past the lease, so
/// no timer fires meanwhile.
///
/// Before the fix, `lost()` looked only when its deadline timer fired, and the work ran on to
/// its next step first. The checker caught it in CI: a frozen holder's body started a register
/// write 432 ms after its lease could have ended.
#[tokio::test(flavor = "current_thread")]
async fn lost_is_seen_when_polled_past_the_deadline_before_any_timer_fires() {
    let service = LockService::new(MemoryBackend::new());
    let guard = service.lock("k").ttl(Duration::from_millis(200)).await.expect("lock");
    let mut lost = Box::pin(guard.lost());
    assert!(poll_once(&mut lost).await.is_pending(), "held at first");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        poll_once(&mut lost).await,
        std::task::Poll::Ready(LostReason::Unconfirmed),
        "the loss is seen at the first poll past the deadline"
    );
}

/// Poll `fut` once, and say what it answered.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
}
