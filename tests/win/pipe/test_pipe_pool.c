/*
 * The named-pipe adapter while libuv's thread pool is taken: this test
 * fills all its threads with jobs that wait until it lets them go, as
 * reload preparation, paging, MQTT authentication, file system calls and
 * getaddrinfo would on a busy broker, or account look-ups that wait for a
 * domain controller. The broker runs in process (its loop on this thread,
 * timers act on it; the client ends are this test's own plain Win32 pipe
 * handles, as a legacy program's would be), because the pool is the
 * process's own and a foreground broker cannot be told to reload by
 * another process.
 *
 * - A client adapter (`connect:`) still connects: its connect attempt runs
 *   on a thread of its own, not on the pool.
 * - A COM endpoint (a pipe server with os_user) is changed by a reload
 *   while a client's account look-up waits in the pool: the old endpoint
 *   lets go of the pipe at once (the look-up holds the client's token, not
 *   the pipe handle), so the new one starts on the same name and serves;
 *   the old client sees its pipe closed. Then the pool is let go, the
 *   look-up of the closed instance finishes, and a message through the new
 *   endpoint is published.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>
#include <uv.h>

#include "adapters/builtin.h"
#include "config/config.h"
#include "service/broker.h"
#include "service/platform.h"
#include "tests/integration/harness.h"

#include <windows.h>

/* libuv's pool size, set (UV_THREADPOOL_SIZE) before it starts. */
#define POOL_THREADS 4
#define STR_(x) #x
#define STR(x) STR_(x)
/* Loop turns (10 ms timer ticks) after the client's first write before
 * the reload: by then the broker has long read it and queued the look-up,
 * which the taken pool holds. Too few would only make the test pass
 * without the look-up in flight, never fail it. */
#define TICKS_BEFORE_RELOAD 20

static const char connect_tmpl[] = "broker:\n"
                                   "  data_dir: '%s'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "  log: { level: info }\n"
                                   "adapters:\n"
                                   "  - name: ext\n"
                                   "    type: pipe\n"
                                   "    connect: '%s'\n"
                                   "    protocol: jsonl\n"
                                   "    reconnect_backoff: 20ms\n"
                                   "    reconnect_max_backoff: 100ms\n";

static const char com_tmpl[] = "broker:\n"
                               "  data_dir: '%s'\n"
                               "  admin: { endpoint: 'off' }\n"
                               "  log: { level: info }\n"
                               "adapters:\n"
                               "  - name: com\n"
                               "    type: com\n"
                               "    endpoint: '%s'\n"
                               "    max_connections: %d\n"
                               "routes:\n"
                               "  - { name: r, from: 't/#', durability: memory }\n";

/* ---- the pool taken ---- */

static HANDLE pool_release; /* manual reset: set lets the blocking jobs go */
static uv_work_t blockers[POOL_THREADS];
static int blockers_done;

static void block_work(uv_work_t *w)
{
    (void)w;
    WaitForSingleObject(pool_release, INFINITE);
}

static void block_done(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
    blockers_done++;
}

/* Takes every pool thread: jobs queued after these wait until let_pool_go. */
static void take_pool(uv_loop_t *loop)
{
    pool_release = CreateEventW(NULL, TRUE, FALSE, NULL);
    assert_non_null(pool_release);
    blockers_done = 0;
    for (int i = 0; i < POOL_THREADS; i++)
        assert_int_equal(uv_queue_work(loop, &blockers[i], block_work, block_done), 0);
}

static void let_pool_go(void)
{
    if (pool_release != NULL)
        SetEvent(pool_release);
}

static void pool_closed(void)
{
    assert_int_equal(blockers_done, POOL_THREADS);
    CloseHandle(pool_release);
    pool_release = NULL;
}

/* ---- common ---- */

typedef struct ctx {
    sb_broker *b;
    char dir[512];
    char pipe[128];
    uv_timer_t timer;
    int step, ticks;
    uint64_t deadline;
    /* connect */
    HANDLE server;
    OVERLAPPED ov;
    int connected;
    /* reload */
    HANDLE old_client, new_client;
    DWORD open_error[2], write_error[2], old_peek_error;
    int reload_rc;
    int64_t published;
} ctx;

