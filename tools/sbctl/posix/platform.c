/*
 * POSIX specifics of sbctl: terminal detection and signal dispositions, and
 * for `sbctl passwd` reading a password with echo off (termios) and replacing
 * a file atomically (mkstemp + rename). win/platform.c has the Windows
 * counterparts: a UTF-8 command line, binary stdio, the console code page,
 * SetConsoleMode and MoveFileExW.
 */
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

void sbctl_platform_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Writing to a closed stdout (sbctl sub | head) should end sbctl quietly
     * before it acknowledges a message it could not print; a parent may have
     * left SIGPIPE ignored. Socket writes use MSG_NOSIGNAL instead. */
    signal(SIGPIPE, SIG_DFL);
}

int sbctl_isatty(int fd)
{
    return isatty(fd);
}

const char *sbctl_eof_key(void)
{
    return "Ctrl-D";
}

/* ---- reading a password ---- */

/* The terminal settings to put back if a signal ends sbctl while echo is
 * off (tcsetattr is async-signal-safe). */
static struct termios saved_tio;
static const int restore_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
#define NRESTORE (sizeof(restore_signals) / sizeof(restore_signals[0]))

static void restore_and_die(int sig)
{
    tcsetattr(0, TCSANOW, &saved_tio);
    /* SA_RESETHAND put the default action back; the signal is blocked
     * until this returns, then it ends the process. */
    raise(sig);
}

int sbctl_read_secret(char **out, const char *prompt, size_t max, char *msg, size_t msglen)
{
    struct sigaction sa, old[NRESTORE];
    struct termios tio;
    char *buf;
    size_t len = 0;
    int c, rc = 0, eof = 0;

    *out = NULL;
    if (tcgetattr(0, &saved_tio) != 0) {
        snprintf(msg, msglen, "cannot read the terminal settings: %s", strerror(errno));
        return -1;
    }
    buf = sb_malloc(max + 1);
    if (buf == NULL) {
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = restore_and_die;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < NRESTORE; i++)
        sigaction(restore_signals[i], &sa, &old[i]);
    tio = saved_tio;
    tio.c_lflag &= ~(tcflag_t)ECHO;
    tio.c_lflag |= ICANON;
    fputs(prompt, stderr);
    fflush(stderr);
    tcsetattr(0, TCSAFLUSH, &tio);
    while ((c = getchar()) != EOF && c != '\n') {
        if (len < max)
            buf[len] = (char)c;
        len++;
    }
    eof = c == EOF && len == 0;
    tcsetattr(0, TCSAFLUSH, &saved_tio);
    for (size_t i = 0; i < NRESTORE; i++)
        sigaction(restore_signals[i], &old[i], NULL);
    fputc('\n', stderr);
    if (eof) {
        snprintf(msg, msglen, "no password given (end of input)");
        rc = -1;
    } else if (len > max) {
        snprintf(msg, msglen, "password longer than %zu bytes", max);
        rc = -1;
    }
    if (rc != 0) {
        memset(buf, 0, max + 1);
        sb_free(buf);
        return rc;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* ---- replacing a file ---- */

static void fsync_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    int fd;
    if (slash == NULL)
        dir = sb_strdup(".");
    else
        dir = sb_strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (dir == NULL)
        return;
    fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        /* Makes the rename durable; best effort (not every file system
         * supports fsync on a directory). */
        if (fsync(fd) != 0) {
            /* nothing more to do */
        }
        close(fd);
    }
    sb_free(dir);
}

int sbctl_replace_file(const char *path, const void *data, size_t len, char *msg, size_t msglen)
{
    const char *target = path;
    char *resolved = NULL, *tmp = NULL;
    const char *p = data;
    struct stat st;
    int fd = -1, exists, created = 0, rc = -1;
    mode_t mode = 0600;

    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        resolved = realpath(path, NULL);
        if (resolved == NULL) {
            snprintf(msg, msglen, "cannot resolve the link %s: %s", path, strerror(errno));
            return -1;
        }
        target = resolved;
    }
    exists = stat(target, &st) == 0;
    if (exists && !S_ISREG(st.st_mode)) {
        snprintf(msg, msglen, "%s is not a regular file", target);
        goto cleanup;
    }
    tmp = sb_malloc(strlen(target) + sizeof(".tmp-XXXXXX"));
    if (tmp == NULL) {
        snprintf(msg, msglen, "out of memory");
        goto cleanup;
    }
    strcpy(tmp, target);
    strcat(tmp, ".tmp-XXXXXX");
    fd = mkstemp(tmp); /* mode 0600 */
    if (fd < 0) {
        snprintf(msg, msglen, "cannot create a temporary file next to %s: %s", target,
                 strerror(errno));
        goto cleanup;
    }
    created = 1;
    if (exists) {
        /* The broker may run as the file's owner or group: keep them when
         * allowed (root editing the broker's file), and the mode without
         * world access or execute bits. */
        if (fchown(fd, st.st_uid, st.st_gid) != 0 && fchown(fd, (uid_t)-1, st.st_gid) != 0) {
            /* not permitted: the file becomes the caller's */
        }
        mode = st.st_mode & 0640;
    }
    if (fchmod(fd, mode) != 0) {
        snprintf(msg, msglen, "cannot set the mode of %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(msg, msglen, "cannot write %s: %s", tmp,
                     n < 0 ? strerror(errno) : "no progress");
            goto cleanup;
        }
        p += n;
        len -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        snprintf(msg, msglen, "cannot write %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (close(fd) != 0) {
        fd = -1;
        snprintf(msg, msglen, "cannot write %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    fd = -1;
    if (rename(tmp, target) != 0) {
        snprintf(msg, msglen, "cannot replace %s: %s", target, strerror(errno));
        goto cleanup;
    }
    created = 0; /* renamed: nothing to remove */
    fsync_dir_of(target);
    rc = 0;
cleanup:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    sb_free(tmp);
    free(resolved);
    return rc;
}
