#!/bin/bash
# Builds the static libraries Switchboard's Windows (x86_64, MinGW-w64) build
# links: SQLite, libyaml, OpenSSL 3.0, libuv, jansson, cmocka and Lua 5.4
# (route scripts), each from
# Debian 12's source package with Debian's patches applied. Run as root on
# Debian 12: it installs the cross compiler, Wine and the host tools when
# missing, and adds a deb-src entry mirroring debian.sources when apt has none.
#
# The result is a prefix outside the tree, one per set of source package
# versions (and RECIPE):
#     ${SB_WIN_DEPS:-/var/cache/switchboard/win-deps}/<key>
# with include/, lib/*.a and lib/pkgconfig/*.pc. Every .pc there lists the
# complete static link line in Libs, so plain `pkg-config --libs` (and CMake's
# pkg_check_modules) works with PKG_CONFIG_LIBDIR=<prefix>/lib/pkgconfig.
# A prefix is complete when its stamp file (.complete, written last) exists;
# a run that finds it does nothing. The prefix path is the only thing printed
# on stdout, progress goes to stderr:
#     export SB_WIN_DEPS_PREFIX=$(packaging/windows/deps.sh)
#     cmake --preset mingw
# Logs: <cache>/logs/<key>/. Environment: SB_WIN_DEPS (cache dir),
# SB_WIN_DEPS_JOBS (parallel jobs), SB_WIN_DEPS_KEEP=1 (keep the build dir).
set -Eeuo pipefail

# Bump when the build steps, options or packaging/mingw-w64-x86_64.cmake change
# in a way that changes the libraries: it is part of the cache key.
RECIPE=1

# Where the OpenSSL built here looks for openssl.cnf, engines and providers at
# run time: a fixed directory only administrators can write to (the default
# would resolve under C:\usr, which any user may create: CVE-2019-1552).
OSSL_DIR="C:/Program Files/Switchboard/ssl"
OSSL_ENGINES="C:/Program Files/Switchboard/ssl/engines-3"
OSSL_MODULES="C:/Program Files/Switchboard/ssl/ossl-modules"

# Name of each source package, in build order.
SRC_PACKAGES="sqlite3 libyaml openssl libuv1 jansson cmocka libmicrohttpd lua5.4"
# Debian packages needed to build and test; tclsh comes from tcl.
APT_PACKAGES="gcc-mingw-w64-x86-64 mingw-w64-tools binutils-mingw-w64-x86-64 \
  wine wine64 libwine-dev dpkg-dev tcl build-essential cmake ninja-build \
  pkg-config perl make xz-utils wixl msitools"
# Their versions are part of the key: a new compiler rebuilds the libraries.
TOOL_PACKAGES="gcc-mingw-w64-x86-64-win32 mingw-w64-x86-64-dev binutils-mingw-w64-x86-64"

MINGW=x86_64-w64-mingw32
CC_WIN="$MINGW-gcc-win32"

here=$(cd "$(dirname "$0")" && pwd)
toolchain="$here/../mingw-w64-x86_64.cmake"
cache="${SB_WIN_DEPS:-/var/cache/switchboard/win-deps}"
jobs="${SB_WIN_DEPS_JOBS:-$(nproc 2>/dev/null || echo 2)}"

say() { printf '%s\n' "$*" >&2; }
die() { say "deps.sh: error: $*"; exit 1; }

# --- 1. host packages and the deb-src entry ----------------------------------

missing_packages() {
    local p status
    for p in $APT_PACKAGES; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        case "$status" in *"install ok installed"*) ;; *) printf '%s ' "$p" ;; esac
    done
}

have_deb_src() {
    grep -Eqs '^[[:space:]]*Types:.*deb-src' /etc/apt/sources.list.d/*.sources ||
        grep -Eqs '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list
}

# Writes a deb-src twin of every deb entry: same URIs, suites, components and
# Signed-By.
add_deb_src() {
    local src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ]; then
        sed -E 's/^([[:space:]]*Types:).*/\1 deb-src/' "$src" \
            >/etc/apt/sources.list.d/debian-src.sources
        say "deps.sh: added /etc/apt/sources.list.d/debian-src.sources (deb-src of $src)"
    elif [ -f /etc/apt/sources.list ]; then
        sed -nE 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list \
            >/etc/apt/sources.list.d/debian-src.list
        say "deps.sh: added /etc/apt/sources.list.d/debian-src.list (deb-src of /etc/apt/sources.list)"
    else
        die "no deb-src entry and neither $src nor /etc/apt/sources.list to mirror"
    fi
}

