/*
 * Internals of the HTTP listener (service/http.h): the snapshot the loop
 * thread takes of the broker (http_snap.c), what the server thread makes of
 * it (http_render.c: the Prometheus text, the status JSON), and the page's
 * assets compiled in (http_assets/, embedded by CMake).
 *
 * A snapshot holds copies only (numbers, and names in its own string
 * pool), so the server thread may read it while the broker changes.
 */
#ifndef SB_HTTP_INT_H
#define SB_HTTP_INT_H

#include "service/jsonw.h"
#include "storage/store.h"

#include <stddef.h>
#include <stdint.h>

/* One queue. Strings are offsets into the snapshot's pool until
 * sb_http__snap_finish turns them into pointers. */
typedef struct sb_http_qrow {
    union {
        size_t off;
        const char *s;
    } name, route;   /* route: "" for a client (or orphaned) queue */
    const char *kind; /* "route", "client" or "orphaned" (static) */
    const char *durability;
    int64_t depth, bytes, oldest_age_ms;
    int consumers, inflight;
    uint64_t in, out, acked, nacked, dead, expired, dropped, filtered;
    double in_rate, out_rate;
} sb_http_qrow;

/* One adapter: what its stats say, reduced to what every type can show. */
typedef struct sb_http_arow {
    union {
        size_t off;
        const char *s;
    } name, type, state, detail; /* detail: its stats object as JSON ("{}" if none) */
    int64_t connections;         /* -1: the type does not count them */
    int link_up;                 /* -1: no link (a listener); else 0 or 1 */
    uint64_t errors;             /* failures it counted (lost links, failed writes, refusals) */
} sb_http_arow;

/* A route's queues summed (routes of the config, then all client queues
 * as one group). */
typedef struct sb_http_group {
    const char *route, *kind;
    size_t queues;
    int64_t depth, bytes, oldest_age_ms;
    int64_t consumers, inflight;
    uint64_t in, out, acked, nacked, dead, expired, dropped, filtered;
    double in_rate, out_rate;
} sb_http_group;

/* Totals sampled every SB_HTTP_SAMPLE_MS for the page's chart. */
#define SB_HTTP_SAMPLE_MS 10000
#define SB_HTTP_SAMPLES 60
typedef struct sb_http_sample {
    int64_t t_ms; /* wall clock */
    uint64_t in, out, dead;
    int64_t depth;
} sb_http_sample;

typedef struct sb_http_snap {
    int refs;       /* under the listener's mutex */
    int64_t taken;  /* monotonic ms (uv_hrtime), for its age */
    int64_t now_ms; /* wall clock when taken */
    /* the broker */
    const char *version;
    int64_t uptime_ms;
    uint64_t published, refused, retained;
    int has_logins; /* a password file: logins_hashed, logins_cached count */
    uint64_t logins_hashed, logins_cached;
    uint64_t resident_bytes; /* the process's resident memory, 0 if unknown */
    int has_store;
    sb_store_stats store;
    /* queues, sorted by (route, name) once finished */
    sb_http_qrow *q;
    size_t q_count, q_cap;
    sb_http_group *groups;
    size_t group_count;
    sb_http_arow *a;
    size_t a_count, a_cap;
    char *pool;
    size_t pool_len, pool_cap;
    int failed; /* out of memory while taking it */
    int finished;
    sb_http_sample history[SB_HTTP_SAMPLES]; /* oldest first */
    size_t history_count;
} sb_http_snap;

struct sb_broker;

/* http_snap.c (loop thread): a new snapshot of b (refs 1), NULL on
 * out-of-memory; the totals for the history. */
sb_http_snap *sb_http__snap_take(struct sb_broker *b);
void sb_http__sample(struct sb_broker *b, sb_http_sample *out);
void sb_http__snap_free(sb_http_snap *s);

/* Server thread: resolves the pool offsets, sorts the queues and sums the
 * groups (once per snapshot). Returns 0 or SB_ENOMEM. */
int sb_http__snap_finish(sb_http_snap *s);

/* http_render.c (server thread): appends to w. */
void sb_http__render_metrics(sb_jsonw *w, const sb_http_snap *s, int per_queue);
/* The status JSON: page `page` (from 0) of `per_page` queues. */
void sb_http__render_status(sb_jsonw *w, const sb_http_snap *s, size_t page, size_t per_page);

/* The page's files, compiled in (http_assets.c, generated). */
typedef struct sb_http_asset {
    const char *path; /* "/", "/app.js", ... */
    const char *content_type;
    const unsigned char *data;
    size_t size;
} sb_http_asset;
extern const sb_http_asset sb_http__assets[];
extern const size_t sb_http__asset_count;

#endif
