//! The WebAssembly features of a run: what the input uses, plus what the user enables.
//!
//! A post-link step must not shrink the set of engines a module runs on (wasm3, WAMR builds
//! without tail calls, MVP-only engines, older browsers). So a pass may use a post-MVP
//! feature (an extra table, `return_call`, a passive data segment, `ref.test`, …) only when
//! the input already uses it — then using it is free — or the user enabled it
//! (`--enable-tail-call`, `--enable-all`, binaryen's names). Passes ask [`RunFeatures::allows`]
//! to choose a design and record what they emit with `PassCx::use_feature`; the output is
//! validated with exactly the input's features plus the recorded ones, and a `target_features`
//! section, when the input has one, lists the recorded ones too.
//!
//! What the input uses is its `target_features` section (the toolchain's declaration, when
//! present) together with what its sections and code actually use: the sections are read
//! here, the code by the one walk over every function body that the facts already make
//! ([`crate::facts::CodeFacts::features`], classified by [`operator_feature`]).

use crate::module::Module;
use anyhow::{Result, bail};
use wasmparser::{
    CompositeInnerType, ElementItems, ElementKind, HeapType, Operator, RefType, TypeRef, ValType,
    VisitOperator, VisitSimdOperator, WasmFeatures,
};

/// A WebAssembly proposal beyond 1.0, named as binaryen names it (`--enable-NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    SignExt,
    NontrappingFloatToInt,
    BulkMemory,
    /// `memory.copy` and `memory.fill` only (LLVM 20 split them off bulk memory).
    BulkMemoryOpt,
    ReferenceTypes,
    /// An over-long LEB for `call_indirect`'s table (part of reference types, split off by LLVM 20).
    CallIndirectOverlong,
    Multivalue,
    TailCall,
    Simd,
    RelaxedSimd,
    Threads,
    ExceptionHandling,
    Memory64,
    Multimemory,
    ExtendedConst,
    /// GC and typed function references (binaryen folds both into `gc`).
    Gc,
    CustomPageSizes,
    WideArithmetic,
    StackSwitching,
    SharedEverything,
    CustomDescriptors,
    /// The compact encodings of the import section (one module name for many imports).
    CompactImports,
}

use Feature as F;

impl Feature {
    pub const ALL: [Feature; 22] = [
        F::SignExt,
        F::NontrappingFloatToInt,
        F::BulkMemory,
        F::BulkMemoryOpt,
        F::ReferenceTypes,
        F::CallIndirectOverlong,
        F::Multivalue,
        F::TailCall,
        F::Simd,
        F::RelaxedSimd,
        F::Threads,
        F::ExceptionHandling,
        F::Memory64,
        F::Multimemory,
        F::ExtendedConst,
        F::Gc,
        F::CustomPageSizes,
        F::WideArithmetic,
        F::StackSwitching,
        F::SharedEverything,
        F::CustomDescriptors,
        F::CompactImports,
    ];

