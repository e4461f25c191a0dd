/*
 * The relay's connection to the broker (com_int.h): one named pipe to the
 * broker's com endpoint for the whole process, speaking jsonl.
 *
 * Callers send requests with an id and wait for the reply with that id;
 * many may be in flight at once (replies come back in order, but matching
 * by id keeps nothing order-dependent). Deliveries ("msg" lines) go to the
 * subscription they name. The reader thread owns the pipe: it connects
 * when a caller asks (or, with backoff, while a subscription wants to be
 * attached), says ping to learn the account the broker sees and its
 * max_message, reads, and closes the pipe when it breaks; writers only
 * mark it broken. Every connection has a generation number, so that acks
 * for deliveries of an earlier connection are never sent on a later one
 * (the broker gave those back when the first one closed).
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"
#include "tools/client/client.h"
#include "tools/client/linebuf.h"

#include <stdio.h>
#include <string.h>

#define CONNECT_BUSY_WAIT_MS 2000
#define HELLO_TIMEOUT_MS 10000
#define WRITE_TIMEOUT_MS 30000
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000
#define READ_CHUNK 65536
#define NEVER INT64_MAX

typedef struct pending {
    int64_t id;
    uint64_t gen;
    int sync;
    int done;
    json_t *reply;
    sb_error err;
    sb_com_reply_fn fn;
    void *ctx;
    struct pending *next;
} pending;

struct sb_com_link {
    CRITICAL_SECTION cs; /* everything below but the write side */
    CONDITION_VARIABLE cv;
    CRITICAL_SECTION wcs; /* one write at a time; held while h is written */
    HANDLE wev;           /* the write's completion event (under wcs) */
    HANDLE wake;          /* auto-reset: the reader has something to do */
    HANDLE thread;
    DWORD thread_id;
    int self_free; /* stopped from its own reader: it frees the link on exit */
    char *display;
    wchar_t *wname;
    HANDLE h; /* INVALID_HANDLE_VALUE while down */
    uint64_t gen, last_gen;
    int broken; /* a write failed: the reader closes h */
    int stopping;
    int connect_asked;
    unsigned long attempts; /* connect attempts finished */
    sb_error last_err;
    int wanted;
    int64_t retry_at, backoff_ms;
    char *user;
    size_t max_message;
    int64_t next_id;
    pending *pend;
    sb_com_sub **subs;
    size_t nsubs, subs_cap;
    int64_t tick_at;
};

int64_t sb_com_now_ms(void)
{
    return (int64_t)GetTickCount64();
}

/* ---- writing ---- */

static void mark_broken(sb_com_link *l, uint64_t gen)
{
    EnterCriticalSection(&l->cs);
    if (l->gen == gen && !l->broken) {
        l->broken = 1;
        CancelIoEx(l->h, NULL);
    }
    LeaveCriticalSection(&l->cs);
    SetEvent(l->wake);
}

