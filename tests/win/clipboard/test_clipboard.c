/*
 * The clipboard adapter with real processes: the broker (switchboard.exe
 * run), clip_tool.exe (a program that sets, holds and watches the
 * clipboard as legacy programs do), and this program as the jsonl client.
 * Under Wine and unchanged on Windows. The clipboard is shared by the
 * whole session (under Wine, the prefix): CMake gives these tests a
 * RESOURCE_LOCK, and each case waits for what it caused before the next.
 *
 * - in: text and a registered format published with the owner's program;
 *   content marked private (each of the three markers) never published
 *   and counted; what the broker itself set not published again; a
 *   program owner_filter does not name skipped;
 * - out: a delivery becomes the clipboard's text, or bytes in a registered
 *   format a header names, seen by a watching program; a clipboard held by
 *   another program is retried until it is free, or, held too long, the
 *   attempt fails and ends in the dead-letter queue; a payload that is not
 *   text is dead-lettered with the reason;
 * - config/examples/clipboard.yaml runs;
 * - both directions hosted by the session agent.
 *
 * Nothing sleeps a fixed time: every wait polls with a deadline.
 */
#include "tests/integration/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define WAIT_MS 20000

/* Starts clip_tool with up to five arguments, its output in dir/out_name;
 * waits for `ready` in it (NULL: does not wait). */
