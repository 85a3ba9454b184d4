#!/usr/bin/env bash
# Measures switchboard against the anchors of its performance targets, on loopback, in
# alternating rounds, and prints the result as markdown tables: every figure is the
# median over the rounds with its spread (min–max), and every ratio the median of the
# per-round ratios with theirs.
#
#   benches/compare.sh                          # 5 rounds of 5 s per measurement
#   benches/compare.sh --quick                  # 2 rounds of 1 s, 2,000 idle clients: a smoke test
#   benches/compare.sh --out run.md path/to/old/switchboard     # A/B: any binary
#   benches/compare.sh --rounds 7 --duration 10 --loadgen target/release/switchboard BIN
#
# What it measures (the rows of issue 14's target table):
#   proxy, 1 and 16 streams (MB/s), against HAProxy without and with
#     `option splice-request` + `option splice-response`;
#   the proxy's added p50 latency on a 512 B ping-pong (against direct echo);
#   system calls per proxied 512 B message, for the proxy and HAProxy: `perf stat -e
#     raw_syscalls:sys_enter,syscalls:sys_enter_NAME,... -p PID` around a paced
#     one-connection echo run (at most SYS_RATE round trips a second), divided by the
#     messages it made (a round trip is two: the request and its reply); `strace -c -f
#     -p PID` where perf's tracepoints cannot count;
#   echo, 50 connections x 512 B, against the C epoll server (benches/epoll_echo.c);
#   HTTP, a 1 MiB and a 1 KiB file, wrk -t2 -c64, against nginx (sendfile, tcp_nopush);
#   the RSS of a fresh chat server holding 10,000 idle clients (all joined, every join
#     notice read);
#   chat, 500 clients, 10 senders x 60 lines/s (300k deliveries/s offered): p99 against
#     the C relay (benches/epoll_chat.c), and what either lost.
# The proxy's anchor in each round is the better of HAProxy's two settings. When the
# binary's `proxy --help` offers `--no-splice`, the proxy also runs with it, in a column
# of its own; the main column is always the binary's default.
#
# The binary under test is the argument (default target/release/switchboard, built here
# when no argument is given); `--loadgen BIN` picks the `switchboard bench` that makes
# the load (default: the binary under test), so two binaries can be measured with one
# generator. Missing tools are installed with apt-get (one `apt-get update` first):
# haproxy, nginx, wrk, perf, strace, a C compiler. Everything binds 127.0.0.1 ports
# 17100-17119 only; every load stops by itself and runs under `timeout`; everything the
# script starts is stopped when it exits. Progress goes to stderr, the tables to stdout
# (and to --out FILE). Needs root for apt-get and perf.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

ROUNDS=${ROUNDS:-5}
DUR=${DUR:-5}               # seconds per measurement
SYS_SECS=${SYS_SECS:-5}     # seconds of each syscall-counting run
SYS_RATE=${SYS_RATE:-2000}  # its round trips per second, so the count is the same for every proxy
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
QUICK=0
OUT=
GEN=
SB=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1; ROUNDS=2; DUR=1; SYS_SECS=1; IDLE_CLIENTS=2000 ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DUR=${2%s}; shift ;;
        --loadgen) GEN=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        -*) echo "compare.sh: unknown option $1" >&2; usage 2 >&2 ;;
        *) SB=$1 ;;
    esac
    shift
done
# Paths given relative to where the script was started from.
[ -n "$SB" ] && SB=$(realpath "$SB")
[ -n "$GEN" ] && GEN=$(realpath "$GEN")
[ -n "$OUT" ] && OUT=$(realpath -m "$OUT")
cd "$(dirname "$0")/.."
if [ -z "$SB" ]; then
    cargo build --release --quiet
    SB=$PWD/target/release/switchboard
fi
GEN=${GEN:-$SB}
for b in "$SB" "$GEN"; do
    [ -x "$b" ] || { echo "compare.sh: no executable at $b" >&2; exit 1; }
done

