/*
 * The publish path: route a message to every matching queue, check limits,
 * hand it to the store, and, once committed, append it to the queues and
 * acknowledge the producer — strictly in publish order, whatever mix of
 * durability classes the messages had. Also the store writes that follow a
 * delivery: coalesced acks, attempt counts, dead letters.
 */
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/log.h"
#include "service/topic.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sb_queue *sb_broker__find_queue(sb_broker *b, const char *name)
{
    return sb_map_get(&b->queues_by_name, name);
}

static int routed(const sb_queue *q)
{
    return q->live && (q->route != NULL || !q->from_config);
}

/* ---- flush: acks and memory-only completions, once per loop turn ---- */

static void on_flush(uv_idle_t *h)
{
    sb_broker *b = h->data;
    uv_idle_stop(h);
    b->flush_armed = 0;
    while (b->ack_flush != NULL) {
        sb_queue *q = b->ack_flush;
        b->ack_flush = q->ack_next;
        q->ack_next = NULL;
        q->ack_queued = 0;
        sb_queue__flush_acks(q);
        if (q->dispatch_due) {
            q->dispatch_due = 0;
            sb_queue__dispatch(q);
        }
    }
    sb_broker__drain_pending(b);
}

void sb_broker__arm_flush(sb_broker *b)
{
    if (!b->flush_armed) {
        b->flush_armed = 1;
        uv_idle_start(&b->flush_idle, on_flush);
    }
}

void sb_broker__schedule_ack_flush(sb_broker *b, sb_queue *q)
{
    if (!q->ack_queued) {
        q->ack_queued = 1;
        q->ack_next = b->ack_flush;
        b->ack_flush = q;
    }
    sb_broker__arm_flush(b);
}

/* Rides on the ack flush list: a publish hands its message to a queue
 * from inside an adapter's read, where a delivery must not re-enter it. */
void sb_broker__schedule_dispatch(sb_broker *b, sb_queue *q)
{
    q->dispatch_due = 1;
    sb_broker__schedule_ack_flush(b, q);
}

static void on_simple_op_done(sb_store_op *op, void *ctx)
{
    sb_broker *b = ctx;
    if (op->type == SB_OP_DEADLETTER) {
        if (op->u.deadletter.msg == NULL)
            sb_free((char *)op->u.deadletter.source); /* a copy (sb_broker__deadletter) */
        sb_message_unref(op->u.deadletter.msg);
        sb_free((char *)op->u.deadletter.queue_name);
        sb_free((char *)op->u.deadletter.reason);
    }
    sb_pool_put(&b->op_pool, op);
}

/* A zeroed op from the broker's free list: an out-of-order ack, say, is
 * one op per message. NULL on out-of-memory. */
static sb_store_op *simple_op_new(sb_broker *b)
{
    sb_store_op *op = sb_pool_get(&b->op_pool);
    if (op != NULL)
        memset(op, 0, sizeof(*op));
    return op;
}

static void submit_simple(sb_broker *b, sb_store_op *op)
{
    op->cb = on_simple_op_done;
    op->ctx = b;
    if (sb_store_submit(b->store, op) != 0)
        on_simple_op_done(op, b);
}

void sb_broker__store_ack(sb_broker *b, sb_queue *q, uint64_t first, uint64_t last, int64_t rows,
                          int64_t bytes)
{
    sb_store_op *op = simple_op_new(b);
    if (op == NULL) {
        /* The rows stay; they are redelivered after a restart (at-least-once). */
        sb_errlog(q->name, "out of memory recording an acknowledgement");
        return;
    }
    op->type = SB_OP_ACK;
    op->u.ack.queue_id = q->id;
    op->u.ack.first_id = first;
    op->u.ack.last_id = last;
    op->u.ack.rows = rows;
    op->u.ack.bytes = bytes;
    submit_simple(b, op);
}

void sb_broker__store_attempts(sb_broker *b, sb_queue *q, sb_entry *e)
{
    sb_store_op *op = simple_op_new(b);
    if (op == NULL)
        return; /* the count is advisory; losing one update only allows a retry more */
    op->type = SB_OP_ATTEMPTS;
    op->u.attempts.queue_id = q->id;
    op->u.attempts.msg_id = e->msg->id;
    op->u.attempts.attempts = e->attempts;
    submit_simple(b, op);
}

