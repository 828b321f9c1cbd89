//! adapter-memory — make a WASI preview1 module safe to turn into a component with the stock
//! preview1 → preview2 adapter (`wasm-tools component new --adapt wasi_snapshot_preview1=…`).
//!
//! Why: the adapter has no memory of its own. It allocates a 64 KiB stack and a 64 KiB `State`
//! page through the module's `cabi_realloc_adapter` (or `cabi_realloc`) export, and with
//! `memory.grow` when there is none. Go's runtime treats every page present at start-up as its
//! own and assumes the pages `memory.grow` adds follow them; wasi-libc before 2023 takes
//! everything up to `memory.size` at the first `malloc`. Both hand the adapter's pages out
//! again, and the adapter stops with `assertion failed at adapter line 2786` (adapter 33.0.0;
//! 2857 in 50.0.1) or worse.
//!
//! Inserts: a region of [`RESERVED`] bytes that the module's runtime never hands out; a mutable
//! global holding the region's next free byte; and `cabi_realloc_adapter(old_ptr, old_len,
//! align, new_len)`, exported: a bump allocator over the region in WebAssembly 1.0 instructions.
//! It serves fresh allocations only (the adapter never resizes) and traps (`unreachable`) on a
//! resize, an alignment that is not a power of two, or an exhausted region. With that export,
//! wit-component allocates the adapter's stack lazily through it: the component has no start
//! function and its adapter never calls `memory.grow`. Where the region lies depends on how the
//! runtime chooses its heap, found by [`crate::heap`]:
//! - Go: the word `runtime.initBloc` reads (`firstmoduledata.end`) is raised to its page-rounded
//!   value plus [`RESERVED`], in place in its data segment (or by an 8-byte segment after all
//!   others when no segment holds the whole word). The region is [old heap start, new heap start).
//! - wasm-ld layout: every reference to `__heap_base` and `__heap_end` (padded immediates, and
//!   address globals of those names) moves up by [`RESERVED`]. The region is [old `__heap_base`,
//!   new `__heap_base`).
//! - An allocator that only uses pages `memory.grow` returns: the region is the [`RESERVED`] bytes
//!   above the initial memory, and no code changes.
//!
//! In every case the initial memory grows by [`RESERVED`] / 64 KiB pages, so the heap keeps its
//! room (a maximum that cannot take them is refused).
//!
//! Leaves unchanged: every execution of the module on its own, and its code except the moved
//! immediates. Go: the module behaves as if its linker had placed a RESERVED-byte object after
//! the bss; `firstmoduledata.end` is read only to start the heap and, under the `debuglog` build
//! tag, to tell static strings from others (none lies in the region), while the garbage collector
//! scans data and bss by their own bounds. wasm-ld: the module is what wasm-ld would have linked
//! with RESERVED more bytes between the stack (or data) and the heap; the heap facts establish
//! that nothing else in the module refers to the heap. Grow-only: the allocator never names a page
//! above the initial memory that `memory.grow` did not return, and those now start above the
//! region. Heap addresses move by RESERVED bytes, which no correct program depends on. The module
//! itself never calls the new export.
//!
//! Runs when the module imports from `wasi_snapshot_preview1` and nothing else, defines its
//! memory and exports neither `cabi_realloc` nor `cabi_realloc_adapter` (with one, the adapter
//! already allocates through it).
//! Refuses, when named with `--passes`, a module whose heap start cannot be established (a
//! stripped Go module, code re-encoded after linking, a stack-first module without
//! `__heap_base`, an unknown allocator); in the default pipeline it warns instead and
//! `inspect`/`--check` keep naming the hazard.

use super::{Pass, PassCx, PassReport};
use crate::edit::NewData;
use crate::heap::{HeapStart, PAGE};
use anyhow::{Result, bail};
use wasm_encoder::{BlockType, ConstExpr, Instruction};
use wasmparser::ValType;

pub struct AdapterMemory;

/// Bytes reserved for the adapter: its stack (`realloc(0, 0, 8, 65536)`, wit-component's
/// `allocate_stack`) and its `State` page (`realloc(0, 0, 8, 65536)`), in adapters 33.0.0 and
/// 50.0.1 alike.
pub const RESERVED: u64 = 2 * PAGE;

/// The export the adapter's `cabi_realloc` import is linked to, when present.
pub const EXPORT: &str = "cabi_realloc_adapter";

