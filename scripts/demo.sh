#!/usr/bin/env bash
# The main job of the README: installs the build prerequisites (scripts/setup.sh: protoc), then
# runs the multi-process demo (smem-demo) on the embedded defaults: in-process store, sim
# device, loopback. Arguments go to smem-demo (e.g. --ranks 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release --bin smem-demo -- "$@"
