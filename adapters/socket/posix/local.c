/* Unix domain socket binding with stale-socket recovery (POSIX). */
#include "adapters/socket/socket.h"
#include "service/log.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* 1 if a process accepts connections on path. */
static int someone_listens(const char *path)
{
    struct sockaddr_un sun;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0), live;
    if (fd < 0)
        return 0;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
    live = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    close(fd);
    return live;
}

int sb_socket_bind_local(uv_pipe_t *h, const char *path, sb_error *err)
{
    struct stat st;
    int rc;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return sb_error_set(err, SB_ECONFIG, 0, "socket path too long: %s", path);
    rc = uv_pipe_bind(h, path);
    if (rc == UV_EADDRINUSE && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        if (someone_listens(path))
            return sb_error_set(err, SB_EADDRINUSE, EADDRINUSE,
                                "%s is in use by another running process", path);
        sb_log(SB_LOG_INFO, NULL, "removing stale socket %s", path);
        unlink(path);
        rc = uv_pipe_bind(h, path);
    }
    if (rc != 0)
        return sb_error_set(err, rc == UV_EADDRINUSE ? SB_EADDRINUSE : SB_EIO, rc,
                            "cannot bind %s: %s", path, uv_strerror(rc));
    /* Owner and group only: the socket is as private as the data directory. */
    chmod(path, 0660);
    return 0;
}

void sb_socket_unlink_local(const char *path)
{
    unlink(path);
}
