#!/usr/bin/env bash
# bench-scale.sh: many MQTT sessions against Mosquitto, NATS and
# Switchboard, side by side, with tools/bench/mqttscale (libmosquitto, not
# the broker's codec). Linux only.
#
#   tools/bench/bench-scale.sh [options]
#
# Topics: N clients (clean session) each subscribe to a topic of their own,
# QoS 1; one more publishes --count QoS 1 messages round-robin over the N
# topics (--window unacknowledged); rate from the first PUBLISH to the last
# delivery, every message delivered exactly once; broker CPU time per
# message (/proc), split into user and system time, and the broker's read
# and write system calls per message; for each N of --clients, the runs
# alternate between the brokers and the median of --runs is reported, with
# the ratios Switchboard/Mosquitto and Switchboard/NATS. The 1-client
# figure is the reference for CPU per message.
#
# A run that ends with sessions lost or refused (a SUBACK that does not
# grant QoS 1, a dropped connection, nothing delivered) or with a message
# delivered twice is FAILED and gives no figures; a broker that the
# --timeout stops before every message arrived is reported PARTIAL with
# the rate of what arrived by then, and ratios against it are marked so.
# Either makes the exit status 1.
#
# NATS (Debian's nats-server 2.9) serves MQTT 3.1.1 on top of JetStream,
# which must be enabled: each run gets its own store directory and a
# client port besides the MQTT one. Its MQTT side has limits the others do
# not: no QoS 2 (a QoS 2 subscription is granted QoS 1; a QoS 2 PUBLISH
# closes the connection), sessions and retained messages kept in
# JetStream streams, and each QoS 1 subscription is a JetStream consumer of
# its own, so thousands of subscriptions cost it far more than thousands of
# connections. Its inflight window (mqtt max_ack_pending) is set to 1000
# like the others'. Its file store syncs on its own interval (2 minutes by
# default), not per message; neither does Mosquitto's persistence.
#
# Idle: --idle-clients sessions subscribe and stay connected, silent but for
# keep alive (--keepalive), for --idle-s seconds: the broker's CPU % over that time
# and its resident memory per session (VmRSS after they subscribed minus
# before, divided by their number); then 10 publishes one at a time, each to
# one of them, timed from PUBLISH to delivery.
#
# Every measurement starts a fresh broker on free loopback ports with a fresh
# data directory; RLIMIT_NOFILE is raised to the hard limit for them and
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
#   --only "LIST"     some of mosquitto, nats, switchboard (BENCH_ONLY; all three)
#   --keep            keep the temporary directory (configs, logs, outputs)
# SB_BUILD_DIR: build directory holding service/switchboard and
# tools/bench/mqttscale (default build/release; configured with the release
# preset and built when they are missing); SWITCHBOARD: another switchboard
# binary to measure (an older build, say). MOSQUITTO: the Mosquitto binary
# (default /usr/sbin/mosquitto); NATS: the nats-server binary (default
# /usr/sbin/nats-server).
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SB_BUILD_DIR:-$top/build/release}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
nats_bin=${NATS:-/usr/sbin/nats-server}
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
. "$top/tools/bench/brokers.sh"
select_brokers bench-scale.sh "$only"

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
if wanted mosquitto; then
    [ -x "$mosq_bin" ] || { echo "bench-scale.sh: $mosq_bin not found (apt-get install mosquitto, or set MOSQUITTO)" >&2; exit 1; }
fi
if wanted nats; then
    [ -x "$nats_bin" ] || { echo "bench-scale.sh: $nats_bin not found (apt-get install nats-server, or set NATS)" >&2; exit 1; }
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
    elif [ "$name" = nats ]; then
        # MQTT needs JetStream (sessions, QoS 1 messages and retained ones
        # live in its streams), and a client port of its own.
        free_port >"$dir/client-port"
        cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:$(cat "$dir/client-port")
server_name: bench
max_connections: 100000
jetstream {
  store_dir: "$dir/js"
}
mqtt {
  listen: 127.0.0.1:$port
  max_ack_pending: 1000
}
EOF
        "$nats_bin" -c "$dir/nats.conf" >>"$dir/broker.log" 2>&1 &
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
    # NATS opens its client port after the MQTT one: wait for both
    if ! wait_ready "$started_pid" "$port" ||
        { [ "$name" = nats ] && ! wait_ready "$started_pid" "$(cat "$dir/client-port")"; }; then
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
wanted mosquitto && echo "   mosquitto: $("$mosq_bin" -h 2>/dev/null | head -n 1)"
wanted nats && echo "   nats: $("$nats_bin" --version 2>/dev/null | head -n 1) (JetStream, MQTT)"
echo "   switchboard: $sb_bin"
echo "   generator: $gen_bin (libmosquitto $(dpkg-query -W -f='${Version}' libmosquitto1 2>/dev/null))"

