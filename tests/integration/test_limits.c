/*
 * Connections that hold a listener without using it: idle_timeout closes a
 * connection that never completes a first request, frame_timeout one that
 * leaves a frame unfinished (a byte now and then keeps nothing open), while
 * clients that identified themselves, subscribers included, stay however
 * long they are quiet; a full listener makes room by evicting the
 * connection that has waited longest without identifying itself, but never
 * a raw sink's reader. Also the descriptor limit (POSIX): the broker raises
 * its soft limit to the hard one, and when descriptors run out anyway it
 * says so once and accepts again once they are back.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#include <sys/resource.h>
#endif

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: guarded\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: jsonl\n"
                             "    idle_timeout: 2s\n"
                             "    frame_timeout: 1s\n"
                             "  - name: lines\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port2}\n"
                             "    topic: in/lines\n"
                             "    max_connections: 4\n"
                             "    frame_timeout: 1s\n"
                             "  - name: out\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port3}\n"
                             "    max_connections: 2\n"
                             "routes:\n"
                             "  - name: lines-in\n"
                             "    from: in/#\n"
                             "  - name: to-out\n"
                             "    from: out/#\n"
                             "    to: out\n";

/* Connects and checks the connection is up (the broker accepted it). */
static sbt_tcp *connect_ok(int port)
{
    sbt_tcp *t = sbt_tcp_connect(port, 5000);
    assert_non_null(t);
    return t;
}

static void ping(sbt_conn *c)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "ping");
    sbt_expect_op(r, "pong");
    json_decref(r);
}

/* Writes one byte every 200 ms for ms milliseconds, or until the broker
 * closes the connection; returns 1 if it did. */
static int trickle(sbt_tcp *t, const char *bytes, int ms)
{
    int64_t deadline = sbt_now_ms() + ms;
    for (size_t i = 0; sbt_now_ms() < deadline; i++) {
        if (sbt_tcp_write(t, bytes + i % strlen(bytes), 1) != 0)
            return 1;
        if (sbt_tcp_wait_closed(t, 200))
            return 1;
    }
    return 0;
}

