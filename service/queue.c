/* Subscription queues: delivery order, leases, retries, acks (see queue_int.h). */
#include "service/queue_int.h"
#include "service/remote.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/transform.h"

#include <stdio.h>
#include <string.h>

/* ---- intrusive lists ---- */

static void fifo_push(sb_entry_list *l, sb_entry *e)
{
    e->next = NULL;
    e->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = e;
    else
        l->head = e;
    l->tail = e;
}

static void fifo_unlink(sb_entry_list *l, sb_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        l->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        l->tail = e->prev;
    e->next = e->prev = NULL;
}

static void state_unlink(sb_entry_list *l, sb_entry *e)
{
    if (e->sprev != NULL)
        e->sprev->snext = e->snext;
    else
        l->head = e->snext;
    if (e->snext != NULL)
        e->snext->sprev = e->sprev;
    else
        l->tail = e->sprev;
    e->snext = e->sprev = NULL;
}

/* Inserts by deadline, equal deadlines in message order (entries a detached
 * consumer held return in the order they came). Usually appends. */
static void state_insert(sb_entry_list *l, sb_entry *e)
{
    sb_entry *at = l->tail;
    while (at != NULL && (at->deadline > e->deadline ||
                          (at->deadline == e->deadline && at->msg->id > e->msg->id)))
        at = at->sprev;
    e->sprev = at;
    e->snext = at != NULL ? at->snext : l->head;
    if (e->snext != NULL)
        e->snext->sprev = e;
    else
        l->tail = e;
    if (at != NULL)
        at->snext = e;
    else
        l->head = e;
}

/* ---- rates ---- */

void sb_rate__add(sb_rate *r, int64_t now_sec, uint64_t n)
{
    int i = (int)(now_sec % SB_RATE_SLOTS);
    if (r->slot_sec[i] != now_sec) {
        r->slot_sec[i] = now_sec;
        r->slot_count[i] = 0;
    }
    r->slot_count[i] += n;
}

double sb_rate__per_sec(const sb_rate *r, int64_t now_sec)
{
    uint64_t total = 0;
    for (int i = 0; i < SB_RATE_SLOTS; i++)
        if (r->slot_sec[i] > now_sec - SB_RATE_SLOTS && r->slot_sec[i] <= now_sec)
            total += r->slot_count[i];
    return (double)total / SB_RATE_SLOTS;
}

/* ---- queue ---- */

static void on_timer(uv_timer_t *t);

sb_queue *sb_queue__new(sb_broker *b, uint32_t id, const char *name, const sb_sub_filter *filters,
                        size_t filter_count)
{
    sb_queue *q = sb_calloc(1, sizeof(*q));
    sb_sub_settings defaults;
    int oom = 0;
    if (q == NULL)
        return NULL;
    q->broker = b;
    q->id = id;
    q->name = sb_strdup(name);
    q->filters = sb_sub_filters_copy(filters, filter_count, &oom);
    q->filter_count = filter_count;
    if (q->name == NULL || oom) {
        sb_free(q->name);
        sb_free(q->filters);
        sb_free(q);
        return NULL;
    }
    sb_sub_settings_default(&defaults);
    sb_queue__apply_settings(q, &defaults);
    uv_timer_init(sb_broker_loop(b), &q->timer);
    q->timer.data = q;
    q->live = 1;
    return q;
}

/* The class a queue takes: one with messages in the store stays durable
 * until they were delivered. A memory queue neither reads nor deletes
 * rows: those only in the store would wait for a restart, and those of its
 * window (or of publishes and redriven dead letters on their way to it)
 * would stay after their acknowledgement, to be delivered again after a
 * restart. Nor would messages acknowledged to their producers as durable
 * still be. */
static sb_durability durability_for(sb_queue *q, sb_durability want)
{
    int64_t stored = sb_queue__total_depth(q) + q->pending + q->redriving;
    if (want != SB_DURABILITY_MEMORY || stored <= 0 || q->durability == SB_DURABILITY_MEMORY)
        return want;
    sb_log(SB_LOG_WARN, q->name,
           "durability: memory is not applied while %lld messages are stored; the queue "
           "stays durable (reload again once they were delivered)",
           (long long)stored);
    return q->durability;
}

