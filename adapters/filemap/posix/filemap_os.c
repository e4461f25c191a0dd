/*
 * The file-mapping adapter's operating-system side on POSIX: the ring is a
 * shared memory object /NAME (Linux: /dev/shm/NAME) made with shm_open and
 * mapped with mmap; its producers' lock is a process-shared robust pthread
 * mutex in the header, its wake-ups are futexes on the header's wake words
 * (sb_ring.h).
 *
 * Security: the object is created with the adapter's `mode` (default 0600:
 * the broker's account only; never writable by others) and optionally given
 * the adapter's `group`; an existing object must belong to the broker's own
 * account (anyone can create names in /dev/shm: one made by another account
 * is refused as squatting), and its mode is set back to the configured one.
 *
 * One broker per ring: the broker holds an open-file-description lock on
 * byte 0 of the object for as long as it serves the ring; the kernel drops
 * it when the broker exits or dies, so a restarted broker takes the ring
 * over, and a second broker on the same name is refused. An out ring's
 * consumer holds byte 1 the same way (sb_ring.h).
 */
#include "adapters/filemap/sb_ring.h" /* with its OS part: before filemap_int.h */

#include "adapters/filemap/filemap_int.h"
#include "service/alloc.h"
#include "service/log.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((sb_ring_header *)0)->lock),
               "the producers' mutex fits the header's lock field");

struct sb_fm_os {
    sb_ring ring; /* the mapping and descriptor; the broker's own handle */
    char path[300];
    char display[320];
    int consumer_claimed;
};

static int sys_error(sb_error *err, int e, const char *adapter, const char *what,
                     const char *path)
{
    int code = e == EACCES || e == EPERM ? SB_EACCES : sb_error_from_errno(e);
    return sb_error_set(err, code, e, "adapter %s: %s %s: %s", adapter, what, path, strerror(e));
}

static int unclaim_byte(int fd, off_t byte)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
#ifdef F_OFD_SETLK
    return fcntl(fd, F_OFD_SETLK, &fl);
#else
    return fcntl(fd, F_SETLK, &fl);
#endif
}

/* Sets the object's mode and group to the configured ones. */
static int set_access(int fd, const sb_fm_os_opts *o, const char *display, sb_error *err)
{
    if (fchmod(fd, (mode_t)o->mode) != 0)
        return sys_error(err, errno, o->adapter, "cannot set the mode of", display);
    if (o->group != NULL) {
        struct group gr, *found = NULL;
        char buf[4096];
        int rc = getgrnam_r(o->group, &gr, buf, sizeof(buf), &found);
        if (rc != 0 || found == NULL)
            return sb_error_set(err, SB_ECONFIG, rc, "adapter %s: group %s: %s", o->adapter,
                                o->group, rc != 0 ? strerror(rc) : "no such group");
        if (fchown(fd, (uid_t)-1, gr.gr_gid) != 0)
            return sys_error(err, errno, o->adapter, "cannot give the group to", display);
    }
    return 0;
}

static int init_mutex(sb_ring_header *h)
{
    pthread_mutexattr_t at;
    int rc = pthread_mutexattr_init(&at);
    if (rc == 0)
        rc = pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init((pthread_mutex_t *)(void *)h->lock, &at);
    pthread_mutexattr_destroy(&at);
    return rc;
}

static int map(sb_fm_os *os, uint64_t size, const sb_fm_os_opts *o, sb_error *err)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, os->ring.fd, 0);
    if (p == MAP_FAILED)
        return sys_error(err, errno, o->adapter, "cannot map", os->display);
    os->ring.h = p;
    os->ring.map_size = size;
    os->ring.data = (unsigned char *)p + SB_RING_HEADER_SIZE;
    os->ring.cap = os->ring.h->capacity;
    return 0;
}

static void unmap(sb_fm_os *os)
{
    if (os->ring.h != NULL)
        munmap(os->ring.h, (size_t)os->ring.map_size);
    os->ring.h = NULL;
    os->ring.data = NULL;
}

