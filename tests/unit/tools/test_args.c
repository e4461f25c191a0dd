/* Option parsing, durations and sizes (tools/sbctl/args.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tools/sbctl/args.h"

static const sbctl_opt spec[] = {
    {"endpoint", 'e', SBCTL_OPT_STRING, 1, "ENDPOINT", "endpoint", 0, 0},
    {"help", 'h', SBCTL_OPT_FLAG, 0, NULL, "help", 0, 0},
    {"count", 'n', SBCTL_OPT_INT, 0, "N", "count", 1, 1000},
    {"timeout", 't', SBCTL_OPT_DURATION, 0, "DURATION", "timeout", 0, 3600000},
    {"size", 's', SBCTL_OPT_SIZE, 0, "BYTES", "size", 0, 0},
    {"retain", 'r', SBCTL_OPT_FLAG, 0, NULL, "retain", 0, 0},
    {"yes", 'y', SBCTL_OPT_FLAG, 0, NULL, "yes", 0, 0},
    {"file", 'f', SBCTL_OPT_STRING, 0, "FILE", "file", 0, 0},
};
#define NSPEC (sizeof(spec) / sizeof(spec[0]))

static int parse(sbctl_args *a, char *msg, int argc, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    return sbctl_args_parse(a, spec, NSPEC, argc, argv, msg, 256);
}

static void test_forms(void **state)
{
    sbctl_args a;
    char msg[256];
    (void)state;

    assert_int_equal(parse(&a, msg, 9, "orders/eu", "--count", "5", "-t2s", "--size=4KiB", "-ry",
                           "hello", "-e", "unix:x"),
                     0);
    assert_int_equal(a.npos, 2);
    assert_string_equal(a.pos[0], "orders/eu");
    assert_string_equal(a.pos[1], "hello");
    assert_int_equal(sbctl_arg_num(&a, "count", 1), 5);
    assert_int_equal(sbctl_arg_num(&a, "timeout", 0), 2000);
    assert_int_equal(sbctl_arg_num(&a, "size", 0), 4096);
    assert_true(sbctl_arg_flag(&a, "retain"));
    assert_true(sbctl_arg_flag(&a, "yes"));
    assert_false(sbctl_arg_flag(&a, "help"));
    assert_string_equal(sbctl_arg_str(&a, "endpoint", NULL), "unix:x");
    assert_null(sbctl_arg_str(&a, "file", NULL));
    assert_int_equal(sbctl_arg_num(&a, "timeout", 0), 2000);
    sbctl_args_free(&a);

    /* Defaults when absent; "-" and everything after "--" are positional. */
    assert_int_equal(parse(&a, msg, 4, "-", "--", "--count", "-n"), 0);
    assert_int_equal(a.npos, 3);
    assert_string_equal(a.pos[0], "-");
    assert_string_equal(a.pos[1], "--count");
    assert_string_equal(a.pos[2], "-n");
    assert_int_equal(sbctl_arg_num(&a, "count", 42), 42);
    assert_string_equal(sbctl_arg_str(&a, "file", "dflt"), "dflt");
    sbctl_args_free(&a);

    /* -n5 and -n 5; a value may start with '-'. */
    assert_int_equal(parse(&a, msg, 3, "-n5", "-f", "-"), 0);
    assert_int_equal(sbctl_arg_num(&a, "count", 0), 5);
    assert_string_equal(sbctl_arg_str(&a, "file", NULL), "-");
    sbctl_args_free(&a);
}

static void test_repeat(void **state)
{
    sbctl_args a;
    char msg[256];
    const sbctl_optval *v;
    (void)state;
    assert_int_equal(parse(&a, msg, 5, "-e", "unix:a", "--endpoint=tcp:h:1", "-eb:2", "x"), 0);
    v = sbctl_arg(&a, "endpoint");
    assert_int_equal(v->count, 3);
    assert_string_equal(v->list[0], "unix:a");
    assert_string_equal(v->list[1], "tcp:h:1");
    assert_string_equal(v->list[2], "b:2");
    assert_string_equal(v->str, "b:2");
    sbctl_args_free(&a);

    /* A non-repeatable option given twice is an error. */
    assert_int_equal(parse(&a, msg, 4, "-n", "1", "--count", "2"), -1);
    assert_string_equal(msg, "--count given more than once");
    sbctl_args_free(&a);
}

