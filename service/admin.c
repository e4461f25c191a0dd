/* Administration: stats as JSON (all of them, or the queues a client may
 * see) and dead-letter list / redrive / purge. */
#include "service/agent_host.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/broker_int.h"
#include "service/base64.h"
#include "service/log.h"
#include "service/topic.h"
#include "service/transform.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const char *const durability_names[] = {"fsync", "batched", "memory"};

void *sb_broker_stats_json(sb_broker *b)
{
    return sb_broker_stats_json_visible(b, NULL, NULL);
}

void *sb_broker_stats_json_visible(sb_broker *b, sb_stats_visible_cb visible, void *ctx)
{
    json_t *root = json_object(), *queues = json_array(), *store = json_object(),
           *broker = json_object(), *adapters = json_array(), *classes = json_object();
    int64_t now = sb_now_ms(), now_sec = (int64_t)(uv_now(&b->loop) / 1000);
    sb_store_stats st;

    if (root == NULL || queues == NULL || store == NULL || broker == NULL || adapters == NULL ||
        classes == NULL)
        goto oom;
    for (sb_queue *q = b->queues; q != NULL; q = q->next) {
        int consumers = 0, inflight = 0;
        json_t *o;
        json_t *filters;
        char *joined;
        if (visible != NULL && !visible(ctx, q->name, q->filters, q->filter_count))
            continue;
        for (sb_consumer *c = q->consumers; c != NULL; c = c->next) {
            consumers++;
            inflight += c->inflight;
        }
        /* "filter" joins them with '\n', as before "filters" came */
        filters = json_array();
        joined = sb_sub_filters_join(q->filters, q->filter_count);
        for (size_t i = 0; filters != NULL && i < q->filter_count; i++)
            if (json_array_append_new(filters, json_string(q->filters[i].filter)) != 0) {
                json_decref(filters);
                filters = NULL;
            }
        if (filters == NULL || joined == NULL) {
            json_decref(filters);
            sb_free(joined);
            goto oom;
        }
        o = json_pack("{s:s, s:s, s:o, s:s, s:s, s:I, s:I, s:I, s:i, s:i, s:I, s:I, s:I, s:I, s:I, "
                      "s:I, s:f, s:f}",
                      "name", q->name, "filter", joined, "filters", filters, "durability",
                      durability_names[q->durability], "kind",
                      !q->from_config    ? "client"
                      : q->route != NULL ? "route"
                                         : "orphaned",
                      "depth", (json_int_t)sb_queue__total_depth(q), "bytes",
                      (json_int_t)sb_queue__total_bytes(q), "pending", (json_int_t)(q->pending - q->early),
                      "inflight", inflight, "consumers", consumers, "oldest_age_ms",
                      (json_int_t)(q->fifo.head != NULL ? now - q->fifo.head->msg->created_ms : 0),
                      "published", (json_int_t)q->published, "delivered", (json_int_t)q->delivered,
                      "acked", (json_int_t)q->acked, "dead", (json_int_t)q->dead, "dropped",
                      (json_int_t)q->dropped, "in_rate", sb_rate__per_sec(&q->in_rate, now_sec),
                      "out_rate", sb_rate__per_sec(&q->out_rate, now_sec));
        sb_free(joined);
        /* paging: the window in memory, the rest only in the store */
        if (o != NULL &&
            (json_object_set_new(o, "resident_depth", json_integer((json_int_t)q->depth)) != 0 ||
             json_object_set_new(o, "resident_bytes", json_integer((json_int_t)q->bytes)) != 0 ||
             json_object_set_new(o, "stored_depth", json_integer((json_int_t)q->disk_depth)) != 0 ||
             json_object_set_new(o, "stored_bytes", json_integer((json_int_t)q->disk_bytes)) !=
                 0)) {
            json_decref(o);
            o = NULL;
        }
        if (o != NULL && q->transform != NULL &&
            json_object_set_new(o, "filtered", json_integer((json_int_t)q->filtered)) != 0) {
            json_decref(o);
            o = NULL;
        }
        if (o == NULL || json_array_append_new(queues, o) != 0)
            goto oom;
    }
    memset(&st, 0, sizeof(st));
    if (b->store != NULL) /* none in a session agent */
        sb_store_get_stats(b->store, &st);
    json_object_set_new(store, "commits", json_integer((json_int_t)st.commits));
    json_object_set_new(store, "fsync_commits", json_integer((json_int_t)st.fsync_commits));
    json_object_set_new(store, "ops", json_integer((json_int_t)st.ops));
    json_object_set_new(store, "elided", json_integer((json_int_t)st.elided));
    json_object_set_new(store, "failed_commits", json_integer((json_int_t)st.failed_commits));
    json_object_set_new(store, "max_batch", json_integer((json_int_t)st.max_batch_seen));
    json_object_set_new(store, "db_bytes", json_integer((json_int_t)st.db_bytes));
    json_object_set_new(store, "free_bytes", json_integer((json_int_t)st.free_bytes));
    json_object_set_new(store, "auto_vacuum", json_boolean(st.auto_vacuum));
    json_object_set_new(store, "degraded", json_boolean(st.degraded));
    json_object_set_new(store, "last_error", json_string(st.last_error));
    for (sb_adapter *a = b->adapters; a != NULL; a = a->next) {
        json_array_append_new(adapters, json_string(a->name));
        /* an adapter's own counters: in the full stats only */
        if (a->type->stats != NULL && visible == NULL) {
            json_t *o = a->type->stats(a), *all = json_object_get(root, "adapters");
            if (all == NULL && json_object_set_new(root, "adapters", all = json_object()) != 0)
                all = NULL;
            if (o != NULL && all != NULL)
                json_object_set_new(all, a->name, o);
            else
                json_decref(o);
        }
    }
    if (b->agents != NULL)
        json_object_set_new(broker, "agents", sb_agent_host_stats(b->agents));
    for (int c = 0; c < 3; c++)
        json_object_set_new(classes, durability_names[c],
                            json_integer((json_int_t)b->published_class[c]));
    json_object_set_new(broker, "version", json_string(SB_VERSION_STRING));
    json_object_set_new(broker, "uptime_ms", json_integer((json_int_t)(now - b->started_ms)));
    json_object_set_new(broker, "published", json_integer((json_int_t)b->published));
    json_object_set_new(broker, "refused", json_integer((json_int_t)b->refused));
    json_object_set_new(broker, "retained", json_integer((json_int_t)b->retained.count));
    json_object_set_new(broker, "queue_memory",
                        json_integer((json_int_t)b->cfg->broker.queue_memory));
    json_object_set_new(broker, "resident_bytes", json_integer((json_int_t)b->resident_bytes));
    {
        unsigned long hashed, cached;
        if (sb_auth_login_counts(b->auth, &hashed, &cached))
            json_object_set_new(broker, "logins",
                                json_pack("{s:I, s:I}", "hashed", (json_int_t)hashed, "cached",
                                          (json_int_t)cached));
    }
    json_object_set_new(broker, "durability", classes);
    json_object_set_new(broker, "adapters", adapters);
    json_object_set_new(root, "queues", queues);
    json_object_set_new(root, "store", store);
    json_object_set_new(root, "broker", broker);
    return root;
oom:
    json_decref(root);
    json_decref(queues);
    json_decref(store);
    json_decref(broker);
    json_decref(adapters);
    json_decref(classes);
    return NULL;
}

