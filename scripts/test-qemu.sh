#!/usr/bin/env bash
# QEMU with the add-cow driver of qemu/ (scripts/test.sh runs this; CI must not skip it):
#   1. scripts/qemu-build.sh: patched QEMU 10.0.2 tools against this tree's libaddcow;
#   2. qemu/tests: our end-to-end tests through those tools (pytest, with the Python package
#      over build/'s libaddcow as the reference);
#   3. qemu-iotests: ./check -add-cow on the auto group less the tests that start a VM
#      (qemu/iotests/needs-vm) plus those add-cow.patch enables (qemu/iotests/README.md).
#      Every test must pass or be "not run"; the pass list is printed.
#   scripts/test-qemu.sh [--no-iotests]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

qemu_build=$(bash scripts/qemu-build.sh build | tail -1)
[[ -x $qemu_build/qemu-img ]] || { echo "test-qemu: no qemu-img in $qemu_build" >&2; exit 1; }

echo "--- qemu/tests (end-to-end through the patched tools)"
QEMU_BUILD=$qemu_build ADDCOW_LIB=$root/build/libaddcow.so.1 \
    build/pyvenv/bin/pytest -q qemu/tests

[[ ${1:-} == --no-iotests ]] && exit 0
echo "--- qemu-iotests -add-cow"
cd "$qemu_build/tests/qemu-iotests"
mapfile -t auto < <(QEMU_PROG=$root/qemu/iotests/qemu-system-stub ./check -n -add-cow -g auto)
mapfile -t needs_vm < <(grep -v '^#' "$root/qemu/iotests/needs-vm")
tests=()
for t in "${auto[@]}" 004 017 018 019 020 025 027 034 037 038 043 050 063 069 072 104 111 126 iothreads-resize; do
    [[ " ${needs_vm[*]} ${tests[*]} " == *" $t "* ]] || tests+=("$t")
done
rm -rf scratch
log=$root/build-qemu/iotests.log
if ! QEMU_PROG=$root/qemu/iotests/qemu-system-stub ./check -add-cow "${tests[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "test-qemu: qemu-iotests failed (log: $log)" >&2
    exit 1
fi
# check redraws each line after a carriage return: the last drawing says pass or not run.
echo "passed: $(tr '\r' '\n' <"$log" | awk '$2 == "pass" {print $1}' | tr '\n' ' ')"
echo "$(grep '^Not run:' "$log" || true)"
