/* Named-pipe helpers for the pipe adapter tests (see pipe_util.h). */
#include "tests/win/pipe/pipe_util.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The slice a wait blocks before the harness loop runs again. */
#define SLICE_MS 20

int pt_under_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

void pt_name(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "sbt-%lu-%s", (unsigned long)GetCurrentProcessId(), tag);
}

void pt_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "\\\\.\\pipe\\%s", name);
}

static pt_pipe *wrap(HANDLE h)
{
    pt_pipe *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->h = h;
    p->rov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
    p->wov.hEvent = CreateEventW(NULL, TRUE, FALSE, NULL);
    assert_non_null(p->rov.hEvent);
    assert_non_null(p->wov.hEvent);
    return p;
}

pt_pipe *pt_open(const char *path, int message, int timeout_ms, DWORD *err)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    wchar_t *w = sb_utf8_to_wide(path);
    HANDLE h;
    DWORD e = 0;
    assert_non_null(w);
    for (;;) {
        h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                        FILE_FLAG_OVERLAPPED, NULL);
        if (h != INVALID_HANDLE_VALUE)
            break;
        e = GetLastError();
        if ((e != ERROR_FILE_NOT_FOUND && e != ERROR_PIPE_BUSY) || sbt_now_ms() > deadline)
            break;
        if (e == ERROR_PIPE_BUSY)
            WaitNamedPipeW(w, SLICE_MS);
        sbt_poll_pause(e == ERROR_PIPE_BUSY ? 1 : 10);
    }
    sb_free(w);
    if (h == INVALID_HANDLE_VALUE) {
        if (err != NULL)
            *err = e;
        return NULL;
    }
    if (message) {
        DWORD mode = PIPE_READMODE_MESSAGE;
        if (!SetNamedPipeHandleState(h, &mode, NULL, NULL))
            fail_msg("SetNamedPipeHandleState(PIPE_READMODE_MESSAGE) on %s: error %lu", path,
                     (unsigned long)GetLastError());
    }
    return wrap(h);
}

pt_pipe *pt_open_ok(const char *path, int message)
{
    DWORD err = 0;
    pt_pipe *p = pt_open(path, message, 10000, &err);
    if (p == NULL)
        fail_msg("cannot open %s: error %lu", path, (unsigned long)err);
    return p;
}

pt_pipe *pt_server(const char *path, int message)
{
    wchar_t *w = sb_utf8_to_wide(path);
    DWORD mode =
        message ? PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE : PIPE_TYPE_BYTE | PIPE_READMODE_BYTE;
    HANDLE h;
    assert_non_null(w);
    h = CreateNamedPipeW(w, PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED, mode | PIPE_WAIT, 1, 65536,
                         65536, 0, NULL);
    sb_free(w);
    if (h == INVALID_HANDLE_VALUE)
        fail_msg("CreateNamedPipeW %s: error %lu", path, (unsigned long)GetLastError());
    return wrap(h);
}

/* Waits for a pending overlapped operation; 1 done, 0 timed out (then it
 * is cancelled). */
static int wait_io(pt_pipe *p, OVERLAPPED *ov, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    DWORD n;
    for (;;) {
        if (WaitForSingleObject(ov->hEvent, SLICE_MS) == WAIT_OBJECT_0)
            return 1;
        if (sbt_now_ms() > deadline)
            break;
        sbt_poll_pause(1);
    }
    CancelIoEx(p->h, ov);
    GetOverlappedResult(p->h, ov, &n, TRUE);
    return 0;
}

int pt_accept(pt_pipe *p, int timeout_ms)
{
    DWORD n, err;
    ResetEvent(p->rov.hEvent);
    if (ConnectNamedPipe(p->h, &p->rov))
        return 1;
    err = GetLastError();
    /* Connected before the call; or connected and gone already. */
    if (err == ERROR_PIPE_CONNECTED || err == ERROR_NO_DATA)
        return 1;
    if (err != ERROR_IO_PENDING)
        fail_msg("ConnectNamedPipe: error %lu", (unsigned long)err);
    if (!wait_io(p, &p->rov, timeout_ms))
        return 0;
    return GetOverlappedResult(p->h, &p->rov, &n, FALSE) ? 1 : 0;
}

void pt_close(pt_pipe *p)
{
    if (p == NULL)
        return;
    CloseHandle(p->h);
    CloseHandle(p->rov.hEvent);
    CloseHandle(p->wov.hEvent);
    free(p);
}

