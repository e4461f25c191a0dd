/*
 * Pipe servers (`type: pipe` with `path`) with real processes: the broker
 * (switchboard.exe run) on one side, this program's pipe clients on the
 * other, checked through the jsonl TCP adapter of the integration harness.
 *
 * - source, message mode: one pipe message is one message (newlines, NUL
 *   bytes, an empty message, messages larger than the 64 KiB read size);
 *   a message over max_message closes that client with a logged error while
 *   the others are served on; clients that connect, write and leave at once
 *   lose nothing, nor does a burst many times read_ahead written as fast
 *   as the pipe takes it;
 * - source, byte mode: line and length framings across split writes;
 *   max_connections holds further clients off (ERROR_PIPE_BUSY) until one
 *   leaves;
 * - sink: deliveries arrive one per pipe message (boundaries kept even when
 *   several are written at once), in order, acknowledged once written; two
 *   clients share them round robin; line framing in byte mode; a backlog
 *   many times the pipe's buffer (writes that wait for the reader) arrives
 *   whole and in order, in both modes;
 * - an orderly stop with clients connected exits 0 and frees the names: the
 *   restarted broker serves the same pipes.
 *
 * Pipe names carry this program's process id, so parallel runs do not meet.
 */
#include "tests/win/pipe/pipe_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char source_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: msg\n"
                                    "    type: pipe\n"
                                    "    path: '{v0}'\n"
                                    "    framing: message\n"
                                    "    topic: pipe/{adapter}\n"
                                    "    max_message: 100000\n"
                                    "  - name: small\n"
                                    "    type: pipe\n"
                                    "    path: '{v1}'\n"
                                    "    framing: message\n"
                                    "    topic: pipe/{adapter}\n"
                                    "    max_message: 100\n"
                                    "  - name: lines\n"
                                    "    type: pipe\n"
                                    "    path: '\\\\.\\pipe\\{v2}'\n"
                                    "    framing: line\n"
                                    "    topic: pipe/{adapter}\n"
                                    "  - name: len\n"
                                    "    type: pipe\n"
                                    "    path: '{v3}'\n"
                                    "    framing: length\n"
                                    "    topic: pipe/{adapter}\n"
                                    "    max_connections: 2\n"
                                    "routes:\n"
                                    "  - name: rx\n"
                                    "    from: pipe/#\n";

static const char sink_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: out\n"
                                  "    type: pipe\n"
                                  "    path: '{v0}'\n"
                                  "    framing: message\n"
                                  "  - name: outl\n"
                                  "    type: pipe\n"
                                  "    path: '{v1}'\n"
                                  "    framing: line\n"
                                  "routes:\n"
                                  "  - name: to-out\n"
                                  "    from: out/#\n"
                                  "    to: out\n"
                                  "  - name: to-outl\n"
                                  "    from: outl/#\n"
                                  "    to: outl\n";

typedef struct names {
    char name[4][64];
    char path[4][128];
} names;

