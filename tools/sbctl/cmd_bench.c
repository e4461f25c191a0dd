/*
 * sbctl bench: end-to-end throughput and latency of the broker.
 *
 * For each endpoint and durability class, a fresh subscription
 * bench-<class>-<random> (filter bench/<class>/<random>/#, that durability) is
 * created; N producer connections publish K messages in total, each keeping
 * up to W publishes awaiting their puback; M consumer connections on the
 * subscription acknowledge every message. Each payload starts with its send
 * time on the monotonic clock and its index ("T<ns> I<index> "), padded to
 * --size bytes, so a consumer measures publish->deliver latency and detects
 * duplicates. The subscription is deleted afterwards.
 *
 * Concurrency: one thread per connection with blocking sb_client
 * connections. This reuses the one client transport (Unix socket, TCP and, on
 * Windows, named pipes) instead of a second libuv-based one, and a thread
 * blocked on its own socket timestamps a reply as soon as it is readable
 * rather than after the other connections' callbacks in a shared loop. The
 * connection counts a bench uses (tens) make thread count a non-issue.
 */
#include "tools/sbctl/format.h"
#include "tools/sbctl/samples.h"
#include "tools/sbctl/sbctl.h"
#include "tools/client/endpoint.h"

#include "service/alloc.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static const sbctl_opt bench_spec[] = {
    SBCTL_COMMON_OPTS,
    {"producers", 'p', SBCTL_OPT_INT, 0, "N", "producer connections (default 2)", 1, 1024},
    {"consumers", 'c', SBCTL_OPT_INT, 0, "M", "consumer connections (default 2)", 1, 1024},
    {"messages", 'n', SBCTL_OPT_INT, 0, "K", "messages per run, in total (default 10000)", 1,
     100000000},
    {"size", 's', SBCTL_OPT_SIZE, 0, "BYTES", "payload size (default 100; at least ~30 are used)",
     0, 64 * 1024 * 1024},
    {"window", 'w', SBCTL_OPT_INT, 0, "W",
     "publishes awaiting their puback, per producer (default 64)", 1, 100000},
    {"sub-window", 0, SBCTL_OPT_INT, 0, "N", "unacknowledged deliveries per consumer (default 100)",
     1, 65535},
    {"durability", 'd', SBCTL_OPT_STRING, 0, "LIST",
     "classes to run, comma-separated (default fsync,batched,memory)", 0, 0},
    {"one-at-a-time", 0, SBCTL_OPT_FLAG, 0, NULL,
     "each producer waits for the puback before the next publish (latency mode)", 0, 0},
    {"stall", 0, SBCTL_OPT_DURATION, 0, "DURATION",
     "give up when nothing progresses for DURATION (default 30s)", 100, INT64_MAX},
};

typedef struct bench_opts {
    int producers, consumers;
    int64_t messages, size;
    int window, sub_window, one_at_a_time;
    int stall_ms;
    const sbctl_ctx *ctx; /* the client options, --progress */
} bench_opts;

typedef struct bench_run bench_run;

typedef struct bench_producer {
    bench_run *run;
    int index;
    sb_client *c;
    int64_t base, quota; /* publishes message indexes [base, base + quota) */
    unsigned long long *sent_ns;
    sbctl_samples ack_lat;
    unsigned long long first_ns;
    uv_thread_t thread;
} bench_producer;

typedef struct bench_consumer {
    bench_run *run;
    int index;
    sb_client *c;
    sbctl_samples lat;
    unsigned long long last_ns;
    uv_thread_t thread;
} bench_consumer;

struct bench_run {
    const bench_opts *o;
    const char *endpoint;
    const char *display;
    const char *durability;
    char sub[64];
    char prefix[64];
    char *pad;          /* o->size 'x' characters */
    atomic_uchar *seen; /* per message index: delivered at least once */
    atomic_llong acked, pub_errors, unrouted, delivered, duplicates;
    atomic_int producers_done, stop;
    uv_mutex_t lock;
    int failed_conn; /* a connection failed (exit 3 rather than 1) */
    char error[512]; /* first failure */
    bench_producer *prod;
    bench_consumer *cons;
};

