//! The module model: one wasmparser pass over the input that records where every section and
//! every item lives, so the emitter can copy untouched parts byte for byte and passes can ask
//! about types, functions, tables, globals and data without re-parsing.

use anyhow::{Result, bail};
use std::ops::Range;
use wasmparser::{
    CompositeInnerType, ConstExpr, Data, Element, Export, FuncType, FunctionBody, GlobalType,
    Import, MemoryType, Parser, Payload, SubType, TableType, TagType, TypeRef,
};

/// Where one section of the input lives.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    /// Section id (0 for custom sections).
    pub id: u8,
    /// Byte range of the whole section, header included.
    pub whole: Range<usize>,
    /// Byte range of the section's contents (after the size field).
    pub contents: Range<usize>,
    /// The name of a custom section.
    pub custom_name: Option<&'a str>,
}

/// A defined global: its type, its initializer and where its encoding lives in the input.
#[derive(Debug, Clone)]
pub struct DefinedGlobal<'a> {
    pub ty: GlobalType,
    pub init: ConstExpr<'a>,
    pub bytes: Range<usize>,
}

/// A parsed core module. Everything borrows from the input bytes.
pub struct Module<'a> {
    pub bytes: &'a [u8],
    pub sections: Vec<Section<'a>>,
    /// Every type in the type index space (rec groups flattened).
    pub types: Vec<SubType>,
    pub imports: Vec<Import<'a>>,
    /// Type index of every function, imported ones first.
    pub func_types: Vec<u32>,
    pub imported_funcs: u32,
    pub tables: Vec<TableType>,
    pub imported_tables: u32,
    pub memories: Vec<MemoryType>,
    pub imported_memories: u32,
    /// Type of every global, imported ones first.
    pub global_types: Vec<GlobalType>,
    pub imported_globals: u32,
    pub defined_globals: Vec<DefinedGlobal<'a>>,
    pub tags: Vec<TagType>,
    pub exports: Vec<Export<'a>>,
    pub start: Option<u32>,
    pub elements: Vec<Element<'a>>,
    pub data: Vec<Data<'a>>,
    pub data_count: Option<u32>,
    /// Bodies of the defined functions, in order.
    pub bodies: Vec<FunctionBody<'a>>,
    /// Whether a type section holds an explicit rec group (`0x4e`, a GC construct).
    pub explicit_rec_groups: bool,
    /// Initializer expressions of defined tables that have one (typed function references).
    pub table_inits: Vec<ConstExpr<'a>>,
}

