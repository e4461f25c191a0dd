#!/bin/sh
# The shared-memory ring (type filemap) bare and through Switchboard, beside
# the same load over jsonl, in one run:
#
#     tools/bench/ring-bench.sh [BUILD_DIR]          Linux: jsonl over a Unix socket
#     tools/bench/ring-bench.sh --wine [BUILD_DIR]   Wine: jsonl over a named pipe
#
# BUILD_DIR (default build/release, with --wine build/mingw) must hold the
# broker and tools/bench/ringbench (built, not built here). One broker is
# started with a generated config in a temp dir: three in rings (routes of
# the memory, batched and fsync classes), an out ring and a jsonl endpoint.
# Each round (SB_BENCH_REPEAT, default 3, after a warm-up) runs, back to
# back so that load from other work hits them alike:
#
#   bare        ringbench bare: a producer process and a reader doing what
#               the broker's adapter does, no broker (the ring alone)
#   ring CLASS  ringbench produce: N records into the in ring of CLASS, then
#               the wait for the last one's commit (first write to commit)
#   jsonl CLASS ringbench pub: N jsonl pubs, W awaiting their puback (first
#               send to last puback) -- the same load over the socket/pipe
#   out ring    N messages queued for the out ring (not timed), then
#               ringbench consume: attach, read and release all N
#   out jsonl   the same for a jsonl subscriber (window W), acking each
#
# Queues are emptied between cases (not timed). Reported: the median rate of
# the rounds, the broker's CPU per message (from /proc; under Wine the
# broker's process and this prefix's wineserver), the client's CPU per
# message, ring/jsonl ratios taken per round (median [min-max]), the share
# of the broker's CPU its ring thread takes (Linux: the thread is named
# sbring-in), and the load average before and after. The bare reader's CPU
# per message includes its spinning while it waits for the producer.
# Environment: SB_BENCH_N (200000; Wine 50000), SB_BENCH_SIZE (100),
# SB_BENCH_WINDOW (256), SB_BENCH_REPEAT (3), SB_BENCH_KEEP=1 keeps the temp
# dir.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
mode=native
if [ "${1:-}" = --wine ]; then
    mode=wine
    shift
fi
if [ $mode = wine ]; then build=${1:-$top/build/mingw}; else build=${1:-$top/build/release}; fi
build=$(cd "$build" && pwd)
exe=
[ $mode = wine ] && exe=.exe
sb=$build/service/switchboard$exe
rb=$build/tools/bench/ringbench$exe
for f in "$sb" "$rb"; do
    [ -f "$f" ] || { echo "ring-bench.sh: $f is missing: build it first" >&2; exit 2; }
done
if [ $mode = wine ]; then N=${SB_BENCH_N:-50000}; else N=${SB_BENCH_N:-200000}; fi
SIZE=${SB_BENCH_SIZE:-100}
W=${SB_BENCH_WINDOW:-256}
REPEAT=${SB_BENCH_REPEAT:-3}
tag=rb$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-ringbench.XXXXXX")
bpid=
wspid=

if [ $mode = wine ]; then
    if [ -z "${WINEPREFIX:-}" ]; then
        WINEPREFIX=$("$top/packaging/windows/wine-prefix.sh" "$build/wineprefix")
    fi
    export WINEPREFIX WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=;winedbg.exe=d"
    unset DISPLAY WAYLAND_DISPLAY
    wine=$(command -v wine || echo /usr/lib/wine/wine64)
    wineserver=$(command -v wineserver || echo /usr/lib/wine/wineserver)
    run() { "$wine" "$@"; }
    wpath() { printf 'Z:%s' "$1" | tr / '\\'; }
    data=$(wpath "$tmp/data")
    endpoint="pipe:$tag-jsonl"
    jsonl_adapter="{ name: jsonl, type: pipe, path: $tag-jsonl, protocol: jsonl }"
    cfg=$(wpath "$tmp/switchboard.yaml")
else
    run() { "$@"; }
    data=$tmp/data
    endpoint="unix:$tmp/jsonl.sock"
    jsonl_adapter="{ name: jsonl, type: unix, path: '$tmp/jsonl.sock', protocol: jsonl }"
    cfg=$tmp/switchboard.yaml
fi

