/*
 * Clipboard adapter (Windows, `type: clipboard`). A desktop type
 * (SB_CAP_DESKTOP): the clipboard belongs to a window station, so under a
 * service it runs in the session agent; `switchboard run` hosts it itself.
 * Each adapter runs a window thread of its own
 * (adapters/desktop/win/window_thread.c), whose message-only window opens
 * the clipboard and listens to it.
 *
 * `direction: out` (the default) is a route destination: a delivery
 * becomes the clipboard's content — CF_UNICODETEXT (the payload must be
 * UTF-8 text) or the format its clipboard-format header names (CF_TEXT
 * and CF_OEMTEXT converted through their code page, CF_DIB, CF_DIBV5 or a
 * registered format's name: the bytes) — and is acknowledged once
 * SetClipboardData succeeded and the clipboard is closed. A clipboard
 * another program holds open is retried with short backoff for
 * `busy_timeout`, then the attempt fails (the route retries it, then
 * dead-letters it with the reason). Deliveries are set in order.
 *
 * `direction: in` (opt-in: the clipboard is the user's) listens with
 * AddClipboardFormatListener and publishes each change: every configured
 * format the clipboard holds (`formats`, default CF_UNICODETEXT), each as
 * one message with the headers clipboard-format, clipboard-pid and
 * clipboard-owner (the owning program's file name), and encoding: utf-8
 * for text. It publishes nothing when:
 *   - the owner marked the content private: the format
 *     ExcludeClipboardContentFromMonitorProcessing or Clipboard Viewer
 *     Ignore is there, or CanIncludeInClipboardHistory holds 0 (password
 *     managers set them) — counted as skipped_private, logged without
 *     the content;
 *   - the broker's process put it there (this or another clipboard
 *     adapter's delivery) — skipped_own;
 *   - `owner_filter` is set and the owning program is not one it names —
 *     skipped_owner;
 *   - a format's data is over max_message — skipped_oversize.
 * The clipboard has no acknowledgement: a change the broker refuses to
 * commit (a full queue) is logged and counted as dropped. `both` does
 * both, and does not publish what it set itself.
 */
#include "adapters/clipboard/clip_formats.h"
#include "adapters/clipboard/clipboard_keys.h"
#include "adapters/desktop/win/window_thread.h"
#include "adapters/desktop/win/text.h"
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform/win/utf.h"
#include "service/topic.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define WINDOW_CLASS L"SwitchboardClipboard"
#define TIMER_READ 1
#define TIMER_WRITE 2
/* Retries of a clipboard held open by another program: this first, doubling. */
#define BUSY_FIRST_MS 5
#define BUSY_MAX_MS 100

typedef struct clip_format {
    UINT id;
    int kind; /* SB_CLIP_* */
    char *name;
} clip_format;

/* A delivery for the window thread to set. */
typedef struct clip_job {
    sb_wnd_job base;
    struct clip_adapter *a;
    sb_delivery *d; /* loop thread only */
    UINT fmt;
    char fmt_name[128];
    unsigned char *data;
    size_t len;
    int status;
    char why[320];
    struct clip_job *next; /* thread: waiting for the clipboard */
} clip_job;

/* A change the window thread read, for the loop to publish. */
typedef struct clip_pub {
    struct clip_adapter *a;
    char *topic;
    unsigned char *payload;
    size_t len;
    const char *fmt_name; /* the adapter's */
    int text;
    unsigned long pid;
    char owner[128];
    struct clip_pub *next;
} clip_pub;

typedef struct clip_adapter {
    sb_adapter base;
    sb_wnd_thread wt;
    int in, out;
    clip_format *formats;
    size_t nformats;
    UINT fmt_exclude, fmt_history, fmt_viewer_ignore;
    UINT codepage;
    sb_adapter_stopped_cb stopped_cb;

    /* counters (any thread) */
    atomic_ullong changes, published, skipped_private, skipped_own, skipped_owner, skipped_oversize,
        dropped, set, busy, failed;

    /* loop thread only */
    int publishing;
    int destroyed;

    /* window thread only */
    int listening;
    DWORD last_seq;         /* the last change handled */
    int reading;            /* a change waits for the clipboard to be free */
    uint64_t read_deadline; /* ... until then */
    int64_t read_backoff;
    clip_job *writes, *writes_tail; /* deliveries in order */
    uint64_t write_deadline;
    int64_t write_backoff;
} clip_adapter;

