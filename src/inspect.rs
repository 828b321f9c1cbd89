//! `wasmfix inspect`: the module facts and the hazards they imply, in plain words or JSON.

use crate::facts::{Facts, StackLayout};
use crate::module::Module;
use serde_json::{Value, json};
use std::fmt::Write;

/// A production failure the module is exposed to, in words a user searches for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hazard {
    pub kind: &'static str,
    pub message: String,
}

/// Thousands separators: 2569 → "2,569".
pub fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What `inspect` and `--check` say about a preview1 module the stock adapter would break.
pub const ADAPTER_HAZARD: &str = "this module's allocator assumes it owns all memory above its heap start; the preview1 → preview2 adapter takes pages with memory.grow and will be overwritten: run wasmfix before `wasm-tools component new`";

/// Whether turning the module into a component with the stock preview1 adapter would let its
/// allocator hand out the adapter's pages: it imports preview1, has no `cabi_realloc*` export
/// for the adapter to allocate with, and its allocator is not one known to take only the pages
/// `memory.grow` returns.
pub fn adapter_hazard(m: &Module<'_>, facts: &Facts) -> bool {
    crate::passes::adapter_memory::not_applicable(m).is_none()
        && !facts.applied.contains_key("adapter-memory")
        && m.memories.len() == 1
        && m.imported_memories == 0
        && crate::heap::grow_only(m, facts).is_none()
}

pub fn hazards(m: &Module<'_>, facts: &Facts) -> Vec<Hazard> {
    let mut out = Vec::new();
    if let Ok(s) = &facts.stack
        && s.layout == StackLayout::StackAfterData
        && !facts.applied.contains_key("stack")
    {
        out.push(Hazard {
                kind: "stack-after-data",
                message: format!(
                    "stack is placed after data: a stack overflow overwrites data (stack [{}, {}) grows down toward the data below {})",
                    s.low, s.high, s.low
                ),
            });
    }
    // After fpcast, every castable site goes through adapters (whose own call_indirect reach
    // the original table by design).
    let adapted = facts.applied.contains_key("fpcast");
    for call in facts.indirect_calls(m) {
        if call.castable_entries == 0 || adapted {
            continue;
        }
        let kinds: Vec<String> = call
            .castable_by_signature
            .iter()
            .take(3)
            .map(|(sig, n)| format!("{} of type {sig}", count(*n)))
            .collect();
        let more = call.castable_by_signature.len().saturating_sub(3);
        let more = if more > 0 {
            format!(" and {more} more types")
        } else {
            String::new()
        };
        out.push(Hazard {
            kind: "fpcast",
            message: format!(
                "call_indirect of type {} at {} sites can reach {} table entries of other castable types ({}{more}): such calls trap with `indirect call type mismatch`",
                call.signature,
                count(call.sites),
                count(call.castable_entries),
                kinds.join(", ")
            ),
        });
    }
    if adapter_hazard(m, facts) {
        out.push(Hazard {
            kind: "preview2-adapter",
            message: ADAPTER_HAZARD.into(),
        });
    }
    out
}

/// The heap facts, for modules the adapter-memory pass would change (WASI preview1 imports,
/// no `cabi_realloc*` export, not applied yet).
fn heap_facts<'f>(
    m: &Module<'_>,
    facts: &'f Facts,
) -> Option<&'f Result<crate::heap::HeapStart, String>> {
    let applies = crate::passes::adapter_memory::not_applicable(m).is_none()
        && !facts.applied.contains_key("adapter-memory");
    applies.then(|| facts.heap(m))
}

pub fn json(m: &Module<'_>, facts: &Facts) -> Value {
    let code = facts.code(m);
    let tables: Vec<Value> = facts
        .tables
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).expect("serializable");
            v["changed_by_code"] = json!(code.table_changed_by_code(t.index));
            v["written_by_code"] = json!(code.table_written_by_code(t.index));
            v["run_time_entries"] = json!(run_time_entries(m, facts, t));
            v
        })
        .collect();
    json!({
        "size": m.bytes.len(),
        "functions": m.num_funcs(),
        "imported_functions": m.imported_funcs,
        "memories": m.memories.len(),
        "features": facts.features(m),
        "stack_pointer": result(&facts.stack_pointer),
        "stack_pointer_init": facts.stack_pointer_init,
        "stack": result(&facts.stack),
        "data": facts.data,
        "linker": facts.linker,
        "global_base": result(&facts.global_base),
        "heap_base": facts.heap_base,
        "data_end": facts.data_end,
        "heap_start": heap_facts(m, facts).map(result),
        "tables": tables,
        "indirect_calls": facts.indirect_calls(m),
        "pic_markers": facts.pic_markers,
        "relocations": facts.relocations.as_ref().map(|r| json!({
            "sections": r.sections,
            "code_entries": r.code_entries,
            "matches_code": r.matches_code.is_ok(),
            "why_not": r.matches_code.as_ref().err(),
        })),
        "producers": facts.producers,
        "debug_info": facts.debug_info,
        "allocator": allocator_json(m, facts),
        "applied_by_wasmfix": facts.applied,
        "hazards": hazards(m, facts),
    })
}

