/* Connections: output coalescing, delivery acks, backpressure (see conn.h). */
#include "adapters/conn.h"
#include "service/alloc.h"
#include "service/log.h"

#include <string.h>

const sb_protocol *sb_protocol_find(const char *name)
{
    if (name == NULL || strcmp(name, "raw") == 0)
        return &sb_protocol_raw;
    if (strcmp(name, "jsonl") == 0)
        return &sb_protocol_jsonl;
    if (strcmp(name, "mqtt") == 0)
        return &sb_protocol_mqtt;
    return NULL;
}

static void update_reading(sb_conn *c)
{
    if (c->closing || c->read_ended)
        return;
    c->transport_ops->read(c, !(c->paused || c->out_paused));
}

int sb_conn_start(sb_conn *c, sb_adapter *a, const sb_protocol *proto, const sb_conn_transport *t,
                  void *tdata, const char *peer)
{
    int rc;
    c->adapter = a;
    c->proto = proto;
    c->transport_ops = t;
    c->tdata = tdata;
    c->refs = 1;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    rc = proto->open(c);
    if (rc != 0)
        return rc;
    update_reading(c);
    return 0;
}

void sb_conn_input(sb_conn *c, const char *data, size_t len)
{
    int rc;
    if (c->closing)
        return;
    sb_conn_ref(c);
    rc = c->proto->data(c, data, len);
    if (rc != 0)
        sb_conn_close(c, NULL);
    sb_conn_unref(c);
}

void sb_conn_input_end(sb_conn *c, int err, const char *why)
{
    c->read_ended = 1;
    sb_conn_close(c, err != 0 ? why : NULL);
}

void sb_conn_pause(sb_conn *c)
{
    c->paused = 1;
    update_reading(c);
}

void sb_conn_resume(sb_conn *c)
{
    c->paused = 0;
    update_reading(c);
}

static void finish_deliveries(sb_delivery *d, int status, const char *why)
{
    while (d != NULL) {
        sb_delivery *next = d->next;
        sb_delivery_done(d, status, why);
        d = next;
    }
}

static void start_write(sb_conn *c);

void sb_conn_write_done(sb_conn *c, int status, const char *why)
{
    sb_delivery *done = c->wdel;
    c->writing = 0;
    c->wdel = NULL;
    if (status != 0 && !c->closing)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: write failed: %s", c->peer,
               why != NULL ? why : sb_strerror(status));
    finish_deliveries(done, status == 0 ? 0 : SB_ECLOSED,
                      status == 0 ? NULL : "connection closed before the write completed");
    if (status != 0)
        sb_conn_close(c, NULL);
    else
        start_write(c);
    if (c->close_after_write && !c->writing)
        sb_conn_close(c, NULL);
    if (c->out_paused && c->olen < SB_CONN_MAX_OUTPUT / 2) {
        c->out_paused = 0;
        update_reading(c);
        if (c->proto->drained != NULL)
            c->proto->drained(c);
        /* A sink refused deliveries while this output was backed up: its
         * bindings wait for this to offer them again. */
        sb_adapter_sink_ready(c->adapter);
    }
    sb_conn_unref(c);
}

static void start_write(sb_conn *c)
{
    char *buf;
    size_t len;
    if (c->writing || c->olen == 0 || c->closing)
        return;
    /* Output that completes no delivery goes out at once if the transport
     * takes it all: no write request to complete later, which (libuv 1.44)
     * re-arms the socket with an epoll_ctl after every write, once per
     * message with thousands of connections taking one each. Once per loop
     * turn (as far as the loop's clock tells): what follows in the same
     * turn waits for a write request and goes out with it in one write. */
    if (c->odel_head == NULL && c->try_write != NULL &&
        c->try_write_ms != uv_now(c->adapter->loop)) {
        size_t n;
        c->try_write_ms = uv_now(c->adapter->loop);
        n = c->try_write(c, c->obuf, c->olen);
        if (n == c->olen) {
            sb_free(c->obuf);
            c->obuf = NULL;
            c->olen = c->ocap = 0;
            if (c->close_after_write)
                sb_conn_close(c, NULL);
            return;
        }
        if (n > 0) {
            memmove(c->obuf, c->obuf + n, c->olen - n);
            c->olen -= n;
        }
    }
    buf = c->obuf;
    len = c->olen;
    c->wdel = c->odel_head;
    c->obuf = NULL;
    c->olen = c->ocap = 0;
    c->odel_head = c->odel_tail = NULL;
    c->writing = 1;
    sb_conn_ref(c);
    if (c->transport_ops->write(c, buf, len) != 0) {
        c->writing = 0;
        finish_deliveries(c->wdel, SB_ECLOSED, "write failed");
        c->wdel = NULL;
        sb_conn_close(c, "write failed");
        sb_conn_unref(c);
    }
}

