/*
 * How far a raw producer can trust the broker, with real sockets:
 *
 * - the acknowledged mode (`reply`, `reply_error`): every frame is answered
 *   in order, with reply once committed, with reply_error when refused (a
 *   full queue; a frame over max_message or a topic the ACL denies, which
 *   then close the connection); without reply_error a refused frame is
 *   held and answered once stored; length framing answers with a
 *   length-prefixed frame;
 * - a frame answered is durable: the broker is killed (SIGKILL) right after
 *   a reply, several times, and every answered frame is delivered after the
 *   restart;
 * - `read_ahead` bounds the frames the broker takes from a connection
 *   before they are committed: with commits held back (a 1 s group-commit
 *   delay), a queue's pending count climbs to the adapter's read_ahead and
 *   never beyond it.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char ack_config[] = "broker:\n"
                                 "  data_dir: '{data}'\n"
                                 "  admin: { endpoint: 'off' }\n"
                                 "  {v1}\n"
                                 "adapters:\n"
                                 "  - name: clients\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port0}\n"
                                 "    protocol: jsonl\n"
                                 "  - name: acked\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port1}\n"
                                 "    framing: line\n"
                                 "    topic: ack/{adapter}\n"
                                 "    max_message: 64\n"
                                 "    reply: OK\n"
                                 "    reply_error: ERR\n"
                                 "  - name: acklen\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port2}\n"
                                 "    framing: length\n"
                                 "    topic: len/{adapter}\n"
                                 "    reply: ok\n"
                                 "  - name: holding\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port3}\n"
                                 "    framing: line\n"
                                 "    topic: hold/{adapter}\n"
                                 "    reply: OK\n"
                                 "routes:\n"
                                 "  - name: ack-in\n"
                                 "    from: ack/#\n"
                                 "    max_depth: {v0}\n"
                                 "  - name: len-in\n"
                                 "    from: len/#\n"
                                 "  - name: hold-in\n"
                                 "    from: hold/#\n"
                                 "    max_depth: 1\n";

static const char read_ahead_config[] = "broker:\n"
                                        "  data_dir: '{data}'\n"
                                        "  admin: { endpoint: 'off' }\n"
                                        "  store: { commit_max_delay_us: 1000000, "
                                        "commit_max_batch: 65536 }\n"
                                        "adapters:\n"
                                        "  - name: clients\n"
                                        "    type: tcp\n"
                                        "    listen: 127.0.0.1:{port0}\n"
                                        "    protocol: jsonl\n"
                                        "  - name: narrow\n"
                                        "    type: tcp\n"
                                        "    listen: 127.0.0.1:{port1}\n"
                                        "    topic: ra/{adapter}\n"
                                        "    read_ahead: 8\n"
                                        "  - name: wide\n"
                                        "    type: tcp\n"
                                        "    listen: 127.0.0.1:{port2}\n"
                                        "    topic: rb/{adapter}\n"
                                        "    read_ahead: 40\n"
                                        "    reply: OK\n"
                                        "routes:\n"
                                        "  - name: ra\n"
                                        "    from: ra/#\n"
                                        "  - name: rb\n"
                                        "    from: rb/#\n";

static sbt_tcp *raw_connect(int port)
{
    sbt_tcp *t = sbt_tcp_connect(port, 5000);
    if (t == NULL)
        fail_msg("cannot connect to 127.0.0.1:%d", port);
    return t;
}

static void raw_puts(sbt_tcp *t, const char *s)
{
    assert_int_equal(sbt_tcp_write(t, s, strlen(s)), 0);
}

/* The next answer must be want. */
static void expect_reply(sbt_tcp *t, const char *want)
{
    char line[128];
    int n = sbt_tcp_read_line(t, line, sizeof(line), SBT_REPLY_MS);
    if (n < 0)
        fail_msg("no reply (expected %s): %s", want, n == -1 ? "timeout" : "connection closed");
    assert_string_equal(line, want);
}

