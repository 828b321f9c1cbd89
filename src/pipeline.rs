//! One run: read, validate, establish facts, run the passes, emit, validate the result.

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
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadInput(e) => write!(f, "{}", one_line(e)),
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
    /// What the DWARF update did, when it ran.
    pub dwarf: Option<crate::dwarf::Updated>,
}

/// Reads and validates `input`, or says why it is bad input.
pub fn read(input: &[u8]) -> Result<Module<'_>, Failure> {
    let module = Module::parse(input).map_err(Failure::BadInput)?;
    validate::validate(input, None).map_err(|e| Failure::BadInput(e.context("invalid module")))?;
    Ok(module)
}

/// Reads and validates `input` and establishes its facts.
pub fn load(input: &[u8]) -> Result<(Module<'_>, Facts), Failure> {
    let module = read(input)?;
    let facts = Facts::new(&module);
    Ok((module, facts))
}

/// Runs `passes` over `input` and returns the validated output.
pub fn run(input: &[u8], passes: &[&dyn Pass], options: &PassOptions) -> Result<Outcome, Failure> {
    let module = read(input)?;
    let facts = std::sync::OnceLock::new();
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
    // Same-length patches (relocated immediates) go into a copy of the input; every offset in
    // the module model stays valid, so the copy is read as the same module.
    let patched: Vec<u8>;
    let patched_module;
    let source = if edits.patches.is_empty() {
        &module
    } else {
        let mut copy = input.to_vec();
        for (at, bytes) in &edits.patches {
            copy[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        patched = copy;
        patched_module = Module::parse(&patched).map_err(Failure::Internal)?;
        &patched_module
    };
    let mut bytes = Vec::new();
    let has_dwarf = !options.no_dwarf_update && crate::dwarf::present(source);
    let emit_options = emit::EmitOptions {
        code_map: has_dwarf || options.code_map,
        update_dwarf: has_dwarf,
    };
    let emitted = emit::emit(source, &mut edits, &mut bytes, emit_options).map_err(|e| {
        if e.is::<crate::dwarf::CannotUpdate>() {
            Failure::Refused {
                pass: "dwarf",
                error: e,
            }
        } else {
            Failure::Internal(e)
        }
    })?;

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
    let must_check = |i: u32| i >= defined || check[i as usize];
    validate::validate(&bytes, Some(&must_check))
        .map_err(|e| Failure::Internal(e.context("the rewritten module does not validate")))?;
    Ok(Outcome {
        bytes,
        reports,
        rewritten_functions: emitted.rewritten_functions.len(),
        code_map: emitted.code_map,
        dwarf: emitted.dwarf,
    })
}
