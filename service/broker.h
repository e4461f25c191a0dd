/*
 * The broker: owns the loop, the store, the subscription queues and the
 * adapters, and is what adapters and protocols talk to.
 *
 * Everything here runs on the loop thread, except the functions marked
 * thread-safe. Producers call sb_broker_publish; the callback fires once the
 * message is committed with the durability its queues require (or fails).
 * Consumers (adapter sinks, jsonl/MQTT sessions) attach to a subscription and
 * receive deliveries within their window; each delivery ends with
 * sb_delivery_done (ack or nack).
 */
#ifndef SB_BROKER_H
#define SB_BROKER_H

#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "service/error.h"
#include "service/message.h"
#include "service/topic.h"

typedef struct sb_broker sb_broker;
typedef struct sb_queue sb_queue;
typedef struct sb_entry sb_entry;
typedef struct sb_consumer sb_consumer;
typedef struct sb_delivery sb_delivery;

/* ---- lifecycle (main.c, the Windows service) ---- */

/* The broker finds adapter types in the registry (service/adapter.h): the
 * program registers the types it links before it checks a config or
 * creates a broker (service/main.c registers adapters/builtin.h). */

/* Checks what the schema cannot: routes' destinations must be able to send;
 * with this_platform also that every adapter type exists on this platform
 * and passes its own checks (what `run` needs; `check-config` leaves those
 * out so a Windows config can be checked on Linux). Returns 0 or
 * SB_ECONFIG with err naming FILE:LINE:COL. */
int sb_broker_check_config(const sb_config *cfg, int this_platform, sb_error *err);

/* Creates a broker for cfg (takes ownership of cfg). Opens nothing yet. */
int sb_broker_new(sb_broker **out, sb_config *cfg, sb_error *err);

/* Opens the store, loads queues, starts adapters and the admin endpoint.
 * On failure everything opened is closed again and err says what failed. */
int sb_broker_start(sb_broker *b, sb_error *err);

/* Runs the loop until sb_broker_stop is called and everything has drained. */
int sb_broker_run(sb_broker *b);

/* Begins an orderly stop: adapters close, in-flight commits finish. */
void sb_broker_stop(sb_broker *b);

/* Thread-safe: asks the loop to stop (signal handlers, the SCM). */
void sb_broker_request_stop(sb_broker *b);

/* Thread-safe: asks the loop to reload the config file (SIGHUP, PARAMCHANGE). */
void sb_broker_request_reload(sb_broker *b);

/* Applies a new config (takes ownership of cfg, also on failure): adapters
 * added, removed or changed; routes' settings updated; queues and their
 * messages kept. Returns SB_ECONFIG (or SB_ENOMEM) with err set if cfg
 * cannot be applied (the old config keeps running); other codes if it was
 * applied only in part (err says what failed). */
int sb_broker_reload(sb_broker *b, sb_config *cfg, sb_error *err);

void sb_broker_free(sb_broker *b);

/* Tells b it runs as the Windows service (before sb_broker_start): then
 * `desktop: auto` means desktop adapters run in session agents. */
void sb_broker_set_service(sb_broker *b, int service);

/* 1 if b runs as the Windows service (named objects then go to Global\). */
int sb_broker_is_service(const sb_broker *b);

/* 1 if adapter cfg runs in this process: not a desktop adapter (see
 * sb_adapter_is_desktop) that session agents host instead. */
int sb_broker_hosts(const sb_broker *b, const sb_adapter_config *cfg);

/* Thread-safe: a user logged on to (logon = 1) or off from Windows
 * session `session` (SERVICE_CONTROL_SESSIONCHANGE): agents start or stop. */
void sb_broker_session_event(sb_broker *b, uint32_t session, int logon);

uv_loop_t *sb_broker_loop(sb_broker *b);
const sb_config *sb_broker_get_config(sb_broker *b);

/* ---- publishing ---- */

typedef struct sb_publish_opts {
    const char *source; /* "adapter peer", recorded with dead letters; may be NULL */
    int retain;         /* also keep as the topic's retained value */
    /* Exactly once (MQTT QoS 2): committed together with the message; a
     * later publish with the same key is acknowledged and dropped, until
     * sb_broker_key_delete. NULL: none. */
    const char *dedup_key;
} sb_publish_opts;

/* status: 0 or SB_E*; msg_id: the committed id; queues: how many queues got it
 * (0: no route matched); why: a one-line reason when status != 0. */
typedef void (*sb_publish_cb)(void *ctx, int status, uint64_t msg_id, int queues, const char *why);

