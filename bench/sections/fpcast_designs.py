"""fpcast's two designs side by side: shadow tables (reference types) vs views appended to table 0 (WebAssembly 1.0).

Issue 14, in one run:
ruby.wasm  the run_ruby.py workload (original first, interleaved, --ruby-rounds rounds, default 5) for
           `--passes fpcast --fpcast-design tables` / `mvp` and the default pipeline with each design
           (ruby.wasm declares reference types, so `tables` is its default): eval-time ratio to the
           original, size growth, output identical.
mixed      tests/fixtures/wasm/fpcast.O2.wasm (clang 14, WebAssembly 1.0) `prog mixed-match N` /
           `prog mixed-mismatch N` under the python `wasmtime` package: `mvp` (its default) and
           `tables --enable-reference-types --enable-tail-call`; --fpcast-runs interleaved rounds,
           medians, only `_start` timed; N as in the fpcast section.
"""
import os

from benchlib.context import FIXTURES, REPO, ToolError
from benchlib.engine import calibrate, load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.ruby import print_ruby_variants, run_ruby_variants
from benchlib.tables import Checks, fmt, table, yes_no

NAME = "fpcast-designs"
DEFAULT = False
TOOLS = True

THRESHOLDS = {
    "ruby_default_eval_ratio": ("<=", 1.03),  # default pipeline (its default design) / original
    "ruby_outputs_identical": ("==", True),
    "mixed_outputs_identical": ("==", True),
}

RUBY = [
    ("fpcast tables", ["--passes", "fpcast", "--fpcast-design", "tables"]),
    ("fpcast mvp", ["--passes", "fpcast", "--fpcast-design", "mvp"]),
    ("default (tables)", []),
    ("default, mvp", ["--fpcast-design", "mvp"]),
]
MIXED = [
    ("mvp", ["--passes", "fpcast"]),
    ("tables", ["--passes", "fpcast", "--fpcast-design", "tables", "--enable-reference-types", "--enable-tail-call"]),
]


def rewrite(ctx, src, label, args):
    out = ctx.out_path("%s.%s.wasm" % (os.path.basename(src)[:-5], label.replace(" ", "-").replace(",", "")))
    m = ctx.measure([ctx.wasmfix(), src, "-o", out] + args)
    if not m.ok:
        raise ToolError("wasmfix %s failed on %s: %s" % (" ".join(args), src, m.err[-600:]))
    return out


def ruby(ctx, checks):
    r = ctx.module("ruby")
    src, size = r["path"], r["bytes"]
    variants = [("ruby-orig", src)] + [(label, rewrite(ctx, src, label, args)) for label, args in RUBY]
    work = run_ruby_variants(ctx, variants, rounds=ctx.args.ruby_rounds or 5, what="ruby workload (designs)")
    print_ruby_variants("fpcast-designs: ruby.wasm workload", work)
    rows, fig = [], {"load": work["load"], "variants": {}}
    for label, path in variants[1:]:
        v = work["variants"][label]
        growth = 100.0 * (os.path.getsize(path) - size) / size
        rows.append([label, fmt(v["ratio"], ".3f"), fmt(v["min_ratio"], ".3f"), "%+.2f%%" % growth,
                     yes_no(v["output_ok"])])
        fig["variants"][label] = {"eval_ratio": v["ratio"], "eval_min_ratio": v["min_ratio"],
                                  "size_growth_pct": round(growth, 3), "output_ok": v["output_ok"]}
    print("\n== fpcast-designs: ruby.wasm, eval time / original ==")
    print(table(["variant", "eval ratio", "min/min", "size", "output identical"], rows))
    checks.add("ruby_default_eval_ratio", "ruby default pipeline eval / original",
               fig["variants"]["default (tables)"]["eval_ratio"], lambda v: "%.3fx" % v)
    checks.add("ruby_outputs_identical", "ruby outputs identical",
               all(v["output_ok"] for v in fig["variants"].values()), yes_no)
    return fig


def mixed(ctx, checks):
    wasmtime, version = load_wasmtime("fpcast-designs")
    src = os.path.join(FIXTURES, "fpcast.O2.wasm")
    typed = os.path.join(FIXTURES, "fpcast-typed.O2.wasm")
    paths = {"orig": src, "typed": typed}
    for label, args in MIXED:
        paths[label] = rewrite(ctx, src, label, args)
    engine = wasmtime.Engine(wasmtime.Config())
    mods = {k: wasmtime.Module.from_file(engine, p) for k, p in paths.items()}
    outf = ctx.out_path("fpcast-designs.stdout")

    def run(key, case, n):
        return time_start(engine, mods[key], ["prog", case, str(n)], outf)

    n = ctx.args.fpcast_n
    if not n:
        n, _ = calibrate(lambda k: run("orig", "mixed-match", k)[0], 5_000_000, 2_000_000_000, "fpcast-designs")
    want = {"mixed-match": run("orig", "mixed-match", n)[1:], "mixed-mismatch": run("typed", "mixed-mismatch", n)[1:]}
    order = [("orig", "mixed-match")] + [(label, case) for label, _ in MIXED for case in ("mixed-match", "mixed-mismatch")]
    same = {}

    def timed(k, _round):
        t, out, outcome = run(k[0], k[1], n)
        if k[0] != "orig":
            same[k] = same.get(k, True) and (out, outcome) == want[k[1]]
        return t

    res = interleave(ctx, "mixed loop timing (designs)", order, ctx.args.fpcast_runs, timed,
                     label="fpcast-designs: mixed N=%d" % n)
    om = ("orig", "mixed-match")
    rows, fig = [], {"n": n, "wasmtime_py": version, "load": res.load, "variants": {}}
    for label, _ in MIXED:
        m, x = (label, "mixed-match"), (label, "mixed-mismatch")
        f = {"bytes": os.path.getsize(paths[label]), "match_ratio": res.ratio(m, om),
             "match_min_ratio": res.min_ratio(m, om), "mismatch_ratio": res.ratio(x, om),
             "mismatch_min_ratio": res.min_ratio(x, om), "output_ok": same.get(m, False) and same.get(x, False)}
        fig["variants"][label] = f
        rows.append([label, "%.1f" % (f["bytes"] / 1e3), fmt(f["match_ratio"], ".3f"), fmt(f["match_min_ratio"], ".3f"),
                     fmt(f["mismatch_ratio"], ".3f"), fmt(f["mismatch_min_ratio"], ".3f"), yes_no(f["output_ok"])])
    print("\n== fpcast-designs: mixed fixture %s, N=%d (python wasmtime %s; median of %d interleaved runs; "
          "ratios to the original's mixed-match) ==" % (os.path.relpath(src, REPO), n, version, ctx.args.fpcast_runs))
    print(table(["design", "KB", "match", "min/min", "mismatch", "min/min", "output identical"], rows))
    checks.add("mixed_outputs_identical", "mixed loop outputs identical (match: original; mismatch: typed build)",
               all(v["output_ok"] for v in fig["variants"].values()), yes_no)
    return fig


def run(ctx):
    checks = Checks(ctx, "fpcast-designs", THRESHOLDS)
    fig = {"thresholds": checks.to_json(), "mixed": mixed(ctx, checks), "ruby": ruby(ctx, checks)}
    checks.print("fpcast-designs: checks (issue 14)")
    return fig