/* A new object: made with O_EXCL, claimed before anyone can use it. */
static int create_ring(sb_fm_os *os, const sb_fm_os_opts *o, int fd, sb_error *err)
{
    uint64_t size = SB_RING_HEADER_SIZE + o->capacity;
    int rc;
    os->ring.fd = fd;
    if (sbr_claim_byte(fd, SBR_OWNER_BYTE) != 0)
        return sys_error(err, errno, o->adapter, "cannot lock", os->display);
    if ((rc = set_access(fd, o, os->display, err)) != 0)
        return rc;
    if (ftruncate(fd, (off_t)size) != 0)
        return sys_error(err, errno, o->adapter, "cannot size", os->display);
    if ((rc = map(os, size, o, err)) != 0)
        return rc;
    sbr_init_header(os->ring.h, o->direction, o->capacity, o->max_payload, o->reclaim_ms,
                    (uint64_t)sb_now_ms());
    os->ring.cap = o->capacity;
    if ((rc = init_mutex(os->ring.h)) != 0)
        return sb_error_set(err, SB_EIO, rc, "adapter %s: cannot make the lock of %s: %s",
                            o->adapter, os->display, strerror(rc));
    sbr_store32(&os->ring.h->owner_pid, sbr_pid());
    return 0;
}

/* An existing object of ours: is it a ring this adapter can resume?
 * Returns 1 (resume), 0 (replace it; *why says why) or an error. */
static int examine(sb_fm_os *os, const sb_fm_os_opts *o, const struct stat *st, const char **why,
                   sb_error *err)
{
    int rc;
    if ((uint64_t)st->st_size < SB_RING_HEADER_SIZE) {
        *why = "it is smaller than a ring header";
        return 0;
    }
    if ((rc = map(os, (uint64_t)st->st_size, o, err)) != 0)
        return rc;
    if ((uint64_t)st->st_size != SB_RING_HEADER_SIZE + o->capacity) {
        *why = "its size differs from the configured capacity";
        return 0;
    }
    return sb_fm__examine(os->ring.h, (uint64_t)st->st_size, o, why);
}

/* Tells whoever still has the old ring open that it is gone, and removes
 * its name. */
static void retire(sb_fm_os *os)
{
    if (os->ring.h != NULL && os->ring.h->magic == SB_RING_MAGIC &&
        os->ring.map_size >= SB_RING_HEADER_SIZE) {
        sbr_store32(&os->ring.h->state, SB_RING_STATE_RETIRED);
        sbr_signal(&os->ring, SBR_WAKE_DATA);
        sbr_signal(&os->ring, SBR_WAKE_RELEASE);
    }
    unmap(os);
    shm_unlink(os->path);
    close(os->ring.fd);
    os->ring.fd = -1;
}

