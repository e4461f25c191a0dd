/*
 * A legacy DDE client written as old Windows programs are (ANSI DDEML,
 * synchronous transactions, a message loop for hot links), for the DDE
 * adapter's tests and benchmark. One command per run:
 *
 *   legacy_client SERVICE TOPIC request ITEM [unicode|fmt:NAME]
 *       prints "DATA <hex>" or "NODATA <DMLERR>" (fmt:NAME: the registered
 *       clipboard format NAME, its data in full)
 *   legacy_client SERVICE TOPIC poke ITEM VALUE [unicode|hex|fmt:NAME]
 *       prints "ACK", "NACK <status word>" or "FAIL <DMLERR>" (VALUE in hex
 *       but for plain CF_TEXT)
 *   legacy_client SERVICE TOPIC pokes ITEM COUNT
 *       pokes the values 1..COUNT in order; each until it is acknowledged
 *       (reconnecting when the conversation fails), printing "ACK n",
 *       "NACK n <status>" or "FAIL n <DMLERR>" per attempt; "DONE" at the
 *       end
 *   legacy_client SERVICE TOPIC advise ITEM COUNT [unicode]
 *       hot-links ITEM and prints "DATA <hex>" per update, exits after
 *       COUNT updates ("LINKED" once the link is made)
 *   legacy_client SERVICE TOPIC advise-vanish ITEM
 *       hot-links ITEM, prints "LINKED" and exits without ending the
 *       conversation (a client that disconnects mid-advise)
 *   legacy_client SERVICE TOPIC execute COMMAND
 *       prints "ACK", "NACK <status>" or "FAIL <DMLERR>"
 *   legacy_client SERVICE TOPIC connect
 *       prints "CONNECTED" or "NOCONV <DMLERR>"
 *   legacy_client SERVICE TOPIC bench-poke ITEM COUNT
 *   legacy_client SERVICE TOPIC bench-advise ITEM COUNT
 *       benchmarks: COUNT synchronous pokes, or COUNT hot-link updates,
 *       printed as "RATE <per second> <ms>"
 *
 * Wine's DDE server (also the broker's under Wine) sends a stray positive
 * WM_DDE_ACK after a request's data, which Wine's client would take as the
 * answer of its next transaction: after a request this program takes it
 * out of the queue (it does no harm on Windows, where none comes).
 */
#include <windows.h>

#include <ddeml.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIMEOUT_MS 10000
/* pokes: a broker killed mid-transaction never answers; give up sooner */
#define POKES_TIMEOUT_MS 3000

static DWORD inst;
static HSZ hsz_item;
static long advise_left = -1;
static long advise_seen;
static int advise_print = 1;

static void print_hex(const char *tag, const void *data, DWORD len)
{
    const unsigned char *p = data;
    printf("%s ", tag);
    for (DWORD i = 0; i < len; i++)
        printf("%02x", p[i]);
    printf("\n");
    fflush(stdout);
}

/* Text data ends at its NUL (DDE data may be longer). */
static DWORD text_len(const unsigned char *p, DWORD len, UINT fmt)
{
    DWORD n = 0;
    if (fmt >= 0xC000)
        return len;
    if (fmt == CF_UNICODETEXT) {
        while (n + 1 < len && (p[n] != 0 || p[n + 1] != 0))
            n += 2;
        return n;
    }
    while (n < len && p[n] != 0)
        n++;
    return n;
}

static HDDEDATA CALLBACK callback(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                  HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2)
{
    (void)conv;
    (void)hsz1;
    (void)d1;
    (void)d2;
    if (type == XTYP_ADVDATA && data != 0 && DdeCmpStringHandles(hsz2, hsz_item) == 0) {
        unsigned char buf[65536];
        DWORD len = DdeGetData(data, buf, sizeof buf, 0);
        advise_seen++;
        if (advise_print)
            print_hex("DATA", buf, text_len(buf, len, fmt));
        if (advise_left > 0)
            advise_left--;
        return (HDDEDATA)DDE_FACK;
    }
    if (type == XTYP_DISCONNECT && advise_print) {
        printf("DISCONNECT\n");
        fflush(stdout);
    }
    return 0;
}

