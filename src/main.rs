//! The `wasmfix` command line. Exit status: 0 done, 1 `--check` found hazards, 2 bad input,
//! a refusing pass or a usage error (nothing written), 3 internal error (nothing written).
//! A reader that closes standard output early (`wasmfix inspect app.wasm | head`) ends the
//! output there without a message; the status is what it would have been (see `write_stdout`).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmfix::features::{Feature, FeatureChoice};
use wasmfix::passes::{self, DEFAULT_PIPELINE, Pass, PassOptions};
use wasmfix::pipeline::{self, Failure};

const AFTER_HELP: &str = "\
Examples:
  wasmfix app.wasm -o app.wasm          rewrite in place with the default pipeline
  wasmfix app.wasm -o fixed.wasm -v     say what each pass did
  wasmfix app.wasm -o app.wasm --harden also add stack canaries, heap redzones, null/rodata checks
  wasmfix app.wasm -o dbg.wasm --harden --harden-mode report
                                        report each violation once and let the program go on
  wasmfix --check app.wasm              exit 1 if the module has hazards (for a Makefile gate)
  wasmfix inspect app.wasm              stack layout, tables, indirect calls, hazards
  wasmfix passes                        list the passes
  wasmfix app.component.wasm -o app.component.wasm
                                        rewrite every core module inside a component
  wasmfix app.wasm -o app.wasm --source-map app.wasm.map
                                        also rewrite the module's source map in place

Debug info: DWARF 4 and 5 (.debug_*) in the module is updated so every original instruction
keeps its source location; DWARF wasmfix cannot update is refused (strip it with llvm-strip
--strip-debug). A source map is rewritten only when given with --source-map. The name section
names what wasmfix adds (wasmfix:adapt …, wasmfix:stack_overflow, …).

Features: passes use only the WebAssembly features the input uses (its target_features section
and what its code uses; `wasmfix inspect` shows them), so the output runs wherever the input ran.
--enable-X / --disable-X (binaryen's names, listed by --help) and --enable-all change that.

Exit status: 0 done; 1 --check found hazards; 2 bad input, a pass refused the module, or a
usage error (no output is written and the input is never modified); 3 internal error. A reader
that closes standard output early (| head) ends the output quietly: no message, status 0.";

#[derive(Parser)]
#[command(
    name = "wasmfix",
    version,
    about = "Fix linked WebAssembly modules built from C/C++: function-pointer cast traps, stack overflows into data",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    rewrite: Rewrite,
}