void sb_queue__apply_settings(sb_queue *q, const sb_sub_settings *s)
{
    q->durability = durability_for(q, s->durability);
    q->max_attempts = s->max_attempts;
    q->backoff_ms = 100;
    q->max_backoff_ms = 60000;
    q->ttl_ms = s->ttl_ms;
    q->max_depth = s->max_depth;
    q->max_bytes = 0;
    q->lease_ms = s->lease_ms;
    q->overflow = s->overflow;
    q->retain = 0;
    q->expire_ms = s->expire_ms;
    sb_queue__set_transform(q, NULL);
}

void sb_queue__set_transform(sb_queue *q, sb_transform *t)
{
    sb_transform_free(q->transform);
    q->transform = t;
}

static int64_t entry_expiry(const sb_queue *q, const sb_message *m);

/* The TTL changed (a route applied at start or by a reload): the window's
 * entries expire by the new one; stored ones are looked at in the store. */
static void refresh_expiry(sb_queue *q)
{
    int64_t before = q->expiring;
    q->expiring = 0;
    for (sb_entry *e = q->fifo.head; e != NULL; e = e->next) {
        e->expires_ms = entry_expiry(q, e->msg);
        q->expiring += e->expires_ms != 0;
    }
    if ((before > 0) != (q->expiring > 0) || q->disk_depth > 0)
        sb_queue__watch_expiry(q);
}

void sb_queue__apply_route(sb_queue *q, const sb_route_config *r)
{
    q->route = r;
    q->durability = durability_for(q, r->durability);
    q->max_attempts = r->max_attempts;
    q->backoff_ms = r->backoff_ms;
    q->max_backoff_ms = r->max_backoff_ms;
    q->ttl_ms = r->ttl_ms;
    q->max_depth = r->max_depth;
    q->max_bytes = r->max_bytes;
    q->overflow = r->overflow;
    q->lease_ms = r->lease_ms;
    q->retain = r->retain;
    refresh_expiry(q);
    sb_free(q->dedup_header);
    q->dedup_header = r->dedup_header != NULL ? sb_strdup(r->dedup_header) : NULL;
    q->dedup_window_ms = r->dedup_window_ms;
}

static int64_t entry_expiry(const sb_queue *q, const sb_message *m)
{
    int64_t exp = m->expires_ms;
    if (q->ttl_ms > 0 && (exp == 0 || m->created_ms + q->ttl_ms < exp))
        exp = m->created_ms + q->ttl_ms;
    return exp;
}

int sb_queue__append(sb_queue *q, sb_message *msg, int attempts)
{
    sb_entry *e;
    if (sb_queue__stays_stored(q, msg))
        return 0;
    e = sb_broker__entry_get(q->broker);
    if (e == NULL)
        return SB_ENOMEM;
    sb_queue__append_entry(q, e, msg, attempts);
    return 0;
}

int64_t sb_queue__total_depth(const sb_queue *q)
{
    return q->depth + q->disk_depth;
}

int64_t sb_queue__total_bytes(const sb_queue *q)
{
    return q->bytes + q->disk_bytes;
}

void sb_queue__watch_expiry(sb_queue *q)
{
    sb_broker__watch_expiry(q, q->expiring > 0 ||
                                   (q->disk_depth > 0 && (q->ttl_ms > 0 || q->disk_expiring)));
}

/* Counts a published message (window or store). */
static void count_published(sb_queue *q)
{
    if (!q->sys_dirty)
        sb_broker__queue_changed(q);
    q->published++;
    sb_rate__add(&q->in_rate, (int64_t)(uv_now(sb_broker_loop(q->broker)) / 1000), 1);
}

int sb_queue__fits_window(const sb_queue *q, int64_t size)
{
    return q->disk_depth == 0 && q->page_op == NULL && q->depth < sb_paging__window(q) &&
           sb_paging__room(q, size);
}

int sb_queue__stays_stored(sb_queue *q, const sb_message *msg)
{
    int64_t size;
    if (q->durability == SB_DURABILITY_MEMORY)
        return 0; /* nowhere else to be */
    size = (int64_t)sb_message_size(msg);
    if (sb_queue__fits_window(q, size))
        return 0;
    q->disk_depth++;
    q->disk_bytes += size;
    if (q->page_op != NULL && msg->id > q->page_snap) {
        q->snap_depth++;
        q->snap_bytes += size;
    }
    if (msg->expires_ms != 0)
        q->disk_expiring = 1;
    count_published(q);
    if (q->disk_depth == 1)
        sb_queue__watch_expiry(q);
    return 1;
}

