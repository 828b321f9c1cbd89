//! Hostile input (issue 7): raw bytes and mutated valid modules through the whole library path
//! the CLI takes (read, validate, facts, every pipeline, emit, validate; `inspect` and
//! `--check`), in process. No input may panic; every rejection is one line; every output
//! validates. The long run also bounds time per input and peak heap growth per input size:
//!
//!     WASMFIX_HOSTILE_CASES=1000000 nice -n 19 cargo test --release --test fuzz_hostile -- --ignored --nocapture
//!
//! A handful of inputs also go through the real binary: exit status 2, one line on stderr,
//! nothing written.

#[path = "common/clike.rs"]
mod clike;
mod common;
#[path = "common/diff.rs"]
mod diff;

use diff::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts heap bytes in use and their peak, so the long run can bound memory per input.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = IN_USE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bounds per input in the long run (sizes floored at 64 KiB): time per MB, and heap growth
/// as a multiple of the input, for every pipeline and `inspect` together.
const MAX_S_PER_MB: f64 = 10.0;
const MAX_HEAP_RATIO: f64 = 64.0;

/// Inputs `WASMFIX_HOSTILE_FROM..WASMFIX_HOSTILE_CASES` only (to rerun part of a long run).
fn first_input() -> u64 {
    std::env::var("WASMFIX_HOSTILE_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Valid modules to mutate: the fixtures, the .wat tests, the saved regressions and generated
/// modules of every generator.
fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = common::fixtures().into_iter().map(|(_, b)| b).collect();
    for path in common::wat_files() {
        out.push(wat::parse_file(&path).unwrap());
    }
    let regressions = common::repo().join("tests/fuzz-regressions");
    for e in std::fs::read_dir(regressions).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "wasm") {
            out.push(std::fs::read(p).unwrap());
        }
    }
    for (k, g) in diff::Generator::ALL.iter().enumerate() {
        for i in 0..20 {
            if let Some(m) = g.module(&diff::case_data(0xbad5eed + k as u64, i)) {
                out.push(m);
            }
        }
    }
    out
}

/// Byte ranges of the sections of `bytes` (header included), as far as they parse.
fn sections(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let mut r = wasmparser::BinaryReader::new(&bytes[at + 1..], 0);
        let Ok(size) = r.read_var_u32() else { break };
        let end = at + 1 + r.original_position() as usize + size as usize;
        if end > bytes.len() {
            break;
        }
        out.push(at..end);
        at = end;
    }
    out
}

