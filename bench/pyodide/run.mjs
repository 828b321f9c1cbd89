// Runs bench/pyodide/workload.py under Pyodide in node and prints one JSON line:
//   {"output": <digest>, "init_s": <load time>, "eval_s": [<round times>], "cpu_s": [<their CPU>]}
//
// cpu_s is the process's CPU time (user + system, every thread: V8 compiles and collects
// garbage on helper threads) during each timed call: on a loaded machine it is steadier than
// the wall-clock eval_s, which waits for a core.
//
//   node bench/pyodide/run.mjs PYODIDE_PACKAGE_DIR [MODULE.wasm] [--rounds N]
//
// PYODIDE_PACKAGE_DIR is the npm package (the corpus has it under pkgs/pyodide/package). With
// MODULE.wasm, a temporary copy of the package whose pyodide.asm.wasm is that module (the other
// files are symlinks) is loaded instead, so a rewritten module runs through the real
// pyodide.mjs. One warm-up round runs first; each timed round calls run() once.
import { mkdtempSync, readdirSync, symlinkSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let rounds = 5;
const positional = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--rounds") rounds = Number(args[++i]);
  else positional.push(args[i]);
}
if (positional.length < 1 || positional.length > 2 || !(rounds > 0)) {
  console.error("usage: node run.mjs PYODIDE_PACKAGE_DIR [MODULE.wasm] [--rounds N]");
  process.exit(2);
}
const pkg = resolve(positional[0]);
let dir = pkg;
let tmp = null;
if (positional[1]) {
  tmp = mkdtempSync(join(tmpdir(), "pyodide-run-"));
  for (const f of readdirSync(pkg)) {
    if (f !== "pyodide.asm.wasm") symlinkSync(join(pkg, f), join(tmp, f));
  }
  symlinkSync(resolve(positional[1]), join(tmp, "pyodide.asm.wasm"));
  dir = tmp;
}
const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, "workload.py"), "utf8");
try {
  const { loadPyodide } = await import(pathToFileURL(join(dir, "pyodide.mjs")).href);
  const t0 = performance.now();
  const py = await loadPyodide({ indexURL: dir + "/", stdout: () => {}, stderr: (s) => console.error(s) });
  py.runPython(source);
  const init = (performance.now() - t0) / 1000;
  const run = py.globals.get("run");
  const output = run();
  const evals = [];
  const cpu = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    const c = process.cpuUsage();
    const again = run();
    evals.push((performance.now() - t) / 1000);
    const used = process.cpuUsage(c);
    cpu.push((used.user + used.system) / 1e6);
    if (again !== output) throw new Error(`round ${i}: output changed: ${again} vs ${output}`);
  }
  console.log(JSON.stringify({ output, init_s: init, eval_s: evals, cpu_s: cpu }));
} finally {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
}
