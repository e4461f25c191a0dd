/* UTF-8 <-> UTF-16 conversion and Windows error text/mapping. */
#include "service/platform/win/utf.h"
#include "service/alloc.h"
#include "service/error.h"

#include <stdio.h>
#include <windows.h>

wchar_t *sb_utf8_to_wide(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
    wchar_t *w;
    if (n <= 0)
        return NULL;
    w = sb_malloc((size_t)n * sizeof(wchar_t));
    if (w == NULL)
        return NULL;
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n) != n) {
        sb_free(w);
        return NULL;
    }
    return w;
}

char *sb_wide_to_utf8(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s;
    if (n <= 0)
        return NULL;
    s = sb_malloc((size_t)n);
    if (s == NULL)
        return NULL;
    if (WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL) != n) {
        sb_free(s);
        return NULL;
    }
    return s;
}

void sb_win_strerror(unsigned long code, char *out, size_t n)
{
    wchar_t buf[512];
    DWORD len = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL,
                               code, 0, buf, sizeof(buf) / sizeof(buf[0]), NULL);
    char *u;
    while (len > 0 && (buf[len - 1] == L'\r' || buf[len - 1] == L'\n' || buf[len - 1] == L'.'))
        buf[--len] = 0;
    u = len > 0 ? sb_wide_to_utf8(buf) : NULL;
    if (u != NULL)
        snprintf(out, n, "%s (error %lu)", u, code);
    else
        snprintf(out, n, "error %lu", code);
    sb_free(u);
}

int sb_error_from_win32(unsigned long code)
{
    switch (code) {
    case ERROR_SUCCESS:
        return SB_OK;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
        return SB_ENOMEM;
    case ERROR_INVALID_PARAMETER:
    case ERROR_INVALID_NAME:
        return SB_EINVAL;
    case ERROR_DISK_FULL:
    case ERROR_HANDLE_DISK_FULL:
        return SB_ENOSPC;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
    case ERROR_SERVICE_DOES_NOT_EXIST:
        return SB_ENOTFOUND;
    case ERROR_ALREADY_EXISTS:
    case ERROR_FILE_EXISTS:
    case ERROR_SERVICE_EXISTS:
        return SB_EEXIST;
    case ERROR_ACCESS_DENIED:
        return SB_EACCES;
    case ERROR_PIPE_BUSY:
    case ERROR_SHARING_VIOLATION:
    case ERROR_LOCK_VIOLATION:
        return SB_EBUSY;
    case ERROR_BROKEN_PIPE:
    case ERROR_NO_DATA:
    case ERROR_PIPE_NOT_CONNECTED:
        return SB_ECLOSED;
    case ERROR_SEM_TIMEOUT:
    case WAIT_TIMEOUT:
        return SB_ETIMEDOUT;
    case ERROR_MORE_DATA:
        return SB_ETOOBIG;
    /* Winsock reports through the same numbering (winerror.h). */
    case ERROR_CONNECTION_REFUSED:
    case WSAECONNREFUSED:
        return SB_ECONNREFUSED;
    case WSAECONNRESET:
    case WSAECONNABORTED:
    case WSAENOTCONN:
    case WSAESHUTDOWN:
        return SB_ECLOSED;
    case WSAETIMEDOUT:
        return SB_ETIMEDOUT;
    case WSAEADDRINUSE:
        return SB_EADDRINUSE;
    case WSAEACCES:
        return SB_EACCES;
    case WSAHOST_NOT_FOUND:
    case WSANO_DATA:
        return SB_ENOTFOUND;
    default:
        return SB_EIO;
    }
}
