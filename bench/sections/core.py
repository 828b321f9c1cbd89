"""Round trip and default pipeline: wasmfix vs the validate+copy floor vs wasm-opt read+write.

Per module (--modules, default all), --repeat interleaved rounds after a load wait, medians:
  floor IN OUT                          (examples/floor.rs: wasmparser validation + a copy)
  wasmfix IN -o OUT --passes none       (OUT must be byte-identical to IN)
  wasmfix IN -o OUT --passes producers
  wasmfix IN -o OUT                     (the default pipeline)
  wasm-opt IN -o OUT --all-features     (read + write; --detect-features if that fails)
wall seconds, peak RSS (MB = 10^6 bytes), peak / input size, the default pipeline's time / the
floor's (median/median and min/min), and wasm-opt time / wasmfix time; then the acceptance
thresholds of THRESHOLDS with PASS/FAIL.
"""
import filecmp
import os

from benchlib.context import MB, Measure, log, warm
from benchlib.rounds import interleave
from benchlib.tables import fmt, table

NAME = "core"
DEFAULT = True
TOOLS = True

# Acceptance thresholds from the issues: (module or "*", row, metric, op, limit).
# metric: time_s (wall s), peak_x (peak RSS / input size), speedup (wasm-opt s / wasmfix s),
# identical (output == input, row "none" only).
THRESHOLDS = [
    ("ruby", "default", "floor_x", "<=", 1.3),   # issue 18: default pipeline time / floor time
    ("ruby", "default", "peak_x", "<=", 2.0),
    ("yosys", "default", "floor_x", "<=", 1.3),
    ("yosys", "default", "peak_x", "<=", 2.0),
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


def round_trip(ctx, mod, repeat):
    """The three commands on one module, interleaved. Returns (runs {key: Measure}, wasm-opt flag used or
    "FAILED", outputs identical to the input)."""
    wasmfix, wasm_opt = ctx.wasmfix(), ctx.wasm_opt()
    name, src = mod["name"], mod["path"]
    warm(src)
    outs = {k: ctx.out_path("%s.%s.wasm" % (name, k)) for k in ("floor", "none", "producers", "default", "wasm-opt")}
    runs = {"floor": Measure([ctx.floor(), src, outs["floor"]]),
            "none": Measure([wasmfix, src, "-o", outs["none"], "--passes", "none"]),
            "producers": Measure([wasmfix, src, "-o", outs["producers"], "--passes", "producers"]),
            "default": Measure([wasmfix, src, "-o", outs["default"], "-q"]),
            "wasm-opt": None}
    state = {"flags": None}

    def run(k, _round):
        if k != "wasm-opt":
            return ctx.measure(runs[k].cmd, runs[k]).times[-1]
        if state["flags"] is None:  # the first round decides the feature flag
            for flag in ("--all-features", "--detect-features"):
                m = ctx.measure([wasm_opt, src, "-o", outs["wasm-opt"], flag])
                if m.ok:
                    state["flags"] = flag
                    break
                log("core: %s: wasm-opt %s failed: %s" % (name, flag, m.err.strip().splitlines()[-1:]))
            runs["wasm-opt"] = m
            if state["flags"] is None:
                state["flags"] = "FAILED"
            return m.times[-1]
        if state["flags"] != "FAILED":
            return ctx.measure(runs["wasm-opt"].cmd, runs["wasm-opt"]).times[-1]
        return []

    timing = interleave(ctx, "core timing (%s)" % name, list(runs), repeat, run, label="core: %s" % name)
    for k, path in outs.items():
        runs[k].out_bytes = os.path.getsize(path) if runs[k].ok and os.path.exists(path) else None
    identical = runs["none"].ok and os.path.exists(outs["none"]) and filecmp.cmp(src, outs["none"], shallow=False)
    for path in outs.values():
        if os.path.exists(path) and not ctx.args.keep:
            os.unlink(path)
    return runs, state["flags"], identical, timing


def run(ctx):
    repeat = ctx.args.repeat
    rows, floor_rows, figures = [], [], {}
    for mod in ctx.modules():
        name, src, size = mod["name"], mod["path"], mod["bytes"]
        runs, wo_flags, identical, timing = round_trip(ctx, mod, repeat)
        wo = runs["wasm-opt"]
        fig = {"input_bytes": size, "path": src, "identical": identical, "wasm_opt_flags": wo_flags}
        for k, m in runs.items():
            fig[k] = m.to_json(size)
            if k not in ("wasm-opt", "floor"):
                fig[k]["speedup"] = (wo.time_s / m.time_s) if (wo.ok and m.ok and m.time_s) else None
            if k == "default" and m.ok and runs["floor"].ok:
                fig[k]["floor_x"] = timing.ratio("default", "floor")
                fig[k]["floor_min_x"] = timing.min_ratio("default", "floor")
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
        floor_rows.append([name, "%.1f" % (size / MB)] + cols("floor") + cols("default")
                          + [fmt(fig["default"].get("floor_x"), ".2f"), fmt(fig["default"].get("floor_min_x"), ".2f"),
                             fmt(fig["default"].get("speedup"), ".1f")])

    print("\n== core: round trip (median of %d runs; s = wall seconds, MB = 10^6 bytes peak RSS, "
          "xin = peak / input) ==" % repeat)
    print(table(["module", "in MB", "none s", "MB", "xin", "identical", "producers s", "MB", "xin",
                 "wasm-opt s", "MB", "xin", "wo/none", "wo/prod", "wasm-opt flags"], rows))
    print("\n== core: the default pipeline against the floor (examples/floor.rs: validation + copy), same rounds ==")
    print(table(["module", "in MB", "floor s", "MB", "xin", "default s", "MB", "xin", "default/floor",
                 "min/min", "wo/default"], floor_rows))

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
                     "speedup": lambda v: "%.1fx" % v, "identical": lambda v: "yes" if v else "NO",
                     "floor_x": lambda v: "%.2fx floor" % v}[metric]
            lim = {"time_s": "%g s" % limit, "peak_x": "%gx input" % limit, "speedup": "%gx" % limit,
                   "identical": "yes", "floor_x": "%gx floor" % limit}[metric]
            lines.append([name, "wasmfix " + row, metric, "-" if value is None else shown(value), op + " " + lim,
                          {True: "PASS", False: "FAIL", None: "FAIL (no figure)"}[ok]])
    print("\n-- core: acceptance thresholds (speedup = wasm-opt s / wasmfix s; floor_x = default s / floor s, "
          "medians of the same interleaved rounds) --")
    print(table(["module", "row", "metric", "value", "threshold", "result"], lines))
    return {"repeat": repeat, "modules": figures}
