/*
 * The file-mapping adapter's operating-system side on Windows: the ring is
 * a named file mapping backed by the paging file, NS\NAME, with named
 * objects beside it (sb_ring.h): the semaphores NS\NAME.data and
 * NS\NAME.release (wake-ups), the mutex NS\NAME.consumer (the one consumer
 * of an out ring), and NS\NAME.owner, which the broker holds while it
 * serves the ring. The producers' lock is a word in the ring's header.
 *
 * Namespace: Global\ under the service (a session-0 Local\ object is
 * invisible to programs in users' sessions), Local\ under `switchboard run`
 * (`namespace` overrides). Security: every object gets the adapter's
 * `security` (SDDL); the default grants SYSTEM and Administrators all, the
 * interactive user read, write and synchronize, the broker's own account
 * all, and nobody else anything (no network logons, no anonymous).
 *
 * Squatting: an object of these names that already exists must be the
 * broker's own (its owner is the broker's account, SYSTEM or
 * Administrators): one another account made first is refused, so nobody
 * can slip a ring of their own under the broker's producers. One broker per
 * ring: the owner mutex (a second broker finds it held; WAIT_ABANDONED
 * tells a restarted broker that its predecessor died); within one process,
 * where a mutex is recursive, a list of the rings served.
 *
 * A mapping lives as long as some process has it open: after a broker
 * restart the ring (and its records not yet committed) is found again if a
 * program kept it open, else it starts empty (nothing committed is lost:
 * that is in the store).
 */
#include "adapters/filemap/sb_ring.h" /* with its OS part: before filemap_int.h */

#include "adapters/filemap/filemap_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <aclapi.h>
#include <sddl.h>

/* SYSTEM and Administrators: all; interactive users: read, write and
 * synchronize (GX: waiting on the semaphores and mutexes); the broker's
 * own account (appended): all. */
#define DEFAULT_SDDL L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGWGX;;;IU)"

struct sb_fm_os {
    sb_ring ring; /* the view and the named objects */
    HANDLE owner;
    char display[300]; /* "Local\NAME" */
    int consumer_claimed;
    struct sb_fm_os *next;
};

/* The rings this process serves (a mutex is recursive: it cannot tell). */
static SRWLOCK registry_lock = SRWLOCK_INIT;
static sb_fm_os *registry;

static int win_error(sb_error *err, DWORD code, const char *adapter, const char *what,
                     const char *name)
{
    char text[256];
    sb_win_strerror(code, text, sizeof(text));
    return sb_error_set(err, code == ERROR_ACCESS_DENIED ? SB_EACCES : sb_error_from_win32(code),
                        (int)code, "adapter %s: %s %s: %s", adapter, what, name, text);
}

/* The security descriptor of the ring's objects (LocalFree it). */
static int make_sd(PSECURITY_DESCRIPTOR *out, const sb_fm_os_opts *o, sb_error *err)
{
    wchar_t *w = NULL, *sid = NULL;
    DWORD code = 0;
    char text[256];
    int rc = 0;
    *out = NULL;
    if (o->security != NULL) {
        w = sb_utf8_to_wide(o->security);
        if (w == NULL)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "adapter %s: security: the SDDL is not valid UTF-8", o->adapter);
    } else {
        size_t n;
        sid = sb_win_own_sid(&code);
        if (sid == NULL)
            return win_error(err, code, o->adapter, "cannot read the SID of", "the broker's account");
        n = wcslen(DEFAULT_SDDL) + wcslen(sid) + 16;
        w = sb_malloc(n * sizeof(wchar_t));
        if (w == NULL) {
            LocalFree(sid);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
        _snwprintf(w, n, L"%ls(A;;GA;;;%ls)", DEFAULT_SDDL, sid);
        w[n - 1] = 0;
        LocalFree(sid);
    }
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(w, SDDL_REVISION_1, out, NULL)) {
        code = GetLastError();
        sb_win_strerror(code, text, sizeof(text));
        *out = NULL;
        rc = sb_error_set(err, SB_ECONFIG, (int)code,
                          "adapter %s: security: invalid security descriptor \"%s\": %s",
                          o->adapter, o->security != NULL ? o->security : "(default)", text);
    }
    sb_free(w);
    return rc;
}

