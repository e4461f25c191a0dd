/*
 * Named pipes: names, the security descriptor, and the guard against pipe
 * name squatting.
 *
 * A process that creates \\.\pipe\NAME before the broker receives what
 * clients send (and may impersonate them). Two checks keep the broker from
 * sharing its pipe with anybody: a named mutex Local\switchboard-pipe-NAME
 * (a second broker serving the same pipe in this session finds it), and
 * FILE_FLAG_FIRST_PIPE_INSTANCE on the first instance (Windows fails it if
 * any instance of the name exists, whoever made it). Wine does not enforce
 * that flag, so before creating the first instance the guard also looks for
 * an existing pipe of that name (WaitNamedPipeW).
 */
#include "adapters/pipe/win/pipe_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sddl.h>

#define LOCAL_PREFIX "\\\\.\\pipe\\"
#define PIPE_KEYWORD "\\pipe\\"
/* The longest pipe path Windows accepts. */
#define PIPE_PATH_MAX 256
/* SYSTEM and Administrators: all; the interactive user: read and write; no
 * network or anonymous access. The broker's own account is added (all) so
 * that it can always create instances and connect, whichever account runs it
 * (a virtual service account, or the user running `switchboard run`). */
#define DEFAULT_SDDL L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;IU)"

static int prefix_ci(const char *s, const char *prefix)
{
    return _strnicmp(s, prefix, strlen(prefix)) == 0;
}

int sb_pipe__full_name(const char *name, int is_server, char **out_utf8, wchar_t **out_wide,
                       sb_error *err)
{
    char full[PIPE_PATH_MAX + 2];
    const char *leaf;
    int n;
    *out_utf8 = NULL;
    *out_wide = NULL;
    if (prefix_ci(name, LOCAL_PREFIX)) {
        leaf = name + strlen(LOCAL_PREFIX);
        n = snprintf(full, sizeof(full), "%s", name);
    } else if (name[0] == '\\' && name[1] == '\\') {
        /* \\HOST\pipe\NAME: a client may connect to another computer's pipe. */
        const char *host_end = strchr(name + 2, '\\');
        if (is_server)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "path %s: a pipe server must be local (NAME or \\\\.\\pipe\\NAME)",
                                name);
        if (host_end == NULL || host_end == name + 2 || !prefix_ci(host_end, PIPE_KEYWORD))
            return sb_error_set(
                err, SB_ECONFIG, 0,
                "connect %s: expected NAME, \\\\.\\pipe\\NAME or \\\\HOST\\pipe\\NAME", name);
        leaf = host_end + strlen(PIPE_KEYWORD);
        n = snprintf(full, sizeof(full), "%s", name);
    } else {
        leaf = name;
        n = snprintf(full, sizeof(full), LOCAL_PREFIX "%s", name);
    }
    if (*leaf == '\0' || strchr(leaf, '\\') != NULL)
        return sb_error_set(err, SB_ECONFIG, 0,
                            "%s: invalid pipe name (empty, or containing a backslash)", name);
    if (n < 0 || n > PIPE_PATH_MAX)
        return sb_error_set(err, SB_ECONFIG, 0, "%s: pipe name longer than %d characters", name,
                            PIPE_PATH_MAX);
    *out_wide = sb_utf8_to_wide(full);
    if (*out_wide == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "%s: pipe name is not valid UTF-8", name);
    *out_utf8 = sb_strdup(full);
    if (*out_utf8 == NULL) {
        sb_free(*out_wide);
        *out_wide = NULL;
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    return 0;
}

int sb_pipe__security(PSECURITY_DESCRIPTOR *out, const char *adapter, const char *sddl,
                      sb_error *err)
{
    wchar_t *w = NULL, *sid = NULL;
    char text[256];
    DWORD code = 0;
    int rc = 0;

    *out = NULL;
    if (sddl != NULL) {
        w = sb_utf8_to_wide(sddl);
        if (w == NULL)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "adapter %s: security: the SDDL is not valid UTF-8", adapter);
    } else {
        size_t n;
        sid = sb_win_own_sid(&code);
        if (sid == NULL) {
            sb_win_strerror(code, text, sizeof(text));
            return sb_error_set(err, sb_error_from_win32(code), (int)code,
                                "adapter %s: cannot read the process account's SID: %s", adapter,
                                text);
        }
        n = wcslen(DEFAULT_SDDL) + wcslen(sid) + 16;
        w = sb_malloc(n * sizeof(wchar_t));
        if (w == NULL) {
            LocalFree(sid);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
        wcscpy(w, DEFAULT_SDDL);
        wcscat(w, L"(A;;GA;;;");
        wcscat(w, sid);
        wcscat(w, L")");
        LocalFree(sid);
    }
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(w, SDDL_REVISION_1, out, NULL)) {
        code = GetLastError();
        sb_win_strerror(code, text, sizeof(text));
        *out = NULL;
        rc = sb_error_set(err, SB_ECONFIG, (int)code,
                          "adapter %s: security: invalid security descriptor \"%s\": %s", adapter,
                          sddl != NULL ? sddl : "(default)", text);
    }
    sb_free(w);
    return rc;
}

/* Local\switchboard-pipe-<leaf, lower case> (a mutex name may not contain a
 * backslash; pipe names ignore case). Long names are hashed to stay within
 * the object name limit. */
