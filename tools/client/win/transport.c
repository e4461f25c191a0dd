/*
 * Windows transport: TCP through Winsock and named pipes (\\.\pipe\NAME,
 * also \\SERVER\pipe\NAME and pipe:NAME). Sockets are non-blocking and
 * waited on with select(), as the POSIX file waits with poll(); pipe handles
 * are opened for overlapped I/O so every read and write waits on its event
 * with a deadline and is cancelled when the deadline passes. Unix domain
 * sockets are refused here (POSIX only). All Windows-specific client code
 * lives in this file; names cross the API boundary as UTF-16.
 */
#include "tools/client/transport_int.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <winsock2.h>
#include <ws2tcpip.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <windows.h>

typedef enum { WIN_TCP = 1, WIN_PIPE = 2 } win_kind;

typedef struct win_transport {
    sb_transport base;
    win_kind kind;
    SOCKET sock;  /* WIN_TCP */
    HANDLE pipe;  /* WIN_PIPE, opened with FILE_FLAG_OVERLAPPED */
    HANDLE event; /* WIN_PIPE: the manual-reset event of the pending operation */
    char name[SB_ENDPOINT_PATH_MAX + 16];
} win_transport;

unsigned long long sb_client__now_ns(void)
{
    static LARGE_INTEGER freq; /* constant after boot: a benign race */
    LARGE_INTEGER now;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (unsigned long long)(now.QuadPart / freq.QuadPart) * 1000000000ull +
           (unsigned long long)(now.QuadPart % freq.QuadPart) * 1000000000ull /
               (unsigned long long)freq.QuadPart;
}

const char *sb_client__platform_default_endpoint(void)
{
    /* The broker's default admin endpoint on Windows (platform/win). */
    return "\\\\.\\pipe\\switchboard-admin";
}

/* Remaining milliseconds until deadline_ns (0 = none: -1). */
static int remaining_ms(unsigned long long deadline_ns)
{
    unsigned long long now;
    if (deadline_ns == 0)
        return -1;
    now = sb_client__now_ns();
    if (now >= deadline_ns)
        return 0;
    return (int)((deadline_ns - now + 999999ull) / 1000000ull);
}

static unsigned long long deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return 0;
    return sb_client__now_ns() + (unsigned long long)timeout_ms * 1000000ull;
}

/* The system's text for a Win32 or Winsock error code. */
static const char *win_text(DWORD code, char *buf, size_t n)
{
    sb_win_strerror(code, buf, n);
    return buf;
}

/* SB_ECLOSED for the codes that mean the peer went away, else SB_EIO. */
static int closed_or_io(DWORD code)
{
    return sb_error_from_win32(code) == SB_ECLOSED ? SB_ECLOSED : SB_EIO;
}

/* ---- Winsock ---- */

static INIT_ONCE wsa_once = INIT_ONCE_STATIC_INIT;
static int wsa_status;

static BOOL CALLBACK wsa_init(PINIT_ONCE once, PVOID param, PVOID *ctx)
{
    WSADATA data;
    (void)once;
    (void)param;
    (void)ctx;
    /* Never cleaned up: the process exit releases Winsock. */
    wsa_status = WSAStartup(MAKEWORD(2, 2), &data);
    return TRUE;
}

/* Waits until sock is readable (write = 0) or writable / connected
 * (write = 1). Returns 0, SB_ETIMEDOUT, or SB_EIO with *code set. A failed
 * connect shows in the exception set and counts as ready (the caller reads
 * SO_ERROR). */
static int wait_socket(SOCKET sock, int write, unsigned long long deadline_ns, DWORD *code)
{
    for (;;) {
        fd_set rd, wr, ex;
        struct timeval tv, *tvp = NULL;
        int ms = remaining_ms(deadline_ns), rc;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        FD_ZERO(&ex);
        if (write) {
            FD_SET(sock, &wr);
            FD_SET(sock, &ex);
        } else {
            FD_SET(sock, &rd);
        }
        if (ms >= 0) {
            tv.tv_sec = ms / 1000;
            tv.tv_usec = (ms % 1000) * 1000;
            tvp = &tv;
        }
        rc = select(0, &rd, &wr, &ex, tvp);
        if (rc > 0)
            return 0;
        if (rc == 0) {
            /* select may return a little early; only the clock decides. */
            if (remaining_ms(deadline_ns) == 0)
                return SB_ETIMEDOUT;
            continue;
        }
        *code = (DWORD)WSAGetLastError();
        if (*code != WSAEINTR)
            return SB_EIO;
    }
}

