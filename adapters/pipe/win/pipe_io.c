/*
 * The named-pipe I/O thread: one per adapter, blocked in
 * GetQueuedCompletionStatus on the adapter's completion port, where both
 * the overlapped I/O of every pipe instance and the loop's commands arrive
 * (see pipe_int.h for who owns what).
 *
 * Server: it keeps up to LISTEN_BACKLOG instances waiting in
 * ConnectNamedPipe while fewer than max_connections clients are connected
 * (beyond that, clients get ERROR_PIPE_BUSY and may WaitNamedPipe). When a
 * connection ends and no other instance is listening, its handle is
 * disconnected and listens again, so the pipe name never disappears while
 * the adapter runs (nobody can take it over in between).
 *
 * Reading: the thread reads ahead and hands the loop what it read through
 * inst->ibuf, under pa->lock, with one report per batch, not per message
 * (each report is a wake-up of the loop; see pipe_int.h). While
 * pa->ahead_bytes bytes (or, in message mode with raw, pa->ahead_messages
 * messages) wait there, reading stops until the loop takes them: a
 * connection the protocol paused holds back its writer. The end of input is
 * passed on after the last data. In message mode each message is appended
 * as a length-prefixed frame; a message larger than the buffer completes
 * with ERROR_MORE_DATA, and the rest is read into a larger buffer
 * (PeekNamedPipe tells the size) unless the whole exceeds max_message,
 * which ends the connection after the messages before it.
 *
 * Handles are in FILE_SKIP_COMPLETION_PORT_ON_SUCCESS mode: an operation
 * that does not return ERROR_IO_PENDING (done at once, ERROR_MORE_DATA, or
 * failed: Wine reports a client that left with error 109 that way) posts no
 * completion and is handled where it is issued. Writing is the loop's
 * (sb_pipe__write_on); the thread goes on with a write only after a
 * WriteFile was pending.
 */
#include "adapters/pipe/win/pipe_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

/* Instances waiting for a client at once (more clients wait in WaitNamedPipe). */
#define LISTEN_BACKLOG 4
#define READ_CHUNK PIPE_READ_CHUNK
/* After CreateNamedPipeW failed, try again this often. */
#define RETRY_MS 1000
/* Client: how long a connect waits for a busy server's free instance. */
#define BUSY_WAIT_MS 250
/* The largest single WriteFile in byte mode. */
#define WRITE_MAX (1u << 30)

void sb_pipe__post(pipe_adapter *pa, sb_inbox_fn fn, void *arg)
{
    while (sb_inbox_post(pa->inbox, fn, arg) == SB_ENOMEM)
        Sleep(10);
}

void sb_pipe__cmd(pipe_adapter *pa, int key, pipe_inst *inst)
{
    /* Fails only when the kernel is short of memory: try again. */
    while (!PostQueuedCompletionStatus(pa->port, 0, (ULONG_PTR)key, (OVERLAPPED *)inst))
        Sleep(10);
}

pipe_inst *sb_pipe__inst_new(pipe_adapter *pa, HANDLE h)
{
    pipe_inst *inst = sb_calloc(1, sizeof(*inst));
    if (inst == NULL)
        return NULL;
    inst->pa = pa;
    inst->h = h;
    inst->op_connect.inst = inst;
    inst->op_read.inst = inst;
    inst->op_write.inst = inst;
    return inst;
}

void sb_pipe__inst_free(pipe_inst *inst)
{
    if (inst == NULL)
        return;
    sb_free(inst->rbuf);
    sb_free(inst->ibuf);
    sb_free(inst->wbuf);
    sb_free(inst->user);
    sb_free(inst);
}

int sb_pipe__attach(const pipe_adapter *pa, HANDLE h)
{
    /* Without a packet for what completes at once, a read that finds data
     * and a write that fits in the pipe's buffer (nearly all of them) cost
     * no wake-up of the I/O thread. */
    if (CreateIoCompletionPort(h, pa->port, PIPE_KEY_IO, 0) == NULL ||
        !SetFileCompletionNotificationModes(h, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS))
        return -1;
    return 0;
}

