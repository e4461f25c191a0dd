/*
 * UDP adapter: `listen` publishes every datagram (one message each; the
 * topic template may use {peer}); `connect` is a sink sending each delivery
 * as one datagram (acknowledged when the send completes: UDP itself gives no
 * delivery guarantee). Datagrams cannot be slowed down: when a publish is
 * refused (queue full, disk full) the datagram is dropped and counted.
 * While UDP_MAX_PENDING datagrams wait for their commit, receiving pauses
 * and the socket's buffer holds (or the kernel drops) the next ones, rather
 * than a flood piling up in memory in front of a slow store.
 */
#include "adapters/stream_keys.h"
#include "service/adapter.h"
#include "adapters/protocol/raw.h"
#include "adapters/socket/socket.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/broker.h"
#include "service/log.h"

#include <string.h>

#define UDP_MAX_PENDING 1024

typedef struct udp_adapter {
    sb_adapter base;
    uv_udp_t *h;
    struct sockaddr_storage dest;
    int is_server;
    uint64_t dropped;
    int acl_warned; /* a denied datagram was logged (once: a feed can be busy) */
    char *buf;
    int pending;   /* datagrams published, not yet committed or refused */
    int paused;    /* receiving stopped at UDP_MAX_PENDING */
    int destroyed; /* freed when the last pending publish is done */
    sb_adapter_stopped_cb stopped_cb;
} udp_adapter;

typedef struct udp_send {
    uv_udp_send_t req;
    sb_delivery *d;
} udp_send;

static int udp_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    udp_adapter *u = sb_calloc(1, sizeof(*u));
    if (u == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    u->is_server = SB_STREAM_CFG(cfg)->listen != NULL;
    *out = &u->base;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    udp_adapter *u = h->data;
    (void)suggested;
    buf->base = u->buf;
    buf->len = 65536;
}

static void on_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags);

static void udp_free(udp_adapter *u)
{
    sb_free(u->buf);
    sb_free(u);
}

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    udp_adapter *u = ctx;
    (void)id;
    (void)queues;
    u->pending--;
    if (u->destroyed) {
        if (u->pending == 0)
            udp_free(u);
        return;
    }
    if (status != 0)
        sb_log(SB_LOG_ERROR, u->base.name, "datagram not committed: %s", why);
    if (u->paused && u->pending < UDP_MAX_PENDING / 2 && u->h != NULL && !u->base.stopping &&
        uv_udp_recv_start(u->h, on_alloc, on_recv) == 0)
        u->paused = 0;
}

static void on_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
    udp_adapter *u = h->data;
    char peer[128], source[200], *topic;
    sb_message *m;
    sb_publish_opts opts = {source, 0, NULL};
    sb_error err;

    if (n < 0) {
        sb_log(SB_LOG_WARN, u->base.name, "receive failed: %s", uv_strerror((int)n));
        return;
    }
    if (addr == NULL)
        return;
    sb_socket_format_addr(addr, peer, sizeof(peer));
    if ((flags & UV_UDP_PARTIAL) || (size_t)n > (size_t)SB_STREAM_CFG(u->base.cfg)->max_message) {
        sb_log(SB_LOG_ERROR, u->base.name, "peer %s: datagram larger than max_message %lld dropped",
               peer, (long long)SB_STREAM_CFG(u->base.cfg)->max_message);
        u->dropped++;
        return;
    }
    snprintf(source, sizeof(source), "%s %s", u->base.name, peer);
    topic = sb_raw_topic(SB_STREAM_CFG(u->base.cfg)->topic, u->base.name, peer);
    if (topic != NULL &&
        !sb_auth_allowed(sb_broker_auth(u->base.broker), NULL, NULL, topic, SB_ACL_WRITE)) {
        /* a datagram has no identity: the ACL's anonymous rules apply */
        if (!u->acl_warned)
            sb_log(SB_LOG_WARN, u->base.name,
                   "peer %s: datagram to %s dropped: denied by the ACL (further ones are only "
                   "counted)",
                   peer, topic);
        u->acl_warned = 1;
        sb_free(topic);
        u->dropped++;
        return;
    }
    m = topic != NULL ? sb_message_new(topic, buf->base, (size_t)n) : NULL;
    sb_free(topic);
    if (m == NULL) {
        u->dropped++;
        return;
    }
    if (sb_broker_publish(u->base.broker, m, &opts, on_published, u, &err) != 0) {
        u->dropped++;
        sb_log(SB_LOG_ERROR, u->base.name, "peer %s: datagram dropped: %s", peer, err.msg);
    } else if (++u->pending >= UDP_MAX_PENDING && uv_udp_recv_stop(u->h) == 0) {
        u->paused = 1;
    }
    sb_message_unref(m);
}

