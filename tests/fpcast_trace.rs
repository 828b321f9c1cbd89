//! `--fpcast-trace` (issue 13.3): every castable mismatch that runs prints one line to stderr,
//! `wasmfix: fpcast: <caller> called slot <N> (<callee>) as <T> but it is <U>`, once per
//! distinct (slot, call signature), then runs with C semantics; the program's stdout and exit
//! are exactly those of the untraced output.
//!
//! The lines are checked against facts found without the trace: the casts each case of
//! tests/fixtures/c/fpcast.c makes (from its source, in the order they first run), and the
//! module's own table (slot N holds the named callee, whose signature is U). The `mixed` cases
//! call each castable target 125 times from one site: one line each shows the once-guard.
//! On every build of the C fixture, in both designs, in wasmtime, node (V8) and, for the
//! WebAssembly 1.0 outputs, wasm3; and on tests/fixtures/runtime/trace.wat, whose castable
//! entries are added at run time (with --enable-gc, in wasmtime with GC and node 22).

mod common;

use common::{Outcome, fixture, run_wasi};
use std::collections::HashMap;
use wasmfix::features::{Feature, FeatureChoice};
use wasmfix::passes::PassOptions;
use wasmfix::passes::fpcast::Design;

const VARIANTS: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt", "O2.stripped"];
const DESIGNS: &[Design] = &[Design::Mvp, Design::Tables];

/// Per case of fpcast.c: the callees it calls through a castable mismatch, in the order they
/// first run (read from the source: `case_*` and the `ops_*` arrays).
const CASES: &[(&str, &[&str])] = &[
    ("getter", &["get_name"]),
    ("noargs", &["meth_noargs"]),
    ("missing", &["f3"]),
    ("void_as_int", &["vfun"]),
    ("reverse", &["gfun"]),
    ("mixed", &["op_not1", "op_mad3", "op_void2", "op_dbl1"]),
    (
        "mixed-mismatch",
        &["op_not1", "op_mad3", "op_void2", "op_dbl1"],
    ),
    ("mixed-match", &[]),
    ("null", &[]),
    ("wild", &[]),
    ("f64", &[]),
];

/// wasm-opt emptied `op_void2` in these builds: the mixed loops trap right after its line.
fn erased(variant: &str, case: &str) -> bool {
    variant.ends_with("wasmopt") && case.starts_with("mixed") && case != "mixed-match"
}

fn options(design: Option<Design>, trace: bool, enable: &[Feature]) -> PassOptions {
    let mut features = FeatureChoice::default();
    for &f in enable {
        features.enable(f);
    }
    if design == Some(Design::Tables) {
        features.enable(Feature::ReferenceTypes);
    }
    PassOptions {
        fpcast_design: design,
        fpcast_trace: trace,
        features,
        ..Default::default()
    }
}

fn fpcast(input: &[u8], options: &PassOptions) -> Vec<u8> {
    wasmfix::pipeline::run(input, &common::passes("fpcast"), options)
        .unwrap_or_else(|f| panic!("fpcast: {f}"))
        .bytes
}

/// One trace line, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Line {
    caller: String,
    slot: u32,
    callee: String,
    called_as: String,
    is: String,
}

fn trace_lines(stderr: &str) -> Vec<Line> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("wasmfix: fpcast: "))
        .map(|rest| {
            let parse = || -> Option<Line> {
                let (caller, rest) = rest.split_once(" called slot ")?;
                let (slot, rest) = rest.split_once(" (")?;
                let (callee, rest) = rest.split_once(") as ")?;
                let (called_as, is) = rest.split_once(" but it is ")?;
                Some(Line {
                    caller: caller.into(),
                    slot: slot.parse().ok()?,
                    callee: callee.into(),
                    called_as: called_as.into(),
                    is: is.into(),
                })
            };
            parse().unwrap_or_else(|| panic!("not a trace line: {rest:?}"))
        })
        .collect()
}

