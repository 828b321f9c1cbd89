//! heap-canary — heap buffer overflows and double frees stop the program at `free`/`realloc`
//! instead of corrupting the allocator.
//!
//! The allocator functions are wrapped *in place*: the function that really allocates (`malloc`,
//! or `dlmalloc` when `malloc` only forwards to it or was inlined away by wasm-opt) keeps its
//! index but gets a wrapper body, and its original body moves byte for byte to a new function
//! the wrapper calls. Every call — from the program, from inside libc (`strdup`, `getline`,
//! stdio), through the table or an export — therefore reaches the wrapper. The same holds for
//! `free`/`dlfree`, and `calloc`, `realloc`, `aligned_alloc`, `posix_memalign`, `memalign`,
//! `internal_memalign` and `malloc_usable_size` get new bodies built on the two wrappers (their
//! originals call `malloc` by index or read the allocator's chunk headers, which no longer sit
//! in front of the blocks, so they are never called again).
//!
//! A block of `n` bytes is allocated as `n + 20` bytes (more when aligned) and laid out as
//!
//! ```text
//! [raw pointer][n][state: allocated/freed][q ^ key] q: n bytes [q ^ key2 (4 bytes, unaligned)]
//! ```
//!
//! The 16-byte header keeps the allocator's alignment. `free` and `realloc` check, in order: the
//! state (freed: `wasmfix: double free of block at 0x…`), the header canary (overwritten, or
//! not a block from `malloc`: `wasmfix: heap buffer overflow or invalid free …`), and the
//! redzone at exactly `q + n` (`wasmfix: heap buffer overflow: block of N bytes at 0x… written
//! past its end`); then they mark the block freed and free the raw pointer. An overflow that
//! stays inside the allocator's rounding slack (28 bytes written into a 16-byte block) is caught
//! too, because the redzone sits at the requested size, not the allocator's.
//! `malloc_usable_size` returns the requested size.
//!
//! Correct programs see the same allocation results, except for addresses (each block has 20
//! more bytes around it), and `realloc` always moves the block (C allows it). `realloc(p, 0)`
//! frees and returns 0, as dlmalloc does. A double free is only recognized while the allocator
//! has not reused the block's header: a freed and reallocated header looks valid again, and
//! large freed blocks get their header overwritten by the allocator's free lists (then the
//! second free is reported as invalid, still stopping the program).
//!
//! A module whose memory was snapshotted after initialization (Wizer, as ruby.wasm is) holds
//! blocks allocated before the wrappers existed: they sit in the data past `__heap_base` and
//! have no header. `free`, `realloc` and `malloc_usable_size` pass a block in that range that
//! lacks the header canary to the real functions unchecked (`realloc` copies the requested
//! size, bounded by the memory, since the old size is unknown). Overflows into such blocks go
//! unnoticed; wrapped blocks the allocator places in freed snapshot memory are checked.
//!
//! Refuses (alone; `--harden` warns and skips instead): no `malloc`/`free` found by name
//! (name section) or export, allocator functions of unexpected types, and the memories
//! `refuse_unusual_memory` refuses.

use super::{Pass, PassCx, PassReport};
use crate::diag::Message;
use crate::edit::Edits;
use crate::module::Module;
use anyhow::{Result, bail};
use wasm_encoder::{BlockType, Instruction, MemArg, MemArgTarget, ValType};
use wasmparser::FuncType;
use wasmparser::ValType::I32;

pub struct HeapCanary;

const ALLOCATED: i32 = 0xa110_ca7e_u32 as i32;
const FREED: i32 = 0xf4ee_f4ee_u32 as i32;
/// Header bytes before each block, and redzone bytes after it.
const HEADER: i32 = 16;
const REDZONE: i32 = 4;
/// Larger requests fail (return 0) instead of wrapping around with the added bytes.
const MAX_REQUEST: i32 = 0x7fff_0000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    Malloc,
    Free,
    Calloc,
    Realloc,
    /// `(alignment, size) -> pointer`
    Aligned,
    PosixMemalign,
    UsableSize,
}

/// Names by role, in the order they are tried, and the type each must have.
const ROLES: &[(Role, &[&str])] = &[
    (Role::Malloc, &["malloc", "dlmalloc"]),
    (Role::Free, &["free", "dlfree"]),
    (Role::Calloc, &["calloc", "dlcalloc"]),
    (Role::Realloc, &["realloc", "dlrealloc"]),
    (
        Role::Aligned,
        &[
            "aligned_alloc",
            "memalign",
            "dlmemalign",
            "internal_memalign",
        ],
    ),
    (Role::PosixMemalign, &["posix_memalign", "dlposix_memalign"]),
    (
        Role::UsableSize,
        &["malloc_usable_size", "dlmalloc_usable_size"],
    ),
];

