/*
 * A "PLC simulator": a legacy DDE server written as old Windows programs
 * are (ANSI DDEML, CF_TEXT, a timer and a message loop), for the DDE
 * adapter's tests and benchmark.
 *
 *   plc_sim SERVICE [--topic T] [--interval MS] [--refuse ITEM]
 *           [--busy ITEM:N] [--quiet] [--flood N]
 *
 * Topic T (default Line1) has the items Temp ("21.5"), Status (CF_TEXT in
 * the ANSI code page: "Grüße aus Köln", as code page 1252 bytes), Counter,
 * incremented every MS milliseconds (default 50; 0: never) and
 * advised to hot links, and Speed ("1450"). A poke stores the value (any item name; new items
 * appear), advises it at once (inside the callback, as old servers do) and
 * prints "POKE <item> <hex of the bytes>"; --refuse answers DDE_FNOTPROCESSED
 * to pokes of ITEM, --busy answers DDE_FBUSY to the first N pokes of ITEM.
 * An execute prints "EXEC <hex>". "READY" is printed once the service is
 * registered; every line is flushed. --quiet prints only READY (benchmarks).
 * --flood N (benchmarks): once a client hot-links Counter, updates and
 * advises it N times as fast as it can. It runs until killed.
 */
#include <windows.h>

#include <ddeml.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ITEMS 64
#define MAX_VALUE 65536

typedef struct item {
    char name[256];
    HSZ hsz;
    char *value;
    DWORD len;
} item;

static DWORD inst;
static HSZ hsz_service, hsz_topic;
static item items[MAX_ITEMS];
static int nitems;
static char refuse_item[256];
static char busy_item[256];
static int busy_left;
static int quiet;
static unsigned long counter;
static long flood_left;
static int flood_linked;

static void print_hex(const char *tag, const char *name, const void *data, DWORD len)
{
    const unsigned char *p = data;
    if (quiet)
        return;
    printf("%s%s%s ", tag, name != NULL ? " " : "", name != NULL ? name : "");
    for (DWORD i = 0; i < len; i++)
        printf("%02x", p[i]);
    printf("\n");
    fflush(stdout);
}

static item *find(HSZ hsz)
{
    for (int i = 0; i < nitems; i++)
        if (DdeCmpStringHandles(items[i].hsz, hsz) == 0)
            return &items[i];
    return NULL;
}

static item *add(const char *name)
{
    item *it;
    if (nitems == MAX_ITEMS)
        return NULL;
    it = &items[nitems++];
    lstrcpynA(it->name, name, sizeof it->name);
    it->hsz = DdeCreateStringHandleA(inst, name, CP_WINANSI);
    return it;
}

static void set(item *it, const void *data, DWORD len)
{
    free(it->value);
    it->value = malloc(len + 1);
    memcpy(it->value, data, len);
    it->value[len] = 0;
    it->len = len;
}

static void set_text(item *it, const char *text)
{
    set(it, text, (DWORD)strlen(text) + 1);
}

static HDDEDATA CALLBACK callback(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                  HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2)
{
    item *it;
    (void)conv;
    (void)d1;
    (void)d2;
    switch (type) {
    case XTYP_CONNECT:
        return (HDDEDATA)(UINT_PTR)(DdeCmpStringHandles(hsz1, hsz_topic) == 0);
    case XTYP_ADVSTART:
        it = find(hsz2);
        if (it == &items[2])
            flood_linked = 1;
        return (HDDEDATA)(UINT_PTR)(fmt == CF_TEXT && it != NULL);
    case XTYP_REQUEST:
    case XTYP_ADVREQ:
        it = find(hsz2);
        if (it == NULL || fmt != CF_TEXT)
            return 0;
        return DdeCreateDataHandle(inst, (LPBYTE)it->value, it->len, 0, hsz2, CF_TEXT, 0);
    case XTYP_POKE: {
        char name[256], buf[MAX_VALUE];
        DWORD len;
        DdeQueryStringA(inst, hsz2, name, sizeof name, CP_WINANSI);
        if (lstrcmpiA(name, refuse_item) == 0)
            return (HDDEDATA)DDE_FNOTPROCESSED;
        if (busy_left > 0 && lstrcmpiA(name, busy_item) == 0) {
            busy_left--;
            return (HDDEDATA)DDE_FBUSY;
        }
        len = DdeGetData(data, (LPBYTE)buf, sizeof buf, 0);
        it = find(hsz2);
        if (it == NULL)
            it = add(name);
        if (it == NULL)
            return (HDDEDATA)DDE_FNOTPROCESSED;
        set(it, buf, len);
        /* the text up to its NUL, as the poke carried it */
        print_hex("POKE", it->name, buf, (DWORD)strnlen(buf, len));
        DdePostAdvise(inst, hsz_topic, it->hsz);
        return (HDDEDATA)DDE_FACK;
    }
    case XTYP_EXECUTE: {
        char buf[MAX_VALUE];
        DWORD len = DdeGetData(data, (LPBYTE)buf, sizeof buf, 0);
        print_hex("EXEC", NULL, buf, (DWORD)strnlen(buf, len));
        return (HDDEDATA)DDE_FACK;
    }
    default:
        return 0;
    }
}

