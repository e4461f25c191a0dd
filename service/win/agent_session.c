/*
 * service/agent_proc.h on Windows: sessions, the DACL of a session's
 * endpoint, and starting an agent as the user of a session.
 *
 * The service runs in session 0; a user's programs run in the session of
 * their logon, on its interactive window station (winsta0). An agent is
 * started there with the token WTSQueryUserToken returns for the session,
 * which only LocalSystem (SeTcbPrivilege) may ask for. Its endpoint admits
 * SYSTEM, the service's own account, and the logon SID of that session's
 * user, the SID Windows gives the processes of one logon: another user, or
 * the same user logged on in another session, cannot open it. The user may
 * read and write but not create instances of the pipe
 * (FILE_CREATE_PIPE_INSTANCE is left out), so no program of theirs can
 * serve the agent's pipe name while the service does.
 *
 * The exit of an agent is watched by a thread-pool wait on its process
 * handle, which wakes the loop through a uv_async.
 */
#include "service/agent_proc.h"
#include "service/alloc.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <windows.h>
#include <sddl.h>
#include <userenv.h>
#include <wtsapi32.h>

/* FILE_GENERIC_READ | FILE_WRITE_DATA | FILE_WRITE_EA | FILE_WRITE_ATTRIBUTES:
 * FILE_GENERIC_WRITE without FILE_APPEND_DATA, which for a pipe is
 * FILE_CREATE_PIPE_INSTANCE. */
#define USER_ACCESS L"0x12019b"
#define SYSTEM_SID L"S-1-5-18"

struct sb_agent_proc {
    HANDLE process;
    HANDLE wait;
    DWORD pid;
    uv_async_t async;
    sb_agent_exit_cb cb;
    void *ctx;
    int exited; /* the thread-pool wait fired */
};

uint32_t sb_agent_current_session(void)
{
    DWORD session = 0;
    if (!ProcessIdToSessionId(GetCurrentProcessId(), &session))
        return 0;
    return (uint32_t)session;
}

static void object_name(HANDLE h, char *out, size_t n)
{
    wchar_t name[128];
    DWORD len = 0;
    char *u;
    out[0] = '\0';
    if (h == NULL || !GetUserObjectInformationW(h, UOI_NAME, name, sizeof(name), &len))
        return;
    name[sizeof(name) / sizeof(name[0]) - 1] = 0;
    if ((u = sb_wide_to_utf8(name)) != NULL)
        snprintf(out, n, "%s", u);
    sb_free(u);
}

void sb_agent_desktop(char *out, size_t n)
{
    char station[128], desktop[128];
    object_name(GetProcessWindowStation(), station, sizeof(station));
    object_name(GetThreadDesktop(GetCurrentThreadId()), desktop, sizeof(desktop));
    snprintf(out, n, "%s\\%s", station, desktop);
}

/* 1 if someone is logged on to session id. */
static int has_user(DWORD id)
{
    wchar_t *name = NULL;
    DWORD len = 0;
    int yes;
    if (!WTSQuerySessionInformationW(WTS_CURRENT_SERVER_HANDLE, id, WTSUserName, &name, &len))
        return 0;
    yes = name != NULL && name[0] != L'\0';
    WTSFreeMemory(name);
    return yes;
}

static size_t add_id(uint32_t *out, size_t cap, size_t n, DWORD id)
{
    for (size_t i = 0; i < n && i < cap; i++)
        if (out[i] == id)
            return n;
    if (n < cap)
        out[n] = id;
    return n + 1;
}

size_t sb_agent_sessions(uint32_t *out, size_t cap)
{
    WTS_SESSION_INFOW *info = NULL;
    DWORD count = 0, console = WTSGetActiveConsoleSessionId();
    size_t n = 0;
    if (WTSEnumerateSessionsW(WTS_CURRENT_SERVER_HANDLE, 0, 1, &info, &count)) {
        for (DWORD i = 0; i < count; i++) {
            WTS_CONNECTSTATE_CLASS st = info[i].State;
            /* a disconnected session still runs its user's programs */
            if (info[i].SessionId != 0 &&
                (st == WTSActive || st == WTSConnected || st == WTSDisconnected) &&
                has_user(info[i].SessionId))
                n = add_id(out, cap, n, info[i].SessionId);
        }
        WTSFreeMemory(info);
    }
    /* The console's session too: Wine lists no sessions at all. */
    if (console != 0xFFFFFFFF && console != 0 && has_user(console))
        n = add_id(out, cap, n, console);
    return n;
}

void sb_agent_default_endpoint(char *out, size_t n, const char *data_dir)
{
    (void)data_dir;
    snprintf(out, n, "switchboard-agent-{session}");
}

void sb_agent_endpoint_path(char *out, size_t n, const char *name)
{
    if (name[0] == '\\' && name[1] == '\\')
        snprintf(out, n, "%s", name);
    else
        snprintf(out, n, "\\\\.\\pipe\\%s", name);
}

