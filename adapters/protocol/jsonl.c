/*
 * The jsonl protocol (docs/protocol.md): one JSON object per line. Replies
 * go out in request order through a queue of reply slots, so pipelined
 * publishes are acknowledged in order even when other requests finish first;
 * deliveries queue behind pending replies so a "subscribed" reply always
 * precedes the subscription's first message.
 */
#include "adapters/stream_keys.h"
#include "adapters/conn.h"
#include "adapters/protocol/jsonl_fast.h"
#include "service/agent_host.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/base64.h"
#include "service/jsonw.h"
#include "service/log.h"
#include "service/pool.h"
#include "service/topic.h"

#include <jansson.h>
#include <string.h>

typedef struct jsonl_session jsonl_session;

/* A publish request, from either parser. Strings need not be NUL-terminated. */
#define PUB_MAX_HEADERS 64
typedef struct pub_in {
    jl_str topic, payload, payload_b64;
    jl_str hk[PUB_MAX_HEADERS], hv[PUB_MAX_HEADERS];
    int hcount;
    int retain;
    int has_ttl;
    int64_t ttl_ms;
    int has_priority;
    int64_t priority;
    const char *source; /* a session agent's adapter and peer, or NULL */
} pub_in;

typedef struct reply {
    struct reply *next;
    jsonl_session *s;
    json_t *id;     /* the request's id (new reference) or NULL */
    int64_t id_num; /* or its integer id, when has_id_num (the fast path's) */
    int has_id_num;
    char *line; /* ready when not NULL */
    size_t len;
    int orphan; /* the session closed before it was ready */
} reply;

typedef struct jsub {
    sb_consumer consumer;
    jsonl_session *s;
    char *name;
    size_t name_len;
    sb_delivery *out; /* outstanding deliveries (oldest first) */
    sb_delivery *out_tail;
    struct jsub *next;
} jsub;

struct jsonl_session {
    sb_conn *conn;
    size_t max;         /* longest line */
    size_t max_payload; /* the adapter's max_message */
    char *buf;
    size_t len, cap;
    reply *rhead, *rtail;
    jsub *subs;
    int pending; /* async callbacks outstanding */
    int closed;
    int agent_ready; /* an agent endpoint's connection whose hello was accepted */
    char source[200];
    size_t source_len;
    char who[160];
    char *scratch; /* decoded strings of the fast path */
    size_t scratch_cap;
    sb_jsonw out; /* the line being written: pubacks and deliveries (reused) */
    jl_req fast;
    pub_in fast_pub;
};

/* ---- reply queue ---- */

/* A reply slot per request, made and freed by the hundred per loop turn:
 * the sessions of the loop's thread share a free list of them (pool.h),
 * kept while one of them is open. */
static _Thread_local sb_pool reply_pool;
static _Thread_local size_t reply_pool_users;

static void reply_free(reply *r)
{
    sb_pool_put(&reply_pool, r);
}

static void session_maybe_free(jsonl_session *s);

static void flush_replies(jsonl_session *s)
{
    reply *r;
    while ((r = s->rhead) != NULL && r->line != NULL) {
        s->rhead = r->next;
        if (s->rhead == NULL)
            s->rtail = NULL;
        if (!s->closed)
            sb_conn_send(s->conn, r->line, r->len, NULL);
        json_decref(r->id);
        sb_free(r->line);
        reply_free(r);
    }
}

static reply *reply_new(jsonl_session *s, json_t *id)
{
    reply *r = sb_pool_get(&reply_pool);
    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->s = s;
    r->id = id != NULL ? json_incref(id) : NULL;
    if (s->rtail != NULL)
        s->rtail->next = r;
    else
        s->rhead = r;
    s->rtail = r;
    return r;
}

/* Completes r with obj (consumes the reference; adds "id"). */
static void reply_set(reply *r, json_t *obj)
{
    char *text;
    if (obj == NULL)
        obj = json_pack("{s:s, s:s, s:s}", "op", "error", "code", "SB_ENOMEM", "message",
                        "out of memory");
    if (r->id != NULL && obj != NULL)
        json_object_set(obj, "id", r->id);
    else if (r->has_id_num && obj != NULL)
        json_object_set_new(obj, "id", json_integer(r->id_num));
    text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text == NULL) {
        r->line = sb_strdup("{\"op\":\"error\",\"code\":\"SB_ENOMEM\"}\n");
        r->len = r->line != NULL ? strlen(r->line) : 0;
    } else {
        size_t n = strlen(text);
        r->line = sb_malloc(n + 2);
        if (r->line != NULL) {
            memcpy(r->line, text, n);
            r->line[n] = '\n';
            r->line[n + 1] = '\0';
            r->len = n + 1;
        }
        free(text);
    }
    if (r->line == NULL) {
        r->line = sb_strdup("\n");
        r->len = 1;
    }
    flush_replies(r->s);
}

static json_t *error_obj(int code, const char *msg)
{
    return json_pack("{s:s, s:s, s:s}", "op", "error", "code", sb_errname(code), "message", msg);
}

static void reply_error(jsonl_session *s, json_t *id, int code, const char *msg)
{
    reply *r = reply_new(s, id);
    if (r != NULL)
        reply_set(r, error_obj(code, msg));
}

/* ---- publish ---- */

/* Appends ,"id":<id> for r (ids are usually integers). */
static void write_id(sb_jsonw *w, const reply *r)
{
    json_t *id = r->id;
    if (r->has_id_num) {
        sb_jsonw_lit(w, ",\"id\":");
        sb_jsonw_int(w, r->id_num);
        return;
    }
    if (id == NULL)
        return;
    sb_jsonw_lit(w, ",\"id\":");
    if (json_is_integer(id)) {
        sb_jsonw_int(w, json_integer_value(id));
    } else if (json_is_string(id)) {
        sb_jsonw_str(w, json_string_value(id), json_string_length(id));
    } else {
        char *text = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text != NULL)
            sb_jsonw_lit(w, text);
        else
            w->failed = 1;
        free(text);
    }
}

/* Starts a line in the session's reusable writer. */
static sb_jsonw *out_begin(jsonl_session *s)
{
    s->out.len = 0;
    s->out.failed = 0;
    return &s->out;
}

/* Done with the line: a buffer grown for a large message is not kept. */
static void out_end(jsonl_session *s)
{
    if (s->out.cap > 64 * 1024)
        sb_jsonw_free(&s->out);
}

/* Completes r with the line built in s->out (out_begin). The reply at the
 * head of the queue goes out at once, without a copy of its own: the
 * common case, where replies complete in request order. */