static void test_errors(void **state)
{
    sbctl_args a;
    char msg[256];
    (void)state;

    assert_int_equal(parse(&a, msg, 1, "--bogus"), -1);
    assert_string_equal(msg, "unknown option --bogus");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 1, "--bogus=1"), -1);
    assert_string_equal(msg, "unknown option --bogus");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 1, "-x"), -1);
    assert_string_equal(msg, "unknown option -x");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 1, "--count"), -1);
    assert_string_equal(msg, "--count needs a value (N)");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 1, "-n"), -1);
    assert_string_equal(msg, "-n needs a value (N)");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--count", "five"), -1);
    assert_string_equal(msg, "--count: expected an integer, got 'five'");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--count", "0"), -1);
    assert_string_equal(msg, "--count: must be between 1 and 1000, got '0'");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--count", "1001"), -1);
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 1, "--retain=yes"), -1);
    assert_string_equal(msg, "--retain takes no value");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--timeout", "5 s"), -1);
    assert_non_null(strstr(msg, "expected a duration"));
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--timeout", "2h"), -1);
    assert_string_equal(msg, "--timeout: '2h' is out of range");
    sbctl_args_free(&a);
    assert_int_equal(parse(&a, msg, 2, "--size", "1.5"), -1);
    sbctl_args_free(&a);
}

static void test_duration(void **state)
{
    int64_t ms;
    (void)state;
    assert_int_equal(sbctl_parse_duration("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(sbctl_parse_duration("10s", &ms), 0);
    assert_int_equal(ms, 10000);
    assert_int_equal(sbctl_parse_duration("10", &ms), -1); /* bare: unit required */
    assert_int_equal(sbctl_parse_duration("0.25", &ms), -1);
    assert_int_equal(sbctl_parse_duration("0", &ms), 0); /* except zero */
    assert_int_equal(ms, 0);
    assert_int_equal(sbctl_parse_duration("0.25s", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(sbctl_parse_duration("1.5m", &ms), 0);
    assert_int_equal(ms, 90000);
    assert_int_equal(sbctl_parse_duration("2min", &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(sbctl_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(sbctl_parse_duration("1d", &ms), 0);
    assert_int_equal(ms, 86400000);
    assert_int_equal(sbctl_parse_duration("0s", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(sbctl_parse_duration("", &ms), -1);
    assert_int_equal(sbctl_parse_duration("s", &ms), -1);
    assert_int_equal(sbctl_parse_duration("-1s", &ms), -1);
    assert_int_equal(sbctl_parse_duration("10x", &ms), -1);
    assert_int_equal(sbctl_parse_duration("10 s", &ms), -1);
    assert_int_equal(sbctl_parse_duration("1e300d", &ms), -1);
    assert_int_equal(sbctl_parse_duration("nan", &ms), -1);
    assert_int_equal(sbctl_parse_duration(NULL, &ms), -1);
}

static void test_size(void **state)
{
    int64_t b;
    (void)state;
    assert_int_equal(sbctl_parse_size("100", &b), 0);
    assert_int_equal(b, 100);
    assert_int_equal(sbctl_parse_size("0", &b), 0);
    assert_int_equal(b, 0);
    assert_int_equal(sbctl_parse_size("4KiB", &b), 0);
    assert_int_equal(b, 4096);
    assert_int_equal(sbctl_parse_size("1MiB", &b), 0);
    assert_int_equal(b, 1048576);
    assert_int_equal(sbctl_parse_size("1.5KiB", &b), 0);
    assert_int_equal(b, 1536);
    assert_int_equal(sbctl_parse_size("2GiB", &b), 0);
    assert_int_equal(b, 2147483648LL);
    assert_int_equal(sbctl_parse_size("1k", &b), 0);
    assert_int_equal(b, 1000);
    assert_int_equal(sbctl_parse_size("3MB", &b), 0);
    assert_int_equal(b, 3000000);
    assert_int_equal(sbctl_parse_size("10B", &b), 0);
    assert_int_equal(b, 10);
    assert_int_equal(sbctl_parse_size("1.5", &b), -1);
    assert_int_equal(sbctl_parse_size("-1", &b), -1);
    assert_int_equal(sbctl_parse_size("1TiB", &b), -1);
    assert_int_equal(sbctl_parse_size("x", &b), -1);
}

static void test_int(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(sbctl_parse_int("42", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(sbctl_parse_int("-7", &v), 0);
    assert_int_equal(v, -7);
    assert_int_equal(sbctl_parse_int("9223372036854775807", &v), 0);
    assert_int_equal(sbctl_parse_int("9223372036854775808", &v), -1);
    assert_int_equal(sbctl_parse_int("1x", &v), -1);
    assert_int_equal(sbctl_parse_int("", &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),  cmocka_unit_test(test_repeat),
        cmocka_unit_test(test_errors), cmocka_unit_test(test_duration),
        cmocka_unit_test(test_size),   cmocka_unit_test(test_int),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
