/*
 * Accepting connections on Windows: libuv's own listener. Sockets are not
 * descriptors in a per-process table there, so the POSIX concern (EMFILE,
 * see posix/accept.c) does not arise; a failed accept is logged.
 */
#include "adapters/socket/socket.h"
#include "service/alloc.h"
#include "service/log.h"

struct sb_socket_listener {
    uv_stream_t *h;
    int is_tcp;
    sb_socket_accept_cb cb;
    void *ctx;
    const char *name;
};

int sb_socket_bind_tcp(uv_tcp_t *h, const struct sockaddr *addr, const char *text, sb_error *err)
{
    int rc = uv_tcp_bind(h, addr, 0);
    if (rc != 0)
        return sb_error_set(err, rc == UV_EADDRINUSE ? SB_EADDRINUSE : SB_EIO, rc,
                            "cannot listen on %s: %s", text, uv_strerror(rc));
    return 0;
}

static void on_free(uv_handle_t *h)
{
    sb_free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    sb_socket_listener *l = server->data;
    uv_stream_t *h;
    if (status != 0) {
        sb_log(SB_LOG_ERROR, l->name, "accept failed: %s", uv_strerror(status));
        return;
    }
    h = sb_malloc(l->is_tcp ? sizeof(uv_tcp_t) : sizeof(uv_pipe_t));
    if (h == NULL) {
        sb_log(SB_LOG_ERROR, l->name, "out of memory accepting a connection");
        return;
    }
    if (l->is_tcp)
        uv_tcp_init(server->loop, (uv_tcp_t *)h);
    else
        uv_pipe_init(server->loop, (uv_pipe_t *)h, 0);
    if (uv_accept(server, h) != 0) {
        uv_close((uv_handle_t *)h, on_free);
        return;
    }
    l->cb(l->ctx, h);
}

int sb_socket_listen(sb_socket_listener **out, uv_stream_t *h, int is_tcp, sb_socket_accept_cb cb,
                     void *ctx, const char *name, const char *text, sb_error *err)
{
    sb_socket_listener *l = sb_calloc(1, sizeof(*l));
    int rc;
    *out = NULL;
    if (l == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    l->h = h;
    l->is_tcp = is_tcp;
    l->cb = cb;
    l->ctx = ctx;
    l->name = name;
    h->data = l;
    if ((rc = uv_listen(h, 128, on_connection)) != 0) {
        h->data = ctx;
        sb_free(l);
        return sb_error_set(err, rc == UV_EADDRINUSE ? SB_EADDRINUSE : SB_EIO, rc,
                            "cannot listen on %s: %s", text, uv_strerror(rc));
    }
    *out = l;
    return 0;
}

void sb_socket_listener_close(sb_socket_listener *l, void (*closed)(void *ctx))
{
    /* Nothing of its own to close: accepting stops with the listening
     * handle, which its owner closes next (its data is the owner's again). */
    l->h->data = l->ctx;
    closed(l->ctx);
    sb_free(l);
}