int sb_fm__os_open(sb_fm_os **out, const sb_fm_os_opts *o, int *how, char *note, size_t note_n,
                   sb_error *err)
{
    sb_fm_os *os = sb_calloc(1, sizeof(*os));
    const char *why = NULL;
    char replaced[300] = "";
    int rc = 0;

    *out = NULL;
    *how = SB_FM_CREATED;
    if (note_n > 0)
        note[0] = '\0';
    if (os == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    os->ring.fd = -1;
    os->ring.owns_map = 0;
    snprintf(os->path, sizeof(os->path), "/%s", o->name);
#ifdef __linux__
    snprintf(os->display, sizeof(os->display), "/dev/shm/%s", o->name);
#else
    snprintf(os->display, sizeof(os->display), "shared memory /%s", o->name);
#endif
    for (int attempt = 0; attempt < 3; attempt++) {
        struct stat st;
        int fd = shm_open(os->path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) {
            if ((rc = create_ring(os, o, fd, err)) != 0) {
                unmap(os);
                shm_unlink(os->path);
                goto fail;
            }
            *how = replaced[0] != '\0' ? SB_FM_REPLACED : SB_FM_CREATED;
            snprintf(note, note_n, "%s", replaced);
            *out = os;
            return 0;
        }
        if (errno != EEXIST) {
            rc = sys_error(err, errno, o->adapter, "cannot create", os->display);
            goto fail;
        }
        fd = shm_open(os->path, O_RDWR, 0);
        if (fd < 0) {
            if (errno == ENOENT)
                continue; /* removed meanwhile: create it */
            rc = sys_error(err, errno, o->adapter, "cannot open the existing", os->display);
            goto fail;
        }
        os->ring.fd = fd;
        if (fstat(fd, &st) != 0) {
            rc = sys_error(err, errno, o->adapter, "cannot examine", os->display);
            goto fail;
        }
        if (st.st_uid != geteuid()) {
            rc = sb_error_set(err, SB_EACCES, 0,
                              "adapter %s: %s exists and belongs to another account (uid %u): "
                              "refusing to use a ring someone else made",
                              o->adapter, os->display, (unsigned)st.st_uid);
            goto fail;
        }
        if (sbr_claim_byte(fd, SBR_OWNER_BYTE) != 0) {
            rc = sb_error_set(err, SB_EADDRINUSE, errno,
                              "adapter %s: %s is served by another broker (it holds its lock)",
                              o->adapter, os->display);
            goto fail;
        }
        rc = examine(os, o, &st, &why, err);
        if (rc < 0)
            goto fail;
        if (rc == 1) {
            sb_ring_header *h = os->ring.h;
            uint32_t prev = sbr_load32(&h->owner_pid);
            uint64_t left = sbr_load64(&h->reserve) - sbr_load64(&h->commit);
            if ((rc = set_access(fd, o, os->display, err)) != 0)
                goto fail;
            h->max_payload = o->max_payload;
            h->reclaim_ms = o->reclaim_ms;
            sbr_store32(&h->owner_pid, sbr_pid());
            if (prev != 0)
                snprintf(note, note_n,
                         "the previous broker (pid %u) stopped without closing it; %llu bytes "
                         "of records after the committed cursor",
                         prev, (unsigned long long)left);
            else
                snprintf(note, note_n, "%llu bytes of records after the committed cursor",
                         (unsigned long long)left);
            *how = SB_FM_RESUMED;
            *out = os;
            return 0;
        }
        /* Replace it. What it held was never committed (committed records
         * are in the store): say how much goes. */
        {
            sb_ring_header *h = os->ring.h;
            unsigned long long left = 0;
            if (h != NULL && h->magic == SB_RING_MAGIC) {
                uint64_t c = h->commit, r = h->reserve;
                left = r > c ? (unsigned long long)(r - c) : 0;
            }
            snprintf(replaced, sizeof(replaced),
                     "the existing ring was replaced because %s (%llu bytes of uncommitted "
                     "records in it are lost)",
                     why, left);
        }
        retire(os);
    }
    rc = sb_error_set(err, SB_EIO, 0, "adapter %s: %s keeps changing under the broker",
                      o->adapter, os->display);
fail:
    unmap(os);
    if (os->ring.fd >= 0)
        close(os->ring.fd);
    sb_free(os);
    return rc;
}

sb_ring_header *sb_fm__os_header(sb_fm_os *os)
{
    return os->ring.h;
}

const char *sb_fm__os_display(const sb_fm_os *os)
{
    return os->display;
}

void sb_fm__os_signal(sb_fm_os *os, int kind)
{
    sbr_signal(&os->ring, kind);
}

typedef struct ready_thunk {
    int (*fn)(void *ctx);
    void *ctx;
} ready_thunk;

static int thunk(sb_ring *r, const void *arg)
{
    const ready_thunk *t = arg;
    (void)r;
    return t->fn(t->ctx) != 0;
}

int sb_fm__os_wait(sb_fm_os *os, int kind, int (*ready)(void *ctx), void *ctx, int timeout_ms)
{
    ready_thunk t = {ready, ctx};
    return sbr_wait(&os->ring, kind, thunk, &t, timeout_ms) == 1;
}

int sb_fm__os_consumer_try(sb_fm_os *os)
{
    if (os->consumer_claimed)
        return 1;
    if (sbr_claim_byte(os->ring.fd, SBR_CONSUMER_BYTE) != 0)
        return 0;
    os->consumer_claimed = 1;
    return 1;
}

void sb_fm__os_consumer_release(sb_fm_os *os)
{
    if (!os->consumer_claimed)
        return;
    unclaim_byte(os->ring.fd, SBR_CONSUMER_BYTE);
    os->consumer_claimed = 0;
}

int sb_fm__os_pid_alive(uint32_t pid)
{
    return sbr_pid_alive(pid);
}

uint64_t sb_fm__os_now_ms(void)
{
    return sbr_now_ms();
}

void sb_fm__os_name_thread(const char *name)
{
#ifdef __linux__
    prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}

uint32_t sb_fm__os_pid(void)
{
    return sbr_pid();
}

void sb_fm__os_close(sb_fm_os *os)
{
    if (os == NULL)
        return;
    if (os->ring.h != NULL) {
        sbr_cas32(&os->ring.h->owner_pid, sbr_pid(), 0);
        sbr_signal(&os->ring, SBR_WAKE_RELEASE);
    }
    sb_fm__os_consumer_release(os);
    unmap(os);
    if (os->ring.fd >= 0)
        close(os->ring.fd); /* drops the broker's lock */
    sb_free(os);
}
