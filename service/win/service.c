/*
 * The Windows service: `switchboard service install|uninstall|start|stop|
 * status|run`, and the service main the SCM calls.
 *
 * Lifecycle as PostgreSQL's pg_ctl does it: START_PENDING with a wait hint
 * while the store opens and adapters start; RUNNING only once they listen;
 * STOP_PENDING with rising checkpoints while adapters close and commits
 * drain; STOPPED at the end (with the exit code if start failed). The control
 * handler never touches the broker directly: it asks the loop to stop or
 * reload through the broker's thread-safe request calls (a uv_async, the
 * loop's event). Lifecycle events and every warning/error also go to the
 * Event Log under the source "Switchboard".
 */
#include "config/config.h"
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"
#include "service/service_cmd.h"
#include "service/win/eventlog.h"
#include "service/win/syspath.h"

#include <errno.h>
#include <sddl.h>
#include <shlobj.h>
#include <stdio.h>
#include <string.h>
#include <windows.h>
#include <wtsapi32.h>

#define SERVICE_NAME L"Switchboard"
#define SERVICE_DISPLAY L"Switchboard message broker"
#define SERVICE_ACCOUNT L"NT SERVICE\\Switchboard"
#define SERVICE_DESCRIPTION                                                                        \
    L"Routes messages between Windows IPC mechanisms (pipes, mailslots, sockets, DDE, ...) "       \
    L"through a durable SQLite queue. Configuration: %ls"

static SERVICE_STATUS_HANDLE status_handle;
static SERVICE_STATUS status;
static CRITICAL_SECTION status_lock;
static sb_broker *service_broker;
static int stop_requested;
static HANDLE checkpoint_thread;
static HANDLE broker_done; /* manual-reset: set when the broker run returned */
static volatile LONG stopping;
static char service_config[MAX_PATH * 3];

/* ---- status reporting ---- */

static void report(DWORD state, DWORD exit_code, DWORD wait_hint)
{
    EnterCriticalSection(&status_lock);
    status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    status.dwCurrentState = state;
    status.dwWin32ExitCode = exit_code == 0 ? NO_ERROR : ERROR_SERVICE_SPECIFIC_ERROR;
    status.dwServiceSpecificExitCode = exit_code;
    status.dwWaitHint = wait_hint;
    status.dwControlsAccepted =
        state == SERVICE_RUNNING
            ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PARAMCHANGE |
                  SERVICE_ACCEPT_SESSIONCHANGE
            : 0;
    if (state == SERVICE_RUNNING || state == SERVICE_STOPPED)
        status.dwCheckPoint = 0;
    else
        status.dwCheckPoint++;
    SetServiceStatus(status_handle, &status);
    LeaveCriticalSection(&status_lock);
}

/* While stopping, keep telling the SCM we make progress (draining commits
 * can take longer than one wait hint). Ends as soon as the broker run
 * returned: a plain Sleep here held every stop up by up to 2 s. */
static DWORD WINAPI checkpoint_loop(LPVOID arg)
{
    (void)arg;
    while (WaitForSingleObject(broker_done, 2000) == WAIT_TIMEOUT)
        report(SERVICE_STOP_PENDING, 0, 5000);
    return 0;
}

static void begin_stopping(void)
{
    if (InterlockedExchange(&stopping, 1) == 1)
        return;
    report(SERVICE_STOP_PENDING, 0, 5000);
    if (broker_done != NULL)
        checkpoint_thread = CreateThread(NULL, 0, checkpoint_loop, NULL, 0, NULL);
}

