#!/usr/bin/env bash
# bench-backlog.sh: a backlog for an absent consumer, and what it costs the
# broker: memory while it builds up, time to listening after a restart,
# memory and database size after it was drained (issue 16). Linux only.
#
#   tools/bench/bench-backlog.sh [options]
#
# One broker, --queues route queues (filters backlog/<i>/#, durability
# batched); sbctl pub fills them one after the other with --count messages
# of --size bytes in total, pipelined, while nobody consumes. Then:
#   - resident memory (VmRSS, peak VmHWM) of the broker with the backlog;
#   - the broker is stopped and started again on the same data directory
#     (--restarts times): time from its start to the admin endpoint
#     answering, and its memory;
#   - sbctl sub drains every queue, checking that message ids only grow
#     (nothing out of order) and that every message came (nothing lost);
#   - memory and database size after the drain, and again once the idle
#     store gave its free pages back (up to --settle seconds); the broker's
#     own stats (sbctl stats: resident vs stored bytes).
# The broker's VmRSS is also sampled every second throughout (the most of
# each phase is printed), and the load average at each phase.
# Each figure is printed as "name: value" lines, then one summary line.
#
# Options (environment variable, default):
#   --count N      messages in total (BENCH_COUNT, 2000000)
#   --size B       payload bytes (BENCH_SIZE, 1024)
#   --queues Q     queues the messages are spread over (BENCH_QUEUES, 1)
#   --store YAML   extra keys of broker.store, e.g. "queue_memory: 16MiB"
#                  (BENCH_STORE, none: the defaults)
#   --restarts N   restarts measured (BENCH_RESTARTS, 1)
#   --settle S     after the drain, wait up to S seconds for the database
#                  to shrink (BENCH_SETTLE, 300; 0: do not wait)
#   --no-drain     stop after the restart (memory and time to listening only)
#   --keep         keep the temporary directory (config, log, database)
# SB_BUILD_DIR: build directory holding service/switchboard and tools/sbctl
# (default build/release; configured with the release preset and built when
# missing); SWITCHBOARD / SBCTL: other binaries to measure (an older build).
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SB_BUILD_DIR:-$top/build/release}
count=${BENCH_COUNT:-2000000}
size=${BENCH_SIZE:-1024}
queues=${BENCH_QUEUES:-1}
store=${BENCH_STORE:-}
restarts=${BENCH_RESTARTS:-1}
settle=${BENCH_SETTLE:-300}
keep=0
drain=1

usage() {
    sed -n '2,/^# Only the processes/p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
    --count) count=$2; shift ;;
    --size) size=$2; shift ;;
    --queues) queues=$2; shift ;;
    --store) store=$2; shift ;;
    --restarts) restarts=$2; shift ;;
    --settle) settle=$2; shift ;;
    --no-drain) drain=0 ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-backlog.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

sb_bin=${SWITCHBOARD:-$build/service/switchboard}
ctl_bin=${SBCTL:-$build/tools/sbctl/sbctl}
if [ ! -x "$sb_bin" ] || [ ! -x "$ctl_bin" ]; then
    echo "== building switchboard and sbctl in $build (release preset)"
    (cd "$top" && cmake --preset release -B "$build" >/dev/null &&
        cmake --build "$build" --target switchboard sbctl) || {
        echo "bench-backlog.sh: build failed" >&2
        exit 1
    }
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-backlog.XXXXXX")
pid=
sampler=

cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    [ -n "$pid" ] && stop_broker
    if [ "$keep" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SIGTERM, up to 60 s for an orderly exit, then SIGKILL.
stop_broker() {
    local i
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    pid=
}

now_ms() { date +%s%3N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
mb() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }
db_mb() { du -m --apparent-size "$tmp/data/switchboard.db" | awk '{ print $1 }'; }
ctl() { "$ctl_bin" --endpoint "unix:$tmp/data/admin.sock" "$@"; }

{
    echo "broker:"
    echo "  data_dir: '$tmp/data'"
    echo "  log: { file: '$tmp/broker.log', stderr: false }"
    [ -n "$store" ] && echo "  store: { $store }"
    echo "routes:"
    for q in $(seq 0 $((queues - 1))); do
        echo "  - { name: backlog-$q, from: 'backlog/$q/#', durability: batched }"
    done
} >"$tmp/switchboard.yaml"

# Starts the broker; listen_ms: from its start to the admin endpoint answering.
start_broker() {
    local t0 i
    t0=$(now_ms)
    "$sb_bin" run --config "$tmp/switchboard.yaml" >>"$tmp/broker.out" 2>&1 &
    pid=$!
    for i in $(seq 6000); do
        ctl ping >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { echo "bench-backlog.sh: broker exited, see $tmp" >&2; keep=1; exit 1; }
        sleep 0.01
    done
    listen_ms=$(($(now_ms) - t0))
}

# The broker's VmRSS (kB) once a second into $tmp/rss-<phase>, until the
# next phase or the end; rss_max <phase> prints the most (MB).
phase() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
    (
        while kill -0 "$pid" 2>/dev/null; do
            awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null
            sleep 1
        done
    ) >>"$tmp/rss-$1" &
    sampler=$!
}
rss_max() { mb "$(sort -n "$tmp/rss-$1" 2>/dev/null | tail -1)"; }

