/*
 * MQTT 3.1.1 codec: byte-exact encodings checked against packets written out
 * by hand from the specification, encode -> decode round trips for all 14
 * packet types, incremental decoding, every malformed case, limits decided
 * from the fixed header, and the golden malformed packets in
 * tests/data/mqtt (listed with their expected errors in its README).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/protocol/mqtt/mqtt_codec.h"
#include "service/alloc.h"
#include "service/error.h"

#define S(lit)                                                                                     \
    {                                                                                              \
        (lit), sizeof(lit) - 1                                                                     \
    }
#define B(lit)                                                                                     \
    {                                                                                              \
        (const uint8_t *)(lit), sizeof(lit) - 1                                                    \
    }

/* ---- helpers ---- */

static void decode_ok(const uint8_t *buf, size_t len, sb_mqtt_packet *out)
{
    size_t used = 99;
    const char *why = NULL;
    int rc = sb_mqtt_decode(buf, len, 0, out, &used, &why);
    if (rc != 0)
        fail_msg("decode failed: %d %s", rc, why ? why : "");
    assert_int_equal(used, len);
}

static void expect_err(const uint8_t *buf, size_t len, int code, const char *why_expected)
{
    sb_mqtt_packet p;
    size_t used = 99;
    const char *why = NULL;
    int rc = sb_mqtt_decode(buf, len, 0, &p, &used, &why);
    assert_int_equal(rc, code);
    assert_non_null(why);
    assert_string_equal(why, why_expected);
    if (code != SB_EVERSION)
        assert_int_equal(used, 0);
}

static void assert_str(sb_mqtt_str s, const char *want)
{
    assert_int_equal(s.n, strlen(want));
    assert_memory_equal(s.p, want, s.n);
}

static void assert_bytes(sb_mqtt_bytes b, const char *want)
{
    assert_int_equal(b.n, strlen(want));
    if (b.n > 0)
        assert_memory_equal(b.p, want, b.n);
}

/* Encodes p, checks the bytes when want is given, decodes them again. */
static void round_trip(const sb_mqtt_packet *p, const uint8_t *want, size_t want_len,
                       sb_mqtt_packet *back, uint8_t *buf, size_t cap)
{
    size_t len = 0, size = 0;
    assert_int_equal(sb_mqtt_encoded_size(p, &size), 0);
    assert_int_equal(sb_mqtt_encode(buf, cap, &len, p), 0);
    assert_int_equal(len, size);
    if (want != NULL) {
        assert_int_equal(len, want_len);
        assert_memory_equal(buf, want, want_len);
    }
    decode_ok(buf, len, back);
    assert_int_equal(back->type, p->type);
    assert_int_equal(back->packet_id, p->packet_id);
}

/* ---- byte-exact packets from the specification ---- */

/* mosquitto_pub -i test -t a/b -m hi: CONNECT, keep alive 60, clean session. */
static const uint8_t connect_mosquitto[] = {0x10, 0x10, 0x00, 0x04, 'M',  'Q', 'T', 'T', 0x04,
                                            0x02, 0x00, 0x3c, 0x00, 0x04, 't', 'e', 's', 't'};

static void test_connect_bytes(void **state)
{
    sb_mqtt_packet p, back;
    uint8_t buf[64];
    (void)state;

    decode_ok(connect_mosquitto, sizeof(connect_mosquitto), &p);
    assert_int_equal(p.type, SB_MQTT_CONNECT);
    assert_str(p.connect.protocol_name, "MQTT");
    assert_int_equal(p.connect.protocol_level, 4);
    assert_int_equal(p.connect.clean_session, 1);
    assert_int_equal(p.connect.will, 0);
    assert_int_equal(p.connect.has_username, 0);
    assert_int_equal(p.connect.keep_alive, 60);
    assert_str(p.connect.client_id, "test");

    /* The encoder writes "MQTT" level 4 when no protocol name is given. */
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_CONNECT;
    p.connect.clean_session = 1;
    p.connect.keep_alive = 60;
    p.connect.client_id = (sb_mqtt_str)S("test");
    round_trip(&p, connect_mosquitto, sizeof(connect_mosquitto), &back, buf, sizeof(buf));
}

