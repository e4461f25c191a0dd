/*
 * Configuration reload on SIGHUP (POSIX only; skipped with a message on
 * Windows, where no process can send another SIGHUP: libuv defines the
 * number, but uv_process_kill refuses it; the Windows service reloads on
 * SERVICE_CONTROL_PARAMCHANGE, tested in tests/win/service): a valid new
 * config adds an adapter, removes one and changes a
 * route's settings while queues keep their messages and unchanged adapters
 * keep their connections; an invalid one is rejected with every error logged
 * as FILE:LINE:COL (the same lines `check-config` prints) and the running
 * config keeps serving.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#if defined(SIGHUP) && !defined(_WIN32)
#define HAVE_SIGHUP 1
#endif

#ifdef HAVE_SIGHUP

static const char v1[] = "broker:\n"
                         "  data_dir: '{data}'\n"
                         "  admin: { endpoint: 'off' }\n"
                         "adapters:\n"
                         "  - name: clients\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port0}\n"
                         "    protocol: jsonl\n"
                         "  - name: a1\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port1}\n"
                         "    topic: in/a1\n"
                         "routes:\n"
                         "  - name: r1\n"
                         "    from: in/#\n"
                         "    max_depth: 10\n"
                         "  - name: gone\n"
                         "    from: gone/#\n";

static const char v2[] = "broker:\n"
                         "  data_dir: '{data}'\n"
                         "  admin: { endpoint: 'off' }\n"
                         "adapters:\n"
                         "  - name: clients\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port0}\n"
                         "    protocol: jsonl\n"
                         "  - name: a2\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port2}\n"
                         "    topic: in/a2\n"
                         "routes:\n"
                         "  - name: r1\n"
                         "    from: in/#\n"
                         "    max_depth: 5\n";

/* Bad values and an unknown key: rejected. */
static const char v3[] = "broker:\n"
                         "  data_dir: '{data}'\n"
                         "  admin: { endpoint: 'off' }\n"
                         "adapters:\n"
                         "  - name: clients\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port0}\n"
                         "    protocol: jsonl\n"
                         "  - name: a3\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port3}\n"
                         "    colour: blue\n"
                         "routes:\n"
                         "  - name: r1\n"
                         "    from: in/#\n"
                         "    max_depth: lots\n";

static void reload(sbt_broker *b, const char *outcome)
{
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    sbt_broker_wait_log(b, outcome, 1, 10000);
}

/* Polls until a TCP connect to port is refused. */
static void wait_refused(int port)
{
    int64_t deadline = sbt_now_ms() + 5000;
    for (;;) {
        sbt_tcp *t = sbt_tcp_connect(port, 1000);
        if (t == NULL)
            return;
        sbt_tcp_close(t);
        if (sbt_now_ms() > deadline)
            fail_msg("port %d still accepts connections", port);
        sbt_poll_pause(10);
    }
}

