/*
 * The SQLite store (see store.h).
 *
 * One connection, opened in WAL mode with an exclusive lock (a second broker
 * on the same file gets SB_EBUSY), is used by the loop thread for open and
 * loading, then owned by the store thread. Ops queue under a mutex; the store
 * thread takes a group (retried ops first, then new ones up to max_batch,
 * waiting up to max_delay_us for more), runs it in one transaction with every
 * statement prepared once at open, commits with synchronous=FULL if any op
 * asked for sync (NORMAL otherwise), and appends the group to a "done" list
 * that a uv_async_t hands to the loop thread, which calls the callbacks in
 * order.
 *
 * Errors come in two kinds. An error that concerns one op's data (a duplicate
 * entry, a value too big, a row not found) sets that op's status and the group
 * goes on; a publish undoes its own partial inserts with deletes instead of a
 * savepoint per op, which would copy every touched page into a sub-journal
 * (a multi-row insert keeps a small one: insert_run).
 * Any other error (disk full, I/O, corruption, out of memory inside SQLite, a
 * failed COMMIT) rolls the whole group back: PUBLISH and DLQ_REDRIVE ops
 * complete with SB_ENOSPC (SQLITE_FULL) or SB_EIO, the others are retried,
 * in order, ahead of newer ops. When publishes failed, the survivors are
 * retried at once on their own, so acknowledgements that free space are not
 * held hostage by publishes that need it; otherwise every 200 ms.
 */
#include "storage/store.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/alloc.h"
#include "service/log.h"
#include "storage/schema_int.h"
#include "storage/store_test.h"

#define WHO "store"
/* While degraded, retry the kept ops this often. */
#define RETRY_DELAY_NS (200ull * 1000 * 1000)
/* At most one "degraded" line per this many ms when commits flap. */
#define DEGRADED_LOG_INTERVAL_MS 5000
/* The WAL is reused from its start after each checkpoint; it is truncated to
 * this size only after a huge transaction made it grow. Rewriting existing
 * WAL pages makes an fsync about half as costly as growing the file. */
#define JOURNAL_SIZE_LIMIT (16 * 1024 * 1024)
/* PRAGMA quick_check reads every page: about 0.1 s of CPU for 64 MiB here
 * (cold, reading the file dominates). Larger databases get a check bounded by
 * what start-up reads anyway (bounded_check): the header, the schema, and
 * every table but the two that hold messages (entries, dlq), with their
 * indexes (queue_counts among them). The pages of the entries are read
 * as queues page, which reports corruption (a row that does not decode is
 * named and dead-lettered); `sbctl check` runs the full check on demand. */
#define QUICK_CHECK_MAX_BYTES (64 * 1024 * 1024)
static int64_t quick_check_max = QUICK_CHECK_MAX_BYTES; /* sb_store_test_quick_check_max */
#define LOAD_PROGRESS_ROWS 100000

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SYNC_NORMAL,
    ST_SYNC_FULL,
    ST_PAGE_COUNT,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_ENTRY_INSERT,
    ST_ENTRY_DELETE,
    ST_ENTRY_SIZES,
    ST_ENTRY_ATTEMPTS,
    ST_RETAIN_SET,
    ST_RETAIN_CLEAR,
    ST_DEDUP_GET,
    ST_DEDUP_PUT,
    ST_DEDUP_PRUNE,
    ST_KEY_DELETE,
    ST_KEY_DELETE_PREFIX,
    ST_DEADLETTER_COPY,
    ST_DEADLETTER_COPY_BARE,
    ST_DEADLETTER_PUT,
    ST_QUEUE_PUT,
    ST_QUEUE_FILTERS_DELETE,
    ST_QUEUE_FILTER_INSERT,
    ST_QUEUE_DELETE_ENTRIES,
    ST_QUEUE_DELETE,
    ST_DLQ_LIST_ALL,
    ST_DLQ_LIST_QUEUE,
    ST_DLQ_REDRIVE_COPY,
    ST_DLQ_DELETE,
    ST_DLQ_EXISTS,
    ST_DLQ_PURGE_ALL,
    ST_DLQ_PURGE_QUEUE,
    ST_META_PUT,
    ST_QCOUNT_ADD,
    ST_QCOUNT_DELETE,
    ST_COUNT
};

#define DLQ_COLUMNS                                                                                \
    "id, queue_name, msg_id, topic, payload, headers, created_ms, expires_ms, priority, dead_ms,"  \
    " reason, source, attempts"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [ST_SYNC_FULL] = "PRAGMA synchronous = FULL",
    [ST_PAGE_COUNT] = "PRAGMA page_count",
    [ST_SAVEPOINT] = "SAVEPOINT op",
    [ST_RELEASE] = "RELEASE op",
    [ST_ROLLBACK_TO] = "ROLLBACK TO op",
    [ST_ENTRY_INSERT] = "INSERT OR IGNORE INTO entries(queue_id, msg_id, topic, payload, headers,"
                        " created_ms, expires_ms, priority) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_ENTRY_DELETE] = "DELETE FROM entries WHERE queue_id = ?1 AND msg_id BETWEEN ?2 AND ?3",
    [ST_ENTRY_SIZES] = "SELECT count(*), coalesce(sum(" SB_STORE__SIZE_SQL "), 0) FROM entries"
                       " WHERE queue_id = ?1 AND msg_id BETWEEN ?2 AND ?3",
    [ST_ENTRY_ATTEMPTS] = "UPDATE entries SET attempts = ?3 WHERE queue_id = ?1 AND msg_id = ?2",
    [ST_RETAIN_SET] = "INSERT OR REPLACE INTO retained(topic, msg_id, payload, headers, created_ms,"
                      " expires_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_RETAIN_CLEAR] = "DELETE FROM retained WHERE topic = ?1",
    [ST_DEDUP_GET] = "SELECT expires_ms FROM dedup WHERE key = ?1",
    [ST_DEDUP_PUT] = "INSERT OR REPLACE INTO dedup(key, expires_ms) VALUES(?1, ?2)",
    [ST_DEDUP_PRUNE] = "DELETE FROM dedup WHERE expires_ms > 0 AND expires_ms <= ?1",
    [ST_KEY_DELETE] = "DELETE FROM dedup WHERE key = ?1",
    [ST_KEY_DELETE_PREFIX] = "DELETE FROM dedup WHERE substr(key, 1, length(?1)) = ?1",
    [ST_DEADLETTER_COPY] =
        "INSERT INTO dlq(queue_name, msg_id, topic, payload, headers, created_ms, expires_ms,"
        " priority, dead_ms, reason, source, attempts)"
        " SELECT coalesce(?3, (SELECT name FROM queues WHERE id = ?1)), msg_id, topic, payload,"
        " headers, created_ms, expires_ms, priority, ?4, ?5, ?6, ?7"
        " FROM entries WHERE queue_id = ?1 AND msg_id = ?2",
    /* the same without the headers, which do not decode */
    [ST_DEADLETTER_COPY_BARE] =
        "INSERT INTO dlq(queue_name, msg_id, topic, payload, headers, created_ms, expires_ms,"
        " priority, dead_ms, reason, source, attempts)"
        " SELECT coalesce(?3, (SELECT name FROM queues WHERE id = ?1)), msg_id, topic, payload,"
        " NULL, created_ms, expires_ms, priority, ?4, ?5, ?6, ?7"
        " FROM entries WHERE queue_id = ?1 AND msg_id = ?2",
    [ST_DEADLETTER_PUT] =
        "INSERT INTO dlq(queue_name, msg_id, topic, payload, headers, created_ms, expires_ms,"
        " priority, dead_ms, reason, source, attempts)"
        " VALUES(coalesce(?3, (SELECT name FROM queues WHERE id = ?1)), ?2, ?8, ?9, ?10, ?11,"
        " ?12, ?13, ?4, ?5, ?6, ?7)",
    [ST_QUEUE_PUT] = "INSERT INTO queues(id, name, settings, protocol, owner)"
                     " VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO UPDATE SET"
                     " name = excluded.name, settings = excluded.settings,"
                     " protocol = excluded.protocol, owner = excluded.owner",
    [ST_QUEUE_FILTERS_DELETE] = "DELETE FROM queue_filters WHERE queue_id = ?1",
    [ST_QUEUE_FILTER_INSERT] = "INSERT INTO queue_filters(queue_id, pos, filter, qos)"
                               " VALUES(?1, ?2, ?3, ?4)",
    [ST_QUEUE_DELETE_ENTRIES] = "DELETE FROM entries WHERE queue_id = ?1",
    [ST_QUEUE_DELETE] = "DELETE FROM queues WHERE id = ?1",
    [ST_DLQ_LIST_ALL] = "SELECT " DLQ_COLUMNS " FROM dlq WHERE id > ?1 ORDER BY id LIMIT ?2",
    [ST_DLQ_LIST_QUEUE] = "SELECT " DLQ_COLUMNS " FROM dlq WHERE queue_name = ?3 AND id > ?1"
                          " ORDER BY id LIMIT ?2",
    [ST_DLQ_REDRIVE_COPY] =
        "INSERT OR IGNORE INTO entries(queue_id, msg_id, topic, payload, headers, created_ms,"
        " expires_ms, priority, attempts) SELECT ?1, ?2, coalesce(topic, ''), payload, headers,"
        " created_ms, expires_ms, priority, 0 FROM dlq WHERE id = ?3 RETURNING " SB_STORE__SIZE_SQL,
    [ST_DLQ_DELETE] = "DELETE FROM dlq WHERE id = ?1",
    [ST_DLQ_EXISTS] = "SELECT 1 FROM dlq WHERE id = ?1",
    /* the oldest ?2 (?3) rows up to ?1; a negative limit is none */
    [ST_DLQ_PURGE_ALL] =
        "DELETE FROM dlq WHERE id IN (SELECT id FROM dlq WHERE id <= ?1 ORDER BY id LIMIT ?2)",
    [ST_DLQ_PURGE_QUEUE] = "DELETE FROM dlq WHERE id IN (SELECT id FROM dlq WHERE queue_name = ?2"
                           " AND id <= ?1 ORDER BY id LIMIT ?3)",
    [ST_META_PUT] = "INSERT INTO meta(key, value) VALUES(?1, ?2)"
                    " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
    [ST_QCOUNT_ADD] = "INSERT INTO queue_counts(queue_id, entries, bytes) VALUES(?1, ?2, ?3)"
                      " ON CONFLICT(queue_id) DO UPDATE SET entries = entries + excluded.entries,"
                      /* bytes are estimated where a delete met fewer rows than it
                       * was told: an empty queue starts them again from 0 */
                      " bytes = CASE WHEN entries + excluded.entries <= 0 THEN 0"
                      " ELSE max(bytes + excluded.bytes, 0) END",
    [ST_QCOUNT_DELETE] = "DELETE FROM queue_counts WHERE queue_id = ?1",
};

/* Consecutive publishes of a group insert their entries with multi-row
 * INSERTs of 2^k rows (k < INSERT_SIZES): stepping one statement per entry
 * cost about as much as the insert itself. A plain INSERT, not OR IGNORE:
 * an error aborts the statement whole, and its entries are inserted again
 * one at a time, as exec_publish does, to find whose they were. Such a
 * statement keeps a statement journal (the pages it changes, so it can
 * abort whole); a run stops at INSERT_MAX_BYTES of messages, so that the
 * journal stays within SQLite's 64 KiB kept in memory. */
#define INSERT_SIZES 8
#define INSERT_MAX_ROWS (1 << (INSERT_SIZES - 1))
#define INSERT_MAX_BYTES (32 * 1024)
#define INSERT_SQL                                                                                 \
    "INSERT INTO entries(queue_id, msg_id, topic, payload, headers, created_ms, expires_ms,"       \
    " priority) VALUES"
#define INSERT_ROW_SQL "(?,?,?,?,?,?,?,?)"
#define INSERT_COLUMNS 8

/* A publish of the run being inserted (insert_run). */
typedef struct run_pub {
    sb_store_op *op;
    size_t rows;        /* its entries not cancelled */
    unsigned char *hdr; /* its encoded headers (in run_hdrs) */
    size_t hdr_len;
    int topic_len;
    int64_t size; /* sb_message_size of its entries */
} run_pub;

/* An entry of the run: its publish (index in the run) and queue index. */
typedef struct run_row {
    uint32_t pub;
    uint32_t queue;
} run_row;

/* What the current group changed in a queue's stored entries, written to
 * queue_counts before it commits (counts_flush). */
typedef struct count_delta {
    uint32_t queue_id;
    int used;
    int64_t entries, bytes;
} count_delta;

/* An ack deferred to the end of its group. */
typedef struct ack_range {
    uint32_t queue_id;
    uint64_t first, last;
    int64_t rows, bytes; /* as the op says (rows 0: not said) */
} ack_range;
/* Free pages an idle store returns to the file system per step (4 MiB of
 * 4 KiB pages), when at least that many are free and they are a quarter of
 * the file: under a steady load, acks free pages that inserts take again,
 * and returning them would only make the file grow back. */
#define VACUUM_STEP_PAGES 1024
#define VACUUM_STEP_PAGES_SQL "1024"
/* A step moves pages still in use from the end of the file into free
 * ones: while a backlog drains, that is its live data, and steps between
 * groups slowed a drain several times over. So steps run back to back
 * only once no op came for VACUUM_IDLE_NS; while ops come, a step may take
 * at most a tenth of the store thread's time (the next waits nine times
 * as long as it took), and none is taken when a VACUUM is due once idle
 * (VACUUM_FULL_MAX_LIVE). */
#define VACUUM_IDLE_NS (1000ull * 1000 * 1000)
#define VACUUM_REST_FACTOR 9
/* An idle store whose file is mostly free with at most this much in use (a
 * drained backlog) is compacted with one VACUUM instead, in time for what
 * is in use: an incremental step takes each free page off the freelist by
 * a search of it, which returned about 2 MB/s of a drained 13 GB file. */
#define VACUUM_FULL_MAX_LIVE (64 * 1024 * 1024)

/* The statements of paging (SB_OP_PAGE_IN, SB_OP_TRIM), kept apart from
 * the hot path's. SIZE_SQL is sb_message_size of a row. */
#define SIZE_SQL SB_STORE__SIZE_SQL

enum page_stmt_id { PST_READ, PST_SCAN, PST_EXPIRE_COPY, PST_FREELIST, PST_VACUUM, PST_COUNT };

static const char *const page_sql[PST_COUNT] = {
    [PST_READ] = "SELECT msg_id, topic, payload, headers, created_ms, expires_ms, priority,"
                 " attempts, " SIZE_SQL " FROM entries WHERE queue_id = ?1 AND msg_id > ?2"
                 " ORDER BY msg_id LIMIT ?3",
    [PST_SCAN] = "SELECT msg_id, created_ms, expires_ms, " SIZE_SQL " FROM entries"
                 " WHERE queue_id = ?1 AND msg_id > ?2 ORDER BY msg_id LIMIT ?3",
    [PST_EXPIRE_COPY] =
        "INSERT INTO dlq(queue_name, msg_id, topic, payload, headers, created_ms, expires_ms,"
        " priority, dead_ms, reason, source, attempts)"
        " SELECT coalesce(?4, (SELECT name FROM queues WHERE id = ?1)), msg_id, topic, payload,"
        " headers, created_ms, expires_ms, priority, ?5, ?6, sb_header(headers, 'source'),"
        " attempts"
        " FROM entries WHERE queue_id = ?1 AND msg_id > ?2 AND msg_id <= ?3 ORDER BY msg_id",
    [PST_FREELIST] = "PRAGMA freelist_count",
    [PST_VACUUM] = "PRAGMA incremental_vacuum(" VACUUM_STEP_PAGES_SQL ")",
};

struct sb_store {
    sqlite3 *db;
    char *path;
    int max_batch;
    int max_delay_us;
    int64_t page_size;
    int64_t max_db_bytes; /* 0: no limit */
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *page_st[PST_COUNT];
    sqlite3_stmt *insert_st[INSERT_SIZES]; /* [k]: inserts 2^k entries (INSERT_SQL) */
    int64_t free_pages;      /* at the last commit (store thread) */
    uint64_t last_group_ns;  /* uv_hrtime() when the last group was taken */
    uint64_t vacuum_next_ns; /* while ops come, no vacuum step before this */
    int auto_vacuum;         /* PRAGMA auto_vacuum is INCREMENTAL */
    int cur_sync;            /* PRAGMA synchronous last set: 1 NORMAL, 2 FULL */
    uint64_t hw_msg_id;      /* id high-water marks as committed in meta */
    uint32_t hw_queue_id;    /* (store thread, or loop thread before start) */

