/*
 * Pipe clients (`type: pipe` with `connect`) with real processes: this
 * program serves the pipes, the broker (switchboard.exe run) connects to
 * them, checked through the jsonl TCP adapter of the integration harness.
 *
 * - both directions on one connection, message mode: deliveries arrive one
 *   per pipe message; what the server writes is published;
 * - the server goes away and comes back: the broker logs the loss, logs the
 *   failing reconnects once (not per attempt), reconnects with backoff, and
 *   delivers what was published meanwhile — including a delivery whose
 *   write was cut off by the server's exit (nacked, retried);
 * - line framing on a byte-mode pipe;
 * - `framing: message` against a byte-mode pipe: refused with a clear error.
 */
#include "tests/win/pipe/pipe_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char client_config[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "  log: { level: debug }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: ext\n"
    "    type: pipe\n"
    "    connect: '{v0}'\n"
    "    framing: message\n"
    "    topic: ext/in\n"
    "    reconnect_backoff: 20ms\n"
    "    reconnect_max_backoff: 100ms\n"
    "  - name: extl\n"
    "    type: pipe\n"
    "    connect: '\\\\.\\pipe\\{v1}'\n"
    "    framing: line\n"
    "    topic: extl/in\n"
    "    reconnect_backoff: 20ms\n"
    "    reconnect_max_backoff: 100ms\n"
    "  - name: mism\n"
    "    type: pipe\n"
    "    connect: '{v2}'\n"
    "    framing: message\n"
    "    reconnect_backoff: 20ms\n"
    "    reconnect_max_backoff: 100ms\n"
    "routes:\n"
    "  - name: to-ext\n"
    "    from: ext/out/#\n"
    "    to: ext\n"
    "    retry: { backoff: 20ms, max_backoff: 100ms, max_attempts: 1000 }\n"
    "  - name: to-extl\n"
    "    from: extl/out/#\n"
    "    to: extl\n"
    "  - name: from-ext\n"
    "    from: [ext/in, extl/in]\n";

typedef struct names {
    char name[3][64];
    char path[3][128];
} names;

