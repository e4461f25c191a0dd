/*
 * Type null: a sink that accepts every delivery and acknowledges it at
 * once, writing nothing. For benchmarks (what the broker costs without an
 * adapter's I/O) and for routes whose messages only need to be stored and
 * counted. It opens nothing and runs on every platform.
 */
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/broker.h"

static int null_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    sb_adapter *a = sb_calloc(1, sizeof(*a));
    (void)cfg;
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = a;
    return 0;
}

static int null_start(sb_adapter *a, sb_error *err)
{
    (void)a;
    (void)err;
    return 0;
}

static int null_deliver(sb_adapter *a, sb_delivery *d)
{
    (void)a;
    /* The queue allows a consumer to finish a delivery inside deliver. */
    sb_delivery_done(d, 0, NULL);
    return 0;
}

static void null_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    cb(a); /* nothing open, nothing held */
}

static void null_destroy(sb_adapter *a)
{
    sb_free(a);
}

const sb_adapter_type sb_adapter_null = {
    .version = SB_ADAPTER_VERSION,
    .name = "null",
    .caps = SB_CAP_SINK,
    .create = null_create,
    .start = null_start,
    .deliver = null_deliver,
    .stop = null_stop,
    .destroy = null_destroy,
};