static sbt_conn *start_broker(sbt_broker *b, const char *test, const char *tmpl, names *n,
                              int count)
{
    static const char *tags[] = {"a", "b", "c", "d"};
    char tag[32];
    sbt_broker_init(b, test, 1);
    for (int i = 0; i < count; i++) {
        snprintf(tag, sizeof(tag), "%s-%s", test, tags[i]);
        pt_name(n->name[i], sizeof(n->name[i]), tag);
        pt_path(n->path[i], sizeof(n->path[i]), n->name[i]);
        sbt_broker_set(b, i, n->name[i]);
    }
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* The next delivery of sub: asserts topic and payload (or payload_b64 when
 * b64), acks it. */
static void expect_msg(sbt_conn *c, const char *sub, const char *topic, const char *payload,
                       int b64)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, b64 ? "payload_b64" : "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

static int is_message_pipe(pt_pipe *p)
{
    DWORD flags = 0;
    assert_true(GetNamedPipeInfo(p->h, &flags, NULL, NULL, NULL));
    return (flags & PIPE_TYPE_MESSAGE) != 0;
}

/* ---- source ---- */

static void test_source_message(void **state)
{
    sbt_broker *b = *state;
    static const unsigned char bin[3] = {0xfe, 0x00, 0x01};
    names n;
    sbt_conn *c = start_broker(b, "msg-src", source_config, &n, 4);
    pt_pipe *p = pt_open_ok(n.path[0], 1);
    size_t big_len = 90000;
    char *big = malloc(big_len + 1);
    json_t *m;

    assert_non_null(big);
    assert_true(is_message_pipe(p));
    pt_write_ok(p, "m1", 2);
    pt_write_ok(p, "two\nlines\n", 10);
    pt_write_ok(p, bin, sizeof(bin));
    pt_write_ok(p, "", 0);
    /* Larger than one 64 KiB read: arrives whole. */
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    big[big_len] = '\0';
    pt_write_ok(p, big, big_len);
    pt_write_ok(p, "last", 4);

    sbt_sub(c, "rx", NULL, 100);
    expect_msg(c, "rx", "pipe/msg", "m1", 0);
    expect_msg(c, "rx", "pipe/msg", "two\nlines\n", 0);
    expect_msg(c, "rx", "pipe/msg", "/gAB", 1);
    expect_msg(c, "rx", "pipe/msg", "", 0);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_int_equal(strlen(sbt_str(m, "payload")), big_len);
    assert_string_equal(sbt_str(m, "payload"), big);
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    expect_msg(c, "rx", "pipe/msg", "last", 0);
    sbt_broker_wait_log(b, "[msg] peer pid", 1, 1000);

    free(big);
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

/* Clients that connect, write and leave at once (often before the broker
 * even waits for them): nothing they wrote is lost. */
static void test_short_lived_clients(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "short", source_config, &n, 4);
    int seen[50] = {0};

    for (int i = 0; i < 50; i++) {
        char payload[16];
        pt_pipe *p = pt_open_ok(n.path[0], 1);
        snprintf(payload, sizeof(payload), "c%d", i);
        pt_write_ok(p, payload, strlen(payload));
        pt_close(p);
    }
    sbt_sub(c, "rx", NULL, 100);
    for (int i = 0; i < 50; i++) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        int k = -1;
        assert_int_equal(sscanf(sbt_str(m, "payload"), "c%d", &k), 1);
        assert_true(k >= 0 && k < 50);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
        sbt_ack(c, "rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_close(c);
    b->passed = 1;
}

/* A burst many times read_ahead, and more messages than the broker reads
 * in a row, written as fast as the pipe takes them by a client that leaves
 * right after: the broker reads on in later loop turns, pauses and resumes
 * with the raw protocol's read-ahead, passes the end of input on only
 * after the last message, and loses nothing. */
static void test_source_burst(void **state)
{
    sbt_broker *b = *state;
    enum { BURST = 300 };
    names n;
    sbt_conn *c = start_broker(b, "burst", source_config, &n, 4);
    pt_pipe *p = pt_open_ok(n.path[0], 1);

    for (int i = 0; i < BURST; i++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "b%d", i);
        pt_write_ok(p, payload, strlen(payload));
    }
    pt_close(p);
    sbt_sub(c, "rx", NULL, 100);
    for (int i = 0; i < BURST; i++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "b%d", i);
        expect_msg(c, "rx", "pipe/msg", payload, 0);
    }
    sbt_close(c);
    b->passed = 1;
}

static void test_source_oversized(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "oversized", source_config, &n, 4);
    pt_pipe *keep = pt_open_ok(n.path[1], 1), *bad, *bad2;
    size_t huge_len = 100001;
    char over[101], *huge = malloc(huge_len);

    assert_non_null(huge);
    memset(over, 'o', sizeof(over));
    memset(huge, 'h', huge_len);
    sbt_sub(c, "rx", NULL, 100);

    /* By one byte over max_message 100 (the first read sees it all). */
    bad = pt_open_ok(n.path[1], 1);
    pt_write_ok(bad, "fine", 4);
    expect_msg(c, "rx", "pipe/small", "fine", 0);
    pt_write(bad, over, sizeof(over), 5000);
    if (!pt_wait_closed(bad, 5000))
        fail_msg("the broker did not close the client that sent 101 bytes");
    sbt_broker_wait_log(b, "error [small] peer pid", 1, 5000);
    sbt_broker_wait_log(b, ": message of 101 bytes exceeds max_message 100; closing the connection",
                        1, 5000);
    pt_close(bad);

    /* Beyond the first read (max_message 100000, 64 KiB reads). */
    bad2 = pt_open_ok(n.path[0], 1);
    pt_write(bad2, huge, huge_len, 5000);
    if (!pt_wait_closed(bad2, 5000))
        fail_msg("the broker did not close the client that sent %zu bytes", huge_len);
    sbt_broker_wait_log(b, "exceeds max_message 100000; closing the connection", 1, 5000);
    pt_close(bad2);

    /* The others are served on, and new clients too. */
    pt_write_ok(keep, "still here", 10);
    expect_msg(c, "rx", "pipe/small", "still here", 0);
    bad = pt_open_ok(n.path[1], 1);
    pt_write_ok(bad, over, 100);
    {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_int_equal(strlen(sbt_str(m, "payload")), 100);
        sbt_ack(c, "rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    pt_close(bad);
    pt_close(keep);
    free(huge);
    sbt_close(c);
    b->passed = 1;
}

static void test_source_bytes(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "byte-src", source_config, &n, 4);
    pt_pipe *l = pt_open_ok(n.path[2], 0), *len;
    static const unsigned char frame[] = {0, 0, 0, 3, 'x', 'y', 'z', 0, 0, 0, 0};

    assert_false(is_message_pipe(l));
    pt_write_ok(l, "a\nb\r\n", 5);
    pt_write_ok(l, "c", 1);
    pt_write_ok(l, "c\n", 2);
    sbt_sub(c, "rx", NULL, 100);
    expect_msg(c, "rx", "pipe/lines", "a", 0);
    expect_msg(c, "rx", "pipe/lines", "b", 0);
    expect_msg(c, "rx", "pipe/lines", "cc", 0);

    len = pt_open_ok(n.path[3], 0);
    assert_false(is_message_pipe(len));
    pt_write_ok(len, frame, 5);
    pt_write_ok(len, frame + 5, sizeof(frame) - 5);
    expect_msg(c, "rx", "pipe/len", "xyz", 0);
    expect_msg(c, "rx", "pipe/len", "", 0);
    pt_close(len);
    pt_close(l);
    sbt_close(c);
    b->passed = 1;
}

