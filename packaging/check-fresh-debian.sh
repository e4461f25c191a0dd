#!/bin/sh
# Checks the README's two quick-start commands from zero, as a newcomer's
# machine runs them: builds a minimal Debian 12 root (debootstrap
# --variant=minbase bookworm, from the Debian mirror this machine's apt
# uses), copies the committed tree into it (git clone of HEAD), and runs as
# root in a chroot, with /proc, /sys and /dev mounted:
#   1. ./packaging/quickstart.sh  until the broker is ready, then the sbctl
#      commands it suggests (pub, sub, stats), then stops it;
#   2. ./packaging/test-all.sh    to the end.
# Everything is installed and built from nothing (the Windows dependencies
# too), so it takes a long time (most of an hour on two cores): it is not
# part of CI. Run it as root on Debian:
#     packaging/check-fresh-debian.sh [WORKDIR]      (default /var/tmp/sb-fresh-debian)
# The root is WORKDIR/root (made anew each run) and each step's output goes
# to WORKDIR/*.log. Mounts are undone on exit, however the run ends.
# Environment: SB_FRESH_MIRROR (a Debian mirror URI; default: this
# machine's), SB_FRESH_SKIP_TESTS=1 (stop after the quick start).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/var/tmp/sb-fresh-debian}
root="$work/root"
suite=bookworm

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'check-fresh-debian.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
command -v git >/dev/null 2>&1 || die "git is needed to copy the committed tree"

# The first deb URI this machine uses for $suite (deb822 .sources, then
# one-line .list entries).
host_mirror() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (deb && uri != "" && has_suite) { print uri; found = 1; exit }
                deb = 0; uri = ""; has_suite = 0
            }
            /^[[:space:]]*$/ { flush(); next }
            /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            END { if (!found) flush() }' "$f"
    done | head -n 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' "$f"
    done | head -n 1
}

mirror=${SB_FRESH_MIRROR:-$(host_mirror | head -n 1)}
[ -n "$mirror" ] || die "no Debian mirror for $suite in /etc/apt/sources.list*; set SB_FRESH_MIRROR"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

mounted=""
cleanup() {
    # Undo the mounts in reverse order; lazily if something still holds them.
    for m in $mounted; do
        umount -R "$m" 2>/dev/null || umount -l -R "$m" 2>/dev/null || true
    done
    mounted=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_in() { # TYPE-or-bind SOURCE TARGET
    mkdir -p "$3"
    if [ "$1" = bind ]; then
        mount --rbind "$2" "$3"
        # what is unmounted in the root must not be unmounted here
        mount --make-rslave "$3"
    else
        mount -t "$1" "$2" "$3"
    fi
    mounted="$3 $mounted"
}

mkdir -p "$work"
if [ -d "$root" ]; then
    say "removing the previous root $root"
    if grep -q " $root/" /proc/mounts; then die "$root still has mounts; umount them first"; fi
    rm -rf "$root"
fi

say "debootstrap --variant=minbase $suite from $mirror (log: $work/debootstrap.log)"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $work/debootstrap.log"

# The same apt sources as this machine (updates and security included), so
# the root gets the versions this machine would.
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1 || [ -s /etc/apt/sources.list ]; then
    copied=0
    : >"$root/etc/apt/sources.list"
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # only binary entries: deb-src ones are deps.sh's to add, as on a
        # newcomer's machine
        grep -Eq '^[[:space:]]*(Types:([[:space:]]+deb-src)*[[:space:]]+deb([[:space:]]|$)|deb[[:space:]])' "$f" ||
            continue
        cp "$f" "$root/etc/apt/sources.list.d/"
        copied=1
    done
    if [ -s /etc/apt/sources.list ]; then
        cp /etc/apt/sources.list "$root/etc/apt/sources.list"
        copied=1
    fi
    [ "$copied" = 1 ] || echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

say "copying the committed tree (git clone of HEAD) to /root/switchboard"
git clone -q --no-hardlinks "$top" "$root/root/switchboard"

mount_in proc proc "$root/proc"
mount_in sysfs sysfs "$root/sys"
mount_in bind /dev "$root/dev"
mount_in tmpfs tmpfs "$root/dev/shm"

in_root() { # COMMAND... : run in the chroot as root, with a clean environment
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# --- 1. the quick start -------------------------------------------------------

say "1/2: ./packaging/quickstart.sh (log: $work/quickstart.log)"
# Not through in_root: $! must be the process that becomes the broker.
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c 'cd /root/switchboard && exec ./packaging/quickstart.sh' \
    >"$work/quickstart.log" 2>&1 </dev/null &
qs=$!
deadline=$(($(date +%s) + 3600))
while ! grep -q ' ready: ' "$work/quickstart.log" 2>/dev/null; do
    if ! kill -0 "$qs" 2>/dev/null; then
        wait "$qs" || true
        tail -n 40 "$work/quickstart.log" >&2
        die "quickstart.sh ended before the broker was ready; see $work/quickstart.log"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { kill "$qs"; die "quickstart.sh: no broker within an hour"; }
    sleep 5
done
say "the broker is ready; the commands quickstart.sh suggests:"
sbctl=/root/switchboard/build/release/tools/sbctl/sbctl
ok=1
in_root sh -c "cd /root/switchboard && $sbctl -e tcp:127.0.0.1:7878 pub lines/demo hello &&
    $sbctl -e tcp:127.0.0.1:7878 sub lines-to-audit --count 1 --timeout 10s &&
    $sbctl stats" >"$work/quickstart-try.log" 2>&1 || ok=0
cat "$work/quickstart-try.log" >&2
# quickstart.sh exec'ed the broker: stop it as Ctrl-C would. It is the
# process started above (chroot execs env, which execs sh, which execs
# quickstart.sh, which execs the broker): the same process id.
kill -INT "$qs" 2>/dev/null || true
wait "$qs" || true
[ "$ok" = 1 ] || die "the quick start's sbctl commands failed; see $work/quickstart-try.log"
say "1/2: quickstart.sh: OK"

if [ "${SB_FRESH_SKIP_TESTS:-}" = 1 ]; then
    say "SB_FRESH_SKIP_TESTS=1: not running test-all.sh"
    exit 0
fi

# --- 2. every test ------------------------------------------------------------

say "2/2: ./packaging/test-all.sh (log: $work/test-all.log)"
if in_root sh -c 'cd /root/switchboard && exec ./packaging/test-all.sh' \
    >"$work/test-all.log" 2>&1 </dev/null; then
    say "2/2: test-all.sh: OK"
else
    tail -n 60 "$work/test-all.log" >&2
    die "test-all.sh failed in the fresh root; see $work/test-all.log"
fi
say "both quick-start commands work on a minimal Debian 12"
