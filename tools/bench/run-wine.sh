#!/bin/sh
# Raw Windows IPC versus the same mechanism through Switchboard, under Wine.
#
#     tools/bench/run-wine.sh [BUILD_DIR]        (default build/h-bench)
#
# Builds nothing: BUILD_DIR must hold a MinGW build with
# service/switchboard.exe and tools/bench/ipcbench.exe. Uses the Wine prefix
# $WINEPREFIX, else BUILD_DIR/wineprefix (made by
# packaging/windows/wine-prefix.sh if missing). In one Wine session it
# starts the broker with a generated config in a temp dir (data there too),
# waits until it answers a jsonl ping, runs every case SB_BENCH_REPEAT times
# (default 3, 7 with SB_BENCH_ONLY=pipe; the cases interleaved so that load
# from other work on the machine hits them alike; a short warm-up first),
# stops the broker and the session, and prints the median msgs/s per case
# and the ratio through Switchboard / raw, taken per round (both sides
# under the same load) and reported as the median with its [min-max] over
# the rounds. Each pipe case runs between two runs of its raw case, and is
# compared with their mean; the second raw run / the first is printed too:
# how far the raw mechanism alone moves between two runs a few seconds
# apart, the noise floor of every ratio:
#
#   mechanism                   raw (ipcbench)      through Switchboard
#   pipe msg req/resp W=1       pipe -w 1           jsonl pub awaiting its puback -> queue -> jsonl consumer
#   pipe byte pipelined W       pipe -w W --bytes   jsonl pub, W awaiting puback -> queue -> jsonl consumer
#   pipe msg pipelined W        pipe -w W           raw `framing: message` pipe producer -> queue -> jsonl consumer
#   pipe msg one way            pipe -w 0           the same raw producer (it has no acknowledgement)
#   mailslot in                 slot                mailslot adapter -> queue -> jsonl consumer
#   mailslot out                slot                jsonl pub (W) -> route -> mailslot sink -> ipcbench reads
#   mailslot -> mailslot        slot                mailslot adapter -> route -> mailslot sink
#
# each through the broker with the memory and with the fsync durability
# class. Every rate is end to end: first send to last receipt. The jsonl
# consumer acknowledges every message; all clients are ipcbench (one process
# per case, producer and consumer on separate connections).
#
# Also printed: CPU time of the broker process and of this prefix's
# wineserver per message (from /proc), and the load average before and
# after. Environment: SB_BENCH_REPEAT (3; 7 for pipes alone), SB_BENCH_WINDOW (64),
# SB_BENCH_SIZE (100), SB_BENCH_SCALE (1: multiplies every message count),
# SB_BENCH_ONLY=pipe runs the named-pipe cases alone (no mailslots),
# SB_BENCH_KEEP=1 keeps the temp dir (config, broker log, raw results).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/h-bench}
if [ ! -d "$build" ]; then
    echo "run-wine.sh: $build: no such build directory" >&2
    exit 2
fi
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
ipc=$build/tools/bench/ipcbench.exe
for f in "$sb" "$ipc"; do
    if [ ! -f "$f" ]; then
        echo "run-wine.sh: $f is missing: build it first (cmake --build $build)" >&2
        exit 2
    fi
done
ONLY=${SB_BENCH_ONLY:-}
if [ "$ONLY" = pipe ]; then REPEAT=${SB_BENCH_REPEAT:-7}; else REPEAT=${SB_BENCH_REPEAT:-3}; fi
WINDOW=${SB_BENCH_WINDOW:-64}
SIZE=${SB_BENCH_SIZE:-100}
SCALE=${SB_BENCH_SCALE:-1}
slots() { [ "$ONLY" != pipe ]; }

. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-ipcbench.XXXXXX")
tag=sbb$$
bpid=