/* Links e into the window. */
static void link_entry(sb_queue *q, sb_entry *e, sb_message *msg, int attempts)
{
    memset(e, 0, sizeof(*e));
    e->msg = sb_message_ref(msg);
    e->queue = q;
    e->attempts = attempts;
    e->expires_ms = entry_expiry(q, msg);
    e->state = SB_ENTRY_READY;
    fifo_push(&q->fifo, e);
    if (q->cursor == NULL)
        q->cursor = e;
    if (e->expires_ms != 0 && q->expiring++ == 0)
        sb_queue__watch_expiry(q);
    if (!q->sys_dirty)
        sb_broker__queue_changed(q);
    q->depth++;
    q->bytes += (int64_t)sb_message_size(msg);
    sb_paging__resident(q, (int64_t)sb_message_size(msg));
    if (msg->id > q->paged_to)
        q->paged_to = msg->id;
}

void sb_queue__append_entry(sb_queue *q, sb_entry *e, sb_message *msg, int attempts)
{
    link_entry(q, e, msg, attempts);
    count_published(q);
}

void sb_queue__append_paged(sb_queue *q, sb_entry *e, sb_message *msg, int attempts, int offered)
{
    link_entry(q, e, msg, attempts);
    e->offered = offered;
}

/* Drops e's parts not handed out yet (those sent belong to their
 * deliveries). */
static void drop_parts(sb_queue *q, sb_entry *e)
{
    for (size_t i = e->parts_sent; e->parts != NULL && i < e->nparts; i++)
        sb_message_unref(e->parts[i]);
    sb_free(e->parts);
    e->parts = NULL;
    e->nparts = e->parts_sent = e->parts_acked = 0;
    if (q->fanning == e)
        q->fanning = NULL;
}

static void free_entry(sb_entry *e)
{
    sb_queue *q = e->queue;
    if (e->pending != NULL)
        sb_broker__entry_gone(e);
    if (e->expires_ms != 0 && --q->expiring == 0)
        sb_queue__watch_expiry(q);
    drop_parts(q, e);
    sb_message_unref(e->msg);
    sb_broker__entry_put(q->broker, e);
}

/* Removes finished entries from the head, extending the pending ack range. */
static void pop_done(sb_queue *q)
{
    sb_entry *e;
    int durable = q->durability != SB_DURABILITY_MEMORY;
    while ((e = q->fifo.head) != NULL && e->state == SB_ENTRY_DONE) {
        fifo_unlink(&q->fifo, e);
        if (durable && !e->persisted_done) {
            if (!q->ack_queued || q->ack_last == 0) {
                q->ack_first = e->msg->id;
                q->ack_rows = q->ack_bytes = 0;
            }
            q->ack_last = e->msg->id;
            q->ack_rows++;
            q->ack_bytes += (int64_t)sb_message_size(e->msg);
            sb_broker__schedule_ack_flush(q->broker, q);
        }
        free_entry(e);
    }
}

void sb_queue__flush_acks(sb_queue *q)
{
    if (q->ack_last != 0)
        sb_broker__store_ack(q->broker, q, q->ack_first, q->ack_last, q->ack_rows, q->ack_bytes);
    q->ack_first = q->ack_last = 0;
    q->ack_rows = q->ack_bytes = 0;
}

/* Marks e finished: it leaves every list but the FIFO (popped when at head). */
static void finish(sb_queue *q, sb_entry *e)
{
    if (e->state == SB_ENTRY_LEASED)
        state_unlink(&q->leased, e);
    else if (e->state == SB_ENTRY_RETRY)
        state_unlink(&q->retry, e);
    if (q->cursor == e) {
        sb_entry *n = e->next;
        while (n != NULL && n->state != SB_ENTRY_READY)
            n = n->next;
        q->cursor = n;
    }
    e->state = SB_ENTRY_DONE;
    if (!q->sys_dirty)
        sb_broker__queue_changed(q);
    q->depth--;
    q->bytes -= (int64_t)sb_message_size(e->msg);
    sb_paging__resident(q, -(int64_t)sb_message_size(e->msg));
}