    uv_mutex_t mu;
    uv_cond_t cond;
    int sync_init; /* mu and cond initialised */
    uv_thread_t thread;
    uv_loop_t *loop;
    uv_async_t *async; /* freed by its close callback */
    int started, stopped;

    /* Under mu. */
    int stopping;
    int draining; /* stopping, yet the final callbacks may submit (drain_rest) */
    sb_store_op *q_head, *q_tail; /* submitted, not yet taken */
    size_t q_count;
    size_t q_sync; /* of which with `sync` set */
    int waiting; /* the thread sleeps until q_count >= wake_at */
    size_t wake_at;
    sb_store_op *done_head, *done_tail; /* executed, callbacks pending */
    uint64_t submit_seq; /* seq of the last op submitted */
    uint64_t exec_seq;   /* publishes with a seq up to this began executing */
    uint64_t id_reserve; /* message ids to record as taken (sb_store_reserve_ids) */
    uint64_t durable_msg_id; /* the id high-water mark as last committed */
    sb_store_stats stats;
    int test_fail_armed;
    long test_fail_after;
    int test_hold;      /* sb_store_test_hold */
    int test_hold_type; /* sb_store_test_hold_before */

    /* Loop thread. */
    sb_store_op *deliver_head; /* being delivered; sb_store_stop finishes it */
    int delivering;            /* nesting depth of deliver() */
    int free_pending;          /* sb_store_close ran inside a callback */

    /* Store thread. */
    sb_store_op *retry_head, *retry_tail;
    size_t retry_count;
    int retry_alone;   /* run the retried ops now, without new ones */
    uint64_t retry_at; /* uv_hrtime() of the next retry */
    int fail_rc;       /* SQLite code that failed the current group */
    int read_corrupt;  /* an op of it read a damaged page (read_error) */
    char fail_msg[200];
    int degraded_logged;     /* "degraded" was logged, "recovered" not yet */
    int64_t degraded_log_ms; /* when a degraded line was last logged */
    uint64_t unlogged_flaps; /* degraded episodes not logged (rate limit) */
    uint64_t episode_failures;
    uint64_t group_msg_id; /* largest ids the current group wrote */
    uint32_t group_queue_id;
    uint64_t group_reserve; /* sb_store_reserve_ids' wish when the group was taken */
    uint64_t group_elided;  /* entries the group's publishes skipped (cancelled) */
    ack_range *acks; /* the group's acks not yet executed (acks_flush) */
    size_t ack_count, ack_cap;
    uint64_t ack_max_id; /* the largest last_id among them */
    count_delta *deltas; /* open addressing by queue id, delta_cap a power of 2 */
    size_t delta_cap, delta_used;
    size_t *delta_slots; /* the used slots, in the order first touched */
    run_pub run_pubs[INSERT_MAX_ROWS]; /* insert_run's publishes and entries */
    run_row run_rows[INSERT_MAX_ROWS];
    unsigned char *run_hdrs; /* and their encoded headers, one after another */
    size_t run_hdrs_cap;
};

/* ---- small helpers ------------------------------------------------------ */

static void list_append(sb_store_op **head, sb_store_op **tail, sb_store_op *op)
{
    op->next = NULL;
    if (*tail != NULL)
        (*tail)->next = op;
    else
        *head = op;
    *tail = op;
}

static void list_concat(sb_store_op **head, sb_store_op **tail, sb_store_op *h, sb_store_op *t)
{
    if (h == NULL)
        return;
    if (*tail != NULL)
        (*tail)->next = h;
    else
        *head = h;
    *tail = t;
}

/* Binds parameters 1.. from fmt: 'i' int64_t, 't' text (NULL binds NULL),
 * 'b' blob as (const void *, size_t) (NULL binds NULL). Values must stay
 * valid until the statement is reset. Returns SQLITE_OK or the bind error. */
static int bind_args(sqlite3_stmt *st, const char *fmt, ...)
{
    va_list ap;
    int rc = SQLITE_OK, i = 1;
    va_start(ap, fmt);
    for (const char *f = fmt; *f != '\0' && rc == SQLITE_OK; f++, i++) {
        switch (*f) {
        case 'i':
            rc = sqlite3_bind_int64(st, i, (sqlite3_int64)va_arg(ap, int64_t));
            break;
        case 't': {
            const char *t = va_arg(ap, const char *);
            rc = t != NULL ? sqlite3_bind_text(st, i, t, -1, SQLITE_STATIC)
                           : sqlite3_bind_null(st, i);
            break;
        }
        case 'b': {
            const void *p = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            rc = p != NULL ? sqlite3_bind_blob64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC)
                           : sqlite3_bind_null(st, i);
            break;
        }
        default:
            rc = SQLITE_MISUSE;
        }
    }
    va_end(ap);
    return rc;
}

/* Steps a statement that returns no rows, then resets it. Returns SQLITE_OK
 * or the step's error (reset reports the same error again, so its result
 * adds nothing). */
static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    (void)sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int bind_run(sqlite3_stmt *st, int bind_rc)
{
    if (bind_rc != SQLITE_OK) {
        (void)sqlite3_clear_bindings(st); /* always SQLITE_OK */
        return bind_rc;
    }
    return run(st);
}

static int is_op_local(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return 1;
    default:
        return 0;
    }
}

/* Records the error that fails the current group; returns rc. */
static int fail(sb_store *s, int rc, const char *what)
{
    s->fail_rc = rc;
    snprintf(s->fail_msg, sizeof(s->fail_msg), "%s: %s (SQLite code %d)", what,
             sqlite3_errmsg(s->db), rc);
    return rc;
}

/* An error from a statement of one op: if it concerns only that op's data and
 * the transaction is still open, the op fails and the group goes on (returns
 * SQLITE_OK); otherwise the group fails. */
static int op_error(sb_store *s, sb_store_op *op, int rc, const char *what)
{
    if (is_op_local(rc) && !sqlite3_get_autocommit(s->db)) {
        op->status = sb_store__error_from_sqlite(rc);
        sb_warn(WHO, "database %s: %s failed: %s", s->path, what, sqlite3_errmsg(s->db));
        return SQLITE_OK;
    }
    return fail(s, rc, what);
}

/* A read that met a damaged page fails its op alone (SB_ECORRUPT): one
 * queue's stored part stops, not the store. SQLite will not commit the
 * transaction after that, so the group fails, and group_failed completes
 * this op and runs the others again at once (read_corrupt). Anything else
 * as op_error. */
static int read_error(sb_store *s, sb_store_op *op, int rc, const char *what)
{
    if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) {
        op->status = SB_ECORRUPT;
        s->read_corrupt = 1;
        sb_warn(WHO, "database %s: %s failed: %s", s->path, what, sqlite3_errmsg(s->db));
        return fail(s, rc, what);
    }
    return op_error(s, op, rc, what);
}

static void note_msg_id(sb_store *s, uint64_t id)
{
    if (id > s->group_msg_id)
        s->group_msg_id = id;
}

/* ---- per-queue counts ---------------------------------------------------- */

static size_t delta_slot(const sb_store *s, uint32_t queue_id)
{
    size_t i = ((size_t)queue_id * 2654435761u) & (s->delta_cap - 1);
    while (s->deltas[i].used && s->deltas[i].queue_id != queue_id)
        i = (i + 1) & (s->delta_cap - 1);
    return i;
}

/* Counts a change of the group in a queue's stored entries. Returns
 * SQLITE_OK or SQLITE_NOMEM (which must fail the group: its counts would
 * be wrong). */
static int count_add(sb_store *s, uint32_t queue_id, int64_t entries, int64_t bytes)
{
    size_t i;
    if (entries == 0 && bytes == 0)
        return SQLITE_OK;
    if (2 * (s->delta_used + 1) > s->delta_cap) {
        size_t cap = s->delta_cap == 0 ? 64 : 2 * s->delta_cap;
        count_delta *old = s->deltas;
        count_delta *d = sb_calloc(cap, sizeof(*d));
        size_t *slots = sb_malloc(cap / 2 * sizeof(*slots));
        if (d == NULL || slots == NULL) {
            sb_free(d);
            sb_free(slots);
            return SQLITE_NOMEM;
        }
        s->deltas = d;
        s->delta_cap = cap;
        for (size_t k = 0; k < s->delta_used; k++) {
            size_t to = delta_slot(s, old[s->delta_slots[k]].queue_id);
            s->deltas[to] = old[s->delta_slots[k]];
            slots[k] = to;
        }
        sb_free(old);
        sb_free(s->delta_slots);
        s->delta_slots = slots;
    }
    i = delta_slot(s, queue_id);
    if (!s->deltas[i].used) {
        s->deltas[i].used = 1;
        s->deltas[i].queue_id = queue_id;
        s->deltas[i].entries = s->deltas[i].bytes = 0;
        s->delta_slots[s->delta_used++] = i;
    }
    s->deltas[i].entries += entries;
    s->deltas[i].bytes += bytes;
    return SQLITE_OK;
}

/* Forgets the group's counts of a queue whose rows it deleted (its count
 * row went with them). */
static void count_forget(sb_store *s, uint32_t queue_id)
{
    size_t i;
    if (s->delta_cap == 0)
        return;
    i = delta_slot(s, queue_id);
    if (s->deltas[i].used)
        s->deltas[i].entries = s->deltas[i].bytes = 0;
}

static void counts_reset(sb_store *s)
{
    for (size_t k = 0; k < s->delta_used; k++)
        s->deltas[s->delta_slots[k]].used = 0;
    s->delta_used = 0;
}

/* Writes the group's counts: one statement per queue it touched. */
static int counts_flush(sb_store *s)
{
    sqlite3_stmt *st = s->st[ST_QCOUNT_ADD];
    int rc = SQLITE_OK;
    for (size_t k = 0; k < s->delta_used && rc == SQLITE_OK; k++) {
        const count_delta *d = &s->deltas[s->delta_slots[k]];
        if (d->entries != 0 || d->bytes != 0)
            rc = bind_run(st, bind_args(st, "iii", (int64_t)d->queue_id, d->entries, d->bytes));
    }
    counts_reset(s);
    return rc != SQLITE_OK ? fail(s, rc, "per-queue counts") : SQLITE_OK;
}

/* Steps a statement whose rows are the sizes of the entries it inserted
 * (RETURNING SIZE_SQL), to its end: *out_rows, *out_bytes. */
static int run_sizes(sqlite3_stmt *st, int bind_rc, int64_t *out_rows, int64_t *out_bytes)
{
    int rc = bind_rc;
    *out_rows = *out_bytes = 0;
    if (rc != SQLITE_OK)
        return bind_run(st, rc);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        (*out_rows)++;
        *out_bytes += sqlite3_column_int64(st, 0);
    }
    (void)sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* ---- ops ---------------------------------------------------------------- */

/* Deletes a queue's entries [first, last] and counts what it deleted.
 * rows > 0: the caller knows the entries it deletes there (rows of them,
 * of `bytes` in all; the acks of the broker, which has them in memory):
 * if the delete agrees on their number, the bytes are taken as they are,
 * else in proportion. rows <= 0: they are counted by a read first (drops,
 * rarer paths). RETURNING would count in one statement, but makes a
 * delete about three times as costly. */
static int delete_range(sb_store *s, uint32_t queue_id, uint64_t first, uint64_t last, int64_t rows,
                        int64_t bytes)
{
    sqlite3_stmt *st;
    int64_t deleted;
    int rc;
    if (rows <= 0) {
        st = s->st[ST_ENTRY_SIZES];
        rc = bind_args(st, "iii", (int64_t)queue_id, (int64_t)first, (int64_t)last);
        if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            rows = sqlite3_column_int64(st, 0);
            bytes = sqlite3_column_int64(st, 1);
            rc = SQLITE_OK;
        }
        (void)sqlite3_reset(st);
        if (rc != SQLITE_OK)
            return rc;
        if (rows == 0)
            return SQLITE_OK; /* nothing to delete */
    }
    st = s->st[ST_ENTRY_DELETE];
    rc = bind_run(st, bind_args(st, "iii", (int64_t)queue_id, (int64_t)first, (int64_t)last));
    if (rc != SQLITE_OK)
        return rc;
    deleted = sqlite3_changes64(s->db);
    if (deleted != rows)
        bytes = rows > 0 ? bytes / rows * deleted : 0;
    return count_add(s, queue_id, -deleted, -bytes);
}

/* Sets or (empty payload) clears the retained value of m's topic. */
static int retain_write(sb_store *s, const sb_message *m, const unsigned char *hdr, size_t hdr_len)
{
    const char *topic = m->topic != NULL ? m->topic : "";
    sqlite3_stmt *st;
    if (m->payload_len == 0) {
        st = s->st[ST_RETAIN_CLEAR];
        return bind_run(st, bind_args(st, "t", topic));
    }
    st = s->st[ST_RETAIN_SET];
    return bind_run(st, bind_args(st, "tibbii", topic, (int64_t)m->id, (const void *)m->payload,
                                  m->payload_len, (const void *)hdr, hdr_len, m->created_ms,
                                  m->expires_ms));
}

/* *out_dup = 1 if key is present and unexpired (expires_ms 0 never expires). */
static int dedup_lookup(sb_store *s, const char *key, int *out_dup)
{
    sqlite3_stmt *st = s->st[ST_DEDUP_GET];
    int rc = bind_args(st, "t", key);
    *out_dup = 0;
    if (rc != SQLITE_OK)
        return bind_run(st, rc);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int64_t exp = sqlite3_column_int64(st, 0);
        *out_dup = exp == 0 || exp > sb_now_ms();
        rc = SQLITE_DONE;
    }
    (void)sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Binds an entry of pub as the row whose first parameter is `base`. */
