/*
 * A legacy WM_COPYDATA receiver, written as old Windows programs are: a
 * window of a known class and title whose window procedure takes
 * WM_COPYDATA, copies lpData and returns TRUE. For the WM_COPYDATA
 * adapter's tests and benchmark (it is the bare window the benchmark
 * compares with).
 *
 *   cd_receiver CLASS TITLE [--message-only] [--refuse DWDATA]
 *               [--hang MS] [--quiet]
 *
 * A hidden top-level window (--message-only: HWND_MESSAGE). Each
 * WM_COPYDATA prints "DATA <dwData> <hex of lpData> <sender pid>";
 * --refuse returns FALSE for that dwData (and prints "REFUSED <dwData>");
 * --hang makes the window procedure sleep MS on every message before it
 * answers (a program that hangs); --quiet prints nothing per message (the
 * benchmark) but "COUNT <n>" when it ends. "READY" is printed once the
 * window exists. It runs until killed. Every line is flushed.
 */
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long refuse = -1;
static DWORD hang_ms;
static int quiet;
static long count;

static LRESULT CALLBACK wndproc(HWND hwnd, UINT msg, WPARAM wp, LPARAM lp)
{
    if (msg == WM_COPYDATA) {
        const COPYDATASTRUCT *cds = (const COPYDATASTRUCT *)lp;
        DWORD pid = 0;
        count++;
        if (hang_ms > 0)
            Sleep(hang_ms);
        if (refuse >= 0 && (long long)cds->dwData == refuse) {
            printf("REFUSED %llu\n", (unsigned long long)cds->dwData);
            fflush(stdout);
            return FALSE;
        }
        if (!quiet) {
            const unsigned char *p = cds->lpData;
            GetWindowThreadProcessId((HWND)wp, &pid);
            printf("DATA %llu ", (unsigned long long)cds->dwData);
            for (DWORD i = 0; i < cds->cbData; i++)
                printf("%02x", p[i]);
            printf(" %lu\n", (unsigned long)pid);
            fflush(stdout);
        }
        return TRUE;
    }
    return DefWindowProcW(hwnd, msg, wp, lp);
}

int main(int argc, char **argv)
{
    wchar_t cls[256], title[256];
    WNDCLASSW wc;
    HWND parent = NULL, hwnd;
    MSG m;

    if (argc < 3) {
        fprintf(stderr, "usage: cd_receiver CLASS TITLE [options]\n");
        return 2;
    }
    MultiByteToWideChar(CP_UTF8, 0, argv[1], -1, cls, 256);
    MultiByteToWideChar(CP_UTF8, 0, argv[2], -1, title, 256);
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--message-only") == 0)
            parent = HWND_MESSAGE;
        else if (strcmp(argv[i], "--refuse") == 0 && i + 1 < argc)
            refuse = atoll(argv[++i]);
        else if (strcmp(argv[i], "--hang") == 0 && i + 1 < argc)
            hang_ms = (DWORD)atol(argv[++i]);
        else if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
    }
    memset(&wc, 0, sizeof wc);
    wc.lpfnWndProc = wndproc;
    wc.hInstance = GetModuleHandleW(NULL);
    wc.lpszClassName = cls;
    if (!RegisterClassW(&wc)) {
        fprintf(stderr, "cd_receiver: RegisterClass failed (%lu)\n", GetLastError());
        return 1;
    }
    hwnd = CreateWindowExW(0, cls, title, 0, 0, 0, 0, 0, parent, NULL, wc.hInstance, NULL);
    if (hwnd == NULL) {
        fprintf(stderr, "cd_receiver: CreateWindow failed (%lu)\n", GetLastError());
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    while (GetMessageW(&m, NULL, 0, 0) > 0) {
        TranslateMessage(&m);
        DispatchMessageW(&m);
    }
    printf("COUNT %ld\n", count);
    return 0;
}
