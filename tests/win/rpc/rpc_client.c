/*
 * rpc_client: a program that talks to Switchboard over its MS-RPC interface,
 * as other programs would: built from switchboard.idl through the sbrpc
 * client library (and, for the bad-input cases, the raw stubs). The tests
 * run it as a separate process and read what it prints, one line per
 * event, flushed at once:
 *
 *   rpc_client [-a] ENDPOINT whoami                  user=NAME flags=N
 *   rpc_client [-a] ENDPOINT pub TOPIC PAYLOAD [N [TTL_MS]]
 *                                                    ok I ID QUEUES | err I CODE MESSAGE
 *   rpc_client [-a] ENDPOINT pull SUB FILTER N [ack|nack|hold] [WINDOW]
 *                                                    msg ID ATTEMPT TOPIC PAYLOAD ... done
 *   rpc_client [-a] ENDPOINT stats                   the JSON
 *   rpc_client [-a] ENDPOINT dlq list|redrive|purge [SUB]
 *   rpc_client [-a] ENDPOINT bad                     case NAME CODE ...
 *   rpc_client [-a] ENDPOINT stale SUB FILTER        subscribed, pull CODE ...
 *   rpc_client [-a] ENDPOINT swap SUB FILTER         case NAME CODE ...
 *   rpc_client [-a] ENDPOINT flood SUB THREADS WAIT_MS
 *                                                    flood busy=B empty=E slow=S failed=F
 *
 * -a: over TCP, do not authenticate. pub publishes N messages (payload
 * "PAYLOAD I" when N > 1) and stops at the first transport failure. pull
 * (FILTER "-": none, an existing subscription) takes N deliveries and acks
 * (or nacks) each batch; hold prints "holding" after N and waits to be
 * killed with its deliveries leased. flood subscribes THREADS times to SUB
 * and pulls on each at once, waiting WAIT_MS. swap passes a subscription
 * handle where a session is expected and the reverse (raw stubs: to the
 * runtime both are context handles), then uses both as they should be.
 *
 * Exit status: 0 success, 1 the broker refused something, 2 usage, 3 a
 * transport failure (the broker is not there, the call was cut).
 */
#include "service/error.h"
#include "tools/rpc/sbrpc.h"

#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#include <shellapi.h>

#include "switchboard_h.h"

long sb_rpc__guarded(long (*fn)(void *), void *arg);

static sb_rpc_options opts;
static const char *endpoint;

static int transport(int code)
{
    return code == SB_ECONNREFUSED || code == SB_ECLOSED || code == SB_EIO || code == SB_ETIMEDOUT;
}

static int fail(const char *what, const sb_error *err)
{
    printf("err %s %d %s %s\n", what, err->code, sb_errname(err->code), err->msg);
    fflush(stdout);
    return transport(err->code) ? 3 : 1;
}

static sb_rpc *bind_or_exit(void)
{
    sb_rpc *c;
    sb_error err;
    if (sb_rpc_connect(&c, endpoint, &opts, &err) != 0)
        exit(fail("connect", &err));
    return c;
}

static int cmd_whoami(void)
{
    sb_rpc *c = bind_or_exit();
    char *user = NULL;
    int flags = 0, rc;
    sb_error err;
    rc = sb_rpc_whoami(c, &user, &flags, &err);
    if (rc != 0)
        rc = fail("whoami", &err);
    else
        printf("user=%s flags=%d\n", user != NULL ? user : "", flags);
    free(user);
    sb_rpc_free(c);
    return rc;
}

static int cmd_pub(int argc, char **argv)
{
    sb_rpc *c = bind_or_exit();
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 1;
    sb_rpc_header h = {"content-type", "text/plain"};
    sb_rpc_pub_opts po;
    int refused = 0;

    memset(&po, 0, sizeof po);
    po.ttl_ms = argc > 3 ? _strtoi64(argv[3], NULL, 10) : 0;

    for (long i = 1; i <= n; i++) {
        char payload[512];
        uint64_t id = 0;
        int queues = 0;
        sb_error err;
        if (n > 1)
            snprintf(payload, sizeof payload, "%s %ld", argv[1], i);
        else
            snprintf(payload, sizeof payload, "%s", argv[1]);
        if (sb_rpc_publish(c, argv[0], payload, strlen(payload), &h, 1, &po, &id, &queues, &err) ==
            0) {
            printf("ok %ld %llu %d\n", i, (unsigned long long)id, queues);
        } else {
            printf("err %ld %d %s %s\n", i, err.code, sb_errname(err.code), err.msg);
            if (transport(err.code)) {
                fflush(stdout);
                sb_rpc_free(c);
                return 3;
            }
            refused = 1;
        }
        fflush(stdout);
    }
    sb_rpc_free(c);
    return refused;
}

