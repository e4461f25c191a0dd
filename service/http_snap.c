/*
 * The HTTP listener's snapshots (http_int.h): the loop thread copies what
 * the metrics and the status page show (each queue's counters, each
 * adapter's state, the store's statistics) into one block the server
 * thread owns afterwards; the server thread sorts and sums it.
 */
#include "service/alloc.h"
#include "service/auth.h"
#include "service/broker_int.h"
#include "service/http_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const durability_names[] = {"fsync", "batched", "memory"};

/* Appends s (with its NUL) to the pool; returns its offset. */
static size_t pool_add(sb_http_snap *s, const char *str)
{
    size_t n = strlen(str) + 1, at = s->pool_len;
    if (s->pool_len + n > s->pool_cap) {
        size_t cap = s->pool_cap == 0 ? 4096 : s->pool_cap;
        char *p;
        while (cap < s->pool_len + n)
            cap *= 2;
        p = sb_realloc(s->pool, cap);
        if (p == NULL) {
            s->failed = 1;
            return 0;
        }
        s->pool = p;
        s->pool_cap = cap;
    }
    memcpy(s->pool + at, str, n);
    s->pool_len += n;
    return at;
}

static int64_t json_int_or(const json_t *o, const char *key, int64_t dflt)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* An adapter's row from its own stats (types report different things):
 * "connections" (listeners), "link" (clients: "up", "connecting", ...),
 * "window" (WM_COPYDATA out: the target window exists); errors are the
 * lost links, failed writes and refusals it counted. */
