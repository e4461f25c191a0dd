/*
 * MQTT 3.1.1 against a real broker with real clients: mosquitto_pub and
 * mosquitto_sub (Debian's mosquitto-clients) and mqtt_client (ours, over
 * libmosquitto), mixed with jsonl clients and a raw sink: the same messages
 * whatever the mechanism, QoS 0/1/2 both ways, persistent sessions that
 * survive a SIGKILL of the broker, clean sessions that go away, retained
 * messages and last wills. Protocol-level cases (malformed packets, keep
 * alive, QoS 2 exactly-once, client-id takeover) are in test_mqtt_proto.c.
 *
 * Each test skips (cmocka skip) when a client it runs is missing.
 */
#include "mqtt_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SIGKILL
#define SIGKILL 9
#endif

#define MQTT_CLIENT "SB_MQTT_CLIENT"
#define MOSQUITTO_PUB "SB_MOSQUITTO_PUB"
#define MOSQUITTO_SUB "SB_MOSQUITTO_SUB"

/* mqtt_client MODE --port P --id ID (more with sbt_argv_add). */
static void mc(sbt_argv *a, const char *mode, int port, const char *id)
{
    sbt_argv_init(a, sbt_mq_tool(MQTT_CLIENT));
    sbt_argv_add(a, "%s", mode);
    sbt_argv_add(a, "--port");
    sbt_argv_add(a, "%d", port);
    sbt_argv_add(a, "--id");
    sbt_argv_add(a, "%s", id);
}

/* mosquitto_pub / mosquitto_sub -h 127.0.0.1 -p P. */
static void mosq(sbt_argv *a, const char *env, int port)
{
    sbt_argv_init(a, sbt_mq_tool(env));
    sbt_argv_add(a, "-h");
    sbt_argv_add(a, "127.0.0.1");
    sbt_argv_add(a, "-p");
    sbt_argv_add(a, "%d", port);
}

/* Adds "flag value" pairs: args is NULL-terminated. */
static void add_args(sbt_argv *a, const char *const *args)
{
    for (; *args != NULL; args++)
        sbt_argv_add(a, "%s", *args);
}

/* Runs a, expects exit code want, returns stdout; frees a. */
static char *run(sbt_argv *a, int want)
{
    char *out = sbt_mq_run(a, want);
    sbt_argv_free(a);
    return out;
}

/* Asserts that out holds line exactly `count` times (line without '\n'). */
static void expect_lines(const char *out, const char *line, int count)
{
    char want[512];
    snprintf(want, sizeof(want), "%s\n", line);
    if (sbt_count(out, want) != count)
        fail_msg("expected the line \"%s\" %d time(s) in:\n%s", line, count, out);
}

/* mosquitto_pub -q qos -t topic -m payload (retain: -r; payload NULL: -n). */
static void mosquitto_pub(int port, int qos, const char *topic, const char *payload, int retain)
{
    sbt_argv a;
    mosq(&a, MOSQUITTO_PUB, port);
    sbt_argv_add(&a, "-q");
    sbt_argv_add(&a, "%d", qos);
    sbt_argv_add(&a, "-t");
    sbt_argv_add(&a, "%s", topic);
    if (payload != NULL) {
        sbt_argv_add(&a, "-m");
        sbt_argv_add(&a, "%s", payload);
    } else {
        sbt_argv_add(&a, "-n");
    }
    if (retain)
        sbt_argv_add(&a, "-r");
    free(run(&a, 0));
}

/* The next jsonl delivery of sub, asserted, then acknowledged. */
static void expect_msg(sbt_conn *c, const char *sub, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), sub);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

/* Polls stats until the queue exists (want 1) or is gone (want 0). */
static void wait_queue_exists(sbt_conn *c, const char *name, int want, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        json_t *q = sbt_queue_stats(c, name);
        int have = q != NULL;
        json_decref(q);
        if (have == want)
            return;
        if (sbt_now_ms() > deadline)
            fail_msg("queue %s %s after %d ms", name, want ? "does not exist" : "still exists",
                     timeout_ms);
        sbt_poll_pause(20);
    }
}

