//! A generator of C-like modules for the differential harness, written with `wasm-encoder` and
//! deterministic in its input bytes (read through `arbitrary::Unstructured`, so shorter input
//! gives smaller modules and the harness can minimize a failing case by shrinking the bytes).
//!
//! A module looks like what wasm-ld makes of a C program:
//! - a `__stack_pointer` global (found by name, by export, or only by the prologue idiom), the
//!   stack after the data (`[data][stack][heap]`) or first, `__data_end` and `__heap_base`;
//! - active data segments (a runtime word area, a string, random bytes; sometimes a passive
//!   segment), and sometimes the linker's relocations (`linking`, `reloc.CODE`, `reloc.DATA`)
//!   for every data address in code and data, as `-Wl,--emit-relocs` leaves them;
//! - zero-initialized statics at the global base (1024), read and written by the `statics`
//!   export; half the modules have wasm-opt's memory-packing shape, where the first segment
//!   starts above them (its leading zero bytes dropped), and then no relocations and the
//!   accesses' constant addresses folded into their offsets; the linker is named by a
//!   `processed-by clang` producer and/or wasm-ld's segment names (`.data`, `.rodata`), or by
//!   nothing (stripped), so that bounds checks the null page `[0, 1024)` in most modules;
//! - `malloc`/`free` over a bump heap with a free list, and an exported test that uses them;
//! - a funcref table (slot 0 null, as wasm-ld does; sometimes exported and growable, so it may
//!   change at run time) of functions with mixed signatures, and exported `call_indirect` sites
//!   (some through a stack frame, some `return_call_indirect`) that reach matching, castable and
//!   non-castable entries, null slots and out-of-range slots;
//! - when the table is exported, the table's functions are exported too (`t0`, `t1`, …), and
//!   the plan has the harness append them to the table at run time (and overwrite or null an
//!   appended slot) before calling each site through the new slots, as Emscripten's
//!   `addFunction`/`removeFunction` or a side module would;
//! - a ring of functions with stack frames (three epilogue styles, `alloca`, early returns,
//!   and half of them with a nested frame as wasm-opt's inliner leaves an inlined callee's,
//!   sometimes open across the recursive call) that recurse to a depth given by the caller.
//!
//! The module carries its call plan in the `wasmfix-fuzz-plan` custom section, with what each
//! call must do after a rewrite: the same as before, the C-semantics value of a castable
//! mismatch (computed by a model of the adapted arguments), or an overflow (computed from the
//! frame sizes) that a guarded module stops and a relocated one traps on.
#![allow(dead_code)] // shared by test files that each use part of it

use super::diff::{Arg, Call, Expect, PLAN_SECTION, Plan, TABLE_EXPORT, TABLE_GROW, TABLE_SET};
use arbitrary::Unstructured;
use std::collections::HashMap;
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, CustomSection, DataCountSection, DataSection,
    ElementSection, Elements, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, Instruction as I, MemArg, MemorySection, MemoryType,
    Module, NameMap, NameSection, ProducersField, ProducersSection, RefType, TableSection,
    TableType, TypeSection, ValType,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ty {
    I32,
    I64,
    F64,
}

