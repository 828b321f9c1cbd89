//! The code facts ([`wasmfix::facts::CodeFacts`]) come out of the input's validation: the
//! validator decodes each operator once and shows it to the facts' walk
//! (`validate::validate_input` driving `facts::CodeWalk`, interleaved over threads). This test
//! keeps the plain way of finding them — decode every body operator by operator, in order, and
//! look at each — and checks that both find the same facts, field by field, on every fixture,
//! every WAT test module, the corpus modules present, modules written to exercise each fact
//! (odd encodings included) and random wasm-smith modules.

mod common;

use std::collections::BTreeMap;
use wasmfix::facts::CodeFacts;
use wasmfix::features::{Feature, FeatureSet};
use wasmfix::module::Module;
use wasmparser::{Operator, ValType};

/// The code facts of `m`, walking its bodies one by one with a plain operator reader.
fn straight_walk(m: &Module<'_>) -> CodeFacts {
    let mut facts = CodeFacts::default();
    let address_global = |g: u32| {
        matches!(m.global_types.get(g as usize), Some(t) if t.mutable
            && matches!(t.content_type, ValType::I32 | ValType::I64))
    };
    let add = |list: &mut Vec<u32>, x: u32| {
        if !list.contains(&x) {
            list.push(x);
        }
    };
    for (func, body) in (m.imported_funcs..).zip(&m.bodies) {
        for local in body.get_locals_reader().unwrap() {
            wasmfix::features::val_type(&mut facts.features, local.unwrap().1);
        }
        let mut ops = body.get_operators_reader().unwrap();
        let mut calls_indirect = false;
        let mut first_read = None;
        let mut saw_access = false;
        let mut subtracts = false;
        let mut writes_first = false;
        while !ops.eof() {
            let (op, start) = ops.read_with_offset().unwrap();
            let start = start as usize;
            let end = ops.original_position() as usize;
            wasmfix::features::operator_features(&mut facts.features, &op);
            encoding_features(&mut facts.features, &op, &m.bytes[start..end]);
            match op {
                Operator::CallIndirect {
                    type_index,
                    table_index,
                }
                | Operator::ReturnCallIndirect {
                    type_index,
                    table_index,
                } => {
                    *facts
                        .indirect_sites
                        .entry((type_index, table_index))
                        .or_default() += 1;
                    facts.indirect_call_offsets.push(start as u64);
                    calls_indirect = true;
                }
                Operator::TableGrow { table } => add(&mut facts.tables_changed, table),
                Operator::TableSet { table }
                | Operator::TableFill { table }
                | Operator::TableInit { table, .. }
                | Operator::TableCopy {
                    dst_table: table, ..
                } => {
                    add(&mut facts.tables_written, table);
                    add(&mut facts.tables_changed, table);
                }
                Operator::GlobalGet { global_index } if !saw_access => {
                    saw_access = true;
                    if address_global(global_index) {
                        first_read = Some(global_index);
                    }
                }
                Operator::GlobalSet { global_index } => {
                    saw_access = true;
                    if address_global(global_index) {
                        let writers = facts.global_writers.entry(global_index).or_default();
                        if writers.last() != Some(&func) {
                            writers.push(func);
                        }
                    }
                    if first_read == Some(global_index) && subtracts {
                        writes_first = true;
                    }
                }
                Operator::I32Sub | Operator::I64Sub if first_read.is_some() => subtracts = true,
                Operator::MemorySize { .. }
                    if facts.memory_size_functions.last() != Some(&func) =>
                {
                    facts.memory_size_functions.push(func);
                }
                _ => {}
            }
        }
        if calls_indirect {
            facts.functions_with_indirect_calls.push(func);
        }
        if let (Some(g), true) = (first_read, writes_first) {
            *facts.prologue_globals.entry(g).or_default() += 1;
        }
    }
    facts.tables_changed.sort();
    facts.tables_written.sort();
    facts
}

