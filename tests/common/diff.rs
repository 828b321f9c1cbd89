//! The differential harness (issue 7): one module through every pipeline, each output checked
//! for validity, determinism and fidelity, then run beside the original in wasmtime.
//!
//! Pipelines come from the registry: `none`, the default pipeline, `--harden`, every registered
//! pass alone, and `fpcast` with `--fpcast-diagnose`, so a pass added to `passes::REGISTRY`
//! joins the harness without a change here.
//!
//! What must hold for every pipeline:
//! - the pipeline does not panic; a refusal is one line; valid input is never "bad input";
//! - the output validates with exactly the features the input uses (and those the pipeline
//!   enables: issue 14), and two runs give the same bytes;
//! - `none` gives back the input's bytes; every original function keeps its index and type,
//!   the imports and exports are the same, and at most the reported number of bodies changed;
//! - every export called with the same arguments returns the same values (bit for bit) or traps
//!   the same way, and leaves the same exported state (globals, memories, table sizes), except
//!   where a pass's contract says otherwise:
//!   - fpcast: a call that trapped with `indirect call type mismatch` may now run (the castable
//!     mismatch gets C semantics). With an oracle (the C-like generator's plan) the result must
//!     be the one C semantics define; without one, the call may return or trap *inside the
//!     called function*, never again at the call site in another way. A castable mismatch with
//!     an entry the harness added to an exported table at run time gets C semantics only when
//!     the output types such entries (GC: `fpcast --enable-gc`); otherwise it traps as before.
//!     In fpcast's WebAssembly 1.0 design an exported table is larger by the views it appends
//!     (recorded in the `wasmfix` section): table sizes are compared without them;
//!   - stack-guard: an overflow stops earlier. The rewritten module traps with `unreachable` in
//!     the handler wasmfix added (and prints `wasmfix: stack overflow in` when it can write);
//!     with an oracle this must happen exactly on the calls that overflow;
//!   - stack-first: with an oracle, an overflow now traps (it runs off address 0).
//!   - heap-canary (alone or in `--harden`): each block gets 16 header and 4 redzone bytes, so
//!     allocation addresses differ. Memory (the allocator's state and the blocks) is compared
//!     by size only; results, globals and table sizes exactly (the C-like generator's results
//!     do not depend on addresses, and wasm-smith modules have no `malloc`/`free` to wrap). A
//!     heap overflow or double free the original survived may now stop with its message;
//!   - stack-canary: each protected frame takes 16 more bytes of stack, so the stack region's
//!     dead bytes are not compared, a call that fit only without them is an overflow (the
//!     plan's `ExactUnlessCanary`), a trap ends the session (the stack pointer stays lower),
//!     and a clobbered canary may stop the program with its message;
//!   - bounds: a null-page access or a write to read-only data the original survived may now
//!     stop, with a message naming an address inside the ranges the pass recorded;
//!   - adapter-memory: the module also exports `cabi_realloc_adapter`, its memory has two more
//!     pages and its heap may start 128 KiB higher: results are compared exactly, the exported
//!     state (export names, memory size and contents) is not, as after stack-first;
//!   - an overflow neither guarded nor relocated corrupts memory in the original: under
//!     heap-canary, stack-canary or adapter-memory, whose layouts differ, its outcome is
//!     inconclusive, and bounds may stop it when it reaches the null page.
//!
//! Under an exact expectation (the C-like plan: correct C code) none of these stops is
//! accepted.
//!
//! After a contract event the states differ, so the session stops there.
//!
//! Fuel: the original gets [`FUEL`] per call; the rewritten module ten times that (its guards and
//! adapters cost instructions). An original that runs out of fuel, or of native stack, makes the
//! rest of its session inconclusive.
#![allow(dead_code)] // shared by test files that each use part of it

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use wasmfix::passes::{self, Pass, PassOptions};
use wasmtime::{
    Config, Engine, Extern, ExternType, Func, Instance, Linker, Module, OptLevel, Store,
    StoreLimits, StoreLimitsBuilder, Trap, Val, ValType, WasmBacktrace,
};

/// Fuel per call for the original module.
pub const FUEL: u64 = 200_000;
/// Fuel for instantiation (start functions).
pub const INSTANTIATE_FUEL: u64 = 2_000_000;
/// Memory per linear memory, for both runs (a relocated stack adds its pages on top).
const MEMORY_LIMIT: usize = 16 << 20;
const TABLE_LIMIT: usize = 100_000;

/// Name of the custom section in which the C-like generator stores its call plan.
pub const PLAN_SECTION: &str = "wasmfix-fuzz-plan";

/// Plan steps that are not calls: the harness changes the exported table
/// `__indirect_function_table` as a host would (Emscripten's `addFunction`, `dlopen`).
/// `@grow [f]` appends function export `t{f}` (null for -1); `@set [Appended(n), f]` writes
/// the n-th appended slot.
pub const TABLE_GROW: &str = "@grow";
pub const TABLE_SET: &str = "@set";
pub const TABLE_EXPORT: &str = "__indirect_function_table";

/// One pipeline: a name for reports, the passes and their options.
pub struct Pipeline {
    pub name: String,
    pub passes: Vec<&'static dyn Pass>,
    pub options: PassOptions,
}

/// Every pipeline the harness runs, derived from the registry.
pub fn pipelines() -> Vec<Pipeline> {
    let mut out = vec![
        Pipeline {
            name: "none".into(),
            passes: Vec::new(),
            options: PassOptions::default(),
        },
        Pipeline {
            name: "default".into(),
            passes: passes::DEFAULT_PIPELINE
                .iter()
                .map(|n| passes::find(n).expect("default passes are registered"))
                .collect(),
            options: PassOptions::default(),
        },
        Pipeline {
            name: "--harden".into(),
            passes: passes::harden_pipeline()
                .iter()
                .map(|n| passes::find(n).expect("harden passes are registered"))
                .collect(),
            options: PassOptions {
                harden: true,
                ..Default::default()
            },
        },
    ];
    for p in passes::REGISTRY {
        out.push(Pipeline {
            name: p.name().into(),
            passes: vec![*p],
            options: PassOptions::default(),
        });
    }
    if let Some(fpcast) = passes::find("fpcast") {
        let mut features = wasmfix::features::FeatureChoice::default();
        features.enable(wasmfix::features::Feature::Gc);
        out.push(Pipeline {
            name: "fpcast --enable-gc".into(),
            passes: vec![fpcast],
            options: PassOptions {
                features,
                ..Default::default()
            },
        });
        out.push(Pipeline {
            name: "fpcast --fpcast-diagnose".into(),
            passes: vec![fpcast],
            options: PassOptions {
                fpcast_diagnose: true,
                ..Default::default()
            },
        });
    }
    out
}

/// Counts over a run of the harness.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub modules: u64,
    pub pipeline_runs: u64,
    pub refused: u64,
    /// Outputs whose code differs from the input's (the ones executed).
    pub rewritten: u64,
    /// Modules wasmtime cannot run (a feature it lacks, an import it cannot default).
    pub not_executable: u64,
    pub calls_compared: u64,
    pub cast_contract: u64,
    pub cast_checked_value: u64,
    /// Of those, castable mismatches with an entry the harness added to the table at run time
    /// (adapted through GC's `ref.test`).
    pub run_time_cast_checked: u64,
    pub guard_stops: u64,
    pub relocated_overflow_traps: u64,
    /// An overflow neither guarded nor relocated, under stack-canary (16 more bytes per frame)
    /// or heap-canary (other heap addresses): it runs into the data as in the original, but
    /// at another depth or over other contents; inconclusive.
    pub overflow_layout_changed: u64,
    /// bounds stopped a null-page access or a write to read-only data the original survived.
    pub bounds_stops: u64,
    /// heap-canary or stack-canary stopped a corruption the original survived.
    pub canary_stops: u64,
    pub inconclusive: u64,
    /// Outputs that needed a feature of [`WAITING_FOR_MVP_DESIGN`] beyond the input's.
    pub waiting_for_mvp_design: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.modules += o.modules;
        self.pipeline_runs += o.pipeline_runs;
        self.refused += o.refused;
        self.rewritten += o.rewritten;
        self.not_executable += o.not_executable;
        self.calls_compared += o.calls_compared;
        self.cast_contract += o.cast_contract;
        self.cast_checked_value += o.cast_checked_value;
        self.run_time_cast_checked += o.run_time_cast_checked;
        self.guard_stops += o.guard_stops;
        self.relocated_overflow_traps += o.relocated_overflow_traps;
        self.overflow_layout_changed += o.overflow_layout_changed;
        self.bounds_stops += o.bounds_stops;
        self.canary_stops += o.canary_stops;
        self.inconclusive += o.inconclusive;
        self.waiting_for_mvp_design += o.waiting_for_mvp_design;
    }
}

