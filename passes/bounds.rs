//! bounds — a null pointer dereference or a write into read-only data stops the program at the
//! access instead of reading or overwriting memory that is really there.
//!
//! wasm memory starts at address 0 and has no protected pages: `p->z = 42` through a null `p`
//! writes address 8 and carries on, and writing into a string literal changes every use of that
//! literal. This pass checks, inline, every load and store of memory 0 whose effective address
//! (`address + offset`) may fall in
//!
//! - the null page `[0, G)`: G is the lowest address a static can have (`Facts::global_base`):
//!   the name `__global_base`, else the documented default (1024) of the linker that laid the
//!   module out, identified by Emscripten imports, a function wasm-ld synthesizes, wasm-ld's
//!   segment names or a `processed-by clang` producer; never above the lowest data segment, the
//!   stack or the heap. The lowest data segment alone is not G: wasm-opt drops the leading zero
//!   bytes of segments, so zero-initialized statics lie below it (a correct program was stopped
//!   that way). When G cannot be established (a stripped module without producers), the null
//!   page is not checked and the report says why. Loads and stores. When the stack lies at
//!   address 0 (`--stack-first`), there is no null page to check;
//! - read-only data `[ro_low, ro_high)`: the data segments the name section calls `.rodata…`
//!   (wasm-ld names them; wasm-opt keeps the names when it splits them); stores only. Without
//!   data segment names (stripped) this check is skipped, and the report says so.
//!
//! When the read-only data starts at or below G (the usual wasm-ld layout), one unsigned
//! comparison covers both ranges for a store. A check is `local.tee $a; i32.const off;
//! local.get $a; i32.const K; i32.lt_u; br_if $trap; drop` (a store first saves its value in a
//! local): the branch carries the offset to one trap block per function (see `trap_blocks.rs`),
//! which computes the effective address and calls a handler that prints
//! `wasmfix: null pointer dereference at address 0x… in <function>` or
//! `wasmfix: write to read-only data at address 0x… in <function>` (when the module imports WASI
//! `fd_write`) and traps. No call is made on the checked path.
//!
//! Left unchecked, because their address is provably outside both ranges: offsets at or above
//! the checked range's end (the wasm address computation does not wrap), constant addresses
//! outside the ranges, and accesses relative to the stack pointer (`global.get sp`, or a local
//! set once, at the top level of the function, before any read, from `global.get sp [- N]`):
//! stack addresses lie in the stack region, which is outside both ranges. Also unchecked: SIMD
//! lane and splat loads, atomics, and `memory.fill`/`memory.copy`/`memory.init` destinations.
//!
//! A store of the constant zero (`i32.const 0` / `i64.const 0` / +0.0 right before the store)
//! is not checked against the null page in stop mode, only against read-only data: the null
//! page holds zeros (no data segment lies there) and every load from it is checked, so such a
//! store changes nothing the program can see. This is the class of wasi-libc's benign
//! `__secs_to_zone` write (WebAssembly/wasi-libc#506: `*oppoff = 0` through the NULL that
//! `__localtime_r` passes, on every `localtime` call; after wasm-opt inlines it, `i32.const 0;
//! i32.const 0; i32.store`), which would otherwise stop every such program, named or not.
//! Report mode checks and shows them too.
//!
//! Report mode (`--harden-mode report`): no trap block; each check is `if (address in range)
//! { report once }` and the access follows as in the original, so the program goes on exactly
//! as it would have; each access site reports once (`OnceFlag`). `--harden-allow FUNC` leaves
//! a function unchecked.
//!
//! Executions without such an access run the same instructions plus comparisons that are false.
//!
//! Refuses: memory64, shared memory, several memories.

use super::trap_blocks::{At, TrapBlocks};
use super::{Pass, PassCx, PassReport};
use crate::diag::{Diagnostics, Message, OnError, OnceFlags, store_text};
use crate::edit::{BodyCx, BodyRewriter};
use crate::facts::{Facts, StackLayout};
use crate::module::Module;
use anyhow::Result;
use std::collections::HashMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Instruction, MemArg, ValType};
use wasmparser::Operator as O;

