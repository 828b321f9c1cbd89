"""wasmfix stack-guard vs wasm-opt --stack-check: ruby.wasm rewrite/size/workload, stack.O2 calls loop.

Issue 5, in one run:
ruby.wasm  stack-first, so the guard is forced: wasmfix --passes stack-guard. binaryen finds the stack
           pointer only by name and ruby.wasm is stripped: wasm-opt --stack-check --detect-features runs
           on a copy whose name section calls global 0 `__stack_pointer` (and once on the stripped
           original, to show what it does there). Rewrite time (median of --repeat), size growth,
           checks inserted (counted in the code section; binaryen checks every stack-pointer write, so
           its count is the number of writes), and the run_ruby.py workload as in fpcast (original
           first, --ruby-rounds rounds, default 5, of --ruby-n instances). run_ruby.py calls the
           exported __set_stack_limits(16 MiB, 1024) that binaryen's instrumentation needs before
           anything runs.
calls      tests/fixtures/wasm/stack.O2.wasm `prog calls N` (stack after data): original vs wasmfix
           --passes stack (its report must say it guarded) vs wasm-opt --stack-check, under the python
           `wasmtime` package as in fpcast: compiled once, fresh instance per run, only `_start` timed,
           --stack-runs interleaved rounds, N: --stack-n, else calibrated so the original takes ~0.4 s.
           The fixture never calls __set_stack_limits: binaryen's limits stay 0, 0 and its module traps
           at the first stack-pointer write (shown); the timed runs call __set_stack_limits(high, low)
           with wasmfix's stack region first.
Size growth is checked on the larger of the whole-file figure and the figure without custom sections
(the fixture is ~75% DWARF, which wasm-opt drops without -g); "vs own no-op" compares wasm-opt's output
with its own no-pass round trip (wasmfix --passes none is the identity).
"""
import json
import os
import re

from benchlib.context import FIXTURES, MB, REPO, Measure, ToolError, last_error_line, log, warm
from benchlib.engine import calibrate, load_wasmtime, time_start
from benchlib.rounds import interleave
from benchlib.ruby import print_ruby_variants, run_ruby_variants
from benchlib.tables import Checks, fmt, table, yes_no
from benchlib.wasmbin import add_global_name, code_body_sizes, code_section, growth_pct, leb_u, wasm_summary

NAME = "stack"
DEFAULT = True
TOOLS = True

# (what, op, limit). Size growth is the larger of the whole-file figure and the figure without custom
# sections (tests/fixtures' builds are ~75% DWARF, which would dilute the whole-file one).
THRESHOLDS = {
    "ruby_eval_ratio": ("<=", 1.02),         # ruby workload eval time, --passes stack-guard / original (binaryen 1.04x)
    "ruby_size_growth_pct": ("<=", 1.0),     # wasmfix output size vs original, %
    "ruby_output_identical": ("==", True),   # workload output and rb_state equal the original's
    "calls_guarded": ("==", True),           # --passes stack on stack.O2.wasm reports a guard (not a relocation)
    "calls_ratio": ("<=", 1.03),             # fixed `calls N` _start time / original
    "calls_size_growth_pct": ("<=", 1.0),    # wasmfix output size vs original, %
    "calls_output_identical": ("==", True),  # fixed stdout == original's
}
STACK_FIXTURE = "stack.O2.wasm"

LEB_RE = rb"[\x80-\xff]{0,4}[\x00-\x7f]"


def count_binaryen_checks(path, base, limit):
    """binaryen --stack-check's checks in path's code, inserted before each `global.set $sp`
    (src/passes/StackCheck.cpp): `local.tee n; global.get base; i32.gt_u; local.get n; global.get limit;
    i32.lt_u; i32.or; if; unreachable; end; local.get n`. Returns (count, bytes of those sequences)."""
    pat = (rb"\x22" + LEB_RE + re.escape(b"\x23" + leb_u(base)) + rb"\x4b\x20" + LEB_RE
           + re.escape(b"\x23" + leb_u(limit)) + rb"\x49\x72\x04\x40\x00\x0b\x20" + LEB_RE)
    found = re.findall(pat, code_section(path))
    return len(found), sum(len(x) for x in found)


