//! The messages' text in both of its homes (issue 14, `src/diag.rs`): a passive data segment
//! read by `memory.init` when the run allows bulk memory, code that writes it otherwise
//! (WebAssembly 1.0). Any range of the text comes back byte for byte in either, whatever bytes
//! it holds (escapes), wherever its chunks end, and nothing around the range is written.

mod common;

use wasmfix::features::{Feature, FeatureSet};
use wasmfix::passes::{Pass, PassCx, PassOptions, PassReport};

/// A module that can write messages (WASI `fd_write`, one memory) and exports
/// `copy(dest, offset, len)`, whose body the test pass below replaces.
const MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "copy") (param i32 i32 i32)))"#;

/// Stores `pieces` in the messages' text and makes `copy(dest, offset, len)` copy
/// `[offset, offset + len)` of the last piece to `dest`. Reports where that piece starts.
struct StoreAndCopy {
    pieces: Vec<Vec<u8>>,
}

impl Pass for StoreAndCopy {
    fn name(&self) -> &'static str {
        "store-and-copy"
    }

    fn description(&self) -> &'static str {
        "test: store text, export a copy of it"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> anyhow::Result<PassReport> {
        use wasm_encoder::Instruction as I;
        let mut last = None;
        for piece in &self.pieces {
            last = wasmfix::diag::store_bytes(cx.module, cx.edits, piece);
        }
        let (stored, at) = last.expect("the module can write messages");
        let mut code = stored.copy(
            [I::LocalGet(0)],
            [I::LocalGet(1), I::I32Const(at as i32), I::I32Add],
            [I::LocalGet(2)],
        );
        code.push(I::End);
        cx.edits.replace_body(1, &[], &code);
        Ok(PassReport {
            pass: "store-and-copy",
            summary: String::new(),
            warnings: Vec::new(),
            details: serde_json::json!({}),
        })
    }
}

/// Rewrites [`MODULE`] storing `pieces`; the output validates with exactly the features
/// named, nothing more.
fn rewrite(pieces: Vec<Vec<u8>>, options: &PassOptions, features: FeatureSet) -> Vec<u8> {
    let input = wat::parse_str(MODULE).unwrap();
    let pass = StoreAndCopy { pieces };
    let outcome =
        wasmfix::pipeline::run(&input, &[&pass], options).unwrap_or_else(|f| panic!("{f}"));
    wasmparser::Validator::new_with_features(features.wasm_features())
        .validate_all(&outcome.bytes)
        .unwrap_or_else(|e| panic!("needs more than {}: {e}", features.names()));
    outcome.bytes
}

/// Calls `copy` for each range of `expected` and checks the bytes that land in memory, and
/// that the bytes on either side of them stay as they were.
fn check_ranges(wasm: &[u8], expected: &[u8], ranges: &[(usize, usize)]) {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, wasm).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let mut linker = wasmtime::Linker::new(&engine);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_write",
            |_: i32, _: i32, _: i32, _: i32| -> i32 { 0 },
        )
        .unwrap();
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let copy = instance
        .get_typed_func::<(i32, i32, i32), ()>(&mut store, "copy")
        .unwrap();
    const DEST: usize = 0x1_0000;
    for &(offset, len) in ranges {
        let sentinel = vec![0xa5u8; len + 2];
        memory.write(&mut store, DEST - 1, &sentinel).unwrap();
        copy.call(&mut store, (DEST as i32, offset as i32, len as i32))
            .unwrap();
        let mut got = vec![0u8; len + 2];
        memory.read(&store, DEST - 1, &mut got).unwrap();
        assert_eq!(got[0], 0xa5, "[{offset}, +{len}): wrote before the range");
        assert_eq!(
            got[len + 1],
            0xa5,
            "[{offset}, +{len}): wrote after the range"
        );
        assert!(
            got[1..=len] == expected[offset..offset + len],
            "[{offset}, +{len}): wrong bytes"
        );
    }
}

