//! The stack passes on the C fixtures (tests/fixtures/c/stack.c): at safe depths the output is
//! identical before and after; at depths that corrupt data the original exits 0 with wrong
//! output, and the guarded module stops with the overflow message and no wrong output; a deep
//! but legal recursion never trips the guard.

mod common;

use common::{Outcome, fixture, rewrite, run_wasi};

const VARIANTS: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt", "O2.stripped"];

/// A correct run prints the whole victim table; a corrupted one prints `(null)` entries.
const TABLE: &str = "table: alpha beta gamma delta epsilon zeta eta theta";

#[test]
fn safe_depths_behave_identically() {
    for variant in VARIANTS {
        let original = fixture(&format!("stack.{variant}.wasm"));
        let guarded = rewrite(&original, "stack");
        for args in [
            &["recurse", "5"][..],
            &["recurse", "12"],
            &["vla", "1000"],
            &["legal", "2000"],
            &["calls", "1000"],
        ] {
            let before = run_wasi(&original, args);
            let after = run_wasi(&guarded, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {args:?}");
            assert_eq!(before, after, "{variant} {args:?}");
        }
    }
}

#[test]
fn overflows_that_corrupt_data_stop_with_a_message() {
    for variant in VARIANTS {
        let original = fixture(&format!("stack.{variant}.wasm"));
        let guarded = rewrite(&original, "stack");
        for args in [&["recurse", "18"][..], &["vla", "70000"]] {
            let before = run_wasi(&original, args);
            assert_eq!(
                before.outcome,
                Outcome::Exit(0),
                "{variant} {args:?}: the original exits 0…"
            );
            assert!(
                !before.stdout.contains(TABLE),
                "…with a corrupted table: {}",
                before.stdout
            );
            let after = run_wasi(&guarded, args);
            assert!(
                matches!(after.outcome, Outcome::Trap(_)),
                "{variant} {args:?}: {after:?}"
            );
            assert!(after.stdout.is_empty(), "no wrong output: {}", after.stdout);
            assert!(
                after.stderr.starts_with("wasmfix: stack overflow in "),
                "{}",
                after.stderr
            );
            // wasm-opt inlines the overflowing function into its caller, which is then named.
            let function = match *variant {
                "O2.stripped" => "function ",
                v if v.ends_with("wasmopt") => "",
                _ => args[0],
            };
            assert!(
                after.stderr.contains(function),
                "{variant}: {}",
                after.stderr
            );
        }
        // One 80 KiB frame, larger than the whole 64 KiB stack.
        let after = run_wasi(&guarded, &["bigframe"]);
        assert!(
            after.stderr.contains("(frame 81920 bytes"),
            "{variant}: {}",
            after.stderr
        );
    }
}

#[test]
fn deep_legal_recursion_never_trips() {
    for variant in VARIANTS {
        let original = fixture(&format!("stack.{variant}.wasm"));
        let guarded = rewrite(&original, "stack-guard");
        // 4000 frames fit in the 64 KiB stack at every optimization level.
        let before = run_wasi(&original, &["legal", "4000"]);
        let after = run_wasi(&guarded, &["legal", "4000"]);
        assert_eq!(before.outcome, Outcome::Exit(0));
        assert_eq!(before, after, "{variant}");
    }
}

#[test]
fn stack_first_modules_are_left_alone_by_default() {
    let original = fixture("layout.stackfirst.wasm");
    let out =
        wasmfix::pipeline::run(&original, &common::passes("stack"), &Default::default()).unwrap();
    assert_eq!(out.rewritten_functions, 0);
    assert!(
        out.reports[0]
            .summary
            .contains("already placed before the data"),
        "{}",
        out.reports[0].summary
    );
}