static void link_inst(pipe_adapter *pa, pipe_inst *inst)
{
    inst->prev = NULL;
    inst->next = pa->insts;
    if (pa->insts != NULL)
        pa->insts->prev = inst;
    pa->insts = inst;
}

static void unlink_inst(pipe_adapter *pa, pipe_inst *inst)
{
    if (inst->prev != NULL)
        inst->prev->next = inst->next;
    else
        pa->insts = inst->next;
    if (inst->next != NULL)
        inst->next->prev = inst->prev;
    inst->prev = inst->next = NULL;
}

static void win_text(DWORD code, char *out, size_t n)
{
    sb_win_strerror(code, out, n);
}

static void start_op(pipe_op *op)
{
    memset(&op->ov, 0, sizeof(op->ov));
    op->pending = 1;
}

/* After a failure, instances are created again RETRY_MS later (top_up). */
static void pause_creating(pipe_adapter *pa)
{
    pa->retry_at = GetTickCount64() + RETRY_MS;
}

/* ---- reports ---- */

/* The write in progress ended (inst->wstatus says how): the thread tells
 * the loop. */
static void report_write(pipe_inst *inst)
{
    sb_pipe__post(inst->pa, sb_pipe__on_write_done, inst);
}

/* Marks an "input" report queued unless one is. Call under pa->lock;
 * returns whether the caller must post it (once it unlocked). */
static int want_report(pipe_inst *inst)
{
    if (inst->posted)
        return 0;
    inst->posted = 1;
    return 1;
}

/* ---- connecting (server) ---- */

static void on_client(pipe_inst *inst, DWORD err);

static void start_listen(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    DWORD err;
    start_op(&inst->op_connect);
    pa->listeners++;
    if (ConnectNamedPipe(inst->h, &inst->op_connect.ov)) {
        inst->op_connect.pending = 0; /* done at once: no packet */
        on_client(inst, 0);
        return;
    }
    err = GetLastError();
    if (err == ERROR_IO_PENDING)
        return;
    /* No packet for these either: a client came before the call
     * (ERROR_PIPE_CONNECTED), or came and left already (ERROR_NO_DATA: what
     * it wrote can still be read, so it is a connection too), or a failure. */
    inst->op_connect.pending = 0;
    on_client(inst, err == ERROR_PIPE_CONNECTED || err == ERROR_NO_DATA ? 0 : err);
}

static void on_client(pipe_inst *inst, DWORD err)
{
    pipe_adapter *pa = inst->pa;
    ULONG pid = 0;
    pa->listeners--;
    if (err != 0 || pa->stopping_io) {
        if (err != 0 && err != ERROR_OPERATION_ABORTED) {
            char text[256];
            win_text(err, text, sizeof(text));
            sb_log(SB_LOG_WARN, pa->base.name, "ConnectNamedPipe on %s: %s", pa->display, text);
            pause_creating(pa); /* replace it after a pause, not in a tight loop */
        }
        inst->dead = 1;
        return;
    }
    inst->connected = 1;
    pa->busy++;
    pa->io_serial++;
    if (GetNamedPipeClientProcessId(inst->h, &pid))
        snprintf(inst->peer, sizeof(inst->peer), "pid%lu#%lu", (unsigned long)pid, pa->io_serial);
    else
        snprintf(inst->peer, sizeof(inst->peer), "pipe#%lu", pa->io_serial);
    inst->known = 1;
    sb_pipe__post(pa, sb_pipe__on_connected, inst);
}

