//! Messages from inside the rewritten module: `wasmfix: stack overflow in f …` on stderr, then
//! a trap. Shared by every pass that stops a program.
//!
//! A message is written only when the module already imports WASI `fd_write` (wasmfix never
//! adds imports: that would shift every function index) and has a 32-bit memory 0; otherwise
//! the program just traps. Generated functions assemble a message in a scratch area at address
//! 16 and write it to fd 2: `wasmfix:msg_str(offset, len)` appends a piece of the messages'
//! text, `wasmfix:msg_u32(x)` / `wasmfix:msg_hex(x)` a number, and `wasmfix:msg_end()` writes
//! the message and traps. The scratch area overwrites the program's memory at
//! [0, 16 + message length): harmless, because the program never runs again after `msg_end`.
//!
//! The text (fixed phrases, function names, tables that messages read at run time) is one
//! string that the passes build up; each piece is stored once, and a function name longer than
//! [`MAX_NAME`] keeps its start and end around `…`. `wasmfix:text_copy(dest, offset, len)`
//! copies a range of it to memory. Where the text lives depends on the run's features (see
//! [`finish`]):
//! - with bulk memory (the input uses it, or `--enable-bulk-memory`): in one passive data
//!   segment, and `text_copy` is `memory.init`. It costs its bytes and nothing at
//!   instantiation.
//! - otherwise (WebAssembly 1.0): in code. The text is cut into chunks, each a function of
//!   `i64.const` operands, nine 7-bit characters to each (a byte that is not 1..=126 takes two:
//!   an escape and its low seven bits), eight to a call of `wasmfix:text_put72`, which decodes
//!   them and stores the bytes that fall into the requested range. `text_copy` runs the chunks
//!   the range touches (through `wasmfix:text_chunk`, a `br_table` on the chunk number). About
//!   1.17 code bytes per text byte; nothing runs until a message is written.
//!
//! **Report mode** ([`OnError::Report`], `--harden-mode report`): a hardening check prints its
//! message and the program goes on, as with ASan's `halt_on_error=0`. Such a message is
//! started by `wasmfix:msg_begin()`, which saves the memory a message borrows (the iovec at
//! [0, 12) and the last [`REPORT_MAX`] bytes of the message area) into globals and makes the
//! message start there, and ended by `wasmfix:msg_flush()`, which writes it, puts the saved
//! bytes back and returns: the program's memory is as it was. Report messages are cut at
//! [`REPORT_MAX`] bytes. [`OnceFlag`]s (bits in i64 globals) let each site print once.

use crate::edit::{Edits, NewData};
use crate::module::Module;
use std::collections::HashMap;
use wasm_encoder::{BlockType, Function, Instruction, MemArg, MemArgTarget, ValType};
use wasmparser::FuncType;

/// Where message text starts in memory; the iovec and `nwritten` take [0, 12).
const SCRATCH: i32 = 16;
/// Messages are cut at this length so the scratch area stays inside the first page.
const MAX_MESSAGE: i32 = 4096;
/// Eight bytes after the message area, for records read from the text.
pub const RECORD_SCRATCH: i32 = SCRATCH + MAX_MESSAGE;
/// Function names longer than this many bytes keep their start and end around `…` (demangled
/// C++ names run to 24 KB; yosys' 46,499 names take 16 MB whole, 6 MB cut at 256 bytes).
pub const MAX_NAME: usize = 256;

pub struct Diagnostics {
    /// Every piece of text messages use, in the order stored.
    text: Vec<u8>,
    /// The offset of each piece stored so far, so that a piece is stored once.
    pieces: HashMap<Vec<u8>, u32>,
    /// `wasmfix:text_copy(dest, offset, len)`; its body is written by [`finish`].
    text_copy: u32,
    msg_str: u32,
    msg_u32: u32,
    msg_end: u32,
    /// `wasmfix:msg_hex(x)`, added on first use.
    msg_hex: Option<u32>,
    /// The message length so far.
    pos: u32,
    /// Report mode's `(msg_begin, msg_flush)`, added on first use.
    report: Option<(u32, u32)>,
    /// The i64 globals holding [`OnceFlag`] bits, and how many bits are taken.
    flag_globals: Vec<u32>,
    flags_taken: u32,
}

/// What a failed hardening check does after writing its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Trap: the program stops at the violation (the default).
    #[default]
    Stop,
    /// Write the message once per site and let the program go on.
    Report,
}

