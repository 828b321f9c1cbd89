//! heap-canary's use-after-free checks and allocator recognition on the C fixtures
//! (tests/fixtures/c/uaf.c; tests/fixtures/build_heap.sh builds them with clang 14 + wasi-libc
//! 2022 (dlmalloc), zig 0.14 (emmalloc) and zig 0.17 (its own malloc: found by its names, not
//! recognized by its code when stripped)): every
//! bug that the original runs silently stops, every correct program prints what it printed.

mod common;

use common::{Outcome, Run, fixture, run_wasi};
use wasmfix::passes::heap_canary::HeapOptions;

/// Builds in which heap-canary finds the allocator: by names (O0, O2, O2.wasmopt, and zig.O2:
/// Zig's own malloc, `c.malloc.free` …) or by its code (the stripped ones: dlmalloc from clang,
/// emmalloc from zig 0.14).
const VARIANTS: &[&str] = &[
    "O0",
    "O2",
    "O2.wasmopt",
    "O2.stripped",
    "zig14.O2.stripped",
    "zig.O2",
];

/// The builds among [`VARIANTS`] in which bounds finds no null page, so a use of a poisoned
/// pointer traps in the engine without wasmfix's message: the stripped ones (no producers
/// section names the linker) and zig's (its linker puts the stack at address 0).
const NO_NULL_PAGE: &[&str] = &["O2.stripped", "zig14.O2.stripped", "zig.O2"];

fn rewrite(input: &[u8], passes: &str, heap: HeapOptions) -> Vec<u8> {
    let options = wasmfix::passes::PassOptions {
        heap,
        harden: passes == "harden",
        ..Default::default()
    };
    let list = if passes == "harden" {
        harden_passes(None)
    } else {
        common::passes(passes)
    };
    wasmfix::pipeline::run(input, &list, &options)
        .unwrap_or_else(|f| panic!("{passes}: {f}"))
        .bytes
}

/// --harden's passes, but for `without`.
fn harden_passes(without: Option<&str>) -> Vec<&'static dyn wasmfix::passes::Pass> {
    wasmfix::passes::harden_pipeline()
        .into_iter()
        .filter(|&n| Some(n) != without)
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect()
}

fn heap_canary(variant: &str, heap: HeapOptions) -> Vec<u8> {
    rewrite(
        &fixture(&format!("uaf.{variant}.wasm")),
        "heap-canary",
        heap,
    )
}

fn quarantine(bytes: u32) -> HeapOptions {
    HeapOptions {
        quarantine: Some(bytes),
        ..Default::default()
    }
}

fn stress() -> HeapOptions {
    HeapOptions {
        stress: true,
        ..Default::default()
    }
}

fn assert_trapped(run: &Run, what: &str) {
    assert!(
        matches!(run.outcome, Outcome::Trap(_)),
        "{what}: should trap: {run:?}"
    );
}

const WRITTEN: &str = "wasmfix: heap use after free: block of ";

#[test]
fn correct_programs_behave_identically() {
    for variant in VARIANTS {
        let original = fixture(&format!("uaf.{variant}.wasm"));
        let builds = [
            ("heap-canary", heap_canary(variant, HeapOptions::default())),
            ("no quarantine", heap_canary(variant, quarantine(0))),
            ("a 1 KiB quarantine", heap_canary(variant, quarantine(1024))),
            (
                "--harden",
                rewrite(&original, "harden", HeapOptions::default()),
            ),
        ];
        for args in [
            &["list", "3000"][..],
            &["tree", "2000"],
            &["strings", "3000"],
            &["aligned"],
            &["churn", "20000"],
        ] {
            let before = run_wasi(&original, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {args:?}");
            for (what, fixed) in &builds {
                assert_eq!(before, run_wasi(fixed, args), "{variant} {what} {args:?}");
            }
        }
        // Stress mode checks the whole quarantine at every allocation: small runs.
        let stressed = heap_canary(variant, stress());
        for args in [&["list", "200"][..], &["tree", "200"], &["churn", "500"]] {
            assert_eq!(
                run_wasi(&original, args),
                run_wasi(&stressed, args),
                "{variant} --heap-stress {args:?}"
            );
        }
    }
}

/// Poisoning, `calloc`'s clearing and `realloc`'s copy use `memory.fill`/`memory.copy` only
/// where the run allows bulk memory: clang 14's builds do not use it, so they get loops; with
/// bulk memory enabled the output uses it, says so (`added_features`), and behaves the same.
#[test]
fn bulk_memory_only_where_the_run_allows_it() {
    let bulk_ops = |bytes: &[u8]| {
        let mut n = 0;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            if let Ok(wasmparser::Payload::CodeSectionEntry(body)) = payload {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    if matches!(
                        ops.read().unwrap(),
                        wasmparser::Operator::MemoryFill { .. }
                            | wasmparser::Operator::MemoryCopy { .. }
                    ) {
                        n += 1;
                    }
                }
            }
        }
        n
    };
    let original = fixture("uaf.O2.wasm");
    assert_eq!(bulk_ops(&original), 0, "the fixture uses no bulk memory");
    let plain = heap_canary("O2", HeapOptions::default());
    assert_eq!(
        bulk_ops(&plain),
        0,
        "loops where the input has no bulk memory"
    );
    let mut options = wasmfix::passes::PassOptions::default();
    options
        .features
        .enable(wasmfix::features::Feature::BulkMemory);
    let outcome = wasmfix::pipeline::run(&original, &common::passes("heap-canary"), &options)
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(bulk_ops(&outcome.bytes) > 0);
    assert!(
        outcome
            .added_features
            .contains(wasmfix::features::Feature::BulkMemoryOpt),
        "{:?}",
        outcome.added_features
    );
    for args in [
        &["list", "3000"][..],
        &["strings", "3000"],
        &["churn", "2000"],
    ] {
        let before = run_wasi(&original, args);
        assert_eq!(before, run_wasi(&plain, args), "{args:?}");
        assert_eq!(before, run_wasi(&outcome.bytes, args), "bulk {args:?}");
    }
    // A write after free is found with either.
    for fixed in [&plain, &outcome.bytes] {
        let after = run_wasi(fixed, &["write"]);
        assert!(after.stderr.starts_with(WRITTEN), "{after:?}");
    }
}