def count_wasmfix_checks(path, sp, size_global):
    """wasmfix stack-guard's checks in path's code (passes/stack_guard.rs), each right after a checked
    `global.set $sp`: `global.get sp; (i32.const low; i32.lt_u | [i32.const low; i32.sub;] global.get size;
    i32.gt_u)`, then `br_if $trap` to the function's trap block or `if <trap code> end`. A trap block adds
    `block; block (result)` at the body's start and `end; return; end; <trap code>` at its end; trap code is
    `i32.const f; <frame>; (i32.const off; i32.const len; call handler | call handler_unnamed); unreachable`.
    Returns (checks, bytes of the checks, trap blocks and trap code)."""
    leb, sp_b, size_b = LEB_RE, re.escape(leb_u(sp)), re.escape(leb_u(size_global))
    frame = rb"(?:\x20" + leb + rb"(?:\x41" + leb + rb"\x6a)?\x23" + sp_b + rb"\x6b|\x41" + leb + rb")"
    trap = (rb"\x41" + leb + frame + rb"(?:\x41" + leb + rb"\x41" + leb + rb"\x10" + leb + rb"|\x10" + leb
            + rb")\x00")
    test = (rb"\x23" + sp_b + rb"(?:\x41" + leb + rb"\x49|(?:\x41" + leb + rb"\x6b)?\x23" + size_b + rb"\x4b)")
    code = code_section(path)
    sites = re.findall(rb"\x24" + sp_b + rb"(" + test + rb"(?:\x0d" + leb + rb"|\x04\x40" + trap + rb"\x0b))", code)
    tails = re.findall(rb"\x0b\x0f\x0b" + trap, code)
    return len(sites), sum(len(x) for x in sites) + sum(len(x) + 4 for x in tails)



def added_bytes_estimate(orig, out, path, check_bytes):
    """Bytes a pass added, counted from what it inserted rather than from the size difference (which also
    holds what re-encoding the rewritten functions saved or cost, e.g. clang's 5-byte padded LEBs made
    canonical): the check sequences + the bodies of the added functions + the growth of every
    non-code, non-custom section. Leaves out the extra local declared per rewritten function."""
    new_funcs = out["funcs"] - orig["funcs"]
    bodies = sum(code_body_sizes(path)[-new_funcs:]) if new_funcs > 0 else 0
    other = (out["no_custom_bytes"] - out["code_bytes"]) - (orig["no_custom_bytes"] - orig["code_bytes"])
    return {"check_bytes": check_bytes, "added_function_bytes": bodies, "other_sections_bytes": other,
            "total_bytes": check_bytes + bodies + other,
            "pct": round(100.0 * (check_bytes + bodies + other) / orig["no_custom_bytes"], 3)}




def stack_size_figures(orig, out, noop=None):
    """Size growth of out vs orig: whole file, without custom sections, and (for wasm-opt) without custom
    sections vs the same tool's no-pass round trip `noop` (isolates the checks from the re-encoding)."""
    f = {"bytes": out["bytes"], "no_custom_bytes": out["no_custom_bytes"], "code_bytes": out["code_bytes"],
         "growth_pct": growth_pct(out["bytes"], orig["bytes"]),
         "no_custom_growth_pct": growth_pct(out["no_custom_bytes"], orig["no_custom_bytes"]),
         "code_growth_pct": growth_pct(out["code_bytes"], orig["code_bytes"]),
         "added_funcs": out["funcs"] - orig["funcs"], "added_globals": out["globals"] - orig["globals"],
         "added_exports": sorted(set(out["exports"]) - set(orig["exports"]))}
    f["checked_growth_pct"] = max(f["growth_pct"], f["no_custom_growth_pct"])
    if noop is not None:
        f["vs_noop_no_custom_growth_pct"] = growth_pct(out["no_custom_bytes"], noop["no_custom_bytes"])
    return f