/// Report messages are cut at this length (the memory they borrow is saved in globals).
pub const REPORT_MAX: i32 = 240;
/// Where a report message starts in the message area: its last [`REPORT_MAX`] bytes.
const REPORT_AT: i32 = MAX_MESSAGE - REPORT_MAX;

/// One bit of a mutable i64 global: set the first time a site reports, so it reports once.
#[derive(Debug, Clone, Copy)]
pub struct OnceFlag {
    global: u32,
    mask: i64,
}

/// `n` [`OnceFlag`]s for the sites of one function.
#[derive(Debug, Clone, Default)]
pub struct OnceFlags {
    globals: Vec<u32>,
    n: u32,
}

impl OnceFlags {
    /// Flag `k`; sites past the last share it.
    pub fn get(&self, k: u32) -> Option<OnceFlag> {
        let k = k.min(self.n.checked_sub(1)?);
        Some(OnceFlag {
            global: self.globals[(k / 64) as usize],
            mask: 1i64 << (k % 64),
        })
    }
}

impl OnceFlag {
    /// `code`, run only the first time execution gets here.
    pub fn guard(&self, code: Vec<Instruction<'static>>) -> Vec<Instruction<'static>> {
        let mut out = vec![
            Instruction::GlobalGet(self.global),
            Instruction::I64Const(self.mask),
            Instruction::I64And,
            Instruction::I64Eqz,
            Instruction::If(BlockType::Empty),
            Instruction::GlobalGet(self.global),
            Instruction::I64Const(self.mask),
            Instruction::I64Or,
            Instruction::GlobalSet(self.global),
        ];
        out.extend(code);
        out.push(Instruction::End);
        out
    }
}

/// Instructions that write a message and trap, built piece by piece.
pub struct Message {
    pub instructions: Vec<Instruction<'static>>,
}

impl Diagnostics {
    /// The module's message writer, created on first use; `None` when the module cannot
    /// write to stderr (no WASI `fd_write` import or no 32-bit memory 0).
    pub fn get<'e>(module: &Module<'_>, edits: &'e mut Edits<'_>) -> Option<&'e mut Diagnostics> {
        if edits.diagnostics.is_none() {
            edits.diagnostics = Some(Self::create(module, edits)?);
        }
        edits.diagnostics.as_mut()
    }

    fn create(m: &Module<'_>, edits: &mut Edits<'_>) -> Option<Diagnostics> {
        let fd_write = ["wasi_snapshot_preview1", "wasi_unstable"]
            .iter()
            .find_map(|wasi| m.imported_func(wasi, "fd_write"))?;
        let i32x4 = FuncType::new([wasmparser::ValType::I32; 4], [wasmparser::ValType::I32]);
        if m.func_sig(fd_write) != Some(&i32x4) {
            return None;
        }
        let memory = m.memories.first()?;
        // The scratch area and the record scratch after it must lie inside the initial memory
        // (with custom page sizes, a memory can be smaller than one 64 KiB page).
        let bytes = memory
            .initial
            .saturating_mul(1 << memory.page_size_log2.unwrap_or(16));
        if memory.memory64 || bytes < (RECORD_SCRATCH + 8) as u64 {
            return None;
        }
        let pos = edits.add_i32_global(m, true, 0);
        edits.name_global(pos, "wasmfix:msg_length");
        let store = |offset| MemArg {
            offset,
            align: 2,
            target: MemArgTarget::Memory(0),
            ordering: None,
        };
        let i32_ty = wasmparser::ValType::I32;

        // text_copy(dest, offset, len): a placeholder until `finish` knows where the text lives.
        let text_copy = edits.add_helper(
            m,
            "wasmfix:text_copy",
            (&[i32_ty; 3], &[]),
            &[],
            &[Instruction::End],
        );

        // msg_str(offset, len): append text unless the message is full.
        let msg_str = edits.add_helper(
            m,
            "wasmfix:msg_str",
            (&[i32_ty, i32_ty], &[]),
            &[],
            &[
                Instruction::GlobalGet(pos),
                Instruction::LocalGet(1),
                Instruction::I32Add,
                Instruction::I32Const(MAX_MESSAGE),
                Instruction::I32LeU,
                Instruction::If(BlockType::Empty),
                Instruction::GlobalGet(pos),
                Instruction::I32Const(SCRATCH),
                Instruction::I32Add,
                Instruction::LocalGet(0),
                Instruction::LocalGet(1),
                Instruction::Call(text_copy),
                Instruction::GlobalGet(pos),
                Instruction::LocalGet(1),
                Instruction::I32Add,
                Instruction::GlobalSet(pos),
                Instruction::End,
                Instruction::End,
            ],
        );

        // msg_u32(x): count the digits, then store them from the last one back.
        let msg_u32 = edits.add_helper(
            m,
            "wasmfix:msg_u32",
            (&[i32_ty], &[]),
            &[(2, ValType::I32)],
            &digits(pos, 10),
        );

        // msg_end(): iovec {SCRATCH, pos} at 0, fd_write(2, 0, 1, 8), trap.
        let msg_end = edits.add_helper(
            m,
            "wasmfix:msg_end",
            (&[], &[]),
            &[],
            &[
                Instruction::I32Const(0),
                Instruction::I32Const(SCRATCH),
                Instruction::I32Store(store(0)),
                Instruction::I32Const(0),
                Instruction::GlobalGet(pos),
                Instruction::I32Store(store(4)),
                Instruction::I32Const(2),
                Instruction::I32Const(0),
                Instruction::I32Const(1),
                Instruction::I32Const(8),
                Instruction::Call(fd_write),
                Instruction::Drop,
                Instruction::Unreachable,
                Instruction::End,
            ],
        );
        Some(Diagnostics {
            text: Vec::new(),
            pieces: HashMap::new(),
            text_copy,
            msg_str,
            msg_u32,
            msg_end,
            msg_hex: None,
            pos,
            report: None,
            flag_globals: Vec::new(),
            flags_taken: 0,
        })
    }

    /// Stores `bytes` in the text (once); returns their offset in it.
    fn store(&mut self, bytes: &[u8]) -> u32 {
        if let Some(&offset) = self.pieces.get(bytes) {
            return offset;
        }
        let offset = self.text.len() as u32;
        self.text.extend_from_slice(bytes);
        self.pieces.insert(bytes.to_vec(), offset);
        offset
    }
}

