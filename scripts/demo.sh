#!/usr/bin/env bash
# Builds the library and runs the demos: the product's walk-through (examples/demo.rs, checked
# with qemu-img) and the C quickstart, built with meson in build/ against libaddcow.so (meson,
# ninja and pkg-config are installed if missing; qemu-utils by scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

echo "=== The life of a VM disk (examples/demo.rs): create over a golden image, write while it hydrates, detach"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo run --quiet --example demo -- "$dir"
echo
echo "=== Checked by QEMU's tools: the detached vm.raw is a plain raw disk holding what the guest saw"
qemu-img info -f raw "$dir/vm.raw" | head -3
qemu-img compare -f raw -F raw "$dir/vm.raw" "$dir/expected.raw"

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
