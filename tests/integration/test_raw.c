/*
 * The raw protocol over TCP with real sockets on both sides: line and length
 * framed producers (topic templates with {adapter} and {peer}), frames over
 * max_message and a 4 GB length prefix closing only their connection, a
 * half-written frame at disconnect discarded and logged, a raw sink on a
 * listener (messages wait while nobody is connected) and a `connect` sink
 * dialing a listener the test runs.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* (debug: a client logs a failed connect once at warn, repeats at debug) */
static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "  log: { level: debug }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: lines\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    framing: line\n"
                             "    topic: raw/{adapter}/{peer}\n"
                             "    max_message: 64\n"
                             "  - name: frames\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port2}\n"
                             "    framing: length\n"
                             "    topic: len/{adapter}\n"
                             "    max_message: 1024\n"
                             "  - name: out\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port3}\n"
                             "    framing: line\n"
                             "  - name: uplink\n"
                             "    type: tcp\n"
                             "    connect: 127.0.0.1:{v0}\n"
                             "    framing: length\n"
                             "    reconnect_backoff: 20ms\n"
                             "    reconnect_max_backoff: 100ms\n"
                             "routes:\n"
                             "  - name: raw-in\n"
                             "    from: raw/#\n"
                             "  - name: len-in\n"
                             "    from: len/#\n"
                             "  - name: to-out\n"
                             "    from: sinkout/#\n"
                             "    to: out\n"
                             "    retry: { max_attempts: 2, backoff: 10ms }\n"
                             "  - name: to-uplink\n"
                             "    from: uplink/#\n"
                             "    to: uplink\n";

/* Starts the broker; the uplink adapter dials *uplink (a listener the test
 * owns, on a port picked by the OS). */
static sbt_conn *start(sbt_broker *b, const char *name, sbt_listener **uplink)
{
    char port[16];
    sbt_listener *l = sbt_listen(0);
    assert_non_null(l);
    snprintf(port, sizeof(port), "%d", sbt_listener_port(l));
    sbt_broker_init(b, name, 4);
    sbt_broker_set(b, 0, port);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    if (uplink != NULL)
        *uplink = l;
    else
        sbt_listener_close(l);
    return sbt_connect(b->port[0]);
}

static sbt_tcp *raw_connect(int port)
{
    sbt_tcp *t = sbt_tcp_connect(port, 5000);
    if (t == NULL)
        fail_msg("cannot connect to 127.0.0.1:%d", port);
    return t;
}

static void raw_write(sbt_tcp *t, const void *data, size_t len)
{
    assert_int_equal(sbt_tcp_write(t, data, len), 0);
}

static void raw_puts(sbt_tcp *t, const char *s)
{
    raw_write(t, s, strlen(s));
}

/* Writes one length-prefixed frame. */
static void frame_write(sbt_tcp *t, const void *data, uint32_t len)
{
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};
    raw_write(t, hdr, 4);
    if (len > 0)
        raw_write(t, data, len);
}

/* The next delivery must have this topic and payload; acks it. */
static void expect(sbt_conn *c, const char *sub, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), sub);
    if (topic != NULL)
        assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

static void test_line_producer(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-lines", NULL);
    sbt_tcp *t1, *t2, *t3, *t4;
    char topic[64], topic2[64], source[64], line[200], big[128];
    json_t *m;
    int p1, p2, p3, p4;

    t1 = raw_connect(b->port[1]);
    t2 = raw_connect(b->port[1]);
    p1 = sbt_tcp_local_port(t1);
    p2 = sbt_tcp_local_port(t2);
    snprintf(topic, sizeof(topic), "raw/lines/127.0.0.1:%d", p1);
    snprintf(topic2, sizeof(topic2), "raw/lines/127.0.0.1:%d", p2);
    raw_puts(t1, "hello\nworld\r\n");
    sbt_sub(c, "raw-in", NULL, 100);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), "hello");
    snprintf(source, sizeof(source), "lines 127.0.0.1:%d", p1);
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "source"), source);
    sbt_ack(c, "raw-in", sbt_int(m, "msg_id"));
    json_decref(m);
    expect(c, "raw-in", topic, "world");

    /* Exactly max_message is fine. */
    memset(big, 'a', 64);
    big[64] = '\n';
    raw_write(t1, big, 65);
    big[64] = '\0';
    expect(c, "raw-in", topic, big);

    /* A line longer than max_message without its newline: the connection
     * closes, the broker says why, and keeps serving the others. */
    memset(big, 'x', 100);
    raw_write(t1, big, 100);
    assert_true(sbt_tcp_wait_closed(t1, 5000));
    snprintf(line, sizeof(line),
             "[lines] peer 127.0.0.1:%d: line longer than max_message 64; closing", p1);
    sbt_broker_wait_log(b, line, 1, 5000);
    raw_puts(t2, "after\n");
    expect(c, "raw-in", topic2, "after");

    /* The same with the newline in the same write. */
    t3 = raw_connect(b->port[1]);
    p3 = sbt_tcp_local_port(t3);
    memset(big, 'y', 70);
    big[70] = '\n';
    raw_write(t3, big, 71);
    assert_true(sbt_tcp_wait_closed(t3, 5000));
    snprintf(line, sizeof(line),
             "[lines] peer 127.0.0.1:%d: line longer than max_message 64; closing", p3);
    sbt_broker_wait_log(b, line, 1, 5000);

    /* A half-written line at disconnect is discarded (and logged). */
    t4 = raw_connect(b->port[1]);
    p4 = sbt_tcp_local_port(t4);
    raw_puts(t4, "partial");
    sbt_tcp_close(t4);
    snprintf(line, sizeof(line),
             "[lines] peer 127.0.0.1:%d: disconnected in the middle of a frame; 7 bytes discarded",
             p4);
    sbt_broker_wait_log(b, line, 1, 5000);
    raw_puts(t2, "marker\n");
    expect(c, "raw-in", topic2, "marker");
    sbt_wait_queue_int(c, "raw-in", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "raw-in", "published"), 5);

    sbt_tcp_close(t1);
    sbt_tcp_close(t2);
    sbt_tcp_close(t3);
    sbt_close(c);
    b->passed = 1;
}

