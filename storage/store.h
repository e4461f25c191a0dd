/*
 * The durable store: subscription queues, retained values, dead letters and
 * dedup keys, behind one interface.
 *
 * The store is used from the core loop thread. Loading (sb_store_load_*) is
 * synchronous and happens once, after open and before start. After
 * sb_store_start, all changes are asynchronous operations (sb_store_op):
 * the caller fills an op, sb_store_submit() queues it (thread-safe), the store
 * thread executes queued ops in groups, one transaction per group ("group
 * commit": at most max_batch ops, waiting at most max_delay_us for more), and
 * then calls each op's callback on the loop thread, in submission order.
 *
 * Durability: an op with `sync` set is completed only after a commit with
 * synchronous=FULL (the WAL is fsync'ed). A group without any sync op commits
 * with synchronous=NORMAL (survives a process crash, not a power cut). The
 * store counts both kinds (sb_store_stats).
 *
 * Message ids and queue ids are assigned by the caller (monotonic; the
 * maximums in use are returned by sb_store_max_ids at load). The store keeps
 * one row per (queue, message): a message fanned out to N queues is written
 * N times, which keeps acknowledgement a single-table delete. An entry
 * acknowledged before the store began its publish is withdrawn from the op
 * (sb_store_cancel) and never written.
 *
 * Failure: if a group's transaction fails (disk full, I/O error), it is rolled
 * back; PUBLISH and REDRIVE ops complete with SB_ENOSPC / SB_EIO and the store
 * becomes "degraded" (sb_store_degraded), while all other ops are kept and
 * retried, with the next group, until a commit succeeds again. Nothing that
 * was committed is lost; the store recovers by itself when space returns.
 *
 * Op outcomes (op->status), besides 0:
 *   PUBLISH      SB_EDUPLICATE: dedup_key present and unexpired; SB_EEXIST: an
 *                entry (queue, msg id) already exists; SB_ENOMEM, SB_EINVAL
 *                (all: nothing written); SB_ENOSPC / SB_EIO: the group failed
 *   ATTEMPTS     SB_ENOTFOUND: no such entry
 *   DEADLETTER   SB_ENOMEM; without msg, SB_ENOTFOUND: no such entry
 *   QUEUE_PUT    SB_EEXIST: another queue has that name; SB_EINVAL (nothing
 *                written)
 *   DLQ_REDRIVE  SB_ENOTFOUND (a row is gone) or SB_EEXIST (a new id is
 *                taken): nothing redriven; SB_ENOSPC / SB_EIO: group failed.
 *                Rows with target_queue_id 0 are skipped (left in place).
 *                A redriven entry keeps the dead letter's topic, payload,
 *                headers, created, expiry and priority; attempts restart at 0
 *   DLQ_LIST     SB_ENOMEM (no rows returned)
 *   PAGE_IN      SB_ENOMEM (no rows returned); a row that does not decode is
 *                not an error: it ends the rows and is named (bad_id)
 * ACK, QUEUE_DELETE, DLQ_PURGE, DEDUP_PRUNE, KEY_PUT, KEY_DELETE and TRIM only fail when
 * sb_store_stop gives up retrying them (SB_EIO / SB_ENOSPC). Callbacks come in submission order,
 * except that ops kept for a retry complete after the failed publishes that were submitted after
 * them.
 *
 * The started store's uv_async_t keeps the loop alive until sb_store_stop;
 * run the loop once more after stop so the handle closes before
 * uv_loop_close.
 */
#ifndef SB_STORE_H
#define SB_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "service/error.h"
#include "service/message.h"
#include "service/topic.h"

#define SB_STORE_SCHEMA_VERSION 4
/* PRAGMA application_id of a Switchboard database: 'SBOX'. */
#define SB_STORE_APPLICATION_ID 0x53424F58

typedef struct sb_store sb_store;