/// `write` frees a block, writes into it, then allocates and frees 100 more blocks of 24–63
/// bytes: with a small quarantine the block leaves it during that loop, before the program
/// prints anything.
#[test]
fn a_write_after_free_stops_when_the_block_leaves_the_quarantine() {
    for variant in VARIANTS {
        let original = fixture(&format!("uaf.{variant}.wasm"));
        let before = run_wasi(&original, &["write"]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        assert_eq!(before.stdout, "write after free accepted (4950)\n");
        for (what, fixed) in [
            (
                "a 256-byte quarantine",
                heap_canary(variant, quarantine(256)),
            ),
            ("--heap-stress", heap_canary(variant, stress())),
        ] {
            let after = run_wasi(&fixed, &["write"]);
            assert_trapped(&after, &format!("{variant} {what}"));
            assert_eq!(
                after.stdout, "",
                "{variant} {what}: stopped before printing"
            );
            assert!(
                after
                    .stderr
                    .starts_with(&format!("{WRITTEN}24 bytes at 0x"))
                    && after.stderr.ends_with(" written after it was freed\n"),
                "{variant} {what}: {after:?}"
            );
        }
    }
}

/// With the default quarantine the block is still in it when the program ends: the check at
/// the end of `_start` (case `write`) or before `proc_exit` (case `exit`, which calls
/// `exit(0)`) finds it.
#[test]
fn a_write_after_free_stops_at_exit_at_the_latest() {
    for variant in VARIANTS {
        let original = fixture(&format!("uaf.{variant}.wasm"));
        for (fixed, what) in [
            (heap_canary(variant, HeapOptions::default()), "heap-canary"),
            (
                rewrite(&original, "harden", HeapOptions::default()),
                "--harden",
            ),
        ] {
            for (case, size, printed) in [
                ("write", 24, "write after free accepted (4950)\n"),
                ("exit", 40, "exit after a write after free\n"),
            ] {
                let before = run_wasi(&original, &[case]);
                assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {case}");
                assert_eq!(before.stdout, printed, "{variant} {case}");
                let after = run_wasi(&fixed, &[case]);
                assert_trapped(&after, &format!("{variant} {what} {case}"));
                assert_eq!(after.stdout, printed, "{variant} {what} {case}");
                assert!(
                    after
                        .stderr
                        .starts_with(&format!("{WRITTEN}{size} bytes at 0x")),
                    "{variant} {what} {case}: {after:?}"
                );
            }
        }
    }
}

/// `read` prints the string a freed struct's pointer field points to; `struct` follows a
/// pointer read from a freed block and writes through it. The poison makes that pointer
/// 0xfefefefe, which traps at its first use instead of reaching the old data.
#[test]
fn a_pointer_read_from_a_freed_block_traps_at_its_first_use() {
    for variant in VARIANTS {
        let original = fixture(&format!("uaf.{variant}.wasm"));
        let fixed = heap_canary(variant, HeapOptions::default());
        for (case, printed) in [
            ("read", "read after free: alice\n"),
            ("struct", "struct ok 1\n"),
        ] {
            let before = run_wasi(&original, &[case]);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {case}");
            assert_eq!(before.stdout, printed, "{variant} {case}");
            let after = run_wasi(&fixed, &[case]);
            assert!(
                after.outcome.is_trap("out of bounds memory access"),
                "{variant} {case}: {after:?}"
            );
            assert_eq!(after.stdout, "", "{variant} {case}");
        }
    }
}

/// The allocator found by its code in the stripped build is the one the names give in the
/// same build with names.
#[test]
fn the_code_finds_the_functions_the_names_give() {
    let roles = |name: &str| {
        let bytes = fixture(name);
        let (m, facts) = wasmfix::pipeline::load(&bytes).unwrap();
        let a = facts.allocator(&m).as_ref().unwrap().clone();
        let mut v: Vec<(String, u32)> = a
            .functions
            .iter()
            .map(|f| (f.role.c_name().to_string(), f.func))
            .collect();
        v.sort();
        (v, a)
    };
    let (named, by_names) = roles("uaf.O2.wasmopt.wasm");
    let (stripped, by_code) = roles("uaf.O2.stripped.wasm");
    assert_eq!(named, stripped);
    assert!(
        by_names
            .functions
            .iter()
            .all(|f| f.how.contains("name section"))
    );
    assert!(
        by_code
            .functions
            .iter()
            .all(|f| !f.how.contains("name section"))
    );
    assert_eq!(by_code.family, Some(wasmfix::allocator::Family::Dlmalloc));
    let (_, emmalloc) = roles("uaf.zig14.O2.stripped.wasm");
    assert_eq!(emmalloc.family, Some(wasmfix::allocator::Family::Emmalloc));
    assert!(emmalloc.aligned_core.is_some());
}

/// Zig 0.15 and later link a malloc of their own (lib/c/malloc.zig). With the name section kept,
/// as zig cc leaves it, heap-canary finds every role of it by the Zig paths the name section
/// gives its functions (`c.malloc.free`, …; `malloc` keeps its C name); its code is not
/// recognized (no family), so the stripped build is refused (tests/harden.rs).
#[test]
fn zigs_own_malloc_is_found_by_its_names() {
    let bytes = fixture("uaf.zig.O2.wasm");
    let (m, facts) = wasmfix::pipeline::load(&bytes).unwrap();
    let allocator = facts.allocator(&m).as_ref().unwrap();
    let mut found: Vec<(&str, &str)> = allocator
        .functions
        .iter()
        .map(|f| (f.role.c_name(), f.label.as_str()))
        .collect();
    found.sort();
    let labels: Vec<(&str, &str)> = found
        .iter()
        .map(|(role, label)| (*role, label.split(' ').next().unwrap()))
        .collect();
    assert_eq!(
        labels,
        [
            ("aligned_alloc", "`c.malloc.aligned_alloc`"),
            ("calloc", "`c.malloc.calloc`"),
            ("free", "`c.malloc.free`"),
            ("malloc", "`malloc`"),
            ("posix_memalign", "`c.malloc.posix_memalign`"),
            ("realloc", "`c.malloc.realloc`"),
        ],
        "{found:?}"
    );
    assert!(
        allocator
            .functions
            .iter()
            .all(|f| f.how.contains("name section")),
        "{:?}",
        allocator.functions
    );
    assert_eq!(allocator.family, None);
}

/// After wasm-opt -O2 (names kept), Zig's aligned_alloc and posix_memalign are inlined into the
/// program, which then calls the allocator's core (`heap.BrkAllocator.alloc`) itself: the blocks
/// it hands out there would have no header, and the wrapped free would stop a correct program
/// on them (it did: `aligned` stopped with "the header of block … is overwritten"). heap-canary
/// refuses with the reason, exit 2, nothing written; --harden warns, leaves heap blocks
/// unchecked, and every program runs as before.
#[test]
fn an_allocator_core_called_from_outside_is_not_wrapped() {
    let input = fixture("uaf.zig.O2.wasmopt.wasm");
    let (m, facts) = wasmfix::pipeline::load(&input).unwrap();
    let why = facts.allocator(&m).as_ref().unwrap_err();
    assert!(
        why.contains("`heap.BrkAllocator.alloc`")
            && why.contains("grows memory")
            && why.contains("is called by `_start`"),
        "{why}"
    );
    let stderr = common::heap_canary_refusal("uaf.zig.O2.wasmopt.wasm");
    assert!(stderr.contains("cannot be wrapped safely"), "{stderr}");

    let hardened = rewrite(&input, "harden", HeapOptions::default());
    for args in [
        &["aligned"][..],
        &["list", "3000"],
        &["strings", "3000"],
        &["churn", "20000"],
        &["write"],
    ] {
        let before = run_wasi(&input, args);
        assert_eq!(before.outcome, Outcome::Exit(0), "{args:?}");
        assert_eq!(before, run_wasi(&hardened, args), "--harden {args:?}");
    }
}

/// `--malloc`/`--free` name the allocator by hand: by index on a stripped module, with the
/// same result as finding it; a function of the wrong type is refused with the reason.
#[test]
fn the_allocator_can_be_named_by_hand() {
    let stripped = fixture("uaf.O2.stripped.wasm");
    let (m, facts) = wasmfix::pipeline::load(&stripped).unwrap();
    let found = facts.allocator(&m).as_ref().unwrap();
    let (malloc, free) = (found.malloc(), found.free());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let path = common::repo().join("tests/fixtures/wasm/uaf.O2.stripped.wasm");
    let by_hand = common::wasmfix()
        .arg(&path)
        .args(["--passes", "heap-canary", "-o"])
        .arg(&out)
        .args(["--malloc", &malloc.to_string(), "--free", &free.to_string()])
        .output()
        .unwrap();
    assert_eq!(by_hand.status.code(), Some(0), "{by_hand:?}");
    let fixed = std::fs::read(&out).unwrap();
    assert_eq!(fixed, heap_canary("O2.stripped", HeapOptions::default()));

    let wrong = common::wasmfix()
        .arg(&path)
        .args(["--passes", "heap-canary", "-o"])
        .arg(&out)
        .args(["--malloc", &free.to_string()])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("--malloc {free}")) && stderr.contains("has type (i32)->()"),
        "{stderr}"
    );
}

