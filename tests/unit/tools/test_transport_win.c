/*
 * sb_client's Windows transport (tools/client/win/transport.c) against
 * servers made in this process: named pipes (CreateNamedPipeW) and Winsock
 * TCP. Checks the timeouts and the one-line error messages, which match the
 * POSIX transport's: "cannot connect to ENDPOINT: <system text>",
 * "ENDPOINT: no reply within N ms", "ENDPOINT: connection closed by the
 * broker", "ENDPOINT: the broker did not read our request within N ms".
 * Pipe names carry the process id so parallel runs do not meet.
 */
#include "tools/client/client.h"

#include <winsock2.h>
#include <ws2tcpip.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <windows.h>

static char pipe_name[128];

static void make_name(const char *what)
{
    snprintf(pipe_name, sizeof(pipe_name), "\\\\.\\pipe\\sbt-transport-%s-%lu", what,
             (unsigned long)GetCurrentProcessId());
}

/* A byte-mode server instance of pipe_name, not yet connected. */
static HANDLE pipe_server(DWORD instances, DWORD buffer)
{
    wchar_t w[128];
    HANDLE h;
    MultiByteToWideChar(CP_UTF8, 0, pipe_name, -1, w, 128);
    h = CreateNamedPipeW(w, PIPE_ACCESS_DUPLEX, PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT,
                         instances, buffer, buffer, 0, NULL);
    assert_true(h != INVALID_HANDLE_VALUE);
    return h;
}

static void server_write(HANDLE h, const char *s)
{
    DWORD n = 0;
    assert_true(WriteFile(h, s, (DWORD)strlen(s), &n, NULL));
    assert_int_equal(n, strlen(s));
}

static sb_client *connect_ok(const char *endpoint, int connect_ms, int write_ms)
{
    sb_client_options o;
    sb_client *c = NULL;
    sb_error err;
    sb_client_options_init(&o);
    o.connect_timeout_ms = connect_ms;
    o.write_timeout_ms = write_ms;
    if (sb_client_connect(&c, endpoint, &o, &err) != 0)
        fail_msg("%s", err.msg);
    return c;
}

static long long now_ms(void)
{
    return (long long)(GetTickCount64());
}

static void test_pipe_not_found(void **state)
{
    sb_client *c = NULL;
    sb_error err;
    char want[200];
    (void)state;
    make_name("none");
    assert_int_equal(sb_client_connect(&c, pipe_name, NULL, &err), SB_ENOTFOUND);
    assert_null(c);
    snprintf(want, sizeof(want), "cannot connect to %s: ", pipe_name);
    assert_memory_equal(err.msg, want, strlen(want));
    assert_int_equal(err.sys, ERROR_FILE_NOT_FOUND);
}

static void test_pipe_lines_timeout_and_close(void **state)
{
    HANDLE srv;
    sb_client *c;
    sb_error err;
    const char *line;
    size_t len;
    char want[200], buf[64];
    DWORD n = 0;
    long long t0;
    (void)state;
    make_name("lines");
    srv = pipe_server(1, 65536);
    c = connect_ok(pipe_name, 1000, 1000);
    assert_string_equal(sb_client_endpoint(c), pipe_name);

    server_write(srv, "hello\nwor");
    assert_int_equal(sb_client_read_line(c, &line, &len, 1000, &err), 0);
    assert_string_equal(line, "hello");
    t0 = now_ms();
    assert_int_equal(sb_client_read_line(c, &line, &len, 150, &err), SB_ETIMEDOUT);
    assert_true(now_ms() - t0 >= 120);
    assert_true(now_ms() - t0 < 5000);
    snprintf(want, sizeof(want), "%s: no reply within 150 ms", pipe_name);
    assert_string_equal(err.msg, want);
    /* Nothing was lost to the cancelled read. */
    server_write(srv, "ld\n");
    assert_int_equal(sb_client_read_line(c, &line, &len, 1000, &err), 0);
    assert_string_equal(line, "world");

    /* Writes reach the server. */
    assert_int_equal(sb_client_write_line(c, "ping", 4, &err), 0);
    assert_int_equal(sb_client_flush(c, &err), 0);
    assert_true(ReadFile(srv, buf, sizeof(buf), &n, NULL));
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "ping\n", 5);

    /* The server goes away: end of stream. */
    FlushFileBuffers(srv);
    DisconnectNamedPipe(srv);
    CloseHandle(srv);
    assert_int_equal(sb_client_read_line(c, &line, &len, 1000, &err), SB_ECLOSED);
    snprintf(want, sizeof(want), "%s: connection closed by the broker", pipe_name);
    assert_string_equal(err.msg, want);
    sb_client_free(c);
}

static void test_pipe_short_name(void **state)
{
    HANDLE srv;
    sb_client *c;
    char ep[160];
    (void)state;
    make_name("short");
    srv = pipe_server(1, 4096);
    snprintf(ep, sizeof(ep), "pipe:%s", pipe_name + strlen("\\\\.\\pipe\\"));
    c = connect_ok(ep, 1000, 1000);
    assert_string_equal(sb_client_endpoint(c), pipe_name);
    sb_client_free(c);
    CloseHandle(srv);
}