#[derive(clap::Args)]
struct Rewrite {
    /// Input module or component (`-` reads standard input).
    input: Option<PathBuf>,
    /// Output module (`-` writes standard output; may equal the input).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Comma-separated passes to run instead of the default pipeline; `none` runs none.
    #[arg(long, value_name = "LIST")]
    passes: Option<String>,
    /// Also stop memory bugs where they happen: the default pipeline plus stack-canary
    /// (canaries above stack frames), heap-canary (redzones around malloc blocks, checked at
    /// free/realloc, double frees) and bounds (null-page and read-only-data accesses). A
    /// hit prints `wasmfix: …` to stderr (when the module imports WASI fd_write) and traps.
    #[arg(long, conflicts_with = "passes")]
    harden: bool,
    /// What a hardening check does when it finds a violation: `stop` (print and trap, the
    /// default) or `report` (print each violation once per site and let the program go on, like
    /// ASan's halt_on_error=0).
    #[arg(long, value_enum, value_name = "MODE", default_value = "stop")]
    harden_mode: HardenMode,
    /// Do not check accesses and stack frames in function FUNC (a name from the name section,
    /// or a function index); repeatable. Like a sanitizer suppression `fun:FUNC`.
    #[arg(long, value_name = "FUNC")]
    harden_allow: Vec<String>,
    /// bounds: stop a load from the null page with a wasmfix message too, as stores are (a
    /// compare and branch per load: bigger and slower). By default such a load traps at the
    /// access as an out-of-bounds memory access.
    #[arg(long)]
    bounds_precise: bool,
    /// bounds: stop a null-page store as a null-page load is stopped, by an out-of-bounds trap
    /// at the access (its address lowered so that it wraps past 4 GiB), without wasmfix's
    /// message: about 5 bytes per store instead of a compare and branch (smaller and faster).
    /// Loads stay that way too when heap-canary poisons freed blocks (without this option they
    /// branch then, to name the use of a pointer read from a freed block).
    #[arg(long, conflicts_with = "bounds_precise")]
    bounds_compact: bool,
    /// Write a JSON report of what each pass did to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// fpcast: before a call traps on a mismatch no cast can fix, print the caller, the
    /// expected signature and the table entry's name and signature to stderr.
    #[arg(long)]
    fpcast_diagnose: bool,
    /// fpcast: print, once per distinct cast that runs, the caller, the slot, the callee and
    /// both signatures to stderr, then call it with C semantics as usual (needs WASI fd_write).
    #[arg(long)]
    fpcast_trace: bool,
    /// fpcast: `tables` (a shadow table per call signature; needs reference types) or `mvp`
    /// (views appended to the table itself, WebAssembly 1.0). Default: `tables` when the
    /// input uses reference types or they are enabled, else `mvp`.
    #[arg(long, value_name = "DESIGN", value_parser = ["tables", "mvp"])]
    fpcast_design: Option<String>,
    /// stack-first: size in bytes of the relocated stack (default: the module's own).
    #[arg(long, value_name = "BYTES")]
    stack_size: Option<u64>,
    /// The module's source map (v3, columns = byte offsets in the module): its offsets are
    /// rewritten for the output and written to --source-map-out. (DWARF in the module is
    /// always updated.)
    #[arg(long, value_name = "IN.map")]
    source_map: Option<PathBuf>,
    /// Where to write the rewritten source map (default: OUT.map; may equal IN.map).
    #[arg(long, value_name = "OUT.map", requires = "source_map")]
    source_map_out: Option<PathBuf>,
    /// heap-canary: the allocation function (`malloc`, or what it forwards to), by name (name
    /// section or export) or function index, when the module is stripped or its allocator is
    /// not one wasmfix recognizes. Needs --free too.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    malloc: Option<wasmfix::allocator::Selector>,
    /// heap-canary: the release function (`free`).
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    free: Option<wasmfix::allocator::Selector>,
    /// heap-canary: `calloc(count, size)`.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    calloc: Vec<wasmfix::allocator::Selector>,
    /// heap-canary: `realloc(pointer, size)`.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    realloc: Vec<wasmfix::allocator::Selector>,
    /// heap-canary: an aligned allocation `(alignment, size) -> pointer` (`aligned_alloc`,
    /// `memalign`); may be given several times.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    aligned_alloc: Vec<wasmfix::allocator::Selector>,
    /// heap-canary: `posix_memalign(out, alignment, size)`.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    posix_memalign: Vec<wasmfix::allocator::Selector>,
    /// heap-canary: `malloc_usable_size(pointer)`.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    malloc_usable_size: Vec<wasmfix::allocator::Selector>,
    /// heap-canary: bytes of freed blocks held back (poisoned) before they go back to the
    /// allocator, so a use after free finds the poison instead of a new block [default: 4 MiB;
    /// 0: none]. Peak memory grows by up to this much.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Allocator")]
    quarantine: Option<u32>,
    /// heap-canary: of a freed block larger than this, only the first BYTES and the last 8 are
    /// poisoned and checked (a stale pointer read from its start still traps; a use of its
    /// middle is not found) [default: 256; `all`: every byte; at least 16].
    #[arg(long, value_name = "BYTES|all", value_parser = parse_poison_bytes, help_heading = "Allocator")]
    poison_bytes: Option<u32>,
    /// heap-canary: check every block in the quarantine at every allocation, and run the
    /// --collect-fn collector before every --alloc-fn allocation (slow; for tests: a write
    /// after free shows at the next allocation, a block a collector frees too early shows on
    /// the first run).
    #[arg(long, help_heading = "Allocator")]
    heap_stress: bool,
    /// heap-canary: an allocation function of a runtime that is not malloc (a garbage
    /// collector's): i32 arguments, returns the block. Its blocks keep their addresses (no
    /// header); may be given several times.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    alloc_fn: Vec<wasmfix::passes::heap_canary::FnSpec>,
    /// heap-canary: the runtime's release function (a collector's sweep calls it): which
    /// argument is the block (default 0) and which its size (required), e.g.
    /// `gc_release:ptr=0:size=1`. Released blocks are poisoned and held in a ring before the
    /// real release.
    #[arg(
        long,
        value_name = "NAME|INDEX:ptr=N:size=N",
        help_heading = "Allocator"
    )]
    free_fn: Vec<wasmfix::passes::heap_canary::FnSpec>,
    /// heap-canary: the runtime's collector (no arguments), run before every --alloc-fn
    /// allocation under --heap-stress.
    #[arg(long, value_name = "NAME|INDEX", help_heading = "Allocator")]
    collect_fn: Option<wasmfix::allocator::Selector>,
    /// heap-canary: stop when a listed import (MODULE.NAME) returns, or the host passes a listed
    /// export (export:NAME), an i32 that points into a block released and still held back:
    /// `wasmfix: env.map_get returned 0x…, which points into a block freed at …`.
    #[arg(
        long,
        value_name = "MODULE.NAME|export:NAME,…",
        value_delimiter = ',',
        help_heading = "Allocator"
    )]
    check_host_pointers: Vec<wasmfix::passes::heap_canary::HostPointer>,
    /// Copy DWARF unchanged even when bodies move, leaving its code addresses stale (for
    /// measuring what the update costs).
    #[arg(long, hide = true)]
    no_dwarf_update: bool,
    /// Keep the messages' text in code even when the input uses bulk memory (for measuring
    /// the WebAssembly 1.0 design on such modules).
    #[arg(long, hide = true)]
    messages_in_code: bool,
    /// Analyze only: print hazards and exit 1 if any remain, 0 if none.
    #[arg(long)]
    check: bool,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Say what each pass did.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HardenMode {
    Stop,
    Report,
}

