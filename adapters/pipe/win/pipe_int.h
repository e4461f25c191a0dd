/*
 * Internal API of the Windows named-pipe adapter (`type: pipe`), shared by
 * its three files:
 *   pipe.c      the adapter on the loop thread: config, start/stop, the sink's
 *               round robin, the client's reconnect timer, and the
 *               sb_conn_transport the protocols (raw, jsonl, mqtt) run over;
 *   pipe_io.c   the I/O thread: one per adapter, overlapped I/O on an I/O
 *               completion port, serving every pipe instance of the adapter;
 *   pipe_sec.c  names, the security descriptor and the squatting guard.
 *
 * Threads. The I/O thread never touches an sb_conn or the broker; the loop
 * thread touches a pipe handle only to write (below). The loop sends
 * commands to the thread as completion packets (sb_pipe__cmd: start or
 * resume reading, close, connect, stop); the thread reports back through the
 * adapter's sb_inbox (connected, input, write done, closed, connect failed,
 * stopped). Each instance carries one slot per kind of report, which is
 * enough because at most one write is in progress at a time and input is
 * handed over through a buffer under pa->lock (below).
 *
 * Hand-offs are what a message costs: each is a wake-up of a thread, and
 * under Wine every wake-up, packet and I/O call is a wineserver round trip.
 * So there is at most one per batch, not per message, in each direction:
 *   input   the thread appends what it reads to inst->ibuf under pa->lock
 *           and, once nothing more can be read at once, posts "input" unless
 *           one is posted already; the loop takes everything in one go.
 *           The thread stops reading once pa->ahead_bytes (or
 *           pa->ahead_messages) wait there ("stalled"); only then does the
 *           loop send a command, when it takes them.
 *   output  the loop issues WriteFile itself, once per loop turn: a
 *           connection holds what its protocol sends (sb_conn hold_output)
 *           until the end of the turn, when a check handle (and a prepare
 *           handle, for what was sent before the loop polls) writes it all
 *           at once: one WriteFile for a batch of pubacks or deliveries,
 *           not a first one alone that wakes the peer for it.
 *           Handles are in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode: a
 *           write that completes at once (the pipe's buffer had room:
 *           nearly always) posts no packet and is reported done right
 *           there. A write that is pending completes on the thread, which
 *           writes the rest and reports it done.
 * The same mode lets the thread handle reads that complete at once where it
 * issues them, without a packet.
 *
 * Lifetime of an instance: created by the thread (or by start() for the
 * first one); known to the loop from its "connected" report; a connection is
 * always closed by the loop (a "close" command, also after the thread
 * reported the end of input); the thread then cancels its I/O, closes or
 * recycles the handle and posts "closed" as the last thing it does with the
 * instance; the loop frees it. Instances the loop never heard of (listeners)
 * are freed by the thread. stop() waits (at most a few seconds, in practice
 * milliseconds) until the thread has closed every handle, so that the pipe
 * name and its guard are free when it returns: a reload restarts a changed
 * adapter on the same name at once.
 *
 * Message boundaries with `framing: message`: the raw protocol treats the
 * framing like `length` (a 4-byte big-endian length before each frame). The
 * thread turns each pipe message it reads into such a frame, and splits what
 * the connection writes (conn.c coalesces a loop turn's output into one
 * buffer) back into its frames, writing each as one pipe message.
 */
#ifndef SB_PIPE_INT_H
#define SB_PIPE_INT_H

#include "adapters/conn.h"
#include "adapters/stream_core.h"
#include "service/inbox.h"

#include <windows.h>

/* Read size; a message-mode buffer grows beyond it for a larger message. */
#define PIPE_READ_CHUNK 65536
/* jsonl and MQTT: the I/O thread stops reading while this much input waits
 * for the loop (on top of the batch the loop is handling). Raw stops at one
 * read (PIPE_READ_CHUNK) or, in message mode, at read_ahead messages. */
#define PIPE_READ_AHEAD (256 * 1024)

typedef struct pipe_adapter pipe_adapter;
typedef struct pipe_inst pipe_inst;