static void test_pipe_busy(void **state)
{
    HANDLE srv;
    sb_client *a, *b = NULL;
    sb_client_options o;
    sb_error err;
    char want[200];
    long long t0;
    (void)state;
    make_name("busy");
    srv = pipe_server(1, 4096);
    a = connect_ok(pipe_name, 1000, 1000);
    /* The only instance is taken: the second client waits, then gives up. */
    sb_client_options_init(&o);
    o.connect_timeout_ms = 200;
    t0 = now_ms();
    assert_int_equal(sb_client_connect(&b, pipe_name, &o, &err), SB_EBUSY);
    assert_true(now_ms() - t0 >= 150);
    assert_true(now_ms() - t0 < 5000);
    snprintf(want, sizeof(want), "cannot connect to %s: every pipe instance stayed busy for 200 ms",
             pipe_name);
    assert_string_equal(err.msg, want);
    sb_client_free(a);
    CloseHandle(srv);
}

static void test_pipe_write_timeout(void **state)
{
    HANDLE srv;
    sb_client *c;
    sb_error err;
    char want[200];
    size_t big = 8 * 1024 * 1024;
    char *line = malloc(big);
    long long t0;
    (void)state;
    assert_non_null(line);
    memset(line, 'x', big);
    make_name("wfull");
    srv = pipe_server(1, 4096);
    c = connect_ok(pipe_name, 1000, 200);
    /* The server never reads: the write cannot finish. */
    t0 = now_ms();
    assert_int_equal(sb_client_write_line(c, line, big, &err), SB_ETIMEDOUT);
    assert_true(now_ms() - t0 >= 150);
    assert_true(now_ms() - t0 < 10000);
    snprintf(want, sizeof(want), "%s: the broker did not read our request within 200 ms",
             pipe_name);
    assert_string_equal(err.msg, want);
    sb_client_free(c);
    CloseHandle(srv);
    free(line);
}

/* ---- TCP ---- */

static SOCKET tcp_listener(int *port)
{
    struct sockaddr_in sa;
    int len = sizeof(sa);
    SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    assert_true(s != INVALID_SOCKET);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s, 4), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return s;
}

static void test_tcp_refused_timeout_and_close(void **state)
{
    SOCKET l, peer;
    sb_client *c = NULL;
    sb_error err;
    char ep[64], want[200];
    const char *line;
    size_t len;
    int port;
    long long t0;
    (void)state;

    /* A port nobody listens on any more. */
    l = tcp_listener(&port);
    closesocket(l);
    snprintf(ep, sizeof(ep), "tcp:127.0.0.1:%d", port);
    assert_int_equal(sb_client_connect(&c, ep, NULL, &err), SB_ECONNREFUSED);
    snprintf(want, sizeof(want), "cannot connect to %s: ", ep);
    assert_memory_equal(err.msg, want, strlen(want));
    assert_int_equal(err.sys, WSAECONNREFUSED);

    /* Silence: a read times out. */
    l = tcp_listener(&port);
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", port);
    c = connect_ok(ep, 2000, 1000);
    peer = accept(l, NULL, NULL);
    assert_true(peer != INVALID_SOCKET);
    t0 = now_ms();
    assert_int_equal(sb_client_read_line(c, &line, &len, 150, &err), SB_ETIMEDOUT);
    assert_true(now_ms() - t0 >= 120);
    snprintf(want, sizeof(want), "tcp:127.0.0.1:%d: no reply within 150 ms", port);
    assert_string_equal(err.msg, want);

    /* A line, then the peer closes. */
    assert_int_equal(send(peer, "pong\r\n", 6, 0), 6);
    assert_int_equal(sb_client_read_line(c, &line, &len, 1000, &err), 0);
    assert_string_equal(line, "pong");
    closesocket(peer);
    assert_int_equal(sb_client_read_line(c, &line, &len, 1000, &err), SB_ECLOSED);
    snprintf(want, sizeof(want), "tcp:127.0.0.1:%d: connection closed by the broker", port);
    assert_string_equal(err.msg, want);
    sb_client_free(c);
    closesocket(l);
}

static void test_unix_refused(void **state)
{
    sb_client *c = NULL;
    sb_error err;
    (void)state;
    assert_int_equal(sb_client_connect(&c, "unix:./data/admin.sock", NULL, &err), SB_EINVAL);
    assert_non_null(strstr(err.msg, "Unix domain sockets are not supported on Windows"));
    assert_string_equal(sb_client_platform_endpoint(), "\\\\.\\pipe\\switchboard-admin");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipe_not_found),
        cmocka_unit_test(test_pipe_lines_timeout_and_close),
        cmocka_unit_test(test_pipe_short_name),
        cmocka_unit_test(test_pipe_busy),
        cmocka_unit_test(test_pipe_write_timeout),
        cmocka_unit_test(test_tcp_refused_timeout_and_close),
        cmocka_unit_test(test_unix_refused),
    };
    WSADATA wsa;
    WSAStartup(MAKEWORD(2, 2), &wsa);
    return cmocka_run_group_tests_name("transport_win", tests, NULL, NULL);
}
