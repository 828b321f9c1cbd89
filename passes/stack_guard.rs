//! stack-guard — a stack overflow stops the program instead of overwriting data.
//!
//! Modules linked without `--stack-first` put the stack above the data, growing down toward
//! it: a deep recursion or one big frame silently overwrites globals and the heap. This pass
//! checks every write of the stack pointer (`global.set $sp`: function prologues, epilogues,
//! `alloca`, variable-length arrays) against the stack region `[low, high)` from the module
//! facts, before the write. Out of range (below `low`, or above `high`, which also catches a
//! subtraction that wrapped around zero) it calls one handler that prints
//! `wasmfix: stack overflow in <function> (frame N bytes, stack [low, high))` to stderr when
//! the module imports WASI `fd_write`, then traps. No import or export is added and the host
//! does nothing: the limits are constants from the module's own layout.
//!
//! Inserted per write, before the original `global.set`: `local.tee t; [i32.const low;
//! i32.sub;] global.get size; i32.gt_u; if (call handler) end; local.get t` (the subtraction
//! is left out when `low` is 0; `size` is an immutable global holding `high - low`, which
//! encodes shorter than the constant).
//! Executions that never move the stack pointer outside its region run the same instructions
//! as before plus a comparison that is false, so their results are unchanged. A write that
//! leaves the region is exactly the overflow (or corruption) this pass exists to stop. The
//! only writes left unchecked are epilogues that provably write back the stack pointer the
//! function was entered with (see `entry_restores` for the argument). Leaf functions without
//! a frame never write the pointer, so a red zone would save nothing more.
//!
//! Refuses: a module whose stack pointer or stack region cannot be established (no name, no
//! export and no prologue idiom, or an imported pointer: dynamic linking), a 64-bit stack
//! pointer, and shared memory (threads keep their stacks in the heap, outside the region).
//!
//! The `stack` pass is what the default pipeline runs: when the stack lies above the data it
//! moves the stack below the data if the module kept trustworthy relocations (`stack-first`),
//! and guards it otherwise; a module already stack-first is left alone (an overflow then runs
//! below address 0 and traps on its own).

use super::{Pass, PassCx, PassReport};
use crate::diag::{Message, store_text};
use crate::edit::{BodyCx, BodyRewriter};
use crate::facts::StackLayout;
use anyhow::{Result, bail};
use std::collections::HashMap;
use wasm_encoder::{BlockType, Instruction, ValType};

/// `stack-guard`: check every stack-pointer write, whatever the layout.
pub struct StackGuard;

/// `stack`: guard when the stack lies above the data; nothing to do when it comes first.
pub struct Stack;

impl Pass for StackGuard {
    fn name(&self) -> &'static str {
        "stack-guard"
    }

    fn description(&self) -> &'static str {
        "check every stack-pointer write against the stack region, whatever the layout"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        guard(cx, self.name())
    }
}

impl Pass for Stack {
    fn name(&self) -> &'static str {
        "stack"
    }

    fn description(&self) -> &'static str {
        "stop stack overflows before they corrupt data (guards stacks placed after the data)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let facts = cx.facts();
        let nothing = |summary: String| PassReport {
            pass: "stack",
            summary,
            warnings: Vec::new(),
            details: serde_json::json!({ "guarded_functions": 0 }),
        };
        if cx.module.memories.is_empty() {
            return Ok(nothing("no memory: no stack to guard".into()));
        }
        if let Some(done) = facts.applied.get("stack") {
            return Ok(nothing(format!(
                "already applied by an earlier wasmfix run ({done})"
            )));
        }
        match (&facts.stack_pointer, &facts.stack) {
            (Err(_), _) if !facts.code(cx.module).prologue_globals.is_empty() => guard(cx, "stack"),
            (Err(why), _) => Ok(nothing(format!(
                "no stack pointer found ({why}): nothing to guard"
            ))),
            (Ok(_), Ok(region)) if region.layout == StackLayout::StackFirst => {
                Ok(nothing(format!(
                    "stack is already placed before the data ([{}, {})): an overflow traps without help",
                    region.low, region.high
                )))
            }
            _ => match super::stack_first::cannot_relocate(cx) {
                None => super::stack_first::relocate(cx, "stack"),
                Some(why) => {
                    let mut report = guard(cx, "stack")?;
                    report.summary = format!("{} (not relocated: {why})", report.summary);
                    Ok(report)
                }
            },
        }
    }
}

