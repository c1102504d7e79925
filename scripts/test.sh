#!/usr/bin/env bash
# The test command of the README. Installs the reference wheel for the interop tests, then
# runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --release --bins --lib
cargo test --workspace --release
