#!/usr/bin/env python3
"""wasmfix benchmark: the figures the issues ask for, next to binaryen's wasm-opt, same inputs, same run.

    python3 bench/bench.py [--sections core,fpcast,stack,ruby-sanity] [--modules ruby,yosys] [--repeat 3]
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

Sections (--sections, comma-separated, default core,fpcast,stack; --list shows them)
  core         round trip per module, median of --repeat runs each, runs interleaved:
                 wasmfix IN -o OUT --passes none       (OUT must be byte-identical to IN)
                 wasmfix IN -o OUT --passes producers
                 wasm-opt IN -o OUT --all-features     (read + write; --detect-features if that fails)
               wall seconds, peak RSS (MB = 10^6 bytes), peak / input size, and wasm-opt time / wasmfix
               time; then the acceptance thresholds of THRESHOLDS below with PASS/FAIL.
  fpcast       issue 4, wasmfix --passes fpcast next to wasm-opt --fpcast-emu, in one run:
               ruby.wasm  rewrite time (median of --repeat), size growth vs the original, and the
                          run_ruby.py workload (original first, interleaved, --ruby-rounds rounds,
                          default 5, of --ruby-n instances): eval-time ratio to the original and
                          "output identical". wasm-opt gets --detect-features; when --fpcast-emu fails
                          (binaryen needs max-func-params tuned on Ruby) the error line is recorded and
                          --pass-arg=max-func-params@N is tried for N in FPCAST_EMU_PARAMS until one works.
               mixed      tests/fixtures/wasm/fpcast.O2.wasm (`prog mixed-match N` / `prog mixed-mismatch
                          N`) under the python `wasmtime` package, in this process: every module compiled
                          once, a fresh instance per run, only the `_start` call timed; --fpcast-runs
                          interleaved rounds, medians. N: --fpcast-n, else calibrated so the original's
                          mixed-match takes ~0.4 s. Also checks that the original mixed-mismatch traps, and
                          that the fixed module prints what fpcast-typed.O2.wasm prints.
               Before each timing-sensitive part it prints the load average; above 1.5 it waits (up to
               --max-load-wait s) for it to drop, or for the run queue to stay empty for 15 s.
  stack        issue 5, wasmfix's stack guard next to wasm-opt --stack-check, in one run:
               ruby.wasm  stack-first, so the guard is forced: wasmfix --passes stack-guard. binaryen finds the
                          stack pointer only by name and ruby.wasm is stripped: wasm-opt --stack-check
                          --detect-features runs on a copy whose name section calls global 0 `__stack_pointer`
                          (and once on the stripped original, to show what it does there). Rewrite time (median
                          of --repeat), size growth, checks inserted (counted in the code section; binaryen checks
                          every stack-pointer write, so its count is the number of writes), and the run_ruby.py
                          workload as in fpcast (original first, --ruby-rounds rounds, default 5, of --ruby-n
                          instances). run_ruby.py calls the exported __set_stack_limits(16 MiB, 1024) that
                          binaryen's instrumentation needs before anything runs.
               calls      tests/fixtures/wasm/stack.O2.wasm `prog calls N` (stack after data): original vs
                          wasmfix --passes stack (its report must say it guarded) vs wasm-opt --stack-check, under
                          the python `wasmtime` package as in fpcast: compiled once, fresh instance per run, only
                          `_start` timed, --stack-runs interleaved rounds, N: --stack-n, else calibrated so the
                          original takes ~0.4 s. The fixture never calls __set_stack_limits: binaryen's limits stay
                          0, 0 and its module traps at the first stack-pointer write (shown); the timed runs call
                          __set_stack_limits(high, low) with wasmfix's stack region first.
               Size growth is checked on the larger of the whole-file figure and the figure without custom
               sections (the fixture is ~75% DWARF, which wasm-opt drops without -g); "vs own no-op" compares
               wasm-opt's output with its own no-pass round trip (wasmfix --passes none is the identity).
  harden       issue 6, in one run: ruby.wasm under wasmfix --harden, --passes stack-canary and --passes
               heap-canary (a pass that cannot apply says why in the table; heap-canary refuses the
               stripped ruby.wasm) next to wasm-opt --safe-heap --detect-features: rewrite time, size growth and
               the run_ruby.py workload (interleaved, eval-time ratios to the original; run_ruby.py provides
               the env imports --safe-heap adds). Then tests/fixtures/wasm/harden.O2.wasm `hash 200000`
               (malloc/strdup/realloc/free heavy) and `sort 300000` under the python wasmtime package for the
               original, --harden and each pass alone (--stack-runs interleaved runs, medians, only _start
               timed), with size growth. Not in the default sections: run --sections harden.
  ruby-sanity  run_ruby.py on the original ruby.wasm only; prints its JSON (proves the run helper).

Measuring: every command runs under a small launcher process that forks it, waits with os.wait4 and
reports the child's own rusage. Not RUSAGE_CHILDREN (a max over all children), and not wait4 straight
from this script either: on exec, Linux folds the pre-exec address space's RSS high-water mark into
the new program's ru_maxrss (fs/exec.c, exec_mmap -> setmax_mm_hiwater_rss), so a child of a big
process reports at least that process's peak. The launcher is small; its floor (a run of `true`) is
printed in the header: peaks near it say nothing.

Adding a section: write `def section_NAME(ctx) -> dict` that prints its tables and returns its
figures (they go into --json under sections.NAME), and register it in SECTIONS. Use ctx.wasmfix(),
ctx.wasm_opt(), ctx.modules(), ctx.module(name), ctx.measure(cmd) and ctx.check(...) for
thresholds. Workload sections (fpcast vs --fpcast-emu, stack-guard vs --stack-check, harden vs
--safe-heap) build their variants with ctx.measure, then compare run time with
run_ruby_variants(ctx, [("orig", ruby), ("wasmfix", a), ("wasm-opt", b)]), which runs
../shared/corpus/run_ruby.py on the variants interleaved and returns eval-time ratios to the first.
Build runnable wasm-opt variants with --detect-features, not --all-features: binaryen 132 with
--all-features writes imports in the compact-imports encoding, which wasmtime rejects
("invalid leading byte 0x7F with compact imports proposal disabled").

Exit status: 0, or 1 with --strict when a check FAILs, 2 when a tool or the corpus is missing/broken.
"""
import argparse
import filecmp
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
MB = 1e6

# Acceptance thresholds from the issues: (module or "*", row, metric, op, limit).
# metric: time_s (wall s), peak_x (peak RSS / input size), speedup (wasm-opt s / wasmfix s),
# identical (output == input, row "none" only).
THRESHOLDS = [
    ("ruby", "none", "time_s", "<=", 0.3),
    ("ruby", "none", "peak_x", "<=", 3.0),
    ("ruby", "producers", "time_s", "<=", 0.3),
    ("ruby", "producers", "peak_x", "<=", 3.0),
    ("yosys", "none", "time_s", "<=", 1.5),
    ("yosys", "producers", "time_s", "<=", 1.5),
    ("*", "none", "speedup", ">=", 20.0),
    ("*", "producers", "speedup", ">=", 20.0),
    ("*", "none", "identical", "==", True),
]

