//! The emitter: writes the output module from the input and the passes' edits.
//!
//! Untouched sections are copied byte for byte, header included. A section that gains items
//! is rebuilt with `wasm-encoder`: its original items first, copied raw where the encoder
//! allows it (globals, elements, data, function bodies) and re-encoded with
//! `reencode::RoundtripReencoder` where it does not (types, functions, tables: small sections),
//! then the new items. Function bodies that no rewriter wants are copied raw; the others are
//! decoded once and streamed through every rewriter that wants them.
//!
//! When asked (`EmitOptions::code_map`), the Code section is written first and records where
//! every original body and instruction went ([`CodeMap`]); DWARF sections are then updated
//! with that map ([`crate::dwarf`]) before they are written in their original places.

use crate::codemap::CodeMap;
use crate::edit::{BodyCx, BodyRewriter, Edits, ElementItems};
use crate::module::Module;
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, DataCountSection, DataSection, ElementSection, Function, FunctionSection,
    GlobalSection, Instruction, NameMap, NameSection, Section, TableSection, TypeSection,
};

/// Section ids in the order the binary format requires them.
const SECTION_ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];

fn rank(id: u8) -> usize {
    SECTION_ORDER
        .iter()
        .position(|&s| s == id)
        .unwrap_or(usize::MAX)
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

/// Writes the output module into `out`.
pub fn emit(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    out: &mut Vec<u8>,
    options: EmitOptions,
) -> Result<Emitted> {
    let bytes = module.bytes;
    let mut emitted = Emitted::default();
    out.reserve(bytes.len() + bytes.len() / 8);
    out.extend_from_slice(&bytes[..8]);

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
    mark(7, !edits.export_targets.is_empty());
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

    // The Code section is built first: DWARF sections, wherever they are, need its map.
    let mut code = None;
    if changed.contains(&10) {
        let (section, map) = build_code(module, edits, &mut emitted, options.code_map)?;
        code = Some(section);
        emitted.code_map = map;
    } else if options.code_map {
        // Copied as it is; only its place in the file may change (source maps count from
        // the start of the file).
        emitted.code_map = unmoved_code(module);
    }
    let mut dwarf_sections = std::collections::BTreeMap::new();
    if let Some(map) = &emitted.code_map
        && options.update_dwarf
        && !map.is_identity()
        && crate::dwarf::present(module)
    {
        let mut updated = crate::dwarf::update(module, map)?;
        dwarf_sections = std::mem::take(&mut updated.sections);
        emitted.dwarf = Some(updated);
    }
    let mut built = Built {
        code,
        emitted: &mut emitted,
    };

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
            match edits.custom_replaced.get(&index) {
                Some(None) => {}
                Some(Some(encoded)) => out.extend_from_slice(encoded),
                None if dwarf_sections.contains_key(&index) => {
                    let data = dwarf_sections.remove(&index).expect("checked");
                    let name = section
                        .custom_name
                        .expect("DWARF sections are custom sections");
                    push_section(
                        out,
                        &wasm_encoder::CustomSection {
                            name: name.into(),
                            data: data.into(),
                        },
                    );
                }
                None if !added.is_empty() && section.custom_name == Some("name") => {
                    // Custom sections are not validated: a malformed one is kept as it is.
                    match name_section_with_added(module, &added, Some(section)) {
                        Ok(names) => push_section(out, &names),
                        Err(_) => out.extend_from_slice(&bytes[section.whole.clone()]),
                    }
                }
                None => out.extend_from_slice(&bytes[section.whole.clone()]),
            }
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
            out.extend_from_slice(&bytes[section.whole.clone()]);
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
    if !added.is_empty() && !input_names {
        push_section(out, &name_section_with_added(module, &added, None)?);
    }
    for encoded in &edits.custom_appended {
        out.extend_from_slice(encoded);
    }
    Ok(emitted)
}

/// Appends one encoded section (id, size, contents).
fn push_section(out: &mut Vec<u8>, section: &impl Section) {
    out.push(section.id());
    section.encode(out);
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

/// What `emit` built before writing sections in order.
struct Built<'e> {
    /// The Code section, until it is written.
    code: Option<CodeSection>,
    emitted: &'e mut Emitted,
}

fn build_section(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    id: u8,
    out: &mut Vec<u8>,
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
            push_section(out, &types);
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
            push_section(out, &funcs);
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
            push_section(out, &tables);
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
            push_section(out, &globals);
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
            push_section(out, &elements);
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
            push_section(out, &memories);
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
            push_section(out, &exports);
        }
        8 => {
            let function_index = edits
                .new_start
                .expect("start section is rebuilt only when set");
            push_section(out, &wasm_encoder::StartSection { function_index });
        }
        12 => {
            let count = module.data.len() + edits.new_data.len();
            push_section(
                out,
                &DataCountSection {
                    count: count as u32,
                },
            );
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
            push_section(out, &data);
        }
        10 => {
            let code = built.code.take().expect("the Code section is built first");
            if let Some(map) = &mut built.emitted.code_map {
                // id, section size, then the contents (function count first).
                let count = leb_len(code.len() as u64);
                let size = count + code.byte_len();
                map.new_code_start = (out.len() + 1 + leb_len(size as u64)) as u64;
                map.new_code_len = size as u64;
            }
            push_section(out, &code);
        }
        other => unreachable!("section {other} is never rebuilt"),
    }
    Ok(())
}

