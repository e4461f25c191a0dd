/*
 * Connections over libuv streams (adapters/conn_uv.c): a connection whose
 * transport cannot be allocated still ends through sb_conn_close, its
 * streams closed and freed, nothing touched that was never set up.
 */
#include "adapters/conn.h"
#include "service/alloc.h"
#include "service/error.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static int opened, closed_sessions, closed_conns;

static int proto_open(sb_conn *c)
{
    opened++;
    c->session = &opened;
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
    closed_sessions++;
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

static uv_stream_t *new_handle(uv_loop_t *loop)
{
    uv_tcp_t *h = sb_malloc(sizeof(*h));
    assert_non_null(h);
    assert_int_equal(uv_tcp_init(loop, h), 0);
    return (uv_stream_t *)h;
}

static void run_start(int fail_transport, int two_streams)
{
    uv_loop_t loop;
    sb_adapter a;
    sb_conn *c;
    uv_stream_t *in, *out;
    int rc;

    memset(&a, 0, sizeof(a));
    a.name = "t";
    opened = closed_sessions = closed_conns = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    a.loop = &loop;
    in = new_handle(&loop);
    out = two_streams ? new_handle(&loop) : in;
    c = sb_calloc(1, sizeof(*c));
    assert_non_null(c);
    c->on_closed = on_conn_closed;
    if (fail_transport)
        sb_alloc_fail_once(0);
    rc = sb_conn_start_uv(c, &a, &test_proto, in, out, "peer");
    sb_alloc_fail_once(-1);
    assert_int_equal(rc, fail_transport ? SB_ENOMEM : 0);
    assert_int_equal(opened, fail_transport ? 0 : 1);
    sb_conn_close(c, fail_transport ? "cannot start the protocol session" : NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed_conns, 1);
    assert_int_equal(closed_sessions, fail_transport ? 0 : 1);
    assert_int_equal(uv_loop_close(&loop), 0); /* every handle closed */
}

static void test_start_and_close(void **state)
{
    (void)state;
    run_start(0, 0);
    run_start(0, 1);
}

static void test_no_memory_for_the_transport(void **state)
{
    (void)state;
    run_start(1, 0);
    run_start(1, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_and_close),
        cmocka_unit_test(test_no_memory_for_the_transport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
