/*
 * Fuzz target for the MQTT 3.1.1 codec. Decodes the input as a stream of
 * packets; every packet the decoder accepts must (1) make every strict prefix
 * of it ask for more bytes, (2) re-encode, (3) decode again from the encoding
 * to the same fields, and (4) encode to the same bytes a second time. A
 * decoder that accepts what the encoder cannot write, or reads back something
 * else, aborts.
 */
#include "adapters/protocol/mqtt/mqtt_codec.h"

#include "service/alloc.h"
#include "service/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void same_str(sb_mqtt_str a, sb_mqtt_str b)
{
    if (a.n != b.n || (a.n > 0 && memcmp(a.p, b.p, a.n) != 0))
        abort();
}

static void same_bytes(sb_mqtt_bytes a, sb_mqtt_bytes b)
{
    if (a.n != b.n || (a.n > 0 && memcmp(a.p, b.p, a.n) != 0))
        abort();
}

static void same_packet(const sb_mqtt_packet *a, const sb_mqtt_packet *b)
{
    if (a->type != b->type || a->packet_id != b->packet_id)
        abort();
    switch (a->type) {
    case SB_MQTT_CONNECT: {
        const sb_mqtt_connect *x = &a->connect, *y = &b->connect;
        same_str(x->protocol_name, y->protocol_name);
        if (x->protocol_level != y->protocol_level || x->clean_session != y->clean_session ||
            x->will != y->will || x->will_qos != y->will_qos || x->will_retain != y->will_retain ||
            x->has_username != y->has_username || x->has_password != y->has_password ||
            x->keep_alive != y->keep_alive)
            abort();
        same_str(x->client_id, y->client_id);
        same_str(x->will_topic, y->will_topic);
        same_bytes(x->will_message, y->will_message);
        same_str(x->username, y->username);
        same_bytes(x->password, y->password);
        break;
    }
    case SB_MQTT_CONNACK:
        if (a->connack.session_present != b->connack.session_present ||
            a->connack.return_code != b->connack.return_code)
            abort();
        break;
    case SB_MQTT_PUBLISH:
        if (a->publish.dup != b->publish.dup || a->publish.qos != b->publish.qos ||
            a->publish.retain != b->publish.retain)
            abort();
        same_str(a->publish.topic, b->publish.topic);
        same_bytes(a->publish.payload, b->publish.payload);
        break;
    case SB_MQTT_SUBSCRIBE:
    case SB_MQTT_UNSUBSCRIBE:
    case SB_MQTT_SUBACK: {
        sb_mqtt_bytes x = {a->list.p, a->list.n}, y = {b->list.p, b->list.n};
        if (a->list.count != b->list.count)
            abort();
        same_bytes(x, y);
        break;
    }
    default:
        break;
    }
}

static void check(const uint8_t *buf, size_t used, const sb_mqtt_packet *p)
{
    sb_mqtt_packet back;
    uint8_t *enc = NULL, *enc2 = NULL;
    size_t len = 0, len2 = 0, used2 = 0, size = 0;
    const char *why;

    /* Strict prefixes of a valid packet are incomplete, never wrong. */
    if (sb_mqtt_decode(buf, used - 1, 0, &back, &used2, &why) != SB_MQTT_NEED_MORE ||
        sb_mqtt_decode(buf, 1, 0, &back, &used2, &why) != SB_MQTT_NEED_MORE)
        abort();

    if (sb_mqtt_encoded_size(p, &size) != 0)
        abort();
    if (sb_mqtt_encode_alloc(&enc, &len, p) != 0) {
        if (enc != NULL)
            abort();
        return; /* out of memory, not a finding */
    }
    if (len != size || len > used)
        abort(); /* the encoder uses the shortest remaining length */
    if (sb_mqtt_decode(enc, len, len, &back, &used2, &why) != 0 || used2 != len)
        abort();
    same_packet(p, &back);
    if (sb_mqtt_encode_alloc(&enc2, &len2, &back) == 0) {
        if (len2 != len || memcmp(enc, enc2, len) != 0)
            abort();
    }
    /* Too small a buffer is refused with the size needed. */
    if (sb_mqtt_encode(enc, len - 1, &len2, p) != SB_ENOSPC || len2 != len)
        abort();
    sb_free(enc2);
    sb_free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;

    while (off < size) {
        sb_mqtt_packet p;
        size_t used = 0;
        const char *why = NULL;
        int rc = sb_mqtt_decode(data + off, size - off, 1 << 20, &p, &used, &why);
        if (rc == SB_EVERSION && used > 0) {
            off += used; /* the caller answers CONNACK 0x01 and would close */
            continue;
        }
        if (rc != 0) {
            if (rc < 0 && why == NULL)
                abort(); /* every error has a reason */
            break;
        }
        if (used == 0 || used > size - off)
            abort();
        check(data + off, used, &p);
        off += used;
    }
    return 0;
}
