/*
 * Schema migrations of the SQLite store (see schema_int.h).
 *
 * Version 1:
 * - entries: one row per (queue, message), a rowid table so that rowid order
 *   is insertion order, with a unique index on (queue_id, msg_id) that serves
 *   the range deletes of acknowledgements and the per-message updates.
 * - dlq: AUTOINCREMENT ids, so an id is never reused after a purge and
 *   "purge up to id N" or paging by id cannot hit a newer dead letter.
 *   It also keeps expires_ms and priority so a redrive restores the message.
 * - dedup: WITHOUT ROWID (one b-tree instead of table + key index) with an
 *   index on expires_ms so pruning does not scan the table.
 * - meta: high-water marks of message and queue ids, so ids are not reused
 *   after every row using them was deleted.
 *
 * Version 2: subscriptions as data instead of packed text.
 * - queue_filters: a queue's filters, one row each, in order (pos), with the
 *   QoS MQTT granted on it (NULL: none). WITHOUT ROWID: the primary key
 *   (queue_id, pos) is the only way they are read.
 * - queues loses `filter` (its filters '\n'-joined) and gains `protocol`
 *   and `owner`; the settings JSON loses "meta", a protocol's text that
 *   MQTT filled with one QoS digit per filter and, on a line after them,
 *   "owner=<user>". The conversion is in C (convert_v2): splitting texts
 *   reads plainly there, and a row that does not convert can be named.
 *
 * Version 3: each queue's stored entries counted in the database.
 * - queue_counts: per queue, its entries and their bytes (sb_message_size
 *   of each), kept by the store in C with one statement per queue a group
 *   commit touched (sqlite_store.c counts_flush), not by a trigger per row.
 *   Start-up reads a row per queue instead of counting the (queue_id,
 *   msg_id) index, which grows with the backlog. The conversion counts
 *   every stored entry once (convert_v3, logged: it reads the backlog).
 *
 * Version 4: no table changes; a protocol key's form. The MQTT adapter's
 * key for a PUBREL owed, "$mqtt\n<client>\nowed\n<id>", names the
 * message's id in 20 digits instead of its packet id. This broker reads
 * both forms; one of version 3 would take the new id for a packet id (a
 * wrong PUBREL on every resume, the key never deleted), so it must refuse
 * a database this one wrote, as it does one of a newer version.
 */
#include "storage/schema_int.h"

#include <stdio.h>
#include <string.h>

#include "service/log.h"
#include "service/topic.h"
#include "storage/store.h"
#include "storage/store_test.h"

#define WHO "store"

/* A migration under way, for its steps' error messages. */
typedef struct mig_ctx {
    sqlite3 *db;
    const char *path;
    int from, to;
} mig_ctx;

typedef struct migration {
    int version;
    const char *sql; /* run first, if not NULL */
    /* then this, if not NULL and the database had data (version > 0):
     * returns 0 or an SB_E* code with err set */
    int (*convert)(const mig_ctx *c, sb_error *err);
    const char *finish_sql; /* then this, if not NULL */
} migration;

static int convert_v2(const mig_ctx *c, sb_error *err);
static int convert_v3(const mig_ctx *c, sb_error *err);

static const migration migrations[] = {
    {1,
     "CREATE TABLE queues(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
     " filter TEXT NOT NULL, settings TEXT);"
     "CREATE TABLE entries(queue_id INTEGER NOT NULL, msg_id INTEGER NOT NULL,"
     " topic TEXT NOT NULL, payload BLOB, headers BLOB, created_ms INTEGER,"
     " expires_ms INTEGER, priority INTEGER, attempts INTEGER NOT NULL DEFAULT 0);"
     "CREATE UNIQUE INDEX entries_queue_msg ON entries(queue_id, msg_id);"
     "CREATE TABLE retained(topic TEXT PRIMARY KEY, msg_id INTEGER, payload BLOB,"
     " headers BLOB, created_ms INTEGER, expires_ms INTEGER);"
     "CREATE TABLE dlq(id INTEGER PRIMARY KEY AUTOINCREMENT, queue_name TEXT,"
     " msg_id INTEGER, topic TEXT, payload BLOB, headers BLOB, created_ms INTEGER,"
     " dead_ms INTEGER, reason TEXT, source TEXT, attempts INTEGER,"
     " expires_ms INTEGER, priority INTEGER);"
     "CREATE INDEX dlq_queue ON dlq(queue_name, id);"
     "CREATE TABLE dedup(key TEXT PRIMARY KEY, expires_ms INTEGER) WITHOUT ROWID;"
     "CREATE INDEX dedup_expires ON dedup(expires_ms);"
     "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;",
     NULL, NULL},
    /* The table is rebuilt (SQLite's way to drop a column on any version):
     * queues_v2 is filled from queues, which then goes. */
    {2,
     "CREATE TABLE queues_v2(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
     " settings TEXT, protocol TEXT, owner TEXT);"
     "CREATE TABLE queue_filters(queue_id INTEGER NOT NULL, pos INTEGER NOT NULL,"
     " filter TEXT NOT NULL, qos INTEGER, PRIMARY KEY(queue_id, pos)) WITHOUT ROWID;",
     convert_v2, "DROP TABLE queues; ALTER TABLE queues_v2 RENAME TO queues;"},
    {3,
     "CREATE TABLE queue_counts(queue_id INTEGER PRIMARY KEY, entries INTEGER NOT NULL,"
     " bytes INTEGER NOT NULL);",
     convert_v3, NULL},
    {4, NULL, NULL, NULL},
};