/// One mutation of `input`, chosen by `rng`; `other` is a second seed to splice from.
fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = input.len().max(1);
    let at = (rng.next() as usize) % len;
    match rng.next() % 11 {
        0 => {
            for _ in 0..1 + rng.next() % 8 {
                let i = (rng.next() as usize) % len;
                if let Some(b) = input.get_mut(i) {
                    *b ^= 1 << (rng.next() % 8);
                }
            }
        }
        1 => {
            let n = (1 + rng.next() % 8) as usize;
            for i in at..(at + n).min(input.len()) {
                input[i] = rng.next() as u8;
            }
        }
        2 => {
            let n = (1 + rng.next() % 32) as usize;
            let mut chunk = vec![0u8; n];
            rng.fill(&mut chunk);
            input.splice(at..at, chunk);
        }
        3 => {
            let n = (1 + rng.next() % 64) as usize;
            input.drain(at..(at + n).min(input.len()));
        }
        4 => input.truncate(at),
        5 => {
            // A LEB at `at` made huge, one more or less, zero, or padded to five bytes.
            let mut r = wasmparser::BinaryReader::new(&input[at..], 0);
            if let Ok(v) = r.read_var_u32() {
                let old = r.original_position() as usize;
                let new = match rng.next() % 5 {
                    0 => u32::MAX,
                    1 => v.wrapping_add(1),
                    2 => v.wrapping_sub(1),
                    3 => 0,
                    _ => 1 << (rng.next() % 32),
                };
                let mut enc = Vec::new();
                if rng.next().is_multiple_of(2) {
                    let mut x = new;
                    for i in 0..5 {
                        enc.push((x & 0x7f) as u8 | if i < 4 { 0x80 } else { 0 });
                        x >>= 7;
                    }
                } else {
                    wasm_encoder::Encode::encode(&new, &mut enc);
                }
                input.splice(at..at + old, enc);
            }
        }
        6 | 7 => {
            // Duplicate, drop or move a section.
            let s = sections(input);
            if !s.is_empty() {
                let pick = s[(rng.next() as usize) % s.len()].clone();
                let bytes = input[pick.clone()].to_vec();
                match rng.next() % 3 {
                    0 => {
                        input.splice(pick.end..pick.end, bytes);
                    }
                    1 => {
                        input.drain(pick);
                    }
                    _ => {
                        input.drain(pick);
                        let s = sections(input);
                        let to = s
                            .get((rng.next() as usize) % s.len().max(1))
                            .map_or(8, |r| r.start);
                        input.splice(to..to, bytes);
                    }
                }
            }
        }
        8 => {
            // Splice a section of another module in.
            let s = sections(other);
            if !s.is_empty() {
                let pick = s[(rng.next() as usize) % s.len()].clone();
                let to = sections(input)
                    .get((rng.next() as usize) % 4)
                    .map_or(input.len(), |r| r.end);
                input.splice(to..to, other[pick].iter().copied());
            }
        }
        9 => {
            // An i32.const immediate (offsets, addresses, frame sizes) made extreme.
            if let Some(p) = input[at..].iter().position(|&b| b == 0x41) {
                let p = at + p + 1;
                let mut r = wasmparser::BinaryReader::new(&input[p.min(input.len())..], 0);
                if r.read_var_i32().is_ok() {
                    let old = r.original_position() as usize;
                    let v: i32 = match rng.next() % 4 {
                        0 => i32::MAX,
                        1 => i32::MIN,
                        2 => -1,
                        _ => 0x7fff_0000,
                    };
                    let mut enc = Vec::new();
                    wasm_encoder::Encode::encode(&v, &mut enc);
                    input.splice(p..p + old, enc);
                }
            }
        }
        _ => {
            // Clobber a section's size with a huge one.
            let s = sections(input);
            if let Some(pick) = s.get((rng.next() as usize) % s.len().max(1)) {
                input.splice(
                    pick.start + 1..pick.start + 2,
                    [0xff, 0xff, 0xff, 0xff, 0x07],
                );
            }
        }
    }
}

/// The `n`-th hostile input: raw bytes (with or without a valid header) or a seed with one to
/// four mutations.
fn input(seeds: &[Vec<u8>], seed: u64, n: u64) -> Vec<u8> {
    let mut rng = Rng(seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D));
    match rng.next() % 8 {
        0 => {
            let mut v = vec![0u8; (rng.next() % 512) as usize];
            rng.fill(&mut v);
            if rng.next().is_multiple_of(2) {
                v.splice(0..0, *b"\0asm\x01\0\0\0");
            }
            v
        }
        _ => {
            let mut v = seeds[(rng.next() as usize) % seeds.len()].clone();
            let other = &seeds[(rng.next() as usize) % seeds.len()];
            for _ in 0..1 + rng.next() % 4 {
                mutate(&mut v, other, &mut rng);
            }
            v
        }
    }
}