/* ---- dead letters ---- */

typedef struct admin_req {
    sb_store_op op;
    sb_broker *b;
    sb_admin_cb cb;
    void *ctx;
    char *sub;
    int64_t redriven;
    /* redrive: the last message id when it started; a dead letter with a
     * newer one came in meanwhile (a redriven message that failed again at
     * once, say: a transform refusing it) and is left for the next */
    uint64_t floor_id;
    /* a batch (sb_dlq_batch): at most `limit` dead letters looked at, 0:
     * all; `examined` so far */
    int64_t limit, examined;
} admin_req;

static json_t *payload_json(const sb_message *m, const char **key);

static void admin_req_free(admin_req *r)
{
    sb_free(r->sub);
    sb_free(r);
}

json_t *sb_admin__message_fields(json_t *o, const sb_message *m);
json_t *sb_admin__message_fields(json_t *o, const sb_message *m)
{
    const char *key;
    json_t *headers = json_object();
    json_object_set_new(o, "topic", json_string(m->topic));
    json_t *p = payload_json(m, &key);
    json_object_set_new(o, key, p);
    for (size_t i = 0; i < m->header_count; i++)
        json_object_set_new(headers, m->headers[i].key, json_string(m->headers[i].value));
    json_object_set_new(o, "headers", headers);
    return o;
}

