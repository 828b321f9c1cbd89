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
//!   segment names or a `processed-by clang` producer, when no data segment, heap or stack lies
//!   below that default (one that does says the module was linked with another global base,
//!   which is then unknown). The lowest data segment alone is not G: wasm-opt drops the leading
//!   zero bytes of segments, so zero-initialized statics lie below it (a correct program was
//!   stopped that way). When G cannot be established (a stripped module without producers, a
//!   non-default global base), the null page is not checked and the report says why. Loads and stores. When the stack lies at
//!   address 0 (`--stack-first`), there is no null page to check;
//! - read-only data `[ro_low, ro_high)`: the data segments the name section calls `.rodata…`
//!   (wasm-ld names them; wasm-opt keeps the names when it splits them); stores only. Without
//!   data segment names (stripped) this check is skipped, and the report says so.
//!
//! When the read-only data starts at or below G (the usual wasm-ld layout), one unsigned
//! comparison covers both ranges for a store.
//!
//! Stop mode, how an access is checked (a dry run over each function first decides which
//! accesses need a check at all; functions left without one are not rewritten):
//!
//! - A **load** whose only range is the null page `[0, G)` is *rebased*: `(address) i32.const
//!   G-off; i32.sub` and memarg offset G instead of `off`. When `address + off ≥ G` the
//!   subtraction does not wrap and the effective address is `address + off`, the same bytes as
//!   before (and an address past 4 GiB still traps: `address - (G - off) + G = address + off`).
//!   When `address + off < G` the subtraction wraps to `2^32 - (G - off - address)` and the
//!   effective address is at least 2^32, past any 32-bit memory: the load traps at the access as
//!   an out-of-bounds access, before it reads anything. Four bytes, no branch, no message.
//!   `--bounds-precise` branches instead (below) and prints the message for loads too, and so
//!   do loads when the poison range of freed blocks is checked (see "A pointer read from a
//!   freed block"), unless `--bounds-compact`.
//! - With `--bounds-compact`, a **store** whose only range is the null page is rebased the same
//!   way: `(address) i32.const G-off; i32.sub (value) store offset=G`, the value held back (a
//!   `local.get` or constant) or saved in a local. The argument is the load's: the effective
//!   address is unchanged when `address + off ≥ G`; below, it is at least 2^32 and the store
//!   traps as out of bounds before writing any byte (the whole access lies past any 32-bit
//!   memory). No wasmfix message: the engine's out-of-bounds trap at the access, in the
//!   function that made it.
//! - A **store** (or a load with `--bounds-precise`) branches: `local.tee $a; i32.const off;
//!   local.get $a; i32.const K; i32.lt_u; br_if $trap; drop` (a store whose value is not a
//!   constant or `local.get` first saves it in a local). The branch carries the offset to one
//!   trap block per function (see `trap_blocks.rs`), which computes the effective address and
//!   calls a handler that prints `wasmfix: null pointer dereference at address 0x… in
//!   <function>` or `wasmfix: write to read-only data at address 0x… in <function>` (when the
//!   module imports WASI `fd_write`) and traps. No call is made on the checked path. Offsets
//!   checked at least twice in a function against the null page alone get a trap block of their
//!   own, up to 24: the check is then `(address) local.get $a… i32.const G-off; i32.lt_u;
//!   br_if $off` without the `i32.const off … drop`, the address left on the stack for the
//!   access (the block adds the offset).
//! - An access through `local.get L` (or `local.tee L`, or `local.get L; i32.const c;
//!   i32.add`) is left unchecked when an earlier check proves `L ≥ G - off - c` (`Known`): a
//!   check (branching or rebased) of `L + c'` at offset `off'` that did not stop the program
//!   establishes `L + c' + off' ≥ G`; the fact lasts until `L` is written, and is carried
//!   through `block`/`if`/`loop` as a must-analysis (a fact holds at a join only when it holds on
//!   every edge into it; a loop keeps only facts about locals it does not write). A branching
//!   check through `L + c` compares `L` itself against `G - off - c`. Neither sees an address
//!   whose `i32.add` wraps past 4 GiB into the null page: such an access is missed, never
//!   stopped wrongly (the check only makes the program stop less often than the exact test).
//!
//! Measured on Pyodide 314.0.7 (`--passes bounds`, size growth / eval-time ratio on
//! bench/pyodide's workload, node 20, medians of 9 interleaved rounds at load 17-21, so ±10%):
//! inline branch per access (before): +49% / 1.17x; rebased loads, offset trap blocks, known
//! lower bounds, store values held back behind their checks (now, see `DEFER_STORE_VALUES`):
//! +20.3% / 1.07x; the same without holding values back: +23.5%; with `--bounds-precise`
//! (branches for loads): +29.7%. Of the 193,473 loads and 115,846 stores, 106,643 loads are
//! rebased (about 5 bytes each) and 73,828 stores branch (about 19 bytes each with their
//! share of the saved values and trap blocks); the others are proven fine.
//! Alternatives considered: a shared check helper called per access (binaryen `--safe-heap`'s
//! shape: +10% size on Ruby but a call per access, 4.6x run time on the Ruby workload, which
//! neither V8 nor wasmtime inlines); checking only the first access of a base per block (a
//! subset of the lower-bound analysis above).
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
//! **A pointer read from a freed block.** heap-canary fills freed blocks with 0xfe bytes, so a
//! pointer read from one is 0xfefefefe, and an access through it (give or take 16 MiB of field
//! offset) lies in `[0xfe000000, 2^32)` ([`POISON_RANGE`]). When heap-canary poisons in this run
//! (its applied record says `poisons`; or in the run that wrote the input), the null page is
//! checked, and memory 0 declares a maximum of at most 0xfe000000 bytes (a memory without one
//! may grow into that range), every *branching* check against a range from 0, `[0, hi)`,
//! covers the addresses from there to 4 GiB too ([`HighCheck`]), in one of two forms:
//!
//! - maximum at most 2 GiB (Emscripten's default, sqlite3.wasm): `[2^31, 2^32) ∪ [0, hi)`,
//!   the same check with `i32.lt_s` instead of `i32.lt_u` (an address of 2^31 or more is
//!   negative), not one byte or instruction more;
//! - otherwise: `[0xfe000000, 2^32) ∪ [0, hi)`, `(address) i32.const 0x02000000+off; i32.add;
//!   i32.const 0x02000000+hi; i32.lt_u` (adding 2^32 − 0xfe000000 maps the poison range to
//!   `[0, 32 MiB)` and the null page right above it), an add and two longer constants.
//!
//! The handler tells the ranges apart: `wasmfix: use of a pointer from a freed block (address
//! 0x…) in <function>` from 0xfe000000 up, `wasmfix: access beyond the memory's maximum at
//! address 0x… in <function>` between 2^31 and there. Soundness: no access to the added
//! addresses can succeed in such a memory: an access the wider check stops has its effective
//! address in the added range, past 4 GiB, or (an `L + c` whose `i32.add` wrapped) in the
//! null page itself. So the check gives a trap the input had a message, or stops a null-page
//! access, and changes no other execution. Loads, rebased otherwise, branch whenever the
//! poison range is checked (as with `--bounds-precise`), so the first use of a pointer read
//! from a freed block is named whether it reads or writes (`p->next->x` reads). Cost, only in
//! modules where heap-canary poisons: harden.O2.wasm 1.00x on `hash`, 1.04x on `sort`, +1,810
//! bytes; sqlite3.wasm's `--harden` +55.5% size instead of +43.7% (14,911 more loads branch,
//! about 7 bytes each; most already use an offset's own trap block). `--bounds-compact` keeps
//! them rebased. Not extended (the engine's trap, no message): `--bounds-compact` loads and
//! stores, accesses
//! left unchecked (offset at or past `hi`, stack, constant addresses), and those a `Known`
//! lower bound skips: that fact comes from an access through the same local that ran, which
//! the poison address (plus less than 16 MiB) cannot do; a case missed loses a message, never
//! stops a correct program. Report mode prints the message once, then the access traps as it
//! did before. Without the cap (below) or without the null page (ruby.wasm and yosys put the
//! stack first; a stripped module without producers), the report says why the range is not
//! checked.
//!
//! **The cap.** When heap-canary poisons in *this* run and bounds applies, a defined memory 0
//! without a maximum, or with one above 0xfe000000 bytes, gets the maximum 0xfe00 pages
//! (4064 MiB; `Edits::set_memory_type`), and the checks above cover the poison range. The
//! hardened program already pays bounded memory for safety (the quarantine holds freed
//! blocks, headers and redzones grow every block), and `memory.grow` may fail at any time by
//! the specification (a correct C program handles `malloc` returning NULL). The cap takes the
//! top 32 MiB of the 4 GiB address space, less than a quarantine of a program that size would
//! hold; only a program that needs more than 4064 MiB sees it, and its allocation fails as it
//! would a little later at 4 GiB. Not capped: an imported memory (a maximum would change the
//! import's type and could fail to link; the report says why the range is then unchecked), a
//! memory whose minimum already reaches the range, and any run without heap-canary poisoning
//! in it (`--passes bounds` alone never changes limits, also on a module an earlier run
//! poisoned). The report says "memory 0 capped at 4064 MiB so that freed-block poison can
//! never be a valid address".
//!
//! Report mode (`--harden-mode report`): no trap block; each check is `if (address in range)
//! { report once }` and the access follows as in the original, so the program goes on exactly
//! as it would have; each access site reports once (`OnceFlag`). `--harden-allow FUNC` leaves
//! a function unchecked.
//!
//! Executions without such an access run the same instructions plus comparisons that are false.
//!
//! Refuses: memory64, shared memory, several memories.