static void reply_set_out(reply *r)
{
    jsonl_session *s = r->s;
    sb_jsonw *w = &s->out;
    sb_jsonw_raw(w, "\n", 1);
    if (w->failed) {
        reply_set(r, NULL);
        return;
    }
    if (r == s->rhead) {
        s->rhead = r->next;
        if (s->rhead == NULL)
            s->rtail = NULL;
        if (!s->closed)
            sb_conn_send(s->conn, w->buf, w->len, NULL);
        json_decref(r->id);
        reply_free(r);
    } else {
        r->line = sb_malloc(w->len);
        if (r->line == NULL) {
            reply_set(r, NULL);
            return;
        }
        memcpy(r->line, w->buf, w->len);
        r->len = w->len;
    }
    out_end(s);
    flush_replies(s);
}

static void on_puback(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    reply *r = ctx;
    jsonl_session *s = r->s;
    s->pending--;
    if (status == 0) {
        sb_jsonw *w = out_begin(s);
        sb_jsonw_lit(w, "{\"op\":\"puback\",\"msg_id\":");
        sb_jsonw_int(w, (int64_t)msg_id);
        sb_jsonw_lit(w, ",\"queues\":");
        sb_jsonw_int(w, queues);
        write_id(w, r);
        sb_jsonw_raw(w, "}", 1);
        reply_set_out(r);
    } else {
        reply_set(r, error_obj(status, why != NULL ? why : sb_strerror(status)));
    }
    session_maybe_free(s);
}

static int get_duration(json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return *out >= 0 ? 0 : SB_EINVAL;
    }
    if (json_is_string(v))
        return sb_config_parse_duration(json_string_value(v), out);
    return SB_EINVAL;
}

/* A request's id: its JSON value, or the fast path's integer, made a JSON
 * value only if an error reply needs one (req_id_json). */
typedef struct req_id {
    json_t *json; /* borrowed from the request (the general path), or owned (the fast path) */
    int64_t num;
    int is_num;
} req_id;

static json_t *req_id_json(req_id *id)
{
    if (id->is_num && id->json == NULL)
        id->json = json_integer(id->num);
    return id->json;
}

/* A reply slot for the request with id `rid`. */
static reply *reply_new_for(jsonl_session *s, req_id *rid)
{
    reply *r = reply_new(s, rid->is_num ? NULL : rid->json);
    if (r != NULL && rid->is_num) {
        r->id_num = rid->num;
        r->has_id_num = 1;
    }
    return r;
}

static void pub_submit(jsonl_session *s, const pub_in *in, req_id *rid)
{
    const char *source = in->source != NULL ? in->source : s->source;
    sb_publish_opts opts = {source, in->retain, NULL};
    size_t source_len = in->source != NULL ? strlen(in->source) : s->source_len;
    size_t header_bytes = sizeof("source") + source_len + 1;
    sb_message *m;
    sb_error err;
    reply *r;

    if (!in->topic.set)
        return reply_error(s, req_id_json(rid), SB_EINVAL, "pub: \"topic\" (a string) is required");
    if (memchr(in->topic.p, '\0', in->topic.n) != NULL)
        return reply_error(s, req_id_json(rid), SB_EINVAL, "pub: topic contains a NUL character");
    if (in->payload.set == in->payload_b64.set)
        return reply_error(
            s, req_id_json(rid), SB_EINVAL,
            "pub: exactly one of \"payload\" or \"payload_b64\" (a string) is required");
    if (in->has_priority && (in->priority < 0 || in->priority > 9))
        return reply_error(s, req_id_json(rid), SB_EINVAL, "pub: \"priority\" must be 0..9");
    /* one allocation for the message, its headers and the source header
     * the broker adds */
    for (int i = 0; i < in->hcount; i++)
        header_bytes += in->hk[i].n + in->hv[i].n + 2;
    if (in->payload.set) {
        m = sb_message_new_room(in->topic.p, in->topic.n, in->payload.p, in->payload.n,
                                (size_t)in->hcount + 1, header_bytes);
    } else {
        unsigned char *bytes;
        size_t n;
        if (sb_base64_decode(in->payload_b64.p, in->payload_b64.n, &bytes, &n) != 0)
            return reply_error(s, req_id_json(rid), SB_EINVAL,
                               "pub: payload_b64 is not valid base64");
        m = sb_message_new_room(in->topic.p, in->topic.n, bytes, n, (size_t)in->hcount + 1,
                                header_bytes);
        sb_free(bytes);
    }
    if (m != NULL &&
        !sb_auth_allowed(sb_conn_acl(s->conn), s->conn->user, NULL, m->topic, SB_ACL_WRITE)) {
        char msg[300];
        snprintf(msg, sizeof msg, "pub: not authorized to publish to %.200s", m->topic);
        sb_message_unref(m);
        return reply_error(s, req_id_json(rid), SB_EAUTH, msg);
    }
    if (m == NULL)
        return reply_error(s, req_id_json(rid), SB_ENOMEM, "out of memory");
    if (m->payload_len > s->max_payload) {
        sb_message_unref(m);
        return reply_error(s, req_id_json(rid), SB_ETOOBIG,
                           "pub: payload larger than the adapter's max_message");
    }
    for (int i = 0; i < in->hcount; i++)
        if (sb_message_add_header_n(m, in->hk[i].p, in->hk[i].n, in->hv[i].p, in->hv[i].n) != 0) {
            sb_message_unref(m);
            return reply_error(s, req_id_json(rid), SB_ENOMEM, "out of memory");
        }
    if (in->has_ttl) /* a TTL too long to add to the time is as long as it can be */
        m->expires_ms =
            in->ttl_ms > INT64_MAX - m->created_ms ? INT64_MAX : m->created_ms + in->ttl_ms;
    m->priority = (int)in->priority;
    r = reply_new_for(s, rid);
    if (r == NULL) {
        sb_message_unref(m);
        return;
    }
    if (sb_broker_publish(s->conn->adapter->broker, m, &opts, on_puback, r, &err) != 0)
        reply_set(r, error_obj(err.code, err.msg));
    else
        s->pending++;
    sb_message_unref(m);
}

static void set_str(jl_str *out, json_t *v)
{
    out->p = json_string_value(v);
    out->n = json_string_length(v);
    out->set = 1;
}