/* The next delivery of sub must carry payload; acks it. */
static void expect_msg(sbt_conn *c, const char *sub, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

static void test_acknowledged(void **state)
{
    sbt_broker *b = *state;
    sbt_tcp *t, *big, *len, *hold;
    sbt_conn *c, *c2;
    char line[128], too_long[80];
    unsigned char hdr[4];
    json_t *m;

    sbt_broker_init(b, "raw-ack", 4);
    sbt_broker_set(b, 0, "3");
    sbt_broker_set(b, 1, "");
    sbt_broker_config(b, ack_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* One at a time, then pipelined: answered in order. */
    t = raw_connect(b->port[1]);
    raw_puts(t, "m1\n");
    expect_reply(t, "OK");
    assert_int_equal(sbt_queue_int(c, "ack-in", "depth"), 1);
    raw_puts(t, "m2\nm3\n");
    expect_reply(t, "OK");
    expect_reply(t, "OK");
    /* The queue is full (max_depth 3): refused, answered with reply_error,
     * and the connection goes on. */
    raw_puts(t, "m4\n");
    expect_reply(t, "ERR");
    sbt_broker_wait_log(b, "refusing frames (reply_error)", 1, 5000);
    sbt_sub(c, "ack-in", NULL, 1);
    expect_msg(c, "ack-in", "m1");
    sbt_wait_queue_int(c, "ack-in", "depth", 2, 5000);
    raw_puts(t, "m5\n");
    expect_reply(t, "OK");

    /* A line over max_message: the frames before it are answered, it gets
     * reply_error, and the connection closes. */
    big = raw_connect(b->port[1]);
    memset(too_long, 'x', 70);
    too_long[70] = '\n';
    too_long[71] = '\0';
    sbt_broker_mark_log(b);
    expect_msg(c, "ack-in", "m2"); /* room for one more */
    sbt_wait_queue_int(c, "ack-in", "depth", 2, 5000);
    raw_puts(big, "m6\n");
    raw_puts(big, too_long);
    expect_reply(big, "OK");
    expect_reply(big, "ERR");
    assert_true(sbt_tcp_wait_closed(big, 5000));
    sbt_broker_wait_log(b, "line longer than max_message 64; closing", 1, 5000);
    sbt_tcp_close(big);

    /* Length framing: the answer is a length-prefixed frame. */
    len = raw_connect(b->port[2]);
    assert_int_equal(sbt_tcp_write(len, "\0\0\0\5hello", 9), 0);
    assert_int_equal(sbt_tcp_read_exact(len, hdr, 4, SBT_REPLY_MS), 4);
    assert_int_equal(hdr[0] | hdr[1] | hdr[2], 0);
    assert_int_equal(hdr[3], 2);
    assert_int_equal(sbt_tcp_read_exact(len, line, 2, SBT_REPLY_MS), 2);
    assert_memory_equal(line, "ok", 2);
    sbt_tcp_close(len);

    /* Without reply_error a refused frame is held, and answered once it is
     * stored. */
    hold = raw_connect(b->port[3]);
    raw_puts(hold, "h1\nh2\n");
    expect_reply(hold, "OK");
    sbt_broker_wait_log(b, "holding the producer", 1, 5000);
    assert_int_equal(sbt_tcp_read_line(hold, line, sizeof(line), 300), -1);
    c2 = sbt_connect(b->port[0]);
    sbt_sub(c2, "hold-in", NULL, 1);
    m = sbt_next_msg(c2, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "h1");
    sbt_ack(c2, "hold-in", sbt_int(m, "msg_id"));
    json_decref(m);
    expect_reply(hold, "OK");
    expect_msg(c2, "hold-in", "h2");
    sbt_tcp_close(hold);
    sbt_close(c2);

    sbt_tcp_close(t);
    sbt_close(c);
    b->passed = 1;
}

/* A producer the ACL does not let publish gets reply_error, and the
 * connection closes. */
static void test_acknowledged_acl(void **state)
{
    static const char acl[] = "topic read #\n"; /* anonymous: read, never write */
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], line[SBT_PATH_MAX + 64];
    sbt_conn *c;
    sbt_tcp *t;

    sbt_broker_init(b, "raw-ack-acl", 4);
    sbt_path(path, sizeof(path), b->dir, "acl");
    sbt_write_file(path, acl, sizeof(acl) - 1);
    snprintf(line, sizeof(line), "auth: { acl_file: '%s' }", path);
    sbt_broker_set(b, 0, "0");
    sbt_broker_set(b, 1, line);
    sbt_broker_config(b, ack_config);
    sbt_broker_start(b);
    t = raw_connect(b->port[1]);
    raw_puts(t, "a\nb\n");
    expect_reply(t, "ERR");
    assert_true(sbt_tcp_wait_closed(t, 5000));
    sbt_broker_wait_log(b, "an anonymous client may not publish to ack/acked (ACL)", 1, 5000);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "ack-in", "published"), 0);
    sbt_tcp_close(t);
    sbt_close(c);
    b->passed = 1;
}

