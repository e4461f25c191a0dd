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
#include "adapters/stream_keys.h"
#include "adapters/conn.h"
#include "adapters/protocol/mqtt/bridge.h"
#include "adapters/protocol/raw.h"
#include "adapters/socket/socket.h"
#include "adapters/socket/tls.h"
#include "adapters/stream_core.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform.h"

#include <stdio.h>
#include <string.h>

typedef struct stream_adapter {
    sb_adapter base;
    sb_stream st; /* connections, delivery, reconnect, stop accounting */
    int is_tcp;
    int is_server;
    const sb_protocol *proto;
    sb_tls_ctx *tls; /* NULL: plaintext */
    uv_stream_t *listener;
    sb_socket_listener *acceptor; /* accepts on listener */
    unsigned long serial;
    /* an MQTT client: the bridge, and which upstream address is dialled
     * (0: connect, i: failover[i - 1]) */
    sb_mqtt_bridge *bridge;
    size_t addr;
} stream_adapter;

static int stream_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    stream_adapter *s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    s->is_tcp = strcmp(cfg->type, "tcp") == 0;
    s->is_server = s->is_tcp ? SB_STREAM_CFG(cfg)->listen != NULL : SB_STREAM_CFG(cfg)->path != NULL;
    s->proto = sb_protocol_find(SB_STREAM_CFG(cfg)->protocol);
    if (s->is_tcp && sb_stream_mqtt_client(cfg))
        s->proto = &sb_protocol_mqtt_bridge;
    *out = &s->base;
    return 0;
}

/* ---- connections ---- */

static void on_handle_free(uv_handle_t *h)
{
    sb_free(h);
}

/* A TLS connection finished its handshake: it may take deliveries, and a
 * client's backoff starts over. */
static void on_tls_ready(sb_conn *c)
{
    stream_adapter *s = (stream_adapter *)c->adapter;
    if (s->bridge != NULL)
        return; /* the link is up when upstream accepts the session */
    if (!s->is_server)
        sb_stream_link_up(&s->st);
    sb_adapter_sink_ready(&s->base);
}

