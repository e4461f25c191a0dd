/*
 * rpc: endpoints for sb_client (Windows): the jsonl protocol carried by the
 * MS-RPC interface, so every sbctl command works over RPC (sbctl -e
 * rpc:NAME or rpc:HOST:PORT).
 *
 * The client writes jsonl requests as it would to a socket; each complete
 * line becomes one call of the sbrpc library (tools/rpc/sbrpc.h) and its
 * answer one reply line, queued for reading. A `sub` opens a subscription
 * handle; while one is open, a read with nothing queued pulls from it (no
 * more than its window minus the deliveries not yet acknowledged) and hands
 * out the deliveries as `msg` lines; `ack` and `nack` go to the handle. A
 * broker refusal is an `error` reply, as over jsonl; a transport failure
 * (the broker went away) fails the write or read itself.
 */
#include "tools/client/transport_int.h"
#include "service/alloc.h"
#include "service/base64.h"
#include "service/platform/win/utf.h"
#include "service/topic.h"
#include "tools/rpc/sbrpc.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

int sb_client__rpc_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms, sb_error *err);

/* A pull waits at most this long per read when several subscriptions are
 * open (one is pulled with the read's whole timeout). */
#define SHARED_WAIT_MS 100
#define PULL_MAX 1000

typedef struct bsub {
    char *name;
    sb_rpc_sub *s;
    int window;
    int outstanding; /* handed out, not acknowledged */
    struct bsub *next;
} bsub;

typedef struct rpc_bridge {
    sb_transport base;
    sb_rpc *c;
    char name[SB_ENDPOINT_PATH_MAX + 16];
    char *in; /* written, not yet a whole line */
    size_t in_len, in_cap;
    char *out; /* reply lines not yet read */
    size_t out_len, out_off, out_cap;
    bsub *subs;
    bsub *turn; /* the subscription pulled next */
} rpc_bridge;

/* ---- output ---- */

static int put(rpc_bridge *b, const char *s, size_t n)
{
    if (b->out_off > 0 && b->out_off == b->out_len)
        b->out_off = b->out_len = 0;
    if (b->out_len + n + 1 > b->out_cap) {
        size_t cap = b->out_cap == 0 ? 4096 : b->out_cap;
        char *p;
        while (cap < b->out_len + n + 1)
            cap *= 2;
        p = sb_realloc(b->out, cap);
        if (p == NULL)
            return SB_ENOMEM;
        b->out = p;
        b->out_cap = cap;
    }
    memcpy(b->out + b->out_len, s, n);
    b->out[b->out_len + n] = '\n';
    b->out_len += n + 1;
    return 0;
}

/* Queues obj as a line with the request's id (consumes obj). */
static int put_json(rpc_bridge *b, json_t *obj, json_t *id)
{
    char *text;
    int rc;
    if (obj == NULL)
        return SB_ENOMEM;
    if (id != NULL)
        json_object_set(obj, "id", id);
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text == NULL)
        return SB_ENOMEM;
    rc = put(b, text, strlen(text));
    free(text);
    return rc;
}

static int put_error(rpc_bridge *b, json_t *id, int code, const char *msg)
{
    return put_json(
        b, json_pack("{s:s, s:s, s:s}", "op", "error", "code", sb_errname(code), "message", msg),
        id);
}

/* A failed call: a transport failure (an RPC status in err->sys) ends the
 * stream; a refusal by the broker becomes an error reply. */
static int failed(rpc_bridge *b, json_t *id, const sb_error *err, sb_error *out_err)
{
    if (err->sys > 0 && (err->code == SB_ECONNREFUSED || err->code == SB_ECLOSED ||
                         err->code == SB_EIO || err->code == SB_ETIMEDOUT)) {
        *out_err = *err;
        return err->code;
    }
    return put_error(b, id, err->code, err->msg);
}

/* ---- requests ---- */