static void test_max_connections(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "maxconn", source_config, &n, 4);
    pt_pipe *p1 = pt_open_ok(n.path[3], 0), *p2 = pt_open_ok(n.path[3], 0), *p3;
    static const unsigned char frame[] = {0, 0, 0, 2, 'p', '3'};
    DWORD err = 0;

    sbt_broker_wait_log(b, "[len] peer pid", 2, 5000);
    /* max_connections 2: a third client finds every instance busy. */
    p3 = pt_open(n.path[3], 0, 300, &err);
    if (p3 != NULL)
        fail_msg("a third client connected despite max_connections 2");
    assert_int_equal(err, ERROR_PIPE_BUSY);
    /* Once one leaves, it gets in. */
    pt_close(p1);
    p3 = pt_open_ok(n.path[3], 0);
    pt_write_ok(p3, frame, sizeof(frame));
    sbt_sub(c, "rx", NULL, 10);
    expect_msg(c, "rx", "pipe/len", "p3", 0);
    pt_close(p2);
    pt_close(p3);
    sbt_close(c);
    b->passed = 1;
}

/* ---- sink ---- */

static void pub_b64(sbt_conn *c, const char *topic, const char *b64)
{
    json_t *r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", topic, "payload_b64", b64);
    sbt_expect_op(r, "puback");
    json_decref(r);
}

static void expect_read(pt_pipe *p, const void *want, size_t len)
{
    char buf[4096];
    DWORD err = 0;
    int n = pt_read_msg(p, buf, sizeof(buf), SBT_REPLY_MS, &err);
    if (n == -1)
        fail_msg("no message within %d ms", SBT_REPLY_MS);
    if (n == -2)
        fail_msg("the pipe broke: error %lu", (unsigned long)err);
    assert_int_equal(n, len);
    assert_memory_equal(buf, want, len);
}

static void test_sink_message(void **state)
{
    sbt_broker *b = *state;
    static const unsigned char bin[3] = {0xfe, 0x00, 0x01};
    names n;
    sbt_conn *c = start_broker(b, "msg-sink", sink_config, &n, 2);
    pt_pipe *p, *q;
    int got_p = 0, got_q = 0, seen[20] = {0};

    /* Queued while nobody is connected. */
    sbt_pub(c, "out/1", "one", 1);
    sbt_pub(c, "out/2", "two\nlines", 1);
    pub_b64(c, "out/3", "/gAB");
    sbt_pub(c, "out/4", "", 1);
    p = pt_open_ok(n.path[0], 1);
    assert_true(is_message_pipe(p));
    expect_read(p, "one", 3);
    expect_read(p, "two\nlines", 9);
    expect_read(p, bin, 3);
    expect_read(p, "", 0);
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);

    /* Published in a burst (written together): still one message each. */
    for (int i = 0; i < 5; i++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "burst%d", i);
        sbt_pub(c, "out/b", payload, 1);
    }
    for (int i = 0; i < 5; i++) {
        char want[16];
        snprintf(want, sizeof(want), "burst%d", i);
        expect_read(p, want, strlen(want));
    }

    /* Two clients: round robin, every message once. */
    q = pt_open_ok(n.path[0], 1);
    sbt_broker_wait_log(b, "[out] peer pid", 2, 5000);
    for (int i = 0; i < 20; i++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "rr%d", i);
        sbt_pub(c, "out/rr", payload, 1);
    }
    while (got_p + got_q < 20) {
        char buf[64];
        int k = -1, r;
        r = pt_read_msg(p, buf, sizeof(buf), 50, NULL);
        if (r < 0)
            r = pt_read_msg(q, buf, sizeof(buf), 50, NULL), got_q += r >= 0;
        else
            got_p++;
        if (r == -2)
            fail_msg("a sink client's pipe broke");
        if (r < 0)
            continue;
        assert_int_equal(sscanf(buf, "rr%d", &k), 1);
        assert_true(k >= 0 && k < 20);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
    }
    assert_true(got_p > 0);
    assert_true(got_q > 0);
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);
    pt_close(q);
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

