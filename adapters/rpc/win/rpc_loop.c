/*
 * The loop side of the MS-RPC adapter: the jobs calls hand over, and the
 * subscriptions' consumers.
 *
 * A subscription handle is a consumer of its queue that takes deliveries
 * only while it has credit: a pull that finds its buffer empty gives it
 * credit for what it asks (RPC_JOB_READY) and takes what arrives; when the
 * pull returns the credit goes back to 0. So deliveries do not pile up in
 * the broker's memory for a client that stopped pulling, and their lease
 * (which starts when the broker hands them over) runs from about when the
 * client asked for them. A delivery is copied into its wire form here, on
 * the loop, when it arrives: the pull on the RPC thread only moves it, and
 * never touches the broker's message. Every delivery the handle holds,
 * buffered or pulled, is a lease on its list until it is acknowledged,
 * refused, or the handle is detached (then the broker returns it to the
 * queue).
 */
#include "adapters/rpc/win/rpc_int.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/base64.h"
#include "service/log.h"
#include "service/topic.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* ---- wire forms ---- */

static byte *bytes_copy(const void *p, size_t n)
{
    byte *b;
    if (n == 0)
        return NULL;
    b = MIDL_user_allocate(n);
    if (b != NULL)
        memcpy(b, p, n);
    return b;
}

static int wire_from(SB_RPC_DELIVERY *w, const sb_delivery *d)
{
    const sb_message *m = d->msg;
    memset(w, 0, sizeof(*w));
    w->msg_id = m->id;
    w->attempt = d->attempt;
    w->created_ms = m->created_ms;
    w->topic = sb_rpc__text(m->topic);
    w->payload_size = (unsigned long)m->payload_len;
    w->payload = bytes_copy(m->payload, m->payload_len);
    if (m->header_count > 0) {
        w->headers = MIDL_user_allocate(m->header_count * sizeof(SB_RPC_HEADER));
        if (w->headers == NULL)
            goto nomem;
        memset(w->headers, 0, m->header_count * sizeof(SB_RPC_HEADER));
        w->header_count = (unsigned long)m->header_count;
        for (size_t i = 0; i < m->header_count; i++) {
            w->headers[i].key = sb_rpc__text(m->headers[i].key);
            w->headers[i].value = sb_rpc__text(m->headers[i].value);
            if (w->headers[i].key == NULL || w->headers[i].value == NULL)
                goto nomem;
        }
    }
    if (w->topic == NULL || (m->payload_len > 0 && w->payload == NULL))
        goto nomem;
    return 0;
nomem:
    sb_rpc__wire_free(w);
    return SB_ENOMEM;
}

/* ---- jobs: completion ---- */

static void job_undo_subscribe(rpc_job *j);

void sb_rpc__job_done(rpc_job *j, int status, const char *why)
{
    rpc_adapter *a = j->a;
    int abandoned;
    j->status = status;
    snprintf(j->why, sizeof j->why, "%s", status != 0 && why != NULL ? why : "");
    uv_mutex_lock(&a->lock);
    j->done = 1;
    abandoned = j->abandoned; /* nobody takes the result */
    uv_cond_signal(&j->cond);
    uv_mutex_unlock(&a->lock);
    if (abandoned && j->kind == RPC_JOB_SUBSCRIBE && status == 0)
        job_undo_subscribe(j);
    sb_rpc__job_release(j);
}

/* ---- the ACL ---- */

static const char *acl_user(const rpc_caller *c)
{
    return c->anonymous ? NULL : c->user;
}

/* Whether user may read through filters: every topic of each (all), or
 * some topic of one of them (!all). */
static int filters_readable(const struct sb_auth *acl, const char *user,
                            const sb_sub_filter *filters, size_t count, int all)
{
    if (acl == NULL || !sb_auth_has_acl(acl))
        return 1;
    for (size_t i = 0; i < count; i++) {
        int ok = all ? sb_auth_filter_readable(acl, user, NULL, filters[i].filter)
                     : sb_auth_filter_allowed(acl, user, NULL, filters[i].filter);
        if (ok != all)
            return ok;
    }
    return all;
}

