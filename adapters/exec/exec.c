/*
 * The exec adapter (anonymous pipes): runs a child process; each frame the
 * child writes to stdout is published (raw framing, or jsonl requests), and
 * deliveries are written to its stdin (acknowledged once written). Its stderr
 * lines go to the broker log. When the child exits, the exit status is
 * logged, its stdout is read to the end (a short-lived child's last lines
 * race its exit), and then, per `restart`, it is started again with
 * exponential backoff.
 */
#include "adapters/exec/exec_keys.h"
#include "adapters/conn.h"
#include "adapters/protocol/raw.h"
#include "adapters/stream_core.h"
#include "service/alloc.h"
#include "service/log.h"

#include <string.h>

typedef struct exec_adapter {
    sb_adapter base;
    /* The child's stdin/stdout: the one connection of st's list. Its timer
     * is the restart backoff while no child runs, and the wait for the end
     * of a dead child's stdout otherwise; its pending count the process and
     * stderr handles. */
    sb_stream st;
    uv_process_t *proc;
    uv_pipe_t *err_pipe;
    char errbuf[1024];
    size_t errlen;
    int64_t started_at;
    int running; /* process alive */
    unsigned long runs;
    int last_failed;
} exec_adapter;

/* How long the stdout of a child that exited may stay open: past this,
 * another process (one the child started) holds it, and the broker stops
 * waiting for it rather than never restarting the child. */
#define EXEC_DRAIN_MS 5000

static void spawn_child(sb_stream *st);

static int exec_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    exec_adapter *x = sb_calloc(1, sizeof(*x));
    (void)cfg;
    if (x == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &x->base;
    return 0;
}

static int child_running(sb_stream *st)
{
    return ((exec_adapter *)st->adapter)->running;
}

static void schedule_restart(exec_adapter *x, int failed)
{
    const sb_adapter_config *cfg = x->base.cfg;
    int64_t delay;
    if (x->base.stopping || x->running || x->st.conns != NULL)
        return;
    if (SB_EXEC_CFG(cfg)->restart == SB_RESTART_NEVER || (SB_EXEC_CFG(cfg)->restart == SB_RESTART_ON_FAILURE && !failed)) {
        sb_log(SB_LOG_INFO, x->base.name, "child not restarted (restart: %s)",
               SB_EXEC_CFG(cfg)->restart == SB_RESTART_NEVER ? "never" : "on-failure");
        return;
    }
    /* A child that ran for a while starts again from the first backoff. */
    if (sb_now_ms() - x->started_at > 10 * x->st.backoff_max_ms)
        sb_stream_link_up(&x->st);
    if ((delay = sb_stream_retry(&x->st)) >= 0)
        sb_log(SB_LOG_INFO, x->base.name, "restarting the child in %lld ms", (long long)delay);
}

static void on_drain_timer(uv_timer_t *t)
{
    exec_adapter *x = (exec_adapter *)((sb_stream *)t->data)->adapter;
    sb_conn *c = x->st.conns;
    if (c == NULL || x->running)
        return;
    /* Reading paused by backpressure: the rest of the output waits for room,
     * not for another process. */
    if (c->paused || c->out_paused) {
        uv_timer_start(x->st.timer, on_drain_timer, EXEC_DRAIN_MS, 0);
        return;
    }
    sb_conn_close(c, "the child exited but its stdout is still open after 5 s "
                           "(held by a process it started?); not reading it any further");
}

/* The child closed its stdout: once it has also exited, the run is over. */
static void on_stdout_eof(sb_conn *c)
{
    exec_adapter *x = (exec_adapter *)c->adapter;
    if (!x->running)
        sb_conn_close(c, NULL);
}

static void on_conn_closed(sb_stream *st, sb_conn *c)
{
    exec_adapter *x = (exec_adapter *)st->adapter;
    (void)c;
    if (!x->running && st->timer != NULL) {
        uv_timer_stop(st->timer); /* the wait for the end of its stdout */
        schedule_restart(x, x->last_failed);
    }
}

static void on_proc_closed(uv_handle_t *h)
{
    exec_adapter *x = h->data;
    sb_free(h);
    sb_stream_release(&x->st);
}

