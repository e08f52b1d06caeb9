//! The backend conformance suite: the behaviour every [`LockBackend`](dlock::LockBackend)
//! must show, written once against a [`Store`], run for a backend by one line in a test binary:
//!
//! ```ignore
//! async fn redis_store(test: &str) -> RedisStore { RedisStore::shared(test).await }
//! dlock_tests::conformance_suite!(redis_store);
//! ```
//!
//! That expands to one `#[test]` per scenario, named `conformance::<file>::<scenario>`, each on
//! a fresh store from the constructor (called with the scenario's name) and a two-thread tokio
//! runtime of its own; the store's [`cleanup`](Store::cleanup) runs after a scenario passes.
//!
//! | file | what every backend must show |
//! |---|---|
//! | [`contract`] | the [`LockBackend`](dlock::LockBackend) contract itself, call by call: atomic acquire, increasing tokens, owner checks, leases that end, bounded calls, notices, hand-off |
//! | [`locking`] | a [`LockService`](dlock::LockService) over the backend: acquire and release, prefixes, errors, bad input, re-entrancy, cleanup of dropped guards |
//! | [`waiting`] | waiting for a held key: exclusion, timeouts, `wait(0)`, FIFO within a process, notices (and their absence), arrival order across clients |
//! | [`holding`] | holding a key: renewal, loss (deleted, expired, refused, unanswered), leaked and crashed holders |
//! | [`several_keys`] | `lock_all`: no deadlock, all or nothing, nothing left behind |
//! | [`attribute`] | `#[distributed_lock]` at run time |
//!
//! "Another process" in a scenario is another client from [`Store::client`] (through
//! [`Store::service`]): it contends in the store itself, not in dlock's in-process queue.
//! Scenarios that need something only some backends offer ([`Features`](crate::Features))
//! pass with a note ("skipped: …") on the others.
//!
//! The attribute scenarios register services under fixed names (`conformance:<scenario>`):
//! call [`conformance_suite!`](crate::conformance_suite) once per test binary.

pub mod attribute;
pub mod contract;
pub mod holding;
pub mod locking;
pub mod several_keys;
pub mod waiting;

use std::time::Duration;

use dlock::Error;

use crate::support::store::Store;

/// A ttl that does not run out during a scenario.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(10);
/// A wait that does not run out during a scenario.
pub(crate) const LONG_WAIT: Duration = Duration::from_secs(10);