/// What went wrong, by class (the long run counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Panic,
    InvalidOutput,
    /// Bad input on a valid module, a multi-line message, or an internal error.
    BadFailure,
    Nondeterministic,
    Fidelity,
    Divergence,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub class: Class,
    pub pipeline: String,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} in `{}`: {}",
            self.class, self.pipeline, self.detail
        )
    }
}

fn finding(class: Class, pipeline: &str, detail: impl Into<String>) -> Finding {
    Finding {
        class,
        pipeline: pipeline.into(),
        detail: detail.into(),
    }
}

/// Runs `pipeline` over `input`, catching panics. `Err` is a panic message.
pub fn run_pipeline(
    input: &[u8],
    pipeline: &Pipeline,
) -> Result<Result<wasmfix::pipeline::Outcome, wasmfix::pipeline::Failure>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wasmfix::pipeline::run(input, &pipeline.passes, &pipeline.options)
    }))
    .map_err(|p| panic_message(&*p))
}

pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Checks `input` (a valid module) through every pipeline. Returns the first finding.
pub fn check_module(input: &[u8], stats: &mut Stats) -> Result<(), Finding> {
    stats.modules += 1;
    let input_shape = Shape::of(input).map_err(|e| finding(Class::Fidelity, "input", e))?;
    let plan = Plan::for_module(input);
    let mut original: Option<Option<Trace>> = None;
    let mut executed: Vec<(u64, String)> = Vec::new();
    for pipeline in pipelines() {
        stats.pipeline_runs += 1;
        let name = pipeline.name.as_str();
        let first = match run_pipeline(input, &pipeline) {
            Err(panic) => return Err(finding(Class::Panic, name, panic)),
            Ok(r) => r,
        };
        let outcome = match first {
            Ok(o) => o,
            Err(failure) => {
                let message = failure.to_string();
                if message.contains('\n') {
                    return Err(finding(
                        Class::BadFailure,
                        name,
                        format!("multi-line message: {message:?}"),
                    ));
                }
                match failure {
                    wasmfix::pipeline::Failure::Refused { .. } => {
                        stats.refused += 1;
                        continue;
                    }
                    wasmfix::pipeline::Failure::BadInput(_)
                    | wasmfix::pipeline::Failure::Usage(_) => {
                        return Err(finding(
                            Class::BadFailure,
                            name,
                            format!("a valid module was called bad input: {message}"),
                        ));
                    }
                    wasmfix::pipeline::Failure::Internal(_) => {
                        return Err(finding(Class::InvalidOutput, name, message));
                    }
                }
            }
        };
        let bytes = outcome.bytes;
        match check_output_features(input, &bytes, &pipeline) {
            Ok(false) => {}
            Ok(true) => stats.waiting_for_mvp_design += 1,
            Err(e) => return Err(finding(Class::InvalidOutput, name, e)),
        }
        match run_pipeline(input, &pipeline) {
            Err(panic) => return Err(finding(Class::Panic, name, panic)),
            Ok(Ok(again)) if again.bytes == bytes => {}
            Ok(_) => {
                return Err(finding(
                    Class::Nondeterministic,
                    name,
                    "a second run gave different bytes",
                ));
            }
        }
        if pipeline.passes.is_empty() && bytes != input {
            return Err(finding(
                Class::Fidelity,
                name,
                "--passes none changed the bytes",
            ));
        }
        let shape = Shape::of(&bytes).map_err(|e| finding(Class::Fidelity, name, e))?;
        input_shape
            .kept_by(&shape, outcome.rewritten_functions)
            .map_err(|e| finding(Class::Fidelity, name, e))?;
        if shape.code_hash == input_shape.code_hash {
            continue; // same code: runs exactly as the input does
        }
        stats.rewritten += 1;
        // Outputs with the same code as one executed already behave the same.
        if executed.iter().any(|(h, _)| *h == shape.code_hash) {
            continue;
        }
        executed.push((shape.code_hash, name.to_string()));
        let original = original.get_or_insert_with(|| run(input, &plan, Side::Original, &[]));
        let Some(original) = original else {
            if std::env::var_os("WASMFIX_FUZZ_DEBUG").is_some() {
                let e = Module::new(engine(Side::Original), input).err();
                eprintln!("not executable: {:?}", e.map(|e| format!("{e:#}")));
            }
            stats.not_executable += 1;
            break;
        };
        let mut meta = Meta::of(&input_shape, &shape, pipeline.options.fpcast_diagnose);
        // Messages are written only when wasmfix could add its message writer; then every
        // pass that stops the program writes its own.
        meta.writes_stderr = writes_messages(&bytes);
        if meta.writes_stderr {
            meta.messages = MESSAGES.to_vec();
        }
        meta.stack_region = plan.stack.or_else(|| {
            let m = wasmfix::module::Module::parse(input).ok()?;
            let region = wasmfix::facts::Facts::new(&m).stack.ok()?;
            Some((region.low, region.high))
        });
        let rewritten = run(
            &bytes,
            &plan,
            Side::Rewritten(meta.extra_memory),
            &shape.table_views(),
        )
        .ok_or_else(|| {
            finding(
                Class::Divergence,
                name,
                "the rewritten module does not compile in wasmtime while the original does",
            )
        })?;
        compare(original, &rewritten, &plan, &meta, stats)
            .map_err(|e| finding(Class::Divergence, name, e))?;
    }
    Ok(())
}

/// Passes that still add a feature the input may not use, because their WebAssembly 1.0
/// design has not landed (issue 14): an output of a pipeline with one of these passes may use
/// its feature besides the input's. Each entry goes when its pass's design lands;
/// `features::only_the_input_features_and_the_enabled_ones` fails while an entry is no longer
/// needed. Empty since fpcast's `mvp` design (views appended to the table) and heap-canary's
/// plain copy/fill loops landed: every pass stays within the run's features.
pub const WAITING_FOR_MVP_DESIGN: &[(&str, wasmfix::features::Feature)] = &[];

/// The features an output of `pipeline` may use: the input's and those the pipeline's options
/// enable; and, separately, what [`WAITING_FOR_MVP_DESIGN`] adds for its passes.
pub fn allowed_features(
    input: &[u8],
    pipeline: &Pipeline,
) -> (wasmfix::features::FeatureSet, wasmfix::features::FeatureSet) {
    let m = wasmfix::module::Module::parse(input).expect("a valid input");
    let used = wasmfix::facts::Facts::new(&m).features(&m).used;
    let allowed = used.union(pipeline.options.features.enabled).closed();
    let waiting = WAITING_FOR_MVP_DESIGN
        .iter()
        .filter(|(pass, _)| pipeline.passes.iter().any(|p| p.name() == *pass))
        .map(|&(_, f)| f)
        .collect::<wasmfix::features::FeatureSet>()
        .minus(allowed);
    (allowed, waiting)
}

