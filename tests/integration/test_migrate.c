/*
 * A store of schema version 1 served by today's broker: the data dir holds
 * a copy of tests/data/storage/v1-golden.db (what broker d105b97 left, see
 * the README there), the config declares the routes and adapters that made
 * it, and the clients that made it come back:
 * - the MQTT client golden-alice (user alice) resumes its persistent
 *   session and gets the three messages queued for it at the QoS granted
 *   per filter (0, 1 and 2), and new ones the same way; user bob may not
 *   take the session over (its owner came across);
 * - the anonymous golden-anon resumes its session (QoS 1);
 * - a jsonl client attaches to its subscription `watch` and to the route
 *   queue `orders` (two filters) and gets what waited and what comes;
 * - the retained values, the dead letter and the stats are there;
 * and all of it again after a restart on the migrated store.
 */
#include "harness.h"
#include "mqtt_util.h"

#include "service/alloc.h"
#include "service/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_JSONL, P_MQTT, P_PLANT, NPORTS };

/* The golden store's routes and adapters (make-v1-golden.sh); nothing
 * listens on plant-out's port, so to-plant keeps its message. */
static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  auth: { password_file: '{dir}/passwd' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: mqtt\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: mqtt\n"
                             "    session_expiry: 30d\n"
                             "  - name: plant-out\n"
                             "    type: tcp\n"
                             "    connect: 127.0.0.1:{port2}\n"
                             "    protocol: raw\n"
                             "    framing: line\n"
                             "routes:\n"
                             "  - name: orders\n"
                             "    from: [orders/#, invoices/+/paid]\n"
                             "    retain: true\n"
                             "    dedup: { header: order-id, window: 365d }\n"
                             "  - name: to-plant\n"
                             "    from: plant/#\n"
                             "    to: plant-out\n"
                             "  - name: audit\n"
                             "    from: audit/#\n"
                             "    retry: { max_attempts: 1 }\n";

static void write_passwd(sbt_broker *b)
{
    static const char *const users[][2] = {{"alice", "alice-secret"}, {"bob", "bob-secret"}};
    char path[SBT_PATH_MAX], text[1024];
    size_t len = 0;
    for (size_t i = 0; i < 2; i++) {
        char *hash;
        assert_int_equal(sb_auth_hash_password(&hash, users[i][1], strlen(users[i][1]), 101), 0);
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%s:%s\n", users[i][0], hash);
        sb_free(hash);
    }
    sbt_path(path, sizeof(path), b->dir, "passwd");
    sbt_write_file(path, text, len);
}

/* The golden store as the data dir's database, then the broker. */
static void start_on_golden(sbt_broker *b)
{
    char src[SBT_PATH_MAX], dst[SBT_PATH_MAX], *db;
    size_t len;
    uv_fs_t req;

    sbt_broker_init(b, "migrate", NPORTS);
    write_passwd(b);
    snprintf(src, sizeof(src), "%s/storage/v1-golden.db", sbt_test_data());
    db = sbt_read_file(src, &len);
    if (db == NULL)
        fail_msg("cannot read %s", src);
    assert_int_equal(uv_fs_mkdir(NULL, &req, b->data_dir, 0700, NULL), 0);
    uv_fs_req_cleanup(&req);
    sbt_path(dst, sizeof(dst), b->data_dir, "switchboard.db");
    sbt_write_file(dst, db, len);
    free(db);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
}

static sbt_mq *login(sbt_broker *b, const char *id, const char *user, const char *password,
                     int *present)
{
    sbt_mq_opts o;
    memset(&o, 0, sizeof(o));
    o.id = id;
    o.clean = 0;
    o.username = user;
    o.password = password;
    return sbt_mq_client(b->port[P_MQTT], &o, present);
}

/* User bob may not use alice's session: CONNACK 5, nothing taken over. */
static void bob_refused(sbt_broker *b)
{
    sbt_mq_opts o;
    sb_mqtt_connack ack;
    sbt_mq *m = sbt_mq_open(b->port[P_MQTT]);
    memset(&o, 0, sizeof(o));
    o.id = "golden-alice";
    o.username = "bob";
    o.password = "bob-secret";
    sbt_mq_connect(m, &o, &ack);
    assert_int_equal(ack.return_code, SB_MQTT_CONNACK_NOT_AUTHORIZED);
    assert_true(sbt_mq_wait_closed(m, SBT_REPLY_MS));
    sbt_mq_close(m);
}

/* Acknowledges a delivery of qos as a client does (QoS 2: PUBREC, then
 * PUBCOMP once PUBREL came). */
static void ack_delivery(sbt_mq *m, int qos, uint16_t pid)
{
    sb_mqtt_packet p;
    if (qos == 1)
        sbt_mq_ack(m, SB_MQTT_PUBACK, pid);
    if (qos == 2) {
        sbt_mq_ack(m, SB_MQTT_PUBREC, pid);
        sbt_mq_expect(m, &p, SB_MQTT_PUBREL, pid);
        sbt_mq_ack(m, SB_MQTT_PUBCOMP, pid);
    }
}

static void expect_qos(sbt_mq *m, const char *topic, const char *payload, int qos)
{
    ack_delivery(m, qos, sbt_mq_expect_publish(m, topic, payload, qos, -1, -1));
}

/* The list of strings in o[key], '|'-joined. */
static void string_list(char *out, size_t n, const json_t *o, const char *key)
{
    const json_t *a = json_object_get(o, key);
    size_t len = 0;
    out[0] = '\0';
    if (!json_is_array(a))
        fail_msg("\"%s\" is not a list", key);
    for (size_t i = 0; i < json_array_size(a); i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", i > 0 ? "|" : "",
                                json_string_value(json_array_get(a, i)));
}

static void check_filters(sbt_conn *c, const char *queue, const char *want)
{
    json_t *q = sbt_queue_stats(c, queue);
    char have[256];
    if (q == NULL)
        fail_msg("no queue %s after the migration", queue);
    string_list(have, sizeof(have), q, "filters");
    assert_string_equal(have, want);
    json_decref(q);
}

static void test_mqtt_sessions(void **state)
{
    sbt_broker *b = *state;
    sbt_mq *alice, *anon, *pub;
    sbt_conn *c;
    int present = 0;

    start_on_golden(b);
    sbt_broker_wait_log(b, "migrated from schema version 1 to ", 1, SBT_REPLY_MS);
    c = sbt_connect(b->port[P_JSONL]);
    check_filters(c, "mqtt/golden-alice", "sensors/+/temp|orders/#|alerts/#");
    check_filters(c, "mqtt/golden-anon", "plant/#");

    bob_refused(b);
    alice = login(b, "golden-alice", "alice", "alice-secret", &present);
    assert_int_equal(present, 1);
    /* In queue order, each at the QoS granted on the filter it matched:
     * orders/# 1, sensors/+/temp 0, alerts/# 2 (published at QoS 2). */
    expect_qos(alice, "orders/eu", "order 1", 1);
    expect_qos(alice, "sensors/boiler/temp", "81.5", 0);
    expect_qos(alice, "alerts/boiler", "overheat", 2);
    /* New messages: a QoS 2 publish reaches alerts/# at QoS 2 and orders/#
     * at 1 (its grant); sensors/+/temp at 0. */
    pub = sbt_mq_simple(b->port[P_MQTT], "golden-pub-2", 1);
    sbt_mq_publish(pub, "alerts/tank", "low", 2, 0, 0, 7);
    sbt_mq_expect(pub, &(sb_mqtt_packet){0}, SB_MQTT_PUBREC, 7);
    sbt_mq_ack(pub, SB_MQTT_PUBREL, 7);
    sbt_mq_expect(pub, &(sb_mqtt_packet){0}, SB_MQTT_PUBCOMP, 7);
    expect_qos(alice, "alerts/tank", "low", 2);
    sbt_mq_publish(pub, "orders/us", "order 2", 2, 0, 0, 8);
    sbt_mq_expect(pub, &(sb_mqtt_packet){0}, SB_MQTT_PUBREC, 8);
    sbt_mq_ack(pub, SB_MQTT_PUBREL, 8);
    sbt_mq_expect(pub, &(sb_mqtt_packet){0}, SB_MQTT_PUBCOMP, 8);
    expect_qos(alice, "orders/us", "order 2", 1);
    sbt_pub(c, "sensors/tank/temp", "12.0", -1);
    expect_qos(alice, "sensors/tank/temp", "12.0", 0);
    sbt_mq_disconnect(pub);
    sbt_mq_disconnect(alice);

    anon = login(b, "golden-anon", NULL, NULL, &present);
    assert_int_equal(present, 1);
    expect_qos(anon, "plant/line1", "start", 1);
    sbt_mq_disconnect(anon);

    /* The migrated store is of the current version now: all of it again. */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_mark_log(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[P_JSONL]);
    check_filters(c, "mqtt/golden-alice", "sensors/+/temp|orders/#|alerts/#");
    bob_refused(b);
    alice = login(b, "golden-alice", "alice", "alice-secret", &present);
    assert_int_equal(present, 1);
    sbt_pub(c, "alerts/boiler", "overheat again", -1);
    expect_qos(alice, "alerts/boiler", "overheat again", 1); /* published at 1 */
    sbt_mq_disconnect(alice);
    {
        char *log = sbt_broker_log_since(b);
        assert_int_equal(sbt_count(log, "schema version"), 0);
        free(log);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void expect_msg(sbt_conn *c, const char *sub, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), sub);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

static void test_jsonl_and_routes(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c, *p;
    json_t *r, *rows;
    char list[256];

    start_on_golden(b);
    c = sbt_connect(b->port[P_JSONL]);
    p = sbt_connect(b->port[P_JSONL]);

    /* The jsonl client's own subscription: what waited, then what comes. */
    sbt_sub(c, "watch", NULL, 10);
    expect_msg(c, "watch", "sensors/boiler/temp", "81.5");
    sbt_pub(p, "sensors/pump/temp", "40.0", -1);
    expect_msg(c, "watch", "sensors/pump/temp", "40.0");

    /* The route queue with two filters: both still route to it. */
    r = sbt_call(c, "{s:s, s:s, s:i}", "op", "sub", "sub", "orders", "window", 10);
    sbt_expect_op(r, "subscribed");
    assert_string_equal(sbt_str(r, "filter"), "orders/#\ninvoices/+/paid");
    string_list(list, sizeof(list), r, "filters");
    assert_string_equal(list, "orders/#|invoices/+/paid");
    json_decref(r);
    expect_msg(c, "orders", "orders/eu", "order 1");
    expect_msg(c, "orders", "invoices/7/paid", "invoice 7 paid");
    sbt_pub(p, "invoices/8/paid", "invoice 8 paid", -1);
    expect_msg(c, "orders", "invoices/8/paid", "invoice 8 paid");
    /* the dedup key came across: order-id 1 again is dropped */
    r = sbt_call(p, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "orders/eu", "payload",
                 "order 1 again", "headers", "order-id", "1");
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 0);
    json_decref(r);

    assert_int_equal(sbt_queue_int(c, "to-plant:plant-out", "depth"), 1);
    check_filters(c, "audit", "audit/#");

    /* The dead letter, and the retained values for a new subscriber. */
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "audit");
    rows = json_object_get(r, "items");
    if (!json_is_array(rows) || json_array_size(rows) != 1)
        fail_msg("dlq.list: %s", json_dumps(r, 0));
    assert_string_equal(sbt_str(json_array_get(rows, 0), "topic"), "audit/login");
    assert_string_equal(sbt_str(json_array_get(rows, 0), "reason"),
                        "golden: cannot parse (after 1 attempts)");
    json_decref(r);
    sbt_sub(p, "late", "status/#", 10);
    expect_msg(p, "late", "status/boiler", "on");

    /* A jsonl subscription of several filters, new with this version. */
    r = sbt_call(c, "{s:s, s:s, s:[s,s], s:i}", "op", "sub", "sub", "multi", "filter", "m/a/#",
                 "m/b/#", "window", 10);
    sbt_expect_op(r, "subscribed");
    string_list(list, sizeof(list), r, "filters");
    assert_string_equal(list, "m/a/#|m/b/#");
    json_decref(r);
    sbt_pub(p, "m/a/1", "one", 1);
    sbt_pub(p, "m/b/2", "two", 1);
    expect_msg(c, "multi", "m/a/1", "one");
    expect_msg(c, "multi", "m/b/2", "two");
    sbt_expect_error(
        sbt_call(c, "{s:s, s:s, s:[s,i]}", "op", "sub", "sub", "bad", "filter", "m/#", 3),
        "SB_EINVAL");

    sbt_close(c);
    sbt_close(p);
    sbt_broker_stop(b);
    /* ... and the list survives a restart, in order */
    sbt_broker_start(b);
    c = sbt_connect(b->port[P_JSONL]);
    check_filters(c, "multi", "m/a/#|m/b/#");
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mqtt_sessions, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_and_routes, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("migrate", tests, NULL, NULL);
}
