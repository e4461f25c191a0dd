/*
 * The Windows service through the real service control manager (Wine's
 * services.exe under Wine), driven the way an administrator would:
 *
 *   switchboard service install --config FILE   (the Event Log source too)
 *   switchboard service start       RUNNING (QueryServiceStatus, polled)
 *   publish over TCP (and a named pipe when the build has the pipe adapter;
 *   sbctl over the admin pipe too), and through a filemap ring, which the
 *   service creates in Global\ (a program in a user's session could not see
 *   a session-0 Local\ object)
 *   switchboard service stop        STOPPED; the port is closed
 *   switchboard service start       the durable message is still there
 *   switchboard service reload      PARAMCHANGE: a bad config is rejected
 *                                   (logged, Event Log too) and the service
 *                                   keeps serving; then an adapter added to
 *                                   the config starts listening
 *   switchboard service uninstall   gone, Event Log source too
 *
 * As a new user does it: `switchboard service install` with no arguments
 * writes the starter configuration to %ProgramData%\Switchboard\
 * switchboard.yaml (check-config accepts it), `service start` reaches
 * RUNNING, `sbctl stats` answers over the default admin pipe, stop and
 * uninstall. `install --config X` of an existing X describes and prepares
 * X's data directory and log (and refuses an X with errors), and names X in
 * the service's description; what it reports about delayed start and
 * recovery actions is what the SCM holds.
 *
 * Then the account install falls back to without virtual accounts: the same
 * service made with `sc create ... obj= LocalSystem` runs and stops; and
 * `switchboard service run` started by hand explains itself. The
 * config, data and log live in a directory of their own under
 * %ProgramData%\Switchboard, the directory `service install` secures for the
 * service's account (a virtual account on Windows, which could not read the
 * user's temp dir). Under Wine, where services are killed ~3 s after the
 * last ordinary Wine process exits, the run needs a persistent wineserver
 * (`wineserver -p`, as packaging/windows/test-wine.sh does).
 *
 * An already installed Switchboard service is never touched: the test is
 * skipped. Without administrator rights (real Windows) it is skipped too.
 */
#include "tests/integration/harness.h"

#include "adapters/filemap/sb_ring.h"
#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#define SERVICE_WAIT_MS 30000
#define EVENTLOG_KEY L"SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\Switchboard"

/* {v0} data dir, {v1} log file, {v2} admin endpoint ('off' or a pipe),
 * {v3} the pipe adapter (or nothing), {v4} the adapter a reload adds. */
static const char config[] = "broker:\n"
                             "  data_dir: '{v0}'\n"
                             "  admin: { endpoint: '{v2}' }\n"
                             "  log: { level: info, file: '{v1}' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "{v3}"
                             "{v4}"
                             "routes:\n"
                             "  - name: durable\n"
                             "    from: svc/#\n"
                             "    durability: fsync\n";

typedef struct svc_test {
    sbt_broker b;           /* temp dir, ports, config; its broker only probes for pipes */
    char dir[SBT_PATH_MAX]; /* %ProgramData%\Switchboard\sbt-service-<pid> */
    char cfg[SBT_PATH_MAX]; /* its config file, next to the directory */
    char log[SBT_PATH_MAX];
    char pipe[128];  /* the pipe adapter's name, "" without one */
    char ring[64];   /* the filemap adapter's ring */
    char admin[128]; /* the admin endpoint */
    int installed;
} svc_test;

/* ---- running the tools ---- */

/* Runs `switchboard <args...>` (NULL-terminated) and returns its exit code;
 * *out gets stdout and stderr together (free()). */
