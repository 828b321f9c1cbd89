#!/usr/bin/env bash
# The main job on a bundled example: a C program that stores `int get_name(int)` in a slot typed
# `int (*)(int, void *)` and calls it (CPython's getter idiom). Native ABIs tolerate the cast;
# wasm traps. Runs the committed fixture before and after `wasmfix` in node's WASI.
#
#   bash scripts/demo.sh                  builds wasmfix with cargo; needs node 20 or later
#   WASMFIX=wasmfix bash scripts/demo.sh  uses that wasmfix instead (e.g. the one pip installed)
#
# Exit status: the fixed module's (0 when the demo worked).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

module=tests/fixtures/wasm/fpcast.O2.wasm
fixed=target/demo/fpcast.O2.fixed.wasm
run() { node --experimental-wasi-unstable-preview1 --no-warnings scripts/run-wasi.mjs "$@"; }

if [[ -z "${WASMFIX:-}" ]]; then
    cargo build --release --quiet
    WASMFIX=target/release/wasmfix
fi
mkdir -p target/demo
echo "== before: $module getter"
run "$module" getter 2>&1 && echo "(exit 0)" || echo "(exit $?)"
echo
echo "== wasmfix $module -o $fixed -v"
"$WASMFIX" "$module" -o "$fixed" -v 2>&1
echo
echo "== after: $fixed getter"
status=0
run "$fixed" getter 2>&1 || status=$?
echo "(exit $status)"
exit "$status"
