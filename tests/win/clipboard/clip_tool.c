/*
 * A program that sets and watches the clipboard, written as old Windows
 * programs do it (OpenClipboard with its own window, EmptyClipboard,
 * SetClipboardData, CloseClipboard; a clipboard format listener), for the
 * clipboard adapter's tests. One command per run:
 *
 *   clip_tool set TEXT [--private exclude|history|viewer] [--format NAME]
 *       sets TEXT as CF_UNICODETEXT (--format: as the bytes of TEXT in the
 *       registered format NAME), with a private-content marker if asked
 *       (exclude: ExcludeClipboardContentFromMonitorProcessing; history:
 *       CanIncludeInClipboardHistory = 0, as password managers set them;
 *       viewer: Clipboard Viewer Ignore); prints "SET <sequence number>",
 *       then stays (its window remains the clipboard's owner) until killed
 *   clip_tool watch COUNT [--format NAME]
 *       prints "WATCHING", then for each of COUNT changes "CLIP <hex of
 *       the UTF-8 text> <owner pid>" (--format: "CLIP <hex of the bytes>"
 *       of that registered format), then exits
 *   clip_tool hold MS
 *       opens the clipboard, prints "HOLDING", keeps it open MS
 *       milliseconds, closes it and prints "RELEASED" (a program that
 *       holds the clipboard)
 *
 * Every line is flushed. The clipboard is shared by the whole session
 * (under Wine, by the prefix): tests that use it must not run at once.
 */
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static HWND self;
static long watch_left;
static UINT watch_format;

/* Opens the clipboard, retrying while another program holds it. */
static int open_clipboard(void)
{
    DWORD deadline = GetTickCount() + 10000;
    while (!OpenClipboard(self)) {
        if ((LONG)(deadline - GetTickCount()) <= 0)
            return 0;
        Sleep(5);
    }
    return 1;
}

static HGLOBAL global_of(const void *data, SIZE_T len)
{
    HGLOBAL h = GlobalAlloc(GMEM_MOVEABLE, len > 0 ? len : 1);
    void *p = h != NULL ? GlobalLock(h) : NULL;
    if (p == NULL)
        return NULL;
    memcpy(p, data, len);
    GlobalUnlock(h);
    return h;
}

static void print_hex(const char *tag, const void *data, size_t len, DWORD pid)
{
    const unsigned char *p = data;
    printf("%s ", tag);
    for (size_t i = 0; i < len; i++)
        printf("%02x", p[i]);
    printf(" %lu\n", (unsigned long)pid);
    fflush(stdout);
}

static void print_change(void)
{
    HWND owner;
    DWORD pid = 0;
    HANDLE h;
    if (!open_clipboard())
        return;
    owner = GetClipboardOwner();
    if (owner != NULL)
        GetWindowThreadProcessId(owner, &pid);
    if (watch_format != 0) {
        if ((h = GetClipboardData(watch_format)) != NULL) {
            const void *p = GlobalLock(h);
            print_hex("CLIP", p, GlobalSize(h), pid);
            GlobalUnlock(h);
        } else {
            printf("CLIP - %lu\n", (unsigned long)pid);
        }
    } else if ((h = GetClipboardData(CF_UNICODETEXT)) != NULL) {
        const wchar_t *w = GlobalLock(h);
        char utf8[65536];
        int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, utf8, sizeof utf8, NULL, NULL);
        print_hex("CLIP", utf8, n > 0 ? (size_t)n - 1 : 0, pid);
        GlobalUnlock(h);
    } else {
        printf("CLIP - %lu\n", (unsigned long)pid);
        fflush(stdout);
    }
    CloseClipboard();
}

static LRESULT CALLBACK wndproc(HWND hwnd, UINT msg, WPARAM wp, LPARAM lp)
{
    if (msg == WM_CLIPBOARDUPDATE && watch_left > 0) {
        print_change();
        if (--watch_left == 0)
            PostQuitMessage(0);
        return 0;
    }
    return DefWindowProcW(hwnd, msg, wp, lp);
}