static void test_connect_full(void **state)
{
    /* Will (QoS 1, retained) on "w/t" saying "bye", user "u", password "pw",
     * keep alive 10, no clean session, client id "c". */
    static const uint8_t want[] = {0x10, 0x1e, 0x00, 0x04, 'M',  'Q',  'T',  'T',  0x04, 0xec, 0x00,
                                   0x0a, 0x00, 0x01, 'c',  0x00, 0x03, 'w',  '/',  't',  0x00, 0x03,
                                   'b',  'y',  'e',  0x00, 0x01, 'u',  0x00, 0x02, 'p',  'w'};
    sb_mqtt_connect c = {0};
    sb_mqtt_packet back;
    uint8_t buf[64];
    size_t len;
    (void)state;

    c.will = 1;
    c.will_qos = 1;
    c.will_retain = 1;
    c.has_username = c.has_password = 1;
    c.keep_alive = 10;
    c.client_id = (sb_mqtt_str)S("c");
    c.will_topic = (sb_mqtt_str)S("w/t");
    c.will_message = (sb_mqtt_bytes)B("bye");
    c.username = (sb_mqtt_str)S("u");
    c.password = (sb_mqtt_bytes)B("pw");
    assert_int_equal(sb_mqtt_encode_connect(buf, sizeof(buf), &len, &c), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, sizeof(want));
    decode_ok(buf, len, &back);
    assert_int_equal(back.connect.clean_session, 0);
    assert_int_equal(back.connect.will, 1);
    assert_int_equal(back.connect.will_qos, 1);
    assert_int_equal(back.connect.will_retain, 1);
    assert_int_equal(back.connect.keep_alive, 10);
    assert_str(back.connect.client_id, "c");
    assert_str(back.connect.will_topic, "w/t");
    assert_bytes(back.connect.will_message, "bye");
    assert_str(back.connect.username, "u");
    assert_bytes(back.connect.password, "pw");

    /* Empty client id and a zero-length password are legal on the wire. */
    memset(&c, 0, sizeof(c));
    c.clean_session = 1;
    c.has_username = c.has_password = 1;
    c.username = (sb_mqtt_str)S("");
    assert_int_equal(sb_mqtt_encode_connect(buf, sizeof(buf), &len, &c), 0);
    decode_ok(buf, len, &back);
    assert_int_equal(back.connect.client_id.n, 0);
    assert_int_equal(back.connect.has_password, 1);
    assert_int_equal(back.connect.password.n, 0);
}

static void test_connack(void **state)
{
    static const uint8_t accepted[] = {0x20, 0x02, 0x01, 0x00};
    static const uint8_t refused[] = {0x20, 0x02, 0x00, 0x05};
    sb_mqtt_packet p;
    uint8_t buf[8];
    size_t len;
    (void)state;

    assert_int_equal(sb_mqtt_encode_connack(buf, sizeof(buf), &len, 1, 0), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, accepted, 4);
    decode_ok(buf, len, &p);
    assert_int_equal(p.type, SB_MQTT_CONNACK);
    assert_int_equal(p.connack.session_present, 1);
    assert_int_equal(p.connack.return_code, 0);

    assert_int_equal(sb_mqtt_encode_connack(buf, sizeof(buf), &len, 0, 5), 0);
    assert_memory_equal(buf, refused, 4);
    decode_ok(buf, len, &p);
    assert_int_equal(p.connack.return_code, SB_MQTT_CONNACK_NOT_AUTHORIZED);

    /* Session present only with return code 0; codes above 5 are reserved. */
    assert_int_equal(sb_mqtt_encode_connack(buf, sizeof(buf), &len, 1, 1), SB_EINVAL);
    assert_int_equal(sb_mqtt_encode_connack(buf, sizeof(buf), &len, 0, 6), SB_EINVAL);
    expect_err((const uint8_t *)"\x20\x02\x01\x02", 4, SB_EPROTO,
               "CONNACK session present with return code 2");
}

