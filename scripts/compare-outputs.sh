#!/usr/bin/env bash
# Compares what two wasmfix builds write for the same inputs: an engine change that should not
# change behaviour is checked with this before it is merged.
#
#   bash scripts/compare-outputs.sh OLD_WASMFIX NEW_WASMFIX [INPUT.wasm|INPUT.wat ...]
#
# Inputs default to the corpus (../corpus-cache, see ../shared/corpus/fetch.sh), every
# tests/fixtures/wasm/*.wasm and every tests/wat/*.wat. Each input runs under: --passes none,
# the default pipeline, --harden, --passes fpcast --fpcast-diagnose, and `inspect --json` (the
# facts). For each run the script compares exit status, stderr and output bytes. Outputs that differ are
# compared again without custom sections, as text (`wasm-tools strip --all | wasm-tools print`):
# "same code" then means every section but the custom ones is the same module, the custom
# sections that differ are listed.
#
# Prints one line per (input, mode) and a summary; exit status 1 when anything differs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
old=$(realpath "$1")
new=$(realpath "$2")
shift 2
inputs=("$@")
if [[ ${#inputs[@]} -eq 0 ]]; then
    if [[ -d ../corpus-cache ]]; then
        while IFS=$'\t' read -r _ path _; do inputs+=("$path"); done \
            < <(bash ../shared/corpus/fetch.sh ../corpus-cache 2>/dev/null)
    fi
    inputs+=(tests/fixtures/wasm/*.wasm tests/wat/*.wat)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

identical=0
differ=0
for input in "${inputs[@]}"; do
    name=$(basename "$input")
    if [[ $input == *.wat ]]; then
        wasm-tools parse "$input" -o "$work/$name.wasm" || { echo "$name: cannot parse"; continue; }
        input="$work/$name.wasm"
    fi
    for mode in none default harden diagnose inspect; do
        case $mode in
            none) args=(--passes none) ;;
            default) args=() ;;
            harden) args=(--harden) ;;
            diagnose) args=(--passes fpcast --fpcast-diagnose) ;;
        esac
        for side in old new; do
            bin=${!side}
            out="$work/$side.wasm"
            rm -f "$out"
            if [[ $mode == inspect ]]; then
                "$bin" inspect --json "$input" >"$out" 2>"$work/$side.err"
            else
                "$bin" "$input" -o "$out" "${args[@]}" 2>"$work/$side.err"
            fi
            echo $? >"$work/$side.rc"
        done
        what=()
        cmp -s "$work/old.rc" "$work/new.rc" || what+=("exit status $(cat "$work/old.rc") -> $(cat "$work/new.rc")")
        cmp -s "$work/old.err" "$work/new.err" || what+=("stderr")
        if [[ -e $work/old.wasm || -e $work/new.wasm ]] && ! cmp -s "$work/old.wasm" "$work/new.wasm"; then
            if [[ $mode == inspect ]]; then
                what+=("facts")
            else
                for side in old new; do
                    wasm-tools strip --all "$work/$side.wasm" -o "$work/$side.stripped.wasm" 2>/dev/null
                    wasm-tools print "$work/$side.stripped.wasm" >"$work/$side.wat" 2>/dev/null
                done
                if cmp -s "$work/old.wat" "$work/new.wat"; then
                    sections=$(python3 - "$work/old.wasm" "$work/new.wasm" <<'EOF'
import sys
def customs(path):
    b, out, i = open(path, "rb").read(), {}, 8
    def leb(i):
        n = s = 0
        while True:
            n |= (b[i] & 0x7f) << s; s += 7; i += 1
            if b[i - 1] < 0x80: return n, i
    while i < len(b):
        sid = b[i]; size, j = leb(i + 1); end = j + size
        if sid == 0:
            n, k = leb(j); out[b[k:k + n].decode()] = b[k + n:end]
        i = end
    return out
a, c = customs(sys.argv[1]), customs(sys.argv[2])
print(" ".join(sorted(k for k in set(a) | set(c) if a.get(k) != c.get(k))) or "none")
EOF
)
                    what+=("bytes ($(stat -c %s "$work/old.wasm") -> $(stat -c %s "$work/new.wasm")); same code; custom sections that differ: $sections")
                else
                    what+=("bytes and code")
                fi
            fi
        fi
        if [[ ${#what[@]} -eq 0 ]]; then
            identical=$((identical + 1))
            echo "$name $mode: identical (exit $(cat "$work/new.rc"))"
        else
            differ=$((differ + 1))
            echo "$name $mode: DIFFERENT: $(IFS=';'; echo "${what[*]}")"
        fi
    done
done
echo "identical: $identical, different: $differ"
[[ $differ -eq 0 ]]
