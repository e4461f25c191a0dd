/*
 * Windows specifics of sbctl: the command line as UTF-8 (main's argv is in
 * the ANSI code page) and file names opened as such, stdin/stdout in binary
 * mode (payloads are bytes; no CRLF translation), the console's output code
 * page set to UTF-8, and terminal detection that recognises only a real
 * console (the C runtime's _isatty also says yes for NUL and other
 * character devices). For `sbctl passwd`: reading a password with the
 * console's echo off (SetConsoleMode, ReadConsoleW) and replacing a file
 * atomically (MoveFileExW).
 */
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <errno.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>

/* Replaces *argv with a UTF-8 copy of the wide command line. The copy lives
 * as long as the process. On failure the original argv stays. */
static void utf8_argv(int *argc, char ***argv)
{
    int n = 0;
    LPWSTR *wargv = CommandLineToArgvW(GetCommandLineW(), &n);
    char **out;
    if (wargv == NULL)
        return;
    out = sb_calloc((size_t)n + 1, sizeof(*out));
    if (out == NULL)
        goto done;
    for (int i = 0; i < n; i++) {
        out[i] = sb_wide_to_utf8(wargv[i]);
        if (out[i] == NULL) {
            for (int j = 0; j < i; j++)
                sb_free(out[j]);
            sb_free(out);
            goto done;
        }
    }
    *argc = n;
    *argv = out;
done:
    LocalFree(wargv);
}

void sbctl_platform_init(int *argc, char ***argv)
{
    utf8_argv(argc, argv);
    _setmode(_fileno(stdin), _O_BINARY);
    _setmode(_fileno(stdout), _O_BINARY);
    /* Messages and printed payloads are UTF-8. */
    SetConsoleOutputCP(CP_UTF8);
}

int sbctl_isatty(int fd)
{
    DWORD which = fd == 0 ? STD_INPUT_HANDLE : fd == 1 ? STD_OUTPUT_HANDLE : STD_ERROR_HANDLE;
    HANDLE h = GetStdHandle(which);
    DWORD mode;
    if (h == NULL || h == INVALID_HANDLE_VALUE || GetFileType(h) != FILE_TYPE_CHAR)
        return 0;
    return GetConsoleMode(h, &mode) != 0;
}

const char *sbctl_eof_key(void)
{
    return "Ctrl-Z and Enter";
}

/* ---- reading a password ---- */

/* The console mode to put back if Ctrl-C or Ctrl-Break ends sbctl while
 * echo is off (the handler runs on its own thread, then the default handler
 * ends the process). */
static HANDLE secret_in;
static DWORD secret_mode;

static BOOL WINAPI restore_console(DWORD type)
{
    (void)type;
    SetConsoleMode(secret_in, secret_mode);
    return FALSE;
}

