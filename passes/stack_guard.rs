//! stack-guard — a stack overflow stops the program instead of overwriting data.
//!
//! Modules linked without `--stack-first` put the stack above the data, growing down toward
//! it: a deep recursion or one big frame silently overwrites globals and the heap. This pass
//! checks every write of the stack pointer (`global.set $sp`: function prologues, epilogues,
//! `alloca`, variable-length arrays) against the stack region `[low, high)` from the module
//! facts, right after the write and before anything can store below the new pointer. Out of
//! range (below `low`, or above `high`, which also catches a subtraction that wrapped around
//! zero) it calls one handler that prints
//! `wasmfix: stack overflow in <function> (frame N bytes, stack [low, high))` to stderr when
//! the module imports WASI `fd_write`, then traps. No import or export is added and the host
//! does nothing: the limits are constants from the module's own layout.
//!
//! Inserted at each checked write: `local.tee $new` before it (a local of the pass, unless the
//! value written was just teed to a local, as prologues do), then `local.get $new; [i32.const
//! low; i32.sub;] i32.const size; i32.gt_u; br_if $trap` after it
//! (`size` is `high - low`). The value checked is the value written, read from the local
//! rather than from the global: V8 loads a global from memory on every `global.get`. For the
//! same reason the size is a constant, not an immutable global (2 bytes per use instead of up
//! to 5): on Pyodide (6,451 guarded functions) the global cost `--passes stack` 1.019x of its
//! eval time and the constant 1.014x (CPU; wall 1.021x and 1.009x; paired, load 4–5, ±1.4–2.1%),
//! for 4 KB (+0.04%); without the compare and branch at all it measured 1.00x, so the check
//! itself is the rest (docs/benchmarks.md#stack). A
//! function with two or more checked writes gets one trap block: its body is wrapped as
//! `block $trap (block (result R) <body>) return end <trap code>`, so branches to the
//! function's own label land on the inner block and return as before. A function with one
//! checked write (or several results) puts the trap code in an `if` after it instead. The trap
//! code passes the function and its frame to the handler: the entry stack pointer minus the
//! current one when a local holds the entry pointer at every checked write, else the constant
//! of the only prologue-shaped write, else unknown.
//! Checking after the write is as strong as before it: a `global.set` touches no memory, and
//! neither the check nor the handler (which builds its message at a fixed address) uses the
//! stack pointer.
//!
//! Executions that never move the stack pointer outside its region run the same instructions
//! as before plus a comparison that is false, so their results are unchanged. A write that
//! leaves the region is exactly the overflow (or corruption) this pass exists to stop. The
//! only writes left unchecked are epilogues that provably write back the stack pointer the
//! function was entered with (see `analyse` for the argument). Leaf functions without
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
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Instruction};

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
    // The frame: `local 1` holds it, or -1 when the function's entry pointer is not known.
    let known = Message::new()
        .text(m, edits, " (frame ")
        .number(m, edits, vec![Instruction::LocalGet(1)])
        .text(m, edits, " bytes")
        .instructions;
    let unknown = Message::new()
        .text(m, edits, " (frame size unknown")
        .instructions;
    body.extend([
        Instruction::LocalGet(1),
        Instruction::I32Const(-1),
        Instruction::I32Ne,
        Instruction::If(BlockType::Empty),
    ]);
    body.extend(known);
    body.push(Instruction::Else);
    body.extend(unknown);
    body.push(Instruction::End);
    body.extend(
        Message::new()
            .text(m, edits, &format!(", stack [{low}, {high}))\n"))
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
        size: (high - low) as i32,
        handler,
        handler_unnamed,
        names,
        writers: writers.clone(),
        plan: Plan::default(),
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
    /// `high - low`.
    size: i32,
    handler: u32,
    handler_unnamed: u32,
    names: HashMap<u32, (u32, u32)>,
    /// Functions that write the stack pointer, ascending.
    writers: Vec<u32>,
    /// How the function being rewritten is guarded.
    plan: Plan,
}

