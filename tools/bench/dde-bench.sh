#!/bin/sh
# DDE through Switchboard versus bare DDEML, under Wine, in one run.
#
#     tools/bench/dde-bench.sh [BUILD_DIR]        (default build/mingw)
#
# Builds nothing: BUILD_DIR must hold a MinGW build with
# service/switchboard.exe, tests/win/dde/plc_sim.exe (a legacy DDE server)
# and tests/win/dde/legacy_client.exe (a legacy DDE client). Uses the Wine
# prefix $WINEPREFIX, else BUILD_DIR/wineprefix (made by
# packaging/windows/wine-prefix.sh if missing). Cases, each
# SB_BENCH_REPEAT times (default 3, interleaved so that load from other
# work on the machine hits them alike), reporting the median rate, and the
# ratio through Switchboard / raw taken per round, as the median with its
# [min-max]:
#
#   poke     raw: legacy_client pokes (synchronous XTYP_POKE, CF_TEXT,
#                 waiting for each DDE_FACK) into plc_sim
#            memory / fsync: the same client pokes the broker's DDE server
#                 (role server), each acknowledged after its commit, routed
#                 to a queue of that durability class
#   advise   raw: plc_sim updates an item as fast as it can, legacy_client
#                 counts the hot link's XTYP_ADVDATA
#            memory / fsync: lines written to a raw TCP adapter (from
#                 Linux) are published to the item's topic, routed to a
#                 queue of that class, and served by the broker's DDE server
#                 to the same client's hot link (updates that arrive while
#                 the previous advise is in flight are coalesced, as a hot
#                 link shows the current value)
#
# The broker runs in the foreground (`switchboard run`), hosting the DDE
# adapter in process. The `agent` column is the memory class through a
# session agent: a second broker (`desktop: agent`) whose DDE server runs in
# `switchboard agent`, a process of its own connected over the agent pipe
# (docs/agent.md), so every poke's commit and every value cross it. Environment: SB_BENCH_REPEAT (3), SB_BENCH_POKES
# (3000), SB_BENCH_UPDATES (5000), SB_BENCH_KEEP=1 keeps the temp dir.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/mingw}
if [ ! -d "$build" ]; then
    echo "dde-bench.sh: $build: no such build directory" >&2
    exit 2
fi
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
plc=$build/tests/win/dde/plc_sim.exe
cli=$build/tests/win/dde/legacy_client.exe
for f in "$sb" "$plc" "$cli"; do
    if [ ! -f "$f" ]; then
        echo "dde-bench.sh: $f is missing: build it first" >&2
        exit 2
    fi
done
REPEAT=${SB_BENCH_REPEAT:-3}
POKES=${SB_BENCH_POKES:-3000}
UPDATES=${SB_BENCH_UPDATES:-5000}

. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-ddebench.XXXXXX")
tag=SBB$$
pids=
cleanup() {
    rc=$?
    set +e
    for p in $pids; do kill "$p" 2>/dev/null; done
    "$wineserver" -k 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "dde-bench.sh: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free TCP ports for the raw producers' listeners (memory, fsync).
set -- $(python3 -c 'import socket
a, b, c = socket.socket(), socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0)); c.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1], c.getsockname()[1])')
port=$1
port2=$2
port3=$3
cat >"$tmp/switchboard.yaml" <<EOF
broker:
  data_dir: '$(wpath "$tmp/data")'
  admin: { endpoint: 'off' }
adapters:
  - { name: dde-memory, type: dde, service: ${tag}M, topic: 'memory/{dde_topic}/{item}' }
  - { name: dde-fsync, type: dde, service: ${tag}F, topic: 'fsync/{dde_topic}/{item}' }
  - { name: raw-memory, type: tcp, listen: '127.0.0.1:$port', framing: line, topic: memory/Line1/Counter }
  - { name: raw-fsync, type: tcp, listen: '127.0.0.1:$port2', framing: line, topic: fsync/Line1/Counter }
