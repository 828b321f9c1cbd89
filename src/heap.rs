//! Where the runtime inside a module starts its heap, and how that was found: the facts the
//! `adapter-memory` pass needs to reserve memory the runtime never hands out.
//!
//! A runtime learns where its heap may go from its own static layout (a linker symbol, a word
//! of static data), from `memory.size`, and from what `memory.grow` returns. Three shapes are
//! recognized, each from evidence in the module; anything else is unknown, with the reason:
//!
//! - **Go** (`GOOS=wasip1`; producers `language: Go`). Go's runtime starts its heap at
//!   `memRound(firstmoduledata.end)` (`runtime.initBloc`, inlined into `runtime.osinit` by
//!   Go 1.27's compiler), claims every page present at start-up (`blocMax = currentMemory()`) and
//!   assumes the pages `memory.grow` adds start at `blocMax`. The word it reads is found in the
//!   code of `runtime.initBloc` (or `runtime.osinit`): the one 8-byte load from a constant address
//!   whose value is rounded up to 64 KiB. `firstmoduledata.end` is read by `initBloc` and by the
//!   `debuglog` build tag's string check only (Go's runtime source, `mem_sbrk.go`, `debuglog.go`).
//! - **A wasm-ld layout** (C, C++: wasi-libc's dlmalloc, or any allocator that starts at
//!   `__heap_base`). The heap base is the exported or named global `__heap_base`, or, when the
//!   stack lies between the data and the heap, the stack pointer's initial value (wasm-ld puts
//!   `__heap_base` right above the stack). Code refers to linker symbols through immediates the
//!   linker writes as 5-byte padded LEBs, while the compiler writes plain numbers in their shortest
//!   form; so in a function the linker encoded (one with any immediate longer than its shortest
//!   form), a padded `i32.const` or load/store offset equal to the heap base is a reference to
//!   `__heap_base`, and one equal to the end of the initial memory a reference to `__heap_end`.
//!   Nothing else lies at or above the heap base. Everything that could also be such a reference
//!   is refused: a constant in the heap in a re-encoded function (wasm-opt) or one whose shortest
//!   form is 5 bytes long, a padded constant elsewhere in the heap, a data word or another global
//!   holding either value, data at or above the heap base (a memory snapshot).
//! - **Zig's libc allocator** (`heap.BrkAllocator`, named in the name section) in a module that
//!   never executes `memory.size`: it takes memory only with `memory.grow` and uses the pages it
//!   returns (Zig's `std/heap/BrkAllocator.zig`), so no page above the initial memory is its own
//!   until `memory.grow` gives it out.

use crate::facts::Facts;
use crate::module::{Module, const_value};
use serde::Serialize;
use wasmparser::{BinaryReader, ExternalKind, Operator};

/// A WebAssembly page.
pub const PAGE: u64 = 65536;

/// How the module's runtime chooses its heap, and where.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "runtime", rename_all = "kebab-case")]
pub enum HeapStart {
    Go(GoHeap),
    Linker(LinkerHeap),
    GrowOnly(GrowOnlyHeap),
}

impl HeapStart {
    pub fn how(&self) -> &str {
        match self {
            HeapStart::Go(g) => &g.how,
            HeapStart::Linker(l) => &l.how,
            HeapStart::GrowOnly(g) => &g.how,
        }
    }
}

/// Go: the heap starts at `memRound(end)`, read from the word at `end_word`.
#[derive(Debug, Clone, Serialize)]
pub struct GoHeap {
    /// Address of the 8-byte word `runtime.initBloc` reads (`firstmoduledata.end`).
    pub end_word: u64,
    /// Its value: `runtime.end`, the end of Go's static data.
    pub end: u64,
    /// Where the word's eight bytes are in the input, when one active data segment holds them.
    #[serde(skip)]
    pub end_word_offset: Option<usize>,
    pub how: String,
}

impl GoHeap {
    /// Where Go's heap starts: `end` rounded up to a page.
    pub fn heap_start(&self) -> u64 {
        self.end.div_ceil(PAGE) * PAGE
    }
}