impl Diagnostics {
    /// msg_hex(x): the hexadecimal digits of x without leading zeros (at least one), written
    /// from the last one back like `msg_u32`.
    fn msg_hex(m: &Module<'_>, edits: &mut Edits<'_>) -> Option<u32> {
        let d = Diagnostics::get(m, edits)?;
        if let Some(f) = d.msg_hex {
            return Some(f);
        }
        let pos = d.pos;
        let f = edits.add_helper(
            m,
            "wasmfix:msg_hex",
            (&[wasmparser::ValType::I32], &[]),
            &[(2, ValType::I32)],
            &digits(pos, 16),
        );
        edits.diagnostics.as_mut()?.msg_hex = Some(f);
        Some(f)
    }
}

impl Diagnostics {
    /// Whether the module can write messages (see [`Diagnostics::get`]).
    pub fn available(m: &Module<'_>, edits: &mut Edits<'_>) -> bool {
        Diagnostics::get(m, edits).is_some()
    }

    /// A fresh [`OnceFlag`], or `None` when the module cannot write messages.
    pub fn once_flag(m: &Module<'_>, edits: &mut Edits<'_>) -> Option<OnceFlag> {
        let d = Diagnostics::get(m, edits)?;
        let bit = d.flags_taken % 64;
        if bit == 0 {
            let ty = wasm_encoder::GlobalType {
                val_type: ValType::I64,
                mutable: true,
                shared: false,
            };
            let g = edits.add_global(m, ty, wasm_encoder::ConstExpr::i64_const(0));
            let k = edits.diagnostics.as_ref()?.flag_globals.len();
            edits.name_global(g, format!("wasmfix:reported_{k}"));
            edits.diagnostics.as_mut()?.flag_globals.push(g);
        }
        let d = edits.diagnostics.as_mut()?;
        d.flags_taken += 1;
        Some(OnceFlag {
            global: *d.flag_globals.last()?,
            mask: 1i64 << bit,
        })
    }

    /// `n` fresh [`OnceFlag`]s, or `None` when the module cannot write messages.
    pub fn once_flags(m: &Module<'_>, edits: &mut Edits<'_>, n: u32) -> Option<OnceFlags> {
        Diagnostics::get(m, edits)?;
        // Start at a fresh global, so the range's globals are consecutive.
        let d = edits.diagnostics.as_mut()?;
        d.flags_taken = d.flags_taken.div_ceil(64) * 64;
        let first = d.flag_globals.len();
        for _ in 0..n.div_ceil(64) {
            Diagnostics::once_flag(m, edits)?;
            let d = edits.diagnostics.as_mut()?;
            d.flags_taken += 63;
        }
        let globals = edits.diagnostics.as_ref()?.flag_globals[first..].to_vec();
        Some(OnceFlags { globals, n })
    }