static void do_pub(jsonl_session *s, json_t *req, json_t *id)
{
    json_t *topic = json_object_get(req, "topic"), *payload = json_object_get(req, "payload"),
           *b64 = json_object_get(req, "payload_b64"), *headers = json_object_get(req, "headers"),
           *ttl = json_object_get(req, "ttl"), *prio = json_object_get(req, "priority");
    pub_in in;
    const char *key;
    json_t *val;

    memset(&in, 0, sizeof(in));
    if (topic != NULL && !json_is_string(topic))
        return reply_error(s, id, SB_EINVAL, "pub: \"topic\" (a string) is required");
    if ((payload != NULL && !json_is_string(payload)) || (b64 != NULL && !json_is_string(b64)))
        return reply_error(
            s, id, SB_EINVAL,
            "pub: exactly one of \"payload\" or \"payload_b64\" (a string) is required");
    if (topic != NULL)
        set_str(&in.topic, topic);
    if (payload != NULL)
        set_str(&in.payload, payload);
    if (b64 != NULL)
        set_str(&in.payload_b64, b64);
    if (headers != NULL) {
        if (!json_is_object(headers))
            return reply_error(s, id, SB_EINVAL, "pub: \"headers\" must be an object of strings");
        json_object_foreach(headers, key, val)
        {
            if (!json_is_string(val))
                return reply_error(s, id, SB_EINVAL, "pub: header values must be strings");
            if (memchr(json_string_value(val), '\0', json_string_length(val)) != NULL)
                return reply_error(s, id, SB_EINVAL,
                                   "pub: header values may not contain U+0000 (\\u0000)");
            if (in.hcount == PUB_MAX_HEADERS)
                return reply_error(s, id, SB_EINVAL, "pub: more than 64 headers");
            in.hk[in.hcount].p = key;
            in.hk[in.hcount].n = strlen(key);
            set_str(&in.hv[in.hcount++], val);
        }
    }
    if (ttl != NULL) {
        if (get_duration(ttl, &in.ttl_ms) != 0)
            return reply_error(s, id, SB_EINVAL, "pub: \"ttl\" must be a duration like \"10s\"");
        in.has_ttl = 1;
    }
    if (prio != NULL) {
        if (!json_is_integer(prio))
            return reply_error(s, id, SB_EINVAL, "pub: \"priority\" must be 0..9");
        in.has_priority = 1;
        in.priority = json_integer_value(prio);
    }
    in.retain = json_is_true(json_object_get(req, "retain"));
    /* a session agent says which of its adapters (and peer) it comes from */
    if (s->conn->adapter->agent != NULL)
        in.source = json_string_value(json_object_get(req, "source"));
    {
        req_id rid = {id, 0, 0};
        pub_submit(s, &in, &rid);
    }
}

/* ---- subscriptions ---- */

/* Its address tags the part of "msg" lines kept with a message
 * (sb_message_encoded). */
static const char msg_tail_tag;

/* Writes a delivery as one "msg" line (without the newline). What follows
 * "attempt" is the same for every delivery of the message: kept with it
 * from the second delivery, so a message fanned out to many subscriptions
 * is escaped once. */
static void message_line(sb_jsonw *w, const sb_delivery *d)
{
    sb_message *m = d->msg;
    const char *tail;
    size_t tail_len, at;
    int keep;
    sb_jsonw_lit(w, "{\"op\":\"msg\",\"sub\":");
    sb_jsonw_str(w, d->sub, strlen(d->sub));
    sb_jsonw_lit(w, ",\"msg_id\":");
    sb_jsonw_int(w, (int64_t)m->id);
    sb_jsonw_lit(w, ",\"topic\":");
    sb_jsonw_str(w, m->topic, m->topic_len);
    sb_jsonw_lit(w, ",\"attempt\":");
    sb_jsonw_int(w, d->attempt);
    if ((tail = sb_message_encoded(m, &msg_tail_tag, &tail_len, &keep)) != NULL) {
        sb_jsonw_raw(w, tail, tail_len);
        return;
    }
    at = w->len;
    sb_jsonw_lit(w, ",\"created\":");
    sb_jsonw_int(w, m->created_ms);
    if (sb_json_plain_run((const char *)m->payload, m->payload_len) == m->payload_len ||
        (sb_utf8_valid((const char *)m->payload, m->payload_len) &&
         memchr(m->payload, '\0', m->payload_len) == NULL)) {
        sb_jsonw_lit(w, ",\"payload\":");
        sb_jsonw_str(w, (const char *)m->payload, m->payload_len);
    } else {
        char *b = sb_base64_encode(m->payload, m->payload_len);
        sb_jsonw_lit(w, ",\"payload_b64\":");
        if (b == NULL)
            w->failed = 1;
        else
            sb_jsonw_str(w, b, strlen(b));
        sb_free(b);
    }
    if (m->header_count > 0) {
        sb_jsonw_lit(w, ",\"headers\":{");
        for (size_t i = 0; i < m->header_count; i++) {
            if (i > 0)
                sb_jsonw_raw(w, ",", 1);
            sb_jsonw_str(w, m->headers[i].key, strlen(m->headers[i].key));
            sb_jsonw_raw(w, ":", 1);
            sb_jsonw_str(w, m->headers[i].value, strlen(m->headers[i].value));
        }
        sb_jsonw_raw(w, "}", 1);
    }
    sb_jsonw_raw(w, "}", 1);
    if (keep && !w->failed)
        sb_message_keep_encoded(m, &msg_tail_tag, w->buf + at, w->len - at);
}

static int jsub_deliver(sb_consumer *c, sb_delivery *d)
{
    jsub *js = c->ctx;
    jsonl_session *s = js->s;
    sb_jsonw *w;
    if (s->closed || s->conn->out_paused)
        return SB_EBUSY;
    if (!sb_auth_allowed(sb_conn_acl(s->conn), s->conn->user, NULL, d->msg->topic, SB_ACL_READ)) {
        /* the ACL was reloaded since the sub: finished, never sent */
        sb_delivery_done(d, 0, NULL);
        return 0;
    }
    w = out_begin(s);
    message_line(w, d);
    if (w->failed)
        return SB_ENOMEM;
    d->next = NULL;
    if (js->out_tail != NULL)
        js->out_tail->next = d;
    else
        js->out = d;
    js->out_tail = d;
    if (s->rhead != NULL) {
        reply *r = reply_new(s, NULL);
        if (r != NULL)
            reply_set_out(r);
    } else {
        sb_conn_send2(s->conn, w->buf, w->len, "\n", 1, NULL);
        out_end(s);
    }
    return 0;
}

static jsub *find_sub(jsonl_session *s, const char *name)
{
    for (jsub *js = s->subs; js != NULL; js = js->next)
        if (strcmp(js->name, name) == 0)
            return js;
    return NULL;
}

static void jsub_free_detached(jsonl_session *s, jsub *js, int failed)
{
    jsub **p;
    sb_broker_detach(s->conn->adapter->broker, &js->consumer, failed);
    for (p = &s->subs; *p != NULL; p = &(*p)->next)
        if (*p == js) {
            *p = js->next;
            break;
        }
    sb_free(js->name);
    sb_free(js);
}