# fpcast (issue 4): (what, op, limit). Ratios are medians of interleaved runs.
FPCAST_THRESHOLDS = {
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
FPCAST_FIXTURES = os.path.join(REPO, "tests", "fixtures", "wasm")

# stack (issue 5): (what, op, limit). Size growth is the larger of the whole-file figure and the figure
# without custom sections (tests/fixtures' builds are ~75% DWARF, which would dilute the whole-file one).
STACK_THRESHOLDS = {
    "ruby_eval_ratio": ("<=", 1.02),         # ruby workload eval time, --passes stack-guard / original (binaryen 1.04x)
    "ruby_size_growth_pct": ("<=", 1.0),     # wasmfix output size vs original, %
    "ruby_output_identical": ("==", True),   # workload output and rb_state equal the original's
    "calls_guarded": ("==", True),           # --passes stack on stack.O2.wasm reports a guard (not a relocation)
    "calls_ratio": ("<=", 1.03),             # fixed `calls N` _start time / original
    "calls_size_growth_pct": ("<=", 1.0),    # wasmfix output size vs original, %
    "calls_output_identical": ("==", True),  # fixed stdout == original's
}
STACK_FIXTURE = "stack.O2.wasm"
LOAD_LIMIT = 1.5

# Forks argv[2:], waits for it with wait4 and writes "status wall_s maxrss_kib utime_s stime_s" to
# argv[1]. Kept tiny: its own RSS is the floor of every peak measured through it (see docstring).
LAUNCHER = r"""
import os, sys, time
res, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        os.write(2, ("launcher: cannot run %s: %s\n" % (argv[0], e)).encode())
    os._exit(127)
_, st, ru = os.wait4(pid, 0)
t1 = time.perf_counter()
with open(res, "w") as f:
    f.write("%d %.6f %d %.6f %.6f\n" % (os.waitstatus_to_exitcode(st), t1 - t0, ru.ru_maxrss, ru.ru_utime, ru.ru_stime))
"""


class ToolError(Exception):
    """A tool or input the run needs is missing or broken: exit 2 with this message."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(headers, rows):
    """Plain text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(s):
        return s[:1].isdigit() or s[:1] in "-." and s[1:2].isdigit()

    out = []
    for k, r in enumerate(cells):
        parts = [c.rjust(w) if k and numeric(c) else c.ljust(w) for c, w in zip(r, widths)]
        out.append("  ".join(parts).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def median(xs):
    return statistics.median(xs) if xs else None


def warm(path):
    """Read a file once in chunks (page cache warm, no RSS growth here)."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


class Measure:
    """One command's runs: wall time, peak RSS, CPU time, exit status."""

    def __init__(self, cmd):
        self.cmd = cmd
        self.times, self.peaks, self.cpus, self.rcs = [], [], [], []
        self.err = ""
        self.out_bytes = None

    @property
    def ok(self):
        return bool(self.rcs) and all(rc == 0 for rc in self.rcs)

    @property
    def time_s(self):
        return median(self.times)

    @property
    def peak_mb(self):
        return median(self.peaks)

    def to_json(self, in_bytes=None):
        d = {"cmd": self.cmd, "ok": self.ok, "rc": self.rcs, "time_s": self.time_s, "peak_mb": self.peak_mb,
             "times_s": self.times, "peaks_mb": self.peaks, "cpu_s": self.cpus, "out_bytes": self.out_bytes}
        if in_bytes and self.peak_mb is not None:
            d["peak_x"] = self.peak_mb * MB / in_bytes
        if not self.ok:
            d["stderr"] = self.err[-2000:]
        return d


class Context:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.shared = os.path.abspath(args.shared)
        self.cache = os.path.abspath(args.corpus)
        self.checks = []  # dicts: section, what, value, limit, op, ok
        self._wasmfix = self._wasm_opt = self._corpus = None
        self._seq = 0

    # ---- tools -------------------------------------------------------------------------------
    def wasmfix(self):
        """Path of the wasmfix binary (built on first use unless --no-build or $WASMFIX)."""
        if self._wasmfix:
            return self._wasmfix
        env = os.environ.get("WASMFIX")
        if env:
            path = env
        else:
            path = os.path.join(REPO, "target", "release", "wasmfix")
            if not self.args.no_build:
                log("$ cargo build --release")
                r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, stdout=sys.stderr)
                if r.returncode != 0:
                    raise ToolError("cargo build --release failed (exit %d)" % r.returncode)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ToolError("wasmfix not found at %s (build it, or set $WASMFIX)" % path)
        self._wasmfix = os.path.abspath(path)
        return self._wasmfix

    def wasm_opt(self):
        """Path of wasm-opt: $WASM_OPT, the repo's node_modules, bench/.npm, or npm-installed there."""
        if self._wasm_opt:
            return self._wasm_opt
        local = os.path.join(BENCH, ".npm", "node_modules", ".bin", "wasm-opt")
        path = os.environ.get("WASM_OPT")
        if not path:
            for cand in (os.path.join(REPO, "node_modules", ".bin", "wasm-opt"), local):
                if os.path.exists(cand):
                    path = cand
                    break
        if not path:
            cmd = ["npm", "install", "--no-save", "--prefix", os.path.join(BENCH, ".npm"), "binaryen"]
            log("$ " + " ".join(cmd))
            r = subprocess.run(cmd, cwd=BENCH, stdout=sys.stderr)  # keep stdout for the tables
            if r.returncode != 0 or not os.path.exists(local):
                raise ToolError("npm install of binaryen failed (exit %d)" % r.returncode)
            path = local
        if not os.access(path, os.X_OK):
            found = shutil.which(path)
            if not found:
                raise ToolError("wasm-opt not found at %s" % path)
            path = found
        self._wasm_opt = os.path.abspath(path)
        return self._wasm_opt

    def tool_info(self, which):
        """Version and flavour lines for the header/JSON (never fails)."""
        info = {"path": None}
        try:
            path = self.wasmfix() if which == "wasmfix" else self.wasm_opt()
        except ToolError as e:
            info["error"] = str(e)
            return info
        info["path"] = path
        try:
            r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
            info["version"] = (r.stdout or r.stderr).strip().splitlines()[0] if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["version"] = None
        real = os.path.realpath(path)
        with open(real, "rb") as f:
            head = f.read(128)
        if head.startswith(b"#!"):
            line = head.split(b"\n")[0].decode(errors="replace")
            info["kind"] = "script: " + line[2:].strip()
            if "node" in line:
                nv = subprocess.run(["node", "--version"], capture_output=True, text=True)
                info["kind"] = "binaryen.js (wasm build) under node %s" % nv.stdout.strip()
        elif head.startswith(b"\x7fELF"):
            info["kind"] = "native ELF"
        else:
            info["kind"] = "unknown"
        return info

    # ---- corpus ------------------------------------------------------------------------------
    def corpus(self):
        """All modules fetch.sh reports: list of dicts name, path, bytes."""
        if self._corpus is None:
            fetch = os.path.join(self.shared, "corpus", "fetch.sh")
            r = subprocess.run(["bash", fetch, self.cache], capture_output=True, text=True)
            if r.stderr.strip():
                log(r.stderr.rstrip())
            mods = []
            for line in r.stdout.splitlines():
                parts = line.split("\t")
                if len(parts) == 3 and parts[2].isdigit():
                    mods.append({"name": parts[0], "path": parts[1], "bytes": int(parts[2])})
            if not mods:
                raise ToolError("%s %s printed no modules (exit %d)" % (fetch, self.cache, r.returncode))
            self._corpus = mods
        return self._corpus

    def modules(self):
        """The modules selected with --modules (default all), in the order given."""
        mods = self.corpus()
        if not self.args.modules:
            return mods
        by = {m["name"]: m for m in mods}
        want = [n for n in self.args.modules.split(",") if n]
        missing = [n for n in want if n not in by]
        if missing:
            raise ToolError("unknown module(s) %s; corpus has %s" % (",".join(missing), ",".join(by)))
        return [by[n] for n in want]

    def module(self, name):
        for m in self.corpus():
            if m["name"] == name:
                return m
        raise ToolError("module %s not in corpus" % name)

    # ---- measuring ---------------------------------------------------------------------------
    def run_once(self, cmd, timeout=None):
        """Run cmd under the launcher. Returns (rc, wall_s, peak_mb, cpu_s, stderr_text)."""
        self._seq += 1
        if os.sep not in cmd[0]:  # resolve here: a PATH search in the forked child would raise the floor
            cmd = [shutil.which(cmd[0]) or cmd[0]] + cmd[1:]
        res = os.path.join(self.work, "run%d.res" % self._seq)
        errf = os.path.join(self.work, "run%d.err" % self._seq)
        with open(errf, "wb") as err:
            p = subprocess.Popen([sys.executable, "-S", "-E", "-c", LAUNCHER, res] + cmd,
                                 stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
            try:
                p.wait(timeout=timeout or self.args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise ToolError("timed out after %ss: %s" % (timeout or self.args.timeout, " ".join(cmd)))
        with open(errf, errors="replace") as f:
            text = f.read()
        os.unlink(errf)
        if not os.path.exists(res):
            raise ToolError("launcher failed (exit %s) for %s: %s" % (p.returncode, " ".join(cmd), text[-500:]))
        with open(res) as f:
            rc, wall, kib, ut, st = f.read().split()
        os.unlink(res)
        return int(rc), float(wall), int(kib) * 1024 / MB, float(ut) + float(st), text

    def measure(self, cmd, m=None):
        """Run cmd once, appending to Measure m (new one if None); returns m."""
        m = m or Measure(cmd)
        rc, wall, peak, cpu, err = self.run_once(cmd)
        m.rcs.append(rc)
        m.times.append(round(wall, 4))
        m.peaks.append(round(peak, 2))
        m.cpus.append(round(cpu, 4))
        if rc != 0:
            m.err = err
        return m

    def floor_mb(self):
        return self.run_once(["true"])[2]

    def check(self, section, what, value, op, limit):
        if value is None:
            ok = None
        elif op == "<=":
            ok = value <= limit
        elif op == ">=":
            ok = value >= limit
        else:
            ok = value == limit
        self.checks.append({"section": section, "what": what, "value": value, "op": op, "limit": limit, "ok": ok})
        return ok

    def out_path(self, name):
        return os.path.join(self.work, name)


# ---- sections ------------------------------------------------------------------------------------

def section_core(ctx):
    """Round trip: wasmfix --passes none / producers vs wasm-opt read+write."""
    wasmfix, wasm_opt = ctx.wasmfix(), ctx.wasm_opt()
    repeat = ctx.args.repeat
    rows, figures = [], {}
    for mod in ctx.modules():
        name, src, size = mod["name"], mod["path"], mod["bytes"]
        warm(src)
        outs = {k: ctx.out_path("%s.%s.wasm" % (name, k)) for k in ("none", "producers", "wasm-opt")}
        runs = {"none": Measure([wasmfix, src, "-o", outs["none"], "--passes", "none"]),
                "producers": Measure([wasmfix, src, "-o", outs["producers"], "--passes", "producers"])}
        wo_flags = None
        for r in range(repeat):
            log("core: %s run %d/%d" % (name, r + 1, repeat))
            for k in ("none", "producers"):
                ctx.measure(runs[k].cmd, runs[k])
            if wo_flags is None:  # first run decides the feature flag
                for flag in ("--all-features", "--detect-features"):
                    m = ctx.measure([wasm_opt, src, "-o", outs["wasm-opt"], flag])
                    if m.ok:
                        wo_flags = flag
                        break
                    log("core: %s: wasm-opt %s failed: %s" % (name, flag, m.err.strip().splitlines()[-1:]))
                runs["wasm-opt"] = m
                if wo_flags is None:
                    wo_flags = "FAILED"
            elif wo_flags != "FAILED":
                ctx.measure(runs["wasm-opt"].cmd, runs["wasm-opt"])
        for k, path in outs.items():
            runs[k].out_bytes = os.path.getsize(path) if runs[k].ok and os.path.exists(path) else None
        identical = runs["none"].ok and os.path.exists(outs["none"]) and filecmp.cmp(src, outs["none"], shallow=False)
        for path in outs.values():
            if os.path.exists(path) and not ctx.args.keep:
                os.unlink(path)
        wo = runs["wasm-opt"]
        fig = {"input_bytes": size, "path": src, "identical": identical, "wasm_opt_flags": wo_flags}
        for k, m in runs.items():
            fig[k] = m.to_json(size)
            if k != "wasm-opt":
                fig[k]["speedup"] = (wo.time_s / m.time_s) if (wo.ok and m.ok and m.time_s) else None
            if not m.ok:
                log("core: %s %s FAILED (exit %s): %s" % (name, k, m.rcs, m.err.strip()[-400:]))
        figures[name] = fig

        def cols(k):
            m, f = runs[k], fig[k]
            if not m.ok:
                return ["ERR(%s)" % m.rcs[-1], "-", "-"]
            return [fmt(m.time_s, ".3f"), fmt(m.peak_mb, ".1f"), fmt(f.get("peak_x"), ".2f")]

        rows.append([name, "%.1f" % (size / MB)] + cols("none") + ["yes" if identical else "NO"] + cols("producers")
                    + cols("wasm-opt")
                    + [fmt(fig["none"]["speedup"], ".1f"), fmt(fig["producers"]["speedup"], ".1f"), wo_flags])

    print("\n== core: round trip (median of %d runs; s = wall seconds, MB = 10^6 bytes peak RSS, "
          "xin = peak / input) ==" % repeat)
    print(table(["module", "in MB", "none s", "MB", "xin", "identical", "producers s", "MB", "xin",
                 "wasm-opt s", "MB", "xin", "wo/none", "wo/prod", "wasm-opt flags"], rows))

    lines = []
    for name, fig in figures.items():
        for mod_sel, row, metric, op, limit in THRESHOLDS:
            if mod_sel not in ("*", name):
                continue
            f = fig[row]
            value = fig["identical"] if metric == "identical" else f.get(metric)
            if metric != "identical" and not f["ok"]:
                value = None
            ok = ctx.check("core", "%s %s %s" % (name, row, metric), value, op, limit)
            shown = {"time_s": lambda v: "%.3f s" % v, "peak_x": lambda v: "%.2fx input" % v,
                     "speedup": lambda v: "%.1fx" % v, "identical": lambda v: "yes" if v else "NO"}[metric]
            lim = {"time_s": "%g s" % limit, "peak_x": "%gx input" % limit, "speedup": "%gx" % limit,
                   "identical": "yes"}[metric]
            lines.append([name, "wasmfix " + row, metric, "-" if value is None else shown(value), op + " " + lim,
                          {True: "PASS", False: "FAIL", None: "FAIL (no figure)"}[ok]])
    print("\n-- core: acceptance thresholds (speedup = wasm-opt s / wasmfix s) --")
    print(table(["module", "row", "metric", "value", "threshold", "result"], lines))
    return {"repeat": repeat, "modules": figures}


def run_ruby_variants(ctx, variants, n=None, rounds=None):
    """Run ../shared/corpus/run_ruby.py on each (label, wasm path) variant, interleaved
    (v0, v1, ..., v0, v1, ... for `rounds` rounds, each run timing `n` fresh instances).
    Returns {"baseline": label0, "variants": {label: {...}}} where each variant has its
    run_ruby JSON lines ("runs"), eval_s (median over every instance of every round),
    ratio (eval_s / baseline eval_s), pair_ratios (per round, against the baseline of the same round),
    and output_ok (same output and rb_state as the baseline)."""
    n = n or ctx.args.ruby_n
    rounds = rounds or ctx.args.ruby_rounds or 3
    script = os.path.join(ctx.shared, "corpus", "run_ruby.py")
    env = dict(os.environ, RUBY_RUN_CACHE=os.path.join(ctx.cache, "cwasm"))
    res = {label: {"file": path, "runs": []} for label, path in variants}
    for r in range(rounds):
        for label, path in variants:
            # run_ruby.py caches the compiled module by NAME (reused while newer than the file):
            # prefix ours so they never collide with hand-run names.
            name = "bench-" + label
            log("ruby: round %d/%d %s" % (r + 1, rounds, label))
            p = subprocess.run([sys.executable, script, name, path, str(n)], env=env,
                               capture_output=True, text=True, timeout=ctx.args.timeout)
            if p.stderr.strip():
                log(p.stderr.rstrip()[-2000:])
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                raise ToolError("run_ruby.py %s %s failed (exit %d): %s"
                                % (name, path, p.returncode, (p.stderr or p.stdout)[-600:]))
            res[label]["runs"].append(json.loads(lines[-1]))
    base_label = variants[0][0]
    base = res[base_label]
    for label, v in res.items():
        v["eval_s"] = median([x for run in v["runs"] for x in run["eval_s_all"]])
        v["init_s"] = median([run["init_s_median"] for run in v["runs"]])
    for label, v in res.items():
        v["ratio"] = round(v["eval_s"] / base["eval_s"], 4) if base["eval_s"] else None
        v["pair_ratios"] = [round(a["eval_s_median"] / b["eval_s_median"], 4)
                            for a, b in zip(v["runs"], base["runs"]) if b["eval_s_median"]]
        v["output_ok"] = all((run["output"], run["rb_state"]) == (base["runs"][0]["output"], base["runs"][0]["rb_state"])
                             for run in v["runs"])
    return {"baseline": base_label, "n": n, "rounds": rounds, "variants": res}


def print_ruby_variants(title, result):
    rows = []
    for label, v in result["variants"].items():
        rows.append([label, "%.1f" % (os.path.getsize(v["file"]) / MB), fmt(v["init_s"], ".3f"), fmt(v["eval_s"], ".3f"),
                     fmt(v["ratio"], ".3f"), " ".join("%.3f" % x for x in v["pair_ratios"]),
                     "yes" if v["output_ok"] else "NO"])
    print("\n== %s (run_ruby.py, %d instances x %d rounds, interleaved; ratio = eval / %s eval) =="
          % (title, result["n"], result["rounds"], result["baseline"]))
    print(table(["variant", "MB", "init s", "eval s", "ratio", "per-round ratios", "output ok"], rows))


def section_ruby_sanity(ctx):
    """run_ruby.py on the original ruby.wasm: proves the workload helper works."""
    ruby = ctx.module("ruby")
    result = run_ruby_variants(ctx, [("ruby-orig", ruby["path"])], rounds=1)
    v = result["variants"]["ruby-orig"]
    print("\n== ruby-sanity: run_ruby.py on the original ruby.wasm ==")
    for run in v["runs"]:
        print(json.dumps(run))
    out_ok = v["runs"][0]["output"].startswith("ok ") and v["runs"][0]["rb_state"] == 0
    ctx.check("ruby-sanity", "ruby output 'ok ...' and rb_state 0", out_ok, "==", True)
    print("workload output: %r, rb_state %d: %s" % (v["runs"][0]["output"], v["runs"][0]["rb_state"],
                                                     "PASS" if out_ok else "FAIL"))
    return result


def procs_running():
    """Runnable tasks right now (/proc/stat procs_running), this process included; None if unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_for_quiet(ctx, what):
    """Print the load average before a timing-sensitive part; above LOAD_LIMIT, wait (up to
    --max-load-wait s) until it drops, or until the run queue has held nothing but us for 15 s
    (the 1-minute average lags a finished build by a minute or two). Returns what it saw."""
    t0 = time.monotonic()
    load = os.getloadavg()
    quiet_samples = 0
    if load[0] > LOAD_LIMIT and ctx.args.max_load_wait > 0:
        log("load %.2f > %.1f before %s: waiting up to %ds" % (load[0], LOAD_LIMIT, what, ctx.args.max_load_wait))
    while load[0] > LOAD_LIMIT and time.monotonic() - t0 < ctx.args.max_load_wait:
        time.sleep(5)
        load = os.getloadavg()
        running = procs_running()
        quiet_samples = quiet_samples + 1 if running is not None and running <= 1 else 0
        if quiet_samples >= 3:
            break
    waited = time.monotonic() - t0
    note = ""
    if load[0] > LOAD_LIMIT:
        note = " (run queue empty for 15 s)" if quiet_samples >= 3 else " (STILL ABOVE %.1f: figures may be noisy)" % LOAD_LIMIT
    print("load before %s: %.2f %.2f %.2f, waited %.0f s%s" % (what, load[0], load[1], load[2], waited, note), flush=True)
    return {"before": what, "loadavg": [round(x, 2) for x in load], "waited_s": round(waited, 1),
            "quiet": load[0] <= LOAD_LIMIT or quiet_samples >= 3}


def last_error_line(text):
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # binaryen: "Fatal: ...", wasmtime: "wasm trap: ..."
        if ln.startswith("Fatal") or "trap" in ln or "rror" in ln:
            return ln
    return lines[-1] if lines else ""


def fpcast_check(ctx, rows, key, what, value, shown):
    op, limit = FPCAST_THRESHOLDS[key]
    ok = ctx.check("fpcast", what, value, op, limit)
    lim = ("yes" if limit else "no") if isinstance(limit, bool) else "%g" % limit
    rows.append([what, "-" if value is None else shown(value), op + " " + lim,
                 {True: "PASS", False: "FAIL", None: "FAIL (no figure)"}[ok]])
    return ok


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
    for r in range(1, repeat if wo else 0):
        log("fpcast: ruby wasm-opt run %d/%d" % (r + 1, repeat))
        ctx.measure(wo.cmd, wo)
    rt = ctx.measure([ctx.wasm_opt(), src, "-o", out_rt, "--detect-features"])  # size reference only
    rt_bytes = os.path.getsize(out_rt) if rt.ok else None

    loads.append(wait_for_quiet(ctx, "ruby rewrite timing"))
    wf = Measure([wasmfix, src, "-o", out_wf, "--passes", "fpcast"])
    for r in range(repeat):
        log("fpcast: ruby wasmfix run %d/%d" % (r + 1, repeat))
        ctx.measure(wf.cmd, wf)
    if not wf.ok:
        raise ToolError("wasmfix --passes fpcast failed on ruby.wasm (exit %s): %s" % (wf.rcs, wf.err[-600:]))
    wf.out_bytes = os.path.getsize(out_wf)
    if wo:
        wo.out_bytes = os.path.getsize(out_wo)

    variants = [("ruby-orig", src), ("fpcast-wasmfix", out_wf)] + ([("fpcast-wasm-opt", out_wo)] if wo else [])
    loads.append(wait_for_quiet(ctx, "ruby workload"))
    work = run_ruby_variants(ctx, variants, rounds=ctx.args.ruby_rounds or 5)
    print_ruby_variants("fpcast: ruby.wasm workload", work)

    def growth(m):
        return None if not m or m.out_bytes is None else round(100.0 * (m.out_bytes - size) / size, 3)

    vres = work["variants"]
    orig = vres["ruby-orig"]
    # Noise diagnostic (the checks use medians): fastest instance / original's fastest. Interference from
    # other processes only adds time, so on a loaded machine the minima are the steadier figure.
    for v in vres.values():
        v["eval_s_min"] = min(x for run in v["runs"] for x in run["eval_s_all"])
        v["min_ratio"] = round(v["eval_s_min"] / orig["eval_s_min"], 4)
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

    fpcast_check(ctx, checks, "ruby_eval_ratio", "ruby wasmfix eval time / original", fig["wasmfix"]["eval_ratio"],
                 lambda v: "%.3fx" % v)
    fpcast_check(ctx, checks, "ruby_size_growth_pct", "ruby wasmfix size growth %", fig["wasmfix"]["size_growth_pct"],
                 lambda v: "%+.2f%%" % v)
    fpcast_check(ctx, checks, "ruby_rewrite_s", "ruby wasmfix rewrite s", wf.time_s, lambda v: "%.3f s" % v)
    fpcast_check(ctx, checks, "ruby_output_identical", "ruby wasmfix workload output identical",
                 fig["wasmfix"]["output_ok"], lambda v: "yes" if v else "NO")
    return fig


def time_start(engine, module, argv, outf, before=None):
    """Runs a fresh instance of the WASI command `module` with `argv`, stdout to `outf`; `before(store,
    exports)` runs after instantiation. Times only the `_start` call. Returns (s, stdout, outcome)."""
    import wasmtime
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = argv
    wasi.stdout_file = outf
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    exports = linker.instantiate(store, module).exports(store)
    if before:
        before(store, exports)
    start = exports["_start"]
    outcome = "ok"
    t = time.perf_counter()
    try:
        start(store)
    except wasmtime.ExitTrap as e:
        outcome = "ok" if e.code == 0 else "exit %d" % e.code
    except wasmtime.Trap as e:
        outcome = "trap: " + last_error_line(str(e))
    except wasmtime.WasmtimeError as e:
        outcome = "error: " + last_error_line(str(e))
    t = time.perf_counter() - t
    with open(outf) as f:
        return t, f.read().strip(), outcome


def fpcast_mixed(ctx, checks):
    """tests/fixtures/wasm/fpcast.O2.wasm mixed-match / mixed-mismatch loops under python wasmtime."""
    try:
        import wasmtime
        from importlib.metadata import version as pkg_version
        wt_version = pkg_version("wasmtime")
    except ImportError as e:
        raise ToolError("the fpcast section needs the python wasmtime package (pip install wasmtime): %s" % e)

    orig_path = os.path.join(FPCAST_FIXTURES, "fpcast.O2.wasm")
    typed_path = os.path.join(FPCAST_FIXTURES, "fpcast-typed.O2.wasm")
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
    t0 = time.perf_counter()
    mods = {k: wasmtime.Module.from_file(engine, p) for k, p in paths.items()}
    log("fpcast: compiled %d fixture modules in %.2f s (wasmtime %s)" % (len(mods), time.perf_counter() - t0, wt_version))
    outf = ctx.out_path("fpcast-mixed.stdout")

    def run(key, case, n):
        """Fresh instance of mods[key]; times only the _start call. Returns (s, stdout, outcome)."""
        return time_start(engine, mods[key], ["prog", case, str(n)], outf)

    # N: the original's mixed-match loop at ~0.4 s (2 significant digits), unless --fpcast-n.
    n = ctx.args.fpcast_n
    calib = None
    if not n:
        n0 = 5_000_000
        run("orig", "mixed-match", n0)  # warm-up
        t = min(run("orig", "mixed-match", n0)[0] for _ in range(2))
        raw = n0 * 0.4 / max(t, 1e-6)
        digits = 10 ** max(0, len(str(int(raw))) - 2)
        n = int(min(max(round(raw / digits) * digits, 1_000_000), 2_000_000_000))
        calib = {"n0": n0, "t0_s": round(t, 4), "n": n}
        log("fpcast: calibrated N=%d (%d iterations took %.3f s)" % (n, n0, t))

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
    load = wait_for_quiet(ctx, "mixed loop timing")
    times = {k: [] for k in order}
    bad = []
    for r in range(ctx.args.fpcast_runs):
        log("fpcast: mixed loop round %d/%d (N=%d)" % (r + 1, ctx.args.fpcast_runs, n))
        for k in order:
            t, out, outcome = run(k[0], k[1], n)
            if outcome != "ok" or out != single[k]["stdout"]:
                bad.append("%s %s round %d: %s %r" % (k[0], k[1], r + 1, outcome, out))
            times[k].append(round(t, 5))
    if bad:
        raise ToolError("fpcast mixed loop: a timed run did not repeat its output: " + "; ".join(bad[:3]))
    med = {k: median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}

    def ratio(a, b, d=med):
        return round(d[a] / d[b], 4) if d.get(a) and d.get(b) else None

    def pair_ratios(a, b):
        return [round(x / y, 3) for x, y in zip(times[a], times[b])]

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
    ratios = {name: (ratio(a, b), pair_ratios(a, b), ratio(a, b, fastest)) for name, a, b in pairs}

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

    fpcast_check(ctx, checks, "mixed_match_ratio", "mixed-match: fixed / original", ratios["fixed_match/orig_match"][0],
                 lambda v: "%.3fx" % v)
    fpcast_check(ctx, checks, "mixed_mismatch_ratio", "mixed-mismatch fixed / mixed-match fixed",
                 ratios["fixed_mismatch/fixed_match"][0], lambda v: "%.3fx" % v)
    fpcast_check(ctx, checks, "mixed_orig_mismatch_traps", "mixed-mismatch original traps (type mismatch)", orig_traps,
                 lambda v: "yes" if v else "NO")
    fpcast_check(ctx, checks, "mixed_match_output", "mixed-match fixed stdout == original", match_out_ok,
                 lambda v: "yes" if v else "NO")
    fpcast_check(ctx, checks, "mixed_mismatch_output", "mixed-mismatch fixed stdout == typed build", mismatch_out_ok,
                 lambda v: "yes" if v else "NO")
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


def section_fpcast(ctx):
    """wasmfix --passes fpcast vs wasm-opt --fpcast-emu: ruby.wasm rewrite/size/workload, mixed fixture loops."""
    checks = []
    fig = {"thresholds": {k: {"op": op, "limit": lim} for k, (op, lim) in FPCAST_THRESHOLDS.items()}}
    fig["ruby"] = fpcast_ruby(ctx, checks)
    fig["mixed"] = fpcast_mixed(ctx, checks)
    print("\n-- fpcast: acceptance thresholds (issue 4) --")
    print(table(["check", "value", "threshold", "result"], checks))
    return fig


# ---- stack (issue 5) -----------------------------------------------------------------------------

def leb_u(n):
    """Unsigned LEB128 encoding of n."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def read_leb(b, i):
    """Unsigned LEB128 at b[i]: (value, index after it)."""
    r = shift = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return r, i


def read_name(b, i):
    n, i = read_leb(b, i)
    return b[i:i + n].decode("utf-8", "replace"), i + n


def wasm_sections(data):
    """[(id, custom section name or None, section start, payload start, payload end)] of a module."""
    if data[:4] != b"\0asm":
        raise ToolError("not a wasm module")
    out, i = [], 8
    while i < len(data):
        size, j = read_leb(data, i + 1)
        name = read_name(data, j)[0] if data[i] == 0 else None
        out.append((data[i], name, i, j, j + size))
        i = j + size
    return out


def wasm_summary(path):
    """What a rewriter changed, in counts: bytes, bytes without custom sections, code section bytes,
    imports per kind, defined functions and globals, exports {name: (kind, index)}, custom section sizes."""
    with open(path, "rb") as f:
        data = f.read()
    s = {"bytes": len(data), "no_custom_bytes": 8, "code_bytes": 0, "funcs": 0, "globals": 0,
         "imported": {"func": 0, "table": 0, "memory": 0, "global": 0, "tag": 0}, "exports": {}, "custom": {}}

    def skip_reftype(i):
        return read_leb(data, i + 1)[1] if data[i] in (0x63, 0x64) else i + 1

    def skip_limits(i):
        flags = data[i]
        _, i = read_leb(data, i + 1)
        if flags & 1:
            _, i = read_leb(data, i)
        if flags & 8:  # custom page size
            _, i = read_leb(data, i)
        return i

    for sid, name, start, a, b in wasm_sections(data):
        if sid == 0:
            s["custom"][name] = s["custom"].get(name, 0) + b - start
            continue
        s["no_custom_bytes"] += b - start
        if sid == 2:
            n, i = read_leb(data, a)
            for _ in range(n):
                _, i = read_name(data, i)
                _, i = read_name(data, i)
                kind = data[i]
                i += 1
                if kind == 0:
                    _, i = read_leb(data, i)
                elif kind == 1:
                    i = skip_limits(skip_reftype(i))
                elif kind == 2:
                    i = skip_limits(i)
                elif kind == 3:
                    i = skip_reftype(i) + 1
                elif kind == 4:
                    _, i = read_leb(data, i + 1)
                else:
                    raise ToolError("%s: unknown import kind 0x%02x" % (path, kind))
                s["imported"][("func", "table", "memory", "global", "tag")[kind]] += 1
        elif sid == 3:
            s["funcs"] = read_leb(data, a)[0]
        elif sid == 6:
            s["globals"], i = read_leb(data, a)
            s["global_defs"] = []
            for _ in range(s["globals"]):
                vt = data[i]
                i = skip_reftype(i)
                mutable = data[i] == 1
                value, i = read_const_expr(data, i + 1)
                s["global_defs"].append((vt, mutable, value))
        elif sid == 7:
            n, i = read_leb(data, a)
            for _ in range(n):
                ename, i = read_name(data, i)
                kind = data[i]
                index, i = read_leb(data, i + 1)
                s["exports"][ename] = (kind, index)
        elif sid == 10:
            s["code_bytes"] = b - start
    return s


def code_section(path):
    with open(path, "rb") as f:
        data = f.read()
    for sid, _, _, a, b in wasm_sections(data):
        if sid == 10:
            return data[a:b]
    return b""


def read_const_expr(b, i):
    """A constant expression at b[i]: (value of a lone i32.const, else None; index after its `end`)."""
    value, count = None, 0
    while b[i] != 0x0B:
        op = b[i]
        i += 1
        count += 1
        if op == 0x41:  # i32.const: signed LEB
            start = i
            _, i = read_leb(b, i)
            v, shift = 0, 0
            for x in b[start:i]:
                v |= (x & 0x7F) << shift
                shift += 7
            if b[i - 1] & 0x40:
                v -= 1 << shift
            value = v
        elif op in (0x42, 0x23, 0xD2, 0xD0):  # i64.const, global.get, ref.func, ref.null: one LEB
            _, i = read_leb(b, i)
        elif op == 0x43:
            i += 4
        elif op == 0x44:
            i += 8
        elif op == 0xFD:  # v128.const
            _, i = read_leb(b, i)
            i += 16
        elif op == 0xFB:  # GC constants (struct.new, array.new_fixed, ...): opcode then up to two LEBs; rare
            raise ToolError("GC constant expressions are not supported by this bench's parser")
        # extended-const arithmetic (0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e) has no immediates
    return (value if count == 1 else None), i + 1


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


def code_body_sizes(path):
    """Encoded size (with its size LEB) of every function body in path's code section, in order."""
    code = code_section(path)
    if not code:
        return []
    n, i = read_leb(code, 0)
    out = []
    for _ in range(n):
        size, j = read_leb(code, i)
        out.append(j - i + size)
        i = j + size
    return out


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


def add_global_name(src, dst, index, name):
    """Copy src to dst with a name section in which global `index` is called `name` (subsection 7, global
    names: vec of (index, name)). An existing name section is merged (its other subsections and global
    names kept) and moved to the end; otherwise one is appended. Returns the bytes added."""
    with open(src, "rb") as f:
        data = f.read()
    subs, gnames = {}, {}
    for sid, sname, start, a, b in wasm_sections(data):
        if sid == 0 and sname == "name":
            _, k = read_name(data, a)
            while k < b:
                size, j = read_leb(data, k + 1)
                if data[k] == 7:
                    n, i = read_leb(data, j)
                    for _ in range(n):
                        g, i = read_leb(data, i)
                        gnames[g], i = read_name(data, i)
                else:
                    subs[data[k]] = data[j:j + size]
                k = j + size
            data = data[:start] + data[b:]
            break
    gnames[index] = name
    vec = leb_u(len(gnames)) + b"".join(leb_u(g) + leb_u(len(n.encode())) + n.encode() for g, n in sorted(gnames.items()))
    subs[7] = vec
    content = leb_u(4) + b"name" + b"".join(bytes([k]) + leb_u(len(v)) + v for k, v in sorted(subs.items()))
    out = data + b"\0" + leb_u(len(content)) + content
    with open(dst, "wb") as f:
        f.write(out)
    return len(out) - os.path.getsize(src)


def growth_pct(new, old):
    return None if new is None or not old else round(100.0 * (new - old) / old, 3)


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


def stack_check(ctx, rows, key, what, value, shown):
    op, limit = STACK_THRESHOLDS[key]
    ok = ctx.check("stack", what, value, op, limit)
    lim = ("yes" if limit else "no") if isinstance(limit, bool) else "%g" % limit
    rows.append([what, "-" if value is None else shown(value), op + " " + lim,
                 {True: "PASS", False: "FAIL", None: "FAIL (no figure)"}[ok]])
    return ok


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
    for r in range(repeat):
        log("stack: ruby wasm-opt --stack-check run %d/%d" % (r + 1, repeat))
        ctx.measure(wo.cmd, wo)
        if not wo.ok:
            log("stack: ruby wasm-opt --stack-check failed: %s" % last_error_line(wo.err))
            break
    log("stack: ruby wasm-opt round trip of the named copy (size reference)")
    rt = ctx.measure([wasm_opt, named, "-o", out_rt, "--detect-features"])
    log("stack: ruby wasm-opt --stack-check on the stripped original (as shipped)")
    st = ctx.measure([wasm_opt, src, "-o", out_stripped] + wo_flags)
    rt_sum = wasm_summary(out_rt) if rt.ok else None
    wo_sum, wo_facts = stack_wasm_opt_facts(orig, out_wo, rt_sum) if wo.ok else (None, None)
    st_facts = stack_wasm_opt_facts(orig, out_stripped)[1] if st.ok else None
    if wo.ok:
        wo.out_bytes = wo_sum["bytes"]

    loads.append(wait_for_quiet(ctx, "ruby rewrite timing"))
    wf = Measure([wasmfix, src, "-o", out_wf, "--passes", "stack-guard", "--report", rep_wf])
    for r in range(repeat):
        log("stack: ruby wasmfix --passes stack-guard run %d/%d" % (r + 1, repeat))
        ctx.measure(wf.cmd, wf)
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
    loads.append(wait_for_quiet(ctx, "ruby workload"))
    work = run_ruby_variants(ctx, variants, rounds=ctx.args.ruby_rounds or 5)
    print_ruby_variants("stack: ruby.wasm workload", work)

    vres = work["variants"]
    base = vres["ruby-orig"]
    for v in vres.values():
        v["eval_s_min"] = min(x for run in v["runs"] for x in run["eval_s_all"])
        v["min_ratio"] = round(v["eval_s_min"] / base["eval_s_min"], 4)

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

    stack_check(ctx, checks, "ruby_eval_ratio", "ruby stack-guard eval time / original", fig["wasmfix"].get("eval_ratio"),
                lambda v: "%.3fx" % v)
    stack_check(ctx, checks, "ruby_size_growth_pct", "ruby stack-guard size growth %",
                fig["wasmfix"]["size"]["checked_growth_pct"], lambda v: "%+.3f%%" % v)
    stack_check(ctx, checks, "ruby_output_identical", "ruby stack-guard workload output identical",
                fig["wasmfix"].get("output_ok"), lambda v: "yes" if v else "NO")
    return fig


def stack_calls(ctx, checks):
    """tests/fixtures/wasm/stack.O2.wasm `calls N`: original vs --passes stack vs wasm-opt --stack-check,
    _start timed under python wasmtime."""
    try:
        import wasmtime
        from importlib.metadata import version as pkg_version
        wt_version = pkg_version("wasmtime")
    except ImportError as e:
        raise ToolError("the stack section needs the python wasmtime package (pip install wasmtime): %s" % e)

    orig_path = os.path.join(FPCAST_FIXTURES, STACK_FIXTURE)
    if not os.path.exists(orig_path):
        raise ToolError("fixture missing: %s" % orig_path)
    orig = wasm_summary(orig_path)
    fixed_path, rep_path = ctx.out_path("stack.O2.fixed.wasm"), ctx.out_path("stack.O2.report.json")
    wo_path, rt_path = ctx.out_path("stack.O2.stack-check.wasm"), ctx.out_path("stack.O2.roundtrip.wasm")
    repeat = ctx.args.repeat
    wf = Measure([ctx.wasmfix(), orig_path, "-o", fixed_path, "--passes", "stack", "--report", rep_path])
    for _ in range(repeat):
        ctx.measure(wf.cmd, wf)
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
        n0 = 2_000_000
        run("orig", n0)  # warm-up
        t = min(run("orig", n0)[0] for _ in range(2))
        raw = n0 * 0.4 / max(t, 1e-6)
        digits = 10 ** max(0, len(str(int(raw))) - 2)
        n = int(min(max(round(raw / digits) * digits, 1_000_000), 4_000_000_000))
        calib = {"n0": n0, "t0_s": round(t, 4), "n": n}
        log("stack: calibrated N=%d (%d calls iterations took %.3f s)" % (n, n0, t))

    order = list(paths)
    single = {k: run(k, n)[1:] for k in order}  # untimed: outputs and outcomes
    out_ok = {k: single[k][1] == "ok" and single[k] == single["orig"] for k in order}

    load = wait_for_quiet(ctx, "calls loop timing")
    times = {k: [] for k in order}
    bad = []
    for r in range(ctx.args.stack_runs):
        log("stack: calls round %d/%d (N=%d)" % (r + 1, ctx.args.stack_runs, n))
        for k in order:
            t, out, outcome = run(k, n)
            if (out, outcome) != single[k]:
                bad.append("%s round %d: %s %r" % (k, r + 1, outcome, out))
            times[k].append(round(t, 5))
    if bad:
        raise ToolError("stack calls loop: a timed run did not repeat its output: " + "; ".join(bad[:3]))
    med = {k: median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}
    ratios = {}
    for k in order[1:]:
        ratios["%s/orig" % k] = {"median": round(med[k] / med["orig"], 4), "min": round(fastest[k] / fastest["orig"], 4),
                                 "per_round": [round(a / b, 3) for a, b in zip(times[k], times["orig"])]}

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

    stack_check(ctx, checks, "calls_guarded", "calls --passes stack guarded (report)", wf_facts["guarded"],
                lambda v: "yes" if v else "NO")
    stack_check(ctx, checks, "calls_ratio", "calls: fixed / original", ratios.get("fixed/orig", {}).get("median"),
                lambda v: "%.3fx" % v)
    stack_check(ctx, checks, "calls_size_growth_pct", "calls --passes stack size growth %",
                fig["wasmfix"]["size"]["checked_growth_pct"], lambda v: "%+.3f%%" % v)
    stack_check(ctx, checks, "calls_output_identical", "calls fixed stdout == original", out_ok["fixed"],
                lambda v: "yes" if v else "NO")
    return fig


def section_stack(ctx):
    """wasmfix stack-guard vs wasm-opt --stack-check: ruby.wasm rewrite/size/workload, stack.O2 calls loop."""
    checks = []
    fig = {"thresholds": {k: {"op": op, "limit": lim} for k, (op, lim) in STACK_THRESHOLDS.items()}}
    fig["ruby"] = stack_ruby(ctx, checks)
    fig["calls"] = stack_calls(ctx, checks)
    print("\n-- stack: acceptance thresholds (issue 5; size growth = the larger of whole file and without custom "
          "sections) --")
    print(table(["check", "value", "threshold", "result"], checks))
    return fig


# ---- harden (issue 6) ----------------------------------------------------------------------------

# harden (issue 6): (what, op, limit). Ratios are eval-time medians of interleaved runs.
HARDEN_THRESHOLDS = {
    "ruby_harden_ratio": ("<=", 1.5),          # ruby workload, --harden / original (binaryen --safe-heap: 4.6x)
    "ruby_stack_canary_ratio": ("<=", 1.05),   # --passes stack-canary / original
    "ruby_heap_canary_ratio": ("<=", 1.10),    # --passes heap-canary / original (None: refused on ruby.wasm)
    "fixture_heap_canary_ratio": ("<=", 1.10), # harden.O2.wasm `hash N` (malloc/free heavy), heap-canary / original
}
HARDEN_FIXTURE = "harden.O2.wasm"


def harden_ruby(ctx, checks):
    """ruby.wasm: --harden, --passes stack-canary, --passes heap-canary (each may refuse or skip: the
    report says why) next to wasm-opt --safe-heap; sizes and the run_ruby.py workload, interleaved."""
    wasmfix, wasm_opt = ctx.wasmfix(), ctx.wasm_opt()
    ruby = ctx.module("ruby")
    src, size = ruby["path"], ruby["bytes"]
    warm(src)
    variants = [("ruby-orig", src)]
    fig = {"input_bytes": size, "variants": {}}
    for label, flags in (("harden", ["--harden"]), ("stack-canary", ["--passes", "stack-canary"]),
                         ("heap-canary", ["--passes", "heap-canary"])):
        out, rep = ctx.out_path("ruby.%s.wasm" % label), ctx.out_path("ruby.%s.report.json" % label)
        log("harden: ruby wasmfix %s" % " ".join(flags))
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
            log("harden: wasmfix %s refused ruby.wasm: %s" % (" ".join(flags), entry["refused"]))
        fig["variants"][label] = entry
    out_wo = ctx.out_path("ruby.safe-heap.wasm")
    log("harden: ruby wasm-opt --safe-heap --detect-features (binaryen.js: slow)")
    wo = ctx.measure([wasm_opt, src, "-o", out_wo, "--safe-heap", "--detect-features"])
    fig["variants"]["safe-heap"] = {"rewrite_s": wo.times[-1], "ok": wo.ok}
    if wo.ok:
        fig["variants"]["safe-heap"].update(bytes=os.path.getsize(out_wo),
                                            size_growth_pct=round(growth_pct(os.path.getsize(out_wo), size), 3))
        variants.append(("safe-heap", out_wo))
    else:
        fig["variants"]["safe-heap"]["error"] = last_error_line(wo.err)
    wait_for_quiet(ctx, "ruby harden workload")
    work = run_ruby_variants(ctx, variants)
    print_ruby_variants("harden: ruby.wasm workload", work)
    for label, v in work["variants"].items():
        if label in fig["variants"]:
            fig["variants"][label].update(eval_s=v["eval_s"], ratio=v["ratio"], pair_ratios=v["pair_ratios"],
                                          output_ok=v["output_ok"])
    fig["orig_eval_s"] = work["variants"]["ruby-orig"]["eval_s"]
    print("\n== harden: ruby.wasm %.1f MB: what each variant did ==" % (size / MB))
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
        op, lim = HARDEN_THRESHOLDS[key]
        v = fig["variants"].get(label, {}).get("ratio")
        ok = ctx.check("harden", key, v, op, lim)
        checks.append([key, fmt(v, ".3f") if v is not None else "n/a (%s)" % (fig["variants"][label].get("refused") or "?")[:80],
                       "%s %s" % (op, lim), {True: "PASS", False: "FAIL", None: "N/A"}[ok]])
    return fig


def harden_fixture(ctx, checks):
    """harden.O2.wasm `hash N` (malloc/strdup/realloc/free heavy) and `sort N`: original vs each pass vs
    --harden, under the python wasmtime package: compiled once, fresh instance per run, only _start timed."""
    import wasmtime
    orig = os.path.join(FPCAST_FIXTURES, HARDEN_FIXTURE)
    paths = {"orig": orig}
    for label, flags in (("harden", ["--harden"]), ("stack-canary", ["--passes", "stack-canary"]),
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
    wait_for_quiet(ctx, "harden fixture loops")
    for case, n in (("hash", 200000), ("sort", 300000)):
        times = {k: [] for k in mods}
        outs = {}
        for r in range(ctx.args.stack_runs):
            for k in mods:
                t, out, outcome = time_start(engine, mods[k], ["prog", case, str(n)], outf)
                times[k].append(t)
                outs[k] = (out, outcome)
        med = {k: median(v) for k, v in times.items()}
        fig[case] = {k: {"median_s": round(med[k], 4), "min_s": round(min(times[k]), 4),
                         "ratio": round(med[k] / med["orig"], 4), "min_ratio": round(min(times[k]) / min(times["orig"]), 4),
                         "output_identical": outs[k] == outs["orig"]} for k in mods}
        print("\n== harden: %s `%s %d` (%d interleaved runs, wasmtime; ratio = median / original median) ==" %
              (HARDEN_FIXTURE, case, n, ctx.args.stack_runs))
        print(table(["variant", "median s", "ratio", "min ratio", "output identical"],
                    [[k, "%.4f" % v["median_s"], "%.3f" % v["ratio"], "%.3f" % v["min_ratio"],
                      "yes" if v["output_identical"] else "NO"] for k, v in fig[case].items()]))
        for k in mods:
            p = paths[k]
            fig[case][k]["size_growth_pct"] = round(growth_pct(os.path.getsize(p), os.path.getsize(orig)), 3)
    v = fig["hash"]["heap-canary"]["ratio"]
    op, lim = HARDEN_THRESHOLDS["fixture_heap_canary_ratio"]
    ok = ctx.check("harden", "fixture_heap_canary_ratio", v, op, lim)
    checks.append(["fixture_heap_canary_ratio (hash)", "%.3f" % v, "%s %s" % (op, lim), "PASS" if ok else "FAIL"])
    print("\n== harden: %s size growth (%%): %s ==" % (HARDEN_FIXTURE, ", ".join(
        "%s %+.2f" % (k, fig["hash"][k]["size_growth_pct"]) for k in mods if k != "orig")))
    return fig


def section_harden(ctx):
    """--harden and each of its passes on ruby.wasm next to wasm-opt --safe-heap, and on harden.O2.wasm."""
    checks = []
    fig = {"thresholds": {k: {"op": op, "limit": lim} for k, (op, lim) in HARDEN_THRESHOLDS.items()}}
    fig["ruby"] = harden_ruby(ctx, checks)
    fig["fixture"] = harden_fixture(ctx, checks)
    print("\n-- harden: acceptance thresholds (issue 6) --")
    print(table(["check", "value", "threshold", "result"], checks))
    return fig


SECTIONS = {
    "core": section_core,
    "fpcast": section_fpcast,
    "stack": section_stack,
    "harden": section_harden,
    "ruby-sanity": section_ruby_sanity,
}
# Sections that run wasmfix / wasm-opt: the header prints their versions and the RSS floor.
TOOL_SECTIONS = ("core", "fpcast", "stack")


def git_state():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        return {"head": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except OSError:
        return {"head": None, "dirty": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="core,fpcast,stack",
                    help="comma-separated, from: %s (default core,fpcast,stack)" % ",".join(SECTIONS))
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
    ap.add_argument("--stack-n", type=int, default=None,
                    help="iterations of the stack fixture's calls loop (default: calibrated to ~0.4 s)")
    ap.add_argument("--stack-runs", type=int, default=7, help="interleaved timed runs of the stack calls loop (default 7)")
    ap.add_argument("--max-load-wait", type=float, default=120,
                    help="seconds to wait for the load average to drop below %.1f before timing (default 120)" % LOAD_LIMIT)
    args = ap.parse_args()
    if args.list:
        for k, f in SECTIONS.items():
            print("%-12s %s" % (k, (f.__doc__ or "").strip()))
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
        needs_tools = any(x in TOOL_SECTIONS for x in sections)
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
        print("corpus %s: %s" % (ctx.cache, ", ".join("%s %.1f MB" % (m["name"], m["bytes"] / MB) for m in report["corpus"])))
        for s in sections:
            report["sections"][s] = SECTIONS[s](ctx)
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
    print("\nchecks: %d, failed: %d%s" % (len(ctx.checks), len(failed),
                                          "".join("\n  FAIL %s: %s" % (c["section"], c["what"]) for c in failed)))
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
