#!/usr/bin/env bash
# bench-mqtt.sh: the same MQTT 3.1.1 load against Mosquitto, NATS and
# Switchboard, side by side, on this machine. Linux only.
#
#   tools/bench/bench-mqtt.sh [options]          throughput and latency table
#   tools/bench/bench-mqtt.sh --kill9 [options]  acknowledged messages lost to kill -9
#
# Two load generators run the same load: tools/bench/mqttload, on
# libmosquitto (Debian's libmosquitto-dev), which shares no code with the
# broker, and tools/bench/mqttbench, on the broker's own MQTT codec (one
# epoll loop writing a whole window in one send, so it is never the
# bottleneck), as a second opinion. Each gets its own table.
#
# Throughput: the brokers run at once, on free loopback ports, each with a
# fresh data directory in a temporary directory; the runs alternate between
# brokers and generators (so machine noise hits all alike) and the median of
# --runs is reported, with the broker's CPU time per message (from /proc) and
# a one-at-a-time run (--window 1, one producer) for latency.
#
# NATS (Debian's nats-server 2.9) serves MQTT 3.1.1 on top of JetStream,
# enabled here with its own store directory (and a client port besides the
# MQTT one). It has no QoS 2 (a QoS 2 PUBLISH closes the connection): with
# --qos 2 it is left out, saying so. Persistent sessions, QoS 1 messages
# and retained ones live in JetStream streams, whose file store syncs on
# its own interval (2 minutes by default), not per message. A run it fails
# (a refused connection or subscription, messages missing) is reported as
# FAILED with the end of its log, never as figures.
#
# --kill9: per broker, a persistent-session (clean session 0) subscriber
# subscribes and goes offline; the broker is restarted gracefully (so even a
# broker that saves only at shutdown has the session on disk); --k9-count
# QoS 1 messages are published and every PUBACK received; the broker is
# killed with SIGKILL and started again; the subscriber reconnects and counts
# what it still gets. Every message was acknowledged, so each missing one is
# an acknowledged message lost.
#
# Options (environment variable, default):
#   --count N        messages per throughput run (BENCH_COUNT, 200000)
#   --qos Q          0, 1 or 2 (BENCH_QOS, 1)
#   --size B         payload bytes (BENCH_SIZE, 100)
#   --producers P    (BENCH_PRODUCERS, 4)
#   --consumers C    each receives every message (BENCH_CONSUMERS, 1)
#   --window W       unacknowledged publishes per producer (BENCH_WINDOW, 256)
#   --persistent     consumers use clean session 0 (BENCH_PERSISTENT=1)
#   --runs R         throughput runs per broker, median reported (BENCH_RUNS, 3)
#   --lat-count N    messages of the one-at-a-time run, 0 skips it (BENCH_LAT_COUNT, 5000)
#   --k9-count N     messages published before kill -9 (BENCH_K9_COUNT, 10000)
#   --only "LIST"    some of mosquitto, nats, switchboard (BENCH_ONLY; all three)
#   --generator G    mqttload, mqttbench or both (BENCH_GENERATOR, both; mqttbench
#                    alone when mqttload was not built: no libmosquitto-dev)
#   --floor          also run tools/bench/mqttfloor, the raw mechanism (one
#                    epoll loop that acknowledges and forwards each PUBLISH,
#                    one read and one write per connection per wake-up,
#                    nothing stored), as a broker named floor: the floor of
#                    the brokers' CPU per message under this load (BENCH_FLOOR=1)
#   --threads        after each run, each broker thread's user and system CPU
#                    per message, and (with perf) the process's system calls,
#                    reads (read, recvfrom), writes (write, writev, sendto,
#                    sendmsg), epoll waits (epoll_wait, epoll_pwait: Go's
#                    NATS) and context switches per message (BENCH_THREADS=1)
#   --keep           keep the temporary directory (configs, logs, outputs)
# SB_BUILD_DIR: build directory holding service/switchboard,
# tools/bench/mqttbench and tools/bench/mqttload (default build/release;
# configured with the release preset and built when they are missing). MOSQUITTO: the Mosquitto binary
# (default /usr/sbin/mosquitto); NATS: the nats-server binary (default
# /usr/sbin/nats-server).
#
# Only the processes this script starts are signalled, by their PIDs.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${SB_BUILD_DIR:-$top/build/release}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
nats_bin=${NATS:-/usr/sbin/nats-server}
count=${BENCH_COUNT:-200000}
qos=${BENCH_QOS:-1}
size=${BENCH_SIZE:-100}
producers=${BENCH_PRODUCERS:-4}
consumers=${BENCH_CONSUMERS:-1}
window=${BENCH_WINDOW:-256}
persistent=${BENCH_PERSISTENT:-0}
runs=${BENCH_RUNS:-3}
lat_count=${BENCH_LAT_COUNT:-5000}
k9_count=${BENCH_K9_COUNT:-10000}
only=${BENCH_ONLY:-}
generator=${BENCH_GENERATOR:-both}
floor=${BENCH_FLOOR:-0}
threads=${BENCH_THREADS:-0}
timeout=${BENCH_TIMEOUT:-30}
mode=table
keep=0