DWORD pt_write(pt_pipe *p, const void *data, size_t len, int timeout_ms)
{
    DWORD n = 0, err;
    ResetEvent(p->wov.hEvent);
    if (!WriteFile(p->h, data, (DWORD)len, NULL, &p->wov)) {
        err = GetLastError();
        if (err != ERROR_IO_PENDING)
            return err;
        if (!wait_io(p, &p->wov, timeout_ms))
            return WAIT_TIMEOUT;
    }
    if (!GetOverlappedResult(p->h, &p->wov, &n, FALSE))
        return GetLastError();
    return n == len ? 0 : ERROR_WRITE_FAULT;
}

void pt_write_ok(pt_pipe *p, const void *data, size_t len)
{
    DWORD err = pt_write(p, data, len, 10000);
    if (err != 0)
        fail_msg("WriteFile of %zu bytes: error %lu", len, (unsigned long)err);
}

/* One ReadFile: returns bytes read; sets *more for ERROR_MORE_DATA; -1 on
 * timeout, -2 on error (*err). */
static int read_once(pt_pipe *p, char *out, size_t cap, int timeout_ms, int *more, DWORD *err)
{
    DWORD n = 0, e;
    *more = 0;
    ResetEvent(p->rov.hEvent);
    if (!ReadFile(p->h, out, (DWORD)cap, NULL, &p->rov)) {
        e = GetLastError();
        if (e != ERROR_IO_PENDING && e != ERROR_MORE_DATA) {
            if (err != NULL)
                *err = e;
            return -2;
        }
        if (e == ERROR_IO_PENDING && !wait_io(p, &p->rov, timeout_ms))
            return -1;
    }
    if (!GetOverlappedResult(p->h, &p->rov, &n, FALSE)) {
        e = GetLastError();
        if (e != ERROR_MORE_DATA) {
            if (err != NULL)
                *err = e;
            return -2;
        }
        *more = 1;
    }
    return (int)n;
}

void pt_read_begin(pt_pipe *p)
{
    DWORD e;
    assert_true(p->len < sizeof(p->buf));
    ResetEvent(p->rov.hEvent);
    if (!ReadFile(p->h, p->buf + p->len, (DWORD)(sizeof(p->buf) - p->len), NULL, &p->rov) &&
        (e = GetLastError()) != ERROR_IO_PENDING)
        fail_msg("ReadFile: error %lu", (unsigned long)e);
}

int pt_read_end(pt_pipe *p, int timeout_ms)
{
    DWORD n = 0;
    if (!wait_io(p, &p->rov, timeout_ms))
        return -1;
    if (!GetOverlappedResult(p->h, &p->rov, &n, FALSE))
        return -2;
    p->len += n;
    return (int)n;
}

int pt_read_msg(pt_pipe *p, char *out, size_t cap, int timeout_ms, DWORD *err)
{
    size_t len = 0;
    int more;
    do {
        int n;
        if (len >= cap)
            fail_msg("a message larger than %zu bytes arrived", cap);
        n = read_once(p, out + len, cap - len, timeout_ms, &more, err);
        if (n < 0)
            return n;
        len += (size_t)n;
    } while (more);
    if (len < cap)
        out[len] = '\0';
    return (int)len;
}

int pt_read_line(pt_pipe *p, char *out, size_t cap, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);
        int more, n;
        if (nl != NULL) {
            size_t l = (size_t)(nl - p->buf);
            assert_true(l < cap);
            memcpy(out, p->buf, l);
            out[l] = '\0';
            memmove(p->buf, nl + 1, p->len - l - 1);
            p->len -= l + 1;
            return (int)l;
        }
        assert_true(p->len < sizeof(p->buf));
        n = read_once(p, p->buf + p->len, sizeof(p->buf) - p->len,
                      (int)(deadline - sbt_now_ms() > 0 ? deadline - sbt_now_ms() : 0), &more,
                      NULL);
        if (n < 0)
            return n;
        p->len += (size_t)n;
    }
}

int pt_wait_closed(pt_pipe *p, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    char tmp[4096];
    for (;;) {
        int more, n;
        DWORD err = 0;
        int64_t left = deadline - sbt_now_ms();
        if (left <= 0)
            return 0;
        n = read_once(p, tmp, sizeof(tmp), (int)left, &more, &err);
        if (n == -2)
            return err == ERROR_BROKEN_PIPE || err == ERROR_PIPE_NOT_CONNECTED ||
                   err == ERROR_NO_DATA;
        if (n == -1)
            return 0;
    }
}

void pt_send_json(pt_pipe *p, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT);
    size_t n;
    char *line;
    assert_non_null(s);
    n = strlen(s);
    line = malloc(n + 1);
    assert_non_null(line);
    memcpy(line, s, n);
    line[n] = '\n';
    pt_write_ok(p, line, n + 1);
    free(line);
    free(s);
    json_decref(obj);
}