static DWORD WINAPI control_handler(DWORD control, DWORD type, LPVOID data, LPVOID ctx)
{
    (void)ctx;
    switch (control) {
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN:
        sb_info("service", "%s requested by the service control manager",
                control == SERVICE_CONTROL_STOP ? "stop" : "shutdown");
        begin_stopping();
        EnterCriticalSection(&status_lock);
        if (service_broker != NULL)
            sb_broker_request_stop(service_broker);
        else
            stop_requested = 1; /* still starting: stop once ready */
        LeaveCriticalSection(&status_lock);
        return NO_ERROR;
    case SERVICE_CONTROL_PARAMCHANGE:
        EnterCriticalSection(&status_lock);
        if (service_broker != NULL)
            sb_broker_request_reload(service_broker);
        LeaveCriticalSection(&status_lock);
        return NO_ERROR;
    case SERVICE_CONTROL_SESSIONCHANGE:
        /* users logging on and off: the session agents (agent_host.c) */
        if (data != NULL && (type == WTS_SESSION_LOGON || type == WTS_SESSION_LOGOFF)) {
            const WTSSESSION_NOTIFICATION *n = data;
            EnterCriticalSection(&status_lock);
            if (service_broker != NULL)
                sb_broker_session_event(service_broker, (uint32_t)n->dwSessionId,
                                        type == WTS_SESSION_LOGON);
            LeaveCriticalSection(&status_lock);
        }
        return NO_ERROR;
    case SERVICE_CONTROL_INTERROGATE:
        return NO_ERROR;
    default:
        return ERROR_CALL_NOT_IMPLEMENTED;
    }
}

static void on_ready(sb_broker *b, void *ctx)
{
    int stop_now;
    (void)ctx;
    EnterCriticalSection(&status_lock);
    service_broker = b;
    stop_now = stop_requested;
    LeaveCriticalSection(&status_lock);
    if (stop_now) {
        sb_broker_request_stop(b);
        return;
    }
    report(SERVICE_RUNNING, 0, 0);
    sb_info("service", "service running");
}

static void on_stopping(void *ctx)
{
    (void)ctx;
    begin_stopping();
}

static void WINAPI service_main(DWORD argc, LPWSTR *argv)
{
    sb_run_hooks hooks = {on_ready, on_stopping, NULL};
    int rc;
    (void)argc;
    (void)argv;
    status_handle = RegisterServiceCtrlHandlerExW(SERVICE_NAME, control_handler, NULL);
    if (status_handle == NULL) {
        sb_eventlog_write(SB_LOG_ERROR, "service", "RegisterServiceCtrlHandlerEx failed");
        return;
    }
    broker_done = CreateEventW(NULL, TRUE, FALSE, NULL);
    /* Opening a large store can take a while: a generous first hint. */
    report(SERVICE_START_PENDING, 0, 30000);
    sb_info("service", "starting with %s", service_config);
    rc = sb_run_broker(service_config, NULL, &hooks);
    EnterCriticalSection(&status_lock);
    service_broker = NULL;
    LeaveCriticalSection(&status_lock);
    if (broker_done != NULL)
        SetEvent(broker_done);
    if (checkpoint_thread != NULL) {
        WaitForSingleObject(checkpoint_thread, 5000);
        CloseHandle(checkpoint_thread);
        checkpoint_thread = NULL;
    }
    if (rc != 0)
        sb_errlog("service", "the broker could not start (exit code %d); see the messages above",
                  rc);
    else
        sb_info("service", "service stopped");
    sb_log_close();
    report(SERVICE_STOPPED, (DWORD)rc, 0);
}

/* ---- paths ---- */

/* %ProgramData%\Switchboard */
static int program_data_dir(char *out, size_t n)
{
    PWSTR base = NULL;
    char *u;
    if (SHGetKnownFolderPath(&FOLDERID_ProgramData, 0, NULL, &base) != S_OK)
        return -1;
    u = sb_wide_to_utf8(base);
    CoTaskMemFree(base);
    if (u == NULL)
        return -1;
    snprintf(out, n, "%s\\Switchboard", u);
    sb_free(u);
    return 0;
}

static int exe_path(wchar_t *out, DWORD n)
{
    DWORD len = GetModuleFileNameW(NULL, out, n);
    return len == 0 || len == n ? -1 : 0;
}

/* ---- SCM commands ---- */

static void print_win_error(const char *what, DWORD code)
{
    char text[300];
    sb_win_strerror(code, text, sizeof(text));
    fprintf(stderr, "switchboard service: %s: %s\n", what, text);
    if (code == ERROR_ACCESS_DENIED)
        fprintf(stderr, "switchboard service: run this from an elevated (administrator) prompt\n");
}

static SC_HANDLE open_scm(DWORD access)
{
    SC_HANDLE scm = OpenSCManagerW(NULL, NULL, access);
    if (scm == NULL)
        print_win_error("cannot open the service control manager", GetLastError());
    return scm;
}

