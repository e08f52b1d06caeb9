//! The [`LockBackend`] contract (its points 1–6, in `dlock/src/backend/mod.rs`), checked call
//! by call against independent clients of the store — no `LockService` in between.
//!
//! Owners are plain strings here (`"owner-a"`); dlock makes random ones. Every call must
//! answer within `CALL_BOUND` (2 s) on a healthy store (point 4).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::LockBackend;
use dlock::backend::{BackendError, FullKey, ReleaseNotice, ReleaseWatch, TryAcquire, WAITER_RECHECK};

use super::{LONG_TTL, requires};
use crate::support::poll::MARGIN;
use crate::support::store::Store;

/// How long any call may take on a healthy store: far more than a call needs, and no more
/// than the call timeout of dlock's backends (2 s by default).
const CALL_BOUND: Duration = Duration::from_secs(2);

/// The answer of `call`, which must come within [`CALL_BOUND`] and be `Ok`.
async fn bounded<T>(what: &str, call: impl Future<Output = Result<T, BackendError>>) -> T {
    let started = Instant::now();
    let answer = tokio::time::timeout(CALL_BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_BOUND:?} (contract, point 4)"));
    assert!(started.elapsed() < CALL_BOUND, "{what}: answered after {:?}", started.elapsed());
    answer.unwrap_or_else(|err| panic!("{what}: {err}"))
}

/// The fencing token of an attempt that must have taken the key.
fn acquired(outcome: TryAcquire, what: &str) -> u64 {
    match outcome {
        TryAcquire::Acquired { fencing_token } => fencing_token,
        held => panic!("{what}: expected Acquired, got {held:?}"),
    }
}

/// The `remaining` and `newest_token` of an attempt that must have found the key held.
fn held(outcome: TryAcquire, what: &str) -> (Option<Duration>, Option<u64>) {
    match outcome {
        TryAcquire::Held { remaining, newest_token } => (remaining, newest_token),
        TryAcquire::Acquired { fencing_token } => {
            panic!("{what}: expected Held, but it took the key (token {fencing_token})")
        }
    }
}