static void test_publish(void **state)
{
    static const uint8_t qos0[] = {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'};
    static const uint8_t qos1_retain[] = {0x33, 0x09, 0x00, 0x03, 'a', '/',
                                          'b',  0x00, 0x0a, 'h',  'i'};
    static const uint8_t qos2_dup_empty[] = {0x3c, 0x07, 0x00, 0x03, 'a', '/', 'b', 0x12, 0x34};
    sb_mqtt_publish pub = {0};
    sb_mqtt_packet p;
    uint8_t buf[32], *heap = NULL;
    size_t len;
    (void)state;

    pub.topic = (sb_mqtt_str)S("a/b");
    pub.payload = (sb_mqtt_bytes)B("hi");
    /* The packet id is ignored at QoS 0. */
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 77), 0);
    assert_int_equal(len, sizeof(qos0));
    assert_memory_equal(buf, qos0, len);
    decode_ok(buf, len, &p);
    assert_int_equal(p.type, SB_MQTT_PUBLISH);
    assert_int_equal(p.packet_id, 0);
    assert_int_equal(p.publish.qos, 0);
    assert_str(p.publish.topic, "a/b");
    assert_bytes(p.publish.payload, "hi");

    pub.qos = 1;
    pub.retain = 1;
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 10), 0);
    assert_int_equal(len, sizeof(qos1_retain));
    assert_memory_equal(buf, qos1_retain, len);
    decode_ok(buf, len, &p);
    assert_int_equal(p.packet_id, 10);
    assert_int_equal(p.publish.qos, 1);
    assert_int_equal(p.publish.retain, 1);
    assert_int_equal(p.publish.dup, 0);

    pub.qos = 2;
    pub.retain = 0;
    pub.dup = 1;
    pub.payload = (sb_mqtt_bytes){NULL, 0};
    assert_int_equal(sb_mqtt_encode_publish_alloc(&heap, &len, &pub, 0x1234), 0);
    assert_non_null(heap);
    assert_int_equal(len, sizeof(qos2_dup_empty));
    assert_memory_equal(heap, qos2_dup_empty, len);
    decode_ok(heap, len, &p);
    assert_int_equal(p.publish.qos, 2);
    assert_int_equal(p.publish.dup, 1);
    assert_int_equal(p.publish.payload.n, 0);
    sb_free(heap);

    /* What the wire cannot carry. */
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 0), SB_EINVAL);
    pub.qos = 3;
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 1), SB_EINVAL);
    pub.qos = 0;
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 0), SB_EINVAL); /* dup */
    pub.dup = 0;
    pub.topic.n = 0;
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &len, &pub, 0), SB_EINVAL);

    /* Too small a buffer: SB_ENOSPC with the size needed, nothing written. */
    pub.topic = (sb_mqtt_str)S("a/b");
    pub.payload = (sb_mqtt_bytes)B("hi");
    memset(buf, 0xAA, sizeof(buf));
    assert_int_equal(sb_mqtt_encode_publish(buf, 8, &len, &pub, 0), SB_ENOSPC);
    assert_int_equal(len, 9);
    assert_int_equal(buf[0], 0xAA);

    /* Out of memory is an error, not a crash. */
    sb_alloc_fail_after(0);
    assert_int_equal(sb_mqtt_encode_publish_alloc(&heap, &len, &pub, 0), SB_ENOMEM);
    sb_alloc_fail_after(-1);
    assert_null(heap);
}

static void test_acks(void **state)
{
    static const struct {
        sb_mqtt_type type;
        uint8_t first;
    } acks[] = {{SB_MQTT_PUBACK, 0x40},
                {SB_MQTT_PUBREC, 0x50},
                {SB_MQTT_PUBREL, 0x62},
                {SB_MQTT_PUBCOMP, 0x70},
                {SB_MQTT_UNSUBACK, 0xb0}};
    uint8_t buf[8];
    size_t len;
    sb_mqtt_packet p;
    (void)state;

    for (size_t i = 0; i < sizeof(acks) / sizeof(acks[0]); i++) {
        const uint8_t want[] = {acks[i].first, 0x02, 0xbe, 0xef};
        assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &len, acks[i].type, 0xbeef), 0);
        assert_int_equal(len, 4);
        assert_memory_equal(buf, want, 4);
        decode_ok(buf, len, &p);
        assert_int_equal(p.type, acks[i].type);
        assert_int_equal(p.packet_id, 0xbeef);
        assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &len, acks[i].type, 0), SB_EINVAL);
    }
    assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &len, SB_MQTT_CONNACK, 1), SB_EINVAL);
    assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &len, SB_MQTT_PINGREQ, 1), SB_EINVAL);
}