static int parse_settings(json_t *req, sb_sub_settings *st, const char **bad)
{
    json_t *v;
    sb_sub_settings_default(st);
    if ((v = json_object_get(req, "durability")) != NULL) {
        const char *d = json_string_value(v);
        if (d == NULL)
            return (*bad = "durability", SB_EINVAL);
        if (strcmp(d, "fsync") == 0)
            st->durability = SB_DURABILITY_FSYNC;
        else if (strcmp(d, "batched") == 0)
            st->durability = SB_DURABILITY_BATCHED;
        else if (strcmp(d, "memory") == 0)
            st->durability = SB_DURABILITY_MEMORY;
        else
            return (*bad = "durability", SB_EINVAL);
    }
    if ((v = json_object_get(req, "max_attempts")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return (*bad = "max_attempts", SB_EINVAL);
        st->max_attempts = (int)json_integer_value(v);
    }
    if ((v = json_object_get(req, "lease")) != NULL && get_duration(v, &st->lease_ms) != 0)
        return (*bad = "lease", SB_EINVAL);
    if ((v = json_object_get(req, "ttl")) != NULL && get_duration(v, &st->ttl_ms) != 0)
        return (*bad = "ttl", SB_EINVAL);
    if ((v = json_object_get(req, "max_depth")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return (*bad = "max_depth", SB_EINVAL);
        st->max_depth = json_integer_value(v);
    }
    if ((v = json_object_get(req, "overflow")) != NULL) {
        const char *o = json_string_value(v);
        if (o != NULL && strcmp(o, "reject") == 0)
            st->overflow = SB_OVERFLOW_REJECT;
        else if (o != NULL && strcmp(o, "drop-oldest") == 0)
            st->overflow = SB_OVERFLOW_DROP_OLDEST;
        else
            return (*bad = "overflow", SB_EINVAL);
    }
    if ((v = json_object_get(req, "transient")) != NULL) {
        if (!json_is_boolean(v))
            return (*bad = "transient", SB_EINVAL);
        st->transient = json_is_true(v);
    }
    if ((v = json_object_get(req, "expire")) != NULL && get_duration(v, &st->expire_ms) != 0)
        return (*bad = "expire", SB_EINVAL);
    return 0;
}

/* Subscriptions named mqtt/... are MQTT client sessions: only the admin
 * endpoint may touch them from here. */
static int protocol_owned(const jsonl_session *s, const char *name)
{
    return strncmp(name, "mqtt/", 5) == 0 && !s->conn->adapter->trusted;
}

/* Whether the client may read through filters: every topic of each (all),
 * or some topic of one of them (!all). With no ACL, yes. */
static int filters_readable(const jsonl_session *s, const sb_sub_filter *filters, size_t count,
                            int all)
{
    const struct sb_auth *acl = sb_conn_acl(s->conn);
    if (acl == NULL || !sb_auth_has_acl(acl))
        return 1;
    for (size_t i = 0; i < count; i++) {
        int ok = all ? sb_auth_filter_readable(acl, s->conn->user, NULL, filters[i].filter)
                     : sb_auth_filter_allowed(acl, s->conn->user, NULL, filters[i].filter);
        if (ok != all)
            return ok;
    }
    return all;
}

/* The queues whose statistics a client sees while an ACL is in force: its
 * own subscriptions on this connection, and queues it may read wholly (not
 * MQTT sessions: their filters are another client's). */
static int stats_visible(void *ctx, const char *name, const sb_sub_filter *filters, size_t count)
{
    const jsonl_session *s = ctx;
    if (find_sub((jsonl_session *)s, name) != NULL)
        return 1;
    return !protocol_owned(s, name) && filters_readable(s, filters, count, 1);
}

/* Reads v, a filter or a list of them, into *out (sb_free it; NULL for
 * v NULL). Returns 0, SB_EINVAL (not strings, or an empty list), SB_ENOMEM. */
static int filters_from_json(const json_t *v, sb_sub_filter **out, size_t *out_count)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    *out = NULL;
    *out_count = 0;
    if (v == NULL)
        return 0;
    if ((!json_is_string(v) && !json_is_array(v)) || n == 0)
        return SB_EINVAL;
    if ((*out = sb_calloc(n, sizeof(**out))) == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const json_t *f = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(f)) {
            sb_free(*out);
            *out = NULL;
            return SB_EINVAL;
        }
        (*out)[i].filter = json_string_value(f);
        (*out)[i].qos = SB_QOS_NONE;
    }
    *out_count = n;
    return 0;
}

/* The "subscribed" reply line for subscription `name`, or NULL if out of
 * memory: "filter" joins its filters with '\n' (as before "filters" came). */
static char *subscribed_line(sb_broker *b, const char *name, json_t *id, size_t *out_len)
{
    sb_sub_def def;
    json_t *o, *list = json_array();
    char *joined = NULL, *text = NULL, *line = NULL;
    (void)sb_broker_sub_get(b, name, &def); /* just made or found: it exists */
    for (size_t i = 0; list != NULL && i < def.filter_count; i++)
        if (json_array_append_new(list, json_string(def.filters[i].filter)) != 0) {
            json_decref(list);
            list = NULL;
        }
    joined = sb_sub_filters_join(def.filters, def.filter_count);
    o = list != NULL && joined != NULL ? json_pack("{s:s, s:s, s:s, s:O}", "op", "subscribed",
                                                   "sub", name, "filter", joined, "filters", list)
                                       : NULL;
    json_decref(list);
    sb_free(joined);
    if (o != NULL && id != NULL)
        json_object_set(o, "id", id);
    if (o != NULL)
        text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text != NULL) {
        size_t n = strlen(text);
        if ((line = sb_malloc(n + 2)) != NULL) {
            memcpy(line, text, n);
            line[n] = '\n';
            *out_len = n + 1;
        }
        free(text);
    }
    return line;
}

