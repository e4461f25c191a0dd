/*
 * The DDE adapter's thread: a DDEML instance, a message-only window that
 * receives the loop's wake-ups (a window, not thread messages: DDEML's own
 * modal loops dispatch window messages but would drop thread messages), and
 * the message loop that runs DDEML's callbacks.
 *
 * The loop hands work over in a locked queue and wakes the thread with one
 * message per batch. The thread hands the loop work through the adapter's
 * inbox; its last post is its exit, after which the loop joins it. A poke
 * or execute the server role received waits for its commit here, blocking
 * this thread (Wine's DDEML ignores CBR_BLOCK for pokes, so a blocked and
 * re-enabled conversation cannot be used; waiting is as durable and the
 * broker commits in groups meanwhile).
 */
#include "adapters/dde/win/dde_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#define WINDOW_CLASS L"SwitchboardDdeAdapter"
/* How long start() waits for the thread to initialise DDEML. */
#define START_WAIT_MS 10000

static _Thread_local sb_dde_adapter *current;

sb_dde_adapter *sb_dde__current(void)
{
    return current;
}

void sb_dde__post(sb_dde_adapter *a, sb_inbox_fn fn, void *arg)
{
    /* Only out-of-memory makes a post fail: the loop closes the inbox only
     * after this thread is gone. */
    while (sb_inbox_post(a->inbox, fn, arg) == SB_ENOMEM)
        Sleep(10);
}

void sb_dde__job_free(sb_dde_job *job)
{
    if (job == NULL)
        return;
    sb_free(job->key);
    sb_free(job->dde_topic);
    sb_free(job->item);
    sb_dde__value_clear(&job->value);
    sb_free(job);
}

void sb_dde__pub_free(sb_dde_pub *p)
{
    if (p == NULL)
        return;
    if (p->unsettled)
        sb_dde__unsettled_done(p->a);
    sb_free(p->topic);
    sb_free(p->payload);
    sb_free(p->dde_topic);
    sb_free(p->item);
    sb_free(p->fmt_name);
    sb_free(p);
}

char *sb_dde__hsz_utf8(DWORD inst, HSZ hsz)
{
    wchar_t w[260];
    DWORD n = DdeQueryStringW(inst, hsz, w, (DWORD)(sizeof w / sizeof w[0]), CP_WINUNICODE);
    if (n == 0 && hsz == 0)
        return NULL;
    w[n < 259 ? n : 259] = 0;
    return sb_wide_to_utf8(w);
}

char *sb_dde__fold(const char *name)
{
    wchar_t *w = sb_utf8_to_wide(name);
    char *out;
    if (w == NULL)
        return NULL;
    CharUpperBuffW(w, (DWORD)wcslen(w));
    out = sb_wide_to_utf8(w);
    sb_free(w);
    return out;
}

/* ---- loop -> thread ---- */

void sb_dde__push(sb_dde_adapter *a, sb_dde_job *job)
{
    int wake;
    job->a = a;
    job->next = NULL;
    uv_mutex_lock(&a->lock);
    if (job->type == SB_DDE_JOB_VALUE && job->key != NULL) {
        sb_dde_job *queued = sb_map_get(&a->pending_values, job->key);
        if (queued != NULL) {
            sb_dde_value older = queued->value;
            queued->value = job->value;
            job->value = older;
            uv_mutex_unlock(&a->lock);
            sb_dde__job_free(job); /* with the older value */
            return;
        }
        /* out of memory here only costs the coalescing */
        (void)sb_map_put(&a->pending_values, job->key, job, NULL);
    }
    if (a->jobs_tail != NULL)
        a->jobs_tail->next = job;
    else
        a->jobs = job;
    a->jobs_tail = job;
    wake = !a->wake_posted;
    a->wake_posted = 1;
    uv_mutex_unlock(&a->lock);
    if (wake && !PostMessageW(a->hwnd, SB_DDE_WM_WAKE, 0, 0)) {
        /* The thread's queue is full (10000 messages): it is far behind,
         * and the next push tries again. */
        uv_mutex_lock(&a->lock);
        a->wake_posted = 0;
        uv_mutex_unlock(&a->lock);
    }
}