/* Golden bad frames (tests/data/frames): each is refused or discarded with
 * the expected log line naming the adapter and peer, and none is published. */
static void test_golden_frames(void **state)
{
    static const char *const names[] = {"length-4gb-prefix", "length-over-max",
                                        "length-truncated",  "length-header-only",
                                        "line-too-long",     "line-unterminated"};
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-golden", NULL);
    char dir[SBT_PATH_MAX], path[SBT_PATH_MAX], file[128], line[300];

    sbt_path(dir, sizeof(dir), sbt_test_data(), "frames");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int is_length = strncmp(names[i], "length-", 7) == 0;
        size_t len;
        char *data, *expected, *nl;
        sbt_tcp *t;
        int port;

        snprintf(file, sizeof(file), "%s.bin", names[i]);
        sbt_path(path, sizeof(path), dir, file);
        data = sbt_read_file(path, &len);
        snprintf(file, sizeof(file), "%s.expected", names[i]);
        sbt_path(path, sizeof(path), dir, file);
        expected = sbt_read_file(path, NULL);
        assert_non_null(data);
        assert_non_null(expected);
        if ((nl = strchr(expected, '\n')) != NULL)
            *nl = '\0';
        t = raw_connect(b->port[is_length ? 2 : 1]);
        port = sbt_tcp_local_port(t);
        raw_write(t, data, len);
        sbt_tcp_close(t);
        snprintf(line, sizeof(line), "[%s] peer 127.0.0.1:%d: %s", is_length ? "frames" : "lines",
                 port, expected);
        sbt_broker_wait_log(b, line, 1, 5000);
        free(data);
        free(expected);
    }
    assert_int_equal(sbt_queue_int(c, "len-in", "published"), 0);
    assert_int_equal(sbt_queue_int(c, "raw-in", "published"), 0);
    sbt_close(c);
    b->passed = 1;
}

static void test_length_framing(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-length", NULL);
    sbt_tcp *t = raw_connect(b->port[2]), *bad, *half;
    static const unsigned char bin[3] = {0x00, 0xff, 0x10};
    static const unsigned char huge[4] = {0xff, 0xff, 0xff, 0xff};
    unsigned char hdr[4] = {0, 0, 0, 6};
    char line[200];
    json_t *m;
    int pb, ph;

    frame_write(t, "hello", 5);
    frame_write(t, "abc", 3);
    /* A frame split over several writes is reassembled. */
    raw_write(t, hdr, 2);
    raw_write(t, hdr + 2, 2);
    raw_write(t, "wor", 3);
    raw_write(t, "ld!", 3);
    frame_write(t, bin, 3);
    sbt_sub(c, "len-in", NULL, 100);
    expect(c, "len-in", "len/frames", "hello");
    expect(c, "len-in", "len/frames", "abc");
    expect(c, "len-in", "len/frames", "world!");
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_null(json_object_get(m, "payload"));
    assert_string_equal(sbt_str(m, "payload_b64"), "AP8Q");
    sbt_ack(c, "len-in", sbt_int(m, "msg_id"));
    json_decref(m);

    /* A 4 GB length prefix closes that connection only. */
    bad = raw_connect(b->port[2]);
    pb = sbt_tcp_local_port(bad);
    raw_write(bad, huge, 4);
    assert_true(sbt_tcp_wait_closed(bad, 5000));
    snprintf(
        line, sizeof(line),
        "[frames] peer 127.0.0.1:%d: frame length 4294967295 exceeds max_message 1024; closing",
        pb);
    sbt_broker_wait_log(b, line, 1, 5000);
    frame_write(t, "still", 5);
    expect(c, "len-in", "len/frames", "still");

    /* Header and 3 of 10 bytes, then disconnect: 7 bytes discarded. */
    half = raw_connect(b->port[2]);
    ph = sbt_tcp_local_port(half);
    hdr[3] = 10;
    raw_write(half, hdr, 4);
    raw_write(half, "abc", 3);
    sbt_tcp_close(half);
    snprintf(line, sizeof(line),
             "[frames] peer 127.0.0.1:%d: disconnected in the middle of a frame; 7 bytes discarded",
             ph);
    sbt_broker_wait_log(b, line, 1, 5000);
    frame_write(t, "marker", 6);
    expect(c, "len-in", "len/frames", "marker");
    sbt_wait_queue_int(c, "len-in", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "len-in", "published"), 6);

    sbt_tcp_close(bad);
    sbt_tcp_close(t);
    sbt_close(c);
    b->passed = 1;
}

