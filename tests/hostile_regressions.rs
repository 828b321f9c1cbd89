//! Minimized regressions for what the hostile-input and differential fuzzers found (issue 7).
//! Each test names the input shape, what went wrong before the fix, and what must hold now.

mod common;

/// A castable call site and a table whose element segment sits at `offset` in a table of
/// `size` slots.
fn table_module(size: u32, offset: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (type $one (func (param i32) (result i32)))
          (type $two (func (param i32 i32) (result i32)))
          (table {size} funcref)
          (elem (i32.const {offset}) $f)
          (func $f (type $one) local.get 0)
          (func (export "call") (param i32 i32 i32) (result i32)
            local.get 0 local.get 1 local.get 2 call_indirect (type $two)))"#
    ))
    .unwrap()
}

fn fpcast_warnings(input: &[u8]) -> (Vec<u8>, Vec<String>) {
    let outcome = wasmfix::pipeline::run(
        input,
        &common::passes("fpcast"),
        &wasmfix::passes::PassOptions::default(),
    )
    .unwrap_or_else(|f| panic!("fpcast failed: {f}"));
    common::validate(&outcome.bytes);
    let warnings = outcome.reports[0].warnings.clone();
    (outcome.bytes, warnings)
}

/// Found by fuzz_hostile: an element segment at offset 2^31 - 1 (valid; it traps at
/// instantiation) made fpcast allocate a class map of 2^31 slots and panic in wasm-encoder
/// (`br_table` with more than 2^32 bytes of targets).
#[test]
fn fpcast_leaves_alone_a_table_whose_segment_lies_past_its_end() {
    let input = table_module(2, 0x7fff_ffff);
    let (output, warnings) = fpcast_warnings(&input);
    assert!(
        output.len() < 2 * input.len(),
        "output grew to {} bytes",
        output.len()
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("writes slot 2147483647")),
        "{warnings:?}"
    );
}

/// The same in bounds: one entry at the end of a declared 10,000,000-slot table would make the
/// class map (and the output) a thousand times the input.
#[test]
fn fpcast_leaves_alone_a_sparse_table() {
    let input = table_module(10_000_000, 9_999_999);
    let (output, warnings) = fpcast_warnings(&input);
    assert!(
        output.len() < 2 * input.len(),
        "output grew to {} bytes",
        output.len()
    );
    assert!(
        warnings.iter().any(|w| w.contains("sparse")),
        "{warnings:?}"
    );
    // A dense table of the same shape is still adapted.
    let (_, warnings) = fpcast_warnings(&table_module(2, 1));
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// Found by fuzz_hostile: a malformed `name` section (custom sections are not validated, so the
/// module is valid) made every pass that adds functions fail with "internal error (a wasmfix
/// bug)", exit 3. The section is now kept byte for byte.
#[test]
fn a_malformed_name_section_is_kept_as_it_is() {
    let mut input = wat::parse_str(
        r#"(module
          (memory 1)
          (global (export "__stack_pointer") (mut i32) (i32.const 4096))
          (data (i32.const 16) "x")
          (func (export "f")
            global.get 0 i32.const 16 i32.sub global.set 0
            global.get 0 i32.const 16 i32.add global.set 0))"#,
    )
    .unwrap();
    // `name`: a function-names subsection that claims 5 bytes and holds 2.
    let name = [0x00, 0x08, 0x04, b'n', b'a', b'm', b'e', 0x01, 0x05, 0x01];
    input.extend_from_slice(&name);
    common::validate(&input);
    for passes in ["stack-guard", "fpcast,stack-guard,producers"] {
        let output = common::try_rewrite(&input, passes)
            .unwrap_or_else(|e| panic!("--passes {passes}: {e}"));
        common::validate(&output);
        let names: Vec<_> = common::custom_sections(&output)
            .into_iter()
            .filter(|(n, _)| n == "name")
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(
            names[0].1, name,
            "--passes {passes}: the name section changed"
        );
    }
}

/// `module` with a custom section inserted after its first section, which moves every later
/// section one position on.
fn with_custom_section_up_front(module: &[u8]) -> Vec<u8> {
    let first = common::sections(module)[0].bytes.len();
    let mut out = module[..8 + first].to_vec();
    out.extend_from_slice(&[0x00, 0x04, 0x03, b'p', b'a', b'd']);
    out.extend_from_slice(&module[8 + first..]);
    out
}