static int cmd_pull(int argc, char **argv)
{
    sb_rpc *c = bind_or_exit();
    const char *name = argv[0], *filter = strcmp(argv[1], "-") == 0 ? NULL : argv[1];
    long want = strtol(argv[2], NULL, 10), got = 0;
    const char *mode = argc > 3 ? argv[3] : "ack";
    sb_rpc_sub_opts so;
    sb_rpc_sub *s;
    sb_error err;
    int rc;

    memset(&so, 0, sizeof so);
    so.window = argc > 4 ? atoi(argv[4]) : 0;
    if (sb_rpc_subscribe(&s, c, name, filter, &so, NULL, &err) != 0) {
        rc = fail("subscribe", &err);
        sb_rpc_free(c);
        return rc;
    }
    printf("subscribed\n");
    fflush(stdout);
    while (got < want) {
        sb_rpc_batch *b;
        uint64_t ids[SB_RPC_MAX_BATCH];
        size_t n =
            (size_t)(want - got) < SB_RPC_MAX_BATCH ? (size_t)(want - got) : SB_RPC_MAX_BATCH;
        if (sb_rpc_pull(s, &b, n, 20000, &err) != 0) {
            rc = fail("pull", &err);
            sb_rpc_unsubscribe(s, 0, NULL);
            sb_rpc_free(c);
            return rc;
        }
        for (size_t i = 0; i < b->count; i++) {
            const sb_rpc_delivery *d = &b->items[i];
            printf("msg %llu %d %s %.*s\n", (unsigned long long)d->msg_id, d->attempt, d->topic,
                   (int)d->payload_len, (const char *)d->payload);
            ids[i] = d->msg_id;
        }
        fflush(stdout);
        got += (long)b->count;
        if (b->count > 0 && strcmp(mode, "hold") != 0) {
            rc = strcmp(mode, "nack") == 0
                     ? sb_rpc_nack(s, ids, b->count, "refused by rpc_client", NULL, &err)
                     : sb_rpc_ack(s, ids, b->count, NULL, &err);
            if (rc != 0) {
                rc = fail("ack", &err);
                sb_rpc_batch_free(b);
                sb_rpc_unsubscribe(s, 0, NULL);
                sb_rpc_free(c);
                return rc;
            }
        }
        sb_rpc_batch_free(b);
    }
    if (strcmp(mode, "hold") == 0) {
        printf("holding\n");
        fflush(stdout);
        Sleep(INFINITE); /* the test kills this process */
    }
    rc = sb_rpc_unsubscribe(s, 0, &err) != 0 ? fail("unsubscribe", &err) : 0;
    printf("done\n");
    fflush(stdout);
    sb_rpc_free(c);
    return rc;
}

static int cmd_stats(void)
{
    sb_rpc *c = bind_or_exit();
    char *json;
    sb_error err;
    int rc = sb_rpc_stats(c, &json, &err);
    if (rc != 0) {
        rc = fail("stats", &err);
    } else {
        printf("%s\n", json);
        free(json);
    }
    sb_rpc_free(c);
    return rc;
}

static int cmd_dlq(int argc, char **argv)
{
    sb_rpc *c = bind_or_exit();
    const char *sub = argc > 1 ? argv[1] : NULL;
    sb_error err;
    int rc;
    if (strcmp(argv[0], "list") == 0) {
        sb_rpc_dead_letters *d;
        rc = sb_rpc_dlq_list(c, sub, 0, 0, &d, &err);
        if (rc == 0) {
            for (size_t i = 0; i < d->count; i++)
                printf("dead %lld %s %llu %s %.*s attempts=%d reason=%s\n",
                       (long long)d->items[i].dlq_id, d->items[i].sub,
                       (unsigned long long)d->items[i].msg_id, d->items[i].topic,
                       (int)d->items[i].payload_len, (const char *)d->items[i].payload,
                       d->items[i].attempts, d->items[i].reason != NULL ? d->items[i].reason : "");
            printf("count %zu\n", d->count);
            sb_rpc_dead_letters_free(d);
        }
    } else {
        int64_t n = 0;
        rc = strcmp(argv[0], "redrive") == 0 ? sb_rpc_dlq_redrive(c, sub, &n, &err)
                                             : sb_rpc_dlq_purge(c, sub, &n, &err);
        if (rc == 0)
            printf("count %lld\n", (long long)n);
    }
    if (rc != 0)
        rc = fail("dlq", &err);
    sb_rpc_free(c);
    return rc;
}

