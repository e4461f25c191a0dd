/* Windows implementation of service/platform.h. */
#include "service/platform.h"
#include "service/alloc.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"
#include "service/topic.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <windows.h>

void sb_platform_init(void)
{
    /* No error dialog boxes from a service: fail the call instead. */
    SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX | SEM_NOOPENFILEERRORBOX);
}

int sb_platform_raise_fd_limit(uint64_t *before, uint64_t *after)
{
    *before = *after = 0;
    return 0;
}

void sb_platform_gmtime(time_t t, struct tm *out)
{
    gmtime_s(out, &t);
}

static int make_one(const char *path, sb_error *err)
{
    wchar_t *w = sb_utf8_to_wide(path);
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd = NULL;
    DWORD code;
    char text[300];
    BOOL made;
    if (w == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "invalid directory path '%s'", path);
    /* Private from the start: a DACL set afterwards would leave a moment
     * in which the directory inherited its parent's (often Users: read). */
    code = sb_win_private_dir_sd(&sd, NULL);
    if (code != 0) {
        sb_free(w);
        sb_win_strerror(code, text, sizeof(text));
        return sb_error_set(err, sb_error_from_win32(code), (int)code,
                            "cannot build the security descriptor for %s: %s", path, text);
    }
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    made = CreateDirectoryW(w, &sa);
    code = made ? 0 : GetLastError();
    LocalFree(sd);
    sb_free(w);
    if (made || code == ERROR_ALREADY_EXISTS)
        return 0;
    sb_win_strerror(code, text, sizeof(text));
    return sb_error_set(err, sb_error_from_win32(code), (int)code, "cannot create %s: %s", path,
                        text);
}

int sb_platform_mkdir_p(const char *path, sb_error *err)
{
    char buf[1024];
    size_t len = strlen(path);
    int rc;

    if (len == 0 || len >= sizeof(buf))
        return sb_error_set(err, SB_EINVAL, 0, "invalid directory path '%s'", path);
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if ((*p != '\\' && *p != '/') || p[-1] == ':' || (p == buf + 1 && buf[0] == '\\'))
            continue;
        *p = '\0';
        rc = make_one(buf, err);
        *p = '\\';
        if (rc != 0)
            return rc;
    }
    return make_one(buf, err);
}

void sb_platform_default_admin_endpoint(char *out, size_t n, const char *data_dir)
{
    (void)data_dir;
    snprintf(out, n, "\\\\.\\pipe\\switchboard-admin");
}

FILE *sb_platform_fopen(const char *path, const char *mode)
{
    wchar_t *wpath = sb_utf8_to_wide(path), *wmode = sb_utf8_to_wide(mode);
    FILE *f = NULL;
    if (wpath != NULL && wmode != NULL)
        f = _wfopen(wpath, wmode);
    else
        errno = sb_utf8_valid(path, strlen(path)) ? ENOMEM : EINVAL;
    sb_free(wpath);
    sb_free(wmode);
    return f;
}

void sb_platform_trim_memory(void)
{
    (void)_heapmin(); /* -1 when there was nothing to release */
}