/* Jsonl and MQTT publishers and subscribers see each other's messages; MQTT
 * publishes reach raw sinks; the Unix socket listener speaks MQTT too; a
 * client that subscribes again to the filter it has (mosquitto_sub -c does)
 * keeps the messages queued for it (MQTT-3.8.4-3). */
static void test_interop_jsonl_mqtt_raw(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_tcp *sink;
    sbt_argv a;
    char *out, line[256], unix_path[SBT_PATH_MAX];
    json_t *q;
    int port;

    sbt_mq_need(MQTT_CLIENT, MOSQUITTO_PUB);
    sbt_mq_need(MOSQUITTO_SUB, NULL);
    c = sbt_mq_start(b, "mqtt-interop");
    port = b->port[SBT_MQ_PORT_MQTT];
    sbt_mq_unix_path(b, unix_path, sizeof(unix_path));
    sbt_sub(c, "j", "m/#", 10);

    /* A persistent MQTT session subscribed to a/+, offline. */
    mc(&a, "sub", port, "s-interop");
    add_args(&a, (const char *const[]){"--clean", "0", "--qos", "1", "--topic", "a/+", "--count",
                                       "0", NULL});
    out = run(&a, 0);
    expect_lines(out, "connack 0 0", 1);
    expect_lines(out, "suback 1", 1);
    free(out);
    q = sbt_queue_stats(c, "mqtt/s-interop");
    if (q == NULL)
        fail_msg("no broker subscription mqtt/s-interop for the MQTT session");
    assert_string_equal(sbt_str(q, "filter"), "a/+");
    assert_string_equal(sbt_str(q, "durability"), "fsync");
    json_decref(q);

    /* jsonl -> MQTT: queued for the offline session. */
    sbt_pub(c, "a/b", "from-jsonl", 1);
    sbt_pub(c, "x/y", "unrelated", 0);

    /* MQTT at QoS 0, 1, 2 -> jsonl. */
    for (int qos = 0; qos <= 2; qos++) {
        char topic[32], payload[32];
        snprintf(topic, sizeof(topic), "m/q%d", qos);
        snprintf(payload, sizeof(payload), "hello-q%d", qos);
        mosquitto_pub(port, qos, topic, payload, 0);
        expect_msg(c, "j", topic, payload);
    }

    /* MQTT over the Unix socket -> jsonl. */
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_PUB));
    add_args(&a, (const char *const[]){"--unix", unix_path, "-q", "1", "-t", "m/unix", "-m",
                                       "via-unix", NULL});
    free(run(&a, 0));
    expect_msg(c, "j", "m/unix", "via-unix");

    /* MQTT -> a raw sink (route to-out). */
    sink = sbt_tcp_connect(b->port[SBT_MQ_PORT_SINK], 5000);
    assert_non_null(sink);
    mosquitto_pub(port, 1, "sink/x", "to-raw", 0);
    assert_int_equal(sbt_tcp_read_line(sink, line, sizeof(line), SBT_REPLY_MS), 6);
    assert_string_equal(line, "to-raw");
    sbt_tcp_close(sink);

    /* The session gets what was queued, through mosquitto_sub which
     * subscribes again to the same filter. */
    mosq(&a, MOSQUITTO_SUB, port);
    add_args(&a, (const char *const[]){"-i", "s-interop", "-c", "-q", "1", "-t", "a/+", "-C", "1",
                                       "-W", "10", "-v", NULL});
    out = run(&a, 0);
    if (strcmp(out, "a/b from-jsonl\n") != 0)
        fail_msg("mosquitto_sub printed:\n%s", out);
    free(out);
    sbt_wait_queue_int(c, "mqtt/s-interop", "depth", 0, 5000);

    /* A session over the Unix socket, fed by jsonl. */
    sbt_argv_init(&a, sbt_mq_tool(MQTT_CLIENT));
    add_args(&a, (const char *const[]){"sub", "--unix", unix_path, "--id", "s-unix", "--clean", "0",
                                       "--qos", "2", "--topic", "u/#", "--count", "0", NULL});
    free(run(&a, 0));
    sbt_pub(c, "u/1", "to-unix", 1);
    sbt_argv_init(&a, sbt_mq_tool(MQTT_CLIENT));
    add_args(&a, (const char *const[]){"sub", "--unix", unix_path, "--id", "s-unix", "--clean", "0",
                                       "--session-present", "1", "--count", "1", NULL});
    out = run(&a, 0);
    if (sbt_count(out, "msg u/1 ") != 1 || sbt_count(out, " 0 to-unix\n") != 1)
        fail_msg("mqtt_client over the Unix socket printed:\n%s", out);
    free(out);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Three online subscribers at QoS 0, 1, 2 and publishers at QoS 0, 1, 2:
 * each message arrives once, at min(publish QoS, granted QoS)
 * (MQTT-3.8.4-6); libmosquitto runs the QoS 1 and 2 flows both ways. */
