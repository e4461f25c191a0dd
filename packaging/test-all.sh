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
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/packaging/deps-debian.sh"

jobs=$(nproc 2>/dev/null || echo 2)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "== gcc + ASan/UBSan: build"
cmake --preset dev >/dev/null
cmake --build --preset dev
echo "== gcc + ASan/UBSan: tests"
ctest --preset dev -j "$jobs"

echo "== clang: build"
cmake --preset clang >/dev/null
cmake --build --preset clang
echo "== clang: unit tests"
ctest --test-dir build/clang -L unit -j "$jobs" --output-on-failure

echo "== gcc release (-O2): build"
cmake --preset release >/dev/null
cmake --build --preset release

"$top/packaging/windows/test-wine.sh"

echo "== all tests passed"
