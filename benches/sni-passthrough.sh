#!/usr/bin/env bash
# TLS passthrough routed by SNI, one stream: `switchboard proxy --sni-route` against
# HAProxy doing the same (`req.ssl_sni`, with `tcp-request inspect-delay`), without and
# with `option splice-auto`, in alternating rounds, on loopback. The client is
# `switchboard bench stream --tls --conns 1 --size 65536` (it verifies the certificate
# of the name it asks for, so only the right upstream can answer); the upstream is
# `switchboard discard` with TLS. Each proxy relays bytes it cannot read.
#
#   benches/sni-passthrough.sh                      # 3 rounds of 5 s
#   benches/sni-passthrough.sh --rounds 1 --duration 2
#
# Binds 127.0.0.1 ports 17250-17253 only (stops if one is taken); everything it starts
# is stopped when it exits. Needs haproxy and openssl (apt-get installs them as root).
set -euo pipefail

ROUNDS=3
DUR=5
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        *) echo "sni-passthrough.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$PWD/target/release/switchboard
export PATH="$PATH:/usr/sbin:/sbin"
need=()
for tool in haproxy openssl; do command -v $tool >/dev/null || need+=($tool); done
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "missing ${need[*]}: install them, or run as root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for port in 17250 17251 17252 17253; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        echo "port $port is taken" >&2
        exit 1
    fi
done

WORK=$(mktemp -d /tmp/switchboard-sni.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem 2>/dev/null
chmod 600 key.pem

"$SB" -q discard --tcp 127.0.0.1:17250 --tls-cert cert.pem --tls-key key.pem >/dev/null 2>&1 &
PIDS+=($!)
"$SB" -q proxy --listen 127.0.0.1:17251 --sni-route localhost=127.0.0.1:17250 >/dev/null 2>&1 &
PIDS+=($!)
for splice in no yes; do
    port=$([ $splice = no ] && echo 17252 || echo 17253)
    cat >"haproxy-$splice.cfg" <<CFG
global
  maxconn 1000
defaults
  mode tcp
  $([ $splice = yes ] && echo "option splice-auto")
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$port
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend b if { req.ssl_sni -i localhost }
backend b
  server s 127.0.0.1:17250
CFG
    haproxy -f "haproxy-$splice.cfg" -db >/dev/null 2>&1 &
    PIDS+=($!)
done
sleep 1

mbs() {
    timeout $((DUR + 20)) "$SB" bench stream "127.0.0.1:$1" --tls --ca cert.pem --sni localhost \
        --conns 1 --size 65536 --duration "${DUR}s" 2>&1 |
        awk '/^throughput/ { print $3 }'
}
for round in $(seq "$ROUNDS"); do
    sb=$(mbs 17251)
    hp=$(mbs 17252)
    hs=$(mbs 17253)
    best=$(echo "$hp $hs" | awk '{ print ($1 > $2) ? $1 : $2 }')
    echo "round $round: switchboard $sb MB/s, HAProxy $hp MB/s, with splice $hs MB/s, ratio to the better $(echo "$sb $best" | awk '{ printf "%.2f", $1 / $2 }')"
done