static bsub *find_sub(rpc_bridge *b, const char *name)
{
    for (bsub *s = b->subs; s != NULL; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static void drop_sub(rpc_bridge *b, bsub *s)
{
    for (bsub **pp = &b->subs; *pp != NULL; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (b->turn == s)
        b->turn = NULL;
    sb_free(s->name);
    sb_free(s);
}

/* A duration: a number of milliseconds, or "500ms", "10s", "1.5m", "2h", "1d". */
static int duration(json_t *v, int64_t *out)
{
    const char *s;
    char *end;
    double x;
    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return *out >= 0 ? 0 : SB_EINVAL;
    }
    s = json_string_value(v);
    if (s == NULL)
        return SB_EINVAL;
    x = strtod(s, &end);
    if (end == s || x < 0)
        return SB_EINVAL;
    if (strcmp(end, "ms") == 0 || *end == '\0')
        *out = (int64_t)x;
    else if (strcmp(end, "s") == 0)
        *out = (int64_t)(x * 1000);
    else if (strcmp(end, "m") == 0)
        *out = (int64_t)(x * 60000);
    else if (strcmp(end, "h") == 0)
        *out = (int64_t)(x * 3600000);
    else if (strcmp(end, "d") == 0)
        *out = (int64_t)(x * 86400000);
    else
        return SB_EINVAL;
    return 0;
}

static int do_pub(rpc_bridge *b, json_t *req, json_t *id, sb_error *oerr)
{
    const char *topic = json_string_value(json_object_get(req, "topic"));
    json_t *payload = json_object_get(req, "payload"), *b64 = json_object_get(req, "payload_b64");
    json_t *headers = json_object_get(req, "headers"), *v;
    sb_rpc_header h[64];
    sb_rpc_pub_opts o;
    unsigned char *bytes = NULL;
    const void *data;
    size_t len, nh = 0;
    uint64_t msg_id;
    int queues, rc;
    const char *key;
    sb_error err;

    if (topic == NULL)
        return put_error(b, id, SB_EINVAL, "pub: \"topic\" (a string) is required");
    if (json_is_string(payload) == json_is_string(b64))
        return put_error(b, id, SB_EINVAL,
                         "pub: exactly one of \"payload\" or \"payload_b64\" (a string) is "
                         "required");
    if (json_is_string(payload)) {
        data = json_string_value(payload);
        len = json_string_length(payload);
    } else {
        if (sb_base64_decode(json_string_value(b64), json_string_length(b64), &bytes, &len) != 0)
            return put_error(b, id, SB_EINVAL, "pub: payload_b64 is not valid base64");
        data = bytes;
    }
    json_object_foreach(headers, key, v)
    {
        if (nh == 64 || !json_is_string(v)) {
            sb_free(bytes);
            return put_error(b, id, SB_EINVAL, "pub: at most 64 headers, with string values");
        }
        h[nh].key = key;
        h[nh++].value = json_string_value(v);
    }
    memset(&o, 0, sizeof o);
    o.retain = json_is_true(json_object_get(req, "retain"));
    o.priority = (int)json_integer_value(json_object_get(req, "priority"));
    if (duration(json_object_get(req, "ttl"), &o.ttl_ms) != 0) {
        sb_free(bytes);
        return put_error(b, id, SB_EINVAL, "pub: \"ttl\" must be a duration like \"10s\"");
    }
    rc = sb_rpc_publish(b->c, topic, data, len, h, nh, &o, &msg_id, &queues, &err);
    sb_free(bytes);
    if (rc != 0)
        return failed(b, id, &err, oerr);
    return put_json(b,
                    json_pack("{s:s, s:I, s:i}", "op", "puback", "msg_id", (json_int_t)msg_id,
                              "queues", queues),
                    id);
}

static int do_sub(rpc_bridge *b, json_t *req, json_t *id, sb_error *oerr)
{
    const char *name = json_string_value(json_object_get(req, "sub"));
    const char *dur = json_string_value(json_object_get(req, "durability"));
    json_t *w = json_object_get(req, "window");
    sb_rpc_sub_opts o;
    char *filters = NULL;
    bsub *s;
    sb_error err;
    int rc;

    if (name == NULL)
        return put_error(b, id, SB_EINVAL, "sub: \"sub\" (the subscription name) is required");
    if (find_sub(b, name) != NULL)
        return put_error(b, id, SB_EEXIST, "sub: already subscribed on this connection");
    memset(&o, 0, sizeof o);
    o.window = w != NULL ? (int)json_integer_value(w) : 100;
    if (o.window < 1 || o.window > 10000)
        return put_error(b, id, SB_EINVAL, "sub: \"window\" must be 1..10000 over rpc");
    o.durability = dur == NULL                   ? 0
                   : strcmp(dur, "fsync") == 0   ? 1
                   : strcmp(dur, "batched") == 0 ? 2
                   : strcmp(dur, "memory") == 0  ? 3
                                                 : -1;
    if (o.durability < 0)
        return put_error(b, id, SB_EINVAL, "sub: invalid \"durability\"");
    o.max_attempts = (int)json_integer_value(json_object_get(req, "max_attempts"));
    o.transient = json_is_true(json_object_get(req, "transient"));
    o.max_depth = json_integer_value(json_object_get(req, "max_depth"));
    o.retained = json_string_value(json_object_get(req, "retained"));
    if (duration(json_object_get(req, "lease"), &o.lease_ms) != 0 ||
        duration(json_object_get(req, "ttl"), &o.ttl_ms) != 0 ||
        duration(json_object_get(req, "expire"), &o.expire_ms) != 0)
        return put_error(b, id, SB_EINVAL, "sub: invalid duration (lease, ttl or expire)");
    s = sb_calloc(1, sizeof(*s));
    if (s == NULL || (s->name = sb_strdup(name)) == NULL) {
        sb_free(s);
        return SB_ENOMEM;
    }
    rc = sb_rpc_subscribe(&s->s, b->c, name, json_string_value(json_object_get(req, "filter")), &o,
                          &filters, &err);
    if (rc != 0) {
        sb_free(s->name);
        sb_free(s);
        return failed(b, id, &err, oerr);
    }
    s->window = o.window;
    s->next = b->subs;
    b->subs = s;
    rc = put_json(b,
                  json_pack("{s:s, s:s, s:s}", "op", "subscribed", "sub", name, "filter",
                            filters != NULL ? filters : ""),
                  id);
    sb_free(filters);
    return rc;
}

static int do_ack(rpc_bridge *b, json_t *req, json_t *id, int ack, sb_error *oerr)
{
    const char *name = json_string_value(json_object_get(req, "sub"));
    json_t *mid = json_object_get(req, "msg_id");
    bsub *s = name != NULL ? find_sub(b, name) : NULL;
    uint64_t msg_id;
    size_t done = 0;
    sb_error err;
    int rc;

    if (name == NULL || !json_is_integer(mid))
        return put_error(b, id, SB_EINVAL, "ack/nack: \"sub\" and \"msg_id\" are required");
    if (s == NULL)
        return put_error(b, id, SB_ENOTFOUND, "ack/nack: not subscribed to that subscription here");
    msg_id = (uint64_t)json_integer_value(mid);
    rc = ack ? sb_rpc_ack(s->s, &msg_id, 1, &done, &err)
             : sb_rpc_nack(s->s, &msg_id, 1, json_string_value(json_object_get(req, "reason")),
                           &done, &err);
    if (done > 0 && s->outstanding > 0)
        s->outstanding--;
    if (rc != 0)
        return id != NULL || err.sys > 0 ? failed(b, id, &err, oerr) : 0;
    return id != NULL ? put_json(b, json_pack("{s:s}", "op", "ok"), id) : 0;
}

static int do_unsub(rpc_bridge *b, json_t *req, json_t *id, sb_error *oerr)
{
    const char *name = json_string_value(json_object_get(req, "sub"));
    int del = json_is_true(json_object_get(req, "delete"));
    bsub *s = name != NULL ? find_sub(b, name) : NULL;
    sb_rpc_sub *h = NULL;
    sb_error err;
    int rc;

    if (name == NULL)
        return put_error(b, id, SB_EINVAL, "unsub: \"sub\" is required");
    if (s == NULL && !del)
        return put_error(b, id, SB_ENOTFOUND, "unsub: not subscribed to that subscription here");
    if (s != NULL) {
        h = s->s;
        drop_sub(b, s);
    } else if (sb_rpc_subscribe(&h, b->c, name, NULL, NULL, NULL, &err) != 0) {
        /* deleting one that is not open here: open it to delete it */
        return failed(b, id, &err, oerr);
    }
    rc = sb_rpc_unsubscribe(h, del, &err);
    if (rc != 0)
        return failed(b, id, &err, oerr);
    return put_json(b, json_pack("{s:s, s:s}", "op", "unsubscribed", "sub", name), id);
}

static int do_stats(rpc_bridge *b, json_t *id, sb_error *oerr)
{
    char *text;
    json_t *o;
    sb_error err;
    if (sb_rpc_stats(b->c, &text, &err) != 0)
        return failed(b, id, &err, oerr);
    o = json_loads(text, 0, NULL);
    sb_free(text);
    if (o == NULL)
        return put_error(b, id, SB_EPROTO, "stats: the broker's answer is not JSON");
    json_object_set_new(o, "op", json_string("stats"));
    return put_json(b, o, id);
}

static json_t *payload_json(const unsigned char *p, size_t n, const char **key)
{
    json_t *v = sb_utf8_valid((const char *)p, n) && memchr(p, 0, n) == NULL
                    ? json_stringn((const char *)p, n)
                    : NULL;
    if (v != NULL) {
        *key = "payload";
        return v;
    }
    *key = "payload_b64";
    {
        char *s = sb_base64_encode(p, n);
        v = s != NULL ? json_string(s) : NULL;
        sb_free(s);
    }
    return v;
}

static json_t *headers_json(const sb_rpc_header *h, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, h[i].key, json_string(h[i].value));
    return o;
}

static int do_dlq(rpc_bridge *b, const char *op, json_t *req, json_t *id, sb_error *oerr)
{
    const char *sub = json_string_value(json_object_get(req, "sub"));
    sb_error err;
    int rc;
    if (strcmp(op, "dlq.list") == 0) {
        sb_rpc_dead_letters *d;
        json_t *res, *items;
        rc = sb_rpc_dlq_list(b->c, sub, json_integer_value(json_object_get(req, "after")),
                             (int)json_integer_value(json_object_get(req, "limit")), &d, &err);
        if (rc != 0)
            return failed(b, id, &err, oerr);
        res = json_pack("{s:s}", "op", "dlq.list");
        items = json_array();
        for (size_t i = 0; res != NULL && items != NULL && i < d->count; i++) {
            const sb_rpc_dead_letter *x = &d->items[i];
            const char *key;
            json_t *o = json_pack("{s:I, s:s, s:I, s:s, s:i, s:I}", "dlq_id", (json_int_t)x->dlq_id,
                                  "sub", x->sub, "msg_id", (json_int_t)x->msg_id, "topic", x->topic,
                                  "attempts", x->attempts, "dead_at", (json_int_t)x->dead_at_ms);
            if (o == NULL)
                continue;
            json_t *p = payload_json(x->payload, x->payload_len, &key);
            json_object_set_new(o, key, p);
            json_object_set_new(o, "headers", headers_json(x->headers, x->header_count));
            if (x->reason != NULL)
                json_object_set_new(o, "reason", json_string(x->reason));
            if (x->source != NULL)
                json_object_set_new(o, "source", json_string(x->source));
            json_array_append_new(items, o);
        }
        if (res != NULL && items != NULL) {
            json_object_set_new(res, "items", items);
            if (d->next != 0)
                json_object_set_new(res, "next", json_integer((json_int_t)d->next));
        } else {
            json_decref(items);
        }
        sb_rpc_dead_letters_free(d);
        return put_json(b, res, id);
    } else {
        int64_t n = 0;
        rc = strcmp(op, "dlq.redrive") == 0 ? sb_rpc_dlq_redrive(b->c, sub, &n, &err)
                                            : sb_rpc_dlq_purge(b->c, sub, &n, &err);
        if (rc != 0)
            return failed(b, id, &err, oerr);
        return put_json(b, json_pack("{s:s, s:I}", "op", op, "count", (json_int_t)n), id);
    }
}

static int handle_line(rpc_bridge *b, const char *line, size_t len, sb_error *oerr)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_ALLOW_NUL, &jerr), *id;
    const char *op;
    char msg[300];
    int rc;

    if (req == NULL || !json_is_object(req)) {
        json_decref(req);
        snprintf(msg, sizeof msg, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        return put_error(b, NULL, SB_EPROTO, msg);
    }
    id = json_object_get(req, "id");
    op = json_string_value(json_object_get(req, "op"));
    if (op == NULL) {
        rc = put_error(b, id, SB_EPROTO, "missing \"op\"");
    } else if (strcmp(op, "ping") == 0) {
        sb_error err;
        rc = sb_rpc_whoami(b->c, NULL, NULL, &err) != 0
                 ? failed(b, id, &err, oerr)
                 : put_json(b, json_pack("{s:s}", "op", "pong"), id);
    } else if (strcmp(op, "pub") == 0) {
        rc = do_pub(b, req, id, oerr);
    } else if (strcmp(op, "sub") == 0) {
        rc = do_sub(b, req, id, oerr);
    } else if (strcmp(op, "ack") == 0 || strcmp(op, "nack") == 0) {
        rc = do_ack(b, req, id, op[0] == 'a', oerr);
    } else if (strcmp(op, "unsub") == 0) {
        rc = do_unsub(b, req, id, oerr);
    } else if (strcmp(op, "stats") == 0) {
        rc = do_stats(b, id, oerr);
    } else if (strncmp(op, "dlq.", 4) == 0 &&
               (strcmp(op + 4, "list") == 0 || strcmp(op + 4, "redrive") == 0 ||
                strcmp(op + 4, "purge") == 0)) {
        rc = do_dlq(b, op, req, id, oerr);
    } else {
        snprintf(msg, sizeof msg, "unknown op \"%.100s\"", op);
        rc = put_error(b, id, SB_EPROTO, msg);
    }
    json_decref(req);
    return rc;
}