static void on_exit(uv_process_t *p, int64_t status, int signal)
{
    exec_adapter *x = p->data;
    sb_conn *c = x->st.conns;
    x->running = 0;
    x->last_failed = status != 0 || signal != 0;
    if (signal != 0)
        sb_log(x->base.stopping ? SB_LOG_INFO : SB_LOG_WARN, x->base.name,
               "child (pid %d) killed by signal %d", p->pid, signal);
    else
        sb_log(status == 0 || x->base.stopping ? SB_LOG_INFO : SB_LOG_WARN, x->base.name,
               "child (pid %d) exited with status %lld", p->pid, (long long)status);
    uv_close((uv_handle_t *)p, on_proc_closed);
    x->proc = NULL;
    /* What it wrote before exiting may not have been read yet: the
     * connection closes at the end of its stdout, then the child restarts. */
    if (c != NULL && (c->read_ended || x->base.stopping))
        sb_conn_close(c, NULL);
    else if (c != NULL && x->st.timer != NULL)
        uv_timer_start(x->st.timer, on_drain_timer, EXEC_DRAIN_MS, 0);
    else if (c == NULL)
        schedule_restart(x, x->last_failed);
    sb_stream_maybe_stopped(&x->st);
}

static void on_err_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    exec_adapter *x = h->data;
    (void)suggested;
    buf->base = x->errbuf + x->errlen;
    buf->len = sizeof(x->errbuf) - 1 - x->errlen;
}

static void on_err_closed(uv_handle_t *h)
{
    exec_adapter *x = h->data;
    sb_free(h);
    sb_stream_release(&x->st);
}

static void on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    exec_adapter *x = s->data;
    char *start, *nl;
    (void)buf;
    if (n < 0) {
        if (x->errlen > 0)
            sb_log(SB_LOG_WARN, x->base.name, "child stderr: %.*s", (int)x->errlen, x->errbuf);
        x->errlen = 0;
        uv_close((uv_handle_t *)s, on_err_closed);
        if ((uv_pipe_t *)s == x->err_pipe)
            x->err_pipe = NULL;
        return;
    }
    x->errlen += (size_t)n;
    start = x->errbuf;
    while ((nl = memchr(start, '\n', x->errlen - (size_t)(start - x->errbuf))) != NULL) {
        sb_log(SB_LOG_WARN, x->base.name, "child stderr: %.*s", (int)(nl - start), start);
        start = nl + 1;
    }
    x->errlen -= (size_t)(start - x->errbuf);
    memmove(x->errbuf, start, x->errlen);
    if (x->errlen == sizeof(x->errbuf) - 1) {
        sb_log(SB_LOG_WARN, x->base.name, "child stderr: %.*s", (int)x->errlen, x->errbuf);
        x->errlen = 0;
    }
}

