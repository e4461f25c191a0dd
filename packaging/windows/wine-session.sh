# Sourced by the Windows test scripts, with the prefix in $wine_prefix:
#     wine_prefix=DIR; . packaging/windows/wine-session.sh
# The environment every test run under Wine uses, and one persistent Wine
# session in that prefix for the whole run. Its background services get their own
# output (see wine-prefix.sh), and the session ends however the caller ends
# (an EXIT trap). Sets $wine and $wineserver.
WINEPREFIX=$wine_prefix
export WINEPREFIX
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winedbg.exe=d"
unset DISPLAY WAYLAND_DISPLAY
if command -v wineserver >/dev/null 2>&1; then wineserver=wineserver; else wineserver=/usr/lib/wine/wineserver; fi
if command -v wine >/dev/null 2>&1; then wine=wine; else wine=/usr/lib/wine/wine64; fi
"$wineserver" -p
trap '"$wineserver" -k 2>/dev/null || true' EXIT INT TERM
"$wine" cmd /c exit </dev/null >/dev/null 2>&1 || true