/// Ask for `key` every 10 ms until the store gives it to `owner`; its token. Panics if that
/// does not happen within `bound`.
async fn acquire_within(
    client: &dyn LockBackend,
    key: &FullKey,
    owner: &str,
    bound: Duration,
    what: &str,
) -> u64 {
    let deadline = Instant::now() + bound;
    loop {
        if let TryAcquire::Acquired { fencing_token } =
            bounded(what, client.try_acquire(key, owner, LONG_TTL)).await
        {
            return fencing_token;
        }
        assert!(Instant::now() < deadline, "{owner} did not get the key {what}, within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A watch for releases of `key` from a store that has notices.
async fn watch(client: &dyn LockBackend, key: &FullKey, what: &str) -> ReleaseWatch {
    bounded(what, client.watch_releases(key))
        .await
        .unwrap_or_else(|| panic!("{what}: the store has release notices, but watch_releases gave none"))
}

/// The next hand-off `watch` hears within [`MARGIN`] (plain release notices are skipped).
/// The next hand-off notice naming `owner`. Notices of hand-offs to other owners may come
/// too (a backend may announce a hand-off to everybody watching the key; each waiter takes
/// only one that names it): they are skipped.
async fn next_grant(watch: &mut ReleaseWatch, owner: &str, what: &str) -> (String, u64) {
    let heard = tokio::time::timeout(MARGIN, async {
        loop {
            if let ReleaseNotice::Granted { owner: named, fencing_token } = watch.released().await
                && &*named == owner
            {
                return (named.to_string(), fencing_token);
            }
        }
    })
    .await;
    heard.unwrap_or_else(|_| panic!("{what}: no hand-off notice naming {owner} within {MARGIN:?}"))
}

/// Point 1: an attempt takes a free key, and only a free key; on a held one it says how long
/// the lease has left, if it knows. Another key is another lock.
pub async fn an_acquire_takes_a_free_key_and_only_a_free_key(store: &dyn Store) {
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("k");
    let first = acquired(bounded("a takes k", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "a takes k");
    assert!(store.is_held("k").await, "the store holds k after an Acquired");

    let (remaining, _) = held(bounded("b on k", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b on k");
    if let Some(remaining) = remaining {
        assert!(
            remaining > Duration::ZERO && remaining <= LONG_TTL,
            "b is told {remaining:?} of a {LONG_TTL:?} lease"
        );
    }
    held(
        bounded("another owner on a's client", a.try_acquire(&key, "owner-c", LONG_TTL)).await,
        "owner-c on k",
    );

    let other = store.full_key("k2");
    acquired(bounded("b takes k2", b.try_acquire(&other, "owner-b", LONG_TTL)).await, "b takes k2");
    assert!(bounded("b releases k2", b.release(&other, "owner-b")).await.was_held);

    assert!(bounded("a releases k", a.release(&key, "owner-a")).await.was_held);
    let second = acquired(bounded("b takes k", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b takes k");
    assert!(second > first, "the next holder's token {second} > {first}");
    assert!(bounded("b releases k", b.release(&key, "owner-b")).await.was_held);
}

/// Point 1: six clients try for one free key at the same moment, twenty times: exactly one
/// takes it each time, and each round's token is greater than the last.
pub async fn racing_acquires_have_one_winner(store: &dyn Store) {
    let mut clients: Vec<Arc<dyn LockBackend>> = Vec::new();
    for _ in 0..6 {
        clients.push(store.client().await);
    }
    let key = store.full_key("race");
    let mut last_token = 0;
    for round in 0..20 {
        let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut attempts = Vec::new();
        for (n, client) in clients.iter().enumerate() {
            let (client, key, barrier) = (Arc::clone(client), key.clone(), Arc::clone(&barrier));
            attempts.push(tokio::spawn(async move {
                let owner = format!("owner-{round}-{n}");
                barrier.wait().await;
                let outcome = bounded("a racing attempt", client.try_acquire(&key, &owner, LONG_TTL)).await;
                (n, owner, outcome)
            }));
        }
        let mut winners = Vec::new();
        for attempt in attempts {
            let (n, owner, outcome) = attempt.await.expect("join");
            if let TryAcquire::Acquired { fencing_token } = outcome {
                winners.push((n, owner, fencing_token));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} attempts took the key: {winners:?}", winners.len());
        let (n, owner, token) = winners.remove(0);
        assert!(token > last_token, "round {round}: token {token} after {last_token}");
        last_token = token;
        assert!(bounded("the winner releases", clients[n].release(&key, &owner)).await.was_held);
    }
}

/// Point 1: tokens strictly increase across successive holders of a key — released, expired,
/// or deleted behind the holder's back.
pub async fn fencing_tokens_strictly_increase_per_key(store: &dyn Store) {
    let clients = [store.client().await, store.client().await];
    let key = store.full_key("tokens");
    let mut tokens = Vec::new();
    for n in 0..40 {
        let (client, owner) = (&clients[n % 2], format!("owner-{n}"));
        tokens.push(acquired(bounded("acquire", client.try_acquire(&key, &owner, LONG_TTL)).await, "free"));
        assert!(bounded("release", client.release(&key, &owner)).await.was_held);
    }

    // A lease that ends by itself.
    let ttl = Duration::from_millis(50);
    tokens.push(acquired(bounded("acquire", clients[0].try_acquire(&key, "expiring", ttl)).await, "free"));
    tokens
        .push(acquire_within(&*clients[1], &key, "after-expiry", ttl + MARGIN, "once the lease ended").await);

    // A key the store lost.
    store.delete("tokens").await;
    tokens.push(acquired(
        bounded("acquire", clients[0].try_acquire(&key, "after-delete", LONG_TTL)).await,
        "deleted",
    ));
    assert!(bounded("release", clients[0].release(&key, "after-delete")).await.was_held);

    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "fencing tokens not strictly increasing: {tokens:?}");
}

/// Point 2: release and renew act only for the owner that holds the key, and say so; they
/// touch nothing otherwise — also on a key nobody holds.
pub async fn release_and_renew_act_only_for_the_owner(store: &dyn Store) {
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("owned");
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "a takes it");

    assert!(!bounded("b's release", b.release(&key, "owner-b")).await.was_held, "b never held it");
    assert!(!bounded("b's renewal", b.renew(&key, "owner-b", LONG_TTL)).await, "b never held it");
    assert!(!bounded("another owner's release", a.release(&key, "owner-b")).await.was_held);
    assert!(store.is_held("owned").await, "a's lock survived the others' calls");
    if let Some(stored) = store.owner("owned").await {
        assert_eq!(stored.as_deref(), Some("owner-a"), "the store still holds it for a");
    }

    assert!(bounded("a's renewal", a.renew(&key, "owner-a", LONG_TTL)).await, "a holds it");
    assert!(bounded("a's release", a.release(&key, "owner-a")).await.was_held, "a held it");
    assert!(store.is_free("owned").await, "released");
    assert!(!bounded("a's second release", a.release(&key, "owner-a")).await.was_held);
    assert!(!bounded("a's renewal after release", a.renew(&key, "owner-a", LONG_TTL)).await);

    let never = store.full_key("never-held");
    assert!(!bounded("releasing a free key", a.release(&never, "owner-a")).await.was_held);
    assert!(!bounded("renewing a free key", a.renew(&never, "owner-a", LONG_TTL)).await);
    assert!(store.is_free("never-held").await, "a renewal does not take a free key");
}

/// Point 1: an owner that holds the key takes it again (a new token, a fresh lease), so an
/// attempt whose answer was lost is settled by the owner's next one; nobody else gets in.
pub async fn an_owner_asking_for_a_key_it_holds_takes_it_again(store: &dyn Store) {
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("again");
    let first = acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "a takes it");
    let again =
        acquired(bounded("a asks again", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "a asks again");
    assert!(again > first, "a new token: {again} after {first}");
    held(bounded("b asks", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b asks");
    if let Some(stored) = store.owner("again").await {
        assert_eq!(stored.as_deref(), Some("owner-a"), "the store holds it for a");
    }
    assert!(bounded("a's release", a.release(&key, "owner-a")).await.was_held, "a held it");
    let next = acquired(bounded("b asks again", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "released");
    assert!(next > again);
}

/// Point 3: a lease ends at its ttl unless renewed; a renewal extends it by a ttl from then;
/// after the end, the old owner's renew and release are refused and leave the new holder alone.
pub async fn a_lease_ends_at_its_ttl_unless_renewed(store: &dyn Store) {
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("lease");
    let ttl = Duration::from_secs(1);
    let started = Instant::now();
    let first = acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", ttl)).await, "a takes it");

    tokio::time::sleep_until((started + ttl / 2).into()).await;
    let renewed_at = Instant::now();
    assert!(bounded("a renews", a.renew(&key, "owner-a", ttl)).await, "a holds it");
    // Past the first lease's end, well before the renewed one's.
    tokio::time::sleep_until((started + ttl * 6 / 5).into()).await;
    held(bounded("b after the first ttl", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "renewed");

    let bound = (renewed_at + ttl + MARGIN).saturating_duration_since(Instant::now());
    let token = acquire_within(&*b, &key, "owner-b", bound, "once the renewed lease ended").await;
    let waited = renewed_at.elapsed();
    assert!(
        waited >= ttl - Duration::from_millis(50),
        "b got in {waited:?} after the renewal of a {ttl:?} lease"
    );
    assert!(token > first);

    assert!(!bounded("a's late renewal", a.renew(&key, "owner-a", ttl)).await, "a's lease ended");
    assert!(!bounded("a's late release", a.release(&key, "owner-a")).await.was_held, "a's lease ended");
    assert!(store.is_held("lease").await, "b's lock survived a's late calls");
    assert!(bounded("b releases", b.release(&key, "owner-b")).await.was_held);
}

/// Points 1 and 3: an owner that takes its key again gets a fresh lease of the ttl it asked
/// for, from then: not the rest of the old one, and no longer than its ttl.
pub async fn a_key_taken_again_gets_a_fresh_lease_of_its_ttl(store: &dyn Store) {
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("retaken");
    let ttl = Duration::from_secs(1);
    let started = Instant::now();
    let first = acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", ttl)).await, "a takes it");

    tokio::time::sleep_until((started + ttl / 2).into()).await;
    let retaken_at = Instant::now();
    let again = acquired(bounded("a takes it again", a.try_acquire(&key, "owner-a", ttl)).await, "a's own");
    assert!(again > first, "a new token: {again} after {first}");
    // Past the first lease's end, well before the fresh one's.
    tokio::time::sleep_until((started + ttl * 6 / 5).into()).await;
    held(bounded("b after the first ttl", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "taken again");

    let bound = (retaken_at + ttl + MARGIN).saturating_duration_since(Instant::now());
    let token = acquire_within(&*b, &key, "owner-b", bound, "once the fresh lease ended").await;
    let waited = retaken_at.elapsed();
    assert!(
        waited >= ttl - Duration::from_millis(50),
        "b got in {waited:?} after a took the key again with a {ttl:?} ttl"
    );
    assert!(token > again);
    assert!(bounded("b releases", b.release(&key, "owner-b")).await.was_held);
}

/// Points 2 and 3: once its lease has ended, an owner's renew and release are refused even
/// though nobody took the key since: the lease is over, and saying "held" would tell the
/// holder its work was covered to the end.
pub async fn an_ended_lease_is_not_renewed_or_released_by_its_owner(store: &dyn Store) {
    let a = store.client().await;
    let key = store.full_key("ended");
    let ttl = Duration::from_millis(200);
    let started = Instant::now();
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", ttl)).await, "a takes it");
    // The store's promise is the ttl: this waits for that, not for another task's progress.
    tokio::time::sleep_until((started + ttl + Duration::from_millis(100)).into()).await;
    assert!(!bounded("a's late renewal", a.renew(&key, "owner-a", LONG_TTL)).await, "a's lease ended");
    assert!(!bounded("a's late release", a.release(&key, "owner-a")).await.was_held, "a's lease ended");
    assert!(store.is_free("ended").await, "nobody holds a key whose lease ended");
}

/// Point 4: on a healthy store, every call answers well within a call timeout, also with four
/// clients calling at once.
pub async fn every_call_answers_promptly(store: &dyn Store) {
    let mut tasks = Vec::new();
    for n in 0..4 {
        let client = store.client().await;
        let (own, shared) = (store.full_key(&format!("own-{n}")), store.full_key("shared"));
        tasks.push(tokio::spawn(async move {
            let owner = format!("owner-{n}");
            for _ in 0..25 {
                acquired(bounded("acquire", client.try_acquire(&own, &owner, LONG_TTL)).await, "own key");
                assert!(bounded("renew", client.renew(&own, &owner, LONG_TTL)).await);
                let watch = bounded("watch", client.watch_releases(&own)).await;
                assert!(bounded("release", client.release(&own, &owner)).await.was_held);
                drop(watch);
                if let TryAcquire::Acquired { .. } =
                    bounded("acquire shared", client.try_acquire(&shared, &owner, LONG_TTL)).await
                {
                    assert!(bounded("release shared", client.release(&shared, &owner)).await.was_held);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("every call answered within the bound");
    }
}

/// Point 5: a client that watches a key and then finds it held — what a waiter does — hears
/// of its release promptly (waiters rely on it for speed), and keeps hearing later ones. (A
/// store may tell only such clients: one that watches without asking may hear nothing.)
pub async fn a_watch_hears_a_release_made_after_it(store: &dyn Store) {
    if !requires(store, "release notices", store.features().release_notices) {
        return;
    }
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("watched");
    let mut watch = watch(&*b, &key, "b watches").await;
    for round in 0..2 {
        acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "free");
        held(bounded("b waits", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "a holds it");
        assert!(bounded("a releases", a.release(&key, "owner-a")).await.was_held);
        let heard = tokio::time::timeout(MARGIN, watch.released()).await;
        let notice =
            heard.unwrap_or_else(|_| panic!("round {round}: no notice of the release within {MARGIN:?}"));
        // b is done waiting: it gives back what it may have been handed, and leaves the line.
        let handed = bounded("b lets go", b.release(&key, "owner-b")).await.was_held;
        if let ReleaseNotice::Granted { owner, .. } = &notice {
            assert_eq!((&**owner, handed), ("owner-b", true), "round {round}: handed to b: {notice:?}");
        }
        assert!(store.is_free("watched").await, "round {round}: nobody holds it");
    }
}

/// Point 6: a release hands the key to the first owner waiting in line (one that watches and
/// was told `Held` with a `newest_token`), tells it with a newer token, and says that others
/// waited; that owner's next attempt finds the key its own, with a newer token still.
pub async fn a_release_hands_the_key_to_the_first_owner_in_line(store: &dyn Store) {
    if !requires(store, "hand-off", store.features().handoff) {
        return;
    }
    let (a, b, c) = (store.client().await, store.client().await, store.client().await);
    let key = store.full_key("line");
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "free");
    let mut b_watch = watch(&*b, &key, "b watches").await;
    let (_, b_saw) = held(bounded("b asks", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b in line");
    let b_saw = b_saw.expect("a watching owner told Held is in line: newest_token is Some");
    let mut c_watch = watch(&*c, &key, "c watches").await;
    let (_, c_saw) = held(bounded("c asks", c.try_acquire(&key, "owner-c", LONG_TTL)).await, "c in line");
    assert!(c_saw.is_some(), "c is in line too");

    let released = bounded("a releases", a.release(&key, "owner-a")).await;
    assert!(released.was_held && released.others_waiting, "{released:?}");
    let (owner, handed) = next_grant(&mut b_watch, "owner-b", "b is handed the key").await;
    assert_eq!(owner, "owner-b", "the first in line gets it");
    assert!(handed > b_saw, "the hand-off's token {handed} is newer than b's last answer saw ({b_saw})");
    assert!(store.is_held("line").await);
    if let Some(stored) = store.owner("line").await {
        assert_eq!(stored.as_deref(), Some("owner-b"), "the store holds the key for b");
    }

    let again = acquired(bounded("b asks again", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b's own");
    assert!(again > handed, "asking again gives a new token: {again} after {handed}");
    let released = bounded("b releases", b.release(&key, "owner-b")).await;
    assert!(released.was_held && released.others_waiting, "{released:?}");
    let (owner, handed) = next_grant(&mut c_watch, "owner-c", "c is handed the key").await;
    assert_eq!((owner.as_str(), handed > again), ("owner-c", true), "c next, with a newer token");
    let released = bounded("c releases", c.release(&key, "owner-c")).await;
    assert!(released.was_held && !released.others_waiting, "nobody left in line: {released:?}");
    assert!(store.is_free("line").await, "freed, not handed to anyone");
}

/// Point 6: a release by an owner that is in line but does not hold the key takes it out of
/// line: the holder's release then frees the key instead of handing it over.
pub async fn a_release_takes_its_owner_out_of_line(store: &dyn Store) {
    if !requires(store, "hand-off", store.features().handoff) {
        return;
    }
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("withdrawn");
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "free");
    let _b_watch = watch(&*b, &key, "b watches").await;
    let (_, in_line) = held(bounded("b asks", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b");
    assert!(in_line.is_some(), "b is in line");
    assert!(!bounded("b withdraws", b.release(&key, "owner-b")).await.was_held, "b never held it");
    let released = bounded("a releases", a.release(&key, "owner-a")).await;
    assert!(released.was_held && !released.others_waiting, "nobody left in line: {released:?}");
    assert!(store.is_free("withdrawn").await, "freed, not handed to the owner that withdrew");
}

/// Point 6: an owner whose attempt took the key is out of line. Should it lose the key (deleted
/// behind its back) and another holder release it moments later, the key is freed, not handed
/// back to it: that would give it the key again without its ever seeing that another owner
/// held it in between (its renewals would all have succeeded).
pub async fn an_owner_whose_attempt_took_the_key_is_out_of_line(store: &dyn Store) {
    if !requires(store, "hand-off", store.features().handoff) {
        return;
    }
    let (a, b, c) = (store.client().await, store.client().await, store.client().await);
    let key = store.full_key("taken");
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "free");
    let _b_watch = watch(&*b, &key, "b watches").await;
    let (_, in_line) = held(bounded("b asks", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b");
    assert!(in_line.is_some(), "b is in line");
    store.delete("taken").await;
    acquired(bounded("b asks again", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "a's was deleted");
    store.delete("taken").await;
    acquired(bounded("c takes it", c.try_acquire(&key, "owner-c", LONG_TTL)).await, "b's was deleted");
    let released = bounded("c releases", c.release(&key, "owner-c")).await;
    assert!(released.was_held && !released.others_waiting, "nobody is in line: {released:?}");
    assert!(store.is_free("taken").await, "handed back to b, whose attempt had taken the key");
}

/// Point 6: an owner in line that stops asking (a crashed waiter) is forgotten within five
/// [`WAITER_RECHECK`]s: a release after that does not hand it the key.
pub async fn an_owner_that_stopped_asking_is_not_handed_the_key(store: &dyn Store) {
    if !requires(store, "hand-off", store.features().handoff) {
        return;
    }
    let (a, b) = (store.client().await, store.client().await);
    let key = store.full_key("forgotten");
    acquired(bounded("a takes it", a.try_acquire(&key, "owner-a", LONG_TTL)).await, "free");
    let _b_watch = watch(&*b, &key, "b watches").await;
    let (_, in_line) = held(bounded("b asks", b.try_acquire(&key, "owner-b", LONG_TTL)).await, "b");
    assert!(in_line.is_some(), "b is in line");
    // b never asks again. Give the store every chance to (wrongly) remember it.
    tokio::time::sleep(WAITER_RECHECK * 5 + MARGIN).await;
    let released = bounded("a releases", a.release(&key, "owner-a")).await;
    assert!(released.was_held, "{released:?}");
    assert!(store.is_free("forgotten").await, "handed to an owner that stopped asking long ago");
}