/// Features that only an operator's whole encoding shows (an over-long zero table or memory
/// index, an explicit memory 0 in a memory argument), read from the encoding's end: as the
/// code facts found them before the validation walk, which reads them from the operator's
/// start (`features::encoding_features`).
fn encoding_features(s: &mut FeatureSet, op: &Operator<'_>, encoding: &[u8]) {
    // A zero index is the last byte; the byte before it is the end of the previous immediate
    // or the opcode, neither of which continues a LEB.
    let overlong_zero = || match encoding {
        [.., before, last] => *last != 0 || before & 0x80 != 0,
        _ => false,
    };
    match op {
        Operator::CallIndirect { table_index: 0, .. } if overlong_zero() => {
            s.insert(Feature::CallIndirectOverlong)
        }
        Operator::MemorySize { mem: 0 } | Operator::MemoryGrow { mem: 0 } if overlong_zero() => {
            s.insert(Feature::Multimemory)
        }
        _ if has_memarg(op) => {
            // The memarg follows the opcode: one byte, or a prefix byte and a LEB.
            let opcode_len = match encoding.first() {
                Some(0xfc..=0xfe) => encoding
                    .iter()
                    .skip(1)
                    .position(|b| b & 0x80 == 0)
                    .map_or(encoding.len(), |i| i + 2),
                _ => 1,
            };
            // Bit 6 of the flags: an explicit memory index.
            if encoding
                .get(opcode_len)
                .is_some_and(|flags| flags & 0x40 != 0)
            {
                s.insert(Feature::Multimemory);
            }
        }
        _ => {}
    }
}

/// Whether `op` has a memory argument (loads, stores, atomics, SIMD memory operators).
fn has_memarg(op: &Operator<'_>) -> bool {
    macro_rules! memarg_ops {
        ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
            match op {
                $( Operator::$op { .. } => false $($(|| memarg_ops!(is_memarg $arg))*)?, )*
                _ => false,
            }
        };
        (is_memarg memarg) => { true };
        (is_memarg $other:ident) => { false };
    }
    wasmparser::for_each_operator!(memarg_ops)
}

/// Checks that the validation's walk over `bytes` finds what the straight walk finds; `false`
/// when the pipeline refuses the module (a proposal wasmfix has no name for).
fn same_facts(what: &str, bytes: &[u8]) -> bool {
    let Ok((m, facts)) = wasmfix::pipeline::load(bytes) else {
        return false;
    };
    let walked = facts.code(&m);
    // Every field, by name: a field added to CodeFacts does not compile here until compared.
    let CodeFacts {
        indirect_sites,
        tables_changed,
        tables_written,
        prologue_globals,
        functions_with_indirect_calls,
        global_writers,
        memory_size_functions,
        features,
        indirect_call_offsets,
    } = straight_walk(&m);
    assert_eq!(
        walked.indirect_sites, indirect_sites,
        "{what}: indirect_sites"
    );
    assert_eq!(
        walked.tables_changed, tables_changed,
        "{what}: tables_changed"
    );
    assert_eq!(
        walked.tables_written, tables_written,
        "{what}: tables_written"
    );
    assert_eq!(
        walked.prologue_globals, prologue_globals,
        "{what}: prologue_globals"
    );
    assert_eq!(
        walked.functions_with_indirect_calls, functions_with_indirect_calls,
        "{what}: functions_with_indirect_calls"
    );
    assert_eq!(
        walked.global_writers, global_writers,
        "{what}: global_writers"
    );
    assert_eq!(
        walked.memory_size_functions, memory_size_functions,
        "{what}: memory_size_functions"
    );
    assert_eq!(
        walked.features.names(),
        features.names(),
        "{what}: features"
    );
    assert_eq!(
        walked.indirect_call_offsets, indirect_call_offsets,
        "{what}: indirect_call_offsets"
    );
    true
}

