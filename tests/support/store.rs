//! [`Store`]: one test's lock store, whatever the backend — the interface the conformance
//! suite is written against, and the one a new backend implements to get it.

use std::sync::Arc;

use dlock::backend::{BoxFuture, FullKey};
use dlock::{LockBackend, LockService, LockServiceBuilder};

use super::faulty::FaultyBackend;

/// What a store's backend offers beyond the required contract, so that the conformance suite
/// runs the scenarios that need it only where they apply (the others report that they were
/// skipped).
///
/// Build it with the fields that apply and `..Features::default()` (everything off), so that
/// a field added later does not break a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// [`LockBackend::watch_releases`] gives notices, so a waiter hears of a release at once
    /// (contract, point 5).
    pub release_notices: bool,
    /// A release hands the key to the first client waiting in line, and says so
    /// ([`ReleaseNotice::Granted`](dlock::backend::ReleaseNotice::Granted),
    /// [`ReleaseOutcome::others_waiting`](dlock::backend::ReleaseOutcome)) (contract, point 6).
    pub handoff: bool,
    /// Nothing but this test uses the store, so a key outside [`Store::prefix`] can be probed
    /// and must be free (a fresh in-process store: yes; a shared server: no).
    pub isolated: bool,
}

/// One test's lock store: makes independent clients of one backend (each "another process")
/// and looks inside it.
///
/// Made anew for every test by the store constructor a test binary hands to
/// [`conformance_suite!`](crate::conformance_suite); every key a test uses lives under
/// [`prefix`](Self::prefix), so tests sharing a server never meet.
///
/// The required methods are what a new backend's store writes; the provided ones build on
/// them (services, fault-injecting clients) or say what a store can show beyond
/// [`is_held`](Self::is_held) — by default, nothing.
pub trait Store: Send + Sync + 'static {
    /// The backend's name: `"memory"`, `"redis"`, …
    fn name(&self) -> &'static str;

    /// The key prefix of this test's services; unique per test.
    fn prefix(&self) -> &str;

    /// A new, independent client of the store: another process, as far as the store can tell
    /// (its own connections, its own notices).
    fn client(&self) -> BoxFuture<'_, Arc<dyn LockBackend>>;

    /// Whether `key` (without the prefix) is held in the store right now, seen from outside
    /// dlock.
    fn is_held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool>;

    /// Remove `key` (without the prefix) behind its holder's back, as an operator's delete or a
    /// failover that lost it would; panics if it was not held.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;

    /// What the backend offers beyond the required contract.
    fn features(&self) -> Features;

    /// Remove whatever the test left in the store.
    fn cleanup(&self) -> BoxFuture<'_, ()>;

    /// `key` as the backend stores it: the prefix, then `key`.
    fn full_key(&self, key: &str) -> FullKey {
        FullKey::new(self.prefix(), key)
    }

    /// Whether `key` (without the prefix) is free right now.
    fn is_free<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { !self.is_held(key).await })
    }

    /// A builder for a service over a new client, with the store's prefix.
    fn builder(&self) -> BoxFuture<'_, LockServiceBuilder> {
        Box::pin(async move { LockService::builder_from_arc(self.client().await).key_prefix(self.prefix()) })
    }

    /// A service over a new client ("another process"), with the store's prefix.
    fn service(&self) -> BoxFuture<'_, LockService> {
        Box::pin(async move { self.builder().await.build() })
    }

    /// A [`FaultyBackend`] over a new client: it records the calls made through it and
    /// injects the faults it is told to.
    fn faulty(&self) -> BoxFuture<'_, FaultyBackend> {
        Box::pin(async move { FaultyBackend::wrap(self.client().await) })
    }

    /// A service (with the store's prefix) over a [`faulty`](Self::faulty) client, and that
    /// client.
    fn faulty_service(&self) -> BoxFuture<'_, (LockService, FaultyBackend)> {
        Box::pin(async move {
            let faulty = self.faulty().await;
            let service =
                LockService::builder_from_arc(Arc::new(faulty.clone())).key_prefix(self.prefix()).build();
            (service, faulty)
        })
    }

    /// The owner token the store keeps for `key` (without the prefix): `Some(Some(owner))`,
    /// or `Some(None)` when nobody holds it — where the store can show owners. `None` (the
    /// default) when it cannot.
    fn owner<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Option<String>>> {
        let _ = key;
        Box::pin(async { None })
    }

    /// Every lock key held right now, prefix included, sorted — where the store can list them.
    /// `None` (the default) when it cannot.
    fn held_keys(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        Box::pin(async { None })
    }

    /// How many lock keys are held right now, where the store can tell. By default, the length
    /// of [`held_keys`](Self::held_keys).
    fn held_count(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async move { self.held_keys().await.map(|keys| keys.len()) })
    }

    /// For a store whose clients draw the fencing tokens of all its keys from one counter:
    /// that counter's value (0 before the first token). `None` (the default) for any other
    /// store.
    fn fencing_counter(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { None })
    }
}
