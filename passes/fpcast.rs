//! fpcast — function-pointer casts call with C semantics instead of trapping.
//!
//! C code calls functions through pointers of another type (a 1-argument getter stored in a
//! 2-argument slot, `(GFunc)free`, `METH_NOARGS`). Native ABIs tolerate it; wasm traps with
//! `indirect call type mismatch`. This pass makes such calls behave as C expects: extra
//! arguments are dropped, missing ones read as zero, a missing result reads as zero, an
//! unwanted result is dropped, and i32/i64 arguments are wrapped or zero-extended
//! ([`crate::sig::castable`]).
//!
//! What it inserts. For each funcref table and each signature `T` used by a `call_indirect`
//! on it that can reach an entry of another castable signature `U`:
//! - one adapter per `(U, T)` pair, typed `T`: it passes its arguments on as `U` wants them,
//!   calls slot `index` of the original table with `call_indirect (type U)` and adapts the
//!   result. `index` is the global `wasmfix:fpcast_index`, which the site writes just before
//!   the call and the adapter reads first.
//! - a *view* of the table for `T`: slot i holds the original entry when it is a `T` or cannot
//!   be cast to `T`, and the `(U, T)` adapter when it is a castable `U`. The site calls
//!   through the view with `call_indirect (type T)`. Two designs (`--fpcast-design`), chosen
//!   by the run's features:
//!   * `tables` (when the run allows reference types): each view is a shadow table, filled at
//!     instantiation by a start function (then calling the original start) from two compact
//!     sources: a `br_table` function mapping each slot to the class of its signature, and an
//!     "adapters" table indexed by (target, class). Encoding each shadow as element segments
//!     instead costs a function index per slot per target (~5% of ruby.wasm, 33 targets x
//!     8,775 slots); this costs under 1%. The shadows are the module's own (never exported):
//!     a host sees only the original table.
//!   * `mvp` (WebAssembly 1.0: no extra table, no `table.get/set`, no tail call unless the run
//!     allows it): the views are appended to the table itself, `len + 1` slots each after its
//!     original size, written by plain element segments of function indices; the table's
//!     limits grow by that much. A site adds the view's base to the index. When the host
//!     can see the table (exported or imported), a view never holds a function of the
//!     program: where it would hold entry `f`, it holds a *direct caller* of `f` (typed as `f`,
//!     it calls `f` with its arguments; one per function: a frame more per matching call, as
//!     the forwarder costs an entry added at run time). A host finds a function's pointer
//!     by scanning the table for it (Emscripten's `getFunctionAddress` takes the last slot
//!     holding it, for every side module's GOT.func import, `dlsym` and `addFunction`); with
//!     `f` itself in a view, it would get a view slot: a pointer that compares unequal to the
//!     module's own `&f`, and that a site sends to the forwarder, which traps on it.
//! - the site's index goes to the view only below the table's link-time length `len` (the
//!   slots its element segments fill); any other index goes to the view's last slot, a
//!   *forwarder* typed `T` that makes the original call (`call_indirect (type T)` on the
//!   original table with the stored index). A static table's shadow needs no bound: it has the
//!   table's size, and an index past it traps as before. The bound is a `select`, no branch:
//!   `index < len ? index : len`. In the `mvp` design the forwarder first turns an index that
//!   points into the appended views into -1, and every other call through the table (sites
//!   that are not adapted) does the same, so such an index traps out of bounds as it did
//!   before the table grew.
//!
//! Tables that change at run time. A table that is imported, exported or grown by code
//! (Emscripten's `__indirect_function_table`: side modules loaded by `dlopen`, `addFunction`, a
//! host's `Table.set`) keeps its link-time entries in its views, and sends every other index to
//! the forwarder, so entries added later are called exactly as before: a matching call costs
//! what it costs through a static table, not a function call (Pyodide's dispatch function cost
//! 1.20x its eval time). In those views the empty slots and the entries no cast fixes hold the
//! forwarder too (not the entry), so a slot the host fills later is called as before. The
//! design assumes what Emscripten does: slots are added with `table.grow`, and the only slots
//! written again are ones added at run time (`removeFunction`/`addFunction` reuse slots they
//! appended; `dlopen` places a side module at `__table_base`, past the link-time part). An entry
//! present at instantiation that the host replaces later is still reached through its view (the
//! old entry, or its adapter). Code in the module that writes computed slots
//! (`table.set/fill/copy/init`) breaks the assumption: such a table is left alone, with a
//! warning, unless GC is allowed (below). In the `mvp` design an exported table is larger than
//! before (by the views): the host sees that size, and appends after the views.
//!
//! Entries added at run time are adapted where the engine can tell their type: when the run
//! allows GC (the input uses it, or `--enable-gc`), the forwarder reads the entry with
//! `table.get`, calls it as before when it is a `T` (`ref.test`), and otherwise tests it for
//! each signature `U` it may be cast from ([`crate::sig::run_time_candidates`]: the module's
//! castable signatures and the common C variants of `T`) and calls the `(U, T)` adapter on a
//! match; anything else (null, out of range, not castable, a signature not tested) makes the
//! original call and traps as before. A table of unknown contents (written by code, or filled
//! by position-independent segments: an Emscripten side module) is then adapted entirely
//! through the forwarder; without GC a side module is refused (naming `--enable-gc`) and any
//! other such table is left alone with a warning. Without GC the report and `inspect` say
//! that entries added at run time are not adapted.
//!
//! Why every execution that worked is unchanged: a call that did not trap called an entry
//! whose type is `T`. Below `len`, its view holds that same entry (copied at instantiation, or
//! written by the same element segments; in a host-visible table's views, a direct caller
//! that passes its arguments to that entry), so the same function runs with the same arguments;
//! from `len` on (and for slots empty or mismatched at link time in a changing table), the
//! forwarder makes that same call on the original table. With GC, `ref.test (ref T)` succeeds
//! exactly for the entries `call_indirect (type T)` accepts, and those are called unchanged.
//! Calls that trapped because the entry was null, out of range, or of a non-castable type reach
//! the same entry through `call_indirect (type T)` (in the view, or on the original table from
//! the forwarder) and trap the same way; in the `mvp` design an index that would now land in
//! the views is turned into -1 first; no host can get such an index from a lookup, since the
//! views of a table it sees hold none of its functions. Only calls that trapped on a castable mismatch now run,
//! through an adapter. The index global is written immediately before the call and read first
//! thing by the adapter or the forwarder (which passes it to the adapter untouched), so nested
//! calls cannot disturb it.
//!
//! `--fpcast-diagnose`: mismatched entries no cast can fix get, in the view, a reporter typed
//! `T` instead of the original entry; sites also record their function in a global. The
//! reporter prints `wasmfix: indirect call type mismatch in <caller>: expected <T>,
//! table[<i>] = <entry> has <U>` (when the module imports WASI `fd_write`) and traps on
//! `unreachable` rather than on the engine's type check: the call still never runs. It covers
//! entries present at link time.
//!
//! `--fpcast-trace`: every castable mismatch that runs prints, once per (table, slot, call
//! signature), `wasmfix: fpcast: <caller> called slot <N> (<callee>) as <T> but it is <U>` on
//! stderr, then calls the entry through its adapter as without the option. A castable link-time
//! entry gets, in `T`'s view, a tracer of its own in place of the adapter: one bit of an i64
//! global guards its line, then it calls the adapter. An entry typed at run time (GC) is
//! reported by the forwarder before it calls the adapter, guarded by the slot's entry in a
//! private table (see [`Trace`]). Sites store their function's name in a global for the line.
//! The lines are report-mode messages (`crate::diag`): the memory they borrow is put back, so
//! the program's own behaviour, stdout included, is unchanged. A module that cannot print (no
//! WASI `fd_write`) refuses the option. Without the option nothing of this is emitted.
//!
//! Measured (`python3 bench/bench.py --sections pyodide`, quiet machine, at eabdadf: every
//! variant an instance in one node process per round, calls paired, 5 rounds x 40 calls,
//! median paired ratio ± half its 95% interval; see docs/benchmarks.md#pyodide). Pyodide
//! 314.0.7, outputs identical: `tables` 1.019x ±0.5% (+2.83% size), `mvp` 1.079x ±0.8%
//! (+19.2%; 1.011x, +15.0% at b06b7b0, before its views of an exported table held direct
//! callers), default pipeline 1.042x ±1.3% (+5.15%), the original against itself 1.000x
//! ±0.7%; the dispatch function this replaces measured 1.20x. What remains per adapted site: the
//! index stored in a global and bounded with a `select`, and (`tables`) a call through a
//! shadow table instead of table 0. Size favours `tables` (ruby.wasm +0.54% against +5.8%
//! for `mvp`: the views are written as function indices), so it stays the default whenever
//! reference types are allowed.
//!
//! Where `tables`' ~2% goes (throwaway outputs, each with one part of the site removed even
//! where that is unsound, all paired in one run; CPU-time ratios of two runs at load 4–5,
//! ±1–2.5%; docs/benchmarks.md#pyodide): the call through the shadow table alone 1.004–1.015;
//! plus the `global.set` 1.020–1.021; plus the `select` (today's site) 1.019–1.024; the
//! global (and the select) on table 0, no shadow, 1.006–1.009. So the `select` costs nothing
//! measurable; the store and the non-zero table roughly 1% each, at the edge of the noise. Neither can go soundly with the
//! run's features: the global is how an adapter or the forwarder learns the index (per-slot
//! adapters would need a function per castable (slot, signature) pair, and the forwarder still
//! needs the index for every slot from `len` on and every empty or non-castable slot of a
//! changing table, where the host may put a function later), and calling table 0 is the `mvp`
//! design, which on an exported table pays a direct caller per matching call: at c9937fa (load
//! 3–4) `mvp` measured 1.089x ±1.5% (+19.2% size) against 1.011x before its views stopped
//! holding the program's own functions. Leaving such a table alone in `mvp` would cost
//! nothing and adapt nothing; adapting it soundly is what the user asked for, so it stays.
//!
//! Limits: 64-bit tables, tables whose segments write past their size (instantiation traps),
//! sparse tables (a few entries far apart, which would make the class map and the views
//! large), tables with more (entry signature, call signature) pairs than [`pair_budget`]
//! allows for the module's size (the adapters grow with their product, so a small hostile
//! module could make a huge output), and, in the `mvp` design, imported tables (they cannot
//! grow) and views larger than [`view_budget`], are left alone, with a warning.