usage() {
    sed -n '2,/^# Only the processes/p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
    --kill9) mode=kill9 ;;
    --count) count=$2; shift ;;
    --qos) qos=$2; shift ;;
    --size) size=$2; shift ;;
    --producers) producers=$2; shift ;;
    --consumers) consumers=$2; shift ;;
    --window) window=$2; shift ;;
    --persistent) persistent=1 ;;
    --runs) runs=$2; shift ;;
    --lat-count) lat_count=$2; shift ;;
    --k9-count) k9_count=$2; shift ;;
    --only) only=$2; shift ;;
    --generator) generator=$2; shift ;;
    --floor) floor=1 ;;
    --threads) threads=1 ;;
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-mqtt.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
. "$top/tools/bench/brokers.sh"
select_brokers bench-mqtt.sh "$only"
if wanted nats && [ "$qos" = 2 ] && [ "$mode" = table ]; then
    echo "bench-mqtt.sh: note: nats left out: NATS's MQTT has no QoS 2" >&2
    keep_brokers=()
    for name in "${brokers[@]}"; do [ "$name" = nats ] || keep_brokers+=("$name"); done
    brokers=("${keep_brokers[@]}")
fi
case $generator in both | mqttload | mqttbench) ;; *) echo "bench-mqtt.sh: --generator mqttload|mqttbench|both" >&2; exit 2 ;; esac

sb_bin=$build/service/switchboard
bench_bin=$build/tools/bench/mqttbench
load_bin=$build/tools/bench/mqttload
floor_bin=$build/tools/bench/mqttfloor

# ---- build ----
if [ ! -x "$sb_bin" ] || [ ! -x "$bench_bin" ] || [ ! -x "$load_bin" ] ||
    { [ "$floor" = 1 ] && [ ! -x "$floor_bin" ]; }; then
    echo "== building switchboard, mqttbench, mqttfloor and mqttload in $build (release preset)"
    (cd "$top" && cmake --preset release -B "$build" >/dev/null &&
        cmake --build "$build" --target switchboard mqttbench mqttfloor) || {
        echo "bench-mqtt.sh: build failed" >&2
        exit 1
    }
    # mqttload exists only where libmosquitto-dev was found
    (cd "$top" && cmake --build "$build" --target mqttload >/dev/null 2>&1)
fi
generators=()
if [ "$generator" != mqttbench ]; then
    if [ -x "$load_bin" ]; then
        generators+=(mqttload)
    elif [ "$generator" = mqttload ]; then
        echo "bench-mqtt.sh: $load_bin not built (apt-get install libmosquitto-dev, reconfigure)" >&2
        exit 1
    else
        echo "bench-mqtt.sh: note: no $load_bin (libmosquitto-dev missing): mqttbench only" >&2
    fi
fi
[ "$generator" = mqttload ] || generators+=(mqttbench)
if wanted mosquitto; then
    [ -x "$mosq_bin" ] || { echo "bench-mqtt.sh: $mosq_bin not found (apt-get install mosquitto, or set MOSQUITTO)" >&2; exit 1; }
fi
if wanted nats; then
    [ -x "$nats_bin" ] || { echo "bench-mqtt.sh: $nats_bin not found (apt-get install nats-server, or set NATS)" >&2; exit 1; }
fi

tmp=$(mktemp -d /tmp/bench-mqtt.XXXXXX)
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

# ---- processes ----

