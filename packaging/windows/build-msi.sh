#!/bin/sh
# Builds the Switchboard MSI from a MinGW build tree with wixl:
#     packaging/windows/build-msi.sh [BUILD-DIR [VERSION [OUT.msi]]]
# Defaults: build/mingw, the project version from CMakeLists.txt, and
# BUILD-DIR/switchboard-VERSION-x64.msi. VERSION is the MSI ProductVersion
# (a.b.c, each part a number; a higher one upgrades a lower one).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build/mingw}
version=${2:-$(sed -n 's/^project(Switchboard VERSION \([0-9.]*\).*/\1/p' "$top/CMakeLists.txt")}
out=${3:-$build/switchboard-$version-x64.msi}

case "$version" in
[0-9]*.[0-9]*.[0-9]*) ;;
*) echo "build-msi.sh: version '$version' is not a.b.c" >&2; exit 2 ;;
esac
for f in service/switchboard.exe tools/sbctl/sbctl.exe tools/ring/sbring.exe; do
    [ -f "$build/$f" ] || { echo "build-msi.sh: $build/$f is missing (build the mingw preset first)" >&2; exit 1; }
done
command -v wixl >/dev/null 2>&1 || { echo "build-msi.sh: wixl is missing (packaging/windows/deps.sh installs it)" >&2; exit 1; }
build=$(cd "$build" && pwd)
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
# wixl refuses absolute Source paths: give them relative to /, from /.
cd /
wixl -a x64 -D "ProductVersion=$version" -D "BinDir=${build#/}" -D "SrcDir=${top#/}" \
    -o "$out" "$top/packaging/windows/switchboard.wxs"
echo "$out"
