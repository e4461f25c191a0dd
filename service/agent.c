/*
 * `switchboard agent`: the session agent (docs/agent.md).
 *
 * A service runs in session 0, where window messages cannot reach the
 * programs on a user's desktop, so desktop adapters (DDE, WM_COPYDATA, the
 * clipboard) run in this process, the same executable started in the
 * user's session. It connects to its session's endpoint, says hello, gets
 * the YAML of the adapters it hosts and the queues its sinks consume, and
 * runs those adapters against an sb_broker in remote mode (remote.h): each
 * broker call they make becomes a jsonl request to the service, so they
 * keep every guarantee they have in the service. A publish completes when
 * the service's `puback` (sent after the commit) arrives; a delivery comes
 * as a `msg` and is acknowledged or refused back with `ack`/`nack`; log
 * lines go to the service's log.
 *
 * It stops when the service says `stop` or on SIGINT/SIGTERM (exit 0,
 * after its adapters closed and the service answered what they sent), and
 * when the connection is lost (exit 3: publishes in flight fail, so their
 * producers are refused rather than told they are stored; deliveries in
 * flight return to their queues in the service). The service restarts it.
 */
#include "service/agent.h"
#include "service/adapter.h"
#include "service/agent_proc.h"
#include "service/alloc.h"
#include "service/base64.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/remote.h"
#include "service/topic.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* How long the agent tries to reach its endpoint. */
#define CONNECT_WAIT_MS 30000
#define CONNECT_RETRY_MS 200
/* How long an orderly stop waits for answers still owed by the service,
 * how often it says what it waits for, and when it gives up on adapters
 * that do not close. */
#define STOP_WAIT_MS 10000
#define STOP_REPORT_MS 2000
#define STOP_EXIT_MS 20000
/* The longest line accepted from the service (a delivery of the largest
 * message, base64 and JSON escapes included). */
#define MAX_LINE ((size_t)512 * 1024 * 1024)

enum { EXIT_OK = 0, EXIT_USAGE = 2, EXIT_LOST = 3, EXIT_REFUSED = 4, EXIT_CONFIG = 1 };

enum { REQ_HELLO, REQ_PUB, REQ_SUB, REQ_UNSUB };

typedef struct request {
    int64_t id;
    int kind;
    sb_publish_cb cb; /* REQ_PUB */
    void *ctx;
    struct rsub *sub; /* REQ_SUB */
    struct request *next;
} request;

/* A subscription an adapter defined (sb_broker_subscribe / sub_define),
 * made in the service when a consumer attaches to it. */
typedef struct sub_def {
    char *name;
    sb_sub_filter *filters, *retained; /* blocks of sb_sub_filters_copy */
    size_t filter_count, retained_count;
    sb_sub_settings settings;
    struct sub_def *next;
} sub_def;

typedef struct rdelivery rdelivery;

/* A consumer attached through the service. */
typedef struct rsub {
    char *name; /* the adapter's name for it */
    char *wire; /* the service's (a route's queue as is; others under agent/<session>/) */
    sb_consumer *c;
    int subscribed;                    /* the service said so: its deliveries are this consumer's */
    rdelivery *backlog, *backlog_tail; /* arrived while the consumer was busy */
    rdelivery *out;                    /* taken, not done */
    struct rsub *next;
} rsub;

struct rdelivery {
    sb_delivery d; /* first: sb_delivery_done gets &d */
    rsub *s;
    uint64_t msg_id;
    rdelivery *next, *prev;
};

typedef struct log_line {
    sb_log_level level;
    char *who, *text;
    struct log_line *next;
} log_line;

typedef struct agent {
    sb_remote remote; /* first: the broker's remote is this */
    sb_broker *b;
    uv_loop_t *loop;
    char endpoint[600];
    uint32_t session;
    sb_log_level level;

    uv_pipe_t pipe;
    uv_connect_t connect_req;
    int pipe_init, pipe_closing, connected, welcomed;
    uv_timer_t timer; /* connect retries, then the stop deadline */
    int64_t connect_deadline;
    uv_signal_t sigint, sigterm;

    char *buf; /* input not yet a whole line */
    size_t len, cap;
    int64_t next_id;
    request *req_head, *req_tail;
    int writes; /* uv_write requests in flight */

    sub_def *defs;
    rsub *subs;
    char prefix[64];
    char **bound; /* the queues of the welcome's bindings */
    size_t bound_count;

    uv_async_t log_async;
    uv_mutex_t log_lock;
    int log_live; /* the sink may wake the loop */
    log_line *logs, *logs_tail;
    size_t log_count;

    int stopping, gave_up;
    int64_t stop_started_ms;
    int exit_code;
} agent;

typedef struct write_req {
    uv_write_t req;
    agent *a;
    char *data;
} write_req;

static agent *the_agent; /* for the log sink (the log has one sink) */

static void conn_lost(agent *a, const char *why);
static void begin_stop(agent *a, int code);

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    agent *a = w->a;
    a->writes--;
    sb_free(w->data);
    sb_free(w);
    if (status != 0 && status != UV_ECANCELED)
        conn_lost(a, uv_strerror(status));
}

