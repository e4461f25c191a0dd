/* Error code tables and sb_error helpers. */
#include "service/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *sb_strerror(int code)
{
    switch (code) {
#define SB_ERROR_TEXT(name, value, text)                                                           \
    case value:                                                                                    \
        return text;
        SB_ERRORS(SB_ERROR_TEXT)
#undef SB_ERROR_TEXT
    }
    return "unknown error";
}

const char *sb_errname(int code)
{
    switch (code) {
#define SB_ERROR_NAME(name, value, text)                                                           \
    case value:                                                                                    \
        return #name;
        SB_ERRORS(SB_ERROR_NAME)
#undef SB_ERROR_NAME
    }
    return "SB_EUNKNOWN";
}

int sb_error_from_errno(int err)
{
    switch (err) {
    case 0:
        return SB_OK;
    case ENOMEM:
        return SB_ENOMEM;
    case EINVAL:
        return SB_EINVAL;
    case ENOSPC:
#ifdef EDQUOT
    case EDQUOT:
#endif
        return SB_ENOSPC;
    case ENOENT:
        return SB_ENOTFOUND;
    case EEXIST:
        return SB_EEXIST;
    case EACCES:
    case EPERM:
        return SB_EACCES;
    case EADDRINUSE:
        return SB_EADDRINUSE;
    case ECONNREFUSED:
        return SB_ECONNREFUSED;
    case ETIMEDOUT:
        return SB_ETIMEDOUT;
    case EPIPE:
    case ECONNRESET:
        return SB_ECLOSED;
    case EBUSY:
        return SB_EBUSY;
    case EMSGSIZE:
        return SB_ETOOBIG;
    default:
        return SB_EIO;
    }
}

int sb_error_set(sb_error *err, int code, int sys, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        err->sys = sys;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void sb_error_clear(sb_error *err)
{
    if (err != NULL) {
        err->code = 0;
        err->sys = 0;
        err->msg[0] = '\0';
    }
}
