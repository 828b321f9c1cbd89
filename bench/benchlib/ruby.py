"""The Ruby workload (../shared/corpus/run_ruby.py) on rewritten variants of a Ruby module,
interleaved, as eval-time ratios to the first variant."""
import json
import os
import subprocess
import sys

from benchlib.context import MB, ToolError, log
from benchlib.rounds import interleave, median
from benchlib.tables import fmt, table


def run_ruby_variants(ctx, variants, n=None, rounds=None, what=None):
    """Run ../shared/corpus/run_ruby.py on each (label, wasm path) variant, interleaved
    (v0, v1, ..., v0, v1, ... for `rounds` rounds, each run timing `n` fresh instances); with `what`,
    wait for a quiet machine first. Returns {"baseline": label0, "load", "variants": {label: {...}}}
    where each variant has its run_ruby JSON lines ("runs"), eval_s (median over every instance of
    every round), eval_s_min, ratio (eval_s / baseline eval_s), min_ratio, pair_ratios (per round,
    against the baseline of the same round), init_s, and output_ok (same output and rb_state as the
    baseline)."""
    n = n or ctx.args.ruby_n
    rounds = rounds or ctx.args.ruby_rounds or 3
    script = os.path.join(ctx.shared, "corpus", "run_ruby.py")
    env = dict(os.environ, RUBY_RUN_CACHE=os.path.join(ctx.cache, "cwasm"))
    paths = dict(variants)
    res = {label: {"file": path, "runs": []} for label, path in variants}

    def run(label, _round):
        # run_ruby.py caches the compiled module by NAME (reused while newer than the file):
        # prefix ours so they never collide with hand-run names.
        name = "bench-" + label
        p = subprocess.run([sys.executable, script, name, paths[label], str(n)], env=env,
                           capture_output=True, text=True, timeout=ctx.args.timeout)
        if p.stderr.strip():
            log(p.stderr.rstrip()[-2000:])
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise ToolError("run_ruby.py %s %s failed (exit %d): %s"
                            % (name, paths[label], p.returncode, (p.stderr or p.stdout)[-600:]))
        result = json.loads(lines[-1])
        res[label]["runs"].append(result)
        return result["eval_s_all"]

    evals = interleave(ctx, what, list(res), rounds, run, label="ruby")
    base_label = variants[0][0]
    base = res[base_label]
    for label, v in res.items():
        v["eval_s"] = evals.median(label)
        v["eval_s_min"] = evals.min(label)
        v["init_s"] = median([run["init_s_median"] for run in v["runs"]])
        v["ratio"] = round(evals.ratio(label, base_label), 4) if base["eval_s"] else None
        v["min_ratio"] = round(evals.min_ratio(label, base_label), 4) if base["eval_s_min"] else None
        v["pair_ratios"] = [round(x, 4) for x in evals.round_ratios(label, base_label)]
        v["output_ok"] = all((run["output"], run["rb_state"]) == (base["runs"][0]["output"], base["runs"][0]["rb_state"])
                             for run in v["runs"])
    return {"baseline": base_label, "n": n, "rounds": rounds, "load": evals.load, "variants": res}


def print_ruby_variants(title, result):
    rows = []
    for label, v in result["variants"].items():
        rows.append([label, "%.1f" % (os.path.getsize(v["file"]) / MB), fmt(v["init_s"], ".3f"), fmt(v["eval_s"], ".3f"),
                     fmt(v["ratio"], ".3f"), " ".join("%.3f" % x for x in v["pair_ratios"]),
                     "yes" if v["output_ok"] else "NO"])
    print("\n== %s (run_ruby.py, %d instances x %d rounds, interleaved; ratio = eval / %s eval) =="
          % (title, result["n"], result["rounds"], result["baseline"]))
    print(table(["variant", "MB", "init s", "eval s", "ratio", "per-round ratios", "output ok"], rows))