static const sb_clipboard_settings *settings(const clip_adapter *a)
{
    return SB_SETTINGS(const sb_clipboard_settings, a->base.cfg);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void pub_free(clip_pub *p)
{
    sb_free(p->topic);
    sb_free(p->payload);
    sb_free(p);
}

static void job_free(clip_job *j)
{
    sb_free(j->data);
    sb_free(j);
}

static void free_adapter(clip_adapter *a)
{
    sb_wnd_thread_free(&a->wt);
    for (size_t i = 0; i < a->nformats; i++)
        sb_free(a->formats[i].name);
    sb_free(a->formats);
    sb_free(a);
}

/* Who holds or owns the clipboard: "pid N (image)". */
static const char *window_owner(HWND h, char *buf, size_t n)
{
    DWORD pid = 0;
    char image[128];
    if (h == NULL) {
        snprintf(buf, n, "an unknown program");
        return buf;
    }
    GetWindowThreadProcessId(h, &pid);
    sb_wnd_process_image(pid, image, sizeof image);
    snprintf(buf, n, "pid %lu%s%s%s", (unsigned long)pid, image[0] != '\0' ? " (" : "", image,
             image[0] != '\0' ? ")" : "");
    return buf;
}

/* ---- in: reading a change (window thread) ---- */

static void on_pub(void *arg);

/* Which private-content marker the clipboard holds, or NULL (the
 * clipboard is open). */
static const char *private_marker(clip_adapter *a)
{
    HANDLE h;
    if (a->fmt_exclude != 0 && IsClipboardFormatAvailable(a->fmt_exclude))
        return SB_CLIP_EXCLUDE;
    if (a->fmt_viewer_ignore != 0 && IsClipboardFormatAvailable(a->fmt_viewer_ignore))
        return SB_CLIP_VIEWER_IGNORE;
    if (a->fmt_history != 0 && IsClipboardFormatAvailable(a->fmt_history) &&
        (h = GetClipboardData(a->fmt_history)) != NULL) {
        const DWORD *v = GlobalLock(h);
        int zero = v != NULL && GlobalSize(h) >= sizeof(DWORD) && *v == 0;
        if (v != NULL)
            GlobalUnlock(h);
        if (zero)
            return SB_CLIP_HISTORY " = 0";
    }
    return NULL;
}

/* One format's data as a payload (the clipboard is open). Returns 0 with
 * *out NULL when the format is not there; SB_ETOOBIG; SB_EINVAL with why. */
static int read_format(clip_adapter *a, const clip_format *f, unsigned char **out, size_t *len,
                       int *text, char *why, size_t n)
{
    const sb_clipboard_settings *s = settings(a);
    HANDLE h;
    const unsigned char *p;
    size_t size;
    int rc;

    *out = NULL;
    *len = 0;
    *text = 0;
    if (!IsClipboardFormatAvailable(f->id) || (h = GetClipboardData(f->id)) == NULL)
        return 0;
    size = GlobalSize(h);
    if (size > (size_t)s->max_message * (f->kind == SB_CLIP_BYTES ? 1 : 4) + 4) {
        snprintf(why, n, "%zu bytes is larger than max_message (%lld bytes)", size,
                 (long long)s->max_message);
        return SB_ETOOBIG;
    }
    if ((p = GlobalLock(h)) == NULL) {
        sb_win_strerror(GetLastError(), why, n);
        return SB_EIO;
    }
    if (f->kind == SB_CLIP_BYTES) {
        /* GlobalSize may round up: the block, as its owner allocated it */
        rc = (*out = sb_malloc(size + 1)) != NULL ? 0 : SB_ENOMEM;
        if (rc == 0) {
            memcpy(*out, p, size);
            *len = size;
        }
    } else {
        UINT fmt = f->kind == SB_CLIP_UTF16 ? CF_UNICODETEXT : CF_TEXT;
        UINT cp = f->kind == SB_CLIP_OEM ? GetOEMCP() : a->codepage;
        rc = sb_wtext_decode(out, len, text, p, size, fmt, cp, why, n);
    }
    GlobalUnlock(h);
    if (rc == 0 && *len > (size_t)s->max_message) {
        snprintf(why, n, "%zu bytes is larger than max_message (%lld bytes)", *len,
                 (long long)s->max_message);
        sb_free(*out);
        *out = NULL;
        return SB_ETOOBIG;
    }
    return rc;
}

static void arm_read_retry(clip_adapter *a)
{
    a->read_backoff = sb_backoff_next(a->read_backoff, BUSY_FIRST_MS, BUSY_MAX_MS);
    SetTimer(a->wt.hwnd, TIMER_READ, (UINT)a->read_backoff, NULL);
}

/* Reads and publishes the clipboard's content, once per change. */
static void read_change(clip_adapter *a)
{
    const sb_clipboard_settings *s = settings(a);
    clip_pub *pubs = NULL, **tail = &pubs;
    HWND owner;
    DWORD seq, pid = 0;
    char image[128], who[200], why[320];
    const char *marker;

    if (!a->reading) {
        a->reading = 1;
        a->read_deadline = now_ms() + (uint64_t)s->busy_timeout_ms;
        a->read_backoff = 0;
    }
    if (!OpenClipboard(a->wt.hwnd)) {
        if (now_ms() < a->read_deadline) {
            arm_read_retry(a);
            return;
        }
        a->reading = 0;
        atomic_fetch_add(&a->dropped, 1);
        sb_log(SB_LOG_WARN, a->base.name,
               "a clipboard change was not read: %s held the clipboard for %lld ms",
               window_owner(GetOpenClipboardWindow(), who, sizeof who),
               (long long)s->busy_timeout_ms);
        return;
    }
    a->reading = 0;
    /* read while open: nobody can change it meanwhile */
    seq = GetClipboardSequenceNumber();
    if (seq != 0 && seq == a->last_seq) {
        CloseClipboard();
        return; /* handled already */
    }
    a->last_seq = seq;
    atomic_fetch_add(&a->changes, 1);
    owner = GetClipboardOwner();
    if (owner != NULL)
        GetWindowThreadProcessId(owner, &pid);
    sb_wnd_process_image(pid, image, sizeof image);
    if (pid != 0 && pid == GetCurrentProcessId()) {
        CloseClipboard();
        atomic_fetch_add(&a->skipped_own, 1);
        sb_log(SB_LOG_DEBUG, a->base.name, "clipboard change %lu: set by the broker, not published",
               (unsigned long)seq);
        return;
    }
    if (!sb_clip_owner_allowed((const char *const *)s->owner_filter, s->owner_filter_count,
                               image[0] != '\0' ? image : NULL)) {
        CloseClipboard();
        atomic_fetch_add(&a->skipped_owner, 1);
        sb_log(SB_LOG_DEBUG, a->base.name,
               "clipboard change %lu: from pid %lu (%s), not a program of owner_filter",
               (unsigned long)seq, (unsigned long)pid, image[0] != '\0' ? image : "unknown");
        return;
    }
    if ((marker = private_marker(a)) != NULL) {
        CloseClipboard();
        atomic_fetch_add(&a->skipped_private, 1);
        sb_log(SB_LOG_INFO, a->base.name,
               "clipboard change %lu: marked private by pid %lu%s%s%s (%s): not published "
               "(%llu skipped so far)",
               (unsigned long)seq, (unsigned long)pid, image[0] != '\0' ? " (" : "", image,
               image[0] != '\0' ? ")" : "", marker,
               (unsigned long long)atomic_load(&a->skipped_private));
        return;
    }
    for (size_t i = 0; i < a->nformats; i++) {
        unsigned char *data;
        size_t len;
        int text, rc;
        clip_pub *p;
        why[0] = '\0';
        rc = read_format(a, &a->formats[i], &data, &len, &text, why, sizeof why);
        if (rc != 0) {
            if (rc == SB_ETOOBIG)
                atomic_fetch_add(&a->skipped_oversize, 1);
            else
                atomic_fetch_add(&a->dropped, 1);
            sb_log(SB_LOG_WARN, a->base.name, "clipboard change %lu: %s not published: %s",
                   (unsigned long)seq, a->formats[i].name, rc == SB_ENOMEM ? "out of memory" : why);
            continue;
        }
        if (data == NULL)
            continue; /* not there */
        p = sb_calloc(1, sizeof(*p));
        if (p == NULL ||
            (p->topic = sb_clip_topic(s->topic, a->base.name, a->formats[i].name)) == NULL) {
            sb_free(p);
            sb_free(data);
            atomic_fetch_add(&a->dropped, 1);
            sb_log(SB_LOG_ERROR, a->base.name, "clipboard change %lu: out of memory",
                   (unsigned long)seq);
            continue;
        }
        p->a = a;
        p->payload = data;
        p->len = len;
        p->text = text;
        p->fmt_name = a->formats[i].name;
        p->pid = pid;
        snprintf(p->owner, sizeof p->owner, "%s", image);
        *tail = p;
        tail = &p->next;
    }
    CloseClipboard();
    while (pubs != NULL) {
        clip_pub *next = pubs->next;
        sb_wnd_thread_post(&a->wt, on_pub, pubs); /* now the loop's */
        pubs = next;
    }
}

/* ---- in: publishing (loop thread) ---- */

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    clip_pub *p = ctx;
    clip_adapter *a = p->a;
    (void)id;
    (void)queues;
    a->publishing--;
    if (status == 0) {
        atomic_fetch_add(&a->published, 1);
    } else if (!a->destroyed) {
        atomic_fetch_add(&a->dropped, 1);
        sb_log(SB_LOG_ERROR, a->base.name, "clipboard content (%s) not committed: %s", p->fmt_name,
               why != NULL ? why : sb_strerror(status));
    }
    pub_free(p);
    if (a->destroyed && a->publishing == 0)
        free_adapter(a);
}