/// The real modules: the code finds in stripped ruby.wasm the functions ruby-debug (the same
/// build with names) names; heap-canary applies to both and to yosys and sqlite, and the
/// output validates. (The Ruby workload itself runs in `bench/bench.py --sections heap`.)
#[test]
fn corpus_allocators() {
    let Some(corpus) = common::corpus() else {
        eprintln!("corpus not fetched: skipped");
        return;
    };
    let get = |name: &str| corpus.iter().find(|(n, _)| n == name).map(|(_, p)| p);
    if let (Some(ruby), Some(debug)) = (get("ruby"), get("ruby-debug")) {
        let roles = |path: &std::path::Path| {
            let bytes = std::fs::read(path).unwrap();
            let (m, facts) = wasmfix::pipeline::load(&bytes).unwrap();
            let a = facts.allocator(&m).as_ref().unwrap().clone();
            let v: Vec<(String, u32)> = a
                .functions
                .iter()
                .map(|f| (f.role.c_name().to_string(), f.func))
                .collect();
            (v, a.family)
        };
        let (stripped, family) = roles(ruby);
        assert_eq!(stripped, roles(debug).0);
        assert_eq!(family, Some(wasmfix::allocator::Family::Dlmalloc));
        assert_eq!(stripped.len(), 8, "{stripped:?}");
    }
    for (name, path) in &corpus {
        if name == "ruby-debug" {
            continue; // 49 MB of DWARF: covered by tests/debug_info.rs
        }
        let bytes = std::fs::read(path).unwrap();
        let out =
            wasmfix::pipeline::run(&bytes, &common::passes("heap-canary"), &Default::default())
                .unwrap_or_else(|f| panic!("{name}: {f}"));
        common::validate(&out.bytes);
        assert!(
            out.reports[0].summary.starts_with("wrapped "),
            "{name}: {}",
            out.reports[0].summary
        );
    }
}

