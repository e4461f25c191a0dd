/*
 * An in ring: programs produce, the broker publishes.
 *
 * The reader thread walks the ring from the committed cursor and only
 * looks: each record is checked (sbr_peek) and described to the loop
 * (position, lengths) in a double-buffered list under the adapter's lock,
 * with one inbox post while the loop has not taken the last ones; pads are
 * skipped; a record still being written is waited for, and reclaimed
 * (marked abandoned, skipped, logged with the count) once its producer has
 * exited or the reclaim timeout passed. At most read_ahead records are
 * with the loop at once: beyond, the thread waits, and the ring fills. The
 * thread allocates nothing: messages are made, used and freed on the loop
 * thread (a message made on one thread and freed on another costs more in
 * the allocator than all the ring's own work).
 *
 * The loop copies each record out of the ring with the lengths the thread
 * saw and checks its copy (topic, headers), so a writer changing the record
 * meanwhile can make it refused, never read out of bounds; it publishes
 * the records in ring order. The committed cursor moves past a record only
 * once its publish callback reported the commit (or it was refused for
 * good: an invalid topic, an ACL; then its position goes into the ring's
 * refusal log first, so the producer learns it), and only over a prefix of
 * done records: a producer waiting for its record learns of the commit in
 * order. A full queue or a store refusing writes holds the records
 * (retried every SB_FM_RETRY_MS, logged once): the ring fills and producers
 * wait, nothing is dropped. What was read and not yet committed stays in
 * the ring: after a restart (a kill included) it is read again.
 *
 * Anything a hostile writer can put in the shared memory is checked before
 * use (sbr_peek; the header's constants and cursors on each batch and each
 * idle second); a corrupt ring is quarantined: the thread stops reading,
 * producers get SB_RING_ECLOSED, and the broker goes on.
 */
#include "adapters/filemap/filemap_int.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>

/* ---- the thread ---- */

static int stopped(fm_adapter *a)
{
    return sbr_load32(&a->stop) != 0;
}

/* Waits until fewer than read_ahead records are with the loop. Returns the
 * room, or 0 when stopping. */
static int wait_room(fm_adapter *a)
{
    int room;
    uv_mutex_lock(&a->lock);
    while (!a->quit && a->taken >= a->max_taken) {
        a->room_wait = 1;
        uv_cond_wait(&a->cond, &a->lock);
    }
    a->room_wait = 0;
    room = a->quit ? 0 : a->max_taken - a->taken;
    uv_mutex_unlock(&a->lock);
    return room;
}

/* What the thread waits for: a stop, new records, or the record it waits on
 * finished. */
static int ready(void *ctx)
{
    fm_adapter *a = ctx;
    if (stopped(a))
        return 1;
    if (a->pending_since != 0) {
        const sb_ring_rec *rec = (const sb_ring_rec *)(const void *)(a->data + a->read_off);
        return sbr_load32(&rec->state) != SB_RING_REC_RESERVED;
    }
    return sbr_load64(&a->h->reserve) != a->read;
}

/* The header's constants and the cursor only the broker writes: a change
 * means another process wrote where it must not. Returns NULL or why. */
static const char *check_header(fm_adapter *a)
{
    const sb_ring_header *h = a->h;
    const char *why = NULL;
    uint64_t mine;
    if (sbr_check_header(h, SB_RING_HEADER_SIZE + a->cap, SB_RING_IN, &why) != SB_RING_OK)
        return why;
    if (h->capacity != a->cap)
        return "its capacity changed";
    if (sbr_load32(&h->state) != SB_RING_STATE_OPEN)
        return "its state changed";
    /* The loop may be advancing it right now: compare only what was read
     * while it was not (a seqlock). */
    {
        uint32_t g1 = sbr_load32(&a->commit_seq), g2;
        uint64_t theirs;
        mine = sbr_load64(&a->loop_commit);
        theirs = sbr_load64(&h->commit);
        g2 = sbr_load32(&a->commit_seq);
        if (g1 == g2 && (g1 & 1) == 0 && theirs != mine)
            return "the committed cursor was changed by another process";
    }
    return NULL;
}

/* A record still being written at a->read: reclaims it once its producer
 * has exited (looked at after SB_FM_DEAD_CHECK_MS) or it has waited the
 * reclaim timeout. Returns 1 if reclaimed, 0 if it was finished meanwhile,
 * -1 to wait *wait_ms before looking again. */
