/*
 * Named pipes on Windows (`type: pipe`; on POSIX the same type is a Unix
 * domain socket, adapters/socket/stream.c, with the same keys).
 *
 * `path: NAME` (or \\.\pipe\NAME) makes a pipe server: up to
 * max_connections clients at once, each a connection carrying the adapter's
 * protocol (raw, jsonl or mqtt). The pipe is message-mode with `framing:
 * message` (raw only: one pipe message = one message, both ways), byte-mode
 * otherwise, which jsonl and MQTT (byte streams) always get; remote
 * clients are refused; its security descriptor is `security` (SDDL) or a
 * safe default (pipe_sec.c), and a pipe of that name made by anybody else
 * makes start fail. `connect: NAME` (or \\.\pipe\NAME, \\HOST\pipe\NAME)
 * makes a client of another program's pipe, reconnecting with exponential
 * backoff (reconnect_backoff .. reconnect_max_backoff).
 *
 * A raw producer's WriteFile completes once its data is in the pipe's
 * buffer; what the buffer holds and what the broker read ahead is lost if
 * the broker dies. So raw pipes get small buffers (pipe_buffer, default
 * 4 KiB; jsonl and MQTT, which acknowledge after the commit, 64 KiB) and
 * the broker reads no further while the raw protocol holds read_ahead
 * messages it has not committed; `reply` answers each message once
 * committed (adapters/protocol/raw.c).
 *
 * An MQTT pipe is a source only (pipe_caps_of): its clients subscribe for
 * themselves, so it cannot be a route's destination.
 *
 * As a sink (raw), deliveries go to one connection at a time, round robin;
 * a delivery is acknowledged once WriteFile completed (the data is in the
 * pipe: a reader that exits without reading it loses it), and nacked
 * (retried by the route) if the connection failed first. With nobody
 * connected, messages wait in their queue.
 *
 * libuv's pipes cannot be used: they are byte-mode only and take no
 * security descriptor. The pipe handles are still served on the loop's
 * completion port (pipe_io.c; pipe_int.h says how and why); this file is
 * the adapter and the sb_conn transport.
 */
#include "adapters/stream_keys.h"
#include "adapters/pipe/win/pipe_int.h"
#include "adapters/protocol/raw.h"
#include "service/alloc.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

/* The pipe's buffer (pipe_buffer not set): raw, and jsonl / MQTT. */
#define RAW_PIPE_BUFFER 4096
#define STREAM_PIPE_BUFFER 65536

/* ---- the transport under sb_conn ---- */

static void t_read(sb_conn *c, int on)
{
    pipe_inst *inst = c->tdata;
    if (!on) {
        inst->want_read = 0;
        return;
    }
    if (inst->want_read)
        return;
    inst->want_read = 1;
    sb_pipe__read(inst);
}

static void on_flush_check(uv_check_t *h);
static void on_flush_prepare(uv_prepare_t *h);
static void undirty(pipe_adapter *pa);
static void on_flush_idle(uv_idle_t *h);

/* The pipe adapters whose connections hold output. Whichever adapter's
 * flush handle runs first writes for them all: what one adapter's writes
 * cause on another's connections (a write that completes a raw delivery
 * lets its queue hand the next message to a consumer on another pipe
 * adapter) is then written by the next pass (flush_all), whatever order
 * the handles run in. Loop thread only: a process runs its pipe adapters
 * on one loop, the broker's. */
static pipe_adapter *dirty;
/* Those a pass (flush_pass) has yet to write for. */
static pipe_adapter *passing;
static int in_pass; /* flush_pass runs */

/* The connection's protocol sent something: it waits in the connection's
 * buffer for the end of the loop turn (flush_all), with what else the
 * turn sends. */