static void test_raw_sink_on_listener(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-sink", NULL);
    sbt_tcp *t;
    char line[256];
    json_t *r, *d;

    /* Nobody connected: the messages wait in the queue. */
    sbt_pub(c, "sinkout/a", "s1", 1);
    sbt_pub(c, "sinkout/a", "s2", 1);
    sbt_pub(c, "sinkout/b", "s3", 1);
    assert_int_equal(sbt_queue_int(c, "to-out:out", "depth"), 3);
    assert_int_equal(sbt_queue_int(c, "to-out:out", "delivered"), 0);

    t = raw_connect(b->port[3]);
    for (int i = 1; i <= 3; i++) {
        char want[8];
        snprintf(want, sizeof(want), "s%d", i);
        assert_int_equal(sbt_tcp_read_line(t, line, sizeof(line), 5000), 2);
        assert_string_equal(line, want);
    }
    /* Written means delivered: the queue empties. */
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "to-out:out", "acked"), 3);

    /* A payload with a newline cannot be framed as a line: dead-lettered
     * after its attempts, and the next message still goes out. */
    sbt_pub(c, "sinkout/a", "bad\nline", 1);
    sbt_pub(c, "sinkout/a", "s4", 1);
    assert_int_equal(sbt_tcp_read_line(t, line, sizeof(line), 5000), 2);
    assert_string_equal(line, "s4");
    sbt_wait_queue_int(c, "to-out:out", "dead", 1, 5000);
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "to-out:out");
        if (json_array_size(json_object_get(r, "items")) == 1)
            break;
        json_decref(r);
        assert_true(sbt_now_ms() < deadline);
        sbt_poll_pause(10);
    }
    d = json_array_get(json_object_get(r, "items"), 0);
    assert_string_equal(sbt_str(d, "payload"), "bad\nline");
    assert_string_equal(sbt_str(d, "reason"),
                        "payload contains a newline; it cannot be sent with line framing (after 2 "
                        "attempts)");
    json_decref(r);

    sbt_tcp_close(t);
    sbt_close(c);
    b->passed = 1;
}

/* Reads one length-prefixed frame into out (NUL-terminated). */
static void frame_read(sbt_tcp *t, char *out, size_t cap)
{
    unsigned char hdr[4];
    uint32_t n;
    assert_int_equal(sbt_tcp_read_exact(t, hdr, 4, 5000), 4);
    n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    assert_true(n < cap);
    assert_int_equal(sbt_tcp_read_exact(t, out, n, 5000), (int)n);
    out[n] = '\0';
}

