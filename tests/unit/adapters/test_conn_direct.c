/*
 * Output written straight from the sender's pieces (sb_conn_send2 on an
 * idle connection over a libuv stream, adapters/conn.c and conn_uv.c)
 * reaches the peer whole and in order, also when the socket takes only
 * part of it and the rest is queued; and the pieces are not needed once
 * sb_conn_send2 returns. POSIX: the peer is the other end of a socketpair.
 */
#include "adapters/conn.h"
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

static int closed_conns;

static int proto_open(sb_conn *c)
{
    c->session = &closed_conns;
    return 0;
}

static int proto_data(sb_conn *c, const char *buf, size_t len)
{
    (void)c;
    (void)buf;
    (void)len;
    return 0;
}

static void proto_closed(sb_conn *c)
{
    (void)c;
}

static void proto_drained(sb_conn *c)
{
    (void)c;
}

static const sb_protocol test_proto = {"test", proto_open, proto_data, proto_closed,
                                       proto_drained, NULL};

static void on_conn_closed(sb_conn *c)
{
    (void)c;
    closed_conns++;
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

static void test_direct_write_whole_and_in_order(void **state)
{
    /* Two frames (header + payload): the first is written straight from
     * the pieces, but its 4 MiB payload does not fit the socket's buffer,
     * so the rest is queued; the second follows in the same loop turn. */
    enum { HDR = 5, BIG = 4 * 1024 * 1024, SMALL = 300 };
    size_t total = HDR + BIG + HDR + SMALL, have = 0;
    unsigned char hdr1[HDR] = {1, 2, 3, 4, 5}, hdr2[HDR] = {6, 7, 8, 9, 10};
    unsigned char *big = sb_malloc(BIG), *small = sb_malloc(SMALL), *want, *got;
    uv_loop_t loop;
    uv_pipe_t *pipe;
    sb_adapter a;
    sb_conn *c;
    int fds[2];
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

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
    memset(&a, 0, sizeof(a));
    a.name = "t";
    closed_conns = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    a.loop = &loop;
    pipe = sb_malloc(sizeof(*pipe));
    assert_non_null(pipe);
    assert_int_equal(uv_pipe_init(&loop, pipe, 0), 0);
    assert_int_equal(uv_pipe_open(pipe, fds[0]), 0);
    c = sb_calloc(1, sizeof(*c));
    assert_non_null(c);
    c->on_closed = on_conn_closed;
    assert_int_equal(sb_conn_start_uv(c, &a, &test_proto, (uv_stream_t *)pipe,
                                      (uv_stream_t *)pipe, "peer"),
                     0);

    assert_int_equal(sb_conn_send2(c, hdr1, HDR, big, BIG, NULL), 0);
    /* part went out at once, without the loop; the rest waits */
    have = drain_peer(fds[1], got, have, total);
    assert_true(have >= HDR);
    assert_true(have < HDR + BIG);
    assert_true(c->writing || c->olen > 0);
    assert_int_equal(sb_conn_send2(c, hdr2, HDR, small, SMALL, NULL), 0);
    /* the caller's buffers are not needed once send2 returns */
    memset(big, 0, BIG);
    memset(small, 0, SMALL);
    while (have < total) {
        uv_run(&loop, UV_RUN_NOWAIT);
        have = drain_peer(fds[1], got, have, total);
    }
    assert_memory_equal(got, want, total);

    /* an idle connection, a later turn: the whole frame goes out at once */
    uv_update_time(&loop);
    while (uv_now(&loop) == c->try_write_ms) {
        usleep(1000);
        uv_update_time(&loop);
    }
    assert_int_equal(sb_conn_send2(c, hdr1, HDR, small, 10, NULL), 0);
    assert_int_equal(c->olen, 0);
    assert_false(c->writing);
    assert_int_equal(drain_peer(fds[1], got, 0, total), HDR + 10);
    assert_memory_equal(got, hdr1, HDR);

    sb_conn_close(c, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed_conns, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(fds[1]);
    sb_free(big);
    sb_free(small);
    sb_free(want);
    sb_free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_write_whole_and_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