static void clip_tool(sbt_proc *p, sbt_broker *b, const char *out_name, const char *ready,
                      const char *a1, const char *a2, const char *a3, const char *a4,
                      const char *a5)
{
    char out[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_env("SB_CLIP_TOOL"),
                    (char *)a1,
                    (char *)a2,
                    (char *)a3,
                    (char *)a4,
                    (char *)a5,
                    NULL};
    sbt_path(out, sizeof out, b->dir, out_name);
    remove(out);
    memset(p, 0, sizeof(*p));
    assert_int_equal(sbt_spawn(p, argv, NULL, out), 0);
    if (ready != NULL)
        sbt_wait_file_text(out, ready, 1, WAIT_MS);
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

/* Waits until adapter counter `key` is at least want. */
static void wait_stat(sbt_conn *c, const char *name, const char *key, int64_t want)
{
    int64_t deadline = sbt_now_ms() + WAIT_MS, v;
    sbt_waiting_for("adapter %s's %s to reach %lld", name, key, (long long)want);
    while ((v = adapter_stat(c, name, key)) < want) {
        if (sbt_now_ms() > deadline)
            fail_msg("adapter %s's %s is %lld, not %lld, after %d ms", name, key, (long long)v,
                     (long long)want, WAIT_MS);
        sbt_poll_pause(20);
    }
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
                                "  - name: clip\n"
                                "    type: clipboard\n"
                                "    direction: both\n"
                                "    formats: [CF_UNICODETEXT, '{v0}']\n"
                                "    topic: desk/{adapter}/{format}\n"
                                "  - name: picky\n"
                                "    type: clipboard\n"
                                "    direction: in\n"
                                "    owner_filter: [notepad.exe]\n"
                                "routes:\n"
                                "  - name: rx\n"
                                "    from: [desk/#, picky]\n"
                                "  - name: paste\n"
                                "    from: paste\n"
                                "    to: clip\n";

static void test_in(void **state)
{
    sbt_broker *b = *state;
    char fmt[64], out[SBT_PATH_MAX];
    sbt_proc setter, watcher;
    sbt_conn *c;
    json_t *m, *h;
    int64_t changes;

    snprintf(fmt, sizeof fmt, "SBT Format %lu", (unsigned long)GetCurrentProcessId());
    sbt_broker_init(b, "clipboard-in", 1);
    sbt_broker_set(b, 0, fmt);
    sbt_broker_config(b, in_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "[clip] listens to the clipboard", 1, WAIT_MS);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "rx", NULL, 100);

    /* text a program copies, with the program's name */
    clip_tool(&setter, b, "set1.out", "SET", "set", "hello clipboard", NULL, NULL, NULL);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "desk/clip/CF_UNICODETEXT");
    assert_string_equal(sbt_str(m, "payload"), "hello clipboard");
    h = json_object_get(m, "headers");
    assert_string_equal(sbt_str(h, "clipboard-format"), "CF_UNICODETEXT");
    assert_string_equal(sbt_str(h, "encoding"), "utf-8");
    assert_string_equal(sbt_str(h, "clipboard-owner"), "clip_tool.exe");
    assert_true(atol(sbt_str(h, "clipboard-pid")) > 0);
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);
    /* a registered format, by name: its bytes */
    clip_tool(&setter, b, "set2.out", "SET", "set", "abcdefgh", "--format", fmt, NULL);
    m = sbt_next_msg(c, WAIT_MS);
    assert_non_null(strstr(sbt_str(m, "topic"), "desk/clip/SBT Format "));
    /* GlobalSize may round the block up: the text comes first */
    assert_memory_equal(sbt_str(m, "payload"), "abcdefgh", 8);
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "clipboard-format"), fmt);
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);
    /* A change is counted as it is read, its outcome after its owner is
     * looked up: wait for the outcome, then look at the count. */
    wait_stat(c, "picky", "skipped_owner", 2);
    assert_int_equal(adapter_stat(c, "picky", "changes"), 2);
    assert_int_equal(adapter_stat(c, "picky", "published"), 0);

    /* content marked private: never published, counted */
    changes = adapter_stat(c, "clip", "changes");
    clip_tool(&setter, b, "p1.out", "SET", "set", "secret one", "--private", "exclude", NULL);
    wait_stat(c, "clip", "skipped_private", 1);
    sbt_proc_release(&setter);
    clip_tool(&setter, b, "p2.out", "SET", "set", "secret two", "--private", "history", NULL);
    wait_stat(c, "clip", "skipped_private", 2);
    sbt_proc_release(&setter);
    clip_tool(&setter, b, "p3.out", "SET", "set", "secret three", "--private", "viewer", NULL);
    wait_stat(c, "clip", "skipped_private", 3);
    sbt_proc_release(&setter);
    assert_int_equal(adapter_stat(c, "clip", "changes"), changes + 3);
    assert_int_equal(adapter_stat(c, "clip", "skipped_private"), 3);
    /* not from notepad.exe: skipped before anything else is looked at */
    wait_stat(c, "picky", "skipped_owner", 5);
    assert_int_equal(adapter_stat(c, "picky", "changes"), 5);
    assert_int_equal(adapter_stat(c, "picky", "skipped_private"), 0);
    sbt_broker_wait_log(b, "marked private by pid", 3, WAIT_MS);
    sbt_broker_wait_log(b, "(ExcludeClipboardContentFromMonitorProcessing)", 1, WAIT_MS);
    sbt_broker_wait_log(b, "(CanIncludeInClipboardHistory = 0)", 1, WAIT_MS);
    sbt_broker_wait_log(b, "(Clipboard Viewer Ignore)", 1, WAIT_MS);
    {
        char *log = sbt_broker_log(b);
        assert_int_equal(sbt_count(log, "secret"), 0);
        free(log);
    }

    /* what the broker sets (a delivery to the same adapter) is not
     * published again; a program watching sees it */
    clip_tool(&watcher, b, "watch.out", "WATCHING", "watch", "1", NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "watch.out");
    changes = adapter_stat(c, "clip", "changes");
    sbt_pub(c, "paste", "from the broker", 1);
    sbt_wait_file_text(out, "CLIP 66726f6d207468652062726f6b6572 ", 1, WAIT_MS);
    assert_true(sbt_proc_wait(&watcher, WAIT_MS));
    sbt_proc_release(&watcher);
    wait_stat(c, "clip", "skipped_own", 1);
    wait_stat(c, "clip", "set", 1);
    /* the next copy is published: nothing of the above came before it */
    clip_tool(&setter, b, "set3.out", "SET", "set", "after", NULL, NULL, NULL);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "desk/clip/CF_UNICODETEXT");
    assert_string_equal(sbt_str(m, "payload"), "after");
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);
    /* counted once the store committed it, which can be after the
     * subscriber got it (broker.store.deliver_before_commit) */
    wait_stat(c, "clip", "published", 3);
    assert_int_equal(adapter_stat(c, "clip", "published"), 3);

    sbt_close(c);
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
    "  - name: paste\n"
    "    type: clipboard\n"
    "    busy_timeout: 3s\n"
    "  - name: impatient\n"
    "    type: clipboard\n"
    "    busy_timeout: 100ms\n"
    "routes:\n"
    "  - name: to-clipboard\n"
    "    from: paste\n"
    "    to: paste\n"
    "    retry: { max_attempts: 2, backoff: 20ms, max_backoff: 50ms }\n"
    "  - name: to-impatient\n"
    "    from: impatient\n"
    "    to: impatient\n"
    "    retry: { max_attempts: 1 }\n";