/// Checks that `output` validates with exactly the features its input uses plus those the
/// pipeline enables (issue 14). `Ok(true)`: only with a feature of
/// [`WAITING_FOR_MVP_DESIGN`] too.
pub fn check_output_features(
    input: &[u8],
    output: &[u8],
    pipeline: &Pipeline,
) -> Result<bool, String> {
    let (allowed, waiting) = allowed_features(input, pipeline);
    let validate = |set: wasmfix::features::FeatureSet| {
        wasmparser::Validator::new_with_features(set.wasm_features())
            .validate_all(output)
            .map(|_| ())
    };
    match validate(allowed) {
        Ok(()) => Ok(false),
        Err(e) if waiting.is_empty() => Err(format!(
            "the output needs more than the input's features and the enabled ones ({}): {e}",
            allowed.names()
        )),
        Err(e) => match validate(allowed.union(waiting).closed()) {
            Ok(()) => Ok(true),
            Err(_) => Err(format!(
                "the output needs more than the input's features, the enabled ones and {} \
                 (waiting for an MVP design) ({}): {e}",
                waiting.names(),
                allowed.names()
            )),
        },
    }
}

/// Whether `bytes` has wasmfix's message writer (a function named `wasmfix:msg_end`).
pub fn writes_messages(bytes: &[u8]) -> bool {
    for payload in wasmparser::Parser::new(0).parse_all(bytes).flatten() {
        if let wasmparser::Payload::CustomSection(c) = payload
            && let wasmparser::KnownCustom::Name(names) = c.as_known()
        {
            for name in names.into_iter().flatten() {
                if let wasmparser::Name::Function(map) = name
                    && map
                        .into_iter()
                        .flatten()
                        .any(|n| n.name == "wasmfix:msg_end")
                {
                    return true;
                }
            }
        }
    }
    false
}

/// What the fidelity checks compare: imports, function types, exports, bodies.
struct Shape {
    imports: Vec<String>,
    func_types: Vec<u32>,
    exports: Vec<(String, String, u32)>,
    bodies: Vec<Vec<u8>>,
    /// Hash of every non-custom section: equal hashes run the same.
    code_hash: u64,
    memory0_min: Option<u64>,
    applied: serde_json::Map<String, serde_json::Value>,
    /// Functions that are imported or defined.
    funcs: u32,
    /// An `fd_write` import a stack-overflow message can use.
    writes_stderr: bool,
}

impl Shape {
    /// Exported tables with the slots fpcast's WebAssembly 1.0 design appended to them (the
    /// `views` its `wasmfix` record lists): (export name, slots).
    fn table_views(&self) -> Vec<(String, u64)> {
        let Some(views) = self.applied.get("fpcast").and_then(|f| f.get("views")) else {
            return Vec::new();
        };
        let views: Vec<(u32, u64)> = serde_json::from_value(views.clone()).unwrap_or_default();
        self.exports
            .iter()
            .filter(|(_, kind, _)| kind == "Table")
            .filter_map(|(name, _, index)| {
                let (_, n) = views.iter().find(|(t, _)| t == index)?;
                Some((name.clone(), *n))
            })
            .collect()
    }

    fn of(bytes: &[u8]) -> Result<Shape, String> {
        let mut s = Shape {
            imports: Vec::new(),
            func_types: Vec::new(),
            exports: Vec::new(),
            bodies: Vec::new(),
            code_hash: 0,
            memory0_min: None,
            applied: Default::default(),
            funcs: 0,
            writes_stderr: false,
        };
        let mut hasher = DefaultHasher::new();
        let mut start = 8usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| e.to_string())?;
            if let Some((id, range)) = payload.as_section() {
                if id != 0 {
                    bytes[start..range.end as usize].hash(&mut hasher);
                }
                start = range.end as usize;
            }
            use wasmparser::Payload as P;
            match payload {
                P::ImportSection(r) => {
                    for i in r.into_imports() {
                        let i = i.map_err(|e| e.to_string())?;
                        if let wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) =
                            i.ty
                        {
                            s.func_types.push(t);
                            if i.name == "fd_write" {
                                s.writes_stderr = true;
                            }
                        }
                        if let wasmparser::TypeRef::Memory(m) = i.ty
                            && s.memory0_min.is_none()
                        {
                            s.memory0_min = Some(m.initial);
                        }
                        s.imports
                            .push(format!("{}.{}: {:?}", i.module, i.name, i.ty));
                    }
                }
                P::FunctionSection(r) => {
                    for t in r {
                        s.func_types.push(t.map_err(|e| e.to_string())?);
                    }
                }
                P::MemorySection(r) => {
                    for m in r {
                        let m = m.map_err(|e| e.to_string())?;
                        if s.memory0_min.is_none() {
                            s.memory0_min = Some(m.initial);
                        }
                    }
                }
                P::ExportSection(r) => {
                    for e in r {
                        let e = e.map_err(|e| e.to_string())?;
                        s.exports
                            .push((e.name.to_string(), format!("{:?}", e.kind), e.index));
                    }
                }
                P::CodeSectionEntry(body) => {
                    s.bodies.push(
                        bytes[body.range().start as usize..body.range().end as usize].to_vec(),
                    );
                }
                P::CustomSection(c) if c.name() == "wasmfix" => {
                    s.applied = serde_json::from_slice(c.data()).unwrap_or_default();
                }
                _ => {}
            }
        }
        s.code_hash = hasher.finish();
        s.funcs = s.func_types.len() as u32;
        Ok(s)
    }

    /// Whether `out` keeps every original index: same imports, same exports, the same type
    /// for every original function, and at most `rewritten` original bodies changed.
    fn kept_by(&self, out: &Shape, rewritten: usize) -> Result<(), String> {
        // stack-first patches relocated immediates in place: same length, same index.
        let patched = out
            .applied
            .get("stack")
            .is_some_and(|s| s.get("relocated").is_some());
        if out.imports != self.imports {
            return Err("the imports changed".into());
        }
        // adapter-memory adds one export after the original ones.
        let added = out.applied.contains_key("adapter-memory")
            && !self.applied.contains_key("adapter-memory")
            && out.exports.len() == self.exports.len() + 1
            && out
                .exports
                .last()
                .is_some_and(|e| e.0 == "cabi_realloc_adapter");
        let kept = if added {
            &out.exports[..self.exports.len()]
        } else {
            &out.exports[..]
        };
        if kept != self.exports {
            return Err("the exports changed".into());
        }
        if out.func_types.len() < self.func_types.len()
            || out.func_types[..self.func_types.len()] != self.func_types[..]
        {
            return Err("an original function changed its type or index".into());
        }
        let changed = self
            .bodies
            .iter()
            .zip(&out.bodies)
            .filter(|(a, b)| a != b && !(patched && a.len() == b.len()))
            .count();
        if out.bodies.len() < self.bodies.len() || changed > rewritten {
            return Err(format!(
                "{changed} original bodies changed but {rewritten} were reported rewritten"
            ));
        }
        Ok(())
    }
}

/// What a rewritten module's passes applied, as its `wasmfix` section records.
struct Meta {
    fpcast: bool,
    guarded: bool,
    relocated: bool,
    /// Functions of the original (added ones come after).
    original_funcs: u32,
    writes_stderr: bool,
    /// fpcast's diagnose reporters trap on `unreachable` in an added function.
    diagnose: bool,
    /// fpcast types entries added at run time (GC) and adapts castable calls to them.
    run_time_typed: bool,
    extra_memory: usize,
    /// stack-canary protected frames: each takes 16 more bytes of stack.
    canary: bool,
    /// The input's stack region `[low, high)` (the plan's, else wasmfix's facts).
    stack_region: Option<(u64, u64)>,
    /// heap-canary wrapped the allocator: allocation addresses differ.
    heap_wrapped: bool,
    /// adapter-memory reserved memory below the heap and added an export.
    adapter_memory: bool,
    /// bounds checks: the address ranges it stops accesses to.
    bounds: Option<Vec<(u64, u64)>>,
    /// The wasmfix messages the rewritten module can write (it has the message writer).
    messages: Vec<&'static str>,
}