fn role_type(role: Role) -> FuncType {
    match role {
        Role::Malloc | Role::UsableSize => FuncType::new([I32], [I32]),
        Role::Free => FuncType::new([I32], []),
        Role::Calloc | Role::Realloc | Role::Aligned => FuncType::new([I32, I32], [I32]),
        Role::PosixMemalign => FuncType::new([I32, I32, I32], [I32]),
    }
}

impl Pass for HeapCanary {
    fn name(&self) -> &'static str {
        "heap-canary"
    }

    fn description(&self) -> &'static str {
        "redzones around malloc blocks, checked at free/realloc; double frees (--harden)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let facts = cx.facts();
        let report = |summary: String, warnings: Vec<String>| PassReport {
            pass: "heap-canary",
            summary,
            warnings,
            details: serde_json::json!({ "wrapped": [] }),
        };
        if let Some(done) = facts.applied.get("heap-canary") {
            return Ok(report(
                format!("already applied by an earlier wasmfix run ({done})"),
                Vec::new(),
            ));
        }
        match wrap(cx) {
            Ok(r) => Ok(r),
            Err(e) if cx.options.harden => {
                let why = crate::pipeline::one_line(&e);
                Ok(report(
                    format!("not applied: {why}"),
                    vec![format!("heap blocks are not checked: {why}")],
                ))
            }
            Err(e) => Err(e),
        }
    }
}

/// The function a name (name section, else export) denotes.
fn named(cx: &PassCx<'_, '_, '_>, name: &str) -> Option<u32> {
    let facts = cx.facts();
    let mut by_name: Vec<u32> = facts
        .function_names
        .iter()
        .filter(|(_, n)| n.as_str() == name)
        .map(|(&f, _)| f)
        .collect();
    by_name.sort();
    by_name.first().copied().or_else(|| {
        cx.module
            .exports
            .iter()
            .find(|e| e.name == name && e.kind == wasmparser::ExternalKind::Func)
            .map(|e| e.index)
    })
}

/// Follows functions whose whole body passes their parameters on to another function of the
/// same type (`malloc` → `dlmalloc`): the one at the end of the chain does the work, and code
/// that wasm-opt inlined the forwarder into calls it directly.
fn resolve(m: &Module<'_>, mut f: u32) -> u32 {
    for _ in 0..4 {
        let Some(body) = f
            .checked_sub(m.imported_funcs)
            .and_then(|d| m.bodies.get(d as usize))
        else {
            break;
        };
        let Ok(mut ops) = body.get_operators_reader() else {
            break;
        };
        let params = m.func_sig(f).map_or(0, |s| s.params().len() as u32);
        let mut next = None;
        let mut k = 0;
        while let Ok(op) = ops.read() {
            match op {
                wasmparser::Operator::LocalGet { local_index }
                    if local_index == k && next.is_none() =>
                {
                    k += 1
                }
                wasmparser::Operator::Call { function_index } if k == params && next.is_none() => {
                    next = Some(function_index)
                }
                wasmparser::Operator::End if ops.eof() => break,
                _ => {
                    next = None;
                    break;
                }
            }
        }
        match next {
            Some(g) if m.func_sig(g) == m.func_sig(f) && g >= m.imported_funcs && g != f => f = g,
            _ => break,
        }
    }
    f
}