void sb_dde__push_batch(sb_dde_adapter *a, sb_dde_job *head, sb_dde_job *tail)
{
    int wake;
    for (sb_dde_job *j = head; j != NULL; j = j->next)
        j->a = a;
    uv_mutex_lock(&a->lock);
    if (a->jobs_tail != NULL)
        a->jobs_tail->next = head;
    else
        a->jobs = head;
    a->jobs_tail = tail;
    wake = !a->wake_posted;
    a->wake_posted = 1;
    uv_mutex_unlock(&a->lock);
    if (wake && !PostMessageW(a->hwnd, SB_DDE_WM_WAKE, 0, 0)) {
        uv_mutex_lock(&a->lock);
        a->wake_posted = 0;
        uv_mutex_unlock(&a->lock);
    }
}

/* Thread: runs every queued job. */
static void run_jobs(sb_dde_adapter *a)
{
    sb_dde_job *jobs;
    int values = 0;
    uv_mutex_lock(&a->lock);
    jobs = a->jobs;
    a->jobs = a->jobs_tail = NULL;
    a->wake_posted = 0;
    sb_map_clear(&a->pending_values);
    uv_mutex_unlock(&a->lock);
    while (jobs != NULL) {
        sb_dde_job *next = jobs->next;
        values |= jobs->type == SB_DDE_JOB_VALUE;
        if (a->is_server)
            sb_dde__server_job(a, jobs);
        else
            sb_dde__client_job(a, jobs);
        jobs = next;
    }
    if (a->is_server)
        sb_dde__server_advise(a);
    if (values) {
        atomic_store(&a->values_done, 1);
        sb_dde__post(a, sb_dde__on_values_done, a); /* the next batch, please */
    }
}

void sb_dde__thread_quit(sb_dde_adapter *a)
{
    HWND hwnd;
    uv_mutex_lock(&a->lock);
    a->quit = 1;
    hwnd = a->hwnd; /* NULL while a slow start is under way: it sees quit */
    uv_cond_broadcast(&a->cond);
    uv_mutex_unlock(&a->lock);
    if (a->commit_event != NULL)
        SetEvent(a->commit_event);
    if (hwnd != NULL)
        PostMessageW(hwnd, SB_DDE_WM_QUIT, 0, 0);
}

/* ---- waiting for a commit (server role) ---- */

static void waiter_release(sb_dde_waiter *w)
{
    if (--w->refs == 0)
        sb_free(w);
}

void sb_dde__waiter_done(sb_dde_adapter *a, sb_dde_waiter *w, int status, const char *why)
{
    uv_mutex_lock(&a->lock);
    w->done = 1;
    w->status = status;
    snprintf(w->why, sizeof w->why, "%s", why != NULL ? why : "");
    waiter_release(w);
    uv_mutex_unlock(&a->lock);
    SetEvent(a->commit_event);
}

void sb_dde__unsettled_done(sb_dde_adapter *a)
{
    uv_mutex_lock(&a->lock);
    a->unsettled--;
    uv_mutex_unlock(&a->lock);
    SetEvent(a->commit_event);
}

/* Waits (with a->lock held, released meanwhile) until the loop sets the
 * commit event, quit, or the deadline (0: none), handling only messages
 * other threads send meanwhile (a DDE broadcast from another adapter's
 * thread, say): nothing posted is dispatched, so DDEML is not re-entered.
 * Returns 0 once the deadline passed. */
static int wait_commit_event(sb_dde_adapter *a, uint64_t deadline)
{
    uint64_t now = uv_hrtime();
    DWORD r, ms = INFINITE;
    MSG m;

    if (deadline != 0) {
        if (now >= deadline)
            return 0;
        ms = (DWORD)((deadline - now) / 1000000u) + 1;
    }
    uv_mutex_unlock(&a->lock);
    r = MsgWaitForMultipleObjects(1, &a->commit_event, FALSE, ms, QS_SENDMESSAGE);
    if (r == WAIT_OBJECT_0 + 1)
        PeekMessageW(&m, NULL, 0, 0, PM_NOREMOVE | PM_QS_SENDMESSAGE);
    uv_mutex_lock(&a->lock);
    return 1;
}