/* Subscriptions named mqtt/... are MQTT client sessions: administrators only. */
static int protocol_owned(const rpc_caller *c, const char *name)
{
    return strncmp(name, "mqtt/", 5) == 0 && !c->admin;
}

/* ---- publish ---- */

static void on_published(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    rpc_job *j = ctx;
    j->msg_id = msg_id;
    j->queues = queues;
    sb_rpc__job_done(j, status, why != NULL ? why : sb_strerror(status));
}

static void do_publish(rpc_job *j)
{
    rpc_adapter *a = j->a;
    sb_broker *b = a->base.broker;
    char source[SB_RPC_USER_MAX + 200];
    sb_publish_opts opts;
    sb_message *m = j->msg;
    sb_error err;

    j->msg = NULL; /* the loop's own from here */
    if (!sb_auth_allowed(sb_broker_auth(b), acl_user(&j->caller), NULL, m->topic, SB_ACL_WRITE)) {
        char why[300];
        snprintf(why, sizeof why, "not authorized to publish to %.200s", m->topic);
        sb_message_unref(m);
        sb_rpc__job_done(j, SB_EAUTH, why);
        return;
    }
    snprintf(source, sizeof source, "%s %s %s", a->name,
             j->caller.anonymous ? "(anonymous)" : j->caller.user, j->caller.peer);
    memset(&opts, 0, sizeof opts);
    opts.source = source;
    opts.retain = j->retain;
    if (sb_broker_publish(b, m, &opts, on_published, j, &err) != 0)
        sb_rpc__job_done(j, err.code, err.msg);
    sb_message_unref(m);
}

/* ---- subscriptions ---- */

static void lease_free(rpc_lease *l)
{
    if (!l->pulled)
        sb_rpc__wire_free(&l->wire);
    sb_free(l);
}

/* Takes l off the buffer if it is still there. Under a->lock. */
static void unbuffer_locked(rpc_sub *s, rpc_lease *l)
{
    rpc_lease **pp;
    if (l->pulled)
        return;
    for (pp = &s->bhead; *pp != NULL; pp = &(*pp)->bnext)
        if (*pp == l) {
            *pp = l->bnext;
            if (s->btail == l) {
                rpc_lease *t = s->bhead;
                while (t != NULL && t->bnext != NULL)
                    t = t->bnext;
                s->btail = t;
            }
            s->buffered--;
            break;
        }
}

static void lease_unlink(rpc_sub *s, rpc_lease *l)
{
    for (rpc_lease **pp = &s->leases; *pp != NULL; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            return;
        }
}

/* Ends a lease: acks (status 0) or nacks its delivery. */
static void lease_finish(rpc_sub *s, rpc_lease *l, int status, const char *reason)
{
    lease_unlink(s, l);
    uv_mutex_lock(&s->a->lock);
    unbuffer_locked(s, l);
    uv_mutex_unlock(&s->a->lock);
    sb_delivery_done(l->d, status, reason);
    lease_free(l);
}

