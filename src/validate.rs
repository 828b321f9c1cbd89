//! Validation with `wasmparser::Validator`, function bodies checked on every core.
//!
//! The output is validated in full except for function bodies copied byte for byte from an
//! input that was itself validated: the emitter only *appends* types, functions, tables,
//! globals and segments, so every index such a body uses means the same thing and has the same
//! type in the output, and its validity cannot change. Every re-encoded or new body is checked.

use anyhow::{Result, anyhow};
use wasmparser::{
    Chunk, FuncToValidate, FuncValidatorAllocations, FunctionBody, Parser, ValidPayload, Validator,
    ValidatorResources, WasmFeatures,
};

/// The features wasmfix accepts in its input: every proposal it can name (see
/// [`crate::features::Feature`]), so that what the input uses is always a set of those.
pub fn features() -> WasmFeatures {
    crate::features::FeatureSet::all().wasm_features()
}

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
    let mut validator = Validator::new_with_features(features);
    let mut funcs: Vec<(FuncToValidate<ValidatorResources>, FunctionBody<'_>)> = Vec::new();
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
    validate_bodies(funcs)
}

fn validate_bodies(
    funcs: Vec<(FuncToValidate<ValidatorResources>, FunctionBody<'_>)>,
) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if funcs.len() < 64 || threads == 1 {
        let mut allocs = FuncValidatorAllocations::default();
        for (f, body) in funcs {
            let mut v = f.into_validator(allocs);
            v.validate(&body).map_err(|e| anyhow!("{e}"))?;
            allocs = v.into_allocations();
        }
        return Ok(());
    }
    // Interleave so large and small functions spread evenly over the threads.
    let mut shares: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, f) in funcs.into_iter().enumerate() {
        shares[i % threads].push(f);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                s.spawn(move || -> Result<(), (u64, String)> {
                    let mut allocs = FuncValidatorAllocations::default();
                    for (f, body) in share {
                        let mut v = f.into_validator(allocs);
                        v.validate(&body).map_err(|e| (e.offset(), e.to_string()))?;
                        allocs = v.into_allocations();
                    }
                    Ok(())
                })
            })
            .collect();
        // Report the error at the lowest offset, as a sequential validator would.
        let mut first: Option<(u64, String)> = None;
        for h in handles {
            if let Err(e) = h.join().expect("validator thread panicked")
                && first.as_ref().is_none_or(|f| e.0 < f.0)
            {
                first = Some(e);
            }
        }
        match first {
            Some((_, msg)) => Err(anyhow!("{msg}")),
            None => Ok(()),
        }
    })
}
