//! A third engine, and a strict one (issue 14): wasm3 (PyPI `pywasm3`) runs only WebAssembly
//! 1.0 plus a few extensions, and rejects extra tables, tail calls and the like. Every C fixture
//! that is WebAssembly 1.0 (clang 14's defaults), rewritten by the default pipeline, by
//! `--harden` and by each pass alone, runs in wasm3 with the same stdout, exit status or trap,
//! and messages as in wasmtime. `tests/wasm3_run.py` gives wasm3 the few WASI imports the
//! fixtures use.
//!
//! Every output must be WebAssembly 1.0 (validated with no feature at all) and is run: no
//! pass waits for a WebAssembly 1.0 design any more (`diff::WAITING_FOR_MVP_DESIGN` is empty),
//! so fpcast's outputs run here too, through views appended to the table itself.

#[path = "common/clike.rs"]
mod clike;
mod common;
#[path = "common/diff.rs"]
mod diff;

use common::{Outcome, run_wasi, run_wasm3};
use wasmfix::features::FeatureSet;

/// The cases of each fixture family (argv after the program name): correct runs and the bugs
/// the passes stop.
fn cases(family: &str) -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    match family {
        "stack" => vec![
            v(&["recurse", "18"]),
            v(&["vla", "70000"]),
            v(&["legal", "2000"]),
            v(&["calls", "1000"]),
        ],
        "harden" => vec![
            v(&["sort", "300"]),
            v(&["login", "bob"]),
            v(&["login", &"A".repeat(48)]),
            v(&["heap", "48"]),
            v(&["doublefree"]),
            v(&["null"]),
            v(&["literal"]),
        ],
        "fpcast" | "fpcast-typed" => ["getter", "mixed", "reverse", "null", "f64"]
            .iter()
            .map(|c| v(&[c]))
            .collect(),
        _ => vec![v(&[])],
    }
}

/// Runs `wasm` with each case in wasmtime and in wasm3 and compares.
fn same_in_both(wasm: &[u8], family: &str, what: &str) -> usize {
    let mut runs = 0;
    for args in cases(family) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let what = format!("{what} {args:?}");
        let wasmtime = run_wasi(wasm, &args);
        let wasm3 = run_wasm3(wasm, &args);
        assert_ne!(
            wasm3.status, 3,
            "{what}: wasm3 cannot load it: {}",
            wasm3.stderr
        );
        assert_eq!(wasm3.stdout, wasmtime.stdout, "{what}: stdout");
        match &wasmtime.outcome {
            Outcome::Exit(code) => assert_eq!(wasm3.status, *code, "{what}: {wasm3:?}"),
            Outcome::Trap(_) => assert_eq!(wasm3.status, 134, "{what}: {wasm3:?}"),
        }
        // wasm3 adds its backtrace and the trap after what the module wrote.
        assert!(
            wasm3.stderr.starts_with(&wasmtime.stderr),
            "{what}: stderr {:?} vs wasmtime {:?}",
            wasm3.stderr,
            wasmtime.stderr
        );
        runs += 1;
    }
    runs
}

/// The harness's pipelines, and the default pipeline and `--harden` without fpcast: these run
/// in wasm3 today, while fpcast's own outputs wait for its WebAssembly 1.0 design.
/// The differential harness's pipelines that keep to the input's features (a pipeline that
/// enables one, such as `fpcast --enable-gc`, makes an output wasm3 is not meant to run).
fn pipelines() -> Vec<diff::Pipeline> {
    diff::pipelines()
        .into_iter()
        .filter(|p| p.options.features.enabled.is_empty())
        .collect()
}

#[test]
fn mvp_fixtures_run_the_same_in_wasm3_after_every_pipeline() {
    if !common::tool_available("python3", &["-c", "import wasm3"]) {
        return;
    }
    let mvp = FeatureSet::EMPTY.wasm_features();
    let inputs: Vec<_> = common::fixtures()
        .into_iter()
        .filter(|(name, _)| {
            // The C fixtures that are WASI commands (layout and sourcemap import `env`).
            ["stack.", "harden.", "fpcast.", "fpcast-typed."]
                .iter()
                .any(|f| name.starts_with(f))
        })
        // WebAssembly 1.0 as the run sees it: nothing detected, nothing declared (the relocs
        // builds are LLVM 19's, whose target_features declares reference types and more: using
        // them is free there, and wasm3 is not an engine they run on).
        .filter(|(_, bytes)| {
            diff::allowed_features(bytes, &diff::pipelines()[0])
                .0
                .is_empty()
        })
        .collect();
    assert!(inputs.len() >= 15, "{} MVP fixtures", inputs.len());
    let mut runs = 0;
    let mut waiting = Vec::new();
    for (name, input) in &inputs {
        let family = name.split('.').next().unwrap();
        // Every pass alone on the optimized builds; the whole pipelines on all.
        let every_pass = name.ends_with(".O2.wasm");
        for pipeline in pipelines() {
            let whole = pipeline.passes.len() != 1;
            if !whole && !every_pass {
                continue;
            }
            let what = format!("{name} `{}`", pipeline.name);
            let output = match wasmfix::pipeline::run(input, &pipeline.passes, &pipeline.options) {
                Ok(o) => o.bytes,
                Err(wasmfix::pipeline::Failure::Refused { .. }) => continue,
                Err(f) => panic!("{what}: {f}"),
            };
            match diff::check_output_features(input, &output, &pipeline) {
                Ok(false) => {
                    wasmparser::Validator::new_with_features(mvp)
                        .validate_all(&output)
                        .unwrap_or_else(|e| panic!("{what}: not WebAssembly 1.0: {e}"));
                    runs += same_in_both(&output, family, &what);
                }
                Ok(true) => {
                    waiting.push(what);
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
    eprintln!("{runs} runs in wasm3 and wasmtime");
    assert!(
        waiting.is_empty(),
        "outputs that need a feature beyond the input's: {waiting:?}"
    );
    assert!(runs > 300, "{runs} runs");
}