#define MIGRATION_COUNT (sizeof(migrations) / sizeof(migrations[0]))

_Static_assert(MIGRATION_COUNT == SB_STORE_SCHEMA_VERSION,
               "one migration per schema version, in order");

static int (*test_hook)(const char *step);

void sb_store_test_migration_hook(int (*hook)(const char *step))
{
    test_hook = hook;
}

int sb_store__error_from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return SB_ENOMEM;
    case SQLITE_FULL:
        return SB_ENOSPC;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return SB_EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return SB_ECORRUPT;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
        return SB_EACCES;
    case SQLITE_CONSTRAINT:
        return SB_EEXIST;
    case SQLITE_TOOBIG:
        return SB_ETOOBIG;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return SB_EINVAL;
    default:
        return SB_EIO;
    }
}

/* Fails the migration at `step` with SQLite's code and message. A generic
 * SQL error (no such table, a column missing) means the tables are not
 * those of the version the database claims: SB_ECORRUPT. */
static int step_error(const mig_ctx *c, int rc, const char *step, sb_error *err)
{
    int code = (rc & 0xff) == SQLITE_ERROR ? SB_ECORRUPT : sb_store__error_from_sqlite(rc);
    return sb_error_set(err, code, 0,
                        "database %s%s: schema migration from version %d to %d failed (%s): %s",
                        c->path, (rc & 0xff) == SQLITE_CORRUPT ? " is corrupt" : "", c->from, c->to,
                        step, sqlite3_errmsg(c->db));
}

/* The start of a step: a test may fail the migration there. */
static int step_begin(const mig_ctx *c, const char *step, sb_error *err)
{
    if (test_hook != NULL && test_hook(step) != 0)
        return sb_error_set(err, SB_EIO, 0,
                            "database %s: schema migration from version %d to %d failed (%s): "
                            "test failure",
                            c->path, c->from, c->to, step);
    return 0;
}

static int exec_step(const mig_ctx *c, const char *sql, const char *step, sb_error *err)
{
    int rc = step_begin(c, step, err);
    if (rc != 0)
        return rc;
    rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc != SQLITE_OK ? step_error(c, rc, step, err) : 0;
}

/* ---- version 2 ----------------------------------------------------------- */

typedef struct v2_counts {
    int queues, filters, sessions, owners;
} v2_counts;

/* Inserts one queue of version 1 into queues_v2 and its filters into
 * queue_filters. `filters` is the '\n'-joined text (empty parts, which
 * matched nothing, are dropped); `meta` the protocol text or NULL. */
