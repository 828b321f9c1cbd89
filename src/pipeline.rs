//! One run: read, validate, establish facts, run the passes, emit, validate the result.
//!
//! [`rewrite_staged`] validates the result on another thread while its caller writes it out
//! (the CLI's staged file). The output's bytes are the same either way: they are complete
//! before either thread starts, and both only read them; the threads decide only whether the
//! caller may publish what it wrote, which it may only after the validation succeeded.
//!
//! While the emitter makes the output, another thread checks the re-encoded and new bodies
//! it is sent ([`validate::EarlyBodies`]); the output's validation then checks those it did
//! not get to. The output is the same whichever thread checked a body: the emitter only sends
//! copies of what it wrote, and nothing it does waits on or depends on that thread.

use crate::edit::Edits;
use crate::facts::Facts;
use crate::module::Module;
use crate::passes::{Pass, PassCx, PassOptions, PassReport};
use crate::{emit, validate};

/// Why a run produced nothing. Each maps to an exit status in the CLI.
#[derive(Debug)]
pub enum Failure {
    /// Not a module wasmfix can read: empty, truncated, not wasm, invalid, a component.
    BadInput(anyhow::Error),
    /// A pass cannot establish a fact it needs, or the module uses what it cannot rewrite.
    Refused {
        pass: &'static str,
        error: anyhow::Error,
    },
    /// wasmfix produced an invalid module or failed to encode one: a bug.
    Internal(anyhow::Error),
    /// The options contradict the input (`--disable-X` of a feature the input uses).
    Usage(anyhow::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadInput(e) | Failure::Usage(e) => write!(f, "{}", one_line(e)),
            Failure::Refused { pass, error } => write!(f, "{pass}: {}", one_line(error)),
            Failure::Internal(e) => {
                write!(
                    f,
                    "internal error (a wasmfix bug, please report it): {}",
                    one_line(e)
                )
            }
        }
    }
}

/// An error chain as one line: `outer: inner: root`.
pub fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ").replace('\n', " ")
}

pub struct Outcome {
    pub bytes: Vec<u8>,
    pub reports: Vec<PassReport>,
    /// Function bodies that were re-encoded.
    pub rewritten_functions: usize,
    /// Where the input's code went, when the code moved and DWARF or `PassOptions::code_map`
    /// asked for it.
    pub code_map: Option<crate::codemap::CodeMap>,
    /// What happened to the module's debug info (DWARF, external DWARF, source map).
    pub debug_info: DebugInfoReport,
    /// Features the output uses that the input did not (the user enabled them).
    pub added_features: crate::features::FeatureSet,
    /// What the input uses (its validation finds it: always known).
    pub input_features: Option<crate::features::InputFeatures>,
}

/// What happened to a module's debug info, for `--report` and warnings.
#[derive(Debug, Default, serde::Serialize)]
pub struct DebugInfoReport {
    /// `none`, `unchanged` (the code did not move), `updated`, or `stale` (copied unchanged
    /// although the code moved: `--no-dwarf-update`).
    pub dwarf: &'static str,
    /// What the update changed, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::dwarf::Updated>,
    pub external_debug_info: Option<String>,
    pub source_map_url: Option<String>,
    /// What the user should know: debug info wasmfix could not update.
    pub warnings: Vec<String>,
}

impl DebugInfoReport {
    /// One line for `-v`, if there is debug info at all.
    pub fn summary(&self) -> Option<String> {
        match (self.dwarf, &self.update) {
            ("none", _) => None,
            ("updated", Some(u)) => Some(format!(
                "DWARF updated: {} units, {} addresses, {} line programs rewritten",
                u.units, u.addresses, u.line_programs
            )),
            ("unchanged", _) => Some("DWARF unchanged: the code did not move".into()),
            (other, _) => Some(format!("DWARF {other}")),
        }
    }
}

/// Reads and validates `input`, or says why it is bad input.
pub fn read(input: &[u8]) -> Result<Module<'_>, Failure> {
    let module = Module::parse(input).map_err(Failure::BadInput)?;
    validate::validate(input, None, validate::features()).map_err(|e| invalid(input, e))?;
    Ok(module)
}