static json_t *payload_json(const sb_message *m, const char **key)
{
    if (sb_utf8_valid((const char *)m->payload, m->payload_len) &&
        memchr(m->payload, '\0', m->payload_len) == NULL) {
        *key = "payload";
        return json_stringn((const char *)m->payload, m->payload_len);
    } else {
        char *s = sb_base64_encode(m->payload, m->payload_len);
        json_t *j = s != NULL ? json_string(s) : NULL;
        sb_free(s);
        *key = "payload_b64";
        return j;
    }
}

static void on_dlq_list(sb_store_op *op, void *ctx)
{
    admin_req *r = ctx;
    json_t *res = NULL, *items;
    if (op->status == 0 && (res = json_object()) != NULL && (items = json_array()) != NULL) {
        for (size_t i = 0; i < op->u.dlq_list.row_count; i++) {
            sb_dead_letter *d = &op->u.dlq_list.rows[i];
            json_t *o = json_pack("{s:I, s:s, s:I, s:s?, s:s?, s:i, s:I}", "dlq_id",
                                  (json_int_t)d->dlq_id, "sub", d->queue_name, "msg_id",
                                  (json_int_t)d->msg->id, "reason", d->reason, "source", d->source,
                                  "attempts", d->attempts, "dead_at", (json_int_t)d->dead_ms);
            if (o != NULL) {
                sb_admin__message_fields(o, d->msg);
                json_array_append_new(items, o);
            }
        }
        json_object_set_new(res, "items", items);
        if (op->u.dlq_list.row_count > 0 && (int)op->u.dlq_list.row_count == op->u.dlq_list.limit)
            json_object_set_new(
                res, "next",
                json_integer((json_int_t)op->u.dlq_list.rows[op->u.dlq_list.row_count - 1].dlq_id));
    }
    r->cb(r->ctx, op->status, res, op->status != 0 ? sb_strerror(op->status) : NULL);
    sb_store_dlq_rows_free(op->u.dlq_list.rows, op->u.dlq_list.row_count);
    admin_req_free(r);
}

static admin_req *new_req(sb_broker *b, const char *sub, sb_admin_cb cb, void *ctx)
{
    admin_req *r = sb_calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->b = b;
    r->cb = cb;
    r->ctx = ctx;
    if (sub != NULL && (r->sub = sb_strdup(sub)) == NULL) {
        sb_free(r);
        return NULL;
    }
    return r;
}

