/*
 * Blocking TCP and UDP helpers over the harness loop (see harness.h): raw
 * producers, raw sink readers, listeners a `connect` adapter dials, UDP
 * peers. Each call runs the loop until its condition or its deadline, so
 * everything else on the loop (child exits, other sockets) keeps going.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

/* Runs the loop until *flag != 0 or timeout_ms passed; returns *flag. */
typedef struct wait_flag {
    int *flag;
    int fired;
} wait_flag;

static void on_wait_timer(uv_timer_t *t)
{
    ((wait_flag *)t->data)->fired = 1;
}

static void on_free(uv_handle_t *h)
{
    free(h);
}

static int wait_for(int *flag, int timeout_ms)
{
    wait_flag w = {flag, 0};
    uv_timer_t *t;
    if (*flag)
        return *flag;
    t = malloc(sizeof(*t));
    assert_non_null(t);
    uv_timer_init(sbt_loop(), t);
    t->data = &w;
    sbt__start_deadline(t, on_wait_timer, timeout_ms);
    while (!*flag && !w.fired)
        uv_run(sbt_loop(), UV_RUN_ONCE);
    uv_close((uv_handle_t *)t, on_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    return *flag;
}

/* ---- TCP connections ---- */

struct sbt_tcp {
    uv_tcp_t *h; /* freed by its close callback */
    char *buf;
    size_t len, cap;
    int eof; /* EOF or a read error */
    int has_data;
    int closed;
    int connect_done, connect_status;
    int paused;
    int pinned;    /* receive buffer size set */
    sbt_tcp *next; /* a listener's accept queue */
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sbt_tcp *t = h->data;
    (void)suggested;
    if (t->cap - t->len < 65536) {
        char *n = realloc(t->buf, t->cap + 65536 + 1);
        assert_non_null(n);
        t->buf = n;
        t->cap += 65536;
    }
    *buf = uv_buf_init(t->buf + t->len, (unsigned)(t->cap - t->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sbt_tcp *t = s->data;
    (void)buf;
    if (t == NULL)
        return;
    if (n > 0) {
        t->len += (size_t)n;
        t->has_data = 1;
    } else if (n < 0) {
        t->eof = 1;
        t->has_data = 1;
        uv_read_stop(s);
    }
}

static sbt_tcp *tcp_new(void)
{
    sbt_tcp *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    t->h = malloc(sizeof(*t->h));
    assert_non_null(t->h);
    uv_tcp_init(sbt_loop(), t->h);
    t->h->data = t;
    return t;
}

static void on_connect(uv_connect_t *req, int status)
{
    sbt_tcp *t = req->data;
    if (t != NULL) {
        t->connect_done = 1;
        t->connect_status = status;
    }
    free(req);
}

/* The port of an IPv4 address (network byte order, read bytewise: no
 * platform socket header needed). */
static int port_of(const struct sockaddr_storage *ss)
{
    const unsigned char *p = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_port;
    return p[0] << 8 | p[1];
}

static void addr_of(struct sockaddr_in *sa, int port)
{
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, sa), 0);
}

sbt_tcp *sbt_tcp_connect(int port, int timeout_ms)
{
    sbt_tcp *t = tcp_new();
    uv_connect_t *req = malloc(sizeof(*req));
    struct sockaddr_in sa;
    assert_non_null(req);
    addr_of(&sa, port);
    req->data = t;
    if (uv_tcp_connect(req, t->h, (struct sockaddr *)&sa, on_connect) != 0) {
        free(req);
        sbt_tcp_close(t);
        return NULL;
    }
    if (!wait_for(&t->connect_done, timeout_ms)) {
        req->data = NULL; /* completes (cancelled) when the handle closes */
        sbt_tcp_close(t);
        return NULL;
    }
    if (t->connect_status != 0) {
        sbt_tcp_close(t);
        return NULL;
    }
    uv_tcp_nodelay(t->h, 1);
    uv_read_start((uv_stream_t *)t->h, on_alloc, on_read);
    return t;
}

int sbt_tcp_local_port(sbt_tcp *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(t->h, (struct sockaddr *)&ss, &len), 0);
    return port_of(&ss);
}

typedef struct write_state {
    int done, status;
} write_state;

static void on_write(uv_write_t *req, int status)
{
    write_state *w = req->data;
    w->done = 1;
    w->status = status;
    free(req);
}

