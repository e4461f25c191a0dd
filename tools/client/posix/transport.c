/*
 * POSIX transport: Unix domain sockets and TCP, non-blocking file
 * descriptors waited on with poll() so every call has a deadline. Named
 * pipes are refused here (Windows only). All POSIX-specific client code lives
 * in this file.
 */
#include "tools/client/transport_int.h"

#include "service/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

typedef struct posix_transport {
    sb_transport base;
    int fd;
    char name[SB_ENDPOINT_PATH_MAX + 16];
} posix_transport;

unsigned long long sb_client__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

const char *sb_client__platform_default_endpoint(void)
{
    return "./data/admin.sock";
}

/* Remaining milliseconds until deadline_ns (0 = none: -1). */
static int remaining_ms(unsigned long long deadline_ns)
{
    unsigned long long now;
    if (deadline_ns == 0)
        return -1;
    now = sb_client__now_ns();
    if (now >= deadline_ns)
        return 0;
    return (int)((deadline_ns - now + 999999ull) / 1000000ull);
}

static unsigned long long deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return 0;
    return sb_client__now_ns() + (unsigned long long)timeout_ms * 1000000ull;
}

/* Waits for `events` on fd. Returns 0 when ready, SB_ETIMEDOUT, or SB_EIO. */
static int wait_fd(int fd, short events, unsigned long long deadline_ns)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events, .revents = 0};
        int rc = poll(&p, 1, remaining_ms(deadline_ns));
        if (rc > 0)
            return 0;
        if (rc == 0)
            return SB_ETIMEDOUT;
        if (errno != EINTR)
            return SB_EIO;
    }
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return 0;
}

static int new_socket(int family)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
#ifdef SO_NOSIGPIPE
    {
        int one = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
    }
#endif
    return fd;
}

static int posix_read(sb_transport *t, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                      sb_error *err)
{
    posix_transport *pt = (posix_transport *)t;
    unsigned long long deadline = deadline_after(timeout_ms);

    for (;;) {
        ssize_t n = recv(pt->fd, buf, cap, 0);
        if (n > 0) {
            *out_n = (size_t)n;
            return 0;
        }
        if (n == 0)
            return sb_error_set(err, SB_ECLOSED, 0, "%s: connection closed by the broker",
                                pt->name);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(pt->fd, POLLIN, deadline);
            if (rc == SB_ETIMEDOUT)
                return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: no reply within %d ms", pt->name,
                                    timeout_ms);
            if (rc != 0)
                return sb_error_set(err, SB_EIO, errno, "poll %s: %s", pt->name, strerror(errno));
            continue;
        }
        return sb_error_set(err, sb_error_from_errno(errno) == SB_ECLOSED ? SB_ECLOSED : SB_EIO,
                            errno, "read from %s: %s", pt->name, strerror(errno));
    }
}

static int posix_write(sb_transport *t, const void *buf, size_t len, int timeout_ms, sb_error *err)
{
    posix_transport *pt = (posix_transport *)t;
    const char *p = buf;
    unsigned long long deadline = deadline_after(timeout_ms);

    while (len > 0) {
        ssize_t n = send(pt->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(pt->fd, POLLOUT, deadline);
            if (rc == SB_ETIMEDOUT)
                return sb_error_set(err, SB_ETIMEDOUT, 0,
                                    "%s: the broker did not read our request within %d ms",
                                    pt->name, timeout_ms);
            if (rc != 0)
                return sb_error_set(err, SB_EIO, errno, "poll %s: %s", pt->name, strerror(errno));
            continue;
        }
        return sb_error_set(err, sb_error_from_errno(errno) == SB_ECLOSED ? SB_ECLOSED : SB_EIO,
                            errno, "write to %s: %s", pt->name, strerror(errno));
    }
    return 0;
}

static void posix_close(sb_transport *t)
{
    posix_transport *pt = (posix_transport *)t;
    if (pt == NULL)
        return;
    if (pt->fd >= 0)
        close(pt->fd);
    sb_free(pt);
}

