//! stack-canary — a stack buffer overflow stops the program when the function it happened in
//! returns, instead of silently rewriting the caller's frame.
//!
//! wasm has no return address in linear memory, but C keeps its arrays on the shadow stack
//! (`__stack_pointer`), so a `strcpy` past a local buffer rewrites whatever lies above it: the
//! caller's locals ("ACCESS GRANTED" after a long user name). This pass pushes a separate 16-byte
//! slot right above the frame of every function that allocates one, writes a canary word at its
//! bottom on entry and checks it at every exit:
//!
//! ```text
//! entry:  global.get sp; i32.const 16; i32.sub; local.tee $s; global.get $canary; i32.store
//!         local.get $s; global.set sp                 ;; the function's own prologue follows
//! exit:   local.get $s; i32.load; global.get $canary; i32.ne; br_if $trap
//!         local.get $s; i32.const 16; i32.add; global.set sp
//! ```
//!
//! The exits are the end of the body (and every branch to the function's label, which the trap
//! blocks of `trap_blocks.rs` route through it), `return`, `return_call`,
//! `return_call_indirect` and `return_call_ref`. The check consumes only what it pushes, so the
//! values being returned stay untouched. A mismatch prints
//! `wasmfix: stack buffer overflow in <function>` (when the module imports WASI `fd_write`) and
//! traps. The canary is a mutable global initialized with a per-build value (a hash of the
//! input module, without zero bytes); when the module imports WASI `random_get`, the `_start` /
//! `_initialize` exports are pointed at a wrapper that, once, xors four random bytes into it
//! (read through address 0, whose bytes it restores) before calling the original.
//!
//! Which functions: those whose body opens, before any branch, with a constant-frame prologue
//! (`global.get sp … i32.const N … i32.sub … global.set sp`, N > 0, the -O0 form through locals
//! included). clang emits that shape only for C functions, which restore the stack pointer to
//! its entry value at every exit (it is callee-saved), so setting it to `$s + 16` — the entry
//! value — at each exit changes nothing for a correct program. Runtime helpers that move the
//! stack pointer on purpose (`stackAlloc`, `stackRestore`, setjmp machinery) do not open that
//! way and are left alone. Skipped, and counted in the report: functions with several results,
//! functions using exception handling or GC branches, and functions instrumented by binaryen's
//! Asyncify (they read the state global that `asyncify_get_state` returns): on a rewind
//! Asyncify re-enters them without running their prologue again and restores only its own
//! locals, so `$s` would be wrong.
//!
//! Executions without an overflow run the same instructions plus a store and, per exit, a load
//! and a comparison that is false; the stack holds 16 more bytes per frame.
//!
//! Refuses: memory64, shared memory (threads: the canary seeding runs per instance but the
//! stacks live in the heap), several memories, a stack pointer that cannot be established while
//! functions do write a prologue-shaped global.

use super::trap_blocks::{At, TrapBlocks};
use super::{Pass, PassCx, PassReport};
use crate::diag::{Message, store_text};
use crate::edit::{BodyCx, BodyRewriter};
use crate::module::Module;
use anyhow::{Result, bail};
use std::collections::HashMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Instruction, ValType};
use wasmparser::Operator as O;

pub struct StackCanary;

/// Size of the slot pushed above each protected frame (keeps the 16-byte stack alignment).
const SLOT: i32 = 16;

