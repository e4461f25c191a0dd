/*
 * MQTT 3.1.1 packet codec (see mqtt_codec.h). The decoder first checks the
 * fixed header (type, flags, remaining length, size limits and the exact
 * length of fixed-size packets) so a bad or oversized packet is refused
 * before its body is waited for; then a bounds-checked reader walks the body
 * and every length is checked against what is left of the packet.
 */
#include "adapters/protocol/mqtt/mqtt_codec.h"

#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Reasons with numbers in them are formatted here, one per thread. */
static _Thread_local char why_buf[160];

static int fail(const char **why, int code, const char *fmt, ...) SB_PRINTF(3, 4);

static int fail(const char **why, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why_buf, sizeof(why_buf), fmt, ap);
    va_end(ap);
    if (why != NULL)
        *why = why_buf;
    return code;
}

const char *sb_mqtt_type_name(int type)
{
    static const char *const names[] = {"?",         "CONNECT",  "CONNACK",     "PUBLISH",
                                        "PUBACK",    "PUBREC",   "PUBREL",      "PUBCOMP",
                                        "SUBSCRIBE", "SUBACK",   "UNSUBSCRIBE", "UNSUBACK",
                                        "PINGREQ",   "PINGRESP", "DISCONNECT"};
    if (type < 1 || type > 14)
        return "?";
    return names[type];
}

/* The low nibble of the first byte that each type must carry (PUBLISH: any). */
static int required_flags(int type)
{
    return type == SB_MQTT_PUBREL || type == SB_MQTT_SUBSCRIBE || type == SB_MQTT_UNSUBSCRIBE ? 2
                                                                                              : 0;
}

/* Exact remaining length of fixed-size packets, -1 for variable ones. */
static long fixed_remaining(int type)
{
    switch (type) {
    case SB_MQTT_CONNACK:
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBREL:
    case SB_MQTT_PUBCOMP:
    case SB_MQTT_UNSUBACK:
        return 2;
    case SB_MQTT_PINGREQ:
    case SB_MQTT_PINGRESP:
    case SB_MQTT_DISCONNECT:
        return 0;
    default:
        return -1;
    }
}

/* ---- decoding ---------------------------------------------------------- */

/* A bounds-checked cursor over one packet's body. */
typedef struct reader {
    const uint8_t *p;
    size_t n;
    size_t off;
    const char *pkt; /* packet type name, for messages */
    const char **why;
} reader;

static size_t left(const reader *r)
{
    return r->n - r->off;
}

static int past_end(reader *r, const char *what)
{
    return fail(r->why, SB_EPROTO, "%s %s runs past the end of the packet", r->pkt, what);
}

/* The readers zero *out on failure too, so no caller reads an unset value
 * (and optimizing compilers can see that). */
static int rd_u8(reader *r, uint8_t *out, const char *what)
{
    *out = 0;
    if (left(r) < 1)
        return past_end(r, what);
    *out = r->p[r->off++];
    return 0;
}

static int rd_u16(reader *r, uint16_t *out, const char *what)
{
    *out = 0;
    if (left(r) < 2)
        return past_end(r, what);
    *out = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return 0;
}

static int rd_bytes(reader *r, sb_mqtt_bytes *out, const char *what)
{
    uint16_t n;
    if (rd_u16(r, &n, what) != 0)
        return SB_EPROTO;
    if (left(r) < n)
        return past_end(r, what);
    out->p = r->p + r->off;
    out->n = n;
    r->off += n;
    return 0;
}

/* A UTF-8 string: well-formed and without U+0000 (MQTT-1.5.3-1, -2). */
static int rd_str(reader *r, sb_mqtt_str *out, const char *what)
{
    sb_mqtt_bytes b;
    if (rd_bytes(r, &b, what) != 0)
        return SB_EPROTO;
    out->p = (const char *)b.p;
    out->n = b.n;
    if (memchr(out->p, '\0', out->n) != NULL)
        return fail(r->why, SB_EPROTO, "%s %s contains U+0000", r->pkt, what);
    if (!sb_utf8_valid(out->p, out->n))
        return fail(r->why, SB_EPROTO, "%s %s is not valid UTF-8", r->pkt, what);
    return 0;
}