    /// binaryen's name, as in `--enable-NAME` / `--disable-NAME`.
    pub fn name(self) -> &'static str {
        match self {
            F::SignExt => "sign-ext",
            F::NontrappingFloatToInt => "nontrapping-float-to-int",
            F::BulkMemory => "bulk-memory",
            F::BulkMemoryOpt => "bulk-memory-opt",
            F::ReferenceTypes => "reference-types",
            F::CallIndirectOverlong => "call-indirect-overlong",
            F::Multivalue => "multivalue",
            F::TailCall => "tail-call",
            F::Simd => "simd",
            F::RelaxedSimd => "relaxed-simd",
            F::Threads => "threads",
            F::ExceptionHandling => "exception-handling",
            F::Memory64 => "memory64",
            F::Multimemory => "multimemory",
            F::ExtendedConst => "extended-const",
            F::Gc => "gc",
            F::CustomPageSizes => "custom-page-sizes",
            F::WideArithmetic => "wide-arithmetic",
            F::StackSwitching => "stack-switching",
            F::SharedEverything => "shared-everything",
            F::CustomDescriptors => "custom-descriptors",
            F::CompactImports => "compact-imports",
        }
    }

    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The names LLVM writes in a `target_features` section for this feature (the first is
    /// the one wasmfix writes).
    fn target_feature_names(self) -> &'static [&'static str] {
        match self {
            F::SignExt => &["sign-ext"],
            F::NontrappingFloatToInt => &["nontrapping-fptoint"],
            F::BulkMemory => &["bulk-memory"],
            F::BulkMemoryOpt => &["bulk-memory-opt"],
            F::ReferenceTypes => &["reference-types"],
            F::CallIndirectOverlong => &["call-indirect-overlong"],
            F::Multivalue => &["multivalue"],
            F::TailCall => &["tail-call"],
            F::Simd => &["simd128"],
            F::RelaxedSimd => &["relaxed-simd"],
            F::Threads => &["atomics", "shared-mem"],
            F::ExceptionHandling => &["exception-handling"],
            F::Memory64 => &["memory64"],
            F::Multimemory => &["multimemory"],
            F::ExtendedConst => &["extended-const"],
            F::Gc => &["gc", "typed-function-references"],
            F::CustomPageSizes => &["custom-page-sizes"],
            F::WideArithmetic => &["wide-arithmetic"],
            F::StackSwitching => &["stack-switching", "typed-continuations"],
            F::SharedEverything => &["shared-everything"],
            F::CustomDescriptors => &["custom-descriptors"],
            F::CompactImports => &["compact-imports"],
        }
    }

    /// Features that come with this one: allowing it allows them too.
    fn implies(self) -> &'static [Feature] {
        match self {
            F::BulkMemory => &[F::BulkMemoryOpt],
            F::ReferenceTypes => &[F::CallIndirectOverlong],
            F::Gc => &[F::ReferenceTypes, F::CallIndirectOverlong],
            F::RelaxedSimd => &[F::Simd],
            _ => &[],
        }
    }

    /// What the validator must accept for a module that uses this feature.
    fn wasm_features(self) -> WasmFeatures {
        type W = WasmFeatures;
        match self {
            F::SignExt => W::SIGN_EXTENSION,
            F::NontrappingFloatToInt => W::SATURATING_FLOAT_TO_INT,
            F::BulkMemory => W::BULK_MEMORY | W::BULK_MEMORY_OPT,
            F::BulkMemoryOpt => W::BULK_MEMORY_OPT,
            F::ReferenceTypes => W::REFERENCE_TYPES | W::CALL_INDIRECT_OVERLONG,
            F::CallIndirectOverlong => W::CALL_INDIRECT_OVERLONG,
            F::Multivalue => W::MULTI_VALUE,
            F::TailCall => W::TAIL_CALL,
            F::Simd => W::SIMD,
            F::RelaxedSimd => W::SIMD | W::RELAXED_SIMD,
            F::Threads => W::THREADS,
            F::ExceptionHandling => W::EXCEPTIONS | W::LEGACY_EXCEPTIONS,
            F::Memory64 => W::MEMORY64,
            F::Multimemory => W::MULTI_MEMORY,
            F::ExtendedConst => W::EXTENDED_CONST,
            F::Gc => W::GC | W::FUNCTION_REFERENCES | W::REFERENCE_TYPES,
            F::CustomPageSizes => W::CUSTOM_PAGE_SIZES,
            F::WideArithmetic => W::WIDE_ARITHMETIC,
            F::StackSwitching => W::STACK_SWITCHING,
            F::SharedEverything => W::SHARED_EVERYTHING_THREADS,
            F::CustomDescriptors => W::CUSTOM_DESCRIPTORS,
            F::CompactImports => W::COMPACT_IMPORTS,
        }
    }
}

/// A set of [`Feature`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FeatureSet(u32);

impl FeatureSet {
    pub const EMPTY: FeatureSet = FeatureSet(0);

    pub fn all() -> FeatureSet {
        Feature::ALL.into_iter().collect()
    }

    pub fn contains(self, f: Feature) -> bool {
        self.0 & bit(f) != 0
    }

    pub fn insert(&mut self, f: Feature) {
        self.0 |= bit(f);
    }

    pub fn remove(&mut self, f: Feature) {
        self.0 &= !bit(f);
    }

    pub fn union(self, other: FeatureSet) -> FeatureSet {
        FeatureSet(self.0 | other.0)
    }

    pub fn minus(self, other: FeatureSet) -> FeatureSet {
        FeatureSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set with every feature its members imply (see `Feature::implies`).
    pub fn closed(self) -> FeatureSet {
        let mut s = self;
        for f in self.iter() {
            for &g in f.implies() {
                s.insert(g);
            }
        }
        s
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |&f| self.contains(f))
    }

