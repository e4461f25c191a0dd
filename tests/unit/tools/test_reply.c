/* Broker error replies -> SB_E* codes (tools/client/client.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tools/client/client.h"

static void test_errcode(void **state)
{
    (void)state;
    assert_int_equal(sb_client_errcode("SB_EFULL"), SB_EFULL);
    assert_int_equal(sb_client_errcode("SB_EPROTO"), SB_EPROTO);
    assert_int_equal(sb_client_errcode("SB_ENOTFOUND"), SB_ENOTFOUND);
    assert_int_equal(sb_client_errcode("SB_ESTORE"), SB_ESTORE);
    assert_int_equal(sb_client_errcode("SB_EUNKNOWN"), SB_EUNKNOWN);
    assert_int_equal(sb_client_errcode("SB_ENOPE"), SB_EUNKNOWN);
    assert_int_equal(sb_client_errcode(NULL), SB_EUNKNOWN);
    /* Every known code round-trips through its name. */
    for (int code = 0; code >= -30; code--)
        if (strcmp(sb_errname(code), "SB_EUNKNOWN") != 0)
            assert_int_equal(sb_client_errcode(sb_errname(code)), code);
}

static void test_reply_error(void **state)
{
    sb_error err;
    json_t *r;
    (void)state;

    r = json_loads("{\"op\":\"error\",\"id\":7,\"code\":\"SB_EFULL\","
                   "\"message\":\"queue orders:audit is full (max_depth 1000)\"}",
                   0, NULL);
    assert_int_equal(sb_client_reply_error(r, &err), SB_EFULL);
    assert_int_equal(err.code, SB_EFULL);
    assert_string_equal(err.msg, "queue orders:audit is full (max_depth 1000)");
    json_decref(r);

    /* Unknown or missing code, missing message. */
    r = json_loads("{\"op\":\"error\",\"code\":\"SB_EWHATEVER\"}", 0, NULL);
    assert_int_equal(sb_client_reply_error(r, &err), SB_EUNKNOWN);
    assert_string_equal(err.msg, sb_strerror(SB_EUNKNOWN));
    json_decref(r);
    r = json_loads("{\"op\":\"error\",\"code\":\"SB_OK\"}", 0, NULL);
    assert_int_equal(sb_client_reply_error(r, &err), SB_EUNKNOWN);
    json_decref(r);

    /* Not errors. */
    r = json_loads("{\"op\":\"puback\",\"id\":1,\"msg_id\":1042,\"queues\":2}", 0, NULL);
    assert_int_equal(sb_client_reply_error(r, &err), 0);
    json_decref(r);
    r = json_loads("{\"id\":1}", 0, NULL);
    assert_int_equal(sb_client_reply_error(r, &err), 0);
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errcode),
        cmocka_unit_test(test_reply_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