/// Found by fuzz_hostile: a custom section inserted before the code section (as a tool that
/// adds one up front does) leaves `reloc.CODE` naming the section before the code. stack-first
/// patched "relocated addresses" into that section and produced an invalid module, reported
/// as an internal error (exit 3). It now refuses (stale relocations), and `stack` guards.
#[test]
fn relocations_that_name_the_wrong_section_are_stale() {
    let input = with_custom_section_up_front(&common::fixture("stack.O2.relocs.wasm"));
    common::validate(&input);
    let refusal = common::try_rewrite(&input, "stack-first").unwrap_err();
    assert!(
        refusal.contains("reloc.CODE targets section") && refusal.contains("stale"),
        "{refusal}"
    );
    assert!(!refusal.contains('\n'));
    let outcome = wasmfix::pipeline::run(
        &input,
        &common::passes("stack"),
        &wasmfix::passes::PassOptions::default(),
    )
    .unwrap_or_else(|f| panic!("stack: {f}"));
    common::validate(&outcome.bytes);
    assert!(
        outcome.reports[0].summary.contains("not relocated"),
        "{}",
        outcome.reports[0].summary
    );
    // Untouched, the same fixture still relocates.
    let fixture = common::fixture("stack.O2.relocs.wasm");
    assert!(common::try_rewrite(&fixture, "stack-first").is_ok());
}

/// Found by reading facts.rs while writing the hostile-input fuzzer (the fuzzer runs release
/// builds, where the overflow wraps silently): data on both sides of the initial stack pointer,
/// mostly below it and without `__data_end`, made the stack-size estimate subtract past zero:
/// a panic in debug builds, a nonsense stack region in release builds (every write trapped).
/// The region is now unknown, so the guard refuses and `stack` says why it did nothing.
#[test]
fn data_across_the_initial_stack_pointer_has_no_stack_region() {
    let input = wat::parse_str(
        r#"(module
          (memory 1)
          (global (export "__stack_pointer") (mut i32) (i32.const 2000))
          (data (i32.const 1000) "data below and above the stack pointer")
          (data (i32.const 1100) "x")
          (data (i32.const 2099) "y")
          (func (export "f")
            global.get 0 i32.const 16 i32.sub global.set 0
            global.get 0 i32.const 16 i32.add global.set 0))"#,
    )
    .unwrap();
    let refusal = common::try_rewrite(&input, "stack-guard").unwrap_err();
    assert!(
        refusal.contains("extends above the initial stack pointer 2000"),
        "{refusal}"
    );
    for passes in ["stack", "fpcast,stack,producers"] {
        match common::try_rewrite(&input, passes) {
            Ok(output) => common::validate(&output),
            Err(e) => assert!(!e.contains('\n') && e.contains("stack pointer"), "{e}"),
        }
    }
}

/// The name section is not validated: hostile input 3299 named a function index past the last
/// function `malloc`, and heap-canary panicked looking up its type (`--harden`). A name for a
/// function that does not exist names nothing.
#[test]
fn a_name_for_a_function_that_does_not_exist_is_ignored() {
    let mut input = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "free") (param i32))
          (func (export "f") (result i32) i32.const 0))"#,
    )
    .unwrap();
    // `name`: function 7 (of 2) is called `malloc`.
    let name = [
        0x00, 0x10, 0x04, b'n', b'a', b'm', b'e', 0x01, 0x09, 0x01, 0x07, 0x06, b'm', b'a', b'l',
        b'l', b'o', b'c',
    ];
    input.extend_from_slice(&name);
    common::validate(&input);
    let refusal = common::try_rewrite(&input, "heap-canary").unwrap_err();
    assert!(refusal.contains("cannot find `malloc`"), "{refusal}");
    let passes = wasmfix::passes::harden_pipeline();
    let passes: Vec<_> = passes
        .iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    let outcome = wasmfix::pipeline::run(&input, &passes, &options)
        .unwrap_or_else(|f| panic!("--harden failed: {f}"));
    common::validate(&outcome.bytes);
}

