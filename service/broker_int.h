/*
 * Broker internals shared by broker.c (lifecycle, config, adapters),
 * publish.c (routing and commit), admin.c (stats and dead letters).
 */
#ifndef SB_BROKER_INT_H
#define SB_BROKER_INT_H

#include "service/adapter.h"
#include "service/broker.h"
#include "service/keyset.h"
#include "service/map.h"
#include "service/pool.h"
#include "service/queue_int.h"
#include "service/remote.h"
#include "service/subindex.h"
#include "storage/store.h"

/* Session logons and logoffs waiting for the loop (sb_broker_session_event). */
#define SB_BROKER_SESSION_EVENTS 64
struct sb_session_event {
    uint32_t session;
    int logon;
};

/* A publish waiting for its commit; completed strictly in publish order. */
typedef struct sb_pending {
    sb_store_op op;
    sb_broker *broker;
    sb_message *msg;
    sb_queue **queues; /* queues to append to once committed */
    uint32_t *queue_ids;
    sb_queue *queues_inline[4]; /* most messages match few queues: no allocation */
    uint32_t ids_inline[4];
    size_t queue_count;
    sb_store_entry_ref *drops;
    /* One entry per queue, allocated before the commit so that appending a
     * committed message cannot fail (chained by next). */
    sb_entry *spare;
    int retain;
    char *dedup_key;
    int64_t dedup_expires_ms;
    uint64_t key_seq;    /* a protocol key's put (sb_broker__key_put_begin) */
    int durability_mask; /* bit per sb_durability of the queues */
    int done;
    int status;
    int duplicate; /* its dedup key was committed already: nothing appended */
    /* Queues (bit i: queues[i], i < 64) that got the message before its
     * commit, and their entries still linked (sb_entry.pending). */
    uint64_t early_mask;
    sb_entry *early;
    /* Protocol state of its early deliveries (sb_delivery_key_put,
     * sb_delivery_keys_if_refused), deleted or put if the store refuses
     * the message. */
    struct sb_pending_key *keys;
    /* Early deliveries whose entry let them go (abandoned: a lease ended,
     * a part failed) before the commit, chained by enext: told the
     * outcome (sb_delivery.withdrawn). */
    sb_delivery *orphans;
    char *why; /* why it was refused (sb_malloc'ed; NULL: none, or out of memory) */
    /* A retained publish in flight when a subscription matching it was
     * made gets to it by a copy queued then, after the retained values
     * (sb_broker__retained_prepare): the copy waits for the publish
     * (leader) and goes, or not, with it. Chained by follow_next from the
     * publish's followers; leader is NULL once the publish completed. A
     * durable copy is submitted at once (the store's op order is the
     * pending list's); if the publish does not commit, the copy is
     * withdrawn at its own completion and its row, if stored, deleted. */
    struct sb_pending *leader, *followers, *follow_next;
    int lead_failed; /* such a copy whose publish did not commit */
    int row_waits;   /* a durable such copy, counted in its queue's copy_rows */
    sb_publish_cb cb;
    void *ctx;
    struct sb_pending *next;
} sb_pending;

/* A topic's retained value; the slot stays while the topic has one. */
typedef struct sb_retained {
    sb_message *msg;
    uint64_t gen;
} sb_retained;

/* A route destination bound to a sink adapter. */
typedef struct sb_sink_binding {
    sb_consumer consumer; /* first: the consumer's ctx points back here */
    sb_adapter *adapter;
    char *queue_name;
    int wanted;  /* reload: still a destination in the new config */
    int retired; /* no longer wanted: removed once its deliveries are done */
    struct sb_sink_binding *next;
} sb_sink_binding;

struct sb_broker {
    uv_loop_t loop;
    sb_config *cfg;
    sb_store *store;
    sb_remote *remote;            /* remote mode (a session agent): no store, calls go here */
    int service;                  /* runs as the Windows service (desktop: auto means agents) */
    struct sb_agent_host *agents; /* serving session agents (service/agent_host.c), or NULL */
    int started, stopping;
    int64_t started_ms;

