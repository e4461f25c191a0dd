/*
 * bench_store: publish+ack throughput of the SQLite store.
 *
 *   bench_store [messages] [dir] [window] [payload bytes]
 *
 * For each durability class (fsync: every op has `sync`; batched: none) and
 * each acknowledgement style (one ACK op per message; one ACK op per loop
 * iteration covering every publish completed so far, as a consumer acking
 * in ranges does), publishes `messages` messages (100-byte payloads unless
 * told) to one queue with
 * at most `window` publishes in flight, acknowledges each once its publish
 * completed, and reports messages/s from the first submit to the last ack
 * completion, with the store's commit counters. The store runs with its
 * defaults (commit_max_batch 1024, no delay).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "service/alloc.h"
#include "service/message.h"
#include "storage/store.h"

typedef struct bench {
    sb_store *store;
    uv_loop_t *loop;
    uv_check_t check;
    int sync;
    int ack_each;
    uint64_t total;
    uint64_t submitted;     /* publishes submitted */
    uint64_t published;     /* publishes completed (in order) */
    uint64_t ack_submitted; /* messages covered by submitted acks */
    uint64_t acked;         /* messages covered by completed acks */
    int failed;
    sb_store_op *slots;
    sb_message **msgs;
    size_t window;
} bench;

static uint32_t queue_id = 1;

static void ack_done(sb_store_op *op, void *ctx)
{
    bench *b = ctx;
    if (op->status != 0) {
        fprintf(stderr, "ack failed: %s\n", sb_strerror(op->status));
        b->failed = 1;
    }
    b->acked += op->u.ack.last_id - op->u.ack.first_id + 1;
    if (b->acked == b->total)
        uv_close((uv_handle_t *)&b->check, NULL);
    sb_free(op);
}

