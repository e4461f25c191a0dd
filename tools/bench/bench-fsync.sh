#!/usr/bin/env bash
# bench-fsync.sh: the jsonl fsync path against its ceiling, in one run
# (with --memory: the memory class against the raw round trip).
#
#   tools/bench/bench-fsync.sh [options]
#
# Starts Switchboard (a jsonl adapter on a Unix socket, fresh data
# directory) and tools/bench/gcproto (a minimal group-commit server on the
# same SQLite table, see gcproto.c), then runs `sbctl bench -d fsync` against
# each in rounds, alternating (so machine noise hits both alike):
#   - pipelined: --producers producers with --window publishes awaiting their
#     puback each, --consumers consumers (window --sub-window) acknowledging
#     every message;
#   - one at a time: one producer waiting for each puback, one consumer.
# Prints per server the median msgs/s, its CPU time per message (utime +
# stime of every thread, from /proc) and the one-at-a-time puback p50, and
# the ratio Switchboard / gcproto per round as median [min-max]. With
# SWITCHBOARD_BASE=<binary>, that build runs too (e.g. main's, to compare).
#
# Options (environment variable, default):
#   --count N        messages per pipelined run (BENCH_COUNT, 400000)
#   --producers P    (BENCH_PRODUCERS, 4)
#   --consumers C    (BENCH_CONSUMERS, 2)
#   --window W       (BENCH_WINDOW, 256)
#   --sub-window S   (BENCH_SUB_WINDOW, 1000)
#   --lat-count N    messages of the one-at-a-time run, 0 skips it (BENCH_LAT_COUNT, 3000)
#   --runs R         rounds (BENCH_RUNS, 5)
#   --memory         the memory class instead: Switchboard's durability
#                    memory against `gcproto --memory` (no store: the raw
#                    Unix-socket round trip of the same bytes)
#   --keep           keep the temporary directory
# SB_BUILD_DIR: build directory with service/switchboard, tools/sbctl/sbctl
# and tools/bench/gcproto (default build/release; built when missing).
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SB_BUILD_DIR:-$top/build/release}
count=${BENCH_COUNT:-400000}
producers=${BENCH_PRODUCERS:-4}
consumers=${BENCH_CONSUMERS:-2}
window=${BENCH_WINDOW:-256}
sub_window=${BENCH_SUB_WINDOW:-1000}
lat_count=${BENCH_LAT_COUNT:-3000}
runs=${BENCH_RUNS:-5}
keep=0
durability=fsync

while [ $# -gt 0 ]; do
    case $1 in
    --count) count=$2; shift ;;
    --producers) producers=$2; shift ;;
    --consumers) consumers=$2; shift ;;
    --window) window=$2; shift ;;
    --sub-window) sub_window=$2; shift ;;
    --lat-count) lat_count=$2; shift ;;
    --runs) runs=$2; shift ;;
    --keep) keep=1 ;;
    --memory) durability=memory ;;
    -h | --help) sed -n '2,/^# Only the processes/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-fsync.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

sb_bin=$build/service/switchboard
sbctl=$build/tools/sbctl/sbctl
proto=$build/tools/bench/gcproto
if [ ! -x "$sb_bin" ] || [ ! -x "$sbctl" ] || [ ! -x "$proto" ]; then
    echo "== building switchboard, sbctl and gcproto in $build (release preset)"
    (cd "$top" && cmake --preset release -B "$build" >/dev/null &&
        cmake --build "$build" --target switchboard sbctl gcproto) || {
        echo "bench-fsync.sh: build failed" >&2
        exit 1
    }
fi

tmp=$(mktemp -d /tmp/bench-fsync.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ "$keep" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls for the socket (15 s); 1 if the process died.
wait_socket() {
    local pid=$1 sock=$2 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [ -S "$sock" ] && return 0
        sleep 0.05
    done
    return 1
}

cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'
}

declare -A pid_of sock_of
names=()
start_switchboard() {
    local name=$1 bin=$2 dir=$tmp/$1
    mkdir -p "$dir"
    cat >"$dir/sb.yaml" <<EOF
broker:
  data_dir: '$dir/data'
  log: { level: warn }
  admin: { endpoint: 'off' }
adapters:
  - { name: jsonl, type: unix, path: '$dir/jsonl.sock', protocol: jsonl }
EOF
    "$bin" run --config "$dir/sb.yaml" >"$dir/log" 2>&1 &
    pid_of[$name]=$!
    pids+=($!)
    sock_of[$name]=$dir/jsonl.sock
    wait_socket $! "$dir/jsonl.sock" || { echo "$name did not start:"; cat "$dir/log"; exit 1; }
    names+=("$name")
}