/* Routes msg to every matching subscription and commits it. Takes a new
 * reference on msg. Returns 0 if accepted (cb will be called exactly once,
 * never before this returns), or an SB_E* error with err set (cb not called):
 * SB_EINVAL (bad topic), SB_EFULL (a queue with overflow reject is full),
 * SB_ENOSPC / SB_ESTORE (store refusing writes), SB_ESHUTDOWN. */
int sb_broker_publish(sb_broker *b, sb_message *msg, const sb_publish_opts *opts, sb_publish_cb cb,
                      void *ctx, sb_error *err);

/* ---- consuming ---- */

struct sb_delivery {
    sb_message *msg; /* borrowed; valid until sb_delivery_done */
    const char *sub; /* subscription name */
    int attempt;     /* 1 for a first delivery */
    int redelivery;  /* offered before (or may have been, before a restart) */
    sb_consumer *consumer;
    sb_entry *entry;            /* private: NULL once the lease expired */
    sb_message *shaped;         /* private: the transformed copy msg points to, or NULL */
    sb_delivery *enext;         /* private: the entry's other deliveries in flight */
    sb_delivery *next;          /* free for the consumer's own lists */
    sb_delivery *onext, *oprev; /* private: the consumer's outstanding list */
    struct sb_pending *pending; /* private: without entry, its publish still to commit */
    int withdrawn;              /* private: without entry, its publish was refused */
};

struct sb_consumer {
    /* Offers a delivery. Return 0 if taken (sb_delivery_done must follow,
     * exactly once), non-zero if it cannot be taken now (call
     * sb_consumer_ready when it can). */
    int (*deliver)(sb_consumer *c, sb_delivery *d);
    void *ctx;
    const char *name; /* for logs, e.g. "clients 127.0.0.1:50312" */
    int window;       /* max deliveries outstanding, >= 1 */
    /* private to the broker */
    sb_queue *queue;
    struct sb_remote *remote; /* attached through a remote broker (service/remote.h) */
    int inflight;
    int busy; /* refused the last offer; skipped until sb_consumer_ready */
    sb_delivery *outstanding;
    sb_consumer *next;
};

/* Ends a delivery: status 0 acks it (removed from the queue); otherwise it
 * is retried after the queue's backoff, or dead-lettered with `reason` after
 * max_attempts. Frees d. */
void sb_delivery_done(sb_delivery *d, int status, const char *reason);

/* Ends a delivery that failed through no fault of its message (the link
 * it went out on was lost before an acknowledgement): it goes back to the
 * queue at once, ahead of newer entries, and the attempt is not counted,
 * so an outage never dead-letters. Frees d. */
void sb_delivery_return(sb_delivery *d, const char *reason);

/* 1 if d's message was withdrawn: delivered before its commit, which the
 * store then refused. It is never delivered again, whatever becomes of d,
 * so protocol state kept for its redelivery can go. */
int sb_delivery_withdrawn(const sb_delivery *d);

/* Settings of a subscription created by a client (routes have theirs in
 * the config). */
typedef struct sb_sub_settings {
    sb_durability durability;
    int max_attempts;
    int64_t lease_ms, ttl_ms, max_depth;
    sb_overflow overflow; /* at max_depth: reject (default) or drop-oldest */
    int transient;        /* not saved: gone after a restart (MQTT clean sessions) */
    /* Deleted, messages and all, once no consumer has been attached for this
     * long (counted from the start after a restart); 0 (default): never. */
    int64_t expire_ms;
} sb_sub_settings;

void sb_sub_settings_default(sb_sub_settings *s);

/* Creates the client subscription `name` with one filter if it does not
 * exist (retained values matching the filter are queued into it). If it
 * exists, filter (when not NULL) must be its only filter. NULL filter: the
 * subscription must exist (SB_ENOTFOUND). */
int sb_broker_subscribe(sb_broker *b, const char *name, const char *filter,
                        const sb_sub_settings *settings, sb_error *err);

/* The same with filters[0..count) (count >= 1; NULL: it must exist). If it
 * exists, the filters must be its filters, in the same order (QoS is not
 * compared; this kind of subscription grants none). */
int sb_broker_subscribe_filters(sb_broker *b, const char *name, const sb_sub_filter *filters,
                                size_t count, const sb_sub_settings *settings, sb_error *err);

/* A subscription's definition. As an argument of sb_broker_sub_define, the
 * pointers are borrowed for the call; as filled by sb_broker_sub_get, they
 * point into the broker's copy, valid until the subscription changes or
 * goes (use them on the loop thread, at once). */
