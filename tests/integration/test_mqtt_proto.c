/*
 * MQTT 3.1.1 at the packet level, with a raw client built on the broker's
 * codec (mqtt_util.h): refused CONNECTs and their CONNACK codes, the golden
 * malformed packets of tests/data/mqtt and max_message (each closes only its
 * connection), keep-alive, client-id takeover, `$` topics and overlapping
 * subscriptions, QoS 2 exactly-once for a PUBLISH sent again (on the same
 * connection, after a reconnect, after a SIGKILL of the broker) and the
 * outbound QoS 1/2 flows with their re-sends after a reconnect, no QoS 2
 * state left by a message the store refused after delivering it, max_queued
 * and session_expiry. Each case
 * names the conformance statement it checks (MQTT-x.y.z-n).
 */
#include "mqtt_util.h"

#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Asserts the broker closes m without sending anything; frees m. */
static void expect_closed_silently(sbt_mq *m, const char *what)
{
    sb_mqtt_packet p;
    int rc = sbt_mq_next(m, &p, SBT_REPLY_MS);
    if (rc == 0)
        fail_msg("%s: the broker sent %s instead of closing the connection", what,
                 sb_mqtt_type_name(p.type));
    if (rc == -1)
        fail_msg("%s: the broker did not close the connection within %d ms", what, SBT_REPLY_MS);
    sbt_mq_close(m);
}

/* Asserts a CONNACK refusing with code (session present 0, MQTT-3.2.2-4),
 * then the close; frees m. */
static void expect_refused(sbt_mq *m, int code, const char *what)
{
    sb_mqtt_packet p;
    sbt_mq_expect(m, &p, SB_MQTT_CONNACK, 0);
    if (p.connack.return_code != code || p.connack.session_present != 0)
        fail_msg("%s: CONNACK session present %d code %d, want 0 and %d", what,
                 p.connack.session_present, p.connack.return_code, code);
    expect_closed_silently(m, what);
}

static void send_connect(sbt_mq *m, const char *name, int level, const char *id, int clean)
{
    sb_mqtt_connect c;
    uint8_t buf[256];
    size_t len;
    memset(&c, 0, sizeof(c));
    c.protocol_name.p = name;
    c.protocol_name.n = strlen(name);
    c.protocol_level = (uint8_t)level;
    c.clean_session = (uint8_t)clean;
    c.keep_alive = 60;
    c.client_id.p = id;
    c.client_id.n = strlen(id);
    assert_int_equal(sb_mqtt_encode_connect(buf, sizeof(buf), &len, &c), 0);
    assert_int_equal(sbt_mq_write(m, buf, len), 0);
}

/* The broker still serves: a jsonl ping and an MQTT round trip. */
static void expect_still_serving(sbt_broker *b, sbt_conn *c, const char *id)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "ping");
    sbt_mq *m;
    sbt_expect_op(r, "pong");
    json_decref(r);
    m = sbt_mq_simple(b->port[SBT_MQ_PORT_MQTT], id, 1);
    sbt_mq_sub1(m, 1, "alive/#", 1);
    sbt_mq_publish(m, "alive/x", id, 1, 0, 0, 7);
    /* The PUBACK and the delivery may come in either order. */
    sbt_mq_await(m, &(sb_mqtt_packet){0}, SB_MQTT_PUBACK, 7);
    sbt_mq_ack(m, SB_MQTT_PUBACK, sbt_mq_expect_publish(m, "alive/x", id, 1, 0, 0));
    sbt_mq_disconnect(m);
}

/* Unsupported protocol levels get CONNACK 0x01 (MQTT-3.1.2-2), an empty
 * client id with clean session 0 gets 0x02 (MQTT-3.1.3-8), each followed
 * by the close; a first packet other than CONNECT (MQTT-3.1.0-1) and a
 * second CONNECT (MQTT-3.1.0-2) close the connection. */
