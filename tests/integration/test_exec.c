/*
 * The exec adapter with a real child (sbt_helper, a small portable program):
 * a child's stdout lines are published, deliveries are written to a child's
 * stdin, and a child that exits with a failure is restarted with a doubling
 * backoff up to its cap (the broker log shows each restart), while one that
 * exits cleanly under `on-failure` is not.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char head[] = "broker:\n"
                           "  data_dir: '{data}'\n"
                           "  admin: { endpoint: 'off' }\n"
                           "adapters:\n"
                           "  - name: clients\n"
                           "    type: tcp\n"
                           "    listen: 127.0.0.1:{port0}\n"
                           "    protocol: jsonl\n";

static void start(sbt_broker *b, const char *name, const char *rest)
{
    char *text = malloc(strlen(head) + strlen(rest) + 1);
    assert_non_null(text);
    strcpy(text, head);
    strcat(text, rest);
    sbt_broker_init(b, name, 1);
    sbt_broker_config(b, text);
    free(text);
    sbt_broker_start(b);
}

static void test_exec_source(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char want[32], source[32];

    start(b, "exec-source",
          "  - name: src\n"
          "    type: exec\n"
          "    command: ['{helper}', 'emit', '3', 'hello']\n"
          "    topic: exec/{adapter}\n"
          "    restart: never\n"
          "routes:\n"
          "  - name: ex-in\n"
          "    from: exec/#\n");
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "ex-in", NULL, 10);
    for (int i = 1; i <= 3; i++) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        snprintf(want, sizeof(want), "hello-%d", i);
        assert_string_equal(sbt_str(m, "topic"), "exec/src");
        assert_string_equal(sbt_str(m, "payload"), want);
        /* source: "src pid <n>" */
        snprintf(source, sizeof(source), "%.8s", sbt_str(json_object_get(m, "headers"), "source"));
        assert_string_equal(source, "src pid ");
        sbt_ack(c, "ex-in", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_wait_queue_int(c, "ex-in", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "ex-in", "published"), 3);
    sbt_close(c);
    /* An orderly stop ends the child too (its stdin closes). */
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_exec_sink(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char path[SBT_PATH_MAX];
    char *text = NULL;

    start(b, "exec-sink",
          "  - name: snk\n"
          "    type: exec\n"
          "    command: ['{helper}', 'sink', '{dir}/sink.out']\n"
          "    restart: never\n"
          "routes:\n"
          "  - name: to-sink\n"
          "    from: tosink/#\n"
          "    to: snk\n");
    sbt_path(path, sizeof(path), b->dir, "sink.out");
    c = sbt_connect(b->port[0]);
    sbt_pub(c, "tosink/a", "alpha", 1);
    sbt_pub(c, "tosink/b", "beta", 1);
    sbt_pub(c, "tosink/c", "gamma", 1);
    for (int64_t deadline = sbt_now_ms() + 10000;;) {
        free(text);
        text = sbt_read_file(path, NULL);
        if (text != NULL && strcmp(text, "alpha\nbeta\ngamma\n") == 0)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("%s holds \"%s\", want alpha, beta, gamma lines", path,
                     text != NULL ? text : "(missing)");
        sbt_poll_pause(10);
    }
    free(text);
    sbt_wait_queue_int(c, "to-sink:snk", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "to-sink:snk", "acked"), 3);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* The delays of the "restarting the child in N ms" lines of adapter `who`. */
static int restart_delays(sbt_broker *b, const char *who, int *out, int max)
{
    char *log = sbt_broker_log(b), needle[64];
    int n = 0;
    snprintf(needle, sizeof(needle), "[%s] restarting the child in ", who);
    for (const char *p = log; n < max && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        out[n++] = atoi(p + strlen(needle));
    free(log);
    return n;
}

static void test_exec_restart_with_backoff(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    int delays[8];
    char *log;

    start(b, "exec-restart",
          "  - name: flaky\n"
          "    type: exec\n"
          "    command: ['{helper}', 'fail', '3', 'boom']\n"
          "    topic: flaky/{adapter}\n"
          "    restart: on-failure\n"
          "    restart_backoff: 50ms\n"
          "    restart_max_backoff: 200ms\n"
          "  - name: once\n"
          "    type: exec\n"
          "    command: ['{helper}', 'fail', '0', 'bye']\n"
          "    topic: flaky/{adapter}\n"
          "    restart: on-failure\n"
          "routes:\n"
          "  - name: flaky-in\n"
          "    from: flaky/#\n");
    /* Four failures: 50, 100, 200 and (capped) 200 ms. */
    sbt_broker_wait_log(b, "[flaky] restarting the child in ", 4, 15000);
    assert_int_equal(restart_delays(b, "flaky", delays, 4), 4);
    assert_int_equal(delays[0], 50);
    assert_int_equal(delays[1], 100);
    assert_int_equal(delays[2], 200);
    assert_int_equal(delays[3], 200);
    log = sbt_broker_log(b);
    assert_non_null(strstr(log, "[flaky] child stderr: boom (stderr)"));
    assert_true(sbt_count(log, "[flaky] started ") >= 4);
    assert_true(sbt_count(log, ") exited with status 3") >= 4);
    free(log);
    /* A clean exit under on-failure is final. */
    sbt_broker_wait_log(b, "[once] child not restarted (restart: on-failure)", 1, 5000);

    /* What each run printed was published. */
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "flaky-in", NULL, 100);
    {
        int boom = 0, bye = 0;
        while (boom < 4 || bye < 1) {
            json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
            if (strcmp(sbt_str(m, "topic"), "flaky/flaky") == 0) {
                assert_string_equal(sbt_str(m, "payload"), "boom");
                boom++;
            } else {
                assert_string_equal(sbt_str(m, "topic"), "flaky/once");
                assert_string_equal(sbt_str(m, "payload"), "bye");
                bye++;
            }
            sbt_ack(c, "flaky-in", sbt_int(m, "msg_id"));
            json_decref(m);
        }
        assert_int_equal(bye, 1);
    }
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "[once] started "), 1);
    free(log);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A short-lived child restarted many times: every line of every run is
 * published, the last one included, though the child exits right after
 * writing it (the adapter reads its stdout to the end before acting on the
 * exit; it used to lose the tail now and then). */
