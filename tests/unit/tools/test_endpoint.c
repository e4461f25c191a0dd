/* Endpoint string parsing (tools/client/endpoint.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tools/client/endpoint.h"

static void test_unix(void **state)
{
    sb_endpoint ep;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "unix:./data/admin.sock", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_string_equal(ep.path, "./data/admin.sock");
    assert_string_equal(ep.display, "unix:./data/admin.sock");

    /* A bare path, with or without a slash. */
    assert_int_equal(sb_endpoint_parse(&ep, "./data/admin.sock", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_string_equal(ep.display, "unix:./data/admin.sock");
    assert_int_equal(sb_endpoint_parse(&ep, "admin.sock", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_int_equal(sb_endpoint_parse(&ep, "/run/sb/admin.sock", NULL), 0);
    assert_string_equal(ep.path, "/run/sb/admin.sock");

    /* A colon but no numeric port: still a path; a slash wins over HOST:PORT. */
    assert_int_equal(sb_endpoint_parse(&ep, "weird:name", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_string_equal(ep.path, "weird:name");
    assert_int_equal(sb_endpoint_parse(&ep, "dir/x:80", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_string_equal(ep.path, "dir/x:80");

    /* unix: forces a path even when it looks like HOST:PORT. */
    assert_int_equal(sb_endpoint_parse(&ep, "unix:host:80", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_UNIX);
    assert_string_equal(ep.path, "host:80");
}

/* rpc: the rest is the RPC client library's: NAME or HOST:PORT. */
static void test_rpc(void **state)
{
    sb_endpoint ep;
    sb_error err;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "rpc:switchboard", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_RPC);
    assert_string_equal(ep.path, "switchboard");
    assert_string_equal(ep.display, "rpc:switchboard");
    /* not the bare HOST:PORT form */
    assert_int_equal(sb_endpoint_parse(&ep, "rpc:127.0.0.1:4750", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_RPC);
    assert_string_equal(ep.path, "127.0.0.1:4750");
    assert_int_equal(sb_endpoint_parse(&ep, "rpc:", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "rpc:NAME or rpc:HOST:PORT"));
}

static void test_tcp(void **state)
{
    sb_endpoint ep;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:127.0.0.1:1883", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_TCP);
    assert_string_equal(ep.host, "127.0.0.1");
    assert_int_equal(ep.port, 1883);
    assert_string_equal(ep.display, "tcp:127.0.0.1:1883");

    assert_int_equal(sb_endpoint_parse(&ep, "localhost:5000", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_TCP);
    assert_string_equal(ep.host, "localhost");
    assert_int_equal(ep.port, 5000);
    assert_string_equal(ep.display, "tcp:localhost:5000");

    assert_int_equal(sb_endpoint_parse(&ep, "tcp:[::1]:65535", NULL), 0);
    assert_string_equal(ep.host, "::1");
    assert_int_equal(ep.port, 65535);
    assert_string_equal(ep.display, "tcp:[::1]:65535");
    assert_int_equal(sb_endpoint_parse(&ep, "[fe80::1]:1", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_TCP);
    assert_string_equal(ep.host, "fe80::1");
}

/* tls:HOST:PORT is TCP with the tls flag; a tcp: endpoint never has it. */
static void test_tls(void **state)
{
    sb_endpoint ep;
    sb_error err;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "tls:localhost:8883", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_TCP);
    assert_int_equal(ep.tls, 1);
    assert_string_equal(ep.host, "localhost");
    assert_int_equal(ep.port, 8883);
    assert_string_equal(ep.display, "tls:localhost:8883");
    assert_int_equal(sb_endpoint_parse(&ep, "tls:[::1]:8883", NULL), 0);
    assert_string_equal(ep.host, "::1");
    assert_string_equal(ep.display, "tls:[::1]:8883");
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:localhost:8883", NULL), 0);
    assert_int_equal(ep.tls, 0);
    assert_int_equal(sb_endpoint_parse(&ep, "tls:localhost", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "tls:localhost"));
}

static void test_tcp_errors(void **state)
{
    sb_endpoint ep;
    sb_error err;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:host:0", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "between 1 and 65535"));
    assert_int_equal(sb_endpoint_parse(&ep, "host:65536", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "host:65536"));
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:host", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:host:http", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "number"));
    assert_int_equal(sb_endpoint_parse(&ep, "tcp::80", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "missing host"));
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:::1:80", &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "brackets"));
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:[::1:80", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:[::1]80", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "tcp:", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, NULL, &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "unix:", &err), SB_EINVAL);
    assert_int_equal(ep.kind, 0); /* cleared on failure */
}

static void test_pipe(void **state)
{
    sb_endpoint ep;
    sb_error err;
    (void)state;
    assert_int_equal(sb_endpoint_parse(&ep, "\\\\.\\pipe\\switchboard-admin", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_PIPE);
    assert_string_equal(ep.path, "\\\\.\\pipe\\switchboard-admin");
    assert_string_equal(ep.display, "\\\\.\\pipe\\switchboard-admin");
    assert_int_equal(sb_endpoint_parse(&ep, "\\\\server\\pipe\\x", NULL), 0);
    assert_int_equal(ep.kind, SB_ENDPOINT_PIPE);
    assert_int_equal(sb_endpoint_parse(&ep, "pipe:orders", NULL), 0);
    assert_string_equal(ep.path, "\\\\.\\pipe\\orders");
    assert_int_equal(sb_endpoint_parse(&ep, "pipe:\\\\.\\pipe\\orders", NULL), 0);
    assert_string_equal(ep.path, "\\\\.\\pipe\\orders");

    assert_int_equal(sb_endpoint_parse(&ep, "\\\\.\\pipe\\", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "\\\\.\\mailslot\\x", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "pipe:", &err), SB_EINVAL);
    assert_int_equal(sb_endpoint_parse(&ep, "pipe:a\\b", &err), SB_EINVAL);
}

static void test_too_long(void **state)
{
    char big[SB_ENDPOINT_PATH_MAX + 10];
    sb_endpoint ep;
    sb_error err;
    (void)state;
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(sb_endpoint_parse(&ep, big, &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "too long"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix), cmocka_unit_test(test_rpc),
        cmocka_unit_test(test_tcp),  cmocka_unit_test(test_tls), cmocka_unit_test(test_tcp_errors),
        cmocka_unit_test(test_pipe), cmocka_unit_test(test_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