void sb_broker__deadletter(sb_broker *b, sb_queue *q, sb_entry *e, const char *reason)
{
    sb_store_op *op = simple_op_new(b);
    const char *source = sb_message_header(e->msg, "source");

    q->dead++;
    if (!q->sys_dirty)
        sb_broker__queue_changed(q);
    sb_log(SB_LOG_WARN, q->name, "message %llu (topic %s) moved to the dead-letter queue: %s",
           (unsigned long long)e->msg->id, e->msg->topic, reason);
    if (op == NULL)
        goto oom;
    op->type = SB_OP_DEADLETTER;
    op->u.deadletter.queue_id = q->id;
    op->u.deadletter.msg_id = e->msg->id;
    /* Appended before its publish committed: the dead letter is copied
     * from the row, which the publish writes first; if the store refuses
     * the publish, there is no row and no dead letter (its producer was
     * told, and sends again). */
    op->u.deadletter.msg = e->pending != NULL ? NULL : sb_message_ref(e->msg);
    op->u.deadletter.queue_name = sb_strdup(q->name);
    op->u.deadletter.reason = sb_strdup(reason);
    /* points into the message's headers: a copy when the op holds none */
    op->u.deadletter.source =
        op->u.deadletter.msg != NULL || source == NULL ? source : sb_strdup(source);
    op->u.deadletter.attempts = e->attempts;
    if (op->u.deadletter.queue_name == NULL || op->u.deadletter.reason == NULL ||
        (source != NULL && op->u.deadletter.source == NULL)) {
        on_simple_op_done(op, b);
        goto oom;
    }
    submit_simple(b, op);
    return;
oom:
    sb_errlog(q->name, "out of memory dead-lettering message %llu; it stays stored",
              (unsigned long long)e->msg->id);
}

/* ---- retained values and dedup keys (in memory, mirrored in the store) ---- */

void sb_broker__forget_retained(sb_broker *b, const char *topic)
{
    sb_retained *r = sb_map_remove(&b->retained, topic);
    if (r == NULL)
        return;
    sb_subindex_remove(&b->retained_topics, topic, strlen(topic), r);
    sb_message_unref(r->msg);
    sb_free(r);
}

static void retain_set(sb_broker *b, sb_message *msg)
{
    sb_retained *r;
    if (msg->payload_len == 0) {
        sb_broker__forget_retained(b, msg->topic);
        return;
    }
    if ((r = sb_map_get(&b->retained, msg->topic)) != NULL) {
        sb_message_unref(r->msg);
        r->msg = sb_message_ref(msg);
        return;
    }
    if ((r = sb_calloc(1, sizeof(*r))) == NULL ||
        sb_map_put(&b->retained, msg->topic, r, NULL) != 0) {
        sb_free(r);
        goto oom;
    }
    if (sb_subindex_add(&b->retained_topics, msg->topic, strlen(msg->topic), r) != 0) {
        sb_map_remove(&b->retained, msg->topic);
        sb_free(r);
        goto oom;
    }
    r->msg = sb_message_ref(msg);
    return;
oom:
    sb_errlog("retain", "out of memory keeping the retained value of %s", msg->topic);
}

static int dedup_seen(sb_broker *b, const char *key, int64_t now)
{
    int64_t *exp = sb_map_get(&b->dedup, key);
    return exp != NULL && (*exp == 0 || *exp > now);
}

static void dedup_add(sb_broker *b, const char *key, int64_t expires)
{
    if (sb_broker__key_add(b, key, expires) != 0)
        sb_errlog(NULL, "out of memory keeping the key %s", key);
}

/* ---- pending publishes ---- */

/* Allocates the entries p's queues will need (see sb_pending.spare). */
static int reserve_entries(sb_broker *b, sb_pending *p)
{
    for (size_t i = 0; i < p->queue_count; i++) {
        sb_entry *e = sb_broker__entry_get(b);
        if (e == NULL)
            return SB_ENOMEM;
        e->next = p->spare;
        p->spare = e;
    }
    return 0;
}

/* Protocol state of an early delivery: a key put now and deleted if the
 * store refuses the message, or one put only then (sb_delivery_key_put,
 * sb_delivery_keys_if_refused). */
typedef struct sb_pending_key {
    struct sb_pending_key *next;
    int if_refused; /* put only if the store refuses the message */
    char key[];
} sb_pending_key;

/* Frees p; into b's free lists, or with sb_free when b is NULL (a batch of
 * retained values never queued). */
static void pending_free(sb_broker *b, sb_pending *p)
{
    while (p->keys != NULL) {
        sb_pending_key *k = p->keys;
        p->keys = k->next;
        sb_free(k);
    }
    while (p->spare != NULL) {
        sb_entry *e = p->spare;
        p->spare = e->next;
        if (b != NULL)
            sb_broker__entry_put(b, e);
        else
            sb_free(e);
    }
    sb_message_unref(p->msg);
    if (p->queues != p->queues_inline)
        sb_free(p->queues);
    if (p->queue_ids != p->ids_inline)
        sb_free(p->queue_ids);
    sb_free(p->drops);
    sb_free(p->dedup_key);
    sb_free(p->why);
    if (b != NULL)
        sb_pool_put(&b->pending_pool, p);
    else
        sb_free(p);
}

/* ---- entries appended before their commit ---- */

/* Message ids a queue may see before their commit are reserved this far
 * ahead (sb_store_reserve_ids), asked again when half are used, so that
 * reserving never waits. */
#define ID_RESERVE 65536

/* 1 if id is recorded as taken by a commit: a consumer may see it before
 * its message's own commit, as a crash cannot give it to another message. */