static int write_all(sb_com_link *l, uint64_t gen, const char *buf, size_t len, sb_error *err)
{
    HANDLE h;
    int rc = 0;
    EnterCriticalSection(&l->wcs);
    EnterCriticalSection(&l->cs);
    h = l->gen == gen && !l->broken ? l->h : INVALID_HANDLE_VALUE;
    LeaveCriticalSection(&l->cs);
    if (h == INVALID_HANDLE_VALUE) {
        LeaveCriticalSection(&l->wcs);
        return sb_error_set(err, SB_ECLOSED, 0, "the connection to the broker (%s) was lost",
                            l->display);
    }
    while (len > 0) {
        OVERLAPPED ov;
        DWORD n = 0, chunk = len > 0x40000000u ? 0x40000000u : (DWORD)len, code;
        memset(&ov, 0, sizeof ov);
        ov.hEvent = l->wev;
        ResetEvent(l->wev);
        if (WriteFile(h, buf, chunk, &n, &ov)) {
            buf += n; /* done at once: no wait */
            len -= n;
            continue;
        }
        if ((code = GetLastError()) != ERROR_IO_PENDING) {
            char text[200];
            sb_win_strerror(code, text, sizeof text);
            rc = sb_error_set(err, SB_ECLOSED, (int)code, "writing to the broker (%s): %s",
                              l->display, text);
            break;
        }
        if (WaitForSingleObject(l->wev, WRITE_TIMEOUT_MS) != WAIT_OBJECT_0) {
            CancelIoEx(h, &ov);
            GetOverlappedResult(h, &ov, &n, TRUE);
            rc = sb_error_set(err, SB_ETIMEDOUT, 0,
                              "the broker (%s) took no data for %d ms; connection closed",
                              l->display, WRITE_TIMEOUT_MS);
            break;
        }
        if (!GetOverlappedResult(h, &ov, &n, FALSE)) {
            char text[200];
            code = GetLastError();
            sb_win_strerror(code, text, sizeof text);
            rc = sb_error_set(err, SB_ECLOSED, (int)code, "writing to the broker (%s): %s",
                              l->display, text);
            break;
        }
        buf += n;
        len -= n;
    }
    LeaveCriticalSection(&l->wcs);
    if (rc != 0)
        mark_broken(l, gen);
    return rc;
}

/* The line for req (with its "id"); refuses one the broker would take for
 * a broken framing (longer than its line limit). */
static char *line_of(sb_com_link *l, json_t *req, size_t *out_len, sb_error *err)
{
    char *text = json_dumps(req, JSON_COMPACT), *line;
    size_t n, limit;
    if (text == NULL) {
        sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        return NULL;
    }
    n = strlen(text);
    EnterCriticalSection(&l->cs);
    limit = l->max_message > 0 ? l->max_message * 2 + 65536 : (size_t)-1;
    LeaveCriticalSection(&l->cs);
    if (n > limit) {
        free(text);
        sb_error_set(err, SB_ETOOBIG, 0,
                     "request of %zu bytes is longer than the broker accepts on %s (%zu)", n,
                     l->display, limit);
        return NULL;
    }
    line = sb_malloc(n + 1);
    if (line == NULL) {
        free(text);
        sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        return NULL;
    }
    memcpy(line, text, n);
    line[n] = '\n';
    free(text);
    *out_len = n + 1;
    return line;
}

/* ---- connecting ---- */

/* Waits (at most until deadline) for a connection, asking the reader for
 * one. Returns its generation, or 0 with err set. */
static uint64_t ensure_up(sb_com_link *l, int64_t deadline, sb_error *err)
{
    uint64_t gen = 0;
    EnterCriticalSection(&l->cs);
    for (;;) {
        unsigned long asked = l->attempts;
        if (l->gen != 0 && !l->broken) {
            gen = l->gen;
            break;
        }
        if (l->stopping) {
            sb_error_set(err, SB_ESHUTDOWN, 0, "the COM server is stopping");
            break;
        }
        l->connect_asked = 1;
        SetEvent(l->wake);
        while (l->attempts == asked && !(l->gen != 0 && !l->broken) && !l->stopping) {
            int64_t left = deadline - sb_com_now_ms();
            if (left <= 0)
                break;
            SleepConditionVariableCS(&l->cv, &l->cs, (DWORD)left);
        }
        if (l->gen != 0 && !l->broken)
            continue;
        if (l->attempts != asked) {
            *err = l->last_err;
            break;
        }
        if (deadline - sb_com_now_ms() <= 0) {
            sb_error_set(err, SB_ETIMEDOUT, 0, "no connection to the broker (%s) in time",
                         l->display);
            break;
        }
    }
    LeaveCriticalSection(&l->cs);
    return gen;
}