static int bind_entry(sqlite3_stmt *st, int base, uint32_t queue_id, const run_pub *pub)
{
    const sb_message *m = pub->op->u.publish.msg;
    int rc = sqlite3_bind_int64(st, base, queue_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, base + 1, (sqlite3_int64)m->id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, base + 2, m->topic != NULL ? m->topic : "", pub->topic_len,
                               SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob64(st, base + 3, m->payload != NULL ? (const void *)m->payload : "",
                                 (sqlite3_uint64)m->payload_len, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = pub->hdr != NULL ? sqlite3_bind_blob64(st, base + 4, pub->hdr,
                                                    (sqlite3_uint64)pub->hdr_len, SQLITE_STATIC)
                              : sqlite3_bind_null(st, base + 4);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, base + 5, m->created_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, base + 6, m->expires_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, base + 7, m->priority);
    return rc;
}

/* Inserts a publish's entries from its queue index `from` on (insert_run
 * inserted those before it), one statement each. An error of its own
 * fails the op alone (SQLITE_OK): its entries inserted so far are deleted.
 * Cancelled entries are skipped, not counted (the caller counts them). */
static int insert_entries(sb_store *s, const run_pub *pub, size_t from)
{
    sb_store_op *op = pub->op;
    const sb_message *m = op->u.publish.msg;
    sqlite3_stmt *ins = s->st[ST_ENTRY_INSERT];
    int rc;
    for (size_t i = from; i < op->u.publish.queue_count; i++) {
        uint32_t qid = op->u.publish.queue_ids[i];
        if (qid == 0) /* acknowledged before its group ran (sb_store_cancel) */
            continue;
        rc = bind_run(ins, bind_entry(ins, 1, qid, pub));
        if (rc == SQLITE_OK && sqlite3_changes(s->db) == 1) {
            if ((rc = count_add(s, qid, 1, pub->size)) != SQLITE_OK)
                return fail(s, rc, "publish: counts");
            continue;
        }
        /* Fail only this op: report, then delete what it inserted so far. */
        if (rc != SQLITE_OK) {
            if (!is_op_local(rc) || sqlite3_get_autocommit(s->db))
                return fail(s, rc, "publish: insert");
            op->status = sb_store__error_from_sqlite(rc);
            sb_warn(WHO, "database %s: publish of message %llu failed: %s", s->path,
                    (unsigned long long)m->id, sqlite3_errmsg(s->db));
        } else {
            op->status = SB_EEXIST;
            sb_warn(WHO, "database %s: message %llu is already in queue %u", s->path,
                    (unsigned long long)m->id, (unsigned)qid);
        }
        rc = SQLITE_OK;
        for (size_t j = 0; j < i && rc == SQLITE_OK; j++) /* cancelled ones: 0 */
            if (op->u.publish.queue_ids[j] != 0)
                rc = delete_range(s, op->u.publish.queue_ids[j], m->id, m->id, 1, pub->size);
        return rc != SQLITE_OK ? fail(s, rc, "publish: undo of a partial insert") : SQLITE_OK;
    }
    return SQLITE_OK;
}

/* Whether a publish inserts entries and nothing else (no dedup key, drops
 * or retained value), so that insert_run may take it. */
static int is_plain_publish(const sb_store_op *op)
{
    return op->type == SB_OP_PUBLISH && op->u.publish.msg != NULL &&
           op->u.publish.dedup_key == NULL && op->u.publish.drop_count == 0 &&
           !op->u.publish.retain &&
           (op->u.publish.queue_count == 0 || op->u.publish.queue_ids != NULL) &&
           op->u.publish.queue_count <= INSERT_MAX_ROWS;
}

static int exec_publish(sb_store *s, sb_store_op *op)
{
    const sb_message *m = op->u.publish.msg;
    const char *key = op->u.publish.dedup_key;
    unsigned char *hdr = NULL;
    size_t hdr_len = 0;
    int rc = SQLITE_OK;

    if (m == NULL || (op->u.publish.queue_count > 0 && op->u.publish.queue_ids == NULL) ||
        (op->u.publish.drop_count > 0 && op->u.publish.drops == NULL)) {
        op->status = SB_EINVAL;
        return SQLITE_OK;
    }
    if (key != NULL) {
        int dup;
        rc = dedup_lookup(s, key, &dup);
        if (rc != SQLITE_OK)
            return fail(s, rc, "publish: dedup lookup");
        if (dup) {
            /* nothing inserted, but the entries the broker already dropped
             * from memory to make room go from the store too */
            op->status = SB_EDUPLICATE;
            for (size_t i = 0; i < op->u.publish.drop_count; i++) {
                const sb_store_entry_ref *d = &op->u.publish.drops[i];
                rc = delete_range(s, d->queue_id, d->msg_id, d->msg_id, 0, 0);
                if (rc != SQLITE_OK)
                    return fail(s, rc, "publish: drop");
            }
            return SQLITE_OK;
        }
    }
    {
        /* every entry cancelled and no retained value: no row needs them */
        int rows = op->u.publish.retain;
        for (size_t i = 0; i < op->u.publish.queue_count; i++) {
            if (op->u.publish.queue_ids[i] != 0)
                rows = 1;
            else /* acknowledged before its group ran (sb_store_cancel) */
                s->group_elided++;
        }
        if (rows && sb_message_headers_encode(m, &hdr, &hdr_len) != 0) {
            op->status = SB_ENOMEM;
            return SQLITE_OK;
        }
    }
    {
        run_pub pub = {.op = op, .hdr = hdr, .hdr_len = hdr_len};
        pub.topic_len = m->topic != NULL ? (int)strlen(m->topic) : 0;
        pub.size = (int64_t)((size_t)pub.topic_len + m->payload_len + hdr_len);
        rc = insert_entries(s, &pub, 0);
        if (rc != SQLITE_OK || op->status != 0)
            goto out;
    }
    /* Past this point an error fails the group: undoing drops and a replaced
     * retained value is not worth it for errors that cannot happen here once
     * the entries were inserted. */
    for (size_t i = 0; i < op->u.publish.drop_count; i++) {
        const sb_store_entry_ref *d = &op->u.publish.drops[i];
        rc = delete_range(s, d->queue_id, d->msg_id, d->msg_id, 0, 0);
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "publish: drop");
            goto out;
        }
    }
    if (op->u.publish.retain) {
        rc = retain_write(s, m, hdr, hdr_len);
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "publish: retain");
            goto out;
        }
    }
    if (key != NULL) {
        sqlite3_stmt *st = s->st[ST_DEDUP_PUT];
        rc = bind_run(st, bind_args(st, "ti", key, op->u.publish.dedup_expires_ms));
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "publish: dedup insert");
            goto out;
        }
    }
    note_msg_id(s, m->id);
out:
    sb_free(hdr);
    return rc;
}

static int needs_acks_flushed(const sb_store *s, const sb_store_op *op);

/* Inserts the entries of *io_op (a plain publish, is_plain_publish) and of
 * the plain publishes after it in the group, in as few statements as
 * possible (INSERT_SIZES); *io_op is left at the last publish taken. Each
 * publish ends as exec_publish would end it. */
/* What a publish's entries add to a run (INSERT_MAX_BYTES). */
static size_t run_bytes(const sb_store_op *op)
{
    return sb_message_size(op->u.publish.msg) * op->u.publish.queue_count;
}

static int insert_run(sb_store *s, sb_store_op **io_op)
{
    run_pub *pubs = s->run_pubs;
    run_row *rows = s->run_rows;
    size_t npub = 0, nrow = 0, done = 0, slots = 0, hdr_bytes = 0, bytes = 0;
    sb_store_op *op = *io_op;
    uint64_t seq = 0;
    int rc = SQLITE_OK;

    /* Queue ids are read only once the publishes are marked executing. */
    for (;;) {
        pubs[npub].op = op;
        pubs[npub].hdr = NULL;
        npub++;
        slots += op->u.publish.queue_count;
        bytes += run_bytes(op);
        if (op->seq > seq) /* retried ops come first, older */
            seq = op->seq;
        if (npub == INSERT_MAX_ROWS || op->next == NULL || !is_plain_publish(op->next) ||
            slots + op->next->u.publish.queue_count > INSERT_MAX_ROWS ||
            bytes + run_bytes(op->next) > INSERT_MAX_BYTES || needs_acks_flushed(s, op->next))
            break;
        op = op->next;
        op->status = 0;
    }
    *io_op = op;
    /* From here on sb_store_cancel refuses these publishes, and what it
     * cancelled before is seen (the mutex orders it). */
    uv_mutex_lock(&s->mu);
    s->exec_seq = seq;
    uv_mutex_unlock(&s->mu);

    for (size_t p = 0; p < npub; p++) {
        const sb_store_op *o = pubs[p].op;
        const sb_message *m = o->u.publish.msg;
        pubs[p].rows = 0;
        for (size_t i = 0; i < o->u.publish.queue_count; i++) {
            if (o->u.publish.queue_ids[i] != 0)
                pubs[p].rows++;
            else /* acknowledged before its group ran */
                s->group_elided++;
        }
        pubs[p].hdr_len = pubs[p].rows > 0 ? sb_message_headers_size(m) : 0;
        hdr_bytes += pubs[p].hdr_len;
        pubs[p].topic_len = m->topic != NULL ? (int)strlen(m->topic) : 0;
        pubs[p].size = (int64_t)((size_t)pubs[p].topic_len + m->payload_len + pubs[p].hdr_len);
    }
    if (hdr_bytes > s->run_hdrs_cap) {
        unsigned char *n = sb_realloc(s->run_hdrs, hdr_bytes);
        if (n != NULL) {
            s->run_hdrs = n;
            s->run_hdrs_cap = hdr_bytes;
        }
    }
    hdr_bytes = 0;
    for (size_t p = 0; p < npub; p++) {
        const sb_store_op *o = pubs[p].op;
        if (hdr_bytes + pubs[p].hdr_len > s->run_hdrs_cap) { /* no memory for them */
            pubs[p].op->status = SB_ENOMEM;
            continue;
        }
        if (pubs[p].hdr_len > 0) {
            pubs[p].hdr = s->run_hdrs + hdr_bytes;
            sb_message_headers_write(o->u.publish.msg, pubs[p].hdr);
            hdr_bytes += pubs[p].hdr_len;
        }
        for (size_t i = 0; i < o->u.publish.queue_count && pubs[p].rows > 0; i++) {
            if (o->u.publish.queue_ids[i] == 0)
                continue;
            rows[nrow].pub = (uint32_t)p;
            rows[nrow].queue = (uint32_t)i;
            nrow++;
        }
    }

    while (done < nrow) {
        int k = INSERT_SIZES - 1;
        sqlite3_stmt *st;
        while ((size_t)1 << k > nrow - done)
            k--;
        st = s->insert_st[k];
        for (size_t r = 0; r < (size_t)1 << k && rc == SQLITE_OK; r++) {
            const run_row *row = &rows[done + r];
            const run_pub *pub = &pubs[row->pub];
            rc = bind_entry(st, 1 + (int)r * INSERT_COLUMNS,
                            pub->op->u.publish.queue_ids[row->queue], pub);
        }
        rc = bind_run(st, rc);
        if (rc != SQLITE_OK)
            break;
        for (size_t r = 0; r < (size_t)1 << k && rc == SQLITE_OK; r++) {
            const run_row *row = &rows[done + r];
            rc = count_add(s, pubs[row->pub].op->u.publish.queue_ids[row->queue], 1,
                           pubs[row->pub].size);
        }
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "publish: counts");
            goto out;
        }
        done += (size_t)1 << k;
    }
    if (rc != SQLITE_OK) {
        /* The statement inserted nothing. Its entries and the rest go one
         * at a time, which finds the publish at fault and fails it alone
         * (a duplicate entry, a message too big), unless the error ended
         * the transaction. */
        const run_row *row = &rows[done];
        if (sqlite3_get_autocommit(s->db)) {
            rc = fail(s, rc, "publish: insert");
            goto out;
        }
        rc = SQLITE_OK;
        for (size_t p = row->pub; p < npub && rc == SQLITE_OK; p++)
            if (pubs[p].op->status == 0)
                rc = insert_entries(s, &pubs[p], p == row->pub ? row->queue : 0);
    }
out:
    for (size_t p = 0; p < npub && rc == SQLITE_OK; p++)
        if (pubs[p].op->status == 0)
            note_msg_id(s, pubs[p].op->u.publish.msg->id);
    return rc;
}

static int exec_retain_put(sb_store *s, sb_store_op *op)
{
    const sb_message *m = op->u.retain_put.msg;
    unsigned char *hdr = NULL;
    size_t hdr_len = 0;
    int rc;
    if (m == NULL) {
        op->status = SB_EINVAL;
        return SQLITE_OK;
    }
    if (sb_message_headers_encode(m, &hdr, &hdr_len) != 0) {
        op->status = SB_ENOMEM;
        return SQLITE_OK;
    }
    rc = retain_write(s, m, hdr, hdr_len);
    sb_free(hdr);
    if (rc != SQLITE_OK)
        return op_error(s, op, rc, "retain");
    note_msg_id(s, m->id);
    return SQLITE_OK;
}

/* Writes the dead letter from op's message (an entry of a memory-class queue
 * has no row) or, without one, copies the entry's row; then deletes the entry. */
static int exec_deadletter(sb_store *s, sb_store_op *op)
{
    const sb_message *m = op->u.deadletter.msg;
    sqlite3_stmt *st = s->st[m != NULL                     ? ST_DEADLETTER_PUT
                             : op->u.deadletter.no_headers ? ST_DEADLETTER_COPY_BARE
                                                           : ST_DEADLETTER_COPY];
    unsigned char *hdr = NULL;
    size_t hdr_len = 0;
    int64_t size = 0;
    int rc;

    if (m != NULL && sb_message_headers_encode(m, &hdr, &hdr_len) != 0) {
        op->status = SB_ENOMEM;
        return SQLITE_OK;
    }
    if (m != NULL)
        rc = bind_args(st, "iitittitbbiii", (int64_t)op->u.deadletter.queue_id,
                       (int64_t)op->u.deadletter.msg_id, op->u.deadletter.queue_name, sb_now_ms(),
                       op->u.deadletter.reason, op->u.deadletter.source,
                       (int64_t)op->u.deadletter.attempts, m->topic != NULL ? m->topic : "",
                       m->payload != NULL ? (const void *)m->payload : (const void *)"",
                       m->payload_len, (const void *)hdr, hdr_len, m->created_ms, m->expires_ms,
                       (int64_t)m->priority);
    else
        rc = bind_args(st, "iititti", (int64_t)op->u.deadletter.queue_id,
                       (int64_t)op->u.deadletter.msg_id, op->u.deadletter.queue_name, sb_now_ms(),
                       op->u.deadletter.reason, op->u.deadletter.source,
                       (int64_t)op->u.deadletter.attempts);
    rc = bind_run(st, rc);
    sb_free(hdr);
    if (m != NULL)
        size = (int64_t)((m->topic != NULL ? strlen(m->topic) : 0) + m->payload_len + hdr_len);
    if (rc != SQLITE_OK)
        return op_error(s, op, rc, "dead-letter");
    if (sqlite3_changes(s->db) == 0) {
        op->status = SB_ENOTFOUND; /* only without msg: no entry to copy */
        return SQLITE_OK;
    }
    /* from the message, the entry's size is known */
    rc = delete_range(s, op->u.deadletter.queue_id, op->u.deadletter.msg_id,
                      op->u.deadletter.msg_id, m != NULL ? 1 : 0, size);
    return rc != SQLITE_OK ? fail(s, rc, "dead-letter: delete entry") : SQLITE_OK;
}

static int exec_queue_put(sb_store *s, sb_store_op *op)
{
    const sb_store_queue *q = &op->u.queue_put;
    sqlite3_stmt *st = s->st[ST_QUEUE_PUT];
    int rc;
    if (q->name == NULL || (q->filter_count > 0 && q->filters == NULL)) {
        op->status = SB_EINVAL;
        return SQLITE_OK;
    }
    for (size_t i = 0; i < q->filter_count; i++)
        if (q->filters[i].filter == NULL) {
            op->status = SB_EINVAL;
            return SQLITE_OK;
        }
    /* The one error that is the op's own (another queue has the name)
     * comes from this statement, before anything was written. */
    rc = bind_run(
        st, bind_args(st, "itttt", (int64_t)q->id, q->name, q->settings, q->protocol, q->owner));
    if (rc != SQLITE_OK)
        return op_error(s, op, rc, "queue definition");
    st = s->st[ST_QUEUE_FILTERS_DELETE];
    rc = bind_run(st, bind_args(st, "i", (int64_t)q->id));
    if (rc != SQLITE_OK)
        return fail(s, rc, "queue definition: filters");
    st = s->st[ST_QUEUE_FILTER_INSERT];
    for (size_t i = 0; i < q->filter_count; i++) {
        const sb_sub_filter *f = &q->filters[i];
        rc = bind_args(st, "iit", (int64_t)q->id, (int64_t)i, f->filter);
        if (rc == SQLITE_OK)
            rc = f->qos != SB_QOS_NONE ? sqlite3_bind_int(st, 4, f->qos) : sqlite3_bind_null(st, 4);
        rc = bind_run(st, rc);
        if (rc != SQLITE_OK)
            return fail(s, rc, "queue definition: filters");
    }
    if (q->id > s->group_queue_id)
        s->group_queue_id = q->id;
    return SQLITE_OK;
}

static int exec_queue_delete(sb_store *s, sb_store_op *op)
{
    sqlite3_stmt *st = s->st[ST_QUEUE_DELETE_ENTRIES];
    int rc = bind_run(st, bind_args(st, "i", (int64_t)op->u.queue_delete.queue_id));
    if (rc != SQLITE_OK)
        return fail(s, rc, "queue delete: entries");
    st = s->st[ST_QUEUE_FILTERS_DELETE];
    rc = bind_run(st, bind_args(st, "i", (int64_t)op->u.queue_delete.queue_id));
    if (rc != SQLITE_OK)
        return fail(s, rc, "queue delete: filters");
    st = s->st[ST_QCOUNT_DELETE];
    rc = bind_run(st, bind_args(st, "i", (int64_t)op->u.queue_delete.queue_id));
    if (rc != SQLITE_OK)
        return fail(s, rc, "queue delete: counts");
    count_forget(s, op->u.queue_delete.queue_id);
    st = s->st[ST_QUEUE_DELETE];
    rc = bind_run(st, bind_args(st, "i", (int64_t)op->u.queue_delete.queue_id));
    return rc != SQLITE_OK ? fail(s, rc, "queue delete") : SQLITE_OK;
}

static char *column_strdup(sqlite3_stmt *st, int col, int *oom)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    char *copy;
    if (t == NULL) {
        /* NULL column, or SQLite could not allocate the text. */
        if (sqlite3_column_type(st, col) != SQLITE_NULL)
            *oom = 1;
        return NULL;
    }
    copy = sb_strndup((const char *)t, (size_t)sqlite3_column_bytes(st, col));
    if (copy == NULL)
        *oom = 1;
    return copy;
}

/* Builds a message from a row. Column indexes < 0 are absent. Returns 0,
 * SB_ENOMEM, or SB_ECORRUPT (malformed header blob). */
