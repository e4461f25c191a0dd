/*
 * WM_COPYDATA adapter (Windows, `type: copydata`): legacy programs that
 * SendMessage(WM_COPYDATA) on one side, the broker on the other. A desktop
 * type (SB_CAP_DESKTOP): window messages reach only the windows of their
 * own desktop, so under a service it runs in the session agent; `switchboard
 * run` hosts it itself. Each adapter runs a window thread of its own
 * (adapters/desktop/win/window_thread.c).
 *
 * `direction: in` creates a message-only window (HWND_MESSAGE) of class
 * `class` and title `title`, which senders find with FindWindowEx. Its
 * window procedure publishes each WM_COPYDATA — COPYDATASTRUCT.dwData
 * picks the topic (`data_map`, else the `topic` template's {data}), lpData
 * is the payload — and returns TRUE only once the message is committed:
 * the sender's SendMessage returning TRUE means durable. Meanwhile the
 * window thread waits for the loop (which never sends to the window, so
 * the two cannot wait for each other); another sender's WM_COPYDATA that
 * arrives during the wait is handled nested in it, so that both commit in
 * one group. A refusal — a full queue, the store refusing writes, the ACL
 * (senders publish as anonymous), data over max_message or not in the
 * configured encoding, a dwData the map does not name when it is strict,
 * no commit within 30 s, a stop — returns FALSE and is logged with the
 * sender's process id (GetWindowThreadProcessId of wParam, the sender's
 * window), at most 10 lines a second. `allow_lower_integrity` lets senders
 * of lower integrity through UIPI (ChangeWindowMessageFilterEx).
 *
 * `direction: out` is a route destination: it finds the window by class
 * and/or title (message-only windows first, then top-level ones), waiting
 * for one that is not there with backoff and logging its state once per
 * change, and sends each delivery with SendMessageTimeout (SMTO_ABORTIFHUNG,
 * `send_timeout`), wParam its own window, dwData from the delivery's
 * copydata-data header, else the map (data_map, or the template's {data}
 * level), else `dwdata`. A nonzero answer acknowledges the delivery; zero
 * (the receiver refused it), a timeout or a hung window fails the attempt,
 * which the route retries with backoff and then dead-letters with the
 * reason. While the window is away, deliveries wait in their queue.
 *
 * Published messages carry the headers copydata-data (dwData in decimal),
 * copydata-pid (the sender's process id) and, for text encodings,
 * encoding: utf-8.
 */
#include "adapters/copydata/cd_map.h"
#include "adapters/copydata/copydata_keys.h"
#include "adapters/desktop/win/window_thread.h"
#include "adapters/desktop/win/text.h"
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* How long a WM_COPYDATA waits for its commit before it is answered FALSE. */
#define COMMIT_WAIT_MS 30000
/* Refusals logged per second at most; the rest are counted. */
#define REFUSALS_LOGGED_PER_S 10
/* While the window is there, how often the sender looks whether it still is. */
#define PRESENT_CHECK_MS 1000
#define TIMER_FIND 1
#define SENDER_CLASS L"SwitchboardCopyDataSender"

typedef struct cd_adapter {
    sb_adapter base;
    sb_wnd_thread wt;
    int out;
    sb_cd_map map;
    uint64_t dwdata;
    UINT codepage;
    wchar_t *wclass, *wtitle; /* in: the window's; out: the target's (NULL: any) */
    sb_adapter_stopped_cb stopped_cb;

    /* counters (any thread) */
    atomic_ullong received, committed, refused, sent, acked, failed;

    /* loop thread only */
    int publishing; /* publish callbacks still to come */
    int destroyed;
    int window_up; /* out: the window as the loop last heard of it */
    int sink_waiting;

    /* window thread only */
    uint64_t log_second; /* in: refusals logged this second ... */
    int logged;          /* ... so many */
    uint64_t unlogged;   /* refusals not logged since the last line */
    HWND last_sender;    /* in: the last sender's window ... */
    DWORD last_pid;      /* ... and its process */
    HWND target;         /* out: the window sent to, or NULL */
    int state;           /* out: -1 not looked yet, 0 absent, 1 there */
    int64_t backoff;     /* out: the next look for an absent window */
} cd_adapter;

