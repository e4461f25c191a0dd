/*
 * jsonl over named pipes with real processes: the broker (switchboard.exe
 * run) and this program as a jsonl client of its pipes.
 *
 * - a jsonl pipe adapter: ping, pub/puback (also pipelined: acks in order),
 *   sub/subscribed/msg/ack, checked against the TCP adapter's stats;
 * - batches: the pubacks of the publishes one write carried come back in
 *   one write (a read waiting for them gets more than the first), and a
 *   burst far larger than a pipe read, cut into writes that split records,
 *   gets every puback in order;
 * - the default admin endpoint \\.\pipe\switchboard-admin: `switchboard run`
 *   with no admin setting serves jsonl on it. (This test holds the ctest
 *   resource lock switchboard-admin-pipe; it is skipped if another program
 *   already serves that pipe, e.g. an installed Switchboard service.)
 */
#include "tests/win/pipe/pipe_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char jsonl_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "  - name: local\n"
                                   "    type: pipe\n"
                                   "    path: '{v0}'\n"
                                   "    protocol: jsonl\n"
                                   "routes:\n"
                                   "  - name: jq\n"
                                   "    from: j/#\n"
                                   "  - name: mq\n"
                                   "    from: m/#\n"
                                   "    durability: memory\n";

static const char admin_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n";

static const char *op_of(const json_t *o)
{
    const char *op = json_string_value(json_object_get(o, "op"));
    return op != NULL ? op : "";
}

/* The next line, failing the test if none comes in time. */
static json_t *next(pt_pipe *p)
{
    json_t *o = pt_read_json(p, SBT_REPLY_MS);
    if (o == NULL)
        fail_msg("no reply within %d ms", SBT_REPLY_MS);
    return o;
}

static void test_jsonl_pipe(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128];
    sbt_conn *c;
    pt_pipe *p;
    json_t *r;
    int64_t first_id = 0;

    pt_name(name, sizeof(name), "jsonl");
    pt_path(path, sizeof(path), name);
    sbt_broker_init(b, "pipe-jsonl", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_config(b, jsonl_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    p = pt_open_ok(path, 0);

    pt_send_json(p, json_pack("{s:s, s:i}", "op", "ping", "id", 1));
    r = next(p);
    assert_string_equal(op_of(r), "pong");
    assert_int_equal(sbt_int(r, "id"), 1);
    json_decref(r);

    pt_send_json(p, json_pack("{s:s, s:i, s:s, s:s}", "op", "pub", "id", 2, "topic", "j/a",
                              "payload", "hello"));
    r = next(p);
    assert_string_equal(op_of(r), "puback");
    assert_int_equal(sbt_int(r, "id"), 2);
    assert_int_equal(sbt_int(r, "queues"), 1);
    first_id = sbt_int(r, "msg_id");
    json_decref(r);

    /* Pipelined: 100 publishes, then their acks, in order. */
    for (int i = 0; i < 100; i++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "p%d", i);
        pt_send_json(p, json_pack("{s:s, s:i, s:s, s:s}", "op", "pub", "id", 100 + i, "topic",
                                  "j/b", "payload", payload));
    }
    for (int i = 0; i < 100; i++) {
        r = next(p);
        assert_string_equal(op_of(r), "puback");
        assert_int_equal(sbt_int(r, "id"), 100 + i);
        json_decref(r);
    }
    assert_int_equal(sbt_queue_int(c, "jq", "depth"), 101);

    /* Subscribe over the pipe; ack everything. */
    pt_send_json(
        p, json_pack("{s:s, s:i, s:s, s:i}", "op", "sub", "id", 3, "sub", "jq", "window", 10));
    r = next(p);
    assert_string_equal(op_of(r), "subscribed");
    json_decref(r);
    for (int i = 0; i < 101; i++) {
        char want[16];
        r = next(p);
        assert_string_equal(op_of(r), "msg");
        if (i == 0) {
            assert_int_equal(sbt_int(r, "msg_id"), first_id);
            assert_string_equal(sbt_str(r, "payload"), "hello");
        } else {
            snprintf(want, sizeof(want), "p%d", i - 1);
            assert_string_equal(sbt_str(r, "payload"), want);
        }
        pt_send_json(p, json_pack("{s:s, s:s, s:I}", "op", "ack", "sub", "jq", "msg_id",
                                  (json_int_t)sbt_int(r, "msg_id")));
        json_decref(r);
    }
    sbt_wait_queue_int(c, "jq", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "jq", "acked"), 101);

    pt_close(p);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* Appends a pub line (id, topic m/<t>, a payload of `size` bytes). */
static size_t put_pub(char *out, size_t cap, int id, const char *t, int size)
{
    int n = snprintf(out, cap, "{\"op\":\"pub\",\"id\":%d,\"topic\":\"m/%s\",\"payload\":\"%d-", id,
                     t, id);
    assert_true(n > 0 && (size_t)n + (size_t)size + 4 < cap);
    for (int i = 0; i < size; i++)
        out[n++] = (char)('a' + i % 26);
    n += snprintf(out + n, cap - (size_t)n, "\"}\n");
    return (size_t)n;
}

