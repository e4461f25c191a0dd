/*
 * The DDE adapter's mapping between (DDE topic, item) pairs and broker
 * topics (adapters/dde/dde_map.c): templates, both directions, filters,
 * names that cannot be topic levels.
 */
#include "adapters/dde/dde_map.h"
#include "service/alloc.h"
#include "service/error.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void expect_topic(const sb_dde_map *m, const char *t, const char *i, const char *want)
{
    char *got = NULL;
    assert_int_equal(sb_dde_map_topic(&got, m, t, i), 0);
    assert_string_equal(got, want);
    sb_free(got);
}

static void expect_match(const sb_dde_map *m, const char *topic, const char *t, const char *i)
{
    char *gt = NULL, *gi = NULL;
    assert_int_equal(sb_dde_map_match(m, topic, &gt, &gi), 0);
    if (t == NULL)
        assert_null(gt);
    else
        assert_string_equal(gt, t);
    assert_string_equal(gi, i);
    sb_free(gt);
    sb_free(gi);
}

static void expect_no_match(const sb_dde_map *m, const char *topic)
{
    char *gt = (char *)1, *gi = (char *)1;
    assert_int_equal(sb_dde_map_match(m, topic, &gt, &gi), SB_ENOTFOUND);
    assert_null(gt);
    assert_null(gi);
}

static void test_excel_link(void **state)
{
    sb_dde_map m;
    char *f;
    (void)state;
    assert_int_equal(sb_dde_map_init(&m, "plant/{dde_topic}/{item}", "excel", "SWITCHBOARD"), 0);
    /* =SWITCHBOARD|Line1!Temp */
    expect_topic(&m, "Line1", "Temp", "plant/Line1/Temp");
    expect_topic(&m, "Line 1", "Temp A", "plant/Line 1/Temp A");
    expect_match(&m, "plant/Line1/Temp", "Line1", "Temp");
    expect_match(&m, "plant/Ölstand/Füllung", "Ölstand", "Füllung");
    expect_no_match(&m, "plant/Line1");
    expect_no_match(&m, "plant/Line1/Temp/x");
    expect_no_match(&m, "other/Line1/Temp");
    expect_no_match(&m, "plant//Temp");
    expect_no_match(&m, "plant/Line1/");
    f = sb_dde_map_filter(&m, NULL);
    assert_string_equal(f, "plant/+/+");
    sb_free(f);
    f = sb_dde_map_filter(&m, "Line1");
    assert_string_equal(f, "plant/Line1/+");
    sb_free(f);
    assert_null(sb_dde_map_filter(&m, "a/b"));
    sb_dde_map_free(&m);
}

static void test_constants(void **state)
{
    sb_dde_map m;
    (void)state;
    /* The default template; a '/' in the service name becomes '_'. */
    assert_int_equal(sb_dde_map_init(&m, "{service}/{dde_topic}/{item}", "plc", "PLC/1"), 0);
    expect_topic(&m, "Line1", "Temp", "PLC_1/Line1/Temp");
    expect_match(&m, "PLC_1/Line1/Temp", "Line1", "Temp");
    expect_no_match(&m, "PLC/1/Line1/Temp");
    sb_dde_map_free(&m);

    /* No {dde_topic}: a server of one DDE topic, constants inside levels. */
    assert_int_equal(sb_dde_map_init(&m, "v-{adapter}/x{service}y/{item}/last", "a+b", "S"), 0);
    assert_int_equal(m.topic_level, -1);
    expect_topic(&m, NULL, "Temp", "v-a_b/xSy/Temp/last");
    expect_match(&m, "v-a_b/xSy/Temp/last", NULL, "Temp");
    expect_no_match(&m, "v-a_b/xSy/Temp");
    sb_dde_map_free(&m);

    assert_int_equal(sb_dde_map_init(&m, "{item}", "a", "S"), 0);
    expect_match(&m, "Temp", NULL, "Temp");
    expect_no_match(&m, "a/Temp");
    sb_dde_map_free(&m);
}

static void test_bad(void **state)
{
    sb_dde_map m;
    char *out = (char *)1;
    (void)state;
    assert_int_equal(sb_dde_map_init(&m, "plant/{dde_topic}", "a", "S"), SB_EINVAL);
    sb_dde_map_free(&m);
    assert_int_equal(sb_dde_map_init(&m, "p/x{item}", "a", "S"), SB_EINVAL);
    sb_dde_map_free(&m);
    assert_int_equal(sb_dde_map_init(&m, "p/{item}/{item}", "a", "S"), SB_EINVAL);
    sb_dde_map_free(&m);

    assert_int_equal(sb_dde_map_init(&m, "p/{dde_topic}/{item}", "a", "S"), 0);
    assert_int_equal(sb_dde_map_topic(&out, &m, "Line1", "a/b"), SB_EINVAL);
    assert_null(out);
    assert_int_equal(sb_dde_map_topic(&out, &m, "L+", "x"), SB_EINVAL);
    assert_int_equal(sb_dde_map_topic(&out, &m, NULL, "x"), SB_EINVAL);
    assert_int_equal(sb_dde_map_topic(&out, &m, "L", ""), SB_EINVAL);
    sb_dde_map_free(&m);

    assert_non_null(sb_dde_name_problem(""));
    assert_non_null(sb_dde_name_problem("#"));
    assert_null(sb_dde_name_problem("R1C1"));
    {
        char longname[300];
        memset(longname, 'x', sizeof longname - 1);
        longname[sizeof longname - 1] = '\0';
        assert_non_null(sb_dde_name_problem(longname));
        longname[255] = '\0';
        assert_null(sb_dde_name_problem(longname));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_excel_link),
        cmocka_unit_test(test_constants),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