static void test_connect_refusals(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-connect");
    int port = b->port[SBT_MQ_PORT_MQTT];
    sbt_mq *m;
    uint8_t ping[2] = {0xc0, 0x00};

    m = sbt_mq_open(port);
    send_connect(m, "MQTT", 5, "level5", 1);
    expect_refused(m, SB_MQTT_CONNACK_BAD_PROTOCOL, "MQTT level 5");

    m = sbt_mq_open(port);
    send_connect(m, "MQIsdp", 3, "mqtt31", 1);
    expect_refused(m, SB_MQTT_CONNACK_BAD_PROTOCOL, "MQIsdp level 3");

    m = sbt_mq_open(port);
    send_connect(m, "MQTT", 4, "", 0);
    expect_refused(m, SB_MQTT_CONNACK_ID_REJECTED, "empty client id, clean session 0");

    m = sbt_mq_open(port);
    sbt_mq_publish(m, "a/b", "early", 0, 0, 0, 0);
    expect_closed_silently(m, "PUBLISH before CONNECT");

    m = sbt_mq_open(port);
    assert_int_equal(sbt_mq_write(m, ping, sizeof(ping)), 0);
    expect_closed_silently(m, "PINGREQ before CONNECT");

    m = sbt_mq_simple(port, "twice", 1);
    send_connect(m, "MQTT", 4, "twice", 1);
    expect_closed_silently(m, "a second CONNECT");

    expect_still_serving(b, c, "after-refusals");
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* The reason README gives for file (NULL if none). */
static char *golden_reason(const char *readme, const char *file)
{
    const char *p = readme;
    size_t n = strlen(file);
    while ((p = strstr(p, file)) != NULL) {
        const char *line_start = p;
        if ((p == readme || p[-1] == '\n') && p[n] == ' ') {
            const char *q = p + n, *end;
            while (*q == ' ')
                q++;
            while (*q != ' ' && *q != '\0') /* the error code */
                q++;
            while (*q == ' ')
                q++;
            end = strchr(q, '\n');
            if (end == NULL)
                end = q + strlen(q);
            {
                char *r = malloc((size_t)(end - q) + 1);
                assert_non_null(r);
                memcpy(r, q, (size_t)(end - q));
                r[end - q] = '\0';
                return r;
            }
        }
        p = line_start + n;
    }
    return NULL;
}

static int has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Every golden malformed packet (tests/data/mqtt/README) closes its own
 * connection, with the decoder's reason in the log: CONNECT variants as the
 * first packet, the others after a valid CONNECT; unsupported protocol
 * levels get CONNACK 0x01 first. A PUBLISH over max_message closes the
 * connection with a logged reason. Other clients are served throughout. */
static void test_malformed_packets(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-malformed");
    int port = b->port[SBT_MQ_PORT_MQTT], small = b->port[SBT_MQ_PORT_SMALL], nfiles = 0;
    char dir[SBT_PATH_MAX], path[SBT_PATH_MAX], *readme, *big;
    sbt_mq *m, *bystander;
    uv_fs_t req;
    uv_dirent_t ent;

    sbt_path(dir, sizeof(dir), sbt_test_data(), "mqtt");
    sbt_path(path, sizeof(path), dir, "README");
    readme = sbt_read_file(path, NULL);
    assert_non_null(readme);
    /* A client connected throughout, unaffected. */
    bystander = sbt_mq_simple(port, "bystander", 1);
    sbt_mq_sub1(bystander, 1, "by/#", 0);

    assert_true(uv_fs_scandir(NULL, &req, dir, 0, NULL) >= 0);
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        size_t len, nl = strlen(ent.name);
        char *bytes, *reason, id[32];
        if (nl < 5 || strcmp(ent.name + nl - 4, ".bin") != 0)
            continue;
        /* Its limit is the codec's unit test's max_packet; max_message is
         * tested below. */
        if (strcmp(ent.name, "over-max-packet.bin") == 0)
            continue;
        reason = golden_reason(readme, ent.name);
        if (reason == NULL)
            fail_msg("%s is not described in tests/data/mqtt/README", ent.name);
        sbt_path(path, sizeof(path), dir, ent.name);
        bytes = sbt_read_file(path, &len);
        assert_non_null(bytes);
        sbt_broker_mark_log(b);
        if (has_prefix(ent.name, "connect-")) {
            m = sbt_mq_open(port);
            assert_int_equal(sbt_mq_write(m, bytes, len), 0);
            if (strcmp(ent.name, "connect-level-5.bin") == 0 ||
                strcmp(ent.name, "connect-mqisdp.bin") == 0) {
                expect_refused(m, SB_MQTT_CONNACK_BAD_PROTOCOL, ent.name);
                /* Refused, not malformed: the log has the broker's words. */
                free(reason);
                reason = sbt_strdup("connection refused (CONNACK 1)");
            } else {
                expect_closed_silently(m, ent.name);
            }
        } else {
            snprintf(id, sizeof(id), "bad%d", nfiles);
            m = sbt_mq_simple(port, id, 1);
            assert_int_equal(sbt_mq_write(m, bytes, len), 0);
            expect_closed_silently(m, ent.name);
        }
        sbt_broker_wait_log(b, reason, 1, 5000);
        free(bytes);
        free(reason);
        nfiles++;
    }
    uv_fs_req_cleanup(&req);
    assert_true(nfiles >= 40);
    free(readme);

    /* max_message (1 KiB on mqtt-small): a fixed header announcing far more
     * (1 MiB) is refused at once, without waiting for the body; a 4 KiB
     * payload is refused, logged; 900 bytes pass. */
    sbt_broker_mark_log(b);
    m = sbt_mq_simple(small, "big-header", 1);
    {
        static const uint8_t hdr[] = {0x30, 0x80, 0x80, 0x40}; /* PUBLISH, 1 MiB follows */
        assert_int_equal(sbt_mq_write(m, hdr, sizeof(hdr)), 0);
    }
    expect_closed_silently(m, "a PUBLISH header announcing 1 MiB on max_message 1 KiB");
    sbt_broker_wait_log(b, "[mqtt-small]", 1, 5000);
    sbt_broker_mark_log(b);
    big = malloc(4097);
    assert_non_null(big);
    memset(big, 'x', 4096);
    big[4096] = '\0';
    m = sbt_mq_simple(small, "big-payload", 1);
    sbt_mq_publish(m, "by/big", big, 1, 0, 0, 1);
    expect_closed_silently(m, "a 4 KiB PUBLISH on max_message 1 KiB");
    sbt_broker_wait_log(b, "[mqtt-small]", 1, 5000);
    {
        char *log = sbt_broker_log_since(b);
        if (strstr(log, "max_message") == NULL && strstr(log, "exceeds") == NULL)
            fail_msg("the refusal of a PUBLISH over max_message gives no reason:\n%s", log);
        free(log);
    }
    big[900] = '\0';
    m = sbt_mq_simple(small, "fits", 1);
    sbt_mq_publish(m, "by/fits", big, 1, 0, 0, 2);
    sbt_mq_expect(m, &(sb_mqtt_packet){0}, SB_MQTT_PUBACK, 2);
    sbt_mq_disconnect(m);
    free(big);

    /* The bystander saw nothing but the message that fitted. */
    sbt_mq_ping(bystander);
    {
        sb_mqtt_packet p;
        sbt_mq_expect(bystander, &p, SB_MQTT_PUBLISH, 0);
        assert_true(sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, "by/fits"));
        assert_int_equal(p.publish.payload.n, 900);
    }
    sbt_mq_disconnect(bystander);
    expect_still_serving(b, c, "after-malformed");
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* A client silent past 1.5 x its keep-alive is disconnected (MQTT-3.1.2-24)
 * and its will published; one that sends PINGREQ stays connected. */
static void test_keepalive(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-keepalive");
    int port = b->port[SBT_MQ_PORT_MQTT], closed = 0;
    sbt_mq_opts o;
    sbt_mq *silent, *alive;
    int64_t t0, elapsed;
    json_t *msg;

    sbt_sub(c, "wills", "gone/#", 10);
    memset(&o, 0, sizeof(o));
    o.id = "alive";
    o.clean = 1;
    o.keepalive = 1;
    alive = sbt_mq_client(port, &o, NULL);
    o.id = "silent";
    o.will_topic = "gone/silent";
    o.will_payload = "timed out";
    o.will_qos = 1;
    silent = sbt_mq_client(port, &o, NULL);
    t0 = sbt_now_ms();
    while (!closed && sbt_now_ms() - t0 < 8000) {
        closed = sbt_mq_wait_closed(silent, 250);
        sbt_mq_ping(alive);
    }
    elapsed = sbt_now_ms() - t0;
    if (!closed)
        fail_msg("a client silent for %lld ms with keep-alive 1 s is still connected",
                 (long long)elapsed);
    /* 1.5 s nominally; only a gross early close is an error here. */
    if (elapsed < 1000)
        fail_msg("a client with keep-alive 1 s was disconnected after %lld ms", (long long)elapsed);
    sbt_mq_close(silent);
    msg = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(msg, "topic"), "gone/silent");
    assert_string_equal(sbt_str(msg, "payload"), "timed out");
    json_decref(msg);
    sbt_mq_ping(alive);
    sbt_mq_disconnect(alive);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* A second connection with a client id in use closes the first
 * (MQTT-3.1.4-2); with clean session 0 it takes over the session. */