/// One `#[test]` per conformance scenario, on the stores `store_ctor` makes: an
/// `async fn(&str) -> S` (`S: `[`Store`]) that is given the scenario's name.
///
/// ```no_run
/// async fn memory_store(test: &str) -> dlock_tests::MemoryStore {
///     dlock_tests::MemoryStore::new(test)
/// }
/// dlock_tests::conformance_suite!(memory_store);
/// # fn main() {}
/// ```
///
/// Once per test binary (see [`conformance`](crate::conformance)).
#[macro_export]
macro_rules! conformance_suite {
    ($store_ctor:path) => {
        /// Runs one scenario of `dlock_tests::conformance` on a fresh store of this binary's.
        fn __dlock_conformance(test: &'static str, scenario: impl AsyncFnOnce(&dyn $crate::Store)) {
            $crate::conformance::run(test, $store_ctor, scenario)
        }

        /// The backend conformance suite (`dlock_tests::conformance`) on this binary's store.
        mod conformance {
            $crate::__conformance_scenarios! { contract:
                an_acquire_takes_a_free_key_and_only_a_free_key,
                racing_acquires_have_one_winner,
                fencing_tokens_strictly_increase_per_key,
                release_and_renew_act_only_for_the_owner,
                an_owner_asking_for_a_key_it_holds_takes_it_again,
                a_lease_ends_at_its_ttl_unless_renewed,
                a_key_taken_again_gets_a_fresh_lease_of_its_ttl,
                an_ended_lease_is_not_renewed_or_released_by_its_owner,
                every_call_answers_promptly,
                a_watch_hears_a_release_made_after_it,
                a_release_hands_the_key_to_the_first_owner_in_line,
                a_release_takes_its_owner_out_of_line,
                an_owner_whose_attempt_took_the_key_is_out_of_line,
                an_owner_that_stopped_asking_is_not_handed_the_key,
            }
            $crate::__conformance_scenarios! { locking:
                acquire_and_release,
                fencing_tokens_strictly_increase_across_200_holders,
                invalid_input_is_rejected_before_any_backend_call,
                dropped_guard_is_released_in_the_background,
                aborted_task_releases_its_guard,
                key_prefix_is_applied_in_the_backend,
                guard_debug_shows_keys_token_and_state,
                timeout_error_names_the_key,
                timeout_error_key_is_the_full_key_as_documented,
                reentrant_in_scope_without_prefix,
                reentrant_in_scope_with_key_prefix,
            }
            $crate::__conformance_scenarios! { waiting:
                waiter_in_other_service_gets_in_only_after_release,
                waiter_in_same_service_gets_in_only_after_release,
                wait_expires_into_timeout_in_the_backend,
                wait_expires_into_timeout_in_the_local_queue,
                wait_zero_is_a_single_attempt,
                local_waiters_are_served_in_fifo_order,
                a_waiter_without_release_notices_gets_in_on_its_timer,
                spurious_release_notices_do_not_let_a_waiter_in,
                waiting_clients_are_served_in_arrival_order,
            }
            $crate::__conformance_scenarios! { holding:
                renewal_keeps_the_lock_past_its_ttl,
                no_renewal_after_release_or_drop,
                deleted_lock_is_reported_lost_and_release_says_so,
                refused_renewal_is_reported_lost_within_a_third_of_the_ttl,
                unanswered_renewal_is_reported_lost_before_the_lease_ends,
                expired_lease_lets_another_in_and_late_release_leaves_it_intact,
                leaked_guard_blocks_others_for_at_most_ttl,
                leaked_guard_blocks_same_service_for_at_most_ttl,
                abandoned_lease_blocks_others_for_at_most_ttl,
            }
            $crate::__conformance_scenarios! { several_keys:
                lock_all_over_overlapping_sets_neither_deadlocks_nor_overlaps,
                lock_all_is_all_or_nothing,
                abandoned_lock_all_frees_the_keys_it_took,
                lock_all_does_not_hand_out_keys_that_expired_while_waiting,
            }
            $crate::__conformance_scenarios! { attribute:
                body_runs_with_the_lock_held_and_a_fresh_fencing_token,
                concurrent_calls_on_one_key_take_turns,
                call_waits_while_another_process_holds_the_key,
                calls_on_different_keys_run_in_parallel,
                released_after_ok_and_after_err,
                released_after_the_body_panics,
                released_after_the_caller_drops_the_future,
                dropping_a_call_that_waits_for_its_second_key_frees_the_first,
                busy_key_times_out_without_running_the_body,
                lock_errors_name_the_full_key_as_documented,
                spawned_call_runs_under_the_lock,
                several_keys_are_all_held_and_all_released,
                nested_call_on_the_held_key_is_reentrant,
                no_renewal_cancels_a_body_that_outlives_its_ttl,
                keys_from_patterns_fields_and_self_are_exact,
                foreign_error_types_carry_the_timeout,
            }
        }
    };
}

/// One module of [`conformance_suite!`]'s tests: a `#[test]` per scenario of
/// `dlock_tests::conformance::$module`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_scenarios {
    ($module:ident: $($scenario:ident),* $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    super::super::__dlock_conformance(
                        stringify!($scenario),
                        $crate::conformance::$module::$scenario,
                    );
                }
            )*
        }
    };
}

/// What each test of [`conformance_suite!`](crate::conformance_suite) does: on a two-thread
/// tokio runtime, make a store for `test` with `store`, run `scenario` on it, clean the store
/// up.
pub fn run<S: Store>(
    test: &'static str,
    store: impl AsyncFnOnce(&'static str) -> S,
    scenario: impl AsyncFnOnce(&dyn Store),
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the scenario");
    runtime.block_on(async move {
        let store = store(test).await;
        scenario(&store).await;
        store.cleanup().await;
    });
}

/// Whether `store` offers what a scenario needs (`offered`); if not, the scenario is skipped,
/// and says so.
pub(crate) fn requires(store: &dyn Store, what: &str, offered: bool) -> bool {
    if !offered {
        eprintln!("skipped: the {} store has no {what}", store.name());
    }
    offered
}

/// The `Error::Timeout` in `result` (its key and `waited`); panics on anything else.
pub(crate) fn assert_timeout(result: Result<dlock::LockGuard, Error>, what: &str) -> (String, Duration) {
    match result {
        Err(Error::Timeout { key, waited }) => (key, waited),
        Ok(guard) => panic!("{what}: expected Error::Timeout, got the lock: {guard:?}"),
        Err(err) => panic!("{what}: expected Error::Timeout, got {err:?} ({err})"),
    }
}
