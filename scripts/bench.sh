#!/usr/bin/env bash
# Builds the benchmark harness (bench/addcow-bench.c) with meson in build-bench/ (release, no
# tests) and runs it: libaddcow through its C ABI against pread/pwrite on the same files, in
# one process (README, "Benchmarks"). Then counts, with strace, the syncs of closing an image
# with nothing to write back (the issue's target: none).
#
#   bash scripts/bench.sh                        # the table, about a minute
#   bash scripts/bench.sh --rounds 21 --csv runs.csv --cases rand-read-4k,alloc-write-4k
#   bash scripts/bench.sh --help                 # addcow-bench's options
#
# Arguments go to addcow-bench. Not part of scripts/test.sh: CI does not time things (meson
# builds the harness there, with every target, so it keeps compiling).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

# Configures build-bench/ quietly (meson's output only when it fails): a release build whatever
# build/ is, without the tests and the nbdkit plugin, which the benchmark does not need.
dir=build-bench
opts=(--buildtype=release -Dtests=false -Dnbdkit=disabled)
if [[ -f $dir/meson-private/coredata.dat ]]; then
    log=$(meson setup --reconfigure "$dir" "${opts[@]}" 2>&1) ||
        log=$(meson setup --wipe "$dir" "${opts[@]}" 2>&1) || { printf '%s\n' "$log" >&2; exit 1; }
else
    log=$(meson setup "$dir" "${opts[@]}" 2>&1) || { printf '%s\n' "$log" >&2; exit 1; }
fi
meson compile -C "$dir" bench/addcow-bench >/dev/null
bench=$dir/bench/addcow-bench

"$bench" "$@"
for arg in "$@"; do
    [[ $arg == -h || $arg == --help ]] && exit 0
done

# The syncs of addcow_close on an image with nothing to write back: --prepare-clean makes one
# (in its own process), --open-close opens it read-write, reads 4 KiB and closes it.
echo
if ! command -v strace >/dev/null 2>&1; then
    echo "close-clean: strace not found (apt-get install strace): syncs of close not counted"
    exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/addcow-bench-close.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$bench" --prepare-clean "$tmp"
if ! strace -f -qq -c -o "$tmp/strace" -e trace=fsync,fdatasync,sync_file_range,syncfs,sync,msync \
    "$bench" --open-close "$tmp/clean.add-cow"; then
    echo "close-clean: strace failed (no ptrace here?): syncs of close not counted"
    exit 0
fi
# strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall", nothing when no call.
calls=$(awk '$NF ~ /^(fsync|fdatasync|sync_file_range|syncfs|sync|msync)$/ { n += $4; s = s " " $NF "=" $4 }
             END { printf "%d%s", n, s }' "$tmp/strace")
count=${calls%% *}
if ((count == 0)); then
    echo "close-clean: addcow_close of an image with nothing to write back: 0 sync calls (target 0: ok)"
else
    echo "close-clean: addcow_close of an image with nothing to write back: $count sync calls (${calls#* }) (target 0: MISS)"
fi