static int tcp_read(win_transport *wt, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                    sb_error *err)
{
    unsigned long long deadline = deadline_after(timeout_ms);
    int len = cap > INT_MAX ? INT_MAX : (int)cap;
    char text[300];

    for (;;) {
        DWORD code = 0;
        int n = recv(wt->sock, buf, len, 0), rc;
        if (n > 0) {
            *out_n = (size_t)n;
            return 0;
        }
        if (n == 0)
            return sb_error_set(err, SB_ECLOSED, 0, "%s: connection closed by the broker",
                                wt->name);
        code = (DWORD)WSAGetLastError();
        if (code == WSAEINTR)
            continue;
        if (code != WSAEWOULDBLOCK)
            return sb_error_set(err, closed_or_io(code), (int)code, "read from %s: %s", wt->name,
                                win_text(code, text, sizeof(text)));
        rc = wait_socket(wt->sock, 0, deadline, &code);
        if (rc == SB_ETIMEDOUT)
            return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: no reply within %d ms", wt->name,
                                timeout_ms);
        if (rc != 0)
            return sb_error_set(err, SB_EIO, (int)code, "select %s: %s", wt->name,
                                win_text(code, text, sizeof(text)));
    }
}

static int tcp_write(win_transport *wt, const void *buf, size_t len, int timeout_ms, sb_error *err)
{
    const char *p = buf;
    unsigned long long deadline = deadline_after(timeout_ms);
    char text[300];

    while (len > 0) {
        DWORD code = 0;
        int chunk = len > (size_t)(1 << 30) ? (1 << 30) : (int)len, rc;
        int n = send(wt->sock, p, chunk, 0);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        code = (DWORD)WSAGetLastError();
        if (code == WSAEINTR)
            continue;
        if (code != WSAEWOULDBLOCK)
            return sb_error_set(err, closed_or_io(code), (int)code, "write to %s: %s", wt->name,
                                win_text(code, text, sizeof(text)));
        rc = wait_socket(wt->sock, 1, deadline, &code);
        if (rc == SB_ETIMEDOUT)
            return sb_error_set(err, SB_ETIMEDOUT, 0,
                                "%s: the broker did not read our request within %d ms", wt->name,
                                timeout_ms);
        if (rc != 0)
            return sb_error_set(err, SB_EIO, (int)code, "select %s: %s", wt->name,
                                win_text(code, text, sizeof(text)));
    }
    return 0;
}

/* Non-blocking connect with a deadline. Returns 0 or a Winsock error. */
static DWORD connect_addr(SOCKET sock, const ADDRINFOW *ai, unsigned long long deadline)
{
    u_long on = 1;
    int so_err = 0, len = sizeof(so_err), rc;
    DWORD code = 0;

    if (ioctlsocket(sock, FIONBIO, &on) != 0)
        return (DWORD)WSAGetLastError();
    if (connect(sock, ai->ai_addr, (int)ai->ai_addrlen) == 0)
        return 0;
    code = (DWORD)WSAGetLastError();
    if (code != WSAEWOULDBLOCK && code != WSAEINPROGRESS)
        return code;
    rc = wait_socket(sock, 1, deadline, &code);
    if (rc == SB_ETIMEDOUT)
        return WSAETIMEDOUT;
    if (rc != 0)
        return code;
    if (getsockopt(sock, SOL_SOCKET, SO_ERROR, (char *)&so_err, &len) != 0)
        return (DWORD)WSAGetLastError();
    return (DWORD)so_err;
}

static int connect_tcp(win_transport *wt, const sb_endpoint *ep, int timeout_ms, sb_error *err)
{
    ADDRINFOW hints, *res = NULL, *ai;
    wchar_t port[16], *host;
    unsigned long long deadline = deadline_after(timeout_ms);
    DWORD last = 0;
    char text[300];
    int rc;

    InitOnceExecuteOnce(&wsa_once, wsa_init, NULL, NULL);
    if (wsa_status != 0)
        return sb_error_set(err, SB_EIO, wsa_status, "cannot connect to %s: WSAStartup: %s",
                            ep->display, win_text((DWORD)wsa_status, text, sizeof(text)));
    host = sb_utf8_to_wide(ep->host);
    if (host == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "cannot connect to %s: host name is not UTF-8",
                            ep->display);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV;
    _snwprintf(port, sizeof(port) / sizeof(port[0]), L"%d", ep->port);
    rc = GetAddrInfoW(host, port, &hints, &res);
    sb_free(host);
    if (rc != 0)
        return sb_error_set(err, SB_ENOTFOUND, rc, "cannot connect to %s: cannot resolve %s: %s",
                            ep->display, ep->host, win_text((DWORD)rc, text, sizeof(text)));
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        BOOL one = TRUE;
        /* Not inherited: a child of a program using the client must not
         * keep the broker connection open. */
        SOCKET sock = WSASocketW(ai->ai_family, ai->ai_socktype, ai->ai_protocol, NULL, 0,
                                 WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
        if (sock == INVALID_SOCKET) {
            last = (DWORD)WSAGetLastError();
            continue;
        }
        last = connect_addr(sock, ai, deadline);
        if (last == 0) {
            (void)setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof(one));
            wt->sock = sock;
            FreeAddrInfoW(res);
            return 0;
        }
        closesocket(sock);
    }
    FreeAddrInfoW(res);
    return sb_error_set(err, sb_error_from_win32(last), (int)last, "cannot connect to %s: %s",
                        ep->display, win_text(last, text, sizeof(text)));
}