static int pending(fm_adapter *a, sb_ring_rec *rec, int *wait_ms)
{
    uint64_t now = sb_fm__os_now_ms(), age, n;
    int dead = 0;
    if (a->pending_since == 0 || a->pending_pos != a->read) {
        a->pending_since = now;
        a->pending_pos = a->read;
    }
    age = now - a->pending_since;
    if (age >= SB_FM_DEAD_CHECK_MS)
        dead = !sb_fm__os_pid_alive(rec->pid);
    if (!dead && age < a->reclaim_ms) {
        uint64_t left = a->reclaim_ms - age;
        uint64_t next = age < SB_FM_DEAD_CHECK_MS ? SB_FM_DEAD_CHECK_MS - age : 250;
        *wait_ms = (int)(left < next ? left : next);
        return -1;
    }
    a->pending_since = 0;
    if (!sbr_cas32(&rec->state, SB_RING_REC_RESERVED, SB_RING_REC_ABANDONED))
        return 0;
    n = sbr_add64(&a->h->reclaimed, 1) + 1;
    sb_log(SB_LOG_WARN, a->base.name,
           "%s: record at position %llu (%u bytes) reclaimed: its producer (pid %u) %s; skipped "
           "(%llu reclaimed so far)",
           a->display, (unsigned long long)a->read, rec->len, rec->pid,
           dead ? "exited before finishing it" : "did not finish it within reclaim_timeout",
           (unsigned long long)n);
    return 1;
}

static void on_descs(void *arg);
static void take_descs(fm_adapter *a);
static void arm_retry(fm_adapter *a);
static void publish_from(fm_adapter *a);

/* Hands the records found to the loop: one post while the loop has not
 * taken the ones before. */
static void hand_over(fm_adapter *a, const fm_desc *found, int n)
{
    int post;
    if (n == 0)
        return;
    uv_mutex_lock(&a->lock);
    memcpy(a->descs + a->ndescs, found, (size_t)n * sizeof(*found));
    a->ndescs += n;
    a->taken += n;
    post = !a->descs_posted;
    a->descs_posted = 1;
    uv_mutex_unlock(&a->lock);
    sbr_store64(&a->h->read, a->read);
    if (post)
        sb_fm__post(a, on_descs, a);
}

/* Reads up to `room` records and hands them to the loop. Returns how many,
 * 0 when there is nothing to take now (*wait_ms: how long to wait), or -1
 * once the ring is quarantined. */
static int read_batch(fm_adapter *a, int room, int *wait_ms)
{
    fm_desc found[256];
    const char *why = check_header(a);
    uint64_t commit, reserve;
    int n = 0, total = 0;

    if (why != NULL) {
        sb_fm__quarantine(a, a->read, why);
        return -1;
    }
    commit = sbr_load64(&a->loop_commit);
    reserve = sbr_load64(&a->h->reserve);
    if (reserve < a->last_reserve || reserve < a->read || reserve % 8 != 0 ||
        reserve - commit > a->cap) {
        sb_fm__quarantine(a, a->read, "the reserve cursor is out of bounds");
        return -1;
    }
    a->last_reserve = reserve;
    while (total < room) {
        const sb_ring_rec *crec;
        sb_ring_rec *rec;
        sb_ring_parts parts;
        fm_desc *d;
        int kind = sbr_peek_parts(a->h, a->data, a->cap, a->read, a->read_off, reserve,
                                  a->max_payload, &crec, &parts, &why);
        rec = (sb_ring_rec *)crec;
        if (kind == SBR_EMPTY)
            break;
        if (kind == SBR_BAD) {
            hand_over(a, found, n); /* the records before it are good */
            sb_fm__quarantine(a, a->read, why);
            return -1;
        }
        if (kind == SBR_PENDING) {
            int got = pending(a, rec, wait_ms);
            if (got < 0)
                break;
            if (got == 0)
                continue; /* finished meanwhile: look again */
            kind = SBR_ABANDONED;
        }
        d = &found[n++];
        d->pos = a->read;
        d->off = (uint32_t)a->read_off;
        /* the lengths as checked: the writer may have changed them since */
        d->len = parts.len;
        d->ready = kind == SBR_READY;
        d->topic_len = parts.topic_len;
        d->headers_len = parts.headers_len;
        d->payload_len = parts.payload_len;
        a->read += parts.len;
        a->read_off += parts.len;
        if (a->read_off == a->cap)
            a->read_off = 0; /* records and pads end at the end of the data area at most */
        a->pending_since = 0;
        total++;
        if (n == (int)(sizeof(found) / sizeof(found[0]))) {
            hand_over(a, found, n);
            n = 0;
        }
    }
    hand_over(a, found, n);
    return total;
}

