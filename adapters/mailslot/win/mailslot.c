/*
 * Mailslot adapter (Windows). `path` makes a server: the broker creates the
 * local mailslot \\.\mailslot\NAME (with the configured security descriptor)
 * and a reader thread publishes every message written to it, one message per
 * mailslot message. `connect` makes a sink: a writer thread writes each
 * delivery as one message to \\.\mailslot\NAME, \\HOST\mailslot\NAME,
 * \\DOMAIN\mailslot\NAME or \\*\mailslot\NAME.
 *
 * Mailslots are fire-and-forget. A writer learns nothing about delivery, so a
 * sink delivery is acknowledged once WriteFile succeeded; a missing target
 * (ERROR_FILE_NOT_FOUND) is a failed attempt, retried by the route. The sink
 * opens its target lazily and lets go of it whenever it is idle, so a reader
 * that restarts is found again. A reader cannot push back, so a message the
 * broker refuses (queue full, store refusing writes) is logged and counted
 * as dropped. The reader does stop reading while `inflight` messages await
 * their commit: what arrives meanwhile waits in the mailslot itself; on a
 * stop, what is already in the mailslot is read out and published rather
 * than lost with it.
 *
 * Messages sent over the network (to a host, a domain or `*`) are datagrams
 * of at most 424 bytes. A computer name and a domain name look alike, so the
 * limit applies to every target that is not local: a longer delivery is
 * nacked with the reason (and ends in the dead-letter queue after its
 * retries), never truncated.
 *
 * Threads: both threads block in the kernel and talk to the loop only
 * through an sb_inbox. The reader blocks in ReadFile with a read timeout
 * (READ_POLL_MS) so that it notices a stop: a blocked mailslot read cannot be
 * woken otherwise (Wine implements neither overlapped mailslot reads nor
 * CancelSynchronousIo). stop() joins it, holding the loop for at most that
 * long, so the mailslot's name is free again when stop() returns (a reload
 * recreates it at once). The writer blocks in CreateFileW, which for a
 * remote target may resolve a name, and WriteFile, so stop() does not wait
 * for it: its last post is its exit, after which the loop joins it and
 * completes the stop. The sink writes from a thread rather than from the
 * loop for that reason: a local write returns at once, but the loop must
 * never wait on a network name.
 */
#include "adapters/stream_keys.h"
#include "service/adapter.h"
#include "adapters/protocol/raw.h"
#include "service/alloc.h"
#include "service/broker.h"
#include "service/inbox.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <windows.h>

#include <sddl.h>

#define LOCAL_PREFIX "\\\\.\\mailslot\\"
#define KEYWORD "\\mailslot\\"
/* The most a mailslot message sent over the network can carry. */
#define NETWORK_MAX 424
/* How long the reader's ReadFile waits before it looks at the stop flag. */
#define READ_POLL_MS 100
/* After an unexpected read error, the reader waits this long before trying
 * again (a persistent error must not spin). */
#define READ_ERROR_PAUSE_MS 1000
/* SYSTEM and Administrators: all; the interactive user: read and write. No
 * network or anonymous access. */
#define DEFAULT_SDDL L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;IU)"

/* A message read by the reader thread, on its way to the loop. */
typedef struct ms_read {
    struct ms_adapter *m;
    unsigned char *data; /* sb_malloc'ed; becomes the message's payload */
    size_t len;
} ms_read;

/* A delivery on its way through the writer thread and back. */
typedef struct ms_write {
    sb_delivery *d;
    int status;
    char reason[320];
    struct ms_write *next;
} ms_write;

typedef struct ms_adapter {
    sb_adapter base;
    int is_server;
    int network; /* sink: the target is not local (424-byte limit) */
    char *path;  /* full path, UTF-8 (logs, the publish source) */
    wchar_t *wpath;
    char *topic;         /* server: the expanded topic template */
    char *source;        /* server: "adapter \\.\mailslot\name" */
    HANDLE slot;         /* server: the mailslot; the reader thread reads it */
    unsigned char *rbuf; /* server: the reader's buffer, max_message + 1 bytes */
    sb_inbox *inbox;
    uv_thread_t thread;
    int thread_started;
    int sync_init;
    uv_mutex_t lock;
    uv_cond_t cond;
    sb_adapter_stopped_cb stopped_cb;

    /* under lock */
    int quit;
    int pending;           /* server: read, not yet committed or refused */
    int max_pending;       /* server: cfg->inflight */
    ms_write *head, *tail; /* sink: deliveries waiting for the writer */

    /* loop thread only */
    int publishing;   /* server: publish callbacks still to come */
    int destroyed;    /* destroy ran while publish callbacks were outstanding */
    uint64_t dropped; /* server: messages lost (refused, too large, out of memory) */
} ms_adapter;