static int run_switchboard(char **out, const char *a1, const char *a2, const char *a3,
                           const char *a4)
{
    char *argv[] = {
        (char *)sbt_switchboard(), (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    char *o = NULL, *e = NULL;
    int rc = sbt_run(argv, NULL, 120000, &o, &e);
    size_t lo = strlen(o), le = strlen(e);
    char *both = malloc(lo + le + 1);
    assert_non_null(both);
    memcpy(both, o, lo);
    memcpy(both + lo, e, le + 1);
    free(o);
    free(e);
    print_message("$ switchboard %s%s%s%s%s%s%s -> %d\n%s", a1, a2 ? " " : "", a2 ? a2 : "",
                  a3 ? " " : "", a3 ? a3 : "", a4 ? " " : "", a4 ? a4 : "", rc, both);
    *out = both;
    return rc;
}

/* `switchboard service CMD` must succeed and print `want`. */
static void service_ok(const char *cmd, const char *want)
{
    char *out;
    int rc = run_switchboard(&out, "service", cmd, NULL, NULL);
    if (rc != 0 || strstr(out, want) == NULL)
        fail_msg("`switchboard service %s` exited %d, want 0 and \"%s\"", cmd, rc, want);
    free(out);
}

/* Runs sbctl (from $SB_SBCTL) with the given arguments; returns its exit
 * code, *out its stdout (free()). */
static int run_sbctl(char **out, const char *a1, const char *a2, const char *a3, const char *a4)
{
    const char *sbctl = getenv("SB_SBCTL");
    char *argv[] = {(char *)sbctl, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    char *e = NULL;
    int rc;
    if (sbctl == NULL || sbctl[0] == '\0')
        fail_msg("SB_SBCTL is not set (run the test through ctest)");
    rc = sbt_run(argv, NULL, 60000, out, &e);
    if (rc != 0)
        print_message("sbctl %s %s: exit %d: %s", a1, a2, rc, e);
    free(e);
    return rc;
}

/* ---- the service control manager ---- */

static SC_HANDLE open_service(DWORD access)
{
    SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT), svc;
    if (scm == NULL)
        fail_msg("OpenSCManager: error %lu", (unsigned long)GetLastError());
    svc = OpenServiceW(scm, L"Switchboard", access);
    CloseServiceHandle(scm);
    return svc;
}

static const char *state_name(DWORD s)
{
    return s == SERVICE_STOPPED         ? "STOPPED"
           : s == SERVICE_START_PENDING ? "START_PENDING"
           : s == SERVICE_STOP_PENDING  ? "STOP_PENDING"
           : s == SERVICE_RUNNING       ? "RUNNING"
                                        : "another state";
}

/* Polls QueryServiceStatus until the service is in `want`. */
static void wait_state(DWORD want)
{
    SC_HANDLE svc = open_service(SERVICE_QUERY_STATUS);
    int64_t deadline = sbt_now_ms() + SERVICE_WAIT_MS;
    SERVICE_STATUS st;
    if (svc == NULL)
        fail_msg("OpenService(Switchboard): error %lu", (unsigned long)GetLastError());
    for (;;) {
        if (!QueryServiceStatus(svc, &st))
            fail_msg("QueryServiceStatus: error %lu", (unsigned long)GetLastError());
        if (st.dwCurrentState == want)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("the service is %s after %d ms, want %s", state_name(st.dwCurrentState),
                     SERVICE_WAIT_MS, state_name(want));
        sbt_poll_pause(20);
    }
    CloseServiceHandle(svc);
}

/* The installed configuration, as `sc qc` would show it (Wine has no qc). */
static void check_service_config(const char *cfg_path, int want_localsystem)
{
    SC_HANDLE svc = open_service(SERVICE_QUERY_CONFIG);
    QUERY_SERVICE_CONFIGW *qc;
    DWORD need = 0;
    char *bin, *account;
    if (svc == NULL)
        fail_msg("OpenService(Switchboard): error %lu", (unsigned long)GetLastError());
    QueryServiceConfigW(svc, NULL, 0, &need);
    qc = malloc(need);
    assert_non_null(qc);
    if (!QueryServiceConfigW(svc, qc, need, &need))
        fail_msg("QueryServiceConfig: error %lu", (unsigned long)GetLastError());
    bin = sb_wide_to_utf8(qc->lpBinaryPathName);
    account = sb_wide_to_utf8(qc->lpServiceStartName != NULL ? qc->lpServiceStartName : L"");
    assert_non_null(bin);
    assert_non_null(account);
    print_message("service: %s\n  account: %s\n", bin, account[0] ? account : "(LocalSystem)");
    assert_int_equal(qc->dwServiceType, SERVICE_WIN32_OWN_PROCESS);
    assert_int_equal(qc->dwStartType, want_localsystem ? SERVICE_DEMAND_START : SERVICE_AUTO_START);
    assert_non_null(strstr(bin, "\" service run --config \""));
    assert_non_null(strstr(bin, cfg_path));
    /* The virtual account where the system has it, else LocalSystem. */
    if (want_localsystem)
        assert_true(_stricmp(account, "LocalSystem") == 0 || account[0] == '\0');
    else
        assert_true(strcmp(account, "NT SERVICE\\Switchboard") == 0 ||
                    _stricmp(account, "LocalSystem") == 0 || account[0] == '\0');
    sb_free(bin);
    sb_free(account);
    free(qc);
    CloseServiceHandle(svc);
}

static int eventlog_source_registered(void)
{
    HKEY k;
    wchar_t file[MAX_PATH];
    DWORD type = 0, len = sizeof(file);
    LONG rc = RegOpenKeyExW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY, 0, KEY_READ, &k);
    if (rc != ERROR_SUCCESS)
        return 0;
    rc = RegQueryValueExW(k, L"EventMessageFile", NULL, &type, (BYTE *)file, &len);
    RegCloseKey(k);
    return rc == ERROR_SUCCESS && (type == REG_EXPAND_SZ || type == REG_SZ) && len > 2;
}

/* Someone else's service is none of our business. */
static void skip_if_installed(void)
{
    char *out;
    run_switchboard(&out, "service", "status", NULL, NULL);
    if (strstr(out, "not installed") == NULL) {
        free(out);
        print_message("skipped: a Switchboard service is already installed here\n");
        skip();
    }
    free(out);
}

/* ---- config and files ---- */

static void write_config(svc_test *t, int with_extra)
{
    sbt_broker *b = &t->b;
    char pipe_adapter[512], extra[256];
    size_t n;
    /* Values are inserted as they are: no placeholders inside them. */
    snprintf(extra, sizeof(extra),
             "  - name: extra\n    type: tcp\n    listen: 127.0.0.1:%d\n    protocol: jsonl\n",
             b->port[1]);
    if (t->pipe[0] != '\0')
        snprintf(pipe_adapter, sizeof(pipe_adapter),
                 "  - name: local\n"
                 "    type: pipe\n"
                 "    path: '%s'\n"
                 "    protocol: jsonl\n",
                 t->pipe);
    else
        pipe_adapter[0] = '\0';
    n = strlen(pipe_adapter);
    if (t->ring[0] != '\0') /* the lifecycle test's */
        snprintf(pipe_adapter + n, sizeof(pipe_adapter) - n,
                 "  - name: ring\n"
                 "    type: filemap\n"
                 "    ring: '%s'\n"
                 "    capacity: 64KiB\n",
                 t->ring);
    sbt_broker_set(b, 2, t->admin);
    sbt_broker_set(b, 3, pipe_adapter);
    sbt_broker_set(b, 4, with_extra ? extra : "");
    /* The harness writes b->config_path: point it at the service's file. */
    snprintf(b->config_path, sizeof(b->config_path), "%s", t->cfg);
    sbt_broker_write_config(b, config);
}

/* Does this build have the named-pipe adapter? A foreground broker with one
 * (in the harness's temp dir) either becomes ready or says it does not know
 * the type. */
static int have_pipe_adapter(svc_test *t)
{
    sbt_broker *b = &t->b;
    char data[SBT_PATH_MAX], log[SBT_PATH_MAX], adapter[256], *text;
    int rc;
    sbt_path(data, sizeof(data), b->dir, "probe-data");
    sbt_path(log, sizeof(log), b->dir, "probe-file.log");
    snprintf(adapter, sizeof(adapter),
             "  - name: local\n    type: pipe\n    path: '%s-probe'\n    protocol: jsonl\n",
             t->pipe);
    sbt_broker_set(b, 0, data);
    sbt_broker_set(b, 1, log);
    sbt_broker_set(b, 2, "off");
    sbt_broker_set(b, 3, adapter);
    sbt_broker_set(b, 4, "");
    sbt_broker_write_config(b, config);
    rc = sbt_broker_try_start(b); /* -1: ready */
    if (rc < 0) {
        sbt_broker_stop(b);
        return 1;
    }
    text = sbt_broker_log(b);
    if (strstr(text, "unknown type pipe") == NULL) {
        sbt_broker_print_log(b);
        fail_msg("the probe broker exited with %d", rc);
    }
    free(text);
    return 0;
}

static int setup(void **state)
{
    svc_test *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    svc_test *t = *state;
    if (t->installed) {
        char *out = NULL;
        /* Never leave an auto-start service behind: it would start in every
         * later session of this prefix (or at every boot). */
        run_switchboard(&out, "service", "uninstall", NULL, NULL);
        free(out);
    }
    if (t->dir[0] != '\0') {
        if (t->b.passed) {
            char parent[SBT_PATH_MAX], *sep;
            uv_fs_t req;
            sbt_rmtree(t->dir);
            uv_fs_unlink(NULL, &req, t->cfg, NULL);
            uv_fs_req_cleanup(&req);
            /* %ProgramData%\Switchboard too, if nothing else is in it */
            snprintf(parent, sizeof(parent), "%s", t->dir);
            if ((sep = strrchr(parent, '\\')) != NULL) {
                *sep = '\0';
                uv_fs_rmdir(NULL, &req, parent, NULL);
                uv_fs_req_cleanup(&req);
            }
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

/* ---- the test ---- */

static sbt_conn *connect_endpoint(const char *endpoint)
{
    sbt_conn *c = calloc(1, sizeof(*c));
    sb_error err;
    assert_non_null(c);
    snprintf(c->endpoint, sizeof(c->endpoint), "%s", endpoint);
    if (sb_client_connect(&c->c, endpoint, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    c->stash = json_array();
    assert_non_null(c->stash);
    return c;
}

static void test_service_lifecycle(void **state)
{
    svc_test *t = *state;
    sbt_broker *b = &t->b;
    char base[SBT_PATH_MAX], data[SBT_PATH_MAX], *out = NULL;
    size_t len = sizeof(base);
    int rc, pipes;
    sbt_conn *c;
    json_t *m;

    skip_if_installed();

    sbt_broker_init(b, "service", 2);
    snprintf(t->pipe, sizeof(t->pipe), "\\\\.\\pipe\\sbt-service-%d", (int)uv_os_getpid());
    snprintf(t->ring, sizeof(t->ring), "sbt-service-ring-%d", (int)uv_os_getpid());
    pipes = have_pipe_adapter(t);
    if (pipes) {
        snprintf(t->admin, sizeof(t->admin), "\\\\.\\pipe\\sbt-service-admin-%d",
                 (int)uv_os_getpid());
    } else {
        print_message("note: this build has no pipe adapter: the pipe steps are skipped\n");
        t->pipe[0] = '\0';
        snprintf(t->admin, sizeof(t->admin), "off");
    }

    /* Files under %ProgramData%\Switchboard, which install secures. */
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    snprintf(t->cfg, sizeof(t->cfg), "%s\\Switchboard\\sbt-service-%d.yaml", base,
             (int)uv_os_getpid());

    /* install */
    rc = run_switchboard(&out, "service", "install", "--config", t->cfg);
    if (rc != 0 && strstr(out, "elevated") != NULL) {
        free(out);
        print_message("skipped: installing a service needs administrator rights\n");
        skip();
    }
    if (rc != 0 || strstr(out, "Installed service Switchboard") == NULL)
        fail_msg("install exited %d", rc);
    free(out);
    t->installed = 1;
    check_service_config(t->cfg, 0);
    assert_true(eventlog_source_registered());

    /* The directory is created after install so it inherits the ACL that
     * lets the service's account in. */
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard\\sbt-service-%d", base, (int)uv_os_getpid());
    snprintf(data, sizeof(data), "%s\\data", t->dir);
    snprintf(t->log, sizeof(t->log), "%s\\service.log", t->dir);
    {
        uv_fs_t req;
        rc = uv_fs_mkdir(NULL, &req, t->dir, 0700, NULL);
        uv_fs_req_cleanup(&req);
        if (rc != 0 && rc != UV_EEXIST)
            fail_msg("mkdir %s: %s", t->dir, uv_strerror(rc));
    }
    sbt_broker_set(b, 0, data);
    sbt_broker_set(b, 1, t->log);
    write_config(t, 0);

    /* start: RUNNING only once the adapters listen */
    service_ok("start", "Switchboard is running.");
    wait_state(SERVICE_RUNNING);
    service_ok("status", "Switchboard: running");

    /* publish over TCP, and over the pipe */
    c = sbt_connect(b->port[0]);
    sbt_pub(c, "svc/tcp", "kept across a restart (tcp)", 1);
    sbt_close(c);
    if (pipes) {
        c = connect_endpoint(t->pipe);
        sbt_pub(c, "svc/pipe", "kept across a restart (pipe)", 1);
        sbt_close(c);
        /* sbctl through the admin pipe */
        assert_int_equal(run_sbctl(&out, "-e", t->admin, "ping", NULL), 0);
        assert_non_null(strstr(out, "pong"));
        free(out);
    }
    /* and through the ring, which is in Global\, not in Local\ */
    {
        char name[128];
        wchar_t wname[128];
        sb_ring *r;
        uint64_t seq;
        HANDLE local;
        snprintf(name, sizeof(name), "Global\\%s", t->ring);
        assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
        assert_int_equal(sb_ring_write(r, "svc/ring", "kept across a restart (ring)", 28, 5000,
                                       &seq),
                         SB_RING_OK);
        assert_int_equal(sb_ring_wait_committed(r, seq, SBT_REPLY_MS), SB_RING_OK);
        sb_ring_close(r);
        wcscpy(wname, L"Local\\");
        for (size_t i = 0; t->ring[i] != '\0' && i < 100; i++)
            wname[6 + i] = (wchar_t)t->ring[i], wname[7 + i] = 0; /* ASCII */
        local = OpenFileMappingW(FILE_MAP_READ, FALSE, wname);
        if (local != NULL)
            fail_msg("the service's ring is in Local\\ too");
    }
    {
        char ep[64];
        snprintf(ep, sizeof(ep), "tcp:127.0.0.1:%d", b->port[0]);
        assert_int_equal(run_sbctl(&out, "-e", ep, "stats", NULL), 0);
        assert_non_null(strstr(out, "durable"));
        free(out);
    }

    /* stop: STOPPED, and nothing listens any more */
    service_ok("stop", "Switchboard stopped.");
    wait_state(SERVICE_STOPPED);
    rc = run_switchboard(&out, "service", "status", NULL, NULL);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "Switchboard: stopped"));
    free(out);
    c = sbt_try_connect(b->port[0], 2000);
    if (c != NULL)
        fail_msg("port %d still accepts connections after the stop", b->port[0]);

    /* start again: the messages are still there */
    service_ok("start", "Switchboard is running.");
    wait_state(SERVICE_RUNNING);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "durable", NULL, 10);
    for (int i = 0; i < (pipes ? 3 : 2); i++) {
        const char *topic;
        m = sbt_next_msg(c, SBT_REPLY_MS);
        topic = sbt_str(m, "topic");
        if (strcmp(topic, "svc/tcp") == 0) {
            assert_string_equal(sbt_str(m, "payload"), "kept across a restart (tcp)");
        } else if (strcmp(topic, "svc/ring") == 0) {
            assert_string_equal(sbt_str(m, "payload"), "kept across a restart (ring)");
        } else {
            assert_string_equal(topic, "svc/pipe");
            assert_string_equal(sbt_str(m, "payload"), "kept across a restart (pipe)");
        }
        sbt_ack(c, "durable", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_wait_queue_int(c, "durable", "depth", 0, 5000);

    /* A bad config is rejected: the errors go to the log and, as
     * warnings and errors, to the Event Log (ReportEventW); the service
     * keeps running on the old one. */
    {
        static const char bad[] = "broker:\n  data_dir: 'x'\n  colour: blue\n";
        int64_t deadline = sbt_now_ms() + SERVICE_WAIT_MS;
        sbt_write_file(t->cfg, bad, strlen(bad));
        service_ok("reload", "reload requested");
        for (;;) {
            char *log = sbt_read_file(t->log, NULL);
            int n = sbt_count(log, "reload rejected");
            free(log);
            if (n == 1)
                break;
            if (sbt_now_ms() > deadline)
                fail_msg("the service did not reject the bad config within %d ms", SERVICE_WAIT_MS);
            sbt_poll_pause(20);
        }
        wait_state(SERVICE_RUNNING);
        sbt_expect_op(m = sbt_call(c, "{s:s}", "op", "ping"), "pong");
        json_decref(m);
    }

    /* reload (PARAMCHANGE): the new adapter starts, the old connection
     * stays */
    write_config(t, 1);
    service_ok("reload", "reload requested");
    {
        int64_t deadline = sbt_now_ms() + SERVICE_WAIT_MS;
        sbt_conn *extra;
        while ((extra = sbt_try_connect(b->port[1], 1000)) == NULL) {
            if (sbt_now_ms() > deadline)
                fail_msg("the adapter added by the reload does not listen on %d", b->port[1]);
            sbt_poll_pause(20);
        }
        sbt_pub(extra, "svc/extra", "after the reload", 1);
        sbt_close(extra);
    }
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "after the reload");
    sbt_ack(c, "durable", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_close(c);
    wait_state(SERVICE_RUNNING);

    /* uninstall: stops it and removes it, and the Event Log source */
    service_ok("uninstall", "Uninstalled service Switchboard");
    t->installed = 0;
    rc = run_switchboard(&out, "service", "status", NULL, NULL);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "not installed"));
    free(out);
    assert_false(eventlog_source_registered());
    {
        char *log = sbt_read_file(t->log, NULL);
        assert_non_null(log);
        assert_int_equal(sbt_count(log, "[service] service running"), 2);
        assert_int_equal(sbt_count(log, "[service] service stopped"), 2);
        assert_int_equal(sbt_count(log, "configuration reloaded"), 1);
        free(log);
    }
    b->passed = 1;
}

/* The service's description (QueryServiceConfig2W), UTF-8 (sb_free). */
static char *service_description(void)
{
    SC_HANDLE svc = open_service(SERVICE_QUERY_CONFIG);
    union {
        SERVICE_DESCRIPTIONW d;
        char buf[8192];
    } info;
    DWORD need = 0;
    char *u;
    if (svc == NULL)
        fail_msg("OpenService(Switchboard): error %lu", (unsigned long)GetLastError());
    if (!QueryServiceConfig2W(svc, SERVICE_CONFIG_DESCRIPTION, (BYTE *)&info, sizeof(info), &need))
        fail_msg("QueryServiceConfig2W(DESCRIPTION): error %lu", (unsigned long)GetLastError());
    CloseServiceHandle(svc);
    u = sb_wide_to_utf8(info.d.lpDescription != NULL ? info.d.lpDescription : L"");
    assert_non_null(u);
    return u;
}

/* What install said about delayed start and recovery is what the SCM holds
 * (where the SCM can be asked). */
static void check_install_claims(const char *out)
{
    SC_HANDLE svc = open_service(SERVICE_QUERY_CONFIG);
    union {
        SERVICE_DELAYED_AUTO_START_INFO d;
        SERVICE_FAILURE_ACTIONSW f;
        char buf[4096];
    } info;
    DWORD need = 0;
    if (svc == NULL)
        fail_msg("OpenService(Switchboard): error %lu", (unsigned long)GetLastError());
    if (QueryServiceConfig2W(svc, SERVICE_CONFIG_DELAYED_AUTO_START_INFO, (BYTE *)&info,
                             sizeof(info), &need)) {
        print_message("delayed automatic start: %d\n", (int)info.d.fDelayedAutostart);
        assert_int_equal(strstr(out, "(delayed automatic start") != NULL,
                         info.d.fDelayedAutostart != 0);
    } else {
        print_message("note: QueryServiceConfig2W(DELAYED_AUTO_START_INFO): error %lu\n",
                      (unsigned long)GetLastError());
    }
    if (QueryServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, (BYTE *)&info, sizeof(info),
                             &need)) {
        print_message("recovery actions: %lu\n", (unsigned long)info.f.cActions);
        assert_int_equal(strstr(out, "no restart on failure") == NULL, info.f.cActions == 3);
    } else {
        print_message("note: QueryServiceConfig2W(FAILURE_ACTIONS): error %lu\n",
                      (unsigned long)GetLastError());
    }
    CloseServiceHandle(svc);
}

typedef struct new_user {
    char dir[SBT_PATH_MAX]; /* %ProgramData%\Switchboard */
    char cfg[SBT_PATH_MAX]; /* its switchboard.yaml */
    int made_dir, made_cfg, installed;
} new_user;

static int new_user_setup(void **state)
{
    new_user *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    *state = t;
    return 0;
}

/* Removes what the test made: the service, the starter, the store and log
 * it wrote, and the directory if it made it and nothing else is in it. */
static int new_user_teardown(void **state)
{
    new_user *t = *state;
    uv_fs_t req;
    if (t->installed) {
        char *out = NULL;
        run_switchboard(&out, "service", "uninstall", NULL, NULL);
        free(out);
    }
    if (t->made_cfg) {
        static const char *const files[] = {"switchboard.yaml", "switchboard.db",
                                            "switchboard.db-wal", "switchboard.db-shm",
                                            "switchboard.log"};
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            char path[SBT_PATH_MAX];
            snprintf(path, sizeof(path), "%s\\%s", t->dir, files[i]);
            uv_fs_unlink(NULL, &req, path, NULL);
            uv_fs_req_cleanup(&req);
        }
    }
    if (t->made_dir) {
        uv_fs_rmdir(NULL, &req, t->dir, NULL);
        uv_fs_req_cleanup(&req);
    }
    free(t);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    return 0;
}

static void expect_line(const char *out, const char *label, const char *value, const char *tail)
{
    char want[SBT_PATH_MAX * 2];
    snprintf(want, sizeof(want), "  %s%s%s\n", label, value, tail);
    if (strstr(out, want) == NULL)
        fail_msg("install did not say \"%s\"", want);
}

static void test_service_new_user(void **state)
{
    new_user *t = *state;
    char base[SBT_PATH_MAX], want[SBT_PATH_MAX * 2], log[SBT_PATH_MAX], *out = NULL, *desc;
    size_t len = sizeof(base);
    uv_fs_t req;
    int rc;

    skip_if_installed();
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard", base);
    snprintf(t->cfg, sizeof(t->cfg), "%s\\switchboard.yaml", t->dir);
    snprintf(log, sizeof(log), "%s\\switchboard.log", t->dir);
    if (uv_fs_stat(NULL, &req, t->cfg, NULL) == 0) {
        uv_fs_req_cleanup(&req);
        print_message("skipped: %s exists (someone's configuration)\n", t->cfg);
        skip();
    }
    uv_fs_req_cleanup(&req);
    if (WaitNamedPipeW(L"\\\\.\\pipe\\switchboard-admin", 1) ||
        GetLastError() == ERROR_SEM_TIMEOUT) {
        print_message("skipped: \\\\.\\pipe\\switchboard-admin is served by another program\n");
        skip();
    }
    t->made_dir = uv_fs_stat(NULL, &req, t->dir, NULL) != 0;
    uv_fs_req_cleanup(&req);

    /* install, as the README says: no arguments */
    rc = run_switchboard(&out, "service", "install", NULL, NULL);
    if (rc != 0 && strstr(out, "elevated") != NULL) {
        free(out);
        print_message("skipped: installing a service needs administrator rights\n");
        skip();
    }
    t->made_cfg = 1;
    if (rc != 0 || strstr(out, "Installed service Switchboard") == NULL)
        fail_msg("install exited %d", rc);
    t->installed = 1;
    expect_line(out, "configuration: ", t->cfg, " (new: a starter with commented examples)");
    expect_line(out, "data:          ", t->dir, "");
    expect_line(out, "log file:      ", log, "");
    check_install_claims(out);
    free(out);
    check_service_config(t->cfg, 0);
    desc = service_description();
    snprintf(want, sizeof(want), "Configuration: %s", t->cfg);
    if (strstr(desc, want) == NULL)
        fail_msg("the description \"%s\" does not name %s", desc, t->cfg);
    sb_free(desc);

    /* the file it wrote is a valid configuration */
    rc = run_switchboard(&out, "check-config", t->cfg, NULL, NULL);
    assert_int_equal(rc, 0);
    free(out);

    service_ok("start", "Switchboard is running.");
    wait_state(SERVICE_RUNNING);
    /* sbctl with no endpoint: the default admin pipe */
    assert_int_equal(run_sbctl(&out, "stats", NULL, NULL, NULL), 0);
    if (strstr(out, "broker: version") == NULL)
        fail_msg("sbctl stats said: %s", out);
    free(out);
    service_ok("stop", "Switchboard stopped.");
    wait_state(SERVICE_STOPPED);
    service_ok("uninstall", "Uninstalled service Switchboard");
    t->installed = 0;
    {
        char *text = sbt_read_file(log, NULL);
        assert_non_null(text);
        assert_int_equal(sbt_count(text, "[service] service running"), 1);
        assert_int_equal(sbt_count(text, "[service] service stopped"), 1);
        free(text);
    }
}

/* install --config X with an existing X: what X uses, not %ProgramData%. */
static void test_install_existing_config(void **state)
{
    new_user *t = *state;
    char base[SBT_PATH_MAX], data[SBT_PATH_MAX], log[SBT_PATH_MAX], text[3 * SBT_PATH_MAX];
    char *out = NULL, *desc;
    uv_fs_t req;
    size_t len = sizeof(base);
    int rc;

    skip_if_installed();
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    sbt_mkdtemp(t->dir, sizeof(t->dir), "install-cfg");
    for (char *p = t->dir; *p != '\0'; p++) /* as install prints it: a full path */
        if (*p == '/')
            *p = '\\';
    t->made_dir = 0;
    snprintf(t->cfg, sizeof(t->cfg), "%s\\custom.yaml", t->dir);
    snprintf(data, sizeof(data), "%s\\store", t->dir);
    snprintf(log, sizeof(log), "%s\\custom.log", t->dir);

    /* A config with an error: refused with its position, nothing installed. */
    snprintf(text, sizeof(text), "broker:\n  data_dir: '%s'\n  colour: blue\n", data);
    sbt_write_file(t->cfg, text, strlen(text));
    rc = run_switchboard(&out, "service", "install", "--config", t->cfg);
    if (rc != 0 && strstr(out, "elevated") != NULL) {
        free(out);
        sbt_rmtree(t->dir);
        print_message("skipped: installing a service needs administrator rights\n");
        skip();
    }
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "custom.yaml:3:3: broker.colour: unknown key"));
    assert_non_null(strstr(out, "has errors; nothing was installed"));
    free(out);
    rc = run_switchboard(&out, "service", "status", NULL, NULL);
    assert_non_null(strstr(out, "not installed"));
    free(out);

    snprintf(text, sizeof(text), "broker:\n  data_dir: '%s'\n  log: { file: '%s' }\n", data, log);
    sbt_write_file(t->cfg, text, strlen(text));
    rc = run_switchboard(&out, "service", "install", "--config", t->cfg);
    if (rc != 0)
        fail_msg("install exited %d", rc);
    t->installed = 1;
    expect_line(out, "configuration: ", t->cfg, "");
    expect_line(out, "data:          ", data, "");
    expect_line(out, "log file:      ", log, "");
    assert_null(strstr(out, "ProgramData"));
    check_install_claims(out);
    free(out);
    desc = service_description();
    assert_non_null(strstr(desc, t->cfg));
    sb_free(desc);
    /* install prepared the data directory */
    assert_int_equal(uv_fs_stat(NULL, &req, data, NULL), 0);
    uv_fs_req_cleanup(&req);
    /* and left the configuration as it was */
    {
        char *now = sbt_read_file(t->cfg, NULL);
        assert_string_equal(now, text);
        free(now);
    }
    service_ok("uninstall", "Uninstalled service Switchboard");
    t->installed = 0;
    sbt_rmtree(t->dir);
}