    /// Report mode's `(msg_begin, msg_flush)`, created on first use.
    fn report_helpers(m: &Module<'_>, edits: &mut Edits<'_>) -> Option<(u32, u32)> {
        let d = Diagnostics::get(m, edits)?;
        if let Some(r) = d.report {
            return Some(r);
        }
        let pos = d.pos;
        let fd_write = ["wasi_snapshot_preview1", "wasi_unstable"]
            .iter()
            .find_map(|wasi| m.imported_func(wasi, "fd_write"))?;
        // The borrowed memory: the iovec and `nwritten` at [0, 12), and the report area.
        let mut saved: Vec<(u64, bool)> = vec![(0, true), (8, false)];
        let area = (SCRATCH + REPORT_AT) as u64;
        saved.extend((0..REPORT_MAX as u64 / 8).map(|k| (area + 8 * k, true)));
        let globals: Vec<u32> = saved
            .iter()
            .enumerate()
            .map(|(k, &(_, wide))| {
                let ty = wasm_encoder::GlobalType {
                    val_type: if wide { ValType::I64 } else { ValType::I32 },
                    mutable: true,
                    shared: false,
                };
                let init = if wide {
                    wasm_encoder::ConstExpr::i64_const(0)
                } else {
                    wasm_encoder::ConstExpr::i32_const(0)
                };
                let g = edits.add_global(m, ty, init);
                edits.name_global(g, format!("wasmfix:msg_saved_{k}"));
                g
            })
            .collect();
        let access = |offset: u64, wide: bool| MemArg {
            offset,
            align: if wide { 3 } else { 2 },
            target: MemArgTarget::Memory(0),
            ordering: None,
        };
        let mut begin = Vec::new();
        for (&(at, wide), &g) in saved.iter().zip(&globals) {
            begin.push(Instruction::I32Const(0));
            begin.push(if wide {
                Instruction::I64Load(access(at, true))
            } else {
                Instruction::I32Load(access(at, false))
            });
            begin.push(Instruction::GlobalSet(g));
        }
        begin.extend([
            Instruction::I32Const(REPORT_AT),
            Instruction::GlobalSet(pos),
            Instruction::End,
        ]);
        let msg_begin = edits.add_helper(m, "wasmfix:msg_begin", (&[], &[]), &[], &begin);
        let mut flush = vec![
            Instruction::I32Const(0),
            Instruction::I32Const(SCRATCH + REPORT_AT),
            Instruction::I32Store(access(0, false)),
            Instruction::I32Const(0),
            Instruction::GlobalGet(pos),
            Instruction::I32Const(REPORT_AT),
            Instruction::I32Sub,
            Instruction::I32Store(access(4, false)),
            Instruction::I32Const(2),
            Instruction::I32Const(0),
            Instruction::I32Const(1),
            Instruction::I32Const(8),
            Instruction::Call(fd_write),
            Instruction::Drop,
        ];
        for (&(at, wide), &g) in saved.iter().zip(&globals) {
            flush.extend([Instruction::I32Const(0), Instruction::GlobalGet(g)]);
            flush.push(if wide {
                Instruction::I64Store(access(at, true))
            } else {
                Instruction::I32Store(access(at, false))
            });
        }
        flush.extend([
            Instruction::I32Const(0),
            Instruction::GlobalSet(pos),
            Instruction::End,
        ]);
        let msg_flush = edits.add_helper(m, "wasmfix:msg_flush", (&[], &[]), &[], &flush);
        edits.diagnostics.as_mut()?.report = Some((msg_begin, msg_flush));
        Some((msg_begin, msg_flush))
    }
}