static int id_reserved(sb_broker *b, uint64_t id)
{
    if (id + ID_RESERVE / 2 > b->ids_asked) {
        b->ids_asked = id + ID_RESERVE;
        b->ids_safe = sb_store_reserve_ids(b->store, b->ids_asked);
    } else if (id > b->ids_safe) {
        b->ids_safe = sb_store_reserve_ids(b->store, b->ids_asked);
    }
    return id <= b->ids_safe;
}

/* Appends p's message, submitted to the store, to the durable queues that
 * can take it now, so that consumers get it while its group commits: one
 * acknowledged before the store begins the publish costs no row
 * (sb_broker__cancel_insert). The producer is still acknowledged after the
 * commit. Not for a queue with earlier publishes still to be appended
 * (order), nor when the message might stay in the store (paging), nor
 * with a dedup key (the store may find a duplicate: nothing to deliver),
 * nor for a retained value (a consumer that saw it and then subscribes
 * elsewhere must find it retained, which it is only once committed). */
static void append_early(sb_broker *b, sb_pending *p)
{
    int64_t size = (int64_t)sb_message_size(p->msg);
    uint32_t slot = 0;

    if (!b->cfg->broker.deliver_before_commit || p->dedup_key != NULL || p->retain ||
        !id_reserved(b, p->msg->id))
        return;
    for (size_t i = 0; i < p->queue_count && i < 64; i++) {
        sb_queue *q = p->queues[i];
        sb_entry *e;
        if (q->durability == SB_DURABILITY_MEMORY)
            continue;
        slot++; /* its index in the op's queue_ids, plus one */
        /* a redriven dead letter in flight has an older id: it goes first */
        if (q->pending != q->early + 1 || q->redriving != 0 || !q->live ||
            !sb_queue__fits_window(q, size))
            continue;
        e = p->spare;
        p->spare = e->next;
        sb_queue__append_entry(q, e, p->msg, 0);
        e->pending = p;
        e->pslot = slot - 1;
        e->pnext = p->early;
        p->early = e;
        p->early_mask |= UINT64_C(1) << i;
        q->early++;
        q->pending_bytes -= size;
        sb_broker__schedule_dispatch(b, q);
    }
}

int sb_broker__cancel_insert(sb_entry *e)
{
    sb_pending *p = e->pending;
    return p != NULL && sb_store_cancel(p->broker->store, &p->op, e->pslot) == 0;
}

/* The pending publish of d's message, or NULL once it completed. */
static sb_pending *pending_of(const sb_delivery *d)
{
    return d->entry != NULL ? d->entry->pending : d->pending;
}

static sb_pending_key *pending_key_new(const char *key)
{
    sb_pending_key *k = sb_calloc(1, sizeof(*k) + strlen(key) + 1);
    if (k != NULL)
        strcpy(k->key, key);
    return k;
}

int sb_delivery_key_put(sb_broker *b, sb_delivery *d, const char *key, sb_key_cb cb, void *ctx)
{
    sb_pending *p = pending_of(d);
    sb_pending_key *k;
    int rc;
    if (p == NULL)
        return sb_broker_key_put(b, key, cb, ctx);
    if ((k = pending_key_new(key)) == NULL)
        return SB_ENOMEM;
    if ((rc = sb_broker_key_put(b, key, cb, ctx)) != 0) {
        sb_free(k);
        return rc;
    }
    k->next = p->keys;
    p->keys = k;
    return 0;
}

int sb_delivery_keys_if_refused(sb_broker *b, sb_delivery *d, const char *const *keys, size_t count)
{
    sb_pending *p = pending_of(d);
    /* prepended last first: put in the order given */
    for (size_t i = count; p != NULL && i-- > 0;) {
        sb_pending_key *k = pending_key_new(keys[i]);
        if (k == NULL)
            return SB_ENOMEM;
        k->if_refused = 1;
        k->next = p->keys;
        p->keys = k;
    }
    return 0;
}

void sb_broker__orphan(sb_entry *e, sb_delivery *d)
{
    sb_pending *p = e->pending;
    d->pending = p;
    d->enext = p->orphans;
    p->orphans = d;
}

void sb_broker__orphan_gone(sb_delivery *d)
{
    sb_delivery **at = &d->pending->orphans;
    while (*at != d)
        at = &(*at)->enext;
    *at = d->enext;
    d->enext = NULL;
    d->pending = NULL;
}

void sb_broker__entry_gone(sb_entry *e)
{
    sb_entry **at = &e->pending->early;
    while (*at != e)
        at = &(*at)->pnext;
    *at = e->pnext;
    e->pnext = NULL;
    e->pending = NULL;
}

/* Lets f, a copy of a retained publish for a subscription made while it
 * was in flight, go on as the publish went: to its queue once committed
 * in turn, or nowhere (a durable copy's op was submitted with the copy, in
 * order; complete() withdraws it then). */
static void follower_release(sb_pending *f, int committed)
{
    f->leader = NULL;
    f->lead_failed = !committed;
    if (f->op.type != SB_OP_PUBLISH)
        f->done = 1; /* a memory queue's */
}

