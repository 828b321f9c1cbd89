#!/usr/bin/env python3
"""wasmfix benchmark: the figures the issues ask for, next to binaryen's wasm-opt, same inputs, same run.

    python3 bench/bench.py [--sections core,fpcast,stack,dwarf,...] [--list] [--modules ruby,yosys] [--repeat 3]
                           [--corpus DIR] [--no-build] [--json FILE] [--strict] [--keep DIR]
                           [--ruby-n 3] [--ruby-rounds 5] [--fpcast-n N] [--fpcast-runs 7]
                           [--stack-n N] [--stack-runs 7] [--max-load-wait 120]

Tools
  wasmfix    $WASMFIX, else target/release/wasmfix, built first with `cargo build --release`
             (skipped with --no-build, or when $WASMFIX is set).
  wasm-opt   $WASM_OPT, else node_modules/.bin/wasm-opt under the repo, else bench/.npm/node_modules/.bin/
             wasm-opt, installed on first use with `npm install --no-save --prefix bench/.npm binaryen`.
             The npm package is binaryen.js (binaryen compiled to wasm, run by node): slower than a native
             build. The header says which one ran; quote ratios with that in mind.
  corpus     `../shared/corpus/fetch.sh CACHE` (CACHE: --corpus, default ../corpus-cache) prints
             `name<TAB>path<TAB>bytes` per module; --modules picks some of them (default: all).

Timing (bench/benchlib/rounds.py, used by every section): before a timing-sensitive part, print the
load average and wait (up to --max-load-wait s) for it to drop below 1.5 or for the run queue to stay
empty for 15 s; run the variants interleaved (v0, v1, ..., v0, v1, ...) for N rounds; report medians,
ratios of medians (what the checks use), per-round ratios and min/min. Where each call of a variant
ran beside a call of the original (the pyodide section: every variant in one process, calls
alternating), Rounds.paired_ratio gives the median of the paired ratios and its 95% bootstrap
interval, and Checks.add(..., interval=) decides from the interval: PASS, FAIL, or UNDECIDED when
the limit lies inside it. Commands run under a small launcher that reports their own peak RSS
(bench/benchlib/context.py says why; its floor is printed).

Layout
  bench/bench.py           this entry point: options, header, the sections in order, the checks summary
  bench/benchlib/          what sections share: context.py (tools, corpus, ctx.measure, ctx.check),
                           rounds.py (load wait, interleave, Rounds: medians, ratios, min/min),
                           tables.py (table, Checks: thresholds with PASS/FAIL), engine.py (time a
                           fixture's _start under python wasmtime), ruby.py (the run_ruby.py workload on
                           variants), wasmbin.py (section and size counts of a module)
  bench/sections/NAME.py   one module per section, listed in bench/sections/__init__.py

Adding a section: write bench/sections/NAME.py with a docstring (first line: the summary --list
prints; the rest: what it measures, shown here by --help), NAME = "the-name", DEFAULT (run without
--sections?), TOOLS (header prints the tool versions?), THRESHOLDS = {key: (op, limit)} and
`def run(ctx) -> dict` that prints its tables and returns its figures (--json sections.NAME). Then add
the module name to MODULES in bench/sections/__init__.py: that is the one registry line. Time
variants with benchlib.rounds.interleave(ctx, "what", keys, rounds, run_one) -> Rounds (ratio,
min_ratio, round_ratios); run commands with ctx.measure(cmd) (wall s, peak RSS); compare Ruby
builds with benchlib.ruby.run_ruby_variants(ctx, [("orig", ruby), ("wasmfix", a), ("wasm-opt", b)],
what="...") (run_ruby.py interleaved, eval-time ratios to the first); record thresholds with
checks = benchlib.tables.Checks(ctx, NAME, THRESHOLDS); checks.add(key, what, value, shown); and
checks.print(title). Build runnable wasm-opt variants with --detect-features, not --all-features:
binaryen 132 with --all-features writes imports in the compact-imports encoding, which wasmtime rejects
("invalid leading byte 0x7F with compact imports proposal disabled").

Exit status: 0, or 1 with --strict when a check FAILs or is UNDECIDED, 2 when a tool or the corpus is missing/broken.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib.context import REPO, Context, ToolError, log  # noqa: E402
from benchlib.rounds import LOAD_LIMIT  # noqa: E402
from sections import SECTIONS  # noqa: E402

DEFAULT_SECTIONS = ",".join(name for name, s in SECTIONS.items() if s.DEFAULT)


def sections_help():
    """Each section's docstring, indented under its name."""
    out = ["Sections (--sections, comma-separated, default %s; --list shows one line each)" % DEFAULT_SECTIONS]
    for name, s in SECTIONS.items():
        lines = (s.__doc__ or "").strip().splitlines()
        out.append("  %-12s %s" % (name, lines[0] if lines else ""))
        out.extend(("  %-12s %s" % ("", ln)).rstrip() for ln in lines[1:])
        out.append("")
    return "\n".join(out)