static void adapter_row(sb_http_snap *s, sb_http_arow *r, sb_adapter *a)
{
    json_t *st = a->type->stats != NULL ? a->type->stats(a) : NULL;
    const json_t *link = json_object_get(st, "link"), *window = json_object_get(st, "window");
    const char *state = "running";
    char *detail = st != NULL ? json_dumps(st, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

    r->connections = json_int_or(st, "connections", -1);
    r->link_up = -1;
    if (json_is_string(link)) {
        state = json_string_value(link);
        r->link_up = strcmp(state, "up") == 0;
    } else if (json_is_boolean(window)) {
        r->link_up = json_is_true(window);
        state = r->link_up ? "up" : "no window";
    } else if (r->connections >= 0) {
        state = "listening";
    }
    r->errors = 0;
    for (const char *const *k = (const char *const[]){"lost", "failed", "refused", NULL}; *k != NULL;
         k++) {
        int64_t v = json_int_or(st, *k, 0);
        r->errors += v > 0 ? (uint64_t)v : 0;
    }
    r->name.off = pool_add(s, a->name);
    r->type.off = pool_add(s, a->type->name);
    r->state.off = pool_add(s, a->stopping ? "stopping" : state);
    r->detail.off = pool_add(s, detail != NULL ? detail : "{}");
    free(detail); /* jansson's allocator */
    json_decref(st);
}

static void queue_row(sb_http_snap *s, sb_http_qrow *r, sb_queue *q, int64_t now,
                      int64_t now_sec)
{
    memset(r, 0, sizeof *r);
    r->name.off = pool_add(s, q->name);
    r->route.off = pool_add(s, q->route != NULL ? q->route->name : "");
    r->kind = !q->from_config ? "client" : q->route != NULL ? "route" : "orphaned";
    r->durability = durability_names[q->durability];
    r->depth = q->depth;
    r->bytes = q->bytes;
    r->oldest_age_ms = q->fifo.head != NULL ? now - q->fifo.head->msg->created_ms : 0;
    if (r->oldest_age_ms < 0)
        r->oldest_age_ms = 0;
    for (sb_consumer *c = q->consumers; c != NULL; c = c->next) {
        r->consumers++;
        r->inflight += c->inflight;
    }
    r->in = q->published;
    r->out = q->delivered;
    r->acked = q->acked;
    r->nacked = q->nacked;
    r->dead = q->dead;
    r->expired = q->expired;
    r->dropped = q->dropped;
    r->filtered = q->filtered;
    r->in_rate = sb_rate__per_sec(&q->in_rate, now_sec);
    r->out_rate = sb_rate__per_sec(&q->out_rate, now_sec);
}

sb_http_snap *sb_http__snap_take(sb_broker *b)
{
    sb_http_snap *s = sb_calloc(1, sizeof *s);
    int64_t now = sb_now_ms(), now_sec = (int64_t)(uv_now(&b->loop) / 1000);
    size_t n = 0, rss = 0;

    if (s == NULL)
        return NULL;
    s->refs = 1;
    s->taken = (int64_t)(uv_hrtime() / 1000000);
    s->now_ms = now;
    s->version = SB_VERSION_STRING;
    s->uptime_ms = now - b->started_ms;
    s->published = b->published;
    s->refused = b->refused;
    s->retained = b->retained.count;
    {
        unsigned long hashed, cached;
        s->has_logins = sb_auth_login_counts(b->auth, &hashed, &cached);
        if (s->has_logins) {
            s->logins_hashed = hashed;
            s->logins_cached = cached;
        }
    }
    if (uv_resident_set_memory(&rss) == 0)
        s->resident_bytes = rss;
    if (b->store != NULL) {
        s->has_store = 1;
        sb_store_get_stats(b->store, &s->store);
    }
    for (sb_queue *q = b->queues; q != NULL; q = q->next)
        n++;
    s->q = n > 0 ? sb_malloc(n * sizeof *s->q) : NULL;
    if (n > 0 && s->q == NULL)
        goto oom;
    s->q_cap = n;
    for (sb_queue *q = b->queues; q != NULL && s->q_count < n; q = q->next)
        queue_row(s, &s->q[s->q_count++], q, now, now_sec);
    n = 0;
    for (sb_adapter *a = b->adapters; a != NULL; a = a->next)
        n++;
    s->a = n > 0 ? sb_malloc(n * sizeof *s->a) : NULL;
    if (n > 0 && s->a == NULL)
        goto oom;
    s->a_cap = n;
    for (sb_adapter *a = b->adapters; a != NULL && s->a_count < n; a = a->next)
        adapter_row(s, &s->a[s->a_count++], a);
    if (s->failed)
        goto oom;
    return s;
oom:
    sb_http__snap_free(s);
    return NULL;
}

void sb_http__sample(sb_broker *b, sb_http_sample *out)
{
    memset(out, 0, sizeof *out);
    out->t_ms = sb_now_ms();
    for (sb_queue *q = b->queues; q != NULL; q = q->next) {
        out->in += q->published;
        out->out += q->delivered;
        out->dead += q->dead;
        out->depth += q->depth;
    }
}

void sb_http__snap_free(sb_http_snap *s)
{
    if (s == NULL)
        return;
    sb_free(s->q);
    sb_free(s->a);
    sb_free(s->groups);
    sb_free(s->pool);
    sb_free(s);
}

/* ---- the server thread's part ---- */

static int by_route_then_name(const void *x, const void *y)
{
    const sb_http_qrow *a = x, *b = y;
    /* routes' queues first, by route, then the client queues */
    int ca = a->route.s[0] == '\0', cb = b->route.s[0] == '\0', c;
    if (ca != cb)
        return ca - cb;
    c = strcmp(a->route.s, b->route.s);
    return c != 0 ? c : strcmp(a->name.s, b->name.s);
}

static void add_to_group(sb_http_group *g, const sb_http_qrow *r)
{
    g->queues++;
    g->depth += r->depth;
    g->bytes += r->bytes;
    if (r->oldest_age_ms > g->oldest_age_ms)
        g->oldest_age_ms = r->oldest_age_ms;
    g->consumers += r->consumers;
    g->inflight += r->inflight;
    g->in += r->in;
    g->out += r->out;
    g->acked += r->acked;
    g->nacked += r->nacked;
    g->dead += r->dead;
    g->expired += r->expired;
    g->dropped += r->dropped;
    g->filtered += r->filtered;
    g->in_rate += r->in_rate;
    g->out_rate += r->out_rate;
}

int sb_http__snap_finish(sb_http_snap *s)
{
    size_t groups = 0;
    if (s->finished)
        return 0;
    for (size_t i = 0; i < s->q_count; i++) {
        s->q[i].name.s = s->pool + s->q[i].name.off;
        s->q[i].route.s = s->pool + s->q[i].route.off;
    }
    for (size_t i = 0; i < s->a_count; i++) {
        s->a[i].name.s = s->pool + s->a[i].name.off;
        s->a[i].type.s = s->pool + s->a[i].type.off;
        s->a[i].state.s = s->pool + s->a[i].state.off;
        s->a[i].detail.s = s->pool + s->a[i].detail.off;
    }
    if (s->q_count > 1)
        qsort(s->q, s->q_count, sizeof *s->q, by_route_then_name);
    /* One group per route, one for the client queues (route ""), in the
     * queues' order: a group is a run of equal routes. */
    for (size_t i = 0; i < s->q_count; i++)
        groups += i == 0 || strcmp(s->q[i].route.s, s->q[i - 1].route.s) != 0;
    if (groups > 0) {
        s->groups = sb_calloc(groups, sizeof *s->groups);
        if (s->groups == NULL)
            return SB_ENOMEM;
    }
    for (size_t i = 0; i < s->q_count; i++) {
        sb_http_group *g;
        if (i == 0 || strcmp(s->q[i].route.s, s->q[i - 1].route.s) != 0) {
            g = &s->groups[s->group_count++];
            g->route = s->q[i].route.s;
            g->kind = g->route[0] == '\0' ? "client" : s->q[i].kind;
        }
        add_to_group(&s->groups[s->group_count - 1], &s->q[i]);
    }
    s->finished = 1;
    return 0;
}
