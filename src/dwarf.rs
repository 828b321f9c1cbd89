//! DWARF follows the code: after bodies move, every code address in the `.debug_*` sections is
//! rewritten with the emitter's [`CodeMap`], so each original instruction keeps its source
//! location.
//!
//! Design: patch, don't rebuild. Every section is copied and only its code addresses change:
//! - fixed-width fields are patched in place: `DW_FORM_addr` attributes (`DW_AT_low_pc`,
//!   `DW_AT_high_pc`, `DW_AT_entry_pc`, …), `DW_AT_high_pc` lengths, the address pairs of
//!   DWARF 4 `.debug_ranges` and `.debug_loc` (relative to their unit's base address), the
//!   `.debug_aranges` tuples, and the DWARF 5 `.debug_addr` entries that hold code addresses
//!   (those named by `DW_FORM_addrx*` attributes and list entries; `DW_OP_addrx` data
//!   addresses are left alone). `.debug_info` keeps its layout, so no DIE offset changes.
//! - each line program of `.debug_line` is re-encoded instruction by instruction: every
//!   instruction that is not an address advance is copied as it was, and every address
//!   advance is recomputed so that each row lands on its mapped address. Where bodies moved
//!   as a whole the advances come out unchanged and so do the bytes. A program that changes
//!   length moves the ones after it, and the `DW_AT_stmt_list` offsets (and `.debug_macro`
//!   headers) that point at them are patched.
//! - DWARF 5 `.debug_rnglists` and `.debug_loclists` hold offsets and lengths as LEB128s, whose
//!   width changes with their value: each list is re-encoded (location expressions copied),
//!   and the offsets tables, contribution lengths and `DW_AT_ranges`/location offsets follow.
//!
//! Why not gimli's `write::Dwarf::from` round trip: measured on ruby-debug (18 MB of DWARF) it
//! took 0.86 s and 380 MB, re-encodes every DIE, and the output differs from the input far
//! beyond its addresses. Patching reads the sections once with gimli and writes them once.
//!
//! Refused (the caller gets [`CannotUpdate`]): type units (`.debug_types`), line programs with
//! several operations per instruction, list entry kinds outside DWARF 5 (GNU extensions), and
//! malformed DWARF.

use crate::codemap::CodeMap;
use crate::module::Module;
use anyhow::{Context, Result, anyhow, bail};
use gimli::constants as dw;
use gimli::{AttributeValue, EndianSlice, LittleEndian};
use std::collections::{BTreeMap, BTreeSet};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// Whether the module has DWARF sections.
pub fn present(m: &Module<'_>) -> bool {
    m.sections
        .iter()
        .any(|s| s.custom_name.is_some_and(|n| n.starts_with(".debug_")))
}

/// The module's DWARF cannot be updated: wasmfix refuses it (exit 2) rather than write stale
/// or broken debug info.
#[derive(Debug)]
pub struct CannotUpdate(pub anyhow::Error);

impl std::fmt::Display for CannotUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.chain().map(|c| c.to_string()).collect();
        write!(
            f,
            "cannot update the DWARF debug info: {}; strip it (llvm-strip --strip-debug) to \
             rewrite this module",
            parts.join(": ")
        )
    }
}

impl std::error::Error for CannotUpdate {}

/// What the update changed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Updated {
    /// New contents of the changed sections, by index in `Module::sections`.
    #[serde(skip)]
    pub sections: BTreeMap<usize, Vec<u8>>,
    /// Compilation units walked.
    pub units: usize,
    /// Addresses and lengths rewritten in `.debug_info`, `.debug_ranges`, `.debug_loc` and
    /// `.debug_aranges`.
    pub addresses: usize,
    /// Line programs whose bytes changed.
    pub line_programs: usize,
}

/// Rewrites the code addresses of `m`'s DWARF with `map`.
pub fn update(m: &Module<'_>, map: &CodeMap) -> Result<Updated, CannotUpdate> {
    update_sections(m, map).map_err(CannotUpdate)
}

/// The `.debug_*` sections of a module by name: (index in `Module::sections`, contents).
struct Sections<'a> {
    found: BTreeMap<&'a str, (usize, &'a [u8])>,
}

impl<'a> Sections<'a> {
    fn find(m: &Module<'a>) -> Result<Sections<'a>> {
        let mut found = BTreeMap::new();
        for (i, s) in m.sections.iter().enumerate() {
            if let Some(name) = s.custom_name.filter(|n| n.starts_with(".debug_"))
                && found.insert(name, (i, m.contents(s))).is_some()
            {
                bail!("the module has two {name} sections");
            }
        }
        Ok(Sections { found })
    }

    fn get(&self, name: &str) -> &'a [u8] {
        self.found.get(name).map_or(&[], |(_, c)| c)
    }
}

/// The context a range or location list is read in: its unit's base address (for offset
/// pairs), where its unit's `.debug_addr` table starts (for `*x` entries), the address size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListContext {
    base: u64,
    addr_base: Option<u64>,
    address_size: u8,
}

/// Where lists, addresses and line programs are referenced from `.debug_info`.
#[derive(Default)]
struct References {
    /// DWARF 2–4 `.debug_ranges` list offset → the base address of its unit.
    ranges: BTreeMap<u64, u64>,
    /// DWARF 2–4 `.debug_loc` list offset → the base address of its unit.
    locations: BTreeMap<u64, u64>,
    /// DWARF 5 `.debug_rnglists` / `.debug_loclists` list offset → its context.
    rnglists: BTreeMap<u64, ListContext>,
    loclists: BTreeMap<u64, ListContext>,
    /// DWARF 5 `DW_AT_ranges` / location `DW_FORM_sec_offset` values, patched when the list
    /// sections change layout: (position in `.debug_info`, width, list offset).
    rnglists_refs: Vec<(usize, usize, u64)>,
    loclists_refs: Vec<(usize, usize, u64)>,
    /// DWARF 5 `DW_AT_rnglists_base` / `DW_AT_loclists_base` values (position in
    /// `.debug_info`, width, offsets table offset): they move with their contribution when
    /// the contributions before it change length.
    rnglists_bases: Vec<(usize, usize, u64)>,
    loclists_bases: Vec<(usize, usize, u64)>,
    /// Positions in `.debug_addr` of the entries that hold code addresses (DWARF 5
    /// `DW_FORM_addrx*` attributes and `*x` list entries; `DW_OP_addrx` data addresses are
    /// not among them).
    addr_code: BTreeSet<usize>,
    /// `DW_AT_stmt_list` values: (position in `.debug_info`, width, `.debug_line` offset).
    line_programs: Vec<(usize, usize, u64)>,
    /// `.debug_macro` unit offsets (their headers hold a `.debug_line` offset).
    macros: Vec<u64>,
    address_size: Option<u8>,
}

