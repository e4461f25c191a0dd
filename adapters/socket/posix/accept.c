/*
 * Accepting connections on POSIX, by the broker rather than by libuv.
 *
 * When descriptors run out, libuv's own accept loop closes a spare
 * descriptor, accepts and closes every pending connection, and tells no
 * one: thousands of clients were dropped without a log line. Here the
 * listening socket is watched with a uv_poll handle and accepted by hand,
 * so EMFILE and ENFILE are seen: the first failure of an episode is logged
 * with the limit, accepting pauses (pending clients wait in the kernel's
 * backlog instead of being reset) and resumes after a back-off that grows
 * from 100 ms to 2 s; the episode ends, logged too, once accepting has
 * worked for 5 s (near the limit, accepts alternate between success and
 * failure: that is one episode, not many).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* accept4 */
#endif
#include "adapters/socket/socket.h"
#include "service/alloc.h"
#include "service/log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000
/* An episode ends when accepting has worked this long without a failure. */
#define RECOVERED_MS 5000
/* Connections taken per readiness event: the loop serves others between. */
#define ACCEPT_BATCH 64

struct sb_socket_listener {
    uv_stream_t *h;
    uv_poll_t poll;
    uv_timer_t backoff;
    uv_loop_t *loop;
    int fd;
    int is_tcp;
    sb_socket_accept_cb cb;
    void *ctx;
    const char *name;
    uint64_t delay_ms;      /* the next back-off */
    int episode;            /* descriptors ran out; not over yet */
    int recovering;         /* accepting worked since the last failure */
    uint64_t episode_since; /* loop time it began */
    unsigned long failures; /* accepts that failed in it */
    int open_handles;
    void (*closed)(void *ctx);
};

int sb_socket_bind_tcp(uv_tcp_t *h, const struct sockaddr *addr, const char *text, sb_error *err)
{
    socklen_t len =
        addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int on = 1, fd, e, rc;
    /* uv_tcp_bind would delay EADDRINUSE until uv_listen, which is not
     * used here: the socket is bound by hand, then given to h. */
    fd = socket(addr->sa_family, SOCK_STREAM, 0);
    if (fd < 0) {
        e = errno;
        return sb_error_set(err, sb_error_from_errno(e), e, "cannot create a socket for %s: %s",
                            text, strerror(e));
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, addr, len) != 0) {
        e = errno;
        close(fd);
        return sb_error_set(err, e == EADDRINUSE ? SB_EADDRINUSE : sb_error_from_errno(e), e,
                            "cannot listen on %s: %s", text, strerror(e));
    }
    if ((rc = uv_tcp_open(h, fd)) != 0) {
        close(fd);
        return sb_error_set(err, SB_EIO, rc, "cannot listen on %s: %s", text, uv_strerror(rc));
    }
    return 0;
}

static void log_limit(sb_socket_listener *l, int e)
{
    struct rlimit rl;
    char limit[64] = "";
    if (e == EMFILE && getrlimit(RLIMIT_NOFILE, &rl) == 0)
        snprintf(limit, sizeof limit, " (limit %llu per process)", (unsigned long long)rl.rlim_cur);
    sb_log(SB_LOG_ERROR, l->name,
           "cannot accept connections: %s%s; pausing accepts and retrying with back-off (up to "
           "%d ms); clients wait in the backlog",
           strerror(e), limit, BACKOFF_MAX_MS);
}

static void on_readable(uv_poll_t *p, int status, int events);

static void on_recovered(uv_timer_t *t)
{
    sb_socket_listener *l = t->data;
    sb_log(SB_LOG_INFO, l->name,
           "accepting connections again (descriptors ran out for %.1f s; %lu accepts failed)",
           (double)(uv_now(l->loop) - l->episode_since - RECOVERED_MS) / 1000.0, l->failures);
    l->episode = 0;
    l->recovering = 0;
}

