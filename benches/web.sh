#!/usr/bin/env bash
# `chat --web` against the same chat over TCP: 500 clients, 10 senders at 60 lines/s
# each (10 × 60 × 499 ≈ 300k deliveries/s offered), alternating rounds, with
# `switchboard bench chat` (`--web`: WebSocket users, one text frame per line); then
# the memory of 10,000 idle users of each kind (the chat's RSS with them joined, less
# its RSS before), from a small Python client that joins them all and waits.
#
#   benches/web.sh                      # 3 rounds of 10 s
#   benches/web.sh --rounds 1 --duration 5
#
# Binds 127.0.0.1 ports 17290-17293 only (stops if one is taken); everything it starts
# is stopped when it exits.
set -euo pipefail
ROUNDS=3
DUR=10
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        *) echo "web.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$PWD/target/release/switchboard
for port in 17290 17291 17292 17293; do
    if python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null; then :; else
        echo "port $port is taken" >&2
        exit 1
    fi
done
ulimit -n "$(ulimit -Hn)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
"$SB" -q chat --tcp 127.0.0.1:17290 --udp 127.0.0.1:17290 --web 127.0.0.1:17291 --rate 0 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
run() { # bench chat args... -> "deliveries/s p50 p99 lost"
    timeout $((DUR + 60)) "$SB" bench chat "$@" --conns 500 --senders 10 --rate 60 --duration "${DUR}s" 2>&1 |
        awk '/^deliveries/ { gsub(/[(\/s)]/, "", $3); r = $3 }
             /^latency/ { p50 = $4; p99 = $6 } /^lost/ { lost = $2 } /^error|^ERROR/ { err = err " " $0 }
             END { printf "%s/s p50 %sµs p99 %sµs lost %s%s\n", r, p50, p99, lost, err }'
}
for round in $(seq "$ROUNDS"); do
    echo "round $round: web: $(run 127.0.0.1:17291 --web)"
    echo "round $round: tcp: $(run 127.0.0.1:17290)"
done
cleanup
PIDS=()

idle() { # web|tcp -> KiB of RSS per idle user
    local kind=$1
    "$SB" -q chat --tcp 127.0.0.1:17292 --udp 127.0.0.1:17292 --web 127.0.0.1:17293 >/dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    python3 - "$kind" "$pid" <<'PY'
import socket, sys, time
kind, pid = sys.argv[1], int(sys.argv[2])
N = 10_000
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
socks = []
for i in range(N):
    s = socket.create_connection(("127.0.0.1", 17293 if kind == "web" else 17292))
    if kind == "web":
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:17293\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
    socks.append(s)
# Every user has its welcome (and what the joins after it sent): all are joined.
for s in socks:
    s.settimeout(30)
    data = b""
    while b"welcome" not in data:
        data += s.recv(65536)
    s.setblocking(False)
# Let the join notices drain (read and discard what each has) until three rounds in a
# row bring nothing, then measure (at most 60 s: the server pings a user after 20 s of
# silence, so a slow drain may never see three empty rounds).
quiet = 0
give_up = time.time() + 60
while quiet < 3 and time.time() < give_up:
    got = 0
    for s in socks:
        try:
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                got += len(d)
        except BlockingIOError:
            pass
    quiet = quiet + 1 if got == 0 else 0
    time.sleep(0.5)
after = rss()
print(f"{kind}: {N} idle users: RSS {before} KiB -> {after} KiB, {(after - before) / N:.2f} KiB each")
PY
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}
idle tcp
idle web