/* A WM_COPYDATA the window thread hands to the loop. */
typedef struct cd_pub {
    cd_adapter *a;
    char *topic;
    unsigned char *payload;
    size_t len;
    uint64_t data;
    unsigned long pid;
    int text;
    sb_wnd_waiter *waiter;
} cd_pub;

/* A delivery for the window thread to send. */
typedef struct cd_job {
    sb_wnd_job base;
    cd_adapter *a;
    sb_delivery *d; /* loop thread only */
    uint64_t data;
    unsigned char *buf;
    size_t len;
    int status;
    char why[320];
} cd_job;

static const sb_copydata_settings *settings(const cd_adapter *a)
{
    return SB_SETTINGS(const sb_copydata_settings, a->base.cfg);
}

static void pub_free(cd_pub *p)
{
    sb_free(p->topic);
    sb_free(p->payload);
    sb_free(p);
}

static void job_free(cd_job *j)
{
    sb_free(j->buf);
    sb_free(j);
}

static void free_adapter(cd_adapter *a)
{
    sb_wnd_thread_free(&a->wt);
    sb_cd_map_free(&a->map);
    sb_free(a->wclass);
    sb_free(a->wtitle);
    sb_free(a);
}

/* ---- in: the window procedure (window thread) ---- */

/* Logs a refusal, REFUSALS_LOGGED_PER_S a second at most. */
static void log_refusal(cd_adapter *a, unsigned long pid, uint64_t data, const char *why)
{
    uint64_t second = uv_hrtime() / 1000000000u;
    char image[128];
    atomic_fetch_add(&a->refused, 1);
    if (second != a->log_second) {
        a->log_second = second;
        a->logged = 0;
    }
    if (a->logged >= REFUSALS_LOGGED_PER_S) {
        a->unlogged++;
        return;
    }
    a->logged++;
    sb_wnd_process_image(pid, image, sizeof image);
    if (a->unlogged > 0)
        sb_log(SB_LOG_WARN, a->base.name,
               "WM_COPYDATA (dwData %llu) from pid %lu%s%s%s refused (returned FALSE): %s "
               "(and %llu more refusals not logged)",
               (unsigned long long)data, pid, image[0] != '\0' ? " (" : "", image,
               image[0] != '\0' ? ")" : "", why, (unsigned long long)a->unlogged);
    else
        sb_log(SB_LOG_WARN, a->base.name,
               "WM_COPYDATA (dwData %llu) from pid %lu%s%s%s refused (returned FALSE): %s",
               (unsigned long long)data, pid, image[0] != '\0' ? " (" : "", image,
               image[0] != '\0' ? ")" : "", why);
    a->unlogged = 0;
}

static void on_pub(void *arg);

/* lpData to the payload in the configured encoding. 0, or SB_E* with why. */
static int decode(cd_adapter *a, unsigned char **out, size_t *out_len, int *text,
                  const COPYDATASTRUCT *cds, char *why, size_t n)
{
    int enc = settings(a)->encoding;
    const unsigned char *data = cds->lpData;
    size_t len = cds->cbData;
    UINT fmt = enc == SB_COPYDATA_UTF16 ? CF_UNICODETEXT : CF_TEXT;
    UINT cp = enc == SB_COPYDATA_UTF8 ? CP_UTF8 : a->codepage;

    *text = 0;
    if (enc == SB_COPYDATA_BYTES) {
        *out = sb_malloc(len + 1);
        if (*out == NULL)
            return SB_ENOMEM;
        if (len > 0)
            memcpy(*out, data, len);
        *out_len = len;
        return 0;
    }
    if (len == 0) {
        static const unsigned char nothing[2] = {0, 0};
        data = nothing;
        len = sizeof nothing;
    }
    return sb_wtext_decode(out, out_len, text, data, len, fmt, cp, why, n);
}

