/* Topic validation and MQTT filter matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/topic.h"

static void test_match(void **state)
{
    (void)state;
    assert_true(sb_topic_match("a/b", "a/b"));
    assert_false(sb_topic_match("a/b", "a/c"));
    assert_true(sb_topic_match("a/+", "a/b"));
    assert_false(sb_topic_match("a/+", "a/b/c"));
    assert_true(sb_topic_match("a/+/c", "a/b/c"));
    assert_true(sb_topic_match("a/#", "a/b/c"));
    assert_true(sb_topic_match("a/#", "a"));
    assert_true(sb_topic_match("#", "a/b"));
    assert_true(sb_topic_match("+/+", "/x"));
    assert_true(sb_topic_match("+", ""));
    assert_false(sb_topic_match("a", "a/b"));
    assert_false(sb_topic_match("a/b", "a"));
    assert_true(sb_topic_match("a//b", "a//b"));
    assert_true(sb_topic_match("a/+/b", "a//b"));
}

static void test_dollar_topics(void **state)
{
    (void)state;
    assert_false(sb_topic_match("#", "$SYS/uptime"));
    assert_false(sb_topic_match("+/uptime", "$SYS/uptime"));
    assert_true(sb_topic_match("$SYS/#", "$SYS/uptime"));
    assert_true(sb_topic_match("$dlq/+", "$dlq/audit"));
}

static void test_validate(void **state)
{
    const char *why = NULL;
    (void)state;
    assert_int_equal(sb_topic_validate("a/b", 3, &why), 0);
    assert_int_not_equal(sb_topic_validate("a/+", 3, &why), 0);
    assert_non_null(why);
    assert_int_not_equal(sb_topic_validate("", 0, &why), 0);
    assert_int_not_equal(sb_topic_validate("a\0b", 3, &why), 0);
    assert_int_not_equal(sb_topic_validate("\xff", 1, &why), 0);
    assert_int_equal(sb_filter_validate("a/+/#", 5, &why), 0);
    assert_int_not_equal(sb_filter_validate("a/#/b", 5, &why), 0);
    assert_int_not_equal(sb_filter_validate("a+", 2, &why), 0);
    assert_int_not_equal(sb_filter_validate("a/b#", 4, &why), 0);
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(sb_utf8_valid("h\xc3\xa9llo", 6));
    assert_true(sb_utf8_valid("\xf0\x9f\x98\x80", 4));
    assert_false(sb_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(sb_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(sb_utf8_valid("\xe2\x82", 2));         /* truncated */
    assert_false(sb_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_dollar_topics),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
