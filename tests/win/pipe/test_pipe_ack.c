/*
 * A legacy request/response program on a message-mode pipe (`framing:
 * message` with `reply`): the broker (switchboard.exe run) on one side,
 * this program on the other.
 *
 * - CallNamedPipe, one call per message: each gets reply once the message
 *   is committed, and reply_error once the queue is full;
 * - TransactNamedPipe on one connection, message after message; the broker
 *   is killed (TerminateProcess) right after the last answer, and every
 *   answered message is there after the restart;
 * - pipe_buffer sets the pipe's buffer size (read back with
 *   GetNamedPipeInfo), and a producer that writes many more messages than
 *   read_ahead and leaves at once loses none of them (the end of its input
 *   must wait until the broker took every message before it);
 * - with commits held back (a 1 s group-commit delay), a producer's
 *   WriteFile blocks after read_ahead messages with the store, up to twice
 *   that read ahead and what the pipe's buffer holds: what a kill would
 *   lose is bounded by read_ahead and pipe_buffer.
 */
#include "tests/win/pipe/pipe_util.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: ack\n"
                             "    type: pipe\n"
                             "    path: '{v0}'\n"
                             "    framing: message\n"
                             "    topic: pipe/{adapter}\n"
                             "    reply: OK\n"
                             "    reply_error: FULL\n"
                             "  - name: bulk\n"
                             "    type: pipe\n"
                             "    path: '{v1}'\n"
                             "    framing: message\n"
                             "    topic: bulk/{adapter}\n"
                             "    read_ahead: 4\n"
                             "    pipe_buffer: 1KiB\n"
                             "routes:\n"
                             "  - name: rx\n"
                             "    from: pipe/#\n"
                             "    max_depth: {v2}\n"
                             "  - name: bulk-rx\n"
                             "    from: bulk/#\n";

typedef struct names {
    char name[2][64];
    char path[2][128];
} names;

static sbt_conn *start_broker(sbt_broker *b, const char *test, names *n, const char *max_depth)
{
    static const char *tags[] = {"ack", "bulk"};
    char tag[32];
    sbt_broker_init(b, test, 1);
    for (int i = 0; i < 2; i++) {
        snprintf(tag, sizeof(tag), "%s-%s", test, tags[i]);
        pt_name(n->name[i], sizeof(n->name[i]), tag);
        pt_path(n->path[i], sizeof(n->path[i]), n->name[i]);
        sbt_broker_set(b, i, n->name[i]);
    }
    sbt_broker_set(b, 2, max_depth);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* The next delivery of sub must carry payload; acks it. */
static void expect_msg(sbt_conn *c, const char *sub, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

/* One CallNamedPipe; the answer must be want. (It blocks: the broker is
 * another process, and the harness's watchdog ends a hung test.) */
static void call_expect(const char *path, const char *msg, const char *want)
{
    wchar_t *w = sb_utf8_to_wide(path);
    char out[64];
    DWORD n = 0;
    assert_non_null(w);
    if (!CallNamedPipeW(w, (void *)msg, (DWORD)strlen(msg), out, sizeof(out) - 1, &n, 10000))
        fail_msg("CallNamedPipe %s (%s): error %lu", path, msg, (unsigned long)GetLastError());
    sb_free(w);
    out[n] = '\0';
    assert_string_equal(out, want);
}

/* TransactNamedPipe on an open message-mode client; the answer must be want. */
static void transact_expect(pt_pipe *p, const char *msg, const char *want)
{
    OVERLAPPED ov;
    char out[64];
    DWORD n = 0, err;
    int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
    memset(&ov, 0, sizeof(ov));
    ov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
    assert_non_null(ov.hEvent);
    if (!TransactNamedPipe(p->h, (void *)msg, (DWORD)strlen(msg), out, sizeof(out) - 1, &n, &ov)) {
        err = GetLastError();
        if (err != ERROR_IO_PENDING)
            fail_msg("TransactNamedPipe (%s): error %lu", msg, (unsigned long)err);
        while (WaitForSingleObject(ov.hEvent, 20) != WAIT_OBJECT_0) {
            if (sbt_now_ms() > deadline)
                fail_msg("TransactNamedPipe (%s): no answer within %d ms", msg, SBT_REPLY_MS);
            sbt_poll_pause(1);
        }
        if (!GetOverlappedResult(p->h, &ov, &n, FALSE))
            fail_msg("TransactNamedPipe (%s): error %lu", msg, (unsigned long)GetLastError());
    }
    CloseHandle(ov.hEvent);
    out[n] = '\0';
    assert_string_equal(out, want);
}

static void test_call_named_pipe(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "call", &n, "5");
    char msg[16];

    for (int i = 1; i <= 5; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        call_expect(n.path[0], msg, "OK");
    }
    /* max_depth 5: the sixth is refused, and says so. */
    call_expect(n.path[0], "m6", "FULL");
    assert_int_equal(sbt_queue_int(c, "rx", "depth"), 5);
    sbt_sub(c, "rx", NULL, 10);
    for (int i = 1; i <= 5; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        expect_msg(c, "rx", msg);
    }
    sbt_close(c);
    b->passed = 1;
}

static void test_transact_survives_kill(void **state)
{
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "transact", &n, "0");
    pt_pipe *p = pt_open_ok(n.path[0], 1);
    char msg[16];

    sbt_close(c);
    for (int i = 0; i < 20; i++) {
        snprintf(msg, sizeof(msg), "t%d", i);
        transact_expect(p, msg, "OK");
    }
    /* Right after the last answer. */
    sbt_broker_kill(b);
    pt_close(p);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "rx", NULL, 100);
    for (int i = 0; i < 20; i++) {
        snprintf(msg, sizeof(msg), "t%d", i);
        expect_msg(c, "rx", msg);
    }
    sbt_close(c);
    b->passed = 1;
}

