/* Tables and human-readable numbers (tools/sbctl/format.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "tools/sbctl/format.h"

static void test_table(void **state)
{
    static const char *const headers[] = {"QUEUE", "DEPTH", "OLDEST"};
    static const sbctl_align align[] = {SBCTL_ALIGN_LEFT, SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_LEFT};
    const char *r1[] = {"orders-audit", "12", "5.0s"};
    const char *r2[] = {"x", "123456", NULL};
    sbctl_table *t;
    char *out;
    (void)state;

    t = sbctl_table_new(3, headers, align);
    assert_non_null(t);
    assert_int_equal(sbctl_table_add(t, r1), 0);
    assert_int_equal(sbctl_table_add(t, r2), 0);
    assert_int_equal(sbctl_table_rows(t), 2);
    assert_int_equal(sbctl_table_render(t, 0, &out), 0);
    assert_string_equal(out, "QUEUE          DEPTH  OLDEST\n"
                             "orders-audit      12  5.0s\n"
                             "x             123456  -\n");
    sb_free(out);

    /* Indent; no trailing spaces when the last column is short or empty. */
    {
        const char *r3[] = {"y", "1", ""};
        assert_int_equal(sbctl_table_add(t, r3), 0);
    }
    assert_int_equal(sbctl_table_render(t, 2, &out), 0);
    assert_string_equal(out, "  QUEUE          DEPTH  OLDEST\n"
                             "  orders-audit      12  5.0s\n"
                             "  x             123456  -\n"
                             "  y                  1\n");
    sb_free(out);
    sbctl_table_free(t);
}

static void test_table_utf8(void **state)
{
    static const char *const headers[] = {"TOPIC", "N"};
    static const sbctl_align align[] = {SBCTL_ALIGN_LEFT, SBCTL_ALIGN_RIGHT};
    const char *r1[] = {"grüße/ü", "1"};
    const char *r2[] = {"abcdefg", "22"};
    sbctl_table *t = sbctl_table_new(2, headers, align);
    char *out;
    (void)state;
    assert_int_equal(sbctl_utf8_width("grüße/ü"), 7);
    sbctl_table_add(t, r1);
    sbctl_table_add(t, r2);
    assert_int_equal(sbctl_table_render(t, 0, &out), 0);
    assert_string_equal(out, "TOPIC     N\n"
                             "grüße/ü   1\n"
                             "abcdefg  22\n");
    sb_free(out);
    sbctl_table_free(t);
}

static void test_table_empty_and_oom(void **state)
{
    static const char *const headers[] = {"A", "B"};
    sbctl_table *t;
    char *out;
    (void)state;
    t = sbctl_table_new(2, headers, NULL);
    assert_int_equal(sbctl_table_render(t, 0, &out), 0);
    assert_string_equal(out, "A  B\n");
    sb_free(out);
    sb_alloc_fail_after(0);
    assert_int_equal(sbctl_table_render(t, 0, &out), SB_ENOMEM);
    assert_null(out);
    sb_alloc_fail_after(-1);
    sbctl_table_free(t);
    sb_alloc_fail_after(2);
    assert_null(sbctl_table_new(2, headers, NULL));
    sb_alloc_fail_after(-1);
}

#define FMT(fn, v, want)                                                                           \
    do {                                                                                           \
        char buf_[64];                                                                             \
        fn(buf_, sizeof(buf_), v);                                                                 \
        assert_string_equal(buf_, want);                                                           \
    } while (0)

static void test_numbers(void **state)
{
    (void)state;
    FMT(sbctl_fmt_bytes, 0, "0 B");
    FMT(sbctl_fmt_bytes, 1023, "1023 B");
    FMT(sbctl_fmt_bytes, 1024, "1.0 KiB");
    FMT(sbctl_fmt_bytes, 1536, "1.5 KiB");
    FMT(sbctl_fmt_bytes, 12897485, "12.3 MiB");
    FMT(sbctl_fmt_bytes, 1048575, "1.0 MiB");
    FMT(sbctl_fmt_bytes, 4294967296LL, "4.0 GiB");
    FMT(sbctl_fmt_bytes, -1, "-");

    FMT(sbctl_fmt_ms, 0, "0ms");
    FMT(sbctl_fmt_ms, 850, "850ms");
    FMT(sbctl_fmt_ms, 12345, "12.3s");
    FMT(sbctl_fmt_ms, 312000, "5m12s");
    FMT(sbctl_fmt_ms, 3723000, "1h02m");
    FMT(sbctl_fmt_ms, 187200000, "2d04h");
    FMT(sbctl_fmt_ms, -1, "-");

    FMT(sbctl_fmt_rate, 0.0, "0");
    FMT(sbctl_fmt_rate, 2.5, "2.50");
    FMT(sbctl_fmt_rate, 12.5, "12.5");
    FMT(sbctl_fmt_rate, 999.0, "999");
    FMT(sbctl_fmt_rate, 1234.0, "1234");
    FMT(sbctl_fmt_rate, 12345.0, "12.3k");
    FMT(sbctl_fmt_rate, 1200000.0, "1.20M");
    FMT(sbctl_fmt_rate, 3.4e9, "3.40G");
    FMT(sbctl_fmt_rate, -1.0, "-");

    FMT(sbctl_fmt_ns, 850, "850ns");
    FMT(sbctl_fmt_ns, 12345, "12.3us");
    FMT(sbctl_fmt_ns, 123456, "123us");
    FMT(sbctl_fmt_ns, 1234567, "1.23ms");
    FMT(sbctl_fmt_ns, 45600000, "45.6ms");
    FMT(sbctl_fmt_ns, 202345678, "202ms");
    FMT(sbctl_fmt_ns, 1230000000, "1.23s");
    FMT(sbctl_fmt_ns, -1, "-");
}

static void test_preview(void **state)
{
    char buf[64];
    (void)state;
    sbctl_fmt_preview(buf, sizeof(buf), "hello\nworld\t!", 13, 40);
    assert_string_equal(buf, "hello\\nworld\\t!");
    sbctl_fmt_preview(buf, sizeof(buf), "a\x01z", 3, 40);
    assert_string_equal(buf, "a\\x01z");
    sbctl_fmt_preview(buf, sizeof(buf), "abcdefghij", 10, 4);
    assert_string_equal(buf, "abcd...");
    sbctl_fmt_preview(buf, sizeof(buf), "üüüü", 8, 2);
    assert_string_equal(buf, "üü...");
    /* A payload with an embedded NUL is shown whole. */
    sbctl_fmt_preview(buf, sizeof(buf), "a\0b", 3, 40);
    assert_string_equal(buf, "a\\x00b");
    /* Never overflows a small buffer. */
    sbctl_fmt_preview(buf, 8, "abcdefghijklmnop", 16, 40);
    assert_true(strlen(buf) < 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_table_utf8),
        cmocka_unit_test(test_table_empty_and_oom),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_preview),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
