/*
 * Internals of the DDE adapter (Windows), shared by its files:
 *   dde.c        the adapter type and the loop side: publishing, the server's
 *                value subscription, the client's sink, start and stop;
 *   dde_thread.c the DDEML thread: its message window, the hand-off queue
 *                from the loop, the poke/execute wait for a commit;
 *   dde_server.c the server role's DDEML callback (XTYP_CONNECT ... EXECUTE,
 *                the System topic, hot and warm links);
 *   dde_client.c the client role's DDEML callback, its links and pokes;
 *   dde_text.c   CF_TEXT / CF_UNICODETEXT <-> UTF-8 and format names.
 *
 * Threads: DDEML instances belong to the thread that made them, and their
 * callbacks run inside that thread's message dispatch, so each adapter runs
 * one thread with a message loop. The loop thread hands it work through a
 * locked queue (dde_job) and a message to its window; the thread hands the
 * loop work through the adapter's sb_inbox. Nothing else is shared.
 */
#ifndef SB_DDE_INT_H
#define SB_DDE_INT_H

#include "service/adapter.h"
#include "adapters/dde/dde_keys.h"
#include "adapters/dde/dde_map.h"
#include "service/broker.h"
#include "service/inbox.h"
#include "service/map.h"

#include <stdatomic.h>
#include <stdint.h>

#include <windows.h>

#include <ddeml.h>

/* How long the DDE thread waits for one synchronous transaction of a
 * legacy server (client role), and for the commit of a poke or execute it
 * received (server role) before answering DDE_FBUSY. */
#define SB_DDE_TIMEOUT_MS 10000
#define SB_DDE_COMMIT_WAIT_MS 30000
/* Client role: values handed to the loop and not yet committed at most; a
 * legacy server's updates beyond wait in its DDE messages (the DDE thread
 * blocks), as a stream's producer waits beyond read_ahead, rather than pile
 * up in memory in front of a slow store. */
#define SB_DDE_MAX_UNSETTLED 256
/* Window messages of the DDE thread's own window. */
#define SB_DDE_WM_WAKE (WM_APP + 1)   /* jobs are queued */
#define SB_DDE_WM_QUIT (WM_APP + 2)   /* stop */
#define SB_DDE_WM_ADVISE (WM_APP + 3) /* server: post advises of changed items */
#define SB_DDE_WM_CHECK (WM_APP + 4)  /* client: look at the link now */
#define SB_DDE_WM_PROBE (WM_APP + 5)  /* server: does another server answer our name? */

/* A value as the loop hands it to the DDE thread, or a payload a DDE
 * transaction carries. */
enum { SB_DDE_VAL_TEXT = 0, SB_DDE_VAL_FORMAT, SB_DDE_VAL_BAD };
typedef struct sb_dde_value {
    int kind;            /* TEXT: UTF-8 without NUL; FORMAT: bytes of fmt_name */
    unsigned char *data; /* sb_malloc'ed */
    size_t len;
    char *fmt_name; /* FORMAT: a registered clipboard format's name */
    char *bad;      /* BAD: why it cannot be served */
} sb_dde_value;

void sb_dde__value_clear(sb_dde_value *v);

/* Work for the DDE thread. */
enum { SB_DDE_JOB_VALUE, SB_DDE_JOB_POKE, SB_DDE_JOB_EXECUTE };
typedef struct sb_dde_job {
    int type;
    char *key;              /* VALUE: the broker topic (latest values replace queued ones) */
    char *dde_topic, *item; /* VALUE: where it belongs; POKE: item */
    sb_dde_value value;     /* VALUE; POKE: data to send (TEXT: already in CF_TEXT) */
    UINT fmt;               /* POKE, EXECUTE: the clipboard format sent */
    sb_delivery *d;         /* POKE, EXECUTE: the delivery (loop thread only) */
    int status;             /* POKE, EXECUTE: result */
    char why[320];
    struct sb_dde_adapter *a;
    struct sb_dde_job *next;
} sb_dde_job;

/* A poke or execute that waits for its commit (server role). Counted:
 * the thread and the loop each hold one reference, under a->lock. */
typedef struct sb_dde_waiter {
    int refs;
    int done;
    int status;
    char why[256];
} sb_dde_waiter;

