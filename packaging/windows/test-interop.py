#!/usr/bin/env python3
"""Interoperability over TCP: a native Linux client and the Windows broker.

Runs switchboard.exe from a MinGW build under Wine with a jsonl TCP adapter
and a durable route, then, over 127.0.0.1:
  - this native Linux client (a plain socket, below) publishes, and the
    Windows client (sbctl.exe under Wine) receives it;
  - sbctl.exe publishes, and the native client subscribes, receives and
    acknowledges it; the broker's stats agree, and so do its Prometheus
    metrics, fetched over HTTP from Linux (broker.http) and checked with
    promtool, and its status page;
  - MS-RPC (when mosquitto_sub/mosquitto_pub are installed): a Windows
    program calling the broker's RPC interface (rpc_client.exe) publishes
    and Linux's mosquitto_sub receives it over MQTT; mosquitto_pub
    publishes and the RPC program pulls and acknowledges it;
  - DDE (when mosquitto_sub/mosquitto_pub are installed): a legacy DDE
    server (plc_sim.exe) -> the broker's DDE client role -> Linux's
    mosquitto_sub over MQTT, and Linux's mosquitto_pub -> the broker's DDE
    server role -> a legacy DDE client's request (legacy_client.exe), with
    non-ASCII text through code page 1252 both ways.
Every wait polls with a deadline; nothing sleeps a fixed time. Called by
packaging/windows/test-wine.sh inside its Wine session (WINEPREFIX etc. set,
`wineserver -p` running):
    test-interop.py BUILD_DIR
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import winerun

DEADLINE_S = 30


def fail(msg, log=None):
    if log is not None and os.path.exists(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            sys.stderr.write("----- broker log -----\n" + f.read() + "----- end -----\n")
    sys.exit("test-interop: FAIL: " + msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def winepath(path):
    """The Windows name of a Unix path (a new prefix maps / to Z:)."""
    tool = shutil.which("winepath")
    if tool is None:
        return "Z:" + path.replace("/", "\\")
    out = subprocess.run([tool, "-w", path], check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Client:
    """A minimal jsonl client: one JSON object per line."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.next_id = 0

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, **req):
        self.next_id += 1
        req["id"] = self.next_id
        self.send(req)
        while True:
            r = self.read()
            if r.get("id") == self.next_id:
                return r

    def close(self):
        self.sock.close()


