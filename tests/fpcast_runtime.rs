//! Entries added to a table at run time (issue 13's acceptance): `tests/fixtures/runtime/main.wat`
//! is a WebAssembly 1.0 module with an exported, growable table; `side.wat`, instantiated
//! against that table, appends functions of matching, castable and non-castable types, as an
//! Emscripten side module, `addFunction` or a host's `Table.set` would. The main module calls
//! through link-time and run-time slots, before and after fpcast:
//! - link-time entries: castable calls return the C value, every other call is unchanged;
//! - run-time entries, output without GC (the default for this input): exactly as before
//!   (castable mismatches keep trapping), and the output validates as WebAssembly 1.0 (or with
//!   reference types only, when shadow tables are forced);
//! - run-time entries, `--enable-gc`: castable mismatches return the C value (the forwarder
//!   types the entry with `ref.test`), matching and non-castable calls are unchanged.
//!
//! In wasmtime (GC on, and GC off for outputs that do not need it) and in V8: node 22 (Wasm GC)
//! for every output, node 20 for the outputs without GC.
//!
//! `lookup.wat` with `lookup.mjs` (and its wasmtime twin here): a host that finds a function's
//! pointer by scanning the exported table, as Emscripten's loader does, gets the same slot after
//! fpcast in both designs, and the module compares and calls it as before.

mod common;

use wasmfix::features::{Feature, FeatureChoice};
use wasmfix::passes::PassOptions;
use wasmfix::passes::fpcast::Design;
use wasmtime::{Config, Engine, Instance, Module, Store, Val};

/// A call's argument: a constant, or the k-th slot `install` appended.
#[derive(Clone, Copy, Debug)]
enum Arg {
    N(i32),
    Run(i32),
}

/// What a call does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Value(i32),
    Mismatch,
    Null,
    OutOfBounds,
}

use Arg::{N, Run};
use Want::{Mismatch, Null, OutOfBounds, Value};