static void settle(sb_queue *q, sb_entry *e, int persisted)
{
    int at_head = q->fifo.head == e;
    finish(q, e);
    /* Done before its message was written: no row to delete, and none to
     * write if the store has not begun the publish yet. */
    if (!persisted && (e->unstored || (e->pending != NULL && sb_broker__cancel_insert(e))))
        persisted = 1;
    if (persisted) {
        e->persisted_done = 1;
    } else if (!at_head && q->durability != SB_DURABILITY_MEMORY) {
        /* Out-of-order ack: delete this row now rather than wait for the head. */
        sb_broker__store_ack(q->broker, q, e->msg->id, e->msg->id, 1,
                             (int64_t)sb_message_size(e->msg));
        e->persisted_done = 1;
    }
    pop_done(q);
}

int sb_delivery_withdrawn(const sb_delivery *d)
{
    return d->entry != NULL ? d->entry->unstored : d->withdrawn;
}

void sb_queue__withdraw(sb_queue *q, sb_entry *e)
{
    if (e->state == SB_ENTRY_DONE)
        return; /* acknowledged already */
    if (e->state != SB_ENTRY_LEASED) {
        settle(q, e, 1);
        return;
    }
    e->unstored = 1;
    if (e->parts != NULL && e->parts_sent < e->nparts) {
        /* Fanned out: the parts not handed out yet go with it, and it is
         * done once those in flight are. */
        for (size_t i = e->parts_sent; i < e->nparts; i++)
            sb_message_unref(e->parts[i]);
        e->nparts = e->parts_sent;
        if (q->fanning == e)
            q->fanning = NULL;
        if (e->parts_acked == e->nparts)
            settle(q, e, 1);
    }
}

static int64_t backoff_for(const sb_queue *q, int attempts)
{
    int64_t d = q->backoff_ms;
    for (int i = 1; i < attempts && d < q->max_backoff_ms; i++)
        d *= 2;
    return d > q->max_backoff_ms ? q->max_backoff_ms : d;
}

static sb_consumer *pick_consumer(sb_queue *q);

static int has_capacity(const sb_queue *q)
{
    for (const sb_consumer *c = q->consumers; c != NULL; c = c->next)
        if (!c->busy && c->inflight < c->window)
            return 1;
    return 0;
}

/* Arms the timer for the next lease end or retry. Lazily: a timer that
 * fires no later than needed is left alone (on_timer re-arms it for what is
 * left), and one no longer needed fires once for nothing, rather than
 * being stopped and started again around every delivery: with thousands of
 * queues each taking a message now and then, that churned the loop's
 * timer heap on every message. */
static void arm_timer(sb_queue *q)
{
    int64_t next = -1, now = (int64_t)uv_now(sb_broker_loop(q->broker));
    if (q->leased.head != NULL)
        next = q->leased.head->deadline;
    /* Retries wait for a consumer with room; sb_consumer_ready re-dispatches. */
    if (q->retry.head != NULL && has_capacity(q) && (next < 0 || q->retry.head->deadline < next))
        next = q->retry.head->deadline;
    if (next < 0 || (q->timer_armed && q->timer_due <= next))
        return;
    uv_timer_start(&q->timer, on_timer, (uint64_t)(next > now ? next - now : 0), 0);
    q->timer_armed = 1;
    q->timer_due = next;
}

/* A failed attempt: retry after backoff, or dead-letter. */
static void fail_entry(sb_queue *q, sb_entry *e, const char *reason, int count_attempt)
{
    if (e->unstored) {
        settle(q, e, 1); /* its publish failed: nothing to retry */
        return;
    }
    if (count_attempt)
        e->attempts++;
    if (e->state == SB_ENTRY_LEASED)
        state_unlink(&q->leased, e);
    if (count_attempt && e->attempts >= q->max_attempts) {
        char why[300];
        snprintf(why, sizeof(why), "%s (after %d attempts)", reason, e->attempts);
        e->state = SB_ENTRY_READY; /* finish() handles it from here */
        sb_broker__deadletter(q->broker, q, e, why);
        settle(q, e, 1);
        return;
    }
    e->state = SB_ENTRY_RETRY;
    e->deadline = (int64_t)uv_now(sb_broker_loop(q->broker)) +
                  (count_attempt ? backoff_for(q, e->attempts) : 0);
    state_insert(&q->retry, e);
    if (count_attempt && q->durability != SB_DURABILITY_MEMORY)
        sb_broker__store_attempts(q->broker, q, e);
}