use super::heap_canary::POISON_RANGE;
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

/// The report's note when memory 0 gets the cap (docs/harden.md says the same).
const CAPPED: &str = "memory 0 capped at 4064 MiB so that freed-block poison can never be a \
                      valid address";

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
        let poison = poison_checked(m, facts, cx.edits, null_end, read_only);
        // What the checks get from it: how they cover the poison range, the cap it needs.
        let checked = poison.as_ref().and_then(|p| p.as_ref().ok()).copied();
        let (high, cap) = (checked.map(|p| p.form), checked.and_then(|p| p.cap));
        let mut notes = Vec::new();
        if cap.is_some() {
            notes.push(CAPPED.into());
        }
        match (high, &poison) {
            (Some(HighCheck::Signed), _) => notes.push(
                "branching checks of the null page cover [2^31, 2^32) too (beyond the memory's \
                 maximum; freed blocks' poison from 0xfe000000)"
                    .into(),
            ),
            (Some(HighCheck::Shifted), _) => notes.push(format!(
                "branching checks of the null page cover freed blocks' poison [0x{:x}, 2^32) too",
                POISON_RANGE.0
            )),
            (None, Some(Err(why))) => notes.push(format!("poison range not checked: {why}")),
            (None, _) => {}
        }
        if null_end == 0 {
            notes.push(null_how.clone());
        }
        if read_only.is_none() {
            notes.push(format!("read-only data not checked: {ro_how}"));
        }
        if null_end == 0 && read_only.is_none() {
            return Ok(nothing(format!("nothing to check ({})", notes.join("; "))));
        }
        let ranges = Ranges::new(null_end as u32, read_only, high);
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
        let handler = handler(m, edits, ranges, mode);
        // Loads branch too when the poison range is checked, so a load through a pointer read
        // from a freed block stops with its message (see the header); `--bounds-compact` keeps
        // them rebased, as it does stores.
        let compact = cx.options.bounds_compact;
        let rebase_loads =
            mode == OnError::Stop && !cx.options.bounds_precise && (high.is_none() || compact);
        let rebase_stores = rebase_loads && compact;
        let mut unneeded = 0;
        let input_locals: HashMap<u32, u32> = checked
            .iter()
            .map(|&f| {
                let body = &m.bodies[(f - m.imported_funcs) as usize];
                let params = m.func_sig(f).map_or(0, |s| s.params().len() as u32);
                let declared: u32 = body
                    .get_locals_reader()
                    .map(|r| r.into_iter().flatten().map(|(n, _)| n).sum())
                    .unwrap_or(0);
                (f, params + declared)
            })
            .collect();
        // Stop mode: a dry run over each function decides which accesses need a check (the
        // others are provably fine or follow from earlier checks); functions left without a
        // check are not rewritten, and the offsets checked at least twice get trap blocks.
        let mut plans: HashMap<u32, Plan> = HashMap::new();
        if mode == OnError::Stop {
            let mut planner = Checks {
                ranges,
                sp,
                handler,
                unnamed: None,
                names: HashMap::new(),
                checked: Vec::new(),
                mode,
                flags: HashMap::new(),
                input_locals: input_locals.clone(),
                plans: HashMap::new(),
                planning: true,
                rebase_loads,
                rebase_stores,
                f: PerFunction::default(),
            };
            for &f in &checked {
                if let Some(plan) = planner.dry_run(m, f) {
                    plans.insert(f, plan);
                }
            }
            let before = checked.len();
            checked.retain(|f| plans.get(f).is_none_or(|p| p.branches + p.rebased > 0));
            unneeded = before - checked.len();
        }
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
        // The cap goes with the checks that rely on it: only a run that applies them sets it.
        if let Some(ty) = cap {
            edits.set_memory_type(0, ty);
        }
        edits.record_applied(
            "bounds",
            serde_json::json!({ "null": [0, null_end], "read_only": read_only }),
        );
        let count = checked.len();
        // handler_unnamed(address, function), for functions without a name: two constants
        // fewer at each trap.
        let unnamed = (checked.iter().any(|f| !names.contains_key(f))).then(|| {
            let i32t = wasmparser::ValType::I32;
            edits.add_helper(
                m,
                "wasmfix:bounds_fault_unnamed",
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
            )
        });
        edits.add_rewriter(Box::new(Checks {
            ranges,
            sp,
            handler,
            unnamed,
            names,
            checked,
            mode,
            flags,
            input_locals,
            plans,
            planning: false,
            rebase_loads,
            rebase_stores,
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
                "functions_without_a_needed_check": unneeded,
                "mode": mode,
                "null_page": [0, null_end],
                "null_page_found_by": null_how,
                "read_only": read_only,
                "read_only_found_by": ro_how,
                "memory_capped_pages": cap.map(|t| t.maximum),
                "poison_range": match (&poison, high) {
                    (_, Some(HighCheck::Signed)) => serde_json::json!([1u64 << 31, POISON_RANGE.1]),
                    (_, Some(HighCheck::Shifted)) => {
                        serde_json::json!([POISON_RANGE.0, POISON_RANGE.1])
                    }
                    (Some(Err(why)), None) => serde_json::json!(why),
                    _ => serde_json::Value::Null,
                },
            }),
        })
    }
}