static void in_thread(void *arg)
{
    fm_adapter *a = arg;
    sb_fm__os_name_thread("sbring-in");
    for (;;) {
        int room = wait_room(a), wait_ms = SB_FM_IDLE_MS, n;
        if (room == 0)
            return;
        n = read_batch(a, room, &wait_ms);
        if (n < 0)
            break;
        if (n == 0)
            sb_fm__os_wait(a->os, SBR_WAKE_DATA, ready, a, wait_ms);
    }
    /* Quarantined: nothing more is read; stop() ends the thread. */
    uv_mutex_lock(&a->lock);
    while (!a->quit)
        uv_cond_wait(&a->cond, &a->lock);
    uv_mutex_unlock(&a->lock);
}

/* ---- the loop ---- */

/* Done with r: its message goes, the struct is kept for the next record. */
static void rec_free(fm_adapter *a, fm_rec *r)
{
    if (r->msg != NULL)
        sb_message_unref(r->msg);
    sb_free(r->bad);
    memset(r, 0, sizeof(*r));
    r->next = a->free_recs;
    a->free_recs = r;
}

/* Moves the committed cursor over the records at the front that are done
 * (committed or refused for good) and frees them. The thread hears of the
 * room at the end of the loop turn (sb_fm__in_flush). */
static void advance(fm_adapter *a)
{
    uint64_t c = a->commit;
    int n = 0;
    if (a->closed)
        return;
    while (a->recs != NULL &&
           (a->recs->state == FM_REC_DONE || a->recs->state == FM_REC_REFUSED)) {
        fm_rec *r = a->recs;
        a->recs = r->next;
        if (a->recs == NULL)
            a->recs_tail = NULL;
        if (a->unpublished == r)
            a->unpublished = r->next;
        if (r->state == FM_REC_REFUSED)
            sbr_note_refusal(a->h, r->pos);
        c = r->end;
        rec_free(a, r);
        n++;
    }
    if (n == 0)
        return;
    a->commit = c;
    sbr_add32(&a->commit_seq, 1);
    sbr_store64(&a->loop_commit, c);
    sbr_store64(&a->h->commit, c);
    sbr_add32(&a->commit_seq, 1);
    a->release_dirty = 1;
    a->released += n;
    sb_fm__flush_later(a);
}

void sb_fm__in_flush(fm_adapter *a)
{
    if (a->advance_due) {
        a->advance_due = 0;
        advance(a);
    }
    if (a->released == 0)
        return;
    uv_mutex_lock(&a->lock);
    a->taken -= a->released;
    /* Woken when half the read-ahead is free: it then takes a big batch,
     * instead of a few records per wake-up. */
    if (a->room_wait && a->taken <= a->max_taken / 2)
        uv_cond_signal(&a->cond);
    uv_mutex_unlock(&a->lock);
    a->released = 0;
}

static void refuse(fm_adapter *a, fm_rec *r, const char *why)
{
    r->state = FM_REC_REFUSED;
    a->refused++;
    sb_log(SB_LOG_ERROR, a->base.name,
           "%s: record at position %llu%s%s refused: %s (%llu refused so far; its producer's "
           "sb_ring_wait_committed returns SB_RING_EREFUSED)",
           a->display, (unsigned long long)r->pos, r->msg != NULL ? " on " : "",
           r->msg != NULL ? r->msg->topic : "", why, (unsigned long long)a->refused);
}

static int retryable(int rc)
{
    return rc == SB_EFULL || rc == SB_ENOSPC || rc == SB_ESTORE || rc == SB_ENOMEM;
}

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    fm_rec *r = ctx;
    fm_adapter *a = r->a;
    (void)id;
    (void)queues;
    a->publishing--;
    if (a->closed) {
        /* Stopped meanwhile: the ring is gone from here; the record is read
         * again by the next start (at least once). */
        if (a->destroyed && a->publishing == 0)
            sb_fm__free(a);
        return;
    }
    if (status != 0) {
        /* The commit failed after the publish was taken (disk full, I/O
         * error): publish it again. */
        sb_log(SB_LOG_ERROR, a->base.name,
               "%s: record at position %llu not committed (%s); will retry", a->display,
               (unsigned long long)r->pos, why != NULL ? why : sb_strerror(status));
        r->state = FM_REC_NEW;
        if (a->unpublished == NULL || r->pos < a->unpublished->pos)
            a->unpublished = r;
        arm_retry(a);
        return;
    }
    r->state = FM_REC_DONE;
    a->published++;
    /* The cursor moves once per loop turn (callbacks come in groups). */
    a->advance_due = 1;
    sb_fm__flush_later(a);
}