/// How the checks of the function being rewritten reach the handler.
#[derive(Default)]
struct Plan {
    /// Input offsets of the writes left unchecked: entry restores (see `analyse`).
    restores: Vec<u64>,
    /// Input offsets of the prologue-shaped writes of frames no larger than `low`: the new
    /// pointer can only fall below `low`, never wrap around (see `instruction`).
    small_prologues: Vec<u64>,
    /// The checks branch to one trap block at the end of the function (two or more checked
    /// writes, at most one result) instead of each carrying its own `if`.
    trap_block: bool,
    /// Constructs opened and not yet closed in the instructions this rewriter has seen.
    nest: u32,
    /// Instructions leaving the frame size (or -1) for the handler.
    frame: Vec<Instruction<'static>>,
    /// A local of ours that holds the value of the checked write (added on first use).
    written: Option<u32>,
    /// The local the previous instruction was a `local.tee` of.
    previous_tee: Option<u32>,
}

/// What the guard learns from one function's input body before rewriting it.
#[derive(Debug, Default, PartialEq)]
struct Analysis {
    /// Input offsets of the `global.set sp` that write back the entry stack pointer.
    restores: Vec<u64>,
    /// Number of the other writes, the checked ones.
    checked: usize,
    /// Input offsets and frame sizes of the checked writes of the prologue shape
    /// (`global.get sp; i32.const n; i32.sub; [local.tee x;] global.set sp`).
    prologues: Vec<(u64, i32)>,
    /// How the handler reports the frame, whichever checked write fails.
    frame: Frame,
}

#[derive(Debug, Default, PartialEq)]
enum Frame {
    /// A local holds, at every checked write, the entry stack pointer minus a constant (`None`:
    /// the entry pointer itself): the frame is the entry pointer minus the new one.
    Entry(u32, Option<i32>),
    /// One checked write allocates a constant frame (`global.get sp; i32.const n; i32.sub`);
    /// the others have the shape of restores, which free it.
    Constant(i32),
    #[default]
    Unknown,
}

