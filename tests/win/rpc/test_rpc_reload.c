/*
 * The rpc adapter across a configuration reload, in process: the broker runs
 * on this thread's loop, an RPC client (the sbrpc library) on another
 * thread, in step with a timer on the loop. When the adapter's settings
 * change, the reload stops the old instance and starts the new one at once
 * on the same endpoint (the RPC runtime's endpoint stays open): the
 * client's session, opened on the old instance, is answered SB_ESHUTDOWN and
 * sbrpc opens a new one by itself, so publishing goes on through the same
 * binding; a subscription handle of the old instance is closed (the client
 * subscribes again and gets what it had not acknowledged). Then an orderly
 * stop.
 *
 * A reload that changes the endpoint or the security descriptor is refused
 * as a whole (the runtime cannot close an endpoint it opened, nor change
 * its descriptor: the old endpoint would stay open, served by the new
 * adapter, under the old descriptor), and the running adapter serves on.
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

#include <uv.h>

#include "adapters/builtin.h"
#include "config/config.h"
#include "service/broker.h"
#include "service/platform.h"
#include "tests/integration/harness.h"
#include "tools/rpc/sbrpc.h"

#include <windows.h>

static const char config_tmpl[] = "broker:\n"
                                  "  data_dir: '%s'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  log: { level: info }\n"
                                  "adapters:\n"
                                  "  - name: rpc\n"
                                  "    type: rpc\n"
                                  "    endpoint: '%s'\n"
                                  "    max_calls: %d\n"
                                  "%s"
                                  "routes:\n"
                                  "  - { name: q, from: 'a/#', durability: memory }\n";

typedef struct ctx {
    sb_broker *b;
    char dir[512];
    char endpoint[128];
    uv_timer_t timer;
    uint64_t deadline;
    int reload_rc;
    int refuse; /* test_reload_refused */
    int rc_security, rc_endpoint;
    char why_security[512], why_endpoint[512];
    char moved[160]; /* the endpoint the refused reload asked for */
    int pub_moved;
    /* between the threads */
    volatile LONG phase; /* client: 1 ready for the reload; loop: 2 reloaded; client: 3 done */
    /* the client's results */
    int pub_before, pub_after, pull_old, resub, attempt;
    uint64_t id_before, id_redelivered;
    char why[256];
} ctx;

static sb_config *make_config_at(ctx *x, const char *endpoint, int max_calls, const char *more)
{
    char text[2048];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof(text), config_tmpl, x->dir, endpoint, max_calls, more);
    if (sb_config_parse(&cfg, "reload.yaml", text, strlen(text), &errs) != 0) {
        sb_config_errors_print(&errs, stderr);
        fail_msg("config does not parse");
    }
    return cfg;
}

static sb_config *make_config(ctx *x, int max_calls)
{
    return make_config_at(x, x->endpoint, max_calls, "");
}

/* Reloads cfg, which must be refused: its code, and the reason in why. */
static int reload_refused(ctx *x, sb_config *cfg, char *why, size_t n)
{
    sb_error err;
    int rc;
    sb_error_clear(&err);
    rc = sb_broker_reload(x->b, cfg, &err);
    snprintf(why, n, "%s", err.msg);
    return rc;
}