/* ---- names ---- */

static int prefix_icase(const char *s, const char *prefix)
{
    for (; *prefix != '\0'; s++, prefix++) {
        int a = (unsigned char)*s, b = (unsigned char)*prefix;
        if (a >= 'A' && a <= 'Z')
            a += 'a' - 'A';
        if (b >= 'A' && b <= 'Z')
            b += 'a' - 'A';
        if (a != b)
            return 0;
    }
    return 1;
}

/* The full path of the adapter's mailslot (new string in *out), whether it is
 * a network target, and where the mailslot name starts in it. The config
 * schema reports these errors with their position; this is the same rule. */
static int parse_target(const sb_adapter_config *cfg, char **out, int *network, size_t *name_off,
                        sb_error *err)
{
    const char *s = SB_STREAM_CFG(cfg)->path != NULL ? SB_STREAM_CFG(cfg)->path : SB_STREAM_CFG(cfg)->connect;
    size_t off;
    char *full;

    *out = NULL;
    *network = 0;
    if (s == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "mailslot needs path (server) or connect (sink)");
    if (s[0] == '\\') {
        const char *end = strncmp(s, "\\\\", 2) == 0 ? strchr(s + 2, '\\') : NULL;
        if (end == NULL || end == s + 2 || !prefix_icase(end, KEYWORD) ||
            end[strlen(KEYWORD)] == '\0')
            return sb_error_set(err, SB_ECONFIG, 0,
                                "%s %s is not a mailslot name or \\\\SERVER\\mailslot\\NAME path",
                                SB_STREAM_CFG(cfg)->path != NULL ? "path" : "connect", s);
        *network = !(end - s == 3 && s[2] == '.');
        if (SB_STREAM_CFG(cfg)->path != NULL && *network)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "path %s: a mailslot server can only create a local mailslot "
                                "(\\\\.\\mailslot\\NAME)",
                                s);
        off = (size_t)(end - s) + strlen(KEYWORD);
        full = sb_strdup(s);
    } else {
        if (s[0] == '\0')
            return sb_error_set(err, SB_ECONFIG, 0, "the mailslot name is empty");
        off = strlen(LOCAL_PREFIX);
        full = sb_malloc(off + strlen(s) + 1);
        if (full != NULL) {
            memcpy(full, LOCAL_PREFIX, off);
            memcpy(full + off, s, strlen(s) + 1);
        }
    }
    if (full == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = full;
    if (name_off != NULL)
        *name_off = off;
    return 0;
}

/* ---- lifecycle shared by both roles ---- */

static int ms_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    ms_adapter *m = sb_calloc(1, sizeof(*m));
    if (m == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    m->is_server = SB_STREAM_CFG(cfg)->path != NULL;
    m->slot = INVALID_HANDLE_VALUE;
    *out = &m->base;
    return 0;
}

/* Formats "CALL OBJECT: system message (error N)" into out. */
static void win_reason(char *out, size_t n, const char *what, const char *path, DWORD code)
{
    char text[256];
    sb_win_strerror(code, text, sizeof(text));
    snprintf(out, n, "%s %s: %s", what, path, text);
}

/* Thread side: posts fn(arg) to the loop. Only running out of memory can
 * make a post fail (the loop closes the inbox only once the thread is
 * gone): then try again shortly. */
static void post_retry(ms_adapter *m, sb_inbox_fn fn, void *arg)
{
    while (sb_inbox_post(m->inbox, fn, arg) == SB_ENOMEM)
        Sleep(10);
}