static void on_pub(void *arg)
{
    clip_pub *p = arg;
    clip_adapter *a = p->a;
    char source[200], pid[24];
    sb_publish_opts opts = {source, 0, NULL};
    sb_message *msg;
    sb_error err;
    const char *why = NULL;

    snprintf(source, sizeof source, "%s clipboard pid %lu%s%s", a->base.name, p->pid,
             p->owner[0] != '\0' ? " " : "", p->owner);
    snprintf(pid, sizeof pid, "%lu", p->pid);
    msg = sb_message_new_owned(p->topic, p->payload, p->len);
    p->payload = NULL; /* now the message's (freed on failure) */
    if (msg == NULL || sb_message_add_header(msg, "clipboard-format", p->fmt_name) != 0 ||
        sb_message_add_header(msg, "clipboard-pid", pid) != 0 ||
        (p->owner[0] != '\0' && sb_message_add_header(msg, "clipboard-owner", p->owner) != 0) ||
        (p->text && sb_message_add_header(msg, "encoding", "utf-8") != 0)) {
        why = "out of memory";
    } else if (!sb_auth_allowed(sb_broker_auth(a->base.broker), NULL, NULL, p->topic,
                                SB_ACL_WRITE)) {
        why = "denied by the ACL (the clipboard publishes as anonymous)";
    } else if (sb_broker_publish(a->base.broker, msg, &opts, on_published, p, &err) == 0) {
        a->publishing++;
        sb_message_unref(msg);
        return; /* p is on_published's */
    } else {
        why = err.msg;
    }
    atomic_fetch_add(&a->dropped, 1);
    sb_log(SB_LOG_ERROR, a->base.name, "clipboard content (%s) dropped: %s", p->fmt_name, why);
    if (msg != NULL)
        sb_message_unref(msg);
    pub_free(p);
}