static void complete(sb_broker *b, sb_pending *p)
{
    int last = 0, stored = 0;
    /* Refused at commit (the store failed the group): counted like the
     * publishes refused before reaching the store. */
    if (p->status != 0 && p->status != SB_ESHUTDOWN)
        b->refused++;
    if (p->retain)
        b->retained_inflight--;
    if (p->lead_failed) {
        /* a copy whose publish did not commit: never delivered, and its
         * row goes (ordered after the copy's own op, now completed) */
        if (p->status == 0 && p->op.type == SB_OP_PUBLISH)
            sb_broker__store_ack(b, p->queues[0], p->msg->id, p->msg->id, 1,
                                 (int64_t)sb_message_size(p->msg));
        p->status = SB_EDUPLICATE;
    }
    /* its row's delete, if any, is submitted: reads of the stored part
     * may go on (a dispatch fills the window) */
    if (p->row_waits && --p->queues[0]->copy_rows == 0 && p->queues[0]->live)
        sb_broker__schedule_dispatch(b, p->queues[0]);
    /* (after p in the pending list: completed after it, in this drain if
     * they are done now) */
    while (p->followers != NULL) {
        sb_pending *f = p->followers;
        p->followers = f->follow_next;
        f->follow_next = NULL;
        follower_release(f, p->status == 0 && !p->duplicate);
    }
    while (p->early != NULL) {
        sb_entry *e = p->early;
        p->early = e->pnext;
        e->pnext = NULL;
        e->pending = NULL;
        if (p->status != 0)
            sb_queue__withdraw(e->queue, e);
    }
    /* Deliveries whose entry went (its lease ended) before the commit
     * still answer sb_delivery_withdrawn. */
    while (p->orphans != NULL) {
        sb_delivery *d = p->orphans;
        p->orphans = d->enext;
        d->enext = NULL;
        d->pending = NULL;
        d->withdrawn = p->status != 0;
    }
    /* (a put still in flight adds nothing once its key is deleted) */
    for (sb_pending_key *k = p->keys; k != NULL && p->status != 0; k = k->next) {
        if (!k->if_refused)
            sb_broker_key_delete(b, k->key, 0);
        else if (sb_broker__key_put_known(b, k->key) != 0)
            sb_errlog(NULL, "cannot record protocol state %s (out of memory or stopping)", k->key);
    }
    for (size_t i = 0; i < p->queue_count; i++) {
        sb_queue *q = p->queues[i];
        int early = i < 64 && (p->early_mask >> i & 1);
        q->pending--;
        if (early && p->status != 0)
            q->published--; /* counted when appended early; it never came in */
        if (early)
            q->early--;
        else
            q->pending_bytes -= (int64_t)sb_message_size(p->msg);
        if (p->status == 0 && q->live && !early && !p->duplicate &&
            !sb_queue__stays_stored(q, p->msg)) {
            sb_entry *e = p->spare;
            p->spare = e->next;
            sb_queue__append_entry(q, e, p->msg, 0);
        }
        if (!q->live && q->pending == 0)
            sb_queue__close(q); /* deferred close of a deleted queue */
    }
    /* A protocol key deleted since (its session ended) is not brought
     * back. A duplicate's is in the store (a resend submitted before the
     * first copy committed may be the last op on it); a dedup window
     * stays as its first copy set it. */
    stored = p->status == 0 && (p->key_seq != 0 || !p->duplicate);
    if (p->dedup_key != NULL)
        last = sb_broker__key_put_end(b, p->dedup_key, p->key_seq, stored, &stored);
    if (last && stored)
        dedup_add(b, p->dedup_key, p->dedup_expires_ms);
    if (p->status == 0 && !p->duplicate) {
        if (p->retain)
            retain_set(b, p->msg);
        b->published++;
        for (int c = 0; c < 3; c++)
            if (p->durability_mask & (1 << c))
                b->published_class[c]++;
        for (size_t i = 0; i < p->queue_count; i++) {
            if (!p->queues[i]->live)
                continue;
            if (!(i < 64 && (p->early_mask >> i & 1)))
                sb_queue__dispatch(p->queues[i]);
            /* what consumers did not take is trimmed to the limit */
            sb_queue__trim(p->queues[i]);
        }
    }
    if (p->cb != NULL)
        p->cb(p->ctx, p->status, p->status == 0 ? p->msg->id : 0,
              p->duplicate ? 0 : (int)p->queue_count,
              p->status == 0   ? NULL
              : p->why != NULL ? p->why
                               : sb_strerror(p->status));
}

void sb_broker__drain_pending(sb_broker *b)
{
    sb_pending *p;
    while ((p = b->pending_head) != NULL && p->done) {
        b->pending_head = p->next;
        if (b->pending_head == NULL)
            b->pending_tail = NULL;
        complete(b, p);
        pending_free(b, p);
    }
}

static void on_publish_committed(sb_store_op *op, void *ctx)
{
    sb_pending *p = ctx;
    p->done = 1;
    p->status = op->status;
    if (op->status == SB_EDUPLICATE) {
        p->status = 0; /* idempotent: the first copy was committed */
        p->duplicate = 1;
    } else if (op->status != 0) {
        /* The store's own account names the cause (the disk, or the size
         * limit max_db_bytes, which SQLite reports alike). */
        sb_store_stats st;
        char why[320];
        sb_store_get_stats(p->broker->store, &st);
        snprintf(why, sizeof(why), "store refused the message: %s",
                 st.last_error[0] != '\0' ? st.last_error : sb_strerror(op->status));
        p->why = sb_strdup(why); /* NULL: the producer gets the status's own text */
    }
    sb_broker__drain_pending(p->broker);
}

