/*
 * MQTT 3.1.1 packet codec: an incremental, zero-copy decoder for the 14
 * control packets and encoders for them, with no I/O and no session state.
 *
 * sb_mqtt_decode() looks at the bytes received so far and either returns one
 * complete, fully validated packet whose strings and payloads point into the
 * caller's buffer, asks for more bytes, or names what is malformed. Limits
 * (max_packet, the 4-byte remaining length) are decided from the fixed header
 * alone, before the body is waited for. The encoders write into a caller's
 * buffer (or a new sb_malloc one) and check only what the wire format cannot
 * carry; session rules (CONNECT first, packet id bookkeeping, empty client id
 * with clean session 0) are left to the protocol adapter.
 */
#ifndef SB_MQTT_CODEC_H
#define SB_MQTT_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* sb_mqtt_decode: the buffer holds only part of a packet (not an error). */
#define SB_MQTT_NEED_MORE 1

/* Largest remaining length (4 bytes of 7 bits) and packet (+ 5 header bytes). */
#define SB_MQTT_MAX_REMAINING 268435455u
#define SB_MQTT_MAX_HEADER 5

/* The only protocol level this codec speaks (3.1.1). */
#define SB_MQTT_PROTOCOL_LEVEL 4

/* Control packet types, as in the high nibble of the first byte. */
typedef enum {
    SB_MQTT_CONNECT = 1,
    SB_MQTT_CONNACK = 2,
    SB_MQTT_PUBLISH = 3,
    SB_MQTT_PUBACK = 4,
    SB_MQTT_PUBREC = 5,
    SB_MQTT_PUBREL = 6,
    SB_MQTT_PUBCOMP = 7,
    SB_MQTT_SUBSCRIBE = 8,
    SB_MQTT_SUBACK = 9,
    SB_MQTT_UNSUBSCRIBE = 10,
    SB_MQTT_UNSUBACK = 11,
    SB_MQTT_PINGREQ = 12,
    SB_MQTT_PINGRESP = 13,
    SB_MQTT_DISCONNECT = 14
} sb_mqtt_type;

/* CONNACK return codes. */
enum {
    SB_MQTT_CONNACK_ACCEPTED = 0x00,
    SB_MQTT_CONNACK_BAD_PROTOCOL = 0x01,
    SB_MQTT_CONNACK_ID_REJECTED = 0x02,
    SB_MQTT_CONNACK_UNAVAILABLE = 0x03,
    SB_MQTT_CONNACK_BAD_LOGIN = 0x04,
    SB_MQTT_CONNACK_NOT_AUTHORIZED = 0x05
};

/* SUBACK return code for a refused subscription (others: the granted QoS). */
#define SB_MQTT_SUBACK_FAILURE 0x80

/* A UTF-8 string (validated: well-formed, no U+0000), not NUL-terminated. */
typedef struct sb_mqtt_str {
    const char *p;
    size_t n;
} sb_mqtt_str;

/* Binary data (CONNECT password and will message, PUBLISH payload). */
typedef struct sb_mqtt_bytes {
    const uint8_t *p;
    size_t n;
} sb_mqtt_bytes;

typedef struct sb_mqtt_connect {
    sb_mqtt_str protocol_name; /* "MQTT"; encoders write "MQTT" when empty */
    uint8_t protocol_level;    /* 4; encoders write 4 when protocol_name is empty */
    uint8_t clean_session;     /* flags: 0 or 1 */
    uint8_t will;
    uint8_t will_qos;
    uint8_t will_retain;
    uint8_t has_username;
    uint8_t has_password;
    uint16_t keep_alive;        /* seconds */
    sb_mqtt_str client_id;      /* may be empty */
    sb_mqtt_str will_topic;     /* when will */
    sb_mqtt_bytes will_message; /* when will */
    sb_mqtt_str username;       /* when has_username */
    sb_mqtt_bytes password;     /* when has_password */
} sb_mqtt_connect;

typedef struct sb_mqtt_connack {
    uint8_t session_present;
    uint8_t return_code; /* SB_MQTT_CONNACK_* */
} sb_mqtt_connack;

typedef struct sb_mqtt_publish {
    uint8_t dup;
    uint8_t qos; /* 0..2; the packet id is sb_mqtt_packet.packet_id */
    uint8_t retain;
    sb_mqtt_str topic; /* a valid topic name: no wildcards */
    sb_mqtt_bytes payload;
} sb_mqtt_publish;

/* The entries of a SUBSCRIBE (filter + requested QoS), an UNSUBSCRIBE
 * (filters) or a SUBACK (one return code per byte), in wire format: p/n is
 * the packet's payload, count the number of entries. Walk a SUBSCRIBE or
 * UNSUBSCRIBE list with sb_mqtt_filter_next(). */
typedef struct sb_mqtt_list {
    const uint8_t *p;
    size_t n;
    size_t count;
} sb_mqtt_list;

/* One SUBSCRIBE / UNSUBSCRIBE entry (qos is 0 for UNSUBSCRIBE). */
typedef struct sb_mqtt_filter {
    sb_mqtt_str filter;
    uint8_t qos;
} sb_mqtt_filter;

/* A decoded packet, or one to encode. Only the members for `type` are used:
 * connect, connack, publish, packet_id (PUBLISH with QoS > 0, PUBACK, PUBREC,
 * PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK; never 0) and
 * list (SUBSCRIBE, UNSUBSCRIBE, SUBACK). */
