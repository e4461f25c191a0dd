/*
 * ringbench: the shared-memory ring (adapters/filemap/sb_ring.h) bare and
 * through the broker, beside the same load over jsonl (a Unix socket on
 * Linux, a named pipe on Windows). tools/bench/ring-bench.sh runs the
 * comparison; each mode prints one line "RESULT key=value ...".
 *
 *   ringbench bare [-n N] [-s SIZE] [--capacity BYTES]
 *       A ring made here (as the broker makes it) and a producer process
 *       (this program, mode produce); this process reads every record as
 *       the broker's adapter does (checks it, copies it into a message,
 *       advances the committed cursor by batches) without publishing it.
 *       rate: first write to last commit; reader_us: this process's CPU per
 *       message (the ring's own cost on the broker's side).
 *   ringbench produce NAME [-n N] [-s SIZE] [--topic T]
 *       Writes N records as fast as the ring takes them, then waits until
 *       the last is committed (commits come in order: all are then).
 *       rate: first write to the last commit; cpu_us: CPU per message.
 *   ringbench consume NAME [-n N]
 *       Reads and releases N deliveries. rate: from attaching to the last
 *       release.
 *   ringbench pub ENDPOINT [-n N] [-s SIZE] [-w W] [--topic T]
 *       jsonl `pub`, up to W awaiting their puback. rate: first send to the
 *       last puback.
 *   ringbench sub ENDPOINT SUB [-n N] [-w W]
 *       jsonl `sub` (window W), acknowledging every delivery. rate: from
 *       the subscribe to the last delivery.
 *   ringbench fill ENDPOINT TOPIC [-n N] [-s SIZE]
 *       Publishes N messages (as pub, not measured): a queue to drain.
 *   ringbench drain ENDPOINT SUB
 *       Takes and acknowledges what the queue holds (not measured).
 */
#include "adapters/filemap/sb_ring.h" /* with its OS part */