/* Keeps LISTEN_BACKLOG instances listening within max_connections. */
static void top_up(pipe_adapter *pa)
{
    if (pa->retry_at != 0 && GetTickCount64() < pa->retry_at)
        return;
    pa->retry_at = 0;
    while (!pa->stopping_io && pa->listeners < LISTEN_BACKLOG &&
           pa->listeners + pa->busy < pa->max_connections) {
        HANDLE h = sb_pipe__create_instance(pa, pa->open_handles == 0);
        pipe_inst *inst;
        if (h == INVALID_HANDLE_VALUE) {
            DWORD err = GetLastError();
            pause_creating(pa);
            if (err != pa->last_create_err) {
                char text[256];
                const char *hint = "";
                win_text(err, text, sizeof(text));
                if (err == ERROR_ACCESS_DENIED && pa->open_handles == 0)
                    hint = " (another program created a pipe of that name)";
                else if (err == ERROR_ACCESS_DENIED)
                    hint = " (the security descriptor must grant the broker's account read and "
                           "write access to serve more than one client at a time)";
                sb_log(SB_LOG_ERROR, pa->base.name,
                       "CreateNamedPipeW %s (another instance): %s%s; retrying every %d ms",
                       pa->display, text, hint, RETRY_MS);
                pa->last_create_err = err;
            }
            return;
        }
        pa->last_create_err = 0;
        if (sb_pipe__attach(pa, h) != 0 || (inst = sb_pipe__inst_new(pa, h)) == NULL) {
            char text[256];
            win_text(GetLastError(), text, sizeof(text));
            sb_log(SB_LOG_ERROR, pa->base.name, "cannot set up an instance of %s: %s", pa->display,
                   text);
            CloseHandle(h);
            pause_creating(pa);
            return;
        }
        pa->open_handles++;
        link_inst(pa, inst);
        start_listen(inst);
    }
}

/* ---- connecting (client) ---- */

static void do_connect(pipe_adapter *pa)
{
    DWORD flags = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION;
    DWORD err = 0;
    char text[256];
    pipe_inst *inst;
    HANDLE h;

    if (pa->stopping_io)
        return;
    if (pa->insts != NULL) { /* cannot happen: the loop connects once the last one closed */
        snprintf(pa->connect_why, sizeof(pa->connect_why), "the last connection is still open");
        sb_pipe__post(pa, sb_pipe__on_connect_failed, pa);
        return;
    }
    h = CreateFileW(pa->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, flags, NULL);
    /* Every instance busy: wait a little for one (a stop waits that long). */
    if (h == INVALID_HANDLE_VALUE && GetLastError() == ERROR_PIPE_BUSY &&
        WaitNamedPipeW(pa->wname, BUSY_WAIT_MS))
        h = CreateFileW(pa->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, flags,
                        NULL);
    if (h == INVALID_HANDLE_VALUE) {
        err = GetLastError();
        win_text(err, text, sizeof(text));
        snprintf(pa->connect_why, sizeof(pa->connect_why), "CreateFileW: %s", text);
        sb_pipe__post(pa, sb_pipe__on_connect_failed, pa);
        return;
    }
    if (pa->message) {
        DWORD mode = PIPE_READMODE_MESSAGE;
        if (!SetNamedPipeHandleState(h, &mode, NULL, NULL)) {
            err = GetLastError();
            win_text(err, text, sizeof(text));
            snprintf(pa->connect_why, sizeof(pa->connect_why),
                     "framing message needs a message-mode pipe: SetNamedPipeHandleState: %s",
                     text);
            CloseHandle(h);
            sb_pipe__post(pa, sb_pipe__on_connect_failed, pa);
            return;
        }
    }
    if (sb_pipe__attach(pa, h) != 0 || (inst = sb_pipe__inst_new(pa, h)) == NULL) {
        err = GetLastError();
        win_text(err, text, sizeof(text));
        snprintf(pa->connect_why, sizeof(pa->connect_why), "cannot set up the connection: %s",
                 text);
        CloseHandle(h);
        sb_pipe__post(pa, sb_pipe__on_connect_failed, pa);
        return;
    }
    pa->open_handles++;
    link_inst(pa, inst);
    inst->connected = 1;
    inst->known = 1;
    snprintf(inst->peer, sizeof(inst->peer), "%s", pa->display);
    sb_pipe__post(pa, sb_pipe__on_connected, inst);
}

/* ---- reading ---- */

/* Input ends after what was read so far: err 0 for an orderly end, else an
 * SB_E* code and why (logged as an error by the loop if log_as_error). */
static void end_input(pipe_inst *inst, int err, const char *why, int log_as_error)
{
    pipe_adapter *pa = inst->pa;
    int post;
    if (inst->end_pending)
        return;
    inst->end_err = err;
    inst->end_log = log_as_error;
    snprintf(inst->end_why, sizeof(inst->end_why), "%s", why != NULL ? why : "");
    uv_mutex_lock(&pa->lock);
    inst->end_pending = 1;
    post = want_report(inst);
    uv_mutex_unlock(&pa->lock);
    if (post)
        sb_pipe__post(pa, sb_pipe__on_input, inst);
}