missing=$(missing_packages)
src_added=0
if [ -n "$missing" ] || ! have_deb_src; then
    [ "$(id -u)" = 0 ] || die "run as root: missing packages: ${missing:-none}; deb-src entry: $(have_deb_src && echo present || echo missing)"
    if ! have_deb_src; then
        add_deb_src
        src_added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package lists are refreshed only when the sources changed or
    # something has to be installed (a stale list then 404s).
    if [ "$src_added" = 1 ] || [ -n "$missing" ]; then
        say "deps.sh: apt-get update"
        apt-get update -q >&2 || die "apt-get update failed"
    fi
    if [ -n "$missing" ]; then
        say "deps.sh: installing $missing"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing >&2 ||
            die "apt-get install $missing failed"
    fi
fi

# --- 2. the cache key --------------------------------------------------------

# The versions apt offers for a source package, newest first. Several when
# bookworm-security or -updates carry a newer one than bookworm.
src_versions() {
    apt-cache showsrc --only-source "$1" 2>/dev/null |
        sed -n 's/^Version: //p' | sort -u | sort_debian_versions
}

sort_debian_versions() {  # stdin -> stdout, newest first (insertion sort)
    local v sorted=() i j
    while read -r v; do
        sorted+=("$v")
        i=$((${#sorted[@]} - 1))
        while [ "$i" -gt 0 ] && dpkg --compare-versions "${sorted[$((i - 1))]}" lt "${sorted[$i]}"; do
            j=${sorted[$((i - 1))]}
            sorted[i - 1]=${sorted[$i]}
            sorted[i]=$j
            i=$((i - 1))
        done
    done
    [ "${#sorted[@]}" -eq 0 ] || printf '%s\n' "${sorted[@]}"
}

tool_versions() {
    # shellcheck disable=SC2086
    dpkg-query -W -f='${Package}=${Version}\n' $TOOL_PACKAGES
}

# manifest NAME=VERSION... -> the text the key is a hash of (also kept in the
# prefix as versions.txt).
manifest() {
    printf 'recipe=%s\n' "$RECIPE"
    printf '%s\n' "$@"
    tool_versions
}

key_of() {  # stdin: manifest
    printf 'r%s-%s' "$RECIPE" "$(sha256sum | cut -c1-12)"
}

declare -A want
cand=()
for p in $SRC_PACKAGES; do
    v=$(src_versions "$p" | sed -n 1p) # sed reads everything: no SIGPIPE under pipefail
    [ -n "$v" ] || die "apt-cache showsrc $p found no source package (is the deb-src entry right? try apt-get update)"
    want[$p]=$v
    cand+=("$p=$v")
done
cand_key=$(manifest "${cand[@]}" | key_of)

# A complete prefix for the key: the newest versions, or what a previous run
# fell back to when a newer one could not be downloaded (see the .alias file).
complete_prefix() {
    local k
    if [ -f "$cache/$cand_key/.complete" ]; then
        printf '%s\n' "$cache/$cand_key"
    elif [ -f "$cache/$cand_key.alias" ]; then
        k=$(cat "$cache/$cand_key.alias")
        [ -f "$cache/$k/.complete" ] || return 1
        say "deps.sh: note: $cache/$cand_key.alias: older source versions are in use: $(paste -sd ';' "$cache/$k/fallback.txt" 2>/dev/null)"
        say "deps.sh: delete that file to try the newest versions again"
        printf '%s\n' "$cache/$k"
    else
        return 1
    fi
}

if complete_prefix; then
    exit 0
fi

# --- 3. build ----------------------------------------------------------------

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
    say "deps.sh: another run holds $cache/.lock; waiting"
    flock 9
fi
# It may have built what we need while we waited.
if complete_prefix; then
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sb-win-deps.XXXXXX")
cleanup() {
    if [ "${SB_WIN_DEPS_KEEP:-0}" = 1 ]; then
        say "deps.sh: build dir kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
lib=setup
log="$work/setup.log"
progress_open=0   # 1 while a "[n/N] name ... " line waits for its end
trap 'say "deps.sh: error: $lib: command failed at line $LINENO (log: $log)"' ERR
chmod 755 "$work"   # apt-get source downloads as _apt when it can write here

# step WHAT COMMAND...: runs COMMAND with its output appended to $log; on
# failure names the library and the step and shows the end of the log.
step() {
    local what=$1 rc=0
    shift
    printf '\n===== %s: %s\n$ %s\n' "$lib" "$what" "$*" >>"$log"
    "$@" >>"$log" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        [ "$progress_open" = 0 ] || say "FAILED"
        say "deps.sh: error: $lib: '$what' failed (exit $rc); full log: $log"
        say "----- last 40 lines of $log -----"
        tail -n 40 "$log" >&2
        exit 1
    fi
}

in_dir() {  # in_dir DIR COMMAND...
    (cd "$1" && shift && "$@")
}

# Downloads and unpacks every source package, falling back to an older
# version when the newest cannot be had (bookworm-security may answer 404).
declare -A ver srcdir
actual=()
fallback=()
mkdir -p "$work/src" "$cache/logs"
log="$cache/logs/download.log"   # copied to the key's logs once the key is known
: >"$log"
for p in $SRC_PACKAGES; do
    got=
    for v in $(src_versions "$p"); do
        printf '\n===== apt-get source %s=%s\n' "$p" "$v" >>"$log"
        if in_dir "$work/src" apt-get source --download-only --only-source "$p=$v" >>"$log" 2>&1; then
            got=$v
            break
        fi
    done
    [ -n "$got" ] || { tail -n 20 "$log" >&2; die "$p: apt-get source failed for every version ($log)"; }
    if [ "$got" != "${want[$p]}" ]; then
        say "deps.sh: warning: $p ${want[$p]} could not be downloaded; using $got"
        fallback+=("$p ${want[$p]} -> $got")
    fi
    ver[$p]=$got
    actual+=("$p=$got")
done
key=$(manifest "${actual[@]}" | key_of)
prefix="$cache/$key"
logs="$cache/logs/$key"
if [ "$key" != "$cand_key" ]; then
    printf '%s\n' "$key" >"$cache/$cand_key.alias"
fi
if [ -f "$prefix/.complete" ]; then
    printf '%s\n' "$prefix"
    exit 0
fi

rm -rf "$prefix" "$logs"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include" "$logs"
cp "$cache/logs/download.log" "$logs/00-download.log"
say "deps.sh: building into $prefix"
say "deps.sh: logs in $logs"

for p in $SRC_PACKAGES; do
    lib=$p
    log="$logs/00-unpack.log"
    upstream=${ver[$p]#*:}
    step "dpkg-source -x" in_dir "$work/src" dpkg-source -x "${p}_${upstream}.dsc" "$p"
    srcdir[$p]="$work/src/$p"
done

# cmake_build NAME SRC [-DOPTION...]: configure, build and install a CMake
# project with the toolchain file.
cmake_build() {
    local src=$1 bld="$work/build/$lib"
    shift
    step "cmake configure" cmake -S "$src" -B "$bld" -G Ninja \
        -DCMAKE_TOOLCHAIN_FILE="$toolchain" -DSB_WIN_DEPS_PREFIX="$prefix" \
        -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_BUILD_TYPE=Release "$@"
    step "cmake build" cmake --build "$bld" -j "$jobs"
    step "cmake install" cmake --install "$bld"
}

# write_pc FILE NAME VERSION LIBS [CFLAGS]
write_pc() {
    cat >"$prefix/lib/pkgconfig/$1" <<EOF
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: $2
Description: $2 (static, for MinGW-w64; packaging/windows/deps.sh)
Version: $3
Libs: -L\${libdir} $4
Cflags: -I\${includedir}${5:+ $5}
EOF
}

# --- SQLite: amalgamation made natively, then cross-compiled ---
build_sqlite3() {
    local src=${srcdir[sqlite3]} bld="$work/build/sqlite3-native" v
    mkdir -p "$bld"
    step "configure (native, to make the amalgamation)" in_dir "$bld" "$src/configure" \
        --disable-tcl --disable-readline --disable-editline --disable-shared
    step "make sqlite3.c sqlite3.h" make -C "$bld" sqlite3.c sqlite3.h
    # One connection per thread is the broker's model, but THREADSAFE=1 keeps
    # a shared connection safe should that ever change.
    step "cross-compile sqlite3.c" "$CC_WIN" -O2 -c "$bld/sqlite3.c" -o "$bld/sqlite3.o" \
        -DSQLITE_THREADSAFE=1 -DSQLITE_DQS=0 -DSQLITE_DEFAULT_MEMSTATUS=0 \
        -DSQLITE_OMIT_DEPRECATED -DSQLITE_OMIT_SHARED_CACHE \
        -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_TEMP_STORE=2 \
        -DSQLITE_ENABLE_API_ARMOR -DSQLITE_WIN32_MALLOC
    step "archive" "$MINGW-ar" rcs "$prefix/lib/libsqlite3.a" "$bld/sqlite3.o"
    step "install headers" install -m 644 "$bld/sqlite3.h" "$src/src/sqlite3ext.h" "$prefix/include/"
    v=$(sed -n 's/^#define SQLITE_VERSION *"\(.*\)"/\1/p' "$bld/sqlite3.h")
    write_pc sqlite3.pc SQLite "$v" "-lsqlite3"
}

# --- libyaml: its CMake (the Debian tarball has no configure) ---
build_libyaml() {
    cmake_build "${srcdir[libyaml]}" -DBUILD_SHARED_LIBS=OFF -DBUILD_TESTING=OFF \
        -DINSTALL_CMAKE_DIR=lib/cmake/yaml
    # No yaml-0.1.pc is installed. YAML_DECLARE_STATIC: yaml.h would declare
    # dllimport otherwise (MSVC needs it; harmless for MinGW).
    write_pc yaml-0.1.pc LibYAML "${ver[libyaml]%%-*}" "-lyaml" "-DYAML_DECLARE_STATIC"
}

# --- OpenSSL 3.0: libraries and headers only ---
build_openssl() {
    local src=${srcdir[openssl]}
    local dirs=(OPENSSLDIR="$OSSL_DIR" ENGINESDIR="$OSSL_ENGINES" MODULESDIR="$OSSL_MODULES")
    # CC=gcc-win32 with the prefix gives the same win32-thread-model compiler
    # as the toolchain file.
    step "Configure" in_dir "$src" perl Configure mingw64 \
        --cross-compile-prefix="$MINGW-" CC=gcc-win32 \
        --prefix="$prefix" --libdir=lib no-shared no-module no-tests
    # The directories go on make's command line: --openssldir=C:/... would be
    # taken as relative to --prefix on a Linux host.
    step "make build_libs" make -C "$src" -j "$jobs" build_libs "${dirs[@]}"
    step "make install_dev" make -C "$src" install_dev "${dirs[@]}"
}

# --- libuv: static uv_a (the DLL target uv is always built too) ---
build_libuv1() {
    cmake_build "${srcdir[libuv1]}" -DBUILD_TESTING=OFF -DLIBUV_BUILD_TESTS=OFF \
        -DLIBUV_BUILD_BENCH=OFF
    # libuv.pc names the DLL's import library: make it libuv-static.pc (uv_a,
    # its system libraries, no USING_UV_SHARED), which pkg_check_modules(libuv)
    # then finds. The DLL stays: libuvConfig.cmake checks that it exists.
    cp "$prefix/lib/pkgconfig/libuv-static.pc" "$prefix/lib/pkgconfig/libuv.pc"
}

# --- jansson ---
build_jansson() {
    cmake_build "${srcdir[jansson]}" -DJANSSON_BUILD_DOCS=OFF -DJANSSON_WITHOUT_TESTS=ON \
        -DJANSSON_EXAMPLES=OFF -DJANSSON_BUILD_SHARED_LIBS=OFF \
        -DJANSSON_INSTALL_CMAKE_DIR:PATH=lib/cmake/jansson
}

# --- cmocka: the static library ---
build_cmocka() {
    cmake_build "${srcdir[cmocka]}" -DWITH_STATIC_LIB=ON -DWITH_EXAMPLES=OFF \
        -DUNIT_TESTING=OFF -DCMAKE_DISABLE_FIND_PACKAGE_Doxygen=ON
    # cmocka.pc names the DLL's import library and cmocka-config.cmake points
    # at a file that is not installed on MinGW: replace the one, drop the
    # other and the DLL, so nothing can pick them up by accident.
    write_pc cmocka.pc cmocka "${ver[cmocka]%%-*}" "-lcmocka-static"
    rm -rf "$prefix/lib/cmake/cmocka" "$prefix/lib/libcmocka.dll.a" "$prefix/bin/cmocka.dll"
}

# --- libmicrohttpd: the HTTP listener (/metrics, the status page); plain
# HTTP only (the broker documents a TLS reverse proxy in front), so no GnuTLS ---
build_libmicrohttpd() {
    local src=${srcdir[libmicrohttpd]} bld="$work/build/libmicrohttpd"
    mkdir -p "$bld"
    step "configure" in_dir "$bld" "$src/configure" --host="$MINGW" CC="$CC_WIN" \
        --prefix="$prefix" --enable-static --disable-shared --disable-https --disable-doc \
        --disable-examples --disable-curl --without-gnutls
    step "make" make -C "$bld" -j "$jobs"
    step "make install" make -C "$bld" install
}

# --- Lua 5.4 (route scripts): the library's sources, compiled and archived ---
# Debian's patches make its Makefile use libtool; the library is only the
# src/*.c but the interpreter and the compiler (lua.c, luac.c, onelua.c).
# luaconf.h picks LUA_USE_WINDOWS for _WIN32 itself.
build_lua5.4() {
    local src=${srcdir[lua5.4]}/src bld="$work/build/lua5.4" f
    mkdir -p "$bld"
    for f in "$src"/*.c; do
        case "${f##*/}" in lua.c | luac.c | onelua.c) continue ;; esac
        step "compile ${f##*/}" "$CC_WIN" -O2 -DLUA_COMPAT_5_3 -c "$f" -o "$bld/$(basename "$f" .c).o"
    done
    step "archive" "$MINGW-ar" rcs "$prefix/lib/liblua5.4.a" "$bld"/*.o
    step "install headers" install -m 644 "$src/lua.h" "$src/luaconf.h" "$src/lualib.h" \
        "$src/lauxlib.h" "$src/lua.hpp" "$prefix/include/"
    write_pc lua5.4.pc Lua "${ver[lua5.4]%%-*}" "-llua5.4"
}

# Static-only prefix: fold Libs.private into Libs and Requires.private into
# Requires, so that a plain `pkg-config --libs` gives a complete link line.
flatten_pc() {
    local f
    for f in "$prefix"/lib/pkgconfig/*.pc; do
        awk '
            /^Libs:/             { libs = substr($0, 6); next }
            /^Libs\.private:/    { libsp = substr($0, 15); next }
            /^Requires:/         { req = substr($0, 10); next }
            /^Requires\.private:/ { reqp = substr($0, 18); next }
            { print }
            END {
                if (req != "" && reqp != "") req = req ","
                if (req reqp != "") print "Requires:" req reqp
                print "Libs:" libs " " libsp
            }' "$f" | sed -E 's/[[:space:]]+$//; s/^(Libs|Requires): +/\1: /' >"$f.tmp"
        mv "$f.tmp" "$f"
    done
}

n=0
total=$(echo "$SRC_PACKAGES" | wc -w)
t_all=$SECONDS
for p in $SRC_PACKAGES; do
    n=$((n + 1))
    lib=$p
    log="$logs/$n-$p.log"
    : >"$log"
    printf '[%d/%d] %s %s ... ' "$n" "$total" "$p" "${ver[$p]}" >&2
    t=$SECONDS
    progress_open=1
    "build_$p"
    progress_open=0
    say "done ($((SECONDS - t)) s)"
done
lib=pkg-config
log="$logs/$((n + 1))-pkgconfig.log"
flatten_pc
for p in sqlite3 yaml-0.1 libcrypto libssl openssl libuv jansson cmocka libmicrohttpd lua5.4; do
    step "pkg-config --libs $p" env PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig" \
        PKG_CONFIG_PATH= pkg-config --libs --cflags "$p"
done

{
    manifest "${actual[@]}"
    printf 'openssldir=%s\n' "$OSSL_DIR"
} >"$prefix/versions.txt"
[ "${#fallback[@]}" -eq 0 ] || printf '%s\n' "${fallback[@]}" >"$prefix/fallback.txt"
date -u +%Y-%m-%dT%H:%M:%SZ >"$prefix/.complete"
say "deps.sh: done in $((SECONDS - t_all)) s: $prefix"
printf '%s\n' "$prefix"
