//! The passes: one file each, opening with what the pass inserts, which executions it leaves
//! unchanged and why, and what it refuses. [`REGISTRY`] drives `--passes`, `wasmfix passes`
//! and `--help`.

use crate::edit::Edits;
use crate::facts::Facts;
use crate::features::{Feature, FeatureSet, RunFeatures};
use crate::module::Module;
use serde_json::Value;

pub mod adapter_memory;
pub mod bounds;
pub mod bulk;
pub mod fpcast;
pub mod heap_canary;
pub mod producers;
pub mod stack_canary;
pub mod stack_first;
pub mod stack_guard;
mod trap_blocks;

/// Options that reach passes (and the emitter) from the command line.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// fpcast: calls that still trap on a non-castable mismatch first print what was called.
    pub fpcast_diagnose: bool,
    /// fpcast: each distinct castable mismatch that runs prints one line to stderr first.
    pub fpcast_trace: bool,
    /// fpcast: where the per-signature views live (`--fpcast-design`); by default shadow
    /// tables when the run allows reference types, else views in the table itself.
    pub fpcast_design: Option<fpcast::Design>,
    /// stack-first: the size of the relocated stack (default: the module's own stack size).
    pub stack_size: Option<u64>,
    /// Copy DWARF unchanged even when bodies move (its code addresses are then stale). Only
    /// for measuring what the update costs (the CLI's hidden `--no-dwarf-update`).
    pub no_dwarf_update: bool,
    /// Keep the old → new code map in the outcome, to rewrite a source map with it.
    pub code_map: bool,
    /// `--harden`: a hardening pass that cannot establish what it needs warns and does nothing
    /// instead of refusing the module (alone, with `--passes`, it refuses).
    pub harden: bool,
    /// `--harden-mode`: what a failed hardening check does after its message: stop (trap), or
    /// report each site once and let the program go on.
    pub on_error: crate::diag::OnError,
    /// `--harden-allow`: functions (by name, or by index) whose accesses and frames the
    /// hardening passes do not check.
    pub harden_allow: Vec<String>,
    /// `--bounds-precise`: bounds stops null-page loads with a message too (a branch per load)
    /// instead of letting them trap as out-of-bounds accesses.
    pub bounds_precise: bool,
    /// `--bounds-compact`: bounds rebases null-page stores as it rebases loads (an
    /// out-of-bounds trap at the access, no message) instead of a compare and branch.
    pub bounds_compact: bool,
    /// The passes were named with `--passes`: a pass that applies where it can in the default
    /// pipeline (adapter-memory) then refuses a module it cannot handle instead of warning.
    pub explicit_passes: bool,
    /// heap-canary: the allocator named by hand, the quarantine, stress mode.
    pub heap: heap_canary::HeapOptions,
    /// `--enable-X` / `--disable-X`: features passes may use beyond the input's.
    pub features: crate::features::FeatureChoice,
    /// Messages keep their text in code even when the run allows bulk memory (a passive
    /// segment). Only for measuring and testing the WebAssembly 1.0 design on modules that use
    /// bulk memory (the CLI's hidden `--messages-in-code`).
    pub messages_in_code: bool,
}

impl PassOptions {
    /// Whether `--harden-allow` names function `func`.
    pub fn allowed(&self, facts: &Facts, func: u32) -> bool {
        !self.harden_allow.is_empty()
            && self.harden_allow.iter().any(|a| {
                a.parse::<u32>().ok() == Some(func)
                    || facts.function_names.get(&func).is_some_and(|n| n == a)
            })
    }

    /// A warning for each `--harden-allow` entry that names no function of the module.
    pub fn unmatched_allows(&self, m: &Module<'_>, facts: &Facts) -> Vec<String> {
        self.harden_allow
            .iter()
            .filter(|a| match a.parse::<u32>() {
                Ok(i) => i >= m.num_funcs(),
                Err(_) => !facts.function_names.values().any(|n| n == *a),
            })
            .map(|a| {
                format!("--harden-allow {a}: the module has no function of that name or index")
            })
            .collect()
    }
}