/// The body of `(x)`: appends the digits of `x` in `radix` (10 or 16) without leading zeros
/// (at least one) to the message at `pos`, unless it is full. Locals: `n` (1) counts the
/// digits, `i` (2) walks them from the last one back.
fn digits(pos: u32, radix: u32) -> Vec<Instruction<'static>> {
    let byte = MemArg {
        offset: SCRATCH as u64,
        align: 0,
        target: MemArgTarget::Memory(0),
        ordering: None,
    };
    let (x, n, i) = (0, 1, 2);
    // x / radix
    let next = |v| match radix {
        16 => [
            Instruction::LocalGet(v),
            Instruction::I32Const(4),
            Instruction::I32ShrU,
        ],
        _ => [
            Instruction::LocalGet(v),
            Instruction::I32Const(10),
            Instruction::I32DivU,
        ],
    };
    // the character of the last digit of x
    let digit: Vec<Instruction<'static>> = match radix {
        // d = x & 15: '0' + d, plus 39 more when d > 9 ('a' - '0' - 10)
        16 => vec![
            Instruction::LocalGet(x),
            Instruction::I32Const(15),
            Instruction::I32And,
            Instruction::I32Const(b'0' as i32),
            Instruction::I32Add,
            Instruction::LocalGet(x),
            Instruction::I32Const(15),
            Instruction::I32And,
            Instruction::I32Const(9),
            Instruction::I32GtU,
            Instruction::I32Const(39),
            Instruction::I32Mul,
            Instruction::I32Add,
        ],
        _ => vec![
            Instruction::LocalGet(x),
            Instruction::I32Const(10),
            Instruction::I32RemU,
            Instruction::I32Const(b'0' as i32),
            Instruction::I32Add,
        ],
    };
    let mut code = vec![
        Instruction::I32Const(1),
        Instruction::LocalSet(n),
        Instruction::LocalGet(x),
        Instruction::LocalSet(i),
        Instruction::Block(BlockType::Empty),
        Instruction::Loop(BlockType::Empty),
    ];
    code.extend(next(i));
    code.extend([
        Instruction::LocalTee(i),
        Instruction::I32Eqz,
        Instruction::BrIf(1),
        Instruction::LocalGet(n),
        Instruction::I32Const(1),
        Instruction::I32Add,
        Instruction::LocalSet(n),
        Instruction::Br(0),
        Instruction::End,
        Instruction::End,
        Instruction::GlobalGet(pos),
        Instruction::I32Const(MAX_MESSAGE - 10),
        Instruction::I32LeU,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(n),
        Instruction::LocalSet(i),
        Instruction::Loop(BlockType::Empty),
        Instruction::GlobalGet(pos),
        Instruction::LocalGet(i),
        Instruction::I32Const(1),
        Instruction::I32Sub,
        Instruction::LocalTee(i),
        Instruction::I32Add,
    ]);
    code.extend(digit);
    code.push(Instruction::I32Store8(byte));
    code.extend(next(x));
    code.extend([
        Instruction::LocalSet(x),
        Instruction::LocalGet(i),
        Instruction::BrIf(0),
        Instruction::End,
        Instruction::GlobalGet(pos),
        Instruction::LocalGet(n),
        Instruction::I32Add,
        Instruction::GlobalSet(pos),
        Instruction::End,
        Instruction::End,
    ]);
    code
}

/// Writes where the messages' text lives, once every pass has stored its text: a passive data
/// segment read by `memory.init` when `bulk_memory` (the run allows bulk memory), else code
/// that writes it (see the module header). Does nothing when no pass wrote a message.
pub fn finish(m: &Module<'_>, edits: &mut Edits<'_>, bulk_memory: bool) {
    let Some(d) = edits.diagnostics.as_mut() else {
        return;
    };
    let text = std::mem::take(&mut d.text);
    let text_copy = d.text_copy;
    let (dest, offset, len) = (0, 1, 2);
    let body = if bulk_memory {
        let data = edits.add_data(
            m,
            NewData {
                active: None,
                bytes: text,
            },
        );
        edits.name_data(data, "wasmfix:messages");
        let mut body = Function::new([]);
        for ins in [
            Instruction::LocalGet(dest),
            Instruction::LocalGet(offset),
            Instruction::LocalGet(len),
            Instruction::MemoryInit {
                mem: 0,
                data_index: data,
            },
            Instruction::End,
        ] {
            body.instruction(&ins);
        }
        body
    } else {
        text_in_code(m, edits, &text)
    };
    let first_new = m.num_funcs();
    edits.new_functions[(text_copy - first_new) as usize].body = body;
}

/// Bytes of text per chunk function: 4 KiB, more when the text would need over 256 chunks.
fn chunk_len(text: &[u8]) -> usize {
    4096.max(text.len().div_ceil(256))
}

/// The text as 7-bit codes: a byte in 1..=126 is itself; 0 and 127 are `0` then the byte; a
/// byte of 128 or more is `127` then its low seven bits.
fn codes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    for &b in bytes {
        match b {
            1..=126 => out.push(b),
            0 | 127 => out.extend([0, b]),
            _ => out.extend([127, b & 127]),
        }
    }
    out
}

