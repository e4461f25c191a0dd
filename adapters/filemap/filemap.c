/*
 * The file-mapping adapter (type filemap): a shared-memory ring that local
 * programs write messages into (direction: in, a source) or read
 * deliveries from (direction: out, a sink), through the one header
 * adapters/filemap/sb_ring.h. The ring's layout and protocol: docs/ring.md;
 * this file: settings, start, stop and what both directions share
 * (quarantine, the wake-ups batched per loop turn). See filemap_int.h.
 */
#include "adapters/filemap/filemap_int.h"
#include "adapters/filemap/filemap_keys.h"
#include "service/alloc.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>

/* ---- shared by both directions ---- */

void sb_fm__post(fm_adapter *a, sb_inbox_fn fn, void *arg)
{
    /* Only out-of-memory makes a post fail: the loop closes the inbox only
     * after the thread is gone. */
    while (sb_inbox_post(a->inbox, fn, arg) == SB_ENOMEM) {
        uv_mutex_lock(&a->lock);
        if (!a->quit)
            (void)uv_cond_timedwait(&a->cond, &a->lock, 10u * 1000000u);
        uv_mutex_unlock(&a->lock);
    }
}

void sb_fm__quarantine(fm_adapter *a, uint64_t pos, const char *why)
{
    if (sbr_cas32(&a->quarantined, 0, 1) == 0)
        return; /* said once */
    sbr_store32(&a->h->state, SB_RING_STATE_QUARANTINED);
    sb_fm__os_signal(a->os, SBR_WAKE_DATA);
    sb_fm__os_signal(a->os, SBR_WAKE_RELEASE);
    sb_log(SB_LOG_ERROR, a->base.name,
           "%s quarantined: %s (at position %llu); the adapter no longer %s it and its programs "
           "get SB_RING_ECLOSED; restart the adapter (reload with a change, or restart the "
           "broker) to replace it with a new ring",
           a->display, why, (unsigned long long)pos, a->out ? "writes" : "reads");
}

/* The wake-ups of a loop turn, sent at once. An idle handle rather than a
 * check handle: while it is active the loop does not block, so what is
 * written after it ran in a turn (a later phase) is sent at the start of the
 * next turn instead of waiting for some other event to wake the loop. */
static void on_flush(uv_idle_t *c)
{
    fm_adapter *a = c->data;
    uv_idle_stop(c);
    a->flush_started = 0;
    if (!a->out)
        sb_fm__in_flush(a); /* may make release_dirty */
    if (a->release_dirty) {
        a->release_dirty = 0;
        sb_fm__os_signal(a->os, SBR_WAKE_RELEASE);
    }
    if (a->data_dirty) {
        a->data_dirty = 0;
        sb_fm__os_signal(a->os, SBR_WAKE_DATA);
    }
}

void sb_fm__flush_later(fm_adapter *a)
{
    if (a->flush_started || a->closed)
        return;
    a->flush_started = 1;
    uv_idle_start(&a->flush, on_flush);
}

void sb_fm__free(fm_adapter *a)
{
    while (a->recs != NULL) {
        fm_rec *r = a->recs;
        a->recs = r->next;
        if (r->msg != NULL)
            sb_message_unref(r->msg);
        sb_free(r->bad);
        sb_free(r);
    }
    while (a->free_recs != NULL) {
        fm_rec *r = a->free_recs;
        a->free_recs = r->next;
        sb_free(r);
    }
    sb_free(a->descs);
    sb_free(a->spare);
    while (a->outs != NULL) {
        fm_out *o = a->outs;
        a->outs = o->next;
        sb_free(o);
    }
    if (a->sync_init) {
        uv_cond_destroy(&a->cond);
        uv_mutex_destroy(&a->lock);
    }
    sb_free(a->ring_name);
    sb_free(a->source);
    sb_free(a);
}

void sb_fm__handle_closed(fm_adapter *a)
{
    if (--a->handles == 0 && a->stopped_cb != NULL) {
        sb_adapter_stopped_cb cb = a->stopped_cb;
        a->stopped_cb = NULL;
        cb(&a->base);
    }
}

int sb_fm__examine(const sb_ring_header *h, uint64_t map_size, const sb_fm_os_opts *o,
                   const char **why)
{
    uint64_t commit, reserve;
    if (sbr_check_header(h, map_size, 0, why) != SB_RING_OK)
        return 0;
    if (h->direction != o->direction) {
        *why = o->direction == SB_RING_IN ? "it is an out ring (the direction changed)"
                                          : "it is an in ring (the direction changed)";
        return 0;
    }
    if (h->capacity != o->capacity) {
        *why = "its capacity differs from the configured one";
        return 0;
    }
    if (sbr_load32(&h->state) != SB_RING_STATE_OPEN) {
        *why = sbr_load32(&h->state) == SB_RING_STATE_QUARANTINED ? "it was quarantined"
                                                                   : "it was retired";
        return 0;
    }
    commit = sbr_load64(&h->commit);
    reserve = sbr_load64(&h->reserve);
    if (commit > reserve || reserve - commit > h->capacity || commit % 8 != 0 ||
        reserve % 8 != 0) {
        *why = "its cursors are inconsistent";
        return 0;
    }
    return 1;
}

/* ---- settings ---- */

/* The ring's object name: `ring`, else switchboard-<adapter>. */
static char *ring_name(const sb_adapter_config *cfg, const sb_filemap_settings *s)
{
    size_t n;
    char *out;
    if (s->ring != NULL)
        return sb_strdup(s->ring);
    n = strlen(cfg->name) + sizeof("switchboard-");
    out = sb_malloc(n);
    if (out != NULL)
        snprintf(out, n, "switchboard-%s", cfg->name);
    return out;
}

