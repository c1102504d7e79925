#!/usr/bin/env bash
# Build prerequisites beyond the Rust toolchain, gcc and Python, installed when missing:
# protoc (Debian `protobuf-compiler`), which the etcd client's build script (etcd-client ->
# tonic-prost-build) runs to generate its gRPC code. Sourced or run by scripts/demo.sh and
# scripts/test.sh, so the README's commands work on a fresh machine. Set PROTOC to use another
# protoc.
set -euo pipefail
if [ -n "${PROTOC:-}" ] || command -v protoc >/dev/null 2>&1; then
  exit 0
fi
echo "setup.sh: protoc not found; installing Debian's protobuf-compiler (needed to build the etcd client)"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler); then
  echo "setup.sh: could not install protobuf-compiler: install protoc yourself (or set PROTOC=/path/to/protoc)" >&2
  exit 1
fi