static void read_failed(pipe_inst *inst, DWORD err)
{
    pipe_adapter *pa = inst->pa;
    char text[256], why[300];
    if (inst->close_asked || pa->stopping_io)
        return;
    if (err == ERROR_BROKEN_PIPE || err == ERROR_PIPE_NOT_CONNECTED || err == ERROR_NO_DATA) {
        end_input(inst, 0, NULL, 0); /* the other end closed */
        return;
    }
    win_text(err, text, sizeof(text));
    snprintf(why, sizeof(why), "ReadFile on %s: %s", pa->display, text);
    end_input(inst, SB_ECLOSED, why, 0);
}

/* Issues a read. Returns 1 if it is done already (no packet comes):
 * *bytes and *err say how; 0 if it is pending (or could not start). */
static int start_read(pipe_inst *inst, DWORD *bytes, DWORD *err)
{
    pipe_adapter *pa = inst->pa;
    if (inst->rbuf == NULL) {
        size_t cap =
            pa->message && pa->max_message + 1 < READ_CHUNK ? pa->max_message + 1 : READ_CHUNK;
        inst->rbuf = sb_malloc(cap);
        if (inst->rbuf == NULL) {
            end_input(inst, SB_ENOMEM, "out of memory", 0);
            return 0;
        }
        inst->rcap = cap;
        inst->rlen = 0;
    }
    start_op(&inst->op_read);
    *err = 0;
    if (!ReadFile(inst->h, inst->rbuf + inst->rlen, (DWORD)(inst->rcap - inst->rlen), NULL,
                  &inst->op_read.ov)) {
        *err = GetLastError();
        if (*err == ERROR_IO_PENDING)
            return 0;
    }
    /* Done, ERROR_MORE_DATA (a warning: the part read is in the buffer) or
     * failed: no packet comes for any of these. In the skip mode a packet
     * is queued only for an operation that returned pending, whatever its
     * final status (so Wine's server/async.c too; STATUS_BUFFER_OVERFLOW is
     * a warning, not an error, and libuv relies on the same for a UDP
     * datagram truncated at once); ERROR_MORE_DATA at once only happens for
     * a message larger than the 64 KiB buffer. */
    inst->op_read.pending = 0;
    *bytes = *err == 0 || *err == ERROR_MORE_DATA ? (DWORD)inst->op_read.ov.InternalHigh : 0;
    return 1;
}

static void on_read_done(pipe_inst *inst, DWORD bytes, DWORD err);

/* Tells the loop about input waiting in ibuf, unless it was told already. */
static void hand_over(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    int post;
    uv_mutex_lock(&pa->lock);
    post = inst->ilen > 0 && want_report(inst);
    uv_mutex_unlock(&pa->lock);
    if (post)
        sb_pipe__post(pa, sb_pipe__on_input, inst);
}

/* Reads on while the loop wants input and not too much waits for it (a
 * message in progress is always read to its end); reads that complete at
 * once are handled here, one after the other. What was read goes to the
 * loop once no more is to be had at once: one report for all the messages
 * a producer wrote ahead, not one for the first and one for the rest. */
static void read_on(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    for (;;) {
        DWORD bytes, err;
        int full;
        if (!inst->started || inst->end_pending || inst->close_asked || inst->cancelled ||
            pa->stopping_io || inst->h == INVALID_HANDLE_VALUE || inst->op_read.pending)
            break;
        uv_mutex_lock(&pa->lock);
        full = inst->ilen >= pa->ahead_bytes ||
               (pa->ahead_messages > 0 && inst->imsgs >= pa->ahead_messages);
        if (full && inst->rlen == 0)
            inst->stalled = 1; /* the loop resumes us when it takes them */
        uv_mutex_unlock(&pa->lock);
        if (full && inst->rlen == 0)
            break;
        if (!start_read(inst, &bytes, &err))
            break;
        on_read_done(inst, bytes, err);
    }
    hand_over(inst);
}

