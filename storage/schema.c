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
 */
#include "storage/schema_int.h"

#include <stdio.h>

#include "service/log.h"
#include "storage/store.h"

typedef struct migration {
    int version;
    const char *sql;
} migration;

static const migration migrations[] = {
    {1, "CREATE TABLE queues(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
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
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;"},
};

#define MIGRATION_COUNT (sizeof(migrations) / sizeof(migrations[0]))

_Static_assert(MIGRATION_COUNT == SB_STORE_SCHEMA_VERSION,
               "one migration per schema version, in order");

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

static int exec_sql(sqlite3 *db, const char *path, const char *sql, sb_error *err)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sb_error_set(err, sb_store__error_from_sqlite(rc), 0,
                            "database %s: schema migration failed: %s", path, sqlite3_errmsg(db));
    return 0;
}

int sb_store__schema_migrate(sqlite3 *db, const char *path, int from_version, sb_error *err)
{
    char sql[128];
    int rc;

    if (from_version >= SB_STORE_SCHEMA_VERSION)
        return 0;
    /* auto_vacuum can only change before the first table exists. NONE: freed
     * pages are reused in place; moving pages at every commit (FULL) would
     * cost I/O on the ack path. */
    if (from_version == 0) {
        rc = exec_sql(db, path, "PRAGMA auto_vacuum = NONE", err);
        if (rc != 0)
            return rc;
    }
    rc = exec_sql(db, path, "BEGIN IMMEDIATE", err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < MIGRATION_COUNT; i++) {
        if (migrations[i].version <= from_version)
            continue;
        rc = exec_sql(db, path, migrations[i].sql, err);
        if (rc != 0)
            goto rollback;
    }
    snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
             (int)SB_STORE_APPLICATION_ID, SB_STORE_SCHEMA_VERSION);
    rc = exec_sql(db, path, sql, err);
    if (rc != 0)
        goto rollback;
    rc = exec_sql(db, path, "COMMIT", err);
    if (rc != 0)
        goto rollback;
    return 0;

rollback:
    /* COMMIT or a statement may already have ended the transaction. */
    if (!sqlite3_get_autocommit(db) && sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        sb_errlog("store", "database %s: rollback of the migration failed: %s", path,
                  sqlite3_errmsg(db));
    return rc;
}