static sb_config *parse(const char *text)
{
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    if (sb_config_parse(&cfg, "pool.yaml", text, strlen(text), &errs) != 0) {
        sb_config_errors_print(&errs, stderr);
        fail_msg("config does not parse");
    }
    return cfg;
}

static void finish(ctx *x)
{
    let_pool_go();
    uv_timer_stop(&x->timer);
    uv_close((uv_handle_t *)&x->timer, NULL);
    sb_broker_stop(x->b);
}

/* Runs the broker with config text, pool taken from before its start, and
 * on_timer every 10 ms until finish (or a 10 s deadline). */
static void run(ctx *x, const char *text, uv_timer_cb on_timer)
{
    sb_error err;
    assert_int_equal(sb_broker_new(&x->b, parse(text), &err), 0);
    take_pool(sb_broker_loop(x->b));
    if (sb_broker_start(x->b, &err) != 0)
        fail_msg("start: %s", err.msg);
    uv_timer_init(sb_broker_loop(x->b), &x->timer);
    x->timer.data = x;
    x->deadline = uv_now(sb_broker_loop(x->b)) + 10000;
    uv_timer_start(&x->timer, on_timer, 10, 10);
    sb_broker_run(x->b);
    sb_broker_free(x->b);
    pool_closed();
}

/* ---- a client adapter connects with the pool taken ---- */

static void on_connect_timer(uv_timer_t *t)
{
    ctx *x = t->data;
    DWORD n;
    if (uv_now(t->loop) > x->deadline) {
        finish(x);
        return;
    }
    if (GetOverlappedResult(x->server, &x->ov, &n, FALSE) ||
        GetLastError() == ERROR_PIPE_CONNECTED) {
        x->connected = 1;
        finish(x);
    }
}

static void test_connect_with_pool_taken(void **state)
{
    ctx x;
    char text[2048];
    wchar_t path[160];
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "pipe-pool-connect");
    snprintf(x.pipe, sizeof(x.pipe), "sbt-%lu-poolconn", (unsigned long)GetCurrentProcessId());
    _snwprintf(path, sizeof(path) / sizeof(path[0]), L"\\\\.\\pipe\\%hs", x.pipe);
    path[sizeof(path) / sizeof(path[0]) - 1] = L'\0';

    /* The other program's pipe, waiting for the broker. */
    x.server =
        CreateNamedPipeW(path, PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED,
                         PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT, 1, 4096, 4096, 0, NULL);
    assert_true(x.server != INVALID_HANDLE_VALUE);
    x.ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
    assert_non_null(x.ov.hEvent);
    if (!ConnectNamedPipe(x.server, &x.ov))
        assert_true(GetLastError() == ERROR_IO_PENDING || GetLastError() == ERROR_PIPE_CONNECTED);

    snprintf(text, sizeof(text), connect_tmpl, x.dir, x.pipe);
    run(&x, text, on_connect_timer);

    /* The broker connected while every pool thread was taken. */
    assert_int_equal(x.connected, 1);
    CancelIoEx(x.server, &x.ov);
    CloseHandle(x.ov.hEvent);
    CloseHandle(x.server);
    sbt_rmtree(x.dir);
}

/* ---- a reload while an account look-up waits ---- */