static sb_entry *next_entry(sb_queue *q, int64_t now)
{
    sb_entry *e = q->retry.head;
    if (e != NULL && e->deadline <= now) {
        state_unlink(&q->retry, e);
        e->state = SB_ENTRY_READY;
        return e;
    }
    e = q->cursor;
    if (e != NULL) {
        sb_entry *n = e->next;
        while (n != NULL && n->state != SB_ENTRY_READY)
            n = n->next;
        q->cursor = n;
    }
    return e;
}

static sb_consumer *pick_consumer(sb_queue *q)
{
    sb_consumer *start = q->rr != NULL ? q->rr : q->consumers, *c = start;
    if (c == NULL)
        return NULL;
    do {
        sb_consumer *next = c->next != NULL ? c->next : q->consumers;
        if (!c->busy && c->inflight < c->window) {
            q->rr = next;
            return c;
        }
        c = next;
    } while (c != start);
    return NULL;
}

static void outstanding_add(sb_consumer *c, sb_delivery *d)
{
    d->oprev = NULL;
    d->onext = c->outstanding;
    if (c->outstanding != NULL)
        c->outstanding->oprev = d;
    c->outstanding = d;
    c->inflight++;
}

static void outstanding_remove(sb_consumer *c, sb_delivery *d)
{
    if (d->oprev != NULL)
        d->oprev->onext = d->onext;
    else
        c->outstanding = d->onext;
    if (d->onext != NULL)
        d->onext->oprev = d->oprev;
    c->inflight--;
}

static void delivery_free(sb_queue *q, sb_delivery *d)
{
    if (d->pending != NULL)
        sb_broker__orphan_gone(d);
    if (d->shaped != NULL)
        sb_message_unref(d->shaped);
    if (q != NULL)
        sb_broker__delivery_put(q->broker, d);
    else
        sb_free(d); /* (a consumer with no queue holds none) */
}

/* A delivery of e to c, from the broker's free list; NULL on out-of-memory. */
static sb_delivery *delivery_new(sb_queue *q, sb_entry *e, sb_consumer *c, sb_message *shaped)
{
    sb_delivery *d = sb_broker__delivery_get(q->broker);
    if (d == NULL)
        return NULL;
    memset(d, 0, sizeof(*d));
    d->shaped = shaped;
    d->msg = shaped != NULL ? shaped : e->msg;
    d->sub = q->name;
    d->attempt = e->attempts + 1;
    d->consumer = c;
    d->entry = e;
    return d;
}

static void entry_link(sb_entry *e, sb_delivery *d)
{
    d->enext = e->delivery;
    e->delivery = d;
}

static void entry_unlink(sb_entry *e, sb_delivery *d)
{
    for (sb_delivery **p = &e->delivery; *p != NULL; p = &(*p)->enext)
        if (*p == d) {
            *p = d->enext;
            break;
        }
    d->enext = NULL;
}

/* e failed or its lease ended: its deliveries still in flight no longer
 * count for it (each keeps a reference to its message until
 * sb_delivery_done, which then only frees it), and parts not handed out
 * are dropped: a retry runs the transform again. */
static void abandon(sb_queue *q, sb_entry *e)
{
    while (e->delivery != NULL) {
        sb_delivery *d = e->delivery;
        e->delivery = d->enext;
        d->enext = NULL;
        sb_message_ref(d->msg);
        d->entry = NULL;
        /* what sb_delivery_withdrawn says of it must still hold */
        if (e->pending != NULL)
            sb_broker__orphan(e, d);
        else
            d->withdrawn = e->unstored;
    }
    drop_parts(q, e);
}

/* Out of memory: put e back and try again on the next event. */
static void retry_soon(sb_queue *q, sb_entry *e, int64_t now)
{
    e->deadline = now + 100;
    e->state = SB_ENTRY_RETRY;
    state_insert(&q->retry, e);
}

/* Runs the queue's transform on e's message for this delivery (the stored
 * message stays as it is). Returns 0 with *out the copies to deliver, 1 when
 * e is settled here (a when: condition did not hold: acknowledged and
 * counted; the transform failed: dead-lettered with its reason, as a
 * retry would fail alike), or SB_ENOMEM. */