static void pending_push(sb_broker *b, sb_pending *p)
{
    if (b->pending_tail != NULL)
        b->pending_tail->next = p;
    else
        b->pending_head = p;
    b->pending_tail = p;
    if (p->retain)
        b->retained_inflight++;
}

/* Doubles the room of p's queue arrays (cap entries now). */
static int grow_queues(sb_pending *p, size_t *cap)
{
    size_t ncap = *cap * 2;
    sb_queue **nq = sb_malloc(ncap * sizeof(*nq));
    uint32_t *ni = sb_malloc(ncap * sizeof(*ni));
    if (nq == NULL || ni == NULL) {
        sb_free(nq);
        sb_free(ni);
        return SB_ENOMEM;
    }
    memcpy(nq, p->queues, p->queue_count * sizeof(*nq));
    if (p->queues != p->queues_inline)
        sb_free(p->queues);
    if (p->queue_ids != p->ids_inline)
        sb_free(p->queue_ids);
    p->queues = nq;
    p->queue_ids = ni;
    *cap = ncap;
    return 0;
}

/* The queues a topic is routed to, collected from the index. */
typedef struct route_match {
    sb_broker *b;
    sb_pending *p;
    size_t cap;
    int failed;
} route_match;

static void collect_queue(void *value, void *ctx)
{
    route_match *m = ctx;
    sb_queue *q = value;
    /* once per queue, however many of its filters match */
    if (q->match_gen == m->b->match_gen || !routed(q) || m->failed)
        return;
    q->match_gen = m->b->match_gen;
    if (m->p->queue_count == m->cap && grow_queues(m->p, &m->cap) != 0) {
        m->failed = 1;
        return;
    }
    m->p->queues[m->p->queue_count++] = q;
}

