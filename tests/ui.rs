//! `#[distributed_lock]` at compile time.
//!
//! `ui/pass/*.rs` must compile (and their `main` runs); `ui/fail/*.rs` must fail to compile
//! with exactly the errors in the `.stderr` beside each. Those files are what users read: after
//! changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test -p dlock-tests --test ui` and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