typedef struct sb_store_options {
    const char *path;        /* database file; created if missing */
    int commit_max_batch;    /* ops per transaction, >= 1 (default 1024) */
    int commit_max_delay_us; /* wait for more ops before committing (default 0) */
    int64_t max_db_bytes;    /* 0 = unlimited; else SQLITE_FULL past this size */
} sb_store_options;

typedef enum {
    SB_OP_PUBLISH = 1,  /* insert msg into queues; optional retain, dedup, drops */
    SB_OP_ACK,          /* delete entries [first_id, last_id] of a queue */
    SB_OP_ATTEMPTS,     /* record an entry's failed attempt count */
    SB_OP_DEADLETTER,   /* write msg to the dead-letter table, delete its entry */
    SB_OP_QUEUE_PUT,    /* create or update a queue's definition */
    SB_OP_QUEUE_DELETE, /* delete a queue and all its entries */
    SB_OP_DLQ_LIST,     /* read dead letters (no change) */
    SB_OP_DLQ_REDRIVE,  /* move dead letters back into queues as new entries */
    SB_OP_DLQ_PURGE,    /* delete dead letters */
    SB_OP_DEDUP_PRUNE,  /* delete dedup keys that expired before now_ms */
    SB_OP_RETAIN_PUT,   /* set (or, with an empty payload, clear) a retained value */
    SB_OP_KEY_PUT,      /* insert or replace a dedup key (protocol state: MQTT QoS 2) */
    SB_OP_KEY_DELETE,   /* delete a dedup key, or every key with a prefix */
    SB_OP_PAGE_IN,      /* read a queue's next entries after an id (no change) */
    SB_OP_TRIM,         /* delete, or dead-letter as expired, a queue's oldest entries
                           after an id, without reading them into memory */
    SB_OP_CHECK,        /* PRAGMA quick_check of the whole database (no change) */
    SB_OP_COMPACT       /* VACUUM into incremental auto-vacuum: the file shrinks to
                           its data and returns free pages from then on */
} sb_store_op_type;

/* An entry to remove as part of a publish (overflow: drop-oldest). */
typedef struct sb_store_entry_ref {
    uint32_t queue_id;
    uint64_t msg_id;
} sb_store_entry_ref;

/* A subscription queue's definition, as SB_OP_QUEUE_PUT writes it and
 * sb_store_load_queues reads it back. All pointers are borrowed. */
typedef struct sb_store_queue {
    uint32_t id;
    const char *name;
    const sb_sub_filter *filters; /* in order, each with its granted QoS (or
                                     SB_QOS_NONE); none: matches nothing */
    size_t filter_count;
    const char *settings; /* opaque text (JSON) kept for the caller; may be NULL */
    const char *protocol; /* the client protocol that defined it ("mqtt"); NULL: none */
    const char *owner;    /* the identity a protocol session belongs to; NULL: none */
} sb_store_queue;

/* A dead letter as read back by SB_OP_DLQ_LIST / redriven by SB_OP_DLQ_REDRIVE. */
typedef struct sb_dead_letter {
    int64_t dlq_id;   /* row id in the dead-letter table */
    char *queue_name; /* the subscription it died in */
    sb_message *msg;  /* topic, payload, headers, created, original id */
    int64_t dead_ms;
    char *reason;
    char *source; /* adapter/peer that published it, if known */
    int attempts;
    /* For REDRIVE: the queue and the new message id to insert it under. */
    uint32_t target_queue_id;
    uint64_t new_msg_id;
} sb_dead_letter;

/* An entry read back by SB_OP_PAGE_IN. */
typedef struct sb_store_entry {
    sb_message *msg; /* a reference owned by the row */
    int attempts;
    int64_t size; /* sb_message_size(msg) */
} sb_store_entry;

typedef struct sb_store_op sb_store_op;
typedef void (*sb_store_cb)(sb_store_op *op, void *ctx);

