/*
 * Connections for requests (com_int.h): what Broker objects use to publish.
 *
 * A request takes an idle connection to the broker's com endpoint (or opens
 * one), writes its line and reads the reply itself on the calling thread,
 * then gives the connection back. No thread hands anything to another on
 * the way: under Wine every such hand-off is a trip through the wineserver,
 * and a Publish is one COM call plus one pipe round trip. Calls made at the
 * same time use connections of their own, so concurrent publishers of one
 * relay still overlap. A connection whose request timed out or failed is
 * closed (a late reply would be taken for the next request's).
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"
#include "tools/client/client.h"
#include "tools/client/linebuf.h"

#include <stdio.h>
#include <string.h>

#define MAX_IDLE 8
#define READ_CHUNK 65536
#define BUSY_WAIT_MS 2000
#define NOT_FOUND_GRACE_MS 1000
#define NOT_FOUND_POLL_MS 25

typedef struct pconn {
    HANDLE h, ev;
    sb_linebuf lb;
    size_t max_message;
    char *user;
    int64_t next_id;
    struct pconn *next;
} pconn;

struct sb_com_pool {
    CRITICAL_SECTION cs;
    pconn *idle;
    int nidle;
    char *display;
    wchar_t *wname;
};

static void pconn_close(pconn *c)
{
    if (c == NULL)
        return;
    if (c->h != INVALID_HANDLE_VALUE)
        CloseHandle(c->h);
    if (c->ev != NULL)
        CloseHandle(c->ev);
    sb_linebuf_free(&c->lb);
    sb_free(c->user);
    sb_free(c);
}

/* Waits for an overlapped operation that did not complete at once. */
static int finish(pconn *c, OVERLAPPED *ov, int64_t deadline, DWORD *n)
{
    int64_t left = deadline - sb_com_now_ms();
    if (WaitForSingleObject(c->ev, left > 0 ? (DWORD)left : 0) != WAIT_OBJECT_0) {
        CancelIoEx(c->h, ov);
        GetOverlappedResult(c->h, ov, n, TRUE);
        return SB_ETIMEDOUT;
    }
    return GetOverlappedResult(c->h, ov, n, FALSE) ? 0 : SB_ECLOSED;
}

static int write_line(sb_com_pool *p, pconn *c, const char *buf, size_t len, int64_t deadline,
                      sb_error *err)
{
    while (len > 0) {
        OVERLAPPED ov;
        DWORD n = 0, chunk = len > 0x40000000u ? 0x40000000u : (DWORD)len;
        int rc;
        memset(&ov, 0, sizeof ov);
        ov.hEvent = c->ev;
        ResetEvent(c->ev);
        if (WriteFile(c->h, buf, chunk, &n, &ov)) {
            rc = 0; /* done at once: no wait */
        } else if (GetLastError() == ERROR_IO_PENDING) {
            rc = finish(c, &ov, deadline, &n);
        } else {
            rc = SB_ECLOSED;
        }
        if (rc != 0)
            return sb_error_set(err, rc, (int)GetLastError(),
                                rc == SB_ETIMEDOUT
                                    ? "the broker (%s) took no data in time; the request may "
                                      "still be carried out"
                                    : "the connection to the broker (%s) was lost",
                                p->display);
        buf += n;
        len -= n;
    }
    return 0;
}

/* Reads the next line (valid until the next read). */
static int read_line(sb_com_pool *p, pconn *c, char **line, size_t *len, int64_t deadline,
                     sb_error *err)
{
    for (;;) {
        OVERLAPPED ov;
        DWORD n = 0;
        char *buf;
        size_t avail;
        int rc, got = sb_linebuf_next(&c->lb, line, len);
        if (got == 1)
            return 0;
        if (got < 0 || sb_linebuf_reserve(&c->lb, &buf, &avail) != 0)
            return sb_error_set(err, SB_EPROTO, 0, "the broker (%s) sent a line too long",
                                p->display);
        memset(&ov, 0, sizeof ov);
        ov.hEvent = c->ev;
        ResetEvent(c->ev);
        if (ReadFile(c->h, buf, (DWORD)(avail > READ_CHUNK ? READ_CHUNK : avail), &n, &ov))
            rc = 0;
        else if (GetLastError() == ERROR_IO_PENDING)
            rc = finish(c, &ov, deadline, &n);
        else
            rc = SB_ECLOSED;
        if (rc == 0 && n == 0)
            continue;
        if (rc != 0)
            return sb_error_set(err, rc, 0,
                                rc == SB_ETIMEDOUT
                                    ? "no answer from the broker (%s) in time; the request "
                                      "may still be carried out"
                                    : "the connection to the broker (%s) was lost; the "
                                      "request may or may not have been carried out",
                                p->display);
        sb_linebuf_commit(&c->lb, n);
    }
}

