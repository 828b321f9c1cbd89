//! Module facts: the one place that finds the layout of a linked C/C++ module, and says how it
//! found each fact. Passes ask here; they never re-derive the layout. When a fact cannot be
//! established it is `None` with a reason, and passes that need it refuse.
//!
//! Facts from sections and names are computed at once; facts that need a walk over every
//! function body ([`CodeFacts`]) come from the input's validation, which shows every operator
//! it decodes to a [`CodeWalk`]: the code is decoded once, for both.

use crate::features::Feature;
use crate::module::{Module, const_value};
use crate::sig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use wasmparser::{
    ElementItems, ElementKind, ExternalKind, FrameStack, Operator, TypeRef, ValType, VisitOperator,
    VisitSimdOperator,
};

/// A fact and how it was established.
#[derive(Debug, Clone, Serialize)]
pub struct Found<T> {
    pub value: T,
    pub how: String,
}

fn found<T>(value: T, how: impl Into<String>) -> Found<T> {
    Found {
        value,
        how: how.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackLayout {
    /// The stack lies below the data (`--stack-first`): an overflow runs off address 0 and traps.
    StackFirst,
    /// The stack lies above the data and grows down toward it: an overflow overwrites data.
    StackAfterData,
}

/// `[low, high)`: the stack grows down from `high` (the stack pointer's initial value).
#[derive(Debug, Clone, Serialize)]
pub struct StackRegion {
    pub low: u64,
    pub high: u64,
    pub layout: StackLayout,
    pub how: String,
}

/// Active data segments of memory 0 with constant offsets.
#[derive(Debug, Clone, Serialize)]
pub struct DataExtent {
    pub low: u64,
    pub high: u64,
    pub segments: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableFacts {
    pub index: u32,
    pub element_type: String,
    pub initial: u64,
    pub maximum: Option<u64>,
    pub imported: bool,
    pub exported: bool,
    /// Slots filled by active element segments with constant offsets: slot → function.
    #[serde(skip)]
    pub contents: BTreeMap<u64, u32>,
    pub filled_slots: usize,
    /// Element segments whose offset is not a constant (the contents are then not all known).
    pub unknown_segments: usize,
}

impl TableFacts {
    /// Whether the table's contents can change while the module runs (host or code).
    pub fn changes_at_run_time(&self, code: &CodeFacts) -> bool {
        self.imported || self.exported || code.table_changed_by_code(self.index)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RelocationFacts {
    /// Names of the `linking` and `reloc.*` sections present.
    pub sections: Vec<String>,
    pub code_entries: usize,
    /// `Ok` when every code relocation points at a padded immediate of the right width,
    /// else why not (a post-link optimizer re-encoded the code).
    pub matches_code: Result<(), String>,
}

/// Facts gathered by walking every function body once.
#[derive(Debug, Default, Serialize)]
pub struct CodeFacts {
    /// `(type, table)` → number of `call_indirect`/`return_call_indirect` sites.
    pub indirect_sites: BTreeMap<(u32, u32), usize>,
    /// Tables written by `table.set/grow/fill/copy/init` in code.
    pub tables_changed: Vec<u32>,
    /// Tables written at slots the code computes (`table.set/fill/copy/init`): unlike
    /// `table.grow`, these may overwrite entries that were there at instantiation.
    pub tables_written: Vec<u32>,
    /// Global → functions whose first global access reads it and that also write it: the
    /// stack-pointer prologue idiom (`global.get g; i32.const N; i32.sub; … global.set g`).
    pub prologue_globals: BTreeMap<u32, usize>,
    /// Functions containing at least one `call_indirect`/`return_call_indirect`, ascending.
    pub functions_with_indirect_calls: Vec<u32>,
    /// Mutable i32/i64 global → functions that write it with `global.set`, ascending.
    pub global_writers: BTreeMap<u32, Vec<u32>>,
    /// Functions that execute `memory.size` (learn how much memory exists), ascending.
    pub memory_size_functions: Vec<u32>,
    /// The WebAssembly features the code uses (operators, block types, locals).
    #[serde(skip)]
    pub features: crate::features::FeatureSet,
    /// Input offsets of every `call_indirect` and `return_call_indirect`, ascending: where
    /// the emitter finds them for rewriters that look at nothing else
    /// ([`crate::edit::Sees::IndirectCalls`]).
    #[serde(skip)]
    pub indirect_call_offsets: Vec<u64>,
}

impl CodeFacts {
    pub fn table_changed_by_code(&self, table: u32) -> bool {
        self.tables_changed.contains(&table)
    }

    /// Whether code may overwrite existing slots of `table` (anything but `table.grow`).
    pub fn table_written_by_code(&self, table: u32) -> bool {
        self.tables_written.contains(&table)
    }
}

/// `call_indirect (type T)` sites and the table entries of other, castable types they reach.
#[derive(Debug, Clone, Serialize)]
pub struct IndirectCallFacts {
    pub type_index: u32,
    pub signature: String,
    pub table: u32,
    pub sites: usize,
    /// Table entries whose function type is castable to T but not T.
    pub castable_entries: usize,
    /// By callee signature: (signature, entries), most first.
    pub castable_by_signature: Vec<(String, usize)>,
}

pub struct Facts {
    pub stack_pointer: Result<Found<u32>, String>,
    pub stack_pointer_init: Option<u64>,
    pub data: Option<DataExtent>,
    /// The linker that laid out memory, when something certain identifies it.
    pub linker: Option<Found<Linker>>,
    /// The lowest address a static (initialized or zero-initialized) can have: nothing of the
    /// program lives in `[0, global_base)`, so an access there is a null-pointer dereference.
    /// Never above the lowest data address, the stack's low end or the heap base.
    pub global_base: Result<Found<u64>, String>,
    pub heap_base: Option<Found<u64>>,
    pub data_end: Option<Found<u64>>,
    pub stack: Result<StackRegion, String>,
    pub tables: Vec<TableFacts>,
    pub pic_markers: Vec<String>,
    pub relocations: Option<RelocationFacts>,
    pub producers: Vec<(String, Vec<(String, String)>)>,
    pub function_names: HashMap<u32, String>,
    /// What an earlier wasmfix run applied (its `wasmfix` custom section), by pass.
    pub applied: serde_json::Map<String, serde_json::Value>,
    pub global_names: HashMap<u32, String>,
    /// Data segment names from the name section (wasm-ld names its output segments `.rodata`,
    /// `.data`, …; wasm-opt keeps them, numbering the pieces it splits off).
    pub data_names: HashMap<u32, String>,
    pub debug_info: DebugInfoFacts,
    code: OnceLock<CodeFacts>,
    indirect_calls: OnceLock<Vec<IndirectCallFacts>>,
    heap: OnceLock<Result<crate::heap::HeapStart, String>>,
    allocator: OnceLock<Result<crate::allocator::Allocator, String>>,
    features: OnceLock<crate::features::InputFeatures>,
}

impl Facts {
    /// The facts of a module that validated, whose code facts its validation found
    /// ([`crate::validate::validate_input`]) and whose names were read already
    /// ([`SectionNames::read`]), as [`crate::pipeline::load`] does.
    pub fn with_code(m: &Module<'_>, code: CodeFacts, names: SectionNames) -> Facts {
        let f = Facts::sections(m, names);
        f.code.set(code).expect("the code facts are set once");
        f.establish(m)
    }

    /// The facts of a module that validated, for callers that did not keep its code facts: the
    /// code is walked (validated again) on first use.
    pub fn new(m: &Module<'_>) -> Facts {
        Facts::sections(m, SectionNames::read(m)).establish(m)
    }

    fn sections(m: &Module<'_>, names: SectionNames) -> Facts {
        let SectionNames(function_names, global_names, data_names) = names;
        Facts {
            stack_pointer: Err(String::new()),
            stack_pointer_init: None,
            data: data_extent(m),
            linker: None,
            global_base: Err(String::new()),
            heap_base: None,
            data_end: None,
            stack: Err(String::new()),
            tables: tables(m),
            pic_markers: pic_markers(m),
            relocations: relocations(m),
            producers: producers(m),
            function_names,
            global_names,
            data_names,
            applied: applied(m),
            debug_info: debug_info(m),
            code: OnceLock::new(),
            indirect_calls: OnceLock::new(),
            heap: OnceLock::new(),
            allocator: OnceLock::new(),
            features: OnceLock::new(),
        }
    }

    /// The facts derived from the others; the stack pointer falls back to the code facts only
    /// when neither names nor exports identify it.
    fn establish(mut self, m: &Module<'_>) -> Facts {
        self.heap_base = self.global_address(m, "__heap_base");
        self.data_end = self.global_address(m, "__data_end");
        self.stack_pointer = self.find_stack_pointer(m);
        if let Ok(sp) = &self.stack_pointer {
            self.stack_pointer_init = defined_global_value(m, sp.value);
        }
        self.stack = self.stack_region(m);
        self.linker = linker(m, &self);
        self.global_base = self.global_base(m);
        self
    }

    /// The facts found by walking every function body.
    pub fn code(&self, m: &Module<'_>) -> &CodeFacts {
        // An invalid body stops the walk; `new` is for modules that validated.
        self.code
            .get_or_init(|| crate::validate::validate_input(m).unwrap_or_default())
    }

    /// Where the module's runtime starts its heap (see [`crate::heap`]), found on first use.
    pub fn heap(&self, m: &Module<'_>) -> &Result<crate::heap::HeapStart, String> {
        self.heap.get_or_init(|| crate::heap::find(m, self))
    }

    /// The module's allocator (`malloc`, `free` and their family), found by names or by its
    /// code, or why it cannot be established; see [`crate::allocator`]. Found on first use.
    pub fn allocator(&self, m: &Module<'_>) -> &Result<crate::allocator::Allocator, String> {
        self.allocator
            .get_or_init(|| crate::allocator::find(m, &self.function_names, &Default::default()))
    }

    /// The WebAssembly features the input uses (its `target_features` section and what its
    /// sections and code use), found with the code walk.
    pub fn features(&self, m: &Module<'_>) -> &crate::features::InputFeatures {
        self.features
            .get_or_init(|| crate::features::InputFeatures::new(m, self.code(m).features))
    }

    /// A function's name for messages: its name-section name, else `function N`.
    pub fn function_name(&self, func: u32) -> String {
        match self.function_names.get(&func) {
            Some(n) => n.clone(),
            None => format!("function {func}"),
        }
    }

    fn global_named(&self, m: &Module<'_>, name: &str) -> Option<Found<u32>> {
        if let Some((&g, _)) = self.global_names.iter().find(|(_, n)| *n == name) {
            return Some(found(g, format!("name section calls global {g} `{name}`")));
        }
        m.exports
            .iter()
            .find(|e| e.kind == ExternalKind::Global && e.name == name)
            .map(|e| {
                found(
                    e.index,
                    format!("global {} is exported as `{name}`", e.index),
                )
            })
    }

    /// The constant value of the immutable address global `name` (`__heap_base`, …).
    fn global_address(&self, m: &Module<'_>, name: &str) -> Option<Found<u64>> {
        let g = self.global_named(m, name)?;
        let value = defined_global_value(m, g.value)?;
        Some(found(value, g.how))
    }

    fn find_stack_pointer(&self, m: &Module<'_>) -> Result<Found<u32>, String> {
        if let Some(g) = self.global_named(m, "__stack_pointer") {
            return Ok(g);
        }
        for (i, imp) in m
            .imports
            .iter()
            .filter(|i| matches!(i.ty, TypeRef::Global(_)))
            .enumerate()
        {
            if imp.name == "__stack_pointer" {
                return Ok(found(
                    i as u32,
                    format!("global {i} is imported as `{}.{}`", imp.module, imp.name),
                ));
            }
        }
        if m.bodies.is_empty() {
            return Err("the module defines no functions".into());
        }
        let code = self.code(m);
        let mut ranked: Vec<(u32, usize)> = code
            .prologue_globals
            .iter()
            .map(|(&g, &n)| (g, n))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        match ranked.as_slice() {
            [] => Err(
                "no global named `__stack_pointer`, none exported under that name, and no \
                       function opens with the stack-pointer prologue (global.get g; i32.const N; \
                       i32.sub; … global.set g)"
                    .into(),
            ),
            [(g, n), rest @ ..] => {
                let runner_up = rest.first().map_or(0, |r| r.1);
                if runner_up == 0 || *n >= 4 * runner_up {
                    Ok(found(
                        *g,
                        format!(
                            "stack-pointer prologue idiom on global {g} in {n} functions (next: {runner_up})"
                        ),
                    ))
                } else {
                    Err(format!(
                        "no global named `__stack_pointer`; the prologue idiom is ambiguous \
                         (global {g} in {n} functions, another in {runner_up})"
                    ))
                }
            }
        }
    }

    fn stack_region(&self, m: &Module<'_>) -> Result<StackRegion, String> {
        let sp = self
            .stack_pointer
            .as_ref()
            .map_err(|e| format!("stack pointer unknown: {e}"))?;
        let high = self.stack_pointer_init.ok_or_else(|| {
            format!(
                "the stack pointer (global {}) is imported or not initialized by a constant \
                 (a dynamically linked or PIC module)",
                sp.value
            )
        })?;
        let named = |n| self.global_address(m, n);
        if let (Some(low), Some(top)) = (named("__stack_low"), named("__stack_high")) {
            let layout = match &self.data {
                Some(d) if top.value <= d.low => StackLayout::StackFirst,
                _ if low.value == 0 => StackLayout::StackFirst,
                _ => StackLayout::StackAfterData,
            };
            return Ok(StackRegion {
                low: low.value,
                high: top.value,
                layout,
                how: format!("__stack_low/__stack_high: {}", low.how),
            });
        }
        // Data on both sides of the initial stack pointer happens in snapshots (Wizer records
        // memory as data segments). A few bytes below and the bulk above is a stack-first
        // module whose stack contents were recorded; the other way round is a stack above the
        // data whose heap was recorded.
        let (mut below, mut above) = (0u64, 0u64);
        for d in &m.data {
            if let wasmparser::DataKind::Active {
                memory_index: 0,
                offset_expr,
            } = &d.kind
                && let Some(start) = const_value(offset_expr)
            {
                let (start, end) = (start as u64, start as u64 + d.data.len() as u64);
                below += end.min(high).saturating_sub(start);
                above += end.saturating_sub(start.max(high));
            }
        }
        let stack_snapshot = below > 0 && below <= 64 * 1024 && above > below;
        match &self.data {
            Some(d) if d.low < high && stack_snapshot => Ok(StackRegion {
                low: 0,
                high,
                layout: StackLayout::StackFirst,
                how: format!(
                    "{above} bytes of data lie above the initial stack pointer {high} and {below} \
                     below it, from {}: a stack-first module whose stack contents were recorded \
                     by a memory snapshot",
                    d.low
                ),
            }),
            Some(d) if high <= d.low => Ok(StackRegion {
                low: 0,
                high,
                layout: StackLayout::StackFirst,
                how: format!(
                    "initial stack pointer {high} is at or below the lowest data address {}",
                    d.low
                ),
            }),
            Some(d) => {
                let (low, how) = match &self.data_end {
                    Some(e) if e.value <= high => (e.value, format!("__data_end ({})", e.how)),
                    _ => {
                        // wasm-ld puts a stack of exactly `-z stack-size` bytes right after
                        // __data_end; zero-initialized data (.bss) lies between the last data
                        // segment and the stack. Stack sizes are powers of two in practice
                        // (64 KiB by default, 8 MiB for CPython).
                        if d.high > high {
                            return Err(format!(
                                "the data [{}, {}) extends above the initial stack pointer \
                                 {high} and no __data_end says where the stack ends",
                                d.low, d.high
                            ));
                        }
                        let gap = high - d.high;
                        let size = if gap == 0 {
                            0
                        } else {
                            1u64 << (63 - gap.leading_zeros())
                        };
                        (
                            high - size,
                            format!(
                                "no __data_end: a {size}-byte stack (the largest power of two \
                                 between the initialized data ending at {} and the stack \
                                 pointer; .bss fills the rest)",
                                d.high
                            ),
                        )
                    }
                };
                Ok(StackRegion {
                    low,
                    high,
                    layout: StackLayout::StackAfterData,
                    how: format!(
                        "initial stack pointer {high} is above the data; low end from {how}"
                    ),
                })
            }
            None => Ok(StackRegion {
                low: 0,
                high,
                layout: StackLayout::StackFirst,
                how: "no active data segments: nothing lies below the stack".into(),
            }),
        }
    }

    /// The lowest address a static can have, from what is certain: the name `__global_base`,
    /// else the documented default of the linker that laid the module out (see [`linker`]),
    /// lowered to the lowest address anything of the program is known to occupy. The lowest
    /// data segment alone is not enough: `wasm-opt` drops the leading zero bytes of segments
    /// (memory packing), so zero-initialized statics can lie below it.
    fn global_base(&self, m: &Module<'_>) -> Result<Found<u64>, String> {
        if m.memory0_segments().any(|(_, range)| range.is_none()) {
            return Err(
                "data segments are placed at instantiation (a dynamically linked or \
                        PIC module): the statics' addresses are not known"
                    .into(),
            );
        }
        let named = self.global_address(m, "__global_base");
        let (base, how) = match (&named, &self.linker) {
            (Some(named), _) => (named.value, format!("`__global_base`: {}", named.how)),
            (None, Some(linker)) => (
                linker.value.default_global_base(),
                format!(
                    "{}'s default global base, the linker identified by {}",
                    linker.value.name(),
                    linker.how
                ),
            ),
            (None, None) => {
                return Err(
                    "cannot establish where the statics start: no `__global_base`, \
                            and no name section, producers section or Emscripten import \
                            identifies the linker (the lowest data segment is no answer: \
                            wasm-opt drops leading zero bytes); keep the producers section"
                        .into(),
                );
            }
        };
        // Nothing of the program may lie below the value: data, the stack, the heap.
        let mut lower: Vec<(u64, String)> = Vec::new();
        if let Some(d) = &self.data {
            lower.push((d.low, "the lowest data segment".into()));
        }
        let mut stack_first = false;
        if let Ok(st) = &self.stack {
            lower.push((st.low, "the stack's low end".into()));
            stack_first = st.layout == StackLayout::StackFirst;
        }
        if let Some(h) = &self.heap_base {
            lower.push((h.value, "`__heap_base`".into()));
        }
        match lower.into_iter().filter(|(v, _)| *v < base).min() {
            // Data or the heap below the linker's default: the module was linked with another
            // global base, which is known only to lie at or below them. wasm-opt may have packed
            // zero-initialized statics away below the lowest segment, so no value is certain.
            Some((v, what)) if named.is_none() && !(v == 0 && stack_first) => Err(format!(
                "cannot establish where the statics start: {what} ({v}) lies below \
                     {how}, so the module was linked with another global base, and \
                     zero-initialized statics may lie below the lowest segment; export \
                     `__global_base`"
            )),
            Some((v, what)) => Ok(found(v, format!("{what}, below {base} ({how})"))),
            None => Ok(found(base, how)),
        }
    }

    /// Per `call_indirect` type: sites, and the table entries of castable other types.
    pub fn indirect_calls(&self, m: &Module<'_>) -> &[IndirectCallFacts] {
        self.indirect_calls
            .get_or_init(|| self.find_indirect_calls(m))
    }

    fn find_indirect_calls(&self, m: &Module<'_>) -> Vec<IndirectCallFacts> {
        let code = self.code(m);
        let mut out = Vec::new();
        for (&(ty, table), &sites) in &code.indirect_sites {
            let Some(site) = m.func_type(ty) else {
                continue;
            };
            let mut by_sig: BTreeMap<String, usize> = BTreeMap::new();
            if let Some(t) = self.tables.iter().find(|t| t.index == table) {
                for &f in t.contents.values() {
                    if let Some(callee) = m.func_sig(f)
                        && sig::castable(callee, site)
                    {
                        *by_sig.entry(sig::show(callee)).or_default() += 1;
                    }
                }
            }
            let mut by: Vec<(String, usize)> = by_sig.into_iter().collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            out.push(IndirectCallFacts {
                type_index: ty,
                signature: sig::show(site),
                table,
                sites,
                castable_entries: by.iter().map(|b| b.1).sum(),
                castable_by_signature: by,
            });
        }
        out
    }
}

/// A linker whose memory layout is documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Linker {
    /// LLVM's wasm-ld (clang, wasi-sdk, Rust, zig cc): statics from `--global-base`, 1024 by
    /// default, unless the stack comes first.
    WasmLd,
    /// Emscripten (wasm-ld underneath): statics from `GLOBAL_BASE`, 1024 by default.
    Emscripten,
}

impl Linker {
    pub fn name(self) -> &'static str {
        match self {
            Linker::WasmLd => "wasm-ld",
            Linker::Emscripten => "Emscripten",
        }
    }

    /// The global base the linker uses unless told otherwise.
    pub fn default_global_base(self) -> u64 {
        1024
    }
}

/// The linker that laid the module out, from evidence only that linker leaves: Emscripten's
/// JavaScript-library imports; the functions wasm-ld synthesizes (`__wasm_call_ctors`, …);
/// wasm-ld's output segment names (`.rodata`, `.data`, …); a `processed-by clang` producer
/// (clang's object files are linked by wasm-ld).
fn linker(m: &Module<'_>, f: &Facts) -> Option<Found<Linker>> {
    if let Some(i) = m.imports.iter().find(|i| {
        i.module == "env"
            && (i.name.starts_with("emscripten_") || i.name.starts_with("_emscripten_"))
    }) {
        return Some(found(
            Linker::Emscripten,
            format!("its import `{}.{}`", i.module, i.name),
        ));
    }
    const SYNTHESIZED: &[&str] = &[
        "__wasm_call_ctors",
        "__wasm_init_memory",
        "__wasm_apply_data_relocs",
        "__wasm_init_tls",
    ];
    let named = f
        .function_names
        .values()
        .map(String::as_str)
        .chain(
            m.exports
                .iter()
                .filter(|e| e.kind == ExternalKind::Func)
                .map(|e| e.name),
        )
        .filter(|n| SYNTHESIZED.contains(n))
        .min();
    if let Some(n) = named {
        return Some(found(
            Linker::WasmLd,
            format!("the function `{n}` it synthesizes"),
        ));
    }
    let segment = f
        .data_names
        .values()
        .filter(|n| {
            [".rodata", ".data", ".bss", ".tdata"]
                .iter()
                .any(|s| n == s || n.strip_prefix(s).is_some_and(|r| r.starts_with('.')))
        })
        .min();
    if let Some(n) = segment {
        return Some(found(
            Linker::WasmLd,
            format!("its output data segment name `{n}`"),
        ));
    }
    let clang = f
        .producers
        .iter()
        .filter(|(field, _)| field == "processed-by")
        .flat_map(|(_, values)| values)
        // `clang`, or a vendor's build of it (`Debian clang`).
        .find(|(name, _)| name.split_whitespace().last() == Some("clang"));
    if let Some((name, version)) = clang {
        return Some(found(
            Linker::WasmLd,
            format!(
                "the producer `processed-by: {}`",
                format!("{name} {version}").trim()
            ),
        ));
    }
    None
}

/// The `wasmfix` custom section an earlier run wrote: `{"fpcast": …, "stack": …}`.
pub fn applied(m: &Module<'_>) -> serde_json::Map<String, serde_json::Value> {
    m.custom(APPLIED_SECTION)
        .and_then(|s| serde_json::from_slice(m.contents(s)).ok())
        .unwrap_or_default()
}

/// The debug info a module carries or points to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DebugInfoFacts {
    /// The `.debug_*` sections (DWARF) and their sizes, in module order.
    pub dwarf_sections: Vec<(String, usize)>,
    /// The URL of DWARF kept in a separate file (`external_debug_info` section).
    pub external_debug_info: Option<String>,
    /// The URL of the module's source map (`sourceMappingURL` section).
    pub source_map_url: Option<String>,
}

impl DebugInfoFacts {
    pub fn is_empty(&self) -> bool {
        self.dwarf_sections.is_empty()
            && self.external_debug_info.is_none()
            && self.source_map_url.is_none()
    }

    pub fn dwarf_bytes(&self) -> usize {
        self.dwarf_sections.iter().map(|(_, n)| n).sum()
    }
}

/// Finds DWARF sections and the `external_debug_info` and `sourceMappingURL` custom sections
/// (each holds one string: a URL relative to the module).
pub fn debug_info(m: &Module<'_>) -> DebugInfoFacts {
    let url = |name: &str| {
        let s = m.custom(name)?;
        let mut r = m.section_reader(s);
        let url = r.read_string().ok()?;
        Some(url.to_string())
    };
    DebugInfoFacts {
        dwarf_sections: m
            .sections
            .iter()
            .filter_map(|s| {
                let name = s.custom_name.filter(|n| n.starts_with(".debug_"))?;
                Some((name.to_string(), s.contents.len()))
            })
            .collect(),
        external_debug_info: url("external_debug_info"),
        source_map_url: url("sourceMappingURL"),
    }
}

/// FNV-1a of the module's bytes: a per-build value for canaries that needs no randomness.
pub fn module_hash(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// Name of the custom section that records what wasmfix applied.
pub const APPLIED_SECTION: &str = "wasmfix";

fn defined_global_value(m: &Module<'_>, g: u32) -> Option<u64> {
    let d = m
        .defined_globals
        .get(g.checked_sub(m.imported_globals)? as usize)?;
    const_value(&d.init).map(|v| v as u64)
}

type Names = HashMap<u32, String>;

/// The function, global and data names of a module's name section, read apart from the other
/// facts so that [`crate::pipeline::load`] can read them while the bodies are validated
/// (yosys.wasm's name section is 16 MB). Reads only the name section and the counts of the
/// model, so the bodies need not have validated yet.
pub struct SectionNames(Names, Names, Names);

impl SectionNames {
    pub fn read(m: &Module<'_>) -> SectionNames {
        let (mut funcs, mut globals, mut data) = (HashMap::new(), HashMap::new(), HashMap::new());
        let Some(s) = m.custom("name") else {
            return SectionNames(funcs, globals, data);
        };
        let reader = wasmparser::NameSectionReader::new(m.section_reader(s));
        for sub in reader.into_iter().flatten() {
            let (map, target, count) = match sub {
                wasmparser::Name::Function(map) => (map, &mut funcs, m.num_funcs()),
                wasmparser::Name::Global(map) => (map, &mut globals, m.num_globals()),
                wasmparser::Name::Data(map) => (map, &mut data, m.data.len() as u32),
                _ => continue,
            };
            // The name section is not validated: a name for an index that does not exist names
            // nothing.
            for naming in map.into_iter().flatten().filter(|n| n.index < count) {
                target.insert(naming.index, naming.name.to_string());
            }
        }
        SectionNames(funcs, globals, data)
    }
}

fn data_extent(m: &Module<'_>) -> Option<DataExtent> {
    let mut extent: Option<DataExtent> = None;
    for (_, range) in m.memory0_segments() {
        let Some(range) = range else {
            continue;
        };
        let (lo, hi) = (range.start, range.end);
        let e = extent.get_or_insert(DataExtent {
            low: lo,
            high: hi,
            segments: 0,
        });
        e.low = e.low.min(lo);
        e.high = e.high.max(hi);
        e.segments += 1;
    }
    extent
}

fn tables(m: &Module<'_>) -> Vec<TableFacts> {
    let mut out: Vec<TableFacts> = m
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| TableFacts {
            index: i as u32,
            element_type: t.element_type.to_string(),
            initial: t.initial,
            maximum: t.maximum,
            imported: (i as u32) < m.imported_tables,
            exported: m
                .exports
                .iter()
                .any(|e| e.kind == ExternalKind::Table && e.index == i as u32),
            contents: BTreeMap::new(),
            filled_slots: 0,
            unknown_segments: 0,
        })
        .collect();
    for e in &m.elements {
        let ElementKind::Active {
            table_index,
            offset_expr,
        } = &e.kind
        else {
            continue;
        };
        let Some(t) = out.get_mut(table_index.unwrap_or(0) as usize) else {
            continue;
        };
        let Some(base) = const_value(offset_expr) else {
            t.unknown_segments += 1;
            continue;
        };
        let funcs: Vec<Option<u32>> = match &e.items {
            ElementItems::Functions(r) => r.clone().into_iter().map(|f| f.ok()).collect(),
            ElementItems::Expressions(_, r) => r
                .clone()
                .into_iter()
                .map(|expr| {
                    let expr = expr.ok()?;
                    match expr.get_operators_reader().read().ok()? {
                        Operator::RefFunc { function_index } => Some(function_index),
                        _ => None,
                    }
                })
                .collect(),
        };
        for (k, f) in funcs.into_iter().enumerate() {
            let slot = base as u64 + k as u64;
            match f {
                Some(f) => t.contents.insert(slot, f),
                None => t.contents.remove(&slot),
            };
        }
    }
    for t in &mut out {
        t.filled_slots = t.contents.len();
    }
    out
}

fn pic_markers(m: &Module<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for s in &m.sections {
        if let Some(name @ ("dylink" | "dylink.0")) = s.custom_name {
            out.push(format!("`{name}` custom section"));
        }
    }
    for i in &m.imports {
        if matches!(i.name, "__memory_base" | "__table_base") || i.module.starts_with("GOT.") {
            out.push(format!("import `{}.{}`", i.module, i.name));
        }
    }
    out
}

fn relocations(m: &Module<'_>) -> Option<RelocationFacts> {
    let names: Vec<String> = m
        .sections
        .iter()
        .filter_map(|s| s.custom_name)
        .filter(|n| *n == "linking" || n.starts_with("reloc."))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return None;
    }
    let code = m.sections.iter().find(|s| s.id == 10);
    let mut entries = 0;
    let mut matches: Result<(), String> = Ok(());
    for s in m
        .sections
        .iter()
        .filter(|s| s.custom_name == Some("reloc.CODE"))
    {
        let Ok(reader) = wasmparser::RelocSectionReader::new(m.section_reader(s)) else {
            matches = Err("reloc.CODE is malformed".into());
            break;
        };
        let Some(code) = code else {
            matches = Err("reloc.CODE present but the module has no code section".into());
            break;
        };
        let body = &m.bytes[code.contents.clone()];
        for e in reader.entries() {
            entries += 1;
            let Ok(e) = e else {
                matches = Err("reloc.CODE is malformed".into());
                break;
            };
            if matches.is_err() {
                continue;
            }
            if let Err(why) = check_padded_immediate(body, &e) {
                matches = Err(format!(
                    "reloc.CODE entry at code offset {:#x} ({:?}): {why}; the code was re-encoded after linking (for example by wasm-opt)",
                    e.offset, e.ty
                ));
            }
        }
    }
    if entries == 0 && matches.is_ok() && names.iter().any(|n| n == "linking") {
        matches = Err("a `linking` section without code relocations".into());
    }
    Some(RelocationFacts {
        sections: names,
        code_entries: entries,
        matches_code: matches,
    })
}

/// A linker writes relocatable immediates padded to their full width (5 bytes for 32-bit
/// LEBs, 10 for 64-bit); a module re-encoded after linking uses the shortest form instead.
fn check_padded_immediate(code: &[u8], e: &wasmparser::RelocationEntry) -> Result<(), String> {
    let range = e.relocation_range().map_err(|err| err.to_string())?;
    let bytes = code
        .get(range.clone())
        .ok_or("points past the end of the code section")?;
    let is_leb = range.len() == 5 || range.len() == 10;
    use wasmparser::RelocationType as R;
    let fixed_width = matches!(
        e.ty,
        R::TableIndexI32
            | R::MemoryAddrI32
            | R::MemoryAddrI64
            | R::TableIndexI64
            | R::FunctionOffsetI32
            | R::SectionOffsetI32
            | R::GlobalIndexI32
            | R::FunctionOffsetI64
            | R::MemoryAddrLocrelI32
            | R::FunctionIndexI32
    );
    if is_leb && !fixed_width {
        let (last, init) = bytes.split_last().expect("non-empty");
        if !init.iter().all(|b| b & 0x80 != 0) || last & 0x80 != 0 {
            return Err(format!("not a {}-byte padded immediate", range.len()));
        }
    }
    Ok(())
}

fn producers(m: &Module<'_>) -> Vec<(String, Vec<(String, String)>)> {
    let Some(s) = m.custom("producers") else {
        return Vec::new();
    };
    let Ok(reader) = wasmparser::ProducersSectionReader::new(m.section_reader(s)) else {
        return Vec::new();
    };
    reader
        .into_iter()
        .flatten()
        .map(|field| {
            let values = field
                .values
                .into_iter()
                .flatten()
                .map(|v| (v.name.to_string(), v.version.to_string()))
                .collect();
            (field.name.to_string(), values)
        })
        .collect()
}

/// The walk over the function bodies that establishes the [`CodeFacts`]. The input's
/// validation drives it ([`crate::validate::validate_input`]): the validator decodes each
/// operator once and shows it to the walk on its way ([`CodeWalk::observe`]), so the facts cost
/// no second decode of the code. Each validation thread walks its share of the bodies, in
/// ascending order; [`CodeWalk::merge`] joins the shares.
pub(crate) struct CodeWalk<'g> {
    facts: CodeFacts,
    /// The module's bytes (the walk's offsets point into them).
    bytes: &'g [u8],
    /// Whether each global is a mutable i32 or i64: one that can hold an address, such as the
    /// stack pointer.
    address_globals: &'g [bool],
    /// The function being walked and what was seen in it so far.
    func: u32,
    calls_indirect: bool,
    /// The global the function reads first, when its first global access is a read of an
    /// address global.
    first_read: Option<u32>,
    saw_access: bool,
    /// An `i32.sub`/`i64.sub` after that read.
    subtracts: bool,
    /// A write of that global after the subtraction: the prologue idiom.
    writes_first: bool,
    /// Where the current operator starts.
    offset: u64,
}