struct sb_store_op {
    sb_store_op_type type;
    int sync;       /* 1: complete only after an fsync'ed commit */
    int status;     /* set by the store before the callback: 0 or SB_E* */
    sb_store_cb cb; /* called on the loop thread; may free the op */
    void *ctx;
    sb_store_op *next; /* private to the store */
    uint64_t seq;      /* private to the store: submission order */
    union {
        struct {
            sb_message *msg; /* caller keeps its reference */
            uint32_t *queue_ids; /* an id of 0 is skipped (sb_store_cancel) */
            size_t queue_count;
            int retain;               /* also set msg as the topic's retained value */
            const char *dedup_key;    /* NULL: no dedup; else insert key */
            int64_t dedup_expires_ms; /* 0: the key never expires */
            const sb_store_entry_ref *drops;
            size_t drop_count;
        } publish;
        struct {
            uint32_t queue_id;
            uint64_t first_id, last_id; /* inclusive; caller guarantees every
                                           entry of the queue in range is done */
            /* The entries it deletes, if the caller knows them (it has them
             * in memory): how many, and their sb_message_size bytes. The
             * store counts what it deletes per queue (queue_counts) with
             * these; rows 0: it reads them first, which costs more. */
            int64_t rows, bytes;
        } ack;
        struct {
            uint32_t queue_id;
            uint64_t msg_id;
            int attempts;
        } attempts;
        struct {
            uint32_t queue_id;
            uint64_t msg_id;
            sb_message *msg; /* the dead letter is written from it (memory-class
                                queues have no entry row); NULL: copied from
                                the entry's row */
            int no_headers;  /* copying: without the row's headers (they do not
                                decode, SB_OP_PAGE_IN's bad_id) */
            const char *queue_name;
            const char *reason;
            const char *source;
            int attempts;
        } deadletter;
        sb_store_queue queue_put; /* replaces the definition and every filter */
        struct {
            uint32_t queue_id;
        } queue_delete;
        struct {
            const char *queue_name; /* NULL: all queues */
            int64_t after_dlq_id;   /* paging: rows with dlq_id > this */
            int limit;              /* <= 0: no limit */
            /* results, owned by the op; free with sb_store_dlq_rows_free */
            sb_dead_letter *rows;
            size_t row_count;
        } dlq_list;
        struct {
            sb_dead_letter *rows; /* dlq_id, target_queue_id, new_msg_id set */
            size_t row_count;
        } dlq_redrive;
        struct {
            const char *queue_name; /* NULL: all queues */
            int64_t max_dlq_id;     /* 0: no bound (with a limit: set to the largest now); else only dlq_id <= this */
            int64_t limit;          /* <= 0: all; else at most this many, oldest first */
            int64_t purged;         /* result */
        } dlq_purge;
        struct {
            int64_t now_ms;
        } dedup_prune;
        struct {
            sb_message *msg;
        } retain_put;
        struct {
            const char *key;
            int64_t expires_ms; /* KEY_PUT: 0 = never */
            int prefix;         /* KEY_DELETE: every key starting with `key` */
        } key;
        struct {
            uint32_t queue_id;
            uint64_t after_id; /* entries with a larger id, in id order */
            int limit;         /* at most this many rows, >= 1 */
            int64_t max_bytes; /* and no more bytes than this (0: no limit; the
                                  first row is always read) */
            /* results, owned by the op; free with sb_store_page_rows_free */
            sb_store_entry *rows;
            size_t row_count;
            int exhausted; /* 1: no entry after these when it was read */
            /* An entry that does not decode (its headers are malformed)
             * stops the read: the rows before it are returned, and it is
             * named here for the caller to move it aside (0: none). */
            uint64_t bad_id;
            int64_t bad_size;     /* its SIZE (topic, payload and header bytes) */
            char bad_reason[96];  /* what is wrong with it */
        } page_in;
        struct {
            uint32_t queue_id;
            uint64_t after_id; /* acts on the entries with a larger id, in id order */
            /* expire == 0: delete the first `limit` of them (drop-oldest).
             * expire == 1: of the first `limit`, dead-letter (with `reason`,
             * under `queue_name`) and delete the run of entries at the head
             * that expired by now_ms: an entry's expiry is its message's, or
             * created + ttl_ms if that is sooner (ttl_ms 0: none). */
            int expire;
            int limit;
            int64_t now_ms, ttl_ms;
            const char *queue_name;
            const char *reason;
            /* results */
            int64_t removed, removed_bytes; /* entries, sb_message_size bytes */
            uint64_t last_id;               /* largest id removed (0: none) */
            int64_t next_expiry_ms;         /* expire: when the first entry left expires
                                               (0: never, or none was left in the
                                               rows looked at) */
        } trim;
        struct {
            /* CHECK and COMPACT run after the group's commit, outside any
             * transaction, holding the store thread for their duration
             * (commits wait). COMPACT refuses (SB_ENOSPC, nothing changed)
             * unless the disk has room for a second copy of the database. */
            int ok; /* CHECK: 1 if quick_check found nothing */
            /* CHECK: its first findings; COMPACT: why not. NULL: none (or no
             * memory for it). Owned by the op: sb_free it after the callback.
             * A pointer, not a buffer: every op is as large as this union. */
            char *report;
            int64_t before_bytes, after_bytes; /* COMPACT: the file's size */
        } maint;
    } u;
};