int sbt_tcp_write(sbt_tcp *t, const void *data, size_t len)
{
    uv_write_t *req = malloc(sizeof(*req));
    /* On the heap: a write that times out completes after the test failed. */
    write_state *w = calloc(1, sizeof(*w));
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int rc;
    assert_non_null(req);
    assert_non_null(w);
    req->data = w;
    rc = uv_write(req, (uv_stream_t *)t->h, &buf, 1, on_write);
    if (rc != 0) {
        free(req);
        free(w);
        return rc;
    }
    if (!wait_for(&w->done, 30000))
        fail_msg("a TCP write of %zu bytes did not complete within 30 s", len);
    rc = w->status;
    free(w);
    return rc;
}

void sbt_tcp_pause(sbt_tcp *t)
{
    int size = 65536;
    if (!t->pinned) {
        uv_recv_buffer_size((uv_handle_t *)t->h, &size);
        t->pinned = 1;
    }
    if (!t->paused && !t->eof)
        uv_read_stop((uv_stream_t *)t->h);
    t->paused = 1;
}

static void resume(sbt_tcp *t)
{
    if (t->paused && !t->eof)
        uv_read_start((uv_stream_t *)t->h, on_alloc, on_read);
    t->paused = 0;
}

int sbt_tcp_read_line(sbt_tcp *t, char *out, size_t cap, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    resume(t);
    for (;;) {
        char *nl = t->len > 0 ? memchr(t->buf, '\n', t->len) : NULL;
        if (nl != NULL) {
            size_t n = (size_t)(nl - t->buf);
            assert_true(n < cap);
            memcpy(out, t->buf, n);
            out[n] = '\0';
            memmove(t->buf, nl + 1, t->len - n - 1);
            t->len -= n + 1;
            return (int)n;
        }
        if (t->eof)
            return -2;
        t->has_data = 0;
        if (sbt_now_ms() >= deadline)
            return -1;
        wait_for(&t->has_data, (int)(deadline - sbt_now_ms()));
    }
}

int sbt_tcp_read_exact(sbt_tcp *t, void *out, size_t n, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    resume(t);
    while (t->len < n) {
        if (t->eof)
            return -2;
        t->has_data = 0;
        if (sbt_now_ms() >= deadline)
            return -1;
        wait_for(&t->has_data, (int)(deadline - sbt_now_ms()));
    }
    memcpy(out, t->buf, n);
    memmove(t->buf, t->buf + n, t->len - n);
    t->len -= n;
    return (int)n;
}

int sbt_tcp_wait_closed(sbt_tcp *t, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    resume(t);
    while (!t->eof) {
        t->len = 0;
        t->has_data = 0;
        if (sbt_now_ms() >= deadline)
            return 0;
        wait_for(&t->has_data, (int)(deadline - sbt_now_ms()));
    }
    return 1;
}

void sbt_tcp_close(sbt_tcp *t)
{
    if (t == NULL)
        return;
    t->h->data = NULL;
    uv_close((uv_handle_t *)t->h, on_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    free(t->buf);
    free(t);
}

/* ---- listeners ---- */

struct sbt_listener {
    uv_tcp_t *h;
    sbt_tcp *queue;
    int pending;
};

static void on_connection(uv_stream_t *server, int status)
{
    sbt_listener *l = server->data;
    sbt_tcp *t, **p;
    if (l == NULL || status != 0)
        return;
    t = tcp_new();
    if (uv_accept(server, (uv_stream_t *)t->h) != 0) {
        sbt_tcp_close(t);
        return;
    }
    uv_read_start((uv_stream_t *)t->h, on_alloc, on_read);
    for (p = &l->queue; *p != NULL; p = &(*p)->next)
        ;
    *p = t;
    l->pending = 1;
}

sbt_listener *sbt_listen(int port)
{
    sbt_listener *l = calloc(1, sizeof(*l));
    struct sockaddr_in sa;
    assert_non_null(l);
    l->h = malloc(sizeof(*l->h));
    assert_non_null(l->h);
    uv_tcp_init(sbt_loop(), l->h);
    l->h->data = l;
    addr_of(&sa, port);
    if (uv_tcp_bind(l->h, (struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)l->h, 16, on_connection) != 0) {
        sbt_listener_close(l);
        return NULL;
    }
    return l;
}

int sbt_listener_port(sbt_listener *l)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(l->h, (struct sockaddr *)&ss, &len), 0);
    return port_of(&ss);
}