impl<'g> CodeWalk<'g> {
    /// A walk over bodies of the module `bytes`, whose address globals are `address_globals`
    /// (see [`CodeWalk::address_globals`]).
    pub(crate) fn new(bytes: &'g [u8], address_globals: &'g [bool]) -> CodeWalk<'g> {
        CodeWalk {
            facts: CodeFacts::default(),
            bytes,
            address_globals,
            func: 0,
            calls_indirect: false,
            first_read: None,
            saw_access: false,
            subtracts: false,
            writes_first: false,
            offset: 0,
        }
    }

    /// Which globals of `m` can hold an address (what [`CodeWalk::new`] takes).
    pub(crate) fn address_globals(m: &Module<'_>) -> Vec<bool> {
        m.global_types
            .iter()
            .map(|t| t.mutable && matches!(t.content_type, ValType::I32 | ValType::I64))
            .collect()
    }

    /// Starts the body of function `func` (in the function index space).
    pub(crate) fn start_function(&mut self, func: u32) {
        self.func = func;
        self.calls_indirect = false;
        self.first_read = None;
        self.saw_access = false;
        self.subtracts = false;
        self.writes_first = false;
    }

    /// A local declaration of the current function.
    pub(crate) fn local(&mut self, ty: ValType) {
        crate::features::val_type(&mut self.facts.features, ty);
    }

    /// Ends the current function.
    pub(crate) fn end_function(&mut self) {
        if self.calls_indirect {
            self.facts.functions_with_indirect_calls.push(self.func);
        }
        if let (Some(g), true) = (self.first_read, self.writes_first) {
            *self.facts.prologue_globals.entry(g).or_default() += 1;
        }
    }

    /// `inner` (the validator's visitor for the operator at `offset`), showing the operator to
    /// this walk before it validates it.
    pub(crate) fn observe<V>(&mut self, offset: u64, inner: V) -> Observed<'_, 'g, V> {
        self.offset = offset;
        Observed { walk: self, inner }
    }

    /// The facts of all shares.
    pub(crate) fn merge(shares: impl IntoIterator<Item = CodeWalk<'g>>) -> CodeFacts {
        let mut all = CodeFacts::default();
        for share in shares {
            let p = share.facts;
            for (k, v) in p.indirect_sites {
                *all.indirect_sites.entry(k).or_default() += v;
            }
            all.tables_changed.extend(p.tables_changed);
            all.tables_written.extend(p.tables_written);
            for (k, v) in p.prologue_globals {
                *all.prologue_globals.entry(k).or_default() += v;
            }
            all.functions_with_indirect_calls
                .extend(p.functions_with_indirect_calls);
            all.indirect_call_offsets.extend(p.indirect_call_offsets);
            for (g, funcs) in p.global_writers {
                all.global_writers.entry(g).or_default().extend(funcs);
            }
            all.memory_size_functions.extend(p.memory_size_functions);
            all.features = all.features.union(p.features);
        }
        all.tables_changed.sort();
        all.tables_changed.dedup();
        all.tables_written.sort();
        all.tables_written.dedup();
        all.memory_size_functions.sort();
        all.functions_with_indirect_calls.sort();
        all.indirect_call_offsets.sort();
        for funcs in all.global_writers.values_mut() {
            funcs.sort();
        }
        all
    }

    fn indirect_call(&mut self, type_index: u32, table_index: u32) {
        *self
            .facts
            .indirect_sites
            .entry((type_index, table_index))
            .or_default() += 1;
        self.facts.indirect_call_offsets.push(self.offset);
        self.calls_indirect = true;
    }

    /// `table.grow`: the table changes, its existing slots do not.
    fn table_grown(&mut self, table: u32) {
        if !self.facts.tables_changed.contains(&table) {
            self.facts.tables_changed.push(table);
        }
    }

    /// `table.set/fill/init/copy`: slots the code computes are written.
    fn table_written(&mut self, table: u32) {
        if !self.facts.tables_written.contains(&table) {
            self.facts.tables_written.push(table);
        }
        self.table_grown(table);
    }

    /// The current operator's encoding, from its opcode to the end of the module: the walk
    /// sees an operator before its end is known.
    fn code(&self) -> &'g [u8] {
        &self.bytes[self.offset as usize..]
    }

    /// The current operator has a memory argument.
    #[inline]
    fn memarg(&mut self) {
        if crate::features::explicit_memory(self.code()) {
            self.facts.features.insert(Feature::Multimemory);
        }
    }

    /// The current operator is `memory.size` or `memory.grow` of memory `mem`.
    fn memory_index(&mut self, mem: u32) {
        if mem == 0 && crate::features::overlong_zero_memory(self.code()) {
            self.facts.features.insert(Feature::Multimemory);
        }
    }

    fn memory_size(&mut self) {
        if self.facts.memory_size_functions.last() != Some(&self.func) {
            self.facts.memory_size_functions.push(self.func);
        }
    }

    fn is_address_global(&self, g: u32) -> bool {
        self.address_globals.get(g as usize) == Some(&true)
    }

    fn global_get(&mut self, g: u32) {
        if !self.saw_access {
            self.saw_access = true;
            if self.is_address_global(g) {
                self.first_read = Some(g);
            }
        }
    }

    fn global_set(&mut self, g: u32) {
        self.saw_access = true;
        if self.is_address_global(g) {
            let writers = self.facts.global_writers.entry(g).or_default();
            if writers.last() != Some(&self.func) {
                writers.push(self.func);
            }
        }
        if self.first_read == Some(g) && self.subtracts {
            self.writes_first = true;
        }
    }

    fn sub(&mut self) {
        if self.first_read.is_some() {
            self.subtracts = true;
        }
    }
}

