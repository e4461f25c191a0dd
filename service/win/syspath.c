/* The system PATH entry of the install folder (see syspath.h). */
#include "service/win/syspath.h"

#include "service/alloc.h"

#include <string.h>
#include <windows.h>

#define ENV_KEY L"SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Environment"

/* Reads Path into an sb_malloc'd string (empty if absent). */
static DWORD read_path(HKEY key, wchar_t **out, DWORD *type)
{
    DWORD bytes = 0, code;
    wchar_t *v;
    *out = NULL;
    *type = REG_EXPAND_SZ;
    code = RegQueryValueExW(key, L"Path", NULL, type, NULL, &bytes);
    if (code == ERROR_FILE_NOT_FOUND)
        bytes = 0;
    else if (code != ERROR_SUCCESS)
        return code;
    v = sb_calloc(bytes / sizeof(wchar_t) + 2, sizeof(wchar_t));
    if (v == NULL)
        return ERROR_NOT_ENOUGH_MEMORY;
    if (bytes > 0 && (code = RegQueryValueExW(key, L"Path", NULL, type, (BYTE *)v, &bytes)) !=
                         ERROR_SUCCESS) {
        sb_free(v);
        return code;
    }
    *out = v;
    return 0;
}

/* The length of the entry at p (up to ';' or the end), without a trailing
 * backslash. */
static size_t entry_len(const wchar_t *p, size_t *full)
{
    size_t n = 0;
    while (p[n] != L'\0' && p[n] != L';')
        n++;
    *full = n;
    if (n > 0 && p[n - 1] == L'\\')
        n--;
    return n;
}

static int same_dir(const wchar_t *entry, size_t n, const wchar_t *dir)
{
    size_t d = wcslen(dir);
    if (d > 0 && dir[d - 1] == L'\\')
        d--;
    return n == d && _wcsnicmp(entry, dir, n) == 0;
}

static DWORD write_path(HKEY key, const wchar_t *v, DWORD type)
{
    DWORD code = RegSetValueExW(key, L"Path", 0, type == REG_SZ ? REG_SZ : REG_EXPAND_SZ,
                                (const BYTE *)v, (DWORD)((wcslen(v) + 1) * sizeof(wchar_t)));
    if (code == ERROR_SUCCESS)
        SendMessageTimeoutW(HWND_BROADCAST, WM_SETTINGCHANGE, 0, (LPARAM)L"Environment",
                            SMTO_ABORTIFHUNG, 5000, NULL);
    return code;
}

/* Applies add (1) or remove (0) of dir to the system PATH. */
static DWORD change(const wchar_t *dir, int add)
{
    HKEY key;
    wchar_t *cur = NULL, *next = NULL;
    DWORD type, code = RegOpenKeyExW(HKEY_LOCAL_MACHINE, ENV_KEY, 0, KEY_READ | KEY_WRITE, &key);
    size_t cap, len = 0, full;
    int found = 0;
    if (code != ERROR_SUCCESS)
        return code;
    if ((code = read_path(key, &cur, &type)) != 0)
        goto done;
    cap = wcslen(cur) + wcslen(dir) + 2;
    if ((next = sb_calloc(cap, sizeof(wchar_t))) == NULL) {
        code = ERROR_NOT_ENOUGH_MEMORY;
        goto done;
    }
    /* Copy every entry but dir's (and empty ones); note whether it was there. */
    for (const wchar_t *p = cur; *p != L'\0';) {
        size_t n = entry_len(p, &full);
        if (same_dir(p, n, dir)) {
            found = 1;
        } else if (full > 0) {
            if (len > 0)
                next[len++] = L';';
            memcpy(next + len, p, full * sizeof(wchar_t));
            len += full;
        }
        p += full;
        if (*p == L';')
            p++;
    }
    if (add && found) {
        code = 0; /* already there: leave the value as the administrator wrote it */
        goto done;
    }
    if (!add && !found) {
        code = 0;
        goto done;
    }
    if (add) {
        if (len > 0)
            next[len++] = L';';
        wcscpy(next + len, dir);
    }
    code = write_path(key, next, type);
done:
    sb_free(cur);
    sb_free(next);
    RegCloseKey(key);
    return code;
}

unsigned long sb_win_syspath_add(const wchar_t *dir)
{
    return change(dir, 1);
}

unsigned long sb_win_syspath_remove(const wchar_t *dir)
{
    return change(dir, 0);
}