static void test_out(void **state)
{
    sbt_broker *b = *state;
    char fmt[64], out[SBT_PATH_MAX], hold_out[SBT_PATH_MAX];
    sbt_proc watcher, holder;
    sbt_conn *c;
    json_t *r, *d;

    snprintf(fmt, sizeof fmt, "SBT Out %lu", (unsigned long)GetCurrentProcessId());
    sbt_broker_init(b, "clipboard-out", 1);
    sbt_broker_config(b, out_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* text (with non-ASCII characters), seen by a watching program */
    clip_tool(&watcher, b, "watch1.out", "WATCHING", "watch", "1", NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "watch1.out");
    sbt_pub(c, "paste",
            "Gr\xc3\xbc\xc3\x9f"
            "e",
            1);
    sbt_wait_file_text(out, "CLIP 4772c3bcc39f65 ", 1, WAIT_MS);
    sbt_proc_release(&watcher);
    sbt_wait_queue_int(c, "to-clipboard:paste", "depth", 0, WAIT_MS);
    /* bytes in the registered format a header names */
    clip_tool(&watcher, b, "watch2.out", "WATCHING", "watch", "1", "--format", fmt, NULL);
    sbt_path(out, sizeof out, b->dir, "watch2.out");
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "paste", "payload_b64",
                 "AAECAwQFBgc=", "headers", "clipboard-format", fmt);
    sbt_expect_op(r, "puback");
    json_decref(r);
    sbt_wait_file_text(out, "CLIP 0001020304050607", 1, WAIT_MS);
    sbt_proc_release(&watcher);

    /* a clipboard another program holds: set once it lets go */
    clip_tool(&holder, b, "hold.out", "HOLDING", "hold", "700", NULL, NULL, NULL);
    sbt_path(hold_out, sizeof hold_out, b->dir, "hold.out");
    clip_tool(&watcher, b, "watch3.out", "WATCHING", "watch", "1", NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "watch3.out");
    sbt_pub(c, "paste", "later", 1);
    sbt_wait_file_text(out, "CLIP 6c61746572 ", 1, WAIT_MS);
    {
        /* it was set after the holder let go */
        char *h = sbt_read_file(hold_out, NULL);
        assert_non_null(strstr(h, "RELEASED"));
        free(h);
    }
    sbt_proc_release(&watcher);
    assert_true(sbt_proc_wait(&holder, WAIT_MS));
    sbt_proc_release(&holder);
    assert_true(adapter_stat(c, "paste", "busy") >= 1);
    sbt_wait_queue_int(c, "to-clipboard:paste", "depth", 0, WAIT_MS);

    /* held longer than busy_timeout: the attempt fails, dead-lettered */
    clip_tool(&holder, b, "hold2.out", "HOLDING", "hold", "3000", NULL, NULL, NULL);
    sbt_pub(c, "impatient", "never", 1);
    d = only_dead_letter(c, "to-impatient:impatient");
    assert_non_null(strstr(sbt_str(d, "reason"), "the clipboard was held open by pid "));
    assert_non_null(strstr(sbt_str(d, "reason"), "clip_tool.exe"));
    json_decref(d);
    assert_true(sbt_proc_wait(&holder, WAIT_MS));
    sbt_proc_release(&holder);

    /* bytes that are not text, with no format named: dead-lettered */
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "paste", "payload_b64", "//79");
    sbt_expect_op(r, "puback");
    json_decref(r);
    d = only_dead_letter(c, "to-clipboard:paste");
    assert_non_null(strstr(sbt_str(d, "reason"), "not UTF-8 text"));
    json_decref(d);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- config/examples/clipboard.yaml ---- */

