#!/usr/bin/env bash
# Runs one cargo-fuzz target for a bounded time:  bash scripts/fuzz.sh TARGET SECONDS [ARGS...]
#   TARGET: header | ops | capi | lifecycle (fuzz/fuzz_targets/); extra ARGS go to libFuzzer (-jobs=2 ...).
# Needs a nightly toolchain; installs cargo-fuzz (into ~/.cargo/bin) when it is missing.
# Seeds from the committed corpus fuzz/corpus/TARGET and the reproducers in
# fuzz/regressions/TARGET, both read-only; new inputs go to fuzz/work/TARGET (ignored by git).
# Prints libFuzzer's last status line and the execution count. Exits non-zero on a crash,
# printing the artifact's path (fuzz/artifacts/TARGET/).
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# < 2)); then
    echo "usage: $0 TARGET SECONDS [LIBFUZZER_ARGS...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2
[[ -f fuzz/fuzz_targets/$target.rs ]] || { echo "fuzz.sh: no target '$target'" >&2; exit 2; }

cargo +nightly --version >/dev/null 2>&1 || { echo "fuzz.sh: no nightly toolchain" >&2; exit 2; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

# AddressSanitizer for capi, where raw pointers cross the C boundary; header and ops exercise
# safe Rust (their oracle is the assertions and debug assertions) and run ~6x faster without.
# FUZZ_SANITIZER=address|none overrides. Each sanitizer has its own target directory so that
# switching does not rebuild everything.
case $target in
    capi) sanitizer=${FUZZ_SANITIZER:-address} ;;
    *) sanitizer=${FUZZ_SANITIZER:-none} ;;
esac
build=(-s "$sanitizer" --target-dir "fuzz/target/$sanitizer")

root=$PWD
work=$root/fuzz/work/$target
artifacts=$root/fuzz/artifacts/$target
mkdir -p "$work" "$artifacts"
seeds=()
for d in "$root/fuzz/corpus/$target" "$root/fuzz/regressions/$target"; do
    [[ -d $d ]] && seeds+=("$d")
done

cargo +nightly fuzz build "${build[@]}" "$target" 2>&1 | grep -Ev '^\s*(Compiling|Finished|Blocking)' || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# -rss_limit_mb: the targets keep images of a few clusters; 2 GiB means a leak or a blow-up.
cargo +nightly fuzz run "${build[@]}" "$target" "$work" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$@" >"$log" 2>&1 || status=$?

grep -E '^#[0-9]+' "$log" | tail -1 || true
execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{s += $2} END {print s + 0}')
echo "fuzz.sh: $target: $execs executions (time limit ${seconds}s)"
if ((status != 0)); then
    grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written to|Running: ' "$log" | head -20 >&2 || true
    echo "fuzz.sh: $target FAILED (exit $status); full log:" >&2
    tail -60 "$log" >&2
    exit 1
fi