static void test_sink_line(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "line-sink", sink_config, &n, 2);
    pt_pipe *p = pt_open_ok(n.path[1], 0);
    char line[64];

    assert_false(is_message_pipe(p));
    sbt_pub(c, "outl/1", "l1", 1);
    sbt_pub(c, "outl/2", "l2", 1);
    assert_int_equal(pt_read_line(p, line, sizeof(line), SBT_REPLY_MS), 2);
    assert_string_equal(line, "l1");
    assert_int_equal(pt_read_line(p, line, sizeof(line), SBT_REPLY_MS), 2);
    assert_string_equal(line, "l2");
    sbt_wait_queue_int(c, "to-outl:outl", "depth", 0, 5000);
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

/* The payload of backlog message i: "big<i>" padded with letters to len. */
static void big_payload(char *out, size_t len, int i)
{
    int n = snprintf(out, len + 1, "big%03d-", i);
    for (size_t k = (size_t)n; k < len; k++)
        out[k] = (char)('a' + (k + (size_t)i) % 26);
    out[len] = '\0';
}

static void test_sink_backlog(void **state)
{
    enum { COUNT = 40, SIZE = 3000 };
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "backlog-sink", sink_config, &n, 2);
    char payload[SIZE + 1], line[SIZE + 64];
    pt_pipe *p, *l;

    /* 120 KB for each sink, whose pipes buffer 4 KiB: most writes wait for
     * the reader, and the rest of a batch goes on when they complete. */
    for (int i = 0; i < COUNT; i++) {
        big_payload(payload, SIZE, i);
        sbt_pub(c, "out/big", payload, 1);
        sbt_pub(c, "outl/big", payload, 1);
    }
    p = pt_open_ok(n.path[0], 1);
    l = pt_open_ok(n.path[1], 0);
    for (int i = 0; i < COUNT; i++) {
        big_payload(payload, SIZE, i);
        expect_read(p, payload, SIZE);
        assert_int_equal(pt_read_line(l, line, sizeof(line), SBT_REPLY_MS), SIZE);
        assert_string_equal(line, payload);
    }
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);
    sbt_wait_queue_int(c, "to-outl:outl", "depth", 0, 5000);
    pt_close(l);
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

/* ---- stop ---- */

static void test_stop_and_restart(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "restart", source_config, &n, 4);
    pt_pipe *m = pt_open_ok(n.path[0], 1), *l = pt_open_ok(n.path[2], 0);

    pt_write_ok(m, "before", 6);
    sbt_sub(c, "rx", NULL, 10);
    {
        /* Acked with a reply, so that the ack is in before the stop. */
        json_t *msg = sbt_next_msg(c, SBT_REPLY_MS), *r;
        assert_string_equal(sbt_str(msg, "payload"), "before");
        r = sbt_call(c, "{s:s, s:s, s:I}", "op", "ack", "sub", "rx", "msg_id",
                     (json_int_t)sbt_int(msg, "msg_id"));
        sbt_expect_op(r, "ok");
        json_decref(r);
        json_decref(msg);
    }
    sbt_close(c);
    /* An orderly stop with clients connected: exit code 0, clients see the
     * pipe close. */
    sbt_broker_stop(b);
    assert_true(pt_wait_closed(m, 5000));
    assert_true(pt_wait_closed(l, 5000));
    pt_close(m);
    pt_close(l);

    /* The names (pipes and guard mutexes) are free: a new broker takes them. */
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    m = pt_open_ok(n.path[0], 1);
    pt_write_ok(m, "after", 5);
    sbt_sub(c, "rx", NULL, 10);
    expect_msg(c, "rx", "pipe/msg", "after", 0);
    pt_close(m);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_source_message, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_short_lived_clients, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_source_burst, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_source_oversized, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_source_bytes, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_max_connections, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink_message, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink_line, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink_backlog, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_stop_and_restart, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
