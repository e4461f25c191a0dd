/*
 * The window thread of the desktop adapters (see window_thread.h): its
 * message-only window, the job queue from the loop, the exit hand-off,
 * and the wait for an answer of the loop.
 */
#include "adapters/desktop/win/window_thread.h"
#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#define DEFAULT_CLASS L"SwitchboardWindow"
/* How long start() waits for the window and init. */
#define START_WAIT_MS 10000
/* Sent messages handled while a wait is under way, nested. */
#define MAX_DEPTH 16
/* How long a wait looks for its answer before it blocks, and how many
 * waits skip that after one that outlasted it. */
#define SPIN_NS 100000
#define SPIN_SKIP 63

int sb_wnd_under_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

const char *sb_wnd_process_image(unsigned long pid, char *buf, size_t n)
{
    wchar_t path[MAX_PATH];
    DWORD len = MAX_PATH;
    HANDLE h;
    char *u;
    const wchar_t *base;

    buf[0] = '\0';
    if (pid == 0)
        return buf;
    h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
    if (h == NULL)
        return buf;
    if (QueryFullProcessImageNameW(h, 0, path, &len)) {
        base = wcsrchr(path, L'\\');
        base = base != NULL ? base + 1 : path;
        if ((u = sb_wide_to_utf8(base)) != NULL) {
            snprintf(buf, n, "%s", u);
            sb_free(u);
        }
    }
    CloseHandle(h);
    return buf;
}

void sb_wnd_thread_post(sb_wnd_thread *t, sb_inbox_fn fn, void *arg)
{
    /* Only out-of-memory makes a post fail: the loop closes the inbox only
     * after this thread is gone. */
    while (sb_inbox_post(t->inbox, fn, arg) == SB_ENOMEM)
        Sleep(10);
}

int sb_wnd_thread_running(const sb_wnd_thread *t)
{
    return t->running;
}

int sb_wnd_thread_quitting(sb_wnd_thread *t)
{
    int q;
    uv_mutex_lock(&t->lock);
    q = t->quit;
    uv_mutex_unlock(&t->lock);
    return q;
}

/* ---- loop -> thread ---- */

void sb_wnd_thread_push(sb_wnd_thread *t, sb_wnd_job *job)
{
    int wake;
    job->next = NULL;
    uv_mutex_lock(&t->lock);
    if (t->jobs_tail != NULL)
        t->jobs_tail->next = job;
    else
        t->jobs = job;
    t->jobs_tail = job;
    wake = !t->wake_posted;
    t->wake_posted = 1;
    uv_mutex_unlock(&t->lock);
    if (wake && !PostMessageW(t->hwnd, SB_WND_WM_WAKE, 0, 0)) {
        /* The thread's queue is full (10000 messages): it is far behind,
         * and the next push tries again. */
        uv_mutex_lock(&t->lock);
        t->wake_posted = 0;
        uv_mutex_unlock(&t->lock);
    }
}

static void run_jobs(sb_wnd_thread *t)
{
    sb_wnd_job *jobs;
    uv_mutex_lock(&t->lock);
    jobs = t->jobs;
    t->jobs = t->jobs_tail = NULL;
    t->wake_posted = 0;
    uv_mutex_unlock(&t->lock);
    while (jobs != NULL) {
        sb_wnd_job *next = jobs->next;
        t->run(t, jobs);
        jobs = next;
    }
}

void sb_wnd_thread_quit(sb_wnd_thread *t)
{
    HWND hwnd;
    if (!t->sync_init)
        return;
    uv_mutex_lock(&t->lock);
    t->quit = 1;
    hwnd = t->hwnd; /* NULL while a slow start is under way: it sees quit */
    uv_cond_broadcast(&t->cond);
    uv_mutex_unlock(&t->lock);
    if (t->event != NULL)
        SetEvent(t->event);
    if (hwnd != NULL)
        PostMessageW(hwnd, SB_WND_WM_QUIT, 0, 0);
}

/* ---- waiting for the loop ---- */

sb_wnd_waiter *sb_wnd_waiter_new(void)
{
    sb_wnd_waiter *w = sb_calloc(1, sizeof(*w));
    if (w != NULL)
        w->refs = 2;
    return w;
}

static void waiter_release(sb_wnd_waiter *w)
{
    if (--w->refs == 0)
        sb_free(w);
}

void sb_wnd_waiter_done(sb_wnd_thread *t, sb_wnd_waiter *w, int status, const char *why)
{
    int wake;
    uv_mutex_lock(&t->lock);
    w->done = 1;
    w->status = status;
    snprintf(w->why, sizeof w->why, "%s", why != NULL ? why : "");
    waiter_release(w);
    wake = t->sleeping; /* else it sees done before it sleeps */
    uv_mutex_unlock(&t->lock);
    if (wake)
        SetEvent(t->event);
}

