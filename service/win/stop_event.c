/*
 * The stop event of a foreground broker on Windows (see
 * sb_run__stop_watch_open in run_int.h): POSIX asks `switchboard run`
 * to stop with SIGTERM; Windows has no signal one process can send another,
 * so the broker creates Local\switchboard-stop-<pid> and a thread waits on
 * it. PostgreSQL emulates signals the same way (a pipe per process,
 * pgsignal_<pid>). Only the broker's own account, SYSTEM and Administrators
 * may set the event.
 */
#include "service/alloc.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform/win/utf.h"
#include "service/run_int.h"

#include <sddl.h>
#include <stdio.h>
#include <windows.h>

struct sb_stop_watch {
    sb_broker *b;
    HANDLE event; /* Local\switchboard-stop-<pid>, auto-reset */
    HANDLE quit;  /* set by sb_run__stop_watch_close */
    HANDLE thread;
    wchar_t name[64];
};

static DWORD WINAPI watch_main(LPVOID arg)
{
    sb_stop_watch *w = arg;
    HANDLE handles[2] = {w->quit, w->event};
    for (;;) {
        DWORD r = WaitForMultipleObjects(2, handles, FALSE, INFINITE);
        if (r != WAIT_OBJECT_0 + 1)
            return 0; /* quit, or a failure: nothing more to watch */
        sb_info(NULL, "stop requested through the event %ls", w->name);
        sb_broker_request_stop(w->b);
    }
}

/* "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;<our user>)" as a new descriptor
 * (LocalFree it), or NULL. */
static PSECURITY_DESCRIPTOR event_security(void)
{
    HANDLE token = NULL;
    union {
        TOKEN_USER user;
        BYTE bytes[sizeof(TOKEN_USER) + SECURITY_MAX_SID_SIZE];
    } info;
    DWORD len = 0;
    wchar_t *sid = NULL, sddl[256];
    PSECURITY_DESCRIPTOR sd = NULL;

    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token))
        return NULL;
    if (GetTokenInformation(token, TokenUser, &info, sizeof(info), &len) &&
        ConvertSidToStringSidW(info.user.User.Sid, &sid)) {
        _snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]),
                   L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;%ls)", sid);
        sddl[sizeof(sddl) / sizeof(sddl[0]) - 1] = L'\0';
        if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL))
            sd = NULL;
        LocalFree(sid);
    }
    CloseHandle(token);
    return sd;
}

static void log_failure(const char *call, const wchar_t *name)
{
    char text[300];
    DWORD code = GetLastError();
    sb_win_strerror(code, text, sizeof(text));
    sb_warn(NULL, "%s %ls: %s; stop this broker with Ctrl-C", call, name, text);
}

sb_stop_watch *sb_run__stop_watch_open(sb_broker *b)
{
    sb_stop_watch *w = sb_calloc(1, sizeof(*w));
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd;

    if (w == NULL)
        return NULL;
    w->b = b;
    _snwprintf(w->name, sizeof(w->name) / sizeof(w->name[0]), L"Local\\switchboard-stop-%lu",
               (unsigned long)GetCurrentProcessId());
    sd = event_security();
    if (sd == NULL) {
        log_failure("cannot build the security descriptor of", w->name);
        sb_free(w);
        return NULL;
    }
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    w->event = CreateEventW(&sa, FALSE, FALSE, w->name);
    if (w->event == NULL || GetLastError() == ERROR_ALREADY_EXISTS) {
        /* An existing event was made by someone else (a pid is reused only
         * after its process is gone, and that closed its event). */
        log_failure(w->event == NULL ? "CreateEvent" : "CreateEvent (it exists)", w->name);
        LocalFree(sd);
        goto fail;
    }
    LocalFree(sd);
    w->quit = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (w->quit == NULL) {
        log_failure("CreateEvent (unnamed) for", w->name);
        goto fail;
    }
    w->thread = CreateThread(NULL, 0, watch_main, w, 0, NULL);
    if (w->thread == NULL) {
        log_failure("CreateThread waiting on", w->name);
        goto fail;
    }
    return w;
fail:
    if (w->event != NULL)
        CloseHandle(w->event);
    if (w->quit != NULL)
        CloseHandle(w->quit);
    sb_free(w);
    return NULL;
}

void sb_run__stop_watch_close(sb_stop_watch *w)
{
    if (w == NULL)
        return;
    SetEvent(w->quit);
    WaitForSingleObject(w->thread, INFINITE);
    CloseHandle(w->thread);
    CloseHandle(w->quit);
    CloseHandle(w->event);
    sb_free(w);
}