fn allocator_json(m: &Module<'_>, facts: &Facts) -> Value {
    if let Some(done) = facts.applied.get("heap-canary") {
        return json!({ "wrapped_by_wasmfix": done });
    }
    result(facts.allocator(m))
}

/// What fpcast does for casts to entries a funcref table gets at run time (when it can get any
/// and is called through): they are typed with `ref.test` only when the run allows GC.
fn run_time_entries(m: &Module<'_>, facts: &Facts, t: &crate::facts::TableFacts) -> Option<String> {
    let code = facts.code(m);
    let called = code
        .indirect_sites
        .keys()
        .any(|&(_, table)| table == t.index);
    if !called || t.element_type != "funcref" || !t.changes_at_run_time(code) {
        return None;
    }
    Some(
        if facts
            .features(m)
            .used
            .contains(crate::features::Feature::Gc)
        {
            "fpcast adapts casts to them (the input uses GC: ref.test types them)".into()
        } else {
            "fpcast does not adapt casts to them unless GC is enabled (--enable-gc: ref.test \
         types them; the input does not use GC)"
                .into()
        },
    )
}

fn result<T: serde::Serialize>(r: &Result<T, String>) -> Value {
    match r {
        Ok(v) => serde_json::to_value(v).expect("serializable"),
        Err(why) => json!({ "unknown": why }),
    }
}

