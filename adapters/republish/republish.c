/*
 * Type republish: a sink that publishes what it is given back into the
 * broker, as a new message under the topic it was delivered with. A route
 * whose transform rewrites topics and payloads (service/transform.h) and
 * delivers to a republish adapter makes the transformed messages visible
 * to every subscriber of the new topic: MQTT and jsonl clients, other
 * routes. The delivery is acknowledged once the new message is committed
 * (so nothing acknowledged is lost), and failed when the publish is
 * refused (it is retried, then dead-lettered).
 *
 * A route that republishes onto topics its own filters match would loop:
 * each copy carries a hop count (header republish-hops) and a message that
 * has been republished SB_REPUBLISH_MAX_HOPS times is refused.
 */
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/broker.h"
#include "service/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SB_REPUBLISH_MAX_HOPS 8
#define HOPS_HEADER "republish-hops"

typedef struct republish {
    sb_adapter base;
    int pending; /* publishes not completed */
    sb_adapter_stopped_cb stopped;
} republish;

static int rp_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    republish *a = sb_calloc(1, sizeof(*a));
    (void)cfg;
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &a->base;
    return 0;
}

static int rp_start(sb_adapter *a, sb_error *err)
{
    (void)a;
    (void)err;
    return 0;
}

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

/* A new message with d->msg's topic, payload and headers, one more hop. */
static sb_message *copy_for_publish(const sb_message *in, int *hops)
{
    const char *h = sb_message_header(in, HOPS_HEADER);
    char n[16];
    sb_message *m;

    *hops = h != NULL ? atoi(h) : 0;
    m = sb_message_new(in->topic, in->payload, in->payload_len);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < in->header_count; i++) {
        if (strcmp(in->headers[i].key, HOPS_HEADER) == 0)
            continue;
        if (sb_message_add_header(m, in->headers[i].key, in->headers[i].value) != 0)
            goto oom;
    }
    snprintf(n, sizeof n, "%d", *hops + 1);
    if (sb_message_add_header(m, HOPS_HEADER, n) != 0)
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
    sb_publish_opts opts = {.source = base->name};
    sb_error err;
    int hops;
    sb_message *m = copy_for_publish(d->msg, &hops);
    pub *p;

    if (m == NULL)
        return SB_EBUSY; /* out of memory: offered again later */
    if (hops >= SB_REPUBLISH_MAX_HOPS) {
        char why[160];
        snprintf(why, sizeof why, "republished %d times: a route republishes onto its own topics",
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

const sb_adapter_type sb_adapter_republish = {
    .version = SB_ADAPTER_VERSION,
    .name = "republish",
    .caps = SB_CAP_SINK,
    .create = rp_create,
    .start = rp_start,
    .deliver = rp_deliver,
    .stop = rp_stop,
    .destroy = rp_destroy,
};