// --- A language runtime with a mark-sweep collector (tests/fixtures/c/gcrt.c): seed 003 ---

/// Runs gcrt's `_start` with a host that keeps one pointer (`env.host_store`), hands it back
/// (`env.host_load`) or passes it to the export `list_length` (`env.host_length`).
fn run_gcrt(wasm: &[u8], args: &[&str]) -> Run {
    use std::sync::{Arc, Mutex};
    common::run_wasi_with_host(wasm, args, &|linker: &mut common::WasiLinker| {
        let kept = Arc::new(Mutex::new(0i32));
        let k = kept.clone();
        linker
            .func_wrap("env", "host_store", move |p: i32| *k.lock().unwrap() = p)
            .unwrap();
        let k = kept.clone();
        linker
            .func_wrap("env", "host_load", move || *k.lock().unwrap())
            .unwrap();
        let k = kept.clone();
        linker
            .func_wrap(
                "env",
                "host_length",
                move |mut caller: wasmtime::Caller<'_, _>| -> wasmtime::Result<i32> {
                    let f = caller
                        .get_export("list_length")
                        .and_then(|e| e.into_func())
                        .expect("exports list_length");
                    let f = f.typed::<i32, i32>(&caller)?;
                    let p = *k.lock().unwrap();
                    f.call(&mut caller, p)
                },
            )
            .unwrap();
    })
}

/// gcrt rewritten by heap-canary with its allocator named (by name or, for the stripped
/// build, by the indices the named build gives).
fn gcrt(variant: &str, extra: HeapOptions) -> Vec<u8> {
    let input = fixture(&format!("gcrt.{variant}.wasm"));
    let named = fixture("gcrt.O2.wasm");
    let (m, facts) = wasmfix::pipeline::load(&named).unwrap();
    let index = |name: &str| {
        let (f, _) = wasmfix::allocator::named(&m, &facts.function_names, name).unwrap();
        f.to_string()
    };
    let by = |name: &str| -> wasmfix::allocator::Selector {
        if variant == "O2.stripped" {
            index(name).parse().unwrap()
        } else {
            name.parse().unwrap()
        }
    };
    let spec = |name: &str, tail: &str| -> wasmfix::passes::heap_canary::FnSpec {
        format!(
            "{}{tail}",
            match by(name) {
                wasmfix::allocator::Selector::Index(i) => i.to_string(),
                wasmfix::allocator::Selector::Name(n) => n,
            }
        )
        .parse()
        .unwrap()
    };
    let heap = HeapOptions {
        alloc_fns: vec![spec("gc_alloc", "")],
        free_fns: vec![spec("gc_release", ":ptr=0:size=1")],
        collect_fn: extra.stress.then(|| by("gc_collect")),
        host_pointers: vec![
            "env.host_load".parse().unwrap(),
            "export:list_length".parse().unwrap(),
        ],
        ..extra
    };
    rewrite(&input, "heap-canary", heap)
}

const GCRT: &[&str] = &["O2", "O2.stripped"];

