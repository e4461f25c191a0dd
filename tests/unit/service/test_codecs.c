/* Small codecs of the core: base64, the JSON writer, the string map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "service/alloc.h"
#include "service/base64.h"
#include "service/error.h"
#include "service/jsonw.h"
#include "service/map.h"

static void test_base64_round_trip(void **state)
{
    const unsigned char in[] = {0, 1, 2, 0xff, 0xfe, 'a', 'b'};
    (void)state;
    for (size_t n = 0; n <= sizeof(in); n++) {
        char *enc = sb_base64_encode(in, n);
        unsigned char *dec;
        size_t len;
        assert_non_null(enc);
        assert_int_equal(strlen(enc), 4 * ((n + 2) / 3));
        assert_int_equal(sb_base64_decode(enc, strlen(enc), &dec, &len), 0);
        assert_int_equal(len, n);
        assert_memory_equal(dec, in, n);
        sb_free(dec);
        sb_free(enc);
    }
    {
        char *enc = sb_base64_encode((const unsigned char *)"hello", 5);
        assert_string_equal(enc, "aGVsbG8=");
        sb_free(enc);
    }
}

static void test_base64_rejects_garbage(void **state)
{
    unsigned char *dec;
    size_t len;
    (void)state;
    assert_int_equal(sb_base64_decode("aG!s", 4, &dec, &len), SB_EINVAL);
    assert_int_equal(sb_base64_decode("a\0bc", 4, &dec, &len), SB_EINVAL);
    /* Lengths and padding that no encoder produces. */
    assert_int_equal(sb_base64_decode("Z", 1, &dec, &len), SB_EINVAL);
    assert_int_equal(sb_base64_decode("Zg=", 3, &dec, &len), SB_EINVAL);
    assert_int_equal(sb_base64_decode("Z===", 4, &dec, &len), SB_EINVAL);
    /* Padding may be left out. */
    assert_int_equal(sb_base64_decode("Zm8", 3, &dec, &len), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(dec, "fo", 2);
    sb_free(dec);
}

static void test_jsonw_escapes_round_trip(void **state)
{
    const char tricky[] = "quote\" back\\ nl\n tab\t ctl\x01 \xc3\xa9";
    sb_jsonw w = {0};
    json_t *parsed;
    json_error_t jerr;
    (void)state;
    sb_jsonw_lit(&w, "{\"s\":");
    sb_jsonw_str(&w, tricky, sizeof(tricky) - 1);
    sb_jsonw_lit(&w, ",\"n\":");
    sb_jsonw_int(&w, -9007199254740993LL);
    sb_jsonw_raw(&w, "}", 1);
    assert_false(w.failed);
    parsed = json_loadb(w.buf, w.len, 0, &jerr);
    assert_non_null(parsed);
    assert_string_equal(json_string_value(json_object_get(parsed, "s")), tricky);
    assert_int_equal(json_integer_value(json_object_get(parsed, "n")), -9007199254740993LL);
    json_decref(parsed);
    sb_jsonw_free(&w);
}

/* The word-at-a-time scan stops exactly where a byte-by-byte one would:
 * every special byte (controls, '"', '\\', non-ASCII, the neighbours of
 * each) at every offset of a 40-byte plain string, and written strings
 * still parse back to what was written. */
static void test_json_plain_run_matches_bytewise(void **state)
{
    static const unsigned char specials[] = {0x00, 0x01, 0x1f, '"',  '\\', 0x7f, 0x80,
                                             0xc3, 0xff, 0x20, 0x21, 0x23, 0x5b, 0x5d};
    char buf[40];
    (void)state;
    for (size_t k = 0; k < sizeof(specials); k++)
        for (size_t at = 0; at < sizeof(buf); at++) {
            size_t expect = 0;
            sb_jsonw w = {0};
            json_t *parsed;
            memset(buf, 'a', sizeof(buf));
            buf[at] = (char)specials[k];
            while (expect < sizeof(buf)) {
                unsigned char c = (unsigned char)buf[expect];
                if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
                    break;
                expect++;
            }
            assert_int_equal(sb_json_plain_run(buf, sizeof(buf)), expect);
            assert_int_equal(sb_json_plain_run(buf, at), at);
            if (specials[k] >= 0x80)
                continue; /* not UTF-8 alone: not for the writer */
            sb_jsonw_str(&w, buf, sizeof(buf));
            assert_false(w.failed);
            parsed = json_loadb(w.buf, w.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
            assert_non_null(parsed);
            assert_int_equal(json_string_length(parsed), sizeof(buf));
            assert_memory_equal(json_string_value(parsed), buf, sizeof(buf));
            json_decref(parsed);
            sb_jsonw_free(&w);
        }
}

static void test_jsonw_out_of_memory_sticks(void **state)
{
    sb_jsonw w = {0};
    (void)state;
    sb_alloc_fail_after(0);
    sb_jsonw_lit(&w, "abc");
    sb_alloc_fail_after(-1);
    sb_jsonw_lit(&w, "def");
    assert_true(w.failed);
    sb_jsonw_free(&w);
}

static void count_values(const char *key, void *value, void *ctx)
{
    (void)key;
    *(intptr_t *)ctx += (intptr_t)value;
}

static void test_map(void **state)
{
    sb_map m = {0};
    char key[32];
    void *old;
    intptr_t sum = 0;
    (void)state;
    assert_null(sb_map_get(&m, "missing"));
    for (intptr_t i = 1; i <= 1000; i++) {
        snprintf(key, sizeof(key), "k%ld", (long)i);
        assert_int_equal(sb_map_put(&m, key, (void *)i, &old), 0);
        assert_null(old);
    }
    assert_int_equal(m.count, 1000);
    assert_int_equal(sb_map_put(&m, "k7", (void *)70, &old), 0);
    assert_int_equal((intptr_t)old, 7);
    assert_int_equal((intptr_t)sb_map_get(&m, "k7"), 70);
    assert_int_equal((intptr_t)sb_map_remove(&m, "k7"), 70);
    assert_null(sb_map_get(&m, "k7"));
    assert_null(sb_map_remove(&m, "k7"));
    sb_map_each(&m, count_values, &sum);
    assert_int_equal(sum, 1000 * 1001 / 2 - 7);
    sb_map_clear(&m);
    assert_int_equal(m.count, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_round_trip),
        cmocka_unit_test(test_base64_rejects_garbage),
        cmocka_unit_test(test_jsonw_escapes_round_trip),
        cmocka_unit_test(test_json_plain_run_matches_bytewise),
        cmocka_unit_test(test_jsonw_out_of_memory_sticks),
        cmocka_unit_test(test_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
