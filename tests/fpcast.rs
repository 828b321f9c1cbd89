//! fpcast on the C fixtures (tests/fixtures/c/fpcast.c), every build variant: each castable
//! case traps before and prints, after the pass, exactly what the correctly typed build prints;
//! null, wild and non-castable calls keep their traps. The fixed modules also run under node (V8).
//! The fixtures are WebAssembly 1.0 modules: by default fpcast appends its views to the table
//! itself and the output stays 1.0; with reference types enabled, shadow tables can be forced.
//! Both designs are checked.

mod common;

use common::{Outcome, fixture, rewrite, run_wasi};
use wasmfix::features::Feature;
use wasmfix::passes::fpcast::Design;

const VARIANTS: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt", "O2.stripped"];
const CASTS: &[&str] = &[
    "getter",
    "noargs",
    "missing",
    "void_as_int",
    "reverse",
    "mixed",
    "mixed-mismatch",
];
const KEEP_TRAPPING: &[&str] = &["null", "wild", "f64"];

/// wasm-opt replaced `op_void2` (reached only through a cast) with `unreachable` in these
/// builds: the cast cannot be repaired, wasmfix warns, and the call still traps.
const ERASED_BY_WASM_OPT: &[(&str, &str)] = &[
    ("O0.wasmopt", "mixed"),
    ("O0.wasmopt", "mixed-mismatch"),
    ("O2.wasmopt", "mixed"),
    ("O2.wasmopt", "mixed-mismatch"),
];

/// fpcast's designs: the default for these inputs (WebAssembly 1.0 views in the table) and
/// shadow tables (forced, with reference types enabled).
const DESIGNS: &[Design] = &[Design::Mvp, Design::Tables];

/// `--passes fpcast` in `design`.
fn fix(input: &[u8], design: Design) -> Vec<u8> {
    let mut options = wasmfix::passes::PassOptions {
        fpcast_design: Some(design),
        ..Default::default()
    };
    if design == Design::Tables {
        options.features.enable(Feature::ReferenceTypes);
    }
    let out = wasmfix::pipeline::run(input, &common::passes("fpcast"), &options)
        .unwrap_or_else(|f| panic!("fpcast {design:?}: {f}"));
    let mut features = wasmparser::WasmFeatures::WASM1;
    if design == Design::Tables {
        features |= wasmparser::WasmFeatures::REFERENCE_TYPES;
    }
    if let Err(e) = wasmparser::Validator::new_with_features(features).validate_all(&out.bytes) {
        panic!("fpcast {design:?}: the output needs more than its features: {e}");
    }
    out.bytes
}

fn typed_for(variant: &str) -> Vec<u8> {
    let level = if variant.starts_with("O0") {
        "O0"
    } else {
        "O2"
    };
    fixture(&format!("fpcast-typed.{level}.wasm"))
}

