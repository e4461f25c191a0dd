/*
 * The exec adapter (anonymous pipes): runs a child process; each frame the
 * child writes to stdout is published (raw framing, or jsonl requests), and
 * deliveries are written to its stdin (acknowledged once written). Its stderr
 * lines go to the broker log. When the child exits, the exit status is
 * logged, its stdout is read to the end (a short-lived child's last lines
 * race its exit), and then, per `restart`, it is started again with
 * exponential backoff.
 */
#include "adapters/conn.h"
#include "adapters/protocol/raw.h"
#include "service/alloc.h"
#include "service/log.h"

#include <string.h>

typedef struct exec_adapter {
    sb_adapter base;
    uv_process_t *proc;
    sb_conn *conn;
    uv_pipe_t *err_pipe;
    char errbuf[1024];
    size_t errlen;
    /* Restart backoff while no child runs; the wait for the end of a dead
     * child's stdout otherwise. */
    uv_timer_t *timer;
    int64_t backoff_ms;
    int64_t started_at;
    int running; /* process alive */
    int handles; /* own handles not yet closed (timer, process, stderr) */
    int stopping;
    unsigned long runs;
    int last_failed;
    sb_adapter_stopped_cb stopped_cb;
} exec_adapter;

/* How long the stdout of a child that exited may stay open: past this,
 * another process (one the child started) holds it, and the broker stops
 * waiting for it rather than never restarting the child. */
#define EXEC_DRAIN_MS 5000

static void spawn_child(exec_adapter *x);

static int exec_validate(const sb_adapter_config *cfg, sb_error *err)
{
    int framing = sb_raw_framing_parse(cfg->framing, 0);
    if (cfg->command_count == 0)
        return sb_error_set(err, SB_ECONFIG, 0, "exec needs a command");
    if (sb_protocol_find(cfg->protocol) == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "unknown protocol %s", cfg->protocol);
    if (framing != SB_FRAMING_LINE && framing != SB_FRAMING_LENGTH)
        return sb_error_set(err, SB_ECONFIG, 0, "framing %s is not available for exec",
                            cfg->framing);
    return 0;
}

static int exec_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    exec_adapter *x = sb_calloc(1, sizeof(*x));
    (void)cfg;
    if (x == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &x->base;
    return 0;
}

static void maybe_stopped(exec_adapter *x)
{
    if (x->stopping && x->handles == 0 && x->conn == NULL && !x->running && x->stopped_cb != NULL) {
        sb_adapter_stopped_cb cb = x->stopped_cb;
        x->stopped_cb = NULL;
        cb(&x->base);
    }
}

static void on_restart_timer(uv_timer_t *t)
{
    spawn_child(t->data);
}

static void schedule_restart(exec_adapter *x, int failed)
{
    const sb_adapter_config *cfg = x->base.cfg;
    int64_t max = cfg->restart_max_backoff_ms > 0 ? cfg->restart_max_backoff_ms : 60000;
    if (x->stopping || x->running || x->conn != NULL)
        return;
    if (cfg->restart == SB_RESTART_NEVER || (cfg->restart == SB_RESTART_ON_FAILURE && !failed)) {
        sb_log(SB_LOG_INFO, x->base.name, "child not restarted (restart: %s)",
               cfg->restart == SB_RESTART_NEVER ? "never" : "on-failure");
        return;
    }
    /* A child that ran for a while starts again from the first backoff. */
    if (sb_now_ms() - x->started_at > 10 * max)
        x->backoff_ms = 0;
    x->backoff_ms = sb_backoff_next(
        x->backoff_ms, cfg->restart_backoff_ms > 0 ? cfg->restart_backoff_ms : 1000, max);
    sb_log(SB_LOG_INFO, x->base.name, "restarting the child in %lld ms", (long long)x->backoff_ms);
    uv_timer_start(x->timer, on_restart_timer, (uint64_t)x->backoff_ms, 0);
}

static void on_drain_timer(uv_timer_t *t)
{
    exec_adapter *x = t->data;
    if (x->conn == NULL || x->running)
        return;
    /* Reading paused by backpressure: the rest of the output waits for room,
     * not for another process. */
    if (x->conn->paused || x->conn->out_paused) {
        uv_timer_start(x->timer, on_drain_timer, EXEC_DRAIN_MS, 0);
        return;
    }
    sb_conn_close(x->conn, "the child exited but its stdout is still open after 5 s "
                           "(held by a process it started?); not reading it any further");
}

/* The child closed its stdout: once it has also exited, the run is over. */
static void on_stdout_eof(sb_conn *c)
{
    exec_adapter *x = c->transport;
    if (!x->running)
        sb_conn_close(c, NULL);
}

static void on_conn_closed(sb_conn *c)
{
    exec_adapter *x = c->transport;
    x->conn = NULL;
    if (!x->running && x->timer != NULL) {
        uv_timer_stop(x->timer); /* the wait for the end of its stdout */
        schedule_restart(x, x->last_failed);
    }
    maybe_stopped(x);
}

static void on_proc_closed(uv_handle_t *h)
{
    exec_adapter *x = h->data;
    sb_free(h);
    x->handles--;
    maybe_stopped(x);
}

