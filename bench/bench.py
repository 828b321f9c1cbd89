#!/usr/bin/env python3
"""wasmfix benchmark: the figures the issues ask for, next to binaryen's wasm-opt, same inputs, same run.

    python3 bench/bench.py [--sections core,ruby-sanity] [--modules ruby,yosys] [--repeat 3]
                           [--corpus DIR] [--no-build] [--json FILE] [--strict] [--keep DIR]

Tools
  wasmfix    $WASMFIX, else target/release/wasmfix, built first with `cargo build --release`
             (skipped with --no-build, or when $WASMFIX is set).
  wasm-opt   $WASM_OPT, else node_modules/.bin/wasm-opt under the repo, else bench/.npm/node_modules/.bin/
             wasm-opt, installed on first use with `npm install --no-save --prefix bench/.npm binaryen`.
             The npm package is binaryen.js (binaryen compiled to wasm, run by node): slower than a native
             build. The header says which one ran; quote ratios with that in mind.
  corpus     `../shared/corpus/fetch.sh CACHE` (CACHE: --corpus, default ../corpus-cache) prints
             `name<TAB>path<TAB>bytes` per module; --modules picks some of them (default: all).

Sections (--sections, comma-separated, default core; --list shows them)
  core         round trip per module, median of --repeat runs each, runs interleaved:
                 wasmfix IN -o OUT --passes none       (OUT must be byte-identical to IN)
                 wasmfix IN -o OUT --passes producers
                 wasm-opt IN -o OUT --all-features     (read + write; --detect-features if that fails)
               wall seconds, peak RSS (MB = 10^6 bytes), peak / input size, and wasm-opt time / wasmfix
               time; then the acceptance thresholds of THRESHOLDS below with PASS/FAIL.
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
    rounds = rounds or ctx.args.ruby_rounds
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


SECTIONS = {
    "core": section_core,
    "ruby-sanity": section_ruby_sanity,
    # Later: "fpcast" (wasmfix --passes fpcast vs wasm-opt --fpcast-emu, run_ruby_variants),
    # "stack-guard" (vs wasm-opt --stack-check), "harden" (vs wasm-opt --safe-heap).
}


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
    ap.add_argument("--sections", default="core", help="comma-separated, from: %s (default core)" % ",".join(SECTIONS))
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
    ap.add_argument("--ruby-rounds", type=int, default=3, help="interleaved rounds for workload comparisons (default 3)")
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
        needs_tools = "core" in sections
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