/* do_sub once the filters (and those of "retained") are read. */
static void sub_attach(jsonl_session *s, json_t *req, json_t *id, const char *name,
                       const sb_sub_filter *filters, size_t count, const sb_sub_filter *ret,
                       size_t ret_count)
{
    json_t *w = json_object_get(req, "window");
    sb_broker *b = s->conn->adapter->broker;
    sb_sub_settings st;
    sb_sub_def existing;
    const char *bad = NULL;
    int exists;
    sb_error err;
    jsub *js;
    reply *r;
    char msg[300];

    if (w != NULL &&
        (!json_is_integer(w) || json_integer_value(w) < 1 || json_integer_value(w) > 100000))
        return reply_error(s, id, SB_EINVAL, "sub: \"window\" must be 1..100000");
    if (parse_settings(req, &st, &bad) != 0) {
        snprintf(msg, sizeof(msg), "sub: invalid \"%s\"", bad);
        return reply_error(s, id, SB_EINVAL, msg);
    }
    if (s->conn->adapter->agent != NULL &&
        !sb_agent_link_may_sub(s->conn->adapter->agent, name, st.transient))
        return reply_error(s, id, SB_EACCES,
                           "sub: a session agent consumes only its adapters' queues and "
                           "subscriptions of its own");
    if (find_sub(s, name) != NULL)
        return reply_error(s, id, SB_EEXIST, "sub: already subscribed on this connection");
    if (protocol_owned(s, name))
        return reply_error(s, id, SB_EACCES,
                           "sub: mqtt/... subscriptions are MQTT client sessions");
    /* A new subscription is the client's own: granted if it may read some
     * of what the filter matches (deliveries are checked one by one, and
     * those it may not read are dropped). An existing one may be shared
     * with others, whose messages would be dropped so: the client must be
     * able to read all of it. */
    exists = sb_broker_sub_get(b, name, &existing) == 0;
    if (exists ? !filters_readable(s, existing.filters, existing.filter_count, 1)
               : filters != NULL && !filters_readable(s, filters, count, 0))
        return reply_error(s, id, SB_EAUTH,
                           exists ? "sub: not authorized to read every topic of this existing "
                                    "subscription"
                                  : "sub: not authorized to read any topic of the filter");
    if (sb_broker_subscribe_filters(b, name, filters, count, &st, &err) != 0)
        return reply_error(s, id, err.code, err.msg);
    /* a new subscription got the retained values of its filters already */
    for (size_t i = 0; exists && i < ret_count; i++)
        if (sb_broker_sub_add_retained(b, name, ret[i].filter, &err) != 0)
            return reply_error(s, id, err.code, err.msg);
    js = sb_calloc(1, sizeof(*js));
    if (js == NULL || (js->name = sb_strdup(name)) == NULL) {
        sb_free(js);
        return reply_error(s, id, SB_ENOMEM, "out of memory");
    }
    js->name_len = strlen(name);
    js->s = s;
    js->consumer.deliver = jsub_deliver;
    js->consumer.ctx = js;
    js->consumer.name = s->who;
    js->consumer.window = w != NULL ? (int)json_integer_value(w) : 100;
    r = reply_new(s, id);
    if (r == NULL) {
        sb_free(js->name);
        sb_free(js);
        return;
    }
    js->next = s->subs;
    s->subs = js;
    /* The reply is queued before attaching so it precedes the first message. */
    r->line = subscribed_line(b, name, r->id, &r->len);
    if (r->line == NULL) {
        reply_set(r, NULL); /* out of memory: an error reply */
        jsub_free_detached(s, js, 0);
        return;
    }
    if (sb_broker_attach(b, name, &js->consumer, &err) != 0) {
        sb_free(r->line);
        r->line = NULL;
        reply_set(r, error_obj(err.code, err.msg));
        jsub_free_detached(s, js, 0);
        return;
    }
    /* r may already be written (and freed) by a delivery flushing the queue. */
    flush_replies(s);
}

static void do_sub(jsonl_session *s, json_t *req, json_t *id)
{
    const char *name = json_string_value(json_object_get(req, "sub"));
    sb_sub_filter *filters = NULL, *ret = NULL;
    size_t count = 0, ret_count = 0;
    int rc;

    if (name == NULL)
        return reply_error(s, id, SB_EINVAL, "sub: \"sub\" (the subscription name) is required");
    rc = filters_from_json(json_object_get(req, "filter"), &filters, &count);
    if (rc == SB_EINVAL)
        return reply_error(s, id, rc, "sub: \"filter\" must be a filter or a list of filters");
    if (rc == 0)
        rc = filters_from_json(json_object_get(req, "retained"), &ret, &ret_count);
    if (rc == SB_EINVAL)
        reply_error(s, id, rc, "sub: \"retained\" must be a filter or a list of filters");
    else if (rc != 0)
        reply_error(s, id, rc, "out of memory");
    else
        sub_attach(s, req, id, name, filters, count, ret, ret_count);
    sb_free(filters);
    sb_free(ret);
}

static void ack_submit(jsonl_session *s, const jl_str *name, int64_t msg_id, int ack,
                       const jl_str *reason, json_t *id)
{
    char why[256];
    jsub *js = NULL;
    sb_delivery *d, *prev = NULL, *stale = NULL, *stale_prev = NULL;

    for (jsub *j = s->subs; j != NULL; j = j->next)
        if (j->name_len == name->n && memcmp(j->name, name->p, name->n) == 0) {
            js = j;
            break;
        }
    if (js == NULL) {
        reply_error(s, id, SB_ENOTFOUND, "ack/nack: not subscribed to that subscription here");
        return;
    }
    /* Acks come mostly in delivery order: the match is usually the head.
     * A delivery whose lease expired (entry NULL) may be listed before its
     * redelivery: the answer is for the live one. */
    for (d = js->out; d != NULL; prev = d, d = d->next)
        if (d->msg->id == (uint64_t)msg_id) {
            if (d->entry != NULL)
                break;
            if (stale == NULL) {
                stale = d;
                stale_prev = prev;
            }
        }
    if (d == NULL) {
        d = stale;
        prev = stale_prev;
    }
    if (d == NULL) {
        if (id != NULL)
            reply_error(s, id, SB_ENOTFOUND, "ack/nack: no such outstanding message");
        return;
    }
    if (prev != NULL)
        prev->next = d->next;
    else
        js->out = d->next;
    if (js->out_tail == d)
        js->out_tail = prev;
    if (d->entry != NULL && d->attempt > 1) {
        /* The stale copies of this message are answered by it too (else they
         * would hold the window until the connection closes). A stale copy
         * is an earlier attempt whose lease expired (which counted the
         * attempt), so a first attempt has none: acks in order stay O(1)
         * however many deliveries are outstanding. */
        sb_delivery **pp = &js->out, *x, *done = NULL, *last = NULL;
        while ((x = *pp) != NULL) {
            if (x->entry == NULL && x->msg->id == (uint64_t)msg_id) {
                *pp = x->next;
                x->next = done;
                done = x;
            } else {
                last = x;
                pp = &x->next;
            }
        }
        js->out_tail = last;
        while (done != NULL) {
            x = done;
            done = x->next;
            sb_delivery_done(x, 0, NULL);
        }
    }
    if (reason != NULL && reason->set)
        snprintf(why, sizeof(why), "%.*s", (int)(reason->n < 255 ? reason->n : 255), reason->p);
    else
        snprintf(why, sizeof(why), "nack from client");
    sb_delivery_done(d, ack ? 0 : SB_EINVAL, why);
    if (id != NULL) {
        reply *r = reply_new(s, id);
        if (r != NULL)
            reply_set(r, json_pack("{s:s}", "op", "ok"));
    }
}

static void do_ack(jsonl_session *s, json_t *req, json_t *id, int ack)
{
    json_t *name = json_object_get(req, "sub"), *mid = json_object_get(req, "msg_id"),
           *reason = json_object_get(req, "reason");
    jl_str n = {0}, r = {0};
    if (!json_is_string(name) || !json_is_integer(mid)) {
        reply_error(s, id, SB_EINVAL, "ack/nack: \"sub\" and \"msg_id\" are required");
        return;
    }
    set_str(&n, name);
    if (json_is_string(reason))
        set_str(&r, reason);
    ack_submit(s, &n, json_integer_value(mid), ack, &r, id);
}

