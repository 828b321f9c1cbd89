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
//!   whatever rewriters insert around it falls in its source location.
//!
//! `map` is monotonic (never decreasing), so line tables and ranges stay ordered. Addresses
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
        });
    }

    fn push(&mut self, span: BodySpan) {
        debug_assert!(
            self.bodies
                .last()
                .is_none_or(|b| b.old.end < span.old.start)
        );
        self.bodies.push(span);
    }

    /// Whether any original body moved or changed: if not, every address maps to itself.
    pub fn is_identity(&self) -> bool {
        self.bodies.iter().all(|b| b.old == b.new)
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
        if body.instructions.is_empty() {
            return (a - body.old.start + body.new.start) as u64;
        }
        if a == body.old.end {
            return body.new.end as u64;
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
    fn map_is_monotonic() {
        let m = example();
        let mapped: Vec<u64> = (0..=40).map(|a| m.map(a)).collect();
        assert!(mapped.windows(2).all(|w| w[0] <= w[1]), "{mapped:?}");
    }
}