sbt_tcp *sbt_accept(sbt_listener *l, int timeout_ms)
{
    sbt_tcp *t;
    l->pending = l->queue != NULL;
    if (!wait_for(&l->pending, timeout_ms))
        return NULL;
    t = l->queue;
    l->queue = t->next;
    t->next = NULL;
    l->pending = l->queue != NULL;
    return t;
}

void sbt_listener_close(sbt_listener *l)
{
    if (l == NULL)
        return;
    while (l->queue != NULL) {
        sbt_tcp *t = l->queue;
        l->queue = t->next;
        sbt_tcp_close(t);
    }
    l->h->data = NULL;
    uv_close((uv_handle_t *)l->h, on_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    free(l);
}

/* ---- UDP ---- */

typedef struct dgram {
    struct dgram *next;
    size_t len;
    char data[];
} dgram;

struct sbt_udp {
    uv_udp_t *h;
    dgram *head, *tail;
    int has;
    char buf[65536];
};

static void on_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sbt_udp *u = h->data;
    (void)suggested;
    *buf = uv_buf_init(u->buf, sizeof(u->buf));
}

static void on_udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *addr,
                        unsigned flags)
{
    sbt_udp *u = h->data;
    dgram *d;
    (void)flags;
    if (u == NULL || n < 0 || addr == NULL)
        return;
    d = malloc(sizeof(*d) + (size_t)n + 1);
    assert_non_null(d);
    d->next = NULL;
    d->len = (size_t)n;
    memcpy(d->data, buf->base, (size_t)n);
    if (u->tail != NULL)
        u->tail->next = d;
    else
        u->head = d;
    u->tail = d;
    u->has = 1;
}

sbt_udp *sbt_udp_bind(int port)
{
    sbt_udp *u = calloc(1, sizeof(*u));
    struct sockaddr_in sa;
    assert_non_null(u);
    u->h = malloc(sizeof(*u->h));
    assert_non_null(u->h);
    uv_udp_init(sbt_loop(), u->h);
    u->h->data = u;
    addr_of(&sa, port);
    if (uv_udp_bind(u->h, (struct sockaddr *)&sa, 0) != 0 ||
        uv_udp_recv_start(u->h, on_udp_alloc, on_udp_recv) != 0) {
        sbt_udp_close(u);
        return NULL;
    }
    return u;
}

int sbt_udp_port(sbt_udp *u)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    assert_int_equal(uv_udp_getsockname(u->h, (struct sockaddr *)&ss, &len), 0);
    return port_of(&ss);
}

static void on_udp_sent(uv_udp_send_t *req, int status)
{
    write_state *w = req->data;
    w->done = 1;
    w->status = status;
    free(req);
}

void sbt_udp_send(sbt_udp *u, int port, const void *data, size_t len)
{
    uv_udp_send_t *req = malloc(sizeof(*req));
    write_state *w = calloc(1, sizeof(*w)); /* on the heap, as in sbt_tcp_write */
    struct sockaddr_in sa;
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int status;
    assert_non_null(req);
    assert_non_null(w);
    addr_of(&sa, port);
    req->data = w;
    assert_int_equal(uv_udp_send(req, u->h, &buf, 1, (struct sockaddr *)&sa, on_udp_sent), 0);
    if (!wait_for(&w->done, 10000))
        fail_msg("a UDP send did not complete");
    status = w->status;
    free(w);
    assert_int_equal(status, 0);
}

int sbt_udp_recv(sbt_udp *u, char *out, size_t cap, int timeout_ms)
{
    dgram *d;
    int n;
    u->has = u->head != NULL;
    if (!wait_for(&u->has, timeout_ms))
        return -1;
    d = u->head;
    u->head = d->next;
    if (u->head == NULL)
        u->tail = NULL;
    assert_true(d->len <= cap);
    memcpy(out, d->data, d->len);
    n = (int)d->len;
    free(d);
    return n;
}

void sbt_udp_close(sbt_udp *u)
{
    if (u == NULL)
        return;
    while (u->head != NULL) {
        dgram *d = u->head;
        u->head = d->next;
        free(d);
    }
    u->h->data = NULL;
    uv_close((uv_handle_t *)u->h, on_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    free(u);
}

int sbt_port_free(int port)
{
    sbt_listener *l = sbt_listen(port);
    sbt_udp *u;
    if (l == NULL)
        return 0;
    sbt_listener_close(l);
    u = sbt_udp_bind(port);
    if (u == NULL)
        return 0;
    sbt_udp_close(u);
    return 1;
}