static void test_subscribe(void **state)
{
    static const uint8_t want[] = {0x82, 0x0e, 0x00, 0x01, 0x00, 0x03, 'a', '/',
                                   '#',  0x01, 0x00, 0x03, '+',  '/',  'b', 0x02};
    const sb_mqtt_filter filters[] = {{S("a/#"), 1}, {S("+/b"), 2}};
    sb_mqtt_packet p, back;
    sb_mqtt_filter f;
    size_t len, pos = 0;
    uint8_t buf[32], buf2[32];
    (void)state;

    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof(buf), &len, 1, filters, 2), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, len);
    decode_ok(buf, len, &p);
    assert_int_equal(p.type, SB_MQTT_SUBSCRIBE);
    assert_int_equal(p.packet_id, 1);
    assert_int_equal(p.list.count, 2);
    assert_true(sb_mqtt_filter_next(&p, &pos, &f));
    assert_str(f.filter, "a/#");
    assert_int_equal(f.qos, 1);
    assert_true(sb_mqtt_filter_next(&p, &pos, &f));
    assert_str(f.filter, "+/b");
    assert_int_equal(f.qos, 2);
    assert_false(sb_mqtt_filter_next(&p, &pos, &f));

    /* The decoded packet re-encodes to the same bytes. */
    round_trip(&p, want, sizeof(want), &back, buf2, sizeof(buf2));
    assert_int_equal(back.list.count, 2);

    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof(buf), &len, 0, filters, 2), SB_EINVAL);
    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof(buf), &len, 1, filters, 0), SB_EINVAL);
    /* A list that does not add up is refused, not copied. */
    p.list.count = 3;
    assert_int_equal(sb_mqtt_encode(buf2, sizeof(buf2), &len, &p), SB_EINVAL);
}

static void test_suback(void **state)
{
    static const uint8_t want[] = {0x90, 0x06, 0x00, 0x07, 0x00, 0x01, 0x02, 0x80};
    const uint8_t codes[] = {0, 1, 2, SB_MQTT_SUBACK_FAILURE};
    const uint8_t bad[] = {3};
    sb_mqtt_packet p;
    uint8_t buf[16];
    size_t len;
    (void)state;

    assert_int_equal(sb_mqtt_encode_suback(buf, sizeof(buf), &len, 7, codes, 4), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, len);
    decode_ok(buf, len, &p);
    assert_int_equal(p.type, SB_MQTT_SUBACK);
    assert_int_equal(p.packet_id, 7);
    assert_int_equal(p.list.count, 4);
    assert_memory_equal(p.list.p, codes, 4);
    assert_int_equal(sb_mqtt_encode_suback(buf, sizeof(buf), &len, 7, codes, 0), SB_EINVAL);
    assert_int_equal(sb_mqtt_encode_suback(buf, sizeof(buf), &len, 7, bad, 1), SB_EINVAL);
    expect_err((const uint8_t *)"\x90\x02\x00\x07", 4, SB_EPROTO, "SUBACK without a return code");
}

