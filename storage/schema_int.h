/*
 * The store's schema and its migrations (internal to storage/).
 *
 * The schema is a list of migrations, one per version: migration N turns a
 * version N-1 database into a version N one. A new database runs them all,
 * from version 0. The version is PRAGMA user_version; a Switchboard database
 * is marked with PRAGMA application_id = SB_STORE_APPLICATION_ID. To change
 * the schema, append a migration and bump SB_STORE_SCHEMA_VERSION in store.h;
 * never edit a released migration.
 */
#ifndef SB_STORE_SCHEMA_INT_H
#define SB_STORE_SCHEMA_INT_H

#include <sqlite3.h>

#include "service/error.h"

/* A stored entry's size as SQL, sb_message_size of its message: topic,
 * payload and the encoded headers (key NUL value NUL each). length() of a
 * blob reads its header, not its content. */
#define SB_STORE__SIZE_SQL                                                                         \
    "(length(CAST(topic AS BLOB)) + coalesce(length(payload), 0) + coalesce(length(headers), 0))"

/* Maps a SQLite result code (primary or extended) to an SB_E* code. */
int sb_store__error_from_sqlite(int rc);

/* Brings the database from `from_version` to SB_STORE_SCHEMA_VERSION in one
 * transaction and stamps application_id and user_version. A new database
 * (from_version 0) also gets its creation-time settings (auto_vacuum).
 * Returns 0 or an SB_E* code with err naming `path` and SQLite's message. */
int sb_store__schema_migrate(sqlite3 *db, const char *path, int from_version, sb_error *err);

#endif