/* A publish the DDE thread asks for. */
typedef struct sb_dde_pub {
    struct sb_dde_adapter *a;
    char *topic;
    unsigned char *payload;
    size_t len;
    char *dde_topic, *item; /* headers dde-topic, dde-item (item may be NULL) */
    char *fmt_name;         /* header dde-format */
    UINT codepage;          /* header dde-codepage when CF_TEXT; 0: none */
    int text;               /* header encoding: utf-8 */
    sb_dde_waiter *waiter;  /* NULL: nobody waits (client hot links) */
    int unsettled;          /* counted in a->unsettled until freed */
} sb_dde_pub;

struct sb_dde_server;
struct sb_dde_client;

typedef struct sb_dde_adapter {
    sb_adapter base;
    int is_server;
    int wine; /* running under Wine: work around its DDEML (see dde_client.c) */
    sb_dde_map map;
    UINT codepage;
    char *source; /* publishes' source: "adapter dde:SERVICE" */

    sb_inbox *inbox;
    uv_thread_t thread;
    int thread_started;
    int sync_init;
    uv_mutex_t lock;
    uv_cond_t cond;
    HANDLE commit_event; /* set by the loop when a waiter is done, and on quit */
    sb_adapter_stopped_cb stopped_cb;

    /* set by the thread before it reports started; read-only after */
    HWND hwnd;
    DWORD inst;

    /* under lock */
    int ready;           /* the thread finished starting (start_rc says how) */
    int start_abandoned; /* start() gave up waiting for it */
    int start_rc;        /* 0 or SB_E* */
    char start_why[256];
    int quit;
    int unsettled; /* client: values posted to the loop, not yet settled */
    sb_dde_job *jobs, *jobs_tail;
    sb_map pending_values; /* key -> queued VALUE job: a newer value replaces it */
    int wake_posted;

    /* loop thread only */
    int publishing; /* publish callbacks still to come */
    /* server: values not yet handed to the DDE thread, the newest per
     * broker topic (loop_values: topic -> its job on the list); the list
     * goes over as one batch once the thread has finished the previous
     * one (values_out), so a flood of values costs the loop a lookup and a
     * copy each, not a lock, a job and a wake-up, and the thread takes the
     * lock once per batch. */
    sb_map loop_values;
    sb_dde_job *values_head, *values_tail;
    int values_out;
    /* set by the thread when it finished a batch: the loop looks at it on
     * every value (a flood may keep the loop from running posted work) */
    atomic_int values_done;
    int destroyed;
    uint64_t dropped;
    char *sub_name; /* server: the values subscription */
    sb_consumer consumer;
    int attached;
    int link_up; /* client: the link as the loop last heard of it */
    int sink_waiting;

    /* DDE thread only */
    struct sb_dde_server *srv;
    struct sb_dde_client *cli;
} sb_dde_adapter;

/* ---- dde_thread.c ---- */

/* Starts the DDE thread and waits until it is ready (DDEML initialised,
 * the service registered) or failed. Returns 0 or SB_E* with err set. */
int sb_dde__thread_start(sb_dde_adapter *a, sb_error *err);

/* Loop thread: asks the thread to quit; it posts its exit last. */
void sb_dde__thread_quit(sb_dde_adapter *a);

/* Loop thread: queues a job and wakes the thread. A VALUE job whose key
 * has one queued already replaces that one's value (and is freed): the
 * thread handles the latest value of an item once per wake-up. */
void sb_dde__push(sb_dde_adapter *a, sb_dde_job *job);

/* Loop: hands a list of VALUE jobs to the thread at once. */
void sb_dde__push_batch(sb_dde_adapter *a, sb_dde_job *head, sb_dde_job *tail);

/* Loop: the thread finished a batch of values (posted by it). */
void sb_dde__on_values_done(void *arg);

/* Any thread: posts fn(arg) to the loop, retrying on out-of-memory. */
void sb_dde__post(sb_dde_adapter *a, sb_inbox_fn fn, void *arg);

/* DDE thread: asks the loop to publish p and, with a waiter, waits for the
 * commit. Returns DDE_FACK, DDE_FNOTPROCESSED (refused; logged with why),
 * or DDE_FBUSY (stopping, or no answer in SB_DDE_COMMIT_WAIT_MS). Takes p. */
HDDEDATA sb_dde__publish_wait(sb_dde_adapter *a, sb_dde_pub *p, int wait);
/* Without a waiter (client hot links) it first waits while
 * SB_DDE_MAX_UNSETTLED values are not settled yet. */

/* Any thread: a value counted in a->unsettled was settled (committed,
 * refused or discarded); wakes the DDE thread if it waits for room. */
void sb_dde__unsettled_done(sb_dde_adapter *a);

