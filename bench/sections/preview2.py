"""WASI preview 2: adapter-memory's rewrite cost and run time, components as input.

Rewrite (--repeat interleaved rounds after a load wait; median wall s, peak RSS):
  wasmfix IN -o OUT --passes none   vs   wasmfix IN -o OUT --passes adapter-memory
on tests/fixtures/preview2 (go-heap, c-heap.debian, c-heap.zig) and on yosys, the corpus's pure
WASI preview1 command (stack first without __heap_base: refused, after the code scan it costs);
  wasmfix COMPONENT -o OUT --passes none   vs   the default pipeline
on tests/fixtures/preview2/fpcast.O2.component.wasm.
Run time (--stack-runs interleaved runs, python wasmtime, only _start timed): go-heap.wasm and
c-heap.debian.wasm before and after --passes adapter-memory (the heap starts 128 KiB higher in a
memory two pages larger), and after the whole default pipeline (what `wasmfix app.wasm -o app.wasm`
ships: fpcast also rewrites Go's indirect calls). Not in the default sections: --sections preview2.
"""
import os

from benchlib.context import REPO, ToolError, log
from benchlib.engine import load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.tables import Checks, fmt, table

NAME = "preview2"
DEFAULT = False
TOOLS = False

FIXTURES = os.path.join(REPO, "tests", "fixtures", "preview2")

# rewrite_x: adapter-memory's (or the component's default pipeline's) wall time / --passes none's on
# the same input, checked on inputs of 1 MB or more (below, process start-up dominates): at most
# about one more read of the module. run_x: _start time of the rewritten module / the original's.
THRESHOLDS = {
    "rewrite_x": ("<=", 2.0),
    "run_x": ("<=", 1.05),
}


def rewrite_rows(ctx, checks):
    wasmfix = ctx.wasmfix()
    inputs = [(n, os.path.join(FIXTURES, n + ".wasm")) for n in ("go-heap", "c-heap.debian", "c-heap.zig")]
    if ctx.has_module("yosys"):
        inputs.append(("yosys", ctx.module("yosys")["path"]))
    inputs.append(("fpcast.O2.component", os.path.join(FIXTURES, "fpcast.O2.component.wasm")))
    rows, figures = [], {}
    for name, src in inputs:
        out = ctx.out_path(name + ".out.wasm")
        second = ["--passes", "adapter-memory"] if not name.endswith("component") else []
        cmds = {"none": [wasmfix, src, "-o", out, "--passes", "none"],
                "pass": [wasmfix, src, "-o", out] + second}
        runs = {k: None for k in cmds}

        def run(k, _round):
            runs[k] = ctx.measure(cmds[k], runs[k])
            return runs[k].times[-1]

        res = interleave(ctx, "preview2 rewrite (%s)" % name, list(cmds), ctx.args.repeat, run,
                         label="preview2: %s" % name)
        ratio = res.ratio("pass", "none")
        what = "default pipeline" if name.endswith("component") else "adapter-memory"
        refused = runs["pass"].rcs and runs["pass"].rcs[-1] == 2
        rows.append([name, "%.2f" % (os.path.getsize(src) / 1e6), fmt(runs["none"].time_s, ".3f"),
                     fmt(runs["none"].peak_mb, ".1f"), what + (" (refused)" if refused else ""),
                     fmt(runs["pass"].time_s, ".3f"), fmt(runs["pass"].peak_mb, ".1f"), fmt(ratio, ".2f"),
                     fmt(res.min_ratio("pass", "none"), ".2f")])
        figures[name] = {"none": runs["none"].to_json(), "pass": runs["pass"].to_json(), "ratio": ratio,
                         "refused": bool(refused)}
        if os.path.getsize(src) >= 1_000_000:
            checks.add("rewrite_x", "%s: %s time / --passes none" % (name, what), ratio,
                       lambda v: "%.2fx" % v)
    print("\n== preview2: rewrite (median of %d interleaved runs; s = wall seconds, MB = peak RSS) ==" %
          ctx.args.repeat)
    print(table(["input", "MB", "none s", "MB", "variant", "s", "MB", "ratio", "min/min"], rows))
    return figures


def run_rows(ctx, checks):
    wasmtime, _ = load_wasmtime("preview2")
    engine = wasmtime.Engine()
    wasmfix = ctx.wasmfix()
    rows, figures = [], {}
    for name in ("go-heap", "c-heap.debian"):
        src = os.path.join(FIXTURES, name + ".wasm")
        mods = {"orig": wasmtime.Module.from_file(engine, src)}
        for variant, flags in (("adapter-memory", ["--passes", "adapter-memory"]), ("default", [])):
            fixed = ctx.out_path("%s.%s.wasm" % (name, variant))
            m = ctx.measure([wasmfix, src, "-o", fixed] + flags)
            if not m.ok:
                raise ToolError("preview2: wasmfix %s %s failed: %s" % (" ".join(flags), name, m.err.strip()))
            mods[variant] = wasmtime.Module.from_file(engine, fixed)
        outf = ctx.out_path(name + ".stdout")
        outputs = {}

        def timed(k, _round):
            t, out, outcome = time_start(engine, mods[k], ["prog", "one", "two"], outf)
            if outcome != "ok":
                raise ToolError("preview2: %s %s: %s" % (name, k, outcome))
            outputs.setdefault(k, out)
            return t

        res = interleave(ctx, "preview2 run (%s)" % name, list(mods), ctx.args.stack_runs, timed,
                         label="preview2: %s" % name)
        figures[name] = {"orig_s": res.median("orig")}
        for variant in ("adapter-memory", "default"):
            if outputs["orig"] != outputs[variant]:
                log("preview2: %s prints differently after %s" % (name, variant))
            ratio = res.ratio(variant, "orig")
            rows.append([name, variant, fmt(res.median("orig"), ".3f"), fmt(res.median(variant), ".3f"),
                         fmt(ratio, ".3f"), fmt(res.min_ratio(variant, "orig"), ".3f"),
                         " ".join("%.2f" % r for r in res.round_ratios(variant, "orig")),
                         "yes" if outputs["orig"] == outputs[variant] else "NO"])
            figures[name][variant] = {"s": res.median(variant), "ratio": ratio}
        checks.add("run_x", "%s: run time after adapter-memory / original" % name,
                   res.ratio("adapter-memory", "orig"), lambda v: "%.3fx" % v)
    print("\n== preview2: _start time under python wasmtime (%d interleaved runs; ratio = median / original) =="
          % ctx.args.stack_runs)
    print(table(["module", "variant", "orig s", "variant s", "ratio", "min/min", "per round", "same output"], rows))
    return figures


def run(ctx):
    checks = Checks(ctx, NAME, THRESHOLDS)
    figures = {"rewrite": rewrite_rows(ctx, checks), "run": run_rows(ctx, checks)}
    checks.print("preview2 checks")
    figures["thresholds"] = checks.to_json()
    return figures
