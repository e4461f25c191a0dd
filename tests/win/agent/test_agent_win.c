/*
 * The session agent on Windows (docs/agent.md), under Wine and unchanged
 * on Windows.
 *
 * wtest_agent_dacl: the security descriptor of an agent's endpoint, read
 * back from the pipe (Wine does not enforce pipe DACLs, so reading it back
 * is what can be checked): SYSTEM and the broker's own account all
 * access, the logon SID of the session read and write without the right
 * to create pipe instances, and nobody else.
 *
 * wtest_agent_service: the real service starting the agent. Under Wine
 * there is one session (the console's, 1), WTSEnumerateSessions lists
 * none, WTS session notifications never come, WTSQueryUserToken returns
 * the caller's own token and the service runs on a window station of its
 * own; what Wine allows is shown: the service finds the console's
 * session, starts `switchboard agent` there with CreateProcessAsUser, the
 * agent connects to that session's pipe and runs an exec adapter
 * (broker.agent.types; `desktop: in-process` does not keep it in the
 * service) whose deliveries arrive, a killed agent is started
 * again, and the service's stop stops it. Only real Windows can show the
 * rest: agents in several sessions, logon and logoff notifications, the
 * user's own token and desktop, a virtual service account being refused
 * WTSQueryUserToken (see docs/agent.md).
 *
 * test_install_picks_localsystem: `service install` of a configuration
 * with a desktop adapter (DDE) makes the service LocalSystem, which agents
 * need, and says why (on Windows it would otherwise take the virtual
 * account; under Wine, which has none, the note is what shows it).
 */
#include "tests/win/pipe/pipe_util.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <sddl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define WAIT_MS 30000

/* ---- stats ---- */

static json_t *agent_stats(sbt_conn *c)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats"), *a;
    sbt_expect_op(r, "stats");
    a = json_incref(json_array_get(json_object_get(json_object_get(r, "broker"), "agents"), 0));
    json_decref(r);
    return a;
}

static json_t *wait_agent(sbt_conn *c, int connected, int starts)
{
    int64_t deadline = sbt_now_ms() + WAIT_MS;
    sbt_waiting_for("the agent: connected %d, starts %d", connected, starts);
    for (;;) {
        json_t *a = agent_stats(c);
        if (a != NULL && json_is_true(json_object_get(a, "connected")) == connected &&
            (starts == 0 || sbt_int(a, "starts") == starts))
            return a;
        if (sbt_now_ms() > deadline) {
            char *text = a != NULL ? json_dumps(a, 0) : NULL;
            fail_msg("the agent did not get to connected=%d starts=%d: %s", connected, starts,
                     text != NULL ? text : "(no agent)");
        }
        json_decref(a);
        sbt_poll_pause(20);
    }
}

/* The logon SID of this process, as a string. */
static void own_logon_sid(char *out, size_t n)
{
    HANDLE token;
    TOKEN_GROUPS *g;
    DWORD len = 0;
    out[0] = '\0';
    assert_true(OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token));
    GetTokenInformation(token, TokenGroups, NULL, 0, &len);
    g = malloc(len);
    assert_non_null(g);
    assert_true(GetTokenInformation(token, TokenGroups, g, len, &len));
    for (DWORD i = 0; i < g->GroupCount; i++)
        if ((g->Groups[i].Attributes & SE_GROUP_LOGON_ID) == SE_GROUP_LOGON_ID) {
            wchar_t *s;
            char *u;
            assert_true(ConvertSidToStringSidW(g->Groups[i].Sid, &s));
            u = sb_wide_to_utf8(s);
            snprintf(out, n, "%s", u);
            sb_free(u);
            LocalFree(s);
            break;
        }
    free(g);
    CloseHandle(token);
    assert_true(out[0] != '\0');
}

/* ---- the endpoint's DACL ---- */

static const char dacl_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "  desktop: agent\n"
                                  "  agent: { endpoint: '{v0}', types: [exec], start: false }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: sink\n"
                                  "    type: exec\n"
                                  "    command: ['{helper}', 'sink', '{dir}/sink.out']\n"
                                  "routes:\n"
                                  "  - { name: to-sink, from: 'out/#', to: sink }\n";