static void too_big(pipe_inst *inst, size_t size, int at_least)
{
    pipe_adapter *pa = inst->pa;
    char why[300];
    snprintf(why, sizeof(why), "message of %s%zu bytes exceeds max_message %zu",
             at_least ? "at least " : "", size, pa->max_message);
    end_input(inst, SB_ETOOBIG, why, 1);
}

/* The message continues (ERROR_MORE_DATA): grow the buffer for the rest. */
static int grow_for_more(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    DWORD left = 0;
    size_t total, cap;
    char *n;
    if (!PeekNamedPipe(inst->h, NULL, 0, NULL, NULL, &left))
        left = 0;
    total = inst->rlen + left;
    if (inst->rlen > pa->max_message || total > pa->max_message) {
        too_big(inst, total > inst->rlen ? total : inst->rlen + 1, left == 0);
        return -1;
    }
    if (left > 0)
        cap = total;
    else if ((cap = inst->rlen * 2) > pa->max_message + 1)
        cap = pa->max_message + 1;
    n = sb_realloc(inst->rbuf, cap);
    if (n == NULL) {
        end_input(inst, SB_ENOMEM, "out of memory", 0);
        return -1;
    }
    inst->rbuf = n;
    inst->rcap = cap;
    return 0;
}

/* Appends the data read (message mode: as one length-prefixed frame) to
 * what waits for the loop (read_on hands it over). */
static int append_input(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    size_t hdr = pa->message ? 4 : 0, need;
    uv_mutex_lock(&pa->lock);
    need = inst->ilen + hdr + inst->rlen;
    if (need > inst->icap) {
        size_t cap = inst->icap == 0 ? READ_CHUNK : inst->icap;
        char *n;
        while (cap < need)
            cap *= 2;
        n = sb_realloc(inst->ibuf, cap);
        if (n == NULL) {
            uv_mutex_unlock(&pa->lock);
            end_input(inst, SB_ENOMEM, "out of memory", 0);
            return -1;
        }
        inst->ibuf = n;
        inst->icap = cap;
    }
    if (pa->message) {
        unsigned char *u = (unsigned char *)inst->ibuf + inst->ilen;
        u[0] = (unsigned char)(inst->rlen >> 24);
        u[1] = (unsigned char)(inst->rlen >> 16);
        u[2] = (unsigned char)(inst->rlen >> 8);
        u[3] = (unsigned char)inst->rlen;
    }
    memcpy(inst->ibuf + inst->ilen + hdr, inst->rbuf, inst->rlen);
    inst->ilen = need;
    inst->imsgs++;
    uv_mutex_unlock(&pa->lock);
    inst->rlen = 0;
    if (inst->rcap > READ_CHUNK) {
        /* Do not keep a large message's buffer for every small one after it. */
        sb_free(inst->rbuf);
        inst->rbuf = NULL;
        inst->rcap = 0;
    }
    return 0;
}

/* A read completed (from the port, or at once): takes its data. The caller
 * reads on (read_on). */
static void on_read_done(pipe_inst *inst, DWORD bytes, DWORD err)
{
    pipe_adapter *pa = inst->pa;

    if (inst->close_asked || pa->stopping_io || inst->cancelled) {
        inst->rlen = 0;
        return; /* closing: what came is dropped */
    }
    if (err == 0 || err == ERROR_MORE_DATA)
        inst->rlen += bytes;
    if (err == ERROR_MORE_DATA && pa->message) {
        grow_for_more(inst); /* read_on reads the rest (rlen > 0) */
        return;
    }
    if (err != 0) {
        read_failed(inst, err);
        return;
    }
    if (!pa->message && bytes == 0)
        return; /* nothing read: read_on reads again */
    if (pa->message && inst->rlen > pa->max_message) {
        too_big(inst, inst->rlen, 0);
        return;
    }
    if (pa->base.os_user && !inst->who_done) {
        /* Before the first input reaches the loop: every request is
         * checked against this account. */
        inst->who_done = 1;
        inst->user = sb_pipe__client_user(inst->h);
    }
    append_input(inst);
}

/* ---- writing ---- */

static void write_end(pipe_inst *inst, int status, const char *why)
{
    sb_free(inst->wbuf);
    inst->wbuf = NULL;
    inst->wlen = inst->woff = 0;
    inst->wstatus = status;
    snprintf(inst->wwhy, sizeof(inst->wwhy), "%s", why != NULL ? why : "");
}