static int convert_queue(const mig_ctx *c, sqlite3_stmt *ins_q, sqlite3_stmt *ins_f, int64_t id,
                         const char *name, const char *filters, const char *settings,
                         const char *meta, v2_counts *n, sb_error *err)
{
    int mqtt = meta != NULL && strncmp(name, "mqtt/", 5) == 0;
    const char *protocol = NULL, *owner = NULL, *p = filters;
    char step[300];
    int64_t pos = 0;
    size_t digit = 0;
    int rc;

    snprintf(step, sizeof(step), "queue %lld (%.200s)", (long long)id, name);
    if ((rc = step_begin(c, step, err)) != 0)
        return rc;
    if (mqtt) {
        /* one QoS digit per filter, then "\nowner=<user>" if it has one;
         * the owner is the rest of the text */
        const char *nl = strchr(meta, '\n');
        protocol = "mqtt";
        if (nl != NULL && strncmp(nl + 1, "owner=", 6) == 0)
            owner = nl + 7;
        n->sessions++;
        n->owners += owner != NULL;
    } else if (meta != NULL) {
        protocol = meta; /* version 1 stored no other protocol's text */
    }
    rc = sqlite3_bind_int64(ins_q, 1, id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(ins_q, 2, name, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = settings != NULL ? sqlite3_bind_text(ins_q, 3, settings, -1, SQLITE_STATIC)
                              : sqlite3_bind_null(ins_q, 3);
    if (rc == SQLITE_OK)
        rc = protocol != NULL ? sqlite3_bind_text(ins_q, 4, protocol, -1, SQLITE_STATIC)
                              : sqlite3_bind_null(ins_q, 4);
    if (rc == SQLITE_OK)
        rc = owner != NULL ? sqlite3_bind_text(ins_q, 5, owner, -1, SQLITE_STATIC)
                           : sqlite3_bind_null(ins_q, 5);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(ins_q);
    (void)sqlite3_reset(ins_q); /* repeats the step's error, handled here */
    if (rc != SQLITE_DONE)
        return step_error(c, rc, step, err);
    n->queues++;

    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        /* version 1 read one digit per part, a missing or odd one as QoS 1 */
        char d = mqtt ? meta[digit] : '\0';
        int qos = !mqtt ? SB_QOS_NONE : d >= '0' && d <= '2' ? d - '0' : 1;
        if (d != '\0' && d != '\n')
            digit++;
        if (len > 0) {
            rc = sqlite3_bind_int64(ins_f, 1, id);
            if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(ins_f, 2, pos);
            if (rc == SQLITE_OK)
                rc = sqlite3_bind_text(ins_f, 3, p, (int)len, SQLITE_STATIC);
            if (rc == SQLITE_OK)
                rc = qos != SB_QOS_NONE ? sqlite3_bind_int(ins_f, 4, qos)
                                        : sqlite3_bind_null(ins_f, 4);
            if (rc == SQLITE_OK)
                rc = sqlite3_step(ins_f);
            (void)sqlite3_reset(ins_f);
            if (rc != SQLITE_DONE)
                return step_error(c, rc, step, err);
            pos++;
            n->filters++;
        }
        p += len + (nl != NULL);
    }
    return 0;
}

static int convert_v2(const mig_ctx *c, sb_error *err)
{
    /* settings was written by the broker as JSON; a text that is not is
     * kept as it is (the broker reads it as route settings then). */
    static const char select_sql[] =
        "SELECT id, name, filter,"
        " CASE WHEN json_valid(settings) THEN json_remove(settings, '$.meta') ELSE settings END,"
        " CASE WHEN json_valid(settings) THEN json_extract(settings, '$.meta') END"
        " FROM queues ORDER BY id";
    sqlite3_stmt *sel = NULL, *ins_q = NULL, *ins_f = NULL;
    v2_counts n = {0, 0, 0, 0};
    int rc, step_rc = SQLITE_DONE, status = 0;

    rc = sqlite3_prepare_v2(c->db, select_sql, -1, &sel, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db,
                                "INSERT INTO queues_v2(id, name, settings, protocol, owner)"
                                " VALUES(?1, ?2, ?3, ?4, ?5)",
                                -1, &ins_q, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db,
                                "INSERT INTO queue_filters(queue_id, pos, filter, qos)"
                                " VALUES(?1, ?2, ?3, ?4)",
                                -1, &ins_f, NULL);
    if (rc != SQLITE_OK) {
        status = step_error(c, rc, "reading queues", err);
        goto out;
    }
    while (status == 0 && (step_rc = sqlite3_step(sel)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(sel, 1);
        const char *filters = (const char *)sqlite3_column_text(sel, 2);
        const char *settings = (const char *)sqlite3_column_text(sel, 3);
        const char *meta = (const char *)sqlite3_column_text(sel, 4);
        if (name == NULL || filters == NULL ||
            (settings == NULL && sqlite3_column_type(sel, 3) != SQLITE_NULL) ||
            (meta == NULL && sqlite3_column_type(sel, 4) != SQLITE_NULL)) {
            /* NOT NULL columns, or SQLite could not allocate the text */
            status = sqlite3_errcode(c->db) == SQLITE_NOMEM
                         ? sb_error_set(err, SB_ENOMEM, 0, "database %s: out of memory", c->path)
                         : sb_error_set(err, SB_ECORRUPT, 0,
                                        "database %s: schema migration from version 1 to 2 "
                                        "failed: queue %lld has no name or filter",
                                        c->path, (long long)sqlite3_column_int64(sel, 0));
            break;
        }
        status = convert_queue(c, ins_q, ins_f, sqlite3_column_int64(sel, 0), name, filters,
                               settings, meta, &n, err);
    }
    if (status == 0 && step_rc != SQLITE_DONE)
        status = step_error(c, step_rc, "reading queues", err);
    if (status == 0)
        sb_info(WHO,
                "database %s: converting to schema version 2: %d queues, %d filters as rows, "
                "%d MQTT sessions (%d with an owner) with their granted QoS",
                c->path, n.queues, n.filters, n.sessions, n.owners);
out:
    /* each repeats an error already handled */
    (void)sqlite3_finalize(sel);
    (void)sqlite3_finalize(ins_q);
    (void)sqlite3_finalize(ins_f);
    return status;
}

/* ---- version 3 ----------------------------------------------------------- */

/* Reads one row of integers (NULL as 0) into out[0..n). */
static int query_ints(const mig_ctx *c, const char *sql, int64_t *out, int n, const char *step,
                      sb_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < n; i++)
            out[i] = sqlite3_column_int64(st, i);
        rc = SQLITE_OK;
    }
    (void)sqlite3_finalize(st); /* repeats the step's error, in rc */
    return rc != SQLITE_OK ? step_error(c, rc, step, err) : 0;
}