/// The messages with which added code stops a program.
const MESSAGES: &[&str] = &[
    "wasmfix: stack overflow in ",
    "wasmfix: null pointer dereference at address ",
    "wasmfix: write to read-only data at address ",
    "wasmfix: double free of block at ",
    "wasmfix: heap buffer overflow",
    "wasmfix: stack buffer overflow in ",
];

impl Meta {
    fn of(before: &Shape, after: &Shape, diagnose: bool) -> Meta {
        let stack = after.applied.get("stack");
        let had = |k: &str| before.applied.contains_key(k);
        Meta {
            fpcast: after.applied.contains_key("fpcast") && !had("fpcast"),
            run_time_typed: !had("fpcast")
                && after
                    .applied
                    .get("fpcast")
                    .and_then(|f| f.get("run_time_entries_adapted"))
                    .and_then(|v| v.as_bool())
                    == Some(true),
            guarded: !had("stack") && stack.is_some_and(|s| s.get("guarded").is_some()),
            relocated: !had("stack") && stack.is_some_and(|s| s.get("relocated").is_some()),
            original_funcs: before.funcs,
            writes_stderr: before.writes_stderr,
            diagnose,
            canary: after.applied.contains_key("stack-canary") && !had("stack-canary"),
            stack_region: None,
            heap_wrapped: after.applied.contains_key("heap-canary") && !had("heap-canary"),
            adapter_memory: after.applied.contains_key("adapter-memory") && !had("adapter-memory"),
            bounds: after
                .applied
                .get("bounds")
                .filter(|_| !had("bounds"))
                .map(|b| {
                    ["null", "read_only"]
                        .iter()
                        .filter_map(|k| {
                            let r = b.get(k)?.as_array()?;
                            Some((r.first()?.as_u64()?, r.get(1)?.as_u64()?))
                        })
                        .collect()
                }),
            messages: Vec::new(),
            extra_memory: after
                .memory0_min
                .zip(before.memory0_min)
                .map_or(0, |(a, b)| {
                    (a.saturating_sub(b) as usize).saturating_mul(65536)
                }),
        }
    }
}

/// An argument value, independent of any store.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub enum Arg {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
    Null,
    /// The n-th slot the harness appended to the exported table in this session (`@grow`):
    /// its index differs between modules whose table sizes differ.
    Appended(u32),
}

/// What the plan says a call must do in a rewritten module.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Expect {
    /// No oracle: exact, or one of the contract exceptions the harness can recognize.
    Any,
    /// Exactly what the original does.
    Exact,
    /// A castable mismatch: the original traps; with fpcast the call returns this (the first
    /// result as an integer, `None` when the site has no result).
    Cast(Option<i64>),
    /// The call overflows the stack: guarded modules stop it, relocated ones trap.
    Overflow,
    /// The call fits the stack, but not with stack-canary's 16 more bytes per frame: exactly
    /// what the original does, unless stack-canary applied; then an overflow.
    ExactUnlessCanary,
    /// A castable mismatch with an entry added at run time: exactly what the original does
    /// (it traps), unless fpcast types run-time entries (GC); then [`Expect::Cast`].
    CastAtRunTime(Option<i64>),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Call {
    pub export: String,
    /// `Arg::I64` values are converted to the parameter's type (the C-like plan writes
    /// integers only).
    pub args: Vec<Arg>,
    pub expect: Expect,
}

/// Sessions of calls; each session runs in a fresh instance.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub sessions: Vec<Vec<Call>>,
    /// The stack region `[low, high)`, when the generator knows it.
    #[serde(default)]
    pub stack: Option<(u64, u64)>,
}

impl Plan {
    /// The plan the module carries in its `wasmfix-fuzz-plan` section, else every exported
    /// function called with zeros, then with values derived from the module's bytes.
    pub fn for_module(bytes: &[u8]) -> Plan {
        for payload in wasmparser::Parser::new(0).parse_all(bytes).flatten() {
            if let wasmparser::Payload::CustomSection(c) = payload
                && c.name() == PLAN_SECTION
                && let Ok(plan) = serde_json::from_slice(c.data())
            {
                return plan;
            }
        }
        let mut rng = Rng(hash(bytes));
        let mut funcs: Vec<(String, u32)> = Vec::new();
        let mut types: Vec<Option<wasmparser::FuncType>> = Vec::new();
        let mut func_types: Vec<u32> = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(bytes).flatten() {
            use wasmparser::Payload as P;
            match payload {
                P::TypeSection(r) => {
                    for g in r.into_iter().flatten() {
                        for t in g.into_types() {
                            types.push(match t.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(f),
                                _ => None,
                            });
                        }
                    }
                }
                P::ImportSection(r) => {
                    for i in r.into_imports().flatten() {
                        if let wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) =
                            i.ty
                        {
                            func_types.push(t);
                        }
                    }
                }
                P::FunctionSection(r) => func_types.extend(r.into_iter().flatten()),
                P::ExportSection(r) => {
                    for e in r.into_iter().flatten() {
                        if e.kind == wasmparser::ExternalKind::Func {
                            funcs.push((e.name.to_string(), e.index));
                        }
                    }
                }
                _ => {}
            }
        }
        let mut session = Vec::new();
        for round in 0..2 {
            for (name, f) in &funcs {
                let Some(Some(ty)) = func_types
                    .get(*f as usize)
                    .and_then(|&t| types.get(t as usize))
                else {
                    continue;
                };
                let args: Option<Vec<Arg>> = ty
                    .params()
                    .iter()
                    .map(|&p| arg_for(p, round, &mut rng))
                    .collect();
                if let Some(args) = args {
                    session.push(Call {
                        export: name.clone(),
                        args,
                        expect: Expect::Any,
                    });
                }
            }
        }
        session.truncate(24);
        Plan {
            sessions: vec![session],
            stack: None,
        }
    }
}

fn arg_for(ty: wasmparser::ValType, round: u32, rng: &mut Rng) -> Option<Arg> {
    use wasmparser::ValType as V;
    let pick = |rng: &mut Rng| -> u64 {
        if round == 0 {
            return 0;
        }
        match rng.next() % 6 {
            0 => 1,
            1 => u64::MAX,
            2 => rng.next() % 64,
            3 => 0x8000_0000,
            _ => rng.next(),
        }
    };
    Some(match ty {
        V::I32 => Arg::I32(pick(rng) as i32),
        V::I64 => Arg::I64(pick(rng) as i64),
        V::F32 => Arg::F32(if round == 0 {
            0
        } else {
            (rng.next() % 1000) as f32 as u32 ^ (pick(rng) as u32 & 0x8000_0000)
        }),
        V::F64 => Arg::F64(if round == 0 {
            0
        } else {
            ((rng.next() % 1000) as f64).to_bits()
        }),
        V::V128 => Arg::V128(((pick(rng) as u128) << 64) | pick(rng) as u128),
        V::Ref(r) if r.is_nullable() => Arg::Null,
        V::Ref(_) => return None,
    })
}

/// SplitMix64: a small deterministic generator for argument values and seeds.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[derive(Clone, Copy)]
enum Side {
    Original,
    /// A rewritten module whose memory 0 may be larger by this many bytes.
    Rewritten(usize),
}

