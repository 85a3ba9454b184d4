#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for MINUTES each, one at a time, then
# minimises each corpus and prints the executions per target.
#
#   fuzz/run.sh MINUTES [TARGET...]
#
# Needs nightly and cargo-fuzz: `cargo install cargo-fuzz --locked`.
#
# A failing oracle does not end a target's time: the input is minimised and copied to
# fuzz/regressions/<target>/<oracle>-<hash> (replayed by `cargo test --test fuzz_corpus`),
# and the oracle's name is added to SWITCHBOARD_FUZZ_ALLOW for the rest of that target's
# run, so each oracle is reported once and the search goes on. A panic, timeout or OOM
# (no oracle to step over) ends that target's run. Start with
# SWITCHBOARD_FUZZ_ALLOW=oracle,... to step over known defects from the first second.
#
# The fuzzer reads fuzz/corpus/<target>/ and fuzz/seeds/<target>/ and adds new inputs to
# the first; the seeds (fuzz/seeds/make_seeds.py) are never minimised away.
# The corpus is minimised with no oracle allowed, so it keeps only inputs that pass every
# oracle: the replay test holds the corpus to all of them. Logs: fuzz/logs/.
set -euo pipefail

minutes=${1:?usage: fuzz/run.sh MINUTES [TARGET...]}
shift
all=(chat_line lines telnet http_request http_range proxy_header ftp_line)
if (($# > 0)); then targets=("$@"); else targets=("${all[@]}"); fi

cd "$(dirname "$0")/.." # the repository root: cargo fuzz finds fuzz/ from here
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
mkdir -p fuzz/logs
cargo +nightly fuzz build

# Flags for every run: inputs up to 1 KiB (the oracles need no more, and the committed
# corpus stays small), 10 s per input before it counts as a hang.
flags=(-max_len=1024 -timeout=10 -print_final_stats=1)
summary=()

for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
    allow=${SWITCHBOARD_FUZZ_ALLOW:-}
    deadline=$((SECONDS + minutes * 60))
    start=$SECONDS
    execs=0
    found=()
    round=0
    while (((left = deadline - SECONDS) > 2)); do
        round=$((round + 1))
        log="fuzz/logs/$t.$round.log"
        echo "== $t: round $round, ${left}s left, allowed: ${allow:-none}"
        status=0
        SWITCHBOARD_FUZZ_ALLOW=$allow cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
            -max_total_time="$left" "${flags[@]}" >"$log" 2>&1 || status=$?
        # Final stats on a clean exit; after a crash, the last status line (an undercount).
        n=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
        [[ -n $n ]] || n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
        execs=$((execs + ${n:-0}))
        ((status == 0)) && break

        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | awk '{print $NF}')
        oracle=$(grep -o 'SWITCHBOARD-ORACLE-FAILED: [a-z0-9_]*' "$log" | head -1 | awk '{print $2}')
        if [[ -z $oracle ]]; then
            if grep -q 'libFuzzer: timeout' "$log"; then oracle=timeout
            elif grep -q 'out-of-memory' "$log"; then oracle=oom
            else oracle=panic; fi
        fi
        echo "   $t: $oracle failed (log $log)"
        if [[ -z $artifact || ! -f $artifact ]]; then
            echo "   no artefact found; stopping $t"
            found+=("$oracle")
            break
        fi
        # Minimise against the same oracles the run had (so the same failure reproduces).
        tmin_log="fuzz/logs/$t.$round.tmin.log"
        SWITCHBOARD_FUZZ_ALLOW=$allow cargo +nightly fuzz tmin -r 2000 "$t" "$artifact" \
            >"$tmin_log" 2>&1 || true
        minimized=$(grep -o '[^ ]*minimized-from-[0-9a-f]*' "$tmin_log" | tail -1 || true)
        [[ -n $minimized && -f $minimized ]] || minimized=$artifact
        dest="fuzz/regressions/$t/$oracle-$(sha1sum "$minimized" | cut -c1-8)"
        cp "$minimized" "$dest"
        echo "   kept $dest ($(wc -c <"$dest") bytes): $(head -c 100 "$dest" | od -An -c | tr -s ' \n' ' ')"
        found+=("$oracle")
        case $oracle in
        panic | timeout | oom) break ;; # nothing to step over
        *) allow=${allow:+$allow,}$oracle ;;
        esac
    done
    secs=$((SECONDS - start))

    echo "== $t: minimising the corpus"
    # Edge coverage only (-use_counters=0): the smallest set reaching every branch, so the
    # committed corpus stays at tens of files per target, not the thousands hit counts keep.
    SWITCHBOARD_FUZZ_ALLOW= cargo +nightly fuzz cmin "$t" -- -max_len=1024 -use_counters=0 \
        >"fuzz/logs/$t.cmin.log" 2>&1 || echo "   cmin failed: see fuzz/logs/$t.cmin.log"
    files=$(find "fuzz/corpus/$t" -type f | wc -l)
    size=$(find "fuzz/corpus/$t" -type f -exec cat {} + | wc -c)
    summary+=("$(printf '%-13s %6ss %12s execs %9s/s  corpus %4s files %7s B  found: %s' \
        "$t" "$secs" "$execs" "$((execs / (secs > 0 ? secs : 1)))" "$files" "$size" \
        "${found[*]:-nothing}")")
done

echo
echo "== summary (${minutes} min per target)"
printf '%s\n' "${summary[@]}"
echo "New files in fuzz/regressions/ fail tests/fuzz_corpus.rs until fixed (or listed in"
echo "fuzz/regressions/known-defects.txt, for a defect whose fix is under way)."
