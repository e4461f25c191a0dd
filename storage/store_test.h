/*
 * Testing hooks of the SQLite store. Not for the broker: only unit tests and
 * the benchmark include this header.
 */
#ifndef SB_STORE_TEST_H
#define SB_STORE_TEST_H

#include "storage/store.h"

/* Makes the store thread call sb_alloc_fail_after(n) before it executes its
 * next group, so allocation failures can be injected on that thread
 * (injection is thread-local). */
void sb_store_test_alloc_fail_after(sb_store *s, long n);

/* While held (hold = 1), the store thread takes no new op into a group,
 * as when it is busy with a long commit: submitted ops wait, and
 * sb_store_cancel may withdraw their entries. hold = 0 lets it go on.
 * sb_store_stop ends a hold. */
void sb_store_test_hold(sb_store *s, int hold);

/* Holds the store thread as above while the next op to take is of type
 * op_type (an sb_store_op_type; 0 ends it): what was submitted before it
 * runs, and it waits with what follows. */
void sb_store_test_hold_before(sb_store *s, int op_type);

/* Databases up to this size get the full PRAGMA quick_check at open,
 * larger ones the bounded check (which leaves the entries out): a test
 * sets 0 to open a small database as a large one. Process-wide. */
void sb_store_test_quick_check_max(int64_t bytes);

/* Makes schema migrations call hook(step) before each of their steps (a
 * short text naming it, as error messages do: "committing", "queue 5
 * (name)", ...); a non-zero return fails the migration there, as an error
 * would. Process-wide; NULL removes it. A hook may also end the process, to
 * leave a migration half done. */
void sb_store_test_migration_hook(int (*hook)(const char *step));

#endif