    /// `a, b, c`, or `none beyond WebAssembly 1.0`.
    pub fn names(self) -> String {
        if self.is_empty() {
            return "none beyond WebAssembly 1.0".into();
        }
        self.iter()
            .map(Feature::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What a validator must accept: WebAssembly 1.0 plus these features.
    pub fn wasm_features(self) -> WasmFeatures {
        self.iter()
            .fold(WasmFeatures::WASM1, |w, f| w | f.wasm_features())
    }
}

fn bit(f: Feature) -> u32 {
    1 << f as u32
}

impl FromIterator<Feature> for FeatureSet {
    fn from_iter<I: IntoIterator<Item = Feature>>(iter: I) -> Self {
        let mut s = FeatureSet::EMPTY;
        for f in iter {
            s.insert(f);
        }
        s
    }
}

impl serde::Serialize for FeatureSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Feature::name))
    }
}

/// What the user asked for on the command line: `--enable-X`, `--disable-X`, `--enable-all`,
/// `--mvp-features`, applied in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeatureChoice {
    pub enabled: FeatureSet,
    pub disabled: FeatureSet,
}

impl FeatureChoice {
    pub fn enable(&mut self, f: Feature) {
        self.enabled.insert(f);
        self.disabled.remove(f);
    }

    pub fn disable(&mut self, f: Feature) {
        self.disabled.insert(f);
        self.enabled.remove(f);
    }

    pub fn enable_all(&mut self) {
        self.enabled = FeatureSet::all();
        self.disabled = FeatureSet::EMPTY;
    }

    /// `--mvp-features`: nothing beyond what the input uses.
    pub fn mvp(&mut self) {
        self.disabled = FeatureSet::all();
        self.enabled = FeatureSet::EMPTY;
    }
}

/// What the input uses, and how that was found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputFeatures {
    /// Used by the input: declared in `target_features` or found in its sections and code.
    pub used: FeatureSet,
    /// Listed with `+` in the input's `target_features` section, when it has one.
    pub declared: Option<FeatureSet>,
    /// Found in the sections and code.
    pub detected: FeatureSet,
    pub how: String,
}

impl InputFeatures {
    /// `code`: the features found by the facts' walk over every function body.
    pub fn new(m: &Module<'_>, code: FeatureSet) -> InputFeatures {
        let detected = section_features(m).union(code);
        let declared = target_features(m).map(|t| t.plus);
        let used = detected.union(declared.unwrap_or_default()).closed();
        let how = match declared {
            Some(d) => format!(
                "target_features section declares {}; sections and code use {}",
                d.names(),
                detected.names()
            ),
            None => format!(
                "no target_features section; sections and code use {}",
                detected.names()
            ),
        };
        InputFeatures {
            used,
            declared,
            detected,
            how,
        }
    }
}

/// The features a run may use: the input's plus what the user enabled.
#[derive(Debug, Clone, Copy)]
pub struct RunFeatures {
    pub input: FeatureSet,
    pub enabled: FeatureSet,
}

impl RunFeatures {
    /// The run's features; a user who disables a feature the input uses gets an error.
    pub fn new(input: &InputFeatures, choice: &FeatureChoice) -> Result<RunFeatures> {
        let conflict = choice.disabled.iter().find(|&f| input.used.contains(f));
        if let Some(f) = conflict
            && choice.disabled != FeatureSet::all()
        {
            bail!(
                "--disable-{}: the input already uses {} ({}); a rewrite cannot remove it",
                f.name(),
                f.name(),
                input.how
            );
        }
        Ok(RunFeatures {
            input: input.used,
            enabled: choice.enabled.closed().minus(input.used),
        })
    }

    /// Whether a pass may emit what `f` allows.
    pub fn allows(&self, f: Feature) -> bool {
        self.input.contains(f) || self.enabled.contains(f)
    }

    /// The one-line reason a pass gives when it needs `f` and the run does not allow it.
    pub fn missing(&self, f: Feature, what: &str) -> String {
        format!(
            "{what} needs {}, which the input does not use: enable it with --enable-{}",
            f.name(),
            f.name()
        )
    }
}

/// A `target_features` section: features listed with `+` (used) and `-` (disallowed).
#[derive(Debug, Clone, Default)]
pub struct TargetFeatures {
    pub plus: FeatureSet,
    /// Every entry in order: (prefix, name), names wasmfix does not know included.
    pub entries: Vec<(u8, String)>,
}