/// What the walk looks at in an operator, besides the features its immediates show.
macro_rules! walk_operator {
    ($w:expr; CallIndirect $type_index:ident $table_index:ident) => {{
        if $table_index == 0 && crate::features::overlong_zero_table($w.code()) {
            $w.facts.features.insert(Feature::CallIndirectOverlong);
        }
        $w.indirect_call($type_index, $table_index)
    }};
    ($w:expr; ReturnCallIndirect $type_index:ident $table_index:ident) => {
        $w.indirect_call($type_index, $table_index)
    };
    ($w:expr; TableGrow $table:ident) => {
        $w.table_grown($table)
    };
    ($w:expr; TableSet $table:ident) => {
        $w.table_written($table)
    };
    ($w:expr; TableFill $table:ident) => {
        $w.table_written($table)
    };
    ($w:expr; TableInit $elem_index:ident $table:ident) => {
        $w.table_written($table)
    };
    ($w:expr; TableCopy $dst_table:ident $src_table:ident) => {
        $w.table_written($dst_table)
    };
    ($w:expr; GlobalGet $global_index:ident) => {
        $w.global_get($global_index)
    };
    ($w:expr; GlobalSet $global_index:ident) => {
        $w.global_set($global_index)
    };
    ($w:expr; I32Sub) => {
        $w.sub()
    };
    ($w:expr; I64Sub) => {
        $w.sub()
    };
    ($w:expr; MemorySize $mem:ident) => {{
        $w.memory_index($mem);
        $w.memory_size()
    }};
    ($w:expr; MemoryGrow $mem:ident) => {
        $w.memory_index($mem)
    };
    ($w:expr; $op:ident $($arg:ident)*) => {
        $(walk_immediate!($w; $arg);)*
    };
}