def stack_wasm_opt_facts(orig, path, noop=None):
    """Did wasm-opt --stack-check instrument anything? Its pass adds two globals (__stack_base,
    __stack_limit, last in the index space) and the exported __set_stack_limits, and only when it found a
    stack pointer; then it checks every global.set of it. `noop`: the summary of wasm-opt's no-pass round
    trip of the same input, the baseline of the added-bytes estimate (same encoding)."""
    s = wasm_summary(path)
    exported = "__set_stack_limits" in s["exports"]
    nglob = s["imported"]["global"] + s["globals"]
    checks, check_bytes = count_binaryen_checks(path, nglob - 2, nglob - 1) if exported and s["globals"] >= 2 else (0, 0)
    return s, {"set_stack_limits_exported": exported, "added_globals": s["globals"] - orig["globals"],
               "added_funcs": s["funcs"] - orig["funcs"], "checks": checks, "check_bytes": check_bytes,
               "inserted": bool(exported and checks),
               "estimate": added_bytes_estimate(noop, s, path, check_bytes) if noop else None}


def stack_wasmfix_facts(orig, path, report):
    """wasmfix's report for the stack pass, and the checks counted in its output (the guard compares with
    an immutable i32 global it adds, holding `high - low` of the region in the report)."""
    s = wasm_summary(path)
    passes = [p for p in report.get("passes", []) if p.get("pass") in ("stack", "stack-guard")]
    p = passes[0] if passes else {}
    d = p.get("details", {})
    checks = check_bytes = 0
    if d.get("guarded_functions") and d.get("stack"):
        size = d["stack"][1] - d["stack"][0]
        size = size - (1 << 32) if size >= 1 << 31 else size
        added = [k for k, (vt, mutable, v) in enumerate(s.get("global_defs", []))
                 if k >= orig["globals"] and vt == 0x7F and not mutable and v == size]
        if added:
            checks, check_bytes = count_wasmfix_checks(path, d["stack_pointer"],
                                                       s["imported"]["global"] + added[-1])
    return s, {"summary": p.get("summary"), "details": d, "checks": checks, "check_bytes": check_bytes,
               "estimate": added_bytes_estimate(orig, s, path, check_bytes),
               "guarded": bool(d.get("guarded_functions")) and "moved" not in d,
               "rewritten_functions": report.get("rewritten_functions")}


def stack_size_row(label, f, facts):
    if f is None:
        return [label] + ["-"] * 10
    est = (facts or {}).get("estimate")
    return [label, "%d" % f["bytes"], "%+.3f%%" % f["growth_pct"], "%d" % f["no_custom_bytes"],
            "%+.3f%%" % f["no_custom_growth_pct"],
            "%+.3f%%" % f["vs_noop_no_custom_growth_pct"] if f.get("vs_noop_no_custom_growth_pct") is not None else "-",
            "%+d fn %+d gl" % (f["added_funcs"], f["added_globals"]),
            "-" if not facts else "%d" % facts["checks"], "-" if not facts else "%d" % facts["check_bytes"],
            "-" if not est else "%d" % est["total_bytes"], "-" if not est else "%+.3f%%" % est["pct"]]


STACK_SIZE_HEADERS = ["variant", "bytes", "growth", "w/o custom", "growth", "vs own no-op", "added", "checks",
                      "check B", "added B", "added %"]
STACK_SIZE_NOTE = ("(w/o custom: without custom sections. vs own no-op: w/o custom vs the same tool's no-pass output; "
                   "wasmfix --passes none is\n byte-identical to its input. checks / check B: check sequences counted in "
                   "the code section and their bytes. added B / %:\n what the pass inserted (checks + added functions + "
                   "growth of the other non-custom sections), vs the original w/o custom\n (wasm-opt: vs its round "
                   "trip), i.e. the growth without what re-encoding the rewritten functions saved or cost)")


