//! `--harden` on C programs built the four ways programs ship (issue 15): clang -O0, clang -O2,
//! -O2 + `wasm-opt -O2` (names kept), and the same stripped of names, producers and DWARF
//! (`*.O2.wasmopt.stripped`). Each correct program prints exactly what the original prints;
//! each bug stops with its message in every build where the pass applies; where a pass cannot
//! establish what it needs, the report says why in one line.

mod common;

use common::{Outcome, fixture, run_wasi};
use wasmfix::passes::{PassOptions, PassReport};

/// The four builds, as fixture name suffixes.
const BUILDS: &[&str] = &["O0", "O2", "O2.wasmopt", "O2.wasmopt.stripped"];

/// `passes` (a registry list, or `--harden` for the harden pipeline) over `input`.
fn rewrite(input: &[u8], passes: &str) -> (Vec<u8>, Vec<PassReport>) {
    let (list, options) = if passes == "--harden" {
        let list = wasmfix::passes::harden_pipeline()
            .into_iter()
            .map(|n| wasmfix::passes::find(n).unwrap())
            .collect();
        let options = PassOptions {
            harden: true,
            ..Default::default()
        };
        (list, options)
    } else {
        (common::passes(passes), PassOptions::default())
    };
    let out = wasmfix::pipeline::run(input, &list, &options)
        .unwrap_or_else(|f| panic!("{passes} failed: {f}"));
    (out.bytes, out.reports)
}

fn report<'r>(reports: &'r [PassReport], pass: &str) -> &'r PassReport {
    reports
        .iter()
        .find(|r| r.pass == pass)
        .unwrap_or_else(|| panic!("no {pass} report"))
}

/// The lowest address of memory 0's active data segments.
fn lowest_segment(bytes: &[u8]) -> u64 {
    let mut low = u64::MAX;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::DataSection(r) = payload.unwrap() {
            for d in r {
                if let wasmparser::DataKind::Active { offset_expr, .. } = d.unwrap().kind
                    && let Ok(wasmparser::Operator::I32Const { value }) =
                        offset_expr.get_operators_reader().read()
                {
                    low = low.min(value as u32 as u64);
                }
            }
        }
    }
    low
}

