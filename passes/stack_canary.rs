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
//! **Nested frames.** wasm-opt's inliner keeps an inlined callee's frame as a nested opening
//! inside its caller — `global.get sp; i32.const N; i32.sub; local.tee $f; global.set sp` … its
//! body … `local.get $f; i32.const N; i32.add; global.set sp` — and a `strcpy` into the callee's
//! buffer then overwrites the caller's locals (`role`) long before the caller returns. Such a
//! frame gets a slot of its own: right before the opening's `global.get sp`, a slot is pushed and
//! the canary stored at its bottom; the frame opens below it; the restore's `global.set sp`
//! first checks the canary at the address it is given (the slot's) and then writes that address
//! plus 16, the value the stack pointer had before the push. Protected only when the restore is
//! certain: the restore reads the frame local (or the stack pointer) plus exactly N, at the
//! opening's own nesting level; between the two there is no `end`/`else` of an enclosing
//! construct, no branch to a label outside (so every execution that opens the frame reaches the
//! restore or traps), no `return` or tail call, no exception or stack-switching instruction, no
//! write of the frame local, and no other write of the stack pointer than the openings and
//! restores of frames nested inside that are certain themselves. Then every address the code
//! derives inside the frame is the original one minus 16, consistently (all come from the
//! stack pointer read after the push), the restore puts back exactly the original value, and
//! the code after the frame sees the stack pointer it saw before. Other nested openings are
//! left alone and counted in the report (`nested frames without a certain restore`). clang
//! itself never nests frames (one frame per function), so these come from inlining. A mismatch
//! prints `wasmfix: stack buffer overflow in a nested frame of <function>`.
//!
//! Report mode (`--harden-mode report`): a mismatch prints its message once per frame (entry
//! or nested) and the function returns as it would have; the `$body` block still routes
//! branches to the function's label through the exit check. `--harden-allow FUNC` leaves a
//! function's frames alone.
//!
//! Executions without an overflow run the same instructions plus a store and, per exit, a load
//! and a comparison that is false; the stack holds 16 more bytes per frame (the wasm32 C ABI
//! keeps the stack pointer 16-byte aligned, so a slot cannot be smaller without misaligning the
//! frames below it).
//!
//! Refuses: memory64, shared memory (threads: the canary seeding runs per instance but the
//! stacks live in the heap), several memories, a stack pointer that cannot be established while
//! functions do write a prologue-shaped global.