use super::{Pass, PassCx, PassReport};
use crate::diag::{
    Diagnostics, Message, OnError, RECORD_SCRATCH, REPORT_MAX, StoredBytes, shorten, store_bytes,
    store_text,
};
use crate::edit::{BodyCx, BodyRewriter, ElementItems, NewElement, NewFunction, Sees};
use crate::facts::TableFacts;
use crate::features::Feature;
use crate::module::Module;
use crate::sig::{self, castable};
use anyhow::{Result, bail};
use std::borrow::Cow;
use std::collections::HashMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, ConstExpr, Function, GlobalType, HeapType, Instruction, RefType, TableType, ValType,
};
use wasmparser::FuncType;

pub struct Fpcast;

/// Where the per-signature views of an adapted table live (`--fpcast-design`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// One shadow table per call-site signature (reference types).
    Tables,
    /// The views appended to the adapted table itself (WebAssembly 1.0).
    Mvp,
}

impl Design {
    pub const ALL: [Design; 2] = [Design::Tables, Design::Mvp];

    pub fn name(self) -> &'static str {
        match self {
            Design::Tables => "tables",
            Design::Mvp => "mvp",
        }
    }

    pub fn from_name(name: &str) -> Option<Design> {
        Design::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// What may change in a table while the module runs, which decides how its calls are adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Nothing: not imported, not exported, and no instruction in the code changes it.
    Static,
    /// Slots may be added (by the host or `table.grow`) and empty slots filled; the entries
    /// present at instantiation stay where they are.
    Appended,
    /// Any slot: code writes slots it computes (`table.set/fill/copy/init`), or the element
    /// segments' offsets are not constants (position-independent code): no entry is known.
    Unknown,
}

/// One call-site signature `T` adapted on a table.
struct Target {
    sig: FuncType,
    /// A type index that spells `T`.
    ty: u32,
    sites: usize,
    /// With GC: the signatures an entry found at run time is tested for, in order.
    run_time: Vec<FuncType>,
}

/// The adapted signatures of one table.
struct TablePlan<'f> {
    table: &'f TableFacts,
    reach: Reach,
    /// Class 0 is "no known function"; class c ≥ 1 is `classes[c - 1]`: a signature present
    /// in the table, with one of the type indices that spell it.
    classes: Vec<(FuncType, u32)>,
    /// Class of every slot up to the last filled one: the link-time part, `len` slots.
    slot_class: Vec<u32>,
    targets: Vec<Target>,
}

impl TablePlan<'_> {
    /// Slots filled at link time end before `len`.
    fn len(&self) -> u32 {
        self.slot_class.len() as u32
    }

    /// (entry signature, call signature) pairs the plan may need an adapter or an item for.
    fn pairs(&self) -> usize {
        self.targets
            .iter()
            .map(|t| self.classes.len() + 1 + t.run_time.len())
            .sum()
    }

    /// Slots the WebAssembly 1.0 design appends to the table: per target, a view of the
    /// link-time part and the forwarder after it.
    fn view_slots(&self) -> u64 {
        self.targets.len() as u64 * (self.len() as u64 + 1)
    }
}

/// How the call sites of one `(table, T)` pair are rewritten.
#[derive(Clone, Copy)]
enum Site {
    /// `global.set index; global.get index; call_indirect (type T) shadow`.
    Shadow { table: u32 },
    /// The same, with indices from `len` on sent to `shadow[len]`, the forwarder.
    Bounded { table: u32, len: u32 },
    /// On the original table: slot i < len goes to `base + i`, any other to the forwarder at
    /// `base + len`.
    View { table: u32, base: u32, len: u32 },
    /// `global.set index; call forwarder`.
    Forward { func: u32 },
    /// A call not adapted, on a table with views appended: an index that points into the
    /// views (`start`, `span` slots) becomes -1, so it traps out of bounds as before.
    Guard { start: u32, span: u32 },
}

