/*
 * An out ring: the broker writes deliveries, one program consumes them.
 *
 * The loop writes each delivery into the ring as it gets it (the ring's only
 * writer needs no lock) and keeps it outstanding; the consumer reads and
 * releases records in order (sb_ring_next / sb_ring_release), and a release
 * acknowledges every delivery up to it. So a consumer that stops reading
 * makes the ring fill, then deliver() says busy and the queue holds the rest
 * (bounded by the route's limits); the route's `inflight` bounds what waits
 * in the ring.
 *
 * Deliveries go into the ring only while a consumer is attached (its pid in
 * the header, the process alive): with nobody there they wait in their
 * queue. A consumer that dies leaves what it had not released in the ring,
 * for the next one (the record it was reading comes again). A delivery
 * whose lease expired while it waited in the ring and that its queue offers
 * again is not written twice: it takes over the record already there.
 *
 * The thread only waits for the consumer (a release, a consumer coming or
 * going, and once a second for one that died) and pokes the loop, which
 * reads the cursor, checks it (a cursor going back, past what was written,
 * or into the middle of a record is corruption: the ring is quarantined)
 * and acknowledges.
 *
 * After a broker restart the records the previous broker wrote are dropped
 * from the ring when no consumer is attached (their queues deliver them
 * again); with a consumer attached they stay, and it may see them twice.
 */
#include "adapters/filemap/filemap_int.h"
#include "service/alloc.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>

/* ---- the thread ---- */

static int stopped(fm_adapter *a)
{
    return sbr_load32(&a->stop) != 0;
}

/* The consumer moved since the loop last looked (compared with what the
 * loop saw, not with what this thread saw: a release between the loop's
 * look and this thread's wait must still wake it). */
static int changed(void *ctx)
{
    fm_adapter *a = ctx;
    return stopped(a) || sbr_load64(&a->h->commit) != sbr_load64(&a->looked_commit) ||
           sbr_load32(&a->h->consumer_pid) != sbr_load32(&a->looked_pid);
}

static void on_poke(void *arg);

static void out_thread(void *arg)
{
    fm_adapter *a = arg;
    sb_fm__os_name_thread("sbring-out");
    for (;;) {
        uv_mutex_lock(&a->lock);
        while (!a->quit && a->poke_posted)
            uv_cond_wait(&a->cond, &a->lock); /* the loop has not looked yet */
        if (a->quit) {
            uv_mutex_unlock(&a->lock);
            return;
        }
        uv_mutex_unlock(&a->lock);
        /* A change, or a second gone by: a consumer that died says nothing. */
        (void)sb_fm__os_wait(a->os, SBR_WAKE_RELEASE, changed, a, SB_FM_CONSUMER_CHECK_MS);
        if (stopped(a))
            return;
        uv_mutex_lock(&a->lock);
        a->poke_posted = 1;
        uv_mutex_unlock(&a->lock);
        sb_fm__post(a, on_poke, a);
    }
}

/* ---- the loop ---- */

/* The consumer's cursor moved: acknowledges what it released. */
static void acknowledge(fm_adapter *a, uint64_t c)
{
    fm_out *done = NULL, **tail = &done;
    uint64_t last = a->out_commit;
    if (c < a->out_commit || c > a->out_reserve) {
        sb_fm__quarantine(a, c, "the consumer's cursor is out of bounds");
        return;
    }
    while (a->outs != NULL && a->outs->end <= c) {
        fm_out *o = a->outs;
        a->outs = o->next;
        if (a->outs == NULL)
            a->outs_tail = NULL;
        last = o->end;
        o->next = NULL;
        *tail = o;
        tail = &o->next;
    }
    /* A release ends a record: anywhere else is corruption (below run_start
     * the records are a previous broker's, whose ends it does not know). */
    if (c != last && c > a->run_start) {
        sb_fm__quarantine(a, c, "the consumer's cursor is not at the end of a record");
        c = last;
    }
    a->out_commit = c;
    /* sb_delivery_done may deliver again at once (into deliver()): the
     * released ones are off the list already. */
    while (done != NULL) {
        fm_out *o = done;
        done = o->next;
        sb_delivery_done(o->d, 0, NULL);
        sb_free(o);
    }
}

static void look(fm_adapter *a)
{
    uint32_t pid;
    uint64_t now, c;
    int present;

    if (a->closed)
        return;
    /* What the thread compares with: set even when nothing more is done
     * (quarantined), or it would poke again at once. */
    c = sbr_load64(&a->h->commit);
    sbr_store32(&a->looked_pid, sbr_load32(&a->h->consumer_pid));
    sbr_store64(&a->looked_commit, c);
    if (sbr_load32(&a->quarantined))
        return;
    acknowledge(a, c);
    if (sbr_load32(&a->quarantined))
        return;
    pid = sbr_load32(&a->h->consumer_pid);
    now = sb_fm__os_now_ms();
    if (pid == a->consumer_pid && now - a->consumer_checked < SB_FM_CONSUMER_CHECK_MS) {
        present = a->consumer;
    } else {
        present = pid != 0 && sb_fm__os_pid_alive(pid);
        a->consumer_checked = now;
    }
    if (present != a->consumer || pid != a->consumer_pid) {
        if (present)
            sb_log(SB_LOG_INFO, a->base.name, "%s: consumer pid %u attached", a->display, pid);
        else if (pid == 0)
            sb_log(SB_LOG_INFO, a->base.name, "%s: the consumer (pid %u) closed the ring",
                   a->display, a->consumer_pid);
        else
            sb_log(SB_LOG_WARN, a->base.name,
                   "%s: the consumer (pid %u) exited without closing the ring; what it had not "
                   "released waits in the ring for the next consumer",
                   a->display, pid);
        a->consumer = present;
        a->consumer_pid = pid;
    }
    if (a->consumer && a->sink_waiting) {
        a->sink_waiting = 0;
        sb_adapter_sink_ready(&a->base);
    }
}