def stack_ruby(ctx, checks):
    """ruby.wasm: --passes stack-guard (forced: ruby is stack-first) vs wasm-opt --stack-check on a copy
    whose name section calls global 0 __stack_pointer. Rewrite time, size, workload eval-time ratio."""
    wasmfix, wasm_opt = ctx.wasmfix(), ctx.wasm_opt()
    ruby = ctx.module("ruby")
    src, size = ruby["path"], ruby["bytes"]
    repeat = ctx.args.repeat
    warm(src)
    orig = wasm_summary(src)
    named = ctx.out_path("ruby.sp-named.wasm")
    out_wf, rep_wf = ctx.out_path("ruby.stack-guard-wasmfix.wasm"), ctx.out_path("ruby.stack-guard.report.json")
    out_wo, out_rt = ctx.out_path("ruby.stack-check-wasm-opt.wasm"), ctx.out_path("ruby.sp-named.roundtrip.wasm")
    out_stripped = ctx.out_path("ruby.stack-check-stripped.wasm")
    loads = []

    # binaryen finds the stack pointer by its name; ruby.wasm is stripped. Global 0 is ruby's stack pointer
    # (initial value 16 MiB, run_ruby.py's SP_BASE; checked against wasmfix's report below).
    added_name_bytes = add_global_name(src, named, 0, "__stack_pointer")
    wo_flags = ["--stack-check", "--detect-features"]

    # wasm-opt first (binaryen.js under node: slow, loads the machine); wasmfix timings after it settles.
    wo = Measure([wasm_opt, named, "-o", out_wo] + wo_flags)

    def run_wo(_key, _round):
        if wo.rcs and not wo.ok:  # failed once: no point in more rounds
            return []
        ctx.measure(wo.cmd, wo)
        if not wo.ok:
            log("stack: ruby wasm-opt --stack-check failed: %s" % last_error_line(wo.err))
        return wo.times[-1]

    interleave(ctx, None, ["wasm-opt --stack-check"], repeat, run_wo, label="stack: ruby")
    log("stack: ruby wasm-opt round trip of the named copy (size reference)")
    rt = ctx.measure([wasm_opt, named, "-o", out_rt, "--detect-features"])
    log("stack: ruby wasm-opt --stack-check on the stripped original (as shipped)")
    st = ctx.measure([wasm_opt, src, "-o", out_stripped] + wo_flags)
    rt_sum = wasm_summary(out_rt) if rt.ok else None
    wo_sum, wo_facts = stack_wasm_opt_facts(orig, out_wo, rt_sum) if wo.ok else (None, None)
    st_facts = stack_wasm_opt_facts(orig, out_stripped)[1] if st.ok else None
    if wo.ok:
        wo.out_bytes = wo_sum["bytes"]

    wf = Measure([wasmfix, src, "-o", out_wf, "--passes", "stack-guard", "--report", rep_wf])
    rewrite = interleave(ctx, "ruby rewrite timing", ["wasmfix --passes stack-guard"], repeat,
                         lambda k, r: ctx.measure(wf.cmd, wf).times[-1], label="stack: ruby")
    loads.append(rewrite.load)
    if not wf.ok:
        raise ToolError("wasmfix --passes stack-guard failed on ruby.wasm (exit %s): %s" % (wf.rcs, wf.err[-600:]))
    with open(rep_wf) as f:
        wf_sum, wf_facts = stack_wasmfix_facts(orig, out_wf, json.load(f))
    wf.out_bytes = wf_sum["bytes"]
    sp_reported = wf_facts["details"].get("stack_pointer")
    if sp_reported != 0:
        log("stack: WARNING: wasmfix says the stack pointer is global %s, the name section added for wasm-opt "
            "names global 0" % sp_reported)

    # run_ruby.py calls the module's __set_stack_limits(SP_BASE, SP_LIMIT) before _initialize when it is
    # exported, as binaryen's instrumentation needs; without it every stack-pointer write would trap.
    script = os.path.join(ctx.shared, "corpus", "run_ruby.py")
    with open(script) as f:
        runner_sets_limits = "__set_stack_limits" in f.read()
    variants = [("ruby-orig", src), ("stack-wasmfix", out_wf)]
    wo_run_error = None
    if wo.ok:
        try:  # one untimed instance first: a failure here leaves the wasmfix figures standing
            run_ruby_variants(ctx, [("stack-wasm-opt", out_wo)], n=1, rounds=1)
            variants.append(("stack-wasm-opt", out_wo))
        except ToolError as e:
            wo_run_error = str(e)[-400:]
            log("stack: the wasm-opt --stack-check ruby does not run: " + wo_run_error)
    work = run_ruby_variants(ctx, variants, rounds=ctx.args.ruby_rounds or 5, what="ruby workload")
    loads.append(work["load"])
    print_ruby_variants("stack: ruby.wasm workload", work)

    vres = work["variants"]
    base = vres["ruby-orig"]

    def workload(label):
        v = vres.get(label)
        if not v:
            return {}
        return {"eval_ratio": v["ratio"], "eval_min_ratio": v["min_ratio"],
                "init_ratio": round(v["init_s"] / base["init_s"], 4), "output_ok": v["output_ok"]}

    fig = {"input": src, "input_bytes": size, "loads": loads, "workload": work, "named_copy_added_bytes": added_name_bytes,
           "runner_sets_stack_limits": runner_sets_limits,
           "wasmfix": dict(wf.to_json(size), size=stack_size_figures(orig, wf_sum), facts=wf_facts,
                           **workload("stack-wasmfix")),
           "wasm_opt": dict(wo.to_json(size), flags=wo_flags, input="copy of ruby.wasm + name section (global 0 = "
                            "__stack_pointer)", size=stack_size_figures(orig, wo_sum, rt_sum) if wo.ok else None,
                            facts=wo_facts, run_error=wo_run_error, **workload("stack-wasm-opt")),
           "wasm_opt_roundtrip": dict(rt.to_json(size), size=stack_size_figures(orig, rt_sum, rt_sum) if rt.ok else None),
           "wasm_opt_stripped": dict(st.to_json(size), facts=st_facts)}

    print("\n== stack: ruby.wasm %.1f MB, --passes stack-guard vs wasm-opt %s (rewrite = median of %d runs; "
          "ratios = median eval or init / original's) ==" % (size / MB, " ".join(wo_flags), repeat))
    rows = []
    for label, m, f in (("wasmfix --passes stack-guard", wf, fig["wasmfix"]),
                        ("wasm-opt --stack-check (named copy)", wo, fig["wasm_opt"])):
        if not m.ok:
            rows.append([label, "FAILED: " + last_error_line(m.err)[:60]] + ["-"] * 7)
            continue
        rows.append([label, fmt(m.time_s, ".3f"), " ".join("%.3f" % t for t in m.times), fmt(m.peak_mb, ".0f"),
                     "%+.3f%%" % f["size"]["growth_pct"], fmt(f.get("eval_ratio"), ".3f"), fmt(f.get("eval_min_ratio"), ".3f"),
                     fmt(f.get("init_ratio"), ".3f"),
                     {True: "yes", False: "NO", None: "-"}[f.get("output_ok")]])
    print(table(["variant", "rewrite s", "runs s", "peak MB", "size", "eval ratio", "min/min", "init ratio",
                 "output identical"], rows))
    print(table(STACK_SIZE_HEADERS, [
        ["original", "%d" % size, "", "%d" % orig["no_custom_bytes"]] + [""] * 7,
        stack_size_row("wasmfix --passes stack-guard", fig["wasmfix"]["size"], wf_facts),
        stack_size_row("wasm-opt --stack-check", fig["wasm_opt"]["size"], wo_facts),
        stack_size_row("wasm-opt round trip (no pass)", fig["wasm_opt_roundtrip"]["size"], None)]))
    print(STACK_SIZE_NOTE)
    print("wasmfix: %s" % wf_facts["summary"])
    print("  stack pointer global %s (%s); rewritten functions %s; checks %d" % (
        sp_reported, wf_facts["details"].get("stack_pointer_found_by"), wf_facts["rewritten_functions"], wf_facts["checks"]))
    if wo_facts and wo_facts["checks"]:
        print("  binaryen checks every stack-pointer write: %d writes, wasmfix checks %d (%.1f%%), leaves %d entry-"
              "pointer restores unchecked" % (wo_facts["checks"], wf_facts["checks"],
                                              100.0 * wf_facts["checks"] / wo_facts["checks"],
                                              wo_facts["checks"] - wf_facts["checks"]))
    print("wasm-opt input: ruby.wasm + a name section naming global 0 `__stack_pointer` (+%d bytes)" % added_name_bytes)
    if wo_facts:
        print("  --stack-check on it: %s (+%d globals, +%d functions, __set_stack_limits %s, %d checks)" % (
            "inserted checks" if wo_facts["inserted"] else "INSERTED NOTHING", wo_facts["added_globals"],
            wo_facts["added_funcs"], "exported" if wo_facts["set_stack_limits_exported"] else "absent", wo_facts["checks"]))
    if st_facts:
        print("  --stack-check on the stripped original: %s (+%d globals, __set_stack_limits %s, %d checks)" % (
            "inserted checks" if st_facts["inserted"] else "inserted nothing", st_facts["added_globals"],
            "exported" if st_facts["set_stack_limits_exported"] else "absent", st_facts["checks"]))
    elif not st.ok:
        print("  --stack-check on the stripped original failed: %s" % last_error_line(st.err))
    print("  run_ruby.py %s __set_stack_limits(16777216, 1024) before _initialize when the module exports it%s" % (
        "calls" if runner_sets_limits else "does NOT call",
        "" if not wo_run_error else "; the instrumented module FAILED to run: " + wo_run_error))

    checks.add("ruby_eval_ratio", "ruby stack-guard eval time / original", fig["wasmfix"].get("eval_ratio"),
               lambda v: "%.3fx" % v)
    checks.add("ruby_size_growth_pct", "ruby stack-guard size growth %",
               fig["wasmfix"]["size"]["checked_growth_pct"], lambda v: "%+.3f%%" % v)
    checks.add("ruby_output_identical", "ruby stack-guard workload output identical",
               fig["wasmfix"].get("output_ok"), yes_no)
    return fig