static void submit_ack(bench *b, uint64_t first, uint64_t last)
{
    sb_store_op *op = sb_calloc(1, sizeof(*op));
    if (op == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    op->type = SB_OP_ACK;
    op->sync = b->sync;
    op->cb = ack_done;
    op->ctx = b;
    op->u.ack.queue_id = queue_id;
    op->u.ack.first_id = first;
    op->u.ack.last_id = last;
    if (sb_store_submit(b->store, op) != 0) {
        fprintf(stderr, "submit failed\n");
        exit(1);
    }
    b->ack_submitted += last - first + 1;
}

static void submit_publish(bench *b, size_t slot);

static void publish_done(sb_store_op *op, void *ctx)
{
    bench *b = ctx;
    size_t slot = (size_t)(op - b->slots);
    if (op->status != 0) {
        fprintf(stderr, "publish failed: %s\n", sb_strerror(op->status));
        b->failed = 1;
    }
    b->published++;
    if (b->ack_each)
        submit_ack(b, op->u.publish.msg->id, op->u.publish.msg->id);
    if (b->submitted < b->total)
        submit_publish(b, slot);
}

static void submit_publish(bench *b, size_t slot)
{
    sb_store_op *op = &b->slots[slot];
    memset(op, 0, sizeof(*op));
    b->msgs[slot]->id = ++b->submitted;
    op->type = SB_OP_PUBLISH;
    op->sync = b->sync;
    op->cb = publish_done;
    op->ctx = b;
    op->u.publish.msg = b->msgs[slot];
    op->u.publish.queue_ids = &queue_id;
    op->u.publish.queue_count = 1;
    if (sb_store_submit(b->store, op) != 0) {
        fprintf(stderr, "submit failed\n");
        exit(1);
    }
}

/* After each loop iteration: acknowledge everything published since. */
static void on_check(uv_check_t *h)
{
    bench *b = h->data;
    if (!b->ack_each && b->published > b->ack_submitted)
        submit_ack(b, b->ack_submitted + 1, b->published);
}

static void queue_done(sb_store_op *op, void *ctx)
{
    *(int *)ctx = op->status == 0 ? 1 : -1;
}

static double tv_secs(const uv_timeval_t *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static int run_one(const char *dir, uint64_t total, size_t window, size_t size, int sync,
                   int ack_each)
{
    char path[1024];
    unsigned char *payload = malloc(size);
    sb_store_options opts = {0};
    sb_store_stats st;
    sb_store_op qop = {0};
    const sb_sub_filter bench_filter = {"bench/#", SB_QOS_NONE};
    sb_error err;
    uv_loop_t loop;
    bench b = {0};
    uint64_t t0, t1;
    uv_rusage_t ru0, ru1;
    double cpu;
    int qdone = 0;
    double secs;

    snprintf(path, sizeof(path), "%s/bench_store.db", dir);
    remove(path);
    opts.path = path;
    if (sb_store_open(&b.store, &opts, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uv_loop_init(&loop);
    if (sb_store_start(b.store, &loop, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    qop.type = SB_OP_QUEUE_PUT;
    qop.cb = queue_done;
    qop.ctx = &qdone;
    qop.u.queue_put.id = queue_id;
    qop.u.queue_put.name = "bench";
    qop.u.queue_put.filters = &bench_filter;
    qop.u.queue_put.filter_count = 1;
    sb_store_submit(b.store, &qop);
    while (qdone == 0)
        uv_run(&loop, UV_RUN_ONCE);

    if (payload == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(payload, 'x', size);
    b.loop = &loop;
    b.sync = sync;
    b.ack_each = ack_each;
    b.total = total;
    b.window = window;
    b.slots = calloc(window, sizeof(*b.slots));
    b.msgs = calloc(window, sizeof(*b.msgs));
    for (size_t i = 0; i < window; i++)
        b.msgs[i] = sb_message_new("bench/topic", payload, size);
    free(payload);
    uv_check_init(&loop, &b.check);
    b.check.data = &b;
    uv_check_start(&b.check, on_check);

    uv_getrusage(&ru0);
    t0 = uv_hrtime();
    for (size_t i = 0; i < window && b.submitted < total; i++)
        submit_publish(&b, i);
    while (b.acked < total && !b.failed)
        uv_run(&loop, UV_RUN_ONCE);
    t1 = uv_hrtime();
    uv_getrusage(&ru1);

    sb_store_get_stats(b.store, &st);
    sb_store_stop(b.store);
    sb_store_close(b.store);
    if (!uv_is_closing((uv_handle_t *)&b.check))
        uv_close((uv_handle_t *)&b.check, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    for (size_t i = 0; i < window; i++)
        sb_message_unref(b.msgs[i]);
    free(b.slots);
    free(b.msgs);
    remove(path);

    secs = (double)(t1 - t0) / 1e9;
    cpu = tv_secs(&ru1.ru_utime) - tv_secs(&ru0.ru_utime) + tv_secs(&ru1.ru_stime) -
          tv_secs(&ru0.ru_stime);
    printf("%-7s ack=%-5s %8llu msgs %6.2f s %8.0f msg/s  cpu %5.2f us/msg  commits %llu"
           " (fsync %llu)  ops/commit %.0f  max batch %llu\n",
           sync ? "fsync" : "batched", ack_each ? "each" : "range", (unsigned long long)total, secs,
           (double)total / secs, cpu * 1e6 / (double)total, (unsigned long long)st.commits,
           (unsigned long long)st.fsync_commits,
           st.commits ? (double)st.ops / (double)st.commits : 0.0,
           (unsigned long long)st.max_batch_seen);
    return b.failed;
}

int main(int argc, char **argv)
{
    uint64_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    const char *dir = argc > 2 ? argv[2] : ".";
    size_t window = argc > 3 ? (size_t)strtoull(argv[3], NULL, 10) : 4096;
    size_t size = argc > 4 ? (size_t)strtoull(argv[4], NULL, 10) : 100;
    int rc = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (total == 0 || window == 0 || size == 0) {
        fprintf(stderr, "usage: bench_store [messages] [dir] [window] [payload bytes]\n");
        return 2;
    }
    for (int sync = 1; sync >= 0; sync--)
        for (int each = 1; each >= 0; each--)
            rc |= run_one(dir, total, window, size, sync, each);
    return rc;
}