static int sub_deliver(sb_consumer *c, sb_delivery *d)
{
    rpc_sub *s = c->ctx;
    rpc_adapter *a = s->a;
    rpc_lease *l, *stale = NULL, **pp;
    int ok;

    uv_mutex_lock(&a->lock);
    ok = !s->closed && s->credit > 0;
    uv_mutex_unlock(&a->lock);
    if (!ok)
        return SB_EBUSY;
    if (!sb_auth_allowed(sb_broker_auth(a->base.broker), s->anonymous ? NULL : s->user, NULL,
                         d->msg->topic, SB_ACL_READ)) {
        /* the ACL was reloaded since the subscribe: finished, never sent */
        sb_delivery_done(d, 0, NULL);
        return 0;
    }
    l = sb_calloc(1, sizeof(*l));
    if (l == NULL)
        return SB_ENOMEM;
    l->d = d;
    l->msg_id = d->msg->id;
    if (wire_from(&l->wire, d) != 0) {
        sb_free(l);
        return SB_ENOMEM;
    }
    uv_mutex_lock(&a->lock);
    if (s->closed) {
        uv_mutex_unlock(&a->lock);
        lease_free(l);
        return SB_EBUSY;
    }
    /* An older copy still in the buffer had its lease run out before anyone
     * pulled it: this redelivery replaces it. */
    for (pp = &s->bhead; *pp != NULL;) {
        rpc_lease *b = *pp;
        if (b->msg_id == l->msg_id) {
            *pp = b->bnext;
            s->buffered--;
            b->bnext = stale;
            stale = b;
        } else {
            pp = &b->bnext;
        }
    }
    s->btail = NULL;
    for (rpc_lease *t = s->bhead; t != NULL; t = t->bnext)
        s->btail = t;
    if (s->btail != NULL)
        s->btail->bnext = l;
    else
        s->bhead = l;
    s->btail = l;
    s->buffered++;
    s->credit--;
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&a->lock);
    l->next = s->leases;
    s->leases = l;
    while (stale != NULL) {
        rpc_lease *b = stale;
        stale = b->bnext;
        lease_unlink(s, b);
        sb_delivery_done(b->d, 0, NULL);
        lease_free(b);
    }
    return 0;
}

/* Detaches s from its queue (its deliveries return to the queue, counted as
 * a failed attempt with `failed`), frees its leases, wakes a waiting pull
 * and drops the loop's reference. */
static void sub_detach(rpc_sub *s, int failed)
{
    rpc_adapter *a = s->a;
    rpc_lease *l;
    if (!s->attached)
        return;
    sb_broker_detach(a->base.broker, &s->consumer, failed); /* frees the deliveries */
    uv_mutex_lock(&a->lock);
    s->closed = 1;
    s->bhead = s->btail = NULL;
    s->buffered = 0;
    s->credit = 0;
    uv_cond_broadcast(&s->cond);
    uv_mutex_unlock(&a->lock);
    while ((l = s->leases) != NULL) {
        s->leases = l->next;
        lease_free(l);
    }
    s->attached = 0;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        a->subs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
    sb_rpc__sub_release(s);
}

void sb_rpc__close_all(rpc_adapter *a)
{
    /* An orderly stop: deliveries go back without counting an attempt. */
    while (a->subs != NULL)
        sub_detach(a->subs, 0);
}

static rpc_sub *sub_new(rpc_job *j)
{
    rpc_sub *s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->name = sb_strdup(j->name);
    if (s->name == NULL || uv_cond_init(&s->cond) != 0) {
        sb_free(s->name);
        sb_free(s);
        return NULL;
    }
    s->magic = RPC_SUB_MAGIC;
    s->a = j->a;
    sb_rpc__retain(s->a);
    snprintf(s->user, sizeof s->user, "%s", j->caller.user);
    s->anonymous = j->caller.anonymous;
    s->admin = j->caller.admin;
    snprintf(s->who, sizeof s->who, "%s %.80s %s", j->a->name,
             s->anonymous ? "(anonymous)" : s->user, j->caller.peer);
    s->consumer.deliver = sub_deliver;
    s->consumer.ctx = s;
    s->consumer.name = s->who;
    s->consumer.window = j->window;
    s->refs = 2; /* the handle and the loop */
    return s;
}