fn config(side: Side) -> Config {
    let mut c = Config::new();
    c.consume_fuel(true)
        .cranelift_opt_level(OptLevel::None)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .parallel_compilation(false)
        .wasm_threads(true)
        .shared_memory(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        .wasm_bulk_memory(true)
        .wasm_reference_types(true)
        .wasm_function_references(true)
        .wasm_gc(true)
        .wasm_multi_value(true)
        .wasm_multi_memory(true)
        .wasm_memory64(true)
        .wasm_tail_call(true)
        .wasm_extended_const(true)
        .wasm_wide_arithmetic(true)
        .wasm_custom_page_sizes(true)
        .wasm_exceptions(true)
        // The original gets less native stack: an original that exhausts it is inconclusive,
        // a rewritten one (a few more frames: adapters, handlers) should not.
        .max_wasm_stack(match side {
            Side::Original => 256 << 10,
            Side::Rewritten(_) => 1 << 20,
        });
    c
}

fn engine(side: Side) -> &'static Engine {
    static ORIGINAL: OnceLock<Engine> = OnceLock::new();
    static REWRITTEN: OnceLock<Engine> = OnceLock::new();
    let cell = match side {
        Side::Original => &ORIGINAL,
        Side::Rewritten(_) => &REWRITTEN,
    };
    cell.get_or_init(|| Engine::new(&config(side)).expect("wasmtime engine"))
}

/// How one call (or the instantiation) ended.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// Results, each as a comparable string (floats and vectors by bits, references by nullness).
    Values(Vec<String>),
    Trap {
        trap: Option<Trap>,
        /// The message when the error is not a wasm trap.
        other: String,
        /// Function index of the innermost wasm frame.
        top: Option<u32>,
    },
}

impl Event {
    fn trap(&self) -> Option<Trap> {
        match self {
            Event::Trap { trap, .. } => *trap,
            _ => None,
        }
    }

    /// Out of fuel or of native stack: the run says nothing about correctness.
    fn exhausted(&self) -> bool {
        matches!(self.trap(), Some(Trap::OutOfFuel | Trap::StackOverflow))
    }