/* ---- out: setting deliveries (window thread) ---- */

static void on_set(void *arg);

/* Sets one delivery: 1 done (j->status says how), 0 the clipboard is busy. */
static int try_set(clip_adapter *a, clip_job *j)
{
    HGLOBAL h;
    void *p;
    char text[200];

    if (!OpenClipboard(a->wt.hwnd))
        return 0;
    if (!EmptyClipboard()) {
        sb_win_strerror(GetLastError(), text, sizeof text);
        snprintf(j->why, sizeof j->why, "EmptyClipboard failed: %s", text);
        j->status = SB_EIO;
        CloseClipboard();
        return 1;
    }
    h = GlobalAlloc(GMEM_MOVEABLE, j->len > 0 ? j->len : 1);
    if (h == NULL || (p = GlobalLock(h)) == NULL) {
        if (h != NULL)
            GlobalFree(h);
        snprintf(j->why, sizeof j->why, "out of memory");
        j->status = SB_ENOMEM;
        CloseClipboard();
        return 1;
    }
    memcpy(p, j->data, j->len);
    GlobalUnlock(h);
    if (SetClipboardData(j->fmt, h) == NULL) {
        sb_win_strerror(GetLastError(), text, sizeof text);
        GlobalFree(h);
        snprintf(j->why, sizeof j->why, "SetClipboardData(%s) failed: %s", j->fmt_name, text);
        j->status = SB_EIO;
        CloseClipboard();
        return 1;
    }
    /* h is the system's now */
    if (!CloseClipboard()) {
        sb_win_strerror(GetLastError(), text, sizeof text);
        snprintf(j->why, sizeof j->why, "CloseClipboard failed: %s", text);
        j->status = SB_EIO;
        return 1;
    }
    j->status = 0;
    return 1;
}