/// Runs `input` through the CLI's library path; `Err` says what went wrong.
fn check(input: &[u8], pipelines: &[diff::Pipeline]) -> Result<bool, String> {
    let one_line = |what: &str, m: &str| -> Result<(), String> {
        if m.contains('\n') || m.is_empty() {
            Err(format!("{what}: not one line: {m:?}"))
        } else {
            Ok(())
        }
    };
    // inspect and --check: load, then the facts in words and in JSON, and the hazards.
    let loaded = std::panic::catch_unwind(|| match wasmfix::pipeline::load(input) {
        Ok((m, f)) => {
            let _ = wasmfix::inspect::text("in", &m, &f);
            let _ = wasmfix::inspect::json(&m, &f);
            let _ = wasmfix::inspect::hazards(&m, &f);
            Ok(())
        }
        Err(failure) => Err(failure.to_string()),
    })
    .map_err(|p| format!("inspect panicked: {}", diff::panic_message(&*p)))?;
    let valid = loaded.is_ok();
    if let Err(m) = &loaded {
        one_line("load", m)?;
    }
    for p in pipelines {
        match diff::run_pipeline(input, p) {
            Err(panic) => return Err(format!("`{}` panicked: {panic}", p.name)),
            Ok(Ok(out)) => {
                if !valid {
                    return Err(format!("`{}` accepted what load rejected", p.name));
                }
                wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
                    .validate_all(&out.bytes)
                    .map_err(|e| format!("`{}` wrote an invalid module: {e}", p.name))?;
            }
            Ok(Err(failure)) => {
                let m = failure.to_string();
                one_line(&p.name, &m)?;
                match failure {
                    wasmfix::pipeline::Failure::Internal(_) => {
                        return Err(format!("`{}`: internal error: {m}", p.name));
                    }
                    wasmfix::pipeline::Failure::Usage(_) => {
                        return Err(format!("`{}`: default options refused: {m}", p.name));
                    }
                    wasmfix::pipeline::Failure::BadInput(_) if valid => {
                        return Err(format!(
                            "`{}`: bad input after load accepted it: {m}",
                            p.name
                        ));
                    }
                    // Every pipeline reads and validates first: bad input is bad for all.
                    wasmfix::pipeline::Failure::BadInput(_) => return Ok(false),
                    wasmfix::pipeline::Failure::Refused { .. } => {}
                }
            }
        }
    }
    Ok(valid)
}

#[test]
fn mutated_and_random_inputs_never_panic_and_fail_in_one_line() {
    let seeds = seeds();
    let pipelines = diff::pipelines();
    let cases = if cfg!(debug_assertions) { 500 } else { 5000 };
    let mut valid = 0;
    for n in 0..cases {
        let bytes = input(&seeds, 0x0405_711e, n);
        match check(&bytes, &pipelines) {
            Ok(v) => valid += v as u32,
            Err(e) => {
                let path = common::repo().join("target/fuzz-failures");
                let _ = std::fs::create_dir_all(&path);
                let path = path.join(format!("hostile-{n}.wasm"));
                std::fs::write(&path, &bytes).unwrap();
                panic!("input {n} ({}): {e}", path.display());
            }
        }
    }
    // Mutations must reach past the validator, not only be rejected by it.
    assert!(
        valid > cases as u32 / 20,
        "only {valid} of {cases} inputs were valid"
    );
}