static HANDLE open_pipe(const char *name, DWORD *err)
{
    wchar_t path[160];
    HANDLE h;
    _snwprintf(path, sizeof(path) / sizeof(path[0]), L"\\\\.\\pipe\\%hs", name);
    path[sizeof(path) / sizeof(path[0]) - 1] = L'\0';
    h = CreateFileW(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
    *err = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
    return h == INVALID_HANDLE_VALUE ? NULL : h;
}

static DWORD write_line(HANDLE h, const char *line)
{
    DWORD n = 0;
    if (!WriteFile(h, line, (DWORD)strlen(line), &n, NULL))
        return GetLastError();
    return n == strlen(line) ? 0 : ERROR_WRITE_FAULT;
}

static int64_t published(sb_broker *b, const char *queue)
{
    json_t *stats = sb_broker_stats_json(b), *q;
    size_t i;
    int64_t n = -1;
    assert_non_null(stats);
    json_array_foreach(json_object_get(stats, "queues"), i, q)
    {
        if (strcmp(json_string_value(json_object_get(q, "name")), queue) == 0)
            n = json_integer_value(json_object_get(q, "published"));
    }
    json_decref(stats);
    return n;
}

static void on_reload_timer(uv_timer_t *t)
{
    ctx *x = t->data;
    char text[2048];
    sb_error err;
    DWORD avail = 0;

    if (uv_now(t->loop) > x->deadline) {
        finish(x);
        return;
    }
    switch (x->step) {
    case 0: /* a client of the old endpoint sends its first request */
        x->old_client = open_pipe(x->pipe, &x->open_error[0]);
        if (x->old_client == NULL) {
            finish(x);
            return;
        }
        x->write_error[0] = write_line(x->old_client, "{\"op\":\"ping\",\"id\":1}\n");
        x->step = 1;
        break;
    case 1: /* its look-up waits in the pool: the endpoint changes */
        if (++x->ticks < TICKS_BEFORE_RELOAD)
            break;
        snprintf(text, sizeof(text), com_tmpl, x->dir, x->pipe, 9);
        x->reload_rc = sb_broker_reload(x->b, parse(text), &err);
        if (x->reload_rc != 0)
            fprintf(stderr, "reload: %s\n", err.msg);
        /* The old endpoint closed its client (not waiting for the look-up). */
        if (!PeekNamedPipe(x->old_client, NULL, 0, NULL, &avail, NULL))
            x->old_peek_error = GetLastError();
        CloseHandle(x->old_client);
        /* The new endpoint serves the name at once. */
        x->new_client = open_pipe(x->pipe, &x->open_error[1]);
        if (x->new_client == NULL) {
            finish(x);
            return;
        }
        let_pool_go(); /* the look-ups (the old one, then the new client's) go on */
        x->write_error[1] = write_line(
            x->new_client, "{\"op\":\"pub\",\"id\":2,\"topic\":\"t/a\",\"payload\":\"after\"}\n");
        x->step = 2;
        break;
    case 2: /* published through the new endpoint */
        x->published = published(x->b, "r");
        if (x->published >= 1)
            finish(x);
        break;
    }
}

static void test_reload_during_lookup(void **state)
{
    ctx x;
    char text[2048];
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "pipe-pool-reload");
    snprintf(x.pipe, sizeof(x.pipe), "sbt-%lu-poolcom", (unsigned long)GetCurrentProcessId());
    snprintf(text, sizeof(text), com_tmpl, x.dir, x.pipe, 8);
    run(&x, text, on_reload_timer);

    assert_int_equal(x.open_error[0], 0);
    assert_int_equal(x.write_error[0], 0);
    assert_int_equal(x.step >= 1 && x.ticks >= TICKS_BEFORE_RELOAD, 1);
    assert_int_equal(x.reload_rc, 0);
    assert_int_equal(x.old_peek_error, ERROR_BROKEN_PIPE);
    assert_int_equal(x.open_error[1], 0);
    assert_int_equal(x.write_error[1], 0);
    assert_int_equal(x.published, 1);
    CloseHandle(x.new_client);
    sbt_rmtree(x.dir);
}

static int setup(void **state)
{
    sb_error err;
    (void)state;
    sb_platform_init();
    if (sb_adapters_register_builtin(&err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_with_pool_taken),
        cmocka_unit_test(test_reload_during_lookup),
    };
    /* The pool starts with its first job: its size is known. */
    _putenv("UV_THREADPOOL_SIZE=" STR(POOL_THREADS));
    return cmocka_run_group_tests_name("pipe-pool", tests, setup, NULL);
}
