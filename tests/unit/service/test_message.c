/* Messages: headers round trip, refcounting, out-of-memory paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "service/message.h"

static void test_headers_round_trip(void **state)
{
    sb_message *m = sb_message_new("t/1", "abc", 3), *back;
    unsigned char *blob;
    size_t len;
    (void)state;
    assert_non_null(m);
    assert_int_equal(sb_message_add_header(m, "content-type", "text/plain"), 0);
    assert_int_equal(sb_message_add_header(m, "k", ""), 0);
    assert_int_equal(sb_message_headers_encode(m, &blob, &len), 0);
    back = sb_message_new("t/1", "", 0);
    assert_int_equal(sb_message_headers_decode(back, blob, len), 0);
    assert_int_equal(back->header_count, 2);
    assert_string_equal(sb_message_header(back, "content-type"), "text/plain");
    assert_string_equal(sb_message_header(back, "k"), "");
    assert_null(sb_message_header(back, "missing"));
    /* A blob cut in the middle of a value is corrupt, not a crash. */
    sb_message_unref(back);
    back = sb_message_new("t/1", "", 0);
    assert_int_equal(sb_message_headers_decode(back, blob, len - 1), SB_ECORRUPT);
    sb_free(blob);
    sb_message_unref(back);
    sb_message_unref(m);
}

static void test_refcount(void **state)
{
    sb_message *m = sb_message_new("t", "x", 1);
    (void)state;
    sb_message_ref(m);
    assert_int_equal(m->refs, 2);
    sb_message_unref(m);
    assert_int_equal(m->refs, 1);
    assert_true(sb_message_size(m) >= 2);
    sb_message_unref(m);
}

static void test_out_of_memory(void **state)
{
    (void)state;
    for (long n = 0; n < 3; n++) {
        sb_message *m;
        sb_alloc_fail_after(n);
        m = sb_message_new("topic", "payload", 7);
        sb_alloc_fail_after(-1);
        if (m != NULL)
            sb_message_unref(m);
    }
    sb_alloc_fail_after(0);
    assert_null(sb_message_new("topic", "payload", 7));
    sb_alloc_fail_after(-1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_round_trip),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