forget_pid() {
    local p keep_pids=()
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || keep_pids+=("$p")
    done
    pids=("${keep_pids[@]}")
}

# SIGTERM, up to 15 s for an orderly exit, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench-mqtt.sh: pid $pid ignored SIGTERM for 15 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

kill9_pid() {
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    forget_pid "$1"
}

# Polls until the port accepts connections (0), the process exits (1) or 15 s
# pass (2).
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

# thread_ticks PID: "tid name utime stime" per thread (USER_HZ ticks).
thread_ticks() {
    local t st rest
    for t in /proc/"$1"/task/*; do
        st=$(cat "$t/stat" 2>/dev/null) || continue
        rest=${st##*) }
        st=${st#*(}
        st=${st%%)*}
        echo "${t##*/} ${st// /_} $(echo "$rest" | awk '{print $12, $13}')"
    done
}

# thread_report BEFORE AFTER PERF_OUT: --threads' lines for one run.
thread_report() {
    LC_ALL=C join <(LC_ALL=C sort "$1") <(LC_ALL=C sort "$2") | awk -v hz="$(getconf CLK_TCK)" -v n="$count" '
        { u = ($6 - $3) / hz * 1e6 / n; s = ($7 - $4) / hz * 1e6 / n
          if (u + s > 0) printf "     thread %s (%s): user %.2f, system %.2f us/msg\n", $1, $2, u, s }'
    [ -s "$3" ] && awk -F, -v n="$count" '$1 + 0 > 0 { ev[$3] += $1 }
        END { rd = ev["syscalls:sys_enter_read"] + ev["syscalls:sys_enter_recvfrom"]
              wr = ev["syscalls:sys_enter_write"] + ev["syscalls:sys_enter_writev"]
              wr += ev["syscalls:sys_enter_sendto"] + ev["syscalls:sys_enter_sendmsg"]
              ep = ev["syscalls:sys_enter_epoll_wait"] + ev["syscalls:sys_enter_epoll_pwait"]
              printf "     per message: system calls %.2f (read+recvfrom %.2f, write+writev+sendto+sendmsg %.2f, epoll_wait+epoll_pwait %.2f), context switches %.2f\n",
              ev["raw_syscalls:sys_enter"] / n, rd / n, wr / n, ep / n, ev["context-switches"] / n }' "$3"
}

cpu_ticks() {
    # utime + stime of every thread; fields after "pid (comm) ".
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'
}

# ---- brokers ----
# setup_<name> DIR PORT writes the config; start_broker NAME DIR starts it and
# sets started_pid; it returns 0 when ready, 1 if the broker failed to start,
# 3 if Switchboard does not know protocol: mqtt yet.

setup_mosquitto() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence true"
        echo "persistence_location $dir/"
        # Default 20; raised so the in-flight window is not what is measured
        # (20, 1000 and unlimited measured the same here).
        echo "max_inflight_messages 1000"
        # Default 1000 per client, beyond which QoS 1/2 messages are dropped.
        echo "max_queued_messages 100000000"
        echo "log_dest stderr"
        echo "log_type error"
        echo "log_type warning"
    } >"$dir/mosquitto.conf"
    # Run as root, Mosquitto drops to user mosquitto and could not write its
    # database (persistence_location) into our private directory.
    if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
        chown mosquitto "$dir"
        chmod 711 "$tmp"
    fi
}

setup_nats() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    # MQTT needs JetStream; max_ack_pending (default 1024) is NATS's
    # inflight window per subscription, as Mosquitto's above.
    free_port >"$dir/client-port"
    cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:$(cat "$dir/client-port")
server_name: bench
jetstream {
  store_dir: "$dir/js"
}
mqtt {
  listen: 127.0.0.1:$port
  max_ack_pending: 1000
}
EOF
}

setup_floor() {
    mkdir -p "$1"
}

setup_switchboard() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat >"$dir/sb.yaml" <<EOF
broker:
  data_dir: '$dir/sbdata'
  log: {level: warn}
adapters:
  - name: mqtt
    type: tcp
    listen: 127.0.0.1:$port
    protocol: mqtt
    max_connections: 1000
    # Default 100000 per session, beyond which the oldest are dropped; no
    # limit, like Mosquitto's max_queued_messages above.
    max_queued: 0
    # Default 64; 1000 like the peers' windows above.
    inflight: 1000
