#!/bin/sh
# COM Publish through Switchboard versus a bare COM server, under Wine, in
# one run.
#
#     tools/bench/com-bench.sh [BUILD_DIR]        (default build/mingw)
#
# Builds nothing: BUILD_DIR must hold a MinGW build with
# service/switchboard.exe, tests/win/com/com_client.exe (the client) and
# tools/bench/com_bare.exe (a bare out-of-process COM server with IBroker's
# signature: Publish counts and returns). Uses the Wine prefix $WINEPREFIX,
# else BUILD_DIR/wineprefix (made by packaging/windows/wine-prefix.sh if
# missing), where it registers Switchboard.Broker (with an endpoint of its
# own) and the bare class, and removes both at the end. Cases, each
# SB_BENCH_REPEAT times (default 3, interleaved so that load from other work
# on the machine hits them alike; a warm-up round first), reporting the
# median rate and the ratio through Switchboard / bare per round as the
# median with its [min-max]:
#
#   bare     com_client calls Publish SB_BENCH_CALLS times on com_bare
#   memory   the same calls on Switchboard.Broker: the relay COM started,
#            a jsonl pub over the com endpoint, routed to a queue of the
#            memory class, the id returned after the commit
#   fsync    the same, routed to a queue of the fsync class
#
# One client, one call at a time (a script's pattern). The broker runs in
# the foreground (`switchboard run`). Environment: SB_BENCH_REPEAT (3),
# SB_BENCH_CALLS (2000), SB_BENCH_KEEP=1 keeps the temp dir.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/mingw}
if [ ! -d "$build" ]; then
    echo "com-bench.sh: $build: no such build directory" >&2
    exit 2
fi
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
cli=$build/tests/win/com/com_client.exe
bare=$build/tools/bench/com_bare.exe
for f in "$sb" "$cli" "$bare"; do
    if [ ! -f "$f" ]; then
        echo "com-bench.sh: $f is missing: build it first" >&2
        exit 2
    fi
done
REPEAT=${SB_BENCH_REPEAT:-3}
CALLS=${SB_BENCH_CALLS:-2000}
BARE='{2c5ac8d7-6c7a-48ef-9a18-48424aab0f33}'

. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-combench.XXXXXX")
endpoint=sb-combench-$$
pids=
cleanup() {
    rc=$?
    set +e
    "$wine" "$sb" com unregister >/dev/null 2>&1
    "$wine" "$bare" unregister >/dev/null 2>&1
    for p in $pids; do kill "$p" 2>/dev/null; done
    "$wineserver" -k 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "com-bench.sh: kept $tmp" >&2
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
  - { name: com, type: com, endpoint: '$endpoint' }
routes:
  - { name: q-memory, from: memory/#, durability: memory, max_depth: 100000, overflow: drop-oldest }
  - { name: q-fsync, from: fsync/#, durability: fsync, max_depth: 100000, overflow: drop-oldest }
EOF

"$wineserver" -p 2>/dev/null || true
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$wine" "$sb" com register --endpoint "$endpoint" >"$tmp/register.out" 2>&1 </dev/null
"$wine" "$bare" register >/dev/null 2>&1 </dev/null
"$wine" "$sb" run --config "$(wpath "$tmp/switchboard.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
pids="$pids $!"
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "com-bench.sh: the broker is not ready after 60 s:" >&2
        cat "$tmp/broker.log" >&2
        exit 1
    fi
    sleep 0.2
done

# bench TOPIC [CLSID]: prints the rate.
bench() {
    "$wine" "$cli" bench "$CALLS" "$@" >"$tmp/out" 2>&1 </dev/null || true
    r=$(sed -n 's/^RATE \([0-9]*\).*/\1/p' "$tmp/out" | tail -n 1)
    if [ -z "$r" ]; then
        echo "com-bench.sh: no rate:" >&2
        cat "$tmp/out" >&2
        echo 0
    else
        echo "$r"
    fi
}

echo "com-bench.sh: $REPEAT rounds of $CALLS calls per case; in $tmp" >&2
: >"$tmp/results"
r=0
while [ $r -le "$REPEAT" ]; do
    # round 0 warms up and is not reported
    b=$(bench bench/bare "$BARE")
    m=$(bench memory/com)
    f=$(bench fsync/com)
    echo "round $r: bare=$b memory=$m fsync=$f" >&2
    if [ $r -gt 0 ]; then
        echo "$b $m $f" >>"$tmp/results"
    fi
    r=$((r + 1))
done

python3 - "$tmp/results" "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
def med(i): return statistics.median(r[i] for r in rows)
def ratio(i):
    v = [r[i] / r[0] * 100 for r in rows if r[0] > 0]
    return "%3.0f%% [%.0f-%.0f]" % (statistics.median(v), min(v), max(v)) if v else "-"
print("Publish calls/s, one client, one call at a time (median of %d rounds)" % len(rows))
print("| bare COM server | memory | fsync | memory / bare | fsync / bare |")
print("|---|---|---|---|---|")
print("| %.0f | %.0f | %.0f | %s | %s |" % (med(0), med(1), med(2), ratio(1), ratio(2)))
print("load average before: %s, after: %s" % (sys.argv[2], sys.argv[3]))
PY
