"""Pyodide (npm pyodide 314.0.7): eval time of a Python workload, original vs fpcast (both designs) vs the default pipeline.

Issue 13, in one run: pyodide.asm.wasm from the corpus (../corpus-cache/pkgs/pyodide/package) rewritten
by `wasmfix --passes fpcast` (its default design: shadow tables, the input uses reference types), by
`--passes fpcast --fpcast-design mvp` (views appended to the table itself), by the default
pipeline, and, to show what the default pipeline costs, by its `stack` pass alone and by the
default pipeline without it; plus "original again", the original in a second instance, whose
ratio shows the method's own bias and noise.

Method. A call of the workload takes 0.14-0.16 s in one call and ~1.6x that in the next, in the
same process, with the same work, and its CPU time moves with it (so it is not only waiting for a
core), every part of the workload slowed alike; the slow calls come and go from call to call.
Separate processes per variant, compared by their medians, turned that into ratios of 0.64-1.76x
per round. So each round is ONE node process (bench/pyodide/run.mjs) that loads every variant as
its own Pyodide instance through the real pyodide.mjs (the load order turns from round to round),
makes --pyodide-warmup untimed calls of each (V8 tiers up during the first), then
--pyodide-evals cycles, each calling every instance once in a new shuffled order (seeded by
the round: with a fixed rotation, each variant always ran right after the same one, and two
code-identical rewrites measured 1.034x and 1.025x, steadily). A variant's call is compared with the original's call of the same cycle (seconds apart);
its ratio is the median of those paired ratios over every round, and beside it is ± half its 95%
bootstrap interval (rounds resampled, then cycles within them). State between calls: every
instance runs with PYTHONHASHSEED=0 (checked: no hash randomization and hash("a") equal in every
instance), and Python's cyclic GC runs (gc.collect()) before each call, outside the timed region,
so every call starts from the same collector state; the workload itself builds its data afresh
each call. A check PASSes only when the whole interval is within its limit, FAILs when none of it
is, and is UNDECIDED (±x%) otherwise. --pyodide-metric cpu judges the process's CPU time per call
instead of wall time (both are always shown). Also reported: min/min of wall time, per-round
ratios (medians of the round's paired ratios), size growth, rewrite time, and whether the
workload's output digest equals the original's.
"""
import json
import os
import statistics
import subprocess

from benchlib.context import REPO, ToolError, log
from benchlib.rounds import Rounds, wait_for_quiet
from benchlib.tables import Checks, fmt, fmt_interval, table, yes_no

NAME = "pyodide"
DEFAULT = False
TOOLS = True

THRESHOLDS = {
    "fpcast_eval_ratio": ("<=", 1.02),   # --passes fpcast eval time / original (issue 13; was 1.20x)
    "default_eval_ratio": ("<=", 1.03),  # default pipeline eval time / original (was 1.20x)
    "outputs_identical": ("==", True),   # every variant's workload digest equals the original's
}

HASH_SEED = 0  # PYTHONHASHSEED of every instance
MIN_ROUNDS, MIN_CALLS = 3, 20  # fewer: the interval is not trusted, the checks say UNDECIDED

