//! What passes ask the emitter to change. A pass never writes bytes: it appends new items
//! (types, functions, tables, globals, element and data segments), registers body rewriters,
//! and replaces or drops custom sections. Appending keeps every original index valid.

use crate::module::Module;
use std::collections::BTreeMap;
use wasm_encoder::{
    ConstExpr, Function, GlobalType, Instruction, RefType, Section, TableType, ValType,
};
use wasmparser::FuncType;

/// A function a pass adds; it gets the index `num_funcs + position` in the output.
pub struct NewFunction {
    pub type_index: u32,
    pub body: Function,
    /// Shown in backtraces through the name section, e.g. `wasmfix:stack_overflow`.
    pub name: String,
}

/// An active element segment a pass adds: `items` are written to `table` from `offset` at
/// instantiation.
pub struct NewElement {
    pub table: u32,
    pub offset: ConstExpr,
    pub items: ElementItems,
}

/// What an added element segment holds.
pub enum ElementItems {
    /// Function indices: on table 0 this is WebAssembly 1.0's only kind of segment.
    Functions(Vec<u32>),
    /// Constant expressions of a reference type (`ref.null`, `ref.func`): reference types.
    Expressions(RefType, Vec<ConstExpr>),
}

/// A data segment a pass adds: active at `(memory, offset)`, or passive when `active` is
/// `None` (read with `memory.init`, as the diagnostics' message text is).
pub struct NewData {
    pub active: Option<(u32, ConstExpr)>,
    pub bytes: Vec<u8>,
}

/// Per-function state a body rewriter sees while one function is re-encoded.
pub struct BodyCx<'m> {
    /// Index of the function in the function index space.
    pub func: u32,
    pub sig: &'m FuncType,
    /// Number of parameters plus declared locals (new locals are numbered from here).
    next_local: u32,
    new_locals: Vec<ValType>,
    /// Blocks enclosing the instruction being rewritten, the function body included: 1 at the
    /// top level, 0 for the `end` that closes the function.
    pub depth: u32,
    /// Byte offset in the input of the instruction being rewritten.
    pub offset: u64,
    /// The function's original operators with their input offsets, decoded once by the emitter,
    /// for rewriters that must look at the whole function before rewriting it.
    pub original: &'m [(wasmparser::Operator<'m>, u64)],
    /// Where, in the output for the instruction being rewritten, that instruction's own code
    /// starts (see [`BodyCx::own_code_from`]); the emitter reads and clears it.
    pub(crate) own_code_from: Option<usize>,
}

impl<'m> BodyCx<'m> {
    pub(crate) fn new(
        func: u32,
        sig: &'m FuncType,
        declared_locals: u32,
        original: &'m [(wasmparser::Operator<'m>, u64)],
    ) -> Self {
        BodyCx {
            func,
            sig,
            next_local: sig.params().len() as u32 + declared_locals,
            new_locals: Vec::new(),
            depth: 0,
            offset: 0,
            original,
            own_code_from: None,
        }
    }

    /// Says that the output for the instruction being rewritten starts its own code at index
    /// `index` of `out` (the output for this input instruction so far): what comes before it
    /// belongs to the previous input instruction. For a rewriter that holds a value back
    /// (`local.get`, a constant) and emits it only with the next instruction, after code it
    /// inserts for that instruction: the code map, and so DWARF lines and source maps, then
    /// put the value (and the inserted code before it) at the value's own position, not at
    /// the next instruction's. Later rewriters keep the position (the emitter maps it through
    /// their output).
    pub fn own_code_from(&mut self, index: usize) {
        self.own_code_from = Some(index);
    }

    /// Adds a local of type `ty` after every original one and returns its index.
    pub fn add_local(&mut self, ty: ValType) -> u32 {
        self.new_locals.push(ty);
        self.next_local += 1;
        self.next_local - 1
    }

    pub(crate) fn take_new_locals(&mut self) -> Vec<ValType> {
        std::mem::take(&mut self.new_locals)
    }
}

