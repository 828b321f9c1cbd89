//! Debugging survives the rewrite: after every rewriting pipeline, each original instruction
//! keeps its source location in the DWARF line table, subprogram and range DIEs follow their
//! code, `llvm-dwarfdump --verify` finds nothing new, and traps in wasmtime show the same
//! source frames.
//!
//! The expected location of an original instruction in the output is found without wasmfix's
//! own code map: both modules' instructions are aligned (rewriters only insert instructions or
//! re-target a `call_indirect`), so each original instruction has a matching output one.

mod common;

use std::collections::HashMap;
use wasmparser::Operator;

/// The `-g` fixtures (DWARF 4; `.g5`: the program's DWARF 5 beside wasi-libc's DWARF 4;
/// `two-units`: two DWARF 5 units, so the second list contributions move when the first
/// ones change length), and one whose only DWARF is wasi-libc's.
const DEBUG_FIXTURES: &[&str] = &[
    "stack.O2.g5.wasm",
    "fpcast.O2.g5.wasm",
    "two-units.O2.g5.wasm",
    "stack.O0.g.wasm",
    "stack.O2.g.wasm",
    "fpcast.O0.g.wasm",
    "fpcast.O2.g.wasm",
    "stack.O0.g.relocs.wasm",
    "stack.O2.g.relocs.wasm",
    "fpcast.O2.wasm",
];

/// Every pipeline that rewrites bodies of `fixture` (`stack-first` needs relocations).
fn pipelines(fixture: &str) -> Vec<&'static str> {
    // Under --harden, binaryen's DWARF (one range per unit) makes the run leave heap-canary
    // out: see `a_unit_range_over_a_moved_body_leaves_heap_canary_out`.
    let mut p = vec![
        "fpcast,stack,producers",
        "fpcast",
        "stack-guard",
        "--harden",
    ];
    if fixture.contains("relocs") {
        p.push("stack-first");
    }
    p
}

/// One defined function's instructions: (operator, code-relative offset), and its body range.
struct Body<'a> {
    range: std::ops::Range<u64>,
    ops: Vec<(Operator<'a>, u64)>,
    /// Code-relative offset just past each instruction.
    ends: Vec<u64>,
}

struct Code<'a> {
    /// File offset of the Code section's contents.
    start: u64,
    imported_funcs: u32,
    bodies: Vec<Body<'a>>,
}

fn code(wasm: &[u8]) -> Code<'_> {
    let mut c = Code {
        start: 0,
        imported_funcs: 0,
        bodies: Vec::new(),
    };
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            wasmparser::Payload::ImportSection(r) => {
                for i in r.into_imports() {
                    if let wasmparser::TypeRef::Func(_) = i.unwrap().ty {
                        c.imported_funcs += 1;
                    }
                }
            }
            wasmparser::Payload::CodeSectionStart {
                unchecked_range, ..
            } => c.start = unchecked_range.start,
            wasmparser::Payload::CodeSectionEntry(body) => {
                let rel = |o: u64| o - c.start;
                let mut reader = body.get_operators_reader().unwrap();
                let mut ops = Vec::new();
                while !reader.eof() {
                    let (op, at) = reader.read_with_offset().unwrap();
                    ops.push((op, rel(at)));
                }
                let range = rel(body.range().start)..rel(body.range().end);
                let mut ends: Vec<u64> = ops.iter().skip(1).map(|(_, o)| *o).collect();
                ends.push(range.end);
                c.bodies.push(Body { range, ops, ends });
            }
            _ => {}
        }
    }
    c
}

/// Whether output instruction `new` can be original instruction `old`: the same operator
/// (immediates may differ: stack-first relocates constants), a `call_indirect` re-targeted to
/// another table, or one replaced by a call to a function wasmfix added.
fn same_instruction(old: &Operator<'_>, new: &Operator<'_>, original_funcs: u32) -> bool {
    match (old, new) {
        (Operator::Call { function_index: a }, Operator::Call { function_index: b }) => a == b,
        (Operator::CallIndirect { .. }, Operator::Call { function_index })
        | (Operator::ReturnCallIndirect { .. }, Operator::ReturnCall { function_index }) => {
            *function_index >= original_funcs
        }
        (Operator::GlobalSet { global_index: a }, Operator::GlobalSet { global_index: b }) => {
            a == b
        }
        _ => std::mem::discriminant(old) == std::mem::discriminant(new),
    }
}

/// An order-preserving embedding of `old`'s instructions in `new`'s: for each original
/// instruction, the index of an output instruction that can be it (`same_instruction`, and
/// `also(i, j)`), leftmost (`forward`) or rightmost. `None` if there is none.
fn embed(
    old: &Body<'_>,
    new: &Body<'_>,
    original_funcs: u32,
    forward: bool,
    mut also: impl FnMut(usize, usize) -> bool,
) -> Option<Vec<usize>> {
    let fits = |i: usize, j: usize, also: &mut dyn FnMut(usize, usize) -> bool| {
        same_instruction(&old.ops[i].0, &new.ops[j].0, original_funcs) && also(i, j)
    };
    let mut matched = vec![0; old.ops.len()];
    if forward {
        let mut j = 0;
        for (i, m) in matched.iter_mut().enumerate() {
            while j < new.ops.len() && !fits(i, j, &mut also) {
                j += 1;
            }
            *m = j;
            j += 1;
        }
        (j <= new.ops.len()).then_some(matched)
    } else {
        let mut j = new.ops.len();
        for i in (0..old.ops.len()).rev() {
            loop {
                j = j.checked_sub(1)?;
                if fits(i, j, &mut also) {
                    break;
                }
            }
            matched[i] = j;
        }
        Some(matched)
    }
}

/// How an original body appears in the output, found without wasmfix's map.
enum Counterpart {
    /// Its instructions are in output body `body` (its own slot, or an added function it was
    /// moved to byte for byte): for each, the first and the last output instruction it can be
    /// in an order-preserving alignment (they differ where a pass inserted an instruction
    /// like the original one next to it; the true match lies between).
    Aligned {
        body: usize,
        left: Vec<usize>,
        right: Vec<usize>,
    },
    /// Replaced in its slot by a body that holds none of its instructions (heap-canary's
    /// allocator wrappers).
    Replaced,
}

