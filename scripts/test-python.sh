#!/usr/bin/env bash
# Builds libaddcow, installs the Python package (python/) into a virtualenv under build/pyvenv
# and runs its pytest suite against the freshly built library. Extra arguments go to pytest.
#   ADDCOW_LIB         a library already built (scripts/test.sh passes meson's): no cargo build
#   CARGO_TARGET_DIR   where cargo builds (default: ./target)
#   HYPOTHESIS_PROFILE addcow (default, quick) or thorough (1000 state-machine runs)
set -euo pipefail
if [[ -n "${CARGO_TARGET_DIR:-}" && "${CARGO_TARGET_DIR}" != /* ]]; then
    CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
    export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
root="$PWD"

if [[ -n "${ADDCOW_LIB:-}" ]]; then
    lib=$(realpath "$ADDCOW_LIB")
else
    cargo build --release
    lib="${CARGO_TARGET_DIR:-$root/target}/release/libaddcow.so"
fi
[[ -f "$lib" ]] || { echo "test-python.sh: $lib was not built" >&2; exit 1; }

venv="$root/build/pyvenv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check pytest hypothesis
# numpy exercises the zero-copy buffer paths; in CI its tests must run, elsewhere they may skip.
if ! "$py" -m pip install --quiet --disable-pip-version-check numpy; then
    [[ -z ${CI:-} ]] || { echo "test-python.sh: CI is set and numpy did not install" >&2; exit 1; }
    echo "test-python.sh: numpy did not install; its tests are skipped" >&2
fi
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
rm -rf python/build python/addcow.egg-info

# Run from python/ with the pytest script (not `python -m pytest`, which would put the source
# tree on sys.path): the tests use the installed package.
cd python
ADDCOW_LIB="$lib" exec "$venv/bin/pytest" tests "$@"
