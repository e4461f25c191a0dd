/*
 * The DDE adapter with real processes: the broker (switchboard.exe run),
 * a legacy DDE server (plc_sim.exe) and a legacy DDE client
 * (legacy_client.exe), both plain ANSI DDEML programs, and this program as
 * the jsonl and MQTT clients. Under Wine (null graphics driver, see
 * packaging/windows/wine-prefix.sh) and unchanged on Windows.
 *
 * - client role: the legacy server's items reach a jsonl subscriber and an
 *   MQTT subscriber, current values first, CF_TEXT converted from code page
 *   1252; the server is killed and restarted while linked: the link state
 *   is logged once per change and the links come back;
 * - client role as a sink: deliveries are poked (text through the code
 *   page, the item from the template or a dde-item header), executed, and
 *   acknowledged only on DDE_FACK: a busy server is retried, a refusing one
 *   and unconvertible text end in the dead-letter queue with the reason,
 *   deliveries wait while the server is away;
 * - server role: values published over jsonl serve REQUEST and hot links
 *   (current value first, seeded from retained values after a restart),
 *   CF_TEXT with non-ASCII text through the code page, CF_UNICODETEXT, the
 *   System topic, pokes and executes published; bad input: an unknown
 *   topic or item, text the code page cannot carry, a poke over
 *   max_message, a poke the broker refuses (full queue), a client that
 *   vanishes in the middle of a hot link;
 * - pokes while the broker is killed and restarted: every poke the client
 *   saw acknowledged with DDE_FACK is there after the restart;
 * - config/examples/dde-bridge.yaml runs: PLC items to MQTT, MQTT values
 *   into the PLC and into Excel-style links;
 * - the same adapters hosted by the session agent (broker.desktop: agent):
 *   both roles, pokes acknowledged after the commit in the broker,
 *   deliveries acknowledged back.
 *
 * DDE service names carry the test's process id, so parallel runs do not
 * meet. Nothing sleeps a fixed time: every wait polls with a deadline.
 */
#include "tests/integration/harness.h"
#include "tests/integration/mqtt_tcp.h"

#include "service/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define WAIT_MS 20000

/* ---- the legacy programs ---- */

static void service_name(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "SBT%lu%s", (unsigned long)GetCurrentProcessId(), tag);
}

/* Starts plc_sim SERVICE args... with its output in dir/out, and waits
 * for READY. */
static void start_plc(sbt_proc *p, sbt_broker *b, const char *out_name, const char *service,
                      const char *a1, const char *a2, const char *a3, const char *a4)
{
    char out[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_env("SB_PLC_SIM"),
                    (char *)service,
                    (char *)a1,
                    (char *)a2,
                    (char *)a3,
                    (char *)a4,
                    NULL};
    sbt_path(out, sizeof out, b->dir, out_name);
    remove(out);
    memset(p, 0, sizeof(*p));
    assert_int_equal(sbt_spawn(p, argv, NULL, out), 0);
    sbt_wait_file_text(out, "READY", 1, WAIT_MS);
}

/* Runs legacy_client with up to five arguments; returns its output. */
static char *client(const char *service, const char *topic, const char *cmd, const char *a1,
                    const char *a2, const char *a3)
{
    char *argv[] = {(char *)sbt_env("SB_DDE_CLIENT"),
                    (char *)service,
                    (char *)topic,
                    (char *)cmd,
                    (char *)a1,
                    (char *)a2,
                    (char *)a3,
                    NULL};
    char *out = NULL;
    int rc = sbt_run(argv, NULL, 60000, &out, NULL);
    (void)rc;
    assert_non_null(out);
    return out;
}

/* Runs legacy_client and checks that its output contains want. */
static void expect_client(const char *want, const char *service, const char *topic, const char *cmd,
                          const char *a1, const char *a2, const char *a3)
{
    char *out = client(service, topic, cmd, a1, a2, a3);
    if (strstr(out, want) == NULL)
        fail_msg("legacy_client %s %s %s %s %s: expected \"%s\", got:\n%s", service, topic, cmd,
                 a1 ? a1 : "", a2 ? a2 : "", want, out);
    free(out);
}

/* Starts legacy_client in the background with its output in dir/out_name. */
static void spawn_client(sbt_proc *p, sbt_broker *b, const char *out_name, const char *service,
                         const char *topic, const char *cmd, const char *a1, const char *a2)
{
    char out[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_env("SB_DDE_CLIENT"),
                    (char *)service,
                    (char *)topic,
                    (char *)cmd,
                    (char *)a1,
                    (char *)a2,
                    NULL};
    sbt_path(out, sizeof out, b->dir, out_name);
    remove(out);
    memset(p, 0, sizeof(*p));
    assert_int_equal(sbt_spawn(p, argv, NULL, out), 0);
}

