//! WASI preview 2 (issue 17, seed 002): preview1 modules that survive the stock adapter.
//!
//! A Go module and a C module linked with Debian's wasi-libc run as preview1 modules, and crash
//! with the adapter's assertion once `wasm-tools component new --adapt` (here: wit-component,
//! what it uses) turns them into components with the stock command adapter 33.0.0 or 50.0.1.
//! After wasmfix (adapter-memory, in the default pipeline), the same components print exactly
//! what the modules print, under wasmtime-wasi (preview 2) and under jco in node. The fixtures
//! and how they are built: tests/fixtures/preview2/README.md.

mod common;
#[path = "common/preview2.rs"]
mod p2;

use common::Outcome;
use p2::{ADAPTERS, ARGS, adapt, engine, jco, run_component, run_jco, run_module};
use std::path::Path;

fn fixture(name: &str) -> Vec<u8> {
    let path = common::repo().join("tests/fixtures/preview2").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `module` without its name section (what `-ldflags=-s` or a strip step gives).
fn without_names(module: &[u8]) -> Vec<u8> {
    let mut out = wasm_encoder::Module::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload.unwrap();
        if let wasmparser::Payload::CustomSection(c) = &payload
            && c.name() == "name"
        {
            continue;
        }
        if let Some((id, range)) = payload.as_section() {
            out.section(&wasm_encoder::RawSection {
                id,
                data: &module[range.start as usize..range.end as usize],
            });
        }
    }
    let out = out.finish();
    assert_ne!(out.len(), module.len(), "the module had a name section");
    out
}

/// The default pipeline, as `wasmfix app.wasm -o app.wasm` runs it; also checks that
/// adapter-memory reserved memory.
fn fix(module: &[u8]) -> Vec<u8> {
    let passes: Vec<_> = wasmfix::passes::DEFAULT_PIPELINE
        .iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let outcome =
        wasmfix::pipeline::run(module, &passes, &Default::default()).unwrap_or_else(|f| {
            panic!("the default pipeline failed: {f}");
        });
    let report = outcome
        .reports
        .iter()
        .find(|r| r.pass == "adapter-memory")
        .unwrap();
    assert_eq!(report.details["reserved"], true, "{}", report.summary);
    outcome.bytes
}

/// The region adapter-memory reserved, from the `wasmfix` section it records itself in.
fn reserved_region(module: &[u8]) -> (u64, u64) {
    let applied = custom_data(module, "wasmfix").expect("a wasmfix section");
    let applied: serde_json::Value = serde_json::from_slice(&applied).unwrap();
    let region = &applied["adapter-memory"]["region"];
    (region[0].as_u64().unwrap(), region[1].as_u64().unwrap())
}

/// The modules the stock adapter breaks: (name, bytes).
fn broken_modules() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("go-heap.wasm", fixture("go-heap.wasm")),
        ("c-heap.debian.wasm", fixture("c-heap.debian.wasm")),
    ]
}

#[test]
fn the_stock_adapter_breaks_go_and_old_wasi_libc_modules() {
    for (name, module) in broken_modules() {
        let (preview1, _) = run_module(&module, ARGS);
        assert_eq!(preview1.outcome, Outcome::Exit(0), "{name}: {preview1:?}");
        for (version, adapter, line) in ADAPTERS {
            let run = run_component(&adapt(&module, adapter), ARGS);
            assert!(
                matches!(run.outcome, Outcome::Trap(_)),
                "{name} with adapter {version}: {run:?}"
            );
            let assertion = format!("assertion failed at adapter line {line}");
            assert!(
                run.stderr.contains(&assertion),
                "{name} with adapter {version}: stderr lacks {assertion:?}: {run:?}"
            );
        }
    }
}