/* Thread: looks for w's answer for up to SPIN_NS, yielding the processor.
 * A commit of the memory class comes back within tens of microseconds, and
 * an answer seen this way saves the event and the wake-up (under Wine,
 * each a round trip to the wineserver, which every process of the session
 * shares). A wait that outlasts the spin turns it off for the next
 * SPIN_SKIP waits (commits of the fsync class take milliseconds). */
static void spin(sb_wnd_thread *t, sb_wnd_waiter *w)
{
    uint64_t until;
    if (t->spin_skip > 0) {
        t->spin_skip--;
        return;
    }
    until = uv_hrtime() + SPIN_NS;
    for (;;) {
        int done;
        uv_mutex_lock(&t->lock);
        done = w->done || t->quit;
        uv_mutex_unlock(&t->lock);
        if (done)
            return;
        if (uv_hrtime() >= until) {
            t->spin_skip = SPIN_SKIP;
            return;
        }
        SwitchToThread();
    }
}

int sb_wnd_thread_wait(sb_wnd_thread *t, sb_wnd_waiter *w, int timeout_ms, int *status, char *why,
                       size_t n)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    int answered;

    spin(t, w);
    uv_mutex_lock(&t->lock);
    while (!w->done && !t->quit) {
        uint64_t now = uv_hrtime();
        DWORD ms, r;
        MSG m;
        if (now >= deadline)
            break;
        ms = (DWORD)((deadline - now) / 1000000u) + 1;
        t->sleeping = 1; /* checked under the lock: no answer is missed */
        uv_mutex_unlock(&t->lock);
        if (t->depth < MAX_DEPTH) {
            /* Another sender's message is handled (and waits) nested in
             * this one: both commit in one group. Nothing posted is
             * dispatched, so no job runs in the middle of this one. */
            r = MsgWaitForMultipleObjects(1, &t->event, FALSE, ms, QS_SENDMESSAGE);
            if (r == WAIT_OBJECT_0 + 1) {
                t->depth++;
                PeekMessageW(&m, NULL, 0, 0, PM_NOREMOVE | PM_QS_SENDMESSAGE);
                t->depth--;
            }
        } else {
            (void)WaitForSingleObject(t->event, ms);
        }
        uv_mutex_lock(&t->lock);
        t->sleeping = 0;
    }
    answered = w->done;
    *status = w->status;
    snprintf(why, n, "%s", w->done ? w->why : t->quit ? "stopping" : "no answer in time");
    waiter_release(w);
    uv_mutex_unlock(&t->lock);
    return answered;
}

/* ---- the thread ---- */

static LRESULT CALLBACK wndproc(HWND hwnd, UINT msg, WPARAM wp, LPARAM lp)
{
    sb_wnd_thread *t = (sb_wnd_thread *)GetWindowLongPtrW(hwnd, GWLP_USERDATA);
    LRESULT result = 0;
    if (msg == WM_NCCREATE) {
        CREATESTRUCTW *cs = (CREATESTRUCTW *)lp;
        SetWindowLongPtrW(hwnd, GWLP_USERDATA, (LONG_PTR)cs->lpCreateParams);
        return DefWindowProcW(hwnd, msg, wp, lp);
    }
    if (t == NULL || t->hwnd == NULL)
        return DefWindowProcW(hwnd, msg, wp, lp);
    switch (msg) {
    case SB_WND_WM_WAKE:
        run_jobs(t);
        return 0;
    case SB_WND_WM_QUIT:
        PostQuitMessage(0);
        return 0;
    default:
        if (t->proc != NULL && t->proc(t, msg, wp, lp, &result))
            return result;
        return DefWindowProcW(hwnd, msg, wp, lp);
    }
}

static void on_thread_exit(void *arg);

/* Thread: reports how starting went and wakes start(). A failure ends the
 * thread: start() joins it, unless it gave up waiting (then the loop does,
 * after the exit post). */
static void report_start(sb_wnd_thread *t, int rc, const char *why)
{
    int abandoned;
    uv_mutex_lock(&t->lock);
    t->ready = 1;
    t->start_rc = rc;
    abandoned = t->abandoned;
    snprintf(t->start_why, sizeof t->start_why, "%s", why != NULL ? why : "");
    uv_cond_broadcast(&t->cond);
    uv_mutex_unlock(&t->lock);
    if (rc != 0 && abandoned)
        sb_wnd_thread_post(t, on_thread_exit, t);
}

/* Registers the window class (once per process) with this file's window
 * procedure; one registered by other code under the same name is refused. */
static int register_class(const wchar_t *name, char *why, size_t n)
{
    WNDCLASSEXW wc;
    HINSTANCE inst = GetModuleHandleW(NULL);
    memset(&wc, 0, sizeof wc);
    wc.cbSize = sizeof wc;
    wc.lpfnWndProc = wndproc;
    wc.hInstance = inst;
    wc.lpszClassName = name;
    if (RegisterClassExW(&wc))
        return 0;
    if (GetLastError() == ERROR_CLASS_ALREADY_EXISTS && GetClassInfoExW(inst, name, &wc)) {
        if (wc.lpfnWndProc == wndproc)
            return 0;
        snprintf(why, n, "the window class is registered by other code of this process");
        return SB_EEXIST;
    }
    sb_win_strerror(GetLastError(), why, n);
    return SB_EIO;
}