/* Takes a Wine server's stray acknowledgement after a request (see above). */
static void drain_stray_ack(HCONV conv)
{
    CONVINFO ci;
    DWORD deadline = GetTickCount() + 200;
    memset(&ci, 0, sizeof ci);
    ci.cb = sizeof ci;
    if (!DdeQueryConvInfo(conv, QID_SYNC, &ci))
        return;
    for (;;) {
        MSG m;
        DWORD now = GetTickCount();
        if (PeekMessageA(&m, ci.hwnd, WM_DDE_ACK, WM_DDE_ACK, PM_REMOVE)) {
            UINT_PTR lo, hi;
            UnpackDDElParam(WM_DDE_ACK, m.lParam, &lo, &hi);
            FreeDDElParam(WM_DDE_ACK, m.lParam);
            if (hi != 0)
                GlobalDeleteAtom((ATOM)hi);
            return;
        }
        if ((LONG)(deadline - now) <= 0)
            return;
        MsgWaitForMultipleObjects(0, NULL, FALSE, deadline - now, QS_POSTMESSAGE);
    }
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

/* The format an argument names: unicode, fmt:NAME (registered), else CF_TEXT. */
static UINT format_arg(const char *arg)
{
    if (arg == NULL)
        return CF_TEXT;
    if (strcmp(arg, "unicode") == 0)
        return CF_UNICODETEXT;
    if (strncmp(arg, "fmt:", 4) == 0)
        return RegisterClipboardFormatA(arg + 4);
    return CF_TEXT;
}

/* Pumps messages until the advise count is reached or ms pass. */
static void pump(DWORD ms)
{
    DWORD deadline = GetTickCount() + ms;
    for (;;) {
        MSG m;
        DWORD now = GetTickCount();
        while (PeekMessageA(&m, NULL, 0, 0, PM_REMOVE)) {
            TranslateMessage(&m);
            DispatchMessageA(&m);
        }
        if (advise_left == 0 || (LONG)(deadline - now) <= 0)
            return;
        MsgWaitForMultipleObjects(0, NULL, FALSE, deadline - now, QS_ALLINPUT);
    }
}

static HCONV connect_to(HSZ service, HSZ topic)
{
    return DdeConnect(inst, service, topic, NULL);
}

int main(int argc, char **argv)
{
    HSZ service, topic;
    HCONV conv;
    const char *cmd;
    DWORD result = 0;
    HDDEDATA h;

    if (argc < 4) {
        fprintf(stderr, "usage: legacy_client SERVICE TOPIC COMMAND ...\n");
        return 2;
    }
    cmd = argv[3];
    if (DdeInitializeA(&inst, callback, APPCMD_CLIENTONLY, 0) != DMLERR_NO_ERROR) {
        fprintf(stderr, "legacy_client: DdeInitialize failed\n");
        return 1;
    }
    service = DdeCreateStringHandleA(inst, argv[1], CP_WINANSI);
    topic = DdeCreateStringHandleA(inst, argv[2], CP_WINANSI);
    if (argc > 4)
        hsz_item = DdeCreateStringHandleA(inst, argv[4], CP_WINANSI);

    if (strcmp(cmd, "pokes") == 0 && argc > 5) {
        long count = atol(argv[5]);
        conv = 0;
        for (long i = 1; i <= count;) {
            char value[32];
            if (conv == 0 && (conv = connect_to(service, topic)) == 0) {
                Sleep(20); /* the broker is restarting */
                continue;
            }
            snprintf(value, sizeof value, "%ld", i);
            result = 0;
            h = DdeClientTransaction((LPBYTE)value, (DWORD)strlen(value) + 1, conv, hsz_item,
                                     CF_TEXT, XTYP_POKE, POKES_TIMEOUT_MS, &result);
            if (h != 0 && (result & DDE_FACK)) {
                printf("ACK %ld\n", i);
                i++;
            } else if (h != 0) {
                printf("NACK %ld %04lx\n", i, result & 0xffff);
            } else {
                printf("FAIL %ld %04x\n", i, DdeGetLastError(inst));
                DdeDisconnect(conv);
                conv = 0;
            }
            fflush(stdout);
        }
        printf("DONE\n");
        fflush(stdout);
        return 0;
    }

    conv = connect_to(service, topic);
    if (strcmp(cmd, "connect") == 0) {
        if (conv != 0)
            printf("CONNECTED\n");
        else
            printf("NOCONV %04x\n", DdeGetLastError(inst));
        fflush(stdout);
        return 0;
    }
    if (conv == 0) {
        printf("NOCONV %04x\n", DdeGetLastError(inst));
        fflush(stdout);
        return 1;
    }

    if (strcmp(cmd, "request") == 0 && argc > 4) {
        UINT fmt = format_arg(argc > 5 ? argv[5] : NULL);
        h = DdeClientTransaction(NULL, 0, conv, hsz_item, fmt, XTYP_REQUEST, TIMEOUT_MS, NULL);
        if (h != 0) {
            unsigned char buf[65536];
            DWORD len = DdeGetData(h, buf, sizeof buf, 0);
            drain_stray_ack(conv);
            print_hex("DATA", buf, text_len(buf, len, fmt));
        } else {
            printf("NODATA %04x\n", DdeGetLastError(inst));
        }
    } else if (strcmp(cmd, "poke") == 0 && argc > 5) {
        unsigned char buf[65536];
        DWORD len;
        UINT fmt = CF_TEXT;
        if (argc > 6) {
            fmt = strcmp(argv[6], "hex") == 0 ? CF_TEXT : format_arg(argv[6]);
            len = (DWORD)from_hex(buf, argv[5]);
        } else {
            len = (DWORD)strlen(argv[5]) + 1;
            memcpy(buf, argv[5], len);
        }
        h = DdeClientTransaction(buf, len, conv, hsz_item, fmt, XTYP_POKE, TIMEOUT_MS, &result);
        if (h != 0 && (result & DDE_FACK))
            printf("ACK\n");
        else if (h != 0)
            printf("NACK %04lx\n", result & 0xffff);
        else
            printf("FAIL %04x\n", DdeGetLastError(inst));
    } else if (strcmp(cmd, "execute") == 0 && argc > 4) {
        h = DdeClientTransaction((LPBYTE)argv[4], (DWORD)strlen(argv[4]) + 1, conv, 0, 0,
                                 XTYP_EXECUTE, TIMEOUT_MS, &result);
        if (h != 0 && (result & DDE_FACK))
            printf("ACK\n");
        else if (h != 0)
            printf("NACK %04lx\n", result & 0xffff);
        else
            printf("FAIL %04x\n", DdeGetLastError(inst));
    } else if ((strcmp(cmd, "advise") == 0 || strcmp(cmd, "advise-vanish") == 0) && argc > 4) {
        UINT fmt = argc > 6 && strcmp(argv[6], "unicode") == 0 ? CF_UNICODETEXT : CF_TEXT;
        advise_left = argc > 5 ? atol(argv[5]) : 1;
        if (DdeClientTransaction(NULL, 0, conv, hsz_item, fmt, XTYP_ADVSTART, TIMEOUT_MS, NULL) ==
            0) {
            printf("NOLINK %04x\n", DdeGetLastError(inst));
            fflush(stdout);
            return 1;
        }
        printf("LINKED\n");
        fflush(stdout);
        if (strcmp(cmd, "advise-vanish") == 0)
            ExitProcess(0); /* no XTYP_ADVSTOP, no terminate */
        pump(60000);
        printf(advise_left == 0 ? "END\n" : "TIMEOUT\n");
    } else if (strcmp(cmd, "bench-poke") == 0 && argc > 5) {
        long count = atol(argv[5]), acked = 0;
        DWORD t0 = GetTickCount(), ms;
        for (long i = 0; i < count; i++) {
            char value[32];
            snprintf(value, sizeof value, "%ld", i);
            result = 0;
            h = DdeClientTransaction((LPBYTE)value, (DWORD)strlen(value) + 1, conv, hsz_item,
                                     CF_TEXT, XTYP_POKE, TIMEOUT_MS, &result);
            acked += h != 0 && (result & DDE_FACK);
        }
        ms = GetTickCount() - t0;
        printf("RATE %.0f %lu %ld\n", ms > 0 ? acked * 1000.0 / ms : 0.0, (unsigned long)ms, acked);
    } else if (strcmp(cmd, "bench-advise") == 0 && argc > 5) {
        DWORD t0, ms;
        long count = atol(argv[5]);
        advise_print = 0;
        if (DdeClientTransaction(NULL, 0, conv, hsz_item, CF_TEXT, XTYP_ADVSTART, TIMEOUT_MS,
                                 NULL) == 0) {
            printf("NOLINK %04x\n", DdeGetLastError(inst));
            return 1;
        }
        printf("LINKED\n");
        fflush(stdout);
        /* the clock starts at the first update */
        advise_left = 1;
        pump(60000);
        advise_left = count;
        t0 = GetTickCount();
        pump(120000);
        ms = GetTickCount() - t0;
        printf("RATE %.0f %lu %ld\n", ms > 0 ? (count - advise_left) * 1000.0 / ms : 0.0,
               (unsigned long)ms, count - advise_left);
    } else {
        fprintf(stderr, "legacy_client: unknown command %s\n", cmd);
        return 2;
    }
    fflush(stdout);
    DdeDisconnect(conv);
    DdeUninitialize(inst);
    return 0;
}