/* Sends req (setting its id) and reads until its reply (*out). *sent
 * tells whether the line was written (else the broker never saw it). */
static int exchange(sb_com_pool *p, pconn *c, json_t *req, int64_t deadline, json_t **out,
                    int *sent, sb_error *err)
{
    int64_t id = ++c->next_id;
    char *text, *line;
    size_t n, limit = c->max_message > 0 ? c->max_message * 2 + 65536 : (size_t)-1, len;
    int rc;

    json_object_set_new(req, "id", json_integer(id));
    text = json_dumps(req, JSON_COMPACT);
    if (text == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    n = strlen(text);
    if (n > limit) {
        free(text);
        return sb_error_set(err, SB_ETOOBIG, 0,
                            "request of %zu bytes is longer than the broker accepts on %s (%zu)",
                            n, p->display, limit);
    }
    text[n] = '\n'; /* json_dumps's NUL: the line ends here instead */
    *sent = 0;
    rc = write_line(p, c, text, n + 1, deadline, err);
    free(text);
    if (rc != 0)
        return rc;
    *sent = 1;
    for (;;) {
        json_t *o;
        if ((rc = read_line(p, c, &line, &len, deadline, err)) != 0)
            return rc;
        o = json_loadb(line, len, 0, NULL);
        if (o != NULL && json_integer_value(json_object_get(o, "id")) == id) {
            *out = o;
            return 0;
        }
        if (o != NULL && json_object_get(o, "id") == NULL &&
            strcmp(json_string_value(json_object_get(o, "op")) != NULL
                       ? json_string_value(json_object_get(o, "op"))
                       : "",
                   "error") == 0) {
            /* the broker could not read the request: it says why */
            rc = sb_client_reply_error(o, err);
            json_decref(o);
            return rc != 0 ? rc : SB_EPROTO;
        }
        json_decref(o);
    }
}

int sb_com_not_found_retry(int64_t *since)
{
    int64_t now = sb_com_now_ms();
    if (*since == 0)
        *since = now;
    if (now - *since >= NOT_FOUND_GRACE_MS)
        return 0;
    Sleep(NOT_FOUND_POLL_MS);
    return 1;
}

static int open_conn(sb_com_pool *p, int64_t deadline, pconn **out, sb_error *err)
{
    pconn *c = sb_calloc(1, sizeof(*c));
    json_t *ping, *pong = NULL;
    int tries = 0, rc, sent;
    int64_t gone_since = 0;

    *out = NULL;
    if (c == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    sb_linebuf_init(&c->lb, SB_CLIENT_DEFAULT_MAX_LINE);
    c->ev = CreateEventW(NULL, TRUE, FALSE, NULL);
    for (;;) {
        DWORD code;
        c->h = CreateFileW(p->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                           FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                           NULL);
        if (c->h != INVALID_HANDLE_VALUE)
            break;
        code = GetLastError();
        if (code == ERROR_PIPE_BUSY && tries++ < 3 && WaitNamedPipeW(p->wname, BUSY_WAIT_MS))
            continue;
        if (code == ERROR_FILE_NOT_FOUND && sb_com_not_found_retry(&gone_since))
            continue;
        {
            char text[200];
            sb_win_strerror(code, text, sizeof text);
            rc = sb_error_set(err, code == ERROR_FILE_NOT_FOUND ? SB_ECONNREFUSED : SB_EIO,
                              (int)code, "cannot reach the broker at %s: %s%s", p->display, text,
                              code == ERROR_FILE_NOT_FOUND
                                  ? " (is Switchboard running with a `type: com` adapter?)"
                                  : "");
        }
        pconn_close(c);
        return rc;
    }
    ping = json_pack("{s:s}", "op", "ping");
    rc = ping != NULL ? exchange(p, c, ping, deadline, &pong, &sent, err)
                      : sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    json_decref(ping);
    if (rc != 0) {
        pconn_close(c);
        return rc;
    }
    {
        const char *u = json_string_value(json_object_get(pong, "user"));
        json_int_t mm = json_integer_value(json_object_get(pong, "max_message"));
        c->user = u != NULL ? sb_strdup(u) : NULL;
        c->max_message = mm > 0 ? (size_t)mm : 1048576;
    }
    json_decref(pong);
    *out = c;
    return 0;
}

static int get(sb_com_pool *p, int64_t deadline, pconn **out, int *fresh, sb_error *err)
{
    *fresh = 0;
    EnterCriticalSection(&p->cs);
    *out = p->idle;
    if (*out != NULL) {
        p->idle = (*out)->next;
        p->nidle--;
    }
    LeaveCriticalSection(&p->cs);
    if (*out != NULL)
        return 0;
    *fresh = 1;
    return open_conn(p, deadline, out, err);
}

static void put(sb_com_pool *p, pconn *c)
{
    EnterCriticalSection(&p->cs);
    if (p->nidle < MAX_IDLE) {
        c->next = p->idle;
        p->idle = c;
        p->nidle++;
        c = NULL;
    }
    LeaveCriticalSection(&p->cs);
    pconn_close(c);
}

int sb_com__pool_new(sb_com_pool **out, const char *endpoint, sb_error *err)
{
    sb_com_pool *p = sb_calloc(1, sizeof(*p));
    char full[300];
    if (p == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    if (_strnicmp(endpoint, "\\\\.\\pipe\\", 9) == 0)
        snprintf(full, sizeof full, "%s", endpoint);
    else
        snprintf(full, sizeof full, "\\\\.\\pipe\\%s", endpoint);
    InitializeCriticalSection(&p->cs);
    p->display = sb_strdup(full);
    p->wname = sb_utf8_to_wide(full);
    if (p->display == NULL || p->wname == NULL) {
        sb_com__pool_free(p);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    *out = p;
    return 0;
}

void sb_com__pool_free(sb_com_pool *p)
{
    if (p == NULL)
        return;
    while (p->idle != NULL) {
        pconn *c = p->idle;
        p->idle = c->next;
        pconn_close(c);
    }
    DeleteCriticalSection(&p->cs);
    sb_free(p->display);
    sb_free(p->wname);
    sb_free(p);
}

int sb_com__pool_request(sb_com_pool *p, json_t *req, size_t payload_len, int timeout_ms, json_t **out,
                     sb_error *err)
{
    int64_t deadline = sb_com_now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    json_t *reply = NULL;
    pconn *c;
    int rc, fresh, sent;

    *out = NULL;
    for (;;) {
        if ((rc = get(p, deadline, &c, &fresh, err)) != 0)
            return rc;
        if (payload_len > c->max_message) {
            rc = sb_error_set(err, SB_ETOOBIG, 0,
                              "the payload of %zu bytes is larger than the broker's max_message "
                              "(%zu bytes)",
                              payload_len, c->max_message);
            put(p, c);
            return rc;
        }
        rc = exchange(p, c, req, deadline, &reply, &sent, err);
        if (rc != 0) {
            pconn_close(c); /* its stream can no longer be trusted */
            /* An idle connection the broker closed meanwhile (it restarted):
             * the request never left, so it goes on another one. */
            if (!sent && !fresh && rc == SB_ECLOSED)
                continue;
            return rc;
        }
        break;
    }
    put(p, c);
    rc = sb_client_reply_error(reply, err);
    if (rc != 0) {
        json_decref(reply);
        return rc;
    }
    *out = reply;
    return 0;
}

int sb_com__pool_user(sb_com_pool *p, int timeout_ms, char **out_user, sb_error *err)
{
    pconn *c;
    int fresh, rc = get(p, sb_com_now_ms() + timeout_ms, &c, &fresh, err);
    if (rc != 0)
        return rc;
    *out_user = c->user != NULL ? sb_strdup(c->user) : NULL;
    put(p, c);
    return 0;
}
