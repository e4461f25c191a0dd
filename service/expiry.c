/*
 * Client subscriptions that expire: one whose `expire_ms` is set is deleted,
 * with its messages, once no consumer has been attached to it for that long
 * (an MQTT persistent session whose client stays away; RabbitMQ calls it a
 * queue's `expires`).
 *
 * The idle queues that can expire are kept in a list by deadline, with one
 * timer for the earliest: nothing scans the queues. Deadlines are loop
 * (monotonic) time and are not stored: after a restart a queue counts from
 * the start, the time its consumers were last seen to be gone.
 */
#include "service/broker_int.h"
#include "service/log.h"

static void on_expiry_timer(uv_timer_t *t);

static int64_t deadline(const sb_queue *q)
{
    return q->idle_since_ms + q->expire_ms;
}

static void unlist(sb_broker *b, sb_queue *q)
{
    if (!q->idle_listed)
        return;
    if (q->idle_prev != NULL)
        q->idle_prev->idle_next = q->idle_next;
    else
        b->idle_head = q->idle_next;
    if (q->idle_next != NULL)
        q->idle_next->idle_prev = q->idle_prev;
    else
        b->idle_tail = q->idle_prev;
    q->idle_prev = q->idle_next = NULL;
    q->idle_listed = 0;
}

/* Inserted by deadline, searched from the tail: queues mostly go idle in
 * the order they expire. */
static void list_in_order(sb_broker *b, sb_queue *q)
{
    sb_queue *after = b->idle_tail;
    while (after != NULL && deadline(after) > deadline(q))
        after = after->idle_prev;
    q->idle_prev = after;
    q->idle_next = after != NULL ? after->idle_next : b->idle_head;
    if (q->idle_next != NULL)
        q->idle_next->idle_prev = q;
    else
        b->idle_tail = q;
    if (after != NULL)
        after->idle_next = q;
    else
        b->idle_head = q;
    q->idle_listed = 1;
}

static void arm(sb_broker *b)
{
    int64_t now = (int64_t)uv_now(&b->loop), due;
    if (b->idle_head == NULL || b->stopping) {
        uv_timer_stop(&b->expiry_timer);
        return;
    }
    due = deadline(b->idle_head);
    uv_timer_start(&b->expiry_timer, on_expiry_timer, (uint64_t)(due > now ? due - now : 0), 0);
}

void sb_broker__expiry_update(sb_broker *b, sb_queue *q)
{
    int can_expire = q->live && !q->from_config && q->expire_ms > 0 && q->consumers == NULL;
    int was_head = b->idle_head == q;
    if (!can_expire) {
        unlist(b, q);
    } else {
        if (!q->idle_listed)
            q->idle_since_ms = (int64_t)uv_now(&b->loop);
        unlist(b, q); /* expire_ms may have changed: listed again in its place */
        list_in_order(b, q);
    }
    if (was_head || b->idle_head == q)
        arm(b);
}

void sb_broker__expiry_remove(sb_broker *b, sb_queue *q)
{
    int was_head = b->idle_head == q;
    unlist(b, q);
    if (was_head)
        arm(b);
}

static void on_expiry_timer(uv_timer_t *t)
{
    sb_broker *b = t->data;
    int64_t now = (int64_t)uv_now(&b->loop);
    sb_queue *q;
    while (!b->stopping && (q = b->idle_head) != NULL && deadline(q) <= now) {
        sb_error err;
        unlist(b, q);
        sb_info(q->name,
                "no consumer for %lld s (expires after %lld s without one): deleting the "
                "subscription",
                (long long)((now - q->idle_since_ms) / 1000), (long long)(q->expire_ms / 1000));
        if (sb_broker_unsubscribe(b, q->name, &err) != 0)
            sb_errlog(q->name, "cannot delete the expired subscription: %s", err.msg);
    }
    arm(b);
}

int sb_broker_sub_set_expiry(sb_broker *b, const char *name, int64_t expire_ms, sb_error *err)
{
    sb_queue *q = sb_broker__find_queue(b, name);
    if (q == NULL)
        return sb_error_set(err, SB_ENOTFOUND, 0, "no subscription %s", name);
    if (q->from_config)
        return sb_error_set(err, SB_EACCES, 0, "subscription %s is declared by a route", name);
    if (expire_ms < 0)
        expire_ms = 0;
    if (q->expire_ms == expire_ms)
        return 0;
    q->expire_ms = expire_ms;
    sb_broker__expiry_update(b, q);
    sb_broker__put_queue(b, q);
    return 0;
}
