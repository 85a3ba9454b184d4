#!/usr/bin/env bash
# Chat delivery latency against `ncat --chat`, measured in alternation so that drift in
# the machine's load hits both alike: N rounds of 500 clients with 10 senders, each
# round running switchboard then a fresh ncat, at the full load (60 lines/s per sender:
# 300,000 deliveries/s offered) and at a tenth of it (the fan-out floor: there is next
# to no queueing at 29,000/s, so what is left is what one line's 499 copies cost).
#
#   benches/chat-latency.sh            # 5 rounds of 5 s at each load (about 6 minutes)
#   N=10 DUR=5s benches/chat-latency.sh
#
# Needs ncat (apt-get install ncat). Binds only 127.0.0.1 ports 17130-17131; everything
# it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
DUR=${DUR:-5s}
command -v ncat >/dev/null || { echo "missing: ncat" >&2; exit 1; }
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release --quiet
SB=target/release/switchboard
$SB -q chat --rate 0 --tcp 127.0.0.1:17130 --udp 127.0.0.1:17130 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# Prints "p50 p99 deliveries/s" for one run.
run() {
    $SB bench chat "127.0.0.1:$1" --conns 500 --senders 10 --rate "$2" --size 32 \
        --duration "$DUR" --json 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print(l["p50"], l["p99"], round(r["ops_per_sec"]))'
}

wait_port 17130
results=()
for rate in 60 6; do
    for i in $(seq "$N"); do
        # A fresh ncat each round: it can quit when hundreds of clients leave at once.
        ncat --chat --max-conns 1000 -l 127.0.0.1 17131 >/dev/null 2>&1 &
        ncat_pid=$!
        wait_port 17131
        s=$(run 17130 "$rate")
        c=$(run 17131 "$rate")
        kill "$ncat_pid" 2>/dev/null || true
        wait "$ncat_pid" 2>/dev/null || true
        echo "rate $rate, round $i: switchboard p50 p99 deliveries/s: $s | ncat: $c"
        results+=("$rate $s $c")
    done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
for rate, what in ((60, "300,000 deliveries/s offered"), (6, "30,000 deliveries/s offered (the floor)")):
    r = [x for x in rows if x[0] == rate]
    sb = statistics.median(x[2] for x in r)
    nc = statistics.median(x[5] for x in r)
    print(f"{what}: median p99 switchboard {sb:.0f} µs, ncat {nc:.0f} µs (ratio {sb / nc:.2f}); "
          f"median p50 {statistics.median(x[1] for x in r):.0f} vs {statistics.median(x[4] for x in r):.0f} µs")
'