static int t_hold(sb_conn *c)
{
    pipe_inst *inst = c->tdata;
    pipe_adapter *pa = inst->pa;
    if (inst->flush_queued)
        return 1;
    inst->flush_queued = 1;
    if (inst->woke && !in_pass) {
        /* The peer sent input this turn, after its pipe had been empty:
         * it waits for this (a puback, held after the deliveries its
         * message made to others). Written first: under Wine each write
         * before it delays it by two wineserver round trips. Not while a
         * pass writes (what it holds waits for the next pass, flush_held). */
        inst->flush_next = pa->flushq;
        pa->flushq = inst;
        if (pa->flushq_tail == NULL)
            pa->flushq_tail = inst;
        if (pa->dirty && dirty != pa)
            undirty(pa);
    } else {
        inst->flush_next = NULL;
        if (pa->flushq_tail != NULL)
            pa->flushq_tail->flush_next = inst;
        else
            pa->flushq = inst;
        pa->flushq_tail = inst;
    }
    if (!pa->dirty) {
        pa->dirty = 1;
        pa->dirty_next = dirty;
        dirty = pa;
    }
    uv_check_start(pa->flush_check, on_flush_check);
    uv_prepare_start(pa->flush_prepare, on_flush_prepare);
    return 1;
}

/* Writes what every connection on pa->flushq holds; a write that completes
 * at once is reported here. Its completion may hold more output (a raw
 * sink's next delivery): that waits for the next pass, so a consumer that
 * reads as fast as it is written cannot keep the loop here for a whole
 * window of writes. */
static void flush_held(pipe_adapter *pa)
{
    pipe_inst *inst, *last = pa->flushq_tail;
    while (last != NULL && (inst = pa->flushq) != NULL) {
        if (inst == last)
            last = NULL; /* the pass ends with it */
        pa->flushq = inst->flush_next;
        if (pa->flushq == NULL)
            pa->flushq_tail = NULL;
        inst->flush_next = NULL;
        inst->flush_queued = 0;
        if (inst->conn == NULL)
            continue;
        sb_conn_flush(inst->conn);
        if (inst->wdone_now) {
            inst->wdone_now = 0;
            sb_pipe__on_write_done(inst);
        }
    }
}

/* Writes what was held when it began; what writing holds makes the
 * adapters dirty again, for the next pass. */
static void flush_pass(void)
{
    pipe_adapter *pa;
    passing = dirty;
    dirty = NULL;
    in_pass = 1;
    while ((pa = passing) != NULL) {
        passing = pa->dirty_next;
        pa->dirty = 0;
        pa->dirty_next = NULL;
        flush_held(pa);
    }
    in_pass = 0;
}

/* One pass. What it leaves is written by the next one, after the loop
 * polled for other work: the adapters' handles stay started for it, and
 * their idle handles keep that poll from waiting for an unrelated event. */
static void flush_all(int reads)
{
    flush_pass();
    if (reads)
        sb_pipe__read_deferred(); /* what they bring is written by the next pass */
    for (pipe_adapter *pa = dirty; pa != NULL; pa = pa->dirty_next)
        uv_idle_start(pa->flush_idle, on_flush_idle);
}

/* Takes pa off the dirty list (it stops with nothing left to write). */
static void undirty(pipe_adapter *pa)
{
    for (pipe_adapter **p = &dirty; *p != NULL; p = &(*p)->dirty_next)
        if (*p == pa) {
            *p = pa->dirty_next;
            break;
        }
    for (pipe_adapter **p = &passing; *p != NULL; p = &(*p)->dirty_next)
        if (*p == pa) {
            *p = pa->dirty_next;
            break;
        }
    pa->dirty = 0;
    pa->dirty_next = NULL;
}

static void flush_turn(pipe_adapter *pa, int reads)
{
    flush_all(reads);
    if (!pa->dirty && !sb_pipe__reads_deferred()) {
        uv_check_stop(pa->flush_check);
        uv_prepare_stop(pa->flush_prepare);
        uv_idle_stop(pa->flush_idle);
    }
}

static void on_flush_check(uv_check_t *h)
{
    flush_turn(h->data, 0);
}

/* The deferred reads (pipe_io.c read_on) are issued here: the core's
 * flush (service/publish.c, an idle handle) made the replies by then, and
 * nothing else runs before the loop polls. */
static void on_flush_prepare(uv_prepare_t *h)
{
    flush_turn(h->data, 1);
}

static void on_flush_idle(uv_idle_t *h)
{
    flush_turn(h->data, 0);
}

void sb_pipe__flush_soon(pipe_adapter *pa)
{
    if (pa->flush_check == NULL)
        return; /* stopped: nothing of it is read any more */
    uv_check_start(pa->flush_check, on_flush_check);
    uv_prepare_start(pa->flush_prepare, on_flush_prepare);
}

/* Called only from flush_held (through sb_conn_flush): pipe connections
 * hold their output. */
