/*
 * Named-pipe I/O, on the loop thread: overlapped operations on the pipe
 * handles, completing on the loop's own completion port (see pipe_int.h
 * for how a completion reaches on_op).
 *
 * Server: it keeps up to LISTEN_BACKLOG instances waiting in
 * ConnectNamedPipe while fewer than max_connections clients are connected
 * (beyond that, clients get ERROR_PIPE_BUSY and may WaitNamedPipe). When a
 * connection ends and no other instance is listening, its handle is
 * disconnected and listens again, so the pipe name never disappears while
 * the adapter runs (nobody can take it over in between).
 *
 * Reading: while the connection reads, one ReadFile is outstanding; what it
 * brings goes to the protocol at once, and reads that complete at once
 * (more was waiting) are handled right there, up to READS_PER_TURN in a row
 * before the rest waits for a later loop turn. In message mode each
 * message is passed on as a length-prefixed frame; a message larger than
 * the buffer completes with ERROR_MORE_DATA, and the rest is read into a
 * larger buffer (PeekNamedPipe tells the size) unless the whole exceeds
 * max_message, which ends the connection after the messages before it.
 * The end of input is passed on after the last data. A read that came
 * from the port, on a connection the broker answers, is followed by the
 * next one only after the loop turn's output was written (pipe_int.h:
 * replies before everything else).
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
/* Reads that complete at once handled in a row; then the connection goes
 * on in a later loop turn, after the others. */
#define READS_PER_TURN 32
/* Room before the data in rbuf for a message's frame length. */
#define FRAME_HDR 4

/* The OVERLAPPED of an operation: its async's wake-up request's. */
#define OP_OV(op) (&(op)->a.async_req.u.io.overlapped)

static void on_op(uv_async_t *a);
static void on_op_closed(uv_handle_t *h);
static void read_on(pipe_inst *inst);
static void top_up(pipe_adapter *pa);

static void win_text(DWORD code, char *out, size_t n)
{
    sb_win_strerror(code, out, n);
}