fn update_sections(m: &Module<'_>, map: &CodeMap) -> Result<Updated> {
    let sections = Sections::find(m)?;
    if !sections.get(".debug_types").is_empty() {
        bail!(".debug_types (type units) is not supported");
    }
    let dwarf = gimli::Dwarf::load(|id| {
        Ok::<_, gimli::Error>(EndianSlice::new(sections.get(id.name()), LittleEndian))
    })?;
    let mut updated = Updated::default();

    // The line programs need only the map and the address size, which every unit shares (the
    // walk checks it): they are rewritten on another thread while the units are walked. The
    // result is the same as one after the other: both only read their sections, and each
    // result (or error) is used where it was when they ran in turn.
    let first_address_size = dwarf
        .units()
        .next()
        .ok()
        .flatten()
        .map_or(4, |header| header.address_size());
    let debug_line = sections.get(".debug_line");
    let mut info = sections.get(".debug_info").to_vec();
    let (walked, rewritten_lines) = std::thread::scope(|s| {
        let lines = s.spawn(|| rewrite_line_section(debug_line, first_address_size, map));
        let walked = walk_units(&dwarf, &sections, map, &mut info, &mut updated);
        let lines = lines
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (walked, lines)
    });
    let mut refs = walked.context(".debug_info")?;
    let address_size = refs.address_size.unwrap_or(4);

    let mut ranges = sections.get(".debug_ranges").to_vec();
    for (&offset, &base) in &refs.ranges {
        updated.addresses += patch_list(&mut ranges, offset, base, address_size, false, map)
            .with_context(|| format!(".debug_ranges list at {offset:#x}"))?;
    }
    let mut locations = sections.get(".debug_loc").to_vec();
    for (&offset, &base) in &refs.locations {
        updated.addresses += patch_list(&mut locations, offset, base, address_size, true, map)
            .with_context(|| format!(".debug_loc list at {offset:#x}"))?;
    }
    let mut aranges = sections.get(".debug_aranges").to_vec();
    updated.addresses += patch_aranges(&mut aranges, map).context(".debug_aranges")?;

    // DWARF 5 lists: re-encoded (their offsets are LEB128s), then what points at them.
    let addr = sections.get(".debug_addr");
    let mut lists = ListRewrite {
        addr,
        map,
        addr_code: &mut refs.addr_code,
        addresses: 0,
    };
    let rnglists = lists
        .section(sections.get(".debug_rnglists"), &refs.rnglists, false)
        .context(".debug_rnglists")?;
    let loclists = lists
        .section(sections.get(".debug_loclists"), &refs.loclists, true)
        .context(".debug_loclists")?;
    updated.addresses += lists.addresses;
    for (refs, moved, what) in [
        (&refs.rnglists_refs, &rnglists.lists, "DW_AT_ranges"),
        (
            &refs.loclists_refs,
            &loclists.lists,
            "a location list reference",
        ),
        (
            &refs.rnglists_bases,
            &rnglists.tables,
            "DW_AT_rnglists_base",
        ),
        (
            &refs.loclists_bases,
            &loclists.tables,
            "DW_AT_loclists_base",
        ),
    ] {
        for &(at, width, old) in refs {
            let new = moved.get(&old).ok_or_else(|| {
                anyhow!("{what} {old:#x} is not where a list or offsets table starts")
            })?;
            write_uint(&mut info[at..at + width], *new)?;
        }
    }
    let mut addr_copy = addr.to_vec();
    for &at in &refs.addr_code {
        let width = address_size as usize;
        let old = read_uint(addr, at, width).context(".debug_addr")?;
        updated.addresses += patch_address(&mut addr_copy[at..at + width], old, map)?;
    }

    let (line, moved) = if address_size == first_address_size {
        rewritten_lines
    } else {
        rewrite_line_section(debug_line, address_size, map)
    }
    .context(".debug_line")?;
    updated.line_programs = moved.changed;
    let mut macros = sections.get(".debug_macro").to_vec();
    if moved.relocated() {
        for &(at, width, old) in &refs.line_programs {
            let new = moved
                .new_offset(old)
                .ok_or_else(|| anyhow!("DW_AT_stmt_list {old:#x} is not a line program"))?;
            write_uint(&mut info[at..at + width], new)?;
        }
        for &offset in &refs.macros {
            patch_macro_header(&mut macros, offset, &moved)
                .with_context(|| format!(".debug_macro unit at {offset:#x}"))?;
        }
    }

    for (name, contents) in [
        (".debug_info", info),
        (".debug_ranges", ranges),
        (".debug_loc", locations),
        (".debug_aranges", aranges),
        (".debug_rnglists", rnglists.bytes),
        (".debug_loclists", loclists.bytes),
        (".debug_addr", addr_copy),
        (".debug_line", line),
        (".debug_macro", macros),
    ] {
        if let Some(&(index, original)) = sections.found.get(name)
            && original != contents.as_slice()
        {
            updated.sections.insert(index, contents);
        }
    }
    Ok(updated)
}

/// Whether an attribute of this form (or name) can hold a code address, a list or a line
/// program offset; the others are skipped without being decoded.
fn interesting(spec: &gimli::AttributeSpecification) -> bool {
    match spec.form() {
        dw::DW_FORM_addr
        | dw::DW_FORM_sec_offset
        | dw::DW_FORM_data4
        | dw::DW_FORM_data8
        | dw::DW_FORM_addrx
        | dw::DW_FORM_addrx1
        | dw::DW_FORM_addrx2
        | dw::DW_FORM_addrx3
        | dw::DW_FORM_addrx4
        | dw::DW_FORM_GNU_addr_index
        | dw::DW_FORM_rnglistx
        | dw::DW_FORM_loclistx => true,
        _ => spec.name() == dw::DW_AT_high_pc,
    }
}

/// A code address as a DIE holds it: in place (`DW_FORM_addr`, at this position in
/// `.debug_info`), or as an index into its unit's `.debug_addr` table.
#[derive(Debug, Clone, Copy)]
enum Address {
    At(usize, u64),
    Index(u64),
}