pub struct Bounds;

impl Pass for Bounds {
    fn name(&self) -> &'static str {
        "bounds"
    }

    fn description(&self) -> &'static str {
        "null-page accesses and writes to read-only data trap with a message (--harden)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let m = cx.module;
        let facts = cx.facts();
        let nothing = |summary: String| PassReport {
            pass: "bounds",
            summary,
            warnings: Vec::new(),
            details: serde_json::json!({ "checked_functions": 0 }),
        };
        if let Some(done) = facts.applied.get("bounds") {
            return Ok(nothing(format!(
                "already applied by an earlier wasmfix run ({done})"
            )));
        }
        if m.memories.is_empty() {
            return Ok(nothing("no memory: nothing to check".into()));
        }
        super::refuse_unusual_memory(m)?;
        // stack-first may have moved the stack to address 0 and the data up earlier in this
        // pipeline: the checks address the output's layout.
        let shift = cx.edits.stack_relocated;
        let stack_first =
            shift.is_some() || matches!(&facts.stack, Ok(r) if r.layout == StackLayout::StackFirst);
        let (null_end, null_how) = match (&facts.global_base, stack_first) {
            (_, true) => (0, "no null page: the stack lies at address 0".to_string()),
            (Ok(g), false) if g.value == 0 => (0, format!("no null page: {}", g.how)),
            (Ok(g), false) => (g.value.min(u32::MAX as u64), g.how.clone()),
            (Err(why), false) => (0, format!("null page not checked: {why}")),
        };
        let (read_only, ro_how) = read_only_data(m, facts);
        let read_only = read_only.map(|(lo, hi)| {
            let by = shift.unwrap_or(0) as u32;
            (lo.saturating_add(by), hi.saturating_add(by))
        });
        let mut notes = Vec::new();
        if null_end == 0 {
            notes.push(null_how.clone());
        }
        if read_only.is_none() {
            notes.push(format!("read-only data not checked: {ro_how}"));
        }
        if null_end == 0 && read_only.is_none() {
            return Ok(nothing(format!("nothing to check ({})", notes.join("; "))));
        }
        let ranges = Ranges::new(null_end as u32, read_only);
        let sp = facts.stack_pointer.as_ref().ok().map(|s| s.value);

        let mode = cx.options.on_error;
        // Functions with accesses to check, ascending, and how many accesses each has.
        let mut checked = Vec::new();
        let mut accesses = Vec::new();
        let (mut several_results, mut allowed) = (0, 0);
        for (i, body) in m.bodies.iter().enumerate() {
            let f = m.imported_funcs + i as u32;
            let n = count_accesses(body);
            if n == 0 {
                continue;
            }
            if m.func_sig(f).is_none_or(|s| s.results().len() > 1) {
                several_results += 1;
                continue;
            }
            if cx.options.allowed(facts, f) {
                allowed += 1;
                continue;
            }
            checked.push(f);
            accesses.push(n);
        }
        let warnings = cx.options.unmatched_allows(m, facts);
        let edits = &mut *cx.edits;
        if mode == OnError::Report && !Diagnostics::available(m, edits) {
            return Ok(nothing(
                "report mode, but the module cannot write messages (it imports no WASI \
                 fd_write): nothing to report"
                    .into(),
            ));
        }
        // Report mode: each checked access reports once.
        let mut flags = HashMap::new();
        if mode == OnError::Report {
            for (&f, &n) in checked.iter().zip(&accesses) {
                if let Some(range) = Diagnostics::once_flags(m, edits, n) {
                    flags.insert(f, range);
                }
            }
        }
        let handler = handler(m, edits, null_end as u32, mode);
        let mut names = HashMap::new();
        for &f in &checked {
            if let Some(name) = facts.function_names.get(&f)
                && let Some(stored) = store_text(m, edits, name)
            {
                names.insert(f, stored);
            }
        }
        let summary = format!(
            "checks {} in {} functions: {}{}{}",
            if null_end > 0 {
                "loads and stores"
            } else {
                "stores"
            },
            checked.len(),
            match null_end {
                0 => String::new(),
                g => format!("null page [0, {g}) ({null_how})"),
            },
            match read_only {
                Some((lo, hi)) => format!(
                    "{}read-only data [{lo}, {hi}) ({ro_how})",
                    if null_end > 0 { ", " } else { "" }
                ),
                None => String::new(),
            },
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join("; "))
            }
        ) + &match (allowed, mode) {
            (0, OnError::Stop) => String::new(),
            (0, OnError::Report) => "; report mode".to_string(),
            (n, OnError::Stop) => format!("; {n} functions allowed (--harden-allow)"),
            (n, OnError::Report) => {
                format!("; report mode; {n} functions allowed (--harden-allow)")
            }
        };
        edits.record_applied(
            "bounds",
            serde_json::json!({ "null": [0, null_end], "read_only": read_only }),
        );
        let count = checked.len();
        edits.add_rewriter(Box::new(Checks {
            ranges,
            sp,
            handler,
            names,
            checked,
            mode,
            flags,
            f: PerFunction::default(),
        }));
        Ok(PassReport {
            pass: "bounds",
            summary,
            warnings,
            details: serde_json::json!({
                "checked_functions": count,
                "skipped_functions_with_several_results": several_results,
                "allowed_functions": allowed,
                "mode": mode,
                "null_page": [0, null_end],
                "null_page_found_by": null_how,
                "read_only": read_only,
                "read_only_found_by": ro_how,
            }),
        })
    }
}

