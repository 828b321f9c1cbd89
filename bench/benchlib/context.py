"""What every section is handed: the tools (wasmfix, wasm-opt), the corpus, and one way to run a
command and measure it (wall time, peak RSS, CPU time, exit status).

Measuring: every command runs under a small launcher process that forks it, waits with os.wait4 and
reports the child's own rusage. Not RUSAGE_CHILDREN (a max over all children), and not wait4 straight
from this script either: on exec, Linux folds the pre-exec address space's RSS high-water mark into
the new program's ru_maxrss (fs/exec.c, exec_mmap -> setmax_mm_hiwater_rss), so a child of a big
process reports at least that process's peak. The launcher is small; its floor (a run of `true`) is
printed in the header: peaks near it say nothing.
"""
import os
import shutil
import signal
import subprocess
import sys

from benchlib.rounds import median, verdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "wasm")
MB = 1e6

# Forks argv[2:], waits for it with wait4 and writes "status wall_s maxrss_kib utime_s stime_s" to
# argv[1]. Kept tiny: its own RSS is the floor of every peak measured through it (see above).
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


def warm(path):
    """Read a file once in chunks (page cache warm, no RSS growth here)."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def last_error_line(text):
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # binaryen: "Fatal: ...", wasmtime: "wasm trap: ..."
        if ln.startswith("Fatal") or "trap" in ln or "rror" in ln:
            return ln
    return lines[-1] if lines else ""


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
        self._wasmfix = self._wasm_opt = self._corpus = self._floor = None
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

    def floor(self):
        """Path of the floor program (examples/floor.rs: validate + copy, what no rewrite can beat),
        built on first use unless --no-build; $WASMFIX_FLOOR overrides."""
        if self._floor:
            return self._floor
        path = os.environ.get("WASMFIX_FLOOR")
        if not path:
            path = os.path.join(REPO, "target", "release", "examples", "floor")
            if not self.args.no_build:
                log("$ cargo build --release --example floor")
                r = subprocess.run(["cargo", "build", "--release", "--example", "floor"], cwd=REPO, stdout=sys.stderr)
                if r.returncode != 0:
                    raise ToolError("cargo build --release --example floor failed (exit %d)" % r.returncode)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ToolError("the floor program is not at %s (cargo build --release --example floor)" % path)
        self._floor = os.path.abspath(path)
        return self._floor

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

    def has_module(self, name):
        return any(m["name"] == name for m in self.corpus())

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

    def check(self, section, what, value, op, limit, interval=None, decidable=True):
        """Record one acceptance check (goes into the final summary, --json and --strict). With
        `interval` (low, high: how sure the value is), the interval decides: PASS when all of it
        meets the limit, FAIL when none does, ok "undecided" when the limit falls inside it, or
        when the caller says the interval itself cannot be trusted (decidable=False: too few
        samples for it)."""
        if interval is not None:
            ok = verdict(interval[0], interval[1], op, limit) if decidable else "undecided"
            self.checks.append({"section": section, "what": what, "value": value, "op": op, "limit": limit,
                                "interval": list(interval), "ok": ok})
            return ok
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