/// The Code section, and where the input's code went in it when `want_map`.
fn build_code(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    emitted: &mut Emitted,
    want_map: bool,
) -> Result<(CodeSection, Option<CodeMap>)> {
    let mut code = CodeSection::new();
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
                let start = count_len + (code.byte_len() + leb_len(len as u64)) as u32;
                map.replaced(old_rel, start..start + len as u32);
            }
            code.function(replacement);
            emitted.rewritten_functions.push(func);
            continue;
        }
        if active.is_empty() {
            if let Some(map) = &mut map {
                let start = count_len + (code.byte_len() + leb_len(old.len() as u64)) as u32;
                map.copied(old_rel, start..start + old.len() as u32);
            }
            code.raw(&module.bytes[old]);
            continue;
        }
        let want_offsets = map.is_some().then_some(&mut offsets);
        let f = scratch
            .rewrite(
                module,
                func,
                body,
                &mut edits.rewriters,
                &active,
                want_offsets,
            )
            .with_context(|| format!("rewriting function {func}"))?;
        if let Some(map) = &mut map {
            let start = count_len + (code.byte_len() + leb_len(f.byte_len() as u64)) as u32;
            map.reencoded(
                old_rel,
                start..start + f.byte_len() as u32,
                offsets
                    .drain(..)
                    .map(|(old, new)| (old as u32 - code_start, start + new as u32)),
            );
        }
        code.function(&f);
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
                    let start = count_len + (code.byte_len() + leb_len(len as u64)) as u32;
                    let new = start..start + len;
                    let new_code = new.end - (old.end - old_code);
                    map.moved(old, new, (old_code, new_code));
                }
                code.raw(&module.bytes[range]);
            }
            None => {
                code.function(&f.body);
            }
        }
    }
    Ok((code, map))
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
    fn rewrite(
        &mut self,
        module: &Module<'i>,
        func: u32,
        body: &wasmparser::FunctionBody<'i>,
        rewriters: &mut [Box<dyn BodyRewriter + '_>],
        active: &[usize],
        offsets: Option<&mut Vec<(u64, usize)>>,
    ) -> Result<Function> {
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
            self.stage_in.clear();
            self.stage_in.extend(pro);
            self.run_stages(&mut cx, rewriters, &active[pos + 1..]);
            all.append(&mut self.stage_in);
        }

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
            self.run_stages(&mut cx, rewriters, active);
            if offsets.is_some() {
                starts.push(all.len());
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
        Ok(f)
    }

    /// Feeds `stage_in` through `stages` in order; the result is left in `stage_in`.
    fn run_stages(
        &mut self,
        cx: &mut BodyCx<'_>,
        rewriters: &mut [Box<dyn BodyRewriter + '_>],
        stages: &[usize],
    ) {
        for &k in stages {
            self.stage_out.clear();
            for ins in self.stage_in.drain(..) {
                rewriters[k].instruction(cx, ins, &mut self.stage_out);
            }
            std::mem::swap(&mut self.stage_in, &mut self.stage_out);
        }
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
/// subsection is copied byte for byte.
fn name_section_with_added(
    module: &Module<'_>,
    added: &BTreeMap<u8, Vec<(u32, String)>>,
    section: Option<&crate::module::Section<'_>>,
) -> Result<NameSection> {
    let malformed = |e| anyhow!("malformed name section: {e}");
    let mut names = NameSection::new();
    let mut pending = added.iter().peekable();
    let write = |names: &mut NameSection,
                 id: u8,
                 old: Option<wasmparser::BinaryReader<'_>>,
                 new: &[(u32, String)]| {
        let mut map = NameMap::new();
        if let Some(r) = old {
            for naming in wasmparser::NameMap::new(r).map_err(malformed)? {
                let naming = naming.map_err(malformed)?;
                map.append(naming.index, naming.name);
            }
        }
        // Added items come after every original one, so the map stays sorted.
        for (index, name) in new {
            map.append(*index, name);
        }
        match id {
            FUNCTION_NAMES => names.functions(&map),
            crate::edit::TABLE_NAMES => names.tables(&map),
            crate::edit::GLOBAL_NAMES => names.globals(&map),
            crate::edit::DATA_NAMES => names.data(&map),
            other => unreachable!("wasmfix names no items of name subsection {other}"),
        }
        Ok::<(), anyhow::Error>(())
    };
    if let Some(section) = section {
        let mut r = module.section_reader(section);
        while !r.eof() {
            let id = r.read_u8().map_err(malformed)?;
            let len = r.read_var_u32().map_err(malformed)? as usize;
            let pos = r.original_position();
            let data = r.read_bytes(len).map_err(malformed)?;
            while let Some((&new_id, new)) = pending.next_if(|(new_id, _)| **new_id < id) {
                write(&mut names, new_id, None, new)?;
            }
            match pending.next_if(|(new_id, _)| **new_id == id) {
                Some((_, new)) => write(&mut names, id, Some(reader(data, pos as usize)), new)?,
                None => names.raw(id, data),
            }
        }
    }
    for (&id, new) in pending {
        write(&mut names, id, None, new)?;
    }
    Ok(names)
}