impl Pass for Fpcast {
    fn name(&self) -> &'static str {
        "fpcast"
    }

    fn description(&self) -> &'static str {
        "function-pointer casts call with C semantics instead of trapping"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let m = cx.module;
        let facts = cx.facts();
        if facts.applied.contains_key("fpcast") {
            return Ok(PassReport {
                pass: self.name(),
                summary: "already applied by an earlier wasmfix run".into(),
                warnings: Vec::new(),
                details: serde_json::json!({ "signatures": [] }),
            });
        }
        let code = facts.code(m);
        let design = match cx.options.fpcast_design {
            Some(d) => d,
            None if cx.allows(Feature::ReferenceTypes) => Design::Tables,
            None => Design::Mvp,
        };
        let gc = cx.allows(Feature::Gc);
        let diagnose = cx.options.fpcast_diagnose;
        let trace = cx.options.fpcast_trace;
        let mut warnings = Vec::new();
        let mut plans = Vec::new();
        let mut pairs_total = 0;
        for t in &facts.tables {
            let site_types: Vec<(u32, usize)> = code
                .indirect_sites
                .iter()
                .filter(|((_, table), _)| *table == t.index)
                .map(|(&(ty, _), &n)| (ty, n))
                .collect();
            if site_types.is_empty() {
                continue;
            }
            if m.tables[t.index as usize].table64 {
                warnings.push(format!(
                    "table {} is a 64-bit table: casts through it are not adapted",
                    t.index
                ));
                continue;
            }
            if m.tables[t.index as usize].element_type != wasmparser::RefType::FUNCREF {
                warnings.push(format!(
                    "table {} holds {} rather than funcref: casts through it are not adapted",
                    t.index, t.element_type
                ));
                continue;
            }
            // The class map, the views and the diagnostics' slot map cover every slot up to
            // the last filled one: keep them proportional to the module's own element segments.
            let slots = t.contents.keys().next_back().map_or(0, |&s| s + 1);
            if slots > t.initial {
                warnings.push(format!(
                    "table {}: an element segment writes slot {} of a table declared with {} \
                     slots: casts through it are not adapted",
                    t.index,
                    slots - 1,
                    t.initial
                ));
                continue;
            }
            if slots > 4 * t.filled_slots as u64 + 4096 {
                warnings.push(format!(
                    "table {} is sparse ({} entries spread over {slots} slots): casts through it \
                     are not adapted",
                    t.index, t.filled_slots
                ));
                continue;
            }
            let reach = if t.unknown_segments > 0 || code.table_written_by_code(t.index) {
                Reach::Unknown
            } else if t.changes_at_run_time(code) {
                Reach::Appended
            } else {
                Reach::Static
            };
            if reach == Reach::Unknown && !gc {
                if t.unknown_segments > 0 && !facts.pic_markers.is_empty() {
                    bail!(
                        "table {} is filled at run time (element segments at non-constant \
                         offsets: position-independent code, such as an Emscripten side module), \
                         so the types of its entries are known only at run time: adapting the \
                         casts through it needs ref.test, which needs gc: enable it with \
                         --enable-gc",
                        t.index
                    );
                }
                warnings.push(if t.unknown_segments > 0 {
                    format!(
                        "table {} is filled by element segments at offsets that are not \
                         constants: casts through it are not adapted (with --enable-gc they \
                         are, typed at run time by ref.test)",
                        t.index
                    )
                } else {
                    format!(
                        "table {} is written by code at computed slots (table.set/fill/copy/\
                         init), so an entry may not be the one it was at instantiation: casts \
                         through it are not adapted (with --enable-gc they are, typed at run \
                         time by ref.test)",
                        t.index
                    )
                });
                continue;
            }
            if design == Design::Mvp && reach != Reach::Unknown && t.imported {
                warnings.push(format!(
                    "table {} is imported, so it cannot grow to hold the views of the \
                     WebAssembly 1.0 design: casts through it are not adapted \
                     (--enable-reference-types allows shadow tables)",
                    t.index
                ));
                continue;
            }
            let Some(plan) = plan_table(m, t, &site_types, reach, gc, diagnose) else {
                continue;
            };
            let pairs = plan.pairs();
            if pairs_total + pairs > pair_budget(m) {
                warnings.push(format!(
                    "table {}: {} call signatures x {} entry signatures to adapt, more than the {} pairs allowed for a module of {} bytes: casts through it are not adapted",
                    t.index,
                    plan.targets.len(),
                    pairs / plan.targets.len().max(1),
                    pair_budget(m),
                    m.bytes.len()
                ));
                continue;
            }
            if design == Design::Mvp && reach != Reach::Unknown {
                let limit = view_budget(m);
                let grown = t.initial + plan.view_slots();
                if plan.view_slots() > limit || grown > MAX_TABLE_SIZE {
                    warnings.push(format!(
                        "table {}: the WebAssembly 1.0 design would append {} slots ({} call \
                         signatures x {} slots), more than the {limit} allowed for a module of \
                         {} bytes or than engines allow in a table: casts through it are not \
                         adapted (--enable-reference-types allows shadow tables)",
                        t.index,
                        plan.view_slots(),
                        plan.targets.len(),
                        plan.len() + 1,
                        m.bytes.len()
                    ));
                    continue;
                }
            }
            pairs_total += pairs;
            plans.push(plan);
        }
        if let Some(w) = erased_cast_targets(m, facts, &plans) {
            warnings.push(w);
        }
        if plans.is_empty() {
            return Ok(PassReport {
                pass: self.name(),
                summary: "no call_indirect can reach a castable entry of another type".into(),
                warnings,
                details: serde_json::json!({ "signatures": [] }),
            });
        }

        let shadow_tables =
            design == Design::Tables && plans.iter().any(|p| p.reach != Reach::Unknown);
        if shadow_tables {
            cx.use_feature(
                Feature::ReferenceTypes,
                "fpcast's shadow tables (--fpcast-design tables)",
            )?;
        }
        if plans
            .iter()
            .any(|p| p.targets.iter().any(|t| !t.run_time.is_empty()))
        {
            cx.use_feature(
                Feature::Gc,
                "fpcast's ref.test of entries added at run time",
            )?;
        }
        let tail_calls = cx.allows(Feature::TailCall);
        if tail_calls {
            cx.use_feature(Feature::TailCall, "fpcast adapters")?;
        }
        let index_global = cx.edits.add_i32_global(m, true, 0);
        cx.edits.name_global(index_global, "wasmfix:fpcast_index");
        let diagnose = if diagnose {
            let d = Diagnose::new(cx, &plans);
            if d.is_none() {
                warnings.push(
                    "--fpcast-diagnose: the module does not import WASI fd_write (or has no \
                     32-bit memory), so mismatches trap without a message"
                        .into(),
                );
            }
            d
        } else {
            None
        };
        let trace = if trace {
            match Trace::new(cx, &code.functions_with_indirect_calls) {
                Some(t) => Some(t),
                None => bail!(
                    "--fpcast-trace: the module cannot print (it imports no WASI fd_write, or \
                     has no 32-bit memory of at least 4 KiB), so casts cannot be traced"
                ),
            }
        } else {
            None
        };
        let mut sites: HashMap<(u32, u32), Site> = HashMap::new();
        let mut report = Vec::new();
        let mut adapters_total = 0;
        let mut init = Function::new([(2, ValType::I32), (1, ValType::FUNCREF)]);
        let mut init_used = false;
        let mut not_adapted_at_run_time = Vec::new();
        // (table, slots appended to it): what a host sees of the WebAssembly 1.0 design.
        let mut views = Vec::new();
        for plan in &plans {
            let built = build_table(
                cx,
                plan,
                design,
                index_global,
                Messages {
                    diagnose: diagnose.as_ref(),
                    trace: trace.as_ref(),
                },
                &mut init,
                tail_calls,
            );
            init_used |= built.uses_init;
            adapters_total += built.adapters.len();
            let run_time_entries = match plan.reach {
                Reach::Static => "none: the table cannot change",
                _ if gc => "adapted: typed at run time with ref.test",
                _ => {
                    not_adapted_at_run_time.push(plan.table.index);
                    "not adapted (they keep trapping on a cast): --enable-gc types them with ref.test"
                }
            };
            if let Some((start, span)) = built.views {
                views.push((plan.table.index, span));
                // Every other call through the table must not reach the views either.
                for &(ty, table) in code.indirect_sites.keys() {
                    if table == plan.table.index {
                        sites.insert((ty, table), Site::Guard { start, span });
                    }
                }
            }
            for (k, target) in plan.targets.iter().enumerate() {
                let site = built.sites[k];
                for ty in 0..m.types.len() as u32 {
                    if m.func_type(ty) == Some(&target.sig) {
                        sites.insert((ty, plan.table.index), site);
                    }
                }
                let adapters: Vec<String> = built
                    .adapters
                    .iter()
                    .filter(|(tk, _)| *tk == k)
                    .map(|(_, u)| format!("{u} -> {}", sig::show(&target.sig)))
                    .collect();
                report.push(serde_json::json!({
                    "table": plan.table.index,
                    "signature": sig::show(&target.sig),
                    "sites": target.sites,
                    "mode": built.mode,
                    "run_time_entries": run_time_entries,
                    "adapters": adapters,
                }));
            }
        }
        if init_used {
            if let Some(start) = m.start {
                init.instruction(&Instruction::Call(start));
            }
            init.instruction(&Instruction::End);
            let init_type = cx.edits.func_type(m, FuncType::new([], []));
            let init_func = cx.edits.add_function(
                m,
                NewFunction {
                    type_index: init_type,
                    body: init,
                    name: "wasmfix:fpcast_init".into(),
                },
            );
            cx.edits.set_start(init_func);
        }
        let adapted_sites: usize = plans.iter().flat_map(|p| &p.targets).map(|t| t.sites).sum();
        cx.edits.record_applied(
            "fpcast",
            serde_json::json!({
                "sites": adapted_sites,
                "adapters": adapters_total,
                "design": design.name(),
                "run_time_entries_adapted": gc,
                "views": views,
            }),
        );
        cx.edits.add_rewriter(Box::new(SiteRewriter {
            sites,
            index_global,
            caller_global: diagnose.as_ref().map(|d| d.caller_global),
            trace_caller: trace.map(|t| (t.caller_global, t.callers)),
            functions: &code.functions_with_indirect_calls,
            local: None,
        }));
        let mut summary = format!(
            "{} call_indirect sites of {} signatures now call castable entries through {} adapters ({} design)",
            adapted_sites,
            report.len(),
            adapters_total,
            design.name()
        );
        if !not_adapted_at_run_time.is_empty() {
            summary.push_str(&format!(
                "; entries added at run time to table {} are not adapted (--enable-gc would type them with ref.test)",
                not_adapted_at_run_time
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(PassReport {
            pass: self.name(),
            summary,
            warnings,
            details: serde_json::json!({ "design": design.name(), "signatures": report }),
        })
    }
}

/// Table entries whose whole body is `unreachable` where there is evidence that a post-link
/// optimizer made them so: what `wasm-opt -O` leaves of a function it proved callable only
/// through a mismatched `call_indirect` (a cast to it cannot be repaired). Such bodies are also
/// written by hand (wasi-libc's `__SIG_ERR`, the destructor of an abstract C++ class), so
/// without evidence nothing is said. Evidence is either of:
/// - the producers section names binaryen or wasm-opt;
/// - no `call_indirect` in the module has the entry's signature, so only a cast can call it
///   (what makes wasm-opt empty a table entry).
fn erased_cast_targets(
    m: &Module<'_>,
    facts: &crate::facts::Facts,
    plans: &[TablePlan<'_>],
) -> Option<String> {
    const UNREACHABLE_BODY: [u8; 3] = [0x00, 0x00, 0x0b];
    let optimized = facts.producers.iter().any(|(_, values)| {
        values.iter().any(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name.contains("binaryen") || name.contains("wasm-opt")
        })
    });
    let called: Vec<&FuncType> = facts
        .code(m)
        .indirect_sites
        .keys()
        .filter_map(|&(ty, _)| m.func_type(ty))
        .collect();
    let only_cast = |f: u32| m.func_sig(f).is_some_and(|u| !called.contains(&u));
    let mut erased: Vec<u32> = plans
        .iter()
        .flat_map(|p| p.table.contents.values().copied())
        .filter(|&f| m.body(f).is_some_and(|b| b.as_bytes() == UNREACHABLE_BODY))
        .filter(|&f| optimized || only_cast(f))
        .collect();
    erased.sort_unstable();
    erased.dedup();
    if erased.is_empty() {
        return None;
    }
    let names: Vec<String> = erased
        .iter()
        .take(4)
        .map(|&f| facts.function_name(f))
        .collect();
    let more = if erased.len() > 4 {
        format!(" and {} more", erased.len() - 4)
    } else {
        String::new()
    };
    let evidence = if optimized {
        "the producers section names binaryen (wasm-opt)"
    } else {
        "no call_indirect has their signature, so only a function-pointer cast can call them, \
         which is when wasm-opt -O empties a function"
    };
    Some(format!(
        "{} table entries ({}{more}) have a body that is only `unreachable`, and {evidence}: if \
         a post-link optimizer emptied them, the casts that reach them still trap: run wasmfix \
         before wasm-opt (clang runs wasm-opt after linking whenever it is on PATH)",
        erased.len(),
        names.join(", ")
    ))
}

/// How many (entry signature, call signature) pairs fpcast adapts in a module: each pair costs
/// an adapter or a table item, so the output and the memory to build it stay proportional to
/// the input. Real modules stay far below it (CPython and Ruby have a few thousand castable
/// pairs in modules of several MB); a 64 KiB module may have 1,024.
fn pair_budget(m: &Module<'_>) -> usize {
    (m.bytes.len() / 64).max(1024)
}

/// How many slots the WebAssembly 1.0 design may append to a table: each is a function index
/// in an element segment (2–3 bytes), so the output stays within a few times the input
/// (ruby.wasm: 33 signatures x 8,776 slots = 290,000 slots for 16.6 MB).
fn view_budget(m: &Module<'_>) -> u64 {
    (m.bytes.len() as u64).max(1 << 16)
}

/// The largest table V8 accepts (wasmtime's default limit is higher).
const MAX_TABLE_SIZE: u64 = 10_000_000;

fn plan_table<'f>(
    m: &Module<'_>,
    t: &'f TableFacts,
    site_types: &[(u32, usize)],
    reach: Reach,
    gc: bool,
    diagnose: bool,
) -> Option<TablePlan<'f>> {
    let mut classes: Vec<(FuncType, u32)> = Vec::new();
    let mut slot_class = Vec::new();
    if reach != Reach::Unknown {
        let len = t.contents.keys().next_back().map_or(0, |&s| s as usize + 1);
        slot_class = vec![0u32; len];
        for (&slot, &f) in &t.contents {
            let ty = m.func_types[f as usize];
            let Some(sig) = m.func_type(ty) else { continue };
            let class = match classes.iter().position(|(s, _)| s == sig) {
                Some(c) => c,
                None => {
                    classes.push((sig.clone(), ty));
                    classes.len() - 1
                }
            };
            slot_class[slot as usize] = class as u32 + 1;
        }
    }
    // The module's own function signatures, each once, in type index order.
    let mut known: Vec<&FuncType> = Vec::new();
    for ty in 0..m.types.len() as u32 {
        if let Some(f) = m.func_type(ty)
            && !known.contains(&f)
        {
            known.push(f);
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for &(ty, n) in site_types {
        let Some(sig_t) = m.func_type(ty) else {
            continue;
        };
        if let Some(target) = targets.iter_mut().find(|x| &x.sig == sig_t) {
            target.sites += n;
            continue;
        }
        let run_time = if gc && reach != Reach::Static {
            sig::run_time_candidates(sig_t, known.iter().copied())
        } else {
            Vec::new()
        };
        // With --fpcast-diagnose every site that can reach another signature is rewritten,
        // so that a mismatch no cast fixes can be reported.
        let adapt = |u: &FuncType| castable(u, sig_t) || diagnose && u != sig_t;
        if !classes.iter().any(|(u, _)| adapt(u)) && run_time.is_empty() {
            continue;
        }
        targets.push(Target {
            sig: sig_t.clone(),
            ty,
            sites: n,
            run_time,
        });
    }
    (!targets.is_empty()).then_some(TablePlan {
        table: t,
        reach,
        classes,
        slot_class,
        targets,
    })
}

/// What fpcast prints from inside the module: `--fpcast-diagnose`, `--fpcast-trace`.
#[derive(Clone, Copy)]
struct Messages<'d> {
    diagnose: Option<&'d Diagnose>,
    trace: Option<&'d Trace>,
}