static void test_reload(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_tcp *p1, *p2;
    json_t *r, *q;
    char line[SBT_PATH_MAX + 100], *out = NULL, *err = NULL, *log;
    int64_t ids[3];

    sbt_broker_init(b, "reload", 4);
    sbt_broker_config(b, v1);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    ids[0] = sbt_pub(c, "in/x", "k1", 1);
    ids[1] = sbt_pub(c, "in/x", "k2", 1);
    p1 = sbt_tcp_connect(b->port[1], 5000);
    assert_non_null(p1);
    assert_int_equal(sbt_tcp_write(p1, "k3\n", 3), 0);
    sbt_wait_queue_int(c, "r1", "depth", 3, 5000);
    sbt_pub(c, "gone/x", "g1", 1);

    /* v2: a1 out, a2 in, r1's max_depth 10 -> 5, route "gone" removed. */
    sbt_broker_write_config(b, v2);
    snprintf(line, sizeof(line), "configuration reloaded from %s: 2 adapters, 1 routes",
             b->config_path);
    reload(b, line);
    sbt_broker_wait_log(b, "[a1] removed by reload", 1, 1000);
    assert_true(sbt_tcp_wait_closed(p1, 5000));
    wait_refused(b->port[1]);

    /* The jsonl connection (adapter unchanged) survived; r1 kept its
     * messages; the removed route's queue is kept, orphaned. */
    assert_int_equal(sbt_queue_int(c, "r1", "depth"), 3);
    q = sbt_queue_stats(c, "gone");
    assert_non_null(q);
    assert_string_equal(sbt_str(q, "kind"), "orphaned");
    assert_int_equal(sbt_int(q, "depth"), 1);
    json_decref(q);
    sbt_pub(c, "gone/y", "g2", 0);

    /* a2 publishes into r1; at 5 messages the new max_depth refuses more. */
    p2 = sbt_tcp_connect(b->port[2], 5000);
    assert_non_null(p2);
    assert_int_equal(sbt_tcp_write(p2, "n1\n", 3), 0);
    sbt_wait_queue_int(c, "r1", "depth", 4, 5000);
    sbt_pub(c, "in/x", "k5", 1);
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "in/x", "payload", "k6");
    sbt_expect_op(r, "error");
    assert_non_null(strstr(sbt_str(r, "message"), "max_depth 5"));
    sbt_expect_error(r, "SB_EFULL");

    /* v3 is invalid: every error is logged with file:line:col (as
     * check-config reports them) and nothing changes. */
    sbt_broker_write_config(b, v3);
    {
        char *argv[] = {(char *)sbt_switchboard(), "check-config", b->config_path, NULL};
        assert_int_equal(sbt_run(argv, b->dir, 10000, &out, &err), 1);
    }
    reload(b, "reload rejected (2 errors); the running configuration is kept");
    log = sbt_broker_log_since(b);
    {
        int lines = 0;
        for (char *s = err, *nl; (nl = strchr(s, '\n')) != NULL; s = nl + 1) {
            *nl = '\0';
            if (strncmp(s, b->config_path, strlen(b->config_path)) != 0 ||
                strstr(s, " errors") != NULL)
                continue;
            snprintf(line, sizeof(line), "[config] %s", s);
            if (strstr(log, line) == NULL)
                fail_msg("the log lacks \"%s\"", line);
            lines++;
        }
        assert_int_equal(lines, 2);
    }
    snprintf(line, sizeof(line), "[config] %s:12:5: adapters[1].colour:", b->config_path);
    assert_non_null(strstr(log, line));
    snprintf(line, sizeof(line), "[config] %s:16:16: routes[0].max_depth:", b->config_path);
    assert_non_null(strstr(log, line));
    free(log);
    free(out);
    free(err);
    /* Still v2: a2 serves, a3 does not exist, r1 is still full at 5. */
    assert_int_equal(sbt_tcp_write(p2, "n2\n", 3), 0);
    wait_refused(b->port[3]);
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "in/x", "payload", "k7"),
                     "SB_EFULL");

    /* r1's messages, in order, across both configs. */
    sbt_sub(c, "r1", NULL, 10);
    {
        static const char *const want[] = {"k1", "k2", "k3", "n1", "k5"};
        for (int i = 0; i < 5; i++) {
            json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
            assert_string_equal(sbt_str(m, "payload"), want[i]);
            if (i < 2)
                assert_int_equal(sbt_int(m, "msg_id"), ids[i]);
            sbt_ack(c, "r1", sbt_int(m, "msg_id"));
            json_decref(m);
        }
    }
    /* n2 was held by the raw producer while r1 was full; now it arrives. */
    {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "payload"), "n2");
        assert_string_equal(sbt_str(m, "topic"), "in/a2");
        json_decref(m);
    }
    sbt_tcp_close(p1);
    sbt_tcp_close(p2);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char sink_v1[] = "broker:\n"
                              "  data_dir: '{data}'\n"
                              "  admin: { endpoint: 'off' }\n"
                              "adapters:\n"
                              "  - name: clients\n"
                              "    type: tcp\n"
                              "    listen: 127.0.0.1:{port0}\n"
                              "    protocol: jsonl\n"
                              "  - name: out\n"
                              "    type: tcp\n"
                              "    listen: 127.0.0.1:{port1}\n"
                              "routes:\n"
                              "  - name: to-out\n"
                              "    from: sinkout/#\n"
                              "    to: out\n";

