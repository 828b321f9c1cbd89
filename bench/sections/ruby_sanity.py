"""run_ruby.py on the original ruby.wasm only; prints its JSON (proves the workload helper works)."""
import json

from benchlib.ruby import run_ruby_variants

NAME = "ruby-sanity"
DEFAULT = False
TOOLS = False


def run(ctx):
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
