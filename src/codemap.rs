//! Where each byte of the input's code went in the output: the map that debug info (DWARF,
//! source maps) needs once function bodies move.
//!
//! Addresses here are offsets from the start of the Code section's contents (the byte after
//! the section size, where the function count starts), as DWARF for wasm counts them. The
//! emitter builds the map while it writes the Code section, so every body rewriter gets it
//! without doing anything:
//! - a body copied byte for byte moves as a whole: one delta for every address inside it;
//! - a re-encoded body keeps, for each original instruction, where its replacement starts.
//!   An original instruction maps to the first instruction a rewriter put in its place, so
//!   whatever rewriters insert around it falls in its source location;
//! - a body moved to a new function (`Edits::move_body`) is copied byte for byte to the end
//!   of the section: its addresses follow it, since it is the original code;
//! - a body replaced in its slot without being moved (`Edits::replace_body`) has no
//!   original instruction left: all of it maps to the replacement's start, its end to the
//!   replacement's end, so the function's DIE and line rows cover the replacement.
//!
//! `map` is monotonic (never decreasing) within each body, so line sequences (one per
//! function for wasm) and ranges stay ordered; across bodies it is too unless a body moved
//! to the end of the section. Addresses
//! before the first body (the function count) and DWARF tombstones (0xffffffff, 0xfffffffe
//! for code the linker dropped) are returned unchanged; addresses past the last body (only
//! broken debug info has them) move with its end.

use std::ops::Range;

/// Addresses from here up are DWARF tombstones (-1, -2 as 32-bit addresses) and never move.
const TOMBSTONES: u64 = 0xffff_fff0;

/// Where one original function body went.
#[derive(Debug, Clone)]
struct BodySpan {
    /// The body (locals and code, after its size field) in the input, code-relative.
    old: Range<u32>,
    /// The same in the output.
    new: Range<u32>,
    /// The body's entries in `CodeMap::instructions`; empty when it was copied verbatim.
    instructions: Range<u32>,
    /// Replaced without being moved: every address inside maps to `new.start`.
    replaced: bool,
}

/// The old → new code offset map of one run (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct CodeMap {
    /// Offset of the Code section's contents in the input file and in the output file.
    pub old_code_start: u64,
    pub new_code_start: u64,
    /// Length of the Code section's contents in the input and in the output.
    pub old_code_len: u64,
    pub new_code_len: u64,
    bodies: Vec<BodySpan>,
    /// Whether some body is out of input order in the output (see [`CodeMap::moved`]).
    reordered: bool,
    /// `(old, new)` code-relative offsets of the instructions of re-encoded bodies.
    instructions: Vec<(u32, u32)>,
}

impl CodeMap {
    /// An empty map for a Code section whose contents start at `old_code_start` in the input.
    pub fn new(old_code_start: u64, old_code_len: u64) -> CodeMap {
        CodeMap {
            old_code_start,
            old_code_len,
            ..CodeMap::default()
        }
    }

    /// Records a body copied byte for byte from `old` to `new` (code-relative).
    pub fn copied(&mut self, old: Range<u32>, new: Range<u32>) {
        debug_assert_eq!(old.len(), new.len());
        let at = self.instructions.len() as u32;
        self.push(BodySpan {
            old,
            new,
            instructions: at..at,
            replaced: false,
        });
    }

    /// Records a body moved to another place: its code (from `code.0` in the input, `code.1`
    /// in the output) copied byte for byte, its local declarations re-encoded (the same
    /// bytes unless the input's LEB128s were padded).
    pub fn moved(&mut self, old: Range<u32>, new: Range<u32>, code: (u32, u32)) {
        if code.0 - old.start == code.1 - new.start {
            self.copied(old, new);
        } else {
            // One "instruction" at the start of the code: the rest keeps its distance to it.
            self.reencoded(old, new, [code]);
        }
    }

    /// Records a body replaced by `new` in its slot (see the module comment).
    pub fn replaced(&mut self, old: Range<u32>, new: Range<u32>) {
        let at = self.instructions.len() as u32;
        self.push(BodySpan {
            old,
            new,
            instructions: at..at,
            replaced: true,
        });
    }