/// How a DIE refers to a list: by offset (`DW_FORM_sec_offset` at `at..at + width` in
/// `.debug_info`), or by index into its unit's offsets table (`DW_FORM_rnglistx`/`loclistx`).
#[derive(Debug, Clone, Copy)]
enum ListRef {
    Offset {
        at: usize,
        width: usize,
        offset: u64,
    },
    Index(u64),
}

/// What one unit's DIEs refer to; resolved at the end of the unit, once its root DIE has
/// given the bases (`DW_AT_addr_base` may come after the attributes that need it).
#[derive(Default)]
struct UnitRefs {
    /// The root DIE's low_pc: the base address of the unit's lists.
    base: Option<Address>,
    addr_base: Option<u64>,
    rnglists_base: Option<u64>,
    loclists_base: Option<u64>,
    /// Addresses to map, and high_pc lengths (position, end, form, length, their low_pc).
    addresses: Vec<Address>,
    lengths: Vec<(usize, usize, gimli::DwForm, u64, Address)>,
    ranges: Vec<ListRef>,
    locations: Vec<ListRef>,
}

/// Patches the addresses in `.debug_info` (a copy in `info`) and collects what refers to the
/// other sections.
fn walk_units(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    sections: &Sections<'_>,
    map: &CodeMap,
    info: &mut [u8],
    updated: &mut Updated,
) -> Result<References> {
    let mut refs = References::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit_start = header.debug_info_offset().expect("a .debug_info unit").0;
        let what = || format!("unit at {unit_start:#x}");
        let address_size = header.address_size();
        if !matches!(address_size, 4 | 8) || refs.address_size.is_some_and(|a| a != address_size) {
            bail!("{}: unexpected address size {address_size}", what());
        }
        refs.address_size = Some(address_size);
        updated.units += 1;
        let abbreviations = dwarf.abbreviations(&header).with_context(what)?;
        let mut entries = header
            .entries_raw(&abbreviations, None)
            .with_context(what)?;
        let mut unit = UnitRefs::default();
        let mut root = true;
        while !entries.is_empty() {
            let Some(abbrev) = entries.read_abbreviation().with_context(what)? else {
                continue;
            };
            if !abbrev.attributes().iter().any(interesting) {
                entries
                    .skip_attributes(abbrev.attributes())
                    .with_context(what)?;
                root = false;
                continue;
            }
            let mut low = None;
            let mut length = None;
            for spec in abbrev.attributes() {
                let at = unit_start + entries.next_offset().0;
                let attr = entries.read_attribute(*spec).with_context(what)?;
                let end = unit_start + entries.next_offset().0;
                let address = match attr.value() {
                    AttributeValue::Addr(a) => Some(Address::At(at, a)),
                    AttributeValue::DebugAddrIndex(i) => Some(Address::Index(i.0 as u64)),
                    _ => None,
                };
                match (attr.name(), attr.value()) {
                    (dw::DW_AT_low_pc, _) if address.is_some() => low = address,
                    (_, _) if address.is_some() => unit.addresses.extend(address),
                    (
                        dw::DW_AT_high_pc,
                        AttributeValue::Udata(_)
                        | AttributeValue::Data1(_)
                        | AttributeValue::Data2(_)
                        | AttributeValue::Data4(_)
                        | AttributeValue::Data8(_),
                    ) => {
                        let len = attr.udata_value().expect("a constant");
                        length = Some((at, end, spec.form(), len));
                    }
                    (_, AttributeValue::RangeListsRef(offset)) => {
                        let offset = offset.0 as u64;
                        unit.ranges.push(ListRef::Offset {
                            at,
                            width: end - at,
                            offset,
                        });
                    }
                    (_, AttributeValue::LocationListsRef(offset)) => {
                        let offset = offset.0 as u64;
                        unit.locations.push(ListRef::Offset {
                            at,
                            width: end - at,
                            offset,
                        });
                    }
                    (_, AttributeValue::DebugRngListsIndex(i)) => {
                        unit.ranges.push(ListRef::Index(i.0 as u64))
                    }
                    (_, AttributeValue::DebugLocListsIndex(i)) => {
                        unit.locations.push(ListRef::Index(i.0 as u64))
                    }
                    (_, AttributeValue::DebugAddrBase(b)) => unit.addr_base = Some(b.0 as u64),
                    (_, AttributeValue::DebugRngListsBase(b)) => {
                        unit.rnglists_base = Some(b.0 as u64);
                        refs.rnglists_bases.push((at, end - at, b.0 as u64));
                    }
                    (_, AttributeValue::DebugLocListsBase(b)) => {
                        unit.loclists_base = Some(b.0 as u64);
                        refs.loclists_bases.push((at, end - at, b.0 as u64));
                    }
                    (dw::DW_AT_stmt_list, AttributeValue::DebugLineRef(offset)) => {
                        refs.line_programs.push((at, end - at, offset.0 as u64))
                    }
                    (_, AttributeValue::DebugMacroRef(offset)) => refs.macros.push(offset.0 as u64),
                    _ => {}
                }
            }
            if root {
                unit.base = low;
                root = false;
            }
            unit.addresses.extend(low);
            if let (Some((at, end, form, len)), Some(low)) = (length, low) {
                unit.lengths.push((at, end, form, len, low));
            }
        }
        resolve_unit(&header, unit, sections, map, info, &mut refs, updated).with_context(what)?;
    }
    Ok(refs)
}