say() { echo "compare.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
declare -A PKG=([haproxy]=haproxy [nginx]=nginx [wrk]=wrk [perf]=linux-perf [strace]=strace [cc]=gcc [python3]=python3)
need=()
for tool in "${!PKG[@]}"; do
    command -v "$tool" >/dev/null || need+=("${PKG[$tool]}")
done
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { say "missing ${need[*]}: install them, or run as root"; exit 1; }
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ulimit -n "$(ulimit -Hn)" # 10,000 idle clients, and the proxies' two descriptors a session

WORK=$(mktemp -d /tmp/switchboard-compare.XXXXXX)
chmod 755 "$WORK" # nginx's workers run as another user
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a server in the background, its output in $WORK/NAME.log; its pid in PID[NAME].
declare -A PID
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    PID[$name]=$!
}
stop() {
    local p=${PID[$1]} q kept=()
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || kept+=("$q"); done
    PIDS=("${kept[@]}")
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

# --- what runs -----------------------------------------------------------------------
cc -O2 -o "$WORK/epoll_echo" benches/epoll_echo.c
cc -O2 -o "$WORK/epoll_chat" benches/epoll_chat.c
mkdir -p "$WORK/site"
head -c 1024 /dev/urandom >"$WORK/site/1k.bin"
head -c 1048576 /dev/urandom >"$WORK/site/1m.bin"
chmod -R a+rX "$WORK/site"

# (Each output is read whole first: `grep -q` closing a pipe early fails it under pipefail.)
NOSPLICE=0
grep -q -- '--no-splice' <<<"$("$SB" proxy --help 2>&1 || true)" && NOSPLICE=1
HA_SPLICE=0
grep -q -- '+LINUX_SPLICE' <<<"$(haproxy -vv 2>&1 || true)" && HA_SPLICE=1

start c_echo "$WORK/epoll_echo" 127.0.0.1 17100
start c_chat "$WORK/epoll_chat" 127.0.0.1 17114
start sb_echo "$SB" -q echo --tcp 127.0.0.1:17101
start sb_discard "$SB" -q discard --tcp 127.0.0.1:17102
start sb_proxy_sink "$SB" -q proxy --listen 127.0.0.1:17103 --upstream 127.0.0.1:17102
start sb_proxy_echo "$SB" -q proxy --listen 127.0.0.1:17106 --upstream 127.0.0.1:17101
if [ $NOSPLICE = 1 ]; then
    start ns_proxy_sink "$SB" -q proxy --no-splice --listen 127.0.0.1:17109 --upstream 127.0.0.1:17102
    start ns_proxy_echo "$SB" -q proxy --no-splice --listen 127.0.0.1:17110 --upstream 127.0.0.1:17101
fi
start sb_http "$SB" -q http --listen 127.0.0.1:17111 --root "$WORK/site"
start sb_chat "$SB" -q chat --tcp 127.0.0.1:17113 --rate 0
cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen sink_plain
    bind 127.0.0.1:17104
    server s1 127.0.0.1:17102
listen sink_splice
    bind 127.0.0.1:17105
    option splice-request
    option splice-response
    server s1 127.0.0.1:17102
listen echo_plain
    bind 127.0.0.1:17107
    server s1 127.0.0.1:17101
listen echo_splice
    bind 127.0.0.1:17108
    option splice-request
    option splice-response
    server s1 127.0.0.1:17101
CFG
start haproxy haproxy -db -f "$WORK/haproxy.cfg"
cat >"$WORK/nginx.conf" <<CFG
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
    server { listen 127.0.0.1:17112; root $WORK/site; }
}
CFG
start nginx nginx -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
for port in 17100 17101 17102 17103 17104 17105 17106 17107 17108 17111 17112 17113 17114; do
    wait_port $port
done
[ $NOSPLICE = 1 ] && { wait_port 17109; wait_port 17110; }

