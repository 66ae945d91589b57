#!/usr/bin/env bash
# Checks that a change leaves keywatch's detection outputs byte for byte as
# they were: generates labelled traffic for seeds 1-3 (1,000 keys, 10 days),
# replays it, runs the default demo, and compares the SHA-256 of every
# alerts.jsonl and revocations.jsonl with tests/golden/outputs.sha256.
#
#   bash tests/golden/check.sh            compare (exit 1 on any difference)
#   bash tests/golden/check.sh --record   rewrite the digests, for a change
#                                         meant to alter detection; say so in
#                                         its commit message
#   bash tests/golden/check.sh --no-demo  skip the one-minute demo
#
# Needs only the Rust toolchain; builds in release; takes about 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."

record=0
demo=1
for arg in "$@"; do
    case "$arg" in
        --record) record=1 ;;
        --no-demo) demo=0 ;;
        *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done

digests=tests/golden/outputs.sha256
if [[ -n "${KEYWATCH_GOLDEN_DIR:-}" ]]; then
    work="$KEYWATCH_GOLDEN_DIR"
else
    # A scratch folder (3 GB of generated input) goes when the outputs match.
    work="$(mktemp -d)"
    scratch=1
fi
cargo build --release --quiet
bin=target/release/keywatch

for seed in 1 2 3; do
    input="$work/generated-$seed"
    if [[ ! -f "$input/events.jsonl" ]]; then
        "$bin" generate --keys 1000 --days 10 --seed "$seed" --out "$input" >/dev/null
    fi
    rm -rf "$work/seed-$seed"
    "$bin" replay --input "$input/events.jsonl" --geoip-city "$input/geoip-city.mmdb" \
        --geoip-asn "$input/geoip-asn.mmdb" --out "$work/seed-$seed" --no-progress >/dev/null
done
files=(seed-{1,2,3}/{alerts,revocations,revocations.shadow,digests}.jsonl)
if [[ $demo == 1 ]]; then
    rm -rf "$work/demo"
    "$bin" demo --plain --out "$work/demo" >/dev/null
    # The demo runs the live pipeline; its source_spray alerts come from the
    # source stage, which judges behind every key partition's watermark, so
    # they are the same each run as every other alert.
    files+=(demo/alerts.jsonl demo/revocations.jsonl)
fi

if [[ $record == 1 ]]; then
    (cd "$work" && sha256sum "${files[@]}") >"$digests"
    echo "recorded $digests"
    [[ -n "${scratch:-}" ]] && rm -rf "$work"
    exit 0
fi
status=0
for file in "${files[@]}"; do
    expected="$(grep -F " $file" "$digests" | cut -d' ' -f1)"
    actual="$(sha256sum <"$work/$file" | cut -d' ' -f1)"
    if [[ "$expected" == "$actual" ]]; then
        echo "same       $file"
    else
        echo "DIFFERENT  $file (outputs kept in $work)"
        status=1
    fi
done
[[ $status == 0 && -n "${scratch:-}" ]] && rm -rf "$work"
exit $status
