/*
 * What the HTTP listener answers, made from a snapshot on the server thread:
 * the Prometheus text exposition format (version 0.0.4) for /metrics, and
 * the JSON of /api/status the page refreshes from.
 *
 * Metrics are per route by default (a route's queues summed; every client
 * queue summed as one group, kind="client"), so that a scrape stays small
 * with thousands of MQTT sessions; broker.http.per_queue_metrics adds a
 * series per queue.
 */
#include "service/alloc.h"
#include "service/error.h"
#include "service/http_int.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void appendf(sb_jsonw *w, const char *fmt, ...) SB_PRINTF(2, 3);
static void appendf(sb_jsonw *w, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) {
        w->failed = 1;
        return;
    }
    sb_jsonw_raw(w, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* A label value: backslash, double quote and line feed escaped. */
static void label(sb_jsonw *w, const char *s)
{
    sb_jsonw_raw(w, "\"", 1);
    for (const char *p = s; *p != '\0'; p++) {
        size_t run = strcspn(p, "\\\"\n");
        sb_jsonw_raw(w, p, run);
        p += run;
        if (*p == '\0')
            break;
        sb_jsonw_raw(w, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n", 2);
    }
    sb_jsonw_raw(w, "\"", 1);
}

static void family(sb_jsonw *w, const char *name, const char *type, const char *help)
{
    appendf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* ---- per route and per queue ---- */

enum { V_I64, V_U64, V_SECONDS, V_DOUBLE };

typedef struct qmetric {
    const char *suffix, *type, *help;
    int kind;
    size_t group_off, row_off; /* offsetof in sb_http_group and sb_http_qrow */
} qmetric;

#define QM(sfx, typ, hlp, k, field)                                                                \
    {sfx, typ, hlp, k, offsetof(sb_http_group, field), offsetof(sb_http_qrow, field)}

static const qmetric queue_metrics[] = {
    QM("depth", "gauge", "Messages waiting or in flight.", V_I64, depth),
    QM("bytes", "gauge", "Payload bytes of the messages waiting or in flight.", V_I64, bytes),
    QM("oldest_age_seconds", "gauge", "Age of the oldest message waiting.", V_SECONDS,
       oldest_age_ms),
    QM("messages_in_total", "counter", "Messages routed in (since the broker started).", V_U64, in),
    QM("messages_out_total", "counter", "Deliveries offered to consumers.", V_U64, out),
    QM("acked_total", "counter", "Deliveries acknowledged.", V_U64, acked),
    QM("nacked_total", "counter", "Deliveries refused by their consumer.", V_U64, nacked),
    QM("dead_total", "counter", "Messages moved to the dead-letter queue.", V_U64, dead),
    QM("expired_total", "counter", "Messages expired (TTL).", V_U64, expired),
    QM("dropped_total", "counter", "Messages dropped by the drop-oldest overflow policy.", V_U64,
       dropped),
    QM("in_rate", "gauge", "Messages routed in per second (last 10 s).", V_DOUBLE, in_rate),
    QM("out_rate", "gauge", "Deliveries acknowledged per second (last 10 s).", V_DOUBLE, out_rate),
};

static void value(sb_jsonw *w, int kind, const void *p)
{
    switch (kind) {
    case V_I64:
        appendf(w, " %lld\n", (long long)*(const int64_t *)p);
        break;
    case V_U64:
        appendf(w, " %llu\n", (unsigned long long)*(const uint64_t *)p);
        break;
    case V_SECONDS:
        appendf(w, " %.3f\n", (double)*(const int64_t *)p / 1000.0);
        break;
    default:
        appendf(w, " %g\n", *(const double *)p);
        break;
    }
}

static void route_metrics(sb_jsonw *w, const sb_http_snap *s)
{
    char name[96];
    family(w, "switchboard_route_queues", "gauge",
           "Queues of a route (kind=\"client\": every client subscription).");
    for (size_t i = 0; i < s->group_count; i++) {
        appendf(w, "switchboard_route_queues{kind=\"%s\",route=", s->groups[i].kind);
        label(w, s->groups[i].route);
        appendf(w, "} %zu\n", s->groups[i].queues);
    }
    for (size_t m = 0; m < sizeof queue_metrics / sizeof queue_metrics[0]; m++) {
        const qmetric *qm = &queue_metrics[m];
        snprintf(name, sizeof name, "switchboard_route_%s", qm->suffix);
        family(w, name, qm->type, qm->help);
        for (size_t i = 0; i < s->group_count; i++) {
            appendf(w, "%s{kind=\"%s\",route=", name, s->groups[i].kind);
            label(w, s->groups[i].route);
            sb_jsonw_raw(w, "}", 1);
            value(w, qm->kind, (const char *)&s->groups[i] + qm->group_off);
        }
    }
}

static void per_queue_metrics(sb_jsonw *w, const sb_http_snap *s)
{
    char name[96];
    for (size_t m = 0; m < sizeof queue_metrics / sizeof queue_metrics[0]; m++) {
        const qmetric *qm = &queue_metrics[m];
        snprintf(name, sizeof name, "switchboard_queue_%s", qm->suffix);
        family(w, name, qm->type, qm->help);
        for (size_t i = 0; i < s->q_count; i++) {
            appendf(w, "%s{kind=\"%s\",queue=", name, s->q[i].kind);
            label(w, s->q[i].name.s);
            sb_jsonw_raw(w, ",route=", 7);
            label(w, s->q[i].route.s);
            sb_jsonw_raw(w, "}", 1);
            value(w, qm->kind, (const char *)&s->q[i] + qm->row_off);
        }
    }
}

/* ---- adapters, store, process ---- */

static void adapter_metrics(sb_jsonw *w, const sb_http_snap *s)
{
    family(w, "switchboard_adapter_info", "gauge", "An adapter of the broker (always 1).");
    for (size_t i = 0; i < s->a_count; i++) {
        sb_jsonw_lit(w, "switchboard_adapter_info{adapter=");
        label(w, s->a[i].name.s);
        sb_jsonw_lit(w, ",state=");
        label(w, s->a[i].state.s);
        sb_jsonw_lit(w, ",type=");
        label(w, s->a[i].type.s);
        sb_jsonw_lit(w, "} 1\n");
    }
    family(w, "switchboard_adapter_connections", "gauge", "Connections of a listener.");
    for (size_t i = 0; i < s->a_count; i++)
        if (s->a[i].connections >= 0) {
            sb_jsonw_lit(w, "switchboard_adapter_connections{adapter=");
            label(w, s->a[i].name.s);
            appendf(w, "} %lld\n", (long long)s->a[i].connections);
        }
    family(w, "switchboard_adapter_link_up", "gauge",
           "1 while a client adapter's link (connection, target window) is up.");
    for (size_t i = 0; i < s->a_count; i++)
        if (s->a[i].link_up >= 0) {
            sb_jsonw_lit(w, "switchboard_adapter_link_up{adapter=");
            label(w, s->a[i].name.s);
            appendf(w, "} %d\n", s->a[i].link_up);
        }
    family(w, "switchboard_adapter_errors_total", "counter",
           "Failures an adapter counted: links lost, writes failed, messages refused.");
    for (size_t i = 0; i < s->a_count; i++) {
        sb_jsonw_lit(w, "switchboard_adapter_errors_total{adapter=");
        label(w, s->a[i].name.s);
        appendf(w, "} %llu\n", (unsigned long long)s->a[i].errors);
    }
}

/* Every number in the adapters' own statistics (what `sbctl stats --json`
 * shows under adapters.NAME: a bridge's connects and losses, a clipboard's
 * skips, ...), one family per key, switchboard_adapter_stats_KEY{adapter}
 * (a nested object's numbers as KEY_SUBKEY). Their meaning is the type's,
 * so they are untyped. */
typedef struct astat {
    char name[96];
    size_t adapter;
    double value;
} astat;

static int by_name_then_adapter(const void *x, const void *y)
{
    const astat *a = x, *b = y;
    int c = strcmp(a->name, b->name);
    return c != 0 ? c : (a->adapter > b->adapter) - (a->adapter < b->adapter);
}

static int collect(astat **all, size_t *n, size_t *cap, size_t adapter, const char *prefix,
                   json_t *o)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        astat *st;
        char name[96];
        int len = snprintf(name, sizeof name, "%s%s", prefix, key);
        if (len <= 0 || (size_t)len >= sizeof name - 1)
            continue; /* longer than a sensible metric name */
        for (char *c = name; *c != '\0'; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_'))
                *c = '_';
        if (json_is_object(v) && prefix[0] == '\0') {
            char sub[sizeof name + 1];
            snprintf(sub, sizeof sub, "%s_", name);
            if (collect(all, n, cap, adapter, sub, v) != 0)
                return SB_ENOMEM;
            continue;
        }
        if (!json_is_number(v) && !json_is_boolean(v))
            continue;
        if (*n == *cap) {
            size_t ncap = *cap == 0 ? 32 : *cap * 2;
            astat *more = sb_realloc(*all, ncap * sizeof *more);
            if (more == NULL)
                return SB_ENOMEM;
            *all = more;
            *cap = ncap;
        }
        st = &(*all)[(*n)++];
        memcpy(st->name, name, (size_t)len + 1);
        st->adapter = adapter;
        st->value = json_is_boolean(v) ? (json_is_true(v) ? 1.0 : 0.0) : json_number_value(v);
    }
    return 0;
}

static void adapter_stats_metrics(sb_jsonw *w, const sb_http_snap *s)
{
    astat *all = NULL;
    size_t n = 0, cap = 0;
    char fam[128];
    for (size_t i = 0; i < s->a_count; i++) {
        json_t *o = json_loads(s->a[i].detail.s, 0, NULL);
        int rc = json_is_object(o) ? collect(&all, &n, &cap, i, "", o) : 0;
        json_decref(o);
        if (rc != 0) {
            w->failed = 1;
            sb_free(all);
            return;
        }
    }
    if (n > 1)
        qsort(all, n, sizeof *all, by_name_then_adapter);
    for (size_t i = 0; i < n; i++) {
        snprintf(fam, sizeof fam, "switchboard_adapter_stats_%s", all[i].name);
        if (i == 0 || strcmp(all[i].name, all[i - 1].name) != 0)
            appendf(w, "# HELP %s An adapter's own statistic %s (sbctl stats --json).\n"
                       "# TYPE %s untyped\n",
                    fam, all[i].name, fam);
        else if (all[i].adapter == all[i - 1].adapter)
            continue; /* two keys that read the same once sanitized */
        appendf(w, "%s{adapter=", fam);
        label(w, s->a[all[i].adapter].name.s);
        appendf(w, "} %.17g\n", all[i].value);
    }
    sb_free(all);
}

static void store_metrics(sb_jsonw *w, const sb_http_snap *s)
{
    static const uint64_t bounds[] = {SB_STORE_LATENCY_BOUNDS_US};
    const sb_store_stats *st = &s->store;
    uint64_t cumulative = 0;

    if (!s->has_store)
        return;
    family(w, "switchboard_store_commits_total", "counter", "Store transactions committed.");
    appendf(w, "switchboard_store_commits_total %llu\n", (unsigned long long)st->commits);
    family(w, "switchboard_store_fsyncs_total", "counter",
           "Commits made with synchronous=FULL (fsync before the acknowledgement).");
    appendf(w, "switchboard_store_fsyncs_total %llu\n", (unsigned long long)st->fsync_commits);
    family(w, "switchboard_store_failed_commits_total", "counter",
           "Store transactions that failed (rolled back).");
    appendf(w, "switchboard_store_failed_commits_total %llu\n",
            (unsigned long long)st->failed_commits);
    family(w, "switchboard_store_ops_total", "counter", "Store operations completed.");
    appendf(w, "switchboard_store_ops_total %llu\n", (unsigned long long)st->ops);
    family(w, "switchboard_store_degraded", "gauge", "1 while commits fail (publishes refused).");
    appendf(w, "switchboard_store_degraded %d\n", st->degraded ? 1 : 0);
    family(w, "switchboard_store_database_bytes", "gauge", "Size of the database file.");
    appendf(w, "switchboard_store_database_bytes %lld\n", (long long)st->db_bytes);
    family(w, "switchboard_store_commit_seconds", "histogram",
           "Time from BEGIN to the end of COMMIT (fsync included), on the store thread.");
    for (size_t i = 0; i < SB_STORE_LATENCY_BUCKETS; i++) {
        cumulative += st->commit_us[i];
        if (i < sizeof bounds / sizeof bounds[0])
            appendf(w, "switchboard_store_commit_seconds_bucket{le=\"%g\"} %llu\n",
                    (double)bounds[i] / 1e6, (unsigned long long)cumulative);
        else
            appendf(w, "switchboard_store_commit_seconds_bucket{le=\"+Inf\"} %llu\n",
                    (unsigned long long)cumulative);
    }
    appendf(w, "switchboard_store_commit_seconds_sum %.6f\n", (double)st->commit_us_sum / 1e6);
    appendf(w, "switchboard_store_commit_seconds_count %llu\n", (unsigned long long)cumulative);
}

void sb_http__render_metrics(sb_jsonw *w, const sb_http_snap *s, int per_queue)
{
    family(w, "switchboard_info", "gauge", "The broker's version (always 1).");
    sb_jsonw_lit(w, "switchboard_info{version=");
    label(w, s->version);
    sb_jsonw_lit(w, "} 1\n");
    family(w, "switchboard_uptime_seconds", "gauge", "Time since the broker started.");
    appendf(w, "switchboard_uptime_seconds %.3f\n", (double)s->uptime_ms / 1000.0);
    family(w, "process_resident_memory_bytes", "gauge", "Resident memory of the process.");
    appendf(w, "process_resident_memory_bytes %llu\n", (unsigned long long)s->resident_bytes);
    family(w, "switchboard_published_total", "counter", "Messages published and committed.");
    appendf(w, "switchboard_published_total %llu\n", (unsigned long long)s->published);
    family(w, "switchboard_refused_total", "counter", "Publishes refused.");
    appendf(w, "switchboard_refused_total %llu\n", (unsigned long long)s->refused);
    family(w, "switchboard_retained_messages", "gauge", "Topics with a retained value.");
    appendf(w, "switchboard_retained_messages %llu\n", (unsigned long long)s->retained);
    if (s->has_logins) {
        family(w, "switchboard_logins_total", "counter",
               "Password checks: hashed in full, or answered by the cache of verified logins.");
        appendf(w, "switchboard_logins_total{check=\"hashed\"} %llu\n",
                (unsigned long long)s->logins_hashed);
        appendf(w, "switchboard_logins_total{check=\"cached\"} %llu\n",
                (unsigned long long)s->logins_cached);
    }
    route_metrics(w, s);
    if (per_queue)
        per_queue_metrics(w, s);
    adapter_metrics(w, s);
    adapter_stats_metrics(w, s);
    store_metrics(w, s);
}

/* ---- /api/status ---- */

static void jkey(sb_jsonw *w, const char *key)
{
    sb_jsonw_str(w, key, strlen(key));
    sb_jsonw_raw(w, ":", 1);
}

static void jstr(sb_jsonw *w, const char *key, const char *v)
{
    jkey(w, key);
    sb_jsonw_str(w, v, strlen(v));
    sb_jsonw_raw(w, ",", 1);
}

static void jint(sb_jsonw *w, const char *key, int64_t v)
{
    jkey(w, key);
    sb_jsonw_int(w, v);
    sb_jsonw_raw(w, ",", 1);
}

static void jnum(sb_jsonw *w, const char *key, double v)
{
    jkey(w, key);
    appendf(w, "%.3f,", v);
}

/* Ends an object or list whose last member left a ',' behind. */
static void close_with(sb_jsonw *w, char c)
{
    if (!w->failed && w->len > 0 && w->buf[w->len - 1] == ',')
        w->buf[w->len - 1] = c;
    else
        sb_jsonw_raw(w, &c, 1);
}

static void counters(sb_jsonw *w, int64_t depth, int64_t bytes, int64_t oldest, uint64_t in,
                     uint64_t out, uint64_t acked, uint64_t dead, uint64_t dropped, uint64_t expired,
                     double in_rate, double out_rate)
{
    jint(w, "depth", depth);
    jint(w, "bytes", bytes);
    jint(w, "oldest_age_ms", oldest);
    jint(w, "in", (int64_t)in);
    jint(w, "out", (int64_t)out);
    jint(w, "acked", (int64_t)acked);
    jint(w, "dead", (int64_t)dead);
    jint(w, "dropped", (int64_t)dropped);
    jint(w, "expired", (int64_t)expired);
    jnum(w, "in_rate", in_rate);
    jnum(w, "out_rate", out_rate);
}

/* Routes the status page lists at most: the deepest first when there are
 * more. */
#define ROUTES_SHOWN 50

static int by_depth(const void *x, const void *y)
{
    const sb_http_group *a = *(const sb_http_group *const *)x, *b = *(const sb_http_group *const *)y;
    if (a->depth != b->depth)
        return a->depth > b->depth ? -1 : 1;
    if (a->in_rate != b->in_rate)
        return a->in_rate > b->in_rate ? -1 : 1;
    return strcmp(a->route, b->route);
}

void sb_http__render_status(sb_jsonw *w, const sb_http_snap *s, size_t page, size_t per_page)
{
    const sb_store_stats *st = &s->store;
    size_t first = page * per_page, last, shown;
    const sb_http_group **order;

    sb_jsonw_lit(w, "{\"broker\":{");
    jstr(w, "version", s->version);
    jint(w, "now_ms", s->now_ms);
    jint(w, "uptime_ms", s->uptime_ms);
    jint(w, "published", (int64_t)s->published);
    jint(w, "refused", (int64_t)s->refused);
    jint(w, "retained", (int64_t)s->retained);
    jint(w, "memory_bytes", (int64_t)s->resident_bytes);
    close_with(w, '}');

    sb_jsonw_lit(w, ",\"store\":{");
    if (s->has_store) {
        jint(w, "commits", (int64_t)st->commits);
        jint(w, "fsyncs", (int64_t)st->fsync_commits);
        jint(w, "failed_commits", (int64_t)st->failed_commits);
        jint(w, "db_bytes", st->db_bytes);
        jkey(w, "degraded");
        sb_jsonw_lit(w, st->degraded ? "true," : "false,");
        jstr(w, "last_error", st->last_error);
        jnum(w, "commit_ms_avg",
             st->commits > 0 ? (double)st->commit_us_sum / 1000.0 / (double)st->commits : 0.0);
    }
    close_with(w, '}');

    sb_jsonw_raw(w, ",", 1);
    sb_jsonw_lit(w, "\"adapters\":[");
    for (size_t i = 0; i < s->a_count; i++) {
        const sb_http_arow *a = &s->a[i];
        sb_jsonw_raw(w, "{", 1);
        jstr(w, "name", a->name.s);
        jstr(w, "type", a->type.s);
        jstr(w, "state", a->state.s);
        if (a->connections >= 0)
            jint(w, "connections", a->connections);
        jint(w, "errors", (int64_t)a->errors);
        jkey(w, "detail");
        sb_jsonw_lit(w, a->detail.s); /* JSON already (json_dumps) */
        sb_jsonw_raw(w, "},", 2);
    }
    close_with(w, ']');
    sb_jsonw_raw(w, ",", 1);

    /* With many routes, the page shows those holding the most messages. */
    shown = s->group_count;
    order = shown > 0 ? sb_malloc(shown * sizeof *order) : NULL;
    if (shown > 0 && order == NULL) {
        w->failed = 1;
        return;
    }
    for (size_t i = 0; i < shown; i++)
        order[i] = &s->groups[i];
    if (shown > ROUTES_SHOWN) {
        qsort(order, shown, sizeof *order, by_depth);
        shown = ROUTES_SHOWN;
    }
    jkey(w, "routes_total");
    sb_jsonw_int(w, (int64_t)s->group_count);
    sb_jsonw_lit(w, ",\"routes\":[");
    for (size_t i = 0; i < shown; i++) {
        const sb_http_group *g = order[i];
        sb_jsonw_raw(w, "{", 1);
        jstr(w, "route", g->route);
        jstr(w, "kind", g->kind);
        jint(w, "queues", (int64_t)g->queues);
        jint(w, "consumers", g->consumers);
        counters(w, g->depth, g->bytes, g->oldest_age_ms, g->in, g->out, g->acked, g->dead,
                 g->dropped, g->expired, g->in_rate, g->out_rate);
        close_with(w, '}');
        sb_jsonw_raw(w, ",", 1);
    }
    close_with(w, ']');
    sb_free(order);

    sb_jsonw_lit(w, ",\"queues\":{");
    jint(w, "total", (int64_t)s->q_count);
    jint(w, "page", (int64_t)page);
    jint(w, "per_page", (int64_t)per_page);
    jkey(w, "items");
    sb_jsonw_raw(w, "[", 1);
    last = first < s->q_count ? first + per_page : first;
    for (size_t i = first; i < last && i < s->q_count; i++) {
        const sb_http_qrow *q = &s->q[i];
        sb_jsonw_raw(w, "{", 1);
        jstr(w, "name", q->name.s);
        jstr(w, "route", q->route.s);
        jstr(w, "kind", q->kind);
        jstr(w, "durability", q->durability);
        jint(w, "consumers", q->consumers);
        jint(w, "inflight", q->inflight);
        counters(w, q->depth, q->bytes, q->oldest_age_ms, q->in, q->out, q->acked, q->dead,
                 q->dropped, q->expired, q->in_rate, q->out_rate);
        close_with(w, '}');
        sb_jsonw_raw(w, ",", 1);
    }
    close_with(w, ']');
    sb_jsonw_raw(w, "}", 1);

    sb_jsonw_lit(w, ",\"history\":{");
    jint(w, "interval_ms", SB_HTTP_SAMPLE_MS);
    jkey(w, "samples");
    sb_jsonw_raw(w, "[", 1);
    for (size_t i = 0; i < s->history_count; i++) {
        const sb_http_sample *h = &s->history[i];
        appendf(w, "[%lld,%llu,%llu,%lld,%llu],", (long long)h->t_ms, (unsigned long long)h->in,
                (unsigned long long)h->out, (long long)h->depth, (unsigned long long)h->dead);
    }
    {
        /* and now, from the snapshot: the chart's last point */
        sb_http_sample now = {.t_ms = s->now_ms};
        for (size_t i = 0; i < s->group_count; i++) {
            now.in += s->groups[i].in;
            now.out += s->groups[i].out;
            now.dead += s->groups[i].dead;
            now.depth += s->groups[i].depth;
        }
        appendf(w, "[%lld,%llu,%llu,%lld,%llu]", (long long)now.t_ms, (unsigned long long)now.in,
                (unsigned long long)now.out, (long long)now.depth, (unsigned long long)now.dead);
    }
    sb_jsonw_raw(w, "]", 1);
    sb_jsonw_lit(w, "}}\n");
}