static void test_unsubscribe(void **state)
{
    static const uint8_t want[] = {0xa2, 0x0b, 0x12, 0x34, 0x00, 0x03, 'a',
                                   '/',  '#',  0x00, 0x02, 'x',  '/'};
    const sb_mqtt_filter filters[] = {{S("a/#"), 0}, {S("x/"), 0}};
    sb_mqtt_packet p, back;
    sb_mqtt_filter f;
    uint8_t buf[32], buf2[32];
    size_t len, pos = 0;
    (void)state;

    assert_int_equal(sb_mqtt_encode_unsubscribe(buf, sizeof(buf), &len, 0x1234, filters, 2), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, len);
    decode_ok(buf, len, &p);
    assert_int_equal(p.type, SB_MQTT_UNSUBSCRIBE);
    assert_int_equal(p.list.count, 2);
    assert_true(sb_mqtt_filter_next(&p, &pos, &f));
    assert_str(f.filter, "a/#");
    assert_true(sb_mqtt_filter_next(&p, &pos, &f));
    assert_str(f.filter, "x/");
    assert_false(sb_mqtt_filter_next(&p, &pos, &f));
    round_trip(&p, want, sizeof(want), &back, buf2, sizeof(buf2));
}

static void test_empty_packets(void **state)
{
    static const struct {
        sb_mqtt_type type;
        uint8_t first;
    } empty[] = {{SB_MQTT_PINGREQ, 0xc0}, {SB_MQTT_PINGRESP, 0xd0}, {SB_MQTT_DISCONNECT, 0xe0}};
    uint8_t buf[4];
    size_t len;
    sb_mqtt_packet p;
    (void)state;

    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(sb_mqtt_encode_empty(buf, sizeof(buf), &len, empty[i].type), 0);
        assert_int_equal(len, 2);
        assert_int_equal(buf[0], empty[i].first);
        assert_int_equal(buf[1], 0);
        decode_ok(buf, len, &p);
        assert_int_equal(p.type, empty[i].type);
    }
    assert_int_equal(sb_mqtt_encode_empty(buf, sizeof(buf), &len, SB_MQTT_PUBACK), SB_EINVAL);
    assert_string_equal(sb_mqtt_type_name(SB_MQTT_DISCONNECT), "DISCONNECT");
    assert_string_equal(sb_mqtt_type_name(0), "?");
}

/* ---- incremental decoding ---- */

static void test_incremental(void **state)
{
    uint8_t stream[4096];
    size_t n = 0, len, off = 0, count = 0;
    sb_mqtt_publish pub = {0};
    const sb_mqtt_filter filters[] = {{S("a/+/c"), 1}};
    static const uint8_t payload[300] = {1, 2, 3}; /* a 2-byte remaining length */
    (void)state;

    memcpy(stream, connect_mosquitto, sizeof(connect_mosquitto));
    n += sizeof(connect_mosquitto);
    pub.topic = (sb_mqtt_str)S("t");
    pub.payload = (sb_mqtt_bytes){payload, sizeof(payload)};
    pub.qos = 1;
    assert_int_equal(sb_mqtt_encode_publish(stream + n, sizeof(stream) - n, &len, &pub, 5), 0);
    n += len;
    assert_int_equal(sb_mqtt_encode_subscribe(stream + n, sizeof(stream) - n, &len, 6, filters, 1),
                     0);
    n += len;
    assert_int_equal(sb_mqtt_encode_empty(stream + n, sizeof(stream) - n, &len, SB_MQTT_PINGREQ),
                     0);
    n += len;

    /* One byte at a time: NEED_MORE until each packet is complete. */
    while (off < n) {
        sb_mqtt_packet p;
        size_t avail = 0, used = 0;
        int rc;
        do {
            avail++;
            rc = sb_mqtt_decode(stream + off, avail, 0, &p, &used, NULL);
            if (rc == SB_MQTT_NEED_MORE)
                assert_int_equal(used, 0);
        } while (rc == SB_MQTT_NEED_MORE && off + avail < n);
        assert_int_equal(rc, 0);
        assert_int_equal(used, avail);
        off += used;
        count++;
    }
    assert_int_equal(count, 4);

    /* The whole stream at once: one packet per call, in order. */
    {
        static const sb_mqtt_type order[] = {SB_MQTT_CONNECT, SB_MQTT_PUBLISH, SB_MQTT_SUBSCRIBE,
                                             SB_MQTT_PINGREQ};
        sb_mqtt_packet p;
        size_t used;
        off = 0;
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(sb_mqtt_decode(stream + off, n - off, 0, &p, &used, NULL), 0);
            assert_int_equal(p.type, order[i]);
            off += used;
        }
        assert_int_equal(off, n);
        assert_int_equal(sb_mqtt_decode(stream + off, 0, 0, &p, &used, NULL), SB_MQTT_NEED_MORE);
    }
}