/* Sets the waiting deliveries in order, until the clipboard is busy. */
static void run_writes(clip_adapter *a)
{
    const sb_clipboard_settings *s = settings(a);
    clip_job *j;
    KillTimer(a->wt.hwnd, TIMER_WRITE);
    while ((j = a->writes) != NULL && !sb_wnd_thread_quitting(&a->wt)) {
        if (!try_set(a, j)) {
            char who[200];
            if (a->write_deadline == 0) {
                a->write_deadline = now_ms() + (uint64_t)s->busy_timeout_ms;
                a->write_backoff = 0;
            }
            atomic_fetch_add(&a->busy, 1);
            if (now_ms() < a->write_deadline) {
                a->write_backoff = sb_backoff_next(a->write_backoff, BUSY_FIRST_MS, BUSY_MAX_MS);
                SetTimer(a->wt.hwnd, TIMER_WRITE, (UINT)a->write_backoff, NULL);
                return;
            }
            j->status = SB_EBUSY;
            snprintf(j->why, sizeof j->why, "the clipboard was held open by %s for %lld ms",
                     window_owner(GetOpenClipboardWindow(), who, sizeof who),
                     (long long)s->busy_timeout_ms);
        }
        a->write_deadline = 0;
        a->writes = j->next;
        if (a->writes == NULL)
            a->writes_tail = NULL;
        sb_wnd_thread_post(&a->wt, on_set, j);
    }
}

static void set_job(sb_wnd_thread *t, sb_wnd_job *base)
{
    clip_adapter *a = t->ctx;
    clip_job *j = (clip_job *)base;
    int idle = a->writes == NULL;
    j->next = NULL;
    if (a->writes_tail != NULL)
        a->writes_tail->next = j;
    else
        a->writes = j;
    a->writes_tail = j;
    if (idle)
        run_writes(a); /* else a retry is under way: this one waits its turn */
}

