//! The emitter: writes the output module from the input and the passes' edits.
//!
//! Untouched sections are copied byte for byte, header included. A section that gains items
//! is rebuilt with `wasm-encoder`: its original items first, copied raw where the encoder
//! allows it (globals, elements, data, function bodies) and re-encoded with
//! `reencode::RoundtripReencoder` where it does not (types, functions, tables: small sections),
//! then the new items. Function bodies that no rewriter wants are copied raw; the others are
//! decoded once and streamed through every rewriter that wants them. A body whose rewriters all
//! look only at indirect calls ([`Sees::IndirectCalls`]) is not decoded: its calls, found where
//! the input's validation saw them, go through the rewriters, and the bytes between them are
//! copied as they are (the input's encoding of untouched instructions is kept).
//!
//! When asked (`EmitOptions::code_map`), the Code section records where every original body and
//! instruction went ([`CodeMap`]); DWARF sections are then updated with that map
//! ([`crate::dwarf`]) before they are written in their original places. It is built when the
//! output reaches it, so that a [`BodySink`] can be shown the sections before it and each new
//! body as it is made (the pipeline validates them meanwhile), and first when a DWARF section
//! comes before it.
//!
//! The output is an [`Output`]: input ranges and built bytes, never concatenated. What is
//! copied (whole sections, runs of untouched function bodies, the original names of a name
//! section that gains names) stays a range of the input, so a rewrite holds the input plus
//! what changed (1.7x ruby.wasm and 1.9x yosys.wasm at peak with the default pipeline, where
//! one buffer for the whole output and a second copy of the Code section cost 2.9x and 3.0x).

use crate::codemap::CodeMap;
use crate::edit::{BodyCx, BodyRewriter, Edits, ElementItems, Sees};
use crate::facts::CodeFacts;
use crate::module::Module;
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    DataCountSection, DataSection, ElementSection, Encode, Function, FunctionSection,
    GlobalSection, Instruction, Section, TableSection, TypeSection,
};

/// Section ids in the order the binary format requires them.
const SECTION_ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];

fn rank(id: u8) -> usize {
    SECTION_ORDER
        .iter()
        .position(|&s| s == id)
        .unwrap_or(usize::MAX)
}

/// Receives the output's function bodies as they are encoded, so that a caller can check them
/// while the emitter works (the pipeline validates them on another core).
pub trait BodySink {
    /// The output up to its Code section, custom sections left out: sent once, before any
    /// body, when the Code section is rebuilt after every section before it was written.
    fn prefix(&mut self, pieces: Vec<&[u8]>);
    /// The `k`-th function body of the output's Code section (without its size prefix),
    /// re-encoded or new. Bodies come in order; copied bodies are not sent.
    fn body(&mut self, k: u32, bytes: Vec<u8>);
}

/// What the emitter does besides writing the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmitOptions {
    /// Build the old → new [`CodeMap`] when the Code section changes (debug info needs it).
    pub code_map: bool,
    /// Update the code addresses in DWARF with that map (else DWARF is copied unchanged).
    pub update_dwarf: bool,
}

/// What the emitter did, for reports and for the validator.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Defined functions (by function index) whose bodies were re-encoded.
    pub rewritten_functions: Vec<u32>,
    /// Where the input's code went, when asked for and the Code section was rebuilt.
    pub code_map: Option<CodeMap>,
    /// What the DWARF update did, when it ran.
    pub dwarf: Option<crate::dwarf::Updated>,
}