HDDEDATA sb_dde__publish_wait(sb_dde_adapter *a, sb_dde_pub *p, int wait)
{
    sb_dde_waiter *w = NULL;
    uint64_t deadline = uv_hrtime() + (uint64_t)SB_DDE_COMMIT_WAIT_MS * 1000000u;
    HDDEDATA answer = (HDDEDATA)DDE_FBUSY;
    char what[300];

    if (!wait) {
        uv_mutex_lock(&a->lock);
        while (a->unsettled >= SB_DDE_MAX_UNSETTLED && !a->quit)
            wait_commit_event(a, 0);
        a->unsettled++;
        p->unsettled = 1;
        uv_mutex_unlock(&a->lock);
        sb_dde__post(a, sb_dde__on_pub, p); /* now owned by the loop */
        return (HDDEDATA)DDE_FACK;
    }
    w = sb_calloc(1, sizeof(*w));
    if (w == NULL) {
        sb_dde__pub_free(p);
        return (HDDEDATA)DDE_FBUSY;
    }
    w->refs = 2;
    p->waiter = w;
    snprintf(what, sizeof what, "%s%s%s", p->dde_topic != NULL ? p->dde_topic : "",
             p->item != NULL ? "!" : "", p->item != NULL ? p->item : "");
    sb_dde__post(a, sb_dde__on_pub, p); /* now owned by the loop */

    uv_mutex_lock(&a->lock);
    while (!w->done && !a->quit && wait_commit_event(a, deadline))
        ;
    if (w->done && w->status == 0) {
        answer = (HDDEDATA)DDE_FACK;
    } else if (w->done) {
        answer = (HDDEDATA)DDE_FNOTPROCESSED;
        sb_log(SB_LOG_WARN, a->base.name, "%s refused (DDE_FNOTPROCESSED): %s", what, w->why);
    } else {
        sb_log(SB_LOG_WARN, a->base.name,
               "%s: no commit within %d ms%s; answered DDE_FBUSY (the client may retry)", what,
               SB_DDE_COMMIT_WAIT_MS, a->quit ? " (stopping)" : "");
    }
    waiter_release(w);
    uv_mutex_unlock(&a->lock);
    return answer;
}

/* ---- the thread ---- */

static LRESULT CALLBACK wndproc(HWND hwnd, UINT msg, WPARAM wp, LPARAM lp)
{
    sb_dde_adapter *a = current;
    if (a == NULL)
        return DefWindowProcW(hwnd, msg, wp, lp);
    switch (msg) {
    case SB_DDE_WM_WAKE:
        run_jobs(a);
        return 0;
    case SB_DDE_WM_QUIT:
        PostQuitMessage(0);
        return 0;
    case SB_DDE_WM_ADVISE:
        if (a->is_server)
            sb_dde__server_advise(a);
        return 0;
    case SB_DDE_WM_PROBE:
        if (a->is_server)
            sb_dde__server_probe(a);
        return 0;
    case SB_DDE_WM_CHECK:
        if (!a->is_server)
            sb_dde__client_check(a);
        return 0;
    case WM_TIMER:
        if (!a->is_server)
            sb_dde__client_timer(a, (UINT_PTR)wp);
        return 0;
    default:
        return DefWindowProcW(hwnd, msg, wp, lp);
    }
}

static void on_thread_exit(void *arg);

/* Thread: reports how starting went and wakes start(). A failure ends the
 * thread: start() joins it, unless it gave up waiting (then the loop does,
 * after the exit post). */
static void report_start(sb_dde_adapter *a, int rc, const char *why)
{
    int abandoned;
    uv_mutex_lock(&a->lock);
    a->ready = 1;
    a->start_rc = rc;
    abandoned = a->start_abandoned;
    snprintf(a->start_why, sizeof a->start_why, "%s", why != NULL ? why : "");
    uv_cond_broadcast(&a->cond);
    uv_mutex_unlock(&a->lock);
    if (rc != 0 && abandoned)
        sb_dde__post(a, on_thread_exit, a);
}