/// Where original address `a` may lie in the output (see [`Oracle::expected`]).
struct Oracle<'a> {
    old: &'a Code<'a>,
    new: &'a Code<'a>,
    counterparts: Vec<Counterpart>,
}

impl<'a> Oracle<'a> {
    fn new(old: &'a Code<'a>, new: &'a Code<'a>) -> Oracle<'a> {
        let original_funcs = old.imported_funcs + old.bodies.len() as u32;
        let added = &new.bodies[old.bodies.len().min(new.bodies.len())..];
        // A moved body keeps its bytes, except the immediates stack-first relocated.
        let same_ops = |a: &Body<'_>, b: &Body<'_>| {
            a.range.end - a.range.start == b.range.end - b.range.start
                && a.ops.len() == b.ops.len()
                && a.ops
                    .iter()
                    .zip(&b.ops)
                    .all(|((x, _), (y, _))| same_instruction(x, y, original_funcs))
        };
        let counterparts = old
            .bodies
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let slot = &new.bodies[k];
                let moved_to = added.iter().position(|b| same_ops(o, b));
                let body = match moved_to {
                    Some(j) if !same_ops(o, slot) => old.bodies.len() + j,
                    _ => k,
                };
                let n = &new.bodies[body];
                let left = embed(o, n, original_funcs, true, |_, _| true);
                let right = embed(o, n, original_funcs, false, |_, _| true);
                match (left, right) {
                    (Some(left), Some(right)) => Counterpart::Aligned { body, left, right },
                    _ => Counterpart::Replaced,
                }
            })
            .collect();
        Oracle {
            old,
            new,
            counterparts,
        }
    }

    fn body(&self, a: u64) -> Option<usize> {
        let k = self.old.bodies.partition_point(|b| b.range.start <= a);
        (k > 0 && a <= self.old.bodies[k - 1].range.end).then(|| k - 1)
    }

    /// Where `a` may be mapped: exactly the new body start or end for a body start or end;
    /// for an instruction, between the end of the previous original instruction's leftmost
    /// match and this instruction's rightmost match; for a replaced body, its replacement's
    /// start (its end for the end). `None` for addresses inside an instruction or outside
    /// every body.
    fn expected(&self, a: u64) -> Option<std::ops::RangeInclusive<u64>> {
        let k = self.body(a)?;
        let old = &self.old.bodies[k];
        let (body, left, right) = match &self.counterparts[k] {
            Counterpart::Aligned { body, left, right } => (*body, left, right),
            Counterpart::Replaced => {
                let new = &self.new.bodies[k].range;
                let at = if a == old.range.end {
                    new.end
                } else {
                    new.start
                };
                return Some(at..=at);
            }
        };
        let new = &self.new.bodies[body];
        if a == old.range.start {
            return Some(new.range.start..=new.range.start);
        }
        if a == old.range.end {
            return Some(new.range.end..=new.range.end);
        }
        if a < old.ops[0].1 {
            return Some(new.range.start..=new.ops[0].1);
        }
        let i = old.ops.binary_search_by_key(&a, |(_, o)| *o).ok()?;
        let hi = new.ops[right[i]].1;
        let lo = match i {
            0 => new.ops[0].1,
            _ => new.ends[left[i - 1]],
        };
        Some(lo..=hi)
    }

    /// The output body holding original body `k`'s instructions; `None` if it was replaced.
    fn body_of(&self, k: usize) -> Option<usize> {
        match &self.counterparts[k] {
            Counterpart::Aligned { body, .. } => Some(*body),
            Counterpart::Replaced => None,
        }
    }

    /// An embedding of original body `k`'s instructions in [`Oracle::body_of`]`(k)` in which
    /// each original instruction `i` lands on an output instruction `j` with `same(i, j)`
    /// (say, the same source location), leftmost; `None` if there is none.
    fn embed_with(&self, k: usize, same: impl FnMut(usize, usize) -> bool) -> Option<Vec<usize>> {
        let original_funcs = self.old.imported_funcs + self.old.bodies.len() as u32;
        let new = &self.new.bodies[self.body_of(k)?];
        embed(&self.old.bodies[k], new, original_funcs, true, same)
    }

    /// The rightmost alignment of original body `k` (see [`Counterpart::Aligned`]).
    fn right(&self, k: usize) -> &[usize] {
        match &self.counterparts[k] {
            Counterpart::Aligned { right, .. } => right,
            Counterpart::Replaced => &[],
        }
    }
}

/// One row of a line table: (address, file, line).
type Row = (u64, String, u64);

/// A line table: sequences (address range, rows), as gimli reads them.
struct LineTable {
    sequences: Vec<(std::ops::Range<u64>, Vec<Row>)>,
}

type Dwarf<'a> = gimli::Dwarf<gimli::EndianSlice<'a, gimli::LittleEndian>>;

fn debug_sections(wasm: &[u8]) -> HashMap<String, &[u8]> {
    let mut sections = HashMap::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::CustomSection(c) = payload.unwrap()
            && c.name().starts_with(".debug_")
        {
            sections.insert(c.name().to_string(), c.data());
        }
    }
    sections
}

fn load<'a>(sections: &HashMap<String, &'a [u8]>) -> Dwarf<'a> {
    gimli::Dwarf::load(|id| {
        let data = sections.get(id.name()).copied().unwrap_or(&[]);
        Ok::<_, gimli::Error>(gimli::EndianSlice::new(data, gimli::LittleEndian))
    })
    .unwrap()
}

fn line_table(wasm: &[u8]) -> LineTable {
    let sections = debug_sections(wasm);
    let dwarf = load(&sections);
    let mut table = LineTable {
        sequences: Vec::new(),
    };
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let mut rows = program.rows();
        let mut current: Vec<Row> = Vec::new();
        while let Some((header, row)) = rows.next_row().unwrap() {
            if row.end_sequence() {
                if let Some(first) = current.first() {
                    table
                        .sequences
                        .push((first.0..row.address(), std::mem::take(&mut current)));
                }
                continue;
            }
            let file = row
                .file(header)
                .map(|f| {
                    let name = dwarf.attr_string(&unit, f.path_name()).unwrap();
                    name.to_string_lossy().into_owned()
                })
                .unwrap_or_default();
            let line = row.line().map_or(0, |l| l.get());
            current.push((row.address(), file, line));
        }
    }
    table.sequences.sort_by_key(|(r, _)| (r.start, r.end));
    table
}