int sb_pipe__attach(const pipe_adapter *pa, HANDLE h)
{
    /* Without a packet for what completes at once, a read that finds data
     * and a write that fits in the pipe's buffer (nearly all of them) cost
     * no wake-up. The key is not used: libuv finds the operation from its
     * OVERLAPPED. */
    if (CreateIoCompletionPort(h, pa->base.loop->iocp, 0, 0) == NULL ||
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

static void op_init(pipe_inst *inst, pipe_op *op)
{
    uv_async_init(inst->pa->base.loop, &op->a, on_op); /* cannot fail on Windows */
    op->a.data = op;
    op->inst = inst;
    inst->ops_open++;
}

pipe_inst *sb_pipe__inst_new(pipe_adapter *pa, HANDLE h)
{
    pipe_inst *inst = sb_calloc(1, sizeof(*inst));
    if (inst == NULL)
        return NULL;
    inst->pa = pa;
    inst->h = h;
    op_init(inst, &inst->op_connect);
    op_init(inst, &inst->op_read);
    op_init(inst, &inst->op_write);
    link_inst(pa, inst);
    return inst;
}

static void inst_free(pipe_inst *inst)
{
    sb_free(inst->rbuf);
    sb_free(inst->wbuf);
    sb_free(inst->user);
    sb_free(inst);
}

/* Stopping, and nothing is left: the adapter may report stopped. */
static void maybe_idle(pipe_adapter *pa)
{
    if (pa->stopping_io && pa->insts == NULL && pa->work_pending == 0)
        sb_pipe__on_io_idle(pa);
}

/* Before an overlapped call on op. */
static OVERLAPPED *op_start(pipe_op *op)
{
    OVERLAPPED *ov = OP_OV(op);
    memset(ov, 0, sizeof(*ov));
    return ov;
}

/* The call returned ERROR_IO_PENDING: its packet will come. async_sent
 * set, as after uv_async_send: libuv closes the async only after it. */
static void op_pending(pipe_op *op)
{
    op->pending = 1;
    op->a.async_sent = 1;
}

/* Continues op in a later loop turn (no I/O may be pending on it). */
static void kick(pipe_op *op)
{
    if (op->pending || op->kicked || op->inst->released)
        return;
    op->kicked = 1;
    uv_async_send(&op->a);
}

/* Closes the asyncs that wait for no packet; the others close when it
 * comes (on_op). */
static void close_idle_ops(pipe_inst *inst)
{
    pipe_op *ops[3] = {&inst->op_connect, &inst->op_read, &inst->op_write};
    for (int i = 0; i < 3; i++)
        if (!ops[i]->pending && !ops[i]->kicked && !uv_is_closing((uv_handle_t *)&ops[i]->a))
            uv_close((uv_handle_t *)&ops[i]->a, on_op_closed);
}

static void on_op_closed(uv_handle_t *h)
{
    pipe_op *op = h->data;
    pipe_inst *inst = op->inst;
    pipe_adapter *pa = inst->pa;
    if (--inst->ops_open > 0)
        return;
    unlink_inst(pa, inst);
    if (inst->conn != NULL)
        sb_pipe__on_freed(inst);
    if (!inst->who_busy) /* else the look-up still writes inst->user: who_looked_up frees it */
        inst_free(inst);
    maybe_idle(pa);
}

/* After a failure, instances are created again RETRY_MS later (top_up). */
static void on_retry(uv_timer_t *t)
{
    pipe_adapter *pa = t->data;
    pa->retry_armed = 0;
    top_up(pa);
}

static void pause_creating(pipe_adapter *pa)
{
    if (pa->retry_armed || pa->retry_timer == NULL || pa->stopping_io)
        return;
    pa->retry_armed = 1;
    uv_timer_start(pa->retry_timer, on_retry, RETRY_MS, 0);
}

/* ---- connecting (server) ---- */

static void start_listen(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    pipe_op *op = &inst->op_connect;
    DWORD err = 0;
    pa->listeners++;
    inst->listening = 1;
    if (!ConnectNamedPipe(inst->h, op_start(op))) {
        err = GetLastError();
        if (err == ERROR_IO_PENDING) {
            op_pending(op);
            return;
        }
        /* A client came before the call (ERROR_PIPE_CONNECTED), or came
         * and left already (ERROR_NO_DATA: what it wrote can still be
         * read, so it is a connection too), or a failure. */
        if (err == ERROR_PIPE_CONNECTED || err == ERROR_NO_DATA)
            err = 0;
    }
    /* Done at once (no packet comes): handled in a later turn, not inside
     * whatever made the instance. */
    op->done_err = err;
    kick(op);
}

static void on_client(pipe_inst *inst, DWORD err)
{
    pipe_adapter *pa = inst->pa;
    ULONG pid = 0;
    pa->listeners--;
    inst->listening = 0;
    if (err != 0 || pa->stopping_io) {
        if (err != 0 && err != ERROR_OPERATION_ABORTED) {
            char text[256];
            win_text(err, text, sizeof(text));
            sb_log(SB_LOG_WARN, pa->base.name, "ConnectNamedPipe on %s: %s", pa->display, text);
            pause_creating(pa); /* replace it after a pause, not in a tight loop */
        }
        sb_pipe__close(inst);
        top_up(pa);
        return;
    }
    inst->connected = 1;
    pa->busy++;
    pa->io_serial++;
    if (GetNamedPipeClientProcessId(inst->h, &pid))
        snprintf(inst->peer, sizeof(inst->peer), "pid%lu#%lu", (unsigned long)pid, pa->io_serial);
    else
        snprintf(inst->peer, sizeof(inst->peer), "pipe#%lu", pa->io_serial);
    top_up(pa); /* the next client finds an instance listening */
    sb_pipe__on_connected(inst);
}

/* Keeps LISTEN_BACKLOG instances listening within max_connections. */
static void top_up(pipe_adapter *pa)
{
    if (pa->retry_armed)
        return;
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
        start_listen(inst);
    }
}

void sb_pipe__listen(pipe_inst *inst)
{
    start_listen(inst);
    top_up(inst->pa);
}

/* ---- connecting (client) ---- */

/* A connect attempt. It runs on a thread of its own, not on libuv's
 * thread pool: CreateFileW may wait for a busy server's instance, and on
 * \\HOST\pipe\NAME for the SMB timeout (tens of seconds, on every
 * reconnect); on the pool a few such clients would stall every other job
 * there (reload preparation, paging, MQTT authentication, uv_fs,
 * getaddrinfo). The thread reads only pa's settings (wname, message, which
 * do not change; pa outlives the job: a stop waits for it, work_pending),
 * writes only the job's h and why, and posts `done` as its last act; the
 * loop joins it there (it is exiting) and frees the job when `done` closed. */
typedef struct connect_job {
    uv_async_t done;
    uv_thread_t tid;
    pipe_adapter *pa;
    HANDLE h;
    char why[300];
} connect_job;

static void connect_thread(void *arg)
{
    connect_job *job = arg;
    const pipe_adapter *pa = job->pa;
    DWORD flags = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION;
    char text[256];
    HANDLE h;

    h = CreateFileW(pa->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, flags, NULL);
    /* Every instance busy: wait a little for one (a stop waits that long). */
    if (h == INVALID_HANDLE_VALUE && GetLastError() == ERROR_PIPE_BUSY &&
        WaitNamedPipeW(pa->wname, BUSY_WAIT_MS))
        h = CreateFileW(pa->wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, flags,
                        NULL);
    if (h == INVALID_HANDLE_VALUE) {
        win_text(GetLastError(), text, sizeof(text));
        snprintf(job->why, sizeof(job->why), "CreateFileW: %s", text);
    } else if (pa->message) {
        DWORD mode = PIPE_READMODE_MESSAGE;
        if (!SetNamedPipeHandleState(h, &mode, NULL, NULL)) {
            win_text(GetLastError(), text, sizeof(text));
            snprintf(job->why, sizeof(job->why),
                     "framing message needs a message-mode pipe: SetNamedPipeHandleState: %s",
                     text);
            CloseHandle(h);
            h = INVALID_HANDLE_VALUE;
        }
    }
    job->h = h;
    uv_async_send(&job->done); /* the last touch: the loop may join and free the job now */
}

static void connect_job_free(uv_handle_t *h)
{
    sb_free(h->data);
}

static void connect_done(uv_async_t *a)
{
    connect_job *job = a->data;
    pipe_adapter *pa = job->pa;
    HANDLE h = job->h;
    pipe_inst *inst;
    char text[256];

    uv_thread_join(&job->tid); /* it posted `done` as it returned: no wait */
    if (h == INVALID_HANDLE_VALUE)
        snprintf(pa->connect_why, sizeof(pa->connect_why), "%s", job->why);
    uv_close((uv_handle_t *)&job->done, connect_job_free);
    pa->work_pending--;
    if (pa->stopping_io) {
        if (h != INVALID_HANDLE_VALUE)
            CloseHandle(h);
        maybe_idle(pa);
        return;
    }
    if (h == INVALID_HANDLE_VALUE) {
        sb_pipe__on_connect_failed(pa);
        return;
    }
    if (sb_pipe__attach(pa, h) != 0 || (inst = sb_pipe__inst_new(pa, h)) == NULL) {
        win_text(GetLastError(), text, sizeof(text));
        snprintf(pa->connect_why, sizeof(pa->connect_why), "cannot set up the connection: %s",
                 text);
        CloseHandle(h);
        sb_pipe__on_connect_failed(pa);
        return;
    }
    pa->open_handles++;
    inst->connected = 1;
    snprintf(inst->peer, sizeof(inst->peer), "%s", pa->display);
    sb_pipe__on_connected(inst);
}

void sb_pipe__connect(pipe_adapter *pa)
{
    connect_job *job;
    int rc;
    if (pa->stopping_io)
        return;
    if (pa->insts != NULL) { /* cannot happen: the loop connects once the last one closed */
        snprintf(pa->connect_why, sizeof(pa->connect_why), "the last connection is still open");
        sb_pipe__on_connect_failed(pa);
        return;
    }
    job = sb_calloc(1, sizeof(*job));
    if (job == NULL) {
        snprintf(pa->connect_why, sizeof(pa->connect_why),
                 "cannot start connecting: out of memory");
        sb_pipe__on_connect_failed(pa);
        return;
    }
    job->pa = pa;
    job->h = INVALID_HANDLE_VALUE;
    uv_async_init(pa->base.loop, &job->done, connect_done); /* cannot fail on Windows */
    job->done.data = job;
    rc = uv_thread_create(&job->tid, connect_thread, job);
    if (rc != 0) {
        uv_close((uv_handle_t *)&job->done, connect_job_free);
        snprintf(pa->connect_why, sizeof(pa->connect_why), "cannot start connecting: %s",
                 uv_strerror(rc));
        sb_pipe__on_connect_failed(pa);
        return;
    }
    pa->work_pending++;
}

/* ---- reading ---- */

/* Input ends after what was read so far: err 0 for an orderly end, else an
 * SB_E* code and why (logged as an error if log_as_error). Passed on by
 * read_on once the connection reads. */
static void end_input(pipe_inst *inst, int err, const char *why, int log_as_error)
{
    if (inst->end_pending || inst->end_reported)
        return;
    inst->end_err = err;
    inst->end_log = log_as_error;
    snprintf(inst->end_why, sizeof(inst->end_why), "%s", why != NULL ? why : "");
    inst->end_pending = 1;
}

static void read_failed(pipe_inst *inst, DWORD err)
{
    pipe_adapter *pa = inst->pa;
    char text[256], why[300];
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
    OVERLAPPED *ov;
    if (inst->rbuf == NULL) {
        size_t cap =
            pa->message && pa->max_message + 1 < READ_CHUNK ? pa->max_message + 1 : READ_CHUNK;
        inst->rbuf = sb_malloc(FRAME_HDR + cap);
        if (inst->rbuf == NULL) {
            end_input(inst, SB_ENOMEM, "out of memory", 0);
            return 0;
        }
        inst->rcap = cap;
        inst->rlen = 0;
    }
    ov = op_start(&inst->op_read);
    *err = 0;
    if (!ReadFile(inst->h, inst->rbuf + FRAME_HDR + inst->rlen, (DWORD)(inst->rcap - inst->rlen),
                  NULL, ov)) {
        *err = GetLastError();
        if (*err == ERROR_IO_PENDING) {
            op_pending(&inst->op_read);
            return 0;
        }
    }
    /* Done, ERROR_MORE_DATA (a warning: the part read is in the buffer) or
     * failed: no packet comes for any of these. In the skip mode a packet
     * is queued only for an operation that returned pending, whatever its
     * final status (so Wine's server/async.c too; STATUS_BUFFER_OVERFLOW is
     * a warning, not an error, and libuv relies on the same for a UDP
     * datagram truncated at once); ERROR_MORE_DATA at once only happens for
     * a message larger than the 64 KiB buffer. */
    *bytes = *err == 0 || *err == ERROR_MORE_DATA ? (DWORD)ov->InternalHigh : 0;
    return 1;
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
    n = sb_realloc(inst->rbuf, FRAME_HDR + cap);
    if (n == NULL) {
        end_input(inst, SB_ENOMEM, "out of memory", 0);
        return -1;
    }
    inst->rbuf = n;
    inst->rcap = cap;
    return 0;
}

/* On the thread pool: only inst->who_token (closed here) and inst->user
 * are touched, never the pipe handle. */
static void who_work(uv_work_t *w)
{
    pipe_inst *inst = w->data;
    HANDLE token = inst->who_token;
    inst->who_token = NULL;
    inst->user = sb_pipe__token_user(token);
}

static void who_looked_up(uv_work_t *w, int status)
{
    pipe_inst *inst = w->data;
    pipe_adapter *pa = inst->pa;
    (void)status;
    pa->work_pending--;
    inst->who_busy = 0;
    if (inst->who_token != NULL) { /* the job did not run */
        CloseHandle(inst->who_token);
        inst->who_token = NULL;
    }
    if (!inst->released)
        read_on(inst);
    else if (inst->ops_open == 0) /* closed meanwhile: on_op_closed left it to us */
        inst_free(inst);
    maybe_idle(pa);
}

/* A read completed (from the port, or at once): takes its data. The caller
 * goes on (read_on). */
static void on_read_done(pipe_inst *inst, DWORD bytes, DWORD err)
{
    pipe_adapter *pa = inst->pa;

    if (err == 0 || err == ERROR_MORE_DATA)
        inst->rlen += bytes;
    if (err == ERROR_MORE_DATA && pa->message) {
        grow_for_more(inst); /* read_on reads the rest */
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
    inst->rready = 1;
    if (pa->base.os_user && !inst->who_done) {
        /* Before the first input reaches the protocol: every request is
         * checked against this account. Windows lets a server impersonate
         * its client only once it read the client's data. Taking the token
         * is local and quick: here. The look-up may ask a domain
         * controller: on the thread pool, with the token alone (a close
         * need not wait for it; the input waits, who_busy). */
        inst->who_done = 1;
        inst->who_token = sb_pipe__client_token(inst->h);
        inst->who_work.data = inst;
        if (inst->who_token == NULL)
            ; /* anonymous: the connection has no user */
        else if (uv_queue_work(pa->base.loop, &inst->who_work, who_work, who_looked_up) == 0) {
            inst->who_busy = 1;
            pa->work_pending++;
        } else {
            inst->user = sb_pipe__token_user(inst->who_token);
            inst->who_token = NULL;
        }
    }
}

/* Passes on what rbuf holds, or else the end of input. Returns 1 if the
 * connection may read on. */
static int pass_on(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    sb_conn *c = inst->conn;
    if (inst->user != NULL && c->user == NULL) {
        c->user = inst->user; /* now owned by the connection */
        inst->user = NULL;
    }
    if (inst->rready) {
        char *p = inst->rbuf + FRAME_HDR;
        size_t len = inst->rlen;
        if (pa->message) {
            unsigned char *u = (unsigned char *)inst->rbuf;
            u[0] = (unsigned char)(len >> 24);
            u[1] = (unsigned char)(len >> 16);
            u[2] = (unsigned char)(len >> 8);
            u[3] = (unsigned char)len;
            p = inst->rbuf;
            len += FRAME_HDR;
        }
        inst->rready = 0;
        inst->rlen = 0;
        sb_conn_input(c, p, len);
        if (inst->rcap > READ_CHUNK) {
            /* Do not keep a large message's buffer for every small one after it. */
            sb_free(inst->rbuf);
            inst->rbuf = NULL;
            inst->rcap = 0;
        }
        return !c->closing && inst->want_read && !inst->close_asked;
    }
    inst->end_pending = 0;
    inst->end_reported = 1;
    if (inst->end_log) {
        sb_log(SB_LOG_ERROR, c->adapter->name, "peer %s: %s; closing the connection", c->peer,
               inst->end_why);
        sb_conn_input_end(c, inst->end_err, NULL);
    } else {
        sb_conn_input_end(c, inst->end_err, inst->end_why);
    }
    return 0;
}

/* Reads put off until the turn's output was written (read_on), and those
 * sb_pipe__read_deferred has yet to issue. Loop thread only. */
static pipe_inst *deferred, *issuing;

static void defer_read(pipe_inst *inst)
{
    if (inst->read_deferred)
        return;
    inst->read_deferred = 1;
    inst->defer_next = deferred;
    deferred = inst;
    sb_pipe__flush_soon(inst->pa);
}

int sb_pipe__reads_deferred(void)
{
    return deferred != NULL;
}

static void unlink_deferred(pipe_inst **list, pipe_inst *inst)
{
    for (pipe_inst **p = list; *p != NULL; p = &(*p)->defer_next)
        if (*p == inst) {
            *p = inst->defer_next;
            return;
        }
}

/* inst closes: off the lists (its memory goes when its asyncs closed). */
static void undefer_read(pipe_inst *inst)
{
    if (!inst->read_deferred)
        return;
    unlink_deferred(&deferred, inst);
    unlink_deferred(&issuing, inst);
    inst->read_deferred = 0;
    inst->defer_next = NULL;
}

void sb_pipe__read_deferred(void)
{
    pipe_inst *inst;
    /* What these reads put off again waits for the next flush. */
    issuing = deferred;
    deferred = NULL;
    while ((inst = issuing) != NULL) {
        issuing = inst->defer_next;
        inst->defer_next = NULL;
        inst->read_deferred = 0;
        inst->woke = 0;
        read_on(inst);
    }
}

/* Passes on what was read, and reads on, while the connection reads; reads
 * that complete at once are handled here, one after the other, up to
 * READS_PER_TURN (then a kick goes on in a later turn). */
static void read_on(pipe_inst *inst)
{
    if (inst->in_read)
        return; /* the protocol resumed reading from inside pass_on: the loop below goes on */
    inst->in_read = 1;
    for (int n = 0;; n++) {
        DWORD bytes, err;
        if (inst->released || inst->close_asked || inst->conn == NULL || inst->conn->closing ||
            !inst->want_read || inst->who_busy)
            break;
        if (inst->rready || inst->end_pending) {
            if (!pass_on(inst))
                break;
            continue;
        }
        if (inst->end_reported || inst->op_read.pending || inst->op_read.kicked)
            break;
        if (n >= READS_PER_TURN) {
            kick(&inst->op_read);
            break;
        }
        if (inst->woke && inst->answered) {
            /* Woken by this input (the pipe had been empty) from a peer
             * that gets answers: it probably waits for the reply, which
             * the core makes later in this turn. The next read, likely
             * pending, is issued after the turn's output is written (the
             * flush, before the loop polls again), not before it, where
             * it would delay the reply by a wineserver round trip under
             * Wine. Not for a peer that only writes (a raw producer):
             * its messages are read on at once, in one batch, as before. */
            defer_read(inst);
            break;
        }
        if (!start_read(inst, &bytes, &err))
            continue; /* pending (the loop ends above), or the end of input is to be passed on */
        on_read_done(inst, bytes, err);
    }
    inst->in_read = 0;
}

void sb_pipe__read(pipe_inst *inst)
{
    if (inst->in_read)
        return; /* read_on goes on */
    kick(&inst->op_read); /* not from inside the protocol call that resumed reading */
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
        OVERLAPPED *ov;
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
        ov = op_start(&inst->op_write);
        if (!WriteFile(inst->h, p, n, NULL, ov)) {
            err = GetLastError();
            if (err == ERROR_IO_PENDING) {
                op_pending(&inst->op_write);
                return 0; /* goes on when it completes (on_op) */
            }
            write_failed(inst, err);
            return 1;
        }
        /* Done at once: no packet comes. */
        if (write_advance(inst, (DWORD)ov->InternalHigh) != 0)
            return 1;
    }
malformed:
    /* Only the raw protocol runs over message mode, and it writes frames. */
    sb_log(SB_LOG_ERROR, pa->base.name, "peer %s: internal error: output is not framed",
           inst->peer);
    write_end(inst, SB_EPROTO, "output is not framed");
    return 1;
}

/* A pending write completed: writes the rest, or reports it done. */
static void on_write_done(pipe_inst *inst, DWORD bytes, DWORD err)
{
    if (err != 0)
        write_failed(inst, err);
    else if (write_advance(inst, bytes) != 0)
        ; /* ended */
    else if (sb_pipe__write_on(inst) == 0)
        return; /* pending again */
    sb_pipe__on_write_done(inst);
}

/* ---- completions ---- */

static void on_op(uv_async_t *a)
{
    pipe_op *op = a->data;
    pipe_inst *inst = op->inst;
    int was_pending = op->pending;
    DWORD bytes = 0, err = 0;

    op->pending = 0;
    op->kicked = 0;
    if (inst->released) {
        /* Closing: what came is dropped; a write in flight still ends (the
         * connection holds a reference for it). */
        if (op == &inst->op_write && was_pending && inst->wbuf != NULL) {
            write_end(inst, SB_ECLOSED, "connection closed before the write completed");
            sb_pipe__on_write_done(inst);
        }
        if (!uv_is_closing((uv_handle_t *)&op->a))
            uv_close((uv_handle_t *)&op->a, on_op_closed);
        return;
    }
    if (was_pending && !GetOverlappedResult(inst->h, OP_OV(op), &bytes, FALSE))
        err = GetLastError();
    if (op == &inst->op_connect) {
        on_client(inst, was_pending ? err : op->done_err);
    } else if (op == &inst->op_read) {
        if (was_pending) {
            inst->woke = 1;
            on_read_done(inst, bytes, err);
        }
        read_on(inst);
    } else if (was_pending) {
        on_write_done(inst, bytes, err);
    }
}

/* ---- closing ---- */

/* Lets go of an instance's handle: closes it, or, when it was a connection
 * and nothing else listens, disconnects it and listens again on it (a new
 * instance; this one's cancelled operations still complete on their own). */
static void release_handle(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    HANDLE h = inst->h;
    int was_connection = inst->connected;
    inst->h = INVALID_HANDLE_VALUE;
    if (inst->connected) {
        inst->connected = 0;
        pa->busy--;
    }
    if (pa->is_server && was_connection && !pa->stopping_io && pa->listeners == 0 &&
        DisconnectNamedPipe(h)) {
        pipe_inst *n = sb_pipe__inst_new(pa, h);
        if (n != NULL) {
            start_listen(n);
            return;
        }
    }
    CloseHandle(h);
    pa->open_handles--;
}

void sb_pipe__close(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    inst->close_asked = 1;
    undefer_read(inst);
    if (inst->released)
        return;
    inst->released = 1;
    if (inst->listening) {
        inst->listening = 0;
        pa->listeners--;
    }
    if (inst->h != INVALID_HANDLE_VALUE) {
        if (inst->op_connect.pending || inst->op_read.pending || inst->op_write.pending)
            CancelIoEx(inst->h, NULL);
        release_handle(inst);
    }
    close_idle_ops(inst);
}

static void free_handle(uv_handle_t *h)
{
    sb_free(h);
}

void sb_pipe__stop_io(pipe_adapter *pa)
{
    pa->stopping_io = 1;
    if (pa->retry_timer != NULL) {
        uv_close((uv_handle_t *)pa->retry_timer, free_handle);
        pa->retry_timer = NULL;
    }
    for (pipe_inst *inst = pa->insts, *next; inst != NULL; inst = next) {
        next = inst->next;
        if (inst->conn != NULL && !inst->conn->closing)
            sb_conn_close(inst->conn, NULL); /* comes back through t_close */
        else
            sb_pipe__close(inst);
    }
    /* No maybe_idle here: that could report the adapter stopped, which
     * frees it, while pipe_stop still uses it; pipe_stop checks last. */
}