static int rd_packet_id(reader *r, uint16_t *out)
{
    if (rd_u16(r, out, "packet identifier") != 0)
        return SB_EPROTO;
    if (*out == 0)
        return fail(r->why, SB_EPROTO, "%s packet identifier is 0", r->pkt);
    return 0;
}

static int decode_connect(reader *r, sb_mqtt_connect *c)
{
    sb_mqtt_bytes name;
    uint8_t flags;

    if (rd_bytes(r, &name, "protocol name") != 0)
        return SB_EPROTO;
    c->protocol_name.p = (const char *)name.p;
    c->protocol_name.n = name.n;
    if (rd_u8(r, &c->protocol_level, "protocol level") != 0)
        return SB_EPROTO;
    if (c->protocol_name.n == 6 && memcmp(c->protocol_name.p, "MQIsdp", 6) == 0)
        return fail(r->why, SB_EVERSION, "unsupported protocol MQIsdp level %u (MQTT 3.1)",
                    c->protocol_level);
    if (c->protocol_name.n != 4 || memcmp(c->protocol_name.p, "MQTT", 4) != 0)
        return fail(r->why, SB_EPROTO, "CONNECT protocol name is not \"MQTT\"");
    if (c->protocol_level != SB_MQTT_PROTOCOL_LEVEL)
        return fail(r->why, SB_EVERSION, "unsupported protocol level %u (3.1.1 is 4)",
                    c->protocol_level);

    if (rd_u8(r, &flags, "connect flags") != 0)
        return SB_EPROTO;
    if (flags & 0x01)
        return fail(r->why, SB_EPROTO, "CONNECT reserved flag is set");
    c->clean_session = (flags >> 1) & 1;
    c->will = (flags >> 2) & 1;
    c->will_qos = (flags >> 3) & 3;
    c->will_retain = (flags >> 5) & 1;
    c->has_password = (flags >> 6) & 1;
    c->has_username = (flags >> 7) & 1;
    if (c->will_qos == 3)
        return fail(r->why, SB_EPROTO, "CONNECT will QoS is 3");
    if (!c->will && (c->will_qos != 0 || c->will_retain))
        return fail(r->why, SB_EPROTO, "CONNECT will QoS or will retain set without the will flag");
    if (c->has_password && !c->has_username)
        return fail(r->why, SB_EPROTO, "CONNECT password flag set without the username flag");
    if (rd_u16(r, &c->keep_alive, "keep alive") != 0)
        return SB_EPROTO;

    if (rd_str(r, &c->client_id, "client identifier") != 0)
        return SB_EPROTO;
    if (c->will) {
        const char *tw;
        if (rd_str(r, &c->will_topic, "will topic") != 0)
            return SB_EPROTO;
        if (sb_topic_validate(c->will_topic.p, c->will_topic.n, &tw) != 0)
            return fail(r->why, SB_EPROTO, "CONNECT will topic %s", tw);
        if (rd_bytes(r, &c->will_message, "will message") != 0)
            return SB_EPROTO;
    }
    if (c->has_username && rd_str(r, &c->username, "user name") != 0)
        return SB_EPROTO;
    if (c->has_password && rd_bytes(r, &c->password, "password") != 0)
        return SB_EPROTO;
    return 0;
}

static int decode_connack(reader *r, sb_mqtt_connack *c)
{
    uint8_t ack;
    if (rd_u8(r, &ack, "acknowledge flags") != 0 || rd_u8(r, &c->return_code, "return code") != 0)
        return SB_EPROTO;
    if (ack & 0xFE)
        return fail(r->why, SB_EPROTO, "CONNACK reserved acknowledge flags are set");
    c->session_present = ack & 1;
    if (c->return_code > SB_MQTT_CONNACK_NOT_AUTHORIZED)
        return fail(r->why, SB_EPROTO, "CONNACK return code %u is reserved", c->return_code);
    if (c->session_present && c->return_code != 0)
        return fail(r->why, SB_EPROTO, "CONNACK session present with return code %u",
                    c->return_code);
    return 0;
}