/// The module's link-time table 0: slot → (name or `function K`, signature), read with
/// wasmparser from its element segments, function types and name section.
fn table_entries(wasm: &[u8]) -> HashMap<u32, (String, String)> {
    use wasmparser::{ElementItems, ElementKind, Name, Operator, Parser, Payload};
    let (mut types, mut funcs, mut names, mut slots) =
        (Vec::new(), Vec::new(), HashMap::new(), HashMap::new());
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            Payload::TypeSection(r) => {
                for t in r.into_iter_err_on_gc_types() {
                    types.push(t.unwrap());
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if let wasmparser::TypeRef::Func(t) = import.unwrap().ty {
                        funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(r) => funcs.extend(r.into_iter().map(|t| t.unwrap())),
            Payload::ElementSection(r) => {
                for e in r {
                    let e = e.unwrap();
                    let ElementKind::Active {
                        table_index,
                        offset_expr,
                    } = e.kind
                    else {
                        continue;
                    };
                    let Ok(Operator::I32Const { value }) =
                        offset_expr.get_operators_reader().read()
                    else {
                        continue;
                    };
                    if table_index.unwrap_or(0) != 0 {
                        continue;
                    }
                    if let ElementItems::Functions(items) = e.items {
                        for (k, f) in items.into_iter().enumerate() {
                            slots.insert(value as u32 + k as u32, f.unwrap());
                        }
                    }
                }
            }
            Payload::CustomSection(c) => {
                if let wasmparser::KnownCustom::Name(r) = c.as_known() {
                    for n in r {
                        if let Ok(Name::Function(map)) = n {
                            for naming in map {
                                let naming = naming.unwrap();
                                names.insert(naming.index, naming.name.to_string());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    slots
        .into_iter()
        .map(|(slot, f)| {
            let name = names
                .get(&f)
                .cloned()
                .unwrap_or_else(|| format!("function {f}"));
            let sig = wasmfix::sig::show(&types[funcs[f as usize] as usize]);
            (slot, (name, sig))
        })
        .collect()
}

/// The trace lines of one run of a C fixture case, checked against the table and the case.
fn check_lines(
    what: &str,
    variant: &str,
    case: &str,
    lines: &[Line],
    table: &HashMap<u32, (String, String)>,
) {
    let mut want: Vec<&str> = CASES.iter().find(|c| c.0 == case).unwrap().1.to_vec();
    if erased(variant, case) {
        want.truncate(3); // op_not1, op_mad3, op_void2 (emptied: the loop traps there)
    }
    assert_eq!(lines.len(), want.len(), "{what}: {lines:#?}");
    for (line, callee) in lines.iter().zip(&want) {
        let (name, sig) = table
            .get(&line.slot)
            .unwrap_or_else(|| panic!("{what}: slot {} is not a link-time entry", line.slot));
        assert_eq!(&line.callee, name, "{what}: the callee is the slot's entry");
        assert_eq!(&line.is, sig, "{what}: the callee's own signature");
        assert_ne!(line.called_as, line.is, "{what}");
        if !variant.contains("stripped") {
            assert_eq!(&line.callee, callee, "{what}");
        }
        // wasm-opt inlines run_ops (clang's noinline is not binaryen's) into case_mixed.
        if case.starts_with("mixed") && !variant.contains("stripped") {
            let caller = if variant.ends_with("wasmopt") {
                "case_mixed"
            } else {
                "run_ops"
            };
            assert_eq!(line.caller, caller, "{what}");
        }
    }
}

#[test]
fn c_fixtures_print_one_line_per_distinct_cast() {
    for (variant, &design) in VARIANTS
        .iter()
        .flat_map(|v| DESIGNS.iter().map(move |d| (v, d)))
    {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let table = table_entries(&original);
        let plain = fpcast(&original, &options(Some(design), false, &[]));
        let traced = fpcast(&original, &options(Some(design), true, &[]));
        // The trace needs nothing beyond what the design needs.
        let mut features = wasmparser::WasmFeatures::WASM1;
        if design == Design::Tables {
            features |= wasmparser::WasmFeatures::REFERENCE_TYPES;
        }
        wasmparser::Validator::new_with_features(features)
            .validate_all(&traced)
            .unwrap_or_else(|e| panic!("{variant} {design:?}: {e}"));
        for &(case, _) in CASES {
            let what = format!("{variant} {design:?} {case}");
            let want = run_wasi(&plain, &[case]);
            let got = run_wasi(&traced, &[case]);
            assert_eq!(got.stdout, want.stdout, "{what}: stdout");
            match (&got.outcome, &want.outcome) {
                (Outcome::Exit(a), Outcome::Exit(b)) => assert_eq!(a, b, "{what}"),
                (Outcome::Trap(a), Outcome::Trap(b)) => {
                    assert_eq!(a.lines().last(), b.lines().last(), "{what}: the same trap")
                }
                (a, b) => panic!("{what}: {a:?} traced, {b:?} without"),
            }
            // Without the option nothing is printed; with it, the trace and nothing else.
            assert_eq!(trace_lines(&want.stderr), [], "{what}");
            let lines = trace_lines(&got.stderr);
            assert_eq!(
                got.stderr.lines().count(),
                lines.len() + want.stderr.lines().count(),
                "{what}: {}",
                got.stderr
            );
            check_lines(&what, variant, case, &lines, &table);
        }
    }
}

/// V8 prints the same lines and the same stdout as wasmtime.
#[test]
fn c_fixtures_trace_the_same_in_node() {
    if !common::tool_available("node", &["--version"]) {
        return;
    }
    for (variant, &design) in ["O0", "O2.stripped"]
        .iter()
        .flat_map(|v| DESIGNS.iter().map(move |d| (v, d)))
    {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let traced = fpcast(&original, &options(Some(design), true, &[]));
        for case in ["getter", "void_as_int", "mixed", "f64"] {
            let what = format!("node {variant} {design:?} {case}");
            let want = run_wasi(&traced, &[case]);
            let run = common::run_node("node", &traced, &[case]);
            assert_eq!(run.stdout, want.stdout, "{what}");
            assert_eq!(
                trace_lines(&run.stderr),
                trace_lines(&want.stderr),
                "{what}"
            );
            assert_eq!(run.status == 0, want.outcome == Outcome::Exit(0), "{what}");
        }
    }
}

/// wasm3 (strict WebAssembly 1.0) runs the `mvp` design's traced outputs the same way.
#[test]
fn c_fixtures_trace_the_same_in_wasm3() {
    if !common::tool_available("python3", &["-c", "import wasm3"]) {
        return;
    }
    for variant in ["O0", "O2.stripped", "O2.wasmopt"] {
        let original = fixture(&format!("fpcast.{variant}.wasm"));
        let traced = fpcast(&original, &options(Some(Design::Mvp), true, &[]));
        for case in ["getter", "reverse", "mixed", "f64"] {
            let what = format!("wasm3 {variant} {case}");
            let want = run_wasi(&traced, &[case]);
            let out = common::run_wasm3(&traced, &[case]);
            let stderr = &out.stderr;
            assert_ne!(out.status, 3, "{what}: {stderr}");
            assert_eq!(out.stdout, want.stdout, "{what}");
            assert_eq!(trace_lines(stderr), trace_lines(&want.stderr), "{what}");
        }
    }
}

fn trace_wat() -> Vec<u8> {
    let path = common::repo().join("tests/fixtures/runtime/trace.wat");
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// trace.wat's distinct casts (see its header): (slot, callee, called as, is). Slots 3 and 4
/// are the ones `_start` appends, in the `tables` design; in the `mvp` design they follow the
/// views appended to the table, and are taken from the first line that names them.
const RUN_TIME_CASTS: &[(&str, &str, &str)] = &[
    ("inc", "(i32,i32)->(i32)", "(i32)->(i32)"),
    ("added at run time", "(i32,i32)->(i32)", "(i32)->(i32)"),
    (
        "added at run time",
        "(i32,i32)->(i32)",
        "(i32,i32,i32)->(i32)",
    ),
    ("added at run time", "(i32)->(i32)", "(i32,i32,i32)->(i32)"),
];

fn check_run_time_lines(what: &str, lines: &[Line], design: Design) {
    let got: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| (l.callee.as_str(), l.called_as.as_str(), l.is.as_str()))
        .collect();
    assert_eq!(got, RUN_TIME_CASTS, "{what}");
    assert_eq!(lines[0].slot, 1, "{what}");
    // The two appended entries: consecutive slots, the second cast twice through two sites.
    assert_eq!(lines[2].slot, lines[1].slot + 1, "{what}");
    assert_eq!(lines[3].slot, lines[2].slot, "{what}");
    if design == Design::Tables {
        assert_eq!(lines[1].slot, 3, "{what}");
    }
    let callers: Vec<&str> = lines.iter().map(|l| l.caller.as_str()).collect();
    assert_eq!(callers, ["call2", "call2", "call2", "call1"], "{what}");
}

#[test]
fn casts_to_entries_added_at_run_time_print_once() {
    let input = trace_wat();
    // Before: the first cast traps.
    let before = run_wasi_gc_or_plain(&input, false);
    assert!(
        before.outcome.is_trap("indirect call type mismatch"),
        "{before:?}"
    );
    for design in DESIGNS {
        let what = format!("--enable-gc {design:?}");
        let plain = fpcast(&input, &options(Some(*design), false, &[Feature::Gc]));
        let traced = fpcast(&input, &options(Some(*design), true, &[Feature::Gc]));
        // 5 rounds: every cast runs 5 times, and prints once.
        let want = common::run_wasi_gc(&plain, &["5"]);
        assert_eq!(want.outcome, Outcome::Exit(0), "{what}: {want:?}");
        assert_eq!(
            want.stdout,
            "7\n42\n4294967290\n670\n500\n".repeat(5),
            "{what}: C semantics"
        );
        let got = common::run_wasi_gc(&traced, &["5"]);
        assert_eq!(
            (&got.stdout, &got.outcome),
            (&want.stdout, &want.outcome),
            "{what}"
        );
        assert_eq!(want.stderr, "", "{what}");
        check_run_time_lines(&what, &trace_lines(&got.stderr), *design);
        assert_eq!(got.stderr.lines().count(), 4, "{what}: {}", got.stderr);

        if let Some(node22) = node22() {
            let run = common::run_node(&node22, &traced, &["5"]);
            assert_eq!(
                (run.stdout.as_str(), run.status),
                (want.stdout.as_str(), 0),
                "node 22 {what}"
            );
            assert_eq!(
                trace_lines(&run.stderr),
                trace_lines(&got.stderr),
                "node 22 {what}"
            );
        }
    }
    // Without GC, entries added at run time are not adapted: the link-time cast prints, the
    // first run-time one traps as before.
    let traced = fpcast(&input, &options(None, true, &[]));
    let got = run_wasi(&traced, &["5"]);
    assert!(
        got.outcome.is_trap("indirect call type mismatch"),
        "{got:?}"
    );
    assert_eq!(got.stdout, "7\n42\n");
    let lines = trace_lines(&got.stderr);
    assert_eq!(lines.len(), 1, "{}", got.stderr);
    assert_eq!((lines[0].slot, lines[0].callee.as_str()), (1, "inc"));
}

fn run_wasi_gc_or_plain(wasm: &[u8], gc: bool) -> common::Run {
    if gc {
        common::run_wasi_gc(wasm, &["5"])
    } else {
        run_wasi(wasm, &["5"])
    }
}

/// Node 22 (Wasm GC): `WASMFIX_NODE22`, else /tmp/node22 (npm `node@22`); a missing one fails
/// under `WASMFIX_REQUIRE_TOOLS`.
fn node22() -> Option<std::path::PathBuf> {
    let node = std::env::var_os("WASMFIX_NODE22")
        .map_or_else(|| "/tmp/node22/node_modules/.bin/node".into(), Into::into);
    common::tool_available(&node, &["--version"]).then_some(node)
}

/// A module that cannot print (no WASI fd_write) refuses the option, with a reason; without the
/// option it is rewritten as before.
#[test]
fn modules_that_cannot_print_refuse_the_option() {
    let main = wat::parse_file(common::repo().join("tests/fixtures/runtime/main.wat")).unwrap();
    let refused =
        wasmfix::pipeline::run(&main, &common::passes("fpcast"), &options(None, true, &[]))
            .err()
            .expect("refused")
            .to_string();
    assert!(
        refused.contains("--fpcast-trace") && refused.contains("fd_write"),
        "{refused}"
    );
    fpcast(&main, &options(None, false, &[]));
    // The CLI: one line, exit 2, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&input, &main).unwrap();
    let out = common::wasmfix()
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .arg("--fpcast-trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!output.exists());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// A line longer than one report message (long names, a long signature) is written whole, in
/// several pieces, names cut around `…`.
#[test]
fn long_lines_are_written_whole() {
    let (caller, callee) = (
        "caller_".to_string() + &"x".repeat(300),
        "callee_".to_string() + &"y".repeat(300),
    );
    let args = "i32.const 7 ".repeat(20);
    let wat = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (type $one (func (param i32) (result i32)))
          (type $many (func (param {params}) (result i32)))
          (table 2 funcref)
          (elem (i32.const 1) func ${callee})
          (func ${callee} (type $one) local.get 0)
          (func ${caller} (result i32) {args} i32.const 1 call_indirect (type $many))
          (func (export "_start") call ${caller} drop call ${caller} drop))"#,
        params = "i32 ".repeat(20),
    );
    let traced = fpcast(&wat::parse_str(wat).unwrap(), &options(None, true, &[]));
    let run = run_wasi(&traced, &[]);
    assert_eq!((run.outcome, run.stdout.as_str()), (Outcome::Exit(0), ""));
    let lines = trace_lines(&run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let cut = |name: &str| wasmfix::diag::shorten(name, 160).into_owned();
    assert_eq!(
        lines,
        [Line {
            caller: cut(&caller),
            slot: 1,
            callee: cut(&callee),
            called_as: format!("({})->(i32)", ["i32"; 20].join(",")),
            is: "(i32)->(i32)".into(),
        }]
    );
    assert!(lines[0].caller.contains('…') && run.stderr.len() > 240);
}