/* Answered frames survive a kill that follows the answer at once. */
static void test_answered_survives_kill(void **state)
{
    enum { ROUNDS = 3, PER_ROUND = 20 };
    sbt_broker *b = *state;
    sbt_conn *c;

    sbt_broker_init(b, "raw-ack-kill", 4);
    sbt_broker_set(b, 0, "0");
    sbt_broker_set(b, 1, "");
    sbt_broker_config(b, ack_config);
    sbt_broker_start(b);
    for (int round = 0; round < ROUNDS; round++) {
        sbt_tcp *t = raw_connect(b->port[1]);
        for (int i = 0; i < PER_ROUND; i++) {
            char line[32];
            snprintf(line, sizeof(line), "k%d\n", round * PER_ROUND + i);
            raw_puts(t, line);
            expect_reply(t, "OK");
        }
        /* Right after the last answer. */
        sbt_broker_kill(b);
        sbt_tcp_close(t);
        sbt_broker_start(b);
    }
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "ack-in", "depth"), ROUNDS * PER_ROUND);
    sbt_sub(c, "ack-in", NULL, 100);
    for (int i = 0; i < ROUNDS * PER_ROUND; i++) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        int k = -1;
        assert_int_equal(sscanf(sbt_str(m, "payload"), "k%d", &k), 1);
        assert_int_equal(k, i); /* in order, once */
        sbt_ack(c, "ack-in", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_close(c);
    b->passed = 1;
}

/* Polls the queues' pending counts for ms milliseconds (at least until the
 * want values were both seen), asserting the bounds at every sample. */
static void watch_pending(sbt_conn *c, int64_t ms)
{
    int64_t max_a = 0, max_b = 0, start = sbt_now_ms();
    for (;;) {
        int64_t a = sbt_queue_int(c, "ra", "pending"), bb = sbt_queue_int(c, "rb", "pending");
        if (a > 8 || bb > 40)
            fail_msg("pending %lld and %lld: beyond read_ahead 8 and 40", (long long)a,
                     (long long)bb);
        max_a = a > max_a ? a : max_a;
        max_b = bb > max_b ? bb : max_b;
        if (sbt_now_ms() - start > ms && max_a == 8 && max_b == 40)
            break;
        if (sbt_now_ms() - start > 10000)
            fail_msg("pending reached only %lld of 8 and %lld of 40", (long long)max_a,
                     (long long)max_b);
        sbt_poll_pause(5);
    }
}

static void test_read_ahead_bounds(void **state)
{
    sbt_broker *b = *state;
    sbt_tcp *narrow, *wide;
    sbt_conn *c;
    char *lines = malloc(400 * 8);
    size_t n = 0;

    assert_non_null(lines);
    for (int i = 0; i < 400; i++)
        n += (size_t)sprintf(lines + n, "f%d\n", i);
    sbt_broker_init(b, "raw-read-ahead", 3);
    sbt_broker_config(b, read_ahead_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    narrow = raw_connect(b->port[1]);
    wide = raw_connect(b->port[2]);
    /* 400 frames at once each; the store commits once a second. */
    assert_int_equal(sbt_tcp_write(narrow, lines, n), 0);
    assert_int_equal(sbt_tcp_write(wide, lines, n), 0);
    /* Through at least one commit: reading resumes, and stops again at
     * the bound. */
    watch_pending(c, 2500);
    assert_true(sbt_queue_int(c, "ra", "depth") > 0);
    assert_true(sbt_queue_int(c, "ra", "depth") < 400);
    sbt_tcp_close(narrow);
    sbt_tcp_close(wide);
    sbt_close(c);
    free(lines);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_acknowledged, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acknowledged_acl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_answered_survives_kill, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_read_ahead_bounds, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("raw_ack", tests, NULL, NULL);
}