/// Reads the `target_features` section (`vec(prefix: byte, name: string)`), if present and
/// well formed.
pub fn target_features(m: &Module<'_>) -> Option<TargetFeatures> {
    let s = m.custom("target_features")?;
    let mut r = m.section_reader(s);
    let n = r.read_var_u32().ok()?;
    let mut out = TargetFeatures::default();
    for _ in 0..n {
        let prefix = r.read_u8().ok()?;
        let name = r.read_string().ok()?;
        if prefix == b'+'
            && let Some(f) = Feature::ALL
                .into_iter()
                .find(|f| f.target_feature_names().contains(&name))
        {
            out.plus.insert(f);
        }
        out.entries.push((prefix, name.to_string()));
    }
    r.eof().then_some(out)
}

/// The contents of a `target_features` section that lists `added` with `+` besides the
/// input's entries (a `-` entry for an added feature becomes `+`), or `None` when the section
/// already lists them all.
pub fn updated_target_features(current: &TargetFeatures, added: FeatureSet) -> Option<Vec<u8>> {
    let missing: Vec<Feature> = added.minus(current.plus).iter().collect();
    if missing.is_empty() {
        return None;
    }
    let mut entries = current.entries.clone();
    for f in missing {
        let names = f.target_feature_names();
        match entries
            .iter_mut()
            .find(|(_, n)| names.contains(&n.as_str()))
        {
            Some(entry) => entry.0 = b'+',
            None => entries.push((b'+', names[0].to_string())),
        }
    }
    let mut out = Vec::new();
    leb(&mut out, entries.len() as u32);
    for (prefix, name) in &entries {
        out.push(*prefix);
        leb(&mut out, name.len() as u32);
        out.extend_from_slice(name.as_bytes());
    }
    Some(out)
}

