//! DWARF follows the code: after bodies move, every code address in the `.debug_*` sections is
//! rewritten with the emitter's [`CodeMap`], so each original instruction keeps its source
//! location.
//!
//! Design: patch, don't rebuild. Every section is copied and only its code addresses change:
//! - fixed-width fields are patched in place: `DW_FORM_addr` attributes (`DW_AT_low_pc`,
//!   `DW_AT_high_pc`, `DW_AT_entry_pc`, …), `DW_AT_high_pc` lengths, the address pairs of
//!   `.debug_ranges` and `.debug_loc` (relative to their unit's base address), and the
//!   `.debug_aranges` tuples. `.debug_info` keeps its layout, so no DIE offset changes.
//! - each line program of `.debug_line` is re-encoded instruction by instruction: every
//!   instruction that is not an address advance is copied as it was, and every address
//!   advance is recomputed so that each row lands on its mapped address. Where bodies moved
//!   as a whole the advances come out unchanged and so do the bytes. A program that changes
//!   length moves the ones after it, and the `DW_AT_stmt_list` offsets (and `.debug_macro`
//!   headers) that point at them are patched.
//!
//! Why not gimli's `write::Dwarf::from` round trip: measured on ruby-debug (18 MB of DWARF) it
//! took 0.86 s and 380 MB, re-encodes every DIE, and the output differs from the input far
//! beyond its addresses. Patching reads the sections once with gimli and writes them once.
//!
//! Refused (the caller gets [`CannotUpdate`]): DWARF 5 units, `.debug_types`, line programs
//! with several operations per instruction, and malformed DWARF.

use crate::codemap::CodeMap;
use crate::module::Module;
use anyhow::{Context, Result, anyhow, bail};
use gimli::constants as dw;
use gimli::{AttributeValue, EndianSlice, LittleEndian};
use std::collections::BTreeMap;

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

/// Where lists and line programs are referenced from `.debug_info`.
#[derive(Default)]
struct References {
    /// `.debug_ranges` list offset → the base address of its unit.
    ranges: BTreeMap<u64, u64>,
    /// `.debug_loc` list offset → the base address of its unit.
    locations: BTreeMap<u64, u64>,
    /// `DW_AT_stmt_list` values: (position in `.debug_info`, width, `.debug_line` offset).
    line_programs: Vec<(usize, usize, u64)>,
    /// `.debug_macro` unit offsets (their headers hold a `.debug_line` offset).
    macros: Vec<u64>,
    address_size: Option<u8>,
}

