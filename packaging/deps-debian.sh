#!/bin/sh
# Installs what building and testing Switchboard on Debian 12 needs (as root).
# Idempotent: does nothing when everything is already installed.
set -eu

# Packages are installed without their Recommends, so everything a build or
# test uses is listed: libclang-rt-14-dev (clang's sanitizer runtimes, only
# recommended by clang) for the clang build with -fsanitize.
PACKAGES="build-essential clang libclang-rt-14-dev cmake ninja-build pkg-config git \
  ca-certificates libuv1-dev libsqlite3-dev sqlite3 libyaml-dev libjansson-dev libcmocka-dev \
  libssl-dev python3 python3-yaml python3-jsonschema mosquitto mosquitto-clients libmosquitto-dev openssl nats-server \
  liblua5.4-dev"
# The HTTP listener (/metrics, the status page) and its tests: promtool (in
# prometheus) checks the metrics, headless chromium renders the page.
PACKAGES="$PACKAGES libmicrohttpd-dev prometheus chromium"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "deps-debian.sh: missing packages:$missing" >&2
    echo "deps-debian.sh: run as root (or install them) and try again" >&2
    exit 1
fi
echo "Installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing

# The mosquitto and nats-server packages are here for the tests (the MQTT
# bridge's upstreams) and the side-by-side benchmarks, which start their own
# instances on free ports; a package may also enable a system broker, which
# this machine did not ask for. prometheus is here for promtool alone.
for svc in mosquitto nats-server prometheus; do
    case " $missing " in
    *" $svc "*)
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
            echo "deps-debian.sh: disabled the $svc system service (installed for tests only)"
        fi
        ;;
    esac
done
