/*
 * A mailslot server across a configuration reload, in process: the broker
 * runs on this thread's loop and timers act on it. When the adapter's
 * settings change, the old instance stops and the new one creates the same
 * mailslot at once; that only works if stop() has closed the mailslot by the
 * time it returns (sb_broker_reload starts the new instance right after).
 * A message written before the reload is published with the old topic, one
 * written right after it with the new topic. Then an orderly stop.
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
#include "service/log.h"
#include "service/platform.h"

#include <windows.h>

static const char config_tmpl[] = "broker:\n"
                                  "  data_dir: '%s'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  log: { level: info }\n"
                                  "adapters:\n"
                                  "  - name: in\n"
                                  "    type: mailslot\n"
                                  "    path: '%s'\n"
                                  "    topic: '%s'\n"
                                  "routes:\n"
                                  "  - { name: old, from: 'old/#', durability: memory }\n"
                                  "  - { name: new, from: 'new/#', durability: memory }\n";

typedef struct ctx {
    sb_broker *b;
    char dir[512];
    char slot[128];
    uv_timer_t timer;
    int step;
    uint64_t deadline;
    DWORD write_error[2];
    int reload_rc;
    int64_t published_old, published_new;
} ctx;

static sb_config *make_config(ctx *x, const char *topic)
{
    char text[2048];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof(text), config_tmpl, x->dir, x->slot, topic);
    if (sb_config_parse(&cfg, "reload.yaml", text, strlen(text), &errs) != 0) {
        sb_config_errors_print(&errs, stderr);
        fail_msg("config does not parse");
    }
    return cfg;
}

static DWORD slot_write(const char *name, const char *data)
{
    wchar_t path[160];
    HANDLE h;
    DWORD n = 0, rc = 0;
    _snwprintf(path, sizeof(path) / sizeof(path[0]), L"\\\\.\\mailslot\\%hs", name);
    path[sizeof(path) / sizeof(path[0]) - 1] = L'\0';
    h = CreateFileW(path, GENERIC_WRITE, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                    FILE_ATTRIBUTE_NORMAL, NULL);
    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!WriteFile(h, data, (DWORD)strlen(data), &n, NULL))
        rc = GetLastError();
    CloseHandle(h);
    return rc;
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

static void on_timer(uv_timer_t *t)
{
    ctx *x = t->data;
    sb_error err;
    switch (x->step) {
    case 0: /* the first instance is reading: write, then reload at once */
        x->write_error[0] = slot_write(x->slot, "before");
        x->reload_rc = sb_broker_reload(x->b, make_config(x, "new/topic"), &err);
        if (x->reload_rc != 0)
            fprintf(stderr, "reload: %s\n", err.msg);
        x->write_error[1] = slot_write(x->slot, "after");
        x->step = 1;
        break;
    case 1: /* wait for both messages, then stop */
        x->published_old = published(x->b, "old");
        x->published_new = published(x->b, "new");
        if (x->published_new >= 1 || uv_now(t->loop) > x->deadline) {
            uv_timer_stop(t);
            uv_close((uv_handle_t *)t, NULL);
            sb_broker_stop(x->b);
        }
        break;
    }
}

static void test_reload(void **state)
{
    ctx x;
    sb_error err;
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "mailslot-reload");
    snprintf(x.slot, sizeof(x.slot), "sbt-%lu-reload", (unsigned long)GetCurrentProcessId());

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

    assert_int_equal(x.write_error[0], 0);
    assert_int_equal(x.reload_rc, 0);
    /* The new instance created the mailslot again right away. */
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
    return cmocka_run_group_tests_name("mailslot-reload", tests, NULL, NULL);
}
