/*
 * The clipboard adapter's portable pieces (adapters/clipboard/clip_formats.c):
 * format names, the owner-program filter, the topic template.
 */
#include "adapters/clipboard/clip_formats.h"
#include "service/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void test_formats(void **state)
{
    const sb_clip_std *f;
    (void)state;
    f = sb_clip_std_by_name("CF_UNICODETEXT");
    assert_non_null(f);
    assert_int_equal(f->id, 13);
    assert_int_equal(f->kind, SB_CLIP_UTF16);
    f = sb_clip_std_by_name("cf_text");
    assert_non_null(f);
    assert_int_equal(f->id, 1);
    assert_ptr_equal(sb_clip_std_by_id(8), sb_clip_std_by_name("CF_DIB"));
    assert_null(sb_clip_std_by_id(2)); /* CF_BITMAP: a GDI handle */
    assert_null(sb_clip_std_by_name("HTML Format"));

    assert_null(sb_clip_format_problem("CF_UNICODETEXT"));
    assert_null(sb_clip_format_problem("HTML Format"));
    assert_null(sb_clip_format_problem("CFX"));
    assert_non_null(sb_clip_format_problem(""));
    assert_non_null(strstr(sb_clip_format_problem("CF_BITMAP"), "not a standard format"));
    assert_non_null(strstr(sb_clip_format_problem("49321"), "format number"));
    assert_non_null(strstr(sb_clip_format_problem("#49321"), "format number"));
    {
        char longname[300];
        memset(longname, 'a', sizeof longname - 1);
        longname[sizeof longname - 1] = '\0';
        assert_non_null(sb_clip_format_problem(longname));
    }
}

static void test_owner_filter(void **state)
{
    static const char *const names[] = {"notepad.exe", "LEGACY.EXE"};
    (void)state;
    assert_true(sb_clip_owner_allowed(names, 0, NULL));
    assert_true(sb_clip_owner_allowed(names, 0, "C:\\x\\y.exe"));
    assert_true(sb_clip_owner_allowed(names, 2, "C:\\Windows\\System32\\NOTEPAD.EXE"));
    assert_true(sb_clip_owner_allowed(names, 2, "Z:/opt/app/legacy.exe"));
    assert_true(sb_clip_owner_allowed(names, 2, "legacy.exe"));
    assert_false(sb_clip_owner_allowed(names, 2, "C:\\x\\notepad.exe.bak"));
    assert_false(sb_clip_owner_allowed(names, 2, "C:\\notepad.exe\\other.exe"));
    assert_false(sb_clip_owner_allowed(names, 2, NULL));
    assert_string_equal(sb_clip_base_name("a\\b/c.exe"), "c.exe");
    assert_string_equal(sb_clip_base_name("c.exe"), "c.exe");
}

static void test_topic(void **state)
{
    char *t;
    (void)state;
    t = sb_clip_topic(NULL, "clip", "CF_UNICODETEXT");
    assert_string_equal(t, "clip");
    sb_free(t);
    t = sb_clip_topic("desk/{adapter}/{format}", "a/b", "My+Format#1");
    assert_string_equal(t, "desk/a_b/My_Format_1");
    sb_free(t);
    t = sb_clip_topic("{format}{format}/{x}", "a", "F");
    assert_string_equal(t, "FF/{x}");
    sb_free(t);
    sb_alloc_fail_after(0);
    t = sb_clip_topic(NULL, "a", "b");
    sb_alloc_fail_after(-1);
    assert_null(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_owner_filter),
        cmocka_unit_test(test_topic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