typedef struct bench_result {
    char endpoint[SB_ENDPOINT_PATH_MAX + 16];
    char durability[16];
    int ok;
    int64_t published, delivered, duplicates, pub_errors, unrouted;
    double seconds, rate;
    int64_t ack_p50, ack_p99, ack_max, dlv_p50, dlv_p99, dlv_max;
    char error[512];
} bench_result;

/* Records the first failure of a run and stops it. */
static void run_fail(bench_run *r, int conn, const char *fmt, const char *a, const char *b)
{
    uv_mutex_lock(&r->lock);
    if (r->error[0] == '\0') {
        snprintf(r->error, sizeof(r->error), fmt, a, b);
        r->failed_conn = conn;
    }
    uv_mutex_unlock(&r->lock);
    atomic_store(&r->stop, 1);
}

/* The bench reads hundreds of thousands of replies a second: for the two
 * shapes the broker writes on the hot path (puback and msg, whose field order
 * is fixed), pick the numbers out directly; anything else goes to jansson. */
static int fast_field(const char *line, size_t len, const char *key, const char **at)
{
    size_t kl = strlen(key);
    const char *end = line + len;
    for (const char *p = line; p + kl <= end; p++)
        if (*p == '"' && memcmp(p, key, kl) == 0) {
            *at = p + kl;
            return 0;
        }
    return -1;
}

static int fast_puback(const char *line, size_t len, int64_t *id, int64_t *queues)
{
    const char *at;
    static const char head[] = "{\"op\":\"puback\"";
    if (len < sizeof(head) - 1 || memcmp(line, head, sizeof(head) - 1) != 0)
        return -1;
    if (fast_field(line, len, "\"queues\":", &at) != 0)
        return -1;
    *queues = strtoll(at, NULL, 10);
    if (fast_field(line, len, "\"id\":", &at) != 0)
        return -1;
    *id = strtoll(at, NULL, 10);
    return 0;
}

static void producer_main(void *arg)
{
    bench_producer *p = arg;
    bench_run *r = p->run;
    const bench_opts *o = r->o;
    int64_t window = o->one_at_a_time ? 1 : o->window;
    int64_t sent = 0, answered = 0;
    size_t cap = (size_t)o->size + 256;
    char *line = sb_malloc(cap);
    sb_error err;

    if (line == NULL) {
        run_fail(r, 0, "%s%s", "producer: out of memory", "");
        goto done;
    }
    while (answered < p->quota && !atomic_load(&r->stop)) {
        json_t *reply = NULL;
        const char *op;
        int64_t seq;
        unsigned long long now;

        while (sent < p->quota && sent - answered < window) {
            char hdr[64];
            int hl, pad, n;
            now = sbctl_now_ns();
            if (sent == 0)
                p->first_ns = now;
            p->sent_ns[sent] = now;
            hl = snprintf(hdr, sizeof(hdr), "T%llu I%lld ", now, (long long)(p->base + sent));
            pad = (int64_t)hl < o->size ? (int)(o->size - hl) : 0;
            n = snprintf(line, cap,
                         "{\"op\":\"pub\",\"id\":%lld,\"topic\":\"%s/p%d\",\"payload\":\"%s%.*s\"}",
                         (long long)(sent + 1), r->prefix, p->index, hdr, pad, r->pad);
            sb_error_clear(&err);
            if (sb_client_write_line(p->c, line, (size_t)n, &err) != 0) {
                run_fail(r, 1, "producer: %s%s", err.msg, "");
                goto done;
            }
            sent++;
        }
        sb_error_clear(&err);
        {
            const char *text;
            size_t tlen;
            int64_t id, queues;
            if (sb_client_read_line(p->c, &text, &tlen, o->stall_ms, &err) != 0) {
                run_fail(r, 1, "producer: %s%s", err.msg, "");
                goto done;
            }
            now = sbctl_now_ns();
            if (fast_puback(text, tlen, &id, &queues) == 0 && id >= 1 && id <= sent) {
                sbctl_samples_add(&p->ack_lat, (int64_t)(now - p->sent_ns[id - 1]));
                atomic_fetch_add(&r->acked, 1);
                if (queues == 0)
                    atomic_fetch_add(&r->unrouted, 1);
                answered++;
                continue;
            }
            reply = json_loadb(text, tlen, 0, NULL);
            if (reply == NULL) {
                run_fail(r, 1, "producer: %s%s", "the broker sent a line that is not JSON", "");
                goto done;
            }
        }
        op = json_string_value(json_object_get(reply, "op"));
        seq = sbctl_json_int(reply, "id", 0) - 1;
        if (op == NULL || seq < 0 || seq >= sent) {
            if (op == NULL || strcmp(op, "error") != 0) {
                json_decref(reply);
                continue; /* not a reply to one of our publishes */
            }
            seq = answered; /* an error without id answers the oldest publish */
        }
        if (strcmp(op, "puback") == 0) {
            sbctl_samples_add(&p->ack_lat, (int64_t)(now - p->sent_ns[seq]));
            atomic_fetch_add(&r->acked, 1);
            if (sbctl_json_int(reply, "queues", 1) == 0)
                atomic_fetch_add(&r->unrouted, 1);
        } else if (strcmp(op, "error") == 0) {
            sb_client_reply_error(reply, &err);
            if (atomic_fetch_add(&r->pub_errors, 1) == 0) {
                uv_mutex_lock(&r->lock);
                if (r->error[0] == '\0')
                    snprintf(r->error, sizeof(r->error), "publish refused: %s [%s]", err.msg,
                             sb_errname(err.code));
                uv_mutex_unlock(&r->lock);
            }
        }
        json_decref(reply);
        answered++;
    }
done:
    sb_free(line);
    atomic_fetch_add(&r->producers_done, 1);
}