static const sb_transport_ops posix_ops = {posix_read, posix_write, posix_close};

static int connect_unix(posix_transport *pt, const sb_endpoint *ep, sb_error *err)
{
    struct sockaddr_un sa;
    int fd, e;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(ep->path) >= sizeof(sa.sun_path))
        return sb_error_set(err, SB_EINVAL, ENAMETOOLONG,
                            "cannot connect to %s: socket path longer than %zu bytes", ep->display,
                            sizeof(sa.sun_path) - 1);
    memcpy(sa.sun_path, ep->path, strlen(ep->path) + 1);
    fd = new_socket(AF_UNIX);
    if (fd < 0) {
        e = errno;
        return sb_error_set(err, sb_error_from_errno(e), e, "cannot connect to %s: socket: %s",
                            ep->display, strerror(e));
    }
    /* A local connect completes (or fails) at once, or waits for the
     * listener's backlog; blocking here is what a client wants. */
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (errno == EINTR)
            continue;
        e = errno;
        close(fd);
        return sb_error_set(err, sb_error_from_errno(e), e, "cannot connect to %s: %s", ep->display,
                            strerror(e));
    }
    if (set_nonblocking(fd) != 0) {
        e = errno;
        close(fd);
        return sb_error_set(err, SB_EIO, e, "cannot connect to %s: fcntl: %s", ep->display,
                            strerror(e));
    }
    pt->fd = fd;
    return 0;
}

/* Non-blocking connect with a deadline. Returns 0 or an errno value. */
static int connect_addr(int fd, const struct addrinfo *ai, unsigned long long deadline)
{
    int so_err = 0;
    socklen_t len = sizeof(so_err);

    if (set_nonblocking(fd) != 0)
        return errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return errno;
    if (wait_fd(fd, POLLOUT, deadline) == SB_ETIMEDOUT)
        return ETIMEDOUT;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_err, &len) != 0)
        return errno;
    return so_err;
}

static int connect_tcp(posix_transport *pt, const sb_endpoint *ep, int timeout_ms, sb_error *err)
{
    struct addrinfo hints, *res = NULL, *ai;
    char port[16];
    int rc, last = 0;
    unsigned long long deadline = deadline_after(timeout_ms);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", ep->port);
    rc = getaddrinfo(ep->host, port, &hints, &res);
    if (rc != 0)
        return sb_error_set(err, SB_ENOTFOUND, 0, "cannot connect to %s: cannot resolve %s: %s",
                            ep->display, ep->host, gai_strerror(rc));
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int one = 1;
        int fd = new_socket(ai->ai_family);
        if (fd < 0) {
            last = errno;
            continue;
        }
        last = connect_addr(fd, ai, deadline);
        if (last == 0) {
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            pt->fd = fd;
            freeaddrinfo(res);
            return 0;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return sb_error_set(err, sb_error_from_errno(last), last, "cannot connect to %s: %s",
                        ep->display, strerror(last));
}

int sb_client__transport_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms,
                              sb_error *err)
{
    posix_transport *pt;
    int rc;

    *out = NULL;
    if (ep->kind == SB_ENDPOINT_PIPE || ep->kind == SB_ENDPOINT_RPC)
        return sb_error_set(err, SB_EINVAL, 0,
                            "cannot connect to %s: %s are only available on Windows", ep->display,
                            ep->kind == SB_ENDPOINT_PIPE ? "named pipes" : "MS-RPC endpoints");
    pt = sb_calloc(1, sizeof(*pt));
    if (pt == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory", ep->display);
    pt->base.ops = &posix_ops;
    pt->fd = -1;
    snprintf(pt->name, sizeof(pt->name), "%s", ep->display);
    rc = ep->kind == SB_ENDPOINT_UNIX ? connect_unix(pt, ep, err)
                                      : connect_tcp(pt, ep, timeout_ms, err);
    if (rc != 0) {
        posix_close(&pt->base);
        return rc;
    }
    *out = &pt->base;
    return 0;
}
