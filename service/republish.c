/* The broker's republisher (see republish.h). */
#include "service/republish.h"

#include "service/alloc.h"
#include "service/broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct republish {
    sb_adapter base;
    int pending; /* publishes not completed */
    sb_adapter_stopped_cb stopped;
} republish;

typedef struct pub {
    republish *a;
    sb_delivery *d;
} pub;

static void on_published(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    pub *p = ctx;
    republish *a = p->a;
    char reason[300];
    (void)msg_id;
    (void)queues;
    if (status != 0)
        snprintf(reason, sizeof reason, "republish refused: %s", why != NULL ? why : "");
    sb_delivery_done(p->d, status, status != 0 ? reason : NULL);
    sb_free(p);
    if (--a->pending == 0 && a->stopped != NULL)
        a->stopped(&a->base);
}

/* The hops a message made so far. The header may come from a producer: a
 * value that is not a count in range reads as the limit, so a forged
 * `-2000000000` cannot buy two billion laps. */
static int hops_of(const char *h)
{
    char *end;
    long n;
    if (h == NULL)
        return 0;
    n = strtol(h, &end, 10);
    if (end == h || *end != '\0' || n < 0 || n > SB_REPUBLISH_MAX_HOPS)
        return SB_REPUBLISH_MAX_HOPS;
    return (int)n;
}

/* A new message with in's topic, payload and headers, one hop more. */
static sb_message *copy_for_publish(const sb_message *in, int *hops)
{
    const char *h = sb_message_header(in, SB_REPUBLISH_HOPS_HEADER);
    char n[16];
    sb_message *m;

    *hops = hops_of(h);
    m = sb_message_new(in->topic, in->payload, in->payload_len);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < in->header_count; i++) {
        if (strcmp(in->headers[i].key, SB_REPUBLISH_HOPS_HEADER) == 0)
            continue;
        if (sb_message_add_header(m, in->headers[i].key, in->headers[i].value) != 0)
            goto oom;
    }
    snprintf(n, sizeof n, "%d", *hops + 1);
    if (sb_message_add_header(m, SB_REPUBLISH_HOPS_HEADER, n) != 0)
        goto oom;
    m->expires_ms = in->expires_ms;
    m->priority = in->priority;
    return m;
oom:
    sb_message_unref(m);
    return NULL;
}

static int rp_deliver(sb_adapter *base, sb_delivery *d)
{
    republish *a = (republish *)base;
    sb_publish_opts opts = {.source = d->sub};
    sb_error err;
    int hops;
    sb_message *m = copy_for_publish(d->msg, &hops);
    pub *p;

    if (m == NULL)
        return SB_EBUSY; /* out of memory: offered again later */
    if (hops >= SB_REPUBLISH_MAX_HOPS) {
        char why[160];
        snprintf(why, sizeof why, "republished %d times: the route republishes onto its own topics",
                 hops);
        sb_message_unref(m);
        sb_delivery_done(d, SB_EINVAL, why);
        return 0;
    }
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL) {
        sb_message_unref(m);
        return SB_EBUSY;
    }
    p->a = a;
    p->d = d;
    a->pending++;
    if (sb_broker_publish(base->broker, m, &opts, on_published, p, &err) != 0) {
        a->pending--;
        sb_free(p);
        sb_delivery_done(d, err.code, err.msg);
    }
    sb_message_unref(m); /* the broker took its own reference */
    return 0;
}

static void rp_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    republish *a = (republish *)base;
    if (a->pending == 0) {
        cb(base);
        return;
    }
    a->stopped = cb; /* once the publishes in flight completed */
}

static void rp_destroy(sb_adapter *a)
{
    sb_free(a);
}

static const sb_adapter_type republish_type = {
    .version = SB_ADAPTER_VERSION,
    .name = "republish",
    .caps = SB_CAP_SINK,
    .deliver = rp_deliver,
    .stop = rp_stop,
    .destroy = rp_destroy,
};

int sb_republish_create(sb_adapter **out, sb_broker *b, uv_loop_t *loop)
{
    republish *a = sb_calloc(1, sizeof(*a));
    sb_adapter_config *cfg = sb_calloc(1, sizeof(*cfg));

    *out = NULL;
    if (a == NULL || cfg == NULL || (cfg->name = sb_strdup(SB_REPUBLISH_NAME)) == NULL ||
        (cfg->type = sb_strdup("republish")) == NULL) {
        sb_free(a);
        if (cfg != NULL)
            sb_adapter_config_free(cfg);
        sb_free(cfg);
        return SB_ENOMEM;
    }
    cfg->inflight = 64;
    a->base.type = &republish_type;
    a->base.broker = b;
    a->base.loop = loop;
    a->base.cfg = cfg;
    a->base.name = cfg->name;
    *out = &a->base;
    return 0;
}
