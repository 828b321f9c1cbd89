"""wasmfix --passes fpcast vs wasm-opt --fpcast-emu: ruby.wasm rewrite/size/workload, mixed fixture loops.

Issue 4, in one run:
ruby.wasm  rewrite time (median of --repeat), size growth vs the original, and the run_ruby.py
           workload (original first, interleaved, --ruby-rounds rounds, default 5, of --ruby-n
           instances): eval-time ratio to the original and "output identical". wasm-opt gets
           --detect-features; when --fpcast-emu fails (binaryen needs max-func-params tuned on Ruby)
           the error line is recorded and --pass-arg=max-func-params@N is tried for N in
           FPCAST_EMU_PARAMS until one works.
mixed      tests/fixtures/wasm/fpcast.O2.wasm (`prog mixed-match N` / `prog mixed-mismatch N`) under
           the python `wasmtime` package, in this process: every module compiled once, a fresh
           instance per run, only the `_start` call timed; --fpcast-runs interleaved rounds, medians.
           N: --fpcast-n, else calibrated so the original's mixed-match takes ~0.4 s. Also checks that
           the original mixed-mismatch traps, and that the fixed module prints what
           fpcast-typed.O2.wasm prints.
"""
import os

from benchlib.context import FIXTURES, MB, REPO, Measure, ToolError, last_error_line, log, warm
from benchlib.engine import calibrate, load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.ruby import print_ruby_variants, run_ruby_variants
from benchlib.tables import Checks, fmt, table, yes_no

NAME = "fpcast"
DEFAULT = True
TOOLS = True

# (what, op, limit). Ratios are medians of interleaved runs.
THRESHOLDS = {
    "ruby_eval_ratio": ("<=", 1.02),        # wasmfix ruby workload eval time / original (binaryen: 1.13x)
    "ruby_size_growth_pct": ("<=", 2.0),    # wasmfix output size vs original, %
    "ruby_rewrite_s": ("<=", 0.5),          # wasmfix --passes fpcast wall seconds on ruby.wasm
    "ruby_output_identical": ("==", True),  # workload output and rb_state equal the original's
    "mixed_match_ratio": ("<=", 1.02),      # fixed mixed-match / original mixed-match
    "mixed_mismatch_ratio": ("<=", 1.5),    # fixed mixed-mismatch / fixed mixed-match
    "mixed_orig_mismatch_traps": ("==", True),
    "mixed_match_output": ("==", True),     # fixed mixed-match stdout == original's
    "mixed_mismatch_output": ("==", True),  # fixed mixed-mismatch stdout == fpcast-typed.O2.wasm's
}
# max-func-params values tried, in order, when wasm-opt --fpcast-emu fails (its default is 16).
FPCAST_EMU_PARAMS = (16, 20, 32)


def fpcast_build_wasm_opt(ctx, src, out, log_name):
    """First working wasm-opt --fpcast-emu build of src: plain, then max-func-params@N.
    Returns (Measure or None, flags or None, attempts: [{flags, ok, error}])."""
    wasm_opt = ctx.wasm_opt()
    attempts, need = [], None
    for n in (None,) + FPCAST_EMU_PARAMS:
        flags = ["--fpcast-emu"] + ([] if n is None else ["--pass-arg=max-func-params@%d" % n]) + ["--detect-features"]
        if n is not None and need is not None and n < need:
            attempts.append({"flags": flags, "ok": None, "error": "skipped: wasm-opt said it needs at least %d" % need})
            continue
        log("fpcast: %s: wasm-opt %s" % (log_name, " ".join(flags)))
        m = ctx.measure([wasm_opt, src, "-o", out] + flags)
        if m.ok:
            attempts.append({"flags": flags, "ok": True, "error": None})
            return m, flags, attempts
        err = last_error_line(m.err)
        attempts.append({"flags": flags, "ok": False, "error": err, "time_s": m.time_s})
        log("fpcast: %s: wasm-opt %s failed: %s" % (log_name, " ".join(flags), err))
        words = err.split()
        if "least" in words and words.index("least") + 1 < len(words) and words[words.index("least") + 1].isdigit():
            need = max(need or 0, int(words[words.index("least") + 1]))
    return None, None, attempts