    /// Records a re-encoded body: `instructions` are its original instructions' `(old, new)`
    /// code-relative offsets, ascending.
    pub fn reencoded(
        &mut self,
        old: Range<u32>,
        new: Range<u32>,
        instructions: impl IntoIterator<Item = (u32, u32)>,
    ) {
        let start = self.instructions.len() as u32;
        self.instructions.extend(instructions);
        let end = self.instructions.len() as u32;
        debug_assert!(start < end, "a body has at least its final `end`");
        self.push(BodySpan {
            old,
            new,
            instructions: start..end,
            replaced: false,
        });
    }

    /// Keeps `bodies` in input order: bodies come in output order, and a moved one comes
    /// after all the others.
    fn push(&mut self, span: BodySpan) {
        let k = self
            .bodies
            .partition_point(|b| b.old.start < span.old.start);
        debug_assert!(k == 0 || self.bodies[k - 1].old.end < span.old.start);
        debug_assert!(
            self.bodies
                .get(k)
                .is_none_or(|b| span.old.end < b.old.start)
        );
        self.reordered |= k < self.bodies.len();
        self.bodies.insert(k, span);
    }

    /// Whether any original body moved or changed: if not, every address maps to itself.
    pub fn is_identity(&self) -> bool {
        self.bodies.iter().all(|b| b.old == b.new && !b.replaced)
    }

    /// Whether `map` may move `old`: an address from the first body on, below the tombstones.
    pub fn movable(&self, old: u64) -> bool {
        self.bodies
            .first()
            .is_some_and(|first| old >= first.old.start as u64 && old < TOMBSTONES)
    }

    /// Whether `old` lies in the input's function bodies (their ends included).
    pub fn in_bodies(&self, old: u64) -> bool {
        match (self.bodies.first(), self.bodies.last()) {
            (Some(first), Some(last)) => {
                (first.old.start as u64..=last.old.end as u64).contains(&old)
            }
            _ => false,
        }
    }

    /// Where code-relative address `old` of the input lies in the output.
    pub fn map(&self, old: u64) -> u64 {
        if !self.in_bodies(old) {
            return match self.bodies.last() {
                Some(last) if old > last.old.end as u64 && old < TOMBSTONES => {
                    old - last.old.end as u64 + last.new.end as u64
                }
                _ => old,
            };
        }
        let a = old as u32;
        let k = self.bodies.partition_point(|b| b.old.start <= a) - 1;
        let body = &self.bodies[k];
        if a > body.old.end {
            // Inside the size field of the next body: keep the distance to that body.
            let next = &self.bodies[k + 1];
            let before = next.old.start - a;
            return next.new.start.saturating_sub(before).max(body.new.end) as u64;
        }
        if a == body.old.end {
            return body.new.end as u64;
        }
        if body.replaced {
            return body.new.start as u64;
        }
        if body.instructions.is_empty() {
            return (a - body.old.start + body.new.start) as u64;
        }
        let ins =
            &self.instructions[body.instructions.start as usize..body.instructions.end as usize];
        let (first_old, first_new) = ins[0];
        if a < first_old {
            // In the local declarations.
            return (body.new.start + (a - body.old.start).min(first_new - body.new.start)) as u64;
        }
        let i = ins.partition_point(|&(o, _)| o <= a) - 1;
        let (o, n) = ins[i];
        let next = ins.get(i + 1).map_or(body.new.end, |&(_, n)| n);
        // Inside an instruction's immediates: the same distance into its replacement, but
        // never past it.
        (n + (a - o).min(next.saturating_sub(n + 1))) as u64
    }

    /// Whether a line sequence running from input address `from` on to `to` (ascending) must
    /// end before `to`: when the bodies from the one holding `from` to the one holding `to`
    /// are no longer neighbours in the same order in the output (one moved), the addresses
    /// between them no longer run in one piece. Returns where the sequence then ends: the
    /// output end of the body holding `from`.
    pub fn sequence_break(&self, from: u64, to: u64) -> Option<u64> {
        if !self.reordered || to <= from || !self.in_bodies(from) || !self.in_bodies(to) {
            return None;
        }
        let body = |a: u64| self.bodies.partition_point(|b| b.old.start as u64 <= a) - 1;
        let (first, last) = (body(from), body(to));
        if first == last {
            return None;
        }
        let spans = &self.bodies[first..=last];
        // In the output only the next body's size field (at most 5 bytes) lies between two
        // bodies that are still neighbours.
        let in_order = spans
            .windows(2)
            .all(|w| (1..=5).contains(&w[1].new.start.wrapping_sub(w[0].new.end)));
        (!in_order).then(|| spans[0].new.end as u64)
    }

