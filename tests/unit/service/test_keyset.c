/* The set of strings in byte order (service/keyset.c): add, remove and
 * look up; walks over a prefix in byte order that see that prefix's keys
 * only; a key that is a prefix of another; and out of memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "service/keyset.h"

typedef struct seen {
    char keys[64][40];
    size_t n;
} seen;

static void record(const char *key, void *ctx)
{
    seen *s = ctx;
    assert_true(s->n < 64);
    snprintf(s->keys[s->n++], sizeof s->keys[0], "%s", key);
}

static seen walk(const sb_keyset *ks, const char *prefix)
{
    seen s;
    s.n = 0;
    sb_keyset_each(ks, prefix, record, &s);
    return s;
}

static void test_add_remove(void **state)
{
    sb_keyset ks = {0};
    seen s;
    (void)state;
    assert_false(sb_keyset_has(&ks, "a"));
    assert_int_equal(sb_keyset_remove(&ks, "a"), 0);
    s = walk(&ks, "");
    assert_int_equal(s.n, 0);
    assert_int_equal(sb_keyset_add(&ks, "b"), 0);
    assert_int_equal(sb_keyset_add(&ks, "b"), 0); /* there already */
    assert_int_equal(ks.count, 1);
    assert_int_equal(sb_keyset_add(&ks, "ab"), 0);
    assert_int_equal(sb_keyset_add(&ks, "a"), 0); /* a prefix of another */
    assert_int_equal(sb_keyset_add(&ks, ""), 0);
    assert_int_equal(ks.count, 4);
    assert_true(sb_keyset_has(&ks, "a"));
    assert_true(sb_keyset_has(&ks, "ab"));
    assert_true(sb_keyset_has(&ks, ""));
    assert_false(sb_keyset_has(&ks, "abc"));
    assert_false(sb_keyset_has(&ks, "c"));
    s = walk(&ks, "");
    assert_int_equal(s.n, 4);
    assert_string_equal(s.keys[0], "");
    assert_string_equal(s.keys[1], "a");
    assert_string_equal(s.keys[2], "ab");
    assert_string_equal(s.keys[3], "b");
    assert_int_equal(sb_keyset_remove(&ks, "abc"), 0);
    assert_int_equal(sb_keyset_remove(&ks, "a"), 1);
    assert_int_equal(sb_keyset_remove(&ks, "a"), 0);
    assert_false(sb_keyset_has(&ks, "a"));
    assert_true(sb_keyset_has(&ks, "ab"));
    assert_int_equal(ks.count, 3);
    sb_keyset_clear(&ks);
    assert_int_equal(ks.count, 0);
    assert_false(sb_keyset_has(&ks, "ab"));
}

/* Protocol keys of several clients, added in no order: a client's prefix
 * finds its keys, in byte order, and no one else's. */