/// `[low, high)` of the data segments named `.rodata…`, or why it is unknown.
fn read_only_data(m: &Module<'_>, facts: &Facts) -> (Option<(u32, u32)>, String) {
    if m.custom("name").is_none() {
        return (
            None,
            "no name section, so no data segment names (keep `name`)".into(),
        );
    }
    let data_names = &facts.data_names;
    if data_names.is_empty() {
        return (None, "the name section has no data segment names".into());
    }
    let mut ro: Option<(u64, u64)> = None;
    let mut others = Vec::new();
    for (i, range) in m.memory0_segments() {
        let Some(range) = range else {
            return (None, format!("data segment {i} has no constant address"));
        };
        let (lo, hi) = (range.start, range.end);
        if data_names
            .get(&(i as u32))
            .is_some_and(|n| n == ".rodata" || n.starts_with(".rodata."))
        {
            let r = ro.get_or_insert((lo, hi));
            *r = (r.0.min(lo), r.1.max(hi));
        } else {
            others.push((lo, hi));
        }
    }
    let Some((lo, hi)) = ro else {
        return (None, "no data segment is named `.rodata`".into());
    };
    if others.iter().any(|&(a, b)| a < hi && lo < b && b > a) {
        return (
            None,
            "other data lies between the `.rodata` segments".into(),
        );
    }
    if hi > u32::MAX as u64 {
        return (None, "`.rodata` ends beyond 4 GiB".into());
    }
    (
        Some((lo as u32, hi as u32)),
        "data segments named `.rodata`".into(),
    )
}

/// The number of checked-kind accesses in a body.
fn count_accesses(body: &wasmparser::FunctionBody<'_>) -> u32 {
    let Ok(mut ops) = body.get_operators_reader() else {
        return 0;
    };
    let mut n = 0;
    while let Ok(op) = ops.read() {
        n += u32::from(access(&op).is_some());
    }
    n
}

