#!/bin/sh
# Makes v1-golden.db: the store of a broker with schema version 1 (commit
# d105b97 and earlier), produced the way a user's store is, by running that
# broker and real clients against it (sbctl for jsonl, mosquitto_pub and
# mosquitto_sub for MQTT). The schema migration tests open a copy of it.
#
#   make-v1-golden.sh BUILD OUT.db
#
# BUILD is a build directory of the old commit (service/switchboard and
# tools/sbctl/sbctl in it), e.g.
#   git worktree add /tmp/sb-v1 d105b97
#   cmake -S /tmp/sb-v1 -B /tmp/sb-v1/build -G Ninja
#   cmake --build /tmp/sb-v1/build --target switchboard sbctl
#   tests/data/storage/make-v1-golden.sh /tmp/sb-v1/build tests/data/storage/v1-golden.db
#
# What the database holds is listed in README; tests/unit/storage and
# tests/integration/test_migrate.c check each item, so keep them in step.
# The routes and adapters below are those of test_migrate.c's config.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD OUT.db" >&2
    exit 2
fi
BUILD=$1
OUT=$2
SB=$BUILD/service/switchboard
SBCTL=$BUILD/tools/sbctl/sbctl
for p in "$SB" "$SBCTL"; do
    [ -x "$p" ] || { echo "$0: $p is not built" >&2; exit 1; }
done
for p in mosquitto_pub mosquitto_sub sqlite3 python3; do
    command -v "$p" >/dev/null || { echo "$0: $p is not installed" >&2; exit 1; }
done

DIR=$(mktemp -d)
BROKER=
cleanup() {
    if [ -n "$BROKER" ]; then
        kill "$BROKER" 2>/dev/null || true
        wait "$BROKER" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
JSONL=$(free_port)
MQTT=$(free_port)
CLOSED=$(free_port) # nothing listens there: plant-out's messages stay queued

"$SBCTL" passwd -c -b "$DIR/passwd" alice alice-secret >/dev/null

cat >"$DIR/golden.yaml" <<EOF
broker:
  data_dir: '$DIR/data'
  admin: { endpoint: '$DIR/admin.sock' }
  auth: { password_file: '$DIR/passwd' }
adapters:
  - name: clients
    type: tcp
    listen: 127.0.0.1:$JSONL
    protocol: jsonl
  - name: mqtt
    type: tcp
    listen: 127.0.0.1:$MQTT
    protocol: mqtt
    session_expiry: 30d
  - name: plant-out
    type: tcp
    connect: 127.0.0.1:$CLOSED
    protocol: raw
    framing: line
routes:
  - name: orders
    from: [orders/#, invoices/+/paid]
    retain: true
    dedup: { header: order-id, window: 365d }
  - name: to-plant
    from: plant/#
    to: plant-out
  - name: audit
    from: audit/#
    retry: { max_attempts: 1 }
EOF

"$SB" run --config "$DIR/golden.yaml" --log-level warn 2>"$DIR/broker.log" &
BROKER=$!
tries=0
until "$SBCTL" -e "tcp:127.0.0.1:$JSONL" ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ $tries -gt 100 ]; then
        cat "$DIR/broker.log" >&2
        echo "$0: the broker did not start" >&2
        exit 1
    fi
    sleep 0.1
done
E="-e tcp:127.0.0.1:$JSONL"
MQ="-h 127.0.0.1 -p $MQTT"

# A jsonl client's durable subscription, created and left: messages wait.
"$SBCTL" $E sub watch --filter 'sensors/+/temp' --max-attempts 5 --timeout 100ms >/dev/null

# An MQTT persistent session owned by alice, subscribed in three CONNECTs
# at QoS 0, 1 and 2, and an anonymous one (no owner) at QoS 1.
mosquitto_sub $MQ -i golden-alice -c -u alice -P alice-secret -q 0 -t 'sensors/+/temp' -E
mosquitto_sub $MQ -i golden-alice -c -u alice -P alice-secret -q 1 -t 'orders/#' -E
mosquitto_sub $MQ -i golden-alice -c -u alice -P alice-secret -q 2 -t 'alerts/#' -E
mosquitto_sub $MQ -i golden-anon -c -q 1 -t 'plant/#' -E

# Messages, published while every subscriber is away.
"$SBCTL" $E pub orders/eu 'order 1' -H order-id=1 -H content-type=text/plain >/dev/null
"$SBCTL" $E pub invoices/7/paid 'invoice 7 paid' >/dev/null
"$SBCTL" $E pub sensors/boiler/temp '81.5' >/dev/null
mosquitto_pub $MQ -i golden-pub -q 2 -t alerts/boiler -m 'overheat'
mosquitto_pub $MQ -i golden-pub -q 1 -t plant/line1 -m 'start'
mosquitto_pub $MQ -i golden-pub -q 1 -r -t status/boiler -m 'on'
"$SBCTL" $E pub audit/login 'alice logged in' >/dev/null

# A dead letter: audit allows one attempt, which a jsonl consumer spends
# with a nack (sbctl has no nack: a few lines of Python speak jsonl).
python3 - "$JSONL" <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rw")
def send(o):
    f.write(json.dumps(o) + "\n")
    f.flush()
send({"op": "sub", "id": 1, "sub": "audit", "window": 1})
while True:
    m = json.loads(f.readline())
    if m.get("op") == "error":
        sys.exit("sub audit: " + m.get("message", str(m)))
    if m.get("op") == "msg":
        break
send({"op": "nack", "id": 2, "sub": "audit", "msg_id": m["msg_id"], "reason": "golden: cannot parse"})
while json.loads(f.readline()).get("id") != 2:
    pass
PY

kill -TERM "$BROKER"
wait "$BROKER" || { cat "$DIR/broker.log" >&2; exit 1; }
BROKER=
[ ! -e "$DIR/data/switchboard.db-wal" ] || { echo "$0: the WAL was left behind" >&2; exit 1; }
sqlite3 "$DIR/data/switchboard.db" VACUUM
cp "$DIR/data/switchboard.db" "$OUT"
echo "wrote $OUT ($(wc -c <"$OUT") bytes)"