    fn same_as(&self, other: &Event) -> bool {
        match (self, other) {
            (Event::Values(a), Event::Values(b)) => a == b,
            (
                Event::Trap {
                    trap: a, other: x, ..
                },
                Event::Trap {
                    trap: b, other: y, ..
                },
            ) => a == b && (a.is_some() || x == y),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    event: Event,
    /// Hash of the exported globals, memory sizes and table sizes after the call.
    state: u64,
    /// Per exported memory (in export order), a hash of each [`CHUNK`] bytes after the call.
    memories: Vec<Vec<u64>>,
    stderr: String,
}

/// Memory contents are compared in chunks of this many bytes, so that a region a contract lets
/// differ (the stack under stack-canary) can be left out.
const CHUNK: usize = 64;

/// Per session: how instantiation ended (with what it wrote), then one step per call (fewer
/// when a step stopped it).
struct Trace {
    sessions: Vec<(Step, Vec<Step>)>,
}

struct Host {
    limits: StoreLimits,
    stderr: Vec<u8>,
}

fn event_of(e: &wasmtime::Error) -> Event {
    let top = e
        .downcast_ref::<WasmBacktrace>()
        .and_then(|bt| bt.frames().first().map(|f| f.func_index()));
    match e.downcast_ref::<Trap>() {
        Some(t) => Event::Trap {
            trap: Some(*t),
            other: String::new(),
            top,
        },
        None => Event::Trap {
            trap: None,
            other: e.to_string().lines().next().unwrap_or_default().to_string(),
            top,
        },
    }
}

fn show(v: &Val) -> String {
    match v {
        Val::I32(x) => format!("i32:{x}"),
        Val::I64(x) => format!("i64:{x}"),
        Val::F32(x) => format!("f32:{x:#x}"),
        Val::F64(x) => format!("f64:{x:#x}"),
        Val::V128(x) => format!("v128:{:#x}", x.as_u128()),
        Val::FuncRef(f) => format!("funcref:{}", f.is_some()),
        Val::ExternRef(r) => format!("externref:{}", r.is_some()),
        Val::AnyRef(r) => format!("anyref:{}", r.is_some()),
        Val::ExnRef(r) => format!("exnref:{}", r.is_some()),
        Val::ContRef(r) => format!("contref:{}", r.is_some()),
    }
}

fn to_val(arg: &Arg, ty: &ValType) -> Option<Val> {
    Some(match (arg, ty) {
        (Arg::I32(x), ValType::I32) => Val::I32(*x),
        (Arg::I64(x), ValType::I64) => Val::I64(*x),
        (Arg::I64(x), ValType::I32) => Val::I32(*x as i32),
        (Arg::I64(x), ValType::F32) => Val::F32((*x as f32).to_bits()),
        (Arg::I64(x), ValType::F64) => Val::F64((*x as f64).to_bits()),
        (Arg::F32(x), ValType::F32) => Val::F32(*x),
        (Arg::F64(x), ValType::F64) => Val::F64(*x),
        (Arg::V128(x), ValType::V128) => Val::V128((*x).into()),
        (Arg::Null, ValType::Ref(r)) if r.is_nullable() => Val::null_ref(r.heap_type()),
        _ => return None,
    })
}

/// A harness step that changes the exported table (`@grow`, `@set`); `None` when the module
/// has no such table or function to store (the session ends).
fn change_table(
    store: &mut Store<Host>,
    instance: &Instance,
    call: &Call,
    appended: &mut Vec<u64>,
) -> Option<Event> {
    let table = instance.get_table(&mut *store, TABLE_EXPORT)?;
    let entry = |store: &mut Store<Host>, arg: Option<&Arg>| -> Option<wasmtime::Ref> {
        let f = match arg? {
            Arg::I64(f) if *f < 0 => None,
            Arg::I64(f) => Some(instance.get_func(&mut *store, &format!("t{f}"))?),
            _ => return None,
        };
        Some(wasmtime::Ref::Func(f))
    };
    let done = match call.export.as_str() {
        TABLE_GROW => {
            let f = entry(store, call.args.first())?;
            table
                .grow(&mut *store, 1, f)
                .map(|slot| appended.push(slot))
        }
        TABLE_SET => {
            let Some(&Arg::Appended(n)) = call.args.first() else {
                return None;
            };
            let slot = *appended.get(n as usize)?;
            let f = entry(store, call.args.get(1))?;
            table.set(&mut *store, slot, f)
        }
        _ => return None,
    };
    Some(match done {
        Ok(()) => Event::Values(Vec::new()),
        Err(e) => event_of(&e),
    })
}

/// Hash of what the module exports besides functions and memory contents, and the memory
/// contents by chunk, after a call. `views`: exported tables with slots fpcast appended, which
/// their sizes do not count.
fn state(
    store: &mut Store<Host>,
    instance: &Instance,
    views: &[(String, u64)],
) -> (u64, Vec<Vec<u64>>) {
    let mut h = DefaultHasher::new();
    let mut memories = Vec::new();
    let exports: Vec<(String, Extern)> = instance
        .exports(&mut *store)
        .map(|e| (e.name().to_string(), e.into_extern()))
        .collect();
    for (name, ext) in exports {
        name.hash(&mut h);
        match ext {
            Extern::Global(g) => show(&g.get(&mut *store)).hash(&mut h),
            Extern::Memory(m) => {
                let data = m.data(&*store);
                data.len().hash(&mut h);
                memories.push(data.chunks(CHUNK).map(hash).collect());
            }
            Extern::SharedMemory(m) => m.data_size().hash(&mut h),
            Extern::Table(t) => {
                let appended = views.iter().find(|(n, _)| *n == name).map_or(0, |v| v.1);
                t.size(&*store).saturating_sub(appended).hash(&mut h)
            }
            _ => {}
        }
    }
    (h.finish(), memories)
}

/// fd_write(fd, iovs, iovs_len, nwritten) for the messages of the rewritten module: records
/// what it writes (at most 64 KiB) and says everything was written.
fn fd_write(
    mut caller: wasmtime::Caller<'_, Host>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let arg = |i: usize| params.get(i).and_then(|v| v.i32()).unwrap_or(0) as u32 as usize;
    let (iovs, count, nwritten) = (arg(1), arg(2), arg(3));
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        if let Some(r) = results.first_mut() {
            *r = Val::I32(8);
        }
        return Ok(());
    };
    let mut written = Vec::new();
    let data = mem.data(&caller);
    for k in 0..count.min(16) {
        let at = iovs + 8 * k;
        let word = |a: usize| {
            data.get(a..a + 4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        };
        let (base, len) = (word(at), word(at + 4));
        if let Some(bytes) = data.get(base..base.saturating_add(len)) {
            written.extend_from_slice(bytes);
        }
    }
    let n = written.len() as u32;
    if caller.data().stderr.len() < 65536 {
        caller.data_mut().stderr.extend(written);
    }
    if let Some(slot) = mem.data_mut(&mut caller).get_mut(nwritten..nwritten + 4) {
        slot.copy_from_slice(&n.to_le_bytes());
    }
    if let Some(r) = results.first_mut() {
        *r = Val::I32(0);
    }
    Ok(())
}

/// Runs the plan in wasmtime. `None` when the module cannot run here at all (wasmtime does not
/// compile it, or one of its imports cannot be given a default).
fn run(bytes: &[u8], plan: &Plan, side: Side, views: &[(String, u64)]) -> Option<Trace> {
    let engine = engine(side);
    let module = Module::new(engine, bytes).ok()?;
    let extra = match side {
        Side::Original => 0,
        Side::Rewritten(extra) => extra,
    };
    let mut sessions = Vec::new();
    for calls in &plan.sessions {
        let mut store = Store::new(
            engine,
            Host {
                limits: StoreLimitsBuilder::new()
                    .memory_size(MEMORY_LIMIT + extra)
                    .table_elements(TABLE_LIMIT)
                    .build(),
                stderr: Vec::new(),
            },
        );
        store.limiter(|h| &mut h.limits);
        let mut linker: Linker<Host> = Linker::new(engine);
        for import in module.imports() {
            if import.name() == "fd_write"
                && let ExternType::Func(ty) = import.ty()
                && ty.params().len() == 4
                && ty.params().all(|p| matches!(p, ValType::I32))
                && ty.results().len() == 1
                && ty.results().all(|p| matches!(p, ValType::I32))
            {
                let _ = linker.func_new(import.module(), import.name(), ty, fd_write);
            }
        }
        linker
            .define_unknown_imports_as_default_values(&mut store, &module)
            .ok()?;
        store.set_fuel(INSTANTIATE_FUEL).expect("fuel");
        let instance = match linker.instantiate(&mut store, &module) {
            Ok(i) => i,
            Err(e) => {
                let step = Step {
                    event: event_of(&e),
                    state: 0,
                    memories: Vec::new(),
                    stderr: String::from_utf8_lossy(&store.data().stderr).into_owned(),
                };
                sessions.push((step, Vec::new()));
                continue;
            }
        };
        let mut steps = Vec::new();
        let mut appended: Vec<u64> = Vec::new();
        for call in calls {
            if call.export.starts_with('@') {
                let Some(event) = change_table(&mut store, &instance, call, &mut appended) else {
                    break;
                };
                let (state, memories) = state(&mut store, &instance, views);
                steps.push(Step {
                    event,
                    state,
                    memories,
                    stderr: String::new(),
                });
                continue;
            }
            let Some(func) = instance.get_func(&mut store, &call.export) else {
                break;
            };
            let ty = func.ty(&store);
            let args: Option<Vec<Val>> = call
                .args
                .iter()
                .map(|a| match a {
                    Arg::Appended(n) => appended.get(*n as usize).map(|&s| Arg::I32(s as i32)),
                    other => Some(*other),
                })
                .zip(ty.params())
                .map(|(a, t)| to_val(&a?, &t))
                .collect();
            let Some(args) = args.filter(|a| a.len() == ty.params().len()) else {
                break;
            };
            let mut results: Vec<Val> = ty
                .results()
                .map(|t| t.default_value().unwrap_or(Val::I32(0)))
                .collect();
            let fuel = match side {
                Side::Original => FUEL,
                Side::Rewritten(_) => 10 * FUEL + 100_000,
            };
            store.set_fuel(fuel).expect("fuel");
            store.data_mut().stderr.clear();
            let event = match call_func(&mut store, &func, &args, &mut results) {
                Ok(()) => Event::Values(results.iter().map(show).collect()),
                Err(e) => event_of(&e),
            };
            let stop = matches!(event, Event::Trap { .. });
            let (state, memories) = state(&mut store, &instance, views);
            steps.push(Step {
                event,
                state,
                memories,
                stderr: String::from_utf8_lossy(&store.data().stderr).into_owned(),
            });
            // A trap can leave a module half-updated; the next call still runs, as a host
            // would do, unless the store itself is poisoned by running out of fuel.
            if stop && steps.last().unwrap().event.exhausted() {
                break;
            }
        }
        let instantiated = Step {
            event: Event::Values(Vec::new()),
            state: 0,
            memories: Vec::new(),
            stderr: String::new(),
        };
        sessions.push((instantiated, steps));
    }
    Some(Trace { sessions })
}

fn call_func(
    store: &mut Store<Host>,
    func: &Func,
    args: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    func.call(store, args, results)
}

/// Compares the rewritten trace with the original's under the passes' contracts.
fn compare(
    original: &Trace,
    rewritten: &Trace,
    plan: &Plan,
    meta: &Meta,
    stats: &mut Stats,
) -> Result<(), String> {
    for (k, ((inst_a, steps_a), (inst_b, steps_b))) in original
        .sessions
        .iter()
        .zip(&rewritten.sessions)
        .enumerate()
    {
        if std::env::var_os("WASMFIX_FUZZ_DEBUG").is_some() {
            eprintln!(
                "session {k}: {:?} / {:?}: {} steps",
                inst_a.event,
                inst_b.event,
                steps_a.len()
            );
        }
        // Not a trap: the engine cannot instantiate it (a limit, an unsupported feature).
        if inst_a.event.same_as(&inst_b.event)
            && matches!(inst_a.event, Event::Trap { trap: None, .. })
        {
            stats.not_executable += 1;
            continue;
        }
        // A start function runs at instantiation, under the same contracts as a call.
        match judge(inst_a, inst_b, Expect::Any, meta, stats) {
            Verdict::Same => {}
            Verdict::Stop => continue,
            Verdict::Differ(why) => {
                return Err(format!(
                    "session {k}: instantiation: {why}: original {:?}, rewritten {:?}",
                    inst_a.event, inst_b.event
                ));
            }
        }
        let calls = &plan.sessions[k];
        for (i, (a, b)) in steps_a.iter().zip(steps_b).enumerate() {
            let call = &calls[i];
            let at = || format!("session {k} call {i} `{}`{:?}", call.export, call.args);
            stats.calls_compared += 1;
            match judge(a, b, call.expect, meta, stats) {
                // A trap leaves the stack pointer where the trapping frame put it, 16 bytes
                // lower per protected frame under stack-canary: the session ends there.
                Verdict::Same if meta.canary && matches!(a.event, Event::Trap { .. }) => break,
                Verdict::Same => {
                    if !meta.relocated && !meta.adapter_memory && !same_state(a, b, meta) {
                        return Err(format!(
                            "{}: same result {:?} but the exported state differs",
                            at(),
                            a.event
                        ));
                    }
                }
                Verdict::Stop => break,
                Verdict::Differ(why) => {
                    return Err(format!(
                        "{}: {why}: original {:?}, rewritten {:?} (stderr {:?})",
                        at(),
                        a.event,
                        b.event,
                        b.stderr
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether the exported state after a call is the same, except where a contract lets it differ:
/// heap-canary changes every allocation's address (16 header and 4 redzone bytes per block), so
/// memory, which holds the allocator's state and the blocks, is compared by size only;
/// stack-canary gives each frame 16 more bytes, so the stack region's dead bytes (below the
/// stack pointer, which is back at its start after a call) may differ.
fn same_state(a: &Step, b: &Step, meta: &Meta) -> bool {
    if a.state != b.state || a.memories.len() != b.memories.len() {
        return false;
    }
    if meta.heap_wrapped {
        return true;
    }
    let stack = if meta.canary { meta.stack_region } else { None };
    a.memories
        .iter()
        .zip(&b.memories)
        .enumerate()
        .all(|(k, (x, y))| {
            x.len() == y.len()
                && x.iter().zip(y).enumerate().all(|(i, (p, q))| {
                    let (lo, hi) = ((i * CHUNK) as u64, ((i + 1) * CHUNK) as u64);
                    p == q || (k == 0 && stack.is_some_and(|(low, high)| lo < high && hi > low))
                })
        })
}

enum Verdict {
    Same,
    /// A contract exception or an inconclusive original: the rest of the session says nothing.
    Stop,
    Differ(&'static str),
}

fn guard_stop(b: &Step, meta: &Meta) -> bool {
    matches!(b.event, Event::Trap { trap: Some(Trap::UnreachableCodeReached), top: Some(f), .. } if f >= meta.original_funcs)
        && (!meta.writes_stderr || b.stderr.contains("wasmfix: stack overflow in "))
}

/// The rewritten module stopped in code wasmfix added (`unreachable` in an added function),
/// with one of `messages` on stderr when it can write them.
fn wasmfix_stop(b: &Step, meta: &Meta, messages: &[&str]) -> bool {
    let writes = messages.iter().any(|m| meta.messages.contains(m));
    matches!(b.event, Event::Trap { trap: Some(Trap::UnreachableCodeReached), top: Some(f), .. } if f >= meta.original_funcs)
        && (!writes || messages.iter().any(|m| b.stderr.contains(m)))
}

/// A bounds stop: its message, when written, names an address inside a checked range.
fn bounds_stop(b: &Step, meta: &Meta) -> bool {
    let Some(ranges) = &meta.bounds else {
        return false;
    };
    let messages = &MESSAGES[1..3];
    if !wasmfix_stop(b, meta, messages) {
        return false;
    }
    let Some(at) = b.stderr.split(" at address 0x").nth(1) else {
        return !messages.iter().any(|m| meta.messages.contains(m));
    };
    let hex: String = at.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16)
        .is_ok_and(|address| ranges.iter().any(|&(lo, hi)| lo <= address && address < hi))
}

fn judge(a: &Step, b: &Step, expect: Expect, meta: &Meta, stats: &mut Stats) -> Verdict {
    if a.event.exhausted() {
        stats.inconclusive += 1;
        return Verdict::Stop;
    }
    let overflows = match expect {
        Expect::Overflow => true,
        Expect::ExactUnlessCanary => meta.canary,
        _ => false,
    };
    match expect {
        _ if overflows
            && !meta.guarded
            && !meta.relocated
            && (meta.canary || meta.heap_wrapped || meta.adapter_memory) =>
        {
            stats.overflow_layout_changed += 1;
            return Verdict::Stop;
        }
        _ if overflows && meta.guarded => {
            return if guard_stop(b, meta) {
                stats.guard_stops += 1;
                Verdict::Stop
            } else {
                Verdict::Differ("an overflow was not stopped by the guard")
            };
        }
        _ if overflows && meta.relocated => {
            return if matches!(b.event, Event::Trap { trap: Some(_), .. }) {
                stats.relocated_overflow_traps += 1;
                Verdict::Stop
            } else {
                Verdict::Differ("an overflow of the relocated stack did not trap")
            };
        }
        Expect::CastAtRunTime(want) if meta.fpcast && meta.run_time_typed => {
            let verdict = judge(a, b, Expect::Cast(want), meta, stats);
            if matches!(verdict, Verdict::Stop) {
                stats.run_time_cast_checked += 1;
            }
            return verdict;
        }
        Expect::Cast(want) if meta.fpcast => {
            if a.event.trap() != Some(Trap::BadSignature) {
                return Verdict::Differ("the plan's castable mismatch did not trap before");
            }
            let got = match &b.event {
                Event::Values(v) => v.first().map(|s| value_of(s)),
                _ => return Verdict::Differ("a castable mismatch still traps"),
            };
            stats.cast_checked_value += 1;
            return if got == want {
                Verdict::Stop
            } else {
                Verdict::Differ("a castable mismatch returned the wrong value")
            };
        }
        _ => {}
    }
    if a.event.same_as(&b.event) {
        return Verdict::Same;
    }
    // --fpcast-diagnose: a mismatch no cast fixes reports itself and traps in an added function.
    if meta.diagnose
        && a.event.trap() == Some(Trap::BadSignature)
        && matches!(b.event, Event::Trap { trap: Some(Trap::UnreachableCodeReached), top: Some(f), .. } if f >= meta.original_funcs)
    {
        stats.cast_contract += 1;
        return Verdict::Stop;
    }
    if expect == Expect::Any {
        // fpcast: a mismatch that trapped may now run the called function through an adapter;
        // it then returns, runs out of fuel, or traps in another function than the call site.
        if meta.fpcast && a.event.trap() == Some(Trap::BadSignature) {
            let at_site = |e: &Event| match e {
                Event::Trap { top, .. } => *top,
                _ => None,
            };
            let moved_on = match &b.event {
                Event::Values(_) => true,
                Event::Trap { top, .. } => *top != at_site(&a.event),
            };
            if moved_on || b.event.exhausted() {
                stats.cast_contract += 1;
                return Verdict::Stop;
            }
        }
        if meta.guarded && guard_stop(b, meta) {
            stats.guard_stops += 1;
            return Verdict::Stop;
        }
    }
    // An overflow the original survived ran its stack into the data and the null page.
    if expect == Expect::Any || overflows {
        // --harden: a null-page access, a write to read-only data, a heap overflow or double
        // free, or a clobbered stack canary that the original survived now stops the program.
        if bounds_stop(b, meta) {
            stats.bounds_stops += 1;
            return Verdict::Stop;
        }
        if (meta.heap_wrapped && wasmfix_stop(b, meta, &MESSAGES[3..5]))
            || (meta.canary && wasmfix_stop(b, meta, &MESSAGES[5..6]))
        {
            stats.canary_stops += 1;
            return Verdict::Stop;
        }
    }
    if b.event.exhausted() {
        return Verdict::Differ(
            "the rewritten module ran out of fuel or stack where the original did not",
        );
    }
    Verdict::Differ("different outcome")
}

fn value_of(shown: &str) -> i64 {
    let (kind, v) = shown.split_once(':').unwrap_or(("", "0"));
    match kind {
        "i32" => v.parse::<i32>().unwrap_or(0) as i64,
        "i64" => v.parse::<i64>().unwrap_or(0),
        "f64" => {
            f64::from_bits(u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0)) as i64
        }
        "f32" => {
            f32::from_bits(u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0)) as i64
        }
        _ => 0,
    }
}

/// wasm-smith modules from `seed` bytes; `traps` says whether generated code may trap.
pub fn smith_module(data: &[u8], traps: bool) -> Option<Vec<u8>> {
    let mut u = arbitrary::Unstructured::new(data);
    let flag = |u: &mut arbitrary::Unstructured<'_>| u.arbitrary::<bool>().unwrap_or(false);
    let config = wasm_smith::Config {
        disallow_traps: !traps,
        simd_enabled: flag(&mut u),
        relaxed_simd_enabled: flag(&mut u),
        threads_enabled: flag(&mut u),
        bulk_memory_enabled: true,
        reference_types_enabled: true,
        multi_value_enabled: true,
        tail_call_enabled: true,
        exceptions_enabled: flag(&mut u),
        memory64_enabled: flag(&mut u),
        gc_enabled: flag(&mut u),
        extended_const_enabled: true,
        wide_arithmetic_enabled: flag(&mut u),
        custom_page_sizes_enabled: flag(&mut u),
        max_memories: if flag(&mut u) { 2 } else { 1 },
        max_tables: 3,
        max_memory32_bytes: 4 << 16,
        max_memory64_bytes: 4 << 16,
        max_table_elements: 1000,
        max_funcs: 30,
        min_funcs: 1,
        max_types: 12,
        max_instructions: 200,
        max_data_segments: 10,
        max_element_segments: 10,
        max_elements: 50,
        max_globals: 20,
        max_exports: 30,
        max_imports: 6,
        max_type_size: 200,
        export_everything: flag(&mut u) || flag(&mut u),
        // wasmtime cannot run compact imports: only one module in four has them.
        compact_imports_enabled: flag(&mut u) && flag(&mut u),
        ..wasm_smith::Config::default()
    };
    let name_sp = flag(&mut u);
    let mut bytes = wasm_smith::Module::new(config, &mut u).ok()?.to_bytes();
    if name_sp {
        name_a_stack_pointer(&mut bytes);
    }
    Some(bytes)
}

/// A wasm-smith module with the MVP and `feature` (a wasmparser feature name) enabled.
pub fn smith_feature_module(data: &[u8], feature: &str) -> Option<Vec<u8>> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut config = wasm_smith::Config {
        simd_enabled: false,
        relaxed_simd_enabled: false,
        threads_enabled: false,
        bulk_memory_enabled: false,
        reference_types_enabled: false,
        multi_value_enabled: false,
        tail_call_enabled: false,
        exceptions_enabled: false,
        memory64_enabled: false,
        gc_enabled: false,
        extended_const_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        compact_imports_enabled: false,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        max_memories: 1,
        max_tables: 1,
        max_memory32_bytes: 4 << 16,
        max_memory64_bytes: 4 << 16,
        max_table_elements: 1000,
        min_funcs: 1,
        max_funcs: 20,
        max_types: 10,
        max_instructions: 150,
        max_imports: 4,
        max_type_size: 200,
        export_everything: true,
        ..wasm_smith::Config::default()
    };
    match feature {
        "simd" => config.simd_enabled = true,
        "threads" => {
            config.threads_enabled = true;
            config.bulk_memory_enabled = true;
        }
        "bulk-memory" => config.bulk_memory_enabled = true,
        "reference-types" => {
            config.bulk_memory_enabled = true;
            config.reference_types_enabled = true;
            config.max_tables = 3;
        }
        "multi-value" => config.multi_value_enabled = true,
        "tail-call" => config.tail_call_enabled = true,
        "exceptions" => {
            config.exceptions_enabled = true;
            config.reference_types_enabled = true;
            config.bulk_memory_enabled = true;
        }
        "memory64" => config.memory64_enabled = true,
        "multi-memory" => config.max_memories = 3,
        "gc" => {
            config.gc_enabled = true;
            config.reference_types_enabled = true;
            config.bulk_memory_enabled = true;
            config.multi_value_enabled = true;
        }
        "extended-const" => config.extended_const_enabled = true,
        "wide-arithmetic" => config.wide_arithmetic_enabled = true,
        "custom-page-sizes" => config.custom_page_sizes_enabled = true,
        other => panic!("unknown feature {other}"),
    }
    let mut bytes = wasm_smith::Module::new(config, &mut u).ok()?.to_bytes();
    name_a_stack_pointer(&mut bytes);
    Some(bytes)
}

/// Names the first mutable i32 global the module defines `__stack_pointer`, so that the stack
/// passes guard whatever wasm-smith's code writes to it.
fn name_a_stack_pointer(bytes: &mut Vec<u8>) {
    let mut imported = 0;
    let mut found = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes).flatten() {
        match payload {
            wasmparser::Payload::ImportSection(r) => {
                imported += r
                    .into_imports()
                    .flatten()
                    .filter(|i| matches!(i.ty, wasmparser::TypeRef::Global(_)))
                    .count() as u32;
            }
            wasmparser::Payload::GlobalSection(r) => {
                found = r.into_iter().flatten().position(|g| {
                    g.ty.mutable && !g.ty.shared && g.ty.content_type == wasmparser::ValType::I32
                });
            }
            _ => {}
        }
    }
    if let Some(g) = found {
        let mut globals = wasm_encoder::NameMap::new();
        globals.append(imported + g as u32, "__stack_pointer");
        let mut names = wasm_encoder::NameSection::new();
        names.globals(&globals);
        bytes.push(0);
        wasm_encoder::Encode::encode(&names, bytes);
    }
}

/// Shrinks `data` (a generator's input bytes) while `fails` holds for what it generates.
pub fn minimize(data: &[u8], mut fails: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut best = data.to_vec();
    let mut chunk = best.len().max(1) / 2;
    while chunk >= 1 {
        let mut progress = false;
        let mut at = 0;
        while at < best.len() {
            // Remove the chunk, else zero it.
            let mut cut = best.clone();
            let end = (at + chunk).min(cut.len());
            cut.drain(at..end);
            if fails(&cut) {
                best = cut;
                progress = true;
                continue;
            }
            let mut zeroed = best.clone();
            if zeroed[at..end].iter().any(|&b| b != 0) {
                zeroed[at..end].iter_mut().for_each(|b| *b = 0);
                if fails(&zeroed) {
                    best = zeroed;
                    progress = true;
                }
            }
            at += chunk;
        }
        if !progress {
            chunk /= 2;
        }
    }
    best
}

/// The generators the harness draws modules from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// wasm-smith, generated code may trap.
    SmithTraps,
    /// wasm-smith with `disallow_traps` (loops may still run until fuel runs out).
    SmithNoTraps,
    /// Our C-like modules (`clike.rs`), which carry their own call plan.
    CLike,
}

impl Generator {
    pub const ALL: [Generator; 3] = [
        Generator::SmithTraps,
        Generator::SmithNoTraps,
        Generator::CLike,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Generator::SmithTraps => "smith-traps",
            Generator::SmithNoTraps => "smith-no-traps",
            Generator::CLike => "clike",
        }
    }

    /// The module generated from `data`, if the generator makes one from it.
    pub fn module(self, data: &[u8]) -> Option<Vec<u8>> {
        match self {
            Generator::SmithTraps => smith_module(data, true),
            Generator::SmithNoTraps => smith_module(data, false),
            Generator::CLike => super::clike::generate(data),
        }
    }
}

/// The generator input of case `index` under `seed`: 256 bytes to 16 KiB of random bytes.
pub fn case_data(seed: u64, index: u64) -> Vec<u8> {
    let mut rng = Rng(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    let len = 256 + (rng.next() % (16 << 10)) as usize;
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// Checks one generated case; on a finding, minimizes the generator input while the same
/// class of finding persists, saves the module under `target/fuzz-failures/` and returns the
/// finding with the saved path.
pub fn check_case(
    generator: Generator,
    data: &[u8],
    stats: &mut Stats,
) -> Result<(), (Finding, std::path::PathBuf)> {
    let Some(module) = generator.module(data) else {
        return Ok(());
    };
    let Err(found) = check_module(&module, stats) else {
        return Ok(());
    };
    let class = found.class;
    let small = minimize(data, |d| {
        generator.module(d).is_some_and(
            |m| matches!(check_module(&m, &mut Stats::default()), Err(f) if f.class == class),
        )
    });
    let module = generator.module(&small).unwrap_or(module);
    let found = check_module(&module, &mut Stats::default())
        .err()
        .unwrap_or(found);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{}-{:016x}.wasm", generator.name(), hash(&module)));
    let _ = std::fs::write(&path, &module);
    Err((found, path))
}

/// The number in environment variable `name` (decimal, or hexadecimal after `0x`), `default`
/// when it is not set. A value that is not a number stops the run: a typo must not silently
/// run the default seed or count.
pub fn env_u64(name: &str, default: u64) -> u64 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    let t = text.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}"))
}