static void on_backoff(uv_timer_t *t)
{
    sb_socket_listener *l = t->data;
    uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

/* Descriptors ran out: stop watching the socket for a while. */
static void pause_accepting(sb_socket_listener *l, int e)
{
    if (!l->episode) {
        l->episode = 1;
        l->episode_since = uv_now(l->loop);
        l->failures = 0;
        l->delay_ms = BACKOFF_FIRST_MS;
        log_limit(l, e);
    } else {
        l->delay_ms = l->delay_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->delay_ms * 2;
    }
    l->failures++;
    l->recovering = 0;
    uv_poll_stop(&l->poll);
    uv_timer_start(&l->backoff, on_backoff, l->delay_ms, 0);
}

static int accept_one(int lfd)
{
#ifdef __linux__
    return accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int fd = accept(lfd, NULL, NULL);
    if (fd >= 0) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return fd;
#endif
}

static void on_free(uv_handle_t *h)
{
    sb_free(h);
}

/* Wraps an accepted descriptor in a libuv stream for the callback. */
static void hand_over(sb_socket_listener *l, int fd)
{
    uv_stream_t *h = sb_malloc(l->is_tcp ? sizeof(uv_tcp_t) : sizeof(uv_pipe_t));
    int rc;
    if (h == NULL) {
        sb_log(SB_LOG_ERROR, l->name, "out of memory accepting a connection");
        close(fd);
        return;
    }
    if (l->is_tcp) {
        uv_tcp_init(l->loop, (uv_tcp_t *)h);
        rc = uv_tcp_open((uv_tcp_t *)h, fd);
    } else {
        uv_pipe_init(l->loop, (uv_pipe_t *)h, 0);
        rc = uv_pipe_open((uv_pipe_t *)h, fd);
    }
    if (rc != 0) {
        sb_log(SB_LOG_ERROR, l->name, "cannot use an accepted connection: %s", uv_strerror(rc));
        close(fd); /* not the handle's yet */
        uv_close((uv_handle_t *)h, on_free);
        return;
    }
    l->cb(l->ctx, h);
}

static void on_readable(uv_poll_t *p, int status, int events)
{
    sb_socket_listener *l = p->data;
    (void)events;
    if (status != 0) {
        sb_log(SB_LOG_ERROR, l->name, "listening socket: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept_one(l->fd), e;
        if (fd >= 0) {
            if (l->episode && !l->recovering) {
                l->recovering = 1;
                uv_timer_start(&l->backoff, on_recovered, RECOVERED_MS, 0);
            }
            hand_over(l, fd);
            if (l->closed != NULL || uv_is_closing((uv_handle_t *)&l->poll))
                return; /* the callback stopped the adapter */
            continue;
        }
        e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK)
            return;
        if (e == EINTR || e == ECONNABORTED || e == EPROTO)
            continue;
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
            pause_accepting(l, e);
            return;
        }
        sb_log(SB_LOG_ERROR, l->name, "accept failed: %s", strerror(e));
        pause_accepting(l, e);
        return;
    }
}

int sb_socket_listen(sb_socket_listener **out, uv_stream_t *h, int is_tcp, sb_socket_accept_cb cb,
                     void *ctx, const char *name, const char *text, sb_error *err)
{
    sb_socket_listener *l;
    uv_os_fd_t fd;
    int rc;

    *out = NULL;
    if ((rc = uv_fileno((uv_handle_t *)h, &fd)) != 0)
        return sb_error_set(err, SB_EIO, rc, "cannot listen on %s: %s", text, uv_strerror(rc));
    if (listen(fd, SOMAXCONN) != 0) {
        int e = errno;
        return sb_error_set(err, e == EADDRINUSE ? SB_EADDRINUSE : sb_error_from_errno(e), e,
                            "cannot listen on %s: %s", text, strerror(e));
    }
    l = sb_calloc(1, sizeof(*l));
    if (l == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    l->h = h;
    l->loop = h->loop;
    l->fd = fd;
    l->is_tcp = is_tcp;
    l->cb = cb;
    l->ctx = ctx;
    l->name = name;
    if ((rc = uv_poll_init_socket(l->loop, &l->poll, fd)) != 0) {
        sb_free(l);
        return sb_error_set(err, SB_EIO, rc, "cannot watch %s: %s", text, uv_strerror(rc));
    }
    l->poll.data = l;
    uv_timer_init(l->loop, &l->backoff);
    l->backoff.data = l;
    l->open_handles = 2;
    uv_poll_start(&l->poll, UV_READABLE, on_readable);
    *out = l;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    sb_socket_listener *l = h->data;
    if (--l->open_handles > 0)
        return;
    l->closed(l->ctx);
    sb_free(l);
}

void sb_socket_listener_close(sb_socket_listener *l, void (*closed)(void *ctx))
{
    l->closed = closed;
    l->h->data = l->ctx;
    /* Stopped here, at once: the listening handle may be closed next. */
    uv_close((uv_handle_t *)&l->poll, on_handle_closed);
    uv_close((uv_handle_t *)&l->backoff, on_handle_closed);
}