static void thread_main(void *arg)
{
    sb_dde_adapter *a = arg;
    WNDCLASSEXW wc;
    MSG msg;
    char why[256] = "";
    UINT rc;
    HWND hwnd;
    int init = 0, quit;

    current = a;
    memset(&wc, 0, sizeof wc);
    wc.cbSize = sizeof wc;
    wc.lpfnWndProc = wndproc;
    wc.hInstance = GetModuleHandleW(NULL);
    wc.lpszClassName = WINDOW_CLASS;
    if (!RegisterClassExW(&wc) && GetLastError() != ERROR_CLASS_ALREADY_EXISTS) {
        sb_win_strerror(GetLastError(), why, sizeof why);
        report_start(a, SB_EIO, why);
        return;
    }
    hwnd = CreateWindowExW(0, WINDOW_CLASS, L"", 0, 0, 0, 0, 0, HWND_MESSAGE, NULL, wc.hInstance,
                           NULL);
    uv_mutex_lock(&a->lock);
    a->hwnd = hwnd;
    uv_mutex_unlock(&a->lock);
    if (hwnd == NULL) {
        char text[200];
        sb_win_strerror(GetLastError(), text, sizeof text);
        snprintf(why, sizeof why, "cannot create the DDE thread's window: %s", text);
        report_start(a, SB_EIO, why);
        return;
    }
    rc = DdeInitializeW(&a->inst, a->is_server ? sb_dde__server_cb : sb_dde__client_cb,
                        a->is_server ? (APPCLASS_STANDARD | CBF_SKIP_REGISTRATIONS |
                                        CBF_SKIP_UNREGISTRATIONS | CBF_FAIL_SELFCONNECTIONS)
                                     : (APPCMD_CLIENTONLY | CBF_SKIP_UNREGISTRATIONS),
                        0);
    if (rc != DMLERR_NO_ERROR) {
        snprintf(why, sizeof why,
                 "DdeInitialize failed (DMLERR 0x%04x); DDE needs a desktop session (under Wine "
                 "a graphics driver, e.g. the null driver)",
                 rc);
        DestroyWindow(a->hwnd);
        report_start(a, SB_EIO, why);
        return;
    }
    init = (a->is_server ? sb_dde__server_init(a, why, sizeof why)
                         : sb_dde__client_init(a, why, sizeof why)) == 0;
    if (!init) {
        if (a->is_server)
            sb_dde__server_fini(a);
        else
            sb_dde__client_fini(a);
        DdeUninitialize(a->inst);
        DestroyWindow(a->hwnd);
        report_start(a, SB_EIO, why);
        return;
    }
    report_start(a, 0, NULL);

    uv_mutex_lock(&a->lock);
    quit = a->quit; /* a stop that came before the window could be told */
    uv_mutex_unlock(&a->lock);
    while (!quit && GetMessageW(&msg, NULL, 0, 0) > 0)
        DispatchMessageW(&msg);

    if (a->is_server)
        sb_dde__server_fini(a);
    else
        sb_dde__client_fini(a);
    DdeUninitialize(a->inst);
    DestroyWindow(a->hwnd);
    current = NULL;
    sb_dde__post(a, on_thread_exit, a);
}

/* Loop: the thread's last post. The stop completes in dde.c. */
static void on_thread_exit(void *arg)
{
    sb_dde__on_thread_exit(arg);
}

int sb_dde__thread_start(sb_dde_adapter *a, sb_error *err)
{
    uint64_t deadline;
    int rc;

    if (sb_inbox_new(&a->inbox, a->base.loop) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
    if (uv_mutex_init(&a->lock) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a lock", a->base.name);
    if (uv_cond_init(&a->cond) != 0) {
        uv_mutex_destroy(&a->lock);
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a condition",
                            a->base.name);
    }
    a->sync_init = 1;
    a->commit_event = CreateEventW(NULL, FALSE, FALSE, NULL);
    if (a->commit_event == NULL)
        return sb_error_set(err, SB_EIO, (int)GetLastError(), "adapter %s: cannot create an event",
                            a->base.name);
    rc = uv_thread_create(&a->thread, thread_main, a);
    if (rc != 0)
        return sb_error_set(err, SB_EIO, 0, "adapter %s: cannot start a thread: %s", a->base.name,
                            uv_strerror(rc));
    /* Starting takes a few milliseconds; waiting here lets start() report
     * a service that cannot be registered. */
    deadline = uv_hrtime() + (uint64_t)START_WAIT_MS * 1000000u;
    uv_mutex_lock(&a->lock);
    while (!a->ready && uv_hrtime() < deadline)
        (void)uv_cond_timedwait(&a->cond, &a->lock, deadline - uv_hrtime());
    rc = a->ready ? a->start_rc : SB_ETIMEDOUT;
    a->start_abandoned = !a->ready;
    uv_mutex_unlock(&a->lock);
    if (rc == SB_ETIMEDOUT) {
        /* The thread may still come up: it will find quit set. */
        a->thread_started = 1;
        return sb_error_set(err, rc, 0, "adapter %s: the DDE thread did not start within %d ms",
                            a->base.name, START_WAIT_MS);
    }
    if (rc != 0) {
        uv_thread_join(&a->thread);
        return sb_error_set(err, rc, 0, "adapter %s: %s", a->base.name, a->start_why);
    }
    a->thread_started = 1;
    return 0;
}