#[test]
fn fixtures_and_wat_modules() {
    let mut compared = 0;
    for (name, bytes) in common::fixtures() {
        compared += same_facts(&name, &bytes) as usize;
    }
    for path in common::wat_files() {
        let bytes = wat::parse_file(&path).expect("test WAT parses");
        compared += same_facts(&path.display().to_string(), &bytes) as usize;
    }
    assert!(compared >= 50, "only {compared} modules compared");
}

#[test]
fn corpus_modules() {
    let Some(corpus) = common::corpus() else {
        assert!(
            std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
            "the corpus is not in ../corpus-cache"
        );
        return;
    };
    let pyodide = common::repo().join("../corpus-cache/pkgs/pyodide/package/pyodide.asm.wasm");
    let modules = corpus
        .into_iter()
        .chain(pyodide.is_file().then(|| ("pyodide".to_string(), pyodide)));
    for (name, path) in modules {
        let bytes = std::fs::read(&path).unwrap();
        assert!(same_facts(&name, &bytes), "{name}: the pipeline refused it");
    }
}

/// The bodies (code without the final `end`) of functions that each hold one thing a fact
/// records, some in encodings the text format cannot write, and the features each one's code
/// needs.
fn one_fact_bodies() -> Vec<(&'static str, Vec<u8>, Vec<Feature>)> {
    use Feature as F;
    vec![
        (
            "call_indirect table 0 as 0x80 0x00, then a plain one",
            vec![0x41, 0, 0x11, 0, 0x80, 0, 0x41, 0, 0x11, 0, 0],
            vec![F::CallIndirectOverlong],
        ),
        (
            "memory.size 0 over-long",
            vec![0x3f, 0x80, 0, 0x1a],
            vec![F::Multimemory],
        ),
        (
            "memory.grow 0 over-long",
            vec![0x41, 0, 0x40, 0x80, 0, 0x1a],
            vec![F::Multimemory],
        ),
        (
            "i32.load naming memory 0 (flags 0x42)",
            vec![0x41, 0, 0x28, 0x42, 0, 0, 0x1a],
            vec![F::Multimemory],
        ),
        (
            "v128.load naming memory 0",
            vec![0x41, 0, 0xfd, 0, 0x44, 0, 0, 0x1a],
            vec![F::Simd, F::Multimemory],
        ),
        (
            "i32.atomic.load naming memory 0",
            vec![0x41, 0, 0xfe, 0x10, 0x42, 0, 0, 0x1a],
            vec![F::Threads, F::Multimemory],
        ),
        (
            "the stack-pointer prologue: global.get 0; i32.const 16; i32.sub; global.set 0",
            vec![0x23, 0, 0x41, 16, 0x6b, 0x24, 0],
            vec![],
        ),
        (
            "table.grow 0",
            vec![0xd0, 0x70, 0x41, 1, 0xfc, 15, 0, 0x1a],
            vec![F::ReferenceTypes],
        ),
        (
            "table.set 1",
            vec![0x41, 0, 0xd0, 0x70, 0x26, 1],
            vec![F::ReferenceTypes],
        ),
        (
            "table.fill 0",
            vec![0x41, 0, 0xd0, 0x70, 0x41, 1, 0xfc, 17, 0],
            vec![F::ReferenceTypes],
        ),
        (
            "table.copy 1 0",
            vec![0x41, 0, 0x41, 0, 0x41, 1, 0xfc, 14, 1, 0],
            // The second table needs reference types: the sections show that.
            vec![F::BulkMemory],
        ),
        ("plain memory.size", vec![0x3f, 0, 0x1a], vec![]),
        (
            "return_call_indirect on table 1",
            vec![0x41, 0, 0x13, 0, 1],
            vec![F::TailCall],
        ),
    ]
}