/* 1 if sid is this process's user or the default owner of what it
 * creates (its token's owner: Administrators, or a group under Wine). */
static int own_sid(PSID sid)
{
    union {
        TOKEN_USER user;
        TOKEN_OWNER owner;
        char buf[512];
    } u;
    HANDLE tok;
    DWORD n;
    int mine = 0;
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok))
        return 0;
    if (GetTokenInformation(tok, TokenUser, &u, sizeof(u), &n) && EqualSid(sid, u.user.User.Sid))
        mine = 1;
    if (!mine && GetTokenInformation(tok, TokenOwner, &u, sizeof(u), &n) &&
        EqualSid(sid, u.owner.Owner))
        mine = 1;
    CloseHandle(tok);
    return mine;
}

/* 1 if the object h (which existed before the broker asked for it) was
 * made by another account than the broker's, SYSTEM or Administrators. */
static int foreign(HANDLE h)
{
    PSID owner = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    int mine;
    if (GetSecurityInfo(h, SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION, &owner, NULL, NULL, NULL,
                        &sd) != ERROR_SUCCESS ||
        owner == NULL) {
        if (sd != NULL)
            LocalFree(sd);
        return 1; /* who made it cannot be told: not ours to trust */
    }
    mine = own_sid(owner) || IsWellKnownSid(owner, WinLocalSystemSid) ||
           IsWellKnownSid(owner, WinBuiltinAdministratorsSid);
    LocalFree(sd);
    return !mine;
}

/* NS\NAME + suffix in UTF-16. */
static int object_name(wchar_t *out, size_t n, const char *display, const char *suffix)
{
    char buf[400];
    wchar_t *w;
    snprintf(buf, sizeof(buf), "%s%s", display, suffix);
    w = sb_utf8_to_wide(buf);
    if (w == NULL || wcslen(w) >= n) {
        sb_free(w);
        return -1;
    }
    wcscpy(out, w);
    sb_free(w);
    return 0;
}

/* Creates (or opens the existing) named object of kind k: 's' semaphore,
 * 'm' mutex. */
static int make_object(HANDLE *out, char k, SECURITY_ATTRIBUTES *sa, const sb_fm_os *os,
                       const char *suffix, const sb_fm_os_opts *o, sb_error *err)
{
    wchar_t w[400];
    char what[340];
    DWORD code;
    HANDLE h;
    snprintf(what, sizeof(what), "%s%s", os->display, suffix);
    if (object_name(w, 400, os->display, suffix) != 0)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: %s: name too long", o->adapter, what);
    h = k == 's' ? CreateSemaphoreW(sa, 0, 0x7fffffff, w) : CreateMutexW(sa, FALSE, w);
    code = GetLastError();
    if (h == NULL) {
        if (code == ERROR_ACCESS_DENIED)
            return sb_error_set(err, SB_EACCES, (int)code,
                                "adapter %s: %s exists and this account may not use it: another "
                                "account made it first (or the ring's security leaves out the "
                                "broker's account)",
                                o->adapter, what);
        return win_error(err, code, o->adapter, "cannot create", what);
    }
    if (code == ERROR_ALREADY_EXISTS && foreign(h)) {
        CloseHandle(h);
        return sb_error_set(err, SB_EACCES, 0,
                            "adapter %s: %s exists and belongs to another account: refusing to "
                            "use a ring someone else made",
                            o->adapter, what);
    }
    *out = h;
    return 0;
}

static void close_handles(sb_fm_os *os)
{
    HANDLE *hs[] = {&os->ring.consumer, &os->ring.wake_data, &os->ring.wake_release,
                    &os->ring.map};
    if (os->ring.h != NULL)
        UnmapViewOfFile(os->ring.h);
    os->ring.h = NULL;
    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
        if (*hs[i] != NULL) {
            CloseHandle(*hs[i]);
            *hs[i] = NULL;
        }
    if (os->owner != NULL) {
        ReleaseMutex(os->owner);
        CloseHandle(os->owner);
        os->owner = NULL;
    }
}

static void unregister(sb_fm_os *os)
{
    AcquireSRWLockExclusive(&registry_lock);
    for (sb_fm_os **p = &registry; *p != NULL; p = &(*p)->next)
        if (*p == os) {
            *p = os->next;
            break;
        }
    ReleaseSRWLockExclusive(&registry_lock);
}

