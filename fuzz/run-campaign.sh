#!/usr/bin/env bash
# A longer fuzzing campaign of one target: fuzz/run-campaign.sh TARGET MINUTES [JOBS]
# Runs cargo-fuzz (nightly) on fuzz/corpus/TARGET (seeds included), then prints the executions,
# coverage (cov = edges, ft = features), corpus size and crashes. Exit status 1 if it crashed.
# Crash inputs land in fuzz/artifacts/TARGET/; copy each into fuzz/regressions/TARGET/ (for
# capi_calls, capi/tests/fuzz_regressions.rs replays that folder on stable) and fix the bug.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: run-campaign.sh TARGET MINUTES [JOBS]}
minutes=${2:?usage: run-campaign.sh TARGET MINUTES [JOBS]}
jobs=${3:-1}
secs=$(( minutes * 60 ))
mkdir -p "corpus/$target" "artifacts/$target"
log=$(mktemp "${TMPDIR:-/tmp}/smem-fuzz-$target.XXXXXX.log")
before=$(find "artifacts/$target" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
echo "fuzzing $target for $minutes min ($jobs job(s)); log: $log"
set +e
cargo +nightly fuzz run "$target" "corpus/$target" --jobs "$jobs" -- \
    -max_total_time="$(( secs > 0 ? secs : 20 ))" -max_len=4096 -timeout=30 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1
rc=$?
set -e
after=$(find "artifacts/$target" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
# (With --jobs N, libFuzzer writes one fuzz-K.log per job here.)
logs=("$log")
for f in fuzz-*.log; do if [[ -e $f ]]; then logs+=("$f"); fi; done
execs=$(cat "${logs[@]}" | awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}')
last=$(cat "${logs[@]}" | grep -E '^#[0-9]+' | tail -n 1 || true)
cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
corpus=$(find "corpus/$target" -type f | wc -l)
rm -f fuzz-*.log
echo "target=$target minutes=$minutes execs=$execs cov=${cov:-?} ft=${ft:-?} corpus=$corpus new_crashes=$(( after - before )) exit=$rc"
if (( after > before )); then
    find "artifacts/$target" -newer "$log" -type f
    exit 1
fi
if (( rc != 0 )); then
    tail -n 40 "$log"
    exit 1
fi