/// The instructions a [`BodyRewriter`] looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sees {
    /// Every instruction of the functions it wants, after its prologue (the default).
    #[default]
    Everything,
    /// Only `call_indirect` and `return_call_indirect`: the rewriter is shown nothing else,
    /// its `prologue` is called but must push nothing (it may start per-function state, as
    /// fpcast's site local), and it must not read `BodyCx::original` or
    /// `BodyCx::depth`. A function whose rewriters all see only these is not decoded: the
    /// module facts know where its indirect calls are, and every other instruction is copied
    /// byte for byte.
    IndirectCalls,
}

/// Rewrites instructions of the functions it wants. Several rewriters may want one function:
/// the emitter decodes it once and feeds every instruction through them in registration order,
/// each seeing the output of the previous one (and only what it [`Sees`]).
pub trait BodyRewriter: Send {
    /// Whether this rewriter changes function `func` (a defined function).
    fn wants(&self, func: u32) -> bool;
    /// The instructions this rewriter looks at.
    fn sees(&self) -> Sees {
        Sees::Everything
    }
    /// Instructions to run first, before the original body.
    fn prologue(&mut self, _cx: &mut BodyCx<'_>, _out: &mut Vec<Instruction<'static>>) {}
    /// Rewrites one instruction: push what replaces it onto `out` (push `ins` to keep it).
    /// `cx.depth` is 0 for the `end` that closes the function.
    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    );
}

/// Everything the passes of one run want changed.
#[derive(Default)]
pub struct Edits<'m> {
    pub(crate) new_types: Vec<FuncType>,
    pub(crate) new_functions: Vec<NewFunction>,
    pub(crate) new_tables: Vec<(TableType, Option<ConstExpr>)>,
    pub(crate) new_globals: Vec<(GlobalType, ConstExpr)>,
    pub(crate) new_elements: Vec<NewElement>,
    pub(crate) new_data: Vec<NewData>,
    /// The shared message writer, once a pass asked for it (see [`crate::diag`]).
    pub(crate) diagnostics: Option<crate::diag::Diagnostics>,
    pub(crate) rewriters: Vec<Box<dyn BodyRewriter + 'm>>,
    /// A new start function (which must call the original one, if any).
    pub(crate) new_start: Option<u32>,
    /// Custom sections by position in `Module::sections`: the encoded replacement section,
    /// or `None` to drop it.
    pub(crate) custom_replaced: BTreeMap<usize, Option<Vec<u8>>>,
    /// Encoded custom sections appended at the end of the module.
    pub(crate) custom_appended: Vec<Vec<u8>>,
    /// Same-length byte replacements at input offsets (relocated immediates), applied before
    /// anything is copied or decoded, so every offset in the module model stays valid.
    pub(crate) patches: Vec<(usize, Vec<u8>)>,
    /// New initializers for defined globals, by global index.
    pub(crate) global_inits: BTreeMap<u32, ConstExpr>,
    /// New offsets for active data segments, by segment index.
    pub(crate) data_offsets: BTreeMap<u32, ConstExpr>,
    /// Set by stack-first when it moved the stack earlier in this pipeline: the stack now lies
    /// at `[0, n)` and every data address moved up by `n`. Passes that run after it work on
    /// addresses (bounds, heap-canary) and must see the new layout, not the input's facts.
    pub stack_relocated: Option<u64>,
    /// What each pass applied, recorded in the `wasmfix` custom section (see `record_applied`).
    pub(crate) applied: serde_json::Map<String, serde_json::Value>,
    /// Features the output uses beyond the input's (see `PassCx::use_feature`).
    pub(crate) used_features: crate::features::FeatureSet,
    /// New limits for memories, by memory index.
    pub(crate) memory_types: BTreeMap<u32, wasm_encoder::MemoryType>,
    /// New types (limits) for defined tables, by table index.
    pub(crate) table_types: BTreeMap<u32, TableType>,
    /// Names of added tables, globals and data segments for the name section, by
    /// (name subsection id, index); added functions carry their own (`NewFunction::name`).
    pub(crate) item_names: BTreeMap<(u8, u32), String>,
    /// Exports pointed at another function, by export name.
    pub(crate) export_targets: BTreeMap<String, u32>,
    /// New function exports, by name, appended after the original exports.
    pub(crate) new_exports: Vec<(String, u32)>,
    /// Defined functions given a new body in their original slot (see [`Edits::move_body`]).
    pub(crate) replaced_bodies: BTreeMap<u32, Function>,
    /// Added functions holding a moved original body: new function index → original
    /// function index (see [`Edits::move_body`]). The body is copied byte for byte when the
    /// module is emitted, after same-length patches (a relocated immediate in a moved body
    /// stays relocated), and the code map follows it.
    pub(crate) moved_bodies: BTreeMap<u32, u32>,
}