static void free_adapter(ms_adapter *m)
{
    if (m->sync_init) {
        uv_cond_destroy(&m->cond);
        uv_mutex_destroy(&m->lock);
    }
    sb_free(m->path);
    sb_free(m->wpath);
    sb_free(m->topic);
    sb_free(m->source);
    sb_free(m->rbuf);
    sb_free(m);
}

/* Loop thread, the worker thread gone: closes what is left and reports the
 * stop. */
static void finish_stop(ms_adapter *m)
{
    if (m->slot != INVALID_HANDLE_VALUE) {
        CloseHandle(m->slot);
        m->slot = INVALID_HANDLE_VALUE;
    }
    /* Deliveries the writer never took are left to the broker: once this
     * adapter has stopped it detaches them, and they return to their queue
     * without counting as a failed attempt. */
    while (m->head != NULL) {
        ms_write *w = m->head;
        m->head = w->next;
        sb_free(w);
    }
    m->tail = NULL;
    if (m->inbox != NULL) {
        sb_inbox_close(m->inbox); /* runs what the thread posted last */
        m->inbox = NULL;
    }
    m->stopped_cb(&m->base);
}

/* Loop thread: the writer posted its exit, after everything else it posted. */
static void on_writer_exit(void *arg)
{
    ms_adapter *m = arg;
    uv_thread_join(&m->thread);
    m->thread_started = 0;
    finish_stop(m);
}

static void ms_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    ms_adapter *m = (ms_adapter *)a;
    m->stopped_cb = cb;
    if (m->thread_started) {
        uv_mutex_lock(&m->lock);
        m->quit = 1;
        uv_cond_broadcast(&m->cond);
        uv_mutex_unlock(&m->lock);
        if (!m->is_server)
            return; /* the writer may be in a slow remote open: on_writer_exit */
        /* The reader notices within READ_POLL_MS. Waiting for it here frees
         * the mailslot's name before stop returns, so that a reload can
         * create it again at once. */
        uv_thread_join(&m->thread);
        m->thread_started = 0;
    }
    finish_stop(m);
}

static void ms_destroy(sb_adapter *a)
{
    ms_adapter *m = (ms_adapter *)a;
    if (m->publishing > 0) {
        m->destroyed = 1; /* the last publish callback frees it */
        return;
    }
    free_adapter(m);
}

/* Creates the inbox, the lock and the thread. */
static int start_thread(ms_adapter *m, uv_thread_cb fn, sb_error *err)
{
    int rc;
    if (sb_inbox_new(&m->inbox, m->base.loop) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", m->base.name);
    if (uv_mutex_init(&m->lock) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a lock", m->base.name);
    if (uv_cond_init(&m->cond) != 0) {
        uv_mutex_destroy(&m->lock);
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a condition",
                            m->base.name);
    }
    m->sync_init = 1;
    rc = uv_thread_create(&m->thread, fn, m);
    if (rc != 0)
        return sb_error_set(err, SB_EIO, 0, "adapter %s: cannot start a thread: %s", m->base.name,
                            uv_strerror(rc));
    m->thread_started = 1;
    return 0;
}

/* ---- server: the reader thread and publishing ---- */

/* Loop thread: one fewer message awaits its commit; the reader may go on. */
static void release_pending(ms_adapter *m)
{
    uv_mutex_lock(&m->lock);
    m->pending--;
    uv_cond_signal(&m->cond);
    uv_mutex_unlock(&m->lock);
}

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    ms_adapter *m = ctx;
    (void)id;
    (void)queues;
    m->publishing--;
    if (m->destroyed) {
        if (m->publishing == 0)
            free_adapter(m);
        return;
    }
    if (status != 0) {
        m->dropped++;
        sb_log(SB_LOG_ERROR, m->base.name,
               "message from %s not committed: %s (%llu dropped so far)", m->path,
               why != NULL ? why : sb_strerror(status), (unsigned long long)m->dropped);
    }
    release_pending(m);
}