static void test_client_id_takeover(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-takeover");
    int port = b->port[SBT_MQ_PORT_MQTT], sp = -1;
    sbt_mq_opts o;
    sbt_mq *first, *second;

    first = sbt_mq_simple(port, "twin", 1);
    second = sbt_mq_simple(port, "twin", 1);
    if (!sbt_mq_wait_closed(first, SBT_REPLY_MS))
        fail_msg("the first connection of client id \"twin\" was not closed");
    sbt_mq_close(first);
    sbt_mq_ping(second);
    sbt_mq_disconnect(second);

    first = sbt_mq_simple(port, "twin0", 0);
    sbt_mq_sub1(first, 1, "tw0/#", 1);
    memset(&o, 0, sizeof(o));
    o.id = "twin0";
    o.clean = 0;
    second = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    if (!sbt_mq_wait_closed(first, SBT_REPLY_MS))
        fail_msg("the first connection of client id \"twin0\" was not closed");
    sbt_mq_close(first);
    sbt_pub(c, "tw0/x", "to-the-second", 1);
    sbt_mq_ack(second, SB_MQTT_PUBACK,
               sbt_mq_expect_publish(second, "tw0/x", "to-the-second", -1, 0, 0));
    sbt_mq_disconnect(second);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* `#` and `+/x` do not match topics starting with `$` (MQTT-4.7.2-1), a
 * filter naming `$SYS` does (the broker's own $SYS values, retained); two
 * overlapping subscriptions of one client deliver one copy at the higher
 * granted QoS (MQTT-3.3.5-1). */
static void test_dollar_topics_and_overlap(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-dollar");
    int port = b->port[SBT_MQ_PORT_MQTT];
    static const char *const filters[] = {"#", "+/x"};
    static const int qos[] = {0, 1};
    sbt_mq *s, *p, *sys;
    sb_mqtt_packet pk;

    s = sbt_mq_simple(port, "watcher", 1);
    sbt_mq_subscribe(s, 1, filters, qos, 2, NULL);
    p = sbt_mq_simple(port, "publisher", 1);
    sbt_pub(c, "$app/x", "hidden", 0);
    sbt_pub(c, "$SYS/x", "hidden", 0);
    sbt_mq_publish(p, "o/x", "both", 1, 0, 0, 1);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBACK, 1);
    sbt_mq_publish(p, "o/y", "hash-only", 1, 0, 0, 2);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBACK, 2);
    /* Exactly o/x once at QoS 1, then o/y at QoS min(1, 0). */
    sbt_mq_ack(s, SB_MQTT_PUBACK, sbt_mq_expect_publish(s, "o/x", "both", 1, 0, 0));
    sbt_mq_expect_publish(s, "o/y", "hash-only", 0, 0, 0);

    sys = sbt_mq_simple(port, "sys-watcher", 1);
    sbt_mq_sub1(sys, 1, "$SYS/broker/#", 0);
    sbt_mq_expect(sys, &pk, SB_MQTT_PUBLISH, 0);
    if (pk.publish.topic.n < 12 || memcmp(pk.publish.topic.p, "$SYS/broker/", 12) != 0)
        fail_msg("$SYS/broker/# got %.*s", (int)pk.publish.topic.n, pk.publish.topic.p);
    sbt_mq_sub1(sys, 2, "$app/#", 1);
    sbt_pub(c, "$app/y", "seen", 1);
    for (;;) {
        /* $SYS values keep coming; skip them. */
        sbt_mq_expect(sys, &pk, SB_MQTT_PUBLISH, 0);
        if (sbt_mq_eq(pk.publish.topic.p, pk.publish.topic.n, "$app/y"))
            break;
        assert_true(pk.publish.topic.n > 5 && memcmp(pk.publish.topic.p, "$SYS/", 5) == 0);
    }
    assert_true(sbt_mq_eq(pk.publish.payload.p, pk.publish.payload.n, "seen"));

    /* Still nothing with `$` for the watcher: the next is a marker. */
    sbt_mq_publish(p, "o/marker", "m", 0, 0, 0, 0);
    sbt_mq_expect_publish(s, "o/marker", "m", 0, 0, 0);

    /* UNSUBSCRIBE "#" (UNSUBACK with its id): o/y no longer matches, o/x
     * still does (+/x). */
    {
        sb_mqtt_filter f = {{"#", 1}, 0};
        uint8_t buf[64];
        size_t len;
        assert_int_equal(sb_mqtt_encode_unsubscribe(buf, sizeof(buf), &len, 5, &f, 1), 0);
        assert_int_equal(sbt_mq_write(s, buf, len), 0);
        sbt_mq_expect(s, &pk, SB_MQTT_UNSUBACK, 5);
    }
    sbt_mq_publish(p, "o/y", "unsubscribed", 0, 0, 0, 0);
    sbt_mq_publish(p, "o/x", "still", 0, 0, 0, 0);
    sbt_mq_expect_publish(s, "o/x", "still", 0, 0, 0);
    sbt_mq_disconnect(sys);
    sbt_mq_disconnect(p);
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* The QoS 2 handshake of a publish with packet id pid: PUBLISH (dup as
 * given), PUBREC. */
static void publish_qos2(sbt_mq *m, const char *payload, uint16_t pid, int dup)
{
    sb_mqtt_packet p;
    sbt_mq_publish(m, "q2/a", payload, 2, 0, dup, pid);
    sbt_mq_expect(m, &p, SB_MQTT_PUBREC, pid);
}

static void release(sbt_mq *m, uint16_t pid)
{
    sb_mqtt_packet p;
    sbt_mq_ack(m, SB_MQTT_PUBREL, pid);
    sbt_mq_expect(m, &p, SB_MQTT_PUBCOMP, pid);
}

/* Reads jsonl deliveries of "q2" up to the one with payload `until`, acks
 * them, and records payload -> msg_id in seen (a JSON object of arrays of
 * distinct msg_ids). */
static void collect(sbt_conn *c, json_t *seen, const char *until)
{
    for (;;) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        const char *payload = sbt_str(m, "payload");
        int64_t id = sbt_int(m, "msg_id");
        json_t *ids = json_object_get(seen, payload);
        int done = strcmp(payload, until) == 0;
        size_t i;
        json_t *v;
        if (ids == NULL) {
            ids = json_array();
            json_object_set_new(seen, payload, ids);
        }
        json_array_foreach(ids, i, v)
        {
            if (json_integer_value(v) == id)
                break;
        }
        if (i == json_array_size(ids))
            json_array_append_new(ids, json_integer(id));
        sbt_ack(c, "q2", id);
        json_decref(m);
        if (done)
            return;
    }
}

/* QoS 2 inbound is exactly once (MQTT-4.3.3-2): a PUBLISH sent again with
 * DUP and the same packet id before the PUBREL is acknowledged again
 * (PUBREC) but not delivered again: on the same connection, after a
 * reconnect with clean session 0, and after the broker was SIGKILLed right
 * after its PUBREC (the PUBREC means committed). A PUBREL of an unknown
 * packet id still gets its PUBCOMP (MQTT-4.3.3-2: answer every PUBREL). */
