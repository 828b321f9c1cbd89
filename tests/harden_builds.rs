//! `--harden` on C programs built the four ways programs ship (issue 15): clang -O0, clang -O2,
//! -O2 + `wasm-opt -O2` (names kept), and the same stripped of names, producers and DWARF
//! (`*.O2.wasmopt.stripped`). Each correct program prints exactly what the original prints;
//! each bug stops with its message in every build where the pass applies; where a pass cannot
//! establish what it needs, the report says why in one line.

mod common;

use common::{Outcome, fixture, run_wasi};
use wasmfix::diag::OnError;
use wasmfix::passes::{PassOptions, PassReport};

/// The four builds, as fixture name suffixes.
const BUILDS: &[&str] = &["O0", "O2", "O2.wasmopt", "O2.wasmopt.stripped"];

/// `passes` (a registry list, or `--harden` for the harden pipeline) over `input`.
fn rewrite(input: &[u8], passes: &str) -> (Vec<u8>, Vec<PassReport>) {
    rewrite_with(input, passes, PassOptions::default())
}

/// [`rewrite`] with `options` (`harden` is set for `--harden`).
fn rewrite_with(input: &[u8], passes: &str, options: PassOptions) -> (Vec<u8>, Vec<PassReport>) {
    let (list, options) = if passes == "--harden" {
        let list = wasmfix::passes::harden_pipeline()
            .into_iter()
            .map(|n| wasmfix::passes::find(n).unwrap())
            .collect();
        let options = PassOptions {
            harden: true,
            ..options
        };
        (list, options)
    } else {
        (common::passes(passes), options)
    };
    let out = wasmfix::pipeline::run(input, &list, &options)
        .unwrap_or_else(|f| panic!("{passes} failed: {f}"));
    (out.bytes, out.reports)
}