/* ---- bad input through the raw stubs ---- */

typedef struct raw {
    SB_RPC_SESSION h;
    const char *topic;
    ULONG size, nheaders;
    const byte *payload;
    const SB_RPC_HEADER *headers;
    SB_RPC_SUB ctx;
    LONG rc;
    SB_RPC_TEXT why;
} raw;

static long raw_publish(void *p)
{
    raw *r = p;
    MIDL_uhyper id;
    LONG q;
    r->rc = SbPublish(r->h, r->topic, r->size, r->payload, r->nheaders, r->headers, NULL, &id, &q,
                      &r->why);
    return 0;
}

static long raw_open(void *p)
{
    raw *r = p;
    LONG flags;
    r->rc = SbOpen(&r->h, &flags, &r->why);
    return 0;
}

static long raw_pull(void *p)
{
    raw *r = p;
    ULONG n = 0;
    SB_RPC_DELIVERY *d = NULL;
    r->rc = SbPull(r->ctx, 1, 0, &n, &d, &r->why);
    return 0;
}

/* One bad publish: prints "case NAME CODE" (the broker's result, or the SB
 * code of the runtime's exception). */
static void bad_publish(SB_RPC_SESSION h, const char *name, const char *topic, ULONG size,
                        const byte *payload, ULONG nheaders, const SB_RPC_HEADER *headers)
{
    raw r;
    long ex;
    memset(&r, 0, sizeof r);
    r.h = h;
    r.topic = topic;
    r.size = size;
    r.payload = payload;
    r.nheaders = nheaders;
    r.headers = headers;
    ex = sb_rpc__guarded(raw_publish, &r);
    printf("case %s %d %s\n", name, ex != 0 ? sb_rpc_status_code((unsigned long)ex) : (int)r.rc,
           ex != 0 ? "exception" : (r.why.text != NULL ? r.why.text : ""));
    fflush(stdout);
}

/* A binding to the ncalrpc endpoint and a session over it, through the raw
 * stubs. 0, or the exit status (with a line saying why, for cmd). */
static int raw_session(handle_t *binding, SB_RPC_SESSION *out, const char *cmd)
{
    const char *ep = strncmp(endpoint, "rpc:", 4) == 0 ? endpoint + 4 : endpoint;
    RPC_WSTR str = NULL;
    wchar_t wep[300];
    raw r;
    long ex;

    if (strchr(ep, ':') != NULL) {
        printf("%s: ncalrpc endpoints only\n", cmd);
        return 2;
    }
    MultiByteToWideChar(CP_UTF8, 0, ep, -1, wep, 300);
    if (RpcStringBindingComposeW(NULL, (RPC_WSTR)L"ncalrpc", NULL, (RPC_WSTR)wep, NULL, &str) !=
            RPC_S_OK ||
        RpcBindingFromStringBindingW(str, binding) != RPC_S_OK) {
        printf("%s: cannot bind\n", cmd);
        return 3;
    }
    RpcStringFreeW(&str);
    memset(&r, 0, sizeof r);
    sb_rpc_binding = *binding;
    ex = sb_rpc__guarded(raw_open, &r);
    if (ex != 0 || r.rc != 0) {
        printf("%s: SbOpen: %ld %ld\n", cmd, ex, (long)r.rc);
        return 3;
    }
    *out = r.h;
    return 0;
}

