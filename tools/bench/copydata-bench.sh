#!/bin/sh
# WM_COPYDATA through Switchboard versus a bare receiving window, under
# Wine, in one run.
#
#     tools/bench/copydata-bench.sh [BUILD_DIR]        (default build/mingw)
#
# Builds nothing: BUILD_DIR must hold a MinGW build with
# service/switchboard.exe, tests/win/copydata/cd_sender.exe (a legacy
# sender: SendMessage(WM_COPYDATA), one message after the other, each
# waiting for its return value) and tests/win/copydata/cd_receiver.exe (a
# legacy program's receiving window). Uses the Wine prefix $WINEPREFIX,
# else BUILD_DIR/wineprefix (made by packaging/windows/wine-prefix.sh if
# missing). Cases, each SB_BENCH_REPEAT times (default 3, interleaved so
# that load from other work on the machine hits them alike), reporting the
# median rate and the ratio through Switchboard / raw taken per round, as
# the median with its [min-max]:
#
#   raw      cd_sender sends to cd_receiver (a bare window that copies the
#            data and returns TRUE)
#   memory   cd_sender sends to the broker's copydata window (`switchboard
#            run`, in process), each answered TRUE after its commit, routed
#            to a queue of the memory class
#   fsync    the same, routed to a queue of the fsync class
#   agent    the same (memory class) with the adapter hosted by the session
#            agent (broker.desktop: agent): each message crosses the agent's
#            pipe to the broker and its puback comes back before TRUE
#
# Rates swing with other load on the machine; the CPU time per message is
# steadier: the sender's, the receiving side's (the bare window; the broker;
# the broker and its agent) and the wineserver's, which every call of a
# window message goes through, in microseconds (median of the rounds).
#
# Environment: SB_BENCH_REPEAT (3), SB_BENCH_COUNT (3000 messages per case),
# SB_BENCH_SIZE (100 bytes), SB_BENCH_KEEP=1 keeps the temp dir.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/mingw}
if [ ! -d "$build" ]; then
    echo "copydata-bench.sh: $build: no such build directory" >&2
    exit 2
fi
build=$(cd "$build" && pwd)
sb=$build/service/switchboard.exe
snd=$build/tests/win/copydata/cd_sender.exe
rcv=$build/tests/win/copydata/cd_receiver.exe
for f in "$sb" "$snd" "$rcv"; do
    if [ ! -f "$f" ]; then
        echo "copydata-bench.sh: $f is missing: build it first" >&2
        exit 2
    fi
done
REPEAT=${SB_BENCH_REPEAT:-3}
COUNT=${SB_BENCH_COUNT:-3000}
SIZE=${SB_BENCH_SIZE:-100}

