/*
 * A stream adapter's connection (adapters/stream_core.c over conn.c and
 * conn_uv.c) holds what it sends during a loop turn and writes it at the
 * end of the turn in one write: several packets reach the peer as one
 * record of a SOCK_SEQPACKET socketpair, nothing before the loop runs;
 * output larger than the socket takes arrives whole and in order, and the
 * sender's pieces are not needed once sb_conn_send2 returns; a stop writes
 * what was held. POSIX.
 */
#include "adapters/conn.h"
#include "adapters/stream_core.h"
#include "adapters/stream_keys.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

static int stopped;

static int proto_open(sb_conn *c)
{
    c->session = &stopped;
    return 0;
}

static size_t data_in; /* bytes proto_data took */

static int proto_data(sb_conn *c, const char *buf, size_t len)
{
    (void)c;
    (void)buf;
    data_in += len;
    return 0;
}

static void proto_closed(sb_conn *c)
{
    (void)c;
}

static int drained; /* proto_drained calls */

static void proto_drained(sb_conn *c)
{
    (void)c;
    drained++;
}

static const sb_protocol test_proto = {"test", proto_open, proto_data, proto_closed,
                                       proto_drained, NULL};

static void on_stopped(sb_adapter *a)
{
    (void)a;
    stopped++;
}

typedef struct fixture {
    uv_loop_t loop;
    sb_adapter a;
    sb_adapter_config cfg;
    sb_stream_settings ss;
    sb_stream st;
    sb_conn *c;
    int peer; /* the other end of the socketpair, non-blocking */
} fixture;

/* A server stream adapter with one connection over a socketpair of type;
 * its end's send buffer is sndbuf bytes if not 0 (0 when the system
 * refuses that many). */
static int setup_sized(fixture *f, int type, int sndbuf)
{
    uv_pipe_t *pipe;
    int fds[2];
    memset(f, 0, sizeof(*f));
    assert_int_equal(socketpair(AF_UNIX, type, 0, fds), 0);
    if (sndbuf > 0) {
        int got = 0;
        socklen_t len = sizeof got;
#ifdef SO_SNDBUFFORCE /* past net.core.wmem_max, when privileged */
        if (setsockopt(fds[0], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0)
#endif
            (void)setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        assert_int_equal(getsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &got, &len), 0);
        if (got < sndbuf) {
            close(fds[0]);
            close(fds[1]);
            return 0;
        }
    }
    assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
    f->peer = fds[1];
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->a.name = "t";
    f->a.loop = &f->loop;
    f->cfg.settings = &f->ss;
    f->a.cfg = &f->cfg;
    sb_stream_init(&f->st, &f->a, 1, NULL);
    pipe = sb_malloc(sizeof(*pipe));
    assert_non_null(pipe);
    assert_int_equal(uv_pipe_init(&f->loop, pipe, 0), 0);
    assert_int_equal(uv_pipe_open(pipe, fds[0]), 0);
    f->c = sb_stream_conn_new(&f->st);
    assert_non_null(f->c);
    sb_stream_add(&f->st, f->c);
    assert_int_equal(sb_conn_start_uv(f->c, &f->a, &test_proto, (uv_stream_t *)pipe,
                                      (uv_stream_t *)pipe, "peer"),
                     0);
    return 1;
}

static void setup(fixture *f, int type)
{
    assert_int_equal(setup_sized(f, type, 0), 1);
}