/// (export, arguments, before, after without GC, after with GC).
const CALLS: &[(&str, &[Arg], Want, Want, Want)] = &[
    // Link-time entries.
    ("call2", &[N(6), N(7), N(1)], Mismatch, Value(7), Value(7)),
    (
        "call2",
        &[N(6), N(7), N(2)],
        Value(42),
        Value(42),
        Value(42),
    ),
    ("call2", &[N(6), N(7), N(3)], Mismatch, Mismatch, Mismatch),
    ("call2", &[N(6), N(7), N(0)], Null, Null, Null),
    ("call1", &[N(5), N(2)], Mismatch, Value(0), Value(0)),
    ("call1", &[N(5), N(1)], Value(6), Value(6), Value(6)),
    // Entries side.wat appended at run time.
    (
        "call2",
        &[N(6), N(7), Run(0)],
        Value(-1),
        Value(-1),
        Value(-1),
    ),
    (
        "call2",
        &[N(6), N(7), Run(1)],
        Mismatch,
        Mismatch,
        Value(-6),
    ),
    (
        "call2",
        &[N(6), N(7), Run(2)],
        Mismatch,
        Mismatch,
        Value(670),
    ),
    ("call1", &[N(5), Run(2)], Mismatch, Mismatch, Value(500)),
    ("call2", &[N(6), N(7), Run(3)], Mismatch, Mismatch, Mismatch),
    ("callv", &[N(9), Run(4)], Value(9), Value(9), Value(9)),
    ("call1", &[N(9), Run(4)], Mismatch, Mismatch, Value(0)),
    // Castable, but of a signature fpcast does not test for (see `sig::run_time_candidates`).
    ("call2", &[N(6), N(7), Run(5)], Mismatch, Mismatch, Mismatch),
    // Past the last slot, and far out of range.
    (
        "call2",
        &[N(6), N(7), Run(6)],
        OutOfBounds,
        OutOfBounds,
        OutOfBounds,
    ),
    (
        "call2",
        &[N(6), N(7), N(100_000)],
        OutOfBounds,
        OutOfBounds,
        OutOfBounds,
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = common::repo().join("tests/fixtures/runtime").join(name);
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One output of the acceptance test: how it was made, and whether it needs GC.
struct Variant {
    name: &'static str,
    design: Option<Design>,
    enable: &'static [Feature],
    gc: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "default (WebAssembly 1.0 views)",
        design: None,
        enable: &[],
        gc: false,
    },
    Variant {
        name: "shadow tables (--enable-reference-types)",
        design: Some(Design::Tables),
        enable: &[Feature::ReferenceTypes],
        gc: false,
    },
    Variant {
        name: "--enable-gc",
        design: None,
        enable: &[Feature::Gc],
        gc: true,
    },
    Variant {
        name: "--enable-gc --fpcast-design mvp",
        design: Some(Design::Mvp),
        enable: &[Feature::Gc],
        gc: true,
    },
];

fn rewrite(input: &[u8], v: &Variant) -> Vec<u8> {
    let mut features = FeatureChoice::default();
    for &f in v.enable {
        features.enable(f);
    }
    let options = PassOptions {
        fpcast_design: v.design,
        features,
        ..Default::default()
    };
    let out = wasmfix::pipeline::run(input, &common::passes("fpcast"), &options)
        .unwrap_or_else(|f| panic!("{}: {f}", v.name));
    let summary = &out.reports[0].summary;
    assert_eq!(
        summary.contains("entries added at run time to table 0 are not adapted"),
        !v.gc,
        "{}: {summary}",
        v.name
    );
    out.bytes
}

fn engine(gc: bool) -> Engine {
    let mut config = Config::new();
    config.wasm_function_references(gc).wasm_gc(gc);
    Engine::new(&config).unwrap()
}

/// Runs every call of [`CALLS`] in wasmtime after `install`; a trap is classified by its text.
fn run_wasmtime(engine: &Engine, main: &[u8], side: &[u8]) -> Vec<Want> {
    let mut store = Store::new(engine, ());
    let main = Instance::new(&mut store, &Module::new(engine, main).unwrap(), &[]).unwrap();
    let table = main
        .get_table(&mut store, "__indirect_function_table")
        .unwrap();
    let sink = main.get_func(&mut store, "store_sink").unwrap();
    let side = Module::new(engine, side).unwrap();
    let side = Instance::new(&mut store, &side, &[table.into(), sink.into()]).unwrap();
    let first = side
        .get_typed_func::<(), i32>(&mut store, "install")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    CALLS
        .iter()
        .map(|(export, args, ..)| {
            let f = main.get_func(&mut store, export).unwrap();
            let args: Vec<Val> = args
                .iter()
                .map(|a| {
                    Val::I32(match a {
                        N(n) => *n,
                        Run(k) => first + k,
                    })
                })
                .collect();
            let mut result = [Val::I32(0)];
            match f.call(&mut store, &args, &mut result) {
                Ok(()) => Value(result[0].unwrap_i32()),
                Err(e) => trap(&format!("{e:?}")),
            }
        })
        .collect()
}

/// A wasmtime trap, classified by its text.
fn trap(text: &str) -> Want {
    if text.contains("indirect call type mismatch") {
        Mismatch
    } else if text.contains("uninitialized element") {
        Null
    } else if text.contains("out of bounds table access") {
        OutOfBounds
    } else {
        panic!("unexpected trap: {text}")
    }
}

/// V8 says the same for a null entry and a signature mismatch.
fn v8(want: Want) -> String {
    match want {
        Value(v) => format!("value {v}"),
        Mismatch | Null => "trap null function or function signature mismatch".into(),
        OutOfBounds => "trap table index is out of bounds".into(),
    }
}

fn run_node(node: &std::path::Path, main: &[u8], side: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (m, s, c) = (
        dir.path().join("main.wasm"),
        dir.path().join("side.wasm"),
        dir.path().join("calls.json"),
    );
    std::fs::write(&m, main).unwrap();
    std::fs::write(&s, side).unwrap();
    let calls: Vec<serde_json::Value> = CALLS
        .iter()
        .map(|(export, args, ..)| {
            let args: Vec<serde_json::Value> = args
                .iter()
                .map(|a| match a {
                    N(n) => serde_json::json!(n),
                    Run(k) => serde_json::json!({ "run": k }),
                })
                .collect();
            serde_json::json!({ "export": export, "args": args })
        })
        .collect();
    std::fs::write(&c, serde_json::to_vec(&calls).unwrap()).unwrap();
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&node_script(node, "run.mjs", &[&m, &s, &c])).unwrap();
    results
        .iter()
        .map(|r| match (&r["value"], &r["trap"]) {
            (serde_json::Value::Number(n), _) => format!("value {n}"),
            (_, serde_json::Value::String(t)) => format!("trap {t}"),
            _ => panic!("{r}"),
        })
        .collect()
}

