/* The libuv stream transport of connections (TCP, Unix sockets, child pipes). */
#include "adapters/conn.h"
#include "service/alloc.h"

typedef struct uv_transport {
    uv_stream_t *in, *out;
    int in_eof;
} uv_transport;

typedef struct uv_write_req {
    uv_write_t req;
    sb_conn *conn;
    char *buf;
} uv_write_req;

/* A read is handled before the next one starts (protocols copy what they
 * keep), so one buffer serves every connection of the loop's thread instead
 * of 64 KiB allocated and freed per read; another is taken only if a read
 * ever begins while that one is in use. */
#define READ_BUF_SIZE 65536
static _Thread_local char read_buf[READ_BUF_SIZE];
static _Thread_local int read_buf_busy;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    if (!read_buf_busy) {
        read_buf_busy = 1;
        buf->base = read_buf;
    } else {
        buf->base = sb_malloc(READ_BUF_SIZE);
    }
    buf->len = buf->base != NULL ? READ_BUF_SIZE : 0;
}

static void release_buf(const uv_buf_t *buf)
{
    if (buf->base == read_buf)
        read_buf_busy = 0;
    else
        sb_free(buf->base);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sb_conn *c = s->data;
    uv_transport *t = c->tdata;
    if (n > 0) {
        sb_conn_input(c, buf->base, (size_t)n);
    } else if (n == UV_EOF && t->out != NULL && t->out != t->in) {
        /* A child closed its stdout but may still read its stdin (a filter
         * writing to a file): keep the write side open. */
        uv_read_stop(s);
        t->in_eof = 1;
        sb_conn_input_eof(c);
    } else if (n < 0) {
        sb_conn_input_end(c, n == UV_EOF ? 0 : SB_ECLOSED, uv_strerror((int)n));
    }
    release_buf(buf);
}

static void uv_t_read(sb_conn *c, int on)
{
    uv_transport *t = c->tdata;
    if (t->in == NULL || t->in_eof)
        return;
    if (on)
        uv_read_start(t->in, on_alloc, on_read);
    else
        uv_read_stop(t->in);
}

static void on_write(uv_write_t *req, int status)
{
    uv_write_req *w = (uv_write_req *)req;
    sb_conn *c = w->conn;
    sb_free(w->buf);
    sb_free(w);
    sb_conn_write_done(c, status == 0 ? 0 : SB_ECLOSED, status == 0 ? NULL : uv_strerror(status));
}

static int uv_t_write(sb_conn *c, char *buf, size_t off, size_t len)
{
    uv_transport *t = c->tdata;
    uv_write_req *w = sb_malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init(buf + off, (unsigned)len);
    if (w == NULL || t->out == NULL) {
        sb_free(w);
        sb_free(buf);
        return SB_ECLOSED;
    }
    w->conn = c;
    w->buf = buf;
    if (uv_write(&w->req, t->out, &b, 1, on_write) != 0) {
        sb_free(w);
        sb_free(buf);
        return SB_ECLOSED;
    }
    return 0;
}

static size_t uv_t_try_write(sb_conn *c, const void *buf, size_t len)
{
    uv_transport *t = c->tdata;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int n;
    if (t->out == NULL)
        return 0;
    n = uv_try_write(t->out, &b, 1);
    return n > 0 ? (size_t)n : 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    sb_conn *c = h->data;
    uv_transport *t = c->tdata;
    if ((uv_handle_t *)t->in == h)
        t->in = NULL;
    if ((uv_handle_t *)t->out == h)
        t->out = NULL;
    sb_free(h);
    if (t->in != NULL || t->out != NULL)
        return;
    sb_free(t);
    c->tdata = NULL;
    sb_conn_transport_closed(c);
}

static void uv_t_close(sb_conn *c)
{
    uv_transport *t = c->tdata;
    if (t->in != NULL && t->in == t->out) {
        t->out = NULL;
        uv_close((uv_handle_t *)t->in, on_handle_closed);
        return;
    }
    if (t->in == NULL && t->out == NULL) {
        sb_free(t);
        c->tdata = NULL;
        sb_conn_transport_closed(c);
        return;
    }
    if (t->in != NULL)
        uv_close((uv_handle_t *)t->in, on_handle_closed);
    if (t->out != NULL)
        uv_close((uv_handle_t *)t->out, on_handle_closed);
}

static const sb_conn_transport uv_transport_ops = {uv_t_read, uv_t_write, uv_t_close};

/* Without memory for a transport the streams are closed at once, and the
 * caller's sb_conn_close ends the connection through this one. */
static void uv_t_gone_read(sb_conn *c, int on)
{
    (void)c;
    (void)on;
}

static int uv_t_gone_write(sb_conn *c, char *buf, size_t off, size_t len)
{
    (void)c;
    (void)off;
    (void)len;
    sb_free(buf);
    return SB_ECLOSED;
}

static void uv_t_gone_close(sb_conn *c)
{
    sb_conn_transport_closed(c);
}

static const sb_conn_transport uv_gone_ops = {uv_t_gone_read, uv_t_gone_write, uv_t_gone_close};

static void close_unattached(uv_stream_t *in, uv_stream_t *out)
{
    if (in != NULL)
        uv_close((uv_handle_t *)in, (uv_close_cb)sb_free);
    if (out != NULL && out != in)
        uv_close((uv_handle_t *)out, (uv_close_cb)sb_free);
}

int sb_conn_start_uv(sb_conn *c, sb_adapter *a, const sb_protocol *proto, uv_stream_t *in,
                     uv_stream_t *out, const char *peer)
{
    uv_transport *t = sb_calloc(1, sizeof(*t));
    if (t == NULL) {
        close_unattached(in, out);
        c->adapter = a;
        c->proto = proto;
        c->transport_ops = &uv_gone_ops;
        c->refs = 1;
        snprintf(c->peer, sizeof(c->peer), "%s", peer);
        return SB_ENOMEM;
    }
    t->in = in;
    t->out = out;
    if (in != NULL)
        in->data = c;
    if (out != NULL)
        out->data = c;
    c->try_write = uv_t_try_write;
    return sb_conn_start(c, a, proto, &uv_transport_ops, t, peer);
}