impl Pass for StackCanary {
    fn name(&self) -> &'static str {
        "stack-canary"
    }

    fn description(&self) -> &'static str {
        "a canary above each stack frame, checked at every exit (--harden)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let m = cx.module;
        let facts = cx.facts();
        let nothing = |summary: String| PassReport {
            pass: "stack-canary",
            summary,
            warnings: Vec::new(),
            details: serde_json::json!({ "protected_functions": 0 }),
        };
        if let Some(done) = facts.applied.get("stack-canary") {
            return Ok(nothing(format!(
                "already applied by an earlier wasmfix run ({done})"
            )));
        }
        if m.memories.is_empty() {
            return Ok(nothing("no memory: no stack to protect".into()));
        }
        super::refuse_unusual_memory(m)?;
        let sp = match &facts.stack_pointer {
            Ok(sp) => sp.value,
            Err(_) if facts.code(m).prologue_globals.is_empty() => {
                return Ok(nothing(
                    "no function allocates a stack frame: nothing to protect".into(),
                ));
            }
            Err(why) => bail!(
                "cannot establish the stack pointer: {why}; keep the name section or export \
                 `__stack_pointer`"
            ),
        };
        if m.global_types.get(sp as usize).map(|g| g.content_type) != Some(wasmparser::ValType::I32)
        {
            bail!("the stack pointer (global {sp}) is not a 32-bit global");
        }
        let asyncify = asyncify_state_global(m);
        let writers: Vec<u32> = facts
            .code(m)
            .global_writers
            .get(&sp)
            .cloned()
            .unwrap_or_default();
        let mut protected = Vec::new();
        let mut skipped: HashMap<&'static str, usize> = HashMap::new();
        for &f in writers.iter().filter(|&&f| f >= m.imported_funcs) {
            match eligible(m, f, sp, asyncify) {
                Ok(()) => protected.push(f),
                Err(Some(why)) => *skipped.entry(why).or_default() += 1,
                Err(None) => {
                    *skipped
                        .entry("writing the stack pointer without a constant-frame opening")
                        .or_default() += 1
                }
            }
        }

        let edits = &mut *cx.edits;
        let canary = edits.add_i32_global(m, true, build_canary(m.bytes) as i32);
        // handler(name_offset, name_len) and handler_unnamed(function).
        let mut body = Message::new()
            .text(m, edits, "wasmfix: stack buffer overflow in ")
            .stored_text(
                m,
                edits,
                vec![Instruction::LocalGet(0)],
                vec![Instruction::LocalGet(1)],
            )
            .text(m, edits, "\n")
            .trap(m, edits);
        body.push(Instruction::End);
        let i32t = wasmparser::ValType::I32;
        let handler = edits.add_helper(m, "wasmfix:stack_canary", (&[i32t; 2], &[]), &[], &body);
        let mut body = Message::new()
            .text(m, edits, "wasmfix: stack buffer overflow in function ")
            .number(m, edits, vec![Instruction::LocalGet(0)])
            .text(m, edits, "\n")
            .trap(m, edits);
        body.push(Instruction::End);
        let handler_unnamed = edits.add_helper(
            m,
            "wasmfix:stack_canary_unnamed",
            (&[i32t], &[]),
            &[],
            &body,
        );
        let mut names = HashMap::new();
        for &f in &protected {
            if let Some(name) = facts.function_names.get(&f)
                && let Some(stored) = store_text(m, edits, name)
            {
                names.insert(f, stored);
            }
        }
        let seeded = seed_at_start_up(m, edits, canary);
        edits.record_applied(
            "stack-canary",
            serde_json::json!({ "protected": protected.len() }),
        );
        let count = protected.len();
        edits.add_rewriter(Box::new(Canary {
            sp,
            canary,
            handler,
            handler_unnamed,
            names,
            protected,
            slot: 0,
            blocks: TrapBlocks::default(),
        }));
        let mut skipped: Vec<(&str, usize)> = skipped.into_iter().collect();
        skipped.sort();
        let skipped_text: Vec<String> = skipped
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        Ok(PassReport {
            pass: "stack-canary",
            summary: format!(
                "a canary above the frame of {count} functions{}; canary {}{}",
                if skipped_text.is_empty() {
                    String::new()
                } else {
                    format!(" (skipped: {})", skipped_text.join(", "))
                },
                if seeded.is_empty() {
                    "fixed per build (the module imports no WASI random_get)".to_string()
                } else {
                    format!("randomized at start-up by {}", seeded.join(", "))
                },
                match asyncify {
                    Some(g) => format!("; Asyncify state global {g}"),
                    None => String::new(),
                }
            ),
            warnings: Vec::new(),
            details: serde_json::json!({
                "protected_functions": count,
                "skipped": skipped.iter().map(|(w, n)| serde_json::json!({"why": w, "functions": n})).collect::<Vec<_>>(),
                "seeded_by": seeded,
                "asyncify_state_global": asyncify,
            }),
        })
    }
}

/// The global that binaryen's Asyncify keeps its state in: the one `asyncify_get_state`
/// returns.
fn asyncify_state_global(m: &Module<'_>) -> Option<u32> {
    let export = m
        .exports
        .iter()
        .find(|e| e.name == "asyncify_get_state" && e.kind == wasmparser::ExternalKind::Func)?;
    let body = m
        .bodies
        .get(export.index.checked_sub(m.imported_funcs)? as usize)?;
    let mut ops = body.get_operators_reader().ok()?;
    match ops.read().ok()? {
        O::GlobalGet { global_index } => Some(global_index),
        _ => None,
    }
}