static void test_qos2_inbound_exactly_once(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-qos2");
    int port = b->port[SBT_MQ_PORT_MQTT];
    sbt_mq *m;
    json_t *seen = json_object(), *ids;
    const char *key;

    sbt_sub(c, "q2", "q2/#", 100);
    m = sbt_mq_simple(port, "q2pub", 0);
    publish_qos2(m, "once", 10, 0);
    publish_qos2(m, "once", 10, 1);
    release(m, 10);
    /* The id is free again: a new message. */
    publish_qos2(m, "again", 10, 0);
    release(m, 10);
    release(m, 999);

    /* Across a reconnect (the PUBREC "was lost"). */
    publish_qos2(m, "recon", 11, 0);
    sbt_mq_close(m);
    m = sbt_mq_simple(port, "q2pub", 0);
    publish_qos2(m, "recon", 11, 1);
    release(m, 11);
    sbt_pub(c, "q2/a", "marker1", 1);
    collect(c, seen, "marker1");

    /* Across a SIGKILL right after the PUBREC. */
    publish_qos2(m, "killed", 12, 0);
    sbt_mq_close(m);
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[SBT_MQ_PORT_JSONL]);
    m = sbt_mq_simple(port, "q2pub", 0);
    publish_qos2(m, "killed", 12, 1);
    release(m, 12);
    sbt_mq_disconnect(m);
    sbt_pub(c, "q2/a", "marker2", 1);
    sbt_sub(c, "q2", NULL, 100);
    collect(c, seen, "marker2");

    /* Every payload was stored once (a jsonl redelivery after the kill
     * has the same msg_id; a second copy would have another). */
    json_object_foreach(seen, key, ids)
    {
        if (json_array_size(ids) != 1) {
            char *dump = json_dumps(seen, 0);
            fail_msg("\"%s\" was delivered as %zu different messages: %s", key,
                     json_array_size(ids), dump);
        }
    }
    assert_int_equal(json_object_size(seen), 6);
    assert_non_null(json_object_get(seen, "once"));
    assert_non_null(json_object_get(seen, "again"));
    assert_non_null(json_object_get(seen, "recon"));
    assert_non_null(json_object_get(seen, "killed"));
    json_decref(seen);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Outbound: the QoS 2 flow to a subscriber (PUBLISH, PUBREC, PUBREL with
 * flags 0x2, PUBCOMP); an unacknowledged QoS 1 PUBLISH is sent again after
 * a reconnect with DUP 1 and its packet id, and a PUBREL whose PUBCOMP did
 * not come is sent again rather than the PUBLISH (MQTT-4.4.0-1,
 * MQTT-3.3.1-1). */
static void test_outbound_qos_flows(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-outbound");
    int port = b->port[SBT_MQ_PORT_MQTT], sp = -1;
    sbt_mq_opts o;
    sbt_mq *s, *p;
    sb_mqtt_packet pk;
    uint16_t pid, pid2;

    memset(&o, 0, sizeof(o));
    o.id = "out-sub";
    o.clean = 0;
    s = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(s, 1, "out/#", 2);
    p = sbt_mq_simple(port, "out-pub", 1);

    /* QoS 2 out. */
    sbt_mq_publish(p, "out/a", "two", 2, 0, 0, 1);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBREC, 1);
    sbt_mq_ack(p, SB_MQTT_PUBREL, 1);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBCOMP, 1);
    pid = sbt_mq_expect_publish(s, "out/a", "two", 2, 0, 0);
    sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid);

    /* QoS 1, not acknowledged, then a reconnect. */
    sbt_mq_publish(p, "out/b", "one", 1, 0, 0, 2);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBACK, 2);
    pid = sbt_mq_expect_publish(s, "out/b", "one", 1, 0, 0);
    sbt_mq_close(s);
    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    pid2 = sbt_mq_expect_publish(s, "out/b", "one", 1, 0, 1);
    if (pid2 != pid)
        fail_msg("the re-sent PUBLISH has packet id %u, the original %u (MQTT-4.4.0-1)", pid2, pid);
    sbt_mq_ack(s, SB_MQTT_PUBACK, pid2);

    /* QoS 2: PUBREC sent, PUBREL received, no PUBCOMP; then a reconnect. */
    sbt_mq_publish(p, "out/c", "three", 2, 0, 0, 3);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBREC, 3);
    sbt_mq_ack(p, SB_MQTT_PUBREL, 3);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBCOMP, 3);
    pid = sbt_mq_expect_publish(s, "out/c", "three", 2, 0, 0);
    sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
    sbt_mq_close(s);
    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid);

    /* Nothing else is pending: the next is a new message. */
    sbt_mq_publish(p, "out/d", "end", 0, 0, 0, 0);
    sbt_mq_expect_publish(s, "out/d", "end", 0, 0, 0);
    sbt_wait_queue_int(c, "mqtt/out-sub", "depth", 0, 5000);
    sbt_mq_disconnect(s);
    sbt_mq_disconnect(p);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* The same re-sends after the broker was SIGKILLed and restarted: the
 * unacknowledged QoS 1 PUBLISH again with DUP 1 and its packet id, and for
 * the QoS 2 message whose PUBREC the broker had answered with PUBREL, the
 * PUBREL again, never the PUBLISH (MQTT-4.4.0-1, MQTT-3.3.1-1). */