static void expect_pubacks(pt_pipe *p, int first, int count)
{
    for (int i = 0; i < count; i++) {
        json_t *r = next(p);
        if (strcmp(op_of(r), "puback") != 0 || sbt_int(r, "id") != first + i)
            fail_msg("expected the puback of %d, got %s id %d", first + i, op_of(r),
                     (int)sbt_int(r, "id"));
        json_decref(r);
    }
}

static void test_jsonl_pipe_batches(void **state)
{
    enum { BATCH = 64, BURST = 3000, PIECE = 7777 };
    sbt_broker *b = *state;
    char name[64], path[128], *buf;
    size_t len = 0, cap = (size_t)BURST * 200;
    sbt_conn *c;
    pt_pipe *p;
    int lines = 0;

    pt_name(name, sizeof(name), "jbatch");
    pt_path(path, sizeof(path), name);
    sbt_broker_init(b, "pipe-jsonl-batch", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_config(b, jsonl_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    p = pt_open_ok(path, 0);
    buf = malloc(cap);
    assert_non_null(buf);

    /* One write of 64 publishes, with a read already waiting for the
     * answers: it gets more than the first puback. */
    for (int i = 0; i < BATCH; i++)
        len += put_pub(buf + len, cap - len, 1 + i, "a", 100);
    pt_read_begin(p);
    pt_write_ok(p, buf, len);
    assert_true(pt_read_end(p, SBT_REPLY_MS) > 0);
    for (size_t i = 0; i < p->len; i++)
        lines += p->buf[i] == '\n';
    if (lines < 2)
        fail_msg("the first read brought %d puback(s) of %d: the broker wrote the first alone",
                 lines, BATCH);
    expect_pubacks(p, 1, BATCH);

    /* A burst of 3000 publishes (~400 KB, several pipe reads), written in
     * pieces that cut records in two, before reading any answer. */
    len = 0;
    for (int i = 0; i < BURST; i++)
        len += put_pub(buf + len, cap - len, 1000 + i, "b", 100 + i % 50);
    for (size_t off = 0; off < len; off += PIECE)
        pt_write_ok(p, buf + off, len - off < PIECE ? len - off : PIECE);
    expect_pubacks(p, 1000, BURST);
    assert_int_equal(sbt_queue_int(c, "mq", "depth"), BATCH + BURST);

    free(buf);
    pt_close(p);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A line longer than max_message gets an error reply, then the close: the
 * reply, held for the end of the loop turn like all pipe output, is
 * written before the connection closes. */
static void test_jsonl_pipe_error_before_close(void **state)
{
    static const char config[] = "broker:\n"
                                 "  data_dir: '{data}'\n"
                                 "  admin: { endpoint: 'off' }\n"
                                 "adapters:\n"
                                 "  - name: clients\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port0}\n"
                                 "    protocol: jsonl\n"
                                 "  - name: local\n"
                                 "    type: pipe\n"
                                 "    path: '{v0}'\n"
                                 "    protocol: jsonl\n"
                                 "    max_message: 4KiB\n";
    sbt_broker *b = *state;
    enum { LONG = 80 * 1024 }; /* a line may hold 2 x max_message + 64 KiB */
    char name[64], path[128], *line = malloc(LONG);
    pt_pipe *p;
    json_t *o;

    assert_non_null(line);

    pt_name(name, sizeof(name), "jlong");
    pt_path(path, sizeof(path), name);
    sbt_broker_init(b, "pipe-jsonl-long", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    p = pt_open_ok(path, 0);
    memset(line, 'x', LONG);
    pt_write_ok(p, line, LONG);
    free(line);
    o = next(p);
    assert_string_equal(op_of(o), "error");
    assert_string_equal(json_string_value(json_object_get(o, "code")), "SB_ETOOBIG");
    json_decref(o);
    assert_true(pt_wait_closed(p, SBT_REPLY_MS));
    pt_close(p);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_admin_default(void **state)
{
    sbt_broker *b = *state;
    static const char admin[] = "\\\\.\\pipe\\switchboard-admin";
    pt_pipe *p;
    json_t *r;

    if (WaitNamedPipeW(L"\\\\.\\pipe\\switchboard-admin", 1) ||
        GetLastError() != ERROR_FILE_NOT_FOUND) {
        print_message("%s is served by another program: skipped\n", admin);
        skip();
    }
    sbt_broker_init(b, "pipe-admin", 1);
    sbt_broker_config(b, admin_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "[admin] listening on \\\\.\\pipe\\switchboard-admin (jsonl, byte mode)",
                        1, 5000);
    p = pt_open_ok(admin, 0);
    pt_send_json(p, json_pack("{s:s, s:i}", "op", "ping", "id", 7));
    r = next(p);
    assert_string_equal(op_of(r), "pong");
    assert_int_equal(sbt_int(r, "id"), 7);
    json_decref(r);
    pt_send_json(p, json_pack("{s:s, s:i}", "op", "stats", "id", 8));
    r = next(p);
    assert_string_equal(op_of(r), "stats");
    assert_non_null(json_object_get(r, "broker"));
    json_decref(r);
    pt_close(p);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_jsonl_pipe, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_pipe_batches, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_pipe_error_before_close, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_admin_default, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