static int t_write(sb_conn *c, char *buf, size_t off, size_t len)
{
    pipe_inst *inst = c->tdata;
    inst->answered = 1;
    inst->wbuf = buf; /* now owned by the write (sb_pipe__write_on) */
    inst->wlen = off + len;
    inst->woff = off; /* (0: pipes have no try_write) */
    if (sb_pipe__write_on(inst) == 0)
        return 0; /* pending: reported done when it completes */
    /* Done at once (or failed): flush_held reports it, once out of the
     * connection's write call. */
    inst->wdone_now = 1;
    return 0;
}

static void t_close(sb_conn *c)
{
    pipe_inst *inst = c->tdata;
    sb_pipe__close(inst);
}

static const sb_conn_transport pipe_transport = {t_read, t_write, t_close};

void sb_pipe__on_write_done(pipe_inst *inst)
{
    sb_conn_write_done(inst->conn, inst->wstatus, inst->wstatus != 0 ? inst->wwhy : NULL);
}

/* Takes inst off pa->flushq (it closed before its output was written). */
static void unqueue_flush(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    pipe_inst *prev = NULL;
    for (pipe_inst *i = pa->flushq; i != NULL; prev = i, i = i->flush_next) {
        if (i != inst)
            continue;
        if (prev != NULL)
            prev->flush_next = i->flush_next;
        else
            pa->flushq = i->flush_next;
        if (pa->flushq_tail == i)
            pa->flushq_tail = prev;
        break;
    }
    inst->flush_next = NULL;
    inst->flush_queued = 0;
}

void sb_pipe__on_freed(pipe_inst *inst)
{
    sb_conn *c = inst->conn;
    if (inst->flush_queued)
        unqueue_flush(inst); /* its output was dropped by the close */
    if (inst->wdone_now) { /* written at once by the flush in sb_conn_close */
        inst->wdone_now = 0;
        sb_pipe__on_write_done(inst);
    }
    inst->conn = NULL;
    c->tdata = NULL;
    sb_conn_transport_closed(c);
}

/* ---- connections ---- */

void sb_pipe__on_connected(pipe_inst *inst)
{
    pipe_adapter *pa = inst->pa;
    sb_conn *c;
    int rc;

    if (!pa->is_server)
        pa->st.connecting = 0;
    if (pa->base.stopping) {
        sb_pipe__close(inst);
        return;
    }
    c = sb_stream_conn_new(&pa->st);
    if (c == NULL) {
        sb_log(SB_LOG_ERROR, pa->base.name, "peer %s: out of memory", inst->peer);
        sb_pipe__close(inst);
        return;
    }
    inst->conn = c;
    c->hold_output = t_hold;
    rc = sb_conn_start(c, &pa->base, pa->proto, &pipe_transport, inst, inst->peer);
    if (rc != 0) {
        /* The session did not open: nothing refers to c yet. */
        sb_log(SB_LOG_ERROR, pa->base.name, "peer %s: cannot start the %s session: %s", inst->peer,
               pa->proto->name, sb_strerror(rc));
        inst->conn = NULL;
        sb_free(c);
        sb_pipe__close(inst);
        if (!pa->is_server)
            sb_stream_retry(&pa->st);
        return;
    }
    sb_stream_add(&pa->st, c);
    if (!pa->is_server)
        sb_stream_link_up(&pa->st);
    sb_stream_log_connected(&pa->st, c, "");
    sb_adapter_sink_ready(&pa->base);
}

/* ---- client: reconnecting ---- */

static void start_connect(sb_stream *st)
{
    pipe_adapter *pa = (pipe_adapter *)st->adapter;
    st->connecting = 1;
    sb_pipe__connect(pa);
}

void sb_pipe__on_connect_failed(pipe_adapter *pa)
{
    sb_stream_connect_failed(&pa->st, pa->connect_why);
}

/* ---- lifecycle ---- */