/// What a pass sees: the input, its facts, and the edits collected so far.
pub struct PassCx<'c, 'm, 'a> {
    pub module: &'m Module<'a>,
    /// Established on first use, so passes that need no facts cost nothing.
    pub facts: &'m std::sync::OnceLock<Facts>,
    pub edits: &'c mut Edits<'m>,
    pub options: &'m PassOptions,
}

impl<'m> PassCx<'_, 'm, '_> {
    pub fn facts(&self) -> &'m Facts {
        self.facts.get_or_init(|| Facts::new(self.module))
    }

    /// The features this run may use: the input's plus those the user enabled (see
    /// [`crate::features`]).
    pub fn features(&self) -> RunFeatures {
        let input = self.facts().features(self.module);
        // A choice that conflicts with the input was refused before any pass ran.
        RunFeatures::new(input, &self.options.features).unwrap_or(RunFeatures {
            input: input.used,
            enabled: FeatureSet::EMPTY,
        })
    }

    /// Whether the run allows `f` (the input uses it or the user enabled it).
    pub fn allows(&self, f: Feature) -> bool {
        self.features().allows(f)
    }

    /// Records that the output uses `f`, for validation and `target_features`; `what` (the
    /// construct that needs it) words the refusal when the run does not allow it.
    pub fn use_feature(&mut self, f: Feature, what: &str) -> anyhow::Result<()> {
        let run = self.features();
        if !run.allows(f) {
            anyhow::bail!("{}", run.missing(f, what));
        }
        if !run.input.contains(f) {
            self.edits.used_features.insert(f);
        }
        Ok(())
    }
}

/// What a pass did, for `--report` and `-v`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassReport {
    pub pass: &'static str,
    /// One line for people.
    pub summary: String,
    /// What the pass could not fix, printed unless `-q`.
    pub warnings: Vec<String>,
    /// Whatever detail the pass records, for tools.
    pub details: Value,
}

/// A pass refuses a module by returning an error: wasmfix then writes nothing and exits 2.
pub trait Pass: Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> anyhow::Result<PassReport>;
}

/// Every pass, in the order the pipeline runs them.
pub static REGISTRY: &[&dyn Pass] = &[
    &fpcast::Fpcast,
    &stack_guard::Stack,
    &stack_first::StackFirst,
    &stack_guard::StackGuard,
    &adapter_memory::AdapterMemory,
    &heap_canary::HeapCanary,
    &bounds::Bounds,
    &stack_canary::StackCanary,
    &producers::Producers,
];

/// The passes run when `--passes` is not given.
pub const DEFAULT_PIPELINE: &[&str] = &["fpcast", "stack", "adapter-memory", "producers"];

/// `--harden`: the default pipeline and [`HARDEN_PASSES`], in registry order.
pub fn harden_pipeline() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .map(|p| p.name())
        .filter(|n| DEFAULT_PIPELINE.contains(n) || HARDEN_PASSES.contains(n))
        .collect()
}

pub fn find(name: &str) -> Option<&'static dyn Pass> {
    REGISTRY.iter().copied().find(|p| p.name() == name)
}

/// The `--harden` passes, added to the default pipeline by `--harden`.
pub const HARDEN_PASSES: &[&str] = &["heap-canary", "bounds", "stack-canary"];

/// Refuses memory64, shared and multiple memories: the hardening passes address memory 0 with
/// 32-bit offsets, and threads keep their stacks and heaps where the checks cannot see them.
pub fn refuse_unusual_memory(m: &Module<'_>) -> anyhow::Result<()> {
    match m.memories.as_slice() {
        [] => Ok(()),
        [mem] if mem.memory64 => anyhow::bail!("memory is 64-bit (memory64): not supported"),
        [mem] if mem.shared => anyhow::bail!(
            "memory is shared (threads): per-thread stacks and heaps are not supported"
        ),
        [_] => Ok(()),
        more => anyhow::bail!("the module has {} memories: not supported", more.len()),
    }
}

/// A 32-bit aligned access to memory 0 at `offset`.
pub fn word(offset: u64) -> wasm_encoder::MemArg {
    wasm_encoder::MemArg {
        offset,
        align: 2,
        target: wasm_encoder::MemArgTarget::Memory(0),
        ordering: None,
    }
}