def fpcast_ruby(ctx, checks):
    """ruby.wasm: rewrite time, size growth, workload eval-time ratio, output identical."""
    wasmfix = ctx.wasmfix()
    ruby = ctx.module("ruby")
    src, size = ruby["path"], ruby["bytes"]
    repeat = ctx.args.repeat
    warm(src)
    out_wf, out_wo = ctx.out_path("ruby.fpcast-wasmfix.wasm"), ctx.out_path("ruby.fpcast-wasm-opt.wasm")
    out_rt = ctx.out_path("ruby.wasm-opt-roundtrip.wasm")
    loads = []

    # wasm-opt first: its tuning attempts are long (binaryen.js under node) and load the machine;
    # the wasmfix timings come after, once the load has settled.
    wo, wo_flags, attempts = fpcast_build_wasm_opt(ctx, src, out_wo, "ruby")
    if wo:
        interleave(ctx, None, ["wasm-opt"], repeat - 1, lambda k, r: ctx.measure(wo.cmd, wo).times[-1],
                   label="fpcast: ruby")
    rt = ctx.measure([ctx.wasm_opt(), src, "-o", out_rt, "--detect-features"])  # size reference only
    rt_bytes = os.path.getsize(out_rt) if rt.ok else None

    wf = Measure([wasmfix, src, "-o", out_wf, "--passes", "fpcast"])
    rewrite = interleave(ctx, "ruby rewrite timing", ["wasmfix"], repeat, lambda k, r: ctx.measure(wf.cmd, wf).times[-1],
                         label="fpcast: ruby")
    loads.append(rewrite.load)
    if not wf.ok:
        raise ToolError("wasmfix --passes fpcast failed on ruby.wasm (exit %s): %s" % (wf.rcs, wf.err[-600:]))
    wf.out_bytes = os.path.getsize(out_wf)
    if wo:
        wo.out_bytes = os.path.getsize(out_wo)

    variants = [("ruby-orig", src), ("fpcast-wasmfix", out_wf)] + ([("fpcast-wasm-opt", out_wo)] if wo else [])
    work = run_ruby_variants(ctx, variants, rounds=ctx.args.ruby_rounds or 5, what="ruby workload")
    loads.append(work["load"])
    print_ruby_variants("fpcast: ruby.wasm workload", work)

    def growth(m):
        return None if not m or m.out_bytes is None else round(100.0 * (m.out_bytes - size) / size, 3)

    vres = work["variants"]
    orig = vres["ruby-orig"]
    fig = {"input": src, "input_bytes": size, "loads": loads, "workload": work,
           "wasmfix": dict(wf.to_json(size), size_growth_pct=growth(wf), eval_ratio=vres["fpcast-wasmfix"]["ratio"],
                           init_ratio=round(vres["fpcast-wasmfix"]["init_s"] / orig["init_s"], 4),
                           eval_min_ratio=vres["fpcast-wasmfix"]["min_ratio"], output_ok=vres["fpcast-wasmfix"]["output_ok"]),
           "wasm_opt": {"flags": wo_flags, "attempts": attempts,
                        "roundtrip_bytes": rt_bytes,
                        "roundtrip_growth_pct": None if rt_bytes is None else round(100.0 * (rt_bytes - size) / size, 3)}}
    if wo:
        fig["wasm_opt"].update(wo.to_json(size), size_growth_pct=growth(wo), eval_ratio=vres["fpcast-wasm-opt"]["ratio"],
                               init_ratio=round(vres["fpcast-wasm-opt"]["init_s"] / orig["init_s"], 4),
                               eval_min_ratio=vres["fpcast-wasm-opt"]["min_ratio"], output_ok=vres["fpcast-wasm-opt"]["output_ok"])

    print("\n== fpcast: ruby.wasm %.1f MB, side by side (rewrite = median of %d runs; ratios = median eval or init "
          "/ original's) ==" % (size / MB, repeat))
    rows = []
    for label, m, f in (("wasmfix --passes fpcast", wf, fig["wasmfix"]),
                        ("wasm-opt " + " ".join(wo_flags or ["--fpcast-emu"]), wo, fig["wasm_opt"])):
        if not m:
            rows.append([label, "FAILED", "-", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([label, fmt(m.time_s, ".3f"), " ".join("%.3f" % t for t in m.times), fmt(m.peak_mb, ".0f"),
                     "%+.2f%%" % f["size_growth_pct"], fmt(f["eval_ratio"], ".3f"), fmt(f["eval_min_ratio"], ".3f"),
                     fmt(f["init_ratio"], ".3f"), "yes" if f["output_ok"] else "NO"])
    print(table(["variant", "rewrite s", "runs s", "peak MB", "size", "eval ratio", "min/min", "init ratio",
                 "output identical"], rows))
    print("wasm-opt --fpcast-emu attempts (binaryen.js under node; the first that works is used):")
    for a in attempts:
        print("  %-62s %s" % (" ".join(a["flags"]), "ok" if a["ok"] else a["error"]))
    if rt_bytes is not None:
        print("wasm-opt --detect-features round trip alone (no pass): %+.2f%% size" % fig["wasm_opt"]["roundtrip_growth_pct"])

    checks.add("ruby_eval_ratio", "ruby wasmfix eval time / original", fig["wasmfix"]["eval_ratio"],
               lambda v: "%.3fx" % v)
    checks.add("ruby_size_growth_pct", "ruby wasmfix size growth %", fig["wasmfix"]["size_growth_pct"],
               lambda v: "%+.2f%%" % v)
    checks.add("ruby_rewrite_s", "ruby wasmfix rewrite s", wf.time_s, lambda v: "%.3f s" % v)
    checks.add("ruby_output_identical", "ruby wasmfix workload output identical", fig["wasmfix"]["output_ok"], yes_no)
    return fig


def fpcast_mixed(ctx, checks):
    """tests/fixtures/wasm/fpcast.O2.wasm mixed-match / mixed-mismatch loops under python wasmtime."""
    wasmtime, wt_version = load_wasmtime("fpcast")
    orig_path = os.path.join(FIXTURES, "fpcast.O2.wasm")
    typed_path = os.path.join(FIXTURES, "fpcast-typed.O2.wasm")
    for p in (orig_path, typed_path):
        if not os.path.exists(p):
            raise ToolError("fixture missing: %s" % p)
    fixed_path = ctx.out_path("fpcast.O2.fixed.wasm")
    wo_path = ctx.out_path("fpcast.O2.fpcast-emu.wasm")
    wf = ctx.measure([ctx.wasmfix(), orig_path, "-o", fixed_path, "--passes", "fpcast"])
    if not wf.ok:
        raise ToolError("wasmfix --passes fpcast failed on %s: %s" % (orig_path, wf.err[-600:]))
    wo, wo_flags, wo_attempts = fpcast_build_wasm_opt(ctx, orig_path, wo_path, "fpcast.O2")

    engine = wasmtime.Engine(wasmtime.Config())
    paths = {"orig": orig_path, "fixed": fixed_path, "typed": typed_path}
    if wo:
        paths["wasm-opt"] = wo_path
    mods = {k: wasmtime.Module.from_file(engine, p) for k, p in paths.items()}
    outf = ctx.out_path("fpcast-mixed.stdout")

    def run(key, case, n):
        """Fresh instance of mods[key]; times only the _start call. Returns (s, stdout, outcome)."""
        return time_start(engine, mods[key], ["prog", case, str(n)], outf)

    # N: the original's mixed-match loop at ~0.4 s (2 significant digits), unless --fpcast-n.
    n = ctx.args.fpcast_n
    calib = None
    if not n:
        n, calib = calibrate(lambda k: run("orig", "mixed-match", k)[0], 5_000_000, 2_000_000_000, "fpcast")

    # Correctness runs (untimed): the original traps on mismatch, outputs agree.
    single = {}
    for key, case in (("orig", "mixed-match"), ("orig", "mixed-mismatch"), ("typed", "mixed-match"),
                      ("typed", "mixed-mismatch"), ("fixed", "mixed-match"), ("fixed", "mixed-mismatch")) + \
            ((("wasm-opt", "mixed-match"), ("wasm-opt", "mixed-mismatch")) if wo else ()):
        t, out, outcome = run(key, case, n)
        single[(key, case)] = {"stdout": out, "outcome": outcome}
    orig_trap = single[("orig", "mixed-mismatch")]["outcome"]
    orig_traps = orig_trap.startswith("trap:") and "indirect call type mismatch" in orig_trap

    def same(a, b):
        return single[a]["outcome"] == "ok" and single[a] == single[b]

    match_out_ok = same(("fixed", "mixed-match"), ("orig", "mixed-match"))
    mismatch_out_ok = same(("fixed", "mixed-mismatch"), ("typed", "mixed-mismatch"))

    # Timed runs, interleaved; a fresh instance per run.
    order = [("orig", "mixed-match"), ("fixed", "mixed-match"), ("fixed", "mixed-mismatch")]
    if wo:
        order += [("wasm-opt", "mixed-match"), ("wasm-opt", "mixed-mismatch")]
    order += [("typed", "mixed-match"), ("typed", "mixed-mismatch")]
    bad = []

    def timed(k, r):
        t, out, outcome = run(k[0], k[1], n)
        if outcome != "ok" or out != single[k]["stdout"]:
            bad.append("%s %s round %d: %s %r" % (k[0], k[1], r + 1, outcome, out))
        return round(t, 5)

    res = interleave(ctx, "mixed loop timing", order, ctx.args.fpcast_runs, timed, label="fpcast: mixed N=%d" % n)
    load = res.load
    if bad:
        raise ToolError("fpcast mixed loop: a timed run did not repeat its output: " + "; ".join(bad[:3]))
    times = {k: res.samples(k) for k in order}
    med = {k: res.median(k) for k in order}
    fastest = {k: res.min(k) for k in order}

    OM, FM, FX = ("orig", "mixed-match"), ("fixed", "mixed-match"), ("fixed", "mixed-mismatch")
    WM, WX = ("wasm-opt", "mixed-match"), ("wasm-opt", "mixed-mismatch")
    TM, TX = ("typed", "mixed-match"), ("typed", "mixed-mismatch")
    pairs = [("fixed_match/orig_match", FM, OM), ("fixed_mismatch/fixed_match", FX, FM),
             ("fixed_mismatch/orig_match", FX, OM), ("typed_mismatch/typed_match", TX, TM),
             ("fixed_mismatch/typed_mismatch", FX, TX)]
    if wo:
        pairs += [("wasm-opt_match/orig_match", WM, OM), ("wasm-opt_mismatch/wasm-opt_match", WX, WM),
                  ("wasm-opt_mismatch/orig_match", WX, OM)]
    # name: (median / median, per-round ratios, min / min). Checks use the medians; min / min is the
    # steadier figure when other processes interfere (they only ever add time).
    ratios = {name: (round(res.ratio(a, b), 4), [round(x, 3) for x in res.round_ratios(a, b)], round(res.min_ratio(a, b), 4))
              for name, a, b in pairs}

    print("\n== fpcast: mixed fixture %s, N=%d (python wasmtime %s; only _start timed; median of %d interleaved "
          "runs, fresh instance each) ==" % (os.path.relpath(orig_path, REPO), n, wt_version, ctx.args.fpcast_runs))
    rows = []
    labels = {"orig": "original", "fixed": "wasmfix --passes fpcast",
              "wasm-opt": "wasm-opt " + " ".join(wo_flags or []), "typed": "fpcast-typed.O2.wasm (reference)"}
    for key in ("orig", "fixed", "wasm-opt", "typed"):
        if key not in paths:
            continue
        cells = [labels[key], "%.1f" % (os.path.getsize(paths[key]) / 1e3)]
        for case in ("mixed-match", "mixed-mismatch"):
            k = (key, case)
            if k in med:
                cells += [fmt(med[k], ".4f"), "%.1f" % (med[k] / n * 1e9)]
            else:
                cells += [single[k]["outcome"][:40], "-"]
        rows.append(cells)
    print(table(["module", "KB", "match s", "ns/iter", "mismatch s", "ns/iter"], rows))
    print(table(["ratio", "median/median", "min/min", "per-round"],
                [[k, fmt(v, ".3f"), fmt(mn, ".3f"), " ".join("%.3f" % x for x in pr)] for k, (v, pr, mn) in ratios.items()]))
    print("(typed_mismatch/typed_match: what a correctly typed build pays for the mismatch loop, whose targets are other\n"
          " functions reached through one more call; fixed_mismatch/typed_mismatch: wasmfix's adapters vs those wrappers)")
    print("original mixed-mismatch: %s" % orig_trap)
    print("fixed mixed-match stdout == original's: %s   fixed mixed-mismatch stdout == fpcast-typed.O2.wasm's: %s"
          % ("yes" if match_out_ok else "NO", "yes" if mismatch_out_ok else "NO"))
    print("  fixed: %r\n  typed: %r" % (single[FX]["stdout"], single[TX]["stdout"]))
    if wo:
        print("  wasm-opt: %r %r (%s)" % (single[WM]["stdout"], single[WX]["stdout"],
                                         "same as typed" if same(WX, TX) and same(WM, OM) else "DIFFERENT"))
        print("wasm-opt --fpcast-emu attempts: " + "; ".join("%s: %s" % (" ".join(a["flags"]), "ok" if a["ok"] else a["error"])
                                                            for a in wo_attempts))

    checks.add("mixed_match_ratio", "mixed-match: fixed / original", ratios["fixed_match/orig_match"][0],
               lambda v: "%.3fx" % v)
    checks.add("mixed_mismatch_ratio", "mixed-mismatch fixed / mixed-match fixed",
               ratios["fixed_mismatch/fixed_match"][0], lambda v: "%.3fx" % v)
    checks.add("mixed_orig_mismatch_traps", "mixed-mismatch original traps (type mismatch)", orig_traps, yes_no)
    checks.add("mixed_match_output", "mixed-match fixed stdout == original", match_out_ok, yes_no)
    checks.add("mixed_mismatch_output", "mixed-mismatch fixed stdout == typed build", mismatch_out_ok, yes_no)
    return {"fixture": orig_path, "typed": typed_path, "n": n, "calibration": calib, "runs": ctx.args.fpcast_runs,
            "wasmtime_py": wt_version, "load": load,
            "wasmfix_rewrite": wf.to_json(os.path.getsize(orig_path)),
            "wasm_opt": {"flags": wo_flags, "attempts": wo_attempts,
                         "rewrite": wo.to_json(os.path.getsize(orig_path)) if wo else None},
            "sizes": {k: os.path.getsize(p) for k, p in paths.items()},
            "times_s": {"%s %s" % k: v for k, v in times.items()},
            "median_s": {"%s %s" % k: v for k, v in med.items()},
            "min_s": {"%s %s" % k: v for k, v in fastest.items()},
            "ratios": {k: {"median": v, "per_round": pr, "min": mn} for k, (v, pr, mn) in ratios.items()},
            "outcomes": {"%s %s" % k: v for k, v in single.items()},
            "orig_mismatch_traps": orig_traps, "match_output_ok": match_out_ok, "mismatch_output_ok": mismatch_out_ok}


def run(ctx):
    checks = Checks(ctx, "fpcast", THRESHOLDS)
    fig = {"thresholds": checks.to_json()}
    fig["ruby"] = fpcast_ruby(ctx, checks)
    fig["mixed"] = fpcast_mixed(ctx, checks)
    checks.print("fpcast: acceptance thresholds (issue 4)")
    return fig