    /// Where absolute input file offset `old` lies in the output, if it is in the code.
    pub fn map_file_offset(&self, old: u64) -> Option<u64> {
        let rel = old.checked_sub(self.old_code_start)?;
        if rel > self.old_code_len {
            return None;
        }
        Some(self.new_code_start + self.map(rel))
    }

    /// Number of re-encoded bodies.
    pub fn reencoded_bodies(&self) -> usize {
        self.bodies
            .iter()
            .filter(|b| !b.instructions.is_empty())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two bodies: [2, 10) copied to [3, 11); [11, 20) re-encoded to [12, 30) with
    /// instructions at 13, 15, 19 (old) → 14, 20, 29 (new).
    fn example() -> CodeMap {
        let mut m = CodeMap::new(100, 20);
        m.copied(2..10, 3..11);
        m.reencoded(11..20, 12..30, [(13, 14), (15, 20), (19, 29)]);
        m
    }

    #[test]
    fn copied_bodies_shift_by_one_delta() {
        let m = example();
        assert_eq!(m.map(2), 3);
        assert_eq!(m.map(9), 10);
        assert_eq!(m.map(10), 11);
    }

    #[test]
    fn instructions_map_to_the_start_of_their_replacement() {
        let m = example();
        assert_eq!(m.map(11), 12); // locals
        assert_eq!(m.map(12), 13);
        assert_eq!(m.map(13), 14);
        assert_eq!(m.map(14), 15); // inside the first instruction's immediates
        assert_eq!(m.map(15), 20);
        assert_eq!(m.map(16), 21);
        assert_eq!(m.map(18), 23);
        assert_eq!(m.map(19), 29);
        assert_eq!(m.map(20), 30); // the body's end
    }

    #[test]
    fn addresses_outside_bodies_stay() {
        let m = example();
        assert_eq!(m.map(0), 0);
        assert_eq!(m.map(1), 1);
        assert_eq!(m.map(0xffff_ffff), 0xffff_ffff);
        assert_eq!(m.map(0xffff_fffe), 0xffff_fffe);
        assert_eq!(m.map(u64::MAX), u64::MAX);
    }

    #[test]
    fn addresses_past_the_last_body_move_with_its_end() {
        let m = example();
        assert_eq!(m.map(21), 31);
        assert_eq!(m.map(0x1000), 0x1000 + 10);
    }

    #[test]
    fn moved_bodies_keep_their_code_and_replaced_ones_collapse() {
        // [2, 10) moved to [40, 48); [11, 20) replaced by [3, 8); the moved body is recorded
        // last, as the emitter writes it.
        let mut m = CodeMap::new(100, 20);
        m.replaced(11..20, 3..8);
        m.moved(2..10, 40..48, (4, 42));
        assert_eq!((m.map(2), m.map(5), m.map(10)), (40, 43, 48));
        assert_eq!((m.map(11), m.map(15), m.map(19), m.map(20)), (3, 3, 3, 8));
        assert!(!m.is_identity());
        // Padded local declarations: the code keeps its distance to its own start.
        let mut m = CodeMap::new(100, 20);
        m.moved(2..10, 40..46, (6, 42));
        assert_eq!((m.map(3), m.map(6), m.map(9), m.map(10)), (41, 42, 45, 46));
        assert_eq!(m.reencoded_bodies(), 1);
    }

    #[test]
    fn sequences_break_where_a_body_moved_out_of_order() {
        // [2, 10) → [3, 11), [11, 20) moved to [40, 49), [21, 30) → [12, 21).
        let mut m = CodeMap::new(100, 30);
        m.copied(2..10, 3..11);
        m.copied(21..30, 12..21);
        m.moved(11..20, 40..49, (12, 41));
        assert_eq!(m.sequence_break(3, 9), None);
        assert_eq!(m.sequence_break(3, 12), Some(11));
        assert_eq!(m.sequence_break(12, 22), Some(49));
        assert_eq!(m.sequence_break(3, 25), Some(11));
        assert_eq!(example().sequence_break(3, 15), None);
    }

    #[test]
    fn map_is_monotonic() {
        let m = example();
        let mapped: Vec<u64> = (0..=40).map(|a| m.map(a)).collect();
        assert!(mapped.windows(2).all(|w| w[0] <= w[1]), "{mapped:?}");
    }
}