static void on_exit(uv_process_t *p, int64_t status, int signal)
{
    exec_adapter *x = p->data;
    x->running = 0;
    x->last_failed = status != 0 || signal != 0;
    if (signal != 0)
        sb_log(x->stopping ? SB_LOG_INFO : SB_LOG_WARN, x->base.name,
               "child (pid %d) killed by signal %d", p->pid, signal);
    else
        sb_log(status == 0 || x->stopping ? SB_LOG_INFO : SB_LOG_WARN, x->base.name,
               "child (pid %d) exited with status %lld", p->pid, (long long)status);
    uv_close((uv_handle_t *)p, on_proc_closed);
    x->proc = NULL;
    /* What it wrote before exiting may not have been read yet: the
     * connection closes at the end of its stdout, then the child restarts. */
    if (x->conn != NULL && (x->conn->read_ended || x->stopping))
        sb_conn_close(x->conn, NULL);
    else if (x->conn != NULL && x->timer != NULL)
        uv_timer_start(x->timer, on_drain_timer, EXEC_DRAIN_MS, 0);
    else if (x->conn == NULL)
        schedule_restart(x, x->last_failed);
    maybe_stopped(x);
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
    x->handles--;
    maybe_stopped(x);
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

static void spawn_child(exec_adapter *x)
{
    const sb_adapter_config *cfg = x->base.cfg;
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    uv_pipe_t *in = sb_malloc(sizeof(*in)), *out = sb_malloc(sizeof(*out)),
              *err = sb_malloc(sizeof(*err));
    uv_process_t *p = sb_malloc(sizeof(*p));
    char **args = sb_calloc(cfg->command_count + 1, sizeof(*args));
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
    for (size_t i = 0; i < cfg->command_count; i++)
        args[i] = cfg->command[i];
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
        sb_log(SB_LOG_ERROR, x->base.name, "cannot start %s: %s", cfg->command[0], uv_strerror(rc));
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
    x->handles++;
    sb_log(SB_LOG_INFO, x->base.name, "started %s (pid %d)", cfg->command[0], p->pid);
    err->data = x;
    x->err_pipe = err;
    x->handles++;
    uv_read_start((uv_stream_t *)err, on_err_alloc, on_err_read);
    x->conn = sb_calloc(1, sizeof(*x->conn));
    if (x->conn == NULL) {
        uv_close((uv_handle_t *)in, (uv_close_cb)sb_free);
        uv_close((uv_handle_t *)out, (uv_close_cb)sb_free);
        uv_process_kill(p, 15);
        return;
    }
    x->conn->transport = x;
    x->conn->on_closed = on_conn_closed;
    x->conn->on_input_eof = on_stdout_eof;
    snprintf(peer, sizeof(peer), "pid %d", p->pid);
    if (sb_conn_start_uv(x->conn, &x->base, sb_protocol_find(cfg->protocol), (uv_stream_t *)out,
                         (uv_stream_t *)in, peer) != 0) {
        sb_conn_close(x->conn, "cannot start the protocol session");
        uv_process_kill(p, 15);
        return;
    }
    sb_adapter_sink_ready(&x->base);
}

static int exec_start(sb_adapter *a, sb_error *err)
{
    exec_adapter *x = (exec_adapter *)a;
    x->timer = sb_malloc(sizeof(*x->timer));
    if (x->timer == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    uv_timer_init(a->loop, x->timer);
    x->timer->data = x;
    x->handles++;
    spawn_child(x);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    exec_adapter *x = h->data;
    sb_free(h);
    x->handles--;
    maybe_stopped(x);
}

static void exec_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    exec_adapter *x = (exec_adapter *)a;
    x->stopping = 1;
    x->stopped_cb = cb;
    if (x->timer != NULL) {
        uv_close((uv_handle_t *)x->timer, on_timer_closed);
        x->timer = NULL;
    }
    if (x->conn != NULL)
        sb_conn_close(x->conn, NULL); /* closing stdin asks a filter to finish */
    if (x->proc != NULL && x->running)
        uv_process_kill(x->proc, 15);
    maybe_stopped(x);
}

static void exec_destroy(sb_adapter *a)
{
    sb_free(a);
}

static int exec_deliver(sb_adapter *a, sb_delivery *d)
{
    exec_adapter *x = (exec_adapter *)a;
    int rc;
    /* Not to a child that exited or stopped reading (the next run gets it). */
    if (x->conn == NULL || x->conn->closing || x->conn->out_paused || x->conn->output_failed ||
        !x->running || x->stopping)
        return SB_EBUSY;
    rc = sb_raw_deliver(x->conn, d);
    if (rc == SB_EINVAL) {
        sb_delivery_done(d, SB_EINVAL,
                         "payload contains a newline; it cannot be sent with line framing");
        return 0;
    }
    return rc == 0 ? 0 : SB_EBUSY;
}

const sb_adapter_type sb_adapter_exec = {
    .version = SB_ADAPTER_VERSION,
    .name = "exec",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK,
    .validate = exec_validate,
    .create = exec_create,
    .start = exec_start,
    .deliver = exec_deliver,
    .stop = exec_stop,
    .destroy = exec_destroy,
};