fn guard(cx: &mut PassCx<'_, '_, '_>, pass: &'static str) -> Result<PassReport> {
    let m = cx.module;
    let facts = cx.facts();
    let sp = match &facts.stack_pointer {
        Ok(sp) => sp,
        Err(why) => bail!(
            "cannot establish the stack pointer: {why}; keep the name section (do not strip \
             `name`) or export `__stack_pointer`"
        ),
    };
    let region = match &facts.stack {
        Ok(r) => r,
        Err(why) => bail!("cannot establish the stack region: {why}"),
    };
    if m.global_types
        .get(sp.value as usize)
        .map(|g| g.content_type)
        != Some(wasmparser::ValType::I32)
    {
        bail!(
            "the stack pointer (global {}) is not a 32-bit global: memory64 stacks are not supported",
            sp.value
        );
    }
    if m.memories.first().is_some_and(|mem| mem.shared) {
        bail!(
            "memory is shared (threads): each thread's stack lives in the heap, outside the \
             stack region [{}, {}), so a guard would stop correct programs",
            region.low,
            region.high
        );
    }
    let (low, high) = (region.low, region.high);
    let writers: Vec<u32> = facts
        .code(m)
        .global_writers
        .get(&sp.value)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|&f| f >= m.imported_funcs)
        .collect();

    // The handler: handler(function, new_sp, name_offset, name_len); functions without a name
    // call `handler_unnamed(function, new_sp)`, which passes an empty name.
    let edits = &mut *cx.edits;
    let mut body: Vec<Instruction<'static>> = Message::new()
        .text(m, edits, "wasmfix: stack overflow in ")
        .instructions;
    let named = Message::new()
        .stored_text(
            m,
            edits,
            vec![Instruction::LocalGet(2)],
            vec![Instruction::LocalGet(3)],
        )
        .instructions;
    let unnamed = Message::new()
        .text(m, edits, "function ")
        .number(m, edits, vec![Instruction::LocalGet(0)])
        .instructions;
    body.extend([Instruction::LocalGet(3), Instruction::If(BlockType::Empty)]);
    body.extend(named);
    body.push(Instruction::Else);
    body.extend(unnamed);
    body.push(Instruction::End);
    let frame = vec![
        Instruction::GlobalGet(sp.value),
        Instruction::LocalGet(1),
        Instruction::I32Sub,
    ];
    body.extend(
        Message::new()
            .text(m, edits, " (frame ")
            .number(m, edits, frame)
            .text(m, edits, &format!(" bytes, stack [{low}, {high}))\n"))
            .trap(m, edits),
    );
    body.push(Instruction::End);
    let i32t = wasmparser::ValType::I32;
    let handler = edits.add_helper(m, "wasmfix:stack_overflow", (&[i32t; 4], &[]), &[], &body);
    let handler_unnamed = edits.add_helper(
        m,
        "wasmfix:stack_overflow_unnamed",
        (&[i32t; 2], &[]),
        &[],
        &[
            Instruction::LocalGet(0),
            Instruction::LocalGet(1),
            Instruction::I32Const(0),
            Instruction::I32Const(0),
            Instruction::Call(handler),
            Instruction::End,
        ],
    );
    let size_global = edits.add_i32_global(m, false, (high - low) as i32);

    // Names of the guarded functions, stored once each for the handler to print.
    let mut names = HashMap::new();
    for &f in &writers {
        if let Some(name) = facts.function_names.get(&f)
            && let Some(stored) = store_text(m, edits, name)
        {
            names.insert(f, stored);
        }
    }
    edits.record_applied("stack", serde_json::json!({ "guarded": [low, high] }));
    edits.add_rewriter(Box::new(Guard {
        sp: sp.value,
        low: low as u32,
        size_global,
        handler,
        handler_unnamed,
        names,
        writers: writers.clone(),
        tmp: None,
        restores: Vec::new(),
    }));
    Ok(PassReport {
        pass,
        summary: format!(
            "checks every stack-pointer write in {} functions against the stack [{low}, {high})",
            writers.len()
        ),
        warnings: Vec::new(),
        details: serde_json::json!({
            "stack_pointer": sp.value,
            "stack_pointer_found_by": sp.how,
            "stack": [low, high],
            "stack_found_by": region.how,
            "guarded_functions": writers.len(),
        }),
    })
}

struct Guard {
    sp: u32,
    low: u32,
    /// An immutable global holding `high - low` (2 bytes per use instead of up to 5).
    size_global: u32,
    handler: u32,
    handler_unnamed: u32,
    names: HashMap<u32, (u32, u32)>,
    /// Functions that write the stack pointer, ascending.
    writers: Vec<u32>,
    /// The scratch local of the function being rewritten.
    tmp: Option<u32>,
    /// Input offsets of the writes that provably restore the entry stack pointer.
    restores: Vec<u64>,
}