static void thread_main(void *arg)
{
    sb_wnd_thread *t = arg;
    const wchar_t *cls = t->class_name != NULL ? t->class_name : DEFAULT_CLASS;
    char why[256] = "", text[200];
    HWND hwnd;
    MSG msg;
    int rc, quit;

    if ((rc = register_class(cls, text, sizeof text)) != 0) {
        snprintf(why, sizeof why, "cannot register the window class: %s", text);
        report_start(t, rc, why);
        return;
    }
    hwnd = CreateWindowExW(0, cls, t->title != NULL ? t->title : L"", 0, 0, 0, 0, 0, HWND_MESSAGE,
                           NULL, GetModuleHandleW(NULL), t);
    if (hwnd == NULL) {
        sb_win_strerror(GetLastError(), text, sizeof text);
        snprintf(why, sizeof why, "cannot create the message-only window: %s", text);
        report_start(t, SB_EIO, why);
        return;
    }
    uv_mutex_lock(&t->lock);
    t->hwnd = hwnd;
    uv_mutex_unlock(&t->lock);
    if (t->init != NULL && (rc = t->init(t, why, sizeof why)) != 0) {
        DestroyWindow(hwnd);
        uv_mutex_lock(&t->lock);
        t->hwnd = NULL;
        uv_mutex_unlock(&t->lock);
        report_start(t, rc, why);
        return;
    }
    report_start(t, 0, NULL);

    uv_mutex_lock(&t->lock);
    quit = t->quit; /* a stop that came before the window could be told */
    uv_mutex_unlock(&t->lock);
    while (!quit && GetMessageW(&msg, NULL, 0, 0) > 0)
        DispatchMessageW(&msg);

    if (t->fini != NULL)
        t->fini(t);
    DestroyWindow(hwnd);
    sb_wnd_thread_post(t, on_thread_exit, t);
}

/* Loop: the thread's last post. */
static void on_thread_exit(void *arg)
{
    sb_wnd_thread *t = arg;
    sb_wnd_job *left;
    uv_thread_join(&t->thread);
    t->running = 0;
    uv_mutex_lock(&t->lock);
    left = t->jobs;
    t->jobs = t->jobs_tail = NULL;
    uv_mutex_unlock(&t->lock);
    sb_inbox_close(t->inbox); /* nothing follows the exit post */
    t->inbox = NULL;
    t->exited(t, left);
}

int sb_wnd_thread_start(sb_wnd_thread *t, sb_error *err)
{
    uint64_t deadline;
    int rc;

    if (sb_inbox_new(&t->inbox, t->loop) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", t->name);
    if (uv_mutex_init(&t->lock) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a lock", t->name);
    if (uv_cond_init(&t->cond) != 0) {
        uv_mutex_destroy(&t->lock);
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: cannot create a condition", t->name);
    }
    t->sync_init = 1;
    t->event = CreateEventW(NULL, FALSE, FALSE, NULL);
    if (t->event == NULL)
        return sb_error_set(err, SB_EIO, (int)GetLastError(), "adapter %s: cannot create an event",
                            t->name);
    rc = uv_thread_create(&t->thread, thread_main, t);
    if (rc != 0)
        return sb_error_set(err, SB_EIO, 0, "adapter %s: cannot start a thread: %s", t->name,
                            uv_strerror(rc));
    deadline = uv_hrtime() + (uint64_t)START_WAIT_MS * 1000000u;
    uv_mutex_lock(&t->lock);
    while (!t->ready && uv_hrtime() < deadline)
        (void)uv_cond_timedwait(&t->cond, &t->lock, deadline - uv_hrtime());
    rc = t->ready ? t->start_rc : SB_ETIMEDOUT;
    t->abandoned = !t->ready;
    uv_mutex_unlock(&t->lock);
    if (rc == SB_ETIMEDOUT) {
        /* The thread may still come up: it will find quit set. */
        t->running = 1;
        sb_wnd_thread_quit(t);
        return sb_error_set(err, rc, 0, "adapter %s: its window thread did not start within %d ms",
                            t->name, START_WAIT_MS);
    }
    if (rc != 0) {
        uv_thread_join(&t->thread);
        return sb_error_set(err, rc, 0, "adapter %s: %s", t->name, t->start_why);
    }
    t->running = 1;
    return 0;
}

void sb_wnd_thread_free(sb_wnd_thread *t)
{
    if (t->inbox != NULL) {
        sb_inbox_close(t->inbox);
        t->inbox = NULL;
    }
    if (t->sync_init) {
        uv_cond_destroy(&t->cond);
        uv_mutex_destroy(&t->lock);
        t->sync_init = 0;
    }
    if (t->event != NULL) {
        CloseHandle(t->event);
        t->event = NULL;
    }
}