/// Nine 7-bit codes as an `i64.const` operand: 63 bits, sign-extended from bit 62 so that the
/// constant encodes in nine bytes.
fn pack9(codes: &[u8]) -> i64 {
    let bits = codes
        .iter()
        .rev()
        .fold(0u64, |acc, &c| (acc << 7) | c as u64);
    ((bits << 1) as i64) >> 1
}

/// The code that writes the text (WebAssembly 1.0): the chunk functions, the decoder and the
/// dispatch; returns the body of `text_copy(dest, offset, len)`.
fn text_in_code(m: &Module<'_>, edits: &mut Edits<'_>, text: &[u8]) -> Function {
    let i32_ty = wasmparser::ValType::I32;
    let i64_ty = wasmparser::ValType::I64;
    // The decoder's state: the text position of the next byte, a pending escape (0, or 1 / 2
    // for a byte of 0..=127 / 128..=255 next), the requested range, and dest - offset.
    let global = |edits: &mut Edits<'_>, name: &str| {
        let g = edits.add_i32_global(m, true, 0);
        edits.name_global(g, format!("wasmfix:text_{name}"));
        g
    };
    let cursor = global(edits, "cursor");
    let escape = global(edits, "escape");
    let from = global(edits, "from");
    let len = global(edits, "len");
    let shift = global(edits, "shift");

    // put9(v): decode nine codes, storing the bytes inside [from, from + len) at byte + shift.
    let (v, c, i) = (0, 1, 2);
    let byte = MemArg {
        offset: 0,
        align: 0,
        target: MemArgTarget::Memory(0),
        ordering: None,
    };
    let put9 = edits.add_helper(
        m,
        "wasmfix:text_put9",
        (&[i64_ty], &[]),
        &[(2, ValType::I32)],
        &[
            Instruction::I32Const(9),
            Instruction::LocalSet(i),
            Instruction::Loop(BlockType::Empty),
            Instruction::LocalGet(v),
            Instruction::I32WrapI64,
            Instruction::I32Const(127),
            Instruction::I32And,
            Instruction::LocalSet(c),
            Instruction::LocalGet(v),
            Instruction::I64Const(7),
            Instruction::I64ShrU,
            Instruction::LocalSet(v),
            Instruction::Block(BlockType::Empty),
            Instruction::GlobalGet(escape),
            Instruction::If(BlockType::Empty),
            // After an escape: the byte is c, or c + 128 after escape 2.
            Instruction::GlobalGet(escape),
            Instruction::I32Const(2),
            Instruction::I32Eq,
            Instruction::I32Const(7),
            Instruction::I32Shl,
            Instruction::LocalGet(c),
            Instruction::I32Or,
            Instruction::LocalSet(c),
            Instruction::I32Const(0),
            Instruction::GlobalSet(escape),
            Instruction::Else,
            Instruction::LocalGet(c),
            Instruction::I32Eqz,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(1),
            Instruction::GlobalSet(escape),
            Instruction::Br(2),
            Instruction::End,
            Instruction::LocalGet(c),
            Instruction::I32Const(127),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(2),
            Instruction::GlobalSet(escape),
            Instruction::Br(2),
            Instruction::End,
            Instruction::End,
            // The byte at `cursor`: stored when inside the range.
            Instruction::GlobalGet(cursor),
            Instruction::GlobalGet(from),
            Instruction::I32Sub,
            Instruction::GlobalGet(len),
            Instruction::I32LtU,
            Instruction::If(BlockType::Empty),
            Instruction::GlobalGet(cursor),
            Instruction::GlobalGet(shift),
            Instruction::I32Add,
            Instruction::LocalGet(c),
            Instruction::I32Store8(byte),
            Instruction::End,
            Instruction::GlobalGet(cursor),
            Instruction::I32Const(1),
            Instruction::I32Add,
            Instruction::GlobalSet(cursor),
            Instruction::End,
            Instruction::LocalGet(i),
            Instruction::I32Const(1),
            Instruction::I32Sub,
            Instruction::LocalTee(i),
            Instruction::BrIf(0),
            Instruction::End,
            Instruction::End,
        ],
    );
    // put72(a, …, h): put9 of each.
    let mut code = Vec::new();
    for p in 0..8 {
        code.extend([Instruction::LocalGet(p), Instruction::Call(put9)]);
    }
    code.push(Instruction::End);
    let put72 = edits.add_helper(m, "wasmfix:text_put72", (&[i64_ty; 8], &[]), &[], &code);

    // The chunks: 72 codes to a call, the last call padded with code 1 (the bytes it stands for
    // lie past the chunk, where the next chunk or nothing is asked for).
    let chunk = chunk_len(text);
    let chunks: Vec<u32> = text
        .chunks(chunk)
        .map(|bytes| {
            let mut codes = codes(bytes);
            codes.resize(codes.len().next_multiple_of(72), 1);
            let mut code = Vec::with_capacity(codes.len() / 8 + codes.len() / 72 + 1);
            for call in codes.chunks(72) {
                code.extend(
                    call.chunks(9)
                        .map(|nine| Instruction::I64Const(pack9(nine))),
                );
                code.push(Instruction::Call(put72));
            }
            code.push(Instruction::End);
            edits.add_helper(m, "wasmfix:text", (&[], &[]), &[], &code)
        })
        .collect();

    // text_chunk(k): br_table to the call of chunk k.
    let n = chunks.len() as u32;
    let mut code = vec![Instruction::Block(BlockType::Empty); n as usize + 1];
    code.extend([
        Instruction::LocalGet(0),
        Instruction::BrTable((0..n).collect::<Vec<_>>().into(), n),
    ]);
    for &f in &chunks {
        code.extend([Instruction::End, Instruction::Call(f), Instruction::Return]);
    }
    code.extend([Instruction::End, Instruction::End]);
    let text_chunk = edits.add_helper(m, "wasmfix:text_chunk", (&[i32_ty], &[]), &[], &code);

    // text_copy(dest, offset, len): every chunk from the one holding `offset` while the range
    // goes on, each started at its first byte with no escape pending.
    let (dest, offset, length, k) = (0, 1, 2, 3);
    let chunk = chunk as i32;
    let mut body = Function::new([(1, ValType::I32)]);
    for ins in [
        Instruction::LocalGet(offset),
        Instruction::GlobalSet(from),
        Instruction::LocalGet(length),
        Instruction::GlobalSet(len),
        Instruction::LocalGet(dest),
        Instruction::LocalGet(offset),
        Instruction::I32Sub,
        Instruction::GlobalSet(shift),
        Instruction::LocalGet(offset),
        Instruction::I32Const(chunk),
        Instruction::I32DivU,
        Instruction::LocalSet(k),
        Instruction::Loop(BlockType::Empty),
        Instruction::LocalGet(k),
        Instruction::I32Const(chunk),
        Instruction::I32Mul,
        Instruction::GlobalSet(cursor),
        Instruction::I32Const(0),
        Instruction::GlobalSet(escape),
        Instruction::LocalGet(k),
        Instruction::Call(text_chunk),
        Instruction::LocalGet(k),
        Instruction::I32Const(1),
        Instruction::I32Add,
        Instruction::LocalTee(k),
        Instruction::I32Const(chunk),
        Instruction::I32Mul,
        Instruction::LocalGet(offset),
        Instruction::LocalGet(length),
        Instruction::I32Add,
        Instruction::I32LtU,
        Instruction::BrIf(0),
        Instruction::End,
        Instruction::End,
    ] {
        body.instruction(&ins);
    }
    body
}

