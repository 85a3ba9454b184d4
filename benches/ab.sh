#!/usr/bin/env bash
# A/B of two switchboard release binaries, in alternating rounds on loopback: echo with
# 50 connections x 512 B (`switchboard bench echo`, the NEW binary as load generator for
# both) and HTTP 1 KiB (wrk -t2 -c64). Ports 17201-17202; every load stops by itself.
#
#   benches/ab.sh OLD_BINARY NEW_BINARY        # e.g. a release build of an older commit
#
# Needs wrk (apt-get install wrk).
set -u
OLD=${1:?usage: benches/ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: benches/ab.sh OLD_BINARY NEW_BINARY}
GEN=$NEW
SITE=$(mktemp -d); head -c 1024 /dev/urandom > $SITE/1k.bin; chmod -R a+rX $SITE
for r in $(seq 1 "${ROUNDS:-3}"); do
  for v in OLD NEW; do
    B=${!v}
    $B -q echo --tcp 127.0.0.1:17201 >/dev/null 2>&1 & P=$!
    sleep 0.5
    e=$($GEN bench echo 127.0.0.1:17201 --conns 50 --size 512 --duration 5s 2>&1 | grep 'round trips' | sed 's/.*(\(.*\))/\1/')
    kill $P; wait $P 2>/dev/null
    $B -q http --listen 127.0.0.1:17202 --root $SITE >/dev/null 2>&1 & P=$!
    sleep 0.5
    h=$(wrk -t2 -c64 -d5s http://127.0.0.1:17202/1k.bin 2>&1 | grep Requests/sec | awk '{print $2}')
    kill $P; wait $P 2>/dev/null
    echo "round $r $v echo: $e | http 1k req/s: $h"
  done
done
rm -rf $SITE
