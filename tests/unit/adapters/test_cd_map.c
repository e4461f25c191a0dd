/*
 * The WM_COPYDATA adapter's mapping between dwData and broker topics
 * (adapters/copydata/cd_map.c): data_map entries, the {data} template,
 * strict maps, both directions, numbers in decimal and hex.
 */
#include "adapters/copydata/cd_map.h"
#include "service/alloc.h"
#include "service/error.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void expect_topic(const sb_cd_map *m, uint64_t data, const char *want)
{
    char *got = NULL;
    assert_int_equal(sb_cd_map_topic(&got, m, data), 0);
    assert_string_equal(got, want);
    sb_free(got);
}

static void expect_data(const sb_cd_map *m, const char *topic, uint64_t want)
{
    uint64_t got = 0;
    assert_int_equal(sb_cd_map_data(&got, m, topic), 0);
    assert_true(got == want);
}

static void expect_no_data(const sb_cd_map *m, const char *topic)
{
    uint64_t got = 7;
    assert_int_equal(sb_cd_map_data(&got, m, topic), SB_ENOTFOUND);
    assert_true(got == 7);
}

static void test_template(void **state)
{
    sb_cd_map m;
    (void)state;
    /* the default: {adapter}/{data} */
    assert_int_equal(sb_cd_map_init(&m, NULL, "orders", NULL, NULL, 0, 0, NULL), 0);
    expect_topic(&m, 1, "orders/1");
    expect_topic(&m, UINT64_MAX, "orders/18446744073709551615");
    expect_data(&m, "orders/42", 42);
    expect_data(&m, "orders/0x2A", 42);
    expect_no_data(&m, "orders");
    expect_no_data(&m, "orders/x");
    expect_no_data(&m, "orders/1/2");
    expect_no_data(&m, "other/1");
    expect_no_data(&m, "orders/");
    expect_no_data(&m, "orders/18446744073709551616"); /* 2^64 */
    sb_cd_map_free(&m);

    /* {adapter} is sanitized; levels after {data} */
    assert_int_equal(
        sb_cd_map_init(&m, "legacy/{adapter}/{data}/in", "a/b+#", NULL, NULL, 0, 0, NULL), 0);
    expect_topic(&m, 7, "legacy/a_b__/7/in");
    expect_data(&m, "legacy/a_b__/7/in", 7);
    expect_no_data(&m, "legacy/a_b__/7");
    sb_cd_map_free(&m);

    /* no {data}: every number goes to one topic, none comes back */
    assert_int_equal(sb_cd_map_init(&m, "legacy/{adapter}", "x", NULL, NULL, 0, 0, NULL), 0);
    expect_topic(&m, 9, "legacy/x");
    expect_no_data(&m, "legacy/x");
    sb_cd_map_free(&m);
}

static void test_data_map(void **state)
{
    static const uint64_t data[] = {2, 1, 0x8000};
    static const char *const topics[] = {"orders/cancel", "orders/new", "orders/big"};
    sb_cd_map m;
    char *got = (char *)1;
    (void)state;

    assert_int_equal(sb_cd_map_init(&m, "orders/other/{data}", "pos", data, topics, 3, 0, NULL), 0);
    expect_topic(&m, 1, "orders/new");
    expect_topic(&m, 2, "orders/cancel");
    expect_topic(&m, 0x8000, "orders/big");
    expect_topic(&m, 3, "orders/other/3");
    expect_data(&m, "orders/new", 1);
    expect_data(&m, "orders/big", 0x8000);
    expect_data(&m, "orders/other/5", 5);
    expect_no_data(&m, "orders/unknown");
    sb_cd_map_free(&m);

    /* strict: only the map's numbers */
    assert_int_equal(sb_cd_map_init(&m, NULL, "pos", data, topics, 3, 1, NULL), 0);
    expect_topic(&m, 2, "orders/cancel");
    assert_int_equal(sb_cd_map_topic(&got, &m, 3), SB_ENOTFOUND);
    assert_null(got);
    sb_cd_map_free(&m);
}

static void test_bad(void **state)
{
    static const uint64_t twice[] = {1, 1};
    static const char *const topics[] = {"a", "b"};
    static const char *const wild[] = {"a/+"};
    const char *why = NULL;
    sb_cd_map m;
    (void)state;

    assert_int_equal(sb_cd_map_init(&m, "x/{data}/{data}", "a", NULL, NULL, 0, 0, &why), SB_EINVAL);
    assert_string_equal(why, "{data} appears twice");
    sb_cd_map_free(&m);
    assert_int_equal(sb_cd_map_init(&m, "x/n{data}", "a", NULL, NULL, 0, 0, &why), SB_EINVAL);
    assert_string_equal(why, "{data} must be a whole level");
    sb_cd_map_free(&m);
    assert_int_equal(sb_cd_map_init(&m, NULL, "a", twice, topics, 2, 0, &why), SB_EINVAL);
    assert_string_equal(why, "a number is mapped twice");
    sb_cd_map_free(&m);
    assert_int_equal(sb_cd_map_init(&m, NULL, "a", twice, wild, 1, 0, &why), SB_EINVAL);
    assert_non_null(strstr(why, "wildcard"));
    sb_cd_map_free(&m);
}

static void test_parse(void **state)
{
    uint64_t v = 0;
    (void)state;
    assert_int_equal(sb_cd_parse_data(&v, "0"), 0);
    assert_true(v == 0);
    assert_int_equal(sb_cd_parse_data(&v, "4242"), 0);
    assert_true(v == 4242);
    assert_int_equal(sb_cd_parse_data(&v, "0xDEADbeef"), 0);
    assert_true(v == 0xdeadbeef);
    assert_int_equal(sb_cd_parse_data(&v, "18446744073709551615"), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(sb_cd_parse_data(&v, "0xFFFFFFFFFFFFFFFF"), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(sb_cd_parse_data(&v, "18446744073709551616"), SB_EINVAL);
    assert_int_equal(sb_cd_parse_data(&v, "0x1FFFFFFFFFFFFFFFF"), SB_EINVAL);
    assert_int_equal(sb_cd_parse_data(&v, ""), SB_EINVAL);
    assert_int_equal(sb_cd_parse_data(&v, "0x"), SB_EINVAL);
    assert_int_equal(sb_cd_parse_data(&v, "-1"), SB_EINVAL);
    assert_int_equal(sb_cd_parse_data(&v, "12a"), SB_EINVAL);
}

static void test_out_of_memory(void **state)
{
    static const uint64_t data[] = {1, 2};
    static const char *const topics[] = {"a/b", "c/d"};
    (void)state;
    for (long n = 0;; n++) {
        sb_cd_map m;
        char *t = NULL;
        int rc;
        sb_alloc_fail_after(n);
        rc = sb_cd_map_init(&m, "x/{adapter}/{data}", "y", data, topics, 2, 0, NULL);
        if (rc == 0)
            rc = sb_cd_map_topic(&t, &m, 5);
        sb_alloc_fail_after(-1);
        sb_free(t);
        sb_cd_map_free(&m);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_ENOMEM);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template),      cmocka_unit_test(test_data_map),
        cmocka_unit_test(test_bad),           cmocka_unit_test(test_parse),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
