/*
 * Route transforms with real processes on both sides (README "Transforms"):
 *  - a DDE-like producer writes CF_TEXT "23.5" (windows-1252 bytes, a raw
 *    line as a DDE item's value would come) on dde/PLC/Line1/Temp; an MQTT
 *    dashboard (mosquitto_sub) gets {"value":23.5,"ts":...} on
 *    plant/line1/temp, republished by the route;
 *  - JSON orders go to a legacy reader as fixed-width ANSI lines (a raw
 *    line sink, as a mailslot reader would get them) and unchanged to an
 *    audit sink; a when: keeps other kinds from the legacy reader only
 *    (acknowledged there and counted), text the code page lacks is
 *    dead-lettered with the reason, and a fixed transform plus `dlq
 *    redrive` delivers it (the stored message stayed as published).
 */
#include "mqtt_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOSQUITTO_SUB "SB_MOSQUITTO_SUB"

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: mqtt\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: mqtt\n"
                             "    anonymous: true\n"
                             "  - name: plc\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port2}\n"
                             "    framing: line\n"
                             "    topic: dde/PLC/Line1/Temp\n"
                             "  - name: legacy\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port3}\n"
                             "    framing: line\n"
                             "  - name: audit\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port4}\n"
                             "    framing: line\n"
                             "routes:\n"
                             "  - name: dde-to-mqtt\n"
                             "    from: dde/+/+/+\n"
                             "    transform:\n"
                             "      - decode: windows-1252\n"
                             "      - parse: number\n"
                             "      - json: { value: '{payload}', ts: '{ts}' }\n"
                             "      - topic: 'plant/{2|lower}/{3|lower}'\n"
                             "    republish: true\n"
                             "    retry: { max_attempts: 2, backoff: 10ms }\n"
                             "  - name: orders\n"
                             "    from: orders/#\n"
                             "    retry: { max_attempts: 3, backoff: 10ms }\n"
                             "    to:\n"
                             "      - audit\n"
                             "      - adapter: legacy\n"
                             "        transform:\n"
                             "          - when: { field: { /kind: order } }\n"
                             "          - format: '{/id|left:6}{/qty|zero:4}{/name|{v0}}'\n"
                             "          - encode: cp1252\n";