/// `n` functions of `n` signatures (0 to n-1 i32 parameters, all castable to each other) in one
/// table, and a call site of each signature: `n * n` signature pairs to adapt.
fn every_pair_castable(n: usize) -> Vec<u8> {
    let mut text = String::from("(module\n");
    for k in 0..n {
        text += &format!(
            "(type $t{k} (func (param {}) (result i32)))\n",
            "i32 ".repeat(k)
        );
    }
    text += &format!("(table {} funcref)\n(elem (i32.const 1) func", n + 1);
    for k in 0..n {
        text += &format!(" $f{k}");
    }
    text += ")\n";
    for k in 0..n {
        text += &format!("(func $f{k} (type $t{k}) i32.const {k})\n");
        text += &format!(
            "(func (export \"s{k}\") (param i32) (result i32) {} local.get 0 call_indirect (type $t{k}))\n",
            "i32.const 1 ".repeat(k)
        );
    }
    wat::parse_str(text + ")").unwrap()
}

/// The hostile long run's heap bound (64x the input) failed: fpcast builds an adapter per
/// (entry signature, call signature) pair, so 150 signatures in a 38 KB module made 22,350
/// adapters, a 3.7 MB output and about 70 MB of heap. Now a table with more pairs than the
/// module's size allows is left alone with a warning, and the output stays near the input.
#[test]
fn fpcast_leaves_alone_a_table_with_more_signature_pairs_than_the_module_size_allows() {
    let input = every_pair_castable(150);
    let (output, warnings) = fpcast_warnings(&input);
    assert!(
        warnings.iter().any(|w| w.contains("pairs allowed")),
        "{warnings:?}"
    );
    assert!(output.len() < 2 * input.len(), "{} bytes", output.len());
    // A module within the budget is still adapted.
    let small = every_pair_castable(20);
    let (output, warnings) = fpcast_warnings(&small);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(output.len() > small.len());
}

/// The hostile long run's heap bound failed on a 660-byte file: its type section opens a rec
/// group that declares 646,444 types, and wasmparser reserves room for all of them (60 MB)
/// before it finds the first one malformed. Now a section or rec group that declares more
/// entries than it has bytes is refused before anything reads it, as bad input in one line.
#[test]
fn a_rec_group_that_declares_more_types_than_it_has_bytes_is_refused_first() {
    // type section: 1 rec group of 0x27_1d2c types, then one byte.
    let input = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x06, 0x01, 0x4e, 0xac, 0xba, 0x27,
        0xd3,
    ];
    let failure = wasmfix::pipeline::load(&input).err().expect("refused");
    let message = failure.to_string();
    assert!(
        matches!(failure, wasmfix::pipeline::Failure::BadInput(_)),
        "{message}"
    );
    assert!(message.contains("rec group"), "{message}");
    assert!(message.contains("declares 646444 entries"), "{message}");
    // A section count past the section's end, too.
    let globals = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x06, 0x04, 0xff, 0xff, 0x3f, 0x7f,
    ];
    let message = wasmfix::pipeline::load(&globals)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("global section"), "{message}");
}

/// Found by fuzz_hostile (input 3562): an imported tag whose type has a result is a
/// stack-switching tag. Feature detection counted it as exception handling only, so the
/// default pipeline's output (validated with exactly the input's features) failed validation
/// and wasmfix exited 3 with an internal error. Now the input's features include stack
/// switching and the default pipeline's output validates with them.
#[test]
fn a_tag_with_results_is_a_stack_switching_tag() {
    let input = wat::parse_str(
        r#"(module
          (type $one (func (param i32) (result i32)))
          (type $two (func (param i32 i32) (result i32)))
          (import "" "" (tag (type $one)))
          (table 3 funcref)
          (export "__indirect_function_table" (table 0))
          (elem (i32.const 1) $f $g)
          (func $f (type $one) local.get 0 i32.const 100 i32.add)
          (func $g (type $two) local.get 0 local.get 1 i32.mul)
          (func (export "call") (param i32 i32) (result i32)
            local.get 0 local.get 1 local.get 1 call_indirect (type $two)))"#,
    )
    .unwrap();
    let m = wasmfix::module::Module::parse(&input).unwrap();
    let used = wasmfix::facts::Facts::new(&m).features(&m).used;
    assert!(
        used.contains(wasmfix::features::Feature::StackSwitching),
        "detected: {used:?}"
    );
    let outcome = wasmfix::pipeline::run(
        &input,
        &common::passes(&wasmfix::passes::DEFAULT_PIPELINE.join(",")),
        &wasmfix::passes::PassOptions::default(),
    )
    .unwrap_or_else(|f| panic!("default pipeline: {f}"));
    wasmparser::Validator::new_with_features(used.closed().wasm_features())
        .validate_all(&outcome.bytes)
        .expect("the output validates with the input's features");
}
