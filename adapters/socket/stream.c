/*
 * Stream socket adapters: `tcp` (listen or connect) and `unix` (a Unix domain
 * socket path; on POSIX also the `pipe` type, so one config serves Windows
 * named pipes and Linux). Each connection carries the adapter's protocol.
 * As a sink (raw protocol), deliveries go to one connected peer at a time,
 * round robin; with no peer connected, messages wait in the queue.
 * A tcp adapter with a `tls` section runs each connection over TLS
 * (tls.c): its protocol starts, and it takes deliveries, once the handshake
 * is done; a client that fails the handshake reconnects with backoff.
 */
#include "adapters/conn.h"
#include "adapters/protocol/raw.h"
#include "adapters/socket/socket.h"
#include "adapters/socket/tls.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform.h"

#include <stdio.h>
#include <string.h>

typedef struct stream_adapter {
    sb_adapter base;
    int is_tcp;
    int is_server;
    const sb_protocol *proto;
    sb_tls_ctx *tls; /* NULL: plaintext */
    uv_stream_t *listener;
    sb_socket_listener *acceptor; /* accepts on listener */
    sb_conn_guard guard;          /* servers: idle and frame timeouts, eviction */
    int guard_open;
    sb_conn *conns;
    sb_conn *rr;
    int conn_count;
    unsigned long serial;
    /* client mode */
    uv_timer_t *reconnect;
    int64_t backoff_ms;
    int connecting;
    int stopping;
    int handles_open;
    sb_adapter_stopped_cb stopped_cb;
} stream_adapter;

static int stream_validate(const sb_adapter_config *cfg, sb_error *err)
{
    struct sockaddr_storage ss;
    const sb_protocol *p = sb_protocol_find(cfg->protocol);
    int framing = sb_raw_framing_parse(cfg->framing, 0);
    if (p == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "unknown protocol %s", cfg->protocol);
    if (framing != SB_FRAMING_LINE && framing != SB_FRAMING_LENGTH)
        return sb_error_set(err, SB_ECONFIG, 0, "framing %s is not available for %s sockets",
                            cfg->framing, cfg->type);
    if (strcmp(cfg->type, "tcp") == 0) {
        const char *addr = cfg->listen != NULL ? cfg->listen : cfg->connect;
        if (addr == NULL)
            return sb_error_set(err, SB_ECONFIG, 0, "tcp needs listen or connect");
        return sb_socket_parse_addr(addr, &ss, err);
    }
    if (cfg->path == NULL && cfg->connect == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "%s needs path or connect", cfg->type);
    return 0;
}

static int stream_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    stream_adapter *s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    s->is_tcp = strcmp(cfg->type, "tcp") == 0;
    s->is_server = s->is_tcp ? cfg->listen != NULL : cfg->path != NULL;
    s->proto = sb_protocol_find(cfg->protocol);
    *out = &s->base;
    return 0;
}

/* ---- connections ---- */

static void on_handle_free(uv_handle_t *h)
{
    sb_free(h);
}

static void maybe_stopped(stream_adapter *s);
static void schedule_reconnect(void *adapter);

static void on_conn_closed(sb_conn *c)
{
    stream_adapter *s = c->transport;
    /* (doubly linked: thousands of clients leaving at once each walked
     * the list) */
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (s->rr == c)
        s->rr = NULL;
    s->conn_count--;
    sb_log(SB_LOG_INFO, s->base.name, "peer %s disconnected", c->peer);
    if (!s->is_server && !s->stopping)
        schedule_reconnect(s);
    maybe_stopped(s);
}

/* A TLS connection finished its handshake: it may take deliveries, and a
 * client's backoff starts over. */
static void on_tls_ready(sb_conn *c)
{
    stream_adapter *s = c->transport;
    if (!s->is_server)
        s->backoff_ms = 0;
    sb_adapter_sink_ready(&s->base);
}

static void link_conn(stream_adapter *s, sb_conn *c)
{
    c->prev = NULL;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
}