/// Every module that must survive the adapter after wasmfix: Go (also after `wasm-opt -O2 -g`),
/// Debian's wasi-libc (also stripped of its names, and linked with relocations so that
/// stack-first moves the data first), and Zig's libc, which worked already.
fn fixable_modules() -> Vec<(String, Vec<u8>, &'static [&'static str])> {
    let mut out: Vec<(String, Vec<u8>, &[&str])> = [
        "go-heap.wasm",
        "go-heap.wasmopt.wasm",
        "c-heap.debian.wasm",
        "c-heap.zig.wasm",
    ]
    .iter()
    .map(|n| (n.to_string(), fixture(n), ARGS))
    .collect();
    out.push((
        "c-heap.debian.wasm without names".into(),
        without_names(&fixture("c-heap.debian.wasm")),
        ARGS,
    ));
    out.push((
        "wasm/stack.O2.relocs.wasm legal 2000".into(),
        common::fixture("stack.O2.relocs.wasm"),
        &["legal", "2000"],
    ));
    out
}

#[test]
fn after_wasmfix_the_components_print_what_the_modules_print() {
    for (name, module, args) in fixable_modules() {
        let (expected, _) = run_module(&module, args);
        assert_eq!(expected.outcome, Outcome::Exit(0), "{name}: {expected:?}");
        let fixed = fix(&module);
        common::validate(&fixed);
        let (region_start, region_end) = reserved_region(&fixed);
        let (preview1, memory) = run_module(&fixed, args);
        assert_eq!(
            preview1, expected,
            "{name}: the fixed module runs differently"
        );
        // The runtime never handed out the reserved region: nothing wrote to it.
        let region = &memory[region_start as usize..region_end as usize];
        assert!(
            region.iter().all(|&b| b == 0),
            "{name}: the program wrote into the reserved region [{region_start:#x}, {region_end:#x})"
        );
        for (version, adapter, _) in ADAPTERS {
            let run = run_component(&adapt(&fixed, adapter), args);
            assert_eq!(
                (&run.stdout, &run.outcome),
                (&expected.stdout, &expected.outcome),
                "{name} with adapter {version}: {run:?}"
            );
        }
    }
}

/// The contents of the first custom section called `name` (after its name).
fn custom_data(module: &[u8], name: &str) -> Option<Vec<u8>> {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .find_map(|p| match p.ok()? {
            wasmparser::Payload::CustomSection(c) if c.name() == name => Some(c.data().to_vec()),
            _ => None,
        })
}

/// The core modules of a component, with the module names they import from.
fn core_modules(component: &[u8]) -> Vec<(Vec<String>, Vec<u8>)> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        if let wasmparser::Payload::ModuleSection {
            unchecked_range, ..
        } = payload.unwrap()
        {
            let bytes =
                component[unchecked_range.start as usize..unchecked_range.end as usize].to_vec();
            let imports_from = wasmparser::Parser::new(0)
                .parse_all(&bytes)
                .filter_map(|p| match p.ok()? {
                    wasmparser::Payload::ImportSection(r) => Some(
                        r.into_imports()
                            .map(|i| i.unwrap().module.to_string())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            out.push((imports_from, bytes));
        }
    }
    out
}

/// (has a start section, executes memory.grow) for the adapter module of `component`.
fn adapter_start_and_grow(component: &[u8]) -> (bool, bool) {
    let modules = core_modules(component);
    // The adapter calls the main module's `_start`, imported from `__main_module__`.
    let (_, adapter) = modules
        .iter()
        .find(|(from, _)| from.iter().any(|m| m == "__main_module__"))
        .unwrap_or_else(|| {
            panic!(
                "no adapter module among {:?}",
                modules.iter().map(|m| &m.0).collect::<Vec<_>>()
            )
        });
    let (mut start, mut grow) = (false, false);
    for payload in wasmparser::Parser::new(0).parse_all(adapter) {
        match payload.unwrap() {
            wasmparser::Payload::StartSection { .. } => start = true,
            wasmparser::Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    if let wasmparser::Operator::MemoryGrow { .. } = ops.read().unwrap() {
                        grow = true;
                    }
                }
            }
            _ => {}
        }
    }
    (start, grow)
}

#[test]
fn with_the_export_the_adapter_has_no_start_function_and_never_grows_memory() {
    for (name, module) in broken_modules() {
        let fixed = fix(&module);
        for (version, adapter, _) in ADAPTERS {
            assert_eq!(
                adapter_start_and_grow(&adapt(&module, adapter)),
                (true, true),
                "{name} before wasmfix, adapter {version}: the adapter allocates its stack at start-up with memory.grow"
            );
            assert_eq!(
                adapter_start_and_grow(&adapt(&fixed, adapter)),
                (false, false),
                "{name} after wasmfix, adapter {version}"
            );
        }
    }
}