/* ---- named pipes ---- */

/* Waits for the overlapped operation on wt->pipe until deadline; cancels it
 * when the deadline passes. Returns 1 with *n if it completed (even late,
 * racing the cancel: those bytes were transferred and must be counted), 0
 * on timeout, -1 with *code on failure. */
static int pipe_finish(win_transport *wt, OVERLAPPED *ov, unsigned long long deadline, DWORD *n,
                       DWORD *code)
{
    int ms = remaining_ms(deadline);
    DWORD w = WaitForSingleObject(wt->event, ms < 0 ? INFINITE : (DWORD)ms);
    if (w != WAIT_OBJECT_0)
        CancelIoEx(wt->pipe, ov);
    /* After a cancel this waits for the operation to end either way. */
    if (GetOverlappedResult(wt->pipe, ov, n, TRUE))
        return 1;
    *code = GetLastError();
    if (*code == ERROR_MORE_DATA) /* message mode: the rest comes next */
        return 1;
    return *code == ERROR_OPERATION_ABORTED ? 0 : -1;
}

static int pipe_read(win_transport *wt, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                     sb_error *err)
{
    unsigned long long deadline = deadline_after(timeout_ms);
    DWORD len = cap > 0x7fffffff ? 0x7fffffff : (DWORD)cap, n = 0, code = 0;
    OVERLAPPED ov;
    char text[300];
    int done;

    for (;;) {
        memset(&ov, 0, sizeof(ov));
        ov.hEvent = wt->event;
        ResetEvent(wt->event);
        if (ReadFile(wt->pipe, buf, len, NULL, &ov) ||
            (code = GetLastError()) == ERROR_IO_PENDING || code == ERROR_MORE_DATA)
            /* ERROR_MORE_DATA: a message-mode pipe's message continues in
             * the next read; the bytes so far are good. */
            done = pipe_finish(wt, &ov, deadline, &n, &code);
        else
            done = -1;
        if (done == 1 && n > 0) {
            *out_n = n;
            return 0;
        }
        if (done == 0)
            return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: no reply within %d ms", wt->name,
                                timeout_ms);
        if (done == 1) /* a zero-byte message: nothing to return, read on */
            continue;
        if (sb_error_from_win32(code) == SB_ECLOSED)
            return sb_error_set(err, SB_ECLOSED, (int)code, "%s: connection closed by the broker",
                                wt->name);
        return sb_error_set(err, SB_EIO, (int)code, "read from %s: %s", wt->name,
                            win_text(code, text, sizeof(text)));
    }
}

static int pipe_write(win_transport *wt, const void *buf, size_t len, int timeout_ms, sb_error *err)
{
    const char *p = buf;
    unsigned long long deadline = deadline_after(timeout_ms);
    char text[300];

    while (len > 0) {
        DWORD chunk = len > (1u << 30) ? (1u << 30) : (DWORD)len, n = 0, code = 0;
        OVERLAPPED ov;
        int done;
        memset(&ov, 0, sizeof(ov));
        ov.hEvent = wt->event;
        ResetEvent(wt->event);
        if (WriteFile(wt->pipe, p, chunk, NULL, &ov) || (code = GetLastError()) == ERROR_IO_PENDING)
            done = pipe_finish(wt, &ov, deadline, &n, &code);
        else
            done = -1;
        if (done == 1 && (n > 0 || remaining_ms(deadline) != 0)) {
            p += n;
            len -= n;
            continue;
        }
        if (done >= 0) {
            /* A cancelled write may have moved some bytes: the stream's
             * framing is unknown now, as after a POSIX send timeout. */
            return sb_error_set(err, SB_ETIMEDOUT, 0,
                                "%s: the broker did not read our request within %d ms", wt->name,
                                timeout_ms);
        }
        return sb_error_set(err, closed_or_io(code), (int)code, "write to %s: %s", wt->name,
                            win_text(code, text, sizeof(text)));
    }
    return 0;
}