/// Input offsets of the `global.set sp` that write back the stack pointer the function was
/// entered with, either as `local.get y` where `y` was set from `global.get sp`, or as
/// `local.get x; i32.const n; i32.add` where `x` was set from `global.get sp; i32.const n;
/// i32.sub` (the usual prologue and epilogue).
///
/// Why that is sound: `x` (or `y`) is written exactly once in the function, and that write
/// dominates the restore. In structured control flow a write dominates a later instruction
/// when the write's chain of enclosing constructs is a prefix of the later one's (an `else` or
/// `catch` starts a new construct): control cannot enter the later position's constructs
/// without passing the write, because branches only leave constructs or restart loops. So the
/// value written back is the entry stack pointer, which the caller wrote through a checked
/// write or a restore like this one: by induction over the writes it lies in the region.
/// Rewriters never write original locals (they add their own), so the input body is the truth.
fn entry_restores(ops: &[(wasmparser::Operator<'_>, u64)], sp: u32) -> Vec<u64> {
    use wasmparser::Operator as O;
    let mut writes: HashMap<u32, u32> = HashMap::new();
    // local → (frame size or None for the entry pointer itself, path, order of the write)
    let mut defs: HashMap<u32, (Option<i32>, Vec<u32>)> = HashMap::new();
    let mut uses: Vec<(u64, u32, Option<i32>, Vec<u32>)> = Vec::new();

    let mut path: Vec<u32> = Vec::new();
    let mut next_id = 0u32;
    let mut window: [Option<&O<'_>>; 3] = [None, None, None];
    for (op, offset) in ops {
        let offset = *offset;
        match op {
            O::LocalSet { local_index } | O::LocalTee { local_index } => {
                *writes.entry(*local_index).or_default() += 1;
                match (&window[0], &window[1], &window[2]) {
                    (_, _, Some(O::GlobalGet { global_index })) if *global_index == sp => {
                        defs.insert(*local_index, (None, path.clone()));
                    }
                    (
                        Some(O::GlobalGet { global_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Sub),
                    ) if *global_index == sp => {
                        defs.insert(*local_index, (Some(*value), path.clone()));
                    }
                    _ => {}
                }
            }
            O::GlobalSet { global_index } if *global_index == sp => {
                match (&window[0], &window[1], &window[2]) {
                    (
                        Some(O::LocalGet { local_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Add),
                    ) => uses.push((offset, *local_index, Some(*value), path.clone())),
                    (_, _, Some(O::LocalGet { local_index })) => {
                        uses.push((offset, *local_index, None, path.clone()))
                    }
                    _ => {}
                }
            }
            O::Block { .. }
            | O::Loop { .. }
            | O::If { .. }
            | O::Try { .. }
            | O::TryTable { .. } => {
                path.push(next_id);
                next_id += 1;
            }
            O::Else | O::Catch { .. } | O::CatchAll => {
                path.pop();
                path.push(next_id);
                next_id += 1;
            }
            O::End | O::Delegate { .. } => {
                path.pop();
            }
            _ => {}
        }
        window = [window[1], window[2], Some(op)];
    }
    uses.into_iter()
        .filter(|(_, local, frame, use_path)| {
            writes.get(local) == Some(&1)
                && defs.get(local).is_some_and(|(def_frame, def_path)| {
                    def_frame == frame && use_path.starts_with(def_path)
                })
        })
        .map(|(offset, ..)| offset)
        .collect()
}

impl BodyRewriter for Guard {
    fn wants(&self, func: u32) -> bool {
        self.writers.binary_search(&func).is_ok()
    }

    fn prologue(&mut self, cx: &mut BodyCx<'_>, _out: &mut Vec<Instruction<'static>>) {
        self.tmp = None;
        self.restores = entry_restores(cx.original, self.sp);
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        if !matches!(ins, Instruction::GlobalSet(g) if g == self.sp) {
            return out.push(ins);
        }
        // Restoring the entry stack pointer (see `entry_restores`): in the region already.
        if let Some(k) = self.restores.iter().position(|&o| o == cx.offset) {
            self.restores.swap_remove(k);
            return out.push(ins);
        }
        let t = *self.tmp.get_or_insert_with(|| cx.add_local(ValType::I32));
        out.push(Instruction::LocalTee(t));
        if self.low != 0 {
            out.extend([Instruction::I32Const(self.low as i32), Instruction::I32Sub]);
        }
        out.extend([
            Instruction::GlobalGet(self.size_global),
            Instruction::I32GtU,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(cx.func as i32),
            Instruction::LocalGet(t),
        ]);
        match self.names.get(&cx.func) {
            Some(&(offset, len)) => out.extend([
                Instruction::I32Const(offset as i32),
                Instruction::I32Const(len as i32),
                Instruction::Call(self.handler),
            ]),
            None => out.push(Instruction::Call(self.handler_unnamed)),
        }
        // The handler never returns; saying so lets the engine keep nothing alive across the
        // call (measured on the Ruby workload: 1.043x without, 1.001x with).
        out.extend([
            Instruction::Unreachable,
            Instruction::End,
            Instruction::LocalGet(t),
            ins,
        ]);
    }
}
