//! stack-first — move the stack below the data, as `wasm-ld --stack-first` would have.
//!
//! A module linked without `--stack-first` has `[data][stack, growing down][heap]`: an
//! overflow runs into the data. When the module kept its relocations (`-Wl,--emit-relocs`),
//! every place that holds a static memory address is known, so the layout can be changed
//! exactly: the stack becomes `[0, size)`, and everything at or above the lowest data address
//! moves up by `size` (rounded to 16) — data segments, every absolute memory-address
//! relocation in code, data and debug sections (`R_WASM_MEMORY_ADDR_LEB/SLEB/I32`), address
//! globals (`__heap_base`, exported data addresses), and the stack pointer starts at `size`.
//! Memory grows by the same number of pages, so the heap keeps its room. The `linking` and
//! `reloc.*` sections are dropped: they no longer describe the module.
//!
//! Why executions are unchanged: a C program sees memory only through addresses, and every
//! static address it can hold comes from a relocated immediate, a relocated data word or an
//! address global, all shifted by the same amount; pointers it computes at run time derive from
//! those or from the stack pointer and the heap. Relative relocations (`LOCREL`, TLS, PIC) are
//! differences and stay as they are. Relocated immediates are padded LEBs of fixed width, so
//! each is rewritten in place and every other byte, function and offset stays where it was.
//!
//! Refuses: a module without relocations ("relink with -Wl,--emit-relocs"), with stale ones
//! (re-encoded after linking, e.g. by wasm-opt: immediates are no longer padded), a relocated
//! value outside memory, passive data segments (their copy code has no relocations),
//! position-independent or 64-bit modules, a memory of custom (non-64 KiB) pages.

use super::{Pass, PassCx, PassReport};
use crate::facts::StackLayout;
use anyhow::{Result, bail};
use wasm_encoder::ConstExpr;
use wasmparser::{BinaryReader, RelocationType as R};

pub struct StackFirst;

impl Pass for StackFirst {
    fn name(&self) -> &'static str {
        "stack-first"
    }

    fn description(&self) -> &'static str {
        "move the stack below the data using the module's relocations (-Wl,--emit-relocs)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        relocate(cx, self.name())
    }
}

/// Why `relocate` cannot run on this module, if it cannot.
pub fn cannot_relocate(cx: &PassCx<'_, '_, '_>) -> Option<String> {
    let m = cx.module;
    let facts = cx.facts();
    match &facts.relocations {
        None => {
            return Some(
                "the module has no relocations: relink with -Wl,--emit-relocs (wasm-ld 15 or \
                 newer) and run wasmfix before any other post-link tool"
                    .into(),
            );
        }
        Some(r) => {
            if let Err(why) = &r.matches_code {
                return Some(format!(
                    "its relocations do not match the code ({why}); run wasmfix on the linker's \
                     output, before wasm-opt"
                ));
            }
        }
    }
    if let Some(why) = misdirected_relocations(m) {
        return Some(format!("{why}; relocations are stale"));
    }
    if !facts.pic_markers.is_empty() {
        return Some(format!(
            "position-independent module ({})",
            facts.pic_markers.join(", ")
        ));
    }
    if m.memories
        .first()
        .is_some_and(|mem| mem.memory64 || mem.shared)
    {
        return Some("64-bit or shared memory".into());
    }
    if m.data
        .iter()
        .any(|d| matches!(d.kind, wasmparser::DataKind::Passive))
    {
        return Some("passive data segments: the code that copies them has no relocations".into());
    }
    None
}

/// A `reloc.X` section names its target by position among all sections; after a tool moved,
/// added or removed a section, that position no longer holds `X` (the code for `reloc.CODE`,
/// the data for `reloc.DATA`, the custom section `X` otherwise).
fn misdirected_relocations(m: &crate::module::Module<'_>) -> Option<String> {
    for s in &m.sections {
        let Some(kind) = s.custom_name.and_then(|n| n.strip_prefix("reloc.")) else {
            continue;
        };
        let Ok(reader) = wasmparser::RelocSectionReader::new(m.section_reader(s)) else {
            return Some(format!("reloc.{kind} is malformed"));
        };
        let index = reader.section_index();
        let target = m.sections.get(index as usize);
        let right = target.is_some_and(|t| match kind {
            "CODE" => t.id == 10,
            "DATA" => t.id == 11,
            name => t.custom_name == Some(name),
        });
        if !right {
            return Some(format!(
                "reloc.{kind} targets section {index}, which is not the {kind} section"
            ));
        }
    }
    None
}

