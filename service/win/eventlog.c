/* The Windows Event Log source (see eventlog.h). */
#include "service/win/eventlog.h"
#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <windows.h>

/* From messages.mc: one message, "%1", so Event Viewer shows our text. */
#define SB_MSG_GENERIC 0x00000001L

#define EVENTLOG_KEY L"SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\Switchboard"

static HANDLE source;

int sb_eventlog_register(void)
{
    wchar_t exe[MAX_PATH];
    DWORD types = EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE;
    HKEY key;
    LONG rc;
    DWORD len = GetModuleFileNameW(NULL, exe, MAX_PATH);
    if (len == 0 || len == MAX_PATH)
        return -1;
    rc = RegCreateKeyExW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY, 0, NULL, 0, KEY_SET_VALUE, NULL, &key,
                         NULL);
    if (rc != ERROR_SUCCESS)
        return -1;
    rc = RegSetValueExW(key, L"EventMessageFile", 0, REG_EXPAND_SZ, (const BYTE *)exe,
                        (len + 1) * sizeof(wchar_t));
    if (rc == ERROR_SUCCESS)
        rc = RegSetValueExW(key, L"TypesSupported", 0, REG_DWORD, (const BYTE *)&types,
                            sizeof(types));
    RegCloseKey(key);
    return rc == ERROR_SUCCESS ? 0 : -1;
}

void sb_eventlog_unregister(void)
{
    RegDeleteKeyW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY);
}

void sb_eventlog_open(void)
{
    if (source == NULL)
        source = RegisterEventSourceW(NULL, L"Switchboard");
}

void sb_eventlog_write(sb_log_level level, const char *who, const char *text)
{
    char line[2048];
    wchar_t *w;
    LPCWSTR strings[1];
    WORD type = level >= SB_LOG_ERROR  ? EVENTLOG_ERROR_TYPE
                : level == SB_LOG_WARN ? EVENTLOG_WARNING_TYPE
                                       : EVENTLOG_INFORMATION_TYPE;
    if (source == NULL)
        return;
    snprintf(line, sizeof(line), "[%s] %s", who, text);
    w = sb_utf8_to_wide(line);
    if (w == NULL)
        return;
    strings[0] = w;
    ReportEventW(source, type, 0, SB_MSG_GENERIC, NULL, 1, 0, strings, NULL);
    sb_free(w);
}