static void mutex_name(wchar_t *out, size_t n, const wchar_t *full)
{
    const wchar_t *leaf = full;
    wchar_t lower[PIPE_PATH_MAX + 1];
    size_t len;
    if (_wcsnicmp(full, L"\\\\.\\pipe\\", 9) == 0)
        leaf = full + 9;
    len = wcslen(leaf);
    if (len > PIPE_PATH_MAX)
        len = PIPE_PATH_MAX;
    memcpy(lower, leaf, len * sizeof(wchar_t));
    lower[len] = 0;
    CharLowerBuffW(lower, (DWORD)len);
    for (size_t i = 0; i < len; i++)
        if (lower[i] == L'\\')
            lower[i] = L'/';
    if (len <= 200) {
        _snwprintf(out, n, L"Local\\switchboard-pipe-%ls", lower);
    } else {
        unsigned long long h = 14695981039346656037ull; /* FNV-1a */
        for (size_t i = 0; i < len; i++)
            h = (h ^ lower[i]) * 1099511628211ull;
        _snwprintf(out, n, L"Local\\switchboard-pipe-#%016llx", h);
    }
    out[n - 1] = 0;
}

int sb_pipe__guard(HANDLE *out, const pipe_adapter *pa, sb_error *err)
{
    wchar_t name[300];
    char text[256];
    HANDLE m;
    DWORD code;
    BOOL exists;

    *out = NULL;
    mutex_name(name, sizeof(name) / sizeof(name[0]), pa->wname);
    m = CreateMutexW((SECURITY_ATTRIBUTES *)&pa->sa, FALSE, name);
    code = GetLastError();
    if (m != NULL && code == ERROR_ALREADY_EXISTS) {
        CloseHandle(m);
        return sb_error_set(err, SB_EADDRINUSE, (int)code,
                            "adapter %s: %s is already served by another Switchboard "
                            "(its guard mutex exists); is another broker running?",
                            pa->base.name, pa->display);
    }
    if (m == NULL) {
        sb_win_strerror(code, text, sizeof(text));
        if (code == ERROR_ACCESS_DENIED)
            return sb_error_set(err, SB_EADDRINUSE, (int)code,
                                "adapter %s: %s is already served by another Switchboard "
                                "(its guard mutex exists and belongs to another account: %s)",
                                pa->base.name, pa->display, text);
        return sb_error_set(err, sb_error_from_win32(code), (int)code,
                            "adapter %s: CreateMutexW for %s: %s", pa->base.name, pa->display,
                            text);
    }
    /* Wine ignores FILE_FLAG_FIRST_PIPE_INSTANCE: look for the pipe first. */
    exists = WaitNamedPipeW(pa->wname, 1);
    code = exists ? 0 : GetLastError();
    if (exists || code == ERROR_SEM_TIMEOUT || code == ERROR_PIPE_BUSY) {
        CloseHandle(m);
        return sb_error_set(err, SB_EADDRINUSE, ERROR_PIPE_BUSY,
                            "adapter %s: %s already exists: another program created it; refusing "
                            "to share the name",
                            pa->base.name, pa->display);
    }
    *out = m;
    return 0;
}

HANDLE sb_pipe__create_instance(const pipe_adapter *pa, int first)
{
    DWORD open = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    DWORD mode = PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
    DWORD max = pa->max_connections >= PIPE_UNLIMITED_INSTANCES ? PIPE_UNLIMITED_INSTANCES
                                                                : (DWORD)pa->max_connections;
    if (first)
        open |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    mode |= pa->message ? PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE
                        : PIPE_TYPE_BYTE | PIPE_READMODE_BYTE;
    return CreateNamedPipeW(pa->wname, open, mode, max, pa->buffer, pa->buffer, 0,
                            (SECURITY_ATTRIBUTES *)&pa->sa);
}

HANDLE sb_pipe__client_token(HANDLE h)
{
    HANDLE token = NULL;

    if (!ImpersonateNamedPipeClient(h))
        return NULL;
    if (!OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, TRUE, &token))
        token = NULL;
    if (!RevertToSelf()) {
        /* This thread would go on as the client: never. */
        char text[256];
        sb_win_strerror(GetLastError(), text, sizeof text);
        sb_log(SB_LOG_ERROR, "pipe", "RevertToSelf failed after identifying a client: %s", text);
        abort();
    }
    return token;
}

char *sb_pipe__token_user(HANDLE token)
{
    BYTE buf[SECURITY_MAX_SID_SIZE + sizeof(TOKEN_USER)];
    DWORD len = 0, name_len = 256, dom_len = 256;
    wchar_t name[256], dom[256], both[520], *sid_text = NULL;
    SID_NAME_USE use;
    PSID sid;
    char *out = NULL;

    if (GetTokenInformation(token, TokenUser, buf, sizeof buf, &len)) {
        sid = ((TOKEN_USER *)buf)->User.Sid;
        if (LookupAccountSidW(NULL, sid, name, &name_len, dom, &dom_len, &use)) {
            _snwprintf(both, sizeof both / sizeof both[0], L"%ls%ls%ls", dom, dom[0] ? L"\\" : L"",
                       name);
            both[sizeof both / sizeof both[0] - 1] = 0;
            out = sb_wide_to_utf8(both);
        } else if (ConvertSidToStringSidW(sid, &sid_text)) {
            out = sb_wide_to_utf8(sid_text);
            LocalFree(sid_text);
        }
    }
    CloseHandle(token);
    return out;
}
