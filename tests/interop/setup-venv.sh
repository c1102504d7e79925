#!/usr/bin/env bash
# Create (idempotently) a Python venv with the reference wheel memfabric-hybrid 1.3.0.
#   tests/interop/setup-venv.sh [VENV_DIR]      (default: target/venv-mf)
# Needs python3.11 (the wheel is cp311, x86_64 manylinux) and access to PyPI.
# Override the interpreter with PYTHON=/path/to/python3.11.
set -euo pipefail
VENV="${1:-target/venv-mf}"
PKG="memfabric-hybrid==1.3.0"

die() {
    echo "" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! setup-venv.sh FAILED: $*" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    exit 1
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    'import importlib.metadata as m, sys; sys.exit(0 if m.version("memfabric_hybrid") == "1.3.0" else 1)' 2>/dev/null; then
    echo "setup-venv.sh: $VENV already has memfabric-hybrid 1.3.0"
    exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for c in python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
            PY="$c"; break
        fi
    done
fi
[ -n "$PY" ] || die "no python3.11 found (the wheel is cp311); set PYTHON=/path/to/python3.11"
[ "$(uname -m)" = "x86_64" ] || die "the memfabric-hybrid wheel exists for x86_64 only (this is $(uname -m))"

"$PY" -m venv "$VENV" || die "python -m venv $VENV failed"
"$VENV/bin/pip" install --disable-pip-version-check -q "$PKG" || die "pip install $PKG failed (PyPI reachable?)"
"$VENV/bin/python" -c 'import memfabric_hybrid; memfabric_hybrid.create_config_store' \
    || die "memfabric_hybrid installed but does not import"
echo "setup-venv.sh: ready: $VENV ($PKG)"