/// A wasm-ld layout: the heap starts at `heap_base`; every reference to `__heap_base` and to
/// `__heap_end` (the end of the initial memory) is listed.
#[derive(Debug, Clone, Serialize)]
pub struct LinkerHeap {
    pub heap_base: u64,
    /// The end of the initial memory, where wasm-ld puts `__heap_end`.
    pub memory_end: u64,
    /// Input offsets of the padded immediates (`i32.const`, load/store offsets) equal to
    /// `heap_base`.
    #[serde(skip)]
    pub heap_base_refs: Vec<usize>,
    /// The same for `memory_end`.
    #[serde(skip)]
    pub heap_end_refs: Vec<usize>,
    /// Immutable globals named `__heap_base` / `__heap_end` (exported address globals).
    pub heap_base_globals: Vec<u32>,
    pub heap_end_globals: Vec<u32>,
    pub how: String,
}

/// An allocator that takes memory only with `memory.grow` and uses the pages it returns.
#[derive(Debug, Clone, Serialize)]
pub struct GrowOnlyHeap {
    pub allocator: String,
    /// The end of the initial memory: nothing above it belongs to the runtime at start-up.
    pub memory_end: u64,
    pub how: String,
}

/// The heap facts of `m`, or why they cannot be established.
pub fn find(m: &Module<'_>, facts: &Facts) -> Result<HeapStart, String> {
    let memory_end = memory0_end(m)?;
    if is_go(facts) {
        return go_heap(m, facts, memory_end).map(HeapStart::Go);
    }
    match linker_heap(m, facts, memory_end) {
        Ok(l) => Ok(HeapStart::Linker(l)),
        Err(why) => match grow_only(m, facts) {
            Some(g) => Ok(HeapStart::GrowOnly(g)),
            None => Err(why),
        },
    }
}

/// The end of memory 0's initial size, when memory 0 is the module's own 32-bit, unshared
/// memory of 64 KiB pages (the only memory the adapter can share).
fn memory0_end(m: &Module<'_>) -> Result<u64, String> {
    match m.memories.as_slice() {
        [] => Err("the module has no memory".into()),
        [_] if m.imported_memories > 0 => Err("its memory is imported".into()),
        [mem] if mem.memory64 => Err("its memory is 64-bit".into()),
        [mem] if mem.shared => Err("its memory is shared (threads)".into()),
        [mem] if mem.page_size_log2.is_some_and(|l| l != 16) => {
            Err("its memory has custom page sizes".into())
        }
        [mem] => Ok(mem.initial * PAGE),
        more => Err(format!("the module has {} memories", more.len())),
    }
}

/// Go's toolchain records `language: Go` and `processed-by: Go cmd/compile` in `producers`.
fn is_go(facts: &Facts) -> bool {
    facts.producers.iter().any(|(field, values)| {
        values.iter().any(|(name, _)| {
            (field == "language" && name == "Go")
                || (field == "processed-by" && name == "Go cmd/compile")
        })
    })
}

fn go_heap(m: &Module<'_>, facts: &Facts, memory_end: u64) -> Result<GoHeap, String> {
    let named = |name: &str| {
        facts
            .function_names
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(&f, _)| f)
            .min()
    };
    let (func, name) = match (named("runtime.initBloc"), named("runtime.osinit")) {
        (Some(f), _) => (f, "runtime.initBloc"),
        (None, Some(f)) => (f, "runtime.osinit (initBloc inlined)"),
        (None, None) => {
            return Err(
                "a Go module without the functions runtime.initBloc and runtime.osinit in its \
                 name section (built with -ldflags=-s?): cannot find where its heap starts"
                    .into(),
            );
        }
    };
    let body = m
        .body(func)
        .ok_or_else(|| format!("{name} is not defined in the module"))?;
    let reads = rounded_loads(body).map_err(|e| format!("{name}: {e}"))?;
    let end_word = match reads.as_slice() {
        [a] => *a,
        [] => {
            return Err(format!(
                "{name} does not read its heap start the way Go's initBloc does \
                 (memRound of an 8-byte load from a constant address)"
            ));
        }
        more => {
            return Err(format!(
                "{name} rounds {} loads to 64 KiB: cannot tell which is the heap start",
                more.len()
            ));
        }
    };
    let (bytes, end_word_offset) = static_word(m, end_word);
    let end = u64::from_le_bytes(bytes);
    let data_high = facts.data.as_ref().map_or(0, |d| d.high);
    if end < data_high.max(end_word + 8) || end > memory_end {
        return Err(format!(
            "the word {name} reads at {end_word:#x} holds {end:#x}, which is not the end of Go's \
             static data (data ends at {data_high:#x}, the initial memory at {memory_end:#x})"
        ));
    }
    Ok(GoHeap {
        end_word,
        end,
        end_word_offset,
        how: format!(
            "Go (producers); {name} starts the heap at memRound(*{end_word:#x}) = memRound({end:#x})"
        ),
    })
}

