/*
 * The few things the portable core needs from the OS, implemented once per
 * platform in service/platform/posix/ and service/platform/win/ (CMake picks
 * the folder; no #ifdef in the core).
 */
#ifndef SB_PLATFORM_H
#define SB_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "service/error.h"

#ifndef SB_VERSION_STRING
#define SB_VERSION_STRING "0.0.0"
#endif

#include <stdio.h>
#include <time.h>

/* Process-wide setup for the broker (e.g. ignore SIGPIPE on POSIX). */
void sb_platform_init(void);

/* Thread-safe UTC breakdown of a time. */
void sb_platform_gmtime(time_t t, struct tm *out);

/* Creates a directory and its parents (like mkdir -p), private to the
 * broker's account where the platform allows. */
int sb_platform_mkdir_p(const char *path, sb_error *err);

/* fopen with a UTF-8 path (Windows' fopen takes the ANSI code page); errno
 * set on failure. */
FILE *sb_platform_fopen(const char *path, const char *mode);

/* Raises the soft limit on open descriptors to the hard limit, at most
 * 1,048,576 (children inherit it, and some loop over every possible
 * descriptor). *before and *after get the limit before and after. Returns
 * 1 if raised, 0 if there was nothing to do (always on Windows, where
 * sockets are not counted against such a limit), or an SB_E* code. */
int sb_platform_raise_fd_limit(uint64_t *before, uint64_t *after);

/* The default admin endpoint for a data directory: "<data_dir>/admin.sock"
 * on POSIX, a named pipe on Windows. */
void sb_platform_default_admin_endpoint(char *out, size_t n, const char *data_dir);

#endif