/// Rewrites one unit's addresses and high_pc lengths and records its lists (see
/// [`UnitRefs`]).
fn resolve_unit(
    header: &gimli::UnitHeader<Reader<'_>>,
    unit: UnitRefs,
    sections: &Sections<'_>,
    map: &CodeMap,
    info: &mut [u8],
    refs: &mut References,
    updated: &mut Updated,
) -> Result<()> {
    let width = header.address_size() as usize;
    let addr = sections.get(".debug_addr");
    // The address an attribute holds, and where a `.debug_addr` entry lies.
    let entry = |index: u64| -> Result<usize> {
        let base = unit
            .addr_base
            .ok_or_else(|| anyhow!("DW_FORM_addrx without DW_AT_addr_base"))?;
        Ok(base as usize + index as usize * width)
    };
    let value = |a: Address| -> Result<u64> {
        match a {
            Address::At(_, v) => Ok(v),
            Address::Index(i) => read_uint(addr, entry(i)?, width).context(".debug_addr"),
        }
    };
    for &a in &unit.addresses {
        match a {
            Address::At(at, v) => {
                updated.addresses += patch_address(&mut info[at..at + width], v, map)?
            }
            Address::Index(i) => {
                refs.addr_code.insert(entry(i)?);
            }
        }
    }
    // The end moves with the code even when the start does not (linkers leave some DIEs at
    // low_pc 0 with an end inside a function).
    for &(at, end, form, len, low) in &unit.lengths {
        let low = value(low)?;
        // A range that wraps around the address space (ruby-debug has subprograms whose
        // `high_pc` is 0, and one whose length is -6) describes no code: its end stays where
        // it was, modulo the address space, as a non-wrapping end beyond the code does.
        let limit = address_limit(width);
        if low.checked_add(len).is_none_or(|end| end > limit) {
            let new = low.wrapping_add(len).wrapping_sub(map.map(low)) & limit;
            if new != len {
                write_constant(&mut info[at..end], form, new).context("DW_AT_high_pc")?;
                updated.addresses += 1;
            }
            continue;
        }
        contiguous(map, low, low + len)?;
        if let Some(new) = map.map(low + len).checked_sub(map.map(low))
            && new != len
        {
            write_constant(&mut info[at..end], form, new).context("DW_AT_high_pc")?;
            updated.addresses += 1;
        }
    }
    let base = match unit.base {
        Some(a) => value(a)?,
        None => 0,
    };
    let context = ListContext {
        base,
        addr_base: unit.addr_base,
        address_size: width as u8,
    };
    let offset_size = match header.format() {
        gimli::Format::Dwarf32 => 4,
        gimli::Format::Dwarf64 => 8,
    };
    let dwarf5 = header.version() >= 5;
    for (lists, is_location) in [(&unit.ranges, false), (&unit.locations, true)] {
        for &list in lists {
            let offset = match list {
                ListRef::Offset { offset, .. } => offset,
                ListRef::Index(i) => {
                    let (section, base) = if is_location {
                        (".debug_loclists", unit.loclists_base)
                    } else {
                        (".debug_rnglists", unit.rnglists_base)
                    };
                    let base = base.ok_or_else(|| anyhow!("a list index without its base"))?;
                    let at = base as usize + i as usize * offset_size;
                    base + read_uint(sections.get(section), at, offset_size).context(section)?
                }
            };
            if !dwarf5 {
                let set = if is_location {
                    &mut refs.locations
                } else {
                    &mut refs.ranges
                };
                if set.insert(offset, base).is_some_and(|b| b != base) {
                    bail!("list {offset:#x} is used by units with different base addresses");
                }
                continue;
            }
            let (set, offsets) = if is_location {
                (&mut refs.loclists, &mut refs.loclists_refs)
            } else {
                (&mut refs.rnglists, &mut refs.rnglists_refs)
            };
            if set.insert(offset, context).is_some_and(|c| c != context) {
                bail!("list {offset:#x} is used by units with different bases");
            }
            if let ListRef::Offset { at, width, .. } = list {
                offsets.push((at, width, offset));
            }
        }
    }
    Ok(())
}

/// A re-encoded `.debug_rnglists` / `.debug_loclists`.
struct ListSection {
    bytes: Vec<u8>,
    /// Old → new offset of every list.
    lists: BTreeMap<u64, u64>,
    /// Old → new offset of every contribution's offsets table (what `DW_AT_*lists_base`
    /// holds).
    tables: BTreeMap<u64, u64>,
}

/// Re-encodes DWARF 5 `.debug_rnglists` / `.debug_loclists` (see [`ListRewrite::section`]).
struct ListRewrite<'a, 'r> {
    /// The input's `.debug_addr`, for the addresses `*x` entries name.
    addr: &'a [u8],
    map: &'a CodeMap,
    /// `.debug_addr` entries found to hold code addresses.
    addr_code: &'r mut BTreeSet<usize>,
    addresses: usize,
}

impl ListRewrite<'_, '_> {
    /// Re-encodes every contribution of a list section: each list's addresses are mapped and
    /// its offsets and lengths (LEB128s, whose width may change) recomputed, each
    /// contribution's offsets table and length follow. Lists no unit refers to are copied.
    /// Returns the section and where its lists and offsets tables moved.
    fn section(
        &mut self,
        section: &[u8],
        lists: &BTreeMap<u64, ListContext>,
        locations: bool,
    ) -> Result<ListSection> {
        let mut out = Vec::with_capacity(section.len() + section.len() / 8);
        let mut moved = BTreeMap::new();
        let mut tables = BTreeMap::new();
        let mut set = 0usize;
        while set < section.len() {
            let (length, offset_size, length_field) = match read_uint(section, set, 4)? {
                0xffff_ffff => (read_uint(section, set + 4, 8)? as usize, 8, 12),
                n => (n as usize, 4, 4),
            };
            let end = set + length_field + length;
            // version (2), address_size (1), segment_selector_size (1), offset_entry_count (4)
            let count = read_uint(section, set + length_field + 4, 4)? as usize;
            let table = set + length_field + 8;
            let first_list = table + count * offset_size;
            if end > section.len() || first_list > end {
                bail!("truncated contribution at {set:#x}");
            }
            let new_set = out.len();
            out.extend_from_slice(&section[set..first_list]);
            let new_table = new_set + (table - set);
            tables.insert(table as u64, new_table as u64);
            let mut at = first_list;
            while at < end {
                moved.insert(at as u64, out.len() as u64);
                let context = lists.get(&(at as u64)).copied();
                at = self
                    .list(section, at, context, locations, &mut out)
                    .with_context(|| format!("list at {at:#x}"))?;
            }
            for k in 0..count {
                let old = table as u64 + read_uint(section, table + k * offset_size, offset_size)?;
                let new = moved
                    .get(&old)
                    .ok_or_else(|| anyhow!("offsets table entry {k} is not a list"))?;
                let field = new_table + k * offset_size;
                write_uint(&mut out[field..field + offset_size], new - new_table as u64)?;
            }
            let new_length = (out.len() - new_set - length_field) as u64;
            let length_at = new_set + length_field - offset_size;
            write_uint(&mut out[length_at..new_set + length_field], new_length)?;
            set = end;
        }
        Ok(ListSection {
            bytes: out,
            lists: moved,
            tables,
        })
    }