/// `Ok` when function `f` opens with a constant-frame prologue and can be protected; else why
/// not (`None`: it does not open with a constant-frame prologue).
fn eligible(
    m: &Module<'_>,
    f: u32,
    sp: u32,
    asyncify: Option<u32>,
) -> Result<(), Option<&'static str>> {
    if m.func_sig(f).is_none_or(|s| s.results().len() > 1) {
        return Err(Some("with several results"));
    }
    excluded(m, f, asyncify)?;
    let body = &m.bodies[(f - m.imported_funcs) as usize];
    let mut ops = body.get_operators_reader().map_err(|_| None)?;
    // Straight-line evaluation of the opening up to the first write of sp: values are
    // `Entry(k)` (entry sp - k), constants, or unknown.
    #[derive(Clone, Copy, PartialEq)]
    enum V {
        Entry(i64),
        Const(i64),
        Other,
    }
    let mut stack: Vec<V> = Vec::new();
    let mut locals: HashMap<u32, V> = HashMap::new();
    let mut frame = None;
    while !ops.eof() {
        let op = ops.read().map_err(|_| None)?;
        match op {
            O::GlobalGet { global_index } if global_index == sp => stack.push(V::Entry(0)),
            O::I32Const { value } => stack.push(V::Const(value as i64)),
            O::LocalGet { local_index } => {
                stack.push(*locals.get(&local_index).unwrap_or(&V::Other))
            }
            O::LocalSet { local_index } | O::LocalTee { local_index } => {
                let v = stack.pop().ok_or(None)?;
                locals.insert(local_index, v);
                if matches!(op, O::LocalTee { .. }) {
                    stack.push(v);
                }
            }
            O::I32Sub | O::I32Add => {
                let (b, a) = (stack.pop().ok_or(None)?, stack.pop().ok_or(None)?);
                stack.push(match (a, b, matches!(op, O::I32Sub)) {
                    (V::Entry(k), V::Const(n), true) => V::Entry(k + n),
                    (V::Entry(k), V::Const(n), false) | (V::Const(n), V::Entry(k), false) => {
                        V::Entry(k - n)
                    }
                    _ => V::Other,
                });
            }
            O::GlobalSet { global_index } if global_index == sp => {
                frame = Some(stack.pop().ok_or(None)?);
                break;
            }
            _ => return Err(None),
        }
    }
    if !matches!(frame, Some(V::Entry(n)) if n > 0) {
        return Err(None);
    }
    Ok(())
}