/* ---- the transport ---- */

static int bridge_write(sb_transport *t, const void *buf, size_t len, int timeout_ms, sb_error *err)
{
    rpc_bridge *b = (rpc_bridge *)t;
    size_t start = 0;
    (void)timeout_ms;
    if (b->in_len + len > b->in_cap) {
        size_t cap = b->in_cap == 0 ? 4096 : b->in_cap;
        char *p;
        while (cap < b->in_len + len)
            cap *= 2;
        p = sb_realloc(b->in, cap);
        if (p == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "%s: out of memory", b->name);
        b->in = p;
        b->in_cap = cap;
    }
    memcpy(b->in + b->in_len, buf, len);
    b->in_len += len;
    for (;;) {
        char *nl = memchr(b->in + start, '\n', b->in_len - start);
        size_t n;
        int rc;
        if (nl == NULL)
            break;
        n = (size_t)(nl - (b->in + start));
        if (n > 0 && b->in[start + n - 1] == '\r')
            n--;
        rc = n > 0 ? handle_line(b, b->in + start, n, err) : 0;
        start = (size_t)(nl - b->in) + 1;
        if (rc == SB_ENOMEM)
            return sb_error_set(err, rc, 0, "%s: out of memory", b->name);
        if (rc != 0)
            return rc; /* err set by failed() */
    }
    memmove(b->in, b->in + start, b->in_len - start);
    b->in_len -= start;
    return 0;
}

