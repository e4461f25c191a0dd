/*
 * The WM_COPYDATA adapter with real processes: the broker (switchboard.exe
 * run), a legacy sender (cd_sender.exe, SendMessage and its return value)
 * and a legacy receiving window (cd_receiver.exe), and this program as the
 * jsonl and MQTT clients. Under Wine and unchanged on Windows.
 *
 * - in: dwData through data_map and the {data} template, a strict map,
 *   text in a code page and in UTF-16, bytes; refusals (over max_message,
 *   a number a strict map does not name, a full queue) answered FALSE and
 *   logged with the sender's process id; UIPI allowed through
 *   ChangeWindowMessageFilterEx (logged); the adapter's counters;
 * - every message whose SendMessage returned TRUE is stored after the
 *   broker is killed mid-stream;
 * - WM_COPYDATA -> store -> an MQTT subscriber;
 * - out: jsonl -> a receiving window that appears late, dwData from a
 *   header, the map, the template and the default; a window that refuses
 *   (FALSE -> retries -> dead letter) and one that hangs (timeout ->
 *   retries -> dead letter); a message-only window; a window that goes
 *   away, logged once;
 * - config/examples/copydata-bridge.yaml runs;
 * - both directions hosted by the session agent (broker.desktop: agent).
 *
 * Window classes carry the test's process id, so parallel runs do not
 * meet. Nothing sleeps a fixed time: every wait polls with a deadline.
 */
#include "tests/integration/harness.h"
#include "tests/integration/mqtt_tcp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define WAIT_MS 20000

/* ---- the legacy programs ---- */

static void class_name(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "SBT%lu%s", (unsigned long)GetCurrentProcessId(), tag);
}

/* Runs cd_sender CLASS TITLE send DWDATA TEXT [how]; returns its first line. */
static char *send_one(const char *cls, const char *title, const char *data, const char *text,
                      const char *how)
{
    char *argv[] = {(char *)sbt_env("SB_CD_SENDER"),
                    (char *)cls,
                    (char *)title,
                    "send",
                    (char *)data,
                    (char *)text,
                    (char *)how,
                    NULL};
    char *out = NULL;
    (void)sbt_run(argv, NULL, 60000, &out, NULL);
    assert_non_null(out);
    out[strcspn(out, "\r\n")] = '\0';
    return out;
}

static void expect_send(const char *want, const char *cls, const char *title, const char *data,
                        const char *text, const char *how)
{
    char *got = send_one(cls, title, data, text, how);
    if (strcmp(got, want) != 0)
        fail_msg("cd_sender %s %s send %s %s %s: expected %s, got %s", cls, title, data, text,
                 how != NULL ? how : "", want, got);
    free(got);
}

/* Starts cd_receiver CLASS TITLE [opts] with its output in dir/out_name
 * and waits for READY. */