static int pipe_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    pipe_adapter *pa = sb_calloc(1, sizeof(*pa));
    int rc;
    if (pa == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    pa->is_server = SB_STREAM_CFG(cfg)->path != NULL;
    pa->proto = sb_protocol_find(SB_STREAM_CFG(cfg)->protocol);
    /* Message mode is for raw alone: jsonl and MQTT are byte streams. */
    pa->message = pa->proto == &sb_protocol_raw &&
                  sb_raw_framing_parse(SB_STREAM_CFG(cfg)->framing, 0) == SB_FRAMING_MESSAGE;
    pa->max_message = SB_STREAM_CFG(cfg)->max_message > 0 ? (size_t)SB_STREAM_CFG(cfg)->max_message : 1048576;
    pa->max_connections = SB_STREAM_CFG(cfg)->max_connections > 0 ? SB_STREAM_CFG(cfg)->max_connections : 64;
    /* A raw producer's writes complete once in the pipe's buffer and what
     * the broker read ahead: both are lost if the broker dies, so raw
     * gets small ones (README: what a raw producer can rely on). jsonl and
     * MQTT acknowledge after the commit and keep the larger ones. */
    if (pa->proto == &sb_protocol_raw)
        pa->buffer = SB_STREAM_CFG(cfg)->pipe_buffer > 0 ? (DWORD)SB_STREAM_CFG(cfg)->pipe_buffer : RAW_PIPE_BUFFER;
    else
        pa->buffer = SB_STREAM_CFG(cfg)->pipe_buffer > 0 ? (DWORD)SB_STREAM_CFG(cfg)->pipe_buffer : STREAM_PIPE_BUFFER;
    rc = sb_pipe__full_name(pa->is_server ? SB_STREAM_CFG(cfg)->path : SB_STREAM_CFG(cfg)->connect, pa->is_server, &pa->display,
                            &pa->wname, err);
    if (rc != 0) {
        sb_free(pa);
        return rc;
    }
    *out = &pa->base;
    return 0;
}

static int win_error(sb_error *err, const pipe_adapter *pa, const char *call)
{
    DWORD code = GetLastError();
    char text[256];
    sb_win_strerror(code, text, sizeof(text));
    return sb_error_set(err, sb_error_from_win32(code), (int)code, "adapter %s: %s for %s: %s",
                        pa->base.name, call, pa->display, text);
}

static int io_running(sb_stream *st);
static void release_io(sb_stream *st);

static int pipe_start(sb_adapter *a, sb_error *err)
{
    pipe_adapter *pa = (pipe_adapter *)a;
    int rc;

    pa->flush_check = sb_malloc(sizeof(*pa->flush_check));
    pa->flush_prepare = sb_malloc(sizeof(*pa->flush_prepare));
    pa->flush_idle = sb_malloc(sizeof(*pa->flush_idle));
    if (pa->flush_check == NULL || pa->flush_prepare == NULL || pa->flush_idle == NULL) {
        sb_free(pa->flush_check);
        sb_free(pa->flush_prepare);
        sb_free(pa->flush_idle);
        pa->flush_check = NULL;
        pa->flush_prepare = NULL;
        pa->flush_idle = NULL;
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->name);
    }
    uv_check_init(a->loop, pa->flush_check);
    pa->flush_check->data = pa;
    uv_prepare_init(a->loop, pa->flush_prepare);
    pa->flush_prepare->data = pa;
    uv_idle_init(a->loop, pa->flush_idle);
    pa->flush_idle->data = pa;

    sb_stream_init(&pa->st, a, pa->is_server, pa->display);
    pa->st.connect = start_connect;
    pa->st.busy = io_running;
    pa->st.finish = release_io;
    if (pa->is_server) {
        HANDLE h;
        pipe_inst *first;
        sb_stream_open_guard(&pa->st);
        if ((rc = sb_pipe__security(&pa->sd, a->name, SB_STREAM_CFG(a->cfg)->security, err)) != 0)
            return rc;
        pa->sa.nLength = sizeof(pa->sa);
        pa->sa.lpSecurityDescriptor = pa->sd;
        pa->sa.bInheritHandle = FALSE;
        pa->retry_timer = sb_malloc(sizeof(*pa->retry_timer));
        if (pa->retry_timer == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->name);
        uv_timer_init(a->loop, pa->retry_timer);
        pa->retry_timer->data = pa;
        if ((rc = sb_pipe__guard(&pa->mutex, pa, err)) != 0)
            return rc;
        h = sb_pipe__create_instance(pa, 1);
        if (h == INVALID_HANDLE_VALUE) {
            if (GetLastError() == ERROR_ACCESS_DENIED)
                return sb_error_set(err, SB_EADDRINUSE, ERROR_ACCESS_DENIED,
                                    "adapter %s: %s already exists: another program created it; "
                                    "refusing to share the name",
                                    a->name, pa->display);
            return win_error(err, pa, "CreateNamedPipeW");
        }
        if (sb_pipe__attach(pa, h) != 0) {
            rc = win_error(err, pa, "CreateIoCompletionPort or SetFileCompletionNotificationModes");
            CloseHandle(h);
            return rc;
        }
        first = sb_pipe__inst_new(pa, h);
        if (first == NULL) {
            CloseHandle(h);
            return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->name);
        }
        pa->open_handles = 1;
        sb_pipe__listen(first);
        sb_log(SB_LOG_INFO, a->name, "listening on %s (%s, %s mode)", pa->display, pa->proto->name,
               pa->message ? "message" : "byte");
    } else {
        if ((rc = sb_stream_open_timer(&pa->st, err)) != 0)
            return rc;
        sb_log(SB_LOG_INFO, a->name, "connecting to %s (%s)", pa->display, pa->proto->name);
        sb_stream_connect(&pa->st);
    }
    return 0;
}