int sb_conn_send2(sb_conn *c, const void *a, size_t alen, const void *b, size_t blen,
                  sb_delivery *d)
{
    size_t need;
    if (c->closing)
        return SB_ECLOSED;
    need = c->olen + alen + blen;
    if (need > c->ocap) {
        /* small first: most writes are one small packet, and a 4 KiB
         * block per write is what the allocator then spends its time on */
        size_t cap = c->ocap == 0 ? 512 : c->ocap;
        char *n;
        while (cap < need)
            cap *= 2;
        n = sb_realloc(c->obuf, cap);
        if (n == NULL)
            return SB_ENOMEM;
        c->obuf = n;
        c->ocap = cap;
    }
    if (alen > 0)
        memcpy(c->obuf + c->olen, a, alen);
    if (blen > 0)
        memcpy(c->obuf + c->olen + alen, b, blen);
    c->olen = need;
    if (d != NULL) {
        d->next = NULL;
        if (c->odel_tail != NULL)
            c->odel_tail->next = d;
        else
            c->odel_head = d;
        c->odel_tail = d;
    }
    if (!c->writing)
        start_write(c);
    else if (c->olen > SB_CONN_MAX_OUTPUT && !c->out_paused) {
        c->out_paused = 1;
        update_reading(c);
    }
    return 0;
}

int sb_conn_send(sb_conn *c, const void *data, size_t len, sb_delivery *d)
{
    return sb_conn_send2(c, data, len, NULL, 0, d);
}

int sb_conn_anonymous_refused(sb_conn *c)
{
    if (c->user != NULL || c->adapter->trusted || sb_adapter_config_anonymous(c->adapter->cfg))
        return 0;
    sb_log(SB_LOG_WARN, c->adapter->name,
           "peer %s: refused: anonymous clients are not allowed on this listener", c->peer);
    return SB_EAUTH;
}

const struct sb_auth *sb_conn_acl(sb_conn *c)
{
    return c->adapter->trusted ? NULL : sb_broker_auth(c->adapter->broker);
}

void sb_conn_ref(sb_conn *c)
{
    c->refs++;
}

void sb_conn_unref(sb_conn *c)
{
    if (--c->refs > 0)
        return;
    sb_free(c->obuf);
    sb_free(c->user);
    sb_free(c);
}

void sb_conn_transport_closed(sb_conn *c)
{
    if (c->session != NULL) /* NULL when the protocol failed to open */
        c->proto->closed(c);
    if (c->on_closed != NULL)
        c->on_closed(c);
    sb_conn_unref(c);
}

void sb_conn_close_after_write(sb_conn *c, const char *why)
{
    if (c->closing || c->close_after_write)
        return;
    if (why != NULL)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s", c->peer, why);
    c->close_after_write = 1;
    c->paused = 1;
    update_reading(c);
    if (!c->writing && c->olen == 0)
        sb_conn_close(c, NULL);
}

void sb_conn_close(sb_conn *c, const char *why)
{
    sb_delivery *pending;
    if (c->closing)
        return;
    c->closing = 1;
    if (why != NULL)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s", c->peer, why);
    else
        sb_log(SB_LOG_DEBUG, c->adapter->name, "peer %s: connection closed", c->peer);
    pending = c->odel_head;
    c->odel_head = c->odel_tail = NULL;
    c->olen = 0;
    finish_deliveries(pending, SB_ECLOSED, "connection closed before the write");
    /* The write in flight is cancelled: its deliveries end now too, so a
     * protocol may detach from the broker right after closing (its
     * deliveries are freed then) without this connection holding any. */
    pending = c->wdel;
    c->wdel = NULL;
    finish_deliveries(pending, SB_ECLOSED, "connection closed before the write completed");
    c->transport_ops->close(c);
}