/// How the checks against the null page cover [`POISON_RANGE`]: the form, and the limits
/// memory 0 gets so that no access there can succeed (`Some` when this run caps it).
#[derive(Clone, Copy)]
struct PoisonCheck {
    form: HighCheck,
    cap: Option<wasm_encoder::MemoryType>,
}

/// Whether the checks against the null page cover [`POISON_RANGE`] too (`Ok`), or why not;
/// `None` when heap-canary poisons no freed block (in this run, or in the run that wrote the
/// input). They do when the null page is checked and memory 0 can never reach the poison
/// range, so that every access there traps anyway and the check only gives that trap its
/// message; when heap-canary poisons in this run, a defined memory 0 that could reach it is
/// capped below it first (see the header).
fn poison_checked(
    m: &Module<'_>,
    facts: &Facts,
    edits: &crate::edit::Edits<'_>,
    null_end: u64,
    read_only: Option<(u32, u32)>,
) -> Option<Result<PoisonCheck, String>> {
    let poisons = |record: Option<&serde_json::Value>| {
        record
            .and_then(|r| r.get("poisons"))
            .and_then(|p| p.as_bool())
            == Some(true)
    };
    let poisons_now = poisons(edits.applied.get("heap-canary"));
    if !poisons_now && !poisons(facts.applied.get("heap-canary")) {
        return None;
    }
    Some(poison_reachable(m, edits, null_end, read_only, poisons_now))
}

fn poison_reachable(
    m: &Module<'_>,
    edits: &crate::edit::Edits<'_>,
    null_end: u64,
    read_only: Option<(u32, u32)>,
    may_cap: bool,
) -> Result<PoisonCheck, String> {
    if null_end == 0 {
        return Err("the null page is not checked".into());
    }
    let Some(memory) = m.memories.first() else {
        return Err("no memory".into());
    };
    let low = POISON_RANGE.0 as u64;
    // Ranges from 0 end inside the memory, below the poison range; checked anyway, since
    // `in_low_range` adds the span to their end.
    if null_end >= low || read_only.is_some_and(|(_, hi)| hi as u64 >= low) {
        return Err("the checked ranges reach the poison range".into());
    }
    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
    // an earlier pass of this run may have changed the limits
    let limits = match edits.memory_types.get(&0) {
        Some(t) => *t,
        None => RoundtripReencoder
            .memory_type(*memory)
            .map_err(|e| format!("memory 0: {e}"))?,
    };
    let reaches = match limits.maximum.map(|pages| pages.saturating_mul(page)) {
        Some(maximum) if maximum <= low => None,
        Some(maximum) => Some(format!(
            "memory 0 may grow to {maximum} bytes, into [0x{low:x}, 2^32)"
        )),
        None => Some(format!(
            "memory 0 has no maximum: it may grow into [0x{low:x}, 2^32)"
        )),
    };
    let cap = match reaches {
        None => None,
        Some(why) if !may_cap => return Err(why),
        Some(why) if m.imported_memories > 0 => {
            return Err(format!(
                "{why}, and it is imported (a maximum would change the import's type)"
            ));
        }
        Some(why) if limits.minimum.saturating_mul(page) > low => {
            return Err(format!("{why}, and it starts there"));
        }
        Some(_) => Some(wasm_encoder::MemoryType {
            maximum: Some(low / page),
            ..limits
        }),
    };
    let maximum = cap
        .or(Some(limits))
        .and_then(|t| t.maximum)
        .map_or(u64::MAX, |pages| pages.saturating_mul(page));
    // The signed form compares with `hi - off` as a positive i32.
    let ends_below_2g = null_end < 1 << 31 && read_only.is_none_or(|(_, hi)| hi < 1 << 31);
    let form = match maximum <= 1 << 31 && ends_below_2g {
        true => HighCheck::Signed,
        false => HighCheck::Shifted,
    };
    Ok(PoisonCheck { form, cap })
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
    /// A branching check of a range from 0 covers [`POISON_RANGE`] too, and how (see the
    /// header).
    high: Option<HighCheck>,
}

/// How a check against `[0, hi)` covers the addresses from [`POISON_RANGE`] up too.
#[derive(Clone, Copy, PartialEq, Debug)]
enum HighCheck {
    /// Memory 0 never exceeds 2 GiB: `[2^31, 2^32) ∪ [0, hi)` with a signed comparison.
    Signed,
    /// Otherwise (at most 0xfe000000 bytes): `[0xfe000000, 2^32) ∪ [0, hi)`, shifted.
    Shifted,
}

/// `2^32 - POISON_RANGE.0`: added to an address, it moves the poison range to `[0, 32 MiB)`
/// and a range `[0, hi)` to `[32 MiB, 32 MiB + hi)`.
const POISON_SPAN: u32 = (POISON_RANGE.1 - POISON_RANGE.0 as u64) as u32;

impl Ranges {
    fn new(null_end: u32, read_only: Option<(u32, u32)>, high: Option<HighCheck>) -> Ranges {
        Ranges {
            null_end,
            read_only,
            high,
        }
    }

