#!/usr/bin/env bash
# Runs switchboard and the reference programs side by side on loopback and prints the
# medians of several rounds, with ratios against the targets in the issues.
#
#   benches/compare.sh                 # 3 rounds of 5 s per measurement (about 17 minutes on 2 cores)
#   ROUNDS=5 DUR=10s benches/compare.sh
#
# It installs what it needs with apt-get when run as root (haproxy, nginx, ncat, socat,
# wrk), builds switchboard in release mode and the C epoll echo server, and binds only
# 127.0.0.1 ports 17100-17199. Every load is bounded in time; everything it starts is
# stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5s}
WORK=$(mktemp -d /tmp/switchboard-compare.XXXXXX)
chmod 755 "$WORK" # nginx workers run as another user
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need=()
for tool in haproxy nginx ncat socat wrk; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        pkgs=("${need[@]/nginx/nginx-light}")
        apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null
    else
        echo "missing: ${need[*]} (install them, or run as root)" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"

cargo build --release --quiet
SB=target/release/switchboard
cc -O2 -o "$WORK/epoll_echo" benches/epoll_echo.c
cc -O2 -o "$WORK/epoll_chat" benches/epoll_chat.c

mkdir -p "$WORK/site"
head -c 1024 /dev/urandom >"$WORK/site/1k.bin"
head -c 1048576 /dev/urandom >"$WORK/site/1m.bin"

bg() { "$@" >/dev/null 2>&1 & PIDS+=($!); }
bg "$WORK/epoll_echo" 127.0.0.1 17100
bg "$WORK/epoll_chat" 127.0.0.1 17114
bg $SB -q echo --tcp 127.0.0.1:17101
bg $SB -q discard --tcp 127.0.0.1:17102
bg $SB -q proxy --listen 127.0.0.1:17103 --upstream 127.0.0.1:17102
bg $SB -q proxy --listen 127.0.0.1:17106 --upstream 127.0.0.1:17101
bg $SB -q proxy --listen 127.0.0.1:17112 --upstream 127.0.0.1:17101 --threads 0
bg $SB -q proxy --listen 127.0.0.1:17113 --upstream 127.0.0.1:17102 --threads 0
bg socat TCP-LISTEN:17105,fork,reuseaddr,bind=127.0.0.1 TCP:127.0.0.1:17102
bg $SB -q chat --tcp 127.0.0.1:17108 --rate 0
bg $SB -q http --listen 127.0.0.1:17110 --root "$WORK/site"
cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen to_discard
    bind 127.0.0.1:17104
    server s1 127.0.0.1:17102
listen to_echo
    bind 127.0.0.1:17107
    server s1 127.0.0.1:17101
CFG
bg haproxy -db -f "$WORK/haproxy.cfg"
cat >"$WORK/nginx.conf" <<CFG
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
daemon on;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:17111; root $WORK/site; }
}
CFG
nginx -c "$WORK/nginx.conf"
sleep 1

# One number from `switchboard bench ... --json`: FIELD is a Python expression on `r`.
sbjson() {
    local field=$1; shift
    $SB bench "$@" --duration "$DUR" --json 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print($field)"
}
# The same against a fresh `ncat --chat` (it can exit when hundreds of clients leave at
# once: "getpeername ... failed. QUITTING"), so one run's end cannot spoil the next.
ncatjson() {
    ncat --chat --max-conns 1000 -l 127.0.0.1 17109 >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/17109) 2>/dev/null && break; sleep 0.05; done
    sbjson "$@"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
wrk_rate() { wrk -t2 -c64 -d"$DUR" "$1" | awk '/Requests\/sec/ {print $2}'; }
wrk_bytes() {
    # wrk prints binary units (1 GB = 2^30 bytes); report decimal MB/s like `bench`.
    wrk -t2 -c64 -d"$DUR" "$1" | awk '/Transfer\/sec/ {v=$2; u=substr(v, length(v)-1); v=substr(v, 1, length(v)-2);
        m = (u=="GB") ? 1073.741824 : (u=="MB") ? 1.048576 : (u=="KB") ? 0.001024 : 0; printf "%.0f\n", v*m}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A V
record() { V[$1]="${V[$1]:-} $2"; }