/* The fast path for pub/ack/nack (jsonl_fast.h). Returns 1 if handled. */
static int handle_fast(jsonl_session *s, const char *line, size_t len)
{
    jl_req *q = &s->fast;
    req_id rid = {NULL, 0, 0}; /* an integer id stays one (no jansson value) */
    int is_pub, is_ack;

    if (len > s->scratch_cap) {
        char *n = sb_realloc(s->scratch, len);
        if (n == NULL)
            return 0;
        s->scratch = n;
        s->scratch_cap = len;
    }
    if (!jl_parse(line, len, s->scratch, q))
        return 0;
    is_pub = q->op.n == 3 && memcmp(q->op.p, "pub", 3) == 0;
    is_ack = (q->op.n == 3 && memcmp(q->op.p, "ack", 3) == 0) ||
             (q->op.n == 4 && memcmp(q->op.p, "nack", 4) == 0);
    if (!is_pub && !is_ack)
        return 0;
    if (q->has_id_num) {
        rid.num = q->id_num;
        rid.is_num = 1;
    } else if (q->id_str.set) {
        rid.json = json_stringn(q->id_str.p, q->id_str.n);
    }
    if (is_pub) {
        pub_in *in = &s->fast_pub;
        if (q->sub.set || q->reason.set || q->has_msg_id) {
            json_decref(rid.json);
            return 0; /* unusual keys for a pub: let the general path judge */
        }
        in->topic = q->topic;
        in->payload = q->payload;
        in->payload_b64 = q->payload_b64;
        in->hcount = q->header_count;
        for (int i = 0; i < q->header_count; i++) {
            in->hk[i] = q->hkey[i];
            in->hv[i] = q->hval[i];
        }
        in->retain = q->retain;
        in->has_ttl = 0;
        if (q->has_ttl_num) {
            if (q->ttl_num < 0) {
                json_decref(rid.json);
                return 0;
            }
            in->has_ttl = 1;
            in->ttl_ms = q->ttl_num;
        } else if (q->ttl_str.set) {
            char t[64];
            if (q->ttl_str.n >= sizeof(t)) {
                json_decref(rid.json);
                return 0;
            }
            memcpy(t, q->ttl_str.p, q->ttl_str.n);
            t[q->ttl_str.n] = '\0';
            if (sb_config_parse_duration(t, &in->ttl_ms) != 0) {
                json_decref(rid.json);
                return 0;
            }
            in->has_ttl = 1;
        }
        in->has_priority = q->has_priority;
        in->priority = q->priority;
        pub_submit(s, in, &rid);
    } else {
        if (!q->sub.set || !q->has_msg_id || q->topic.set || q->payload.set) {
            json_decref(rid.json);
            return 0;
        }
        ack_submit(s, &q->sub, q->msg_id, q->op.p[0] == 'a', &q->reason, req_id_json(&rid));
    }
    json_decref(rid.json);
    return 1;
}

static void do_unsub(jsonl_session *s, json_t *req, json_t *id)
{
    const char *name = json_string_value(json_object_get(req, "sub"));
    jsub *js;
    sb_error err;
    reply *r;
    if (name == NULL)
        return reply_error(s, id, SB_EINVAL, "unsub: \"sub\" is required");
    if (json_is_true(json_object_get(req, "delete")) && s->conn->adapter->agent != NULL &&
        !sb_agent_link_may_sub(s->conn->adapter->agent, name, -1))
        return reply_error(s, id, SB_EACCES,
                           "unsub: a session agent deletes only subscriptions of its own");
    if (json_is_true(json_object_get(req, "delete")) && protocol_owned(s, name))
        return reply_error(s, id, SB_EACCES,
                           "unsub: mqtt/... subscriptions are MQTT client sessions (delete them "
                           "on the admin endpoint)");
    js = find_sub(s, name);
    if (js != NULL)
        jsub_free_detached(s, js, 0);
    if (json_is_true(json_object_get(req, "delete")) &&
        sb_broker_unsubscribe(s->conn->adapter->broker, name, &err) != 0)
        return reply_error(s, id, err.code, err.msg);
    if (js == NULL && !json_is_true(json_object_get(req, "delete")))
        return reply_error(s, id, SB_ENOTFOUND, "unsub: not subscribed to that subscription here");
    r = reply_new(s, id);
    if (r != NULL)
        reply_set(r, json_pack("{s:s, s:s}", "op", "unsubscribed", "sub", name));
}

/* ---- admin ---- */

typedef struct admin_call {
    reply *r;
    const char *op;
} admin_call;

static void on_admin_done(void *ctx, int status, void *result, const char *why)
{
    admin_call *a = ctx;
    jsonl_session *s = a->r->s;
    s->pending--;
    if (status != 0) {
        reply_set(a->r, error_obj(status, why != NULL ? why : sb_strerror(status)));
    } else {
        json_t *o = result;
        json_object_set_new(o, "op", json_string(a->op));
        reply_set(a->r, o);
    }
    sb_free(a);
    session_maybe_free(s);
}

static void do_admin(jsonl_session *s, const char *op, json_t *req, json_t *id)
{
    sb_broker *b = s->conn->adapter->broker;
    const char *sub = json_string_value(json_object_get(req, "sub"));
    admin_call *a;
    sb_error err;
    int rc;
    /* dead letters hold every subscription's messages: with an ACL in
     * force they are for the admin endpoint only */
    if (sb_auth_has_acl(sb_conn_acl(s->conn)))
        return reply_error(
            s, id, SB_EAUTH,
            "dead-letter operations need the admin endpoint while an ACL is in force");
    a = sb_malloc(sizeof(*a));
    if (a == NULL)
        return reply_error(s, id, SB_ENOMEM, "out of memory");
    a->r = reply_new(s, id);
    if (a->r == NULL) {
        sb_free(a);
        return;
    }
    if (strcmp(op, "dlq.list") == 0) {
        a->op = "dlq.list";
        rc = sb_broker_dlq_list(b, sub, json_integer_value(json_object_get(req, "after")),
                                (int)json_integer_value(json_object_get(req, "limit")),
                                on_admin_done, a, &err);
    } else if (strncmp(op, "store.", 6) == 0) {
        /* they hold every commit while they run: the admin endpoint's */
        a->op = strcmp(op, "store.check") == 0 ? "store.check" : "store.compact";
        if (!s->conn->adapter->trusted)
            rc = sb_error_set(&err, SB_EACCES, 0, "%s is for the admin endpoint", a->op);
        else if (strcmp(op, "store.check") == 0)
            rc = sb_broker_store_check(b, on_admin_done, a, &err);
        else
            rc = sb_broker_store_compact(b, on_admin_done, a, &err);
    } else {
        /* limit, after, floor: one batch of many (sb_dlq_batch) */
        sb_dlq_batch batch = {json_integer_value(json_object_get(req, "after")),
                              (uint64_t)json_integer_value(json_object_get(req, "floor")),
                              json_integer_value(json_object_get(req, "limit"))};
        if (strcmp(op, "dlq.redrive") == 0) {
            a->op = "dlq.redrive";
            rc = sb_broker_dlq_redrive_batch(b, sub, &batch, on_admin_done, a, &err);
        } else {
            a->op = "dlq.purge";
            rc = sb_broker_dlq_purge_batch(b, sub, &batch, on_admin_done, a, &err);
        }
    }
    if (rc != 0) {
        reply_set(a->r, error_obj(err.code, err.msg));
        sb_free(a);
        return;
    }
    s->pending++;
}