static int thread_proc(sb_wnd_thread *t, UINT msg, WPARAM wp, LPARAM lp, LRESULT *result)
{
    clip_adapter *a = t->ctx;
    (void)lp;
    switch (msg) {
    case WM_CLIPBOARDUPDATE:
        if (a->in && !a->reading)
            read_change(a);
        *result = 0;
        return 1;
    case WM_TIMER:
        if (wp == TIMER_READ) {
            KillTimer(t->hwnd, TIMER_READ);
            read_change(a);
        } else if (wp == TIMER_WRITE) {
            run_writes(a);
        }
        *result = 0;
        return 1;
    default:
        return 0;
    }
}

static int thread_init(sb_wnd_thread *t, char *why, size_t n)
{
    clip_adapter *a = t->ctx;
    if (!a->in)
        return 0;
    /* what is on the clipboard already is not a change */
    a->last_seq = GetClipboardSequenceNumber();
    if (!AddClipboardFormatListener(t->hwnd)) {
        char text[200];
        sb_win_strerror(GetLastError(), text, sizeof text);
        snprintf(why, n, "AddClipboardFormatListener failed: %s", text);
        return SB_EIO;
    }
    a->listening = 1;
    return 0;
}

static void thread_fini(sb_wnd_thread *t)
{
    clip_adapter *a = t->ctx;
    if (a->listening)
        RemoveClipboardFormatListener(t->hwnd);
    /* deliveries not set: the broker returns them to their queue */
    while (a->writes != NULL) {
        clip_job *j = a->writes;
        a->writes = j->next;
        j->status = SB_ESHUTDOWN;
        snprintf(j->why, sizeof j->why, "stopping");
        sb_wnd_thread_post(t, on_set, j);
    }
    a->writes_tail = NULL;
}

/* ---- out: the sink (loop thread) ---- */

static void on_set(void *arg)
{
    clip_job *j = arg;
    clip_adapter *a = j->a;
    if (j->status == SB_ESHUTDOWN) {
        /* the adapter is stopping: detached with it, the delivery returns
         * to its queue without counting as an attempt */
        job_free(j);
        return;
    }
    if (j->status == 0) {
        atomic_fetch_add(&a->set, 1);
    } else {
        atomic_fetch_add(&a->failed, 1);
        sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s not set (attempt %d): %s",
               (unsigned long long)j->d->msg->id, j->d->sub, j->d->attempt, j->why);
    }
    sb_delivery_done(j->d, j->status, j->status != 0 ? j->why : NULL);
    job_free(j);
}

static void refuse(clip_adapter *a, sb_delivery *d, int status, const char *why)
{
    atomic_fetch_add(&a->failed, 1);
    sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s refused (attempt %d): %s",
           (unsigned long long)d->msg->id, d->sub, d->attempt, why);
    sb_delivery_done(d, status, why);
}

/* The format and data of a delivery: 0, or SB_E* with why. */
static int prepare(clip_adapter *a, clip_job *j, const sb_message *msg, char *why, size_t n)
{
    const char *name = sb_message_header(msg, "clipboard-format");
    const sb_clip_std *std;
    const char *problem;
    int kind;

    if (name == NULL)
        name = "CF_UNICODETEXT";
    if ((problem = sb_clip_format_problem(name)) != NULL) {
        snprintf(why, n, "header clipboard-format %s: %s", name, problem);
        return SB_EINVAL;
    }
    std = sb_clip_std_by_name(name);
    if (std != NULL) {
        j->fmt = std->id;
        kind = std->kind;
        snprintf(j->fmt_name, sizeof j->fmt_name, "%s", std->name);
    } else {
        wchar_t *w = sb_utf8_to_wide(name);
        j->fmt = w != NULL ? RegisterClipboardFormatW(w) : 0;
        sb_free(w);
        if (j->fmt == 0) {
            snprintf(why, n, "cannot register the clipboard format %s", name);
            return SB_EINVAL;
        }
        kind = SB_CLIP_BYTES;
        snprintf(j->fmt_name, sizeof j->fmt_name, "%s", name);
    }
    if (kind == SB_CLIP_BYTES) {
        j->data = sb_malloc(msg->payload_len + 1);
        if (j->data == NULL)
            return SB_ENOMEM;
        memcpy(j->data, msg->payload, msg->payload_len);
        j->len = msg->payload_len;
        return 0;
    }
    if (!sb_utf8_valid((const char *)msg->payload, msg->payload_len)) {
        snprintf(why, n,
                 "the payload is not UTF-8 text (name a registered format in header "
                 "clipboard-format to set bytes)");
        return SB_EINVAL;
    }
    return sb_wtext_encode(&j->data, &j->len, msg->payload, msg->payload_len,
                           kind == SB_CLIP_UTF16 ? CF_UNICODETEXT : CF_TEXT,
                           kind == SB_CLIP_OEM ? GetOEMCP() : a->codepage, why, n);
}

