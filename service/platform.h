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

/* Process-wide setup also sets what new files get: on POSIX the umask
 * becomes 077, so everything the broker creates (store, WAL, log, sockets)
 * is for its own account only; exec adapters' children inherit it. */

/* Creates a directory and its parents (like mkdir -p). What it creates is
 * private to the broker's account: mode 0700 on POSIX; on Windows a
 * protected DACL granting SYSTEM, Administrators and the broker's account
 * full control, inherited by the files created inside. */
int sb_platform_mkdir_p(const char *path, sb_error *err);

/* Logs a warning naming the path, what it is ("data directory", "password
 * file") and its permissions if accounts other than the broker's own (and
 * SYSTEM and Administrators on Windows) may access it: group or other mode
 * bits on POSIX, an ACE for another account on Windows. Returns 1 if it
 * warned, else 0 (also when the path cannot be examined). */
int sb_platform_warn_if_shared(const char *path, const char *what);

/* The security descriptor (SDDL) of the admin endpoint, into *out
 * (sb_free): `configured` (broker.admin.security) or, when NULL, the
 * default granting SYSTEM, Administrators and the broker's own account only.
 * The broker's account is added to a configured DACL that leaves it out, so
 * that it can keep serving. *out is NULL where endpoints have no security
 * descriptor (POSIX: the data directory's mode protects the socket).
 * Returns 0 or an SB_E* code with err set. */
int sb_platform_admin_security(char **out, const char *configured, sb_error *err);

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

/* Converts an SDDL string as the system would for a named object. Returns 1
 * if the system accepts it, -1 if it refuses it (`why` says why), 0 where
 * there is no such conversion (POSIX): a syntax check is all there is. */
int sb_platform_sddl_check(const char *sddl, char *why, size_t why_len);

/* Gives the heap's free memory back to the system where the allocator
 * keeps it (glibc: malloc_trim; Windows: _heapmin). Thread-safe; may take
 * milliseconds on a large heap: call it off the loop (paging.c). */
void sb_platform_trim_memory(void);

#endif