def stack_calls(ctx, checks):
    """tests/fixtures/wasm/stack.O2.wasm `calls N`: original vs --passes stack vs wasm-opt --stack-check,
    _start timed under python wasmtime."""
    wasmtime, wt_version = load_wasmtime("stack")
    orig_path = os.path.join(FIXTURES, STACK_FIXTURE)
    if not os.path.exists(orig_path):
        raise ToolError("fixture missing: %s" % orig_path)
    orig = wasm_summary(orig_path)
    fixed_path, rep_path = ctx.out_path("stack.O2.fixed.wasm"), ctx.out_path("stack.O2.report.json")
    wo_path, rt_path = ctx.out_path("stack.O2.stack-check.wasm"), ctx.out_path("stack.O2.roundtrip.wasm")
    repeat = ctx.args.repeat
    wf = Measure([ctx.wasmfix(), orig_path, "-o", fixed_path, "--passes", "stack", "--report", rep_path])
    interleave(ctx, None, ["wasmfix --passes stack"], repeat, lambda k, r: ctx.measure(wf.cmd, wf).times[-1],
               label="stack: %s" % STACK_FIXTURE)
    if not wf.ok:
        raise ToolError("wasmfix --passes stack failed on %s: %s" % (orig_path, wf.err[-600:]))
    with open(rep_path) as f:
        wf_sum, wf_facts = stack_wasmfix_facts(orig, fixed_path, json.load(f))
    wo_flags = ["--stack-check", "--detect-features"]
    log("stack: %s: wasm-opt %s" % (STACK_FIXTURE, " ".join(wo_flags)))
    wo = ctx.measure([ctx.wasm_opt(), orig_path, "-o", wo_path] + wo_flags)
    rt = ctx.measure([ctx.wasm_opt(), orig_path, "-o", rt_path, "--detect-features"])
    rt_sum = wasm_summary(rt_path) if rt.ok else None
    wo_sum, wo_facts = stack_wasm_opt_facts(orig, wo_path, rt_sum) if wo.ok else (None, None)
    region = wf_facts["details"].get("stack")  # [low, high): wasmfix's limits, given to binaryen's too
    use_wo = wo.ok and wo_facts["set_stack_limits_exported"] and region

    engine = wasmtime.Engine(wasmtime.Config())
    paths = {"orig": orig_path, "fixed": fixed_path}
    if use_wo:
        paths["wasm-opt"] = wo_path
    mods = {k: wasmtime.Module.from_file(engine, p) for k, p in paths.items()}
    outf = ctx.out_path("stack-calls.stdout")

    def run(key, n, limits=True):
        """Fresh instance of mods[key] running `prog calls n`; for wasm-opt's module, limits=True first calls
        __set_stack_limits(high, low) as binaryen's host must. Times only _start: (s, stdout, outcome)."""
        def set_limits(store, exports):
            if key == "wasm-opt" and limits:
                exports["__set_stack_limits"](store, region[1], region[0])
        return time_start(engine, mods[key], ["prog", "calls", str(n)], outf, set_limits)

    # What binaryen's module does when nobody calls __set_stack_limits: base = limit = 0.
    default_limits = run("wasm-opt", 1000, limits=False)[1:] if use_wo else None

    n = ctx.args.stack_n
    calib = None
    if not n:
        n, calib = calibrate(lambda k: run("orig", k)[0], 2_000_000, 4_000_000_000, "stack: calls")

    order = list(paths)
    single = {k: run(k, n)[1:] for k in order}  # untimed: outputs and outcomes
    out_ok = {k: single[k][1] == "ok" and single[k] == single["orig"] for k in order}

    bad = []

    def timed(k, r):
        t, out, outcome = run(k, n)
        if (out, outcome) != single[k]:
            bad.append("%s round %d: %s %r" % (k, r + 1, outcome, out))
        return round(t, 5)

    res = interleave(ctx, "calls loop timing", order, ctx.args.stack_runs, timed, label="stack: calls N=%d" % n)
    load = res.load
    if bad:
        raise ToolError("stack calls loop: a timed run did not repeat its output: " + "; ".join(bad[:3]))
    times = {k: res.samples(k) for k in order}
    med = {k: res.median(k) for k in order}
    fastest = {k: res.min(k) for k in order}
    ratios = {}
    for k in order[1:]:
        ratios["%s/orig" % k] = {"median": round(res.ratio(k, "orig"), 4), "min": round(res.min_ratio(k, "orig"), 4),
                                 "per_round": [round(x, 3) for x in res.round_ratios(k, "orig")]}

    fig = {"fixture": orig_path, "n": n, "calibration": calib, "runs": ctx.args.stack_runs, "wasmtime_py": wt_version,
           "load": load, "region": region,
           "wasmfix": dict(wf.to_json(orig["bytes"]), size=stack_size_figures(orig, wf_sum), facts=wf_facts),
           "wasm_opt": dict(wo.to_json(orig["bytes"]), flags=wo_flags,
                            size=stack_size_figures(orig, wo_sum, rt_sum) if wo.ok and rt.ok else None, facts=wo_facts,
                            default_limits={"stdout": default_limits[0], "outcome": default_limits[1]} if default_limits else None,
                            limits_set=[region[1], region[0]] if use_wo else None),
           "wasm_opt_roundtrip": dict(rt.to_json(orig["bytes"]), size=stack_size_figures(orig, rt_sum, rt_sum) if rt.ok else None),
           "times_s": times, "median_s": med, "min_s": fastest, "ratios": ratios,
           "outcomes": {k: {"stdout": v[0], "outcome": v[1]} for k, v in single.items()}, "output_ok": out_ok}

    print("\n== stack: %s `calls N`, N=%d (python wasmtime %s; only _start timed; median of %d interleaved runs, "
          "fresh instance each) ==" % (os.path.relpath(orig_path, REPO), n, wt_version, ctx.args.stack_runs))
    labels = {"orig": "original", "fixed": "wasmfix --passes stack",
              "wasm-opt": "wasm-opt --stack-check, limits set by host"}
    rows = []
    for k in order:
        r = ratios.get("%s/orig" % k, {})
        rows.append([labels[k], fmt(med[k], ".4f"), fmt(fastest[k], ".4f"), "%.2f" % (med[k] / n * 1e9),
                     fmt(r.get("median"), ".3f"), fmt(r.get("min"), ".3f"), " ".join("%.3f" % x for x in r.get("per_round", [])),
                     "yes" if out_ok[k] else "NO"])
    print(table(["module", "median s", "min s", "ns/iter", "ratio", "min/min", "per-round", "stdout identical"], rows))
    print(table(STACK_SIZE_HEADERS, [
        ["original", "%d" % orig["bytes"], "", "%d" % orig["no_custom_bytes"]] + [""] * 7,
        stack_size_row("wasmfix --passes stack", fig["wasmfix"]["size"], wf_facts),
        stack_size_row("wasm-opt --stack-check", fig["wasm_opt"]["size"], wo_facts),
        stack_size_row("wasm-opt round trip (no pass)", fig["wasm_opt_roundtrip"]["size"], None)]))
    print(STACK_SIZE_NOTE)
    print("(the fixture is ~80% custom sections (DWARF, names): its whole-file growth is diluted; clang 14 pads "
          "LEBs to 5 bytes,\n which the rewritten functions lose: the growth without that is 'added %')")
    print("stdout: %r" % single["orig"][0])
    print("wasmfix --passes stack: %s" % wf_facts["summary"])
    print("  rewrite %.3f s; guarded functions %s; checks %d" % (wf.time_s, wf_facts["details"].get("guarded_functions"),
                                                              wf_facts["checks"]))
    if wo_facts and wo_facts["checks"]:
        print("  binaryen checks every stack-pointer write: %d writes, wasmfix checks %d, leaves %d entry-pointer "
              "restores unchecked" % (wo_facts["checks"], wf_facts["checks"], wo_facts["checks"] - wf_facts["checks"]))
    if wo_facts:
        print("wasm-opt --stack-check: %s (+%d globals, +%d functions, %d checks)" % (
            "inserted checks" if wo_facts["inserted"] else "INSERTED NOTHING", wo_facts["added_globals"],
            wo_facts["added_funcs"], wo_facts["checks"]))
        if default_limits:
            print("  without a __set_stack_limits call (limits stay 0, 0): %s, stdout %r" % (default_limits[1], default_limits[0]))
        if use_wo:
            print("  timed with __set_stack_limits(%d, %d) called by this script before _start (wasmfix's region)"
                  % (region[1], region[0]))
    else:
        print("wasm-opt --stack-check failed: %s" % last_error_line(wo.err))

    checks.add("calls_guarded", "calls --passes stack guarded (report)", wf_facts["guarded"], yes_no)
    checks.add("calls_ratio", "calls: fixed / original", ratios.get("fixed/orig", {}).get("median"),
               lambda v: "%.3fx" % v)
    checks.add("calls_size_growth_pct", "calls --passes stack size growth %",
               fig["wasmfix"]["size"]["checked_growth_pct"], lambda v: "%+.3f%%" % v)
    checks.add("calls_output_identical", "calls fixed stdout == original", out_ok["fixed"], yes_no)
    return fig


def run(ctx):
    checks = Checks(ctx, "stack", THRESHOLDS)
    fig = {"thresholds": checks.to_json()}
    fig["ruby"] = stack_ruby(ctx, checks)
    fig["calls"] = stack_calls(ctx, checks)
    checks.print("stack: acceptance thresholds (issue 5; size growth = the larger of whole file and without custom "
                 "sections)")
    return fig