/* Publishes one WM_COPYDATA and waits for its commit: TRUE if committed. */
static LRESULT receive(cd_adapter *a, HWND sender, const COPYDATASTRUCT *cds)
{
    const sb_copydata_settings *s = settings(a);
    DWORD pid = 0;
    uint64_t data = cds != NULL ? (uint64_t)cds->dwData : 0;
    char why[320] = "";
    unsigned char *payload = NULL;
    size_t len = 0;
    int text = 0, status = 0, rc;
    char *topic = NULL;
    cd_pub *p;

    atomic_fetch_add(&a->received, 1);
    if (sender != NULL && sender == a->last_sender) {
        pid = a->last_pid; /* one lookup (under Wine a wineserver call) per sender */
    } else if (sender != NULL) {
        GetWindowThreadProcessId(sender, &pid);
        a->last_sender = sender;
        a->last_pid = pid;
    }
    if (sb_wnd_thread_quitting(&a->wt)) {
        log_refusal(a, pid, data, "the adapter is stopping");
        return FALSE;
    }
    if (cds == NULL || (cds->cbData > 0 && cds->lpData == NULL)) {
        log_refusal(a, pid, data, "no data (lParam is not a COPYDATASTRUCT)");
        return FALSE;
    }
    /* text shrinks at most to a quarter (UTF-16 to ASCII ... ) */
    if ((uint64_t)cds->cbData >
        (uint64_t)s->max_message * (s->encoding == SB_COPYDATA_BYTES ? 1 : 4)) {
        snprintf(why, sizeof why, "%lu bytes is larger than max_message (%lld bytes)",
                 (unsigned long)cds->cbData, (long long)s->max_message);
        log_refusal(a, pid, data, why);
        return FALSE;
    }
    rc = sb_cd_map_topic(&topic, &a->map, data);
    if (rc == SB_ENOTFOUND) {
        snprintf(why, sizeof why, "dwData %llu is not in data_map (strict)",
                 (unsigned long long)data);
        log_refusal(a, pid, data, why);
        return FALSE;
    }
    if (rc != 0 || (rc = decode(a, &payload, &len, &text, cds, why, sizeof why)) != 0) {
        if (rc == SB_ENOMEM)
            snprintf(why, sizeof why, "out of memory");
        log_refusal(a, pid, data, why);
        sb_free(topic);
        return FALSE;
    }
    if (len > (size_t)s->max_message) {
        snprintf(why, sizeof why, "%zu bytes of text is larger than max_message (%lld bytes)", len,
                 (long long)s->max_message);
        log_refusal(a, pid, data, why);
        sb_free(topic);
        sb_free(payload);
        return FALSE;
    }
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL || (p->waiter = sb_wnd_waiter_new()) == NULL) {
        sb_free(p);
        sb_free(topic);
        sb_free(payload);
        log_refusal(a, pid, data, "out of memory");
        return FALSE;
    }
    p->a = a;
    p->topic = topic;
    p->payload = payload;
    p->len = len;
    p->data = data;
    p->pid = pid;
    p->text = text;
    {
        sb_wnd_waiter *w = p->waiter;
        sb_wnd_thread_post(&a->wt, on_pub, p); /* now the loop's */
        if (!sb_wnd_thread_wait(&a->wt, w, COMMIT_WAIT_MS, &status, why, sizeof why)) {
            char more[320];
            snprintf(more, sizeof more, "no commit within %d ms (%s)", COMMIT_WAIT_MS, why);
            log_refusal(a, pid, data, more);
            return FALSE;
        }
    }
    if (status != 0) {
        log_refusal(a, pid, data, why);
        return FALSE;
    }
    return TRUE;
}

/* ---- in: publishing (loop thread) ---- */

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    cd_pub *p = ctx;
    cd_adapter *a = p->a;
    (void)id;
    (void)queues;
    a->publishing--;
    if (status == 0)
        atomic_fetch_add(&a->committed, 1);
    sb_wnd_waiter_done(&a->wt, p->waiter, status, why != NULL ? why : sb_strerror(status));
    pub_free(p);
    if (a->destroyed && a->publishing == 0)
        free_adapter(a);
}