/// Writes the output module into `out`, whose input ranges are ranges of `module.bytes`;
/// `sink` is shown the output's sections before the Code section and its re-encoded and new
/// bodies as they are made (see [`BodySink`]).
pub fn emit(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    code_facts: &CodeFacts,
    out: &mut Output,
    options: EmitOptions,
    sink: Option<&mut dyn BodySink>,
) -> Result<Emitted> {
    let mut emitted = Emitted::default();
    out.copy(0..8);

    let mut changed: Vec<u8> = Vec::new();
    let mut mark = |id: u8, yes: bool| {
        if yes && !changed.contains(&id) {
            changed.push(id)
        }
    };
    mark(1, !edits.new_types.is_empty());
    mark(3, !edits.new_functions.is_empty());
    mark(
        10,
        !edits.new_functions.is_empty()
            || !edits.rewriters.is_empty()
            || !edits.replaced_bodies.is_empty(),
    );
    mark(
        7,
        !edits.export_targets.is_empty() || !edits.new_exports.is_empty(),
    );
    mark(
        4,
        !edits.new_tables.is_empty() || !edits.table_types.is_empty(),
    );
    mark(6, !edits.new_globals.is_empty());
    mark(9, !edits.new_elements.is_empty());
    mark(11, !edits.new_data.is_empty());
    mark(8, edits.new_start.is_some());
    mark(5, !edits.memory_types.is_empty());
    mark(6, !edits.global_inits.is_empty());
    mark(11, !edits.data_offsets.is_empty());
    mark(
        12,
        !edits.new_data.is_empty()
            && (module.data_count.is_some() || edits.new_data.iter().any(|d| d.active.is_none())),
    );

    // Sections that must be created because the input has none: each goes right before the
    // first present section that must follow it, else after the last present one.
    let present: Vec<u8> = module
        .sections
        .iter()
        .map(|s| s.id)
        .filter(|&id| id != 0)
        .collect();
    let mut missing: Vec<u8> = changed
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    missing.sort_by_key(|&id| rank(id));
    let last_known = module.sections.iter().rposition(|s| s.id != 0);

    // Names of what the passes add: merged into the name section, or a new one at the end
    // (so backtraces through wasmfix's functions read well even in a stripped module).
    let added = added_names(module, edits);
    let input_names = module.custom("name").is_some();

    // The Code section is built where it goes, after the sections before it, so that `sink`
    // can start on those while the bodies are made; DWARF sections need its map, so when one
    // comes before it (never in what LLVM writes) the Code section is built first.
    let code_at = module
        .sections
        .iter()
        .position(|s| s.id != 0 && rank(s.id) >= rank(10))
        .unwrap_or(module.sections.len());
    let dwarf_before_code = module.sections[..code_at]
        .iter()
        .any(|s| s.custom_name.is_some_and(|n| n.starts_with(".debug_")));
    let mut built = Built {
        code: None,
        dwarf: BTreeMap::new(),
        emitted: &mut emitted,
        code_facts,
        options,
        // A shorter-lived trait object: `Built` borrows `emitted` for less long than `sink`.
        sink: sink.map(|s| s as &mut dyn BodySink),
    };
    if !changed.contains(&10) {
        if options.code_map {
            // Copied as it is; only its place in the file may change (source maps count from
            // the start of the file).
            built.emitted.code_map = unmoved_code(module);
        }
    } else if dwarf_before_code {
        built.sink = None;
        built.code_and_dwarf(module, edits)?;
    }

    for (index, section) in module.sections.iter().enumerate() {
        if section.id != 0 {
            while let Some(&m) = missing.first() {
                if rank(m) < rank(section.id) {
                    build_section(module, edits, m, out, &mut built)?;
                    missing.remove(0);
                } else {
                    break;
                }
            }
        }
        if section.id == 0 {
            let start = out.len();
            match edits.custom_replaced.get(&index) {
                Some(None) => {}
                Some(Some(encoded)) => out.extend(encoded),
                None if built.dwarf.contains_key(&index) => {
                    let data = built.dwarf.remove(&index).expect("checked");
                    let name = section
                        .custom_name
                        .expect("DWARF sections are custom sections");
                    out.custom_section(name, data);
                }
                None if !added.is_empty() && section.custom_name == Some("name") => {
                    // Custom sections are not validated: a malformed one is kept as it is.
                    match name_section_with_added(module, &added, Some(section)) {
                        Ok(names) => out.append(names),
                        Err(_) => out.copy(section.whole.clone()),
                    }
                }
                None => out.copy(section.whole.clone()),
            }
            out.custom.push(start..out.len());
        } else if changed.contains(&section.id) {
            build_section(module, edits, section.id, out, &mut built)?;
        } else {
            if section.id == 10
                && let Some(map) = &mut built.emitted.code_map
            {
                map.new_code_start =
                    (out.len() + section.contents.start - section.whole.start) as u64;
                map.new_code_len = section.contents.len() as u64;
            }
            out.copy(section.whole.clone());
        }
        if Some(index) == last_known {
            for m in missing.drain(..) {
                build_section(module, edits, m, out, &mut built)?;
            }
        }
    }
    for m in missing.drain(..) {
        build_section(module, edits, m, out, &mut built)?;
    }
    let start = out.len();
    if !added.is_empty() && !input_names {
        out.append(name_section_with_added(module, &added, None)?);
    }
    for encoded in &edits.custom_appended {
        out.extend(encoded);
    }
    out.custom.push(start..out.len());
    Ok(emitted)
}

/// The output module in pieces, in order: ranges of the input copied as they are, and bytes
/// wasmfix built. It is never concatenated on the way out: the validator reads it piece by
/// piece ([`crate::validate::validate_pieces`]) and the CLI writes it piece by piece, so a
/// rewrite holds the input and what changed, not a second copy of the module.
///
/// Every section other than a custom section lies whole in one piece, and so does every
/// function body of a Code section (its size prefix included): what a streaming parser needs.
/// Custom sections may span pieces (a rebuilt name section copies the input's names as input
/// ranges); the validator, which does not read them, is given the module without them.
#[derive(Debug, Default)]
pub struct Output {
    pieces: Vec<Piece>,
    len: usize,
    /// Where the custom sections are (output offsets).
    custom: Vec<std::ops::Range<usize>>,
}

#[derive(Debug)]
enum Piece {
    /// A range of the input (of `module.bytes`).
    Input(std::ops::Range<usize>),
    Built(Vec<u8>),
}

