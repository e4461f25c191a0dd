/*
 * Broker lifecycle: open the store and load what it holds, turn the config
 * into queues, adapters and sink bindings, run the loop, reload, and stop in
 * order (adapters first, then in-flight commits, then the store).
 */
#include "config/adapter_keys.h"
#include "service/agent_host.h"
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/http.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/republish.h"
#include "service/topic.h"
#include "service/transform.h"

#include <inttypes.h>
#include <jansson.h>

#include <stdio.h>
#include <string.h>

#include "service/auth.h"

/* The housekeeping timer's period: expiry, $SYS values, retired bindings. */
#define SB_HOUSEKEEPING_MS 1000

void sb_sub_settings_default(sb_sub_settings *s)
{
    s->durability = SB_DURABILITY_FSYNC;
    s->max_attempts = 10;
    s->lease_ms = 30000;
    s->ttl_ms = 0;
    s->max_depth = 0;
    s->overflow = SB_OVERFLOW_REJECT;
    s->transient = 0;
    s->expire_ms = 0;
}

void sb_broker_set_service(sb_broker *b, int service)
{
    b->service = service;
}

int sb_broker_is_service(const sb_broker *b)
{
    return b->service;
}

int sb_broker_hosts(const sb_broker *b, const sb_adapter_config *cfg)
{
    sb_desktop_host where = b->cfg->broker.desktop;
    if (b->remote != NULL)
        return 1; /* an agent hosts what it was given */
    /* the service's session 0 has no desktop: never there */
    if (where == SB_DESKTOP_AUTO || b->service)
        where = b->service ? SB_DESKTOP_AGENT : SB_DESKTOP_IN_PROCESS;
    if (where != SB_DESKTOP_AGENT)
        return 1;
    for (size_t i = 0; i < b->cfg->broker.agent_types_count; i++)
        if (strcmp(b->cfg->broker.agent_types[i], cfg->type) == 0)
            return 0;
    return !sb_adapter_is_desktop(cfg);
}

uv_loop_t *sb_broker_loop(sb_broker *b)
{
    return &b->loop;
}

const sb_config *sb_broker_get_config(sb_broker *b)
{
    return b->cfg;
}

static void on_wakeup(uv_async_t *h);
static void on_housekeeping(uv_timer_t *t);