static int message_from_row(sb_message **out, sqlite3_stmt *st, int c_id, int c_topic,
                            int c_payload, int c_headers, int c_created, int c_expires,
                            int c_priority)
{
    const unsigned char *topic = sqlite3_column_text(st, c_topic);
    const void *payload = sqlite3_column_blob(st, c_payload);
    size_t payload_len = (size_t)sqlite3_column_bytes(st, c_payload);
    sb_message *m;
    int rc = 0;

    *out = NULL;
    if ((topic == NULL && sqlite3_column_type(st, c_topic) != SQLITE_NULL) ||
        (payload == NULL && payload_len > 0))
        return SB_ENOMEM;
    m = sb_message_new(topic != NULL ? (const char *)topic : "", payload, payload_len);
    if (m == NULL)
        return SB_ENOMEM;
    m->id = (uint64_t)sqlite3_column_int64(st, c_id);
    m->created_ms = sqlite3_column_int64(st, c_created);
    m->expires_ms = c_expires >= 0 ? sqlite3_column_int64(st, c_expires) : 0;
    m->priority = c_priority >= 0 ? sqlite3_column_int(st, c_priority) : 0;
    if (sqlite3_column_type(st, c_headers) != SQLITE_NULL) {
        const unsigned char *blob = sqlite3_column_blob(st, c_headers);
        size_t len = (size_t)sqlite3_column_bytes(st, c_headers);
        if (blob == NULL && len > 0)
            rc = SB_ENOMEM;
        else if (len > 0)
            rc = sb_message_headers_decode(m, blob, len);
    }
    if (rc != 0) {
        sb_message_unref(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Fills a dead letter from a row of DLQ_COLUMNS. */
static int dead_letter_from_row(sb_dead_letter *row, sqlite3_stmt *st)
{
    int oom = 0, rc;
    memset(row, 0, sizeof(*row));
    row->dlq_id = sqlite3_column_int64(st, 0);
    row->dead_ms = sqlite3_column_int64(st, 9);
    row->attempts = sqlite3_column_int(st, 12);
    row->queue_name = column_strdup(st, 1, &oom);
    row->reason = column_strdup(st, 10, &oom);
    row->source = column_strdup(st, 11, &oom);
    rc = oom ? SB_ENOMEM : message_from_row(&row->msg, st, 2, 3, 4, 5, 6, 7, 8);
    if (rc != 0) {
        sb_free(row->queue_name);
        sb_free(row->reason);
        sb_free(row->source);
        memset(row, 0, sizeof(*row));
    }
    return rc;
}

static int exec_dlq_list(sb_store *s, sb_store_op *op)
{
    const char *name = op->u.dlq_list.queue_name;
    sqlite3_stmt *st = s->st[name != NULL ? ST_DLQ_LIST_QUEUE : ST_DLQ_LIST_ALL];
    sb_dead_letter *rows = NULL;
    size_t count = 0, cap = 0;
    int64_t limit = op->u.dlq_list.limit > 0 ? op->u.dlq_list.limit : -1;
    int rc, status = 0;

    rc = name != NULL ? bind_args(st, "iit", op->u.dlq_list.after_dlq_id, limit, name)
                      : bind_args(st, "ii", op->u.dlq_list.after_dlq_id, limit);
    if (rc != SQLITE_OK)
        return op_error(s, op, bind_run(st, rc), "dead-letter list");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            sb_dead_letter *n = sb_realloc(rows, ncap * sizeof(*rows));
            if (n == NULL) {
                status = SB_ENOMEM;
                break;
            }
            rows = n;
            cap = ncap;
        }
        status = dead_letter_from_row(&rows[count], st);
        if (status != 0)
            break;
        count++;
    }
    (void)sqlite3_reset(st);
    if (status == 0 && rc != SQLITE_DONE) {
        sb_store_dlq_rows_free(rows, count);
        return op_error(s, op, rc, "dead-letter list");
    }
    if (status != 0) {
        /* Out of memory, or a malformed header blob in a dead letter. */
        sb_store_dlq_rows_free(rows, count);
        op->status = status;
        return SQLITE_OK;
    }
    op->u.dlq_list.rows = rows;
    op->u.dlq_list.row_count = count;
    return SQLITE_OK;
}

static int exec_dlq_redrive(sb_store *s, sb_store_op *op)
{
    size_t n = op->u.dlq_redrive.row_count, i;
    /* each row's size: counted once the op holds (not rolled back) */
    int64_t *sizes = sb_calloc(n > 0 ? n : 1, sizeof(*sizes));
    int rc, status = 0;
    if (sizes == NULL) {
        op->status = SB_ENOMEM;
        return SQLITE_OK;
    }
    rc = run(s->st[ST_SAVEPOINT]);
    if (rc != SQLITE_OK) {
        rc = fail(s, rc, "redrive: savepoint");
        goto out;
    }
    for (i = 0; i < n && status == 0; i++) {
        const sb_dead_letter *r = &op->u.dlq_redrive.rows[i];
        sqlite3_stmt *st = s->st[ST_DLQ_REDRIVE_COPY];
        int64_t rows;
        if (r->target_queue_id == 0)
            continue; /* the caller leaves this one in the dead-letter table */
        rc = run_sizes(
            st,
            bind_args(st, "iii", (int64_t)r->target_queue_id, (int64_t)r->new_msg_id, r->dlq_id),
            &rows, &sizes[i]);
        if (rc != SQLITE_OK) {
            if (!is_op_local(rc) || sqlite3_get_autocommit(s->db)) {
                rc = fail(s, rc, "redrive: insert");
                goto out;
            }
            status = sb_store__error_from_sqlite(rc);
            break;
        }
        if (rows == 0) {
            /* Gone (purged or redriven already), or the new id is taken. */
            st = s->st[ST_DLQ_EXISTS];
            rc = bind_args(st, "i", r->dlq_id);
            if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
            (void)sqlite3_reset(st);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                rc = fail(s, rc, "redrive: lookup");
                goto out;
            }
            status = rc == SQLITE_ROW ? SB_EEXIST : SB_ENOTFOUND;
            break;
        }
        st = s->st[ST_DLQ_DELETE];
        rc = bind_run(st, bind_args(st, "i", r->dlq_id));
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "redrive: delete");
            goto out;
        }
        note_msg_id(s, r->new_msg_id);
    }
    if (status != 0) {
        op->status = status;
        rc = run(s->st[ST_ROLLBACK_TO]);
        if (rc != SQLITE_OK) {
            rc = fail(s, rc, "redrive: rollback to savepoint");
            goto out;
        }
    }
    rc = run(s->st[ST_RELEASE]);
    if (rc != SQLITE_OK) {
        rc = fail(s, rc, "redrive: release");
        goto out;
    }
    for (i = 0; i < n && status == 0 && rc == SQLITE_OK; i++)
        if (op->u.dlq_redrive.rows[i].target_queue_id != 0)
            rc = count_add(s, op->u.dlq_redrive.rows[i].target_queue_id, 1, sizes[i]);
    if (rc != SQLITE_OK)
        rc = fail(s, rc, "redrive: counts");
out:
    sb_free(sizes);
    return rc;
}

static int exec_dlq_purge(sb_store *s, sb_store_op *op)
{
    const char *name = op->u.dlq_purge.queue_name;
    int64_t max = op->u.dlq_purge.max_dlq_id > 0 ? op->u.dlq_purge.max_dlq_id : INT64_MAX;
    sqlite3_stmt *st = s->st[name != NULL ? ST_DLQ_PURGE_QUEUE : ST_DLQ_PURGE_ALL];
    int64_t limit = op->u.dlq_purge.limit > 0 ? op->u.dlq_purge.limit : -1;
    int rc;
    if (limit > 0 && op->u.dlq_purge.max_dlq_id <= 0) {
        /* the first batch of many: the later ones purge up to what is
         * there now, not what dies meanwhile */
        sqlite3_stmt *mx = NULL;
        rc = sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) FROM dlq", -1, &mx, NULL);
        if (rc == SQLITE_OK && (rc = sqlite3_step(mx)) == SQLITE_ROW) {
            op->u.dlq_purge.max_dlq_id = max = sqlite3_column_int64(mx, 0);
            rc = SQLITE_OK;
        }
        sqlite3_finalize(mx);
        if (rc != SQLITE_OK)
            return op_error(s, op, rc, "dead-letter purge");
    }
    rc = bind_run(st, name != NULL ? bind_args(st, "iti", max, name, limit)
                                   : bind_args(st, "ii", max, limit));
    if (rc != SQLITE_OK)
        return op_error(s, op, rc, "dead-letter purge");
    op->u.dlq_purge.purged = sqlite3_changes(s->db);
    return SQLITE_OK;
}

/* ---- paging ops --------------------------------------------------------- */

/* SQL function sb_header(headers, key): the value of key in a headers blob
 * (sb_message_headers_encode: key NUL value NUL ...), or NULL. A dead letter
 * written in the store keeps its source as one written from memory does. */
static void sql_header(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const unsigned char *blob = sqlite3_value_blob(argv[0]);
    const unsigned char *key = sqlite3_value_text(argv[1]);
    size_t len = (size_t)sqlite3_value_bytes(argv[0]), off = 0;
    (void)argc;
    if (blob == NULL || key == NULL)
        return; /* NULL */
    while (off < len) {
        const unsigned char *k = blob + off, *kend = memchr(k, '\0', len - off), *v, *vend;
        if (kend == NULL)
            return;
        v = kend + 1;
        vend = v < blob + len ? memchr(v, '\0', (size_t)(blob + len - v)) : NULL;
        if (vend == NULL)
            return;
        if (strcmp((const char *)k, (const char *)key) == 0) {
            sqlite3_result_text(ctx, (const char *)v, (int)(vend - v), SQLITE_TRANSIENT);
            return;
        }
        off = (size_t)(vend + 1 - blob);
    }
}

static int exec_page_in(sb_store *s, sb_store_op *op)
{
    sqlite3_stmt *st = s->page_st[PST_READ];
    sb_store_entry *rows = NULL;
    size_t count = 0, cap = 0;
    int64_t bytes = 0, max_bytes = op->u.page_in.max_bytes;
    int limit = op->u.page_in.limit > 0 ? op->u.page_in.limit : 1;
    int rc, status = 0;

    rc = bind_args(st, "iii", (int64_t)op->u.page_in.queue_id, (int64_t)op->u.page_in.after_id,
                   (int64_t)limit);
    if (rc != SQLITE_OK)
        return read_error(s, op, bind_run(st, rc), "page-in");
    op->u.page_in.exhausted = 0;
    op->u.page_in.bad_id = 0;
    op->u.page_in.bad_size = 0;
    op->u.page_in.bad_reason[0] = '\0';
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t size = sqlite3_column_int64(st, 8);
        if (max_bytes > 0 && count > 0 && bytes + size > max_bytes)
            break;
        if (count == cap) {
            size_t ncap = cap == 0 ? 64 : cap * 2;
            sb_store_entry *n = sb_realloc(rows, ncap * sizeof(*rows));
            if (n == NULL) {
                status = SB_ENOMEM;
                break;
            }
            rows = n;
            cap = ncap;
        }
        status = message_from_row(&rows[count].msg, st, 0, 1, 2, 3, 4, 5, 6);
        if (status == SB_ECORRUPT) {
            /* The rows before it are returned; it is named, for the
             * caller to move it aside (the queue must not stop at it). */
            op->u.page_in.bad_id = (uint64_t)sqlite3_column_int64(st, 0);
            op->u.page_in.bad_size = size;
            snprintf(op->u.page_in.bad_reason, sizeof(op->u.page_in.bad_reason),
                     "its headers (%d bytes) do not decode", sqlite3_column_bytes(st, 3));
            status = 0;
            rc = SQLITE_ROW;
            break;
        }
        if (status != 0)
            break;
        rows[count].attempts = sqlite3_column_int(st, 7);
        rows[count].size = size;
        bytes += size;
        count++;
    }
    (void)sqlite3_reset(st);
    op->u.page_in.exhausted = rc == SQLITE_DONE && count < (size_t)limit;
    if (status == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        sb_store_page_rows_free(rows, count);
        return read_error(s, op, rc, "page-in");
    }
    if (status != 0) {
        sb_store_page_rows_free(rows, count);
        op->status = status;
        return SQLITE_OK;
    }
    op->u.page_in.rows = rows;
    op->u.page_in.row_count = count;
    return SQLITE_OK;
}

/* An entry's expiry as the queue sees it (service/queue.c entry_expiry). */
static int64_t effective_expiry(int64_t created_ms, int64_t expires_ms, int64_t ttl_ms)
{
    if (ttl_ms > 0 && (expires_ms == 0 || created_ms + ttl_ms < expires_ms))
        return created_ms + ttl_ms;
    return expires_ms;
}

static int exec_trim(sb_store *s, sb_store_op *op)
{
    sqlite3_stmt *st = s->page_st[PST_SCAN];
    uint32_t qid = op->u.trim.queue_id;
    uint64_t after = op->u.trim.after_id, last = 0;
    int64_t removed = 0, bytes = 0, next = 0;
    int limit = op->u.trim.limit > 0 ? op->u.trim.limit : 1;
    int rc;

    op->u.trim.removed = op->u.trim.removed_bytes = op->u.trim.next_expiry_ms = 0;
    op->u.trim.last_id = 0;
    /* The run to remove is a prefix of the entries after `after`: found
     * first, then removed by id range (no statement runs under the scan). */
    rc = bind_args(st, "iii", (int64_t)qid, (int64_t)after, (int64_t)limit);
    if (rc != SQLITE_OK)
        return read_error(s, op, bind_run(st, rc), "trim: scan");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (op->u.trim.expire) {
            int64_t exp = effective_expiry(sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2),
                                           op->u.trim.ttl_ms);
            if (exp == 0 || exp > op->u.trim.now_ms) {
                next = exp;
                break;
            }
        }
        last = (uint64_t)sqlite3_column_int64(st, 0);
        bytes += sqlite3_column_int64(st, 3);
        removed++;
    }
    (void)sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return read_error(s, op, rc, "trim: scan");
    if (removed == 0) {
        op->u.trim.next_expiry_ms = next;
        return SQLITE_OK;
    }
    if (op->u.trim.expire) {
        st = s->page_st[PST_EXPIRE_COPY];
        rc = bind_run(st,
                      bind_args(st, "iiitit", (int64_t)qid, (int64_t)after, (int64_t)last,
                                op->u.trim.queue_name, sb_now_ms(),
                                op->u.trim.reason != NULL ? op->u.trim.reason : "expired (ttl)"));
        if (rc != SQLITE_OK)
            return fail(s, rc, "trim: dead-letter");
    }
    rc = delete_range(s, qid, after + 1, last, removed, bytes);
    if (rc != SQLITE_OK)
        return fail(s, rc, "trim: delete");
    op->u.trim.removed = removed;
    op->u.trim.removed_bytes = bytes;
    op->u.trim.last_id = last;
    op->u.trim.next_expiry_ms = next;
    return SQLITE_OK;
}

/* Executes one op inside the group's transaction. Returns SQLITE_OK (the op's
 * own outcome is in op->status) or the error that fails the group. */
/* Acks are deleted at the end of their group, merged into ranges: with
 * several consumers on a queue, most acks arrive out of order and each
 * would be a DELETE statement of one row; sorted, those of a group make a
 * few ranges. Deferring changes nothing that a later op of the group could
 * see (acks_flush runs first when it could), so a group's outcome is the
 * same. Returns 0 if op was deferred, -1 if it must run now (no memory). */
static int ack_defer(sb_store *s, const sb_store_op *op)
{
    if (s->ack_count == s->ack_cap) {
        size_t cap = s->ack_cap == 0 ? 256 : 2 * s->ack_cap;
        ack_range *n = sb_realloc(s->acks, cap * sizeof(*n));
        if (n == NULL)
            return -1;
        s->acks = n;
        s->ack_cap = cap;
    }
    s->acks[s->ack_count].queue_id = op->u.ack.queue_id;
    s->acks[s->ack_count].first = op->u.ack.first_id;
    s->acks[s->ack_count].last = op->u.ack.last_id;
    s->acks[s->ack_count].rows = op->u.ack.rows;
    s->acks[s->ack_count].bytes = op->u.ack.bytes;
    s->ack_count++;
    if (op->u.ack.last_id > s->ack_max_id)
        s->ack_max_id = op->u.ack.last_id;
    return 0;
}