static int add_headers(sb_message *m, const cd_pub *p)
{
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)p->data);
    if (sb_message_add_header(m, "copydata-data", v) != 0)
        return SB_ENOMEM;
    snprintf(v, sizeof v, "%lu", p->pid);
    if (sb_message_add_header(m, "copydata-pid", v) != 0)
        return SB_ENOMEM;
    if (p->text && sb_message_add_header(m, "encoding", "utf-8") != 0)
        return SB_ENOMEM;
    return 0;
}

static void on_pub(void *arg)
{
    cd_pub *p = arg;
    cd_adapter *a = p->a;
    char source[160];
    sb_publish_opts opts = {source, 0, NULL};
    sb_message *msg;
    sb_error err;
    const char *why = NULL;

    snprintf(source, sizeof source, "%s copydata pid %lu", a->base.name, p->pid);
    msg = sb_message_new_owned(p->topic, p->payload, p->len);
    p->payload = NULL; /* now the message's (freed on failure) */
    if (msg == NULL || add_headers(msg, p) != 0) {
        why = "out of memory";
    } else if (!sb_auth_allowed(sb_broker_auth(a->base.broker), NULL, NULL, p->topic,
                                SB_ACL_WRITE)) {
        why = "denied by the ACL (WM_COPYDATA senders publish as anonymous)";
    } else if (sb_broker_publish(a->base.broker, msg, &opts, on_published, p, &err) == 0) {
        a->publishing++;
        sb_message_unref(msg);
        return; /* p is on_published's */
    } else {
        why = err.msg;
    }
    sb_wnd_waiter_done(&a->wt, p->waiter, SB_EINVAL, why);
    if (msg != NULL)
        sb_message_unref(msg);
    pub_free(p);
}

/* ---- out: the window sent to (window thread) ---- */

static void on_window_up(void *arg);
static void on_window_down(void *arg);

static const char *target_text(cd_adapter *a, char *buf, size_t n)
{
    const sb_copydata_settings *s = settings(a);
    if (s->window_class != NULL && s->title != NULL)
        snprintf(buf, n, "class %s, title %s", s->window_class, s->title);
    else if (s->window_class != NULL)
        snprintf(buf, n, "class %s", s->window_class);
    else
        snprintf(buf, n, "title %s", s->title);
    return buf;
}

/* Message-only windows first (real Windows' FindWindow does not see them),
 * then top-level ones. */
static HWND find_target(cd_adapter *a)
{
    HWND h = FindWindowExW(HWND_MESSAGE, NULL, a->wclass, a->wtitle);
    if (h == NULL)
        h = FindWindowExW(NULL, NULL, a->wclass, a->wtitle);
    return h;
}

static void set_state(cd_adapter *a, HWND h, const char *why)
{
    char what[600], image[128];
    int state = h != NULL;
    a->target = h;
    if (state == a->state)
        return;
    target_text(a, what, sizeof what);
    if (state) {
        DWORD pid = 0;
        GetWindowThreadProcessId(h, &pid);
        sb_wnd_process_image(pid, image, sizeof image);
        sb_log(SB_LOG_INFO, a->base.name, "sending to the window of %s (pid %lu%s%s)", what,
               (unsigned long)pid, image[0] != '\0' ? ", " : "", image);
        sb_wnd_thread_post(&a->wt, on_window_up, a);
    } else if (a->state < 0) {
        sb_log(SB_LOG_INFO, a->base.name, "no window of %s yet: deliveries wait for it", what);
    } else {
        sb_log(SB_LOG_WARN, a->base.name, "the window of %s %s: deliveries wait for another one",
               what, why != NULL ? why : "went away");
        sb_wnd_thread_post(&a->wt, on_window_down, a);
    }
    a->state = state;
}