/* {"op":"route.test","route":R,"topic":T,"payload":P (or "payload_b64"),
 * "headers":{...}}: a dry run of a route's transforms (nothing published). */
static void do_route_test(jsonl_session *s, json_t *req, json_t *id)
{
    const char *route = json_string_value(json_object_get(req, "route"));
    const char *topic = json_string_value(json_object_get(req, "topic"));
    json_t *payload = json_object_get(req, "payload"), *b64 = json_object_get(req, "payload_b64");
    json_t *headers = json_object_get(req, "headers"), *v, *res;
    unsigned char *bytes = NULL;
    size_t len = 0;
    const char *key;
    sb_message *m;
    sb_error err;
    reply *r;

    /* the transforms see every field of a route's messages: with an ACL
     * in force this is for the admin endpoint only, like dead letters */
    if (sb_auth_has_acl(sb_conn_acl(s->conn)))
        return reply_error(s, id, SB_EAUTH,
                           "route.test needs the admin endpoint while an ACL is in force");
    if (route == NULL || topic == NULL)
        return reply_error(s, id, SB_EPROTO, "route.test needs \"route\" and \"topic\"");
    if (headers != NULL && !json_is_object(headers))
        return reply_error(s, id, SB_EPROTO, "\"headers\" must be an object of strings");
    if (json_is_string(b64)) {
        if (sb_base64_decode(json_string_value(b64), json_string_length(b64), &bytes, &len) != 0)
            return reply_error(s, id, SB_EPROTO, "\"payload_b64\" is not base64");
        m = sb_message_new_owned(topic, bytes, len);
    } else {
        m = sb_message_new(topic, json_string_value(payload),
                           json_is_string(payload) ? json_string_length(payload) : 0);
    }
    if (m == NULL)
        return reply_error(s, id, SB_ENOMEM, "out of memory");
    json_object_foreach(headers, key, v)
    {
        if (!json_is_string(v)) {
            sb_message_unref(m);
            return reply_error(s, id, SB_EPROTO, "\"headers\" must be an object of strings");
        }
        if (sb_message_add_header(m, key, json_string_value(v)) != 0) {
            sb_message_unref(m);
            return reply_error(s, id, SB_ENOMEM, "out of memory");
        }
    }
    res = sb_broker_route_test(s->conn->adapter->broker, route, m, &err);
    sb_message_unref(m);
    if (res == NULL)
        return reply_error(s, id, err.code, err.msg);
    json_object_set_new(res, "op", json_string("route.test"));
    r = reply_new(s, id);
    if (r != NULL)
        reply_set(r, res);
    else
        json_decref(res);
}

/* ---- lines ---- */

static void handle_json(jsonl_session *s, const char *line, size_t len);

/* sb_agent_send_fn: a line from the agent host (`stop`) */
static void agent_send(sb_conn *conn, const char *line, size_t len)
{
    sb_conn_send(conn, line, len, NULL);
}

/* On a session agent's endpoint (docs/agent.md): `hello` first, then the
 * ops an agent needs, `log` included; no statistics or dead letters.
 * Returns 1 to let the usual handler take op, 0 if answered here. */
static int agent_op(jsonl_session *s, const char *op, json_t *req, json_t *id)
{
    struct sb_agent_link *link = s->conn->adapter->agent;
    sb_error err;
    if (strcmp(op, "hello") == 0) {
        json_t *o;
        reply *r;
        if (s->agent_ready) {
            reply_error(s, id, SB_EEXIST, "hello: said already");
            return 0;
        }
        o = sb_agent_link_hello(link, s->conn, agent_send, req, s->conn->peer, &err);
        if (o == NULL) {
            reply_error(s, id, err.code, err.msg);
            return 0;
        }
        s->agent_ready = 1;
        r = reply_new(s, id);
        if (r != NULL)
            reply_set(r, o);
        else
            json_decref(o);
        return 0;
    }
    if (strcmp(op, "ping") == 0)
        return 1;
    if (!s->agent_ready) {
        reply_error(s, id, SB_EPROTO, "an agent says hello first");
        return 0;
    }
    if (strcmp(op, "log") == 0) {
        sb_agent_link_log(link, s->conn, req);
        return 0;
    }
    if (strcmp(op, "stats") == 0 || strncmp(op, "dlq.", 4) == 0 || strncmp(op, "route.", 6) == 0 ||
        strncmp(op, "store.", 6) == 0) {
        reply_error(s, id, SB_EACCES, "not on a session agent's endpoint");
        return 0;
    }
    return 1;
}

static int op_known(const char *op)
{
    static const char *const ops[] = {"pub",         "ack",         "nack",         "sub",
                                      "unsub",       "ping",        "stats",        "dlq.list",
                                      "dlq.redrive", "dlq.purge",   "hello",        "log",
                                      "route.test",  "store.check", "store.compact"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(op, ops[i]) == 0)
            return 1;
    return 0;
}

static void handle_line(jsonl_session *s, const char *line, size_t len)
{
    /* an agent endpoint's connection says hello before anything else */
    if ((s->conn->adapter->agent == NULL || s->agent_ready) && handle_fast(s, line, len)) {
        sb_conn_identified(s->conn);
        return;
    }
    handle_json(s, line, len);
}