impl Ty {
    fn val(self) -> ValType {
        match self {
            Ty::I32 => ValType::I32,
            Ty::I64 => ValType::I64,
            Ty::F64 => ValType::F64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Sig {
    params: Vec<Ty>,
    result: Option<Ty>,
}

/// The C rule for calling a `callee` through a pointer typed `site`, restated independently of
/// wasmfix: int types line up with int types, floats with floats, any number of extra or
/// missing arguments, results equal or one side void.
fn castable(callee: &Sig, site: &Sig) -> bool {
    if callee == site {
        return false;
    }
    let compatible = |a: Ty, b: Ty| a == b || (a != Ty::F64 && b != Ty::F64);
    callee
        .params
        .iter()
        .zip(&site.params)
        .all(|(&a, &b)| compatible(a, b))
        && (callee.result == site.result || callee.result.is_none() || site.result.is_none())
}

/// What table function `id` of signature `sig` returns for `args` (one i64 per parameter, in
/// the parameter's own type): `(id + 1) * 1000 + Σ arg_j * (j + 1)`, ints zero-extended.
fn model(id: usize, sig: &Sig, args: &[i64]) -> Option<i64> {
    let mut acc = (id as i64 + 1) * 1000;
    for (j, (&a, t)) in args.iter().zip(&sig.params).enumerate() {
        let v = match t {
            Ty::I32 => a as i32 as u32 as i64,
            Ty::I64 | Ty::F64 => a,
        };
        acc = acc.wrapping_add(v.wrapping_mul(j as i64 + 1));
    }
    sig.result.map(|r| match r {
        Ty::I32 => acc as i32 as i64,
        _ => acc,
    })
}

/// Arguments a site passes: negative i32s (zero-extension matters), i64s above 2^32 (wrapping
/// matters), small doubles.
fn site_args(site: &Sig) -> Vec<i64> {
    site.params
        .iter()
        .enumerate()
        .map(|(j, t)| match t {
            Ty::I32 => -7 - j as i64,
            Ty::I64 => 0x1_0000_0005 + j as i64,
            Ty::F64 => 3 + j as i64,
        })
        .collect()
}

/// The value a castable mismatch returns with C semantics.
fn cast_result(id: usize, callee: &Sig, site: &Sig) -> Option<i64> {
    let passed = site_args(site);
    let args: Vec<i64> = callee
        .params
        .iter()
        .enumerate()
        .map(|(j, &want)| match (site.params.get(j), passed.get(j)) {
            (Some(Ty::I32), Some(&v)) if want == Ty::I64 => v as i32 as u32 as i64,
            (Some(Ty::I64), Some(&v)) if want == Ty::I32 => v as i32 as i64,
            (Some(_), Some(&v)) => v,
            _ => 0,
        })
        .collect();
    match (model(id, callee, &args), site.result) {
        (_, None) => None,
        (None, Some(_)) => Some(0),
        (Some(v), Some(_)) => Some(v),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Epilogue {
    /// `local.get fp; i32.const F; i32.add; global.set sp` (the -O2 shape).
    RestoreAdd,
    /// `local.get saved; global.set sp` with `saved` read at entry (the -O0 shape).
    RestoreSaved,
    /// `global.get sp; i32.const F; i32.add; global.set sp`.
    Recompute,
}

struct Worker {
    frame: u32,
    epilogue: Epilogue,
    alloca: bool,
    fill: bool,
    heap: bool,
    early_return: bool,
    /// An inlined callee's frame, as wasm-opt's inliner leaves it inside its caller: `global.get
    /// sp; i32.const N; i32.sub; local.tee f; global.set sp` … `local.get f; i32.const N;
    /// i32.add; global.set sp`. `wraps_call`: the recursive call runs inside it (the inlined
    /// callee called on), so every deeper level's frames lie below it.
    nested: Option<Nested>,
}

#[derive(Clone, Copy)]
struct Nested {
    size: u32,
    wraps_call: bool,
}

/// Memory addresses in code are padded 5-byte immediates, as the linker writes them; each one
/// (with its function) is recorded for `reloc.CODE`.
struct Body {
    f: Function,
    addresses: Vec<usize>,
}

impl Body {
    fn new(locals: &[(u32, ValType)]) -> Body {
        Body {
            f: Function::new(locals.iter().copied()),
            addresses: Vec::new(),
        }
    }

    fn ins(&mut self, list: &[I<'_>]) -> &mut Self {
        for i in list {
            self.f.instruction(i);
        }
        self
    }

    /// `i32.const addr` as a padded SLEB immediate, recorded for relocation.
    fn addr(&mut self, addr: u32) -> &mut Self {
        self.f.raw([0x41]);
        self.addresses.push(self.f.byte_len());
        self.f.raw(padded_sleb(addr));
        self
    }
}

fn padded_sleb(v: u32) -> [u8; 5] {
    let mut out = [0u8; 5];
    let mut x = v as u64; // addresses are below 2^31: the top group's sign bit stays clear
    for (i, b) in out.iter_mut().enumerate() {
        *b = (x & 0x7f) as u8 | if i < 4 { 0x80 } else { 0 };
        x >>= 7;
    }
    out
}

fn leb_len(v: u64) -> usize {
    let mut n = 1;
    let mut x = v >> 7;
    while x != 0 {
        n += 1;
        x >>= 7;
    }
    n
}

fn sleb_len(v: i64) -> usize {
    let mut out = Vec::new();
    wasm_encoder::Encode::encode(&v, &mut out);
    out.len()
}

/// Appends a section; returns its index among all sections (what relocations name).
fn push(module: &mut Module, count: &mut u32, s: &impl wasm_encoder::Section) -> u32 {
    module.section(s);
    *count += 1;
    *count - 1
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        target: wasm_encoder::MemArgTarget::Memory(0),
        ordering: None,
    }
}

/// The module generated from `data`.
pub fn generate(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    build(&mut u).ok()
}

fn pick_ty(u: &mut Unstructured<'_>) -> arbitrary::Result<Ty> {
    Ok(*u.choose(&[Ty::I32, Ty::I32, Ty::I64, Ty::F64])?)
}

fn pick_sig(u: &mut Unstructured<'_>, pool: &[Sig]) -> arbitrary::Result<Sig> {
    // Reuse a signature often, so that tables hold matches and near-misses.
    if !pool.is_empty() && u.ratio(1, 2)? {
        return Ok(u.choose(pool)?.clone());
    }
    let n = u.int_in_range(0..=3)?;
    let params = (0..n)
        .map(|_| pick_ty(u))
        .collect::<arbitrary::Result<_>>()?;
    let result = if u.ratio(3, 4)? {
        Some(pick_ty(u)?)
    } else {
        None
    };
    Ok(Sig { params, result })
}

fn build(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    // ---- shape ----
    let fd_write = u.ratio(1, 2)?;
    let stack_first = u.ratio(1, 5)?;
    let stack_size: u32 = *u.choose(&[2048, 4096, 8192, 16384])?;
    let names = u.ratio(3, 4)?;
    let export_sp = !names && u.ratio(1, 2)?;
    let export_table = u.ratio(1, 4)?;
    let passive = u.ratio(1, 8)?;
    // wasm-opt's memory packing drops the zero bytes at the start of the data, so the
    // zero-initialized statics lie in [global base, lowest segment) (issue 15, bug 1: bounds
    // took the lowest segment for the end of the null page and stopped correct programs).
    // wasm-opt leaves no usable relocations behind.
    let packed = u.ratio(1, 2)?;
    let relocs = !stack_first && !passive && !packed && u.ratio(1, 2)?;
    // What tells wasmfix which linker laid the module out, and so where the statics start
    // (its default global base, 1024): clang's `processed-by` producer, wasm-ld's output
    // segment names; neither in a stripped module.
    let producers = u.ratio(1, 2)?;
    let segment_names = names && u.ratio(2, 3)?;
    let n_tables = u.int_in_range(1..=6)?;
    let n_workers = u.int_in_range(1..=3)?;
    let n_sites = u.int_in_range(1..=3)?;

    let mut pool: Vec<Sig> = Vec::new();
    let mut table_sigs = Vec::new();
    for _ in 0..n_tables {
        let s = pick_sig(u, &pool)?;
        pool.push(s.clone());
        table_sigs.push(s);
    }
    let framed_table: Vec<bool> = (0..n_tables)
        .map(|_| u.ratio(1, 3))
        .collect::<arbitrary::Result<_>>()?;
    let mut site_sigs = Vec::new();
    let mut site_kind = Vec::new(); // 0 plain, 1 framed, 2 tail call
    for _ in 0..n_sites {
        site_sigs.push(pick_sig(u, &pool)?);
        site_kind.push(u.int_in_range(0..=2u8)?);
    }
    let mut workers = Vec::new();
    for _ in 0..n_workers {
        let frame = if u.ratio(1, 6)? {
            16 * u.int_in_range(32..=160u32)?
        } else {
            16 * u.int_in_range(1..=24u32)?
        };
        let epilogue = *u.choose(&[
            Epilogue::RestoreAdd,
            Epilogue::RestoreSaved,
            Epilogue::Recompute,
        ])?;
        workers.push(Worker {
            frame,
            epilogue,
            alloca: epilogue != Epilogue::Recompute && u.ratio(1, 3)?,
            fill: u.ratio(1, 2)?,
            heap: u.ratio(1, 3)?,
            early_return: u.ratio(1, 4)?,
            nested: if u.ratio(1, 2)? {
                Some(Nested {
                    size: 16 * u.int_in_range(1..=8u32)?,
                    wraps_call: u.ratio(1, 2)?,
                })
            } else {
                None
            },
        });
    }
    // Table: slot 0 null, then the functions in a shuffled order, some twice, a few nulls.
    let mut slots: Vec<Option<usize>> = vec![None];
    for i in 0..n_tables {
        slots.push(Some(i));
    }
    for _ in 0..u.int_in_range(0..=3)? {
        let extra = if u.ratio(1, 3)? {
            None
        } else {
            Some(u.int_in_range(0..=n_tables - 1)?)
        };
        let at = u.int_in_range(1..=slots.len())?;
        slots.insert(at, extra);
    }
    for i in (2..slots.len()).rev() {
        let j = u.int_in_range(1..=i)?;
        slots.swap(i, j);
    }

    // ---- memory layout ----
    let string: Vec<u8> = (0..u.int_in_range(1..=48usize)?)
        .map(|_| u.int_in_range(32..=126u8))
        .collect::<arbitrary::Result<_>>()?;
    let mut extra_segments: Vec<Vec<u8>> = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let len = u.int_in_range(1..=64usize)?;
        extra_segments.push(
            (0..len)
                .map(|_| u.arbitrary())
                .collect::<arbitrary::Result<_>>()?,
        );
    }
    let bss = u.int_in_range(0..=256u32)?;
    let data_low: u32 = if stack_first { stack_size + 1024 } else { 1024 };
    // Zero-initialized statics (`static int counts[n]`) at the global base, read and written
    // by the `statics` export.
    let statics = data_low;
    let statics_words = u.int_in_range(1..=16u32)?;
    // The runtime words: heap pointer, free-list head (both zero at start), a pointer to the
    // string, a zero word.
    let runtime_at = statics + 4 * statics_words;
    let heap_ptr = runtime_at;
    let free_head = runtime_at + 4;
    let string_ptr = runtime_at + 8;
    let string_at = runtime_at + 16;
    let mut segments: Vec<(u32, Vec<u8>)> = vec![(data_low, Vec::new()), (string_at, string)];
    let mut at = string_at + segments[1].1.len() as u32;
    for s in extra_segments {
        at += u.int_in_range(0..=32u32)?;
        segments.push((at, s.clone()));
        at += s.len() as u32;
    }
    // The first segment: the statics' and runtime words' zeros, the string pointer, a zero
    // word; packed, only the string pointer (every zero byte before and after it dropped).
    if packed {
        segments[0] = (string_ptr, string_at.to_le_bytes().to_vec());
    } else {
        let mut first = vec![0u8; (runtime_at - data_low) as usize + 16];
        let at = (string_ptr - data_low) as usize;
        first[at..at + 4].copy_from_slice(&string_at.to_le_bytes());
        segments[0].1 = first;
    }
    let data_high = at;
    let data_end = (data_high + bss).div_ceil(16) * 16;
    let (stack_low, stack_high, heap_base) = if stack_first {
        (0, stack_size, data_end)
    } else {
        (data_end, data_end + stack_size, data_end + stack_size)
    };
    let pages = (heap_base as u64 + 65536).div_ceil(65536) + 1;
    // Not the runtime words: they hold addresses, which a relocation changes.
    let sum_segment = u.int_in_range(1..=segments.len() - 1)?;

    // ---- indices ----
    let imported = fd_write as u32;
    let f_malloc = imported;
    let f_free = imported + 1;
    let f_table = |i: usize| imported + 2 + i as u32;
    let f_worker = |k: usize| imported + 2 + n_tables as u32 + k as u32;
    let f_site = |k: usize| imported + 2 + (n_tables + n_workers) as u32 + k as u32;
    let f_heap = imported + 2 + (n_tables + n_workers + n_sites) as u32;
    let f_statics = f_heap + 1;
    let (g_sp, g_data_end, g_heap_base) = (0u32, 1u32, 2u32);

    let mut types = TypeSection::new();
    let mut type_of: HashMap<(Vec<ValType>, Vec<ValType>), u32> = HashMap::new();
    let mut ty = |params: Vec<ValType>, results: Vec<ValType>| -> u32 {
        let n = type_of.len() as u32;
        *type_of
            .entry((params.clone(), results.clone()))
            .or_insert_with(|| {
                types.ty().function(params, results);
                n
            })
    };
    let sig_ty = |s: &Sig| {
        (
            s.params.iter().map(|t| t.val()).collect::<Vec<_>>(),
            s.result.iter().map(|t| t.val()).collect::<Vec<_>>(),
        )
    };
    let t_fd_write = ty(vec![ValType::I32; 4], vec![ValType::I32]);
    let t_i32_i32 = ty(vec![ValType::I32], vec![ValType::I32]);
    let t_i32 = ty(vec![ValType::I32], vec![]);
    let table_types: Vec<u32> = table_sigs
        .iter()
        .map(|s| {
            let (p, r) = sig_ty(s);
            ty(p, r)
        })
        .collect();
    let site_types: Vec<u32> = site_sigs
        .iter()
        .map(|s| {
            let (p, r) = sig_ty(s);
            ty(p, r)
        })
        .collect();
    let export_types: Vec<u32> = site_sigs
        .iter()
        .map(|s| {
            let (mut p, r) = sig_ty(s);
            p.push(ValType::I32);
            ty(p, r)
        })
        .collect();

    // ---- code ----
    let mut bodies: Vec<Body> = Vec::new();
    let prologue = |b: &mut Body, frame: u32, fp: u32| {
        b.ins(&[
            I::GlobalGet(g_sp),
            I::I32Const(frame as i32),
            I::I32Sub,
            I::LocalTee(fp),
            I::GlobalSet(g_sp),
        ]);
    };
    let restore = |b: &mut Body, frame: u32, fp: u32| {
        b.ins(&[
            I::LocalGet(fp),
            I::I32Const(frame as i32),
            I::I32Add,
            I::GlobalSet(g_sp),
        ]);
    };

    // malloc(n) -> p: first fit on the free-list head, else bump from __heap_base.
    {
        let (n, p) = (0, 1);
        let mut b = Body::new(&[(1, ValType::I32)]);
        b.ins(&[
            I::LocalGet(n),
            I::I32Const(7),
            I::I32Add,
            I::I32Const(-8),
            I::I32And,
            I::LocalTee(n),
            I::I32Const(8),
            I::I32LtU,
            I::If(BlockType::Empty),
            I::I32Const(8),
            I::LocalSet(n),
            I::End,
        ]);
        b.addr(free_head).ins(&[
            I::I32Load(mem(0, 2)),
            I::LocalTee(p),
            I::If(BlockType::Empty),
            I::LocalGet(p),
            I::I32Const(8),
            I::I32Sub,
            I::I32Load(mem(0, 2)),
            I::LocalGet(n),
            I::I32GeU,
            I::If(BlockType::Empty),
        ]);
        b.addr(free_head).ins(&[
            I::LocalGet(p),
            I::I32Load(mem(0, 2)),
            I::I32Store(mem(0, 2)),
            I::LocalGet(p),
            I::Return,
            I::End,
            I::End,
        ]);
        b.addr(heap_ptr).ins(&[
            I::I32Load(mem(0, 2)),
            I::LocalTee(p),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::GlobalGet(g_heap_base),
            I::LocalSet(p),
            I::End,
            I::LocalGet(p),
            I::LocalGet(n),
            I::I32Store(mem(0, 2)),
        ]);
        b.addr(heap_ptr).ins(&[
            I::LocalGet(p),
            I::I32Const(8),
            I::I32Add,
            I::LocalGet(n),
            I::I32Add,
            I::I32Store(mem(0, 2)),
            I::LocalGet(p),
            I::I32Const(8),
            I::I32Add,
            I::End,
        ]);
        bodies.push(b);
    }
    // free(p): push on the free list.
    {
        let mut b = Body::new(&[]);
        b.ins(&[
            I::LocalGet(0),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::Return,
            I::End,
            I::LocalGet(0),
        ]);
        b.addr(free_head)
            .ins(&[I::I32Load(mem(0, 2)), I::I32Store(mem(0, 2))]);
        b.addr(free_head)
            .ins(&[I::LocalGet(0), I::I32Store(mem(0, 2)), I::End]);
        bodies.push(b);
    }
    // Table functions: the model's value, some computed through a stack frame.
    for (id, sig) in table_sigs.iter().enumerate() {
        let fp = sig.params.len() as u32;
        let mut b = Body::new(&[(1, ValType::I32)]);
        if framed_table[id] {
            prologue(&mut b, 16, fp);
        }
        b.ins(&[I::I64Const((id as i64 + 1) * 1000)]);
        for (j, t) in sig.params.iter().enumerate() {
            b.ins(&[I::LocalGet(j as u32)]);
            match t {
                Ty::I32 => b.ins(&[I::I64ExtendI32U]),
                Ty::I64 => &mut b,
                Ty::F64 => b.ins(&[I::I64TruncSatF64S]),
            };
            b.ins(&[I::I64Const(j as i64 + 1), I::I64Mul, I::I64Add]);
        }
        if framed_table[id] {
            // Through the frame: store, reload.
            b.ins(&[
                I::LocalGet(fp),
                I::I64Const(0),
                I::I64Store(mem(0, 3)),
                I::LocalGet(fp),
                I::I64Load(mem(0, 3)),
                I::I64Add,
            ]);
            restore(&mut b, 16, fp);
        }
        match sig.result {
            Some(Ty::I32) => b.ins(&[I::I32WrapI64]),
            Some(Ty::I64) => &mut b,
            Some(Ty::F64) => b.ins(&[I::F64ConvertI64S]),
            None => b.ins(&[I::Drop]),
        };
        b.ins(&[I::End]);
        bodies.push(b);
    }
    // Workers: w_k(d) pushes a frame, stores d in it, calls w_{k+1}(d - 1) while d > 0, and
    // returns the sum of what it stored and what the callee returned.
    for (k, w) in workers.iter().enumerate() {
        let next = f_worker((k + 1) % n_workers);
        let (d, fp, r, saved, a, p, inner, q) = (0, 1, 2, 3, 4, 5, 6, 7);
        let mut b = Body::new(&[(7, ValType::I32)]);
        if w.epilogue == Epilogue::RestoreSaved {
            b.ins(&[
                I::GlobalGet(g_sp),
                I::LocalSet(saved),
                I::LocalGet(saved),
                I::I32Const(w.frame as i32),
                I::I32Sub,
                I::LocalTee(fp),
                I::GlobalSet(g_sp),
            ]);
        } else {
            prologue(&mut b, w.frame, fp);
        }
        if w.fill {
            b.ins(&[
                I::LocalGet(fp),
                I::I32Const(0xa0 + k as i32),
                I::I32Const(w.frame as i32),
                I::MemoryFill(0),
            ]);
        }
        b.ins(&[I::LocalGet(fp), I::LocalGet(d), I::I32Store(mem(0, 2))]);
        if w.alloca {
            // alloca((d & 3) * 16)
            b.ins(&[
                I::GlobalGet(g_sp),
                I::LocalGet(d),
                I::I32Const(3),
                I::I32And,
                I::I32Const(16),
                I::I32Mul,
                I::I32Sub,
                I::LocalTee(a),
                I::GlobalSet(g_sp),
                I::LocalGet(a),
                I::LocalGet(d),
                I::I32Store(mem(0, 2)),
            ]);
        }
        // The inlined callee: opens its frame, stores two words in it (at its bottom and top),
        // reads them back into q (after the recursive call when that runs inside the frame, so
        // a deeper frame placed over it would change the result) and closes it.
        let nested_open = |b: &mut Body, n: Nested| {
            b.ins(&[
                I::GlobalGet(g_sp),
                I::I32Const(n.size as i32),
                I::I32Sub,
                I::LocalTee(inner),
                I::GlobalSet(g_sp),
                I::LocalGet(inner),
                I::LocalGet(d),
                I::I32Const(3),
                I::I32Mul,
                I::I32Const(1),
                I::I32Add,
                I::I32Store(mem(0, 2)),
                I::LocalGet(inner),
                I::LocalGet(d),
                I::I32Const(7),
                I::I32Add,
                I::I32Store(mem(n.size as u64 - 4, 2)),
            ]);
        };
        let nested_close = |b: &mut Body, n: Nested| {
            b.ins(&[
                I::LocalGet(inner),
                I::I32Load(mem(0, 2)),
                I::LocalGet(inner),
                I::I32Load(mem(n.size as u64 - 4, 2)),
                I::I32Add,
                I::LocalSet(q),
                I::LocalGet(inner),
                I::I32Const(n.size as i32),
                I::I32Add,
                I::GlobalSet(g_sp),
            ]);
        };
        if let Some(n) = w.nested {
            nested_open(&mut b, n);
            if !n.wraps_call {
                nested_close(&mut b, n);
            }
        }
        b.ins(&[
            I::LocalGet(d),
            I::If(BlockType::Empty),
            I::LocalGet(d),
            I::I32Const(1),
            I::I32Sub,
            I::Call(next),
            I::LocalSet(r),
            I::End,
        ]);
        if let Some(n) = w.nested.filter(|n| n.wraps_call) {
            nested_close(&mut b, n);
        }
        if w.heap {
            b.ins(&[
                I::LocalGet(d),
                I::I32Const(5),
                I::I32Add,
                I::Call(f_malloc),
                I::LocalTee(p),
                I::LocalGet(d),
                I::I32Store(mem(0, 2)),
                I::LocalGet(r),
                I::LocalGet(p),
                I::I32Load(mem(0, 2)),
                I::I32Add,
                I::LocalSet(r),
                I::LocalGet(p),
                I::Call(f_free),
            ]);
        }
        let epilogue = |b: &mut Body| match w.epilogue {
            Epilogue::RestoreAdd => restore(b, w.frame, fp),
            Epilogue::RestoreSaved => {
                b.ins(&[I::LocalGet(saved), I::GlobalSet(g_sp)]);
            }
            Epilogue::Recompute => {
                b.ins(&[
                    I::GlobalGet(g_sp),
                    I::I32Const(w.frame as i32),
                    I::I32Add,
                    I::GlobalSet(g_sp),
                ]);
            }
        };
        if w.early_return {
            b.ins(&[
                I::LocalGet(d),
                I::I32Const(2),
                I::I32Eq,
                I::If(BlockType::Empty),
            ]);
            epilogue(&mut b);
            b.ins(&[
                I::LocalGet(r),
                I::I32Const(1000),
                I::I32Add,
                I::Return,
                I::End,
            ]);
        }
        b.ins(&[
            I::LocalGet(fp),
            I::I32Load(mem(0, 2)),
            I::LocalGet(r),
            I::I32Add,
            I::LocalGet(q),
            I::I32Add,
        ]);
        epilogue(&mut b);
        b.ins(&[I::End]);
        bodies.push(b);
    }
    // Call sites: icall_k(args…, slot) = call_indirect (type S_k) table[slot](args…).
    for (k, sig) in site_sigs.iter().enumerate() {
        let n = sig.params.len() as u32;
        let fp = n + 1;
        let mut b = Body::new(&[(1, ValType::I32)]);
        if site_kind[k] == 1 {
            prologue(&mut b, 16, fp);
        }
        for j in 0..=n {
            b.ins(&[I::LocalGet(j)]);
        }
        if site_kind[k] == 2 {
            b.ins(&[I::ReturnCallIndirect {
                type_index: site_types[k],
                table_index: 0,
            }]);
        } else {
            b.ins(&[I::CallIndirect {
                type_index: site_types[k],
                table_index: 0,
            }]);
        }
        if site_kind[k] == 1 {
            restore(&mut b, 16, fp);
        }
        b.ins(&[I::End]);
        bodies.push(b);
    }
    // heap(n): n allocations of varying size (4 to 203 bytes), every third freed; returns the sum of what was
    // stored, the byte the string pointer points at, and the bytes of one data segment.
    {
        let (n, i, p, sum) = (0, 1, 2, 3);
        let (seg_at, seg) = &segments[sum_segment];
        let mut b = Body::new(&[(3, ValType::I32)]);
        b.ins(&[
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(i),
            I::LocalGet(n),
            I::I32GeU,
            I::BrIf(1),
            I::LocalGet(i),
            I::I32Const(13),
            I::I32Mul,
            I::I32Const(200),
            I::I32RemU,
            // At least the 4 bytes stored: a C program without heap overflows.
            I::I32Const(4),
            I::I32Add,
            I::Call(f_malloc),
            I::LocalTee(p),
            I::LocalGet(i),
            I::I32Const(7),
            I::I32Mul,
            I::I32Store(mem(0, 2)),
            I::LocalGet(sum),
            I::LocalGet(p),
            I::I32Load(mem(0, 2)),
            I::I32Add,
            I::LocalSet(sum),
            I::LocalGet(i),
            I::I32Const(3),
            I::I32RemU,
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(p),
            I::Call(f_free),
            I::End,
            I::LocalGet(i),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(i),
            I::Br(0),
            I::End,
            I::End,
            I::LocalGet(sum),
        ]);
        b.addr(string_ptr).ins(&[
            I::I32Load(mem(0, 2)),
            I::I32Load8U(mem(0, 0)),
            I::I32Add,
            I::LocalSet(sum),
            I::I32Const(0),
            I::LocalSet(i),
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(i),
            I::I32Const(seg.len() as i32),
            I::I32GeU,
            I::BrIf(1),
            I::LocalGet(sum),
            I::LocalGet(i),
        ]);
        b.addr(*seg_at).ins(&[
            I::I32Add,
            I::I32Load8U(mem(0, 0)),
            I::I32Add,
            I::LocalSet(sum),
            I::LocalGet(i),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(i),
            I::Br(0),
            I::End,
            I::End,
            I::LocalGet(sum),
            I::End,
        ]);
        bodies.push(b);
    }
    // statics(n): adds i + 1 to counts[i * 5 % words] for i < n, sums what it stored, adds the
    // sum to counts[0] and returns counts[0]. Through a computed pointer, and (without
    // relocations, as wasm-opt leaves the code) through a constant address folded into the
    // access's offset: `i32.const 0; i32.load offset=counts`.
    {
        let (n, i, p, sum) = (0, 1, 2, 3);
        let mut b = Body::new(&[(3, ValType::I32)]);
        b.ins(&[
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(i),
            I::LocalGet(n),
            I::I32GeU,
            I::BrIf(1),
            I::LocalGet(i),
            I::I32Const(5),
            I::I32Mul,
            I::I32Const(statics_words as i32),
            I::I32RemU,
            I::I32Const(2),
            I::I32Shl,
        ]);
        b.addr(statics).ins(&[
            I::I32Add,
            I::LocalTee(p),
            I::LocalGet(p),
            I::I32Load(mem(0, 2)),
            I::LocalGet(i),
            I::I32Add,
            I::I32Const(1),
            I::I32Add,
            I::I32Store(mem(0, 2)),
            I::LocalGet(sum),
            I::LocalGet(p),
            I::I32Load(mem(0, 2)),
            I::I32Add,
            I::LocalSet(sum),
            I::LocalGet(i),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(i),
            I::Br(0),
            I::End,
            I::End,
        ]);
        if relocs {
            b.addr(statics);
            b.addr(statics);
            b.ins(&[
                I::I32Load(mem(0, 2)),
                I::LocalGet(sum),
                I::I32Add,
                I::I32Store(mem(0, 2)),
            ]);
            b.addr(statics);
            b.ins(&[I::I32Load(mem(0, 2)), I::End]);
        } else {
            let counts = mem(statics as u64, 2);
            b.ins(&[
                I::I32Const(0),
                I::I32Const(0),
                I::I32Load(counts),
                I::LocalGet(sum),
                I::I32Add,
                I::I32Store(counts),
                I::I32Const(0),
                I::I32Load(counts),
                I::End,
            ]);
        }
        bodies.push(b);
    }

    // ---- the plan ----
    let mut plan = Plan::default();
    let mut exact = Vec::new();
    let mut contract = Vec::new();
    // The deepest the stack gets in run{k}(d): the frames of the levels above plus, at each
    // level, its frame, its alloca and its nested frame; a nested frame that wraps the call
    // stays open under the deeper levels. `slot`: what stack-canary adds above each frame and
    // each nested frame (16 bytes).
    let stack_peak = |k: usize, d: u32, slot: u64| -> u64 {
        let (mut above, mut peak) = (0u64, 0u64);
        for j in 0..=d {
            let w = &workers[(k + j as usize) % n_workers];
            let level = d - j;
            let own = w.frame as u64 + slot + if w.alloca { (level & 3) as u64 * 16 } else { 0 };
            let nested = w.nested.map_or(0, |n| n.size as u64 + slot);
            peak = peak.max(above + own + nested);
            above += own + w.nested.filter(|n| n.wraps_call).map_or(0, |_| nested);
        }
        peak
    };
    let fits_with_canary = |k: usize, d: u32| stack_peak(k, d, 16) <= stack_size as u64;
    for k in 0..n_workers {
        let fits = |d: u32| stack_peak(k, d, 0) <= stack_size as u64;
        let deepest = (0..200).take_while(|&d| fits(d)).last();
        let mut depths = vec![0, 1, 3];
        if let Some(d) = deepest {
            depths.extend([d, d + 1]);
        }
        depths.sort_unstable();
        depths.dedup();
        for d in depths {
            let call = |expect| Call {
                export: format!("run{k}"),
                args: vec![Arg::I64(d as i64)],
                expect,
            };
            if fits_with_canary(k, d) {
                exact.push(call(Expect::Exact));
            } else if fits(d) {
                contract.push(vec![call(Expect::ExactUnlessCanary)]);
            } else {
                contract.push(vec![call(Expect::Overflow)]);
            }
        }
    }
    for export in ["heap", "heap", "statics", "statics"] {
        exact.push(Call {
            export: export.into(),
            args: vec![Arg::I64(u.int_in_range(0..=40)?)],
            expect: Expect::Exact,
        });
    }
    for (k, site) in site_sigs.iter().enumerate() {
        let mut args: Vec<Arg> = site_args(site).into_iter().map(Arg::I64).collect();
        args.push(Arg::I64(0));
        for slot in 0..=slots.len() {
            *args.last_mut().unwrap() = Arg::I64(slot as i64);
            let entry = slots.get(slot).copied().flatten();
            let call = |expect| Call {
                export: format!("icall{k}"),
                args: args.clone(),
                expect,
            };
            match entry {
                Some(f) if castable(&table_sigs[f], site) => contract.push(vec![call(
                    Expect::Cast(cast_result(f, &table_sigs[f], site)),
                )]),
                _ => exact.push(call(Expect::Exact)),
            }
        }
    }
    // Entries added at run time: each table function appended, then called from each site;
    // and per site, a slot appended, overwritten, and a null one appended (slot reuse).
    if export_table {
        for (k, site) in site_sigs.iter().enumerate() {
            let mut args: Vec<Arg> = site_args(site).into_iter().map(Arg::I64).collect();
            args.push(Arg::Appended(0));
            let expect = |f: Option<usize>| match f {
                Some(f) if castable(&table_sigs[f], site) => {
                    Expect::CastAtRunTime(cast_result(f, &table_sigs[f], site))
                }
                _ => Expect::Exact,
            };
            let icall = |slot: u32, f: Option<usize>| {
                let mut args = args.clone();
                *args.last_mut().unwrap() = Arg::Appended(slot);
                Call {
                    export: format!("icall{k}"),
                    args,
                    expect: expect(f),
                }
            };
            let grow = |f: Option<usize>| Call {
                export: TABLE_GROW.into(),
                args: vec![Arg::I64(f.map_or(-1, |f| f as i64))],
                expect: Expect::Exact,
            };
            for f in 0..n_tables {
                contract.push(vec![grow(Some(f)), icall(0, Some(f))]);
            }
            let last = n_tables - 1;
            contract.push(vec![
                grow(Some(0)),
                grow(None),
                Call {
                    export: TABLE_SET.into(),
                    args: vec![Arg::Appended(0), Arg::I64(last as i64)],
                    expect: Expect::Exact,
                },
                icall(1, None),
                icall(0, Some(last)),
            ]);
        }
    }
    plan.sessions.push(exact);
    plan.sessions.extend(contract);
    plan.stack = Some((stack_low as u64, stack_high as u64));

    // ---- sections ----
    let mut module = Module::new();
    let mut section_count = 0u32;
    let _ = t_fd_write;
    let func_types: Vec<u32> = [t_i32_i32, t_i32]
        .into_iter()
        .chain(table_types.iter().copied())
        .chain(std::iter::repeat_n(t_i32_i32, n_workers))
        .chain(export_types.iter().copied())
        .chain([t_i32_i32, t_i32_i32])
        .collect();
    push(&mut module, &mut section_count, &types);
    if fd_write {
        let mut imports = ImportSection::new();
        imports.import(
            "wasi_snapshot_preview1",
            "fd_write",
            EntityType::Function(t_fd_write),
        );
        push(&mut module, &mut section_count, &imports);
    }
    let mut functions = FunctionSection::new();
    for &t in &func_types {
        functions.function(t);
    }
    push(&mut module, &mut section_count, &functions);
    let mut tables = TableSection::new();
    let table_len = slots.len() as u64;
    tables.table(TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum: table_len,
        // An exported table grows at run time (Emscripten's -sALLOW_TABLE_GROWTH).
        maximum: (!export_table).then_some(table_len),
        shared: false,
    });
    push(&mut module, &mut section_count, &tables);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: if u.ratio(1, 2)? {
            Some(pages + 4)
        } else {
            None
        },
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    push(&mut module, &mut section_count, &memories);
    let mut globals = GlobalSection::new();
    let i32_global = |mutable| GlobalType {
        val_type: ValType::I32,
        mutable,
        shared: false,
    };
    globals.global(i32_global(true), &ConstExpr::i32_const(stack_high as i32));
    globals.global(i32_global(false), &ConstExpr::i32_const(data_end as i32));
    globals.global(i32_global(false), &ConstExpr::i32_const(heap_base as i32));
    push(&mut module, &mut section_count, &globals);
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    for k in 0..n_workers {
        exports.export(&format!("run{k}"), ExportKind::Func, f_worker(k));
    }
    for k in 0..n_sites {
        exports.export(&format!("icall{k}"), ExportKind::Func, f_site(k));
    }
    exports.export("heap", ExportKind::Func, f_heap);
    exports.export("statics", ExportKind::Func, f_statics);
    if export_sp {
        exports.export("__stack_pointer", ExportKind::Global, g_sp);
    }
    if export_table {
        exports.export(TABLE_EXPORT, ExportKind::Table, 0);
        for i in 0..n_tables {
            exports.export(&format!("t{i}"), ExportKind::Func, f_table(i));
        }
    }
    push(&mut module, &mut section_count, &exports);
    let mut elements = ElementSection::new();
    for (slot, f) in slots.iter().enumerate() {
        if let Some(f) = f {
            elements.active(
                Some(0),
                &ConstExpr::i32_const(slot as i32),
                Elements::Functions(vec![f_table(*f)].into()),
            );
        }
    }
    push(&mut module, &mut section_count, &elements);
    if passive {
        push(
            &mut module,
            &mut section_count,
            &DataCountSection {
                count: segments.len() as u32 + 1,
            },
        );
    }
    // Code, recording where each address immediate lands in the section's contents.
    let mut code = CodeSection::new();
    let mut code_relocs: Vec<u32> = Vec::new();
    let mut offset = leb_len(bodies.len() as u64);
    for b in bodies {
        let Body { f, addresses } = b;
        let raw = f.into_raw_body();
        let start = offset + leb_len(raw.len() as u64);
        code_relocs.extend(addresses.iter().map(|a| (start + a) as u32));
        offset = start + raw.len();
        code.raw(&raw);
    }
    let code_index = push(&mut module, &mut section_count, &code);
    let mut data = DataSection::new();
    let count = segments.len() + passive as usize;
    // Where the string pointer lies in the first segment's bytes.
    let string_ptr_offset = leb_len(count as u64)
        + 1
        + 1
        + sleb_len(segments[0].0 as i64)
        + 1
        + leb_len(segments[0].1.len() as u64)
        + (string_ptr - segments[0].0) as usize;
    for (at, bytes) in &segments {
        data.active(0, &ConstExpr::i32_const(*at as i32), bytes.iter().copied());
    }
    if passive {
        data.passive(b"passive".iter().copied());
    }
    let data_index = push(&mut module, &mut section_count, &data);
    if names {
        let mut n = NameSection::new();
        let mut funcs = NameMap::new();
        if fd_write {
            funcs.append(0, "fd_write");
        }
        funcs.append(f_malloc, "malloc");
        funcs.append(f_free, "free");
        for i in 0..n_tables {
            funcs.append(f_table(i), &format!("t{i}"));
        }
        for k in 0..n_workers {
            funcs.append(f_worker(k), &format!("w{k}"));
        }
        for k in 0..n_sites {
            funcs.append(f_site(k), &format!("icall{k}"));
        }
        funcs.append(f_heap, "heap");
        funcs.append(f_statics, "statics");
        n.functions(&funcs);
        let mut g = NameMap::new();
        g.append(g_sp, "__stack_pointer");
        g.append(g_data_end, "__data_end");
        g.append(g_heap_base, "__heap_base");
        n.globals(&g);
        if segment_names {
            // wasm-ld's output segments; the string is a literal.
            let mut d = NameMap::new();
            for i in 0..segments.len() as u32 {
                d.append(i, if i == 1 { ".rodata" } else { ".data" });
            }
            n.data(&d);
        }
        push(&mut module, &mut section_count, &n);
    }
    if producers {
        let mut p = ProducersSection::new();
        p.field(
            "processed-by",
            ProducersField::new().value("clang", "19.1.7"),
        );
        push(&mut module, &mut section_count, &p);
    }
    if relocs {
        push(
            &mut module,
            &mut section_count,
            &CustomSection {
                name: "linking".into(),
                data: vec![2u8].into(),
            },
        );
        let reloc = |target: u32, ty: u8, offsets: &[u32]| {
            let mut out = Vec::new();
            wasm_encoder::Encode::encode(&target, &mut out);
            wasm_encoder::Encode::encode(&(offsets.len() as u32), &mut out);
            for &o in offsets {
                out.push(ty);
                wasm_encoder::Encode::encode(&o, &mut out);
                wasm_encoder::Encode::encode(&0u32, &mut out); // symbol
                wasm_encoder::Encode::encode(&0i32, &mut out); // addend
            }
            out
        };
        // R_WASM_MEMORY_ADDR_SLEB = 4, R_WASM_MEMORY_ADDR_I32 = 5.
        push(
            &mut module,
            &mut section_count,
            &CustomSection {
                name: "reloc.CODE".into(),
                data: reloc(code_index, 4, &code_relocs).into(),
            },
        );
        push(
            &mut module,
            &mut section_count,
            &CustomSection {
                name: "reloc.DATA".into(),
                data: reloc(data_index, 5, &[string_ptr_offset as u32]).into(),
            },
        );
    }
    let plan_json = serde_json::to_vec(&plan).expect("serializable plan");
    push(
        &mut module,
        &mut section_count,
        &CustomSection {
            name: PLAN_SECTION.into(),
            data: plan_json.into(),
        },
    );
    let _ = stack_low;
    Ok(module.finish())
}
