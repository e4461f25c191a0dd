#!/bin/sh
# Wineserver requests per message of the named-pipe cases of run-wine.sh:
# the raw mechanism and the same through Switchboard, counted rather than
# timed, so that the load from other work on the machine does not change
# them.
#
#     tools/bench/wine-requests.sh [BUILD_DIR]        (default build/h-bench)
#
# Under Wine every pipe call, completion packet, thread wake-up and APC is a
# round trip to the single wineserver process, so requests per message
# bound what a mechanism can do there. This runs a wineserver of its own
# with request tracing (`wineserver -f -d1`, far too slow for timing: only
# short runs) for BUILD_DIR/wineprefix, starts the broker on a pipe-only
# config, runs each case once with a small count and counts the trace's
# requests during it: the broker's (its threads found from /proc), the
# clients' (every other thread) and all. Replies, wake-ups and signals are
# not counted. Cases as in run-wine.sh (memory class only):
#
#   raw.rr   ipcbench pipe -w 1              mem.rr   jsonl pub W=1 -> queue -> jsonl consumer
#   raw.plb  ipcbench pipe -w W --bytes      mem.pl   jsonl pub W -> queue -> jsonl consumer
#   raw.pl   ipcbench pipe -w W              mem.ow   raw message pipe -> queue -> jsonl consumer
#   raw.ow   ipcbench pipe -w 0
#
# The counts move by about one request per message from run to run (a
# completion that arrives while the loop runs costs a signal and more
# requests than one that finds it waiting): each case runs SB_BENCH_REPEAT
# times (3) and the medians are printed, with the broker's range.
#
# Environment: SB_BENCH_WINDOW (64), SB_BENCH_REPEAT (3), SB_BENCH_KEEP=1 keeps the trace,
# SB_BENCH_DETAIL=1 also lists each case's requests per message by request
# (select, read, write, remove_completion, ...) and broker thread (the
# trace's thread id: the loop and the pipe I/O thread are told apart by
# what they do; the loop's remove_completion is its GetQueuedCompletionStatusEx).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/h-bench}
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
ipc=$build/tools/bench/ipcbench.exe
for f in "$sb" "$ipc"; do
    if [ ! -f "$f" ]; then
        echo "wine-requests.sh: $f is missing: build it first" >&2
        exit 2
    fi
