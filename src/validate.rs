//! Validation with `wasmparser::Validator`, function bodies checked on every core.
//!
//! The input is validated in full ([`validate_input`]), and the facts' walk over the code rides
//! along: the validator decodes each operator once and shows it to the walk
//! ([`crate::facts::CodeWalk`]) before checking it.
//!
//! The output is validated in full except for function bodies copied byte for byte from an
//! input that was itself validated: the emitter only *appends* types, functions, tables,
//! globals and segments, so every index such a body uses means the same thing and has the same
//! type in the output, and its validity cannot change. Every re-encoded or new body is checked.
//!
//! The output's new bodies can be checked while they are made ([`EarlyBodies`]): a body's
//! validity depends only on the sections before the Code section (types, imports, functions,
//! tables, memories, tags, globals, exports, start, elements, data count), which the emitter has
//! written by then. A body checked so, against exactly those bytes of the output and with the
//! output's features, need not be checked again in the output's validation.

use crate::facts::{CodeFacts, CodeWalk};
use crate::module::Module;
use anyhow::{Result, anyhow};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use wasmparser::{
    BinaryReader, Chunk, FuncToValidate, FuncValidator, FuncValidatorAllocations, FunctionBody,
    Parser, Payload, ValidPayload, Validator, ValidatorResources, WasmFeatures,
};

/// The features wasmfix accepts in its input: every proposal it can name (see
/// [`crate::features::Feature`]), so that what the input uses is always a set of those.
pub fn features() -> WasmFeatures {
    crate::features::FeatureSet::all().wasm_features()
}

/// A function body and what its validator needs.
type Func<'a> = (FuncToValidate<ValidatorResources>, FunctionBody<'a>);

/// Validates `bytes` with `features`. `check_body(i)` says whether the i-th defined function
/// body must be checked (all of them when `None`).
pub fn validate(
    bytes: &[u8],
    check_body: Option<&dyn Fn(u32) -> bool>,
    features: WasmFeatures,
) -> Result<()> {
    validate_pieces(&[bytes], check_body, features)
}

/// [`validate`] for a module given as consecutive pieces (the emitter's output, which is
/// never concatenated). Each section, and each function body of the Code section, must lie
/// whole in one piece: the parser reads them in place.
pub fn validate_pieces(
    pieces: &[&[u8]],
    check_body: Option<&dyn Fn(u32) -> bool>,
    features: WasmFeatures,
) -> Result<()> {
    let funcs = validate_sections(pieces, check_body, features)?;
    on_threads(funcs, |share| {
        let mut allocs = FuncValidatorAllocations::default();
        for (f, body) in share {
            let mut v = f.into_validator(allocs);
            v.validate(&body).map_err(located)?;
            allocs = v.into_allocations();
        }
        Ok(())
    })?;
    Ok(())
}

/// Validates the input module `m` (as [`validate`] with [`features`]) and establishes its
/// code facts on the way: each body is decoded once, for both.
pub fn validate_input(m: &Module<'_>) -> Result<CodeFacts> {
    validate_input_bodies(m, validate_input_sections(m.bytes)?)
}

/// An input whose sections validated, with its function bodies still to check.
pub struct InputSections<'a>(Vec<Func<'a>>);

/// The first half of [`validate_input`]: everything but the function bodies. It needs only
/// the bytes, so it can run beside [`Module::parse`] (both are single-threaded).
pub fn validate_input_sections(bytes: &[u8]) -> Result<InputSections<'_>> {
    validate_sections(&[bytes], None, features()).map(InputSections)
}

/// The second half of [`validate_input`]: the bodies of `sections`, which must be those of
/// `m`, on every core, with the code facts.
pub fn validate_input_bodies(m: &Module<'_>, sections: InputSections<'_>) -> Result<CodeFacts> {
    let funcs = sections.0;
    let address_globals = CodeWalk::address_globals(m);
    let shares = on_threads(funcs, |share| {
        let mut walk = CodeWalk::new(m.bytes, &address_globals);
        let mut allocs = FuncValidatorAllocations::default();
        for (f, body) in share {
            walk.start_function(f.index);
            let mut v = f.into_validator(allocs);
            validate_walking(&mut v, &body, &mut walk).map_err(located)?;
            walk.end_function();
            allocs = v.into_allocations();
        }
        Ok(walk)
    })?;
    Ok(CodeWalk::merge(shares))
}