    /// With an address on the stack, whether `address + offset` lies in `[lo, hi)`, `offset <
    /// hi`: `addr - (lo - offset) < hi - lo`, unsigned (an address that wraps past 4 GiB is out
    /// of bounds and traps either way); a range from 0 as [`Ranges::in_low_range`].
    fn contains(&self, offset: u64, lo: u32, hi: u32) -> Vec<Instruction<'static>> {
        if lo == 0 {
            return self.in_low_range(offset, hi);
        }
        if lo as u64 <= offset {
            // addr + offset >= lo always: addr < hi - offset
            return vec![
                Instruction::I32Const((hi as u64 - offset) as i32),
                Instruction::I32LtU,
            ];
        }
        vec![
            Instruction::I32Const((lo as u64 - offset) as i32),
            Instruction::I32Sub,
            Instruction::I32Const((hi - lo) as i32),
            Instruction::I32LtU,
        ]
    }

    /// With an address on the stack, whether `address + offset` lies in `[0, hi)`, `offset <
    /// hi`: `i32.const hi-offset; i32.lt_u`. With `high`, or above: [`HighCheck::Signed`]
    /// `i32.lt_s` instead (an address of 2^31 or more is negative; adding `offset` moves it to
    /// at least 2^31, past the memory, or past 4 GiB), [`HighCheck::Shifted`] `i32.const
    /// SPAN+offset; i32.add; i32.const SPAN+hi; i32.lt_u` (SPAN = 2^32 - 0xfe000000: the sum
    /// wraps exactly for the poison range, which lands below SPAN).
    fn in_low_range(&self, offset: u64, hi: u32) -> Vec<Instruction<'static>> {
        debug_assert!(offset < hi as u64);
        let below = Instruction::I32Const((hi as u64 - offset) as i32);
        match self.high {
            None => vec![below, Instruction::I32LtU],
            Some(HighCheck::Signed) => vec![below, Instruction::I32LtS],
            Some(HighCheck::Shifted) => vec![
                Instruction::I32Const((POISON_SPAN as u64 + offset) as u32 as i32),
                Instruction::I32Add,
                Instruction::I32Const(POISON_SPAN.wrapping_add(hi) as i32),
                Instruction::I32LtU,
            ],
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
    ranges: Ranges,
    mode: OnError,
) -> u32 {
    let (address, func, name_offset, name_len) = (0, 1, 2, 3);
    let mut body = Message::start(m, edits, mode).instructions;
    let in_poison = [
        Instruction::LocalGet(address),
        Instruction::I32Const(POISON_RANGE.0 as i32),
        Instruction::I32GeU,
    ];
    // (condition, text): the first that holds, else read-only data
    let mut prefixes = Vec::new();
    if ranges.high.is_some() {
        prefixes.push((
            in_poison.to_vec(),
            "wasmfix: use of a pointer from a freed block (address ",
        ));
    }
    if ranges.high == Some(HighCheck::Signed) {
        prefixes.push((
            vec![
                Instruction::LocalGet(address),
                Instruction::I32Const(0),
                Instruction::I32LtS,
            ],
            "wasmfix: access beyond the memory's maximum at address ",
        ));
    }
    prefixes.push((
        vec![
            Instruction::LocalGet(address),
            Instruction::I32Const(ranges.null_end as i32),
            Instruction::I32LtU,
        ],
        "wasmfix: null pointer dereference at address ",
    ));
    for (condition, text) in &prefixes {
        body.extend(condition.iter().cloned());
        body.push(Instruction::If(BlockType::Empty));
        body.extend(Message::new().text(m, edits, text).instructions);
        body.push(Instruction::Else);
    }
    body.extend(
        Message::new()
            .text(m, edits, "wasmfix: write to read-only data at address ")
            .instructions,
    );
    body.extend(prefixes.iter().map(|_| Instruction::End));
    body.extend(
        Message::new()
            .hex(m, edits, vec![Instruction::LocalGet(address)])
            .instructions,
    );
    if ranges.high.is_some() {
        body.extend(in_poison);
        body.push(Instruction::If(BlockType::Empty));
        body.extend(Message::new().text(m, edits, ")").instructions);
        body.push(Instruction::End);
    }
    body.extend(Message::new().text(m, edits, " in ").instructions);
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
    /// Parameters and declared locals of each checked function.
    input_locals: HashMap<u32, u32>,
    /// `handler_unnamed`, when some function has no name.
    unnamed: Option<u32>,
    /// Stop mode: what the dry run found per function.
    plans: HashMap<u32, Plan>,
    /// This instance only does the dry run: it records the checks instead of emitting them.
    planning: bool,
    /// Stop mode without `--bounds-precise`: loads are rebased instead of branching.
    rebase_loads: bool,
    /// `--bounds-compact`: stores too.
    rebase_stores: bool,
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
    last: [Option<Instruction<'static>>; 4],
    /// Report mode: the function's flags, and the number of accesses seen so far.
    flags: OnceFlags,
    sites: u32,
    /// Offsets with a trap block of their own (block `1 + k` for `offsets[k]`).
    offsets: Vec<u64>,
    /// Dry run: the checks found.
    planned: Vec<Planned>,
    /// Whether the function has trap blocks (it has branching checks).
    trap_blocks: bool,
    /// A value instruction received but not emitted yet (see `instruction`).
    pending: Option<Instruction<'static>>,
    /// The input offset of the instruction whose output `pending` is part of.
    pending_at: u64,
    known: Known,
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
    /// Runs this planning instance over function `f` and says what it would check.
    fn dry_run(&mut self, m: &Module<'_>, f: u32) -> Option<Plan> {
        let body = m.bodies.get(f.checked_sub(m.imported_funcs)? as usize)?;
        let sig = m.func_sig(f)?;
        let declared = self.input_locals.get(&f)? - sig.params().len() as u32;
        let mut reader = body.get_operators_reader().ok()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read_with_offset().ok()?);
        }
        let mut cx = BodyCx::new(f, sig, declared, &ops);
        self.prologue(&mut cx, &mut Vec::new());
        let mut sink = Vec::new();
        for (op, offset) in &ops {
            cx.offset = *offset;
            let ins = RoundtripReencoder.instruction(op.clone()).ok()?;
            self.instruction(&mut cx, ins, &mut sink);
            sink.clear();
        }
        Some(plan_of(&std::mem::take(&mut self.f.planned)))
    }

    /// The `k`-th instruction received before the current one (0: the last).
    fn back(&self, k: usize) -> Option<&Instruction<'static>> {
        self.f.last.get(3 - k)?.as_ref()
    }

    fn remember(&mut self, ins: Option<Instruction<'static>>) {
        self.f.last.rotate_left(1);
        self.f.last[3] = ins;
    }

    /// The local an address pushed by the instructions ending `k` back comes from, and the
    /// constant added to it (`local.get L` / `local.tee L`: 0; `local.get L; i32.const c;
    /// i32.add`: c, when 0 ≤ c < 2^31).
    fn address_local(&self, k: usize) -> Option<(u32, u64)> {
        match (self.back(k), self.back(k + 1), self.back(k + 2)) {
            (Some(Instruction::LocalGet(l) | Instruction::LocalTee(l)), _, _) => Some((*l, 0)),
            (
                Some(Instruction::I32Add),
                Some(Instruction::I32Const(c)),
                Some(Instruction::LocalGet(l)),
            ) if *c >= 0 => Some((*l, *c as u64)),
            _ => None,
        }
    }

    /// Whether the address of the access being rewritten is provably outside every range.
    fn provably_fine(&self, store: bool, offset: u64, ranges: &[(u32, u32)]) -> bool {
        let end = ranges.iter().map(|r| r.1 as u64).max().unwrap_or(0);
        if offset >= end {
            return true;
        }
        // The instruction that produced the address: the last one for a load; for a store,
        // the one before a simple value producer.
        let producer = if store {
            match self.back(0) {
                Some(
                    Instruction::LocalGet(_)
                    | Instruction::I32Const(_)
                    | Instruction::I64Const(_)
                    | Instruction::F32Const(_)
                    | Instruction::F64Const(_)
                    | Instruction::GlobalGet(_),
                ) => self.back(1),
                _ => None,
            }
        } else {
            self.back(0)
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
        let input_locals = self.input_locals.get(&cx.func).copied().unwrap_or(0);
        self.f = PerFunction {
            known: match self.mode {
                OnError::Stop => Known::new(cx.original, input_locals),
                OnError::Report => Known::default(),
            },
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
        // Trap blocks, innermost first: one that receives an offset (the scratch local holds
        // the address), one per frequent offset that receives the address the access uses
        // (its code adds the difference to the next offset, so falling through them adds the
        // offset), and the one that receives the effective address and stops.
        if self.planning {
            return;
        }
        let plan = self.plans.get(&cx.func).cloned().unwrap_or_default();
        self.f.offsets = plan.offsets;
        let n = self.f.offsets.len();
        // Only rebased loads: no trap block, only `$body` (so that the end of the body is
        // found as in the other functions).
        let traps = match plan.branches {
            0 => Vec::new(),
            _ => vec![BlockType::Result(ValType::I32); n + 2],
        };
        self.f.trap_blocks = !traps.is_empty();
        self.f.blocks.open(&traps, results, out);
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        mut ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        if self.mode == OnError::Report {
            self.report_instruction(cx, ins, out);
            return;
        }
        let remembered = instruction_to_static(&ins);
        let pending = self.f.pending.take();
        // A value held back from the previous input instruction is emitted now, before (or
        // inside the check of) this instruction: it and what comes before this instruction's
        // own code keep the value's position in the code map (DWARF lines). (Held back from
        // an earlier instruction of the same input instruction's output: nothing moves.)
        let held = pending.is_some() && self.f.pending_at != cx.offset;
        let own_code_from = |cx: &mut BodyCx<'_>, at: usize| {
            if held {
                cx.own_code_from(at);
            }
        };
        let at = match self.planning {
            true => At::Body,
            false => self.f.blocks.track(&mut ins),
        };
        match at {
            At::Outside => {
                out.extend(pending);
                own_code_from(cx, out.len());
                out.push(ins);
            }
            At::End => {
                out.extend(pending);
                own_code_from(cx, out.len());
                let traps = match self.f.trap_blocks {
                    true => self.trap_code(cx.func),
                    false => Vec::new(),
                };
                self.f.blocks.close(&[], &traps, ins, out);
            }
            At::Body => {
                self.f.known.observe(&ins, cx.offset);
                match access_ins(&ins) {
                    Some((store, offset, ty)) => {
                        let rebased = self.check(cx, store, offset, ty, pending, out);
                        own_code_from(cx, out.len());
                        match rebased {
                            Some(rebased) => out.push(with_offset(ins, rebased)),
                            None => out.push(ins),
                        }
                    }
                    None => {
                        out.extend(pending);
                        own_code_from(cx, out.len());
                        match &remembered {
                            // A value a store may follow: emitted with the next instruction,
                            // so that a store's check can come before it (see
                            // `DEFER_STORE_VALUES`).
                            Some(
                                i @ (Instruction::LocalGet(_)
                                | Instruction::I32Const(_)
                                | Instruction::I64Const(_)
                                | Instruction::F32Const(_)
                                | Instruction::F64Const(_)),
                            ) if DEFER_STORE_VALUES => {
                                self.f.pending = Some(i.clone());
                                self.f.pending_at = cx.offset;
                            }
                            _ => out.push(ins),
                        }
                    }
                }
            }
        }
        self.remember(remembered);
    }
}

