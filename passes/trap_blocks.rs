//! Trap blocks around a function body, shared by the rewriters that check something at many
//! places of a function and stop in one place (stack-canary, bounds).
//!
//! The body becomes
//!
//! ```text
//! block $trap_k … block $trap_0 (block $body (result R) <body>) <exit check> return end
//! <trap 0 code> … end <trap k code> end
//! ```
//!
//! so a check anywhere in the body is one `br_if` to its trap block, and everything that leaves
//! the body normally (falling off its end, or a branch to the function's own label, which now
//! lands at the end of `$body`) passes the exit check. Rewriters earlier in the chain may have
//! wrapped the body already: their blocks stay outside these, so a branch whose depth reaches
//! past the labels opened since [`TrapBlocks::open`] gets the number of added blocks added to it,
//! and the first `end` at nesting 0 (the end of the body as this rewriter sees it) is where the
//! blocks close; everything after it belongs to the earlier rewriters and passes unchanged.

use wasm_encoder::{BlockType, Instruction};

/// Where an instruction is, as the rewriter that owns these blocks must treat it.
pub enum At {
    /// Inside the body: rewrite it.
    Body,
    /// The end of the body: call [`TrapBlocks::close`].
    End,
    /// Before [`TrapBlocks::open`] or after the blocks closed: pass it through unchanged.
    Outside,
}

#[derive(Default)]
pub struct TrapBlocks {
    /// Constructs opened in the body and not yet closed.
    nest: u32,
    /// Blocks added: the trap blocks and `$body`.
    added: u32,
    inside: bool,
}

impl TrapBlocks {
    /// Opens the trap blocks (`traps[0]` innermost) and `$body` with the function's results.
    pub fn open(
        &mut self,
        traps: &[BlockType],
        results: BlockType,
        out: &mut Vec<Instruction<'static>>,
    ) {
        out.extend(traps.iter().rev().map(|t| Instruction::Block(*t)));
        out.push(Instruction::Block(results));
        *self = TrapBlocks {
            nest: 0,
            added: traps.len() as u32 + 1,
            inside: true,
        };
    }

    /// The label depth of trap block `k` from the instruction being rewritten in the body.
    pub fn trap_depth(&self, k: u32) -> u32 {
        self.nest + 1 + k
    }

    /// Tracks nesting and shifts branches to labels outside the added blocks.
    pub fn track(&mut self, ins: &mut Instruction<'_>) -> At {
        if !self.inside {
            return At::Outside;
        }
        let outer = |d: &mut u32, nest: u32, added: u32| {
            if *d > nest {
                *d += added
            }
        };
        match ins {
            Instruction::Block(_)
            | Instruction::Loop(_)
            | Instruction::If(_)
            | Instruction::Try(_)
            | Instruction::TryTable(..) => self.nest += 1,
            Instruction::End | Instruction::Delegate(_) if self.nest > 0 => self.nest -= 1,
            Instruction::End => return At::End,
            Instruction::Br(d)
            | Instruction::BrIf(d)
            | Instruction::BrOnNull(d)
            | Instruction::BrOnNonNull(d) => outer(d, self.nest, self.added),
            Instruction::BrTable(targets, default) => {
                let mut shifted: Vec<u32> = targets.iter().copied().collect();
                for d in &mut shifted {
                    outer(d, self.nest, self.added);
                }
                *targets = shifted.into();
                outer(default, self.nest, self.added);
            }
            _ => {}
        }
        At::Body
    }

    /// Closes the blocks at the end of the body: `exit` runs when the body completes (it may
    /// branch to trap block `k` with `br_if k`), then the function returns; `traps[k]` is the
    /// code of trap block `k` (it must not fall through). `end` is the instruction that
    /// ended the body, pushed last.
    pub fn close<'i>(
        &mut self,
        exit: &[Instruction<'static>],
        traps: &[Vec<Instruction<'static>>],
        end: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        out.push(Instruction::End);
        out.extend(exit.iter().cloned());
        out.push(Instruction::Return);
        for code in traps {
            out.push(Instruction::End);
            out.extend(code.iter().cloned());
        }
        out.push(end);
        self.inside = false;
    }
}
