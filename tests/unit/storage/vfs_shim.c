/* A pass-through SQLite VFS that counts WAL syncs and injects I/O errors. */
#include "vfs_shim.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>

typedef struct shim_file {
    sqlite3_file base;
    sqlite3_file *real; /* the wrapped file, allocated right after this struct */
    int is_wal;
} shim_file;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs shim_vfs;
static atomic_long wal_syncs;
static atomic_int fail_syncs;
static atomic_int fail_wal_writes;

#define REAL(f) (((shim_file *)(f))->real)

static int shim_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int shim_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int shim_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    if (((shim_file *)f)->is_wal && atomic_load(&fail_wal_writes))
        return SQLITE_IOERR_WRITE;
    return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int shim_sync(sqlite3_file *f, int flags)
{
    if (atomic_load(&fail_syncs))
        return SQLITE_IOERR_FSYNC;
    if (((shim_file *)f)->is_wal)
        atomic_fetch_add(&wal_syncs, 1);
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int shim_lock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int shim_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int shim_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int shim_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int shim_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int shim_device_characteristics(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int shim_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}

static int shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void shim_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int shim_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}

static int shim_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}

static int shim_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods shim_io = {
    3,
    shim_close,
    shim_read,
    shim_write,
    shim_truncate,
    shim_sync,
    shim_file_size,
    shim_lock,
    shim_unlock,
    shim_check_reserved,
    shim_file_control,
    shim_sector_size,
    shim_device_characteristics,
    shim_shm_map,
    shim_shm_lock,
    shim_shm_barrier,
    shim_shm_unmap,
    shim_fetch,
    shim_unfetch,
};

static int shim_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    shim_file *p = (shim_file *)f;
    int rc;
    (void)vfs;
    memset(p, 0, sizeof(*p));
    p->real = (sqlite3_file *)&p[1];
    p->is_wal = (flags & SQLITE_OPEN_WAL) != 0;
    rc = real_vfs->xOpen(real_vfs, name, p->real, flags, out);
    p->base.pMethods = p->real->pMethods != NULL ? &shim_io : NULL;
    return rc;
}

int vfs_shim_install(void)
{
    if (real_vfs != NULL)
        return SQLITE_OK;
    real_vfs = sqlite3_vfs_find(NULL);
    if (real_vfs == NULL)
        return SQLITE_ERROR;
    shim_vfs = *real_vfs;
    shim_vfs.zName = "sb-test-shim";
    shim_vfs.szOsFile = (int)sizeof(shim_file) + real_vfs->szOsFile;
    shim_vfs.xOpen = shim_open;
    shim_vfs.pNext = NULL;
    return sqlite3_vfs_register(&shim_vfs, 1);
}

long vfs_shim_wal_syncs(void)
{
    return atomic_load(&wal_syncs);
}

void vfs_shim_fail_syncs(int on)
{
    atomic_store(&fail_syncs, on);
}

void vfs_shim_fail_wal_writes(int on)
{
    atomic_store(&fail_wal_writes, on);
}