/// Why the pass has nothing to do with `m`, if so: only a module whose host is WASI preview1
/// alone, with a memory of its own, is what `wasm-tools component new --adapt` turns into a
/// component with nothing but the adapter.
pub fn not_applicable(m: &crate::module::Module<'_>) -> Option<String> {
    const PREVIEW1: &str = "wasi_snapshot_preview1";
    if !m.imports.iter().any(|i| i.module == PREVIEW1) {
        return Some(format!("the module does not import {PREVIEW1}"));
    }
    if let Some(other) = m.imports.iter().find(|i| i.module != PREVIEW1) {
        return Some(format!(
            "the module also imports from `{}`: not a WASI preview1 program the adapter alone can host",
            other.module
        ));
    }
    if m.imported_memories > 0 {
        return Some("its memory is imported".into());
    }
    if let Some(e) = m
        .exports
        .iter()
        .find(|e| e.name == "cabi_realloc" || e.name == EXPORT)
    {
        return Some(format!(
            "the module exports `{}`: the adapter allocates through it",
            e.name
        ));
    }
    None
}

impl Pass for AdapterMemory {
    fn name(&self) -> &'static str {
        "adapter-memory"
    }

    fn description(&self) -> &'static str {
        "reserve memory for the WASI preview1 -> preview2 adapter and export cabi_realloc_adapter over it"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let m = cx.module;
        let nothing = |summary: String, warnings: Vec<String>| PassReport {
            pass: "adapter-memory",
            summary,
            warnings,
            details: serde_json::json!({ "reserved": false }),
        };
        if let Some(why) = not_applicable(m) {
            return Ok(nothing(format!("nothing to do: {why}"), Vec::new()));
        }
        let facts = cx.facts();
        let heap = match facts.heap(m) {
            Ok(heap) => heap,
            Err(why) => {
                let why = format!(
                    "cannot establish where the module's heap starts: {why}; the module is not \
                     safe to adapt with the stock preview1 adapter"
                );
                if cx.options.explicit_passes {
                    bail!("{why}");
                }
                return Ok(nothing(format!("not applied: {why}"), vec![why]));
            }
        };
        let memory = m.memories[0];
        let (initial, maximum) = match cx.edits.memory_types.get(&0) {
            Some(t) => (t.minimum, t.maximum),
            None => (memory.initial, memory.maximum),
        };
        let pages = RESERVED / PAGE;
        if maximum.is_some_and(|max| initial + pages > max) {
            bail!(
                "memory cannot grow by {pages} pages for the adapter: its maximum is {} pages",
                maximum.unwrap_or_default()
            );
        }
        // stack-first, earlier in this pipeline, moved everything at or above the data up.
        let shift = cx.edits.stack_relocated.unwrap_or(0);
        let (start, moved) = match heap {
            HeapStart::Go(go) => {
                let start = go.heap_start();
                let raised = (start + RESERVED).to_le_bytes().to_vec();
                match go.end_word_offset {
                    Some(at) => cx.edits.patch(at, raised),
                    None => {
                        let segment = cx.edits.add_data(
                            m,
                            NewData {
                                active: Some((0, ConstExpr::i32_const(go.end_word as i32))),
                                bytes: raised,
                            },
                        );
                        cx.edits.name_data(segment, "wasmfix:go_runtime_end");
                    }
                }
                (start, 1)
            }
            HeapStart::Linker(l) => {
                let base = l.heap_base + shift;
                let end = l.memory_end + shift;
                let (new_base, new_end) = (base + RESERVED, end + RESERVED);
                if new_end >= 1 << 31 {
                    bail!("the heap would start above 2 GiB");
                }
                for &at in &l.heap_base_refs {
                    cx.edits.patch(at, padded_leb5(new_base as u32).to_vec());
                }
                for &at in &l.heap_end_refs {
                    cx.edits.patch(at, padded_leb5(new_end as u32).to_vec());
                }
                for &g in &l.heap_base_globals {
                    cx.edits
                        .set_global_init(g, ConstExpr::i32_const(new_base as i32));
                }
                for &g in &l.heap_end_globals {
                    cx.edits
                        .set_global_init(g, ConstExpr::i32_const(new_end as i32));
                }
                let moved = l.heap_base_refs.len()
                    + l.heap_end_refs.len()
                    + l.heap_base_globals.len()
                    + l.heap_end_globals.len();
                (base, moved)
            }
            HeapStart::GrowOnly(_) => (initial * PAGE, 0),
        };
        let end = start + RESERVED;
        if end > (initial + pages) * PAGE || end > u32::MAX as u64 {
            bail!("the reserved region [{start:#x}, {end:#x}) would lie outside memory");
        }
        cx.edits.set_memory_type(
            0,
            wasm_encoder::MemoryType {
                minimum: initial + pages,
                maximum,
                memory64: false,
                shared: false,
                page_size_log2: memory.page_size_log2,
            },
        );
        let next = cx.edits.add_i32_global(m, true, start as i32);
        cx.edits.name_global(next, "wasmfix:adapter_next");
        let realloc = cx.edits.add_helper(
            m,
            "wasmfix:cabi_realloc_adapter",
            (&[ValType::I32; 4], &[ValType::I32]),
            &[(1, wasm_encoder::ValType::I32)],
            &bump_allocator(next, end as u32),
        );
        cx.edits.add_function_export(EXPORT, realloc);
        let runtime = match heap {
            HeapStart::Go(_) => "go",
            HeapStart::Linker(_) => "wasm-ld",
            HeapStart::GrowOnly(_) => "grow-only",
        };
        cx.edits.record_applied(
            "adapter-memory",
            serde_json::json!({ "region": [start, end], "runtime": runtime }),
        );
        Ok(PassReport {
            pass: self.name(),
            summary: format!(
                "reserved [{start:#x}, {end:#x}) for the preview1 adapter ({runtime}: {moved} \
                 heap references moved; memory {initial} -> {} pages) and exported {EXPORT}",
                initial + pages
            ),
            warnings: Vec::new(),
            details: serde_json::json!({
                "reserved": true,
                "region": [start, end],
                "runtime": runtime,
                "how": heap.how(),
                "references_moved": moved,
                "memory_pages": [initial, initial + pages],
                "export": EXPORT,
            }),
        })
    }
}

