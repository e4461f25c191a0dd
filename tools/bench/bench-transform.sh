#!/bin/sh
# What route transforms cost: starts a broker on a fresh data directory
# with four routes that differ only in their transform (none, a topic
# rewrite, a JSON envelope, a small Lua function) and runs transformbench
# against it (see
# tools/bench/transformbench.c). Prints messages/s and the broker's CPU per
# message for each, and the ratios to no transform.
#
#   tools/bench/bench-transform.sh [BUILD_DIR] [transformbench options]
#
# BUILD_DIR defaults to build/release (build/dev has the sanitizers: its
# absolute figures mean little, its ratios still something).
set -eu
build=${1:-build/release}
[ $# -gt 0 ] && shift
sw=$build/service/switchboard
tb=$build/tools/bench/transformbench
for f in "$sw" "$tb"; do
    [ -x "$f" ] || { echo "bench-transform: $f not built" >&2; exit 2; }
done
dir=$(mktemp -d /tmp/sb-bench-transform-XXXXXX)
port=$(( 20000 + $$ % 20000 ))
cat > "$dir/bench.yaml" <<YAML
broker:
  data_dir: $dir/data
  admin: { endpoint: 'off' }
  log: { level: warn }
adapters:
  - name: clients
    type: tcp
    listen: 127.0.0.1:$port
    protocol: jsonl
routes:
  - name: tb-none
    from: tb/none/+
    durability: memory
  - name: tb-topic
    from: tb/topic/+
    durability: memory
    transform:
      - topic: "out/{1}/rewritten"
  - name: tb-env
    from: tb/env/+
    durability: memory
    transform:
      - wrap: envelope
  - name: tb-lua
    from: tb/lua/+
    durability: memory
    transform:
      - lua: bench.lua
YAML
# The small Lua function: what the topic rewrite does, and a header.
cat > "$dir/bench.lua" <<'LUA'
function transform(msg)
  msg.topic = 'out/' .. msg.topic:match('[^/]+$') .. '/rewritten'
  msg.headers.via = 'lua'
  return msg
end
LUA
"$sw" run --config "$dir/bench.yaml" 2> "$dir/broker.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
# ready when it accepts a connection (deadline 10 s)
i=0
until "$tb" -e tcp:127.0.0.1:$port -n 1 --rounds 1 > /dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "bench-transform: the broker did not start:" >&2; cat "$dir/broker.log" >&2; exit 1; }
    sleep 0.1
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$tb" -e tcp:127.0.0.1:$port --pid $pid "$@"