static void client(void *arg)
{
    ctx *x = arg;
    sb_rpc *c = NULL;
    sb_rpc_sub *s = NULL;
    sb_rpc_batch *batch = NULL;
    sb_error err;
    ULONGLONG deadline = GetTickCount64() + 20000;

    x->pub_before = x->pub_after = x->pull_old = x->resub = -100;
    if (sb_rpc_connect(&c, x->endpoint, NULL, &err) != 0)
        goto out;
    x->pub_before = sb_rpc_publish(c, "a/1", "before", 6, NULL, 0, NULL, &x->id_before, NULL, &err);
    /* Pulled, not acknowledged: the reload closes the handle, and the
     * message goes back to the queue. */
    if (x->pub_before != 0 || sb_rpc_subscribe(&s, c, "q", NULL, NULL, NULL, &err) != 0 ||
        sb_rpc_pull(s, &batch, 1, 5000, &err) != 0 || batch->count != 1)
        goto out;
    sb_rpc_batch_free(batch);
    batch = NULL;
    InterlockedExchange(&x->phase, 1);
    while (InterlockedCompareExchange(&x->phase, 2, 2) != 2 && GetTickCount64() < deadline)
        Sleep(5);
    x->pub_after = sb_rpc_publish(c, "a/2", "after", 5, NULL, 0, NULL, NULL, NULL, &err);
    if (x->pub_after != 0)
        snprintf(x->why, sizeof x->why, "%s", err.msg);
    x->pull_old = sb_rpc_pull(s, &batch, 1, 0, &err);
    sb_rpc_batch_free(batch);
    batch = NULL;
    sb_rpc_unsubscribe(s, 0, NULL);
    s = NULL;
    x->resub = sb_rpc_subscribe(&s, c, "q", NULL, NULL, NULL, &err);
    if (x->resub == 0 && sb_rpc_pull(s, &batch, 1, 5000, &err) == 0 && batch->count == 1) {
        x->id_redelivered = batch->items[0].msg_id;
        x->attempt = batch->items[0].attempt;
        sb_rpc_ack(s, &batch->items[0].msg_id, 1, NULL, &err);
    }
out:
    sb_rpc_batch_free(batch);
    if (s != NULL)
        sb_rpc_unsubscribe(s, 0, NULL);
    sb_rpc_free(c);
    InterlockedExchange(&x->phase, 3);
}

static void on_timer(uv_timer_t *t)
{
    ctx *x = t->data;
    sb_error err;
    LONG phase = InterlockedCompareExchange(&x->phase, 0, 0);

    if (uv_now(t->loop) > x->deadline || phase == 3) {
        uv_timer_stop(&x->timer);
        uv_close((uv_handle_t *)&x->timer, NULL);
        sb_broker_stop(x->b);
        return;
    }
    if (phase == 1 && x->refuse) {
        x->rc_security = reload_refused(
            x, make_config_at(x, x->endpoint, 8, "    security: 'D:P(A;;GA;;;SY)(A;;GA;;;BA)'\n"),
            x->why_security, sizeof x->why_security);
        x->rc_endpoint = reload_refused(x, make_config_at(x, x->moved, 8, ""), x->why_endpoint,
                                        sizeof x->why_endpoint);
        InterlockedExchange(&x->phase, 2);
    } else if (phase == 1) {
        x->reload_rc = sb_broker_reload(x->b, make_config(x, 9), &err);
        if (x->reload_rc != 0)
            fprintf(stderr, "reload: %s\n", err.msg);
        InterlockedExchange(&x->phase, 2);
    }
}

static void test_reload(void **state)
{
    ctx x;
    sb_error err;
    uv_thread_t th;
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "rpc-reload");
    snprintf(x.endpoint, sizeof(x.endpoint), "sbt-%lu-reload",
             (unsigned long)GetCurrentProcessId());

    assert_int_equal(sb_broker_new(&x.b, make_config(&x, 8), &err), 0);
    if (sb_broker_start(x.b, &err) != 0)
        fail_msg("start: %s", err.msg);
    uv_timer_init(sb_broker_loop(x.b), &x.timer);
    x.timer.data = &x;
    x.deadline = uv_now(sb_broker_loop(x.b)) + 30000;
    uv_timer_start(&x.timer, on_timer, 10, 10);
    assert_int_equal(uv_thread_create(&th, client, &x), 0);
    sb_broker_run(x.b);
    uv_thread_join(&th);
    sb_broker_free(x.b);

    assert_int_equal(x.pub_before, 0);
    assert_int_equal(x.reload_rc, 0);
    /* The same binding publishes through the new instance. */
    if (x.pub_after != 0)
        fail_msg("publish after the reload: %d %s", x.pub_after, x.why);
    /* The old handle is closed; its delivery came back, counted as an
     * attempt only if the client failed (it did not: an orderly stop). */
    assert_int_equal(x.pull_old, SB_ESHUTDOWN);
    assert_int_equal(x.resub, 0);
    assert_int_equal(x.id_redelivered, x.id_before);
    assert_int_equal(x.attempt, 1);
    sbt_rmtree(x.dir);
}