/* ---- limits from the fixed header ---- */

static void test_remaining_length(void **state)
{
    static const struct {
        size_t value;
        uint8_t bytes[4];
        size_t n;
    } cases[] = {{0, {0x00}, 1},
                 {127, {0x7f}, 1},
                 {128, {0x80, 0x01}, 2},
                 {16383, {0xff, 0x7f}, 2},
                 {16384, {0x80, 0x80, 0x01}, 3},
                 {2097151, {0xff, 0xff, 0x7f}, 3},
                 {2097152, {0x80, 0x80, 0x80, 0x01}, 4}};
    sb_mqtt_packet p;
    sb_mqtt_publish pub = {0};
    size_t len, used, size;
    uint8_t *heap = NULL, *payload;
    const char *why = NULL;
    (void)state;

    payload = calloc(1, 2097152);
    assert_non_null(payload);
    pub.topic = (sb_mqtt_str)S("t");
    for (size_t i = 1; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* Body: 2 + 1 topic bytes + payload. */
        pub.payload = (sb_mqtt_bytes){payload, cases[i].value - 3};
        assert_int_equal(sb_mqtt_encode_publish_alloc(&heap, &len, &pub, 0), 0);
        assert_int_equal(len, 1 + cases[i].n + cases[i].value);
        assert_memory_equal(heap + 1, cases[i].bytes, cases[i].n);
        decode_ok(heap, len, &p);
        assert_int_equal(p.publish.payload.n, cases[i].value - 3);
        sb_free(heap);
        heap = NULL;
    }
    free(payload);

    /* The largest packet: only its size is computed, never its bytes. */
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_PUBLISH;
    p.publish.topic = (sb_mqtt_str)S("t");
    p.publish.payload.n = SB_MQTT_MAX_REMAINING - 3;
    assert_int_equal(sb_mqtt_encoded_size(&p, &size), 0);
    assert_int_equal(size, 5 + (size_t)SB_MQTT_MAX_REMAINING);
    p.publish.payload.n++;
    assert_int_equal(sb_mqtt_encoded_size(&p, &size), SB_EINVAL);

    /* 268,435,455 is accepted as a header and waited for (no max_packet)... */
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\x30\xff\xff\xff\x7f", 5, 0, &p, &used, &why),
                     SB_MQTT_NEED_MORE);
    /* ... and refused from those 5 bytes alone with one. */
    assert_int_equal(
        sb_mqtt_decode((const uint8_t *)"\x30\xff\xff\xff\x7f", 5, 262144, &p, &used, &why),
        SB_ETOOBIG);
    assert_string_equal(why, "packet of 268435460 bytes exceeds max_packet 262144");
    /* 300000 bytes in all: 0x30, 3 length bytes, 299996 body bytes. */
    assert_int_equal(
        sb_mqtt_decode((const uint8_t *)"\x30\xdc\xa7\x12", 4, 262144, &p, &used, &why),
        SB_ETOOBIG);
    assert_string_equal(why, "packet of 300000 bytes exceeds max_packet 262144");
    /* Exactly max_packet is fine. */
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\xc0\x00", 2, 2, &p, &used, &why), 0);
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\xc0\x00", 2, 1, &p, &used, &why),
                     SB_ETOOBIG);

    /* A fifth length byte is refused as soon as the fourth says "more". */
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\x30\xff\xff\xff\xff", 5, 0, &p, &used, &why),
                     SB_EPROTO);
    assert_string_equal(why, "remaining length uses more than 4 bytes");
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\x30\xff\xff\xff", 4, 0, &p, &used, &why),
                     SB_MQTT_NEED_MORE);

    /* Fixed-size packets with a wrong length are refused before the body. */
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\xc0\xff\x7f", 3, 0, &p, &used, &why),
                     SB_EPROTO);
    assert_string_equal(why, "PINGREQ with remaining length 16383 (must be 0)");
    /* Wrong flags are refused from the first byte. */
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\x82", 1, 0, &p, &used, &why),
                     SB_MQTT_NEED_MORE);
    assert_int_equal(sb_mqtt_decode((const uint8_t *)"\x80", 1, 0, &p, &used, &why), SB_EPROTO);
}

