"""--harden and each of its passes on ruby.wasm next to wasm-opt --safe-heap, and on harden.O2.wasm.

Issue 6, in one run: ruby.wasm under wasmfix --harden, --passes stack-canary and --passes heap-canary
(a pass that cannot apply says why in the table; heap-canary refuses the stripped ruby.wasm) next to
wasm-opt --safe-heap --detect-features: rewrite time, size growth and the run_ruby.py workload
(interleaved, eval-time ratios to the original; run_ruby.py provides the env imports --safe-heap
adds). The same for ruby-debug (same Ruby, with names: where heap-canary finds the allocator) without
--safe-heap. Then harden.O2.wasm `hash 200000` (malloc/strdup/realloc/free heavy) and `sort 300000`
under the python wasmtime package for the original, --harden and each pass alone (--stack-runs
interleaved runs, medians, only _start timed), with size growth. Then (issue 15) pyodide.asm.wasm: the
default pipeline, --harden and each pass alone, size growth and bench/pyodide's workload in node
(--stack-runs interleaved node runs). Not in the default sections: run --sections harden.
"""
import json
import os

from benchlib.context import FIXTURES, MB, ToolError, last_error_line, log, warm
from benchlib.engine import load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.ruby import print_ruby_variants, run_ruby_variants
from benchlib.tables import Checks, fmt, fmt_interval, table
from benchlib.wasmbin import growth_pct
from sections.pyodide import paired_rounds

NAME = "harden"
DEFAULT = False
TOOLS = True

# (what, op, limit). Ratios are eval-time medians of interleaved runs.
THRESHOLDS = {
    "ruby_harden_ratio": ("<=", 1.5),          # ruby workload, --harden / original (binaryen --safe-heap: 4.6x)
    "ruby_stack_canary_ratio": ("<=", 1.05),   # --passes stack-canary / original
    "ruby_heap_canary_ratio": ("<=", 1.10),    # --passes heap-canary / original (None: refused on ruby.wasm)
    "fixture_heap_canary_ratio": ("<=", 1.10), # harden.O2.wasm `hash N` (malloc/free heavy), heap-canary / original
    "pyodide_harden_size_pct": ("<=", 20.0),   # issue 15: pyodide.asm.wasm --harden size growth (%)
    "pyodide_harden_ratio": ("<=", 1.3),       # issue 15: bench/pyodide workload eval time, --harden / original
}
HARDEN_FIXTURE = "harden.O2.wasm"


def harden_ruby(ctx, checks, name="ruby", safe_heap=True):
    """A ruby module (`name` in the corpus): --harden, --passes stack-canary, --passes heap-canary
    (each may refuse or skip: the report says why) next to wasm-opt --safe-heap (when `safe_heap`);
    sizes and the run_ruby.py workload, interleaved. ruby.wasm is stripped, so heap-canary cannot
    find its allocator; ruby-debug (the same Ruby with names and DWARF) is where it applies."""
    wasmfix, wasm_opt = ctx.wasmfix(), ctx.wasm_opt()
    ruby = ctx.module(name)
    src, size = ruby["path"], ruby["bytes"]
    warm(src)
    variants = [("orig", src)]
    fig = {"input_bytes": size, "variants": {}}
    for label, flags in (("harden", ["--harden"]), ("harden-compact", ["--harden", "--bounds-compact"]),
                         ("stack-canary", ["--passes", "stack-canary"]),
                         ("heap-canary", ["--passes", "heap-canary"])):
        out = ctx.out_path("%s.%s.wasm" % (name, label))
        rep = ctx.out_path("%s.%s.report.json" % (name, label))
        log("harden: %s wasmfix %s" % (name, " ".join(flags)))
        m = ctx.measure([wasmfix, src, "-o", out, "--report", rep] + flags)
        entry = {"rewrite_s": m.times[-1], "ok": m.ok}
        if m.ok:
            with open(rep) as f:
                entry["summaries"] = {p["pass"]: p["summary"] for p in json.load(f)["passes"]}
            entry["bytes"] = os.path.getsize(out)
            entry["size_growth_pct"] = round(growth_pct(entry["bytes"], size), 3)
            variants.append((label, out))
        else:
            entry["refused"] = last_error_line(m.err)
            log("harden: wasmfix %s refused %s: %s" % (" ".join(flags), name, entry["refused"]))
        fig["variants"][label] = entry
    if safe_heap:
        out_wo = ctx.out_path("%s.safe-heap.wasm" % name)
        log("harden: %s wasm-opt --safe-heap --detect-features (binaryen.js: slow)" % name)
        wo = ctx.measure([wasm_opt, src, "-o", out_wo, "--safe-heap", "--detect-features"])
        fig["variants"]["safe-heap"] = {"rewrite_s": wo.times[-1], "ok": wo.ok}
        if wo.ok:
            fig["variants"]["safe-heap"].update(bytes=os.path.getsize(out_wo),
                                                size_growth_pct=round(growth_pct(os.path.getsize(out_wo), size), 3))
            variants.append(("safe-heap", out_wo))
        else:
            fig["variants"]["safe-heap"]["error"] = last_error_line(wo.err)
    work = run_ruby_variants(ctx, [("%s-%s" % (name, label), path) for label, path in variants],
                             what="%s harden workload" % name)
    print_ruby_variants("harden: %s workload" % name, work)
    for label, v in work["variants"].items():
        label = label[len(name) + 1:]
        if label in fig["variants"]:
            fig["variants"][label].update(eval_s=v["eval_s"], ratio=v["ratio"], pair_ratios=v["pair_ratios"],
                                          output_ok=v["output_ok"])
    fig["orig_eval_s"] = work["variants"]["%s-orig" % name]["eval_s"]
    print("\n== harden: %s %.1f MB: what each variant did ==" % (name, size / MB))
    rows = []
    for label, e in fig["variants"].items():
        what = e.get("refused") or e.get("error") or "; ".join(
            "%s: %s" % (k, v[:150]) for k, v in e.get("summaries", {}).items()
            if k in ("stack-canary", "heap-canary", "bounds")) or "-"
        rows.append([label, fmt(e.get("rewrite_s"), ".2f"), fmt(e.get("size_growth_pct"), "+.3f"),
                     fmt(e.get("ratio"), ".3f"), {True: "yes", False: "NO", None: "-"}[e.get("output_ok")], what])
    print(table(["variant", "rewrite s", "size %", "eval ratio", "output ok", "what it did"], rows))
    for key, label in (("ruby_harden_ratio", "harden"), ("ruby_stack_canary_ratio", "stack-canary"),
                       ("ruby_heap_canary_ratio", "heap-canary")):
        checks.add(key, "%s %s" % (name, key), fig["variants"].get(label, {}).get("ratio"), lambda v: "%.3f" % v,
                   missing="n/a (%s)" % (fig["variants"][label].get("refused") or "?")[:80], no_figure="N/A")
    return fig