#[test]
fn run_time_entries_in_wasmtime() {
    let (main, side) = (fixture("main.wat"), fixture("side.wat"));
    let before: Vec<Want> = CALLS.iter().map(|c| c.2).collect();
    for gc in [false, true] {
        assert_eq!(run_wasmtime(&engine(gc), &main, &side), before, "original");
    }
    for v in VARIANTS {
        let out = rewrite(&main, v);
        let want: Vec<Want> = CALLS.iter().map(|c| if v.gc { c.4 } else { c.3 }).collect();
        // Without GC the output needs nothing beyond what was enabled.
        let mut features = wasmparser::WasmFeatures::WASM1;
        if v.enable.contains(&Feature::ReferenceTypes) {
            features |= wasmparser::WasmFeatures::REFERENCE_TYPES;
        }
        let valid = wasmparser::Validator::new_with_features(features)
            .validate_all(&out)
            .map(|_| ());
        assert_eq!(valid.is_ok(), !v.gc, "{}: {valid:?}", v.name);
        for gc in [true, false] {
            if v.gc && !gc {
                continue;
            }
            let got = run_wasmtime(&engine(gc), &out, &side);
            for ((call, w), g) in CALLS.iter().zip(&want).zip(&got) {
                assert_eq!(
                    g, w,
                    "{} (wasmtime gc={gc}): {} {:?}",
                    v.name, call.0, call.1
                );
            }
        }
    }
}

/// Node 22 (Wasm GC on by default): `WASMFIX_NODE22`, else /tmp/node22 (npm `node@22`), else
/// `node` when it is version 22 or later.
fn node22() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("WASMFIX_NODE22").map(Into::into),
        Some("/tmp/node22/node_modules/.bin/node".into()),
        Some("node".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p: &std::path::PathBuf| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    let v = String::from_utf8_lossy(&o.stdout).to_string();
                    v.trim()
                        .strip_prefix('v')?
                        .split('.')
                        .next()?
                        .parse::<u32>()
                        .ok()
                })
                .is_some_and(|major| major >= 22)
        })
}

#[test]
fn run_time_entries_in_v8() {
    let Some(node22) = node22() else {
        // CI installs node 22 and sets WASMFIX_REQUIRE_TOOLS: there a missing one fails.
        assert!(
            std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
            "node 22 is not installed (WASMFIX_REQUIRE_TOOLS is set)"
        );
        eprintln!("node 22 is not installed: the V8 runs are skipped");
        return;
    };
    let (main, side) = (fixture("main.wat"), fixture("side.wat"));
    let before: Vec<String> = CALLS.iter().map(|c| v8(c.2)).collect();
    assert_eq!(run_node(&node22, &main, &side), before, "original");
    // Node 20 (no Wasm GC by default) runs the outputs that do not need it.
    let node20 = std::path::PathBuf::from("node");
    let has_node20 = std::process::Command::new(&node20)
        .arg("--version")
        .output()
        .is_ok();
    for v in VARIANTS {
        let out = rewrite(&main, v);
        let want: Vec<String> = CALLS
            .iter()
            .map(|c| v8(if v.gc { c.4 } else { c.3 }))
            .collect();
        assert_eq!(run_node(&node22, &out, &side), want, "{} (node 22)", v.name);
        if !v.gc && has_node20 {
            assert_eq!(run_node(&node20, &out, &side), want, "{} (node)", v.name);
        }
    }
}