static void test_exec_short_lived_child_loses_nothing(void **state)
{
    enum { RUNS = 100 };
    sbt_broker *b = *state;
    sbt_conn *c;
    int first = 0, last = 0;
    char *log;

    start(b, "exec-short",
          "  - name: short\n"
          "    type: exec\n"
          "    command: ['{helper}', 'burst', '{dir}/runs.txt', '100', 'first', 'last']\n"
          "    topic: short/{adapter}\n"
          "    restart: on-failure\n"
          "    restart_backoff: 1ms\n"
          "    restart_max_backoff: 1ms\n"
          "routes:\n"
          "  - name: short-in\n"
          "    from: short/#\n");
    /* The 100th run exits 0 and is not restarted: every run has ended and
     * its output was read to the end. */
    sbt_broker_wait_log(b, "[short] child not restarted (restart: on-failure)", 1, 90000);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "short-in", NULL, 100);
    while (first + last < 2 * RUNS) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        const char *p = sbt_str(m, "payload");
        if (strcmp(p, "first") == 0) {
            first++;
        } else {
            assert_string_equal(p, "last");
            last++;
            /* Each run's lines arrive in order. */
            assert_int_equal(first, last);
        }
        sbt_ack(c, "short-in", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "[short] started "), RUNS);
    assert_null(strstr(log, "middle of a frame"));
    free(log);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A child that writes more than the adapter reads ahead and exits at once:
 * everything it wrote is published (the rest of its stdout is read after its
 * exit was noticed). */
static void test_exec_output_outlives_child(void **state)
{
    enum { LINES = 5000 };
    sbt_broker *b = *state;
    sbt_conn *c;
    char want[32];

    start(b, "exec-flood",
          "  - name: flood\n"
          "    type: exec\n"
          "    command: ['{helper}', 'flood', '5000', 'line']\n"
          "    topic: flood/{adapter}\n"
          "    restart: never\n"
          "routes:\n"
          "  - name: flood-in\n"
          "    from: flood/#\n");
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "flood-in", NULL, 1000);
    for (int i = 1; i <= LINES; i++) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        snprintf(want, sizeof(want), "line-%d", i);
        assert_string_equal(sbt_str(m, "payload"), want);
        sbt_ack(c, "flood-in", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A child speaking jsonl: its requests are served, the replies go to its
 * stdin (the helper writes them to a file). */
static void test_exec_jsonl_child(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char path[SBT_PATH_MAX];
    char *text = NULL;

    start(b, "exec-jsonl",
          "  - name: kid\n"
          "    type: exec\n"
          "    protocol: jsonl\n"
          "    command: ['{helper}', 'say', '{dir}/replies.txt',\n"
          "              '{\"op\":\"pub\",\"id\":1,\"topic\":\"kid/out\",\"payload\":\"hi\"}',\n"
          "              '{\"op\":\"ping\",\"id\":2}']\n"
          "    restart: never\n"
          "routes:\n"
          "  - name: kid-in\n"
          "    from: kid/#\n");
    sbt_path(path, sizeof(path), b->dir, "replies.txt");
    for (int64_t deadline = sbt_now_ms() + 10000;;) {
        free(text);
        text = sbt_read_file(path, NULL);
        if (text != NULL && sbt_count(text, "\n") >= 2)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("%s holds \"%s\", want two replies", path, text != NULL ? text : "");
        sbt_poll_pause(10);
    }
    {
        /* Two replies, in request order. */
        json_error_t jerr;
        char *nl = strchr(text, '\n');
        json_t *r1, *r2;
        *nl = '\0';
        r1 = json_loads(text, 0, &jerr);
        r2 = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, &jerr);
        assert_non_null(r1);
        assert_non_null(r2);
        sbt_expect_op(r1, "puback");
        assert_int_equal(sbt_int(r1, "id"), 1);
        assert_int_equal(sbt_int(r1, "queues"), 1);
        sbt_expect_op(r2, "pong");
        assert_int_equal(sbt_int(r2, "id"), 2);
        json_decref(r1);
        json_decref(r2);
    }
    free(text);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "kid-in", NULL, 10);
    {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "topic"), "kid/out");
        assert_string_equal(sbt_str(m, "payload"), "hi");
        json_decref(m);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exec_source, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_exec_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_exec_restart_with_backoff, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_exec_jsonl_child, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_exec_output_outlives_child, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_exec_short_lived_child_loses_nothing, sbt_setup,
                                        sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("exec", tests, NULL, NULL);
}