static int shape(sb_queue *q, sb_entry *e, sb_message ***out, size_t *count)
{
    char why[300], reason[340];
    int rc = sb_transform_apply_all(q->transform, e->msg, out, count, why, sizeof why);
    if (rc == SB_TRANSFORM_SKIP) {
        q->filtered++;
        settle(q, e, 0);
        return 1;
    }
    if (rc == SB_EINVAL) {
        snprintf(reason, sizeof reason, "transform: %s", why);
        sb_broker__deadletter(q->broker, q, e, reason);
        settle(q, e, 1);
        return 1;
    }
    return rc;
}

/* Hands the next part of q->fanning to c. 0, 1 if c refused it (now
 * busy), SB_ENOMEM. */
static int offer_part(sb_queue *q, sb_consumer *c, int64_t now)
{
    sb_entry *e = q->fanning;
    sb_delivery *d = delivery_new(q, e, c, e->parts[e->parts_sent]);
    if (d == NULL)
        return SB_ENOMEM;
    d->redelivery = e->parts_redelivery;
    entry_link(e, d);
    outstanding_add(c, d);
    /* the lease runs from the last part handed out */
    state_unlink(&q->leased, e);
    e->deadline = now + q->lease_ms;
    state_insert(&q->leased, e);
    /* before the call: a consumer may finish d in it, and e with it */
    if (++e->parts_sent == e->nparts)
        q->fanning = NULL;
    if (c->deliver(c, d) != 0) {
        e->parts_sent--;
        q->fanning = e;
        entry_unlink(e, d);
        outstanding_remove(c, d);
        d->shaped = NULL; /* still e's part */
        delivery_free(q, d);
        c->busy = 1;
        return 1;
    }
    return 0;
}

void sb_queue__dispatch(sb_queue *q)
{
    int64_t now = (int64_t)uv_now(sb_broker_loop(q->broker));
    int64_t wall = 0;
    int was_offered;
    sb_message *shaped;

    if (q->dispatching || !q->live)
        return;
    q->dispatching = 1;
    for (;;) {
        sb_consumer *c = pick_consumer(q);
        sb_entry *e;
        sb_delivery *d;
        if (c == NULL)
            break;
        if (q->fanning != NULL) {
            if (offer_part(q, c, now) < 0)
                break; /* out of memory: the lease brings it back */
            continue;
        }
        e = next_entry(q, now);
        if (e == NULL)
            break;
        if (e->expires_ms != 0) {
            if (wall == 0)
                wall = sb_now_ms();
            if (wall >= e->expires_ms) {
                sb_broker__deadletter(q->broker, q, e, "expired (ttl)");
                q->expired++;
                settle(q, e, 1);
                continue;
            }
        }
        shaped = NULL;
        if (q->transform != NULL) {
            sb_message **msgs;
            size_t n;
            int rc = shape(q, e, &msgs, &n);
            if (rc > 0)
                continue; /* not for this destination, or dead-lettered */
            if (rc < 0) {
                retry_soon(q, e, now);
                break;
            }
            if (n > 1) {
                /* several messages: handed out in turn, from the next turn */
                e->parts = msgs;
                e->nparts = n;
                e->parts_sent = e->parts_acked = 0;
                e->parts_redelivery = e->offered || e->attempts > 0;
                e->offered = 1;
                e->state = SB_ENTRY_LEASED;
                e->deadline = now + q->lease_ms;
                state_insert(&q->leased, e);
                q->delivered++;
                q->fanning = e;
                continue;
            }
            shaped = msgs[0];
            sb_free(msgs);
        }
        d = delivery_new(q, e, c, shaped);
        if (d == NULL) {
            if (shaped != NULL)
                sb_message_unref(shaped);
            retry_soon(q, e, now);
            break;
        }
        d->redelivery = e->offered || e->attempts > 0;
        entry_link(e, d);
        e->state = SB_ENTRY_LEASED;
        e->deadline = now + q->lease_ms;
        state_insert(&q->leased, e);
        outstanding_add(c, d);
        q->delivered++;
        was_offered = e->offered;
        e->offered = 1; /* before the call: a consumer may finish d in it */
        if (c->deliver(c, d) != 0) {
            /* Not taken: undo without counting an attempt. */
            e->offered = was_offered;
            outstanding_remove(c, d);
            q->delivered--;
            entry_unlink(e, d);
            delivery_free(q, d);
            state_unlink(&q->leased, e);
            e->state = SB_ENTRY_RETRY;
            e->deadline = now;
            state_insert(&q->retry, e);
            c->busy = 1;
        }
    }
    q->dispatching = 0;
    arm_timer(q);
    sb_paging__fill(q);
}