/* Parses "T<ns> I<index> ..." from a bench payload. Returns 0 or -1. */
static int parse_stamp(const char *s, unsigned long long *ns, long long *index)
{
    char *end;
    if (s == NULL || s[0] != 'T')
        return -1;
    *ns = strtoull(s + 1, &end, 10);
    if (end[0] != ' ' || end[1] != 'I')
        return -1;
    *index = strtoll(end + 2, &end, 10);
    return *end == ' ' || *end == '\0' ? 0 : -1;
}

static void consumer_main(void *arg)
{
    bench_consumer *k = arg;
    bench_run *r = k->run;
    sb_error err;

    while (!atomic_load(&r->stop)) {
        const char *line, *op;
        size_t len;
        json_t *msg;
        unsigned long long now, ts;
        long long index;
        char ack[160];
        int n, rc;

        sb_error_clear(&err);
        rc = sb_client_read_line(k->c, &line, &len, 100, &err);
        if (rc == SB_ETIMEDOUT)
            continue;
        if (rc != 0) {
            if (!atomic_load(&r->stop))
                run_fail(r, 1, "consumer: %s%s", err.msg, "");
            break;
        }
        now = sbctl_now_ns();
        {
            static const char head[] = "{\"op\":\"msg\"";
            const char *id_at, *pl_at;
            if (len > sizeof(head) - 1 && memcmp(line, head, sizeof(head) - 1) == 0 &&
                fast_field(line, len, "\"msg_id\":", &id_at) == 0 &&
                fast_field(line, len, "\"payload\":\"", &pl_at) == 0 &&
                parse_stamp(pl_at, &ts, &index) == 0 && index >= 0 && index < r->o->messages) {
                long long msg_id = strtoll(id_at, NULL, 10);
                if (now > ts)
                    sbctl_samples_add(&k->lat, (int64_t)(now - ts));
                if (atomic_exchange(&r->seen[index], 1) == 0) {
                    k->last_ns = now;
                    atomic_fetch_add(&r->delivered, 1);
                } else {
                    atomic_fetch_add(&r->duplicates, 1);
                }
                n = snprintf(ack, sizeof(ack), "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}",
                             r->sub, msg_id);
                if (sb_client_write_line(k->c, ack, (size_t)n, &err) != 0) {
                    run_fail(r, 1, "consumer: %s%s", err.msg, "");
                    break;
                }
                continue;
            }
        }
        msg = json_loadb(line, len, 0, NULL);
        op = json_string_value(json_object_get(msg, "op"));
        if (op != NULL && strcmp(op, "msg") == 0) {
            json_int_t msg_id = json_integer_value(json_object_get(msg, "msg_id"));
            if (parse_stamp(json_string_value(json_object_get(msg, "payload")), &ts, &index) != 0 ||
                index < 0 || index >= r->o->messages) {
                json_decref(msg);
                run_fail(r, 0, "consumer: unexpected delivery on %s: %s", r->sub,
                         "not a bench message");
                break;
            }
            if (now > ts)
                sbctl_samples_add(&k->lat, (int64_t)(now - ts));
            if (atomic_exchange(&r->seen[index], 1) == 0) {
                k->last_ns = now;
                atomic_fetch_add(&r->delivered, 1);
            } else {
                atomic_fetch_add(&r->duplicates, 1);
            }
            n = snprintf(ack, sizeof(ack), "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}",
                         r->sub, (long long)msg_id);
            if (sb_client_write_line(k->c, ack, (size_t)n, &err) != 0) {
                json_decref(msg);
                run_fail(r, 1, "consumer: %s%s", err.msg, "");
                break;
            }
        } else if (op != NULL && strcmp(op, "error") == 0) {
            sb_client_reply_error(msg, &err);
            json_decref(msg);
            run_fail(r, 0, "consumer: broker error: %s [%s]", err.msg, sb_errname(err.code));
            break;
        }
        json_decref(msg);
    }
    sb_error_clear(&err);
    (void)sb_client_flush(k->c, &err); /* the last acks */
}

