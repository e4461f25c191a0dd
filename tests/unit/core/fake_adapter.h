/*
 * A fake adapter type for in-process core tests: registered as type "fake"
 * by the test (never by the broker), it is a source (fake_publish publishes
 * under the adapter's name, as a real producer would) and a sink (it records
 * every delivery and holds, acknowledges or refuses it as the test says).
 * No sockets, no threads: everything happens on the broker's loop.
 *
 * The config loader only knows the real types, so a test writes a fake
 * adapter as `type: exec` with `command: [fake]` and core_config() turns it
 * into type "fake" after parsing.
 *
 * The fake allocates with libc, not sb_malloc, so allocation-failure
 * injection hits only the broker.
 */
#ifndef FAKE_ADAPTER_H
#define FAKE_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "service/adapter.h"
#include "service/broker.h"

typedef enum {
    FAKE_HOLD = 0, /* keep each delivery until the test ends it (the default) */
    FAKE_ACK,      /* acknowledge each delivery inside deliver() */
    FAKE_BUSY      /* refuse deliveries (SB_EBUSY) until fake_set_mode() */
} fake_mode;

/* One delivery as the sink saw it. */
typedef struct fake_rec {
    char *topic;
    char *payload;   /* NUL-terminated copy */
    char *retained;  /* the "retained" header, or NULL */
    char *id_header; /* the "id" header, or NULL */
    uint64_t msg_id;
    int attempt, redelivery;
    uint64_t at_ms; /* loop time of the delivery */
    sb_delivery *d; /* while held; NULL once ended */
} fake_rec;

/* Deliveries recorded by one sink (a fake adapter, or a consumer a test
 * attaches itself with fake_consumer_init). */
typedef struct fake_log {
    fake_rec *recs;
    size_t count, cap;
    fake_mode mode;
} fake_log;

typedef struct fake_adapter {
    sb_adapter base;
    fake_log log;
    uv_timer_t handle; /* closed by stop, so stop completes on a later turn */
    sb_adapter_stopped_cb stopped_cb;
    int started, stopped;
    int generation; /* how many instances of this name were created before */
    struct fake_adapter *next;
} fake_adapter;

/* Registers type "fake" (once per process; later calls do nothing). */
void fake_register(void);

/* The running instance named `name`, or NULL (a reload may replace it). */
fake_adapter *fake_get(const char *name);

/* Instances of `name` created so far (a changed adapter is recreated). */
int fake_generations(const char *name);

/* Sets what the sink does with deliveries; leaving FAKE_BUSY tells the
 * broker it may deliver again. */
void fake_set_mode(fake_adapter *f, fake_mode mode);

/* Ends a held delivery: ack (status 0) or nack. */
void fake_ack(fake_rec *r);
void fake_nack(fake_rec *r, const char *reason);

/* How many records have `payload`. */
size_t fake_count(const fake_log *l, const char *payload);

/* Releases a log's memory. */
void fake_log_free(fake_log *l);

/* A consumer a test attaches itself (sb_broker_attach) to a client
 * subscription; its deliveries go to `log`. */
typedef struct fake_consumer {
    sb_consumer c;
    fake_log log;
    uv_loop_t *loop;
} fake_consumer;

void fake_consumer_init(fake_consumer *fc, uv_loop_t *loop, const char *name, int window);

/* After sb_broker_detach: forgets the deliveries the broker freed. */
void fake_consumer_detached(fake_consumer *fc);

/* A publish made through fake_publish, and its outcome. */
typedef struct fake_pub {
    int rc;     /* what sb_broker_publish returned */
    int done;   /* the callback ran */
    int calls;  /* how often it ran (must be 1) */
    int status; /* its status */
    int queues; /* how many queues got the message */
    uint64_t msg_id;
    sb_error err;
} fake_pub;

/* A new message (refs = 1) with the given headers (key, value pairs,
 * NULL-terminated; may be NULL); aborts the test on out-of-memory. */
sb_message *fake_message(const char *topic, const char *payload, const char *const *headers);

/* Publishes msg (the caller keeps its reference) from adapter f (NULL: no
 * source). The outcome lands in *out, which must stay valid until
 * out->done; returns out->rc. */
int fake_publish_msg(fake_pub *out, sb_broker *b, fake_adapter *f, sb_message *msg, int retain,
                     const char *dedup_key);

/* fake_message + fake_publish_msg. */
int fake_publish(fake_pub *out, sb_broker *b, fake_adapter *f, const char *topic,
                 const char *payload, const char *const *headers, int retain,
                 const char *dedup_key);

#endif