static int ack_range_cmp(const void *a, const void *b)
{
    const ack_range *x = a, *y = b;
    if (x->queue_id != y->queue_id)
        return x->queue_id < y->queue_id ? -1 : 1;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Deletes the deferred acks' entries, one statement per merged range. */
static int acks_flush(sb_store *s)
{
    size_t n = s->ack_count, i = 0;
    int rc = SQLITE_OK;
    s->ack_count = 0;
    s->ack_max_id = 0;
    if (n > 1)
        qsort(s->acks, n, sizeof(*s->acks), ack_range_cmp);
    while (i < n && rc == SQLITE_OK) {
        ack_range r = s->acks[i++];
        while (i < n && s->acks[i].queue_id == r.queue_id && s->acks[i].first <= r.last + 1) {
            if (s->acks[i].last > r.last)
                r.last = s->acks[i].last;
            /* one that does not say makes the range count by a read */
            r.rows = r.rows > 0 && s->acks[i].rows > 0 ? r.rows + s->acks[i].rows : 0;
            r.bytes += s->acks[i].bytes;
            i++;
        }
        rc = delete_range(s, r.queue_id, r.first, r.last, r.rows, r.bytes);
    }
    return rc != SQLITE_OK ? fail(s, rc, "ack") : SQLITE_OK;
}

/* Whether op must see the deferred acks executed first: anything but a
 * publish of a message newer than every acked one (whose rows no ack of
 * this group can concern). */
static int needs_acks_flushed(const sb_store *s, const sb_store_op *op)
{
    return s->ack_count > 0 && (op->type != SB_OP_PUBLISH || op->u.publish.msg == NULL ||
                                op->u.publish.msg->id <= s->ack_max_id);
}

static int exec_op(sb_store *s, sb_store_op *op)
{
    sqlite3_stmt *st;
    int rc;
    switch (op->type) {
    case SB_OP_PUBLISH:
        /* From here on sb_store_cancel refuses op, and what it cancelled
         * before is seen (the mutex orders it). A publish waits in its
         * group while the ops before it execute: an ack meanwhile still
         * saves its row. */
        uv_mutex_lock(&s->mu);
        s->exec_seq = op->seq;
        uv_mutex_unlock(&s->mu);
        return exec_publish(s, op);
    case SB_OP_ACK:
        rc = delete_range(s, op->u.ack.queue_id, op->u.ack.first_id, op->u.ack.last_id,
                          op->u.ack.rows, op->u.ack.bytes);
        return rc != SQLITE_OK ? fail(s, rc, "ack") : SQLITE_OK;
    case SB_OP_ATTEMPTS:
        st = s->st[ST_ENTRY_ATTEMPTS];
        rc = bind_run(st,
                      bind_args(st, "iii", (int64_t)op->u.attempts.queue_id,
                                (int64_t)op->u.attempts.msg_id, (int64_t)op->u.attempts.attempts));
        if (rc != SQLITE_OK)
            return fail(s, rc, "attempts");
        if (sqlite3_changes(s->db) == 0)
            op->status = SB_ENOTFOUND;
        return SQLITE_OK;
    case SB_OP_DEADLETTER:
        return exec_deadletter(s, op);
    case SB_OP_QUEUE_PUT:
        return exec_queue_put(s, op);
    case SB_OP_QUEUE_DELETE:
        return exec_queue_delete(s, op);
    case SB_OP_DLQ_LIST:
        return exec_dlq_list(s, op);
    case SB_OP_DLQ_REDRIVE:
        return exec_dlq_redrive(s, op);
    case SB_OP_DLQ_PURGE:
        return exec_dlq_purge(s, op);
    case SB_OP_DEDUP_PRUNE:
        st = s->st[ST_DEDUP_PRUNE];
        rc = bind_run(st, bind_args(st, "i", op->u.dedup_prune.now_ms));
        return rc != SQLITE_OK ? fail(s, rc, "dedup prune") : SQLITE_OK;
    case SB_OP_RETAIN_PUT:
        return exec_retain_put(s, op);
    case SB_OP_KEY_PUT:
        st = s->st[ST_DEDUP_PUT];
        rc = bind_run(st, bind_args(st, "ti", op->u.key.key, op->u.key.expires_ms));
        return rc != SQLITE_OK ? fail(s, rc, "key put") : SQLITE_OK;
    case SB_OP_KEY_DELETE:
        st = s->st[op->u.key.prefix ? ST_KEY_DELETE_PREFIX : ST_KEY_DELETE];
        rc = bind_run(st, bind_args(st, "t", op->u.key.key));
        return rc != SQLITE_OK ? fail(s, rc, "key delete") : SQLITE_OK;
    case SB_OP_PAGE_IN:
        return exec_page_in(s, op);
    case SB_OP_TRIM:
        return exec_trim(s, op);
    case SB_OP_CHECK:
    case SB_OP_COMPACT:
        return SQLITE_OK; /* after the commit (exec_maintenance) */
    }
    op->status = SB_EINVAL;
    return SQLITE_OK;
}

/* ---- the store thread --------------------------------------------------- */

static int set_sync(sb_store *s, int level)
{
    int rc;
    if (s->cur_sync == level)
        return SQLITE_OK;
    rc = run(s->st[level == 2 ? ST_SYNC_FULL : ST_SYNC_NORMAL]);
    if (rc != SQLITE_OK)
        return fail(s, rc, "PRAGMA synchronous");
    s->cur_sync = level;
    return SQLITE_OK;
}

/* Persists the id high-water marks the group raised, message ids reserved
 * by sb_store_reserve_ids included (one statement per group at most, none
 * for groups of acks once the reservation is on disk). */
static int update_meta(sb_store *s)
{
    sqlite3_stmt *st = s->st[ST_META_PUT];
    int rc;
    if (s->group_reserve > s->group_msg_id)
        s->group_msg_id = s->group_reserve;
    if (s->group_msg_id > s->hw_msg_id) {
        rc = bind_run(st, bind_args(st, "ti", "msg_id", (int64_t)s->group_msg_id));
        if (rc != SQLITE_OK)
            return fail(s, rc, "id high-water mark");
    }
    if (s->group_queue_id > s->hw_queue_id) {
        rc = bind_run(st, bind_args(st, "ti", "queue_id", (int64_t)s->group_queue_id));
        if (rc != SQLITE_OK)
            return fail(s, rc, "id high-water mark");
    }
    return SQLITE_OK;
}

static void wake_loop(sb_store *s)
{
    int rc = uv_async_send(s->async);
    if (rc != 0)
        sb_errlog(WHO, "database %s: cannot wake the loop: %s", s->path, uv_strerror(rc));
}

static void read_freelist(sb_store *s)
{
    sqlite3_stmt *st = s->page_st[PST_FREELIST];
    if (sqlite3_step(st) == SQLITE_ROW)
        s->free_pages = sqlite3_column_int64(st, 0);
    (void)sqlite3_reset(st);
}

/* An idle store with incremental auto-vacuum returns free pages to the file
 * system, a step at a time between groups (the file shrinks at the next WAL
 * checkpoint). Off the commit path: only when no op waits. */
static void vacuum_step(sb_store *s)
{
    sqlite3_stmt *st = s->page_st[PST_VACUUM];
    int64_t pages = -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    (void)sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        sb_warn(WHO, "database %s: incremental vacuum failed: %s", s->path, sqlite3_errmsg(s->db));
        s->free_pages = 0; /* not again until the next commit */
        return;
    }
    read_freelist(s);
    st = s->st[ST_PAGE_COUNT];
    if (sqlite3_step(st) == SQLITE_ROW)
        pages = sqlite3_column_int64(st, 0);
    (void)sqlite3_reset(st);
    uv_mutex_lock(&s->mu);
    if (pages >= 0)
        s->stats.db_bytes = pages * s->page_size;
    s->stats.free_bytes = s->free_pages * s->page_size;
    uv_mutex_unlock(&s->mu);
}

/* Whether the idle store should compact with one VACUUM (see
 * VACUUM_FULL_MAX_LIVE) rather than in steps. */
static int vacuum_full_due(const sb_store *s, int64_t pages)
{
    return s->free_pages * 2 >= pages &&
           (pages - s->free_pages) * s->page_size <= VACUUM_FULL_MAX_LIVE;
}

/* A VACUUM gives way to work that arrives (or a stop): interrupted, it
 * rolls back, leaving the file as it was, and runs again once idle. */
static int vacuum_yield(void *arg)
{
    sb_store *s = arg;
    int busy;
    uv_mutex_lock(&s->mu);
    busy = s->q_head != NULL || s->stopping;
    uv_mutex_unlock(&s->mu);
    return busy;
}

static void vacuum_full(sb_store *s, int64_t pages)
{
    int64_t before = pages * s->page_size, live = (pages - s->free_pages) * s->page_size;
    uint64_t avail = 0;
    uv_fs_t req;
    int rc;

    if (uv_fs_statfs(NULL, &req, s->path, NULL) == 0)
        avail = ((const uv_statfs_t *)req.ptr)->f_bavail * ((const uv_statfs_t *)req.ptr)->f_bsize;
    uv_fs_req_cleanup(&req);
    if (avail < 2 * (uint64_t)live + 16 * 1024 * 1024) {
        vacuum_step(s); /* no room for the copy: in steps */
        return;
    }
    /* one transaction: a crash leaves the file as it was */
    sqlite3_progress_handler(s->db, 10000, vacuum_yield, s);
    rc = sqlite3_exec(s->db, "VACUUM", NULL, NULL, NULL);
    sqlite3_progress_handler(s->db, 0, NULL, NULL);
    if (rc == SQLITE_INTERRUPT) {
        sb_debug(WHO, "database %s: VACUUM gave way to new work", s->path);
        return;
    }
    if (rc != SQLITE_OK) {
        sb_warn(WHO, "database %s: VACUUM failed: %s", s->path, sqlite3_errmsg(s->db));
        s->free_pages = 0; /* not again until the next commit */
        return;
    }
    rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc != SQLITE_OK)
        sb_warn(WHO, "database %s: checkpoint after VACUUM failed: %s", s->path,
                sqlite3_errmsg(s->db));
    read_freelist(s);
    if (sqlite3_step(s->st[ST_PAGE_COUNT]) == SQLITE_ROW)
        pages = sqlite3_column_int64(s->st[ST_PAGE_COUNT], 0);
    (void)sqlite3_reset(s->st[ST_PAGE_COUNT]);
    uv_mutex_lock(&s->mu);
    s->stats.db_bytes = pages * s->page_size;
    s->stats.free_bytes = s->free_pages * s->page_size;
    uv_mutex_unlock(&s->mu);
    sb_info(WHO,
            "database %s: compacted from %lld to %lld MiB while idle (a VACUUM of what was in use)",
            s->path, (long long)(before >> 20), (long long)((pages * s->page_size) >> 20));
}

/* CHECK and COMPACT, after their group committed. */
/* Sets op's maintenance report (NULL if there is no memory for it). */
static void set_report(sb_store_op *op, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    sb_free(op->u.maint.report);
    op->u.maint.report = sb_strdup(text);
}

static void exec_maintenance(sb_store *s, sb_store_op *op)
{
    sqlite3_stmt *st = NULL;
    char found[1024];
    size_t len = 0;
    int rc;

    found[0] = '\0';
    if (op->type == SB_OP_CHECK) {
        rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check(20)", -1, &st, NULL);
        op->u.maint.ok = 1;
        while (rc == SQLITE_OK || rc == SQLITE_ROW) {
            const char *t;
            if ((rc = sqlite3_step(st)) != SQLITE_ROW)
                break;
            t = (const char *)sqlite3_column_text(st, 0);
            if (t == NULL || strcmp(t, "ok") == 0)
                continue;
            op->u.maint.ok = 0;
            if (len + 2 < sizeof(found))
                len += (size_t)snprintf(found + len, sizeof(found) - len, "%s%s",
                                        len > 0 ? "; " : "", t);
        }
        if (rc != SQLITE_DONE) {
            op->u.maint.ok = 0;
            snprintf(found, sizeof(found), "%s (SQLite code %d)", sqlite3_errmsg(s->db), rc);
        }
        (void)sqlite3_finalize(st);
        if (!op->u.maint.ok)
            set_report(op, "%s", found);
        sb_log(op->u.maint.ok ? SB_LOG_INFO : SB_LOG_ERROR, WHO, "database %s: check: %s", s->path,
               op->u.maint.ok ? "ok" : found);
        return;
    }
    {
        uint64_t avail = 0;
        uv_fs_t req;
        int64_t pages = 0;
        st = s->st[ST_PAGE_COUNT];
        if (sqlite3_step(st) == SQLITE_ROW)
            pages = sqlite3_column_int64(st, 0);
        (void)sqlite3_reset(st);
        op->u.maint.before_bytes = op->u.maint.after_bytes = pages * s->page_size;
        if (uv_fs_statfs(NULL, &req, s->path, NULL) == 0)
            avail =
                ((const uv_statfs_t *)req.ptr)->f_bavail * ((const uv_statfs_t *)req.ptr)->f_bsize;
        uv_fs_req_cleanup(&req);
        /* VACUUM writes a copy, then the WAL holds the new pages */
        if (avail < 2 * (uint64_t)op->u.maint.before_bytes + 16 * 1024 * 1024) {
            op->status = SB_ENOSPC;
            set_report(op,
                       "not enough free disk space to compact %lld MiB (%llu MiB free, twice the "
                       "database is needed)",
                       (long long)(op->u.maint.before_bytes >> 20),
                       (unsigned long long)(avail >> 20));
            return;
        }
        sb_info(WHO, "database %s: compacting %lld MiB (VACUUM; commits wait)", s->path,
                (long long)(op->u.maint.before_bytes >> 20));
        /* VACUUM is one transaction: a crash leaves the file as it was */
        rc = sqlite3_exec(s->db, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK) {
            op->status = sb_store__error_from_sqlite(rc);
            snprintf(found, sizeof(found), "VACUUM failed: %s", sqlite3_errmsg(s->db));
            set_report(op, "%s", found);
            sb_errlog(WHO, "database %s: %s", s->path, found);
            return;
        }
        s->auto_vacuum = 1;
        st = s->st[ST_PAGE_COUNT];
        if (sqlite3_step(st) == SQLITE_ROW)
            pages = sqlite3_column_int64(st, 0);
        (void)sqlite3_reset(st);
        op->u.maint.after_bytes = pages * s->page_size;
        read_freelist(s);
        uv_mutex_lock(&s->mu);
        s->stats.auto_vacuum = 1;
        s->stats.db_bytes = op->u.maint.after_bytes;
        s->stats.free_bytes = s->free_pages * s->page_size;
        uv_mutex_unlock(&s->mu);
        sb_info(WHO,
                "database %s: compacted from %lld to %lld MiB; free pages are returned from "
                "now on",
                s->path, (long long)(op->u.maint.before_bytes >> 20),
                (long long)(op->u.maint.after_bytes >> 20));
    }
}

static void group_committed(sb_store *s, sb_store_op *head, sb_store_op *tail, size_t n,
                            int fsynced, uint64_t took_us)
{
    static const uint64_t bounds[] = {SB_STORE_LATENCY_BOUNDS_US};
    _Static_assert(sizeof bounds / sizeof bounds[0] + 1 == SB_STORE_LATENCY_BUCKETS,
                   "one bucket per bound, and one above them");
    size_t bucket = 0;
    sqlite3_stmt *st = s->st[ST_PAGE_COUNT];
    int64_t bytes = -1;
    int was_degraded, rc;

    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        bytes = sqlite3_column_int64(st, 0) * s->page_size;
    (void)sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        sb_warn(WHO, "database %s: PRAGMA page_count failed: %s", s->path, sqlite3_errmsg(s->db));
    read_freelist(s);
    if (s->group_msg_id > s->hw_msg_id)
        s->hw_msg_id = s->group_msg_id;
    if (s->group_queue_id > s->hw_queue_id)
        s->hw_queue_id = s->group_queue_id;

    uv_mutex_lock(&s->mu);
    s->stats.commits++;
    if (fsynced)
        s->stats.fsync_commits++;
    s->stats.ops += n;
    if (n > s->stats.max_batch_seen)
        s->stats.max_batch_seen = n;
    if (bytes >= 0)
        s->stats.db_bytes = bytes;
    s->stats.free_bytes = s->free_pages * s->page_size;
    while (bucket < sizeof bounds / sizeof bounds[0] && took_us > bounds[bucket])
        bucket++;
    s->stats.commit_us[bucket]++;
    s->stats.commit_us_sum += took_us;
    s->stats.elided += s->group_elided;
    s->durable_msg_id = s->hw_msg_id;
    was_degraded = s->stats.degraded;
    s->stats.degraded = 0;
    list_concat(&s->done_head, &s->done_tail, head, tail);
    uv_mutex_unlock(&s->mu);

    if (was_degraded && s->degraded_logged) {
        sb_info(WHO, "database %s: commits succeed again after %llu failed; store recovered",
                s->path, (unsigned long long)s->episode_failures);
        s->degraded_logged = 0;
        s->degraded_log_ms = sb_now_ms();
    }
    if (was_degraded)
        s->episode_failures = 0;
    if (head != NULL)
        wake_loop(s);
}

/* 1 if a SQLITE_FULL came from max_db_bytes (PRAGMA max_page_count) rather
 * than from the disk: SQLite reports both the same way, so the disk is
 * asked whether it still had room for what the group wrote. */