def harden_fixture(ctx, checks):
    """harden.O2.wasm `hash N` (malloc/strdup/realloc/free heavy) and `sort N`: original vs each pass vs
    --harden vs --harden --bounds-compact (loads and null-page stores rebased, no messages: the
    difference to --harden is what naming the use of a freed pointer costs), under the python wasmtime
    package: compiled once, fresh instance per run, only _start timed."""
    wasmtime, _ = load_wasmtime("harden")
    orig = os.path.join(FIXTURES, HARDEN_FIXTURE)
    paths = {"orig": orig}
    for label, flags in (("harden", ["--harden"]), ("harden-compact", ["--harden", "--bounds-compact"]),
                         ("stack-canary", ["--passes", "stack-canary"]),
                         ("heap-canary", ["--passes", "heap-canary"]), ("bounds", ["--passes", "bounds"])):
        out = ctx.out_path("harden.O2.%s.wasm" % label)
        m = ctx.measure([ctx.wasmfix(), orig, "-o", out] + flags)
        if not m.ok:
            raise ToolError("wasmfix %s failed on %s: %s" % (" ".join(flags), orig, m.err[-600:]))
        paths[label] = out
    engine = wasmtime.Engine(wasmtime.Config())
    mods = {k: wasmtime.Module.from_file(engine, p) for k, p in paths.items()}
    outf = ctx.out_path("harden-fixture.stdout")
    fig = {}
    for case, n in (("hash", 200000), ("sort", 300000)):
        outs = {}

        def timed(k, _round):
            t, out, outcome = time_start(engine, mods[k], ["prog", case, str(n)], outf)
            outs[k] = (out, outcome)
            return t

        res = interleave(ctx, "harden fixture loops" if case == "hash" else None, list(mods), ctx.args.stack_runs,
                         timed, label="harden: %s" % case)
        fig[case] = {k: {"median_s": round(res.median(k), 4), "min_s": round(res.min(k), 4),
                         "ratio": round(res.ratio(k, "orig"), 4), "min_ratio": round(res.min_ratio(k, "orig"), 4),
                         "output_identical": outs[k] == outs["orig"]} for k in mods}
        print("\n== harden: %s `%s %d` (%d interleaved runs, wasmtime; ratio = median / original median) ==" %
              (HARDEN_FIXTURE, case, n, ctx.args.stack_runs))
        print(table(["variant", "median s", "ratio", "min ratio", "output identical"],
                    [[k, "%.4f" % v["median_s"], "%.3f" % v["ratio"], "%.3f" % v["min_ratio"],
                      "yes" if v["output_identical"] else "NO"] for k, v in fig[case].items()]))
        for k in mods:
            p = paths[k]
            fig[case][k]["size_growth_pct"] = round(growth_pct(os.path.getsize(p), os.path.getsize(orig)), 3)
    checks.add("fixture_heap_canary_ratio", "fixture_heap_canary_ratio (hash)", fig["hash"]["heap-canary"]["ratio"],
               lambda v: "%.3f" % v)
    print("\n== harden: %s size growth (%%): %s ==" % (HARDEN_FIXTURE, ", ".join(
        "%s %+.2f" % (k, fig["hash"][k]["size_growth_pct"]) for k in mods if k != "orig")))
    return fig