int sb_broker_new(sb_broker **out, sb_config *cfg, sb_error *err)
{
    sb_broker *b = sb_calloc(1, sizeof(*b));
    *out = NULL;
    if (b == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    if (uv_loop_init(&b->loop) != 0) {
        sb_free(b);
        return sb_error_set(err, SB_EIO, 0, "cannot create the event loop");
    }
    b->cfg = cfg;
    uv_mutex_init(&b->request_lock);
    uv_async_init(&b->loop, &b->wakeup, on_wakeup);
    b->wakeup.data = b;
    uv_idle_init(&b->loop, &b->flush_idle);
    b->flush_idle.data = b;
    uv_timer_init(&b->loop, &b->housekeeping);
    b->housekeeping.data = b;
    uv_timer_init(&b->loop, &b->expiry_timer);
    b->expiry_timer.data = b;
    /* enough for the publishes and deliveries of a few loop turns */
    sb_pool_init(&b->entry_pool, sizeof(sb_entry), 1024);
    sb_pool_init(&b->delivery_pool, sizeof(sb_delivery), 1024);
    sb_pool_init(&b->pending_pool, sizeof(sb_pending), 1024);
    sb_pool_init(&b->op_pool, sizeof(sb_store_op), 256);
    *out = b;
    return 0;
}

sb_entry *sb_broker__entry_get(sb_broker *b)
{
    return sb_pool_get(&b->entry_pool);
}

void sb_broker__entry_put(sb_broker *b, sb_entry *e)
{
    sb_pool_put(&b->entry_pool, e);
}

sb_delivery *sb_broker__delivery_get(sb_broker *b)
{
    return sb_pool_get(&b->delivery_pool);
}

void sb_broker__delivery_put(sb_broker *b, sb_delivery *d)
{
    sb_pool_put(&b->delivery_pool, d);
}

void sb_broker__pools_drain(sb_broker *b)
{
    sb_pool_drain(&b->entry_pool);
    sb_pool_drain(&b->delivery_pool);
    sb_pool_drain(&b->pending_pool);
    sb_pool_drain(&b->op_pool);
}

/* ---- queues ---- */

static char *settings_json(const sb_queue *q)
{
    static const char *const classes[] = {"fsync", "batched", "memory"};
    json_t *o;
    char *s;
    if (q->from_config)
        return sb_strdup("{\"kind\":\"route\"}");
    o = json_pack("{s:s, s:s, s:i, s:I, s:I, s:I, s:s, s:I}", "kind", "client", "durability",
                  classes[q->durability], "max_attempts", q->max_attempts, "lease_ms",
                  (json_int_t)q->lease_ms, "ttl_ms", (json_int_t)q->ttl_ms, "max_depth",
                  (json_int_t)q->max_depth, "overflow",
                  q->overflow == SB_OVERFLOW_DROP_OLDEST ? "drop-oldest" : "reject", "expire_ms",
                  (json_int_t)q->expire_ms);
    if (o == NULL)
        return NULL;
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void on_queue_put_done(sb_store_op *op, void *ctx)
{
    sb_queue *q = ctx;
    if (op->status != 0)
        sb_errlog(q->name, "cannot save the subscription definition: %s (retried at next start)",
                  sb_strerror(op->status));
    sb_free((char *)op->u.queue_put.name);
    sb_free((sb_sub_filter *)op->u.queue_put.filters);
    free((char *)op->u.queue_put.settings); /* from jansson */
    sb_free((char *)op->u.queue_put.protocol);
    sb_free((char *)op->u.queue_put.owner);
    sb_free(op);
}

/* sb_strdup of s, which may be NULL; sets *oom when a copy failed. */
static char *strdup_null(const char *s, int *oom)
{
    char *copy = s != NULL ? sb_strdup(s) : NULL;
    if (s != NULL && copy == NULL)
        *oom = 1;
    return copy;
}

int sb_broker__put_queue(sb_broker *b, sb_queue *q)
{
    sb_store_op *op;
    char *settings;
    int oom = 0;
    if (q->transient)
        return 0;
    op = sb_calloc(1, sizeof(*op));
    settings = settings_json(q);
    if (op == NULL || settings == NULL) {
        sb_free(op);
        free(settings);
        return SB_ENOMEM;
    }
    op->type = SB_OP_QUEUE_PUT;
    op->sync = 1;
    /* copies: the store thread writes them while q may change */
    op->u.queue_put.id = q->id;
    op->u.queue_put.name = strdup_null(q->name, &oom);
    op->u.queue_put.filters = sb_sub_filters_copy(q->filters, q->filter_count, &oom);
    op->u.queue_put.filter_count = q->filter_count;
    op->u.queue_put.settings = settings;
    op->u.queue_put.protocol = strdup_null(q->protocol, &oom);
    op->u.queue_put.owner = strdup_null(q->owner, &oom);
    op->cb = on_queue_put_done;
    op->ctx = q;
    if (oom || sb_store_submit(b->store, op) != 0) {
        op->status = SB_ENOMEM;
        on_queue_put_done(op, q);
        return SB_ENOMEM;
    }
    return 0;
}

/* The key of a queue id in queues_by_id. */
static void id_key(char out[12], uint32_t id)
{
    snprintf(out, 12, "%" PRIx32, id);
}

sb_queue *sb_broker__queue_by_id(sb_broker *b, uint32_t id)
{
    char key[12];
    id_key(key, id);
    return sb_map_get(&b->queues_by_id, key);
}

sb_queue *sb_broker__add_queue(sb_broker *b, uint32_t id, const char *name,
                               const sb_sub_filter *filters, size_t count, sb_error *err)
{
    sb_queue *q = sb_queue__new(b, id, name, filters, count);
    char key[12];
    id_key(key, id);
    if (q == NULL || sb_map_put(&b->queues_by_name, name, q, NULL) != 0) {
        if (q != NULL)
            sb_queue__close(q);
        goto oom;
    }
    if (sb_map_put(&b->queues_by_id, key, q, NULL) != 0) {
        sb_map_remove(&b->queues_by_name, name);
        sb_queue__close(q);
        goto oom;
    }
    if (sb_subindex_add_all(&b->routing, q->filters, q->filter_count, q) != 0) {
        sb_map_remove(&b->queues_by_name, name);
        sb_map_remove(&b->queues_by_id, key);
        sb_queue__close(q);
        goto oom;
    }
    q->seq = ++b->queue_seq;
    q->next = b->queues;
    if (b->queues != NULL)
        b->queues->prev = q;
    b->queues = q;
    sb_broker__queue_changed(q); /* its $SYS values were never published */
    return q;
oom:
    sb_error_set(err, SB_ENOMEM, 0, "out of memory creating queue %s", name);
    return NULL;
}

/* How many of filters are indexed already when they replace q's: an MQTT
 * SUBSCRIBE appends a filter, and then only the new ones are indexed; the
 * same filters (their QoS changed) need nothing; otherwise all of them. */
static size_t filters_kept(const sb_queue *q, const sb_sub_filter *filters, size_t count)
{
    if (count < q->filter_count ||
        !sb_sub_filters_same(q->filters, q->filter_count, filters, q->filter_count))
        return 0;
    return q->filter_count;
}

int sb_broker__filters_begin(sb_broker *b, sb_queue *q, const sb_sub_filter *filters, size_t count,
                             sb_filter_change *change)
{
    size_t from = filters_kept(q, filters, count);
    int oom = 0;
    sb_sub_filter *copy = sb_sub_filters_copy(filters, count, &oom);
    if (oom ||
        (count > from && sb_subindex_add_all(&b->routing, copy + from, count - from, q) != 0)) {
        sb_free(copy);
        return SB_ENOMEM;
    }
    change->old = q->filters;
    change->old_count = q->filter_count;
    change->indexed_from = from;
    q->filters = copy;
    q->filter_count = count;
    return 0;
}

void sb_broker__filters_end(sb_broker *b, sb_queue *q, sb_filter_change *change, int commit)
{
    if (commit) {
        if (change->indexed_from == 0) /* replaced, not appended to */
            sb_subindex_remove_all(&b->routing, change->old, change->old_count, q);
        sb_free(change->old);
    } else {
        /* the index counts each (filter, queue) pair: this leaves old's */
        if (q->filter_count > change->indexed_from)
            sb_subindex_remove_all(&b->routing, q->filters + change->indexed_from,
                                   q->filter_count - change->indexed_from, q);
        sb_free(q->filters);
        q->filters = change->old;
        q->filter_count = change->old_count;
    }
    change->old = NULL;
    change->old_count = 0;
}

int sb_broker__set_filters(sb_broker *b, sb_queue *q, const sb_sub_filter *filters, size_t count)
{
    sb_filter_change change;
    int rc = sb_broker__filters_begin(b, q, filters, count, &change);
    if (rc == 0)
        sb_broker__filters_end(b, q, &change, 1);
    return rc;
}

static void sys_clean(sb_broker *b, sb_queue *q);

/* Takes q out of the broker's list and indexes (not out of the ack flush
 * list: see remove_queue). */
static void unlink_queue(sb_broker *b, sb_queue *q)
{
    char key[12];
    id_key(key, q->id);
    sb_map_remove(&b->queues_by_name, q->name);
    sb_map_remove(&b->queues_by_id, key);
    sb_subindex_remove_all(&b->routing, q->filters, q->filter_count, q);
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        b->queues = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    q->next = q->prev = NULL;
    sys_clean(b, q);
    q->live = 0;
}

/* Drops the retained $SYS values of a deleted queue (memory only). */
static void forget_sys_values(sb_broker *b, const sb_queue *q)
{
    static const char *const names[] = {"depth", "dead"};
    char topic[300];
    if (strlen(q->name) > 200)
        return;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(topic, sizeof(topic), "$SYS/queues/%s/%s", q->name, names[i]);
        sb_broker__forget_retained(b, topic);
    }
}

static void remove_queue(sb_broker *b, sb_queue *q)
{
    sb_broker__expiry_remove(b, q);
    unlink_queue(b, q);
    forget_sys_values(b, q);
    if (q->ack_queued) {
        sb_queue **p;
        for (p = &b->ack_flush; *p != NULL; p = &(*p)->ack_next)
            if (*p == q) {
                *p = q->ack_next;
                break;
            }
    }
    if (q->pending == 0)
        sb_queue__close(q);
    else
        sb_queue__clear(q); /* closed by the last pending completion */
}

/* ---- lists of queues that need the housekeeping timer ---- */

void sb_broker__queue_changed(sb_queue *q)
{
    sb_broker *b = q->broker;
    if (q->sys_dirty || !q->live)
        return;
    q->sys_dirty = 1;
    q->sys_prev = NULL;
    q->sys_next = b->sys_dirty;
    if (b->sys_dirty != NULL)
        b->sys_dirty->sys_prev = q;
    b->sys_dirty = q;
}

static void sys_clean(sb_broker *b, sb_queue *q)
{
    if (!q->sys_dirty)
        return;
    if (q->sys_prev != NULL)
        q->sys_prev->sys_next = q->sys_next;
    else
        b->sys_dirty = q->sys_next;
    if (q->sys_next != NULL)
        q->sys_next->sys_prev = q->sys_prev;
    q->sys_next = q->sys_prev = NULL;
    q->sys_dirty = 0;
}

void sb_broker__watch_expiry(sb_queue *q, int on)
{
    sb_broker *b = q->broker;
    int listed = q->exp_prev != NULL || b->expiring == q;
    if (on && !listed && q->live) {
        q->exp_prev = NULL;
        q->exp_next = b->expiring;
        if (b->expiring != NULL)
            b->expiring->exp_prev = q;
        b->expiring = q;
    } else if (!on && listed) {
        if (q->exp_prev != NULL)
            q->exp_prev->exp_next = q->exp_next;
        else
            b->expiring = q->exp_next;
        if (q->exp_next != NULL)
            q->exp_next->exp_prev = q->exp_prev;
        q->exp_next = q->exp_prev = NULL;
    }
}

static int load_queue(void *ctx, const sb_store_queue *sq)
{
    sb_broker *b = ctx;
    json_error_t jerr;
    json_t *o = sq->settings != NULL ? json_loads(sq->settings, 0, &jerr) : NULL;
    const char *kind = o != NULL ? json_string_value(json_object_get(o, "kind")) : NULL;
    sb_queue *q = sb_broker__add_queue(b, sq->id, sq->name, sq->filters, sq->filter_count, NULL);
    int oom = 0;
    if (q == NULL) {
        json_decref(o);
        return SB_ENOMEM;
    }
    if (kind != NULL && strcmp(kind, "client") == 0) {
        sb_sub_settings s;
        const char *dur = json_string_value(json_object_get(o, "durability"));
        sb_sub_settings_default(&s);
        if (dur != NULL)
            s.durability = strcmp(dur, "memory") == 0    ? SB_DURABILITY_MEMORY
                           : strcmp(dur, "batched") == 0 ? SB_DURABILITY_BATCHED
                                                         : SB_DURABILITY_FSYNC;
        if (json_integer_value(json_object_get(o, "max_attempts")) > 0)
            s.max_attempts = (int)json_integer_value(json_object_get(o, "max_attempts"));
        if (json_integer_value(json_object_get(o, "lease_ms")) > 0)
            s.lease_ms = json_integer_value(json_object_get(o, "lease_ms"));
        s.ttl_ms = json_integer_value(json_object_get(o, "ttl_ms"));
        s.max_depth = json_integer_value(json_object_get(o, "max_depth"));
        if (json_string_value(json_object_get(o, "overflow")) != NULL &&
            strcmp(json_string_value(json_object_get(o, "overflow")), "drop-oldest") == 0)
            s.overflow = SB_OVERFLOW_DROP_OLDEST;
        s.expire_ms = json_integer_value(json_object_get(o, "expire_ms"));
        sb_queue__apply_settings(q, &s);
        q->protocol = strdup_null(sq->protocol, &oom);
        q->owner = strdup_null(sq->owner, &oom);
        if (oom) {
            json_decref(o);
            return SB_ENOMEM;
        }
    } else {
        q->from_config = 1; /* bound to its route in apply_routes, else orphaned */
    }
    json_decref(o);
    return 0;
}

typedef struct load_ctx {
    sb_broker *b;
    uint64_t count;
} load_ctx;

/* A queue's stored entries: counted, read in windows later (paging.c). */
static int load_count(void *ctx, uint32_t queue_id, int64_t count, int64_t bytes)
{
    load_ctx *l = ctx;
    sb_queue *q = sb_broker__queue_by_id(l->b, queue_id);
    if (q == NULL)
        return 0; /* entries of no queue: never delivered, as before */
    q->disk_depth = count;
    q->disk_bytes = bytes;
    q->paged_to = 0;
    q->disk_expiring = 1; /* unknown until looked at */
    sb_queue__watch_expiry(q);
    l->count += (uint64_t)count;
    return 0;
}

/* A route's destinations: its adapters, then the republisher if it
 * republishes; a route with neither is one queue clients subscribe to. */
size_t sb_broker__route_dests(const sb_route_config *r)
{
    size_t n = r->to_count + (r->republish ? 1 : 0);
    return n == 0 ? 1 : n;
}

/* Queue name for a route's destination. */
void sb_broker__route_queue_name(char *out, size_t n, const sb_route_config *r, size_t dest)
{
    if (dest == r->to_count && r->republish)
        snprintf(out, n, "%s:%s", r->name, SB_REPUBLISH_NAME);
    else if (r->to_count == 0)
        snprintf(out, n, "%s", r->name);
    else
        snprintf(out, n, "%s:%s", r->name, r->to[dest]);
}

/* A route's filters (the queue matches any of them), pointing into r. */
static sb_sub_filter *route_filters(const sb_route_config *r)
{
    sb_sub_filter *f = sb_calloc(r->from_count > 0 ? r->from_count : 1, sizeof(*f));
    if (f == NULL)
        return NULL;
    for (size_t i = 0; i < r->from_count; i++) {
        f[i].filter = r->from[i];
        f[i].qos = SB_QOS_NONE;
    }
    return f;
}

/* ---- sink bindings ---- */

static int binding_deliver(sb_consumer *c, sb_delivery *d)
{
    sb_sink_binding *bind = c->ctx;
    if (bind->retired)
        return SB_EBUSY; /* no new deliveries; it goes once the last one is done */
    return bind->adapter->type->deliver(bind->adapter, d);
}

int sb_broker_is_destination(sb_broker *b, const sb_adapter *a)
{
    for (const sb_sink_binding *s = b->bindings; s != NULL; s = s->next)
        if (s->adapter == a && !s->retired)
            return 1;
    return 0;
}

void sb_broker__adapter_ready(sb_broker *b, sb_adapter *a)
{
    for (sb_sink_binding *s = b->bindings; s != NULL; s = s->next)
        if (s->adapter == a)
            sb_consumer_ready(&s->consumer);
}

/* Removes the bindings of `only` (every adapter if NULL). Detaching frees the
 * consumer's outstanding deliveries, which a sink adapter still holding them
 * (in a write, say) would complete later: so this is for adapters that have
 * stopped (their deliveries are done), and `retired` bindings whose last
 * delivery is done (`idle_only`). */
static void unbind_all(sb_broker *b, sb_adapter *only, int idle_only)
{
    sb_sink_binding **p = &b->bindings;
    while (*p != NULL) {
        sb_sink_binding *s = *p;
        if ((only != NULL && s->adapter != only) ||
            (idle_only && (!s->retired || s->consumer.inflight > 0))) {
            p = &s->next;
            continue;
        }
        *p = s->next;
        if (s->consumer.queue != NULL || s->consumer.remote != NULL)
            sb_broker_detach(b, &s->consumer, 0);
        sb_free(s->queue_name);
        sb_free(s);
    }
}

static sb_adapter *find_adapter(sb_broker *b, const char *name)
{
    for (sb_adapter *a = b->adapters; a != NULL; a = a->next)
        if (strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

static int bind_sink(sb_broker *b, sb_adapter *a, const char *queue_name, sb_error *err)
{
    sb_sink_binding *s = sb_calloc(1, sizeof(*s));
    if (s == NULL || (s->queue_name = sb_strdup(queue_name)) == NULL) {
        sb_free(s);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    s->adapter = a;
    s->wanted = 1;
    s->consumer.deliver = binding_deliver;
    s->consumer.ctx = s;
    s->consumer.name = a->name;
    s->consumer.window = a->cfg->inflight > 0 ? a->cfg->inflight : 64;
    s->next = b->bindings;
    b->bindings = s;
    return sb_broker_attach(b, queue_name, &s->consumer, err);
}

/* Checks what the config pass cannot: (with this_platform) every type has
 * an implementation here, the agent types exist, the auth files load. */
int sb_broker_check_config(const sb_config *cfg, int this_platform, sb_error *err)
{
    for (size_t i = 0; i < cfg->route_count; i++) {
        const sb_route_config *r = &cfg->routes[i];
        for (size_t f = 0; f < r->from_count; f++)
            if (strchr(r->from[f], '\n') != NULL)
                return sb_error_set(err, SB_ECONFIG, 0,
                                    "%s:%d:%d: routes[%zu].from: filter contains a newline",
                                    cfg->path, r->pos.line, r->pos.col, i);
        /* whether each destination can take deliveries is the config
         * pass's (the types' `destination` hooks) */
    }
    for (size_t i = 0; i < cfg->adapter_count && this_platform; i++) {
        const sb_adapter_type *type = sb_adapter_find(cfg->adapters[i].type);
        if (type == NULL)
            return sb_error_set(
                err, SB_ECONFIG, 0,
                "%s:%d:%d: adapters[%zu].type: %s is not available on this platform", cfg->path,
                cfg->adapters[i].pos.line, cfg->adapters[i].pos.col, i, cfg->adapters[i].type);
    }
    for (size_t i = 0; i < cfg->broker.agent_types_count && this_platform; i++)
        if (sb_adapter_find(cfg->broker.agent_types[i]) == NULL)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "%s: broker.agent.types: %s is not an adapter type of this "
                                "platform",
                                cfg->path, cfg->broker.agent_types[i]);
    if (cfg->broker.agent_endpoint != NULL &&
        strstr(cfg->broker.agent_endpoint, "{session}") == NULL)
        return sb_error_set(err, SB_ECONFIG, 0,
                            "%s: broker.agent.endpoint: must contain {session} (one endpoint per "
                            "Windows session)",
                            cfg->path);
    /* The password and ACL files are part of the configuration: their
     * errors are reported here too (missing ones only by `run`, as a config
     * may be checked away from the machine that has them). */
    if (cfg->broker.auth_password_file != NULL || cfg->broker.auth_acl_file != NULL) {
        sb_auth *a;
        int rc = sb_auth_load(&a, cfg->broker.auth_password_file, cfg->broker.auth_acl_file, err);
        if (rc == SB_ENOTFOUND && !this_platform)
            rc = 0;
        else if (rc != 0)
            return rc == SB_ENOMEM ? rc : SB_ECONFIG;
        sb_auth_free(a);
    }
    return 0;
}

int sb_broker__route_transform(sb_transform **out, const sb_route_config *r, size_t dest)
{
    const sb_tnode *specs[2] = {r->transform, NULL};
    int rc;
    if (r->to_transform != NULL && dest < r->to_count)
        specs[1] = r->to_transform[dest];
    rc = sb_transform_compile(out, specs, 2, (const char *const *)r->from, r->from_count, NULL,
                              NULL);
    if (rc == SB_ECONFIG) /* the config pass refused it: cannot be here */
        sb_errlog(NULL, "route %s: its transform does not compile", r->name);
    return rc == 0 ? 0 : SB_ENOMEM;
}

/* Gives the queue of route r's destination d its transform. 0 or
 * SB_ENOMEM. */
static int set_route_transform(sb_queue *q, const sb_route_config *r, size_t d)
{
    sb_transform *t = NULL;
    if (sb_broker__route_transform(&t, r, d) != 0)
        return SB_ENOMEM;
    sb_queue__set_transform(q, t);
    return 0;
}

/* Creates/updates the queues of cfg's routes; orphans route queues no longer
 * declared. */
static int apply_routes(sb_broker *b, const sb_config *cfg, sb_error *err)
{
    char name[512];
    for (sb_queue *q = b->queues; q != NULL; q = q->next)
        if (q->from_config)
            q->route = NULL;
    for (size_t i = 0; i < cfg->route_count; i++) {
        const sb_route_config *r = &cfg->routes[i];
        size_t dests = sb_broker__route_dests(r);
        sb_sub_filter *filters = route_filters(r);
        if (filters == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        for (size_t d = 0; d < dests; d++) {
            sb_queue *q;
            int created = 0;
            sb_broker__route_queue_name(name, sizeof(name), r, d);
            q = sb_broker__find_queue(b, name);
            if (q == NULL) {
                q = sb_broker__add_queue(b, ++b->last_queue_id, name, filters, r->from_count, err);
                if (q == NULL) {
                    sb_free(filters);
                    return err != NULL ? err->code : SB_ENOMEM;
                }
                created = 1;
                q->from_config = 1;
            }
            if (!q->from_config)
                sb_warn(q->name, "client subscription %s is now declared by route %s", name,
                        r->name);
            q->from_config = 1;
            sb_broker__expiry_remove(b, q);
            sb_queue__apply_route(q, r);
            if (set_route_transform(q, r, d) != 0) {
                sb_free(filters);
                return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
            }
            /* a queue that was a protocol session is not one any more */
            if (created || q->protocol != NULL ||
                !sb_sub_filters_same(q->filters, q->filter_count, filters, r->from_count)) {
                if (sb_broker__set_filters(b, q, filters, r->from_count) != 0)
                    sb_errlog(q->name, "out of memory changing the filters to those of route %s",
                              r->name);
                sb_free(q->protocol);
                sb_free(q->owner);
                q->protocol = q->owner = NULL;
                sb_broker__put_queue(b, q);
                if (created)
                    sb_broker__enqueue_retained(b, q, q->filters, q->filter_count);
            }
        }
        sb_free(filters);
    }
    for (sb_queue *q = b->queues; q != NULL; q = q->next)
        if (q->from_config && q->route == NULL && sb_queue__total_depth(q) > 0)
            sb_warn(q->name,
                    "no route declares this queue any more; its %lld messages are kept "
                    "(drain with sbctl sub %s, or delete it)",
                    (long long)sb_queue__total_depth(q), q->name);
    return 0;
}

static int bind_routes(sb_broker *b, const sb_config *cfg, sb_error *err)
{
    char name[512];
    for (size_t i = 0; i < cfg->route_count; i++) {
        const sb_route_config *r = &cfg->routes[i];
        for (size_t d = 0; d < r->to_count + (r->republish ? 1 : 0); d++) {
            sb_adapter *a = d < r->to_count ? find_adapter(b, r->to[d]) : b->republisher;
            sb_sink_binding *s;
            int rc;
            if (a == NULL)
                continue; /* failed to start: logged */
            sb_broker__route_queue_name(name, sizeof(name), r, d);
            /* Kept across a reload: its deliveries in flight stay valid. */
            for (s = b->bindings; s != NULL; s = s->next)
                if (s->adapter == a && strcmp(s->queue_name, name) == 0)
                    break;
            if (s != NULL) {
                s->wanted = 1;
                if (s->retired) {
                    s->retired = 0;
                    sb_consumer_ready(&s->consumer);
                }
                continue;
            }
            if ((rc = bind_sink(b, a, name, err)) != 0)
                return rc;
        }
    }
    return 0;
}

static int start_adapter(sb_broker *b, const sb_adapter_config *cfg, sb_adapter **out,
                         sb_error *err)
{
    sb_adapter *a;
    int rc = sb_adapter_create(&a, b, &b->loop, cfg, err);
    if (rc != 0)
        return rc;
    rc = a->type->start(a, err);
    if (rc != 0) {
        sb_adapter_close(a, NULL);
        return rc;
    }
    a->next = b->adapters;
    b->adapters = a;
    if (out != NULL)
        *out = a;
    return 0;
}

static void on_adapter_closed(sb_adapter *a)
{
    /* Stopped: the deliveries it held are done; now its bindings can go. */
    unbind_all(a->broker, a, 0);
    a->broker->adapters_closing--;
}

static void close_adapter(sb_broker *b, sb_adapter *a)
{
    sb_adapter **p;
    for (p = &b->adapters; *p != NULL; p = &(*p)->next)
        if (*p == a) {
            *p = a->next;
            break;
        }
    b->adapters_closing++;
    sb_adapter_close(a, on_adapter_closed);
}

static int start_admin(sb_broker *b, sb_error *err)
{
    sb_adapter_config cfg;
    char path[1024], *security = NULL;
    const char *ep = b->cfg->broker.admin_endpoint;
    int rc;

    if (ep != NULL && strcmp(ep, "off") == 0)
        return 0;
    if (ep == NULL || strcmp(ep, "default") == 0)
        sb_platform_default_admin_endpoint(path, sizeof(path), b->cfg->broker.data_dir);
    else
        snprintf(path, sizeof(path), "%s", ep);
    /* The admin endpoint bypasses ACLs: only who administers the machine
     * and the broker's own account, unless broker.admin.security says more. */
    if ((rc = sb_platform_admin_security(&security, b->cfg->broker.admin_security, err)) != 0)
        return rc;
    {
        /* sbctl may connect before it has a request (no idle_timeout), but
         * sends each one whole */
        const char *const keys[] = {"path",
                                    path,
                                    "protocol",
                                    "jsonl",
                                    "max_message",
                                    "16MiB",
                                    "max_connections",
                                    "64",
                                    "idle_timeout",
                                    "0",
                                    "frame_timeout",
                                    "30s",
                                    "security",
                                    security,
                                    NULL};
        rc = sb_adapter_config_build(&cfg, "admin", "pipe", keys, err);
    }
    sb_free(security);
    if (rc != 0)
        return rc;
    rc = start_adapter(b, &cfg, &b->admin, err);
    sb_adapter_config_free(&cfg);
    if (rc == 0) {
        /* The admin endpoint is not a config adapter: keep it off the list. */
        b->adapters = b->admin->next;
        b->admin->next = NULL;
        b->admin->trusted = 1;
    }
    return rc;
}

/* Loads broker.auth (NULL *out when neither file is set). */
static int load_auth(const sb_config *cfg, sb_auth **out, sb_error *err)
{
    int rc;
    *out = NULL;
    if (cfg->broker.auth_password_file == NULL && cfg->broker.auth_acl_file == NULL)
        return 0;
    rc = sb_auth_load(out, cfg->broker.auth_password_file, cfg->broker.auth_acl_file, err);
    if (rc != 0)
        return rc;
    if (cfg->broker.auth_password_file != NULL)
        sb_platform_warn_if_shared(cfg->broker.auth_password_file, "password file");
    sb_info(NULL, "auth: password file %s, ACL file %s",
            cfg->broker.auth_password_file != NULL ? cfg->broker.auth_password_file : "(none)",
            cfg->broker.auth_acl_file != NULL ? cfg->broker.auth_acl_file : "(none)");
    return 0;
}

/* A replaced sb_auth may still be read by a password check in flight. */
struct sb_auth_old {
    sb_auth *auth;
    struct sb_auth_old *next;
};

static void retire_auth(sb_broker *b)
{
    struct sb_auth_old *o;
    if (b->auth == NULL)
        return;
    o = sb_malloc(sizeof(*o));
    if (o == NULL) {
        sb_warn(NULL, "out of memory retiring the old auth files (kept in use)");
        return;
    }
    o->auth = b->auth;
    o->next = b->old_auth;
    b->old_auth = o;
    b->auth = NULL;
}

const struct sb_auth *sb_broker_auth(sb_broker *b)
{
    return b->auth;
}

int sb_broker_start(sb_broker *b, sb_error *err)
{
    sb_store_options so;
    char dbpath[1024];
    load_ctx lc = {b, 0};
    int rc;

    if ((rc = sb_broker_check_config(b->cfg, 1, err)) != 0)
        return rc;
    if ((rc = load_auth(b->cfg, &b->auth, err)) != 0)
        return rc;
    if ((rc = sb_platform_mkdir_p(b->cfg->broker.data_dir, err)) != 0)
        return rc;
    sb_platform_warn_if_shared(b->cfg->broker.data_dir, "data directory");
    snprintf(dbpath, sizeof(dbpath), "%s/switchboard.db", b->cfg->broker.data_dir);
    memset(&so, 0, sizeof(so));
    so.path = dbpath;
    so.commit_max_batch = b->cfg->broker.commit_max_batch;
    so.commit_max_delay_us = b->cfg->broker.commit_max_delay_us;
    so.max_db_bytes = b->cfg->broker.max_db_bytes;
    if ((rc = sb_store_open(&b->store, &so, err)) != 0)
        return rc;
    if ((rc = sb_store_max_ids(b->store, &b->last_msg_id, &b->last_queue_id, err)) != 0)
        goto fail;
    b->boot_msg_id = b->last_msg_id;
    if ((rc = sb_store_load_queues(b->store, load_queue, b, err)) != 0 ||
        (rc = sb_store_load_counts(b->store, load_count, &lc, err)) != 0 ||
        (rc = sb_store_load_retained(b->store, sb_broker__load_retained, b, err)) != 0 ||
        (rc = sb_store_load_dedup(b->store, sb_broker__load_dedup, b, err)) != 0)
        goto fail;
    if (lc.count > 0)
        sb_info("store",
                "recovered %llu queued messages from %s (read in windows as consumers take them)",
                (unsigned long long)lc.count, dbpath);
    if ((rc = sb_store_start(b->store, &b->loop, err)) != 0)
        goto fail;
    if ((rc = apply_routes(b, b->cfg, err)) != 0)
        goto fail;
    uv_update_time(&b->loop);
    for (sb_queue *q = b->queues; q != NULL; q = q->next)
        if (q->expire_ms > 0)
            sb_broker__expiry_update(b, q); /* the time away counts from now */
    for (size_t i = 0; i < b->cfg->adapter_count; i++)
        if (sb_broker_hosts(b, &b->cfg->adapters[i]) &&
            (rc = start_adapter(b, &b->cfg->adapters[i], NULL, err)) != 0)
            goto fail;
    if ((rc = start_admin(b, err)) != 0)
        goto fail;
    if ((rc = sb_republish_create(&b->republisher, b, &b->loop)) != 0) {
        sb_error_set(err, rc, 0, "out of memory");
        goto fail;
    }
    if (b->service && b->cfg->broker.desktop == SB_DESKTOP_IN_PROCESS)
        sb_warn(NULL, "broker.desktop: in-process does not apply to the service (session 0 has no "
                      "desktop): desktop adapters run in session agents");
    if ((rc = sb_agent_host_apply(b, err)) != 0)
        goto fail;
    if ((rc = bind_routes(b, b->cfg, err)) != 0)
        goto fail;
    b->started_ms = sb_now_ms(); /* before the listener, which shows the uptime */
    if ((rc = sb_http_start(&b->http, b, err)) != 0)
        goto fail;
    b->started = 1;
    sb_paging__start(b);
    uv_timer_start(&b->housekeeping, on_housekeeping, SB_HOUSEKEEPING_MS, SB_HOUSEKEEPING_MS);
    sb_info(NULL, "Switchboard %s ready: %zu adapters, %zu routes, data in %s", SB_VERSION_STRING,
            b->cfg->adapter_count, b->cfg->route_count, b->cfg->broker.data_dir);
    return 0;
fail:
    sb_broker_stop(b);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    return rc;
}

int sb_broker_start_remote(sb_broker *b, sb_remote *r, sb_config *cfg,
                           const sb_remote_binding *bindings, size_t count, sb_error *err)
{
    int rc;
    sb_config_free(b->cfg);
    b->cfg = cfg;
    b->remote = r;
    for (size_t i = 0; i < b->cfg->adapter_count; i++)
        if ((rc = start_adapter(b, &b->cfg->adapters[i], NULL, err)) != 0)
            goto fail;
    for (size_t i = 0; i < count; i++) {
        sb_adapter *a = find_adapter(b, bindings[i].adapter);
        if (a == NULL) {
            rc = sb_error_set(err, SB_ECONFIG, 0, "queue %s: no adapter %s here", bindings[i].queue,
                              bindings[i].adapter);
            goto fail;
        }
        if ((rc = bind_sink(b, a, bindings[i].queue, err)) != 0)
            goto fail;
    }
    b->started = 1;
    b->started_ms = sb_now_ms();
    return 0;
fail:
    sb_broker_stop(b);
    return rc;
}

/* ---- consumers ---- */

/* A client-created queue (settings NULL: defaults); NULL with err set. */
static sb_queue *new_client_queue(sb_broker *b, const char *name, const sb_sub_filter *filters,
                                  size_t count, const sb_sub_settings *settings, sb_error *err)
{
    sb_sub_settings defaults;
    sb_queue *q;
    if (name[0] == '\0' || strlen(name) > 200 || strchr(name, '\n') != NULL) {
        sb_error_set(err, SB_EINVAL, 0, "invalid subscription name");
        return NULL;
    }
    if (b->stopping) {
        sb_error_set(err, SB_ESHUTDOWN, 0, "broker is shutting down");
        return NULL;
    }
    if ((q = sb_broker__add_queue(b, ++b->last_queue_id, name, filters, count, err)) == NULL)
        return NULL;
    if (settings == NULL) {
        sb_sub_settings_default(&defaults);
        settings = &defaults;
    }
    sb_queue__apply_settings(q, settings);
    q->transient = settings->transient;
    sb_broker__expiry_update(b, q);
    return q;
}

/* Each filter is valid. */
static int filters_validate(const sb_sub_filter *filters, size_t count, sb_error *err)
{
    const char *why;
    for (size_t i = 0; i < count; i++) {
        const char *f = filters[i].filter;
        if (f == NULL)
            return sb_error_set(err, SB_EINVAL, 0, "filter %zu of %zu is missing", i + 1, count);
        if (sb_filter_validate(f, strlen(f), &why) != 0)
            return sb_error_set(err, SB_EINVAL, 0, "filter %.200s: %s", f, why);
    }
    return 0;
}

/* The filters of a subscription for a message, space-separated, cut short. */
static void filters_text(char *out, size_t n, const sb_sub_filter *filters, size_t count)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < count && len + 1 < n; i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", i > 0 ? " " : "", filters[i].filter);
}

static int subscribe_here(sb_broker *b, const char *name, const sb_sub_filter *filters,
                          size_t count, const sb_sub_settings *settings, sb_error *err);

int sb_broker_subscribe(sb_broker *b, const char *name, const char *filter,
                        const sb_sub_settings *settings, sb_error *err)
{
    sb_sub_filter f = {filter, SB_QOS_NONE};
    return sb_broker_subscribe_filters(b, name, filter != NULL ? &f : NULL, filter != NULL,
                                       settings, err);
}

int sb_broker_subscribe_filters(sb_broker *b, const char *name, const sb_sub_filter *filters,
                                size_t count, const sb_sub_settings *settings, sb_error *err)
{
    if (filters != NULL && count == 0)
        return sb_error_set(err, SB_EINVAL, 0, "subscription %s: no filter", name);
    if (b->remote != NULL) /* a session agent: the service has the queues */
        return b->remote->ops->sub_define(b->remote, name, filters, count, settings, NULL, 0, err);
    return subscribe_here(b, name, filters, count, settings, err);
}

static int subscribe_here(sb_broker *b, const char *name, const sb_sub_filter *filters,
                          size_t count, const sb_sub_settings *settings, sb_error *err)
{
    sb_queue *q = sb_broker__find_queue(b, name);
    sb_retained_batch retained;
    char have[300], want[300];
    int rc;

    if (q != NULL) {
        if (filters != NULL && !sb_sub_filters_same(filters, count, q->filters, q->filter_count)) {
            filters_text(have, sizeof(have), q->filters, q->filter_count);
            filters_text(want, sizeof(want), filters, count);
            return sb_error_set(err, SB_EEXIST, 0, "subscription %s exists with filter %s (not %s)",
                                name, have, want);
        }
        return 0;
    }
    if (filters == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s (give a filter to create it)",
                            name);
    if ((rc = filters_validate(filters, count, err)) != 0)
        return rc;
    if ((q = new_client_queue(b, name, filters, count, settings, err)) == NULL)
        return err->code;
    /* All or nothing: a subscription the caller was told failed must not
     * exist, nor come back after a restart. */
    if (sb_broker__retained_prepare(b, filters, count, &retained) != 0 ||
        sb_broker__put_queue(b, q) != 0) {
        sb_broker__retained_discard(&retained);
        remove_queue(b, q);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory creating subscription %s", name);
    }
    sb_broker__retained_queue(b, q, &retained);
    filters_text(want, sizeof(want), filters, count);
    sb_info(name, "created subscription with filter %s", want);
    return 0;
}

static int sub_define_here(sb_broker *b, const char *name, const sb_sub_def *def,
                           const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                           size_t retained_count, sb_error *err);

int sb_broker_sub_define(sb_broker *b, const char *name, const sb_sub_def *def,
                         const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                         size_t retained_count, sb_error *err)
{
    int rc;
    if (def == NULL || def->protocol == NULL || (def->filter_count > 0 && def->filters == NULL))
        return sb_error_set(err, SB_EINVAL, 0, "subscription %s: no protocol or no filters", name);
    if ((rc = filters_validate(def->filters, def->filter_count, err)) != 0 ||
        (rc = filters_validate(retained_for, retained_count, err)) != 0)
        return rc;
    if (b->remote == NULL)
        return sub_define_here(b, name, def, settings, retained_for, retained_count, err);
    /* a session agent: the service has the queues */
    return b->remote->ops->sub_define(b->remote, name, def->filters, def->filter_count, settings,
                                      retained_for, retained_count, err);
}

static int sub_define_here(sb_broker *b, const char *name, const sb_sub_def *def,
                           const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                           size_t retained_count, sb_error *err)
{
    sb_queue *q = sb_broker__find_queue(b, name);
    sb_retained_batch retained = {NULL, 0};
    sb_filter_change change;
    sb_sub_filter *both = NULL;
    char *protocol = NULL, *owner = NULL, *old_protocol, *old_owner;
    int created = 0, oom = 0;

    if (q == NULL) {
        if ((q = new_client_queue(b, name, NULL, 0, settings, err)) == NULL)
            return err->code;
        created = 1;
    } else if (q->from_config) {
        return sb_error_set(err, SB_EACCES, 0, "subscription %s is declared by a route", name);
    } else if (q->protocol == NULL) {
        /* created by sb_broker_subscribe (jsonl): not this protocol's */
        return sb_error_set(err, SB_EEXIST, 0, "subscription %s exists and is not a session", name);
    } else if (strcmp(q->protocol, def->protocol) != 0) {
        return sb_error_set(err, SB_EEXIST, 0, "subscription %s is a session of %s, not of %s",
                            name, q->protocol, def->protocol);
    }
    /* A new one gets the retained values of its filters too (each value
     * once, however many filters match it). */
    if (created && def->filter_count > 0) {
        size_t n = def->filter_count + retained_count;
        if ((both = sb_malloc(n * sizeof(*both))) == NULL)
            goto oom;
        memcpy(both, def->filters, def->filter_count * sizeof(*both));
        if (retained_count > 0)
            memcpy(both + def->filter_count, retained_for, retained_count * sizeof(*both));
        retained_for = both;
        retained_count = n;
    }
    /* All or nothing: on failure the subscription is as it was (or absent). */
    protocol = strdup_null(def->protocol, &oom);
    owner = strdup_null(def->owner, &oom);
    if (oom || sb_broker__retained_prepare(b, retained_for, retained_count, &retained) != 0)
        goto oom;
    if (sb_broker__filters_begin(b, q, def->filters, def->filter_count, &change) != 0)
        goto oom;
    old_protocol = q->protocol;
    old_owner = q->owner;
    q->protocol = protocol;
    q->owner = owner;
    if (sb_broker__put_queue(b, q) != 0) {
        sb_broker__filters_end(b, q, &change, 0);
        q->protocol = old_protocol;
        q->owner = old_owner;
        goto oom;
    }
    sb_broker__filters_end(b, q, &change, 1);
    sb_free(old_protocol);
    sb_free(old_owner);
    sb_free(both);
    sb_broker__retained_queue(b, q, &retained);
    return 0;
oom:
    sb_broker__retained_discard(&retained);
    sb_free(both);
    sb_free(protocol);
    sb_free(owner);
    if (created)
        remove_queue(b, q);
    return sb_error_set(err, SB_ENOMEM, 0, "out of memory defining subscription %s", name);
}

int sb_broker_sub_add_retained(sb_broker *b, const char *name, const char *filter, sb_error *err)
{
    sb_queue *q = b->remote == NULL ? sb_broker__find_queue(b, name) : NULL;
    sb_sub_filter f = {filter, SB_QOS_NONE};
    int rc;
    if (q == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s", name);
    if ((rc = filters_validate(&f, 1, err)) != 0)
        return rc;
    return sb_broker__enqueue_retained(b, q, &f, 1);
}

int sb_broker_sub_get(sb_broker *b, const char *name, sb_sub_def *out)
{
    sb_queue *q;
    memset(out, 0, sizeof(*out));
    if (b->remote != NULL)
        return b->remote->ops->sub_get(b->remote, name, out);
    if ((q = sb_broker__find_queue(b, name)) == NULL)
        return SB_ENOTFOUND;
    out->filters = q->filters;
    out->filter_count = q->filter_count;
    out->protocol = q->protocol;
    out->owner = q->owner;
    return 0;
}

/* ---- protocol state: keys and sessions ---- */

/* A key op's effect on the map of keys is decided by order, not by when
 * its commit completes: the store runs ops in the order submitted, so a
 * put whose completion comes after a later delete (or put) of its key must
 * change nothing. Each put takes a number from b->key_seq; a key with puts
 * in flight has a key_flight (b->key_flights) holding the number of the
 * last op on it (a delete takes one too), and a put's completion acts only
 * if that is its own. A publish's protocol key is such a put. A last put
 * that failed (only while stopping) leaves the key as the puts before it
 * since the last delete left it in the store. */
typedef struct key_flight {
    uint64_t last; /* the number of the last op on the key */
    uint64_t cut;  /* the number of the last delete */
    int stored;    /* a put numbered after cut committed */
    unsigned puts; /* in flight; the key_flight goes with the last */
} key_flight;

uint64_t sb_broker__key_put_begin(sb_broker *b, const char *key)
{
    key_flight *f = sb_map_get(&b->key_flights, key);
    if (f == NULL) {
        if ((f = sb_calloc(1, sizeof(*f))) == NULL)
            return 0;
        if (sb_map_put(&b->key_flights, key, f, NULL) != 0) {
            sb_free(f);
            return 0;
        }
    }
    f->puts++;
    return f->last = ++b->key_seq;
}

int sb_broker__key_put_end(sb_broker *b, const char *key, uint64_t seq, int ok, int *stored)
{
    key_flight *f;
    int last;
    *stored = ok;
    if (seq == 0)
        return 1; /* not numbered (out of memory at its put): it acts regardless */
    f = sb_map_get(&b->key_flights, key);
    if (ok && seq > f->cut)
        f->stored = 1;
    *stored = f->stored;
    last = f->last == seq;
    if (--f->puts == 0)
        sb_free(sb_map_remove(&b->key_flights, key));
    return last;
}

typedef struct key_op {
    sb_store_op op;
    sb_broker *b;
    char *key;
    sb_key_cb cb;
    void *ctx;
    uint64_t seq; /* sb_broker__key_put_begin */
} key_op;

int sb_broker__key_add(sb_broker *b, const char *key, int64_t expires_ms)
{
    int64_t *exp = sb_malloc(sizeof(*exp));
    void *old = NULL;
    if (exp == NULL || (expires_ms == 0 && sb_keyset_add(&b->key_index, key) != 0))
        goto nomem;
    *exp = expires_ms;
    if (sb_map_put(&b->dedup, key, exp, &old) != 0) {
        if (expires_ms == 0 && !sb_map_get(&b->dedup, key))
            sb_keyset_remove(&b->key_index, key);
        goto nomem;
    }
    sb_free(old);
    return 0;
nomem:
    sb_free(exp);
    return SB_ENOMEM;
}

static void key_remember(sb_broker *b, const char *key)
{
    if (sb_broker__key_add(b, key, 0) != 0)
        sb_errlog(NULL, "out of memory keeping protocol state %s", key);
}

static void supersede_prefixed(const char *key, void *value, void *ctx)
{
    void **state = ctx;
    sb_broker *b = state[0];
    const char *prefix = state[1];
    key_flight *f = value;
    if (strncmp(key, prefix, strlen(prefix)) == 0) {
        f->last = f->cut = ++b->key_seq;
        f->stored = 0;
    }
}

/* A delete of key (or of every key starting with it): puts in flight for
 * it are no longer the last op on their key. Walks the keys with puts in
 * flight for a prefix: few (they wait for their commit), and rare. */
static void key_supersede(sb_broker *b, const char *key, int prefix)
{
    key_flight *f;
    if (prefix) {
        void *state[2] = {b, (void *)key};
        sb_map_each(&b->key_flights, supersede_prefixed, state);
    } else if ((f = sb_map_get(&b->key_flights, key)) != NULL) {
        f->last = f->cut = ++b->key_seq;
        f->stored = 0;
    }
}

static void on_key_done(sb_store_op *op, void *ctx)
{
    key_op *k = ctx;
    int stored;
    if (op->type == SB_OP_KEY_PUT &&
        sb_broker__key_put_end(k->b, k->key, k->seq, op->status == 0, &stored)) {
        if (stored)
            key_remember(k->b, k->key);
        else
            sb_broker__key_forget(k->b, k->key); /* the store failed it (and those before) */
    }
    if (k->cb != NULL)
        k->cb(k->ctx, op->status);
    sb_free(k->key);
    sb_free(k);
}

static int key_submit(sb_broker *b, sb_store_op_type type, const char *key, int prefix,
                      sb_key_cb cb, void *ctx)
{
    key_op *k = sb_calloc(1, sizeof(*k));
    if (k == NULL || (k->key = sb_strdup(key)) == NULL) {
        sb_free(k);
        return SB_ENOMEM;
    }
    k->b = b;
    k->cb = cb;
    k->ctx = ctx;
    k->op.type = type;
    k->op.sync = type == SB_OP_KEY_PUT;
    k->op.cb = on_key_done;
    k->op.ctx = k;
    k->op.u.key.key = k->key;
    k->op.u.key.prefix = prefix;
    if (sb_store_submit(b->store, &k->op) != 0) {
        sb_free(k->key);
        sb_free(k);
        return SB_ESHUTDOWN;
    }
    /* (its completion runs on this thread, later) */
    if (type == SB_OP_KEY_PUT)
        k->seq = sb_broker__key_put_begin(b, key);
    return 0;
}

int sb_broker_key_put(sb_broker *b, const char *key, sb_key_cb cb, void *ctx)
{
    if (b->store == NULL)
        return SB_ESHUTDOWN; /* a session agent keeps no protocol state */
    return key_submit(b, SB_OP_KEY_PUT, key, 0, cb, ctx);
}

int sb_broker__key_put_known(sb_broker *b, const char *key)
{
    int rc;
    if (b->store == NULL)
        return SB_ESHUTDOWN;
    if ((rc = key_submit(b, SB_OP_KEY_PUT, key, 0, NULL, NULL)) == 0)
        key_remember(b, key);
    return rc;
}

int sb_broker_key_exists(sb_broker *b, const char *key)
{
    return sb_map_get(&b->dedup, key) != NULL;
}

void sb_broker__key_forget(sb_broker *b, const char *key)
{
    sb_keyset_remove(&b->key_index, key);
    sb_free(sb_map_remove(&b->dedup, key));
}

void sb_broker_key_each(sb_broker *b, const char *prefix, void (*cb)(const char *key, void *ctx),
                        void *ctx)
{
    sb_keyset_each(&b->key_index, prefix, cb, ctx);
}

typedef struct key_list {
    char **keys;
    size_t n;
} key_list;

static void collect_key(const char *key, void *ctx)
{
    key_list *l = ctx;
    char **k = sb_realloc(l->keys, (l->n + 1) * sizeof(*k));
    if (k == NULL)
        return;
    l->keys = k;
    if ((k[l->n] = sb_strdup(key)) != NULL)
        l->n++;
}

void sb_broker_key_delete(sb_broker *b, const char *key, int prefix)
{
    if (prefix) {
        key_list l = {NULL, 0};
        sb_broker_key_each(b, key, collect_key, &l); /* not removed while walked */
        for (size_t i = 0; i < l.n; i++) {
            sb_broker__key_forget(b, l.keys[i]);
            sb_free(l.keys[i]);
        }
        sb_free(l.keys);
    } else {
        sb_broker__key_forget(b, key);
    }
    key_supersede(b, key, prefix);
    if (key_submit(b, SB_OP_KEY_DELETE, key, prefix, NULL, NULL) != 0)
        sb_errlog(NULL, "cannot delete protocol state %s (out of memory or stopping)", key);
}

void *sb_broker_session_swap(sb_broker *b, const char *name, void *owner)
{
    void *old = NULL;
    if (owner == NULL)
        return sb_map_remove(&b->sessions, name);
    if (sb_map_put(&b->sessions, name, owner, &old) != 0)
        return NULL;
    return old;
}

int sb_broker_unsubscribe(sb_broker *b, const char *name, sb_error *err)
{
    sb_queue *q;
    sb_store_op *op;

    if (b->remote != NULL)
        return b->remote->ops->unsubscribe(b->remote, name, err);
    q = sb_broker__find_queue(b, name);
    if (q == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s", name);
    if (q->from_config && q->route != NULL)
        return sb_error_set(err, SB_EACCES, 0,
                            "subscription %s is declared by route %s in the config", name,
                            q->route->name);
    if (q->consumers != NULL)
        /* their deliveries would be freed under them */
        return sb_error_set(err, SB_EBUSY, 0,
                            "subscription %s is in use (by %s); delete it once its consumers "
                            "have detached",
                            name, q->consumers->name != NULL ? q->consumers->name : "a client");
    op = sb_calloc(1, sizeof(*op));
    if (op == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    op->type = SB_OP_QUEUE_DELETE;
    op->sync = 1;
    op->u.queue_delete.queue_id = q->id;
    op->cb = sb_broker__free_op;
    if (sb_store_submit(b->store, op) != 0)
        sb_free(op);
    sb_log(q->transient ? SB_LOG_DEBUG : SB_LOG_INFO, name,
           "deleted subscription (%lld messages discarded)", (long long)sb_queue__total_depth(q));
    remove_queue(b, q);
    return 0;
}

void sb_broker__free_op(sb_store_op *o, void *ctx)
{
    (void)ctx;
    sb_free(o);
}

int sb_broker_attach(sb_broker *b, const char *name, sb_consumer *c, sb_error *err)
{
    sb_queue *q;
    c->remote = NULL;
    if (b->remote != NULL) {
        if (c->window < 1)
            c->window = 1;
        c->queue = NULL;
        c->inflight = 0;
        c->busy = 0;
        c->outstanding = NULL;
        c->remote = b->remote;
        return b->remote->ops->attach(b->remote, name, c, err);
    }
    q = sb_broker__find_queue(b, name);
    if (q == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s", name);
    if (c->window < 1)
        c->window = 1;
    c->queue = q;
    c->inflight = 0;
    c->busy = 0;
    c->outstanding = NULL;
    c->next = q->consumers;
    q->consumers = c;
    sb_broker__expiry_update(b, q);
    sb_queue__dispatch(q);
    return 0;
}

void sb_broker_detach(sb_broker *b, sb_consumer *c, int failed)
{
    sb_queue *q = c->queue;
    if (c->remote != NULL) {
        sb_remote *r = c->remote;
        c->remote = NULL;
        r->ops->detach(r, c, failed);
        return;
    }
    if (q == NULL)
        return;
    sb_queue__detach_consumer(q, c, failed);
    if (q->consumers == NULL && q->expire_ms > 0)
        sb_broker__expiry_update(b, q);
}

/* ---- reload ---- */

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Where desktop adapters run, and the agents' endpoints, stay as they
 * started (moving running adapters between the broker and the agents is
 * a restart's job): a reload keeps old's, swapped into cfg so that each
 * config frees what it holds. */
static void keep_desktop_settings(sb_config *cfg, sb_config *old)
{
    sb_broker_config *n = &cfg->broker, *o = &old->broker, t;
    int same = n->desktop == o->desktop && same_str(n->agent_endpoint, o->agent_endpoint) &&
               n->agent_types_count == o->agent_types_count;
    for (size_t i = 0; same && i < n->agent_types_count; i++)
        same = strcmp(n->agent_types[i], o->agent_types[i]) == 0;
    if (same)
        return;
    sb_warn(NULL, "broker.desktop, broker.agent.endpoint and broker.agent.types changed: they "
                  "take effect after a restart");
    t = *n;
    n->desktop = o->desktop;
    n->agent_endpoint = o->agent_endpoint;
    n->agent_types = o->agent_types;
    n->agent_types_count = o->agent_types_count;
    o->desktop = t.desktop;
    o->agent_endpoint = t.agent_endpoint;
    o->agent_types = t.agent_types;
    o->agent_types_count = t.agent_types_count;
}

/* The types' word on each adapter cfg would start here (new, or changed):
 * SB_ECONFIG with err if one refuses (a running RPC endpoint cannot change,
 * for one). Before apply_reload, which cannot go back. */
static int check_reload_starts(sb_broker *b, const sb_config *cfg, sb_error *err)
{
    for (size_t i = 0; i < cfg->adapter_count; i++) {
        const sb_adapter_config *n = &cfg->adapters[i];
        const sb_adapter_type *type = sb_adapter_find(n->type);
        sb_adapter *a = find_adapter(b, n->name);
        if (type == NULL || type->reload_check == NULL || !sb_broker_hosts(b, n) ||
            (a != NULL && sb_adapter_config_equal(n, a->cfg)))
            continue;
        if (type->reload_check(n, err) != 0)
            return SB_ECONFIG;
    }
    return 0;
}

/* broker.http changed: the listener restarts with the new settings (its
 * clients reconnect; Prometheus retries). If it cannot start (the address
 * is taken), the error is logged and the next reload tries again. */
static void reload_http(sb_broker *b, sb_config *cfg, sb_config *old)
{
    const sb_broker_config *n = &cfg->broker, *o = &old->broker;
    sb_config *kept = b->cfg;
    sb_error err;
    int same = (n->http_listen == NULL) == (o->http_listen == NULL) &&
               (n->http_listen == NULL ||
                (strcmp(n->http_listen, o->http_listen) == 0 &&
                 n->http_anonymous == o->http_anonymous && n->http_per_queue == o->http_per_queue &&
                 n->http_max_connections == o->http_max_connections &&
                 n->http_timeout_ms == o->http_timeout_ms));
    if (same && (b->http != NULL) == (n->http_listen != NULL))
        return;
    sb_http_stop(b->http);
    b->http = NULL;
    b->cfg = cfg; /* sb_http_start reads b->cfg */
    if (sb_http_start(&b->http, b, &err) != 0)
        sb_errlog("http", "reload: %s", err.msg);
    b->cfg = kept;
}

/* Applies cfg, already checked, with its auth files loaded (auth may be
 * NULL): takes both. */
static int apply_reload(sb_broker *b, sb_config *cfg, sb_auth *auth, sb_error *err)
{
    sb_config *old = b->cfg;
    int rc;

    retire_auth(b);
    b->auth = auth;
    if (strcmp(cfg->broker.data_dir, old->broker.data_dir) != 0)
        sb_warn(NULL, "broker.data_dir changed to %s: takes effect after a restart",
                cfg->broker.data_dir);
    keep_desktop_settings(cfg, old);
    reload_http(b, cfg, old);
    sb_log_configure(cfg->broker.log_level, cfg->broker.log_stderr, cfg->broker.log_file);

    /* Adapters that changed or disappeared close (their bindings go when
     * they have stopped); new or changed ones start. */
    for (sb_adapter *a = b->adapters, *next; a != NULL; a = next) {
        const sb_adapter_config *n = sb_config_adapter(cfg, a->name);
        next = a->next;
        if (n == NULL || !sb_adapter_config_equal(n, a->cfg)) {
            sb_info(a->name, n == NULL ? "removed by reload" : "changed by reload: restarting");
            close_adapter(b, a);
        } else if (a->type->refresh != NULL) {
            a->type->refresh(a); /* files renewed under the same names */
        }
    }
    b->cfg = cfg;
    rc = apply_routes(b, cfg, err);
    for (size_t i = 0; i < cfg->adapter_count; i++) {
        sb_error aerr;
        if (find_adapter(b, cfg->adapters[i].name) != NULL ||
            !sb_broker_hosts(b, &cfg->adapters[i]))
            continue;
        if (start_adapter(b, &cfg->adapters[i], NULL, &aerr) != 0)
            sb_errlog(cfg->adapters[i].name, "cannot start after reload: %s", aerr.msg);
    }
    /* The bindings of kept adapters stay if still wanted; the others are
     * retired: no new deliveries, removed once their last one is done. */
    for (sb_sink_binding *s = b->bindings; s != NULL; s = s->next)
        s->wanted = 0;
    if (rc == 0)
        rc = bind_routes(b, cfg, err);
    for (sb_sink_binding *s = b->bindings; s != NULL; s = s->next)
        if (!s->wanted && !s->adapter->stopping)
            s->retired = 1;
    unbind_all(b, NULL, 1);
    {
        sb_error aerr;
        if (sb_agent_host_apply(b, &aerr) != 0)
            sb_errlog(NULL, "session agents: %s", aerr.msg);
    }
    sb_config_free(old);
    sb_info(NULL, "configuration reloaded from %s: %zu adapters, %zu routes", cfg->path,
            cfg->adapter_count, cfg->route_count);
    return rc;
}

int sb_broker_reload(sb_broker *b, sb_config *cfg, sb_error *err)
{
    sb_auth *auth;
    int rc;

    if ((rc = sb_broker_check_config(cfg, 1, err)) != 0 || (rc = load_auth(cfg, &auth, err)) != 0) {
        sb_config_free(cfg); /* refused: the old config keeps running */
        return rc == SB_ENOMEM ? rc : SB_ECONFIG;
    }
    if ((rc = check_reload_starts(b, cfg, err)) != 0) {
        sb_config_free(cfg);
        sb_auth_free(auth);
        return rc;
    }
    return apply_reload(b, cfg, auth, err);
}

/* A requested reload (SIGHUP, the SCM's PARAMCHANGE): the file is read,
 * parsed and checked, and the auth files loaded, on a worker thread, so
 * that a large file or a slow disk does not stall every client; the result
 * is applied on the loop. Requests arriving meanwhile make one more reload
 * once this one is done. */
typedef struct reload_job {
    uv_work_t req;
    sb_broker *b;
    char *path;
    sb_config *cfg;
    sb_auth *auth;
    int loaded;            /* the file parsed; else errs say why */
    sb_config_errors errs; /* the file's errors */
    sb_error err;          /* why the checks refused it (cfg is then NULL) */
} reload_job;

static void reload_prepare(uv_work_t *req)
{
    reload_job *j = req->data;
    if (sb_config_load(&j->cfg, j->path, &j->errs) != 0)
        return;
    j->loaded = 1;
    if (sb_broker_check_config(j->cfg, 1, &j->err) != 0 ||
        load_auth(j->cfg, &j->auth, &j->err) != 0) {
        sb_config_free(j->cfg);
        j->cfg = NULL;
    }
}

static void start_reload(sb_broker *b);

static void reload_done(uv_work_t *req, int status)
{
    reload_job *j = req->data;
    sb_broker *b = j->b;
    char line[1024];
    sb_error err;

    b->reloading = 0;
    if (status != 0 || b->stopping) {
        /* cancelled, or the broker is stopping: nothing to apply */
    } else if (!j->loaded) {
        for (size_t i = 0; i < j->errs.count; i++)
            sb_errlog("config", "%s", sb_config_error_format(&j->errs.items[i], line, sizeof line));
        sb_errlog("config", "reload rejected (%zu errors); the running configuration is kept",
                  j->errs.count);
    } else if (j->cfg == NULL || check_reload_starts(b, j->cfg, &j->err) != 0) {
        sb_errlog("config", "%s", j->err.msg);
        sb_errlog("config", "reload rejected; the running configuration is kept");
    } else {
        if (apply_reload(b, j->cfg, j->auth, &err) != 0)
            sb_errlog("config", "reload applied with errors: %s", err.msg);
        j->cfg = NULL; /* now owned by b */
        j->auth = NULL;
    }
    sb_config_free(j->cfg);
    sb_auth_free(j->auth);
    sb_config_errors_clear(&j->errs);
    sb_free(j->path);
    sb_free(j);
    if (b->reload_again && !b->stopping) {
        b->reload_again = 0;
        start_reload(b);
    }
}

static void start_reload(sb_broker *b)
{
    reload_job *j;
    if (b->reloading) {
        b->reload_again = 1;
        return;
    }
    j = sb_calloc(1, sizeof(*j));
    if (j == NULL || (j->path = sb_strdup(b->cfg->path)) == NULL) {
        sb_free(j);
        sb_errlog("config", "reload not started: out of memory");
        return;
    }
    j->b = b;
    j->req.data = j;
    sb_error_clear(&j->err);
    sb_info(NULL, "reloading configuration from %s", j->path);
    if (uv_queue_work(&b->loop, &j->req, reload_prepare, reload_done) != 0) {
        sb_errlog("config", "reload not started: cannot queue the work");
        sb_free(j->path);
        sb_free(j);
        return;
    }
    b->reloading = 1;
}

/* ---- stop ---- */

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish_stop(sb_broker *b)
{
    /* Adapters are closed: nothing new comes in. Let commits finish. */
    while (b->ack_flush != NULL) {
        sb_queue *q = b->ack_flush;
        b->ack_flush = q->ack_next;
        q->ack_queued = 0;
        sb_queue__flush_acks(q);
    }
    if (b->store != NULL) {
        sb_store_stop(b->store);
        sb_broker__drain_pending(b);
        sb_store_close(b->store);
        b->store = NULL;
    }
    b->idle_head = b->idle_tail = NULL;
    while (b->queues != NULL) {
        sb_queue *q = b->queues;
        unlink_queue(b, q);
        sb_queue__close(q);
    }
    uv_walk(&b->loop, close_walk, NULL);
}

int sb_broker_adapters_closed(sb_broker *b)
{
    return b->adapters == NULL && b->adapters_closing == 0;
}

static void on_stop_tick(uv_timer_t *t)
{
    sb_broker *b = t->data;
    if (b->adapters == NULL && b->adapters_closing == 0 && b->agents == NULL &&
        (b->remote == NULL || !b->remote->ops->busy(b->remote))) {
        uv_timer_stop(t);
        finish_stop(b);
    }
}

void sb_broker_stop(sb_broker *b)
{
    if (b->stopping)
        return;
    b->stopping = 1;
    if (b->started)
        sb_info(NULL, b->remote != NULL ? "stopping: closing adapters"
                                        : "stopping: closing adapters, finishing commits");
    /* Agents stop their adapters while the store can still commit what
     * those publish and acknowledge. */
    if (b->agents != NULL)
        sb_agent_host_stop(b->agents);
    sb_http_stop(b->http);
    b->http = NULL;
    while (b->adapters != NULL)
        close_adapter(b, b->adapters);
    if (b->admin != NULL) {
        b->adapters_closing++;
        sb_adapter_close(b->admin, on_adapter_closed);
        b->admin = NULL;
    }
    if (b->republisher != NULL) {
        b->adapters_closing++;
        sb_adapter_close(b->republisher, on_adapter_closed);
        b->republisher = NULL;
    }
    /* Adapter close callbacks run on the next loop turns; finish after them. */
    uv_timer_stop(&b->expiry_timer);
    uv_timer_stop(&b->housekeeping);
    uv_timer_start(&b->housekeeping, on_stop_tick, 0, 10);
}

void sb_broker_request_stop(sb_broker *b)
{
    uv_mutex_lock(&b->request_lock);
    b->stop_requested = 1;
    uv_mutex_unlock(&b->request_lock);
    uv_async_send(&b->wakeup);
}

void sb_broker_session_event(sb_broker *b, uint32_t session, int logon)
{
    uv_mutex_lock(&b->request_lock);
    if (b->session_event_count < SB_BROKER_SESSION_EVENTS) {
        b->session_events[b->session_event_count].session = session;
        b->session_events[b->session_event_count].logon = logon;
        b->session_event_count++;
    } else {
        b->session_events_lost = 1;
    }
    uv_mutex_unlock(&b->request_lock);
    uv_async_send(&b->wakeup);
}

void sb_broker_request_reload(sb_broker *b)
{
    uv_mutex_lock(&b->request_lock);
    b->reload_requested = 1;
    uv_mutex_unlock(&b->request_lock);
    uv_async_send(&b->wakeup);
}

static void on_wakeup(uv_async_t *h)
{
    sb_broker *b = h->data;
    int stop, reload, lost, n;
    struct sb_session_event events[SB_BROKER_SESSION_EVENTS];
    uv_mutex_lock(&b->request_lock);
    stop = b->stop_requested;
    reload = b->reload_requested;
    b->reload_requested = 0;
    n = b->session_event_count;
    memcpy(events, b->session_events, (size_t)n * sizeof(events[0]));
    lost = b->session_events_lost;
    b->session_event_count = 0;
    b->session_events_lost = 0;
    uv_mutex_unlock(&b->request_lock);
    for (int i = 0; i < n && b->agents != NULL && !b->stopping; i++)
        sb_agent_host_session_event(b->agents, events[i].session, events[i].logon);
    if (lost && b->agents != NULL && !b->stopping)
        sb_agent_host_rescan(b->agents);
    if (stop) {
        sb_broker_stop(b);
        return;
    }
    if (reload && !b->stopping)
        start_reload(b);
}

static void collect_expired_dedup(const char *key, void *value, void *ctx)
{
    void **state = ctx;
    int64_t now = *(int64_t *)state[0];
    char ***keys = state[1];
    size_t *n = state[2];
    int64_t exp = *(int64_t *)value;
    if (exp != 0 && exp <= now) {
        char **k = sb_realloc(*keys, (*n + 1) * sizeof(**keys));
        if (k == NULL)
            return;
        *keys = k;
        k[*n] = sb_strdup(key);
        if (k[*n] != NULL)
            (*n)++;
    }
}

/* Publishes one $SYS value (retained in memory, like MQTT brokers do). */
static void publish_sys(sb_broker *b, const char *topic, const char *fmt, long long value)
{
    char payload[64];
    int n = snprintf(payload, sizeof(payload), fmt, value);
    sb_message *m = sb_message_new(topic, payload, (size_t)n);
    sb_publish_opts opts = {"broker", 1, NULL};
    if (m == NULL)
        return;
    sb_broker_publish(b, m, &opts, NULL, NULL, NULL);
    sb_message_unref(m);
}

/* The broker's values every tick; a queue's values only when they changed
 * since they were last published, and only while a subscription can
 * receive them: an idle broker, or one whose queues nobody watches, does
 * nothing per queue. */
static void publish_sys_topics(sb_broker *b, int64_t now)
{
    char topic[300];
    sb_queue *q, *next;
    publish_sys(b, "$SYS/broker/uptime_ms", "%lld", (long long)(now - b->started_ms));
    publish_sys(b, "$SYS/broker/published", "%lld", (long long)b->published);
    publish_sys(b, "$SYS/broker/refused", "%lld", (long long)b->refused);
    if (b->sys_dirty == NULL || !sb_subindex_reaches(&b->routing, "$SYS/queues"))
        return; /* the changed ones stay listed until someone listens */
    /* The list is taken first: publishing may change a queue again (a
     * drop-oldest queue that receives these values), which lists it anew
     * for the next tick. */
    q = b->sys_dirty;
    b->sys_dirty = NULL;
    for (; q != NULL; q = next) {
        next = q->sys_next;
        q->sys_next = q->sys_prev = NULL;
        q->sys_dirty = 0;
        if (strlen(q->name) > 200)
            continue;
        snprintf(topic, sizeof(topic), "$SYS/queues/%s/depth", q->name);
        publish_sys(b, topic, "%lld", (long long)sb_queue__total_depth(q));
        snprintf(topic, sizeof(topic), "$SYS/queues/%s/dead", q->name);
        publish_sys(b, topic, "%lld", (long long)q->dead);
    }
}

static void on_housekeeping(uv_timer_t *t)
{
    sb_broker *b = t->data;
    int64_t now = sb_now_ms();
    unbind_all(b, NULL, 1); /* retired bindings whose last delivery is done */
    /* (half a tick early rather than a whole tick late) */
    if (b->cfg->broker.sys_interval_ms > 0 &&
        now - b->last_sys_ms + SB_HOUSEKEEPING_MS / 2 >= b->cfg->broker.sys_interval_ms) {
        b->last_sys_ms = now;
        publish_sys_topics(b, now);
    }
    for (sb_queue *q = b->expiring, *next; q != NULL; q = next) {
        next = q->exp_next; /* expiring may take q off the list, never another */
        sb_queue__expire(q, now);
    }
    sb_paging__housekeeping(b);
    if (now - b->last_prune_ms > 60000) {
        char **keys = NULL;
        size_t n = 0;
        void *state[3] = {&now, &keys, &n};
        sb_store_op *op;
        b->last_prune_ms = now;
        sb_map_each(&b->dedup, collect_expired_dedup, state);
        for (size_t i = 0; i < n; i++) {
            sb_free(sb_map_remove(&b->dedup, keys[i]));
            sb_keyset_remove(&b->key_index, keys[i]); /* (a protocol key's name reused) */
            sb_free(keys[i]);
        }
        sb_free(keys);
        op = sb_calloc(1, sizeof(*op));
        if (op != NULL) {
            op->type = SB_OP_DEDUP_PRUNE;
            op->u.dedup_prune.now_ms = now;
            op->cb = sb_broker__free_op;
            if (sb_store_submit(b->store, op) != 0)
                sb_free(op);
        }
    }
}

int sb_broker_run(sb_broker *b)
{
    return uv_run(&b->loop, UV_RUN_DEFAULT);
}

static void free_retained(const char *key, void *value, void *ctx)
{
    sb_retained *r = value;
    (void)key;
    (void)ctx;
    sb_message_unref(r->msg);
    sb_free(r);
}

static void free_dedup(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    sb_free(value);
}

void sb_broker_free(sb_broker *b)
{
    if (b == NULL)
        return;
    uv_walk(&b->loop, close_walk, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&b->loop) != 0)
        sb_warn(NULL, "event loop closed with handles still open");
    sb_auth_free(b->auth);
    while (b->old_auth != NULL) {
        struct sb_auth_old *o = b->old_auth;
        b->old_auth = o->next;
        sb_auth_free(o->auth);
        sb_free(o);
    }
    sb_map_each(&b->retained, free_retained, NULL);
    sb_map_clear(&b->retained);
    sb_subindex_clear(&b->retained_topics);
    sb_map_each(&b->dedup, free_dedup, NULL);
    sb_map_clear(&b->dedup);
    sb_map_each(&b->key_flights, free_dedup, NULL);
    sb_map_clear(&b->key_flights);
    sb_keyset_clear(&b->key_index);
    sb_map_clear(&b->queues_by_name);
    sb_map_clear(&b->queues_by_id);
    sb_subindex_clear(&b->routing);
    sb_map_clear(&b->sessions);
    uv_mutex_destroy(&b->request_lock);
    sb_config_free(b->cfg);
    sb_broker__pools_drain(b);
    sb_free(b);
}