/* The next delivery on sub whose topic is topic (others are acked). */
static json_t *next_on(sbt_conn *c, const char *sub, const char *topic)
{
    int64_t deadline = sbt_now_ms() + WAIT_MS;
    for (;;) {
        json_t *m = sbt_next_msg(c, WAIT_MS);
        if (strcmp(sbt_str(m, "topic"), topic) == 0)
            return m;
        sbt_ack(c, sub, sbt_int(m, "msg_id"));
        json_decref(m);
        if (sbt_now_ms() > deadline)
            fail_msg("no message on %s within %d ms", topic, WAIT_MS);
    }
}

/* The only dead letter of sub (new reference). */
static json_t *only_dead_letter(sbt_conn *c, const char *sub)
{
    json_t *r, *d;
    int64_t deadline = sbt_now_ms() + WAIT_MS;
    for (;;) {
        r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", sub);
        sbt_expect_op(r, "dlq.list");
        if (json_array_size(json_object_get(r, "items")) >= 1)
            break;
        json_decref(r);
        if (sbt_now_ms() > deadline)
            fail_msg("no dead letter in %s within %d ms", sub, WAIT_MS);
        sbt_poll_pause(20);
    }
    assert_int_equal(json_array_size(json_object_get(r, "items")), 1);
    d = json_incref(json_array_get(json_object_get(r, "items"), 0));
    json_decref(r);
    json_decref(sbt_call(c, "{s:s, s:s}", "op", "dlq.purge", "sub", sub));
    return d;
}

/* ---- client role ---- */

static const char client_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "  log: { level: debug }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: mqtt\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port1}\n"
                                    "    protocol: mqtt\n"
                                    "  - name: plc\n"
                                    "    type: dde\n"
                                    "    role: client\n"
                                    "    service: '{v0}'\n"
                                    "    dde_topic: Line1\n"
                                    "    items: [Temp, Counter, Status]\n"
                                    "    topic: plant/{dde_topic}/{item}\n"
                                    "    codepage: 1252\n"
                                    "    reconnect_backoff: 50ms\n"
                                    "    reconnect_max_backoff: 200ms\n"
                                    "routes:\n"
                                    "  - name: rx\n"
                                    "    from: plant/#\n";