impl Output {
    /// Length of the module in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces as byte slices, in order; `input` is the module the output was emitted from.
    pub fn slices<'a>(&'a self, input: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pieces.iter().map(move |p| match p {
            Piece::Input(r) => &input[r.clone()],
            Piece::Built(b) => &b[..],
        })
    }

    /// The pieces as byte slices without the custom sections: what the validator reads (a
    /// module without its custom sections validates exactly when the module does).
    pub fn slices_without_custom<'a>(&'a self, input: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut skip = self.custom.iter().filter(|r| !r.is_empty()).peekable();
        let mut at = 0;
        for slice in self.slices(input) {
            let end = at + slice.len();
            let mut from = at;
            while let Some(r) = skip.peek() {
                if r.start >= end {
                    break;
                }
                if r.start > from {
                    out.push(&slice[from - at..r.start - at]);
                }
                if r.end > end {
                    from = end;
                    break;
                }
                from = r.end;
                skip.next();
            }
            if from < end {
                out.push(&slice[from - at..]);
            }
            at = end;
        }
        out
    }

    /// Writes the module to `w`, many pieces per call (`write_vectored`): a file takes the
    /// whole module in a few system calls, without copying it through a buffer.
    pub fn write_to(&self, input: &[u8], w: &mut impl std::io::Write) -> std::io::Result<()> {
        use std::io::IoSlice;
        // Linux takes at most 1024 slices per call (IOV_MAX); more would be ignored.
        const PER_CALL: usize = 1024;
        let mut slices: Vec<IoSlice<'_>> = self.slices(input).map(IoSlice::new).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let batch = rest.len().min(PER_CALL);
            match w.write_vectored(&rest[..batch]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The module as one buffer (for callers that want bytes; the CLI streams instead).
    pub fn to_vec(&self, input: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        self.slices(input).for_each(|s| v.extend_from_slice(s));
        v
    }

    /// Appends `range` of the input; a range that continues the last one extends it.
    fn copy(&mut self, range: std::ops::Range<usize>) {
        self.len += range.len();
        match self.pieces.last_mut() {
            Some(Piece::Input(last)) if last.end == range.start => last.end = range.end,
            _ => self.pieces.push(Piece::Input(range)),
        }
    }

    fn built(&mut self) -> &mut Vec<u8> {
        if !matches!(self.pieces.last(), Some(Piece::Built(_))) {
            self.pieces.push(Piece::Built(Vec::new()));
        }
        match self.pieces.last_mut() {
            Some(Piece::Built(b)) => b,
            _ => unreachable!("just pushed"),
        }
    }

    /// Appends built bytes.
    fn extend(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        self.built().extend_from_slice(bytes);
    }

    /// Appends anything `wasm-encoder` encodes (a function with its size prefix, a LEB).
    fn encode(&mut self, item: &(impl Encode + ?Sized)) {
        let buf = self.built();
        let before = buf.len();
        item.encode(buf);
        let added = buf.len() - before;
        self.len += added;
    }

    /// Appends one encoded section (id, size, contents).
    fn section(&mut self, section: &impl Section) {
        let buf = self.built();
        let before = buf.len();
        buf.push(section.id());
        section.encode(buf);
        let added = buf.len() - before;
        self.len += added;
    }

    /// Appends a function body copied from the input: `body` is its range without the size
    /// prefix, which is written in its shortest form (as `CodeSection::raw` does). The input's
    /// own prefix is reused when it is already that form, so runs of copied bodies stay one
    /// input range.
    fn raw_body(&mut self, input: &[u8], body: std::ops::Range<usize>) {
        let mut prefix = Vec::new();
        (body.len() as u32).encode(&mut prefix);
        let at = body.start.wrapping_sub(prefix.len());
        // The byte before the prefix ends the function count or the previous body: if it had
        // its high bit set, the input's prefix would be longer than ours.
        if body.start > prefix.len() && input[at..body.start] == prefix[..] && input[at - 1] < 0x80
        {
            self.copy(at..body.end);
        } else {
            self.extend(&prefix);
            self.extend(&input[body]);
        }
    }

    /// Appends a custom section whose contents are `data`, taken as they are (not copied).
    fn custom_section(&mut self, name: &str, data: Vec<u8>) {
        let mut header = Vec::new();
        name.encode(&mut header);
        let size = header.len() + data.len();
        self.extend(&[0]);
        self.encode(&size);
        self.extend(&header);
        self.len += data.len();
        self.pieces.push(Piece::Built(data));
    }

    /// Appends the pieces of `other`.
    fn append(&mut self, other: Output) {
        for piece in other.pieces {
            match piece {
                Piece::Input(r) => self.copy(r),
                Piece::Built(b) => {
                    self.len += b.len();
                    self.pieces.push(Piece::Built(b));
                }
            }
        }
    }
}

/// The contents of the present section `id`, if any.
fn original<'a>(module: &Module<'a>, id: u8) -> Option<&'a [u8]> {
    module
        .sections
        .iter()
        .find(|s| s.id == id)
        .map(|s| module.contents(s))
}

fn reader(contents: &[u8], offset: usize) -> wasmparser::BinaryReader<'_> {
    wasmparser::BinaryReader::new(contents, offset as u64)
}

fn encoding_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot re-encode: {e}")
}

/// What `emit` builds besides the sections it writes in order, and what it needs for that.
struct Built<'e> {
    /// The Code section's function bodies and their count, until it is written.
    code: Option<(Output, usize)>,
    /// The updated DWARF sections by index in `Module::sections`, until they are written.
    dwarf: BTreeMap<usize, Vec<u8>>,
    emitted: &'e mut Emitted,
    code_facts: &'e CodeFacts,
    options: EmitOptions,
    sink: Option<&'e mut dyn BodySink>,
}