/// An immediate the walk looks at in any operator: a memory argument, whose encoding may name
/// the memory.
macro_rules! walk_immediate {
    ($w:expr; memarg) => {
        $w.memarg()
    };
    ($w:expr; $other:ident) => {};
}

/// A validator's visitor for one operator that shows the operator to a [`CodeWalk`] first.
pub(crate) struct Observed<'w, 'g, V> {
    walk: &'w mut CodeWalk<'g>,
    inner: V,
}

macro_rules! observe_then_visit {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
        $(
            #[inline]
            fn $visit(&mut self $($(,$arg: $argty)*)?) -> Self::Output {
                crate::features::OperatorFeatures(&mut self.walk.facts.features)
                    .$visit($($($arg.clone()),*)?);
                walk_operator!(self.walk; $op $($($arg)*)?);
                self.inner.$visit($($($arg),*)?)
            }
        )*
    };
}

macro_rules! observe_then_visit_simd {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
        $(
            fn $visit(&mut self $($(,$arg: $argty)*)?) -> Self::Output {
                crate::features::OperatorFeatures(&mut self.walk.facts.features)
                    .$visit($($($arg.clone()),*)?);
                $($(walk_immediate!(self.walk; $arg);)*)?
                self.inner
                    .simd_visitor()
                    .expect("a visitor that took a SIMD operator")
                    .$visit($($($arg),*)?)
            }
        )*
    };
}

#[allow(clippy::clone_on_copy)]
impl<'a, V: VisitOperator<'a>> VisitOperator<'a> for Observed<'_, '_, V> {
    type Output = V::Output;

    fn simd_visitor(&mut self) -> Option<&mut dyn VisitSimdOperator<'a, Output = V::Output>> {
        self.inner.simd_visitor()?;
        Some(self)
    }

    wasmparser::for_each_visit_operator!(observe_then_visit);
}

#[allow(clippy::clone_on_copy)]
impl<'a, V: VisitOperator<'a>> VisitSimdOperator<'a> for Observed<'_, '_, V> {
    wasmparser::for_each_visit_simd_operator!(observe_then_visit_simd);
}

impl<V: FrameStack> FrameStack for Observed<'_, '_, V> {
    fn current_frame(&self) -> Option<wasmparser::FrameKind> {
        self.inner.current_frame()
    }
}