static void test_prefix_walk(void **state)
{
    static const char *const keys[] = {
        "$mqtt\nc2\nowed\n00000000000000000009",
        "$mqtt\nc1\nrel\n5",
        "$mqtt\nc1\nowed\n00000000000000000012",
        "$mqtt\nc10\nowed\n00000000000000000001",
        "$mqtt\nc1\nowed",
        "$mqtt\nc1\nowed\n00000000000000000003",
        "$bridge:b\nin\n1",
        "$mqtt\nc1\nowed\n00000000000000000100",
        "$mqtt\nc1\nin\n7",
        "$mqtt\nc1\nowed\n00000000000000000011",
    };
    sb_keyset ks = {0};
    seen s;
    (void)state;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_int_equal(sb_keyset_add(&ks, keys[i]), 0);
    s = walk(&ks, "$mqtt\nc1\nowed\n");
    assert_int_equal(s.n, 4);
    assert_string_equal(s.keys[0], "$mqtt\nc1\nowed\n00000000000000000003");
    assert_string_equal(s.keys[1], "$mqtt\nc1\nowed\n00000000000000000011");
    assert_string_equal(s.keys[2], "$mqtt\nc1\nowed\n00000000000000000012");
    assert_string_equal(s.keys[3], "$mqtt\nc1\nowed\n00000000000000000100");
    s = walk(&ks, "$mqtt\nc1\n");
    assert_int_equal(s.n, 7);
    assert_string_equal(s.keys[0], "$mqtt\nc1\nin\n7");
    assert_string_equal(s.keys[1], "$mqtt\nc1\nowed");
    assert_string_equal(s.keys[6], "$mqtt\nc1\nrel\n5");
    s = walk(&ks, "$mqtt\nc1");
    assert_int_equal(s.n, 8); /* c10's too */
    s = walk(&ks, "$mqtt\nc3\n");
    assert_int_equal(s.n, 0);
    s = walk(&ks, "$mqtt\nc1\nowed\n000000000000000000119");
    assert_int_equal(s.n, 0);
    s = walk(&ks, "$mqtt\nc1\nowed\n00000000000000000011");
    assert_int_equal(s.n, 1);
    s = walk(&ks, "$mqtt\nc2\nowed\n00000000000000000009");
    assert_int_equal(s.n, 1);
    s = walk(&ks, "$zz");
    assert_int_equal(s.n, 0);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i += 2)
        assert_int_equal(sb_keyset_remove(&ks, keys[i]), 1);
    s = walk(&ks, "$mqtt\nc1\nowed\n");
    assert_int_equal(s.n, 3);
    assert_string_equal(s.keys[0], "$mqtt\nc1\nowed\n00000000000000000003");
    assert_string_equal(s.keys[1], "$mqtt\nc1\nowed\n00000000000000000011");
    assert_string_equal(s.keys[2], "$mqtt\nc1\nowed\n00000000000000000100");
    s = walk(&ks, "");
    assert_int_equal(s.n, 5);
    sb_keyset_clear(&ks);
}

typedef struct in_order {
    char **want;
    size_t at, n;
} in_order;

static void check_next(const char *key, void *ctx)
{
    in_order *w = ctx;
    assert_true(w->at < w->n);
    assert_string_equal(key, w->want[w->at]);
    w->at++;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Many keys added and removed in a scrambled order keep byte order and
 * the count: the walk agrees with a sorted copy. */
static void test_many(void **state)
{
    enum { N = 2000 };
    static char names[N][24];
    char *sorted[N];
    sb_keyset ks = {0};
    size_t i, n = 0;
    (void)state;
    for (i = 0; i < N; i++) {
        /* scrambled, of several lengths, sharing prefixes */
        unsigned v = (unsigned)(i * 7919u % N);
        snprintf(names[i], sizeof names[i], "k\n%u\n%x", v % 13, v * 31u);
        assert_int_equal(sb_keyset_add(&ks, names[i]), 0);
    }
    assert_int_equal(ks.count, N);
    for (i = 0; i < N; i += 3)
        assert_int_equal(sb_keyset_remove(&ks, names[i]), 1);
    for (i = 0; i < N; i++)
        if (i % 3 != 0)
            sorted[n++] = names[i];
    qsort(sorted, n, sizeof(sorted[0]), cmp_str);
    assert_int_equal(ks.count, n);
    {
        in_order w = {sorted, 0, n};
        sb_keyset_each(&ks, "", check_next, &w);
        assert_int_equal(w.at, n);
    }
    for (i = 0; i < N; i++)
        assert_int_equal(sb_keyset_has(&ks, names[i]), i % 3 != 0);
    sb_keyset_clear(&ks);
}

/* Out of memory, an add fails whole: the set is as before. */
static void test_out_of_memory(void **state)
{
    sb_keyset ks = {0};
    seen s;
    (void)state;
    assert_int_equal(sb_keyset_add(&ks, "a"), 0);
    assert_int_equal(sb_keyset_add(&ks, "b"), 0);
    for (int fail_at = 0; fail_at < 2; fail_at++) {
        sb_alloc_fail_after(fail_at);
        assert_int_equal(sb_keyset_add(&ks, "c"), SB_ENOMEM);
        sb_alloc_fail_after(-1);
        assert_int_equal(ks.count, 2);
        assert_false(sb_keyset_has(&ks, "c"));
        s = walk(&ks, "");
        assert_int_equal(s.n, 2);
    }
    assert_int_equal(sb_keyset_add(&ks, "c"), 0);
    assert_int_equal(ks.count, 3);
    sb_keyset_clear(&ks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_remove),
        cmocka_unit_test(test_prefix_walk),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