static int add_conn(stream_adapter *s, uv_stream_t *h, const char *peer)
{
    sb_conn *c = sb_calloc(1, sizeof(*c));
    int rc;
    if (c == NULL)
        return SB_ENOMEM;
    c->transport = s;
    c->on_closed = on_conn_closed;
    if (s->tls != NULL) {
        /* On failure nothing was taken: h and c are still ours. */
        if ((rc = sb_conn_start_tls(c, &s->base, s->proto, s->tls, (uv_tcp_t *)h, peer,
                                    on_tls_ready)) != 0) {
            sb_free(c);
            uv_close((uv_handle_t *)h, on_handle_free);
            return rc;
        }
        link_conn(s, c);
        s->conn_count++;
        if (s->guard_open)
            sb_conn_guard_add(&s->guard, c);
        sb_log(SB_LOG_INFO, s->base.name, "peer %s connected (TLS handshake)", peer);
        return 0;
    }
    link_conn(s, c);
    s->conn_count++;
    if (s->guard_open)
        sb_conn_guard_add(&s->guard, c);
    rc = sb_conn_start_uv(c, &s->base, s->proto, h, h, peer);
    if (rc != 0) {
        sb_conn_close(c, "cannot start the protocol session");
        return rc;
    }
    sb_log(SB_LOG_INFO, s->base.name, "peer %s connected", peer);
    sb_adapter_sink_ready(&s->base);
    return 0;
}

static void peer_name(stream_adapter *s, uv_stream_t *h, char *out, size_t n)
{
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        if (uv_tcp_getpeername((uv_tcp_t *)h, (struct sockaddr *)&ss, &len) == 0) {
            sb_socket_format_addr((struct sockaddr *)&ss, out, n);
            return;
        }
    }
    snprintf(out, n, "%s#%lu", s->is_tcp ? "tcp" : "local", ++s->serial);
}

static uv_stream_t *new_stream(stream_adapter *s)
{
    uv_stream_t *h;
    if (s->is_tcp) {
        h = sb_malloc(sizeof(uv_tcp_t));
        if (h != NULL)
            uv_tcp_init(s->base.loop, (uv_tcp_t *)h);
    } else {
        h = sb_malloc(sizeof(uv_pipe_t));
        if (h != NULL)
            uv_pipe_init(s->base.loop, (uv_pipe_t *)h, 0);
    }
    return h;
}

static void on_accepted(void *ctx, uv_stream_t *h)
{
    stream_adapter *s = ctx;
    char peer[128];
    int max = s->base.cfg->max_connections > 0 ? s->base.cfg->max_connections : 64;

    peer_name(s, h, peer, sizeof(peer));
    /* A full listener makes room by closing the connection that has waited
     * longest without identifying itself (those closing still count until
     * their handles are closed, an iteration later). */
    if (s->conn_count >= max && !sb_conn_guard_evict(&s->guard, peer)) {
        sb_log(SB_LOG_WARN, s->base.name, "peer %s refused: max_connections (%d) reached", peer,
               max);
        uv_close((uv_handle_t *)h, on_handle_free);
        return;
    }
    if (s->is_tcp)
        uv_tcp_nodelay((uv_tcp_t *)h, 1);
    if (add_conn(s, h, peer) != 0)
        sb_log(SB_LOG_ERROR, s->base.name, "peer %s: cannot start session", peer);
}

/* ---- client mode ---- */

static void start_connect(stream_adapter *s);

static void on_reconnect_timer(uv_timer_t *t)
{
    start_connect(t->data);
}

static void schedule_reconnect(void *adapter)
{
    stream_adapter *s = adapter;
    const sb_adapter_config *cfg = s->base.cfg;
    int64_t max = cfg->reconnect_max_backoff_ms > 0 ? cfg->reconnect_max_backoff_ms : 30000;
    s->backoff_ms = sb_backoff_next(
        s->backoff_ms, cfg->reconnect_backoff_ms > 0 ? cfg->reconnect_backoff_ms : 500, max);
    uv_timer_start(s->reconnect, on_reconnect_timer, (uint64_t)s->backoff_ms, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
    stream_adapter *s = req->data;
    uv_stream_t *h = req->handle;
    char peer[128];
    sb_free(req);
    s->connecting = 0;
    s->handles_open--;
    if (s->stopping || status != 0) {
        if (status != 0 && !s->stopping)
            sb_log(SB_LOG_WARN, s->base.name, "cannot connect to %s: %s (retrying)",
                   s->base.cfg->connect, uv_strerror(status));
        uv_close((uv_handle_t *)h, on_handle_free);
        if (!s->stopping)
            schedule_reconnect(s);
        maybe_stopped(s);
        return;
    }
    if (s->tls == NULL)
        s->backoff_ms = 0; /* with TLS, once the handshake is done */
    snprintf(peer, sizeof(peer), "%s", s->base.cfg->connect);
    if (s->is_tcp)
        uv_tcp_nodelay((uv_tcp_t *)h, 1);
    if (add_conn(s, h, peer) != 0 && s->tls != NULL && !s->stopping) {
        sb_log(SB_LOG_ERROR, s->base.name, "peer %s: cannot start session", peer);
        schedule_reconnect(s);
    }
}

static void start_connect(stream_adapter *s)
{
    uv_connect_t *req;
    uv_stream_t *h;
    if (s->stopping || s->connecting || s->conns != NULL)
        return;
    req = sb_malloc(sizeof(*req));
    h = new_stream(s);
    if (req == NULL || h == NULL) {
        sb_free(req);
        if (h != NULL)
            uv_close((uv_handle_t *)h, on_handle_free);
        schedule_reconnect(s);
        return;
    }
    req->data = s;
    s->connecting = 1;
    s->handles_open++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        int rc;
        sb_socket_parse_addr(s->base.cfg->connect, &ss, NULL);
        rc = uv_tcp_connect(req, (uv_tcp_t *)h, (struct sockaddr *)&ss, on_connect);
        if (rc != 0) {
            req->handle = h;
            on_connect(req, rc);
        }
    } else {
        uv_pipe_connect(req, (uv_pipe_t *)h, s->base.cfg->connect, on_connect);
    }
}

