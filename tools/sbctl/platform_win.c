/*
 * Windows specifics of sbctl: the command line as UTF-8 (main's argv is in
 * the ANSI code page) and file names opened as such, stdin/stdout in binary
 * mode (payloads are bytes; no CRLF translation), the console's output code
 * page set to UTF-8, and terminal detection that recognises only a real
 * console (the C runtime's _isatty also says yes for NUL and other
 * character devices).
 */
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <errno.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>
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

FILE *sbctl_fopen(const char *path, const char *mode)
{
    wchar_t *wpath = sb_utf8_to_wide(path), *wmode = sb_utf8_to_wide(mode);
    FILE *f = NULL;
    if (wpath != NULL && wmode != NULL)
        f = _wfopen(wpath, wmode);
    else
        errno = EINVAL;
    sb_free(wpath);
    sb_free(wmode);
    return f;
}

const char *sbctl_eof_key(void)
{
    return "Ctrl-Z and Enter";
}
