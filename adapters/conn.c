/* Stream connections over libuv streams (see conn.h). */
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
    return NULL;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = sb_malloc(65536);
    buf->len = buf->base != NULL ? 65536 : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sb_conn *c = s->data;
    if (n > 0 && !c->closing) {
        int rc;
        sb_conn_ref(c);
        rc = c->proto->data(c, buf->base, (size_t)n);
        if (rc != 0)
            sb_conn_close(c, NULL);
        sb_conn_unref(c);
    } else if (n < 0) {
        if (n == UV_EOF && c->out != NULL && c->out != c->in && !c->closing) {
            /* A child closed its stdout but may still read its stdin (a
             * filter writing to a file): keep the write side open. */
            uv_read_stop(c->in);
            c->in_eof = 1;
        } else if (n != UV_EOF) {
            sb_conn_close(c, uv_strerror((int)n));
        } else {
            sb_conn_close(c, NULL);
        }
    }
    sb_free(buf->base);
}

static void update_reading(sb_conn *c)
{
    if (c->closing || c->in == NULL || c->in_eof)
        return;
    if (c->paused || c->out_paused)
        uv_read_stop(c->in);
    else
        uv_read_start(c->in, on_alloc, on_read);
}

int sb_conn_start(sb_conn *c, sb_adapter *a, const sb_protocol *proto, uv_stream_t *in,
                  uv_stream_t *out, const char *peer)
{
    int rc;
    c->adapter = a;
    c->proto = proto;
    c->in = in;
    c->out = out;
    c->refs = 1;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    if (in != NULL)
        in->data = c;
    if (out != NULL)
        out->data = c;
    rc = proto->open(c);
    if (rc != 0)
        return rc;
    update_reading(c);
    return 0;
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

static void on_write(uv_write_t *req, int status)
{
    sb_conn *c = req->data;
    sb_delivery *done = c->wdel;
    c->writing = 0;
    sb_free(c->wbuf);
    c->wbuf = NULL;
    c->wdel = NULL;
    if (status != 0 && !c->closing)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: write failed: %s", c->peer,
               uv_strerror(status));
    finish_deliveries(done, status == 0 ? 0 : SB_ECLOSED,
                      status == 0 ? NULL : "connection closed before the write completed");
    if (status != 0)
        sb_conn_close(c, NULL);
    else
        start_write(c);
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
    uv_buf_t buf;
    int rc;
    if (c->writing || c->olen == 0 || c->closing)
        return;
    buf = uv_buf_init(c->obuf, (unsigned)c->olen);
    c->wbuf = c->obuf;
    c->wdel = c->odel_head;
    c->obuf = NULL;
    c->olen = c->ocap = 0;
    c->odel_head = c->odel_tail = NULL;
    c->writing = 1;
    c->wreq.data = c;
    sb_conn_ref(c);
    rc = uv_write(&c->wreq, c->out, &buf, 1, on_write);
    if (rc != 0) {
        c->writing = 0;
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: write failed: %s", c->peer,
               uv_strerror(rc));
        finish_deliveries(c->wdel, SB_ECLOSED, "write failed");
        c->wdel = NULL;
        sb_free(c->wbuf);
        c->wbuf = NULL;
        sb_conn_close(c, NULL);
        sb_conn_unref(c);
    }
}

int sb_conn_send2(sb_conn *c, const void *a, size_t alen, const void *b, size_t blen,
                  sb_delivery *d)
{
    size_t need;
    if (c->closing || c->out == NULL)
        return SB_ECLOSED;
    need = c->olen + alen + blen;
    if (need > c->ocap) {
        size_t cap = c->ocap == 0 ? 4096 : c->ocap;
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

void sb_conn_ref(sb_conn *c)
{
    c->refs++;
}

void sb_conn_unref(sb_conn *c)
{
    if (--c->refs > 0)
        return;
    sb_free(c->obuf);
    sb_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    sb_conn *c = h->data;
    int last = c->out == NULL || c->out == c->in || (uv_handle_t *)c->out == h
                   ? (c->in == NULL || (uv_handle_t *)c->in == h || uv_is_closing((uv_handle_t *)c->in))
                   : 0;
    sb_free(h);
    if ((uv_handle_t *)c->in == h)
        c->in = NULL;
    if ((uv_handle_t *)c->out == h)
        c->out = NULL;
    (void)last;
    if (c->in != NULL || c->out != NULL)
        return;
    /* Both handles closed: tell the protocol and the transport. */
    c->proto->closed(c);
    if (c->on_closed != NULL)
        c->on_closed(c);
    sb_conn_unref(c);
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
    if (c->in != NULL && c->in == c->out) {
        c->out = NULL;
        uv_close((uv_handle_t *)c->in, on_handle_closed);
        return;
    }
    if (c->in != NULL)
        uv_close((uv_handle_t *)c->in, on_handle_closed);
    if (c->out != NULL)
        uv_close((uv_handle_t *)c->out, on_handle_closed);
    if (c->in == NULL && c->out == NULL) {
        c->proto->closed(c);
        if (c->on_closed != NULL)
            c->on_closed(c);
        sb_conn_unref(c);
    }
}
