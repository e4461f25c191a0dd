/*
 * Switchboard.Broker with real processes: the broker (switchboard.exe run,
 * with a `type: com` adapter), the relay COM starts for it (switchboard.exe
 * com server), com_client.exe (C, through the vtable, IDispatch::Invoke and
 * connection-point events), VBScript through cscript, and this program as
 * a jsonl client of the broker. Under Wine, and unchanged on Windows (as an
 * administrator: the class is registered in HKLM for the run, with an
 * endpoint of the tests' own, and removed at the end).
 *
 * - Publish through the vtable and through IDispatch reaches a jsonl
 *   subscriber; a create while the relay stops (its last object just
 *   released) works; jsonl publishes reach Pull, Wait and OnMessage events;
 * - a handler that raises an error: the message comes again (attempt 2);
 *   one that never returns: after EventTimeout the message goes to another
 *   consumer; a client that dies holding a message: it comes back at once
 *   (not after the 30 s lease);
 * - bad input: wrong VARIANT types, huge strings, ids that were never
 *   taken, a payload over max_message; the relay goes on serving;
 * - the broker killed while a client publishes: every Publish that
 *   returned an id is in the queue after the restart;
 * - the caller's Windows account is the ACL user: Broker.User names it,
 *   and the ACL allows and refuses by it;
 * - VBScript (cscript): publish with error handling, Pull and Wait.
 *
 * Nothing sleeps a fixed time: every wait polls with a deadline.
 */
#include "tests/integration/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define WAIT_MS 30000
#define ENDPOINT "sbt-com"

static const char base_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "{v1}"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: com\n"
                                  "    type: com\n"
                                  "    endpoint: " ENDPOINT "\n"
                                  "    max_message: 64KiB\n"
                                  "routes:\n"
                                  "  - name: orders\n"
                                  "    from: orders/#\n"
                                  "    durability: {v0}\n"
                                  "    retry: { backoff: 50ms, max_backoff: 200ms }\n"
                                  "  - name: audit\n"
                                  "    from: orders/#\n"
                                  "  - name: allowed\n"
                                  "    from: allowed/#\n";

/* ---- programs ---- */

/* Runs argv; returns its exit code, its stdout in *out (free()). */
static int run(char **argv, char **out)
{
    char *err = NULL;
    int rc = sbt_run(argv, NULL, 120000, out, &err);
    if (err != NULL && err[0] != '\0')
        fprintf(stderr, "%s: stderr: %s\n", argv[0], err);
    free(err);
    return rc;
}

/* com_client with up to six arguments; its exit code and output. */
static int client(char **out, const char *a1, const char *a2, const char *a3, const char *a4,
                  const char *a5, const char *a6)
{
    char *argv[] = {(char *)sbt_env("SB_COM_CLIENT"),
                    (char *)a1,
                    (char *)a2,
                    (char *)a3,
                    (char *)a4,
                    (char *)a5,
                    (char *)a6,
                    NULL};
    return run(argv, out);
}

/* Starts com_client in the background with its output in dir/name. */
static void client_spawn(sbt_proc *p, sbt_broker *b, const char *name, const char *a1,
                         const char *a2, const char *a3, const char *a4, const char *a5,
                         const char *a6)
{
    char out[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_env("SB_COM_CLIENT"),
                    (char *)a1,
                    (char *)a2,
                    (char *)a3,
                    (char *)a4,
                    (char *)a5,
                    (char *)a6,
                    NULL};
    sbt_path(out, sizeof out, b->dir, name);
    remove(out);
    assert_int_equal(sbt_spawn(p, argv, NULL, out), 0);
}

/* Polls dir/name until it contains needle count times; returns its text. */
static char *wait_output(sbt_broker *b, const char *name, const char *needle, int count, int ms)
{
    char path[SBT_PATH_MAX];
    int64_t deadline = sbt_now_ms() + ms;
    sbt_path(path, sizeof path, b->dir, name);
    sbt_waiting_for("%s to show \"%s\" %d time(s)", name, needle, count);
    for (;;) {
        char *s = sbt_read_file(path, NULL);
        if (s != NULL && sbt_count(s, needle) >= count)
            return s;
        if (sbt_now_ms() > deadline)
            fail_msg("%s did not show \"%s\" %d time(s) within %d ms:\n%s", name, needle, count, ms,
                     s != NULL ? s : "(missing)");
        free(s);
        sbt_poll_pause(20);
    }
}