/// Bytes of every value, escapes (0, 127, 128–255) included, in an order with no pattern a
/// chunk boundary could hide in.
fn mixed_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Ranges: every length up to 20 at offsets around each 4 KiB chunk boundary, long ranges
/// across several chunks, the whole text and the empty range.
fn ranges(len: usize) -> Vec<(usize, usize)> {
    let mut out = vec![(0, len), (0, 0), (len, 0), (1, len - 1)];
    for boundary in (0..len).step_by(4096) {
        for start in boundary.saturating_sub(12)..(boundary + 12).min(len) {
            for n in 0..20.min(len - start) {
                out.push((start, n));
            }
        }
    }
    for start in (0..len).step_by(977) {
        out.push((start, (len - start).min(9000)));
    }
    out
}

#[test]
fn text_comes_back_byte_for_byte_in_code_and_in_a_passive_segment() {
    // A piece before the one copied, so the copied one starts inside a chunk.
    let pieces = || vec![b"wasmfix: a phrase ".to_vec(), mixed_bytes(20_000, 0x5eed)];
    let expected = mixed_bytes(20_000, 0x5eed);

    // WebAssembly 1.0: the input uses nothing more, so the text is code.
    let in_code = rewrite(pieces(), &PassOptions::default(), FeatureSet::EMPTY);
    assert!(
        !in_code.windows(18).any(|w| w == b"wasmfix: a phrase "),
        "the text should be in code, not in a data segment"
    );
    check_ranges(&in_code, &expected, &ranges(expected.len()));

    // --enable-bulk-memory: a passive segment and memory.init.
    let mut options = PassOptions::default();
    options.features.enable(Feature::BulkMemory);
    let bulk: FeatureSet = [Feature::BulkMemory].into_iter().collect();
    let passive = rewrite(pieces(), &options, bulk.closed());
    assert!(passive.windows(18).any(|w| w == b"wasmfix: a phrase "));
    check_ranges(&passive, &expected, &ranges(expected.len()));
    assert!(passive.len() < in_code.len());
}

/// Over 256 chunks' worth of text: the chunks grow instead of the dispatch.
#[test]
fn long_text_in_code() {
    let text = mixed_bytes(1_300_000, 0xfeed);
    let wasm = rewrite(
        vec![text.clone()],
        &PassOptions::default(),
        FeatureSet::EMPTY,
    );
    let chunk = 1_300_000usize.div_ceil(256);
    let mut ranges = vec![(0, 64), (text.len() - 64, 64), (chunk - 5, 10)];
    for k in [1, 17, 100, 255] {
        ranges.push((k * chunk - 3, 7));
    }
    check_ranges(&wasm, &text, &ranges);
    // About 1.17 bytes of code per byte of text (two codes for each byte outside 1..=126: half
    // of these).
    assert!(wasm.len() < text.len() * 2, "{} bytes", wasm.len());
}

/// A repeated piece (a function name printed by several passes) is stored once.
#[test]
fn a_piece_is_stored_once() {
    let name = b"a_function_name_printed_by_three_passes".to_vec();
    let mut options = PassOptions::default();
    options.features.enable(Feature::BulkMemory);
    let bulk: FeatureSet = [Feature::BulkMemory].into_iter().collect();
    let wasm = rewrite(
        vec![name.clone(), name.clone(), name.clone()],
        &options,
        bulk.closed(),
    );
    let copies = wasm.windows(name.len()).filter(|w| *w == &name[..]).count();
    assert_eq!(copies, 1);
}

