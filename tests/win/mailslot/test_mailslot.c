/*
 * Mailslot adapters with real processes: the broker (switchboard.exe run)
 * on one side, this test program on the other, checked through the jsonl
 * TCP adapter of the integration harness.
 *
 * - source: messages this program writes into the broker's mailslot are
 *   published (topic template, binary payloads, the publish source recorded
 *   with dead letters); a message over max_message is lost, never
 *   truncated; a second broker cannot take the same mailslot; a bad SDDL
 *   stops the start with an error naming the adapter;
 * - sink: deliveries arrive in this program's own mailslot, in order; a
 *   missing mailslot is retried until it appears;
 * - network targets: more than 424 bytes to \\*\... or \\DOMAIN\... is
 *   refused and dead-lettered with the reason. Wine cannot broadcast (opening
 *   \\*\mailslot\x fails with ERROR_PATH_NOT_FOUND): there the test checks
 *   that this failure is nacked, retried and logged; on Windows, that the
 *   broadcast is acknowledged;
 * - end to end: a raw line written into a named pipe comes out of a
 *   mailslot (pipe -> store -> mailslot);
 * - config/examples/windows-pipe-to-mailslot.yaml as shipped (names of this
 *   run, a free port): pipe messages arrive in the mailslot, and wait in the
 *   queue while the mailslot's reader is away.
 *
 * Mailslot names carry the test's process id, so parallel runs do not meet.
 * Nothing sleeps a fixed time: every wait polls with a deadline. The
 * broker's mailslots keep the default DACL (SYSTEM, Administrators, the
 * interactive user): on Windows the tests run in an interactive session or
 * elevated (Wine checks a DACL when the mailslot is created, not when a
 * writer opens it).
 */
#include "tests/integration/harness.h"
#include "tests/win/pipe/pipe_util.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <windows.h>

static const char source_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: in\n"
                                    "    type: mailslot\n"
                                    "    path: '{v0}'\n"
                                    "    topic: slot/{adapter}/{peer}\n"
                                    "    max_message: 100\n"
                                    "{v1}"
                                    "routes:\n"
                                    "  - name: slot-rx\n"
                                    "    from: slot/#\n"
                                    "    retry: { max_attempts: 1 }\n"
                                    "{v2}";

static const char sink_config[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: out\n"
    "    type: mailslot\n"
    "    connect: '{v0}'\n"
    "routes:\n"
    "  - name: to-slot\n"
    "    from: out/#\n"
    "    to: out\n"
    "    retry: { max_attempts: {v1}, backoff: 20ms, max_backoff: 100ms }\n";

static const char network_config[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: bcast\n"
    "    type: mailslot\n"
    "    connect: '\\\\*\\mailslot\\{v0}'\n"
    "  - name: domain\n"
    "    type: mailslot\n"
    "    connect: '\\\\SBTDOMAIN\\mailslot\\{v0}'\n"
    "routes:\n"
    "  - name: to-bcast\n"
    "    from: bcast\n"
    "    to: bcast\n"
    "    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 20ms }\n"
    "  - name: to-domain\n"
    "    from: domain\n"
    "    to: domain\n"
    "    retry: { max_attempts: 2, backoff: 10ms, max_backoff: 20ms }\n";

static const char pipe_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: pipe-in\n"
                                  "    type: pipe\n"
                                  "    path: '{v0}'\n"
                                  "    topic: p2m/{adapter}\n"
                                  "  - name: out\n"
                                  "    type: mailslot\n"
                                  "    connect: '{v1}'\n"
                                  "routes:\n"
                                  "  - name: pipe-to-slot\n"
                                  "    from: p2m/#\n"
                                  "    to: out\n";

/* ---- helpers ---- */

/* 1 under Wine (ntdll exports wine_get_version there only). */
static int under_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

/* A mailslot name of this test run: sbt-<pid>-<tag>. */
static void slot_name(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "sbt-%lu-%s", (unsigned long)GetCurrentProcessId(), tag);
}

static void slot_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "\\\\.\\mailslot\\%s", name);
}