/// An Emscripten side module (issue 13.5): its table is the loader's, filled at
/// `__table_base`, so no entry's type is known before it runs. Without GC fpcast refuses it,
/// naming --enable-gc; with GC every adapted site goes through the forwarder, which types the
/// entry with ref.test: casts to the module's own functions and to the main module's get C
/// semantics, everything else is unchanged.
#[test]
fn side_module_is_adapted_with_gc_or_refused() {
    let side = fixture("side-module.wat");
    let refused = wasmfix::pipeline::run(&side, &common::passes("fpcast"), &Default::default())
        .err()
        .expect("refused without GC")
        .to_string();
    assert!(
        refused.contains("Emscripten side module") && refused.contains("--enable-gc"),
        "{refused}"
    );
    let mut features = FeatureChoice::default();
    features.enable(Feature::Gc);
    let fixed = wasmfix::pipeline::run(
        &side,
        &common::passes("fpcast"),
        &PassOptions {
            features,
            ..Default::default()
        },
    )
    .unwrap_or_else(|f| panic!("--enable-gc: {f}"))
    .bytes;
    let main = fixture("main.wat");
    let engine = engine(true);
    // (export, self, k or slot): before, after.
    let calls: &[(&str, i32, i32, Want, Want)] = &[
        ("call_own", 6, 0, Mismatch, Value(67)),
        ("call_own", 6, 1, Value(7), Value(7)),
        ("call_slot", 6, 1, Mismatch, Value(7)),
        ("call_slot", 6, 2, Value(6), Value(6)),
        ("call_slot", 6, 3, Mismatch, Mismatch),
        ("call_slot", 6, 0, Null, Null),
        ("call_slot", 6, 100_000, OutOfBounds, OutOfBounds),
    ];
    for (module, after) in [(&side, false), (&fixed, true)] {
        let mut store = Store::new(&engine, ());
        let main = Instance::new(&mut store, &Module::new(&engine, &main).unwrap(), &[]).unwrap();
        let table = main
            .get_table(&mut store, "__indirect_function_table")
            .unwrap();
        // What an Emscripten loader does: grow the table by the module's size, pass the base.
        let base = table
            .grow(&mut store, 2, wasmtime::Ref::Func(None))
            .unwrap() as i32;
        let table_base = wasmtime::Global::new(
            &mut store,
            wasmtime::GlobalType::new(wasmtime::ValType::I32, wasmtime::Mutability::Const),
            Val::I32(base),
        )
        .unwrap();
        let module = Module::new(&engine, module).unwrap();
        let side = Instance::new(&mut store, &module, &[table.into(), table_base.into()]).unwrap();
        for &(export, this, k, before, fixed) in calls {
            let f = side
                .get_typed_func::<(i32, i32), i32>(&mut store, export)
                .unwrap();
            let got = match f.call(&mut store, (this, k)) {
                Ok(v) => Value(v),
                Err(e) => trap(&format!("{e:?}")),
            };
            let want = if after { fixed } else { before };
            assert_eq!(got, want, "{export}({this}, {k}) after={after}");
        }
    }
}

/// What `tests/fixtures/runtime/lookup.mjs` prints for `lookup.wat`, and what the wasmtime host
/// below prints the same way: per exported function, the slot a host finds it in (the last one,
/// as Emscripten's `getFunctionAddress`), the module's pointer comparison, and the calls
/// through that slot from each site. (probe, before, after fpcast): only the castable
/// mismatches change.
const LOOKUPS: &[(&str, &str, &str)] = &[
    ("getattr: slot", "1", "1"),
    ("getattr: is_getattr", "1", "1"),
    ("getattr: call2(6, 7)", "67", "67"),
    ("getattr: call1(5)", "trap", "50"),
    ("getattr: callf(3)", "trap", "trap"),
    ("alloc: slot", "2", "2"),
    ("alloc: is_getattr", "0", "0"),
    ("alloc: call2(6, 7)", "trap", "1006"),
    ("alloc: call1(5)", "1005", "1005"),
    ("alloc: callf(3)", "trap", "trap"),
    ("half: slot", "3", "3"),
    ("half: is_getattr", "0", "0"),
    ("half: call2(6, 7)", "trap", "trap"),
    ("half: call1(5)", "trap", "trap"),
    ("half: callf(3)", "1.5", "1.5"),
    ("mul: slot", "4", "4"),
    ("mul: is_getattr", "0", "0"),
    ("mul: call2(6, 7)", "42", "42"),
    ("mul: call1(5)", "trap", "0"),
    ("mul: callf(3)", "trap", "trap"),
];