/// The `wasm trap: …` line of a trap, which names its kind.
fn trap_kind(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Trap(text) => text.lines().last().unwrap_or_default().to_string(),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn castable_casts_give_the_typed_programs_output() {
    for (variant, &design) in VARIANTS
        .iter()
        .flat_map(|v| DESIGNS.iter().map(move |d| (v, d)))
    {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let fixed = fix(&original, design);
        let typed = typed_for(variant);
        for case in CASTS {
            let before = run_wasi(&original, &[case]);
            assert!(
                before.outcome.is_trap("indirect call type mismatch"),
                "{variant} {design:?} {case} should trap before: {before:?}"
            );
            let after = run_wasi(&fixed, &[case]);
            if ERASED_BY_WASM_OPT.contains(&(variant, case)) {
                assert!(
                    after.outcome.is_trap("unreachable"),
                    "{variant} {design:?} {case}: {after:?}"
                );
                continue;
            }
            let want = run_wasi(&typed, &[case]);
            assert_eq!(want.outcome, Outcome::Exit(0), "typed {case}");
            assert_eq!(
                after.outcome,
                Outcome::Exit(0),
                "{variant} {design:?} {case}: {}",
                after.stderr
            );
            assert_eq!(after.stdout, want.stdout, "{variant} {design:?} {case}");
        }
        // The loop over matching targets only worked before and works the same after.
        let before = run_wasi(&original, &["mixed-match"]);
        let after = run_wasi(&fixed, &["mixed-match"]);
        assert_eq!(before.outcome, Outcome::Exit(0));
        assert_eq!(
            (after.outcome, after.stdout),
            (before.outcome, before.stdout),
            "{variant}"
        );
    }
}

#[test]
fn null_wild_and_non_castable_calls_keep_their_traps() {
    for (variant, &design) in VARIANTS
        .iter()
        .flat_map(|v| DESIGNS.iter().map(move |d| (v, d)))
    {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let fixed = fix(&original, design);
        for case in KEEP_TRAPPING {
            let before = run_wasi(&original, &[case]);
            let after = run_wasi(&fixed, &[case]);
            assert_eq!(
                trap_kind(&before.outcome),
                trap_kind(&after.outcome),
                "{variant} {design:?} {case}"
            );
            assert_eq!(before.stdout, after.stdout, "{variant} {design:?} {case}");
        }
    }
}

#[test]
fn wasm_opt_erased_cast_targets_are_reported() {
    let original = fixture("fpcast.O2.wasmopt.wasm");
    let out = common::wasmfix()
        .args(["--passes", "fpcast", "-o", "-"])
        .arg(common::repo().join("tests/fixtures/wasm/fpcast.O2.wasmopt.wasm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("op_void2") && stderr.contains("run wasmfix before wasm-opt"),
        "{stderr}"
    );
    assert_eq!(
        out.stdout,
        rewrite(&original, "fpcast"),
        "stdout carries the module"
    );
}

#[test]
fn report_lists_sites_and_adapters_per_signature() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let status = common::wasmfix()
        .arg(common::repo().join("tests/fixtures/wasm/fpcast.O2.wasm"))
        .args([
            "-o",
            dir.path().join("out.wasm").to_str().unwrap(),
            "--report",
        ])
        .arg(&report)
        .status()
        .unwrap();
    assert!(status.success());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let fpcast = json["passes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pass"] == "fpcast")
        .unwrap();
    let two_args = fpcast["details"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signature"] == "(i32,i32)->(i32)")
        .expect("the getter signature is adapted");
    assert!(two_args["sites"].as_u64().unwrap() >= 1);
    let adapters: Vec<&str> = two_args["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        adapters.contains(&"(i32)->(i32) -> (i32,i32)->(i32)"),
        "{adapters:?}"
    );
}

/// V8 (node's WASI) runs the fixed modules too; wasmtime is not the only engine it must satisfy.
#[test]
fn fixed_modules_run_under_node() {
    if !common::tool_available("node", &["--version"]) {
        return;
    }
    for (variant, &design) in ["O0", "O2"]
        .iter()
        .flat_map(|v| DESIGNS.iter().map(move |d| (v, d)))
    {
        let fixed = fix(&fixture(&format!("fpcast.{variant}.wasm")), design);
        let typed = typed_for(variant);
        for case in CASTS {
            let run = common::run_node("node", &fixed, &[case]);
            assert_eq!(
                run.status, 0,
                "node {variant} {design:?} {case}: {}",
                run.stderr
            );
            assert_eq!(
                run.stdout,
                run_wasi(&typed, &[case]).stdout,
                "node {variant} {design:?} {case}"
            );
        }
    }
}

/// `--fpcast-diagnose`: a mismatch no cast fixes prints what was called before it traps;
/// everything else behaves as without the option.
#[test]
fn diagnose_names_the_caller_and_the_entry() {
    for (variant, caller, callee) in [
        ("O0", "case_f64", "hfun"),
        ("O2.stripped", "function ", "function "),
    ] {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let options = wasmfix::passes::PassOptions {
            fpcast_diagnose: true,
            ..Default::default()
        };
        let fixed = wasmfix::pipeline::run(&original, &common::passes("fpcast"), &options)
            .unwrap()
            .bytes;
        let run = run_wasi(&fixed, &["f64"]);
        assert!(
            matches!(run.outcome, Outcome::Trap(_)),
            "{variant}: {run:?}"
        );
        let want = format!("wasmfix: indirect call type mismatch in {caller}");
        assert!(run.stderr.starts_with(&want), "{variant}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("expected (i32)->(i32), table[6] = {callee}"))
                && run.stderr.ends_with("has (f64)->(f64)\n"),
            "{variant}: {}",
            run.stderr
        );
        let typed = typed_for(variant);
        for case in ["getter", "missing", "mixed"] {
            assert_eq!(
                run_wasi(&fixed, &[case]).stdout,
                run_wasi(&typed, &[case]).stdout,
                "{variant} {case}"
            );
        }
        assert!(
            run_wasi(&fixed, &["null"])
                .outcome
                .is_trap("uninitialized element")
        );
    }
}

/// The `.wat` cases of the snapshots run too: a cast through `call_indirect` and through
/// `return_call_indirect`, on a static and on an exported table.
#[test]
fn wat_cases_call_casts_with_c_semantics() {
    use wasmtime::{Engine, Instance, Module, Store};
    let engine = Engine::default();
    let call = |wasm: &[u8], export: &str, slot: i32| {
        let module = Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, export)
            .unwrap();
        f.call(&mut store, (5, slot)).map_err(|e| format!("{e:?}"))
    };
    for (case, exports) in [
        ("fpcast-static", &["call", "tail_call"][..]),
        ("fpcast-dynamic", &["call"]),
    ] {
        let original = common::wat(case);
        let fixed = rewrite(&original, "fpcast");
        for export in exports {
            // slot 1: get_name(self) stored as a two-argument getter; slot 2: matches.
            assert!(
                call(&original, export, 1)
                    .unwrap_err()
                    .contains("indirect call type mismatch")
            );
            assert_eq!(call(&fixed, export, 1), Ok(105), "{case} {export}");
            assert_eq!(call(&original, export, 2), Ok(35));
            assert_eq!(call(&fixed, export, 2), Ok(35), "{case} {export}");
            for slot in [0, 3] {
                let (before, after) = (call(&original, export, slot), call(&fixed, export, slot));
                assert!(
                    before.is_err() && after.is_err(),
                    "{case} {export} slot {slot}"
                );
            }
        }
    }
}

