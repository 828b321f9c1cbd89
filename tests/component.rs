//! Components as input (issue 17): `wasmfix app.component.wasm -o app.component.wasm` runs the
//! pipeline on every core module inside and copies everything else byte for byte.
//!
//! The main fixture is `tests/fixtures/preview2/fpcast.O2.component.wasm`: the fpcast C
//! fixture (CPython's getter idiom and the other casts), made safe to adapt and adapted with
//! the stock command adapter 50.0.1, its casts still in place.

mod common;
#[path = "common/preview2.rs"]
mod p2;

use common::Outcome;
use std::path::Path;

fn component_fixture() -> Vec<u8> {
    let path = common::repo().join("tests/fixtures/preview2/fpcast.O2.component.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `wasmfix ARGS… IN -o OUT` in a fresh directory holding `input` as `app.wasm`: the output
/// (or the failure) and the directory.
fn rewrite(input: &[u8], args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.wasm"), input).unwrap();
    let out = common::wasmfix()
        .args(args)
        .arg(dir.path().join("app.wasm"))
        .arg("-o")
        .arg(dir.path().join("out.wasm"))
        .output()
        .unwrap();
    (out, dir)
}

fn fixed(input: &[u8], args: &[&str]) -> Vec<u8> {
    let (out, dir) = rewrite(input, args);
    assert!(out.status.success(), "wasmfix {args:?}: {}", stderr(&out));
    std::fs::read(dir.path().join("out.wasm")).unwrap()
}

fn validate_component(bytes: &[u8]) {
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .unwrap_or_else(|e| panic!("invalid component: {e}"));
}

/// The fpcast cases whose casts trap before the fix, and what the typed build prints.
const CASTS: &[&str] = &[
    "getter",
    "noargs",
    "missing",
    "void_as_int",
    "reverse",
    "mixed",
];

#[test]
fn fpcast_inside_a_component_runs_without_the_cast_trap() {
    let component = component_fixture();
    let output = fixed(&component, &[]);
    validate_component(&output);
    let typed = common::fixture("fpcast-typed.O2.wasm");
    for case in CASTS {
        let before = p2::run_component(&component, &[case]);
        match &before.outcome {
            Outcome::Trap(why) => assert!(
                why.contains("indirect call type mismatch"),
                "{case} before: {why}"
            ),
            other => panic!("{case} before: the cast did not trap: {other:?}"),
        }
        let after = p2::run_component(&output, &[case]);
        let expected = common::run_wasi(&typed, &[case]);
        assert_eq!(
            (&after.stdout, &after.outcome),
            (&expected.stdout, &Outcome::Exit(0)),
            "{case}: {after:?}"
        );
    }
    // Casts that must still trap keep trapping.
    for case in ["null", "wild", "f64"] {
        let after = p2::run_component(&output, &[case]);
        assert!(
            matches!(after.outcome, Outcome::Trap(_)),
            "{case}: {after:?}"
        );
    }
    if let Some(jco) = p2::jco() {
        let (stdout, stderr, status) = p2::run_jco(&jco, &component, &["getter"]);
        assert!(
            status != Some(0) && stderr.contains("signature mismatch"),
            "jco before: {status:?} {stdout} {stderr}"
        );
        let (stdout, stderr, status) = p2::run_jco(&jco, &output, &["getter"]);
        let expected = common::run_wasi(&typed, &["getter"]);
        assert_eq!(
            (stdout.as_str(), status),
            (expected.stdout.as_str(), Some(0)),
            "jco after: {stderr}"
        );
    }
}

/// Every section of a component, with the core modules and nested components replaced by a
/// placeholder: what must stay byte for byte the same.
fn outside_core_modules(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut parser = wasmparser::Parser::new(0);
    let mut pos = 0;
    loop {
        let start = pos;
        let (payload, consumed) = match parser.parse(&bytes[pos..], true).unwrap() {
            wasmparser::Chunk::Parsed { payload, consumed } => (payload, consumed),
            wasmparser::Chunk::NeedMoreData(_) => unreachable!(),
        };
        pos += consumed;
        match payload {
            wasmparser::Payload::ModuleSection {
                unchecked_range, ..
            } => {
                pos = unchecked_range.end as usize;
                out.push((1, Vec::new()));
            }
            wasmparser::Payload::ComponentSection {
                unchecked_range, ..
            } => {
                pos = unchecked_range.end as usize;
                out.push((4, Vec::new()));
            }
            wasmparser::Payload::End(_) => return out,
            other => {
                let id = other.as_section().map_or(0xff, |(id, _)| id);
                out.push((id, bytes[start..pos].to_vec()));
            }
        }
    }
}

#[test]
fn a_rewritten_component_keeps_everything_but_its_core_modules_and_is_deterministic() {
    let component = component_fixture();
    let once = fixed(&component, &[]);
    assert_eq!(
        fixed(&component, &[]),
        once,
        "two runs gave different bytes"
    );
    assert_eq!(
        outside_core_modules(&once),
        outside_core_modules(&component)
    );
    // Each core module keeps its place and every function its index: the main module's
    // original bodies are still there, in order, where nothing rewrote them.
    let modules = |bytes: &[u8]| -> Vec<Vec<u8>> {
        wasmfix::component::core_modules(bytes)
            .unwrap()
            .into_iter()
            .map(|m| bytes[m.range].to_vec())
            .collect()
    };
    let (before, after) = (modules(&component), modules(&once));
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        let (b, a) = (common::function_bodies(b), common::function_bodies(a));
        assert!(a.len() >= b.len());
        for ((i, _), (j, _)) in b.iter().zip(&a) {
            assert_eq!(i, j);
        }
    }
    // Fixing it again changes nothing.
    assert_eq!(
        fixed(&once, &[]),
        once,
        "a second run changed the component"
    );
}

#[test]
fn passes_none_gives_back_a_component_byte_for_byte() {
    let nested = wat::parse_str(
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 7))
             (component $inner
               (core module $n (func (export "g") (result i32) i32.const 8)))
             (core instance (instantiate $m)))"#,
    )
    .unwrap();
    for (name, component) in [("fpcast", component_fixture()), ("nested", nested)] {
        assert_eq!(
            fixed(&component, &["--passes", "none"]),
            component,
            "{name}"
        );
        let options = wasmfix::passes::PassOptions::default();
        let outcome = wasmfix::component::run(&component, &[], &options).unwrap();
        assert_eq!(outcome.bytes, component, "{name}: library");
    }
}

