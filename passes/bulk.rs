//! Filling and copying memory in generated code: `memory.fill`/`memory.copy` where the run's
//! features allow bulk memory, else a plain loop of MVP loads and stores. The one place that
//! decides, so every pass that fills or copies (heap-canary's `calloc`, `realloc` and poison)
//! emits what the engines running the input can run.
//!
//! Whether bulk memory is allowed is the run's feature set (`cx.features()`: the input's
//! features plus `--enable-bulk-memory`/`--enable-bulk-memory-opt`); the first bulk instruction
//! emitted for a run that allows it only by the user's choice records the feature, so the
//! output is validated with it and its `target_features` section lists it.

use crate::edit::Edits;
use crate::features::{Feature, RunFeatures};
use crate::module::Module;
use wasm_encoder::{BlockType, Instruction as I, MemArg, MemArgTarget, ValType};
use wasmparser::ValType::I32;

/// How generated code fills and copies memory 0.
pub struct Bulk {
    allowed: bool,
    /// The input does not use bulk memory (the user enabled it): record it when used.
    record: bool,
    fill: Option<u32>,
    copy: Option<u32>,
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        target: MemArgTarget::Memory(0),
        ordering: None,
    }
}

impl Bulk {
    pub fn new(run: &RunFeatures) -> Bulk {
        Bulk {
            allowed: run.allows(Feature::BulkMemoryOpt),
            record: !run.input.contains(Feature::BulkMemoryOpt),
            fill: None,
            copy: None,
        }
    }

    /// Whether bulk-memory instructions are emitted (else loops).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// `(dst, byte, len)` on the stack → filled.
    pub fn fill(&mut self, m: &Module<'_>, edits: &mut Edits<'_>) -> I<'static> {
        if self.allowed {
            self.used(edits);
            return I::MemoryFill(0);
        }
        let f = *self.fill.get_or_insert_with(|| fill_loop(m, edits));
        I::Call(f)
    }

    /// `(dst, src, len)` on the stack → copied (the ranges must not overlap).
    pub fn copy(&mut self, m: &Module<'_>, edits: &mut Edits<'_>) -> I<'static> {
        if self.allowed {
            self.used(edits);
            return I::MemoryCopy {
                src_mem: 0,
                dst_mem: 0,
            };
        }
        let f = *self.copy.get_or_insert_with(|| copy_loop(m, edits));
        I::Call(f)
    }

    fn used(&self, edits: &mut Edits<'_>) {
        if self.record {
            edits.record_feature(Feature::BulkMemoryOpt);
        }
    }
}

/// `wasmfix:fill(dst, byte, len)`: eight bytes at a time, then the rest byte by byte. Like
/// `memory.fill`, an out-of-bounds range traps (here after writing what is in bounds).
fn fill_loop(m: &Module<'_>, edits: &mut Edits<'_>) -> u32 {
    let (dst, byte, len, word) = (0, 1, 2, 3);
    let code = [
        // word = byte * 0x0101010101010101
        I::LocalGet(byte),
        I::I32Const(0xff),
        I::I32And,
        I::I64ExtendI32U,
        I::I64Const(0x0101_0101_0101_0101),
        I::I64Mul,
        I::LocalSet(word),
        I::Block(BlockType::Empty),
        I::Loop(BlockType::Empty),
        I::LocalGet(len),
        I::I32Const(8),
        I::I32LtU,
        I::BrIf(1),
        I::LocalGet(dst),
        I::LocalGet(word),
        I::I64Store(mem(0, 0)),
        I::LocalGet(dst),
        I::I32Const(8),
        I::I32Add,
        I::LocalSet(dst),
        I::LocalGet(len),
        I::I32Const(8),
        I::I32Sub,
        I::LocalSet(len),
        I::Br(0),
        I::End,
        I::End,
        I::Block(BlockType::Empty),
        I::Loop(BlockType::Empty),
        I::LocalGet(len),
        I::I32Eqz,
        I::BrIf(1),
        I::LocalGet(dst),
        I::LocalGet(byte),
        I::I32Store8(mem(0, 0)),
        I::LocalGet(dst),
        I::I32Const(1),
        I::I32Add,
        I::LocalSet(dst),
        I::LocalGet(len),
        I::I32Const(1),
        I::I32Sub,
        I::LocalSet(len),
        I::Br(0),
        I::End,
        I::End,
        I::End,
    ];
    edits.add_helper(
        m,
        "wasmfix:fill",
        (&[I32, I32, I32], &[]),
        &[(1, ValType::I64)],
        &code,
    )
}

/// `wasmfix:copy(dst, src, len)`: forward, eight bytes at a time, then byte by byte.
fn copy_loop(m: &Module<'_>, edits: &mut Edits<'_>) -> u32 {
    let (dst, src, len) = (0, 1, 2);
    let step = |width: i32, load: I<'static>, store: I<'static>| {
        vec![
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(len),
            I::I32Const(width),
            I::I32LtU,
            I::BrIf(1),
            I::LocalGet(dst),
            I::LocalGet(src),
            load,
            store,
            I::LocalGet(dst),
            I::I32Const(width),
            I::I32Add,
            I::LocalSet(dst),
            I::LocalGet(src),
            I::I32Const(width),
            I::I32Add,
            I::LocalSet(src),
            I::LocalGet(len),
            I::I32Const(width),
            I::I32Sub,
            I::LocalSet(len),
            I::Br(0),
            I::End,
            I::End,
        ]
    };
    let mut code = step(8, I::I64Load(mem(0, 0)), I::I64Store(mem(0, 0)));
    code.extend(step(1, I::I32Load8U(mem(0, 0)), I::I32Store8(mem(0, 0))));
    code.push(I::End);
    edits.add_helper(m, "wasmfix:copy", (&[I32, I32, I32], &[]), &[], &code)
}