static void spawn_child(sb_stream *st)
{
    exec_adapter *x = (exec_adapter *)st->adapter;
    const sb_adapter_config *cfg = x->base.cfg;
    sb_conn *c;
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    uv_pipe_t *in = sb_malloc(sizeof(*in)), *out = sb_malloc(sizeof(*out)),
              *err = sb_malloc(sizeof(*err));
    uv_process_t *p = sb_malloc(sizeof(*p));
    char **args = sb_calloc(SB_EXEC_CFG(cfg)->command_count + 1, sizeof(*args));
    char peer[64];
    int rc;

    if (in == NULL || out == NULL || err == NULL || p == NULL || args == NULL) {
        sb_free(in);
        sb_free(out);
        sb_free(err);
        sb_free(p);
        sb_free(args);
        sb_log(SB_LOG_ERROR, x->base.name, "out of memory starting the child");
        schedule_restart(x, 1);
        return;
    }
    for (size_t i = 0; i < SB_EXEC_CFG(cfg)->command_count; i++)
        args[i] = SB_EXEC_CFG(cfg)->command[i];
    uv_pipe_init(x->base.loop, in, 0);
    uv_pipe_init(x->base.loop, out, 0);
    uv_pipe_init(x->base.loop, err, 0);
    memset(&opt, 0, sizeof(opt));
    opt.file = args[0];
    opt.args = args;
    opt.exit_cb = on_exit;
    opt.flags = UV_PROCESS_WINDOWS_HIDE;
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)err;
    opt.stdio = stdio;
    opt.stdio_count = 3;
    p->data = x;
    rc = uv_spawn(x->base.loop, p, &opt);
    sb_free(args);
    if (rc != 0) {
        sb_log(SB_LOG_ERROR, x->base.name, "cannot start %s: %s", SB_EXEC_CFG(cfg)->command[0], uv_strerror(rc));
        uv_close((uv_handle_t *)in, (uv_close_cb)sb_free);
        uv_close((uv_handle_t *)out, (uv_close_cb)sb_free);
        uv_close((uv_handle_t *)err, (uv_close_cb)sb_free);
        uv_close((uv_handle_t *)p, (uv_close_cb)sb_free);
        x->last_failed = 1;
        schedule_restart(x, 1);
        return;
    }
    x->running = 1;
    x->runs++;
    x->started_at = sb_now_ms();
    x->proc = p;
    x->st.pending++;
    sb_log(SB_LOG_INFO, x->base.name, "started %s (pid %d)", SB_EXEC_CFG(cfg)->command[0], p->pid);
    err->data = x;
    x->err_pipe = err;
    x->st.pending++;
    uv_read_start((uv_stream_t *)err, on_err_alloc, on_err_read);
    c = sb_stream_conn_new(st);
    if (c == NULL) {
        uv_close((uv_handle_t *)in, (uv_close_cb)sb_free);
        uv_close((uv_handle_t *)out, (uv_close_cb)sb_free);
        uv_process_kill(p, 15);
        return;
    }
    c->on_input_eof = on_stdout_eof;
    sb_stream_add(st, c);
    snprintf(peer, sizeof(peer), "pid %d", p->pid);
    if (sb_conn_start_uv(c, &x->base, sb_protocol_find(SB_STREAM_CFG(cfg)->protocol), (uv_stream_t *)out,
                         (uv_stream_t *)in, peer) != 0) {
        sb_conn_close(c, "cannot start the protocol session");
        uv_process_kill(p, 15);
        return;
    }
    sb_adapter_sink_ready(&x->base);
}

static int exec_start(sb_adapter *a, sb_error *err)
{
    exec_adapter *x = (exec_adapter *)a;
    const sb_adapter_config *cfg = a->cfg;
    int rc;
    sb_stream_init(&x->st, a, 0, SB_EXEC_CFG(cfg)->command[0]);
    x->st.backoff_first_ms = SB_EXEC_CFG(cfg)->restart_backoff_ms > 0 ? SB_EXEC_CFG(cfg)->restart_backoff_ms : 1000;
    x->st.backoff_max_ms = SB_EXEC_CFG(cfg)->restart_max_backoff_ms > 0 ? SB_EXEC_CFG(cfg)->restart_max_backoff_ms : 60000;
    x->st.connect = spawn_child;
    x->st.closed = on_conn_closed;
    x->st.busy = child_running;
    if ((rc = sb_stream_open_timer(&x->st, err)) != 0)
        return rc;
    spawn_child(&x->st);
    return 0;
}

static void exec_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    exec_adapter *x = (exec_adapter *)a;
    if (x->st.adapter == NULL) /* never started */
        sb_stream_init(&x->st, a, 0, NULL);
    /* (closing stdin asks a filter to finish) */
    sb_stream_stop(&x->st, cb);
    if (x->proc != NULL && x->running)
        uv_process_kill(x->proc, 15);
    sb_stream_maybe_stopped(&x->st);
}

static void exec_destroy(sb_adapter *a)
{
    sb_free(a);
}

static int exec_deliver(sb_adapter *a, sb_delivery *d)
{
    exec_adapter *x = (exec_adapter *)a;
    /* Not to a child that exited or stopped reading (the next run gets it). */
    if (!x->running)
        return SB_EBUSY;
    return sb_stream_deliver(&x->st, d);
}

const sb_adapter_type sb_adapter_exec = {
    .version = SB_ADAPTER_VERSION,
    .name = "exec",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK,
    .create = exec_create,
    .start = exec_start,
    .deliver = exec_deliver,
    .stop = exec_stop,
    .destroy = exec_destroy,
};