struct BuiltTable {
    /// Per target k: how its sites are rewritten.
    sites: Vec<Site>,
    /// (target k, callee signature) of every adapter made.
    adapters: Vec<(usize, String)>,
    /// For the report: where the views live.
    mode: &'static str,
    /// Whether it appended code to the start function that fills shadow tables.
    uses_init: bool,
    /// The slots appended to the table itself: (first, count).
    views: Option<(u32, u32)>,
}

/// Adds what adapts the casts through one table: the adapters, the forwarders, and either the
/// shadow tables (with the adapters table and the class map, filled by code appended to
/// `init`) or the views appended to the table itself.
fn build_table(
    cx: &mut PassCx<'_, '_, '_>,
    plan: &TablePlan<'_>,
    design: Design,
    index_global: u32,
    messages: Messages<'_>,
    init: &mut Function,
    tail_calls: bool,
) -> BuiltTable {
    let Messages { diagnose, trace } = messages;
    let m = cx.module;
    let table = plan.table.index;
    let len = plan.len();
    let mut adapters = Vec::new();
    // Adapter (U, T) of target k, by U.
    let mut adapter_of: Vec<HashMap<FuncType, u32>> = Vec::new();
    for (k, target) in plan.targets.iter().enumerate() {
        let mut made: HashMap<FuncType, u32> = HashMap::new();
        let class_sigs = plan.classes.iter().map(|(s, ty)| (s, Some(*ty)));
        let run_time = target.run_time.iter().map(|s| (s, None));
        for (sig_u, ty_u) in class_sigs.chain(run_time) {
            if !castable(sig_u, &target.sig) || made.contains_key(sig_u) {
                continue;
            }
            let ty_u = ty_u.unwrap_or_else(|| cx.edits.func_type(m, sig_u.clone()));
            let body = adapter_body(sig_u, ty_u, &target.sig, table, index_global, tail_calls);
            let name = format!(
                "wasmfix:adapt {} as {}",
                sig::show(sig_u),
                sig::show(&target.sig)
            );
            let f = cx.edits.add_function(
                m,
                NewFunction {
                    type_index: target.ty,
                    body,
                    name,
                },
            );
            made.insert(sig_u.clone(), f);
            adapters.push((k, sig::show(sig_u)));
        }
        adapter_of.push(made);
    }

    // The WebAssembly 1.0 design appends one view of `len + 1` slots per target after the
    // table's original slots; indices that land there from elsewhere must trap as before.
    let views_at = plan.table.initial as u32;
    let span = len + 1;
    let views = design == Design::Mvp && plan.reach != Reach::Unknown;
    let out_of_view = views.then_some((views_at, plan.targets.len() as u32 * span));
    let needs_forwarder = plan.reach != Reach::Static || views;
    let forwarders: Vec<Option<u32>> = plan
        .targets
        .iter()
        .enumerate()
        .map(|(k, target)| {
            needs_forwarder.then(|| {
                let tests: Vec<(u32, u32, &FuncType)> = target
                    .run_time
                    .iter()
                    .filter_map(|u| {
                        let a = *adapter_of[k].get(u)?;
                        Some((a, cx.edits.func_type(m, u.clone()), u))
                    })
                    .collect();
                let run_time = RunTimeTests {
                    tests: &tests,
                    trace: trace.map(|t| (t, plan.reach)),
                };
                forwarder(
                    cx,
                    target,
                    table,
                    index_global,
                    out_of_view,
                    run_time,
                    tail_calls,
                )
            })
        })
        .collect();

    // What slot i of target k's view holds, by the class of its entry at link time (`None`:
    // the entry itself): a matching entry stays; a castable one gets its adapter; with
    // --fpcast-diagnose a mismatch no cast fixes gets a reporter. Where the table may change,
    // empty slots and other mismatches get the forwarder, which makes the original call on
    // whatever the slot holds by then (views need it for empty slots too: they are never
    // null, so the trap is the original table's).
    let dynamic = plan.reach != Reach::Static;
    let mut class_items: Vec<Vec<Option<u32>>> = Vec::new();
    for (k, target) in plan.targets.iter().enumerate() {
        let forward = forwarders[k];
        let mut items = vec![forward.filter(|_| dynamic || views)];
        for (sig_u, _) in &plan.classes {
            items.push(if sig_u == &target.sig {
                None
            } else if let Some(&a) = adapter_of[k].get(sig_u) {
                Some(a)
            } else if let Some(d) = diagnose {
                Some(d.reporter(cx, sig_u, target, plan, index_global))
            } else {
                forward.filter(|_| dynamic)
            });
        }
        class_items.push(items);
    }

    // --fpcast-trace: per target k, the slots whose link-time entry is called through an
    // adapter, each with its own tracer (which prints once, then calls the adapter).
    let mut tracers: Vec<Vec<(u32, u32)>> = vec![Vec::new(); plan.targets.len()];
    if let Some(trace) = trace {
        for (k, target) in plan.targets.iter().enumerate() {
            for (slot, &class) in plan.slot_class.iter().enumerate() {
                let Some((sig_u, _)) = class.checked_sub(1).map(|c| &plan.classes[c as usize])
                else {
                    continue;
                };
                let (Some(&adapter), Some(&callee)) = (
                    adapter_of[k].get(sig_u),
                    plan.table.contents.get(&(slot as u64)),
                ) else {
                    continue;
                };
                let tracer = trace.link_time_tracer(
                    cx,
                    LinkTimeCast {
                        table,
                        slot: slot as u32,
                        callee,
                        entry: sig_u,
                        target,
                        adapter,
                    },
                    tail_calls,
                );
                tracers[k].push((slot as u32, tracer));
            }
        }
    }

    if plan.reach == Reach::Unknown {
        let sites = forwarders
            .iter()
            .map(|f| Site::Forward {
                func: f.expect("a table of unknown contents has forwarders"),
            })
            .collect();
        return BuiltTable {
            sites,
            adapters,
            mode: "forwarder",
            uses_init: false,
            views: None,
        };
    }

    if views {
        // Slot i of view k: the item for the entry's class, else the entry; then the forwarder.
        // A host-visible table's views hold only wasmfix's functions: the entry is replaced by
        // its direct caller (see the header), made once per function.
        let host_visible = plan.table.exported || plan.table.imported;
        let mut direct: HashMap<u32, u32> = HashMap::new();
        let mut sites = Vec::new();
        for (k, forward) in forwarders.iter().enumerate() {
            let forward = forward.expect("views have forwarders");
            let base = views_at + k as u32 * span;
            let mut funcs = Vec::with_capacity(span as usize);
            for (slot, &class) in plan.slot_class.iter().enumerate() {
                let entry = plan.table.contents.get(&(slot as u64)).copied();
                funcs.push(match (class_items[k][class as usize], entry) {
                    (Some(f), _) => f,
                    (None, Some(f)) if host_visible => *direct
                        .entry(f)
                        .or_insert_with(|| direct_caller(cx, f, tail_calls)),
                    (None, Some(f)) => f,
                    (None, None) => forward,
                });
            }
            for &(slot, tracer) in &tracers[k] {
                funcs[slot as usize] = tracer;
            }
            funcs.push(forward);
            cx.edits.add_element(NewElement {
                table,
                offset: ConstExpr::i32_const(base as i32),
                items: ElementItems::Functions(funcs),
            });
            sites.push(Site::View { table, base, len });
        }
        let old = &m.tables[table as usize];
        let grown = out_of_view.expect("views").1 as u64;
        cx.edits.set_table_type(
            table,
            TableType {
                element_type: RefType::FUNCREF,
                table64: false,
                minimum: old.initial + grown,
                maximum: old.maximum.map(|max| max + grown),
                shared: false,
            },
        );
        return BuiltTable {
            sites,
            adapters,
            mode: "views in the table",
            uses_init: false,
            views: out_of_view,
        };
    }

    // Shadow tables, filled at instantiation from two compact sources: the class map and the
    // adapters table, whose item (k, c) is what slot i of shadow k holds when slot i's entry
    // is of class c (null: the entry itself).
    let n_classes = plan.classes.len() + 1;
    let mut adapter_items: Vec<ConstExpr> = class_items
        .iter()
        .flatten()
        .map(|item| match item {
            Some(f) => ConstExpr::ref_func(*f),
            None => ConstExpr::ref_null(HeapType::FUNC),
        })
        .collect();
    // --fpcast-trace: the tracers follow, each written over its slot after the fill loop.
    let tracers_at = adapter_items.len();
    adapter_items.extend(
        tracers
            .iter()
            .flatten()
            .map(|&(_, tracer)| ConstExpr::ref_func(tracer)),
    );
    let funcref_table = |size: u64| TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum: size,
        maximum: Some(size),
        shared: false,
    };
    let adapters_table = cx
        .edits
        .add_table(m, funcref_table(adapter_items.len() as u64), None);
    cx.edits.name_table(
        adapters_table,
        format!("wasmfix:fpcast_adapters table {table}"),
    );
    cx.edits.add_element(NewElement {
        table: adapters_table,
        offset: ConstExpr::i32_const(0),
        items: ElementItems::Expressions(RefType::FUNCREF, adapter_items),
    });
    let class_of = class_of_function(cx, plan);

    // A static table's shadows have its size; an appended one's end with the forwarder.
    let (size, filled) = match plan.reach {
        Reach::Static => (plan.table.initial, plan.table.initial),
        _ => (len as u64 + 1, len as u64),
    };
    let mut sites = Vec::new();
    let mut shadows = Vec::new();
    for target in &plan.targets {
        let shadow = cx.edits.add_table(m, funcref_table(size), None);
        cx.edits.name_table(
            shadow,
            format!(
                "wasmfix:fpcast_shadow {} table {table}",
                sig::show(&target.sig)
            ),
        );
        shadows.push(shadow);
        sites.push(match plan.reach {
            Reach::Static => Site::Shadow { table: shadow },
            _ => Site::Bounded { table: shadow, len },
        });
    }

    // for i in 0..filled: c = class_of(i); for each target k: s_k[i] = adapters[k*C + c] or,
    // when that is null, the original entry. Then s_k[len] = adapters[k*C] (the forwarder).
    let (i, c, a) = (0, 1, 2);
    let ins = |f: &mut Function, list: &[Instruction]| {
        for x in list {
            f.instruction(x);
        }
    };
    ins(
        init,
        &[
            Instruction::I32Const(0),
            Instruction::LocalSet(i),
            Instruction::Block(BlockType::Empty),
            Instruction::Loop(BlockType::Empty),
            Instruction::LocalGet(i),
            Instruction::I32Const(filled as i32),
            Instruction::I32GeU,
            Instruction::BrIf(1),
            Instruction::LocalGet(i),
            Instruction::Call(class_of),
            Instruction::LocalSet(c),
        ],
    );
    for (k, &shadow) in shadows.iter().enumerate() {
        ins(
            init,
            &[
                Instruction::LocalGet(i),
                Instruction::LocalGet(c),
                Instruction::I32Const((k * n_classes) as i32),
                Instruction::I32Add,
                Instruction::TableGet(adapters_table),
                Instruction::LocalTee(a),
                Instruction::RefIsNull,
                Instruction::If(BlockType::Result(ValType::FUNCREF)),
                Instruction::LocalGet(i),
                Instruction::TableGet(table),
                Instruction::Else,
                Instruction::LocalGet(a),
                Instruction::End,
                Instruction::TableSet(shadow),
            ],
        );
    }
    ins(
        init,
        &[
            Instruction::LocalGet(i),
            Instruction::I32Const(1),
            Instruction::I32Add,
            Instruction::LocalSet(i),
            Instruction::Br(0),
            Instruction::End,
            Instruction::End,
        ],
    );
    let mut item = tracers_at;
    for (k, &shadow) in shadows.iter().enumerate() {
        for &(slot, _) in &tracers[k] {
            ins(
                init,
                &[
                    Instruction::I32Const(slot as i32),
                    Instruction::I32Const(item as i32),
                    Instruction::TableGet(adapters_table),
                    Instruction::TableSet(shadow),
                ],
            );
            item += 1;
        }
    }
    if plan.reach != Reach::Static {
        for (k, &shadow) in shadows.iter().enumerate() {
            ins(
                init,
                &[
                    Instruction::I32Const(len as i32),
                    Instruction::I32Const((k * n_classes) as i32),
                    Instruction::TableGet(adapters_table),
                    Instruction::TableSet(shadow),
                ],
            );
        }
    }
    BuiltTable {
        sites,
        adapters,
        mode: match plan.reach {
            Reach::Static => "shadow table",
            _ => "shadow table, forwarder from the link-time length on",
        },
        uses_init: true,
        views: None,
    }
}

