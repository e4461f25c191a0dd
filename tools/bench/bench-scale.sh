#!/usr/bin/env bash
# bench-scale.sh: many MQTT sessions against Mosquitto and Switchboard, side
# by side, with tools/bench/mqttscale (libmosquitto, not the broker's codec).
# Linux only.
#
#   tools/bench/bench-scale.sh [options]
#
# Topics: N clients (clean session) each subscribe to a topic of their own,
# QoS 1; one more publishes --count QoS 1 messages round-robin over the N
# topics (--window unacknowledged); rate from the first PUBLISH to the last
# delivery, every message delivered exactly once; broker CPU time per
# message (/proc); for each N of --clients, the runs alternate between the
# brokers and the median of --runs is reported. The 1-client figure is the
# reference for CPU per message.
#
# Idle: --idle-clients sessions subscribe and stay connected, silent but for
# keep alive (--keepalive), for --idle-s seconds: the broker's CPU % over that time
# and its resident memory per session (VmRSS after they subscribed minus
# before, divided by their number); then 10 publishes one at a time, each to
# one of them, timed from PUBLISH to delivery.
#
# Every measurement starts fresh brokers on free loopback ports with fresh
# data directories; RLIMIT_NOFILE is raised to the hard limit for them and
# for the generator (which forks workers: a libmosquitto client holds three
# descriptors). With --bind-base the clients use source addresses
# 127.0.0.2, .3, ... (--per-address each) for more than one address's ports.
#
# Options (environment variable, default):
#   --clients "LIST"  numbers of clients for the topics runs (BENCH_CLIENTS, "1 2000 10000")
#   --count N         messages per topics run (BENCH_COUNT, 100000)
#   --window W        publisher's unacknowledged messages (BENCH_WINDOW, 500)
#   --size B          payload bytes (BENCH_SIZE, 100)
#   --runs R          topics runs per broker and N, median reported (BENCH_RUNS, 3)
#   --idle-clients N  sessions of the idle run, 0 skips it (BENCH_IDLE_CLIENTS, 10000)
#   --idle-s S        seconds idle (BENCH_IDLE_S, 30)
#   --keepalive S     the idle sessions' MQTT keep alive (BENCH_KEEPALIVE, 60)
#   --bind-base       spread clients over 127.0.0.x source addresses (BENCH_BIND=1)
#   --per-address N   clients per source address (BENCH_PER_ADDRESS, 10000)
#   --timeout S       a run's limit; a broker too slow is reported with what
#                     arrived by then (BENCH_TIMEOUT, 120)
#   --only NAME       mosquitto or switchboard (BENCH_ONLY)
#   --keep            keep the temporary directory (configs, logs, outputs)
# SB_BUILD_DIR: build directory holding service/switchboard and
# tools/bench/mqttscale (default build/release; configured with the release
# preset and built when they are missing); SWITCHBOARD: another switchboard
# binary to measure (an older build, say). MOSQUITTO: the Mosquitto binary
# (default /usr/sbin/mosquitto).
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SB_BUILD_DIR:-$top/build/release}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
client_counts=${BENCH_CLIENTS:-"1 2000 10000"}
count=${BENCH_COUNT:-100000}
window=${BENCH_WINDOW:-500}
size=${BENCH_SIZE:-100}
runs=${BENCH_RUNS:-3}
idle_clients=${BENCH_IDLE_CLIENTS:-10000}
idle_s=${BENCH_IDLE_S:-30}
keepalive=${BENCH_KEEPALIVE:-60}
bind=${BENCH_BIND:-0}
per_address=${BENCH_PER_ADDRESS:-10000}
timeout=${BENCH_TIMEOUT:-120}
only=${BENCH_ONLY:-}
keep=0

usage() {
    sed -n '2,/^# Only the processes/p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
    --clients) client_counts=$2; shift ;;
    --count) count=$2; shift ;;
    --window) window=$2; shift ;;
    --size) size=$2; shift ;;
    --runs) runs=$2; shift ;;
    --idle-clients) idle_clients=$2; shift ;;
    --idle-s) idle_s=$2; shift ;;
    --keepalive) keepalive=$2; shift ;;
    --bind-base) bind=1 ;;
    --per-address) per_address=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --only) only=$2; shift ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-scale.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $only in '' | mosquitto | switchboard) ;; *) echo "bench-scale.sh: --only mosquitto|switchboard" >&2; exit 2 ;; esac

sb_bin=${SWITCHBOARD:-$build/service/switchboard}
gen_bin=$build/tools/bench/mqttscale

# ---- build ----
if [ ! -x "$sb_bin" ] || [ ! -x "$gen_bin" ]; then
    echo "== building switchboard and mqttscale in $build (release preset)"
    (cd "$top" && cmake --preset release -B "$build" >/dev/null &&
        cmake --build "$build" --target switchboard mqttscale) || {
        echo "bench-scale.sh: build failed (mqttscale needs libmosquitto-dev)" >&2
        exit 1
    }