/* Looks for the window; arms the timer for the next look. */
static void look(cd_adapter *a)
{
    const sb_copydata_settings *s = settings(a);
    HWND h = a->target != NULL && IsWindow(a->target) ? a->target : find_target(a);
    set_state(a, h, NULL);
    if (h != NULL) {
        a->backoff = 0;
        SetTimer(a->wt.hwnd, TIMER_FIND,
                 (UINT)(s->reconnect_max_backoff_ms < PRESENT_CHECK_MS ? s->reconnect_max_backoff_ms
                                                                       : PRESENT_CHECK_MS),
                 NULL);
    } else {
        a->backoff =
            sb_backoff_next(a->backoff, s->reconnect_backoff_ms, s->reconnect_max_backoff_ms);
        SetTimer(a->wt.hwnd, TIMER_FIND, (UINT)a->backoff, NULL);
    }
}

static void on_sent(void *arg);

static void send_job(sb_wnd_thread *t, sb_wnd_job *base)
{
    cd_job *j = (cd_job *)base;
    cd_adapter *a = j->a;
    const sb_copydata_settings *s = settings(a);
    COPYDATASTRUCT cds;
    DWORD_PTR answer = 0;
    LRESULT ok;

    if (sb_wnd_thread_quitting(t)) {
        /* stopping: not sent; detached with the adapter, the delivery
         * returns to its queue without counting as an attempt */
        j->status = SB_ESHUTDOWN;
        sb_wnd_thread_post(t, on_sent, j);
        return;
    }
    if (a->target == NULL || !IsWindow(a->target))
        look(a);
    if (a->target == NULL) {
        j->status = SB_ECLOSED;
        snprintf(j->why, sizeof j->why, "the window is not there");
        sb_wnd_thread_post(t, on_sent, j);
        return;
    }
    cds.dwData = (ULONG_PTR)j->data;
    cds.cbData = (DWORD)j->len;
    cds.lpData = j->buf;
    atomic_fetch_add(&a->sent, 1);
    ok = SendMessageTimeoutW(a->target, WM_COPYDATA, (WPARAM)t->hwnd, (LPARAM)&cds,
                             SMTO_ABORTIFHUNG | SMTO_NORMAL, (UINT)s->send_timeout_ms, &answer);
    if (ok == 0) {
        DWORD e = GetLastError();
        if (!IsWindow(a->target)) {
            j->status = SB_ECLOSED;
            snprintf(j->why, sizeof j->why, "the window went away before it answered");
            set_state(a, NULL, "went away");
            look(a);
        } else if (e == ERROR_TIMEOUT || e == 0) {
            j->status = SB_ETIMEDOUT;
            snprintf(j->why, sizeof j->why,
                     "no answer within %lld ms (the receiving window is busy or hung)",
                     (long long)s->send_timeout_ms);
        } else {
            char text[200];
            sb_win_strerror(e, text, sizeof text);
            j->status = SB_EIO;
            snprintf(j->why, sizeof j->why, "SendMessageTimeout failed: %s", text);
        }
    } else if (answer == 0) {
        j->status = SB_EINVAL;
        snprintf(j->why, sizeof j->why, "the receiving window returned FALSE (it refused it)");
    } else {
        j->status = 0;
    }
    sb_wnd_thread_post(t, on_sent, j);
}

static int thread_proc(sb_wnd_thread *t, UINT msg, WPARAM wp, LPARAM lp, LRESULT *result)
{
    cd_adapter *a = t->ctx;
    if (msg == WM_COPYDATA) {
        /* out: a receiver may answer through wParam; nothing listens here */
        *result = a->out ? FALSE : receive(a, (HWND)wp, (const COPYDATASTRUCT *)lp);
        return 1;
    }
    if (msg == WM_TIMER && wp == TIMER_FIND && a->out) {
        KillTimer(t->hwnd, TIMER_FIND);
        look(a);
        *result = 0;
        return 1;
    }
    return 0;
}