#include "adapters/filemap/filemap_int.h"
#include "service/alloc.h"
#include "service/message.h"
#include "tools/client/client.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct opts {
    long long n;
    int size;
    int window;
    long long capacity;
    const char *topic;
} opts;

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static double cpu_s(void)
{
    uv_rusage_t ru;
    if (uv_getrusage(&ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int die(const char *what, const char *why)
{
    fprintf(stderr, "ringbench: %s: %s\n", what, why);
    return 1;
}

static void make_payload(char *p, int size, long long i)
{
    int n = snprintf(p, (size_t)size + 1, "%lld ", i);
    if (n < size)
        memset(p + n, '.', (size_t)(size - n));
}

/* ---- the ring bare ---- */

static int produce(const char *name, const opts *o)
{
    sb_ring *r;
    char *payload = malloc((size_t)o->size + 32);
    uint64_t seq = 0;
    double t0, c0;
    int rc = sb_ring_open(&r, name, SB_RING_PRODUCER);
    if (rc != SB_RING_OK || payload == NULL)
        return die(name, sb_ring_strerror(rc));
    c0 = cpu_s();
    t0 = now_s();
    for (long long i = 0; i < o->n; i++) {
        make_payload(payload, o->size, i);
        rc = sb_ring_write(r, o->topic, payload, (size_t)o->size, -1, &seq);
        if (rc != SB_RING_OK)
            return die("sb_ring_write", sb_ring_strerror(rc));
    }
    rc = sb_ring_wait_committed(r, seq, 120000);
    if (rc != SB_RING_OK)
        return die("sb_ring_wait_committed", sb_ring_strerror(rc));
    {
        double t = now_s() - t0, c = cpu_s() - c0;
        printf("RESULT mode=produce n=%lld rate=%.0f cpu_us=%.3f\n", o->n, (double)o->n / t,
               c * 1e6 / (double)o->n);
    }
    sb_ring_close(r);
    free(payload);
    return 0;
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    (void)sig;
    *(int64_t *)p->data = status;
    uv_close((uv_handle_t *)p, NULL);
}

typedef struct bare_wait {
    sb_ring_header *h;
    uint64_t pos;
} bare_wait;

static int bare_ready(void *ctx)
{
    const bare_wait *w = ctx;
    return sbr_load64(&w->h->reserve) != w->pos;
}

/* The broker's reader in short (filemap_in.c): every record checked,
 * copied into a message; commit advanced every 64 records and when idle;
 * when the ring is empty it spins a moment, then sleeps until the producer
 * signals more. */
static int bare(const opts *o, const char *self)
{
    char name[64];
    sb_fm_os_opts fo;
    sb_fm_os *os;
    sb_error err;
    char note[400];
    int how;
    sb_ring_header *h;
    unsigned char *data;
    uv_loop_t *loop = uv_default_loop();
    uv_process_t proc;
    uv_process_options_t po;
    uv_stdio_container_t stdio[3];
    int64_t status = -1;
    char n_arg[32], s_arg[32];
    char *args[] = {(char *)self, "produce", name, "-n", n_arg, "-s", s_arg, NULL};
    uint64_t pos = 0, committed = 0;
    long long got = 0;
    double c0, t0 = 0;

    snprintf(name, sizeof(name), "ringbench-%u", (unsigned)uv_os_getpid());
    memset(&fo, 0, sizeof(fo));
    fo.adapter = "ringbench";
    fo.name = name;
    fo.direction = SB_RING_IN;
    fo.capacity = (uint64_t)o->capacity;
    fo.max_payload = 1 << 20;
    fo.reclaim_ms = 5000;
    fo.mode = 0600;
    if (sb_fm__os_open(&os, &fo, &how, note, sizeof(note), &err) != 0)
        return die("ring", err.msg);
    h = sb_fm__os_header(os);
    data = (unsigned char *)h + SB_RING_HEADER_SIZE;

    snprintf(n_arg, sizeof(n_arg), "%lld", o->n);
    snprintf(s_arg, sizeof(s_arg), "%d", o->size);
    memset(&po, 0, sizeof(po));
    po.file = self;
    po.args = args;
    po.exit_cb = on_exit_cb;
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    po.stdio = stdio;
    po.stdio_count = 3;
    proc.data = &status;
    c0 = cpu_s();
    if (uv_spawn(loop, &proc, &po) != 0)
        return die("spawn", self);
    while (got < o->n) {
        const sb_ring_rec *rec;
        const char *why = "";
        uint64_t reserve = sbr_load64(&h->reserve);
        int kind = sbr_peek(h, data, o->capacity, pos, reserve, fo.max_payload, &rec, &why);
        if (kind == SBR_READY) {
            const char *t = (const char *)rec + SB_RING_REC_SIZE;
            char topic[256];
            sb_message *m;
            if (got == 0)
                t0 = now_s();
            if (!sbr_topic_valid(t, rec->topic_len) || rec->topic_len >= sizeof(topic) ||
                !sbr_headers_valid(t + rec->topic_len, rec->headers_len))
                return die("record", "invalid");
            memcpy(topic, t, rec->topic_len);
            topic[rec->topic_len] = '\0';
            m = sb_message_new(topic, t + rec->topic_len + rec->headers_len, rec->payload_len);
            if (m == NULL)
                return die("message", "out of memory");
            sb_message_unref(m);
            pos += rec->len;
            got++;
            if (got % 64 == 0 || got == o->n) {
                sbr_store64(&h->commit, pos);
                sb_fm__os_signal(os, SBR_WAKE_RELEASE);
                committed = pos;
            }
        } else if (kind == SBR_PAD) {
            pos += rec->len;
        } else if (kind == SBR_BAD) {
            return die("ring", why);
        } else {
            bare_wait w = {h, pos};
            if (committed != pos) { /* idle: release what was read */
                sbr_store64(&h->commit, pos);
                sb_fm__os_signal(os, SBR_WAKE_RELEASE);
                committed = pos;
            }
            /* A moment of spinning first: the producer is usually about to
             * write, and a reader asleep costs it a system call per wake. */
            for (int spin = 0; spin < 20000 && !bare_ready(&w); spin++)
                ;
            if (kind == SBR_EMPTY && !bare_ready(&w))
                sb_fm__os_wait(os, SBR_WAKE_DATA, bare_ready, &w, 100);
            else if (kind != SBR_EMPTY)
                uv_sleep(0); /* a record being written: a moment */
        }
    }
    {
        double t = now_s() - t0, c = cpu_s() - c0;
        printf("RESULT mode=bare n=%lld rate=%.0f reader_us=%.3f\n", o->n, (double)o->n / t,
               c * 1e6 / (double)o->n);
    }
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT); /* the producer's exit */
    sb_fm__os_close(os);
#ifndef _WIN32
    {
        char path[80];
        snprintf(path, sizeof(path), "/%s", name);
        shm_unlink(path);
    }
#endif
    return status == 0 ? 0 : 1;
}

static int consume(const char *name, const opts *o)
{
    sb_ring *r;
    double t0, c0;
    int rc;
    c0 = cpu_s();
    t0 = now_s();
    rc = sb_ring_open(&r, name, SB_RING_CONSUMER);
    if (rc != SB_RING_OK)
        return die(name, sb_ring_strerror(rc));
    for (long long i = 0; i < o->n; i++) {
        sb_ring_msg m;
        rc = sb_ring_next(r, &m, 60000);
        if (rc != SB_RING_OK)
            return die("sb_ring_next", sb_ring_strerror(rc));
        if (i % 16 == 15 || i == o->n - 1)
            sb_ring_release(r, &m); /* releases the ones before too */
    }
    {
        double t = now_s() - t0, c = cpu_s() - c0;
        printf("RESULT mode=consume n=%lld rate=%.0f cpu_us=%.3f\n", o->n, (double)o->n / t,
               c * 1e6 / (double)o->n);
    }
    sb_ring_close(r);
    return 0;
}

/* ---- jsonl ---- */

static sb_client *connect_to(const char *endpoint)
{
    sb_client *c;
    sb_error err;
    if (sb_client_connect(&c, endpoint, NULL, &err) != 0) {
        die(endpoint, err.msg);
        return NULL;
    }
    return c;
}

/* Publishes n with up to w awaiting their puback; returns 0 when all came. */
static int publish(sb_client *c, const opts *o, int w)
{
    char *payload = malloc((size_t)o->size + 32);
    long long sent = 0, acked = 0;
    sb_error err;
    if (payload == NULL)
        return 1;
    while (acked < o->n) {
        while (sent < o->n && sent - acked < w) {
            json_t *req;
            make_payload(payload, o->size, sent);
            req = json_pack("{s:s,s:I,s:s,s:s}", "op", "pub", "id", (json_int_t)(sent + 1),
                            "topic", o->topic, "payload", payload);
            if (req == NULL || sb_client_write_json(c, req, &err) != 0)
                return die("write", err.msg);
            json_decref(req);
            sent++;
        }
        {
            json_t *rep;
            const char *op;
            if (sb_client_read_json(c, &rep, 60000, &err) != 0)
                return die("read", err.msg);
            op = json_string_value(json_object_get(rep, "op"));
            if (op == NULL || strcmp(op, "puback") != 0)
                return die("pub", sb_client_last_line(c, NULL));
            json_decref(rep);
            acked++;
        }
    }
    free(payload);
    return 0;
}

static int pub(const char *endpoint, const opts *o, int measured)
{
    sb_client *c = connect_to(endpoint);
    double t0, c0;
    if (c == NULL)
        return 1;
    c0 = cpu_s();
    t0 = now_s();
    if (publish(c, o, o->window) != 0)
        return 1;
    if (measured) {
        double t = now_s() - t0, cpu = cpu_s() - c0;
        printf("RESULT mode=pub n=%lld rate=%.0f cpu_us=%.3f\n", o->n, (double)o->n / t,
               cpu * 1e6 / (double)o->n);
    }
    sb_client_free(c);
    return 0;
}

/* Takes n deliveries of sub (n < 0: until none comes for a second). */
static int sub(const char *endpoint, const char *name, const opts *o, long long n)
{
    sb_client *c = connect_to(endpoint);
    json_t *req;
    sb_error err;
    double t0, c0;
    long long got = 0;
    char ack[200];
    if (c == NULL)
        return 1;
    c0 = cpu_s();
    t0 = now_s();
    req = json_pack("{s:s,s:s,s:i}", "op", "sub", "sub", name, "window", o->window);
    if (req == NULL || sb_client_write_json(c, req, &err) != 0)
        return die("sub", err.msg);
    json_decref(req);
    while (n < 0 || got < n) {
        json_t *m;
        const char *op;
        int rc = sb_client_read_json(c, &m, n < 0 ? 1000 : 60000, &err);
        if (rc == SB_ETIMEDOUT && n < 0)
            break;
        if (rc != 0)
            return die("read", err.msg);
        op = json_string_value(json_object_get(m, "op"));
        if (op != NULL && strcmp(op, "msg") == 0) {
            int len = snprintf(ack, sizeof(ack), "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}",
                               name, (long long)json_integer_value(json_object_get(m, "msg_id")));
            if (sb_client_write_line(c, ack, (size_t)len, &err) != 0)
                return die("ack", err.msg);
            got++;
        } else if (op != NULL && strcmp(op, "error") == 0) {
            return die("sub", sb_client_last_line(c, NULL));
        }
        json_decref(m);
    }
    sb_client_flush(c, &err);
    if (n >= 0) {
        double t = now_s() - t0, cpu = cpu_s() - c0;
        printf("RESULT mode=sub n=%lld rate=%.0f cpu_us=%.3f\n", n, (double)n / t,
               cpu * 1e6 / (double)n);
    } else {
        printf("RESULT mode=drain n=%lld\n", got);
    }
    sb_client_free(c);
    return 0;
}

int main(int argc, char **argv)
{
    opts o = {100000, 100, 256, 4 << 20, "bench/ring"};
    const char *mode, *pos[3] = {NULL, NULL, NULL};
    char self[1024];
    size_t self_len = sizeof(self);
    int npos = 0;

    if (argc < 2)
        goto usage;
    mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-n") == 0 && i + 1 < argc)
            o.n = atoll(argv[++i]);
        else if (strcmp(a, "-s") == 0 && i + 1 < argc)
            o.size = atoi(argv[++i]);
        else if (strcmp(a, "-w") == 0 && i + 1 < argc)
            o.window = atoi(argv[++i]);
        else if (strcmp(a, "--capacity") == 0 && i + 1 < argc)
            o.capacity = atoll(argv[++i]);
        else if (strcmp(a, "--topic") == 0 && i + 1 < argc)
            o.topic = argv[++i];
        else if (a[0] != '-' && npos < 3)
            pos[npos++] = a;
        else
            goto usage;
    }
    if (o.n < 1 || o.size < 24 || o.window < 1)
        goto usage;
    if (strcmp(mode, "bare") == 0 && npos == 0) {
        if (uv_exepath(self, &self_len) != 0)
            return die("exepath", "unknown");
        return bare(&o, self);
    }
    if (strcmp(mode, "produce") == 0 && npos == 1)
        return produce(pos[0], &o);
    if (strcmp(mode, "consume") == 0 && npos == 1)
        return consume(pos[0], &o);
    if (strcmp(mode, "pub") == 0 && npos == 1)
        return pub(pos[0], &o, 1);
    if (strcmp(mode, "fill") == 0 && npos == 2) {
        o.topic = pos[1];
        return pub(pos[0], &o, 0);
    }
    if (strcmp(mode, "sub") == 0 && npos == 2)
        return sub(pos[0], pos[1], &o, o.n);
    if (strcmp(mode, "drain") == 0 && npos == 2)
        return sub(pos[0], pos[1], &o, -1);
usage:
    fprintf(stderr, "usage: ringbench bare|produce NAME|consume NAME|pub EP|sub EP SUB|fill EP "
                    "TOPIC|drain EP SUB [-n N] [-s SIZE] [-w W] [--capacity B] [--topic T]\n");
    return 2;
}