/* ---- malformed packets ---- */

static void test_connect_version(void **state)
{
    static const uint8_t level3[] = {0x10, 0x0c, 0x00, 0x04, 'M',  'Q',  'T',
                                     'T',  0x03, 0x02, 0x00, 0x3c, 0x00, 0x00};
    /* An MQTT 5 CONNECT: properties follow the keep alive; not parsed. */
    static const uint8_t level5[] = {0x10, 0x0d, 0x00, 0x04, 'M',  'Q',  'T', 'T',
                                     0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00};
    sb_mqtt_packet p;
    size_t used;
    const char *why;
    (void)state;

    assert_int_equal(sb_mqtt_decode(level3, sizeof(level3), 0, &p, &used, &why), SB_EVERSION);
    assert_int_equal(used, sizeof(level3));
    assert_int_equal(p.type, SB_MQTT_CONNECT);
    assert_int_equal(p.connect.protocol_level, 3);
    assert_string_equal(why, "unsupported protocol level 3 (3.1.1 is 4)");
    assert_int_equal(sb_mqtt_decode(level5, sizeof(level5), 0, &p, &used, &why), SB_EVERSION);
    assert_int_equal(used, sizeof(level5));
    assert_int_equal(p.connect.protocol_level, 5);
    /* Cut short before the level byte: malformed, not a version problem. */
    expect_err((const uint8_t *)"\x10\x06\x00\x04MQTT", 8, SB_EPROTO,
               "CONNECT protocol level runs past the end of the packet");
}

static void test_malformed(void **state)
{
    (void)state;
#define BAD(lit, why) expect_err((const uint8_t *)(lit), sizeof(lit) - 1, SB_EPROTO, why)
    BAD("\x36\x07\x00\x03"
        "a/bhi",
        "PUBLISH with QoS 3");
    BAD("\x38\x07\x00\x03"
        "a/bhi",
        "PUBLISH with DUP set at QoS 0");
    BAD("\x32\x07\x00\x03"
        "a/b\x00\x00",
        "PUBLISH packet identifier is 0");
    BAD("\x32\x05\x00\x03"
        "a/b",
        "PUBLISH packet identifier runs past the end of the packet");
    BAD("\x30\x05\x00\x03"
        "a/#",
        "PUBLISH topic name contains a wildcard ('+' or '#')");
    BAD("\x30\x05\x00\x03"
        "a\0b",
        "PUBLISH topic name contains U+0000");
    BAD("\x30\x01\x00", "PUBLISH topic name runs past the end of the packet");
    BAD("\x62\x02\x00\x00", "PUBREL packet identifier is 0");
    BAD("\x61\x02\x00\x01", "PUBREL with fixed header flags 0x1 (must be 0x2)");
    BAD("\x22\x02\x00\x00", "CONNACK with fixed header flags 0x2 (must be 0x0)");
    BAD("\x20\x03\x00\x00\x00", "CONNACK with remaining length 3 (must be 2)");
    BAD("\xd0\x01\x00", "PINGRESP with remaining length 1 (must be 0)");
    BAD("\xe0\x02\x00\x00", "DISCONNECT with remaining length 2 (must be 0)");
    BAD("\xb0\x03\x00\x01\x00", "UNSUBACK with remaining length 3 (must be 2)");
    BAD("\x82\x05\x00\x01\x00\x00\x00", "SUBSCRIBE topic filter must not be empty");
    BAD("\x82\x07\x00\x01\x00\x02"
        "a+\x00",
        "SUBSCRIBE topic filter '+' must occupy a whole level");
    BAD("\x82\x09\x00\x01\x00\x01"
        "a\x00\x00\x05"
        "b",
        "SUBSCRIBE topic filter runs past the end of the packet");
    BAD("\x82\x01\x00", "SUBSCRIBE packet identifier runs past the end of the packet");
    BAD("\xa2\x05\x00\x01\x00\x01"
        "\xff",
        "UNSUBSCRIBE topic filter is not valid UTF-8");
    BAD("\xa2\x06\x00\x01\x00\x01"
        "a\x00",
        "UNSUBSCRIBE topic filter runs past the end of the packet");
    BAD("\xa2\x02\x00\x00", "UNSUBSCRIBE packet identifier is 0");
    BAD("\x90\x03\x00\x01\x40", "SUBACK return code 0x40 is not allowed");
    BAD("\x10\x00", "CONNECT protocol name runs past the end of the packet");
    BAD("\x10\x0b\x00\x04MQTT\x04\x02\x00\x3c\x00",
        "CONNECT client identifier runs past the end of the packet");
    BAD("\x10\x0c\x00\x04MQTT\x04\x06\x00\x3c\x00\x00",
        "CONNECT will topic runs past the end of the packet");
    BAD("\x10\x13\x00\x04MQTT\x04\x06\x00\x3c\x00\x00\x00\x01t\x00\x05hi",
        "CONNECT will message runs past the end of the packet");
    BAD("\x10\x0c\x00\x04MQTT\x04\x82\x00\x3c\x00\x00",
        "CONNECT user name runs past the end of the packet");
#undef BAD
}