/// What `FuncValidator::validate` does, with every operator shown to `walk` first.
fn validate_walking(
    v: &mut FuncValidator<ValidatorResources>,
    body: &FunctionBody<'_>,
    walk: &mut CodeWalk<'_>,
) -> wasmparser::Result<()> {
    let mut reader = body.get_binary_reader();
    for _ in 0..reader.read_var_u32()? {
        let offset = reader.original_position();
        let count = reader.read()?;
        let ty = reader.read()?;
        walk.local(ty);
        v.define_locals(offset, count, ty)?;
    }
    reader.set_features(*v.features());
    while !reader.eof() {
        let offset = reader.original_position();
        reader.visit_operator(&mut walk.observe(offset, v.visitor(offset)))??;
    }
    reader.finish_expression(&v.visitor(reader.original_position()))
}

/// Validates everything but the function bodies, and returns the bodies `check_body` selects
/// with their validators.
fn validate_sections<'a>(
    pieces: &[&'a [u8]],
    check_body: Option<&dyn Fn(u32) -> bool>,
    features: WasmFeatures,
) -> Result<Vec<Func<'a>>> {
    let mut validator = Validator::new_with_features(features);
    let mut funcs = Vec::new();
    let mut index = 0u32;
    let mut parser = Parser::new(0);
    let mut next = 0;
    let mut data: &[u8] = &[];
    loop {
        let eof = next == pieces.len();
        let (consumed, payload) = match parser.parse(data, eof).map_err(|e| anyhow!("{e}"))? {
            Chunk::NeedMoreData(_) if data.is_empty() && !eof => {
                data = pieces[next];
                next += 1;
                continue;
            }
            Chunk::NeedMoreData(_) => {
                return Err(anyhow!(
                    "a section or function body spans two output pieces"
                ));
            }
            Chunk::Parsed { consumed, payload } => (consumed, payload),
        };
        data = &data[consumed..];
        match validator.payload(&payload).map_err(|e| anyhow!("{e}"))? {
            ValidPayload::Func(f, body) => {
                if check_body.is_none_or(|check| check(index)) {
                    funcs.push((f, body));
                }
                index += 1;
            }
            ValidPayload::End(_) => break,
            _ => {}
        }
    }
    Ok(funcs)
}

/// What [`EarlyBodies::run`] receives from the emitter (see [`crate::emit::BodySink`]).
pub enum Early {
    /// The output up to its Code section, custom sections left out.
    Prefix(Vec<u8>),
    /// The `k`-th function body of the output's Code section, without its size prefix.
    Body(u32, Vec<u8>),
}

/// Checks the output's new bodies while the emitter makes them, on a thread of its own.
pub struct EarlyBodies<'s> {
    pub features: WasmFeatures,
    /// Set when the emitter is done: the bodies not checked yet are left to the output's
    /// validation, which spreads them over every core.
    pub stop: &'s AtomicBool,
}

impl EarlyBodies<'_> {
    /// The Code section indices of the bodies received that validated, in order. A body that
    /// did not validate is left out (the output's validation then reports it, with its
    /// offset in the output), and so is every body when anything does not fit: a prefix that
    /// does not validate or is not what it should be, bodies out of order or beyond the
    /// function section. Leaving a body out only costs time: it is checked later.
    pub fn run(&self, received: Receiver<Early>) -> Vec<u32> {
        let mut validated = Vec::new();
        let Ok(Early::Prefix(prefix)) = received.recv() else {
            return validated;
        };
        let Some((mut validator, defined)) = self.prefix(&prefix) else {
            return validated;
        };
        let end = prefix.len() as u64;
        if validator.code_section_start(&(end..end)).is_err() {
            return validated;
        }
        let mut allocations = FuncValidatorAllocations::default();
        let mut next = 0u32;
        while let Ok(Early::Body(k, bytes)) = received.recv() {
            if self.stop.load(Ordering::Relaxed) || k < next || k >= defined {
                break;
            }
            // The functions before it were copied: their index and type only.
            let copied = FunctionBody::new(BinaryReader::new(&[], 0));
            while next < k {
                if validator.code_section_entry(&copied).is_err() {
                    return validated;
                }
                next += 1;
            }
            let body = FunctionBody::new(BinaryReader::new(&bytes, 0));
            let Ok(func) = validator.code_section_entry(&body) else {
                return validated;
            };
            next += 1;
            let mut v = func.into_validator(allocations);
            if v.validate(&body).is_ok() {
                validated.push(k);
            }
            allocations = v.into_allocations();
        }
        validated
    }

    /// Validates the sections of `prefix`, which must end where the Code section would
    /// start, and returns the validator and how many functions the module defines.
    fn prefix(&self, prefix: &[u8]) -> Option<(Validator, u32)> {
        let mut validator = Validator::new_with_features(self.features);
        let mut parser = Parser::new(0);
        let mut data = prefix;
        let mut defined = 0;
        loop {
            match parser.parse(data, false).ok()? {
                Chunk::NeedMoreData(_) if data.is_empty() => return Some((validator, defined)),
                Chunk::NeedMoreData(_) => return None,
                Chunk::Parsed { consumed, payload } => {
                    data = &data[consumed..];
                    match &payload {
                        Payload::FunctionSection(r) => defined = r.count(),
                        Payload::CodeSectionStart { .. }
                        | Payload::CodeSectionEntry(_)
                        | Payload::DataSection(_)
                        | Payload::End(_) => return None,
                        _ => {}
                    }
                    validator.payload(&payload).ok()?;
                }
            }
        }
    }
}