def wait_for(path, needle, proc, what, log=None):
    """Polls the file until it holds needle; fails if proc exits first."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if needle in f.read():
                    return
        if proc.poll() is not None:
            fail("%s exited with %d" % (what, proc.returncode), log)
        if time.monotonic() > deadline:
            fail("%s: no %r in %s within %d s" % (what, needle, path, DEADLINE_S), log)
        time.sleep(0.05)


def dde(build, wine, tmp):
    """Legacy DDE programs under Wine and Linux MQTT clients, through the
    Windows broker's DDE adapters."""
    plc_exe = os.path.join(build, "tests", "win", "dde", "plc_sim.exe")
    cli_exe = os.path.join(build, "tests", "win", "dde", "legacy_client.exe")
    msub, mpub = shutil.which("mosquitto_sub"), shutil.which("mosquitto_pub")
    if msub is None or mpub is None or not os.path.exists(plc_exe):
        print("test-interop: DDE <-> MQTT skipped (needs mosquitto_sub, mosquitto_pub and "
              "tests/win/dde/plc_sim.exe)")
        return
    tag = "SBI%d" % os.getpid()
    log = os.path.join(tmp, "dde-broker.log")
    plc_out = os.path.join(tmp, "plc.out")
    jport, mport = free_port(), free_port()
    cfg = os.path.join(tmp, "dde.yaml")
    with open(cfg, "w") as f:
        f.write("broker:\n"
                "  data_dir: '%s'\n"
                "  admin: { endpoint: 'off' }\n"
                "adapters:\n"
                "  - { name: clients, type: tcp, listen: '127.0.0.1:%d', protocol: jsonl }\n"
                "  - { name: mqtt, type: tcp, listen: '127.0.0.1:%d', protocol: mqtt }\n"
                "  - name: plc\n"
                "    type: dde\n"
                "    role: client\n"
                "    service: %sP\n"
                "    dde_topic: Line1\n"
                "    items: [Temp, Status, Counter]\n"
                "    topic: plant/{dde_topic}/{item}\n"
                "    codepage: 1252\n"
                "  - name: excel\n"
                "    type: dde\n"
                "    service: %sX\n"
                "    topic: plant/{dde_topic}/{item}\n"
                "    codepage: 1252\n"
                "routes:\n"
                "  - { name: values, from: plant/+/+, retain: true, max_depth: 1, "
                "overflow: drop-oldest }\n"
                % (winepath(os.path.join(tmp, "dde-data")), jport, mport, tag, tag))
    plc = subprocess.Popen([wine, plc_exe, tag + "P", "--interval", "100"],
                           stdin=subprocess.DEVNULL, stdout=open(plc_out, "wb"),
                           stderr=subprocess.STDOUT)
    broker = None
    try:
        wait_for(plc_out, b"READY", plc, "plc_sim.exe")
        broker = subprocess.Popen([wine, os.path.join(build, "service", "switchboard.exe"),
                                   "run", "--config", winepath(cfg)],
                                  stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                  stderr=subprocess.STDOUT)
        wait_for(log, b"[plc] linked to", broker, "the broker", log)
        # The legacy server's values on Linux: retained Status, live Counter.
        out = subprocess.run([msub, "-h", "127.0.0.1", "-p", str(mport), "-t",
                              "plant/Line1/Status", "-C", "1", "-W", str(DEADLINE_S)],
                             capture_output=True, timeout=DEADLINE_S + 10)
        if out.returncode != 0 or out.stdout != "Gr\u00fc\u00dfe aus K\u00f6ln\n".encode():
            fail("mosquitto_sub plant/Line1/Status: exit %d, stdout %r, stderr %r" %
                 (out.returncode, out.stdout, out.stderr), log)
        out = subprocess.run([msub, "-h", "127.0.0.1", "-p", str(mport), "-t",
                              "plant/Line1/Counter", "-C", "3", "-W", str(DEADLINE_S)],
                             capture_output=True, timeout=DEADLINE_S + 10)
        values = out.stdout.split()
        if out.returncode != 0 or len(values) != 3 or not all(v.isdigit() for v in values):
            fail("mosquitto_sub plant/Line1/Counter: exit %d, stdout %r" %
                 (out.returncode, out.stdout), log)
        # A Linux MQTT value in a legacy DDE client: =<tag>X|Line1!Target.
        out = subprocess.run([mpub, "-h", "127.0.0.1", "-p", str(mport), "-t",
                              "plant/Line1/Target", "-m", "Gr\u00fc\u00dfe", "-r", "-q", "1"],
                             capture_output=True, timeout=DEADLINE_S)
        if out.returncode != 0:
            fail("mosquitto_pub: exit %d, stderr %r" % (out.returncode, out.stderr), log)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            out = winerun.run([wine, cli_exe, tag + "X", "Line1", "request", "Target"], 60)
            if b"DATA 4772fcdf65" in out.stdout:  # CF_TEXT, code page 1252
                break
            if time.monotonic() > deadline:
                fail("legacy_client request Target: %r" % out.stdout, log)
            time.sleep(0.05)
        print("test-interop: OK (legacy DDE server -> Windows broker -> mosquitto_sub; "
              "mosquitto_pub -> Windows broker -> legacy DDE client)")
    finally:
        for p in (broker, plc):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=DEADLINE_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def rpc(build, wine, tmp):
    """A Windows program on the broker's MS-RPC interface and Linux MQTT
    clients, through the Windows broker."""
    client = os.path.join(build, "tests", "win", "rpc", "rpc_client.exe")
    msub, mpub = shutil.which("mosquitto_sub"), shutil.which("mosquitto_pub")
    if msub is None or mpub is None or not os.path.exists(client):
        print("test-interop: RPC <-> MQTT skipped (needs mosquitto_sub, mosquitto_pub and "
              "tests/win/rpc/rpc_client.exe)")
        return
    endpoint = "sbi-rpc-%d" % os.getpid()
    log = os.path.join(tmp, "rpc-broker.log")
    mport = free_port()
    cfg = os.path.join(tmp, "rpc.yaml")
    with open(cfg, "w") as f:
        f.write("broker:\n"
                "  data_dir: '%s'\n"
                "  admin: { endpoint: 'off' }\n"
                "adapters:\n"
                "  - { name: rpc, type: rpc, endpoint: '%s' }\n"
                "  - { name: mqtt, type: tcp, listen: '127.0.0.1:%d', protocol: mqtt }\n"
                "routes:\n"
                "  - { name: fromlinux, from: linux/# }\n"
                % (winepath(os.path.join(tmp, "rpc-data")), endpoint, mport))
    broker = subprocess.Popen([wine, os.path.join(build, "service", "switchboard.exe"), "run",
                               "--config", winepath(cfg)],
                              stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT)
    sub = None
    try:
        wait_for(log, b"ready:", broker, "the broker", log)
        # Windows (RPC) -> Linux (MQTT): publish until the subscriber, which
        # may still be subscribing, has one.
        sub = subprocess.Popen([msub, "-h", "127.0.0.1", "-p", str(mport), "-t", "rpc/#", "-v",
                                "-C", "1", "-W", str(DEADLINE_S)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + DEADLINE_S
        while sub.poll() is None:
            out = winerun.run([wine, client, endpoint, "pub", "rpc/windows", "from RPC \u00e9"],
                              60)
            if out.returncode != 0:
                fail("rpc_client pub: exit %d, %r" % (out.returncode, out.stdout), log)
            if time.monotonic() > deadline:
                fail("mosquitto_sub received nothing", log)
            try:
                sub.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        got = sub.stdout.read()
        if sub.returncode != 0 or got != "rpc/windows from RPC \u00e9\n".encode():
            fail("mosquitto_sub: exit %d, stdout %r, stderr %r" %
                 (sub.returncode, got, sub.stderr.read()), log)
        # Linux (MQTT) -> Windows (RPC pull and ack).
        out = subprocess.run([mpub, "-h", "127.0.0.1", "-p", str(mport), "-q", "1", "-t",
                              "linux/x", "-m", "from Linux \u00e9"],
                             capture_output=True, timeout=DEADLINE_S)
        if out.returncode != 0:
            fail("mosquitto_pub: exit %d, stderr %r" % (out.returncode, out.stderr), log)
        out = winerun.run([wine, client, endpoint, "pull", "fromlinux", "-", "1"], 60)
        if out.returncode != 0 or \
                " 1 linux/x from Linux \u00e9\n".encode() not in out.stdout or \
                b"done" not in out.stdout:
            fail("rpc_client pull: exit %d, stdout %r" % (out.returncode, out.stdout), log)
        print("test-interop: OK (RPC program under Wine -> Windows broker -> mosquitto_sub; "
              "mosquitto_pub -> Windows broker -> RPC pull)")
    finally:
        for p in (sub, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=DEADLINE_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def http(port, tmp, log):
    """The Windows broker's metrics and status page, read from Linux."""
    base = "http://127.0.0.1:%d" % port
    # no proxy for loopback, whatever the environment says
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base + "/metrics", timeout=DEADLINE_S) as r:
        metrics = r.read()
    if b'switchboard_route_acked_total{kind="route",route="interop"} 2\n' not in metrics:
        fail("/metrics of the Windows broker lacks the acks:\n" + metrics.decode(), log)
    promtool = shutil.which("promtool")
    if promtool is None:
        fail("promtool is missing: install prometheus (packaging/deps-debian.sh)")
    out = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True,
                         timeout=60)
    if out.returncode != 0:
        fail("promtool check metrics: %r %r" % (out.stdout, out.stderr), log)
    with opener.open(base + "/", timeout=DEADLINE_S) as r:
        if b"<title>Switchboard</title>" not in r.read():
            fail("the status page of the Windows broker", log)
    try:
        opener.open(base + "/%2e%2e/", timeout=DEADLINE_S)
        fail("/%2e%2e/ was served", log)
    except urllib.error.HTTPError as e:
        if e.code != 400:
            fail("/%%2e%%2e/: HTTP %d" % e.code, log)
    print("test-interop: OK (Linux reads /metrics and the status page of the Windows broker "
          "over http://127.0.0.1:%d; promtool agrees)" % port)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: test-interop.py BUILD_DIR")
    build = os.path.abspath(sys.argv[1])
    wine = shutil.which("wine") or "/usr/lib/wine/wine64"
    exe = os.path.join(build, "service", "switchboard.exe")
    sbctl = os.path.join(build, "tools", "sbctl", "sbctl.exe")
    for f in (exe, sbctl):
        if not os.path.exists(f):
            fail(f + " is missing")

    tmp = tempfile.mkdtemp(prefix="sb-interop-")
    log = os.path.join(tmp, "broker.log")
    port, hport = free_port(), free_port()
    cfg = os.path.join(tmp, "switchboard.yaml")
    with open(cfg, "w") as f:
        f.write("broker:\n"
                "  data_dir: '%s'\n"
                "  admin: { endpoint: 'off' }\n"
                "  http: { listen: 127.0.0.1:%d }\n"
                "adapters:\n"
                "  - name: clients\n"
                "    type: tcp\n"
                "    listen: 127.0.0.1:%d\n"
                "    protocol: jsonl\n"
                "routes:\n"
                "  - name: interop\n"
                "    from: interop/#\n"
                "    durability: fsync\n" % (winepath(os.path.join(tmp, "data")), hport, port))
    broker = subprocess.Popen([wine, exe, "run", "--config", winepath(cfg)],
                              stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT)
    ok = False
    try:
        # Ready: the broker accepts a connection and answers ping.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if broker.poll() is not None:
                fail("the broker exited with %d during startup" % broker.returncode, log)
            try:
                c = Client(port, 2)
                if c.call(op="ping").get("op") == "pong":
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail("the broker did not answer ping within %d s" % DEADLINE_S, log)
            time.sleep(0.05)

        # Linux publishes, Windows receives.
        r = c.call(op="pub", topic="interop/linux", payload="from Linux \u00e9")
        if r.get("op") != "puback" or r.get("queues") != 1:
            fail("publish from Linux: %r" % r, log)
        out = winerun.run([wine, sbctl, "-e", "tcp:127.0.0.1:%d" % port, "sub", "interop",
                           "--count", "1", "--timeout", "20s"], 60)
        if out.returncode != 0 or out.stdout != "interop/linux\tfrom Linux \u00e9\n".encode():
            fail("sbctl.exe sub: exit %d, stdout %r, stderr %r" %
                 (out.returncode, out.stdout, out.stderr), log)

        # Windows publishes, Linux receives and acknowledges.
        out = winerun.run([wine, sbctl, "-e", "tcp:127.0.0.1:%d" % port, "pub",
                           "interop/windows", "from Windows"], 60)
        if out.returncode != 0:
            fail("sbctl.exe pub: exit %d, stderr %r" % (out.returncode, out.stderr), log)
        r = c.call(op="sub", sub="interop", window=10)
        if r.get("op") != "subscribed":
            fail("subscribe from Linux: %r" % r, log)
        m = c.read()
        if m.get("op") != "msg" or m.get("topic") != "interop/windows" or \
                m.get("payload") != "from Windows":
            fail("delivery to Linux: %r" % m, log)
        c.send({"op": "ack", "sub": "interop", "msg_id": m["msg_id"]})

        # Both acknowledgements reached the broker.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            st = c.call(op="stats")
            q = [q for q in st.get("queues", []) if q.get("name") == "interop"]
            if q and q[0].get("depth") == 0 and q[0].get("acked") == 2:
                break
            if time.monotonic() > deadline:
                fail("queue interop after the acks: %r" % q, log)
            time.sleep(0.05)
        c.close()
        print("test-interop: OK (Linux <-> Windows broker <-> Windows sbctl over "
              "tcp:127.0.0.1:%d)" % port)
        http(hport, tmp, log)
        dde(build, wine, tmp)
        rpc(build, wine, tmp)
        ok = True
    finally:
        # Linux cannot set the broker's stop event; this ends the process as
        # TerminateProcess would (the store is crash-safe).
        broker.terminate()
        try:
            broker.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            sys.stderr.write("test-interop: files kept in %s\n" % tmp)


if __name__ == "__main__":
    main()
