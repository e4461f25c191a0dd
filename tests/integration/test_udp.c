/*
 * UDP adapters with real sockets: a `listen` source publishes each datagram
 * (topic template with {peer}; oversized datagrams are dropped and logged),
 * a `connect` sink sends each delivery as one datagram to a socket the test
 * owns.
 */
#include "harness.h"

#include <stdio.h>
#include <string.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "{v1}"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: udp-in\n"
                             "    type: udp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    topic: udp/{peer}\n"
                             "    max_message: 100\n"
                             "  - name: udp-out\n"
                             "    type: udp\n"
                             "    connect: 127.0.0.1:{v0}\n"
                             "routes:\n"
                             "  - name: udp-rx\n"
                             "    from: udp/#\n"
                             "  - name: to-udp\n"
                             "    from: udpout/#\n"
                             "    to: udp-out\n";

/* Starts the broker with udp-out sending to *rx (bound by the test). */
static sbt_conn *start(sbt_broker *b, const char *name, sbt_udp **rx)
{
    char port[16];
    *rx = sbt_udp_bind(0);
    assert_non_null(*rx);
    snprintf(port, sizeof(port), "%d", sbt_udp_port(*rx));
    sbt_broker_init(b, name, 2);
    sbt_broker_set(b, 0, port);
    if (b->values[1] == NULL)
        sbt_broker_set(b, 1, "");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

static void test_udp_source(void **state)
{
    sbt_broker *b = *state;
    sbt_udp *rx, *tx;
    sbt_conn *c = start(b, "udp-source", &rx);
    static const unsigned char bin[2] = {0xfe, 0x00};
    char topic[64], big[150], line[160];
    json_t *m;

    tx = sbt_udp_bind(0);
    assert_non_null(tx);
    snprintf(topic, sizeof(topic), "udp/127.0.0.1:%d", sbt_udp_port(tx));
    sbt_udp_send(tx, b->port[1], "d1", 2);
    sbt_udp_send(tx, b->port[1], "d2", 2);
    sbt_sub(c, "udp-rx", NULL, 10);
    for (int i = 1; i <= 2; i++) {
        char want[8];
        snprintf(want, sizeof(want), "d%d", i);
        m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "topic"), topic);
        assert_string_equal(sbt_str(m, "payload"), want);
        sbt_ack(c, "udp-rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }

    /* Larger than max_message: dropped and logged; the next one passes. */
    memset(big, 'z', sizeof(big));
    sbt_udp_send(tx, b->port[1], big, sizeof(big));
    snprintf(line, sizeof(line),
             "[udp-in] peer 127.0.0.1:%d: datagram larger than max_message 100 dropped",
             sbt_udp_port(tx));
    sbt_broker_wait_log(b, line, 1, 5000);
    sbt_udp_send(tx, b->port[1], bin, sizeof(bin));
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload_b64"), "/gA=");
    sbt_ack(c, "udp-rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_wait_queue_int(c, "udp-rx", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "udp-rx", "published"), 3);

    sbt_udp_close(tx);
    sbt_udp_close(rx);
    sbt_close(c);
    b->passed = 1;
}

static void test_udp_sink(void **state)
{
    sbt_broker *b = *state;
    sbt_udp *rx;
    sbt_conn *c = start(b, "udp-sink", &rx);
    char buf[128];

    sbt_pub(c, "udpout/a", "o1", 1);
    sbt_pub(c, "udpout/a", "o2", 1);
    sbt_pub(c, "udpout/b", "o3", 1);
    for (int i = 1; i <= 3; i++) {
        char want[8];
        int n = sbt_udp_recv(rx, buf, sizeof(buf) - 1, 5000);
        assert_int_equal(n, 2);
        buf[n] = '\0';
        snprintf(want, sizeof(want), "o%d", i);
        assert_string_equal(buf, want);
    }
    sbt_wait_queue_int(c, "to-udp:udp-out", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "to-udp:udp-out", "acked"), 3);
    sbt_udp_close(rx);
    sbt_close(c);
    b->passed = 1;
}

/* A datagram has no identity: with an ACL, the anonymous rules decide
 * whether it is published. */
static void test_udp_acl(void **state)
{
    sbt_broker *b = *state;
    sbt_udp *rx = sbt_udp_bind(0), *tx = sbt_udp_bind(0);
    static const char acl[] = "topic read #\n"; /* anonymous: read, never write */
    char path[SBT_PATH_MAX], line[SBT_PATH_MAX + 64], port[16];
    sbt_conn *c;

    assert_non_null(rx);
    assert_non_null(tx);
    snprintf(port, sizeof(port), "%d", sbt_udp_port(rx));
    sbt_broker_init(b, "udp-acl", 2);
    sbt_broker_set(b, 0, port);
    sbt_path(path, sizeof(path), b->dir, "acl");
    sbt_write_file(path, acl, sizeof(acl) - 1);
    snprintf(line, sizeof(line), "  auth: { acl_file: '%s' }\n", path);
    sbt_broker_set(b, 1, line);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_udp_send(tx, b->port[1], "d1", 2);
    snprintf(line, sizeof(line),
             "[udp-in] peer 127.0.0.1:%d: datagram to udp/127.0.0.1:%d dropped: "
             "denied by the ACL",
             sbt_udp_port(tx), sbt_udp_port(tx));
    sbt_broker_wait_log(b, line, 1, 5000);
    assert_int_equal(sbt_queue_int(c, "udp-rx", "published"), 0);
    sbt_udp_close(tx);
    sbt_udp_close(rx);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_udp_source, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_udp_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_udp_acl, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("udp", tests, NULL, NULL);
}