static void on_poke(void *arg)
{
    fm_adapter *a = arg;
    uv_mutex_lock(&a->lock);
    a->poke_posted = 0;
    uv_cond_signal(&a->cond);
    uv_mutex_unlock(&a->lock);
    look(a);
}

int sb_fm__out_deliver(fm_adapter *a, sb_delivery *d)
{
    const sb_message *m = d->msg;
    size_t topic_len = strlen(m->topic), hl = sb_message_headers_size(m);
    uint64_t need = sbr_record_size(topic_len, hl, m->payload_len);
    char reason[300];
    sb_ring_rec *rec;
    fm_out *out;

    if (sbr_load32(&a->quarantined))
        return SB_EBUSY; /* the queue keeps them */
    if (!a->consumer) {
        a->sink_waiting = 1;
        return SB_EBUSY;
    }
    if (m->payload_len > a->max_payload || need == 0 || need > a->cap) {
        snprintf(reason, sizeof(reason),
                 "payload of %zu bytes does not fit %s (max_message %u, capacity %llu)",
                 m->payload_len, a->display, a->max_payload, (unsigned long long)a->cap);
        sb_log(SB_LOG_ERROR, a->base.name, "message %llu on %s refused (attempt %d): %s",
               (unsigned long long)m->id, d->sub, d->attempt, reason);
        sb_delivery_done(d, SB_ETOOBIG, reason);
        return 0;
    }
    if (d->redelivery) {
        /* Its lease expired while it waited in the ring: the record there
         * stands for the new delivery. */
        for (fm_out *x = a->outs; x != NULL; x = x->next)
            if (x->d->msg->id == m->id && x->d->entry == NULL) {
                sb_delivery *old = x->d;
                x->d = d;
                sb_delivery_done(old, 0, NULL); /* a late ack: ignored */
                return 0;
            }
    }
    out = sb_calloc(1, sizeof(*out));
    if (out == NULL)
        return SB_EBUSY;
    rec = sbr_place(a->data, a->cap, a->out_commit, &a->out_reserve, need, SB_RING_REC_READY);
    if (rec == NULL) {
        sb_free(out);
        a->sink_waiting = 1;
        return SB_EBUSY; /* full: the consumer's next release makes room */
    }
    rec->stamp = (uint64_t)m->created_ms;
    rec->msg_id = m->id;
    rec->attempt = (uint32_t)d->attempt;
    rec->flags = d->redelivery ? SB_RING_F_REDELIVERY : 0;
    rec->topic_len = (uint32_t)topic_len;
    rec->headers_len = (uint32_t)hl;
    rec->payload_len = (uint32_t)m->payload_len;
    memcpy(sbr_rec_topic(rec), m->topic, topic_len);
    sb_message_headers_write(m, (unsigned char *)sbr_rec_headers(rec));
    if (m->payload_len > 0)
        memcpy(sbr_rec_payload(rec), m->payload, m->payload_len);
    sbr_store64(&a->h->reserve, a->out_reserve); /* the consumer may read it */
    out->end = a->out_reserve;
    out->d = d;
    if (a->outs_tail != NULL)
        a->outs_tail->next = out;
    else
        a->outs = out;
    a->outs_tail = out;
    a->data_dirty = 1;
    sb_fm__flush_later(a);
    return 0;
}

int sb_fm__out_start(fm_adapter *a, sb_error *err)
{
    sb_ring_header *h = a->h;
    a->out_commit = sbr_load64(&h->commit);
    a->out_reserve = sbr_load64(&h->reserve);
    if (a->out_reserve != a->out_commit) {
        unsigned long long left = (unsigned long long)(a->out_reserve - a->out_commit);
        if (sb_fm__os_consumer_try(a->os)) {
            sbr_store64(&h->reserve, a->out_commit);
            sbr_store64(&h->read, a->out_commit);
            a->out_reserve = a->out_commit;
            sb_fm__os_consumer_release(a->os);
            sb_log(SB_LOG_INFO, a->base.name,
                   "%s: %llu bytes of deliveries a previous broker wrote and no consumer "
                   "released were taken out of the ring (their queues deliver them again)",
                   a->display, left);
        } else {
            sb_log(SB_LOG_WARN, a->base.name,
                   "%s: a consumer is attached: %llu bytes of deliveries a previous broker "
                   "wrote stay in the ring (their queues deliver them again: it may see them "
                   "twice)",
                   a->display, left);
        }
    }
    a->run_start = a->out_reserve;
    a->looked_commit = a->out_commit;
    a->consumer_pid = sbr_load32(&h->consumer_pid);
    a->looked_pid = a->consumer_pid;
    a->consumer = a->consumer_pid != 0 && sb_fm__os_pid_alive(a->consumer_pid);
    a->consumer_checked = sb_fm__os_now_ms();
    if (uv_thread_create(&a->thread, out_thread, a) != 0)
        return sb_error_set(err, SB_EIO, 0, "adapter %s: cannot start a thread", a->base.name);
    a->thread_started = 1;
    return 0;
}

void sb_fm__out_stop(fm_adapter *a)
{
    /* What waits in the ring stays there; its deliveries are the broker's
     * again once the adapter stopped (returned to their queues without
     * counting an attempt). */
    while (a->outs != NULL) {
        fm_out *o = a->outs;
        a->outs = o->next;
        sb_free(o);
    }
    a->outs_tail = NULL;
}