fn leb(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Features used by the module's sections (types, imports, tables, memories, globals, tags,
/// element and data segments); the code is classified by [`operator_feature`].
fn section_features(m: &Module<'_>) -> FeatureSet {
    let mut s = FeatureSet::EMPTY;
    for t in &m.types {
        if !t.is_final || !t.supertype_idxs.is_empty() {
            s.insert(F::Gc);
        }
        if t.composite_type.shared {
            s.insert(F::SharedEverything);
        }
        if t.composite_type.descriptor_idx.is_some() || t.composite_type.describes_idx.is_some() {
            s.insert(F::CustomDescriptors);
        }
        match &t.composite_type.inner {
            CompositeInnerType::Func(f) => {
                if f.results().len() > 1 {
                    s.insert(F::Multivalue);
                }
                for &v in f.params().iter().chain(f.results()) {
                    val_type(&mut s, v);
                }
            }
            CompositeInnerType::Cont(_) => s.insert(F::StackSwitching),
            CompositeInnerType::Array(a) => {
                s.insert(F::Gc);
                storage_type(&mut s, a.0.element_type);
            }
            CompositeInnerType::Struct(st) => {
                s.insert(F::Gc);
                for field in st.fields.iter() {
                    storage_type(&mut s, field.element_type);
                }
            }
        }
    }
    if m.explicit_rec_groups {
        s.insert(F::Gc);
    }
    if m.tables.len() > 1 {
        s.insert(F::ReferenceTypes);
    }
    for t in &m.tables {
        if t.table64 {
            s.insert(F::Memory64);
        }
        if t.shared {
            s.insert(F::SharedEverything);
        }
        // WebAssembly 1.0 tables hold funcref; any other element type is a reference type.
        if t.element_type != RefType::FUNCREF {
            ref_type(&mut s, t.element_type);
        }
    }
    for init in &m.table_inits {
        s.insert(F::Gc);
        const_expr(m, &mut s, init);
    }
    if m.memories.len() > 1 {
        s.insert(F::Multimemory);
    }
    for mem in &m.memories {
        if mem.memory64 {
            s.insert(F::Memory64);
        }
        if mem.shared {
            s.insert(F::Threads);
        }
        if mem.page_size_log2.is_some() {
            s.insert(F::CustomPageSizes);
        }
    }
    for g in &m.global_types {
        val_type(&mut s, g.content_type);
        if g.shared {
            s.insert(F::SharedEverything);
        }
    }
    for g in &m.defined_globals {
        const_expr(m, &mut s, &g.init);
    }
    for i in &m.imports {
        if let TypeRef::FuncExact(_) = i.ty {
            s.insert(F::CustomDescriptors);
        }
    }
    if let Some(section) = m.sections.iter().find(|s| s.id == 2) {
        let groups = wasmparser::ImportSectionReader::new(m.section_reader(section));
        if groups
            .into_iter()
            .flatten()
            .flatten()
            .any(|g| !matches!(g, wasmparser::Imports::Single(..)))
        {
            s.insert(F::CompactImports);
        }
    }
    if !m.tags.is_empty() {
        s.insert(F::ExceptionHandling);
    }
    // A tag with results is a stack-switching tag (an exception tag has none).
    if m.tags.iter().any(|t| {
        m.func_type(t.func_type_idx)
            .is_some_and(|f| !f.results().is_empty())
    }) {
        s.insert(F::StackSwitching);
    }
    for e in &m.elements {
        match &e.kind {
            // Declared segments came with reference types, but only their `ref.func`s need
            // it (see the items below); the encoding is bulk memory's.
            ElementKind::Passive | ElementKind::Declared => s.insert(F::BulkMemory),
            ElementKind::Active {
                table_index,
                offset_expr,
            } => {
                if table_index.is_some_and(|t| t != 0) {
                    s.insert(F::ReferenceTypes);
                }
                const_expr(m, &mut s, offset_expr);
            }
        }
        // The expressions encoding (even of funcref items) came with reference types.
        if let ElementItems::Expressions(ty, items) = &e.items {
            ref_type(&mut s, *ty);
            for item in items.clone().into_iter().flatten() {
                const_expr(m, &mut s, &item);
            }
        }
    }
    if m.data_count.is_some() {
        s.insert(F::BulkMemory);
    }
    for d in &m.data {
        match &d.kind {
            wasmparser::DataKind::Passive => s.insert(F::BulkMemory),
            wasmparser::DataKind::Active {
                memory_index,
                offset_expr,
            } => {
                if *memory_index != 0 {
                    s.insert(F::Multimemory);
                }
                const_expr(m, &mut s, offset_expr);
            }
        }
    }
    s
}

/// Features a value type needs (function signatures, locals, globals, block types).
pub fn val_type(s: &mut FeatureSet, v: ValType) {
    match v {
        ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 => {}
        ValType::V128 => s.insert(F::Simd),
        ValType::Ref(r) => ref_type(s, r),
    }
}

/// Features a reference type needs (as the validator checks them: every one needs reference
/// types; indexed and non-nullable ones function references, which binaryen counts as GC).
fn ref_type(s: &mut FeatureSet, r: RefType) {
    use wasmparser::AbstractHeapType as A;
    s.insert(F::ReferenceTypes);
    match r.heap_type() {
        HeapType::Concrete(_) => s.insert(F::Gc),
        HeapType::Exact(_) => s.insert(F::CustomDescriptors),
        HeapType::Abstract { shared, ty } => {
            if shared {
                s.insert(F::SharedEverything);
            }
            match (ty, r.is_nullable()) {
                (A::Func | A::Extern, true) => {}
                (A::Exn | A::NoExn, _) => s.insert(F::ExceptionHandling),
                (A::Cont | A::NoCont, _) => s.insert(F::StackSwitching),
                _ => s.insert(F::Gc),
            }
        }
    }
}

/// Features a heap type immediate needs (`ref.null`, `ref.test`, `ref.cast`).
fn heap_type(s: &mut FeatureSet, h: HeapType) {
    if let Some(r) = RefType::new(true, h) {
        ref_type(s, r);
    }
}

fn storage_type(s: &mut FeatureSet, t: wasmparser::StorageType) {
    if let wasmparser::StorageType::Val(v) = t {
        val_type(s, v);
    }
}

/// Features of the operators of a constant expression.
fn const_expr(m: &Module<'_>, s: &mut FeatureSet, expr: &wasmparser::ConstExpr<'_>) {
    for op in expr.get_operators_reader().into_iter().flatten() {
        match op {
            // WebAssembly 1.0 reads only imported globals in constant expressions.
            Operator::GlobalGet { global_index } if global_index >= m.imported_globals => {
                s.insert(F::Gc)
            }
            Operator::I32Add
            | Operator::I32Sub
            | Operator::I32Mul
            | Operator::I64Add
            | Operator::I64Sub
            | Operator::I64Mul => s.insert(F::ExtendedConst),
            other => operator_features(s, &other),
        }
    }
}

/// The features one operator needs: its proposal's, and what its immediates need beyond it
/// (see [`OperatorFeatures`]).
pub fn operator_features(s: &mut FeatureSet, op: &Operator<'_>) {
    OperatorFeatures(s).visit_operator(op)
}

fn block_type(s: &mut FeatureSet, ty: wasmparser::BlockType) {
    match ty {
        wasmparser::BlockType::Empty => {}
        wasmparser::BlockType::Type(v) => val_type(s, v),
        // Even `[] -> []` spelled as a type index is multi-value's encoding.
        wasmparser::BlockType::FuncType(_) => s.insert(F::Multivalue),
    }
}

/// The feature of the proposal `@proposal` that operator `op` belongs to, as wasmparser's
/// `for_each_operator!` names them (`None` for WebAssembly 1.0).
macro_rules! proposal_feature {
    (@mvp $op:ident) => {
        None
    };
    (@sign_extension $op:ident) => {
        Some(F::SignExt)
    };
    (@saturating_float_to_int $op:ident) => {
        Some(F::NontrappingFloatToInt)
    };
    (@bulk_memory MemoryCopy) => {
        Some(F::BulkMemoryOpt)
    };
    (@bulk_memory MemoryFill) => {
        Some(F::BulkMemoryOpt)
    };
    (@bulk_memory $op:ident) => {
        Some(F::BulkMemory)
    };
    (@reference_types $op:ident) => {
        Some(F::ReferenceTypes)
    };
    (@tail_call $op:ident) => {
        Some(F::TailCall)
    };
    (@simd $op:ident) => {
        Some(F::Simd)
    };
    (@relaxed_simd $op:ident) => {
        Some(F::RelaxedSimd)
    };
    (@threads $op:ident) => {
        Some(F::Threads)
    };
    (@acquire_release_atomics $op:ident) => {
        Some(F::Threads)
    };
    (@shared_everything_threads $op:ident) => {
        Some(F::SharedEverything)
    };
    (@exceptions $op:ident) => {
        Some(F::ExceptionHandling)
    };
    (@legacy_exceptions $op:ident) => {
        Some(F::ExceptionHandling)
    };
    (@gc $op:ident) => {
        Some(F::Gc)
    };
    (@function_references $op:ident) => {
        Some(F::Gc)
    };
    (@stack_switching $op:ident) => {
        Some(F::StackSwitching)
    };
    (@wide_arithmetic $op:ident) => {
        Some(F::WideArithmetic)
    };
    (@memory_control $op:ident) => {
        Some(F::Gc)
    };
    (@custom_descriptors $op:ident) => {
        Some(F::CustomDescriptors)
    };
}
/// The proposal an operator belongs to (`None` for WebAssembly 1.0 operators).
pub fn operator_feature(op: &Operator<'_>) -> Option<Feature> {
    macro_rules! proposal {
        ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
            match op {
                $( Operator::$op { .. } => proposal_feature!(@$proposal $op), )*
                _ => Some(F::Gc),
            }
        };
    }
    wasmparser::for_each_operator!(proposal)
}