# How system calls are counted: perf's tracepoints where they count here, else strace
# (SYSCOUNT=strace picks it).
if [ "${SYSCOUNT:-}" != strace ] &&
    perf stat -x, -o "$WORK/probe" -e raw_syscalls:sys_enter -- true 2>/dev/null &&
    awk -F, '$1 ~ /^[0-9]+$/ {n += $1} END {exit !(n > 0)}' "$WORK/probe"; then
    SYSCOUNT=perf
elif command -v strace >/dev/null; then
    SYSCOUNT=strace
else
    SYSCOUNT=none
fi
# perf counts every call in raw_syscalls:sys_enter, and by name the calls a proxy makes
# (the rest show as "other"). Not every syscalls:* tracepoint: closing hundreds of
# events on each of a process's threads takes perf many seconds.
PERF_EVENTS=raw_syscalls:sys_enter
if [ $SYSCOUNT = perf ]; then
    known=$(perf list 'syscalls:sys_enter_*' 2>/dev/null || true)
    for c in read write readv writev recvfrom sendto recvmsg sendmsg recvmmsg sendmmsg splice \
        tee vmsplice pipe2 fcntl sendfile64 ioctl setsockopt getsockopt shutdown accept4 close \
        connect socket epoll_wait epoll_pwait epoll_pwait2 epoll_ctl poll ppoll futex \
        clock_gettime timerfd_settime sched_yield nanosleep clock_nanosleep eventfd2 madvise \
        mmap munmap mprotect brk getrandom rt_sigreturn rt_sigprocmask; do
        if grep -qw "syscalls:sys_enter_$c" <<<"$known"; then
            PERF_EVENTS+=",syscalls:sys_enter_$c"
        fi
    done
fi
say "counting system calls with $SYSCOUNT"

# --- one measurement of each kind ------------------------------------------------------
RECORDS=$WORK/records.tsv
: >"$RECORDS"
round=0
rec() { [ -n "$3" ] && printf '%s\t%s\t%s\t%s\n' "$round" "$1" "$2" "$3" >>"$RECORDS"; return 0; }
BOUND=$((DUR + 60)) # a run's own limit is its duration plus at most 50 s of settling and grace

# bench MODE ARGS... -> its JSON on stdout (nothing if it failed)
bench() {
    timeout -k 5 "$BOUND" "$GEN" bench "$@" --json 2>>"$WORK/bench.err" || true
}
# field EXPR: one value from the JSON on stdin (`r` is the object); nothing if absent.
field() {
    python3 -c "import json,sys
try:
    r = json.load(sys.stdin); print($1)
except Exception:
    pass"
}
# wrk's requests/s (a run with failed or non-2xx answers counts as failed).
wrk_rate() {
    local out
    out=$(timeout -k 5 "$BOUND" wrk -t2 -c64 -d"${DUR}s" "$1" 2>&1) || true
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        echo "round $round $1: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >>"$WORK/problems"
        return
    fi
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

m_echo() {
    local port
    case $1 in sb) port=17101 ;; ref) port=17100 ;; esac
    rec echo "$1" "$(bench echo 127.0.0.1:$port --conns 50 --size 512 --duration "${DUR}s" | field 'r["ops_per_sec"]')"
}
proxy_port() { # VARIANT sink|echo
    case $1:$2 in
        sb:sink) echo 17103 ;; ns:sink) echo 17109 ;; ha:sink) echo 17104 ;; has:sink) echo 17105 ;;
        sb:echo) echo 17106 ;; ns:echo) echo 17110 ;; ha:echo) echo 17107 ;; has:echo) echo 17108 ;;
        direct:echo) echo 17101 ;;
    esac
}
m_stream1() { rec stream1 "$1" "$(bench stream "127.0.0.1:$(proxy_port "$1" sink)" --conns 1 --size 262144 --duration "${DUR}s" | field 'r["mb_per_sec_sent"]')"; }
m_stream16() { rec stream16 "$1" "$(bench stream "127.0.0.1:$(proxy_port "$1" sink)" --conns 16 --size 262144 --duration "${DUR}s" | field 'r["mb_per_sec_sent"]')"; }
m_latency() { rec p50 "$1" "$(bench echo "127.0.0.1:$(proxy_port "$1" echo)" --conns 1 --size 512 --duration "${DUR}s" | field 'r["latency_us"]["p50"]')"; }
m_http1m() { case $1 in sb) rec http1m sb "$(wrk_rate http://127.0.0.1:17111/1m.bin)" ;; ref) rec http1m ref "$(wrk_rate http://127.0.0.1:17112/1m.bin)" ;; esac; }
m_http1k() { case $1 in sb) rec http1k sb "$(wrk_rate http://127.0.0.1:17111/1k.bin)" ;; ref) rec http1k ref "$(wrk_rate http://127.0.0.1:17112/1k.bin)" ;; esac; }
m_chat() {
    local port json
    case $1 in sb) port=17113 ;; ref) port=17114 ;; esac
    json=$(bench chat 127.0.0.1:$port --conns 500 --senders 10 --rate 60 --size 32 --duration "${DUR}s")
    rec chat_p99 "$1" "$(field 'r["latency_us"]["p99"]' <<<"$json")"
    rec chat_rate "$1" "$(field 'r["ops_per_sec"]' <<<"$json")"
    rec chat_lost "$1" "$(field 'r["counts"].get("lost", 0) + r["counts"].get("duplicated", 0) + sum(r["errors"].values())' <<<"$json")"
}