static void handle_json(jsonl_session *s, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_ALLOW_NUL, &jerr), *id;
    const char *op;
    char msg[300];

    if (req == NULL || !json_is_object(req)) {
        if (req == NULL)
            snprintf(msg, sizeof(msg), "invalid JSON at column %d: %s", jerr.column, jerr.text);
        else
            snprintf(msg, sizeof(msg), "a request must be a JSON object");
        sb_log(SB_LOG_WARN, s->conn->adapter->name, "peer %s: %s", s->conn->peer, msg);
        json_decref(req);
        reply_error(s, NULL, SB_EPROTO, msg);
        return;
    }
    id = json_object_get(req, "id");
    op = json_string_value(json_object_get(req, "op"));
    if (op != NULL && op_known(op))
        sb_conn_identified(s->conn); /* a client speaking the protocol */
    if (op == NULL) {
        reply_error(s, id, SB_EPROTO, "missing \"op\"");
    } else if (s->conn->adapter->agent != NULL && !agent_op(s, op, req, id)) {
        /* answered by agent_op */
    } else if (strcmp(op, "pub") == 0) {
        do_pub(s, req, id);
    } else if (strcmp(op, "ack") == 0 || strcmp(op, "nack") == 0) {
        do_ack(s, req, id, op[0] == 'a');
    } else if (strcmp(op, "sub") == 0) {
        do_sub(s, req, id);
    } else if (strcmp(op, "unsub") == 0) {
        do_unsub(s, req, id);
    } else if (strcmp(op, "ping") == 0) {
        reply *r = reply_new(s, id);
        if (r != NULL)
            reply_set(r, json_pack("{s:s, s:s?, s:I}", "op", "pong", "user", s->conn->user,
                                   "max_message", (json_int_t)s->max_payload));
    } else if (strcmp(op, "stats") == 0) {
        reply *r = reply_new(s, id);
        if (r != NULL) {
            const struct sb_auth *acl = sb_conn_acl(s->conn);
            json_t *o = sb_broker_stats_json_visible(
                s->conn->adapter->broker, sb_auth_has_acl(acl) ? stats_visible : NULL, s);
            if (o != NULL)
                json_object_set_new(o, "op", json_string("stats"));
            reply_set(r, o);
        }
    } else if (strcmp(op, "dlq.list") == 0 || strcmp(op, "dlq.redrive") == 0 ||
               strcmp(op, "dlq.purge") == 0 || strcmp(op, "store.check") == 0 ||
               strcmp(op, "store.compact") == 0) {
        do_admin(s, op, req, id);
    } else if (strcmp(op, "route.test") == 0) {
        do_route_test(s, req, id);
    } else {
        snprintf(msg, sizeof(msg), "unknown op \"%.100s\"", op);
        reply_error(s, id, SB_EPROTO, msg);
    }
    json_decref(req);
}

/* Handles the complete lines of buf[0..len); *used: the bytes up to the
 * last newline handled. Returns 0 or SB_ETOOBIG (close). */
static int handle_lines(jsonl_session *s, const char *buf, size_t len, size_t *used)
{
    size_t start = 0;
    *used = 0;
    for (;;) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t n;
        if (nl == NULL)
            return 0;
        n = (size_t)(nl - (buf + start));
        if (n > s->max) {
            reply_error(s, NULL, SB_ETOOBIG, "line longer than max_message; closing");
            sb_log(SB_LOG_ERROR, s->conn->adapter->name,
                   "peer %s: line longer than max_message %zu", s->conn->peer, s->max);
            return SB_ETOOBIG;
        }
        if (n > 0 && buf[start + n - 1] == '\r')
            n--;
        if (n > 0)
            handle_line(s, buf + start, n);
        start = (size_t)(nl - buf) + 1;
        *used = start;
        if (s->closed || s->conn->closing)
            return 0;
    }
}

static int jsonl_data(sb_conn *c, const char *data, size_t len)
{
    jsonl_session *s = c->session;
    size_t used;
    int rc;
    if (s->len == 0) {
        /* no line begun: the lines are read where the transport put them,
         * and only an unfinished last one is copied */
        if ((rc = handle_lines(s, data, len, &used)) != 0)
            return rc;
        if (s->closed || c->closing)
            return 0;
        data += used;
        len -= used;
        if (len == 0)
            return 0;
    }
    if (s->len + len > s->cap) {
        size_t cap = s->cap == 0 ? 65536 : s->cap;
        char *n;
        while (cap < s->len + len)
            cap *= 2;
        n = sb_realloc(s->buf, cap);
        if (n == NULL)
            return SB_ENOMEM;
        s->buf = n;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    if ((rc = handle_lines(s, s->buf, s->len, &used)) != 0)
        return rc;
    if (s->closed || c->closing)
        return 0;
    memmove(s->buf, s->buf + used, s->len - used);
    s->len -= used;
    if (s->len > s->max + 2) {
        reply_error(s, NULL, SB_ETOOBIG, "line longer than max_message; closing");
        sb_log(SB_LOG_ERROR, c->adapter->name, "peer %s: line longer than max_message %zu", c->peer,
               s->max);
        return SB_ETOOBIG;
    }
    return 0;
}

static int jsonl_open(sb_conn *c)
{
    jsonl_session *s;
    if (sb_conn_anonymous_refused(c))
        return SB_EAUTH;
    s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return SB_ENOMEM;
    s->conn = c;
    s->max_payload = SB_STREAM_CFG(c->adapter->cfg)->max_message > 0
                         ? (size_t)SB_STREAM_CFG(c->adapter->cfg)->max_message
                         : 1048576;
    /* A line carries JSON escaping and base64 around the payload. */
    s->max = s->max_payload * 2 + 65536;
    snprintf(s->source, sizeof(s->source), "%s %s", c->adapter->name, c->peer);
    s->source_len = strlen(s->source);
    if (reply_pool_users++ == 0)
        sb_pool_init(&reply_pool, sizeof(reply), 1024);
    snprintf(s->who, sizeof(s->who), "%s %s", c->adapter->name, c->peer);
    sb_conn_ref(c);
    c->session = s;
    return 0;
}

static void session_maybe_free(jsonl_session *s)
{
    if (!s->closed || s->pending > 0)
        return;
    while (s->rhead != NULL) {
        reply *r = s->rhead;
        s->rhead = r->next;
        json_decref(r->id);
        sb_free(r->line);
        reply_free(r);
    }
    sb_free(s->buf);
    sb_free(s->scratch);
    sb_jsonw_free(&s->out);
    sb_conn_unref(s->conn);
    sb_free(s);
    if (--reply_pool_users == 0)
        sb_pool_drain(&reply_pool);
}

static void jsonl_closed(sb_conn *c)
{
    jsonl_session *s = c->session;
    while (s->subs != NULL)
        jsub_free_detached(s, s->subs, 1);
    if (s->agent_ready)
        sb_agent_link_closed(c->adapter->agent, c);
    s->closed = 1;
    session_maybe_free(s);
}

static size_t jsonl_partial(sb_conn *c)
{
    const jsonl_session *s = c->session;
    return s->len;
}

static void jsonl_drained(sb_conn *c)
{
    jsonl_session *s = c->session;
    for (jsub *js = s->subs; js != NULL; js = js->next)
        sb_consumer_ready(&js->consumer);
}

const sb_protocol sb_protocol_jsonl = {
    .name = "jsonl",
    .open = jsonl_open,
    .data = jsonl_data,
    .closed = jsonl_closed,
    .drained = jsonl_drained,
    .partial = jsonl_partial,
};