status=0

# ---- topics ----
# results[NAME,N]: one line per run that gave figures:
#   msgs/s cpu_us e2e_p50 gen_us user_us sys_us rw_calls state
# (state: ok, or partial when --timeout ended it first); failed[NAME,N]:
# how many runs failed.
declare -A results failed
for n in $client_counts; do
    echo "== $n client(s), each on its own topic: $runs run(s) per broker, $count QoS 1 messages of $size B, window $window"
    for ((r = 1; r <= runs; r++)); do
        for name in "${brokers[@]}"; do
            dir=$tmp/$name-topics-$n-$r
            if ! start_broker "$name" "$dir"; then
                failed[$name,$n]=$((${failed[$name,$n]:-0} + 1))
                status=1
                continue
            fi
            out=$dir/run.txt
            "$gen_bin" --port "$started_port" --clients "$n" --count "$count" --window "$window" \
                --broker-pid "$started_pid" --id-prefix "scale$n" "${gen_common[@]}" >"$out" 2>&1
            rc=$?
            stop_pid "$started_pid"
            line=$(grep '^RESULT' "$out")
            [ $rc = 0 ] || status=1
            # Lost or refused sessions, or nothing delivered: the broker
            # refused the load, and its figures would mean nothing.
            if [ -z "$line" ] || [ "$(field failures "$line")" != 0 ] ||
                [ "$(field received "$line")" = 0 ] || [ "$(field dup "$line")" != 0 ]; then
                failed[$name,$n]=$((${failed[$name,$n]:-0} + 1))
                printf '   %-12s run %d: FAILED: the broker refused the load or dropped sessions:\n' "$name" "$r"
                grep -v '^RESULT' "$out" | sed 's/^/     /' | tail -n 5
                echo "     its log ($dir/broker.log):"
                tail -n 5 "$dir/broker.log" | sed 's/^/     /'
                continue
            fi
            state=ok
            [ "$(field complete "$line")" = 1 ] || state=partial
            gen_us=$(awk -v s="$(field gen_cpu_s "$line")" -v n="$(field received "$line")" \
                'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "?" }')
            printf '   %-12s run %d: %8s msgs/s, broker %6s us CPU/msg (user %s, system %s; %s reads+writes/msg; generator %s), e2e p50 %s ms, RSS %s MB%s\n' \
                "$name" "$r" "$(field msgs_per_s "$line")" "$(field cpu_us_per_msg "$line")" \
                "$(field user_us_per_msg "$line")" "$(field sys_us_per_msg "$line")" \
                "$(field rw_calls_per_msg "$line")" \
                "$gen_us" "$(field e2e_p50_ms "$line")" \
                "$(awk -v k="$(field rss_kb "$line")" 'BEGIN { printf "%.1f", k / 1024 }')" \
                "$([ $state = ok ] || echo "  PARTIAL: $(field received "$line") of $count received$([ "$(field timed_out "$line")" = 1 ] && echo " within --timeout $timeout s")")"
            results[$name,$n]+="$(field msgs_per_s "$line") $(field cpu_us_per_msg "$line") $(field e2e_p50_ms "$line") $gen_us $(field user_us_per_msg "$line") $(field sys_us_per_msg "$line") $(field rw_calls_per_msg "$line") $state"$'\n'
        done
    done
done

