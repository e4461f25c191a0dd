#include "tests/integration/mqtt_tcp.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/protocol/mqtt/mqtt_codec.h"

#define WAIT_MS 20000

sbt_tcp *sbt_mqtt_tcp_connect(int port, const char *client_id)
{
    uint8_t buf[256], ack[4];
    size_t n;
    sb_mqtt_connect c;
    sbt_tcp *t = sbt_tcp_connect(port, WAIT_MS);
    assert_non_null(t);
    memset(&c, 0, sizeof c);
    c.clean_session = 1;
    c.keep_alive = 60;
    c.client_id.p = client_id;
    c.client_id.n = strlen(client_id);
    assert_int_equal(sb_mqtt_encode_connect(buf, sizeof buf, &n, &c), 0);
    sbt_tcp_write(t, buf, n);
    assert_int_equal(sbt_tcp_read_exact(t, ack, 4, WAIT_MS), 4);
    assert_int_equal(ack[0], 0x20);
    assert_int_equal(ack[3], 0);
    return t;
}

void sbt_mqtt_tcp_subscribe(sbt_tcp *t, const char *filter)
{
    uint8_t buf[256], ack[5];
    size_t n;
    sb_mqtt_filter f;
    f.filter.p = filter;
    f.filter.n = strlen(filter);
    f.qos = 0;
    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof buf, &n, 1, &f, 1), 0);
    sbt_tcp_write(t, buf, n);
    assert_int_equal(sbt_tcp_read_exact(t, ack, 5, WAIT_MS), 5);
    assert_int_equal(ack[0], 0x90);
    assert_int_equal(ack[4], 0);
}

void sbt_mqtt_tcp_publish(sbt_tcp *t, const char *topic, const char *payload, int retain)
{
    uint8_t buf[512];
    size_t n;
    sb_mqtt_publish p;
    memset(&p, 0, sizeof p);
    p.retain = (uint8_t)retain;
    p.topic.p = topic;
    p.topic.n = strlen(topic);
    p.payload.p = (const uint8_t *)payload;
    p.payload.n = strlen(payload);
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof buf, &n, &p, 0), 0);
    sbt_tcp_write(t, buf, n);
}

void sbt_mqtt_tcp_read_publish(sbt_tcp *t, char *topic, size_t tn, char *payload, size_t pn)
{
    assert_int_equal(sbt_mqtt_tcp_next_publish(t, topic, tn, payload, pn, WAIT_MS), 0);
}

int sbt_mqtt_tcp_next_publish(sbt_tcp *t, char *topic, size_t tn, char *payload, size_t pn,
                              int timeout_ms)
{
    uint8_t buf[4096];
    size_t len = 0, rem = 0, used;
    int shift = 0, rc;
    sb_mqtt_packet p;
    rc = sbt_tcp_read_exact(t, buf, 1, timeout_ms);
    if (rc == -1)
        return -1;
    assert_int_equal(rc, 1);
    len = 1;
    do {
        assert_true(len < 5); /* at most four length bytes */
        assert_int_equal(sbt_tcp_read_exact(t, buf + len, 1, WAIT_MS), 1);
        rem |= (size_t)(buf[len] & 0x7f) << shift;
        shift += 7;
    } while (buf[len++] & 0x80);
    assert_true(len + rem <= sizeof buf);
    assert_int_equal(sbt_tcp_read_exact(t, buf + len, rem, WAIT_MS), (int)rem);
    assert_int_equal(sb_mqtt_decode(buf, len + rem, 0, &p, &used, NULL), 0);
    assert_int_equal(p.type, SB_MQTT_PUBLISH);
    snprintf(topic, tn, "%.*s", (int)p.publish.topic.n, p.publish.topic.p);
    snprintf(payload, pn, "%.*s", (int)p.publish.payload.n, (const char *)p.publish.payload.p);
    return 0;
}
