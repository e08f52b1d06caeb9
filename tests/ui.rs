//! `#[distributed_lock]` at compile time.
//!
//! `ui/pass/*.rs` must compile under `#![deny(warnings)]` (and their `main` runs); `ui/fail/*.rs`
//! must fail to compile with exactly the errors in the `.stderr` beside each. Those files are
//! what users read: after changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test -p dlock-tests --test ui` and read the diff.
//!
//! Every pass case is also an `[[example]]` of this package, so that
//! `cargo clippy --workspace --all-targets -- -D warnings` shows that the expansion draws no
//! clippy warning either; [`every_pass_case_is_an_example`] keeps that list complete.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}

#[test]
fn every_pass_case_is_an_example() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui/pass");
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .unwrap_or_else(|err| panic!("reading tests/Cargo.toml: {err}"));
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {dir}: {err}"));
    let mut missing = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rs") else { continue };
        let example = format!("[[example]]\nname = \"ui_pass_{stem}\"\npath = \"ui/pass/{name}\"");
        if !manifest.contains(&example) {
            missing.push(example);
        }
    }
    assert!(missing.is_empty(), "add to the end of tests/Cargo.toml:\n\n{}", missing.join("\n\n"));
}