/* Loop thread: publishes one message the reader read. */
static void on_read(void *arg)
{
    ms_read *r = arg;
    ms_adapter *m = r->m;
    sb_publish_opts opts = {m->source, 0, NULL};
    sb_message *msg = sb_message_new_owned(m->topic, r->data, r->len);
    sb_error err;

    sb_free(r);
    if (msg == NULL) {
        m->dropped++;
        sb_log(SB_LOG_ERROR, m->base.name, "message from %s dropped: out of memory", m->path);
        release_pending(m);
        return;
    }
    if (sb_broker_publish(m->base.broker, msg, &opts, on_published, m, &err) != 0) {
        /* A mailslot writer cannot be told to slow down: the message is lost. */
        m->dropped++;
        sb_log(SB_LOG_ERROR, m->base.name, "message from %s dropped: %s (%llu dropped so far)",
               m->path, err.msg, (unsigned long long)m->dropped);
        release_pending(m);
    } else {
        m->publishing++;
    }
    sb_message_unref(msg);
}

/* Loop thread: the reader discarded a message larger than max_message
 * (r->len: its size, 0 if unknown). */
static void on_too_big(void *arg)
{
    ms_read *r = arg;
    ms_adapter *m = r->m;
    char size[48] = "";
    m->dropped++;
    if (r->len > 0)
        snprintf(size, sizeof(size), " (%zu bytes)", r->len);
    sb_log(SB_LOG_ERROR, m->base.name,
           "message from %s is larger than max_message %lld: dropped%s (%llu dropped so far)",
           m->path, (long long)SB_STREAM_CFG(m->base.cfg)->max_message, size, (unsigned long long)m->dropped);
    sb_free(r);
}

/* Reader thread: reports a dropped oversized message to the loop. */
static void post_too_big(ms_adapter *m, size_t len)
{
    ms_read *r = sb_calloc(1, sizeof(*r));
    if (r == NULL)
        return;
    r->m = m;
    r->len = len;
    post_retry(m, on_too_big, r);
}

/* Reader thread: waits while `inflight` messages await their commit.
 * Returns 0 to go on reading, -1 to quit. */
static int wait_for_room(ms_adapter *m)
{
    int quit;
    uv_mutex_lock(&m->lock);
    while (!m->quit && m->pending >= m->max_pending)
        uv_cond_wait(&m->cond, &m->lock);
    quit = m->quit;
    uv_mutex_unlock(&m->lock);
    return quit ? -1 : 0;
}

/* Reader thread: waits up to ms for a stop. Returns 1 if stopping. */
static int pause_unless_quit(ms_adapter *m, unsigned ms)
{
    int quit;
    uv_mutex_lock(&m->lock);
    if (!m->quit)
        (void)uv_cond_timedwait(&m->cond, &m->lock, (uint64_t)ms * 1000000u);
    quit = m->quit;
    uv_mutex_unlock(&m->lock);
    return quit;
}

static int quitting(ms_adapter *m)
{
    int quit;
    uv_mutex_lock(&m->lock);
    quit = m->quit;
    uv_mutex_unlock(&m->lock);
    return quit;
}

/* Reader thread: the next message does not fit the buffer. Reads it into a
 * scratch buffer to take it out of the mailslot and reports it dropped. */
static void discard_next(ms_adapter *m)
{
    DWORD next = 0, count = 0, n = 0;
    unsigned char *scratch;
    char reason[512];

    if (!GetMailslotInfo(m->slot, NULL, &next, &count, NULL)) {
        win_reason(reason, sizeof(reason), "GetMailslotInfo", m->path, GetLastError());
        sb_log(SB_LOG_ERROR, m->base.name, "%s", reason);
        pause_unless_quit(m, READ_ERROR_PAUSE_MS);
        return;
    }
    if (next == MAILSLOT_NO_MESSAGE)
        return;
    scratch = sb_malloc(next);
    if (scratch == NULL) {
        pause_unless_quit(m, READ_ERROR_PAUSE_MS);
        return;
    }
    (void)ReadFile(m->slot, scratch, next, &n, NULL);
    sb_free(scratch);
    post_too_big(m, next);
}

/* Reader thread: reads one message (waiting at most READ_POLL_MS) and hands
 * it to the loop. Returns 0, or the Windows error of the read. */