static int add_conn(stream_adapter *s, uv_stream_t *h, const char *peer)
{
    sb_conn *c = sb_stream_conn_new(&s->st);
    int rc;
    if (c == NULL) {
        uv_close((uv_handle_t *)h, on_handle_free);
        return SB_ENOMEM;
    }
    if (s->tls != NULL) {
        /* On failure nothing was taken: h and c are still ours. */
        if ((rc = sb_conn_start_tls(c, &s->base, s->proto, s->tls, (uv_tcp_t *)h, peer,
                                    on_tls_ready)) != 0) {
            sb_free(c);
            uv_close((uv_handle_t *)h, on_handle_free);
            return rc;
        }
        sb_stream_add(&s->st, c);
        if (s->bridge == NULL)
            sb_stream_log_connected(&s->st, c, " (TLS handshake)");
        return 0;
    }
    sb_stream_add(&s->st, c);
    rc = sb_conn_start_uv(c, &s->base, s->proto, h, h, peer);
    if (rc != 0) {
        sb_conn_close(c, "cannot start the protocol session");
        return rc;
    }
    if (s->bridge != NULL)
        return 0; /* connected once upstream accepts the session (CONNACK) */
    sb_stream_log_connected(&s->st, c, "");
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
    int max = SB_STREAM_CFG(s->base.cfg)->max_connections > 0 ? SB_STREAM_CFG(s->base.cfg)->max_connections : 64;

    peer_name(s, h, peer, sizeof(peer));
    /* A full listener makes room by closing the connection that has waited
     * longest without identifying itself (those closing still count until
     * their handles are closed, an iteration later). */
    if (s->st.conn_count >= max && !sb_conn_guard_evict(&s->st.guard, peer)) {
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

static const char *upstream(const stream_adapter *s);
static void next_address(stream_adapter *s);

static void on_connect(uv_connect_t *req, int status)
{
    stream_adapter *s = req->data;
    uv_stream_t *h = req->handle;
    char peer[128];
    sb_free(req);
    s->st.connecting = 0;
    s->st.pending--;
    if (s->base.stopping || status != 0) {
        uv_close((uv_handle_t *)h, on_handle_free);
        if (status != 0) {
            const char *failed = s->st.display;
            next_address(s);
            s->st.display = failed; /* the log names the address that failed */
            sb_stream_connect_failed(&s->st, uv_strerror(status));
            s->st.display = upstream(s);
        }
        sb_stream_maybe_stopped(&s->st);
        return;
    }
    if (s->tls == NULL && s->bridge == NULL)
        sb_stream_link_up(&s->st); /* with TLS, once the handshake is done */
    snprintf(peer, sizeof(peer), "%s", upstream(s));
    if (s->is_tcp)
        uv_tcp_nodelay((uv_tcp_t *)h, 1);
    if (add_conn(s, h, peer) != 0 && s->st.conns == NULL) {
        sb_log(SB_LOG_ERROR, s->base.name, "peer %s: cannot start session", peer);
        sb_stream_retry(&s->st);
    }
}

/* The upstream address dialled now. */
static const char *upstream(const stream_adapter *s)
{
    const sb_stream_settings *c = SB_STREAM_CFG(s->base.cfg);
    return s->addr == 0 ? c->connect : c->failover[s->addr - 1];
}

/* The next attempt dials the next address (failover, an MQTT client). */
static void next_address(stream_adapter *s)
{
    size_t n = SB_STREAM_CFG(s->base.cfg)->failover_count + 1;
    if (s->bridge == NULL || n == 1)
        return;
    s->addr = (s->addr + 1) % n;
    s->st.display = upstream(s);
}

/* An MQTT client's connection closed: refused by upstream (logged once per
 * change, as a failed attempt), or a lost link; either way the next
 * attempt, after the backoff, dials the next address. */
static void bridge_conn_closed(sb_stream *st, sb_conn *c)
{
    stream_adapter *s = (stream_adapter *)st->adapter;
    const char *why = sb_mqtt_bridge_refusal(s->bridge), *was = st->display;
    if (s->base.stopping)
        return;
    if (c->proto == NULL) /* the TLS handshake failed (logged with its reason) */
        why = "TLS handshake failed";
    next_address(s);
    st->display = was;
    if (why != NULL)
        sb_stream_connect_failed(st, why);
    else
        sb_stream_link_lost(st);
    st->display = upstream(s);
}

static int bridge_busy(sb_stream *st)
{
    return sb_mqtt_bridge_busy(((stream_adapter *)st->adapter)->bridge);
}

static void start_connect(sb_stream *st)
{
    stream_adapter *s = (stream_adapter *)st->adapter;
    uv_connect_t *req = sb_malloc(sizeof(*req));
    uv_stream_t *h = new_stream(s);
    if (req == NULL || h == NULL) {
        sb_free(req);
        if (h != NULL)
            uv_close((uv_handle_t *)h, on_handle_free);
        sb_stream_retry(st);
        return;
    }
    req->data = s;
    st->connecting = 1;
    st->pending++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        int rc;
        sb_socket_parse_addr(upstream(s), &ss, NULL);
        rc = uv_tcp_connect(req, (uv_tcp_t *)h, (struct sockaddr *)&ss, on_connect);
        if (rc != 0) {
            req->handle = h;
            on_connect(req, rc);
        }
    } else {
        uv_pipe_connect(req, (uv_pipe_t *)h, SB_STREAM_CFG(s->base.cfg)->connect, on_connect);
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

    if (s->is_tcp && sb_stream_tls(cfg) && (rc = sb_tls_ctx_new(&s->tls, cfg, err)) != 0)
        return rc;
    sb_stream_init(&s->st, a, s->is_server, SB_STREAM_CFG(cfg)->connect);
    s->st.connect = start_connect;
    if (s->proto == &sb_protocol_mqtt_bridge) {
        if ((rc = sb_mqtt_bridge_new(&s->bridge, a, &s->st, err)) != 0)
            return rc;
        s->st.proto_ctx = s->bridge;
        s->st.closed = bridge_conn_closed;
        s->st.busy = bridge_busy;
        s->st.jitter = 1;
    }
    if (!s->is_server) {
        if ((rc = sb_stream_open_timer(&s->st, err)) != 0)
            return rc;
        sb_log(SB_LOG_INFO, a->name, "connecting to %s%s (%s%s)", SB_STREAM_CFG(cfg)->connect,
               SB_STREAM_CFG(cfg)->failover_count > 0 ? " (and its failover addresses)" : "",
               s->proto->name, s->tls != NULL ? " over TLS" : "");
        sb_stream_connect(&s->st);
        return 0;
    }
    sb_stream_open_guard(&s->st);
    s->listener = new_stream(s);
    if (s->listener == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    s->listener->data = s;
    s->st.pending++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        if ((rc = sb_socket_parse_addr(SB_STREAM_CFG(cfg)->listen, &ss, err)) != 0 ||
            (rc = sb_socket_bind_tcp((uv_tcp_t *)s->listener, (struct sockaddr *)&ss, SB_STREAM_CFG(cfg)->listen,
                                     err)) != 0)
            return prefix_error(err, a->name, rc);
    } else if ((rc = sb_socket_bind_local((uv_pipe_t *)s->listener, SB_STREAM_CFG(cfg)->path, err)) != 0) {
        return rc;
    }
    if ((rc = sb_socket_listen(&s->acceptor, s->listener, s->is_tcp, on_accepted, s, a->name,
                               s->is_tcp ? SB_STREAM_CFG(cfg)->listen : SB_STREAM_CFG(cfg)->path, err)) != 0)
        return prefix_error(err, a->name, rc);
    s->st.pending++;
    if (s->is_tcp) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        char where[128];
        uv_tcp_getsockname((uv_tcp_t *)s->listener, (struct sockaddr *)&ss, &len);
        sb_socket_format_addr((struct sockaddr *)&ss, where, sizeof(where));
        sb_log(SB_LOG_INFO, a->name, "listening on tcp %s (%s%s)", where, s->proto->name,
               s->tls != NULL ? " over TLS" : "");
    } else {
        sb_log(SB_LOG_INFO, a->name, "listening on %s (%s)", SB_STREAM_CFG(cfg)->path, s->proto->name);
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    stream_adapter *s = h->data;
    sb_free(h);
    sb_stream_release(&s->st);
}

static void on_acceptor_closed(void *ctx)
{
    stream_adapter *s = ctx;
    sb_stream_release(&s->st);
}

static void stream_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    stream_adapter *s = (stream_adapter *)a;
    if (s->st.adapter == NULL) /* never started */
        sb_stream_init(&s->st, a, s->is_server, SB_STREAM_CFG(a->cfg)->connect);
    if (s->acceptor != NULL) {
        sb_socket_listener_close(s->acceptor, on_acceptor_closed);
        s->acceptor = NULL;
    }
    if (s->listener != NULL) {
        uv_close((uv_handle_t *)s->listener, on_listener_closed);
        s->listener = NULL;
        if (!s->is_tcp && SB_STREAM_CFG(a->cfg)->path != NULL)
            sb_socket_unlink_local(SB_STREAM_CFG(a->cfg)->path);
    }
    sb_mqtt_bridge_stop(s->bridge);
    sb_stream_stop(&s->st, cb);
    sb_stream_maybe_stopped(&s->st);
}

/* A reload kept the adapter: its certificate and key may have been renewed
 * under the same file names. */
static void stream_refresh(sb_adapter *a)
{
    stream_adapter *s = (stream_adapter *)a;
    char what[200];
    sb_error err;
    int changed;
    if (s->tls == NULL || a->stopping)
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
    sb_mqtt_bridge_free(((stream_adapter *)a)->bridge);
    sb_tls_ctx_free(((stream_adapter *)a)->tls);
    sb_free(a);
}

static int stream_deliver(sb_adapter *a, sb_delivery *d)
{
    stream_adapter *s = (stream_adapter *)a;
    if (s->bridge != NULL)
        return sb_mqtt_bridge_deliver(s->bridge, d);
    return sb_stream_deliver(&s->st, d);
}

/* tcp, unix and (on POSIX) pipe differ only in name: the config decides. */
/* An MQTT listener is only a source: its clients subscribe for themselves
 * (an MQTT client, the bridge, is both). */
static unsigned stream_caps_of(const sb_adapter_config *cfg)
{
    if (SB_STREAM_CFG(cfg)->protocol != NULL && strcmp(SB_STREAM_CFG(cfg)->protocol, "mqtt") == 0 &&
        !sb_stream_mqtt_client(cfg))
        return SB_CAP_SOURCE;
    return SB_CAP_SOURCE | SB_CAP_SINK;
}

static void *stream_stats(sb_adapter *a)
{
    return sb_stream_stats(&((stream_adapter *)a)->st);
}

#define STREAM_TYPE(type_name)                                                                     \
    {                                                                                              \
        .version = SB_ADAPTER_VERSION, .name = type_name, .caps = SB_CAP_SOURCE | SB_CAP_SINK,     \
        .caps_of = stream_caps_of, .create = stream_create,           \
        .start = stream_start, .deliver = stream_deliver, .stop = stream_stop,                     \
        .destroy = stream_destroy, .refresh = stream_refresh, .stats = stream_stats,              \
    }

const sb_adapter_type sb_adapter_tcp = STREAM_TYPE("tcp");
#ifndef _WIN32
const sb_adapter_type sb_adapter_unix = STREAM_TYPE("unix");
/* On POSIX, `type: pipe` is a Unix domain socket (the same config serves
 * both); on Windows pipe/win/ implements it. */
const sb_adapter_type sb_adapter_pipe = STREAM_TYPE("pipe");
#endif