/// A module whose functions have `bodies` (type `[] -> []`, each followed by `end`), with two
/// funcref tables, a shared memory and a mutable i32 global.
fn module_with(bodies: &[&[u8]]) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ElementSection, Elements, ExportKind, ExportSection, Function,
        FunctionSection, GlobalSection, GlobalType, Instruction as I, MemorySection, MemoryType,
        Module as Out, RefType, TableSection, TableType, TypeSection, ValType as V,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    for body in bodies {
        functions.function(0);
        let mut f = Function::new([]);
        f.raw(body.iter().copied());
        f.instruction(&I::End);
        code.function(&f);
    }
    let mut tables = TableSection::new();
    for _ in 0..2 {
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            minimum: 2,
            maximum: None,
            table64: false,
            shared: false,
        });
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(2),
        memory64: false,
        shared: true,
        page_size_log2: None,
    });
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: V::I32,
            mutable: true,
            shared: false,
        },
        &wasm_encoder::ConstExpr::i32_const(4096),
    );
    let mut exports = ExportSection::new();
    exports.export("f0", ExportKind::Func, 0);
    let mut elements = ElementSection::new();
    elements.active(
        None,
        &wasm_encoder::ConstExpr::i32_const(0),
        Elements::Functions([0u32][..].into()),
    );
    let mut out = Out::new();
    out.section(&types)
        .section(&functions)
        .section(&tables)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&elements)
        .section(&code);
    out.finish()
}

#[test]
fn each_fact_alone_and_together() {
    let cases = one_fact_bodies();
    for (what, body, needs) in &cases {
        let bytes = module_with(&[body]);
        assert!(same_facts(what, &bytes), "{what}: the pipeline refused it");
        // The comparison compares something: the features are those written.
        let (m, facts) = wasmfix::pipeline::load(&bytes).unwrap();
        let expected: FeatureSet = needs.iter().copied().collect();
        assert_eq!(facts.code(&m).features, expected, "{what}: features");
    }
    // All in one module, one function each.
    let bodies: Vec<&[u8]> = cases.iter().map(|(_, body, _)| &body[..]).collect();
    let bytes = module_with(&bodies);
    assert!(
        same_facts("all together", &bytes),
        "the pipeline refused it"
    );
    let (m, facts) = wasmfix::pipeline::load(&bytes).unwrap();
    let code = facts.code(&m);
    assert_eq!(code.memory_size_functions, [1, 11]);
    assert_eq!(code.tables_written, [0, 1]);
    assert_eq!(code.tables_changed, [0, 1]);
    assert_eq!(code.prologue_globals, BTreeMap::from([(0, 1)]));
    assert_eq!(code.global_writers, BTreeMap::from([(0, vec![6])]));
    assert_eq!(code.functions_with_indirect_calls, [0, 12]);
    assert_eq!(code.indirect_call_offsets.len(), 3);
    assert_eq!(
        code.indirect_sites,
        BTreeMap::from([((0, 0), 2), ((0, 1), 1)])
    );
}

/// A deterministic stream of bytes for wasm-smith (xorshift).
fn seed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn random_modules() {
    let mut compared = 0;
    for seed in 0..300u64 {
        let data = seed_bytes(seed, 4096);
        let mut u = arbitrary::Unstructured::new(&data);
        let config = wasm_smith::Config {
            saturating_float_to_int_enabled: true,
            sign_extension_ops_enabled: true,
            bulk_memory_enabled: true,
            reference_types_enabled: true,
            multi_value_enabled: true,
            tail_call_enabled: true,
            simd_enabled: true,
            relaxed_simd_enabled: seed % 2 == 0,
            threads_enabled: true,
            exceptions_enabled: seed % 3 == 0,
            gc_enabled: seed % 2 == 1,
            wide_arithmetic_enabled: seed % 5 == 0,
            max_memories: if seed % 2 == 0 { 2 } else { 1 },
            max_tables: 3,
            min_funcs: 1,
            max_funcs: 10,
            max_instructions: 200,
            export_everything: true,
            ..wasm_smith::Config::default()
        };
        let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
            continue;
        };
        compared += same_facts(&format!("wasm-smith seed {seed}"), &module.to_bytes()) as usize;
    }
    assert!(compared >= 200, "only {compared} random modules compared");
}