head -c "$size" /dev/zero | tr '\0' 'x' >"$tmp/payload"
start_broker
phase fill
echo "backlog: $count messages of $size bytes over $queues queue(s), store: ${store:-defaults}"
echo "switchboard: $sb_bin"
echo "load_before_fill: $(load)"
t0=$(now_ms)
per=$((count / queues))
for q in $(seq 0 $((queues - 1))); do
    n=$per
    [ "$q" = $((queues - 1)) ] && n=$((count - per * (queues - 1)))
    ctl pub --count "$n" --window 2000 --file "$tmp/payload" "backlog/$q/x" >/dev/null || exit 1
done
fill_ms=$(($(now_ms) - t0))
echo "fill_s: $(awk -v v="$fill_ms" 'BEGIN { printf "%.1f", v / 1000 }')"
fill_rss=$(status_kb VmRSS)
fill_hwm=$(status_kb VmHWM)
echo "rss_with_backlog_mb: $(mb "$fill_rss") (peak $(mb "$fill_hwm"), most sampled $(rss_max fill))"
echo "load_after_fill: $(load)"
stop_broker
echo "db_with_backlog_mb: $(db_mb)"

all_listen=
for r in $(seq "$restarts"); do
    [ "$r" -gt 1 ] && stop_broker
    start_broker
    phase "restart$r"
    all_listen="$all_listen${all_listen:+ }$listen_ms"
    echo "restart_to_listening_ms: $listen_ms (load $(load))"
done
# the first windows are read after it listens: memory once they are in
sleep 2
start_rss=$(status_kb VmRSS)
echo "rss_after_restart_mb: $(mb "$start_rss")"

if [ "$drain" = 0 ]; then
    echo "summary: count=$count size=$size queues=$queues rss_backlog_mb=$(mb "$fill_rss")" \
        "restart_ms=${all_listen// /,} rss_restart_mb=$(mb "$start_rss")"
    exit 0
fi
phase drain
t0=$(now_ms)
for q in $(seq 0 $((queues - 1))); do
    n=$per
    [ "$q" = $((queues - 1)) ] && n=$((count - per * (queues - 1)))
    # message ids of one queue only grow; all n arrive
    ctl sub "backlog-$q" --count "$n" --window 1000 --json |
        awk -v q="$q" -v n="$n" '
            match($0, /"msg_id": *[0-9]+/) {
                id = substr($0, RSTART, RLENGTH); sub(/.*: */, "", id); id += 0
                if (id <= last) { bad++ } last = id; got++
            }
            END {
                printf "queue %s: %d delivered, %d out of order\n", q, got, bad
                exit !(got == n && bad == 0)
            }' || { echo "bench-backlog.sh: queue $q: lost or out of order" >&2; keep=1; exit 1; }
done
drain_ms=$(($(now_ms) - t0))
echo "drain_s: $(awk -v v="$drain_ms" 'BEGIN { printf "%.1f", v / 1000 }') (load $(load))"
drain_hwm=$(status_kb VmHWM)
echo "rss_peak_since_restart_mb: $(mb "$drain_hwm") (most sampled while draining $(rss_max drain))"
drained_rss=$(status_kb VmRSS)
echo "rss_after_drain_mb: $(mb "$drained_rss")"
store_db() { ctl stats --json 2>/dev/null | tr -d '\n ' | grep -o '"db_bytes":[0-9]*' | cut -d: -f2; }
drained_db=$(store_db)
echo "db_bytes_after_drain_mb: $((${drained_db:-0} >> 20))"
phase settle
t0=$(now_ms)
settled_db=$drained_db
if [ "$settle" -gt 0 ]; then
    # until the store stopped shrinking for 30 s, or --settle seconds
    last_change=$t0
    while [ $(($(now_ms) - t0)) -lt $((settle * 1000)) ] &&
        [ $(($(now_ms) - last_change)) -lt 30000 ]; do
        sleep 5
        db=$(store_db)
        if [ -n "$db" ] && [ "$db" -lt "$settled_db" ]; then
            settled_db=$db
            last_change=$(now_ms)
        fi
    done
fi
settle_s=$(awk -v v="$(($(now_ms) - t0))" 'BEGIN { printf "%.0f", v / 1000 }')
echo "db_bytes_settled_mb: $((${settled_db:-0} >> 20)) (after ${settle_s} s idle)"
settled_rss=$(status_kb VmRSS)
echo "rss_settled_mb: $(mb "$settled_rss") (most sampled meanwhile $(rss_max settle))"
ctl stats --json >"$tmp/stats.json" 2>/dev/null &&
    echo "stats_store: $(tr -d '\n ' <"$tmp/stats.json" | grep -o '"store":{[^}]*}')"
stop_broker
echo "db_file_after_stop_mb: $(db_mb)"
echo "load_at_end: $(load)"
echo "summary: count=$count size=$size queues=$queues fill_s=$(awk -v v="$fill_ms" 'BEGIN { printf "%.1f", v / 1000 }')" \
    "rss_backlog_mb=$(mb "$fill_rss") rss_fill_peak_mb=$(mb "$fill_hwm") restart_ms=${all_listen// /,}" \
    "rss_restart_mb=$(mb "$start_rss") drain_s=$(awk -v v="$drain_ms" 'BEGIN { printf "%.1f", v / 1000 }')" \
    "rss_peak_mb=$(mb "$drain_hwm") rss_drained_mb=$(mb "$drained_rss") rss_settled_mb=$(mb "$settled_rss")" \
    "db_settled_mb=$((${settled_db:-0} >> 20))"