/// Constant addresses `A + offset` of the `i64.load`s in `body` whose value is rounded up to
/// 64 KiB right away: `i64.const A; i32.wrap_i64` (or `i32.const A`), `i64.load`,
/// `i64.const 65535; i64.add; i64.const -65536; i64.and`.
fn rounded_loads(body: &wasmparser::FunctionBody<'_>) -> Result<Vec<u64>, String> {
    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
    while !reader.eof() {
        ops.push(reader.read().map_err(|e| e.to_string())?);
    }
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Operator::I64Load { memarg } = op else {
            continue;
        };
        let address = match (
            i.checked_sub(2).map(|k| &ops[k]),
            ops.get(i.wrapping_sub(1)),
        ) {
            (Some(Operator::I64Const { value }), Some(Operator::I32WrapI64)) => *value as u32,
            (_, Some(Operator::I32Const { value })) => *value as u32,
            _ => continue,
        };
        let rounds = matches!(
            ops.get(i + 1..i + 5),
            Some([
                Operator::I64Const { value: 65535 },
                Operator::I64Add,
                Operator::I64Const { value: -65536 },
                Operator::I64And,
            ])
        );
        if rounds {
            out.push(address as u64 + memarg.offset);
        }
    }
    Ok(out)
}

/// The eight bytes at `address` after memory 0's active segments are applied in order (zero
/// where none writes), and their input offset when one segment holds all eight.
fn static_word(m: &Module<'_>, address: u64) -> ([u8; 8], Option<usize>) {
    let mut word = [0u8; 8];
    let mut written_by = [None::<usize>; 8];
    for (i, range) in m.memory0_segments() {
        let Some(range) = range else { continue };
        for (k, byte) in word.iter_mut().enumerate() {
            let a = address + k as u64;
            if range.contains(&a) {
                *byte = m.data[i].data[(a - range.start) as usize];
                written_by[k] = Some(i);
            }
        }
    }
    let offset = match written_by {
        [Some(first), ..] if written_by.iter().all(|w| *w == Some(first)) => {
            let d = &m.data[first];
            let data_start = d.range.end as usize - d.data.len();
            let start = m.memory0_segments().find(|(i, _)| *i == first);
            start
                .and_then(|(_, r)| r)
                .map(|r| data_start + (address - r.start) as usize)
        }
        _ => None,
    };
    (word, offset)
}

fn linker_heap(m: &Module<'_>, facts: &Facts, memory_end: u64) -> Result<LinkerHeap, String> {
    let (heap_base, base_how) = heap_base(facts)?;
    if heap_base > memory_end {
        return Err(format!(
            "__heap_base ({heap_base}) lies above the initial memory ({memory_end})"
        ));
    }
    if let Some(d) = facts.data.as_ref().filter(|d| d.high > heap_base) {
        return Err(format!(
            "data lies at and above __heap_base ({heap_base}) up to {}: a memory snapshot (Wizer) \
             whose heap is already in use",
            d.high
        ));
    }
    let scan = scan_immediates(m, heap_base, memory_end)?;
    for (i, range) in m.memory0_segments() {
        let Some(range) = range else { continue };
        let data = m.data[i].data;
        let first = range.start.div_ceil(4) * 4;
        for address in (first..range.end.saturating_sub(3)).step_by(4) {
            let at = (address - range.start) as usize;
            let word = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as u64;
            if word == heap_base || word == memory_end {
                return Err(format!(
                    "the data word at {address:#x} holds {word:#x}, which may be a static \
                     pointer to __heap_base or __heap_end: it could not be moved with them"
                ));
            }
        }
    }
    let (mut heap_base_globals, mut heap_end_globals) = (Vec::new(), Vec::new());
    for (i, g) in m.defined_globals.iter().enumerate() {
        let index = m.imported_globals + i as u32;
        let Some(value) = const_value(&g.init) else {
            continue;
        };
        let value = value as u64;
        if g.ty.mutable || !(heap_base..=memory_end).contains(&value) {
            continue;
        }
        let name = global_name(m, facts, index);
        match name.as_deref() {
            Some("__heap_base") if value == heap_base => heap_base_globals.push(index),
            Some("__heap_end") if value == memory_end => heap_end_globals.push(index),
            _ => {
                return Err(format!(
                    "the immutable global {index}{} holds {value:#x}, an address in the heap: \
                     cannot tell what it refers to",
                    name.map_or(String::new(), |n| format!(" `{n}`"))
                ));
            }
        }
    }
    Ok(LinkerHeap {
        heap_base,
        memory_end,
        how: format!(
            "wasm-ld layout: __heap_base {heap_base} ({base_how}); {} references to it and {} to \
             __heap_end ({memory_end}) in code the linker encoded ({} functions)",
            scan.heap_base_refs.len(),
            scan.heap_end_refs.len(),
            scan.linker_functions
        ),
        heap_base_refs: scan.heap_base_refs,
        heap_end_refs: scan.heap_end_refs,
        heap_base_globals,
        heap_end_globals,
    })
}