/* Writes one message to a mailslot; returns 0 or the Windows error. */
static DWORD slot_write(const char *path, const void *data, size_t len)
{
    wchar_t *w = sb_utf8_to_wide(path);
    HANDLE h;
    DWORD n = 0, rc = 0;
    assert_non_null(w);
    h = CreateFileW(w, GENERIC_WRITE, FILE_SHARE_READ, NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL,
                    NULL);
    sb_free(w);
    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!WriteFile(h, data, (DWORD)len, &n, NULL))
        rc = GetLastError();
    else if (n != len)
        rc = ERROR_WRITE_FAULT;
    CloseHandle(h);
    return rc;
}

/* Writes, retrying while the broker's mailslot is not there yet. */
static void slot_write_ok(const char *path, const void *data, size_t len)
{
    int64_t deadline = sbt_now_ms() + 5000;
    DWORD rc;
    while ((rc = slot_write(path, data, len)) == ERROR_FILE_NOT_FOUND && sbt_now_ms() < deadline)
        sbt_poll_pause(10);
    if (rc != 0)
        fail_msg("cannot write %zu bytes to %s: error %lu", len, path, (unsigned long)rc);
}

/* Creates a mailslot this test reads (no read timeout: reads poll). */
static HANDLE slot_create(const char *path)
{
    wchar_t *w = sb_utf8_to_wide(path);
    HANDLE h;
    assert_non_null(w);
    h = CreateMailslotW(w, 0, 0, NULL);
    sb_free(w);
    if (h == INVALID_HANDLE_VALUE)
        fail_msg("CreateMailslotW %s: error %lu", path, (unsigned long)GetLastError());
    return h;
}

/* Reads the next message into out (NUL-terminated); returns its length, or
 * -1 if none arrived within timeout_ms. Runs the harness loop meanwhile. */
static int slot_read(HANDLE h, char *out, size_t cap, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        DWORD next = 0, count = 0, n = 0;
        assert_true(GetMailslotInfo(h, NULL, &next, &count, NULL));
        if (next != MAILSLOT_NO_MESSAGE) {
            assert_true(next < cap);
            if (!ReadFile(h, out, (DWORD)cap - 1, &n, NULL))
                fail_msg("ReadFile on the test's mailslot: error %lu",
                         (unsigned long)GetLastError());
            out[n] = '\0';
            return (int)n;
        }
        if (sbt_now_ms() > deadline)
            return -1;
        sbt_poll_pause(5);
    }
}

static sbt_conn *start_broker(sbt_broker *b, const char *name, const char *tmpl, const char *v0,
                              const char *v1)
{
    sbt_broker_init(b, name, 1);
    sbt_broker_set(b, 0, v0);
    sbt_broker_set(b, 1, v1);
    sbt_broker_set(b, 2, "");
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* The only dead letter of sub (new reference). */
static json_t *only_dead_letter(sbt_conn *c, const char *sub)
{
    json_t *r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", sub), *d;
    sbt_expect_op(r, "dlq.list");
    assert_int_equal(json_array_size(json_object_get(r, "items")), 1);
    d = json_incref(json_array_get(json_object_get(r, "items"), 0));
    json_decref(r);
    return d;
}

/* ---- source ---- */

static void test_source(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], topic[128], big[150], want[200];
    static const unsigned char bin[3] = {0xfe, 0x00, 0x01};
    sbt_conn *c;
    json_t *m, *d;
    int64_t id;

    slot_name(name, sizeof(name), "src");
    slot_path(path, sizeof(path), name);
    c = start_broker(b, "mailslot-source", source_config, name, "");
    snprintf(topic, sizeof(topic), "slot/in/%s", name);
    sbt_broker_wait_log(b, "[in] reading mailslot \\\\.\\mailslot\\sbt-", 1, 5000);

    slot_write_ok(path, "m1", 2);
    slot_write_ok(path, bin, sizeof(bin));
    sbt_sub(c, "slot-rx", NULL, 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), "m1");
    sbt_ack(c, "slot-rx", sbt_int(m, "msg_id"));
    json_decref(m);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload_b64"), "/gAB");
    sbt_ack(c, "slot-rx", sbt_int(m, "msg_id"));
    json_decref(m);

    /* Over max_message (100), by one byte and by more: dropped and logged
     * (the writer cannot be told), never published truncated; the next
     * message passes. */
    memset(big, 'z', sizeof(big));
    slot_write_ok(path, big, 101);
    slot_write_ok(path, big, sizeof(big));
    snprintf(want, sizeof(want), "[in] message from %s is larger than max_message 100: dropped",
             path);
    sbt_broker_wait_log(b, want, 2, 5000);
    slot_write_ok(path, big, 100);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_int_equal(strlen(sbt_str(m, "payload")), 100);
    sbt_ack(c, "slot-rx", sbt_int(m, "msg_id"));
    json_decref(m);
    slot_write_ok(path, "m3", 2);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "m3");
    id = sbt_int(m, "msg_id");
    json_decref(m);

    /* The publish source names the adapter and the mailslot: it is kept
     * with a dead letter (the route allows one attempt). */
    sbt_nack(c, "slot-rx", id, "test");
    sbt_wait_queue_int(c, "slot-rx", "dead", 1, 5000);
    d = only_dead_letter(c, "slot-rx");
    snprintf(want, sizeof(want), "in %s", path);
    assert_string_equal(sbt_str(d, "source"), want);
    assert_string_equal(sbt_str(d, "payload"), "m3");
    json_decref(d);
    assert_int_equal(sbt_queue_int(c, "slot-rx", "published"), 4);

    /* An orderly stop while messages are being read and published: the
     * reader thread notices within its read timeout and the broker exits
     * with 0. */
    for (int i = 0; i < 20; i++)
        slot_write_ok(path, "late", 4);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A mailslot cannot push back: what the broker refuses (a full queue) is
 * logged and counted as dropped, and reading goes on. With inflight 1 the
 * reader waits for each commit before it reads the next message. */