# System calls per message of a paced 1-connection echo through the proxy VARIANT:
# counted on the proxy's process (all its threads) for exactly the run's length.
m_syscalls() {
    local v=$1 pid json out=$WORK/sys-$1-$round
    case $v in sb) pid=${PID[sb_proxy_echo]} ;; ns) pid=${PID[ns_proxy_echo]} ;; ha | has) pid=${PID[haproxy]} ;; esac
    local run=(timeout -k 5 "$BOUND" "$GEN" bench echo "127.0.0.1:$(proxy_port "$v" echo)" --conns 1 --size 512
        --rate "$SYS_RATE" --duration "${SYS_SECS}s" --json)
    case $SYSCOUNT in
        perf)
            json=$(perf stat -x, -o "$out.counts" -e "$PERF_EVENTS" -p "$pid" -- "${run[@]}" 2>>"$WORK/bench.err") || true
            ;;
        strace)
            strace -c -f -p "$pid" -o "$out.counts" 2>/dev/null &
            local spid=$!
            sleep 1 # strace has attached to every thread by then
            json=$("${run[@]}" 2>>"$WORK/bench.err") || true
            kill -INT "$spid" 2>/dev/null || true
            wait "$spid" 2>/dev/null || true
            ;;
        *) return ;;
    esac
    # Prints the calls per message, and adds this run's calls by name to sysbreak.tsv
    # for the breakdown under the tables.
    rec syscalls "$v" "$(python3 - "$SYSCOUNT" "$out.counts" "$v" "$(field 'r["ops"]' <<<"$json")" \
        "$WORK/sysbreak.tsv" <<'PY' || true
import re, sys
tool, path, variant, round_trips, breakdown = sys.argv[1:6]
if not round_trips or int(round_trips) == 0:
    sys.exit()
messages = 2 * int(round_trips)
counts, total = {}, None
for line in open(path):
    if tool == "perf":  # count,unit,event,...
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            if f[2] == "raw_syscalls:sys_enter":
                total = int(f[0])
            elif int(f[0]) > 0:
                counts[f[2].replace("syscalls:sys_enter_", "")] = int(f[0])
    else:  # strace -c: % time, seconds, usecs/call, calls, [errors,] syscall
        f = line.split()
        if len(f) >= 5 and re.match(r"^[0-9.]+$", f[0]) and f[3].isdigit() and f[-1] != "total":
            counts[f[-1]] = int(f[3])
if total is not None and total > sum(counts.values()):
    counts["other"] = total - sum(counts.values())
if not counts:
    sys.exit()
with open(breakdown, "a") as b:
    for name, n in counts.items():
        print(f"{variant}\t{name}\t{n}\t{messages}", file=b)
    print(f"{variant}\t*total\t{sum(counts.values())}\t{messages}", file=b)