def git_state():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        return {"head": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except OSError:
        return {"head": None, "dirty": None}


def main():
    doc = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=doc[0], epilog=doc[1] + "\n" + sections_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=DEFAULT_SECTIONS,
                    help="comma-separated, from: %s (default %s)" % (",".join(SECTIONS), DEFAULT_SECTIONS))
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--modules", default="", help="comma-separated corpus module names (default all)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; the median is reported (default 3)")
    ap.add_argument("--corpus", default=os.path.join(REPO, "..", "corpus-cache"), help="corpus cache dir (default ../corpus-cache)")
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared"), help="shared dir (default ../shared)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a threshold check fails")
    ap.add_argument("--keep", metavar="DIR", help="write outputs to DIR and keep them (default: a temp dir, removed)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    ap.add_argument("--ruby-n", type=int, default=3, help="fresh instances per run_ruby.py call (default 3)")
    ap.add_argument("--ruby-rounds", type=int, default=None,
                    help="interleaved rounds for workload comparisons (default: the section's, 3; fpcast and stack 5)")
    ap.add_argument("--fpcast-n", type=int, default=None,
                    help="loop iterations for the fpcast mixed fixture (default: calibrated to ~0.4 s)")
    ap.add_argument("--fpcast-runs", type=int, default=7, help="interleaved timed runs of each fpcast loop (default 7)")
    ap.add_argument("--pyodide-rounds", type=int, default=5,
                    help="rounds of the Pyodide workload: one node process each, every variant an instance in it (default 5)")
    ap.add_argument("--pyodide-evals", type=int, default=40,
                    help="timed calls of the Pyodide workload per variant and round, alternating between the variants (default 40)")
    ap.add_argument("--pyodide-warmup", type=int, default=3,
                    help="untimed calls of the Pyodide workload per instance before the timed ones (default 3)")
    ap.add_argument("--pyodide-metric", choices=["wall", "cpu"], default="wall",
                    help="what the Pyodide checks judge: wall-clock eval time (default) or the process's CPU time per call")
    ap.add_argument("--stack-n", type=int, default=None,
                    help="iterations of the stack fixture's calls loop (default: calibrated to ~0.4 s)")
    ap.add_argument("--stack-runs", type=int, default=7, help="interleaved timed runs of the stack calls loop (default 7)")
    ap.add_argument("--max-load-wait", type=float, default=120,
                    help="seconds to wait for the load average to drop below %.1f before timing (default 120)" % LOAD_LIMIT)
    args = ap.parse_args()
    if args.list:
        for name, s in SECTIONS.items():
            print("%-12s %s" % (name, (s.__doc__ or "").strip().splitlines()[0]))
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error("unknown section(s) %s; known: %s" % (",".join(unknown), ",".join(SECTIONS)))
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="wasmfix-bench-")
    ctx = Context(args, work)
    report = {"argv": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(),
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                       "python": platform.python_version()},
              "sections": {}}
    try:
        needs_tools = any(SECTIONS[s].TOOLS for s in sections)
        print("wasmfix bench  %s  git %s%s  cpus %d  load %.2f %.2f %.2f" % (
            report["started"], report["git"]["head"] or "(no commit)", " +dirty" if report["git"]["dirty"] else "",
            os.cpu_count(), *report["host"]["loadavg"]))
        if needs_tools:
            report["wasmfix"] = ctx.tool_info("wasmfix")
            report["wasm_opt"] = ctx.tool_info("wasm-opt")
            for key, label in (("wasmfix", "wasmfix "), ("wasm_opt", "wasm-opt")):
                t = report[key]
                if t.get("error"):
                    raise ToolError(t["error"])
                print("%s  %s  [%s]  %s" % (label, t.get("version") or "(no --version)", t["kind"], t["path"]))
            report["rss_floor_mb"] = round(ctx.floor_mb(), 2)
            print("launcher RSS floor %.1f MB (a peak near this measures the launcher, not the tool)"
                  % report["rss_floor_mb"])
        report["corpus"] = ctx.modules()
        print("corpus %s: %s" % (ctx.cache, ", ".join("%s %.1f MB" % (m["name"], m["bytes"] / 1e6) for m in report["corpus"])))
        for s in sections:
            report["sections"][s] = SECTIONS[s].run(ctx)
    except ToolError as e:
        log("bench: " + str(e))
        report["error"] = str(e)
        if args.json:
            write_json(args.json, report, ctx)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    failed = [c for c in ctx.checks if c["ok"] is not True]
    print("\nchecks: %d, not passed: %d%s" % (len(ctx.checks), len(failed),
                                          "".join("\n  %s %s: %s" % ("UNDECIDED" if c["ok"] == "undecided" else "FAIL", c["section"], c["what"])
                                                  for c in failed)))
    if args.json:
        write_json(args.json, report, ctx)
    return 1 if (args.strict and failed) else 0


def write_json(path, report, ctx):
    report["checks"] = ctx.checks
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    log("bench: wrote %s" % path)


if __name__ == "__main__":
    sys.exit(main())
