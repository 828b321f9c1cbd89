"""Pyodide (npm pyodide 314.0.7): eval time of a Python workload, original vs fpcast (both designs) vs the default pipeline.

Issue 13, in one run: pyodide.asm.wasm from the corpus (../corpus-cache/pkgs/pyodide/package) rewritten
by `wasmfix --passes fpcast` (its default design: shadow tables, the input uses reference types), by
`--passes fpcast --fpcast-design mvp` (views appended to the table itself), by the default
pipeline, and, to show what the default pipeline costs, by its `stack` pass alone and by the
default pipeline without it. Each variant runs bench/pyodide/run.mjs under node (the real pyodide.mjs loads the module,
one warm-up call of the workload, then --pyodide-evals timed calls), original first, interleaved for
--pyodide-rounds rounds. Reported: eval-time ratio to the original (median of every timed call, and
min/min), the same for the process's CPU time during each call (steadier on a loaded machine), size
growth, and whether the workload's output digest equals the original's.
"""
import json
import os
import statistics
import subprocess

from benchlib.context import REPO, ToolError, log
from benchlib.rounds import interleave
from benchlib.tables import Checks, fmt, table, yes_no

NAME = "pyodide"
DEFAULT = False
TOOLS = True

THRESHOLDS = {
    "fpcast_eval_ratio": ("<=", 1.02),   # --passes fpcast eval time / original (issue 13; was 1.20x)
    "default_eval_ratio": ("<=", 1.03),  # default pipeline eval time / original (was 1.20x)
    "outputs_identical": ("==", True),   # every variant's workload digest equals the original's
}

# (label, wasmfix arguments or None for the original)
VARIANTS = [
    ("original", None),
    ("fpcast", ["--passes", "fpcast"]),
    ("fpcast mvp design", ["--passes", "fpcast", "--fpcast-design", "mvp"]),
    ("default pipeline", []),
    # What the default pipeline's cost is made of (issue 13): its passes alone and without each.
    # adapter-memory does nothing on Pyodide and producers only adds a custom section, so
    # "stack" is the default pipeline without fpcast and "default without stack" is fpcast's.
    ("stack", ["--passes", "stack"]),
    ("default without stack", ["--passes", "fpcast,adapter-memory,producers"]),
]


def run(ctx):
    pkg = os.path.join(ctx.cache, "pkgs", "pyodide", "package")
    src = os.path.join(pkg, "pyodide.asm.wasm")
    if not os.path.exists(src):
        raise ToolError("Pyodide is not in the corpus cache (%s): run ../shared/corpus/fetch.sh" % pkg)
    runner = os.path.join(REPO, "bench", "pyodide", "run.mjs")
    node = os.environ.get("WASMFIX_BENCH_NODE", "node")
    size = os.path.getsize(src)
    paths, rewrites = {}, {}
    for label, args in VARIANTS:
        if args is None:
            paths[label] = src
            continue
        out = ctx.out_path("pyodide.%s.wasm" % label.replace(" ", "-"))
        m = ctx.measure([ctx.wasmfix(), src, "-o", out] + args)
        if not m.ok:
            raise ToolError("wasmfix %s failed on pyodide.asm.wasm: %s" % (" ".join(args), m.err[-600:]))
        paths[label], rewrites[label] = out, m

    outputs = {label: set() for label in paths}
    cpu = {label: [] for label in paths}

    def timed(label, _round):
        p = subprocess.run([node, runner, pkg, paths[label], "--rounds", str(ctx.args.pyodide_evals)],
                           capture_output=True, text=True, timeout=ctx.args.timeout)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise ToolError("run.mjs %s failed (exit %d): %s" % (label, p.returncode, (p.stderr or p.stdout)[-600:]))
        r = json.loads(lines[-1])
        outputs[label].add(r["output"])
        cpu[label].extend(r.get("cpu_s", []))
        log("pyodide: %s eval %s" % (label, " ".join("%.3f" % t for t in r["eval_s"])))
        return r["eval_s"]

    keys = [label for label, _ in VARIANTS]
    res = interleave(ctx, "pyodide workload", keys, ctx.args.pyodide_rounds, timed, label="pyodide")
    want = outputs["original"]
    same = {k: len(want) == 1 and outputs[k] == want for k in keys}

    print("\n== pyodide: pyodide.asm.wasm %.1f MB under %s; %d interleaved rounds x %d timed calls; ratios to the "
          "original (median of every call; min/min) ==" % (size / 1e6, node, ctx.args.pyodide_rounds, ctx.args.pyodide_evals))
    rows, fig = [], {"input": src, "input_bytes": size, "load": res.load, "variants": {}}
    base_cpu = cpu["original"]

    def cpu_ratios(k):
        # The process's CPU time per call (every thread), steadier than wall time under load.
        if not cpu[k] or not base_cpu:
            return None, None
        return (statistics.median(cpu[k]) / statistics.median(base_cpu), min(cpu[k]) / min(base_cpu))
    for k in keys:
        out_bytes = os.path.getsize(paths[k])
        growth = 100.0 * (out_bytes - size) / size
        ratio, min_ratio = res.ratio(k, "original"), res.min_ratio(k, "original")
        per_round = res.round_ratios(k, "original")
        cpu_ratio, cpu_min_ratio = cpu_ratios(k)
        rows.append([k, fmt(res.median(k), ".4f"), fmt(ratio, ".3f"), fmt(min_ratio, ".3f"),
                     fmt(cpu_ratio, ".3f"), fmt(cpu_min_ratio, ".3f"),
                     " ".join("%.3f" % x for x in per_round), "%+.2f%%" % growth,
                     fmt(rewrites[k].time_s, ".2f") if k in rewrites else "-", yes_no(same[k])])
        fig["variants"][k] = {"file": paths[k], "bytes": out_bytes, "size_growth_pct": round(growth, 3),
                              "eval_s": res.samples(k), "eval_ratio": ratio, "eval_min_ratio": min_ratio,
                              "per_round": per_round, "output_ok": same[k],
                              "cpu_s": cpu[k], "cpu_ratio": cpu_ratio, "cpu_min_ratio": cpu_min_ratio,
                              "rewrite_s": rewrites[k].time_s if k in rewrites else None}
    print(table(["variant", "eval s", "ratio", "min/min", "cpu ratio", "cpu min/min", "per-round", "size", "rewrite s", "output identical"], rows))
    checks = Checks(ctx, "pyodide", THRESHOLDS)
    checks.add("fpcast_eval_ratio", "pyodide --passes fpcast eval / original", fig["variants"]["fpcast"]["eval_ratio"],
               lambda v: "%.3fx" % v)
    checks.add("default_eval_ratio", "pyodide default pipeline eval / original",
               fig["variants"]["default pipeline"]["eval_ratio"], lambda v: "%.3fx" % v)
    checks.add("outputs_identical", "pyodide workload output identical", all(same.values()), yes_no)
    checks.print("pyodide: acceptance thresholds (issue 13)")
    fig["thresholds"] = checks.to_json()
    return fig