/* The commit latency histogram's upper bounds (microseconds), from BEGIN
 * to the end of COMMIT (the fsync included) on the store thread; one more
 * bucket counts what took longer. */
#define SB_STORE_LATENCY_BOUNDS_US                                                                 \
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000
#define SB_STORE_LATENCY_BUCKETS 15

typedef struct sb_store_stats {
    uint64_t commits;       /* successful transactions */
    uint64_t fsync_commits; /* of which synchronous=FULL */
    uint64_t ops;           /* ops completed */
    uint64_t failed_commits;
    uint64_t max_batch_seen;
    int64_t db_bytes;   /* page_count * page_size at the last commit */
    int64_t free_bytes; /* of which free pages (freelist_count * page_size) */
    int auto_vacuum;    /* 1: free pages are returned to the file system (incremental
                           auto-vacuum when the store is idle); 0: only reused, until
                           SB_OP_COMPACT converts the database */
    int degraded;       /* 1 while commits fail */
    char last_error[256];
    /* successful commits by latency: [i] those within bound i (not
     * cumulative), the last those above every bound; and the total */
    uint64_t commit_us[SB_STORE_LATENCY_BUCKETS];
    uint64_t commit_us_sum;
    uint64_t elided; /* entries never written: cancelled before their publish ran */
} sb_store_stats;

/* Opens (creating if needed) the database, checks it is a Switchboard
 * database (application_id), sets WAL mode and brings an older schema up to
 * SB_STORE_SCHEMA_VERSION in one transaction (logged; a failure leaves the
 * database as it was and names the step that failed). Refuses a foreign
 * file (SB_EFOREIGN), a corrupt one or one whose schema is not what its
 * version says (SB_ECORRUPT), one from a newer version (SB_EVERSION), or
 * one another process holds (SB_EBUSY), with a message naming the path. */
int sb_store_open(sb_store **out, const sb_store_options *opts, sb_error *err);

/* Largest message id and queue id in use (0 if none). These are high-water
 * marks kept in the database, so an id stays taken after its rows are gone
 * (and ids reserved with sb_store_reserve_ids count as taken).
 * Call before sb_store_start (SB_EINVAL after). */
int sb_store_max_ids(sb_store *s, uint64_t *out_msg_id, uint32_t *out_queue_id, sb_error *err);

/* q and everything it points to are valid during the call only. */
typedef int (*sb_store_queue_cb)(void *ctx, const sb_store_queue *q);
typedef int (*sb_store_entry_cb)(void *ctx, uint32_t queue_id, sb_message *msg, int attempts);
typedef int (*sb_store_retained_cb)(void *ctx, sb_message *msg);
typedef int (*sb_store_dedup_cb)(void *ctx, const char *key, int64_t expires_ms);

