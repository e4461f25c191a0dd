/* POSIX implementation of service/platform.h. */
#include "service/platform.h"
#include "service/log.h"

#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
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
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return sb_error_set(err, sb_error_from_errno(errno), errno, "cannot create %s: %s", buf,
                                strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
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
    /* The store holds every payload: nothing the broker creates (database,
     * WAL, log, sockets, directories) is for other users. */
    umask(077);
}

void sb_platform_gmtime(time_t t, struct tm *out)
{
    gmtime_r(&t, out);
}

FILE *sb_platform_fopen(const char *path, const char *mode)
{
    return fopen(path, mode);
}

int sb_platform_sddl_check(const char *sddl, char *why, size_t why_len)
{
    (void)sddl;
    (void)why;
    (void)why_len;
    return 0; /* no security descriptors here: the config's syntax check is all */
}

int sb_platform_warn_if_shared(const char *path, const char *what)
{
    struct stat st;
    if (stat(path, &st) != 0 || (st.st_mode & 077) == 0)
        return 0;
    sb_warn(NULL,
            "the %s %s is accessible to other users (mode %04o): they may read what it holds; "
            "make it private to the broker's account (chmod %s %s)",
            what, path, (unsigned)(st.st_mode & 07777), S_ISDIR(st.st_mode) ? "700" : "600", path);
    return 1;
}

int sb_platform_admin_security(char **out, const char *configured, sb_error *err)
{
    (void)configured;
    (void)err;
    /* The admin socket is created 0600 (umask 077), by default in the data
     * directory: no security descriptor. */
    *out = NULL;
    return 0;
}

void sb_platform_trim_memory(void)
{
#if defined(__GLIBC__)
    (void)malloc_trim(0); /* 1 if memory was released: nothing to do either way */
#endif
}