static void do_subscribe(rpc_job *j)
{
    rpc_adapter *a = j->a;
    sb_broker *b = a->base.broker;
    const struct sb_auth *acl = sb_broker_auth(b);
    const char *user = acl_user(&j->caller);
    sb_sub_filter one = {j->filter, SB_QOS_NONE};
    sb_sub_def existing, def;
    sb_error err;
    rpc_sub *s;
    int exists;

    if (protocol_owned(&j->caller, j->name)) {
        sb_rpc__job_done(j, SB_EACCES, "mqtt/... subscriptions are MQTT client sessions");
        return;
    }
    /* A new subscription is the client's own: granted if it may read some
     * of what the filter matches (deliveries are checked one by one). An
     * existing one may be shared: the client must be able to read all of
     * it. */
    exists = sb_broker_sub_get(b, j->name, &existing) == 0;
    if (exists ? !filters_readable(acl, user, existing.filters, existing.filter_count, 1)
               : j->filter != NULL && !filters_readable(acl, user, &one, 1, 0)) {
        sb_rpc__job_done(j, SB_EAUTH,
                         exists ? "not authorized to read every topic of this existing "
                                  "subscription"
                                : "not authorized to read any topic of the filter");
        return;
    }
    if (sb_broker_subscribe(b, j->name, j->filter, &j->settings, &err) != 0) {
        sb_rpc__job_done(j, err.code, err.msg);
        return;
    }
    if (j->retained != NULL && exists &&
        sb_broker_sub_add_retained(b, j->name, j->retained, &err) != 0) {
        sb_rpc__job_done(j, err.code, err.msg);
        return;
    }
    s = sub_new(j);
    if (s == NULL) {
        sb_rpc__job_done(j, SB_ENOMEM, "out of memory");
        return;
    }
    if (sb_broker_attach(b, j->name, &s->consumer, &err) != 0) {
        s->refs = 1;
        sb_rpc__sub_release(s);
        sb_rpc__job_done(j, err.code, err.msg);
        return;
    }
    s->attached = 1;
    s->next = a->subs;
    if (a->subs != NULL)
        a->subs->prev = s;
    a->subs = s;
    if (sb_broker_sub_get(b, j->name, &def) == 0)
        j->text = sb_sub_filters_join(def.filters, def.filter_count);
    else
        j->text = sb_strdup("");
    j->sub = s; /* the handle's reference, for the call */
    sb_rpc__job_done(j, 0, NULL);
}

/* The call gave up waiting for a subscribe that then succeeded: nobody will
 * use the handle. */
static void job_undo_subscribe(rpc_job *j)
{
    rpc_sub *s = j->sub;
    j->sub = NULL;
    if (s == NULL)
        return;
    sub_detach(s, 0);
    sb_rpc__sub_release(s); /* the handle's */
}

static void do_ready(rpc_job *j)
{
    rpc_sub *s = j->sub;
    if (s->attached)
        sb_consumer_ready(&s->consumer);
    sb_rpc__job_done(j, 0, NULL);
}

static void do_ack(rpc_job *j)
{
    rpc_sub *s = j->sub;
    char reason[256];
    unsigned long found = 0;

    if (!s->attached) {
        sb_rpc__job_done(j, SB_ESHUTDOWN, "the subscription was closed");
        return;
    }
    snprintf(reason, sizeof reason, "%s", j->reason != NULL ? j->reason : "nack from client");
    for (unsigned long i = 0; i < j->count; i++) {
        uint64_t id = j->ids[i];
        rpc_lease *live = NULL, *stale = NULL;
        for (rpc_lease *l = s->leases; l != NULL; l = l->next)
            if (l->msg_id == id) {
                if (l->d->entry != NULL) {
                    live = l;
                    break;
                }
                if (stale == NULL)
                    stale = l;
            }
        if (live == NULL && stale == NULL)
            continue;
        found++;
        if (live != NULL) {
            /* the stale copies of this message are answered by it too */
            rpc_lease *l = s->leases;
            while (l != NULL) {
                rpc_lease *next = l->next;
                if (l != live && l->msg_id == id)
                    lease_finish(s, l, 0, NULL);
                l = next;
            }
        }
        lease_finish(s, live != NULL ? live : stale, j->ack ? 0 : SB_EINVAL, reason);
    }
    j->done_count = found;
    if (found < j->count) {
        char why[160];
        snprintf(why, sizeof why, "%lu of %lu ids were not outstanding on this handle",
                 j->count - found, j->count);
        sb_rpc__job_done(j, SB_ENOTFOUND, why);
    } else {
        sb_rpc__job_done(j, 0, NULL);
    }
}