static void test_example(void **state)
{
    sbt_broker *b = *state;
    char out[SBT_PATH_MAX];
    char *tmpl;
    sbt_proc setter, watcher;
    sbt_conn *c;
    json_t *m;

    tmpl = sbt_example("clipboard.yaml");
    sbt_example_replace(&tmpl, "clipboard.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&tmpl, "clipboard.yaml", "listen: 127.0.0.1:7878",
                        "listen: 127.0.0.1:{port0}");
    sbt_example_replace(&tmpl, "clipboard.yaml", "owner_filter: [LEGACY.EXE]",
                        "owner_filter: [CLIP_TOOL.EXE]");
    sbt_broker_init(b, "clipboard-example", 1);
    sbt_broker_config(b, tmpl);
    free(tmpl);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    clip_tool(&setter, b, "set.out", "SET", "set", "copied text", NULL, NULL, NULL);
    sbt_sub(c, "clipboard", NULL, 10);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "desktop/clipboard/CF_UNICODETEXT");
    assert_string_equal(sbt_str(m, "payload"), "copied text");
    sbt_ack(c, "clipboard", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);

    clip_tool(&watcher, b, "watch.out", "WATCHING", "watch", "1", NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "watch.out");
    sbt_pub(c, "desktop/paste", "to paste", 1);
    sbt_wait_file_text(out, "CLIP 746f207061737465 ", 1, WAIT_MS);
    sbt_proc_release(&watcher);
    sbt_wait_queue_int(c, "to-clipboard:paste", "depth", 0, WAIT_MS);
    /* the broker's own content was not published again */
    wait_stat(c, "copied", "skipped_own", 1);
    assert_int_equal(sbt_queue_int(c, "clipboard", "depth"), 0);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- both directions in the session agent ---- */

static const char agent_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "  desktop: agent\n"
                                   "  agent: { endpoint: '{v0}' }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "  - name: clip\n"
                                   "    type: clipboard\n"
                                   "    direction: both\n"
                                   "routes:\n"
                                   "  - name: rx\n"
                                   "    from: clip\n"
                                   "  - name: paste\n"
                                   "    from: paste\n"
                                   "    to: clip\n";

static void test_in_agent(void **state)
{
    sbt_broker *b = *state;
    char endpoint[96], out[SBT_PATH_MAX];
    sbt_proc setter, watcher;
    sbt_conn *c;
    json_t *m;

    snprintf(endpoint, sizeof endpoint, "sbt-clip-agent-%lu-{session}",
             (unsigned long)GetCurrentProcessId());
    sbt_broker_init(b, "clipboard-agent", 1);
    sbt_broker_set(b, 0, endpoint);
    sbt_broker_config(b, agent_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "[clip] (agent of session", 1, WAIT_MS);
    sbt_broker_wait_log(b, "listens to the clipboard", 1, WAIT_MS);
    c = sbt_connect(b->port[0]);

    /* copied in the desktop, published by the agent */
    clip_tool(&setter, b, "set.out", "SET", "set", "agent copy", NULL, NULL, NULL);
    sbt_sub(c, "rx", NULL, 10);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "clip");
    assert_string_equal(sbt_str(m, "payload"), "agent copy");
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);

    /* set by the agent, acknowledged back; not published again */
    clip_tool(&watcher, b, "watch.out", "WATCHING", "watch", "1", NULL, NULL, NULL);
    sbt_path(out, sizeof out, b->dir, "watch.out");
    sbt_pub(c, "paste", "agent paste", 1);
    sbt_wait_file_text(out, "CLIP 6167656e74207061737465 ", 1, WAIT_MS);
    sbt_proc_release(&watcher);
    sbt_wait_queue_int(c, "paste:clip", "depth", 0, WAIT_MS);
    /* the next copy is the next message: the paste was not published */
    clip_tool(&setter, b, "set2.out", "SET", "set", "second copy", NULL, NULL, NULL);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "payload"), "second copy");
    sbt_ack(c, "rx", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_proc_release(&setter);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_in, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_out, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_in_agent, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
