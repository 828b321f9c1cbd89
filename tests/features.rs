//! Every feature wasmparser accepts (issue 7): a C-like module that uses the feature where the
//! passes work (in functions the stack guard rewrites, at call sites fpcast rewrites, in the
//! stack pointer, the table or the memory) goes through every pipeline. Each pass either
//! rewrites it — the output validates, is deterministic, keeps indices, and runs like the
//! original in wasmtime (the differential harness) — or refuses with a one-line reason. Each
//! test states which, per pass. Then wasm-smith modules with the feature enabled go through the
//! same harness.

#[path = "common/clike.rs"]
mod clike;
mod common;
#[path = "common/diff.rs"]
mod diff;

/// What a pipeline must do with a feature's module.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Rewrites it: the code changes.
    Rewrites,
    /// Succeeds, changing at most custom sections (nothing to do, or the pass leaves it alone).
    Keeps,
    /// Refuses with one line containing this.
    Refuses(&'static str),
}

/// A C-like module around `parts`: a stack pointer above the data, a table whose slot 1 holds
/// `$one` (castable through `$two`), and `frame`, a function with a stack frame (rewritten by
/// the guard) that runs `body` (leaving nothing on the stack) with `$fp` set.
fn module(memory: &str, sp: &str, parts: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          (type $one (func (param i32) (result i32)))
          (type $two (func (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          {memory}
          (global $__stack_pointer (mut {sp}))
          (table $t 4 funcref)
          (elem (table $t) (i32.const 1) func $f1 $f2)
          (data (memory 0) (i32.const 1024) "data")
          (func $f1 (type $one) local.get 0 i32.const 1 i32.add)
          (func $f2 (type $two) local.get 0 local.get 1 i32.add)
          (func (export "cast") (param i32 i32) (result i32)
            local.get 0 local.get 1 i32.const 1 call_indirect $t (type $two))
          (func $frame (export "frame") (param $d i32) (result i32) (local $fp i32)
            global.get $__stack_pointer i32.const 32 i32.sub local.tee $fp
            global.set $__stack_pointer
            {body}
            local.get $d
            if
              local.get $d i32.const 1 i32.sub call $frame drop
            end
            local.get $fp i32.load
            local.get $fp i32.const 32 i32.add global.set $__stack_pointer)
          {parts})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const MEMORY: &str = "(memory (export \"memory\") 1)";
const SP: &str = "i32) (i32.const 8192";

/// Checks every pipeline's outcome against `want` (by pipeline name; the others may rewrite or
/// refuse in one line), then runs the module through the differential harness.
fn check(name: &str, input: &[u8], want: &[(&str, Want)]) {
    check_runs(name, input, want, true)
}

/// [`check`]; `runs` says whether wasmtime can run the module (it cannot run legacy
/// exceptions).
fn check_runs(name: &str, input: &[u8], want: &[(&str, Want)], runs: bool) {
    common::validate(input);
    for pipeline in diff::pipelines() {
        let outcome = diff::run_pipeline(input, &pipeline)
            .unwrap_or_else(|panic| panic!("{name}: `{}` panicked: {panic}", pipeline.name));
        let expected = want
            .iter()
            .find(|(p, _)| *p == pipeline.name)
            .map(|(_, w)| *w);
        match (outcome, expected) {
            (Ok(out), w) => {
                common::validate(&out.bytes);
                let code_changed = out.rewritten_functions > 0
                    || common::sections(&out.bytes)
                        .iter()
                        .filter(|s| s.id != 0)
                        .ne(common::sections(input).iter().filter(|s| s.id != 0));
                match w {
                    Some(Want::Rewrites) => assert!(
                        code_changed,
                        "{name}: `{}` left the code alone",
                        pipeline.name
                    ),
                    Some(Want::Keeps) => assert!(
                        !code_changed,
                        "{name}: `{}` changed the code",
                        pipeline.name
                    ),
                    Some(Want::Refuses(why)) => {
                        panic!("{name}: `{}` should refuse ({why})", pipeline.name)
                    }
                    None => {}
                }
            }
            (Err(failure), w) => {
                let message = failure.to_string();
                assert!(!message.contains('\n'), "{name}: {message:?}");
                assert!(
                    matches!(failure, wasmfix::pipeline::Failure::Refused { .. }),
                    "{name}: `{}`: {message}",
                    pipeline.name
                );
                match w {
                    Some(Want::Refuses(why)) => assert!(
                        message.contains(why),
                        "{name}: `{}` refused for another reason: {message}",
                        pipeline.name
                    ),
                    Some(w) => panic!(
                        "{name}: `{}` refused ({w:?} expected): {message}",
                        pipeline.name
                    ),
                    None => {}
                }
            }
        }
    }
    let mut stats = diff::Stats::default();
    if let Err(found) = diff::check_module(input, &mut stats) {
        panic!("{name}: {found}");
    }
    // What a pass rewrote was run beside the original.
    if runs && want.iter().any(|(_, w)| matches!(w, Want::Rewrites)) {
        assert!(
            stats.calls_compared > 0 && stats.not_executable == 0,
            "{name}: not run in wasmtime: {stats:?}"
        );
    }
}

/// wasm-smith modules with `feature` enabled through the harness.
fn smith(feature: &str, cases: u64) {
    let mut stats = diff::Stats::default();
    for i in 0..cases {
        let data = diff::case_data(0xfea7 + feature.len() as u64, i);
        let Some(module) = diff::smith_feature_module(&data, feature) else {
            continue;
        };
        if let Err(found) = diff::check_module(&module, &mut stats) {
            panic!("wasm-smith with {feature}, case {i}: {found}");
        }
    }
    assert!(stats.modules > cases / 2, "{feature}: {stats:?}");
}

const CASES: u64 = if cfg!(debug_assertions) { 10 } else { 60 };

/// The MVP-level C module itself: every pass rewrites or keeps it as its contract says.
#[test]
fn baseline() {
    let m = module(MEMORY, SP, "", "local.get $fp local.get $d i32.store");
    check(
        "baseline",
        &m,
        &[
            ("none", Want::Keeps),
            ("default", Want::Rewrites),
            ("fpcast", Want::Rewrites),
            ("stack", Want::Rewrites),
            ("stack-first", Want::Refuses("no relocations")),
            ("stack-guard", Want::Rewrites),
            ("producers", Want::Keeps),
        ],
    );
}

#[test]
fn simd() {
    let m = module(
        MEMORY,
        SP,
        r#"(type $v (func (param v128 i32) (result i32)))
           (func $fv (param v128) (result i32) local.get 0 i32x4.extract_lane 0)
           (elem (table $t) (i32.const 3) func $fv)
           (func (export "vcast") (param i32) (result i32)
             i32.const 7 i32x4.splat local.get 0 i32.const 3 call_indirect $t (type $v))"#,
        "local.get $fp local.get $d i32x4.splat v128.store local.get $fp local.get $fp v128.load \
         i32x4.extract_lane 1 i32.store",
    );
    check(
        "simd",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("simd", CASES);
}

#[test]
fn threads_and_shared_memory() {
    let m = module(
        "(memory (export \"memory\") 1 1 shared)",
        SP,
        "",
        "local.get $fp local.get $d i32.atomic.store local.get $fp i32.const 1 i32.atomic.rmw.add drop",
    );
    check(
        "threads",
        &m,
        &[
            ("fpcast", Want::Rewrites),
            ("stack-guard", Want::Refuses("memory is shared")),
            ("stack", Want::Refuses("memory is shared")),
            ("default", Want::Refuses("memory is shared")),
        ],
    );
    smith("threads", CASES);
}

#[test]
fn bulk_memory() {
    let m = module(
        MEMORY,
        SP,
        r#"(data $p "passive")
           (elem $e func $f1)
           (func (export "bulk") (param i32)
             local.get 0 i32.const 0 i32.const 7 memory.init $p
             i32.const 2048 local.get 0 i32.const 7 memory.copy
             data.drop $p
             i32.const 3 i32.const 0 i32.const 1 table.init $t $e)"#,
        "local.get $fp i32.const 0 i32.const 32 memory.fill local.get $fp local.get $d i32.store",
    );
    // table.init writes slots of the table the code computes: without GC fpcast cannot know
    // an entry's type at the call and leaves the table alone (with --enable-gc it types
    // entries with ref.test); passive data keeps stack-first out (it refuses for want of
    // relocations first).
    check(
        "bulk-memory",
        &m,
        &[("fpcast", Want::Keeps), ("stack-guard", Want::Rewrites)],
    );
    smith("bulk-memory", CASES);
}

#[test]
fn reference_types() {
    let m = module(
        MEMORY,
        SP,
        r#"(table $u (export "u") 2 funcref)
           (elem (table $u) (i32.const 0) func $f1)
           (func (export "u_cast") (param i32 i32) (result i32)
             local.get 0 local.get 1 i32.const 0 call_indirect $u (type $two))
           (func (export "grow") (param externref) (result i32)
             ref.func $f2 i32.const 1 table.grow $t
             local.get 0 ref.is_null i32.add)"#,
        "local.get $fp local.get $d i32.store i32.const 2 ref.func $f1 table.set $t",
    );
    check(
        "reference-types",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("reference-types", CASES);
}

#[test]
fn multi_value() {
    let m = module(
        MEMORY,
        SP,
        r#"(type $pair (func (result i32 i32)))
           (func $p1 (param i32) (result i32 i32) local.get 0 i32.const 5)
           (elem (table $t) (i32.const 3) func $p1)
           (func (export "pair") (result i32) i32.const 3 call_indirect $t (type $pair) i32.add)"#,
        "local.get $fp block (result i32 i32) local.get $d i32.const 1 end i32.add i32.store",
    );
    check(
        "multi-value",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("multi-value", CASES);
}

#[test]
fn tail_calls() {
    let m = module(
        MEMORY,
        SP,
        r#"(func (export "tail_cast") (param i32 i32) (result i32)
             local.get 0 local.get 1 i32.const 1 return_call_indirect $t (type $two))
           (func (export "tail") (param i32) (result i32)
             global.get $__stack_pointer i32.const 16 i32.sub global.set $__stack_pointer
             global.get $__stack_pointer i32.const 16 i32.add global.set $__stack_pointer
             local.get 0 return_call $f1)"#,
        "local.get $fp local.get $d i32.store",
    );
    check(
        "tail-call",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("tail-call", CASES);
}

#[test]
fn exceptions() {
    let m = module(
        MEMORY,
        SP,
        r#"(tag $e (param i32))
           (func (export "catch_cast") (param i32 i32) (result i32)
             block $h (result i32)
               try_table (catch $e $h)
                 local.get 0 local.get 1 i32.const 1 call_indirect $t (type $two)
                 throw $e
               end
               unreachable
             end)
"#,
        "block $h (result i32) try_table (catch $e $h) local.get $d throw $e end i32.const 0 end \
         drop local.get $fp local.get $d i32.store",
    );
    check(
        "exceptions",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    // Legacy exceptions (try/catch/delegate): stack-pointer writes inside try and catch
    // bodies, a call site inside a try that delegates. wasmtime does not run them.
    let legacy = module(
        MEMORY,
        SP,
        r#"(tag $e (param i32))
           (func (export "legacy") (param i32) (result i32)
             try (result i32)
               global.get $__stack_pointer i32.const 16 i32.sub global.set $__stack_pointer
               try
                 local.get 0 local.get 0 i32.const 1 call_indirect $t (type $two) throw $e
               delegate 0
               i32.const 0
             catch $e
               global.get $__stack_pointer i32.const 16 i32.add global.set $__stack_pointer
             catch_all
               i32.const 1
             end)"#,
        "local.get $fp local.get $d i32.store",
    );
    check_runs(
        "legacy exceptions",
        &legacy,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
        false,
    );
    smith("exceptions", CASES);
}

#[test]
fn memory64() {
    // A 64-bit memory and stack pointer: the guard refuses; fpcast leaves a 64-bit table alone.
    let text = r#"(module
      (type $one (func (param i32) (result i32)))
      (type $two (func (param i32 i32) (result i32)))
      (memory (export "memory") i64 1)
      (global $__stack_pointer (mut i64) (i64.const 8192))
      (table $t i64 4 funcref)
      (elem (table $t) (i64.const 1) func $f1)
      (data (i64.const 1024) "data")
      (func $f1 (type $one) local.get 0)
      (func (export "cast") (param i32 i32) (result i32)
        local.get 0 local.get 1 i64.const 1 call_indirect $t (type $two))
      (func (export "frame") (param i32) (result i32) (local $fp i64)
        global.get $__stack_pointer i64.const 32 i64.sub local.tee $fp global.set $__stack_pointer
        local.get $fp local.get 0 i32.store
        local.get $fp i32.load
        local.get $fp i64.const 32 i64.add global.set $__stack_pointer))"#;
    let m = wat::parse_str(text).unwrap();
    check(
        "memory64",
        &m,
        &[
            ("fpcast", Want::Keeps),
            ("stack-guard", Want::Refuses("not a 32-bit global")),
            ("stack", Want::Refuses("not a 32-bit global")),
            ("default", Want::Refuses("not a 32-bit global")),
        ],
    );
    smith("memory64", CASES);
}

#[test]
fn multi_memory() {
    let m = module(
        "(memory (export \"memory\") 1) (memory $heap (export \"heap\") 1)",
        SP,
        "",
        "local.get $fp local.get $d i32.store i32.const 64 local.get $d i32.store $heap \
         i32.const 0 i32.const 1024 i32.const 8 memory.copy $heap 0",
    );
    check(
        "multi-memory",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("multi-memory", CASES);
}

#[test]
fn gc() {
    let m = module(
        MEMORY,
        SP,
        r#"(rec
             (type $node (struct (field i32) (field (ref null $node))))
             (type $visit (func (param (ref null $node)) (result i32))))
           (func $len (type $visit)
             local.get 0 ref.is_null if (result i32) i32.const 0 else
               local.get 0 struct.get $node 1 call $len i32.const 1 i32.add end)
           (table $typed 1 (ref null $visit))
           (elem (table $typed) (i32.const 0) (ref null $visit) (ref.func $len))
           (func (export "gc") (param i32) (result i32)
             local.get 0 ref.null $node struct.new $node
             i32.const 0 call_indirect $typed (type $visit)
             ref.func $f1 ref.test (ref $one) i32.add)"#,
        "local.get $fp local.get $d ref.null $node struct.new $node struct.get $node 0 i32.store",
    );
    check(
        "gc",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    smith("gc", CASES);
}

#[test]
fn extended_const() {
    // The stack pointer's initial value is not a plain constant: the region is unknown and the
    // guard refuses; an element offset that is an expression leaves the table's contents
    // unknown, so fpcast warns and leaves it alone.
    let text = r#"(module
      (type $one (func (param i32) (result i32)))
      (type $two (func (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $__stack_pointer (mut i32) (i32.add (i32.const 4096) (i32.const 4096)))
      (table $t 4 funcref)
      (elem (table $t) (i32.add (i32.const 0) (i32.const 1)) func $f1)
      (data (i32.add (i32.const 1000) (i32.const 24)) "data")
      (func $f1 (type $one) local.get 0)
      (func (export "cast") (param i32 i32) (result i32)
        local.get 0 local.get 1 i32.const 1 call_indirect $t (type $two))
      (func (export "frame") (param i32) (result i32) (local $fp i32)
        global.get $__stack_pointer i32.const 32 i32.sub local.tee $fp global.set $__stack_pointer
        local.get $fp local.get 0 i32.store
        local.get $fp i32.load
        local.get $fp i32.const 32 i32.add global.set $__stack_pointer))"#;
    let m = wat::parse_str(text).unwrap();
    check(
        "extended-const",
        &m,
        &[
            ("fpcast", Want::Keeps),
            (
                "stack-guard",
                Want::Refuses("not initialized by a constant"),
            ),
            ("stack", Want::Refuses("not initialized by a constant")),
        ],
    );
    smith("extended-const", CASES);
}

#[test]
fn custom_page_sizes_and_wide_arithmetic() {
    // One-byte pages, 4000 of them: too small for the message area, so a guarded overflow
    // traps without a message (instead of writing out of bounds).
    let m = module(
        "(memory (export \"memory\") 4000 (pagesize 1))",
        "i32) (i32.const 3072",
        r#"(func (export "wide") (param i64 i64) (result i64)
             local.get 0 local.get 1 i64.mul_wide_u i64.add)"#,
        "local.get $fp local.get $d i32.store",
    );
    check(
        "custom-page-sizes",
        &m,
        &[("fpcast", Want::Rewrites), ("stack-guard", Want::Rewrites)],
    );
    let guarded = common::rewrite(&m, "stack-guard");
    assert!(
        !String::from_utf8_lossy(&guarded).contains("wasmfix: stack overflow"),
        "messages need room for their scratch area"
    );
    smith("custom-page-sizes", CASES);
    smith("wide-arithmetic", CASES);
}

/// stack-first with relocations refuses a memory of custom pages instead of growing it by the
/// wrong amount (the data would no longer fit and the module would fail to instantiate).
#[test]
fn stack_first_refuses_custom_page_sizes() {
    let fixture = common::fixture("stack.O2.relocs.wasm");
    let mut out = fixture[..8].to_vec();
    for s in common::sections(&fixture) {
        if s.id == 5 {
            let r = wasmparser::MemorySectionReader::new(wasmparser::BinaryReader::new(
                &s.bytes[2..],
                0,
            ))
            .unwrap();
            let m = r.into_iter().next().unwrap().unwrap();
            let mut memories = wasm_encoder::MemorySection::new();
            memories.memory(wasm_encoder::MemoryType {
                minimum: m.initial * 65536,
                maximum: m.maximum.map(|x| x * 65536),
                memory64: false,
                shared: false,
                page_size_log2: Some(0),
            });
            out.push(5);
            wasm_encoder::Encode::encode(&memories, &mut out);
        } else {
            out.extend_from_slice(&s.bytes);
        }
    }
    common::validate(&out);
    let refusal = common::try_rewrite(&out, "stack-first").unwrap_err();
    assert!(refusal.contains("1-byte pages"), "{refusal}");
    assert!(common::try_rewrite(&fixture, "stack-first").is_ok());
}

/// The `target_features` section, when the input has one, lists what the passes added (a `-`
/// entry for an added feature turns into `+`) and keeps every other entry in order; a run that
/// adds no feature keeps it byte for byte. The output validates with exactly the input's
/// features plus the added ones (the pipeline checks that itself).
#[test]
fn target_features_lists_what_passes_add() {
    let mut input = wat::parse_str(
        r#"(module
          (type $one (func (param i32) (result i32)))
          (type $two (func (param i32 i32) (result i32)))
          (table $t 4 funcref)
          (elem (table $t) (i32.const 1) func $f1)
          (func $f1 (type $one) local.get 0 i32.const 1 i32.add)
          (func (export "cast") (param i32 i32) (result i32)
            local.get 0 local.get 1 i32.const 1 call_indirect $t (type $two)))"#,
    )
    .unwrap();
    // target_features: +mutable-globals, -tail-call, +some-future-feature
    let mut section = vec![3u8];
    for (prefix, name) in [
        (b'+', "mutable-globals"),
        (b'-', "tail-call"),
        (b'+', "some-future-feature"),
    ] {
        section.push(prefix);
        section.push(name.len() as u8);
        section.extend_from_slice(name.as_bytes());
    }
    let custom = wasm_encoder::CustomSection {
        name: "target_features".into(),
        data: section.into(),
    };
    wasm_encoder::Section::append_to(&custom, &mut input);
    let read = |bytes: &[u8]| {
        let module = wasmfix::module::Module::parse(bytes).unwrap();
        wasmfix::features::target_features(&module).expect("a well-formed target_features")
    };

    // A run that adds nothing keeps the section byte for byte.
    let kept = common::rewrite(&input, "producers");
    assert_eq!(
        common::custom_sections(&kept)
            .into_iter()
            .find(|(n, _)| n == "target_features"),
        common::custom_sections(&input)
            .into_iter()
            .find(|(n, _)| n == "target_features")
    );

    let mut options = wasmfix::passes::PassOptions::default();
    options
        .features
        .enable(wasmfix::features::Feature::TailCall);
    let outcome = wasmfix::pipeline::run(&input, &common::passes("fpcast"), &options)
        .unwrap_or_else(|f| panic!("{f}"));
    let added: Vec<&str> = outcome.added_features.iter().map(|f| f.name()).collect();
    assert!(added.contains(&"tail-call"), "added: {added:?}");
    let after = read(&outcome.bytes).entries;
    // The input's entries first, in order, `-tail-call` now `+tail-call`.
    assert_eq!(
        after[..3],
        [
            (b'+', "mutable-globals".to_string()),
            (b'+', "tail-call".to_string()),
            (b'+', "some-future-feature".to_string()),
        ]
    );
    // Then one entry per other added feature, nothing else.
    assert_eq!(
        read(&outcome.bytes).plus,
        read(&input).plus.union(outcome.added_features)
    );
    assert_eq!(after.len(), 2 + outcome.added_features.iter().count());
}

/// A wasm-smith module with a random subset of the proposals wasm-smith can generate (each on
/// or off), or `None` when wasm-smith gives up on the bytes.
fn smith_random_features(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut flag = || u.arbitrary::<bool>().unwrap_or(false);
    let config = wasm_smith::Config {
        saturating_float_to_int_enabled: flag(),
        sign_extension_ops_enabled: flag(),
        bulk_memory_enabled: flag(),
        reference_types_enabled: flag(),
        multi_value_enabled: flag(),
        tail_call_enabled: flag(),
        simd_enabled: flag(),
        relaxed_simd_enabled: flag(),
        threads_enabled: flag(),
        exceptions_enabled: flag(),
        memory64_enabled: flag(),
        gc_enabled: flag(),
        extended_const_enabled: flag(),
        wide_arithmetic_enabled: flag(),
        custom_page_sizes_enabled: flag(),
        compact_imports_enabled: flag(),
        shared_everything_threads_enabled: flag(),
        custom_descriptors_enabled: flag(),
        acquire_release_atomics_enabled: flag(),
        multibyte_array_access_enabled: flag(),
        max_memories: if flag() { 3 } else { 1 },
        max_tables: 3,
        min_funcs: 1,
        max_funcs: 12,
        max_types: 12,
        max_instructions: 120,
        max_imports: 6,
        max_type_size: 200,
        max_memory32_bytes: 4 << 16,
        max_memory64_bytes: 4 << 16,
        export_everything: true,
        ..wasm_smith::Config::default()
    };
    let mut u = arbitrary::Unstructured::new(&data[16.min(data.len())..]);
    wasm_smith::Module::new(config, &mut u)
        .ok()
        .map(|m| m.to_bytes())
}

/// Validates `bytes` with exactly `features` (WebAssembly 1.0 plus them).
fn validates_with(bytes: &[u8], features: FeatureSet) -> Result<(), String> {
    wasmparser::Validator::new_with_features(features.wasm_features())
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What the input uses, as the pipeline finds it.
fn input_features(bytes: &[u8]) -> wasmfix::features::InputFeatures {
    let m = wasmfix::module::Module::parse(bytes).unwrap();
    wasmfix::facts::Facts::new(&m).features(&m).clone()
}

/// Detection neither under- nor over-reports: the input validates with exactly the detected
/// set, and without any one detected feature (one that no other detected feature brings
/// along) it does not.
/// `None`: the module uses a proposal wasmfix has no name for, and the pipeline refuses it.
fn check_detection(what: &str, bytes: &[u8]) -> Option<FeatureSet> {
    let input = input_features(bytes);
    if let Err(failure) = wasmfix::pipeline::read(bytes) {
        // Proposals wasmfix has no name for (acquire-release atomics, multibyte array
        // access, …) make the module bad input, with a line that says so.
        let message = failure.to_string();
        assert!(
            message.contains("a WebAssembly proposal wasmfix does not support"),
            "{what}: {message}"
        );
        return None;
    }
    if let Err(e) = validates_with(bytes, input.used) {
        panic!(
            "{what}: under-reported: the input does not validate with {}: {e}\n{}",
            input.used.names(),
            common::print(bytes)
        );
    }
    let declared = input.declared.unwrap_or_default();
    for f in input.detected.iter() {
        let rest = input.detected.minus(one(f));
        if declared.contains(f) || rest.closed().contains(f) {
            continue;
        }
        assert!(
            validates_with(bytes, rest.union(declared).closed()).is_err(),
            "{what}: over-reported: {} is detected, but the input validates without it ({})\n{}",
            f.name(),
            input.how,
            common::print(bytes)
        );
    }
    Some(input.detected)
}

fn one(f: Feature) -> FeatureSet {
    [f].into_iter().collect()
}

use wasmfix::features::{Feature, FeatureSet};

/// Issue 14: wasm-smith modules with every subset of proposals on and off: the detected set is
/// exactly what validation needs, and every proposal wasm-smith generates is detected somewhere.
#[test]
fn detection_is_exact_on_generated_modules() {
    let cases = if cfg!(debug_assertions) { 200 } else { 2000 };
    let mut seen = FeatureSet::EMPTY;
    let (mut modules, mut unsupported) = (0, 0);
    for i in 0..cases {
        let data = diff::case_data(0xde7e_c7ed, i);
        let Some(bytes) = smith_random_features(&data) else {
            continue;
        };
        modules += 1;
        match check_detection(&format!("case {i}"), &bytes) {
            Some(detected) => seen = seen.union(detected),
            None => unsupported += 1,
        }
    }
    assert!(modules > cases / 2, "{modules} modules of {cases}");
    assert!(
        unsupported > 0 && unsupported < modules / 4,
        "{unsupported} of {modules} modules use unsupported proposals"
    );
    let generated = [
        Feature::SignExt,
        Feature::NontrappingFloatToInt,
        Feature::BulkMemory,
        Feature::BulkMemoryOpt,
        Feature::ReferenceTypes,
        Feature::Multivalue,
        Feature::TailCall,
        Feature::Simd,
        Feature::RelaxedSimd,
        Feature::Threads,
        Feature::ExceptionHandling,
        Feature::Memory64,
        Feature::Multimemory,
        Feature::ExtendedConst,
        Feature::Gc,
        Feature::CustomPageSizes,
        Feature::WideArithmetic,
        Feature::SharedEverything,
        Feature::CustomDescriptors,
        Feature::CompactImports,
    ];
    let missed: Vec<&str> = generated
        .iter()
        .filter(|f| !seen.contains(**f))
        .map(|f| f.name())
        .collect();
    assert!(missed.is_empty(), "never detected: {missed:?}");
}

/// A module with one function `() -> ()` whose body is `code` (raw instruction bytes, ending
/// with `end`), a funcref table, a memory, and a `target_features` section when `declared` is
/// given (prefix, name).
fn module_with_code(code: &[u8], declared: Option<&[(u8, &str)]>) -> Vec<u8> {
    use wasm_encoder::*;
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
    let mut tables = TableSection::new();
    tables.table(TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum: 1,
        maximum: None,
        shared: false,
    });
    m.section(&tables);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    m.section(&memories);
    let mut body = Function::new([]);
    body.raw(code.iter().copied());
    let mut bodies = CodeSection::new();
    bodies.function(&body);
    m.section(&bodies);
    if let Some(entries) = declared {
        let mut data = vec![entries.len() as u8];
        for (prefix, name) in entries {
            data.push(*prefix);
            data.push(name.len() as u8);
            data.extend_from_slice(name.as_bytes());
        }
        m.section(&CustomSection {
            name: "target_features".into(),
            data: data.into(),
        });
    }
    m.finish()
}

/// Encodings that only the bytes show (issue 14): an over-long zero as `call_indirect`'s table
/// (wasm-ld pads relocated immediates so) needs `call-indirect-overlong`; as the memory of
/// `memory.size`, or spelled out in a memory access, multi-memory. The one-byte forms need
/// nothing.
#[test]
fn detection_reads_encodings() {
    let cases: [(&str, &[u8], &[Feature]); 6] = [
        ("call_indirect", &[0x41, 0, 0x11, 0, 0, 0x0b], &[]),
        (
            "call_indirect, over-long table",
            &[0x41, 0, 0x11, 0, 0x80, 0x80, 0x80, 0x80, 0, 0x0b],
            &[Feature::CallIndirectOverlong],
        ),
        ("memory.size", &[0x3f, 0, 0x1a, 0x0b], &[]),
        (
            "memory.size, over-long memory",
            &[0x3f, 0x80, 0, 0x1a, 0x0b],
            &[Feature::Multimemory],
        ),
        ("i32.load", &[0x41, 0, 0x28, 2, 0, 0x1a, 0x0b], &[]),
        (
            "i32.load, explicit memory 0",
            &[0x41, 0, 0x28, 0x42, 0, 0, 0x1a, 0x0b],
            &[Feature::Multimemory],
        ),
    ];
    for (what, code, want) in cases {
        let bytes = module_with_code(code, None);
        let detected = check_detection(what, &bytes).expect("a supported module");
        assert_eq!(detected, want.iter().copied().collect(), "{what}");
    }
}

/// `target_features` as LLVM and binaryen write it: LLVM's names (`simd128`, `atomics`,
/// `nontrapping-fptoint`, …) are read as the features they name, `-` entries and names
/// wasmfix does not know (`mutable-globals`, in WebAssembly 1.0) are not declarations.
#[test]
fn target_features_names_as_llvm_writes_them() {
    let entries: &[(u8, &str)] = &[
        (b'+', "mutable-globals"),
        (b'+', "simd128"),
        (b'+', "atomics"),
        (b'+', "nontrapping-fptoint"),
        (b'+', "bulk-memory-opt"),
        (b'+', "call-indirect-overlong"),
        (b'+', "sign-ext"),
        (b'+', "multivalue"),
        (b'+', "typed-continuations"),
        (b'-', "tail-call"),
        (b'+', "fp16"),
    ];
    let bytes = module_with_code(&[0x0b], Some(entries));
    let input = input_features(&bytes);
    let want: FeatureSet = [
        Feature::Simd,
        Feature::Threads,
        Feature::NontrappingFloatToInt,
        Feature::BulkMemoryOpt,
        Feature::CallIndirectOverlong,
        Feature::SignExt,
        Feature::Multivalue,
        Feature::StackSwitching,
    ]
    .into_iter()
    .collect();
    assert_eq!(input.declared, Some(want), "{}", input.how);
    assert_eq!(input.detected, FeatureSet::EMPTY);
    assert_eq!(input.used, want.closed());
    check_detection("declared", &bytes);
}

/// Issue 14: every fixture (C builds and .wat) through every pipeline (none, default,
/// --harden, each pass alone, fpcast --fpcast-diagnose), with and without --enable-all: each
/// output validates with exactly the input's features plus the enabled ones. Outputs of a pass
/// whose WebAssembly 1.0 design has not landed may use its feature
/// (`diff::WAITING_FOR_MVP_DESIGN`); while an entry there is no longer needed by any fixture,
/// this test fails, so the entry goes when the design lands.
#[test]
fn only_the_input_features_and_the_enabled_ones() {
    let mut inputs = common::fixtures();
    for path in common::wat_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        inputs.push((name, wat::parse_file(&path).unwrap()));
    }
    let mut pipelines = diff::pipelines();
    for mut p in diff::pipelines() {
        p.name += " --enable-all";
        p.options.features.enable_all();
        pipelines.push(p);
    }
    // Entries of WAITING_FOR_MVP_DESIGN some output needed, and the outputs that needed one.
    let mut needed: Vec<&str> = Vec::new();
    let mut waited: Vec<(String, String)> = Vec::new();
    let mut checked = 0;
    for (name, input) in &inputs {
        for pipeline in &pipelines {
            let outcome = match wasmfix::pipeline::run(input, &pipeline.passes, &pipeline.options) {
                Ok(o) => o,
                Err(wasmfix::pipeline::Failure::Refused { .. }) => continue,
                Err(f) => panic!("{name} `{}`: {f}", pipeline.name),
            };
            checked += 1;
            match diff::check_output_features(input, &outcome.bytes, pipeline) {
                Ok(false) => {}
                Ok(true) => {
                    waited.push((name.clone(), pipeline.name.clone()));
                    let (allowed, waiting) = diff::allowed_features(input, pipeline);
                    for (pass, f) in diff::WAITING_FOR_MVP_DESIGN {
                        let without = allowed.union(waiting.minus(one(*f))).closed();
                        if waiting.contains(*f) && validates_with(&outcome.bytes, without).is_err()
                        {
                            needed.push(pass);
                        }
                    }
                }
                Err(e) => panic!("{name} `{}`: {e}", pipeline.name),
            }
        }
    }
    assert!(
        checked > inputs.len() * pipelines.len() / 2,
        "{checked} outputs"
    );
    for (pass, feature) in diff::WAITING_FOR_MVP_DESIGN {
        assert!(
            needed.contains(pass),
            "no output of `{pass}` needs {} beyond the input's features any more: remove its \
             entry from WAITING_FOR_MVP_DESIGN",
            feature.name()
        );
    }
    eprintln!(
        "{checked} outputs; {} waiting for an MVP design (fpcast, heap-canary): {waited:?}",
        waited.len()
    );
}