#[test]
fn the_bump_allocator_serves_the_adapter_and_traps_outside_its_contract() {
    let fixed = fix(&fixture("c-heap.debian.wasm"));
    let (start, end) = reserved_region(&fixed);
    // The region lies where __heap_base was: the stack's top, 70880 in this build.
    assert_eq!((start, end), (70880, 70880 + 2 * 65536));
    let module = wasmtime::Module::new(engine(), &fixed).unwrap();
    let call = |calls: &[(i32, i32, i32, i32)]| -> Vec<Result<i32, String>> {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build_p1();
        let mut store = wasmtime::Store::new(engine(), wasi);
        let mut linker = wasmtime::Linker::new(engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let realloc = instance
            .get_typed_func::<(i32, i32, i32, i32), i32>(&mut store, "cabi_realloc_adapter")
            .unwrap();
        calls
            .iter()
            .map(|&args| realloc.call(&mut store, args).map_err(|e| format!("{e:?}")))
            .collect()
    };
    let page = 65536;
    // What the adapter asks for: its stack, then its State page.
    let got = call(&[(0, 0, 8, page), (0, 0, 8, page), (0, 0, 1, 1)]);
    assert_eq!(got[0], Ok(start as i32));
    assert_eq!(got[1], Ok(start as i32 + page));
    assert!(got[2].is_err(), "the region is exhausted: {:?}", got[2]);
    // Alignment is honoured; resizing and alignments that are not powers of two trap.
    let got = call(&[(0, 0, 1, 3), (0, 0, 16, 4), (0, 0, 3, 4), (16, 4, 8, 32)]);
    assert_eq!(got[0], Ok(start as i32));
    assert_eq!(got[1], Ok((start as i32 + 3 + 15) & !15));
    assert!(got[2].is_err() && got[3].is_err(), "{got:?}");
}

/// Sections of `module` in order: (`section ID` or `custom NAME`, the section's bytes).
fn sections(module: &[u8]) -> Vec<(String, Vec<u8>)> {
    common::sections(module)
        .into_iter()
        .map(|s| match s.custom_name {
            Some(name) => (format!("custom {name}"), s.bytes),
            None => (format!("section {}", s.id), s.bytes),
        })
        .collect()
}

#[test]
fn a_module_that_works_already_changes_only_by_the_export_and_the_reservation() {
    // Zig's libc allocator takes only pages memory.grow returns: the region is placed above the
    // initial memory, and no code changes.
    let input = fixture("c-heap.zig.wasm");
    let output = common::rewrite(&input, "adapter-memory");
    let (before, after) = (sections(&input), sections(&output));
    // Sections that may change: types (a new signature), functions, globals, exports and code
    // (each only appended to), memory (two more pages), the name section (names of what was
    // added) and the `wasmfix` record. Everything else is byte for byte the same.
    let may_change = [
        "section 1",
        "section 3",
        "section 5",
        "section 6",
        "section 7",
        "section 10",
        "custom name",
        "custom wasmfix",
    ];
    let kept = |s: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        s.iter()
            .filter(|(k, _)| !may_change.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(kept(&before), kept(&after));
    let bodies_before = common::function_bodies(&input);
    let bodies_after = common::function_bodies(&output);
    assert_eq!(bodies_after.len(), bodies_before.len() + 1);
    assert_eq!(bodies_after[..bodies_before.len()], bodies_before[..]);

    let memory = |bytes: &[u8]| {
        wasmparser::Parser::new(0)
            .parse_all(bytes)
            .find_map(|p| match p.unwrap() {
                wasmparser::Payload::MemorySection(r) => Some(r.into_iter().next()?.unwrap()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(memory(&output).initial, memory(&input).initial + 2);
    let exports = |bytes: &[u8]| -> Vec<String> {
        wasmparser::Parser::new(0)
            .parse_all(bytes)
            .find_map(|p| match p.unwrap() {
                wasmparser::Payload::ExportSection(r) => {
                    Some(r.into_iter().map(|e| e.unwrap().name.to_string()).collect())
                }
                _ => None,
            })
            .unwrap()
    };
    let mut expected = exports(&input);
    expected.push("cabi_realloc_adapter".into());
    assert_eq!(exports(&output), expected);
    let (start, end) = reserved_region(&output);
    let initial = memory(&input).initial * 65536;
    assert_eq!((start, end), (initial, initial + 2 * 65536));
}

#[test]
fn a_heap_start_that_cannot_be_established_is_refused_under_passes_and_warned_about_by_default() {
    let cases = [
        (
            "go-heap.wasm without names",
            without_names(&fixture("go-heap.wasm")),
            "name section",
        ),
        (
            "c-heap.debian.wasmopt.wasm",
            fixture("c-heap.debian.wasmopt.wasm"),
            "before wasm-opt",
        ),
        (
            "c-heap.zig.wasm without names",
            without_names(&fixture("c-heap.zig.wasm")),
            "__heap_base",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, module, reason) in cases {
        let path = dir.path().join("app.wasm");
        std::fs::write(&path, &module).unwrap();
        let out = common::wasmfix()
            .args(["--passes", "adapter-memory"])
            .arg(&path)
            .arg("-o")
            .arg(dir.path().join("out.wasm"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("cannot establish where the module's heap starts")
                && stderr.contains(reason),
            "{name}: {stderr}"
        );
        assert!(!dir.path().join("out.wasm").exists());

        // The default pipeline warns, applies the other passes, and the hazard stays.
        let out = common::wasmfix()
            .arg(&path)
            .arg("-o")
            .arg(dir.path().join("out.wasm"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("adapter-memory: warning") && stderr.contains(reason),
            "{name}: {stderr}"
        );
        let check = common::wasmfix()
            .arg("--check")
            .arg(dir.path().join("out.wasm"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(wasmfix::inspect::ADAPTER_HAZARD),
            "{name}: {stderr}"
        );
        std::fs::remove_file(dir.path().join("out.wasm")).unwrap();
    }
}

#[test]
fn inspect_and_check_name_the_adapter_hazard_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let hazard = wasmfix::inspect::ADAPTER_HAZARD;
    let check = |path: &Path| {
        let out = common::wasmfix().arg("--check").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (name, module) in broken_modules() {
        let path = dir.path().join(name);
        std::fs::write(&path, &module).unwrap();
        assert!(check(&path).contains(hazard), "{name}: {}", check(&path));
        let inspect = common::wasmfix()
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&inspect.stdout);
        assert!(
            text.contains(hazard) && text.contains("\nheap: "),
            "{name}: {text}"
        );
        let status = common::wasmfix()
            .arg(&path)
            .arg("-o")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!check(&path).contains(hazard), "{name}: {}", check(&path));
    }
    // Zig's allocator takes only what memory.grow returns: no hazard to begin with.
    let path = dir.path().join("zig.wasm");
    std::fs::write(&path, fixture("c-heap.zig.wasm")).unwrap();
    assert!(!check(&path).contains(hazard), "{}", check(&path));
}

#[test]
fn under_jco_too() {
    let Some(jco) = jco() else { return };
    for (name, module) in broken_modules() {
        let (expected, _) = run_module(&module, ARGS);
        let fixed = fix(&module);
        for (version, adapter, line) in ADAPTERS {
            let (stdout, stderr, status) = run_jco(&jco, &adapt(&module, adapter), ARGS);
            assert!(
                status != Some(0)
                    && stderr.contains(&format!("assertion failed at adapter line {line}")),
                "{name} before wasmfix, adapter {version}: {status:?} {stdout} {stderr}"
            );
            let (stdout, stderr, status) = run_jco(&jco, &adapt(&fixed, adapter), ARGS);
            assert_eq!(
                (stdout.as_str(), status),
                (expected.stdout.as_str(), Some(0)),
                "{name} after wasmfix, adapter {version}: {stderr}"
            );
        }
    }
}