/* The same without the route to `out`. */
static const char sink_v2[] = "broker:\n"
                              "  data_dir: '{data}'\n"
                              "  admin: { endpoint: 'off' }\n"
                              "adapters:\n"
                              "  - name: clients\n"
                              "    type: tcp\n"
                              "    listen: 127.0.0.1:{port0}\n"
                              "    protocol: jsonl\n"
                              "  - name: out\n"
                              "    type: tcp\n"
                              "    listen: 127.0.0.1:{port1}\n"
                              "routes:\n"
                              "  - name: other\n"
                              "    from: other/#\n";

#define BIG (256 * 1024)

/* Publishes n big messages "<k>www..." (k = first, first + 1, ...). */
static void pub_big(sbt_conn *c, int first, int n)
{
    char *payload = malloc(BIG + 1);
    assert_non_null(payload);
    memset(payload, 'w', BIG);
    payload[BIG] = '\0';
    for (int i = 0; i < n; i++) {
        int k = snprintf(payload, 16, "%d", first + i);
        payload[k] = 'w';
        sbt_send(c, "{s:s, s:i, s:s, s:s}", "op", "pub", "id", i + 1, "topic", "sinkout/a",
                 "payload", payload);
    }
    for (int i = 0; i < n; i++) {
        json_t *r = sbt_read(c, SBT_REPLY_MS);
        assert_non_null(r);
        sbt_expect_op(r, "puback");
        json_decref(r);
    }
    free(payload);
}

/* Waits until the sink's deliveries back up behind a peer that does not read. */
static void wait_backed_up(sbt_conn *c, const char *queue)
{
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        json_t *q = sbt_queue_stats(c, queue);
        int64_t inflight = sbt_int(q, "inflight"), depth = sbt_int(q, "depth");
        json_decref(q);
        if (inflight > 0 && depth >= inflight)
            return;
        if (sbt_now_ms() > deadline)
            fail_msg("%s: inflight %lld, depth %lld: not backed up", queue, (long long)inflight,
                     (long long)depth);
        sbt_poll_pause(10);
    }
}

/* A reload while a raw sink's deliveries are in flight (its peer reads
 * slowly): an unchanged adapter keeps them, so nothing is lost or sent
 * twice; a route removed under them retires the binding safely. */
static void test_reload_with_deliveries_in_flight(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_tcp *t;
    char line[SBT_PATH_MAX + 100], *buf = malloc(BIG + 16);
    json_t *q;

    assert_non_null(buf);
    sbt_broker_init(b, "reload-inflight", 2);
    sbt_broker_config(b, sink_v1);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    t = sbt_tcp_connect(b->port[1], 5000);
    assert_non_null(t);
    sbt_tcp_pause(t);
    sbt_broker_wait_log(b, "[out] peer 127.0.0.1:", 1, 5000);
    pub_big(c, 0, 60);
    wait_backed_up(c, "to-out:out");

    snprintf(line, sizeof(line), "configuration reloaded from %s", b->config_path);
    reload(b, line);
    /* Every message once, in order. */
    for (int i = 0; i < 60; i++) {
        int n = sbt_tcp_read_line(t, buf, BIG + 16, 10000);
        assert_int_equal(n, BIG);
        assert_int_equal(atoi(buf), i);
    }
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);
    sbt_pub(c, "sinkout/a", "end", 1);
    assert_int_equal(sbt_tcp_read_line(t, buf, BIG + 16, 5000), 3);
    assert_string_equal(buf, "end");

    /* Backed up again, then the route goes away under the deliveries. */
    sbt_tcp_pause(t);
    pub_big(c, 100, 60);
    wait_backed_up(c, "to-out:out");
    sbt_broker_write_config(b, sink_v2);
    reload(b, line);
    sbt_tcp_close(t); /* the writes in flight fail */
    q = NULL;
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        json_decref(q);
        q = sbt_queue_stats(c, "to-out:out");
        assert_non_null(q);
        if (sbt_int(q, "inflight") == 0)
            break;
        assert_true(sbt_now_ms() < deadline);
        sbt_poll_pause(10);
    }
    assert_string_equal(sbt_str(q, "kind"), "orphaned");
    assert_true(sbt_int(q, "depth") > 0);
    json_decref(q);
    free(buf);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* The reload reads and parses the file off the loop: with the config file
 * replaced by a FIFO nobody writes yet, reading it blocks the reload, and
 * clients are still answered meanwhile. Then the file arrives and the
 * reload completes. */