static void test_outbound_resend_after_kill(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-outkill");
    int port = b->port[SBT_MQ_PORT_MQTT], sp = -1, got_publish = 0, got_pubrel = 0, dup = -1;
    sbt_mq_opts o;
    sbt_mq *s, *p;
    sb_mqtt_packet pk;
    uint16_t pid_a, pid_b, pid_again = 0;

    memset(&o, 0, sizeof(o));
    o.id = "kill-sub";
    o.clean = 0;
    s = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(s, 1, "out/#", 2);
    p = sbt_mq_simple(port, "kill-pub", 1);
    sbt_mq_publish(p, "out/a", "one", 1, 0, 0, 1);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBACK, 1);
    sbt_mq_publish(p, "out/b", "two", 2, 0, 0, 2);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBREC, 2);
    sbt_mq_ack(p, SB_MQTT_PUBREL, 2);
    sbt_mq_expect(p, &pk, SB_MQTT_PUBCOMP, 2);
    sbt_mq_disconnect(p);
    pid_a = sbt_mq_expect_publish(s, "out/a", "one", 1, 0, 0);
    pid_b = sbt_mq_expect_publish(s, "out/b", "two", 2, 0, 0);
    sbt_mq_ack(s, SB_MQTT_PUBREC, pid_b);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid_b);
    sbt_mq_close(s);
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[SBT_MQ_PORT_JSONL]);

    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    for (int i = 0; i < 2; i++) {
        int rc = sbt_mq_next(s, &pk, SBT_REPLY_MS);
        if (rc != 0)
            fail_msg("after the restart: %s while the re-sends were due",
                     rc == -1 ? "nothing" : "the connection closed");
        if (pk.type == SB_MQTT_PUBREL && pk.packet_id == pid_b) {
            got_pubrel++;
            sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid_b);
        } else if (pk.type == SB_MQTT_PUBLISH &&
                   sbt_mq_eq(pk.publish.topic.p, pk.publish.topic.n, "out/a")) {
            got_publish++;
            dup = pk.publish.dup;
            pid_again = pk.packet_id;
            sbt_mq_ack(s, SB_MQTT_PUBACK, pk.packet_id);
        } else {
            fail_msg("after the restart the broker sent %s (packet id %u%s%.*s, DUP %d) where the "
                     "re-sent PUBLISH of out/a (id %u) and the PUBREL of out/b (id %u) were due",
                     sb_mqtt_type_name(pk.type), pk.packet_id,
                     pk.type == SB_MQTT_PUBLISH ? ", topic " : "",
                     pk.type == SB_MQTT_PUBLISH ? (int)pk.publish.topic.n : 0,
                     pk.type == SB_MQTT_PUBLISH ? pk.publish.topic.p : "", pk.publish.dup, pid_a,
                     pid_b);
        }
    }
    assert_int_equal(got_publish, 1);
    assert_int_equal(got_pubrel, 1);
    if (pid_again != pid_a || dup != 1)
        fail_msg("the re-sent PUBLISH has packet id %u DUP %d; want %u and 1", pid_again, dup,
                 pid_a);

    p = sbt_mq_simple(port, "kill-pub", 1);
    sbt_mq_publish(p, "out/c", "end", 0, 0, 0, 0);
    sbt_mq_expect_publish(s, "out/c", "end", 0, 0, 0);
    sbt_wait_queue_int(c, "mqtt/kill-sub", "depth", 0, 5000);
    sbt_mq_disconnect(p);
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* max_queued bounds what a session holds while its client is away: the
 * oldest messages make room (counted as dropped), the newest are kept. */
