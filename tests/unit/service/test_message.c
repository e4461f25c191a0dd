/* Messages: headers round trip, refcounting, out-of-memory paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "service/message.h"

static void test_headers_round_trip(void **state)
{
    sb_message *m = sb_message_new("t/1", "abc", 3), *back;
    unsigned char *blob;
    size_t len;
    (void)state;
    assert_non_null(m);
    assert_int_equal(sb_message_add_header(m, "content-type", "text/plain"), 0);
    assert_int_equal(sb_message_add_header(m, "k", ""), 0);
    assert_int_equal(sb_message_headers_encode(m, &blob, &len), 0);
    back = sb_message_new("t/1", "", 0);
    assert_int_equal(sb_message_headers_decode(back, blob, len), 0);
    assert_int_equal(back->header_count, 2);
    assert_string_equal(sb_message_header(back, "content-type"), "text/plain");
    assert_string_equal(sb_message_header(back, "k"), "");
    assert_null(sb_message_header(back, "missing"));
    /* A blob cut in the middle of a value is corrupt, not a crash. */
    sb_message_unref(back);
    back = sb_message_new("t/1", "", 0);
    assert_int_equal(sb_message_headers_decode(back, blob, len - 1), SB_ECORRUPT);
    sb_free(blob);
    sb_message_unref(back);
    sb_message_unref(m);
}

/* A key or value given with a NUL inside ends there, as a C string does
 * everywhere else: the message's size and its encoding agree. */
static void test_header_with_nul(void **state)
{
    sb_message *m = sb_message_new("t/1", "abc", 3), *back;
    unsigned char *blob;
    size_t len, before;
    (void)state;
    assert_non_null(m);
    before = sb_message_size(m);
    assert_int_equal(sb_message_add_header_n(m, "k\0x", 3, "a\0bcdefgh", 9), 0);
    assert_string_equal(sb_message_header(m, "k"), "a");
    assert_int_equal(sb_message_size(m), before + 4);
    assert_int_equal(sb_message_headers_encode(m, &blob, &len), 0);
    assert_int_equal(len, 4);
    back = sb_message_new("t/1", "", 0);
    assert_int_equal(sb_message_headers_decode(back, blob, len), 0);
    assert_string_equal(sb_message_header(back, "k"), "a");
    sb_free(blob);
    sb_message_unref(back);
    sb_message_unref(m);
}

static void test_refcount(void **state)
{
    sb_message *m = sb_message_new("t", "x", 1);
    (void)state;
    sb_message_ref(m);
    assert_int_equal(m->refs, 2);
    sb_message_unref(m);
    assert_int_equal(m->refs, 1);
    assert_true(sb_message_size(m) >= 2);
    sb_message_unref(m);
}

static void test_out_of_memory(void **state)
{
    (void)state;
    for (long n = 0; n < 3; n++) {
        sb_message *m;
        sb_alloc_fail_after(n);
        m = sb_message_new("topic", "payload", 7);
        sb_alloc_fail_after(-1);
        if (m != NULL)
            sb_message_unref(m);
    }
    sb_alloc_fail_after(0);
    assert_null(sb_message_new("topic", "payload", 7));
    sb_alloc_fail_after(-1);
}

/* Headers within the room asked for take no allocation; more go apart,
 * the size counts them all either way, and each out-of-memory along the
 * way leaves a message that frees cleanly (ASan/LSan check the frees). */
static void test_room(void **state)
{
    (void)state;
    for (long fail = -1;; fail++) {
        sb_message *m;
        long failures;
        int rc = 0;
        sb_alloc_fail_once(fail);
        m = sb_message_new_room("t/abc!", 5, "xyz", 3, 2, sizeof("k1") + sizeof("v1") + 2);
        if (m != NULL) {
            const char *keys[] = {"k1", "k2", "k3", "k4"}, *vals[] = {"v1", "", "value three", "4"};
            assert_string_equal(m->topic, "t/abc");
            assert_int_equal(m->topic_len, 5);
            assert_memory_equal(m->payload, "xyz", 3);
            for (int i = 0; i < 4 && rc == 0; i++)
                rc = sb_message_add_header(m, keys[i], vals[i]);
            failures = sb_alloc_failures();
            sb_alloc_fail_once(-1);
            if (rc == 0) {
                assert_int_equal(m->header_count, 4);
                for (int i = 0; i < 4; i++)
                    assert_string_equal(sb_message_header(m, keys[i]), vals[i]);
                /* topic 5 + payload 3 + headers (2+2+2) + (2+0+2) + (2+11+2) + (2+1+2) */
                assert_int_equal(sb_message_size(m), 5 + 3 + 6 + 4 + 15 + 5);
            } else {
                assert_int_equal(rc, SB_ENOMEM);
                assert_int_equal(sb_message_size(m), 5 + 3 + (m->header_count > 0 ? 6 : 0) +
                                                         (m->header_count > 1 ? 4 : 0) +
                                                         (m->header_count > 2 ? 15 : 0));
            }
            sb_message_unref(m);
        } else {
            failures = sb_alloc_failures();
            sb_alloc_fail_once(-1);
        }
        if (fail == -1) {
            assert_non_null(m);
            continue;
        }
        if (failures == 0)
            break; /* every allocation was failed once */
    }
}