/* Instances or off-loop jobs (a connect attempt, an account look-up) are left. */
static int io_running(sb_stream *st)
{
    pipe_adapter *pa = (pipe_adapter *)st->adapter;
    return pa->insts != NULL || pa->work_pending > 0;
}

static void free_handle(uv_handle_t *h)
{
    sb_free(h);
}

/* Everything closed: closes the flush handles. */
static void release_io(sb_stream *st)
{
    pipe_adapter *pa = (pipe_adapter *)st->adapter;
    undirty(pa);
    if (pa->flush_check != NULL) { /* nothing waits on them: every connection closed */
        uv_close((uv_handle_t *)pa->flush_check, free_handle);
        uv_close((uv_handle_t *)pa->flush_prepare, free_handle);
        uv_close((uv_handle_t *)pa->flush_idle, free_handle);
        pa->flush_check = NULL;
        pa->flush_prepare = NULL;
        pa->flush_idle = NULL;
    }
    if (pa->retry_timer != NULL) { /* stop never ran sb_pipe__stop_io */
        uv_close((uv_handle_t *)pa->retry_timer, free_handle);
        pa->retry_timer = NULL;
    }
}

void sb_pipe__on_io_idle(pipe_adapter *pa)
{
    sb_stream_maybe_stopped(&pa->st);
}

static void pipe_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    pipe_adapter *pa = (pipe_adapter *)a;
    if (pa->st.adapter == NULL) { /* never started */
        sb_stream_init(&pa->st, a, pa->is_server, pa->display);
        pa->st.busy = io_running;
        pa->st.finish = release_io;
    }
    sb_stream_stop(&pa->st, cb);
    /* Cancels and closes every pipe handle now: the name is free when stop
     * returns (a reload restarts the adapter on it at once). */
    sb_pipe__stop_io(pa);
    if (pa->mutex != NULL) {
        CloseHandle(pa->mutex);
        pa->mutex = NULL;
    }
    sb_stream_maybe_stopped(&pa->st);
}

static void pipe_destroy(sb_adapter *a)
{
    pipe_adapter *pa = (pipe_adapter *)a;
    if (pa->sd != NULL)
        LocalFree(pa->sd);
    sb_free(pa->display);
    sb_free(pa->wname);
    sb_free(pa);
}

static int pipe_deliver(sb_adapter *a, sb_delivery *d)
{
    return sb_stream_deliver(&((pipe_adapter *)a)->st, d);
}

/* An MQTT pipe is only a source: its clients subscribe for themselves. */
static unsigned pipe_caps_of(const sb_adapter_config *cfg)
{
    if (SB_STREAM_CFG(cfg)->protocol != NULL && strcmp(SB_STREAM_CFG(cfg)->protocol, "mqtt") == 0)
        return SB_CAP_SOURCE;
    return SB_CAP_SOURCE | SB_CAP_SINK;
}

const sb_adapter_type sb_adapter_pipe = {
    .version = SB_ADAPTER_VERSION,
    .name = "pipe",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK,
    .caps_of = pipe_caps_of,
    .create = pipe_create,
    .start = pipe_start,
    .deliver = pipe_deliver,
    .stop = pipe_stop,
    .destroy = pipe_destroy,
};