static void test_max_queued_drops_oldest(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_mq *s;
    sbt_mq_opts o;
    char payload[16];
    int port, sp = -1;

    sbt_broker_set(b, 0, "    max_queued: 3\n");
    c = sbt_mq_start(b, "mqtt-maxq");
    port = b->port[SBT_MQ_PORT_MQTT];
    s = sbt_mq_simple(port, "slowpoke", 0);
    sbt_mq_sub1(s, 1, "mq/#", 1);
    sbt_mq_disconnect(s);
    for (int i = 1; i <= 5; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        sbt_pub(c, "mq/x", payload, 1);
    }
    sbt_wait_queue_int(c, "mqtt/slowpoke", "dropped", 2, 5000);
    memset(&o, 0, sizeof(o));
    o.id = "slowpoke";
    o.clean = 0;
    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    for (int i = 3; i <= 5; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        sbt_mq_ack(s, SB_MQTT_PUBACK, sbt_mq_expect_publish(s, "mq/x", payload, 1, -1, 0));
    }
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* 1 if c's `stats` list queue `name`. */
static int lists_queue(sbt_conn *c, const char *name)
{
    json_t *q = sbt_queue_stats(c, name);
    json_decref(q);
    return q != NULL;
}

/* Polls until c's `stats` no longer list queue `name`; returns the ms it
 * took (fails after timeout_ms). */
static int64_t wait_queue_gone(sbt_conn *c, const char *name, int timeout_ms)
{
    int64_t t0 = sbt_now_ms();
    while (lists_queue(c, name)) {
        if (sbt_now_ms() - t0 > timeout_ms)
            fail_msg("queue %s still exists after %d ms", name, timeout_ms);
        sbt_poll_pause(50);
    }
    return sbt_now_ms() - t0;
}

/* session_expiry: a persistent session whose client has been away that
 * long is deleted with its messages, and logged; the session of a client
 * still connected is kept, and so is one whose client last came through a
 * listener without session_expiry, even away longer; after a restart a
 * session counts from the start; a client coming back later starts a new
 * session. */
static void test_session_expiry(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_mq *s, *stays;
    int port, small, sp = -1;
    int64_t took;

    sbt_broker_set(b, 0, "    session_expiry: 2s\n");
    c = sbt_mq_start(b, "mqtt-expiry");
    port = b->port[SBT_MQ_PORT_MQTT];
    small = b->port[SBT_MQ_PORT_SMALL];
    s = sbt_mq_simple(small, "no-expiry", 0);
    sbt_mq_sub1(s, 1, "ex/#", 1);
    sbt_mq_disconnect(s);
    stays = sbt_mq_simple(port, "stays", 0);
    sbt_mq_sub1(stays, 1, "ex/#", 1);
    s = sbt_mq_simple(port, "leaves", 0);
    sbt_mq_sub1(s, 1, "ex/#", 1);
    sbt_mq_disconnect(s);
    sbt_pub(c, "ex/x", "queued", 3);

    sbt_broker_mark_log(b);
    took = wait_queue_gone(c, "mqtt/leaves", 20000);
    if (took < 1000)
        fail_msg("the session of a client away for 2 s at most was deleted after %lld ms",
                 (long long)took);
    sbt_broker_wait_log(b,
                        "[mqtt/leaves] no consumer for 2 s (expires after 2 s without one): "
                        "deleting the subscription",
                        1, 5000);
    sbt_broker_wait_log(b, "[mqtt/leaves] deleted subscription (1 messages discarded)", 1, 5000);
    assert_true(lists_queue(c, "mqtt/stays"));
    assert_true(lists_queue(c, "mqtt/no-expiry"));
    sbt_mq_ack(stays, SB_MQTT_PUBACK, sbt_mq_expect_publish(stays, "ex/x", "queued", 1, -1, 0));
    s = sbt_mq_client(port, &(sbt_mq_opts){.id = "leaves", .clean = 0}, &sp);
    assert_int_equal(sp, 0);
    sbt_mq_disconnect(s);

    /* Away across a restart: counted from the start. */
    sbt_mq_disconnect(stays);
    sbt_broker_stop(b);
    sbt_close(c);
    sbt_broker_start(b);
    c = sbt_connect(b->port[SBT_MQ_PORT_JSONL]);
    assert_true(lists_queue(c, "mqtt/no-expiry"));
    wait_queue_gone(c, "mqtt/stays", 20000);
    wait_queue_gone(c, "mqtt/leaves", 20000);
    assert_true(lists_queue(c, "mqtt/no-expiry"));
    s = sbt_mq_client(small, &(sbt_mq_opts){.id = "no-expiry", .clean = 0}, &sp);
    assert_int_equal(sp, 1);
    sbt_mq_ack(s, SB_MQTT_PUBACK, sbt_mq_expect_publish(s, "ex/x", "queued", 1, -1, -1));
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A producer that sends more than the broker has in flight, then DISCONNECT
 * and closes: everything it sent is published, and no will (the end of the
 * stream waits behind what was sent before it). */
static void test_backlog_then_disconnect(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-backlog");
    int port = b->port[SBT_MQ_PORT_MQTT], got = 0, wills = 0;
    sbt_mq_opts o;
    sbt_mq *sub, *p;
    sb_mqtt_packet pk;
    char payload[16];
    enum { N = 3000 };

    sub = sbt_mq_simple(port, "collector", 0);
    sbt_mq_sub1(sub, 1, "bl/#", 1);
    memset(&o, 0, sizeof(o));
    o.id = "bulk";
    o.clean = 1;
    o.will_topic = "bl/will";
    o.will_payload = "died";
    p = sbt_mq_client(port, &o, NULL);
    for (int i = 0; i < N; i++) {
        snprintf(payload, sizeof payload, "%d", i);
        sbt_mq_publish(p, "bl/x", payload, 0, 0, 0, 0);
    }
    sbt_mq_empty(p, SB_MQTT_DISCONNECT);
    sbt_mq_close(p);
    while (got < N && sbt_mq_next(sub, &pk, SBT_REPLY_MS) == 0) {
        if (pk.type != SB_MQTT_PUBLISH)
            continue;
        if (sbt_mq_eq(pk.publish.topic.p, pk.publish.topic.n, "bl/will"))
            wills++;
        else
            got++;
        if (pk.publish.qos > 0)
            sbt_mq_ack(sub, SB_MQTT_PUBACK, pk.packet_id);
    }
    assert_int_equal(got, N);
    sbt_mq_ping(sub); /* a will would have arrived before the PINGRESP */
    assert_int_equal(wills, 0);
    sbt_mq_disconnect(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A clean session's QoS 2 packet ids start afresh: a new connection's
 * PUBLISH with the id an earlier connection of the same client just used
 * is a new message, even if the earlier one commits after the takeover. */
static void test_clean_session_qos2_ids_start_afresh(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = sbt_mq_start(b, "mqtt-qos2-afresh");
    int port = b->port[SBT_MQ_PORT_MQTT];
    sbt_mq *sub, *a, *bb;
    sb_mqtt_packet pk;

    sub = sbt_mq_simple(port, "watch2", 1);
    sbt_mq_sub1(sub, 1, "q2/#", 2);
    for (int round = 0; round < 5; round++) {
        a = sbt_mq_simple(port, "twin2", 1);
        sbt_mq_publish(a, "q2/x", "first", 2, 0, 0, 1);
        bb = sbt_mq_simple(port, "twin2", 1); /* takes over at once */
        sbt_mq_close(a);
        sbt_mq_publish(bb, "q2/x", "second", 2, 0, 0, 1);
        sbt_mq_await(bb, &pk, SB_MQTT_PUBREC, 1);
        sbt_mq_ack(bb, SB_MQTT_PUBREL, 1);
        sbt_mq_await(bb, &pk, SB_MQTT_PUBCOMP, 1);
        sbt_mq_disconnect(bb);
        /* "first" may or may not have made it before the takeover; "second"
         * must. */
        for (;;) {
            uint16_t id;
            assert_int_equal(sbt_mq_next(sub, &pk, SBT_REPLY_MS), 0);
            assert_int_equal(pk.type, SB_MQTT_PUBLISH);
            id = pk.packet_id;
            if (sbt_mq_eq(pk.publish.payload.p, pk.publish.payload.n, "second")) {
                sbt_mq_ack(sub, SB_MQTT_PUBREC, id);
                sbt_mq_await(sub, &pk, SB_MQTT_PUBREL, id);
                sbt_mq_ack(sub, SB_MQTT_PUBCOMP, id);
                break;
            }
            sbt_mq_ack(sub, SB_MQTT_PUBREC, id);
            sbt_mq_await(sub, &pk, SB_MQTT_PUBREL, id);
            sbt_mq_ack(sub, SB_MQTT_PUBCOMP, id);
        }
    }
    sbt_mq_disconnect(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* The keys of a kind ("rel", "owed") left in the store for client id:
 * QoS 2 state of deliveries whose PUBCOMP has not come. */
static int state_keys(sbt_broker *b, const char *id, const char *kind)
{
    char path[SBT_PATH_MAX], like[128];
    sqlite3 *db;
    sqlite3_stmt *st;
    int n;
    sbt_path(path, sizeof(path), b->data_dir, "switchboard.db");
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(like, sizeof(like), "$mqtt\n%s\n%s%%", id, kind);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*) FROM dedup WHERE key LIKE ?", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, like, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return n;
}

/* Two QoS 2 messages through to s (subscribed to rel/#) first: the first
 * after a start commits before delivery and asks for message ids to be
 * reserved; the second's puback comes after that reservation committed,
 * so the next goes to the client early. */
static void warm_early_qos2(sbt_conn *c, sbt_mq *s)
{
    sb_mqtt_packet pk;
    json_t *r;
    uint16_t pid;
    for (int i = 0; i < 2; i++) {
        r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "rel/warm", "payload",
                     "warm", "headers", "mqtt-qos", "2");
        sbt_expect_op(r, "puback");
        json_decref(r);
        pid = sbt_mq_expect_publish(s, "rel/warm", "warm", 2, 0, 0);
        sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
        sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
        sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid);
    }
}

/* The packet id of pk, asserted to be the QoS 2 PUBLISH of topic and
 * payload. */
static uint16_t refused_publish_id(const sb_mqtt_packet *pk, const char *topic, const char *payload)
{
    if (pk->type != SB_MQTT_PUBLISH || pk->publish.qos != 2 ||
        !sbt_mq_eq(pk->publish.topic.p, pk->publish.topic.n, topic) ||
        !sbt_mq_eq(pk->publish.payload.p, pk->publish.payload.n, payload))
        fail_msg("expected the QoS 2 PUBLISH of %s, got %s", topic, sb_mqtt_type_name(pk->type));
    return pk->packet_id;
}

/* Publishes payload on topic at QoS 2 through c, expecting the store to
 * refuse it (too big for broker.store.max_db_bytes) after s got it
 * (early). Returns its packet id; with pubrec, s answers PUBREC and gets
 * PUBREL, before the refusal is read if the PUBLISH came before it.
 * The store may refuse before the loop dispatched the message (a loaded
 * machine): withdrawn unsent, it is published again. */
static uint16_t publish_refused(sbt_conn *c, sbt_mq *s, const char *topic, const char *payload,
                                int pubrec)
{
    sb_mqtt_packet pk;
    json_t *r;
    for (int tries = 0; tries < 20; tries++) {
        int got, acked = 0;
        uint16_t pid = 0;
        sbt_send(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", topic, "payload", payload,
                 "headers", "mqtt-qos", "2");
        got = sbt_mq_next(s, &pk, 1000) == 0;
        if (got) {
            pid = refused_publish_id(&pk, topic, payload);
            if (pubrec) {
                sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
                sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
                acked = 1;
            }
        }
        r = sbt_read(c, SBT_REPLY_MS);
        assert_non_null(r);
        sbt_expect_op(r, "error");
        assert_string_equal(sbt_str(r, "code"), "SB_ENOSPC");
        json_decref(r);
        /* a PUBLISH dispatched was written before the refusal's reply */
        if (!got && sbt_mq_next(s, &pk, 2000) == 0) {
            got = 1;
            pid = refused_publish_id(&pk, topic, payload);
        }
        if (!got)
            continue;
        if (pubrec && !acked) {
            sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
            sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
        }
        return pid;
    }
    fail_msg("20 refused publishes of %s never went to the client before their refusal", topic);
    return 0;
}

/* A QoS 2 message goes to a persistent session before its commit, which
 * the store then refuses (broker.store.max_db_bytes): the client's PUBREC
 * is answered, and when it leaves before PUBCOMP the message is gone for
 * good, and so must be its "rel" key, which no PUBCOMP will now delete. */
static void test_refused_qos2_leaves_no_state(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    int port;
    size_t big = 400 * 1024;
    char *payload = malloc(big + 1);
    sbt_mq_opts o;
    sbt_mq *s;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    sbt_broker_set(b, 1, "  store: { max_db_bytes: 256KiB }\n");
    c = sbt_mq_start(b, "mqtt-refused-qos2");
    port = b->port[SBT_MQ_PORT_MQTT];
    memset(&o, 0, sizeof(o));
    o.id = "rel-sub";
    o.clean = 0;
    s = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(s, 1, "rel/#", 2);
    warm_early_qos2(c, s);
    sbt_wait_queue_int(c, "mqtt/rel-sub", "depth", 0, SBT_REPLY_MS);
    publish_refused(c, s, "rel/big", payload, 1);
    sbt_mq_close(s); /* no PUBCOMP */
    sbt_wait_queue_int(c, "mqtt/rel-sub", "depth", 0, SBT_REPLY_MS);
    sbt_close(c);
    sbt_broker_stop(b);
    assert_int_equal(state_keys(b, "rel-sub", "rel\n"), 0);
    free(payload);
    b->passed = 1;
}

/* The next packets on s are the PUBRELs of pids[0..OWED), in that order. */
#define OWED 6
static void expect_owed(sbt_mq *s, const uint16_t *pids, const char *when)
{
    sb_mqtt_packet pk;
    for (int i = 0; i < OWED; i++) {
        if (sbt_mq_next(s, &pk, SBT_REPLY_MS) != 0)
            fail_msg("%s: the PUBREL of id %u (%d of %d) missing", when, pids[i], i + 1, OWED);
        if (pk.type != SB_MQTT_PUBREL || pk.packet_id != pids[i])
            fail_msg("%s the broker sent %s (packet id %u) where the PUBREL of id %u (%d of %d, "
                     "in their PUBLISHes' order) was due",
                     when, sb_mqtt_type_name(pk.type), pk.packet_id, pids[i], i + 1, OWED);
    }
}

/* A QoS 2 message the store refuses after it went to a persistent
 * session (before its commit) is never delivered again, yet the client
 * holds its packet id until a PUBREL comes ("PUBREC sent", MQTT-4.3.3-2):
 * without it, a new message reusing the id (65535 later) would be taken
 * for that one and dropped. The PUBREL comes after a reconnect, after a
 * restart too, whether the PUBREC came before the refusal (the first),
 * after it (the last) or never reached the broker (the others: lost on
 * the way), until PUBCOMP; in the order of their packet ids' PUBLISHes,
 * as their PUBRECs came (MQTT-4.6.0-3). */
static void test_refused_qos2_pubrel_owed(void **state)
{
    static const char *const topics[OWED] = {"rel/a", "rel/b", "rel/c", "rel/d", "rel/e", "rel/f"};
    sbt_broker *b = *state;
    sbt_conn *c;
    int port, sp = 0;
    size_t big = 400 * 1024;
    char *payload = malloc(big + 1);
    sbt_mq_opts o;
    sbt_mq *s;
    sb_mqtt_packet pk;
    json_t *r;
    uint16_t pids[OWED], pid;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    sbt_broker_set(b, 1, "  store: { max_db_bytes: 256KiB }\n");
    c = sbt_mq_start(b, "mqtt-refused-owed");
    port = b->port[SBT_MQ_PORT_MQTT];
    memset(&o, 0, sizeof(o));
    o.id = "owed-sub";
    o.clean = 0;
    s = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(s, 1, "rel/#", 2);
    warm_early_qos2(c, s);
    sbt_wait_queue_int(c, "mqtt/owed-sub", "depth", 0, SBT_REPLY_MS);
    for (int i = 0; i < OWED; i++)
        pids[i] = publish_refused(c, s, topics[i], payload, i == 0);
    sbt_mq_ack(s, SB_MQTT_PUBREC, pids[OWED - 1]); /* after the refusal */
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pids[OWED - 1]);
    sbt_mq_close(s); /* no PUBCOMP */
    sbt_wait_queue_int(c, "mqtt/owed-sub", "depth", 0, SBT_REPLY_MS);
    /* at once, while the store may still be recording what is owed */
    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    expect_owed(s, pids, "after a reconnect");
    sbt_mq_close(s); /* no PUBCOMP */
    sbt_close(c);
    /* (stopped, not killed: a PUBREL owed is recorded at the refusal, in
     * the store's retries after it, and a kill may come before that as
     * before any write) */
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[SBT_MQ_PORT_JSONL]);

    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    expect_owed(s, pids, "after the restart");
    for (int i = 0; i < OWED; i++)
        sbt_mq_ack(s, SB_MQTT_PUBCOMP, pids[i]);

    /* the session goes on; once completed, a reconnect owes nothing */
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "rel/after", "payload",
                 "after", "headers", "mqtt-qos", "2");
    sbt_expect_op(r, "puback");
    json_decref(r);
    pid = sbt_mq_expect_publish(s, "rel/after", "after", 2, 0, 0);
    sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid);
    sbt_wait_queue_int(c, "mqtt/owed-sub", "depth", 0, SBT_REPLY_MS);
    sbt_mq_close(s);
    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "rel/last", "payload", "last",
                 "headers", "mqtt-qos", "2");
    sbt_expect_op(r, "puback");
    json_decref(r);
    pid = sbt_mq_expect_publish(s, "rel/last", "last", 2, 0, 0); /* no PUBREL before it */
    sbt_mq_ack(s, SB_MQTT_PUBREC, pid);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, pid);
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, pid);
    sbt_wait_queue_int(c, "mqtt/owed-sub", "depth", 0, SBT_REPLY_MS);
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b);
    assert_int_equal(state_keys(b, "owed-sub", "owed"), 0);
    assert_int_equal(state_keys(b, "owed-sub", "rel\n"), 0);
    free(payload);
    b->passed = 1;
}

