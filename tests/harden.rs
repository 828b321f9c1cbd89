//! `--harden` on the C fixtures (tests/fixtures/c/harden.c), every build: each memory bug that
//! the original runs silently (exit 0, wrong output) stops with its message, a trap and no
//! wrong output; each correct program prints exactly what the original prints.

mod common;

use common::{Outcome, Run, fixture, run_wasi};

const VARIANTS: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt", "O2.stripped"];

/// The fixture build `variant` rewritten by the `--harden` pipeline.
fn hardened(variant: &str) -> (Vec<u8>, Vec<u8>, Vec<wasmfix::passes::PassReport>) {
    let original = fixture(&format!("harden.{variant}.wasm"));
    let passes: Vec<_> = wasmfix::passes::harden_pipeline()
        .into_iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    let out = wasmfix::pipeline::run(&original, &passes, &options)
        .unwrap_or_else(|f| panic!("{variant}: --harden failed: {f}"));
    (original, out.bytes, out.reports)
}

/// Only `pass` over the build `variant`.
fn only(variant: &str, pass: &str) -> Vec<u8> {
    common::rewrite(&fixture(&format!("harden.{variant}.wasm")), pass)
}

fn long_name() -> String {
    "A".repeat(48)
}

/// A run that stopped: trapped, printed nothing on stdout, and `message` on stderr.
fn assert_stopped(run: &Run, message: &str, what: &str) {
    assert!(
        matches!(run.outcome, Outcome::Trap(_)),
        "{what}: should trap: {run:?}"
    );
    assert!(run.stdout.is_empty(), "{what}: wrong output: {run:?}");
    assert!(
        run.stderr.starts_with(message),
        "{what}: expected `{message}…` on stderr: {run:?}"
    );
}

#[test]
fn correct_programs_behave_identically() {
    for variant in VARIANTS {
        let (original, fixed, _) = hardened(variant);
        for args in [
            &["sort", "3000"][..],
            &["hash", "3000"],
            &["recurse", "300"],
            &["aligned"],
            &["login", "bob"],
            &["login", "admin"],
            &["heap", "16"],
        ] {
            let before = run_wasi(&original, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {args:?}");
            assert_eq!(before, run_wasi(&fixed, args), "{variant} {args:?}");
        }
    }
}

#[test]
fn stack_buffer_overflow_stops_in_the_overflowing_function() {
    let name = long_name();
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["login", &name]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        assert_eq!(
            before.stdout, "ACCESS GRANTED\n",
            "{variant}: the wrong decision"
        );
        // Without names the function is reported by its index.
        let function = if *variant == "O2.stripped" {
            "function "
        } else {
            "check_user"
        };
        let message = format!("wasmfix: stack buffer overflow in {function}");
        for (what, fixed) in [
            ("--harden", hardened(variant).1),
            ("stack-canary", only(variant, "stack-canary")),
        ] {
            let after = run_wasi(&fixed, &["login", &name]);
            assert_stopped(&after, &message, &format!("{variant} {what}"));
        }
    }
}

/// A frame overrun that stays inside the frame (a shorter name) is not the canary's business:
/// the program is unchanged, whatever it does.
#[test]
fn overruns_inside_the_frame_do_not_trip_the_canary() {
    for variant in ["O2", "O2.wasmopt"] {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let fixed = only(variant, "stack-canary");
        let args = ["login", "AAAAAAAAAAAAAAA"];
        assert_eq!(run_wasi(&original, &args), run_wasi(&fixed, &args));
    }
}

#[test]
fn a_second_run_changes_nothing() {
    let (_, fixed, _) = hardened("O2");
    let passes: Vec<_> = wasmfix::passes::harden_pipeline()
        .into_iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    let again = wasmfix::pipeline::run(&fixed, &passes, &options).unwrap();
    assert_eq!(again.rewritten_functions, 0);
    for r in &again.reports {
        if wasmfix::passes::HARDEN_PASSES.contains(&r.pass) {
            assert!(r.summary.contains("already applied"), "{}", r.summary);
        }
    }
}

/// The builds that keep their names: heap-canary finds the allocator there.
const NAMED: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt"];