static void progress(const bench_run *r, sbctl_progress *pg)
{
    sbctl_progress_show(pg, "%s %s: published %lld/%lld, delivered %lld", r->display,
                        r->durability, (long long)atomic_load(&r->acked),
                        (long long)r->o->messages, (long long)atomic_load(&r->delivered));
}

/* Connects and, for a consumer, attaches to the run's subscription
 * (the first attach creates it). Returns 0, or fails the run. */
static int open_conn(bench_run *r, sb_client **out, int consumer)
{
    sb_error err;
    json_t *req, *reply = NULL;
    char filter[80];
    int rc;

    sb_error_clear(&err);
    if (sb_client_connect(out, r->endpoint, &r->o->ctx->client, &err) != 0) {
        run_fail(r, 1, "%s (is the broker running? see --endpoint)%s", err.msg, "");
        return -1;
    }
    if (!consumer)
        return 0;
    snprintf(filter, sizeof(filter), "%s/#", r->prefix);
    req = json_pack("{s:s,s:s,s:s,s:s,s:i}", "op", "sub", "sub", r->sub, "filter", filter,
                    "durability", r->durability, "window", r->o->sub_window);
    if (req == NULL) {
        run_fail(r, 0, "out of memory%s%s", "", "");
        return -1;
    }
    rc = sb_client_request(*out, &reply, req, SBCTL_REQUEST_TIMEOUT_MS, &err);
    json_decref(req);
    if (rc != 0) {
        run_fail(r, 1, "sub %s: %s", r->sub, err.msg);
        return -1;
    }
    if (sb_client_reply_error(reply, &err) != 0) {
        char detail[300];
        snprintf(detail, sizeof(detail), "%s [%s]", err.msg, sb_errname(err.code));
        json_decref(reply);
        run_fail(r, 0, "sub %s: %s", r->sub, detail);
        return -1;
    }
    json_decref(reply);
    return 0;
}

/* Detaches a consumer; with del, deletes the subscription. */
static void close_consumer(bench_run *r, bench_consumer *k, int del, int verbose)
{
    json_t *req, *reply = NULL;
    sb_error err;

    if (k->c == NULL)
        return;
    req = json_pack("{s:s,s:s}", "op", "unsub", "sub", r->sub);
    if (del)
        json_object_set_new(req, "delete", json_true());
    sb_error_clear(&err);
    if (sb_client_request(k->c, &reply, req, 5000, &err) != 0) {
        if (verbose)
            sbctl_errorf("warning: bench: unsub %s: %s", r->sub, err.msg);
    } else if (sb_client_reply_error(reply, &err) != 0 && verbose) {
        sbctl_errorf("warning: bench: could not %s subscription %s: %s [%s]",
                     del ? "delete" : "detach from", r->sub, err.msg, sb_errname(err.code));
    }
    json_decref(req);
    json_decref(reply);
    sb_client_free(k->c);
    k->c = NULL;
}

