#!/usr/bin/env bash
# Runs every test of the project; .ci/run runs exactly this.
#   1. Rust: cargo fmt --check, clippy -D warnings, cargo test.
#   2. C, through meson (bootstrapped by scripts/bootstrap.sh): build/ (the library built by
#      cargo, quickstart, header checks as C99/C11/C++, capi-tests/), then build-asan/ (the same
#      C code under -fsanitize=address,undefined; the Rust library itself is not instrumented).
#   3. scripts/check-install.sh: meson install into a DESTDIR, build a pkg-config consumer.
#   3b. scripts/test-python.sh: the Python package's pytest suite, against build/'s library.
#   3c. nbdkit/tests: the nbdkit plugin serving add-cow images to qemu-img and qemu-io, also
#       through `build/addcow serve` (test_cli_serve.py).
#   3d. scripts/test-qemu.sh: QEMU 10.0.2's tools patched with qemu/ (the add-cow driver), built
#       against build/'s libaddcow; qemu/tests and qemu-iotests -add-cow through them. Fails
#       (never skips) when it cannot fetch or build QEMU.
#   3e. scripts/fuzz-smoke.sh: each cargo-fuzz target for a short bounded time (nightly only;
#       a loud warning, not a failure, without nightly).
#   4. include/addcow.h, which every build regenerates, must equal the committed one.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "bootstrap"
source scripts/bootstrap.sh

step "cargo fmt / clippy / test"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test

# meson setup DIR [OPTIONS...]: configures DIR, or reconfigures it with OPTIONS when it is
# already a build directory (wiping it when this meson cannot reuse it).
meson_setup() {
    local dir=$1
    shift
    if [[ -f $dir/meson-private/coredata.dat ]]; then
        meson setup --reconfigure "$dir" "$@" || meson setup --wipe "$dir" "$@"
    else
        meson setup "$dir" "$@"
    fi
}

step "meson: build/"
meson_setup build
meson compile -C build
meson test -C build --print-errorlogs

# ASan and UBSan on the C side. No ASAN_OPTIONS of our own: libasan is the executables' first
# DT_NEEDED (no LD_PRELOAD), it intercepts the Rust library's malloc/free too, and leak
# detection stays on; meson test sets halt_on_error/abort_on_error for both sanitizers. Meson
# builds no shared library of its own here, so b_lundef needs no change.
step "meson: build-asan/ (-Db_sanitize=address,undefined)"
meson_setup build-asan -Db_sanitize=address,undefined
meson compile -C build-asan
meson test -C build-asan --print-errorlogs

step "install check"
bash scripts/check-install.sh build

step "python: pytest (python/tests)"
ADDCOW_LIB="$PWD/build/libaddcow.so.1" bash scripts/test-python.sh -q

step "nbdkit: the plugin with qemu-img and qemu-io (nbdkit/tests)"
plugin="$PWD/build/nbdkit/nbdkit-addcow-plugin.so"
[[ -f $plugin ]] || { echo "$plugin was not built: is nbdkit-plugin-dev installed?" >&2; exit 1; }
ADDCOW_LIB="$PWD/build/libaddcow.so.1" NBDKIT_PLUGIN="$plugin" build/pyvenv/bin/pytest -q nbdkit/tests

step "qemu: patched QEMU tools with the add-cow driver, end-to-end tests, qemu-iotests (scripts/test-qemu.sh)"
bash scripts/test-qemu.sh

step "fuzz: each target ${FUZZ_SECONDS:-20} s (scripts/fuzz-smoke.sh; warns when nightly is missing)"
bash scripts/fuzz-smoke.sh

step "header freshness"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
    git ls-files --error-unmatch include/addcow.h >/dev/null 2>&1; then
    git diff --exit-code -- include/addcow.h || {
        echo "include/addcow.h changed during the build: commit the regenerated header" >&2
        exit 1
    }
    echo "include/addcow.h matches the committed header"
else
    echo "not a git checkout (or include/addcow.h untracked): header freshness check skipped"
fi

step "all tests passed"
