#!/bin/sh
# The MSI under Wine, as an administrator would use it: builds the package
# twice from one MinGW build tree (two ProductVersions), then, in a copy of
# the test Wine prefix:
#   msiexec /i (silent) -> the service is RUNNING, sbctl (on the PATH) reads
#   stats over the admin pipe -> a major upgrade to the second version keeps
#   the configuration and the data, and the service runs again -> msiexec /x
#   removes the service, the program files and the PATH entry, and keeps
#   %ProgramData%\Switchboard.
# Run by test-wine.sh after the test suite:
#     packaging/windows/test-msi.sh [BUILD-DIR]
# Under Wine the service runs as LocalSystem (no virtual accounts, WINE.md).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$top/build/mingw}" && pwd)
work="$build/msi-test"
rm -rf "$work"
mkdir -p "$work"

"$top/packaging/windows/build-msi.sh" "$build" 0.1.1 "$work/switchboard-old.msi" >/dev/null
"$top/packaging/windows/build-msi.sh" "$build" 0.1.2 "$work/switchboard-new.msi" >/dev/null

# A copy of the suite's prepared prefix: installing touches HKLM and
# Program Files, which the other tests must not see.
src_prefix=$("$top/packaging/windows/wine-prefix.sh" "$build/wineprefix")
cp -a "$src_prefix" "$work/prefix"
wine_prefix="$work/prefix"
. "$top/packaging/windows/wine-session.sh"

progdir="$WINEPREFIX/drive_c/Program Files/Switchboard"
datadir="$WINEPREFIX/drive_c/ProgramData/Switchboard"
winexe='C:\Program Files\Switchboard\switchboard.exe'
env_key='HKLM\System\CurrentControlSet\Control\Session Manager\Environment'

fail() {
    echo "test-msi: FAILED: $*" >&2
    for f in "$work"/*.log "$datadir/switchboard.log"; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        # msiexec writes UTF-16 logs (with a byte order mark)
        if [ "$(head -c 2 "$f" | od -An -tx1 | tr -d ' ')" = fffe ]; then
            iconv -f UTF-16 -t UTF-8 "$f" | tail -n 40 >&2
        else
            tail -n 40 "$f" >&2
        fi
    done
    exit 1
}
step() { echo "test-msi: $*"; }

msiexec() { # ACTION MSI LOG
    "$wine" msiexec "$1" "$(winepath_of "$2")" /qn /l*v "$(winepath_of "$3")" </dev/null >/dev/null 2>&1
}
winepath_of() { printf 'Z:%s' "$1" | tr / '\\'; }

# Polls `switchboard service status` (exit 0 only when RUNNING), 30 s at most.
wait_running() {
    i=0
    while ! "$wine" "$winexe" service status </dev/null >"$work/status.txt" 2>&1; do
        i=$((i + 1))
        [ $i -lt 150 ] || fail "the service is not RUNNING after 30 s: $(cat "$work/status.txt")"
        sleep 0.2
    done
}

path_has_switchboard() {
    "$wine" reg query "$env_key" /v Path </dev/null 2>/dev/null | grep -qi 'Program Files\\Switchboard'
}

sbctl_stats() {
    # By name, through the PATH the install changed (a new process reads it).
    "$wine" cmd /c sbctl stats </dev/null >"$work/stats.txt" 2>&1 ||
        fail "sbctl stats: $(cat "$work/stats.txt")"
    grep -q '^broker: version' "$work/stats.txt" || fail "sbctl stats printed: $(cat "$work/stats.txt")"
}

product_code() {
    msiinfo export "$1" Property | tr -d '\r' | sed -n 's/^ProductCode\t//p'
}
# `service configure` / `unconfigure` (the MSI's steps) register and
# unregister Switchboard.Broker, its LocalServer32 in the install folder.
com_registered() {
    "$wine" reg query 'HKLM\Software\Classes\CLSID\{53486367-1DBA-44FC-83B7-0ABE209BB49F}\LocalServer32' \
        </dev/null 2>/dev/null | grep -qi 'Program Files\\Switchboard\\switchboard.exe'
}
uninstall_key='HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall'

step "install $(basename "$work/switchboard-old.msi")"
msiexec /i "$work/switchboard-old.msi" "$work/install.log" || fail "msiexec /i exited with $?"
[ -f "$progdir/switchboard.exe" ] && [ -f "$progdir/sbctl.exe" ] || fail "program files missing"
[ -f "$progdir/docs/README.md" ] && [ -f "$progdir/examples/full.yaml" ] || fail "docs or examples missing"
[ -f "$progdir/switchboard.schema.json" ] || fail "switchboard.schema.json missing (examples name it)"
[ -f "$progdir/rpc/switchboard.idl" ] && [ -f "$progdir/rpc/switchboard_h.h" ] || fail "the RPC interface files are missing"
[ -f "$progdir/sbring.exe" ] && [ -f "$progdir/include/sb_ring.h" ] && [ -f "$progdir/docs/ring.md" ] ||
    fail "sbring.exe, include\\sb_ring.h or docs\\ring.md missing"
[ -f "$datadir/switchboard.yaml" ] || fail "no starter configuration in ProgramData"
wait_running
path_has_switchboard || fail "the install folder is not on the system PATH"
sbctl_stats
com_registered || fail "Switchboard.Broker is not registered for COM"
"$wine" reg query 'HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\Switchboard' \
    /v EventMessageFile </dev/null >/dev/null 2>&1 || fail "no Event Log source"
[ -f "$datadir/switchboard.db" ] || fail "the service created no database in ProgramData"

# The administrator's edits and the data must survive the upgrade.
printf '# edited by the administrator\n' >>"$datadir/switchboard.yaml"
old_code=$(product_code "$work/switchboard-old.msi")
new_code=$(product_code "$work/switchboard-new.msi")
[ -n "$old_code" ] && [ "$old_code" != "$new_code" ] || fail "product codes '$old_code' '$new_code'"

step "upgrade to $(basename "$work/switchboard-new.msi")"
msiexec /i "$work/switchboard-new.msi" "$work/upgrade.log" || fail "msiexec /i (upgrade) exited with $?"
wait_running
"$wine" reg query "$uninstall_key\\$old_code" </dev/null >/dev/null 2>&1 &&
    fail "the old version is still registered after the upgrade"
"$wine" reg query "$uninstall_key\\$new_code" </dev/null >/dev/null 2>&1 ||
    fail "the new version is not registered"
grep -q '^# edited by the administrator' "$datadir/switchboard.yaml" ||
    fail "the upgrade replaced the configuration"
[ -f "$datadir/switchboard.db" ] || fail "the upgrade lost the database"
sbctl_stats
com_registered || fail "Switchboard.Broker is not registered after the upgrade"

step "uninstall"
msiexec /x "$work/switchboard-new.msi" "$work/uninstall.log" || fail "msiexec /x exited with $?"
if "$wine" sc query Switchboard </dev/null >"$work/sc.txt" 2>&1; then
    fail "the service is still installed: $(cat "$work/sc.txt")"
fi
[ ! -e "$progdir/switchboard.exe" ] || fail "switchboard.exe is still installed"
path_has_switchboard && fail "the install folder is still on the PATH"
com_registered && fail "Switchboard.Broker is still registered"
grep -q '^# edited by the administrator' "$datadir/switchboard.yaml" ||
    fail "the uninstall removed the configuration"
[ -f "$datadir/switchboard.db" ] || fail "the uninstall removed the data"
step "OK (install, upgrade and uninstall; configuration and data kept)"