/* Why a run that recorded no failure still delivered fewer than
 * --messages: the counts say which messages went where. */
static void explain_shortfall(bench_result *res, const bench_opts *o)
{
    if (res->unrouted > 0)
        snprintf(res->error, sizeof(res->error),
                 "%lld of %lld messages delivered: %lld publishes matched no subscription "
                 "(their puback said queues 0)",
                 (long long)res->delivered, (long long)o->messages, (long long)res->unrouted);
    else if (res->published < o->messages)
        snprintf(res->error, sizeof(res->error),
                 "%lld of %lld messages delivered: the broker acknowledged %lld publishes",
                 (long long)res->delivered, (long long)o->messages, (long long)res->published);
    else
        snprintf(res->error, sizeof(res->error),
                 "%lld of %lld messages delivered: %lld publishes acknowledged, %lld of those "
                 "not delivered when the run ended",
                 (long long)res->delivered, (long long)o->messages, (long long)res->published,
                 (long long)(res->published - res->delivered));
}

static int run_one(bench_result *res, const bench_opts *o, const char *endpoint,
                   const char *durability)
{
    bench_run r;
    unsigned char rnd[4] = {0};
    unsigned long long first = 0, last = 0, last_change;
    sbctl_progress pg;
    long long seen_state = -1;
    sbctl_samples ack = {0}, dlv = {0};
    int threads_started = 0, rc = SBCTL_EXIT_OK;
    int64_t per = o->messages / o->producers, extra = o->messages % o->producers, base = 0;

    memset(res, 0, sizeof(*res));
    {
        sb_endpoint ep;
        if (sb_endpoint_parse(&ep, endpoint, NULL) == 0)
            snprintf(res->endpoint, sizeof(res->endpoint), "%s", ep.display);
        else
            snprintf(res->endpoint, sizeof(res->endpoint), "%s", endpoint);
    }
    snprintf(res->durability, sizeof(res->durability), "%s", durability);
    memset(&r, 0, sizeof(r));
    r.o = o;
    r.endpoint = endpoint;
    r.display = res->endpoint;
    r.durability = durability;
    uv_mutex_init(&r.lock);
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0) {
        unsigned long long t = sbctl_now_ns() ^ ((unsigned long long)uv_os_getpid() << 32);
        memcpy(rnd, &t, sizeof(rnd));
    }
    snprintf(r.sub, sizeof(r.sub), "bench-%s-%02x%02x%02x%02x", durability, rnd[0], rnd[1], rnd[2],
             rnd[3]);
    snprintf(r.prefix, sizeof(r.prefix), "bench/%s/%02x%02x%02x%02x", durability, rnd[0], rnd[1],
             rnd[2], rnd[3]);
    r.pad = sb_malloc((size_t)o->size + 1);
    r.seen = sb_calloc((size_t)o->messages, sizeof(*r.seen));
    r.prod = sb_calloc((size_t)o->producers, sizeof(*r.prod));
    r.cons = sb_calloc((size_t)o->consumers, sizeof(*r.cons));
    if (r.pad == NULL || r.seen == NULL || r.prod == NULL || r.cons == NULL) {
        run_fail(&r, 0, "out of memory%s%s", "", "");
        goto finish;
    }
    memset(r.pad, 'x', (size_t)o->size);
    r.pad[o->size] = '\0';

    for (int i = 0; i < o->consumers; i++) {
        r.cons[i].run = &r;
        r.cons[i].index = i;
        if (open_conn(&r, &r.cons[i].c, 1) != 0)
            goto finish;
    }
    for (int i = 0; i < o->producers; i++) {
        bench_producer *p = &r.prod[i];
        p->run = &r;
        p->index = i;
        p->base = base;
        p->quota = per + (i < extra ? 1 : 0);
        base += p->quota;
        p->sent_ns = sb_calloc((size_t)(p->quota > 0 ? p->quota : 1), sizeof(*p->sent_ns));
        if (p->sent_ns == NULL || sbctl_samples_reserve(&p->ack_lat, (size_t)p->quota) != 0) {
            run_fail(&r, 0, "out of memory%s%s", "", "");
            goto finish;
        }
        if (open_conn(&r, &p->c, 0) != 0)
            goto finish;
    }

    for (int i = 0; i < o->consumers; i++)
        uv_thread_create(&r.cons[i].thread, consumer_main, &r.cons[i]);
    for (int i = 0; i < o->producers; i++)
        uv_thread_create(&r.prod[i].thread, producer_main, &r.prod[i]);
    threads_started = 1;

    /* Watch: done when every producer finished and every stored message
     * was delivered; failed when nothing moved for --stall. */
    last_change = sbctl_now_ns();
    sbctl_progress_start(&pg, o->ctx);
    while (!atomic_load(&r.stop)) {
        unsigned long long now;
        long long acked, delivered, state;
        int done;
        uv_sleep(20);
        now = sbctl_now_ns();
        /* producers_done first, and the counts after it: once every
         * producer is done, acked and unrouted are final. Counts read before
         * the sleep would end the run with the publishes acknowledged during
         * it still on their way to the consumers. */
        done = atomic_load(&r.producers_done) == o->producers;
        acked = atomic_load(&r.acked);
        delivered = atomic_load(&r.delivered);
        if (done && delivered >= acked - atomic_load(&r.unrouted))
            break;
        state = acked * 3 + delivered * 7 + atomic_load(&r.pub_errors);
        if (state != seen_state) {
            seen_state = state;
            last_change = now;
        } else if (now - last_change > (unsigned long long)o->stall_ms * 1000000ull) {
            char detail[128];
            snprintf(detail, sizeof(detail), "%lld of %lld published, %lld delivered", acked,
                     (long long)o->messages, delivered);
            run_fail(&r, 0, "stalled for %s: %s", "--stall", detail);
            break;
        }
        progress(&r, &pg);
    }
    atomic_store(&r.stop, 1);