/* Reads lines from h until one is a pong (the hello), at most timeout. */
static int hello(sb_com_link *l, HANDLE h, sb_linebuf *lb, char **user, size_t *max_message,
                 sb_error *err)
{
    static const char ping[] = "{\"op\":\"ping\",\"id\":0}\n";
    OVERLAPPED ov;
    HANDLE ev = CreateEventW(NULL, TRUE, FALSE, NULL);
    int64_t deadline = sb_com_now_ms() + HELLO_TIMEOUT_MS;
    DWORD n;
    int rc = 0;

    if (ev == NULL)
        return sb_error_set(err, SB_ENOMEM, (int)GetLastError(), "cannot create an event");
    memset(&ov, 0, sizeof ov);
    ov.hEvent = ev;
    if ((!WriteFile(h, ping, (DWORD)(sizeof ping - 1), NULL, &ov) &&
         GetLastError() != ERROR_IO_PENDING) ||
        WaitForSingleObject(ev, HELLO_TIMEOUT_MS) != WAIT_OBJECT_0 ||
        !GetOverlappedResult(h, &ov, &n, FALSE)) {
        CancelIoEx(h, &ov);
        CloseHandle(ev);
        return sb_error_set(err, SB_ECLOSED, (int)GetLastError(),
                            "the broker (%s) closed the connection at once", l->display);
    }
    for (;;) {
        char *line, *buf;
        size_t len, avail;
        int got = sb_linebuf_next(lb, &line, &len);
        if (got == 1) {
            json_t *o = json_loadb(line, len, 0, NULL);
            const char *op = json_string_value(json_object_get(o, "op"));
            if (op != NULL && strcmp(op, "pong") == 0) {
                const char *u = json_string_value(json_object_get(o, "user"));
                json_int_t mm = json_integer_value(json_object_get(o, "max_message"));
                *user = u != NULL ? sb_strdup(u) : NULL;
                *max_message = mm > 0 ? (size_t)mm : 1048576;
                json_decref(o);
                break;
            }
            if (op != NULL && strcmp(op, "error") == 0) {
                sb_client_reply_error(o, err);
                rc = err->code;
                json_decref(o);
                break;
            }
            json_decref(o);
            continue;
        }
        if (got < 0 || sb_linebuf_reserve(lb, &buf, &avail) != 0) {
            rc = sb_error_set(err, SB_EPROTO, 0, "the broker (%s) sent a line too long",
                              l->display);
            break;
        }
        memset(&ov, 0, sizeof ov);
        ov.hEvent = ev;
        ResetEvent(ev);
        if ((!ReadFile(h, buf, (DWORD)(avail > READ_CHUNK ? READ_CHUNK : avail), NULL, &ov) &&
             GetLastError() != ERROR_IO_PENDING)) {
            rc = sb_error_set(err, SB_ECLOSED, (int)GetLastError(),
                              "the broker (%s) closed the connection", l->display);
            break;
        }
        if (WaitForSingleObject(ev, (DWORD)(deadline > sb_com_now_ms()
                                                ? deadline - sb_com_now_ms()
                                                : 0)) != WAIT_OBJECT_0) {
            CancelIoEx(h, &ov);
            GetOverlappedResult(h, &ov, &n, TRUE);
            rc = sb_error_set(err, SB_ETIMEDOUT, 0, "the broker (%s) did not answer ping in %d ms",
                              l->display, HELLO_TIMEOUT_MS);
            break;
        }
        if (!GetOverlappedResult(h, &ov, &n, FALSE)) {
            rc = sb_error_set(err, SB_ECLOSED, (int)GetLastError(),
                              "the broker (%s) closed the connection", l->display);
            break;
        }
        sb_linebuf_commit(lb, n);
    }
    CloseHandle(ev);
    return rc;
}

static void notify_subs(sb_com_link *l, uint64_t gen);

