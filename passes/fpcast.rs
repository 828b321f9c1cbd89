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
//! on it that can reach a table entry of another castable signature `U`:
//! - one adapter function per `(U, T)` pair actually present, typed `T`: it passes its
//!   arguments on as `U` wants them, calls slot `index` of the original table through
//!   `call_indirect (type U)`, and adapts the result. `index` comes from one global,
//!   `wasmfix:fpcast_index`, written by the call site just before the call.
//! - a shadow table `s_T` the size of the original table. When the original table cannot change
//!   at run time (not imported, not exported, no `table.set/grow/fill/copy/init` in code),
//!   slot *i* of `s_T` holds the original entry when its type is `T` or not castable to `T`,
//!   and the `(U, T)` adapter when it is castable; the call site becomes
//!   `global.set index; global.get index; call_indirect (type T) s_T`.
//!   When the table can change, `s_T` holds only the adapters (null elsewhere) and the site
//!   calls a dispatch function that uses the adapter when `s_T` has one for the slot and
//!   otherwise makes the original call on the original table, so entries added later behave
//!   exactly as before.
//! - the shadow tables are filled at instantiation by a start function (which then calls the
//!   original start function) from two compact sources: a `br_table` function mapping each
//!   slot to the class of its signature, and an "adapters" table indexed by (target, class),
//!   filled by one element segment. Encoding each shadow table as element segments instead
//!   would cost a function index per slot per target: ~5% of ruby.wasm (33 targets x 8,775
//!   slots); this costs under 1%.
//!
//! Why every execution that worked is unchanged: a call that did not trap called an entry
//! whose type is `T`; `s_T` holds that same entry (static mode) or nothing (dynamic mode,
//! original call), so the same function runs with the same arguments. Calls that trapped
//! because the entry was null, out of range, or of a non-castable type reach the same entry
//! (or the original table) through `call_indirect (type T)` and trap the same way. Only calls
//! that trapped on a castable mismatch now run, through an adapter. The index global is
//! written immediately before the call and read first thing by the adapter, so nested calls
//! cannot disturb it.
//!
//! Design choice (DESIGN.md lists three). Shadow tables + index global cost a matching call
//! one `global.set` and one `global.get`. A type-of dispatch (a `br_table` lookup per call)
//! costs a call and a jump-table branch on every indirect call, and `ref.test` needs the GC
//! proposal, which Node 20's V8 does not enable. Tables that change at run time use the
//! dispatch function because a shadow copy would miss later entries.
//!
//! `--fpcast-diagnose`: mismatched entries no cast can fix get, in the shadow table, a reporter
//! typed `T` instead of the original entry; sites also record their function in a global. The
//! reporter prints `wasmfix: indirect call type mismatch in <caller>: expected <T>,
//! table[<i>] = <entry> has <U>` (when the module imports WASI `fd_write`) and traps on
//! `unreachable` rather than on the engine's type check: the call still never runs.
//!
//! Limits: a replaced (not appended) entry of a table that changes at run time keeps the
//! adapter of its original signature. Tables whose element segments have non-constant offsets
//! (position-independent code), 64-bit tables, tables whose segments write past their size
//! (instantiation traps), sparse tables (a few entries far apart, which would make the
//! class map large) and tables with more (entry signature, call signature) pairs than
//! [`pair_budget`] allows for the module's size (the adapters grow with their product, so a
//! small hostile module could make a huge output) are left alone, with a warning.

use super::{Pass, PassCx, PassReport};
use crate::diag::{Message, RECORD_SCRATCH, StoredBytes, store_bytes, store_text};
use crate::edit::{BodyCx, BodyRewriter, NewElement, NewFunction};
use crate::facts::TableFacts;
use crate::module::Module;
use crate::sig::{self, castable};
use anyhow::Result;
use std::borrow::Cow;
use std::collections::HashMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, ConstExpr, Function, HeapType, Instruction, RefType, TableType, ValType,
};
use wasmparser::FuncType;

pub struct Fpcast;

/// How the call sites of one `(table, T)` pair are rewritten.
#[derive(Clone, Copy)]
enum Site {
    /// `global.set index; global.get index; call_indirect (type T) shadow`.
    Shadow { table: u32 },
    /// `call dispatch` (the table may change at run time).
    Dispatch { func: u32 },
}

