#!/bin/sh
# Runs every test: installs what is missing, then
#  1. the Linux build with gcc, AddressSanitizer and UndefinedBehaviorSanitizer:
#     unit, integration and crash tests (ctest);
#  2. the Linux build with clang (-Werror) and its unit tests, and the
#     optimized release build the quick start runs (-O2 warns about more);
#  3. the Windows build (MinGW-w64 cross-compiler, dependencies cross-built
#     from Debian's source packages and cached outside the tree) and its tests
#     under Wine (packaging/windows/test-wine.sh).
# Exits non-zero on the first failure.
#
#   packaging/test-all.sh [--repeat N]
# --repeat N runs every test program up to N times, stopping at its first
# failure (ctest --repeat until-fail:N): the check for flaky tests before a
# release (see README, "Before a release").
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

SB_TEST_REPEAT=${SB_TEST_REPEAT:-1}
while [ $# -gt 0 ]; do
    case "$1" in
    --repeat)
        [ $# -ge 2 ] || { echo "test-all.sh: --repeat needs a count" >&2; exit 2; }
        SB_TEST_REPEAT=$2
        shift 2
        ;;
    *)
        echo "usage: test-all.sh [--repeat N]" >&2
        exit 2
        ;;
    esac
done
case "$SB_TEST_REPEAT" in
'' | *[!0-9]* | 0) echo "test-all.sh: --repeat needs a positive count, not '$SB_TEST_REPEAT'" >&2; exit 2 ;;
esac
export SB_TEST_REPEAT
"$top/packaging/deps-debian.sh"

jobs=$(nproc 2>/dev/null || echo 2)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "== gcc + ASan/UBSan: build"
cmake --preset dev >/dev/null
cmake --build --preset dev
echo "== gcc + ASan/UBSan: tests"
ctest --preset dev -j "$jobs" --repeat "until-fail:$SB_TEST_REPEAT"

echo "== clang: build"
cmake --preset clang >/dev/null
cmake --build --preset clang
echo "== clang: unit tests"
ctest --test-dir build/clang -L unit -j "$jobs" --output-on-failure \
    --repeat "until-fail:$SB_TEST_REPEAT"

echo "== gcc release (-O2): build"
cmake --preset release >/dev/null
cmake --build --preset release

"$top/packaging/windows/test-wine.sh"

echo "== all tests passed"
