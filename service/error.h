/*
 * Error codes and the caller-supplied error detail.
 *
 * Every fallible function returns int: 0 on success, a negative SB_E* code on
 * failure. Detail (the system error and a one-line message) goes into an
 * optional caller-supplied sb_error, never into a global. One table maps errno
 * (and, on Windows, GetLastError) to SB_E* codes.
 */
#ifndef SB_ERROR_H
#define SB_ERROR_H

#include <stddef.h>

/* printf-style format checking; MinGW's C99 stdio (%zu, %lld) is gnu_printf. */
#if defined(__MINGW32__)
#define SB_PRINTF(f, a) __attribute__((format(gnu_printf, f, a)))
#elif defined(__GNUC__)
#define SB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SB_PRINTF(f, a)
#endif

#define SB_ERRORS(X)                                                                               \
    X(SB_OK, 0, "success")                                                                         \
    X(SB_ENOMEM, -1, "out of memory")                                                              \
    X(SB_EINVAL, -2, "invalid argument")                                                           \
    X(SB_EIO, -3, "I/O error")                                                                     \
    X(SB_ENOSPC, -4, "no space left on device")                                                    \
    X(SB_ECORRUPT, -5, "database is corrupt")                                                      \
    X(SB_EFOREIGN, -6, "not a Switchboard database")                                               \
    X(SB_ENOTFOUND, -7, "not found")                                                               \
    X(SB_EEXIST, -8, "already exists")                                                             \
    X(SB_EFULL, -9, "queue is full")                                                               \
    X(SB_ETOOBIG, -10, "message too large")                                                        \
    X(SB_EPROTO, -11, "protocol error")                                                            \
    X(SB_ECLOSED, -12, "connection closed")                                                        \
    X(SB_ETIMEDOUT, -13, "timed out")                                                              \
    X(SB_EACCES, -14, "access denied")                                                             \
    X(SB_EADDRINUSE, -15, "address in use")                                                        \
    X(SB_ECONNREFUSED, -16, "connection refused")                                                  \
    X(SB_ESHUTDOWN, -17, "broker is shutting down")                                                \
    X(SB_EDUPLICATE, -18, "duplicate message")                                                     \
    X(SB_ECONFIG, -19, "invalid configuration")                                                    \
    X(SB_EBUSY, -20, "resource busy")                                                              \
    X(SB_EVERSION, -21, "unsupported version")                                                     \
    X(SB_ESTORE, -22, "store unavailable")                                                         \
    X(SB_EAUTH, -23, "not authorized")                                                             \
    X(SB_EUNKNOWN, -99, "unknown error")

typedef enum {
#define SB_ERROR_ENUM(name, value, text) name = value,
    SB_ERRORS(SB_ERROR_ENUM)
#undef SB_ERROR_ENUM
} sb_errcode;

/* Detail of a failure: the SB_E* code, the OS error (errno or GetLastError,
 * 0 if none) and a short, one-line message naming what failed and where. */
typedef struct sb_error {
    int code;
    int sys;
    char msg[256];
} sb_error;

/* Static text for an SB_E* code ("queue is full"); never NULL. */
const char *sb_strerror(int code);

/* Symbolic name of an SB_E* code ("SB_EFULL"), for logs and the jsonl protocol. */
const char *sb_errname(int code);

/* Maps an errno value to an SB_E* code. */
int sb_error_from_errno(int err);

/* Fills err (if not NULL) with code, sys and a printf-formatted message;
 * returns code so callers can write `return sb_error_set(err, SB_EIO, ...)`. */
int sb_error_set(sb_error *err, int code, int sys, const char *fmt, ...) SB_PRINTF(4, 5);

/* Resets err to success. */
void sb_error_clear(sb_error *err);

#endif