static int decode_publish(reader *r, uint8_t flags, sb_mqtt_packet *out)
{
    sb_mqtt_publish *pub = &out->publish;
    const char *tw;

    pub->dup = (flags >> 3) & 1;
    pub->qos = (flags >> 1) & 3;
    pub->retain = flags & 1;
    /* QoS 3 was refused with the fixed header. */
    if (pub->dup && pub->qos == 0)
        return fail(r->why, SB_EPROTO, "PUBLISH with DUP set at QoS 0");
    if (rd_str(r, &pub->topic, "topic name") != 0)
        return SB_EPROTO;
    if (sb_topic_validate(pub->topic.p, pub->topic.n, &tw) != 0)
        return fail(r->why, SB_EPROTO, "PUBLISH topic name %s", tw);
    if (pub->qos > 0 && rd_packet_id(r, &out->packet_id) != 0)
        return SB_EPROTO;
    pub->payload.p = r->p + r->off;
    pub->payload.n = left(r);
    r->off = r->n;
    return 0;
}

/* SUBSCRIBE (with_qos) or UNSUBSCRIBE: at least one valid filter. */
static int decode_filters(reader *r, int with_qos, sb_mqtt_packet *out)
{
    if (rd_packet_id(r, &out->packet_id) != 0)
        return SB_EPROTO;
    out->list.p = r->p + r->off;
    out->list.n = left(r);
    if (left(r) == 0)
        return fail(r->why, SB_EPROTO, "%s without a topic filter", r->pkt);
    while (left(r) > 0) {
        sb_mqtt_str f;
        const char *fw;
        if (rd_str(r, &f, "topic filter") != 0)
            return SB_EPROTO;
        if (sb_filter_validate(f.p, f.n, &fw) != 0)
            return fail(r->why, SB_EPROTO, "%s topic filter %s", r->pkt, fw);
        if (with_qos) {
            uint8_t q;
            if (rd_u8(r, &q, "requested QoS") != 0)
                return SB_EPROTO;
            if (q & 0xFC)
                return fail(r->why, SB_EPROTO,
                            "SUBSCRIBE requested QoS byte 0x%02x has reserved bits set", q);
            if (q == 3)
                return fail(r->why, SB_EPROTO, "SUBSCRIBE requested QoS is 3");
        }
        out->list.count++;
    }
    return 0;
}

static int valid_suback_code(uint8_t c)
{
    return c <= 2 || c == SB_MQTT_SUBACK_FAILURE;
}

static int decode_suback(reader *r, sb_mqtt_packet *out)
{
    if (rd_packet_id(r, &out->packet_id) != 0)
        return SB_EPROTO;
    if (left(r) == 0)
        return fail(r->why, SB_EPROTO, "SUBACK without a return code");
    out->list.p = r->p + r->off;
    out->list.n = out->list.count = left(r);
    for (size_t i = 0; i < out->list.n; i++)
        if (!valid_suback_code(out->list.p[i]))
            return fail(r->why, SB_EPROTO, "SUBACK return code 0x%02x is not allowed",
                        out->list.p[i]);
    r->off = r->n;
    return 0;
}

static int decode_body(reader *r, uint8_t flags, sb_mqtt_packet *out)
{
    switch (out->type) {
    case SB_MQTT_CONNECT:
        return decode_connect(r, &out->connect);
    case SB_MQTT_CONNACK:
        return decode_connack(r, &out->connack);
    case SB_MQTT_PUBLISH:
        return decode_publish(r, flags, out);
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBREL:
    case SB_MQTT_PUBCOMP:
    case SB_MQTT_UNSUBACK:
        return rd_packet_id(r, &out->packet_id);
    case SB_MQTT_SUBSCRIBE:
        return decode_filters(r, 1, out);
    case SB_MQTT_UNSUBSCRIBE:
        return decode_filters(r, 0, out);
    case SB_MQTT_SUBACK:
        return decode_suback(r, out);
    default: /* PINGREQ, PINGRESP, DISCONNECT: no body */
        return 0;
    }
}