static sbt_conn *start(sbt_broker *b, const char *name, const char *width)
{
    sbt_broker_init(b, name, 5);
    sbt_broker_set(b, 0, width);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

static void wait_queue(sbt_conn *c, const char *name)
{
    int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
    for (;;) {
        json_t *q = sbt_queue_stats(c, name);
        json_decref(q);
        if (q != NULL)
            return;
        if (sbt_now_ms() > deadline)
            fail_msg("no queue %s", name);
        sbt_poll_pause(20);
    }
}

static void dde_to_mqtt(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc p = {0};
    sbt_argv a;
    sbt_tcp *plc;
    char out[SBT_PATH_MAX], *text, *end;
    const char *body;

    sbt_mq_need(MOSQUITTO_SUB, NULL);
    c = start(b, "transform-dde", "left:10");
    sbt_path(out, sizeof out, b->dir, "mosquitto_sub.out");
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_SUB));
    sbt_argv_add(&a, "-h");
    sbt_argv_add(&a, "127.0.0.1");
    sbt_argv_add(&a, "-p");
    sbt_argv_add(&a, "%d", b->port[1]);
    sbt_argv_add(&a, "-i");
    sbt_argv_add(&a, "dashboard");
    sbt_argv_add(&a, "-q");
    sbt_argv_add(&a, "1");
    sbt_argv_add(&a, "-t");
    sbt_argv_add(&a, "plant/#");
    sbt_argv_add(&a, "-v");
    sbt_argv_add(&a, "-C");
    sbt_argv_add(&a, "2");
    sbt_argv_add(&a, "-W");
    sbt_argv_add(&a, "20");
    assert_int_equal(sbt_spawn(&p, a.v, NULL, out), 0);
    sbt_argv_free(&a);
    wait_queue(c, "mqtt/dashboard");

    /* The PLC's CF_TEXT values: "23.5", then one with a Windows-1252
     * degree sign that is not a number (dead-lettered, not delivered). */
    plc = sbt_tcp_connect(b->port[2], 5000);
    assert_non_null(plc);
    assert_int_equal(sbt_tcp_write(plc, "23.5\n", 5), 0);
    assert_int_equal(sbt_tcp_write(plc,
                                   "23.5\xb0"
                                   "C\n",
                                   7),
                     0);
    assert_int_equal(sbt_tcp_write(plc, "-4\n", 3), 0);
    sbt_tcp_close(plc);
    if (!sbt_proc_wait(&p, 20000))
        fail_msg("mosquitto_sub did not get two messages");
    text = sbt_read_file(out, NULL);
    body = strstr(text, "plant/line1/temp {\"value\":23.5,\"ts\":");
    if (body == NULL)
        fail_msg("mosquitto_sub printed:\n%s", text);
    strtoll(body + strlen("plant/line1/temp {\"value\":23.5,\"ts\":"), &end, 10);
    assert_memory_equal(end, "}\nplant/line1/temp {\"value\":-4,\"ts\":", 36);
    free(text);
    sbt_proc_release(&p);

    /* The stored message is the one published; the reason names the step. */
    {
        json_t *r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "dde-to-mqtt:$republish");
        json_t *d = json_array_get(json_object_get(r, "items"), 0);
        sbt_expect_op(r, "dlq.list");
        assert_non_null(d);
        assert_string_equal(sbt_str(d, "topic"), "dde/PLC/Line1/Temp");
        assert_string_equal(sbt_str(d, "reason"), "transform: step 2 (parse): \"23.5\xc2\xb0"
                                                  "C\" is not a number");
        json_decref(r);
    }

    /* A producer cannot buy laps with a forged hop count: refused at once. */
    {
        json_t *r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "dde/PLC/L2/T",
                             "payload", "1", "headers", "republish-hops", "-2000000000");
        int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
        sbt_expect_op(r, "puback");
        json_decref(r);
        for (;;) {
            json_t *l = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "dde-to-mqtt:$republish");
            json_t *items = json_object_get(l, "items");
            json_t *d = json_array_get(items, json_array_size(items) - 1);
            if (d != NULL && strcmp(sbt_str(d, "topic"), "dde/PLC/L2/T") == 0) {
                assert_non_null(strstr(sbt_str(d, "reason"), "republished 8 times"));
                json_decref(l);
                break;
            }
            json_decref(l);
            if (sbt_now_ms() > deadline)
                fail_msg("the forged hop count was not dead-lettered");
            sbt_poll_pause(20);
        }
    }
    sbt_close(c);
    b->passed = 1;
}

static void expect_line(sbt_tcp *t, const char *want)
{
    char line[256];
    int n = sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS);
    if (n < 0 || strcmp(line, want) != 0)
        fail_msg("read \"%s\" (%d), want \"%s\"", n < 0 ? "" : line, n, want);
}