static void test_source_refused(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], want[200], payload[8];
    sbt_conn *c;
    json_t *m;

    slot_name(name, sizeof(name), "full");
    slot_path(path, sizeof(path), name);
    sbt_broker_init(b, "mailslot-refused", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_set(b, 1, "    inflight: 1\n");
    sbt_broker_set(b, 2, "    max_depth: 5\n");
    sbt_broker_config(b, source_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    for (int i = 0; i < 8; i++) {
        snprintf(payload, sizeof(payload), "f%d", i);
        slot_write_ok(path, payload, strlen(payload));
    }
    snprintf(want, sizeof(want), "[in] message from %s dropped: ", path);
    sbt_broker_wait_log(b, want, 3, 5000);
    sbt_broker_wait_log(b, "(3 dropped so far)", 1, 1000);
    sbt_sub(c, "slot-rx", NULL, 10);
    for (int i = 0; i < 5; i++) {
        snprintf(payload, sizeof(payload), "f%d", i);
        m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "payload"), payload);
        sbt_ack(c, "slot-rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_wait_queue_int(c, "slot-rx", "depth", 0, 5000);
    /* Room again: the next message is published. */
    slot_write_ok(path, "after", 5);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "after");
    sbt_ack(c, "slot-rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A second broker cannot create the mailslot the first one holds. */
static void test_second_broker(void **state)
{
    sbt_broker *b = *state, b2;
    char name[64], path[128], want[200];
    sbt_conn *c;
    json_t *m;
    int rc;

    slot_name(name, sizeof(name), "dup");
    c = start_broker(b, "mailslot-first", source_config, name, "");
    memset(&b2, 0, sizeof(b2));
    sbt_broker_init(&b2, "mailslot-second", 1);
    sbt_broker_set(&b2, 0, name);
    sbt_broker_set(&b2, 1, "");
    sbt_broker_set(&b2, 2, "");
    sbt_broker_config(&b2, source_config);
    rc = sbt_broker_try_start(&b2);
    if (rc == -1) {
        sbt_broker_print_log(&b2);
        fail_msg("the second broker started although the mailslot is taken");
    }
    assert_int_not_equal(rc, 0);
    snprintf(want, sizeof(want),
             "adapter in: cannot create mailslot \\\\.\\mailslot\\%s: it already exists", name);
    sbt_broker_wait_log(&b2, want, 1, 1000);
    b2.passed = 1;
    sbt_broker_cleanup(&b2);
    /* The first one is unaffected. */
    slot_path(path, sizeof(path), name);
    slot_write_ok(path, "still", 5);
    sbt_sub(c, "slot-rx", NULL, 1);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "still");
    json_decref(m);
    sbt_close(c);
    b->passed = 1;
}

/* A bad SDDL stops the start with an error naming the key, where in the
 * file, and what is wrong (the config's check, before any adapter starts). */
static void test_bad_sddl(void **state)
{
    sbt_broker *b = *state;
    char name[64];
    int rc;

    slot_name(name, sizeof(name), "sddl");
    sbt_broker_init(b, "mailslot-sddl", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_set(b, 1, "    security: 'D:(X;;;;;nobody)'\n");
    sbt_broker_set(b, 2, "");
    sbt_broker_config(b, source_config);
    rc = sbt_broker_try_start(b);
    assert_int_not_equal(rc, -1);
    assert_int_not_equal(rc, 0);
    sbt_broker_wait_log(b,
                        "switchboard.yaml:14:19: adapters[1].security: invalid security "
                        "descriptor: unknown ACE type \"X\"",
                        1, 1000);
    b->passed = 1;
}

/* ---- sink ---- */

static void test_sink(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], buf[512];
    sbt_conn *c;
    HANDLE rx;

    slot_name(name, sizeof(name), "sink");
    slot_path(path, sizeof(path), name);
    rx = slot_create(path);
    c = start_broker(b, "mailslot-sink", sink_config, path, "10");
    sbt_pub(c, "out/a", "o1", 1);
    sbt_pub(c, "out/b", "o2", 1);
    sbt_pub(c, "out/a", "o3", 1);
    for (int i = 1; i <= 3; i++) {
        char want[8];
        snprintf(want, sizeof(want), "o%d", i);
        assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 2);
        assert_string_equal(buf, want);
    }
    sbt_wait_queue_int(c, "to-slot:out", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "to-slot:out", "acked"), 3);
    /* One delivery is one mailslot message, whatever it holds. */
    sbt_pub(c, "out/a", "line1\nline2", 1);
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 11);
    assert_string_equal(buf, "line1\nline2");

    /* An orderly stop with deliveries on their way to the writer. */
    for (int i = 0; i < 20; i++)
        sbt_pub(c, "out/a", "more", 1);
    sbt_close(c);
    sbt_broker_stop(b);
    CloseHandle(rx);
    b->passed = 1;
}