impl<'a> Module<'a> {
    /// Parses `bytes` as a core module. Components and unknown sections are refused.
    pub fn parse(bytes: &'a [u8]) -> Result<Module<'a>> {
        if bytes.is_empty() {
            bail!("empty file, not a WebAssembly module");
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            bail!("not a WebAssembly module (no \\0asm magic at the start)");
        }
        if bytes[4..8] != [1, 0, 0, 0] {
            if bytes[6..8] == [1, 0] {
                bail!(
                    "a WebAssembly component, not a core module: wasmfix rewrites core modules (run it on the module before componentizing)"
                );
            }
            bail!(
                "unsupported WebAssembly binary version {:02x?}",
                &bytes[4..8]
            );
        }
        plausible_counts(bytes)?;
        let mut m = Module {
            bytes,
            sections: Vec::new(),
            types: Vec::new(),
            imports: Vec::new(),
            func_types: Vec::new(),
            imported_funcs: 0,
            tables: Vec::new(),
            imported_tables: 0,
            memories: Vec::new(),
            imported_memories: 0,
            global_types: Vec::new(),
            imported_globals: 0,
            defined_globals: Vec::new(),
            tags: Vec::new(),
            exports: Vec::new(),
            start: None,
            elements: Vec::new(),
            data: Vec::new(),
            data_count: None,
            bodies: Vec::new(),
            explicit_rec_groups: false,
            table_inits: Vec::new(),
        };
        // Sections are contiguous: each header starts where the previous section ended.
        let mut section_start = 8usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| anyhow::anyhow!("malformed module: {e}"))?;
            if let Some((id, range)) = payload.as_section() {
                let whole_end = range.end as usize;
                // For custom sections, `contents` is the data after the section's name.
                let contents = match &payload {
                    Payload::CustomSection(c) => c.data_range(),
                    _ => range.clone(),
                };
                let contents = contents.start as usize..contents.end as usize;
                if whole_end > bytes.len() {
                    bail!(
                        "truncated module: section {id} needs {} bytes beyond the end of the file",
                        whole_end - bytes.len()
                    );
                }
                let custom_name = match &payload {
                    Payload::CustomSection(c) => Some(c.name()),
                    _ => None,
                };
                m.sections.push(Section {
                    id,
                    whole: section_start..whole_end,
                    contents,
                    custom_name,
                });
                section_start = whole_end;
            }
            m.record(payload)?;
        }
        Ok(m)
    }

    fn record(&mut self, payload: Payload<'a>) -> Result<()> {
        let malformed = |e: wasmparser::BinaryReaderError| anyhow::anyhow!("malformed module: {e}");
        match payload {
            Payload::TypeSection(r) => {
                for group in r {
                    let group = group.map_err(malformed)?;
                    self.explicit_rec_groups |= group.is_explicit_rec_group();
                    self.types.extend(group.into_types());
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    let import = import.map_err(malformed)?;
                    match import.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                            self.func_types.push(t);
                            self.imported_funcs += 1;
                        }
                        TypeRef::Table(t) => {
                            self.tables.push(t);
                            self.imported_tables += 1;
                        }
                        TypeRef::Memory(t) => {
                            self.memories.push(t);
                            self.imported_memories += 1;
                        }
                        TypeRef::Global(t) => {
                            self.global_types.push(t);
                            self.imported_globals += 1;
                        }
                        TypeRef::Tag(t) => self.tags.push(t),
                    }
                    self.imports.push(import);
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    self.func_types.push(t.map_err(malformed)?);
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(malformed)?;
                    if let wasmparser::TableInit::Expr(e) = t.init {
                        self.table_inits.push(e);
                    }
                    self.tables.push(t.ty);
                }
            }
            Payload::MemorySection(r) => {
                for t in r {
                    self.memories.push(t.map_err(malformed)?);
                }
            }
            Payload::TagSection(r) => {
                for t in r {
                    self.tags.push(t.map_err(malformed)?);
                }
            }
            Payload::GlobalSection(r) => {
                let end = r.range().end;
                let mut items = r.into_iter_with_offsets().peekable();
                while let Some(item) = items.next() {
                    let (start, g) = item.map_err(malformed)?;
                    let next = match items.peek() {
                        Some(Ok((next, _))) => *next,
                        _ => end,
                    };
                    self.global_types.push(g.ty);
                    self.defined_globals.push(DefinedGlobal {
                        ty: g.ty,
                        init: g.init_expr,
                        bytes: start as usize..next as usize,
                    });
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    self.exports.push(e.map_err(malformed)?);
                }
            }
            Payload::StartSection { func, .. } => self.start = Some(func),
            Payload::ElementSection(r) => {
                for e in r {
                    self.elements.push(e.map_err(malformed)?);
                }
            }
            Payload::DataCountSection { count, .. } => self.data_count = Some(count),
            Payload::DataSection(r) => {
                for d in r {
                    self.data.push(d.map_err(malformed)?);
                }
            }
            Payload::CodeSectionEntry(body) => self.bodies.push(body),
            Payload::Version { .. }
            | Payload::CodeSectionStart { .. }
            | Payload::CustomSection(_)
            | Payload::End(_) => {}
            Payload::UnknownSection { id, .. } => bail!("unknown section id {id}"),
            other => {
                let what = other.as_section().map(|(id, _)| id);
                bail!("unexpected component payload (section {what:?}) in a core module")
            }
        }
        Ok(())
    }

    /// The function type at type index `ty`, if it is one.
    pub fn func_type(&self, ty: u32) -> Option<&FuncType> {
        match &self.types.get(ty as usize)?.composite_type.inner {
            CompositeInnerType::Func(f) => Some(f),
            _ => None,
        }
    }

    /// The signature of function `func` (imported or defined).
    pub fn func_sig(&self, func: u32) -> Option<&FuncType> {
        self.func_type(*self.func_types.get(func as usize)?)
    }

    /// The body of function `func`, if it is defined here.
    pub fn body(&self, func: u32) -> Option<&FunctionBody<'a>> {
        self.bodies
            .get(func.checked_sub(self.imported_funcs)? as usize)
    }

    pub fn num_funcs(&self) -> u32 {
        self.func_types.len() as u32
    }

    pub fn num_globals(&self) -> u32 {
        self.imported_globals + self.defined_globals.len() as u32
    }

    /// The first custom section called `name`.
    pub fn custom(&self, name: &str) -> Option<&Section<'a>> {
        self.sections.iter().find(|s| s.custom_name == Some(name))
    }

    pub fn contents(&self, s: &Section<'_>) -> &'a [u8] {
        &self.bytes[s.contents.clone()]
    }

    /// A reader over a section's contents that reports offsets in the whole input.
    pub fn section_reader(&self, s: &Section<'_>) -> wasmparser::BinaryReader<'a> {
        wasmparser::BinaryReader::new(self.contents(s), s.contents.start as u64)
    }

    /// Whether the module imports `module.name` as a function; returns its index.
    pub fn imported_func(&self, module: &str, name: &str) -> Option<u32> {
        let mut idx = 0;
        for i in &self.imports {
            if let TypeRef::Func(_) | TypeRef::FuncExact(_) = i.ty {
                if i.module == module && i.name == name {
                    return Some(idx);
                }
                idx += 1;
            }
        }
        None
    }

    /// The active data segments of memory 0, by index, with the addresses they fill (`None`
    /// when the offset is not a constant).
    pub fn memory0_segments(&self) -> impl Iterator<Item = (usize, Option<Range<u64>>)> + '_ {
        self.data
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match &d.kind {
                wasmparser::DataKind::Active {
                    memory_index: 0,
                    offset_expr,
                } => {
                    let start = const_value(offset_expr).map(|v| v as u64);
                    Some((i, start.map(|s| s..s + d.data.len() as u64)))
                }
                _ => None,
            })
    }

    /// Byte range of a function body in the input, as wasmparser reports it.
    pub fn body_range(body: &FunctionBody<'_>) -> Range<usize> {
        let r = body.range();
        r.start as usize..r.end as usize
    }
}

