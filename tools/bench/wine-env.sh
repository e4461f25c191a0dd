# Sourced by the Windows benchmarks (run under Wine): the Wine session they
# share. Needs $top (the repository) and $build (the MinGW build directory).
# Uses $WINEPREFIX if set, else $build/wineprefix (made by
# packaging/windows/wine-prefix.sh); sets $wine and $wineserver, and wpath.
if [ -z "${WINEPREFIX:-}" ]; then
    WINEPREFIX=$("$top/packaging/windows/wine-prefix.sh" "$build/wineprefix")
fi
export WINEPREFIX
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winedbg.exe=d"
unset DISPLAY WAYLAND_DISPLAY
if command -v wineserver >/dev/null 2>&1; then wineserver=wineserver; else wineserver=/usr/lib/wine/wineserver; fi
if command -v wine >/dev/null 2>&1; then wine=wine; else wine=/usr/lib/wine/wine64; fi

# A Windows path for a Unix one (Wine's Z: drive is /).
wpath() { printf 'Z:%s' "$1" | tr / '\\'; }
