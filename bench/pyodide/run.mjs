// Runs bench/pyodide/workload.py under Pyodide in node, one Pyodide instance per module, all in
// this one process, and prints one JSON line:
//   {"hash_seed": S, "variants": [{"module": <path or null>, "output": <digest>, "init_s": <load time>,
//     "hash": <hash("a") in that instance>, "eval_s": [<call times>], "cpu_s": [<their CPU>]}, ...]}
//
//   node bench/pyodide/run.mjs PYODIDE_PACKAGE_DIR [MODULE.wasm ...] [--calls N] [--warmup W] [--seed S]
//        [--order-seed K]
//
// PYODIDE_PACKAGE_DIR is the npm package (the corpus has it under pkgs/pyodide/package). Each
// MODULE.wasm is loaded through the real pyodide.mjs from a temporary copy of the package whose
// pyodide.asm.wasm is that module (the other files are symlinks); "-" or no module at all stands
// for the package's own pyodide.asm.wasm.
//
// Why one process and alternating calls: a call's time moves by up to 1.7x from call to call and
// from process to process while the work is identical (its CPU time too: not only waiting for a
// core; see docs/benchmarks.md), so calls of different modules are only comparable when they run
// next to each other. After loading every instance and W warm-up calls each (V8 compiles the hot
// functions again in the background during the first call; that must not be charged to another
// instance's timed call), each cycle calls every instance once, in a new random order. Before
// each call, outside the timed region, Python's cyclic GC runs (gc.collect()), so every call
// starts from the same collector state whatever ran before it.
// Every instance gets the same PYTHONHASHSEED (default 0) through loadPyodide's env option: with
// a random seed per instance, dict and set layouts (and so their costs) would differ per module.
// cpu_s is the process's CPU time (user + system, every thread) during each call: it does not
// count the time the process waits for a core.
import { mkdtempSync, readdirSync, symlinkSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let calls = 5;
let warmup = 3;
let seed = "0";
let orderSeed = 1;
const positional = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--calls" || args[i] === "--rounds") calls = Number(args[++i]);
  else if (args[i] === "--warmup") warmup = Number(args[++i]);
  else if (args[i] === "--seed") seed = args[++i];
  else if (args[i] === "--order-seed") orderSeed = Number(args[++i]);
  else positional.push(args[i]);
}
if (positional.length < 1 || !(calls > 0) || !(warmup >= 1) || !/^\d+$/.test(seed) || !Number.isInteger(orderSeed)) {
  console.error("usage: node run.mjs PYODIDE_PACKAGE_DIR [MODULE.wasm ...] [--calls N] [--warmup W>=1] [--seed S] [--order-seed K]");
  process.exit(2);
}
const pkg = resolve(positional[0]);
const modules = positional.length > 1 ? positional.slice(1) : ["-"];
const here = dirname(fileURLToPath(import.meta.url));

// A small seeded generator (mulberry32): the same --order-seed gives the same call orders.
function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const source = readFileSync(join(here, "workload.py"), "utf8");
const tmps = [];
try {
  const instances = [];
  for (const m of modules) {
    let dir = pkg;
    if (m !== "-") {
      dir = mkdtempSync(join(tmpdir(), "pyodide-run-"));
      tmps.push(dir);
      for (const f of readdirSync(pkg)) {
        if (f !== "pyodide.asm.wasm") symlinkSync(join(pkg, f), join(dir, f));
      }
      symlinkSync(resolve(m), join(dir, "pyodide.asm.wasm"));
    }
    const { loadPyodide } = await import(pathToFileURL(join(dir, "pyodide.mjs")).href);
    const t0 = performance.now();
    const py = await loadPyodide({
      indexURL: dir + "/",
      env: { PYTHONHASHSEED: seed },
      stdout: () => {},
      stderr: (s) => console.error(s),
    });
    py.runPython(source);
    const init = (performance.now() - t0) / 1000;
    // The seed must have taken: no hash randomization, and hash("a") the same in every instance.
    const [randomized, hash] = py.runPython('import sys; (sys.flags.hash_randomization, hash("a"))').toJs();
    if (randomized !== 0) throw new Error(`PYTHONHASHSEED=${seed} did not take in ${m}`);
    instances.push({
      module: m === "-" ? null : m,
      run: py.globals.get("run"),
      collect: py.runPython("import gc; gc.collect"),
      init_s: init,
      hash: String(hash),
      eval_s: [],
      cpu_s: [],
    });
  }
  for (const x of instances) {
    x.output = x.run();
    for (let i = 1; i < warmup; i++) x.run();
  }
  // The order of the calls in a cycle is a new shuffle every cycle (seeded: --order-seed), so no
  // instance always runs right after the same one: with a fixed rotation, two code-identical
  // rewrites measured 1.034x and 1.025x the original's CPU time, each steadily over 5 rounds.
  const random = mulberry32(orderSeed);
  const order = instances.map((_, j) => j);
  for (let i = 0; i < calls; i++) {
    for (let j = order.length - 1; j > 0; j--) {
      const k = Math.floor(random() * (j + 1));
      [order[j], order[k]] = [order[k], order[j]];
    }
    for (const j of order) {
      const x = instances[j];
      x.collect();
      const c = process.cpuUsage();
      const t = performance.now();
      const again = x.run();
      x.eval_s.push((performance.now() - t) / 1000);
      const used = process.cpuUsage(c);
      x.cpu_s.push((used.user + used.system) / 1e6);
      if (again !== x.output) throw new Error(`call ${i} of ${x.module}: output changed: ${again} vs ${x.output}`);
    }
  }
  const variants = instances.map(({ module, output, init_s, hash, eval_s, cpu_s }) => ({
    module, output, init_s, hash, eval_s, cpu_s,
  }));
  console.log(JSON.stringify({ hash_seed: Number(seed), variants }));
} finally {
  for (const d of tmps) rmSync(d, { recursive: true, force: true });
}
