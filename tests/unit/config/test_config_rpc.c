/* The keys of type rpc (the MS-RPC adapter): defaults, the rules between
 * them, and the shipped example, checked on every platform. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/builtin.h"
#include "adapters/rpc/rpc_keys.h"
#include "config/config.h"
#include "service/error.h"

/* What sb_config_errors_print writes, as a string. */
static char *printed(const sb_config_errors *errs)
{
    const char *tmp = "test_config_rpc.out";
    FILE *f = fopen(tmp, "wb");
    char *s;
    long n;
    assert_non_null(f);
    sb_config_errors_print(errs, f);
    fclose(f);
    f = fopen(tmp, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = calloc(1, (size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    remove(tmp);
    return s;
}

static void expect_errors(const char *yaml, const char *expected)
{
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    char *got;
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", yaml, strlen(yaml), &errs), SB_ECONFIG);
    assert_null(cfg);
    got = printed(&errs);
    if (strcmp(got, expected) != 0)
        fail_msg("for:\n%s\nexpected:\n%s\ngot:\n%s", yaml, expected, got);
    free(got);
    sb_config_errors_clear(&errs);
}

static sb_config *parse_ok(const char *yaml)
{
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    if (sb_config_parse(&cfg, "t.yaml", yaml, strlen(yaml), &errs) != 0) {
        char *got = printed(&errs);
        fail_msg("for:\n%s\nunexpected errors:\n%s", yaml, got);
    }
    return cfg;
}

static void test_defaults(void **state)
{
    sb_config *cfg = parse_ok("adapters:\n"
                              "  - name: rpc\n"
                              "    type: rpc\n"
                              "  - name: tcp\n"
                              "    type: rpc\n"
                              "    protseq: ncacn_ip_tcp\n"
                              "    port: 4750\n"
                              "    remote: true\n");
    const sb_rpc_settings *r = SB_SETTINGS(const sb_rpc_settings, sb_config_adapter(cfg, "rpc"));
    (void)state;
    assert_int_equal(r->protseq, SB_RPC_NCALRPC);
    assert_string_equal(r->endpoint, "switchboard");
    assert_int_equal(r->max_calls, 64);
    assert_int_equal(r->max_pulls, 32);
    assert_int_equal(r->max_wait_ms, 30000);
    assert_int_equal(r->max_message, 1048576);
    assert_int_equal(r->remote, 0);
    assert_int_equal(r->anonymous, 0);
    assert_null(r->security);
    r = SB_SETTINGS(const sb_rpc_settings, sb_config_adapter(cfg, "tcp"));
    assert_int_equal(r->protseq, SB_RPC_NCACN_IP_TCP);
    assert_int_equal(r->port, 4750);
    assert_int_equal(r->remote, 1);
    sb_config_free(cfg);
}

static void test_errors(void **state)
{
    (void)state;
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    protseq: ncacn_ip_tcp\n",
                  "t.yaml:2:5: adapters[0].port: required for protseq ncacn_ip_tcp\n");
    /* callers from other computers must authenticate */
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    protseq: ncacn_ip_tcp\n"
                  "    port: 4750\n"
                  "    remote: true\n"
                  "    anonymous: true\n",
                  "t.yaml:6:5: adapters[0].remote: remote: true needs authenticated callers, but "
                  "anonymous is true (callers from other computers must authenticate)\n");
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    port: 4750\n",
                  "t.yaml:4:5: adapters[0].port: only for protseq ncacn_ip_tcp\n");
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    protseq: ncacn_ip_tcp\n"
                  "    port: 4750\n"
                  "    endpoint: x\n",
                  "t.yaml:6:5: adapters[0].endpoint: only for protseq ncalrpc (ncacn_ip_tcp takes "
                  "port)\n");
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    endpoint: 'a\\b'\n",
                  "t.yaml:4:15: adapters[0].endpoint: an ncalrpc endpoint is a name of at most 100 "
                  "characters without '\\', '/', ':' or blanks, got \"a\\b\"\n");
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    topic: orders/{adapter}\n",
                  "t.yaml:4:5: adapters[0].topic: not allowed for type rpc\n");
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: rpc\n"
                  "    max_calls: 0\n",
                  "t.yaml:4:16: adapters[0].max_calls: must be between 1 and 10000\n");
}

static void test_example(void **state)
{
    const char *dir = getenv("SB_TEST_DATA");
    char path[1024];
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    const sb_adapter_config *a;
    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof path, "%s/../../config/examples/windows-rpc.yaml", dir);
    if (sb_config_load(&cfg, path, &errs) != 0)
        fail_msg("%s:\n%s", path, printed(&errs));
    a = sb_config_adapter(cfg, "rpc");
    assert_non_null(a);
    assert_string_equal(a->type, "rpc");
    assert_string_equal(SB_SETTINGS(const sb_rpc_settings, a)->endpoint, "switchboard");
    assert_int_equal(SB_SETTINGS(const sb_rpc_settings, a)->max_message, 1048576);
    a = sb_config_adapter(cfg, "rpc-tcp");
    assert_non_null(a);
    assert_int_equal(SB_SETTINGS(const sb_rpc_settings, a)->protseq, SB_RPC_NCACN_IP_TCP);
    assert_int_equal(SB_SETTINGS(const sb_rpc_settings, a)->port, 4750);
    assert_int_equal(SB_SETTINGS(const sb_rpc_settings, a)->remote, 0);
    assert_non_null(sb_config_route(cfg, "orders"));
    sb_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_example),
    };
    if (sb_adapter_keys_register_builtin(NULL) != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