    /// Re-encodes the list at `at` into `out`; returns where the next one starts. Without a
    /// context (no unit refers to it) the list is copied as it is.
    fn list(
        &mut self,
        section: &[u8],
        at: usize,
        context: Option<ListContext>,
        locations: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        let mut r = ByteReader { bytes: section, at };
        let width = context.map_or(4, |c| c.address_size as usize);
        let mut base = context.map(|c| c.base);
        // DW_RLE_* and DW_LLE_* share their codes 0–4; from 5 on, location lists insert
        // DW_LLE_default_location, so their codes for the rest are one higher.
        let shift = u8::from(locations);
        loop {
            let start = r.at;
            let kind = r.u8()?;
            let Some(context) = context else {
                // No unit refers to it: find its end and copy it.
                self.skip_entry(&mut r, kind, locations, width)?;
                out.extend_from_slice(&section[start..r.at]);
                if kind == 0 {
                    return Ok(r.at);
                }
                continue;
            };
            out.push(kind);
            match kind {
                0 => return Ok(r.at),
                // base_addressx
                1 => {
                    let i = r.uleb()?;
                    push_uleb(out, i);
                    base = Some(self.indexed(context, i)?);
                }
                // startx_endx
                2 => {
                    for _ in 0..2 {
                        let i = r.uleb()?;
                        push_uleb(out, i);
                        self.indexed(context, i)?;
                    }
                }
                // startx_length
                3 => {
                    let i = r.uleb()?;
                    let length = r.uleb()?;
                    let start = self.indexed(context, i)?;
                    push_uleb(out, i);
                    push_uleb(out, self.new_length(start, length)?);
                }
                // offset_pair
                4 => {
                    let Some(base) = base else {
                        bail!("an offset pair without a base address");
                    };
                    let (begin, end) = (r.uleb()?, r.uleb()?);
                    if self.map.movable(base + begin) && self.map.movable(base + end) {
                        contiguous(self.map, base + begin, base + end)?;
                    }
                    for offset in [begin, end] {
                        let new = self.new_offset(base, offset);
                        push_uleb(out, new);
                    }
                }
                // DW_LLE_default_location: no range.
                5 if locations => {}
                // base_address
                k if k == 5 + shift => {
                    let a = r.address(width)?;
                    self.push_address(out, a, width)?;
                    base = Some(a);
                }
                // start_end
                k if k == 6 + shift => {
                    for _ in 0..2 {
                        let a = r.address(width)?;
                        self.push_address(out, a, width)?;
                    }
                }
                // start_length
                k if k == 7 + shift => {
                    let a = r.address(width)?;
                    let length = r.uleb()?;
                    self.push_address(out, a, width)?;
                    push_uleb(out, self.new_length(a, length)?);
                }
                other => bail!("unknown list entry kind {other:#x}"),
            }
            if locations && kind != 1 && kind != 5 + shift {
                // The entry's location description, copied as it is.
                let len = r.uleb()? as usize;
                let description = r.at;
                r.skip(len)?;
                push_uleb(out, len as u64);
                out.extend_from_slice(&section[description..r.at]);
            }
        }
    }

    /// Skips one entry of kind `kind` (already read) of a list no unit refers to.
    fn skip_entry(
        &self,
        r: &mut ByteReader<'_>,
        kind: u8,
        locations: bool,
        width: usize,
    ) -> Result<()> {
        let shift = u8::from(locations);
        match kind {
            0 => return Ok(()),
            1 => {
                r.uleb()?;
            }
            2..=4 => {
                r.uleb()?;
                r.uleb()?;
            }
            5 if locations => {}
            k if k == 5 + shift => r.skip(width)?,
            k if k == 6 + shift => r.skip(2 * width)?,
            k if k == 7 + shift => {
                r.skip(width)?;
                r.uleb()?;
            }
            other => bail!("unknown list entry kind {other:#x}"),
        }
        if locations && kind != 1 && kind != 5 + shift {
            let len = r.uleb()? as usize;
            r.skip(len)?;
        }
        Ok(())
    }

    /// The code address `.debug_addr` entry `index` of the list's unit holds; marks the
    /// entry as a code address.
    fn indexed(&mut self, context: ListContext, index: u64) -> Result<u64> {
        let base = context
            .addr_base
            .ok_or_else(|| anyhow!("an indexed address without DW_AT_addr_base"))?;
        let width = context.address_size as usize;
        let at = base as usize + index as usize * width;
        let value = read_uint(self.addr, at, width).context(".debug_addr")?;
        self.addr_code.insert(at);
        Ok(value)
    }

    fn new_length(&mut self, start: u64, length: u64) -> Result<u64> {
        contiguous(self.map, start, start + length)?;
        let new = self
            .map
            .map(start + length)
            .checked_sub(self.map.map(start))
            .unwrap_or(length);
        self.addresses += usize::from(new != length);
        Ok(new)
    }

    /// An offset from `base` after the move (tombstones and addresses outside the code stay).
    fn new_offset(&mut self, base: u64, offset: u64) -> u64 {
        let absolute = base + offset;
        if !self.map.movable(absolute) {
            return offset;
        }
        let new = self
            .map
            .map(absolute)
            .checked_sub(self.map.map(base))
            .unwrap_or(offset);
        self.addresses += usize::from(new != offset);
        new
    }

    fn push_address(&mut self, out: &mut Vec<u8>, old: u64, width: usize) -> Result<()> {
        let at = out.len();
        out.resize(at + width, 0);
        write_uint(&mut out[at..], old)?;
        self.addresses += patch_address(&mut out[at..], old, self.map)?;
        Ok(())
    }
}

/// Rewrites the address in `field` (little-endian, its width) holding `old`; returns 1 if it
/// changed.
fn patch_address(field: &mut [u8], old: u64, map: &CodeMap) -> Result<usize> {
    let new = map.map(old);
    if new == old {
        return Ok(0);
    }
    write_uint(field, new)?;
    Ok(1)
}

/// Writes `value` little-endian over all of `field`.
fn write_uint(field: &mut [u8], value: u64) -> Result<()> {
    let width = field.len();
    if width < 8 && value >> (8 * width) != 0 {
        bail!("{value:#x} does not fit in {width} bytes");
    }
    field.copy_from_slice(&value.to_le_bytes()[..width]);
    Ok(())
}

