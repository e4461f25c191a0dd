#!/usr/bin/env bash
# bench-bridge.sh: how fast a site's backlog reaches the upstream once the
# uplink returns, through Switchboard's MQTT bridge and through Mosquitto's
# own bridge, next to a client publishing straight to the upstream with the
# same window. Linux only; tools/bench/mqttbench is the load generator.
#
# Per run, for each bridge (Switchboard, then Mosquitto):
#  1. the upstream (Mosquitto, persistence on) starts, a consumer session
#     (clean session 0) subscribes to bench/+ and goes offline, and the
#     upstream stops (it saves the session);
#  2. the site broker starts with its bridge to the upstream's port, and a
#     producer publishes --count QoS 1 messages to it (all acknowledged
#     locally: the backlog);
#  3. the upstream starts again and the consumer reconnects: the time from
#     the upstream's start to the last message received gives the drain
#     rate (messages/s), every message counted (lost, duplicates).
# The reference: one producer publishing --count messages straight to the
# upstream with --window unacknowledged, and the consumer there (mqttbench
# --mode all). Mosquitto's bridge slows down with its backlog (publishing
# 50k messages to it while the upstream is down took most of a minute
# here), so large --count values are for --only switchboard.
#
# Options (environment variable, default):
#   --count N     backlog messages (BENCH_COUNT, 200000)
#   --window W    the bridges' and the producer's window (BENCH_WINDOW, 64)
#   --size B      payload bytes (BENCH_SIZE, 100)
#   --only NAME   switchboard or mosquitto: that bridge alone (BENCH_ONLY)
#   --keep        keep the temporary directory
# SB_BUILD_DIR: the build holding service/switchboard and
# tools/bench/mqttbench (default build/release). MOSQUITTO: /usr/sbin/mosquitto.
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tools/bench/brokers.sh"
build=${SB_BUILD_DIR:-$top/build/release}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
count=${BENCH_COUNT:-200000}
window=${BENCH_WINDOW:-64}
size=${BENCH_SIZE:-100}
only=${BENCH_ONLY:-}
keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --count) count=$2; shift ;;
    --window) window=$2; shift ;;
    --size) size=$2; shift ;;
    --only) only=$2; shift ;;
    --keep) keep=1 ;;
    *) echo "bench-bridge.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

sb_bin=$build/service/switchboard
bench_bin=$build/tools/bench/mqttbench
for f in "$sb_bin" "$bench_bin" "$mosq_bin"; do
    [ -x "$f" ] || { echo "bench-bridge.sh: $f missing (cmake --preset release && cmake --build --preset release --target switchboard mqttbench)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/bench-bridge.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do stop_pid "$p"; done
    if [ "$keep" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
    local pid=$1 i keep_pids=() p
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep_pids+=("$p"); done
    pids=("${keep_pids[@]}")
}

wait_ready() {
    local pid=$1 port=$2 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    return 2
}

now_ms() { date +%s%3N; }
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2" | tail -1; }

up_port=$(free_port)
up_dir=$tmp/upstream
mkdir -p "$up_dir"
cat >"$up_dir/mosquitto.conf" <<EOF
listener $up_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $up_dir/
max_inflight_messages 1000
max_queued_messages 100000000
log_dest stderr
log_type error
EOF
# Run as root, Mosquitto drops to user mosquitto: it must write its database.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto "$up_dir"
    chmod 711 "$tmp"
fi

up_pid=
start_upstream() {
    "$mosq_bin" -c "$up_dir/mosquitto.conf" 2>>"$up_dir/log" &
    up_pid=$!
    pids+=("$up_pid")
    wait_ready "$up_pid" "$up_port" || { echo "bench-bridge.sh: upstream did not start" >&2; exit 1; }
}

bench() { "$bench_bin" --port "$1" --qos 1 --size "$size" --producers 1 --window "$window" \
    --count "$count" --timeout 60 "${@:2}"; }

# ---- the reference: straight to the upstream ----
start_upstream
out=$(bench "$up_port" --id-prefix direct --topic-prefix direct 2>&1)
direct=$(field msgs_per_s "$out")
stop_pid "$up_pid"

# ---- site brokers ----
site_port=$(free_port)
setup_switchboard() {
    mkdir -p "$tmp/sb"
    cat >"$tmp/sb/sb.yaml" <<EOF
broker:
  data_dir: '$tmp/sb/data'
  log: {level: warn}
adapters:
  - name: mqtt
    type: tcp
    listen: 127.0.0.1:$site_port
    protocol: mqtt
    max_queued: 0
  - name: uplink
    type: tcp
    connect: 127.0.0.1:$up_port
    protocol: mqtt
    client_id: bench-site
    inflight: $window
    reconnect_backoff: 100ms
    reconnect_max_backoff: 200ms
routes:
  - name: up
    from: bench/#
    to: uplink
EOF
    "$sb_bin" run --config "$tmp/sb/sb.yaml" 2>>"$tmp/sb/log" &
}
setup_mosquitto() {
    mkdir -p "$tmp/mq"
    cat >"$tmp/mq/mosquitto.conf" <<EOF
listener $site_port 127.0.0.1
allow_anonymous true
max_inflight_messages 1000
max_queued_messages 100000000
log_dest stderr
log_type error
connection up
address 127.0.0.1:$up_port
topic bench/# out 1
cleansession false
remote_clientid bench-site-mq
restart_timeout 1
EOF
    "$mosq_bin" -c "$tmp/mq/mosquitto.conf" 2>>"$tmp/mq/log" &
}

sites=(switchboard mosquitto)
[ -n "$only" ] && sites=("$only")
declare -A rate lost dup
for site in "${sites[@]}"; do
    run_id=$((RANDOM + 1))
    common=(--id-prefix "hq-$site" --topic-prefix bench --run-id "$run_id")
    start_upstream
    bench "$up_port" --mode sub --persistent "${common[@]}" >/dev/null 2>&1 ||
        { echo "bench-bridge.sh: consumer subscribe failed" >&2; exit 1; }
    stop_pid "$up_pid"
    "setup_$site"
    site_pid=$!
    pids+=("$site_pid")
    wait_ready "$site_pid" "$site_port" || { echo "bench-bridge.sh: $site did not start" >&2; exit 1; }
    bench "$site_port" --mode pub --id-prefix "site-$site" --topic-prefix bench \
        --run-id "$run_id" >/dev/null 2>&1 || { echo "bench-bridge.sh: publishing to $site failed" >&2; exit 1; }
    t0=$(now_ms)
    start_upstream
    out=$(bench "$up_port" --mode drain --persistent "${common[@]}" 2>&1)
    t1=$(now_ms)
    rate[$site]=$((count * 1000 / (t1 - t0)))
    lost[$site]=$(field lost "$out")
    dup[$site]=$(field dup "$out")
    stop_pid "$site_pid"
    stop_pid "$up_pid"
    rm -f "$up_dir"/mosquitto.db
done

echo "backlog of $count QoS 1 messages ($size bytes), window $window, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-40s %10s msg/s\n' "direct to the upstream (mqttbench)" "$direct"
for site in "${sites[@]}"; do
    printf '%-40s %10s msg/s  lost %s dup %s  ratio to direct %s\n' "drain through $site's bridge" \
        "${rate[$site]}" "${lost[$site]:-?}" "${dup[$site]:-?}" \
        "$(awk -v a="${rate[$site]}" -v b="$direct" 'BEGIN { if (b > 0) printf "%.2f", a / b }')"
done
