/*
 * The HTTP listener (http.h) on libmicrohttpd.
 *
 * libmicrohttpd parses HTTP and runs one thread of its own (its internal
 * polling thread), where every request is answered: the static assets from
 * the binary, /metrics and /api/status from a snapshot of the broker. A
 * snapshot is taken on the loop thread when a request finds none younger
 * than SNAP_MAX_AGE_MS: the server thread wakes the loop (an async handle)
 * and waits on a condition variable, SNAP_WAIT_MS at most (then 503).
 *
 * Limits: connections (broker.http.max_connections), an idle timeout per
 * connection (broker.http.timeout), the memory a connection may use for its
 * request (MEMORY_LIMIT: a longer request line or header is refused by
 * libmicrohttpd), GET and HEAD only, no request body, no percent-encoding
 * in paths (nothing served needs it: "%2f" and friends get 400), exact paths
 * (no file system behind them: "/../" is simply not a path here).
 */
#include "service/http.h"
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/http_int.h"
#include "service/log.h"

/* After uv.h (broker_int.h), which brings the socket headers microhttpd.h
 * needs on Windows (winsock2.h) and POSIX. */
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WHO "http"
#define SNAP_MAX_AGE_MS 1000
#define SNAP_WAIT_MS 5000
#define MEMORY_LIMIT (32 * 1024)
#define PER_PAGE_DEFAULT 50
#define PER_PAGE_MAX 500

struct sb_http {
    sb_broker *b;
    struct MHD_Daemon *d;
    int per_queue;
    char where[80]; /* host:port as bound, for logs */
    uv_async_t wake;     /* server thread -> loop: take a snapshot */
    uv_timer_t sampler;  /* the history's samples */
    int open_handles;
    /* the loop's history of totals (loop thread only) */
    sb_http_sample history[SB_HTTP_SAMPLES];
    size_t history_first, history_count;
    /* shared with the server thread */
    uv_mutex_t mu;
    uv_cond_t cond;
    sb_http_snap *snap; /* the newest, or NULL */
    int64_t last_request; /* mono_ms of the last request for a snapshot */
    uint64_t snap_gen;  /* bumped with every snapshot (or failed attempt) */
    int wanted;         /* the loop was asked for one */
    int stopping;
};

/* ---- snapshots ---- */

static void snap_unref(sb_http *h, sb_http_snap *s)
{
    int last;
    if (s == NULL)
        return;
    uv_mutex_lock(&h->mu);
    last = --s->refs == 0;
    uv_mutex_unlock(&h->mu);
    if (last)
        sb_http__snap_free(s);
}

static int64_t mono_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

static void take_sample(sb_http *h);

/* Loop thread: the server thread asked for a snapshot. */
static void on_wake(uv_async_t *a)
{
    sb_http *h = a->data;
    uint64_t began = uv_hrtime();
    sb_http_snap *s, *old;
    if (h->history_count == 0)
        take_sample(h); /* someone looks again: the chart starts now */
    s = sb_http__snap_take(h->b);
    if (s != NULL) {
        sb_log(SB_LOG_DEBUG, WHO, "snapshot of %zu queues and %zu adapters in %.3f ms",
               s->q_count, s->a_count, (double)(uv_hrtime() - began) / 1e6);
        for (size_t i = 0; i < h->history_count; i++)
            s->history[i] = h->history[(h->history_first + i) % SB_HTTP_SAMPLES];
        s->history_count = h->history_count;
    } else {
        sb_warn(WHO, "out of memory taking a snapshot for a request");
    }
    uv_mutex_lock(&h->mu);
    old = s != NULL ? h->snap : NULL;
    if (s != NULL)
        h->snap = s;
    h->snap_gen++;
    h->wanted = 0;
    uv_cond_broadcast(&h->cond);
    uv_mutex_unlock(&h->mu);
    snap_unref(h, old);
}

/* The chart's samples cost a pass over every queue: they are taken only
 * while someone looks (a request within the chart's span); after a longer
 * pause the chart starts again. */
static void take_sample(sb_http *h)
{
    size_t at;
    if (h->history_count < SB_HTTP_SAMPLES) {
        at = (h->history_first + h->history_count++) % SB_HTTP_SAMPLES;
    } else {
        at = h->history_first;
        h->history_first = (h->history_first + 1) % SB_HTTP_SAMPLES;
    }
    sb_http__sample(h->b, &h->history[at]);
}

static void on_sample(uv_timer_t *t)
{
    sb_http *h = t->data;
    int64_t last;
    uv_mutex_lock(&h->mu);
    last = h->last_request;
    uv_mutex_unlock(&h->mu);
    if (last == 0 || mono_ms() - last > (int64_t)SB_HTTP_SAMPLES * SB_HTTP_SAMPLE_MS) {
        h->history_count = 0;
        return;
    }
    take_sample(h);
}

