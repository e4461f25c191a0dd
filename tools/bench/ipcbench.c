/*
 * ipcbench: the raw cost of a Windows IPC mechanism, and of the same
 * mechanism through Switchboard, measured the same way (msgs/s from the first
 * send to the last receipt). tools/bench/run-wine.sh runs the comparison.
 *
 * Raw mechanism: two processes, this exe in both roles (the measuring side
 * starts its peer itself).
 *   ipcbench pipe [-n N] [-w W] [-s SIZE]
 *       A message-mode named pipe. The client writes N messages of SIZE
 *       bytes; the server acknowledges each with a 1-byte reply message.
 *       -w 1: request/response; -w W: up to W messages unacknowledged;
 *       -w 0: one way, only the last message is acknowledged (the end mark).
 *       Measured by the client: first send to last acknowledgement.
 *       --bytes: a byte-mode pipe instead, records ending in '\n', the client
 *       writing all the window allows in one WriteFile and the server
 *       acknowledging what one ReadFile brought in one write (one byte per
 *       record): the shape of a pipelining jsonl client.
 *   ipcbench slot [-n N] [-s SIZE]
 *       A mailslot: the writer (child) writes N messages, the reader
 *       (this process) counts until all arrived. First send (reported by the
 *       writer; QueryPerformanceCounter is system-wide) to last receipt.
 *
 * Through the broker: a producer thread and a consumer in this process, on
 * different connections.
 *   ipcbench broker --in IN --out OUT [-n N] [-w W] [-s SIZE] [--sub-window K]
 *     IN:  rawpipe:NAME       raw producer on the broker's `framing: message`
 *                             pipe adapter \\.\pipe\NAME (no acknowledgement)
 *          pub:NAME:TOPIC     jsonl `pub` over the byte-mode jsonl pipe
 *                             \\.\pipe\NAME, up to W awaiting their puback
 *          slot:NAME          writes to the broker's mailslot \\.\mailslot\NAME
 *     OUT: jsonl:NAME:SUB     jsonl consumer of subscription SUB over the pipe
 *                             \\.\pipe\NAME, acknowledging every message
 *          slot:NAME          creates \\.\mailslot\NAME (the broker's mailslot
 *                             sink writes to it) and reads it
 *   Measured: first send to the last receipt by the consumer. Payloads carry
 *   a run id and an index, so leftovers of an earlier run are recognised
 *   (acknowledged and ignored) and duplicates are counted.
 *
 * Helpers for the script:
 *   ipcbench ping NAME [TIMEOUT_MS]   jsonl ping over \\.\pipe\NAME (readiness)
 *   ipcbench stop-broker              sets Local\switchboard-stop-<pid> of every
 *                                     switchboard.exe (its orderly stop)
 *
 * Every mode prints one line "RESULT key=value ..." on stdout (rate in
 * msgs/s) and exits 0 if all N messages arrived. A run that makes no
 * progress for --stall ms (default 20000) fails instead of hanging.
 *
 * Plain synchronous Win32 I/O throughout (one operation in flight per
 * handle and thread): what a simple program would do, and the same calls on
 * both sides of the comparison. The jsonl clients write everything they
 * have in one WriteFile (the pubs the window allows, the acks for what one
 * ReadFile brought), as a pipelining client would.
 */
#include <windows.h>

#include <tlhelp32.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIPE_BUF_SIZE 65536
#define ACK_BYTE 0x06

/* ---- common ---- */

typedef struct opts {
    long long n;
    int window;
    int size;
    int sub_window;
    int stall_ms;
    int bytes; /* pipe: byte mode */
    const char *in, *out;
} opts;

static LARGE_INTEGER qpc_freq;

static unsigned long long now_ns(void)
{
    LARGE_INTEGER t;
    QueryPerformanceCounter(&t);
    return (unsigned long long)(t.QuadPart / qpc_freq.QuadPart) * 1000000000ull +
           (unsigned long long)(t.QuadPart % qpc_freq.QuadPart) * 1000000000ull /
               (unsigned long long)qpc_freq.QuadPart;
}

static volatile LONG64 g_progress; /* bumped by every thread that moves */
static int g_stall_ms = 20000;
static char g_label[256] = "?";

static void progress(void)
{
    InterlockedIncrement64(&g_progress);
}

static void die(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "ipcbench: %s\n", msg);
    printf("RESULT %s ok=0 error=\"%s\"\n", g_label, msg);
    fflush(stdout);
    fflush(stderr);
    ExitProcess(3);
}

