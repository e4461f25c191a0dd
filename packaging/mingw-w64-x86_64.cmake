# CMake toolchain file: cross-compiles for 64-bit Windows with MinGW-w64 on
# Debian 12. Uses the win32 thread model compiler (no winpthread DLL) and links
# everything statically, so an exe imports only Windows system DLLs. Libraries
# come from the MinGW sysroot and from the prefix that
# packaging/windows/deps.sh builds, given as -DSB_WIN_DEPS_PREFIX=<dir> or in
# the environment variable of the same name; pkg-config reads only that
# prefix's .pc files. Tests (ctest, try_run) run under Wine.
#
#   export SB_WIN_DEPS_PREFIX=$(packaging/windows/deps.sh)
#   cmake --preset mingw
#
# deps.sh builds its own libraries with this file: bump RECIPE there when a
# change here affects how they compile.

set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(SB_MINGW_TRIPLET x86_64-w64-mingw32)
set(SB_MINGW_SYSROOT /usr/${SB_MINGW_TRIPLET})

# The -win32 names pin the thread model whatever update-alternatives says.
find_program(CMAKE_C_COMPILER NAMES ${SB_MINGW_TRIPLET}-gcc-win32 ${SB_MINGW_TRIPLET}-gcc REQUIRED)
find_program(CMAKE_RC_COMPILER NAMES ${SB_MINGW_TRIPLET}-windres REQUIRED)
find_program(CMAKE_AR NAMES ${SB_MINGW_TRIPLET}-gcc-ar-win32 ${SB_MINGW_TRIPLET}-ar REQUIRED)
find_program(CMAKE_RANLIB NAMES ${SB_MINGW_TRIPLET}-gcc-ranlib-win32 ${SB_MINGW_TRIPLET}-ranlib REQUIRED)

# The deps prefix: cache variable first, then the environment. The
# environment variable is set again below so that try_compile projects, which
# re-read this file without the cache, find it too.
if(NOT SB_WIN_DEPS_PREFIX AND DEFINED ENV{SB_WIN_DEPS_PREFIX})
  set(SB_WIN_DEPS_PREFIX "$ENV{SB_WIN_DEPS_PREFIX}")
endif()
if(NOT SB_WIN_DEPS_PREFIX OR NOT IS_DIRECTORY "${SB_WIN_DEPS_PREFIX}/lib/pkgconfig")
  message(FATAL_ERROR
    "SB_WIN_DEPS_PREFIX is '${SB_WIN_DEPS_PREFIX}': set it to the prefix that "
    "packaging/windows/deps.sh prints (export SB_WIN_DEPS_PREFIX=$(packaging/windows/deps.sh))")
endif()
set(SB_WIN_DEPS_PREFIX "${SB_WIN_DEPS_PREFIX}" CACHE PATH "Prefix of the Windows dependencies (packaging/windows/deps.sh)")
set(ENV{SB_WIN_DEPS_PREFIX} "${SB_WIN_DEPS_PREFIX}")

set(CMAKE_FIND_ROOT_PATH ${SB_MINGW_SYSROOT} ${SB_WIN_DEPS_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Only the prefix's .pc files: PKG_CONFIG_PATH would be searched first and
# the host's (/usr/lib/x86_64-linux-gnu/pkgconfig) would otherwise leak in.
set(ENV{PKG_CONFIG_LIBDIR} "${SB_WIN_DEPS_PREFIX}/lib/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
unset(ENV{PKG_CONFIG_SYSROOT_DIR})

# Static everything: libgcc and the deps' .a files; the prefix holds no
# import libraries for them (libuv's is there but its .pc names the static
# library).
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -static-libgcc")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static-libgcc")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-static-libgcc")
set(OPENSSL_USE_STATIC_LIBS TRUE)

# ctest and try_run start Windows programs through Wine's 64-bit loader
# directly (Debian's /usr/bin/wine wrapper adds a "wine32 is missing" hint).
find_program(SB_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
if(SB_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${SB_WINE}")
endif()