/// The seed's scenario: the collector frees a list only the host points to, the program
/// allocates, and the host hands the list back. Before: the program reads freed (and partly
/// reused) cells and goes on. After: it stops at the boundary, naming the import or export.
#[test]
fn a_block_the_collector_freed_stops_when_the_host_hands_it_back() {
    for variant in GCRT {
        let original = fixture(&format!("gcrt.{variant}.wasm"));
        let before = run_gcrt(&original, &["unrooted"]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        assert!(
            before.stdout.starts_with("list length=") && before.stdout != "list length=10 sum=55\n",
            "{variant}: garbage from freed cells: {before:?}"
        );
        let before = run_gcrt(&original, &["callback"]);
        assert_eq!(before.stdout, "length via host=10\n", "{variant}");

        let fixed = gcrt(variant, HeapOptions::default());
        let after = run_gcrt(&fixed, &["unrooted"]);
        assert_trapped(&after, variant);
        assert_eq!(after.stdout, "", "{variant}");
        assert!(
            after
                .stderr
                .starts_with("wasmfix: env.host_load returned 0x")
                && after
                    .stderr
                    .contains(", which points into a block freed at release #")
                && after.stderr.ends_with(")\n"),
            "{variant}: {after:?}"
        );
        let after = run_gcrt(&fixed, &["callback"]);
        assert_trapped(&after, variant);
        assert!(
            after
                .stderr
                .starts_with("wasmfix: list_length was passed 0x")
                && after
                    .stderr
                    .contains(", which points into a block freed at release #"),
            "{variant}: {after:?}"
        );
        // Rooted, the same program is correct and prints the same.
        for args in [&["rooted"][..], &["churn", "3000"], &["quiet"]] {
            let before = run_gcrt(&original, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {args:?}");
            assert_eq!(before, run_gcrt(&fixed, args), "{variant} {args:?}");
        }
    }
}

/// `quiet` allocates only once between storing and loading: no collection runs and the bug
/// stays hidden. A collection at every allocation (`--heap-stress --collect-fn`) shows it on
/// the first run; correct programs still print the same.
#[test]
fn stress_mode_shows_a_latent_collector_bug_on_the_first_run() {
    for variant in GCRT {
        let original = fixture(&format!("gcrt.{variant}.wasm"));
        let before = run_gcrt(&original, &["quiet"]);
        assert_eq!(
            before.stdout, "list length=10 sum=55\n",
            "{variant}: hidden"
        );
        let stressed = gcrt(variant, stress());
        let after = run_gcrt(&stressed, &["quiet"]);
        assert_trapped(&after, variant);
        assert!(
            after
                .stderr
                .starts_with("wasmfix: env.host_load returned 0x"),
            "{variant}: {after:?}"
        );
        for args in [&["rooted"][..], &["churn", "300"]] {
            assert_eq!(
                run_gcrt(&original, args),
                run_gcrt(&stressed, args),
                "{variant} {args:?}"
            );
        }
    }
}

/// Custom allocator options that cannot work are refused with the reason, one line.
#[test]
fn custom_allocator_options_are_checked() {
    let path = common::repo().join("tests/fixtures/wasm/gcrt.O2.wasm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    for (args, expected) in [
        (
            &["--alloc-fn", "gc_alloc", "--free-fn", "gc_release"][..],
            "--free-fn `gc_release`: say which argument holds the block's size (:size=N)",
        ),
        (
            &["--alloc-fn", "gc_release", "--free-fn", "gc_release:size=1"],
            "--alloc-fn `gc_release`: function",
        ),
        (
            &["--alloc-fn", "gc_alloc"],
            "--alloc-fn needs the runtime's release function too (--free-fn)",
        ),
        (
            &["--check-host-pointers", "env.nothing"],
            "--check-host-pointers env.nothing: the module imports no such function",
        ),
        (
            &["--check-host-pointers", "env.host_store"],
            "--check-host-pointers env.host_store: it returns (i32)->(), not one i32",
        ),
    ] {
        let run = common::wasmfix()
            .arg(&path)
            .args(["--passes", "heap-canary", "-o"])
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
}

/// Builds of tests/fixtures/c/uaf_large.c: a freed 1012-byte record, above the default
/// `--poison-bytes` (256).
const LARGE_VARIANTS: &[&str] = &["O0", "O2", "O2.wasmopt", "O2.stripped"];

fn poison_bytes(bytes: u32) -> HeapOptions {
    HeapOptions {
        poison_bytes: Some(bytes),
        ..Default::default()
    }
}

/// A block above `--poison-bytes` has its first 256 bytes and its last 8 poisoned: a pointer
/// read from its start traps, a write into its start or its end stops at exit. A write into
/// its middle is found only with `--poison-bytes all`; correct programs print the same.
#[test]
fn a_large_block_is_poisoned_at_its_start_and_its_end() {
    for variant in LARGE_VARIANTS {
        let original = fixture(&format!("uaf_large.{variant}.wasm"));
        let rewrite_with = |heap| rewrite(&original, "heap-canary", heap);
        let capped = rewrite_with(HeapOptions::default());
        let all = rewrite_with(poison_bytes(u32::MAX));
        let churn = run_wasi(&original, &["churn", "200"]);
        assert!(churn.stdout.starts_with("churn n=200 "), "{churn:?}");
        for fixed in [&capped, &all] {
            assert_eq!(churn, run_wasi(fixed, &["churn", "200"]), "{variant}");
        }

        let before = run_wasi(&original, &["read"]);
        assert_eq!(before.stdout, "read after free: carol\n", "{variant}");
        for fixed in [&capped, &all] {
            let after = run_wasi(fixed, &["read"]);
            assert!(
                after.outcome.is_trap("out of bounds memory access"),
                "{variant} read: {after:?}"
            );
            assert_eq!(after.stdout, "", "{variant} read");
        }

        for (case, found_by_default) in [("head", true), ("tail", true), ("middle", false)] {
            let printed = format!("{case} written (190)\n");
            let before = run_wasi(&original, &[case]);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {case}");
            assert_eq!(before.stdout, printed, "{variant} {case}");
            for (what, fixed, found) in [
                ("default", &capped, found_by_default),
                ("--poison-bytes all", &all, true),
            ] {
                let after = run_wasi(fixed, &[case]);
                assert_eq!(after.stdout, printed, "{variant} {what} {case}");
                if found {
                    assert_trapped(&after, &format!("{variant} {what} {case}"));
                    assert!(
                        after
                            .stderr
                            .starts_with(&format!("{WRITTEN}1012 bytes at 0x")),
                        "{variant} {what} {case}: {after:?}"
                    );
                } else {
                    assert_eq!(after, before, "{variant} {what} {case}: not poisoned");
                }
            }
        }
    }
}

/// The builds of tests/fixtures/c/uaf_field.c in which heap-canary finds the allocator and
/// bounds the null page: memory maximum 16 MiB (bounds' signed check), and 0xfe000000 bytes
/// (`max4g`, the shifted check). The stripped build has no producers section, so bounds cannot
/// establish where the statics start and checks nothing: see
/// `the_report_says_how_the_poison_range_is_checked`.
const FIELD_VARIANTS: &[&str] = &["O0", "O2", "O2.wasmopt", "O2.max4g"];

const FREED_POINTER: &str = "wasmfix: use of a pointer from a freed block (address 0x";

/// uaf_field.c's cases that use a pointer read from a freed struct: the case, the function
/// whose access uses it first (`store` writes through it, `load` reads through it), and what
/// the input prints.
const FREED_POINTER_USES: [(&str, &str, &str); 2] = [
    ("store", "queue_push", "store after free 1\n"),
    ("load", "queue_peek", "load after free 7\n"),
];

/// Which of bounds' options a --harden run in these tests adds.
#[derive(Clone, Copy, Debug)]
enum BoundsForm {
    /// None: loads branch when heap-canary poisons (rebased otherwise), stores branch.
    Default,
    /// `--bounds-precise`: every load branches.
    Precise,
    /// `--bounds-compact`: loads and null-page stores are rebased, without a message.
    Compact,
}

/// `input` through --harden's passes with `form`'s bounds option: the output and the passes'
/// reports.
fn harden_outcome(
    input: &[u8],
    form: BoundsForm,
    on_error: wasmfix::diag::OnError,
) -> wasmfix::pipeline::Outcome {
    let options = wasmfix::passes::PassOptions {
        harden: true,
        bounds_precise: matches!(form, BoundsForm::Precise),
        bounds_compact: matches!(form, BoundsForm::Compact),
        on_error,
        ..Default::default()
    };
    wasmfix::pipeline::run(input, &harden_passes(None), &options)
        .unwrap_or_else(|f| panic!("harden: {f}"))
}

fn harden(input: &[u8], form: BoundsForm, on_error: wasmfix::diag::OnError) -> Vec<u8> {
    harden_outcome(input, form, on_error).bytes
}

/// The message of a use of the poison address 0xfefefefe + 8 (`count`) in `queue_push`/`queue_peek`.
fn assert_freed_pointer_message(variant: &str, function: &str, stderr: &str) {
    let expected = format!("{FREED_POINTER}fefeff06) in {function}\n");
    assert_eq!(stderr, expected, "{variant}");
}

/// uaf_field's `store` reads a pointer from a freed struct and writes through it first:
/// under --harden, with heap-canary poisoning and a memory that cannot reach the poison
/// range, bounds' null-page check covers the poison range and names the use. Its `load` reads
/// through it first: loads branch when the poison range is checked, so it is named too (and
/// with --bounds-precise); --bounds-compact rebases them (the engine's out-of-bounds trap, no
/// message). The correct `ok` case prints the same.
#[test]
fn a_use_of_a_pointer_from_a_freed_block_stops_with_its_message() {
    use wasmfix::diag::OnError;
    for variant in FIELD_VARIANTS {
        let original = fixture(&format!("uaf_field.{variant}.wasm"));
        let fixed = harden(&original, BoundsForm::Default, OnError::Stop);
        let precise = harden(&original, BoundsForm::Precise, OnError::Stop);
        let compact = harden(&original, BoundsForm::Compact, OnError::Stop);
        let report = harden(&original, BoundsForm::Default, OnError::Report);

        for (case, function, printed) in FREED_POINTER_USES {
            let before = run_wasi(&original, &[case]);
            assert_eq!(before.stdout, printed, "{variant}");
            for (name, module) in [("stop", &fixed), ("precise", &precise)] {
                let after = run_wasi(module, &[case]);
                assert_trapped(&after, &format!("{variant} {name} {case}"));
                assert_eq!(after.stdout, "", "{variant} {name} {case}");
                assert_freed_pointer_message(variant, function, &after.stderr);
            }
        }
        // Report mode: the message once, then the access as in the original (with the poison,
        // out of bounds).
        let after = run_wasi(&report, &["store"]);
        assert!(
            after.outcome.is_trap("out of bounds memory access"),
            "{variant} report: {after:?}"
        );
        assert_freed_pointer_message(variant, "queue_push", &after.stderr);
        assert_eq!(after.stderr.matches(FREED_POINTER).count(), 1, "{variant}");
        let after = run_wasi(&compact, &["load"]);
        assert!(
            after.outcome.is_trap("out of bounds memory access")
                && after.stdout.is_empty()
                && !after.stderr.contains("wasmfix"),
            "{variant} compact load: {after:?}"
        );

        // A wild pointer past the memory (not from a freed block): named where the memory
        // stays below 2 GiB (the signed check covers [2^31, 2^32)); the engine's trap otherwise.
        let wild = ["wild", "0x90000000"];
        let before = run_wasi(&original, &wild);
        assert!(
            before.outcome.is_trap("out of bounds memory access"),
            "{variant}: {before:?}"
        );
        let after = run_wasi(&fixed, &wild);
        if variant.ends_with("max4g") {
            assert!(
                after.outcome.is_trap("out of bounds memory access") && after.stderr.is_empty(),
                "{variant} wild: {after:?}"
            );
        } else {
            assert_trapped(&after, &format!("{variant} wild"));
            assert_eq!(
                after.stderr,
                "wasmfix: access beyond the memory's maximum at address 0x90000008 in queue_push\n",
                "{variant}"
            );
        }

        let before = run_wasi(&original, &["ok", "300"]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        let builds = [
            ("stop", &fixed),
            ("precise", &precise),
            ("compact", &compact),
            ("report", &report),
        ];
        for (name, module) in builds {
            assert_eq!(run_wasi(module, &["ok", "300"]), before, "{variant} {name}");
        }
    }
}

/// How the report says the poison range is checked: a memory without a maximum (uaf.O2) is
/// capped below it; without the null page's end bounds checks nothing, the poison range is
/// left unchecked, the report says why, and a use of the poison address keeps the engine's
/// trap.
#[test]
fn the_report_says_how_the_poison_range_is_checked() {
    for (input, expected) in [
        (
            "uaf.O2.wasm",
            "memory 0 capped at 4064 MiB so that freed-block poison can never be a valid \
             address; branching checks of the null page cover freed blocks' poison \
             [0xfe000000, 2^32) too",
        ),
        (
            "uaf_field.O2.stripped.wasm",
            "poison range not checked: the null page is not checked",
        ),
        (
            "uaf_field.nomax.O2.stripped.wasm",
            "poison range not checked: the null page is not checked",
        ),
        (
            "uaf_field.O2.wasm",
            "branching checks of the null page cover [2^31, 2^32) too",
        ),
        (
            "uaf_field.O2.max4g.wasm",
            "branching checks of the null page cover freed blocks' poison [0xfe000000, 2^32) too",
        ),
    ] {
        let out = harden_outcome(
            &fixture(input),
            BoundsForm::Default,
            wasmfix::diag::OnError::Stop,
        );
        let bounds = out.reports.iter().find(|r| r.pass == "bounds").unwrap();
        assert!(
            bounds.summary.contains(expected),
            "{input}: {}",
            bounds.summary
        );
        assert_eq!(
            bounds.summary.contains("capped"),
            input == "uaf.O2.wasm",
            "{input}"
        );
    }
    for input in [
        "uaf_field.O2.stripped.wasm",
        "uaf_field.nomax.O2.stripped.wasm",
    ] {
        let fixed = harden(
            &fixture(input),
            BoundsForm::Default,
            wasmfix::diag::OnError::Stop,
        );
        let after = run_wasi(&fixed, &["store"]);
        assert!(
            after.outcome.is_trap("out of bounds memory access")
                && !after.stderr.contains("wasmfix"),
            "{input}: {after:?}"
        );
        assert_eq!(
            memory_imports_exports(&fixed).0[0].maximum,
            memory_imports_exports(&fixture(input)).0[0].maximum,
            "{input}"
        );
    }
}

/// uaf.c's `read` (prints the string a freed struct's pointer field points to) and `struct`
/// (follows a pointer read from a freed block and writes through it): the first use of the
/// poisoned pointer is a load. Under --harden (and --harden --bounds-precise) it stops at that
/// access with the freed-pointer message (naming the function the access is in after
/// inlining: memchr, printf_core, session_log) in every build where bounds finds the null page
/// (the memory has no maximum: capped); the builds without a null page ([`NO_NULL_PAGE`]), and
/// --bounds-compact, keep the engine's out-of-bounds trap at the access.
#[test]
fn under_harden_the_first_use_of_a_freed_pointer_field_stops_there() {
    use wasmfix::diag::OnError;
    for variant in VARIANTS {
        let input = fixture(&format!("uaf.{variant}.wasm"));
        let fixed = harden(&input, BoundsForm::Default, OnError::Stop);
        let precise = harden(&input, BoundsForm::Precise, OnError::Stop);
        let compact = harden(&input, BoundsForm::Compact, OnError::Stop);
        for case in ["read", "struct"] {
            let engine_trap = |after: &Run, name: &str| {
                assert!(
                    after.outcome.is_trap("out of bounds memory access")
                        && after.stdout.is_empty()
                        && !after.stderr.contains("wasmfix"),
                    "{variant} {case} {name}: {after:?}"
                )
            };
            engine_trap(&run_wasi(&compact, &[case]), "compact");
            for (name, module) in [("stop", &fixed), ("precise", &precise)] {
                let after = run_wasi(module, &[case]);
                if NO_NULL_PAGE.contains(variant) {
                    engine_trap(&after, name);
                } else {
                    assert_trapped(&after, &format!("{variant} {case} {name}"));
                    assert_eq!(after.stdout, "", "{variant} {case} {name}");
                    assert!(
                        after.stderr.starts_with(FREED_POINTER)
                            && after.stderr.contains(") in ")
                            && after.stderr.lines().count() == 1,
                        "{variant} {case} {name}: {after:?}"
                    );
                }
            }
        }
    }
}

/// The builds of uaf_field.c without a memory maximum (wasm-ld's default) in which bounds
/// finds the null page. `nomax.O2.stripped` has no producers section: bounds checks no null
/// page there, so nothing is capped (see `the_report_says_how_the_poison_range_is_checked`).
const NOMAX_VARIANTS: &[&str] = &["nomax.O0", "nomax.O2", "nomax.O2.wasmopt"];

/// The cap bounds gives memory 0 under --harden: 4 GiB - 32 MiB in 64 KiB pages.
const CAP_PAGES: u64 = 0xfe00;

/// Memory 0's type, the imports and the exports of `bytes`, as wasmparser reads them.
fn memory_imports_exports(bytes: &[u8]) -> (Vec<wasmparser::MemoryType>, Vec<String>, Vec<String>) {
    use wasmparser::Payload;
    let (mut memories, mut imports, mut exports) = (Vec::new(), Vec::new(), Vec::new());
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::MemorySection(r) => memories.extend(r.into_iter().map(Result::unwrap)),
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    let import = import.unwrap();
                    if let wasmparser::TypeRef::Memory(ty) = import.ty {
                        memories.push(ty);
                    }
                    imports.push(format!("{import:?}"));
                }
            }
            Payload::ExportSection(r) => {
                exports.extend(r.into_iter().map(|e| format!("{:?}", e.unwrap())))
            }
            _ => {}
        }
    }
    (memories, imports, exports)
}