static int newest_first(const void *a, const void *b)
{
    const sb_queue *x = *(sb_queue *const *)a, *y = *(sb_queue *const *)b;
    return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

/* Fills p->queues with the queues routing topic, in the order of the
 * broker's list (newest first), which decides whose dedup header applies
 * and the order of drops and deliveries. */
static int route(sb_broker *b, sb_pending *p, const char *topic, size_t *cap)
{
    route_match m = {b, p, *cap, 0};
    b->match_gen++;
    sb_subindex_match(&b->routing, topic, collect_queue, &m);
    *cap = m.cap;
    if (m.failed)
        return SB_ENOMEM;
    if (p->queue_count <= 8) {
        for (size_t i = 1; i < p->queue_count; i++) {
            sb_queue *q = p->queues[i];
            size_t j = i;
            for (; j > 0 && p->queues[j - 1]->seq < q->seq; j--)
                p->queues[j] = p->queues[j - 1];
            p->queues[j] = q;
        }
    } else {
        qsort(p->queues, p->queue_count, sizeof(*p->queues), newest_first);
    }
    return 0;
}

/* Checks q's limits for one more message without changing anything: 0 with
 * *want = how many of its oldest entries make_room will drop (drop-oldest),
 * or SB_EFULL (reject). */
static int check_limits(const sb_queue *q, const sb_message *msg, size_t *want, sb_error *err)
{
    int64_t size = (int64_t)sb_message_size(msg);
    int64_t depth = sb_queue__total_depth(q);
    int64_t pending = q->pending - q->early; /* the early ones are in depth */
    int over_depth = q->max_depth > 0 && depth + pending + 1 > q->max_depth;
    int over_bytes =
        q->max_bytes > 0 && sb_queue__total_bytes(q) + q->pending_bytes + size > q->max_bytes;

    *want = 0;
    if (!over_depth && !over_bytes)
        return 0;
    if (q->overflow == SB_OVERFLOW_REJECT)
        return sb_error_set(err, SB_EFULL, 0, "queue %s is full (%s %lld)", q->name,
                            over_depth ? "max_depth" : "max_bytes",
                            (long long)(over_depth ? q->max_depth : q->max_bytes));
    /* memory queues drop one in memory only; drop-oldest never refuses
     * (what is in flight may exceed the limit for a moment) */
    if (q->durability == SB_DURABILITY_MEMORY)
        *want = 1;
    else
        *want = over_depth ? (size_t)(depth + pending + 1 - q->max_depth) : 1;
    if (*want > 64)
        *want = 64;
    return 0;
}

/* Drops what check_limits asked of q, once the publish can no longer fail:
 * a refused publish must leave every queue as it was. The ids dropped from
 * a durable queue go to p's drops (room for them is allocated). */
static void make_room(sb_queue *q, const sb_message *msg, sb_pending *p)
{
    uint64_t ids[64];
    size_t want, n;

    if (check_limits(q, msg, &want, NULL) != 0 || want == 0)
        return;
    n = sb_queue__drop_oldest(q, ids, want);
    if (q->durability == SB_DURABILITY_MEMORY)
        return;
    /* the window had too few: the oldest stored ones go (submitted before
     * this publish, so deleted before it is inserted) */
    if (n < want && q->disk_depth > 0)
        sb_paging__drop(q, (int64_t)(want - n));
    /* n == 0: all in flight, over the limit until they are done */
    for (size_t i = 0; i < n; i++) {
        p->drops[p->op.u.publish.drop_count + i].queue_id = q->id;
        p->drops[p->op.u.publish.drop_count + i].msg_id = ids[i];
    }
    p->op.u.publish.drop_count += n;
}

int sb_broker_publish(sb_broker *b, sb_message *msg, const sb_publish_opts *opts, sb_publish_cb cb,
                      void *ctx, sb_error *err)
{
    const char *why = NULL;
    sb_pending *p;
    size_t cap = 0, ndurable = 0, drops = 0, want;
    int needs_store = 0, sync = 0, rc, retain = opts != NULL && opts->retain;
    int64_t now = 0; /* wall clock, read for a dedup key only */

    if (b->remote != NULL) /* a session agent: the service commits */
        return b->stopping ? sb_error_set(err, SB_ESHUTDOWN, 0, "the agent is stopping")
                           : b->remote->ops->publish(b->remote, msg, opts, cb, ctx, err);
    if (b->stopping)
        return sb_error_set(err, SB_ESHUTDOWN, 0, "broker is shutting down");
    if (sb_topic_validate(msg->topic, msg->topic_len, &why) != 0)
        return sb_error_set(err, SB_EINVAL, 0, "topic %s", why);
    if (opts != NULL && opts->source != NULL && sb_message_header(msg, "source") == NULL &&
        sb_message_add_header(msg, "source", opts->source) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");

    /* Zeroed but for what is written before it is read: the store op's
     * union, sized by its largest member, beyond its publish part. A
     * publish to one of thousands of queues finds this memory out of
     * cache, and zeroing all of it cost more cache misses than the rest of
     * the publish. */
    p = sb_pool_get(&b->pending_pool);
    if (p == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    /* the two ranges below cover every field but the op's union */
    _Static_assert(offsetof(sb_pending, op) == 0 &&
                       offsetof(sb_pending, broker) == sizeof(sb_store_op),
                   "sb_pending: op, then broker .. the end");
    memset(&p->op, 0, offsetof(sb_store_op, u) + sizeof(p->op.u.publish));
    memset(&p->broker, 0, sizeof(*p) - offsetof(sb_pending, broker));
    p->broker = b;
    p->cb = cb;
    p->ctx = ctx;
    p->queues = p->queues_inline;
    p->queue_ids = p->ids_inline;
    cap = sizeof(p->queues_inline) / sizeof(p->queues_inline[0]);

    if (opts != NULL && opts->dedup_key != NULL) {
        now = sb_now_ms();
        if (dedup_seen(b, opts->dedup_key, now)) {
            /* already committed: acknowledge, store nothing */
            p->msg = sb_message_ref(msg);
            p->done = 1;
            pending_push(b, p);
            sb_broker__arm_flush(b);
            return 0;
        }
        if ((p->dedup_key = sb_strdup(opts->dedup_key)) == NULL) {
            rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
            goto fail;
        }
        p->dedup_expires_ms = 0;
    }
    if (route(b, p, msg->topic, &cap) != 0) {
        rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < p->queue_count; i++) {
        sb_queue *q = p->queues[i];
        if (q->dedup_header != NULL && p->dedup_key == NULL) {
            const char *v = sb_message_header(msg, q->dedup_header);
            if (v != NULL) {
                size_t n = strlen(q->dedup_header) + strlen(v) + 2;
                if (now == 0)
                    now = sb_now_ms();
                p->dedup_key = sb_malloc(n);
                if (p->dedup_key == NULL) {
                    rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
                    goto fail;
                }
                snprintf(p->dedup_key, n, "%s=%s", q->dedup_header, v);
                p->dedup_expires_ms = now + q->dedup_window_ms;
                if (dedup_seen(b, p->dedup_key, now)) {
                    /* A duplicate within the window: acknowledge, store nothing. */
                    p->queue_count = 0;
                    sb_free(p->dedup_key);
                    p->dedup_key = NULL;
                    p->msg = sb_message_ref(msg);
                    p->done = 1;
                    pending_push(b, p);
                    sb_broker__arm_flush(b);
                    return 0;
                }
            }
        }
        if ((rc = check_limits(q, msg, &want, err)) != 0)
            goto fail;
        if (q->durability != SB_DURABILITY_MEMORY)
            drops += want;
        p->durability_mask |= 1 << q->durability;
        if (q->durability != SB_DURABILITY_MEMORY) {
            p->queue_ids[ndurable++] = q->id;
            needs_store = 1;
            sync |= q->durability == SB_DURABILITY_FSYNC;
        }
        retain |= q->retain;
    }
    if (p->queue_count == 0)
        p->durability_mask = 0;
    if (retain && strncmp(msg->topic, "$SYS/", 5) != 0) {
        needs_store = 1; /* retained values are always kept on disk */
        sync |= ndurable == 0 || (p->durability_mask & (1 << SB_DURABILITY_FSYNC));
    }
    if (p->dedup_key != NULL)
        needs_store = 1;
    if (needs_store && sb_store_degraded(b->store)) {
        sb_store_stats st;
        sb_store_get_stats(b->store, &st);
        rc = sb_error_set(err, SB_ENOSPC, 0, "store is refusing writes: %s",
                          st.last_error[0] != '\0' ? st.last_error : "commit failed");
        goto fail;
    }
    if ((drops > 0 && (p->drops = sb_malloc(drops * sizeof(*p->drops))) == NULL) ||
        reserve_entries(b, p) != 0) {
        rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        goto fail;
    }

    /* Accepted: nothing below fails. */
    for (size_t i = 0; i < p->queue_count; i++)
        make_room(p->queues[i], msg, p);
    msg->id = ++b->last_msg_id;
    p->msg = sb_message_ref(msg);
    p->retain = retain;
    for (size_t i = 0; i < p->queue_count; i++) {
        p->queues[i]->pending++;
        p->queues[i]->pending_bytes += (int64_t)sb_message_size(msg);
    }
    pending_push(b, p);
    if (!needs_store) {
        p->done = 1;
        sb_broker__arm_flush(b);
        return 0;
    }
    p->op.type = SB_OP_PUBLISH;
    p->op.sync = sync;
    p->op.cb = on_publish_committed;
    p->op.ctx = p;
    p->op.u.publish.msg = msg;
    p->op.u.publish.queue_ids = p->queue_ids;
    p->op.u.publish.queue_count = ndurable;
    p->op.u.publish.retain = retain && strncmp(msg->topic, "$SYS/", 5) != 0;
    p->op.u.publish.dedup_key = p->dedup_key;
    p->op.u.publish.dedup_expires_ms = p->dedup_expires_ms;
    p->op.u.publish.drops = p->drops;
    if (sb_store_submit(b->store, &p->op) != 0) {
        p->done = 1;
        p->status = SB_ESHUTDOWN;
        p->why = sb_strdup("broker is shutting down");
        sb_broker__arm_flush(b);
    } else {
        if (opts != NULL && opts->dedup_key != NULL)
            p->key_seq = sb_broker__key_put_begin(b, p->dedup_key);
        append_early(b, p);
    }
    return 0;

fail:
    b->refused++;
    pending_free(b, p);
    return rc;
}

/* Queues the retained values matching a new subscription's filters into
 * its queue, oldest first, so a late subscriber starts with the current
 * state. */
typedef struct retained_match {
    uint64_t gen;
    sb_message **items;
    size_t count, cap;
    int failed;
} retained_match;

static void collect_retained(void *value, void *ctx)
{
    retained_match *m = ctx;
    sb_retained *r = value;
    /* once, however many of the filters match its topic */
    if (m->failed || r->gen == m->gen)
        return;
    r->gen = m->gen;
    if (m->count == m->cap) {
        size_t ncap = m->cap == 0 ? 16 : m->cap * 2;
        sb_message **n = sb_realloc(m->items, ncap * sizeof(*n));
        if (n == NULL) {
            m->failed = 1;
            return;
        }
        m->items = n;
        m->cap = ncap;
    }
    m->items[m->count++] = r->msg;
}

static int by_id(const void *a, const void *b)
{
    const sb_message *x = *(sb_message *const *)a, *y = *(sb_message *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The retained publishes in flight (routed, not completed) that filters
 * match, in the pending list's order (their ids'). */
static int pending_retained(const sb_pending *p, const sb_sub_filter *filters, size_t count)
{
    return p->retain && sb_topic_match_any(filters, count, p->msg->topic);
}

/* Then come copies of the retained publishes in flight that the filters
 * match: they were routed before the subscription existed, and its
 * retained value is the older one until they commit. Each copy goes to the
 * subscription as the publish goes (as if it had subscribed just before
 * the publish: a normal message, the empty one that clears a value too),
 * and nowhere if the store refuses the publish (see complete()). */
int sb_broker__retained_prepare(sb_broker *b, const sb_sub_filter *filters, size_t count,
                                sb_retained_batch *out)
{
    retained_match m = {++b->retained_gen, NULL, 0, 0, 0};
    sb_pending **ps = NULL, *lead = b->pending_head;
    size_t inflight = 0;

    out->items = NULL;
    out->count = 0;
    for (size_t i = 0; i < count; i++)
        sb_subindex_match_filter(&b->retained_topics, filters[i].filter, strlen(filters[i].filter),
                                 collect_retained, &m);
    if (m.failed)
        goto oom;
    for (const sb_pending *p = b->pending_head; p != NULL && b->retained_inflight > 0; p = p->next)
        inflight += pending_retained(p, filters, count);
    if (m.count + inflight == 0)
        return 0;
    if (m.count > 1)
        qsort(m.items, m.count, sizeof(*m.items), by_id);
    if ((ps = sb_calloc(m.count + inflight, sizeof(*ps))) == NULL)
        goto oom;
    out->items = ps;
    for (size_t i = 0; i < m.count + inflight; i++) {
        const sb_message *v;
        sb_message *copy;
        sb_pending *p;
        if (i >= m.count)
            while (!pending_retained(lead, filters, count))
                lead = lead->next;
        v = i < m.count ? m.items[i] : lead->msg;
        copy = sb_message_new(v->topic, v->payload, v->payload_len);
        p = copy != NULL ? sb_calloc(1, sizeof(*p)) : NULL;
        if (p == NULL) {
            sb_message_unref(copy);
            goto oom;
        }
        p->msg = copy;
        p->queues = p->queues_inline;
        p->queue_ids = p->ids_inline;
        p->queue_count = 1;
        ps[out->count++] = p;
        if (reserve_entries(b, p) != 0)
            goto oom;
        for (size_t h = 0; h < v->header_count; h++)
            if (sb_message_add_header(copy, v->headers[h].key, v->headers[h].value) != 0)
                goto oom;
        copy->created_ms = v->created_ms;
        if (i >= m.count) {
            p->leader = lead;
            copy->expires_ms = v->expires_ms;
            copy->priority = v->priority;
            lead = lead->next;
        } else if (sb_message_add_header(copy, "retained", "true") != 0) {
            goto oom;
        }
    }
    sb_free(m.items);
    return 0;
oom:
    sb_free(m.items);
    sb_broker__retained_discard(out);
    return SB_ENOMEM;
}

void sb_broker__retained_discard(sb_retained_batch *batch)
{
    for (size_t i = 0; i < batch->count; i++)
        pending_free(NULL, batch->items[i]);
    sb_free(batch->items);
    batch->items = NULL;
    batch->count = 0;
}

/* 1 if q is to get a copy of p, a retained publish in flight: one of its
 * filters matches (not only the filter a retained lookup was made for),
 * and it was not routed to q nor copied to it already. */
static int copy_wanted(const sb_pending *p, const sb_queue *q)
{
    if (!sb_topic_match_any(q->filters, q->filter_count, p->msg->topic))
        return 0;
    for (size_t i = 0; i < p->queue_count; i++)
        if (p->queues[i] == q)
            return 0;
    for (const sb_pending *f = p->followers; f != NULL; f = f->follow_next)
        if (f->queues[0] == q)
            return 0;
    return 1;
}

void sb_broker__retained_queue(sb_broker *b, sb_queue *q, sb_retained_batch *batch)
{
    for (size_t i = 0; i < batch->count; i++) {
        sb_pending *p = batch->items[i];
        sb_message *copy = p->msg;
        if (p->leader != NULL && !copy_wanted(p->leader, q)) {
            pending_free(NULL, p);
            continue;
        }
        /* A retained copy gets a new id so the queue stays in id order. */
        copy->id = ++b->last_msg_id;
        p->broker = b;
        p->queues[0] = q;
        p->queue_ids[0] = q->id;
        p->queue_count = 1;
        q->pending++;
        q->pending_bytes += (int64_t)sb_message_size(copy);
        pending_push(b, p);
        if (p->leader != NULL) { /* goes on when its publish completes */
            p->follow_next = p->leader->followers;
            p->leader->followers = p;
        }
        if (q->durability == SB_DURABILITY_MEMORY) {
            if (p->leader == NULL) {
                p->done = 1;
                sb_broker__arm_flush(b);
            }
            continue;
        }
        p->op.type = SB_OP_PUBLISH;
        p->op.sync = q->durability == SB_DURABILITY_FSYNC;
        p->op.cb = on_publish_committed;
        p->op.ctx = p;
        p->op.u.publish.msg = copy;
        p->op.u.publish.queue_ids = p->queue_ids;
        p->op.u.publish.queue_count = 1;
        if (sb_store_submit(b->store, &p->op) != 0) {
            p->done = 1;
            p->status = SB_ESHUTDOWN;
            sb_broker__arm_flush(b);
        } else if (p->leader != NULL) {
            p->row_waits = 1;
            q->copy_rows++;
        }
    }
    sb_free(batch->items); /* the pendings are now owned by b */
    batch->items = NULL;
    batch->count = 0;
}

int sb_broker__enqueue_retained(sb_broker *b, sb_queue *q, const sb_sub_filter *filters,
                                size_t count)
{
    sb_retained_batch batch;
    int rc = sb_broker__retained_prepare(b, filters, count, &batch);
    if (rc == 0)
        sb_broker__retained_queue(b, q, &batch);
    return rc;
}

/* Loader callbacks (broker.c calls the store loaders with these). */
int sb_broker__load_retained(void *ctx, sb_message *msg)
{
    sb_broker *b = ctx;
    retain_set(b, msg);
    sb_message_unref(msg);
    return 0;
}

int sb_broker__load_dedup(void *ctx, const char *key, int64_t expires_ms)
{
    return sb_broker__key_add(ctx, key, expires_ms);
}