/* Completion keys: I/O on a pipe handle, or a command from the loop (the
 * packet's OVERLAPPED pointer is then the instance, or NULL). */
enum {
    PIPE_KEY_IO = 1,
    PIPE_KEY_READ, /* start reading, or resume after a stall */
    PIPE_KEY_CLOSE,
    PIPE_KEY_CONNECT,
    PIPE_KEY_STOP
};

typedef struct pipe_op {
    OVERLAPPED ov;
    pipe_inst *inst;
    int pending;
} pipe_op;

struct pipe_inst {
    pipe_adapter *pa;
    /* ---- the I/O thread's ---- */
    HANDLE h;
    pipe_op op_connect, op_read;
    int connected;          /* a client is connected (server) / the connection is up (client) */
    int known;              /* "connected" was posted: only the loop may end it */
    int close_asked;        /* the loop's close command arrived */
    int cancelled;          /* CancelIoEx was issued */
    int started;            /* the loop asked for input */
    int dead;               /* a listener that failed: to be closed */
    char *rbuf;             /* the read in progress (message mode: the message) */
    size_t rcap, rlen;      /* its capacity and the bytes read */
    pipe_inst *prev, *next; /* the thread's list */
    /* ---- input handed over, under pa->lock ---- */
    char *ibuf; /* read, waiting for the loop to take it */
    size_t ilen, icap;
    int imsgs;       /* message mode: the messages in ibuf */
    int posted;      /* an "input" report is queued on the inbox */
    int stalled;     /* the thread stopped reading: ibuf is full */
    int end_pending; /* input ended after what ibuf holds (end_* below say how) */
    /* ---- the write in progress: the loop's until a WriteFile is pending,
     * then the thread's until it reports the write done ---- */
    pipe_op op_write;
    char *wbuf;        /* frames in message mode */
    size_t wlen, woff; /* woff: next byte to write */
    size_t wcur;       /* message mode: size of the pipe message in flight */
    int wstatus;       /* write done: 0 or SB_E* */
    char wwhy[300];
    /* ---- reports to the loop (written by the thread before posting) ---- */
    char peer[64];
    char *user;   /* os_user: the client's account, found at its first data */
    int who_done; /* os_user: looked up (or failed) */
    int end_err;  /* input end: 0 (orderly) or SB_E* */
    char end_why[300];
    int end_log; /* input end: log end_why as an error (oversized message) */
    /* ---- the loop's ---- */
    sb_conn *conn;
    int want_read;    /* the connection reads */
    int read_started; /* the first read command was sent */
    int end_reported; /* the end of input was passed on */
    int flush_queued; /* on pa->flushq: holds output for the end of the turn */
    int wdone_now;    /* the write issued by the flush completed at once */
    pipe_inst *flush_next;
};

struct pipe_adapter {
    sb_adapter base;
    int is_server;
    int message; /* framing: message */
    const sb_protocol *proto;
    char *display;  /* the full pipe path, UTF-8 (logs) */
    wchar_t *wname; /* the full pipe path */
    size_t max_message;
    int max_connections;
    DWORD buffer;       /* the pipe's buffer, each direction (pipe_buffer) */
    size_t ahead_bytes; /* the I/O thread reads no further while this much */
    int ahead_messages; /* or (message mode) this many messages wait for the loop */
    /* shared, set before the thread starts */
    HANDLE port;
    HANDLE mutex; /* the squatting guard (server) */
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd; /* LocalFree */
    sb_inbox *inbox;
    uv_mutex_t lock; /* input handed over (pipe_inst) */
    int lock_made;
    HANDLE handles_closed; /* manual-reset event: the thread closed every handle */
    uv_thread_t thread;
    int thread_running;
    pipe_inst *first; /* server: the first instance, made by start() */
    /* ---- the I/O thread's ---- */
    pipe_inst *insts;
    int listeners, busy; /* listening / connected instances */
    int open_handles;
    int stopping_io;
    ULONGLONG retry_at; /* creating instances failed: not again before this tick */
    DWORD last_create_err;
    char connect_why[300];   /* client: why the last connect failed */
    unsigned long io_serial; /* numbers the peers */
    /* ---- the loop's ---- */
    sb_stream st;                /* connections, delivery, reconnect, stop accounting */
    int stopped_io;              /* the thread reported its exit */
    uv_check_t *flush_check;     /* writes the output held in this loop turn */
    uv_prepare_t *flush_prepare; /* the same, for output held before the poll */
    pipe_inst *flushq, *flushq_tail;
    int dirty; /* on the list of adapters holding output (pipe.c) */
    pipe_adapter *dirty_next;
};