finish:
    if (threads_started) {
        for (int i = 0; i < o->producers; i++)
            uv_thread_join(&r.prod[i].thread);
        for (int i = 0; i < o->consumers; i++)
            uv_thread_join(&r.cons[i].thread);
    }
    if (threads_started)
        sbctl_progress_end(&pg);
    if (r.prod != NULL)
        for (int i = 0; i < o->producers; i++) {
            bench_producer *p = &r.prod[i];
            sb_client_free(p->c);
            if (p->quota > 0 && p->first_ns != 0 && (first == 0 || p->first_ns < first))
                first = p->first_ns;
            sbctl_samples_merge(&ack, &p->ack_lat);
            sbctl_samples_free(&p->ack_lat);
            sb_free(p->sent_ns);
        }
    if (r.cons != NULL) {
        for (int i = 0; i < o->consumers; i++) {
            bench_consumer *k = &r.cons[i];
            if (k->last_ns > last)
                last = k->last_ns;
            sbctl_samples_merge(&dlv, &k->lat);
            sbctl_samples_free(&k->lat);
        }
        /* Detach the others first, so the delete finds the subscription idle. */
        for (int i = o->consumers - 1; i >= 0; i--)
            close_consumer(&r, &r.cons[i], i == 0, 1);
    }

    res->published = atomic_load(&r.acked);
    res->delivered = atomic_load(&r.delivered);
    res->duplicates = atomic_load(&r.duplicates);
    res->pub_errors = atomic_load(&r.pub_errors);
    res->unrouted = atomic_load(&r.unrouted);
    res->seconds = last > first ? (double)(last - first) / 1e9 : 0;
    res->rate = res->seconds > 0 ? (double)res->delivered / res->seconds : 0;
    res->ack_p50 = sbctl_samples_percentile(&ack, 50);
    res->ack_p99 = sbctl_samples_percentile(&ack, 99);
    res->ack_max = sbctl_samples_percentile(&ack, 100);
    res->dlv_p50 = sbctl_samples_percentile(&dlv, 50);
    res->dlv_p99 = sbctl_samples_percentile(&dlv, 99);
    res->dlv_max = sbctl_samples_percentile(&dlv, 100);
    res->ok = r.error[0] == '\0' && res->delivered == o->messages;
    if (r.error[0] != '\0')
        snprintf(res->error, sizeof(res->error), "%s", r.error);
    else if (!res->ok)
        explain_shortfall(res, o);
    if (r.error[0] != '\0')
        rc = r.failed_conn ? SBCTL_EXIT_CONN : SBCTL_EXIT_ERROR;
    else if (!res->ok)
        rc = SBCTL_EXIT_ERROR;

    sbctl_samples_free(&ack);
    sbctl_samples_free(&dlv);
    sb_free(r.prod);
    sb_free(r.cons);
    sb_free(r.seen);
    sb_free(r.pad);
    uv_mutex_destroy(&r.lock);
    return rc;
}