/* Thread: the window exists. */
static int thread_init(sb_wnd_thread *t, char *why, size_t n)
{
    cd_adapter *a = t->ctx;
    const sb_copydata_settings *s = settings(a);
    if (a->out) {
        look(a);
        return 0;
    }
    {
        /* another window of that name: a sender may find it first */
        HWND other = FindWindowExW(HWND_MESSAGE, NULL, a->wclass, a->wtitle);
        if (other == t->hwnd)
            other = FindWindowExW(HWND_MESSAGE, other, a->wclass, a->wtitle);
        if (other != NULL) {
            DWORD pid = 0;
            GetWindowThreadProcessId(other, &pid);
            sb_log(SB_LOG_WARN, a->base.name,
                   "another window of class %s and title %s exists (pid %lu): senders may "
                   "find it instead of this one",
                   s->window_class, s->title, (unsigned long)pid);
        }
    }
    if (s->allow_lower_integrity) {
        if (!ChangeWindowMessageFilterEx(t->hwnd, WM_COPYDATA, MSGFLT_ALLOW, NULL)) {
            char text[200];
            sb_win_strerror(GetLastError(), text, sizeof text);
            snprintf(why, n, "ChangeWindowMessageFilterEx(WM_COPYDATA, MSGFLT_ALLOW) failed: %s",
                     text);
            return SB_EIO;
        }
        sb_log(SB_LOG_INFO, a->base.name,
               "WM_COPYDATA allowed from processes of lower integrity "
               "(ChangeWindowMessageFilterEx, MSGFLT_ALLOW)");
    }
    return 0;
}

/* ---- out: the sink (loop thread) ---- */

static void on_window_up(void *arg)
{
    cd_adapter *a = arg;
    a->window_up = 1;
    if (a->sink_waiting && !a->base.stopping) {
        a->sink_waiting = 0;
        sb_adapter_sink_ready(&a->base);
    }
}

static void on_window_down(void *arg)
{
    cd_adapter *a = arg;
    a->window_up = 0;
}

static void on_sent(void *arg)
{
    cd_job *j = arg;
    cd_adapter *a = j->a;
    if (j->status == SB_ESHUTDOWN) {
        job_free(j); /* not sent: the broker takes the delivery back */
        return;
    }
    if (j->status == 0) {
        atomic_fetch_add(&a->acked, 1);
    } else {
        atomic_fetch_add(&a->failed, 1);
        sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s not delivered (attempt %d): %s",
               (unsigned long long)j->d->msg->id, j->d->sub, j->d->attempt, j->why);
    }
    sb_delivery_done(j->d, j->status, j->status != 0 ? j->why : NULL);
    job_free(j);
}

static void refuse(cd_adapter *a, sb_delivery *d, int status, const char *why)
{
    atomic_fetch_add(&a->failed, 1);
    sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s refused (attempt %d): %s",
           (unsigned long long)d->msg->id, d->sub, d->attempt, why);
    sb_delivery_done(d, status, why);
}

/* The payload in the configured encoding: 0, or SB_E* with why. */
static int encode(cd_adapter *a, cd_job *j, const sb_message *msg, char *why, size_t n)
{
    int enc = settings(a)->encoding;
    if (enc == SB_COPYDATA_BYTES) {
        j->buf = sb_malloc(msg->payload_len + 1);
        if (j->buf == NULL)
            return SB_ENOMEM;
        memcpy(j->buf, msg->payload, msg->payload_len);
        j->len = msg->payload_len;
        return 0;
    }
    return sb_wtext_encode(&j->buf, &j->len, msg->payload, msg->payload_len,
                           enc == SB_COPYDATA_UTF16 ? CF_UNICODETEXT : CF_TEXT,
                           enc == SB_COPYDATA_UTF8 ? CP_UTF8 : a->codepage, why, n);
}