impl LineTable {
    /// The (file, line) of `address`: the last row at or before it in the sequence holding it.
    fn lookup(&self, address: u64) -> Option<(&str, u64)> {
        let (_, rows) = self
            .sequences
            .iter()
            .find(|(range, _)| range.contains(&address))?;
        let i = rows.partition_point(|(a, _, _)| *a <= address);
        let (_, file, line) = rows.get(i.checked_sub(1)?)?;
        Some((file.as_str(), *line))
    }

    fn rows(&self) -> usize {
        self.sequences.iter().map(|(_, r)| r.len()).sum()
    }
}

/// The input with `linking` and `reloc.*` removed: llvm-dwarfdump 19 crashes on the relocation
/// sections of linked modules, and they say nothing about DWARF.
fn without_relocations(wasm: &[u8]) -> Vec<u8> {
    let mut out = wasm[..8].to_vec();
    for s in common::sections(wasm) {
        match s.custom_name.as_deref() {
            Some(n) if n == "linking" || n.starts_with("reloc.") => {}
            _ => out.extend_from_slice(&s.bytes),
        }
    }
    out
}

/// `input` through `passes`: a `--passes` list, or `--harden` (the default pipeline and the
/// hardening passes, as the CLI runs them).
fn run(input: &[u8], passes: &str, code_map: bool) -> wasmfix::pipeline::Outcome {
    let harden = passes == "--harden";
    let list = if harden {
        (wasmfix::passes::harden_pipeline().into_iter())
            .map(|n| wasmfix::passes::find(n).unwrap())
            .collect()
    } else {
        common::passes(passes)
    };
    let options = wasmfix::passes::PassOptions {
        code_map,
        harden,
        ..Default::default()
    };
    let outcome =
        wasmfix::pipeline::run(input, &list, &options).unwrap_or_else(|f| panic!("{passes}: {f}"));
    common::validate(&outcome.bytes);
    outcome
}

fn rewrite(input: &[u8], passes: &str) -> Vec<u8> {
    run(input, passes, false).bytes
}

fn rewrite_with_map(input: &[u8], passes: &str) -> wasmfix::pipeline::Outcome {
    run(input, passes, true)
}

#[test]
fn every_original_instruction_keeps_its_source_line() {
    let (mut moved_bodies, mut replaced_bodies) = (0, 0);
    for fixture in DEBUG_FIXTURES {
        let input = common::fixture(fixture);
        let old_code = code(&input);
        let old_lines = line_table(&input);
        assert!(old_lines.rows() > 100, "{fixture}: too few line rows");
        for passes in pipelines(fixture) {
            let output = rewrite(&input, passes);
            let new_code = code(&output);
            let new_lines = line_table(&output);
            let oracle = Oracle::new(&old_code, &new_code);
            let (mut compared, mut moved) = (0, 0);
            for (k, body) in old_code.bodies.iter().enumerate() {
                let func = old_code.imported_funcs + k as u32;
                let Some(n) = oracle.body_of(k) else {
                    // Replaced, its code gone: the replacement has a line of the original.
                    let lines: Vec<_> = (body.ops.iter())
                        .filter_map(|(_, a)| old_lines.lookup(*a))
                        .collect();
                    let got = new_lines.lookup(new_code.bodies[k].ops[0].1);
                    assert!(
                        lines.is_empty() || got.is_some_and(|l| lines.contains(&l)),
                        "{fixture} --passes {passes}: replaced function {func} is at {got:?}"
                    );
                    replaced_bodies += 1;
                    continue;
                };
                moved_bodies += usize::from(n != k);
                let new_body = &new_code.bodies[n];
                // The original instructions, in order, each on an output instruction of its
                // kind that has its file:line (where it had one). Where a pass inserted an
                // instruction like the original next to it, either may be the original.
                let same_line = |i: usize, j: usize| {
                    let old = old_lines.lookup(body.ops[i].1);
                    old.is_none() || new_lines.lookup(new_body.ops[j].1) == old
                };
                let Some(matched) = oracle.embed_with(k, same_line) else {
                    let lost = (0..body.ops.len())
                        .find(|&i| {
                            oracle
                                .embed_with(k, |i2, j| i2 > i || same_line(i2, j))
                                .is_none()
                        })
                        .unwrap_or(0);
                    panic!(
                        "{fixture} --passes {passes}: function {func}: the instruction at {:#x} \
                         ({:?}) has no output instruction with its line {:?}",
                        body.ops[lost].1,
                        body.ops[lost].0,
                        old_lines.lookup(body.ops[lost].1)
                    );
                };
                let delta = new_body.range.start as i64 - body.range.start as i64;
                for (i, (_, at)) in body.ops.iter().enumerate() {
                    if old_lines.lookup(*at).is_none() {
                        continue;
                    }
                    compared += 1;
                    if new_body.ops[matched[i]].1 as i64 - *at as i64 != delta {
                        moved += 1;
                    }
                }
            }
            // Instructions inside re-encoded bodies moved relative to their body: the check
            // covered more than whole-body shifts (stack-first re-encodes no body).
            assert!(
                compared > 1000 && (moved > 10 || passes == "stack-first"),
                "{fixture} --passes {passes}: compared {compared}, moved inside bodies {moved}"
            );
        }
    }
    // --harden's heap-canary moved malloc and free to new functions and replaced calloc,
    // realloc, … in place: both cases were checked.
    assert!(
        moved_bodies > 0 && replaced_bodies > 0,
        "{moved_bodies} moved bodies, {replaced_bodies} replaced ones"
    );
}

#[test]
fn the_code_map_agrees_with_the_alignment() {
    for fixture in DEBUG_FIXTURES {
        let input = common::fixture(fixture);
        let old_code = code(&input);
        for passes in pipelines(fixture) {
            let outcome = rewrite_with_map(&input, passes);
            let new_code = code(&outcome.bytes);
            let Some(map) = outcome.code_map else {
                // The Code section was copied: nothing moved.
                assert_eq!(passes, "stack-first");
                assert_eq!(old_code.start, new_code.start);
                continue;
            };
            let oracle = Oracle::new(&old_code, &new_code);
            assert_eq!(map.old_code_start, old_code.start);
            assert_eq!(map.new_code_start, new_code.start);
            for body in &old_code.bodies {
                let addresses = body
                    .ops
                    .iter()
                    .map(|(_, o)| *o)
                    .chain([body.range.start, body.range.end]);
                for a in addresses {
                    let expected = oracle.expected(a).unwrap();
                    assert!(
                        expected.contains(&map.map(a)),
                        "{fixture} --passes {passes}: {a:#x} maps to {:#x}, expected {expected:?}",
                        map.map(a)
                    );
                }
            }
        }
    }
}

