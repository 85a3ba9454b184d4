#!/usr/bin/env bash
# `proxy --udp` against socat forwarding the same datagrams, on loopback, in alternating
# rounds. The upstream is `switchboard echo --udp`; the load is `switchboard bench echo
# --udp` (ping-pong: each client sends its next datagram when the last one is back, so
# a lost datagram shows as a timeout in the table).
#   one client:  socat UDP4-LISTEN:P,reuseaddr UDP4:UPSTREAM (socat's single-peer mode)
#   10 clients:  socat UDP4-RECVFROM:P,fork,reuseaddr UDP4-SENDTO:UPSTREAM (a process
#                per datagram: socat's way to serve many clients)
#
#   benches/udp-socat.sh                      # 5 rounds of 4 s
#   benches/udp-socat.sh --rounds 1 --duration 2
#
# Binds 127.0.0.1 ports 17260-17263 only (stops if one is taken); everything it starts
# is stopped when it exits. Needs socat (apt-get installs it as root).
set -euo pipefail
ROUNDS=5
DUR=4
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        *) echo "udp-socat.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$PWD/target/release/switchboard
if ! command -v socat >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "socat is missing: install it, or run as root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends socat >/dev/null
fi
for port in 17260 17261 17262 17263; do
    if python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', $port))" 2>/dev/null; then :; else
        echo "port $port is taken" >&2
        exit 1
    fi
done
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
"$SB" -q echo --udp 127.0.0.1:17260 >/dev/null 2>&1 &
PIDS+=($!)
"$SB" -q proxy --udp --listen 127.0.0.1:17261 --upstream 127.0.0.1:17260 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

rate() { # target conns -> round trips per second (and timeouts, if any)
    timeout $((DUR + 20)) "$SB" bench echo "127.0.0.1:$1" --udp --conns "$2" --duration "${DUR}s" 2>&1 |
        awk '/^round trips/ { gsub(/[(\/s)]/, "", $4); r = $4 } /timeout/ { t = $0 } END { print r (t ? " (" t ")" : "") }'
}
for round in $(seq "$ROUNDS"); do
    socat UDP4-LISTEN:17262,reuseaddr UDP4:127.0.0.1:17260 &
    single=$!
    socat UDP4-RECVFROM:17263,fork,reuseaddr UDP4-SENDTO:127.0.0.1:17260 &
    forking=$!
    sleep 0.3
    sb1=$(rate 17261 1)
    so1=$(rate 17262 1)
    sb10=$(rate 17261 10)
    so10=$(rate 17263 10)
    kill $single $forking 2>/dev/null || true
    wait $single $forking 2>/dev/null || true
    echo "round $round: 1 client: switchboard $sb1/s, socat $so1/s; 10 clients: switchboard $sb10/s, socat fork $so10/s"
done