/// Whether `op` is a checked load (false) or store (true), with its offset (one memory: the
/// pass refuses several).
fn access(op: &O<'_>) -> Option<(bool, u64)> {
    use O::*;
    match op {
        I32Load { memarg }
        | I64Load { memarg }
        | F32Load { memarg }
        | F64Load { memarg }
        | I32Load8S { memarg }
        | I32Load8U { memarg }
        | I32Load16S { memarg }
        | I32Load16U { memarg }
        | I64Load8S { memarg }
        | I64Load8U { memarg }
        | I64Load16S { memarg }
        | I64Load16U { memarg }
        | I64Load32S { memarg }
        | I64Load32U { memarg }
        | V128Load { memarg } => Some((false, memarg.offset)),
        I32Store { memarg }
        | I64Store { memarg }
        | F32Store { memarg }
        | F64Store { memarg }
        | I32Store8 { memarg }
        | I32Store16 { memarg }
        | I64Store8 { memarg }
        | I64Store16 { memarg }
        | I64Store32 { memarg }
        | V128Store { memarg } => Some((true, memarg.offset)),
        _ => None,
    }
}

/// The same for an instruction being rewritten: (store, offset, stored value type).
fn access_ins(ins: &Instruction<'_>) -> Option<(bool, u64, ValType)> {
    use Instruction::*;
    let mem0 = |m: &MemArg| matches!(m.target, wasm_encoder::MemArgTarget::Memory(0));
    let (store, m, ty) = match ins {
        I32Load(m) | I32Load8S(m) | I32Load8U(m) | I32Load16S(m) | I32Load16U(m) => {
            (false, m, ValType::I32)
        }
        I64Load(m) | I64Load8S(m) | I64Load8U(m) | I64Load16S(m) | I64Load16U(m)
        | I64Load32S(m) | I64Load32U(m) => (false, m, ValType::I64),
        F32Load(m) => (false, m, ValType::F32),
        F64Load(m) => (false, m, ValType::F64),
        V128Load(m) => (false, m, ValType::V128),
        I32Store(m) | I32Store8(m) | I32Store16(m) => (true, m, ValType::I32),
        I64Store(m) | I64Store8(m) | I64Store16(m) | I64Store32(m) => (true, m, ValType::I64),
        F32Store(m) => (true, m, ValType::F32),
        F64Store(m) => (true, m, ValType::F64),
        V128Store(m) => (true, m, ValType::V128),
        _ => return None,
    };
    mem0(m).then_some((store, m.offset, ty))
}

/// The address ranges to check.
#[derive(Clone, Copy)]
struct Ranges {
    /// `[0, null_end)`; 0 for none.
    null_end: u32,
    read_only: Option<(u32, u32)>,
}

impl Ranges {
    fn new(null_end: u32, read_only: Option<(u32, u32)>) -> Ranges {
        Ranges {
            null_end,
            read_only,
        }
    }