routes:
  - { name: q-memory, from: memory/#, durability: memory, max_depth: 10000, overflow: drop-oldest }
  - { name: q-fsync, from: fsync/#, durability: fsync, max_depth: 10000, overflow: drop-oldest }
EOF
cat >"$tmp/agent.yaml" <<EOF
broker:
  data_dir: '$(wpath "$tmp/data-agent")'
  admin: { endpoint: 'off' }
  desktop: agent
  agent: { start: false, endpoint: 'sbb-agent-$tag-{session}' }
adapters:
  - { name: dde-agent, type: dde, service: ${tag}G, topic: 'agent/{dde_topic}/{item}' }
  - { name: raw-agent, type: tcp, listen: '127.0.0.1:$port3', framing: line, topic: agent/Line1/Counter }
routes:
  - { name: q-agent, from: agent/#, durability: memory, max_depth: 10000, overflow: drop-oldest }
EOF

"$wineserver" -p 2>/dev/null || true
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# The bare servers: one for pokes, one flooding its hot link.
"$wine" "$plc" "${tag}P" --quiet --interval 0 >"$tmp/plc-poke.out" 2>&1 </dev/null &
pids="$pids $!"
"$wine" "$sb" run --config "$(wpath "$tmp/switchboard.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
pids="$pids $!"
"$wine" "$sb" run --config "$(wpath "$tmp/agent.yaml")" >"$tmp/broker-agent.log" 2>&1 </dev/null &
pids="$pids $!"
until grep -q ' ready: ' "$tmp/broker-agent.log" 2>/dev/null; do sleep 0.2; done
"$wine" "$sb" agent --endpoint "sbb-agent-$tag-1" >"$tmp/agent.out" 2>&1 </dev/null &
pids="$pids $!"
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null && grep -q READY "$tmp/plc-poke.out" &&
    grep -q "DDE server ${tag}G" "$tmp/broker-agent.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "dde-bench.sh: not ready after 60 s:" >&2
        cat "$tmp/broker.log" "$tmp/plc-poke.out" "$tmp/broker-agent.log" "$tmp/agent.out" >&2
        exit 1
    fi
    sleep 0.2
done

rate_of() { sed -n 's/^RATE \([0-9]*\) .*/\1/p' "$1" | tail -n 1; }

# poke SERVICE: prints the rate.
poke() {
    "$wine" "$cli" "$1" Line1 bench-poke Value "$POKES" >"$tmp/out" 2>&1 </dev/null || true
    rate_of "$tmp/out"
}

# advise_raw: a fresh flooding plc_sim per run.
advise_raw() {
    "$wine" "$plc" "${tag}A$r" --quiet --interval 0 --flood $((UPDATES * 3)) >"$tmp/plc-flood.out" 2>&1 </dev/null &
    fp=$!
    until grep -q READY "$tmp/plc-flood.out" 2>/dev/null; do sleep 0.05; done
    "$wine" "$cli" "${tag}A$r" Line1 bench-advise Counter "$UPDATES" >"$tmp/out" 2>&1 </dev/null || true
    kill "$fp" 2>/dev/null
    wait "$fp" 2>/dev/null || true
    rate_of "$tmp/out"
}

# advise_broker CLASS PORT ADAPTER [LOG]: lines into the raw adapter until the
# client is done; then waits until the broker has read what was in flight
# (the adapter logs the disconnect after the last byte), so that the next
# case does not share the machine with this one's tail.
advise_broker() {
    log=${4:-$tmp/broker.log}
    closed=$(grep -c "\[$3\] peer .* disconnected" "$log" || true)
    "$wine" "$cli" "${tag}$1" Line1 bench-advise Counter "$UPDATES" >"$tmp/out" 2>&1 </dev/null &
    cp=$!
    until grep -q LINKED "$tmp/out" 2>/dev/null; do sleep 0.05; done
    python3 - "$2" "$cp" <<'PY' &
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
s.connect(("127.0.0.1", int(sys.argv[1])))
pid, n = int(sys.argv[2]), 0
while True:
    s.sendall("".join("%d\n" % (n + k) for k in range(50)).encode())
    n += 50
    try:
        os.kill(pid, 0)
    except OSError:
        break
s.close()
PY
    wp=$!
    wait "$cp" 2>/dev/null || true
    wait "$wp" 2>/dev/null || true
    until [ "$(grep -c "\[$3\] peer .* disconnected" "$log" || true)" -gt "$closed" ]; do
        sleep 0.1
    done
    rate_of "$tmp/out"
}

echo "dde-bench.sh: $REPEAT rounds, $POKES pokes and $UPDATES updates per case; in $tmp" >&2
: >"$tmp/results"
r=0
while [ $r -le "$REPEAT" ]; do
    # round 0 warms up and is not reported
    pr=$(poke "${tag}P")
    pm=$(poke "${tag}M")
    pf=$(poke "${tag}F")
    ar=$(advise_raw)
    am=$(advise_broker M "$port" raw-memory)
    af=$(advise_broker F "$port2" raw-fsync)
    pa=$(poke "${tag}G")
    aa=$(advise_broker G "$port3" raw-agent "$tmp/broker-agent.log")
    echo "round $r: poke raw=$pr memory=$pm fsync=$pf agent=$pa;" \
        "advise raw=$ar memory=$am fsync=$af agent=$aa" >&2
    if [ $r -gt 0 ]; then
        echo "$pr $pm $pf $pa $ar $am $af $aa" >>"$tmp/results"
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
print("%-8s %9s %9s %9s %9s   %-15s %-15s %-15s" % (
    "case", "raw /s", "memory /s", "fsync /s", "agent /s", "memory/raw", "fsync/raw",
    "agent/raw"))
for name, base in (("poke", 0), ("advise", 4)):
    print("%-8s %9.0f %9.0f %9.0f %9.0f   %-15s %-15s %-15s" % (
        name, med(base), med(base + 1), med(base + 2), med(base + 3), ratio(base + 1, base),
        ratio(base + 2, base), ratio(base + 3, base)))
print("load average before: %s, after: %s" % (sys.argv[2], sys.argv[3]))
PY