/* Reader: one connection attempt. */
static void do_connect(sb_com_link *l, sb_linebuf *lb)
{
    HANDLE h = INVALID_HANDLE_VALUE;
    sb_error err;
    char *user = NULL;
    size_t max_message = 0;
    uint64_t gen = 0;
    int tries = 0;
    int64_t gone_since = 0;

    sb_error_clear(&err);
    for (;;) {
        DWORD code;
        h = CreateFileW(l->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                        FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                        NULL);
        if (h != INVALID_HANDLE_VALUE)
            break;
        code = GetLastError();
        if (code == ERROR_PIPE_BUSY && tries++ < 3 &&
            WaitNamedPipeW(l->wname, CONNECT_BUSY_WAIT_MS))
            continue;
        if (code == ERROR_FILE_NOT_FOUND && sb_com_not_found_retry(&gone_since))
            continue;
        {
            char text[200];
            sb_win_strerror(code, text, sizeof text);
            sb_error_set(&err, code == ERROR_FILE_NOT_FOUND ? SB_ECONNREFUSED : SB_EIO,
                         (int)code, "cannot reach the broker at %s: %s%s", l->display, text,
                         code == ERROR_FILE_NOT_FOUND
                             ? " (is Switchboard running with a `type: com` adapter?)"
                             : "");
        }
        break;
    }
    if (h != INVALID_HANDLE_VALUE) {
        sb_linebuf_free(lb);
        sb_linebuf_init(lb, SB_CLIENT_DEFAULT_MAX_LINE);
        if (hello(l, h, lb, &user, &max_message, &err) != 0) {
            CloseHandle(h);
            h = INVALID_HANDLE_VALUE;
        }
    }
    EnterCriticalSection(&l->cs);
    l->attempts++;
    l->connect_asked = 0;
    if (h != INVALID_HANDLE_VALUE) {
        l->h = h;
        gen = l->gen = ++l->last_gen;
        l->broken = 0;
        sb_free(l->user);
        l->user = user;
        l->max_message = max_message;
        l->backoff_ms = 0;
        l->retry_at = 0;
    } else {
        l->last_err = err;
        l->backoff_ms = l->backoff_ms == 0                ? BACKOFF_FIRST_MS
                        : l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                            : l->backoff_ms * 2;
        l->retry_at = sb_com_now_ms() + l->backoff_ms;
    }
    WakeAllConditionVariable(&l->cv);
    LeaveCriticalSection(&l->cs);
    if (gen != 0)
        notify_subs(l, gen);
}

/* Reader: the connection ended. Fails what waits for it. */
static void lost(sb_com_link *l)
{
    pending *async = NULL, **pp;
    HANDLE h;
    sb_error err;

    EnterCriticalSection(&l->cs);
    if (l->gen == 0) {
        LeaveCriticalSection(&l->cs);
        return;
    }
    sb_error_set(&err, SB_ECLOSED, 0,
                 "the connection to the broker (%s) was lost; the request may or may not have "
                 "been carried out",
                 l->display);
    h = l->h;
    l->h = INVALID_HANDLE_VALUE;
    l->gen = 0;
    l->broken = 0;
    pp = &l->pend;
    while (*pp != NULL) {
        pending *p = *pp;
        *pp = p->next;
        if (p->sync) {
            p->done = 1;
            p->err = err;
        } else {
            p->next = async;
            async = p;
        }
    }
    WakeAllConditionVariable(&l->cv);
    LeaveCriticalSection(&l->cs);
    EnterCriticalSection(&l->wcs); /* no write is using h */
    CloseHandle(h);
    LeaveCriticalSection(&l->wcs);
    while (async != NULL) {
        pending *p = async;
        async = p->next;
        if (p->fn != NULL)
            p->fn(p->ctx, NULL, &err);
        sb_free(p);
    }
    notify_subs(l, 0);
}

/* ---- subscriptions ---- */