/* Sends obj as one line (consumes the reference). */
static int send_json(agent *a, json_t *obj)
{
    char *text;
    size_t n;
    write_req *w;
    uv_buf_t buf;
    int rc;

    if (obj == NULL)
        return SB_ENOMEM;
    if (!a->connected) {
        json_decref(obj);
        return SB_ECLOSED;
    }
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    w = sb_malloc(sizeof(*w));
    if (text == NULL || w == NULL) {
        free(text);
        sb_free(w);
        return SB_ENOMEM;
    }
    n = strlen(text);
    w->data = sb_malloc(n + 1);
    if (w->data == NULL) {
        free(text);
        sb_free(w);
        return SB_ENOMEM;
    }
    memcpy(w->data, text, n);
    w->data[n] = '\n';
    free(text);
    w->a = a;
    buf = uv_buf_init(w->data, (unsigned)(n + 1));
    rc = uv_write(&w->req, (uv_stream_t *)&a->pipe, &buf, 1, on_written);
    if (rc != 0) {
        sb_free(w->data);
        sb_free(w);
        conn_lost(a, uv_strerror(rc));
        return SB_ECLOSED;
    }
    a->writes++;
    return 0;
}

static request *add_request(agent *a, int kind)
{
    request *r = sb_calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->id = ++a->next_id;
    r->kind = kind;
    if (a->req_tail != NULL)
        a->req_tail->next = r;
    else
        a->req_head = r;
    a->req_tail = r;
    return r;
}

/* ---- the log, forwarded ---- */

static void flush_logs(agent *a)
{
    log_line *l;
    uv_mutex_lock(&a->log_lock);
    l = a->logs;
    a->logs = a->logs_tail = NULL;
    a->log_count = 0;
    uv_mutex_unlock(&a->log_lock);
    while (l != NULL) {
        static const char *const names[] = {"debug", "info", "warn", "error", "off"};
        log_line *next = l->next;
        if (a->connected)
            send_json(a, json_pack("{s:s, s:s, s:s, s:s}", "op", "log", "level", names[l->level],
                                   "who", l->who, "message", l->text));
        sb_free(l->who);
        sb_free(l->text);
        sb_free(l);
        l = next;
    }
}

static void on_log_async(uv_async_t *h)
{
    flush_logs(h->data);
}

/* The log sink: any thread. Lines wait for the loop thread, which sends
 * them; a flood beyond 10000 waiting lines is dropped (still on stderr
 * when that is on). */
static void log_sink(sb_log_level level, const char *who, const char *text)
{
    agent *a = the_agent;
    log_line *l;
    if (a == NULL)
        return;
    l = sb_calloc(1, sizeof(*l));
    if (l == NULL)
        return;
    l->level = level;
    l->who = sb_strdup(who);
    l->text = sb_strdup(text);
    uv_mutex_lock(&a->log_lock);
    if (!a->log_live || l->who == NULL || l->text == NULL || a->log_count >= 10000) {
        uv_mutex_unlock(&a->log_lock);
        sb_free(l->who);
        sb_free(l->text);
        sb_free(l);
        return;
    }
    if (a->logs_tail != NULL)
        a->logs_tail->next = l;
    else
        a->logs = l;
    a->logs_tail = l;
    a->log_count++;
    uv_async_send(&a->log_async);
    uv_mutex_unlock(&a->log_lock);
}

static void logs_off(agent *a)
{
    sb_log_set_sink(NULL, SB_LOG_OFF);
    uv_mutex_lock(&a->log_lock);
    a->log_live = 0;
    uv_mutex_unlock(&a->log_lock);
}

/* ---- deliveries ---- */

static rsub *find_sub_by_consumer(agent *a, const sb_consumer *c)
{
    for (rsub *s = a->subs; s != NULL; s = s->next)
        if (s->c == c)
            return s;
    return NULL;
}

static void rdelivery_free(rdelivery *rd)
{
    sb_message_unref(rd->d.msg);
    sb_free(rd);
}

static void out_remove(rsub *s, rdelivery *rd)
{
    if (rd->prev != NULL)
        rd->prev->next = rd->next;
    else
        s->out = rd->next;
    if (rd->next != NULL)
        rd->next->prev = rd->prev;
    rd->next = rd->prev = NULL;
}

/* Offers the backlog to the consumer, in order, until it refuses one. */
static void offer(rsub *s)
{
    rdelivery *rd;
    while ((rd = s->backlog) != NULL && !s->c->busy) {
        s->backlog = rd->next;
        if (s->backlog == NULL)
            s->backlog_tail = NULL;
        rd->next = s->out;
        rd->prev = NULL;
        if (s->out != NULL)
            s->out->prev = rd;
        s->out = rd;
        s->c->inflight++;
        if (s->c->deliver(s->c, &rd->d) != 0) {
            s->c->inflight--;
            out_remove(s, rd);
            s->c->busy = 1;
            rd->next = s->backlog;
            s->backlog = rd;
            if (s->backlog_tail == NULL)
                s->backlog_tail = rd;
        }
    }
}

static void free_backlog(rsub *s)
{
    while (s->backlog != NULL) {
        rdelivery *rd = s->backlog;
        s->backlog = rd->next;
        rdelivery_free(rd);
    }
    s->backlog_tail = NULL;
}