static int cmd_bad(void)
{
    handle_t binding;
    SB_RPC_SESSION h;
    raw r;
    long ex;
    static byte big[1 << 16];
    SB_RPC_HEADER hdr_bad[1] = {{"key", "\xff\xfe"}};
    SB_RPC_HEADER hdr_null[1] = {{"key", NULL}};
    int rc = raw_session(&binding, &h, "bad");

    if (rc != 0)
        return rc;
    bad_publish(h, "utf8-topic", "bad/\xc3\x28", 1, (const byte *)"x", 0, NULL);
    bad_publish(h, "wildcard-topic", "a/+/b", 1, (const byte *)"x", 0, NULL);
    bad_publish(h, "empty-topic", "", 1, (const byte *)"x", 0, NULL);
    bad_publish(h, "too-big", "bad/big", sizeof big, big, 0, NULL);
    {
        byte *huge = calloc(1, (size_t)SB_RPC_MAX_PAYLOAD + 1);
        if (huge != NULL)
            bad_publish(h, "beyond-idl", "bad/huge", SB_RPC_MAX_PAYLOAD + 1, huge, 0, NULL);
        free(huge);
    }
    bad_publish(h, "size-without-payload", "bad/null", 10, NULL, 0, NULL);
    {
        SB_RPC_HEADER many[SB_RPC_MAX_HEADERS + 1];
        for (int k = 0; k < (int)SB_RPC_MAX_HEADERS + 1; k++) {
            many[k].key = "k";
            many[k].value = "v";
        }
        bad_publish(h, "headers-beyond-idl", "bad/h", 1, (const byte *)"x", SB_RPC_MAX_HEADERS + 1,
                    many);
    }
    bad_publish(h, "utf8-header", "bad/h", 1, (const byte *)"x", 1, hdr_bad);
    bad_publish(h, "null-header", "bad/h", 1, (const byte *)"x", 1, hdr_null);
    /* No subscription handle at all: the stub refuses it. */
    memset(&r, 0, sizeof r);
    ex = sb_rpc__guarded(raw_pull, &r);
    printf("case null-handle %d %s\n", ex != 0 ? sb_rpc_status_code((unsigned long)ex) : (int)r.rc,
           ex != 0 ? "exception" : "");
    fflush(stdout);
    RpcSsDestroyClientContext(&h);
    RpcBindingFree(&binding);
    return 0;
}

/* ---- context handles of the wrong type ---- */

typedef struct swap_call {
    const char *op;
    void *h; /* the handle passed, whatever the procedure expects */
    const char *name, *filter;
    SB_RPC_SUB sub; /* subscribe: the new handle */
    LONG rc;
    ULONG count;
    hyper total;
    SB_RPC_TEXT why, text;
} swap_call;

static long swap_run(void *p)
{
    swap_call *x = p;
    MIDL_uhyper id = 1;
    ULONG done = 0;
    LONG flags = 0, queues = 0;

    if (strcmp(x->op, "subscribe") == 0) {
        x->rc = SbSubscribe(x->h, x->name, x->filter, NULL, &x->sub, &x->text, &x->why);
    } else if (strcmp(x->op, "dlq-list") == 0) {
        SB_RPC_DEAD_LETTER *items = NULL;
        hyper next = 0;
        x->rc = SbDlqList(x->h, NULL, 0, 0, &x->count, &items, &next, &x->why);
        for (ULONG i = 0; i < x->count; i++)
            printf("dead %s %.*s\n", items[i].topic, (int)items[i].payload_size,
                   (const char *)items[i].payload);
    } else if (strcmp(x->op, "dlq-purge") == 0) {
        x->rc = SbDlqPurge(x->h, NULL, &x->total, &x->why);
    } else if (strcmp(x->op, "whoami") == 0) {
        x->rc = SbWhoAmI(x->h, &x->text, &flags, &x->why);
    } else if (strcmp(x->op, "publish") == 0) {
        x->rc = SbPublish(x->h, "orders/swap", 1, (const byte *)"x", 0, NULL, NULL, &id, &queues,
                          &x->why);
    } else if (strcmp(x->op, "stats") == 0) {
        x->rc = SbStats(x->h, &x->text, &x->why);
    } else if (strcmp(x->op, "close") == 0) {
        x->rc = SbClose(&x->h);
    } else if (strcmp(x->op, "pull") == 0) {
        SB_RPC_DELIVERY *d = NULL;
        x->rc = SbPull(x->h, 1, 0, &x->count, &d, &x->why);
    } else if (strcmp(x->op, "ack") == 0) {
        x->rc = SbAck(x->h, 1, &id, &done, &x->why);
    } else if (strcmp(x->op, "nack") == 0) {
        x->rc = SbNack(x->h, 1, &id, "swap", &done, &x->why);
    } else if (strcmp(x->op, "unsubscribe") == 0) {
        x->rc = SbUnsubscribe(&x->h, 0, &x->why);
    }
    return 0;
}