static int clipboard_deliver(sb_adapter *base, sb_delivery *d)
{
    clip_adapter *a = (clip_adapter *)base;
    const sb_clipboard_settings *s = settings(a);
    char why[320] = "";
    clip_job *j;
    int rc;

    if (!a->out || !sb_wnd_thread_running(&a->wt) || base->stopping)
        return SB_EBUSY;
    if (d->msg->payload_len > (size_t)s->max_message) {
        snprintf(why, sizeof why, "payload of %zu bytes is larger than max_message (%lld bytes)",
                 d->msg->payload_len, (long long)s->max_message);
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
    if ((rc = prepare(a, j, d->msg, why, sizeof why)) != 0) {
        job_free(j);
        refuse(a, d, rc, rc == SB_ENOMEM ? "out of memory" : why);
        return 0;
    }
    sb_wnd_thread_push(&a->wt, &j->base);
    return 0;
}

/* ---- lifecycle ---- */

static void thread_exited(sb_wnd_thread *t, sb_wnd_job *left)
{
    clip_adapter *a = t->ctx;
    while (left != NULL) {
        sb_wnd_job *next = left->next;
        job_free((clip_job *)left); /* the broker returns their deliveries */
        left = next;
    }
    a->stopped_cb(&a->base);
}

static int clipboard_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    clip_adapter *a = sb_calloc(1, sizeof(*a));
    (void)cfg;
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &a->base;
    return 0;
}

static UINT register_format(const char *name)
{
    wchar_t *w = sb_utf8_to_wide(name);
    UINT id = w != NULL ? RegisterClipboardFormatW(w) : 0;
    sb_free(w);
    return id;
}

/* The formats published, resolved (registered formats get their id of
 * this session). */