/* A missing target is a retryable failure: nacked, retried with backoff,
 * logged once, and delivered once the mailslot exists. */
static void test_sink_missing_target(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], buf[64], want[256];
    sbt_conn *c;
    HANDLE rx;

    slot_name(name, sizeof(name), "late");
    slot_path(path, sizeof(path), name);
    c = start_broker(b, "mailslot-late", sink_config, name, "1000");
    sbt_pub(c, "out/x", "late", 1);
    snprintf(want, sizeof(want), "[out] cannot open mailslot %s: ", path);
    sbt_broker_wait_log(b, want, 1, 5000);
    sbt_broker_wait_log(b, "(error 2) (deliveries are retried with backoff)", 1, 1000);
    assert_int_equal(sbt_queue_int(c, "to-slot:out", "depth"), 1);
    assert_int_equal(sbt_queue_int(c, "to-slot:out", "dead"), 0);

    rx = slot_create(path);
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 4);
    assert_string_equal(buf, "late");
    sbt_wait_queue_int(c, "to-slot:out", "acked", 1, 5000);
    sbt_broker_wait_log(b, "[out] writing to mailslot", 2, 1000); /* start + recovery */
    /* Logged once, not once per retry. */
    {
        char *log = sbt_broker_log_since(b);
        assert_int_equal(sbt_count(log, want), 1);
        free(log);
    }

    /* The reader goes away again: deliveries fail and wait out their
     * backoff; an orderly stop does not wait for them (they stay queued). */
    CloseHandle(rx);
    sbt_pub(c, "out/x", "gone1", 1);
    sbt_pub(c, "out/x", "gone2", 1);
    sbt_broker_wait_log(b, want, 2, 5000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- network targets ---- */

/* More than 424 bytes to \\*\ or \\DOMAIN\ is refused, never truncated:
 * nacked with the reason on every attempt, then dead-lettered. */
static void test_network_too_big(void **state)
{
    sbt_broker *b = *state;
    char name[64], big[426], want[400];
    sbt_conn *c;
    json_t *d;
    int64_t id;

    slot_name(name, sizeof(name), "net");
    c = start_broker(b, "mailslot-too-big", network_config, name, "");
    memset(big, 'b', 425);
    big[425] = '\0';

    id = sbt_pub(c, "bcast", big, 1);
    sbt_wait_queue_int(c, "to-bcast:bcast", "dead", 1, 5000);
    d = only_dead_letter(c, "to-bcast:bcast");
    assert_int_equal(sbt_int(d, "msg_id"), id);
    assert_int_equal(sbt_int(d, "attempts"), 3);
    snprintf(want, sizeof(want),
             "payload of 425 bytes is larger than 424 bytes, the most a mailslot message sent "
             "over the network (\\\\*\\mailslot\\%s) can carry; mailslot messages are never "
             "truncated (after 3 attempts)",
             name);
    assert_string_equal(sbt_str(d, "reason"), want);
    assert_int_equal(strlen(sbt_str(d, "payload")), 425);
    json_decref(d);
    snprintf(want, sizeof(want), "[bcast] message %lld on to-bcast:bcast refused (attempt 3)",
             (long long)id);
    sbt_broker_wait_log(b, want, 1, 1000);

    id = sbt_pub(c, "domain", big, 1);
    sbt_wait_queue_int(c, "to-domain:domain", "dead", 1, 5000);
    d = only_dead_letter(c, "to-domain:domain");
    assert_int_equal(sbt_int(d, "attempts"), 2);
    assert_non_null(strstr(sbt_str(d, "reason"), "(\\\\SBTDOMAIN\\mailslot\\"));
    assert_non_null(strstr(sbt_str(d, "reason"), "larger than 424 bytes"));
    json_decref(d);
    sbt_close(c);
    b->passed = 1;
}

/* 424 bytes is within the limit. Wine cannot open \\*\mailslot\x
 * (ERROR_PATH_NOT_FOUND): the failure is nacked, retried and logged, and
 * the message ends in the dead-letter queue with the system's reason. On
 * Windows the broadcast goes out and is acknowledged. */
static void test_network_broadcast(void **state)
{
    sbt_broker *b = *state;
    char name[64], msg[425], want[256];
    sbt_conn *c;
    json_t *d;

    slot_name(name, sizeof(name), "bc");
    c = start_broker(b, "mailslot-broadcast", network_config, name, "");
    memset(msg, 'a', 424);
    msg[424] = '\0';
    sbt_pub(c, "bcast", "hello", 1);
    sbt_pub(c, "bcast", msg, 1);
    if (!under_wine()) {
        sbt_wait_queue_int(c, "to-bcast:bcast", "acked", 2, 5000);
        sbt_close(c);
        b->passed = 1;
        return;
    }
    sbt_wait_queue_int(c, "to-bcast:bcast", "dead", 2, 5000);
    assert_int_equal(sbt_queue_int(c, "to-bcast:bcast", "acked"), 0);
    snprintf(want, sizeof(want), "[bcast] cannot open mailslot \\\\*\\mailslot\\%s: ", name);
    sbt_broker_wait_log(b, want, 1, 1000);
    sbt_broker_wait_log(b, "(error 3) (deliveries are retried with backoff)", 1, 1000);
    {
        json_t *r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "to-bcast:bcast");
        json_t *items = json_object_get(r, "items");
        sbt_expect_op(r, "dlq.list");
        assert_int_equal(json_array_size(items), 2);
        for (size_t i = 0; i < 2; i++) {
            d = json_array_get(items, i);
            assert_int_equal(sbt_int(d, "attempts"), 3);
            assert_non_null(strstr(sbt_str(d, "reason"), want + strlen("[bcast] ")));
            assert_non_null(strstr(sbt_str(d, "reason"), "(error 3) (after 3 attempts)"));
        }
        json_decref(r);
    }
    sbt_close(c);
    b->passed = 1;
}