/* A `msg` line: a delivery for the consumer of its subscription. */
static void on_msg(agent *a, json_t *o)
{
    const char *wire = json_string_value(json_object_get(o, "sub"));
    const char *topic = json_string_value(json_object_get(o, "topic"));
    json_t *payload = json_object_get(o, "payload"), *b64 = json_object_get(o, "payload_b64");
    json_t *headers = json_object_get(o, "headers"), *v;
    const char *key;
    sb_message *m = NULL;
    rdelivery *rd;
    rsub *s = NULL;

    for (rsub *x = a->subs; wire != NULL && x != NULL; x = x->next)
        if (x->subscribed && strcmp(x->wire, wire) == 0) {
            s = x;
            break;
        }
    if (s == NULL || topic == NULL)
        return; /* a consumer that detached: the service takes it back */
    if (json_is_string(payload)) {
        m = sb_message_new(topic, json_string_value(payload), json_string_length(payload));
    } else if (json_is_string(b64)) {
        unsigned char *bytes;
        size_t n;
        if (sb_base64_decode(json_string_value(b64), json_string_length(b64), &bytes, &n) == 0)
            m = sb_message_new_owned(topic, bytes, n);
    }
    if (m == NULL) {
        sb_errlog(s->name,
                  "cannot take message %lld from the service (out of memory or bad "
                  "payload); it is refused",
                  (long long)json_integer_value(json_object_get(o, "msg_id")));
        send_json(a, json_pack("{s:s, s:s, s:I, s:s}", "op", "nack", "sub", s->wire, "msg_id",
                               json_integer_value(json_object_get(o, "msg_id")), "reason",
                               "the session agent could not take it"));
        return;
    }
    m->id = (uint64_t)json_integer_value(json_object_get(o, "msg_id"));
    if (json_is_integer(json_object_get(o, "created")))
        m->created_ms = json_integer_value(json_object_get(o, "created"));
    json_object_foreach(headers, key, v)
    {
        if (json_is_string(v) && sb_message_add_header_n(m, key, strlen(key), json_string_value(v),
                                                         json_string_length(v)) != 0)
            break;
    }
    rd = sb_calloc(1, sizeof(*rd));
    if (rd == NULL) {
        sb_message_unref(m);
        return; /* returns after its lease */
    }
    rd->s = s;
    rd->msg_id = m->id;
    rd->d.msg = m;
    rd->d.sub = s->name;
    rd->d.attempt = (int)json_integer_value(json_object_get(o, "attempt"));
    if (rd->d.attempt < 1)
        rd->d.attempt = 1;
    rd->d.redelivery = rd->d.attempt > 1;
    rd->d.consumer = s->c;
    if (s->backlog_tail != NULL)
        s->backlog_tail->next = rd;
    else
        s->backlog = rd;
    s->backlog_tail = rd;
    offer(s);
}

/* ---- the remote operations (remote.h) ---- */

