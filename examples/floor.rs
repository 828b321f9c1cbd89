//! The floor that `bench/sections/core.py` measures a rewrite against: read a module, validate
//! it as wasmfix validates its input ([`wasmfix::validate::validate`]: wasmparser, function
//! bodies spread over the cores) and write a copy. No rewrite can do less, so the default
//! pipeline's time and peak memory are quoted as ratios to this program's.
//!
//!     cargo build --release --example floor
//!     target/release/examples/floor IN.wasm OUT.wasm

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let [input, output] = &args[..] else {
        eprintln!("usage: floor IN.wasm OUT.wasm");
        return ExitCode::from(2);
    };
    let result = std::fs::read(input)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| {
            wasmfix::validate::validate(&bytes, None, wasmfix::validate::features())?;
            std::fs::write(output, &bytes)?;
            Ok(())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {}: {e}", input.display());
            ExitCode::from(2)
        }
    }
}