fn zero(ty: wasmparser::ValType) -> Instruction<'static> {
    use wasmparser::ValType as V;
    match ty {
        V::I32 => Instruction::I32Const(0),
        V::I64 => Instruction::I64Const(0),
        V::F32 => Instruction::F32Const(0.0.into()),
        V::F64 => Instruction::F64Const(0.0.into()),
        V::V128 => Instruction::V128Const(0),
        V::Ref(r) => Instruction::RefNull(
            RoundtripReencoder
                .heap_type(r.heap_type())
                .expect("castable types have encodable heap types"),
        ),
    }
}

/// An adapter typed `t` that calls the entry at `index` of `table`, typed `u`; it tail-calls
/// when nothing needs adapting on the way back and `tail_calls` allows it.
fn adapter_body(
    u: &FuncType,
    ty_u: u32,
    t: &FuncType,
    table: u32,
    index_global: u32,
    tail_calls: bool,
) -> Function {
    use wasmparser::ValType as V;
    let mut f = Function::new([]);
    for (i, &want) in u.params().iter().enumerate() {
        match t.params().get(i) {
            Some(&have) => {
                f.instruction(&Instruction::LocalGet(i as u32));
                match (have, want) {
                    (V::I32, V::I64) => f.instruction(&Instruction::I64ExtendI32U),
                    (V::I64, V::I32) => f.instruction(&Instruction::I32WrapI64),
                    _ => &mut f,
                };
            }
            None => {
                f.instruction(&zero(want));
            }
        }
    }
    f.instruction(&Instruction::GlobalGet(index_global));
    if u.results() == t.results() && tail_calls {
        // Nothing to adapt on the way back: a tail call saves the adapter's frame.
        f.instruction(&Instruction::ReturnCallIndirect {
            type_index: ty_u,
            table_index: table,
        });
        f.instruction(&Instruction::End);
        return f;
    }
    f.instruction(&Instruction::CallIndirect {
        type_index: ty_u,
        table_index: table,
    });
    if u.results() != t.results() {
        if t.results().is_empty() {
            for _ in u.results() {
                f.instruction(&Instruction::Drop);
            }
        } else {
            for &r in t.results() {
                f.instruction(&zero(r));
            }
        }
    }
    f.instruction(&Instruction::End);
    f
}