/* Pulls from the next subscription with room in its window into `out`. */
static int pull_some(rpc_bridge *b, int wait_ms, sb_error *err)
{
    int nsubs = 0;
    for (bsub *s = b->subs; s != NULL; s = s->next)
        nsubs++;
    for (int i = 0; i < nsubs; i++) {
        bsub *s = b->turn != NULL ? b->turn : b->subs;
        int room = s->window - s->outstanding;
        sb_rpc_batch *batch;
        int rc;
        b->turn = s->next;
        if (room <= 0)
            continue;
        rc = sb_rpc_pull(
            s->s, &batch, (size_t)(room < PULL_MAX ? room : PULL_MAX),
            nsubs == 1 ? wait_ms : (wait_ms < SHARED_WAIT_MS ? wait_ms : SHARED_WAIT_MS), err);
        if (rc != 0)
            return rc;
        for (size_t k = 0; k < batch->count; k++) {
            const sb_rpc_delivery *d = &batch->items[k];
            const char *key;
            json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:i, s:I}", "op", "msg", "sub", s->name,
                                  "msg_id", (json_int_t)d->msg_id, "topic", d->topic, "attempt",
                                  d->attempt, "created", (json_int_t)d->created_ms);
            if (o != NULL) {
                json_t *p = payload_json(d->payload, d->payload_len, &key);
                json_object_set_new(o, key, p);
                if (d->header_count > 0)
                    json_object_set_new(o, "headers", headers_json(d->headers, d->header_count));
            }
            if (put_json(b, o, NULL) != 0) {
                sb_rpc_batch_free(batch);
                return sb_error_set(err, SB_ENOMEM, 0, "%s: out of memory", b->name);
            }
            s->outstanding++;
        }
        rc = (int)batch->count;
        sb_rpc_batch_free(batch);
        if (rc > 0)
            return 0;
    }
    return 0;
}