/// The adapted signatures of one table.
struct TablePlan<'f> {
    table: &'f TableFacts,
    dynamic: bool,
    /// Class 0 is "no known function"; class c ≥ 1 is `classes[c - 1]`: a signature present
    /// in the table, with one of the type indices that spell it.
    classes: Vec<(FuncType, u32)>,
    /// Class of every slot up to the last filled one.
    slot_class: Vec<u32>,
    /// The call-site signatures to adapt, with a type index that spells each.
    targets: Vec<(FuncType, u32)>,
    sites: Vec<usize>,
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
            // The class map and the diagnostics' slot map cover every slot up to the last
            // filled one: keep them proportional to the module's own element segments.
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
            if t.unknown_segments > 0 {
                warnings.push(format!(
                    "table {} is filled by element segments at non-constant offsets (position-independent code): casts through it are not adapted",
                    t.index
                ));
                continue;
            }
            let diagnose = cx.options.fpcast_diagnose;
            if let Some(plan) = plan_table(m, t, &site_types, t.changes_at_run_time(code), diagnose)
            {
                let pairs = plan.targets.len() * (plan.classes.len() + 1);
                if pairs_total + pairs > pair_budget(m) {
                    warnings.push(format!(
                        "table {}: {} call signatures x {} entry signatures to adapt, more than the {} pairs allowed for a module of {} bytes: casts through it are not adapted",
                        t.index,
                        plan.targets.len(),
                        plan.classes.len() + 1,
                        pair_budget(m),
                        m.bytes.len()
                    ));
                    continue;
                }
                pairs_total += pairs;
                plans.push(plan);
            }
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

        // Shadow and adapter tables, table.get/set and ref.null (issue 14: a WebAssembly 1.0
        // design is not built yet). Tail calls only where the run allows them.
        cx.edits
            .record_feature(crate::features::Feature::ReferenceTypes);
        let tail_calls = cx.allows(crate::features::Feature::TailCall);
        if tail_calls {
            cx.use_feature(crate::features::Feature::TailCall, "fpcast adapters")?;
        }
        let index_global = cx.edits.add_i32_global(m, true, 0);
        cx.edits.name_global(index_global, "wasmfix:fpcast_index");
        let diagnose = if cx.options.fpcast_diagnose {
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
        let mut sites: HashMap<(u32, u32), Site> = HashMap::new();
        let mut report = Vec::new();
        let mut adapters_total = 0;
        let mut init = Function::new([(2, ValType::I32), (1, ValType::FUNCREF)]);
        for plan in &plans {
            let built = build_table(
                cx,
                plan,
                index_global,
                diagnose.as_ref(),
                &mut init,
                tail_calls,
            );
            adapters_total += built.adapters.len();
            for (k, (sig_t, _)) in plan.targets.iter().enumerate() {
                let site = built.sites[k];
                for ty in 0..m.types.len() as u32 {
                    if m.func_type(ty) == Some(sig_t) {
                        sites.insert((ty, plan.table.index), site);
                    }
                }
                let adapters: Vec<String> = built
                    .adapters
                    .iter()
                    .filter(|(tk, _)| *tk == k)
                    .map(|(_, u)| format!("{u} -> {}", sig::show(sig_t)))
                    .collect();
                report.push(serde_json::json!({
                    "table": plan.table.index,
                    "signature": sig::show(sig_t),
                    "sites": plan.sites[k],
                    "mode": if plan.dynamic { "dispatch" } else { "shadow-table" },
                    "adapters": adapters,
                }));
            }
        }
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
        let adapted_sites: usize = plans.iter().flat_map(|p| &p.sites).sum();
        cx.edits.record_applied(
            "fpcast",
            serde_json::json!({ "sites": adapted_sites, "adapters": adapters_total }),
        );
        cx.edits.add_rewriter(Box::new(SiteRewriter {
            sites,
            index_global,
            caller_global: diagnose.as_ref().map(|d| d.caller_global),
            functions: &code.functions_with_indirect_calls,
        }));
        Ok(PassReport {
            pass: self.name(),
            summary: format!(
                "{} call_indirect sites of {} signatures now call castable entries through {} adapters",
                adapted_sites,
                report.len(),
                adapters_total
            ),
            warnings,
            details: serde_json::json!({ "signatures": report }),
        })
    }
}