/* Publishes r. Returns 0 if it is with the store or settled (refused), 1
 * if it must be held. */
static int publish(fm_adapter *a, fm_rec *r)
{
    sb_publish_opts opts = {a->source, 0, NULL};
    sb_error err;
    int rc;
    if (r->bad != NULL) {
        refuse(a, r, r->bad);
        return 0;
    }
    if (r->msg->topic[0] == '$') {
        refuse(a, r, "'$' topics are the broker's own");
        return 0;
    }
    if (!sb_auth_allowed(sb_broker_auth(a->base.broker), NULL, NULL, r->msg->topic,
                         SB_ACL_WRITE)) {
        refuse(a, r, "denied by the ACL (ring producers publish as anonymous)");
        return 0;
    }
    rc = sb_broker_publish(a->base.broker, r->msg, &opts, on_published, r, &err);
    if (rc == 0) {
        r->state = FM_REC_PUBLISHING;
        a->publishing++;
        if (a->holding) {
            sb_log(SB_LOG_INFO, a->base.name, "%s: publishing again", a->display);
            a->holding = 0;
        }
        return 0;
    }
    if (retryable(rc)) {
        if (!a->holding)
            sb_log(SB_LOG_WARN, a->base.name,
                   "%s: holding the ring (producers wait when it is full): %s", a->display,
                   err.msg);
        a->holding = 1;
        return 1;
    }
    refuse(a, r, err.msg);
    return 0;
}

/* Publishes, in ring order, every record not yet published, stopping at
 * one the broker cannot take now. */
static void publish_from(fm_adapter *a)
{
    while (a->unpublished != NULL && !a->closed) {
        fm_rec *r = a->unpublished;
        if (r->state == FM_REC_NEW && publish(a, r) != 0) {
            arm_retry(a);
            return;
        }
        a->unpublished = r->next;
    }
}

static void on_retry(uv_timer_t *t)
{
    take_descs(t->data);
}

static void on_retry_closed(uv_handle_t *h)
{
    fm_adapter *a = h->data;
    sb_free(h);
    sb_fm__handle_closed(a);
}

static void arm_retry(fm_adapter *a)
{
    if (a->closed)
        return;
    if (a->retry == NULL) {
        a->retry = sb_malloc(sizeof(*a->retry));
        if (a->retry == NULL)
            return; /* the next batch or callback tries again */
        uv_timer_init(a->base.loop, a->retry);
        a->retry->data = a;
    }
    uv_timer_start(a->retry, on_retry, SB_FM_RETRY_MS, 0);
}

/* The message of the record d describes, copied out of the ring with the
 * lengths the thread saw and checked on the copy (the record may have been
 * changed since by a hostile writer); a record a buggy program wrote gets
 * r->bad instead (not a corruption of the ring: reading goes on). Returns
 * 0 or SB_ENOMEM. */