static int udp_start(sb_adapter *a, sb_error *err)
{
    udp_adapter *u = (udp_adapter *)a;
    const char *addr = SB_STREAM_CFG(a->cfg)->listen != NULL ? SB_STREAM_CFG(a->cfg)->listen : SB_STREAM_CFG(a->cfg)->connect;
    struct sockaddr_storage ss;
    int rc;

    if ((rc = sb_socket_parse_addr(addr, &ss, err)) != 0)
        return rc;
    u->h = sb_malloc(sizeof(*u->h));
    u->buf = sb_malloc(65536);
    if (u->h == NULL || u->buf == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    uv_udp_init(a->loop, u->h);
    u->h->data = u;
    if (!u->is_server) {
        u->dest = ss;
        sb_log(SB_LOG_INFO, a->name, "sending datagrams to %s", addr);
        return 0;
    }
    rc = uv_udp_bind(u->h, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_udp_recv_start(u->h, on_alloc, on_recv);
    if (rc != 0)
        return sb_error_set(err, rc == UV_EADDRINUSE ? SB_EADDRINUSE : SB_EIO, rc,
                            "adapter %s: cannot listen on udp %s: %s", a->name, addr,
                            uv_strerror(rc));
    sb_log(SB_LOG_INFO, a->name, "listening on udp %s", addr);
    return 0;
}

static void on_sent(uv_udp_send_t *req, int status)
{
    udp_send *s = (udp_send *)req;
    sb_delivery_done(s->d, status == 0 ? 0 : SB_EIO, status == 0 ? NULL : uv_strerror(status));
    sb_free(s);
}

static int udp_deliver(sb_adapter *a, sb_delivery *d)
{
    udp_adapter *u = (udp_adapter *)a;
    udp_send *s;
    uv_buf_t buf;
    int rc;
    if (u->is_server || u->h == NULL || a->stopping)
        return SB_EBUSY;
    if (d->msg->payload_len > 65507) {
        sb_delivery_done(d, SB_ETOOBIG, "payload larger than a UDP datagram (65507 bytes)");
        return 0;
    }
    s = sb_malloc(sizeof(*s));
    if (s == NULL)
        return SB_EBUSY;
    s->d = d;
    buf = uv_buf_init((char *)d->msg->payload, (unsigned)d->msg->payload_len);
    rc = uv_udp_send(&s->req, u->h, &buf, 1, (struct sockaddr *)&u->dest, on_sent);
    if (rc != 0) {
        sb_free(s);
        sb_delivery_done(d, SB_EIO, uv_strerror(rc));
    }
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    udp_adapter *u = h->data;
    sb_free(h);
    u->h = NULL;
    u->stopped_cb(&u->base);
}

static void udp_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    udp_adapter *u = (udp_adapter *)a;
    u->stopped_cb = cb;
    if (u->h == NULL) {
        cb(a);
        return;
    }
    uv_close((uv_handle_t *)u->h, on_closed);
}

static void udp_destroy(sb_adapter *a)
{
    udp_adapter *u = (udp_adapter *)a;
    if (u->pending > 0)
        u->destroyed = 1; /* on_published frees it */
    else
        udp_free(u);
}

static unsigned udp_caps_of(const sb_adapter_config *cfg)
{
    return SB_STREAM_CFG(cfg)->listen != NULL ? SB_CAP_SOURCE : SB_CAP_SINK;
}

const sb_adapter_type sb_adapter_udp = {
    .version = SB_ADAPTER_VERSION,
    .name = "udp",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK,
    .caps_of = udp_caps_of,
    .create = udp_create,
    .start = udp_start,
    .deliver = udp_deliver,
    .stop = udp_stop,
    .destroy = udp_destroy,
};