#[derive(Subcommand)]
enum Command {
    /// Print the module's facts (stack layout, tables, indirect calls) and its hazards.
    Inspect {
        /// Input module or component.
        input: PathBuf,
        /// Print JSON for tools instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the passes and the default pipeline.
    Passes,
}

/// A failure as the CLI reports it: one line on stderr and an exit status.
struct Exit {
    status: u8,
    message: String,
}

fn fail(status: u8, message: impl Into<String>) -> Exit {
    Exit {
        status,
        message: message.into(),
    }
}

/// `--enable-X` / `--disable-X` for every feature, `--enable-all` (alias `--all-features`)
/// and `--mvp-features`, as binaryen names them; added to the derived parser so the list
/// follows [`Feature::ALL`].
fn feature_args() -> Vec<clap::Arg> {
    use clap::{Arg, ArgAction};
    let mut args = vec![
        Arg::new("enable-all")
            .long("enable-all")
            .alias("all-features")
            .action(ArgAction::SetTrue)
            .help("Let passes use every feature wasmfix knows")
            .help_heading("Features (default: only those the input uses)"),
        Arg::new("mvp-features")
            .long("mvp-features")
            .action(ArgAction::SetTrue)
            .help("Let passes use no feature beyond what the input uses (the default)")
            .help_heading("Features (default: only those the input uses)"),
    ];
    for f in Feature::ALL {
        for (verb, what) in [("enable", "may use"), ("disable", "must not use")] {
            args.push(
                Arg::new(format!("{verb}-{}", f.name()))
                    .long(format!("{verb}-{}", f.name()))
                    .action(ArgAction::SetTrue)
                    .hide_short_help(true)
                    .help(format!("Passes {what} {}", f.name()))
                    .help_heading("Features (default: only those the input uses)"),
            );
        }
    }
    args
}

/// The feature flags in the order given: a later flag overrides an earlier one.
fn feature_choice(matches: &clap::ArgMatches) -> FeatureChoice {
    let mut flags: Vec<(usize, String)> = Vec::new();
    let ids = ["enable-all".to_string(), "mvp-features".to_string()]
        .into_iter()
        .chain(Feature::ALL.iter().flat_map(|f| {
            [
                format!("enable-{}", f.name()),
                format!("disable-{}", f.name()),
            ]
        }));
    for id in ids {
        if matches.get_flag(&id)
            && let Some(i) = matches.index_of(&id)
        {
            flags.push((i, id));
        }
    }
    flags.sort();
    let mut choice = FeatureChoice::default();
    for (_, id) in flags {
        match id.as_str() {
            "enable-all" => choice.enable_all(),
            "mvp-features" => choice.mvp(),
            _ => {
                let (verb, name) = id.split_once('-').expect("flag ids are verb-name");
                let f = Feature::from_name(name).expect("flag ids name features");
                if verb == "enable" {
                    choice.enable(f)
                } else {
                    choice.disable(f)
                }
            }
        }
    }
    choice
}

fn main() -> ExitCode {
    let matches = Cli::command().args(feature_args()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let features = feature_choice(&matches);
    let result = match cli.command {
        Some(Command::Passes) => list_passes(),
        Some(Command::Inspect { input, json }) => inspect(&input, json),
        None => rewrite(cli.rewrite, features),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("wasmfix: {}", e.message);
            ExitCode::from(e.status)
        }
    }
}

fn list_passes() -> Result<u8, Exit> {
    let mut text =
        String::from("passes (in pipeline order; * = default, h = added by --harden):\n");
    for p in passes::REGISTRY {
        let mark = if DEFAULT_PIPELINE.contains(&p.name()) {
            "*"
        } else if passes::HARDEN_PASSES.contains(&p.name()) {
            "h"
        } else {
            " "
        };
        text += &format!("  {mark} {:<14} {}\n", p.name(), p.description());
    }
    write_stdout(|w| w.write_all(text.as_bytes()))?;
    Ok(0)
}

/// Writes `contents` to standard output. A reader that closed the pipe early (`| head`) has
/// taken all it wants: the output ends there, without a message, and the command's status
/// stays what it would have been. Any other write error fails the command (exit 2).
fn write_stdout(
    contents: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    match contents(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(|e| fail(2, format!("cannot write standard output: {e}"))),
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Exit> {
    let bytes = if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
    } else {
        std::fs::read(path)
    };
    bytes.map_err(|e| fail(2, format!("{}: cannot read: {e}", path.display())))
}

fn inspect(input: &Path, json: bool) -> Result<u8, Exit> {
    let bytes = read_input(input)?;
    if wasmfix::component::is_component(&bytes) {
        return inspect_component(input, &bytes, json);
    }
    let (module, facts) =
        pipeline::load(&bytes).map_err(|f| fail(2, format!("{}: {f}", input.display())))?;
    let text = if json {
        let v = wasmfix::inspect::json(&module, &facts);
        serde_json::to_string_pretty(&v).expect("serializable") + "\n"
    } else {
        wasmfix::inspect::text(&input.display().to_string(), &module, &facts)
    };
    write_stdout(|w| w.write_all(text.as_bytes()))?;
    Ok(0)
}

/// `inspect` of a component: each core module's facts, under its label.
fn inspect_component(input: &Path, bytes: &[u8], json: bool) -> Result<u8, Exit> {
    let name = input.display().to_string();
    let modules =
        wasmfix::component::core_modules(bytes).map_err(|f| fail(2, format!("{name}: {f}")))?;
    let mut texts = Vec::new();
    let mut values = Vec::new();
    for m in &modules {
        let module_bytes = &bytes[m.range.clone()];
        let (module, facts) = pipeline::load(module_bytes)
            .map_err(|f| fail(2, format!("{name}: {}: {f}", m.label)))?;
        if json {
            let mut v = wasmfix::inspect::json(&module, &facts);
            v["label"] = serde_json::json!(m.label);
            v["offset"] = serde_json::json!(m.range.start);
            values.push(v);
        } else {
            texts.push(wasmfix::inspect::text(
                &format!("{name}: {}", m.label),
                &module,
                &facts,
            ));
        }
    }
    let text = if json {
        let v = serde_json::json!({
            "component": true,
            "size": bytes.len(),
            "core_modules": values,
        });
        serde_json::to_string_pretty(&v).expect("serializable") + "\n"
    } else {
        let mut text = format!(
            "{name}: component, {} bytes, {} core modules\n",
            wasmfix::inspect::count(bytes.len()),
            modules.len()
        );
        for t in texts {
            text.push('\n');
            text.push_str(&t);
        }
        text
    };
    write_stdout(|w| w.write_all(text.as_bytes()))?;
    Ok(0)
}

/// The hazards of `bytes`, a module or every core module of a component, as
/// (where, hazard) pairs.
fn hazards_of(name: &str, bytes: &[u8]) -> Result<Vec<(String, String)>, Exit> {
    let mut units = Vec::new();
    if wasmfix::component::is_component(bytes) {
        let modules =
            wasmfix::component::core_modules(bytes).map_err(|f| fail(2, format!("{name}: {f}")))?;
        for m in modules {
            units.push((format!("{name}: {}", m.label), m.range));
        }
    } else {
        units.push((name.to_string(), 0..bytes.len()));
    }
    let mut out = Vec::new();
    for (label, range) in units {
        let (module, facts) =
            pipeline::load(&bytes[range]).map_err(|f| fail(2, format!("{label}: {f}")))?;
        for h in wasmfix::inspect::hazards(&module, &facts) {
            out.push((label.clone(), h.message));
        }
    }
    Ok(out)
}

fn select_passes(list: Option<&str>, harden: bool) -> Result<Vec<&'static dyn Pass>, Exit> {
    let names: Vec<&str> = match list {
        None if harden => passes::harden_pipeline(),
        None => DEFAULT_PIPELINE.to_vec(),
        Some("none") | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
    };
    names
        .into_iter()
        .map(|n| {
            passes::find(n).ok_or_else(|| {
                let known: Vec<&str> = passes::REGISTRY.iter().map(|p| p.name()).collect();
                fail(
                    2,
                    format!("unknown pass `{n}` (known: {}, or none)", known.join(", ")),
                )
            })
        })
        .collect()
}

fn rewrite(args: Rewrite, features: FeatureChoice) -> Result<u8, Exit> {
    let Some(input) = args.input.clone() else {
        return Err(fail(2, "no input module given (try `wasmfix --help`)"));
    };
    let name = input.display().to_string();
    if args.check {
        let bytes = read_input(&input)?;
        let hazards = hazards_of(&name, &bytes)?;
        if !args.quiet {
            for (label, message) in &hazards {
                eprintln!("wasmfix: {label}: hazard: {message}");
            }
        }
        return Ok(if hazards.is_empty() { 0 } else { 1 });
    }
    let Some(output) = args.output.clone() else {
        return Err(fail(
            2,
            format!("{name}: no output given: add -o OUT (-o {name} rewrites in place)"),
        ));
    };
    let mut passes = select_passes(args.passes.as_deref(), args.harden)?;
    if std::env::var_os("WASMFIX_TEST_INVALID_OUTPUT").is_some() {
        passes.push(&InvalidOutput);
    }
    let to_stdout = output == Path::new("-");
    if to_stdout && args.report.as_deref() == Some(Path::new("-")) {
        return Err(fail(2, "--report - and -o - both write standard output"));
    }
    let source_map_out = match (&args.source_map, args.source_map_out.clone()) {
        (None, _) => None,
        (Some(_), Some(out)) => Some(out),
        (Some(_), None) if to_stdout => {
            return Err(fail(2, "--source-map with -o - needs --source-map-out"));
        }
        (Some(_), None) => {
            let mut path = output.clone().into_os_string();
            path.push(".map");
            Some(PathBuf::from(path))
        }
    };
    let source_map = match &args.source_map {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| fail(2, format!("{}: cannot read: {e}", path.display())))?,
        ),
        None => None,
    };
    let bytes = read_input(&input)?;
    if wasmfix::component::is_component(&bytes) {
        if args.source_map.is_some() {
            return Err(fail(
                2,
                format!("{name}: --source-map applies to core modules, not components"),
            ));
        }
        return rewrite_component(&args, features, &name, &bytes, &passes, &output);
    }
    let options = pass_options(&args, features, source_map.is_some());
    // The module is staged in a temporary file while the output is validated (on another
    // thread), and renamed into place only after validation succeeded and the report is
    // written: a failing validation or report leaves the output (and the input) untouched.
    let stage = |outcome: &pipeline::Rewritten| {
        (!to_stdout).then(|| Staged::write(&output, |mut w| outcome.write_to(&mut w)))
    };
    let (outcome, staged) = pipeline::rewrite_staged(&bytes, &passes, &options, stage)
        .map_err(|f| run_failed(&name, f))?;
    let staged = staged
        .transpose()
        .map_err(|e| fail(2, format!("{}: cannot write: {e}", output.display())))?;
    let rewritten_map = match (&source_map, &args.source_map) {
        (Some(json), Some(path)) => Some(
            wasmfix::sourcemap::rewrite(json, outcome.code_map.as_ref())
                .map_err(|e| fail(2, format!("{}: {}", path.display(), pipeline::one_line(&e))))?,
        ),
        _ => None,
    };
    for r in &outcome.reports {
        if args.verbose {
            eprintln!("wasmfix: {}: {}", r.pass, r.summary);
        }
        if !args.quiet {
            for w in &r.warnings {
                eprintln!("wasmfix: {name}: {}: warning: {w}", r.pass);
            }
        }
    }
    let debug = &outcome.debug_info;
    if args.verbose {
        if let Some(summary) = debug.summary() {
            eprintln!("wasmfix: debug info: {summary}");
        }
        if let Some(m) = &rewritten_map {
            eprintln!(
                "wasmfix: debug info: source map rewritten: {} of {} mappings moved, {} outside the code dropped",
                m.moved, m.segments, m.dropped
            );
        }
    }
    if !args.quiet {
        for w in &debug.warnings {
            eprintln!("wasmfix: {name}: debug info: warning: {w}");
        }
    }
    let staged_map = match (&rewritten_map, &source_map_out) {
        (Some(m), Some(path)) => Some(
            Staged::write(path, |w| w.write_all(&m.json))
                .map_err(|e| fail(2, format!("{}: cannot write: {e}", path.display())))?,
        ),
        _ => None,
    };
    if let Some(report) = &args.report {
        let json = serde_json::json!({
            "input": name,
            "output": output.display().to_string(),
            "input_bytes": bytes.len(),
            "output_bytes": outcome.len(),
            "rewritten_functions": outcome.rewritten_functions,
            "features": {
                "input": outcome.input_features.as_ref().map(|f| f.used),
                "how": outcome.input_features.as_ref().map(|f| f.how.clone()),
                "added": outcome.added_features,
            },
            "passes": outcome.reports,
            "debug_info": outcome.debug_info,
            "source_map": rewritten_map.as_ref().map(|m| serde_json::json!({
                "input": args.source_map.as_ref().map(|p| p.display().to_string()),
                "output": source_map_out.as_ref().map(|p| p.display().to_string()),
                "mappings": m.segments,
                "moved": m.moved,
                "dropped": m.dropped,
            })),
        });
        let text = serde_json::to_string_pretty(&json).expect("serializable") + "\n";
        if report == Path::new("-") {
            write_stdout(|w| w.write_all(text.as_bytes()))?;
        } else {
            std::fs::write(report, text)
                .map_err(|e| fail(2, format!("{}: cannot write report: {e}", report.display())))?;
        }
    }
    if let (Some(staged), Some(path)) = (staged_map, &source_map_out) {
        staged
            .commit()
            .map_err(|e| fail(2, format!("{}: cannot write: {e}", path.display())))?;
    }
    match staged {
        Some(staged) => staged
            .commit()
            .map_err(|e| fail(2, format!("{}: cannot write: {e}", output.display())))?,
        None => write_stdout(|w| outcome.write_to(w))?,
    }
    // The process ends now: returning the input and the output's pieces (tens of MB) to the
    // allocator page by page would only delay its exit, which frees them all at once.
    std::mem::forget(outcome);
    std::mem::forget(bytes);
    Ok(0)
}