static sub_def *find_def(agent *a, const char *name)
{
    for (sub_def *d = a->defs; d != NULL; d = d->next)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

static int bound_queue(const agent *a, const char *name)
{
    for (size_t i = 0; i < a->bound_count; i++)
        if (strcmp(a->bound[i], name) == 0)
            return 1;
    return 0;
}

static int r_publish(sb_remote *r, sb_message *msg, const sb_publish_opts *opts, sb_publish_cb cb,
                     void *ctx, sb_error *err)
{
    agent *a = (agent *)r;
    json_t *o, *h;
    request *req;
    const char *why;

    if (!a->connected || a->stopping)
        return sb_error_set(err, SB_ESHUTDOWN, 0, "the session agent is not connected");
    if (opts != NULL && opts->dedup_key != NULL)
        return sb_error_set(err, SB_EINVAL, 0, "exactly-once keys are not kept by session agents");
    if (sb_topic_validate(msg->topic, strlen(msg->topic), &why) != 0)
        return sb_error_set(err, SB_EINVAL, 0, "topic %s", why);
    o = json_pack("{s:s, s:s}", "op", "pub", "topic", msg->topic);
    h = json_object();
    if (o == NULL || h == NULL)
        goto oom;
    if (sb_utf8_valid((const char *)msg->payload, msg->payload_len)) {
        if (json_object_set_new(o, "payload",
                                json_stringn((const char *)msg->payload, msg->payload_len)) != 0)
            goto oom;
    } else {
        char *b64 = sb_base64_encode(msg->payload, msg->payload_len);
        if (b64 == NULL || json_object_set_new(o, "payload_b64", json_string(b64)) != 0) {
            sb_free(b64);
            goto oom;
        }
        sb_free(b64);
    }
    for (size_t i = 0; i < msg->header_count; i++)
        if (json_object_set_new(h, msg->headers[i].key, json_string(msg->headers[i].value)) != 0)
            goto oom;
    if (msg->header_count > 0 && json_object_set(o, "headers", h) != 0)
        goto oom;
    if (opts != NULL && opts->retain)
        json_object_set_new(o, "retain", json_true());
    if (opts != NULL && opts->source != NULL)
        json_object_set_new(o, "source", json_string(opts->source));
    if (msg->expires_ms > 0)
        json_object_set_new(o, "ttl",
                            json_integer(msg->expires_ms > msg->created_ms
                                             ? msg->expires_ms - msg->created_ms
                                             : 1));
    if (msg->priority > 0)
        json_object_set_new(o, "priority", json_integer(msg->priority));
    json_decref(h);
    h = NULL;
    req = add_request(a, REQ_PUB);
    if (req == NULL)
        goto oom;
    req->cb = cb;
    req->ctx = ctx;
    json_object_set_new(o, "id", json_integer(req->id));
    /* a failed write ends the connection; the callback then says so */
    send_json(a, o);
    return 0;
oom:
    json_decref(o);
    json_decref(h);
    return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
}

static int r_sub_define(sb_remote *r, const char *name, const sb_sub_filter *filters, size_t count,
                        const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                        size_t retained_count, sb_error *err)
{
    agent *a = (agent *)r;
    sub_def *d = find_def(a, name);
    int fresh = d == NULL, oom = 0;
    if (fresh && (d = sb_calloc(1, sizeof(*d))) == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    if (fresh && (d->name = sb_strdup(name)) == NULL) {
        sb_free(d);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    if (filters != NULL) {
        sb_sub_filter *f = sb_sub_filters_copy(filters, count, &oom);
        if (oom)
            goto oom;
        sb_free(d->filters);
        d->filters = f;
        d->filter_count = count;
    }
    sb_free(d->retained);
    d->retained = sb_sub_filters_copy(retained_for, retained_count, &oom);
    d->retained_count = d->retained != NULL ? retained_count : 0;
    if (oom)
        goto oom;
    if (settings != NULL)
        d->settings = *settings;
    else if (fresh)
        sb_sub_settings_default(&d->settings);
    if (fresh) {
        d->next = a->defs;
        a->defs = d;
    }
    return 0;
oom:
    if (fresh) {
        sb_free(d->name);
        sb_free(d->filters);
        sb_free(d);
    }
    return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
}

static int r_sub_get(sb_remote *r, const char *name, sb_sub_def *out)
{
    sub_def *d = find_def((agent *)r, name);
    if (d == NULL)
        return SB_ENOTFOUND;
    out->filters = d->filters;
    out->filter_count = d->filter_count;
    return 0;
}

/* Filters for the wire: one as a string, several as a list (jsonl). */
static json_t *filters_json(const sb_sub_filter *filters, size_t count)
{
    json_t *list;
    if (count == 1)
        return json_string(filters[0].filter);
    list = json_array();
    for (size_t i = 0; list != NULL && i < count; i++)
        if (json_array_append_new(list, json_string(filters[i].filter)) != 0) {
            json_decref(list);
            list = NULL;
        }
    return list;
}

static char *wire_name(agent *a, const char *name)
{
    size_t n;
    char *w;
    if (bound_queue(a, name))
        return sb_strdup(name);
    n = strlen(a->prefix) + strlen(name) + 1;
    w = sb_malloc(n);
    if (w != NULL)
        snprintf(w, n, "%s%s", a->prefix, name);
    return w;
}

static int r_unsubscribe(sb_remote *r, const char *name, sb_error *err)
{
    agent *a = (agent *)r;
    sub_def **p;
    char *wire = wire_name(a, name);
    request *req;
    if (wire == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    for (p = &a->defs; *p != NULL; p = &(*p)->next)
        if (strcmp((*p)->name, name) == 0) {
            sub_def *d = *p;
            *p = d->next;
            sb_free(d->name);
            sb_free(d->filters);
            sb_free(d->retained);
            sb_free(d);
            break;
        }
    req = add_request(a, REQ_UNSUB);
    if (req == NULL) {
        sb_free(wire);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    send_json(a, json_pack("{s:s, s:I, s:s, s:b}", "op", "unsub", "id", (json_int_t)req->id, "sub",
                           wire, "delete", 1));
    sb_free(wire);
    return 0;
}

static int r_attach(sb_remote *r, const char *name, sb_consumer *c, sb_error *err)
{
    static const char *const classes[] = {"fsync", "batched", "memory"};
    agent *a = (agent *)r;
    sub_def *d = find_def(a, name);
    rsub *s = sb_calloc(1, sizeof(*s));
    json_t *o;
    request *req;

    if (s == NULL || (s->name = sb_strdup(name)) == NULL || (s->wire = wire_name(a, name)) == NULL)
        goto oom;
    s->c = c;
    req = add_request(a, REQ_SUB);
    if (req == NULL)
        goto oom;
    req->sub = s;
    o = json_pack("{s:s, s:I, s:s, s:i}", "op", "sub", "id", (json_int_t)req->id, "sub", s->wire,
                  "window", c->window);
    if (o != NULL && d != NULL) {
        const sb_sub_settings *st = &d->settings;
        if (d->filter_count > 0)
            json_object_set_new(o, "filter", filters_json(d->filters, d->filter_count));
        json_object_set_new(o, "durability", json_string(classes[st->durability]));
        json_object_set_new(o, "max_attempts", json_integer(st->max_attempts));
        json_object_set_new(o, "lease", json_integer(st->lease_ms));
        json_object_set_new(o, "ttl", json_integer(st->ttl_ms));
        json_object_set_new(o, "max_depth", json_integer(st->max_depth));
        json_object_set_new(o, "transient", json_boolean(st->transient));
        if (st->expire_ms > 0)
            json_object_set_new(o, "expire", json_integer(st->expire_ms));
        if (d->retained_count > 0)
            json_object_set_new(o, "retained", filters_json(d->retained, d->retained_count));
    }
    s->next = a->subs;
    a->subs = s;
    send_json(a, o);
    return 0;
oom:
    if (s != NULL) {
        sb_free(s->name);
        sb_free(s->wire);
        sb_free(s);
    }
    return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
}

static void rsub_free(rsub *s)
{
    free_backlog(s);
    while (s->out != NULL) {
        rdelivery *rd = s->out;
        out_remove(s, rd);
        rdelivery_free(rd);
    }
    sb_free(s->name);
    sb_free(s->wire);
    sb_free(s);
}

static void r_detach(sb_remote *r, sb_consumer *c, int failed)
{
    agent *a = (agent *)r;
    rsub *s = find_sub_by_consumer(a, c), **p;
    request *req;
    (void)failed; /* the service counts attempts when an agent goes, not on an orderly detach */
    if (s == NULL)
        return;
    for (p = &a->subs; *p != NULL; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    /* pending requests may still point at it */
    for (request *q = a->req_head; q != NULL; q = q->next)
        if (q->sub == s)
            q->sub = NULL;
    if (a->connected && (req = add_request(a, REQ_UNSUB)) != NULL)
        send_json(a, json_pack("{s:s, s:I, s:s}", "op", "unsub", "id", (json_int_t)req->id, "sub",
                               s->wire));
    c->inflight = 0;
    rsub_free(s);
}

static void r_delivery_done(sb_remote *r, sb_delivery *d, int status, const char *reason)
{
    agent *a = (agent *)r;
    rdelivery *rd = (rdelivery *)d;
    rsub *s = rd->s;
    out_remove(s, rd);
    if (s->c->inflight > 0)
        s->c->inflight--;
    if (a->connected) {
        if (status == 0)
            send_json(a, json_pack("{s:s, s:s, s:I}", "op", "ack", "sub", s->wire, "msg_id",
                                   (json_int_t)rd->msg_id));
        else
            send_json(a, json_pack("{s:s, s:s, s:I, s:s}", "op", "nack", "sub", s->wire, "msg_id",
                                   (json_int_t)rd->msg_id, "reason",
                                   reason != NULL ? reason : "rejected by the consumer"));
    }
    rdelivery_free(rd);
    offer(s);
}

static void r_consumer_ready(sb_remote *r, sb_consumer *c)
{
    rsub *s = find_sub_by_consumer((agent *)r, c);
    if (s != NULL)
        offer(s);
}

static int r_busy(sb_remote *r)
{
    agent *a = (agent *)r;
    if (a->pipe_closing)
        return 1; /* its close callback fails what is still pending */
    if (!a->connected || a->gave_up)
        goto idle;
    if (a->req_head != NULL || a->writes > 0)
        return 1;
    flush_logs(a); /* the last lines, adapters' closing included */
    if (a->writes > 0)
        return 1;
idle:
    logs_off(a);
    return 0;
}

static const sb_remote_ops agent_ops = {
    r_publish, r_sub_define,    r_sub_get,        r_unsubscribe, r_attach,
    r_detach,  r_delivery_done, r_consumer_ready, r_busy,
};

/* ---- the connection ---- */

static int error_code(const char *name)
{
    static const int codes[] = {
        SB_ENOMEM,    SB_EINVAL, SB_EIO,        SB_ENOSPC,       SB_ECORRUPT,  SB_EFOREIGN,
        SB_ENOTFOUND, SB_EEXIST, SB_EFULL,      SB_ETOOBIG,      SB_EPROTO,    SB_ECLOSED,
        SB_ETIMEDOUT, SB_EACCES, SB_EADDRINUSE, SB_ECONNREFUSED, SB_ESHUTDOWN, SB_EDUPLICATE,
        SB_ECONFIG,   SB_EBUSY,  SB_EVERSION,   SB_ESTORE,       SB_EAUTH};
    for (size_t i = 0; name != NULL && i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strcmp(sb_errname(codes[i]), name) == 0)
            return codes[i];
    return SB_EUNKNOWN;
}

static void fail_requests(agent *a)
{
    while (a->req_head != NULL) {
        request *r = a->req_head;
        a->req_head = r->next;
        if (r->kind == REQ_PUB && r->cb != NULL)
            r->cb(r->ctx, SB_ECLOSED, 0, 0,
                  "the session agent lost its connection to the service before the commit "
                  "was confirmed");
        sb_free(r);
    }
    a->req_tail = NULL;
}

static void on_pipe_closed(uv_handle_t *h)
{
    agent *a = h->data;
    a->pipe_closing = 0;
    a->pipe_init = 0;
    fail_requests(a);
    for (rsub *s = a->subs; s != NULL; s = s->next) {
        free_backlog(s);
        s->subscribed = 0;
    }
    if (!a->stopping)
        begin_stop(a, a->welcomed ? EXIT_LOST : EXIT_LOST);
}

static void conn_lost(agent *a, const char *why)
{
    if (!a->connected)
        return;
    a->connected = 0;
    /* back to stderr: nobody forwards the log now */
    sb_log_configure(a->level, 1, NULL);
    if (a->stopping && a->req_head == NULL)
        sb_info("agent", "disconnected from the service");
    else
        sb_errlog("agent", "lost the connection to the service (%s)%s", why,
                  a->req_head != NULL ? ": publishes in flight are refused to their producers"
                                      : "");
    if (a->pipe_init && !a->pipe_closing && !uv_is_closing((uv_handle_t *)&a->pipe)) {
        a->pipe_closing = 1;
        uv_close((uv_handle_t *)&a->pipe, on_pipe_closed);
    }
}

static int welcome(agent *a, json_t *o)
{
    const char *text = json_string_value(json_object_get(o, "config"));
    const char *prefix = json_string_value(json_object_get(o, "prefix"));
    json_t *bindings = json_object_get(o, "bindings"), *v;
    sb_remote_binding *bs = NULL;
    sb_config_errors errs = {0};
    char desktop[300];
    sb_config *cfg;
    sb_error err;
    size_t i, n = json_array_size(bindings);
    int rc;

    if (text == NULL || prefix == NULL || !json_is_array(bindings)) {
        sb_errlog("agent", "the service's welcome lacks config, prefix or bindings");
        return EXIT_REFUSED;
    }
    snprintf(a->prefix, sizeof(a->prefix), "%s", prefix);
    if (sb_config_parse(&cfg, "agent configuration", text, strlen(text), &errs) != 0) {
        char line[1024];
        for (i = 0; i < errs.count; i++)
            sb_errlog("agent", "%s", sb_config_error_format(&errs.items[i], line, sizeof line));
        sb_config_errors_clear(&errs);
        return EXIT_CONFIG;
    }
    bs = sb_calloc(n + 1, sizeof(*bs));
    a->bound = sb_calloc(n + 1, sizeof(*a->bound));
    if (bs == NULL || a->bound == NULL) {
        sb_free(bs);
        sb_config_free(cfg);
        sb_errlog("agent", "out of memory");
        return EXIT_CONFIG;
    }
    json_array_foreach(bindings, i, v)
    {
        bs[a->bound_count].queue = json_string_value(json_object_get(v, "sub"));
        bs[a->bound_count].adapter = json_string_value(json_object_get(v, "adapter"));
        if (bs[a->bound_count].queue != NULL && bs[a->bound_count].adapter != NULL &&
            (a->bound[a->bound_count] = sb_strdup(bs[a->bound_count].queue)) != NULL)
            a->bound_count++;
    }
    /* From here on the log goes to the service (and not also to stderr). */
    a->level = cfg->broker.log_level;
    sb_log_configure(a->level, 0, NULL);
    uv_mutex_lock(&a->log_lock);
    a->log_live = 1;
    uv_mutex_unlock(&a->log_lock);
    sb_log_set_sink(log_sink, a->level);
    a->welcomed = 1;
    sb_agent_desktop(desktop, sizeof(desktop));
    sb_info("agent", "connected to the service as the agent of session %lu%s%s%s: %zu adapter%s",
            (unsigned long)a->session, desktop[0] != '\0' ? " (desktop " : "", desktop,
            desktop[0] != '\0' ? ")" : "", cfg->adapter_count, cfg->adapter_count == 1 ? "" : "s");
    rc = sb_broker_start_remote(a->b, &a->remote, cfg, bs, a->bound_count, &err);
    sb_free(bs);
    if (rc != 0) {
        sb_errlog("agent", "cannot start: %s", err.msg);
        return EXIT_CONFIG;
    }
    return EXIT_OK;
}

/* A reply: the answer to the oldest request (replies come in order). */
static void on_reply(agent *a, json_t *o, const char *op)
{
    request *r = a->req_head;
    json_t *id = json_object_get(o, "id");
    int error = strcmp(op, "error") == 0;

    if (id == NULL) {
        /* an ack or nack it could not take (they have no id), or a line it
         * could not read */
        sb_errlog("agent", "the service: %s", json_string_value(json_object_get(o, "message")));
        return;
    }
    if (r == NULL || !json_is_integer(id) || json_integer_value(id) != r->id) {
        conn_lost(a, "an answer out of order");
        return;
    }
    a->req_head = r->next;
    if (a->req_head == NULL)
        a->req_tail = NULL;
    switch (r->kind) {
    case REQ_HELLO:
        if (error) {
            sb_errlog("agent", "the service refused this agent: %s",
                      json_string_value(json_object_get(o, "message")));
            begin_stop(a, EXIT_REFUSED);
        } else {
            int rc = welcome(a, o);
            if (rc != 0)
                begin_stop(a, rc);
        }
        break;
    case REQ_PUB:
        if (error)
            r->cb(r->ctx, error_code(json_string_value(json_object_get(o, "code"))), 0, 0,
                  json_string_value(json_object_get(o, "message")));
        else
            r->cb(r->ctx, 0, (uint64_t)json_integer_value(json_object_get(o, "msg_id")),
                  (int)json_integer_value(json_object_get(o, "queues")), NULL);
        break;
    case REQ_SUB:
        if (r->sub == NULL)
            break; /* detached meanwhile */
        if (error)
            sb_errlog(r->sub->name, "the service refused the subscription %s: %s", r->sub->wire,
                      json_string_value(json_object_get(o, "message")));
        else
            r->sub->subscribed = 1;
        break;
    case REQ_UNSUB:
        if (error)
            sb_warn("agent", "unsubscribe: %s", json_string_value(json_object_get(o, "message")));
        break;
    }
    sb_free(r);
}

static void on_line(agent *a, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *o = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    const char *op = json_string_value(json_object_get(o, "op"));
    if (op == NULL) {
        json_decref(o);
        conn_lost(a, "a line that is not a jsonl object");
        return;
    }
    if (strcmp(op, "msg") == 0) {
        on_msg(a, o);
    } else if (strcmp(op, "stop") == 0) {
        sb_info("agent", "the service asks this agent to stop");
        begin_stop(a, EXIT_OK);
    } else {
        on_reply(a, o, op);
    }
    json_decref(o);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    agent *a = h->data;
    (void)suggested;
    if (a->cap - a->len < 65536) {
        size_t cap = a->cap == 0 ? 131072 : a->cap * 2;
        char *n = cap <= MAX_LINE + 65536 ? sb_realloc(a->buf, cap) : NULL;
        if (n == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        a->buf = n;
        a->cap = cap;
    }
    *buf = uv_buf_init(a->buf + a->len, (unsigned)(a->cap - a->len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    agent *a = stream->data;
    size_t start = 0;
    (void)buf;
    if (nread == UV_ENOBUFS) {
        conn_lost(a, "a line from the service too long");
        return;
    }
    if (nread < 0) {
        conn_lost(a, nread == UV_EOF ? "the service closed it" : uv_strerror((int)nread));
        return;
    }
    a->len += (size_t)nread;
    for (;;) {
        char *nl = memchr(a->buf + start, '\n', a->len - start);
        size_t n;
        if (nl == NULL)
            break;
        n = (size_t)(nl - (a->buf + start));
        if (n > 0 && a->buf[start + n - 1] == '\r')
            n--;
        if (n > 0)
            on_line(a, a->buf + start, n);
        start = (size_t)(nl - a->buf) + 1;
        if (!a->connected)
            return;
    }
    memmove(a->buf, a->buf + start, a->len - start);
    a->len -= start;
}

static void try_connect(agent *a);

static void on_retry(uv_timer_t *t)
{
    try_connect(t->data);
}

static void on_connect_closed(uv_handle_t *h)
{
    agent *a = h->data;
    a->pipe_init = 0;
    if (a->stopping)
        return;
    if (sb_now_ms() >= a->connect_deadline) {
        sb_errlog("agent",
                  "cannot connect to %s within %d s; is the service serving this "
                  "session's agents?",
                  a->endpoint, CONNECT_WAIT_MS / 1000);
        begin_stop(a, EXIT_LOST);
        return;
    }
    uv_timer_start(&a->timer, on_retry, CONNECT_RETRY_MS, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
    agent *a = req->data;
    request *r;
    if (status != 0) {
        sb_debug("agent", "connect to %s: %s", a->endpoint, uv_strerror(status));
        uv_close((uv_handle_t *)&a->pipe, on_connect_closed);
        return;
    }
    if (a->stopping) {
        a->pipe_closing = 1;
        uv_close((uv_handle_t *)&a->pipe, on_pipe_closed);
        return;
    }
    a->connected = 1;
    uv_read_start((uv_stream_t *)&a->pipe, on_alloc, on_read);
    r = add_request(a, REQ_HELLO);
    if (r == NULL ||
        send_json(a, json_pack("{s:s, s:I, s:I, s:I, s:s}", "op", "hello", "id", (json_int_t)r->id,
                               "session", (json_int_t)a->session, "pid", (json_int_t)uv_os_getpid(),
                               "version", SB_VERSION_STRING)) != 0)
        conn_lost(a, "cannot send hello");
}

static void try_connect(agent *a)
{
    uv_pipe_init(a->loop, &a->pipe, 0);
    a->pipe.data = a;
    a->pipe_init = 1;
    a->connect_req.data = a;
    uv_pipe_connect(&a->connect_req, &a->pipe, a->endpoint, on_connect);
}

/* ---- stopping ---- */

static int count_requests(const agent *a)
{
    int n = 0;
    for (const request *r = a->req_head; r != NULL; r = r->next)
        n++;
    return n;
}

/* A stop that takes long says what it waits for; one that never ends
 * (an adapter that does not close) ends the process: an agent keeps
 * nothing that needs an orderly end. */
static void on_stop_deadline(uv_timer_t *t)
{
    agent *a = t->data;
    int64_t waited = sb_now_ms() - a->stop_started_ms;
    if (waited >= STOP_EXIT_MS) {
        sb_log_configure(a->level, 1, NULL);
        sb_errlog("agent", "adapters still closing %lld ms after the stop began; leaving now",
                  (long long)waited);
        fflush(stderr);
        _Exit(a->exit_code != 0 ? a->exit_code : EXIT_LOST);
    }
    sb_warn("agent", "stopping for %lld ms: %d answer%s due, %d write%s, adapters %s",
            (long long)waited, count_requests(a), count_requests(a) == 1 ? "" : "s", a->writes,
            a->writes == 1 ? "" : "s", sb_broker_adapters_closed(a->b) ? "closed" : "closing");
    if (a->connected && waited >= STOP_WAIT_MS) {
        sb_warn("agent", "the service did not answer within %d s of the stop; leaving",
                STOP_WAIT_MS / 1000);
        a->gave_up = 1;
        conn_lost(a, "stop deadline");
    }
}

/* Stops the adapters, then (sb_broker_stop waits for r_busy) the rest. */
static void begin_stop(agent *a, int code)
{
    if (a->stopping)
        return;
    a->stopping = 1;
    a->exit_code = code;
    a->stop_started_ms = sb_now_ms();
    uv_timer_stop(&a->timer);
    uv_timer_start(&a->timer, on_stop_deadline, STOP_REPORT_MS, STOP_REPORT_MS);
    sb_broker_stop(a->b);
}

static void on_signal(uv_signal_t *h, int signum)
{
    agent *a = h->data;
    sb_info("agent", "signal %d received: stopping", signum);
    begin_stop(a, EXIT_OK);
}

/* ---- the command ---- */

static void usage(FILE *f)
{
    fprintf(f, "Usage: switchboard agent [--endpoint NAME] [--log-level LEVEL]\n"
               "  The session agent: hosts the desktop adapters (DDE, WM_COPYDATA, clipboard)\n"
               "  of a broker whose `desktop` setting puts them in agents. The service starts\n"
               "  one in each user's session; NAME is that session's endpoint (default\n"
               "  switchboard-agent-<session id>, a named pipe; on POSIX a socket path).\n");
}

int sb_agent_command(int argc, char **argv)
{
    const char *endpoint = NULL, *level_name = NULL;
    char tmpl[600], name[600];
    sb_config *placeholder = NULL;
    sb_config_errors errs = {0};
    sb_error err;
    agent *a;
    int level = SB_LOG_INFO, code;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--endpoint") == 0 && i + 1 < argc)
            endpoint = argv[++i];
        else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc)
            level_name = argv[++i];
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else {
            fprintf(stderr, "switchboard agent: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (level_name != NULL &&
        ((level = sb_log_level_parse(level_name)) < 0 || level == SB_LOG_OFF)) {
        fprintf(stderr, "switchboard agent: unknown log level '%s'\n", level_name);
        return EXIT_USAGE;
    }
    sb_log_configure((sb_log_level)level, 1, NULL);
    a = sb_calloc(1, sizeof(*a));
    if (a == NULL || sb_config_parse(&placeholder, "agent", "{}", 2, &errs) != 0) {
        sb_errlog("agent", "out of memory");
        sb_free(a);
        return EXIT_CONFIG;
    }
    a->remote.ops = &agent_ops;
    a->session = sb_agent_current_session();
    a->level = (sb_log_level)level;
    if (endpoint == NULL) {
        const char *at;
        sb_agent_default_endpoint(tmpl, sizeof(tmpl), "./data");
        at = strstr(tmpl, "{session}");
        if (at != NULL)
            snprintf(name, sizeof(name), "%.*s%lu%s", (int)(at - tmpl), tmpl,
                     (unsigned long)a->session, at + strlen("{session}"));
        else
            snprintf(name, sizeof(name), "%s", tmpl);
        endpoint = name;
    }
    sb_agent_endpoint_path(a->endpoint, sizeof(a->endpoint), endpoint);
    /* A broker with no store: started in remote mode once the service says
     * which adapters to run (welcome). */
    if (sb_broker_new(&a->b, placeholder, &err) != 0) {
        sb_errlog("agent", "%s", err.msg);
        sb_config_free(placeholder);
        sb_free(a);
        return EXIT_CONFIG;
    }
    a->loop = sb_broker_loop(a->b);
    uv_mutex_init(&a->log_lock);
    uv_async_init(a->loop, &a->log_async, on_log_async);
    a->log_async.data = a;
    the_agent = a;
    uv_timer_init(a->loop, &a->timer);
    a->timer.data = a;
    uv_signal_init(a->loop, &a->sigint);
    a->sigint.data = a;
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_init(a->loop, &a->sigterm);
    a->sigterm.data = a;
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    a->connect_deadline = sb_now_ms() + CONNECT_WAIT_MS;
    sb_info("agent", "session %lu: connecting to %s", (unsigned long)a->session, a->endpoint);
    try_connect(a);
    sb_broker_run(a->b);

    code = a->exit_code;
    logs_off(a);
    sb_log_configure(a->level, 1, NULL); /* the last lines, to stderr */
    the_agent = NULL;
    sb_broker_free(a->b);
    flush_logs(a); /* frees what is left */
    uv_mutex_destroy(&a->log_lock);
    fail_requests(a);
    while (a->subs != NULL) {
        rsub *s = a->subs;
        a->subs = s->next;
        rsub_free(s);
    }
    while (a->defs != NULL) {
        sub_def *d = a->defs;
        a->defs = d->next;
        sb_free(d->name);
        sb_free(d->filters);
        sb_free(d->retained);
        sb_free(d);
    }
    for (size_t i = 0; i < a->bound_count; i++)
        sb_free(a->bound[i]);
    sb_free(a->bound);
    sb_free(a->buf);
    sb_free(a);
    sb_info("agent", "stopped (exit code %d)", code);
    return code;
}
