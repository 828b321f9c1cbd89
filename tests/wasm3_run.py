"""Runs a WASI preview1 command module in wasm3 (PyPI pywasm3), a strict WebAssembly 1.0 engine.

    python3 tests/wasm3_run.py MODULE.wasm [ARGS...]

pywasm3 has no WASI, so this gives the module the few WASI imports the C fixtures use:
args_sizes_get / args_get (argv is ["prog", ARGS...], as tests/common's wasmtime runner),
fd_write to fds 1 and 2 (passed through to stdout / stderr), proc_exit, and fd_close /
fd_fdstat_get / fd_seek answering EBADF (no files). Exit status: the module's own, 134 after
printing "wasm3: trap: ..." on stderr when it traps, 3 when wasm3 cannot load the module
(printing why), 4 when the module imports something not given here.
"""

import os
import struct
import sys

import wasm3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
from drop_custom import without_custom  # noqa: E402

EBADF = 8
WASI = "wasi_snapshot_preview1"


class Exit(Exception):
    def __init__(self, code):
        super().__init__(f"proc_exit({code})")
        self.code = code


def without_names(wasm):
    """`wasm` without its `name` section. wasm3 finds a function by any of its names, the
    first function in index order winning: in wasi-libc's builds the name section calls the
    inner function `_start` too, and calling that skips the constructors and destructors (stdout
    is never flushed). Without the section, `_start` is only the export."""
    return without_custom(wasm, "^name$")[0]


def main():
    path, args = sys.argv[1], ["prog"] + sys.argv[2:]
    with open(path, "rb") as f:
        wasm = without_names(f.read())
    env = wasm3.Environment()
    runtime = env.new_runtime(64 * 1024 * 1024)
    try:
        module = env.parse_module(wasm)
        runtime.load(module)
    except RuntimeError as e:
        print(f"wasm3: cannot load the module: {e}", file=sys.stderr)
        return 3
    # proc_exit's code: a host function that raises makes wasm3 unwind with a trap.
    state = {"exit": None}
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    argv = [a.encode() + b"\0" for a in args]

    def memory():
        return runtime.get_memory(0)

    def args_sizes_get(argc_at, size_at):
        mem = memory()
        mem[argc_at : argc_at + 4] = struct.pack("<I", len(argv))
        mem[size_at : size_at + 4] = struct.pack("<I", sum(len(a) for a in argv))
        return 0

    def args_get(pointers_at, buffer_at):
        mem = memory()
        for i, a in enumerate(argv):
            mem[pointers_at + 4 * i : pointers_at + 4 * i + 4] = struct.pack("<I", buffer_at)
            mem[buffer_at : buffer_at + len(a)] = a
            buffer_at += len(a)
        return 0

    def fd_write(fd, iovs, count, written_at):
        if fd not in out:
            return EBADF
        mem = memory()
        total = 0
        for i in range(count):
            base, length = struct.unpack_from("<II", mem, iovs + 8 * i)
            out[fd].write(bytes(mem[base : base + length]))
            total += length
        out[fd].flush()
        mem[written_at : written_at + 4] = struct.pack("<I", total)
        return 0

    def proc_exit(code):
        state["exit"] = code
        raise Exit(code)

    def ebadf(*_):
        return EBADF

    given = {
        "args_sizes_get": ("i(ii)", args_sizes_get),
        "args_get": ("i(ii)", args_get),
        "fd_write": ("i(iiii)", fd_write),
        "proc_exit": ("v(i)", proc_exit),
        "fd_close": ("i(i)", ebadf),
        "fd_fdstat_get": ("i(ii)", ebadf),
        "fd_seek": ("i(iIii)", ebadf),
    }
    for name, (signature, function) in given.items():
        try:
            module.link_function(WASI, name, signature, function)
        except RuntimeError:
            pass  # the module does not import it
    try:
        start = runtime.find_function("_start")
    except RuntimeError as e:
        print(f"wasm3: cannot link the module: {e}", file=sys.stderr)
        return 4
    try:
        start()
    except Exception as e:  # noqa: BLE001 -- wasm3 reports traps as RuntimeError
        if state["exit"] is not None:
            return state["exit"]
        sys.stdout.flush()
        print(f"wasm3: trap: {e}", file=sys.stderr)
        return 134
    return 0


if __name__ == "__main__":
    sys.exit(main())