/// A run that failed: exit 3 for an internal error (a bug of ours), 2 for bad input or a
/// refusal.
fn run_failed(name: &str, f: Failure) -> Exit {
    let status = if matches!(f, Failure::Internal(_)) {
        3
    } else {
        2
    };
    fail(status, format!("{name}: {f}"))
}

/// For tests only, run last when `WASMFIX_TEST_INVALID_OUTPUT` is set: adds a function whose
/// body does not validate, so that tests/cli.rs can show that an output failing its validation
/// is never written (exit 3), a path no correct pass can take on purpose.
struct InvalidOutput;

impl Pass for InvalidOutput {
    fn name(&self) -> &'static str {
        "test-invalid-output"
    }

    fn description(&self) -> &'static str {
        "adds a function that does not validate (tests only)"
    }

    fn run(&self, cx: &mut passes::PassCx<'_, '_, '_>) -> anyhow::Result<passes::PassReport> {
        use wasm_encoder::Instruction::{End, I32Const};
        // `() -> ()` leaving an i32 on the stack.
        cx.edits.add_helper(
            cx.module,
            "wasmfix:test_invalid",
            (&[], &[]),
            &[],
            &[I32Const(0), End],
        );
        Ok(passes::PassReport {
            pass: self.name(),
            summary: "added an invalid function".into(),
            warnings: Vec::new(),
            details: serde_json::Value::Null,
        })
    }
}

