/*
 * transformbench: what route transforms cost, side by side in one run.
 *
 * The broker runs tools/bench/transform-bench.yaml (bench-transform.sh
 * writes and starts it): four routes without destinations, each a queue
 * this program subscribes to, the same but for their transform: tb-none
 * (none), tb-topic (a topic rewrite with captured values), tb-env (a
 * JSON envelope) and tb-lua (a small Lua function: the same topic rewrite
 * and a header). For each route in turn, repeated --rounds times
 * (interleaved, so that load on the machine hits every variant alike), one
 * jsonl connection publishes -n messages of -s bytes to the route's topics,
 * keeping up to -w publishes awaiting their puback, while consuming the
 * route's queue (window 100, as sbctl bench) and acknowledging every
 * delivery. Measured per variant:
 * messages per second from the first publish to the last delivery, and,
 * with --pid, the broker's CPU time per message (utime + stime from
 * /proc/PID/stat), the figure a loaded machine disturbs least. Printed:
 * the median over the rounds, and each variant relative to tb-none.
 *
 *   transformbench -e tcp:127.0.0.1:PORT [--pid PID] [-n N] [-w W] [-s SIZE]
 *                  [--rounds R]
 */
#include "tools/client/client.h"

#include "service/error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUNDS 50

typedef struct variant {
    const char *route;  /* its queue */
    const char *prefix; /* topics published: PREFIX/<i % 10> */
    const char *what;
    double rate[MAX_ROUNDS];
    double cpu_us[MAX_ROUNDS];
} variant;

static variant variants[] = {
    {"tb-none", "tb/none", "no transform", {0}, {0}},
    {"tb-topic", "tb/topic", "topic rewrite", {0}, {0}},
    {"tb-env", "tb/env", "JSON envelope", {0}, {0}},
    {"tb-lua", "tb/lua", "Lua function", {0}, {0}},
};
#define NVARIANTS (sizeof variants / sizeof variants[0])

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The broker's CPU seconds so far (utime + stime), or -1. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[2048], *p;
    unsigned long long ut, st;
    FILE *f;
    size_t n;
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')'); /* the command may hold spaces */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void die(const char *what, const sb_error *err)
{
    fprintf(stderr, "transformbench: %s: %s\n", what, err != NULL ? err->msg : "");
    exit(1);
}

/* One run of variant v; returns msgs/s and sets *cpu_us (per message). */
static double run(const char *endpoint, long pid, variant *v, long n, int window, size_t size,
                  double *cpu_us)
{
    sb_client *c;
    sb_error err;
    char line[512], *payload = malloc(size + 1), *pub = malloc(size + 256);
    const char *in;
    size_t in_len;
    long sent = 0, acked_pubs = 0, got = 0;
    double t0, t1, c0, c1;
    json_t *req, *rep;

    if (payload == NULL || pub == NULL)
        die("out of memory", NULL);
    memset(payload, 'x', size);
    payload[size] = '\0';
    if (sb_client_connect(&c, endpoint, NULL, &err) != 0)
        die("connect", &err);
    req = json_pack("{s:s, s:s, s:i}", "op", "sub", "sub", v->route, "window", 100);
    if (sb_client_request(c, &rep, req, 10000, &err) != 0 || sb_client_reply_error(rep, &err) != 0)
        die(v->route, &err);
    json_decref(req);
    json_decref(rep);
    c0 = proc_cpu_s(pid);
    t0 = now_s();
    while (got < n) {
        while (sent < n && sent - acked_pubs < window) {
            int k = snprintf(pub, size + 256,
                             "{\"op\":\"pub\",\"id\":%ld,\"topic\":\"%s/%ld\",\"payload\":\"%s\"}",
                             sent + 1, v->prefix, sent % 10, payload);
            if (sb_client_write_line(c, pub, (size_t)k, &err) != 0)
                die("write", &err);
            sent++;
        }
        if (sb_client_flush(c, &err) != 0)
            die("flush", &err);
        if (sb_client_read_line(c, &in, &in_len, 30000, &err) != 0)
            die("read", &err);
        if (in_len > 12 && memcmp(in, "{\"op\":\"msg\"", 11) == 0) {
            const char *id = strstr(in, "\"msg_id\":");
            int k;
            if (id == NULL)
                die("a delivery without msg_id", NULL);
            k = snprintf(line, sizeof line, "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}",
                         v->route, strtoll(id + 9, NULL, 10));
            if (sb_client_write_line(c, line, (size_t)k, &err) != 0)
                die("write", &err);
            got++;
        } else if (strstr(in, "\"puback\"") != NULL) {
            acked_pubs++;
        } else {
            fprintf(stderr, "transformbench: unexpected: %.*s\n", (int)in_len, in);
            exit(1);
        }
    }
    t1 = now_s();
    sb_client_flush(c, &err);
    c1 = proc_cpu_s(pid);
    *cpu_us = c0 >= 0 && c1 >= 0 ? (c1 - c0) * 1e6 / (double)n : -1;
    sb_client_free(c);
    free(payload);
    free(pub);
    return (double)n / (t1 - t0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];
    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    const char *endpoint = NULL;
    long pid = 0, n = 50000;
    int window = 256, rounds = 5;
    size_t size = 100;

    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL)
            goto usage;
        if (strcmp(a, "-e") == 0)
            endpoint = val;
        else if (strcmp(a, "--pid") == 0)
            pid = atol(val);
        else if (strcmp(a, "-n") == 0)
            n = atol(val);
        else if (strcmp(a, "-w") == 0)
            window = atoi(val);
        else if (strcmp(a, "-s") == 0)
            size = (size_t)atol(val);
        else if (strcmp(a, "--rounds") == 0)
            rounds = atoi(val);
        else
            goto usage;
    }
    if (endpoint == NULL || n < 1 || window < 1 || rounds < 1 || rounds > MAX_ROUNDS ||
        size > 65536)
        goto usage;
    for (int r = 0; r < rounds; r++)
        for (size_t v = 0; v < NVARIANTS; v++)
            variants[v].rate[r] =
                run(endpoint, pid, &variants[v], n, window, size, &variants[v].cpu_us[r]);
    {
        double base_rate = median(variants[0].rate, rounds);
        double base_cpu = median(variants[0].cpu_us, rounds);
        printf("%-14s %12s %8s %14s %8s\n", "variant", "msgs/s", "ratio", "broker us/msg", "ratio");
        for (size_t v = 0; v < NVARIANTS; v++) {
            double rate = median(variants[v].rate, rounds),
                   cpu = median(variants[v].cpu_us, rounds);
            printf("%-14s %12.0f %8.2f %14.2f %8.2f\n", variants[v].what, rate, rate / base_rate,
                   cpu, base_cpu > 0 ? cpu / base_cpu : 0.0);
        }
        printf("(median of %d rounds of %ld messages of %zu bytes, window %d)\n", rounds, n, size,
               window);
    }
    return 0;
usage:
    fprintf(stderr, "usage: transformbench -e ENDPOINT [--pid PID] [-n N] [-w W] [-s SIZE] "
                    "[--rounds R]\n");
    return 2;
}