for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS ..." >&2
    record echo_c "$(sbjson 'r["ops_per_sec"]' echo 127.0.0.1:17100 --conns 50 --size 512)"
    record echo_sb "$(sbjson 'r["ops_per_sec"]' echo 127.0.0.1:17101 --conns 50 --size 512)"
    for n in 1 16; do
        record "direct_$n" "$(sbjson 'r["mb_per_sec_sent"]' stream 127.0.0.1:17102 --conns $n --size 262144)"
        record "sbproxy_$n" "$(sbjson 'r["mb_per_sec_sent"]' stream 127.0.0.1:17103 --conns $n --size 262144)"
        record "haproxy_$n" "$(sbjson 'r["mb_per_sec_sent"]' stream 127.0.0.1:17104 --conns $n --size 262144)"
        record "socat_$n" "$(sbjson 'r["mb_per_sec_sent"]' stream 127.0.0.1:17105 --conns $n --size 262144)"
        record "sbshared_$n" "$(sbjson 'r["mb_per_sec_sent"]' stream 127.0.0.1:17113 --conns $n --size 262144)"
    done
    record lat_direct "$(sbjson 'r["latency_us"]["p50"]' echo 127.0.0.1:17101 --conns 1 --size 512)"
    record lat_sb "$(sbjson 'r["latency_us"]["p50"]' echo 127.0.0.1:17106 --conns 1 --size 512)"
    record lat_haproxy "$(sbjson 'r["latency_us"]["p50"]' echo 127.0.0.1:17107 --conns 1 --size 512)"
    record lat_sbshared "$(sbjson 'r["latency_us"]["p50"]' echo 127.0.0.1:17112 --conns 1 --size 512)"
    record chat500_sb "$(sbjson 'r["latency_us"]["p99"]' chat 127.0.0.1:17108 --conns 500 --senders 10 --rate 60 --size 32)"
    record chat500_ncat "$(ncatjson 'r["latency_us"]["p99"]' chat 127.0.0.1:17109 --conns 500 --senders 10 --rate 60 --size 32)"
    record chat500_sb_step "$(sbjson 'r["latency_us"]["p99"]' chat 127.0.0.1:17108 --conns 500 --senders 10 --rate 60 --size 32 --in-step)"
    record chat500_ncat_step "$(ncatjson 'r["latency_us"]["p99"]' chat 127.0.0.1:17109 --conns 500 --senders 10 --rate 60 --size 32 --in-step)"
    record chat500_c "$(sbjson 'r["latency_us"]["p99"]' chat 127.0.0.1:17114 --conns 500 --senders 10 --rate 60 --size 32)"
    record chat500_c_rate "$(sbjson 'r["ops_per_sec"]' chat 127.0.0.1:17114 --conns 500 --senders 10 --rate 60 --size 32)"
    record chat500_ncat_rate "$(ncatjson 'r["ops_per_sec"]' chat 127.0.0.1:17109 --conns 500 --senders 10 --rate 60 --size 32)"
    record chat100_sb "$(sbjson 'r["ops_per_sec"]' chat 127.0.0.1:17108 --conns 100 --senders 10 --rate 3030 --size 32)"
    record chat_lost "$(sbjson 'r["counts"].get("lost", 0) + sum(r["errors"].values())' chat 127.0.0.1:17108 --conns 100 --senders 10 --rate 3030 --size 32)"
    record chat100_ncat "$(ncatjson 'r["ops_per_sec"]' chat 127.0.0.1:17109 --conns 100 --senders 10 --rate 3030 --size 32)"
    record http1k_sb "$(wrk_rate http://127.0.0.1:17110/1k.bin)"
    record http1k_nginx "$(wrk_rate http://127.0.0.1:17111/1k.bin)"
    record http1m_sb "$(wrk_bytes http://127.0.0.1:17110/1m.bin)"
    record http1m_nginx "$(wrk_bytes http://127.0.0.1:17111/1m.bin)"
done

m() { echo ${V[$1]} | tr ' ' '\n' | grep -v '^$' | median; }
ratio() { python3 -c "a=float('$1'); b=float('$2'); print(f'{a/b:.2f}' if b else 'n/a')"; }
row() { printf '%-44s %14s %14s %7s   %s\n' "$@"; }
echo
echo "medians of $ROUNDS rounds of $DUR on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d)"
row "measurement" "switchboard" "reference" "ratio" "target"
row "echo 50x512B round trips/s (vs C epoll)" "$(m echo_sb)" "$(m echo_c)" "$(ratio "$(m echo_sb)" "$(m echo_c)")" ">= 0.80"
for n in 1 16; do
    row "proxy $n stream(s) MB/s (vs HAProxy)" "$(m sbproxy_$n)" "$(m haproxy_$n)" "$(ratio "$(m sbproxy_$n)" "$(m haproxy_$n)")" ">= 1.00"
    row "  socat / direct loopback, $n stream(s) MB/s" "$(m socat_$n)" "$(m direct_$n)" "" "(context)"
    row "  the same with proxy --threads 0" "$(m sbshared_$n)" "$(m haproxy_$n)" "$(ratio "$(m sbshared_$n)" "$(m haproxy_$n)")" "(option)"
done
sb_add=$(python3 -c "print(round($(m lat_sb) - $(m lat_direct)))")
ha_add=$(python3 -c "print(round($(m lat_haproxy) - $(m lat_direct)))")
row "proxy added p50 latency 512B, µs (vs HAProxy)" "$sb_add" "$ha_add" "$(ratio "$sb_add" "$ha_add")" "<= 1.00"
shared_add=$(python3 -c "print(round($(m lat_sbshared) - $(m lat_direct)))")
row "  the same with proxy --threads 0" "$shared_add" "$ha_add" "$(ratio "$shared_add" "$ha_add")" "(option)"
row "chat 500 clients p99 latency µs (vs ncat)" "$(m chat500_sb)" "$(m chat500_ncat)" "$(ratio "$(m chat500_sb)" "$(m chat500_ncat)")" "<= 0.10"
row "  the same with senders --in-step" "$(m chat500_sb_step)" "$(m chat500_ncat_step)" "$(ratio "$(m chat500_sb_step)" "$(m chat500_ncat_step)")" "(context)"
row "  ncat's deliveries/s of the 300,000 offered" "" "$(m chat500_ncat_rate)" "" "(context)"
row "  minimal C epoll relay: p99 µs, deliveries/s" "$(m chat500_c)" "$(m chat500_c_rate)" "" "(context)"
row "chat 100 clients deliveries/s (vs ncat)" "$(m chat100_sb)" "$(m chat100_ncat)" "$(ratio "$(m chat100_sb)" "$(m chat100_ncat)")" ">= 1.00"
row "  chat 100 clients: lost or errors (a 3rd run)" "$(m chat_lost)" "" "" "0"
row "http 1 KiB req/s, 64 conns (vs nginx)" "$(m http1k_sb)" "$(m http1k_nginx)" "$(ratio "$(m http1k_sb)" "$(m http1k_nginx)")" ">= 0.80"
row "http 1 MiB MB/s, 64 conns (vs nginx)" "$(m http1m_sb)" "$(m http1m_nginx)" "$(ratio "$(m http1m_sb)" "$(m http1m_nginx)")" ">= 0.90"