/// Reads and validates `input` and establishes its facts (the code facts on the way).
pub fn load(input: &[u8]) -> Result<(Module<'_>, Facts), Failure> {
    // The model's parse and the validation of the sections are each one pass over the module
    // on one core: they run side by side, then the bodies are validated on every core. A
    // parse error comes first, as when they ran one after the other.
    let (sections, module) = side_by_side(
        || validate::validate_input_sections(input),
        || Module::parse(input),
    );
    let module = module.map_err(Failure::BadInput)?;
    let sections = sections.map_err(|e| invalid(input, e))?;
    // The name section's names (16 MB of them on yosys.wasm) are read beside the bodies.
    let (names, code) = side_by_side(
        || crate::facts::SectionNames::read(&module),
        || validate::validate_input_bodies(&module, sections),
    );
    let code = code.map_err(|e| invalid(input, e))?;
    let facts = Facts::with_code(&module, code, names);
    Ok((module, facts))
}

/// Runs `there` on a thread of its own while `here` runs on this one, and returns both
/// results; a panic on the other thread goes on here once `here` is done.
fn side_by_side<A: Send, B>(there: impl FnOnce() -> A + Send, here: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|s| {
        let there = s.spawn(there);
        let here = here();
        let there = there
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (there, here)
    })
}

/// Why `input` did not validate (`e`): it is invalid, or valid only with a proposal wasmfix
/// cannot name (so passes could not tell what the output may use), which it says rather than
/// call the module invalid.
fn invalid(input: &[u8], e: anyhow::Error) -> Failure {
    let unsupported = validate::validate(input, None, wasmparser::WasmFeatures::all()).is_ok();
    Failure::BadInput(e.context(if unsupported {
        "uses a WebAssembly proposal wasmfix does not support"
    } else {
        "invalid module"
    }))
}

/// Runs `passes` over `input` and returns the validated output as one buffer.
pub fn run(input: &[u8], passes: &[&dyn Pass], options: &PassOptions) -> Result<Outcome, Failure> {
    rewrite(input, passes, options).map(Rewritten::into_outcome)
}

/// A validated output module that is not one buffer: the pieces of [`emit::Output`] over the
/// input (or over its patched copy). Writing it streams the pieces, so the rewrite never holds
/// two copies of the module.
pub struct Rewritten<'a> {
    /// What the output's input ranges point into: the input, or its patched copy.
    source: std::borrow::Cow<'a, [u8]>,
    output: emit::Output,
    pub reports: Vec<PassReport>,
    /// Function bodies that were re-encoded.
    pub rewritten_functions: usize,
    /// See [`Outcome::code_map`].
    pub code_map: Option<crate::codemap::CodeMap>,
    pub debug_info: DebugInfoReport,
    /// See [`Outcome::added_features`].
    pub added_features: crate::features::FeatureSet,
    /// See [`Outcome::input_features`].
    pub input_features: Option<crate::features::InputFeatures>,
}

impl Rewritten<'_> {
    /// Length of the output module in bytes.
    pub fn len(&self) -> usize {
        self.output.len()
    }

    pub fn is_empty(&self) -> bool {
        self.output.is_empty()
    }

    /// Writes the output module to `w`, piece by piece.
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        self.output.write_to(&self.source, w)
    }

    /// The output as one buffer, with the rest of what the run found.
    pub fn into_outcome(self) -> Outcome {
        Outcome {
            bytes: self.output.to_vec(&self.source),
            reports: self.reports,
            rewritten_functions: self.rewritten_functions,
            code_map: self.code_map,
            debug_info: self.debug_info,
            added_features: self.added_features,
            input_features: self.input_features,
        }
    }
}

/// Runs `passes` over `input` and returns the validated output, in pieces.
pub fn rewrite<'a>(
    input: &'a [u8],
    passes: &[&dyn Pass],
    options: &PassOptions,
) -> Result<Rewritten<'a>, Failure> {
    let unchecked = rewrite_unchecked(input, passes, options)?;
    unchecked.validate()?;
    Ok(unchecked.rewritten)
}