impl Built<'_> {
    /// The Code section's bodies and count, built now (unless built already) when what comes
    /// before it in the output is `out`; the DWARF sections are updated with its map.
    fn code_after(
        &mut self,
        module: &Module<'_>,
        edits: &mut Edits<'_>,
        out: &Output,
    ) -> Result<(Output, usize)> {
        if self.code.is_none() {
            if let Some(sink) = &mut self.sink {
                sink.prefix(out.slices_without_custom(module.bytes));
            }
            self.code_and_dwarf(module, edits)?;
        }
        Ok(self.code.take().expect("just built"))
    }

    /// Builds the Code section and updates the DWARF sections with its map.
    fn code_and_dwarf(&mut self, module: &Module<'_>, edits: &mut Edits<'_>) -> Result<()> {
        let options = self.options;
        let (section, map) = build_code(
            module,
            edits,
            &self.code_facts.indirect_call_offsets,
            self.emitted,
            options.code_map,
            self.sink.as_mut().map(|s| &mut **s as &mut dyn BodySink),
        )?;
        self.code = Some(section);
        self.emitted.code_map = map;
        if let Some(map) = &self.emitted.code_map
            && options.update_dwarf
            && !map.is_identity()
            && crate::dwarf::present(module)
        {
            let mut updated = crate::dwarf::update(module, map)?;
            self.dwarf = std::mem::take(&mut updated.sections);
            self.emitted.dwarf = Some(updated);
        }
        Ok(())
    }
}

fn build_section(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    id: u8,
    out: &mut Output,
    built: &mut Built<'_>,
) -> Result<()> {
    let mut re = RoundtripReencoder;
    let start = |id| {
        module
            .sections
            .iter()
            .find(|s| s.id == id)
            .map_or(0, |s| s.contents.start)
    };
    match id {
        1 => {
            let mut types = TypeSection::new();
            if let Some(c) = original(module, 1) {
                let r = wasmparser::TypeSectionReader::new(reader(c, start(1)))?;
                re.parse_type_section(&mut types, r)
                    .map_err(encoding_error)?;
            }
            for t in &edits.new_types {
                let ft = re.func_type(t.clone()).map_err(encoding_error)?;
                types.ty().func_type(&ft);
            }
            out.section(&types);
        }
        3 => {
            let mut funcs = FunctionSection::new();
            if let Some(c) = original(module, 3) {
                let r = wasmparser::FunctionSectionReader::new(reader(c, start(3)))?;
                re.parse_function_section(&mut funcs, r)
                    .map_err(encoding_error)?;
            }
            for f in &edits.new_functions {
                funcs.function(f.type_index);
            }
            out.section(&funcs);
        }
        4 => {
            let mut tables = TableSection::new();
            if let Some(c) = original(module, 4) {
                let r = wasmparser::TableSectionReader::new(reader(c, start(4)))?;
                for (k, table) in r.into_iter().enumerate() {
                    let index = module.imported_tables + k as u32;
                    let table = table?;
                    let ty = match edits.table_types.get(&index) {
                        Some(ty) => *ty,
                        None => re.table_type(table.ty).map_err(encoding_error)?,
                    };
                    match table.init {
                        wasmparser::TableInit::RefNull => tables.table(ty),
                        wasmparser::TableInit::Expr(e) => {
                            let init = re.const_expr(e).map_err(encoding_error)?;
                            tables.table_with_init(ty, &init)
                        }
                    };
                }
            }
            for (ty, init) in &edits.new_tables {
                match init {
                    Some(init) => tables.table_with_init(*ty, init),
                    None => tables.table(*ty),
                };
            }
            out.section(&tables);
        }
        6 => {
            let mut globals = GlobalSection::new();
            for (i, g) in module.defined_globals.iter().enumerate() {
                let index = module.imported_globals + i as u32;
                match edits.global_inits.get(&index) {
                    Some(init) => {
                        let ty = RoundtripReencoder
                            .global_type(g.ty)
                            .map_err(encoding_error)?;
                        globals.global(ty, init)
                    }
                    None => globals.raw(&module.bytes[g.bytes.clone()]),
                };
            }
            for (ty, init) in &edits.new_globals {
                globals.global(*ty, init);
            }
            out.section(&globals);
        }
        9 => {
            let mut elements = ElementSection::new();
            for e in &module.elements {
                elements.raw(&module.bytes[e.range.start as usize..e.range.end as usize]);
            }
            for e in &edits.new_elements {
                let (table, items) = match &e.items {
                    // Table 0 with function indices: the WebAssembly 1.0 encoding.
                    ElementItems::Functions(f) => (
                        (e.table != 0).then_some(e.table),
                        wasm_encoder::Elements::Functions(f[..].into()),
                    ),
                    ElementItems::Expressions(ty, items) => (
                        Some(e.table),
                        wasm_encoder::Elements::Expressions(*ty, items[..].into()),
                    ),
                };
                elements.segment(wasm_encoder::ElementSegment {
                    mode: wasm_encoder::ElementMode::Active {
                        table,
                        offset: &e.offset,
                    },
                    elements: items,
                });
            }
            out.section(&elements);
        }
        5 => {
            let mut memories = wasm_encoder::MemorySection::new();
            let imported = module.imported_memories as usize;
            for (i, mem) in module.memories.iter().enumerate().skip(imported) {
                let ty = match edits.memory_types.get(&(i as u32)) {
                    Some(ty) => *ty,
                    None => RoundtripReencoder
                        .memory_type(*mem)
                        .map_err(encoding_error)?,
                };
                memories.memory(ty);
            }
            out.section(&memories);
        }
        7 => {
            let mut exports = wasm_encoder::ExportSection::new();
            for e in &module.exports {
                let kind = RoundtripReencoder
                    .export_kind(e.kind)
                    .map_err(encoding_error)?;
                let index = match (e.kind, edits.export_targets.get(e.name)) {
                    (wasmparser::ExternalKind::Func, Some(&f)) => f,
                    _ => e.index,
                };
                exports.export(e.name, kind, index);
            }
            for (name, func) in &edits.new_exports {
                exports.export(name, wasm_encoder::ExportKind::Func, *func);
            }
            out.section(&exports);
        }
        8 => {
            let function_index = edits
                .new_start
                .expect("start section is rebuilt only when set");
            out.section(&wasm_encoder::StartSection { function_index });
        }
        12 => {
            let count = module.data.len() + edits.new_data.len();
            out.section(&DataCountSection {
                count: count as u32,
            });
        }
        11 => {
            let mut data = DataSection::new();
            for (i, d) in module.data.iter().enumerate() {
                match (edits.data_offsets.get(&(i as u32)), &d.kind) {
                    (Some(offset), wasmparser::DataKind::Active { memory_index, .. }) => {
                        data.active(*memory_index, offset, d.data.iter().copied())
                    }
                    _ => data.raw(&module.bytes[d.range.start as usize..d.range.end as usize]),
                };
            }
            for d in &edits.new_data {
                match &d.active {
                    Some((memory, offset)) => data.active(*memory, offset, d.bytes.iter().copied()),
                    None => data.passive(d.bytes.iter().copied()),
                };
            }
            out.section(&data);
        }
        10 => {
            let (code, count) = built.code_after(module, edits, out)?;
            // id, section size, then the contents (function count first).
            let size = leb_len(count as u64) + code.len();
            if let Some(map) = &mut built.emitted.code_map {
                map.new_code_start = (out.len() + 1 + leb_len(size as u64)) as u64;
                map.new_code_len = size as u64;
            }
            out.extend(&[10]);
            out.encode(&size);
            out.encode(&count);
            out.append(code);
        }
        other => unreachable!("section {other} is never rebuilt"),
    }
    Ok(())
}

