//! Fidelity of the rewriting engine (issue 3): `--passes none` gives back the input byte for byte;
//! the producers pass changes the producers section and nothing else (function indices and
//! bodies, the name section, unknown custom sections and their order); output is deterministic;
//! and a rewritten program behaves exactly like the original in a real engine.
//!
//! Inputs: every `tests/fixtures/wasm/*.wasm` and every `tests/wat/*.wat`, plus the real modules
//! of `../shared/corpus/fetch.sh` when they are cached in `../corpus-cache`.

mod common;

use common::{Outcome, RawSection};

/// Every test input: (name, bytes).
fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut all = common::fixtures();
    assert!(
        !all.is_empty(),
        "no fixtures in tests/fixtures/wasm: the fidelity tests would prove nothing"
    );
    for path in common::wat_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = wat::parse_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        all.push((name, bytes));
    }
    all
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn passes_none_gives_back_the_input_byte_for_byte() {
    for (name, input) in inputs() {
        let output = common::rewrite(&input, "none");
        assert!(output == input, "{name}: --passes none changed the module");
    }
}

#[test]
fn cli_passes_none_writes_the_input_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (name, input) in inputs() {
        let in_path = dir.path().join(&name);
        let out_path = dir.path().join(format!("{name}.out.wasm"));
        std::fs::write(&in_path, &input).unwrap();
        let out = common::wasmfix()
            .arg(&in_path)
            .arg("-o")
            .arg(&out_path)
            .args(["--passes", "none"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&out_path).unwrap() == input,
            "{name}: wasmfix --passes none changed the module"
        );
    }
}

/// `sections` without the producers section.
fn without_producers(sections: &[RawSection]) -> Vec<&RawSection> {
    sections
        .iter()
        .filter(|s| s.custom_name.as_deref() != Some("producers"))
        .collect()
}

/// The producers fields `input` should have after the producers pass: `processed-by wasmfix
/// VERSION` added to (or updated in) the `processed-by` field, everything else as it was.
fn expected_producers(input: &[u8]) -> Vec<(String, Vec<(String, String)>)> {
    let mut fields = common::producers(input);
    let processed_by = match fields.iter().position(|(f, _)| f == "processed-by") {
        Some(i) => &mut fields[i].1,
        None => {
            fields.push(("processed-by".into(), Vec::new()));
            &mut fields.last_mut().unwrap().1
        }
    };
    match processed_by.iter_mut().find(|(tool, _)| tool == "wasmfix") {
        Some((_, version)) => *version = VERSION.into(),
        None => processed_by.push(("wasmfix".into(), VERSION.into())),
    }
    fields
}

#[test]
fn producers_pass_changes_the_producers_section_and_nothing_else() {
    for (name, input) in inputs() {
        let output = common::rewrite(&input, "producers");
        common::validate(&output);

        // Every original function keeps its index and its body bytes.
        let before = common::function_bodies(&input);
        let after = common::function_bodies(&output);
        assert!(
            after.len() >= before.len(),
            "{name}: functions were removed"
        );
        for ((i, body), (j, new_body)) in before.iter().zip(&after) {
            assert_eq!(i, j);
            assert!(body == new_body, "{name}: the body of function {i} changed");
        }

        // Every other section, custom or not (name, unknown ones), in its original order and
        // with its original bytes.
        let (s_in, s_out) = (common::sections(&input), common::sections(&output));
        let (kept_in, kept_out) = (without_producers(&s_in), without_producers(&s_out));
        let names = |s: &[&RawSection]| -> Vec<String> {
            s.iter()
                .map(|s| {
                    s.custom_name
                        .clone()
                        .unwrap_or_else(|| format!("#{}", s.id))
                })
                .collect()
        };
        assert_eq!(
            names(&kept_in),
            names(&kept_out),
            "{name}: sections other than producers are not in their original order"
        );
        for (a, b) in kept_in.iter().zip(&kept_out) {
            assert!(
                a == b,
                "{name}: section {:?} (id {}) changed",
                a.custom_name,
                a.id
            );
        }

        // The producers section: in place when there was one, else at the end; exactly one.
        let producers_at = |s: &[RawSection]| -> Vec<usize> {
            s.iter()
                .enumerate()
                .filter(|(_, s)| s.custom_name.as_deref() == Some("producers"))
                .map(|(i, _)| i)
                .collect()
        };
        let (p_in, p_out) = (producers_at(&s_in), producers_at(&s_out));
        assert_eq!(p_out.len(), 1, "{name}: not exactly one producers section");
        match p_in.as_slice() {
            [] => assert_eq!(p_out[0], s_out.len() - 1, "{name}: producers not appended"),
            [i] => assert_eq!(p_out[0], *i, "{name}: producers section moved"),
            _ => panic!("{name}: input has several producers sections"),
        }
        assert_eq!(
            common::producers(&output),
            expected_producers(&input),
            "{name}: producers fields"
        );

        // Same input, same bytes.
        assert!(
            common::rewrite(&input, "producers") == output,
            "{name}: two runs gave different bytes"
        );
        // Running it again changes nothing.
        assert!(
            common::rewrite(&output, "producers") == output,
            "{name}: a second producers pass changed the module"
        );
    }
}