/// Writes constant `value` over `field`, encoded in `form` with `field`'s width (a ULEB128
/// is padded to its original length).
fn write_constant(field: &mut [u8], form: gimli::DwForm, value: u64) -> Result<()> {
    match form {
        dw::DW_FORM_udata => write_padded_uleb(field, value),
        _ => write_uint(field, value),
    }
}

fn write_padded_uleb(field: &mut [u8], mut value: u64) -> Result<()> {
    let n = field.len();
    for (i, byte) in field.iter_mut().enumerate() {
        *byte = (value & 0x7f) as u8 | if i + 1 < n { 0x80 } else { 0 };
        value >>= 7;
    }
    if value != 0 {
        bail!("the new value does not fit in the {n} bytes of the original");
    }
    Ok(())
}

fn read_uint(bytes: &[u8], at: usize, width: usize) -> Result<u64> {
    let field = bytes
        .get(at..at + width)
        .ok_or_else(|| anyhow!("truncated at {at:#x}"))?;
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(field);
    Ok(u64::from_le_bytes(buf))
}

/// Patches one DWARF 4 range list (`.debug_ranges`) or location list (`.debug_loc`, whose
/// entries carry an expression) at `offset`; entries are relative to `base` until a base
/// address selection entry changes it. Returns the number of addresses rewritten.
fn patch_list(
    section: &mut [u8],
    offset: u64,
    mut base: u64,
    address_size: u8,
    has_expressions: bool,
    map: &CodeMap,
) -> Result<usize> {
    let width = address_size as usize;
    let max = if width == 8 {
        u64::MAX
    } else {
        u32::MAX as u64
    };
    let mut at = offset as usize;
    let mut patched = 0;
    loop {
        let begin = read_uint(section, at, width)?;
        let end = read_uint(section, at + width, width)?;
        if begin == 0 && end == 0 {
            return Ok(patched);
        }
        if begin == max {
            // Base address selection: `end` is an absolute address.
            patched += patch_address(&mut section[at + width..at + 2 * width], end, map)?;
            base = end;
            at += 2 * width;
            continue;
        }
        if map.movable(base + begin) && map.movable(base + end) {
            contiguous(map, base + begin, base + end)?;
        }
        let new_base = map.map(base);
        for (field, value) in [(at, begin), (at + width, end)] {
            // Tombstones (-2 for a dropped function) stay as they are.
            let absolute = base + value;
            if map.movable(absolute)
                && let Some(new) = map.map(absolute).checked_sub(new_base)
                && new != value
            {
                write_uint(&mut section[field..field + width], new)?;
                patched += 1;
            }
        }
        at += 2 * width;
        if has_expressions {
            at += 2 + read_uint(section, at, 2)? as usize;
        }
    }
}

/// The largest address of `width` bytes.
fn address_limit(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

/// Refuses an address range `[begin, end)` that spans bodies no longer in input order (a body
/// moved to the end of the code between them): patched in place it would come out inverted
/// or miss the moved body. Compilers give each function its own range; binaryen-written
/// DWARF has one range per unit.
fn contiguous(map: &CodeMap, begin: u64, end: u64) -> Result<()> {
    if end > begin && map.sequence_break(begin, end - 1).is_some() {
        return Err(SpansMovedBody { begin, end }.into());
    }
    Ok(())
}

/// An address range of the DWARF spans a body that moved (see `contiguous`): the one refusal a
/// run can avoid by not moving bodies (`pipeline` retries a `--harden` run without heap-canary).
#[derive(Debug)]
pub struct SpansMovedBody {
    begin: u64,
    end: u64,
}

impl std::fmt::Display for SpansMovedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the address range [{:#x}, {:#x}) spans a function body that was moved (heap-canary \
             moves malloc and free): it cannot be updated in place",
            self.begin, self.end
        )
    }
}

impl std::error::Error for SpansMovedBody {}

impl CannotUpdate {
    /// Whether the refusal is a range over a moved body ([`SpansMovedBody`]).
    pub fn spans_moved_body(&self) -> bool {
        self.0.downcast_ref::<SpansMovedBody>().is_some()
    }
}

/// Patches the (address, length) tuples of every set in `.debug_aranges`.
fn patch_aranges(section: &mut [u8], map: &CodeMap) -> Result<usize> {
    let mut patched = 0;
    let mut set = 0usize;
    while set < section.len() {
        let (length, offset_size, header) = match read_uint(section, set, 4)? {
            0xffff_ffff => (read_uint(section, set + 4, 8)? as usize, 8, 12),
            n => (n as usize, 4, 4),
        };
        let end = set + header + length;
        // version (2), debug_info_offset, address_size (1), segment_selector_size (1)
        let address_size = *section
            .get(set + header + 2 + offset_size)
            .ok_or_else(|| anyhow!("truncated set at {set:#x}"))?
            as usize;
        if !matches!(address_size, 4 | 8) {
            bail!("set at {set:#x}: unexpected address size {address_size}");
        }
        let tuples = (header + 2 + offset_size + 2).next_multiple_of(2 * address_size);
        let mut at = set + tuples;
        while at + 2 * address_size <= end {
            let address = read_uint(section, at, address_size)?;
            let length = read_uint(section, at + address_size, address_size)?;
            if address == 0 && length == 0 {
                break;
            }
            contiguous(map, address, address + length)?;
            let new = map.map(address);
            if let Some(new_length) = map.map(address + length).checked_sub(new)
                && (new, new_length) != (address, length)
            {
                write_uint(&mut section[at..at + address_size], new)?;
                write_uint(
                    &mut section[at + address_size..at + 2 * address_size],
                    new_length,
                )?;
                patched += 1;
            }
            at += 2 * address_size;
        }
        set = end;
    }
    Ok(patched)
}

/// Where the line programs of `.debug_line` went.
struct MovedPrograms {
    /// (old offset, new offset) of every program, ascending.
    offsets: Vec<(u64, u64)>,
    /// Programs whose bytes changed.
    changed: usize,
}

impl MovedPrograms {
    fn relocated(&self) -> bool {
        self.offsets.iter().any(|(old, new)| old != new)
    }

    fn new_offset(&self, old: u64) -> Option<u64> {
        let i = self.offsets.binary_search_by_key(&old, |&(o, _)| o).ok()?;
        Some(self.offsets[i].1)
    }
}

