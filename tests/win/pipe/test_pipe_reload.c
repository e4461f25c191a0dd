/*
 * A pipe server across a configuration reload, in process: the broker runs
 * on this thread's loop and timers act on it. When the adapter's settings
 * change, sb_broker_reload stops the old instance and starts the new one at
 * once, on the same pipe name: that works only if stop() has closed every
 * instance and the guard mutex by the time it returns. A client of the old
 * instance sees its pipe close; a client opening right after the reload is
 * served by the new instance (new topic). Then an orderly stop.
 *
 * (The Windows foreground broker cannot be asked to reload by another
 * process, so this is not a test with a separate broker process.)
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
#include "tests/integration/harness.h"
#include "service/platform.h"

#include <windows.h>

static const char config_tmpl[] = "broker:\n"
                                  "  data_dir: '%s'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  log: { level: info }\n"
                                  "adapters:\n"
                                  "  - name: in\n"
                                  "    type: pipe\n"
                                  "    path: '%s'\n"
                                  "    framing: message\n"
                                  "    topic: '%s'\n"
                                  "routes:\n"
                                  "  - { name: old, from: 'old/#', durability: memory }\n"
                                  "  - { name: new, from: 'new/#', durability: memory }\n";

typedef struct ctx {
    sb_broker *b;
    char dir[512];
    char pipe[128];
    uv_timer_t timer;
    int step;
    uint64_t deadline;
    HANDLE old_client;
    DWORD open_error, write_error[2], old_read_error;
    int reload_rc;
    int64_t published_old, published_new;
} ctx;

static sb_config *make_config(ctx *x, const char *topic)
{
    char text[2048];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof(text), config_tmpl, x->dir, x->pipe, topic);
    if (sb_config_parse(&cfg, "reload.yaml", text, strlen(text), &errs) != 0) {
        sb_config_errors_print(&errs, stderr);
        fail_msg("config does not parse");
    }
    return cfg;
}

/* Opens the broker's pipe (no retry: it must be there) in message mode;
 * returns the handle or NULL with *err. */
static HANDLE open_pipe(const char *name, DWORD *err)
{
    wchar_t path[160];
    DWORD mode = PIPE_READMODE_MESSAGE;
    HANDLE h;
    _snwprintf(path, sizeof(path) / sizeof(path[0]), L"\\\\.\\pipe\\%hs", name);
    path[sizeof(path) / sizeof(path[0]) - 1] = L'\0';
    h = CreateFileW(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        *err = GetLastError();
        return NULL;
    }
    if (!SetNamedPipeHandleState(h, &mode, NULL, NULL)) {
        *err = GetLastError();
        CloseHandle(h);
        return NULL;
    }
    *err = 0;
    return h;
}

static DWORD write_msg(HANDLE h, const char *data)
{
    DWORD n = 0;
    if (!WriteFile(h, data, (DWORD)strlen(data), &n, NULL))
        return GetLastError();
    return n == strlen(data) ? 0 : ERROR_WRITE_FAULT;
}

/* A route queue's published counter. */
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

static void finish(ctx *x)
{
    uv_timer_stop(&x->timer);
    uv_close((uv_handle_t *)&x->timer, NULL);
    sb_broker_stop(x->b);
}

static void on_timer(uv_timer_t *t)
{
    ctx *x = t->data;
    sb_error err;
    HANDLE h;
    char buf[16];
    DWORD n;

    if (uv_now(t->loop) > x->deadline) {
        finish(x);
        return;
    }
    switch (x->step) {
    case 0: /* the first instance listens: a client writes */
        x->old_client = open_pipe(x->pipe, &x->open_error);
        if (x->old_client == NULL) {
            finish(x);
            return;
        }
        x->write_error[0] = write_msg(x->old_client, "before");
        x->step = 1;
        break;
    case 1: /* published: reload, and at once open the pipe again */
        x->published_old = published(x->b, "old");
        if (x->published_old < 1)
            break;
        x->reload_rc = sb_broker_reload(x->b, make_config(x, "new/topic"), &err);
        if (x->reload_rc != 0)
            fprintf(stderr, "reload: %s\n", err.msg);
        /* The old instance closed its clients. */
        if (!ReadFile(x->old_client, buf, sizeof(buf), &n, NULL))
            x->old_read_error = GetLastError();
        CloseHandle(x->old_client);
        h = open_pipe(x->pipe, &x->open_error);
        if (h == NULL) {
            finish(x);
            return;
        }
        x->write_error[1] = write_msg(h, "after");
        CloseHandle(h);
        x->step = 2;
        break;
    case 2: /* wait for the message through the new instance, then stop */
        x->published_old = published(x->b, "old");
        x->published_new = published(x->b, "new");
        if (x->published_new >= 1)
            finish(x);
        break;
    }
}

static void test_reload(void **state)
{
    ctx x;
    sb_error err;
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "pipe-reload");
    snprintf(x.pipe, sizeof(x.pipe), "sbt-%lu-reload", (unsigned long)GetCurrentProcessId());

    sb_platform_init();
    if (sb_adapters_register_builtin(&err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(sb_broker_new(&x.b, make_config(&x, "old/topic"), &err), 0);
    if (sb_broker_start(x.b, &err) != 0)
        fail_msg("start: %s", err.msg);
    uv_timer_init(sb_broker_loop(x.b), &x.timer);
    x.timer.data = &x;
    x.deadline = uv_now(sb_broker_loop(x.b)) + 10000;
    uv_timer_start(&x.timer, on_timer, 10, 10);
    sb_broker_run(x.b);
    sb_broker_free(x.b);

    assert_int_equal(x.open_error, 0);
    assert_int_equal(x.write_error[0], 0);
    assert_int_equal(x.reload_rc, 0);
    assert_int_equal(x.old_read_error, ERROR_BROKEN_PIPE);
    /* The new instance served the pipe right away. */
    assert_int_equal(x.write_error[1], 0);
    assert_int_equal(x.published_old, 1);
    assert_int_equal(x.published_new, 1);
    sbt_rmtree(x.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests_name("pipe-reload", tests, NULL, NULL);
}