static int size_limit_reached(const sb_store *s, const sb_store_op *group)
{
    uint64_t need = 1024 * 1024, avail;
    uv_fs_t req;
    if (s->max_db_bytes <= 0)
        return 0;
    for (const sb_store_op *op = group; op != NULL; op = op->next)
        if (op->type == SB_OP_PUBLISH && op->u.publish.msg != NULL)
            need += 2 * (uint64_t)op->u.publish.msg->payload_len + 4096;
    if (uv_fs_statfs(NULL, &req, s->path, NULL) != 0) {
        uv_fs_req_cleanup(&req);
        return 1; /* cannot tell: the limit is the likely cause */
    }
    avail = ((const uv_statfs_t *)req.ptr)->f_bavail * ((const uv_statfs_t *)req.ptr)->f_bsize;
    uv_fs_req_cleanup(&req);
    return avail > need;
}

/* The group's transaction failed: roll back, complete the ops that report
 * the failure, keep the others for a retry. */
static void group_failed(sb_store *s, sb_store_op *group)
{
    sb_store_op *done_h = NULL, *done_t = NULL, *op, *next;
    int status = (s->fail_rc & 0xff) == SQLITE_FULL ? SB_ENOSPC : SB_EIO;
    int stopping, was_degraded, publishes_failed = 0, rc;
    size_t completed = 0;

    /* Some errors (and a failed COMMIT) may have ended the transaction. */
    if (!sqlite3_get_autocommit(s->db)) {
        rc = run(s->st[ST_ROLLBACK]);
        if (rc != SQLITE_OK)
            sb_errlog(WHO, "database %s: ROLLBACK failed: %s", s->path, sqlite3_errmsg(s->db));
    }
    uv_mutex_lock(&s->mu);
    stopping = s->stopping;
    uv_mutex_unlock(&s->mu);
    if ((s->fail_rc & 0xff) == SQLITE_FULL && size_limit_reached(s, group))
        snprintf(s->fail_msg, sizeof(s->fail_msg),
                 "database size limit reached (broker.store.max_db_bytes = %lld)",
                 (long long)s->max_db_bytes);

    for (op = group; op != NULL; op = next) {
        next = op->next;
        if ((op->type == SB_OP_PAGE_IN || op->type == SB_OP_TRIM) && op->status == SB_ECORRUPT) {
            if (op->type == SB_OP_PAGE_IN) {
                sb_store_page_rows_free(op->u.page_in.rows, op->u.page_in.row_count);
                op->u.page_in.rows = NULL;
                op->u.page_in.row_count = 0;
            }
            list_append(&done_h, &done_t, op); /* it failed alone */
            completed++;
            continue;
        }
        if (!s->read_corrupt && (op->type == SB_OP_PUBLISH || op->type == SB_OP_DLQ_REDRIVE)) {
            op->status = status;
            list_append(&done_h, &done_t, op);
            completed++;
            publishes_failed = 1;
            continue;
        }
        if (op->type == SB_OP_DLQ_LIST) {
            sb_store_dlq_rows_free(op->u.dlq_list.rows, op->u.dlq_list.row_count);
            op->u.dlq_list.rows = NULL;
            op->u.dlq_list.row_count = 0;
        }
        if (op->type == SB_OP_PAGE_IN) {
            sb_store_page_rows_free(op->u.page_in.rows, op->u.page_in.row_count);
            op->u.page_in.rows = NULL;
            op->u.page_in.row_count = 0;
        }
        op->status = 0;
        list_append(&s->retry_head, &s->retry_tail, op);
        s->retry_count++;
    }
    /* Retry at once, alone, if publishes (that may need the space acks would
     * free) were in the way; else later. Stopping: a retry that would have to
     * wait gives up instead. */
    s->retry_alone = publishes_failed && s->retry_head != NULL;
    if (stopping && !s->retry_alone) {
        for (op = s->retry_head; op != NULL; op = next) {
            next = op->next;
            op->status = status;
            list_append(&done_h, &done_t, op);
            completed++;
        }
        s->retry_head = s->retry_tail = NULL;
        s->retry_count = 0;
    }
    s->retry_at = uv_hrtime() + (s->retry_alone ? 0 : RETRY_DELAY_NS);
    if (s->read_corrupt) {
        /* nothing wrong with the store as such: the others go again now */
        s->retry_alone = s->retry_head != NULL;
        s->retry_at = uv_hrtime();
        uv_mutex_lock(&s->mu);
        s->stats.ops += completed;
        list_concat(&s->done_head, &s->done_tail, done_h, done_t);
        uv_mutex_unlock(&s->mu);
        if (done_h != NULL)
            wake_loop(s);
        return;
    }

    uv_mutex_lock(&s->mu);
    s->stats.failed_commits++;
    s->stats.ops += completed;
    was_degraded = s->stats.degraded;
    s->stats.degraded = 1;
    snprintf(s->stats.last_error, sizeof(s->stats.last_error), "database %s: %s", s->path,
             s->fail_msg);
    list_concat(&s->done_head, &s->done_tail, done_h, done_t);
    uv_mutex_unlock(&s->mu);

    s->episode_failures++;
    if (!s->degraded_logged) {
        int64_t now = sb_now_ms();
        if (now - s->degraded_log_ms >= DEGRADED_LOG_INTERVAL_MS) {
            char flaps[96] = "";
            if (s->unlogged_flaps > 0)
                snprintf(flaps, sizeof(flaps), " (and %llu shorter episode(s) not logged)",
                         (unsigned long long)s->unlogged_flaps);
            sb_errlog(WHO,
                      "database %s: commit failed: %s; store degraded: publishes fail, "
                      "other changes are retried%s",
                      s->path, s->fail_msg, flaps);
            s->degraded_logged = 1;
            s->degraded_log_ms = now;
            s->unlogged_flaps = 0;
        } else if (!was_degraded) {
            s->unlogged_flaps++;
        }
    }
    if (done_h != NULL)
        wake_loop(s);
}

/* A group without ops: while degraded and idle, a small fsync'ed write tells
 * whether commits work again, since the broker refuses publishes meanwhile
 * and nothing else might come to try. */
static int probe_write(sb_store *s)
{
    sqlite3_stmt *st = s->st[ST_META_PUT];
    int rc = bind_run(st, bind_args(st, "ti", "probe_ms", sb_now_ms()));
    return rc != SQLITE_OK ? fail(s, rc, "probe write") : SQLITE_OK;
}

/* sync: an op of the group has `sync` set (counted as they were taken: a
 * walk of the group here would touch every op once more, cold). */
static void run_group(sb_store *s, sb_store_op *head, sb_store_op *tail, size_t n, int sync)
{
    int want_sync = head == NULL || sync, maint = 0, rc;
    sb_store_op *op;
    uint64_t began = uv_hrtime();

    s->group_msg_id = 0;
    s->group_queue_id = 0;
    s->group_elided = 0;
    s->fail_rc = SQLITE_OK;
    s->fail_msg[0] = '\0';
    s->read_corrupt = 0;
    /* The setting is read when the transaction commits. */
    rc = set_sync(s, want_sync ? 2 : 1);
    if (rc == SQLITE_OK) {
        rc = run(s->st[ST_BEGIN]);
        if (rc != SQLITE_OK)
            fail(s, rc, "BEGIN");
    }
    for (op = head; op != NULL && rc == SQLITE_OK; op = op->next) {
        op->status = 0;
        maint |= op->type == SB_OP_CHECK || op->type == SB_OP_COMPACT;
        if (op->type == SB_OP_ACK && ack_defer(s, op) == 0)
            continue;
        if (needs_acks_flushed(s, op))
            rc = acks_flush(s);
        if (rc == SQLITE_OK)
            rc = is_plain_publish(op) ? insert_run(s, &op) : exec_op(s, op);
    }
    if (rc == SQLITE_OK && s->ack_count > 0)
        rc = acks_flush(s);
    s->ack_count = 0; /* a failed group: retried from its ops */
    s->ack_max_id = 0;
    if (rc == SQLITE_OK)
        rc = counts_flush(s);
    counts_reset(s); /* a failed group: counted again when retried */
    if (rc == SQLITE_OK)
        rc = head != NULL ? update_meta(s) : probe_write(s);
    if (rc == SQLITE_OK) {
        rc = run(s->st[ST_COMMIT]);
        if (rc != SQLITE_OK)
            fail(s, rc, "COMMIT");
    }
    if (rc == SQLITE_OK) {
        uint64_t took_us = (uv_hrtime() - began) / 1000; /* the commit's, not check's */
        for (op = maint ? head : NULL; op != NULL; op = op->next)
            if (op->type == SB_OP_CHECK || op->type == SB_OP_COMPACT)
                exec_maintenance(s, op);
        group_committed(s, head, tail, n, want_sync, took_us);
    } else {
        group_failed(s, head);
    }
}

/* Moves up to max ops from the submission queue to the group; *sync is
 * set if one of them has `sync`. Under mu. */
static size_t take_ops(sb_store *s, sb_store_op **head, sb_store_op **tail, size_t max, int *sync)
{
    size_t n = 0;
    if (s->q_tail != NULL && max > 0)
        s->group_reserve = s->id_reserve;
    if (s->q_count <= max) {
        n = s->q_count;
        *sync |= s->q_sync > 0;
        s->q_sync = 0;
        list_concat(head, tail, s->q_head, s->q_tail);
        s->q_head = s->q_tail = NULL;
        s->q_count = 0;
        return n;
    }
    while (n < max && s->q_head != NULL) {
        sb_store_op *op = s->q_head;
        s->q_head = op->next;
        list_append(head, tail, op);
        if (op->sync) {
            *sync = 1;
            s->q_sync--;
        }
        n++;
    }
    if (s->q_head == NULL)
        s->q_tail = NULL;
    s->q_count -= n;
    return n;
}

/* Takes the ops kept for a retry, which go first in the next group.
 * Under mu. */
static size_t take_retried(sb_store *s, sb_store_op **head, sb_store_op **tail, int *sync)
{
    size_t n = s->retry_count;
    if (s->retry_head == NULL)
        return 0;
    *head = s->retry_head;
    *tail = s->retry_tail;
    s->retry_head = s->retry_tail = NULL;
    s->retry_count = 0;
    for (sb_store_op *op = *head; op != NULL; op = op->next)
        *sync |= op->sync != 0;
    return n;
}

static void store_thread(void *arg)
{
    sb_store *s = arg;
    size_t max = (size_t)s->max_batch;

    s->last_group_ns = uv_hrtime(); /* idle counts from the start, not from boot */
    for (;;) {
        sb_store_op *head = NULL, *tail = NULL;
        size_t n = 0;
        int probe = 0, sync = 0;

        uv_mutex_lock(&s->mu);
        for (;;) {
            if (s->retry_head != NULL) {
                uint64_t now = uv_hrtime();
                if (s->stopping || s->retry_alone || now >= s->retry_at)
                    break;
                (void)uv_cond_timedwait(&s->cond, &s->mu, s->retry_at - now);
                continue;
            }
            if (s->q_head != NULL &&
                ((!s->test_hold && (int)s->q_head->type != s->test_hold_type) || s->stopping))
                break;
            if (s->stopping) {
                uv_mutex_unlock(&s->mu);
                return;
            }
            if (s->auto_vacuum && s->free_pages >= VACUUM_STEP_PAGES &&
                s->free_pages * 4 >= s->stats.db_bytes / s->page_size && !s->stats.degraded) {
                uint64_t now = uv_hrtime(), idle_at = s->last_group_ns + VACUUM_IDLE_NS, at;
                int64_t pages = s->stats.db_bytes / s->page_size;
                int full = vacuum_full_due(s, pages);
                /* one VACUUM once idle beats steps meanwhile */
                at = full || s->vacuum_next_ns > idle_at ? idle_at : s->vacuum_next_ns;
                if (now >= at) {
                    uv_mutex_unlock(&s->mu);
                    if (full)
                        vacuum_full(s, pages);
                    else
                        vacuum_step(s);
                    s->vacuum_next_ns = uv_hrtime() + VACUUM_REST_FACTOR * (uv_hrtime() - now);
                    uv_mutex_lock(&s->mu);
                    continue;
                }
                s->waiting = 1; /* a new op, or the time for a step */
                s->wake_at = 1;
                (void)uv_cond_timedwait(&s->cond, &s->mu, at - now);
                s->waiting = 0;
                continue;
            }
            s->waiting = 1;
            s->wake_at = 1;
            if (s->stats.degraded) {
                uint64_t now = uv_hrtime();
                if (now >= s->retry_at) {
                    s->waiting = 0;
                    probe = 1;
                    break;
                }
                (void)uv_cond_timedwait(&s->cond, &s->mu, s->retry_at - now);
            } else {
                uv_cond_wait(&s->cond, &s->mu);
            }
            s->waiting = 0;
        }
        n = take_retried(s, &head, &tail, &sync);
        if (!s->retry_alone && n < max) {
            n += take_ops(s, &head, &tail, max - n, &sync);
            if (s->max_delay_us > 0 && n < max && !s->stopping) {
                uint64_t deadline = uv_hrtime() + (uint64_t)s->max_delay_us * 1000;
                for (;;) {
                    uint64_t now = uv_hrtime();
                    if (n >= max || s->stopping || now >= deadline)
                        break;
                    s->waiting = 1;
                    s->wake_at = max - n;
                    (void)uv_cond_timedwait(&s->cond, &s->mu, deadline - now);
                    s->waiting = 0;
                    n += take_ops(s, &head, &tail, max - n, &sync);
                }
            }
        }
        s->retry_alone = 0;
        if (head != NULL)
            s->last_group_ns = uv_hrtime();
        if (head == NULL && !probe) {
            uv_mutex_unlock(&s->mu);
            continue;
        }
        if (s->test_fail_armed) {
            sb_alloc_fail_after(s->test_fail_after);
            s->test_fail_armed = 0;
        }
        uv_mutex_unlock(&s->mu);
        run_group(s, head, tail, n, sync);
    }
}

/* ---- the loop side ------------------------------------------------------ */

static void store_free(sb_store *s)
{
    for (int i = 0; i < ST_COUNT; i++)
        (void)sqlite3_finalize(s->st[i]); /* reports the last step's error only */
    for (int i = 0; i < PST_COUNT; i++)
        (void)sqlite3_finalize(s->page_st[i]);
    for (int i = 0; i < INSERT_SIZES; i++)
        (void)sqlite3_finalize(s->insert_st[i]);
    if (s->db != NULL) {
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK)
            sb_errlog(WHO, "database %s: close failed: %s", s->path, sqlite3_errstr(rc));
    }
    if (s->sync_init) {
        uv_cond_destroy(&s->cond);
        uv_mutex_destroy(&s->mu);
    }
    sb_free(s->acks);
    sb_free(s->run_hdrs);
    sb_free(s->deltas);
    sb_free(s->delta_slots);
    sb_free(s->path);
    sb_free(s);
}

/* Calls the callbacks of executed ops, in order. Re-entrant: a callback may
 * call sb_store_stop (which finishes the list) or sb_store_close (whose free
 * is then deferred to the outermost call). */
static void deliver(sb_store *s)
{
    sb_store_op *op;
    uv_mutex_lock(&s->mu);
    if (s->done_head != NULL) {
        if (s->deliver_head == NULL) {
            s->deliver_head = s->done_head;
        } else {
            for (op = s->deliver_head; op->next != NULL; op = op->next)
                ;
            op->next = s->done_head;
        }
        s->done_head = s->done_tail = NULL;
    }
    uv_mutex_unlock(&s->mu);
    s->delivering++;
    while ((op = s->deliver_head) != NULL) {
        s->deliver_head = op->next; /* the callback may free op */
        op->next = NULL;
        if (op->cb != NULL)
            op->cb(op, op->ctx);
    }
    s->delivering--;
    if (s->delivering == 0 && s->free_pending)
        store_free(s);
}

static void on_async(uv_async_t *h)
{
    deliver(h->data);
}

static void on_async_closed(uv_handle_t *h)
{
    sb_free(h);
}

int sb_store_start(sb_store *s, uv_loop_t *loop, sb_error *err)
{
    int rc;
    if (s->started || s->stopped)
        return sb_error_set(err, SB_EINVAL, 0, "database %s: store already started", s->path);
    s->async = sb_malloc(sizeof(*s->async));
    if (s->async == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "database %s: out of memory", s->path);
    rc = uv_async_init(loop, s->async, on_async);
    if (rc != 0) {
        sb_free(s->async);
        s->async = NULL;
        return sb_error_set(err, SB_EIO, 0, "database %s: uv_async_init: %s", s->path,
                            uv_strerror(rc));
    }
    s->async->data = s;
    s->loop = loop;
    rc = uv_thread_create(&s->thread, store_thread, s);
    if (rc != 0) {
        uv_close((uv_handle_t *)s->async, on_async_closed);
        s->async = NULL;
        return sb_error_set(err, SB_EIO, 0, "database %s: cannot start the store thread: %s",
                            s->path, uv_strerror(rc));
    }
    s->started = 1;
    return 0;
}