/// The Code section, and where the input's code went in it when `want_map`.
fn build_code(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    indirect_calls: &[u64],
    emitted: &mut Emitted,
    want_map: bool,
    mut sink: Option<&mut dyn BodySink>,
) -> Result<((Output, usize), Option<CodeMap>)> {
    let mut code = Output::default();
    let mut active: Vec<usize> = Vec::new();
    let mut scratch = Rewriting::default();
    // Code-relative offsets: the function count comes first, and its width is known now.
    let count = module.bodies.len() + edits.new_functions.len();
    let count_len = leb_len(count as u64) as u32;
    let mut map = None;
    let mut code_start = 0;
    if want_map && let Some(section) = module.sections.iter().find(|s| s.id == 10) {
        code_start = section.contents.start as u32;
        map = Some(CodeMap::new(
            code_start as u64,
            section.contents.len() as u64,
        ));
    }
    let mut offsets = Vec::new();
    let moved_originals: std::collections::BTreeSet<u32> =
        edits.moved_bodies.values().copied().collect();
    let sees: Vec<Sees> = edits.rewriters.iter().map(|r| r.sees()).collect();
    for (i, body) in module.bodies.iter().enumerate() {
        let func = module.imported_funcs + i as u32;
        active.clear();
        active.extend(
            edits
                .rewriters
                .iter()
                .enumerate()
                .filter(|(_, r)| r.wants(func))
                .map(|(k, _)| k),
        );
        let old = Module::body_range(body);
        let old_rel = old.start as u32 - code_start..old.end as u32 - code_start;
        // A body replaced by a pass is final as given. Its original code either moved to a
        // new function (the map follows it there, below) or is gone (all of it maps to the
        // replacement).
        if let Some(replacement) = edits.replaced_bodies.get(&func) {
            if let Some(map) = &mut map
                && !moved_originals.contains(&func)
            {
                let len = replacement.byte_len();
                let start = count_len + (code.len() + leb_len(len as u64)) as u32;
                map.replaced(old_rel, start..start + len as u32);
            }
            encode_function(&mut code, replacement, &mut sink, i as u32);
            emitted.rewritten_functions.push(func);
            continue;
        }
        if active.is_empty() {
            if let Some(map) = &mut map {
                let start = count_len + (code.len() + leb_len(old.len() as u64)) as u32;
                map.copied(old_rel, start..start + old.len() as u32);
            }
            code.raw_body(module.bytes, old);
            continue;
        }
        let want_offsets = map.is_some().then_some(&mut offsets);
        let f = if active.iter().all(|&k| sees[k] == Sees::IndirectCalls) {
            let first = indirect_calls.partition_point(|&at| at < old.start as u64);
            let last = indirect_calls.partition_point(|&at| at < old.end as u64);
            scratch.rewrite_calls(
                module,
                func,
                body,
                &indirect_calls[first..last],
                &mut edits.rewriters,
                &active,
                &sees,
                want_offsets,
            )
        } else {
            scratch.rewrite(
                module,
                func,
                body,
                &mut edits.rewriters,
                &active,
                &sees,
                want_offsets,
            )
        }
        .with_context(|| format!("rewriting function {func}"))?;
        if let Some(map) = &mut map {
            let start = count_len + (code.len() + leb_len(f.len() as u64)) as u32;
            map.reencoded(
                old_rel,
                start..start + f.len() as u32,
                offsets
                    .drain(..)
                    .map(|(old, new)| (old as u32 - code_start, start + new as u32)),
            );
        }
        code.encode(&f[..]);
        if let Some(sink) = &mut sink {
            sink.body(i as u32, f);
        }
        emitted.rewritten_functions.push(func);
    }
    let first_new = module.num_funcs();
    for (k, f) in edits.new_functions.iter().enumerate() {
        match edits.moved_bodies.get(&(first_new + k as u32)) {
            // The original body, byte for byte from `module`, the patched input: relocated
            // immediates move with the body.
            Some(&original) => {
                let body = &module.bodies[(original - module.imported_funcs) as usize];
                let range = Module::body_range(body);
                if let Some(map) = &mut map {
                    let old = range.start as u32 - code_start..range.end as u32 - code_start;
                    let old_code =
                        body.get_operators_reader()?.original_position() as u32 - code_start;
                    let len = old.end - old.start;
                    let start = count_len + (code.len() + leb_len(len as u64)) as u32;
                    let new = start..start + len;
                    let new_code = new.end - (old.end - old_code);
                    map.moved(old, new, (old_code, new_code));
                }
                code.raw_body(module.bytes, range);
            }
            None => {
                encode_function(
                    &mut code,
                    &f.body,
                    &mut sink,
                    (module.bodies.len() + k) as u32,
                );
            }
        }
    }
    Ok(((code, count), map))
}

