#!/usr/bin/env bash
# TLS figures: switchboard against nginx with the same ECDSA P-256 certificate, TLS 1.3,
# on loopback, in alternating rounds (switchboard first in each round).
#
#   benches/tls.sh                        # 3 rounds of 10 s per measurement
#   benches/tls.sh --rounds 1 --duration 2    # a smoke test
#   benches/tls.sh path/to/switchboard    # another build (default target/release/switchboard)
#
# (a) HTTPS, a 1 KiB file, keep-alive: `wrk -t2 -c64 -dDURs https://127.0.0.1:PORT/1k`
#     against `switchboard http --tls-cert --tls-key` and nginx (`ssl_protocols TLSv1.3`,
#     worker_processes auto, access_log off, sendfile).
# (b) New full handshakes per second, with one request or one echo each:
#     `switchboard bench connect --tls` (a new session every connection, no resumption;
#     64 loops) against switchboard's TLS echo, its TLS http, and nginx; cross-checked
#     with independent clients: wrk with `Connection: close` (a new connection, and
#     handshake, per request; wrk resumes no sessions) and `openssl s_time -new` (one
#     connection at a time, so it is latency-bound: compare it only across servers).
#
# Uses wrk, nginx and openssl (installed with apt-get if missing, as root). Binds
# 127.0.0.1 ports 17240-17242 only (it stops if one is taken); every run is bounded by `timeout`; everything it
# starts is stopped when it exits. Progress to stderr, one line per figure to stdout.
set -euo pipefail

ROUNDS=3
DUR=10
SB=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "tls.sh: unknown option $1" >&2; exit 2 ;;
        *) SB=$(realpath "$1") ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
if [ -z "$SB" ]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
    SB=$PWD/target/release/switchboard
fi
say() { echo "tls.sh: $*" >&2; }

export PATH="$PATH:/usr/sbin:/sbin"
need=()
for tool in wrk nginx openssl; do command -v $tool >/dev/null || need+=($tool); done
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { say "missing ${need[*]}: install them, or run as root"; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/switchboard-tls.XXXXXX)
chmod 755 "$WORK" # nginx's workers run as another user
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.05
    done
    say "nothing listens on 127.0.0.1:$1; logs:"
    tail -n 5 "$WORK"/*.log >&2
    exit 1
}

cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem 2>/dev/null
chmod 644 key.pem # nginx's master reads it as root; switchboard only warns
mkdir -p site
head -c 1024 /dev/urandom >site/1k
chmod -R a+rX site

for port in 17240 17241 17242; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        say "127.0.0.1:$port is taken by another program: stop it first"
        exit 1
    fi
done
start sb_http "$SB" -q http --listen 127.0.0.1:17240 --root site --tls-cert cert.pem --tls-key key.pem
start sb_echo "$SB" -q echo --tcp 127.0.0.1:17241 --tls-cert cert.pem --tls-key key.pem
cat >nginx.conf <<CFG
worker_processes auto;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:17242 ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        root $WORK/site;
    }
}
CFG
start nginx nginx -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
for port in 17240 17241 17242; do wait_port $port; done
BOUND=$((DUR + 30))

# wrk's requests/s; nothing if any request failed or was not a 2xx.
wrk_rate() {
    local out
    out=$(timeout -k 5 "$BOUND" wrk "$@" 2>&1) || true
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        say "wrk $*: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ')"
        return
    fi
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}
# bench connect --tls: handshakes/s and p50/p99 µs of connect + handshake.
handshakes() {
    timeout -k 5 "$BOUND" "$SB" bench connect "127.0.0.1:$1" --tls --ca cert.pem --conns 64 \
        --duration "${DUR}s" --json 2>>bench.err |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print("%.0f p50 %dus p99 %dus" % (r["ops_per_sec"], l["p50"], l["p99"]))' ||
        true
}
s_time() {
    timeout -k 5 "$BOUND" openssl s_time -new -connect "127.0.0.1:$1" -time "$DUR" -tls1_3 2>&1 |
        awk '/connections in .* real seconds/ {print $1 / $4}' || true
}

for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS"
    echo "round $round  https 1k keep-alive  switchboard  $(wrk_rate -t2 -c64 -d"${DUR}s" https://127.0.0.1:17240/1k) req/s"
    echo "round $round  https 1k keep-alive  nginx        $(wrk_rate -t2 -c64 -d"${DUR}s" https://127.0.0.1:17242/1k) req/s"
    echo "round $round  bench connect --tls  switchboard echo  $(handshakes 17241) handshakes/s"
    echo "round $round  bench connect --tls  switchboard http  $(handshakes 17240) handshakes/s"
    echo "round $round  bench connect --tls  nginx             $(handshakes 17242) handshakes/s"
    close=(-t2 -c64 -d"${DUR}s" -H 'Connection: close')
    echo "round $round  wrk Connection: close  switchboard  $(wrk_rate "${close[@]}" https://127.0.0.1:17240/1k) req/s"
    echo "round $round  wrk Connection: close  nginx        $(wrk_rate "${close[@]}" https://127.0.0.1:17242/1k) req/s"
    echo "round $round  openssl s_time -new    switchboard  $(s_time 17240) conn/s"
    echo "round $round  openssl s_time -new    nginx        $(s_time 17242) conn/s"
done
if [ -s bench.err ]; then
    say "bench said:"
    sort bench.err | uniq -c | head >&2
fi