/* Server thread: a finished snapshot at most SNAP_MAX_AGE_MS old (a new
 * reference), or NULL (stopping, out of memory, or the loop did not answer
 * within SNAP_WAIT_MS). */
static sb_http_snap *snap_get(sb_http *h)
{
    sb_http_snap *s = NULL;
    int64_t deadline = mono_ms() + SNAP_WAIT_MS;
    uint64_t gen;

    uv_mutex_lock(&h->mu);
    h->last_request = mono_ms();
    if (h->snap == NULL || mono_ms() - h->snap->taken > SNAP_MAX_AGE_MS) {
        gen = h->snap_gen;
        if (!h->wanted && !h->stopping) {
            h->wanted = 1;
            uv_async_send(&h->wake);
        }
        while (!h->stopping && h->snap_gen == gen) {
            int64_t left = deadline - mono_ms();
            if (left <= 0 || uv_cond_timedwait(&h->cond, &h->mu, (uint64_t)left * 1000000) != 0)
                break;
        }
        if (h->snap_gen == gen || h->stopping) {
            uv_mutex_unlock(&h->mu);
            return NULL;
        }
    }
    s = h->snap;
    if (s != NULL)
        s->refs++;
    uv_mutex_unlock(&h->mu);
    /* Only this thread reads snapshots (one polling thread): finishing one
     * needs no lock. */
    if (s != NULL && sb_http__snap_finish(s) != 0) {
        snap_unref(h, s);
        s = NULL;
    }
    return s;
}

/* ---- requests ---- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               const void *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    enum MHD_Result ret;
    if (r == NULL)
        return MHD_NO; /* out of memory: libmicrohttpd closes the connection */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    /* Everything the page uses comes from here: no CDN, no inline script. */
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result error_page(struct MHD_Connection *c, unsigned status, const char *text)
{
    return respond(c, status, "text/plain; charset=utf-8", text, strlen(text),
                   MHD_RESPMEM_PERSISTENT);
}

/* A query argument made of digits only (at most 9), or dflt when absent;
 * -1 when malformed. */
static long arg_number(struct MHD_Connection *c, const char *key, long dflt)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, key);
    size_t n;
    if (v == NULL)
        return dflt;
    n = strlen(v);
    if (n == 0 || n > 9 || strspn(v, "0123456789") != n)
        return -1;
    return strtol(v, NULL, 10);
}

static enum MHD_Result answer_dynamic(sb_http *h, struct MHD_Connection *c, int metrics)
{
    sb_jsonw w = {0};
    sb_http_snap *s;
    long page = 0, per_page = PER_PAGE_DEFAULT;
    enum MHD_Result ret;