#[test]
fn the_cli_writes_what_the_library_computes() {
    let input = common::fixture("layout.stackafter.wasm");
    let dir = tempfile::tempdir().unwrap();
    let (in_path, out_path) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&in_path, &input).unwrap();
    for _ in 0..2 {
        let out = common::wasmfix()
            .arg(&in_path)
            .arg("-o")
            .arg(&out_path)
            .args(["--passes", "producers"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(std::fs::read(&out_path).unwrap() == common::rewrite(&input, "producers"));
    }
}

#[test]
fn wat_fixtures_cover_what_fidelity_needs() {
    // Unknown custom sections between known sections, including before the first one.
    let sections = common::sections(&common::wat("custom-sections"));
    let order: Vec<String> = sections
        .iter()
        .map(|s| {
            s.custom_name
                .clone()
                .unwrap_or_else(|| format!("#{}", s.id))
        })
        .collect();
    let position = |n: &str| order.iter().position(|o| o == n).unwrap();
    assert_eq!(order[0], "first-custom", "{order:?}");
    assert!(position("#1") < position("after-type") && position("after-type") < position("#2"));
    assert!(position("before-code") < position("#10"));
    assert!(position("#11") < position("after-data"));
    assert!(order.contains(&"name".to_string()));
    assert!(!order.contains(&"producers".to_string()));
    // One with a producers section followed by another custom section, one without.
    let order: Vec<Option<String>> = common::sections(&common::wat("producers"))
        .into_iter()
        .map(|s| s.custom_name)
        .collect();
    let producers = order.iter().position(|n| n.as_deref() == Some("producers"));
    let trailer = order.iter().position(|n| n.as_deref() == Some("trailer"));
    assert!(producers.unwrap() < trailer.unwrap(), "{order:?}");
    assert!(common::producers(&common::wat("no-producers")).is_empty());
}

#[test]
fn passes_none_gives_back_corpus_modules_byte_for_byte() {
    let Some(corpus) = common::corpus() else {
        println!(
            "note: ../corpus-cache/pkgs is empty: corpus identity not checked here \
             (`python3 bench/bench.py` fetches the corpus and checks it)"
        );
        return;
    };
    for (name, path) in corpus {
        let input = std::fs::read(&path).unwrap();
        let output = common::rewrite(&input, "none");
        assert!(
            output == input,
            "{name} ({}): --passes none changed the module",
            path.display()
        );
    }
}

/// Runs `wasm` before and after the producers pass and expects the very same run: stdout,
/// stderr, exit status or trap (message and backtrace, since function indices are unchanged).
fn same_run_after_rewrite(what: &str, wasm: &[u8], args: &[&str]) -> common::Run {
    let before = common::run_wasi(wasm, args);
    let after = common::run_wasi(&common::rewrite(wasm, "producers"), args);
    assert_eq!(
        before, after,
        "{what} {args:?}: the rewritten module behaves differently"
    );
    before
}

#[test]
fn a_c_program_runs_the_same_after_rewriting() {
    let run = same_run_after_rewrite(
        "layout.stackafter.wasm",
        &common::fixture("layout.stackafter.wasm"),
        &[],
    );
    assert_eq!(run.stdout, "hello from layout: sum=7053\n");
    assert_eq!(run.outcome, Outcome::Exit(0));

    let run = same_run_after_rewrite(
        "stack.O2.wasm",
        &common::fixture("stack.O2.wasm"),
        &["calls"],
    );
    assert_eq!(run.stdout, "calls n=1000 checksum=d5f9364b\n");
    assert_eq!(run.outcome, Outcome::Exit(0));
}

#[test]
fn a_c_program_traps_the_same_after_rewriting() {
    // The producers pass fixes nothing: the cast still traps, in the same function.
    let run = same_run_after_rewrite(
        "fpcast.O2.wasm",
        &common::fixture("fpcast.O2.wasm"),
        &["getter"],
    );
    assert!(
        run.outcome.is_trap("indirect call type mismatch"),
        "{run:?}"
    );
}

#[test]
fn wat_programs_run_the_same_after_rewriting() {
    let run = same_run_after_rewrite("hello-wasi.wat", &common::wat("hello-wasi"), &[]);
    assert_eq!(run.stdout, "hello\n");
    assert_eq!(run.stderr, "");
    assert_eq!(run.outcome, Outcome::Exit(3));

    let run = same_run_after_rewrite(
        "indirect-mismatch.wat",
        &common::wat("indirect-mismatch"),
        &[],
    );
    assert!(
        run.outcome.is_trap("indirect call type mismatch"),
        "{run:?}"
    );
}

/// Custom sections a run may legitimately add, rewrite or drop: `name` gains the names of added
/// functions, `producers` gains wasmfix, the applied-fixes section records what the passes did,
/// relocating the stack consumes `linking`/`reloc.*` and applies `reloc.X` to section `X`
/// (DWARF's data addresses, for example), DWARF's code addresses follow rewritten bodies
/// (`tests/debug_info.rs` checks what they become), and `target_features` lists the features
/// passes added (`tests/features.rs` checks what it becomes).
fn rewritten_by_passes(name: &str, input: &[(String, Vec<u8>)]) -> bool {
    matches!(name, "name" | "producers" | "linking" | "target_features")
        || name.starts_with(".debug_")
        || name == wasmfix::facts::APPLIED_SECTION
        || name.starts_with("reloc.")
        || input.iter().any(|(n, _)| *n == format!("reloc.{name}"))
}

/// Function index → name from the name section.
fn function_names(bytes: &[u8]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let wasmparser::Payload::CustomSection(c) = payload.unwrap() else {
            continue;
        };
        let wasmparser::KnownCustom::Name(reader) = c.as_known() else {
            continue;
        };
        for sub in reader {
            if let wasmparser::Name::Function(map) = sub.unwrap() {
                for naming in map {
                    let naming = naming.unwrap();
                    out.push((naming.index, naming.name.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn default_pipeline_output_validates_is_deterministic_idempotent_and_keeps_custom_sections() {
    let pipeline = wasmfix::passes::DEFAULT_PIPELINE.join(",");
    for (name, input) in inputs() {
        let output = match common::try_rewrite(&input, &pipeline) {
            Ok(output) => output,
            // A refusal is a documented outcome (exit 2); the CLI tests cover its form.
            Err(message) => {
                println!("note: {name}: default pipeline refused: {message}");
                continue;
            }
        };
        common::validate(&output);
        assert!(
            common::rewrite(&input, &pipeline) == output,
            "{name}: two runs of the default pipeline gave different bytes"
        );
        assert!(
            common::rewrite(&output, &pipeline) == output,
            "{name}: running the default pipeline on its own output changed it"
        );
        let input_customs = common::custom_sections(&input);
        let kept = |bytes: &[u8]| -> Vec<(String, Vec<u8>)> {
            common::custom_sections(bytes)
                .into_iter()
                .filter(|(n, _)| !rewritten_by_passes(n, &input_customs))
                .collect()
        };
        assert!(
            kept(&input) == kept(&output),
            "{name}: unknown custom sections changed or moved"
        );
        // Original functions keep their index, hence their name.
        let names_after = function_names(&output);
        for named in function_names(&input) {
            assert!(
                names_after.contains(&named),
                "{name}: function {} `{}` lost its name",
                named.0,
                named.1
            );
        }
    }
}

#[test]
fn default_pipeline_keeps_working_programs_working() {
    let pipeline = wasmfix::passes::DEFAULT_PIPELINE.join(",");
    let cases: [(&str, &[&str]); 7] = [
        ("layout.stackafter.wasm", &[]),
        ("layout.stackfirst.wasm", &[]),
        ("stack.O2.wasm", &["calls"]),
        ("stack.O0.wasm", &["legal"]),
        ("fpcast.O2.wasm", &["mixed-match"]),
        ("fpcast-typed.O2.wasm", &["getter"]),
        ("fpcast-typed.O0.wasm", &["mixed"]),
    ];
    for (fixture, args) in cases {
        let wasm = common::fixture(fixture);
        let before = common::run_wasi(&wasm, args);
        assert_eq!(
            before.outcome,
            Outcome::Exit(0),
            "{fixture} {args:?}: {before:?}"
        );
        let after = common::run_wasi(&common::rewrite(&wasm, &pipeline), args);
        assert_eq!(
            before, after,
            "{fixture} {args:?}: the default pipeline changed a working run"
        );
    }
    let wasm = common::wat("hello-wasi");
    let after = common::run_wasi(&common::rewrite(&wasm, &pipeline), &[]);
    assert_eq!(after, common::run_wasi(&wasm, &[]));
}