void sb_delivery_done(sb_delivery *d, int status, const char *reason)
{
    sb_consumer *c = d->consumer;
    sb_entry *e = d->entry;
    sb_queue *q = c->queue;

    if (c->remote != NULL) {
        c->remote->ops->delivery_done(c->remote, d, status, reason);
        return;
    }
    outstanding_remove(c, d);
    if (e == NULL)
        sb_message_unref(d->msg); /* its own reference, taken when the lease expired */
    else
        entry_unlink(e, d);
    delivery_free(q, d);
    if (e != NULL) {
        if (status == 0) {
            if (e->nparts == 0 || ++e->parts_acked == e->nparts) {
                q->acked++;
                sb_rate__add(&q->out_rate, (int64_t)(uv_now(sb_broker_loop(q->broker)) / 1000), 1);
                settle(q, e, 0);
            } /* else: parts of it are still on their way */
        } else {
            q->nacked++;
            abandon(q, e);
            fail_entry(q, e, reason != NULL ? reason : "rejected by the consumer", 1);
        }
    }
    if (q != NULL)
        sb_queue__dispatch(q);
}

void sb_delivery_return(sb_delivery *d, const char *reason)
{
    sb_consumer *c = d->consumer;
    sb_entry *e = d->entry;
    sb_queue *q = c->queue;

    if (c->remote != NULL) {
        c->remote->ops->delivery_done(c->remote, d, SB_ECLOSED, reason);
        return;
    }
    outstanding_remove(c, d);
    if (e == NULL)
        sb_message_unref(d->msg); /* its own reference, taken when the lease expired */
    else
        entry_unlink(e, d);
    delivery_free(q, d);
    if (e != NULL) {
        q->nacked++;
        abandon(q, e);
        fail_entry(q, e, reason != NULL ? reason : "returned by the consumer", 0);
    }
    if (q != NULL)
        sb_queue__dispatch(q);
}

void sb_consumer_ready(sb_consumer *c)
{
    c->busy = 0;
    if (c->remote != NULL) {
        c->remote->ops->consumer_ready(c->remote, c);
        return;
    }
    if (c->queue != NULL)
        sb_queue__dispatch(c->queue);
}

static void on_timer(uv_timer_t *t)
{
    sb_queue *q = t->data;
    int64_t now = (int64_t)uv_now(sb_broker_loop(q->broker));
    sb_entry *e;

    q->timer_armed = 0;
    while ((e = q->leased.head) != NULL && e->deadline <= now) {
        if (e->delivery != NULL)
            sb_log(SB_LOG_WARN, q->name,
                   "delivery of message %llu to %s not acknowledged within %lld ms; will retry",
                   (unsigned long long)e->msg->id, e->delivery->consumer->name,
                   (long long)q->lease_ms);
        /* The consumer's late ack is ignored, but d->msg must stay valid
         * until sb_delivery_done (broker.h) even if the entry is settled
         * and freed first (through a redelivery to another consumer). */
        abandon(q, e);
        fail_entry(q, e, "lease expired", 1);
    }
    sb_queue__dispatch(q);
}