/* ---- end to end ---- */

/* Opens a client end of the named pipe \\.\pipe\<name>, waiting while the
 * broker's pipe is not there yet or busy. */
static HANDLE pipe_open(const char *name)
{
    char path[160];
    wchar_t *w;
    HANDLE h;
    int64_t deadline = sbt_now_ms() + 5000;
    snprintf(path, sizeof(path), "\\\\.\\pipe\\%s", name);
    w = sb_utf8_to_wide(path);
    assert_non_null(w);
    for (;;) {
        DWORD code;
        h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (h != INVALID_HANDLE_VALUE)
            break;
        code = GetLastError();
        if ((code != ERROR_FILE_NOT_FOUND && code != ERROR_PIPE_BUSY) || sbt_now_ms() > deadline)
            fail_msg("cannot open %s: error %lu", path, (unsigned long)code);
        sbt_poll_pause(10);
    }
    sb_free(w);
    return h;
}

/* A raw line written into a named pipe is committed to the store and comes
 * out of a mailslot: pipe -> store -> mailslot. */
static void test_pipe_to_mailslot(void **state)
{
    sbt_broker *b = *state;
    char pipe_name[64], slot[64], path[128], buf[128];
    static const char lines[] = "first line\nsecond line\n";
    sbt_conn *c;
    HANDLE rx, p;
    DWORD n = 0;

    slot_name(pipe_name, sizeof(pipe_name), "p2m");
    slot_name(slot, sizeof(slot), "p2m-out");
    slot_path(path, sizeof(path), slot);
    rx = slot_create(path);
    c = start_broker(b, "mailslot-pipe", pipe_config, pipe_name, path);
    p = pipe_open(pipe_name);
    assert_true(WriteFile(p, lines, (DWORD)strlen(lines), &n, NULL));
    assert_int_equal(n, strlen(lines));
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 10);
    assert_string_equal(buf, "first line");
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 11);
    assert_string_equal(buf, "second line");
    sbt_wait_queue_int(c, "pipe-to-slot:out", "acked", 2, 5000);
    assert_int_equal(sbt_queue_int(c, "pipe-to-slot:out", "depth"), 0);
    CloseHandle(p);
    CloseHandle(rx);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* The shipped bridge example: a legacy program's pipe messages reach the
 * mailslot another one reads, and wait for it while it is away. */