/// Re-encodes every line program of `.debug_line` in order (see the module comment).
fn rewrite_line_section(
    section: &[u8],
    address_size: u8,
    map: &CodeMap,
) -> Result<(Vec<u8>, MovedPrograms)> {
    let debug_line = gimli::DebugLine::new(section, LittleEndian);
    let mut out = Vec::with_capacity(section.len() + section.len() / 16);
    let mut moved = MovedPrograms {
        offsets: Vec::new(),
        changed: 0,
    };
    let mut offset = 0usize;
    while offset < section.len() {
        let program = debug_line
            .program(gimli::DebugLineOffset(offset), address_size, None, None)
            .with_context(|| format!("line program at {offset:#x}"))?;
        let header = program.header();
        let length_field = match header.format() {
            gimli::Format::Dwarf32 => 4,
            gimli::Format::Dwarf64 => 12,
        };
        let end = offset + length_field + header.unit_length();
        let instructions = header.raw_program_buf().slice();
        let program_start = instructions.as_ptr() as usize - section.as_ptr() as usize;
        let new_offset = out.len();
        moved.offsets.push((offset as u64, new_offset as u64));
        out.extend_from_slice(&section[offset..program_start]);
        rewrite_line_program(instructions, header, map, &mut out)
            .with_context(|| format!("line program at {offset:#x}"))?;
        let new_length = (out.len() - new_offset - length_field) as u64;
        let length_at = new_offset + length_field - if length_field == 4 { 4 } else { 8 };
        write_uint(&mut out[length_at..new_offset + length_field], new_length)?;
        if out[new_offset..] != section[offset..end] {
            moved.changed += 1;
        }
        offset = end;
    }
    Ok((out, moved))
}