static void CALLBACK tick(HWND hwnd, UINT msg, UINT_PTR id, DWORD time)
{
    char text[32];
    item *it = &items[2];
    (void)hwnd;
    (void)msg;
    (void)id;
    (void)time;
    snprintf(text, sizeof text, "%lu", ++counter);
    set_text(it, text);
    DdePostAdvise(inst, hsz_topic, it->hsz);
}

int main(int argc, char **argv)
{
    const char *service, *topic = "Line1";
    int interval = 50;
    MSG msg;

    if (argc < 2) {
        fprintf(stderr, "usage: plc_sim SERVICE [--topic T] [--interval MS] [--refuse ITEM] "
                        "[--busy ITEM:N] [--quiet]\n");
        return 2;
    }
    service = argv[1];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
            topic = argv[++i];
        } else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            interval = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--refuse") == 0 && i + 1 < argc) {
            lstrcpynA(refuse_item, argv[++i], sizeof refuse_item);
        } else if (strcmp(argv[i], "--busy") == 0 && i + 1 < argc) {
            char *colon;
            lstrcpynA(busy_item, argv[++i], sizeof busy_item);
            colon = strchr(busy_item, ':');
            if (colon != NULL) {
                *colon = 0;
                busy_left = atoi(colon + 1);
            }
        } else if (strcmp(argv[i], "--quiet") == 0) {
            quiet = 1;
        } else if (strcmp(argv[i], "--flood") == 0 && i + 1 < argc) {
            flood_left = atol(argv[++i]);
        } else {
            fprintf(stderr, "plc_sim: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (DdeInitializeA(&inst, callback,
                       APPCLASS_STANDARD | CBF_SKIP_REGISTRATIONS | CBF_SKIP_UNREGISTRATIONS,
                       0) != DMLERR_NO_ERROR) {
        fprintf(stderr, "plc_sim: DdeInitialize failed\n");
        return 1;
    }
    hsz_service = DdeCreateStringHandleA(inst, service, CP_WINANSI);
    hsz_topic = DdeCreateStringHandleA(inst, topic, CP_WINANSI);
    set_text(add("Temp"), "21.5");
    set_text(add("Status"), "Gr\xfc\xdf"
                            "e aus K\xf6ln"); /* code page 1252 */
    set_text(add("Counter"), "0");
    set_text(add("Speed"), "1450");
    if (!DdeNameService(inst, hsz_service, 0, DNS_REGISTER)) {
        fprintf(stderr, "plc_sim: DdeNameService failed\n");
        return 1;
    }
    if (interval > 0)
        SetTimer(NULL, 0, (UINT)interval, tick);
    printf("READY\n");
    fflush(stdout);
    for (;;) {
        if (flood_left > 0 && flood_linked) {
            /* benchmark: one update per turn, the queue served between */
            while (PeekMessageA(&msg, NULL, 0, 0, PM_REMOVE)) {
                if (msg.message == WM_QUIT)
                    goto out;
                DispatchMessageA(&msg);
            }
            tick(NULL, 0, 0, 0);
            flood_left--;
            continue;
        }
        if (GetMessageA(&msg, NULL, 0, 0) <= 0)
            break;
        TranslateMessage(&msg);
        DispatchMessageA(&msg);
    }
out:
    DdeUninitialize(inst);
    return 0;
}
