#!/usr/bin/env bash
# Builds everything with meson in build/ (the library through cargo, the `addcow` command, the
# nbdkit plugin when nbdkit's plugin header is installed, the C quickstart) and walks through
# the life of a VM disk with the `addcow` command: an overlay on a golden image, guest writes,
# info, map, hydration with a progress bar, detach; the detached raw disk is then checked with
# qemu-img compare. Then runs the C quickstart. meson, ninja and pkg-config are installed if
# missing; qemu-utils by scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/bootstrap.sh

echo "=== Building with meson in build/ (libaddcow, the addcow command, the C quickstart)"
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
if ! log=$(meson compile -C build 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi

bin=$PWD/build/addcow
plugin=$PWD/build/nbdkit/nbdkit-addcow-plugin.so
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"

# Shows a command (arguments with spaces in single quotes), then runs it.
run() {
    local shown=() arg
    for arg in "$@"; do
        [[ $arg == *' '* ]] && arg="'$arg'"
        shown+=("$arg")
    done
    printf '\n$ %s\n' "${shown[*]}"
    "$@"
}
addcow() { "$bin" "$@"; }

echo
echo "=== The life of a VM disk with the addcow command (in a temporary directory)"
# The golden image: 64 MiB of an installed system, here random bytes.
head -c 64M /dev/urandom >golden.raw
run addcow create -l 2 -b golden.raw -F raw -o vm.raw vm.add-cow
if [[ -f $plugin ]] && command -v nbdkit >/dev/null && command -v qemu-io >/dev/null; then
    echo "# The guest writes 64 KiB at 1 MiB and at 40 MiB, through NBD (nbdkit + the plugin):"
    run addcow serve --run 'qemu-io -f raw -c "write -P 0x42 1M 64k" -c "write -P 0x42 40M 64k" "$nbd"' vm.add-cow
else
    echo "# The guest writes 64 KiB at 1 MiB and at 40 MiB (addcow bench; 'addcow serve' needs nbdkit):"
    run addcow bench -w -q -c 2 -s 64k -o 1M -S 39M --pattern 0x42 vm.add-cow
fi
run addcow info vm.add-cow
run addcow map vm.add-cow
echo "# Copy the rest of the golden image in (Ctrl-C stops cleanly; a rerun resumes):"
run addcow hydrate -p --rate 256M vm.add-cow
run addcow check vm.add-cow
run addcow detach --remove vm.add-cow

echo
echo "=== Checked by QEMU's tools: vm.raw is a plain raw disk holding what the guest saw"
cp golden.raw expected.raw
qemu-io -f raw -c "write -P 0x42 1M 64k" -c "write -P 0x42 40M 64k" expected.raw >/dev/null
run qemu-img compare -f raw -F raw vm.raw expected.raw
cd - >/dev/null

echo
echo "=== C quickstart (examples/quickstart.c), built with meson in build/"
./build/quickstart