/* Loop thread: a waiter's publish finished. */
void sb_dde__waiter_done(sb_dde_adapter *a, sb_dde_waiter *w, int status, const char *why);

/* The adapter of the calling DDE thread (DDEML callbacks carry no context). */
sb_dde_adapter *sb_dde__current(void);

/* A string handle's text as UTF-8 (sb_free it), or NULL. */
char *sb_dde__hsz_utf8(DWORD inst, HSZ hsz);

/* Case-insensitive key of a DDE name (DDE names compare without case):
 * new UTF-8 string, or NULL. */
char *sb_dde__fold(const char *name);

void sb_dde__job_free(sb_dde_job *job);
void sb_dde__pub_free(sb_dde_pub *p);

/* ---- dde.c (loop side) ---- */

/* Loop thread: runs a publish the DDE thread asked for. */
void sb_dde__on_pub(void *arg);

/* Loop thread: the DDE thread has exited (its last post); completes a stop. */
void sb_dde__on_thread_exit(sb_dde_adapter *a);

/* ---- dde_server.c ---- */

int sb_dde__server_init(sb_dde_adapter *a, char *why, size_t n);
void sb_dde__server_job(sb_dde_adapter *a, sb_dde_job *job); /* takes job */
void sb_dde__server_advise(sb_dde_adapter *a);
void sb_dde__server_probe(sb_dde_adapter *a);
void sb_dde__server_fini(sb_dde_adapter *a);
HDDEDATA CALLBACK sb_dde__server_cb(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                    HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2);

/* ---- dde_client.c ---- */

int sb_dde__client_init(sb_dde_adapter *a, char *why, size_t n);
void sb_dde__client_job(sb_dde_adapter *a, sb_dde_job *job); /* posts the result */
void sb_dde__client_timer(sb_dde_adapter *a, UINT_PTR id);
void sb_dde__client_check(sb_dde_adapter *a);
void sb_dde__client_fini(sb_dde_adapter *a);
HDDEDATA CALLBACK sb_dde__client_cb(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                    HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2);
/* Loop thread: a job's result (status, why) arrived. */
void sb_dde__on_job_done(void *arg);
/* Loop thread: the link went up (arg: adapter, state 1) or down. */
void sb_dde__on_link_up(void *arg);
void sb_dde__on_link_down(void *arg);

/* ---- dde_text.c ---- */

/* Data of clipboard format fmt (as a DDE transaction carries it) to the
 * message payload: CF_TEXT (through codepage) and CF_UNICODETEXT become
 * UTF-8 up to the first NUL (*text = 1); a registered format stays bytes
 * (*text = 0). Returns 0, SB_EINVAL (unconvertible or unsupported format,
 * why says which), or SB_ENOMEM. */
int sb_dde__decode(unsigned char **out, size_t *out_len, int *text, const unsigned char *data,
                   size_t len, UINT fmt, UINT codepage, char *why, size_t n);

/* A data handle's content decoded as sb_dde__decode does, refused (SB_ETOOBIG,
 * why says so) beyond max_message bytes, before copying when it is far
 * beyond any conversion. Returns 0 or an SB_E* code with why set. */
int sb_dde__read(unsigned char **out, size_t *out_len, int *text, HDDEDATA data, UINT fmt,
                 UINT codepage, int64_t max_message, char *why, size_t n);

/* UTF-8 text to CF_TEXT (through codepage) or CF_UNICODETEXT, with the
 * terminating NUL. Returns 0, SB_EINVAL (not UTF-8, a NUL inside, or a
 * character the code page cannot represent: why says which), or SB_ENOMEM. */
int sb_dde__encode(unsigned char **out, size_t *out_len, const unsigned char *utf8, size_t len,
                   UINT fmt, UINT codepage, char *why, size_t n);

/* The name of a clipboard format ("CF_TEXT", "CF_UNICODETEXT", a
 * registered name, or "#49321") into buf. */
const char *sb_dde__format_name(UINT fmt, char *buf, size_t n);

/* 1 if the value may be served in format fmt. */
int sb_dde__servable(const sb_dde_value *v, UINT fmt);

/* The message's payload as a value to serve or poke: text unless its
 * dde-format header names a registered format or its encoding header is
 * not utf-8 (then BAD, why in v->bad). Returns 0 or SB_ENOMEM. */
int sb_dde__value_from_msg(sb_dde_value *v, const sb_message *msg);

/* 1 under Wine. */
int sb_dde__under_wine(void);

#endif
