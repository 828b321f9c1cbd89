//! Components as input: every core module inside a component (nested components included) goes
//! through the pipeline as a module on its own would, and everything else is copied byte for
//! byte.
//!
//! A component's sections are walked in order. A core module section whose module the pipeline
//! changed is written again (id, new size, the new module); every other section, and every
//! module the pipeline gave back unchanged, is copied byte for byte, so `--passes none` gives
//! back the input. Core modules keep their places, hence their indices, and the component uses
//! their items by export name: passes may add exports but never imports, so the component's
//! instantiations still fit. The result is validated as a whole before anything is written.
//!
//! `adapter-memory` does not run inside a component: there the preview1 adapter is already
//! linked to the allocator `wasm-tools component new` chose. Run wasmfix on the module before
//! `component new` instead.

use crate::passes::{Pass, PassOptions};
use crate::pipeline::{self, Failure, Outcome};
use anyhow::{Result, anyhow};
use std::ops::Range;
use wasm_encoder::Encode;
use wasmparser::{Chunk, Parser, Payload};

/// Whether `bytes` start like a component (binary version 0x0d, layer 1) rather than a module.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// A core module inside a component: where it is and what to call it in messages.
#[derive(Debug, Clone)]
pub struct CoreModule {
    /// `core module 0`, `component 1: core module 0` (nested), with the module's own name from
    /// its name section when it has one.
    pub label: String,
    /// Its bytes in the component.
    pub range: Range<usize>,
}

/// What happened to one core module of a component.
pub struct ModuleRun {
    pub label: String,
    pub outcome: Outcome,
}

pub struct ComponentOutcome {
    pub bytes: Vec<u8>,
    pub modules: Vec<ModuleRun>,
    /// What the user should know about the component as a whole.
    pub warnings: Vec<String>,
}

/// Every core module of the component `bytes`, nested components' included, in order.
pub fn core_modules(bytes: &[u8]) -> Result<Vec<CoreModule>, Failure> {
    validate(bytes).map_err(|e| Failure::BadInput(e.context("invalid component")))?;
    let mut out = Vec::new();
    walk(bytes, 0, "", &mut |m| {
        out.push(m);
        Ok(None)
    })?;
    Ok(out)
}

/// Runs `passes` over every core module of the component `input` and returns the validated
/// component.
pub fn run(
    input: &[u8],
    passes: &[&dyn Pass],
    options: &PassOptions,
) -> Result<ComponentOutcome, Failure> {
    validate(input).map_err(|e| Failure::BadInput(e.context("invalid component")))?;
    let passes: Vec<&dyn Pass> = passes
        .iter()
        .copied()
        .filter(|p| p.name() != "adapter-memory")
        .collect();
    let mut modules = Vec::new();
    let mut warnings = Vec::new();
    let bytes = walk(input, 0, "", &mut |m| {
        let module = &input[m.range.clone()];
        let outcome = pipeline::run(module, &passes, options).map_err(|f| inside(f, &m.label))?;
        if adapted_unsafely(module) {
            warnings.push(format!(
                "{}: {}; here the adapter is linked already: run wasmfix on the module before \
                 `wasm-tools component new`",
                m.label,
                crate::inspect::ADAPTER_HAZARD
                    .split(';')
                    .next()
                    .unwrap_or_default()
            ));
        }
        let changed = outcome.bytes != module;
        let new = changed.then(|| outcome.bytes.clone());
        modules.push(ModuleRun {
            label: m.label,
            outcome,
        });
        Ok(new)
    })?;
    validate(&bytes)
        .map_err(|e| Failure::Internal(e.context("the rewritten component does not validate")))?;
    Ok(ComponentOutcome {
        bytes,
        modules,
        warnings,
    })
}

/// Whether `module` (valid: the pipeline read it) has the preview1 adapter hazard.
fn adapted_unsafely(module: &[u8]) -> bool {
    let Ok(m) = crate::module::Module::parse(module) else {
        return false;
    };
    crate::inspect::adapter_hazard(&m, &crate::facts::Facts::new(&m))
}