/* ---- pipe_sec.c ---- */

/* Builds the full pipe path for a server `path` (NAME or \\.\pipe\NAME) or a
 * client `connect` (also \\HOST\pipe\NAME). Returns 0, or SB_ECONFIG with a
 * one-line reason in err. *out_utf8 / *out_wide are sb_malloc'ed. */
int sb_pipe__full_name(const char *name, int is_server, char **out_utf8, wchar_t **out_wide,
                       sb_error *err);

/* Makes the pipe's security descriptor: the SDDL in `sddl`, or the default
 * (SYSTEM, Administrators: all; the interactive user: read/write; the
 * broker's own account: all). *out is freed with LocalFree. */
int sb_pipe__security(PSECURITY_DESCRIPTOR *out, const char *adapter, const char *sddl,
                      sb_error *err);

/* The squatting guard: creates the named mutex Local\switchboard-pipe-<name>
 * and checks that no other process serves the pipe. Returns 0 with *out the
 * mutex, or SB_EADDRINUSE / SB_EIO with err naming the adapter and the pipe. */
int sb_pipe__guard(HANDLE *out, const pipe_adapter *pa, sb_error *err);

/* The account of the client of server pipe h, as "DOMAIN\name" (the SID
 * when it has no name), or NULL (it cannot be identified, e.g. it
 * connected anonymously). Call on the I/O thread after the client's first
 * data arrived (Windows lets a server impersonate only then). sb_free it. */
char *sb_pipe__client_user(HANDLE h);

/* Creates one server instance (FILE_FLAG_FIRST_PIPE_INSTANCE when `first`).
 * Returns the handle or INVALID_HANDLE_VALUE (GetLastError() says why). */
HANDLE sb_pipe__create_instance(const pipe_adapter *pa, int first);

/* Associates handle h with the adapter's completion port, in
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode. Returns 0, or -1 with
 * GetLastError() saying why. */
int sb_pipe__attach(const pipe_adapter *pa, HANDLE h);

/* ---- pipe_io.c ---- */

/* The I/O thread (uv_thread_create entry; arg: the adapter). */
void sb_pipe__thread(void *arg);

/* Loop -> thread: queues a command packet; retries on a transient failure. */
void sb_pipe__cmd(pipe_adapter *pa, int key, pipe_inst *inst);

/* Allocates an instance around handle h (may be INVALID_HANDLE_VALUE). */
pipe_inst *sb_pipe__inst_new(pipe_adapter *pa, HANDLE h);

/* Frees an instance's memory (not its handle). */
void sb_pipe__inst_free(pipe_inst *inst);

/* Writes inst->wbuf from inst->woff on (message mode: frame by frame, one
 * pipe message each) until a WriteFile is pending: returns 0, and the write
 * goes on when it completes, on the I/O thread. Or everything is written,
 * or a write failed: returns 1 with inst->wstatus and inst->wwhy set and
 * wbuf freed. Called by the loop (t_write) and by the thread. */
int sb_pipe__write_on(pipe_inst *inst);

/* ---- pipe.c: reports from the thread, run on the loop thread ---- */
void sb_pipe__on_connected(void *inst);
void sb_pipe__on_input(void *inst); /* input, or its end, in inst->ibuf / end_pending */
void sb_pipe__on_write_done(void *inst);
void sb_pipe__on_closed(void *inst);
void sb_pipe__on_connect_failed(void *pa);
void sb_pipe__on_stopped(void *pa);

/* Thread -> loop: posts fn(arg) to the adapter's inbox; retries while out of
 * memory (a report must not be lost: the loop waits for it). */
void sb_pipe__post(pipe_adapter *pa, sb_inbox_fn fn, void *arg);

#endif
