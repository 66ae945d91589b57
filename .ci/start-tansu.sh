#!/usr/bin/env bash
# Starts a tansu broker (Apache Kafka compatible, in-memory storage) in the
# background for keywatch's Kafka integration tests, installing tansu with
# cargo first when it is missing. Exports nothing: point the tests at it with
#   KEYWATCH_TEST_BROKERS=127.0.0.1:${TANSU_PORT:-19092} cargo test --test it kafka_tansu
# `bash .ci/start-tansu.sh stop` stops the broker this script started.
set -euo pipefail

host=127.0.0.1
port="${TANSU_PORT:-19092}"
state_dir="${TANSU_STATE_DIR:-${TMPDIR:-/tmp}/keywatch-tansu-$port}"
pid_file="$state_dir/broker.pid"
log_file="$state_dir/broker.log"

answers() {
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if [[ "${1:-start}" == "stop" ]]; then
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        kill "$(cat "$pid_file")"
        echo "stopped tansu ($(cat "$pid_file"))"
    fi
    rm -f "$pid_file"
    exit 0
fi

tansu_bin="$(command -v tansu || true)"
if [[ -z "$tansu_bin" && -x "$HOME/.cargo/bin/tansu" ]]; then
    tansu_bin="$HOME/.cargo/bin/tansu"
fi
if [[ -z "$tansu_bin" ]]; then
    echo "installing tansu (cargo install, several minutes)"
    cargo install tansu --locked --features dynostore
    tansu_bin="$HOME/.cargo/bin/tansu"
fi

mkdir -p "$state_dir"
if answers; then
    echo "a broker already answers on $host:$port; using it"
else
    nohup "$tansu_bin" broker \
        --listener-url "tcp://$host:$port" \
        --advertised-listener-url "tcp://$host:$port" \
        --storage-engine memory://tansu/ \
        >"$log_file" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 150); do
        if answers; then
            break
        fi
        if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
            echo "tansu exited; its log:" >&2
            cat "$log_file" >&2
            exit 1
        fi
        sleep 0.2
    done
    if ! answers; then
        echo "tansu did not answer on $host:$port within 30s; its log:" >&2
        cat "$log_file" >&2
        exit 1
    fi
fi

# The topics of config/kafka.example.toml, so `keywatch run` works against
# this broker too; the tests create their own, uniquely named.
create_topic() {
    local name="$1"
    shift
    if "$tansu_bin" topic create --broker "tcp://$host:$port" "$@" "$name" >/dev/null 2>&1; then
        echo "created topic $name"
    else
        echo "topic $name not created (it may exist already)"
    fi
}
for topic in keywatch-access keywatch-repartition keywatch-alerts keywatch-revocations keywatch-digests keywatch-by-source keywatch-dead-letter; do
    create_topic "$topic" --partitions 3
done
create_topic keywatch-changelog --partitions 3 --config cleanup.policy=compact
for topic in keywatch-revocations-shadow keywatch-revocation-acks; do
    create_topic "$topic" --partitions 3
done
# One partition each: one revocation gate judges every key; one order of
# kill-switch messages.
for topic in keywatch-revocation-candidates keywatch-control; do
    create_topic "$topic" --partitions 1
done

echo "tansu ready on $host:$port (log: $log_file)"
echo "run the Kafka tests with KEYWATCH_TEST_BROKERS=$host:$port"