static void test_client_role(void **state)
{
    sbt_broker *b = *state;
    char service[64], topic[256], payload[256], want[128];
    sbt_proc plc;
    sbt_conn *c;
    sbt_tcp *mq;
    json_t *m, *h;
    int got_temp = 0, got_status = 0;

    service_name(service, sizeof service, "plc");
    sbt_broker_init(b, "dde-client", 2);
    start_plc(&plc, b, "plc.out", service, "--interval", "100", NULL, NULL);
    sbt_broker_set(b, 0, service);
    sbt_broker_config(b, client_config);
    sbt_broker_start(b);
    /* Every item hot-linked: at the first connect, or (an item the server
     * refused at first, seen under load with Wine's DDEML) on a retry. */
    snprintf(want, sizeof want, "info [plc] linked to %s|Line1 (", service);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    {
        char *log = sbt_broker_log_since(b);
        char all[256], retried[256];
        snprintf(all, sizeof all, "linked to %s|Line1 (3 of 3 items hot-linked)", service);
        snprintf(retried, sizeof retried, "%s|Line1: item ", service);
        if (strstr(log, all) == NULL) {
            int refused = sbt_count(log, "refused a hot link on item");
            free(log);
            assert_true(refused > 0);
            sbt_broker_wait_log(b, retried, refused, WAIT_MS);
        } else {
            free(log);
        }
    }

    /* the current values first: Temp and Status come once, at the link */
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "rx", NULL, 100);
    for (int64_t deadline = sbt_now_ms() + WAIT_MS; !got_temp || !got_status;) {
        /* Counter keeps coming: a deadline of its own, not per message */
        if (sbt_now_ms() > deadline)
            fail_msg("no current value of %s within %d ms", got_temp ? "Status" : "Temp", WAIT_MS);
        m = sbt_next_msg(c, WAIT_MS);
        h = json_object_get(m, "headers");
        if (strcmp(sbt_str(m, "topic"), "plant/Line1/Temp") == 0) {
            assert_string_equal(sbt_str(m, "payload"), "21.5");
            got_temp = 1;
        } else if (strcmp(sbt_str(m, "topic"), "plant/Line1/Status") == 0) {
            /* CF_TEXT in code page 1252, published as UTF-8 */
            assert_string_equal(sbt_str(m, "payload"), "Gr\xc3\xbc\xc3\x9f"
                                                       "e aus K\xc3\xb6ln");
            assert_string_equal(sbt_str(h, "dde-format"), "CF_TEXT");
            assert_string_equal(sbt_str(h, "encoding"), "utf-8");
            assert_string_equal(sbt_str(h, "dde-codepage"), "1252");
            assert_string_equal(sbt_str(h, "dde-topic"), "Line1");
            assert_string_equal(sbt_str(h, "dde-item"), "Status");
            got_status = 1;
        } else {
            assert_string_equal(sbt_str(m, "topic"), "plant/Line1/Counter");
        }
        sbt_ack(c, "rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }

    /* the hot link keeps an MQTT subscriber current */
    mq = sbt_mqtt_tcp_connect(b->port[1], "dde-test");
    sbt_mqtt_tcp_subscribe(mq, "plant/+/Counter");
    sbt_mqtt_tcp_read_publish(mq, topic, sizeof topic, payload, sizeof payload);
    assert_string_equal(topic, "plant/Line1/Counter");
    assert_true(atoi(payload) > 0);
    sbt_tcp_close(mq);

    /* the legacy server dies and comes back: one line per change, and the
     * links (and the current values) come back */
    sbt_broker_mark_log(b);
    sbt_proc_release(&plc); /* TerminateProcess: no WM_DDE_TERMINATE */
    snprintf(want, sizeof want, "warn [plc] lost %s|Line1", service);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    snprintf(want, sizeof want, "debug [plc] cannot link to %s|Line1", service);
    sbt_broker_wait_log(b, want, 2, WAIT_MS); /* retried, quietly */
    start_plc(&plc, b, "plc2.out", service, "--interval", "100", NULL, NULL);
    snprintf(want, sizeof want, "info [plc] linked to %s|Line1", service);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    {
        char *log = sbt_broker_log_since(b);
        snprintf(want, sizeof want, "warn [plc] lost %s|Line1", service);
        assert_int_equal(sbt_count(log, want), 1);
        snprintf(want, sizeof want, "warn [plc] cannot link");
        assert_int_equal(sbt_count(log, want), 0);
        free(log);
    }
    m = next_on(c, "rx", "plant/Line1/Temp");
    assert_string_equal(sbt_str(m, "payload"), "21.5");
    json_decref(m);

    sbt_close(c);
    sbt_proc_release(&plc);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- client role as a route's destination ---- */

static const char sink_config[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: plc-write\n"
    "    type: dde\n"
    "    role: client\n"
    "    service: '{v0}'\n"
    "    dde_topic: Line1\n"
    "    topic: plant/{dde_topic}/{item}/set\n"
    "    execute_topic: plant/Line1/cmd\n"
    "    codepage: 1252\n"
    "    reconnect_backoff: 50ms\n"
    "    reconnect_max_backoff: 200ms\n"
    "routes:\n"
    "  - name: to-plc\n"
    "    from: [plant/Line1/+/set, plant/Line1/cmd]\n"
    "    to: plc-write\n"
    "    retry: { max_attempts: 4, backoff: 20ms, max_backoff: 50ms }\n";

static void test_client_sink(void **state)
{
    sbt_broker *b = *state;
    char service[64], out[SBT_PATH_MAX], want[128];
    const char *q = "to-plc:plc-write";
    sbt_proc plc;
    sbt_conn *c;
    json_t *d, *r;

    service_name(service, sizeof service, "sink");
    sbt_broker_init(b, "dde-sink", 1);
    start_plc(&plc, b, "plc.out", service, "--refuse", "Locked", "--busy", "Busy:2");
    sbt_path(out, sizeof out, b->dir, "plc.out");
    sbt_broker_set(b, 0, service);
    sbt_broker_config(b, sink_config);
    sbt_broker_start(b);
    snprintf(want, sizeof want, "linked to %s|Line1", service);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    c = sbt_connect(b->port[0]);

    /* the item from the template; text through code page 1252 */
    sbt_pub(c, "plant/Line1/Setpoint/set", "42.5", 1);
    sbt_wait_file_text(out, "POKE Setpoint 34322e35", 1, WAIT_MS);
    sbt_pub(c, "plant/Line1/Setpoint/set",
            "Gr\xc3\xbc\xc3\x9f"
            "e",
            1);
    sbt_wait_file_text(out, "POKE Setpoint 4772fcdf65", 1, WAIT_MS);
    /* the item from a header */
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "plant/Line1/x/set",
                 "payload", "9", "headers", "dde-item", "Other Item");
    sbt_expect_op(r, "puback");
    json_decref(r);
    sbt_wait_file_text(out, "POKE Other Item 39", 1, WAIT_MS);
    /* an execute */
    sbt_pub(c, "plant/Line1/cmd", "[Start(2)]", 1);
    sbt_wait_file_text(out, "EXEC 5b5374617274283229", 1, WAIT_MS);
    /* busy twice, then taken: retried, acknowledged once */
    sbt_pub(c, "plant/Line1/Busy/set", "1", 1);
    sbt_wait_file_text(out, "POKE Busy 31", 1, WAIT_MS);
    sbt_wait_queue_int(c, q, "depth", 0, WAIT_MS);

    /* refused by the server: dead-lettered with its answer */
    sbt_pub(c, "plant/Line1/Locked/set", "1", 1);
    d = only_dead_letter(c, q);
    assert_non_null(strstr(sbt_str(d, "reason"), "refused it (DDE_FNOTPROCESSED"));
    json_decref(d);
    /* text code page 1252 cannot carry: dead-lettered, never mangled */
    sbt_pub(c, "plant/Line1/Setpoint/set", "\xe6\x97\xa5\xe6\x9c\xac", 1);
    d = only_dead_letter(c, q);
    assert_non_null(strstr(sbt_str(d, "reason"), "U+65E5 cannot be represented in code page 1252"));
    json_decref(d);

    /* the server away: deliveries wait in their queue, then are poked */
    sbt_broker_mark_log(b);
    sbt_proc_release(&plc);
    snprintf(want, sizeof want, "lost %s|Line1", service);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    sbt_pub(c, "plant/Line1/Setpoint/set", "7", 1);
    sbt_wait_queue_int(c, q, "depth", 1, WAIT_MS);
    start_plc(&plc, b, "plc2.out", service, NULL, NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "plc2.out");
    sbt_wait_file_text(out, "POKE Setpoint 37", 1, WAIT_MS);
    sbt_wait_queue_int(c, q, "depth", 0, WAIT_MS);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", q);
    assert_int_equal(json_array_size(json_object_get(r, "items")), 0);
    json_decref(r);

    sbt_close(c);
    sbt_proc_release(&plc);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- server role ---- */

static const char server_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: excel\n"
                                    "    type: dde\n"
                                    "    service: '{v0}'\n"
                                    "    topic: plant/{dde_topic}/{item}\n"
                                    "    execute_topic: plant/cmd\n"
                                    "    codepage: 1252\n"
                                    "    max_message: 64\n"
                                    "  - name: strict\n"
                                    "    type: dde\n"
                                    "    service: '{v1}'\n"
                                    "    dde_topics: [Line1]\n"
                                    "    items: [Temp]\n"
                                    "    topic: plant/{dde_topic}/{item}\n"
                                    "routes:\n"
                                    "  - name: values\n"
                                    "    from: plant/+/+\n"
                                    "    retain: true\n"
                                    "    max_depth: 1\n"
                                    "    overflow: drop-oldest\n"
                                    "  - name: pokes\n"
                                    "    from: [plant/Line1/Setpoint, plant/cmd]\n"
                                    "  - name: full\n"
                                    "    from: plant/Full/#\n"
                                    "    max_depth: 1\n";

static void test_server_role(void **state)
{
    sbt_broker *b = *state;
    char service[64], strict[64], out[SBT_PATH_MAX], big[100];
    sbt_proc adv, gone;
    sbt_conn *c;
    json_t *m, *h, *r;
    char *s;

    service_name(service, sizeof service, "xl");
    service_name(strict, sizeof strict, "st");
    sbt_broker_init(b, "dde-server", 1);
    sbt_broker_set(b, 0, service);
    sbt_broker_set(b, 1, strict);
    sbt_broker_config(b, server_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* a value published over jsonl, requested by a legacy client */
    sbt_pub(c, "plant/Line1/Temp", "20.5", -1);
    expect_client("DATA 32302e35", service, "Line1", "request", "Temp", NULL, NULL);
    /* seeded from the retained value after a restart */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    expect_client("DATA 32302e35", service, "Line1", "request", "Temp", NULL, NULL);
    expect_client("NODATA", service, "Line1", "request", "Nope", NULL, NULL);

    /* a hot link starts with the current value, then follows */
    spawn_client(&adv, b, "advise.out", service, "Line1", "advise", "Temp", "3");
    sbt_path(out, sizeof out, b->dir, "advise.out");
    sbt_wait_file_text(out, "DATA 32302e35", 1, WAIT_MS);
    sbt_pub(c, "plant/Line1/Temp", "21", -1);
    sbt_wait_file_text(out, "DATA 3231", 1, WAIT_MS);
    sbt_pub(c, "plant/Line1/Temp", "22", -1);
    sbt_wait_file_text(out, "END", 1, WAIT_MS);
    s = sbt_read_file(out, NULL);
    assert_non_null(strstr(s, "DATA 3232"));
    free(s);
    assert_true(sbt_proc_wait(&adv, WAIT_MS));
    sbt_proc_release(&adv);

    /* CF_TEXT through code page 1252 both ways, CF_UNICODETEXT */
    sbt_pub(c, "plant/Line1/Text",
            "Gr\xc3\xbc\xc3\x9f"
            "e 20\xc2\xb0"
            "C",
            -1);
    expect_client("DATA 4772fcdf65203230b043", service, "Line1", "request", "Text", NULL, NULL);
    expect_client("DATA 47007200fc00df006500200032003000b0004300", service, "Line1", "request",
                  "Text", "unicode", NULL);
    /* text code page 1252 cannot carry: refused with a reason */
    sbt_broker_mark_log(b);
    sbt_pub(c, "plant/Line1/JP", "\xe6\x97\xa5\xe6\x9c\xac", -1);
    expect_client("NODATA", service, "Line1", "request", "JP", NULL, NULL);
    sbt_broker_wait_log(b, "U+65E5 cannot be represented in code page 1252", 1, WAIT_MS);
    expect_client("DATA e5652c67", service, "Line1", "request", "JP", "unicode", NULL);

    /* a registered format passes through as bytes, and only as itself */
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "plant/Line1/Blob",
                 "payload_b64", "AAEC/w==", "headers", "dde-format", "Switchboard Test");
    sbt_expect_op(r, "puback");
    json_decref(r);
    expect_client("DATA 000102ff", service, "Line1", "request", "Blob", "fmt:Switchboard Test",
                  NULL);
    expect_client("NODATA", service, "Line1", "request", "Blob", NULL, NULL);
    sbt_broker_wait_log(b, "the value is in format Switchboard Test", 1, WAIT_MS);

    /* a poke is published (acknowledged after its commit) */
    sbt_sub(c, "pokes", NULL, 10);
    expect_client("ACK", service, "Line1", "poke", "Setpoint", "4772fcdf65", "hex");
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "plant/Line1/Setpoint");
    assert_string_equal(sbt_str(m, "payload"), "Gr\xc3\xbc\xc3\x9f"
                                               "e");
    h = json_object_get(m, "headers");
    assert_string_equal(sbt_str(h, "dde-format"), "CF_TEXT");
    assert_string_equal(sbt_str(h, "dde-item"), "Setpoint");
    assert_string_equal(sbt_str(h, "encoding"), "utf-8");
    sbt_ack(c, "pokes", sbt_int(m, "msg_id"));
    json_decref(m);
    /* a registered format's poke: bytes, with the format's name */
    expect_client("ACK", service, "Line1", "poke", "Setpoint", "00ff", "fmt:Switchboard Test");
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "payload_b64"), "AP8=");
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "dde-format"), "Switchboard Test");
    assert_null(json_object_get(json_object_get(m, "headers"), "encoding"));
    sbt_ack(c, "pokes", sbt_int(m, "msg_id"));
    json_decref(m);
    expect_client("ACK", service, "Line1", "poke", "Setpoint", "4772fcdf65", "hex");
    m = sbt_next_msg(c, WAIT_MS);
    sbt_ack(c, "pokes", sbt_int(m, "msg_id"));
    json_decref(m);
    /* and then served to others */
    expect_client("DATA 4772fcdf65", service, "Line1", "request", "Setpoint", NULL, NULL);
    /* an execute is published to execute_topic */
    expect_client("ACK", service, "Line1", "execute", "[Open(\"x\")]", NULL, NULL);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "plant/cmd");
    assert_string_equal(sbt_str(m, "payload"), "[Open(\"x\")]");
    sbt_ack(c, "pokes", sbt_int(m, "msg_id"));
    json_decref(m);

    /* bad pokes: over max_message, an unpaired surrogate, a full queue */
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    expect_client("NACK", service, "Line1", "poke", "Setpoint", big, NULL);
    sbt_broker_wait_log(b, "is larger than max_message (64 bytes)", 1, WAIT_MS);
    expect_client("NACK", service, "Line1", "poke", "Setpoint", "00d80000", "unicode");
    sbt_broker_wait_log(b, "unpaired UTF-16 surrogate", 1, WAIT_MS);
    expect_client("ACK", service, "Full", "poke", "a", "1", NULL);
    expect_client("NACK", service, "Full", "poke", "a", "2", NULL);
    sbt_broker_wait_log(b, "Full!a refused (DDE_FNOTPROCESSED)", 1, WAIT_MS);

    /* the System topic */
    expect_client("DATA 53797374656d", service, "System", "request", "Topics", NULL, NULL);
    expect_client("DATA 546f70696373095379734974656d7309466f726d6174730948656c70", service,
                  "System", "request", "SysItems", NULL, NULL);
    expect_client("DATA 54455854", service, "System", "request", "Formats", NULL, NULL);

    /* a server of named topics and items: the rest is refused */
    expect_client("NOCONV", strict, "Line2", "connect", NULL, NULL, NULL);
    expect_client("CONNECTED", strict, "Line1", "connect", NULL, NULL, NULL);
    expect_client("DATA 3232", strict, "Line1", "request", "Temp", NULL, NULL);
    expect_client("NODATA", strict, "Line1", "request", "Text", NULL, NULL);
    expect_client("NACK", strict, "Line1", "poke", "Other", "1", NULL);

    /* a client that vanishes in the middle of a hot link */
    spawn_client(&gone, b, "gone.out", service, "Line1", "advise-vanish", "Temp", NULL);
    sbt_path(out, sizeof out, b->dir, "gone.out");
    sbt_wait_file_text(out, "LINKED", 1, WAIT_MS);
    assert_true(sbt_proc_wait(&gone, WAIT_MS));
    sbt_proc_release(&gone);
    sbt_pub(c, "plant/Line1/Temp", "23", -1);
    sbt_pub(c, "plant/Line1/Temp", "24", -1);
    expect_client("DATA 3234", service, "Line1", "request", "Temp", NULL, NULL);
    assert_true(sbt_broker_running(b));

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- pokes while the broker is killed ---- */