    sb_queue *queues; /* every queue, live or orphaned; newest first */
    sb_map queues_by_name;
    sb_map queues_by_id; /* sb_broker__queue_by_id */
    sb_subindex routing; /* every queue under each of its filters */
    uint64_t match_gen;  /* per publish: a queue is taken once (sb_queue.match_gen) */
    uint64_t queue_seq;  /* sb_queue.seq of the newest queue */
    sb_queue *expiring;  /* queues holding entries with an expiry time */
    sb_queue *sys_dirty; /* queues whose $SYS values changed since published */
    uint64_t last_msg_id;
    uint32_t last_queue_id;
    uint64_t boot_msg_id;   /* last_msg_id at start: older stored entries may have been delivered */
    uint64_t ids_asked;     /* message ids asked to be reserved (sb_store_reserve_ids) */
    uint64_t ids_safe;      /* and reserved by a commit: may be delivered before their own */
    int64_t resident_bytes; /* the queues' windows (paging.c) */
    int64_t resident_peak;  /* their most since the heap was last trimmed */
    int64_t page_reserved;  /* of the budget, what page-ins under way may read */
    int64_t page_retry_ms; /* wall clock ms: read again for queues whose page-in failed (0: none) */
    int page_nomem;        /* some queue's page-in found no memory (sb_queue.page_nomem) */
    uv_work_t trim_req;    /* giving memory back, off the loop */
    int trimming;

    sb_adapter *adapters;
    sb_adapter *admin;
    sb_adapter *republisher; /* routes with republish: true deliver to it (republish.h) */
    struct sb_http *http;    /* broker.http's listener (http.h), or NULL */
    sb_sink_binding *bindings;
    int adapters_closing;

    sb_map retained;              /* topic -> sb_retained* */
    sb_subindex retained_topics;  /* the same, for filters (sb_subindex_match_filter) */
    uint64_t retained_gen;        /* per lookup: a value is taken once (sb_retained.gen) */
    sb_map dedup;                 /* key -> int64_t* expiry (0: never) */
    sb_keyset key_index;          /* the keys of dedup that never expire, in order */
    sb_map key_flights;           /* protocol key -> its puts in flight (broker.c) */
    uint64_t key_seq;             /* numbers the protocol key ops (broker.c) */
    sb_map sessions;              /* client session name -> its owner (sb_broker_session_swap) */
    struct sb_auth *auth;         /* broker.auth, or NULL */
    struct sb_auth_old *old_auth; /* replaced by reloads; freed with the broker */

    sb_pending *pending_head, *pending_tail;
    size_t retained_inflight; /* retained publishes in the pending list */
    sb_queue *ack_flush; /* queues with acks to send */
    uv_idle_t flush_idle;
    int flush_armed;

    uv_async_t wakeup; /* stop / reload requests from other threads */
    uv_mutex_t request_lock;
    int stop_requested, reload_requested;
    struct sb_session_event session_events[SB_BROKER_SESSION_EVENTS];
    int session_event_count, session_events_lost; /* more came than fit: rescan */
    int reloading, reload_again; /* a reload is being prepared off the loop; another is due */
    uv_timer_t housekeeping;
    uv_timer_t expiry_timer;         /* expiry.c */
    sb_queue *idle_head, *idle_tail; /* idle client queues that expire, by deadline */
    int64_t last_prune_ms;
    int64_t last_sys_ms;

    uint64_t published, published_class[3], refused;

    /* free lists of the structs made and freed per message (pool.h) */
    sb_pool entry_pool, delivery_pool, pending_pool;
    sb_pool op_pool;          /* acks, attempts and dead letters (publish.c) */
    uint64_t pools_published; /* `published` at the last housekeeping (paging.c) */
};

/* publish.c */
int sb_broker__load_retained(void *ctx, sb_message *msg);
int sb_broker__load_dedup(void *ctx, const char *key, int64_t expires_ms);
/* Numbers a put of key just submitted to the store (a key op, or a
 * publish's protocol key) as the last op on key; 0 out of memory. */
uint64_t sb_broker__key_put_begin(sb_broker *b, const char *key);
/* That put completed (ok: committed): 1 if it is still the last op on
 * key, so that its outcome may change the map of keys (1 also for seq 0),
 * else 0. *stored: whether the store now has key (this put, or one before
 * it since the last delete, committed). */
int sb_broker__key_put_end(sb_broker *b, const char *key, uint64_t seq, int ok, int *stored);
/* Sets key in the map of keys (dedup) with its expiry (0: a protocol key,
 * which never expires and is indexed for sb_broker_key_each); 0 or
 * SB_ENOMEM (then the map is as before, but for a key that was there). */
int sb_broker__key_add(sb_broker *b, const char *key, int64_t expires_ms);
/* Removes key from the map of keys only (its store delete is on its way). */
void sb_broker__key_forget(sb_broker *b, const char *key);
/* Puts key in the map of keys at once and in the store (state a client
 * needs from now on, e.g. a PUBREL owed); forgotten again if the store
 * fails it, unless another op on the key came since. */