/// An error with its offset, to report the first one in the module.
fn located(e: wasmparser::BinaryReaderError) -> (u64, String) {
    (e.offset(), e.to_string())
}

/// Runs `work` over shares of `funcs`, one per core (all of them at once when there are few),
/// and returns each share's result. On errors, the one at the lowest offset is returned, as a
/// sequential validator would report it.
fn on_threads<'a, R: Send>(
    funcs: Vec<Func<'a>>,
    work: impl Fn(Vec<Func<'a>>) -> Result<R, (u64, String)> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if funcs.len() < 64 || threads == 1 {
        return work(funcs)
            .map(|r| vec![r])
            .map_err(|(_, msg)| anyhow!("{msg}"));
    }
    // Interleave so large and small functions spread evenly over the threads.
    let mut shares: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, f) in funcs.into_iter().enumerate() {
        shares[i % threads].push(f);
    }
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| s.spawn(move || work(share)))
            .collect();
        let mut results = Vec::new();
        let mut first: Option<(u64, String)> = None;
        for h in handles {
            match h.join().expect("validator thread panicked") {
                Ok(r) => results.push(r),
                Err(e) => {
                    if first.as_ref().is_none_or(|f| e.0 < f.0) {
                        first = Some(e);
                    }
                }
            }
        }
        match first {
            Some((_, msg)) => Err(anyhow!("{msg}")),
            None => Ok(results),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`EarlyBodies`] over `wat`'s sections before its Code section and `bodies`.
    fn checked_early(wat: &str, bodies: Vec<(u32, Vec<u8>)>) -> Vec<u32> {
        let bytes = wat::parse_str(wat).unwrap();
        let module = Module::parse(&bytes).unwrap();
        let code = module.sections.iter().find(|s| s.id == 10).unwrap();
        let (sender, received) = std::sync::mpsc::channel();
        sender
            .send(Early::Prefix(bytes[..code.whole.start].to_vec()))
            .unwrap();
        for (k, body) in bodies {
            sender.send(Early::Body(k, body)).unwrap();
        }
        drop(sender);
        let stop = AtomicBool::new(false);
        EarlyBodies {
            features: features(),
            stop: &stop,
        }
        .run(received)
    }

    const TWO_FUNCTIONS: &str = r#"(module
        (func (result i32) i32.const 1)
        (func (param i64) (result i64) local.get 0))"#;
    /// No locals, `i32.const 7`, end.
    const RETURNS_I32: [u8; 4] = [0x00, 0x41, 0x07, 0x0b];

    #[test]
    fn a_body_is_checked_against_its_own_function_type() {
        // Valid as function 0, invalid as function 1 (an i32 where an i64 is returned).
        let bodies = vec![(0, RETURNS_I32.to_vec()), (1, RETURNS_I32.to_vec())];
        assert_eq!(checked_early(TWO_FUNCTIONS, bodies), [0]);
        // Function 0 skipped (copied): function 1 still gets its own type.
        let bodies = vec![(1, RETURNS_I32.to_vec())];
        assert_eq!(checked_early(TWO_FUNCTIONS, bodies), [] as [u32; 0]);
        let bodies = vec![(1, vec![0x00, 0x20, 0x00, 0x0b])];
        assert_eq!(checked_early(TWO_FUNCTIONS, bodies), [1]);
    }

    #[test]
    fn what_does_not_fit_is_left_to_the_output_validation() {
        // Beyond the function section, out of order, or the same body twice: nothing more.
        let beyond = vec![(0, RETURNS_I32.to_vec()), (2, RETURNS_I32.to_vec())];
        assert_eq!(checked_early(TWO_FUNCTIONS, beyond), [0]);
        let twice = vec![(0, RETURNS_I32.to_vec()), (0, RETURNS_I32.to_vec())];
        assert_eq!(checked_early(TWO_FUNCTIONS, twice), [0]);
        // A prefix that runs into the Code section is not a prefix.
        let bytes = wat::parse_str(TWO_FUNCTIONS).unwrap();
        let (sender, received) = std::sync::mpsc::channel();
        sender.send(Early::Prefix(bytes)).unwrap();
        sender.send(Early::Body(0, RETURNS_I32.to_vec())).unwrap();
        drop(sender);
        let stop = AtomicBool::new(false);
        let early = EarlyBodies {
            features: features(),
            stop: &stop,
        };
        assert!(early.run(received).is_empty());
    }
}