/* The client of test_reload_refused: publishes, waits for the refused
 * reloads, publishes again, and tries the endpoint they asked for. */
static void client_refused(void *arg)
{
    ctx *x = arg;
    sb_rpc *c = NULL, *moved = NULL;
    sb_error err;
    ULONGLONG deadline = GetTickCount64() + 20000;

    x->pub_before = x->pub_after = x->pub_moved = -100;
    if (sb_rpc_connect(&c, x->endpoint, NULL, &err) == 0)
        x->pub_before = sb_rpc_publish(c, "a/1", "before", 6, NULL, 0, NULL, NULL, NULL, &err);
    InterlockedExchange(&x->phase, 1);
    while (InterlockedCompareExchange(&x->phase, 2, 2) != 2 && GetTickCount64() < deadline)
        Sleep(5);
    if (c != NULL)
        x->pub_after = sb_rpc_publish(c, "a/2", "after", 5, NULL, 0, NULL, NULL, NULL, &err);
    if (x->pub_after != 0)
        snprintf(x->why, sizeof x->why, "%s", err.msg);
    if (sb_rpc_connect(&moved, x->moved, NULL, &err) == 0)
        x->pub_moved = sb_rpc_publish(moved, "a/3", "moved", 5, NULL, 0, NULL, NULL, NULL, &err);
    else
        x->pub_moved = err.code;
    sb_rpc_free(moved);
    sb_rpc_free(c);
    InterlockedExchange(&x->phase, 3);
}

static void test_reload_refused(void **state)
{
    ctx x;
    sb_error err;
    uv_thread_t th;
    (void)state;

    memset(&x, 0, sizeof(x));
    sbt_mkdtemp(x.dir, sizeof(x.dir), "rpc-reload-refused");
    /* test_reload's: this process opened it, and cannot open another */
    snprintf(x.endpoint, sizeof(x.endpoint), "sbt-%lu-reload",
             (unsigned long)GetCurrentProcessId());
    snprintf(x.moved, sizeof(x.moved), "%s-moved", x.endpoint);
    x.refuse = 1;

    assert_int_equal(sb_broker_new(&x.b, make_config(&x, 8), &err), 0);
    if (sb_broker_start(x.b, &err) != 0)
        fail_msg("start: %s", err.msg);
    uv_timer_init(sb_broker_loop(x.b), &x.timer);
    x.timer.data = &x;
    x.deadline = uv_now(sb_broker_loop(x.b)) + 30000;
    uv_timer_start(&x.timer, on_timer, 10, 10);
    assert_int_equal(uv_thread_create(&th, client_refused, &x), 0);
    sb_broker_run(x.b);
    uv_thread_join(&th);
    sb_broker_free(x.b);

    assert_int_equal(x.pub_before, 0);
    /* refused, naming the adapter and the key */
    assert_int_equal(x.rc_security, SB_ECONFIG);
    assert_non_null(strstr(x.why_security, "adapter rpc: security:"));
    assert_non_null(strstr(x.why_security, "change only with a restart"));
    assert_int_equal(x.rc_endpoint, SB_ECONFIG);
    assert_non_null(strstr(x.why_endpoint, "adapter rpc: endpoint:"));
    assert_non_null(strstr(x.why_endpoint, "change only with a restart"));
    /* the running adapter serves on, and nothing listens where the refused
     * config asked */
    if (x.pub_after != 0)
        fail_msg("publish after the refused reloads: %d %s", x.pub_after, x.why);
    assert_int_not_equal(x.pub_moved, 0);
    sbt_rmtree(x.dir);
}

int main(void)
{
    sb_error err;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_reload_refused),
    };
    sb_platform_init();
    if (sb_adapters_register_builtin(&err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return cmocka_run_group_tests_name("rpc-reload", tests, NULL, NULL);
}