/// A function of `f`'s type that calls `f` with its arguments: what a view of a host-visible
/// table holds where the table holds `f`, so that `f` itself appears only in its own slots.
fn direct_caller(cx: &mut PassCx<'_, '_, '_>, f: u32, tail_calls: bool) -> u32 {
    let m = cx.module;
    let ty = m.func_types[f as usize];
    let n = m.func_type(ty).map_or(0, |t| t.params().len() as u32);
    let mut code = pass_on(n, f, tail_calls);
    code.push(Instruction::End);
    let name = format!("wasmfix:fpcast_direct {}", cx.facts().function_name(f));
    cx.edits.add_helper_typed(m, &name, ty, &[], &code)
}

/// The end of a function of `n` parameters that calls `f` with them all and returns what it
/// returns: `local.get 0 … local.get n-1; call f` (`return_call f` with tail calls).
fn pass_on(n: u32, f: u32, tail_calls: bool) -> Vec<Instruction<'static>> {
    let mut code: Vec<Instruction> = (0..n).map(Instruction::LocalGet).collect();
    code.push(if tail_calls {
        Instruction::ReturnCall(f)
    } else {
        Instruction::Call(f)
    });
    code
}

/// `forward(args…)` typed T: the call the site made, on the original table with the index
/// the site stored. Indices that point into the views appended to the table (`out_of_view`:
/// start, length) become -1 first, so they trap out of bounds as they did before the table
/// grew. With `tests` (GC), an entry in range that is not a T is tested for each castable
/// signature U in turn and called through the (U, T) adapter on a match.
fn forwarder(
    cx: &mut PassCx<'_, '_, '_>,
    target: &Target,
    table: u32,
    index_global: u32,
    out_of_view: Option<(u32, u32)>,
    run_time: RunTimeTests<'_>,
    tail_calls: bool,
) -> u32 {
    let RunTimeTests { tests, trace } = run_time;
    let t = &target.sig;
    // --fpcast-trace: a table of the entries already reported, by slot.
    let seen = trace.filter(|_| !tests.is_empty()).map(|(trace, reach)| {
        let seen = cx.edits.add_table(
            cx.module,
            TableType {
                element_type: RefType::FUNCREF,
                table64: false,
                minimum: 0,
                maximum: None,
                shared: false,
            },
            None,
        );
        cx.edits.name_table(
            seen,
            format!("wasmfix:fpcast_traced {} table {table}", sig::show(t)),
        );
        (trace, reach, seen)
    });
    let n = t.params().len() as u32;
    let args = || (0..n).map(Instruction::LocalGet);
    let mut code = Vec::new();
    if let Some((start, span)) = out_of_view {
        code.extend([
            Instruction::GlobalGet(index_global),
            Instruction::I32Const(start as i32),
            Instruction::I32Sub,
            Instruction::I32Const(span as i32),
            Instruction::I32LtU,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(-1),
            Instruction::GlobalSet(index_global),
            Instruction::End,
        ]);
    }
    let entry = n;
    if !tests.is_empty() {
        code.extend([
            Instruction::Block(BlockType::Empty),
            Instruction::GlobalGet(index_global),
            Instruction::TableSize(table),
            Instruction::I32GeU,
            Instruction::BrIf(0),
            Instruction::GlobalGet(index_global),
            Instruction::TableGet(table),
            Instruction::LocalTee(entry),
            Instruction::RefTestNonNull(HeapType::Concrete(target.ty)),
            Instruction::BrIf(0),
        ]);
        for &(adapter, ty_u, u) in tests {
            code.extend([
                Instruction::LocalGet(entry),
                Instruction::RefTestNonNull(HeapType::Concrete(ty_u)),
                Instruction::If(BlockType::Empty),
            ]);
            if let Some((trace, reach, seen)) = seen {
                let tracer = trace.run_time_tracer(cx, table, seen, reach, u, t);
                code.extend([
                    Instruction::GlobalGet(index_global),
                    Instruction::LocalGet(entry),
                    Instruction::Call(tracer),
                ]);
            }
            code.extend(args());
            if tail_calls {
                code.push(Instruction::ReturnCall(adapter));
            } else {
                code.extend([Instruction::Call(adapter), Instruction::Return]);
            }
            code.push(Instruction::End);
        }
        code.push(Instruction::End);
    }
    code.extend(args());
    code.push(Instruction::GlobalGet(index_global));
    code.push(if tail_calls {
        Instruction::ReturnCallIndirect {
            type_index: target.ty,
            table_index: table,
        }
    } else {
        Instruction::CallIndirect {
            type_index: target.ty,
            table_index: table,
        }
    });
    code.push(Instruction::End);
    let locals: &[(u32, ValType)] = if tests.is_empty() {
        &[]
    } else {
        &[(1, ValType::FUNCREF)]
    };
    let name = format!("wasmfix:fpcast_forward {} table {table}", sig::show(t));
    cx.edits
        .add_helper_typed(cx.module, &name, target.ty, locals, &code)
}

/// What a forwarder tests an entry found at run time for (GC): `(adapter, type index, U)` for
/// each castable signature U in turn, and with `--fpcast-trace` who reports the cast.
#[derive(Clone, Copy)]
struct RunTimeTests<'a> {
    tests: &'a [(u32, u32, &'a FuncType)],
    trace: Option<(&'a Trace, Reach)>,
}

/// `class_of(slot) -> class` as one `br_table` over the table's filled slots.
fn class_of_function(cx: &mut PassCx<'_, '_, '_>, plan: &TablePlan<'_>) -> u32 {
    let n_classes = plan.classes.len() as u32 + 1;
    // Block c (counted from the innermost) is left by `br c`; after its `end` comes
    // `return c`. The innermost block holds the br_table.
    let mut code = vec![Instruction::Block(BlockType::Empty); n_classes as usize];
    code.push(Instruction::LocalGet(0));
    code.push(Instruction::BrTable(Cow::Borrowed(&plan.slot_class), 0));
    for c in 0..n_classes {
        code.extend([
            Instruction::End,
            Instruction::I32Const(c as i32),
            Instruction::Return,
        ]);
    }
    code.extend([Instruction::Unreachable, Instruction::End]);
    let name = format!("wasmfix:fpcast_class_of table {}", plan.table.index);
    let i32t = wasmparser::ValType::I32;
    cx.edits
        .add_helper(cx.module, &name, (&[i32t], &[i32t]), &[], &code)
}

/// Rewrites the adapted `call_indirect` and `return_call_indirect` sites.
struct SiteRewriter<'f> {
    sites: HashMap<(u32, u32), Site>,
    index_global: u32,
    /// With --fpcast-diagnose: where each site records its function for the report.
    caller_global: Option<u32>,
    /// With --fpcast-trace: where each site records its function's name for the trace, and
    /// the value each function stores ([`Trace::callers`]).
    trace_caller: Option<(u32, HashMap<u32, i64>)>,
    /// Functions with indirect calls, ascending.
    functions: &'f [u32],
    /// The current function's local that holds a site's index (added on first use).
    local: Option<u32>,
}

