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