/// Appends `program` (the instructions of one line program) to `out` with every address
/// advance recomputed through `map`.
fn rewrite_line_program(
    program: &[u8],
    header: &gimli::LineProgramHeader<Reader<'_>>,
    map: &CodeMap,
    out: &mut Vec<u8>,
) -> Result<()> {
    if header.maximum_operations_per_instruction() > 1 {
        bail!("several operations per instruction (VLIW) are not supported");
    }
    let min_length = header.minimum_instruction_length() as u64;
    if min_length == 0 {
        bail!("minimum_instruction_length is 0");
    }
    let opcode_base = header.opcode_base();
    let line_base = header.line_base() as i64;
    let line_range = header.line_range() as u64;
    if line_range == 0 {
        bail!("line_range is 0");
    }
    let standard_lengths = header.standard_opcode_lengths().slice();
    // The largest address advance of a special opcode, which DW_LNS_const_add_pc adds.
    let const_add = (255 - opcode_base as u64) / line_range * min_length;

    let mut r = ByteReader {
        bytes: program,
        at: 0,
    };
    // Address registers of the input's state machine and of the one being written, and the
    // registers a sequence split must restore.
    let mut old_address = 0u64;
    let mut new_address = 0u64;
    let initial = Registers {
        file: 1,
        line: 1,
        column: 0,
        is_stmt: header.default_is_stmt(),
        isa: 0,
    };
    let mut regs = initial;
    let address_size = header.address_size() as usize;
    // Moves the written state from where the input's was (`from`) to where `old` maps;
    // returns the advance. Where a body between them moved out of order (heap-canary moves
    // malloc to the end of the code), the sequence ends with the body `from` is in and a new
    // one starts at `old`'s place with the same registers.
    let advance_to = |from: u64,
                      old: u64,
                      new_address: &mut u64,
                      regs: &Registers,
                      out: &mut Vec<u8>|
     -> Result<u64> {
        let target = map.map(old);
        if let Some(end) = map.sequence_break(from, old) {
            let delta = end
                .checked_sub(*new_address)
                .ok_or_else(|| anyhow!("addresses decrease within a sequence at {from:#x}"))?;
            if delta != 0 {
                push_advance_pc(out, delta, min_length)?;
            }
            out.extend_from_slice(&[0, 1, dw::DW_LNE_end_sequence.0]);
            out.extend_from_slice(&[0, 1 + address_size as u8, dw::DW_LNE_set_address.0]);
            let at = out.len();
            out.resize(at + address_size, 0);
            write_uint(&mut out[at..], target)?;
            regs.restore(&initial, out);
            *new_address = target;
            return Ok(0);
        }
        let delta = target
            .checked_sub(*new_address)
            .ok_or_else(|| anyhow!("addresses decrease within a sequence at {old:#x}"))?;
        *new_address = target;
        Ok(delta)
    };
    while !r.is_empty() {
        let start = r.at;
        let opcode = r.u8()?;
        let from = old_address;
        if opcode >= opcode_base {
            let adjusted = (opcode - opcode_base) as u64;
            let line_advance = line_base + (adjusted % line_range) as i64;
            old_address += adjusted / line_range * min_length;
            let delta = advance_to(from, old_address, &mut new_address, &regs, out)?;
            regs.line = regs.line.wrapping_add(line_advance as u64);
            let special = |operation_advance: u64| {
                let code = (line_advance - line_base) as u64
                    + line_range * operation_advance
                    + opcode_base as u64;
                (code <= 255).then_some(code as u8)
            };
            match special(delta / min_length).filter(|_| delta.is_multiple_of(min_length)) {
                Some(code) => out.push(code),
                None => {
                    push_advance_pc(out, delta, min_length)?;
                    out.push(special(0).expect("no larger than the original opcode"));
                }
            }
            continue;
        }
        match opcode {
            0 => {
                let length = r.uleb()? as usize;
                let body = r.at;
                let sub = r.u8()?;
                r.skip(
                    length
                        .checked_sub(1)
                        .ok_or_else(|| anyhow!("empty extended opcode"))?,
                )?;
                match sub {
                    s if s == dw::DW_LNE_end_sequence.0 => {
                        // The end of the last body a row is in, when the code after it moved.
                        let end = map.sequence_break(from, old_address);
                        let target = end.unwrap_or_else(|| map.map(old_address));
                        let delta = target.checked_sub(new_address).ok_or_else(|| {
                            anyhow!("addresses decrease within a sequence at {old_address:#x}")
                        })?;
                        if delta != 0 {
                            push_advance_pc(out, delta, min_length)?;
                        }
                        out.extend_from_slice(&program[start..r.at]);
                        old_address = 0;
                        new_address = 0;
                        regs = initial;
                    }
                    s if s == dw::DW_LNE_set_address.0 => {
                        let width = length - 1;
                        if !matches!(width, 4 | 8) {
                            bail!("DW_LNE_set_address with a {width}-byte address");
                        }
                        old_address = read_uint(program, body + 1, width)?;
                        // Jumping over a body that moved: end the sequence here (see
                        // `advance_to`).
                        let split = map.sequence_break(from, old_address);
                        if let Some(end) = split {
                            let delta = end.checked_sub(new_address).ok_or_else(|| {
                                anyhow!("addresses decrease within a sequence at {from:#x}")
                            })?;
                            if delta != 0 {
                                push_advance_pc(out, delta, min_length)?;
                            }
                            out.extend_from_slice(&[0, 1, dw::DW_LNE_end_sequence.0]);
                        }
                        new_address = map.map(old_address);
                        out.extend_from_slice(&program[start..body + 1]);
                        let at = out.len();
                        out.extend_from_slice(&program[body + 1..r.at]);
                        write_uint(&mut out[at..], new_address)?;
                        if split.is_some() {
                            regs.restore(&initial, out);
                        }
                    }
                    _ => out.extend_from_slice(&program[start..r.at]),
                }
            }
            o if o == dw::DW_LNS_copy.0 => {
                let delta = advance_to(from, old_address, &mut new_address, &regs, out)?;
                if delta != 0 {
                    push_advance_pc(out, delta, min_length)?;
                }
                out.push(opcode);
            }
            o if o == dw::DW_LNS_advance_pc.0 => {
                old_address += r.uleb()? * min_length;
                let delta = advance_to(from, old_address, &mut new_address, &regs, out)?;
                push_advance_pc(out, delta, min_length)?;
            }
            o if o == dw::DW_LNS_const_add_pc.0 => {
                old_address += const_add;
                let delta = advance_to(from, old_address, &mut new_address, &regs, out)?;
                if delta == const_add {
                    out.push(opcode);
                } else if delta != 0 {
                    push_advance_pc(out, delta, min_length)?;
                }
            }
            o if o == dw::DW_LNS_fixed_advance_pc.0 => {
                old_address += r.u16()? as u64;
                let delta = advance_to(from, old_address, &mut new_address, &regs, out)?;
                match u16::try_from(delta) {
                    Ok(d) => {
                        out.push(opcode);
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                    Err(_) => push_advance_pc(out, delta, min_length)?,
                }
            }
            o if o == dw::DW_LNS_advance_line.0 => {
                regs.line = regs.line.wrapping_add(r.sleb()? as u64);
                out.extend_from_slice(&program[start..r.at]);
            }
            _ => {
                // Every other standard opcode: its ULEB128 operands are copied as they are.
                let operands = *standard_lengths
                    .get(opcode as usize - 1)
                    .ok_or_else(|| anyhow!("opcode {opcode} has no operand count"))?;
                let mut first = None;
                for _ in 0..operands {
                    first.get_or_insert(r.uleb()?);
                }
                out.extend_from_slice(&program[start..r.at]);
                match (opcode, first) {
                    (o, Some(v)) if o == dw::DW_LNS_set_file.0 => regs.file = v,
                    (o, Some(v)) if o == dw::DW_LNS_set_column.0 => regs.column = v,
                    (o, Some(v)) if o == dw::DW_LNS_set_isa.0 => regs.isa = v,
                    (o, _) if o == dw::DW_LNS_negate_stmt.0 => regs.is_stmt = !regs.is_stmt,
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The line state machine registers that hold from row to row (the others are reset after
/// each row), for restarting a sequence where another one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registers {
    file: u64,
    line: u64,
    column: u64,
    is_stmt: bool,
    isa: u64,
}

impl Registers {
    /// Appends the opcodes that take a new sequence's registers (`initial`) to these.
    fn restore(&self, initial: &Registers, out: &mut Vec<u8>) {
        if self.file != initial.file {
            out.push(dw::DW_LNS_set_file.0);
            push_uleb(out, self.file);
        }
        if self.line != initial.line {
            out.push(dw::DW_LNS_advance_line.0);
            push_sleb(out, self.line.wrapping_sub(initial.line) as i64);
        }
        if self.column != initial.column {
            out.push(dw::DW_LNS_set_column.0);
            push_uleb(out, self.column);
        }
        if self.is_stmt != initial.is_stmt {
            out.push(dw::DW_LNS_negate_stmt.0);
        }
        if self.isa != initial.isa {
            out.push(dw::DW_LNS_set_isa.0);
            push_uleb(out, self.isa);
        }
    }
}

fn push_sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn push_advance_pc(out: &mut Vec<u8>, delta: u64, min_length: u64) -> Result<()> {
    if !delta.is_multiple_of(min_length) {
        bail!("an address advance of {delta} is not a multiple of minimum_instruction_length");
    }
    out.push(dw::DW_LNS_advance_pc.0);
    push_uleb(out, delta / min_length);
    Ok(())
}

fn push_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Patches the `.debug_line` offset in the header of the `.debug_macro` unit at `offset`.
fn patch_macro_header(section: &mut [u8], offset: u64, moved: &MovedPrograms) -> Result<()> {
    let at = offset as usize;
    let flags = *section
        .get(at + 2)
        .ok_or_else(|| anyhow!("truncated header"))?;
    if flags & 2 == 0 {
        return Ok(());
    }
    let width = if flags & 1 != 0 { 8 } else { 4 };
    let old = read_uint(section, at + 3, width)?;
    let new = moved
        .new_offset(old)
        .ok_or_else(|| anyhow!("debug_line_offset {old:#x} is not a line program"))?;
    write_uint(&mut section[at + 3..at + 3 + width], new)
}

/// A cursor over bytes, with the LEB128 readers line programs need.
struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl ByteReader<'_> {
    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn u8(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| anyhow!("truncated line program"))?;
        self.at += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn address(&mut self, width: usize) -> Result<u64> {
        let value = read_uint(self.bytes, self.at, width)?;
        self.at += width;
        Ok(value)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        if self.at + n > self.bytes.len() {
            bail!("truncated line program");
        }
        self.at += n;
        Ok(())
    }

    fn uleb(&mut self) -> Result<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= ((b & 0x7f) as u64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    fn sleb(&mut self) -> Result<i64> {
        let mut value = 0i64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= ((b & 0x7f) as i64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Ok(value);
            }
        }
    }
}
