/* POSIX implementation of service/platform.h. */
#include "service/platform.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

int sb_platform_mkdir_p(const char *path, sb_error *err)
{
    char buf[1024];
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(buf))
        return sb_error_set(err, SB_EINVAL, 0, "invalid directory path '%s'", path);
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0750) != 0 && errno != EEXIST)
            return sb_error_set(err, sb_error_from_errno(errno), errno, "cannot create %s: %s", buf,
                                strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0750) != 0 && errno != EEXIST)
        return sb_error_set(err, sb_error_from_errno(errno), errno, "cannot create %s: %s", buf,
                            strerror(errno));
    return 0;
}

void sb_platform_default_admin_endpoint(char *out, size_t n, const char *data_dir)
{
    snprintf(out, n, "%s/admin.sock", data_dir);
}

int sb_platform_raise_fd_limit(uint64_t *before, uint64_t *after)
{
    const rlim_t cap = 1048576;
    struct rlimit rl;
    rlim_t want;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return sb_error_from_errno(errno);
    *before = *after = (uint64_t)rl.rlim_cur;
    want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > cap ? cap : rl.rlim_max;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return 0;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return sb_error_from_errno(errno);
    *after = (uint64_t)want;
    return 1;
}

void sb_platform_init(void)
{
    /* A peer closing mid-write must be an EPIPE error, not a killed broker. */
    signal(SIGPIPE, SIG_IGN);
}

void sb_platform_gmtime(time_t t, struct tm *out)
{
    gmtime_r(&t, out);
}

FILE *sb_platform_fopen(const char *path, const char *mode)
{
    return fopen(path, mode);
}