static DWORD WINAPI watchdog_main(LPVOID arg)
{
    LONG64 last = -1;
    unsigned long long since = now_ns();
    (void)arg;
    for (;;) {
        LONG64 p;
        Sleep(250);
        p = InterlockedCompareExchange64(&g_progress, 0, 0);
        if (p != last) {
            last = p;
            since = now_ns();
        } else if (now_ns() - since > (unsigned long long)g_stall_ms * 1000000ull) {
            die("no progress for %d ms", g_stall_ms);
        }
    }
    return 0;
}

static void start_watchdog(void)
{
    HANDLE t = CreateThread(NULL, 0, watchdog_main, NULL, 0, NULL);
    if (t == NULL)
        die("CreateThread: error %lu", GetLastError());
    CloseHandle(t);
}

static wchar_t *widen(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
    wchar_t *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(wchar_t));
    if (w == NULL || n <= 0 || MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) != n)
        die("bad name %s", s);
    return w;
}

/* Full paths: NAME or an already full \\.\pipe\ / \\.\mailslot\ path. */
static wchar_t *pipe_path(const char *name)
{
    char buf[512];
    if (strncmp(name, "\\\\", 2) == 0)
        snprintf(buf, sizeof(buf), "%s", name);
    else
        snprintf(buf, sizeof(buf), "\\\\.\\pipe\\%s", name);
    return widen(buf);
}

static wchar_t *slot_path(const char *name)
{
    char buf[512];
    if (strncmp(name, "\\\\", 2) == 0)
        snprintf(buf, sizeof(buf), "%s", name);
    else
        snprintf(buf, sizeof(buf), "\\\\.\\mailslot\\%s", name);
    return widen(buf);
}

/* The payload of message i: "R<run> I<index> " padded with 'x' to size. */
static int make_payload(char *out, int size, unsigned run, long long i)
{
    int n = snprintf(out, (size_t)size + 1, "R%08x I%010lld ", run, i);
    if (n < size)
        memset(out + n, 'x', (size_t)(size - n));
    return size;
}

/* Parses "R<run> I<index>" at p; 0 if it is not one. */
static int parse_payload(const char *p, size_t len, unsigned *run, long long *index)
{
    char tmp[32];
    if (len < 21 || p[0] != 'R' || p[9] != ' ' || p[10] != 'I')
        return 0;
    memcpy(tmp, p + 1, 8);
    tmp[8] = '\0';
    *run = (unsigned)strtoul(tmp, NULL, 16);
    memcpy(tmp, p + 11, 10);
    tmp[10] = '\0';
    *index = strtoll(tmp, NULL, 10);
    return 1;
}

