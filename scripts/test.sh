#!/usr/bin/env bash
# Runs every test of the project; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