/* ---- lifecycle ---- */

/* "adapter NAME: " before err's message; returns rc. */
static int prefix_error(sb_error *err, const char *name, int rc)
{
    if (err != NULL) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof msg, "%s", err->msg);
        snprintf(err->msg, sizeof err->msg, "adapter %s: %.200s", name, msg);
    }
    return rc;
}

static int stream_start(sb_adapter *a, sb_error *err)
{
    stream_adapter *s = (stream_adapter *)a;
    const sb_adapter_config *cfg = a->cfg;
    int rc;

    if (s->is_tcp && sb_adapter_config_tls(cfg) && (rc = sb_tls_ctx_new(&s->tls, cfg, err)) != 0)
        return rc;
    s->reconnect = sb_malloc(sizeof(*s->reconnect));
    if (s->reconnect == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    uv_timer_init(a->loop, s->reconnect);
    s->reconnect->data = s;
    s->handles_open++;
    if (!s->is_server) {
        sb_log(SB_LOG_INFO, a->name, "connecting to %s (%s%s)", cfg->connect, s->proto->name,
               s->tls != NULL ? " over TLS" : "");
        start_connect(s);
        return 0;
    }
    sb_conn_guard_init(&s->guard, a);
    s->guard.data = s;
    s->guard_open = 1;
    s->handles_open++;
    s->listener = new_stream(s);
    if (s->listener == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    s->listener->data = s;
    s->handles_open++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        if ((rc = sb_socket_parse_addr(cfg->listen, &ss, err)) != 0 ||
            (rc = sb_socket_bind_tcp((uv_tcp_t *)s->listener, (struct sockaddr *)&ss, cfg->listen,
                                     err)) != 0)
            return prefix_error(err, a->name, rc);
    } else if ((rc = sb_socket_bind_local((uv_pipe_t *)s->listener, cfg->path, err)) != 0) {
        return rc;
    }
    if ((rc = sb_socket_listen(&s->acceptor, s->listener, s->is_tcp, on_accepted, s, a->name,
                               s->is_tcp ? cfg->listen : cfg->path, err)) != 0)
        return prefix_error(err, a->name, rc);
    s->handles_open++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        char where[128];
        uv_tcp_getsockname((uv_tcp_t *)s->listener, (struct sockaddr *)&ss, &len);
        sb_socket_format_addr((struct sockaddr *)&ss, where, sizeof(where));
        sb_log(SB_LOG_INFO, a->name, "listening on tcp %s (%s%s)", where, s->proto->name,
               s->tls != NULL ? " over TLS" : "");
    } else {
        sb_log(SB_LOG_INFO, a->name, "listening on %s (%s)", cfg->path, s->proto->name);
    }
    return 0;
}

static void maybe_stopped(stream_adapter *s)
{
    if (s->stopping && s->handles_open == 0 && s->conns == NULL && s->stopped_cb != NULL) {
        sb_adapter_stopped_cb cb = s->stopped_cb;
        s->stopped_cb = NULL;
        cb(&s->base);
    }
}

static void on_own_handle_closed(uv_handle_t *h)
{
    stream_adapter *s = h->data;
    sb_free(h);
    s->handles_open--;
    maybe_stopped(s);
}

static void on_acceptor_closed(void *ctx)
{
    stream_adapter *s = ctx;
    s->handles_open--;
    maybe_stopped(s);
}