fn harden_without_bounds(input: &[u8]) -> Vec<u8> {
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    wasmfix::pipeline::run(input, &harden_passes(Some("bounds")), &options)
        .unwrap_or_else(|f| panic!("harden without bounds: {f}"))
        .bytes
}

/// Without a maximum, --harden (heap-canary poisons in the run) gives a defined memory 0 the
/// maximum 0xfe00 pages, below the poison range, and bounds then names the use of a pointer
/// read from a freed block, whether it writes or reads first, in wasmtime, node (V8) and wasm3.
/// Nothing else in the memory, import and export sections changes, and the correct case
/// prints the same.
#[test]
fn without_a_maximum_harden_caps_memory_0_and_names_the_freed_pointer() {
    use wasmfix::diag::OnError;
    let node = common::tool_available("node", &["--version"]);
    let wasm3 = common::tool_available("python3", &["-c", "import wasm3"]);
    for variant in NOMAX_VARIANTS {
        let original = fixture(&format!("uaf_field.{variant}.wasm"));
        let fixed = harden(&original, BoundsForm::Default, OnError::Stop);

        assert_eq!(
            memory_imports_exports(&original).0[0].maximum,
            None,
            "{variant}"
        );
        // --harden without bounds (adapter-memory raises the minimum and exports its
        // allocator): bounds adds the maximum and changes nothing else there.
        let (memories, imports, exports) =
            memory_imports_exports(&harden_without_bounds(&original));
        assert_eq!(memories.len(), 1, "{variant}");
        assert_eq!(memories[0].maximum, None, "{variant}");
        let capped = wasmparser::MemoryType {
            maximum: Some(CAP_PAGES),
            ..memories[0]
        };
        assert_eq!(
            memory_imports_exports(&fixed),
            (vec![capped], imports, exports),
            "{variant}"
        );

        // The store use and the load use, each named in the function that makes it.
        for (case, function, printed) in FREED_POINTER_USES {
            let before = run_wasi(&original, &[case]);
            assert_eq!(before.stdout, printed, "{variant}");
            let after = run_wasi(&fixed, &[case]);
            assert_trapped(&after, &format!("{variant} {case}"));
            assert_eq!(after.stdout, "", "{variant} {case}");
            assert_freed_pointer_message(variant, function, &after.stderr);
            let expected = format!("{FREED_POINTER}fefeff06) in {function}\n");
            let engines = [
                node.then(|| ("node", common::run_node("node", &fixed, &[case]))),
                wasm3.then(|| ("wasm3", common::run_wasm3(&fixed, &[case]))),
            ];
            for (engine, run) in engines.into_iter().flatten() {
                assert_eq!(
                    (run.status, run.stdout.as_str()),
                    (134, ""),
                    "{variant} {case} {engine}"
                );
                assert!(
                    run.stderr.starts_with(&expected),
                    "{variant} {case} {engine}: {run:?}"
                );
            }
        }

        let before = run_wasi(&original, &["ok", "300"]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        assert_eq!(run_wasi(&fixed, &["ok", "300"]), before, "{variant} ok");
    }
}

/// An imported memory keeps its type (a maximum would change the import and could fail to
/// link): the poison range stays unchecked and the report says why.
#[test]
fn an_imported_memory_keeps_its_type_and_the_report_says_why() {
    let input = fixture("uaf_field.import.O2.wasm");
    let out = harden_outcome(&input, BoundsForm::Default, wasmfix::diag::OnError::Stop);
    assert_eq!(
        memory_imports_exports(&out.bytes),
        memory_imports_exports(&input)
    );
    let bounds = out.reports.iter().find(|r| r.pass == "bounds").unwrap();
    assert!(
        bounds.summary.contains(
            "poison range not checked: memory 0 has no maximum: it may grow into \
             [0xfe000000, 2^32), and it is imported (a maximum would change the import's type)"
        ),
        "{}",
        bounds.summary
    );
}

/// The cap belongs to --harden's freed-pointer check: `--passes bounds` without heap-canary
/// in the run leaves the limits as they are, also on a module an earlier run poisoned.
#[test]
fn bounds_without_heap_canary_never_changes_the_memory_limits() {
    let input = fixture("uaf_field.nomax.O2.wasm");
    let poisoned = rewrite(&input, "heap-canary", HeapOptions::default());
    for (what, module) in [("input", &input), ("heap-canary output", &poisoned)] {
        let out = wasmfix::pipeline::run(
            module,
            &common::passes("bounds"),
            &wasmfix::passes::PassOptions::default(),
        )
        .unwrap();
        assert_eq!(
            memory_imports_exports(&out.bytes).0,
            memory_imports_exports(module).0,
            "{what}"
        );
        let bounds = out.reports.iter().find(|r| r.pass == "bounds").unwrap();
        assert!(
            !bounds.summary.contains("capped"),
            "{what}: {}",
            bounds.summary
        );
    }
}