EOF
}

start_broker() {
    local name=$1 dir=$2 port=$3 rc
    if [ "$name" = mosquitto ]; then
        "$mosq_bin" -c "$dir/mosquitto.conf" >>"$dir/broker.log" 2>&1 &
    elif [ "$name" = nats ]; then
        "$nats_bin" -c "$dir/nats.conf" >>"$dir/broker.log" 2>&1 &
    elif [ "$name" = floor ]; then
        "$floor_bin" "$port" >>"$dir/broker.log" 2>&1 &
    else
        if ! "$sb_bin" check-config "$dir/sb.yaml" >"$dir/check.log" 2>&1; then
            if grep -qi "mqtt\|protocol" "$dir/check.log"; then
                echo "switchboard: skipped: this build rejects 'protocol: mqtt':" >&2
                sed 's/^/  /' "$dir/check.log" >&2
                return 3
            fi
            echo "switchboard: check-config failed:" >&2
            sed 's/^/  /' "$dir/check.log" >&2
            return 1
        fi
        "$sb_bin" run -c "$dir/sb.yaml" >>"$dir/broker.log" 2>&1 &
    fi
    started_pid=$!
    pids+=("$started_pid")
    wait_ready "$started_pid" "$port"
    rc=$?
    # NATS opens its client port after the MQTT one: wait for both, so the
    # next broker's free port cannot be that one
    [ $rc = 0 ] && [ "$name" = nats ] && { wait_ready "$started_pid" "$(cat "$dir/client-port")"; rc=$?; }
    [ $rc = 0 ] && return 0
    if [ $rc = 2 ]; then
        echo "$name: not accepting connections on 127.0.0.1:$port after 15 s" >&2
        stop_pid "$started_pid"
    else
        wait "$started_pid" 2>/dev/null
        forget_pid "$started_pid"
    fi
    if [ "$name" = switchboard ] && grep -q "unknown protocol mqtt" "$dir/broker.log"; then
        echo "switchboard: skipped: this build has no MQTT server yet:" >&2
        sed 's/^/  /' "$dir/broker.log" >&2
        return 3
    fi
    echo "$name: failed to start; its log ($dir/broker.log):" >&2
    tail -n 20 "$dir/broker.log" | sed 's/^/  /' >&2
    return 1
}

# After a failed run: says so if the broker exited (waiting up to 3 s for
# one that is stopping) and why; returns 1 if it is still running.
broker_gone() {
    local name=$1 pid=${pid_of[$1]} st i
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && return 1
    wait "$pid" 2>/dev/null
    st=$?
    forget_pid "$pid"
    if [ "$st" = 0 ]; then
        echo "     $name (pid $pid) stopped in an orderly way (exit 0) although this script did not" \
            "stop it: something else sent it SIGTERM/SIGINT (a broad pkill?)"
    else
        echo "     $name (pid $pid) exited with status $st; the end of its log:"
        tail -n 10 "$tmp/$name/broker.log" | sed 's/^/       /'
    fi
    return 0
}