static void test_agent_endpoint_dacl(void **state)
{
    sbt_broker *b = *state;
    char name[128], path[300], self[200], logon[200];
    pt_ace aces[16];
    int n, saw_system = 0, saw_self = 0, saw_logon = 0;
    uint32_t session;
    DWORD sid_session = 0;
    pt_pipe *p;
    sbt_conn *c;
    json_t *a;

    pt_name(name, sizeof(name), "agent-{session}");
    sbt_broker_init(b, "agent-dacl", 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_config(b, dacl_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    a = agent_stats(c);
    assert_non_null(a);
    session = (uint32_t)sbt_int(a, "session");
    /* `switchboard run` serves its own session */
    assert_true(ProcessIdToSessionId(GetCurrentProcessId(), &sid_session));
    assert_int_equal(session, sid_session);
    pt_path(path, sizeof(path), sbt_str(a, "endpoint"));
    json_decref(a);

    pt_own_sid(self, sizeof(self));
    own_logon_sid(logon, sizeof(logon));
    p = pt_open_ok(path, 0);
    n = pt_dacl(p->h, aces, 16);
    for (int i = 0; i < n; i++) {
        print_message("ACE %s 0x%08lx\n", aces[i].sid, (unsigned long)aces[i].mask);
        if (strcmp(aces[i].sid, "S-1-5-18") == 0) {
            saw_system = 1;
            assert_int_equal(aces[i].mask, FILE_ALL_ACCESS);
        } else if (strcmp(aces[i].sid, self) == 0) {
            saw_self = 1;
            assert_int_equal(aces[i].mask, FILE_ALL_ACCESS);
        } else if (strcmp(aces[i].sid, logon) == 0) {
            saw_logon = 1;
            /* read and write; not FILE_CREATE_PIPE_INSTANCE */
            assert_int_equal(aces[i].mask, 0x12019b);
            assert_int_equal(aces[i].mask & FILE_CREATE_PIPE_INSTANCE, 0);
        } else {
            fail_msg("unexpected ACE for %s", aces[i].sid);
        }
    }
    assert_true(saw_system);
    assert_true(saw_self || strcmp(self, "S-1-5-18") == 0);
    assert_true(saw_logon);
    pt_close(p);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- the service starts the agent ---- */

typedef struct svc_test {
    sbt_broker b;
    char dir[SBT_PATH_MAX], cfg[SBT_PATH_MAX], log[SBT_PATH_MAX];
    int installed;
} svc_test;

static int run_switchboard(char **out, const char *a1, const char *a2, const char *a3,
                           const char *a4)
{
    char *argv[] = {
        (char *)sbt_switchboard(), (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    char *o = NULL, *e = NULL;
    int rc = sbt_run(argv, NULL, 120000, &o, &e);
    size_t lo = strlen(o), le = strlen(e);
    *out = malloc(lo + le + 1);
    assert_non_null(*out);
    memcpy(*out, o, lo);
    memcpy(*out + lo, e, le + 1);
    free(o);
    free(e);
    print_message("$ switchboard %s %s -> %d\n%s", a1, a2 != NULL ? a2 : "", rc, *out);
    return rc;
}

static void service_ok(const char *cmd, const char *want)
{
    char *out;
    int rc = run_switchboard(&out, "service", cmd, NULL, NULL);
    if (rc != 0 || strstr(out, want) == NULL)
        fail_msg("`switchboard service %s` exited %d, want 0 and \"%s\"", cmd, rc, want);
    free(out);
}

static void wait_service_log(svc_test *t, const char *needle, int count)
{
    int64_t deadline = sbt_now_ms() + WAIT_MS;
    sbt_waiting_for("%d x \"%s\" in %s", count, needle, t->log);
    for (;;) {
        char *log = sbt_read_file(t->log, NULL);
        int n = log != NULL ? sbt_count(log, needle) : 0;
        free(log);
        if (n >= count)
            return;
        if (sbt_now_ms() > deadline)
            fail_msg("the service log has %d of %d \"%s\"", n, count, needle);
        sbt_poll_pause(20);
    }
}

static const char service_config[] =
    "broker:\n"
    "  data_dir: '{v0}'\n"
    "  admin: { endpoint: 'off' }\n"
    "  log: { level: info, file: '{v1}' }\n"
    "  desktop: in-process\n" /* which the service ignores: never in session 0 */
    "  agent: { endpoint: '{v2}', types: [exec], restart_backoff: 200ms }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: sink\n"
    "    type: exec\n"
    "    command: ['{helper}', 'sink', '{v3}']\n"
    "routes:\n"
    "  - { name: to-sink, from: 'out/#', to: sink }\n";

static int svc_setup(void **state)
{
    svc_test *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    *state = t;
    return 0;
}

static int svc_teardown(void **state)
{
    svc_test *t = *state;
    if (t->installed) {
        char *out = NULL;
        run_switchboard(&out, "service", "uninstall", NULL, NULL);
        free(out);
    }
    if (t->dir[0] != '\0') {
        if (t->b.passed) {
            uv_fs_t req;
            sbt_rmtree(t->dir);
            uv_fs_unlink(NULL, &req, t->cfg, NULL);
            uv_fs_req_cleanup(&req);
        } else {
            char *log = sbt_read_file(t->log, NULL);
            fprintf(stderr, "----- service log %s -----\n%s----- end of service log -----\n",
                    t->log, log != NULL ? log : "(none)\n");
            free(log);
        }
    }
    sbt_broker_cleanup(&t->b);
    free(t);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    return 0;
}

static void test_service_starts_agent(void **state)
{
    svc_test *t = *state;
    sbt_broker *b = &t->b;
    char base[SBT_PATH_MAX], data[SBT_PATH_MAX], sink[SBT_PATH_MAX], endpoint[128], *out, *text;
    size_t len = sizeof(base);
    DWORD my_session = 0;
    int64_t pid;
    HANDLE h;
    json_t *a;
    sbt_conn *c;
    int rc;

    run_switchboard(&out, "service", "status", NULL, NULL);
    if (strstr(out, "not installed") == NULL) {
        free(out);
        print_message("skipped: a Switchboard service is already installed here\n");
        skip();
    }
    free(out);
    sbt_broker_init(b, "agent-service", 1);
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    snprintf(t->cfg, sizeof(t->cfg), "%s\\Switchboard\\sbt-agent-%d.yaml", base,
             (int)uv_os_getpid());
    rc = run_switchboard(&out, "service", "install", "--config", t->cfg);
    if (rc != 0 && strstr(out, "elevated") != NULL) {
        free(out);
        print_message("skipped: installing a service needs administrator rights\n");
        skip();
    }
    if (rc != 0)
        fail_msg("install exited %d", rc);
    free(out);
    t->installed = 1;
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard\\sbt-agent-%d", base, (int)uv_os_getpid());
    {
        uv_fs_t req;
        rc = uv_fs_mkdir(NULL, &req, t->dir, 0700, NULL);
        uv_fs_req_cleanup(&req);
        if (rc != 0 && rc != UV_EEXIST)
            fail_msg("mkdir %s: %s", t->dir, uv_strerror(rc));
    }
    snprintf(data, sizeof(data), "%s\\data", t->dir);
    snprintf(t->log, sizeof(t->log), "%s\\service.log", t->dir);
    snprintf(sink, sizeof(sink), "%s\\sink.out", t->dir);
    snprintf(endpoint, sizeof(endpoint), "sbt-agent-svc-%d-{session}", (int)uv_os_getpid());
    sbt_broker_set(b, 0, data);
    sbt_broker_set(b, 1, t->log);
    sbt_broker_set(b, 2, endpoint);
    sbt_broker_set(b, 3, sink);
    snprintf(b->config_path, sizeof(b->config_path), "%s", t->cfg);
    sbt_broker_write_config(b, service_config);

    service_ok("start", "Switchboard is running.");
    c = sbt_connect(b->port[0]);
    /* the agent of the console's session, started by the service, connected */
    a = wait_agent(c, 1, 1);
    assert_true(ProcessIdToSessionId(GetCurrentProcessId(), &my_session));
    assert_int_equal(sbt_int(a, "session"), my_session);
    pid = sbt_int(a, "pid");
    assert_true(pid > 0);
    json_decref(a);
    wait_service_log(t, "does not apply to the service", 1);
    wait_service_log(t, "connected to the service as the agent of session", 1);
    /* on the interactive window station, where the session's programs'
     * windows are (the service itself is on a station of its own) */
    {
        char *log = sbt_read_file(t->log, NULL), *at;
        assert_non_null(log);
        at = strstr(log, "connected to the service as the agent of session");
        assert_non_null(at);
        print_message("service log: ...%.*s\n", (int)strcspn(at, "\r\n"), at);
        if (strstr(at, "(desktop WinSta0\\Default)") == NULL &&
            strstr(at, "(desktop winsta0\\Default)") == NULL &&
            strstr(at, "(desktop winsta0\\default)") == NULL)
            fail_msg("the agent is not on WinSta0\\Default: %.200s", at);
        free(log);
    }
    {
        /* the agent runs in the session it serves */
        DWORD agent_session = (DWORD)-1;
        assert_true(ProcessIdToSessionId((DWORD)pid, &agent_session));
        assert_int_equal(agent_session, my_session);
    }

    /* its exec sink (a child of the agent) gets the deliveries */
    sbt_pub(c, "out/1", "through the service's agent", 1);
    for (int64_t deadline = sbt_now_ms() + WAIT_MS;;) {
        text = sbt_read_file(sink, NULL);
        if (text != NULL && strstr(text, "through the service's agent\n") != NULL)
            break;
        free(text);
        if (sbt_now_ms() > deadline)
            fail_msg("the sink in the agent did not get the message");
        sbt_poll_pause(20);
    }
    free(text);
    sbt_wait_queue_int(c, "to-sink:sink", "depth", 0, WAIT_MS);

    /* killed: the service starts it again */
    h = OpenProcess(PROCESS_TERMINATE, FALSE, (DWORD)pid);
    if (h == NULL)
        fail_msg("OpenProcess(agent %lld): error %lu", (long long)pid,
                 (unsigned long)GetLastError());
    assert_true(TerminateProcess(h, 9));
    CloseHandle(h);
    json_decref(wait_agent(c, 1, 2));
    wait_service_log(t, "exited with code 9; restarting it in", 1);
    sbt_pub(c, "out/2", "after the restart", 1);
    sbt_wait_queue_int(c, "to-sink:sink", "acked", 2, WAIT_MS);
    sbt_close(c);

    /* the service's stop stops its agent */
    service_ok("stop", "Switchboard stopped.");
    wait_service_log(t, "exited with code 0", 1);
    b->passed = 1;
}

static void test_install_picks_localsystem(void **state)
{
    svc_test *t = *state;
    char base[SBT_PATH_MAX], *out;
    size_t len = sizeof(base);
    SC_HANDLE scm, svc;
    QUERY_SERVICE_CONFIGW *qc;
    DWORD need = 0;
    char *account;
    int rc;

    run_switchboard(&out, "service", "status", NULL, NULL);
    if (strstr(out, "not installed") == NULL) {
        free(out);
        print_message("skipped: a Switchboard service is already installed here\n");
        skip();
    }
    free(out);
    sbt_broker_init(&t->b, "agent-install", 1);
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard\\sbt-agent-inst-%d", base,
             (int)uv_os_getpid());
    snprintf(t->cfg, sizeof(t->cfg), "%s.yaml", t->dir);
    snprintf(t->log, sizeof(t->log), "%s\\service.log", t->dir);
    sbt_broker_set(&t->b, 0, t->dir);
    snprintf(t->b.config_path, sizeof(t->b.config_path), "%s", t->cfg);
    sbt_broker_write_config(&t->b, "broker:\n"
                                   "  data_dir: '{v0}'\n"
                                   "adapters:\n"
                                   "  - { name: excel, type: dde, role: server }\n");
    rc = run_switchboard(&out, "service", "install", "--config", t->cfg);
    if (rc != 0 && strstr(out, "elevated") != NULL) {
        free(out);
        print_message("skipped: installing a service needs administrator rights\n");
        skip();
    }
    if (rc != 0)
        fail_msg("install exited %d", rc);
    t->installed = 1;
    assert_non_null(strstr(out, "has desktop adapters"));
    assert_non_null(strstr(out, "account LocalSystem"));
    free(out);

    scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
    assert_non_null(scm);
    svc = OpenServiceW(scm, L"Switchboard", SERVICE_QUERY_CONFIG);
    assert_non_null(svc);
    QueryServiceConfigW(svc, NULL, 0, &need);
    qc = malloc(need);
    assert_non_null(qc);
    if (!QueryServiceConfigW(svc, qc, need, &need))
        fail_msg("QueryServiceConfig: error %lu", (unsigned long)GetLastError());
    account = sb_wide_to_utf8(qc->lpServiceStartName != NULL ? qc->lpServiceStartName : L"");
    assert_non_null(account);
    if (account[0] != '\0' && _stricmp(account, "LocalSystem") != 0)
        fail_msg("the service runs as %s, not LocalSystem", account);
    sb_free(account);
    free(qc);
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    t->b.passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_agent_endpoint_dacl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_service_starts_agent, svc_setup, svc_teardown),
        cmocka_unit_test_setup_teardown(test_install_picks_localsystem, svc_setup, svc_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("agent-win", tests, NULL, NULL);
}
