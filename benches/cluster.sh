#!/usr/bin/env bash
# `chat --cluster`: three nodes and one Redis against one node alone, the same load:
# 900 chat clients (300 per node), 30 senders, 300k deliveries/s offered (each line goes
# to 899 clients: 30 × 11.12 lines/s × 899 ≈ 300k/s); then a light load, 3 senders
# (30k/s), where the machine is not saturated. Alternating rounds; per round the
# deliveries/s, p50/p99 (all deliveries, and node-to-node alone), what was lost, and
# Redis's own CPU over the cluster run (utime+stime from /proc, share of one core).
# Everything runs on this one machine: the three nodes, Redis and the load generator
# share its cores.
#
#   benches/cluster.sh                      # 3 rounds of 10 s
#   benches/cluster.sh --rounds 1 --duration 5
#
# Binds 127.0.0.1 ports 17270-17273 and 17279 only (stops if one is taken); everything
# it starts is stopped when it exits. Needs redis-server (apt-get installs it as root).
set -euo pipefail
ROUNDS=3
DUR=10
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$PWD/target/release/switchboard
if ! command -v redis-server >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "redis-server is missing: install it, or run as root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
for port in 17270 17271 17272 17273 17279; do
    if python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null; then :; else
        echo "port $port is taken" >&2
        exit 1
    fi
done
ulimit -n 8192
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
redis-server --port 17279 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS=$!
PIDS+=($REDIS)
sleep 0.3
for port in 17270 17271 17272; do
    "$SB" -q chat --tcp 127.0.0.1:$port --udp 127.0.0.1:$port --rate 0 \
        --cluster redis://127.0.0.1:17279 --cluster-prefix bench --node-name "n$port" >/dev/null 2>&1 &
    PIDS+=($!)
done
"$SB" -q chat --tcp 127.0.0.1:17273 --udp 127.0.0.1:17273 --rate 0 >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # senders, bench chat args... -> "deliveries/s p50 p99 cross-p50 cross-p99 lost"
    local senders=$1
    shift
    timeout $((DUR + 60)) "$SB" bench chat "$@" --conns 900 --senders "$senders" --rate 11.12 --duration "${DUR}s" 2>&1 |
        awk '/^deliveries/ { gsub(/[(\/s)]/, "", $3); r = $3 }
             /^latency/ { p50 = $4; p99 = $6 }
             /^cross-node p50/ { c50 = $4 } /^cross-node p99/ { c99 = $4 }
             /^lost/ { lost = $2 } /^error|^ERROR/ { err = err " " $0 }
             END { printf "%s/s p50 %sµs p99 %sµs cross p50 %sµs cross p99 %sµs lost %s%s\n", r, p50, p99, c50 ? c50 : "-", c99 ? c99 : "-", lost, err }'
}
HZ=$(getconf CLK_TCK)
for senders in 30 3; do
    for round in $(seq "$ROUNDS"); do
        before=$(ticks $REDIS)
        start=$(date +%s.%N)
        cluster=$(run "$senders" 127.0.0.1:17270 --targets 127.0.0.1:17271,127.0.0.1:17272)
        end=$(date +%s.%N)
        after=$(ticks $REDIS)
        redis_cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f%%", 100 * t / hz / (e - s) }')
        single=$(run "$senders" 127.0.0.1:17273)
        echo "$senders senders, round $round: 3 nodes: $cluster (redis CPU $redis_cpu of a core)"
        echo "$senders senders, round $round: 1 node:  $single"
    done
done