int sb_fm__os_open(sb_fm_os **out, const sb_fm_os_opts *o, int *how, char *note, size_t note_n,
                   sb_error *err)
{
    sb_fm_os *os = sb_calloc(1, sizeof(*os));
    PSECURITY_DESCRIPTOR sd = NULL;
    SECURITY_ATTRIBUTES sa;
    uint64_t size = SB_RING_HEADER_SIZE + o->capacity;
    MEMORY_BASIC_INFORMATION mbi;
    const char *why = NULL;
    int rc, existed, abandoned = 0;
    wchar_t w[400];
    DWORD code, got;

    *out = NULL;
    *how = SB_FM_CREATED;
    if (note_n > 0)
        note[0] = '\0';
    if (os == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    snprintf(os->display, sizeof(os->display), "%s%s", o->global ? "Global\\" : "Local\\",
             o->name);

    AcquireSRWLockExclusive(&registry_lock);
    for (sb_fm_os *x = registry; x != NULL; x = x->next)
        if (_stricmp(x->display, os->display) == 0) {
            ReleaseSRWLockExclusive(&registry_lock);
            sb_free(os);
            return sb_error_set(err, SB_EADDRINUSE, 0,
                                "adapter %s: ring %s is already served by another adapter of "
                                "this broker",
                                o->adapter, o->name);
        }
    os->next = registry;
    registry = os;
    ReleaseSRWLockExclusive(&registry_lock);

    if ((rc = make_sd(&sd, o, err)) != 0)
        goto fail;
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;

    /* One broker per ring, first: nothing else is touched before. */
    if ((rc = make_object(&os->owner, 'm', &sa, os, ".owner", o, err)) != 0)
        goto fail;
    got = WaitForSingleObject(os->owner, 0);
    if (got == WAIT_TIMEOUT) {
        CloseHandle(os->owner);
        os->owner = NULL;
        rc = sb_error_set(err, SB_EADDRINUSE, 0,
                          "adapter %s: ring %s is served by another broker (it holds %s.owner)",
                          o->adapter, os->display, os->display);
        goto fail;
    }
    if (got != WAIT_OBJECT_0 && got != WAIT_ABANDONED) {
        rc = win_error(err, GetLastError(), o->adapter, "cannot take", os->display);
        CloseHandle(os->owner);
        os->owner = NULL;
        goto fail;
    }
    abandoned = got == WAIT_ABANDONED;
    if ((rc = make_object(&os->ring.wake_data, 's', &sa, os, ".data", o, err)) != 0 ||
        (rc = make_object(&os->ring.wake_release, 's', &sa, os, ".release", o, err)) != 0)
        goto fail;
    if (o->direction == SB_RING_OUT &&
        (rc = make_object(&os->ring.consumer, 'm', &sa, os, ".consumer", o, err)) != 0)
        goto fail;

    if (object_name(w, 400, os->display, "") != 0) {
        rc = sb_error_set(err, SB_ECONFIG, 0, "adapter %s: %s: name too long", o->adapter,
                          os->display);
        goto fail;
    }
    os->ring.map = CreateFileMappingW(INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE,
                                      (DWORD)(size >> 32), (DWORD)size, w);
    code = GetLastError();
    if (os->ring.map == NULL) {
        rc = code == ERROR_ACCESS_DENIED
                 ? sb_error_set(err, SB_EACCES, (int)code,
                                "adapter %s: %s exists and this account may not map it",
                                o->adapter, os->display)
                 : win_error(err, code, o->adapter, "cannot create the mapping", os->display);
        goto fail;
    }
    existed = code == ERROR_ALREADY_EXISTS;
    if (existed && foreign(os->ring.map)) {
        rc = sb_error_set(err, SB_EACCES, 0,
                          "adapter %s: %s exists and belongs to another account: refusing to use "
                          "a ring someone else made",
                          o->adapter, os->display);
        goto fail;
    }
    os->ring.h = MapViewOfFile(os->ring.map, FILE_MAP_ALL_ACCESS, 0, 0, 0);
    if (os->ring.h == NULL || VirtualQuery(os->ring.h, &mbi, sizeof(mbi)) == 0) {
        rc = win_error(err, GetLastError(), o->adapter, "cannot map", os->display);
        goto fail;
    }
    os->ring.map_size = (uint64_t)mbi.RegionSize;
    os->ring.data = (unsigned char *)os->ring.h + SB_RING_HEADER_SIZE;
    os->ring.cap = o->capacity;
    os->ring.owns_map = 0;

    if (existed && os->ring.map_size >= SB_RING_HEADER_SIZE &&
        sb_fm__examine(os->ring.h, os->ring.map_size, o, &why)) {
        sb_ring_header *h = os->ring.h;
        uint32_t prev = sbr_load32(&h->owner_pid);
        unsigned long long left =
            (unsigned long long)(sbr_load64(&h->reserve) - sbr_load64(&h->commit));
        h->max_payload = o->max_payload;
        h->reclaim_ms = o->reclaim_ms;
        if (abandoned || prev != 0)
            snprintf(note, note_n,
                     "the previous broker (pid %u) stopped without closing it; %llu bytes of "
                     "records after the committed cursor",
                     prev, left);
        else
            snprintf(note, note_n, "%llu bytes of records after the committed cursor", left);
        *how = SB_FM_RESUMED;
    } else if (existed) {
        /* Another layout or corrupt, and some program still has it open
         * (else it would be gone): tell them, and start it afresh where its
         * size allows. */
        sb_ring_header *h = os->ring.h;
        unsigned long long left = 0;
        if (os->ring.map_size >= SB_RING_HEADER_SIZE && h->magic == SB_RING_MAGIC) {
            left = h->reserve > h->commit ? (unsigned long long)(h->reserve - h->commit) : 0;
            sbr_store32(&h->state, SB_RING_STATE_RETIRED);
            sbr_signal(&os->ring, SBR_WAKE_DATA);
            sbr_signal(&os->ring, SBR_WAKE_RELEASE);
        }
        if (why == NULL)
            why = "it is smaller than a ring header";
        if (os->ring.map_size < size || (h->magic == SB_RING_MAGIC && h->capacity != o->capacity)) {
            rc = sb_error_set(err, SB_EBUSY, 0,
                              "adapter %s: %s exists with another layout (%s) and programs still "
                              "have it open; it is marked retired, so they close it: start the "
                              "adapter again (reload) once they did",
                              o->adapter, os->display, why);
            goto fail;
        }
        sbr_init_header(h, o->direction, o->capacity, o->max_payload, o->reclaim_ms,
                        (uint64_t)sb_now_ms());
        snprintf(note, note_n,
                 "the existing ring was replaced because %s (started afresh in place, as "
                 "programs still had it open; %llu bytes of uncommitted records in it are lost)",
                 why, left);
        *how = SB_FM_REPLACED;
    } else {
        sbr_init_header(os->ring.h, o->direction, o->capacity, o->max_payload, o->reclaim_ms,
                        (uint64_t)sb_now_ms());
    }
    sbr_store32(&os->ring.h->owner_pid, sbr_pid());
    LocalFree(sd);
    *out = os;
    return 0;
fail:
    if (sd != NULL)
        LocalFree(sd);
    close_handles(os);
    unregister(os);
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
    DWORD got;
    if (os->consumer_claimed)
        return 1;
    if (os->ring.consumer == NULL)
        return 0;
    got = WaitForSingleObject(os->ring.consumer, 0);
    if (got != WAIT_OBJECT_0 && got != WAIT_ABANDONED)
        return 0;
    os->consumer_claimed = 1;
    return 1;
}

void sb_fm__os_consumer_release(sb_fm_os *os)
{
    if (!os->consumer_claimed)
        return;
    ReleaseMutex(os->ring.consumer);
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
    /* SetThreadDescription (Windows 10 1607 and later), looked up so that
     * older systems start too. */
    typedef HRESULT(WINAPI * set_fn)(HANDLE, PCWSTR);
    HMODULE k = GetModuleHandleW(L"kernel32.dll");
    set_fn set = k != NULL ? (set_fn)(void (*)(void))GetProcAddress(k, "SetThreadDescription")
                           : NULL;
    wchar_t *w = sb_utf8_to_wide(name);
    if (set != NULL && w != NULL)
        set(GetCurrentThread(), w);
    sb_free(w);
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
    close_handles(os);
    unregister(os);
    sb_free(os);
}