static void json_to_fixed_width(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "transform-orders", "left:8");
    sbt_tcp *legacy = sbt_tcp_connect(b->port[3], 5000), *audit = sbt_tcp_connect(b->port[4], 5000);
    const char *order = "{\"kind\":\"order\",\"id\":\"A1\",\"qty\":7,\"name\":\"M\xc3\xbcller\"}";
    const char *note = "{\"kind\":\"note\",\"id\":\"N1\"}";
    const char *chinese = "{\"kind\":\"order\",\"id\":\"C9\",\"qty\":1,\"name\":\"\xe4\xb8\xad\"}";
    const char *longer = "{\"kind\":\"order\",\"id\":\"L2\",\"qty\":12,\"name\":\"Lindenstrasse\"}";
    json_t *r, *items;

    assert_non_null(legacy);
    assert_non_null(audit);
    wait_queue(c, "orders:legacy");
    sbt_pub(c, "orders/new", order, 2);
    sbt_pub(c, "orders/new", note, 2);
    sbt_pub(c, "orders/new", chinese, 2);
    sbt_pub(c, "orders/new", longer, 2);
    /* The legacy reader gets windows-1252 (ü = 0xFC), fixed width. */
    expect_line(legacy, "A1    0007M\xfcller  ");
    /* The audit sink gets all of them as published. */
    expect_line(audit, order);
    expect_line(audit, note);
    expect_line(audit, chinese);
    expect_line(audit, longer);
    sbt_wait_queue_int(c, "orders:legacy", "filtered", 1, 5000);
    sbt_wait_queue_int(c, "orders:legacy", "dead", 2, 5000);
    sbt_wait_queue_int(c, "orders:legacy", "depth", 0, 5000);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "orders:legacy");
    items = json_object_get(r, "items");
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(sbt_str(json_array_get(items, 0), "reason"),
                        "transform: step 3 (encode): U+4E2D at byte 10 has no equivalent in code "
                        "page 1252");
    assert_string_equal(sbt_str(json_array_get(items, 1), "reason"),
                        "transform: step 2 (format): \"Lindenstrasse\" is longer than 8 "
                        "characters");
    assert_string_equal(sbt_str(json_array_get(items, 1), "payload"), longer);
    json_decref(r);
    sbt_close(c);
    sbt_tcp_close(legacy);

    /* A fixed transform (long names cut) and a redrive deliver what can
     * be: the stored messages stayed as published. */
    sbt_broker_stop(b);
    sbt_broker_set(b, 0, "cut:8|left:8");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    legacy = sbt_tcp_connect(b->port[3], 5000);
    assert_non_null(legacy);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.redrive", "sub", "orders:legacy");
    sbt_expect_op(r, "dlq.redrive");
    assert_int_equal(sbt_int(r, "count"), 2);
    json_decref(r);
    expect_line(legacy, "L2    0012Lindenst");
    sbt_wait_queue_int(c, "orders:legacy", "dead", 1, 5000);
    sbt_tcp_close(legacy);
    sbt_tcp_close(audit);
    sbt_close(c);
    b->passed = 1;
}

/* sbctl route test: the dry run through the admin protocol, nothing
 * published. */
static void route_test_dry_run(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "transform-dry-run", "left:8");
    const char *sbctl = getenv("SB_SBCTL");
    char ep[64], *out = NULL, *err = NULL;
    int rc;

    if (sbctl == NULL || *sbctl == '\0')
        fail_msg("SB_SBCTL is not set (ctest sets it)");
    snprintf(ep, sizeof ep, "tcp:127.0.0.1:%d", b->port[0]);
    {
        char *argv[] = {(char *)sbctl, "-e",          ep,        "route",
                        "test",        "dde-to-mqtt", "--topic", "dde/PLC/Line1/Temp",
                        "--payload",   "23.5",        NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc != 0 || strstr(out, "dde-to-mqtt:$republish: delivered\n"
                                   "  topic: plant/line1/temp\n"
                                   "  payload: {\"value\":23.5,\"ts\":") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    {
        char *argv[] = {(char *)sbctl,
                        "-e",
                        ep,
                        "route",
                        "test",
                        "orders",
                        "--topic",
                        "orders/new",
                        "--payload",
                        "{\"kind\":\"order\",\"id\":\"C9\",\"qty\":1,\"name\":\"\xe4\xb8\xad\"}",
                        NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc != 1 ||
            strstr(out, "orders:legacy: dead-letter\n  reason: transform: step 3 "
                        "(encode): U+4E2D at byte 10") == NULL ||
            strstr(out, "orders:audit: delivered\n") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    {
        char *argv[] = {(char *)sbctl, "-e",      ep,           "route",     "test",
                        "orders",      "--topic", "orders/new", "--payload", "{\"kind\":\"note\"}",
                        "-H",          "k=v",     NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc != 0 || strstr(out, "orders:legacy: filtered\n") == NULL ||
            strstr(out, "  header k: v\n") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    {
        char *argv[] = {(char *)sbctl, "-e", ep, "route", "test", "nope", "--topic", "x", NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc == 0 || strstr(err, "no route nope") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    /* a dry run publishes nothing */
    assert_int_equal(sbt_queue_int(c, "orders:audit", "published"), 0);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(dde_to_mqtt, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(json_to_fixed_width, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(route_test_dry_run, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