/// The warning about entries whose body is only `unreachable` needs evidence that an optimizer
/// emptied them: wasi-libc's `__SIG_ERR` and abstract C++ destructors are written that way by
/// hand (issue 13.4).
#[test]
fn unreachable_entries_are_reported_only_with_evidence() {
    let module = |producers: &str, extra: &str| {
        wat::parse_str(format!(
            r#"(module
              {producers}
              (type $void1 (func (param i32)))
              (type $void2 (func (param i32 i32)))
              (type $int2 (func (param i32 i32) (result i32)))
              (table 4 4 funcref)
              (elem (i32.const 1) func $sig_err $erased $add)
              (func $sig_err (type $void1) unreachable)
              (func $erased (type $void2) unreachable)
              (func $add (type $int2) local.get 0 local.get 1 i32.add)
              (func (export "call_void1") (param i32 i32) local.get 0 local.get 1 call_indirect (type $void1))
              (func (export "call_int2") (param i32 i32 i32) (result i32)
                local.get 0 local.get 1 local.get 2 call_indirect (type $int2))
              {extra})"#
        ))
        .unwrap()
    };
    let warnings = |input: &[u8]| {
        let out =
            wasmfix::pipeline::run(input, &common::passes("fpcast"), &Default::default()).unwrap();
        out.reports[0].warnings.join("\n")
    };
    // $sig_err's signature is called indirectly: written by hand as far as anyone can tell.
    let w = warnings(&module("", ""));
    assert!(
        w.contains("1 table entries (erased)")
            && w.contains("no call_indirect has their signature"),
        "{w}"
    );
    let w = warnings(&module(
        r#"(@producers (processed-by "binaryen" "132"))"#,
        "",
    ));
    assert!(
        w.contains("2 table entries (sig_err, erased)")
            && w.contains("the producers section names binaryen"),
        "{w}"
    );
    // Neither: $erased's signature is called indirectly too.
    let w = warnings(&module(
        "",
        r#"(func (export "call_void2") (param i32 i32 i32)
             local.get 0 local.get 1 local.get 2 call_indirect (type $void2))"#,
    ));
    assert!(!w.contains("unreachable"), "{w}");
}