/// The passes' options from the command line (`code_map`: a source map is to be rewritten).
fn pass_options(args: &Rewrite, features: FeatureChoice, code_map: bool) -> PassOptions {
    PassOptions {
        fpcast_diagnose: args.fpcast_diagnose,
        fpcast_trace: args.fpcast_trace,
        fpcast_design: args
            .fpcast_design
            .as_deref()
            .and_then(passes::fpcast::Design::from_name),
        stack_size: args.stack_size,
        no_dwarf_update: args.no_dwarf_update,
        code_map,
        harden: args.harden,
        on_error: match args.harden_mode {
            HardenMode::Stop => wasmfix::diag::OnError::Stop,
            HardenMode::Report => wasmfix::diag::OnError::Report,
        },
        harden_allow: args.harden_allow.clone(),
        bounds_precise: args.bounds_precise,
        bounds_compact: args.bounds_compact,
        explicit_passes: args.passes.is_some(),
        heap: heap_options(args),
        features,
        messages_in_code: args.messages_in_code,
    }
}

/// Rewrites every core module of a component (see `wasmfix::component`).
fn rewrite_component(
    args: &Rewrite,
    features: FeatureChoice,
    name: &str,
    bytes: &[u8],
    passes: &[&'static dyn Pass],
    output: &Path,
) -> Result<u8, Exit> {
    let options = pass_options(args, features, false);
    let outcome =
        wasmfix::component::run(bytes, passes, &options).map_err(|f| run_failed(name, f))?;
    for m in &outcome.modules {
        for r in &m.outcome.reports {
            if args.verbose {
                eprintln!("wasmfix: {}: {}: {}", m.label, r.pass, r.summary);
            }
            if !args.quiet {
                for w in &r.warnings {
                    eprintln!("wasmfix: {name}: {}: {}: warning: {w}", m.label, r.pass);
                }
            }
        }
        if !args.quiet {
            for w in &m.outcome.debug_info.warnings {
                eprintln!("wasmfix: {name}: {}: debug info: warning: {w}", m.label);
            }
        }
    }
    if !args.quiet {
        for w in &outcome.warnings {
            eprintln!("wasmfix: {name}: warning: {w}");
        }
    }
    let to_stdout = output == Path::new("-");
    let staged = if to_stdout {
        None
    } else {
        Some(
            Staged::write(output, |w| w.write_all(&outcome.bytes))
                .map_err(|e| fail(2, format!("{}: cannot write: {e}", output.display())))?,
        )
    };
    if let Some(report) = &args.report {
        let modules: Vec<serde_json::Value> = outcome
            .modules
            .iter()
            .map(|m| {
                serde_json::json!({
                    "core_module": m.label,
                    "output_bytes": m.outcome.bytes.len(),
                    "rewritten_functions": m.outcome.rewritten_functions,
                    "passes": m.outcome.reports,
                    "debug_info": m.outcome.debug_info,
                })
            })
            .collect();
        let json = serde_json::json!({
            "input": name,
            "output": output.display().to_string(),
            "component": true,
            "input_bytes": bytes.len(),
            "output_bytes": outcome.bytes.len(),
            "core_modules": modules,
        });
        let text = serde_json::to_string_pretty(&json).expect("serializable") + "\n";
        if report == Path::new("-") {
            write_stdout(|w| w.write_all(text.as_bytes()))?;
        } else {
            std::fs::write(report, text)
                .map_err(|e| fail(2, format!("{}: cannot write report: {e}", report.display())))?;
        }
    }
    match staged {
        Some(staged) => staged
            .commit()
            .map_err(|e| fail(2, format!("{}: cannot write: {e}", output.display())))?,
        None => write_stdout(|w| w.write_all(&outcome.bytes))?,
    }
    Ok(0)
}

/// heap-canary's options from the command line.
fn heap_options(args: &Rewrite) -> wasmfix::passes::heap_canary::HeapOptions {
    use wasmfix::allocator::Role;
    let mut functions = Vec::new();
    functions.extend(args.malloc.clone().map(|s| (Role::Malloc, s)));
    functions.extend(args.free.clone().map(|s| (Role::Free, s)));
    for (role, list) in [
        (Role::Calloc, &args.calloc),
        (Role::Realloc, &args.realloc),
        (Role::Aligned, &args.aligned_alloc),
        (Role::PosixMemalign, &args.posix_memalign),
        (Role::UsableSize, &args.malloc_usable_size),
    ] {
        functions.extend(list.iter().cloned().map(|s| (role, s)));
    }
    wasmfix::passes::heap_canary::HeapOptions {
        allocator: wasmfix::allocator::Manual { functions },
        quarantine: args.quarantine,
        poison_bytes: args.poison_bytes,
        stress: args.heap_stress,
        alloc_fns: args.alloc_fn.clone(),
        free_fns: args.free_fn.clone(),
        collect_fn: args.collect_fn.clone(),
        host_pointers: args.check_host_pointers.clone(),
    }
}

/// `--poison-bytes`: `all` (every byte: `u32::MAX`) or a byte count of at least 16.
fn parse_poison_bytes(s: &str) -> Result<u32, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(u32::MAX);
    }
    let n = parse_bytes(s)?;
    let least = wasmfix::passes::heap_canary::MIN_POISON_BYTES;
    if n < least {
        return Err(format!(
            "`{s}`: at least {least} (the first words of every freed block are poisoned), or `all`"
        ));
    }
    Ok(n)
}