/* ---- golden malformed packets (tests/data/mqtt) ---- */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[*len] = 0;
    return buf;
}

static void test_golden(void **state)
{
    const char *root = getenv("SB_TEST_DATA");
    char path[1024], *line, *next;
    uint8_t *readme;
    size_t len, checked = 0;
    (void)state;

    if (root == NULL)
        root = "tests/data";
    snprintf(path, sizeof(path), "%s/mqtt/README", root);
    readme = slurp(path, &len);
    if (readme == NULL)
        fail_msg("cannot read %s", path);
    for (line = (char *)readme; *line != '\0'; line = next) {
        char name[128], code[32];
        int off = 0;
        const char *want, *why = NULL;
        uint8_t *bin;
        size_t bin_len, used;
        sb_mqtt_packet p;
        int rc;

        next = line + strcspn(line, "\r\n");
        if (*next != '\0')
            *next++ = '\0';
        if (sscanf(line, "%127s %31s %n", name, code, &off) != 2 || off == 0 ||
            strstr(name, ".bin") == NULL)
            continue;
        want = line + off;
        snprintf(path, sizeof(path), "%s/mqtt/%s", root, name);
        bin = slurp(path, &bin_len);
        if (bin == NULL)
            fail_msg("cannot read %s", path);
        rc = sb_mqtt_decode(bin, bin_len, 1024, &p, &used, &why);
        if (strcmp(sb_errname(rc), code) != 0 || why == NULL || strcmp(why, want) != 0)
            fail_msg("%s: got %s \"%s\", want %s \"%s\"", name, sb_errname(rc),
                     why ? why : "(none)", code, want);
        /* Cut short, a golden packet still fails the same way or waits. */
        for (size_t k = 1; k < bin_len; k++) {
            rc = sb_mqtt_decode(bin, k, 1024, &p, &used, &why);
            assert_true(rc == SB_MQTT_NEED_MORE || strcmp(sb_errname(rc), code) == 0);
        }
        free(bin);
        checked++;
    }
    free(readme);
    assert_true(checked >= 40);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_bytes),
        cmocka_unit_test(test_connect_full),
        cmocka_unit_test(test_connack),
        cmocka_unit_test(test_publish),
        cmocka_unit_test(test_acks),
        cmocka_unit_test(test_subscribe),
        cmocka_unit_test(test_suback),
        cmocka_unit_test(test_unsubscribe),
        cmocka_unit_test(test_empty_packets),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_remaining_length),
        cmocka_unit_test(test_connect_version),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