static int make_message(fm_adapter *a, fm_rec *r, const fm_desc *d)
{
    const unsigned char *rec = a->data + d->off;
    const unsigned char *t = rec + SB_RING_REC_SIZE;
    char small[256], hsmall[256], *topic = small, *hb = hsmall;
    int rc = 0;

    if (d->topic_len >= sizeof(small) && (topic = sb_malloc(d->topic_len + 1)) == NULL)
        return SB_ENOMEM;
    if (d->headers_len > sizeof(hsmall) && (hb = sb_malloc(d->headers_len)) == NULL) {
        rc = SB_ENOMEM;
        goto done;
    }
    /* A NUL would cut the topic short; the broker checks the rest (UTF-8,
     * wildcards) when it publishes. Topics are short: a byte loop copies
     * and looks at once. */
    {
        unsigned char any_nul = d->topic_len == 0;
        for (uint32_t i = 0; i < d->topic_len; i++)
            any_nul |= (topic[i] = (char)t[i]) == '\0';
        topic[d->topic_len] = '\0';
        if (any_nul) {
            r->bad = sb_strdup("invalid topic (empty, or with a NUL)");
            rc = r->bad != NULL ? 0 : SB_ENOMEM;
            goto done;
        }
    }
    memcpy(hb, t + d->topic_len, d->headers_len);
    if (!sbr_headers_valid(hb, d->headers_len)) {
        r->bad = sb_strdup("malformed headers (not \"key\\0value\\0\" pairs of UTF-8)");
        rc = r->bad != NULL ? 0 : SB_ENOMEM;
        goto done;
    }
    r->msg = sb_message_new(topic, t + d->topic_len + d->headers_len, d->payload_len);
    if (r->msg == NULL) {
        rc = SB_ENOMEM;
    } else if (d->headers_len > 0 &&
               sb_message_headers_decode(r->msg, (const unsigned char *)hb, d->headers_len) != 0) {
        sb_message_unref(r->msg);
        r->msg = NULL;
        rc = SB_ENOMEM;
    }
done:
    if (topic != small)
        sb_free(topic);
    if (hb != hsmall)
        sb_free(hb);
    return rc;
}

/* Loop: makes records of the descriptions in spare. Returns 0, or -1 when
 * out of memory (the rest stay in spare: the retry timer comes back). */
static int take_spare(fm_adapter *a)
{
    for (; a->spare_at < a->spare_n; a->spare_at++) {
        const fm_desc *d = &a->spare[a->spare_at];
        fm_rec *r = a->free_recs;
        if (r != NULL)
            a->free_recs = r->next;
        else
            r = sb_calloc(1, sizeof(*r));
        if (r == NULL || (d->ready && make_message(a, r, d) != 0)) {
            if (r != NULL)
                rec_free(a, r);
            sb_log(SB_LOG_ERROR, a->base.name,
                   "%s: out of memory for the record at position %llu; trying again", a->display,
                   (unsigned long long)d->pos);
            return -1;
        }
        r->a = a;
        r->pos = d->pos;
        r->end = d->pos + d->len;
        r->state = d->ready ? FM_REC_NEW : FM_REC_DONE;
        r->next = NULL;
        if (a->recs_tail != NULL)
            a->recs_tail->next = r;
        else
            a->recs = r;
        a->recs_tail = r;
        if (a->unpublished == NULL)
            a->unpublished = r;
    }
    a->spare_at = a->spare_n = 0;
    return 0;
}

/* Loop: takes what the thread found, in order, and publishes it. */
static void take_descs(fm_adapter *a)
{
    if (a->closed)
        return; /* stopping: they stay in the ring for the next start */
    if (take_spare(a) == 0) {
        fm_desc *d;
        uv_mutex_lock(&a->lock);
        d = a->descs;
        a->descs = a->spare; /* the thread fills the other one meanwhile */
        a->spare = d;
        a->spare_n = a->ndescs;
        a->ndescs = 0;
        a->descs_posted = 0;
        uv_mutex_unlock(&a->lock);
        if (take_spare(a) != 0)
            arm_retry(a);
    } else {
        arm_retry(a);
    }
    publish_from(a);
    advance(a);
}

/* Loop: the thread found records (it posts this once per batch taken). */
static void on_descs(void *arg)
{
    take_descs(arg);
}

int sb_fm__in_start(fm_adapter *a, sb_error *err)
{
    a->descs = sb_calloc((size_t)a->max_taken, sizeof(*a->descs));
    a->spare = sb_calloc((size_t)a->max_taken, sizeof(*a->spare));
    if (a->descs == NULL || a->spare == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
    a->commit = sbr_load64(&a->h->commit);
    sbr_store64(&a->loop_commit, a->commit);
    a->read = a->commit;
    a->read_off = a->commit % a->cap;
    a->last_reserve = sbr_load64(&a->h->reserve);
    sbr_store64(&a->h->read, a->read);
    if (uv_thread_create(&a->thread, in_thread, a) != 0)
        return sb_error_set(err, SB_EIO, 0, "adapter %s: cannot start a thread", a->base.name);
    a->thread_started = 1;
    return 0;
}

void sb_fm__in_stop(fm_adapter *a)
{
    if (a->retry != NULL) {
        uv_timer_stop(a->retry);
        a->handles++;
        uv_close((uv_handle_t *)a->retry, on_retry_closed);
        a->retry = NULL;
    }
}
