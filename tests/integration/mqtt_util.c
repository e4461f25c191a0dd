/*
 * The MQTT integration tests' shared pieces (see mqtt_util.h): the broker
 * config, running the external clients, and the raw MQTT client over
 * sbt_tcp with the broker's codec.
 */
#include "mqtt_util.h"

#include "service/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* {v0}: extra keys of the "mqtt" adapter (TLS, authentication; later);
 * {v1}: extra lines of the broker section (the queue window). */
static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "{v1}"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: mqtt\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: mqtt\n"
                             "{v0}"
                             "  - name: mqtt-small\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port2}\n"
                             "    protocol: mqtt\n"
                             "    max_message: 1KiB\n"
                             "  - name: mqtt-unix\n"
                             "    type: unix\n"
                             "    path: '{dir}/mqtt.sock'\n"
                             "    protocol: mqtt\n"
                             "  - name: out\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port3}\n"
                             "    framing: line\n"
                             "routes:\n"
                             "  - name: to-out\n"
                             "    from: sink/#\n"
                             "    to: out\n";

sbt_conn *sbt_mq_start(sbt_broker *b, const char *name)
{
    sbt_broker_init(b, name, 4);
    if (b->values[0] == NULL)
        sbt_broker_set(b, 0, "");
    if (b->values[1] == NULL)
        sbt_broker_set(b, 1, "");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[SBT_MQ_PORT_JSONL]);
}

void sbt_mq_unix_path(sbt_broker *b, char *out, size_t n)
{
    sbt_path(out, n, b->dir, "mqtt.sock");
}

/* ---- external clients ---- */

const char *sbt_mq_tool(const char *env)
{
    const char *v = getenv(env);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

void sbt_mq_need(const char *env1, const char *env2)
{
    const char *missing = sbt_mq_tool(env1) == NULL                   ? env1
                          : env2 != NULL && sbt_mq_tool(env2) == NULL ? env2
                                                                      : NULL;
    if (missing != NULL) {
        fprintf(stderr, "skipped: %s is not set (mosquitto-clients or libmosquitto missing)\n",
                missing);
        skip();
    }
}

void sbt_argv_init(sbt_argv *a, const char *program)
{
    memset(a, 0, sizeof(*a));
    a->v[a->n++] = sbt_strdup(program);
}

void sbt_argv_add(sbt_argv *a, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n;
    assert_true(a->n < (int)(sizeof(a->v) / sizeof(a->v[0])) - 1);
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(buf));
    a->v[a->n++] = sbt_strdup(buf);
    a->v[a->n] = NULL;
}

void sbt_argv_free(sbt_argv *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    memset(a, 0, sizeof(*a));
}