/// Reads an `i32.const N` or `i64.const N` constant expression (what linkers emit for data
/// offsets and the stack pointer's initial value).
pub fn const_value(expr: &ConstExpr<'_>) -> Option<i64> {
    let mut r = expr.get_operators_reader();
    let value = match r.read().ok()? {
        wasmparser::Operator::I32Const { value } => value as u32 as i64,
        wasmparser::Operator::I64Const { value } => value,
        _ => return None,
    };
    match r.read().ok()? {
        wasmparser::Operator::End => Some(value),
        _ => None,
    }
}

/// Refuses a section, or a type section's rec group, that declares more entries than it has
/// bytes (every entry takes at least one): wasmparser reserves room for the declared number
/// before reading the first entry (up to a million types, about 100 MB, from a 20-byte rec
/// group), so a tiny hostile file would cost that much memory before it is found malformed.
/// Other malformations are left to the parse that follows, which words them.
fn plausible_counts(bytes: &[u8]) -> Result<()> {
    let check = |what: &str, count: u32, range: Range<u64>| -> Result<()> {
        if count as u64 > range.end.saturating_sub(range.start) {
            bail!(
                "malformed module: the {what} at offset {:#x} declares {count} entries in {} bytes",
                range.start,
                range.end.saturating_sub(range.start)
            );
        }
        Ok(())
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        let (what, count, range) = match &payload {
            Payload::TypeSection(r) => {
                let range = r.range();
                check("type section", r.count(), range.clone())?;
                // Each rec group `0x4e count subtypes…` is checked before it is read.
                let Some(data) = bytes.get(range.start as usize..range.end as usize) else {
                    continue;
                };
                let mut b = wasmparser::BinaryReader::new(data, range.start);
                let Ok(groups) = b.read_var_u32() else {
                    continue;
                };
                for _ in 0..groups {
                    if data.get(b.current_position()) == Some(&0x4e) {
                        let mut group = b.clone();
                        let (Ok(_), Ok(n)) = (group.read_u8(), group.read_var_u32()) else {
                            break;
                        };
                        check("rec group", n, group.original_position()..range.end)?;
                    }
                    if b.read::<wasmparser::RecGroup>().is_err() {
                        break;
                    }
                }
                continue;
            }
            Payload::ImportSection(r) => ("import section", r.count(), r.range()),
            Payload::FunctionSection(r) => ("function section", r.count(), r.range()),
            Payload::TableSection(r) => ("table section", r.count(), r.range()),
            Payload::MemorySection(r) => ("memory section", r.count(), r.range()),
            Payload::TagSection(r) => ("tag section", r.count(), r.range()),
            Payload::GlobalSection(r) => ("global section", r.count(), r.range()),
            Payload::ExportSection(r) => ("export section", r.count(), r.range()),
            Payload::ElementSection(r) => ("element section", r.count(), r.range()),
            Payload::DataSection(r) => ("data section", r.count(), r.range()),
            Payload::CodeSectionStart {
                count,
                unchecked_range,
                ..
            } => ("code section", *count, unchecked_range.clone()),
            _ => continue,
        };
        check(what, count, range)?;
    }
    Ok(())
}
