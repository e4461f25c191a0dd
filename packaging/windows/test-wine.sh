#!/bin/sh
# The Windows half of the test run: cross-builds the tree with MinGW-w64
# (dependencies from packaging/windows/deps.sh, cached outside the tree) and
# runs its test suite under Wine with ctest, in a Wine prefix of its own under
# build/mingw, then a native Linux client against the Windows broker
# (test-interop.py). The same test executables run unchanged on real Windows.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

SB_WIN_DEPS_PREFIX=$("$top/packaging/windows/deps.sh")
export SB_WIN_DEPS_PREFIX

echo "== mingw: build"
cmake --preset mingw >/dev/null
cmake --build --preset mingw

wine_prefix=$("$top/packaging/windows/wine-prefix.sh" "$top/build/mingw/wineprefix")
. "$top/packaging/windows/wine-session.sh"

echo "== mingw: tests under Wine"
# SB_TEST_REPEAT (test-all.sh --repeat N): each test up to N times.
ctest --preset mingw -j "$(nproc 2>/dev/null || echo 2)" --repeat "until-fail:${SB_TEST_REPEAT:-1}"

# A native Linux client (a plain Python socket) and the Windows client with
# the Windows broker, over TCP.
echo "== mingw: Linux client <-> Windows broker over TCP"
python3 "$top/packaging/windows/test-interop.py" "$top/build/mingw"

# COM clients under Wine (VBScript, C events) and Linux MQTT clients.
echo "== mingw: COM clients <-> Windows broker <-> Linux MQTT"
python3 "$top/packaging/windows/test-com-interop.py" "$top/build/mingw"

# The MSI: silent install, service RUNNING, sbctl on the PATH, a major
# upgrade that keeps configuration and data, uninstall (a prefix of its own).
# The suite's Wine session ends first: the MSI test copies its prefix.
echo "== mingw: the MSI under Wine"
"$wineserver" -k 2>/dev/null || true
"$wineserver" -w 2>/dev/null || true
"$top/packaging/windows/test-msi.sh" "$top/build/mingw"