int main(int argc, char **argv)
{
    WNDCLASSW wc;
    MSG m;
    const char *cmd;

    if (argc < 2) {
        fprintf(stderr, "usage: clip_tool set|watch|hold ...\n");
        return 2;
    }
    cmd = argv[1];
    memset(&wc, 0, sizeof wc);
    wc.lpfnWndProc = wndproc;
    wc.hInstance = GetModuleHandleW(NULL);
    wc.lpszClassName = L"ClipTool";
    RegisterClassW(&wc);
    self = CreateWindowExW(0, L"ClipTool", L"clip_tool", 0, 0, 0, 0, 0, HWND_MESSAGE, NULL,
                           wc.hInstance, NULL);
    if (self == NULL) {
        fprintf(stderr, "clip_tool: CreateWindow failed (%lu)\n", GetLastError());
        return 1;
    }

    if (strcmp(cmd, "set") == 0 && argc > 2) {
        const char *private_kind = NULL, *format = NULL;
        for (int i = 3; i + 1 < argc; i += 2) {
            if (strcmp(argv[i], "--private") == 0)
                private_kind = argv[i + 1];
            else if (strcmp(argv[i], "--format") == 0)
                format = argv[i + 1];
        }
        if (!open_clipboard() || !EmptyClipboard()) {
            printf("FAIL open %lu\n", GetLastError());
            return 1;
        }
        if (format != NULL) {
            UINT f = RegisterClipboardFormatA(format);
            SetClipboardData(f, global_of(argv[2], strlen(argv[2])));
        } else {
            wchar_t w[4096];
            int n = MultiByteToWideChar(CP_UTF8, 0, argv[2], -1, w, 4096);
            SetClipboardData(CF_UNICODETEXT, global_of(w, (SIZE_T)n * sizeof(wchar_t)));
        }
        if (private_kind != NULL && strcmp(private_kind, "exclude") == 0) {
            SetClipboardData(
                RegisterClipboardFormatA("ExcludeClipboardContentFromMonitorProcessing"),
                global_of("", 1));
        } else if (private_kind != NULL && strcmp(private_kind, "history") == 0) {
            DWORD zero = 0;
            SetClipboardData(RegisterClipboardFormatA("CanIncludeInClipboardHistory"),
                             global_of(&zero, sizeof zero));
        } else if (private_kind != NULL && strcmp(private_kind, "viewer") == 0) {
            SetClipboardData(RegisterClipboardFormatA("Clipboard Viewer Ignore"), global_of("", 1));
        }
        CloseClipboard();
        printf("SET %lu\n", (unsigned long)GetClipboardSequenceNumber());
        fflush(stdout);
        while (GetMessageW(&m, NULL, 0, 0) > 0)
            DispatchMessageW(&m);
        return 0;
    }

    if (strcmp(cmd, "watch") == 0 && argc > 2) {
        watch_left = atol(argv[2]);
        if (argc > 4 && strcmp(argv[3], "--format") == 0)
            watch_format = RegisterClipboardFormatA(argv[4]);
        if (!AddClipboardFormatListener(self)) {
            printf("FAIL listen %lu\n", GetLastError());
            return 1;
        }
        printf("WATCHING\n");
        fflush(stdout);
        while (GetMessageW(&m, NULL, 0, 0) > 0)
            DispatchMessageW(&m);
        return 0;
    }

    if (strcmp(cmd, "hold") == 0 && argc > 2) {
        if (!open_clipboard()) {
            printf("FAIL open %lu\n", GetLastError());
            return 1;
        }
        printf("HOLDING\n");
        fflush(stdout);
        Sleep((DWORD)atol(argv[2]));
        CloseClipboard();
        printf("RELEASED\n");
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "clip_tool: unknown command %s\n", cmd);
    return 2;
}