/// Name subsection ids (the extended name section) of the items passes can name.
pub(crate) const TABLE_NAMES: u8 = 5;
pub(crate) const GLOBAL_NAMES: u8 = 7;
pub(crate) const DATA_NAMES: u8 = 9;

impl<'m> Edits<'m> {
    /// Whether anything at all changes.
    pub fn is_empty(&self) -> bool {
        !self.changes_code_or_structure()
            && self.custom_replaced.is_empty()
            && self.custom_appended.is_empty()
    }

    /// Records that the output uses `f` without asking whether the run allows it. Only for
    /// designs that have no WebAssembly 1.0 alternative yet (issue 14: fpcast's tables and
    /// heap-canary's memory.copy/fill; delete this once both are gone); everything else goes
    /// through `PassCx::use_feature`, which refuses what the run does not allow.
    pub fn record_feature(&mut self, f: crate::features::Feature) {
        self.used_features.insert(f);
    }

    /// Whether the code or any non-custom section changes (then the output is validated with
    /// the input's features plus the recorded ones).
    pub fn changes_code_or_structure(&self) -> bool {
        !(self.new_types.is_empty()
            && self.new_functions.is_empty()
            && self.new_tables.is_empty()
            && self.new_globals.is_empty()
            && self.new_elements.is_empty()
            && self.new_data.is_empty()
            && self.rewriters.is_empty()
            && self.new_start.is_none()
            && self.patches.is_empty()
            && self.global_inits.is_empty()
            && self.data_offsets.is_empty()
            && self.memory_types.is_empty()
            && self.table_types.is_empty()
            && self.export_targets.is_empty()
            && self.new_exports.is_empty()
            && self.replaced_bodies.is_empty())
    }

    /// The index of function type `ty`: an existing one when the module has it, else a new one.
    pub fn func_type(&mut self, module: &Module<'_>, ty: FuncType) -> u32 {
        let existing = (0..module.types.len() as u32)
            .find(|&i| module.func_type(i) == Some(&ty) && module.types[i as usize].is_final);
        if let Some(i) = existing {
            return i;
        }
        let base = module.types.len() as u32;
        if let Some(i) = self.new_types.iter().position(|t| *t == ty) {
            return base + i as u32;
        }
        self.new_types.push(ty);
        base + self.new_types.len() as u32 - 1
    }

    /// Adds a function; returns its index in the output.
    pub fn add_function(&mut self, module: &Module<'_>, f: NewFunction) -> u32 {
        self.new_functions.push(f);
        module.num_funcs() + self.new_functions.len() as u32 - 1
    }

