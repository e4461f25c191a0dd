/*
 * A legacy WM_COPYDATA sender, written as old Windows programs are: it
 * finds the receiver with FindWindow (here FindWindowEx, so that
 * message-only windows are found on Windows too), fills a COPYDATASTRUCT
 * and SendMessage()s it, its own window in wParam, and trusts the return
 * value. For the WM_COPYDATA adapter's tests and benchmark. One command
 * per run:
 *
 *   cd_sender CLASS TITLE send DWDATA TEXT [ansi|utf16|nul|hex]
 *       sends TEXT (ansi: with its NUL, in the ANSI code page as the
 *       bytes of argv; utf16: UTF-16 with its NUL; nul: the bytes and a
 *       NUL; hex: TEXT is hex), prints "TRUE", "FALSE" or "NOWINDOW"
 *   cd_sender CLASS TITLE seq COUNT DWDATA
 *       sends the texts "1" .. "COUNT" in order, each until SendMessage
 *       returns TRUE (waiting for a window while there is none, with a
 *       deadline of 60 s per message), printing "TRUE n" or "FALSE n" per
 *       attempt, and "DONE" at the end
 *   cd_sender CLASS TITLE bench COUNT SIZE
 *       sends COUNT messages of SIZE bytes one after the other and prints
 *       "RATE <per second> <ms> <failed>"
 *
 * CLASS or TITLE may be "-" (any). Every line is flushed.
 */
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static HWND self;

static const wchar_t *wide(const char *s, wchar_t *buf, int n)
{
    if (strcmp(s, "-") == 0)
        return NULL;
    MultiByteToWideChar(CP_UTF8, 0, s, -1, buf, n);
    return buf;
}

static HWND find(const wchar_t *cls, const wchar_t *title)
{
    HWND h = FindWindowExW(HWND_MESSAGE, NULL, cls, title);
    return h != NULL ? h : FindWindowExW(NULL, NULL, cls, title);
}

static int from_hex(unsigned char *out, const char *hex)
{
    int n = 0;
    while (hex[0] != 0 && hex[1] != 0) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

static LRESULT send_copydata(HWND to, ULONG_PTR data, const void *p, DWORD len)
{
    COPYDATASTRUCT cds;
    cds.dwData = data;
    cds.cbData = len;
    cds.lpData = (void *)p;
    return SendMessageW(to, WM_COPYDATA, (WPARAM)self, (LPARAM)&cds);
}

int main(int argc, char **argv)
{
    wchar_t cls_buf[256], title_buf[256];
    const wchar_t *cls, *title;
    const char *cmd;
    HWND to;

    if (argc < 4) {
        fprintf(stderr, "usage: cd_sender CLASS TITLE COMMAND ...\n");
        return 2;
    }
    cls = wide(argv[1], cls_buf, 256);
    title = wide(argv[2], title_buf, 256);
    cmd = argv[3];
    /* the program's own (hidden) window, as legacy programs pass theirs */
    self =
        CreateWindowExW(0, L"STATIC", L"cd_sender", 0, 0, 0, 0, 0, HWND_MESSAGE, NULL, NULL, NULL);

    if (strcmp(cmd, "send") == 0 && argc > 5) {
        unsigned char buf[65536];
        const char *how = argc > 6 ? argv[6] : "";
        ULONG_PTR data = (ULONG_PTR)_strtoui64(argv[4], NULL, 0);
        DWORD len;
        to = find(cls, title);
        if (to == NULL) {
            printf("NOWINDOW\n");
            return 1;
        }
        if (strcmp(how, "utf16") == 0) {
            len = (DWORD)MultiByteToWideChar(CP_UTF8, 0, argv[5], -1, (wchar_t *)buf,
                                             (int)(sizeof buf / 2)) *
                  2;
        } else if (strcmp(how, "hex") == 0) {
            len = (DWORD)from_hex(buf, argv[5]);
        } else {
            len = (DWORD)strlen(argv[5]);
            memcpy(buf, argv[5], len);
            if (strcmp(how, "ansi") == 0 || strcmp(how, "nul") == 0)
                buf[len++] = 0;
        }
        printf("%s\n", send_copydata(to, data, buf, len) ? "TRUE" : "FALSE");
        return 0;
    }

    if (strcmp(cmd, "seq") == 0 && argc > 5) {
        long count = atol(argv[4]);
        ULONG_PTR data = (ULONG_PTR)_strtoui64(argv[5], NULL, 0);
        to = NULL;
        for (long i = 1; i <= count; i++) {
            char text[32];
            DWORD deadline = GetTickCount() + 60000;
            snprintf(text, sizeof text, "%ld", i);
            for (;;) {
                if (to == NULL || !IsWindow(to))
                    to = find(cls, title);
                if (to != NULL && send_copydata(to, data, text, (DWORD)strlen(text))) {
                    printf("TRUE %ld\n", i);
                    fflush(stdout);
                    break;
                }
                if (to != NULL) {
                    printf("FALSE %ld\n", i);
                    fflush(stdout);
                }
                if ((LONG)(deadline - GetTickCount()) <= 0) {
                    printf("GAVEUP %ld\n", i);
                    return 1;
                }
                Sleep(20); /* the receiver is restarting: look again */
            }
        }
        printf("DONE\n");
        return 0;
    }

    if (strcmp(cmd, "bench") == 0 && argc > 5) {
        long count = atol(argv[4]), size = atol(argv[5]), failed = 0;
        char *buf = malloc((size_t)size + 1);
        LARGE_INTEGER f, t0, t1;
        double ms;
        if (buf == NULL)
            return 1;
        memset(buf, 'x', (size_t)size);
        to = find(cls, title);
        if (to == NULL) {
            printf("NOWINDOW\n");
            return 1;
        }
        QueryPerformanceFrequency(&f);
        QueryPerformanceCounter(&t0);
        for (long i = 0; i < count; i++)
            if (!send_copydata(to, (ULONG_PTR)(i % 3), buf, (DWORD)size))
                failed++;
        QueryPerformanceCounter(&t1);
        ms = (double)(t1.QuadPart - t0.QuadPart) * 1000.0 / (double)f.QuadPart;
        printf("RATE %.0f %.1f %ld\n", ms > 0 ? count * 1000.0 / ms : 0.0, ms, failed);
        free(buf);
        return 0;
    }
    fprintf(stderr, "cd_sender: unknown command %s\n", cmd);
    return 2;
}