static void write_failed(pipe_inst *inst, DWORD err)
{
    char text[256], why[300];
    if (err == ERROR_OPERATION_ABORTED) {
        write_end(inst, SB_ECLOSED, "connection closed before the write completed");
        return;
    }
    win_text(err, text, sizeof(text));
    snprintf(why, sizeof(why), "WriteFile on %s: %s", inst->pa->display, text);
    write_end(inst, SB_ECLOSED, why);
}

/* A WriteFile of inst->wcur bytes (message mode: the frame at woff) moved
 * `bytes`: steps over them. Returns -1 (and ends the write) on a short
 * message. */
static int write_advance(pipe_inst *inst, DWORD bytes)
{
    if (inst->pa->message) {
        if (bytes != inst->wcur) {
            write_end(inst, SB_ECLOSED, "short write of a pipe message");
            return -1;
        }
        inst->woff += 4 + inst->wcur;
    } else if (bytes == 0 && inst->wcur > 0) {
        write_end(inst, SB_ECLOSED, "the pipe took nothing of a write");
        return -1;
    } else {
        inst->woff += bytes;
    }
    return 0;
}

int sb_pipe__write_on(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    for (;;) {
        const char *p;
        DWORD n, err;
        if (inst->woff == inst->wlen) {
            write_end(inst, 0, NULL);
            return 1;
        }
        if (pa->message) {
            const unsigned char *u = (const unsigned char *)inst->wbuf + inst->woff;
            size_t frame;
            if (inst->wlen - inst->woff < 4)
                goto malformed;
            frame = ((size_t)u[0] << 24) | ((size_t)u[1] << 16) | ((size_t)u[2] << 8) | u[3];
            if (inst->wlen - inst->woff - 4 < frame)
                goto malformed;
            p = inst->wbuf + inst->woff + 4;
            n = (DWORD)frame;
        } else {
            size_t rest = inst->wlen - inst->woff;
            p = inst->wbuf + inst->woff;
            n = (DWORD)(rest > WRITE_MAX ? WRITE_MAX : rest);
        }
        inst->wcur = n;
        start_op(&inst->op_write);
        if (!WriteFile(inst->h, p, n, NULL, &inst->op_write.ov)) {
            err = GetLastError();
            if (err == ERROR_IO_PENDING)
                return 0; /* the thread goes on when it completes */
            inst->op_write.pending = 0;
            write_failed(inst, err);
            return 1;
        }
        /* Done at once: no packet comes. */
        inst->op_write.pending = 0;
        if (write_advance(inst, (DWORD)inst->op_write.ov.InternalHigh) != 0)
            return 1;
    }
malformed:
    /* Only the raw protocol runs over message mode, and it writes frames. */
    sb_log(SB_LOG_ERROR, pa->base.name, "peer %s: internal error: output is not framed",
           inst->peer);
    write_end(inst, SB_EPROTO, "output is not framed");
    return 1;
}

/* A pending write completed: the thread writes the rest. */
static void on_write_done(pipe_inst *inst, DWORD bytes, DWORD err)
{
    pipe_adapter *pa = inst->pa;
    if (err != 0) {
        write_failed(inst, err);
    } else if (write_advance(inst, bytes) != 0) {
        /* ended */
    } else if (inst->woff < inst->wlen && (inst->close_asked || pa->stopping_io ||
                                           inst->cancelled || inst->h == INVALID_HANDLE_VALUE)) {
        write_end(inst, SB_ECLOSED, "connection closed before the write");
    } else if (sb_pipe__write_on(inst) == 0) {
        return; /* pending again */
    }
    report_write(inst);
}

/* ---- commands ---- */

/* The loop starts reading, or took input after the thread stalled. */
static void cmd_read(pipe_inst *inst)
{
    inst->started = 1;
    read_on(inst);
}

/* Lets go of an instance's handle: closes it, or, when it was a connection
 * and nothing else listens, disconnects it and listens again on it. */