static void print_table(const bench_result *res, size_t n)
{
    static const char *const headers[] = {"ENDPOINT",   "CLASS",       "MSGS",
                                          "SECONDS",    "MSG/S",       "PUBACK p50",
                                          "PUBACK p99", "DELIVER p50", "DELIVER p99"};
    static const sbctl_align align[] = {SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT};
    sbctl_table *t = sbctl_table_new(9, headers, align);
    char *text = NULL;

    if (t == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        char msgs[32], secs[32], rate[32], a50[32], a99[32], d50[32], d99[32];
        const char *cells[9];
        snprintf(msgs, sizeof(msgs), "%lld", (long long)res[i].delivered);
        snprintf(secs, sizeof(secs), "%.3f", res[i].seconds);
        sbctl_fmt_rate(rate, sizeof(rate), res[i].rate);
        sbctl_fmt_ns(a50, sizeof(a50), res[i].ack_p50);
        sbctl_fmt_ns(a99, sizeof(a99), res[i].ack_p99);
        sbctl_fmt_ns(d50, sizeof(d50), res[i].dlv_p50);
        sbctl_fmt_ns(d99, sizeof(d99), res[i].dlv_p99);
        cells[0] = res[i].endpoint;
        cells[1] = res[i].durability;
        cells[2] = msgs;
        cells[3] = secs;
        cells[4] = res[i].ok ? rate : "FAILED";
        cells[5] = a50;
        cells[6] = a99;
        cells[7] = d50;
        cells[8] = d99;
        sbctl_table_add(t, cells);
    }
    if (sbctl_table_render(t, 0, &text) == 0)
        fputs(text, stdout);
    sb_free(text);
    sbctl_table_free(t);
}

static void print_json(const bench_result *res, size_t n, const bench_opts *o)
{
    json_t *arr = json_array();
    char *s;
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        json_t *obj = json_pack(
            "{s:s,s:s,s:b,s:i,s:i,s:I,s:I,s:i,s:b,s:I,s:I,s:I,s:I,s:I,s:f,s:f,"
            "s:f,s:f,s:f,s:f,s:f,s:f}",
            "endpoint", r->endpoint, "durability", r->durability, "ok", r->ok, "producers",
            o->producers, "consumers", o->consumers, "messages", (json_int_t)o->messages, "size",
            (json_int_t)o->size, "window", o->one_at_a_time ? 1 : o->window, "one_at_a_time",
            o->one_at_a_time, "published", (json_int_t)r->published, "delivered",
            (json_int_t)r->delivered, "duplicates", (json_int_t)r->duplicates, "pub_errors",
            (json_int_t)r->pub_errors, "unrouted", (json_int_t)r->unrouted, "seconds", r->seconds,
            "msgs_per_s", r->rate, "puback_p50_us", (double)r->ack_p50 / 1e3, "puback_p99_us",
            (double)r->ack_p99 / 1e3, "puback_max_us", (double)r->ack_max / 1e3, "deliver_p50_us",
            (double)r->dlv_p50 / 1e3, "deliver_p99_us", (double)r->dlv_p99 / 1e3, "deliver_max_us",
            (double)r->dlv_max / 1e3);
        if (obj != NULL && !r->ok)
            json_object_set_new(obj, "error", json_string(r->error));
        json_array_append_new(arr, obj);
    }
    s = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (s != NULL)
        puts(s);
    free(s);
    json_decref(arr);
}