fn lookup_lines(after: bool) -> Vec<String> {
    LOOKUPS
        .iter()
        .map(|(probe, before, fixed)| format!("{probe} {}", if after { fixed } else { before }))
        .collect()
}

/// The host of lookup.mjs in wasmtime: a function's identity is its funcref (`Func::to_raw`).
fn lookup_wasmtime(engine: &Engine, module: &[u8]) -> Vec<String> {
    let mut store = Store::new(engine, ());
    let module = Module::new(engine, module).unwrap();
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let table = instance
        .get_table(&mut store, "__indirect_function_table")
        .unwrap();
    let mut slot_of = std::collections::HashMap::new();
    for i in 0..table.size(&store) {
        if let Some(wasmtime::Ref::Func(Some(f))) = table.get(&mut store, i) {
            slot_of.insert(f.to_raw(&mut store) as usize, i as i32);
        }
    }
    let mut out = Vec::new();
    for name in ["getattr", "alloc", "half", "mul"] {
        let f = instance.get_func(&mut store, name).unwrap();
        let p = slot_of
            .get(&(f.to_raw(&mut store) as usize))
            .copied()
            .unwrap_or(0);
        out.push(format!("{name}: slot {p}"));
        let calls: [(&str, &str, Vec<Val>); 4] = [
            ("is_getattr", "is_getattr", vec![Val::I32(p)]),
            (
                "call2(6, 7)",
                "call2",
                vec![Val::I32(6), Val::I32(7), Val::I32(p)],
            ),
            ("call1(5)", "call1", vec![Val::I32(5), Val::I32(p)]),
            (
                "callf(3)",
                "callf",
                vec![Val::F64(3f64.to_bits()), Val::I32(p)],
            ),
        ];
        for (probe, export, args) in calls {
            let f = instance.get_func(&mut store, export).unwrap();
            let mut result = [Val::I32(0)];
            let got = match f.call(&mut store, &args, &mut result) {
                Ok(()) => match result[0] {
                    Val::F64(bits) => f64::from_bits(bits).to_string(),
                    ref v => v.unwrap_i32().to_string(),
                },
                Err(_) => "trap".into(),
            };
            out.push(format!("{name}: {probe} {got}"));
        }
    }
    out
}

fn lookup_node(node: &std::path::Path, module: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookup.wasm");
    std::fs::write(&path, module).unwrap();
    serde_json::from_slice(&node_script(node, "lookup.mjs", &[&path])).unwrap()
}

/// Runs tests/fixtures/runtime/`script` under `node` with `args`; its standard output, once
/// it exited successfully.
fn node_script(node: &std::path::Path, script: &str, args: &[&std::path::Path]) -> Vec<u8> {
    let out = std::process::Command::new(node)
        .arg(common::repo().join("tests/fixtures/runtime").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        node.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Part A of issue 13: a host that looks a function up in the exported table, as Emscripten's
/// loader does for GOT.func and dlsym, finds the slot it found before, in both designs, and
/// the module compares and calls it as before (the `mvp` design's views hold no function of
/// the program, only wasmfix's own).
#[test]
fn host_lookups_in_an_exported_table_are_unchanged() {
    let input = fixture("lookup.wat");
    let node22 = node22();
    assert!(
        node22.is_some() || std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
        "node 22 is not installed (WASMFIX_REQUIRE_TOOLS is set)"
    );
    let node20 = std::path::PathBuf::from("node");
    let has_node20 = std::process::Command::new(&node20)
        .arg("--version")
        .output()
        .is_ok();
    for (module, after, name, gc) in std::iter::once((input.clone(), false, "original", false))
        .chain(
            VARIANTS
                .iter()
                .map(|v| (rewrite(&input, v), true, v.name, v.gc)),
        )
    {
        let want = lookup_lines(after);
        for engine_gc in [true, false] {
            if gc && !engine_gc {
                continue;
            }
            assert_eq!(
                lookup_wasmtime(&engine(engine_gc), &module),
                want,
                "{name} (wasmtime gc={engine_gc})"
            );
        }
        if let Some(node22) = &node22 {
            assert_eq!(lookup_node(node22, &module), want, "{name} (node 22)");
        }
        if !gc && has_node20 {
            assert_eq!(lookup_node(&node20, &module), want, "{name} (node)");
        }
    }
}