    if (!metrics) {
        page = arg_number(c, "page", 0);
        per_page = arg_number(c, "per_page", PER_PAGE_DEFAULT);
        if (page < 0 || per_page < 1 || per_page > PER_PAGE_MAX)
            return error_page(c, MHD_HTTP_BAD_REQUEST,
                              "page and per_page must be numbers (per_page 1..500)\n");
    }
    s = snap_get(h);
    if (s == NULL)
        return error_page(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "the broker did not answer in time (busy or stopping)\n");
    if (metrics)
        sb_http__render_metrics(&w, s, h->per_queue);
    else
        sb_http__render_status(&w, s, (size_t)page, (size_t)per_page);
    snap_unref(h, s);
    if (w.failed) {
        sb_jsonw_free(&w);
        return error_page(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
    }
    ret = respond(c, MHD_HTTP_OK,
                  metrics ? "text/plain; version=0.0.4; charset=utf-8"
                          : "application/json; charset=utf-8",
                  w.buf, w.len, MHD_RESPMEM_MUST_COPY);
    sb_jsonw_free(&w);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    sb_http *h = cls;
    (void)version;
    (void)upload_data;
    (void)req_cls;

    if (*upload_data_size != 0)
        return error_page(c, MHD_HTTP_CONTENT_TOO_LARGE, "requests take no body here\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return error_page(c, MHD_HTTP_METHOD_NOT_ALLOWED, "read-only: GET and HEAD only\n");
    if (url[0] != '/' || strchr(url, '%') != NULL || strstr(url, "..") != NULL ||
        strstr(url, "//") != NULL || strchr(url, '\\') != NULL)
        return error_page(c, MHD_HTTP_BAD_REQUEST, "malformed path\n");
    if (strcmp(url, "/metrics") == 0)
        return answer_dynamic(h, c, 1);
    if (strcmp(url, "/api/status") == 0)
        return answer_dynamic(h, c, 0);
    for (size_t i = 0; i < sb_http__asset_count; i++)
        if (strcmp(url, sb_http__assets[i].path) == 0)
            return respond(c, MHD_HTTP_OK, sb_http__assets[i].content_type,
                           sb_http__assets[i].data, sb_http__assets[i].size,
                           MHD_RESPMEM_PERSISTENT);
    return error_page(c, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* Paths are taken as they come: nothing here is percent-encoded, so an
 * encoded character (an encoded slash, a dot) is refused, not decoded into
 * something else. Query values (digits) need no decoding either. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    size_t n;
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    sb_log(SB_LOG_DEBUG, WHO, "%s", line);
}

/* ---- lifecycle ---- */

static void on_handle_closed(uv_handle_t *handle)
{
    sb_http *h = handle->data;
    if (--h->open_handles > 0)
        return;
    if (h->snap != NULL)
        sb_http__snap_free(h->snap);
    uv_cond_destroy(&h->cond);
    uv_mutex_destroy(&h->mu);
    sb_free(h);
}

int sb_http_start(sb_http **out, sb_broker *b, sb_error *err)
{
    const sb_broker_config *bc = &b->cfg->broker;
    char host[64], why[300];
    int port, loopback, rc;
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    const union MHD_DaemonInfo *info;
    sb_http *h;

    *out = NULL;
    if (bc->http_listen == NULL)
        return 0;
    if (sb_config_http_listen(bc->http_listen, host, sizeof host, &port, &loopback, why,
                              sizeof why) != 0)
        return sb_error_set(err, SB_EINVAL, 0, "broker.http.listen: %s", why);
    memset(&ss, 0, sizeof ss);
    if (bc->http_listen[0] == '[') {
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
        flags |= MHD_USE_IPv6;
    } else {
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    }
    if (rc != 0)
        return sb_error_set(err, SB_EINVAL, 0, "broker.http.listen: %s: %s", bc->http_listen,
                            uv_strerror(rc));
    h = sb_calloc(1, sizeof *h);
    if (h == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    h->b = b;
    h->per_queue = bc->http_per_queue;
    if (uv_mutex_init(&h->mu) != 0) {
        sb_free(h);
        return sb_error_set(err, SB_ENOMEM, 0, "http: cannot create a mutex");
    }
    if (uv_cond_init(&h->cond) != 0) {
        uv_mutex_destroy(&h->mu);
        sb_free(h);
        return sb_error_set(err, SB_ENOMEM, 0, "http: cannot create a condition variable");
    }
    uv_async_init(&b->loop, &h->wake, on_wake);
    uv_timer_init(&b->loop, &h->sampler);
    h->wake.data = h->sampler.data = h;
    h->open_handles = 2;
    uv_timer_start(&h->sampler, on_sample, SB_HTTP_SAMPLE_MS, SB_HTTP_SAMPLE_MS);

    h->d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, (unsigned)bc->http_max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((bc->http_timeout_ms + 999) / 1000),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)MEMORY_LIMIT,
        /* its clients are browsers and Prometheus: no need to guess what a
         * request without Host or with spaces in its path meant */
        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_UNESCAPE_CALLBACK,
        no_unescape, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (h->d == NULL) {
        h->stopping = 1;
        uv_close((uv_handle_t *)&h->wake, on_handle_closed);
        uv_close((uv_handle_t *)&h->sampler, on_handle_closed);
        /* libmicrohttpd says why in its log only; the address is the usual cause */
        return sb_error_set(err, SB_EADDRINUSE, 0,
                            "broker.http.listen: cannot listen on %s (in use, or not an address "
                            "of this machine)",
                            bc->http_listen);
    }
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(h->where, sizeof h->where, "%s%s%s:%u", flags & MHD_USE_IPv6 ? "[" : "", host,
             flags & MHD_USE_IPv6 ? "]" : "", info != NULL ? (unsigned)info->port : (unsigned)port);
    sb_info(WHO, "listening on http://%s/ (status page; metrics at /metrics)%s", h->where,
            loopback ? "" : " (not loopback: anyone who can reach it may read it)");
    *out = h;
    return 0;
}

void sb_http_stop(sb_http *h)
{
    if (h == NULL)
        return;
    uv_mutex_lock(&h->mu);
    h->stopping = 1;
    uv_cond_broadcast(&h->cond);
    uv_mutex_unlock(&h->mu);
    /* Joins the server thread: a request waiting for a snapshot was woken
     * above and answers 503. */
    MHD_stop_daemon(h->d);
    h->d = NULL;
    sb_info(WHO, "stopped listening on %s", h->where);
    uv_timer_stop(&h->sampler);
    uv_close((uv_handle_t *)&h->wake, on_handle_closed);
    uv_close((uv_handle_t *)&h->sampler, on_handle_closed);
}
