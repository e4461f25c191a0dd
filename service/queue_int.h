/*
 * Subscription queues (internal to the broker).
 *
 * A queue is the in-memory working set of one durable subscription: its
 * entries in FIFO (= message id) order, the consumers attached to it, and the
 * timers for leases and retries. The store holds the durable copy; this file
 * decides what to deliver next and tells the store what was acknowledged,
 * coalescing in-order acks into one range delete per queue and loop turn.
 *
 * Paging (service/paging.c): a durable queue keeps a window of its oldest
 * entries in memory (`fifo`: the next to deliver and those in flight); the
 * rest are only in the store (`disk_depth`, all with ids above `paged_to`)
 * and are read back in order, in batches, while consumers are attached.
 * depth and bytes count the window; the queue's size is window + disk.
 */
#ifndef SB_QUEUE_INT_H
#define SB_QUEUE_INT_H

#include "config/config.h"
#include "service/broker.h"

#include <stdint.h>
#include <uv.h>

enum { SB_ENTRY_READY = 0, SB_ENTRY_LEASED, SB_ENTRY_RETRY, SB_ENTRY_DONE };

struct sb_entry {
    sb_message *msg;
    sb_queue *queue;
    int state;
    int attempts;          /* deliveries that failed so far */
    int persisted_done;    /* its row was already deleted (individual ack or dlq) */
    int offered;           /* handed to a consumer before, or loaded after a restart
                              (then it may have been) */
    int64_t deadline;      /* LEASED: lease end; RETRY: not before (loop ms) */
    int64_t expires_ms;    /* wall clock ms, 0 = never */
    sb_delivery *delivery; /* in flight (through enext: a part each, see below) */
    /* A transform made several messages of this one (a script's): they go
     * out in order, one delivery each, and the entry is acknowledged once
     * every one was. parts[parts_sent..nparts) wait for a consumer. */
    sb_message **parts;
    size_t nparts, parts_sent, parts_acked;
    int parts_redelivery;    /* the entry was offered before its parts */
    /* Appended before its message was committed (publish.c): the publish
     * waiting for its commit, and this entry's index among its store op's
     * queue ids (for sb_store_cancel); NULL once the publish completed. */
    struct sb_pending *pending;
    struct sb_entry *pnext; /* the pending publish's other such entries */
    uint32_t pslot;
    int unstored; /* its publish failed: dropped when done, never retried */
    sb_entry *next, *prev;   /* FIFO: all entries */
    sb_entry *snext, *sprev; /* the LEASED or RETRY list */
};

typedef struct sb_entry_list {
    sb_entry *head, *tail;
} sb_entry_list;

/* Per-second counters over the last 10 s, for in/out rates. */
#define SB_RATE_SLOTS 10
typedef struct sb_rate {
    int64_t slot_sec[SB_RATE_SLOTS];
    uint64_t slot_count[SB_RATE_SLOTS];
} sb_rate;

struct sb_queue {
    sb_broker *broker;
    uint32_t id;
    char *name;
    sb_sub_filter *filters; /* one block (sb_sub_filters_copy); NULL if none */
    size_t filter_count;
    char *protocol;               /* sb_broker_sub_define's; NULL: not a protocol session */
    char *owner;                  /* the identity a protocol session belongs to, or NULL */
    int transient;                /* client queue not saved in the store */
    int from_config;              /* declared by a route (else client-created) */
    int live;                     /* still in the current config / not deleted */
    const sb_route_config *route; /* NULL for client queues */
    /* effective settings */
    sb_durability durability;
    int max_attempts;
    int64_t backoff_ms, max_backoff_ms, ttl_ms, max_depth, max_bytes, lease_ms;
    sb_overflow overflow;
    int retain;
    char *dedup_header;
    int64_t dedup_window_ms;
    /* the route's and this destination's transforms (service/transform.h),
     * applied to each delivery; NULL: messages go as stored */
    struct sb_transform *transform;

    sb_entry_list fifo;   /* every entry not yet removed */
    sb_entry *cursor;     /* first entry never delivered (READY), or NULL */
    sb_entry_list leased; /* by lease deadline */
    sb_entry_list retry;  /* by not-before */
    sb_entry *fanning;    /* LEASED, with parts to hand out before the next entry */
    int64_t depth;        /* entries not DONE */
    int64_t bytes;
    int64_t pending; /* publishes routed here, not yet committed */
    int64_t early;   /* of which appended to the window already (not in pending_bytes) */
    int64_t redriving; /* dead letters on their way back (admin.c): their ids are older */
    /* Durable retained copies whose row may yet be withdrawn (publish.c,
     * sb_pending.leader): no page-in or expiry reads the stored part
     * meanwhile, which could take such a row before its delete. */
    int copy_rows;
    int stored_corrupt; /* a read of its stored part met a damaged page: not read again */
    int64_t pending_bytes;
    int dispatch_due; /* dispatch from the broker's flush (sb_broker__schedule_dispatch) */
    sb_consumer *consumers;
    sb_consumer *rr; /* round-robin position */
    uv_timer_t timer;
    int timer_armed;
    int64_t timer_due; /* when it fires (loop ms), while armed */
    int dispatching;