static void test_example_bridge(void **state)
{
    sbt_broker *b = *state;
    char pipe_name[64], pipe_path[128], slot[64], path[128], buf[128];
    const char *repl[] = {"data_dir: ./data",
                          "data_dir: '{data}'",
                          "path: orders-in",
                          NULL,
                          "connect: orders-out",
                          NULL,
                          NULL};
    char path_line[128], connect_line[128];
    sbt_conn *c;
    pt_pipe *p;
    HANDLE rx;

    pt_name(pipe_name, sizeof(pipe_name), "orders-in");
    pt_path(pipe_path, sizeof(pipe_path), pipe_name);
    slot_name(slot, sizeof(slot), "orders-out");
    slot_path(path, sizeof(path), slot);
    snprintf(path_line, sizeof(path_line), "path: %s", pipe_name);
    snprintf(connect_line, sizeof(connect_line), "connect: %s", slot);
    repl[3] = path_line;
    repl[5] = connect_line;
    sbt_broker_init(b, "mailslot-example", 1);
    pt_example_config(b, "windows-pipe-to-mailslot.yaml", repl);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* The reader is away: the order waits. */
    p = pt_open_ok(pipe_path, 1);
    pt_write_ok(p, "order 1", 7);
    sbt_wait_queue_int(c, "orders-to-mailslot:orders-out", "depth", 1, 5000);
    /* It starts: the order arrives, and so does the next. */
    rx = slot_create(path);
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 15000), 7);
    assert_string_equal(buf, "order 1");
    pt_write_ok(p, "order 2", 7);
    assert_int_equal(slot_read(rx, buf, sizeof(buf), 5000), 7);
    assert_string_equal(buf, "order 2");
    sbt_wait_queue_int(c, "orders-to-mailslot:orders-out", "depth", 0, 5000);
    pt_close(p);
    CloseHandle(rx);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_source, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_source_refused, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_second_broker, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_bad_sddl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink_missing_target, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_network_too_big, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_network_broadcast, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_pipe_to_mailslot, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example_bridge, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("mailslot", tests, NULL, NULL);
}