done
WINDOW=${SB_BENCH_WINDOW:-64}
REPEAT=${SB_BENCH_REPEAT:-3}
. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-winereq.XXXXXX")
tag=sbr$$
bpid=
wspid=
cleanup() {
    rc=$?
    set +e
    if [ -n "$bpid" ] && kill -0 "$bpid" 2>/dev/null; then
        "$wine" "$ipc" stop-broker >/dev/null 2>&1
        wait "$bpid" 2>/dev/null
    fi
    "$wineserver" -k 2>/dev/null
    [ -n "$wspid" ] && wait "$wspid" 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "wine-requests.sh: kept $tmp" >&2
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
  log: { level: info, stderr: true }
adapters:
  - { name: jsonl, type: pipe, path: $tag-jsonl, protocol: jsonl }
  - { name: raw-memory, type: pipe, path: $tag-raw-memory, protocol: raw, framing: message, topic: bench/memory/q/raw }
routes:
  - { name: q-memory, from: bench/memory/q/#, durability: memory }
EOF

"$wineserver" -k 2>/dev/null || true
"$wineserver" -f -p -d1 2>"$tmp/trace" &
wspid=$!
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
"$wine" "$sb" run --config "$(wpath "$tmp/switchboard.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
bpid=$!
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null &&
    "$wine" "$ipc" ping "$tag-jsonl" 5000 >/dev/null 2>&1; do
    i=$((i + 1))
    if ! kill -0 "$bpid" 2>/dev/null || [ $i -gt 300 ]; then
        echo "wine-requests.sh: the broker did not start:" >&2
        cat "$tmp/broker.log" >&2
        exit 1
    fi
    sleep 0.2
done

# count KEY N ARGS...: runs one case; prints requests per message.
count() {
    key=$1
    n=$2
    shift 2
    a=$(wc -l <"$tmp/trace")
    out=$("$wine" "$ipc" "$@" -n "$n" -s 100 2>/dev/null </dev/null | grep '^RESULT' || true)
    b=$(wc -l <"$tmp/trace")
    case "$out" in *ok=1*) ;; *) echo "wine-requests.sh: $key failed: $out" >&2; exit 1 ;; esac
    # The broker's threads: their unix tids, then their ids in the trace.
    ls "/proc/$bpid/task" >"$tmp/tids"
    awk -v a="$a" -v b="$b" -v key="$key" -v n="$n" -v detail="${SB_BENCH_DETAIL:-0}" \
        -v results="$tmp/results" '
        FNR == NR { tid[$1] = 1; next }
        / init_(first_)?thread\( / {
            if (match($0, /unix_tid=[0-9]+/)) {
                t = substr($0, RSTART + 9, RLENGTH - 9)
                id = substr($1, 1, length($1) - 1)
                if (t in tid) broker[id] = 1
            }
        }
        FNR <= a || FNR > b { next }
        $2 ~ /^[a-z_]+\($/ {
            id = substr($1, 1, length($1) - 1)
            all++
            if (id in broker) bk++
            req[(id in broker ? "broker thread " id : "clients") " " substr($2, 1, length($2) - 1)]++
        }
        END {
            printf "%s %d %.2f %.2f %.2f\n", key, n, bk / n, (all - bk) / n, all / n >>results
            if (detail == 1)
                for (r in req)
                    if (req[r] / n >= 0.001)
                        printf "    %-44s %9.3f\n", r, req[r] / n | "sort"
        }
    ' "$tmp/tids" "$tmp/trace"
}

j=$tag-jsonl
count warm 200 broker --in "pub:$j:bench/memory/q/pub" -w 1 --out "jsonl:$j:q-memory"
: >"$tmp/results"
r=1
while [ $r -le "$REPEAT" ]; do
    count raw.rr 1000 pipe -w 1
    count raw.plb 20000 pipe -w "$WINDOW" --bytes
    count raw.pl 2000 pipe -w "$WINDOW"
    count raw.ow 5000 pipe -w 0
    count mem.rr 1000 broker --in "pub:$j:bench/memory/q/pub" -w 1 --out "jsonl:$j:q-memory"
    count mem.pl 10000 broker --in "pub:$j:bench/memory/q/pub" -w "$WINDOW" --out "jsonl:$j:q-memory"
    count mem.ow 2000 broker --in "rawpipe:$tag-raw-memory" --out "jsonl:$j:q-memory"
    r=$((r + 1))
done
# Medians over the runs; the range of the broker's.
awk -v runs="$REPEAT" '
function med(a, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ if (!($1 in k)) { order[++keys] = $1; k[$1] = 0 }
  i = ++k[$1]; msgs[$1] = $2; bk[$1, i] = $3; cl[$1, i] = $4; al[$1, i] = $5 }
END {
    printf "%-8s %8s %19s %9s %9s   (median of %d runs)\n", "CASE", "MESSAGES", "BROKER [min-max]", "CLIENTS", "ALL", runs
    for (o = 1; o <= keys; o++) {
        key = order[o]; n = k[key]; lo = 1e9; hi = 0
        for (i = 1; i <= n; i++) {
            b[i] = bk[key, i]; c[i] = cl[key, i]; a[i] = al[key, i]
            if (b[i] < lo) lo = b[i]
            if (b[i] > hi) hi = b[i]
        }
        printf "%-8s %8d %5.2f [%4.2f-%4.2f] %9.2f %9.2f\n", key, msgs[key], med(b, n), lo, hi, med(c, n), med(a, n)
    }
}' "$tmp/results"
echo "(wineserver requests per message; replies, wake-ups and signals not counted)"