def harden_pyodide(ctx, checks):
    """pyodide.asm.wasm (issue 15): the default pipeline, --harden and each pass alone; size growth and
    bench/pyodide's workload eval time through the real pyodide.mjs (node), measured as the pyodide
    section measures (sections/pyodide.py: every variant an instance in one node process per round,
    calls alternating in shuffled cycles, paired ratios with a 95% interval; --pyodide-rounds,
    --pyodide-evals, --pyodide-warmup)."""
    src = ctx.module("pyodide")["path"]
    size = os.path.getsize(src)
    package = os.path.dirname(src)
    warm(src)
    paths, fig = {"orig": src}, {"input_bytes": size, "variants": {}}
    for label, flags in (("default", []), ("harden", ["--harden"]), ("bounds", ["--passes", "bounds"]),
                         ("stack-canary", ["--passes", "stack-canary"]), ("heap-canary", ["--passes", "heap-canary"]),
                         ("harden-compact", ["--harden", "--bounds-compact"]),
                         ("bounds-compact", ["--passes", "bounds", "--bounds-compact"])):
        out = ctx.out_path("pyodide.%s.wasm" % label)
        log("harden: pyodide wasmfix %s" % " ".join(flags))
        m = ctx.measure([ctx.wasmfix(), src, "-o", out] + flags)
        if not m.ok:
            fig["variants"][label] = {"refused": last_error_line(m.err)}
            continue
        paths[label] = out
        fig["variants"][label] = {"bytes": os.path.getsize(out),
                                  "size_growth_pct": round(growth_pct(os.path.getsize(out), size), 3)}
    keys = list(paths)
    res, outputs, _hashes, _load = paired_rounds(ctx, package, paths, keys, "harden: pyodide")
    for k in keys:
        e = fig["variants"].setdefault(k, {})
        ratio, low, high = res["eval"].paired_ratio(k, "orig") if k != "orig" else (1.0, 1.0, 1.0)
        e.update(eval_s=round(res["eval"].median(k), 4), ratio=ratio, interval=[low, high],
                 cpu_ratio=res["cpu"].paired_ratio(k, "orig")[0] if k != "orig" else 1.0,
                 min_ratio=round(res["eval"].min_ratio(k, "orig"), 4),
                 output_ok=outputs.get(k) == outputs.get("orig") and len(outputs.get(k, ())) == 1)
    print("\n== harden: pyodide.asm.wasm %.1f MB (%d rounds x %d calls of every variant alternating in one node "
          "process, as in the pyodide section; ratio = median of paired calls' ratios to the original, "
          "± half its 95%% interval) ==" % (size / MB, ctx.args.pyodide_rounds, ctx.args.pyodide_evals))
    print(table(["variant", "size %", "eval ratio", "cpu ratio", "min ratio", "output ok"],
                [[k, fmt(e.get("size_growth_pct"), "+.2f"),
                  fmt_interval(e.get("ratio"), *(e.get("interval") or (None, None))), fmt(e.get("cpu_ratio"), ".3f"),
                  fmt(e.get("min_ratio"), ".3f"),
                  {True: "yes", False: "NO", None: "-"}[e.get("output_ok")] if "refused" not in e else e["refused"][:80]]
                 for k, e in fig["variants"].items()]))
    h = fig["variants"].get("harden", {})
    checks.add("pyodide_harden_size_pct", "pyodide --harden size growth %", h.get("size_growth_pct"),
               lambda v: "%+.2f" % v)
    checks.add("pyodide_harden_ratio", "pyodide --harden eval ratio", h.get("ratio"), lambda v: "%.3f" % v,
               interval=h.get("interval"))
    return fig


def run(ctx):
    checks = Checks(ctx, "harden", THRESHOLDS)
    fig = {"thresholds": checks.to_json()}
    fig["ruby"] = harden_ruby(ctx, checks)
    if ctx.has_module("ruby-debug"):
        # heap-canary needs the allocator's names: the named build is where it applies.
        fig["ruby-debug"] = harden_ruby(ctx, checks, "ruby-debug", safe_heap=False)
    fig["fixture"] = harden_fixture(ctx, checks)
    if ctx.has_module("pyodide"):
        fig["pyodide"] = harden_pyodide(ctx, checks)
    checks.print("harden: acceptance thresholds (issue 6)")
    return fig
