/*
 * A thread with a message-only window and a message loop, shared by the
 * desktop adapters whose mechanism lives in window messages (WM_COPYDATA,
 * the clipboard). Window messages belong to the thread that created the
 * window, so each adapter runs one such thread.
 *
 * The loop thread hands the window thread work through a locked job queue
 * and one posted message per batch (sb_wnd_thread_push); the window thread
 * hands the loop work through an sb_inbox (sb_wnd_thread_post), its last
 * post being its exit. The loop never sends (SendMessage) to the window,
 * it only posts: so the window thread may block, waiting for the loop —
 * a WM_COPYDATA answered only after its commit does (sb_wnd_thread_wait) —
 * without the two ever waiting for each other.
 */
#ifndef SB_WINDOW_THREAD_H
#define SB_WINDOW_THREAD_H

#include "service/error.h"
#include "service/inbox.h"

#include <uv.h>

#include <windows.h>

/* Work for the window thread: embed as the first member. */
typedef struct sb_wnd_job {
    struct sb_wnd_job *next;
} sb_wnd_job;

/* The window thread waiting for an answer of the loop (a commit).
 * Counted: the thread and the loop each hold one reference. */
typedef struct sb_wnd_waiter {
    int refs;
    int done;
    int status;
    char why[256];
} sb_wnd_waiter;

typedef struct sb_wnd_thread sb_wnd_thread;

struct sb_wnd_thread {
    /* ---- set by the owner before sb_wnd_thread_start ---- */
    const char *name; /* the adapter's, for messages */
    uv_loop_t *loop;
    const wchar_t *class_name; /* the window's class; NULL: SwitchboardWindow */
    const wchar_t *title;      /* the window's title; NULL: none */
    void *ctx;
    /* Thread: the window exists; set up what needs it. 0, or SB_E* with
     * why: the start fails (fini is not called). May be NULL. */
    int (*init)(sb_wnd_thread *t, char *why, size_t n);
    /* Thread: every message to the window. Returns 1 if handled (*result
     * is the answer), 0 for the default handling. May be NULL. */
    int (*proc)(sb_wnd_thread *t, UINT msg, WPARAM wp, LPARAM lp, LRESULT *result);
    /* Thread: runs one job the loop pushed (takes it). */
    void (*run)(sb_wnd_thread *t, sb_wnd_job *job);
    /* Thread: the loop is ending; the window still exists. May be NULL. */
    void (*fini)(sb_wnd_thread *t);
    /* Loop: the thread has exited (after a quit, or a failed start that
     * start() gave up waiting for). `left` lists the jobs it never ran
     * (the callee frees them). */
    void (*exited)(sb_wnd_thread *t, sb_wnd_job *left);

    /* ---- set by the thread before it reports started; read-only after ---- */
    HWND hwnd;

    /* ---- private ---- */
    sb_inbox *inbox;
    uv_thread_t thread;
    uv_mutex_t lock;
    uv_cond_t cond;
    HANDLE event; /* set by the loop when a waiter is done, and on quit */
    int sync_init, running;
    int ready, abandoned, start_rc; /* under lock */
    char start_why[256];
    int quit;        /* under lock */
    int wake_posted; /* under lock */
    sb_wnd_job *jobs, *jobs_tail;
    int depth;     /* thread: nested waits */
    int spin_skip; /* thread: waits that do not spin first (sb_wnd_thread_wait) */
    int sleeping;  /* under lock: the thread blocks in a wait (wake it) */
};

/* Window messages the thread's window reserves (WM_APP + 0x3f00 ..): an
 * owner's own messages stay below. */
#define SB_WND_WM_WAKE (WM_APP + 0x3f00)
#define SB_WND_WM_QUIT (WM_APP + 0x3f01)

/* Loop: starts the thread and waits until its window exists and init ran.
 * Returns 0, or SB_E* with err naming the adapter (the thread is gone,
 * or — SB_ETIMEDOUT — will go by itself; exited is called then). */
int sb_wnd_thread_start(sb_wnd_thread *t, sb_error *err);

/* 1 between a successful start and the thread's exit. */
int sb_wnd_thread_running(const sb_wnd_thread *t);

/* Loop: asks the thread to quit; exited follows (from the inbox). A
 * thread that is not running: nothing happens. */
void sb_wnd_thread_quit(sb_wnd_thread *t);

/* Loop: queues a job and wakes the thread (one message per batch). */
void sb_wnd_thread_push(sb_wnd_thread *t, sb_wnd_job *job);

/* Any thread: runs fn(arg) on the loop, retrying on out-of-memory. */
void sb_wnd_thread_post(sb_wnd_thread *t, sb_inbox_fn fn, void *arg);

/* Thread: 1 once a quit was asked for. */
int sb_wnd_thread_quitting(sb_wnd_thread *t);

/* A new waiter with two references (NULL on out-of-memory). */
sb_wnd_waiter *sb_wnd_waiter_new(void);

/* Loop: the waiter's answer; drops the loop's reference. */
void sb_wnd_waiter_done(sb_wnd_thread *t, sb_wnd_waiter *w, int status, const char *why);

/* Thread: waits up to timeout_ms for w's answer, handling messages other
 * threads and processes send to this thread meanwhile (a second
 * WM_COPYDATA waits nested in the first; beyond a depth of 16 they wait
 * in their senders until this one is answered). Nothing posted is
 * dispatched. Returns 1 with *status (and why) when answered, 0 on a
 * timeout or a quit; drops the thread's reference either way. */
int sb_wnd_thread_wait(sb_wnd_thread *t, sb_wnd_waiter *w, int timeout_ms, int *status, char *why,
                       size_t n);

/* Frees what start made (after exited, or after a failed start). */
void sb_wnd_thread_free(sb_wnd_thread *t);

/* 1 under Wine. */
int sb_wnd_under_wine(void);

/* The file name of process pid's image ("notepad.exe") into buf, or ""
 * when it cannot be read (another user's process, pid 0). */
const char *sb_wnd_process_image(unsigned long pid, char *buf, size_t n);

#endif