/// What the dry run found in a function.
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Checks that branch to a trap block.
    branches: u32,
    /// Loads rebased so that a null-page address traps as out of bounds.
    rebased: u32,
    /// Offsets that get a trap block of their own: those of at least two checks against one
    /// range from 0, most used first, at most [`OFFSET_BLOCKS`].
    offsets: Vec<u64>,
}

fn plan_of(planned: &[Planned]) -> Plan {
    let mut count: HashMap<u64, u32> = HashMap::new();
    let mut rebased = 0;
    for p in planned {
        match *p {
            Planned::Rebased => rebased += 1,
            Planned::Branch { offset, single } if single => *count.entry(offset).or_default() += 1,
            Planned::Branch { .. } => {}
        }
    }
    let mut by: Vec<(u64, u32)> = count.into_iter().filter(|&(_, n)| n >= 2).collect();
    by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by.truncate(OFFSET_BLOCKS);
    Plan {
        branches: planned.len() as u32 - rebased,
        rebased,
        offsets: by.into_iter().map(|(o, _)| o).collect(),
    }
}

/// A check the dry run found.
enum Planned {
    Rebased,
    /// A branching check of an access at `offset`; `single`: against one range from 0.
    Branch {
        offset: u64,
        single: bool,
    },
}

/// `ins` (a load or store) with memarg offset `offset`.
fn with_offset(ins: Instruction<'_>, offset: u64) -> Instruction<'_> {
    use Instruction::*;
    let at = |mut m: MemArg| {
        m.offset = offset;
        m
    };
    match ins {
        I32Load(m) => I32Load(at(m)),
        I64Load(m) => I64Load(at(m)),
        F32Load(m) => F32Load(at(m)),
        F64Load(m) => F64Load(at(m)),
        I32Load8S(m) => I32Load8S(at(m)),
        I32Load8U(m) => I32Load8U(at(m)),
        I32Load16S(m) => I32Load16S(at(m)),
        I32Load16U(m) => I32Load16U(at(m)),
        I64Load8S(m) => I64Load8S(at(m)),
        I64Load8U(m) => I64Load8U(at(m)),
        I64Load16S(m) => I64Load16S(at(m)),
        I64Load16U(m) => I64Load16U(at(m)),
        I64Load32S(m) => I64Load32S(at(m)),
        I64Load32U(m) => I64Load32U(at(m)),
        V128Load(m) => V128Load(at(m)),
        I32Store(m) => I32Store(at(m)),
        I64Store(m) => I64Store(at(m)),
        F32Store(m) => F32Store(at(m)),
        F64Store(m) => F64Store(at(m)),
        I32Store8(m) => I32Store8(at(m)),
        I32Store16(m) => I32Store16(at(m)),
        I64Store8(m) => I64Store8(at(m)),
        I64Store16(m) => I64Store16(at(m)),
        I64Store32(m) => I64Store32(at(m)),
        V128Store(m) => V128Store(at(m)),
        other => unreachable!("only accesses are rebased, not {other:?}"),
    }
}

/// Whether a store's simple value (`local.get`, a constant) is held back and emitted after the
/// store's check, saving the local that keeps the value (and its `local.set`/`local.get`).
/// The held-back value is emitted with the next instruction, which tells the emitter where its
/// own code starts (`BodyCx::own_code_from`), so the value, and the check before it, keep the
/// value's position in the code map and its DWARF line (tests/debug_info.rs).
const DEFER_STORE_VALUES: bool = true;

/// At most this many offsets get a trap block of their own per function (deeper branch
/// labels would need two-byte immediates).
const OFFSET_BLOCKS: usize = 24;

/// What is known about locals at the instruction being rewritten: a lower bound of the value a
/// local holds, established by a check that stops the program otherwise (a check of `local.get
/// L` at offset o against `[0, hi)` passed, so L ≥ hi - o). A forward must-analysis over the
/// structured control flow: facts flow through straight-line code into the constructs it
/// encloses; at the end of a `block`/`if` they are those that hold on every edge reaching it
/// (falling through and each branch to its label, the missing `else`); at a `loop`'s start only
/// facts about locals the loop does not write survive (its back edges bring no others). A write
/// kills a local's fact. Functions with exception handling, GC casts or stack switching (edges
/// this does not follow) get no facts.
#[derive(Default)]
struct Known {
    enabled: bool,
    /// The facts here, or `None` in unreachable code.
    here: Option<LowerBounds>,
    frames: Vec<KnownFrame>,
    /// Locals written inside each `loop`, by the loop's input offset.
    loop_writes: HashMap<u64, std::collections::HashSet<u32>>,
    /// Locals beyond the input's (added by earlier rewriters) are not in `loop_writes`.
    input_locals: u32,
}

/// Local → lower bound of its value.
type LowerBounds = HashMap<u32, u32>;

struct KnownFrame {
    kind: KnownKind,
    start: Option<LowerBounds>,
    /// The meet of the facts at each branch to the construct's end.
    exit: Option<LowerBounds>,
}

#[derive(PartialEq)]
enum KnownKind {
    Block,
    If,
    Else,
    Loop,
}

/// The facts that hold on both edges (`None`: unreachable).
fn meet(a: Option<LowerBounds>, b: &Option<LowerBounds>) -> Option<LowerBounds> {
    match (a, b) {
        (None, b) => b.clone(),
        (a, None) => a,
        (Some(mut a), Some(b)) => {
            a.retain(|l, v| match b.get(l) {
                Some(w) => {
                    *v = (*v).min(*w);
                    true
                }
                None => false,
            });
            Some(a)
        }
    }
}

impl Known {
    fn new(ops: &[(O<'_>, u64)], input_locals: u32) -> Known {
        let mut loop_writes: HashMap<u64, std::collections::HashSet<u32>> = HashMap::new();
        // (loop offset or None for other constructs) per open construct
        let mut open: Vec<Option<u64>> = Vec::new();
        for (op, offset) in ops {
            match op {
                O::Try { .. }
                | O::TryTable { .. }
                | O::Delegate { .. }
                | O::Catch { .. }
                | O::CatchAll
                | O::BrOnCast { .. }
                | O::BrOnCastFail { .. }
                | O::BrOnCastDescEq { .. }
                | O::BrOnCastDescEqFail { .. }
                | O::Resume { .. }
                | O::ResumeThrow { .. }
                | O::ResumeThrowRef { .. }
                | O::Switch { .. } => return Known::default(),
                O::Loop { .. } => {
                    open.push(Some(*offset));
                    loop_writes.entry(*offset).or_default();
                }
                O::Block { .. } | O::If { .. } => open.push(None),
                O::End => {
                    open.pop();
                }
                O::LocalSet { local_index } | O::LocalTee { local_index } => {
                    for l in open.iter().flatten() {
                        loop_writes.entry(*l).or_default().insert(*local_index);
                    }
                }
                _ => {}
            }
        }
        Known {
            enabled: true,
            here: Some(LowerBounds::new()),
            frames: Vec::new(),
            loop_writes,
            input_locals,
        }
    }

    fn lower(&self, l: u32) -> Option<u32> {
        self.here.as_ref()?.get(&l).copied()
    }

    fn learn(&mut self, l: u32, lower: u32) {
        if let Some(here) = &mut self.here {
            let v = here.entry(l).or_insert(lower);
            *v = (*v).max(lower);
        }
    }

    /// A branch to label `depth` from here.
    fn branch(&mut self, depth: u32) {
        let n = self.frames.len();
        if let Some(f) = (depth as usize)
            .lt(&n)
            .then(|| &mut self.frames[n - 1 - depth as usize])
            && f.kind != KnownKind::Loop
        {
            f.exit = meet(f.exit.take(), &self.here);
        }
    }

    /// Follows `ins` (at input offset `offset`).
    fn observe(&mut self, ins: &Instruction<'_>, offset: u64) {
        if !self.enabled {
            return;
        }
        match ins {
            Instruction::Block(_) | Instruction::If(_) => {
                let kind = match ins {
                    Instruction::If(_) => KnownKind::If,
                    _ => KnownKind::Block,
                };
                self.frames.push(KnownFrame {
                    kind,
                    start: self.here.clone(),
                    exit: None,
                });
            }
            Instruction::Loop(_) => {
                let writes = self.loop_writes.get(&offset);
                let input_locals = self.input_locals;
                if let Some(here) = &mut self.here {
                    here.retain(|l, _| *l < input_locals && writes.is_some_and(|w| !w.contains(l)));
                }
                self.frames.push(KnownFrame {
                    kind: KnownKind::Loop,
                    start: self.here.clone(),
                    exit: None,
                });
            }
            Instruction::Else => {
                if let Some(f) = self.frames.last_mut() {
                    f.exit = meet(f.exit.take(), &self.here);
                    f.kind = KnownKind::Else;
                    self.here = f.start.clone();
                }
            }
            Instruction::End => {
                if let Some(f) = self.frames.pop() {
                    self.here = match f.kind {
                        KnownKind::Block | KnownKind::Else => meet(self.here.take(), &f.exit),
                        // no `else`: the condition's false edge brings the start's facts
                        KnownKind::If => meet(meet(self.here.take(), &f.exit), &f.start),
                        // a loop is left by falling through its end only
                        KnownKind::Loop => self.here.take(),
                    };
                }
            }
            Instruction::Br(d) => {
                self.branch(*d);
                self.here = None;
            }
            Instruction::BrIf(d) | Instruction::BrOnNull(d) | Instruction::BrOnNonNull(d) => {
                self.branch(*d)
            }
            Instruction::BrTable(targets, default) => {
                for &t in targets.iter() {
                    self.branch(t);
                }
                self.branch(*default);
                self.here = None;
            }
            Instruction::Return
            | Instruction::ReturnCall(_)
            | Instruction::ReturnCallIndirect { .. }
            | Instruction::ReturnCallRef(_)
            | Instruction::Unreachable
            | Instruction::Throw(_)
            | Instruction::ThrowRef => self.here = None,
            Instruction::LocalSet(l) | Instruction::LocalTee(l) => {
                if let Some(here) = &mut self.here {
                    here.remove(l);
                }
            }
            _ => {}
        }
    }
}

impl Checks {
    /// Stop mode: the check of an access at `offset` whose address (and, for a store, value)
    /// are on the stack, with `pending` (a value instruction not emitted yet) before it.
    /// Returns the memarg offset the access must get instead of its own when it is rebased.
    fn check(
        &mut self,
        cx: &mut BodyCx<'_>,
        store: bool,
        offset: u64,
        ty: ValType,
        pending: Option<Instruction<'static>>,
        out: &mut Vec<Instruction<'_>>,
    ) -> Option<u64> {
        // For a load, `pending` is its address: emitted first. For a store it is the value.
        let pending = if store {
            pending
        } else {
            out.extend(pending);
            None
        };
        let zero = store && stores_zero(self.back(0));
        let ranges = self.ranges.for_access(store, zero);
        if ranges.is_empty() || self.provably_fine(store, offset, &ranges) {
            out.extend(pending);
            return None;
        }
        // The local the address comes from, and a constant added to it: the instructions
        // before the access for a load, before the value for a store whose value is `pending`
        // (`local.get L` or `local.tee L`, or `local.get L; i32.const c; i32.add`).
        let base = match (store, &pending) {
            (false, _) => self.address_local(0),
            (true, Some(_)) => self.address_local(1),
            (true, None) => None,
        };
        // One range from 0 (the null page, maybe merged with read-only data): a lower bound
        // of the address local can prove the access fine, or the check establishes one. For
        // `L + c` the access is in [0, hi) when L < hi - o - c (an address whose `i32.add` wraps
        // past 4 GiB is not seen: checking it would need the sum, a local and two more
        // instructions).
        if let [(0, hi)] = ranges.as_slice() {
            let hi = *hi as u64;
            let need_base = base.map(|(l, c)| (l, hi.saturating_sub(offset + c)));
            if let Some((l, need)) = need_base
                && (need == 0 || self.f.known.lower(l).is_some_and(|b| b as u64 >= need))
            {
                out.extend(pending);
                return None;
            }
            // A load: rebased, `(address) i32.const hi-o; i32.sub` and memarg offset hi, so
            // that an address in [0, hi) wraps around and the access traps as out of bounds.
            if (!store && self.rebase_loads) || (store && self.rebase_stores) {
                if self.planning {
                    self.f.planned.push(Planned::Rebased);
                } else {
                    // A store's value comes after: held back (`pending`), or saved.
                    let value = match (store, pending) {
                        (false, _) => None,
                        (true, Some(p)) => Some(p),
                        (true, None) => {
                            let v = self.value_local(cx, ty);
                            out.push(Instruction::LocalSet(v));
                            Some(Instruction::LocalGet(v))
                        }
                    };
                    out.extend([
                        Instruction::I32Const((hi - offset) as i32),
                        Instruction::I32Sub,
                    ]);
                    out.extend(value);
                }
                if let Some((l, need)) = need_base {
                    self.f.known.learn(l, need as u32);
                }
                return Some(hi);
            }
            if self.planning {
                self.f.planned.push(Planned::Branch {
                    offset,
                    single: true,
                });
                if let Some((l, need)) = need_base {
                    self.f.known.learn(l, need as u32);
                }
                return None;
            }
            if let Some(k) = self.f.offsets.iter().position(|&o| o == offset) {
                // (address) (L) i32.const need; i32.lt_u; br_if $o: the branch carries the
                // address the access uses, which stays on the stack when it is not taken
                let depth = self.f.blocks.trap_depth(1 + k as u32);
                let ranges = self.ranges;
                // `offset` here: of the access and the constant added to L
                let compare = |offset: u64| {
                    let mut code = ranges.in_low_range(offset, hi as u32);
                    code.push(Instruction::BrIf(depth));
                    code
                };
                let a = self.f.address;
                match (need_base, store) {
                    (Some((l, need)), _) => {
                        out.push(Instruction::LocalGet(l));
                        out.extend(compare(hi - need));
                        out.extend(pending);
                        self.f.known.learn(l, need as u32);
                    }
                    (None, false) => {
                        out.extend([Instruction::LocalTee(a), Instruction::LocalGet(a)]);
                        out.extend(compare(offset));
                    }
                    (None, true) => {
                        let value = match pending {
                            Some(p) => p,
                            None => {
                                let v = self.value_local(cx, ty);
                                out.push(Instruction::LocalSet(v));
                                Instruction::LocalGet(v)
                            }
                        };
                        out.extend([Instruction::LocalTee(a), Instruction::LocalGet(a)]);
                        out.extend(compare(offset));
                        out.push(value);
                    }
                }
                return None;
            }
        }
        if self.planning {
            self.f.planned.push(Planned::Branch {
                offset,
                single: false,
            });
            if let (Some((l, c)), [(0, hi)]) = (base, ranges.as_slice())
                && (*hi as u64) > offset + c
            {
                self.f.known.learn(l, (*hi as u64 - offset - c) as u32);
            }
            return None;
        }
        if !self.f.trap_blocks {
            // The dry run found no branching check here (the instructions differ from the
            // input's): an inline one.
            self.inline_check(cx, store, offset, ty, pending, &ranges, out);
            return None;
        }
        // Otherwise through the scratch locals: the branch carries the offset.
        let value = store.then(|| self.value_local(cx, ty));
        match (value, &pending) {
            (Some(_), Some(p)) => {
                // The value is still to come: only the address is on the stack.
                out.push(Instruction::LocalSet(self.f.address));
                self.offset_checks(offset, &ranges, out);
                out.push(Instruction::LocalGet(self.f.address));
                out.push(p.clone());
            }
            (Some(v), None) => {
                out.push(Instruction::LocalSet(v));
                out.push(Instruction::LocalSet(self.f.address));
                self.offset_checks(offset, &ranges, out);
                out.extend([
                    Instruction::LocalGet(self.f.address),
                    Instruction::LocalGet(v),
                ]);
            }
            (None, _) => {
                out.extend(pending.clone());
                out.push(Instruction::LocalSet(self.f.address));
                self.offset_checks(offset, &ranges, out);
                out.push(Instruction::LocalGet(self.f.address));
            }
        }
        // The address passed: L + c + o ≥ hi, whether or not L + c wrapped.
        if let (Some((l, c)), [(0, hi)]) = (base, ranges.as_slice())
            && (*hi as u64) > offset + c
        {
            self.f.known.learn(l, (*hi as u64 - offset - c) as u32);
        }
        None
    }

    /// A check without trap blocks: `if (address in range) { stop }` for each range.
    #[allow(clippy::too_many_arguments)]
    fn inline_check(
        &mut self,
        cx: &mut BodyCx<'_>,
        store: bool,
        offset: u64,
        ty: ValType,
        pending: Option<Instruction<'static>>,
        ranges: &[(u32, u32)],
        out: &mut Vec<Instruction<'_>>,
    ) {
        let value = match (store, pending) {
            (true, Some(p)) => Some(p),
            (true, None) => {
                let v = self.value_local(cx, ty);
                out.push(Instruction::LocalSet(v));
                Some(Instruction::LocalGet(v))
            }
            (false, p) => {
                out.extend(p);
                None
            }
        };
        out.push(Instruction::LocalSet(self.f.address));
        let (name_offset, name_len) = self.names.get(&cx.func).copied().unwrap_or((0, 0));
        for &(lo, hi) in ranges {
            if offset >= hi as u64 {
                continue;
            }
            out.push(Instruction::LocalGet(self.f.address));
            out.extend(self.ranges.contains(offset, lo, hi));
            out.extend([
                Instruction::If(BlockType::Empty),
                Instruction::LocalGet(self.f.address),
                Instruction::I32Const(offset as i32),
                Instruction::I32Add,
                Instruction::I32Const(cx.func as i32),
                Instruction::I32Const(name_offset as i32),
                Instruction::I32Const(name_len as i32),
                Instruction::Call(self.handler),
                Instruction::Unreachable,
                Instruction::End,
            ]);
        }
        out.push(Instruction::LocalGet(self.f.address));
        out.extend(value);
    }

    /// For each range: `i32.const off; (address in range); br_if $offset; drop`, the address in
    /// the scratch local.
    fn offset_checks(&self, offset: u64, ranges: &[(u32, u32)], out: &mut Vec<Instruction<'_>>) {
        let depth = self.f.blocks.trap_depth(0);
        for &(lo, hi) in ranges {
            if offset >= hi as u64 {
                continue;
            }
            out.push(Instruction::I32Const(offset as i32));
            out.push(Instruction::LocalGet(self.f.address));
            out.extend(self.ranges.contains(offset, lo, hi));
            out.extend([Instruction::BrIf(depth), Instruction::Drop]);
        }
    }

    /// The trap blocks' code (see `prologue`): offset + address; per frequent offset, the
    /// difference to the next one; the stop with the effective address.
    fn trap_code(&self, func: u32) -> Vec<Vec<Instruction<'static>>> {
        let n = self.f.offsets.len();
        let mut traps = Vec::with_capacity(n + 2);
        let mut first = vec![Instruction::LocalGet(self.f.address), Instruction::I32Add];
        if n > 0 {
            // over the offset blocks, to the stop
            first.push(Instruction::Br(n as u32));
        }
        traps.push(first);
        for (k, &o) in self.f.offsets.iter().enumerate() {
            let next = self.f.offsets.get(k + 1).copied().unwrap_or(0);
            traps.push(vec![
                Instruction::I32Const(o.wrapping_sub(next) as u32 as i32),
                Instruction::I32Add,
            ]);
        }
        let stop = match (self.names.get(&func), self.unnamed) {
            (None, Some(unnamed)) => vec![
                Instruction::I32Const(func as i32),
                Instruction::Call(unnamed),
                Instruction::Unreachable,
            ],
            (name, _) => {
                let (name_offset, name_len) = name.copied().unwrap_or((0, 0));
                vec![
                    Instruction::I32Const(func as i32),
                    Instruction::I32Const(name_offset as i32),
                    Instruction::I32Const(name_len as i32),
                    Instruction::Call(self.handler),
                    Instruction::Unreachable,
                ]
            }
        };
        traps.push(stop);
        traps
    }

    /// Report mode: every access checked inline (see `report_checks`).
    fn report_instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        let remembered = instruction_to_static(&ins);
        if let Some((store, offset, ty)) = access_ins(&ins) {
            let site = self.f.sites;
            self.f.sites += 1;
            // Report mode shows zero stores into the null page too.
            let ranges = self.ranges.for_access(store, false);
            if !ranges.is_empty() && !self.provably_fine(store, offset, &ranges) {
                let value = store.then(|| self.value_local(cx, ty));
                if let Some(v) = value {
                    out.push(Instruction::LocalSet(v));
                }
                out.push(Instruction::LocalSet(self.f.address));
                self.report_checks(cx.func, site, offset, &ranges, out);
                out.push(Instruction::LocalGet(self.f.address));
                if let Some(v) = value {
                    out.push(Instruction::LocalGet(v));
                }
            }
        }
        out.push(ins);
        self.remember(remembered);
    }
}

/// Whether the instruction before a store, `value`, pushes a zero (any type): that store
/// cannot change the null page.
fn stores_zero(value: Option<&Instruction<'static>>) -> bool {
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
            out.extend(self.ranges.contains(offset, lo, hi));
            out.push(Instruction::If(BlockType::Empty));
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
        Instruction::LocalTee(l) => Instruction::LocalTee(*l),
        Instruction::I32Add => Instruction::I32Add,
        _ => return None,
    })
}
