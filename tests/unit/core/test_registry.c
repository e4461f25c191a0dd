/*
 * The adapter type registry (service/registry.c): what it refuses, with a
 * message naming the type — service/main.c stops with that message when a
 * built-in type cannot be registered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "service/adapter.h"

static sb_adapter_type make_type(const char *name)
{
    sb_adapter_type t;
    memset(&t, 0, sizeof(t));
    t.version = SB_ADAPTER_VERSION;
    t.name = name;
    t.caps = SB_CAP_SINK;
    return t;
}

/* The registry is one table per process: the cases run in this order. */
static sb_adapter_type alpha, beta, gamma_, alpha_again, future;
static char names[SB_ADAPTER_TYPES_MAX][16];
static sb_adapter_type filler[SB_ADAPTER_TYPES_MAX];

static void test_register_and_find(void **state)
{
    sb_error err;
    (void)state;
    alpha = make_type("alpha");
    assert_null(sb_adapter_find("alpha"));
    assert_int_equal(sb_adapter_register(&alpha, &err), 0);
    assert_ptr_equal(sb_adapter_find("alpha"), &alpha);
    assert_null(sb_adapter_find("alph"));
}

static void test_duplicate_name(void **state)
{
    sb_error err;
    (void)state;
    alpha_again = make_type("alpha");
    assert_int_equal(sb_adapter_register(&alpha_again, &err), SB_EEXIST);
    assert_string_equal(err.msg, "adapter type alpha: registered twice");
    assert_ptr_equal(sb_adapter_find("alpha"), &alpha);
}

static void test_wrong_version(void **state)
{
    sb_error err;
    char want[128];
    (void)state;
    future = make_type("future");
    future.version = SB_ADAPTER_VERSION + 1;
    assert_int_equal(sb_adapter_register(&future, &err), SB_EVERSION);
    snprintf(want, sizeof(want), "adapter type future: interface version %d, this broker has %d",
             SB_ADAPTER_VERSION + 1, SB_ADAPTER_VERSION);
    assert_string_equal(err.msg, want);
    assert_null(sb_adapter_find("future"));
}

static void test_register_all_stops_at_failure(void **state)
{
    sb_error err;
    const sb_adapter_type *list[] = {&beta, &alpha_again, &gamma_, NULL};
    (void)state;
    beta = make_type("beta");
    gamma_ = make_type("gamma");
    assert_int_equal(sb_adapter_register_all(list, &err), SB_EEXIST);
    assert_string_equal(err.msg, "adapter type alpha: registered twice");
    assert_ptr_equal(sb_adapter_find("beta"), &beta);
    assert_null(sb_adapter_find("gamma"));
}

static void test_full_table(void **state)
{
    sb_error err;
    char want[128];
    size_t i;
    int rc = 0;
    (void)state;
    /* alpha and beta hold two slots already. */
    for (i = 0; i < SB_ADAPTER_TYPES_MAX && rc == 0; i++) {
        snprintf(names[i], sizeof(names[i]), "filler%zu", i);
        filler[i] = make_type(names[i]);
        rc = sb_adapter_register(&filler[i], &err);
    }
    assert_int_equal(rc, SB_EFULL);
    assert_int_equal(i, SB_ADAPTER_TYPES_MAX - 2 + 1);
    snprintf(want, sizeof(want), "adapter type %s: the registry is full (%d types)", names[i - 1],
             SB_ADAPTER_TYPES_MAX);
    assert_string_equal(err.msg, want);
    assert_null(sb_adapter_find(names[i - 1]));
    assert_ptr_equal(sb_adapter_find(names[0]), &filler[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_find),
        cmocka_unit_test(test_duplicate_name),
        cmocka_unit_test(test_wrong_version),
        cmocka_unit_test(test_register_all_stops_at_failure),
        cmocka_unit_test(test_full_table),
    };
    return cmocka_run_group_tests_name("registry", tests, NULL, NULL);
}