fn wrap(cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
    let m = cx.module;
    if m.memories.is_empty() {
        bail!("the module has no memory");
    }
    super::refuse_unusual_memory(m)?;
    // (role, name found, function wrapped)
    let mut found: Vec<(Role, String, u32)> = Vec::new();
    for &(role, names) in ROLES {
        for name in names {
            let Some(f) = named(cx, name) else { continue };
            if f < m.imported_funcs {
                bail!(
                    "`{name}` is imported (function {f}): only a module's own allocator can be wrapped"
                );
            }
            let f = resolve(m, f);
            if m.func_sig(f) != Some(&role_type(role)) {
                if matches!(role, Role::Malloc | Role::Free) {
                    bail!(
                        "`{name}` (function {f}) has type {}, not {}",
                        m.func_sig(f)
                            .map_or("not a function type".into(), crate::sig::show),
                        crate::sig::show(&role_type(role))
                    );
                }
                continue;
            }
            if let Some((other, other_name, _)) = found.iter().find(|(_, _, g)| *g == f) {
                if *other == role {
                    continue;
                }
                bail!(
                    "`{name}` and `{other_name}` are the same function {f}: cannot tell what it does"
                );
            }
            found.push((role, name.to_string(), f));
        }
    }
    let one = |role: Role| -> Result<u32> {
        let fs: Vec<&(Role, String, u32)> = found.iter().filter(|x| x.0 == role).collect();
        match fs.as_slice() {
            [(_, _, f)] => Ok(*f),
            [] => bail!(
                "cannot find `{}`: no function of that name in the name section (stripped?) \
                 and no export of it; keep the name section (do not strip `name`)",
                ROLES.iter().find(|r| r.0 == role).expect("listed").1[0]
            ),
            more => bail!(
                "several functions do what `{}` does ({}): cannot tell which to wrap",
                more[0].1,
                more.iter()
                    .map(|x| format!("`{}` = function {}", x.1, x.2))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    let malloc = one(Role::Malloc)?;
    let free = one(Role::Free)?;

    // A memory snapshot (Wizer, as in ruby.wasm) records the blocks its initializer allocated
    // as data past `__heap_base`; those have no header. Without `__heap_base` every address
    // below the end of the data may be such a block.
    // stack-first earlier in this pipeline moved the data and `__heap_base` up.
    let facts = cx.facts();
    let shift = cx.edits.stack_relocated.unwrap_or(0);
    let data_high = facts.data.as_ref().map_or(0, |d| d.high + shift);
    let heap_base = facts.heap_base.as_ref().map(|h| h.value + shift);
    let snapshot = match heap_base {
        Some(base) if data_high > base => Some((base, data_high)),
        Some(_) => None,
        None if data_high > 0 => Some((0, data_high)),
        None => None,
    };
    let snapshot = snapshot.map(|(lo, hi)| {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX) as i32;
        (clamp(lo), clamp(hi))
    });
    let edits = &mut *cx.edits;
    // realloc's memory.copy and calloc's memory.fill (issue 14: not yet gated).
    edits.record_feature(crate::features::Feature::BulkMemoryOpt);
    let key = crate::facts::module_hash(m.bytes) | 1;
    let key2 = key.rotate_left(13) ^ 0x5bd1_e995;
    let real_malloc = edits.move_body(m, malloc, "wasmfix:real_malloc");
    let real_free = edits.move_body(m, free, "wasmfix:real_free");
    let mut h = Helpers::new(m, edits, key as i32, key2 as i32);
    h.snapshot = snapshot;

    edits.replace_body(malloc, &[(2, ValType::I32)], &h.malloc(real_malloc));
    edits.replace_body(free, &[], &h.free(real_free));
    for (role, _, f) in &found {
        let (locals, code): (Vec<(u32, ValType)>, Vec<Instruction<'static>>) = match role {
            Role::Malloc | Role::Free => continue,
            Role::Calloc => (vec![(1, ValType::I64), (1, ValType::I32)], h.calloc(malloc)),
            Role::Realloc => (vec![(2, ValType::I32)], h.realloc(malloc, free, real_free)),
            Role::Aligned => (vec![(2, ValType::I32)], h.aligned(malloc, real_malloc)),
            Role::PosixMemalign => (
                vec![(1, ValType::I32)],
                h.posix_memalign(malloc, real_malloc),
            ),
            Role::UsableSize => {
                let real = edits.move_body(m, *f, "wasmfix:real_malloc_usable_size");
                (vec![], h.usable_size(real))
            }
        };
        edits.replace_body(*f, &locals, &code);
    }
    let wrapped: Vec<String> = found
        .iter()
        .map(|(_, name, f)| format!("{name} (function {f})"))
        .collect();
    edits.record_applied("heap-canary", serde_json::json!({ "wrapped": wrapped }));
    Ok(PassReport {
        pass: "heap-canary",
        summary: format!(
            "wrapped {} in place: 16-byte headers and {REDZONE}-byte redzones, checked at free and realloc",
            wrapped.join(", ")
        ),
        warnings: Vec::new(),
        details: serde_json::json!({ "wrapped": wrapped, "real_malloc": real_malloc, "real_free": real_free }),
    })
}

/// The generated helpers the wrappers share.
struct Helpers {
    /// mark(raw, q, n) -> q: writes the header and the redzone.
    mark: u32,
    /// check(q) -> n: checks the state, the header canary and the redzone; traps on a failure.
    check: u32,
    /// The header canary key (`q ^ key` at `q - 4`).
    key: i32,
    /// `[start, end)` of a memory snapshot's heap, whose blocks may have no header (see
    /// `foreign`).
    snapshot: Option<(i32, i32)>,
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        target: MemArgTarget::Memory(0),
        ordering: None,
    }
}

use Instruction as I;

/// Copies `min(old, n)` bytes from block `q` to block `new`, then frees `q` with `free`
/// (locals `(q, n, old, new)`).
fn copy_then_free((q, n, old, new): (u32, u32, u32, u32), free: u32) -> [Instruction<'static>; 11] {
    [
        I::LocalGet(new),
        I::LocalGet(q),
        I::LocalGet(old),
        I::LocalGet(n),
        I::LocalGet(old),
        I::LocalGet(n),
        I::I32LtU,
        I::Select,
        I::MemoryCopy {
            src_mem: 0,
            dst_mem: 0,
        },
        I::LocalGet(q),
        I::Call(free),
    ]
}

impl Helpers {
    fn new(m: &Module<'_>, edits: &mut Edits<'_>, key: i32, key2: i32) -> Helpers {
        let (raw, q, n, h) = (0, 1, 2, 3);
        let mark = edits.add_helper(
            m,
            "wasmfix:heap_mark",
            (&[I32, I32, I32], &[I32]),
            &[(1, ValType::I32)],
            &[
                I::LocalGet(q),
                I::I32Const(HEADER),
                I::I32Sub,
                I::LocalTee(h),
                I::LocalGet(raw),
                I::I32Store(mem(0, 2)),
                I::LocalGet(h),
                I::LocalGet(n),
                I::I32Store(mem(4, 2)),
                I::LocalGet(h),
                I::I32Const(ALLOCATED),
                I::I32Store(mem(8, 2)),
                I::LocalGet(h),
                I::LocalGet(q),
                I::I32Const(key),
                I::I32Xor,
                I::I32Store(mem(12, 2)),
                I::LocalGet(q),
                I::LocalGet(n),
                I::I32Add,
                I::LocalGet(q),
                I::I32Const(key2),
                I::I32Xor,
                I::I32Store(mem(0, 0)),
                I::LocalGet(q),
                I::End,
            ],
        );
        let (q, h, n) = (0, 1, 2);
        let block = || vec![I::LocalGet(q)];
        let mut double = Message::new()
            .text(m, edits, "wasmfix: double free of block at ")
            .hex(m, edits, block())
            .text(m, edits, "\n")
            .trap(m, edits);
        let mut invalid = Message::new()
            .text(
                m,
                edits,
                "wasmfix: heap buffer overflow or invalid free: the header of block ",
            )
            .hex(m, edits, block())
            .text(
                m,
                edits,
                " is overwritten, or it was not allocated by malloc\n",
            )
            .trap(m, edits);
        let mut overflow = Message::new()
            .text(m, edits, "wasmfix: heap buffer overflow: block of ")
            .number(m, edits, vec![I::LocalGet(n)])
            .text(m, edits, " bytes at ")
            .hex(m, edits, block())
            .text(m, edits, " written past its end\n")
            .trap(m, edits);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::LocalTee(h),
            I::I32Load(mem(8, 2)),
            I::I32Const(FREED),
            I::I32Eq,
            I::If(BlockType::Empty),
        ];
        code.append(&mut double);
        code.extend([
            I::End,
            I::LocalGet(h),
            I::I32Load(mem(8, 2)),
            I::I32Const(ALLOCATED),
            I::I32Ne,
            I::LocalGet(h),
            I::I32Load(mem(12, 2)),
            I::LocalGet(q),
            I::I32Const(key),
            I::I32Xor,
            I::I32Ne,
            I::I32Or,
            I::If(BlockType::Empty),
        ]);
        code.append(&mut invalid);
        code.extend([
            I::End,
            I::LocalGet(h),
            I::I32Load(mem(4, 2)),
            I::LocalSet(n),
            I::LocalGet(q),
            I::LocalGet(n),
            I::I32Add,
            I::I32Load(mem(0, 0)),
            I::LocalGet(q),
            I::I32Const(key2),
            I::I32Xor,
            I::I32Ne,
            I::If(BlockType::Empty),
        ]);
        code.append(&mut overflow);
        code.extend([I::End, I::LocalGet(n), I::End]);
        let check = edits.add_helper(
            m,
            "wasmfix:heap_check",
            (&[I32], &[I32]),
            &[(2, ValType::I32)],
            &code,
        );
        Helpers {
            mark,
            check,
            key,
            snapshot: None,
        }
    }

    /// `if q is foreign { then }`: a block the wrappers did not allocate (recorded by a memory
    /// snapshot, e.g. Wizer's) has no header; it goes to the real functions unchecked. Foreign
    /// means inside the snapshot's heap *and* without our header canary: the allocator may
    /// reuse freed snapshot memory for wrapped blocks, and those must still be checked.
    fn foreign(&self, q: u32, then: Vec<Instruction<'static>>) -> Vec<Instruction<'static>> {
        let Some((start, end)) = self.snapshot else {
            return Vec::new();
        };
        let mut code = vec![
            I::LocalGet(q),
            I::I32Const(start),
            I::I32Sub,
            I::I32Const(end.wrapping_sub(start)),
            I::I32LtU,
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32LtU,
            I::If(BlockType::Result(ValType::I32)),
            I::I32Const(1),
            I::Else,
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(12, 2)),
            I::LocalGet(q),
            I::I32Const(self.key),
            I::I32Xor,
            I::I32Ne,
            I::End,
            I::If(BlockType::Empty),
        ];
        code.extend(then);
        code.extend([I::End, I::End]);
        code
    }

    /// malloc(n): locals raw (1), spare (2).
    fn malloc(&self, real_malloc: u32) -> Vec<Instruction<'static>> {
        let (n, raw) = (0, 1);
        vec![
            I::LocalGet(n),
            I::I32Const(MAX_REQUEST),
            I::I32GtU,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(n),
            I::I32Const(HEADER + REDZONE),
            I::I32Add,
            I::Call(real_malloc),
            I::LocalTee(raw),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(raw),
            I::LocalGet(raw),
            I::I32Const(HEADER),
            I::I32Add,
            I::LocalGet(n),
            I::Call(self.mark),
            I::End,
        ]
    }

    /// free(q)
    fn free(&self, real_free: u32) -> Vec<Instruction<'static>> {
        let q = 0;
        let mut code = vec![
            I::LocalGet(q),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::Return,
            I::End,
        ];
        code.extend(self.foreign(q, vec![I::LocalGet(q), I::Call(real_free), I::Return]));
        code.extend([
            I::LocalGet(q),
            I::Call(self.check),
            I::Drop,
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Const(FREED),
            I::I32Store(mem(8, 2)),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(0, 2)),
            I::Call(real_free),
            I::End,
        ]);
        code
    }

    /// calloc(count, size): locals total (2, i64), q (3).
    fn calloc(&self, malloc: u32) -> Vec<Instruction<'static>> {
        let (count, size, total, q) = (0, 1, 2, 3);
        vec![
            I::LocalGet(count),
            I::I64ExtendI32U,
            I::LocalGet(size),
            I::I64ExtendI32U,
            I::I64Mul,
            I::LocalTee(total),
            I::I64Const(MAX_REQUEST as i64),
            I::I64GtU,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(total),
            I::I32WrapI64,
            I::Call(malloc),
            I::LocalTee(q),
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::I32Const(0),
            I::LocalGet(total),
            I::I32WrapI64,
            I::MemoryFill(0),
            I::End,
            I::LocalGet(q),
            I::End,
        ]
    }

    /// realloc(q, n): locals old (2), new (3).
    fn realloc(&self, malloc: u32, free: u32, real_free: u32) -> Vec<Instruction<'static>> {
        let (q, n, old, new) = (0, 1, 2, 3);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::Return,
            I::End,
        ];
        // A snapshot's block: its size is unknown, so copy `n` bytes (what lies past a smaller
        // block is indeterminate in the new one, as C allows), within the memory.
        let mut copy = vec![
            I::LocalGet(n),
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::LocalTee(new),
            I::If(BlockType::Empty),
            // old = what lies from q to the end of the memory
            I::MemorySize(0),
            I::I32Const(16),
            I::I32Shl,
            I::LocalGet(q),
            I::I32Sub,
            I::LocalSet(old),
        ];
        copy.extend(copy_then_free((q, n, old, new), real_free));
        copy.extend([
            I::End,
            I::LocalGet(new),
            I::Return,
            I::End,
            I::LocalGet(q),
            I::Call(real_free),
            I::I32Const(0),
            I::Return,
        ]);
        code.extend(self.foreign(q, copy));
        code.extend([
            I::LocalGet(q),
            I::Call(self.check),
            I::LocalSet(old),
            I::LocalGet(n),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::Call(free),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(n),
            I::Call(malloc),
            I::LocalTee(new),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
        ]);
        code.extend(copy_then_free((q, n, old, new), free));
        code.extend([I::LocalGet(new), I::End]);
        code
    }

    /// The aligned allocation of `n` bytes at `align` (locals of the caller: `align`, `n`,
    /// `raw`), leaving the block or 0.
    fn aligned_code(
        &self,
        (align, n, raw): (u32, u32, u32),
        malloc: u32,
        real_malloc: u32,
    ) -> Vec<Instruction<'static>> {
        vec![
            I::Block(BlockType::Result(ValType::I32)),
            // Up to 16: the header keeps malloc's own alignment.
            I::LocalGet(align),
            I::I32Const(HEADER),
            I::I32LeU,
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::Br(1),
            I::End,
            // Round the alignment up to a power of two: 1 << (32 - clz(align - 1)).
            I::I32Const(1),
            I::I32Const(32),
            I::LocalGet(align),
            I::I32Const(1),
            I::I32Sub,
            I::I32Clz,
            I::I32Sub,
            I::I32Shl,
            I::LocalSet(align),
            I::I32Const(0),
            I::LocalGet(n),
            I::I32Const(MAX_REQUEST),
            I::LocalGet(align),
            I::I32Sub,
            I::I32GtU,
            I::LocalGet(align),
            I::I32Const(1 << 24),
            I::I32GtU,
            I::I32Or,
            I::BrIf(0),
            I::Drop,
            I::I32Const(0),
            I::LocalGet(n),
            I::LocalGet(align),
            I::I32Add,
            I::I32Const(HEADER + REDZONE),
            I::I32Add,
            I::Call(real_malloc),
            I::LocalTee(raw),
            I::I32Eqz,
            I::BrIf(0),
            I::Drop,
            I::LocalGet(raw),
            I::LocalGet(raw),
            I::I32Const(HEADER),
            I::I32Add,
            I::LocalGet(align),
            I::I32Add,
            I::I32Const(1),
            I::I32Sub,
            I::I32Const(0),
            I::LocalGet(align),
            I::I32Sub,
            I::I32And,
            I::LocalGet(n),
            I::Call(self.mark),
            I::End,
        ]
    }

    /// aligned_alloc(align, n) and its relatives: locals raw (2), spare (3).
    fn aligned(&self, malloc: u32, real_malloc: u32) -> Vec<Instruction<'static>> {
        let mut code = self.aligned_code((0, 1, 2), malloc, real_malloc);
        code.push(I::End);
        code
    }

    /// posix_memalign(out, align, n): local raw (3). EINVAL (28) for an alignment that is not
    /// a power of two multiple of 4, ENOMEM (48) when out of memory.
    fn posix_memalign(&self, malloc: u32, real_malloc: u32) -> Vec<Instruction<'static>> {
        let (out, align, n, raw) = (0, 1, 2, 3);
        let mut code = vec![
            I::LocalGet(align),
            I::I32Const(4),
            I::I32LtU,
            I::LocalGet(align),
            I::LocalGet(align),
            I::I32Const(1),
            I::I32Sub,
            I::I32And,
            I::I32Or,
            I::If(BlockType::Empty),
            I::I32Const(28),
            I::Return,
            I::End,
        ];
        code.extend(self.aligned_code((align, n, raw), malloc, real_malloc));
        code.extend([
            I::LocalTee(raw),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(48),
            I::Return,
            I::End,
            I::LocalGet(out),
            I::LocalGet(raw),
            I::I32Store(mem(0, 2)),
            I::I32Const(0),
            I::End,
        ]);
        code
    }

    /// malloc_usable_size(q): the requested size (after checking the block); the real size
    /// of a snapshot's block.
    fn usable_size(&self, real: u32) -> Vec<Instruction<'static>> {
        let mut code = vec![
            I::LocalGet(0),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
        ];
        code.extend(self.foreign(0, vec![I::LocalGet(0), I::Call(real), I::Return]));
        code.extend([I::LocalGet(0), I::Call(self.check), I::End]);
        code
    }
}
