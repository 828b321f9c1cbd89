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
        // One 80 KiB frame, larger than the whole 64 KiB stack. The frame reported is the
        // function's whole frame at the failing write: exactly the 80 KiB, plus the caller's
        // frame where wasm-opt inlined `bigframe` into it.
        let after = run_wasi(&guarded, &["bigframe"]);
        let frame: u32 = after
            .stderr
            .split("(frame ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{variant}: no frame size in {:?}", after.stderr));
        let extra = if variant.ends_with("wasmopt") { 256 } else { 0 };
        assert!(
            (81920..=81920 + extra).contains(&frame),
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

/// Relocation: fixtures linked by clang-19/lld-19 with `-Wl,--emit-relocs` come out stack-first,
/// behave identically at safe depths and trap where the original corrupted its data.
#[test]
fn modules_with_relocations_are_moved_stack_first() {
    for variant in ["O0.relocs", "O2.relocs"] {
        let original = fixture(&format!("stack.{variant}.wasm"));
        let out = wasmfix::pipeline::run(&original, &common::passes("stack"), &Default::default())
            .unwrap();
        assert!(
            out.reports[0]
                .summary
                .starts_with("moved the stack to [0, 65536)"),
            "{}",
            out.reports[0].summary
        );
        let (module, facts) = wasmfix::pipeline::load(&out.bytes).unwrap();
        let region = facts.stack.as_ref().unwrap();
        assert_eq!(
            region.layout,
            wasmfix::facts::StackLayout::StackFirst,
            "{variant}: {}",
            region.how
        );
        assert!(module.custom("linking").is_none() && module.custom("reloc.CODE").is_none());
        let inspect = wasmfix::inspect::text("x.wasm", &module, &facts);
        assert!(inspect.contains("stack first"), "{inspect}");
        for args in [
            &["recurse", "5"][..],
            &["vla", "1000"],
            &["legal", "3000"],
            &["calls", "1000"],
        ] {
            assert_eq!(
                run_wasi(&original, args),
                run_wasi(&out.bytes, args),
                "{variant} {args:?}"
            );
        }
        for args in [&["recurse", "18"][..], &["vla", "70000"]] {
            let before = run_wasi(&original, args);
            assert!(
                !before.stdout.contains(TABLE),
                "the original corrupts its data: {}",
                before.stdout
            );
            let after = run_wasi(&out.bytes, args);
            assert!(
                matches!(after.outcome, Outcome::Trap(_)) && after.stdout.is_empty(),
                "{variant} {args:?}: {after:?}"
            );
        }
    }
}

/// The same fixture after wasm-opt has stale relocations: `stack-first` refuses with the
/// reason, and the default pipeline guards instead.
#[test]
fn stale_relocations_are_refused_and_guarded_by_default() {
    let path = common::repo().join("tests/fixtures/wasm/stack.O2.relocs.wasmopt.wasm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let refused = common::wasmfix()
        .arg(&path)
        .args(["--passes", "stack-first", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("relocations do not match the code") && stderr.contains("before wasm-opt"),
        "{stderr}"
    );
    assert!(!out.exists());

    let original = fixture("stack.O2.relocs.wasmopt.wasm");
    let fixed =
        wasmfix::pipeline::run(&original, &common::passes("stack"), &Default::default()).unwrap();
    assert!(
        fixed.reports[0]
            .summary
            .contains("checks every stack-pointer write"),
        "{}",
        fixed.reports[0].summary
    );
    let after = run_wasi(&fixed.bytes, &["recurse", "18"]);
    assert!(
        after.stderr.starts_with("wasmfix: stack overflow in "),
        "{after:?}"
    );
}

#[test]
fn modules_without_relocations_are_refused_by_stack_first() {
    let original = fixture("stack.O2.wasm");
    let err = wasmfix::pipeline::run(
        &original,
        &common::passes("stack-first"),
        &Default::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("-Wl,--emit-relocs"), "{err}");
}