    /// The ranges a load (`store` false) or store must avoid, as `[low, high)`; adjacent ones
    /// merged so that most stores need one comparison. A store of the constant zero
    /// (`zero`) only avoids read-only data: the null page holds zeros and stays so (see the
    /// header).
    fn for_access(&self, store: bool, zero: bool) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        if self.null_end > 0 && !zero {
            out.push((0, self.null_end));
        }
        if let (true, Some((lo, hi))) = (store, self.read_only) {
            match out.first_mut() {
                Some(null) if lo <= null.1 => null.1 = null.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }
}

/// handler(address, function, name_offset, name_len): the message, then a trap (stop mode)
/// or a return (report mode).
fn handler(
    m: &Module<'_>,
    edits: &mut crate::edit::Edits<'_>,
    null_end: u32,
    mode: OnError,
) -> u32 {
    let (address, func, name_offset, name_len) = (0, 1, 2, 3);
    let mut body = Message::start(m, edits, mode).instructions;
    body.extend([
        Instruction::LocalGet(address),
        Instruction::I32Const(null_end as i32),
        Instruction::I32LtU,
        Instruction::If(BlockType::Empty),
    ]);
    body.extend(
        Message::new()
            .text(m, edits, "wasmfix: null pointer dereference at address ")
            .instructions,
    );
    body.push(Instruction::Else);
    body.extend(
        Message::new()
            .text(m, edits, "wasmfix: write to read-only data at address ")
            .instructions,
    );
    body.push(Instruction::End);
    body.extend(
        Message::new()
            .hex(m, edits, vec![Instruction::LocalGet(address)])
            .text(m, edits, " in ")
            .instructions,
    );
    body.extend([
        Instruction::LocalGet(name_len),
        Instruction::If(BlockType::Empty),
    ]);
    body.extend(
        Message::new()
            .stored_text(
                m,
                edits,
                vec![Instruction::LocalGet(name_offset)],
                vec![Instruction::LocalGet(name_len)],
            )
            .instructions,
    );
    body.push(Instruction::Else);
    body.extend(
        Message::new()
            .text(m, edits, "function ")
            .number(m, edits, vec![Instruction::LocalGet(func)])
            .instructions,
    );
    body.push(Instruction::End);
    body.extend(Message::new().text(m, edits, "\n").end(m, edits, mode));
    body.push(Instruction::End);
    let i32t = wasmparser::ValType::I32;
    let name = match mode {
        OnError::Stop => "wasmfix:bounds_fault",
        OnError::Report => "wasmfix:bounds_report",
    };
    edits.add_helper(m, name, (&[i32t; 4], &[]), &[], &body)
}

struct Checks {
    ranges: Ranges,
    sp: Option<u32>,
    handler: u32,
    names: HashMap<u32, (u32, u32)>,
    /// Functions with accesses to check, ascending.
    checked: Vec<u32>,
    mode: OnError,
    /// Report mode: one flag per access of each checked function.
    flags: HashMap<u32, OnceFlags>,
    f: PerFunction,
}

#[derive(Default)]
struct PerFunction {
    blocks: TrapBlocks,
    /// The local holding the address being checked.
    address: u32,
    /// Locals holding a stored value while its address is checked, by type.
    values: HashMap<u8, u32>,
    /// Locals that hold a stack address wherever they are read (see `frame_locals`).
    frame: Vec<u32>,
    /// The last two instructions received, for the provably fine addresses.
    last: [Option<Instruction<'static>>; 2],
    /// Report mode: the function's flags, and the number of accesses seen so far.
    flags: OnceFlags,
    sites: u32,
}

/// Locals written exactly once, at the top level of the function, from `global.get sp` or
/// `global.get sp; i32.const N; i32.sub` (N ≥ 0), and not read before that write: every read
/// sees a stack address.
fn frame_locals(ops: &[(O<'_>, u64)], sp: u32) -> Vec<u32> {
    let mut writes: HashMap<u32, u32> = HashMap::new();
    let mut read_before: Vec<u32> = Vec::new();
    let mut defs: Vec<u32> = Vec::new();
    let mut depth = 0u32;
    for (k, (op, _)) in ops.iter().enumerate() {
        let prev = |n: usize| k.checked_sub(n).map(|i| &ops[i].0);
        match op {
            O::LocalGet { local_index } if !defs.contains(local_index) => {
                read_before.push(*local_index)
            }
            O::LocalSet { local_index } | O::LocalTee { local_index } => {
                *writes.entry(*local_index).or_default() += 1;
                let from_sp = match (prev(3), prev(2), prev(1)) {
                    (_, _, Some(O::GlobalGet { global_index })) => *global_index == sp,
                    (
                        Some(O::GlobalGet { global_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Sub),
                    ) => *global_index == sp && *value >= 0,
                    _ => false,
                };
                if from_sp && depth == 0 && !read_before.contains(local_index) {
                    defs.push(*local_index);
                }
            }
            O::Block { .. }
            | O::Loop { .. }
            | O::If { .. }
            | O::Try { .. }
            | O::TryTable { .. } => depth += 1,
            O::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    defs.retain(|l| writes.get(l) == Some(&1));
    defs
}

impl Checks {
    /// Whether the address of the access being rewritten is provably outside every range.
    fn provably_fine(&self, store: bool, offset: u64, ranges: &[(u32, u32)]) -> bool {
        let end = ranges.iter().map(|r| r.1 as u64).max().unwrap_or(0);
        if offset >= end {
            return true;
        }
        // The instruction that produced the address: the last one for a load; for a store,
        // the one before a simple value producer.
        let producer = if store {
            match &self.f.last[1] {
                Some(
                    Instruction::LocalGet(_)
                    | Instruction::I32Const(_)
                    | Instruction::I64Const(_)
                    | Instruction::F32Const(_)
                    | Instruction::F64Const(_)
                    | Instruction::GlobalGet(_),
                ) => self.f.last[0].as_ref(),
                _ => None,
            }
        } else {
            self.f.last[1].as_ref()
        };
        match producer {
            Some(Instruction::GlobalGet(g)) => Some(*g) == self.sp,
            Some(Instruction::LocalGet(l)) => self.f.frame.contains(l),
            Some(Instruction::I32Const(c)) => {
                let at = *c as u32 as u64 + offset;
                ranges
                    .iter()
                    .all(|&(lo, hi)| at < lo as u64 || at >= hi as u64)
            }
            _ => false,
        }
    }

    fn value_local(&mut self, cx: &mut BodyCx<'_>, ty: ValType) -> u32 {
        let key = match ty {
            ValType::I32 => 0,
            ValType::I64 => 1,
            ValType::F32 => 2,
            ValType::F64 => 3,
            _ => 4,
        };
        *self.f.values.entry(key).or_insert_with(|| cx.add_local(ty))
    }
}

impl BodyRewriter for Checks {
    fn wants(&self, func: u32) -> bool {
        self.checked.binary_search(&func).is_ok()
    }

    fn prologue(&mut self, cx: &mut BodyCx<'_>, out: &mut Vec<Instruction<'static>>) {
        let frame = match self.sp {
            Some(sp) => frame_locals(cx.original, sp),
            None => Vec::new(),
        };
        self.f = PerFunction {
            address: cx.add_local(ValType::I32),
            frame,
            flags: self.flags.get(&cx.func).cloned().unwrap_or_default(),
            ..PerFunction::default()
        };
        if self.mode == OnError::Report {
            // Checks report inline and go on: no trap block.
            return;
        }
        let results = match cx.sig.results() {
            [] => BlockType::Empty,
            [t] => BlockType::Result(RoundtripReencoder.val_type(*t).expect("a value type")),
            _ => unreachable!("functions with several results are not checked"),
        };
        self.f
            .blocks
            .open(&[BlockType::Result(ValType::I32)], results, out);
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        mut ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        let remembered = instruction_to_static(&ins);
        let at = match self.mode {
            OnError::Stop => self.f.blocks.track(&mut ins),
            OnError::Report => At::Body,
        };
        match at {
            At::Outside => out.push(ins),
            At::End => {
                let mut trap = vec![
                    Instruction::LocalGet(self.f.address),
                    Instruction::I32Add,
                    Instruction::I32Const(cx.func as i32),
                ];
                let (offset, len) = self.names.get(&cx.func).copied().unwrap_or((0, 0));
                trap.extend([
                    Instruction::I32Const(offset as i32),
                    Instruction::I32Const(len as i32),
                    Instruction::Call(self.handler),
                    Instruction::Unreachable,
                ]);
                self.f.blocks.close(&[], &[trap], ins, out);
            }
            At::Body => {
                if let Some((store, offset, ty)) = access_ins(&ins) {
                    let site = self.f.sites;
                    self.f.sites += 1;
                    // Stop mode lets a zero store into the null page pass (see the header);
                    // report mode shows it.
                    let zero = self.mode == OnError::Stop && store && stores_zero(&self.f.last[1]);
                    let ranges = self.ranges.for_access(store, zero);
                    if !ranges.is_empty() && !self.provably_fine(store, offset, &ranges) {
                        let value = store.then(|| self.value_local(cx, ty));
                        if let Some(v) = value {
                            out.push(Instruction::LocalSet(v));
                        }
                        out.push(Instruction::LocalSet(self.f.address));
                        if self.mode == OnError::Report {
                            self.report_checks(cx.func, site, offset, &ranges, out);
                            out.push(Instruction::LocalGet(self.f.address));
                            if let Some(v) = value {
                                out.push(Instruction::LocalGet(v));
                            }
                            out.push(ins);
                            self.f.last = [self.f.last[1].take(), remembered];
                            return;
                        }
                        let depth = self.f.blocks.trap_depth(0);
                        for (lo, hi) in ranges {
                            // addr + offset in [lo, hi)  ⟺  addr - (lo - offset) < hi - lo,
                            // unsigned (an address that wraps past 4 GiB is out of bounds and
                            // traps either way)
                            if offset >= hi as u64 {
                                continue;
                            }
                            out.push(Instruction::I32Const(offset as i32));
                            out.push(Instruction::LocalGet(self.f.address));
                            if lo as u64 <= offset {
                                // addr + offset >= lo always: addr < hi - offset
                                out.push(Instruction::I32Const((hi as u64 - offset) as i32));
                            } else {
                                out.extend([
                                    Instruction::I32Const((lo as u64 - offset) as i32),
                                    Instruction::I32Sub,
                                    Instruction::I32Const((hi - lo) as i32),
                                ]);
                            }
                            out.extend([
                                Instruction::I32LtU,
                                Instruction::BrIf(depth),
                                Instruction::Drop,
                            ]);
                        }
                        out.push(Instruction::LocalGet(self.f.address));
                        if let Some(v) = value {
                            out.push(Instruction::LocalGet(v));
                        }
                    }
                }
                out.push(ins);
            }
        }
        self.f.last = [self.f.last[1].take(), remembered];
    }
}

/// Whether the instruction before a store, `value`, pushes a zero (any type): that store
/// cannot change the null page.
fn stores_zero(value: &Option<Instruction<'static>>) -> bool {
    match value {
        Some(Instruction::I32Const(0) | Instruction::I64Const(0)) => true,
        Some(Instruction::F32Const(x)) => x.bits() == 0,
        Some(Instruction::F64Const(x)) => x.bits() == 0,
        _ => false,
    }
}

impl Checks {
    /// Report mode: for each range, `if (address in range) { report once }`; the access
    /// follows as in the original.
    fn report_checks(
        &self,
        func: u32,
        site: u32,
        offset: u64,
        ranges: &[(u32, u32)],
        out: &mut Vec<Instruction<'_>>,
    ) {
        let (name_offset, name_len) = self.names.get(&func).copied().unwrap_or((0, 0));
        for &(lo, hi) in ranges {
            if offset >= hi as u64 {
                continue;
            }
            out.push(Instruction::LocalGet(self.f.address));
            if lo as u64 <= offset {
                out.push(Instruction::I32Const((hi as u64 - offset) as i32));
            } else {
                out.extend([
                    Instruction::I32Const((lo as u64 - offset) as i32),
                    Instruction::I32Sub,
                    Instruction::I32Const((hi - lo) as i32),
                ]);
            }
            out.extend([Instruction::I32LtU, Instruction::If(BlockType::Empty)]);
            let report = vec![
                Instruction::LocalGet(self.f.address),
                Instruction::I32Const(offset as i32),
                Instruction::I32Add,
                Instruction::I32Const(func as i32),
                Instruction::I32Const(name_offset as i32),
                Instruction::I32Const(name_len as i32),
                Instruction::Call(self.handler),
            ];
            match self.f.flags.get(site) {
                Some(flag) => out.extend(flag.guard(report)),
                None => out.extend(report),
            }
            out.push(Instruction::End);
        }
    }
}

/// The instructions `provably_fine` looks back at, kept beyond the current one.
fn instruction_to_static(ins: &Instruction<'_>) -> Option<Instruction<'static>> {
    Some(match ins {
        Instruction::LocalGet(l) => Instruction::LocalGet(*l),
        Instruction::GlobalGet(g) => Instruction::GlobalGet(*g),
        Instruction::I32Const(c) => Instruction::I32Const(*c),
        Instruction::I64Const(c) => Instruction::I64Const(*c),
        Instruction::F32Const(c) => Instruction::F32Const(*c),
        Instruction::F64Const(c) => Instruction::F64Const(*c),
        _ => return None,
    })
}