static int run_bench(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    bench_opts o;
    const char *classes[3];
    size_t nclasses = 0, nres = 0;
    bench_result *res;
    char list[64];
    int rc = SBCTL_EXIT_OK;

    memset(&o, 0, sizeof(o));
    o.producers = (int)sbctl_arg_num(a, "producers", 2);
    o.consumers = (int)sbctl_arg_num(a, "consumers", 2);
    o.messages = sbctl_arg_num(a, "messages", 10000);
    o.size = sbctl_arg_num(a, "size", 100);
    o.window = (int)sbctl_arg_num(a, "window", 64);
    o.sub_window = (int)sbctl_arg_num(a, "sub-window", 100);
    o.one_at_a_time = sbctl_arg_flag(a, "one-at-a-time");
    o.stall_ms =
        (int)(sbctl_arg_num(a, "stall", 30000) > 3600000 ? 3600000
                                                         : sbctl_arg_num(a, "stall", 30000));
    o.ctx = ctx;

    snprintf(list, sizeof(list), "%s", sbctl_arg_str(a, "durability", "fsync,batched,memory"));
    for (char *tok = strtok(list, ","); tok != NULL; tok = strtok(NULL, ",")) {
        const char *known[] = {"fsync", "batched", "memory"};
        const char *found = NULL;
        for (size_t i = 0; i < 3; i++)
            if (strcmp(tok, known[i]) == 0)
                found = known[i];
        if (found == NULL)
            return sbctl_usage_error(cmd,
                                     "--durability: unknown class '%s' (fsync, batched, "
                                     "memory)",
                                     tok);
        for (size_t i = 0; i < nclasses; i++)
            if (classes[i] == found)
                found = NULL;
        if (found != NULL)
            classes[nclasses++] = found;
    }
    if (nclasses == 0)
        return sbctl_usage_error(cmd, "--durability: no class given");

    for (size_t e = 0; e < ctx->nendpoints; e++) {
        sb_endpoint ep;
        sb_error err;
        if (sb_endpoint_parse(&ep, ctx->endpoints[e], &err) != 0)
            return sbctl_usage_error(cmd, "%s", err.msg);
    }
    res = sb_calloc(ctx->nendpoints * nclasses, sizeof(*res));
    if (res == NULL) {
        sbctl_errorf("bench: out of memory");
        return SBCTL_EXIT_ERROR;
    }
    if (!ctx->json)
        printf("bench: %d producer%s (%s), %d consumer%s (window %d), %lld messages of %lld "
               "bytes per run\n\n",
               o.producers, o.producers == 1 ? "" : "s",
               o.one_at_a_time ? "one at a time" : "pipelined", o.consumers,
               o.consumers == 1 ? "" : "s", o.sub_window, (long long)o.messages, (long long)o.size);
    fflush(stdout);
    for (size_t e = 0; e < ctx->nendpoints; e++) {
        for (size_t k = 0; k < nclasses; k++) {
            int one = run_one(&res[nres], &o, ctx->endpoints[e], classes[k]);
            if (!res[nres].ok)
                sbctl_errorf("bench %s %s: %s", res[nres].endpoint, classes[k], res[nres].error);
            nres++;
            if (one > rc)
                rc = one;
            if (one == SBCTL_EXIT_CONN)
                break; /* this endpoint is unusable: next one */
        }
    }
    if (ctx->json)
        print_json(res, nres, &o);
    else
        print_table(res, nres);
    sb_free(res);
    return rc;
}

const sbctl_cmd sbctl_cmd_bench = {
    "bench",
    "",
    "measure throughput and latency",
    "For each --endpoint (give several to compare transports) and each durability\n"
    "class, creates a fresh subscription bench-<class>-<random> with that\n"
    "durability, publishes --messages messages from --producers connections (each\n"
    "with up to --window publishes awaiting their puback, or one at a time), and\n"
    "consumes and acknowledges them on --consumers connections. Reports msgs/s from\n"
    "the first publish to the last delivery, and p50/p99 latencies publish->puback\n"
    "and publish->delivery (monotonic clock). The subscription is deleted after.\n",
    bench_spec,
    sizeof(bench_spec) / sizeof(bench_spec[0]),
    0,
    0,
    run_bench};