impl BodyRewriter for SiteRewriter<'_> {
    fn wants(&self, func: u32) -> bool {
        self.functions.binary_search(&func).is_ok()
    }

    fn sees(&self) -> Sees {
        Sees::IndirectCalls
    }

    fn prologue(&mut self, _cx: &mut BodyCx<'_>, _out: &mut Vec<Instruction<'static>>) {
        self.local = None;
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        let (type_index, table_index, tail) = match ins {
            Instruction::CallIndirect {
                type_index,
                table_index,
            } => (type_index, table_index, false),
            Instruction::ReturnCallIndirect {
                type_index,
                table_index,
            } => (type_index, table_index, true),
            other => return out.push(other),
        };
        let Some(&site) = self.sites.get(&(type_index, table_index)) else {
            return out.push(ins);
        };
        if let (Some(g), false) = (self.caller_global, matches!(site, Site::Guard { .. })) {
            out.extend([
                Instruction::I32Const(cx.func as i32),
                Instruction::GlobalSet(g),
            ]);
        }
        if let (Some((g, callers)), false) =
            (&self.trace_caller, matches!(site, Site::Guard { .. }))
        {
            let caller = callers.get(&cx.func).copied();
            out.extend([
                Instruction::I64Const(caller.unwrap_or((cx.func as i64) << 32)),
                Instruction::GlobalSet(*g),
            ]);
        }
        let call = |table_index| {
            if tail {
                Instruction::ReturnCallIndirect {
                    type_index,
                    table_index,
                }
            } else {
                Instruction::CallIndirect {
                    type_index,
                    table_index,
                }
            }
        };
        let g = self.index_global;
        match site {
            Site::Shadow { table } => {
                out.extend([
                    Instruction::GlobalSet(g),
                    Instruction::GlobalGet(g),
                    call(table),
                ]);
            }
            Site::Bounded { table, len } => {
                let i = *self.local.get_or_insert_with(|| cx.add_local(ValType::I32));
                // index < len ? index : len
                out.extend([
                    Instruction::LocalTee(i),
                    Instruction::GlobalSet(g),
                    Instruction::LocalGet(i),
                    Instruction::I32Const(len as i32),
                    Instruction::LocalGet(i),
                    Instruction::I32Const(len as i32),
                    Instruction::I32LtU,
                    Instruction::Select,
                    call(table),
                ]);
            }
            Site::View { table, base, len } => {
                let i = *self.local.get_or_insert_with(|| cx.add_local(ValType::I32));
                // base + (index < len ? index : len)
                out.extend([
                    Instruction::LocalTee(i),
                    Instruction::GlobalSet(g),
                    Instruction::LocalGet(i),
                    Instruction::I32Const(base as i32),
                    Instruction::I32Add,
                    Instruction::I32Const(base.wrapping_add(len) as i32),
                    Instruction::LocalGet(i),
                    Instruction::I32Const(len as i32),
                    Instruction::I32LtU,
                    Instruction::Select,
                    call(table),
                ]);
            }
            Site::Guard { start, span } => {
                let i = *self.local.get_or_insert_with(|| cx.add_local(ValType::I32));
                // index - start >= span ? index : -1
                out.extend([
                    Instruction::LocalTee(i),
                    Instruction::I32Const(-1),
                    Instruction::LocalGet(i),
                    Instruction::I32Const(start as i32),
                    Instruction::I32Sub,
                    Instruction::I32Const(span as i32),
                    Instruction::I32GeU,
                    Instruction::Select,
                    call(table_index),
                ]);
            }
            Site::Forward { func } => {
                out.push(Instruction::GlobalSet(g));
                out.push(if tail {
                    Instruction::ReturnCall(func)
                } else {
                    Instruction::Call(func)
                });
            }
        }
    }
}

/// `--fpcast-diagnose`: reporters for mismatches no cast can fix. Names of every function and
/// each table's slot → function map live in the diagnostics text segment.
struct Diagnose {
    caller_global: u32,
    /// `name_of(function)`: appends a function's name (or `function N`) to the message.
    name_of: u32,
    stored: StoredBytes,
    /// Per table index: offset of its slot → function map (u32 little-endian per slot).
    slot_maps: HashMap<u32, u32>,
}

impl Diagnose {
    fn new(cx: &mut PassCx<'_, '_, '_>, plans: &[TablePlan<'_>]) -> Option<Diagnose> {
        let m = cx.module;
        let facts = cx.facts();
        let mut records = Vec::with_capacity(m.num_funcs() as usize * 8);
        for f in 0..m.num_funcs() {
            let (offset, len) = match facts.function_names.get(&f) {
                Some(name) => store_text(m, cx.edits, name)?,
                None => (0, 0),
            };
            records.extend(offset.to_le_bytes());
            records.extend(len.to_le_bytes());
        }
        let (stored, records_at) = store_bytes(m, cx.edits, &records)?;
        let mut slot_maps = HashMap::new();
        for plan in plans {
            let bytes: Vec<u8> = (0..plan.slot_class.len() as u64)
                .flat_map(|slot| {
                    plan.table
                        .contents
                        .get(&slot)
                        .copied()
                        .unwrap_or(u32::MAX)
                        .to_le_bytes()
                })
                .collect();
            slot_maps.insert(plan.table.index, store_bytes(m, cx.edits, &bytes)?.1);
        }
        let caller_global = cx.edits.add_i32_global(m, true, 0);
        cx.edits.name_global(caller_global, "wasmfix:fpcast_caller");
        // name_of(f): read record f into scratch; print the name, or `function f`.
        let tmp = RECORD_SCRATCH;
        let load = |offset| {
            Instruction::I32Load(wasm_encoder::MemArg {
                offset,
                align: 2,
                target: wasm_encoder::MemArgTarget::Memory(0),
                ordering: None,
            })
        };
        let mut body = read_record(stored, records_at, 8, Instruction::LocalGet(0));
        body.extend([
            Instruction::I32Const(tmp),
            load(4),
            Instruction::If(BlockType::Empty),
        ]);
        body.extend(
            Message::new()
                .stored_text(
                    m,
                    cx.edits,
                    vec![Instruction::I32Const(tmp), load(0)],
                    vec![Instruction::I32Const(tmp), load(4)],
                )
                .instructions,
        );
        body.push(Instruction::Else);
        body.extend(
            Message::new()
                .text(m, cx.edits, "function ")
                .number(m, cx.edits, vec![Instruction::LocalGet(0)])
                .instructions,
        );
        body.extend([Instruction::End, Instruction::End]);
        let i32t = [wasmparser::ValType::I32];
        let name_of = cx
            .edits
            .add_helper(m, "wasmfix:msg_function_name", (&i32t, &[]), &[], &body);
        Some(Diagnose {
            caller_global,
            name_of,
            stored,
            slot_maps,
        })
    }

    /// A function typed `t` that reports calling a `u` entry through a `t` site, then traps.
    fn reporter(
        &self,
        cx: &mut PassCx<'_, '_, '_>,
        u: &FuncType,
        target: &Target,
        plan: &TablePlan<'_>,
        index_global: u32,
    ) -> u32 {
        let t = &target.sig;
        let m = cx.module;
        let slots = self.slot_maps[&plan.table.index];
        let load = Instruction::I32Load(wasm_encoder::MemArg {
            offset: 0,
            align: 2,
            target: wasm_encoder::MemArgTarget::Memory(0),
            ordering: None,
        });
        let mut body = Message::new()
            .text(m, cx.edits, "wasmfix: indirect call type mismatch in ")
            .instructions;
        body.extend([
            Instruction::GlobalGet(self.caller_global),
            Instruction::Call(self.name_of),
        ]);
        body.extend(
            Message::new()
                .text(m, cx.edits, &format!(": expected {}, table[", sig::show(t)))
                .number(m, cx.edits, vec![Instruction::GlobalGet(index_global)])
                .text(m, cx.edits, "] = ")
                .instructions,
        );
        body.extend(read_record(
            self.stored,
            slots,
            4,
            Instruction::GlobalGet(index_global),
        ));
        body.extend([
            Instruction::I32Const(RECORD_SCRATCH),
            load,
            Instruction::Call(self.name_of),
        ]);
        body.extend(
            Message::new()
                .text(m, cx.edits, &format!(" has {}\n", sig::show(u)))
                .trap(m, cx.edits),
        );
        body.push(Instruction::End);
        let name = format!(
            "wasmfix:report_mismatch {} as {}",
            sig::show(u),
            sig::show(t)
        );
        cx.edits.add_helper_typed(m, &name, target.ty, &[], &body)
    }
}

/// Copies record `index` (the value `index` pushes) of a table of `width`-byte records stored at
/// `base` in the messages' text (`stored`) to [`RECORD_SCRATCH`], where the caller loads it.
fn read_record(
    stored: StoredBytes,
    base: u32,
    width: i32,
    index: Instruction<'static>,
) -> Vec<Instruction<'static>> {
    stored.copy(
        [Instruction::I32Const(RECORD_SCRATCH)],
        [
            index,
            Instruction::I32Const(width),
            Instruction::I32Mul,
            Instruction::I32Const(base as i32),
            Instruction::I32Add,
        ],
        [Instruction::I32Const(width)],
    )
}

/// `--fpcast-trace`: every castable mismatch that runs is reported once on stderr, then called
/// with C semantics as without the option:
/// `wasmfix: fpcast: <caller> called slot <N> (<callee>) as <T> but it is <U>`.
///
/// Each adapted site stores its function's name (where it lies in the messages' text) in a
/// global just before the call. A cast is *distinct* by (table, slot, call signature `T`): the
/// slot names the callee, and `T` with the callee's signature names the adapter; the caller
/// printed is the first one that made the cast. The once-guards are exact for that key:
/// - an entry present at link time is reached, in `T`'s view, through a tracer of its own
///   (slot, `T`), which holds one bit of an i64 global ([`Diagnostics::once_flag`]): the bit is
///   clear until the tracer first runs;
/// - an entry found at run time (with GC, typed by the forwarder) is looked up by its slot in a
///   private funcref table of `T`'s forwarder, grown on demand and written with the entry when
///   reported: null means not reported yet. (A reserved area of linear memory would be the
///   other place for a seen-set; the module has none that the program cannot use.)
///
/// The lines are written as report-mode messages ([`OnError::Report`]): the memory they borrow
/// is put back, and nothing the program sees changes but stderr. A line longer than a report
/// message ([`REPORT_MAX`] bytes) is written in several pieces; names in it are cut at
/// [`TRACE_NAME`] bytes.
struct Trace {
    /// i64 global: `(offset << 32) | length` of the calling function's name in the messages'
    /// text, or `index << 32` for a function without a name.
    caller_global: u32,
    /// What each function with adapted sites stores in `caller_global`.
    callers: HashMap<u32, i64>,
    /// `wasmfix:fpcast_trace_caller()`: appends the caller's name, or `function N`.
    print_caller: u32,
}

