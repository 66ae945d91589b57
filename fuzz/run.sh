#!/usr/bin/env bash
# Runs fuzz targets one after the other, each on one core at low priority,
# and prints one line per target: executions asked for, exit code, seconds.
# docs/FUZZING.md records the runs made with it. Usage:
#   bash fuzz/run.sh RUNS TARGET...        e.g. bash fuzz/run.sh 10000000 decode_canonical
# Each target reads its seeds from fuzz/seeds/TARGET and keeps what it
# finds in fuzz/corpus/TARGET; a crash leaves its input in
# fuzz/artifacts/TARGET and the libFuzzer log in $FUZZ_LOGS/TARGET.log.
set -uo pipefail
cd "$(dirname "$0")"
runs="$1"
shift
logs="${FUZZ_LOGS:-${TMPDIR:-/tmp}/keywatch-fuzz-logs}"
mkdir -p "$logs"
for target in "$@"; do
    mkdir -p "corpus/$target"
    started=$SECONDS
    RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run --sanitizer none --debug-assertions "$target" \
        "corpus/$target" "seeds/$target" -- \
        -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1
    status=$?
    rm -f /dev/shm/keywatch-fuzz-snapshot-*.json
    echo "$target runs=$runs exit=$status seconds=$((SECONDS - started)) $(grep -E '^stat::number_of_executed_units' "$logs/$target.log" | tr -s ' ')"
done