/// Table entries whose whole body is `unreachable`: what wasm-opt leaves of a function it
/// proved callable only through a mismatched `call_indirect`. A cast to it cannot be repaired.
fn erased_cast_targets(
    m: &Module<'_>,
    facts: &crate::facts::Facts,
    plans: &[TablePlan<'_>],
) -> Option<String> {
    const UNREACHABLE_BODY: [u8; 3] = [0x00, 0x00, 0x0b];
    let mut erased: Vec<u32> = plans
        .iter()
        .flat_map(|p| p.table.contents.values().copied())
        .filter(|&f| m.body(f).is_some_and(|b| b.as_bytes() == UNREACHABLE_BODY))
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
    Some(format!(
        "{} table entries ({}{more}) have a body that is only `unreachable`. If a post-link \
         optimizer (wasm-opt) emptied them because they are reached only through \
         function-pointer casts, those casts still trap: run wasmfix before wasm-opt (clang runs \
         wasm-opt after linking whenever it is on PATH)",
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

fn plan_table<'f>(
    m: &Module<'_>,
    t: &'f TableFacts,
    site_types: &[(u32, usize)],
    dynamic: bool,
    diagnose: bool,
) -> Option<TablePlan<'f>> {
    let mut classes: Vec<(FuncType, u32)> = Vec::new();
    let len = t.contents.keys().next_back().map_or(0, |&s| s as usize + 1);
    let mut slot_class = vec![0u32; len];
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
    let mut targets: Vec<(FuncType, u32)> = Vec::new();
    let mut sites: Vec<usize> = Vec::new();
    for &(ty, n) in site_types {
        let Some(sig_t) = m.func_type(ty) else {
            continue;
        };
        // With --fpcast-diagnose every site that can reach another signature is rewritten,
        // so that a mismatch no cast fixes can be reported.
        let adapt = |u: &FuncType| castable(u, sig_t) || diagnose && u != sig_t;
        if !classes.iter().any(|(u, _)| adapt(u)) {
            continue;
        }
        match targets.iter().position(|(s, _)| s == sig_t) {
            Some(k) => sites[k] += n,
            None => {
                targets.push((sig_t.clone(), ty));
                sites.push(n);
            }
        }
    }
    (!targets.is_empty()).then_some(TablePlan {
        table: t,
        dynamic,
        classes,
        slot_class,
        targets,
        sites,
    })
}

struct BuiltTable {
    /// Per target k: how its sites are rewritten.
    sites: Vec<Site>,
    /// (target k, callee signature) of every adapter made.
    adapters: Vec<(usize, String)>,
}

/// Adds the adapters, the adapters table, the class map, the shadow tables (and dispatch
/// functions) of one table, and appends the loop that fills the shadow tables to `init`.
fn build_table(
    cx: &mut PassCx<'_, '_, '_>,
    plan: &TablePlan<'_>,
    index_global: u32,
    diagnose: Option<&Diagnose>,
    init: &mut Function,
    tail_calls: bool,
) -> BuiltTable {
    let m = cx.module;
    let table = plan.table.index;
    let n_classes = plan.classes.len() + 1;
    let mut adapter_items: Vec<ConstExpr> = Vec::new();
    let mut adapters = Vec::new();
    for (k, (sig_t, ty_t)) in plan.targets.iter().enumerate() {
        adapter_items.push(ConstExpr::ref_null(HeapType::FUNC));
        for (sig_u, ty_u) in &plan.classes {
            if !castable(sig_u, sig_t) {
                let item = match diagnose {
                    Some(d) if sig_u != sig_t => {
                        ConstExpr::ref_func(d.reporter(cx, sig_u, sig_t, plan, index_global))
                    }
                    _ => ConstExpr::ref_null(HeapType::FUNC),
                };
                adapter_items.push(item);
                continue;
            }
            let body = adapter_body(sig_u, *ty_u, sig_t, table, index_global, tail_calls);
            let name = format!("wasmfix:adapt {} as {}", sig::show(sig_u), sig::show(sig_t));
            let f = cx.edits.add_function(
                m,
                NewFunction {
                    type_index: *ty_t,
                    body,
                    name,
                },
            );
            adapter_items.push(ConstExpr::ref_func(f));
            adapters.push((k, sig::show(sig_u)));
        }
    }
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
        ty: RefType::FUNCREF,
        items: adapter_items,
    });
    let class_of = class_of_function(cx, plan);

    let size = plan.table.initial;
    let mut sites = Vec::new();
    let mut shadows = Vec::new();
    for (sig_t, ty_t) in &plan.targets {
        let shadow = cx.edits.add_table(m, funcref_table(size), None);
        cx.edits.name_table(
            shadow,
            format!("wasmfix:fpcast_shadow {} table {table}", sig::show(sig_t)),
        );
        shadows.push(shadow);
        sites.push(if plan.dynamic {
            let func = dispatch_function(cx, sig_t, *ty_t, table, shadow, index_global, tail_calls);
            Site::Dispatch { func }
        } else {
            Site::Shadow { table: shadow }
        });
    }

    // for i in 0..size: c = class_of(i); for each target k: s_k[i] = adapters[k*C + c] or,
    // in static mode when that is null, the original entry.
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
            Instruction::I32Const(size as i32),
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
            ],
        );
        if !plan.dynamic {
            ins(
                init,
                &[
                    Instruction::LocalTee(a),
                    Instruction::RefIsNull,
                    Instruction::If(BlockType::Result(ValType::FUNCREF)),
                    Instruction::LocalGet(i),
                    Instruction::TableGet(table),
                    Instruction::Else,
                    Instruction::LocalGet(a),
                    Instruction::End,
                ],
            );
        }
        init.instruction(&Instruction::TableSet(shadow));
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
    BuiltTable { sites, adapters }
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