# (label, wasmfix arguments or None for the original)
VARIANTS = [
    ("original", None),
    ("original again", None),  # the original in a second instance: the method's own bias and noise
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

    keys = [label for label, _ in VARIANTS]
    res, outputs, hashes, load = paired_rounds(ctx, pkg, paths, keys, "pyodide")
    rounds, calls = ctx.args.pyodide_rounds, ctx.args.pyodide_evals
    want = outputs["original"]
    same = {k: len(want) == 1 and outputs[k] == want for k in keys}

    print("\n== pyodide: pyodide.asm.wasm %.1f MB under %s; %d rounds (node processes) x %d timed calls of every "
          "variant, alternating in one process; PYTHONHASHSEED=%d (hash(\"a\") %s); ratio to the original: median "
          "of the paired calls' ratios, ± half the 95%% bootstrap interval ==" % (
              size / 1e6, node, rounds, calls, HASH_SEED, "equal in every instance" if len(hashes) == 1 else "DIFFERS"))
    rows, fig = [], {"input": src, "input_bytes": size, "load": load, "hash_seed": HASH_SEED,
                     "hash_equal": len(hashes) == 1, "variants": {}}
    for k in keys:
        out_bytes = os.path.getsize(paths[k])
        growth = 100.0 * (out_bytes - size) / size
        wall = res["eval"].paired_ratio(k, "original")
        cpu = res["cpu"].paired_ratio(k, "original")
        per_round = [statistics.median(x / y for x, y in zip(ra, rb))
                     for ra, rb in zip(res["eval"].rounds[k], res["eval"].rounds["original"])]
        rows.append([k, fmt(res["eval"].median(k), ".4f"), fmt_interval(*wall) if k != "original" else "-",
                     fmt(res["eval"].min_ratio(k, "original"), ".3f"), fmt_interval(*cpu) if k != "original" else "-",
                     " ".join("%.3f" % x for x in per_round), "%+.2f%%" % growth,
                     fmt(rewrites[k].time_s, ".2f") if k in rewrites else "-", yes_no(same[k])])
        fig["variants"][k] = {"file": paths[k], "bytes": out_bytes, "size_growth_pct": round(growth, 3),
                              "eval_s": res["eval"].rounds[k], "cpu_s": res["cpu"].rounds[k],
                              "eval_ratio": wall[0], "eval_interval": wall[1:], "cpu_ratio": cpu[0], "cpu_interval": cpu[1:],
                              "eval_min_ratio": res["eval"].min_ratio(k, "original"), "per_round": per_round,
                              "output_ok": same[k], "rewrite_s": rewrites[k].time_s if k in rewrites else None}
    print(table(["variant", "eval s", "ratio (wall)", "min/min", "cpu ratio", "per-round (wall)", "size",
                 "rewrite s", "output identical"], rows))
    print("(\"original again\" is the original in a second instance: its ratio shows the method's own bias and noise.)")
    checks = Checks(ctx, "pyodide", THRESHOLDS)
    metric = ctx.args.pyodide_metric
    # A bootstrap over 2 rounds or a handful of calls understates the spread: with 2 rounds x 2 calls
    # it gave fpcast [0.74, 1.01], a PASS, on a loaded run where 4 x 30 gave 1.031 ±2.7%.
    decidable = rounds >= MIN_ROUNDS and calls >= MIN_CALLS
    if not decidable:
        print("pyodide: fewer than %d rounds or %d calls: the checks stay UNDECIDED" % (MIN_ROUNDS, MIN_CALLS))
    kind, shown = ("eval", "eval") if metric == "wall" else ("cpu", "eval CPU")
    for key, variant, what in (("fpcast_eval_ratio", "fpcast", "pyodide --passes fpcast %s / original"),
                               ("default_eval_ratio", "default pipeline", "pyodide default pipeline %s / original")):
        v = fig["variants"][variant]
        checks.add(key, what % shown, v[kind + "_ratio"], lambda x: "%.3fx" % x,
                   interval=v[kind + "_interval"], decidable=decidable)
    checks.add("outputs_identical", "pyodide workload output identical", all(same.values()), yes_no)
    checks.print("pyodide: acceptance thresholds (issue 13)")
    fig["thresholds"] = checks.to_json()
    return fig


def paired_rounds(ctx, pkg, paths, keys, label):
    """The method of this module's docstring, for any set of variants (`paths`: key -> module; keys[0]
    is the one the others are paired with): --pyodide-rounds node processes, each loading every
    variant as an instance and calling them in a new shuffled order each cycle. Also used by the
    harden section. Returns ({"eval": Rounds, "cpu": Rounds}, outputs per key, the hash("a") values
    seen, the load before the runs)."""
    runner = os.path.join(REPO, "bench", "pyodide", "run.mjs")
    node = os.environ.get("WASMFIX_BENCH_NODE", "node")
    res = {"eval": Rounds(keys), "cpu": Rounds(keys)}
    outputs = {k: set() for k in keys}
    hashes = set()
    load = wait_for_quiet(ctx, "%s workload" % label)
    res["eval"].load = res["cpu"].load = load
    rounds, calls, warmup = ctx.args.pyodide_rounds, ctx.args.pyodide_evals, ctx.args.pyodide_warmup
    for r in range(rounds):
        # One node process per round, every variant an instance in it; the order in which they are
        # loaded turns each round, so no variant is always loaded first.
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        log("%s: round %d/%d: %s, %d warm-up + %d timed calls each" % (label, r + 1, rounds, ", ".join(order), warmup, calls))
        p = subprocess.run([node, runner, pkg] + [paths[k] for k in order]
                           + ["--calls", str(calls), "--warmup", str(warmup), "--seed", str(HASH_SEED),
                              "--order-seed", str(r + 1)],
                           capture_output=True, text=True, timeout=ctx.args.timeout)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise ToolError("run.mjs failed in round %d (exit %d): %s" % (r + 1, p.returncode, (p.stderr or p.stdout)[-600:]))
        got = json.loads(lines[-1])["variants"]
        for k, v in zip(order, got):
            outputs[k].add(v["output"])
            hashes.add(v["hash"])
            res["eval"].add(k, v["eval_s"])
            res["cpu"].add(k, v["cpu_s"])
        for k, v in zip(order, got):
            log("%s:   %-22s eval %s" % (label, k, " ".join("%.3f" % t for t in v["eval_s"])))
    return res, outputs, hashes, load