static int copydata_deliver(sb_adapter *base, sb_delivery *d)
{
    cd_adapter *a = (cd_adapter *)base;
    const sb_copydata_settings *s = settings(a);
    const sb_message *msg = d->msg;
    const char *h = sb_message_header(msg, "copydata-data");
    char why[320] = "";
    cd_job *j;
    int rc;

    if (!a->out || !sb_wnd_thread_running(&a->wt) || base->stopping)
        return SB_EBUSY;
    if (!a->window_up) {
        a->sink_waiting = 1; /* the queue keeps it until the window is there */
        return SB_EBUSY;
    }
    if (msg->payload_len > (size_t)s->max_message) {
        snprintf(why, sizeof why, "payload of %zu bytes is larger than max_message (%lld bytes)",
                 msg->payload_len, (long long)s->max_message);
        refuse(a, d, SB_ETOOBIG, why);
        return 0;
    }
    j = sb_calloc(1, sizeof(*j));
    if (j == NULL) {
        sb_delivery_done(d, SB_ENOMEM, "out of memory");
        return 0;
    }
    j->a = a;
    j->d = d;
    j->data = a->dwdata;
    if (h != NULL) {
        if (sb_cd_parse_data(&j->data, h) != 0) {
            snprintf(why, sizeof why, "header copydata-data (%s) is not a number", h);
            rc = SB_EINVAL;
            goto refused;
        }
    } else {
        (void)sb_cd_map_data(&j->data, &a->map, msg->topic); /* else dwdata */
    }
    if ((rc = encode(a, j, msg, why, sizeof why)) != 0) {
        if (rc == SB_ENOMEM)
            snprintf(why, sizeof why, "out of memory");
        goto refused;
    }
    if (j->len > 0xffffffffu) {
        rc = SB_ETOOBIG;
        snprintf(why, sizeof why, "more than 4 GiB");
        goto refused;
    }
    sb_wnd_thread_push(&a->wt, &j->base);
    return 0;
refused:
    job_free(j);
    refuse(a, d, rc, why);
    return 0;
}

/* ---- lifecycle ---- */

static void thread_exited(sb_wnd_thread *t, sb_wnd_job *left)
{
    cd_adapter *a = t->ctx;
    /* Deliveries the thread never took are left to the broker: once the
     * adapter has stopped it detaches them, and they return to their queue
     * without counting as a failed attempt. */
    while (left != NULL) {
        sb_wnd_job *next = left->next;
        job_free((cd_job *)left);
        left = next;
    }
    a->stopped_cb(&a->base);
}

static int copydata_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    cd_adapter *a = sb_calloc(1, sizeof(*a));
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &a->base;
    return 0;
}

/* Builds the map from data_map. */
static int build_map(cd_adapter *a, sb_error *err)
{
    const sb_copydata_settings *s = settings(a);
    uint64_t *data = NULL;
    char **topics = NULL;
    const char *why = NULL;
    size_t n = 0;
    int rc = SB_ENOMEM;

    if (s->data_map_count > 0) {
        data = sb_calloc(s->data_map_count, sizeof(*data));
        topics = sb_calloc(s->data_map_count, sizeof(*topics));
        if (data == NULL || topics == NULL)
            goto done;
    }
    for (; n < s->data_map_count; n++) {
        if ((rc = sb_copydata_map_entry(&data[n], &topics[n], s->data_map[n], &why)) != 0)
            goto done;
    }
    rc = sb_cd_map_init(&a->map, s->topic, a->base.name, data, (const char *const *)topics, n,
                        !a->out && s->strict, &why);
done:
    for (size_t i = 0; i < n; i++)
        sb_free(topics[i]);
    sb_free(topics);
    sb_free(data);
    if (rc == SB_ENOMEM)
        return sb_error_set(err, rc, 0, "adapter %s: out of memory", a->base.name);
    if (rc != 0)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: data_map or topic: %s", a->base.name,
                            why != NULL ? why : "invalid");
    return 0;
}

