/*
 * A pipe adapter whose start runs out of memory, at each of its
 * allocations in turn (service/alloc.h's one-shot injection), server and
 * client: start fails cleanly (or succeeds once every allocation did), and
 * the close that follows reports the adapter stopped once, after which
 * nothing of it is used (a start that failed before any instance or
 * connect used to be reported stopped, and freed, from inside stop_io,
 * with pipe_stop reading it after that), and the loop ends with every
 * handle closed. In process, with no broker: the adapter alone on a loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <uv.h>

#include "adapters/builtin.h"
#include "config/adapter_keys.h"
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/platform.h"

#include <windows.h>

static int stopped;

static void on_closed(sb_adapter *a)
{
    (void)a;
    stopped++;
}

static void start_under_oom(const char *const *keys)
{
    uv_loop_t loop;
    long n;

    assert_int_equal(uv_loop_init(&loop), 0);
    for (n = 0;; n++) {
        sb_adapter_config cfg;
        sb_adapter *a;
        sb_error err;
        long failed;
        int rc;

        if (sb_adapter_config_build(&cfg, "p", "pipe", keys, &err) != 0)
            fail_msg("%s", err.msg);
        if (sb_adapter_create(&a, NULL, &loop, &cfg, &err) != 0)
            fail_msg("%s", err.msg);
        sb_adapter_config_free(&cfg);
        sb_alloc_fail_once(n);
        rc = a->type->start(a, &err);
        failed = sb_alloc_failures();
        sb_alloc_fail_once(-1);
        if (rc != 0)
            assert_int_equal(rc, SB_ENOMEM);
        stopped = 0;
        sb_adapter_close(a, on_closed);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(stopped, 1);
        if (failed == 0) {
            assert_int_equal(rc, 0); /* every allocation of start was failed in turn */
            break;
        }
    }
    assert_true(n > 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_server_oom(void **state)
{
    char name[64];
    const char *keys[] = {"path", name, "protocol", "jsonl", NULL};
    (void)state;
    snprintf(name, sizeof name, "sbt-%lu-oom", (unsigned long)GetCurrentProcessId());
    start_under_oom(keys);
}

static void test_client_oom(void **state)
{
    char name[64];
    const char *keys[] = {"connect", name, "protocol", "jsonl", NULL};
    (void)state;
    /* Nobody serves it: the connect attempt fails, the close ends it. */
    snprintf(name, sizeof name, "sbt-%lu-oom-none", (unsigned long)GetCurrentProcessId());
    start_under_oom(keys);
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
        cmocka_unit_test(test_server_oom),
        cmocka_unit_test(test_client_oom),
    };
    return cmocka_run_group_tests_name("pipe-oom", tests, setup, NULL);
}