static int bridge_read(sb_transport *t, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                       sb_error *err)
{
    rpc_bridge *b = (rpc_bridge *)t;
    unsigned long long deadline =
        timeout_ms < 0 ? 0 : sb_client__now_ns() + (unsigned long long)timeout_ms * 1000000ull;
    *out_n = 0;
    for (;;) {
        size_t avail = b->out_len - b->out_off;
        int wait;
        if (avail > 0) {
            size_t n = avail < cap ? avail : cap;
            memcpy(buf, b->out + b->out_off, n);
            b->out_off += n;
            *out_n = n;
            return 0;
        }
        if (timeout_ms < 0) {
            wait = 10000;
        } else {
            unsigned long long now = sb_client__now_ns();
            if (now >= deadline && timeout_ms > 0)
                return SB_ETIMEDOUT;
            wait = now >= deadline ? 0 : (int)((deadline - now) / 1000000ull);
        }
        if (b->subs == NULL) {
            /* nothing will ever come: every reply was queued by its write */
            if (timeout_ms < 0)
                return sb_error_set(err, SB_ECLOSED, 0, "%s: nothing more to read", b->name);
            Sleep((DWORD)wait);
            return SB_ETIMEDOUT;
        }
        if (pull_some(b, wait, err) != 0)
            return err->code;
        if (timeout_ms == 0 && b->out_len == b->out_off)
            return SB_ETIMEDOUT;
    }
}