fn update_sections(m: &Module<'_>, map: &CodeMap) -> Result<Updated> {
    let sections = Sections::find(m)?;
    for unsupported in [
        ".debug_types",
        ".debug_rnglists",
        ".debug_loclists",
        ".debug_addr",
    ] {
        if !sections.get(unsupported).is_empty() {
            bail!("{unsupported} (DWARF 5 or type units) is not supported");
        }
    }
    let dwarf = gimli::Dwarf::load(|id| {
        Ok::<_, gimli::Error>(EndianSlice::new(sections.get(id.name()), LittleEndian))
    })?;
    let mut updated = Updated::default();

    let mut info = sections.get(".debug_info").to_vec();
    let refs = walk_units(&dwarf, map, &mut info, &mut updated).context(".debug_info")?;
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

    let (line, moved) = rewrite_line_section(sections.get(".debug_line"), address_size, map)
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

/// `DW_AT_high_pc` of one DIE: an address, or a length from `DW_AT_low_pc` at `at..end`.
enum HighPc {
    Address(usize, u64),
    Length(usize, usize, gimli::DwForm, u64),
}

/// Patches the addresses in `.debug_info` (a copy in `info`) and collects what refers to the
/// other sections.
fn walk_units(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    map: &CodeMap,
    info: &mut [u8],
    updated: &mut Updated,
) -> Result<References> {
    let mut refs = References::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit_start = header.debug_info_offset().expect("a .debug_info unit").0;
        let what = || format!("unit at {unit_start:#x}");
        if header.version() >= 5 {
            bail!(
                "{}: DWARF 5 is not supported (rebuild with -gdwarf-4)",
                what()
            );
        }
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
        let mut base = None;
        let mut lists = Vec::new();
        while !entries.is_empty() {
            let Some(abbrev) = entries.read_abbreviation().with_context(what)? else {
                continue;
            };
            if !abbrev.attributes().iter().any(interesting) {
                entries
                    .skip_attributes(abbrev.attributes())
                    .with_context(what)?;
                base.get_or_insert(0);
                continue;
            }
            let mut low = None;
            let mut high = None;
            lists.clear();
            for spec in abbrev.attributes() {
                let at = unit_start + entries.next_offset().0;
                let attr = entries.read_attribute(*spec).with_context(what)?;
                let end = unit_start + entries.next_offset().0;
                match (attr.name(), attr.value()) {
                    (dw::DW_AT_low_pc, AttributeValue::Addr(a)) => low = Some((at, a)),
                    (dw::DW_AT_high_pc, AttributeValue::Addr(a)) => {
                        high = Some(HighPc::Address(at, a))
                    }
                    (_, AttributeValue::Addr(a)) => {
                        updated.addresses += patch_address(&mut info[at..end], a, map)?;
                    }
                    (
                        dw::DW_AT_high_pc,
                        AttributeValue::Udata(_)
                        | AttributeValue::Data1(_)
                        | AttributeValue::Data2(_)
                        | AttributeValue::Data4(_)
                        | AttributeValue::Data8(_),
                    ) => {
                        let len = attr.udata_value().expect("a constant");
                        high = Some(HighPc::Length(at, end, spec.form(), len));
                    }
                    (_, AttributeValue::RangeListsRef(offset)) => lists.push((false, offset.0)),
                    (_, AttributeValue::LocationListsRef(offset)) => lists.push((true, offset.0)),
                    (dw::DW_AT_stmt_list, AttributeValue::DebugLineRef(offset)) => {
                        refs.line_programs.push((at, end - at, offset.0 as u64))
                    }
                    (_, AttributeValue::DebugMacroRef(offset)) => refs.macros.push(offset.0 as u64),
                    (
                        _,
                        AttributeValue::DebugAddrIndex(_)
                        | AttributeValue::DebugRngListsIndex(_)
                        | AttributeValue::DebugLocListsIndex(_),
                    ) => bail!("{}: form {} is not supported", what(), spec.form()),
                    _ => {}
                }
            }
            // The unit's base address for its lists is the low_pc of its root DIE (or 0).
            let unit_base = *base.get_or_insert(low.map_or(0, |(_, a)| a));
            if let Some((at, a)) = low {
                updated.addresses +=
                    patch_address(&mut info[at..at + address_size as usize], a, map)?;
            }
            match high {
                Some(HighPc::Address(at, a)) => {
                    updated.addresses +=
                        patch_address(&mut info[at..at + address_size as usize], a, map)?;
                }
                Some(HighPc::Length(at, end, form, len)) => {
                    // The end moves with the code even when the start does not (linkers
                    // leave some DIEs at low_pc 0 with an end inside a function).
                    if let Some((_, low)) = low
                        && let Some(new) = map.map(low + len).checked_sub(map.map(low))
                        && new != len
                    {
                        write_constant(&mut info[at..end], form, new).context("DW_AT_high_pc")?;
                        updated.addresses += 1;
                    }
                }
                None => {}
            }
            for &(is_location, offset) in &lists {
                let set = if is_location {
                    &mut refs.locations
                } else {
                    &mut refs.ranges
                };
                let offset = offset as u64;
                if set
                    .insert(offset, unit_base)
                    .is_some_and(|b| b != unit_base)
                {
                    bail!("list {offset:#x} is used by units with different base addresses");
                }
            }
        }
    }
    Ok(refs)
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
    // Address registers of the input's state machine and of the one being written.
    let mut old_address = 0u64;
    let mut new_address = 0u64;
    // Moves the written state to where the input's state maps; returns the advance.
    let advance_to = |old: u64, new_address: &mut u64| -> Result<u64> {
        let target = map.map(old);
        let delta = target
            .checked_sub(*new_address)
            .ok_or_else(|| anyhow!("addresses decrease within a sequence at {old:#x}"))?;
        *new_address = target;
        Ok(delta)
    };
    while !r.is_empty() {
        let start = r.at;
        let opcode = r.u8()?;
        if opcode >= opcode_base {
            let adjusted = (opcode - opcode_base) as u64;
            let line_advance = line_base + (adjusted % line_range) as i64;
            old_address += adjusted / line_range * min_length;
            let delta = advance_to(old_address, &mut new_address)?;
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
                        let delta = advance_to(old_address, &mut new_address)?;
                        if delta != 0 {
                            push_advance_pc(out, delta, min_length)?;
                        }
                        out.extend_from_slice(&program[start..r.at]);
                        old_address = 0;
                        new_address = 0;
                    }
                    s if s == dw::DW_LNE_set_address.0 => {
                        let width = length - 1;
                        if !matches!(width, 4 | 8) {
                            bail!("DW_LNE_set_address with a {width}-byte address");
                        }
                        old_address = read_uint(program, body + 1, width)?;
                        new_address = map.map(old_address);
                        out.extend_from_slice(&program[start..body + 1]);
                        let at = out.len();
                        out.extend_from_slice(&program[body + 1..r.at]);
                        write_uint(&mut out[at..], new_address)?;
                    }
                    _ => out.extend_from_slice(&program[start..r.at]),
                }
            }
            o if o == dw::DW_LNS_copy.0 => {
                let delta = advance_to(old_address, &mut new_address)?;
                if delta != 0 {
                    push_advance_pc(out, delta, min_length)?;
                }
                out.push(opcode);
            }
            o if o == dw::DW_LNS_advance_pc.0 => {
                old_address += r.uleb()? * min_length;
                let delta = advance_to(old_address, &mut new_address)?;
                push_advance_pc(out, delta, min_length)?;
            }
            o if o == dw::DW_LNS_const_add_pc.0 => {
                old_address += const_add;
                let delta = advance_to(old_address, &mut new_address)?;
                if delta == const_add {
                    out.push(opcode);
                } else if delta != 0 {
                    push_advance_pc(out, delta, min_length)?;
                }
            }
            o if o == dw::DW_LNS_fixed_advance_pc.0 => {
                old_address += r.u16()? as u64;
                let delta = advance_to(old_address, &mut new_address)?;
                match u16::try_from(delta) {
                    Ok(d) => {
                        out.push(opcode);
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                    Err(_) => push_advance_pc(out, delta, min_length)?,
                }
            }
            o if o == dw::DW_LNS_advance_line.0 => {
                r.sleb()?;
                out.extend_from_slice(&program[start..r.at]);
            }
            _ => {
                // Every other standard opcode: its ULEB128 operands are copied as they are.
                let operands = *standard_lengths
                    .get(opcode as usize - 1)
                    .ok_or_else(|| anyhow!("opcode {opcode} has no operand count"))?;
                for _ in 0..operands {
                    r.uleb()?;
                }
                out.extend_from_slice(&program[start..r.at]);
            }
        }
    }
    Ok(())
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