json_t *pt_read_json(pt_pipe *p, int timeout_ms)
{
    static char line[65536];
    json_error_t jerr;
    json_t *o;
    int n = pt_read_line(p, line, sizeof(line), timeout_ms);
    if (n == -1)
        return NULL;
    if (n == -2)
        fail_msg("the jsonl pipe broke while waiting for a reply");
    o = json_loads(line, 0, &jerr);
    if (o == NULL)
        fail_msg("not JSON: %s (%s)", line, jerr.text);
    return o;
}

int pt_dacl(HANDLE h, pt_ace *out, int max)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    PACL dacl = NULL;
    GENERIC_MAPPING map = {FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_GENERIC_EXECUTE,
                           FILE_ALL_ACCESS};
    DWORD rc = GetSecurityInfo(h, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, &dacl,
                               NULL, &sd);
    int count = 0;
    if (rc != ERROR_SUCCESS)
        fail_msg("GetSecurityInfo: error %lu", (unsigned long)rc);
    assert_non_null(dacl);
    for (DWORD i = 0; i < dacl->AceCount && count < max; i++) {
        ACCESS_ALLOWED_ACE *ace;
        wchar_t *sid;
        char *u;
        assert_true(GetAce(dacl, i, (void **)&ace));
        assert_int_equal(ace->Header.AceType, ACCESS_ALLOWED_ACE_TYPE);
        assert_true(ConvertSidToStringSidW((PSID)&ace->SidStart, &sid));
        u = sb_wide_to_utf8(sid);
        assert_non_null(u);
        snprintf(out[count].sid, sizeof(out[count].sid), "%s", u);
        sb_free(u);
        LocalFree(sid);
        out[count].mask = ace->Mask;
        MapGenericMask(&out[count].mask, &map);
        out[count].mask &= ~(DWORD)(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL);
        count++;
    }
    LocalFree(sd);
    return count;
}

void pt_own_sid(char *out, size_t n)
{
    HANDLE token;
    union {
        TOKEN_USER user;
        char buf[512];
    } info;
    DWORD len;
    wchar_t *sid;
    char *u;
    assert_true(OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token));
    assert_true(GetTokenInformation(token, TokenUser, &info, sizeof(info), &len));
    assert_true(ConvertSidToStringSidW(info.user.User.Sid, &sid));
    CloseHandle(token);
    u = sb_wide_to_utf8(sid);
    assert_non_null(u);
    snprintf(out, n, "%s", u);
    sb_free(u);
    LocalFree(sid);
}

/* s with every `from` replaced by `to` (free()); NULL if from is absent. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0, len;
    const char *p;
    char *out, *o;
    for (p = s; (p = strstr(p, from)) != NULL; p += fl)
        n++;
    if (n == 0)
        return NULL;
    len = strlen(s) + n * tl + 1;
    out = malloc(len);
    assert_non_null(out);
    for (o = out, p = s;;) {
        const char *hit = strstr(p, from);
        if (hit == NULL) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        memcpy(o, to, tl);
        o += tl;
        p = hit + fl;
    }
    return out;
}

void pt_example_config(sbt_broker *b, const char *name, const char *const *repl)
{
    static const char clients[] = "\nadapters:\n"
                                  "  - name: sbt-clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n";
    char path[SBT_PATH_MAX];
    char *text, *next;
    snprintf(path, sizeof(path), "%s/../../config/examples/%s", sbt_test_data(), name);
    text = sbt_read_file(path, NULL);
    if (text == NULL)
        fail_msg("cannot read %s", path);
    {
        /* a checkout with CRLF line ends reads the same */
        char *o = text;
        for (const char *c = text; *c != '\0'; c++)
            if (*c != '\r')
                *o++ = *c;
        *o = '\0';
    }
    for (size_t i = 0; repl[i] != NULL && repl[i + 1] != NULL; i += 2) {
        next = replace_all(text, repl[i], repl[i + 1]);
        if (next == NULL)
            fail_msg("%s no longer has \"%s\": update its test", name, repl[i]);
        free(text);
        text = next;
    }
    /* An admin pipe of this run's own: the examples use the default one,
     * which another test (the service's) may be serving at the same time. */
    {
        char admin[200];
        snprintf(admin, sizeof(admin),
                 "\nbroker:\n  admin: { endpoint: '\\\\.\\pipe\\sbt-admin-%s-%lu' }\n", b->name,
                 (unsigned long)uv_os_getpid());
        next = replace_all(text, "\nbroker:\n", admin);
        if (next == NULL)
            fail_msg("%s has no broker section", name);
        free(text);
        text = next;
    }
    /* the jsonl endpoint first where the adapters start */
    next = replace_all(text, "\nadapters:\n", clients);
    if (next == NULL)
        fail_msg("%s has no adapters section", name);
    free(text);
    text = next;
    sbt_broker_config(b, text);
    free(text);
}