static int win_error(sb_error *err, DWORD code, const char *fmt, const char *what, uint32_t session)
{
    char text[256], msg[200];
    sb_win_strerror(code, text, sizeof(text));
    snprintf(msg, sizeof(msg), fmt, what, (unsigned long)session);
    if (code == ERROR_PRIVILEGE_NOT_HELD)
        return sb_error_set(err, SB_EACCES, (int)code,
                            "%s: %s; starting agents needs the service to run as LocalSystem "
                            "(sc config Switchboard obj= LocalSystem)",
                            msg, text);
    if (code == ERROR_NO_TOKEN)
        return sb_error_set(err, SB_ENOTFOUND, (int)code, "%s: no user is logged on to it", msg);
    return sb_error_set(err, sb_error_from_win32(code), (int)code, "%s: %s", msg, text);
}

/* The primary token of the user of `session` (as_session_user) or of this
 * process. */
static int get_token(HANDLE *out, uint32_t session, int as_session_user, sb_error *err)
{
    if (as_session_user) {
        if (!WTSQueryUserToken(session, out))
            return win_error(err, GetLastError(), "%s %lu", "WTSQueryUserToken for session",
                             session);
        return 0;
    }
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, out))
        return win_error(err, GetLastError(), "%s%lu", "OpenProcessToken", 0);
    return 0;
}

/* The string form (LocalFree) of the logon SID in token's groups. */
static wchar_t *logon_sid(HANDLE token, DWORD *code)
{
    TOKEN_GROUPS *groups = NULL;
    DWORD len = 0;
    wchar_t *s = NULL;
    *code = 0;
    GetTokenInformation(token, TokenGroups, NULL, 0, &len);
    if (len == 0 || (groups = sb_malloc(len)) == NULL ||
        !GetTokenInformation(token, TokenGroups, groups, len, &len)) {
        *code = GetLastError() != 0 ? GetLastError() : ERROR_NOT_ENOUGH_MEMORY;
        sb_free(groups);
        return NULL;
    }
    for (DWORD i = 0; i < groups->GroupCount; i++)
        if ((groups->Groups[i].Attributes & SE_GROUP_LOGON_ID) == SE_GROUP_LOGON_ID) {
            if (!ConvertSidToStringSidW(groups->Groups[i].Sid, &s))
                *code = GetLastError();
            break;
        }
    if (s == NULL && *code == 0)
        *code = ERROR_NO_SUCH_LOGON_SESSION;
    sb_free(groups);
    return s;
}

int sb_agent_endpoint_sddl(char **out, uint32_t session, int as_session_user, sb_error *err)
{
    HANDLE token;
    wchar_t *logon = NULL, *self = NULL, sddl[512];
    DWORD code = 0;
    int rc;

    *out = NULL;
    if ((rc = get_token(&token, session, as_session_user, err)) != 0)
        return rc;
    logon = logon_sid(token, &code);
    CloseHandle(token);
    if (logon == NULL)
        return win_error(err, code, "%s of session %lu", "the logon SID", session);
    self = sb_win_own_sid(&code);
    if (self == NULL) {
        LocalFree(logon);
        return win_error(err, code, "%s%lu", "this process's account", 0);
    }
    /* SYSTEM and the service's account: all; the session's logon: read and
     * write, no new instances. */
    if (wcscmp(self, SYSTEM_SID) == 0)
        _snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]),
                   L"D:P(A;;GA;;;SY)(A;;" USER_ACCESS L";;;%ls)", logon);
    else
        _snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]),
                   L"D:P(A;;GA;;;SY)(A;;GA;;;%ls)(A;;" USER_ACCESS L";;;%ls)", self, logon);
    sddl[sizeof(sddl) / sizeof(sddl[0]) - 1] = 0;
    LocalFree(logon);
    LocalFree(self);
    *out = sb_wide_to_utf8(sddl);
    return *out != NULL ? 0 : sb_error_set(err, SB_ENOMEM, 0, "out of memory");
}

/* ---- starting an agent ---- */

/* Appends arg to cmd (cap characters), quoted as CommandLineToArgvW reads
 * it back. Returns 0, or -1 if cmd is too small. */
