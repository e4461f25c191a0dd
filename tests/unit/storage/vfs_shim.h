/*
 * A SQLite VFS for tests that wraps the default one: it counts syncs of WAL
 * files and can make syncs or writes fail, so tests can check that the store
 * really commits with the synchronous level it claims and survives I/O errors.
 */
#ifndef SB_TEST_VFS_SHIM_H
#define SB_TEST_VFS_SHIM_H

/* Registers the shim as the default VFS (once). Returns SQLITE_OK or an error. */
int vfs_shim_install(void);

/* xSync calls on WAL files so far. */
long vfs_shim_wal_syncs(void);

/* While set, xSync (any file) returns SQLITE_IOERR_FSYNC. */
void vfs_shim_fail_syncs(int on);

/* While set, xWrite on WAL files returns SQLITE_IOERR_WRITE. */
void vfs_shim_fail_wal_writes(int on);

#endif