static void com_register(void)
{
    char *out = NULL;
    char *argv[] = {(char *)sbt_switchboard(), "com", "register", "--endpoint", ENDPOINT, NULL};
    int rc = run(argv, &out);
    if (rc != 0)
        fail_msg("com register: exit %d:\n%s", rc, out != NULL ? out : "");
    free(out);
}

static void com_unregister(void)
{
    char *argv[] = {(char *)sbt_switchboard(), "com", "unregister", NULL};
    char *out = NULL;
    (void)run(argv, &out);
    free(out);
}

static void start(sbt_broker *b, const char *name, const char *durability, const char *extra)
{
    sbt_broker_init(b, name, 1);
    sbt_broker_set(b, 0, durability);
    sbt_broker_set(b, 1, extra != NULL ? extra : "");
    sbt_broker_config(b, base_config);
    sbt_broker_start(b);
}

/* "<what> x y ..." lines: the n-th (0-based) field after what on the
 * first line that starts with what, or NULL. */
static char *field(const char *text, const char *what, int n, char *buf, size_t cap)
{
    const char *p = strstr(text, what);
    if (p == NULL)
        return NULL;
    p += strlen(what);
    for (int i = 0; i <= n; i++) {
        size_t len;
        while (*p == ' ')
            p++;
        len = strcspn(p, " \r\n");
        if (i == n) {
            snprintf(buf, cap, "%.*s", (int)len, p);
            return buf;
        }
        p += len;
    }
    return NULL;
}

/* ---- publish: vtable and IDispatch ---- */

static void test_publish(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    json_t *m;
    char *out = NULL, id[32];

    start(b, "com-publish", "fsync", NULL);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "audit", NULL, 10);

    assert_int_equal(client(&out, "pub", "orders/vtable", "through the vtable", "2", NULL, NULL),
                     0);
    assert_int_equal(sbt_count(out, "ID "), 2);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "orders/vtable");
    assert_string_equal(sbt_str(m, "payload"), "through the vtable");
    /* the id Publish returned is the committed message's */
    assert_non_null(field(out, "ID", 0, id, sizeof id));
    assert_int_equal(sbt_int(m, "msg_id"), atoll(id));
    sbt_ack(c, "audit", sbt_int(m, "msg_id"));
    json_decref(m);
    json_decref(sbt_next_msg(c, WAIT_MS));
    free(out);

    assert_int_equal(client(&out, "disp-pub", "orders/disp", "through IDispatch", NULL, NULL, NULL),
                     0);
    assert_non_null(strstr(out, "ID "));
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "orders/disp");
    assert_string_equal(sbt_str(m, "payload"), "through IDispatch");
    json_decref(m);
    free(out);

    /* a refusal through IDispatch: DISP_E_EXCEPTION with the broker's reason */
    assert_int_equal(client(&out, "disp-pub", "orders/#", "x", NULL, NULL, NULL), 0);
    assert_non_null(strstr(out, "EXC 0x80020009 0x80040202"));
    assert_non_null(strstr(out, "wildcard"));
    free(out);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* A client that creates Switchboard.Broker as soon as the previous one
 * released the relay's last object gets a working object every time,
 * although that relay may be stopping: Windows starts another relay, and
 * on Wine the stopping one takes the client back. */