/* A PUBREL owed as an earlier version recorded it (the key names the
 * packet id, not the message id, in a database of schema version 3)
 * still comes on resume, before those of the current form, and its
 * PUBCOMP deletes it. The database is of version 4 from then on: a
 * broker of version 3, which would take the new keys for packet ids,
 * refuses it. */
static void test_owed_pubrel_of_old_form(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    int port, sp = 0;
    char path[SBT_PATH_MAX];
    sqlite3 *db;
    sbt_mq_opts o;
    sbt_mq *s;
    sb_mqtt_packet pk;

    c = sbt_mq_start(b, "mqtt-owed-old");
    port = b->port[SBT_MQ_PORT_MQTT];
    memset(&o, 0, sizeof(o));
    o.id = "old-sub";
    o.clean = 0;
    s = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(s, 1, "old/#", 2);
    sbt_mq_disconnect(s);
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_path(path, sizeof(path), b->data_dir, "switchboard.db");
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "PRAGMA user_version = 3;"
                                  "INSERT INTO dedup(key, expires_ms) VALUES"
                                  " ('$mqtt' || char(10) || 'old-sub' || char(10) || 'owed', 0),"
                                  " ('$mqtt' || char(10) || 'old-sub' || char(10) || 'owed' ||"
                                  "  char(10) || '00000000000000000041', 0),"
                                  " ('$mqtt' || char(10) || 'old-sub' || char(10) || 'owed' ||"
                                  "  char(10) || '7', 0)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "migrated from schema version 3 to 4", 1, SBT_REPLY_MS);

    s = sbt_mq_client(port, &o, &sp);
    assert_int_equal(sp, 1);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, 7);
    sbt_mq_expect(s, &pk, SB_MQTT_PUBREL, 42); /* message 41 */
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, 7);
    sbt_mq_ack(s, SB_MQTT_PUBCOMP, 42);
    sbt_mq_disconnect(s);
    sbt_broker_stop(b);
    assert_int_equal(state_keys(b, "old-sub", "owed\n"), 0);
    b->passed = 1;
}