static void bridge_close(sb_transport *t)
{
    rpc_bridge *b = (rpc_bridge *)t;
    while (b->subs != NULL) {
        sb_rpc_unsubscribe(b->subs->s, 0, NULL);
        drop_sub(b, b->subs);
    }
    sb_rpc_free(b->c);
    sb_free(b->in);
    sb_free(b->out);
    sb_free(b);
}

static const sb_transport_ops bridge_ops = {bridge_read, bridge_write, bridge_close};

int sb_client__rpc_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms, sb_error *err)
{
    rpc_bridge *b;
    sb_error e;
    int rc;

    (void)timeout_ms;
    *out = NULL;
    b = sb_calloc(1, sizeof(*b));
    if (b == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory", ep->display);
    b->base.ops = &bridge_ops;
    snprintf(b->name, sizeof b->name, "%s", ep->display);
    rc = sb_rpc_connect(&b->c, ep->path, NULL, &e);
    /* The binding sends nothing yet: see now that the broker answers. */
    if (rc == 0)
        rc = sb_rpc_whoami(b->c, NULL, NULL, &e);
    if (rc != 0) {
        char text[256];
        sb_rpc_free(b->c);
        sb_free(b);
        if (e.sys <= 0) /* refused by the broker, or a bad endpoint */
            return sb_error_set(err, rc, e.sys, "cannot connect to %s: %s", ep->display, e.msg);
        sb_win_strerror((unsigned long)e.sys, text, sizeof text);
        return sb_error_set(err, rc, e.sys, "cannot connect to %s: %s (RPC status %d)",
                            ep->display, text, e.sys);
    }
    *out = &b->base;
    return 0;
}