static int quote_arg(wchar_t *cmd, size_t cap, const wchar_t *arg)
{
    size_t n = wcslen(cmd), need = n + 3 + 2 * wcslen(arg) + 1;
    if (need > cap)
        return -1;
    if (n > 0)
        cmd[n++] = L' ';
    if (arg[0] != 0 && wcspbrk(arg, L" \t\"") == NULL) {
        wcscpy(cmd + n, arg); /* as it is: backslashes mean themselves */
        return 0;
    }
    cmd[n++] = L'"';
    for (const wchar_t *p = arg;; p++) {
        size_t slashes = 0;
        while (*p == L'\\') {
            slashes++;
            p++;
        }
        if (*p == 0) {
            /* before the closing quote: doubled */
            for (size_t i = 0; i < 2 * slashes; i++)
                cmd[n++] = L'\\';
            break;
        }
        if (*p == L'"') {
            for (size_t i = 0; i < 2 * slashes + 1; i++)
                cmd[n++] = L'\\';
        } else {
            for (size_t i = 0; i < slashes; i++)
                cmd[n++] = L'\\';
        }
        cmd[n++] = *p;
    }
    cmd[n++] = L'"';
    cmd[n] = 0;
    return 0;
}

static void on_exit_async(uv_async_t *h)
{
    sb_agent_proc *p = h->data;
    DWORD code = 0;
    if (!p->exited)
        return;
    p->exited = 0;
    if (!GetExitCodeProcess(p->process, &code))
        code = (DWORD)-1;
    p->cb(p, (int64_t)code, p->ctx);
}

static void CALLBACK on_process_signaled(void *arg, BOOLEAN timed_out)
{
    sb_agent_proc *p = arg;
    (void)timed_out;
    p->exited = 1;
    uv_async_send(&p->async);
}

int sb_agent_spawn_as_user(sb_agent_proc **out, uv_loop_t *loop, uint32_t session,
                           char *const *argv, sb_agent_exit_cb cb, void *ctx, sb_error *err)
{
    HANDLE token = NULL;
    void *env = NULL;
    wchar_t *exe = NULL, cmd[4096], desktop[] = L"winsta0\\default";
    STARTUPINFOW si;
    PROCESS_INFORMATION pi;
    sb_agent_proc *p = NULL;
    int rc;

    *out = NULL;
    cmd[0] = 0;
    for (int i = 0; argv[i] != NULL; i++) {
        wchar_t *w = sb_utf8_to_wide(argv[i]);
        if (w == NULL)
            return sb_error_set(err, SB_EINVAL, 0, "argument %d is not valid UTF-8", i);
        rc = quote_arg(cmd, sizeof(cmd) / sizeof(cmd[0]), w);
        sb_free(w);
        if (rc != 0)
            return sb_error_set(err, SB_EINVAL, 0, "the agent's command line is too long");
    }
    if ((exe = sb_utf8_to_wide(argv[0])) == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "the program path is not valid UTF-8");
    if ((rc = get_token(&token, session, 1, err)) != 0)
        goto done;
    if (!CreateEnvironmentBlock(&env, token, FALSE))
        env = NULL; /* the service's own environment then */
    memset(&si, 0, sizeof(si));
    si.cb = sizeof(si);
    si.lpDesktop = desktop; /* the session's interactive desktop */
    if (!CreateProcessAsUserW(token, exe, cmd, NULL, NULL, FALSE,
                              CREATE_UNICODE_ENVIRONMENT | CREATE_NO_WINDOW |
                                  CREATE_NEW_PROCESS_GROUP,
                              env, NULL, &si, &pi)) {
        rc = win_error(err, GetLastError(), "%s in session %lu", "CreateProcessAsUser", session);
        goto done;
    }
    CloseHandle(pi.hThread);
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL) {
        TerminateProcess(pi.hProcess, 1);
        CloseHandle(pi.hProcess);
        rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        goto done;
    }
    p->process = pi.hProcess;
    p->pid = pi.dwProcessId;
    p->cb = cb;
    p->ctx = ctx;
    uv_async_init(loop, &p->async, on_exit_async);
    p->async.data = p;
    if (!RegisterWaitForSingleObject(&p->wait, p->process, on_process_signaled, p, INFINITE,
                                     WT_EXECUTEONLYONCE)) {
        rc = win_error(err, GetLastError(), "%s%lu", "RegisterWaitForSingleObject", 0);
        TerminateProcess(p->process, 1);
        p->wait = NULL;
        sb_agent_proc_free(p);
        p = NULL;
        goto done;
    }
    *out = p;
    rc = 0;
done:
    if (env != NULL)
        DestroyEnvironmentBlock(env);
    if (token != NULL)
        CloseHandle(token);
    sb_free(exe);
    return rc;
}

int64_t sb_agent_proc_pid(const sb_agent_proc *p)
{
    return p->pid;
}

void sb_agent_proc_kill(sb_agent_proc *p)
{
    TerminateProcess(p->process, 1);
}

static void on_async_closed(uv_handle_t *h)
{
    sb_free(h->data);
}

void sb_agent_proc_free(sb_agent_proc *p)
{
    if (p == NULL)
        return;
    if (p->wait != NULL)
        UnregisterWaitEx(p->wait, INVALID_HANDLE_VALUE); /* waits for its callback */
    CloseHandle(p->process);
    uv_close((uv_handle_t *)&p->async, on_async_closed);
}
