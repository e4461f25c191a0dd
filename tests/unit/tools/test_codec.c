/* base64 and UTF-8 checks (tools/sbctl/codec.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "tools/sbctl/codec.h"

static void check_roundtrip(const char *plain, size_t n, const char *encoded)
{
    char *e;
    unsigned char *d;
    size_t dn;
    assert_int_equal(sbctl_base64_encode(&e, plain, n), 0);
    assert_string_equal(e, encoded);
    assert_int_equal(sbctl_base64_decode(&d, &dn, e, strlen(e)), 0);
    assert_int_equal(dn, n);
    assert_memory_equal(d, plain, n);
    sb_free(e);
    sb_free(d);
}

static void test_base64(void **state)
{
    (void)state;
    /* RFC 4648 test vectors. */
    check_roundtrip("", 0, "");
    check_roundtrip("f", 1, "Zg==");
    check_roundtrip("fo", 2, "Zm8=");
    check_roundtrip("foo", 3, "Zm9v");
    check_roundtrip("foob", 4, "Zm9vYg==");
    check_roundtrip("fooba", 5, "Zm9vYmE=");
    check_roundtrip("foobar", 6, "Zm9vYmFy");
    check_roundtrip("\x00\x01\x02", 3, "AAEC");
    check_roundtrip("\xff\xfe\xfd\xfc", 4, "//79/A==");
}

static void test_base64_decode_forms(void **state)
{
    unsigned char *d;
    size_t n;
    (void)state;
    /* Padding is optional. */
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zg", 2), 0);
    assert_int_equal(n, 1);
    assert_int_equal(d[0], 'f');
    sb_free(d);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zm8", 3), 0);
    assert_int_equal(n, 2);
    sb_free(d);
    /* Malformed. */
    assert_int_equal(sbctl_base64_decode(&d, &n, "Z", 1), SB_EINVAL);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zg=", 3), SB_EINVAL);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Z===", 4), SB_EINVAL);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zm9v!A==", 8), SB_EINVAL);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zm 9v", 5), SB_EINVAL);
    assert_int_equal(sbctl_base64_decode(&d, &n, "Zm9v\0\0\0\0", 8), SB_EINVAL);
    assert_null(d);
}

static void test_is_text(void **state)
{
    (void)state;
    assert_true(sbctl_is_text("", 0));
    assert_true(sbctl_is_text("hello\n\t", 7));
    assert_true(sbctl_is_text("gr\xc3\xbc\xc3\x9f"
                              "e",
                              7));                     /* grüße */
    assert_true(sbctl_is_text("\xe2\x82\xac", 3));     /* € */
    assert_true(sbctl_is_text("\xf0\x9f\x98\x80", 4)); /* U+1F600 */
    assert_false(sbctl_is_text("a\0b", 3));            /* NUL */
    assert_false(sbctl_is_text("\xff", 1));
    assert_false(sbctl_is_text("\xc3", 1));             /* truncated */
    assert_false(sbctl_is_text("\xc0\xaf", 2));         /* overlong '/' */
    assert_false(sbctl_is_text("\xe0\x80\xaf", 3));     /* overlong */
    assert_false(sbctl_is_text("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(sbctl_is_text("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(sbctl_is_text("\xe2\x28\xa1", 3));     /* bad continuation */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_base64_decode_forms),
        cmocka_unit_test(test_is_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
