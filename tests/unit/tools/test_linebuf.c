/* Line framing (tools/client/linebuf.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "tools/client/linebuf.h"

static int next(sb_linebuf *b, char **line, size_t *len)
{
    return sb_linebuf_next(b, line, len);
}

static void test_lines(void **state)
{
    sb_linebuf b;
    char *line;
    size_t len;
    (void)state;
    sb_linebuf_init(&b, 100);
    assert_int_equal(next(&b, &line, &len), 0);
    assert_int_equal(sb_linebuf_append(&b, "{\"a\":1}\n{\"b\"", 12), 0);
    assert_int_equal(next(&b, &line, &len), 1);
    assert_string_equal(line, "{\"a\":1}");
    assert_int_equal(len, 7);
    assert_int_equal(next(&b, &line, &len), 0); /* partial line waits */
    assert_int_equal(sb_linebuf_append(&b, ":2}\r\n\n", 6), 0);
    assert_int_equal(next(&b, &line, &len), 1);
    assert_string_equal(line, "{\"b\":2}"); /* CR dropped */
    assert_int_equal(next(&b, &line, &len), 1);
    assert_string_equal(line, ""); /* empty line */
    assert_int_equal(len, 0);
    assert_int_equal(next(&b, &line, &len), 0);
    assert_int_equal(sb_linebuf_pending(&b), 0);
    sb_linebuf_free(&b);
}

static void test_byte_at_a_time(void **state)
{
    const char *text = "one\ntwo\r\nthree\n";
    const char *want[] = {"one", "two", "three"};
    size_t got = 0;
    sb_linebuf b;
    (void)state;
    sb_linebuf_init(&b, 16);
    for (const char *p = text; *p != '\0'; p++) {
        char *line;
        size_t len;
        assert_int_equal(sb_linebuf_append(&b, p, 1), 0);
        while (next(&b, &line, &len) == 1)
            assert_string_equal(line, want[got++]);
    }
    assert_int_equal(got, 3);
    sb_linebuf_free(&b);
}

static void test_max_line(void **state)
{
    char data[64];
    sb_linebuf b;
    char *line;
    size_t len;
    (void)state;

    /* Exactly max_line bytes (plus CRLF) is accepted. */
    sb_linebuf_init(&b, 8);
    assert_int_equal(sb_linebuf_append(&b, "12345678\r\n", 10), 0);
    assert_int_equal(next(&b, &line, &len), 1);
    assert_string_equal(line, "12345678");
    sb_linebuf_free(&b);

    /* One more is refused, whether or not the newline has arrived. */
    sb_linebuf_init(&b, 8);
    assert_int_equal(sb_linebuf_append(&b, "123456789\n", 10), 0);
    assert_int_equal(next(&b, &line, &len), SB_ETOOBIG);
    sb_linebuf_free(&b);

    sb_linebuf_init(&b, 8);
    memset(data, 'x', sizeof(data));
    assert_int_equal(sb_linebuf_append(&b, data, 10), 0);
    assert_int_equal(next(&b, &line, &len), SB_ETOOBIG);
    sb_linebuf_free(&b);

    /* An unterminated line cannot grow the buffer past the limit. */
    sb_linebuf_init(&b, 8);
    assert_int_equal(sb_linebuf_append(&b, data, sizeof(data)), SB_ETOOBIG);
    sb_linebuf_free(&b);
}

static void test_many_lines_and_growth(void **state)
{
    sb_linebuf b;
    char *line;
    size_t len, n = 0;
    char big[200000];
    (void)state;

    /* Many short lines appended at once exceed max_line in total: fine. */
    sb_linebuf_init(&b, 10);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(sb_linebuf_append(&b, "abc\n", 4), 0);
    while (next(&b, &line, &len) == 1) {
        assert_string_equal(line, "abc");
        n++;
    }
    assert_int_equal(n, 1000);
    sb_linebuf_free(&b);

    /* A line longer than the initial buffer grows it. */
    sb_linebuf_init(&b, sizeof(big));
    memset(big, 'y', sizeof(big));
    for (size_t off = 0; off < sizeof(big); off += 1000) {
        assert_int_equal(sb_linebuf_append(&b, big + off, 1000), 0);
        assert_int_equal(next(&b, &line, &len), 0);
    }
    assert_int_equal(sb_linebuf_append(&b, "\n", 1), 0);
    assert_int_equal(next(&b, &line, &len), 1);
    assert_int_equal(len, sizeof(big));
    assert_int_equal(line[len - 1], 'y');
    sb_linebuf_free(&b);
}

static void test_oom(void **state)
{
    sb_linebuf b;
    (void)state;
    sb_linebuf_init(&b, 100);
    sb_alloc_fail_after(0);
    assert_int_equal(sb_linebuf_append(&b, "x\n", 2), SB_ENOMEM);
    sb_alloc_fail_after(-1);
    assert_int_equal(sb_linebuf_append(&b, "x\n", 2), 0);
    sb_linebuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),    cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_max_line), cmocka_unit_test(test_many_lines_and_growth),
        cmocka_unit_test(test_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