typedef struct sb_sub_def {
    const sb_sub_filter *filters; /* in order; none (0): matches nothing yet */
    size_t filter_count;
    /* The client protocol that defined it with sb_broker_sub_define ("mqtt",
     * "dde"); NULL for a route's queue and sb_broker_subscribe's. */
    const char *protocol;
    /* The identity the session belongs to (a user name, a certificate's
     * name), or NULL: nobody's, or not a protocol session. */
    const char *owner;
} sb_sub_def;

/* Fills *out with the definition of subscription `name`. Returns 0 or
 * SB_ENOTFOUND (*out zeroed). */
int sb_broker_sub_get(sb_broker *b, const char *name, sb_sub_def *out);

/* Creates the client subscription `name` of protocol def->protocol (not
 * NULL), or replaces the filters and owner of the one it made before, with
 * *def, saved together (each filter keeps its QoS). settings apply only
 * when it is created (NULL: defaults). On creation the retained values
 * matching its filters are queued into it; those matching
 * retained_for[0..retained_count) (a protocol subscribing to one more
 * filter; may overlap def's) are queued whether it was created now or not.
 * All or nothing: on failure the subscription is as it was (or absent).
 * Returns 0, SB_EINVAL (a bad filter, no protocol), SB_EACCES (a route's
 * queue), SB_EEXIST (a subscription of sb_broker_subscribe or another
 * protocol has the name), SB_ENOMEM, SB_ESHUTDOWN. */
int sb_broker_sub_define(sb_broker *b, const char *name, const sb_sub_def *def,
                         const sb_sub_settings *settings, const sb_sub_filter *retained_for,
                         size_t retained_count, sb_error *err);

/* Queues the retained values matching `filter` into the existing
 * subscription `name`, as a new subscription gets those of its filter.
 * Returns 0, SB_ENOTFOUND, or SB_EINVAL for a bad filter. */
int sb_broker_sub_add_retained(sb_broker *b, const char *name, const char *filter, sb_error *err);

/* Sets how long client subscription `name` may go without a consumer
 * before it is deleted (0: never; see sb_sub_settings.expire_ms), saved
 * with its definition. Returns 0, SB_ENOTFOUND, or SB_EACCES for a route's
 * queue. */
int sb_broker_sub_set_expiry(sb_broker *b, const char *name, int64_t expire_ms, sb_error *err);

/* Deletes a client-created subscription and its messages; SB_EBUSY while a
 * consumer is attached to it. */
int sb_broker_unsubscribe(sb_broker *b, const char *name, sb_error *err);

/* Attaches a consumer to an existing subscription (deliveries start at once). */
int sb_broker_attach(sb_broker *b, const char *name, sb_consumer *c, sb_error *err);

/* Detaches: its outstanding deliveries return to the queue (as redeliveries),
 * and are freed (do not call sb_delivery_done for them afterwards). With
 * `failed` (the consumer went away, e.g. its connection dropped) each counts
 * as a failed attempt — a message that crashes its consumers ends in the
 * dead-letter queue instead of looping; without (an orderly unsubscribe) not. */
void sb_broker_detach(sb_broker *b, sb_consumer *c, int failed);

/* The consumer can take deliveries again (window freed, became writable). */
void sb_consumer_ready(sb_consumer *c);

/* 1 if routes deliver to adapter a (it is bound as a sink). */
struct sb_adapter;
int sb_broker_is_destination(sb_broker *b, const struct sb_adapter *a);

/* ---- protocol state ---- */

/* Users and topic rules (broker.auth), or NULL when none are configured.
 * Stays valid for the broker's lifetime, also after a reload replaced it. */
struct sb_auth;
const struct sb_auth *sb_broker_auth(sb_broker *b);

/* Keys a protocol keeps in the store across restarts (MQTT: QoS 2 messages
 * released but not completed). put calls cb(ctx, status) once the key is
 * committed (fsync); returns 0 or SB_ESHUTDOWN / SB_ENOMEM (cb not called).
 * A key exists once its put committed, unless a delete (or another put) of
 * it was called after that put: the last op called wins, whenever the
 * commits complete. */
typedef void (*sb_key_cb)(void *ctx, int status);
int sb_broker_key_put(sb_broker *b, const char *key, sb_key_cb cb, void *ctx);
int sb_broker_key_exists(sb_broker *b, const char *key);
/* Deletes key, or with prefix every key starting with it. */
void sb_broker_key_delete(sb_broker *b, const char *key, int prefix);
/* sb_broker_key_put for state kept for delivery d (its redelivery): if
 * d's message was delivered before its commit and the store then refuses
 * it, the key is deleted with it, whatever became of d meanwhile. */
