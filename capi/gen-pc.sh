#!/usr/bin/env bash
# Writes the pkg-config file of libsmem from capi/smem.pc.in.
#   capi/gen-pc.sh PREFIX [OUTDIR]
# PREFIX: the install prefix (libsmem.{so,a} in PREFIX/lib, headers in PREFIX/include).
# OUTDIR: where smem.pc goes (default: the current directory); install it as
#         PREFIX/lib/pkgconfig/smem.pc. The version is the workspace's (Cargo.toml).
set -euo pipefail
if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 PREFIX [OUTDIR]" >&2
  exit 2
fi
prefix=$1
outdir=${2:-.}
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' "$here/../Cargo.toml" | head -n1)
if [ -z "$version" ]; then
  echo "$0: no version in [workspace.package] of $here/../Cargo.toml" >&2
  exit 1
fi
case $prefix in
  *'|'*) echo "$0: PREFIX must not contain '|'" >&2; exit 2 ;;
esac
mkdir -p "$outdir"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$here/smem.pc.in" > "$outdir/smem.pc"
echo "$outdir/smem.pc"
