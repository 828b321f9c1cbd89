"""ruby-debug: default pipeline with vs without DWARF handling (time, peak); llvm-dwarfdump --verify before/after.

Issue 8, on ruby-debug (18 MB of DWARF): the default pipeline with DWARF handling (the default) next
to the same run with the hidden --no-dwarf-update (DWARF copied unchanged), --repeat runs each,
interleaved: wall s, peak RSS, ratio of medians and min/min. Then llvm-dwarfdump-19 --verify on the
input and on the output (skipped when not installed): error counts, and whether the errors are the
same ones (kind and DIE offsets; .debug_info keeps its layout), and wasmfix's --report
(debug_info.dwarf must be "updated").
"""
import collections
import json
import os
import re
import shutil
import subprocess

from benchlib.context import MB, Measure, ToolError, last_error_line, log, warm
from benchlib.rounds import interleave
from benchlib.tables import Checks, fmt, table, yes_no

NAME = "dwarf"
DEFAULT = True
TOOLS = True

THRESHOLDS = {
    "time_ratio": ("<=", 3.0),            # default pipeline on ruby-debug, with / without DWARF handling (medians)
    "dwarf_updated": ("==", True),        # --report says debug_info.dwarf == "updated"
    "verify_same_errors": ("==", True),   # llvm-dwarfdump-19 --verify: the output's errors are the input's
}
DWARF_MODULE = "ruby-debug"
DWARFDUMP = "llvm-dwarfdump-19"


def dwarf_verify_errors(path):
    """llvm-dwarfdump-19 --verify on path: a Counter of (error line with numbers blanked, offsets of the DIEs
    it shows), or None when the tool is missing. .debug_info keeps its layout, so DIE offsets compare."""
    exe = shutil.which(DWARFDUMP)
    if not exe:
        return None
    p = subprocess.run([exe, "--verify", path], capture_output=True, text=True)
    lines = p.stdout.splitlines()
    errors = collections.Counter()
    for i, line in enumerate(lines):
        if not line.startswith("error:"):
            continue
        dies = []
        for nxt in lines[i + 1:i + 40]:
            if nxt.startswith("error:") or len(dies) == 2:
                break
            m = re.match(r"\s*(0x[0-9a-f]+): DW_TAG", nxt)
            if m:
                dies.append(m.group(1))
        errors[(re.sub(r"0x[0-9a-f]+", "X", line), tuple(dies))] += 1
    return errors


def run(ctx):
    wasmfix, repeat = ctx.wasmfix(), ctx.args.repeat
    mod = ctx.module(DWARF_MODULE)
    src, size = mod["path"], mod["bytes"]
    warm(src)
    out_with, out_without = ctx.out_path("dwarf.with.wasm"), ctx.out_path("dwarf.without.wasm")
    report_path = ctx.out_path("dwarf.report.json")
    runs = {"with": Measure([wasmfix, src, "-o", out_with, "-q", "--report", report_path]),
            "without": Measure([wasmfix, src, "-o", out_without, "-q", "--no-dwarf-update"])}
    timing = interleave(ctx, "dwarf timing", list(runs), repeat, lambda k, r: ctx.measure(runs[k].cmd, runs[k]).times[-1],
                        label="dwarf: %s" % DWARF_MODULE)
    load = timing.load
    for k, m in runs.items():
        if not m.ok:
            raise ToolError("wasmfix (%s DWARF handling) failed on %s: %s" % (k, DWARF_MODULE, last_error_line(m.err)))
    with open(report_path) as f:
        debug = json.load(f).get("debug_info", {})
    w, wo = runs["with"], runs["without"]
    ratio, min_ratio = timing.ratio("with", "without"), timing.min_ratio("with", "without")

    log("dwarf: %s --verify on the input and the output" % DWARFDUMP)
    before, after = dwarf_verify_errors(src), dwarf_verify_errors(out_with)
    same = None if before is None else before == after
    count = lambda c: None if c is None else sum(c.values())
    dwarf_bytes = None
    try:
        r = subprocess.run([wasmfix, "inspect", "--json", src], capture_output=True, text=True)
        dwarf_bytes = sum(n for _, n in json.loads(r.stdout)["debug_info"]["dwarf_sections"])
    except (OSError, ValueError, KeyError):
        pass
    if not ctx.args.keep:
        for path in (out_with, out_without, report_path):
            if os.path.exists(path):
                os.unlink(path)

    print("\n== dwarf: %s (%.1f MB, %s MB of DWARF), default pipeline, median of %d interleaved runs ==" % (
        DWARF_MODULE, size / MB, fmt(dwarf_bytes and dwarf_bytes / MB, ".1f"), repeat))
    print(table(["run", "median s", "min s", "peak MB", "runs s"], [
        ["with DWARF handling (default)", fmt(w.time_s, ".3f"), fmt(min(w.times), ".3f"), fmt(w.peak_mb, ".1f"),
         " ".join("%.3f" % t for t in w.times)],
        ["without (--no-dwarf-update)", fmt(wo.time_s, ".3f"), fmt(min(wo.times), ".3f"), fmt(wo.peak_mb, ".1f"),
         " ".join("%.3f" % t for t in wo.times)]]))
    print("ratio with / without: %s (min/min %s)" % (fmt(ratio, ".2f"), fmt(min_ratio, ".2f")))
    update = debug.get("update") or {}
    print("report: dwarf %s, %s units, %s addresses, %s line programs rewritten" % (
        debug.get("dwarf"), update.get("units"), update.get("addresses"), update.get("line_programs")))
    if before is None:
        print("%s not installed: --verify skipped" % DWARFDUMP)
    else:
        print("%s --verify errors: input %d, output %d, same errors (kind and DIEs): %s" % (
            DWARFDUMP, count(before), count(after), "yes" if same else "NO"))

    checks = Checks(ctx, "dwarf", THRESHOLDS)
    checks.add("time_ratio", "time with / without DWARF handling", ratio, lambda v: "%.2fx" % v)
    checks.add("dwarf_updated", "report: DWARF updated", debug.get("dwarf") == "updated", yes_no)
    checks.add("verify_same_errors", "--verify: same errors as the input", same, yes_no)
    checks.print("dwarf: acceptance thresholds (issue 8)")
    return {"module": DWARF_MODULE, "input_bytes": size, "dwarf_bytes": dwarf_bytes, "load": load,
            "with": w.to_json(size), "without": wo.to_json(size), "ratio": ratio, "min_ratio": min_ratio,
            "report": debug, "verify_errors": {"input": count(before), "output": count(after), "same": same},
            "thresholds": checks.to_json()}


