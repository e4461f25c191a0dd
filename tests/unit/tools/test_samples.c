/* Percentiles (tools/sbctl/samples.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "tools/sbctl/samples.h"

static void test_empty(void **state)
{
    sbctl_samples s = {0};
    (void)state;
    assert_int_equal(sbctl_samples_percentile(&s, 50), -1);
    assert_true(sbctl_samples_mean(&s) < 0);
    sbctl_samples_free(&s);
}

static void test_one_to_hundred(void **state)
{
    sbctl_samples s = {0};
    (void)state;
    /* Added in reverse: percentile sorts. */
    for (int i = 100; i >= 1; i--)
        assert_int_equal(sbctl_samples_add(&s, i), 0);
    assert_int_equal(sbctl_samples_percentile(&s, 50), 50);
    assert_int_equal(sbctl_samples_percentile(&s, 99), 99);
    assert_int_equal(sbctl_samples_percentile(&s, 99.9), 100);
    assert_int_equal(sbctl_samples_percentile(&s, 100), 100);
    assert_int_equal(sbctl_samples_percentile(&s, 0), 1);
    assert_int_equal(sbctl_samples_percentile(&s, 1), 1);
    assert_int_equal(sbctl_samples_percentile(&s, -5), 1);
    assert_int_equal(sbctl_samples_percentile(&s, 500), 100);
    assert_true(sbctl_samples_mean(&s) == 50.5);
    sbctl_samples_free(&s);
}

static void test_small_and_skewed(void **state)
{
    sbctl_samples s = {0};
    (void)state;
    sbctl_samples_add(&s, 7);
    assert_int_equal(sbctl_samples_percentile(&s, 0), 7);
    assert_int_equal(sbctl_samples_percentile(&s, 50), 7);
    assert_int_equal(sbctl_samples_percentile(&s, 99), 7);
    sbctl_samples_free(&s);

    /* Four samples: p50 is the 2nd (rank round(2.0)), p99 the 4th. */
    sbctl_samples_add(&s, 40);
    sbctl_samples_add(&s, 10);
    sbctl_samples_add(&s, 30);
    sbctl_samples_add(&s, 20);
    assert_int_equal(sbctl_samples_percentile(&s, 50), 20);
    assert_int_equal(sbctl_samples_percentile(&s, 75), 30);
    assert_int_equal(sbctl_samples_percentile(&s, 99), 40);
    sbctl_samples_free(&s);

    /* 1000 samples with 1% outliers: p99 still in the body, p99.9+ sees them. */
    for (int i = 0; i < 990; i++)
        sbctl_samples_add(&s, 100);
    for (int i = 0; i < 10; i++)
        sbctl_samples_add(&s, 100000);
    assert_int_equal(sbctl_samples_percentile(&s, 50), 100);
    assert_int_equal(sbctl_samples_percentile(&s, 99), 100);
    assert_int_equal(sbctl_samples_percentile(&s, 99.1), 100000);
    sbctl_samples_free(&s);
}

static void test_merge_after_sort(void **state)
{
    sbctl_samples a = {0}, b = {0};
    (void)state;
    for (int i = 1; i <= 50; i++)
        sbctl_samples_add(&a, i);
    assert_int_equal(sbctl_samples_percentile(&a, 100), 50); /* sorted now */
    for (int i = 51; i <= 100; i++)
        sbctl_samples_add(&b, 151 - i); /* 100..51 */
    assert_int_equal(sbctl_samples_merge(&a, &b), 0);
    assert_int_equal(a.n, 100);
    assert_int_equal(sbctl_samples_percentile(&a, 50), 50); /* re-sorted after merge */
    assert_int_equal(sbctl_samples_percentile(&a, 100), 100);
    sbctl_samples_free(&a);
    sbctl_samples_free(&b);
}

static void test_reserve_and_oom(void **state)
{
    sbctl_samples s = {0};
    (void)state;
    assert_int_equal(sbctl_samples_reserve(&s, 5000), 0);
    assert_true(s.cap >= 5000);
    sbctl_samples_free(&s);
    sb_alloc_fail_after(0);
    assert_int_equal(sbctl_samples_add(&s, 1), SB_ENOMEM);
    sb_alloc_fail_after(-1);
    assert_int_equal(s.n, 0);
    sbctl_samples_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_one_to_hundred),
        cmocka_unit_test(test_small_and_skewed),
        cmocka_unit_test(test_merge_after_sort),
        cmocka_unit_test(test_reserve_and_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