/* Calls op on h and prints "case NAME CODE count=N WHY" (CODE: the broker's
 * result, or the SB code of the runtime's exception). Returns the call. */
static swap_call swap(const char *name, const char *op, void *h)
{
    swap_call x;
    long ex;
    memset(&x, 0, sizeof x);
    x.op = op;
    x.h = h;
    ex = sb_rpc__guarded(swap_run, &x);
    printf("case %s %d count=%lu %s\n", name,
           ex != 0 ? sb_rpc_status_code((unsigned long)ex) : (int)x.rc,
           (unsigned long)(x.count + (ULONG)x.total),
           ex != 0 ? "exception" : (x.why.text != NULL ? x.why.text : ""));
    fflush(stdout);
    return x;
}

static int cmd_swap(char **argv)
{
    handle_t binding;
    SB_RPC_SESSION h;
    swap_call x;
    long ex;
    int rc = raw_session(&binding, &h, "swap");

    if (rc != 0)
        return rc;
    memset(&x, 0, sizeof x);
    x.op = "subscribe";
    x.h = h;
    x.name = argv[0];
    x.filter = argv[1];
    ex = sb_rpc__guarded(swap_run, &x);
    if (ex != 0 || x.rc != 0) {
        printf("swap: SbSubscribe: %ld %ld %s\n", ex, (long)x.rc,
               x.why.text != NULL ? x.why.text : "");
        return 1;
    }
    /* A subscription handle where a session is expected. */
    swap("dlq-list-sub", "dlq-list", x.sub);
    swap("dlq-purge-sub", "dlq-purge", x.sub);
    swap("whoami-sub", "whoami", x.sub);
    swap("publish-sub", "publish", x.sub);
    swap("stats-sub", "stats", x.sub);
    swap("close-sub", "close", x.sub);
    /* A session where a subscription handle is expected. */
    swap("pull-session", "pull", h);
    swap("ack-session", "ack", h);
    swap("nack-session", "nack", h);
    swap("unsubscribe-session", "unsubscribe", h);
    /* Both still work as what they are. */
    swap("whoami", "whoami", h);
    swap("pull", "pull", x.sub);
    swap("unsubscribe", "unsubscribe", x.sub);
    swap("close", "close", h);
    RpcBindingFree(&binding);
    return 0;
}

/* ---- a handle the broker no longer knows ---- */

/* Subscribes, then pulls every 200 ms, printing each new result ("pull
 * CODE"), until the broker answers SB_ENOTFOUND (it restarted and does not
 * know the handle) or 60 s passed. */
static int cmd_stale(char **argv)
{
    sb_rpc *c = bind_or_exit();
    sb_rpc_sub *s;
    sb_error err;
    int last = 1;
    if (sb_rpc_subscribe(&s, c, argv[0], argv[1], NULL, NULL, &err) != 0)
        return fail("subscribe", &err);
    printf("subscribed\n");
    fflush(stdout);
    for (int i = 0; i < 300; i++) {
        sb_rpc_batch *b = NULL;
        int rc = sb_rpc_pull(s, &b, 1, 0, &err);
        sb_rpc_batch_free(b);
        if (rc != last) {
            printf("pull %d %s\n", rc, rc != 0 ? err.msg : "");
            fflush(stdout);
            last = rc;
        }
        if (rc == SB_ENOTFOUND)
            break;
        Sleep(200);
    }
    sb_rpc_unsubscribe(s, 0, NULL);
    sb_rpc_free(c);
    return last == SB_ENOTFOUND ? 0 : 1;
}

/* ---- many waiting pulls at once ---- */

typedef struct flood_arg {
    const char *sub;
    int wait_ms;
    int result; /* 0 busy, 1 empty at once, 2 slow (waited), 3 failed */
} flood_arg;