cleanup() {
    rc=$?
    set +e
    if [ -n "$bpid" ] && kill -0 "$bpid" 2>/dev/null; then
        kill "$bpid" 2>/dev/null # SIGTERM: the broker's orderly stop (Wine: ends it)
        wait "$bpid" 2>/dev/null
    fi
    [ $mode = wine ] && "$wineserver" -k 2>/dev/null
    for r in memory batched fsync out; do rm -f "/dev/shm/$tag-$r"; done
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "ring-bench.sh: kept $tmp (config, broker.log, results)" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/switchboard.yaml" <<EOF
broker:
  data_dir: '$data'
  admin: { endpoint: 'off' }
  log: { level: warn }
adapters:
  - $jsonl_adapter
  - { name: rin-memory, type: filemap, ring: $tag-memory, capacity: 4MiB, read_ahead: 1024 }
  - { name: rin-batched, type: filemap, ring: $tag-batched, capacity: 4MiB, read_ahead: 1024 }
  - { name: rin-fsync, type: filemap, ring: $tag-fsync, capacity: 4MiB, read_ahead: 1024 }
  - { name: rout, type: filemap, ring: $tag-out, direction: out, capacity: 4MiB, inflight: 1024 }
routes:
  - { name: q-memory, from: bench/memory/#, durability: memory }
  - { name: q-batched, from: bench/batched/#, durability: batched }
  - { name: q-fsync, from: bench/fsync/#, durability: fsync }
  - { name: out-ring, from: bench/out/ring/#, to: rout, durability: memory }
  - { name: out-jsonl, from: bench/out/jsonl/#, durability: memory }
EOF

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ $mode = wine ]; then
    "$wineserver" -p 2>/dev/null || true
    "$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
    for p in $(pgrep -x wineserver64 2>/dev/null; pgrep -x wineserver 2>/dev/null); do
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "WINEPREFIX=$WINEPREFIX"; then
            wspid=$p
        fi
    done
fi
# Not through run(): $! must be the broker's own process (its CPU is read).
if [ $mode = wine ]; then
    "$wine" "$sb" run --config "$cfg" >"$tmp/broker.log" 2>&1 </dev/null &
else
    "$sb" run --config "$cfg" >"$tmp/broker.log" 2>&1 </dev/null &
fi
bpid=$!
i=0
until run "$rb" drain "$endpoint" q-memory >/dev/null 2>&1; do
    kill -0 "$bpid" 2>/dev/null || { echo "ring-bench.sh: the broker exited:" >&2; cat "$tmp/broker.log" >&2; exit 1; }
    i=$((i + 1))
    [ $i -lt 150 ] || { echo "ring-bench.sh: the broker is not ready after 30 s" >&2; exit 1; }
    sleep 0.2
done

ticks() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; else echo 0; fi; }
# CPU ticks of the broker's ring threads (named sbring-in / sbring-out; Linux).
ring_ticks() {
    t=0
    for d in /proc/$bpid/task/*; do
        case $(cat "$d/comm" 2>/dev/null) in
        sbring-*) t=$((t + $(awk '{print $14 + $15}' "$d/stat" 2>/dev/null || echo 0))) ;;
        esac
    done
    echo $t
}
hz=$(getconf CLK_TCK)

# case KEY ARGS...: one timed ringbench run; appends "ROUND KEY RATE N
# BROKER_US CLIENT_US EXTRA_US WINESERVER_US" to results.
r=0
case_() {
    key=$1
    shift
    b0=$(ticks "$bpid")
    w0=$(ticks "$wspid")
    t0=$(ring_ticks)
    out=$(run "$rb" "$@" 2>>"$tmp/ringbench.err" </dev/null) || {
        echo "ring-bench.sh: $key failed (see $tmp/ringbench.err)" >&2
        exit 1
    }
    b1=$(ticks "$bpid")
    w1=$(ticks "$wspid")
    t1=$(ring_ticks)
    printf '%s\n' "$out" >>"$tmp/results.raw"
    rate=$(printf '%s\n' "$out" | sed -n '1s/.* rate=\([0-9.]*\).*/\1/p')
    cu=$(printf '%s\n' "$out" | sed -n 's/.* cpu_us=\([0-9.]*\).*/\1/p' | tail -n 1)
    ru=$(printf '%s\n' "$out" | sed -n 's/.* reader_us=\([0-9.]*\).*/\1/p')
    n=$(printf '%s\n' "$out" | sed -n '1s/.* n=\([0-9]*\).*/\1/p')
    echo "$r $key ${rate:-0} $n $(((b1 - b0) * 1000000 / hz)) ${cu:-0} ${ru:-0} $(((w1 - w0) * 1000000 / hz)) $(((t1 - t0) * 1000000 / hz))" >>"$tmp/results"
    printf '  %-14s %9s msgs/s\n' "$key" "${rate:-0}" >&2
}
drain() { run "$rb" drain "$endpoint" "$1" >/dev/null 2>>"$tmp/ringbench.err"; }

round() {
    case_ bare bare -n "$1" -s "$SIZE"
    for d in memory batched fsync; do
        case_ "ring.$d" produce "$tag-$d" -n "$1" -s "$SIZE" --topic "bench/$d/ring"
        drain "q-$d"
        case_ "jsonl.$d" pub "$endpoint" -n "$1" -s "$SIZE" -w "$W" --topic "bench/$d/jsonl"
        drain "q-$d"
    done
    run "$rb" fill "$endpoint" bench/out/ring/x -n "$1" -s "$SIZE" -w "$W" >/dev/null
    case_ out.ring consume "$tag-out" -n "$1"
    run "$rb" fill "$endpoint" bench/out/jsonl/x -n "$1" -s "$SIZE" -w "$W" >/dev/null
    case_ out.jsonl sub "$endpoint" out-jsonl -n "$1" -w 1024
}

echo "ring-bench.sh: $mode, $REPEAT rounds of $N messages of $SIZE bytes; broker log in $tmp/broker.log" >&2
echo "warm-up" >&2
round $((N / 10))
r=1
while [ $r -le "$REPEAT" ]; do
    echo "round $r/$REPEAT (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    round "$N"
    r=$((r + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
if [ $mode = wine ]; then
    echo "Switchboard under Wine ($("$wine" --version 2>/dev/null)), jsonl over a named pipe"
else
    echo "Switchboard on Linux ($(uname -r)), jsonl over a Unix socket"
fi
echo "$(nproc) cores; $REPEAT rounds of $N messages of $SIZE bytes, jsonl window $W"
echo "load average before: $load_before   after: $load_after"
echo
awk -v wine=$mode '
function med(a, n,    i, j, t) {
    if (n == 0) return -1
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function median(key, col,    n, r, v) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((r, key, col) in val) v[++n] = val[r, key, col]
    return med(v, n)
}
function ratio(a, b, col,    n, r, v, lo, hi) {
    n = 0; lo = 1e18; hi = 0
    for (r = 1; r <= rounds; r++)
        if (val[r, a, col] > 0 && val[r, b, col] > 0) {
            v[++n] = val[r, a, col] / val[r, b, col]
            if (v[n] < lo) lo = v[n]; if (v[n] > hi) hi = v[n]
        }
    if (n == 0) return "-"
    return sprintf("%.2f [%.2f-%.2f]", med(v, n), lo, hi)
}
$1 > 0 {
    if ($1 > rounds) rounds = $1
    val[$1, $2, "rate"] = $3
    val[$1, $2, "broker"] = $4 > 0 ? $5 / $4 : 0
    val[$1, $2, "client"] = $6
    val[$1, $2, "reader"] = $7
    val[$1, $2, "wsrv"] = $4 > 0 ? $8 / $4 : 0
    val[$1, $2, "thread"] = $4 > 0 ? $9 / $4 : 0
}
END {
    printf "%-26s %10s %12s %12s%s\n", "CASE", "MSGS/S", "BROKER us", "CLIENT us", wine == "wine" ? "   WINESERVER us" : ""
    n = split("bare ring.memory jsonl.memory ring.batched jsonl.batched ring.fsync jsonl.fsync out.ring out.jsonl", k, " ")
    split("bare ring (producer+reader);ring -> broker, memory;jsonl -> broker, memory;ring -> broker, batched;jsonl -> broker, batched;ring -> broker, fsync;jsonl -> broker, fsync;broker -> ring consumer;broker -> jsonl consumer", label, ";")
    for (i = 1; i <= n; i++) {
        b = k[i] == "bare" ? sprintf("(reader %.2f)", median(k[i], "reader")) : sprintf("%.2f", median(k[i], "broker"))
        printf "%-26s %10.0f %12s %12.2f%s\n", label[i], median(k[i], "rate"), b, median(k[i], "client"), wine == "wine" ? sprintf("   %14.2f", median(k[i], "wsrv")) : ""
    }
    printf "\nring / jsonl, msgs/s (per round: median [min-max]):\n"
    printf "  ingest memory %s, batched %s, fsync %s; delivery %s\n", ratio("ring.memory", "jsonl.memory", "rate"), ratio("ring.batched", "jsonl.batched", "rate"), ratio("ring.fsync", "jsonl.fsync", "rate"), ratio("out.ring", "out.jsonl", "rate")
    printf "ring / jsonl, broker CPU per message: ingest memory %s; delivery %s\n", ratio("ring.memory", "jsonl.memory", "broker"), ratio("out.ring", "out.jsonl", "broker")
    if (wine != "wine")
        printf "the broker'"'"'s ring thread, share of the broker'"'"'s CPU per message: memory %.0f%% (%.2f us), batched %.0f%%, fsync %.0f%%\n", 100 * median("ring.memory", "thread") / median("ring.memory", "broker"), median("ring.memory", "thread"), 100 * median("ring.batched", "thread") / median("ring.batched", "broker"), 100 * median("ring.fsync", "thread") / median("ring.fsync", "broker")
}' "$tmp/results"