/// What an operator's immediates need beyond its proposal: a `call_indirect` on another table
/// than 0, a block type with several values, typed values in blocks and `select`, the
/// reference types of `ref.null`, `ref.test`, `ref.cast` and `br_on_cast`.
macro_rules! immediate_features {
    ($s:expr; CallIndirect $type_index:ident $table_index:ident) => {
        if $table_index != 0 {
            $s.insert(F::ReferenceTypes)
        }
    };
    ($s:expr; Block $blockty:ident) => {
        block_type($s, $blockty)
    };
    ($s:expr; Loop $blockty:ident) => {
        block_type($s, $blockty)
    };
    ($s:expr; If $blockty:ident) => {
        block_type($s, $blockty)
    };
    ($s:expr; Try $blockty:ident) => {
        block_type($s, $blockty)
    };
    ($s:expr; TryTable $try_table:ident) => {
        block_type($s, $try_table.ty)
    };
    ($s:expr; TypedSelect $ty:ident) => {
        val_type($s, $ty)
    };
    ($s:expr; TypedSelectMulti $tys:ident) => {
        for &ty in &$tys {
            val_type($s, ty)
        }
    };
    ($s:expr; RefNull $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; RefTestNonNull $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; RefTestNullable $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; RefCastNonNull $hty:ident) => {
        heap_type($s, $hty)
    };

    ($s:expr; RefCastNullable $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; RefCastDescEqNonNull $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; RefCastDescEqNullable $hty:ident) => {
        heap_type($s, $hty)
    };
    ($s:expr; BrOnCast $depth:ident $from:ident $to:ident) => {{
        ref_type($s, $from);
        ref_type($s, $to);
    }};
    ($s:expr; BrOnCastFail $depth:ident $from:ident $to:ident) => {{
        ref_type($s, $from);
        ref_type($s, $to);
    }};
    ($s:expr; BrOnCastDescEq $depth:ident $from:ident $to:ident) => {{
        ref_type($s, $from);
        ref_type($s, $to);
    }};
    ($s:expr; BrOnCastDescEqFail $depth:ident $from:ident $to:ident) => {{
        ref_type($s, $from);
        ref_type($s, $to);
    }};
    // An access to a memory other than 0 needs a second memory, which the sections show.
    ($s:expr; $op:ident $($arg:ident)*) => {};
}