static int copydata_start(sb_adapter *base, sb_error *err)
{
    cd_adapter *a = (cd_adapter *)base;
    const sb_copydata_settings *s = settings(a);
    int rc;

    a->out = s->direction == SB_COPYDATA_OUT;
    a->state = -1;
    if (s->codepage != 0 && !IsValidCodePage((UINT)s->codepage))
        return sb_error_set(err, SB_ECONFIG, 0,
                            "adapter %s: codepage %d is not installed on this system", base->name,
                            s->codepage);
    a->codepage = s->codepage != 0 ? (UINT)s->codepage : GetACP();
    if ((rc = build_map(a, err)) != 0)
        return rc;
    if (a->out && sb_cd_parse_data(&a->dwdata, s->dwdata != NULL ? s->dwdata : "0") != 0)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: dwdata %s is not a number", base->name,
                            s->dwdata);
    if ((s->window_class != NULL && (a->wclass = sb_utf8_to_wide(s->window_class)) == NULL) ||
        (s->title != NULL && (a->wtitle = sb_utf8_to_wide(s->title)) == NULL))
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", base->name);

    a->wt.name = base->name;
    a->wt.loop = base->loop;
    a->wt.ctx = a;
    a->wt.class_name = a->out ? SENDER_CLASS : a->wclass;
    a->wt.title = a->out ? NULL : a->wtitle;
    a->wt.init = thread_init;
    a->wt.proc = thread_proc;
    a->wt.run = send_job;
    a->wt.exited = thread_exited;
    if ((rc = sb_wnd_thread_start(&a->wt, err)) != 0)
        return rc;
    if (a->out) {
        char what[600];
        sb_log(SB_LOG_INFO, base->name,
               "sends WM_COPYDATA to the window of %s (SMTO_ABORTIFHUNG, timeout %lld ms)",
               target_text(a, what, sizeof what), (long long)s->send_timeout_ms);
    } else {
        sb_log(SB_LOG_INFO, base->name,
               "receives WM_COPYDATA on window class %s, title %s (message-only); topics %s%s, "
               "answered TRUE once committed",
               s->window_class, s->title, s->topic,
               s->data_map_count > 0 ? (s->strict ? " and data_map (strict)" : " and data_map")
                                     : "");
    }
    return 0;
}

static void copydata_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    cd_adapter *a = (cd_adapter *)base;
    a->stopped_cb = cb;
    if (sb_wnd_thread_running(&a->wt)) {
        sb_wnd_thread_quit(&a->wt); /* thread_exited completes the stop */
        return;
    }
    cb(base);
}

static void copydata_destroy(sb_adapter *base)
{
    cd_adapter *a = (cd_adapter *)base;
    if (a->publishing > 0) {
        a->destroyed = 1; /* the last publish callback frees it */
        return;
    }
    free_adapter(a);
}

static void *copydata_stats(sb_adapter *base)
{
    cd_adapter *a = (cd_adapter *)base;
    if (!a->out)
        return json_pack("{s:s, s:I, s:I, s:I}", "direction", "in", "received",
                         (json_int_t)atomic_load(&a->received), "committed",
                         (json_int_t)atomic_load(&a->committed), "refused",
                         (json_int_t)atomic_load(&a->refused));
    return json_pack("{s:s, s:b, s:I, s:I, s:I}", "direction", "out", "window", a->window_up,
                     "sent", (json_int_t)atomic_load(&a->sent), "acked",
                     (json_int_t)atomic_load(&a->acked), "failed",
                     (json_int_t)atomic_load(&a->failed));
}

static unsigned copydata_caps_of(const sb_adapter_config *cfg)
{
    const sb_copydata_settings *s = SB_SETTINGS(const sb_copydata_settings, cfg);
    return SB_CAP_DESKTOP | SB_CAP_THREAD |
           (s->direction == SB_COPYDATA_OUT ? SB_CAP_SINK : SB_CAP_SOURCE);
}

const sb_adapter_type sb_adapter_copydata = {
    .version = SB_ADAPTER_VERSION,
    .name = "copydata",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK | SB_CAP_DESKTOP | SB_CAP_THREAD,
    .caps_of = copydata_caps_of,
    .create = copydata_create,
    .start = copydata_start,
    .deliver = copydata_deliver,
    .stop = copydata_stop,
    .destroy = copydata_destroy,
    .stats = copydata_stats,
};