/* References to the registered subscriptions (the caller unrefs each). */
static size_t snapshot(sb_com_link *l, sb_com_sub ***out)
{
    size_t n = 0;
    EnterCriticalSection(&l->cs);
    *out = l->nsubs > 0 ? sb_malloc(l->nsubs * sizeof(**out)) : NULL;
    if (*out != NULL)
        for (size_t i = 0; i < l->nsubs; i++)
            if (sb_com__sub_try_ref(l->subs[i]))
                (*out)[n++] = l->subs[i];
    LeaveCriticalSection(&l->cs);
    return n;
}

static void notify_subs(sb_com_link *l, uint64_t gen)
{
    sb_com_sub **all;
    size_t n = snapshot(l, &all);
    for (size_t i = 0; i < n; i++) {
        sb_com__sub_on_link(all[i], gen);
        sb_com__sub_unref(all[i]);
    }
    sb_free(all);
}

void sb_com__link_add_sub(sb_com_link *l, sb_com_sub *s)
{
    EnterCriticalSection(&l->cs);
    if (l->nsubs == l->subs_cap) {
        size_t cap = l->subs_cap == 0 ? 8 : l->subs_cap * 2;
        sb_com_sub **n = sb_realloc(l->subs, cap * sizeof(*n));
        if (n == NULL) {
            /* Without a slot the subscription gets no deliveries: it
             * then times out in Pull, and its consumer is detached by the
             * broker's leases. Out of memory in a relay is the end anyway. */
            LeaveCriticalSection(&l->cs);
            return;
        }
        l->subs = n;
        l->subs_cap = cap;
    }
    l->subs[l->nsubs++] = s;
    LeaveCriticalSection(&l->cs);
}

void sb_com__link_remove_sub(sb_com_link *l, sb_com_sub *s)
{
    EnterCriticalSection(&l->cs);
    for (size_t i = 0; i < l->nsubs; i++)
        if (l->subs[i] == s) {
            l->subs[i] = l->subs[--l->nsubs];
            break;
        }
    LeaveCriticalSection(&l->cs);
}

void sb_com__link_want(sb_com_link *l, int on)
{
    EnterCriticalSection(&l->cs);
    l->wanted += on ? 1 : -1;
    LeaveCriticalSection(&l->cs);
    if (on)
        SetEvent(l->wake);
}

void sb_com__link_wake(sb_com_link *l)
{
    EnterCriticalSection(&l->cs);
    l->tick_at = 0;
    LeaveCriticalSection(&l->cs);
    SetEvent(l->wake);
}

void sb_com__link_tick_at(sb_com_link *l, int64_t at_ms)
{
    int earlier;
    EnterCriticalSection(&l->cs);
    earlier = at_ms < l->tick_at;
    if (earlier)
        l->tick_at = at_ms;
    LeaveCriticalSection(&l->cs);
    if (earlier)
        SetEvent(l->wake);
}

/* ---- reading ---- */

/* Reader: one line from the broker. */
static void on_line(sb_com_link *l, uint64_t gen, const char *line, size_t len)
{
    json_t *o = json_loadb(line, len, 0, NULL), *idv;
    const char *op = json_string_value(json_object_get(o, "op"));
    if (o == NULL || op == NULL) {
        json_decref(o);
        return;
    }
    if (strcmp(op, "msg") == 0) {
        const char *name = json_string_value(json_object_get(o, "sub"));
        sb_com_sub *s = NULL;
        if (name != NULL) {
            EnterCriticalSection(&l->cs);
            /* few subscriptions per client process: a scan is cheapest */
            for (size_t i = 0; i < l->nsubs && s == NULL; i++)
                if (strcmp(sb_com__sub_name(l->subs[i]), name) == 0 && sb_com__sub_try_ref(l->subs[i]))
                    s = l->subs[i];
            LeaveCriticalSection(&l->cs);
        }
        if (s != NULL) {
            sb_com_msg *m = sb_com__msg_parse(o, gen);
            if (m != NULL)
                sb_com__sub_on_msg(s, m); /* now owned by s */
            sb_com__sub_unref(s);
        }
        /* A delivery for a subscription this process let go of: the broker
         * takes it back with the unsub already on its way. */
        json_decref(o);
        return;
    }
    idv = json_object_get(o, "id");
    if (json_is_integer(idv)) {
        int64_t id = json_integer_value(idv);
        pending *p = NULL, **pp;
        EnterCriticalSection(&l->cs);
        for (pp = &l->pend; *pp != NULL; pp = &(*pp)->next)
            if ((*pp)->id == id && (*pp)->gen == gen) {
                p = *pp;
                *pp = p->next;
                break;
            }
        if (p != NULL && p->sync) {
            p->done = 1;
            p->reply = o;
            o = NULL;
            WakeAllConditionVariable(&l->cv);
            p = NULL;
        }
        LeaveCriticalSection(&l->cs);
        if (p != NULL) {
            if (p->fn != NULL)
                p->fn(p->ctx, o, NULL);
            sb_free(p);
        }
    }
    json_decref(o);
}