static void test_reload_does_not_stall_clients(void **state)
{
    sbt_broker *b = *state;
    char line[SBT_PATH_MAX + 100], *text, *log;
    sbt_conn *c;
    json_t *r;
    size_t len;
    int fd;
    int64_t t0;

    sbt_broker_init(b, "reload-stall", 4);
    sbt_broker_config(b, v1);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_broker_write_config(b, v2);
    text = sbt_read_file(b->config_path, &len);
    assert_non_null(text);
    assert_int_equal(unlink(b->config_path), 0);
    assert_int_equal(mkfifo(b->config_path, 0600), 0);

    snprintf(line, sizeof(line), "reloading configuration from %s", b->config_path);
    reload(b, line);
    t0 = sbt_now_ms();
    r = sbt_call_json(c, json_pack("{s:s}", "op", "ping"), 3000);
    if (r == NULL)
        fail_msg("no ping reply within 3 s while the reload waited for its file");
    sbt_expect_op(r, "pong");
    json_decref(r);
    print_message("ping answered in %lld ms during the reload\n", (long long)(sbt_now_ms() - t0));

    /* Once the reload's worker has the FIFO open for reading (it logs
     * "reloading" before it gets there), opening it to write succeeds;
     * until then it fails with ENXIO. */
    sbt_waiting_for("the reload to open %s for reading", b->config_path);
    for (int64_t deadline = sbt_now_ms() + 10000;;) {
        fd = open(b->config_path, O_WRONLY | O_NONBLOCK);
        if (fd >= 0)
            break;
        if (errno != ENXIO || sbt_now_ms() > deadline)
            fail_msg("open %s for writing: %s", b->config_path, strerror(errno));
        sbt_poll_pause(10);
    }
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    snprintf(line, sizeof(line), "configuration reloaded from %s", b->config_path);
    sbt_broker_wait_log(b, line, 1, 10000);
    log = sbt_broker_log_since(b);
    assert_non_null(strstr(log, "[a1] removed by reload"));
    free(log);
    free(text);
    /* a plain file again, for the stop */
    unlink(b->config_path);
    sbt_broker_write_config(b, v2);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

#else /* !HAVE_SIGHUP */

static void skip_no_sighup(void)
{
    print_message("skipped: no SIGHUP on this platform (the Windows service reloads on "
                  "PARAMCHANGE: tests/win/service)\n");
    skip();
}

static void test_reload(void **state)
{
    (void)state;
    skip_no_sighup();
}

static void test_reload_with_deliveries_in_flight(void **state)
{
    (void)state;
    skip_no_sighup();
}

static void test_reload_does_not_stall_clients(void **state)
{
    (void)state;
    skip_no_sighup();
}

#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reload, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_reload_with_deliveries_in_flight, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_reload_does_not_stall_clients, sbt_setup,
                                        sbt_teardown),
    };
    int rc;
    sbt_apply_filter();
    rc = cmocka_run_group_tests_name("reload", tests, NULL, NULL);
#ifndef HAVE_SIGHUP
    if (rc == 0)
        return SBT_EXIT_SKIPPED; /* ctest reports it as skipped */
#endif
    return rc;
}