static void test_qos_levels_both_directions(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc subs[3];
    char files[3][SBT_PATH_MAX];
    int port;

    sbt_mq_need(MQTT_CLIENT, NULL);
    c = sbt_mq_start(b, "mqtt-qos");
    port = b->port[SBT_MQ_PORT_MQTT];
    memset(subs, 0, sizeof(subs));
    for (int s = 0; s < 3; s++) {
        sbt_argv a;
        char id[16], name[32];
        snprintf(id, sizeof(id), "qs%d", s);
        snprintf(name, sizeof(name), "sub%d.out", s);
        sbt_path(files[s], sizeof(files[s]), b->dir, name);
        mc(&a, "sub", port, id);
        sbt_argv_add(&a, "--qos");
        sbt_argv_add(&a, "%d", s);
        add_args(&a, (const char *const[]){"--topic", "qos/#", "--count", "4", "--timeout-ms",
                                           "20000", NULL});
        assert_int_equal(sbt_spawn(&subs[s], a.v, NULL, files[s]), 0);
        sbt_argv_free(&a);
    }
    for (int s = 0; s < 3; s++)
        sbt_wait_file_text(files[s], "suback", 1, SBT_REPLY_MS);

    for (int p = 0; p < 3; p++) {
        sbt_argv a;
        char topic[16], payload[16], *out;
        snprintf(topic, sizeof(topic), "qos/p%d", p);
        snprintf(payload, sizeof(payload), "v%d", p);
        mc(&a, "pub", port, "qos-pub");
        sbt_argv_add(&a, "--qos");
        sbt_argv_add(&a, "%d", p);
        add_args(&a, (const char *const[]){"--topic", topic, "--payload", payload, NULL});
        out = run(&a, 0);
        expect_lines(out, "acked 1", 1);
        free(out);
    }
    /* And one from jsonl, which has no QoS: delivered at most at the
     * granted QoS. */
    sbt_pub(c, "qos/j", "vj", 3);

    for (int s = 0; s < 3; s++) {
        char *out, line[64];
        const char *j;
        if (!sbt_proc_wait(&subs[s], 20000))
            fail_msg("subscriber qs%d did not get its 4 messages", s);
        out = sbt_read_file(files[s], NULL);
        assert_non_null(out);
        if (subs[s].exit_status != 0)
            fail_msg("subscriber qs%d exited with %d:\n%s", s, (int)subs[s].exit_status, out);
        for (int p = 0; p < 3; p++) {
            snprintf(line, sizeof(line), "msg qos/p%d %d 0 v%d", p, p < s ? p : s, p);
            expect_lines(out, line, 1);
        }
        j = strstr(out, "msg qos/j ");
        if (j == NULL || j[10] < '0' || j[10] > '0' + s || strncmp(j + 11, " 0 vj\n", 6) != 0)
            fail_msg("subscriber qs%d (QoS %d) got the jsonl message wrong:\n%s", s, s, out);
        free(out);
        sbt_proc_release(&subs[s]);
    }
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

#define DURABLE_N 50

/* A clean-session-0 subscriber goes away; a producer publishes N QoS 1
 * messages, all PUBACKed; the broker is SIGKILLed and restarted; the
 * subscriber comes back with CONNACK session-present 1 and, without
 * subscribing again, receives all N in order. Then a clean-session-1
 * connection with the same id discards the session (MQTT-3.1.2-6), and a
 * clean session's subscription is deleted when it disconnects. */
static void persistent_session(sbt_broker *b, int paging)
{
    sbt_conn *c;
    sbt_argv a;
    char *out, line[64], *p;
    int port;
    sbt_mq *e;

    sbt_mq_need(MQTT_CLIENT, NULL);
    if (paging) /* the session's backlog is read back from the store */
        sbt_broker_set(b, 1, "  store: { queue_window: 8 }\n");
    c = sbt_mq_start(b, paging ? "mqtt-durable-paging" : "mqtt-durable");
    port = b->port[SBT_MQ_PORT_MQTT];

    mc(&a, "sub", port, "durable");
    add_args(&a, (const char *const[]){"--clean", "0", "--qos", "1", "--topic", "dur/#", "--count",
                                       "0", NULL});
    free(run(&a, 0));

    mc(&a, "pub", port, "producer");
    sbt_argv_add(&a, "--count");
    sbt_argv_add(&a, "%d", DURABLE_N);
    add_args(&a, (const char *const[]){"--qos", "1", "--topic", "dur/x", "--payload", "m%d", NULL});
    out = run(&a, 0);
    snprintf(line, sizeof(line), "acked %d", DURABLE_N);
    expect_lines(out, line, 1);
    free(out);

    if (paging) {
        /* past the window, the rest stays in the store only */
        assert_int_equal(sbt_queue_int(c, "mqtt/durable", "resident_depth"), 8);
        assert_int_equal(sbt_queue_int(c, "mqtt/durable", "stored_depth"), DURABLE_N - 8);
    }
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[SBT_MQ_PORT_JSONL]);
    assert_int_equal(sbt_queue_int(c, "mqtt/durable", "depth"), DURABLE_N);

    mc(&a, "sub", port, "durable");
    sbt_argv_add(&a, "--count");
    sbt_argv_add(&a, "%d", DURABLE_N);
    add_args(&a, (const char *const[]){"--clean", "0", "--session-present", "1", NULL});
    out = run(&a, 0);
    /* All N, in order, once. */
    p = out;
    for (int i = 0; i < DURABLE_N; i++) {
        snprintf(line, sizeof(line), "msg dur/x 1 0 m%d\n", i);
        p = strstr(p, line);
        if (p == NULL)
            fail_msg("message m%d missing or out of order:\n%s", i, out);
    }
    assert_int_equal(sbt_count(out, "msg "), DURABLE_N);
    free(out);
    sbt_wait_queue_int(c, "mqtt/durable", "depth", 0, 5000);

    /* Clean session 1 with the same id: no session, and none kept after. */
    mc(&a, "sub", port, "durable");
    add_args(&a,
             (const char *const[]){"--clean", "1", "--session-present", "0", "--count", "0", NULL});
    free(run(&a, 0));
    wait_queue_exists(c, "mqtt/durable", 0, 5000);

    /* A clean session's subscription lives as long as its connection. */
    e = sbt_mq_simple(port, "ephemeral", 1);
    sbt_mq_sub1(e, 1, "eph/#", 1);
    wait_queue_exists(c, "mqtt/ephemeral", 1, 5000);
    sbt_mq_disconnect(e);
    wait_queue_exists(c, "mqtt/ephemeral", 0, 5000);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

static void test_persistent_session_survives_kill(void **state)
{
    persistent_session(*state, 0);
}

/* The same with a queue window of 8: the session's backlog is mostly in
 * the store, and read back in order as the client takes it. */
static void test_persistent_session_pages(void **state)
{
    persistent_session(*state, 1);
}

/* Retained messages: a late subscriber gets the last one with RETAIN 1
 * (MQTT-3.3.1-8), an established subscription gets new ones with RETAIN 0
 * (MQTT-3.3.1-9), an empty retained payload clears the value (and is
 * forwarded as usual), retained values set over jsonl are seen by MQTT, and
 * all of it survives a SIGKILL of the broker. */
static void test_retained_messages(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_argv a;
    sbt_mq *r;
    sb_mqtt_packet p;
    char *out;
    int port, seen_b = 0, seen_j = 0;
    json_t *reply;

    sbt_mq_need(MQTT_CLIENT, MOSQUITTO_PUB);
    c = sbt_mq_start(b, "mqtt-retain");
    port = b->port[SBT_MQ_PORT_MQTT];

    mosquitto_pub(port, 1, "ret/a", "first", 1);
    mosquitto_pub(port, 1, "ret/a", "second", 1);
    mc(&a, "sub", port, "late");
    add_args(&a, (const char *const[]){"--qos", "1", "--topic", "ret/#", "--count", "1", NULL});
    out = run(&a, 0);
    expect_lines(out, "msg ret/a 1 1 second", 1);
    free(out);

    r = sbt_mq_simple(port, "r-live", 1);
    sbt_mq_sub1(r, 1, "ret/#", 1);
    sbt_mq_ack(r, SB_MQTT_PUBACK, sbt_mq_expect_publish(r, "ret/a", "second", 1, 1, 0));
    /* Live: RETAIN 0 on an established subscription. */
    mosquitto_pub(port, 1, "ret/b", "live", 1);
    sbt_mq_ack(r, SB_MQTT_PUBACK, sbt_mq_expect_publish(r, "ret/b", "live", 1, 0, 0));
    /* Clearing: forwarded with its empty payload. */
    mosquitto_pub(port, 1, "ret/a", NULL, 1);
    sbt_mq_ack(r, SB_MQTT_PUBACK, sbt_mq_expect_publish(r, "ret/a", "", 1, 0, 0));
    sbt_mq_disconnect(r);
    /* A retained value set over jsonl. */
    reply = sbt_call(c, "{s:s, s:s, s:s, s:b}", "op", "pub", "topic", "ret/j", "payload", "jv",
                     "retain", 1);
    sbt_expect_op(reply, "puback");
    json_decref(reply);

    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);

    /* ret/b and ret/j (in either order), not the cleared ret/a: the next
     * message is the subscriber's own marker. */
    r = sbt_mq_simple(port, "r-after", 1);
    sbt_mq_sub1(r, 1, "ret/#", 1);
    for (int i = 0; i < 2; i++) {
        sbt_mq_expect(r, &p, SB_MQTT_PUBLISH, 0);
        if (sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, "ret/b") &&
            sbt_mq_eq(p.publish.payload.p, p.publish.payload.n, "live")) {
            seen_b++;
        } else if (sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, "ret/j") &&
                   sbt_mq_eq(p.publish.payload.p, p.publish.payload.n, "jv")) {
            seen_j++;
        } else {
            fail_msg("unexpected retained message %.*s \"%.*s\"", (int)p.publish.topic.n,
                     p.publish.topic.p, (int)p.publish.payload.n,
                     (const char *)p.publish.payload.p);
        }
        assert_int_equal(p.publish.retain, 1);
        if (p.publish.qos > 0)
            sbt_mq_ack(r, SB_MQTT_PUBACK, p.packet_id);
    }
    assert_int_equal(seen_b, 1);
    assert_int_equal(seen_j, 1);
    sbt_mq_publish(r, "ret/marker", "m", 0, 0, 0, 0);
    sbt_mq_expect_publish(r, "ret/marker", "m", 0, 0, 0);
    sbt_mq_disconnect(r);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Spawns mosquitto_sub with a will, subscribed to ready/ID; returns once it
 * printed a message published there (so it is connected). */