/* What sb_store_stop's last callbacks may still submit: the protocol
 * state their publishes' completions owe (keys put and deleted) and the
 * rows they withdraw (a retained copy whose publish did not commit),
 * short ops; not an admin request's next step (a redrive's, one page
 * after another), which a stop ends. */
static int drain_runs(const sb_store_op *op)
{
    return op->type == SB_OP_KEY_PUT || op->type == SB_OP_KEY_DELETE || op->type == SB_OP_ACK;
}

int sb_store_submit(sb_store *s, sb_store_op *op)
{
    if (s == NULL || op == NULL)
        return SB_EINVAL;
    uv_mutex_lock(&s->mu);
    if (s->stopping && !(s->draining && drain_runs(op))) {
        uv_mutex_unlock(&s->mu);
        return SB_ESHUTDOWN;
    }
    op->status = 0;
    op->seq = ++s->submit_seq;
    list_append(&s->q_head, &s->q_tail, op);
    s->q_count++;
    s->q_sync += op->sync != 0;
    if (s->waiting && s->q_count >= s->wake_at) {
        s->waiting = 0;
        uv_cond_signal(&s->cond);
    }
    uv_mutex_unlock(&s->mu);
    return 0;
}

int sb_store_cancel(sb_store *s, sb_store_op *op, size_t index)
{
    int rc = SB_EBUSY;
    if (op->type != SB_OP_PUBLISH || index >= op->u.publish.queue_count)
        return SB_EINVAL;
    uv_mutex_lock(&s->mu);
    if (op->seq > s->exec_seq) {
        op->u.publish.queue_ids[index] = 0;
        rc = 0;
    }
    uv_mutex_unlock(&s->mu);
    return rc;
}

uint64_t sb_store_reserve_ids(sb_store *s, uint64_t upto)
{
    uint64_t durable;
    uv_mutex_lock(&s->mu);
    if (upto > s->id_reserve)
        s->id_reserve = upto;
    durable = s->durable_msg_id;
    uv_mutex_unlock(&s->mu);
    return durable;
}

int sb_store_degraded(sb_store *s)
{
    int d;
    uv_mutex_lock(&s->mu);
    d = s->stats.degraded;
    uv_mutex_unlock(&s->mu);
    return d;
}

void sb_store_get_stats(sb_store *s, sb_store_stats *out)
{
    uv_mutex_lock(&s->mu);
    *out = s->stats;
    uv_mutex_unlock(&s->mu);
}

void sb_store_test_quick_check_max(int64_t bytes)
{
    quick_check_max = bytes;
}

void sb_store_test_hold_before(sb_store *s, int op_type)
{
    uv_mutex_lock(&s->mu);
    s->test_hold_type = op_type;
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
}

void sb_store_test_hold(sb_store *s, int hold)
{
    uv_mutex_lock(&s->mu);
    s->test_hold = hold;
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
}

void sb_store_test_alloc_fail_after(sb_store *s, long n)
{
    uv_mutex_lock(&s->mu);
    s->test_fail_after = n;
    s->test_fail_armed = 1;
    uv_mutex_unlock(&s->mu);
}

/* After the store thread ended: delivers its last completions, and runs
 * the key ops they submit (drain_runs) on this thread, until they submit
 * nothing more. The last publishes' completions record their consequences
 * (a refused early delivery's protocol state: the keys it deletes and
 * those it puts), which a graceful stop must not lose. Retries give up as
 * the thread's do when stopping. */
static void drain_rest(sb_store *s)
{
    uv_mutex_lock(&s->mu);
    s->draining = 1;
    uv_mutex_unlock(&s->mu);
    for (;;) {
        sb_store_op *head = NULL, *tail = NULL;
        size_t n;
        int sync = 0;
        deliver(s);
        uv_mutex_lock(&s->mu);
        n = take_retried(s, &head, &tail, &sync);
        if (!s->retry_alone)
            n += take_ops(s, &head, &tail, (size_t)s->max_batch, &sync);
        s->retry_alone = 0;
        if (head == NULL)
            s->draining = 0;
        uv_mutex_unlock(&s->mu);
        if (head == NULL)
            break;
        run_group(s, head, tail, n, sync);
    }
}

void sb_store_stop(sb_store *s)
{
    int joined = 0;
    if (s == NULL || s->stopped)
        return;
    s->stopped = 1;
    s->delivering++; /* a callback's sb_store_close leaves s to us */
    uv_mutex_lock(&s->mu);
    s->stopping = 1;
    if (!s->started) {
        /* Never started: nothing will execute what was queued. */
        sb_store_op *op, *next;
        for (op = s->q_head; op != NULL; op = next) {
            next = op->next;
            op->status = SB_ESHUTDOWN;
            list_append(&s->done_head, &s->done_tail, op);
        }
        s->q_head = s->q_tail = NULL;
        s->q_count = 0;
        s->q_sync = 0;
    }
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
    if (s->started) {
        int rc = uv_thread_join(&s->thread);
        if (rc != 0)
            sb_errlog(WHO, "database %s: joining the store thread: %s", s->path, uv_strerror(rc));
        joined = rc == 0;
    }
    /* The thread is gone: run the completions it posted ourselves, and
     * what they submit. */
    if (joined)
        drain_rest(s);
    else
        deliver(s);
    if (s->async != NULL) {
        uv_close((uv_handle_t *)s->async, on_async_closed);
        s->async = NULL;
    }
    if (--s->delivering == 0 && s->free_pending)
        store_free(s); /* closed by a callback of the drain */
}

void sb_store_close(sb_store *s)
{
    if (s == NULL)
        return;
    s->delivering++; /* a callback of the stop's drain may close s too */
    sb_store_stop(s);
    if (--s->delivering > 0) {
        s->free_pending = 1;
        return;
    }
    store_free(s);
}

void sb_store_dlq_rows_free(sb_dead_letter *rows, size_t count)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < count; i++) {
        sb_free(rows[i].queue_name);
        sb_free(rows[i].reason);
        sb_free(rows[i].source);
        sb_message_unref(rows[i].msg);
    }
    sb_free(rows);
}

void sb_store_page_rows_free(sb_store_entry *rows, size_t count)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        sb_message_unref(rows[i].msg);
    sb_free(rows);
}

/* ---- open --------------------------------------------------------------- */

/* Maps an error met while opening or loading to SB_E* with a message naming
 * the database. */
static int db_error(sb_store *s, int rc, const char *what, sb_error *err)
{
    int code = sb_store__error_from_sqlite(rc);
    if (code == SB_EBUSY)
        return sb_error_set(err, code, 0, "database %s is in use by another process", s->path);
    if (code == SB_ECORRUPT)
        return sb_error_set(err, code, 0, "database %s is corrupt: %s", s->path,
                            sqlite3_errmsg(s->db));
    return sb_error_set(err, code, 0, "database %s: %s: %s", s->path, what,
                        s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
}

/* Runs a statement that returns one row and reads its first column: as an
 * integer into *out_int, or as text into out_text (size n), if not NULL. */
static int query(sb_store *s, const char *sql, int64_t *out_int, char *out_text, size_t n)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (out_int != NULL)
            *out_int = sqlite3_column_int64(st, 0);
        if (out_text != NULL) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(out_text, n, "%s", t != NULL ? (const char *)t : "");
        }
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        if (out_int != NULL)
            *out_int = 0;
        if (out_text != NULL && n > 0)
            out_text[0] = '\0';
        rc = SQLITE_OK;
    }
    (void)sqlite3_finalize(st); /* repeats the step's error, already in rc */
    return rc;
}

/* A non-empty file that does not start with SQLite's magic is refused before
 * SQLite touches it (SQLite would call it "not a database", the same words
 * it uses for a SQLite file whose header is damaged). */
static int check_file_header(const char *path, sb_error *err)
{
    static const char magic[16] = "SQLite format 3";
    char buf[16];
    uv_buf_t b = uv_buf_init(buf, sizeof(buf));
    uv_fs_t req;
    int fd, n;

    fd = uv_fs_open(NULL, &req, path, UV_FS_O_RDONLY, 0, NULL);
    uv_fs_req_cleanup(&req);
    if (fd == UV_ENOENT)
        return 0;
    if (fd < 0)
        return sb_error_set(err, fd == UV_EACCES || fd == UV_EPERM ? SB_EACCES : SB_EIO, 0,
                            "cannot open database %s: %s", path, uv_strerror(fd));
    n = uv_fs_read(NULL, &req, fd, &b, 1, 0, NULL);
    uv_fs_req_cleanup(&req);
    (void)uv_fs_close(NULL, &req, fd, NULL); /* read-only: nothing to lose */
    uv_fs_req_cleanup(&req);
    if (n < 0)
        return sb_error_set(err, SB_EIO, 0, "cannot read database %s: %s", path, uv_strerror(n));
    if (n > 0 && (n < (int)sizeof(magic) || memcmp(buf, magic, sizeof(magic)) != 0))
        return sb_error_set(err, SB_EFOREIGN, 0,
                            "%s is not a Switchboard database (not a SQLite file)", path);
    return 0;
}

/* Runs PRAGMA quick_check(table) on every table but entries and dlq (those
 * of another schema version too): their pages and their indexes'. */
static int bounded_check(sb_store *s, sb_error *err)
{
    sqlite3_stmt *st = NULL;
    char sql[160], text[256];
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT name FROM sqlite_master WHERE type = 'table'"
                                " AND name NOT IN ('entries', 'dlq')",
                                -1, &st, NULL);
    int status = 0;
    if (rc != SQLITE_OK)
        return db_error(s, rc, "reading the schema", err);
    while (status == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *name = sqlite3_column_text(st, 0);
        if (name == NULL || strchr((const char *)name, '"') != NULL ||
            strlen((const char *)name) > 100)
            continue; /* not one of ours: checked with the full check */
        snprintf(sql, sizeof(sql), "PRAGMA quick_check(\"%s\")", (const char *)name);
        rc = query(s, sql, NULL, text, sizeof(text));
        if (rc != SQLITE_OK)
            status = db_error(s, rc, "PRAGMA quick_check", err);
        else if (strcmp(text, "ok") != 0)
            status = sb_error_set(err, SB_ECORRUPT, 0, "database %s is corrupt: %s", s->path, text);
    }
    if (status == 0 && rc != SQLITE_DONE)
        status = db_error(s, rc, "reading the schema", err);
    (void)sqlite3_finalize(st); /* repeats a step error, handled above */
    return status;
}

/* Databases created before incremental auto-vacuum (auto_vacuum NONE, which
 * can only change with a VACUUM) reuse free pages but never shrink. A small
 * one is converted now (a VACUUM of at most QUICK_CHECK_MAX_BYTES, when the
 * disk has room for the copy); a larger one when `sbctl compact` asks, as
 * it takes time in proportion to its size. VACUUM is one transaction: an
 * interrupted conversion leaves the file as it was. */
static int setup_vacuum(sb_store *s, sb_error *err)
{
    int64_t mode = 0, free_pages = 0;
    int rc = query(s, "PRAGMA auto_vacuum", &mode, NULL, 0);
    if (rc == SQLITE_OK && mode == 0 && s->stats.db_bytes <= QUICK_CHECK_MAX_BYTES) {
        uv_fs_t req;
        uint64_t avail = 0;
        if (uv_fs_statfs(NULL, &req, s->path, NULL) == 0)
            avail =
                ((const uv_statfs_t *)req.ptr)->f_bavail * ((const uv_statfs_t *)req.ptr)->f_bsize;
        uv_fs_req_cleanup(&req);
        if (avail > 2 * (uint64_t)s->stats.db_bytes + 16 * 1024 * 1024) {
            sb_info(WHO,
                    "database %s: converting to incremental auto-vacuum (a one-time VACUUM of "
                    "%lld KiB), so that free pages are returned to the file system",
                    s->path, (long long)(s->stats.db_bytes >> 10));
            rc = sqlite3_exec(s->db, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM", NULL, NULL, NULL);
            if (rc != SQLITE_OK)
                return db_error(s, rc, "converting to incremental auto-vacuum", err);
            rc = query(s, "PRAGMA auto_vacuum", &mode, NULL, 0);
        }
    } else if (rc == SQLITE_OK && mode == 0) {
        sb_info(WHO,
                "database %s (%lld MiB) reuses free pages but does not return them to the file "
                "system; `sbctl compact` converts it (a VACUUM: it needs as much free disk space "
                "again, and commits wait meanwhile)",
                s->path, (long long)(s->stats.db_bytes >> 20));
    }
    if (rc == SQLITE_OK)
        rc = query(s, "PRAGMA freelist_count", &free_pages, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "PRAGMA auto_vacuum", err);
    s->auto_vacuum = mode == 2;
    s->free_pages = free_pages;
    s->stats.auto_vacuum = s->auto_vacuum;
    s->stats.free_bytes = free_pages * s->page_size;
    if (mode == 2) {
        int64_t pages = 0;
        rc = query(s, "PRAGMA page_count", &pages, NULL, 0);
        if (rc != SQLITE_OK)
            return db_error(s, rc, "PRAGMA page_count", err);
        s->stats.db_bytes = pages * s->page_size;
    }
    return 0;
}

static int open_db(sb_store *s, sb_error *err)
{
    char text[256], sql[96];
    int64_t app_id = 0, version = 0, objects = 0, pages = 0;
    int rc;

    rc = sqlite3_open_v2(s->path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "open", err);
    (void)sqlite3_extended_result_codes(s->db, 1); /* fails only for a NULL db */

    rc = query(s, "PRAGMA locking_mode = EXCLUSIVE", NULL, text, sizeof(text));
    if (rc != SQLITE_OK)
        return db_error(s, rc, "PRAGMA locking_mode", err);
    /* The first read takes the lock (kept until close): SQLITE_BUSY here
     * means another process has the database. */
    rc = query(s, "PRAGMA application_id", &app_id, NULL, 0);
    if (rc == SQLITE_OK)
        rc = query(s, "PRAGMA user_version", &version, NULL, 0);
    if (rc == SQLITE_OK)
        rc = query(s, "SELECT count(*) FROM sqlite_master", &objects, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "reading the header", err);
    if (app_id != SB_STORE_APPLICATION_ID && app_id != 0)
        return sb_error_set(err, SB_EFOREIGN, 0,
                            "%s is not a Switchboard database (application_id 0x%08llx)", s->path,
                            (unsigned long long)(uint32_t)app_id);
    if (app_id == 0 && objects > 0)
        return sb_error_set(err, SB_EFOREIGN, 0,
                            "%s is not a Switchboard database (a SQLite database of another "
                            "application)",
                            s->path);
    if (version < 0 || version > INT32_MAX)
        return sb_error_set(err, SB_ECORRUPT, 0,
                            "database %s is corrupt: schema version %lld is not one this or any "
                            "broker writes",
                            s->path, (long long)version);
    if (version > SB_STORE_SCHEMA_VERSION)
        return sb_error_set(err, SB_EVERSION, 0,
                            "database %s has schema version %lld, newer than this broker's "
                            "(%d); use a newer broker",
                            s->path, (long long)version, SB_STORE_SCHEMA_VERSION);

    /* A new database: before anything writes its first page, after which
     * only a VACUUM changes it (setup_vacuum). */
    if (objects == 0 && version == 0) {
        rc = query(s, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, 0);
        if (rc != SQLITE_OK)
            return db_error(s, rc, "PRAGMA auto_vacuum", err);
    }
    rc = query(s, "PRAGMA journal_mode = WAL", NULL, text, sizeof(text));
    if (rc != SQLITE_OK)
        return db_error(s, rc, "PRAGMA journal_mode", err);
    if (strcmp(text, "wal") != 0)
        return sb_error_set(err, SB_EIO, 0, "database %s: cannot use WAL mode (journal mode %s)",
                            s->path, text);
    /* Set explicitly: distributions build SQLite with different defaults. */
    rc = query(s, "PRAGMA synchronous = FULL", NULL, NULL, 0);
    if (rc == SQLITE_OK) {
        s->cur_sync = 2;
        snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit = %d", JOURNAL_SIZE_LIMIT);
        rc = query(s, sql, NULL, NULL, 0);
    }
    /* Debian's default is secure_delete=ON, which also zeroes freed pages on
     * disk; FAST still wipes deleted cells but skips the extra I/O. */
    if (rc == SQLITE_OK)
        rc = query(s, "PRAGMA secure_delete = FAST", NULL, NULL, 0);
    if (rc == SQLITE_OK)
        rc = query(s, "PRAGMA page_size", &s->page_size, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "setting up the connection", err);
    /* Checked before a migration, which must not build on damaged pages. */
    rc = query(s, "PRAGMA page_count", &pages, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "PRAGMA page_count", err);
    if (pages * s->page_size <= quick_check_max) {
        rc = query(s, "PRAGMA quick_check(1)", NULL, text, sizeof(text));
        if (rc != SQLITE_OK)
            return db_error(s, rc, "PRAGMA quick_check", err);
        if (strcmp(text, "ok") != 0)
            return sb_error_set(err, SB_ECORRUPT, 0, "database %s is corrupt: %s", s->path, text);
    } else {
        rc = bounded_check(s, err);
        if (rc != 0)
            return rc;
        sb_info(WHO,
                "database %s: %lld MiB; checked its header, schema and queue definitions at "
                "start, the messages as they are read (sbctl check runs a full check)",
                s->path, (long long)(pages * s->page_size / (1024 * 1024)));
    }
    rc = sb_store__schema_migrate(s->db, s->path, (int)version, err);
    if (rc != 0)
        return rc;
    rc = query(s, "PRAGMA page_count", &pages, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "PRAGMA page_count", err);
    s->stats.db_bytes = pages * s->page_size;
    return setup_vacuum(s, err);
}

static int set_max_size(sb_store *s, int64_t max_db_bytes, sb_error *err)
{
    char sql[96];
    int64_t max_pages = max_db_bytes / s->page_size;
    int rc;
    if (max_db_bytes <= 0)
        return 0;
    s->max_db_bytes = max_db_bytes;
    /* The limit is per connection, so it is set at every open. SQLite will not
     * set it below the current size: a database already past the limit
     * refuses growth from its current size. */
    snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld",
             (long long)(max_pages > 0 ? max_pages : 1));
    rc = query(s, sql, NULL, NULL, 0);
    return rc != SQLITE_OK ? db_error(s, rc, "PRAGMA max_page_count", err) : 0;
}

