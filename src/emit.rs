//! The emitter: writes the output module from the input and the passes' edits.
//!
//! Untouched sections are copied byte for byte, header included. A section that gains items
//! is rebuilt with `wasm-encoder`: its original items first, copied raw where the encoder
//! allows it (globals, elements, data, function bodies) and re-encoded with
//! `reencode::RoundtripReencoder` where it does not (types, functions, tables: small sections),
//! then the new items. Function bodies that no rewriter wants are copied raw; the others are
//! decoded once and streamed through every rewriter that wants them.

use crate::edit::{BodyCx, BodyRewriter, Edits};
use crate::module::Module;
use anyhow::{Context, Result, anyhow};
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

/// What the emitter did, for reports and for the validator.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Defined functions (by function index) whose bodies were re-encoded.
    pub rewritten_functions: Vec<u32>,
}

/// Writes the output module into `out`.
pub fn emit(module: &Module<'_>, edits: &mut Edits<'_>, out: &mut Vec<u8>) -> Result<Emitted> {
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
    mark(4, !edits.new_tables.is_empty());
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

    let rename_functions = !edits.new_functions.is_empty() && module.custom("name").is_some();

    for (index, section) in module.sections.iter().enumerate() {
        if section.id != 0 {
            while let Some(&m) = missing.first() {
                if rank(m) < rank(section.id) {
                    build_section(module, edits, m, out, &mut emitted)?;
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
                None if rename_functions && section.custom_name == Some("name") => {
                    // Custom sections are not validated: a malformed one is kept as it is.
                    match name_section_with_new_functions(module, edits, section) {
                        Ok(names) => push_section(out, &names),
                        Err(_) => out.extend_from_slice(&bytes[section.whole.clone()]),
                    }
                }
                None => out.extend_from_slice(&bytes[section.whole.clone()]),
            }
        } else if changed.contains(&section.id) {
            build_section(module, edits, section.id, out, &mut emitted)?;
        } else {
            out.extend_from_slice(&bytes[section.whole.clone()]);
        }
        if Some(index) == last_known {
            for m in missing.drain(..) {
                build_section(module, edits, m, out, &mut emitted)?;
            }
        }
    }
    for m in missing.drain(..) {
        build_section(module, edits, m, out, &mut emitted)?;
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

fn build_section(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    id: u8,
    out: &mut Vec<u8>,
    emitted: &mut Emitted,
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
                re.parse_table_section(&mut tables, r)
                    .map_err(encoding_error)?;
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
                elements.segment(wasm_encoder::ElementSegment {
                    mode: wasm_encoder::ElementMode::Active {
                        table: Some(e.table),
                        offset: &e.offset,
                    },
                    elements: wasm_encoder::Elements::Expressions(e.ty, (&e.items[..]).into()),
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
            let code = build_code(module, edits, emitted)?;
            push_section(out, &code);
        }
        other => unreachable!("section {other} is never rebuilt"),
    }
    Ok(())
}

fn build_code(
    module: &Module<'_>,
    edits: &mut Edits<'_>,
    emitted: &mut Emitted,
) -> Result<CodeSection> {
    let mut code = CodeSection::new();
    let mut active: Vec<usize> = Vec::new();
    let mut scratch = Rewriting::default();
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
        // A body replaced by a pass (the original moved to a new function) is final as given.
        if let Some(replacement) = edits.replaced_bodies.get(&func) {
            code.function(replacement);
            emitted.rewritten_functions.push(func);
            continue;
        }
        if active.is_empty() {
            code.raw(&module.bytes[Module::body_range(body)]);
            continue;
        }
        let f = scratch
            .rewrite(module, func, body, &mut edits.rewriters, &active)
            .with_context(|| format!("rewriting function {func}"))?;
        code.function(&f);
        emitted.rewritten_functions.push(func);
    }
    for (i, f) in edits.new_functions.iter().enumerate() {
        match edits.moved_bodies.get(&i) {
            // `module` is the patched input: relocated immediates move with the body.
            Some(&from) => {
                let body = &module.bodies[(from - module.imported_funcs) as usize];
                code.raw(&module.bytes[Module::body_range(body)]);
            }
            None => {
                code.function(&f.body);
            }
        }
    }
    Ok(code)
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
            all.append(&mut self.stage_in);
        }

        let new_locals = cx.take_new_locals();
        locals.extend(new_locals.into_iter().map(|t| (1, t)));
        let mut f = Function::new(locals);
        for ins in &all {
            f.instruction(ins);
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

/// The name section with the names of the added functions appended to its function names.
/// Subsections other than function names are copied byte for byte.
fn name_section_with_new_functions(
    module: &Module<'_>,
    edits: &Edits<'_>,
    section: &crate::module::Section<'_>,
) -> Result<NameSection> {
    let malformed = |e| anyhow!("malformed name section: {e}");
    let mut names = NameSection::new();
    let mut functions_written = false;
    let functions = |names: &mut NameSection, old: Option<wasmparser::BinaryReader<'_>>| {
        let mut map = NameMap::new();
        if let Some(r) = old {
            for naming in wasmparser::NameMap::new(r).map_err(malformed)? {
                let naming = naming.map_err(malformed)?;
                map.append(naming.index, naming.name);
            }
        }
        for (idx, name) in edits.new_function_names(module) {
            map.append(idx, name);
        }
        names.functions(&map);
        Ok::<(), anyhow::Error>(())
    };
    let mut r = module.section_reader(section);
    while !r.eof() {
        let id = r.read_u8().map_err(malformed)?;
        let len = r.read_var_u32().map_err(malformed)? as usize;
        let pos = r.original_position();
        let data = r.read_bytes(len).map_err(malformed)?;
        if id == 1 {
            functions(&mut names, Some(reader(data, pos as usize)))?;
            functions_written = true;
            continue;
        }
        if id > 1 && !functions_written {
            functions(&mut names, None)?;
            functions_written = true;
        }
        names.raw(id, data);
    }
    if !functions_written {
        functions(&mut names, None)?;
    }
    Ok(names)
}
