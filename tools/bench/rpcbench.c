/*
 * rpcbench: load for the MS-RPC interface (tools/bench/rpc-bench.sh), a
 * client on the sbrpc library as programs would write one.
 *
 *     rpcbench ENDPOINT pub TOPIC COUNT [BYTES]   COUNT publishes of BYTES
 *                                                 (default 100), one at a
 *                                                 time, each waiting for its
 *                                                 commit
 *     rpcbench ENDPOINT pull SUB COUNT [BATCH]    pulls COUNT deliveries in
 *                                                 batches of BATCH (default
 *                                                 100), acknowledging each
 *                                                 batch with one call
 *
 * Prints "RATE <per second> <seconds> <process CPU seconds>"; exits 1 on
 * the first failure.
 */
#include "tools/rpc/sbrpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

static double now_s(void)
{
    LARGE_INTEGER f, t;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart / (double)f.QuadPart;
}

static double cpu_s(void)
{
    FILETIME c, e, k, u;
    GetProcessTimes(GetCurrentProcess(), &c, &e, &k, &u);
    return ((double)(((ULONGLONG)k.dwHighDateTime << 32) | k.dwLowDateTime) +
            (double)(((ULONGLONG)u.dwHighDateTime << 32) | u.dwLowDateTime)) /
           1e7;
}

static int failed(const char *what, const sb_error *err)
{
    fprintf(stderr, "rpcbench: %s: %s\n", what, err->msg);
    return 1;
}

int main(int argc, char **argv)
{
    sb_rpc *c;
    sb_error err;
    long count;
    double t0, c0, t;

    if (argc < 5) {
        fprintf(stderr, "usage: rpcbench ENDPOINT pub TOPIC COUNT [BYTES] | "
                        "ENDPOINT pull SUB COUNT [BATCH]\n");
        return 2;
    }
    count = strtol(argv[4], NULL, 10);
    if (sb_rpc_connect(&c, argv[1], NULL, &err) != 0 || sb_rpc_whoami(c, NULL, NULL, &err) != 0)
        return failed("connect", &err);
    if (strcmp(argv[2], "pub") == 0) {
        size_t bytes = argc > 5 ? (size_t)strtol(argv[5], NULL, 10) : 100;
        char *payload = malloc(bytes + 1);
        if (payload == NULL)
            return 1;
        memset(payload, 'x', bytes);
        t0 = now_s();
        c0 = cpu_s();
        for (long i = 0; i < count; i++)
            if (sb_rpc_publish(c, argv[3], payload, bytes, NULL, 0, NULL, NULL, NULL, &err) != 0)
                return failed("publish", &err);
        free(payload);
    } else {
        size_t batch = argc > 5 ? (size_t)strtol(argv[5], NULL, 10) : 100;
        uint64_t ids[1000];
        sb_rpc_sub *s;
        long got = 0;
        if (batch < 1 || batch > 1000)
            batch = 100;
        if (sb_rpc_subscribe(&s, c, argv[3], NULL, NULL, NULL, &err) != 0)
            return failed("subscribe", &err);
        t0 = now_s();
        c0 = cpu_s();
        while (got < count) {
            sb_rpc_batch *b;
            if (sb_rpc_pull(s, &b, batch, 10000, &err) != 0)
                return failed("pull", &err);
            if (b->count == 0) {
                fprintf(stderr, "rpcbench: nothing to pull after %ld\n", got);
                return 1;
            }
            for (size_t i = 0; i < b->count; i++)
                ids[i] = b->items[i].msg_id;
            if (sb_rpc_ack(s, ids, b->count, NULL, &err) != 0)
                return failed("ack", &err);
            got += (long)b->count;
            sb_rpc_batch_free(b);
        }
        sb_rpc_unsubscribe(s, 0, NULL);
    }
    t = now_s() - t0;
    printf("RATE %.0f %.3f %.3f\n", (double)count / t, t, cpu_s() - c0);
    sb_rpc_free(c);
    return 0;
}