# median_of NAME N: a line like results' with the median of each column
# over the runs (so CPU per message is the median of the runs' figures,
# not that of the median-rate run), and state partial if any run was
median_of() {
    local rows
    rows=$(printf '%s' "${results[$1,$2]:-}" | grep .)
    [ -n "$rows" ] || return
    printf '%s\n' "$rows" | awk '
        { k = NR; for (i = 1; i <= 7; i++) v[i, k] = $i; if ($8 != "ok") partial = 1 }
        END {
            for (i = 1; i <= 7; i++) {
                for (a = 1; a <= k; a++) col[a] = v[i, a] + 0
                for (a = 2; a <= k; a++)
                    for (b = a; b > 1 && col[b - 1] > col[b]; b--) { t = col[b]; col[b] = col[b - 1]; col[b - 1] = t }
                m = k % 2 ? col[(k + 1) / 2] : (col[k / 2] + col[k / 2 + 1]) / 2
                printf (i == 1 ? "%.0f " : i == 3 ? "%.3f " : "%.2f "), m
            }
            print (partial ? "partial" : "ok")
        }'
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
        if [ -z "$line" ]; then
            printf '   %-12s FAILED: the sessions did not all connect and subscribe:\n' "$name"
            grep -v '^RESULT' "$out" | sed 's/^/     /' | tail -n 5
            status=1
            continue
        fi
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
printf '%-8s %-12s %10s %11s %8s %8s %9s %11s %11s %s\n' clients broker "msgs/s" "cpu us/msg" \
    "user" "system" "rw/msg" "e2e p50 ms" "gen us/msg" ""
for n in $client_counts; do
    for name in "${brokers[@]}"; do
        m=$(median_of "$name" "$n")
        note=
        [ -n "${failed[$name,$n]:-}" ] && note="${failed[$name,$n]} of $runs runs FAILED"
        if [ -z "$m" ]; then
            printf '%-8s %-12s %s\n' "$n" "$name" "FAILED (every run; see above)"
            continue
        fi
        set -- $m
        [ "$8" = partial ] && note="PARTIAL (--timeout ended it)${note:+; $note}"
        printf '%-8s %-12s %10s %11s %8s %8s %9s %11s %11s %s\n' "$n" "$name" "$1" "$2" "$5" "$6" \
            "$7" "$3" "$4" "$note"
    done
done
n1=${client_counts%% *}
for n in $client_counts; do
    s=$(median_of switchboard "$n")
    [ -n "$s" ] || continue
    set -- $s
    sr=$1 sc=$2 sg=$4
    for peer in mosquitto nats; do
        wanted "$peer" || continue
        m=$(median_of "$peer" "$n")
        if [ -z "$m" ]; then
            echo "$n clients: switchboard/$peer: none ($peer failed every run)"
            continue
        fi
        set -- $m
        awk -v s="$sr" -v m="$1" -v sc="$sc" -v mc="$2" -v n="$n" -v peer="$peer" \
            -v note="$([ "$8" = partial ] && echo " ($peer PARTIAL: its rate is that of what arrived within the limit)")" \
            'BEGIN { if (m > 0) printf "%s clients: switchboard/%s msgs/s %.2f", n, peer, s / m;
                     if (sc > 0) printf ", broker CPU per message 1/%.1f of %s'"'"'s", mc / sc, peer;
                     printf "%s\n", note }'
        # The generator shares the CPUs: even a broker that cost nothing
        # could not go faster than the CPUs the generator leaves it.
        awk -v g="$sg" -v m="$1" -v n="$n" -v peer="$peer" -v cpus="$(nproc)" \
            'BEGIN { if (g > 0 && m > 0) printf "  ceiling: the generator alone needs %.1f us CPU per message; on %d CPUs no broker can exceed %.0f msgs/s = %.2fx %s'"'"'s\n", g, cpus, cpus * 1e6 / g, cpus * 1e6 / g / m, peer }'
    done
    s1=$(median_of switchboard "$n1")
    if [ -n "$s1" ] && [ "$n" != "$n1" ]; then
        set -- $s1
        awk -v c="$sc" -v c1="$2" -v n="$n" -v n1="$n1" \
            'BEGIN { if (c1 > 0) printf "%s clients: switchboard CPU per message %.2f x its %s-client figure\n", n, c / c1, n1 }'
    fi
done
if [ "$idle_clients" -gt 0 ]; then
    printf '\n%-12s %8s %12s %14s %14s\n' "idle ($idle_clients)" "CPU %" "kB/session" "probe p50 ms" "probe max ms"
    for name in "${brokers[@]}"; do
        line=${idle[$name]:-}
        if [ -z "$line" ]; then
            printf '%-12s %s\n' "$name" "FAILED (see above)"
            continue
        fi
        printf '%-12s %8s %12s %14s %14s\n' "$name" "$(field cpu_pct "$line")" \
            "$(field kb_per_session "$line")" "$(field probe_p50_ms "$line")" \
            "$(field probe_max_ms "$line")"
    done
fi
if [ -n "${client_counts// /}" ]; then
    echo "(medians of $runs runs, each column on its own; cpu = broker CPU time per message delivered, user and"
    echo " system its parts; rw = the broker's read and write system calls per message; gen = the"
    echo " generator's CPU; when the generator needs more CPU than the broker, and they share the"
    echo " machine's cores, msgs/s says more about the generator than about the broker)"
fi
[ "$idle_clients" -gt 0 ] &&
    echo "(kB/session = broker VmRSS growth with the idle sessions connected, per session)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