static int convert_v3(const mig_ctx *c, sb_error *err)
{
    int64_t size = 0, n[3] = {0, 0, 0};
    int rc = query_ints(c, "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                        &size, 1, "reading the database size", err);
    if (rc != 0)
        return rc;
    /* It reads every stored entry (their headers, not their payloads'
     * overflow pages): say so before, it may take a while. */
    sb_info(WHO,
            "database %s: converting to schema version 3: counting each queue's stored messages "
            "once (%lld MiB to read)",
            c->path, (long long)(size >> 20));
    rc = exec_step(c,
                   "INSERT INTO queue_counts(queue_id, entries, bytes) SELECT queue_id, count(*),"
                   " sum(" SB_STORE__SIZE_SQL ") FROM entries GROUP BY queue_id",
                   "counting stored messages", err);
    if (rc == 0)
        rc = query_ints(c, "SELECT count(*), sum(entries), sum(bytes) FROM queue_counts", n, 3,
                        "counting stored messages", err);
    if (rc == 0)
        sb_info(WHO, "database %s: %lld stored messages (%lld bytes) in %lld queues counted",
                c->path, (long long)n[1], (long long)n[2], (long long)n[0]);
    return rc;
}

/* ---- running them -------------------------------------------------------- */

int sb_store__schema_migrate(sqlite3 *db, const char *path, int from_version, sb_error *err)
{
    mig_ctx c = {db, path, from_version, SB_STORE_SCHEMA_VERSION};
    char sql[128];
    int rc;

    if (from_version >= SB_STORE_SCHEMA_VERSION)
        return 0;
    /* auto_vacuum can only change before the first table exists (or with a
     * VACUUM: sqlite_store.c setup_vacuum). INCREMENTAL: freed pages are
     * reused in place, and the idle store thread returns a surplus to the
     * file system; moving pages at every commit (FULL) would cost I/O on
     * the ack path. */
    if (from_version == 0) {
        rc = exec_step(&c, "PRAGMA auto_vacuum = INCREMENTAL", "setting auto_vacuum", err);
        if (rc != 0)
            return rc;
    } else {
        sb_info(WHO, "database %s: schema version %d, migrating to version %d", path, from_version,
                SB_STORE_SCHEMA_VERSION);
    }
    /* One transaction: a failure or a crash at any point leaves the
     * database at from_version, and the next open starts again. */
    rc = exec_step(&c, "BEGIN IMMEDIATE", "beginning the transaction", err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < MIGRATION_COUNT; i++) {
        const migration *m = &migrations[i];
        char step[64];
        if (m->version <= from_version)
            continue;
        snprintf(step, sizeof(step), "creating the tables of version %d", m->version);
        rc = m->sql != NULL ? exec_step(&c, m->sql, step, err) : 0;
        /* a new database has no rows to convert */
        if (rc == 0 && m->convert != NULL && from_version > 0)
            rc = m->convert(&c, err);
        snprintf(step, sizeof(step), "finishing version %d", m->version);
        if (rc == 0 && m->finish_sql != NULL)
            rc = exec_step(&c, m->finish_sql, step, err);
        if (rc != 0)
            goto rollback;
    }
    snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
             (int)SB_STORE_APPLICATION_ID, SB_STORE_SCHEMA_VERSION);
    rc = exec_step(&c, sql, "stamping the version", err);
    if (rc != 0)
        goto rollback;
    rc = exec_step(&c, "COMMIT", "committing", err);
    if (rc != 0)
        goto rollback;
    if (from_version > 0)
        sb_info(WHO, "database %s: migrated from schema version %d to %d", path, from_version,
                SB_STORE_SCHEMA_VERSION);
    return 0;

rollback:
    /* COMMIT or a statement may already have ended the transaction. */
    if (!sqlite3_get_autocommit(db) && sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        sb_errlog(WHO, "database %s: rollback of the migration failed: %s", path,
                  sqlite3_errmsg(db));
    else if (from_version > 0)
        sb_errlog(WHO, "database %s: left at schema version %d: %s", path, from_version,
                  err != NULL ? err->msg : "migration failed");
    return rc;
}