/// [`rewrite`], with the output's validation on another thread while `stage` runs on this one
/// with the (not yet validated) output: the CLI writes its temporary file meanwhile.
///
/// `stage`'s result comes back only beside a validated output. When validation fails it is
/// dropped here and the failure returned, so whatever `stage` prepares must stay invisible
/// until the caller, holding an `Ok`, publishes it, and must undo itself when dropped (the
/// CLI's staged file is renamed into place only on commit and removed on drop). Nothing
/// unvalidated can reach a place the caller did not choose to publish.
pub fn rewrite_staged<'a, S>(
    input: &'a [u8],
    passes: &[&dyn Pass],
    options: &PassOptions,
    stage: impl FnOnce(&Rewritten<'a>) -> S,
) -> Result<(Rewritten<'a>, S), Failure> {
    let mut unchecked = rewrite_unchecked(input, passes, options)?;
    let facts = unchecked.facts.take();
    // A panicking validator is a bug like an invalid output: the panic goes on, nothing is
    // published.
    let ((), (valid, staged)) = side_by_side(
        move || drop(facts),
        || side_by_side(|| unchecked.validate(), || stage(&unchecked.rewritten)),
    );
    valid?;
    Ok((unchecked.rewritten, staged))
}

/// An output before its validation: which bodies must be checked, with which features.
struct Unchecked<'a> {
    rewritten: Rewritten<'a>,
    /// Per defined function of the input: its body was re-encoded or patched.
    check: Vec<bool>,
    /// The output's function bodies (Code section indices, ascending) checked while they were
    /// emitted.
    early: Vec<u32>,
    features: wasmparser::WasmFeatures,
    /// The input's facts, no longer needed: returned so that [`rewrite_staged`] can free them
    /// (many small tables: ~10 ms on yosys.wasm) beside its other work.
    facts: Option<Facts>,
}

impl Unchecked<'_> {
    /// Validates the output, but for the input's bodies copied unchanged (see [`validate`]).
    fn validate(&self) -> Result<(), Failure> {
        let defined = self.check.len() as u32;
        let must_check = |i: u32| {
            (i >= defined || self.check[i as usize]) && self.early.binary_search(&i).is_err()
        };
        let r = &self.rewritten;
        let pieces = r.output.slices_without_custom(&r.source);
        validate::validate_pieces(&pieces, Some(&must_check), self.features)
            .map_err(|e| Failure::Internal(e.context("the rewritten module does not validate")))
    }
}

/// Runs the passes and emits the output: [`rewrite`] without its last step.
///
/// Under `--harden`, heap-canary is the one pass whose failure is a warning rather than a
/// refusal, and the one that moves function bodies (malloc's and free's go to the end of the
/// code). When the DWARF cannot follow that move (binaryen writes one address range per
/// compile unit: [`crate::dwarf::SpansMovedBody`]), which only emitting can tell, the run is
/// made again without heap-canary, and its report says why heap blocks are not checked.
fn rewrite_unchecked<'a>(
    input: &'a [u8],
    passes: &[&dyn Pass],
    options: &PassOptions,
) -> Result<Unchecked<'a>, Failure> {
    let refused = match rewrite_once(input, passes, options) {
        Err(Failure::Refused {
            pass: "dwarf",
            error,
        }) => error,
        done => return done,
    };
    let heap_canary = passes.iter().position(|p| p.name() == "heap-canary");
    let moved = refused
        .downcast_ref::<crate::dwarf::CannotUpdate>()
        .is_some_and(|c| c.spans_moved_body());
    let (true, true, Some(at)) = (options.harden, moved, heap_canary) else {
        return Err(Failure::Refused {
            pass: "dwarf",
            error: refused,
        });
    };
    let others: Vec<&dyn Pass> = passes
        .iter()
        .copied()
        .filter(|p| p.name() != "heap-canary")
        .collect();
    let mut unchecked = rewrite_once(input, &others, options)?;
    unchecked.rewritten.reports.insert(
        at,
        crate::passes::heap_canary::not_applied(
            "the DWARF debug info has an address range over malloc's or free's body and other \
             code (binaryen writes one per compile unit), which cannot follow their bodies to \
             the end of the code: strip it (llvm-strip --strip-debug) or run wasmfix before \
             wasm-opt to check heap blocks",
        ),
    );
    Ok(unchecked)
}