/// Writes `f` as the `k`-th body of `code` and, when a sink watches, shows it the same bytes:
/// encoded once either way (the body without its size prefix, then written with it).
fn encode_function(code: &mut Output, f: &Function, sink: &mut Option<&mut dyn BodySink>, k: u32) {
    let Some(sink) = sink else {
        code.encode(f);
        return;
    };
    let mut bytes = Vec::with_capacity(f.byte_len() + 5);
    f.encode(&mut bytes);
    bytes.drain(..leb_len(f.byte_len() as u64));
    code.encode(&bytes[..]);
    sink.body(k, bytes);
}

/// The map of a Code section copied byte for byte: every body stays where it was.
fn unmoved_code(module: &Module<'_>) -> Option<CodeMap> {
    let section = module.sections.iter().find(|s| s.id == 10)?;
    let start = section.contents.start;
    let mut map = CodeMap::new(start as u64, section.contents.len() as u64);
    for body in &module.bodies {
        let r = Module::body_range(body);
        let rel = (r.start - start) as u32..(r.end - start) as u32;
        map.copied(rel.clone(), rel);
    }
    Some(map)
}

fn is_indirect_call(ins: &Instruction<'_>) -> bool {
    matches!(
        ins,
        Instruction::CallIndirect { .. } | Instruction::ReturnCallIndirect { .. }
    )
}

/// A rewriter that [`Sees::IndirectCalls`] gets its prologue call (to start the function's
/// state) but may not add instructions there: its functions may not be decoded.
fn no_prologue(sees: Sees, prologue: &[Instruction<'_>]) -> Result<()> {
    if sees == Sees::IndirectCalls && !prologue.is_empty() {
        return Err(anyhow!(
            "a rewriter that sees only indirect calls wrote a prologue"
        ));
    }
    Ok(())
}

/// Bytes of the unsigned LEB128 encoding of `n`.
fn leb_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// Buffers reused across the functions of one module.
#[derive(Default)]
struct Rewriting<'i> {
    stage_in: Vec<Instruction<'i>>,
    stage_out: Vec<Instruction<'i>>,
}

impl<'i> Rewriting<'i> {
    /// Decodes the body of `func` and feeds every instruction through the `active` rewriters
    /// (each shown what it [`Sees`]); `offsets` receives, for each original instruction, its
    /// input offset and where its replacement starts in the new body.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &mut self,
        module: &Module<'i>,
        func: u32,
        body: &wasmparser::FunctionBody<'i>,
        rewriters: &mut [Box<dyn BodyRewriter + '_>],
        active: &[usize],
        sees: &[Sees],
        offsets: Option<&mut Vec<(u64, usize)>>,
    ) -> Result<Vec<u8>> {
        let mut re = RoundtripReencoder;
        let sig = module
            .func_sig(func)
            .ok_or_else(|| anyhow!("function {func} has no function type"))?;
        let mut locals = Vec::new();
        let mut declared = 0u32;
        for l in body.get_locals_reader()? {
            let (n, ty) = l?;
            locals.push((n, re.val_type(ty).map_err(encoding_error)?));
            declared += n;
        }
        let mut reader = body.get_operators_reader()?;
        let mut original = Vec::new();
        while !reader.eof() {
            original.push(reader.read_with_offset()?);
        }
        let mut cx = BodyCx::new(func, sig, declared, &original);
        let mut all: Vec<Instruction<'i>> = Vec::new();

        // Prologues: rewriter k's prologue runs through rewriters after k.
        for (pos, &k) in active.iter().enumerate() {
            let mut pro = Vec::new();
            rewriters[k].prologue(&mut cx, &mut pro);
            no_prologue(sees[k], &pro)?;
            self.stage_in.clear();
            self.stage_in.extend(pro);
            self.run_stages(&mut cx, rewriters, &active[pos + 1..], sees);
            all.append(&mut self.stage_in);
        }
        cx.own_code_from = None;

        // Where each original instruction's replacement starts in `all`.
        let mut starts = Vec::new();
        let mut depth = 1u32;
        for (op, offset) in &original {
            match op {
                wasmparser::Operator::End => {
                    depth = depth.saturating_sub(1);
                    cx.depth = depth;
                }
                wasmparser::Operator::Block { .. }
                | wasmparser::Operator::Loop { .. }
                | wasmparser::Operator::If { .. }
                | wasmparser::Operator::Try { .. }
                | wasmparser::Operator::TryTable { .. } => {
                    cx.depth = depth;
                    depth += 1;
                }
                _ => cx.depth = depth,
            }
            cx.offset = *offset;
            self.stage_in.clear();
            self.stage_in
                .push(re.instruction(op.clone()).map_err(encoding_error)?);
            self.run_stages(&mut cx, rewriters, active, sees);
            // A rewriter that emitted a held-back value first: this instruction's code starts
            // after it (see `BodyCx::own_code_from`).
            let own = cx.own_code_from.take().unwrap_or(0);
            if offsets.is_some() {
                starts.push(all.len() + own);
            }
            all.append(&mut self.stage_in);
        }

        let new_locals = cx.take_new_locals();
        locals.extend(new_locals.into_iter().map(|t| (1, t)));
        let mut f = Function::new(locals);
        match offsets {
            None => {
                for ins in &all {
                    f.instruction(ins);
                }
            }
            Some(offsets) => {
                // (input offset, offset in the new body) of each original instruction.
                let mut next = starts.iter().zip(&original).peekable();
                for (k, ins) in all.iter().enumerate() {
                    while let Some((_, (_, old))) = next.next_if(|(start, _)| **start == k) {
                        offsets.push((*old, f.byte_len()));
                    }
                    f.instruction(ins);
                }
                for (_, (_, old)) in next {
                    offsets.push((*old, f.byte_len()));
                }
            }
        }
        Ok(f.into_raw_body())
    }