static void start_receiver(sbt_proc *p, sbt_broker *b, const char *out_name, const char *cls,
                           const char *title, const char *o1, const char *o2)
{
    char out[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_env("SB_CD_RECEIVER"),
                    (char *)cls,
                    (char *)title,
                    (char *)o1,
                    (char *)o2,
                    NULL};
    sbt_path(out, sizeof out, b->dir, out_name);
    remove(out);
    memset(p, 0, sizeof(*p));
    assert_int_equal(sbt_spawn(p, argv, NULL, out), 0);
    sbt_wait_file_text(out, "READY", 1, WAIT_MS);
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

/* Expects the next delivery on sub: topic, payload (or NULL), acked. */
static void expect_msg(sbt_conn *c, const char *sub, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    if (payload != NULL)
        assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

/* The only dead letter of sub (new reference), purged. */
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

/* A counter of adapter `name` in the stats. */
static int64_t adapter_stat(sbt_conn *c, const char *name, const char *key)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats");
    json_t *a = json_object_get(json_object_get(r, "adapters"), name);
    int64_t v;
    if (a == NULL)
        fail_msg("the stats have no counters of adapter %s", name);
    v = sbt_int(a, key);
    json_decref(r);
    return v;
}

/* ---- in ---- */

static const char in_config[] = "broker:\n"
                                "  data_dir: '{data}'\n"
                                "  admin: { endpoint: 'off' }\n"
                                "  log: { level: debug }\n"
                                "adapters:\n"
                                "  - name: clients\n"
                                "    type: tcp\n"
                                "    listen: 127.0.0.1:{port0}\n"
                                "    protocol: jsonl\n"
                                "  - name: pos\n"
                                "    type: copydata\n"
                                "    class: '{v0}'\n"
                                "    title: POS\n"
                                "    data_map: ['1=pos/orders/new', '2 = pos/orders/cancel',\n"
                                "               '0x9=full/x']\n"
                                "    topic: '{v2}'\n"
                                "    encoding: ansi\n"
                                "    codepage: 1252\n"
                                "    max_message: 64\n"
                                "  - name: strict\n"
                                "    type: copydata\n"
                                "    class: '{v0}'\n"
                                "    title: Strict\n"
                                "    data_map: ['7=strict/seven']\n"
                                "    strict: true\n"
                                "    allow_lower_integrity: true\n"
                                "  - name: raw\n"
                                "    type: copydata\n"
                                "    class: '{v1}'\n"
                                "  - name: wide\n"
                                "    type: copydata\n"
                                "    class: '{v0}'\n"
                                "    title: Wide\n"
                                "    encoding: utf-16\n"
                                "routes:\n"
                                "  - name: rx\n"
                                "    from: [pos/#, strict/#, raw/#, wide/#]\n"
                                "  - name: full\n"
                                "    from: full/#\n"
                                "    max_depth: 1\n";

static void test_in(void **state)
{
    sbt_broker *b = *state;
    char cls[64], cls2[64];
    sbt_conn *c;
    json_t *m, *h;
    char *log;

    class_name(cls, sizeof cls, "in");
    class_name(cls2, sizeof cls2, "raw");
    sbt_broker_init(b, "copydata-in", 1);
    sbt_broker_set(b, 0, cls);
    sbt_broker_set(b, 1, cls2);
    sbt_broker_set(b, 2, "pos/other/{data}"); /* {data} in a template is the harness's */
    sbt_broker_config(b, in_config);
    sbt_broker_start(b);
    /* UIPI: the call is made (Wine cannot show its effect) */
    sbt_broker_wait_log(b,
                        "[strict] WM_COPYDATA allowed from processes of lower integrity "
                        "(ChangeWindowMessageFilterEx, MSGFLT_ALLOW)",
                        1, WAIT_MS);
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "[pos] WM_COPYDATA allowed"), 0);
    free(log);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "rx", NULL, 100);

    /* the map, text in code page 1252 with its NUL (as C strings go) */
    expect_send("TRUE", cls, "POS", "1", "hello", "ansi");
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "pos/orders/new");
    assert_string_equal(sbt_str(m, "payload"), "hello");
    h = json_object_get(m, "headers");
    assert_string_equal(sbt_str(h, "copydata-data"), "1");
    assert_string_equal(sbt_str(h, "encoding"), "utf-8");
    assert_true(atol(sbt_str(h, "copydata-pid")) > 0);
    assert_non_null(strstr(sbt_str(h, "source"), "pos copydata pid "));
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    expect_send("TRUE", cls, "POS", "2", "bye", "ansi");
    expect_msg(c, "rx", "pos/orders/cancel", "bye");
    /* numbers the map does not name: the template; Gr\xfc\xdf" "e in 1252 */
    expect_send("TRUE", cls, "POS", "3", "4772fcdf65", "hex");
    expect_msg(c, "rx", "pos/other/3",
               "Gr\xc3\xbc\xc3\x9f"
               "e");
    /* UTF-16 (Grüße, with its NUL) */
    expect_send("TRUE", cls, "Wide", "4", "47007200fc00df0065000000", "hex");
    expect_msg(c, "rx", "wide/4",
               "Gr\xc3\xbc\xc3\x9f"
               "e");
    /* bytes as they are, class only (the default title is the adapter's name) */
    expect_send("TRUE", cls2, "raw", "5", "61006263", "hex");
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "raw/5");
    assert_string_equal(sbt_str(m, "payload_b64"), "YQBiYw==");
    assert_null(json_object_get(json_object_get(m, "headers"), "encoding"));
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);

    /* refusals: FALSE, logged with the sender's process id */
    expect_send("FALSE", cls, "POS", "1",
                "0123456789012345678901234567890123456789012345678901234567890123456789", "ansi");
    sbt_broker_wait_log(b, "is larger than max_message (64 bytes)", 1, WAIT_MS);
    sbt_broker_wait_log(b, "[pos] WM_COPYDATA (dwData 1) from pid ", 1, WAIT_MS);
    expect_send("TRUE", cls, "Strict", "7", "x", NULL);
    expect_msg(c, "rx", "strict/seven", "x");
    expect_send("FALSE", cls, "Strict", "8", "x", NULL);
    sbt_broker_wait_log(b, "dwData 8 is not in data_map (strict)", 1, WAIT_MS);
    /* text that is not valid in the code page's sense: UTF-16 with a lone surrogate */
    expect_send("FALSE", cls, "Wide", "4", "00d80000", "hex");
    sbt_broker_wait_log(b, "unpaired UTF-16 surrogate", 1, WAIT_MS);
    /* a full queue (max_depth 1, overflow reject) */
    expect_send("TRUE", cls, "POS", "9", "a", "ansi");
    expect_send("FALSE", cls, "POS", "9", "b", "ansi");
    sbt_broker_wait_log(b, "[pos] WM_COPYDATA (dwData 9) from pid ", 1, WAIT_MS);

    /* the adapters' own counters */
    assert_int_equal(adapter_stat(c, "pos", "received"), 6);
    assert_int_equal(adapter_stat(c, "pos", "committed"), 4);
    assert_int_equal(adapter_stat(c, "pos", "refused"), 2);
    assert_int_equal(adapter_stat(c, "strict", "refused"), 1);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- messages while the broker is killed ---- */