/// `text` with every hexadecimal number (`0x…`) written as `0x_`.
fn hex_masked(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        out.push_str("0x_");
        rest = rest[at + 2..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

/// Whether `wasm` keeps the messages' text in code (it has `wasmfix:text_put72`) rather than in
/// a passive segment.
fn text_in_code(wasm: &[u8]) -> bool {
    common::print(wasm).contains("$wasmfix:text_put72")
}

/// A case: fixture family, pipeline, how it sets the options, argv, the message it prints.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a dyn Fn(&mut PassOptions),
    Vec<&'a str>,
    &'a str,
);

/// The messages of the snapshotted passes (stack-guard, stack-canary, heap-canary, bounds;
/// `snapshots/*.snap` show their text moved into code) print the same, byte for byte, whether
/// their text is code (WebAssembly 1.0, what the MVP fixtures get) or a passive segment
/// (`--enable-bulk-memory`, today's design), in wasmtime and in node.
#[test]
fn messages_print_identically_from_code_and_from_a_passive_segment() {
    let long_name = "A".repeat(48);
    let harden = |options: &mut PassOptions| options.harden = true;
    let plain = |_: &mut PassOptions| {};
    let diagnose = |options: &mut PassOptions| options.fpcast_diagnose = true;
    let cases: &[Case] = &[
        (
            "stack",
            "stack",
            &plain,
            vec!["recurse", "18"],
            "stack overflow in ",
        ),
        (
            "stack",
            "stack",
            &plain,
            vec!["vla", "70000"],
            "stack overflow in ",
        ),
        (
            "harden",
            "harden",
            &harden,
            vec!["login", &long_name],
            "stack buffer overflow in ",
        ),
        (
            "harden",
            "harden",
            &harden,
            vec!["heap", "48"],
            "heap buffer overflow: block of ",
        ),
        (
            "harden",
            "harden",
            &harden,
            vec!["doublefree"],
            "double free of block at 0x",
        ),
        (
            "harden",
            "harden",
            &harden,
            vec!["null"],
            "null pointer dereference at address ",
        ),
        (
            "harden",
            "harden",
            &harden,
            vec!["literal"],
            "write to read-only data at address ",
        ),
        // Reads the function-name tables back (`store_bytes`).
        (
            "fpcast",
            "fpcast",
            &diagnose,
            vec!["f64"],
            "indirect call type mismatch in ",
        ),
    ];
    let node = common::tool_available("node", &["--version"]);
    let mut checked = 0;
    for variant in ["O0", "O2", "O2.stripped"] {
        for (fixture, pipeline, set, args, message) in cases {
            // Without names the allocator and read-only data are unknown: nothing to stop.
            if variant == "O2.stripped" && ["heap", "doublefree", "literal"].contains(&args[0]) {
                continue;
            }
            let input = common::fixture(&format!("{fixture}.{variant}.wasm"));
            let passes: Vec<&dyn Pass> = if *pipeline == "harden" {
                wasmfix::passes::harden_pipeline()
                    .into_iter()
                    .map(|n| wasmfix::passes::find(n).unwrap())
                    .collect()
            } else {
                common::passes(pipeline)
            };
            let what = format!("{fixture}.{variant} {pipeline} {args:?}");
            let mut outputs = Vec::new();
            for bulk in [false, true] {
                let mut options = PassOptions::default();
                set(&mut options);
                if bulk {
                    options.features.enable(Feature::BulkMemory);
                }
                let out = wasmfix::pipeline::run(&input, &passes, &options)
                    .unwrap_or_else(|f| panic!("{what}: {f}"))
                    .bytes;
                assert_eq!(text_in_code(&out), !bulk, "{what} bulk memory {bulk}");
                outputs.push(out);
            }
            let [in_code, passive] = &outputs[..] else {
                unreachable!()
            };
            let code_run = common::run_wasi(in_code, args);
            let passive_run = common::run_wasi(passive, args);
            assert!(
                code_run.stderr.starts_with(&format!("wasmfix: {message}")),
                "{what}: {code_run:?}"
            );
            assert!(
                matches!(code_run.outcome, common::Outcome::Trap(_)),
                "{what}"
            );
            // The same text and the same trap (the backtraces' code offsets differ).
            assert_eq!(
                (&code_run.stdout, &code_run.stderr),
                (&passive_run.stdout, &passive_run.stderr),
                "{what}"
            );
            let trap = |run: &common::Run| match &run.outcome {
                common::Outcome::Trap(t) => t.lines().last().map(str::to_owned),
                common::Outcome::Exit(_) => None,
            };
            assert_eq!(trap(&code_run), trap(&passive_run), "{what}");
            if node {
                let code_node = common::run_node("node", in_code, args);
                let passive_node = common::run_node("node", passive, args);
                assert_eq!(
                    (&code_node.stdout, &code_node.stderr),
                    (&passive_node.stdout, &passive_node.stderr),
                    "{what} node"
                );
                assert_eq!(code_node.stdout, code_run.stdout, "{what} node stdout");
                // Heap addresses differ between the engines (node's argv[0] is the file's path).
                assert!(
                    hex_masked(&code_node.stderr).starts_with(&hex_masked(&code_run.stderr)),
                    "{what} node stderr: {:?} vs wasmtime {:?}",
                    code_node.stderr,
                    code_run.stderr
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 21);
}