start_switchboard switchboard "$sb_bin"
[ -n "${SWITCHBOARD_BASE:-}" ] && start_switchboard base "$SWITCHBOARD_BASE"
mkdir -p "$tmp/gcproto"
if [ "$durability" = memory ]; then
    "$proto" --memory "$tmp/gcproto/gc.sock" >"$tmp/gcproto/log" 2>&1 &
else
    "$proto" "$tmp/gcproto/gc.sock" "$tmp/gcproto/gc.db" >"$tmp/gcproto/log" 2>&1 &
fi
pid_of[gcproto]=$!
pids+=($!)
sock_of[gcproto]=$tmp/gcproto/gc.sock
wait_socket $! "$tmp/gcproto/gc.sock" || { echo "gcproto did not start:"; cat "$tmp/gcproto/log"; exit 1; }
names+=(gcproto)

echo "== bench-fsync: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $runs rounds: $count messages of 100 B, $producers producers (window $window)," \
    "$consumers consumers (window $sub_window), durability $durability; one at a time: $lat_count"

declare -A rate cpu lat
for ((r = 1; r <= runs; r++)); do
    for name in "${names[@]}"; do
        before=$(cpu_ticks "${pid_of[$name]}")
        line=$("$sbctl" bench -e "unix:${sock_of[$name]}" -n "$count" -p "$producers" \
            -c "$consumers" -w "$window" --sub-window "$sub_window" -d "$durability" --json 2>&1)
        after=$(cpu_ticks "${pid_of[$name]}")
        mps=$(printf '%s' "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print("%.0f" % r["msgs_per_s"] if r["ok"] else 0)' 2>/dev/null)
        us=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$count" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        [ -n "$mps" ] && [ "$mps" != 0 ] || { echo "   $name round $r FAILED: $line"; mps=0; }
        printf '   round %d %-12s %8s msgs/s  %s us CPU/msg\n' "$r" "$name" "$mps" "$us"
        rate[$name]+="$mps "
        cpu[$name]+="$us "
        if [ "$lat_count" -gt 0 ]; then
            l=$("$sbctl" bench -e "unix:${sock_of[$name]}" -n "$lat_count" -p 1 -c 1 \
                --one-at-a-time -d "$durability" --json 2>&1 |
                python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print("%.0f" % r["puback_p50_us"] if r["ok"] else "")' 2>/dev/null)
            lat[$name]+="$l "
        fi
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}'; }
echo
printf '%-12s %10s %12s %16s\n' server "msgs/s" "CPU us/msg" "1x1 puback p50"
for name in "${names[@]}"; do
    printf '%-12s %10s %12s %16s\n' "$name" "$(echo ${rate[$name]} | median)" \
        "$(echo ${cpu[$name]} | median)" "$(echo ${lat[$name]:-} | median) us"
done
# ratios per round: median [min-max]
ratios() {
    local a=($1) b=($2) i out=""
    for i in "${!a[@]}"; do
        out+="$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { if (y > 0) printf "%.2f", x / y }') "
    done
    printf '%s [%s-%s]' "$(echo $out | median)" "$(echo $out | tr ' ' '\n' | grep . | sort -g | head -1)" \
        "$(echo $out | tr ' ' '\n' | grep . | sort -g | tail -1)"
}
echo "switchboard / gcproto per round: msgs/s $(ratios "${rate[switchboard]}" "${rate[gcproto]}")," \
    "CPU per message $(ratios "${cpu[switchboard]}" "${cpu[gcproto]}")"
[ -n "${SWITCHBOARD_BASE:-}" ] &&
    echo "switchboard / base per round: msgs/s $(ratios "${rate[switchboard]}" "${rate[base]}")," \
        "CPU per message $(ratios "${cpu[switchboard]}" "${cpu[base]}")"
# entries the broker never wrote: acknowledged before their commit began
for name in "${names[@]}"; do
    [ "$name" = gcproto ] && continue
    "$sbctl" -e "unix:${sock_of[$name]}" stats --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["store"]
if "elided" in s:
    print("%s: %d entries never written (acknowledged before their commit), %d store commits"
          % (sys.argv[1], s["elided"], s["commits"]))' "$name" || true
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