/* Commits wait up to 20 ms for company: a TRUE answered before its commit
 * would be lost by the kill. */
static const char kill_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  store: { commit_max_delay_us: 20000 }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: pos\n"
                                  "    type: copydata\n"
                                  "    class: '{v0}'\n"
                                  "    title: POS\n"
                                  "    topic: '{v1}'\n"
                                  "routes:\n"
                                  "  - name: seq\n"
                                  "    from: pos/#\n"
                                  "    durability: fsync\n";

#define KILL_MESSAGES 400

static void test_kill(void **state)
{
    sbt_broker *b = *state;
    char cls[64], out[SBT_PATH_MAX], count[16];
    static unsigned char acked[KILL_MESSAGES + 1], stored[KILL_MESSAGES + 1];
    char *argv[8];
    sbt_proc sender;
    sbt_conn *c;
    char *s, *line;
    int ntrue = 0, nfalse = 0;
    int64_t depth;

    memset(acked, 0, sizeof acked);
    memset(stored, 0, sizeof stored);
    class_name(cls, sizeof cls, "kill");
    sbt_broker_init(b, "copydata-kill", 1);
    sbt_broker_set(b, 0, cls);
    sbt_broker_set(b, 1, "pos/{data}");
    sbt_broker_config(b, kill_config);
    sbt_broker_start(b);

    snprintf(count, sizeof count, "%d", KILL_MESSAGES);
    argv[0] = (char *)sbt_env("SB_CD_SENDER");
    argv[1] = cls;
    argv[2] = "POS";
    argv[3] = "seq";
    argv[4] = count;
    argv[5] = "1";
    argv[6] = NULL;
    sbt_path(out, sizeof out, b->dir, "seq.out");
    memset(&sender, 0, sizeof sender);
    assert_int_equal(sbt_spawn(&sender, argv, NULL, out), 0);
    sbt_wait_file_text(out, "TRUE ", 40, WAIT_MS);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    sbt_wait_file_text(out, "DONE", 1, 90000);
    assert_true(sbt_proc_wait(&sender, WAIT_MS));
    sbt_proc_release(&sender);

    s = sbt_read_file(out, NULL);
    assert_non_null(s);
    for (line = strtok(s, "\r\n"); line != NULL; line = strtok(NULL, "\r\n")) {
        int v;
        if (sscanf(line, "TRUE %d", &v) == 1 && v >= 1 && v <= KILL_MESSAGES) {
            acked[v] = 1;
            ntrue++;
        } else if (strncmp(line, "FALSE", 5) == 0) {
            nfalse++;
        }
    }
    free(s);
    assert_int_equal(ntrue, KILL_MESSAGES);
    /* the kill interrupted a SendMessage at least once */
    assert_true(nfalse >= 1);

    c = sbt_connect(b->port[0]);
    depth = sbt_queue_int(c, "seq", "depth");
    assert_true(depth >= KILL_MESSAGES);
    sbt_sub(c, "seq", NULL, 500);
    for (int64_t i = 0; i < depth; i++) {
        json_t *m = sbt_next_msg(c, WAIT_MS);
        int v = atoi(sbt_str(m, "payload"));
        if (v >= 1 && v <= KILL_MESSAGES)
            stored[v] = 1;
        sbt_ack(c, "seq", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    for (int v = 1; v <= KILL_MESSAGES; v++)
        if (acked[v] && !stored[v])
            fail_msg("message %d: SendMessage returned TRUE but it is not in the queue", v);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- WM_COPYDATA -> store -> MQTT ---- */

static const char mqtt_config[] = "broker:\n"
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
                                  "  - name: pos\n"
                                  "    type: copydata\n"
                                  "    class: '{v0}'\n"
                                  "    title: POS\n"
                                  "    data_map: ['1=pos/orders']\n"
                                  "    encoding: ansi\n"
                                  "routes:\n"
                                  "  - name: orders\n"
                                  "    from: pos/#\n"
                                  "    durability: fsync\n";

static void test_to_mqtt(void **state)
{
    sbt_broker *b = *state;
    char cls[64], topic[256], payload[256];
    sbt_tcp *mq;

    class_name(cls, sizeof cls, "mq");
    sbt_broker_init(b, "copydata-mqtt", 2);
    sbt_broker_set(b, 0, cls);
    sbt_broker_config(b, mqtt_config);
    sbt_broker_start(b);
    mq = sbt_mqtt_tcp_connect(b->port[1], "copydata-test");
    sbt_mqtt_tcp_subscribe(mq, "pos/#");
    expect_send("TRUE", cls, "POS", "1", "order 17", "ansi");
    sbt_mqtt_tcp_read_publish(mq, topic, sizeof topic, payload, sizeof payload);
    assert_string_equal(topic, "pos/orders");
    assert_string_equal(payload, "order 17");
    sbt_tcp_close(mq);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- out ---- */

static const char out_config[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: legacy\n"
    "    type: copydata\n"
    "    direction: out\n"
    "    class: '{v0}'\n"
    "    title: Legacy\n"
    "    data_map: ['5=legacy/orders']\n"
    "    topic: '{v1}'\n"
    "    dwdata: 0x10\n"
    "    encoding: utf-8\n"
    "    send_timeout: 300ms\n"
    "    reconnect_backoff: 20ms\n"
    "    reconnect_max_backoff: 100ms\n"
    "routes:\n"
    "  - name: to-legacy\n"
    "    from: legacy/#\n"
    "    to: legacy\n"
    "    retry: { max_attempts: 3, backoff: 20ms, max_backoff: 50ms }\n";

static void test_out(void **state)
{
    sbt_broker *b = *state;
    const char *q = "to-legacy:legacy";
    char cls[64], out[SBT_PATH_MAX], want[128];
    sbt_proc rcv;
    sbt_conn *c;
    json_t *r, *d;
    char *log;

    class_name(cls, sizeof cls, "out");
    sbt_broker_init(b, "copydata-out", 1);
    sbt_broker_set(b, 0, cls);
    sbt_broker_set(b, 1, "legacy/cmd/{data}");
    sbt_broker_config(b, out_config);
    sbt_broker_start(b);
    snprintf(want, sizeof want, "[legacy] no window of class %s, title Legacy yet", cls);
    sbt_broker_wait_log(b, want, 1, WAIT_MS);
    c = sbt_connect(b->port[0]);

    /* the window is not there yet: the delivery waits in its queue */
    sbt_pub(c, "legacy/orders", "a", 1);
    sbt_wait_queue_int(c, q, "depth", 1, WAIT_MS);
    start_receiver(&rcv, b, "rcv.out", cls, "Legacy", NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "rcv.out");
    sbt_broker_wait_log(b, "[legacy] sending to the window of class", 1, WAIT_MS);
    /* dwData from the map, UTF-8 with a NUL; wParam is the broker's window */
    sbt_wait_file_text(out, "DATA 5 6100 ", 1, WAIT_MS);
    sbt_wait_queue_int(c, q, "depth", 0, WAIT_MS);
    /* from the template, a header, and the default */
    sbt_pub(c, "legacy/cmd/42", "b", 1);
    sbt_wait_file_text(out, "DATA 42 6200 ", 1, WAIT_MS);
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "legacy/x", "payload", "c",
                 "headers", "copydata-data", "0x99");
    sbt_expect_op(r, "puback");
    json_decref(r);
    sbt_wait_file_text(out, "DATA 153 6300 ", 1, WAIT_MS);
    sbt_pub(c, "legacy/other", "d", 1);
    sbt_wait_file_text(out, "DATA 16 6400 ", 1, WAIT_MS);
    sbt_wait_queue_int(c, q, "depth", 0, WAIT_MS);
    /* text UTF-8 cannot carry with a NUL: dead-lettered, never cut short */
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "legacy/other", "payload_b64", "YQBi");
    sbt_expect_op(r, "puback");
    json_decref(r);
    d = only_dead_letter(c, q);
    assert_non_null(strstr(sbt_str(d, "reason"), "NUL character"));
    json_decref(d);

    /* the window goes away (logged once) and a refusing one comes */
    sbt_broker_mark_log(b);
    sbt_proc_release(&rcv);
    sbt_broker_wait_log(b, "went away: deliveries wait for another one", 1, WAIT_MS);
    start_receiver(&rcv, b, "refuse.out", cls, "Legacy", "--refuse", "16");
    sbt_path(out, sizeof out, b->dir, "refuse.out");
    sbt_broker_wait_log(b, "[legacy] sending to the window of class", 1, WAIT_MS);
    sbt_pub(c, "legacy/other", "e", 1);
    sbt_wait_file_text(out, "REFUSED 16", 3, WAIT_MS);
    d = only_dead_letter(c, q);
    assert_non_null(strstr(sbt_str(d, "reason"), "returned FALSE"));
    assert_int_equal(sbt_int(d, "attempts"), 3);
    json_decref(d);
    log = sbt_broker_log_since(b);
    assert_int_equal(sbt_count(log, "went away"), 1);
    free(log);

    /* a window that hangs: timeouts, retried, dead-lettered */
    sbt_proc_release(&rcv);
    sbt_broker_wait_log(b, "went away", 2, WAIT_MS);
    start_receiver(&rcv, b, "hang.out", cls, "Legacy", "--hang", "1000");
    sbt_broker_wait_log(b, "[legacy] sending to the window of class", 2, WAIT_MS);
    sbt_pub(c, "legacy/other", "f", 1);
    d = only_dead_letter(c, q);
    assert_non_null(strstr(sbt_str(d, "reason"), "no answer within 300 ms"));
    json_decref(d);
    sbt_proc_release(&rcv);

    /* a message-only window is found too */
    sbt_broker_wait_log(b, "went away", 3, WAIT_MS);
    start_receiver(&rcv, b, "mo.out", cls, "Legacy", "--message-only", NULL);
    sbt_path(out, sizeof out, b->dir, "mo.out");
    sbt_pub(c, "legacy/orders", "g", 1);
    sbt_wait_file_text(out, "DATA 5 6700 ", 1, WAIT_MS);
    sbt_wait_queue_int(c, q, "depth", 0, WAIT_MS);
    /* a, b, c, d, g; the NUL text, e and f three times each */
    assert_int_equal(adapter_stat(c, "legacy", "acked"), 5);
    assert_int_equal(adapter_stat(c, "legacy", "failed"), 9);

    sbt_close(c);
    sbt_proc_release(&rcv);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- config/examples/copydata-bridge.yaml ---- */

static void test_example(void **state)
{
    sbt_broker *b = *state;
    char in_cls[64], out_cls[64], out[SBT_PATH_MAX];
    char topic[256], payload[256];
    char *tmpl;
    sbt_proc rcv;
    sbt_tcp *mq;

    class_name(in_cls, sizeof in_cls, "exin");
    class_name(out_cls, sizeof out_cls, "exout");
    tmpl = sbt_example("copydata-bridge.yaml");
    sbt_example_replace(&tmpl, "copydata-bridge.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&tmpl, "copydata-bridge.yaml", "listen: 127.0.0.1:7878",
                        "listen: 127.0.0.1:{port0}");
    sbt_example_replace(&tmpl, "copydata-bridge.yaml", "listen: 127.0.0.1:1883",
                        "listen: 127.0.0.1:{port1}");
    sbt_example_replace(&tmpl, "copydata-bridge.yaml", "class: SwitchboardPOS", "class: '{v0}'");
    sbt_example_replace(&tmpl, "copydata-bridge.yaml", "class: LegacyLabelPrinter",
                        "class: '{v1}'");

    sbt_broker_init(b, "copydata-example", 2);
    sbt_broker_set(b, 0, in_cls);
    sbt_broker_set(b, 1, out_cls);
    sbt_broker_config(b, tmpl);
    free(tmpl);
    sbt_broker_start(b);
    start_receiver(&rcv, b, "printer.out", out_cls, "Labels", NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "printer.out");

    /* the POS program's orders to MQTT */
    mq = sbt_mqtt_tcp_connect(b->port[1], "copydata-example");
    sbt_mqtt_tcp_subscribe(mq, "shop/#");
    expect_send("TRUE", in_cls, "orders", "1", "order 4711", "ansi");
    sbt_mqtt_tcp_read_publish(mq, topic, sizeof topic, payload, sizeof payload);
    assert_string_equal(topic, "shop/orders/new");
    assert_string_equal(payload, "order 4711");
    sbt_tcp_close(mq);
    /* its clean session's queue (shop/#) goes with the disconnect: wait for
     * it, or the label below may still be routed there too */
    sbt_broker_wait_log(b, "(client copydata-example): disconnected", 1, WAIT_MS);
    /* labels from the jsonl side to the printer program's window (dwData 2) */
    {
        sbt_conn *c = sbt_connect(b->port[0]);
        sbt_pub(c, "shop/labels/print", "LBL 4711", 1);
        sbt_wait_file_text(out, "DATA 2 4c424c203437313100 ", 1, WAIT_MS);
        sbt_close(c);
    }
    sbt_proc_release(&rcv);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- both directions in the session agent ---- */

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
                                   "  - name: pos\n"
                                   "    type: copydata\n"
                                   "    class: '{v0}'\n"
                                   "    title: POS\n"
                                   "    topic: '{v3}'\n"
                                   "  - name: legacy\n"
                                   "    type: copydata\n"
                                   "    direction: out\n"
                                   "    class: '{v1}'\n"
                                   "routes:\n"
                                   "  - name: rx\n"
                                   "    from: pos/#\n"
                                   "    max_depth: 2\n"
                                   "  - name: to-legacy\n"
                                   "    from: legacy/#\n"
                                   "    to: legacy\n";

static void test_in_agent(void **state)
{
    sbt_broker *b = *state;
    char in_cls[64], out_cls[64], endpoint[96], out[SBT_PATH_MAX];
    sbt_proc rcv;
    sbt_conn *c;
    json_t *m;

    class_name(in_cls, sizeof in_cls, "agin");
    class_name(out_cls, sizeof out_cls, "agout");
    snprintf(endpoint, sizeof endpoint, "sbt-cd-agent-%lu-{session}",
             (unsigned long)GetCurrentProcessId());
    sbt_broker_init(b, "copydata-agent", 1);
    sbt_broker_set(b, 0, in_cls);
    sbt_broker_set(b, 1, out_cls);
    sbt_broker_set(b, 2, endpoint);
    sbt_broker_set(b, 3, "pos/{data}");
    sbt_broker_config(b, agent_config);
    sbt_broker_start(b);
    start_receiver(&rcv, b, "rcv.out", out_cls, "whatever", NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "rcv.out");
    sbt_broker_wait_log(b, "connected (pid", 1, WAIT_MS);
    sbt_broker_wait_log(b, "[pos] (agent of session", 1, WAIT_MS);
    sbt_broker_wait_log(b, "[legacy] (agent of session", 1, WAIT_MS);
    c = sbt_connect(b->port[0]);

    /* TRUE once committed here; FALSE when this broker refuses (full) */
    expect_send("TRUE", in_cls, "POS", "3", "one", NULL);
    expect_send("TRUE", in_cls, "POS", "3", "two", NULL);
    expect_send("FALSE", in_cls, "POS", "3", "three", NULL);
    sbt_sub(c, "rx", NULL, 10);
    m = next_on(c, "rx", "pos/3");
    assert_string_equal(sbt_str(m, "payload"), "one");
    assert_non_null(strstr(sbt_str(json_object_get(m, "headers"), "source"), "pos copydata pid"));
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);

    /* sent by the agent, acknowledged back: the queue empties */
    sbt_pub(c, "legacy/x", "hi", 1);
    sbt_wait_file_text(out, "DATA 0 6869 ", 1, WAIT_MS);
    sbt_wait_queue_int(c, "to-legacy:legacy", "depth", 0, WAIT_MS);

    sbt_close(c);
    sbt_broker_stop(b);
    sbt_proc_release(&rcv);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_in, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_kill, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_to_mqtt, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_out, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_in_agent, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