static void test_connect_sink(void **state)
{
    sbt_broker *b = *state;
    sbt_listener *l;
    sbt_conn *c = start(b, "raw-connect", &l);
    sbt_tcp *t;
    char buf[64];
    int lport = sbt_listener_port(l);

    t = sbt_accept(l, 5000);
    assert_non_null(t);
    sbt_pub(c, "uplink/a", "u1", 1);
    sbt_pub(c, "uplink/a", "u2", 1);
    frame_read(t, buf, sizeof(buf));
    assert_string_equal(buf, "u1");
    frame_read(t, buf, sizeof(buf));
    assert_string_equal(buf, "u2");
    sbt_wait_queue_int(c, "to-uplink:uplink", "depth", 0, 5000);

    /* The peer goes away, and its listener too: messages wait, and the
     * broker dials again until the listener is back. */
    sbt_tcp_close(t);
    sbt_listener_close(l);
    snprintf(buf, sizeof(buf), "[uplink] disconnected from 127.0.0.1:%d; reconnecting", lport);
    sbt_broker_wait_log(b, buf, 1, 5000);
    sbt_pub(c, "uplink/a", "u3", 1);
    sbt_pub(c, "uplink/a", "u4", 1);
    snprintf(buf, sizeof(buf), "[uplink] cannot connect to 127.0.0.1:%d", lport);
    /* (A refused connect takes a few seconds on Windows.) */
    sbt_broker_wait_log(b, buf, 2, 15000);
    {
        /* The link going down is a warning once; the retries are debug. */
        char *log = sbt_broker_log_since(b);
        snprintf(buf, sizeof(buf), "warn [uplink] cannot connect to 127.0.0.1:%d", lport);
        assert_int_equal(sbt_count(log, buf), 1);
        free(log);
    }
    assert_int_equal(sbt_queue_int(c, "to-uplink:uplink", "depth"), 2);
    l = sbt_listen(lport);
    assert_non_null(l);
    t = sbt_accept(l, 5000);
    assert_non_null(t);
    frame_read(t, buf, sizeof(buf));
    assert_string_equal(buf, "u3");
    frame_read(t, buf, sizeof(buf));
    assert_string_equal(buf, "u4");
    sbt_wait_queue_int(c, "to-uplink:uplink", "depth", 0, 5000);

    sbt_tcp_close(t);
    sbt_listener_close(l);
    sbt_close(c);
    b->passed = 1;
}

/* Publishes n messages of size bytes to topic (pipelined). */
static void pub_big(sbt_conn *c, const char *topic, int n, size_t size)
{
    char *payload = malloc(size + 1);
    assert_non_null(payload);
    memset(payload, 'w', size);
    payload[size] = '\0';
    for (int i = 0; i < n; i++) {
        payload[0] = (char)('a' + i % 26);
        sbt_send(c, "{s:s, s:i, s:s, s:s}", "op", "pub", "id", i + 1, "topic", topic, "payload",
                 payload);
    }
    for (int i = 0; i < n; i++) {
        json_t *r = sbt_read(c, SBT_REPLY_MS);
        assert_non_null(r);
        sbt_expect_op(r, "puback");
        json_decref(r);
    }
    free(payload);
}

/* A sink peer that does not read: deliveries back up in the broker's
 * output. An orderly stop then must not trip over them. */
static void test_stop_with_backed_up_sink(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-backed-up", NULL);
    sbt_tcp *t = raw_connect(b->port[3]);

    sbt_tcp_pause(t);
    sbt_broker_wait_log(b, "[out] peer 127.0.0.1:", 1, 5000);
    pub_big(c, "sinkout/a", 60, 256 * 1024);
    /* Some went out, the rest wait behind the full socket. */
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        json_t *q = sbt_queue_stats(c, "to-out:out");
        int64_t inflight = sbt_int(q, "inflight"), depth = sbt_int(q, "depth");
        json_decref(q);
        if (inflight > 0 && depth >= inflight)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("to-out:out: inflight %lld, depth %lld: not backed up", (long long)inflight,
                     (long long)depth);
        sbt_poll_pause(10);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_tcp_close(t);
    b->passed = 1;
}

/* A sink peer that reads slowly: the broker's output backs up, then drains
 * as the peer reads, and every message arrives once, in order. */
static void test_slow_sink_reader(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "raw-slow-reader", NULL);
    sbt_tcp *t = raw_connect(b->port[3]);
    size_t size = 256 * 1024;
    char *buf = malloc(size + 16);

    assert_non_null(buf);
    sbt_tcp_pause(t);
    sbt_broker_wait_log(b, "[out] peer 127.0.0.1:", 1, 5000);
    /* While the test publishes, it does not read: the output backs up. */
    pub_big(c, "sinkout/a", 60, size);
    for (int i = 0; i < 60; i++) {
        int n = sbt_tcp_read_line(t, buf, size + 16, 10000);
        if (n < 0)
            fail_msg("message %d of 60 did not arrive (%d)", i + 1, n);
        assert_int_equal(n, (int)size);
        assert_int_equal(buf[0], 'a' + i % 26);
    }
    sbt_wait_queue_int(c, "to-out:out", "depth", 0, 5000);
    sbt_pub(c, "sinkout/a", "end", 1);
    assert_int_equal(sbt_tcp_read_line(t, buf, size + 16, 5000), 3);
    assert_string_equal(buf, "end");
    free(buf);
    sbt_tcp_close(t);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_producer, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_length_framing, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_golden_frames, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_raw_sink_on_listener, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_connect_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_backed_up_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_slow_sink_reader, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("raw", tests, NULL, NULL);
}