fn report_mode() -> PassOptions {
    PassOptions {
        on_error: OnError::Report,
        ..Default::default()
    }
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

/// A module linked with `--global-base=512` and packed by wasm-opt: its lowest segment (560)
/// lies below wasm-ld's default global base, and statics lie below it (from 512). Neither
/// 1024 nor the lowest segment is certain, so the null page is not checked (it was taken as
/// `[0, 560)` and the correct program trapped), and the program runs as before.
#[test]
fn a_non_default_global_base_leaves_the_null_page_unchecked() {
    let original = fixture("statics.gb512.O2.wasmopt.wasm");
    assert!(lowest_segment(&original) < 1024);
    for passes in ["bounds", "--harden"] {
        let (fixed, reports) = rewrite(&original, passes);
        let summary = &report(&reports, "bounds").summary;
        assert!(!summary.contains('\n'), "{summary}");
        assert!(
            summary.contains(
                "null page not checked: cannot establish where the statics start: the lowest \
                 data segment (560) lies below wasm-ld's default global base"
            ),
            "{passes}: {summary}"
        );
        for case in ["a", "w"] {
            let before = run_wasi(&original, &[case]);
            assert_eq!(before.outcome, Outcome::Exit(0), "{case}: {before:?}");
            assert_eq!(run_wasi(&fixed, &[case]), before, "{passes} {case}");
        }
    }
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

/// Issue 15, part 4: wasi-libc before WebAssembly/wasi-libc#506 was fixed writes the 0 of
/// `__secs_to_zone`'s `oppoff` out-parameter through the NULL that `__localtime_r` passes, on
/// every `localtime` call. By default (stop mode) a store of the constant zero into the null
/// page does not stop the program (it cannot change what the page holds); report mode prints it
/// once and goes on. The program calls localtime three times.
#[test]
fn localtime_runs_to_the_end_and_report_mode_prints_the_libc_null_write_once() {
    for build in BUILDS {
        let original = fixture(&format!("harden.{build}.wasm"));
        let before = run_wasi(&original, &["localtime"]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{build}");
        assert_eq!(before.stdout.lines().count(), 3, "{build}: {before:?}");
        let (fixed, _) = rewrite(&original, "--harden");
        assert_eq!(run_wasi(&fixed, &["localtime"]), before, "{build} --harden");

        let (fixed, reports) = rewrite_with(&original, "--harden", report_mode());
        let after = run_wasi(&fixed, &["localtime"]);
        assert_eq!(after.outcome, Outcome::Exit(0), "{build}: {after:?}");
        assert_eq!(
            after.stdout, before.stdout,
            "{build}: the program goes on unchanged"
        );
        match *build {
            // No name section and no producers: the null page is not checked (the report
            // says why).
            "O2.wasmopt.stripped" => {
                assert!(
                    report(&reports, "bounds")
                        .summary
                        .contains("null page not checked"),
                    "{}",
                    report(&reports, "bounds").summary
                );
                assert_eq!(after.stderr, "", "{build}");
            }
            // wasm-opt inlined `__secs_to_zone` (with the NULL it is given): the store is now
            // `i32.const 0; i32.const 0; i32.store` in its caller.
            "O2.wasmopt" => {
                assert_eq!(
                    after.stderr.lines().count(),
                    1,
                    "{build}: printed once: {after:?}"
                );
                assert!(
                    after
                        .stderr
                        .starts_with("wasmfix: null pointer dereference at address 0x0 in "),
                    "{after:?}"
                );
            }
            _ => assert_eq!(
                after.stderr,
                "wasmfix: null pointer dereference at address 0x0 in __secs_to_zone\n",
                "{build}: printed once"
            ),
        }
    }
}

/// Report mode: each bug prints its message and the program goes on to its end; correct
/// programs print exactly what the original prints, and nothing on stderr.
#[test]
fn report_mode_prints_each_violation_and_goes_on() {
    let long = "A".repeat(64);
    for build in ["O0", "O2", "O2.wasmopt"] {
        let original = fixture(&format!("harden.{build}.wasm"));
        let (fixed, reports) = rewrite_with(&original, "--harden", report_mode());
        for pass in ["bounds", "stack-canary"] {
            assert!(
                report(&reports, pass).summary.contains("report mode"),
                "{pass}"
            );
        }
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["null"],
                &["wasmfix: null pointer dereference at address 0x8 in "],
            ),
            (
                &["literal"],
                &["wasmfix: write to read-only data at address 0x"],
            ),
            (
                &["login", &long],
                &["wasmfix: stack buffer overflow in check_user\n"],
            ),
            (&["role", &long], &["wasmfix: stack buffer overflow in "]),
            (
                &["heap", "28"],
                &["wasmfix: heap buffer overflow: block of 16 bytes at 0x"],
            ),
            (&["doublefree"], &["wasmfix: double free of block at 0x"]),
        ];
        for (args, messages) in cases {
            let after = run_wasi(&fixed, args);
            assert_eq!(
                after.outcome,
                Outcome::Exit(0),
                "{build} {args:?}: {after:?}"
            );
            assert!(
                !after.stdout.is_empty(),
                "{build} {args:?}: goes on to its end"
            );
            for m in *messages {
                assert!(after.stderr.starts_with(m), "{build} {args:?}: {after:?}");
            }
        }
        // What the original prints, for the bugs whose effect does not depend on the layout.
        for args in [
            &["null"][..],
            &["literal"],
            &["heap", "28"],
            &["doublefree"],
        ] {
            assert_eq!(
                run_wasi(&fixed, args).stdout,
                run_wasi(&original, args).stdout,
                "{build} {args:?}"
            );
        }
        for args in [
            &["sort", "3000"][..],
            &["hash", "3000"],
            &["recurse", "300"],
            &["aligned"],
            &["role", "bob"],
        ] {
            assert_eq!(
                run_wasi(&fixed, args),
                run_wasi(&original, args),
                "{build} {args:?}"
            );
        }
    }
}

/// `--harden-allow FUNC` leaves a function's accesses and frames unchecked (by name, or by
/// index where there are no names); an unknown name is a warning.
#[test]
fn harden_allow_suppresses_checks_in_a_function() {
    let original = fixture("harden.O0.wasm");
    let allow = |names: &[&str]| PassOptions {
        harden_allow: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let (fixed, reports) = rewrite_with(&original, "--harden", allow(&["case_null", "nosuch"]));
    assert_eq!(run_wasi(&fixed, &["null"]), run_wasi(&original, &["null"]));
    // Other functions are still checked.
    assert!(
        run_wasi(&fixed, &["literal"])
            .stderr
            .starts_with("wasmfix: write to read-only")
    );
    let bounds = report(&reports, "bounds");
    assert!(
        bounds
            .summary
            .contains("1 functions allowed (--harden-allow)"),
        "{}",
        bounds.summary
    );
    assert_eq!(
        bounds.warnings,
        ["--harden-allow nosuch: the module has no function of that name or index"]
    );
    // stack-canary: the overflowing function's frame is not protected; its caller's still is,
    // and stops the program when it returns.
    let long = "A".repeat(64);
    let (fixed, reports) = rewrite_with(&original, "--harden", allow(&["copy_name"]));
    let after = run_wasi(&fixed, &["role", &long]);
    assert!(
        after
            .stderr
            .starts_with("wasmfix: stack buffer overflow in case_role"),
        "{after:?}"
    );
    assert!(
        report(&reports, "stack-canary")
            .summary
            .contains("1 allowed (--harden-allow)"),
        "{}",
        report(&reports, "stack-canary").summary
    );
    // By index, in a build without names: the function the message names.
    let stripped = fixture("harden.O2.wasmopt.stripped.wasm");
    let (fixed, _) = rewrite(&stripped, "--harden");
    let stopped = run_wasi(&fixed, &["login", &long]);
    let index = stopped
        .stderr
        .strip_prefix("wasmfix: stack buffer overflow in function ")
        .and_then(|rest| rest.trim().parse::<u32>().ok())
        .unwrap_or_else(|| panic!("{stopped:?}"));
    let (fixed, _) = rewrite_with(&stripped, "--harden", allow(&[&index.to_string()]));
    let after = run_wasi(&fixed, &["login", &long]);
    assert!(
        !after.stderr.contains(&format!("in function {index}\n")),
        "{after:?}"
    );
}

/// The CLI spells the mode as a sanitizer user expects and rejects a wrong one (exit 2).
#[test]
fn harden_mode_on_the_command_line() {
    let path = common::repo().join("tests/fixtures/wasm/harden.O2.wasm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let run = common::wasmfix()
        .arg(&path)
        .args([
            "--harden",
            "--harden-mode",
            "report",
            "--harden-allow",
            "main",
            "-v",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let after = run_wasi(&std::fs::read(&out).unwrap(), &["localtime"]);
    assert_eq!(after.outcome, Outcome::Exit(0));
    assert_eq!(
        after.stderr,
        "wasmfix: null pointer dereference at address 0x0 in __secs_to_zone\n"
    );
    let wrong = common::wasmfix()
        .arg(&path)
        .args(["--harden", "--harden-mode", "continue", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
}
