#!/usr/bin/env python3
"""COM clients under Wine and MQTT clients on Linux, through the Windows broker.

Runs switchboard.exe from a MinGW build under Wine with an MQTT TCP listener
and a `type: com` adapter, registers Switchboard.Broker (with an endpoint of
its own; unregistered at the end), and checks, over 127.0.0.1:
  - VBScript publishes (tests/win/com/pub.vbs through `wine cscript`) and
    Linux's mosquitto_sub receives, from a persistent MQTT session;
  - Linux's mosquitto_pub publishes and VBScript takes it with Wait
    (tests/win/com/pull.vbs);
  - Linux's mosquitto_pub publishes and a C client gets it as an OnMessage
    event (tests/win/com/com_client.exe events).
Every wait polls with a deadline; nothing sleeps a fixed time. Skipped when
mosquitto_sub/mosquitto_pub are missing. Called by
packaging/windows/test-wine.sh inside its Wine session:
    test-com-interop.py BUILD_DIR
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import winerun

DEADLINE_S = 60
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg, log=None):
    if log is not None:
        # the relay's own log (SB_COM_LOG, set in main) sits beside the broker's
        for name, path in (("broker log", log),
                           ("relay log", os.path.join(os.path.dirname(log), "relay.log"))):
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    sys.stderr.write("----- %s -----\n%s----- end -----\n" % (name, f.read()))
    sys.exit("test-com-interop: FAIL: " + msg)


def run_script(wine, args, log):
    """Runs a script under cscript; a hang fails with what it printed."""
    try:
        return winerun.run([wine, "cscript", "//nologo"] + args, DEADLINE_S * 2)
    except subprocess.TimeoutExpired as e:
        fail("%s did not exit within %d s; stdout %r, stderr %r"
             % (args[0], DEADLINE_S * 2, e.stdout, e.stderr), log)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def winepath(path):
    tool = shutil.which("winepath")
    if tool is None:
        return "Z:" + path.replace("/", "\\")
    out = subprocess.run([tool, "-w", path], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def wait_for(path, needle, proc, what, log=None):
    """Polls the file until it holds needle; fails if proc exits first."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if needle in f.read():
                    return
        if proc is not None and proc.poll() is not None:
            fail("%s exited with %d" % (what, proc.returncode), log)
        if time.monotonic() > deadline:
            fail("%s: no %r in %s within %d s" % (what, needle, path, DEADLINE_S), log)
        time.sleep(0.05)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: test-com-interop.py BUILD_DIR")
    build = os.path.abspath(sys.argv[1])
    wine = shutil.which("wine") or "/usr/lib/wine/wine64"
    exe = os.path.join(build, "service", "switchboard.exe")
    client = os.path.join(build, "tests", "win", "com", "com_client.exe")
    msub, mpub = shutil.which("mosquitto_sub"), shutil.which("mosquitto_pub")
    if msub is None or mpub is None:
        print("test-com-interop: skipped (needs mosquitto_sub and mosquitto_pub)")
        return
    for f in (exe, client):
        if not os.path.exists(f):
            fail(f + " is missing")
    tmp = tempfile.mkdtemp(prefix="sb-cominterop-")
    log = os.path.join(tmp, "broker.log")
    os.environ["SB_COM_LOG"] = winepath(os.path.join(tmp, "relay.log"))
    endpoint = "sbi-com-%d" % os.getpid()
    port, mport = free_port(), free_port()
    cfg = os.path.join(tmp, "switchboard.yaml")
    with open(cfg, "w") as f:
        f.write("broker:\n"
                "  data_dir: '%s'\n"
                "  admin: { endpoint: 'off' }\n"
                "adapters:\n"
                "  - { name: clients, type: tcp, listen: '127.0.0.1:%d', protocol: jsonl }\n"
                "  - { name: mqtt, type: tcp, listen: '127.0.0.1:%d', protocol: mqtt }\n"
                "  - { name: com, type: com, endpoint: '%s' }\n"
                "routes:\n"
                "  - { name: from-linux, from: linux/# }\n"
                % (winepath(os.path.join(tmp, "data")), port, mport, endpoint))
    reg = winerun.run([wine, exe, "com", "register", "--endpoint", endpoint], DEADLINE_S)
    if reg.returncode != 0:
        fail("com register: %r %r" % (reg.stdout, reg.stderr))
    broker = events = None
    ok = False
    try:
        broker = subprocess.Popen([wine, exe, "run", "--config", winepath(cfg)],
                                  stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                  stderr=subprocess.STDOUT)
        wait_for(log, b" ready: ", broker, "the broker", log)
        mqtt = ["-h", "127.0.0.1", "-p", str(mport)]

        # VBScript -> Linux MQTT: a persistent session first (clean session
        # off, QoS 1), so that what VBScript publishes waits for it.
        out = subprocess.run([msub] + mqtt + ["-i", "sbi-linux", "-c", "-q", "1", "-t", "vbs/#",
                                              "-E"], capture_output=True, timeout=DEADLINE_S)
        if out.returncode != 0:
            fail("mosquitto_sub -E: exit %d, %r" % (out.returncode, out.stderr), log)
        out = run_script(wine, [winepath(os.path.join(SRC, "tests", "win", "com", "pub.vbs")),
                                "vbs/orders", "from VBScript", "2"], log)
        if out.returncode != 0 or out.stdout.count(b"ID ") != 3:
            fail("pub.vbs: exit %d, stdout %r" % (out.returncode, out.stdout), log)
        out = subprocess.run([msub] + mqtt + ["-i", "sbi-linux", "-c", "-q", "1", "-t", "vbs/#",
                                              "-C", "3", "-W", str(DEADLINE_S)],
                             capture_output=True, timeout=DEADLINE_S + 10)
        lines = out.stdout.decode("utf-8", "replace").splitlines()
        if out.returncode != 0 or lines != ["from VBScript", "from VBScript",
                                            "from VBScript (dictionary)"]:
            fail("mosquitto_sub vbs/#: exit %d, stdout %r" % (out.returncode, out.stdout), log)

        # Linux MQTT -> VBScript Wait/Pull.
        out = subprocess.run([mpub] + mqtt + ["-t", "linux/vbs", "-m", "from Linux", "-q", "1"],
                             capture_output=True, timeout=DEADLINE_S)
        if out.returncode != 0:
            fail("mosquitto_pub: exit %d, %r" % (out.returncode, out.stderr), log)
        out = run_script(wine, [winepath(os.path.join(SRC, "tests", "win", "com", "pull.vbs")),
                                "from-linux", "1", "20000"], log)
        if out.returncode != 0 or b"MSG linux/vbs from Linux " not in out.stdout:
            fail("pull.vbs: exit %d, stdout %r" % (out.returncode, out.stdout), log)

        # Linux MQTT -> a C client's OnMessage event.
        ev_out = os.path.join(tmp, "events.out")
        events = subprocess.Popen([wine, client, "events", "linux-events", "linux/event/#", "1",
                                   "ok"], stdin=subprocess.DEVNULL, stdout=open(ev_out, "wb"),
                                  stderr=subprocess.STDOUT)
        wait_for(ev_out, b"ADVISED", events, "com_client events", log)
        out = subprocess.run([mpub] + mqtt + ["-t", "linux/event/1", "-m", "event from Linux",
                                              "-q", "1"], capture_output=True, timeout=DEADLINE_S)
        if out.returncode != 0:
            fail("mosquitto_pub: exit %d, %r" % (out.returncode, out.stderr), log)
        wait_for(ev_out, b"HANDLED 1", events, "com_client events", log)
        with open(ev_out, "rb") as f:
            if b"EVENT linux/event/1 event from Linux " not in f.read():
                fail("com_client events: no event from Linux", log)
        events.wait(timeout=DEADLINE_S)
        events = None
        print("test-com-interop: OK (VBScript -> Windows broker -> mosquitto_sub; "
              "mosquitto_pub -> Windows broker -> VBScript Wait and C OnMessage)")
        ok = True
    finally:
        for p in (events, broker):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=DEADLINE_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        winerun.run([wine, exe, "com", "unregister"], DEADLINE_S)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            sys.stderr.write("test-com-interop: files kept in %s\n" % tmp)


if __name__ == "__main__":
    main()