    /// Feeds `stage_in` through `stages` in order, each shown what it [`Sees`]; the result
    /// is left in `stage_in`.
    fn run_stages(
        &mut self,
        cx: &mut BodyCx<'_>,
        rewriters: &mut [Box<dyn BodyRewriter + '_>],
        stages: &[usize],
        sees: &[Sees],
    ) {
        for &k in stages {
            self.stage_out.clear();
            // Where an earlier stage said the input instruction's own code starts, in this
            // stage's output: where the output for that element starts. A stage that says it
            // itself decides.
            let earlier = cx.own_code_from.take();
            let mut mapped = None;
            for (j, ins) in self.stage_in.drain(..).enumerate() {
                if earlier == Some(j) {
                    mapped = Some(self.stage_out.len());
                }
                if sees[k] == Sees::IndirectCalls && !is_indirect_call(&ins) {
                    self.stage_out.push(ins);
                } else {
                    rewriters[k].instruction(cx, ins, &mut self.stage_out);
                }
            }
            if cx.own_code_from.is_none() {
                cx.own_code_from = mapped.or(earlier.map(|_| self.stage_out.len()));
            }
            std::mem::swap(&mut self.stage_in, &mut self.stage_out);
        }
    }

    /// [`Rewriting::rewrite`] for a function whose `active` rewriters all see only indirect
    /// calls, at input offsets `calls`: each call is decoded and fed through them, and every
    /// other byte of the body is copied as it is (no decoding: the local declarations too,
    /// unless a rewriter adds locals). `offsets` receives the input offset and new offset of
    /// the code's start, of each call and of what follows it: between them the code is the
    /// input's.
    #[allow(clippy::too_many_arguments)]
    fn rewrite_calls(
        &mut self,
        module: &Module<'i>,
        func: u32,
        body: &wasmparser::FunctionBody<'i>,
        calls: &[u64],
        rewriters: &mut [Box<dyn BodyRewriter + '_>],
        active: &[usize],
        sees: &[Sees],
        offsets: Option<&mut Vec<(u64, usize)>>,
    ) -> Result<Vec<u8>> {
        let sig = module
            .func_sig(func)
            .ok_or_else(|| anyhow!("function {func} has no function type"))?;
        let range = Module::body_range(body);
        let mut declared = 0u32;
        let mut locals = Vec::new();
        let mut re = RoundtripReencoder;
        for l in body.get_locals_reader()? {
            let (n, ty) = l?;
            locals.push((n, re.val_type(ty).map_err(encoding_error)?));
            declared += n;
        }
        let code_start = body.get_operators_reader()?.original_position() as usize;
        let mut cx = BodyCx::new(func, sig, declared, &[]);
        for &k in active {
            let mut pro = Vec::new();
            rewriters[k].prologue(&mut cx, &mut pro);
            no_prologue(sees[k], &pro)?;
        }
        // The code, and (input offset, offset in `code`) of each place the input's code resumes.
        let mut code = Vec::with_capacity(range.end - code_start + 16 * calls.len());
        let mut resumes = vec![(code_start as u64, 0)];
        let mut at = code_start;
        for &call in calls {
            let call = call as usize;
            code.extend_from_slice(&module.bytes[at..call]);
            let input = wasmparser::BinaryReader::new(&module.bytes[call..range.end], call as u64);
            let mut reader = wasmparser::OperatorsReader::new(input);
            let op = reader.read()?;
            debug_assert!(matches!(
                op,
                wasmparser::Operator::CallIndirect { .. }
                    | wasmparser::Operator::ReturnCallIndirect { .. }
            ));
            cx.offset = call as u64;
            self.stage_in.clear();
            self.stage_in
                .push(re.instruction(op).map_err(encoding_error)?);
            self.run_stages(&mut cx, rewriters, active, sees);
            resumes.push((call as u64, code.len()));
            for ins in self.stage_in.drain(..) {
                ins.encode(&mut code);
            }
            at = reader.original_position() as usize;
            resumes.push((at as u64, code.len()));
        }
        code.extend_from_slice(&module.bytes[at..range.end]);
        let new_locals = cx.take_new_locals();
        let mut f = if new_locals.is_empty() {
            module.bytes[range.start..code_start].to_vec()
        } else {
            locals.extend(new_locals.into_iter().map(|t| (1, t)));
            Function::new(locals).into_raw_body()
        };
        let locals_len = f.len();
        f.extend_from_slice(&code);
        if let Some(offsets) = offsets {
            resumes.dedup_by_key(|r| r.0);
            offsets.extend(
                resumes
                    .into_iter()
                    .map(|(old, new)| (old, locals_len + new)),
            );
        }
        Ok(f)
    }
}

/// Names of the items wasmfix adds, by name subsection id (functions, tables, globals, data).
fn added_names(module: &Module<'_>, edits: &Edits<'_>) -> BTreeMap<u8, Vec<(u32, String)>> {
    let mut added: BTreeMap<u8, Vec<(u32, String)>> = BTreeMap::new();
    let functions: Vec<(u32, String)> = edits
        .new_function_names(module)
        .map(|(index, name)| (index, name.to_string()))
        .collect();
    if !functions.is_empty() {
        added.insert(FUNCTION_NAMES, functions);
    }
    for (&(subsection, index), name) in &edits.item_names {
        added
            .entry(subsection)
            .or_default()
            .push((index, name.clone()));
    }
    added
}

/// Function names: the name subsection id that backtraces read.
const FUNCTION_NAMES: u8 = 1;

/// A name section: the input's (`section`, if any) with the `added` names appended to their
/// subsections, which are created in subsection order where the input has none. Every other
/// subsection, and every original name of a subsection that gains names, is copied byte for
/// byte: as input ranges, so a large name section is not held twice.
fn name_section_with_added(
    module: &Module<'_>,
    added: &BTreeMap<u8, Vec<(u32, String)>>,
    section: Option<&crate::module::Section<'_>>,
) -> Result<Output> {
    let malformed = |e| anyhow!("malformed name section: {e}");
    // The subsections in order: (id, new items, the input's subsection contents: its range
    // and the range after its item count, and that count).
    type Original = (std::ops::Range<usize>, std::ops::Range<usize>, u32);
    type Part<'n> = (u8, Option<&'n [(u32, String)]>, Option<Original>);
    let mut parts: Vec<Part<'_>> = Vec::new();
    let mut pending = added.iter().peekable();
    if let Some(section) = section {
        let mut r = module.section_reader(section);
        while !r.eof() {
            let id = r.read_u8().map_err(malformed)?;
            let len = r.read_var_u32().map_err(malformed)? as usize;
            let pos = r.original_position() as usize;
            let data = r.read_bytes(len).map_err(malformed)?;
            while let Some((&new_id, new)) = pending.next_if(|(new_id, _)| **new_id < id) {
                parts.push((new_id, Some(new), None));
            }
            let new = pending
                .next_if(|(new_id, _)| **new_id == id)
                .map(|(_, n)| &n[..]);
            let mut items = reader(data, pos);
            let count = if new.is_some() {
                // Every original name must read as one (else the section is kept as it is).
                let map = wasmparser::NameMap::new(items.clone()).map_err(malformed)?;
                for naming in map {
                    naming.map_err(malformed)?;
                }
                items.read_var_u32().map_err(malformed)?
            } else {
                0
            };
            let after_count = items.original_position() as usize;
            parts.push((
                id,
                new,
                Some((pos..pos + len, after_count..pos + len, count)),
            ));
        }
    }
    for (&id, new) in pending {
        parts.push((id, Some(new), None));
    }

    // Each subsection as pieces, then the section header with the total size.
    let mut contents = Output::default();
    for (id, new, original) in parts {
        match (new, original) {
            (None, Some((whole, _, _))) => {
                contents.extend(&[id]);
                contents.encode(&whole.len());
                contents.copy(whole);
            }
            (Some(new), original) => {
                let (items, count) = match &original {
                    Some((_, items, count)) => (items.clone(), *count),
                    None => (0..0, 0),
                };
                let mut tail = Vec::new();
                for (index, name) in new {
                    index.encode(&mut tail);
                    name.as_str().encode(&mut tail);
                }
                let mut head = Vec::new();
                (count + new.len() as u32).encode(&mut head);
                contents.extend(&[id]);
                contents.encode(&(head.len() + items.len() + tail.len()));
                contents.extend(&head);
                if !items.is_empty() {
                    contents.copy(items);
                }
                contents.extend(&tail);
            }
            (None, None) => unreachable!("a part is an input subsection or has new names"),
        }
    }
    let mut name = Vec::new();
    "name".encode(&mut name);
    let mut out = Output::default();
    out.extend(&[0]);
    out.encode(&(name.len() + contents.len()));
    out.extend(&name);
    out.append(contents);
    Ok(out)
}