int sb_mqtt_decode(const uint8_t *buf, size_t len, size_t max_packet, sb_mqtt_packet *out,
                   size_t *consumed, const char **why)
{
    int type, flags, rc;
    size_t remaining = 0, hdr = 0, total;
    long fixed;
    reader r;

    *consumed = 0;
    if (len == 0)
        return SB_MQTT_NEED_MORE;
    type = buf[0] >> 4;
    flags = buf[0] & 0x0F;
    if (type == 0 || type == 15)
        return fail(why, SB_EPROTO, "reserved packet type %d", type);
    if (type == SB_MQTT_PUBLISH) {
        if (((flags >> 1) & 3) == 3)
            return fail(why, SB_EPROTO, "PUBLISH with QoS 3");
    } else if (flags != required_flags(type)) {
        return fail(why, SB_EPROTO, "%s with fixed header flags 0x%x (must be 0x%x)",
                    sb_mqtt_type_name(type), (unsigned)flags, (unsigned)required_flags(type));
    }

    for (size_t i = 1;; i++) {
        if (i >= len)
            return SB_MQTT_NEED_MORE;
        remaining |= (size_t)(buf[i] & 0x7F) << (7 * (i - 1));
        if (!(buf[i] & 0x80)) {
            hdr = i + 1;
            break;
        }
        if (i == 4)
            return fail(why, SB_EPROTO, "remaining length uses more than 4 bytes");
    }
    total = hdr + remaining;
    if (max_packet != 0 && total > max_packet)
        return fail(why, SB_ETOOBIG, "packet of %zu bytes exceeds max_packet %zu", total,
                    max_packet);
    fixed = fixed_remaining(type);
    if (fixed >= 0 && remaining != (size_t)fixed)
        return fail(why, SB_EPROTO, "%s with remaining length %zu (must be %ld)",
                    sb_mqtt_type_name(type), remaining, fixed);
    if (len < total)
        return SB_MQTT_NEED_MORE;

    memset(out, 0, sizeof(*out));
    out->type = (sb_mqtt_type)type;
    r.p = buf + hdr;
    r.n = remaining;
    r.off = 0;
    r.pkt = sb_mqtt_type_name(type);
    r.why = why;
    rc = decode_body(&r, (uint8_t)flags, out);
    if (rc == SB_EVERSION) {
        *consumed = total;
        return rc;
    }
    if (rc != 0)
        return rc;
    if (r.off != r.n)
        return fail(why, SB_EPROTO, "%s has %zu trailing bytes", r.pkt, r.n - r.off);
    *consumed = total;
    return 0;
}

int sb_mqtt_filter_next(const sb_mqtt_packet *p, size_t *pos, sb_mqtt_filter *out)
{
    int with_qos = p->type == SB_MQTT_SUBSCRIBE;
    size_t n, need;

    if (p->type != SB_MQTT_SUBSCRIBE && p->type != SB_MQTT_UNSUBSCRIBE)
        return 0;
    if (*pos >= p->list.n || p->list.n - *pos < 2)
        return 0;
    n = (size_t)p->list.p[*pos] << 8 | p->list.p[*pos + 1];
    need = 2 + n + (with_qos ? 1 : 0);
    if (p->list.n - *pos < need)
        return 0;
    out->filter.p = (const char *)p->list.p + *pos + 2;
    out->filter.n = n;
    out->qos = with_qos ? p->list.p[*pos + 2 + n] : 0;
    *pos += need;
    return 1;
}

/* ---- encoding ---------------------------------------------------------- */

