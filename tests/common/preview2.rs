//! Shared by tests/preview2.rs and tests/component.rs (included with `#[path]`, so the other
//! test binaries do not link wit-component): the stock preview1 adapters, adapting a module
//! with wit-component, running preview1 modules and preview 2 components in wasmtime-wasi, and
//! jco under node as the second component runner. Every run gets `GREETING` in its
//! environment and `prog ARGS…` as its arguments.
#![allow(dead_code)]

use crate::common::Outcome;
use std::path::{Path, PathBuf};

/// The stock command adapter: version, bytes, and the adapter source line its `State` canary
/// check reports when something overwrote its page.
pub const ADAPTERS: [(&str, &[u8], u32); 2] = [
    (
        "33.0.0",
        adapter33::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        2786,
    ),
    (
        "50.0.1",
        adapter50::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        2857,
    ),
];

pub const ARGS: &[&str] = &["one", "two words"];
pub const GREETING: &str = "hello from the host";

/// What `wasm-tools component new MODULE --adapt wasi_snapshot_preview1=ADAPTER` gives.
pub fn adapt(module: &[u8], adapter: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| e.adapter("wasi_snapshot_preview1", adapter))
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| panic!("component new --adapt failed: {e:?}"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub outcome: Outcome,
}

pub fn engine() -> &'static wasmtime::Engine {
    static ENGINE: std::sync::OnceLock<wasmtime::Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(wasmtime::Engine::default)
}

pub fn wasi_builder(
    args: &[&str],
    stdout: &wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    stderr: &wasmtime_wasi::p2::pipe::MemoryOutputPipe,
) -> wasmtime_wasi::WasiCtxBuilder {
    let mut argv = vec!["prog"];
    argv.extend_from_slice(args);
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.args(&argv)
        .env("GREETING", GREETING)
        .stdout(stdout.clone())
        .stderr(stderr.clone());
    b
}

pub fn outcome_of(result: wasmtime::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Exit(0),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Outcome::Exit(exit.0),
            // The error chain without the host's Rust backtrace.
            None => Outcome::Trap(
                e.chain()
                    .map(|cause| cause.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        },
    }
}

pub fn text(pipe: &wasmtime_wasi::p2::pipe::MemoryOutputPipe) -> String {
    String::from_utf8_lossy(&pipe.contents()).into_owned()
}

/// Runs the preview1 command `module` with `args` and returns how it ended and its memory
/// afterwards.
pub fn run_module(module: &[u8], args: &[&str]) -> (Run, Vec<u8>) {
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    let (stdout, stderr) = (
        MemoryOutputPipe::new(1 << 24),
        MemoryOutputPipe::new(1 << 24),
    );
    let wasi = wasi_builder(args, &stdout, &stderr).build_p1();
    let mut store = wasmtime::Store::new(engine(), wasi);
    let mut linker = wasmtime::Linker::new(engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let module = wasmtime::Module::new(engine(), module).unwrap();
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    let outcome = outcome_of(start.call(&mut store, ()));
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let contents = memory.data(&store).to_vec();
    drop(store);
    let run = Run {
        stdout: text(&stdout),
        stderr: text(&stderr),
        outcome,
    };
    (run, contents)
}

struct P2State {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for P2State {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Runs the command component `component` with `args` under wasmtime-wasi (preview 2).
pub fn run_component(component: &[u8], args: &[&str]) -> Run {
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    let (stdout, stderr) = (
        MemoryOutputPipe::new(1 << 24),
        MemoryOutputPipe::new(1 << 24),
    );
    let state = P2State {
        ctx: wasi_builder(args, &stdout, &stderr).build(),
        table: Default::default(),
    };
    let mut store = wasmtime::Store::new(engine(), state);
    let mut linker = wasmtime::component::Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let component = wasmtime::component::Component::new(engine(), component).unwrap();
    let result =
        wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker)
            .and_then(|command| command.wasi_cli_run().call_run(&mut store))
            .and_then(|status| status.map_err(|()| wasmtime::Error::msg("run returned an error")));
    let outcome = outcome_of(result);
    drop(store);
    Run {
        stdout: text(&stdout),
        stderr: text(&stderr),
        outcome,
    }
}

/// jco (npm `@bytecodealliance/jco`): `$WASMFIX_JCO`, else `jco` on `PATH`. `None` (the test
/// then says so and passes) unless `WASMFIX_REQUIRE_TOOLS` is set, which makes it fail.
pub fn jco() -> Option<PathBuf> {
    let found = std::env::var_os("WASMFIX_JCO")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("jco"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
            "WASMFIX_REQUIRE_TOOLS is set but jco is missing (npm install @bytecodealliance/jco; \
             set WASMFIX_JCO to its bin/jco)"
        );
        println!("note: jco not found (set WASMFIX_JCO): the runs under jco are skipped");
    }
    found
}

/// `node JCO run COMPONENT ARGS…` with only GREETING in the environment: (stdout, stderr,
/// exit status). jco hands the component node's whole environment, and where a broken
/// component's heap overwrites the adapter's page, hence whether it stops at the assertion
/// or goes on with corrupted memory, depends on how much the runtime allocated for it.
pub fn run_jco(jco: &Path, component: &[u8], args: &[&str]) -> (String, String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.wasm");
    std::fs::write(&path, component).unwrap();
    let node = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
        .expect("jco needs node on PATH");
    let out = std::process::Command::new(node)
        .arg(jco)
        .arg("run")
        .arg(&path)
        .args(args)
        .env_clear()
        .env("GREETING", GREETING)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}