/* The first header within the room: no allocation at all. */
static void test_room_no_allocation(void **state)
{
    sb_message *m = sb_message_new_room("a", 1, "", 0, 1, sizeof("source") + sizeof("jsonl x"));
    (void)state;
    assert_non_null(m);
    sb_alloc_fail_after(0);
    assert_int_equal(sb_message_add_header(m, "source", "jsonl x"), 0);
    assert_int_equal(sb_alloc_failures(), 0);
    /* no room left: the next one needs memory, and says so */
    assert_int_equal(sb_message_add_header(m, "k", "v"), SB_ENOMEM);
    sb_alloc_fail_after(-1);
    assert_string_equal(sb_message_header(m, "source"), "jsonl x");
    assert_int_equal(sb_message_size(m), 1 + 7 + 8);
    sb_message_unref(m);
}

/* A protocol's encoding is kept from the second delivery asking, for
 * that protocol only; out of memory keeps nothing, and asking goes on. */
static void test_encoded(void **state)
{
    static const char a, b;
    sb_message *m = sb_message_new("t", "x", 1);
    size_t len = 0;
    int keep = -1;
    (void)state;
    assert_null(sb_message_encoded(m, &a, &len, &keep));
    assert_int_equal(keep, 0); /* the first: not worth a copy */
    assert_null(sb_message_encoded(m, &a, &len, &keep));
    assert_int_equal(keep, 1);
    sb_alloc_fail_after(0);
    sb_message_keep_encoded(m, &a, "abc", 3);
    sb_alloc_fail_after(-1);
    assert_null(sb_message_encoded(m, &a, &len, &keep));
    assert_int_equal(keep, 1);
    sb_message_keep_encoded(m, &a, "abc", 3);
    sb_message_keep_encoded(m, &a, "zzz", 3); /* kept already */
    assert_non_null(sb_message_encoded(m, &a, &len, &keep));
    assert_int_equal(len, 3);
    assert_memory_equal(sb_message_encoded(m, &a, &len, &keep), "abc", 3);
    assert_int_equal(keep, 0);
    /* another protocol's: neither given nor kept */
    assert_null(sb_message_encoded(m, &b, &len, &keep));
    assert_null(sb_message_encoded(m, &b, &len, &keep));
    assert_int_equal(keep, 0);
    sb_message_keep_encoded(m, &b, "b", 1);
    assert_memory_equal(sb_message_encoded(m, &a, &len, &keep), "abc", 3);
    sb_message_unref(m); /* frees the kept copy (LSan) */
}

/* The kept copies of all messages stay within SB_MESSAGE_ENCODED_MAX. */
static void test_encoded_bounded(void **state)
{
    static const char a;
    sb_message *m = sb_message_new("t", "x", 1), *n = sb_message_new("t", "y", 1);
    size_t len = 0, big = SB_MESSAGE_ENCODED_MAX - 10;
    char *data = calloc(1, big);
    int keep = 0;
    (void)state;
    assert_non_null(data);
    assert_int_equal(sb_message_encoded_bytes(), 0);
    for (int i = 0; i < 2; i++) {
        assert_null(sb_message_encoded(m, &a, &len, &keep));
        assert_null(sb_message_encoded(n, &a, &len, &keep));
    }
    sb_message_keep_encoded(m, &a, data, big);
    assert_int_equal(sb_message_encoded_bytes(), big);
    sb_message_keep_encoded(n, &a, "0123456789abc", 13); /* past the bound: not kept */
    assert_null(sb_message_encoded(n, &a, &len, &keep));
    assert_int_equal(keep, 1);
    sb_message_keep_encoded(n, &a, "0123456789", 10); /* up to it: kept */
    assert_non_null(sb_message_encoded(n, &a, &len, &keep));
    assert_int_equal(sb_message_encoded_bytes(), SB_MESSAGE_ENCODED_MAX);
    sb_message_unref(m);
    assert_int_equal(sb_message_encoded_bytes(), 10);
    sb_message_unref(n);
    assert_int_equal(sb_message_encoded_bytes(), 0);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_round_trip),
        cmocka_unit_test(test_header_with_nul),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_room),
        cmocka_unit_test(test_room_no_allocation),
        cmocka_unit_test(test_encoded),
        cmocka_unit_test(test_encoded_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