static void test_create_while_relay_stops(void **state)
{
    sbt_broker *b = *state;
    char *out = NULL;

    start(b, "com-renew", "fsync", NULL);
    if (client(&out, "renew", "orders/renew", "30", NULL, NULL, NULL) != 0 ||
        sbt_count(out, "ID ") != 30)
        fail_msg("com_client renew: %s", out);
    free(out);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- consuming: Pull, events ---- */

static void test_pull_and_events(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc ev = {0};
    char *out = NULL, *text;

    start(b, "com-events", "fsync", NULL);
    c = sbt_connect(b->port[0]);

    /* Pull + Ack through the vtable */
    for (int i = 0; i < 3; i++)
        sbt_pub(c, "orders/pull", "to pull", 2);
    assert_int_equal(client(&out, "pull", "orders", "3", "20000", NULL, NULL), 0);
    assert_int_equal(sbt_count(out, "MSG orders/pull to pull "), 3);
    free(out);
    sbt_wait_queue_int(c, "orders", "depth", 0, WAIT_MS);

    /* OnMessage events: Subscribe and Advise through the vtable, then
     * through IDispatch as a script engine does */
    client_spawn(&ev, b, "ev.out", "events", "orders", "-", "2", "ok", NULL);
    free(wait_output(b, "ev.out", "ADVISED", 1, WAIT_MS));
    sbt_pub(c, "orders/ev", "one", 2);
    sbt_pub(c, "orders/ev", "two", 2);
    text = wait_output(b, "ev.out", "HANDLED 2", 1, WAIT_MS);
    assert_non_null(strstr(text, "EVENT orders/ev one "));
    assert_true(strstr(text, "EVENT orders/ev one ") < strstr(text, "EVENT orders/ev two "));
    free(text);
    assert_true(sbt_proc_wait(&ev, WAIT_MS));
    assert_int_equal(ev.exit_status, 0);
    sbt_proc_release(&ev);
    sbt_wait_queue_int(c, "orders", "depth", 0, WAIT_MS);

    client_spawn(&ev, b, "evd.out", "events", "orders", "orders/#", "1", "disp", NULL);
    free(wait_output(b, "evd.out", "ADVISED", 1, WAIT_MS));
    sbt_pub(c, "orders/evd", "via dispatch", 2);
    free(wait_output(b, "evd.out", "HANDLED 1", 1, WAIT_MS));
    assert_true(sbt_proc_wait(&ev, WAIT_MS));
    sbt_proc_release(&ev);

    /* a handler that raises an error: retried, then handled */
    client_spawn(&ev, b, "evf.out", "events", "orders", "-", "1", "fail-first", NULL);
    free(wait_output(b, "evf.out", "ADVISED", 1, WAIT_MS));
    sbt_pub(c, "orders/evf", "fails once", 2);
    text = wait_output(b, "evf.out", "HANDLED 1", 1, WAIT_MS);
    assert_non_null(strstr(text, "EVENT orders/evf fails once "));
    assert_int_equal(sbt_count(text, "EVENT orders/evf fails once "), 2);
    assert_non_null(strstr(text, " 2\n"));
    free(text);
    assert_true(sbt_proc_wait(&ev, WAIT_MS));
    sbt_proc_release(&ev);
    sbt_wait_queue_int(c, "orders", "depth", 0, WAIT_MS);
    assert_int_equal(sbt_queue_int(c, "orders", "dead"), 0);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- clients that hang or die ---- */

static void test_hung_and_dead_clients(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc hung = {0}, taker = {0};
    char *out = NULL;
    int64_t t0;

    start(b, "com-hung", "fsync", NULL);
    c = sbt_connect(b->port[0]);

    /* OnMessage never returns: after EventTimeout (1.5 s) the delivery is
     * nacked and another consumer gets it, attempt 2 */
    client_spawn(&hung, b, "hung.out", "events", "orders", "-", "1", "hang", "1500");
    free(wait_output(b, "hung.out", "ADVISED", 1, WAIT_MS));
    sbt_pub(c, "orders/hang", "hangs", 2);
    free(wait_output(b, "hung.out", "HANGING", 1, WAIT_MS));
    assert_int_equal(client(&out, "pull", "orders", "1", "20000", NULL, NULL), 0);
    assert_non_null(strstr(out, "MSG orders/hang hangs "));
    assert_non_null(strstr(out, " 2\n"));
    free(out);
    sbt_proc_signal(&hung, 9);
    sbt_proc_release(&hung);

    /* a client that dies holding a message: it comes back at once, well
     * before the 30 s lease */
    sbt_pub(c, "orders/take", "taken", 2);
    client_spawn(&taker, b, "take.out", "take", "orders", NULL, NULL, NULL, NULL);
    free(wait_output(b, "take.out", "TOOK", 1, WAIT_MS));
    assert_true(sbt_proc_wait(&taker, WAIT_MS));
    sbt_proc_release(&taker);
    t0 = sbt_now_ms();
    assert_int_equal(client(&out, "pull", "orders", "1", "20000", NULL, NULL), 0);
    assert_non_null(strstr(out, "MSG orders/take taken "));
    assert_true(sbt_now_ms() - t0 < 20000);
    free(out);
    sbt_wait_queue_int(c, "orders", "depth", 0, WAIT_MS);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    sbt_broker *b = *state;
    char *out = NULL;
    int rc;

    start(b, "com-bad", "memory", NULL);
    rc = client(&out, "bad", NULL, NULL, NULL, NULL, NULL);
    if (rc != 0)
        fail_msg("com_client bad: exit %d:\n%s", rc, out);
    assert_non_null(strstr(out, "STILL OK"));
    /* the broker's reason reaches a script through EXCEPINFO */
    assert_non_null(strstr(out, "the payload must be a String or a Byte array"));
    free(out);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- the broker killed during publishes ---- */

static void test_broker_killed(void **state)
{
    sbt_broker *b = *state;
    sbt_proc pub = {0};
    sbt_conn *c;
    char path[SBT_PATH_MAX], *text, *line;
    int acked = 0, found = 0;
    char *seen;
    enum { N = 150 };

    start(b, "com-kill", "fsync", NULL);
    client_spawn(&pub, b, "pubseq.out", "pubseq", "orders/kill", "150", "90000", NULL, NULL);
    free(wait_output(b, "pubseq.out", "OK ", 20, WAIT_MS));
    sbt_broker_kill(b);
    /* publishes fail while it is away; the client keeps trying */
    free(wait_output(b, "pubseq.out", "ERR ", 1, WAIT_MS));
    sbt_broker_start(b);
    free(wait_output(b, "pubseq.out", "DONE", 1, 90000));
    assert_true(sbt_proc_wait(&pub, WAIT_MS));
    sbt_proc_release(&pub);

    /* every payload whose Publish returned an id is in the queue */
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "orders", NULL, 1000);
    seen = calloc(N, 1);
    assert_non_null(seen);
    for (;;) {
        json_t *m = NULL;
        int64_t deadline = sbt_now_ms() + 3000;
        /* drain until nothing more comes for a while */
        while (m == NULL && sbt_now_ms() < deadline) {
            json_t *o = sbt_read(c, 500);
            if (o != NULL && strcmp(sbt_str(o, "op"), "msg") == 0)
                m = o;
            else
                json_decref(o);
        }
        if (m == NULL)
            break;
        {
            const char *p = sbt_str(m, "payload");
            int i = atoi(p + 2);
            if (strncmp(p, "k-", 2) == 0 && i >= 0 && i < N)
                seen[i] = 1;
        }
        sbt_ack(c, "orders", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_path(path, sizeof path, b->dir, "pubseq.out");
    text = sbt_read_file(path, NULL);
    assert_non_null(text);
    for (line = strstr(text, "OK "); line != NULL; line = strstr(line + 1, "\nOK ")) {
        int i = atoi(line + (line[0] == '\n' ? 4 : 3));
        acked++;
        if (i < 0 || i >= N)
            fail_msg("pubseq printed a bad line:\n%s", text);
        if (!seen[i])
            fail_msg("k-%d was acknowledged with an id but is not in the queue:\n%s", i, text);
        found++;
    }
    assert_int_equal(acked, N);
    assert_int_equal(found, N);
    free(text);
    free(seen);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- the caller's account and the ACL ---- */

/* This process's account as DOMAIN\name (what the broker reads from the
 * relay's pipe: the relay runs as the client). */
static void own_account(char *out, size_t n)
{
    HANDLE tok;
    BYTE buf[256];
    DWORD len, name_len = 256, dom_len = 256;
    wchar_t name[256], dom[256], both[520];
    SID_NAME_USE use;
    assert_true(OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok));
    assert_true(GetTokenInformation(tok, TokenUser, buf, sizeof buf, &len));
    CloseHandle(tok);
    assert_true(LookupAccountSidW(NULL, ((TOKEN_USER *)buf)->User.Sid, name, &name_len, dom,
                                  &dom_len, &use));
    swprintf(both, 520, L"%ls%ls%ls", dom, dom[0] ? L"\\" : L"", name);
    WideCharToMultiByte(CP_UTF8, 0, both, -1, out, (int)n, NULL, NULL);
}

static void test_acl_user(void **state)
{
    sbt_broker *b = *state;
    char me[600], acl[1024], path[SBT_PATH_MAX], extra[SBT_PATH_MAX + 64], *out = NULL;
    int rc;

    sbt_broker_init(b, "com-acl", 1);
    own_account(me, sizeof me);
    snprintf(acl, sizeof acl,
             "# anonymous clients: nothing\n"
             "user %s\n"
             "topic readwrite allowed/#\n",
             me);
    sbt_path(path, sizeof path, b->dir, "acl");
    sbt_write_file(path, acl, strlen(acl));
    snprintf(extra, sizeof extra, "  auth: { acl_file: '%s' }\n", path);
    sbt_broker_set(b, 0, "fsync");
    sbt_broker_set(b, 1, extra);
    sbt_broker_config(b, base_config);
    sbt_broker_start(b);

    assert_int_equal(client(&out, "user", NULL, NULL, NULL, NULL, NULL), 0);
    {
        char want[700];
        snprintf(want, sizeof want, "USER %s\n", me);
        if (strstr(out, want) == NULL)
            fail_msg("the broker does not see the caller's account %s:\n%s", me, out);
    }
    free(out);
    assert_int_equal(client(&out, "pub", "allowed/x", "mine", NULL, NULL, NULL), 0);
    free(out);
    /* a topic the ACL does not give the account: refused, SB_EAUTH */
    rc = client(&out, "pub", "orders/x", "not mine", NULL, NULL, NULL);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "FAIL Publish 0x80040217"));
    free(out);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- VBScript ---- */

/* cscript //nologo SCRIPT args...: its exit code and output. */
static int cscript(char **out, const char *script, const char *a1, const char *a2, const char *a3)
{
    char src[SBT_PATH_MAX], full[SBT_PATH_MAX];
    char *argv[] = {"cscript.exe", "//nologo", full, (char *)a1, (char *)a2, (char *)a3, NULL};
    snprintf(src, sizeof src, "%s/%s", sbt_env("SB_COM_SCRIPTS"), script);
    /* cscript takes a Windows path (a leading / reads as an option) */
    if (GetFullPathNameA(src, sizeof full, full, NULL) == 0)
        fail_msg("GetFullPathName %s failed", src);
    return run(argv, out);
}

static void test_vbscript(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    json_t *m;
    char *out = NULL;
    int rc;

    start(b, "com-vbs", "fsync", NULL);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "audit", NULL, 10);

    rc = cscript(&out, "pub.vbs", "orders/vbs", "from VBScript", "2");
    if (rc != 0)
        fail_msg("pub.vbs: exit %d:\n%s", rc, out);
    assert_int_equal(sbt_count(out, "ID "), 3);
    assert_non_null(strstr(out, "REFUSED 80040202"));
    free(out);
    for (int i = 0; i < 3; i++) {
        m = sbt_next_msg(c, WAIT_MS);
        assert_string_equal(sbt_str(m, "topic"), "orders/vbs");
        assert_non_null(strstr(sbt_str(m, "payload"), "from VBScript"));
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(m, "headers"), "content-type")),
            "text/plain");
        sbt_ack(c, "audit", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    /* the orders queue holds the 3: pull.vbs takes them with Wait and Pull */
    sbt_pub(c, "orders/vbs", "jsonl to VBScript", 2);
    rc = cscript(&out, "pull.vbs", "orders", "4", "20000");
    if (rc != 0)
        fail_msg("pull.vbs: exit %d:\n%s", rc, out);
    assert_non_null(strstr(out, "MSG orders/vbs jsonl to VBScript "));
    assert_non_null(strstr(out, "PULLED 4"));
    free(out);
    sbt_wait_queue_int(c, "orders", "depth", 0, WAIT_MS);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static int group_setup(void **state)
{
    com_register();
    return 0;
}

static int group_teardown(void **state)
{
    com_unregister();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_create_while_relay_stops, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_pull_and_events, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_hung_and_dead_clients, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_broker_killed, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_user, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_vbscript, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