pub fn relocate(cx: &mut PassCx<'_, '_, '_>, pass: &'static str) -> Result<PassReport> {
    let m = cx.module;
    let facts = cx.facts();
    if let Some(why) = cannot_relocate(cx) {
        bail!("cannot move the stack before the data: {why}");
    }
    let region = match &facts.stack {
        Ok(r) => r,
        Err(why) => bail!("cannot establish the stack region: {why}"),
    };
    let sp = facts
        .stack_pointer
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .value;
    if region.layout == StackLayout::StackFirst {
        return Ok(PassReport {
            pass,
            summary: format!(
                "the stack already comes first ([{}, {}))",
                region.low, region.high
            ),
            warnings: Vec::new(),
            details: serde_json::json!({ "moved": false }),
        });
    }
    let data_low = facts.data.as_ref().map_or(region.low, |d| d.low);
    let size = cx
        .options
        .stack_size
        .unwrap_or(region.high - region.low)
        .div_ceil(16)
        * 16;
    let shift = size;
    let memory = m.memories[0];
    if let Some(log2) = memory.page_size_log2.filter(|&l| l != 16) {
        bail!(
            "memory 0 has {}-byte pages (custom-page-sizes); stack-first grows memories of 64 KiB pages only",
            1u64 << log2
        );
    }
    let memory_bytes = memory.initial * 65536;
    let pages = shift.div_ceil(65536);
    if memory.maximum.is_some_and(|max| max + pages > 65536) {
        bail!("memory cannot grow by {pages} pages for the stack: its maximum is 4 GiB");
    }
    let moved = |v: u64| if v >= data_low { v + shift } else { v };

    // Every absolute memory address in code, data and custom sections, rewritten in place.
    let mut relocated = 0usize;
    for s in m
        .sections
        .iter()
        .filter(|s| s.custom_name.is_some_and(|n| n.starts_with("reloc.")))
    {
        let reader = wasmparser::RelocSectionReader::new(m.section_reader(s))?;
        let Some(target) = m.sections.get(reader.section_index() as usize) else {
            bail!(
                "{} targets section {}, which does not exist",
                s.custom_name.unwrap_or_default(),
                reader.section_index()
            );
        };
        for entry in reader.entries() {
            let entry = entry?;
            let width = match entry.ty {
                R::MemoryAddrLeb | R::MemoryAddrSleb | R::MemoryAddrI32 => {
                    entry.relocation_range()?.len()
                }
                R::MemoryAddrLeb64 | R::MemoryAddrSleb64 | R::MemoryAddrI64 => {
                    bail!("64-bit memory relocations are not supported")
                }
                _ => continue,
            };
            let at = target.contents.start + entry.offset as usize;
            let Some(bytes) = m.bytes.get(at..at + width) else {
                bail!("a relocation points past the end of its section: relocations are stale");
            };
            let value = match entry.ty {
                R::MemoryAddrI32 => u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as u64,
                R::MemoryAddrLeb => BinaryReader::new(bytes, 0).read_var_u32()? as u64,
                _ => BinaryReader::new(bytes, 0).read_var_i32()? as u32 as u64,
            };
            if value > memory_bytes {
                // Debug sections hold tombstones (0xffffffff) for code the linker dropped.
                if target.custom_name.is_some() {
                    continue;
                }
                bail!(
                    "a relocated address ({value:#x} at offset {at:#x}) lies outside memory: \
                     relocations are stale"
                );
            }
            let new = moved(value);
            if new == value {
                continue;
            }
            let encoded = match entry.ty {
                R::MemoryAddrI32 => (new as u32).to_le_bytes().to_vec(),
                _ => padded_leb(new as u32, width),
            };
            cx.edits.patch(at, encoded);
            relocated += 1;
        }
    }

    for (i, d) in m.data.iter().enumerate() {
        if let wasmparser::DataKind::Active { offset_expr, .. } = &d.kind
            && let Some(v) = crate::module::const_value(offset_expr)
            && moved(v as u64) != v as u64
        {
            cx.edits
                .set_data_offset(i as u32, ConstExpr::i32_const(moved(v as u64) as i32));
        }
    }
    let mut globals_moved = 0;
    for (i, g) in m.defined_globals.iter().enumerate() {
        let index = m.imported_globals + i as u32;
        let Some(v) = crate::module::const_value(&g.init) else {
            continue;
        };
        if index == sp {
            cx.edits
                .set_global_init(index, ConstExpr::i32_const(size as i32));
        } else if !g.ty.mutable
            && g.ty.content_type == wasmparser::ValType::I32
            && moved(v as u64) != v as u64
        {
            cx.edits
                .set_global_init(index, ConstExpr::i32_const(moved(v as u64) as i32));
            globals_moved += 1;
        }
    }
    cx.edits.set_memory_type(
        0,
        wasm_encoder::MemoryType {
            minimum: memory.initial + pages,
            maximum: memory.maximum.map(|max| max + pages),
            memory64: false,
            shared: false,
            page_size_log2: memory.page_size_log2,
        },
    );
    cx.edits
        .record_applied("stack", serde_json::json!({ "relocated": [0, size] }));
    cx.edits.stack_relocated = Some(shift);
    for (index, s) in m.sections.iter().enumerate() {
        if s.custom_name
            .is_some_and(|n| n == "linking" || n.starts_with("reloc."))
        {
            cx.edits.drop_custom(index);
        }
    }
    Ok(PassReport {
        pass,
        summary: format!(
            "moved the stack to [0, {size}) and the data up by {shift} bytes ({relocated} relocated addresses, {globals_moved} address globals)"
        ),
        warnings: Vec::new(),
        details: serde_json::json!({
            "moved": true,
            "stack": [0, size],
            "old_stack": [region.low, region.high],
            "shift": shift,
            "relocated_addresses": relocated,
            "address_globals": globals_moved,
            "memory_pages_added": pages,
        }),
    })
}

/// `value` as an unsigned LEB128 padded to `width` bytes, as linkers write relocatable
/// immediates (a signed LEB of a value below 2^31 - 2^k has the same padded bytes when its
/// top group's sign bit is clear, which holds for addresses below 2 GiB).
fn padded_leb(value: u32, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width);
    let mut v = value as u64;
    for i in 0..width {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if i + 1 < width {
            byte |= 0x80;
        }
        out.push(byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::padded_leb;

    #[test]
    fn padded_leb_reads_back() {
        for v in [0u32, 1, 127, 128, 83680, 1 << 30] {
            let bytes = padded_leb(v, 5);
            assert_eq!(bytes.len(), 5);
            let mut r = wasmparser::BinaryReader::new(&bytes, 0);
            assert_eq!(r.read_var_u32().unwrap(), v);
            let mut r = wasmparser::BinaryReader::new(&bytes, 0);
            assert_eq!(r.read_var_i32().unwrap() as u32, v, "as SLEB");
        }
    }
}