static DWORD WINAPI flood_thread(void *p)
{
    flood_arg *f = p;
    sb_rpc *c;
    sb_rpc_sub *s;
    sb_rpc_batch *b;
    sb_error err;
    ULONGLONG t0;
    if (sb_rpc_connect(&c, endpoint, &opts, &err) != 0) {
        f->result = 3;
        return 0;
    }
    if (sb_rpc_subscribe(&s, c, f->sub, NULL, NULL, NULL, &err) != 0) {
        f->result = err.code == SB_EBUSY ? 0 : 3;
        sb_rpc_free(c);
        return 0;
    }
    t0 = GetTickCount64();
    if (sb_rpc_pull(s, &b, 1, f->wait_ms, &err) != 0) {
        f->result = err.code == SB_EBUSY ? 0 : 3;
    } else {
        f->result = GetTickCount64() - t0 >= 1000 ? 2 : 1; /* waited, or answered at once */
        sb_rpc_batch_free(b);
    }
    sb_rpc_unsubscribe(s, 0, NULL);
    sb_rpc_free(c);
    return 0;
}

static int cmd_flood(int argc, char **argv)
{
    int n = atoi(argv[1]), counts[4] = {0};
    flood_arg *args = calloc((size_t)n, sizeof(*args));
    HANDLE *threads = calloc((size_t)n, sizeof(HANDLE));
    if (args == NULL || threads == NULL || n < 1)
        return 2;
    for (int i = 0; i < n; i++) {
        args[i].sub = argv[0];
        args[i].wait_ms = atoi(argv[2]);
        threads[i] = CreateThread(NULL, 0, flood_thread, &args[i], 0, NULL);
    }
    for (int i = 0; i < n; i++) {
        WaitForSingleObject(threads[i], INFINITE);
        CloseHandle(threads[i]);
        counts[args[i].result]++;
    }
    printf("flood busy=%d empty=%d slow=%d failed=%d\n", counts[0], counts[1], counts[2],
           counts[3]);
    free(args);
    free(threads);
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: rpc_client [-a] ENDPOINT whoami|pub|pull|stats|dlq|bad|stale|swap|flood ...\n");
    return 2;
}

/* The command line as UTF-8 (main's argv is in the ANSI code page). */
static char **utf8_argv(int *argc)
{
    wchar_t **w = CommandLineToArgvW(GetCommandLineW(), argc);
    char **a = calloc((size_t)*argc + 1, sizeof(char *));
    if (w == NULL || a == NULL)
        exit(2);
    for (int i = 0; i < *argc; i++) {
        int n = WideCharToMultiByte(CP_UTF8, 0, w[i], -1, NULL, 0, NULL, NULL);
        a[i] = malloc((size_t)n);
        if (a[i] == NULL)
            exit(2);
        WideCharToMultiByte(CP_UTF8, 0, w[i], -1, a[i], n, NULL, NULL);
    }
    LocalFree(w);
    return a;
}

int main(int argc, char **argv)
{
    int i = 1;
    const char *cmd;
    argv = utf8_argv(&argc);
    _setmode(_fileno(stdout), _O_BINARY); /* lines end in \n, as the tests read them */
    if (i < argc && strcmp(argv[i], "-a") == 0) {
        opts.anonymous = 1;
        i++;
    }
    if (argc - i < 2)
        return usage();
    endpoint = argv[i++];
    cmd = argv[i++];
    argc -= i;
    argv += i;
    if (strcmp(cmd, "whoami") == 0)
        return cmd_whoami();
    if (strcmp(cmd, "pub") == 0 && argc >= 2)
        return cmd_pub(argc, argv);
    if (strcmp(cmd, "pull") == 0 && argc >= 3)
        return cmd_pull(argc, argv);
    if (strcmp(cmd, "stats") == 0)
        return cmd_stats();
    if (strcmp(cmd, "dlq") == 0 && argc >= 1)
        return cmd_dlq(argc, argv);
    if (strcmp(cmd, "bad") == 0)
        return cmd_bad();
    if (strcmp(cmd, "stale") == 0 && argc >= 2)
        return cmd_stale(argv);
    if (strcmp(cmd, "swap") == 0 && argc >= 2)
        return cmd_swap(argv);
    if (strcmp(cmd, "flood") == 0 && argc >= 3)
        return cmd_flood(argc, argv);
    return usage();
}