/* The id high-water marks: meta's, raised to the largest ids actually in the
 * tables in case meta fell behind (a database edited by hand). The entries'
 * largest id is sought per queue in the (queue_id, msg_id) index: a scan of
 * the whole index would grow with the backlog (about 30 ms per 500k rows).
 * Entries of no queue are never delivered, and their queue ids stay taken
 * (max(queue_id) below), so their message ids cannot collide. */
static int read_high_water(sb_store *s, sb_error *err)
{
    int64_t msg_id = 0, queue_id = 0;
    int rc = query(s,
                   "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'msg_id'), 0),"
                   " coalesce((SELECT max((SELECT max(msg_id) FROM entries e"
                   " WHERE e.queue_id = q.id)) FROM queues q), 0),"
                   " coalesce((SELECT max(msg_id) FROM dlq), 0),"
                   " coalesce((SELECT max(msg_id) FROM retained), 0))",
                   &msg_id, NULL, 0);
    if (rc == SQLITE_OK)
        rc = query(s,
                   "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'queue_id'), 0),"
                   " coalesce((SELECT max(id) FROM queues), 0),"
                   " coalesce((SELECT max(queue_id) FROM entries), 0))",
                   &queue_id, NULL, 0);
    if (rc != SQLITE_OK)
        return db_error(s, rc, "reading id high-water marks", err);
    s->hw_msg_id = (uint64_t)msg_id;
    s->durable_msg_id = s->hw_msg_id;
    s->hw_queue_id = (uint32_t)queue_id;
    return 0;
}

/* Prepares the insert of 2^k entries (INSERT_SIZES). */
static int prepare_insert(sb_store *s, int k, sb_error *err)
{
    size_t rows = (size_t)1 << k, len = sizeof(INSERT_SQL) + rows * sizeof(INSERT_ROW_SQL);
    char *sql = sb_malloc(len), *p;
    int rc;
    if (sql == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "database %s: out of memory", s->path);
    p = sql + snprintf(sql, len, "%s", INSERT_SQL);
    for (size_t r = 0; r < rows; r++)
        p += snprintf(p, len - (size_t)(p - sql), "%s" INSERT_ROW_SQL, r > 0 ? "," : "");
    rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->insert_st[k], NULL);
    sb_free(sql);
    return rc == SQLITE_OK ? 0 : db_error(s, rc, "preparing the inserts", err);
}

int sb_store_open(sb_store **out, const sb_store_options *opts, sb_error *err)
{
    sb_store *s;
    int rc;

    if (out == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "store: no output pointer");
    *out = NULL;
    if (opts == NULL || opts->path == NULL || opts->path[0] == '\0')
        return sb_error_set(err, SB_EINVAL, 0, "store: no database path");
    /* SQLite's allocation statistics (which nothing reads) take a global
     * mutex on every malloc and free; once the library is initialised this
     * is refused, harmlessly. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "database %s: out of memory", opts->path);
    s->path = sb_strdup(opts->path);
    if (s->path == NULL) {
        sb_free(s);
        return sb_error_set(err, SB_ENOMEM, 0, "database %s: out of memory", opts->path);
    }
    s->max_batch = opts->commit_max_batch > 0 ? opts->commit_max_batch : 1024;
    s->max_delay_us = opts->commit_max_delay_us > 0 ? opts->commit_max_delay_us : 0;
    if (uv_mutex_init(&s->mu) != 0) {
        rc = sb_error_set(err, SB_ENOMEM, 0, "database %s: cannot create a mutex", s->path);
        goto fail;
    }
    if (uv_cond_init(&s->cond) != 0) {
        uv_mutex_destroy(&s->mu);
        rc = sb_error_set(err, SB_ENOMEM, 0, "database %s: cannot create a condition", s->path);
        goto fail;
    }
    s->sync_init = 1;

    rc = check_file_header(s->path, err);
    if (rc == 0)
        rc = open_db(s, err);
    if (rc == 0)
        rc = set_max_size(s, opts->max_db_bytes, err);
    if (rc == 0)
        rc = read_high_water(s, err);
    for (int i = 0; i < ST_COUNT && rc == 0; i++) {
        int src =
            sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (src != SQLITE_OK)
            rc = db_error(s, src, "preparing statements", err);
    }
    if (rc == 0 &&
        sqlite3_create_function(s->db, "sb_header", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                                sql_header, NULL, NULL) != SQLITE_OK)
        rc = db_error(s, sqlite3_errcode(s->db), "registering sb_header", err);
    for (int i = 0; i < PST_COUNT && rc == 0; i++) {
        int src = sqlite3_prepare_v3(s->db, page_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                     &s->page_st[i], NULL);
        if (src != SQLITE_OK)
            rc = db_error(s, src, "preparing the paging statements", err);
    }
    for (int k = 0; k < INSERT_SIZES && rc == 0; k++)
        rc = prepare_insert(s, k, err);
    if (rc != 0)
        goto fail;
    *out = s;
    return 0;

fail:
    store_free(s);
    return rc;
}

int sb_store_max_ids(sb_store *s, uint64_t *out_msg_id, uint32_t *out_queue_id, sb_error *err)
{
    if (s->started)
        return sb_error_set(err, SB_EINVAL, 0, "database %s: max ids are read before start",
                            s->path);
    if (out_msg_id != NULL)
        *out_msg_id = s->hw_msg_id;
    if (out_queue_id != NULL)
        *out_queue_id = s->hw_queue_id;
    return 0;
}

/* ---- loaders ------------------------------------------------------------ */

static int load_prepare(sb_store *s, const char *sql, sqlite3_stmt **out, sb_error *err)
{
    int rc;
    *out = NULL;
    if (s->started)
        return sb_error_set(err, SB_EINVAL, 0, "database %s: loaders run before sb_store_start",
                            s->path);
    rc = sqlite3_prepare_v2(s->db, sql, -1, out, NULL);
    return rc != SQLITE_OK ? db_error(s, rc, "loading", err) : 0;
}

/* Ends a loader's scan: maps the last step code to 0 or an error. */
static int load_finish(sb_store *s, sqlite3_stmt *st, int step_rc, int rc, sb_error *err)
{
    if (rc == 0 && step_rc != SQLITE_DONE)
        rc = db_error(s, step_rc, "loading", err);
    (void)sqlite3_finalize(st); /* repeats the step's error, handled above */
    return rc;
}

static int row_error(sb_store *s, int rc, const char *table, sb_error *err)
{
    if (rc == SB_ENOMEM)
        return sb_error_set(err, rc, 0, "database %s: out of memory loading %s", s->path, table);
    return sb_error_set(err, rc, 0, "database %s is corrupt: malformed headers in %s", s->path,
                        table);
}

/* The filters of queue `id` from a scan of queue_filters ordered by
 * (queue_id, pos), positioned at its next row (*step_rc): filters of
 * queues not in `queues` (none are, unless edited by hand) are skipped.
 * Fills *out (strings copied into one block, sb_free) and *out_count. */
static int load_filters(sqlite3_stmt *st, int *step_rc, int64_t id, sb_sub_filter **out,
                        size_t *out_count)
{
    sb_sub_filter *f = NULL;
    size_t n = 0, cap = 0;
    int oom = 0;
    *out = NULL;
    *out_count = 0;
    while (*step_rc == SQLITE_ROW && sqlite3_column_int64(st, 0) < id)
        *step_rc = sqlite3_step(st);
    /* Borrow the texts while collecting: they stay valid until the next
     * step, so each is copied before it. */
    while (*step_rc == SQLITE_ROW && sqlite3_column_int64(st, 0) == id) {
        const unsigned char *text = sqlite3_column_text(st, 1);
        char *copy;
        if (text == NULL) {
            oom = 1; /* NOT NULL column: SQLite could not allocate */
            break;
        }
        if (n == cap) {
            size_t ncap = cap == 0 ? 4 : cap * 2;
            sb_sub_filter *nf = sb_realloc(f, ncap * sizeof(*nf));
            if (nf == NULL) {
                oom = 1;
                break;
            }
            f = nf;
            cap = ncap;
        }
        if ((copy = sb_strdup((const char *)text)) == NULL) {
            oom = 1;
            break;
        }
        f[n].filter = copy;
        f[n].qos =
            sqlite3_column_type(st, 2) == SQLITE_NULL ? SB_QOS_NONE : sqlite3_column_int(st, 2);
        n++;
        *step_rc = sqlite3_step(st);
    }
    if (!oom && n > 0) {
        *out = sb_sub_filters_copy(f, n, &oom);
        *out_count = *out != NULL ? n : 0;
    }
    for (size_t i = 0; i < n; i++)
        sb_free((char *)f[i].filter);
    sb_free(f);
    return oom ? SB_ENOMEM : 0;
}

int sb_store_load_queues(sb_store *s, sb_store_queue_cb cb, void *ctx, sb_error *err)
{
    sqlite3_stmt *st, *fst;
    int rc = load_prepare(s, "SELECT id, name, settings, protocol, owner FROM queues ORDER BY id",
                          &st, err);
    int step_rc = SQLITE_DONE, f_rc;
    if (rc != 0)
        return rc;
    rc = load_prepare(s, "SELECT queue_id, filter, qos FROM queue_filters ORDER BY queue_id, pos",
                      &fst, err);
    if (rc != 0) {
        (void)sqlite3_finalize(st);
        return rc;
    }
    f_rc = sqlite3_step(fst);
    while (rc == 0 && (step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        sb_store_queue q;
        sb_sub_filter *filters;
        q.id = (uint32_t)sqlite3_column_int64(st, 0);
        q.name = (const char *)sqlite3_column_text(st, 1);
        q.settings = (const char *)sqlite3_column_text(st, 2);
        q.protocol = (const char *)sqlite3_column_text(st, 3);
        q.owner = (const char *)sqlite3_column_text(st, 4);
        if (q.name == NULL || (q.settings == NULL && sqlite3_column_type(st, 2) != SQLITE_NULL) ||
            (q.protocol == NULL && sqlite3_column_type(st, 3) != SQLITE_NULL) ||
            (q.owner == NULL && sqlite3_column_type(st, 4) != SQLITE_NULL)) {
            rc = row_error(s, SB_ENOMEM, "queues", err);
            break;
        }
        rc = load_filters(fst, &f_rc, sqlite3_column_int64(st, 0), &filters, &q.filter_count);
        if (rc == 0 && f_rc != SQLITE_ROW && f_rc != SQLITE_DONE) {
            sb_free(filters);
            rc = db_error(s, f_rc, "loading queue filters", err);
        } else if (rc != 0) {
            rc = row_error(s, rc, "queue_filters", err);
        }
        if (rc != 0)
            break;
        q.filters = filters;
        rc = cb(ctx, &q);
        sb_free(filters);
    }
    (void)sqlite3_finalize(fst); /* repeats a step error, handled above */
    return load_finish(s, st, step_rc, rc, err);
}

int sb_store_load_entries(sb_store *s, sb_store_entry_cb cb, void *ctx, sb_error *err)
{
    sqlite3_stmt *st;
    sb_message *last = NULL;
    uint64_t rows = 0;
    int step_rc = SQLITE_DONE;
    int rc = load_prepare(s,
                          "SELECT queue_id, msg_id, topic, payload, headers, created_ms,"
                          " expires_ms, priority, attempts FROM entries ORDER BY rowid",
                          &st, err);
    if (rc != 0)
        return rc;
    while (rc == 0 && (step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t msg_id = (uint64_t)sqlite3_column_int64(st, 1);
        /* A message fanned out to several queues was inserted as consecutive
         * rows: share one sb_message between them. */
        if (last == NULL || last->id != msg_id) {
            sb_message *m;
            rc = message_from_row(&m, st, 1, 2, 3, 4, 5, 6, 7);
            if (rc != 0) {
                rc = row_error(s, rc, "entries", err);
                break;
            }
            sb_message_unref(last);
            last = m;
        }
        rc = cb(ctx, (uint32_t)sqlite3_column_int64(st, 0), sb_message_ref(last),
                sqlite3_column_int(st, 8));
        if (++rows % LOAD_PROGRESS_ROWS == 0)
            sb_info(WHO, "loading queues: %llu entries...", (unsigned long long)rows);
    }
    sb_message_unref(last);
    if (rows >= LOAD_PROGRESS_ROWS && rc == 0 && step_rc == SQLITE_DONE)
        sb_info(WHO, "loaded %llu entries", (unsigned long long)rows);
    return load_finish(s, st, step_rc, rc, err);
}

int sb_store_load_retained(sb_store *s, sb_store_retained_cb cb, void *ctx, sb_error *err)
{
    sqlite3_stmt *st;
    int step_rc = SQLITE_DONE;
    int rc = load_prepare(s,
                          "SELECT msg_id, topic, payload, headers, created_ms, expires_ms"
                          " FROM retained ORDER BY topic",
                          &st, err);
    if (rc != 0)
        return rc;
    while (rc == 0 && (step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        sb_message *m;
        rc = message_from_row(&m, st, 0, 1, 2, 3, 4, 5, -1);
        if (rc != 0) {
            rc = row_error(s, rc, "retained", err);
            break;
        }
        rc = cb(ctx, m);
    }
    return load_finish(s, st, step_rc, rc, err);
}

int sb_store_load_dedup(sb_store *s, sb_store_dedup_cb cb, void *ctx, sb_error *err)
{
    sqlite3_stmt *st;
    int step_rc = SQLITE_DONE;
    int rc = load_prepare(s, "SELECT key, expires_ms FROM dedup", &st, err);
    if (rc != 0)
        return rc;
    while (rc == 0 && (step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *key = sqlite3_column_text(st, 0);
        if (key == NULL) {
            rc = row_error(s, SB_ENOMEM, "dedup", err);
            break;
        }
        rc = cb(ctx, (const char *)key, sqlite3_column_int64(st, 1));
    }
    return load_finish(s, st, step_rc, rc, err);
}

int sb_store_load_counts(sb_store *s, sb_store_count_cb cb, void *ctx, sb_error *err)
{
    sqlite3_stmt *st;
    int step_rc = SQLITE_DONE;
    int rc = load_prepare(s,
                          "SELECT queue_id, entries, max(bytes, 0) FROM queue_counts WHERE entries > 0"
                          " ORDER BY queue_id",
                          &st, err);
    if (rc != 0)
        return rc;
    while (rc == 0 && (step_rc = sqlite3_step(st)) == SQLITE_ROW)
        rc = cb(ctx, (uint32_t)sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                sqlite3_column_int64(st, 2));
    return load_finish(s, st, step_rc, rc, err);
}
