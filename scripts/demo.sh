#!/usr/bin/env bash
# Builds the library and runs the demos: the Rust one (cargo) and the C quickstart, built with
# meson in build/ against libaddcow.so (meson, ninja and pkg-config are installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

echo "=== Rust demo (examples/demo.rs)"
cargo run --quiet --example demo

echo
echo "=== C quickstart (examples/quickstart.c), built with meson in build/"
# Configure quietly; show meson's output only when it fails.
if [[ -f build/meson-private/coredata.dat ]]; then
    setup=(meson setup --reconfigure build)
else
    setup=(meson setup build)
fi
if ! log=$("${setup[@]}" 2>&1) && ! log=$(meson setup --wipe build 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi
meson compile -C build quickstart
./build/quickstart