/// A failure in one core module, naming it.
fn inside(f: Failure, label: &str) -> Failure {
    match f {
        Failure::BadInput(e) => Failure::BadInput(e.context(label.to_string())),
        Failure::Refused { pass, error } => Failure::Refused {
            pass,
            error: error.context(label.to_string()),
        },
        Failure::Internal(e) => Failure::Internal(e.context(label.to_string())),
        Failure::Usage(e) => Failure::Usage(e.context(label.to_string())),
    }
}

/// Validates a component with everything wasmparser knows, the component model included (the
/// core modules inside are validated again by the pipeline, each with exactly its features).
fn validate(bytes: &[u8]) -> Result<()> {
    let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    v.validate_all(bytes)
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

/// Walks the sections of the component `bytes` (which start at `base` in the outermost input),
/// calling `visit` for every core module, nested ones included; `visit` returns the module's
/// new bytes, if it changed. Returns the component with the changed modules in place: sections
/// are copied byte for byte except the core module and component sections whose contents
/// changed.
fn walk(
    bytes: &[u8],
    base: usize,
    prefix: &str,
    visit: &mut dyn FnMut(CoreModule) -> Result<Option<Vec<u8>>, Failure>,
) -> Result<Vec<u8>, Failure> {
    let malformed = |e: wasmparser::BinaryReaderError| Failure::BadInput(anyhow!("{e}"));
    let mut out = Vec::with_capacity(bytes.len());
    let mut parser = Parser::new(0);
    let mut pos = 0usize;
    let (mut modules, mut components) = (0usize, 0usize);
    loop {
        let start = pos;
        let (payload, consumed) = match parser.parse(&bytes[pos..], true).map_err(malformed)? {
            Chunk::Parsed { payload, consumed } => (payload, consumed),
            Chunk::NeedMoreData(_) => unreachable!("the whole input is given"),
        };
        pos += consumed;
        match payload {
            Payload::Version { .. } => out.extend_from_slice(&bytes[start..pos]),
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                let contents = unchecked_range.start as usize..unchecked_range.end as usize;
                pos = contents.end;
                let name = module_name(&bytes[contents.clone()]);
                let label = format!(
                    "{prefix}core module {modules}{}",
                    name.map_or(String::new(), |n| format!(" ({n})"))
                );
                modules += 1;
                let module = CoreModule {
                    label,
                    range: base + contents.start..base + contents.end,
                };
                match visit(module)? {
                    Some(new) => push_section(&mut out, 1, &new),
                    None => out.extend_from_slice(&bytes[start..pos]),
                }
            }
            Payload::ComponentSection {
                unchecked_range, ..
            } => {
                let contents = unchecked_range.start as usize..unchecked_range.end as usize;
                pos = contents.end;
                let nested = &bytes[contents.clone()];
                let label = format!("{prefix}component {components}: ");
                components += 1;
                let new = walk(nested, base + contents.start, &label, visit)?;
                if new == nested {
                    out.extend_from_slice(&bytes[start..pos]);
                } else {
                    push_section(&mut out, 4, &new);
                }
            }
            Payload::End(_) => {
                if pos != bytes.len() {
                    return Err(Failure::BadInput(anyhow!(
                        "{} bytes after the end of the component",
                        bytes.len() - pos
                    )));
                }
                return Ok(out);
            }
            _ => out.extend_from_slice(&bytes[start..pos]),
        }
    }
}

/// Appends a section: its id, then `contents` with their size.
fn push_section(out: &mut Vec<u8>, id: u8, contents: &[u8]) {
    out.push(id);
    contents.encode(out);
}

/// The module name recorded in a core module's name section, if any.
fn module_name(module: &[u8]) -> Option<String> {
    for payload in Parser::new(0).parse_all(module) {
        let Ok(Payload::CustomSection(c)) = payload else {
            continue;
        };
        if let wasmparser::KnownCustom::Name(reader) = c.as_known() {
            for sub in reader.into_iter().flatten() {
                if let wasmparser::Name::Module { name, .. } = sub {
                    return Some(name.to_string());
                }
            }
        }
    }
    None
}
