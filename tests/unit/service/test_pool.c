/* Free lists of fixed-size objects: reuse, the cap, draining, and
 * out-of-memory with an empty and with a stocked list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/pool.h"

typedef struct obj {
    void *link; /* the pool's, while kept */
    char data[40];
} obj;

static void test_reuse(void **state)
{
    sb_pool p;
    obj *a, *b, *c;
    (void)state;
    sb_pool_init(&p, sizeof(obj), 4);
    a = sb_pool_get(&p);
    b = sb_pool_get(&p);
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    memset(a, 'a', sizeof(*a));
    sb_pool_put(&p, a);
    sb_pool_put(&p, b);
    sb_pool_put(&p, NULL); /* nothing */
    assert_int_equal(p.count, 2);
    /* last in, first out: the one most likely in cache */
    c = sb_pool_get(&p);
    assert_ptr_equal(c, b);
    c = sb_pool_get(&p);
    assert_ptr_equal(c, a);
    assert_int_equal(p.count, 0);
    memset(c, 'c', sizeof(*c)); /* whole object usable again */
    sb_pool_put(&p, b);
    sb_pool_put(&p, c);
    sb_pool_drain(&p);
    assert_int_equal(p.count, 0);
    assert_null(p.free);
}

static void test_cap(void **state)
{
    sb_pool p;
    obj *o[6];
    (void)state;
    sb_pool_init(&p, sizeof(obj), 3);
    for (int i = 0; i < 6; i++)
        assert_non_null(o[i] = sb_pool_get(&p));
    for (int i = 0; i < 6; i++)
        sb_pool_put(&p, o[i]); /* the last three are freed (LSan sees any leak) */
    assert_int_equal(p.count, 3);
    sb_pool_drain(&p);
    /* a drained pool serves again */
    assert_non_null(o[0] = sb_pool_get(&p));
    sb_pool_put(&p, o[0]);
    sb_pool_drain(&p);
}

static void test_out_of_memory(void **state)
{
    sb_pool p;
    obj *a;
    (void)state;
    sb_pool_init(&p, sizeof(obj), 8);
    /* empty: the get is an sb_malloc, and fails like one */
    sb_alloc_fail_after(0);
    assert_null(sb_pool_get(&p));
    assert_int_equal(sb_alloc_failures(), 1);
    sb_alloc_fail_after(-1);
    /* stocked: a get counts as an allocation all the same, and a failed
     * one leaves the kept object for the next */
    a = sb_pool_get(&p);
    assert_non_null(a);
    sb_pool_put(&p, a);
    sb_alloc_fail_once(0);
    assert_null(sb_pool_get(&p));
    assert_int_equal(sb_alloc_failures(), 1);
    assert_int_equal(p.count, 1);
    assert_ptr_equal(sb_pool_get(&p), a);
    /* a countdown passes over gets from the list as over allocations */
    sb_pool_put(&p, a);
    sb_alloc_fail_once(1);
    assert_ptr_equal(sb_pool_get(&p), a);
    assert_null(sb_pool_get(&p));
    assert_int_equal(sb_alloc_failures(), 1);
    sb_alloc_fail_after(-1);
    sb_pool_put(&p, a);
    sb_pool_drain(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
