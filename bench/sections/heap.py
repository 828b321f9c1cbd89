"""heap-canary with and without its quarantine: Ruby (stripped and with names) and harden.O2.wasm's heap loop.

Issue 16, in one run: ruby.wasm (stripped: the allocator is found by its code) and ruby-debug (the
same Ruby with names) under the original, `--passes heap-canary` (the default 4 MiB quarantine;
freed blocks poisoned in their first 256 bytes and last 8), `--poison-bytes all` (every freed byte
poisoned and checked, as before issue 16's fix) and `--quarantine 0` (neither poison nor
quarantine: redzones only): the run_ruby.py workload
interleaved (eval-time ratios to the original, same output), and the peak RSS of one run_ruby.py
run of each (1 instance; the compiled module is cached, so the peak is mostly the instance). Then
harden.O2.wasm `hash 200000` (malloc/strdup/realloc/free heavy) under the python wasmtime package
for the same three variants (--stack-runs interleaved runs, only _start timed) with the linear
memory each instance ends with (memory only grows: its peak). Not in the default sections: run
--sections heap (add --modules ruby to skip ruby-debug's 49 MB).
"""
import os
import sys

from benchlib.context import FIXTURES, MB, ToolError, log, warm
from benchlib.engine import load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.ruby import print_ruby_variants, run_ruby_variants
from benchlib.tables import Checks, fmt, table
from benchlib.wasmbin import growth_pct

NAME = "heap"
DEFAULT = False
TOOLS = True

THRESHOLDS = {
    "ruby_quarantine_ratio": ("<=", 1.25),        # ruby.wasm workload, heap-canary (default quarantine) / original
    "ruby_debug_quarantine_ratio": ("<=", 1.25),  # the same on ruby-debug
}
FIXTURE = "harden.O2.wasm"
VARIANTS = (("heap-canary", ["--passes", "heap-canary"]),
            ("poison-all", ["--passes", "heap-canary", "--poison-bytes", "all"]),
            ("no-quarantine", ["--passes", "heap-canary", "--quarantine", "0"]))


def rewrite(ctx, name, src, size):
    """The variants of one module: [(label, path)], and what wasmfix said for each."""
    variants, fig = [("orig", src)], {}
    for label, flags in VARIANTS:
        out = ctx.out_path("heap.%s.%s.wasm" % (name, label))
        log("heap: %s wasmfix %s" % (name, " ".join(flags)))
        m = ctx.measure([ctx.wasmfix(), src, "-o", out] + flags)
        if not m.ok:
            raise ToolError("wasmfix %s failed on %s: %s" % (" ".join(flags), src, m.err[-600:]))
        fig[label] = {"rewrite_s": m.times[-1], "rewrite_peak_mb": m.peak_mb,
                      "size_growth_pct": round(growth_pct(os.path.getsize(out), size), 3)}
        variants.append((label, out))
    return variants, fig


def heap_ruby(ctx, checks, name, key):
    ruby = ctx.module(name)
    src, size = ruby["path"], ruby["bytes"]
    warm(src)
    variants, fig = rewrite(ctx, name, src, size)
    work = run_ruby_variants(ctx, [("heap-%s-%s" % (name, label), path) for label, path in variants],
                             what="%s heap workload" % name)
    print_ruby_variants("heap: %s workload" % name, work)
    script = os.path.join(ctx.shared, "corpus", "run_ruby.py")
    rows = []
    for label, path in variants:
        v = work["variants"]["heap-%s-%s" % (name, label)]
        entry = fig.setdefault(label, {})
        entry.update(eval_s=v["eval_s"], ratio=v["ratio"], pair_ratios=v["pair_ratios"], output_ok=v["output_ok"])
        # One more run for its peak RSS (the timed rounds ran several instances per process).
        # Same cache name as run_ruby_variants: the compiled module is reused.
        os.environ["RUBY_RUN_CACHE"] = os.path.join(ctx.cache, "cwasm")
        m = ctx.measure([sys.executable, script, "bench-heap-%s-%s" % (name, label), path, "1"])
        entry["peak_mb"] = m.peak_mb if m.ok else None
        rows.append([label, fmt(entry.get("size_growth_pct"), "+.3f"), fmt(v["eval_s"], ".3f"), fmt(v["ratio"], ".3f"),
                     fmt(entry["peak_mb"], ".1f"), "yes" if v["output_ok"] else "NO"])
    base_peak = fig["orig"].get("peak_mb")
    for label, _ in variants:
        p = fig[label].get("peak_mb")
        fig[label]["peak_ratio"] = round(p / base_peak, 4) if p and base_peak else None
    print("\n== heap: %s %.1f MB: size, eval ratio, peak RSS of one run_ruby.py run ==" % (name, size / MB))
    print(table(["variant", "size %", "eval s", "eval ratio", "peak MB", "output ok"], rows))
    checks.add(key, "%s heap-canary (4 MiB quarantine, --poison-bytes 256) eval ratio" % name, fig["heap-canary"].get("ratio"),
               lambda v: "%.3f" % v)
    return fig


def heap_fixture(ctx):
    wasmtime, _ = load_wasmtime("heap")
    orig = os.path.join(FIXTURES, FIXTURE)
    variants, sizes = rewrite(ctx, "harden.O2", orig, os.path.getsize(orig))
    engine = wasmtime.Engine(wasmtime.Config())
    mods = {label: wasmtime.Module.from_file(engine, path) for label, path in variants}
    outf = ctx.out_path("heap-fixture.stdout")
    outs, pages = {}, {}

    def timed(label, _round):
        seen = {}

        def before(store, exports):
            seen["store"], seen["memory"] = store, exports["memory"]

        t, out, outcome = time_start(engine, mods[label], ["prog", "hash", "200000"], outf, before)
        outs[label] = (out, outcome)
        pages[label] = seen["memory"].size(seen["store"])
        return t

    res = interleave(ctx, "heap fixture loop", list(mods), ctx.args.stack_runs, timed, label="heap: hash")
    fig = {}
    for label in mods:
        fig[label] = {"median_s": round(res.median(label), 4), "ratio": round(res.ratio(label, "orig"), 4),
                      "min_ratio": round(res.min_ratio(label, "orig"), 4), "memory_mb": pages[label] * 65536 / MB,
                      "memory_ratio": round(pages[label] / pages["orig"], 4),
                      "output_identical": outs[label] == outs["orig"]}
        fig[label].update(sizes.get(label, {}))
    print("\n== heap: %s `hash 200000` (%d interleaved runs, wasmtime; ratio = median / original median) =="
          % (FIXTURE, ctx.args.stack_runs))
    print(table(["variant", "median s", "ratio", "min ratio", "linear memory MB", "memory ratio", "output identical"],
                [[k, "%.4f" % v["median_s"], "%.3f" % v["ratio"], "%.3f" % v["min_ratio"], "%.2f" % v["memory_mb"],
                  "%.3f" % v["memory_ratio"], "yes" if v["output_identical"] else "NO"] for k, v in fig.items()]))
    return fig


def run(ctx):
    checks = Checks(ctx, "heap", THRESHOLDS)
    fig = {"thresholds": checks.to_json()}
    fig["fixture"] = heap_fixture(ctx)
    fig["ruby"] = heap_ruby(ctx, checks, "ruby", "ruby_quarantine_ratio")
    if ctx.has_module("ruby-debug"):
        fig["ruby-debug"] = heap_ruby(ctx, checks, "ruby-debug", "ruby_debug_quarantine_ratio")
    checks.print("heap: acceptance thresholds (issue 16)")
    return fig