/* Grants SYSTEM, Administrators and the service's virtual account (unless
 * it runs as LocalSystem) full control of the data directory (creating it
 * if needed); nobody else gets access. The broker checks the same at every start (and creates a missing
 * data directory the same way, for the account it runs as). */
static int secure_data_dir(const char *dir, int localsystem)
{
    wchar_t *wdir = sb_utf8_to_wide(dir);
    BYTE sid[SECURITY_MAX_SID_SIZE];
    DWORD sid_len = sizeof(sid), dom_len = 256, code;
    wchar_t domain[256], *sid_text = NULL;
    SID_NAME_USE use;
    PSECURITY_DESCRIPTOR sd = NULL;
    SECURITY_ATTRIBUTES sa;
    int rc = 0;

    if (wdir == NULL)
        return -1;
    if (localsystem) {
        sid_text = NULL; /* SYSTEM is in the descriptor already */
    } else if (!LookupAccountNameW(NULL, SERVICE_ACCOUNT, sid, &sid_len, domain, &dom_len,
                                   &use) ||
               !ConvertSidToStringSidW(sid, &sid_text)) {
        /* Some systems (and Wine) cannot resolve virtual accounts before the
         * service first runs: SYSTEM and Administrators only. */
        fprintf(stderr,
                "switchboard service: note: cannot resolve %ls; the data directory is "
                "limited to SYSTEM and Administrators\n",
                SERVICE_ACCOUNT);
        sid_text = NULL;
    }
    code = sb_win_private_dir_sd(&sd, sid_text != NULL ? sid_text : L"");
    if (sid_text != NULL)
        LocalFree(sid_text);
    if (code != 0) {
        print_win_error("cannot build the data directory's security descriptor", code);
        sb_free(wdir);
        return -1;
    }
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    if (!CreateDirectoryW(wdir, &sa)) {
        code = GetLastError();
        if (code != ERROR_ALREADY_EXISTS) {
            fprintf(stderr, "switchboard service: %s:\n", dir);
            print_win_error("cannot create the data directory", code);
            rc = -1;
        } else if (!SetFileSecurityW(wdir, DACL_SECURITY_INFORMATION, sd)) {
            fprintf(stderr, "switchboard service: %s:\n", dir);
            print_win_error("cannot set the data directory's permissions", GetLastError());
            rc = -1;
        }
    }
    LocalFree(sd);
    sb_free(wdir);
    return rc;
}

/* Writes the starter configuration to path (text mode: CRLF, as Notepad
 * expects). The caller checked that there is no file there. */
static int write_starter_config(const char *path, const char *data_dir)
{
    char *text = sb_config_starter(data_dir, path);
    FILE *f;
    int rc = -1;
    if (text == NULL) {
        fprintf(stderr, "switchboard service: out of memory\n");
        return -1;
    }
    f = sb_platform_fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "switchboard service: cannot create %s: %s\n", path, strerror(errno));
    } else {
        size_t n = strlen(text);
        int werr = fwrite(text, 1, n, f) != n;
        if (fclose(f) != 0 || werr)
            fprintf(stderr, "switchboard service: cannot write %s: %s\n", path, strerror(errno));
        else
            rc = 0;
    }
    sb_free(text);
    return rc;
}

static int file_exists(const char *path)
{
    wchar_t *w = sb_utf8_to_wide(path);
    DWORD attr = w != NULL ? GetFileAttributesW(w) : INVALID_FILE_ATTRIBUTES;
    sb_free(w);
    return attr != INVALID_FILE_ATTRIBUTES;
}

/* The full path of path (the service starts in System32: a relative
 * --config would not be found there). */
static int full_path(char *out, size_t n, const char *path)
{
    wchar_t *w = sb_utf8_to_wide(path), full[MAX_PATH * 2];
    DWORD len = w != NULL ? GetFullPathNameW(w, MAX_PATH * 2, full, NULL) : 0;
    char *u;
    sb_free(w);
    if (len == 0 || len >= MAX_PATH * 2 || (u = sb_wide_to_utf8(full)) == NULL)
        return -1;
    snprintf(out, n, "%s", u);
    sb_free(u);
    return 0;
}