use super::trap_blocks::{At, TrapBlocks};
use super::{Pass, PassCx, PassReport};
use crate::diag::{Diagnostics, Message, OnError, OnceFlag, store_text};
use crate::edit::{BodyCx, BodyRewriter};
use crate::module::Module;
use anyhow::{Result, bail};
use std::collections::{BTreeMap, HashMap};
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
        let mut plans: BTreeMap<u32, Plan> = BTreeMap::new();
        let mut skipped: HashMap<&'static str, usize> = HashMap::new();
        let mut uncertain_nested = 0;
        let mode = cx.options.on_error;
        for &f in writers.iter().filter(|&&f| f >= m.imported_funcs) {
            if cx.options.allowed(facts, f) {
                *skipped.entry("allowed (--harden-allow)").or_default() += 1;
                continue;
            }
            let entry = match eligible(m, f, sp, asyncify) {
                Ok(()) => true,
                Err(Some(why)) => {
                    *skipped.entry(why).or_default() += 1;
                    continue;
                }
                Err(None) => false,
            };
            let body = &m.bodies[(f - m.imported_funcs) as usize];
            let (nested, uncertain) = nested_frames(body, sp, entry);
            uncertain_nested += uncertain;
            if !entry && nested.is_empty() {
                *skipped
                    .entry("writing the stack pointer without a constant-frame opening")
                    .or_default() += 1;
                continue;
            }
            plans.insert(f, Plan { entry, nested });
        }
        let protected: Vec<u32> = plans
            .iter()
            .filter(|(_, p)| p.entry)
            .map(|(&f, _)| f)
            .collect();
        let nested_frames: usize = plans.values().map(|p| p.nested.len()).sum();
        let nested_functions = plans.values().filter(|p| !p.nested.is_empty()).count();

        let warnings = cx.options.unmatched_allows(m, facts);
        let edits = &mut *cx.edits;
        if mode == OnError::Report && !Diagnostics::available(m, edits) {
            return Ok(nothing(
                "report mode, but the module cannot write messages (it imports no WASI \
                 fd_write): nothing to report"
                    .into(),
            ));
        }
        // Report mode: each frame (and nested frame) reports once.
        let mut flags: HashMap<u32, Vec<OnceFlag>> = HashMap::new();
        if mode == OnError::Report {
            for (&f, plan) in &plans {
                let n = u32::from(plan.entry) + plan.nested.len() as u32;
                let fs = (0..n)
                    .filter_map(|_| Diagnostics::once_flag(m, edits))
                    .collect();
                flags.insert(f, fs);
            }
        }
        let canary = edits.add_i32_global(m, true, build_canary(m.bytes) as i32);
        // handler(name_offset, name_len) and handler_unnamed(function); the nested frames'
        // nested_handler(name_offset, name_len) and nested_handler_unnamed(function).
        let handler = message_handler(m, edits, mode, "stack_canary", "in ", true);
        let handler_unnamed = message_handler(
            m,
            edits,
            mode,
            "stack_canary_unnamed",
            "in function ",
            false,
        );
        let nested_handlers = (nested_frames > 0).then(|| {
            let named = message_handler(
                m,
                edits,
                mode,
                "stack_canary_nested",
                "in a nested frame of ",
                true,
            );
            let unnamed = message_handler(
                m,
                edits,
                mode,
                "stack_canary_nested_unnamed",
                "in a nested frame of function ",
                false,
            );
            (named, unnamed)
        });
        let mut names = HashMap::new();
        for &f in plans.keys() {
            if let Some(name) = facts.function_names.get(&f)
                && let Some(stored) = store_text(m, edits, name)
            {
                names.insert(f, stored);
            }
        }
        let seeded = seed_at_start_up(m, edits, canary);
        edits.record_applied(
            "stack-canary",
            serde_json::json!({ "protected": protected.len(), "nested_frames": nested_frames }),
        );
        let count = protected.len();
        edits.add_rewriter(Box::new(Canary {
            sp,
            canary,
            handler,
            handler_unnamed,
            nested_handlers,
            mode,
            flags,
            names,
            plans,
            f: PerFunction::default(),
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
                "a canary above the frame of {count} functions{}{}; canary {}{}",
                if nested_frames + uncertain_nested == 0 {
                    String::new()
                } else {
                    format!(
                        " and of {nested_frames} nested frames (as inlining leaves them) in \
                         {nested_functions} functions ({uncertain_nested} nested frames without \
                         a certain restore left alone)"
                    )
                },
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
            ) + match mode {
                OnError::Stop => "",
                OnError::Report => "; report mode",
            },
            warnings,
            details: serde_json::json!({
                "protected_functions": count,
                "mode": mode,
                "nested_frames": nested_frames,
                "nested_frames_left_alone": uncertain_nested,
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

/// A nested constant frame whose restore is certain (see the header): the input offsets of
/// its opening's `global.get sp` and of its restore's `global.set sp`.
#[derive(Debug, Clone, Copy)]
struct Nested {
    open: u64,
    restore: u64,
}

/// `global.get sp; i32.const N; i32.sub` (or `i32.const -N; i32.add`), `local.tee L` or not,
/// `global.set sp`, N > 0: a constant frame opened anywhere in a body.
struct Opening {
    /// Indices in the body's operators of the `global.get` and the `global.set`.
    get: usize,
    set: usize,
    local: Option<u32>,
    size: i64,
}

fn opening_at(ops: &[(O<'_>, u64)], i: usize, sp: u32) -> Option<Opening> {
    let op = |k: usize| ops.get(i + k).map(|o| &o.0);
    if !matches!(op(0)?, O::GlobalGet { global_index } if *global_index == sp) {
        return None;
    }
    let size = match (op(1)?, op(2)?) {
        (O::I32Const { value }, O::I32Sub) => *value as i64,
        (O::I32Const { value }, O::I32Add) => -(*value as i64),
        _ => return None,
    };
    if size <= 0 {
        return None;
    }
    match (op(3)?, op(4)) {
        (O::LocalTee { local_index }, Some(O::GlobalSet { global_index }))
            if *global_index == sp =>
        {
            Some(Opening {
                get: i,
                set: i + 4,
                local: Some(*local_index),
                size,
            })
        }
        (O::GlobalSet { global_index }, _) if *global_index == sp => Some(Opening {
            get: i,
            set: i + 3,
            local: None,
            size,
        }),
        _ => None,
    }
}

/// Whether the `global.set sp` at `j` restores the value `o` opened from: `local.get L` (the
/// frame local) or `global.get sp` (the stack pointer is still the frame's), then
/// `i32.const N; i32.add` (or `i32.const -N; i32.sub`).
fn restores(ops: &[(O<'_>, u64)], j: usize, o: &Opening, sp: u32) -> bool {
    if j < o.set + 4 {
        return false;
    }
    let base = match &ops[j - 3].0 {
        O::LocalGet { local_index } => o.local == Some(*local_index),
        O::GlobalGet { global_index } => *global_index == sp,
        _ => false,
    };
    let size = match (&ops[j - 2].0, &ops[j - 1].0) {
        (O::I32Const { value }, O::I32Add) => *value as i64,
        (O::I32Const { value }, O::I32Sub) => -(*value as i64),
        _ => return false,
    };
    base && size == o.size
}

/// The constant frames opened inside `body` (after its prologue's, when `prologue`) whose
/// restore is certain, and the number of those that are not. A frame's restore is certain when
/// it is a [`restores`] `global.set sp` at the opening's own nesting level, and every execution
/// from the opening reaches it or traps: no `end`/`else` of an enclosing construct before it,
/// no branch to a label outside the frame, no `return` or tail call, no write of the frame
/// local, and no other write of the stack pointer except by nested frames of the same kind.
fn nested_frames(
    body: &wasmparser::FunctionBody<'_>,
    sp: u32,
    prologue: bool,
) -> (Vec<Nested>, usize) {
    let Ok(mut reader) = body.get_operators_reader() else {
        return (Vec::new(), 0);
    };
    let mut ops = Vec::new();
    while !reader.eof() {
        match reader.read_with_offset() {
            Ok(op) => ops.push(op),
            Err(_) => return (Vec::new(), 0),
        }
    }
    let first_set = ops
        .iter()
        .position(|(op, _)| matches!(op, O::GlobalSet { global_index } if *global_index == sp));
    let openings: Vec<Opening> = (0..ops.len())
        .filter_map(|i| opening_at(&ops, i, sp))
        .filter(|o| !(prologue && Some(o.set) == first_set))
        .collect();
    // Later openings first: a frame may contain nested frames, which must be certain already.
    let mut restore: Vec<Option<usize>> = vec![None; openings.len()];
    for k in (0..openings.len()).rev() {
        restore[k] = region_end(&ops, &openings, &restore, k, sp);
    }
    let nested: Vec<Nested> = openings
        .iter()
        .zip(&restore)
        .filter_map(|(o, r)| {
            Some(Nested {
                open: ops[o.get].1,
                restore: ops[(*r)?].1,
            })
        })
        .collect();
    let uncertain = openings.len() - nested.len();
    (nested, uncertain)
}

/// The index of the `global.set sp` that restores opening `k`, if it is certain.
fn region_end(
    ops: &[(O<'_>, u64)],
    openings: &[Opening],
    restore: &[Option<usize>],
    k: usize,
    sp: u32,
) -> Option<usize> {
    let o = &openings[k];
    // Constructs opened since the frame's opening and not closed yet.
    let mut depth = 0u32;
    for (j, (op, _)) in ops.iter().enumerate().skip(o.set + 1) {
        match op {
            O::Block { .. } | O::Loop { .. } | O::If { .. } => depth += 1,
            O::End | O::Else if depth == 0 => return None,
            O::End => depth -= 1,
            O::Br { relative_depth }
            | O::BrIf { relative_depth }
            | O::BrOnNull { relative_depth }
            | O::BrOnNonNull { relative_depth }
                if *relative_depth >= depth =>
            {
                return None;
            }
            O::BrTable { targets } => {
                let outside = |d: u32| d >= depth;
                if outside(targets.default()) || targets.targets().any(|t| t.is_ok_and(outside)) {
                    return None;
                }
            }
            O::Return
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
            | O::ReturnCallRef { .. }
            | O::Try { .. }
            | O::TryTable { .. }
            | O::Catch { .. }
            | O::CatchAll
            | O::Delegate { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::Rethrow { .. }
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. }
            | O::BrOnCastDescEq { .. }
            | O::BrOnCastDescEqFail { .. }
            | O::Resume { .. }
            | O::ResumeThrow { .. }
            | O::ResumeThrowRef { .. }
            | O::Switch { .. }
            | O::Suspend { .. } => return None,
            O::LocalSet { local_index } | O::LocalTee { local_index }
                if o.local == Some(*local_index) =>
            {
                return None;
            }
            O::GlobalSet { global_index } if *global_index == sp => {
                // The opening or the restore of a certain frame nested in this one (its restore
                // may read the stack pointer, which is then that frame's, not this one's).
                let nested =
                    openings.iter().zip(restore).skip(k + 1).any(|(q, r)| {
                        r.is_some() && (q.set == j || (*r == Some(j) && q.set > o.set))
                    });
                if nested {
                    continue;
                }
                if depth == 0 && restores(ops, j, o, sp) {
                    return Some(j);
                }
                return None;
            }
            _ => {}
        }
    }
    None
}

/// What the rewriter does to one function.
struct Plan {
    /// A canary slot pushed on entry, checked and popped at every exit.
    entry: bool,
    /// Nested frames whose restore is certain, each with its own slot.
    nested: Vec<Nested>,
}

struct Canary {
    sp: u32,
    canary: u32,
    handler: u32,
    handler_unnamed: u32,
    mode: OnError,
    /// Report mode: per function, the flag of its entry frame (if protected) and of each
    /// nested frame, in order.
    flags: HashMap<u32, Vec<OnceFlag>>,
    /// (named, unnamed) handlers of the nested frames' checks.
    nested_handlers: Option<(u32, u32)>,
    names: HashMap<u32, (u32, u32)>,
    plans: BTreeMap<u32, Plan>,
    f: PerFunction,
}

/// The state of the function being rewritten.
#[derive(Default)]
struct PerFunction {
    entry: bool,
    /// The local holding the entry slot's address.
    slot: u32,
    /// A local for a nested frame's slot address while it is pushed or checked.
    scratch: u32,
    /// Input offsets of the nested openings' `global.get sp` and of the restores'
    /// `global.set sp` not rewritten yet.
    opens: Vec<u64>,
    restores: Vec<u64>,
    blocks: TrapBlocks,
    /// Report mode: the entry frame's flag, and each nested frame's by its restore's offset.
    entry_flag: Option<OnceFlag>,
    nested_flags: Vec<(u64, OnceFlag)>,
}

impl Canary {
    /// The exit check: compare the canary (stop: branch to trap block 0 on a mismatch; report:
    /// report once), pop the slot.
    fn exit(&self, func: u32, trap_depth: u32) -> Vec<Instruction<'static>> {
        let word = super::word(0);
        let mut code = vec![
            Instruction::LocalGet(self.f.slot),
            Instruction::I32Load(word),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Ne,
        ];
        match self.mode {
            OnError::Stop => code.push(Instruction::BrIf(trap_depth)),
            OnError::Report => {
                code.push(Instruction::If(BlockType::Empty));
                code.extend(self.report_once(self.f.entry_flag, self.call_handler(func, false)));
                code.push(Instruction::End);
            }
        }
        code.extend([
            Instruction::LocalGet(self.f.slot),
            Instruction::I32Const(SLOT),
            Instruction::I32Add,
            Instruction::GlobalSet(self.sp),
        ]);
        code
    }

    /// The call that reports an overflow in function `func`'s frame (`nested`: a nested one).
    fn call_handler(&self, func: u32, nested: bool) -> Vec<Instruction<'static>> {
        let (named, unnamed) = match nested {
            false => (self.handler, self.handler_unnamed),
            true => self.nested_handlers.expect("nested frames have handlers"),
        };
        match self.names.get(&func) {
            Some(&(offset, len)) => vec![
                Instruction::I32Const(offset as i32),
                Instruction::I32Const(len as i32),
                Instruction::Call(named),
            ],
            None => vec![
                Instruction::I32Const(func as i32),
                Instruction::Call(unnamed),
            ],
        }
    }

    /// `call`, guarded by `flag` when there is one.
    fn report_once(
        &self,
        flag: Option<OnceFlag>,
        call: Vec<Instruction<'static>>,
    ) -> Vec<Instruction<'static>> {
        match flag {
            Some(flag) => flag.guard(call),
            None => call,
        }
    }

    /// Replaces a nested opening's `global.get sp`: push a slot holding the canary; the frame
    /// then opens below it.
    fn push_nested(&self, out: &mut Vec<Instruction<'_>>) {
        let word = super::word(0);
        out.extend([
            Instruction::GlobalGet(self.sp),
            Instruction::I32Const(SLOT),
            Instruction::I32Sub,
            Instruction::LocalTee(self.f.scratch),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Store(word),
            Instruction::LocalGet(self.f.scratch),
            Instruction::GlobalSet(self.sp),
            Instruction::LocalGet(self.f.scratch),
        ]);
    }

    /// Replaces the `global.set sp` of the nested restore at input offset `at`, whose value is
    /// the slot's address: check the canary, then pop the slot too.
    fn restore_nested(&self, func: u32, at: u64, out: &mut Vec<Instruction<'_>>) {
        let word = super::word(0);
        out.extend([
            Instruction::LocalTee(self.f.scratch),
            Instruction::I32Load(word),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Ne,
            Instruction::If(BlockType::Empty),
        ]);
        let call = self.call_handler(func, true);
        match self.mode {
            OnError::Stop => {
                out.extend(call);
                out.push(Instruction::Unreachable);
            }
            OnError::Report => {
                let flag = self.f.nested_flags.iter().find(|(o, _)| *o == at);
                out.extend(self.report_once(flag.map(|f| f.1), call));
            }
        }
        out.extend([
            Instruction::End,
            Instruction::LocalGet(self.f.scratch),
            Instruction::I32Const(SLOT),
            Instruction::I32Add,
            Instruction::GlobalSet(self.sp),
        ]);
    }
}

impl BodyRewriter for Canary {
    fn wants(&self, func: u32) -> bool {
        self.plans.contains_key(&func)
    }

    fn prologue(&mut self, cx: &mut BodyCx<'_>, out: &mut Vec<Instruction<'static>>) {
        let plan = &self.plans[&cx.func];
        let mut flags = self
            .flags
            .get(&cx.func)
            .cloned()
            .unwrap_or_default()
            .into_iter();
        let entry_flag = if plan.entry { flags.next() } else { None };
        self.f = PerFunction {
            entry: plan.entry,
            opens: plan.nested.iter().map(|n| n.open).collect(),
            restores: plan.nested.iter().map(|n| n.restore).collect(),
            entry_flag,
            nested_flags: plan.nested.iter().map(|n| n.restore).zip(flags).collect(),
            ..PerFunction::default()
        };
        if !self.f.opens.is_empty() {
            self.f.scratch = cx.add_local(ValType::I32);
        }
        if !self.f.entry {
            return;
        }
        self.f.slot = cx.add_local(ValType::I32);
        let word = super::word(0);
        out.extend([
            Instruction::GlobalGet(self.sp),
            Instruction::I32Const(SLOT),
            Instruction::I32Sub,
            Instruction::LocalTee(self.f.slot),
            Instruction::GlobalGet(self.canary),
            Instruction::I32Store(word),
            Instruction::LocalGet(self.f.slot),
            Instruction::GlobalSet(self.sp),
        ]);
        let results = match cx.sig.results() {
            [] => BlockType::Empty,
            [t] => BlockType::Result(RoundtripReencoder.val_type(*t).expect("a value type")),
            _ => unreachable!("functions with several results are not protected"),
        };
        // Report mode: no trap block, only `$body`, which branches to the function's label
        // reach too.
        let traps: &[BlockType] = match self.mode {
            OnError::Stop => &[BlockType::Empty],
            OnError::Report => &[],
        };
        self.f.blocks.open(traps, results, out);
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        mut ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        let at = self.f.blocks.track(&mut ins);
        if self.f.entry {
            match at {
                At::Outside => {
                    out.push(ins);
                    return;
                }
                At::End => {
                    let exit = self.exit(cx.func, 0);
                    match self.mode {
                        OnError::Stop => {
                            let mut trap = self.call_handler(cx.func, false);
                            trap.push(Instruction::Unreachable);
                            self.f.blocks.close(&exit, &[trap], ins, out);
                        }
                        OnError::Report => self.f.blocks.close(&exit, &[], ins, out),
                    }
                    return;
                }
                At::Body => {
                    if matches!(
                        ins,
                        Instruction::Return
                            | Instruction::ReturnCall(_)
                            | Instruction::ReturnCallIndirect { .. }
                            | Instruction::ReturnCallRef(_)
                    ) {
                        out.extend(self.exit(cx.func, self.f.blocks.trap_depth(0)));
                    }
                }
            }
        }
        // The first `global.get sp` / `global.set sp` an original instruction of a nested
        // frame turned into (stack-guard, earlier in the chain, adds reads after writes).
        match ins {
            Instruction::GlobalGet(g) if g == self.sp && self.f.opens.contains(&cx.offset) => {
                self.f.opens.retain(|&o| o != cx.offset);
                self.push_nested(out);
            }
            Instruction::GlobalSet(g) if g == self.sp && self.f.restores.contains(&cx.offset) => {
                self.f.restores.retain(|&o| o != cx.offset);
                self.restore_nested(cx.func, cx.offset, out);
            }
            ins => out.push(ins),
        }
    }
}

/// A helper `wasmfix:{name}` that prints `wasmfix: stack buffer overflow {what}` and the
/// function: by its stored name (`named`: parameters name offset and length) or by its index
/// (one parameter), then stops or, in report mode, returns.
fn message_handler(
    m: &Module<'_>,
    edits: &mut crate::edit::Edits<'_>,
    mode: OnError,
    name: &str,
    what: &str,
    named: bool,
) -> u32 {
    let message = Message::start(m, edits, mode).text(
        m,
        edits,
        &format!("wasmfix: stack buffer overflow {what}"),
    );
    let message = match named {
        true => message.stored_text(
            m,
            edits,
            vec![Instruction::LocalGet(0)],
            vec![Instruction::LocalGet(1)],
        ),
        false => message.number(m, edits, vec![Instruction::LocalGet(0)]),
    };
    let mut body = message.text(m, edits, "\n").end(m, edits, mode);
    body.push(Instruction::End);
    let i32t = wasmparser::ValType::I32;
    let params: &[wasmparser::ValType] = if named { &[i32t; 2] } else { &[i32t] };
    edits.add_helper(m, &format!("wasmfix:{name}"), (params, &[]), &[], &body)
}