static void do_close(rpc_job *j)
{
    rpc_adapter *a = j->a;
    rpc_sub *s = j->sub;
    sb_error err;
    sub_detach(s, j->failed);
    if (j->delete_sub) {
        if (protocol_owned(&j->caller, s->name)) {
            sb_rpc__job_done(j, SB_EACCES,
                             "mqtt/... subscriptions are MQTT client sessions (delete them on the "
                             "admin endpoint)");
            return;
        }
        if (sb_broker_unsubscribe(a->base.broker, s->name, &err) != 0) {
            sb_rpc__job_done(j, err.code, err.msg);
            return;
        }
    }
    sb_rpc__job_done(j, 0, NULL);
}

/* ---- statistics and dead letters ---- */

/* Which queues a caller who is not an administrator sees while an ACL is in
 * force: the subscriptions it has open, and queues it may read wholly. */
static int stats_visible(void *ctx, const char *name, const sb_sub_filter *filters, size_t count)
{
    rpc_job *j = ctx;
    for (rpc_sub *s = j->a->subs; s != NULL; s = s->next)
        if (strcmp(s->name, name) == 0 && s->anonymous == j->caller.anonymous &&
            strcmp(s->user, j->caller.user) == 0)
            return 1;
    return !protocol_owned(&j->caller, name) &&
           filters_readable(sb_broker_auth(j->a->base.broker), acl_user(&j->caller), filters, count,
                            1);
}

static void do_stats(rpc_job *j)
{
    sb_broker *b = j->a->base.broker;
    int filtered = !j->caller.admin && sb_auth_has_acl(sb_broker_auth(b));
    json_t *o = sb_broker_stats_json_visible(b, filtered ? stats_visible : NULL, j);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text != NULL) {
        j->text = sb_strdup(text);
        free(text);
    }
    sb_rpc__job_done(j, j->text != NULL ? 0 : SB_ENOMEM, "out of memory");
}

static char *json_text(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? sb_rpc__text(s) : NULL;
}

static int dead_from(SB_RPC_DEAD_LETTER *w, json_t *o)
{
    json_t *headers = json_object_get(o, "headers"), *v;
    const char *p = json_string_value(json_object_get(o, "payload")), *key;
    const char *b64 = json_string_value(json_object_get(o, "payload_b64"));
    unsigned long i = 0;

    memset(w, 0, sizeof(*w));
    w->dlq_id = json_integer_value(json_object_get(o, "dlq_id"));
    w->msg_id = (MIDL_uhyper)json_integer_value(json_object_get(o, "msg_id"));
    w->attempts = (long)json_integer_value(json_object_get(o, "attempts"));
    w->dead_at_ms = json_integer_value(json_object_get(o, "dead_at"));
    w->sub = json_text(o, "sub");
    w->topic = json_text(o, "topic");
    w->reason = json_text(o, "reason");
    w->source = json_text(o, "source");
    if (p != NULL) {
        w->payload_size = (unsigned long)json_string_length(json_object_get(o, "payload"));
        w->payload = bytes_copy(p, w->payload_size);
    } else if (b64 != NULL) {
        unsigned char *bytes;
        size_t n;
        if (sb_base64_decode(b64, strlen(b64), &bytes, &n) != 0)
            goto nomem;
        w->payload_size = (unsigned long)n;
        w->payload = bytes_copy(bytes, n);
        sb_free(bytes);
    }
    if (w->payload_size > 0 && w->payload == NULL)
        goto nomem;
    if (json_object_size(headers) > 0) {
        w->headers = MIDL_user_allocate(json_object_size(headers) * sizeof(SB_RPC_HEADER));
        if (w->headers == NULL)
            goto nomem;
        memset(w->headers, 0, json_object_size(headers) * sizeof(SB_RPC_HEADER));
        json_object_foreach(headers, key, v)
        {
            w->headers[i].key = sb_rpc__text(key);
            w->headers[i].value =
                sb_rpc__text(json_string_value(v) != NULL ? json_string_value(v) : "");
            w->header_count = ++i;
            if (w->headers[i - 1].key == NULL || w->headers[i - 1].value == NULL)
                goto nomem;
        }
    }
    if (w->sub == NULL || w->topic == NULL)
        goto nomem;
    return 0;
nomem:
    sb_rpc__dead_free(w);
    return SB_ENOMEM;
}