/* The account `service install` falls back to where virtual accounts are
 * missing (ERROR_INVALID_SERVICE_ACCOUNT): the same service created with
 * `sc create ... obj= LocalSystem` runs, serves and stops. (Wine 8 accepts
 * NT SERVICE\Switchboard in CreateService, so install never falls back
 * there; this checks the configuration the fallback creates.) */
static void test_service_as_localsystem(void **state)
{
    svc_test *t = *state;
    sbt_broker *b = &t->b;
    char base[SBT_PATH_MAX], root[SBT_PATH_MAX], sc[SBT_PATH_MAX], bin[3 * SBT_PATH_MAX];
    char data[SBT_PATH_MAX], *out = NULL, *err = NULL;
    size_t len = sizeof(base);
    sbt_conn *c;
    uv_fs_t req;
    int rc;

    skip_if_installed();
    sbt_broker_init(b, "service-ls", 2);
    snprintf(t->admin, sizeof(t->admin), "off");
    if (uv_os_getenv("ProgramData", base, &len) != 0)
        fail_msg("%%ProgramData%% is not set");
    len = sizeof(root);
    if (uv_os_getenv("SystemRoot", root, &len) != 0)
        fail_msg("%%SystemRoot%% is not set");
    snprintf(sc, sizeof(sc), "%s\\System32\\sc.exe", root);
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard", base);
    uv_fs_mkdir(NULL, &req, t->dir, 0700, NULL); /* exists once install ran */
    uv_fs_req_cleanup(&req);
    snprintf(t->dir, sizeof(t->dir), "%s\\Switchboard\\sbt-service-ls-%d", base,
             (int)uv_os_getpid());
    snprintf(t->cfg, sizeof(t->cfg), "%s.yaml", t->dir);
    snprintf(data, sizeof(data), "%s\\data", t->dir);
    snprintf(t->log, sizeof(t->log), "%s\\service.log", t->dir);
    rc = uv_fs_mkdir(NULL, &req, t->dir, 0700, NULL);
    uv_fs_req_cleanup(&req);
    if (rc != 0 && rc != UV_EEXIST)
        fail_msg("mkdir %s: %s", t->dir, uv_strerror(rc));
    sbt_broker_set(b, 0, data);
    sbt_broker_set(b, 1, t->log);
    write_config(t, 0);

    snprintf(bin, sizeof(bin), "\"%s\" service run --config \"%s\"", sbt_switchboard(), t->cfg);
    {
        char *argv[] = {sc,       "create", "Switchboard", "binPath=",    bin,
                        "start=", "demand", "obj=",        "LocalSystem", NULL};
        rc = sbt_run(argv, NULL, 60000, &out, &err);
        print_message("$ sc create Switchboard binPath= %s start= demand obj= LocalSystem -> %d\n"
                      "%s%s",
                      bin, rc, out, err);
        if (rc == ERROR_ACCESS_DENIED) { /* sc exits with the error code */
            free(out);
            free(err);
            print_message("skipped: creating a service needs administrator rights\n");
            skip();
        }
        assert_int_equal(rc, 0);
        free(out);
        free(err);
    }
    t->installed = 1;
    check_service_config(t->cfg, 1);

    service_ok("start", "Switchboard is running.");
    wait_state(SERVICE_RUNNING);
    c = sbt_connect(b->port[0]);
    sbt_pub(c, "svc/ls", "as LocalSystem", 1);
    sbt_close(c);
    service_ok("stop", "Switchboard stopped.");
    wait_state(SERVICE_STOPPED);
    {
        char *argv[] = {sc, "delete", "Switchboard", NULL};
        rc = sbt_run(argv, NULL, 60000, &out, &err);
        assert_int_equal(rc, 0);
        free(out);
        free(err);
    }
    t->installed = 0;
    {
        char *log = sbt_read_file(t->log, NULL);
        assert_non_null(log);
        assert_int_equal(sbt_count(log, "[service] service running"), 1);
        assert_int_equal(sbt_count(log, "[service] service stopped"), 1);
        free(log);
    }
    b->passed = 1;
}

/* `service run` is what the SCM starts; by hand it fails with a pointer to
 * `switchboard run` (StartServiceCtrlDispatcher: 1063). */
static void test_service_run_by_hand(void **state)
{
    char *out;
    int rc;
    (void)state;
    rc = run_switchboard(&out, "service", "run", NULL, NULL);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "to run in a console use `switchboard run --config FILE`"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_service_new_user, new_user_setup, new_user_teardown),
        cmocka_unit_test_setup_teardown(test_install_existing_config, new_user_setup,
                                        new_user_teardown),
        cmocka_unit_test_setup_teardown(test_service_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_as_localsystem, setup, teardown),
        cmocka_unit_test(test_service_run_by_hand),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("service", tests, NULL, NULL);
}