/// An operator visitor that records the features of every operator it visits in a set: the
/// operator's proposal, and what its immediates need beyond it. The facts' walk over the code
/// runs it beside the validator ([`crate::facts::CodeWalk`]), so the code is decoded once.
pub struct OperatorFeatures<'s>(pub &'s mut FeatureSet);

macro_rules! record_features {
    ($( @$proposal:ident $op:ident $({ $($arg:ident: $argty:ty),* })? => $visit:ident ($($ann:tt)*))*) => {
        $(
            #[inline]
            #[allow(unused_variables)]
            fn $visit(&mut self $($(,$arg: $argty)*)?) {
                if let Some(f) = proposal_feature!(@$proposal $op) {
                    self.0.insert(f);
                }
                immediate_features!(self.0; $op $($($arg)*)?);
            }
        )*
    };
}

impl<'a> VisitOperator<'a> for OperatorFeatures<'_> {
    type Output = ();

    fn simd_visitor(&mut self) -> Option<&mut dyn VisitSimdOperator<'a, Output = ()>> {
        Some(self)
    }

    wasmparser::for_each_visit_operator!(record_features);
}

impl<'a> VisitSimdOperator<'a> for OperatorFeatures<'_> {
    wasmparser::for_each_visit_simd_operator!(record_features);
}

// Features that only an operator's encoding shows: WebAssembly 1.0 requires the table of
// `call_indirect` and the memory of `memory.size` / `memory.grow` to be one zero byte (an
// over-long LEB zero, as wasm-ld leaves when it pads relocated immediates, needs reference
// types' `call-indirect-overlong`, or multi-memory), and a memory access spells memory 0
// implicitly (an explicit index needs multi-memory). The facts' walk asks these as it sees the
// operator, before it is decoded to its end: each reads the encoding from the opcode on.

/// Whether a `call_indirect` on table 0, encoded from `code` on, spells the table index in more
/// than one byte (a one-byte zero is `0x00`; a longer one starts with `0x80`).
#[inline]
pub fn overlong_zero_table(code: &[u8]) -> bool {
    // The opcode, then the type index (a LEB), then the table index.
    let type_len = code
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map_or(code.len(), |i| i + 1);
    code.get(1 + type_len).is_some_and(|&b| b != 0)
}

/// Whether a `memory.size` or `memory.grow` of memory 0, encoded from `code` on, spells the
/// memory index in more than one byte.
#[inline]
pub fn overlong_zero_memory(code: &[u8]) -> bool {
    code.get(1).is_some_and(|&b| b != 0)
}

/// Whether the memory argument of the operator encoded from `code` on names its memory
/// explicitly (bit 6 of its flags), which needs multi-memory.
#[inline]
pub fn explicit_memory(code: &[u8]) -> bool {
    // The memarg follows the opcode: one byte, or a prefix byte and a LEB.
    let opcode_len = match code.first() {
        Some(0xfc..=0xfe) => code
            .iter()
            .skip(1)
            .position(|b| b & 0x80 == 0)
            .map_or(code.len(), |i| i + 2),
        _ => 1,
    };
    code.get(opcode_len).is_some_and(|flags| flags & 0x40 != 0)
}