int sb_broker_dlq_list(sb_broker *b, const char *sub, int64_t after, int limit, sb_admin_cb cb,
                       void *ctx, sb_error *err)
{
    admin_req *r;
    if (b->store == NULL)
        return sb_error_set(err, SB_EACCES, 0, "no dead letters in a session agent");
    r = new_req(b, sub, cb, ctx);
    if (r == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    r->op.type = SB_OP_DLQ_LIST;
    r->op.u.dlq_list.queue_name = r->sub;
    r->op.u.dlq_list.after_dlq_id = after;
    r->op.u.dlq_list.limit = limit > 0 && limit <= 10000 ? limit : 100;
    r->op.cb = on_dlq_list;
    r->op.ctx = r;
    if (sb_store_submit(b->store, &r->op) != 0) {
        admin_req_free(r);
        return sb_error_set(err, SB_ESHUTDOWN, 0, "broker is shutting down");
    }
    return 0;
}

static void redrive_next(admin_req *r, int64_t after);

/* The end of a redrive: its count and, when a batch stopped at its limit,
 * where the next batch goes on. */
static void redrive_reply(admin_req *r, int status, int64_t next)
{
    json_t *res = NULL;
    if (status == 0) {
        res = json_pack("{s:I}", "count", (json_int_t)r->redriven);
        if (res != NULL && next > 0) {
            json_object_set_new(res, "more", json_true());
            json_object_set_new(res, "next", json_integer((json_int_t)next));
            json_object_set_new(res, "floor", json_integer((json_int_t)r->floor_id));
        }
    }
    r->cb(r->ctx, status, res, status != 0 ? sb_strerror(status) : NULL);
    admin_req_free(r);
}

/* After the rows up to dlq_id `last`: the next page, or the reply when the
 * batch is done. */
static void redrive_continue(admin_req *r, int64_t last)
{
    if (r->limit > 0 && r->examined >= r->limit)
        redrive_reply(r, 0, last);
    else
        redrive_next(r, last);
}

/* Counts the rows going back to each target queue (delta +1) or arrived
 * (-1): while a queue has some, no publish is appended to it before its
 * commit, as it would overtake their older ids. */
static void count_redriving(sb_broker *b, const sb_dead_letter *rows, size_t n, int delta)
{
    for (size_t i = 0; i < n; i++) {
        sb_queue *q = rows[i].target_queue_id != 0
                          ? sb_broker__queue_by_id(b, rows[i].target_queue_id)
                          : NULL;
        if (q != NULL)
            q->redriving += delta;
    }
}

static void on_redrive_done(sb_store_op *op, void *ctx)
{
    admin_req *r = ctx;
    int64_t last = 0;
    count_redriving(r->b, op->u.dlq_redrive.rows, op->u.dlq_redrive.row_count, -1);
    for (size_t i = 0; i < op->u.dlq_redrive.row_count; i++) {
        sb_dead_letter *d = &op->u.dlq_redrive.rows[i];
        last = d->dlq_id;
        if (op->status == 0 && d->target_queue_id != 0) {
            sb_queue *q = sb_broker__queue_by_id(r->b, d->target_queue_id);
            if (q != NULL && q->live) {
                d->msg->id = d->new_msg_id;
                if (sb_queue__append(q, d->msg, 0) != 0) {
                    /* committed to the queue: it is delivered after a restart */
                    sb_log(SB_LOG_WARN, q->name,
                           "redrive: no memory to queue message %lld now; it is delivered "
                           "after a restart",
                           (long long)d->new_msg_id);
                    continue;
                }
                sb_queue__dispatch(q);
                r->redriven++;
            }
        }
    }
    sb_store_dlq_rows_free(op->u.dlq_redrive.rows, op->u.dlq_redrive.row_count);
    if (op->status != 0) {
        r->cb(r->ctx, op->status, NULL, sb_strerror(op->status));
        admin_req_free(r);
        return;
    }
    redrive_continue(r, last);
}

static void on_redrive_listed(sb_store_op *op, void *ctx)
{
    admin_req *r = ctx;
    sb_dead_letter *rows = op->u.dlq_list.rows;
    size_t n = op->u.dlq_list.row_count;
    int64_t last = n > 0 ? rows[n - 1].dlq_id : 0;
    size_t usable = 0;

    if (op->status != 0 || n == 0) {
        sb_store_dlq_rows_free(rows, n);
        redrive_reply(r, op->status, 0);
        return;
    }
    r->examined += (int64_t)n;
    for (size_t i = 0; i < n; i++) {
        sb_queue *q = sb_broker__find_queue(r->b, rows[i].queue_name);
        if (rows[i].msg == NULL || rows[i].msg->id > r->floor_id) {
            rows[i].target_queue_id = 0;
            continue;
        }
        if (q == NULL || !q->live) {
            rows[i].target_queue_id = 0; /* the subscription is gone: left in the DLQ */
            continue;
        }
        rows[i].target_queue_id = q->id;
        rows[i].new_msg_id = ++r->b->last_msg_id;
        usable++;
    }
    if (usable == 0) {
        sb_store_dlq_rows_free(rows, n);
        redrive_continue(r, last);
        return;
    }
    /* Reuse the op as the REDRIVE of these rows (rows without a target are skipped). */
    r->op.type = SB_OP_DLQ_REDRIVE;
    r->op.sync = 1;
    r->op.u.dlq_redrive.rows = rows;
    r->op.u.dlq_redrive.row_count = n;
    r->op.cb = on_redrive_done;
    count_redriving(r->b, rows, n, 1);
    if (sb_store_submit(r->b->store, &r->op) != 0) {
        count_redriving(r->b, rows, n, -1);
        sb_store_dlq_rows_free(rows, n);
        r->cb(r->ctx, SB_ESHUTDOWN, NULL, "broker is shutting down");
        admin_req_free(r);
    }
}

static void redrive_next(admin_req *r, int64_t after)
{
    memset(&r->op, 0, sizeof(r->op));
    r->op.type = SB_OP_DLQ_LIST;
    r->op.u.dlq_list.queue_name = r->sub;
    r->op.u.dlq_list.after_dlq_id = after;
    r->op.u.dlq_list.limit =
        r->limit > 0 && r->limit - r->examined < 500 ? (int)(r->limit - r->examined) : 500;
    r->op.cb = on_redrive_listed;
    r->op.ctx = r;
    if (sb_store_submit(r->b->store, &r->op) != 0) {
        r->cb(r->ctx, SB_ESHUTDOWN, NULL, "broker is shutting down");
        admin_req_free(r);
    }
}

int sb_broker_dlq_redrive(sb_broker *b, const char *sub, sb_admin_cb cb, void *ctx, sb_error *err)
{
    return sb_broker_dlq_redrive_batch(b, sub, NULL, cb, ctx, err);
}

int sb_broker_dlq_redrive_batch(sb_broker *b, const char *sub, const sb_dlq_batch *batch,
                                sb_admin_cb cb, void *ctx, sb_error *err)
{
    admin_req *r;
    if (b->store == NULL)
        return sb_error_set(err, SB_EACCES, 0, "no dead letters in a session agent");
    if (sub != NULL && sb_broker__find_queue(b, sub) == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s", sub);
    r = new_req(b, sub, cb, ctx);
    if (r == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    r->floor_id = b->last_msg_id;
    if (batch != NULL) {
        r->limit = batch->limit > 0 ? batch->limit : 0;
        if (batch->floor > 0 && batch->floor < r->floor_id)
            r->floor_id = batch->floor;
    }
    redrive_next(r, batch != NULL && batch->after > 0 ? batch->after : 0);
    return 0;
}

static void on_purged(sb_store_op *op, void *ctx)
{
    admin_req *r = ctx;
    json_t *res =
        op->status == 0 ? json_pack("{s:I}", "count", (json_int_t)op->u.dlq_purge.purged) : NULL;
    /* a batch that purged its limit: there may be more */
    if (res != NULL && r->limit > 0 && op->u.dlq_purge.purged >= r->limit) {
        json_object_set_new(res, "more", json_true());
        /* the next batches stop at what was there when the first began */
        json_object_set_new(res, "floor", json_integer((json_int_t)op->u.dlq_purge.max_dlq_id));
    }
    if (op->status == 0 && op->u.dlq_purge.purged > 0)
        sb_info(r->sub != NULL ? r->sub : "dlq", "purged %lld dead letters",
                (long long)op->u.dlq_purge.purged);
    r->cb(r->ctx, op->status, res, op->status != 0 ? sb_strerror(op->status) : NULL);
    admin_req_free(r);
}

int sb_broker_dlq_purge(sb_broker *b, const char *sub, sb_admin_cb cb, void *ctx, sb_error *err)
{
    return sb_broker_dlq_purge_batch(b, sub, NULL, cb, ctx, err);
}

int sb_broker_dlq_purge_batch(sb_broker *b, const char *sub, const sb_dlq_batch *batch,
                              sb_admin_cb cb, void *ctx, sb_error *err)
{
    admin_req *r;
    if (b->store == NULL)
        return sb_error_set(err, SB_EACCES, 0, "no dead letters in a session agent");
    r = new_req(b, sub, cb, ctx);
    if (r == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    r->op.type = SB_OP_DLQ_PURGE;
    r->op.sync = 1;
    r->op.u.dlq_purge.queue_name = r->sub;
    r->limit = batch != NULL && batch->limit > 0 ? batch->limit : 0;
    r->op.u.dlq_purge.limit = r->limit;
    r->op.u.dlq_purge.max_dlq_id = batch != NULL ? (int64_t)batch->floor : 0;
    r->op.cb = on_purged;
    r->op.ctx = r;
    if (sb_store_submit(b->store, &r->op) != 0) {
        admin_req_free(r);
        return sb_error_set(err, SB_ESHUTDOWN, 0, "broker is shutting down");
    }
    return 0;
}

/* ---- store maintenance ---- */

static void on_maintenance_done(sb_store_op *op, void *ctx)
{
    admin_req *r = ctx;
    json_t *res = NULL;
    if (op->status == 0 && op->type == SB_OP_CHECK)
        res = json_pack("{s:b, s:s}", "ok", op->u.maint.ok, "report",
                        op->u.maint.ok               ? "ok"
                        : op->u.maint.report != NULL ? op->u.maint.report
                                                     : "damaged (no memory to say where)");
    else if (op->status == 0)
        res = json_pack("{s:I, s:I}", "before_bytes", (json_int_t)op->u.maint.before_bytes,
                        "after_bytes", (json_int_t)op->u.maint.after_bytes);
    r->cb(r->ctx, op->status, res,
          op->status == 0              ? NULL
          : op->u.maint.report != NULL ? op->u.maint.report
                                       : sb_strerror(op->status));
    sb_free(op->u.maint.report);
    admin_req_free(r);
}

static int maintenance(sb_broker *b, sb_store_op_type type, sb_admin_cb cb, void *ctx,
                       sb_error *err)
{
    admin_req *r;
    if (b->store == NULL)
        return sb_error_set(err, SB_EACCES, 0, "no store in a session agent");
    if ((r = new_req(b, NULL, cb, ctx)) == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    r->op.type = type;
    r->op.cb = on_maintenance_done;
    r->op.ctx = r;
    if (sb_store_submit(b->store, &r->op) != 0) {
        admin_req_free(r);
        return sb_error_set(err, SB_ESHUTDOWN, 0, "broker is shutting down");
    }
    return 0;
}

int sb_broker_store_check(sb_broker *b, sb_admin_cb cb, void *ctx, sb_error *err)
{
    return maintenance(b, SB_OP_CHECK, cb, ctx, err);
}

int sb_broker_store_compact(sb_broker *b, sb_admin_cb cb, void *ctx, sb_error *err)
{
    return maintenance(b, SB_OP_COMPACT, cb, ctx, err);
}

/* ---- route test ---- */

void *sb_broker_route_test(sb_broker *b, const char *route, const sb_message *m, sb_error *err)
{
    const sb_route_config *r = sb_config_route(b->cfg, route);
    json_t *res, *dests;
    int matches = 0;

    if (r == NULL) {
        sb_error_set(err, SB_ENOTFOUND, 0, "no route %s", route);
        return NULL;
    }
    for (size_t i = 0; i < r->from_count; i++)
        if (sb_topic_match(r->from[i], m->topic))
            matches = 1;
    res = json_pack("{s:s, s:b}", "route", r->name, "matches", matches);
    dests = json_array();
    if (res == NULL || dests == NULL || json_object_set_new(res, "destinations", dests) != 0)
        goto oom;
    for (size_t d = 0; d < sb_broker__route_dests(r); d++) {
        char name[512], why[300], reason[340];
        sb_transform *t = NULL;
        sb_message **out = NULL;
        size_t count = 0;
        json_t *o;
        int rc;

        sb_broker__route_queue_name(name, sizeof name, r, d);
        if (sb_broker__route_transform(&t, r, d) != 0)
            goto oom;
        /* without a transform: a copy, as a delivery would have it */
        rc = sb_transform_apply_all(t, m, &out, &count, why, sizeof why);
        sb_transform_free(t);
        if (rc == SB_ENOMEM || (o = json_pack("{s:s}", "queue", name)) == NULL ||
            json_array_append_new(dests, o) != 0) {
            for (size_t i = 0; i < count; i++)
                sb_message_unref(out[i]);
            sb_free(out);
            goto oom;
        }
        if (rc == SB_TRANSFORM_SKIP) {
            json_object_set_new(o, "result", json_string("filtered"));
        } else if (rc != 0) {
            snprintf(reason, sizeof reason, "transform: %s", why);
            json_object_set_new(o, "result", json_string("dead-letter"));
            json_object_set_new(o, "reason", json_string(reason));
        } else {
            json_object_set_new(o, "result", json_string("delivered"));
            if (count == 1) {
                sb_admin__message_fields(o, out[0]);
            } else {
                /* a script made several: each is delivered */
                json_t *list = json_array();
                for (size_t i = 0; i < count; i++)
                    json_array_append_new(list, sb_admin__message_fields(json_object(), out[i]));
                json_object_set_new(o, "messages", list);
            }
        }
        for (size_t i = 0; i < count; i++)
            sb_message_unref(out[i]);
        sb_free(out);
    }
    return res;
oom:
    json_decref(res);
    sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    return NULL;
}
