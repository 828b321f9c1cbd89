#!/usr/bin/env bash
# The main job on a bundled example: a C program that stores `int get_name(int)` in a slot typed
# `int (*)(int, void *)` and calls it (CPython's getter idiom). Native ABIs tolerate the cast;
# wasm traps. Runs the committed fixture before and after `wasmfix` in node's WASI.
#
#   bash scripts/demo.sh            needs cargo and node (20 or later)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

module=tests/fixtures/wasm/fpcast.O2.wasm
fixed=target/demo/fpcast.O2.fixed.wasm
run() { node --experimental-wasi-unstable-preview1 --no-warnings scripts/run-wasi.mjs "$@"; }

cargo build --release --quiet
mkdir -p target/demo
echo "== before: $module getter"
run "$module" getter 2>&1 && echo "(exit 0)" || echo "(exit $?)"
echo
echo "== wasmfix $module -o $fixed -v"
target/release/wasmfix "$module" -o "$fixed" -v 2>&1
echo
echo "== after: $fixed getter"
run "$fixed" getter 2>&1 && echo "(exit 0)" || echo "(exit $?)"