/// `__heap_base`, from its global or from the stack's place between data and heap.
fn heap_base(facts: &Facts) -> Result<(u64, String), String> {
    if let Some(b) = &facts.heap_base {
        return Ok((b.value, b.how.clone()));
    }
    match &facts.stack {
        Ok(s) if s.layout == crate::facts::StackLayout::StackAfterData => Ok((
            s.high,
            "the stack pointer's initial value: the stack lies between the data and the heap, \
             and wasm-ld puts __heap_base at its top"
                .into(),
        )),
        Ok(_) => Err(
            "no `__heap_base` global, and the stack does not lie between data and heap \
             (stack first): where the data ends and the heap starts is not in the module"
                .into(),
        ),
        Err(why) => Err(format!(
            "no `__heap_base` global and no stack layout: {why}"
        )),
    }
}

fn global_name(m: &Module<'_>, facts: &Facts, index: u32) -> Option<String> {
    if let Some(n) = facts.global_names.get(&index) {
        return Some(n.clone());
    }
    m.exports
        .iter()
        .find(|e| e.kind == ExternalKind::Global && e.index == index)
        .map(|e| e.name.to_string())
}

#[derive(Default)]
struct Immediates {
    heap_base_refs: Vec<usize>,
    heap_end_refs: Vec<usize>,
    linker_functions: usize,
}