/// Every DIE's address ranges (low/high pc or DW_AT_ranges) and the entries of its location
/// lists (range and expression bytes), in DIE order.
#[allow(clippy::type_complexity)]
fn die_ranges(wasm: &[u8]) -> Vec<(u64, Vec<gimli::Range>, Vec<(gimli::Range, Vec<u8>)>)> {
    let sections = debug_sections(wasm);
    let dwarf = load(&sections);
    let mut out = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let mut entries = unit.entries();
        while let Some(entry) = entries.next_dfs().unwrap() {
            let mut ranges = Vec::new();
            let mut iter = dwarf.die_ranges(&unit, entry).unwrap();
            while let Some(r) = iter.next().unwrap() {
                ranges.push(r);
            }
            let mut locations = Vec::new();
            for attr in entry.attrs() {
                let Some(mut list) = dwarf.attr_locations(&unit, attr.value()).unwrap() else {
                    continue;
                };
                while let Some(e) = list.next().unwrap() {
                    locations.push((e.range, e.data.0.slice().to_vec()));
                }
            }
            if !ranges.is_empty() || !locations.is_empty() {
                // Absolute: unit offsets repeat from unit to unit.
                let die = entry.offset().to_debug_info_offset(&unit.header).unwrap();
                out.push((die.0 as u64, ranges, locations));
            }
        }
    }
    out
}

#[test]
fn subprograms_and_ranges_follow_their_code() {
    for fixture in DEBUG_FIXTURES {
        let input = common::fixture(fixture);
        let old_code = code(&input);
        let old_ranges = die_ranges(&input);
        for passes in pipelines(fixture) {
            let output = rewrite(&input, passes);
            let new_code = code(&output);
            let oracle = Oracle::new(&old_code, &new_code);
            let new_ranges: HashMap<u64, _> = die_ranges(&output)
                .into_iter()
                .map(|(die, r, l)| (die, (r, l)))
                .collect();
            // A range inside a body replaced in place collapses to the replacement's start:
            // empty, so gimli may leave it out.
            let collapsed =
                |r: &gimli::Range| match (oracle.expected(r.begin), oracle.expected(r.end)) {
                    (Some(a), Some(b)) => a.start() == a.end() && a == b,
                    _ => false,
                };
            let (mut checked, mut locations) = (0, 0);
            for (die, old, old_loc) in &old_ranges {
                let (new, new_loc) = match new_ranges.get(die) {
                    Some((r, l)) => (r.clone(), l.clone()),
                    None => (Vec::new(), Vec::new()),
                };
                let (old, old_loc): (Vec<_>, Vec<_>) =
                    if (old.len(), old_loc.len()) == (new.len(), new_loc.len()) {
                        (old.clone(), old_loc.clone())
                    } else {
                        (
                            old.iter().filter(|r| !collapsed(r)).cloned().collect(),
                            old_loc
                                .iter()
                                .filter(|(r, _)| !collapsed(r))
                                .cloned()
                                .collect(),
                        )
                    };
                assert_eq!(
                    old.len(),
                    new.len(),
                    "{fixture} --passes {passes}: DIE {die:#x}"
                );
                assert_eq!(
                    old_loc.len(),
                    new_loc.len(),
                    "{fixture} --passes {passes}: DIE {die:#x}"
                );
                // Location list entries keep their expressions; their ranges are checked with
                // the DIE ranges.
                for ((_, a), (_, b)) in old_loc.iter().zip(&new_loc) {
                    assert_eq!(
                        a, b,
                        "{fixture}: DIE {die:#x}: a location expression changed"
                    );
                    locations += 1;
                }
                let old = old.iter().chain(old_loc.iter().map(|(r, _)| r));
                let new: Vec<_> = new.iter().chain(new_loc.iter().map(|(r, _)| r)).collect();
                for (o, n) in old.zip(new) {
                    for (a, b) in [(o.begin, n.begin), (o.end, n.end)] {
                        match oracle.expected(a) {
                            Some(expected) => {
                                assert!(
                                    expected.contains(&b),
                                    "{fixture} --passes {passes}: DIE {die:#x} range {o:?} became \
                                     {n:?}: {a:#x} should be in {expected:?}"
                                );
                                checked += 1;
                            }
                            // Tombstones of dropped functions: unchanged.
                            None if a >= 0xffff_fff0 => assert_eq!(a, b),
                            None => {}
                        }
                    }
                }
            }
            assert!(
                checked > 100 && locations > 50,
                "{fixture} --passes {passes}: {checked} addresses, {locations} location entries"
            );
        }
    }
}

