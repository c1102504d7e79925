#!/usr/bin/env bash
# The test command of the README: installs the reference wheel (memfabric-hybrid 1.3.0, from
# PyPI) into target/venv-mf for the interop tests, builds everything in release mode, and runs
# every test of the workspace. Fails loudly if the wheel cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/interop/setup-venv.sh target/venv-mf
export SMEM_REF_PYTHON="$PWD/target/venv-mf/bin/python"
cargo test --workspace --release --no-fail-fast