static DWORD read_one(ms_adapter *m)
{
    size_t max = (size_t)SB_STREAM_CFG(m->base.cfg)->max_message;
    DWORD n = 0;
    ms_read *r;

    /* One byte more than max_message: Windows fails a read into a buffer
     * too small for the message (ERROR_INSUFFICIENT_BUFFER), Wine truncates
     * it; either way an oversized message is noticed and dropped, never
     * published truncated. */
    if (!ReadFile(m->slot, m->rbuf, (DWORD)max + 1, &n, NULL))
        return GetLastError();
    if (n > max) {
        post_too_big(m, 0);
        return 0;
    }
    r = sb_calloc(1, sizeof(*r));
    if (r == NULL || (r->data = sb_malloc(n)) == NULL) {
        sb_free(r);
        sb_log(SB_LOG_ERROR, m->base.name, "message of %lu bytes from %s dropped: out of memory",
               (unsigned long)n, m->path);
        return 0;
    }
    memcpy(r->data, m->rbuf, n);
    r->len = n;
    r->m = m;
    uv_mutex_lock(&m->lock);
    m->pending++;
    uv_mutex_unlock(&m->lock);
    post_retry(m, on_read, r);
    return 0;
}

/* Reader thread, stopping: the messages already in the mailslot would die
 * with it, so they are read out (without waiting for more) and handed over
 * like any other; the loop publishes them while the adapter stops. */
static void drain(ms_adapter *m)
{
    DWORD next = 0, count = 0;
    if (!GetMailslotInfo(m->slot, NULL, &next, &count, NULL))
        return;
    while (count-- > 0 && next != MAILSLOT_NO_MESSAGE) {
        DWORD code = read_one(m);
        if (code == ERROR_INSUFFICIENT_BUFFER)
            discard_next(m);
        else if (code != 0)
            break;
        if (!GetMailslotInfo(m->slot, NULL, &next, NULL, NULL))
            break;
    }
}

static void reader_main(void *arg)
{
    ms_adapter *m = arg;
    DWORD last_error = 0;

    while (wait_for_room(m) == 0) {
        DWORD code = read_one(m);
        if (code == 0) {
            last_error = 0;
            continue;
        }
        if (code == ERROR_SEM_TIMEOUT) {
            last_error = 0;
            continue; /* nothing within READ_POLL_MS: look at the stop flag */
        }
        if (code == ERROR_INSUFFICIENT_BUFFER) {
            discard_next(m);
            continue;
        }
        if (code == ERROR_BROKEN_PIPE && last_error != code) {
            /* Wine reports a zero-length message this way (Windows reads it
             * as 0 bytes); it cannot be told from an empty write, so it is
             * skipped. A repeat is treated as a real error below. */
            last_error = code;
            sb_log(SB_LOG_DEBUG, m->base.name, "empty read on %s (error 109) skipped", m->path);
            continue;
        }
        if (quitting(m))
            break;
        if (code != last_error) {
            char reason[512];
            win_reason(reason, sizeof(reason), "ReadFile", m->path, code);
            sb_log(SB_LOG_ERROR, m->base.name, "%s; retrying every %d ms", reason,
                   READ_ERROR_PAUSE_MS);
            last_error = code;
        }
        pause_unless_quit(m, READ_ERROR_PAUSE_MS);
    }
    drain(m);
}

