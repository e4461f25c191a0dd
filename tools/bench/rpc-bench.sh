#!/bin/sh
# The MS-RPC interface through Switchboard versus a bare server of the same
# interface, under Wine, in one run.
#
#     tools/bench/rpc-bench.sh [BUILD_DIR]        (default build/mingw)
#
# Builds nothing: BUILD_DIR must hold a MinGW build with
# service/switchboard.exe, tools/bench/rpcbench.exe and
# tools/bench/rpc_bare.exe. Uses the Wine prefix $WINEPREFIX, else
# BUILD_DIR/wineprefix (made by packaging/windows/wine-prefix.sh if
# missing). Cases, each SB_BENCH_REPEAT times (default 3, interleaved so
# that load from other work on the machine hits them alike), reporting the
# median rate and the ratio through Switchboard / bare taken per round, as
# the median with its [min-max]:
#
#   publish  bare: rpcbench publishes to rpc_bare, whose SbPublish only
#                  answers (same IDL, stubs and runtime), one call at a time
#            memory / fsync: the same client publishes to the broker's rpc
#                  adapter over ncalrpc, each call returning after the
#                  commit, routed to a queue of that durability class
#   pull+ack memory: rpcbench pulls what the memory case published, in
#                  batches of 100, acknowledging each batch with one call
#
# With the rates: the server's CPU seconds per 1000 calls (rpc_bare's or the
# broker's own process, from /proc; the wineserver's share is not counted),
# which load from other work on the machine does not change as it does the
# rates. Environment: SB_BENCH_REPEAT
# (3), SB_BENCH_COUNT (3000 publishes per case), SB_BENCH_KEEP=1 keeps the
# temp dir.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/mingw}
if [ ! -d "$build" ]; then
    echo "rpc-bench.sh: $build: no such build directory" >&2
    exit 2
fi
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
bench=$build/tools/bench/rpcbench.exe
bare=$build/tools/bench/rpc_bare.exe
for f in "$sb" "$bench" "$bare"; do
    if [ ! -f "$f" ]; then
        echo "rpc-bench.sh: $f is missing: build it first" >&2
        exit 2
    fi
done
REPEAT=${SB_BENCH_REPEAT:-3}
COUNT=${SB_BENCH_COUNT:-3000}

. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-rpcbench.XXXXXX")
tag=sbb$$
pids=
cleanup() {
    rc=$?
    set +e
    for p in $pids; do kill "$p" 2>/dev/null; done
    "$wineserver" -k 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "rpc-bench.sh: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/switchboard.yaml" <<EOF
broker:
  data_dir: '$(wpath "$tmp/data")'
  admin: { endpoint: 'off' }
adapters:
  - { name: rpc, type: rpc, endpoint: '${tag}-broker' }
routes:
  - { name: q-memory, from: memory/#, durability: memory }
  - { name: q-fsync, from: fsync/#, durability: fsync, max_depth: 10000, overflow: drop-oldest }
EOF

"$wineserver" -p 2>/dev/null || true
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

"$wine" "$bare" "${tag}-bare" >"$tmp/bare.out" 2>&1 </dev/null &
bare_pid=$!
pids="$pids $!"
"$wine" "$sb" run --config "$(wpath "$tmp/switchboard.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
broker_pid=$!
pids="$pids $!"
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null && grep -q READY "$tmp/bare.out"; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "rpc-bench.sh: not ready after 60 s:" >&2
        cat "$tmp/broker.log" "$tmp/bare.out" >&2
        exit 1
    fi
    sleep 0.2
done

# cpu PID: the process's user + system clock ticks.
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run SERVER_PID ARGS...: runs rpcbench, prints "RATE SERVER_CPU_S_PER_1000".
run() {
    server=$1
    shift
    before=$(cpu "$server")
    if ! "$wine" "$bench" "$@" >"$tmp/out" 2>&1 </dev/null; then
        cat "$tmp/out" >&2
        exit 1
    fi
    after=$(cpu "$server")
    tr -d '\r' <"$tmp/out" | sed -n 's/^RATE \([0-9]*\) .*/\1/p' |
        awk -v n="$COUNT" -v t=$((after - before)) -v hz="$hz" \
            '{ printf "%s %.3f\n", $1, t / hz * 1000 / n }'
}

echo "rpc-bench.sh: $REPEAT rounds, $COUNT calls per case; in $tmp" >&2
: >"$tmp/results"
r=0
while [ $r -le "$REPEAT" ]; do
    # round 0 warms up and is not reported
    pb=$(run "$bare_pid" "${tag}-bare" pub memory/x "$COUNT")
    pm=$(run "$broker_pid" "${tag}-broker" pub memory/x "$COUNT")
    pf=$(run "$broker_pid" "${tag}-broker" pub fsync/x "$COUNT")
    pa=$(run "$broker_pid" "${tag}-broker" pull q-memory "$COUNT" 100)
    echo "round $r: publish bare=$pb memory=$pm fsync=$pf; pull+ack=$pa (rate, server CPU s per 1000)" >&2
    if [ $r -gt 0 ]; then
        echo "$pb $pm $pf $pa" >>"$tmp/results"
    fi
    r=$((r + 1))
done

python3 - "$tmp/results" "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
def med(i): return statistics.median(r[i] for r in rows)
def ratio(i, j):
    v = [r[i] / r[j] * 100 for r in rows if r[j] > 0]
    return "%3.0f%% [%.0f-%.0f]" % (statistics.median(v), min(v), max(v)) if v else "-"
print("%-10s %10s %10s %10s   %-16s %-16s" % ("case", "bare /s", "memory /s", "fsync /s",
                                             "memory/bare", "fsync/bare"))
print("%-10s %10.0f %10.0f %10.0f   %-16s %-16s" % ("publish", med(0), med(2), med(4),
      ratio(2, 0), ratio(4, 0)))
print("%-10s %10s %10.0f %10s" % ("pull+ack", "-", med(6), "-"))
print("server CPU s per 1000 messages: bare %.3f, memory %.3f, fsync %.3f, pull+ack %.3f"
      % (med(1), med(3), med(5), med(7)))
print("load average before: %s, after: %s" % (sys.argv[2], sys.argv[3]))
PY
