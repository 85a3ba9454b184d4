#!/usr/bin/env bash
# A/B of two switchboard release binaries, paired: both builds' servers run side by
# side, and each measure runs on the two back to back (the order swapped every round),
# so a neighbour's load hits both alike. Each run also takes the CPU time the measured
# server process used (utime + stime from /proc/PID/stat), per operation: on a shared
# machine that moves far less than throughput does. Loopback only; ports 17301-17305
# and 17401-17405; `bench` of the NEW binary generates the load for both.
#
#   benches/ab-paired.sh OLD_BINARY NEW_BINARY      # ROUNDS=3 by default, 5 s per run
#
# Measures: echo (bench echo, 50 conns x 512 B, against `echo`), stream (bench stream,
# 16 conns x 256 KiB, through `proxy` to `discard`), proxy_echo (bench echo, 50 conns,
# through `proxy` to `echo`), http (bench http, 50 conns, a 1 KiB file).
set -u
OLD=${1:?usage: benches/ab-paired.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: benches/ab-paired.sh OLD_BINARY NEW_BINARY}
GEN=$NEW
SITE=$(mktemp -d); head -c 1024 /dev/urandom > "$SITE/1k.bin"
declare -A BIN=([OLD]=$OLD [NEW]=$NEW) BASE=([OLD]=17300 [NEW]=17400) PID
pids=()
for v in OLD NEW; do
  b=${BIN[$v]}; p=${BASE[$v]}
  "$b" -q echo --tcp 127.0.0.1:$((p+1)) & PID[$v.echo]=$!; pids+=($!)
  "$b" -q discard --tcp 127.0.0.1:$((p+2)) & pids+=($!)
  "$b" -q http --listen 127.0.0.1:$((p+5)) --root "$SITE" & PID[$v.http]=$!; pids+=($!)
done
sleep 0.5
for v in OLD NEW; do
  b=${BIN[$v]}; p=${BASE[$v]}
  "$b" -q proxy --listen 127.0.0.1:$((p+3)) --upstream 127.0.0.1:$((p+2)) & PID[$v.stream]=$!; pids+=($!)
  "$b" -q proxy --listen 127.0.0.1:$((p+4)) --upstream 127.0.0.1:$((p+1)) & PID[$v.proxy_echo]=$!; pids+=($!)
done
sleep 0.5
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # variant measure
  local p=${BASE[$1]}
  case $2 in
    echo) "$GEN" -q bench echo 127.0.0.1:$((p+1)) --conns 50 --duration 5s --json ;;
    stream) "$GEN" -q bench stream 127.0.0.1:$((p+3)) --conns 16 --size 262144 --duration 5s --json ;;
    proxy_echo) "$GEN" -q bench echo 127.0.0.1:$((p+4)) --conns 50 --duration 5s --json ;;
    http) "$GEN" -q bench http 127.0.0.1:$((p+5)) --path /1k.bin --conns 50 --duration 5s --json ;;
  esac
}
for round in $(seq 1 "${ROUNDS:-3}"); do
  if [ $((round % 2)) -eq 1 ]; then order="OLD NEW"; else order="NEW OLD"; fi
  for what in echo stream proxy_echo http; do
    for v in $order; do
      pid=${PID[$v.$what]}
      t0=$(ticks "$pid"); out=$(run "$v" "$what"); t1=$(ticks "$pid")
      python3 -c '
import json, os, sys
r, what, v, ticks, js = sys.argv[1:]
d = json.loads(js)
hz = os.sysconf("SC_CLK_TCK")
cpu_us = int(ticks) * 1e6 / hz
if what == "stream":
    rate, per = "%.0f MB/s" % d["mb_per_sec_sent"], "%.0f us/MB" % (cpu_us / (d["bytes_sent"] / 1e6))
else:
    rate, per = "%.0f ops/s" % d["ops_per_sec"], "%.2f us/op" % (cpu_us / d["ops"])
errors = d.get("errors") or "none"
print(f"round {r} {what:10} {v}: {rate:>14} server CPU {per:>11} errors {errors}")
' "$round" "$what" "$v" "$((t1 - t0))" "$out"
    done
  done
done
kill -TERM "${pids[@]}"; wait 2>/dev/null
rm -rf "$SITE"