    /* in-order acks not yet sent to the store: [ack_first, ack_last],
     * ack_rows entries of ack_bytes in it */
    uint64_t ack_first, ack_last;
    int64_t ack_rows, ack_bytes;
    int ack_queued; /* on the broker's flush list */
    sb_queue *ack_next;

    /* counters */
    uint64_t published, delivered, acked, nacked, dead, expired, dropped;
    uint64_t filtered; /* acknowledged unsent: a transform's when: did not hold */
    sb_rate in_rate, out_rate;

    /* the broker's indexes */
    sb_queue *next, *prev;         /* broker's list, newest first */
    uint64_t seq;                  /* position in that list: higher is newer */
    uint64_t match_gen;            /* the publish that took it last */
    int64_t expiring;              /* entries with an expiry time */
    sb_queue *exp_next, *exp_prev; /* the broker's list of such queues */
    int sys_dirty;                 /* on the broker's list of changed queues */
    sb_queue *sys_next, *sys_prev;

    /* paging.c: entries only in the store, all with ids above paged_to */
    int64_t disk_depth, disk_bytes; /* as the store counts them (queue_counts) */
    uint64_t paged_to;              /* largest id that was in the window */
    struct sb_store_op *page_op;    /* a page-in being read, or NULL */
    int page_nomem;                 /* a page-in found no memory: housekeeping tries it again */
    int64_t page_skip;              /* entries the store dropped since page_op left */
    uint64_t page_snap;             /* broker's last message id when page_op left */
    int64_t snap_depth, snap_bytes; /* entries stored since then, ids above page_snap */
    struct sb_store_op *trim_op;    /* an expiry in the store under way, or NULL */
    int disk_expiring;              /* stored entries may have their own expiry */
    int64_t disk_check_ms;          /* wall clock ms: look for expired stored ones */

    /* expiry.c: a client queue without consumers for expire_ms (> 0) is
     * deleted; listed by deadline while it has none */
    int64_t expire_ms, idle_since_ms;
    sb_queue *idle_prev, *idle_next;
    int idle_listed;
};

/* Creates a queue (not yet in the broker's lists) with a copy of
 * filters[0..filter_count); settings from route (config queues) or s
 * (client queues). */
sb_queue *sb_queue__new(sb_broker *b, uint32_t id, const char *name, const sb_sub_filter *filters,
                        size_t filter_count);
void sb_queue__apply_route(sb_queue *q, const sb_route_config *r);
void sb_queue__apply_settings(sb_queue *q, const sb_sub_settings *s);

/* Replaces the queue's transform with t (now owned by q; NULL: none).
 * Deliveries in flight keep the copies they were given. */
void sb_queue__set_transform(sb_queue *q, struct sb_transform *t);

/* Appends a committed message (takes a new reference), or counts it as
 * stored only when the queue pages (sb_queue__stays_stored). */
int sb_queue__append(sb_queue *q, sb_message *msg, int attempts);

/* 1 if a message of `size` bytes can go to q's window now: nothing of q
 * waits in the store, its window and the broker's memory have room. */
int sb_queue__fits_window(const sb_queue *q, int64_t size);

/* e's publish failed after e was appended before the commit: e leaves the
 * queue (one a consumer holds leaves when that consumer is done with it,
 * whatever the outcome). */
void sb_queue__withdraw(sb_queue *q, sb_entry *e);

/* A committed message for q: 1 if it stays in the store only (counted;
 * the queue's window is full or entries wait in the store before it),
 * 0 if the caller appends it to the window. */
int sb_queue__stays_stored(sb_queue *q, const sb_message *msg);

/* Appends an entry read back from the store (not counted as published;
 * offered: it may have been delivered before a restart). */
void sb_queue__append_paged(sb_queue *q, sb_entry *e, sb_message *msg, int attempts, int offered);

/* The total size, window and store. */
int64_t sb_queue__total_depth(const sb_queue *q);
int64_t sb_queue__total_bytes(const sb_queue *q);

/* Puts q on the broker's expiry list while it has entries that may expire
 * (in the window, or in the store), and off it otherwise. */
void sb_queue__watch_expiry(sb_queue *q);

/* The same into e, an sb_entry the caller allocated with sb_malloc
 * beforehand (now owned by q): cannot fail. */