static int server_start(ms_adapter *m, size_t name_off, sb_error *err)
{
    const sb_adapter_config *cfg = m->base.cfg;
    wchar_t *wsddl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    SECURITY_ATTRIBUTES sa;
    char text[256];
    DWORD code;

    size_t n = strlen(m->base.name) + strlen(m->path) + 2;

    m->topic = sb_raw_topic(SB_STREAM_CFG(cfg)->topic, m->base.name, m->path + name_off);
    m->source = sb_malloc(n);
    m->rbuf = sb_malloc((size_t)SB_STREAM_CFG(cfg)->max_message + 1);
    if (m->topic == NULL || m->source == NULL || m->rbuf == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", m->base.name);
    snprintf(m->source, n, "%s %s", m->base.name, m->path);
    m->max_pending = cfg->inflight > 0 ? cfg->inflight : 64;

    if (SB_STREAM_CFG(cfg)->security != NULL && (wsddl = sb_utf8_to_wide(SB_STREAM_CFG(cfg)->security)) == NULL)
        return sb_error_set(err, SB_ECONFIG, 0,
                            "adapter %s: security is not valid UTF-8 (or out of memory)",
                            m->base.name);
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(wsddl != NULL ? wsddl : DEFAULT_SDDL,
                                                              SDDL_REVISION_1, &sd, NULL)) {
        code = GetLastError();
        sb_free(wsddl);
        sb_win_strerror(code, text, sizeof(text));
        return sb_error_set(
            err, SB_ECONFIG, (int)code, "adapter %s: invalid security descriptor (SDDL) \"%s\": %s",
            m->base.name, SB_STREAM_CFG(cfg)->security != NULL ? SB_STREAM_CFG(cfg)->security : "(default)", text);
    }
    sb_free(wsddl);
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    /* No size limit on the mailslot itself: Wine would truncate longer
     * messages to it silently. The reader drops them instead (above). */
    m->slot = CreateMailslotW(m->wpath, 0, READ_POLL_MS, &sa);
    code = GetLastError();
    LocalFree(sd);
    if (m->slot == INVALID_HANDLE_VALUE) {
        sb_win_strerror(code, text, sizeof(text));
        if (code == ERROR_ALREADY_EXISTS)
            return sb_error_set(err, SB_EEXIST, (int)code,
                                "adapter %s: cannot create mailslot %s: it already exists "
                                "(another broker or program owns it): %s",
                                m->base.name, m->path, text);
        return sb_error_set(err, sb_error_from_win32(code), (int)code,
                            "adapter %s: cannot create mailslot %s: %s", m->base.name, m->path,
                            text);
    }
    return start_thread(m, reader_main, err);
}

/* ---- sink: the writer thread ---- */

/* Loop thread: the writer is done with one delivery. */
static void on_written(void *arg)
{
    ms_write *w = arg;
    sb_delivery_done(w->d, w->status, w->status == 0 ? NULL : w->reason);
    sb_free(w);
}

/* Writer thread: logs a failure the first time it happens (not once per
 * delivery while a target stays missing), and the recovery. */
static void note_result(ms_adapter *m, DWORD *last, DWORD code, const char *reason)
{
    if (code == *last)
        return;
    if (code == 0)
        sb_log(SB_LOG_INFO, m->base.name, "writing to mailslot %s again", m->path);
    else
        sb_log(SB_LOG_WARN, m->base.name, "%s (deliveries are retried with backoff)", reason);
    *last = code;
}

static void writer_main(void *arg)
{
    ms_adapter *m = arg;
    HANDLE h = INVALID_HANDLE_VALUE;
    DWORD last = 0;

    for (;;) {
        ms_write *w;
        const sb_message *msg;
        DWORD n = 0, code = 0;

        uv_mutex_lock(&m->lock);
        if (m->head == NULL && h != INVALID_HANDLE_VALUE) {
            /* Idle: let go of the target. Wine keeps a mailslot alive while
             * a writer holds it (its reader could not create it again
             * after a restart), and a fresh open notices a reader that
             * went away (ERROR_FILE_NOT_FOUND: retried). */
            uv_mutex_unlock(&m->lock);
            CloseHandle(h);
            h = INVALID_HANDLE_VALUE;
            uv_mutex_lock(&m->lock);
        }
        while (!m->quit && m->head == NULL)
            uv_cond_wait(&m->cond, &m->lock);
        if (m->quit) {
            uv_mutex_unlock(&m->lock);
            break;
        }
        w = m->head;
        m->head = w->next;
        if (m->head == NULL)
            m->tail = NULL;
        uv_mutex_unlock(&m->lock);

        msg = w->d->msg;
        if (h == INVALID_HANDLE_VALUE) {
            /* Opened on first use, again after an error and after an idle
             * spell: the reader may come and go. */
            h = CreateFileW(m->wpath, GENERIC_WRITE, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                            FILE_ATTRIBUTE_NORMAL, NULL);
            if (h == INVALID_HANDLE_VALUE) {
                code = GetLastError();
                win_reason(w->reason, sizeof(w->reason), "cannot open mailslot", m->path, code);
            }
        }
        if (h != INVALID_HANDLE_VALUE) {
            if (!WriteFile(h, msg->payload, (DWORD)msg->payload_len, &n, NULL)) {
                code = GetLastError();
                win_reason(w->reason, sizeof(w->reason), "cannot write to mailslot", m->path, code);
            } else if (n != msg->payload_len) {
                code = ERROR_WRITE_FAULT;
                snprintf(w->reason, sizeof(w->reason),
                         "short write to mailslot %s (%lu of %zu bytes)", m->path, (unsigned long)n,
                         msg->payload_len);
            }
            if (code != 0) {
                CloseHandle(h);
                h = INVALID_HANDLE_VALUE;
            }
        }
        w->status = code == 0 ? 0 : sb_error_from_win32(code);
        note_result(m, &last, code, w->reason);
        post_retry(m, on_written, w);
    }
    if (h != INVALID_HANDLE_VALUE)
        CloseHandle(h);
    post_retry(m, on_writer_exit, m);
}