/// `dispatch(args…, index)`: the adapter in `shadow` for the slot if there is one, else the
/// original call.
fn dispatch_function(
    cx: &mut PassCx<'_, '_, '_>,
    t: &FuncType,
    ty_t: u32,
    table: u32,
    shadow: u32,
    index_global: u32,
    tail_calls: bool,
) -> u32 {
    let n = t.params().len() as u32;
    // Each call ends the function: a tail call, or a call whose results are the function's
    // (followed by `return` inside the `if`, by the function's `end` last).
    let call = |table_index, last: bool| {
        let mut v = vec![if tail_calls {
            Instruction::ReturnCallIndirect {
                type_index: ty_t,
                table_index,
            }
        } else {
            Instruction::CallIndirect {
                type_index: ty_t,
                table_index,
            }
        }];
        if !tail_calls && !last {
            v.push(Instruction::Return);
        }
        v
    };
    let params: Vec<_> = t
        .params()
        .iter()
        .copied()
        .chain([wasmparser::ValType::I32])
        .collect();
    let args = (0..=n).map(Instruction::LocalGet);
    let mut code = vec![
        Instruction::LocalGet(n),
        Instruction::TableSize(shadow),
        Instruction::I32LtU,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(n),
        Instruction::TableGet(shadow),
        Instruction::RefIsNull,
        Instruction::I32Eqz,
        Instruction::If(BlockType::Empty),
        Instruction::LocalGet(n),
        Instruction::GlobalSet(index_global),
    ];
    code.extend(args.clone());
    code.extend(call(shadow, false));
    code.extend([Instruction::End, Instruction::End]);
    code.extend(args);
    code.extend(call(table, true));
    code.push(Instruction::End);
    let name = format!("wasmfix:fpcast_dispatch {} table {table}", sig::show(t));
    cx.edits
        .add_helper(cx.module, &name, (&params, t.results()), &[], &code)
}

/// Rewrites the adapted `call_indirect` and `return_call_indirect` sites.
struct SiteRewriter<'f> {
    sites: HashMap<(u32, u32), Site>,
    index_global: u32,
    /// With --fpcast-diagnose: where each site records its function for the report.
    caller_global: Option<u32>,
    /// Functions with indirect calls, ascending.
    functions: &'f [u32],
}

impl BodyRewriter for SiteRewriter<'_> {
    fn wants(&self, func: u32) -> bool {
        self.functions.binary_search(&func).is_ok()
    }

    fn instruction<'i>(
        &mut self,
        _cx: &mut BodyCx<'_>,
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
        if let (Some(g), Some(_)) = (
            self.caller_global,
            self.sites.get(&(type_index, table_index)),
        ) {
            out.extend([
                Instruction::I32Const(_cx.func as i32),
                Instruction::GlobalSet(g),
            ]);
        }
        match self.sites.get(&(type_index, table_index)) {
            None => out.push(ins),
            Some(&Site::Shadow { table }) => {
                out.push(Instruction::GlobalSet(self.index_global));
                out.push(Instruction::GlobalGet(self.index_global));
                out.push(if tail {
                    Instruction::ReturnCallIndirect {
                        type_index,
                        table_index: table,
                    }
                } else {
                    Instruction::CallIndirect {
                        type_index,
                        table_index: table,
                    }
                });
            }
            Some(&Site::Dispatch { func }) => out.push(if tail {
                Instruction::ReturnCall(func)
            } else {
                Instruction::Call(func)
            }),
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
        t: &FuncType,
        plan: &TablePlan<'_>,
        index_global: u32,
    ) -> u32 {
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
        cx.edits
            .add_helper(m, &name, (t.params(), t.results()), &[], &body)
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