void sb_queue__append_entry(sb_queue *q, sb_entry *e, sb_message *msg, int attempts);

/* Delivers what can be delivered now. */
void sb_queue__dispatch(sb_queue *q);

/* Removes all entries without touching the store (queue deletion). */
void sb_queue__clear(sb_queue *q);

/* Closes the timer; frees the queue when the handle is closed. */
void sb_queue__close(sb_queue *q);

/* The oldest entries to drop for the drop-oldest overflow policy: marks
 * up to n entries DONE (not leased ones) and writes their ids to out. */
size_t sb_queue__drop_oldest(sb_queue *q, uint64_t *out, size_t n);

/* Drop-oldest queues: drops the oldest entries (not leased ones) while
 * the queue is over max_depth or max_bytes, deleting them from the store
 * like acknowledged ones. Publishes that were in flight when their
 * publish made room complete over the limit; this brings the queue back. */
void sb_queue__trim(sb_queue *q);

/* Sends the coalesced ack range to the store. */
void sb_queue__flush_acks(sb_queue *q);

/* Expires entries past their TTL (dead-letters them). */
void sb_queue__expire(sb_queue *q, int64_t now_ms);

void sb_rate__add(sb_rate *r, int64_t now_sec, uint64_t n);
double sb_rate__per_sec(const sb_rate *r, int64_t now_sec);

/* Broker internals used by queue.c (defined in broker.c). */
/* q's depth or dead count changed (for its $SYS values): call when
 * !q->sys_dirty. */
void sb_broker__queue_changed(sb_queue *q);
/* Entries and deliveries come from the broker's free lists (pool.h):
 * not zeroed; NULL on out-of-memory. _put takes NULL. */
sb_entry *sb_broker__entry_get(sb_broker *b);
void sb_broker__entry_put(sb_broker *b, sb_entry *e);
sb_delivery *sb_broker__delivery_get(sb_broker *b);
void sb_broker__delivery_put(sb_broker *b, sb_delivery *d);
/* q has entries with an expiry time (on), or no longer (off). */
void sb_broker__watch_expiry(sb_queue *q, int on);
void sb_broker__deadletter(sb_broker *b, sb_queue *q, sb_entry *e, const char *reason);
/* Deletes q's entries [first, last] from the store: rows entries of
 * `bytes` in all (sb_message_size), those of q still stored in the range. */
void sb_broker__store_ack(sb_broker *b, sb_queue *q, uint64_t first, uint64_t last, int64_t rows,
                          int64_t bytes);
void sb_broker__schedule_ack_flush(sb_broker *b, sb_queue *q);
/* Dispatches q from the broker's flush, once per loop turn. */
void sb_broker__schedule_dispatch(sb_broker *b, sb_queue *q);
/* e was appended before its message's commit and is now acknowledged: 1 if
 * its row will never be written (the store had not begun the publish), 0
 * if it must be deleted as usual. */
int sb_broker__cancel_insert(sb_entry *e);
/* e, appended before its message's commit, is freed first (publish.c). */
void sb_broker__entry_gone(sb_entry *e);
/* d, a delivery of e (appended before its message's commit), loses its
 * entry (abandon): it learns the commit's outcome directly (publish.c). */
void sb_broker__orphan(sb_entry *e, sb_delivery *d);
/* d, orphaned before the commit, is freed first. */
void sb_broker__orphan_gone(sb_delivery *d);
void sb_broker__store_attempts(sb_broker *b, sb_queue *q, sb_entry *e);
void sb_queue__detach_consumer(sb_queue *q, sb_consumer *c, int failed);

/* paging.c */
/* Reads q's next stored entries into its window if it runs low and a
 * consumer is attached. */
void sb_paging__fill(sb_queue *q);
/* Deletes q's oldest n stored entries (drop-oldest), in the store; returns
 * 0 if nothing was dropped (no store, stopping, out of memory). */
int sb_paging__drop(sb_queue *q, int64_t n);
/* Dead-letters q's stored entries that expired, in the store, when due. */
void sb_paging__expire(sb_queue *q, int64_t now_ms);
/* The window's limits: entries per queue, bytes for all queues. */
int sb_paging__window(const sb_queue *q);
/* How many entries a queue's window holds (in flight and ahead) while
 * consumers whose windows add up to `credit` acknowledge `rate` a second:
 * credit plus what they take in the read-ahead time, at least a floor, at
 * most `window` (queue_window). The window is refilled below half of it. */
int sb_paging__target(int64_t credit, double rate, int window);
int sb_paging__room(const sb_queue *q, int64_t size);
/* The window's bytes changed by delta (for the broker's budget). */
void sb_paging__resident(sb_queue *q, int64_t delta);

#endif