/// `4096`, `64k`, `4m`/`4MiB`: a byte count below 4 GiB.
fn parse_bytes(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (like 4096, 64k or 4m)"))?;
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use k or m)")),
    };
    n.checked_mul(scale)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v < i32::MAX as u32)
        .ok_or_else(|| format!("`{s}` is too large (at most 2 GiB)"))
}

/// A module written to a temporary file beside its target, renamed over the target by
/// [`Staged::commit`] and removed if dropped uncommitted: an interrupted or failed run never
/// leaves a half-written module, and `-o` may name the input.
///
/// Only a regular file (or a path where nothing is yet) is replaced by renaming. A symbolic link
/// is followed, so the file it names receives the module and the link stays a link. Anything else
/// -- `/dev/null`, a FIFO, a terminal -- is opened and written when the output is committed:
/// renaming over `/dev/null` would put a regular file in its place (as root), and every later
/// program would read what was written "to /dev/null" from it.
struct Staged {
    how: Staging,
    target: PathBuf,
    committed: bool,
}

enum Staging {
    /// Written to this temporary file, renamed over the target on commit.
    Rename(PathBuf),
    /// Kept in memory, written into the (non-regular) target on commit.
    Direct(Vec<u8>),
}

impl Staged {
    fn write(
        target: &Path,
        contents: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<Staged> {
        let target = match std::fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(target)?,
            _ => target.to_path_buf(),
        };
        if let Ok(meta) = std::fs::metadata(&target)
            && !meta.is_file()
        {
            if meta.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory",
                ));
            }
            let mut bytes = Vec::new();
            contents(&mut bytes)?;
            return Ok(Staged {
                how: Staging::Direct(bytes),
                target,
                committed: false,
            });
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file = target.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let tmp = dir.join(format!(
            ".{}.wasmfix-{}.tmp",
            file.to_string_lossy(),
            std::process::id()
        ));
        let staged = Staged {
            how: Staging::Rename(tmp.clone()),
            target: target.clone(),
            committed: false,
        };
        // Unbuffered: the module is written a few large vectored writes at a time.
        let mut f = std::fs::File::create(&tmp)?;
        contents(&mut f)?;
        if let Ok(meta) = std::fs::metadata(&target) {
            f.set_permissions(meta.permissions())?;
        }
        Ok(staged)
    }

    fn commit(mut self) -> std::io::Result<()> {
        match &self.how {
            Staging::Rename(tmp) => std::fs::rename(tmp, &self.target)?,
            Staging::Direct(bytes) => std::fs::OpenOptions::new()
                .write(true)
                .open(&self.target)?
                .write_all(bytes)?,
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let (false, Staging::Rename(tmp)) = (self.committed, &self.how) {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