static void on_dlq_done(void *ctx, int status, void *result, const char *why)
{
    rpc_job *j = ctx;
    json_t *res = result;
    if (status == 0 && j->kind == RPC_JOB_DLQ_LIST) {
        json_t *items = json_object_get(res, "items");
        size_t n = json_array_size(items);
        j->next = json_integer_value(json_object_get(res, "next"));
        if (n > 0) {
            j->items = MIDL_user_allocate(n * sizeof(SB_RPC_DEAD_LETTER));
            if (j->items == NULL)
                status = SB_ENOMEM;
            for (size_t i = 0; status == 0 && i < n; i++) {
                if (dead_from(&j->items[i], json_array_get(items, i)) != 0)
                    status = SB_ENOMEM;
                else
                    j->nitems++;
            }
        }
        why = "out of memory";
    } else if (status == 0) {
        j->total = json_integer_value(json_object_get(res, "count"));
    }
    json_decref(res);
    sb_rpc__job_done(j, status, why != NULL ? why : sb_strerror(status));
}

static void do_dlq(rpc_job *j)
{
    sb_broker *b = j->a->base.broker;
    sb_error err;
    int rc;
    if (!j->caller.admin) {
        sb_rpc__job_done(j, SB_EACCES, "dead-letter operations are for SYSTEM and Administrators");
        return;
    }
    if (j->kind == RPC_JOB_DLQ_LIST)
        rc = sb_broker_dlq_list(b, j->name, j->after, j->limit, on_dlq_done, j, &err);
    else if (j->kind == RPC_JOB_DLQ_REDRIVE)
        rc = sb_broker_dlq_redrive(b, j->name, on_dlq_done, j, &err);
    else
        rc = sb_broker_dlq_purge(b, j->name, on_dlq_done, j, &err);
    if (rc != 0)
        sb_rpc__job_done(j, err.code, err.msg);
}

/* ---- dispatch ---- */

void sb_rpc__job_exec(void *arg)
{
    rpc_job *j = arg;
    int stopping;
    uv_mutex_lock(&j->a->lock);
    stopping = j->a->stopping;
    uv_mutex_unlock(&j->a->lock);
    if (stopping) {
        /* posted before the stop: the adapter is detached from the broker */
        if (j->msg != NULL) {
            sb_message_unref(j->msg);
            j->msg = NULL;
        }
        sb_rpc__job_done(j, SB_ESHUTDOWN, "the adapter is stopping");
        return;
    }
    switch (j->kind) {
    case RPC_JOB_PUBLISH:
        do_publish(j);
        break;
    case RPC_JOB_SUBSCRIBE:
        do_subscribe(j);
        break;
    case RPC_JOB_READY:
        do_ready(j);
        break;
    case RPC_JOB_ACK:
        do_ack(j);
        break;
    case RPC_JOB_CLOSE:
        do_close(j);
        break;
    case RPC_JOB_STATS:
        do_stats(j);
        break;
    case RPC_JOB_DLQ_LIST:
    case RPC_JOB_DLQ_REDRIVE:
    case RPC_JOB_DLQ_PURGE:
        do_dlq(j);
        break;
    }
}