static int ms_deliver(sb_adapter *a, sb_delivery *d)
{
    ms_adapter *m = (ms_adapter *)a;
    size_t limit = (size_t)SB_STREAM_CFG(a->cfg)->max_message;
    ms_write *w;
    char reason[320];

    if (m->is_server || !m->thread_started || a->stopping)
        return SB_EBUSY;
    if (m->network && limit > NETWORK_MAX)
        limit = NETWORK_MAX;
    if (d->msg->payload_len > limit) {
        if (m->network && limit == NETWORK_MAX)
            snprintf(reason, sizeof(reason),
                     "payload of %zu bytes is larger than %d bytes, the most a mailslot message "
                     "sent over the network (%s) can carry; mailslot messages are never "
                     "truncated",
                     d->msg->payload_len, NETWORK_MAX, m->path);
        else
            snprintf(reason, sizeof(reason),
                     "payload of %zu bytes is larger than max_message (%zu bytes) of mailslot %s",
                     d->msg->payload_len, limit, m->path);
        sb_log(SB_LOG_ERROR, a->name, "message %llu on %s refused (attempt %d): %s",
               (unsigned long long)d->msg->id, d->sub, d->attempt, reason);
        sb_delivery_done(d, SB_ETOOBIG, reason);
        return 0;
    }
    w = sb_calloc(1, sizeof(*w));
    if (w == NULL) {
        sb_delivery_done(d, SB_ENOMEM, "out of memory");
        return 0;
    }
    w->d = d;
    uv_mutex_lock(&m->lock);
    if (m->tail != NULL)
        m->tail->next = w;
    else
        m->head = w;
    m->tail = w;
    uv_cond_signal(&m->cond);
    uv_mutex_unlock(&m->lock);
    return 0;
}

/* ---- start ---- */

static int ms_start(sb_adapter *a, sb_error *err)
{
    ms_adapter *m = (ms_adapter *)a;
    size_t name_off = 0;
    int rc = parse_target(a->cfg, &m->path, &m->network, &name_off, err);

    if (rc != 0) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        return sb_error_set(err, rc, 0, "adapter %s: %s", a->name, msg);
    }
    m->wpath = sb_utf8_to_wide(m->path);
    if (m->wpath == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: mailslot %s is not valid UTF-8",
                            a->name, m->path);
    if (m->is_server) {
        if ((rc = server_start(m, name_off, err)) != 0)
            return rc;
        sb_log(SB_LOG_INFO, a->name, "reading mailslot %s", m->path);
        return 0;
    }
    if ((rc = start_thread(m, writer_main, err)) != 0)
        return rc;
    if (m->network)
        sb_log(SB_LOG_INFO, a->name,
               "writing to mailslot %s (a network target: at most %d bytes per message)", m->path,
               NETWORK_MAX);
    else
        sb_log(SB_LOG_INFO, a->name, "writing to mailslot %s", m->path);
    return 0;
}

static unsigned ms_caps_of(const sb_adapter_config *cfg)
{
    return SB_CAP_THREAD | (SB_STREAM_CFG(cfg)->path != NULL ? SB_CAP_SOURCE : SB_CAP_SINK);
}

const sb_adapter_type sb_adapter_mailslot = {
    .version = SB_ADAPTER_VERSION,
    .name = "mailslot",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK | SB_CAP_THREAD,
    .caps_of = ms_caps_of,
    .create = ms_create,
    .start = ms_start,
    .deliver = ms_deliver,
    .stop = ms_stop,
    .destroy = ms_destroy,
};