/* The command line, for failure messages. */
static void describe(const sbt_argv *a, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < a->n && len + 1 < cap; i++) {
        int w = snprintf(out + len, cap - len, "%s%s", i > 0 ? " " : "", a->v[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

char *sbt_mq_run(sbt_argv *a, int want)
{
    char *out = NULL, *err = NULL, cmd[2048];
    int rc = sbt_run(a->v, NULL, 20000, &out, &err);
    if (rc != want) {
        describe(a, cmd, sizeof(cmd));
        fail_msg("%s exited with %d (want %d)\nstdout:\n%s\nstderr:\n%s", cmd, rc, want, out, err);
    }
    free(err);
    return out;
}

/* ---- the raw client ---- */

/* A packet received while waiting for another one. */
typedef struct kept {
    struct kept *next;
    size_t len;
    uint8_t data[];
} kept;

struct sbt_mq {
    sbt_tcp *t;
    uint8_t *buf; /* the last packet returned; decoded strings point here */
    size_t cap;
    kept *head, *tail;
};

sbt_mq *sbt_mq_open(int port)
{
    sbt_mq *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->t = sbt_tcp_connect(port, 5000);
    if (m->t == NULL)
        fail_msg("cannot connect to the MQTT port %d", port);
    return m;
}

int sbt_mq_write(sbt_mq *m, const void *data, size_t len)
{
    return sbt_tcp_write(m->t, data, len);
}

static void send_encoded(sbt_mq *m, const uint8_t *buf, size_t len)
{
    int rc = sbt_mq_write(m, buf, len);
    if (rc != 0)
        fail_msg("writing a %zu-byte MQTT packet: %s", len, uv_strerror(rc));
}

static void grow(sbt_mq *m, size_t need)
{
    if (m->cap < need) {
        uint8_t *n = realloc(m->buf, need);
        assert_non_null(n);
        m->buf = n;
        m->cap = need;
    }
}

/* Reads one whole packet's bytes into m->buf; returns its length, -1 if
 * none began within timeout_ms, -2 at EOF. One that began has
 * SBT_REPLY_MS to arrive whole. */
static long read_packet(sbt_mq *m, int timeout_ms)
{
    int64_t deadline;
    uint8_t hdr[SB_MQTT_MAX_HEADER];
    size_t n = 1, remaining = 0;
    int rc = sbt_tcp_read_exact(m->t, hdr, 1, timeout_ms);
    if (rc < 0)
        return rc;
    deadline = sbt_now_ms() + SBT_REPLY_MS;
    for (int shift = 0;; shift += 7) {
        int left = (int)(deadline - sbt_now_ms());
        rc = sbt_tcp_read_exact(m->t, hdr + n, 1, left > 0 ? left : 1);
        if (rc < 0)
            fail_msg("the broker sent a truncated fixed header (%s)",
                     rc == -1 ? "timeout" : "connection closed");
        remaining |= (size_t)(hdr[n] & 0x7f) << shift;
        if ((hdr[n++] & 0x80) == 0)
            break;
        if (n == SB_MQTT_MAX_HEADER)
            fail_msg("the broker sent a remaining length of more than 4 bytes");
    }
    grow(m, n + remaining + 1);
    memcpy(m->buf, hdr, n);
    if (remaining > 0) {
        int left = (int)(deadline - sbt_now_ms());
        rc = sbt_tcp_read_exact(m->t, m->buf + n, remaining, left > 0 ? left : 1);
        if (rc < 0)
            fail_msg("the broker sent a truncated packet (0x%02x, %zu of %zu bytes: %s)", hdr[0], n,
                     n + remaining, rc == -1 ? "timeout" : "connection closed");
    }
    return (long)(n + remaining);
}

static void decode(sbt_mq *m, size_t len, sb_mqtt_packet *out)
{
    size_t consumed = 0;
    const char *why = NULL;
    int rc = sb_mqtt_decode(m->buf, len, 0, out, &consumed, &why);
    if (rc != 0 || consumed != len)
        fail_msg("the broker sent a malformed packet (first byte 0x%02x, %zu bytes): %s", m->buf[0],
                 len, why != NULL ? why : "incomplete");
}

int sbt_mq_next(sbt_mq *m, sb_mqtt_packet *out, int timeout_ms)
{
    long len;
    if (m->head != NULL) {
        kept *k = m->head;
        m->head = k->next;
        if (m->head == NULL)
            m->tail = NULL;
        grow(m, k->len + 1);
        memcpy(m->buf, k->data, k->len);
        len = (long)k->len;
        free(k);
    } else {
        len = read_packet(m, timeout_ms);
        if (len < 0)
            return (int)len;
    }
    decode(m, (size_t)len, out);
    return 0;
}

static const char *name_of(int type)
{
    return sb_mqtt_type_name(type);
}

void sbt_mq_expect(sbt_mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id)
{
    int rc = sbt_mq_next(m, out, SBT_REPLY_MS);
    if (rc == -1)
        fail_msg("no %s from the broker within %d ms", name_of(type), SBT_REPLY_MS);
    if (rc == -2)
        fail_msg("the broker closed the connection; expected %s", name_of(type));
    if (out->type != type)
        fail_msg("expected %s, got %s", name_of(type), name_of(out->type));
    if (packet_id != 0 && out->packet_id != packet_id)
        fail_msg("expected %s with packet id %u, got %u", name_of(type), packet_id, out->packet_id);
}

void sbt_mq_await(sbt_mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id)
{
    int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
    kept *held = NULL, **tail = &held;
    for (;;) {
        int left = (int)(deadline - sbt_now_ms());
        long len = read_packet(m, left > 0 ? left : 1);
        kept *k;
        if (len == -1)
            fail_msg("no %s from the broker within %d ms", name_of(type), SBT_REPLY_MS);
        if (len == -2)
            fail_msg("the broker closed the connection; expected %s", name_of(type));
        decode(m, (size_t)len, out);
        if (out->type == type && (packet_id == 0 || out->packet_id == packet_id))
            break;
        k = malloc(sizeof(*k) + (size_t)len);
        assert_non_null(k);
        k->next = NULL;
        k->len = (size_t)len;
        memcpy(k->data, m->buf, (size_t)len);
        *tail = k;
        tail = &k->next;
    }
    /* Packets received meanwhile come next, after those kept before. */
    if (held != NULL) {
        if (m->tail != NULL)
            m->tail->next = held;
        else
            m->head = held;
        for (m->tail = held; m->tail->next != NULL; m->tail = m->tail->next)
            ;
    }
}

void sbt_mq_send_connect(sbt_mq *m, const sbt_mq_opts *o)
{
    sb_mqtt_connect c;
    uint8_t buf[1024];
    size_t len;
    memset(&c, 0, sizeof(c));
    c.clean_session = (uint8_t)o->clean;
    c.keep_alive = (uint16_t)o->keepalive;
    c.client_id.p = o->id;
    c.client_id.n = strlen(o->id);
    if (o->will_topic != NULL) {
        const char *wp = o->will_payload != NULL ? o->will_payload : "";
        c.will = 1;
        c.will_qos = (uint8_t)o->will_qos;
        c.will_retain = (uint8_t)o->will_retain;
        c.will_topic.p = o->will_topic;
        c.will_topic.n = strlen(o->will_topic);
        c.will_message.p = (const uint8_t *)wp;
        c.will_message.n = strlen(wp);
    }
    if (o->username != NULL) {
        c.has_username = 1;
        c.username.p = o->username;
        c.username.n = strlen(o->username);
    }
    if (o->password != NULL) {
        c.has_password = 1;
        c.password.p = (const uint8_t *)o->password;
        c.password.n = strlen(o->password);
    }
    assert_int_equal(sb_mqtt_encode_connect(buf, sizeof(buf), &len, &c), 0);
    send_encoded(m, buf, len);
}

void sbt_mq_connect(sbt_mq *m, const sbt_mq_opts *o, sb_mqtt_connack *out)
{
    sb_mqtt_packet p;
    sbt_mq_send_connect(m, o);
    sbt_mq_expect(m, &p, SB_MQTT_CONNACK, 0);
    *out = p.connack;
}

sbt_mq *sbt_mq_client(int port, const sbt_mq_opts *o, int *session_present)
{
    sbt_mq *m = sbt_mq_open(port);
    sb_mqtt_connack ack;
    sbt_mq_connect(m, o, &ack);
    if (ack.return_code != SB_MQTT_CONNACK_ACCEPTED)
        fail_msg("CONNECT of \"%s\" refused with code %u", o->id, ack.return_code);
    if (session_present != NULL)
        *session_present = ack.session_present;
    return m;
}

sbt_mq *sbt_mq_simple(int port, const char *id, int clean)
{
    sbt_mq_opts o;
    memset(&o, 0, sizeof(o));
    o.id = id;
    o.clean = clean;
    return sbt_mq_client(port, &o, NULL);
}

void sbt_mq_publish(sbt_mq *m, const char *topic, const char *payload, int qos, int retain, int dup,
                    uint16_t packet_id)
{
    sb_mqtt_publish pub;
    uint8_t *buf;
    size_t len;
    memset(&pub, 0, sizeof(pub));
    pub.qos = (uint8_t)qos;
    pub.retain = (uint8_t)retain;
    pub.dup = (uint8_t)dup;
    pub.topic.p = topic;
    pub.topic.n = strlen(topic);
    pub.payload.p = (const uint8_t *)payload;
    pub.payload.n = strlen(payload);
    assert_int_equal(sb_mqtt_encode_publish_alloc(&buf, &len, &pub, packet_id), 0);
    send_encoded(m, buf, len);
    sb_free(buf);
}

void sbt_mq_ack(sbt_mq *m, sb_mqtt_type type, uint16_t packet_id)
{
    uint8_t buf[8];
    size_t len;
    assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &len, type, packet_id), 0);
    send_encoded(m, buf, len);
}

void sbt_mq_empty(sbt_mq *m, sb_mqtt_type type)
{
    uint8_t buf[8];
    size_t len;
    assert_int_equal(sb_mqtt_encode_empty(buf, sizeof(buf), &len, type), 0);
    send_encoded(m, buf, len);
}

void sbt_mq_subscribe(sbt_mq *m, uint16_t packet_id, const char *const *filters, const int *qos,
                      size_t n, const int *want)
{
    sb_mqtt_filter f[16];
    sb_mqtt_packet p;
    uint8_t buf[4096];
    size_t len;
    assert_true(n >= 1 && n <= 16);
    for (size_t i = 0; i < n; i++) {
        f[i].filter.p = filters[i];
        f[i].filter.n = strlen(filters[i]);
        f[i].qos = (uint8_t)qos[i];
    }
    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof(buf), &len, packet_id, f, n), 0);
    send_encoded(m, buf, len);
    sbt_mq_await(m, &p, SB_MQTT_SUBACK, packet_id);
    if (p.list.count != n)
        fail_msg("SUBACK has %zu return codes for %zu filters", p.list.count, n);
    for (size_t i = 0; i < n; i++) {
        int w = want != NULL ? want[i] : qos[i];
        if (p.list.p[i] != w)
            fail_msg("SUBACK return code for \"%s\" (QoS %d) is 0x%02x, want 0x%02x", filters[i],
                     qos[i], p.list.p[i], w);
    }
}