static void run_ticks(sb_com_link *l)
{
    sb_com_sub **all;
    int64_t now = sb_com_now_ms();
    size_t n;
    EnterCriticalSection(&l->cs);
    if (l->tick_at > now) {
        LeaveCriticalSection(&l->cs);
        sb_com__server_reap();
        return;
    }
    l->tick_at = NEVER;
    LeaveCriticalSection(&l->cs);
    sb_com__server_reap();
    n = snapshot(l, &all);
    for (size_t i = 0; i < n; i++) {
        sb_com__sub_tick(all[i], now);
        sb_com__sub_unref(all[i]);
    }
    sb_free(all);
}

static void link_free(sb_com_link *l);

static DWORD WINAPI reader_main(void *arg)
{
    sb_com_link *l = arg;
    HANDLE rev = CreateEventW(NULL, TRUE, FALSE, NULL);
    OVERLAPPED ov;
    sb_linebuf lb;
    int reading = 0;
    HANDLE rh = INVALID_HANDLE_VALUE;
    uint64_t rgen = 0;

    CoInitializeEx(NULL, COINIT_MULTITHREADED);
    sb_linebuf_init(&lb, SB_CLIENT_DEFAULT_MAX_LINE);
    for (;;) {
        int64_t now = sb_com_now_ms(), wake_at;
        int connect, broken;
        HANDLE hs[2];
        DWORD r, timeout;

        EnterCriticalSection(&l->cs);
        if (l->stopping) {
            LeaveCriticalSection(&l->cs);
            break;
        }
        connect = l->gen == 0 &&
                  (l->connect_asked || (l->wanted > 0 && now >= l->retry_at));
        broken = l->gen != 0 && l->broken;
        wake_at = l->tick_at;
        if (l->gen == 0 && l->wanted > 0 && l->retry_at < wake_at)
            wake_at = l->retry_at;
        if (l->gen != rgen) {
            rgen = l->gen;
            rh = l->h;
        }
        LeaveCriticalSection(&l->cs);

        if (broken && reading) {
            DWORD n;
            CancelIoEx(rh, &ov);
            GetOverlappedResult(rh, &ov, &n, TRUE);
            reading = 0;
        }
        if (broken) {
            lost(l);
            continue;
        }
        if (connect) {
            do_connect(l, &lb);
            continue;
        }
        if (rgen != 0 && !reading) {
            char *buf;
            size_t avail;
            if (sb_linebuf_reserve(&lb, &buf, &avail) != 0) {
                mark_broken(l, rgen); /* a line longer than we take */
                continue;
            }
            memset(&ov, 0, sizeof ov);
            ov.hEvent = rev;
            ResetEvent(rev);
            if (!ReadFile(rh, buf, (DWORD)(avail > READ_CHUNK ? READ_CHUNK : avail), NULL, &ov) &&
                GetLastError() != ERROR_IO_PENDING) {
                mark_broken(l, rgen);
                continue;
            }
            reading = 1;
        }
        hs[0] = l->wake;
        hs[1] = rev;
        timeout = wake_at == NEVER ? INFINITE
                  : wake_at <= now ? 0
                                   : (DWORD)(wake_at - now);
        r = WaitForMultipleObjects(reading ? 2 : 1, hs, FALSE, timeout);
        if (r == WAIT_OBJECT_0 + 1) {
            DWORD n = 0;
            reading = 0;
            if (!GetOverlappedResult(rh, &ov, &n, FALSE)) {
                mark_broken(l, rgen);
                continue;
            }
            sb_linebuf_commit(&lb, n);
            for (;;) {
                char *line;
                size_t len;
                int got = sb_linebuf_next(&lb, &line, &len);
                if (got == 1) {
                    on_line(l, rgen, line, len);
                    continue;
                }
                if (got < 0)
                    mark_broken(l, rgen);
                break;
            }
        }
        run_ticks(l);
    }
    if (reading) {
        DWORD n;
        CancelIoEx(rh, &ov);
        GetOverlappedResult(rh, &ov, &n, TRUE);
    }
    lost(l);
    sb_linebuf_free(&lb);
    CloseHandle(rev);
    if (l->self_free) {
        CloseHandle(l->thread);
        l->thread = NULL;
        link_free(l);
    }
    CoUninitialize();
    return 0;
}