/// Bug 1 of issue 15: zero-initialized statics at the start of the data, which wasm-opt's
/// memory packing leaves out of the segments, so the lowest segment starts above them. bounds
/// took `[0, lowest segment)` for the null page and stopped this correct program with
/// `null pointer dereference at address 0x42e`.
#[test]
fn statics_below_the_lowest_data_segment_are_not_the_null_page() {
    for build in BUILDS {
        let original = fixture(&format!("statics.{build}.wasm"));
        // The shape: after wasm-opt the data no longer starts at the global base (1024).
        let low = lowest_segment(&original);
        if build.contains("wasmopt") {
            assert!(
                low > 1024,
                "{build}: lowest segment at {low}, not the bug's shape"
            );
        } else {
            assert_eq!(low, 1024, "{build}");
        }
        for args in [&["words", "3000"][..], &["mandel", "48"], &["all"]] {
            let before = run_wasi(&original, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{build} {args:?}");
            assert!(before.stdout.contains("checksum="), "{build} {before:?}");
            for passes in ["--harden", "bounds"] {
                let (fixed, _) = rewrite(&original, passes);
                assert_eq!(run_wasi(&fixed, args), before, "{build} {passes} {args:?}");
            }
        }
    }
}

/// The null page comes from what is certain: wasm-ld's default global base where the name
/// section or the producers identify wasm-ld; a stripped build without producers gets no null
/// check and the report says why (one line), instead of a guess from the lowest segment.
#[test]
fn the_null_page_ends_at_the_global_base_or_is_not_checked() {
    for build in BUILDS {
        let original = fixture(&format!("statics.{build}.wasm"));
        let (_, reports) = rewrite(&original, "bounds");
        let summary = &report(&reports, "bounds").summary;
        assert!(!summary.contains('\n'), "{summary}");
        if *build == "O2.wasmopt.stripped" {
            assert!(
                summary.contains(
                    "null page not checked: cannot establish where the statics start: no \
                     `__global_base`"
                ),
                "{build}: {summary}"
            );
        } else {
            assert!(
                summary.contains("null page [0, 1024) (wasm-ld's default global base"),
                "{build}: {summary}"
            );
        }
    }
    // `inspect` shows the fact and how it was found.
    let path = common::repo().join("tests/fixtures/wasm/statics.O2.wasmopt.wasm");
    let out = common::wasmfix()
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("global base: 1024 (no static below it: [0, 1024) is the null page; wasm-ld's default global base, the linker identified by"),
        "{text}"
    );
    let out = common::wasmfix()
        .args(["inspect", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["global_base"]["value"], 1024);
    assert_eq!(json["linker"]["value"], "wasm-ld");
}

/// A real null dereference is still caught in every build that keeps a name section or
/// producers (harden.c's `null` case), and in the build that keeps neither the report says
/// why it is not.
#[test]
fn null_dereferences_stop_where_the_global_base_is_known() {
    for build in ["O0", "O2", "O2.wasmopt", "O2.stripped"] {
        let original = fixture(&format!("harden.{build}.wasm"));
        let (fixed, _) = rewrite(&original, "bounds");
        let after = run_wasi(&fixed, &["null"]);
        assert!(
            matches!(after.outcome, Outcome::Trap(_)),
            "{build}: {after:?}"
        );
        assert!(
            after
                .stderr
                .starts_with("wasmfix: null pointer dereference at address 0x8 in "),
            "{build}: {after:?}"
        );
    }
    let original = fixture("harden.O2.wasmopt.stripped.wasm");
    let (fixed, reports) = rewrite(&original, "bounds");
    assert!(
        report(&reports, "bounds")
            .summary
            .contains("null page not checked: cannot establish where the statics start"),
        "{}",
        report(&reports, "bounds").summary
    );
    assert_eq!(run_wasi(&fixed, &["null"]), run_wasi(&original, &["null"]));
}

/// A run that stopped: trapped, printed nothing on stdout, and `message…` on stderr.
fn assert_stopped(run: &common::Run, message: &str, what: &str) {
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

/// Issue 15, bug 2a: `strcpy` of a long name into a 16-byte local of `copy_name` overwrites its
/// caller's `role` ("role=AAAA… ACCESS GRANTED"). clang keeps `copy_name` a function; wasm-opt
/// inlines it (and its caller, into `_start`) and keeps its frame as a nested opening that
/// stack-canary used to skip. Now the nested frame has its own canary.
#[test]
fn stack_overflow_into_an_inlined_callers_frame_stops_in_every_build() {
    let long = "A".repeat(64);
    for build in BUILDS {
        let original = fixture(&format!("harden.{build}.wasm"));
        let before = run_wasi(&original, &["role", &long]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{build}");
        assert!(
            before.stdout.ends_with(" ACCESS GRANTED\n") && before.stdout.starts_with("role=AAAA"),
            "{build}: the wrong decision: {before:?}"
        );
        let message = match *build {
            "O2.wasmopt" => {
                "wasmfix: stack buffer overflow in a nested frame of _start.command_export\n"
            }
            "O2.wasmopt.stripped" => {
                "wasmfix: stack buffer overflow in a nested frame of function "
            }
            _ => "wasmfix: stack buffer overflow in copy_name",
        };
        for passes in ["--harden", "stack-canary"] {
            let (fixed, reports) = rewrite(&original, passes);
            let after = run_wasi(&fixed, &["role", &long]);
            assert_stopped(&after, message, &format!("{build} {passes}"));
            if build.contains("wasmopt") {
                let summary = &report(&reports, "stack-canary").summary;
                assert!(
                    summary.contains(" nested frames (as inlining leaves them) in "),
                    "{summary}"
                );
            }
            for name in ["bob", "root", "AAAAAAAAAAAAAAA"] {
                let args = ["role", name];
                assert_eq!(
                    run_wasi(&fixed, &args),
                    run_wasi(&original, &args),
                    "{build} {passes} {args:?}"
                );
            }
        }
    }
}
