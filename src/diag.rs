//! Messages from inside the rewritten module: `wasmfix: stack overflow in f …` on stderr, then
//! a trap. Shared by every pass that stops a program.
//!
//! A message is written only when the module already imports WASI `fd_write` (wasmfix never
//! adds imports: that would shift every function index) and has a 32-bit memory 0; otherwise
//! the program just traps. Text lives in one passive data segment. Three generated functions
//! assemble a message in a scratch area at address 16 and write it to fd 2:
//! `wasmfix:msg_str(offset, len)` copies text from the segment, `wasmfix:msg_u32(x)` appends
//! a decimal number, and `wasmfix:msg_end()` writes the message and traps. The scratch area
//! overwrites the program's memory at [0, 16 + message length): harmless, because the program
//! never runs again after `msg_end`.
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
use wasm_encoder::{BlockType, Instruction, MemArg, MemArgTarget, ValType};
use wasmparser::FuncType;

/// Where message text starts in memory; the iovec and `nwritten` take [0, 12).
const SCRATCH: i32 = 16;
/// Messages are cut at this length so the scratch area stays inside the first page.
const MAX_MESSAGE: i32 = 4096;
/// Eight bytes after the message area, for records read from the text segment.
pub const RECORD_SCRATCH: i32 = SCRATCH + MAX_MESSAGE;

pub struct Diagnostics {
    data: u32,
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
    pub fn get<'e>(module: &Module<'_>, edits: &'e mut Edits<'_>) -> Option<&'e Diagnostics> {
        if edits.diagnostics.is_none() {
            edits.diagnostics = Some(Self::create(module, edits)?);
        }
        edits.diagnostics.as_ref()
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
        let data = edits.add_data(
            m,
            NewData {
                active: None,
                bytes: Vec::new(),
            },
        );
        // The passive segment and memory.init (issue 14: not yet gated).
        edits.record_feature(crate::features::Feature::BulkMemory);
        let pos = edits.add_i32_global(m, true, 0);
        edits.name_data(data, "wasmfix:messages");
        edits.name_global(pos, "wasmfix:msg_length");
        let store = |offset| MemArg {
            offset,
            align: 2,
            target: MemArgTarget::Memory(0),
            ordering: None,
        };
        let i32_ty = wasmparser::ValType::I32;

        // msg_str(offset, len): copy text to the scratch area unless the message is full.
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
                Instruction::MemoryInit {
                    mem: 0,
                    data_index: data,
                },
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
            data,
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

impl Message {
    pub fn new() -> Message {
        Message {
            instructions: Vec::new(),
        }
    }

    /// Appends fixed text.
    pub fn text(mut self, m: &Module<'_>, edits: &mut Edits<'_>, text: &str) -> Message {
        if let Some(d) = Diagnostics::get(m, edits) {
            let (data, msg_str) = (d.data, d.msg_str);
            let offset = edits.extend_data(m, data, text.as_bytes());
            self.instructions.extend([
                Instruction::I32Const(offset as i32),
                Instruction::I32Const(text.len() as i32),
                Instruction::Call(msg_str),
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

/// Stores `text` for messages that pick it at run time; returns its (offset, length), or
/// `None` when the module cannot write messages.
pub fn store_text(m: &Module<'_>, edits: &mut Edits<'_>, text: &str) -> Option<(u32, u32)> {
    let data = Diagnostics::get(m, edits)?.data;
    Some((
        edits.extend_data(m, data, text.as_bytes()),
        text.len() as u32,
    ))
}

/// Appends raw bytes (tables that messages read at run time) to the text segment; returns
/// the segment's index and the bytes' offset in it.
pub fn store_bytes(m: &Module<'_>, edits: &mut Edits<'_>, bytes: &[u8]) -> Option<(u32, u32)> {
    let data = Diagnostics::get(m, edits)?.data;
    Some((data, edits.extend_data(m, data, bytes)))
}
