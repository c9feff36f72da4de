//! Compile tests for `#[cached]` (trybuild).
//!
//! `ui/pass/*.rs` must compile and run; `ui/fail/*.rs` must fail to compile with exactly the
//! diagnostics in the `.stderr` file next to them (one error per file, named after it, plus
//! `several-errors.rs`, which shows that all errors of one attribute are reported together).
//! After an intended change to a message, regenerate the files with
//! `TRYBUILD=overwrite cargo test -p cache-tests --test ui` and read every diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