/// `cabi_realloc_adapter(old_ptr, old_len, align, new_len)`: the next `align`-aligned
/// `new_len` bytes below `end`, from the global `next`. WebAssembly 1.0 only.
fn bump_allocator(next: u32, end: u32) -> Vec<Instruction<'static>> {
    use Instruction as I;
    let (old_ptr, old_len, align, new_len, ptr) = (0, 1, 2, 3, 4);
    let end = end as i32;
    vec![
        // A resize, or an alignment that is not a power of two: the adapter asks for neither.
        I::LocalGet(old_ptr),
        I::LocalGet(old_len),
        I::I32Or,
        I::LocalGet(align),
        I::I32Popcnt,
        I::I32Const(1),
        I::I32Ne,
        I::I32Or,
        I::If(BlockType::Empty),
        I::Unreachable,
        I::End,
        // ptr = (next + align - 1) & -align
        I::GlobalGet(next),
        I::LocalGet(align),
        I::I32Add,
        I::I32Const(1),
        I::I32Sub,
        I::I32Const(0),
        I::LocalGet(align),
        I::I32Sub,
        I::I32And,
        I::LocalSet(ptr),
        // Trap unless next <= ptr <= end and new_len <= end - ptr (unsigned: no wrap-around).
        I::LocalGet(ptr),
        I::GlobalGet(next),
        I::I32LtU,
        I::LocalGet(ptr),
        I::I32Const(end),
        I::I32GtU,
        I::I32Or,
        I::I32Const(end),
        I::LocalGet(ptr),
        I::I32Sub,
        I::LocalGet(new_len),
        I::I32LtU,
        I::I32Or,
        I::If(BlockType::Empty),
        I::Unreachable,
        I::End,
        I::LocalGet(ptr),
        I::LocalGet(new_len),
        I::I32Add,
        I::GlobalSet(next),
        I::LocalGet(ptr),
        I::End,
    ]
}

/// `value` as a 5-byte padded LEB128, as linkers write relocatable immediates. Read as signed
/// (`i32.const`) or unsigned (a load/store offset) it is the same number below 2 GiB.
fn padded_leb5(value: u32) -> [u8; 5] {
    let mut out = [0u8; 5];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = ((value >> (7 * i)) & 0x7f) as u8;
        if i < 4 {
            *byte |= 0x80;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::padded_leb5;

    #[test]
    fn padded_leb5_reads_back_signed_and_unsigned() {
        for v in [0u32, 1, 127, 128, 70880, 70880 + 131072, (1 << 31) - 1] {
            let bytes = padded_leb5(v);
            let mut r = wasmparser::BinaryReader::new(&bytes, 0);
            assert_eq!(r.read_var_u32().unwrap(), v);
            let mut r = wasmparser::BinaryReader::new(&bytes, 0);
            assert_eq!(r.read_var_i32().unwrap() as u32, v, "as SLEB");
        }
    }
}