impl Message {
    pub fn new() -> Message {
        Message {
            instructions: Vec::new(),
        }
    }

    /// Appends fixed text.
    pub fn text(mut self, m: &Module<'_>, edits: &mut Edits<'_>, text: &str) -> Message {
        if let Some(d) = Diagnostics::get(m, edits) {
            let offset = d.store(text.as_bytes());
            self.instructions.extend([
                Instruction::I32Const(offset as i32),
                Instruction::I32Const(text.len() as i32),
                Instruction::Call(d.msg_str),
            ]);
        }
        self
    }

    /// Appends text stored earlier with [`store_text`], located by the values `offset` and
    /// `len` compute (instructions leaving one i32 each).
    pub fn stored_text(
        mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        offset: Vec<Instruction<'static>>,
        len: Vec<Instruction<'static>>,
    ) -> Message {
        if let Some(d) = Diagnostics::get(m, edits) {
            let msg_str = d.msg_str;
            self.instructions.extend(offset);
            self.instructions.extend(len);
            self.instructions.push(Instruction::Call(msg_str));
        }
        self
    }

    /// Appends the decimal value that `value` (instructions leaving one i32) computes.
    pub fn number(
        mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        value: Vec<Instruction<'static>>,
    ) -> Message {
        if let Some(d) = Diagnostics::get(m, edits) {
            let msg_u32 = d.msg_u32;
            self.instructions.extend(value);
            self.instructions.push(Instruction::Call(msg_u32));
        }
        self
    }