/// Why function `f` must not be protected whatever its opening: Asyncify, exceptions, GC
/// branches.
fn excluded(m: &Module<'_>, f: u32, asyncify: Option<u32>) -> Result<(), Option<&'static str>> {
    let body = &m.bodies[(f - m.imported_funcs) as usize];
    let mut ops = body.get_operators_reader().map_err(|_| None)?;
    while !ops.eof() {
        match ops.read().map_err(|_| None)? {
            O::GlobalGet { global_index } | O::GlobalSet { global_index }
                if Some(global_index) == asyncify =>
            {
                return Err(Some("instrumented by Asyncify"));
            }
            O::Try { .. }
            | O::TryTable { .. }
            | O::Delegate { .. }
            | O::Rethrow { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. } => return Err(Some("using exception handling or GC")),
            _ => {}
        }
    }
    Ok(())
}

/// The per-build canary: FNV-1a of the module's bytes, without zero bytes (a string overflow
/// ends with one and must not be able to reproduce a byte of the canary with it).
fn build_canary(bytes: &[u8]) -> u32 {
    let h = crate::facts::module_hash(bytes);
    u32::from_le_bytes(h.to_le_bytes().map(|b| if b == 0 { 0xa5 } else { b }))
}

/// Points `_start` and `_initialize` at wrappers that xor random bytes into the canary once,
/// when the module imports WASI `random_get`. Returns the exports wrapped.
fn seed_at_start_up(
    m: &Module<'_>,
    edits: &mut crate::edit::Edits<'_>,
    canary: u32,
) -> Vec<String> {
    let random_get = ["wasi_snapshot_preview1", "wasi_unstable"]
        .iter()
        .find_map(|wasi| m.imported_func(wasi, "random_get"));
    let i32t = wasmparser::ValType::I32;
    let Some(random_get) = random_get
        .filter(|&f| m.func_sig(f) == Some(&wasmparser::FuncType::new([i32t, i32t], [i32t])))
    else {
        return Vec::new();
    };
    let mut seeded = Vec::new();
    let done = edits.add_i32_global(m, true, 0);
    let word = super::word(0);
    for name in ["_start", "_initialize"] {
        let Some(export) = m
            .exports
            .iter()
            .find(|e| e.name == name && e.kind == wasmparser::ExternalKind::Func)
        else {
            continue;
        };
        if m.func_sig(export.index)
            .is_none_or(|s| !s.params().is_empty() || !s.results().is_empty())
        {
            continue;
        }
        let saved = 0;
        let code = [
            Instruction::GlobalGet(done),
            Instruction::I32Eqz,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(1),
            Instruction::GlobalSet(done),
            Instruction::I32Const(0),
            Instruction::I32Load(word),
            Instruction::LocalSet(saved),
            Instruction::I32Const(0),
            Instruction::I32Const(4),
            Instruction::Call(random_get),
            Instruction::I32Eqz,
            Instruction::If(BlockType::Empty),
            Instruction::GlobalGet(canary),
            Instruction::I32Const(0),
            Instruction::I32Load(word),
            Instruction::I32Xor,
            Instruction::GlobalSet(canary),
            Instruction::End,
            Instruction::I32Const(0),
            Instruction::LocalGet(saved),
            Instruction::I32Store(word),
            Instruction::End,
            Instruction::Call(export.index),
            Instruction::End,
        ];
        let wrapper = edits.add_helper(
            m,
            &format!("wasmfix:seed_canary_then_{name}"),
            (&[], &[]),
            &[(1, ValType::I32)],
            &code,
        );
        edits.redirect_export(name, wrapper);
        seeded.push(name.to_string());
    }
    seeded
}

struct Canary {
    sp: u32,
    canary: u32,
    handler: u32,
    handler_unnamed: u32,
    names: HashMap<u32, (u32, u32)>,
    /// Protected functions, ascending.
    protected: Vec<u32>,
    /// The local holding the canary slot's address in the function being rewritten.
    slot: u32,
    blocks: TrapBlocks,
}

impl Canary {
    /// The exit check: compare the canary (branch to trap block 0 on a mismatch), pop the slot.
    fn exit(&self, trap_depth: u32) -> [Instruction<'static>; 9] {
        let word = super::word(0);
        [
            Instruction::LocalGet(self.slot),
            Instruction::I32Load(word),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Ne,
            Instruction::BrIf(trap_depth),
            Instruction::LocalGet(self.slot),
            Instruction::I32Const(SLOT),
            Instruction::I32Add,
            Instruction::GlobalSet(self.sp),
        ]
    }
}

impl BodyRewriter for Canary {
    fn wants(&self, func: u32) -> bool {
        self.protected.binary_search(&func).is_ok()
    }

    fn prologue(&mut self, cx: &mut BodyCx<'_>, out: &mut Vec<Instruction<'static>>) {
        self.slot = cx.add_local(ValType::I32);
        let word = super::word(0);
        out.extend([
            Instruction::GlobalGet(self.sp),
            Instruction::I32Const(SLOT),
            Instruction::I32Sub,
            Instruction::LocalTee(self.slot),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Store(word),
            Instruction::LocalGet(self.slot),
            Instruction::GlobalSet(self.sp),
        ]);
        let results = match cx.sig.results() {
            [] => BlockType::Empty,
            [t] => BlockType::Result(RoundtripReencoder.val_type(*t).expect("a value type")),
            _ => unreachable!("functions with several results are not protected"),
        };
        self.blocks.open(&[BlockType::Empty], results, out);
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        mut ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        match self.blocks.track(&mut ins) {
            At::Outside => out.push(ins),
            At::End => {
                let mut trap = vec![];
                match self.names.get(&cx.func) {
                    Some(&(offset, len)) => trap.extend([
                        Instruction::I32Const(offset as i32),
                        Instruction::I32Const(len as i32),
                        Instruction::Call(self.handler),
                    ]),
                    None => trap.extend([
                        Instruction::I32Const(cx.func as i32),
                        Instruction::Call(self.handler_unnamed),
                    ]),
                }
                trap.push(Instruction::Unreachable);
                let exit = self.exit(0);
                self.blocks.close(&exit, &[trap], ins, out);
            }
            At::Body => {
                if matches!(
                    ins,
                    Instruction::Return
                        | Instruction::ReturnCall(_)
                        | Instruction::ReturnCallIndirect { .. }
                        | Instruction::ReturnCallRef(_)
                ) {
                    out.extend(self.exit(self.blocks.trap_depth(0)));
                }
                out.push(ins);
            }
        }
    }
}