static int connect_pipe(win_transport *wt, const sb_endpoint *ep, int timeout_ms, sb_error *err)
{
    unsigned long long deadline = deadline_after(timeout_ms);
    wchar_t *wname = sb_utf8_to_wide(ep->path);
    char text[300];
    DWORD code;

    if (wname == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "cannot connect to %s: name is not UTF-8",
                            ep->display);
    for (;;) {
        int ms;
        /* SECURITY_IDENTIFICATION: the broker may learn who we are but not
         * act as us. */
        HANDLE h = CreateFileW(
            wname, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, NULL);
        if (h != INVALID_HANDLE_VALUE) {
            wt->pipe = h;
            break;
        }
        code = GetLastError();
        ms = remaining_ms(deadline);
        if (code != ERROR_PIPE_BUSY || ms == 0)
            goto fail;
        /* Every instance is busy: wait for one to free up (this returns at
         * once if the pipe disappeared; CreateFileW then says so). WaitNamedPipe
         * takes 0 as "the server's default", so never pass 0. */
        if (!WaitNamedPipeW(wname, ms < 0 ? NMPWAIT_WAIT_FOREVER : (DWORD)ms)) {
            code = GetLastError();
            if (code == ERROR_SEM_TIMEOUT) {
                code = ERROR_PIPE_BUSY;
                goto fail;
            }
            if (code != ERROR_FILE_NOT_FOUND && code != ERROR_PIPE_BUSY)
                goto fail;
        }
    }
    sb_free(wname);
    wt->event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (wt->event == NULL) {
        code = GetLastError();
        return sb_error_set(err, SB_EIO, (int)code, "cannot connect to %s: CreateEvent: %s",
                            ep->display, win_text(code, text, sizeof(text)));
    }
    return 0;
fail:
    sb_free(wname);
    if (code == ERROR_PIPE_BUSY)
        return sb_error_set(err, SB_EBUSY, (int)code,
                            "cannot connect to %s: every pipe instance stayed busy for %d ms",
                            ep->display, timeout_ms);
    return sb_error_set(err, sb_error_from_win32(code), (int)code, "cannot connect to %s: %s",
                        ep->display, win_text(code, text, sizeof(text)));
}

/* ---- the interface ---- */

static int win_read(sb_transport *t, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                    sb_error *err)
{
    win_transport *wt = (win_transport *)t;
    return wt->kind == WIN_TCP ? tcp_read(wt, buf, cap, out_n, timeout_ms, err)
                               : pipe_read(wt, buf, cap, out_n, timeout_ms, err);
}

static int win_write(sb_transport *t, const void *buf, size_t len, int timeout_ms, sb_error *err)
{
    win_transport *wt = (win_transport *)t;
    return wt->kind == WIN_TCP ? tcp_write(wt, buf, len, timeout_ms, err)
                               : pipe_write(wt, buf, len, timeout_ms, err);
}

static void win_close(sb_transport *t)
{
    win_transport *wt = (win_transport *)t;
    if (wt == NULL)
        return;
    if (wt->sock != INVALID_SOCKET)
        closesocket(wt->sock);
    if (wt->pipe != INVALID_HANDLE_VALUE)
        CloseHandle(wt->pipe);
    if (wt->event != NULL)
        CloseHandle(wt->event);
    sb_free(wt);
}

static const sb_transport_ops win_ops = {win_read, win_write, win_close};

int sb_client__transport_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms,
                              sb_error *err)
{
    win_transport *wt;
    int rc;

    *out = NULL;
    if (ep->kind == SB_ENDPOINT_RPC)
        return sb_client__rpc_open(out, ep, timeout_ms, err);
    if (ep->kind == SB_ENDPOINT_UNIX)
        return sb_error_set(err, SB_EINVAL, 0,
                            "cannot connect to %s: Unix domain sockets are not supported on "
                            "Windows (use \\\\.\\pipe\\NAME or tcp:HOST:PORT)",
                            ep->display);
    wt = sb_calloc(1, sizeof(*wt));
    if (wt == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory", ep->display);
    wt->base.ops = &win_ops;
    wt->kind = ep->kind == SB_ENDPOINT_TCP ? WIN_TCP : WIN_PIPE;
    wt->sock = INVALID_SOCKET;
    wt->pipe = INVALID_HANDLE_VALUE;
    snprintf(wt->name, sizeof(wt->name), "%s", ep->display);
    rc = wt->kind == WIN_TCP ? connect_tcp(wt, ep, timeout_ms, err)
                             : connect_pipe(wt, ep, timeout_ms, err);
    if (rc != 0) {
        win_close(&wt->base);
        return rc;
    }
    *out = &wt->base;
    return 0;
}