/// The long run: `WASMFIX_HOSTILE_CASES` inputs (default 1,000,000) on one thread, so that the
/// heap counter sees one input at a time. Prints the slowest input per MB and the largest peak
/// heap growth per input byte.
#[test]
#[ignore = "long run: WASMFIX_HOSTILE_CASES=1000000 cargo test --release --test fuzz_hostile -- --ignored --nocapture"]
fn long_run() {
    let cases = diff::env_u64("WASMFIX_HOSTILE_CASES", 1_000_000);
    let seed = diff::env_u64("WASMFIX_HOSTILE_SEED", 0x5eed_0001);
    let seeds = seeds();
    let pipelines = diff::pipelines();
    let start = std::time::Instant::now();
    let (mut valid, mut findings) = (0u64, Vec::new());
    let (mut max_time, mut max_time_len) = (0f64, 0usize);
    // Per input: seconds per MB and heap growth per byte, with the size floored at 64 KiB so
    // that fixed costs of tiny inputs (a validator, a thread) do not dominate.
    let floor = |len: usize| len.max(64 << 10) as f64;
    let (mut max_s_per_mb, mut max_mem_ratio, mut max_mem) = (0f64, 0f64, 0usize);
    let mut largest = 0usize;
    for n in first_input()..cases {
        let bytes = input(&seeds, seed, n);
        largest = largest.max(bytes.len());
        let base = IN_USE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = std::time::Instant::now();
        let result = check(&bytes, &pipelines);
        let secs = t.elapsed().as_secs_f64();
        let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        if secs > max_time {
            (max_time, max_time_len) = (secs, bytes.len());
        }
        max_s_per_mb = max_s_per_mb.max(secs / (floor(bytes.len()) / 1e6));
        max_mem = max_mem.max(grown);
        max_mem_ratio = max_mem_ratio.max(grown as f64 / floor(bytes.len()));
        // An input over the time or memory bound is a finding of its own, saved like the others.
        let ratio = grown as f64 / floor(bytes.len());
        let s_per_mb = secs / (floor(bytes.len()) / 1e6);
        let result = result.and_then(|v| {
            if ratio >= MAX_HEAP_RATIO {
                Err(format!(
                    "heap grew {ratio:.1}x the input ({} KiB)",
                    grown >> 10
                ))
            } else if s_per_mb >= MAX_S_PER_MB {
                Err(format!("{s_per_mb:.2} s per MB"))
            } else {
                Ok(v)
            }
        });
        match result {
            Ok(v) => valid += v as u64,
            Err(e) => {
                let dir = common::repo().join("target/fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("hostile-{seed:x}-{n}.wasm"));
                std::fs::write(&path, &bytes).unwrap();
                eprintln!("FINDING input {n}: {e} ({})", path.display());
                findings.push(e);
            }
        }
        if n % 100_000 == 99_999 {
            eprintln!(
                "[{:>7.1}s] {} inputs, {valid} valid, {} findings",
                start.elapsed().as_secs_f64(),
                n + 1,
                findings.len()
            );
        }
    }
    eprintln!(
        "fuzz_hostile summary: {cases} inputs ({valid} valid modules, largest {largest} bytes) x {} pipelines + inspect in {:.0} s: {} findings",
        pipelines.len(),
        start.elapsed().as_secs_f64(),
        findings.len()
    );
    eprintln!(
        "  slowest input {:.1} ms ({max_time_len} bytes); max {:.2} s per MB; peak heap growth max {} KiB, max {:.1}x the input (inputs floored at 64 KiB)",
        max_time * 1e3,
        max_s_per_mb,
        max_mem >> 10,
        max_mem_ratio
    );
    assert!(findings.is_empty(), "{} findings", findings.len());
    assert!(max_s_per_mb < MAX_S_PER_MB, "{max_s_per_mb} s per MB");
    assert!(
        max_mem_ratio < MAX_HEAP_RATIO,
        "heap grew {max_mem_ratio}x the input"
    );
}

/// The real binary on hostile input: exit 2, one line on stderr, no output file, no temporary
/// file left behind.
#[test]
fn cli_rejects_hostile_input_with_one_line_and_exit_2() {
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let mut rejected = 0;
    let mut n = 0;
    while rejected < 12 {
        n += 1;
        let bytes = input(&seeds, 0xc11, n);
        if wasmfix::pipeline::read(&bytes).is_ok() {
            continue;
        }
        rejected += 1;
        let in_path = dir.path().join("in.wasm");
        let out_path = dir.path().join("out.wasm");
        std::fs::write(&in_path, &bytes).unwrap();
        let out = common::wasmfix()
            .arg(&in_path)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "input {n}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "input {n}: {stderr:?}");
        assert!(stderr.starts_with("wasmfix: "), "{stderr:?}");
        assert!(!out_path.exists(), "input {n}: output written");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "input {n}: files left behind: {left:?}");
        assert_eq!(std::fs::read(&in_path).unwrap(), bytes, "input changed");
    }
}
