/*
 * The orderly stop of a child on Windows (see sbt_proc_request_stop): there
 * is no SIGTERM (uv_process_kill terminates), so `switchboard run` waits on
 * the event Local\switchboard-stop-<pid> (service/win/stop_event.c), which
 * this sets.
 */
#include "tests/integration/harness.h"

#include <stdio.h>
#include <windows.h>

int sbt_proc_request_stop(sbt_proc *p)
{
    wchar_t name[64];
    HANDLE ev;
    BOOL ok;
    if (!p->spawned || !p->running)
        return 0;
    _snwprintf(name, sizeof(name) / sizeof(name[0]), L"Local\\switchboard-stop-%d", p->h.pid);
    name[sizeof(name) / sizeof(name[0]) - 1] = L'\0';
    ev = OpenEventW(EVENT_MODIFY_STATE, FALSE, name);
    if (ev == NULL)
        return uv_translate_sys_error((int)GetLastError());
    ok = SetEvent(ev);
    CloseHandle(ev);
    return ok ? 0 : uv_translate_sys_error((int)GetLastError());
}