print(sum(counts.values()) / messages)
PY
)"
}

# The RSS of a fresh chat server once IDLE_CLIENTS clients have joined and read every
# join notice; clients join in batches, each batch's welcomes awaited, so none falls a
# send queue behind. Bounded by its own deadline.
cat >"$WORK/idle.py" <<'PY'
import json, resource, selectors, socket, sys, time
port, n, pid, limit = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
deadline = time.monotonic() + limit
sel = selectors.EpollSelector()
got, closed = {}, 0
def pump(timeout):
    global closed
    moved = 0
    for key, _ in sel.select(timeout):
        s = key.fileobj
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            closed += 1
            sel.unregister(s)
            continue
        got[s] += len(data)
        moved += len(data)
    return moved
socks = []
for start in range(0, n, 250):
    batch = []
    for _ in range(min(250, n - start)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        got[s] = 0
        sel.register(s, selectors.EVENT_READ)
        batch.append(s)
    socks += batch
    while any(got[s] == 0 for s in batch):
        pump(0.05)
        if time.monotonic() > deadline:
            sys.exit(f"idle: only {len(socks)} of {n} clients joined in {limit:.0f}s")
quiet = time.monotonic()
while time.monotonic() - quiet < 1.0:
    if pump(0.1):
        quiet = time.monotonic()
    if time.monotonic() > deadline:
        sys.exit("idle: join notices still arriving at the deadline")
status = open(f"/proc/{pid}/status").read()
rss_kib = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:")))
print(json.dumps({"rss_mib": rss_kib / 1024, "clients": n, "closed": closed}))
for s in socks:
    s.close()
PY
m_idle() {
    start idle_chat "$SB" -q chat --tcp 127.0.0.1:17115
    wait_port 17115
    local json
    json=$(timeout -k 5 300 python3 "$WORK/idle.py" 17115 "$IDLE_CLIENTS" "${PID[idle_chat]}" 240 2>>"$WORK/bench.err") || true
    stop idle_chat
    if [ "$(field 'r["closed"]' <<<"$json")" != 0 ]; then
        echo "round $round idle chat: $json" >>"$WORK/problems"
        return
    fi
    rec idle_rss sb "$(field 'r["rss_mib"]' <<<"$json")"
}

# each KIND VARIANT...: one measurement of KIND per variant, in reverse order on even
# rounds, so that neither side always runs first.
each() {
    local kind=$1
    shift
    local vs=("$@")
    if ((round % 2 == 0)); then
        local i rev=()
        for ((i = ${#vs[@]} - 1; i >= 0; i--)); do rev+=("${vs[i]}"); done
        vs=("${rev[@]}")
    fi
    for v in "${vs[@]}"; do
        "m_$kind" "$v"
    done
}

PROXIES=(sb ha has)
[ $NOSPLICE = 1 ] && PROXIES=(sb ns ha has)
started=$(date +%s)
for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS ($(($(date +%s) - started)) s so far)"
    each echo sb ref
    each stream1 "${PROXIES[@]}"
    each stream16 "${PROXIES[@]}"
    each latency direct "${PROXIES[@]}"
    each syscalls "${PROXIES[@]}"
    each http1m sb ref
    each http1k sb ref
    each chat sb ref
    m_idle
done

# --- the tables ----------------------------------------------------------------------------
say "done in $(($(date +%s) - started)) s"
touch "$WORK/problems" "$WORK/sysbreak.tsv"
python3 - "$RECORDS" "$WORK/sysbreak.tsv" "$WORK/problems" "$NOSPLICE" "$HA_SPLICE" "$QUICK" \
    "$ROUNDS" "$DUR" "$IDLE_CLIENTS" "$SYS_RATE" "$SYS_SECS" "$SYSCOUNT" "$SB" "$GEN" \
    "$("$SB" --version 2>/dev/null || echo '?')" >"$WORK/tables.md" <<'PY'
import collections, datetime, os, platform, statistics, sys

(records, sysbreak, problems, nosplice, ha_splice, quick, rounds, dur, idle_n,
 sys_rate, sys_secs, syscount, sb, gen, version) = sys.argv[1:16]
nosplice, quick = nosplice == "1", quick == "1"

# data[kind][variant] = {round: value}
data = collections.defaultdict(lambda: collections.defaultdict(dict))
for line in open(records):
    rnd, kind, variant, value = line.rstrip("\n").split("\t")
    data[kind][variant][int(rnd)] = float(value)

# The proxy's added latency: its p50 less the direct p50 of the same round.
for v, by_round in data["p50"].items():
    if v == "direct":
        continue
    for rnd, p in by_round.items():
        if rnd in data["p50"]["direct"]:
            data["added"][v][rnd] = p - data["p50"]["direct"][rnd]
# The proxy's anchor in each round: the better of HAProxy's two settings.
for kind, better in (("stream1", max), ("stream16", max), ("added", min), ("syscalls", min)):
    ha, has = data[kind]["ha"], data[kind]["has"]
    for rnd in set(ha) | set(has):
        data[kind]["anchor"][rnd] = better(x[rnd] for x in (ha, has) if rnd in x)

def fmt(x, digits):
    if digits == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"

def cell(kind, variant, digits=0):
    vals = list(data[kind][variant].values())
    if not vals:
        return "–"
    med = fmt(statistics.median(vals), digits)
    if len(vals) == 1:
        return med
    return f"{med} ({fmt(min(vals), digits)}–{fmt(max(vals), digits)})"

def ratios(kind, a, b):
    x, y = data[kind][a], data[kind][b]
    return [x[r] / y[r] for r in sorted(set(x) & set(y)) if y[r]]

def ratio_cell(kind, a, b):
    rs = ratios(kind, a, b)
    if not rs:
        return "–"
    med = f"{statistics.median(rs):.2f}"
    return med if len(rs) == 1 else f"{med} ({min(rs):.2f}–{max(rs):.2f})"

def met(value, op, bound):
    if value is None:
        return "not measured"
    return "✓" if (value >= bound if op == ">=" else value <= bound) else "✗"

def med_ratio(kind, a, b):
    rs = ratios(kind, a, b)
    return statistics.median(rs) if rs else None

def med(kind, v):
    vals = list(data[kind][v].values())
    return statistics.median(vals) if vals else None

out = []
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
out.append(f"Medians of {rounds} alternating round{'s' if rounds != '1' else ''} of {dur} s each, with (min–max) over the "
           f"rounds; a ratio is the median of the per-round ratios. {os.cpu_count()} cores "
           f"({platform.machine()}), {when}; `{version}` at `{sb}`, load from `{gen}`.")
if quick:
    out.append("")
    out.append("**Quick mode: a smoke test of the apparatus; these figures are not results.**")

out.append("")
head = "| proxy | switchboard |"
rule = "|---|---:|"
if nosplice:
    head += " switchboard --no-splice |"
    rule += "---:|"
head += " HAProxy | HAProxy + splice | ratio | target |"
rule += "---:|---:|---:|---|"
out += [head, rule]
rows = (
    ("stream1", "1 stream, MB/s", 0, ">=", 1.2, "≥ 1.20× HAProxy"),
    ("stream16", "16 streams, MB/s", 0, ">=", 1.2, "≥ 1.20× HAProxy"),
    ("added", "added p50 latency, 512 B ping-pong, µs", 0, "<=", 0.8, "≤ 0.80× HAProxy"),
    ("syscalls", "system calls per proxied 512 B message", 2, "<=", 1.0, "≤ 1.00× HAProxy"),
)
for kind, label, digits, op, bound, target in rows:
    line = f"| {label} | {cell(kind, 'sb', digits)} |"
    if nosplice:
        line += f" {cell(kind, 'ns', digits)} |"
    line += (f" {cell(kind, 'ha', digits)} | {cell(kind, 'has', digits)} |"
             f" {ratio_cell(kind, 'sb', 'anchor')} | {target} {met(med_ratio(kind, 'sb', 'anchor'), op, bound)} |")
    out.append(line)

out.append("")
out.append("| work | switchboard | reference | ratio | target |")
out.append("|---|---:|---:|---:|---|")
def pair(kind, label, digits, op=None, bound=None, target="(context)"):
    verdict = f" {met(med_ratio(kind, 'sb', 'ref'), op, bound)}" if op else ""
    out.append(f"| {label} | {cell(kind, 'sb', digits)} | {cell(kind, 'ref', digits)} |"
               f" {ratio_cell(kind, 'sb', 'ref')} | {target}{verdict} |")
pair("echo", "echo, 50 conns × 512 B, round trips/s (vs C epoll)", 0, ">=", 1.0, "≥ 1.00×")
pair("http1m", "HTTP 1 MiB, wrk -t2 -c64, req/s (vs nginx)", 0, ">=", 1.0, "≥ 1.00×")
pair("http1k", "HTTP 1 KiB, wrk -t2 -c64, req/s (vs nginx)", 0, ">=", 1.0, "≥ 1.00×")
rss = med("idle_rss", "sb")
out.append(f"| {int(idle_n):,} idle chat clients, RSS MiB | {cell('idle_rss', 'sb', 1)} | | |"
           f" ≤ 64 MiB {met(rss, '<=', 64)} |")
pair("chat_p99", "chat, 500 clients, 300k deliveries/s offered: p99 µs (vs C relay)", 0,
     "<=", 1.0, "≤ 1.00×")
pair("chat_rate", "the same: deliveries/s", 0)
lost_sb = sum(data["chat_lost"]["sb"].values()) if data["chat_lost"]["sb"] else None
lost_ref = sum(data["chat_lost"]["ref"].values()) if data["chat_lost"]["ref"] else None
show = lambda x: "–" if x is None else f"{x:,.0f}"
out.append(f"| the same: lost, duplicated or errors, all rounds | {show(lost_sb)} | {show(lost_ref)} | |"
           f" 0 {met(lost_sb, '<=', 0)} |")

out.append("")
out.append("The proxy's ratio is against the better of HAProxy's two settings in each round. "
           "Its added latency is its p50 less direct echo's p50 in the same round. "
           f"System calls: the proxy process's, counted with {syscount} over {sys_secs} s of one "
           f"connection's 512 B ping-pong paced at {sys_rate} round trips/s, divided by the "
           "messages proxied (two a round trip).")
if not nosplice:
    out.append("This binary's proxy has no `--no-splice`: its one column is its default.")
if ha_splice != "1":
    out.append("**This HAProxy was built without splice support: its splice column is not splicing.**")

# Where the system calls go, per message, summed over the rounds.
by = collections.defaultdict(collections.Counter)
ops = collections.Counter()
for line in open(sysbreak):
    v, name, n, o = line.rstrip("\n").split("\t")
    if name == "*total":
        ops[v] += int(o)
    else:
        by[v][name] += int(n)
names = {"sb": "switchboard", "ns": "switchboard --no-splice", "ha": "HAProxy", "has": "HAProxy + splice"}
if ops:
    out.append("")
    out.append("System calls per proxied message, by call:")
    out.append("")
    for v in ("sb", "ns", "ha", "has"):
        if ops[v]:
            top = ", ".join(f"{k} {n / ops[v]:.2f}" for k, n in by[v].most_common()
                            if n / ops[v] >= 0.005)
            out.append(f"- {names[v]}: {top}")

issues = [l.strip() for l in open(problems) if l.strip()]
if issues:
    out.append("")
    out.append("Runs left out (failed or answered with errors):")
    out.append("")
    out += [f"- {l}" for l in issues]
print("\n".join(out))
PY
cat "$WORK/tables.md"
[ -n "$OUT" ] && cp "$WORK/tables.md" "$OUT"
if [ -s "$WORK/bench.err" ]; then
    say "the load generator's complaints:"
    sort "$WORK/bench.err" | uniq -c | sort -rn | head -n 10 >&2
fi