#[test]
fn heap_overflows_stop_at_free_with_the_block_size() {
    for variant in NAMED {
        let original = fixture(&format!("harden.{variant}.wasm"));
        // 28 bytes stay inside the allocator's slack: only a redzone at the exact size sees them.
        for n in ["28", "32", "48"] {
            let before = run_wasi(&original, &["heap", n]);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} heap {n}");
            assert_eq!(before.stdout, "heap ok\n", "{variant} heap {n}");
            for (what, fixed) in [
                ("--harden", hardened(variant).1),
                ("heap-canary", only(variant, "heap-canary")),
            ] {
                let after = run_wasi(&fixed, &["heap", n]);
                assert_stopped(
                    &after,
                    "wasmfix: heap buffer overflow: block of 16 bytes at 0x",
                    &format!("{variant} {what} heap {n}"),
                );
                assert!(
                    after.stderr.contains(" written past its end\n"),
                    "{after:?}"
                );
            }
        }
    }
}

#[test]
fn double_free_is_reported() {
    for variant in NAMED {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["doublefree"]);
        assert_eq!(before.stdout, "double free accepted\n", "{variant}");
        let after = run_wasi(&hardened(variant).1, &["doublefree"]);
        assert_stopped(&after, "wasmfix: double free of block at 0x", variant);
    }
}

/// Without a name section the allocator cannot be found: `heap-canary` alone refuses with the
/// reason (exit 2, nothing written), `--harden` warns and applies the other passes.
#[test]
fn stripped_modules_are_refused_by_heap_canary_and_warned_about_by_harden() {
    let path = common::repo().join("tests/fixtures/wasm/harden.O2.stripped.wasm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let refused = common::wasmfix()
        .arg(&path)
        .args(["--passes", "heap-canary", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("heap-canary: cannot find `malloc`") && stderr.contains("name section"),
        "{stderr}"
    );
    assert!(!out.exists());

    let hardened = common::wasmfix()
        .arg(&path)
        .args(["--harden", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(hardened.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&hardened.stderr);
    assert!(
        stderr.contains("heap-canary: warning: heap blocks are not checked: cannot find `malloc`"),
        "{stderr}"
    );
    let fixed = std::fs::read(&out).unwrap();
    let after = run_wasi(&fixed, &["heap", "48"]);
    assert_eq!(
        after.stdout, "heap ok\n",
        "not checked, as the warning says"
    );
}

#[test]
fn null_writes_and_literal_writes_stop_at_the_access() {
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["null"]);
        assert_eq!(
            before.stdout, "wrote through null, read back 42\n",
            "{variant}"
        );
        let before = run_wasi(&original, &["literal"]);
        assert_eq!(before.stdout, "Jello\n", "{variant}");
        for (what, fixed) in [
            ("--harden", hardened(variant).1),
            ("bounds", only(variant, "bounds")),
        ] {
            let after = run_wasi(&fixed, &["null"]);
            assert_stopped(
                &after,
                "wasmfix: null pointer dereference at address 0x8 in ",
                &format!("{variant} {what} null"),
            );
            let after = run_wasi(&fixed, &["literal"]);
            if *variant == "O2.stripped" {
                // No data segment names: read-only data is unknown and not checked.
                assert_eq!(after.stdout, "Jello\n", "{variant} {what}");
            } else {
                assert_stopped(
                    &after,
                    "wasmfix: write to read-only data at address 0x",
                    &format!("{variant} {what} literal"),
                );
            }
        }
    }
}

#[test]
fn bounds_says_what_it_cannot_check() {
    let out = wasmfix::pipeline::run(
        &fixture("harden.O2.stripped.wasm"),
        &common::passes("bounds"),
        &Default::default(),
    )
    .unwrap();
    assert!(
        out.reports[0]
            .summary
            .contains("read-only data not checked: no name section"),
        "{}",
        out.reports[0].summary
    );
    // A stack-first module has no null page, and without names nothing is left to check.
    let out = wasmfix::pipeline::run(
        &fixture("layout.stackfirst.wasm"),
        &common::passes("bounds"),
        &Default::default(),
    )
    .unwrap();
    assert!(
        out.reports[0]
            .summary
            .contains("no null page: the stack lies at address 0"),
        "{}",
        out.reports[0].summary
    );
}