/* Review findings: re-sent QoS 2 PUBLISHes racing their first copy must not
 * leave the subscriber's queue looking full; jsonl clients cannot take over
 * or delete an MQTT session's subscription; a filter with a line break (the
 * separator of a session's filters) is refused. */
static void test_duplicates_and_session_ownership(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_mq *sub, *p, *bad;
    sb_mqtt_packet pk;
    int port, got = 0;

    sbt_broker_set(b, 0, "    max_queued: 10\n");
    c = sbt_mq_start(b, "mqtt-dups");
    port = b->port[SBT_MQ_PORT_MQTT];
    sub = sbt_mq_simple(port, "drain", 0);
    sbt_mq_sub1(sub, 1, "dup/#", 0);
    p = sbt_mq_simple(port, "dupper", 1);
    for (uint16_t id = 1; id <= 20; id++) {
        sbt_mq_publish(p, "dup/x", "same", 2, 0, 0, id);
        sbt_mq_publish(p, "dup/x", "same", 2, 0, 1, id);
        sbt_mq_publish(p, "dup/x", "same", 2, 0, 1, id);
    }
    for (int recs = 0, comps = 0; recs < 60 || comps < 20;) {
        assert_int_equal(sbt_mq_next(p, &pk, SBT_REPLY_MS), 0);
        if (pk.type == SB_MQTT_PUBREC && ++recs % 3 == 0)
            sbt_mq_ack(p, SB_MQTT_PUBREL, pk.packet_id); /* after its third copy */
        else if (pk.type == SB_MQTT_PUBCOMP)
            comps++;
    }
    while (got < 20 && sbt_mq_next(sub, &pk, SBT_REPLY_MS) == 0)
        got += pk.type == SB_MQTT_PUBLISH;
    assert_int_equal(got, 20);
    /* every duplicate's routing was undone */
    sbt_wait_queue_int(c, "mqtt/drain", "pending", 0, 5000);
    /* 30 more QoS 1 publishes, pipelined, fit a drained queue of 10 */
    for (uint16_t id = 1; id <= 30; id++)
        sbt_mq_publish(p, "dup/y", "after", 1, 0, 0, id);
    for (uint16_t id = 1; id <= 30; id++) {
        assert_int_equal(sbt_mq_next(p, &pk, SBT_REPLY_MS), 0);
        assert_int_equal(pk.type, SB_MQTT_PUBACK);
        assert_int_equal(pk.packet_id, id); /* in order */
    }
    sbt_mq_disconnect(p);

    sbt_expect_error(
        sbt_call(c, "{s:s, s:s, s:s}", "op", "sub", "sub", "mqtt/drain", "filter", "dup/#"),
        "SB_EACCES");
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s}", "op", "sub", "sub", "mqtt/new", "filter", "x"),
                     "SB_EACCES");
    sbt_expect_error(
        sbt_call(c, "{s:s, s:s, s:b}", "op", "unsub", "sub", "mqtt/drain", "delete", 1),
        "SB_EACCES");

    bad = sbt_mq_simple(port, "liner", 1);
    {
        static const char *const f[] = {"ok/x\nother/#"};
        uint8_t buf[64];
        size_t n;
        sb_mqtt_filter mf = {{f[0], strlen(f[0])}, 0};
        assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof buf, &n, 1, &mf, 1), 0);
        sbt_mq_write(bad, buf, n);
    }
    if (!sbt_mq_wait_closed(bad, SBT_REPLY_MS))
        fail_msg("a SUBSCRIBE to a filter with a line break was not refused");
    sbt_mq_close(bad);
    sbt_mq_disconnect(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect_refusals, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_packets, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_client_id_takeover, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_dollar_topics_and_overlap, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_inbound_exactly_once, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_outbound_qos_flows, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_outbound_resend_after_kill, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_refused_qos2_leaves_no_state, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_refused_qos2_pubrel_owed, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_owed_pubrel_of_old_form, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_max_queued_drops_oldest, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_session_expiry, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_backlog_then_disconnect, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_and_session_ownership, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_clean_session_qos2_ids_start_afresh, sbt_setup,
                                        sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("mqtt-proto", tests, NULL, NULL);
}