static void test_idle_and_frame_timeouts(void **state)
{
    sbt_broker *b = *state;
    sbt_tcp *idle, *slow, *chatty;
    sbt_conn *c, *pinged, *sub;
    json_t *m;

    sbt_broker_init(b, "limits-timeouts", 4);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* identified: a request, or a subscription, then silence */
    pinged = sbt_connect(b->port[1]);
    ping(pinged);
    sub = sbt_connect(b->port[1]);
    sbt_sub(sub, "waiting", "wait/#", 10);

    idle = connect_ok(b->port[1]);   /* says nothing */
    chatty = connect_ok(b->port[1]); /* blank lines are not requests */
    assert_true(trickle(chatty, "\n", 5000));
    assert_true(sbt_tcp_wait_closed(idle, 5000));
    sbt_broker_wait_log(b, "no complete request within idle_timeout (2.0 s)", 2, 1000);
    /* one request, a byte at a time: frame_timeout (1 s) ends it first */
    slow = connect_ok(b->port[1]);
    assert_true(trickle(slow, "{\"op\":\"ping\"} ", 5000));
    sbt_broker_wait_log(b, "still incomplete", 1, 1000);

    /* well after both timeouts, the identified clients are still served */
    sbt_poll_pause(1500);
    ping(pinged);
    sbt_pub(c, "wait/x", "late", 1);
    m = sbt_next_msg(sub, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "late");
    sbt_ack(sub, "waiting", sbt_int(m, "msg_id"));
    json_decref(m);

    /* the default listener has neither set so short */
    ping(c);
    sbt_tcp_close(idle);
    sbt_tcp_close(chatty);
    sbt_tcp_close(slow);
    sbt_close(pinged);
    sbt_close(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_full_listener_evicts(void **state)
{
    sbt_broker *b = *state;
    sbt_tcp *holders[4], *newcomers[3], *producer, *readers[2], *third, *slow;
    sbt_conn *c;
    char *log;

    sbt_broker_init(b, "limits-evict", 4);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* four connections that send nothing fill the raw listener */
    for (int i = 0; i < 4; i++)
        holders[i] = connect_ok(b->port[2]);
    sbt_broker_wait_log(b, "[lines] peer 127.0.0.1:", 4, 5000);
    /* a producer still gets in: the oldest holder makes room */
    sbt_broker_mark_log(b);
    producer = connect_ok(b->port[2]);
    assert_int_equal(sbt_tcp_write(producer, "hello\n", 6), 0);
    sbt_wait_queue_int(c, "lines-in", "depth", 1, 5000);
    assert_true(sbt_tcp_wait_closed(holders[0], 5000));
    sbt_broker_wait_log(b, "it makes room for 127.0.0.1:", 1, 1000);
    log = sbt_broker_log_since(b);
    assert_null(strstr(log, "max_connections (4) reached"));
    free(log);
    /* the other holders go in turn, oldest first, never the producer that
     * identified itself */
    for (int i = 0; i < 3; i++) {
        newcomers[i] = connect_ok(b->port[2]);
        assert_true(sbt_tcp_wait_closed(holders[i + 1], 5000));
    }
    assert_int_equal(sbt_tcp_write(producer, "again\n", 6), 0);
    sbt_wait_queue_int(c, "lines-in", "depth", 2, 5000);

    /* a slow frame on raw: closed after frame_timeout */
    slow = connect_ok(b->port[2]);
    assert_true(trickle(slow, "abcdefgh", 5000));

    /* readers of a route's destination are subscribers: never evicted */
    readers[0] = connect_ok(b->port[3]);
    readers[1] = connect_ok(b->port[3]);
    sbt_broker_wait_log(b, "[out] peer 127.0.0.1:", 2, 5000);
    sbt_broker_mark_log(b);
    third = sbt_tcp_connect(b->port[3], 5000);
    if (third != NULL)
        assert_true(sbt_tcp_wait_closed(third, 5000));
    sbt_broker_wait_log(b, "refused: max_connections (2) reached", 1, 5000);
    sbt_pub(c, "out/x", "still here", 1);
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        char line[64];
        int got = sbt_tcp_read_line(readers[0], line, sizeof line, 20);
        if (got < 0)
            got = sbt_tcp_read_line(readers[1], line, sizeof line, 20);
        if (got >= 0) {
            assert_string_equal(line, "still here");
            break;
        }
        assert_int_equal(got, -1);
        if (sbt_now_ms() > deadline)
            fail_msg("no reader got the message");
    }

    for (int i = 0; i < 4; i++)
        sbt_tcp_close(holders[i]);
    for (int i = 0; i < 3; i++)
        sbt_tcp_close(newcomers[i]);
    sbt_tcp_close(producer);
    sbt_tcp_close(slow);
    sbt_tcp_close(readers[0]);
    sbt_tcp_close(readers[1]);
    if (third != NULL)
        sbt_tcp_close(third);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

#ifndef _WIN32

static const char emfile_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "    max_connections: 1000\n"
                                    "    idle_timeout: 0\n";

#define EMFILE_CONNS 80

/* A client waiting in the backlog is served once descriptors are back. */
static void expect_pong(sbt_tcp *t)
{
    char line[256];
    assert_int_equal(sbt_tcp_write(t, "{\"op\":\"ping\"}\n", 14), 0);
    if (sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS) < 0)
        fail_msg("no pong: the connection was dropped or never accepted");
    {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        assert_string_equal(sbt_str(o, "op"), "pong");
        json_decref(o);
    }
}

static void test_descriptor_limits(void **state)
{
    sbt_broker *b = *state;
    struct rlimit rl, low;
    sbt_tcp *conns[EMFILE_CONNS];
    char want[128], *argv[6], *log;

    sbt_broker_init(b, "limits-fds", 1);
    sbt_broker_config(b, emfile_config);

    /* the soft limit is raised to the hard one */
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max > 128) {
        low = rl;
        low.rlim_cur = 128;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        sbt_broker_start(b);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
        snprintf(want, sizeof want, "open descriptor limit raised from 128 to %llu",
                 (unsigned long long)(rl.rlim_max > 1048576 ? 1048576 : rl.rlim_max));
        sbt_broker_wait_log(b, want, 1, 1000);
        sbt_broker_stop(b);
    } else {
        print_message("hard descriptor limit %llu: not lowering the soft one\n",
                      (unsigned long long)rl.rlim_max);
    }

    /* with 64 descriptors in all, 80 clients: the broker says so once, the
     * clients it cannot take wait, and are served when others leave */
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    argv[2] = "ulimit -n 64 && exec \"$0\" run --config \"$1\"";
    argv[3] = (char *)sbt_switchboard();
    argv[4] = b->config_path;
    argv[5] = NULL;
    sbt_broker_mark_log(b);
    if (sbt_spawn(&b->proc, argv, b->dir, b->log_path) != 0)
        fail_msg("cannot run /bin/sh");
    sbt_broker_wait_log(b, "ready: ", 1, SBT_READY_MS);
    for (int i = 0; i < EMFILE_CONNS; i++)
        conns[i] = connect_ok(b->port[0]);
    sbt_broker_wait_log(b, "cannot accept connections: Too many open files (limit 64", 1, 10000);
    for (int i = 0; i < EMFILE_CONNS / 2; i++)
        sbt_tcp_close(conns[i]);
    for (int i = EMFILE_CONNS / 2; i < EMFILE_CONNS; i++)
        expect_pong(conns[i]);
    sbt_broker_wait_log(b, "accepting connections again", 1, 15000);
    log = sbt_broker_log_since(b);
    assert_int_equal(sbt_count(log, "cannot accept connections"), 1);
    free(log);
    for (int i = EMFILE_CONNS / 2; i < EMFILE_CONNS; i++)
        sbt_tcp_close(conns[i]);
    sbt_broker_stop(b);
    b->passed = 1;
}

#else

static void test_descriptor_limits(void **state)
{
    (void)state;
    print_message("skipped: descriptor limits are POSIX\n");
    skip();
}

#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idle_and_frame_timeouts, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_full_listener_evicts, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_descriptor_limits, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