static unsigned fm_caps_of(const sb_adapter_config *cfg)
{
    sb_filemap_settings s;
    sb_filemap_settings_get(cfg, &s);
    return SB_CAP_THREAD | (s.direction == SB_FILEMAP_OUT ? SB_CAP_SINK : SB_CAP_SOURCE);
}

/* ---- lifecycle ---- */

static int fm_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    fm_adapter *a = sb_calloc(1, sizeof(*a));
    (void)cfg;
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &a->base;
    return 0;
}

static int fm_start(sb_adapter *base, sb_error *err)
{
    fm_adapter *a = (fm_adapter *)base;
    sb_filemap_settings settings, *s = &settings;
    sb_fm_os_opts o;
    char note[400];
    int how, rc;
    size_t n;

    sb_filemap_settings_get(base->cfg, s);
    a->out = s->direction == SB_FILEMAP_OUT;
    a->ring_name = ring_name(base->cfg, s);
    if (a->ring_name == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    memset(&o, 0, sizeof(o));
    o.adapter = base->name;
    o.name = a->ring_name;
    o.direction = a->out ? SB_RING_OUT : SB_RING_IN;
    o.capacity = (uint64_t)s->capacity;
    o.max_payload = (uint32_t)s->max_message;
    o.reclaim_ms = (uint32_t)s->reclaim_ms;
    o.global = s->ns == SB_FILEMAP_NS_GLOBAL ||
               (s->ns == SB_FILEMAP_NS_AUTO && sb_broker_is_service(base->broker));
    o.security = s->security;
    o.mode = s->mode;
    o.group = s->group;

    if (sb_inbox_new(&a->inbox, base->loop) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", base->name);
    if (uv_mutex_init(&a->lock) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a lock", base->name);
    if (uv_cond_init(&a->cond) != 0) {
        uv_mutex_destroy(&a->lock);
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a condition",
                            base->name);
    }
    a->sync_init = 1;
    uv_idle_init(base->loop, &a->flush);
    a->flush.data = a;
    a->flush_init = 1;

    if ((rc = sb_fm__os_open(&a->os, &o, &how, note, sizeof(note), err)) != 0)
        return rc;
    a->h = sb_fm__os_header(a->os);
    a->data = (unsigned char *)a->h + SB_RING_HEADER_SIZE;
    a->cap = o.capacity;
    a->max_payload = o.max_payload;
    a->reclaim_ms = o.reclaim_ms;
    a->display = sb_fm__os_display(a->os);
    a->max_taken = s->read_ahead;
    n = strlen(base->name) + strlen(a->display) + 8;
    a->source = sb_malloc(n);
    if (a->source == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    snprintf(a->source, n, "%s ring %s", base->name, a->display);

    rc = a->out ? sb_fm__out_start(a, err) : sb_fm__in_start(a, err);
    if (rc != 0)
        return rc;
    sb_log(SB_LOG_INFO, base->name, "%s ring %s (%llu bytes%s%s%s)",
           how == SB_FM_RESUMED ? "resuming" : "serving", a->display,
           (unsigned long long)a->cap, a->out ? ", out: programs consume" : ", in: programs produce",
           note[0] != '\0' ? "; " : "", note);
    if (how == SB_FM_REPLACED)
        sb_log(SB_LOG_WARN, base->name, "%s: %s", a->display, note);
    return 0;
}

static void on_flush_closed(uv_handle_t *h)
{
    sb_fm__handle_closed(h->data);
}

static void fm_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    fm_adapter *a = (fm_adapter *)base;
    a->stopped_cb = cb;
    if (a->thread_started) {
        sbr_store32(&a->stop, 1);
        uv_mutex_lock(&a->lock);
        a->quit = 1;
        uv_cond_broadcast(&a->cond);
        uv_mutex_unlock(&a->lock);
        sb_fm__os_signal(a->os, a->out ? SBR_WAKE_RELEASE : SBR_WAKE_DATA);
        /* The thread's waits end at once: joining here lets go of the ring
         * before stop returns, so that a reload can take it again. */
        uv_thread_join(&a->thread);
        a->thread_started = 0;
    }
    a->closed = 1;
    if (a->inbox != NULL) {
        sb_inbox_close(a->inbox); /* runs what the thread posted last */
        a->inbox = NULL;
    }
    if (a->out)
        sb_fm__out_stop(a);
    else
        sb_fm__in_stop(a);
    sb_fm__os_close(a->os);
    a->os = NULL;
    a->h = NULL;
    if (a->flush_init) {
        uv_idle_stop(&a->flush);
        a->handles++;
        uv_close((uv_handle_t *)&a->flush, on_flush_closed);
    }
    if (a->handles == 0) {
        a->stopped_cb = NULL;
        cb(base);
    }
}

static void fm_destroy(sb_adapter *base)
{
    fm_adapter *a = (fm_adapter *)base;
    if (a->publishing > 0) {
        a->destroyed = 1; /* the last publish callback frees it */
        return;
    }
    sb_fm__free(a);
}

static int fm_deliver(sb_adapter *base, sb_delivery *d)
{
    fm_adapter *a = (fm_adapter *)base;
    if (!a->out || a->closed)
        return SB_EBUSY;
    return sb_fm__out_deliver(a, d);
}

const sb_adapter_type sb_adapter_filemap = {
    .version = SB_ADAPTER_VERSION,
    .name = "filemap",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK | SB_CAP_THREAD,
    .caps_of = fm_caps_of,
    .create = fm_create,
    .start = fm_start,
    .deliver = fm_deliver,
    .stop = fm_stop,
    .destroy = fm_destroy,
};