/* ---- the API ---- */

int sb_com__link_start(sb_com_link **out, const char *endpoint, sb_error *err)
{
    sb_com_link *l = sb_calloc(1, sizeof(*l));
    char full[300];
    if (l == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    if (_strnicmp(endpoint, "\\\\.\\pipe\\", 9) == 0)
        snprintf(full, sizeof full, "%s", endpoint);
    else
        snprintf(full, sizeof full, "\\\\.\\pipe\\%s", endpoint);
    l->display = sb_strdup(full);
    l->wname = sb_utf8_to_wide(full);
    l->h = INVALID_HANDLE_VALUE;
    l->tick_at = NEVER;
    InitializeCriticalSection(&l->cs);
    InitializeCriticalSection(&l->wcs);
    InitializeConditionVariable(&l->cv);
    l->wev = CreateEventW(NULL, TRUE, FALSE, NULL);
    l->wake = CreateEventW(NULL, FALSE, FALSE, NULL);
    if (l->display == NULL || l->wname == NULL || l->wev == NULL || l->wake == NULL) {
        sb_com__link_stop(l);
        return sb_error_set(err, SB_ENOMEM, 0, "cannot set up the link to %s", endpoint);
    }
    l->thread = CreateThread(NULL, 0, reader_main, l, 0, &l->thread_id);
    if (l->thread == NULL) {
        sb_com__link_stop(l);
        return sb_error_set(err, SB_ENOMEM, (int)GetLastError(), "cannot start a thread");
    }
    *out = l;
    return 0;
}

void sb_com__link_stop(sb_com_link *l)
{
    if (l == NULL)
        return;
    EnterCriticalSection(&l->cs);
    l->stopping = 1;
    WakeAllConditionVariable(&l->cv);
    LeaveCriticalSection(&l->cs);
    if (l->thread != NULL && GetCurrentThreadId() == l->thread_id) {
        /* The last reference to a subscription went on its own reader. */
        l->self_free = 1;
        SetEvent(l->wake);
        return;
    }
    if (l->thread != NULL) {
        SetEvent(l->wake);
        WaitForSingleObject(l->thread, INFINITE);
        CloseHandle(l->thread);
        l->thread = NULL;
    }
    link_free(l);
}

static void link_free(sb_com_link *l)
{
    if (l->wev != NULL)
        CloseHandle(l->wev);
    if (l->wake != NULL)
        CloseHandle(l->wake);
    DeleteCriticalSection(&l->cs);
    DeleteCriticalSection(&l->wcs);
    sb_free(l->subs);
    sb_free(l->user);
    sb_free(l->display);
    sb_free(l->wname);
    sb_free(l);
}

int sb_com__link_request(sb_com_link *l, json_t *req, int timeout_ms, json_t **out, uint64_t *out_gen,
                     sb_error *err)
{
    int64_t deadline = sb_com_now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    uint64_t gen;
    pending *p, **pp;
    char *line;
    size_t len;
    int rc;

    *out = NULL;
    if ((gen = ensure_up(l, deadline, err)) == 0)
        return err->code != 0 ? err->code : SB_ECLOSED;
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    EnterCriticalSection(&l->cs);
    p->id = ++l->next_id;
    LeaveCriticalSection(&l->cs);
    p->gen = gen;
    p->sync = 1;
    json_object_set_new(req, "id", json_integer(p->id));
    if ((line = line_of(l, req, &len, err)) == NULL) {
        sb_free(p);
        return err->code;
    }
    EnterCriticalSection(&l->cs);
    p->next = l->pend;
    l->pend = p;
    LeaveCriticalSection(&l->cs);
    rc = write_all(l, gen, line, len, err);
    sb_free(line);
    EnterCriticalSection(&l->cs);
    while (rc == 0 && !p->done) {
        int64_t left = deadline - sb_com_now_ms();
        if (left <= 0)
            break;
        SleepConditionVariableCS(&l->cv, &l->cs, (DWORD)left);
    }
    if (!p->done) { /* still listed: take it off */
        for (pp = &l->pend; *pp != NULL; pp = &(*pp)->next)
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        if (rc == 0)
            rc = sb_error_set(err, SB_ETIMEDOUT, 0,
                              "no answer from the broker (%s) within %d ms; the request may "
                              "still be carried out",
                              l->display, timeout_ms);
    } else if (p->reply == NULL) {
        *err = p->err;
        rc = err->code != 0 ? err->code : SB_ECLOSED;
    }
    LeaveCriticalSection(&l->cs);
    if (rc == 0) {
        rc = sb_client_reply_error(p->reply, err);
        if (rc != 0)
            json_decref(p->reply);
        else
            *out = p->reply;
        if (out_gen != NULL)
            *out_gen = gen;
    }
    sb_free(p);
    return rc;
}

int sb_com__link_post(sb_com_link *l, uint64_t gen, json_t *req, sb_com_reply_fn fn, void *ctx,
                  sb_error *err)
{
    pending *p = NULL;
    char *line;
    size_t len;
    int rc;

    EnterCriticalSection(&l->cs);
    if (gen == 0)
        gen = l->gen;
    if (gen == 0 || l->gen != gen || l->broken) {
        LeaveCriticalSection(&l->cs);
        return sb_error_set(err, SB_ECLOSED, 0, "not connected to the broker (%s)", l->display);
    }
    if (fn != NULL) {
        p = sb_calloc(1, sizeof(*p));
        if (p == NULL) {
            LeaveCriticalSection(&l->cs);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
        p->id = ++l->next_id;
        p->gen = gen;
        p->fn = fn;
        p->ctx = ctx;
    }
    LeaveCriticalSection(&l->cs);
    if (p != NULL)
        json_object_set_new(req, "id", json_integer(p->id));
    if ((line = line_of(l, req, &len, err)) == NULL) {
        sb_free(p);
        return err->code;
    }
    if (p != NULL) {
        EnterCriticalSection(&l->cs);
        p->next = l->pend;
        l->pend = p;
        LeaveCriticalSection(&l->cs);
    }
    rc = write_all(l, gen, line, len, err);
    sb_free(line);
    /* On a failed write the pending entry is answered by lost(). */
    return rc == 0 || p == NULL ? rc : 0;
}

uint64_t sb_com__link_gen(sb_com_link *l)
{
    uint64_t gen;
    EnterCriticalSection(&l->cs);
    gen = l->broken ? 0 : l->gen;
    LeaveCriticalSection(&l->cs);
    return gen;
}