/// Finds the writes of `sp` that restore the entry stack pointer, either as `local.get y` where
/// `y` was set from `global.get sp`, or as `local.get x; i32.const n; i32.add` where `x` was set
/// from `global.get sp; i32.const n; i32.sub` (the usual prologue and epilogue), and a local
/// from which the frame can be reported.
///
/// Why leaving the restores unchecked is sound: `x` (or `y`) is written exactly once in the
/// function, and that write dominates the restore. In structured control flow a write
/// dominates a later instruction when the write's chain of enclosing constructs is a prefix of
/// the later one's (an `else` or `catch` starts a new construct): control cannot enter the
/// later position's constructs without passing the write, because branches only leave
/// constructs or restart loops. So the value written back is the entry stack pointer, which
/// the caller wrote through a checked write or a restore like this one: by induction over the
/// writes it lies in the region. Rewriters never write original locals (they add their own), so
/// the input body is the truth.
fn analyse(ops: &[(wasmparser::Operator<'_>, u64)], sp: u32) -> Analysis {
    use wasmparser::Operator as O;
    let mut writes: HashMap<u32, u32> = HashMap::new();
    // local → (frame size or None for the entry pointer itself, path, offset of the write)
    let mut defs: HashMap<u32, (Option<i32>, Vec<u32>, u64)> = HashMap::new();
    // every write of sp: (offset, path, restored local and frame, if it has the restore shape,
    // allocated constant frame, if it has the prologue shape)
    type Restore = Option<(u32, Option<i32>)>;
    let mut sets: Vec<(u64, Vec<u32>, Restore, Option<i32>)> = Vec::new();

    let mut path: Vec<u32> = Vec::new();
    let mut next_id = 0u32;
    let mut window: [Option<&O<'_>>; 4] = [None; 4];
    for (op, offset) in ops {
        let offset = *offset;
        match op {
            O::LocalSet { local_index } | O::LocalTee { local_index } => {
                *writes.entry(*local_index).or_default() += 1;
                match (&window[1], &window[2], &window[3]) {
                    (_, _, Some(O::GlobalGet { global_index })) if *global_index == sp => {
                        defs.insert(*local_index, (None, path.clone(), offset));
                    }
                    (
                        Some(O::GlobalGet { global_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Sub),
                    ) if *global_index == sp => {
                        defs.insert(*local_index, (Some(*value), path.clone(), offset));
                    }
                    _ => {}
                }
            }
            O::GlobalSet { global_index } if *global_index == sp => {
                let restore = match (&window[1], &window[2], &window[3]) {
                    (
                        Some(O::LocalGet { local_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Add),
                    ) => Some((*local_index, Some(*value))),
                    (_, _, Some(O::LocalGet { local_index })) => Some((*local_index, None)),
                    _ => None,
                };
                let prologue = match window {
                    [
                        _,
                        Some(O::GlobalGet { global_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Sub),
                    ]
                    | [
                        Some(O::GlobalGet { global_index }),
                        Some(O::I32Const { value }),
                        Some(O::I32Sub),
                        Some(O::LocalTee { .. }),
                    ] if *global_index == sp => Some(*value),
                    _ => None,
                };
                sets.push((offset, path.clone(), restore, prologue));
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
        window = [window[1], window[2], window[3], Some(op)];
    }
    // A def of `local` that holds at the instruction at (`offset`, `path`).
    let holds = |local: u32, frame: Option<i32>, offset: u64, path: &[u32]| {
        writes.get(&local) == Some(&1)
            && defs
                .get(&local)
                .is_some_and(|(def_frame, def_path, def_offset)| {
                    *def_frame == frame && *def_offset < offset && path.starts_with(def_path)
                })
    };
    let mut analysis = Analysis::default();
    let mut checked = Vec::new();
    for (offset, set_path, restore, prologue) in &sets {
        match restore {
            Some((local, frame)) if holds(*local, *frame, *offset, set_path) => {
                analysis.restores.push(*offset)
            }
            _ => checked.push((*offset, set_path, restore.is_some(), *prologue)),
        }
    }
    analysis.checked = checked.len();
    analysis.prologues = checked
        .iter()
        .filter_map(|&(offset, _, _, n)| Some((offset, n?)))
        .collect();
    let mut candidates: Vec<_> = defs.iter().collect();
    candidates.sort_by_key(|(_, (_, _, offset))| *offset);
    let entry = candidates.into_iter().find(|(local, (frame, ..))| {
        checked
            .iter()
            .all(|(offset, set_path, ..)| holds(**local, *frame, *offset, set_path))
    });
    let prologues: Vec<i32> = checked.iter().filter_map(|c| c.3).collect();
    analysis.frame = match (entry, prologues.as_slice()) {
        (Some((local, (frame, ..))), _) => Frame::Entry(*local, *frame),
        (None, [n]) if checked.iter().all(|c| c.2 || c.3.is_some()) => Frame::Constant(*n),
        _ => Frame::Unknown,
    };
    analysis
}

impl Guard {
    /// The trap code: report this function's overflow and trap.
    fn trap<'i>(&self, func: u32, out: &mut Vec<Instruction<'i>>) {
        out.push(Instruction::I32Const(func as i32));
        out.extend(self.plan.frame.iter().cloned());
        match self.names.get(&func) {
            Some(&(offset, len)) => out.extend([
                Instruction::I32Const(offset as i32),
                Instruction::I32Const(len as i32),
                Instruction::Call(self.handler),
            ]),
            None => out.push(Instruction::Call(self.handler_unnamed)),
        }
        // The handler never returns; saying so lets the engine keep nothing alive across the
        // call (measured on the Ruby workload: 1.043x without, 1.001x with).
        out.push(Instruction::Unreachable);
    }
}

impl BodyRewriter for Guard {
    fn wants(&self, func: u32) -> bool {
        self.writers.binary_search(&func).is_ok()
    }

    fn prologue(&mut self, cx: &mut BodyCx<'_>, out: &mut Vec<Instruction<'static>>) {
        let analysis = analyse(cx.original, self.sp);
        let frame = match analysis.frame {
            Frame::Entry(local, frame) => {
                let mut ins = vec![Instruction::LocalGet(local)];
                if let Some(n) = frame {
                    ins.extend([Instruction::I32Const(n), Instruction::I32Add]);
                }
                ins.extend([Instruction::GlobalGet(self.sp), Instruction::I32Sub]);
                ins
            }
            Frame::Constant(n) => vec![Instruction::I32Const(n)],
            Frame::Unknown => vec![Instruction::I32Const(-1)],
        };
        let results = match cx.sig.results() {
            [] => Some(BlockType::Empty),
            [t] => RoundtripReencoder.val_type(*t).ok().map(BlockType::Result),
            _ => None,
        };
        let trap_block = analysis.checked >= 2 && results.is_some();
        if let (true, Some(results)) = (trap_block, results) {
            out.extend([
                Instruction::Block(BlockType::Empty),
                Instruction::Block(results),
            ]);
        }
        let low = self.low;
        self.plan = Plan {
            small_prologues: (analysis.prologues.iter())
                .filter(|&&(_, n)| n >= 0 && n as u32 <= low && low != 0)
                .map(|&(offset, _)| offset)
                .collect(),
            restores: analysis.restores,
            trap_block,
            nest: 0,
            frame,
            written: None,
            previous_tee: None,
        };
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        let tee = std::mem::replace(
            &mut self.plan.previous_tee,
            match ins {
                Instruction::LocalTee(x) => Some(x),
                _ => None,
            },
        );
        match ins {
            Instruction::Block(_)
            | Instruction::Loop(_)
            | Instruction::If(_)
            | Instruction::Try(_)
            | Instruction::TryTable(..) => self.plan.nest += 1,
            Instruction::End | Instruction::Delegate(_) if self.plan.nest > 0 => {
                self.plan.nest -= 1
            }
            // The end of the function: close the result and trap blocks, then the trap code.
            Instruction::End if self.plan.trap_block => {
                out.extend([Instruction::End, Instruction::Return, Instruction::End]);
                self.trap(cx.func, out);
            }
            Instruction::GlobalSet(g) if g == self.sp => {}
            _ => return out.push(ins),
        }
        let is_write = matches!(ins, Instruction::GlobalSet(g) if g == self.sp);
        if !is_write {
            return out.push(ins);
        }
        // Restoring the entry stack pointer (see `analyse`): in the region already.
        if let Some(k) = self.plan.restores.iter().position(|&o| o == cx.offset) {
            self.plan.restores.swap_remove(k);
            return out.push(ins);
        }
        // The value written is checked from a local, without reading the global back: the
        // local the instruction before the write tees it to (the usual prologue), else one of
        // ours.
        let written = match tee {
            Some(x) => {
                out.push(ins);
                x
            }
            None => {
                let written = *self
                    .plan
                    .written
                    .get_or_insert_with(|| cx.add_local(wasm_encoder::ValType::I32));
                out.extend([Instruction::LocalTee(written), ins]);
                written
            }
        };
        // After the write, before anything can store below it: the new pointer, minus `low`,
        // must not exceed `high - low` (unsigned, so a pointer below `low` fails too). A
        // prologue `sp - n` with `0 <= n <= low` only needs `sp >= low`: the old pointer was
        // in `[low, high]` (every write is checked or restores an entry pointer), so the new
        // one lies in `[low - n, high]`, which neither wraps nor exceeds `high`. That is the
        // common case and saves a subtraction and a load.
        out.push(Instruction::LocalGet(written));
        if self.plan.small_prologues.contains(&cx.offset) {
            out.extend([Instruction::I32Const(self.low as i32), Instruction::I32LtU]);
        } else {
            if self.low != 0 {
                out.extend([Instruction::I32Const(self.low as i32), Instruction::I32Sub]);
            }
            out.extend([Instruction::I32Const(self.size), Instruction::I32GtU]);
        }
        if self.plan.trap_block {
            // Inside the `nest` open constructs: the result block, then the trap block.
            out.push(Instruction::BrIf(self.plan.nest + 1));
        } else {
            out.push(Instruction::If(BlockType::Empty));
            self.trap(cx.func, out);
            out.push(Instruction::End);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Analysis, Frame, analyse};

    /// `analyse` on a function with `params` (and locals) and `body` in text form; `$sp` is
    /// global 0.
    fn analysis(params: &str, body: &str) -> Analysis {
        let wasm = wat::parse_str(format!(
            "(module (global $sp (mut i32) (i32.const 1024)) (memory 1) (func $memset (param i32) (result i32) local.get 0) (func {params} {body}))"
        ))
        .unwrap();
        let mut bodies =
            wasmparser::Parser::new(0)
                .parse_all(&wasm)
                .filter_map(|p| match p.unwrap() {
                    wasmparser::Payload::CodeSectionEntry(b) => Some(b),
                    _ => None,
                });
        let body = bodies.nth(1).unwrap();
        let mut reader = body.get_operators_reader().unwrap();
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read_with_offset().unwrap());
        }
        analyse(&ops, 0)
    }

    #[test]
    fn the_usual_epilogue_is_a_restore_and_the_frame_comes_from_its_local() {
        let a = analysis(
            "(local $x i32)",
            "global.get $sp i32.const 32 i32.sub local.tee $x global.set $sp
             local.get $x i32.const 32 i32.add global.set $sp",
        );
        assert_eq!(a.restores.len(), 1);
        assert_eq!(a.checked, 1);
        assert_eq!(a.frame, Frame::Entry(0, Some(32)));
    }

    #[test]
    fn a_rewritten_frame_local_proves_nothing_but_the_prologue_constant_is_reported() {
        // clang reuses the frame local for memset's result: written twice, no proof.
        let a = analysis(
            "(local $x i32)",
            "global.get $sp i32.const 80 i32.sub local.tee $x global.set $sp
             local.get $x call $memset local.set $x
             local.get $x i32.const 80 i32.add global.set $sp",
        );
        assert!(a.restores.is_empty());
        assert_eq!(a.checked, 2);
        assert_eq!(a.frame, Frame::Constant(80));
    }

    #[test]
    fn a_restore_not_dominated_by_its_definition_is_checked() {
        // The entry pointer is saved inside an `if`: the restore after it may read a zero.
        let a = analysis(
            "(param $c i32) (local $y i32)",
            "local.get $c if global.get $sp local.set $y end
             global.get $sp i32.const 16 i32.sub global.set $sp
             local.get $y global.set $sp",
        );
        assert!(a.restores.is_empty());
        assert_eq!(a.checked, 2);
        assert_eq!(a.frame, Frame::Constant(16));
    }

    #[test]
    fn variable_length_arrays_report_the_frame_from_the_entry_pointer() {
        // -O0 shape: the entry pointer saved, a fixed frame, then a dynamic allocation.
        let a = analysis(
            "(param $n i32) (local $e i32) (local $f i32)",
            "global.get $sp local.set $e
             local.get $e i32.const 16 i32.sub local.tee $f global.set $sp
             global.get $sp local.get $n i32.sub global.set $sp
             local.get $e global.set $sp",
        );
        assert_eq!(a.restores.len(), 1);
        assert_eq!(a.checked, 2);
        assert_eq!(a.frame, Frame::Entry(1, None));
    }

    #[test]
    fn two_dynamic_allocations_without_an_entry_local_report_no_frame() {
        let a = analysis(
            "(param $n i32)",
            "global.get $sp local.get $n i32.sub global.set $sp
             global.get $sp local.get $n i32.sub global.set $sp",
        );
        assert!(a.restores.is_empty());
        assert_eq!(a.checked, 2);
        assert_eq!(a.frame, Frame::Unknown);
    }
}