static void spawn_mosquitto_sub_with_will(sbt_broker *b, sbt_conn *c, sbt_proc *p, const char *id,
                                          const char *file)
{
    sbt_argv a;
    char topic[64], will_topic[64], will_payload[64], want[80];
    int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
    snprintf(topic, sizeof(topic), "ready/%s", id);
    snprintf(will_topic, sizeof(will_topic), "gone/%s", id);
    snprintf(will_payload, sizeof(will_payload), "bye-%s", id);
    snprintf(want, sizeof(want), "%s r\n", topic);
    mosq(&a, MOSQUITTO_SUB, b->port[SBT_MQ_PORT_MQTT]);
    add_args(&a, (const char *const[]){"-i", id, "-q", "1", "-t", topic, "-v", "--will-topic",
                                       will_topic, "--will-payload", will_payload, "--will-qos",
                                       "1", NULL});
    assert_int_equal(sbt_spawn(p, a.v, NULL, file), 0);
    sbt_argv_free(&a);
    for (;;) {
        char *text = sbt_read_file(file, NULL);
        int ok = sbt_count(text, want) > 0;
        free(text);
        if (ok)
            return;
        if (sbt_now_ms() > deadline || !p->running)
            fail_msg("mosquitto_sub %s did not receive %s", id, topic);
        sbt_pub(c, topic, "r", -1);
        sbt_poll_pause(50);
    }
}