/* Opens a pipe as a client, waiting up to timeout_ms for it to appear. */
static HANDLE open_pipe(const wchar_t *path, DWORD access, int message, int timeout_ms)
{
    unsigned long long deadline = now_ns() + (unsigned long long)timeout_ms * 1000000ull;
    HANDLE h;
    for (;;) {
        DWORD err;
        h = CreateFileW(path, access, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (h != INVALID_HANDLE_VALUE)
            break;
        err = GetLastError();
        if ((err != ERROR_FILE_NOT_FOUND && err != ERROR_PIPE_BUSY) || now_ns() > deadline) {
            SetLastError(err);
            return INVALID_HANDLE_VALUE;
        }
        if (err == ERROR_PIPE_BUSY)
            WaitNamedPipeW(path, 50);
        else
            Sleep(5);
    }
    if (message) {
        DWORD mode = PIPE_READMODE_MESSAGE;
        if (!SetNamedPipeHandleState(h, &mode, NULL, NULL))
            die("SetNamedPipeHandleState: error %lu", GetLastError());
    }
    return h;
}

static void write_all(HANDLE h, const void *buf, DWORD len, const char *what)
{
    DWORD n = 0;
    if (!WriteFile(h, buf, len, &n, NULL))
        die("%s: WriteFile: error %lu", what, GetLastError());
    if (n != len)
        die("%s: short write %lu of %lu", what, n, len);
}

/* Starts this exe with args; its stdout goes to *out_read (if not NULL). */
static HANDLE spawn_self(const char *args, HANDLE *out_read)
{
    wchar_t exe[MAX_PATH], *wargs, *cmd;
    STARTUPINFOW si;
    PROCESS_INFORMATION pi;
    SECURITY_ATTRIBUTES sa = {sizeof(sa), NULL, TRUE};
    HANDLE rd = NULL, wr = NULL;
    size_t len;

    if (GetModuleFileNameW(NULL, exe, MAX_PATH) == 0)
        die("GetModuleFileNameW: error %lu", GetLastError());
    wargs = widen(args);
    len = wcslen(exe) + wcslen(wargs) + 8;
    cmd = malloc(len * sizeof(wchar_t));
    if (cmd == NULL)
        die("out of memory");
    _snwprintf(cmd, len, L"\"%ls\" %ls", exe, wargs);
    cmd[len - 1] = L'\0';
    memset(&si, 0, sizeof(si));
    si.cb = sizeof(si);
    si.dwFlags = STARTF_USESTDHANDLES;
    si.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
    si.hStdError = GetStdHandle(STD_ERROR_HANDLE);
    si.hStdOutput = GetStdHandle(STD_ERROR_HANDLE);
    if (out_read != NULL) {
        if (!CreatePipe(&rd, &wr, &sa, 0))
            die("CreatePipe: error %lu", GetLastError());
        SetHandleInformation(rd, HANDLE_FLAG_INHERIT, 0);
        si.hStdOutput = wr;
    }
    if (!CreateProcessW(exe, cmd, NULL, NULL, TRUE, 0, NULL, NULL, &si, &pi))
        die("CreateProcessW: error %lu", GetLastError());
    CloseHandle(pi.hThread);
    if (wr != NULL)
        CloseHandle(wr);
    if (out_read != NULL)
        *out_read = rd;
    free(wargs);
    free(cmd);
    return pi.hProcess;
}

static void read_to_end(HANDLE h, char *out, size_t cap)
{
    size_t len = 0;
    DWORD n;
    while (len + 1 < cap && ReadFile(h, out + len, (DWORD)(cap - 1 - len), &n, NULL) && n > 0)
        len += n;
    out[len] = '\0';
}

static void print_rate(const char *extra, long long n, long long got, unsigned long long t0,
                       unsigned long long t1)
{
    double secs = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    printf("RESULT %s ok=%d n=%lld received=%lld seconds=%.4f rate=%.0f%s\n", g_label,
           got == n ? 1 : 0, n, got, secs, secs > 0 ? (double)got / secs : 0, extra);
    fflush(stdout);
}

/* ---- raw named pipe ---- */

static int pipe_server_main(const char *name, long long n, int window, int bytes)
{
    wchar_t *path = pipe_path(name);
    char *buf = malloc(PIPE_BUF_SIZE), *acks = malloc(PIPE_BUF_SIZE);
    char ack = ACK_BYTE;
    long long got = 0;
    HANDLE h;

    h = CreateNamedPipeW(
        path, PIPE_ACCESS_DUPLEX,
        (bytes ? PIPE_TYPE_BYTE | PIPE_READMODE_BYTE : PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE) |
            PIPE_WAIT,
        1, PIPE_BUF_SIZE, PIPE_BUF_SIZE, 0, NULL);
    if (h == INVALID_HANDLE_VALUE || buf == NULL || acks == NULL)
        die("pipe-server: CreateNamedPipeW: error %lu", GetLastError());
    memset(acks, ACK_BYTE, PIPE_BUF_SIZE);
    if (!ConnectNamedPipe(h, NULL) && GetLastError() != ERROR_PIPE_CONNECTED)
        die("pipe-server: ConnectNamedPipe: error %lu", GetLastError());
    for (;;) {
        DWORD r = 0;
        if (!ReadFile(h, buf, PIPE_BUF_SIZE, &r, NULL)) {
            DWORD err = GetLastError();
            if (err == ERROR_BROKEN_PIPE || err == ERROR_PIPE_NOT_CONNECTED)
                break;
            die("pipe-server: ReadFile: error %lu", err);
        }
        if (bytes) {
            /* Records end with '\n': one ack byte each, in one write. */
            DWORD k = 0;
            for (DWORD i = 0; i < r; i++)
                k += buf[i] == '\n';
            got += k;
            if (k > 0 && (window > 0 || got == n))
                write_all(h, acks, window > 0 ? k : 1, "pipe-server");
            continue;
        }
        got++;
        if (window > 0 || got == n)
            write_all(h, &ack, 1, "pipe-server");
    }
    fprintf(stderr, "pipe-server: %lld messages\n", got);
    return got == n ? 0 : 1;
}

static int pipe_main(const opts *o)
{
    char name[64], args[160], *msg, *ack = malloc(PIPE_BUF_SIZE);
    unsigned run = (unsigned)GetCurrentProcessId();
    long long sent = 0, acked = 0;
    long long window = o->window > 0 ? o->window : o->n; /* 0: one way */
    /* Byte mode writes what the window allows in one WriteFile. */
    size_t batch = o->bytes ? (size_t)(window < 4096 ? window : 4096) : 1, mlen;
    unsigned long long t0 = 0, t1;
    wchar_t *path;
    HANDLE child, h;
    DWORD code = 1;

    snprintf(name, sizeof(name), "ipcbench-%lu", GetCurrentProcessId());
    msg = malloc(batch * (size_t)o->size + 1);
    if (msg == NULL || ack == NULL)
        die("out of memory");
    snprintf(g_label, sizeof(g_label), "case=pipe mode=%s window=%d size=%d",
             o->bytes ? "byte" : "message", o->window, o->size);
    snprintf(args, sizeof(args), "pipe-server %s %lld %d %d", name, o->n, o->window, o->bytes);
    child = spawn_self(args, NULL);
    path = pipe_path(name);
    h = open_pipe(path, GENERIC_READ | GENERIC_WRITE, !o->bytes, 10000);
    if (h == INVALID_HANDLE_VALUE)
        die("cannot open %s: error %lu", name, GetLastError());
    start_watchdog();
    while (acked < o->n) {
        while (sent < o->n && sent - acked < window) {
            mlen = 0;
            while (mlen < batch && sent < o->n && sent - acked < window) {
                make_payload(msg + mlen * (size_t)o->size, o->size, run, sent);
                if (o->bytes)
                    msg[(mlen + 1) * (size_t)o->size - 1] = '\n';
                mlen++;
                sent++;
            }
            if (t0 == 0)
                t0 = now_ns();
            write_all(h, msg, (DWORD)(mlen * (size_t)o->size), "pipe");
            progress();
        }
        {
            DWORD r = 0;
            if (!ReadFile(h, ack, PIPE_BUF_SIZE, &r, NULL))
                die("pipe: ReadFile: error %lu", GetLastError());
            /* Message mode: one ack per read; byte mode: one per byte. */
            acked = o->window == 0 ? o->n : acked + (o->bytes ? (long long)r : 1);
        }
        progress();
    }
    t1 = now_ns();
    CloseHandle(h);
    WaitForSingleObject(child, 10000);
    GetExitCodeProcess(child, &code);
    print_rate(code == 0 ? "" : " server_failed=1", o->n, acked, t0, t1);
    return acked == o->n && code == 0 ? 0 : 1;
}

/* ---- raw mailslot ---- */

/* Writes n messages to the mailslot at path; returns the first send time. */
static unsigned long long slot_write(const wchar_t *path, long long n, int size, unsigned run)
{
    char *msg = malloc((size_t)size + 1);
    unsigned long long t0 = 0;
    HANDLE h = INVALID_HANDLE_VALUE;
    unsigned long long deadline = now_ns() + 10000000000ull;

    while (h == INVALID_HANDLE_VALUE) {
        h = CreateFileW(path, GENERIC_WRITE, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                        FILE_ATTRIBUTE_NORMAL, NULL);
        if (h == INVALID_HANDLE_VALUE) {
            if (GetLastError() != ERROR_FILE_NOT_FOUND || now_ns() > deadline)
                die("mailslot writer: CreateFileW: error %lu", GetLastError());
            Sleep(5);
        }
    }
    for (long long i = 0; i < n; i++) {
        make_payload(msg, size, run, i);
        if (i == 0)
            t0 = now_ns();
        write_all(h, msg, (DWORD)size, "mailslot writer");
        progress();
    }
    CloseHandle(h);
    free(msg);
    return t0;
}

static int slot_writer_main(const char *name, long long n, int size, unsigned run)
{
    unsigned long long t0 = slot_write(slot_path(name), n, size, run);
    printf("%llu\n", t0);
    fflush(stdout);
    return 0;
}

/* Creates a mailslot, retrying while the name is still held (Wine keeps a
 * mailslot alive while a writer holds a handle to it). */
static HANDLE create_slot(const wchar_t *path, DWORD read_timeout_ms)
{
    unsigned long long deadline = now_ns() + 10000000000ull;
    for (;;) {
        HANDLE h = CreateMailslotW(path, 0, read_timeout_ms, NULL);
        if (h != INVALID_HANDLE_VALUE)
            return h;
        if (GetLastError() != ERROR_ALREADY_EXISTS || now_ns() > deadline)
            die("CreateMailslotW: error %lu", GetLastError());
        Sleep(20);
    }
}

typedef struct recv_state {
    unsigned run;
    long long n;
    unsigned char *seen;
    long long got, dups, foreign;
    unsigned long long last_ns;
} recv_state;

/* Counts one received payload; returns 1 when all n have arrived. */
static int note_payload(recv_state *s, const char *p, size_t len)
{
    unsigned run;
    long long i;
    if (!parse_payload(p, len, &run, &i) || run != s->run || i < 0 || i >= s->n) {
        s->foreign++;
        return 0;
    }
    if (s->seen[i]) {
        s->dups++;
        return 0;
    }
    s->seen[i] = 1;
    s->got++;
    s->last_ns = now_ns();
    progress();
    return s->got == s->n;
}

/* Reads the mailslot until n messages of run arrived. */
static void slot_read(HANDLE slot, recv_state *s)
{
    char *buf = malloc(PIPE_BUF_SIZE);
    while (s->got < s->n) {
        DWORD r = 0;
        if (!ReadFile(slot, buf, PIPE_BUF_SIZE, &r, NULL)) {
            DWORD err = GetLastError();
            if (err == ERROR_SEM_TIMEOUT)
                continue; /* the watchdog decides when it is too long */
            die("mailslot reader: ReadFile: error %lu", err);
        }
        note_payload(s, buf, r);
    }
    free(buf);
}

static int slot_main(const opts *o)
{
    char name[64], args[160], out[128];
    recv_state s;
    HANDLE slot, child, rd;
    unsigned long long t0;
    DWORD code = 1;

    memset(&s, 0, sizeof(s));
    s.run = (unsigned)GetCurrentProcessId();
    s.n = o->n;
    s.seen = calloc((size_t)o->n, 1);
    snprintf(name, sizeof(name), "ipcbench-%lu", GetCurrentProcessId());
    snprintf(g_label, sizeof(g_label), "case=mailslot size=%d", o->size);
    slot = create_slot(slot_path(name), 200);
    snprintf(args, sizeof(args), "slot-writer %s %lld %d %u", name, o->n, o->size, s.run);
    child = spawn_self(args, &rd);
    start_watchdog();
    slot_read(slot, &s);
    read_to_end(rd, out, sizeof(out));
    WaitForSingleObject(child, 10000);
    GetExitCodeProcess(child, &code);
    t0 = strtoull(out, NULL, 10);
    if (code != 0 || t0 == 0)
        die("mailslot writer failed (exit %lu)", code);
    print_rate("", o->n, s.got, t0, s.last_ns);
    return s.got == o->n ? 0 : 1;
}

/* ---- through the broker ---- */

typedef struct broker_run {
    const opts *o;
    unsigned run;
    char in_kind[16], in_name[128], in_topic[128];
    char out_kind[16], out_name[128], out_sub[128];
    HANDLE start;                  /* set when the consumer is attached */
    unsigned long long first_ns;   /* first send */
    unsigned long long pubacks_ns; /* pub: last puback */
    long long pub_errors;
    char pub_error[256];
} broker_run;

/* Splits "kind:a[:b]". */
static void split_spec(const char *spec, char *kind, char *a, char *b, size_t cap)
{
    const char *c1 = strchr(spec, ':'), *c2;
    kind[0] = a[0] = b[0] = '\0';
    if (c1 == NULL)
        die("bad spec %s (kind:name...)", spec);
    snprintf(kind, 16, "%.*s", (int)(c1 - spec), spec);
    c2 = strchr(c1 + 1, ':');
    if (c2 == NULL) {
        snprintf(a, cap, "%s", c1 + 1);
    } else {
        snprintf(a, cap, "%.*s", (int)(c2 - c1 - 1), c1 + 1);
        snprintf(b, cap, "%s", c2 + 1);
    }
}

/* Producer: raw frames on a message-mode pipe. */
static void produce_rawpipe(broker_run *b)
{
    const opts *o = b->o;
    char *msg = malloc((size_t)o->size + 1);
    HANDLE h = open_pipe(pipe_path(b->in_name), GENERIC_WRITE, 0, 10000);
    if (h == INVALID_HANDLE_VALUE)
        die("cannot open pipe %s: error %lu", b->in_name, GetLastError());
    for (long long i = 0; i < o->n; i++) {
        make_payload(msg, o->size, b->run, i);
        if (i == 0)
            b->first_ns = now_ns();
        write_all(h, msg, (DWORD)o->size, "raw pipe producer");
        progress();
    }
    /* Closed only after the consumer has everything: a raw producer that
     * leaves while the broker holds frames would lose them. */
    WaitForSingleObject(b->start, INFINITE);
    CloseHandle(h);
    free(msg);
}

/* Producer: jsonl pub with up to W awaiting their puback. */
static void produce_pub(broker_run *b)
{
    const opts *o = b->o;
    long long window = o->window > 0 ? o->window : 1, sent = 0, acked = 0;
    size_t cap = (size_t)window * ((size_t)o->size + 256) + 256, wlen, rlen = 0;
    char *wbuf = malloc(cap), *rbuf = malloc(PIPE_BUF_SIZE + 1),
         *payload = malloc((size_t)o->size + 1);
    HANDLE h = open_pipe(pipe_path(b->in_name), GENERIC_READ | GENERIC_WRITE, 0, 10000);

    if (h == INVALID_HANDLE_VALUE)
        die("cannot open pipe %s: error %lu", b->in_name, GetLastError());
    if (wbuf == NULL || rbuf == NULL || payload == NULL)
        die("out of memory");
    while (acked < o->n) {
        DWORD r = 0;
        char *line, *nl;
        wlen = 0;
        while (sent < o->n && sent - acked < window) {
            make_payload(payload, o->size, b->run, sent);
            wlen += (size_t)snprintf(
                wbuf + wlen, cap - wlen,
                "{\"op\":\"pub\",\"id\":%lld,\"topic\":\"%s\",\"payload\":\"%.*s\"}\n", sent + 1,
                b->in_topic, o->size, payload);
            sent++;
        }
        if (wlen > 0) {
            if (b->first_ns == 0)
                b->first_ns = now_ns();
            write_all(h, wbuf, (DWORD)wlen, "pub producer");
        }
        if (!ReadFile(h, rbuf + rlen, (DWORD)(PIPE_BUF_SIZE - rlen), &r, NULL))
            die("pub producer: ReadFile: error %lu", GetLastError());
        rlen += r;
        rbuf[rlen] = '\0';
        line = rbuf;
        while ((nl = memchr(line, '\n', rlen - (size_t)(line - rbuf))) != NULL) {
            *nl = '\0';
            if (strstr(line, "\"op\":\"puback\"") != NULL) {
                acked++;
            } else if (strstr(line, "\"op\":\"error\"") != NULL) {
                acked++;
                if (b->pub_errors++ == 0)
                    snprintf(b->pub_error, sizeof(b->pub_error), "%.200s", line);
            }
            line = nl + 1;
        }
        rlen -= (size_t)(line - rbuf);
        memmove(rbuf, line, rlen);
        progress();
    }
    b->pubacks_ns = now_ns();
    WaitForSingleObject(b->start, INFINITE);
    CloseHandle(h);
    free(wbuf);
    free(rbuf);
    free(payload);
}

static DWORD WINAPI producer_main(LPVOID arg)
{
    broker_run *b = arg;
    WaitForSingleObject(b->start, INFINITE);
    ResetEvent(b->start); /* set again when the consumer has everything */
    if (strcmp(b->in_kind, "rawpipe") == 0) {
        produce_rawpipe(b);
    } else if (strcmp(b->in_kind, "pub") == 0) {
        produce_pub(b);
    } else {
        b->first_ns = slot_write(slot_path(b->in_name), b->o->n, b->o->size, b->run);
    }
    return 0;
}

/* Extracts an integer after key in line; -1 if absent. */
static long long json_int_after(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p != NULL ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* Consumer: jsonl subscription over a pipe, acknowledging everything. */
static void consume_jsonl(broker_run *b, recv_state *s, HANDLE producer)
{
    const opts *o = b->o;
    size_t rlen = 0, alen, acap = PIPE_BUF_SIZE * 2;
    char *rbuf = malloc(PIPE_BUF_SIZE + 1), *abuf = malloc(acap), sub[512];
    int subscribed = 0, n;
    HANDLE h = open_pipe(pipe_path(b->out_name), GENERIC_READ | GENERIC_WRITE, 0, 10000);

    if (h == INVALID_HANDLE_VALUE)
        die("cannot open pipe %s: error %lu", b->out_name, GetLastError());
    n = snprintf(sub, sizeof(sub), "{\"op\":\"sub\",\"id\":\"s\",\"sub\":\"%s\",\"window\":%d}\n",
                 b->out_sub, o->sub_window);
    write_all(h, sub, (DWORD)n, "consumer");
    while (s->got < s->n) {
        DWORD r = 0;
        char *line, *nl;
        if (!ReadFile(h, rbuf + rlen, (DWORD)(PIPE_BUF_SIZE - rlen), &r, NULL))
            die("consumer: ReadFile: error %lu", GetLastError());
        rlen += r;
        rbuf[rlen] = '\0';
        alen = 0;
        line = rbuf;
        while ((nl = memchr(line, '\n', rlen - (size_t)(line - rbuf))) != NULL) {
            *nl = '\0';
            if (strncmp(line, "{\"op\":\"msg\"", 11) == 0) {
                long long id = json_int_after(line, "\"msg_id\":");
                const char *p = strstr(line, "\"payload\":\"");
                if (p != NULL)
                    note_payload(s, p + 11, strlen(p + 11));
                else
                    s->foreign++;
                if (alen + 256 > acap)
                    die("consumer: ack buffer full");
                alen += (size_t)snprintf(abuf + alen, acap - alen,
                                         "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}\n",
                                         b->out_sub, id);
            } else if (strstr(line, "\"op\":\"subscribed\"") != NULL && !subscribed) {
                subscribed = 1;
                SetEvent(b->start);
            } else if (strstr(line, "\"op\":\"error\"") != NULL) {
                die("consumer: broker error: %.300s", line);
            }
            line = nl + 1;
        }
        rlen -= (size_t)(line - rbuf);
        memmove(rbuf, line, rlen);
        if (rlen >= PIPE_BUF_SIZE)
            die("consumer: line longer than %d bytes", PIPE_BUF_SIZE);
        if (alen > 0)
            write_all(h, abuf, (DWORD)alen, "consumer acks");
    }
    SetEvent(b->start); /* the producer may close */
    WaitForSingleObject(producer, INFINITE);
    /* Detach in order, so nothing returns to the queue counted as failed. */
    n = snprintf(sub, sizeof(sub), "{\"op\":\"unsub\",\"id\":\"u\",\"sub\":\"%s\"}\n", b->out_sub);
    write_all(h, sub, (DWORD)n, "consumer");
    for (;;) {
        DWORD r = 0;
        if (!ReadFile(h, rbuf, PIPE_BUF_SIZE, &r, NULL))
            break;
        rbuf[r] = '\0';
        if (strstr(rbuf, "\"op\":\"unsubscribed\"") != NULL)
            break;
    }
    CloseHandle(h);
    free(rbuf);
    free(abuf);
}

static int broker_main(const opts *o)
{
    broker_run b;
    recv_state s;
    HANDLE producer;
    char extra[512];
    unsigned long long t1;
    LARGE_INTEGER seed;

    memset(&b, 0, sizeof(b));
    memset(&s, 0, sizeof(s));
    if (o->in == NULL || o->out == NULL)
        die("broker needs --in and --out");
    QueryPerformanceCounter(&seed);
    b.o = o;
    b.run = (unsigned)(seed.QuadPart ^ ((LONGLONG)GetCurrentProcessId() << 20));
    split_spec(o->in, b.in_kind, b.in_name, b.in_topic, sizeof(b.in_name));
    split_spec(o->out, b.out_kind, b.out_name, b.out_sub, sizeof(b.out_name));
    snprintf(g_label, sizeof(g_label), "case=broker in=%s out=%s window=%d size=%d", o->in, o->out,
             o->window, o->size);
    if (strcmp(b.in_kind, "rawpipe") != 0 && strcmp(b.in_kind, "pub") != 0 &&
        strcmp(b.in_kind, "slot") != 0)
        die("--in: unknown kind %s", b.in_kind);
    if (strcmp(b.in_kind, "pub") == 0 && b.in_topic[0] == '\0')
        die("--in pub:NAME:TOPIC needs a topic");
    if (strcmp(b.out_kind, "jsonl") == 0 ? b.out_sub[0] == '\0' : strcmp(b.out_kind, "slot") != 0)
        die("--out: jsonl:NAME:SUB or slot:NAME");
    s.run = b.run;
    s.n = o->n;
    s.seen = calloc((size_t)o->n, 1);
    b.start = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (s.seen == NULL || b.start == NULL)
        die("out of memory");
    start_watchdog();
    producer = CreateThread(NULL, 0, producer_main, &b, 0, NULL);
    if (producer == NULL)
        die("CreateThread: error %lu", GetLastError());
    if (strcmp(b.out_kind, "jsonl") == 0) {
        consume_jsonl(&b, &s, producer);
    } else {
        HANDLE slot = create_slot(slot_path(b.out_name), 200);
        SetEvent(b.start);
        slot_read(slot, &s);
        SetEvent(b.start);
        WaitForSingleObject(producer, INFINITE);
        CloseHandle(slot);
    }
    t1 = s.last_ns;
    snprintf(extra, sizeof(extra), " duplicates=%lld foreign=%lld", s.dups, s.foreign);
    if (b.pubacks_ns != 0) {
        size_t l = strlen(extra);
        double ps = (double)(b.pubacks_ns - b.first_ns) / 1e9;
        snprintf(extra + l, sizeof(extra) - l,
                 " puback_seconds=%.4f puback_rate=%.0f pub_errors=%lld", ps,
                 ps > 0 ? (double)o->n / ps : 0, b.pub_errors);
    }
    if (b.pub_errors > 0)
        fprintf(stderr, "ipcbench: %lld publishes refused, first: %s\n", b.pub_errors, b.pub_error);
    print_rate(extra, o->n, s.got, b.first_ns, t1);
    return s.got == o->n && b.pub_errors == 0 ? 0 : 1;
}

/* ---- helpers for the script ---- */

static int ping_main(const char *name, int timeout_ms)
{
    unsigned long long deadline = now_ns() + (unsigned long long)timeout_ms * 1000000ull;
    static const char req[] = "{\"op\":\"ping\",\"id\":1}\n";
    char buf[4096];
    size_t len = 0;
    HANDLE h = open_pipe(pipe_path(name), GENERIC_READ | GENERIC_WRITE, 0, timeout_ms);
    g_stall_ms = timeout_ms;
    if (h == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "ipcbench ping: cannot open %s: error %lu\n", name, GetLastError());
        return 1;
    }
    start_watchdog();
    write_all(h, req, sizeof(req) - 1, "ping");
    while (now_ns() < deadline && len + 1 < sizeof(buf)) {
        DWORD r = 0;
        if (!ReadFile(h, buf + len, (DWORD)(sizeof(buf) - 1 - len), &r, NULL))
            break;
        len += r;
        buf[len] = '\0';
        if (strstr(buf, "\"op\":\"pong\"") != NULL) {
            CloseHandle(h);
            return 0;
        }
    }
    CloseHandle(h);
    return 1;
}

static int stop_broker_main(void)
{
    HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
    PROCESSENTRY32W pe;
    int count = 0;
    if (snap == INVALID_HANDLE_VALUE)
        die("CreateToolhelp32Snapshot: error %lu", GetLastError());
    pe.dwSize = sizeof(pe);
    for (BOOL ok = Process32FirstW(snap, &pe); ok; ok = Process32NextW(snap, &pe)) {
        wchar_t name[64];
        HANDLE ev;
        if (_wcsicmp(pe.szExeFile, L"switchboard.exe") != 0)
            continue;
        _snwprintf(name, 64, L"Local\\switchboard-stop-%lu", pe.th32ProcessID);
        name[63] = L'\0';
        ev = OpenEventW(EVENT_MODIFY_STATE, FALSE, name);
        if (ev != NULL && SetEvent(ev)) {
            fprintf(stderr, "ipcbench: asked switchboard.exe (pid %lu) to stop\n",
                    pe.th32ProcessID);
            count++;
        }
        if (ev != NULL)
            CloseHandle(ev);
    }
    CloseHandle(snap);
    return count > 0 ? 0 : 1;
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: ipcbench pipe [-n N] [-w W] [-s SIZE] [--bytes]\n"
            "       ipcbench slot [-n N] [-s SIZE]\n"
            "       ipcbench broker --in rawpipe:NAME|pub:NAME:TOPIC|slot:NAME\n"
            "                       --out jsonl:NAME:SUB|slot:NAME [-n N] [-w W] [-s SIZE]\n"
            "                       [--sub-window K]\n"
            "       ipcbench ping NAME [TIMEOUT_MS] | stop-broker\n"
            "       common: [--stall MS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o = {10000, 1, 100, 100, 20000, 0, NULL, NULL};
    const char *mode;

    QueryPerformanceFrequency(&qpc_freq);
    if (argc < 2)
        usage();
    mode = argv[1];
    /* Internal roles: positional arguments. */
    if (strcmp(mode, "pipe-server") == 0 && argc == 6)
        return pipe_server_main(argv[2], atoll(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (strcmp(mode, "slot-writer") == 0 && argc == 6)
        return slot_writer_main(argv[2], atoll(argv[3]), atoi(argv[4]),
                                (unsigned)strtoul(argv[5], NULL, 10));
    if (strcmp(mode, "ping") == 0 && (argc == 3 || argc == 4))
        return ping_main(argv[2], argc == 4 ? atoi(argv[3]) : 5000);
    if (strcmp(mode, "stop-broker") == 0)
        return stop_broker_main();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--bytes") == 0) {
            o.bytes = 1;
            continue;
        }
        if (v == NULL)
            usage();
        if (strcmp(a, "-n") == 0)
            o.n = atoll(v);
        else if (strcmp(a, "-w") == 0)
            o.window = atoi(v);
        else if (strcmp(a, "-s") == 0)
            o.size = atoi(v);
        else if (strcmp(a, "--sub-window") == 0)
            o.sub_window = atoi(v);
        else if (strcmp(a, "--stall") == 0)
            o.stall_ms = atoi(v);
        else if (strcmp(a, "--in") == 0)
            o.in = v;
        else if (strcmp(a, "--out") == 0)
            o.out = v;
        else
            usage();
        i++;
    }
    if (o.n < 1 || o.window < 0 || o.size < 24 || o.size > 60000 || o.sub_window < 1)
        usage();
    g_stall_ms = o.stall_ms;
    if (strcmp(mode, "pipe") == 0)
        return pipe_main(&o);
    if (strcmp(mode, "slot") == 0)
        return slot_main(&o);
    if (strcmp(mode, "broker") == 0)
        return broker_main(&o);
    usage();
    return 2;
}
