/*
 * Internal API of the Windows named-pipe adapter (`type: pipe`), shared by
 * its three files:
 *   pipe.c      the adapter: config, start/stop, the sink's round robin, the
 *               client's reconnect timer, and the sb_conn_transport the
 *               protocols (raw, jsonl, mqtt) run over;
 *   pipe_io.c   overlapped I/O on the pipe handles: listening, connecting,
 *               reading, writing, closing;
 *   pipe_sec.c  names, the security descriptor and the squatting guard.
 *
 * Everything runs on the loop thread, and the pipe handles complete on the
 * loop's own I/O completion port (libuv's uv_loop_t iocp): a read that
 * finds a client's data wakes the loop, which handles it at once, with no
 * thread in between. Under Wine every wake-up of a thread, every packet
 * and every I/O call is a round trip to the wineserver, and the pending
 * read's completion is delivered to the thread that issued it: an I/O
 * thread that read and then woke the loop with a packet cost two wake-ups
 * per batch of input where this costs one (tools/bench/wine-requests.sh:
 * the broker's requests per batch of 64 byte-mode jsonl messages fell
 * from 27 to 17, per jsonl request/response from 24.6 to 15.1).
 *
 * How a completion reaches us: each operation (pipe_op) is a uv_async_t
 * whose own wake-up request's OVERLAPPED (async_req.u.io.overlapped, the
 * one uv_async_send posts) is the OVERLAPPED of the ReadFile, WriteFile or
 * ConnectNamedPipe. When the I/O completes, the kernel queues that
 * OVERLAPPED on the loop's port, as uv_async_send would, and libuv calls
 * the async's callback (on_op), which reads the result from the
 * OVERLAPPED. While an operation is pending its async_sent is set, as after
 * uv_async_send: libuv then lets a uv_close of the async finish only after
 * the packet came (so its memory outlives the I/O). uv_async_send on the
 * same async, when no I/O is pending on it, is a "kick": the operation
 * continues in a later loop turn (a read that was paused or went on for
 * long enough). This uses two of libuv's Windows internals that uv.h
 * declares (uv_req_t's OVERLAPPED, uv_async_t's async_req and async_sent),
 * the same from libuv 1.44 to 1.52; uv_async_send does exactly this.
 *
 * Handles are in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode: an operation
 * that does not return ERROR_IO_PENDING (done at once, ERROR_MORE_DATA, or
 * failed: Wine reports a client that left with error 109 that way) posts no
 * packet and is handled where it is issued.
 *
 * Output: a connection holds what its protocol sends (sb_conn hold_output)
 * until the end of the loop turn, when a check handle (and a prepare
 * handle, for what was sent before the loop polls) writes it all in one
 * WriteFile: one for a batch of pubacks or deliveries, not a first one
 * alone that wakes the peer for it.
 *
 * Replies before everything else: a connection whose read completed from
 * the port (its pipe had been empty: the peer sent a request and waits)
 * has its output written first, and, if it is a peer that gets answers
 * (the connection wrote to it before), its next read, which will most
 * likely be pending, is issued only after the turn's writes (by the
 * prepare handle, after the core's own flush made the replies). A peer
 * that only writes (a raw producer) is read on at once, so a burst is
 * read in one batch. Under Wine every
 * WriteFile and every ReadFile costs one or two wineserver round trips;
 * a read or a delivery to another connection issued before the reply
 * delays the peer's next request by that much (wine-requests.sh: broker
 * requests per jsonl request/response 15.1-16.4 -> 13.4-14.3). On Windows
 * the order changes nothing else: data waits in the pipe until read.
 *
 * Input goes to the protocol as it is read. While the protocol is paused
 * (backpressure), nothing more is read: what a read that was under way
 * brought waits in rbuf until it reads again, and so does the end of input
 * (the end must not close the connection while the protocol still holds
 * frames it has not published).
 *
 * Blocking calls stay off the loop. A client's connect attempt
 * (CreateFileW, WaitNamedPipeW: a busy server, or \\HOST\pipe\NAME, which
 * can wait for the SMB timeout, tens of seconds, on every reconnect) runs
 * on a thread of its own, not on libuv's thread pool: four such waits
 * would stall everything else queued there (reload preparation, paging,
 * MQTT authentication, file system calls, getaddrinfo). With os_user, the
 * loop takes the client's token itself (impersonate, open the thread's
 * token, revert: local calls), and the account look-up (LookupAccountSidW,
 * which may ask a domain controller) runs on the thread pool with the
 * token alone: it never touches the pipe handle, so closing it (stop,
 * reload) does not wait for the look-up.
 *
 * Lifetime of an instance: created for a listener (server) or a client
 * connection; a connection is closed by the loop (t_close, also after the
 * end of input was passed on): its I/O is cancelled, its handle closed or
 * (the last instance of a server) disconnected and listening again, its
 * three asyncs closed; when the last one closed the connection is told
 * (sb_conn_transport_closed) and the instance freed. stop() cancels and
 * closes every handle before it returns, so that the pipe name and its
 * guard are free: a reload restarts a changed adapter on the same name at
 * once.
 *
 * Message boundaries with `framing: message`: the raw protocol treats the
 * framing like `length` (a 4-byte big-endian length before each frame).
 * Each pipe message read is passed on as such a frame (read into rbuf after
 * 4 bytes left for the length), and what the connection writes (conn.c
 * coalesces a loop turn's output into one buffer) is split back into its
 * frames, each written as one pipe message.
 */