static void release_handle(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    HANDLE h = inst->h;
    inst->h = INVALID_HANDLE_VALUE;
    if (inst->connected) {
        inst->connected = 0;
        pa->busy--;
    }
    if (pa->is_server && inst->known && !pa->stopping_io && pa->listeners == 0 &&
        DisconnectNamedPipe(h)) {
        pipe_inst *n = sb_pipe__inst_new(pa, h);
        if (n != NULL) {
            link_inst(pa, n);
            start_listen(n);
            return;
        }
    }
    CloseHandle(h);
    pa->open_handles--;
}

static int any_pending(const pipe_inst *inst)
{
    return inst->op_connect.pending || inst->op_read.pending || inst->op_write.pending;
}

/* Moves an instance towards its end once it is to close: cancels its I/O,
 * then releases the handle, then (once the loop asked, for a connection)
 * reports it closed. May free inst. */
static void settle(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    int closing =
        inst->known ? inst->close_asked || pa->stopping_io : inst->dead || pa->stopping_io;
    if (!closing)
        return;
    if (any_pending(inst)) {
        if (!inst->cancelled && inst->h != INVALID_HANDLE_VALUE) {
            inst->cancelled = 1;
            CancelIoEx(inst->h, NULL);
        }
        return;
    }
    if (inst->h != INVALID_HANDLE_VALUE)
        release_handle(inst);
    if (inst->known && !inst->close_asked)
        return; /* the loop has not heard of the end yet: it will ask */
    unlink_inst(pa, inst);
    if (inst->known)
        sb_pipe__post(pa, sb_pipe__on_closed, inst); /* the loop frees it */
    else
        sb_pipe__inst_free(inst);
}

static void do_stop(pipe_adapter *pa)
{
    pa->stopping_io = 1;
    for (pipe_inst *inst = pa->insts, *next; inst != NULL; inst = next) {
        next = inst->next;
        settle(inst);
    }
}

static void on_io(pipe_op *op, DWORD bytes, DWORD err)
{
    pipe_inst *inst = op->inst;
    op->pending = 0;
    if (op == &inst->op_connect)
        on_client(inst, err);
    else if (op == &inst->op_read) {
        on_read_done(inst, bytes, err);
        read_on(inst);
    } else
        on_write_done(inst, bytes, err);
    settle(inst);
}

void sb_pipe__thread(void *arg)
{
    pipe_adapter *pa = arg;

    if (pa->first != NULL) {
        pipe_inst *first = pa->first;
        pa->first = NULL;
        link_inst(pa, first);
        start_listen(first);
        settle(first);
    }
    for (;;) {
        DWORD bytes = 0, err = 0;
        ULONG_PTR key = 0;
        OVERLAPPED *ov = NULL;
        DWORD timeout = INFINITE;
        BOOL ok;
        if (pa->retry_at != 0 && !pa->stopping_io) {
            ULONGLONG now = GetTickCount64();
            timeout = now < pa->retry_at ? (DWORD)(pa->retry_at - now) : 0;
        }
        ok = GetQueuedCompletionStatus(pa->port, &bytes, &key, &ov, timeout);
        if (!ok)
            err = GetLastError();
        if (!ok && ov == NULL) {
            if (err != WAIT_TIMEOUT) {
                char text[256];
                win_text(err, text, sizeof(text));
                sb_log(SB_LOG_ERROR, pa->base.name, "GetQueuedCompletionStatus: %s", text);
                Sleep(100);
            }
        } else {
            pipe_inst *inst = (pipe_inst *)ov;
            switch ((int)key) {
            case PIPE_KEY_IO:
                on_io(CONTAINING_RECORD(ov, pipe_op, ov), bytes, err);
                break;
            case PIPE_KEY_READ:
                cmd_read(inst);
                settle(inst);
                break;
            case PIPE_KEY_CLOSE:
                inst->close_asked = 1;
                settle(inst);
                break;
            case PIPE_KEY_CONNECT:
                do_connect(pa);
                break;
            case PIPE_KEY_STOP:
                do_stop(pa);
                break;
            default:
                break;
            }
        }
        if (pa->is_server)
            top_up(pa);
        if (pa->stopping_io && pa->open_handles == 0)
            SetEvent(pa->handles_closed);
        if (pa->stopping_io && pa->insts == NULL)
            break;
    }
    sb_pipe__post(pa, sb_pipe__on_stopped, pa);
}
