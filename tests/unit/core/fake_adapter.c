/* The fake adapter type of the core tests (see fake_adapter.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "fake_adapter.h"
#include "service/message.h"

static fake_adapter *instances; /* created and not yet destroyed */

/* ---- logs ---- */

/* A libc copy (strdup is not C11: MinGW hides it under -std=c11). */
static char *dup_or_null(const char *s)
{
    char *c;
    if (s == NULL)
        return NULL;
    c = malloc(strlen(s) + 1);
    assert_non_null(c);
    return strcpy(c, s);
}

static fake_rec *log_add(fake_log *l, uv_loop_t *loop, sb_delivery *d)
{
    fake_rec *r;
    if (l->count == l->cap) {
        size_t ncap = l->cap == 0 ? 16 : l->cap * 2;
        fake_rec *n = realloc(l->recs, ncap * sizeof(*n));
        assert_non_null(n);
        l->recs = n;
        l->cap = ncap;
    }
    r = &l->recs[l->count++];
    memset(r, 0, sizeof(*r));
    r->topic = dup_or_null(d->msg->topic);
    r->payload = calloc(1, d->msg->payload_len + 1);
    assert_non_null(r->payload);
    memcpy(r->payload, d->msg->payload, d->msg->payload_len);
    r->retained = dup_or_null(sb_message_header(d->msg, "retained"));
    r->id_header = dup_or_null(sb_message_header(d->msg, "id"));
    r->msg_id = d->msg->id;
    r->attempt = d->attempt;
    r->redelivery = d->redelivery;
    r->at_ms = uv_now(loop);
    r->d = d;
    return r;
}

/* What a sink does with an offered delivery, by mode. */
static int log_deliver(fake_log *l, uv_loop_t *loop, sb_delivery *d)
{
    fake_rec *r;
    if (l->mode == FAKE_BUSY)
        return SB_EBUSY;
    r = log_add(l, loop, d);
    if (l->mode == FAKE_ACK)
        fake_ack(r);
    return 0;
}

void fake_ack(fake_rec *r)
{
    sb_delivery *d = r->d;
    assert_non_null(d);
    r->d = NULL;
    sb_delivery_done(d, 0, NULL);
}

void fake_nack(fake_rec *r, const char *reason)
{
    sb_delivery *d = r->d;
    assert_non_null(d);
    r->d = NULL;
    sb_delivery_done(d, SB_EIO, reason);
}

size_t fake_count(const fake_log *l, const char *payload)
{
    size_t n = 0;
    for (size_t i = 0; i < l->count; i++)
        n += strcmp(l->recs[i].payload, payload) == 0;
    return n;
}

static void log_clear(fake_log *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->recs[i].topic);
        free(l->recs[i].payload);
        free(l->recs[i].retained);
        free(l->recs[i].id_header);
    }
    l->count = 0;
}

void fake_log_free(fake_log *l)
{
    log_clear(l);
    free(l->recs);
    l->recs = NULL;
    l->cap = 0;
}

/* ---- the adapter type ---- */

static int fake_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    fake_adapter *f = calloc(1, sizeof(*f));
    (void)err;
    assert_non_null(f);
    for (fake_adapter *o = instances; o != NULL; o = o->next)
        if (strcmp(o->base.name, cfg->name) == 0 && o->generation >= f->generation)
            f->generation = o->generation + 1;
    f->next = instances;
    instances = f;
    *out = &f->base;
    return 0;
}

static int fake_start(sb_adapter *a, sb_error *err)
{
    fake_adapter *f = (fake_adapter *)a;
    (void)err;
    uv_timer_init(a->loop, &f->handle);
    f->handle.data = f;
    f->started = 1;
    return 0;
}

static int fake_deliver(sb_adapter *a, sb_delivery *d)
{
    fake_adapter *f = (fake_adapter *)a;
    assert_false(f->stopped);
    if (a->stopping)
        return SB_EBUSY; /* as real adapters do while they close */
    return log_deliver(&f->log, a->loop, d);
}

static void on_handle_closed(uv_handle_t *h)
{
    fake_adapter *f = h->data;
    f->stopped = 1;
    f->stopped_cb(&f->base);
}

/* As a connection closing does: what the sink still holds ends as failed,
 * then the handles close and stop completes. */