void sb_queue__detach_consumer(sb_queue *q, sb_consumer *c, int failed)
{
    sb_consumer **p;
    while (c->outstanding != NULL) {
        sb_delivery *d = c->outstanding;
        sb_entry *e = d->entry;
        outstanding_remove(c, d);
        if (e != NULL) {
            entry_unlink(e, d);
            abandon(q, e); /* its other parts, here or with other consumers */
            fail_entry(q, e, "the consumer disconnected before acknowledging", failed);
        } else {
            sb_message_unref(d->msg); /* lease expired: the delivery's own reference */
        }
        delivery_free(q, d);
    }
    for (p = &q->consumers; *p != NULL; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    if (q->rr == c)
        q->rr = NULL;
    c->queue = NULL;
    c->next = NULL;
    sb_queue__dispatch(q);
}

size_t sb_queue__drop_oldest(sb_queue *q, uint64_t *out, size_t n)
{
    size_t k = 0;
    for (sb_entry *e = q->fifo.head; e != NULL && k < n;) {
        sb_entry *next = e->next;
        if (e->state == SB_ENTRY_READY || e->state == SB_ENTRY_RETRY) {
            out[k++] = e->msg->id;
            q->dropped++;
            finish(q, e);
            e->persisted_done = 1;
        }
        e = next;
    }
    pop_done(q);
    return k;
}

static int over_limits(const sb_queue *q)
{
    return (q->max_depth > 0 && sb_queue__total_depth(q) > q->max_depth) ||
           (q->max_bytes > 0 && sb_queue__total_bytes(q) > q->max_bytes);
}

void sb_queue__trim(sb_queue *q)
{
    int behind_leased = 0; /* past an entry that stays: not in the head run */
    if (q->overflow != SB_OVERFLOW_DROP_OLDEST)
        return;
    for (sb_entry *e = q->fifo.head; e != NULL && over_limits(q); e = e->next) {
        if (e->state != SB_ENTRY_READY && e->state != SB_ENTRY_RETRY) {
            behind_leased |= e->state != SB_ENTRY_DONE;
            continue;
        }
        q->dropped++;
        finish(q, e);
        if (behind_leased && q->durability != SB_DURABILITY_MEMORY) {
            sb_broker__store_ack(q->broker, q, e->msg->id, e->msg->id, 1,
                                 (int64_t)sb_message_size(e->msg));
            e->persisted_done = 1;
        }
    }
    pop_done(q); /* the head run is deleted from the store with the acks */
    /* the window could not give enough: the oldest stored entries go */
    if (q->disk_depth > 0 && q->max_depth > 0 && sb_queue__total_depth(q) > q->max_depth)
        sb_paging__drop(q, sb_queue__total_depth(q) - q->max_depth);
    while (q->disk_depth > 0 && q->max_bytes > 0 && sb_queue__total_bytes(q) > q->max_bytes) {
        int64_t mean = q->disk_bytes / q->disk_depth,
                over = sb_queue__total_bytes(q) - q->max_bytes;
        if (!sb_paging__drop(q, mean > 0 ? (over + mean - 1) / mean : q->disk_depth))
            break; /* nothing dropped: the next trim tries again */
    }
}

void sb_queue__expire(sb_queue *q, int64_t now_ms)
{
    for (sb_entry *e = q->fifo.head; e != NULL;) {
        sb_entry *next = e->next;
        if (e->expires_ms == 0 || e->expires_ms > now_ms)
            break; /* entries expire roughly in FIFO order; dispatch catches the rest */
        if (e->state == SB_ENTRY_READY || e->state == SB_ENTRY_RETRY) {
            sb_broker__deadletter(q->broker, q, e, "expired (ttl)");
            q->expired++;
            settle(q, e, 1);
        }
        e = next;
    }
    if (q->disk_depth > 0)
        sb_paging__expire(q, now_ms);
}

void sb_queue__clear(sb_queue *q)
{
    while (q->consumers != NULL)
        sb_queue__detach_consumer(q, q->consumers, 0);
    while (q->fifo.head != NULL) {
        sb_entry *e = q->fifo.head;
        fifo_unlink(&q->fifo, e);
        free_entry(e);
    }
    q->leased.head = q->leased.tail = NULL;
    q->retry.head = q->retry.tail = NULL;
    q->cursor = NULL;
    sb_paging__resident(q, -q->bytes);
    q->fanning = NULL;
    q->depth = q->bytes = 0;
    /* ops under way find the queue gone or changed (paging.c) */
    q->disk_depth = q->disk_bytes = 0;
    q->page_op = q->trim_op = NULL;
    q->page_skip = 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    sb_queue *q = h->data;
    sb_free(q->name);
    sb_free(q->filters);
    sb_free(q->protocol);
    sb_free(q->owner);
    sb_free(q->dedup_header);
    sb_transform_free(q->transform);
    sb_free(q);
}

void sb_queue__close(sb_queue *q)
{
    sb_queue__clear(q);
    q->live = 0;
    uv_close((uv_handle_t *)&q->timer, on_timer_closed);
}
