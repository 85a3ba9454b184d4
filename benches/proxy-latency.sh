#!/usr/bin/env bash
# The proxy's added round-trip latency against HAProxy's, measured in alternation so that
# drift in the machine's load hits both alike: N rounds of one 512-byte ping-pong
# connection through direct echo, the proxy (default threads) and HAProxy (mode tcp,
# default settings), then the medians of what each proxy adds to the direct p50.
#
#   benches/proxy-latency.sh            # 10 rounds of 4 s each (about 3 minutes)
#   N=20 DUR=4s benches/proxy-latency.sh
#
# Needs haproxy (apt-get install haproxy). Binds only 127.0.0.1 ports 17120-17122;
# everything it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
DUR=${DUR:-4s}
export PATH="$PATH:/usr/sbin"
command -v haproxy >/dev/null || { echo "missing: haproxy" >&2; exit 1; }
WORK=$(mktemp -d /tmp/switchboard-latency.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
bg() { "$@" & PIDS+=($!); }

cargo build --release --quiet
SB=target/release/switchboard
bg $SB -q echo --tcp 127.0.0.1:17120
bg $SB -q proxy --listen 127.0.0.1:17121 --upstream 127.0.0.1:17120
cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen echo
    bind 127.0.0.1:17122
    server s1 127.0.0.1:17120
CFG
bg haproxy -db -f "$WORK/haproxy.cfg"
for port in 17120 17121 17122; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done

p50() {
    $SB bench echo "127.0.0.1:$1" --conns 1 --size 512 --duration "$DUR" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p50"])'
}
sb_added=()
ha_added=()
for i in $(seq "$N"); do
    d=$(p50 17120)
    s=$(p50 17121)
    h=$(p50 17122)
    sb_added+=($((s - d)))
    ha_added+=($((h - d)))
    echo "round $i: direct p50 $d µs, proxy $s (+$((s - d))), HAProxy $h (+$((h - d)))"
done
python3 - "${sb_added[*]}" "${ha_added[*]}" <<'PY'
import statistics, sys
sb = [int(x) for x in sys.argv[1].split()]
ha = [int(x) for x in sys.argv[2].split()]
wins = sum(1 for a, b in zip(sb, ha) if a <= b)
print(f"median added p50: proxy +{statistics.median(sb)} µs, HAProxy +{statistics.median(ha)} µs "
      f"(ratio {statistics.median(sb) / statistics.median(ha):.2f}); proxy <= HAProxy in {wins} of {len(sb)} rounds")
PY