static void on_guard_closed(uv_handle_t *h)
{
    stream_adapter *s = ((sb_conn_guard *)h->data)->data;
    s->handles_open--;
    maybe_stopped(s);
}

static void stream_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    stream_adapter *s = (stream_adapter *)a;
    s->stopping = 1;
    s->stopped_cb = cb;
    if (s->acceptor != NULL) {
        sb_socket_listener_close(s->acceptor, on_acceptor_closed);
        s->acceptor = NULL;
    }
    if (s->listener != NULL) {
        uv_close((uv_handle_t *)s->listener, on_own_handle_closed);
        s->listener = NULL;
        if (!s->is_tcp && a->cfg->path != NULL)
            sb_socket_unlink_local(a->cfg->path);
    }
    if (s->reconnect != NULL) {
        uv_close((uv_handle_t *)s->reconnect, on_own_handle_closed);
        s->reconnect = NULL;
    }
    for (sb_conn *c = s->conns; c != NULL; c = c->next)
        sb_conn_close(c, NULL);
    if (s->guard_open) {
        s->guard_open = 0;
        sb_conn_guard_close(&s->guard, on_guard_closed);
    }
    maybe_stopped(s);
}

/* A reload kept the adapter: its certificate and key may have been renewed
 * under the same file names. */
static void stream_refresh(sb_adapter *a)
{
    stream_adapter *s = (stream_adapter *)a;
    char what[200];
    sb_error err;
    int changed;
    if (s->tls == NULL || s->stopping)
        return;
    if (sb_tls_ctx_reload(s->tls, a->cfg, &changed, &err) != 0) {
        sb_log(SB_LOG_ERROR, a->name, "reload: %s; keeping the TLS certificate in use", err.msg);
        return;
    }
    sb_tls_ctx_describe(s->tls, what, sizeof(what));
    if (changed)
        sb_log(SB_LOG_INFO, a->name, "reload: new TLS certificate (%s)", what);
    else
        sb_log(SB_LOG_DEBUG, a->name, "reload: TLS files re-read, same certificate (%s)", what);
}

static void stream_destroy(sb_adapter *a)
{
    sb_tls_ctx_free(((stream_adapter *)a)->tls);
    sb_free(a);
}

static int stream_deliver(sb_adapter *a, sb_delivery *d)
{
    stream_adapter *s = (stream_adapter *)a;
    sb_conn *c = s->rr != NULL && s->rr->next != NULL ? s->rr->next : s->conns;
    int rc;
    if (c == NULL || s->stopping)
        return SB_EBUSY;
    /* Skip peers whose output is backed up, and TLS peers whose handshake
     * is not done (their protocol has not started: proto is NULL). */
    for (sb_conn *start = c; c->out_paused || c->closing || c->proto == NULL;) {
        c = c->next != NULL ? c->next : s->conns;
        if (c == start)
            return SB_EBUSY;
    }
    s->rr = c;
    rc = sb_raw_deliver(c, d);
    if (rc == SB_EINVAL) {
        sb_delivery_done(d, SB_EINVAL,
                         "payload contains a newline; it cannot be sent with line framing");
        return 0;
    }
    return rc == 0 ? 0 : SB_EBUSY;
}

/* tcp, unix and (on POSIX) pipe differ only in name: the config decides. */
/* An MQTT listener is only a source: its clients subscribe for themselves. */
static unsigned stream_caps_of(const sb_adapter_config *cfg)
{
    if (cfg->protocol != NULL && strcmp(cfg->protocol, "mqtt") == 0)
        return SB_CAP_SOURCE;
    return SB_CAP_SOURCE | SB_CAP_SINK;
}

#define STREAM_TYPE(type_name)                                                                     \
    {                                                                                              \
        .version = SB_ADAPTER_VERSION, .name = type_name, .caps = SB_CAP_SOURCE | SB_CAP_SINK,     \
        .caps_of = stream_caps_of, .validate = stream_validate, .create = stream_create,           \
        .start = stream_start, .deliver = stream_deliver, .stop = stream_stop,                     \
        .destroy = stream_destroy, .refresh = stream_refresh,                                      \
    }

const sb_adapter_type sb_adapter_tcp = STREAM_TYPE("tcp");
const sb_adapter_type sb_adapter_unix = STREAM_TYPE("unix");
/* On POSIX, `type: pipe` is a Unix domain socket (the same config serves both). */
const sb_adapter_type sb_adapter_pipe_unix = STREAM_TYPE("pipe");