int sb_delivery_key_put(sb_broker *b, sb_delivery *d, const char *key, sb_key_cb cb, void *ctx);
/* Keys (count of them, copied) to put only if d's message was delivered
 * before its commit and the store then refuses it: state a client needs
 * after that, e.g. a QoS 2 PUBREL still owed. They are put in the order
 * given (one can mark that the others exist). Nothing if d's message is
 * committed already. 0 or SB_ENOMEM. */
int sb_delivery_keys_if_refused(sb_broker *b, sb_delivery *d, const char *const *keys,
                                size_t count);
/* Calls cb for each key starting with prefix (an sb_broker_key_put
 * committed, not deleted since), in byte order; costs the keys found, not
 * all keys (an index). cb may not put or delete keys. */
void sb_broker_key_each(sb_broker *b, const char *prefix, void (*cb)(const char *key, void *ctx),
                        void *ctx);

/* Named client sessions (MQTT client ids), so that a new connection with
 * the same name takes over: registers owner under name (NULL: removes the
 * name) and returns the previous owner, or NULL. */
void *sb_broker_session_swap(sb_broker *b, const char *name, void *owner);

/* ---- admin (jsonl) ---- */

/* Builds the stats object of the protocol (`queues`, `store`, `broker`);
 * returns a new jansson reference (json_t *) or NULL on out-of-memory. */
void *sb_broker_stats_json(sb_broker *b);

/* 1 if a client may see the statistics of queue `name` with
 * filters[0..count). */
typedef int (*sb_stats_visible_cb)(void *ctx, const char *name, const sb_sub_filter *filters,
                                   size_t count);

/* The same with only the queues visible() accepts (NULL: every queue). */
void *sb_broker_stats_json_visible(sb_broker *b, sb_stats_visible_cb visible, void *ctx);

typedef void (*sb_admin_cb)(void *ctx, int status, void *result_json, const char *why);

/* Dead-letter operations; cb gets a new jansson object (or NULL on error). */
int sb_broker_dlq_list(sb_broker *b, const char *sub, int64_t after, int limit, sb_admin_cb cb,
                       void *ctx, sb_error *err);
int sb_broker_dlq_redrive(sb_broker *b, const char *sub, sb_admin_cb cb, void *ctx, sb_error *err);
int sb_broker_dlq_purge(sb_broker *b, const char *sub, sb_admin_cb cb, void *ctx, sb_error *err);

/* One batch of a redrive or purge of many (a client shows progress between
 * them, and no request holds the store long): at most `limit` dead letters
 * (0: all). Redrive: those after dlq_id `after`, of messages with ids up to
 * `floor` (0: the last id now). Purge: the oldest `limit`, with dlq_ids up
 * to `floor` (0: the largest now). When a batch stopped at its limit, the
 * result has "more": true, and "floor" (and for redrive "next"), the next
 * batch's floor (and after). */
typedef struct sb_dlq_batch {
    int64_t after;
    uint64_t floor;
    int64_t limit;
} sb_dlq_batch;

int sb_broker_dlq_redrive_batch(sb_broker *b, const char *sub, const sb_dlq_batch *batch,
                                sb_admin_cb cb, void *ctx, sb_error *err);
int sb_broker_dlq_purge_batch(sb_broker *b, const char *sub, const sb_dlq_batch *batch,
                              sb_admin_cb cb, void *ctx, sb_error *err);
/* Store maintenance (the store thread holds commits meanwhile): check runs
 * a full quick_check, cb's result {"ok": bool, "report": text}; compact
 * VACUUMs the database into incremental auto-vacuum, {"before_bytes": n,
 * "after_bytes": n}, or fails with SB_ENOSPC when the disk has no room for
 * a second copy. */
int sb_broker_store_check(sb_broker *b, sb_admin_cb cb, void *ctx, sb_error *err);
int sb_broker_store_compact(sb_broker *b, sb_admin_cb cb, void *ctx, sb_error *err);

/* A dry run of route `route`'s transforms on m (nothing is published or
 * stored): a new JSON object (json_t *) {"route", "matches": whether m's
 * topic matches the route's filters, "destinations": [{"queue", "result":
 * "delivered" with "topic", "payload" (or "payload_b64") and "headers" |
 * "filtered" | "dead-letter" with "reason"}]}. NULL with err: SB_ENOTFOUND
 * (no such route), SB_ENOMEM. */
void *sb_broker_route_test(sb_broker *b, const char *route, const sb_message *m, sb_error *err);

#endif