static sbt_conn *start_broker(sbt_broker *b, const char *test, names *n)
{
    static const char *tags[] = {"ext", "extl", "mism"};
    char tag[64];
    sbt_broker_init(b, test, 1);
    for (int i = 0; i < 3; i++) {
        snprintf(tag, sizeof(tag), "%s-%s", test, tags[i]);
        pt_name(n->name[i], sizeof(n->name[i]), tag);
        pt_path(n->path[i], sizeof(n->path[i]), n->name[i]);
        sbt_broker_set(b, i, n->name[i]);
    }
    sbt_broker_config(b, client_config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

static void accept_ok(pt_pipe *s)
{
    if (!pt_accept(s, 10000))
        fail_msg("the broker did not connect within 10 s");
}

static char rbuf[300000];

/* Reads one message into rbuf; returns its length. */
static int read_one(pt_pipe *p)
{
    DWORD err = 0;
    int n = pt_read_msg(p, rbuf, sizeof(rbuf), SBT_REPLY_MS, &err);
    if (n == -1)
        fail_msg("no message within %d ms", SBT_REPLY_MS);
    if (n == -2)
        fail_msg("the pipe broke: error %lu", (unsigned long)err);
    return n;
}

static void expect_read(pt_pipe *p, const char *want)
{
    int n = read_one(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(rbuf, want, (size_t)n);
}

static void expect_msg(sbt_conn *c, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, "from-ext", sbt_int(m, "msg_id"));
    json_decref(m);
}

static void test_client_message(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "cli-msg", &n);
    char want[200];
    pt_pipe *s;
    size_t big_len = 200000;
    char *big = malloc(big_len + 1);

    assert_non_null(big);
    memset(big, 'B', big_len);
    big[big_len] = '\0';
    /* Nobody serves the pipe yet: one warning, whatever the attempts. */
    snprintf(want, sizeof(want), "cannot connect to %s: ", n.path[0]);
    sbt_broker_wait_log(b, want, 3, 5000);
    snprintf(want, sizeof(want), "warn [ext] cannot connect to %s: ", n.path[0]);
    {
        char *log = sbt_broker_log_since(b);
        assert_int_equal(sbt_count(log, want), 1);
        free(log);
    }

    s = pt_server(n.path[0], 1);
    accept_ok(s);
    snprintf(want, sizeof(want), "[ext] connected to %s (raw)", n.path[0]);
    sbt_broker_wait_log(b, want, 1, 5000);

    /* Broker -> server: one delivery per pipe message. */
    sbt_pub(c, "ext/out/1", "a\nb", 1);
    sbt_pub(c, "ext/out/2", "c", 1);
    expect_read(s, "a\nb");
    expect_read(s, "c");
    sbt_wait_queue_int(c, "to-ext:ext", "depth", 0, 5000);

    /* Server -> broker: each pipe message is published. */
    sbt_sub(c, "from-ext", NULL, 10);
    pt_write_ok(s, "hello\nthere", 11);
    pt_write_ok(s, "x", 1);
    expect_msg(c, "ext/in", "hello\nthere");
    expect_msg(c, "ext/in", "x");

    /* A delivery larger than the pipe's buffers is in the middle of its
     * write when the server goes away: nacked, and retried later. */
    sbt_broker_mark_log(b);
    sbt_pub(c, "ext/out/big", big, 1);
    sbt_wait_queue_int(c, "to-ext:ext", "inflight", 1, 5000);
    pt_close(s);
    snprintf(want, sizeof(want), "[ext] disconnected from %s; reconnecting", n.path[0]);
    sbt_broker_wait_log(b, want, 1, 5000);
    sbt_pub(c, "ext/out/3", "while down", 1);
    snprintf(want, sizeof(want), "cannot connect to %s: ", n.path[0]);
    sbt_broker_wait_log(b, want, 3, 5000);
    {
        char *log = sbt_broker_log_since(b);
        snprintf(want, sizeof(want), "warn [ext] cannot connect to %s: ", n.path[0]);
        assert_int_equal(sbt_count(log, want), 1);
        snprintf(want, sizeof(want), "disconnected from %s", n.path[0]);
        assert_int_equal(sbt_count(log, want), 1);
        free(log);
    }

    /* The server is back: reconnected, and what waited arrives. */
    s = pt_server(n.path[0], 1);
    accept_ok(s);
    /* Both arrive, whole; the nacked one may come after the newer one (it
     * waits for its retry backoff). */
    for (int i = 0, got_big = 0, got_down = 0; i < 2; i++) {
        int len = read_one(s);
        if ((size_t)len == big_len && memcmp(rbuf, big, big_len) == 0 && !got_big)
            got_big = 1;
        else if (len == 10 && memcmp(rbuf, "while down", 10) == 0 && !got_down)
            got_down = 1;
        else
            fail_msg("unexpected delivery of %d bytes: %.40s", len, rbuf);
    }
    sbt_wait_queue_int(c, "to-ext:ext", "depth", 0, 5000);
    snprintf(want, sizeof(want), "[ext] connected to %s (raw)", n.path[0]);
    sbt_broker_wait_log(b, want, 1, 5000);
    pt_write_ok(s, "back", 4);
    expect_msg(c, "ext/in", "back");

    pt_close(s);
    free(big);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_client_line(void **state)
{
    sbt_broker *b = *state;
    names n;
    pt_pipe *s, *m;
    sbt_conn *c;
    char line[64], want[300];

    /* Served before the broker starts: connected at once. */
    pt_name(n.name[1], sizeof(n.name[1]), "cli-line-extl");
    pt_path(n.path[1], sizeof(n.path[1]), n.name[1]);
    s = pt_server(n.path[1], 0);
    pt_name(n.name[2], sizeof(n.name[2]), "cli-line-mism");
    pt_path(n.path[2], sizeof(n.path[2]), n.name[2]);
    m = pt_server(n.path[2], 0);
    c = start_broker(b, "cli-line", &n);
    accept_ok(s);

    sbt_pub(c, "extl/out/1", "l1", 1);
    assert_int_equal(pt_read_line(s, line, sizeof(line), SBT_REPLY_MS), 2);
    assert_string_equal(line, "l1");
    sbt_sub(c, "from-ext", NULL, 10);
    pt_write_ok(s, "in1\nin", 6);
    pt_write_ok(s, "2\n", 2);
    expect_msg(c, "extl/in", "in1");
    expect_msg(c, "extl/in", "in2");

    /* framing: message cannot read a byte-mode pipe. */
    accept_ok(m);
    snprintf(want, sizeof(want),
             "warn [mism] cannot connect to %s: framing message needs a message-mode pipe",
             n.path[2]);
    sbt_broker_wait_log(b, want, 1, 5000);

    pt_close(m);
    pt_close(s);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_message, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_client_line, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