static void test_buffer_and_read_ahead(void **state)
{
    enum { CLIENTS = 40, PER_CLIENT = 11 };
    static char seen[CLIENTS * PER_CLIENT];
    sbt_broker *b = *state;
    names n;
    sbt_conn *c = start_broker(b, "bulk", &n, "0");
    pt_pipe *p = pt_open_ok(n.path[1], 1);
    DWORD flags = 0, out_size = 0, in_size = 0;
    char msg[16];

    assert_true(GetNamedPipeInfo(p->h, &flags, &out_size, &in_size, NULL));
    print_message("bulk pipe: buffers %lu out, %lu in\n", (unsigned long)out_size,
                  (unsigned long)in_size);
    /* Windows may round the size up to its allocation unit. */
    assert_true(in_size >= 1024 && in_size < 65536);
    assert_true(out_size >= 1024 && out_size < 65536);

    /* More than read_ahead, then gone at once: none is lost. Clients one
     * after another, each writing a few messages more than read_ahead. */
    for (int k = 0; k < CLIENTS; k++) {
        if (k > 0)
            p = pt_open_ok(n.path[1], 1);
        for (int i = 0; i < PER_CLIENT; i++) {
            snprintf(msg, sizeof(msg), "b%d", k * PER_CLIENT + i);
            pt_write_ok(p, msg, strlen(msg));
        }
        pt_close(p);
    }
    sbt_sub(c, "bulk-rx", NULL, 1000);
    for (int i = 0; i < CLIENTS * PER_CLIENT; i++) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        int k = -1;
        assert_int_equal(sscanf(sbt_str(m, "payload"), "b%d", &k), 1);
        assert_true(k >= 0 && k < CLIENTS * PER_CLIENT && !seen[k]);
        seen[k] = 1;
        sbt_ack(c, "bulk-rx", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_wait_queue_int(c, "bulk-rx", "depth", 0, 5000);
    sbt_close(c);
    b->passed = 1;
}

/* Commits held back for a second: what a producer can write before its
 * WriteFile blocks is what a kill would lose. */
static const char window_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "  store: { commit_max_delay_us: 1000000, "
                                    "commit_max_batch: 65536 }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: window\n"
                                    "    type: pipe\n"
                                    "    path: '{v0}'\n"
                                    "    framing: message\n"
                                    "    topic: win/{adapter}\n"
                                    "{v1}"
                                    "routes:\n"
                                    "  - name: win-rx\n"
                                    "    from: win/#\n";

/* Writes 100-byte messages until a WriteFile does not complete within
 * 500 ms (the broker stopped reading); returns how many completed. */
static int fill(pt_pipe *p)
{
    char msg[100];
    int n = 0;
    memset(msg, 'w', sizeof(msg));
    for (;;) {
        DWORD err;
        snprintf(msg, sizeof(msg), "%d", n);
        msg[strlen(msg)] = 'w';
        err = pt_write(p, msg, sizeof(msg), 500);
        if (err == WAIT_TIMEOUT)
            return n;
        if (err != 0)
            fail_msg("WriteFile: error %lu", (unsigned long)err);
        if (++n > 100000)
            fail_msg("100000 messages written and the broker still reads");
    }
}

/* read_ahead 8 and a 1 KiB pipe buffer bound what a producer can write ahead
 * of the commits; the defaults (64, 4 KiB) a larger but bounded amount. */
static void test_loss_window(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128];
    int bounded, by_default;
    pt_pipe *p;

    pt_name(name, sizeof(name), "window");
    pt_path(path, sizeof(path), name);
    sbt_broker_init(b, "window", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_set(b, 1, "    read_ahead: 8\n    pipe_buffer: 1KiB\n");
    sbt_broker_config(b, window_config);
    sbt_broker_start(b);
    p = pt_open_ok(path, 1);
    bounded = fill(p);
    pt_close(p);
    sbt_broker_stop(b);

    sbt_broker_set(b, 1, "");
    sbt_broker_config(b, window_config);
    sbt_broker_start(b);
    p = pt_open_ok(path, 1);
    by_default = fill(p);
    pt_close(p);
    print_message("written ahead of the commits: %d messages with read_ahead 8 and a 1 KiB "
                  "buffer, %d with the defaults\n",
                  bounded, by_default);
    /* read_ahead with the store, up to 2 x read_ahead read ahead, what the
     * buffer holds (Windows may round its size up; Wine does not) */
    assert_true(bounded >= 8 && bounded <= 3 * 8 + 1024 / 100 + 2);
    assert_true(by_default >= 64 && by_default <= 3 * 64 + 4096 / 100 + 2);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_call_named_pipe, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_transact_survives_kill, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_buffer_and_read_ahead, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_loss_window, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("pipe_ack", tests, NULL, NULL);
}