typedef struct sb_mqtt_packet {
    sb_mqtt_type type;
    uint16_t packet_id;
    sb_mqtt_connect connect;
    sb_mqtt_connack connack;
    sb_mqtt_publish publish;
    sb_mqtt_list list;
} sb_mqtt_packet;

/* Decodes the packet at the start of buf[0..len).
 *
 * Returns:
 *  - 0: *out holds the packet and *consumed its size in bytes. Strings,
 *    payloads and lists point into buf, so they live as long as those bytes.
 *  - SB_MQTT_NEED_MORE: buf holds an incomplete packet; call again with more
 *    bytes (the same prefix). *consumed is 0.
 *  - SB_ETOOBIG: the fixed header announces a packet of more than max_packet
 *    bytes in all (0: no limit but the protocol's). Decided from the fixed
 *    header alone, without waiting for the body.
 *  - SB_EVERSION: a CONNECT with an unacceptable protocol name/level ("MQTT"
 *    at a level other than 4, or 3.1's "MQIsdp"): answer CONNACK 0x01 and
 *    close. out->connect.protocol_name/_level are set, *consumed is the
 *    packet's size, the rest of the packet is not checked.
 *  - SB_EPROTO: a malformed packet or protocol violation; close the
 *    connection.
 * On every error *why (if why is not NULL) is a one-line reason such as
 * "remaining length uses more than 4 bytes"; it is static text or a
 * thread-local buffer valid until this thread's next call. */
int sb_mqtt_decode(const uint8_t *buf, size_t len, size_t max_packet, sb_mqtt_packet *out,
                   size_t *consumed, const char **why);

/* Walks the entries of a decoded SUBSCRIBE or UNSUBSCRIBE: start with
 * *pos = 0; each call stores the next entry in *out and returns 1, then
 * returns 0 at the end (or at a malformed entry, which a list from
 * sb_mqtt_decode never has). out->filter points into the packet's buffer. */
int sb_mqtt_filter_next(const sb_mqtt_packet *p, size_t *pos, sb_mqtt_filter *out);

/* Size in bytes of the encoding of p, in *out. Returns 0, or SB_EINVAL when p
 * cannot be encoded: an unknown type, a QoS above 2, a missing packet id, a
 * string longer than 65535 bytes, an empty or malformed list, a packet longer
 * than SB_MQTT_MAX_REMAINING. Contents (UTF-8, topic syntax) are the
 * caller's responsibility: whatever sb_mqtt_decode returned re-encodes. */
int sb_mqtt_encoded_size(const sb_mqtt_packet *p, size_t *out);

/* Encodes p into out[0..cap) and stores its size in *out_len. Returns 0,
 * SB_EINVAL (as sb_mqtt_encoded_size), or SB_ENOSPC when cap is too small
 * (then *out_len is the size needed and nothing is written). */
int sb_mqtt_encode(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_packet *p);

/* Encodes p into a new buffer from sb_malloc; the caller frees *out with
 * sb_free. Returns 0, SB_EINVAL or SB_ENOMEM (then *out is NULL). */
int sb_mqtt_encode_alloc(uint8_t **out, size_t *out_len, const sb_mqtt_packet *p);

/* Shorthands over sb_mqtt_encode(): same out/cap/out_len contract and errors
 * (SB_EINVAL, SB_ENOSPC). */

/* CONNACK with the session-present flag (0/1) and a SB_MQTT_CONNACK_* code. */
int sb_mqtt_encode_connack(uint8_t *out, size_t cap, size_t *out_len, int session_present,
                           uint8_t return_code);

/* PUBLISH of pub; packet_id is required (non-zero) for QoS 1 and 2 and
 * ignored for QoS 0. */
int sb_mqtt_encode_publish(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_publish *pub,
                           uint16_t packet_id);

/* The same PUBLISH in a new sb_malloc buffer (free with sb_free); returns 0,
 * SB_EINVAL or SB_ENOMEM. */
int sb_mqtt_encode_publish_alloc(uint8_t **out, size_t *out_len, const sb_mqtt_publish *pub,
                                 uint16_t packet_id);

/* A packet made of a packet id alone: PUBACK, PUBREC, PUBREL, PUBCOMP or
 * UNSUBACK (other types: SB_EINVAL); packet_id must not be 0. */
int sb_mqtt_encode_ack(uint8_t *out, size_t cap, size_t *out_len, sb_mqtt_type type,
                       uint16_t packet_id);

/* SUBACK with count >= 1 return codes (granted QoS 0..2 or 0x80). */
int sb_mqtt_encode_suback(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                          const uint8_t *codes, size_t count);

/* A packet without a body: PINGREQ, PINGRESP or DISCONNECT (others:
 * SB_EINVAL). */
int sb_mqtt_encode_empty(uint8_t *out, size_t cap, size_t *out_len, sb_mqtt_type type);

/* CONNECT from c (a client's; for tests and future clients). */
int sb_mqtt_encode_connect(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_connect *c);

/* SUBSCRIBE of count >= 1 filters with their requested QoS, or UNSUBSCRIBE of
 * count >= 1 filters (qos ignored). */
int sb_mqtt_encode_subscribe(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                             const sb_mqtt_filter *filters, size_t count);
int sb_mqtt_encode_unsubscribe(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                               const sb_mqtt_filter *filters, size_t count);

/* Name of a packet type ("PUBLISH"), "?" if unknown; for logs. */
const char *sb_mqtt_type_name(int type);

#endif