void sbt_mq_sub1(sbt_mq *m, uint16_t packet_id, const char *filter, int qos)
{
    sbt_mq_subscribe(m, packet_id, &filter, &qos, 1, NULL);
}

int sbt_mq_eq(const void *p, size_t n, const char *s)
{
    return strlen(s) == n && (n == 0 || memcmp(p, s, n) == 0);
}

uint16_t sbt_mq_expect_publish(sbt_mq *m, const char *topic, const char *payload, int qos,
                               int retain, int dup)
{
    sb_mqtt_packet p;
    sbt_mq_expect(m, &p, SB_MQTT_PUBLISH, 0);
    if (!sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, topic) ||
        !sbt_mq_eq(p.publish.payload.p, p.publish.payload.n, payload))
        fail_msg("expected PUBLISH %s \"%s\", got %.*s \"%.*s\"", topic, payload,
                 (int)p.publish.topic.n, p.publish.topic.p, (int)p.publish.payload.n,
                 (const char *)p.publish.payload.p);
    if (qos >= 0 && p.publish.qos != qos)
        fail_msg("PUBLISH %s \"%s\" came at QoS %d, want %d", topic, payload, p.publish.qos, qos);
    if (retain >= 0 && p.publish.retain != retain)
        fail_msg("PUBLISH %s \"%s\" has RETAIN %d, want %d", topic, payload, p.publish.retain,
                 retain);
    if (dup >= 0 && p.publish.dup != dup)
        fail_msg("PUBLISH %s \"%s\" has DUP %d, want %d", topic, payload, p.publish.dup, dup);
    return p.packet_id;
}

void sbt_mq_ping(sbt_mq *m)
{
    sb_mqtt_packet p;
    sbt_mq_empty(m, SB_MQTT_PINGREQ);
    sbt_mq_await(m, &p, SB_MQTT_PINGRESP, 0);
}

int sbt_mq_wait_closed(sbt_mq *m, int timeout_ms)
{
    return sbt_tcp_wait_closed(m->t, timeout_ms);
}

void sbt_mq_close(sbt_mq *m)
{
    if (m == NULL)
        return;
    sbt_tcp_close(m->t);
    while (m->head != NULL) {
        kept *k = m->head;
        m->head = k->next;
        free(k);
    }
    free(m->buf);
    free(m);
}

void sbt_mq_disconnect(sbt_mq *m)
{
    sbt_mq_empty(m, SB_MQTT_DISCONNECT);
    if (!sbt_mq_wait_closed(m, SBT_REPLY_MS))
        fail_msg("the broker did not close the connection after DISCONNECT");
    sbt_mq_close(m);
}