/// `llvm-dwarfdump --verify`'s error lines with numbers blanked, sorted; `None` when the tool
/// is not installed.
fn verify_errors(wasm: &[u8]) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, wasm).unwrap();
    let out = std::process::Command::new("llvm-dwarfdump-19")
        .arg("--verify")
        .arg(&path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = |s: &str| {
        s.split_whitespace()
            .map(|w| if w.contains("0x") { "X" } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut errors: Vec<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .map(hex)
        .collect();
    errors.sort();
    Some(errors)
}

#[test]
fn dwarfdump_verify_finds_no_new_errors() {
    let mut fixtures: Vec<&str> = DEBUG_FIXTURES.to_vec();
    fixtures.extend(["stack.O2.wasm", "fpcast.O0.wasm", "stack.O0.wasmopt.wasm"]);
    for fixture in fixtures {
        let input = common::fixture(fixture);
        let Some(before) = verify_errors(&without_relocations(&input)) else {
            // CI installs it and sets WASMFIX_REQUIRE_TOOLS: there a missing tool fails.
            assert!(
                std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
                "llvm-dwarfdump-19 is not installed (WASMFIX_REQUIRE_TOOLS is set)"
            );
            eprintln!("llvm-dwarfdump-19 is not installed: --verify not checked");
            return;
        };
        for passes in pipelines(fixture) {
            let output = rewrite(&input, passes);
            let after = verify_errors(&without_relocations(&output)).unwrap();
            assert_eq!(
                before, after,
                "{fixture} --passes {passes}: llvm-dwarfdump --verify errors changed"
            );
        }
    }
}

/// Binaryen writes one address range per unit: with malloc moved to the end of the code it
/// would come out inverted or miss malloc. `--passes heap-canary` is refused rather than written
/// with wrong ranges; `--harden` leaves heap-canary out with a warning saying why, applies the
/// rest, and the program runs as before (its DWARF verifies as before: see
/// `dwarfdump_verify_finds_no_new_errors`).
#[test]
fn a_unit_range_over_a_moved_body_leaves_heap_canary_out() {
    for fixture in [
        "stack.O0.wasmopt.wasm",
        "stack.O2.wasmopt.wasm",
        "fpcast.O2.wasmopt.wasm",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.wasm");
        let bytes = common::fixture(fixture);
        assert!(wasmfix::dwarf::present(
            &wasmfix::module::Module::parse(&bytes).unwrap()
        ));
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.path().join("out.wasm");
        let wasmfix_with = |args: &[&str]| {
            common::wasmfix()
                .arg(&input)
                .args(args)
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap()
        };

        let run = wasmfix_with(&["--passes", "heap-canary"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{fixture}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{fixture}: {stderr}");
        assert!(
            stderr.contains("spans a function body that was moved")
                && stderr.contains("llvm-strip"),
            "{fixture}: {stderr}"
        );
        assert!(!out.exists(), "{fixture}");

        let run = wasmfix_with(&["--harden", "--report", "-"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{fixture}: {stderr}");
        assert!(
            stderr.lines().any(|l| l.contains(
                "heap-canary: warning: heap blocks are not checked: the DWARF debug info has an \
                 address range over malloc's or free's body"
            )),
            "{fixture}: {stderr}"
        );
        let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        let passes: Vec<&str> = report["passes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pass"].as_str().unwrap())
            .collect();
        assert!(
            passes.contains(&"heap-canary") && passes.contains(&"stack-canary"),
            "{fixture}: {passes:?}"
        );
        let output = std::fs::read(&out).unwrap();
        assert_ne!(output, bytes, "{fixture}: --harden changed nothing");
        if fixture.starts_with("stack") {
            for args in [&["calls", "50"][..], &["legal", "100"]] {
                assert_eq!(
                    common::run_wasi(&output, args),
                    common::run_wasi(&bytes, args),
                    "{fixture} {args:?}"
                );
            }
        }
    }
}

#[test]
fn modules_whose_code_does_not_move_keep_their_dwarf_bytes() {
    let input = common::fixture("stack.O2.g.wasm");
    let output = common::rewrite(&input, "producers");
    let debug = |w: &[u8]| -> Vec<(String, Vec<u8>)> {
        common::custom_sections(w)
            .into_iter()
            .filter(|(n, _)| n.starts_with(".debug_"))
            .collect()
    };
    assert_eq!(debug(&input), debug(&output));
}

#[test]
fn no_dwarf_update_copies_dwarf_as_it_was() {
    let input = common::fixture("stack.O2.g.wasm");
    let options = wasmfix::passes::PassOptions {
        no_dwarf_update: true,
        ..Default::default()
    };
    let stale = wasmfix::pipeline::run(&input, &common::passes("stack-guard"), &options).unwrap();
    let updated = common::rewrite(&input, "stack-guard");
    let line = |w: &[u8]| {
        common::custom_sections(w)
            .into_iter()
            .find(|(n, _)| n == ".debug_line")
            .unwrap()
            .1
    };
    assert_eq!(line(&stale.bytes), line(&input));
    assert_ne!(line(&updated), line(&input));
    assert_eq!(stale.debug_info.dwarf, "stale");
    assert!(stale.debug_info.update.is_none());
}

/// How many source locations (file and line, inlined ones included) of `frames` are in
/// `file`.
fn locations_in(frames: &[common::Frame], file: &str) -> usize {
    frames
        .iter()
        .flat_map(|f| &f.symbols)
        .filter(|(name, line)| name.as_deref().is_some_and(|n| n.ends_with(file)) && line.is_some())
        .count()
}

#[test]
fn traps_show_the_same_source_frames_after_the_rewrite() {
    for fixture in ["fpcast.O0.g.wasm", "fpcast.O2.g.wasm", "fpcast.O2.g5.wasm"] {
        let input = common::fixture(fixture);
        for passes in ["fpcast,stack,producers", "fpcast", "stack-guard"] {
            let output = common::rewrite(&input, passes);
            for case in ["null", "wild", "f64"] {
                let (before_run, before) = common::run_wasi_backtrace(&input, &[case]);
                let (after_run, after) = common::run_wasi_backtrace(&output, &[case]);
                assert!(
                    matches!(before_run.outcome, common::Outcome::Trap(_)),
                    "{fixture} {case}: {before_run:?}"
                );
                // The same trap (the backtrace's offsets moved, its last line is the reason).
                let reason = |o: &common::Outcome| match o {
                    common::Outcome::Trap(t) => t.lines().last().map(str::to_string),
                    common::Outcome::Exit(_) => None,
                };
                assert_eq!(
                    reason(&before_run.outcome),
                    reason(&after_run.outcome),
                    "{fixture} {case}"
                );
                let source = |frames: &[common::Frame]| -> Vec<_> {
                    frames
                        .iter()
                        .map(|f| (f.func_index, f.func_name.clone(), f.symbols.clone()))
                        .collect()
                };
                // In fpcast's WebAssembly 1.0 design a null slot holds the forwarder, which
                // makes the original call and traps the same way, one frame deeper: that
                // frame, wasmfix's, is the only one allowed on top.
                let mut after_source = source(&after);
                if after_source.first().is_some_and(|f| {
                    f.1.as_deref()
                        .is_some_and(|n| n.starts_with("wasmfix:fpcast_forward "))
                }) {
                    after_source.remove(0);
                }
                assert_eq!(
                    source(&before),
                    after_source,
                    "{fixture} --passes {passes} {case}: frames differ"
                );
                assert!(
                    locations_in(&after, "fpcast.c") >= 2,
                    "{fixture} {case}: expected fpcast.c frames, got {after:?}"
                );
            }
        }
    }
}

#[test]
fn a_guarded_stack_overflow_shows_the_original_source_frames_below_the_handler() {
    for fixture in ["stack.O0.g.wasm", "stack.O2.g.wasm", "stack.O2.g5.wasm"] {
        let input = common::fixture(fixture);
        let old_code = code(&input);
        let old_lines = line_table(&input);
        let original_funcs = old_code.imported_funcs + old_code.bodies.len() as u32;
        for passes in ["fpcast,stack,producers", "stack-guard"] {
            let output = common::rewrite(&input, passes);
            let new_code = code(&output);
            let oracle = Oracle::new(&old_code, &new_code);
            for args in [&["recurse", "40"][..], &["bigframe"]] {
                let (run, frames) = common::run_wasi_backtrace(&output, args);
                assert!(
                    run.stderr.contains("wasmfix: stack overflow in"),
                    "{fixture} {args:?}: {run:?}"
                );
                // The handler's frames are wasmfix's own; every frame below it is original
                // code and must show what the input's DWARF says about that instruction.
                let handler = frames
                    .iter()
                    .position(|f| f.func_index < original_funcs)
                    .expect("frames below the handler");
                assert!(
                    handler > 0,
                    "{fixture} {args:?}: no handler frame: {frames:?}"
                );
                assert!(
                    frames[..handler].iter().all(|f| f
                        .func_name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("wasmfix:"))),
                    "{fixture}: handler frames are named wasmfix:…: {frames:?}"
                );
                let below = &frames[handler..];
                for frame in below {
                    let k = (frame.func_index - old_code.imported_funcs) as usize;
                    let at = frame.module_offset.expect("an offset") as u64 - new_code.start;
                    // The original instruction this one belongs to: the first output
                    // instruction at or after it that matches an original one (rightmost: the
                    // trap block after the body belongs to the function's final `end`).
                    let matched = oracle.right(k);
                    let new_ops = &new_code.bodies[k].ops;
                    let i = matched
                        .iter()
                        .position(|&j| new_ops[j].1 >= at)
                        .expect("an original instruction at or after the frame");
                    let original_at = old_code.bodies[k].ops[i].1;
                    let Some(expected) = old_lines.lookup(original_at) else {
                        assert!(
                            frame.symbols.is_empty(),
                            "{fixture}: {frame:?} has no DWARF"
                        );
                        continue;
                    };
                    let (file, line) = &frame.symbols[0];
                    assert!(
                        file.as_deref().is_some_and(|f| f.ends_with(expected.0))
                            && *line == Some(expected.1 as u32),
                        "{fixture} --passes {passes} {args:?}: frame {frame:?} should be at \
                         {expected:?} (input offset {original_at:#x})"
                    );
                }
                assert!(
                    locations_in(below, "stack.c") >= 2,
                    "{fixture} {args:?}: expected stack.c frames below the handler: {frames:?}"
                );
            }
        }
    }
}

/// The name section's (subsection id, index, name) entries for functions, tables and globals.
fn names(wasm: &[u8]) -> Option<Vec<(u8, u32, String)>> {
    let mut out = None;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let wasmparser::Payload::CustomSection(c) = payload.unwrap() else {
            continue;
        };
        let wasmparser::KnownCustom::Name(reader) = c.as_known() else {
            continue;
        };
        let list: &mut Vec<_> = out.get_or_insert_with(Vec::new);
        for sub in reader {
            let (id, map) = match sub.unwrap() {
                wasmparser::Name::Function(m) => (1, m),
                wasmparser::Name::Table(m) => (5, m),
                wasmparser::Name::Global(m) => (7, m),
                _ => continue,
            };
            for naming in map {
                let naming = naming.unwrap();
                list.push((id, naming.index, naming.name.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_name_section_names_what_wasmfix_adds() {
    for fixture in [
        "fpcast.O2.g.wasm",
        "fpcast.O2.stripped.wasm",
        "stack.O2.stripped.wasm",
    ] {
        let input = common::fixture(fixture);
        let output = common::rewrite(&input, "fpcast,stack,producers");
        let old_code = code(&input);
        let new_code = code(&output);
        let original_funcs = old_code.imported_funcs + old_code.bodies.len() as u32;
        let added_funcs = new_code.bodies.len() - old_code.bodies.len();
        assert!(added_funcs > 0, "{fixture}: wasmfix added no function");
        let before = names(&input).unwrap_or_default();
        let after = names(&output).expect("a name section");
        // Every original name is kept; every added function is named `wasmfix:…`, and nothing
        // else gets a new name unless it is wasmfix's.
        for named in &before {
            assert!(after.contains(named), "{fixture}: lost {named:?}");
        }
        for f in original_funcs..original_funcs + added_funcs as u32 {
            assert!(
                after
                    .iter()
                    .any(|(id, i, n)| *id == 1 && *i == f && n.starts_with("wasmfix:")),
                "{fixture}: added function {f} has no wasmfix: name"
            );
        }
        for named in after.iter().filter(|n| !before.contains(n)) {
            assert!(named.2.starts_with("wasmfix:"), "{fixture}: {named:?}");
        }
    }
    let output = common::rewrite(&common::fixture("fpcast.O2.g.wasm"), "fpcast");
    let after = names(&output).unwrap();
    for expected in [
        "wasmfix:adapt (i32)->(i32) as (i32,i32)->(i32)",
        "wasmfix:fpcast_index",
        // The fixture is WebAssembly 1.0: the views are appended to table 0, and its null
        // slots hold the forwarder (an MVP element segment cannot hold a null).
        "wasmfix:fpcast_forward (i32,i32)->(i32) table 0",
    ] {
        assert!(
            after.iter().any(|(_, _, n)| n == expected),
            "no {expected}: {after:?}"
        );
    }
    let output = common::rewrite(&common::fixture("stack.O2.stripped.wasm"), "stack-guard");
    assert!(
        names(&output)
            .unwrap()
            .iter()
            .any(|(id, _, n)| *id == 1 && n == "wasmfix:stack_overflow")
    );
}

/// A source map segment: (generated column = module offset, Some((source, line, column))).
type Mapping = (u64, Option<(i64, i64, i64)>);

/// A source map's segments, decoded here independently of wasmfix's own decoder.
fn source_map_segments(json: &[u8]) -> Vec<Mapping> {
    let map: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mappings = map["mappings"].as_str().unwrap();
    let digit = |c: u8| {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            .iter()
            .position(|&b| b == c)
            .unwrap() as i64
    };
    let mut state = [0i64; 5];
    let mut out = Vec::new();
    for segment in mappings.split(',') {
        let (mut fields, mut value, mut shift) = (Vec::new(), 0i64, 0);
        for c in segment.bytes() {
            let d = digit(c);
            value += (d & 31) << shift;
            shift += 5;
            if d & 32 == 0 {
                fields.push(if value & 1 == 1 {
                    -(value >> 1)
                } else {
                    value >> 1
                });
                (value, shift) = (0, 0);
            }
        }
        for (i, f) in fields.iter().enumerate() {
            state[i] += f;
        }
        let location = (fields.len() >= 4).then_some((state[1], state[2], state[3]));
        out.push((state[0] as u64, location));
    }
    out
}

fn source_map_lookup(segments: &[Mapping], offset: u64) -> Option<(i64, i64, i64)> {
    let i = segments.partition_point(|(c, _)| *c <= offset);
    segments.get(i.checked_sub(1)?)?.1
}

#[test]
fn a_source_map_given_with_source_map_is_rewritten_for_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = common::repo().join("tests/fixtures/wasm");
    let input = common::fixture("sourcemap.wasm");
    let map_in = std::fs::read(fixtures.join("sourcemap.wasm.map")).unwrap();
    let old_code = code(&input);
    let old = source_map_segments(&map_in);
    for passes in ["fpcast,stack,producers", "fpcast", "stack-guard"] {
        let (out, map_out) = (dir.path().join("out.wasm"), dir.path().join("out.map"));
        let run = common::wasmfix()
            .arg(fixtures.join("sourcemap.wasm"))
            .arg("-o")
            .arg(&out)
            .args(["--passes", passes, "--source-map"])
            .arg(fixtures.join("sourcemap.wasm.map"))
            .arg("--source-map-out")
            .arg(&map_out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{passes}: {run:?}");
        let output = std::fs::read(&out).unwrap();
        let new_code = code(&output);
        let new = source_map_segments(&std::fs::read(&map_out).unwrap());
        let oracle = Oracle::new(&old_code, &new_code);
        let (mut compared, mut moved) = (0, 0);
        for (k, body) in old_code.bodies.iter().enumerate() {
            let new_body = &new_code.bodies[oracle.body_of(k).unwrap()];
            // Each original instruction on an output instruction of its kind with its mapping
            // (see `every_original_instruction_keeps_its_source_line`).
            let location = |map: &_, start: u64, at: u64| source_map_lookup(map, start + at);
            let matched = oracle
                .embed_with(k, |i, j| {
                    let expected = location(&old, old_code.start, body.ops[i].1);
                    expected.is_none()
                        || location(&new, new_code.start, new_body.ops[j].1) == expected
                })
                .unwrap_or_else(|| panic!("--passes {passes}: function {k} lost source locations"));
            for (i, (_, at)) in body.ops.iter().enumerate() {
                if location(&old, old_code.start, *at).is_none() {
                    continue;
                }
                let new_at = new_body.ops[matched[i]].1;
                compared += 1;
                moved += usize::from(new_code.start + new_at != old_code.start + at);
            }
        }
        assert!(
            compared >= 15 && moved > 0,
            "{passes}: {compared} compared, {moved} moved"
        );
    }
}

#[test]
fn source_map_cli_defaults_in_place_and_bad_maps() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = common::repo().join("tests/fixtures/wasm");
    let wasm = dir.path().join("app.wasm");
    let map = dir.path().join("app.wasm.map");
    std::fs::copy(fixtures.join("sourcemap.wasm"), &wasm).unwrap();
    std::fs::copy(fixtures.join("sourcemap.wasm.map"), &map).unwrap();
    let original_map = std::fs::read(&map).unwrap();

    // Without --source-map: the module is fixed and the stale map is named in a warning.
    let out = dir.path().join("plain.wasm");
    let run = common::wasmfix()
        .arg(&wasm)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("source map (sourcemap.wasm.map) no longer matches"),
        "{stderr}"
    );

    // In place: -o IN and the map's default output, OUT.map, is IN.map.
    let run = common::wasmfix()
        .arg(&wasm)
        .arg("-o")
        .arg(&wasm)
        .arg("--source-map")
        .arg(&map)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(!String::from_utf8_lossy(&run.stderr).contains("warning"));
    assert_ne!(std::fs::read(&map).unwrap(), original_map);
    assert_eq!(std::fs::read(&wasm).unwrap(), std::fs::read(&out).unwrap());

    // A bad map: one line, exit 2, nothing written.
    let bad = dir.path().join("bad.map");
    std::fs::write(&bad, r#"{"version":3,"mappings":"A!"}"#).unwrap();
    let target = dir.path().join("never.wasm");
    let run = common::wasmfix()
        .arg(fixtures.join("sourcemap.wasm"))
        .arg("-o")
        .arg(&target)
        .arg("--source-map")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.map"), "{stderr}");
    assert!(!target.exists());
    assert!(!dir.path().join("never.wasm.map").exists());
}

#[test]
fn inspect_reports_debug_info() {
    let fixtures = common::repo().join("tests/fixtures/wasm");
    let text = |name: &str| {
        let out = common::wasmfix()
            .arg("inspect")
            .arg(fixtures.join(name))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(text("sourcemap.wasm").contains("debug info: source map: sourcemap.wasm.map"));
    assert!(text("stack.O2.g.wasm").contains("debug info: DWARF in 6 sections"));
    assert!(text("layout.stackafter.wasm").contains("debug info: DWARF"));
    let wat = common::wat("hello-wasi");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h.wasm"), wat).unwrap();
    let out = common::wasmfix()
        .arg("inspect")
        .arg(dir.path().join("h.wasm"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("debug info: none"));
}

#[test]
fn external_debug_info_is_reported_and_kept() {
    // fpcast adapts the cast in `caller`, so the code moves and the separate DWARF file no
    // longer matches.
    let wasm = wat::parse_str(
        r#"(module
          (type $one (func (param i32) (result i32)))
          (type $two (func (param i32 i32) (result i32)))
          (table 2 2 funcref)
          (elem (i32.const 1) $get)
          (func $get (type $one) (i32.add (local.get 0) (i32.const 1)))
          (func (export "caller") (param i32) (result i32)
            (call_indirect (type $two) (i32.const 41) (i32.const 0) (local.get 0)))
          (@custom "external_debug_info" "\0eapp.debug.wasm"))"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&input, &wasm).unwrap();
    let inspect = common::wasmfix()
        .arg("inspect")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&inspect.stdout)
            .contains("debug info: external DWARF: app.debug.wasm")
    );
    let run = common::wasmfix()
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(["--report", "-"])
        .output()
        .unwrap();
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("DWARF is in a separate file (app.debug.wasm)"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        report["debug_info"]["external_debug_info"],
        "app.debug.wasm"
    );
    assert_eq!(report["debug_info"]["dwarf"], "none");
    let kept = common::custom_sections(&std::fs::read(&output).unwrap());
    assert!(kept.iter().any(|(n, _)| n == "external_debug_info"));
}

#[test]
fn the_report_says_what_happened_to_dwarf() {
    let fixture = common::repo().join("tests/fixtures/wasm/stack.O2.g.wasm");
    let dir = tempfile::tempdir().unwrap();
    let report = |extra: &[&str]| -> serde_json::Value {
        let run = common::wasmfix()
            .arg(&fixture)
            .arg("-o")
            .arg(dir.path().join("out.wasm"))
            .args(["--report", "-"])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{run:?}");
        serde_json::from_slice(&run.stdout).unwrap()
    };
    let updated = report(&[]);
    assert_eq!(updated["debug_info"]["dwarf"], "updated");
    assert!(
        updated["debug_info"]["update"]["line_programs"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        report(&["--passes", "producers"])["debug_info"]["dwarf"],
        "unchanged"
    );
    let stale = report(&["--no-dwarf-update"]);
    assert_eq!(stale["debug_info"]["dwarf"], "stale");
    assert!(
        stale["debug_info"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("--no-dwarf-update")
    );
}

#[test]
fn dwarf_wasmfix_cannot_update_is_refused_in_one_line() {
    // The first line program claims more bytes than .debug_line has.
    let input = common::fixture("stack.O2.g.wasm");
    let mut broken = input[..8].to_vec();
    for s in common::sections(&input) {
        if s.custom_name.as_deref() == Some(".debug_line") {
            let mut bytes = s.bytes.clone();
            // id, section size (LEB), name length, ".debug_line", then unit_length.
            let name_at = bytes.windows(11).position(|w| w == b".debug_line").unwrap();
            bytes[name_at + 11..name_at + 15].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
            broken.extend(bytes);
        } else {
            broken.extend(s.bytes);
        }
    }
    let err = common::try_rewrite(&broken, "stack-guard").unwrap_err();
    assert!(
        err.starts_with("dwarf: cannot update the DWARF debug info: .debug_line"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // Copying it unchanged still works, and so does a run that moves no code.
    common::rewrite(&broken, "producers");
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&path, &broken).unwrap();
    let run = common::wasmfix()
        .arg(&path)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&run.stderr).lines().count(), 1);
    assert!(!out.exists());
}

/// A subprogram whose `DW_AT_high_pc` length wraps around the 32-bit address space
/// (ruby-debug has ones whose end is 0 and one with length -6) keeps its end modulo 2^32 when
/// the code before it shrinks, while a well-formed one follows its code. (wasmfix once refused
/// ruby-debug under heap-canary: "DW_AT_high_pc: 0x100001ded does not fit in 4 bytes".)
#[test]
fn a_range_wrapping_around_the_address_space_keeps_its_end() {
    // heap-canary replaces the long `realloc` by a shorter wrapper: `after` moves down.
    let module = wat::parse_str(format!(
        r#"(module
          (memory 1)
          (global $top (mut i32) (i32.const 4096))
          (func $malloc (export "malloc") (param $n i32) (result i32) (local $p i32)
            global.get $top
            local.tee $p
            local.get $n
            i32.add
            global.set $top
            local.get $p)
          (func $free (export "free") (param i32))
          (func $realloc (export "realloc") (param i32 i32) (result i32)
            {}
            local.get 1
            call $malloc)
          (func $after (export "after") (result i32)
            i32.const 7))"#,
        "nop\n".repeat(400)
    ))
    .unwrap();
    let after = code(&module).bodies[3].range.clone();
    let wrapping = 0xffff_fffa_u64;
    // .debug_abbrev: 1 = compile unit with children, 2 = subprogram (low_pc addr, high_pc data4).
    let abbrev = [
        1, 0x11, 1, 0, 0, 2, 0x2e, 0, 0x11, 0x01, 0x12, 0x06, 0, 0, 0,
    ];
    let mut dies = vec![1u8];
    for len in [after.end - after.start, wrapping] {
        dies.push(2);
        dies.extend((after.start as u32).to_le_bytes());
        dies.extend((len as u32).to_le_bytes());
    }
    dies.push(0);
    let mut info = Vec::new();
    info.extend((2 + 4 + 1 + dies.len() as u32).to_le_bytes());
    info.extend(4u16.to_le_bytes());
    info.extend(0u32.to_le_bytes());
    info.push(4);
    info.extend(dies);
    let mut input = module.clone();
    for (name, data) in [(".debug_abbrev", &abbrev[..]), (".debug_info", &info)] {
        let section = wasm_encoder::CustomSection {
            name: name.into(),
            data: data.into(),
        };
        wasm_encoder::Section::append_to(&section, &mut input);
    }
    let output = common::rewrite(&input, "heap-canary");
    let moved = code(&output).bodies[3].range.clone();
    assert!(moved.start < after.start, "{after:?} -> {moved:?}");
    let sections = debug_sections(&output);
    let dwarf = load(&sections);
    let unit = dwarf.units().next().unwrap().unwrap();
    let unit = dwarf.unit(unit).unwrap();
    let mut entries = unit.entries();
    let mut found = Vec::new();
    while let Some(entry) = entries.next_dfs().unwrap() {
        if entry.tag() != gimli::DW_TAG_subprogram {
            continue;
        }
        let attr = |name| entry.attr_value(name).unwrap();
        let low = match attr(gimli::DW_AT_low_pc) {
            gimli::AttributeValue::Addr(a) => a,
            other => panic!("{other:?}"),
        };
        let len = attr(gimli::DW_AT_high_pc).udata_value().unwrap();
        found.push((low, (low + len) & 0xffff_ffff));
    }
    assert_eq!(
        found,
        [
            (moved.start, moved.end),
            (moved.start, (after.start + wrapping) & 0xffff_ffff)
        ],
        "`after` moved from {after:?} to {moved:?}"
    );
}