/* Stops the adapter and runs the loop until it reported stopped. */
static void stop(fixture *f)
{
    stopped = 0;
    f->a.stopping = 1;
    sb_stream_stop(&f->st, on_stopped);
    sb_stream_maybe_stopped(&f->st);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(stopped, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void teardown(fixture *f)
{
    stop(f);
    close(f->peer);
}

/* Reads what the peer end has now into got (up to cap); returns the total. */
static size_t drain_peer(int fd, unsigned char *got, size_t have, size_t cap)
{
    for (;;) {
        ssize_t n = read(fd, got + have, cap - have < 65536 ? cap - have : 65536);
        if (n <= 0) {
            assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            return have;
        }
        have += (size_t)n;
        if (have == cap)
            return have;
    }
}

static void test_one_write_per_turn(void **state)
{
    unsigned char ack1[4] = {0x40, 2, 0, 1}, ack2[4] = {0x40, 2, 0, 2}, hdr[3] = {0x30, 5, 0};
    unsigned char want[4 + 4 + 3 + 4], got[64];
    fixture f;
    ssize_t n;
    (void)state;

    setup(&f, SOCK_SEQPACKET);
    assert_int_equal(sb_conn_send(f.c, ack1, 4, NULL), 0);
    assert_int_equal(sb_conn_send(f.c, ack2, 4, NULL), 0);
    assert_int_equal(sb_conn_send2(f.c, hdr, 3, "body", 4, NULL), 0);
    /* held until the loop's turn ends */
    assert_true(read(f.peer, got, sizeof got) < 0 && errno == EAGAIN);
    assert_int_equal(uv_run(&f.loop, UV_RUN_NOWAIT), 1);
    memcpy(want, ack1, 4);
    memcpy(want + 4, ack2, 4);
    memcpy(want + 8, hdr, 3);
    memcpy(want + 11, "body", 4);
    /* one record: one write */
    n = read(f.peer, got, sizeof got);
    assert_int_equal(n, sizeof want);
    assert_memory_equal(got, want, sizeof want);
    assert_true(read(f.peer, got, sizeof got) < 0 && errno == EAGAIN);
    teardown(&f);
}

static void test_larger_than_the_socket_takes(void **state)
{
    /* Two frames (header + payload) in one turn; the first's 2 MiB payload
     * does not fit the socket's buffer, so the rest waits for the loop. */
    enum { HDR = 5, BIG = 2 * 1024 * 1024, SMALL = 300 };
    size_t total = HDR + BIG + HDR + SMALL, have = 0;
    unsigned char hdr1[HDR] = {1, 2, 3, 4, 5}, hdr2[HDR] = {6, 7, 8, 9, 10};
    unsigned char *big = sb_malloc(BIG), *small = sb_malloc(SMALL), *want, *got;
    fixture f;
    (void)state;

    want = sb_malloc(total);
    got = sb_malloc(total);
    assert_non_null(big);
    assert_non_null(small);
    assert_non_null(want);
    assert_non_null(got);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (unsigned char)(i * 7 + i / 251);
    for (size_t i = 0; i < SMALL; i++)
        small[i] = (unsigned char)(255 - i);
    memcpy(want, hdr1, HDR);
    memcpy(want + HDR, big, BIG);
    memcpy(want + HDR + BIG, hdr2, HDR);
    memcpy(want + HDR + BIG + HDR, small, SMALL);

    setup(&f, SOCK_STREAM);
    assert_int_equal(sb_conn_send2(f.c, hdr1, HDR, big, BIG, NULL), 0);
    assert_int_equal(sb_conn_send2(f.c, hdr2, HDR, small, SMALL, NULL), 0);
    /* the caller's buffers are not needed once send2 returns */
    memset(big, 0, BIG);
    memset(small, 0, SMALL);
    assert_int_equal(drain_peer(f.peer, got, 0, total), 0);
    while (have < total) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
        have = drain_peer(f.peer, got, have, total);
    }
    assert_memory_equal(got, want, total);
    teardown(&f);
    sb_free(big);
    sb_free(small);
    sb_free(want);
    sb_free(got);
}

static void test_stop_writes_what_was_held(void **state)
{
    unsigned char ack[4] = {0x40, 2, 0, 7}, got[16];
    fixture f;
    (void)state;

    setup(&f, SOCK_SEQPACKET);
    assert_int_equal(sb_conn_send(f.c, ack, 4, NULL), 0);
    assert_true(read(f.peer, got, sizeof got) < 0 && errno == EAGAIN);
    stop(&f); /* before the loop ran a turn */
    assert_int_equal(read(f.peer, got, sizeof got), 4);
    assert_memory_equal(got, ack, 4);
    close(f.peer);
}

/* An MQTT DISCONNECT's close_after_write waits for the held output (the
 * ack before it); the stop of a reload or shutdown then comes in the same
 * turn, and its close writes what was held, which ends the connection
 * once: no second close of the transport. */
static void test_close_after_write_then_stop(void **state)
{
    unsigned char ack[4] = {0x40, 2, 0, 7}, got[16];
    fixture f;
    (void)state;

    setup(&f, SOCK_SEQPACKET);
    assert_int_equal(sb_conn_send(f.c, ack, 4, NULL), 0);
    sb_conn_close_after_write(f.c, NULL); /* held: waits for the flush */
    stop(&f);
    assert_int_equal(read(f.peer, got, sizeof got), 4);
    assert_memory_equal(got, ack, 4);
    close(f.peer);
}

/* The same with a close in that turn (an MQTT takeover by a client that
 * reconnects with the same id). */
static void test_close_after_write_then_close(void **state)
{
    unsigned char ack[4] = {0x40, 2, 0, 7}, got[16];
    fixture f;
    (void)state;

    setup(&f, SOCK_SEQPACKET);
    assert_int_equal(sb_conn_send(f.c, ack, 4, NULL), 0);
    sb_conn_close_after_write(f.c, NULL);
    sb_conn_close(f.c, "taken over");
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(read(f.peer, got, sizeof got), 4);
    assert_memory_equal(got, ack, 4);
    assert_int_equal(read(f.peer, got, sizeof got), 0); /* closed */
    teardown(&f);
}

/* More output in one turn than a connection may hold stops its reading;
 * when the end of the turn writes it all at once (the socket takes it), no
 * write completes later, and the flush itself resumes reading and tells
 * the protocol (drained: an MQTT subscriber's deliveries go on). */
static void test_reading_resumes_when_the_flush_writes_all(void **state)
{
    enum { BIG = SB_CONN_MAX_OUTPUT + 1024 * 1024 };
    unsigned char *big = sb_malloc(BIG), *got = sb_malloc(BIG);
    size_t have = 0;
    uint64_t deadline;
    fixture f;
    (void)state;

    assert_non_null(big);
    assert_non_null(got);
    memset(big, 'x', BIG);
    /* a send buffer (doubled by Linux) that takes it all at once */
    if (!setup_sized(&f, SOCK_STREAM, BIG)) {
        sb_free(big);
        sb_free(got);
        skip(); /* the system refuses a send buffer that large */
    }
    drained = 0;
    data_in = 0;
    assert_int_equal(sb_conn_send(f.c, big, BIG, NULL), 0);
    assert_int_equal(write(f.peer, "ping", 4), 4);
    deadline = uv_hrtime() + 5000000000u;
    while ((have < BIG || data_in < 4) && uv_hrtime() < deadline) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
        if (have < BIG)
            have = drain_peer(f.peer, got, have, BIG);
    }
    assert_int_equal(have, BIG);
    assert_int_equal(data_in, 4);
    assert_int_equal(drained, 1);
    teardown(&f);
    sb_free(big);
    sb_free(got);
}

/* A turn's output that the socket takes at once leaves no buffer behind:
 * an idle connection (most of 10,000 sessions) costs none, whatever size
 * its last output was. */
static void test_idle_connection_keeps_no_buffer(void **state)
{
    static unsigned char big[40000];
    unsigned char got[sizeof big];
    fixture f;
    (void)state;

    setup(&f, SOCK_SEQPACKET);
    assert_int_equal(sb_conn_send(f.c, big, sizeof big, NULL), 0);
    assert_non_null(f.c->obuf);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(read(f.peer, got, sizeof got), (ssize_t)sizeof big);
    assert_int_equal(f.c->olen, 0);
    assert_null(f.c->obuf);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_write_per_turn),
        cmocka_unit_test(test_larger_than_the_socket_takes),
        cmocka_unit_test(test_stop_writes_what_was_held),
        cmocka_unit_test(test_close_after_write_then_stop),
        cmocka_unit_test(test_close_after_write_then_close),
        cmocka_unit_test(test_reading_resumes_when_the_flush_writes_all),
        cmocka_unit_test(test_idle_connection_keeps_no_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