/// Width of the LEB128 at `bytes[at..]`.
fn leb_width(bytes: &[u8], at: usize) -> usize {
    bytes[at..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(0, |p| p + 1)
}

/// Bytes of the shortest unsigned LEB128 of `v`.
fn uleb_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of the shortest signed LEB128 of `v`.
fn sleb_len(v: i64) -> usize {
    // Magnitude bits plus a sign bit.
    let bits = 65
        - if v < 0 {
            v.leading_ones()
        } else {
            v.leading_zeros()
        } as usize;
    bits.div_ceil(7)
}

/// The memory immediate of the instruction at input offset `at`, if it has one: the input
/// offset and width of its `offset` field and its value. Decoded from the opcode bytes so that
/// no load or store is missed (MVP, SIMD `0xfd` and atomic `0xfe` ones).
fn memarg_at(bytes: &[u8], at: usize) -> Option<(usize, usize, u64)> {
    let mut r = BinaryReader::new(bytes.get(at..)?, at as u64);
    let has_memarg = match r.read_u8().ok()? {
        0x28..=0x3e => true,
        0xfd => matches!(r.read_var_u32().ok()?, 0x00..=0x0b | 0x54..=0x5d),
        0xfe => r.read_var_u32().ok()? != 0x03,
        _ => false,
    };
    if !has_memarg {
        return None;
    }
    let flags = r.read_var_u32().ok()?;
    if flags & 0x40 != 0 && r.read_var_u32().ok()? != 0 {
        return None;
    }
    let start = r.original_position() as usize;
    let value = r.read_var_u64().ok()?;
    Some((start, r.original_position() as usize - start, value))
}

/// Finds every reference to `heap_base` and `memory_end` among the immediates (see the module
/// comment), or says why they cannot all be told apart from other constants.
fn scan_immediates(m: &Module<'_>, heap_base: u64, memory_end: u64) -> Result<Immediates, String> {
    let bytes = m.bytes;
    let mut out = Immediates::default();
    let in_heap = |v: u64| (heap_base..=memory_end).contains(&v);
    for (k, body) in m.bodies.iter().enumerate() {
        let func = m.imported_funcs + k as u32;
        let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
        // (input offset of the immediate, padded?, its shortest width, value) of every constant
        // and offset that may be an address in the heap.
        let mut candidates: Vec<(usize, bool, usize, u64)> = Vec::new();
        let mut padded = false;
        while !reader.eof() {
            let (op, at) = reader.read_with_offset().map_err(|e| e.to_string())?;
            let at = at as usize;
            match op {
                Operator::Call {
                    function_index: index,
                }
                | Operator::GlobalGet {
                    global_index: index,
                }
                | Operator::GlobalSet {
                    global_index: index,
                }
                | Operator::CallIndirect {
                    type_index: index, ..
                } => {
                    padded |= leb_width(bytes, at + 1) > uleb_len(index as u64);
                }
                Operator::I32Const { value } => {
                    let width = leb_width(bytes, at + 1);
                    let minimal = sleb_len(value as i64);
                    padded |= width > minimal;
                    if (value as u32 as u64) >= heap_base {
                        candidates.push((at + 1, width > minimal, minimal, value as u32 as u64));
                    }
                }
                _ => {
                    if let Some((start, width, value)) = memarg_at(bytes, at) {
                        let minimal = uleb_len(value);
                        padded |= width > minimal;
                        if value >= heap_base {
                            candidates.push((start, width > minimal, minimal, value));
                        }
                    }
                }
            }
        }
        if padded {
            out.linker_functions += 1;
        }
        for (at, padded_here, minimal, value) in candidates {
            if padded && padded_here {
                if value == heap_base {
                    out.heap_base_refs.push(at);
                } else if value == memory_end {
                    out.heap_end_refs.push(at);
                } else {
                    return Err(format!(
                        "function {func} refers to {value:#x} (a linker constant at offset \
                         {at:#x}), an address in or above the heap [{heap_base:#x}, \
                         {memory_end:#x}]: cannot tell what it refers to"
                    ));
                }
            } else if in_heap(value) && (!padded || minimal == 5) {
                // Outside the linker's encoding, or a number whose shortest form is as long as
                // a padded one: a plain number and a reference look the same.
                return Err(format!(
                    "function {func} uses the constant {value:#x} at offset {at:#x}, which may be \
                     a reference to the heap [{heap_base:#x}, {memory_end:#x}] re-encoded after \
                     linking: run wasmfix on the linker's output, before wasm-opt"
                ));
            }
        }
    }
    if out.linker_functions == 0 && !m.bodies.is_empty() {
        return Err(
            "the code was re-encoded after linking (no padded immediates): references to \
             __heap_base cannot be told from other constants; run wasmfix on the linker's \
             output, before wasm-opt"
                .into(),
        );
    }
    Ok(out)
}

/// Zig's libc allocator, recognized by name, in a module that never executes `memory.size`.
pub fn grow_only(m: &Module<'_>, facts: &Facts) -> Option<GrowOnlyHeap> {
    const ALLOCATORS: &[&str] = &["heap.BrkAllocator.alloc", "heap.WasmAllocator.alloc"];
    let allocator = facts
        .function_names
        .values()
        .find(|n| ALLOCATORS.contains(&n.as_str()))?;
    if !facts.code(m).memory_size_functions.is_empty() {
        return None;
    }
    let memory_end = memory0_end(m).ok()?;
    Some(GrowOnlyHeap {
        allocator: allocator.clone(),
        memory_end,
        how: format!(
            "Zig's allocator `{allocator}` (name section) takes memory only with memory.grow and \
             uses the pages it returns; no function executes memory.size"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::{leb_width, sleb_len, uleb_len};

    #[test]
    fn shortest_leb_lengths() {
        for (v, n) in [(0i64, 1), (63, 1), (64, 2), (-64, 1), (-65, 2), (70880, 3)] {
            assert_eq!(sleb_len(v), n, "sleb {v}");
        }
        for (v, n) in [(1 << 27, 5), ((1 << 27) - 1, 4), (i32::MIN as i64, 5)] {
            assert_eq!(sleb_len(v), n, "sleb {v}");
        }
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (70880, 3),
            ((1 << 28) - 1, 4),
        ] {
            assert_eq!(uleb_len(v), n, "uleb {v}");
        }
        // A linker's padded 70880 and the shortest form.
        assert_eq!(leb_width(&[0xe0, 0xa9, 0x84, 0x80, 0x00], 0), 5);
        assert_eq!(leb_width(&[0xe0, 0xa9, 0x04], 0), 3);
    }
}