#[test]
fn nested_components_have_their_core_modules_rewritten_too() {
    let nested = wat::parse_str(
        r#"(component
             (component $inner
               (core module $n (func (export "g") (result i32) i32.const 8))))"#,
    )
    .unwrap();
    let output = fixed(&nested, &["--passes", "producers"]);
    validate_component(&output);
    let modules = wasmfix::component::core_modules(&output).unwrap();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0].label, "component 0: core module 0 (n)");
    let module = &output[modules[0].range.clone()];
    let producers = common::custom_sections(module);
    assert!(
        producers.iter().any(|(n, _)| n == "producers"),
        "the nested module got no producers section"
    );
}

#[test]
fn inspect_and_check_describe_each_core_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.wasm");
    std::fs::write(&path, component_fixture()).unwrap();
    let out = common::wasmfix()
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("component, 186,306 bytes, 4 core modules"),
        "{text}"
    );
    for k in 0..4 {
        assert!(text.contains(&format!(": core module {k}")), "{text}");
    }
    assert!(text.contains("indirect call type mismatch"), "{text}");

    let out = common::wasmfix()
        .args(["inspect", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["component"], true);
    let modules = json["core_modules"].as_array().unwrap();
    assert_eq!(modules.len(), 4);
    assert!(modules[0]["hazards"].as_array().unwrap().len() > 1);

    let check = |path: &Path| common::wasmfix().arg("--check").arg(path).output().unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("core module 0: hazard: call_indirect"));
    let status = common::wasmfix()
        .arg(&path)
        .arg("-o")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_component_whose_core_module_cannot_be_rewritten_is_refused_with_exit_2() {
    let component = component_fixture();
    // stack-first needs relocations, which the main module does not have.
    let (out, dir) = rewrite(&component, &["--passes", "stack-first"]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("core module 0") && message.contains("relocations"),
        "{message}"
    );
    assert!(!dir.path().join("out.wasm").exists(), "output written");
    assert_eq!(
        std::fs::read(dir.path().join("app.wasm")).unwrap(),
        component
    );
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "files left behind");
}

#[test]
fn an_adapted_component_is_not_given_the_adapter_export_but_a_warning() {
    // Inside a component the adapter is linked already: adding the export would change
    // nothing, so wasmfix says to run it on the module first.
    let module =
        std::fs::read(common::repo().join("tests/fixtures/preview2/c-heap.debian.wasm")).unwrap();
    let component = p2::adapt(&module, p2::ADAPTERS[1].1);
    let (out, dir) = rewrite(&component, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run wasmfix on the module before `wasm-tools component new`"),
        "{}",
        stderr(&out)
    );
    let output = std::fs::read(dir.path().join("out.wasm")).unwrap();
    let modules = wasmfix::component::core_modules(&output).unwrap();
    let main = &output[modules[0].range.clone()];
    let exports = wasmprinter::print_bytes(main).unwrap();
    assert!(!exports.contains("cabi_realloc_adapter"));
}

#[test]
fn damaged_components_are_refused_in_one_line_or_give_a_valid_component() {
    // Bytes of the fixture changed at random (fixed seed): every run either fails with a
    // one-line reason or writes a component that validates; nothing panics.
    let component = component_fixture();
    let passes: Vec<_> = wasmfix::passes::DEFAULT_PIPELINE
        .iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions::default();
    let mut state = 0x5eed_0017_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let (mut refused, mut rewritten) = (0, 0);
    for _ in 0..120 {
        let mut bytes = component.clone();
        for _ in 0..1 + next() % 3 {
            let at = next() % bytes.len();
            bytes[at] ^= 1 << (next() % 8);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let listed = wasmfix::component::core_modules(&bytes).map(|m| m.len());
            (listed, wasmfix::component::run(&bytes, &passes, &options))
        }));
        let (listed, result) = result.expect("wasmfix panicked on a damaged component");
        match result {
            Ok(out) => {
                validate_component(&out.bytes);
                assert!(listed.is_ok());
                rewritten += 1;
            }
            Err(f) => {
                assert!(!f.to_string().contains('\n'), "{f}");
                refused += 1;
            }
        }
    }
    println!("damaged components: {refused} refused, {rewritten} rewritten");
}
