// Runs a WASI preview1 command module in node:  node scripts/run-wasi.mjs MODULE.wasm [ARGS...]
// Exit status: the module's own, or 134 after printing the error when it traps.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit, stderr } from "node:process";

const [path, ...args] = argv.slice(2);
if (!path) {
  stderr.write("usage: node scripts/run-wasi.mjs MODULE.wasm [ARGS...]\n");
  exit(2);
}
const wasi = new WASI({ version: "preview1", args: [path, ...args], env: {}, returnOnExit: true });
try {
  const module = await WebAssembly.compile(await readFile(path));
  const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
  exit(wasi.start(instance) ?? 0);
} catch (e) {
  stderr.write(`${e}\n`);
  exit(134);
}