# field NAME LINE: the value of NAME=... in a RESULT line.
field() {
    printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

session_flag() {
    [ "$persistent" = 1 ] && echo --persistent || echo --clean
}

echo "== bench-mqtt: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
wanted mosquitto && echo "   mosquitto: $("$mosq_bin" -h 2>/dev/null | head -n 1)"
wanted nats && echo "   nats: $("$nats_bin" --version 2>/dev/null | head -n 1) (JetStream, MQTT)"
echo "   switchboard: $sb_bin"
echo "   generators: ${generators[*]} ($build/tools/bench)"

# ---- kill -9 ----
if [ "$mode" = kill9 ]; then
    status=0
    declare -A k9_line
    for name in "${brokers[@]}"; do
        dir=$tmp/$name-kill9
        port=$(free_port)
        "setup_$name" "$dir" "$port"
        common=(--port "$port" --qos 1 --consumers 1 --producers "$producers" --size "$size"
            --id-prefix k9 --topic-prefix k9 --run-id "$((RANDOM * 32768 + RANDOM))")
        echo "== $name: kill -9 test on 127.0.0.1:$port"
        start_broker "$name" "$dir" "$port"
        rc=$?
        if [ $rc = 3 ]; then
            k9_line[$name]="skipped (no MQTT server in this build)"
            continue
        fi
        if [ $rc != 0 ]; then
            k9_line[$name]="failed to start"
            status=1
            continue
        fi
        pid=$started_pid
        "$bench_bin" "${common[@]}" --mode sub --persistent --count "$k9_count" >"$dir/sub.txt" 2>&1 ||
            { k9_line[$name]="subscribe failed (see below)"; cat "$dir/sub.txt"; stop_pid "$pid"; status=1; continue; }
        stop_pid "$pid"
        if ! start_broker "$name" "$dir" "$port"; then
            k9_line[$name]="failed to restart after a graceful stop"
            status=1
            continue
        fi
        pid=$started_pid
        "$bench_bin" "${common[@]}" --mode pub --count "$k9_count" --timeout "$timeout" >"$dir/pub.txt" 2>&1
        pub=$(grep '^RESULT' "$dir/pub.txt")
        acked=$(field acked "$pub")
        echo "   published $k9_count, PUBACKs received: ${acked:-?}; kill -9 $pid"
        [ "${acked:-0}" = "$k9_count" ] || { cat "$dir/pub.txt"; status=1; }
        kill9_pid "$pid"
        if ! start_broker "$name" "$dir" "$port"; then
            k9_line[$name]="failed to start after kill -9"
            status=1
            continue
        fi
        pid=$started_pid
        "$bench_bin" "${common[@]}" --mode drain --persistent --count "$k9_count" --timeout 5 \
            >"$dir/drain.txt" 2>&1
        drain=$(grep '^RESULT' "$dir/drain.txt")
        stop_pid "$pid"
        received=$(field received "$drain")
        lost=$(( ${acked:-0} - ${received:-0} ))
        sp=$(field session_present "$drain")
        k9_line[$name]="acknowledged ${acked:-?}, delivered after restart ${received:-?}, lost $lost (session kept: $([ "$sp" = 1 ] && echo yes || echo no), duplicates $(field dup "$drain"))"
        [ "$(field proto_errors "$drain")" = 0 ] || { echo "   protocol errors:"; grep -v '^RESULT' "$dir/drain.txt"; }
    done
    echo
    echo "kill -9 after every PUBACK ($k9_count QoS 1 messages to an offline persistent session):"
    for name in "${brokers[@]}"; do
        printf '  %-12s %s\n' "$name" "${k9_line[$name]}"
    done
    exit $status
fi

# ---- throughput and latency ----
declare -A port_of pid_of
active=()
measured=("${brokers[@]}")
[ "$floor" = 1 ] && measured+=(floor)
for name in "${measured[@]}"; do
    dir=$tmp/$name
    port=$(free_port)
    "setup_$name" "$dir" "$port"
    start_broker "$name" "$dir" "$port"
    rc=$?
    if [ $rc = 0 ]; then
        port_of[$name]=$port
        pid_of[$name]=$started_pid
        active+=("$name")
        echo "   $name: pid $started_pid on 127.0.0.1:$port"
    elif [ $rc != 3 ]; then
        exit 1
    fi
done
[ ${#active[@]} -gt 0 ] || { echo "bench-mqtt.sh: no broker to measure" >&2; exit 1; }

echo "== $runs run(s) per broker and generator: QoS $qos, $count messages of $size B," \
    "$producers producer(s), $consumers consumer(s) ($(session_flag | tr -d -) session), window $window"
# Every run uses the same client ids, whichever the generator (both name
# clients <id-prefix>-p<i> and -c<i>): with --persistent, a session left by
# an earlier run under another id would stay subscribed and keep collecting
# (and the broker storing) every later run's messages.
gen_bin() {
    [ "$1" = mqttload ] && echo "$load_bin" || echo "$bench_bin"
}
status=0
declare -A results failed
for ((r = 1; r <= runs; r++)); do
    for gen in "${generators[@]}"; do
        for name in "${active[@]}"; do
            out=$tmp/$name/$gen-run$r.txt
            kill -0 "${pid_of[$name]}" 2>/dev/null || continue
            before=$(cpu_ticks "${pid_of[$name]}")
            perf_pid=
            if [ "$threads" = 1 ]; then
                thread_ticks "${pid_of[$name]}" >"$tmp/threads-before"
                : >"$tmp/perf.txt"
                if command -v perf >/dev/null 2>&1; then
                    perf stat -x, -o "$tmp/perf.txt" -p "${pid_of[$name]}" -e \
                        raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,context-switches \
                        2>/dev/null &
                    perf_pid=$!
                    sleep 0.3 # (attached)
                fi
            fi
            "$(gen_bin "$gen")" --port "${port_of[$name]}" --qos "$qos" --count "$count" \
                --size "$size" --producers "$producers" --consumers "$consumers" \
                --window "$window" "$(session_flag)" --id-prefix bench --timeout "$timeout" \
                >"$out" 2>&1
            rc=$?
            after=$(cpu_ticks "${pid_of[$name]}")
            if [ -n "$perf_pid" ]; then
                kill -INT "$perf_pid" 2>/dev/null
                wait "$perf_pid" 2>/dev/null
            fi
            [ "$threads" = 1 ] && thread_ticks "${pid_of[$name]}" >"$tmp/threads-after"
            line=$(grep '^RESULT' "$out")
            # Broker CPU per message, in microseconds (USER_HZ ticks).
            us=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$count" \
                'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
            rss=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${pid_of[$name]}/status" 2>/dev/null)
            printf '   %-9s %-12s run %d: %s msgs/s, ack p50 %s us, p99 %s us; broker %s us CPU/msg, peak RSS %s MB; generator CPU %s s\n' \
                "$gen" "$name" "$r" "$(field msgs_per_s "$line")" "$(field p50_us "$line")" \
                "$(field p99_us "$line")" "$us" "${rss:-?}" "$(field gen_cpu_s "$line")"
            [ "$threads" = 1 ] && thread_report "$tmp/threads-before" "$tmp/threads-after" "$tmp/perf.txt"
            if [ $rc != 0 ] || [ -z "$line" ]; then
                # refused, lost or duplicated messages: no figures from it
                echo "   $gen $name run $r FAILED (exit $rc):"
                grep -v '^RESULT' "$out" | sed 's/^/     /'
                broker_gone "$name" || {
                    echo "     the end of its log:"
                    tail -n 5 "$tmp/$name/broker.log" | sed 's/^/       /'
                }
                failed[$gen/$name]=$((${failed[$gen/$name]:-0} + 1))
                status=1
                continue
            fi
            # The generator's CPU per message, in microseconds.
            gus=$(awk -v s="$(field gen_cpu_s "$line")" -v n="$count" 'BEGIN { printf "%.1f", s * 1e6 / n }')
            results[$gen/$name]+="$(field msgs_per_s "$line") $r $us ${rss:-?} $gus"$'\n'
        done
    done
done

declare -A lat
if [ "$lat_count" -gt 0 ]; then
    echo "== one at a time: QoS $qos, $lat_count messages, 1 producer, window 1"
    for gen in "${generators[@]}"; do
        for name in "${active[@]}"; do
            out=$tmp/$name/$gen-latency.txt
            kill -0 "${pid_of[$name]}" 2>/dev/null || continue
            "$(gen_bin "$gen")" --port "${port_of[$name]}" --qos "$qos" --count "$lat_count" \
                --size "$size" --producers 1 --consumers "$consumers" --window 1 \
                "$(session_flag)" --id-prefix bench --timeout "$timeout" >"$out" 2>&1 || {
                echo "   $gen $name latency run FAILED:"
                grep -v '^RESULT' "$out" | sed 's/^/     /'
                broker_gone "$name"
                status=1
            }
            lat[$gen/$name]=$(grep '^RESULT' "$out")
        done
    done
fi

declare -A median median_cpu median_gen
for gen in "${generators[@]}"; do
    echo
    case $gen in
    mqttload) echo "generator mqttload (libmosquitto $(pkg-config --modversion libmosquitto 2>/dev/null)):" ;;
    *) echo "generator mqttbench (the broker's MQTT codec):" ;;
    esac
    printf '%-12s %9s %11s %11s %11s %10s %10s %8s %6s %11s %11s\n' broker "msgs/s" "ack p50 us" \
        "ack p99 us" "e2e p50 us" "cpu us/msg" "gen us/msg" "peak MB" "lost" "1x1 p50 us" "1x1 p99 us"
    for name in "${active[@]}"; do
        # The median run by msgs/s; CPU per message: the median of all runs.
        n=$(printf '%s' "${results[$gen/$name]:-}" | grep -c .)
        if [ "$n" = 0 ]; then
            printf '%-12s FAILED (every run; see above)\n' "$name"
            continue
        fi
        mid=$(printf '%s' "${results[$gen/$name]}" | sort -n | sed -n "$(((n + 1) / 2))p")
        r=$(echo "$mid" | cut -d' ' -f2)
        line=$(grep '^RESULT' "$tmp/$name/$gen-run$r.txt")
        median[$gen/$name]=$(field msgs_per_s "$line")
        median_cpu[$gen/$name]=$(printf '%s' "${results[$gen/$name]}" | cut -d' ' -f3 | sort -g |
            sed -n "$(((n + 1) / 2))p")
        median_gen[$gen/$name]=$(printf '%s' "${results[$gen/$name]}" | cut -d' ' -f5 | sort -g |
            sed -n "$(((n + 1) / 2))p")
        printf '%-12s %9s %11s %11s %11s %10s %10s %8s %6s %11s %11s\n' "$name" \
            "$(field msgs_per_s "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" \
            "$(field e2e_p50_us "$line")" "${median_cpu[$gen/$name]}" "${median_gen[$gen/$name]}" \
            "$(echo "$mid" | cut -d' ' -f4)" "$(field lost "$line")" \
            "$(field p50_us "${lat[$gen/$name]:-}")" "$(field p99_us "${lat[$gen/$name]:-}")"
        [ -z "${failed[$gen/$name]:-}" ] || echo "             (${failed[$gen/$name]} of $runs runs FAILED)"
    done
    for peer in mosquitto nats; do
        [ -n "${median[$gen/switchboard]:-}" ] && [ -n "${median[$gen/$peer]:-}" ] || continue
        awk -v s="${median[$gen/switchboard]}" -v m="${median[$gen/$peer]}" -v peer="$peer" \
            -v sc="${median_cpu[$gen/switchboard]}" -v mc="${median_cpu[$gen/$peer]}" \
            'BEGIN { if (m > 0) printf "switchboard/%s msgs/s: %.2f", peer, s / m;
                     if (sc > 0) printf "; broker CPU per message: 1/%.1f of %s'"'"'s", mc / sc, peer;
                     printf "\n" }'
        # The generator shares the machine's CPUs with the broker: even a
        # broker that cost nothing could not go faster than the CPUs the
        # generator leaves it.
        awk -v g="${median_gen[$gen/switchboard]}" -v m="${median[$gen/$peer]}" -v peer="$peer" \
            -v cpus="$(nproc)" \
            'BEGIN { if (g > 0 && m > 0) printf "  ceiling: the generator alone needs %.1f us CPU per message; on %d CPUs no broker can exceed %.0f msgs/s = %.2fx %s'"'"'s\n", g, cpus, cpus * 1e6 / g, cpus * 1e6 / g / m, peer }'
    done
    # The raw mechanism's CPU per message, against each broker's: what a
    # broker could at best be, and what that would be of Mosquitto's.
    if [ -n "${median_cpu[$gen/floor]:-}" ]; then
        for name in "${active[@]}"; do
            [ "$name" != floor ] && [ -n "${median_cpu[$gen/$name]:-}" ] || continue
            awk -v f="${median_cpu[$gen/floor]}" -v c="${median_cpu[$gen/$name]}" -v name="$name" \
                -v m="${median_cpu[$gen/mosquitto]:-}" \
                'BEGIN { if (f > 0) printf "floor: %.1f us CPU per message; %s %.2fx the floor", f, name, c / f;
                         if (f > 0 && m > 0 && name == "mosquitto") printf " (the floor is 1/%.1f of it)", m / f;
                         printf "\n" }'
        done
    fi
done
echo "(median of $runs runs by msgs/s, end to end: first PUBLISH to the last message received;"
echo " ack = PUBLISH->PUBACK/PUBCOMP; e2e = PUBLISH->delivery; cpu = broker CPU time per message,"
echo " gen = the generator's, medians of the runs; peak MB = broker's peak RSS so far;"
echo " 1x1 = one producer, window 1)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
