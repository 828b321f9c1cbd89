"""Timing a C fixture's loop in this process, under the python `wasmtime` package: each module is
compiled once, every run gets a fresh instance, and only the `_start` call is timed."""
import time

from benchlib.context import ToolError, log, last_error_line


def load_wasmtime(section):
    """(the wasmtime module, its version); a ToolError naming `section` when it is not installed."""
    try:
        import wasmtime
        from importlib.metadata import version as pkg_version
        return wasmtime, pkg_version("wasmtime")
    except ImportError as e:
        raise ToolError("the %s section needs the python wasmtime package (pip install wasmtime): %s" % (section, e))


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


def calibrate(run, n0, max_n, what, target_s=0.4):
    """Loop count N at which `run(n)` (returns seconds) takes about target_s: one warm-up run of n0, the
    faster of two more, scaled and rounded to 2 significant digits, within [1,000,000, max_n].
    Returns (N, {n0, t0_s, n})."""
    run(n0)  # warm-up
    t = min(run(n0) for _ in range(2))
    raw = n0 * target_s / max(t, 1e-6)
    digits = 10 ** max(0, len(str(int(raw))) - 2)
    n = int(min(max(round(raw / digits) * digits, 1_000_000), max_n))
    log("%s: calibrated N=%d (%d iterations took %.3f s)" % (what, n, n0, t))
    return n, {"n0": n0, "t0_s": round(t, 4), "n": n}