#ifndef SB_PIPE_INT_H
#define SB_PIPE_INT_H

#include "adapters/conn.h"
#include "adapters/stream_core.h"

#include <windows.h>

/* Read size; a message-mode buffer grows beyond it for a larger message. */
#define PIPE_READ_CHUNK 65536

typedef struct pipe_adapter pipe_adapter;
typedef struct pipe_inst pipe_inst;

/* One overlapped operation; a.async_req.u.io.overlapped is its OVERLAPPED
 * (see above). a.data is the pipe_op. */
typedef struct pipe_op {
    uv_async_t a;
    pipe_inst *inst;
    int pending; /* issued and not yet completed: its packet will come */
    int kicked;  /* uv_async_send was called on it: continue, no I/O result */
    DWORD done_err; /* connect: its result when it completed at once */
} pipe_op;

struct pipe_inst {
    pipe_adapter *pa;
    HANDLE h;
    pipe_op op_connect, op_read, op_write;
    int ops_open;     /* asyncs not yet closed: the instance is freed at 0 */
    int connected;    /* a client is connected (server) / the connection is up (client) */
    int released;     /* the handle was let go and the asyncs are closing */
    int close_asked;  /* t_close was called */
    int listening;    /* counted in pa->listeners */
    pipe_inst *prev, *next; /* pa->insts */
    /* ---- reading ---- */
    char *rbuf;       /* message mode: 4 bytes for the frame's length, then the message */
    size_t rcap, rlen; /* capacity after those 4 bytes; the bytes read */
    int rready;       /* rbuf holds input to pass on (byte mode: rlen bytes; message mode: a whole message) */
    int want_read;    /* the connection reads */
    int end_pending;  /* input ended after what rbuf holds (end_* say how) */
    int end_reported; /* the end of input was passed on */
    int end_err;      /* input end: 0 (orderly) or SB_E* */
    char end_why[300];
    int end_log;      /* input end: log end_why as an error (oversized message) */
    int in_read;      /* in read_on (the protocol may resume reading from inside it) */
    int woke;         /* input came from the port this turn (the pipe had been empty): the
                       * next read is issued after the turn's output (read_on) */
    int read_deferred; /* on the list of reads issued after the turn's output (pipe_io.c) */
    int answered;     /* the connection wrote to its peer (a peer that gets answers) */
    pipe_inst *defer_next;
    int who_busy;     /* os_user: the client's account is being looked up (input waits;
                       * a released instance is freed by who_looked_up) */
    uv_work_t who_work;
    HANDLE who_token; /* os_user: the client's token, for the look-up (which closes it) */
    int who_done;     /* os_user: looked up (or failed) */
    char *user;       /* os_user: the client's account */
    /* ---- the write in progress ---- */
    char *wbuf;        /* frames in message mode */
    size_t wlen, woff; /* woff: next byte to write */
    size_t wcur;       /* message mode: size of the pipe message in flight */
    int wstatus;       /* write done: 0 or SB_E* */
    char wwhy[300];
    int wdone_now;     /* the write issued by the flush completed at once */
    /* ---- the connection ---- */
    char peer[64];
    sb_conn *conn;
    int flush_queued; /* on pa->flushq: holds output for the end of the turn */
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
    DWORD buffer; /* the pipe's buffer, each direction (pipe_buffer) */
    HANDLE mutex; /* the squatting guard (server) */
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd; /* LocalFree */
    pipe_inst *insts;        /* every instance not yet freed */
    int listeners, busy;     /* listening / connected instances */
    int open_handles;
    int stopping_io;
    uv_timer_t *retry_timer; /* creating instances failed: again after RETRY_MS */
    int retry_armed;
    DWORD last_create_err;
    char connect_why[300];   /* client: why the last connect failed */
    unsigned long io_serial; /* numbers the peers */
    int work_pending;        /* off-loop jobs not yet reported (connect thread, os_user) */
    sb_stream st;                /* connections, delivery, reconnect, stop accounting */
    uv_check_t *flush_check;     /* writes the output held in this loop turn */
    uv_prepare_t *flush_prepare; /* the same, for output held before the poll */
    uv_idle_t *flush_idle;       /* keeps the poll from waiting while output is left */
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

/* The token of the client of server pipe h (TOKEN_QUERY), or NULL (it
 * cannot be identified, e.g. it connected anonymously). Call after the
 * client's first data arrived (Windows lets a server impersonate only
 * then); it impersonates the client on the calling thread for three local
 * calls and reverts (or aborts the process if it cannot). */
HANDLE sb_pipe__client_token(HANDLE h);

/* The account of a token, as "DOMAIN\name" (the SID when it has no name),
 * or NULL; closes the token. May take long (LookupAccountSidW may ask a
 * domain controller): off the loop. sb_free it. */
char *sb_pipe__token_user(HANDLE token);

/* Creates one server instance (FILE_FLAG_FIRST_PIPE_INSTANCE when `first`).
 * Returns the handle or INVALID_HANDLE_VALUE (GetLastError() says why). */
HANDLE sb_pipe__create_instance(const pipe_adapter *pa, int first);

/* ---- pipe_io.c ---- */

/* Associates handle h with the loop's completion port, in
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode. Returns 0, or -1 with
 * GetLastError() saying why. */
int sb_pipe__attach(const pipe_adapter *pa, HANDLE h);

/* Allocates an instance around handle h (its asyncs on the loop) and puts
 * it on pa->insts. NULL: out of memory. */
pipe_inst *sb_pipe__inst_new(pipe_adapter *pa, HANDLE h);

/* Server: starts listening on inst (a new instance), and keeps listeners
 * within max_connections after that. */
void sb_pipe__listen(pipe_inst *inst);

/* Client: starts connecting (on a thread of its own); reports with
 * sb_pipe__on_connected or sb_pipe__on_connect_failed. */
void sb_pipe__connect(pipe_adapter *pa);

/* Starts or resumes reading (inst->want_read is set). */
void sb_pipe__read(pipe_inst *inst);

/* Writes inst->wbuf from inst->woff on (message mode: frame by frame, one
 * pipe message each) until a WriteFile is pending: returns 0, and the write
 * goes on when it completes. Or everything is written, or a write failed:
 * returns 1 with inst->wstatus and inst->wwhy set and wbuf freed. */
int sb_pipe__write_on(pipe_inst *inst);

/* Closes inst: cancels its I/O, lets go of its handle, closes its asyncs;
 * when the last one closed, the connection (if any) is told and inst freed. */
void sb_pipe__close(pipe_inst *inst);

/* Stop: closes every instance. */
void sb_pipe__stop_io(pipe_adapter *pa);

/* Issues the reads that were put off until the loop turn's output was
 * written (read_on). Called by the flush after each pass. */
void sb_pipe__read_deferred(void);
int sb_pipe__reads_deferred(void); /* some are */

/* ---- pipe.c: events, on the loop thread ---- */
void sb_pipe__flush_soon(pipe_adapter *pa); /* runs the flush before the loop next polls */
void sb_pipe__on_connected(pipe_inst *inst);
void sb_pipe__on_write_done(pipe_inst *inst);
void sb_pipe__on_freed(pipe_inst *inst); /* before inst is freed (a connection's) */
void sb_pipe__on_connect_failed(pipe_adapter *pa);
void sb_pipe__on_io_idle(pipe_adapter *pa); /* stopping and nothing is left */

#endif
