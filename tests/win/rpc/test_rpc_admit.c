/*
 * The MS-RPC adapter's admission rules (adapters/rpc/win/rpc_caller.c) for
 * the callers Wine cannot produce end to end: authenticated TCP callers,
 * from this computer and from others, with and without remote: true.
 */
#include "adapters/rpc/win/rpc_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

static rpc_caller caller(int tcp, int local, int authenticated, const char *user)
{
    rpc_caller c;
    memset(&c, 0, sizeof c);
    c.tcp = tcp;
    c.local = local;
    c.authenticated = authenticated;
    c.anonymous = user == NULL;
    snprintf(c.user, sizeof c.user, "%s", user != NULL ? user : "");
    snprintf(c.peer, sizeof c.peer, "%s",
             tcp ? (local ? "ncacn_ip_tcp 127.0.0.1" : "ncacn_ip_tcp 192.0.2.7") : "ncalrpc");
    return c;
}

/* Expects rc from the rules, and `why` to contain part when refused. */
static void expect(const rpc_settings *s, rpc_caller c, int rc, const char *part)
{
    char why[320] = "";
    assert_int_equal(sb_rpc__caller_admit(s, &c, why, sizeof why), rc);
    if (part != NULL && strstr(why, part) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", part, why);
}

static void test_ncalrpc(void **state)
{
    rpc_settings s;
    (void)state;
    memset(&s, 0, sizeof s);
    expect(&s, caller(0, 1, 0, "CORP\\alice"), 0, NULL);
    expect(&s, caller(0, 1, 1, "CORP\\alice"), 0, NULL);
    /* no identity (impersonation failed): anonymous only when allowed */
    expect(&s, caller(0, 1, 0, NULL), SB_EAUTH, "unauthenticated callers are refused");
    s.anonymous = 1;
    expect(&s, caller(0, 1, 0, NULL), 0, NULL);
}

static void test_tcp_loopback(void **state)
{
    rpc_settings s;
    (void)state;
    memset(&s, 0, sizeof s);
    s.tcp = 1;
    expect(&s, caller(1, 1, 1, "CORP\\alice"), 0, NULL);
    expect(&s, caller(1, 1, 0, NULL), SB_EAUTH, "unauthenticated callers are refused");
    s.anonymous = 1;
    expect(&s, caller(1, 1, 0, NULL), 0, NULL);
}

static void test_tcp_remote(void **state)
{
    rpc_settings s;
    (void)state;
    memset(&s, 0, sizeof s);
    s.tcp = 1;
    /* remote: false refuses other computers, authenticated or not */
    expect(&s, caller(1, 0, 1, "CORP\\alice"), SB_EAUTH, "callers from other computers");
    expect(&s, caller(1, 0, 0, NULL), SB_EAUTH, "callers from other computers");
    s.remote = 1;
    expect(&s, caller(1, 0, 1, "CORP\\alice"), 0, NULL);
    expect(&s, caller(1, 0, 0, NULL), SB_EAUTH, "must authenticate");
    /* authenticated below packet integrity is not authenticated */
    expect(&s, caller(1, 0, 0, "CORP\\alice"), SB_EAUTH, "must authenticate");
    /* anonymous: true never opens the door to other computers */
    s.anonymous = 1;
    expect(&s, caller(1, 0, 0, NULL), SB_EAUTH, "must authenticate");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ncalrpc),
        cmocka_unit_test(test_tcp_loopback),
        cmocka_unit_test(test_tcp_remote),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
