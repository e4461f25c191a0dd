/*
 * A broker whose store and queues live in another process.
 *
 * The session agent (`switchboard agent`, docs/agent.md) hosts desktop
 * adapters against an sb_broker in remote mode: the adapters see the same
 * sb_broker / sb_consumer / sb_delivery calls as in the service, and the
 * calls that need the store or the queues go through these operations,
 * which the agent implements over its connection to the service
 * (service/agent.c). The broker core knows only this interface.
 *
 * Contracts are those of broker.h, with one difference: a remote call that
 * cannot complete at once (a subscription the service refuses, a
 * connection lost) reports it later, through the publish callback or the
 * log, instead of in its return value.
 */
#ifndef SB_REMOTE_H
#define SB_REMOTE_H

#include "service/broker.h"

typedef struct sb_remote sb_remote;

typedef struct sb_remote_ops {
    /* sb_broker_publish: cb once the service committed (or refused) msg. */
    int (*publish)(sb_remote *r, sb_message *msg, const sb_publish_opts *opts, sb_publish_cb cb,
                   void *ctx, sb_error *err);
    /* sb_broker_subscribe and sb_broker_sub_define: remembered (filters
     * NULL: keep those remembered), and made in the service when a
     * consumer attaches. */
    int (*sub_define)(sb_remote *r, const char *name, const sb_sub_filter *filters, size_t count,
                      const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                      size_t retained_count, sb_error *err);
    /* sb_broker_sub_get of a subscription remembered here (its protocol
     * and owner stay NULL: the service's copy is a plain subscription). */
    int (*sub_get)(sb_remote *r, const char *name, sb_sub_def *out);
    int (*unsubscribe)(sb_remote *r, const char *name, sb_error *err);
    int (*attach)(sb_remote *r, const char *name, sb_consumer *c, sb_error *err);
    void (*detach)(sb_remote *r, sb_consumer *c, int failed);
    /* sb_delivery_done and sb_consumer_ready for a consumer attached here. */
    void (*delivery_done)(sb_remote *r, sb_delivery *d, int status, const char *reason);
    void (*consumer_ready)(sb_remote *r, sb_consumer *c);
    /* 1 while a stopping broker must wait: answers still to come, lines
     * still to write. The broker's stop ends once adapters closed and this
     * says 0. */
    int (*busy)(sb_remote *r);
} sb_remote_ops;

struct sb_remote {
    const sb_remote_ops *ops;
};

/* A route's queue that a hosted sink adapter consumes. */
typedef struct sb_remote_binding {
    const char *queue;   /* "route:adapter" */
    const char *adapter; /* an adapter of the broker's config */
} sb_remote_binding;

/* Starts b (from sb_broker_new, not started) in remote mode with cfg (taken
 * over; b's first config was a placeholder): every adapter of cfg starts,
 * and each binding attaches its adapter as the consumer of its queue
 * through r, as a route's destination does in the service. No store, no
 * admin endpoint, no housekeeping. r must outlive b. On failure the broker
 * is stopping (run its loop to finish) and err says what failed. */
int sb_broker_start_remote(sb_broker *b, sb_remote *r, sb_config *cfg,
                           const sb_remote_binding *bindings, size_t count, sb_error *err);

/* 1 once every adapter of a stopping broker has closed. */
int sb_broker_adapters_closed(sb_broker *b);

#endif