/* Commits wait up to 20 ms for company: a poke acknowledged before its
 * commit would be lost by the kill. */
static const char kill_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  store: { commit_max_delay_us: 20000 }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: excel\n"
                                  "    type: dde\n"
                                  "    service: '{v0}'\n"
                                  "    topic: plant/{dde_topic}/{item}\n"
                                  "routes:\n"
                                  "  - name: seq\n"
                                  "    from: plant/Line1/Seq\n"
                                  "    durability: fsync\n";

#define KILL_POKES 400

static void test_pokes_during_kill(void **state)
{
    sbt_broker *b = *state;
    char service[64], out[SBT_PATH_MAX], count[16];
    static unsigned char acked[KILL_POKES + 1], stored[KILL_POKES + 1];
    sbt_proc poker;
    sbt_conn *c;
    char *s, *line;
    int nacked = 0, nfail = 0;
    int64_t depth;

    memset(acked, 0, sizeof acked);
    memset(stored, 0, sizeof stored);
    service_name(service, sizeof service, "kill");
    sbt_broker_init(b, "dde-kill", 1);
    sbt_broker_set(b, 0, service);
    sbt_broker_config(b, kill_config);
    sbt_broker_start(b);

    snprintf(count, sizeof count, "%d", KILL_POKES);
    spawn_client(&poker, b, "pokes.out", service, "Line1", "pokes", "Seq", count);
    sbt_path(out, sizeof out, b->dir, "pokes.out");
    sbt_wait_file_text(out, "ACK ", 40, WAIT_MS);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    sbt_wait_file_text(out, "DONE", 1, 90000);
    assert_true(sbt_proc_wait(&poker, WAIT_MS));
    sbt_proc_release(&poker);

    s = sbt_read_file(out, NULL);
    assert_non_null(s);
    for (line = strtok(s, "\r\n"); line != NULL; line = strtok(NULL, "\r\n")) {
        int v;
        if (sscanf(line, "ACK %d", &v) == 1 && v >= 1 && v <= KILL_POKES) {
            acked[v] = 1;
            nacked++;
        } else if (strncmp(line, "FAIL", 4) == 0 || strncmp(line, "NACK", 4) == 0) {
            nfail++;
        }
    }
    free(s);
    assert_int_equal(nacked, KILL_POKES);
    /* the kill interrupted the client at least once */
    assert_true(nfail >= 1);

    c = sbt_connect(b->port[0]);
    depth = sbt_queue_int(c, "seq", "depth");
    assert_true(depth >= KILL_POKES);
    sbt_sub(c, "seq", NULL, 500);
    for (int64_t i = 0; i < depth; i++) {
        json_t *m = sbt_next_msg(c, WAIT_MS);
        int v = atoi(sbt_str(m, "payload"));
        if (v >= 1 && v <= KILL_POKES)
            stored[v] = 1;
        sbt_ack(c, "seq", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    for (int v = 1; v <= KILL_POKES; v++)
        if (acked[v] && !stored[v])
            fail_msg("poke %d was acknowledged with DDE_FACK but is not in the queue", v);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- config/examples/dde-bridge.yaml ---- */

static void test_example(void **state)
{
    sbt_broker *b = *state;
    char plc_name[64], xl_name[64], out[SBT_PATH_MAX];
    char topic[256], payload[256];
    char *tmpl;
    sbt_proc plc;
    sbt_conn *c;
    sbt_tcp *mq;

    service_name(plc_name, sizeof plc_name, "expl");
    service_name(xl_name, sizeof xl_name, "exxl");
    tmpl = sbt_example("dde-bridge.yaml");
    sbt_example_replace(&tmpl, "dde-bridge.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&tmpl, "dde-bridge.yaml", "listen: 127.0.0.1:7878",
                        "listen: 127.0.0.1:{port0}");
    sbt_example_replace(&tmpl, "dde-bridge.yaml", "listen: 127.0.0.1:1883",
                        "listen: 127.0.0.1:{port1}");
    sbt_example_replace(&tmpl, "dde-bridge.yaml", "service: PLCSERVER", "service: '{v0}'");
    sbt_example_replace(&tmpl, "dde-bridge.yaml", "service: SWITCHBOARD", "service: '{v1}'");

    sbt_broker_init(b, "dde-example", 2);
    start_plc(&plc, b, "plc.out", plc_name, "--interval", "100", NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "plc.out");
    sbt_broker_set(b, 0, plc_name);
    sbt_broker_set(b, 1, xl_name);
    sbt_broker_config(b, tmpl);
    free(tmpl);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "[plc] linked to", 1, WAIT_MS);
    sbt_broker_wait_log(b, "[plc-write] linked to", 1, WAIT_MS);

    /* PLC items to MQTT: a client that comes later gets the retained
     * current value. The adapter requests it before it logs "linked", but
     * the value is retained only once committed, and a client that
     * subscribes in between gets it neither live nor retained: one that
     * got nothing leaves and comes again. */
    for (int64_t deadline = sbt_now_ms() + WAIT_MS;;) {
        mq = sbt_mqtt_tcp_connect(b->port[1], "dde-example");
        sbt_mqtt_tcp_subscribe(mq, "plant/Line1/Temp");
        if (sbt_mqtt_tcp_next_publish(mq, topic, sizeof topic, payload, sizeof payload, 1000) ==
            0)
            break;
        sbt_tcp_close(mq);
        if (sbt_now_ms() > deadline)
            fail_msg("no retained plant/Line1/Temp within %d ms", WAIT_MS);
    }
    assert_string_equal(topic, "plant/Line1/Temp");
    assert_string_equal(payload, "21.5");
    /* MQTT values into the PLC ... */
    sbt_mqtt_tcp_publish(mq, "plant/Line1/Setpoint/set", "55", 0);
    sbt_wait_file_text(out, "POKE Setpoint 3535", 1, WAIT_MS);
    /* ... and into Excel-style links (=SWITCHBOARD|Line1!Target) */
    sbt_mqtt_tcp_publish(mq, "plant/Line1/Target", "7.5", 1);
    c = sbt_connect(b->port[0]);
    {
        int64_t deadline = sbt_now_ms() + WAIT_MS;
        for (;;) {
            char *o = client(xl_name, "Line1", "request", "Target", NULL, NULL);
            int ok = strstr(o, "DATA 372e35") != NULL;
            free(o);
            if (ok)
                break;
            if (sbt_now_ms() > deadline)
                fail_msg("=%s|Line1!Target never showed 7.5", xl_name);
            sbt_poll_pause(20);
        }
    }
    /* and the PLC's own values too */
    expect_client("DATA 32312e35", xl_name, "Line1", "request", "Temp", NULL, NULL);
    sbt_tcp_close(mq);
    sbt_close(c);
    sbt_proc_release(&plc);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- DDE adapters hosted by the session agent ---- */

/* broker.desktop: agent under `run`: the broker serves an endpoint and
 * starts `switchboard agent` in its own session, which hosts the three
 * DDE adapters (desktop types) while the jsonl listener stays here. */
static const char agent_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "  desktop: agent\n"
                                   "  agent: { endpoint: '{v2}' }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "  - name: plc\n"
                                   "    type: dde\n"
                                   "    role: client\n"
                                   "    service: '{v0}'\n"
                                   "    dde_topic: Line1\n"
                                   "    items: [Temp]\n"
                                   "    topic: plant/{dde_topic}/{item}\n"
                                   "  - name: plc-write\n"
                                   "    type: dde\n"
                                   "    role: client\n"
                                   "    service: '{v0}'\n"
                                   "    dde_topic: Line1\n"
                                   "    topic: plant/{dde_topic}/{item}/set\n"
                                   "  - name: excel\n"
                                   "    type: dde\n"
                                   "    service: '{v1}'\n"
                                   "    topic: plant/{dde_topic}/{item}\n"
                                   "routes:\n"
                                   "  - name: values\n"
                                   "    from: plant/+/+\n"
                                   "    retain: true\n"
                                   "  - name: to-plc\n"
                                   "    from: plant/Line1/+/set\n"
                                   "    to: plc-write\n";

static void test_in_agent(void **state)
{
    sbt_broker *b = *state;
    char plc_name[64], xl_name[64], endpoint[96], out[SBT_PATH_MAX];
    sbt_proc plc;
    sbt_conn *c;
    json_t *m;

    service_name(plc_name, sizeof plc_name, "agpl");
    service_name(xl_name, sizeof xl_name, "agxl");
    snprintf(endpoint, sizeof endpoint, "sbt-dde-agent-%lu-{session}",
             (unsigned long)GetCurrentProcessId());
    sbt_broker_init(b, "dde-agent", 1);
    start_plc(&plc, b, "plc.out", plc_name, NULL, NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "plc.out");
    sbt_broker_set(b, 0, plc_name);
    sbt_broker_set(b, 1, xl_name);
    sbt_broker_set(b, 2, endpoint);
    sbt_broker_config(b, agent_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected (pid", 1, WAIT_MS);
    /* the agent's adapters log through the broker */
    sbt_broker_wait_log(b, "[plc] (agent of session", 1, WAIT_MS);
    sbt_broker_wait_log(b, "[plc-write] (agent of session", 1, WAIT_MS);
    /* the agent's DDE server keeps its values through a subscription here */
    sbt_broker_wait_log(b, "/dde/excel] created subscription", 1, WAIT_MS);
    c = sbt_connect(b->port[0]);

    /* the legacy server's item, published by the agent */
    sbt_sub(c, "values", NULL, 10);
    m = next_on(c, "values", "plant/Line1/Temp");
    assert_string_equal(sbt_str(m, "payload"), "21.5");
    assert_non_null(strstr(sbt_str(json_object_get(m, "headers"), "source"), "plc"));
    sbt_ack(c, "values", sbt_int(m, "msg_id"));
    json_decref(m);

    /* a value published here, served to a legacy client by the agent */
    sbt_pub(c, "plant/Line1/Target", "7.5", 2); /* values, the agent's excel */
    {
        int64_t deadline = sbt_now_ms() + WAIT_MS;
        for (;;) {
            char *o = client(xl_name, "Line1", "request", "Target", NULL, NULL);
            int ok = strstr(o, "DATA 372e35") != NULL;
            free(o);
            if (ok)
                break;
            if (sbt_now_ms() > deadline)
                fail_msg("=%s|Line1!Target never showed 7.5", xl_name);
            sbt_poll_pause(20);
        }
    }
    /* a legacy client's poke, acknowledged by the agent after the commit here */
    expect_client("ACK", xl_name, "Line1", "poke", "Setpoint", "3132", "hex");
    m = next_on(c, "values", "plant/Line1/Setpoint");
    assert_string_equal(sbt_str(m, "payload"), "12");
    sbt_ack(c, "values", sbt_int(m, "msg_id"));
    json_decref(m);

    /* a delivery poked into the legacy server by the agent, acknowledged
     * back: the queue empties */
    sbt_pub(c, "plant/Line1/Setpoint/set", "42.5", 1);
    sbt_wait_file_text(out, "POKE Setpoint 34322e35", 1, WAIT_MS);
    sbt_wait_queue_int(c, "to-plc:plc-write", "depth", 0, WAIT_MS);

    sbt_close(c);
    sbt_broker_stop(b);
    sbt_proc_release(&plc);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_role, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_client_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_server_role, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_pokes_during_kill, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_in_agent, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