cleanup() {
    rc=$?
    set +e
    if [ -n "$bpid" ] && kill -0 "$bpid" 2>/dev/null; then
        "$wine" "$ipc" stop-broker >/dev/null 2>&1
        i=0
        while kill -0 "$bpid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$bpid" 2>/dev/null; then
            echo "run-wine.sh: the broker did not stop within 10 s; killing it" >&2
            kill "$bpid" 2>/dev/null
        fi
        wait "$bpid" 2>/dev/null
    fi
    "$wineserver" -k 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "run-wine.sh: kept $tmp (config, broker.log, results)" >&2
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
  - { name: raw-fsync, type: pipe, path: $tag-raw-fsync, protocol: raw, framing: message, topic: bench/fsync/q/raw }
  - { name: slot-memory, type: mailslot, path: $tag-slot-memory, topic: bench/memory/q/slot }
  - { name: slot-fsync, type: mailslot, path: $tag-slot-fsync, topic: bench/fsync/q/slot }
  - { name: slot2-memory, type: mailslot, path: $tag-slot2-memory, topic: bench/memory/out/slot }
  - { name: slot2-fsync, type: mailslot, path: $tag-slot2-fsync, topic: bench/fsync/out/slot }
  - { name: slot-out, type: mailslot, connect: '\\\\.\\mailslot\\$tag-out' }
routes:
  - { name: q-memory, from: bench/memory/q/#, durability: memory }
  - { name: q-fsync, from: bench/fsync/q/#, durability: fsync }
  - { name: out-memory, from: bench/memory/out/#, to: slot-out, durability: memory }
  - { name: out-fsync, from: bench/fsync/out/#, to: slot-out, durability: fsync }
EOF

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$wineserver" -p 2>/dev/null || true # an already running server of this prefix is used as is
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true

# This prefix's wineserver (others may run in other prefixes).
wspid=
for p in $(pgrep -x wineserver64 2>/dev/null; pgrep -x wineserver 2>/dev/null); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "WINEPREFIX=$WINEPREFIX"; then
        wspid=$p
    fi
done

"$wine" "$sb" run --config "$(wpath "$tmp/switchboard.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
bpid=$!
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null &&
    "$wine" "$ipc" ping "$tag-jsonl" 2000 >/dev/null 2>&1; do
    if ! kill -0 "$bpid" 2>/dev/null; then
        echo "run-wine.sh: the broker exited:" >&2
        cat "$tmp/broker.log" >&2
        exit 1
    fi
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "run-wine.sh: the broker is not ready after 60 s:" >&2
        cat "$tmp/broker.log" >&2
        exit 1
    fi
    sleep 0.2
done

ticks() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; else echo 0; fi; }

# run_case KEY N ARGS...: one run of ipcbench; appends
# "ROUND KEY RATE OK N BROKER_TICKS WINESERVER_TICKS" to results (round 0:
# the warm-up, not reported).
failures=0
r=0
run_case() {
    key=$1
    n=$(($2 * SCALE))
    shift 2
    b0=$(ticks "$bpid")
    w0=$(ticks "$wspid")
    out=$("$wine" "$ipc" "$@" -n "$n" -s "$SIZE" 2>>"$tmp/ipcbench.err" </dev/null) || true
    b1=$(ticks "$bpid")
    w1=$(ticks "$wspid")
    line=$(printf '%s\n' "$out" | grep '^RESULT' | tail -n 1)
    printf '%s\n' "$line" >>"$tmp/results.raw"
    rate=$(printf '%s\n' "$line" | sed -n 's/.* rate=\([0-9.]*\).*/\1/p')
    ok=$(printf '%s\n' "$line" | sed -n 's/.* ok=\([01]\).*/\1/p')
    if [ "${ok:-0}" != 1 ]; then
        failures=$((failures + 1))
        echo "run-wine.sh: $key failed: ${line:-no result}" >&2
        rate=0
    fi
    echo "$r $key ${rate:-0} ${ok:-0} $n $((b1 - b0)) $((w1 - w0))" >>"$tmp/results"
    printf '  %-16s %8s msgs/s\n' "$key" "${rate:-0}" >&2
}

j=$tag-jsonl
echo "run-wine.sh: $REPEAT rounds; broker log in $tmp/broker.log" >&2
# Warm-up: the first runs after the broker's start are slower.
echo "warm-up" >&2
run_case raw.rr 500 pipe -w 1
run_case memory.pl 2000 broker --in "pub:$j:bench/memory/q/pub" -w "$WINDOW" --out "jsonl:$j:q-memory"
slots && run_case memory.slot2 1000 broker --in "slot:$tag-slot2-memory" --out "slot:$tag-out"
r=1
while [ $r -le "$REPEAT" ]; do
    echo "round $r/$REPEAT (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    # Each pipe case between two runs of the raw case it is compared with
    # (the ratio takes their mean; their own ratio, raw2/raw, shows how
    # much the raw mechanism alone varies from one run to the next): the
    # load from other work changes by the minute on a shared machine.
    run_case raw.rr 3000 pipe -w 1
    run_case memory.rr 1000 broker --in "pub:$j:bench/memory/q/pub" -w 1 --out "jsonl:$j:q-memory"
    run_case fsync.rr 500 broker --in "pub:$j:bench/fsync/q/pub" -w 1 --out "jsonl:$j:q-fsync"
    run_case raw.rr2 3000 pipe -w 1
    run_case raw.plb 100000 pipe -w "$WINDOW" --bytes
    run_case memory.pl 10000 broker --in "pub:$j:bench/memory/q/pub" -w "$WINDOW" --out "jsonl:$j:q-memory"
    run_case fsync.pl 5000 broker --in "pub:$j:bench/fsync/q/pub" -w "$WINDOW" --out "jsonl:$j:q-fsync"
    run_case raw.plb2 100000 pipe -w "$WINDOW" --bytes
    run_case raw.pl 10000 pipe -w "$WINDOW"
    run_case raw.ow 10000 pipe -w 0
    run_case memory.ow 5000 broker --in "rawpipe:$tag-raw-memory" --out "jsonl:$j:q-memory"
    run_case fsync.ow 2500 broker --in "rawpipe:$tag-raw-fsync" --out "jsonl:$j:q-fsync"
    run_case raw.ow2 10000 pipe -w 0
    run_case raw.pl2 10000 pipe -w "$WINDOW"
    if slots; then
        run_case raw.slot 20000 slot
        for d in memory fsync; do
            if [ $d = memory ]; then k=2; else k=1; fi
            run_case $d.slotin $((5000 * k)) broker --in "slot:$tag-slot-$d" --out "jsonl:$j:q-$d"
            run_case $d.slotout $((5000 * k)) broker --in "pub:$j:bench/$d/out/pub" -w "$WINDOW" --out "slot:$tag-out"
            run_case $d.slot2 $((5000 * k)) broker --in "slot:$tag-slot2-$d" --out "slot:$tag-out"
        done
    fi
    r=$((r + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Switchboard under Wine ($(wine --version 2>/dev/null || echo wine)), $(nproc) cores, $REPEAT rounds, $SIZE-byte messages, W=$WINDOW"
echo "load average before: $load_before   after: $load_after"
echo "msgs/s: median of the rounds. RATIO: through Switchboard / raw, computed per round (the"
echo "cases of a round run back to back, under the same load), then the median and [min-max]"
echo
awk -v window="$WINDOW" '
function med(a, n,    i, j, t) {
    if (n == 0) return -1
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function median(key,    n, r, v) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((r, key) in val) v[++n] = val[r, key]
    return med(v, n)
}
# The raw rate the runs of a round are compared with: the mean of the runs
# before and after them (raw and raw2) where both ran.
function rawref(r, raw) {
    if (val[r, raw] > 0 && val[r, raw "2"] > 0) return (val[r, raw] + val[r, raw "2"]) / 2
    return val[r, raw]
}
# Median of the per-round ratios a/b (b a raw case: rawref), with their
# range in lo/hi; self=1: a is raw2 and b is raw, the raw case against
# itself.
function ratio(a, b, self,    n, r, v, m, x, y) {
    n = 0; lo = 1e9; hi = 0
    for (r = 1; r <= rounds; r++) {
        x = val[r, a]; y = self ? val[r, b] : rawref(r, b)
        if (x > 0 && y > 0) {
            v[++n] = x / y
            if (v[n] < lo) lo = v[n]
            if (v[n] > hi) hi = v[n]
        }
    }
    if (n == 0) return "-"
    m = med(v, n)
    return sprintf("%.0f%% [%.0f-%.0f]", 100 * m, 100 * lo, 100 * hi)
}
# Median and [min-max] of the rates of a case over the rounds.
function spread(key,    n, r, v, a, b) {
    n = 0; a = 1e18; b = 0
    for (r = 1; r <= rounds; r++)
        if (val[r, key] > 0) {
            v[++n] = val[r, key]
            if (v[n] < a) a = v[n]
            if (v[n] > b) b = v[n]
        }
    if (n == 0) return "-"
    return sprintf("%.0f [%.0f-%.0f]", med(v, n), a, b)
}
function cpu(key, col,    r, s, m) {
    s = 0; m = 0
    for (r = 1; r <= rounds; r++) if ((r, key) in val) { s += tk[r, key, col]; m += nn[r, key] }
    return m > 0 ? s * 10000 / m : 0   # ticks of 10 ms -> us per message
}
# Median of the per-round reference rates of a raw case (rawref).
function rawmedian(key,    n, r, v) {
    n = 0
    for (r = 1; r <= rounds; r++) if (rawref(r, key) > 0) v[++n] = rawref(r, key)
    return med(v, n)
}
# CPU of the wineserver, over both runs of a raw case.
function cpu2(key,    r, s, m) {
    s = 0; m = 0
    for (r = 1; r <= rounds; r++) {
        if ((r, key) in val) { s += tk[r, key, 2]; m += nn[r, key] }
        if ((r, key "2") in val) { s += tk[r, key "2", 2]; m += nn[r, key "2"] }
    }
    return m > 0 ? s * 10000 / m : 0
}
function fmt(x) { return x < 0 ? "-" : sprintf("%.0f", x) }
$1 > 0 {
    if ($1 > rounds) rounds = $1
    val[$1, $2] = $3; nn[$1, $2] = $5; tk[$1, $2, 1] = $6; tk[$1, $2, 2] = $7
}
END {
    rows = 7
    row[1] = "pipe msg req/resp W=1";             raw[1] = "raw.rr";   sw[1] = "rr"
    row[2] = "pipe byte pipelined W=" window;     raw[2] = "raw.plb";  sw[2] = "pl"
    row[3] = "pipe msg pipelined W=" window;      raw[3] = "raw.pl";   sw[3] = "ow"
    row[4] = "pipe msg one way";                  raw[4] = "raw.ow";   sw[4] = "ow"
    row[5] = "mailslot in";                       raw[5] = "raw.slot"; sw[5] = "slotin"
    row[6] = "mailslot out";                      raw[6] = "raw.slot"; sw[6] = "slotout"
    row[7] = "mailslot -> mailslot";              raw[7] = "raw.slot"; sw[7] = "slot2"
    printf "%-26s %8s %9s %-15s %9s %-15s\n", "MECHANISM", "RAW", "SB MEMORY", "RATIO", "SB FSYNC", "RATIO"
    for (i = 1; i <= rows; i++)
        printf "%-26s %8s %9s %-15s %9s %-15s\n", row[i], fmt(rawmedian(raw[i])),
            fmt(median("memory." sw[i])), ratio("memory." sw[i], raw[i], 0),
            fmt(median("fsync." sw[i])), ratio("fsync." sw[i], raw[i], 0)
    printf "\nThe raw pipe cases alone (each ran before and after the cases compared with it;\n"
    printf "RATIO above divides by their mean): rate median [min-max] over the rounds, and the\n"
    printf "second run / the first, the noise floor of each ratio\n"
    printf "%-26s %-26s %-26s %-15s\n", "MECHANISM", "RAW (first)", "RAW (second)", "SECOND/FIRST"
    for (i = 1; i <= 4; i++)
        printf "%-26s %-26s %-26s %-15s\n", row[i], spread(raw[i]), spread(raw[i] "2"),
            ratio(raw[i] "2", raw[i], 1)
    printf "\nCPU per message (us, all rounds): broker process / this prefix'"'"'s wineserver\n"
    printf "%-26s %15s %16s %16s\n", "MECHANISM", "RAW wineserver", "MEMORY bkr/wsrv", "FSYNC bkr/wsrv"
    for (i = 1; i <= rows; i++)
        printf "%-26s %15s %16s %16s\n", row[i], sprintf("%.0f", i <= 4 ? cpu2(raw[i]) : cpu(raw[i], 2)),
            sprintf("%.0f / %.0f", cpu("memory." sw[i], 1), cpu("memory." sw[i], 2)),
            sprintf("%.0f / %.0f", cpu("fsync." sw[i], 1), cpu("fsync." sw[i], 2))
}' "$tmp/results"
echo
cat <<EOF
raw: ipcbench pipe -w 1 | -w $WINDOW --bytes | -w $WINDOW | -w 0 (one way; only the last message is
  acknowledged); ipcbench slot. Message-mode rows write one message per WriteFile; the byte-mode
  row writes what the window allows in one WriteFile and acknowledges per ReadFile, as the jsonl
  clients do.
through Switchboard (end to end, first send to last receipt; the consumer acks every message):
  req/resp   jsonl pub over the jsonl pipe, each awaiting its puback -> queue -> jsonl consumer
  byte pipe  jsonl pub, $WINDOW awaiting puback -> queue -> jsonl consumer
  msg pipe   raw framing:message pipe producer (no acks; the broker reads <= read_ahead (64)
             frames ahead of the store) -> queue -> jsonl consumer; the same run in both msg rows
  mailslot   in: mailslot adapter -> queue -> jsonl consumer; out: jsonl pub (W=$WINDOW) ->
             route -> mailslot sink -> ipcbench reads; ->: mailslot adapter -> route -> sink
EOF
if [ "$failures" -gt 0 ]; then
    echo "run-wine.sh: $failures runs failed (counted as 0, see $tmp/results.raw and ipcbench.err)" >&2
    exit 1
fi