. "$top/tools/bench/wine-env.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-cdbench.XXXXXX")
tag=SBB$$
pids=
cleanup() {
    rc=$?
    set +e
    for p in $pids; do kill "$p" 2>/dev/null; done
    "$wineserver" -k 2>/dev/null
    if [ "${SB_BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "copydata-bench.sh: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/inproc.yaml" <<EOF
broker:
  data_dir: '$(wpath "$tmp/data")'
  admin: { endpoint: 'off' }
adapters:
  - { name: cd-memory, type: copydata, class: ${tag}M, title: bench, topic: 'memory/{data}' }
  - { name: cd-fsync, type: copydata, class: ${tag}F, title: bench, topic: 'fsync/{data}' }
routes:
  - { name: q-memory, from: memory/#, durability: memory, max_depth: 10000, overflow: drop-oldest }
  - { name: q-fsync, from: fsync/#, durability: fsync, max_depth: 10000, overflow: drop-oldest }
EOF
cat >"$tmp/agent.yaml" <<EOF
broker:
  data_dir: '$(wpath "$tmp/data-agent")'
  admin: { endpoint: 'off' }
  desktop: agent
  agent: { endpoint: 'sbb-cd-$$-{session}' }
adapters:
  - { name: cd-agent, type: copydata, class: ${tag}A, title: bench, topic: 'agent/{data}' }
routes:
  - { name: q-agent, from: agent/#, durability: memory, max_depth: 10000, overflow: drop-oldest }
EOF

"$wineserver" -p 2>/dev/null || true
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

"$wine" "$rcv" "${tag}R" bench --message-only --quiet >"$tmp/receiver.out" 2>&1 </dev/null &
rcv_pid=$!
"$wine" "$sb" run --config "$(wpath "$tmp/inproc.yaml")" >"$tmp/broker.log" 2>&1 </dev/null &
sb_pid=$!
"$wine" "$sb" run --config "$(wpath "$tmp/agent.yaml")" >"$tmp/broker-agent.log" 2>&1 </dev/null &
sba_pid=$!
pids="$rcv_pid $sb_pid $sba_pid"
i=0
until grep -q ' ready: ' "$tmp/broker.log" 2>/dev/null && grep -q READY "$tmp/receiver.out" &&
    grep -q '\[cd-agent\] (agent of session .*receives WM_COPYDATA' "$tmp/broker-agent.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "copydata-bench.sh: not ready after 60 s:" >&2
        cat "$tmp/broker.log" "$tmp/broker-agent.log" "$tmp/receiver.out" >&2
        exit 1
    fi
    sleep 0.2
done

# The wineserver of this prefix and the session agent (started by the
# agent broker), for the CPU counts.
ws_pid=$(python3 - "$WINEPREFIX" <<'PY'
import os, sys
for p in os.listdir("/proc"):
    try:
        if "wineserver" not in open("/proc/%s/comm" % p).read():
            continue
        env = open("/proc/%s/environ" % p, "rb").read().split(b"\0")
        if ("WINEPREFIX=" + sys.argv[1]).encode() in env:
            print(p)
    except OSError:
        pass
PY
)
agent_pid=$(for p in /proc/[0-9]*; do {
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q 'switchboard.exe agent'; then
        if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "WINEPREFIX=$WINEPREFIX"; then
            echo "${p#/proc/}"
        fi
    fi
} 2>/dev/null; done | head -n 1)
if [ -z "$ws_pid" ] || [ -z "$agent_pid" ]; then
    echo "copydata-bench.sh: cannot find the wineserver ($ws_pid) or the agent ($agent_pid)" >&2
    exit 1
fi

# send CLASS PIDS...: runs the sender against the window of CLASS and
# prints "RATE CPU": messages whose SendMessage returned TRUE per second
# (a FALSE fails the benchmark), and the CPU microseconds per message of
# the sender, PIDS (the receiving side) and the wineserver.
cat >"$tmp/send.py" <<'PY'
import os, resource, subprocess, sys
out, count, argv, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3:10], sys.argv[10:]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    t = 0
    for p in pids:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    return t / tick
def kids():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
c0, k0 = cpu(), kids()
r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
c1, k1 = cpu(), kids()
text = r.stdout.decode(errors="replace")
open(out, "w").write("%s(exit code %d)\n" % (text, r.returncode))
rate = [l.split() for l in text.splitlines() if l.startswith("RATE ")]
if not rate or rate[-1][3] != "0":
    sys.exit(1)
print(rate[-1][1], "%.0f" % ((c1 - c0 + k1 - k0) * 1e6 / count))
PY
send() {
    cls=$1
    shift
    # once more if the sender did not run through (a loaded machine)
    if ! python3 "$tmp/send.py" "$tmp/out" "$COUNT" "$wine" "$snd" "$cls" bench bench "$COUNT" "$SIZE" "$ws_pid" "$@" &&
        ! python3 "$tmp/send.py" "$tmp/out" "$COUNT" "$wine" "$snd" "$cls" bench bench "$COUNT" "$SIZE" "$ws_pid" "$@"; then
        echo "copydata-bench.sh: the sender failed:" >&2
        cat "$tmp/out" >&2
        exit 1
    fi
}

echo "copydata-bench.sh: $REPEAT rounds, $COUNT messages of $SIZE bytes per case; in $tmp" >&2
: >"$tmp/results"
r=0
while [ $r -le "$REPEAT" ]; do
    # round 0 warms up and is not reported
    raw=$(send "${tag}R" "$rcv_pid")
    mem=$(send "${tag}M" "$sb_pid")
    fsy=$(send "${tag}F" "$sb_pid")
    agt=$(send "${tag}A" "$sba_pid" "$agent_pid")
    if [ -z "$raw" ] || [ -z "$mem" ] || [ -z "$fsy" ] || [ -z "$agt" ]; then
        exit 1 # send said why
    fi
    echo "round $r: (rate cpu-us) raw=$raw memory=$mem fsync=$fsy agent=$agt" >&2
    if [ $r -gt 0 ]; then
        echo "$raw $mem $fsy $agt" >>"$tmp/results"
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
def cpu_ratio(i):
    v = [r[1] / r[i + 1] * 100 for r in rows if r[i + 1] > 0]
    return "%3.0f%%" % statistics.median(v) if v else "-"
print("%-8s %12s %18s %14s %12s" % ("case", "messages/s", "rate of raw", "CPU us/msg", "raw CPU/it"))
for name, i in (("raw", 0), ("memory", 2), ("fsync", 4), ("agent", 6)):
    print("%-8s %12.0f %18s %14.0f %12s" % (name, med(i), "" if i == 0 else ratio(i), med(i + 1),
          "" if i == 0 else cpu_ratio(i)))
print("load average before: %s, after: %s" % (sys.argv[2], sys.argv[3]))
PY