fi
if [ -z "$only" ] || [ "$only" = mosquitto ]; then
    [ -x "$mosq_bin" ] || { echo "bench-scale.sh: $mosq_bin not found (apt-get install mosquitto, or set MOSQUITTO)" >&2; exit 1; }
fi
# Brokers and generator inherit this: as many descriptors as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null

tmp=$(mktemp -d /tmp/bench-scale.XXXXXX)
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do
        stop_pid "$p"
    done
    if [ "$keep" = 1 ]; then
        echo "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local p keep_pids=()
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || keep_pids+=("$p")
    done
    pids=("${keep_pids[@]}")
}

# SIGTERM, up to 30 s for an orderly exit, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; forget_pid "$pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench-scale.sh: pid $pid ignored SIGTERM for 30 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

# A port nobody listens on, below the ephemeral range: the thousands of
# client sockets of a run (and their TIME_WAITs) take ports from that range,
# where a broker started next could find its port in use.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local p
    while :; do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (ephemeral_low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

wait_ready() {
    local pid=$1 port=$2 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 2
}

# start_broker NAME DIR: writes the config, starts the broker on a free
# port (another one if that was taken meanwhile); sets started_pid and
# started_port; 0 when it accepts connections.
start_broker() {
    local attempt
    for attempt in 1 2 3; do
        start_broker_once "$@" && return 0
        grep -qi "address already in use" "$2/broker.log" || return 1
    done
    return 1
}

start_broker_once() {
    local name=$1 dir=$2 port
    rm -rf "$dir"
    mkdir -p "$dir"
    port=$(free_port)
    if [ "$name" = mosquitto ]; then
        {
            echo "listener $port 127.0.0.1"
            echo "allow_anonymous true"
            echo "persistence true"
            echo "persistence_location $dir/"
            echo "max_inflight_messages 1000"
            echo "max_queued_messages 100000000"
            echo "log_dest stderr"
            echo "log_type error"
            echo "log_type warning"
        } >"$dir/mosquitto.conf"
        if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
            chown mosquitto "$dir"
            chmod 711 "$tmp"
        fi
        "$mosq_bin" -c "$dir/mosquitto.conf" >>"$dir/broker.log" 2>&1 &
    else
        cat >"$dir/sb.yaml" <<EOF
broker:
  data_dir: '$dir/sbdata'
  log: {level: warn}
  admin: {endpoint: 'off'}
adapters:
  - name: mqtt
    type: tcp
    listen: 127.0.0.1:$port
    protocol: mqtt
    max_connections: 100000
    inflight: 1000
    max_queued: 0
EOF
        "$sb_bin" run -c "$dir/sb.yaml" >>"$dir/broker.log" 2>&1 &
    fi
    started_pid=$!
    started_port=$port
    pids+=("$started_pid")
    if ! wait_ready "$started_pid" "$port"; then
        echo "$name: failed to start; its log ($dir/broker.log):" >&2
        tail -n 20 "$dir/broker.log" | sed 's/^/  /' >&2
        stop_pid "$started_pid"
        return 1
    fi
    return 0
}

# field NAME LINE: the value of NAME=... in a RESULT line.
field() {
    printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

gen_common=(--size "$size" --timeout "$timeout" --per-address "$per_address")
[ "$bind" = 1 ] && gen_common+=(--bind-base)

echo "== bench-scale: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), descriptors $(ulimit -n)"
echo "   mosquitto: $("$mosq_bin" -h 2>/dev/null | head -n 1)"
echo "   switchboard: $sb_bin"
echo "   generator: $gen_bin (libmosquitto $(dpkg-query -W -f='${Version}' libmosquitto1 2>/dev/null))"

brokers=()
[ -z "$only" ] || [ "$only" = mosquitto ] && brokers+=(mosquitto)
[ -z "$only" ] || [ "$only" = switchboard ] && brokers+=(switchboard)
status=0

# ---- topics ----
declare -A results
for n in $client_counts; do
    echo "== $n client(s), each on its own topic: $runs run(s) per broker, $count QoS 1 messages of $size B, window $window"
    for ((r = 1; r <= runs; r++)); do
        for name in "${brokers[@]}"; do
            dir=$tmp/$name-topics-$n-$r
            start_broker "$name" "$dir" || { status=1; continue; }
            out=$dir/run.txt
            "$gen_bin" --port "$started_port" --clients "$n" --count "$count" --window "$window" \
                --broker-pid "$started_pid" --id-prefix "scale$n" "${gen_common[@]}" >"$out" 2>&1
            rc=$?
            stop_pid "$started_pid"
            line=$(grep '^RESULT' "$out")
            gen_us=$(awk -v s="$(field gen_cpu_s "$line")" -v n="$(field received "$line")" \
                'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "?" }')
            printf '   %-12s run %d: %8s msgs/s, broker %6s us CPU/msg (generator %s), e2e p50 %s ms, RSS %s MB%s\n' \
                "$name" "$r" "$(field msgs_per_s "$line")" "$(field cpu_us_per_msg "$line")" \
                "$gen_us" "$(field e2e_p50_ms "$line")" \
                "$(awk -v k="$(field rss_kb "$line")" 'BEGIN { printf "%.1f", k / 1024 }')" \
                "$([ "$(field complete "$line")" = 1 ] || echo "  INCOMPLETE: $(field received "$line") of $count received")"
            if [ $rc != 0 ]; then
                grep -v '^RESULT' "$out" | sed 's/^/     /' | tail -n 5
                status=1
            fi
            results[$name,$n]+="$(field msgs_per_s "$line") $(field cpu_us_per_msg "$line") $(field e2e_p50_ms "$line") $gen_us"$'\n'
        done
    done
done

# median_of NAME N: "msgs/s cpu_us e2e_p50" of the median run by msgs/s
median_of() {
    local rows k
    rows=$(printf '%s' "${results[$1,$2]:-}" | grep . | sort -n)
    k=$(printf '%s\n' "$rows" | grep -c .)
    [ "$k" -gt 0 ] || return
    printf '%s\n' "$rows" | sed -n "$(((k + 1) / 2))p"
}

# ---- idle ----
declare -A idle
if [ "$idle_clients" -gt 0 ]; then
    echo "== $idle_clients idle sessions for $idle_s s (keep alive $keepalive s), then 10 publishes one at a time"
    for name in "${brokers[@]}"; do
        dir=$tmp/$name-idle
        start_broker "$name" "$dir" || { status=1; continue; }
        out=$dir/idle.txt
        "$gen_bin" --mode idle --port "$started_port" --clients "$idle_clients" --idle "$idle_s" \
            --keepalive "$keepalive" \
            --broker-pid "$started_pid" --id-prefix idle "${gen_common[@]}" >"$out" 2>&1
        rc=$?
        stop_pid "$started_pid"
        line=$(grep '^RESULT' "$out")
        idle[$name]=$line
        printf '   %-12s CPU %s %%, %s kB per session, probe p50 %s ms, max %s ms%s\n' "$name" \
            "$(field cpu_pct "$line")" "$(field kb_per_session "$line")" \
            "$(field probe_p50_ms "$line")" "$(field probe_max_ms "$line")" \
            "$([ $rc = 0 ] || echo "  FAILED")"
        if [ $rc != 0 ]; then
            grep -v '^RESULT' "$out" | sed 's/^/     /' | tail -n 5
            status=1
        fi
    done
fi

# ---- summary ----
echo
printf '%-8s %-12s %10s %11s %11s %11s\n' clients broker "msgs/s" "cpu us/msg" "e2e p50 ms" \
    "gen us/msg"
for n in $client_counts; do
    for name in "${brokers[@]}"; do
        m=$(median_of "$name" "$n")
        [ -n "$m" ] || continue
        set -- $m
        printf '%-8s %-12s %10s %11s %11s %11s\n' "$n" "$name" "$1" "$2" "$3" "$4"
    done
done
for n in $client_counts; do
    s=$(median_of switchboard "$n")
    m=$(median_of mosquitto "$n")
    s1=$(median_of switchboard "${client_counts%% *}")
    [ -n "$s" ] || continue
    set -- $s
    sr=$1 sc=$2
    if [ -n "$m" ]; then
        set -- $m
        awk -v s="$sr" -v m="$1" -v n="$n" \
            'BEGIN { if (m > 0) printf "%s clients: switchboard/mosquitto msgs/s %.2f\n", n, s / m }'
    fi
    if [ -n "$s1" ]; then
        set -- $s1
        awk -v c="$sc" -v c1="$2" -v n="$n" -v n1="${client_counts%% *}" \
            'BEGIN { if (c1 > 0) printf "%s clients: switchboard CPU per message %.2f x its %s-client figure\n", n, c / c1, n1 }'
    fi
done
if [ "$idle_clients" -gt 0 ]; then
    printf '\n%-12s %8s %12s %14s %14s\n' "idle ($idle_clients)" "CPU %" "kB/session" "probe p50 ms" "probe max ms"
    for name in "${brokers[@]}"; do
        line=${idle[$name]:-}
        [ -n "$line" ] || continue
        printf '%-12s %8s %12s %14s %14s\n' "$name" "$(field cpu_pct "$line")" \
            "$(field kb_per_session "$line")" "$(field probe_p50_ms "$line")" \
            "$(field probe_max_ms "$line")"
    done
fi
if [ -n "${client_counts// /}" ]; then
    echo "(median of $runs runs by msgs/s; cpu = broker CPU time per message delivered; gen = the"
    echo " generator's; when the generator needs more CPU than the broker, and they share the"
    echo " machine's cores, msgs/s says more about the generator than about the broker)"
fi
[ "$idle_clients" -gt 0 ] &&
    echo "(kB/session = broker VmRSS growth with the idle sessions connected, per session)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