/// `DWARF in 6 sections (123,456 bytes); external DWARF: URL; source map: URL`, or `none`.
pub fn debug_info_text(d: &crate::facts::DebugInfoFacts) -> String {
    let mut parts = Vec::new();
    if !d.dwarf_sections.is_empty() {
        parts.push(format!(
            "DWARF in {} sections ({} bytes)",
            d.dwarf_sections.len(),
            count(d.dwarf_bytes())
        ));
    }
    if let Some(url) = &d.external_debug_info {
        parts.push(format!("external DWARF: {url}"));
    }
    if let Some(url) = &d.source_map_url {
        parts.push(format!("source map: {url}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

pub fn text(name: &str, m: &Module<'_>, facts: &Facts) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "{name}: core module, {} bytes, {} functions ({} imported), {} memories, {} tables",
        count(m.bytes.len()),
        count(m.num_funcs() as usize),
        count(m.imported_funcs as usize),
        m.memories.len(),
        m.tables.len()
    );
    if !facts.producers.is_empty() {
        let fields: Vec<String> = facts
            .producers
            .iter()
            .map(|(f, vs)| {
                let vs: Vec<String> = vs
                    .iter()
                    .map(|(n, v)| format!("{n} {v}").trim().to_string())
                    .collect();
                format!("{f}: {}", vs.join(", "))
            })
            .collect();
        let _ = writeln!(w, "producers: {}", fields.join("; "));
    }
    let features = facts.features(m);
    let _ = writeln!(
        w,
        "features: {} ({}); passes use no others unless enabled (--enable-X)",
        features.used.names(),
        features.how
    );
    match &facts.stack_pointer {
        Ok(sp) => {
            let init = facts
                .stack_pointer_init
                .map_or("not a constant".to_string(), |v| v.to_string());
            let _ = writeln!(
                w,
                "stack pointer: global {} ({}), initial value {init}",
                sp.value, sp.how
            );
        }
        Err(why) => {
            let _ = writeln!(w, "stack pointer: unknown: {why}");
        }
    }
    match &facts.data {
        Some(d) => {
            let _ = writeln!(
                w,
                "data: [{}, {}) in {} active segments",
                d.low, d.high, d.segments
            );
        }
        None => {
            let _ = writeln!(w, "data: no active data segments with constant offsets");
        }
    }
    match &facts.global_base {
        Ok(g) => {
            let _ = writeln!(
                w,
                "global base: {} (no static below it: [0, {}) is the null page; {})",
                g.value, g.value, g.how
            );
        }
        Err(why) => {
            let _ = writeln!(w, "global base: unknown: {why}");
        }
    }
    for (label, v) in [
        ("__data_end", &facts.data_end),
        ("__heap_base", &facts.heap_base),
    ] {
        if let Some(v) = v {
            let _ = writeln!(w, "{label}: {} ({})", v.value, v.how);
        }
    }
    match &facts.stack {
        Ok(st) => {
            let layout = match st.layout {
                StackLayout::StackFirst => {
                    "stack first: an overflow runs below address 0 and traps"
                }
                StackLayout::StackAfterData => "stack after data: an overflow runs into the data",
            };
            let _ = writeln!(w, "stack: [{}, {}), {layout} ({})", st.low, st.high, st.how);
        }
        Err(why) => {
            let _ = writeln!(w, "stack: unknown: {why}");
        }
    }
    match heap_facts(m, facts) {
        Some(Ok(h)) => {
            let _ = writeln!(w, "heap: {}", h.how());
        }
        Some(Err(why)) => {
            let _ = writeln!(w, "heap: start unknown: {why}");
        }
        None => {}
    }
    let code = facts.code(m);
    for t in &facts.tables {
        let max = t.maximum.map_or("none".to_string(), |v| v.to_string());
        let mut notes = Vec::new();
        if t.imported {
            notes.push("imported");
        }
        if t.exported {
            notes.push("exported");
        }
        if code.table_written_by_code(t.index) {
            notes.push("written by code");
        } else if code.table_changed_by_code(t.index) {
            notes.push("grown by code");
        }
        if notes.is_empty() {
            notes.push("static");
        }
        let _ = writeln!(
            w,
            "table {}: {}, {} slots filled by element segments, size {} (max {max}), {}",
            t.index,
            t.element_type,
            count(t.filled_slots),
            t.initial,
            notes.join(", ")
        );
        if let Some(note) = run_time_entries(m, facts, t) {
            let _ = writeln!(w, "  entries added at run time: {note}");
        }
    }
    let calls = facts.indirect_calls(m);
    if !calls.is_empty() {
        let sites: usize = calls.iter().map(|c| c.sites).sum();
        let _ = writeln!(
            w,
            "indirect calls: {} sites of {} signatures",
            count(sites),
            calls.len()
        );
    }
    match &facts.relocations {
        None => {
            let _ = writeln!(
                w,
                "relocations: none (relink with -Wl,--emit-relocs to allow exact relocation)"
            );
        }
        Some(r) => {
            let state = match &r.matches_code {
                Ok(()) => "they match the code".to_string(),
                Err(why) => format!("stale: {why}"),
            };
            let _ = writeln!(
                w,
                "relocations: {} ({} code entries), {state}",
                r.sections.join(", "),
                count(r.code_entries)
            );
        }
    }
    if !facts.pic_markers.is_empty() {
        let _ = writeln!(w, "dynamic linking / PIC: {}", facts.pic_markers.join(", "));
    }
    let _ = writeln!(w, "debug info: {}", debug_info_text(&facts.debug_info));
    if !facts.applied.contains_key("heap-canary") {
        match facts.allocator(m) {
            Ok(a) => {
                let fs: Vec<String> = a
                    .functions
                    .iter()
                    .map(|f| format!("{} {}", f.role.c_name(), f.label))
                    .collect();
                let _ = writeln!(
                    w,
                    "allocator: {}{}",
                    a.family.map_or(String::new(), |f| format!("{} ", f.name())),
                    fs.join(", ")
                );
                for f in &a.functions {
                    let _ = writeln!(w, "  {} {}: {}", f.role.c_name(), f.label, f.how);
                }
                for e in &a.evidence {
                    let _ = writeln!(w, "  {e}");
                }
            }
            Err(why) => {
                let _ = writeln!(w, "allocator: unknown: {why}");
            }
        }
    }
    for (what, detail) in &facts.applied {
        let _ = writeln!(w, "fixed by wasmfix: {what} {detail}");
    }
    let hazards = hazards(m, facts);
    if hazards.is_empty() {
        let _ = writeln!(w, "hazards: none found");
    } else {
        let _ = writeln!(w, "hazards:");
        for h in &hazards {
            let _ = writeln!(w, "  - {}", h.message);
        }
    }
    s
}