int sbctl_read_secret(char **out, const char *prompt, size_t max, char *msg, size_t msglen)
{
    HANDLE in = GetStdHandle(STD_INPUT_HANDLE);
    wchar_t *wbuf;
    size_t cap = max + 2, len = 0;
    DWORD mode;
    int rc = 0, done = 0;

    *out = NULL;
    if (in == NULL || in == INVALID_HANDLE_VALUE || !GetConsoleMode(in, &mode)) {
        snprintf(msg, msglen, "standard input is not a console");
        return -1;
    }
    wbuf = sb_malloc(cap * sizeof(wchar_t));
    if (wbuf == NULL) {
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    secret_in = in;
    secret_mode = mode;
    SetConsoleCtrlHandler(restore_console, TRUE);
    SetConsoleMode(in,
                   (mode & ~(DWORD)ENABLE_ECHO_INPUT) | ENABLE_LINE_INPUT | ENABLE_PROCESSED_INPUT);
    fputs(prompt, stderr);
    fflush(stderr);
    while (!done) {
        wchar_t chunk[256];
        DWORD got = 0;
        if (!ReadConsoleW(in, chunk, 256, &got, NULL) || got == 0)
            break;
        for (DWORD i = 0; i < got && !done; i++) {
            if (chunk[i] == L'\n')
                done = 1;
            else if (chunk[i] != L'\r' && len < cap - 1)
                wbuf[len++] = chunk[i];
        }
        SecureZeroMemory(chunk, sizeof(chunk));
    }
    SetConsoleMode(in, mode);
    SetConsoleCtrlHandler(restore_console, FALSE);
    fputc('\n', stderr);
    wbuf[len] = L'\0';
    /* A line starting with Ctrl-Z is the console's end of input. */
    if ((!done && len == 0) || (len > 0 && wbuf[0] == 0x1A)) {
        snprintf(msg, msglen, "no password given (end of input)");
        rc = -1;
    } else {
        *out = sb_wide_to_utf8(wbuf);
        if (*out == NULL) {
            snprintf(msg, msglen, "the password is not valid text");
            rc = -1;
        } else if (strlen(*out) > max) {
            SecureZeroMemory(*out, strlen(*out));
            sb_free(*out);
            *out = NULL;
            snprintf(msg, msglen, "password longer than %zu bytes", max);
            rc = -1;
        }
    }
    SecureZeroMemory(wbuf, cap * sizeof(wchar_t));
    sb_free(wbuf);
    return rc;
}

/* ---- replacing a file ---- */

static void win_error(char *msg, size_t msglen, const char *what, const char *path)
{
    char text[256];
    sb_win_strerror(GetLastError(), text, sizeof(text));
    snprintf(msg, msglen, "%s %s: %s", what, path, text);
}

int sbctl_replace_file(const char *path, const void *data, size_t len, char *msg, size_t msglen)
{
    static const wchar_t hex[] = L"0123456789abcdef";
    wchar_t *wpath = sb_utf8_to_wide(path), *wtmp = NULL;
    HANDLE h = INVALID_HANDLE_VALUE;
    const char *p = data;
    size_t n;
    int rc = -1, created = 0;

    if (wpath == NULL) {
        snprintf(msg, msglen, "invalid file name %s", path);
        return -1;
    }
    n = wcslen(wpath);
    wtmp = sb_malloc((n + 16) * sizeof(wchar_t));
    if (wtmp == NULL) {
        snprintf(msg, msglen, "out of memory");
        goto cleanup;
    }
    for (unsigned attempt = 0; attempt < 100; attempt++) {
        unsigned long r = GetTickCount() ^ (GetCurrentProcessId() << 12) ^ (attempt * 2654435761u);
        memcpy(wtmp, wpath, n * sizeof(wchar_t));
        memcpy(wtmp + n, L".tmp-", 5 * sizeof(wchar_t));
        for (int k = 0; k < 8; k++)
            wtmp[n + 5 + k] = hex[(r >> (28 - 4 * k)) & 15];
        wtmp[n + 13] = L'\0';
        h = CreateFileW(wtmp, GENERIC_WRITE, 0, NULL, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, NULL);
        if (h != INVALID_HANDLE_VALUE || GetLastError() != ERROR_FILE_EXISTS)
            break;
    }
    if (h == INVALID_HANDLE_VALUE) {
        win_error(msg, msglen, "cannot create a temporary file next to", path);
        goto cleanup;
    }
    created = 1;
    while (len > 0) {
        DWORD chunk = len > 0x40000000 ? 0x40000000 : (DWORD)len, wrote = 0;
        if (!WriteFile(h, p, chunk, &wrote, NULL) || wrote == 0) {
            win_error(msg, msglen, "cannot write a temporary file next to", path);
            goto cleanup;
        }
        p += wrote;
        len -= wrote;
    }
    if (!FlushFileBuffers(h)) {
        win_error(msg, msglen, "cannot write a temporary file next to", path);
        goto cleanup;
    }
    CloseHandle(h);
    h = INVALID_HANDLE_VALUE;
    /* The new file has the directory's inherited permissions, as a file
     * created there would. */
    if (!MoveFileExW(wtmp, wpath, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
        win_error(msg, msglen, "cannot replace", path);
        goto cleanup;
    }
    created = 0; /* renamed: nothing to remove */
    rc = 0;
cleanup:
    if (h != INVALID_HANDLE_VALUE)
        CloseHandle(h);
    if (created)
        DeleteFileW(wtmp);
    sb_free(wtmp);
    sb_free(wpath);
    return rc;
}