int sb_broker__key_put_known(sb_broker *b, const char *key);
void sb_broker__drain_pending(sb_broker *b);
void sb_broker__arm_flush(sb_broker *b);
int sb_broker__enqueue_retained(sb_broker *b, sb_queue *q, const sb_sub_filter *filters,
                                size_t count);
/* The same in two steps, so that a subscription is made all or nothing:
 * _prepare allocates copies of the retained values matching filters (0 or
 * SB_ENOMEM, then out is empty); _queue queues them into q and cannot fail;
 * _discard frees what was prepared instead. Nothing may complete a publish
 * in between (no loop turn): the batch points to the retained publishes in
 * flight it copies (sb_pending.leader). */
typedef struct sb_retained_batch {
    sb_pending **items;
    size_t count;
} sb_retained_batch;
int sb_broker__retained_prepare(sb_broker *b, const sb_sub_filter *filters, size_t count,
                                sb_retained_batch *out);
void sb_broker__retained_queue(sb_broker *b, sb_queue *q, sb_retained_batch *batch);
void sb_broker__retained_discard(sb_retained_batch *batch);
/* Drops topic's retained value, if any (memory only). */
void sb_broker__forget_retained(sb_broker *b, const char *topic);
sb_queue *sb_broker__find_queue(sb_broker *b, const char *name);

/* paging.c: reads the first window of each queue with stored entries, while
 * the windows' memory budget lasts, on the store thread (after start, so
 * that the broker listens whatever the backlog). */
void sb_paging__start(sb_broker *b);
/* Once a second: gives memory back to the system after the windows shrank,
 * and what the free lists keep once nothing was published for a tick. */
void sb_paging__housekeeping(sb_broker *b);

/* expiry.c: q may have started or stopped being able to expire (consumers,
 * settings, deletion); _remove takes it off the list for good. */
void sb_broker__expiry_update(sb_broker *b, sb_queue *q);
void sb_broker__expiry_remove(sb_broker *b, sb_queue *q);

/* broker.c */
/* Gives the free lists' objects back (the windows shrank: paging.c). */
void sb_broker__pools_drain(sb_broker *b);
/* A sink adapter can take deliveries again (sb_adapter_sink_ready). */
void sb_broker__adapter_ready(sb_broker *b, sb_adapter *a);

/* A route's destinations (its adapters, then the republisher if it
 * republishes; 1 for a route with neither: the queue clients subscribe
 * to), the queue name of destination `dest`, and the transform of that
 * destination (the route's steps, then its own; *out NULL when there are
 * none): 0 or SB_ENOMEM. */
struct sb_transform;
size_t sb_broker__route_dests(const sb_route_config *r);
void sb_broker__route_queue_name(char *out, size_t n, const sb_route_config *r, size_t dest);
int sb_broker__route_transform(struct sb_transform **out, const sb_route_config *r, size_t dest);
void sb_broker__free_op(sb_store_op *o, void *ctx);
sb_queue *sb_broker__add_queue(sb_broker *b, uint32_t id, const char *name,
                               const sb_sub_filter *filters, size_t count, sb_error *err);
int sb_broker__put_queue(sb_broker *b, sb_queue *q);
sb_queue *sb_broker__queue_by_id(sb_broker *b, uint32_t id);
/* Gives q (a queue of the broker's list) a copy of filters[0..count) and
 * re-indexes it; on SB_ENOMEM q keeps its filters. */
int sb_broker__set_filters(sb_broker *b, sb_queue *q, const sb_sub_filter *filters, size_t count);
/* The same in two steps, so that a caller can undo it without allocating:
 * _begin indexes the new filters beside the old ones and gives them to q
 * (0 or SB_ENOMEM, then nothing changed), keeping the old ones in *change;
 * _end(commit) then drops the old filters from the index, or (!commit) the
 * new ones and gives q its old filters back. */
typedef struct sb_filter_change {
    sb_sub_filter *old; /* q's filters before _begin */
    size_t old_count;
    size_t indexed_from; /* the new filters from here on were indexed */
} sb_filter_change;
int sb_broker__filters_begin(sb_broker *b, sb_queue *q, const sb_sub_filter *filters, size_t count,
                             sb_filter_change *change);
void sb_broker__filters_end(sb_broker *b, sb_queue *q, sb_filter_change *change, int commit);

#endif
