#!/bin/sh
# Creates, or reuses, a Wine prefix for running Switchboard's Windows tests:
# `wineboot -i`, then the null graphics driver (DDE and hidden top-level
# windows need a driver; tests never have an X display), then `wineserver -k`
# so that the driver applies from the next session on. A prefix is ready when
# its stamp file .sb-prefix-ready exists; a run that finds it does nothing.
# Prints the prefix's absolute path on stdout:
#     WINEPREFIX=$(packaging/windows/wine-prefix.sh build/mingw/wineprefix)
# Needs wine and wine64 (packaging/windows/deps.sh installs them).
#
# Before ctest, start the session with its own output going nowhere:
#     wineserver -p; wine64 cmd /c exit </dev/null >/dev/null 2>&1
# The first Wine process of a session starts services.exe and friends, which
# inherit its stdout; under ctest that is a test's pipe, held open by a
# persistent (-p) server, so that test hangs until its timeout.
# End with `wineserver -k`.
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PREFIX-DIR" >&2
    exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
stamp="$prefix/.sb-prefix-ready"
if [ -f "$stamp" ]; then
    printf '%s\n' "$prefix"
    exit 0
fi
# Never run wineboot over a directory that holds something else.
if [ -n "$(ls -A "$prefix")" ] && [ ! -f "$prefix/system.reg" ]; then
    echo "wine-prefix.sh: error: $prefix is neither empty nor a Wine prefix" >&2
    exit 1
fi

# Debian's wrappers when installed (package wine), else the 64-bit binaries.
if command -v wine >/dev/null 2>&1; then wine=wine; else wine=/usr/lib/wine/wine64; fi
if command -v wineserver >/dev/null 2>&1; then wineserver=wineserver; else wineserver=/usr/lib/wine/wineserver; fi

export WINEPREFIX="$prefix"
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winedbg.exe=d"
unset DISPLAY WAYLAND_DISPLAY

fail() {
    echo "wine-prefix.sh: error: $1 failed for $prefix" >&2
    "$wineserver" -k 2>/dev/null || true
    exit 1
}

"$wine" wineboot -i >/dev/null 2>&1 || fail "wineboot -i"
"$wine" reg add 'HKCU\Software\Wine\Drivers' /v Graphics /d null /f >/dev/null 2>&1 ||
    fail "reg add HKCU\\Software\\Wine\\Drivers Graphics=null"
# Ends this prefix's server (and with it the services wineboot started); the
# registry is written to disk on the way out.
"$wineserver" -k 2>/dev/null || true
"$wineserver" -w 2>/dev/null || true
grep -q '"Graphics"="null"' "$prefix/user.reg" || fail "saving the Graphics=null setting"

"$wine" --version >"$stamp" 2>/dev/null || echo unknown >"$stamp"
printf '%s\n' "$prefix"