static size_t varint_len(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

/* Checks a raw SUBSCRIBE/UNSUBSCRIBE list: list.count well-formed entries
 * covering exactly list.n bytes. */
static int list_ok(const sb_mqtt_packet *p)
{
    size_t pos = 0, count = 0;
    sb_mqtt_filter f;

    if (p->list.count == 0 || p->list.p == NULL)
        return 0;
    while (sb_mqtt_filter_next(p, &pos, &f)) {
        if (f.qos > 2)
            return 0;
        count++;
    }
    return pos == p->list.n && count == p->list.count;
}

/* Remaining length of p, or SB_EINVAL. */
static int body_size(const sb_mqtt_packet *p, size_t *out)
{
    size_t n = 0;

    switch (p->type) {
    case SB_MQTT_CONNECT: {
        const sb_mqtt_connect *c = &p->connect;
        size_t name = c->protocol_name.n ? c->protocol_name.n : 4;
        if (name > 65535 || c->client_id.n > 65535 || c->will_qos > 2 ||
            (!c->will && (c->will_qos || c->will_retain)) || (c->has_password && !c->has_username))
            return SB_EINVAL;
        n = 2 + name + 1 + 1 + 2 + 2 + c->client_id.n;
        if (c->will) {
            if (c->will_topic.n > 65535 || c->will_message.n > 65535)
                return SB_EINVAL;
            n += 2 + c->will_topic.n + 2 + c->will_message.n;
        }
        if (c->has_username) {
            if (c->username.n > 65535)
                return SB_EINVAL;
            n += 2 + c->username.n;
        }
        if (c->has_password) {
            if (c->password.n > 65535)
                return SB_EINVAL;
            n += 2 + c->password.n;
        }
        break;
    }
    case SB_MQTT_CONNACK:
        if (p->connack.return_code > SB_MQTT_CONNACK_NOT_AUTHORIZED ||
            (p->connack.session_present && p->connack.return_code != 0))
            return SB_EINVAL;
        n = 2;
        break;
    case SB_MQTT_PUBLISH: {
        const sb_mqtt_publish *pub = &p->publish;
        if (pub->qos > 2 || (pub->qos > 0 && p->packet_id == 0) || (pub->dup && pub->qos == 0) ||
            pub->topic.n == 0 || pub->topic.n > 65535)
            return SB_EINVAL;
        if (pub->payload.n > SB_MQTT_MAX_REMAINING)
            return SB_EINVAL;
        n = 2 + pub->topic.n + (pub->qos > 0 ? 2 : 0) + pub->payload.n;
        break;
    }
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBREL:
    case SB_MQTT_PUBCOMP:
    case SB_MQTT_UNSUBACK:
        if (p->packet_id == 0)
            return SB_EINVAL;
        n = 2;
        break;
    case SB_MQTT_SUBSCRIBE:
    case SB_MQTT_UNSUBSCRIBE:
        if (p->packet_id == 0 || !list_ok(p))
            return SB_EINVAL;
        n = 2 + p->list.n;
        break;
    case SB_MQTT_SUBACK:
        if (p->packet_id == 0 || p->list.count == 0 || p->list.p == NULL ||
            p->list.count > SB_MQTT_MAX_REMAINING)
            return SB_EINVAL;
        for (size_t i = 0; i < p->list.count; i++)
            if (!valid_suback_code(p->list.p[i]))
                return SB_EINVAL;
        n = 2 + p->list.count;
        break;
    case SB_MQTT_PINGREQ:
    case SB_MQTT_PINGRESP:
    case SB_MQTT_DISCONNECT:
        n = 0;
        break;
    default:
        return SB_EINVAL;
    }
    if (n > SB_MQTT_MAX_REMAINING)
        return SB_EINVAL;
    *out = n;
    return 0;
}

int sb_mqtt_encoded_size(const sb_mqtt_packet *p, size_t *out)
{
    size_t body;
    int rc = body_size(p, &body);
    if (rc != 0)
        return rc;
    *out = 1 + varint_len(body) + body;
    return 0;
}

static uint8_t *put_u16(uint8_t *w, size_t v)
{
    w[0] = (uint8_t)(v >> 8);
    w[1] = (uint8_t)v;
    return w + 2;
}

static uint8_t *put_bytes(uint8_t *w, const void *p, size_t n)
{
    w = put_u16(w, n);
    if (n > 0)
        memcpy(w, p, n);
    return w + n;
}

static uint8_t *put_header(uint8_t *w, int type, int flags, size_t remaining)
{
    *w++ = (uint8_t)(type << 4 | flags);
    do {
        uint8_t b = remaining & 0x7F;
        remaining >>= 7;
        *w++ = (uint8_t)(remaining ? b | 0x80 : b);
    } while (remaining);
    return w;
}

int sb_mqtt_encode(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_packet *p)
{
    size_t body, total;
    uint8_t *w = out;
    int flags = required_flags(p->type);
    int rc = body_size(p, &body);

    if (rc != 0)
        return rc;
    total = 1 + varint_len(body) + body;
    *out_len = total;
    if (cap < total)
        return SB_ENOSPC;
    if (p->type == SB_MQTT_PUBLISH)
        flags = (p->publish.dup ? 8 : 0) | p->publish.qos << 1 | (p->publish.retain ? 1 : 0);
    w = put_header(w, p->type, flags, body);

    switch (p->type) {
    case SB_MQTT_CONNECT: {
        const sb_mqtt_connect *c = &p->connect;
        if (c->protocol_name.n == 0) {
            w = put_bytes(w, "MQTT", 4);
            *w++ = SB_MQTT_PROTOCOL_LEVEL;
        } else {
            w = put_bytes(w, c->protocol_name.p, c->protocol_name.n);
            *w++ = c->protocol_level;
        }
        *w++ = (uint8_t)((c->has_username ? 0x80 : 0) | (c->has_password ? 0x40 : 0) |
                         (c->will_retain ? 0x20 : 0) | c->will_qos << 3 | (c->will ? 0x04 : 0) |
                         (c->clean_session ? 0x02 : 0));
        w = put_u16(w, c->keep_alive);
        w = put_bytes(w, c->client_id.p, c->client_id.n);
        if (c->will) {
            w = put_bytes(w, c->will_topic.p, c->will_topic.n);
            w = put_bytes(w, c->will_message.p, c->will_message.n);
        }
        if (c->has_username)
            w = put_bytes(w, c->username.p, c->username.n);
        if (c->has_password)
            w = put_bytes(w, c->password.p, c->password.n);
        break;
    }
    case SB_MQTT_CONNACK:
        *w++ = p->connack.session_present ? 1 : 0;
        *w++ = p->connack.return_code;
        break;
    case SB_MQTT_PUBLISH:
        w = put_bytes(w, p->publish.topic.p, p->publish.topic.n);
        if (p->publish.qos > 0)
            w = put_u16(w, p->packet_id);
        if (p->publish.payload.n > 0)
            memcpy(w, p->publish.payload.p, p->publish.payload.n);
        w += p->publish.payload.n;
        break;
    case SB_MQTT_SUBSCRIBE:
    case SB_MQTT_UNSUBSCRIBE:
        /* list_ok() checked the entries: the wire format is the list itself. */
        w = put_u16(w, p->packet_id);
        memcpy(w, p->list.p, p->list.n);
        w += p->list.n;
        break;
    case SB_MQTT_SUBACK:
        w = put_u16(w, p->packet_id);
        memcpy(w, p->list.p, p->list.count);
        w += p->list.count;
        break;
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBREL:
    case SB_MQTT_PUBCOMP:
    case SB_MQTT_UNSUBACK:
        w = put_u16(w, p->packet_id);
        break;
    default:
        break;
    }
    (void)w;
    return 0;
}

int sb_mqtt_encode_alloc(uint8_t **out, size_t *out_len, const sb_mqtt_packet *p)
{
    size_t size;
    int rc;

    *out = NULL;
    rc = sb_mqtt_encoded_size(p, &size);
    if (rc != 0)
        return rc;
    *out = sb_malloc(size);
    if (*out == NULL)
        return SB_ENOMEM;
    rc = sb_mqtt_encode(*out, size, out_len, p);
    if (rc != 0) {
        sb_free(*out);
        *out = NULL;
    }
    return rc;
}

int sb_mqtt_encode_connack(uint8_t *out, size_t cap, size_t *out_len, int session_present,
                           uint8_t return_code)
{
    sb_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_CONNACK;
    p.connack.session_present = session_present ? 1 : 0;
    p.connack.return_code = return_code;
    return sb_mqtt_encode(out, cap, out_len, &p);
}

static void publish_packet(sb_mqtt_packet *p, const sb_mqtt_publish *pub, uint16_t packet_id)
{
    memset(p, 0, sizeof(*p));
    p->type = SB_MQTT_PUBLISH;
    p->publish = *pub;
    p->packet_id = pub->qos > 0 ? packet_id : 0;
}

int sb_mqtt_encode_publish(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_publish *pub,
                           uint16_t packet_id)
{
    sb_mqtt_packet p;
    publish_packet(&p, pub, packet_id);
    return sb_mqtt_encode(out, cap, out_len, &p);
}

int sb_mqtt_encode_publish_alloc(uint8_t **out, size_t *out_len, const sb_mqtt_publish *pub,
                                 uint16_t packet_id)
{
    sb_mqtt_packet p;
    publish_packet(&p, pub, packet_id);
    return sb_mqtt_encode_alloc(out, out_len, &p);
}

int sb_mqtt_encode_ack(uint8_t *out, size_t cap, size_t *out_len, sb_mqtt_type type,
                       uint16_t packet_id)
{
    sb_mqtt_packet p;
    if (fixed_remaining(type) != 2 || type == SB_MQTT_CONNACK)
        return SB_EINVAL;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.packet_id = packet_id;
    return sb_mqtt_encode(out, cap, out_len, &p);
}

int sb_mqtt_encode_suback(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                          const uint8_t *codes, size_t count)
{
    sb_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_SUBACK;
    p.packet_id = packet_id;
    p.list.p = codes;
    p.list.n = p.list.count = count;
    return sb_mqtt_encode(out, cap, out_len, &p);
}

int sb_mqtt_encode_empty(uint8_t *out, size_t cap, size_t *out_len, sb_mqtt_type type)
{
    sb_mqtt_packet p;
    if (fixed_remaining(type) != 0)
        return SB_EINVAL;
    memset(&p, 0, sizeof(p));
    p.type = type;
    return sb_mqtt_encode(out, cap, out_len, &p);
}

int sb_mqtt_encode_connect(uint8_t *out, size_t cap, size_t *out_len, const sb_mqtt_connect *c)
{
    sb_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_CONNECT;
    p.connect = *c;
    return sb_mqtt_encode(out, cap, out_len, &p);
}

/* SUBSCRIBE / UNSUBSCRIBE from an array: the list is written straight into
 * out, so there is no raw list to hand to sb_mqtt_encode(). */
static int encode_filters(uint8_t *out, size_t cap, size_t *out_len, int type, uint16_t packet_id,
                          const sb_mqtt_filter *filters, size_t count)
{
    int with_qos = type == SB_MQTT_SUBSCRIBE;
    size_t body = 2, total;
    uint8_t *w;

    if (packet_id == 0 || count == 0 || filters == NULL)
        return SB_EINVAL;
    for (size_t i = 0; i < count; i++) {
        if (filters[i].filter.n > 65535 || (with_qos && filters[i].qos > 2))
            return SB_EINVAL;
        body += 2 + filters[i].filter.n + (with_qos ? 1 : 0);
        if (body > SB_MQTT_MAX_REMAINING)
            return SB_EINVAL;
    }
    total = 1 + varint_len(body) + body;
    *out_len = total;
    if (cap < total)
        return SB_ENOSPC;
    w = put_header(out, type, 2, body);
    w = put_u16(w, packet_id);
    for (size_t i = 0; i < count; i++) {
        w = put_bytes(w, filters[i].filter.p, filters[i].filter.n);
        if (with_qos)
            *w++ = filters[i].qos;
    }
    return 0;
}

int sb_mqtt_encode_subscribe(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                             const sb_mqtt_filter *filters, size_t count)
{
    return encode_filters(out, cap, out_len, SB_MQTT_SUBSCRIBE, packet_id, filters, count);
}

int sb_mqtt_encode_unsubscribe(uint8_t *out, size_t cap, size_t *out_len, uint16_t packet_id,
                               const sb_mqtt_filter *filters, size_t count)
{
    return encode_filters(out, cap, out_len, SB_MQTT_UNSUBSCRIBE, packet_id, filters, count);
}