static int is_absolute(const char *p)
{
    return (((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z')) && p[1] == ':' &&
            (p[2] == '\\' || p[2] == '/')) ||
           (p[0] == '\\' && p[1] == '\\');
}

/* ChangeServiceConfig2W, reporting a failure as a note: the service works
 * without these settings, but the administrator must know they are not in
 * effect. Returns 1 if the setting took. */
static int config2(SC_HANDLE svc, DWORD level, void *info, const char *what)
{
    char text[300];
    if (ChangeServiceConfig2W(svc, level, info))
        return 1;
    sb_win_strerror(GetLastError(), text, sizeof(text));
    fprintf(stderr, "switchboard service: note: cannot set %s: %s\n", what, text);
    return 0;
}

static SC_HANDLE open_service(DWORD access, SC_HANDLE *scm);
static void stop_and_wait(SC_HANDLE svc);

/* What the service will really use: the given configuration's data
 * directory and log, or the starter's (a new file). */
typedef struct install_paths {
    char config[MAX_PATH * 3];
    char data_dir[MAX_PATH * 3];
    char log_file[MAX_PATH * 3];
    int starter; /* no file at config yet: the starter configuration goes there */
    /* The config has desktop adapters (DDE, ...): under the service, session
     * agents host them, and starting an agent in a user's session takes
     * WTSQueryUserToken, which needs SeTcbPrivilege: LocalSystem has it, a
     * virtual account does not. */
    int agents;
} install_paths;

static int needs_agents(const sb_config *cfg)
{
    if (cfg->broker.agent_types_count > 0)
        return 1;
    for (size_t i = 0; i < cfg->adapter_count; i++)
        if (sb_adapter_is_desktop(&cfg->adapters[i]))
            return 1;
    return 0;
}

/* On an error, what_now says what did not happen ("nothing was installed"). */
static int resolve_paths(install_paths *out, const char *config, const char *what_now)
{
    char program_data[MAX_PATH * 3];
    if (program_data_dir(program_data, sizeof(program_data)) != 0) {
        fprintf(stderr, "switchboard service: cannot find %%ProgramData%%\n");
        return -1;
    }
    if (config == NULL)
        snprintf(out->config, sizeof(out->config), "%s\\switchboard.yaml", program_data);
    else if (full_path(out->config, sizeof(out->config), config) != 0) {
        fprintf(stderr, "switchboard service: invalid path %s\n", config);
        return -1;
    }
    out->starter = !file_exists(out->config);
    out->agents = 0;
    if (out->starter) {
        snprintf(out->data_dir, sizeof(out->data_dir), "%s", program_data);
        snprintf(out->log_file, sizeof(out->log_file), "%s\\switchboard.log", program_data);
    } else {
        sb_config *cfg = NULL;
        sb_config_errors errs = {0};
        if (sb_config_load(&cfg, out->config, &errs) != 0) {
            sb_config_errors_print(&errs, stderr);
            sb_config_errors_clear(&errs);
            fprintf(stderr, "switchboard service: %s has errors; %s\n", out->config, what_now);
            return -1;
        }
        snprintf(out->data_dir, sizeof(out->data_dir), "%s", cfg->broker.data_dir);
        snprintf(out->log_file, sizeof(out->log_file), "%s",
                 cfg->broker.log_file != NULL ? cfg->broker.log_file : "");
        out->agents = needs_agents(cfg);
        sb_config_free(cfg);
        if (!is_absolute(out->data_dir))
            fprintf(stderr,
                    "switchboard service: note: data_dir %s is relative: a service resolves it "
                    "from its working directory (System32); give a full path\n",
                    out->data_dir);
    }
    return 0;
}

/* Everything after the service exists (install, and the MSI's custom
 * action): description, delayed start, recovery actions, Event Log source,
 * the data directory's DACL and the starter configuration; then a summary
 * on stdout. Returns 0 or 1. */
static int configure_service(SC_HANDLE svc, const install_paths *paths, int localsystem)
{
    wchar_t desc_text[MAX_PATH * 4], *wconfig = sb_utf8_to_wide(paths->config);
    SERVICE_DESCRIPTIONW desc;
    SERVICE_DELAYED_AUTO_START_INFO delayed = {TRUE};
    SC_ACTION actions[3] = {
        {SC_ACTION_RESTART, 5000}, {SC_ACTION_RESTART, 30000}, {SC_ACTION_RESTART, 60000}};
    SERVICE_FAILURE_ACTIONSW failure;
    SERVICE_FAILURE_ACTIONS_FLAG failure_flag = {TRUE};
    int delayed_ok, restarts, restarts_on_exit = 0;

    if (wconfig == NULL)
        return 1;
    _snwprintf(desc_text, sizeof(desc_text) / sizeof(desc_text[0]), SERVICE_DESCRIPTION, wconfig);
    desc_text[sizeof(desc_text) / sizeof(desc_text[0]) - 1] = 0;
    sb_free(wconfig);
    desc.lpDescription = desc_text;
    config2(svc, SERVICE_CONFIG_DESCRIPTION, &desc, "the service's description");
    delayed_ok = config2(svc, SERVICE_CONFIG_DELAYED_AUTO_START_INFO, &delayed,
                         "delayed automatic start (the service starts with the others at boot)");
    memset(&failure, 0, sizeof(failure));
    failure.dwResetPeriod = 24 * 3600;
    failure.cActions = 3;
    failure.lpsaActions = actions;
    restarts = config2(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &failure,
                       "the recovery actions (the service is not restarted after a failure)");
    /* Without the flag only a crash restarts it, not a failed start. */
    if (restarts)
        restarts_on_exit =
            config2(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &failure_flag,
                    "recovery on a non-zero exit code (only a crash restarts the service)");
    if (sb_eventlog_register() != 0)
        fprintf(stderr, "switchboard service: note: cannot register the Event Log source\n");
    if (secure_data_dir(paths->data_dir, localsystem) != 0 ||
        (paths->starter && write_starter_config(paths->config, paths->data_dir))) {
        fprintf(stderr, "switchboard service: installed, but %s could not be prepared\n",
                paths->starter ? paths->config : paths->data_dir);
        return 1;
    }
    printf("Installed service Switchboard (%s, %s, account %ls).\n"
           "  configuration: %s%s\n"
           "  data:          %s\n"
           "  log file:      %s\n"
           "Start it with: switchboard service start\n",
           delayed_ok ? "delayed automatic start" : "automatic start",
           !restarts          ? "no restart on failure"
           : restarts_on_exit ? "restarts on failure"
                              : "restarts after a crash",
           localsystem ? L"LocalSystem" : SERVICE_ACCOUNT, paths->config,
           paths->starter ? " (new: a starter with commented examples)" : "", paths->data_dir,
           paths->log_file[0] != '\0' ? paths->log_file
                                      : "none (warnings and errors go to the Event Log)");
    return 0;
}

static void note_agents_account(const char *config)
{
    fprintf(stderr,
            "switchboard service: note: %s has desktop adapters (DDE, ...), which session "
            "agents host in the users' sessions; starting them needs LocalSystem "
            "(SeTcbPrivilege), so the service runs as LocalSystem, not %ls\n",
            config, SERVICE_ACCOUNT);
}

static int cmd_install(const char *config)
{
    wchar_t exe[MAX_PATH], cmd[MAX_PATH * 4], *wconfig;
    install_paths paths;
    SC_HANDLE scm, svc = NULL;
    int rc = 1, localsystem = 0;

    if (exe_path(exe, MAX_PATH) != 0) {
        fprintf(stderr, "switchboard service: cannot find the program\n");
        return 1;
    }
    if (resolve_paths(&paths, config, "nothing was installed") != 0)
        return 1;
    wconfig = sb_utf8_to_wide(paths.config);
    if (wconfig == NULL)
        return 1;
    _snwprintf(cmd, sizeof(cmd) / sizeof(cmd[0]), L"\"%ls\" service run --config \"%ls\"", exe,
               wconfig);
    cmd[sizeof(cmd) / sizeof(cmd[0]) - 1] = 0;
    sb_free(wconfig);
    scm = open_scm(SC_MANAGER_CREATE_SERVICE);
    if (scm == NULL)
        return 1;
    if (paths.agents) {
        note_agents_account(paths.config);
        localsystem = 1;
    } else {
        svc = CreateServiceW(scm, SERVICE_NAME, SERVICE_DISPLAY, SERVICE_ALL_ACCESS,
                             SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL,
                             cmd, NULL, NULL, L"Tcpip\0\0", SERVICE_ACCOUNT, NULL);
    }
    if (svc == NULL && !localsystem && GetLastError() == ERROR_INVALID_SERVICE_ACCOUNT) {
        /* Older systems and Wine lack virtual accounts: LocalSystem. */
        fprintf(stderr,
                "switchboard service: note: %ls is not available here; the service runs "
                "as LocalSystem\n",
                SERVICE_ACCOUNT);
        localsystem = 1;
    }
    if (svc == NULL && localsystem)
        svc = CreateServiceW(scm, SERVICE_NAME, SERVICE_DISPLAY, SERVICE_ALL_ACCESS,
                             SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL,
                             cmd, NULL, NULL, L"Tcpip\0\0", NULL, NULL);
    if (svc == NULL) {
        DWORD code = GetLastError();
        print_win_error(code == ERROR_SERVICE_EXISTS ? "already installed (uninstall it first)"
                                                     : "cannot create the service",
                        code);
        goto done;
    }
    rc = configure_service(svc, &paths, localsystem);
done:
    if (svc != NULL)
        CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

/* The folder switchboard.exe is in (for the PATH). */
static int exe_dir(wchar_t *out, DWORD n)
{
    wchar_t *slash;
    if (exe_path(out, n) != 0 || (slash = wcsrchr(out, L'\\')) == NULL)
        return -1;
    *slash = L'\0';
    return 0;
}

/* `service configure`: for an installer that created the service itself
 * (the MSI's ServiceInstall, as LocalSystem): the virtual account where it
 * exists, then what install does after creating it, and the install folder
 * on the system PATH. */
static int cmd_configure(const char *config)
{
    SC_HANDLE scm, svc;
    install_paths paths;
    wchar_t dir[MAX_PATH];
    DWORD code = ERROR_PATH_NOT_FOUND;
    int localsystem = 0, rc;

    if (resolve_paths(&paths, config, "the service was not configured") != 0)
        return 1;
    svc = open_service(SERVICE_CHANGE_CONFIG | SERVICE_QUERY_CONFIG, &scm);
    if (svc == NULL)
        return 1;
    if (paths.agents) {
        note_agents_account(paths.config); /* the MSI made it LocalSystem: it stays */
        localsystem = 1;
    } else if (!ChangeServiceConfigW(svc, SERVICE_NO_CHANGE, SERVICE_NO_CHANGE, SERVICE_NO_CHANGE, NULL,
                              NULL, NULL, NULL, SERVICE_ACCOUNT, L"", NULL)) {
        code = GetLastError();
        fprintf(stderr,
                "switchboard service: note: cannot run the service as %ls (error %lu); it runs "
                "as LocalSystem\n",
                SERVICE_ACCOUNT, (unsigned long)code);
        localsystem = 1;
    }
    rc = configure_service(svc, &paths, localsystem);
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    if (exe_dir(dir, MAX_PATH) != 0 || (code = sb_win_syspath_add(dir)) != 0) {
        print_win_error("cannot add the program's folder to the system PATH", code);
        rc = 1;
    }
    return rc;
}

/* `service unconfigure`: an uninstaller's step before the files go (the
 * installer deletes the service itself): the service stopped and its process
 * gone, and the PATH entry removed. */
static int cmd_unconfigure(void)
{
    wchar_t dir[MAX_PATH];
    DWORD code = ERROR_PATH_NOT_FOUND;
    SC_HANDLE scm, svc = open_service(SERVICE_STOP | SERVICE_QUERY_STATUS, &scm);
    if (svc != NULL) {
        stop_and_wait(svc);
        CloseServiceHandle(svc);
        CloseServiceHandle(scm);
    }
    if (exe_dir(dir, MAX_PATH) != 0 || (code = sb_win_syspath_remove(dir)) != 0) {
        print_win_error("cannot remove the program's folder from the system PATH", code);
        return 1;
    }
    return 0;
}

static SC_HANDLE open_service(DWORD access, SC_HANDLE *scm)
{
    SC_HANDLE svc;
    *scm = open_scm(SC_MANAGER_CONNECT);
    if (*scm == NULL)
        return NULL;
    svc = OpenServiceW(*scm, SERVICE_NAME, access);
    if (svc == NULL) {
        DWORD code = GetLastError();
        print_win_error(code == ERROR_SERVICE_DOES_NOT_EXIST ? "not installed"
                                                             : "cannot open the service",
                        code);
        CloseServiceHandle(*scm);
        *scm = NULL;
    }
    return svc;
}

static const char *state_name(DWORD state)
{
    switch (state) {
    case SERVICE_STOPPED:
        return "stopped";
    case SERVICE_START_PENDING:
        return "starting";
    case SERVICE_STOP_PENDING:
        return "stopping";
    case SERVICE_RUNNING:
        return "running";
    case SERVICE_CONTINUE_PENDING:
        return "continuing";
    case SERVICE_PAUSE_PENDING:
        return "pausing";
    case SERVICE_PAUSED:
        return "paused";
    default:
        return "unknown";
    }
}

/* Waits (up to timeout_ms) until the service leaves its pending state. */
static DWORD wait_state(SC_HANDLE svc, DWORD pending, DWORD timeout_ms, SERVICE_STATUS *st)
{
    DWORD start = GetTickCount();
    while (QueryServiceStatus(svc, st) && st->dwCurrentState == pending) {
        if (GetTickCount() - start > timeout_ms)
            break;
        Sleep(200);
    }
    return st->dwCurrentState;
}

static int cmd_start(void)
{
    SC_HANDLE scm, svc = open_service(SERVICE_START | SERVICE_QUERY_STATUS, &scm);
    SERVICE_STATUS st;
    int rc = 1;
    if (svc == NULL)
        return 1;
    if (!StartServiceW(svc, 0, NULL)) {
        print_win_error("cannot start", GetLastError());
    } else if (wait_state(svc, SERVICE_START_PENDING, 60000, &st) == SERVICE_RUNNING) {
        printf("Switchboard is running.\n");
        rc = 0;
    } else {
        fprintf(stderr,
                "switchboard service: the service is %s (exit code %lu); see the Event "
                "Log (source Switchboard) or the log file\n",
                state_name(st.dwCurrentState), (unsigned long)st.dwServiceSpecificExitCode);
    }
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

static int cmd_control(DWORD control, const char *what)
{
    SC_HANDLE scm,
        svc = open_service(SERVICE_STOP | SERVICE_QUERY_STATUS | SERVICE_PAUSE_CONTINUE, &scm);
    SERVICE_STATUS st;
    int rc = 1;
    if (svc == NULL)
        return 1;
    if (!ControlService(svc, control, &st)) {
        print_win_error(what, GetLastError());
    } else if (control != SERVICE_CONTROL_STOP) {
        printf("Switchboard: %s requested.\n", what);
        rc = 0;
    } else if (wait_state(svc, SERVICE_STOP_PENDING, 120000, &st) == SERVICE_STOPPED) {
        printf("Switchboard stopped.\n");
        rc = 0;
    } else {
        fprintf(stderr, "switchboard service: still %s after 120 s\n",
                state_name(st.dwCurrentState));
    }
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

static int cmd_status(void)
{
    SC_HANDLE scm, svc = open_service(SERVICE_QUERY_STATUS, &scm);
    SERVICE_STATUS st;
    if (svc == NULL)
        return 3;
    if (!QueryServiceStatus(svc, &st)) {
        print_win_error("cannot query", GetLastError());
        CloseServiceHandle(svc);
        CloseServiceHandle(scm);
        return 1;
    }
    printf("Switchboard: %s\n", state_name(st.dwCurrentState));
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return st.dwCurrentState == SERVICE_RUNNING ? 0 : 3;
}

/* Stops the service if it runs and waits until its process has exited, not
 * only until it reports STOPPED: an uninstaller deletes switchboard.exe
 * next, which fails while the process still maps it. */
static void stop_and_wait(SC_HANDLE svc)
{
    SERVICE_STATUS st;
    SERVICE_STATUS_PROCESS sp;
    DWORD need;
    HANDLE proc = NULL;
    if (QueryServiceStatusEx(svc, SC_STATUS_PROCESS_INFO, (BYTE *)&sp, sizeof(sp), &need) &&
        sp.dwProcessId != 0)
        proc = OpenProcess(SYNCHRONIZE, FALSE, sp.dwProcessId);
    if (QueryServiceStatus(svc, &st) && st.dwCurrentState != SERVICE_STOPPED &&
        ControlService(svc, SERVICE_CONTROL_STOP, &st))
        wait_state(svc, SERVICE_STOP_PENDING, 120000, &st);
    if (proc != NULL) {
        if (WaitForSingleObject(proc, 30000) == WAIT_TIMEOUT)
            fprintf(stderr, "switchboard service: note: the service's process (pid %lu) has not "
                            "exited 30 s after stopping\n",
                    (unsigned long)sp.dwProcessId);
        CloseHandle(proc);
    }
}

static int cmd_uninstall(void)
{
    SC_HANDLE scm, svc = open_service(DELETE | SERVICE_STOP | SERVICE_QUERY_STATUS, &scm);
    if (svc == NULL)
        return 1;
    stop_and_wait(svc);
    if (!DeleteService(svc)) {
        print_win_error("cannot delete", GetLastError());
        CloseServiceHandle(svc);
        CloseServiceHandle(scm);
        return 1;
    }
    sb_eventlog_unregister();
    printf("Uninstalled service Switchboard (configuration and data are kept).\n");
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return 0;
}

/* `service run`: what the SCM starts. */
static int cmd_run(const char *config)
{
    SERVICE_TABLE_ENTRYW table[] = {{(LPWSTR)SERVICE_NAME, service_main}, {NULL, NULL}};
    char data_dir[MAX_PATH * 3];
    if (config == NULL) {
        if (program_data_dir(data_dir, sizeof(data_dir)) != 0)
            return 1;
        snprintf(service_config, sizeof(service_config), "%s\\switchboard.yaml", data_dir);
    } else {
        snprintf(service_config, sizeof(service_config), "%s", config);
    }
    InitializeCriticalSection(&status_lock);
    sb_eventlog_open();
    sb_log_set_sink(sb_eventlog_write, SB_LOG_WARN);
    if (!StartServiceCtrlDispatcherW(table)) {
        DWORD code = GetLastError();
        if (code == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
            fprintf(stderr, "switchboard service run: this is what the service control manager "
                            "starts; to run in a console use `switchboard run --config FILE`\n");
        else
            print_win_error("StartServiceCtrlDispatcher", code);
        return 1;
    }
    return 0;
}

static void service_usage(FILE *f)
{
    fprintf(
        f,
        "Usage: switchboard service COMMAND\n"
        "  install [--config FILE]  register the service (delayed automatic start,\n"
        "                           restart on failure, account NT SERVICE\\Switchboard);\n"
        "                           default config %%ProgramData%%\\Switchboard\\switchboard.yaml\n"
        "  uninstall                stop and remove it (configuration and data are kept)\n"
        "  configure [--config FILE] for installers that create the service themselves\n"
        "                           (the MSI): account, recovery, data directory, starter\n"
        "                           config, the program's folder on the system PATH\n"
        "  unconfigure              take the program's folder off the system PATH\n"
        "  start | stop | status    control it; status exits 0 only when running\n"
        "  reload                   re-read the configuration (SERVICE_CONTROL_PARAMCHANGE)\n"
        "  run [--config FILE]      the entry point the service control manager starts\n");
}

int sb_service_command(int argc, char **argv)
{
    const char *config = NULL;
    if (argc < 1) {
        service_usage(stderr);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else {
            fprintf(stderr, "switchboard service %s: unexpected argument '%s'\n", argv[0], argv[i]);
            return 2;
        }
    }
    if (strcmp(argv[0], "install") == 0)
        return cmd_install(config);
    if (strcmp(argv[0], "uninstall") == 0)
        return cmd_uninstall();
    if (strcmp(argv[0], "configure") == 0)
        return cmd_configure(config);
    if (strcmp(argv[0], "unconfigure") == 0)
        return cmd_unconfigure();
    if (strcmp(argv[0], "start") == 0)
        return cmd_start();
    if (strcmp(argv[0], "stop") == 0)
        return cmd_control(SERVICE_CONTROL_STOP, "stop");
    if (strcmp(argv[0], "reload") == 0)
        return cmd_control(SERVICE_CONTROL_PARAMCHANGE, "reload");
    if (strcmp(argv[0], "status") == 0)
        return cmd_status();
    if (strcmp(argv[0], "run") == 0)
        return cmd_run(config);
    if (strcmp(argv[0], "help") == 0) {
        service_usage(stdout);
        return 0;
    }
    service_usage(stderr);
    return 2;
}