fn rewrite_once<'a>(
    input: &'a [u8],
    passes: &[&dyn Pass],
    options: &PassOptions,
) -> Result<Unchecked<'a>, Failure> {
    let (module, facts) = load(input)?;
    // Established already: the passes find them so (see `PassCx::facts`).
    let facts = std::sync::OnceLock::from(facts);
    let f = facts.get().expect("just set");
    let choice = &options.features;
    if !choice.disabled.is_empty() {
        crate::features::RunFeatures::new(f.features(&module), choice).map_err(Failure::Usage)?;
    }
    let mut edits = Edits::default();
    let mut reports = Vec::new();
    for pass in passes {
        let mut cx = PassCx {
            module: &module,
            facts: &facts,
            edits: &mut edits,
            options,
        };
        let report = pass.run(&mut cx).map_err(|error| Failure::Refused {
            pass: pass.name(),
            error,
        })?;
        reports.push(report);
    }
    // The messages' text, now that every pass has stored its own: in a passive segment when
    // the run allows bulk memory, else written by code (see `diag`).
    if edits.diagnostics.is_some() {
        let mut cx = PassCx {
            module: &module,
            facts: &facts,
            edits: &mut edits,
            options,
        };
        let bulk_memory =
            !options.messages_in_code && cx.allows(crate::features::Feature::BulkMemory);
        if bulk_memory {
            cx.use_feature(crate::features::Feature::BulkMemory, "messages")
                .map_err(Failure::Internal)?;
        }
        crate::diag::finish(&module, &mut edits, bulk_memory);
    }
    if !edits.applied.is_empty() {
        let mut applied = crate::facts::applied(&module);
        applied.extend(std::mem::take(&mut edits.applied));
        let contents = serde_json::to_vec(&applied).expect("serializable");
        let section = wasm_encoder::CustomSection {
            name: crate::facts::APPLIED_SECTION.into(),
            data: contents.into(),
        };
        match module
            .sections
            .iter()
            .position(|s| s.custom_name == Some(crate::facts::APPLIED_SECTION))
        {
            Some(i) => edits.replace_custom(i, &section),
            None => edits.append_custom(&section),
        }
    }
    // The output is validated with the input's features plus those the passes recorded, so a
    // pass cannot make the module need more of an engine than the input did without saying so.
    let output_features = if edits.changes_code_or_structure() {
        let input_features = f.features(&module);
        if !edits.used_features.is_empty()
            && let Some(current) = crate::features::target_features(&module)
            && let Some(data) =
                crate::features::updated_target_features(&current, edits.used_features)
        {
            let index = module
                .sections
                .iter()
                .position(|s| s.custom_name == Some("target_features"))
                .expect("target_features was read from this section");
            let section = wasm_encoder::CustomSection {
                name: "target_features".into(),
                data: data.into(),
            };
            edits.replace_custom(index, &section);
        }
        input_features
            .used
            .union(edits.used_features)
            .closed()
            .wasm_features()
    } else {
        validate::features()
    };
    let added_features = edits.used_features;
    let input_features = Some(f.features(&module).clone());
    // Same-length patches (relocated immediates) go into a copy of the input; every offset in
    // the module model stays valid, so the copy is read as the same module.
    let source: std::borrow::Cow<'a, [u8]> = if edits.patches.is_empty() {
        std::borrow::Cow::Borrowed(input)
    } else {
        let mut copy = input.to_vec();
        for (at, bytes) in &edits.patches {
            copy[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        std::borrow::Cow::Owned(copy)
    };
    let checked_early;
    let (output, mut emitted, debug) = {
        let patched_module;
        let emitted_from = if edits.patches.is_empty() {
            &module
        } else {
            patched_module = Module::parse(&source).map_err(Failure::Internal)?;
            &patched_module
        };
        let mut output = emit::Output::default();
        let debug = crate::facts::debug_info(emitted_from);
        let update_dwarf = !options.no_dwarf_update && !debug.dwarf_sections.is_empty();
        // A map is built only when debug info needs one: modules without it pay nothing.
        let emit_options = emit::EmitOptions {
            code_map: update_dwarf || options.code_map || !debug.is_empty(),
            update_dwarf,
        };
        let code = f.code(&module);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let early = validate::EarlyBodies {
            features: output_features,
            stop: &stop,
        };
        let (sender, received) = std::sync::mpsc::sync_channel(EARLY_QUEUE);
        let (checked, emitted) = side_by_side(
            || early.run(received),
            || {
                let mut sink = ToEarly(sender);
                let emitted = emit::emit(
                    emitted_from,
                    &mut edits,
                    code,
                    &mut output,
                    emit_options,
                    Some(&mut sink),
                );
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                emitted
            },
        );
        checked_early = checked;
        let emitted = emitted.map_err(|e| {
            if e.is::<crate::dwarf::CannotUpdate>() {
                Failure::Refused {
                    pass: "dwarf",
                    error: e,
                }
            } else {
                Failure::Internal(e)
            }
        })?;
        (output, emitted, debug)
    };

    let defined = module.bodies.len() as u32;
    let mut check = vec![false; defined as usize];
    for &f in &emitted.rewritten_functions {
        check[(f - module.imported_funcs) as usize] = true;
    }
    // Patched bodies are not the validated input's bytes any more: check them too.
    for (at, _) in &edits.patches {
        let body = module
            .bodies
            .partition_point(|b| (b.range().end as usize) <= *at);
        if let Some(b) = module.bodies.get(body)
            && Module::body_range(b).contains(at)
        {
            check[body] = true;
        }
    }
    let debug_info = debug_info_report(debug, &mut emitted, options);
    // The edits borrow the facts, which leave with the output.
    drop(edits);
    Ok(Unchecked {
        rewritten: Rewritten {
            source,
            output,
            reports,
            rewritten_functions: emitted.rewritten_functions.len(),
            code_map: emitted.code_map,
            debug_info,
            added_features,
            input_features,
        },
        check,
        early: checked_early,
        features: output_features,
        facts: facts.into_inner(),
    })
}

/// How many bodies may wait for [`validate::EarlyBodies`]: the copies it holds stay few.
const EARLY_QUEUE: usize = 256;

/// Sends the emitter's bodies to [`validate::EarlyBodies`] without ever waiting: a body that
/// finds the queue full (the checker is behind) or closed (it stopped) is not sent, and the
/// output's validation checks it.
struct ToEarly(std::sync::mpsc::SyncSender<validate::Early>);

impl emit::BodySink for ToEarly {
    fn prefix(&mut self, pieces: Vec<&[u8]>) {
        // The first message: the queue is empty.
        let _ = self.0.try_send(validate::Early::Prefix(pieces.concat()));
    }

    fn body(&mut self, k: u32, bytes: Vec<u8>) {
        let _ = self.0.try_send(validate::Early::Body(k, bytes));
    }
}

fn debug_info_report(
    facts: crate::facts::DebugInfoFacts,
    emitted: &mut emit::Emitted,
    options: &PassOptions,
) -> DebugInfoReport {
    let map = emitted.code_map.as_ref();
    let code_moved = map.is_some_and(|m| !m.is_identity());
    let file_offsets_moved =
        map.is_some_and(|m| code_moved || m.old_code_start != m.new_code_start);
    let mut warnings = Vec::new();
    let dwarf = if facts.dwarf_sections.is_empty() {
        "none"
    } else if emitted.dwarf.is_some() {
        "updated"
    } else if code_moved {
        warnings.push(
            "DWARF copied unchanged (--no-dwarf-update): its code addresses no longer match"
                .to_string(),
        );
        "stale"
    } else {
        "unchanged"
    };
    if let Some(url) = &facts.external_debug_info
        && code_moved
    {
        warnings.push(format!(
            "the module's DWARF is in a separate file ({url}), which wasmfix cannot update: \
             its code addresses no longer match this module"
        ));
    }
    if let Some(url) = &facts.source_map_url
        && file_offsets_moved
        && !options.code_map
    {
        warnings.push(format!(
            "the module's source map ({url}) no longer matches: rewrite it with --source-map"
        ));
    }
    DebugInfoReport {
        dwarf,
        update: emitted.dwarf.take(),
        external_debug_info: facts.external_debug_info,
        source_map_url: facts.source_map_url,
        warnings,
    }
}