static void fake_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    fake_adapter *f = (fake_adapter *)a;
    f->stopped_cb = cb;
    for (size_t i = 0; i < f->log.count; i++)
        if (f->log.recs[i].d != NULL) {
            sb_delivery *d = f->log.recs[i].d;
            f->log.recs[i].d = NULL;
            sb_delivery_done(d, SB_ECLOSED, "the fake adapter stopped");
        }
    if (!f->started) {
        f->stopped = 1;
        cb(a);
        return;
    }
    uv_close((uv_handle_t *)&f->handle, on_handle_closed);
}

static void fake_destroy(sb_adapter *a)
{
    fake_adapter *f = (fake_adapter *)a;
    for (fake_adapter **p = &instances; *p != NULL; p = &(*p)->next)
        if (*p == f) {
            *p = f->next;
            break;
        }
    fake_log_free(&f->log);
    free(f);
}

/* Its own counters, as a type's stats hook gives them. */
static void *fake_stats(sb_adapter *a)
{
    return json_pack("{s:I}", "recorded", (json_int_t)((fake_adapter *)a)->log.count);
}

static const sb_adapter_type fake_type = {
    .version = SB_ADAPTER_VERSION,
    .name = "fake",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK,
    .create = fake_create,
    .start = fake_start,
    .deliver = fake_deliver,
    .stop = fake_stop,
    .destroy = fake_destroy,
    .stats = fake_stats,
};

void fake_register(void)
{
    int rc = sb_adapter_register(&fake_type, NULL);
    assert_true(rc == 0 || rc == SB_EEXIST);
}

fake_adapter *fake_get(const char *name)
{
    for (fake_adapter *f = instances; f != NULL; f = f->next)
        if (strcmp(f->base.name, name) == 0 && !f->base.stopping)
            return f;
    return NULL;
}

int fake_generations(const char *name)
{
    int n = 0;
    for (fake_adapter *f = instances; f != NULL; f = f->next)
        if (strcmp(f->base.name, name) == 0 && f->generation + 1 > n)
            n = f->generation + 1;
    return n;
}

void fake_set_mode(fake_adapter *f, fake_mode mode)
{
    fake_mode was = f->log.mode;
    f->log.mode = mode;
    if (was == FAKE_BUSY && mode != FAKE_BUSY)
        sb_adapter_sink_ready(&f->base);
}

/* ---- a consumer of the test's own ---- */

static int consumer_deliver(sb_consumer *c, sb_delivery *d)
{
    fake_consumer *fc = c->ctx;
    return log_deliver(&fc->log, fc->loop, d);
}

void fake_consumer_init(fake_consumer *fc, uv_loop_t *loop, const char *name, int window)
{
    memset(fc, 0, sizeof(*fc));
    fc->c.deliver = consumer_deliver;
    fc->c.ctx = fc;
    fc->c.name = name;
    fc->c.window = window;
    fc->loop = loop;
}

void fake_consumer_detached(fake_consumer *fc)
{
    for (size_t i = 0; i < fc->log.count; i++)
        fc->log.recs[i].d = NULL;
}

/* ---- publishing ---- */

static void on_published(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    fake_pub *p = ctx;
    (void)why;
    p->calls++;
    p->done = 1;
    p->status = status;
    p->msg_id = msg_id;
    p->queues = queues;
}

sb_message *fake_message(const char *topic, const char *payload, const char *const *headers)
{
    sb_message *m = sb_message_new(topic, payload, strlen(payload));
    assert_non_null(m);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i += 2)
        assert_int_equal(sb_message_add_header(m, headers[i], headers[i + 1]), 0);
    return m;
}

int fake_publish_msg(fake_pub *out, sb_broker *b, fake_adapter *f, sb_message *msg, int retain,
                     const char *dedup_key)
{
    sb_publish_opts opts = {0};
    memset(out, 0, sizeof(*out));
    opts.source = f != NULL ? f->base.name : NULL;
    opts.retain = retain;
    opts.dedup_key = dedup_key;
    sb_error_clear(&out->err);
    out->rc = sb_broker_publish(b, msg, &opts, on_published, out, &out->err);
    return out->rc;
}

int fake_publish(fake_pub *out, sb_broker *b, fake_adapter *f, const char *topic,
                 const char *payload, const char *const *headers, int retain, const char *dedup_key)
{
    sb_message *m = fake_message(topic, payload, headers);
    int rc = fake_publish_msg(out, b, f, m, retain, dedup_key);
    sb_message_unref(m);
    return rc;
}