    /// Appends `0x` and the lowercase hexadecimal value that `value` (instructions leaving one
    /// i32) computes.
    pub fn hex(
        mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        value: Vec<Instruction<'static>>,
    ) -> Message {
        self = self.text(m, edits, "0x");
        if let Some(msg_hex) = Diagnostics::msg_hex(m, edits) {
            self.instructions.extend(value);
            self.instructions.push(Instruction::Call(msg_hex));
        }
        self
    }

    /// Starts a message that [`Message::end`] ends in `mode`: in report mode, first saves the
    /// memory the message borrows.
    pub fn start(m: &Module<'_>, edits: &mut Edits<'_>, mode: OnError) -> Message {
        let mut message = Message::new();
        if mode == OnError::Report
            && let Some((msg_begin, _)) = Diagnostics::report_helpers(m, edits)
        {
            message.instructions.push(Instruction::Call(msg_begin));
        }
        message
    }

    /// Ends a message begun with [`Message::start`]: in stop mode as [`Message::trap`]; in
    /// report mode writes it, puts the borrowed memory back and goes on.
    pub fn end(
        mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        mode: OnError,
    ) -> Vec<Instruction<'static>> {
        match mode {
            OnError::Stop => self.trap(m, edits),
            OnError::Report => {
                if let Some((_, msg_flush)) = Diagnostics::report_helpers(m, edits) {
                    self.instructions.push(Instruction::Call(msg_flush));
                }
                self.instructions
            }
        }
    }

    /// Ends the message: writes it (when the module can) and traps.
    pub fn trap(mut self, m: &Module<'_>, edits: &mut Edits<'_>) -> Vec<Instruction<'static>> {
        if let Some(d) = Diagnostics::get(m, edits) {
            self.instructions.push(Instruction::Call(d.msg_end));
        }
        self.instructions.push(Instruction::Unreachable);
        self.instructions
    }
}

impl Default for Message {
    fn default() -> Self {
        Message::new()
    }
}

/// Stores `text` (a function name: cut to [`MAX_NAME`] bytes) for messages that pick it at
/// run time; returns its (offset, length), or `None` when the module cannot write messages.
pub fn store_text(m: &Module<'_>, edits: &mut Edits<'_>, text: &str) -> Option<(u32, u32)> {
    let d = Diagnostics::get(m, edits)?;
    let text = shorten(text, MAX_NAME);
    Some((d.store(text.as_bytes()), text.len() as u32))
}

/// `name` when it fits in `max` bytes, else its start and end around `…` (a demangled C++
/// name keeps its scope and its parameter list's end). Function names are stored cut at
/// [`MAX_NAME`]; a report message, limited to [`REPORT_MAX`] bytes, cuts them shorter.
pub fn shorten(name: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if name.len() <= max {
        return name.into();
    }
    let keep = (max - '…'.len_utf8()) / 2;
    let head = name.floor_char_boundary(keep);
    let tail = name.ceil_char_boundary(name.len() - keep);
    format!("{}…{}", &name[..head], &name[tail..]).into()
}

/// Raw bytes stored in the messages' text (tables that messages read at run time).
#[derive(Debug, Clone, Copy)]
pub struct StoredBytes {
    text_copy: u32,
}

impl StoredBytes {
    /// Instructions that copy the bytes at `[offset, offset + len)` of the text to `dest`
    /// (each given as instructions leaving one i32).
    pub fn copy(
        self,
        dest: impl IntoIterator<Item = Instruction<'static>>,
        offset: impl IntoIterator<Item = Instruction<'static>>,
        len: impl IntoIterator<Item = Instruction<'static>>,
    ) -> Vec<Instruction<'static>> {
        let mut out: Vec<Instruction<'static>> = dest.into_iter().collect();
        out.extend(offset);
        out.extend(len);
        out.push(Instruction::Call(self.text_copy));
        out
    }
}

/// Appends raw bytes (tables that messages read at run time) to the text; returns how to read
/// them back and their offset, or `None` when the module cannot write messages.
pub fn store_bytes(
    m: &Module<'_>,
    edits: &mut Edits<'_>,
    bytes: &[u8],
) -> Option<(StoredBytes, u32)> {
    let d = Diagnostics::get(m, edits)?;
    let offset = d.store(bytes);
    Some((
        StoredBytes {
            text_copy: d.text_copy,
        },
        offset,
    ))
}