/* Last wills: published when the client process is killed (mqtt_client,
 * mosquitto_sub) or its socket is closed without DISCONNECT, with the will
 * retain flag honoured; not published after a DISCONNECT (MQTT-3.14.4-3). */
static void test_last_will(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc p;
    sbt_argv a;
    sbt_mq *m, *s;
    sbt_mq_opts o;
    char file[SBT_PATH_MAX];
    int port;

    sbt_mq_need(MQTT_CLIENT, MOSQUITTO_SUB);
    c = sbt_mq_start(b, "mqtt-will");
    port = b->port[SBT_MQ_PORT_MQTT];
    sbt_sub(c, "wills", "gone/#", 10);
    memset(&p, 0, sizeof(p));

    /* mqtt_client killed. */
    sbt_path(file, sizeof(file), b->dir, "w1.out");
    mc(&a, "sub", port, "w1");
    add_args(&a, (const char *const[]){"--qos", "1", "--topic", "ready/w1", "--count", "-1",
                                       "--timeout-ms", "30000", "--will-topic", "gone/w1",
                                       "--will-payload", "bye-w1", "--will-qos", "1", NULL});
    assert_int_equal(sbt_spawn(&p, a.v, NULL, file), 0);
    sbt_argv_free(&a);
    sbt_wait_file_text(file, "suback", 1, SBT_REPLY_MS);
    sbt_proc_signal(&p, SIGKILL);
    assert_true(sbt_proc_wait(&p, 5000));
    expect_msg(c, "wills", "gone/w1", "bye-w1");
    sbt_proc_release(&p);

    /* mosquitto_sub killed. */
    sbt_path(file, sizeof(file), b->dir, "w2.out");
    spawn_mosquitto_sub_with_will(b, c, &p, "w2", file);
    sbt_proc_signal(&p, SIGKILL);
    assert_true(sbt_proc_wait(&p, 5000));
    expect_msg(c, "wills", "gone/w2", "bye-w2");
    sbt_proc_release(&p);

    /* A raw socket closed without DISCONNECT; a retained will. */
    memset(&o, 0, sizeof(o));
    o.id = "w3";
    o.clean = 1;
    o.will_topic = "gone/w3";
    o.will_payload = "bye-w3";
    o.will_qos = 1;
    o.will_retain = 1;
    m = sbt_mq_client(port, &o, NULL);
    sbt_mq_close(m);
    expect_msg(c, "wills", "gone/w3", "bye-w3");
    s = sbt_mq_simple(port, "w3-reader", 1);
    sbt_mq_sub1(s, 1, "gone/w3", 0);
    sbt_mq_expect_publish(s, "gone/w3", "bye-w3", 0, 1, 0);
    sbt_mq_disconnect(s);

    /* DISCONNECT first: no will; the next message is the marker. */
    o.id = "w4";
    o.will_topic = "gone/w4";
    o.will_payload = "bye-w4";
    o.will_retain = 0;
    m = sbt_mq_client(port, &o, NULL);
    sbt_mq_disconnect(m);
    sbt_pub(c, "gone/marker", "after-w4", 1);
    expect_msg(c, "wills", "gone/marker", "after-w4");
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_interop_jsonl_mqtt_raw, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_qos_levels_both_directions, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_persistent_session_pages, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_persistent_session_survives_kill, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_retained_messages, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_last_will, sbt_setup, sbt_teardown),
    };
    /* Every test here runs mqtt_client: without it, the whole program is
     * skipped (ctest lists it so). */
    if (sbt_mq_tool(MQTT_CLIENT) == NULL) {
        fprintf(stderr, "skipped: %s is not set (libmosquitto missing)\n", MQTT_CLIENT);
        return SBT_EXIT_SKIPPED;
    }
    sbt_apply_filter();
    return cmocka_run_group_tests_name("mqtt", tests, NULL, NULL);
}