static int resolve_formats(clip_adapter *a, sb_error *err)
{
    const sb_clipboard_settings *s = settings(a);
    static const char *const def[] = {"CF_UNICODETEXT"};
    const char *const *names = s->formats_count > 0 ? (const char *const *)s->formats : def;
    size_t count = s->formats_count > 0 ? s->formats_count : 1;

    a->formats = sb_calloc(count, sizeof(*a->formats));
    if (a->formats == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
    for (size_t i = 0; i < count; i++) {
        const sb_clip_std *std = sb_clip_std_by_name(names[i]);
        clip_format *f = &a->formats[a->nformats];
        f->name = sb_strdup(std != NULL ? std->name : names[i]);
        if (f->name == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
        a->nformats++;
        f->id = std != NULL ? std->id : register_format(names[i]);
        f->kind = std != NULL ? std->kind : SB_CLIP_BYTES;
        if (f->id == 0)
            return sb_error_set(err, SB_EIO, (int)GetLastError(),
                                "adapter %s: cannot register the clipboard format %s", a->base.name,
                                names[i]);
    }
    a->fmt_exclude = register_format(SB_CLIP_EXCLUDE);
    a->fmt_history = register_format(SB_CLIP_HISTORY);
    a->fmt_viewer_ignore = register_format(SB_CLIP_VIEWER_IGNORE);
    if (a->fmt_exclude == 0 || a->fmt_history == 0 || a->fmt_viewer_ignore == 0)
        return sb_error_set(err, SB_EIO, (int)GetLastError(),
                            "adapter %s: cannot register the private-content formats",
                            a->base.name);
    return 0;
}

static int clipboard_start(sb_adapter *base, sb_error *err)
{
    clip_adapter *a = (clip_adapter *)base;
    const sb_clipboard_settings *s = settings(a);
    int rc;

    a->in = s->direction != SB_CLIPBOARD_OUT;
    a->out = s->direction != SB_CLIPBOARD_IN;
    if (s->codepage != 0 && !IsValidCodePage((UINT)s->codepage))
        return sb_error_set(err, SB_ECONFIG, 0,
                            "adapter %s: codepage %d is not installed on this system", base->name,
                            s->codepage);
    a->codepage = s->codepage != 0 ? (UINT)s->codepage : GetACP();
    if (a->in && (rc = resolve_formats(a, err)) != 0)
        return rc;
    a->wt.name = base->name;
    a->wt.loop = base->loop;
    a->wt.ctx = a;
    a->wt.class_name = WINDOW_CLASS;
    a->wt.title = NULL;
    a->wt.init = thread_init;
    a->wt.proc = thread_proc;
    a->wt.run = set_job;
    a->wt.fini = thread_fini;
    a->wt.exited = thread_exited;
    if ((rc = sb_wnd_thread_start(&a->wt, err)) != 0)
        return rc;
    if (a->in) {
        char list[512];
        size_t len = 0;
        list[0] = '\0';
        for (size_t i = 0; i < a->nformats && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i > 0 ? ", " : "",
                                    a->formats[i].name);
        sb_log(SB_LOG_INFO, base->name,
               "listens to the clipboard: publishes %s as %s%s; content marked private is "
               "skipped",
               list, s->topic, s->owner_filter_count > 0 ? " (owner_filter set)" : "");
    }
    if (a->out)
        sb_log(SB_LOG_INFO, base->name,
               "sets deliveries on the clipboard (CF_UNICODETEXT, or the clipboard-format "
               "header's format)");
    return 0;
}

static void clipboard_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    clip_adapter *a = (clip_adapter *)base;
    a->stopped_cb = cb;
    if (sb_wnd_thread_running(&a->wt)) {
        sb_wnd_thread_quit(&a->wt); /* thread_exited completes the stop */
        return;
    }
    cb(base);
}

static void clipboard_destroy(sb_adapter *base)
{
    clip_adapter *a = (clip_adapter *)base;
    if (a->publishing > 0) {
        a->destroyed = 1; /* the last publish callback frees it */
        return;
    }
    free_adapter(a);
}

static void *clipboard_stats(sb_adapter *base)
{
    clip_adapter *a = (clip_adapter *)base;
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
#define PUT(name) json_object_set_new(o, #name, json_integer((json_int_t)atomic_load(&a->name)))
    if (a->in) {
        PUT(changes);
        PUT(published);
        PUT(skipped_private);
        PUT(skipped_own);
        PUT(skipped_owner);
        PUT(skipped_oversize);
        PUT(dropped);
    }
    if (a->out) {
        PUT(set);
        PUT(busy);
        PUT(failed);
    }
#undef PUT
    return o;
}

static unsigned clipboard_caps_of(const sb_adapter_config *cfg)
{
    const sb_clipboard_settings *s = SB_SETTINGS(const sb_clipboard_settings, cfg);
    return SB_CAP_DESKTOP | SB_CAP_THREAD | (s->direction != SB_CLIPBOARD_OUT ? SB_CAP_SOURCE : 0) |
           (s->direction != SB_CLIPBOARD_IN ? SB_CAP_SINK : 0);
}

const sb_adapter_type sb_adapter_clipboard = {
    .version = SB_ADAPTER_VERSION,
    .name = "clipboard",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK | SB_CAP_DESKTOP | SB_CAP_THREAD,
    .caps_of = clipboard_caps_of,
    .create = clipboard_create,
    .start = clipboard_start,
    .deliver = clipboard_deliver,
    .stop = clipboard_stop,
    .destroy = clipboard_destroy,
    .stats = clipboard_stats,
};