/* Loaders: call cb once per row; a non-zero return from cb stops and is
 * returned. Entries come in insertion order per queue; the callback receives
 * a new message reference it must unref. */
int sb_store_load_queues(sb_store *s, sb_store_queue_cb cb, void *ctx, sb_error *err);
int sb_store_load_entries(sb_store *s, sb_store_entry_cb cb, void *ctx, sb_error *err);
int sb_store_load_retained(sb_store *s, sb_store_retained_cb cb, void *ctx, sb_error *err);
int sb_store_load_dedup(sb_store *s, sb_store_dedup_cb cb, void *ctx, sb_error *err);

/* Paging loader: calls cb once per queue that has entries, with their
 * number and their sb_message_size bytes, as the store keeps them per group
 * commit (a row per queue: independent of the backlog). The entries are
 * then read in windows with SB_OP_PAGE_IN. */
typedef int (*sb_store_count_cb)(void *ctx, uint32_t queue_id, int64_t count, int64_t bytes);
int sb_store_load_counts(sb_store *s, sb_store_count_cb cb, void *ctx, sb_error *err);

/* Starts the store thread; completions are delivered on `loop`. */
int sb_store_start(sb_store *s, uv_loop_t *loop, sb_error *err);

/* Queues an op (thread-safe). Returns 0, or SB_ESHUTDOWN after stop began
 * (but from a callback sb_store_stop delivers: see there), in which case
 * the callback is never called. */
int sb_store_submit(sb_store *s, sb_store_op *op);

/* Withdraws one entry of a PUBLISH op that was submitted and that the store
 * thread has not begun to execute: queue_ids[index] becomes 0, so the row is never written
 * (nor needs deleting), while the op still completes after the commit of
 * the group that runs it, as before. For an entry acknowledged before its
 * message was committed. Returns 0, or SB_EBUSY once the store began executing it
 * (the row is or will be written: delete it with an ACK as usual), and
 * SB_EINVAL for another kind of op or an index out of range. Loop thread
 * (or whoever owns op); thread-safe towards the store thread. */
int sb_store_cancel(sb_store *s, sb_store_op *op, size_t index);

/* Asks that message ids up to `upto` be recorded as taken with the next
 * commit (the high-water mark sb_store_max_ids returns after a restart),
 * and returns the largest id so recorded by a commit so far. The broker
 * hands a message to a consumer before its commit only when its id is
 * below that, so an id a consumer saw is never given to another message
 * after a crash. Thread-safe. */
uint64_t sb_store_reserve_ids(sb_store *s, uint64_t upto);

/* 1 while the last commit failed (disk full, I/O error). */
int sb_store_degraded(sb_store *s);

/* Copies the current counters. */
void sb_store_get_stats(sb_store *s, sb_store_stats *out);

/* Executes everything queued, stops the thread, and delivers remaining
 * callbacks (runs the loop's pending completions itself if needed). The
 * KEY_PUT, KEY_DELETE and ACK ops those callbacks submit are executed too
 * (on this thread), and so on until they submit none: the consequences of
 * the last commits (the protocol keys a refused publish deletes or puts,
 * the row of a retained copy whose publish was refused) are not lost. Any other op they submit gets SB_ESHUTDOWN (an admin request's
 * next step: a stop ends it). Must be called from the loop thread. */
void sb_store_stop(sb_store *s);

/* Closes the database and frees the store (stopping it first if needed).
 * sb_store_stop and sb_store_close may be called from an op callback. */
void sb_store_close(sb_store *s);

/* Frees the rows of an SB_OP_DLQ_LIST result (NULL rows: no-op). */
void sb_store_dlq_rows_free(sb_dead_letter *rows, size_t count);

/* Frees the rows of an SB_OP_PAGE_IN result (NULL rows: no-op). */
void sb_store_page_rows_free(sb_store_entry *rows, size_t count);

#endif