/// Names in a trace line are cut to this many bytes (a report message holds [`REPORT_MAX`]).
const TRACE_NAME: usize = 160;

/// A piece of a trace line.
enum Piece {
    Text(String),
    /// A decimal number (instructions leaving one i32).
    Number(Vec<Instruction<'static>>),
    /// The calling function's name (or `function N`).
    Caller,
}

/// A castable entry present at link time, called through `target`'s view.
struct LinkTimeCast<'p> {
    table: u32,
    slot: u32,
    callee: u32,
    entry: &'p FuncType,
    target: &'p Target,
    adapter: u32,
}

impl Trace {
    /// `None` when the module cannot print (see [`Diagnostics::get`]).
    fn new(cx: &mut PassCx<'_, '_, '_>, functions: &[u32]) -> Option<Trace> {
        let m = cx.module;
        let facts = cx.facts();
        if !Diagnostics::available(m, cx.edits) {
            return None;
        }
        let mut callers = HashMap::new();
        for &f in functions {
            let packed = match facts.function_names.get(&f) {
                Some(name) if !name.is_empty() => {
                    let (offset, len) = store_text(m, cx.edits, &shorten(name, TRACE_NAME))?;
                    ((offset as i64) << 32) | len as i64
                }
                _ => (f as i64) << 32,
            };
            callers.insert(f, packed);
        }
        let caller_global = cx.edits.add_global(
            m,
            GlobalType {
                val_type: ValType::I64,
                mutable: true,
                shared: false,
            },
            ConstExpr::i64_const(0),
        );
        cx.edits
            .name_global(caller_global, "wasmfix:fpcast_trace_caller");
        let high = || {
            vec![
                Instruction::GlobalGet(caller_global),
                Instruction::I64Const(32),
                Instruction::I64ShrU,
                Instruction::I32WrapI64,
            ]
        };
        let low = || {
            vec![
                Instruction::GlobalGet(caller_global),
                Instruction::I32WrapI64,
            ]
        };
        let mut body = low();
        body.push(Instruction::If(BlockType::Empty));
        body.extend(
            Message::new()
                .stored_text(m, cx.edits, high(), low())
                .instructions,
        );
        body.push(Instruction::Else);
        body.extend(
            Message::new()
                .text(m, cx.edits, "function ")
                .number(m, cx.edits, high())
                .instructions,
        );
        body.extend([Instruction::End, Instruction::End]);
        let print_caller =
            cx.edits
                .add_helper(m, "wasmfix:fpcast_trace_caller", (&[], &[]), &[], &body);
        Some(Trace {
            caller_global,
            callers,
            print_caller,
        })
    }

    /// Instructions that print one line made of `pieces`, as report messages: a piece that
    /// would not fit in the current message starts the next one (long text is cut), so no
    /// piece is dropped.
    fn line(&self, cx: &mut PassCx<'_, '_, '_>, pieces: Vec<Piece>) -> Vec<Instruction<'static>> {
        let (m, edits) = (cx.module, &mut *cx.edits);
        let report = OnError::Report;
        let mut out = Vec::new();
        let mut message = Message::start(m, edits, report);
        let mut room = REPORT_MAX as usize;
        for piece in pieces {
            match piece {
                Piece::Text(text) => {
                    let mut rest = text.as_str();
                    while !rest.is_empty() {
                        let cut = rest.floor_char_boundary(room.min(rest.len()));
                        if cut == 0 {
                            out.extend(message.end(m, edits, report));
                            message = Message::start(m, edits, report);
                            room = REPORT_MAX as usize;
                            continue;
                        }
                        message = message.text(m, edits, &rest[..cut]);
                        room -= cut;
                        rest = &rest[cut..];
                    }
                }
                Piece::Number(_) | Piece::Caller => {
                    // A number takes at most 10 digits; a caller its name or `function N`.
                    let need = match piece {
                        Piece::Caller => TRACE_NAME.max("function ".len() + 10),
                        _ => 10,
                    };
                    if need > room {
                        out.extend(message.end(m, edits, report));
                        message = Message::start(m, edits, report);
                        room = REPORT_MAX as usize;
                    }
                    room -= need;
                    message = match piece {
                        Piece::Number(value) => message.number(m, edits, value),
                        _ => {
                            message
                                .instructions
                                .push(Instruction::Call(self.print_caller));
                            message
                        }
                    };
                }
            }
        }
        out.extend(message.end(m, edits, report));
        out
    }

    /// A function typed `T` that reports the cast the first time it runs, then calls the
    /// adapter with its arguments.
    fn link_time_tracer(
        &self,
        cx: &mut PassCx<'_, '_, '_>,
        cast: LinkTimeCast<'_>,
        tail_calls: bool,
    ) -> u32 {
        let m = cx.module;
        let t = &cast.target.sig;
        let callee = shorten(&cx.facts().function_name(cast.callee), TRACE_NAME).into_owned();
        let line = self.line(
            cx,
            vec![
                Piece::Text("wasmfix: fpcast: ".into()),
                Piece::Caller,
                Piece::Text(format!(
                    " called slot {} ({callee}) as {} but it is {}\n",
                    cast.slot,
                    sig::show(t),
                    sig::show(cast.entry)
                )),
            ],
        );
        let flag =
            Diagnostics::once_flag(m, cx.edits).expect("Trace::new checked the module can print");
        let mut body = flag.guard(line);
        body.extend(pass_on(t.params().len() as u32, cast.adapter, tail_calls));
        body.push(Instruction::End);
        let name = format!(
            "wasmfix:fpcast_trace table {} slot {} as {}",
            cast.table,
            cast.slot,
            sig::show(t)
        );
        cx.edits
            .add_helper_typed(m, &name, cast.target.ty, &[], &body)
    }

    /// `trace(slot, entry)`: reports a cast to an entry the forwarder typed at run time as a
    /// `u`, unless `seen[slot]` (a table of `T`'s forwarder) says it was reported.
    fn run_time_tracer(
        &self,
        cx: &mut PassCx<'_, '_, '_>,
        table: u32,
        seen: u32,
        reach: Reach,
        u: &FuncType,
        t: &FuncType,
    ) -> u32 {
        let (slot, entry) = (0, 1);
        let callee = match reach {
            Reach::Unknown => "not known at link time",
            _ => "added at run time",
        };
        let line = self.line(
            cx,
            vec![
                Piece::Text("wasmfix: fpcast: ".into()),
                Piece::Caller,
                Piece::Text(" called slot ".into()),
                Piece::Number(vec![Instruction::LocalGet(slot)]),
                Piece::Text(format!(
                    " ({callee}) as {} but it is {}\n",
                    sig::show(t),
                    sig::show(u)
                )),
            ],
        );
        // Grow `seen` to hold the slot (when it cannot grow, report without recording); return
        // when the slot holds an entry (reported before); else record the entry and report.
        let mut body = vec![
            Instruction::Block(BlockType::Empty),
            Instruction::Block(BlockType::Empty),
            Instruction::LocalGet(slot),
            Instruction::TableSize(seen),
            Instruction::I32LtU,
            Instruction::BrIf(0),
            Instruction::RefNull(HeapType::FUNC),
            Instruction::LocalGet(slot),
            Instruction::I32Const(1),
            Instruction::I32Add,
            Instruction::TableSize(seen),
            Instruction::I32Sub,
            Instruction::TableGrow(seen),
            Instruction::I32Const(-1),
            Instruction::I32Eq,
            Instruction::BrIf(1),
            Instruction::End,
            Instruction::LocalGet(slot),
            Instruction::TableGet(seen),
            Instruction::RefIsNull,
            Instruction::I32Eqz,
            Instruction::If(BlockType::Empty),
            Instruction::Return,
            Instruction::End,
            Instruction::LocalGet(slot),
            Instruction::LocalGet(entry),
            Instruction::TableSet(seen),
            Instruction::End,
        ];
        body.extend(line);
        body.push(Instruction::End);
        let name = format!(
            "wasmfix:fpcast_trace_run_time {} as {} table {table}",
            sig::show(u),
            sig::show(t)
        );
        let params = [wasmparser::ValType::I32, wasmparser::ValType::FUNCREF];
        cx.edits
            .add_helper(cx.module, &name, (&params, &[]), &[], &body)
    }
}