    /// Adds a generated function `name` typed `params -> results`, with `locals` after its
    /// parameters and the body `code` (ending with `End`); returns its index in the output.
    pub fn add_helper(
        &mut self,
        module: &Module<'_>,
        name: &str,
        (params, results): (&[wasmparser::ValType], &[wasmparser::ValType]),
        locals: &[(u32, ValType)],
        code: &[Instruction<'_>],
    ) -> u32 {
        let ty = FuncType::new(params.iter().copied(), results.iter().copied());
        let type_index = self.func_type(module, ty);
        let mut body = Function::new(locals.iter().copied());
        for ins in code {
            body.instruction(ins);
        }
        self.add_function(
            module,
            NewFunction {
                type_index,
                body,
                name: name.to_string(),
            },
        )
    }

    /// [`Edits::add_helper`] typed by the existing type index `type_index` (a function that
    /// must have exactly that type, e.g. one stored where `call_indirect (type T)` reaches it:
    /// under GC a type's identity includes its recursion group and supertypes, so an equal
    /// parameter and result list spelled by another type index need not be the same type).
    pub fn add_helper_typed(
        &mut self,
        module: &Module<'_>,
        name: &str,
        type_index: u32,
        locals: &[(u32, ValType)],
        code: &[Instruction<'_>],
    ) -> u32 {
        let mut body = Function::new(locals.iter().copied());
        for ins in code {
            body.instruction(ins);
        }
        self.add_function(
            module,
            NewFunction {
                type_index,
                body,
                name: name.to_string(),
            },
        )
    }

    /// Adds an i32 global initialized to `value`; returns its index in the output.
    pub fn add_i32_global(&mut self, module: &Module<'_>, mutable: bool, value: i32) -> u32 {
        let ty = GlobalType {
            val_type: ValType::I32,
            mutable,
            shared: false,
        };
        self.add_global(module, ty, ConstExpr::i32_const(value))
    }

    /// Adds a table; returns its index in the output.
    pub fn add_table(
        &mut self,
        module: &Module<'_>,
        ty: TableType,
        init: Option<ConstExpr>,
    ) -> u32 {
        self.new_tables.push((ty, init));
        (module.tables.len() + self.new_tables.len() - 1) as u32
    }

    /// Adds a global; returns its index in the output.
    pub fn add_global(&mut self, module: &Module<'_>, ty: GlobalType, init: ConstExpr) -> u32 {
        self.new_globals.push((ty, init));
        (module.global_types.len() + self.new_globals.len() - 1) as u32
    }

    pub fn add_element(&mut self, segment: NewElement) {
        self.new_elements.push(segment);
    }

    /// Adds a data segment; returns its index in the output.
    pub fn add_data(&mut self, module: &Module<'_>, data: NewData) -> u32 {
        self.new_data.push(data);
        (module.data.len() + self.new_data.len() - 1) as u32
    }

    /// Appends bytes to a data segment added earlier; returns their offset in it.
    pub fn extend_data(&mut self, module: &Module<'_>, index: u32, bytes: &[u8]) -> u32 {
        let seg = &mut self.new_data[index as usize - module.data.len()].bytes;
        seg.extend_from_slice(bytes);
        (seg.len() - bytes.len()) as u32
    }

    /// Makes `func` the start function. It must call the module's original start function
    /// (`Module::start`) itself; only one pass may set it.
    pub fn set_start(&mut self, func: u32) {
        assert!(
            self.new_start.is_none(),
            "two passes set the start function"
        );
        self.new_start = Some(func);
    }

    pub fn add_rewriter(&mut self, r: Box<dyn BodyRewriter + 'm>) {
        self.rewriters.push(r);
    }

    /// Replaces the custom section at `Module::sections[index]` with `section`.
    pub fn replace_custom(&mut self, index: usize, section: &impl Section) {
        self.custom_replaced
            .insert(index, Some(encode_section(section)));
    }

    /// Replaces `bytes.len()` bytes at input offset `at` (a relocated immediate).
    pub fn patch(&mut self, at: usize, bytes: Vec<u8>) {
        self.patches.push((at, bytes));
    }

    /// Gives defined global `global` a new initializer.
    pub fn set_global_init(&mut self, global: u32, init: ConstExpr) {
        self.global_inits.insert(global, init);
    }

    /// Moves active data segment `segment` to `offset`.
    pub fn set_data_offset(&mut self, segment: u32, offset: ConstExpr) {
        self.data_offsets.insert(segment, offset);
    }

    /// Points the function export `name` at `func` (a start-up wrapper that calls the original).
    pub fn redirect_export(&mut self, name: &str, func: u32) {
        self.export_targets.insert(name.to_string(), func);
    }

    /// Exports function `func` (usually one a pass added) as `name`, after the original exports.
    /// The caller makes sure no export of that name exists.
    pub fn add_function_export(&mut self, name: &str, func: u32) {
        self.new_exports.push((name.to_string(), func));
    }

    /// Moves the body of defined function `func`, byte for byte, to a new function of the same
    /// type named `name`, and returns the new function's index. Give `func` its new body with
    /// [`Edits::replace_body`]: every call, export and table entry keeps reaching `func`, so
    /// the new body wraps the moved one for all of them. Rewriters do not see the moved body.
    pub fn move_body(&mut self, module: &Module<'_>, func: u32, name: &str) -> u32 {
        // The body is copied when the module is emitted (see `moved_bodies`); this one is a
        // placeholder.
        let new = self.add_function(
            module,
            NewFunction {
                type_index: module.func_types[func as usize],
                body: Function::new([]),
                name: name.to_string(),
            },
        );
        self.moved_bodies.insert(new, func);
        new
    }

    /// Gives defined function `func` the body `code` (ending with `End`) with `locals` after
    /// its parameters, in its original slot.
    pub fn replace_body(&mut self, func: u32, locals: &[(u32, ValType)], code: &[Instruction<'_>]) {
        let mut body = Function::new(locals.iter().copied());
        for ins in code {
            body.instruction(ins);
        }
        self.replaced_bodies.insert(func, body);
    }

    /// Gives memory `memory` new limits.
    pub fn set_memory_type(&mut self, memory: u32, ty: wasm_encoder::MemoryType) {
        self.memory_types.insert(memory, ty);
    }

    /// Gives defined table `table` a new type (larger limits, for slots a pass appends).
    pub fn set_table_type(&mut self, table: u32, ty: TableType) {
        self.table_types.insert(table, ty);
    }

    /// Records in the output's `wasmfix` custom section that `what` was applied, so a later
    /// run (or `inspect`) knows the module is fixed and does not apply it twice.
    pub fn record_applied(&mut self, what: &str, detail: serde_json::Value) {
        self.applied.insert(what.to_string(), detail);
    }

    /// Drops the custom section at `Module::sections[index]`.
    pub fn drop_custom(&mut self, index: usize) {
        self.custom_replaced.insert(index, None);
    }

    /// Appends the custom section `section` at the end of the module.
    pub fn append_custom(&mut self, section: &impl Section) {
        self.custom_appended.push(encode_section(section));
    }

    /// Names added global `global` in the name section (`wasmfix:…`).
    pub fn name_global(&mut self, global: u32, name: impl Into<String>) {
        self.item_names.insert((GLOBAL_NAMES, global), name.into());
    }

    /// Names added table `table` in the name section (`wasmfix:…`).
    pub fn name_table(&mut self, table: u32, name: impl Into<String>) {
        self.item_names.insert((TABLE_NAMES, table), name.into());
    }

    /// Names added data segment `segment` in the name section (`wasmfix:…`).
    pub fn name_data(&mut self, segment: u32, name: impl Into<String>) {
        self.item_names.insert((DATA_NAMES, segment), name.into());
    }

    /// Names of the functions added so far, by output index.
    pub fn new_function_names<'s>(
        &'s self,
        module: &Module<'_>,
    ) -> impl Iterator<Item = (u32, &'s str)> + 's {
        let base = module.num_funcs();
        self.new_functions
            .iter()
            .enumerate()
            .map(move |(i, f)| (base + i as u32, f.name.as_str()))
    }
}

/// A section as it appears in a module: id, size, contents.
pub fn encode_section(section: &impl Section) -> Vec<u8> {
    let mut out = vec![section.id()];
    section.encode(&mut out);
    out
}
