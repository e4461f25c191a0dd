/*
 * Writes the golden databases of tests/data/storage:
 *   valid.db           a small store: queues, entries with headers, a retained
 *                      value, a dead letter, a dedup key
 *   corrupt_header.db  valid.db with the rest of the 100-byte file header
 *                      (page size, format numbers...) overwritten: SQLite
 *                      reports SQLITE_NOTADB
 *   corrupt_schema.db  valid.db with page 1 past the file header (the schema
 *                      b-tree) overwritten: SQLITE_CORRUPT on the first read
 *   corrupt_pages.db   valid.db with every page after the first overwritten:
 *                      the schema reads fine, PRAGMA quick_check fails
 * Garbage is a fixed pseudo-random sequence, so the files are reproducible.
 *
 *   store_make_golden <dir>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "service/message.h"
#include "storage/store.h"

#define PAGE 4096

static void done_cb(sb_store_op *op, void *ctx)
{
    if (op->status != 0) {
        fprintf(stderr, "op %d failed: %s\n", (int)op->type, sb_strerror(op->status));
        exit(1);
    }
    (*(int *)ctx)++;
}

static void submit(sb_store *s, sb_store_op *op, int *done)
{
    op->cb = done_cb;
    op->ctx = done;
    if (sb_store_submit(s, op) != 0)
        exit(1);
}

static void make_valid(const char *path)
{
    static uint32_t queues[2] = {1, 2};
    sb_store_options o = {0};
    sb_store_op ops[8];
    const sb_sub_filter audit_filter = {"orders/#", SB_QOS_NONE};
    const sb_sub_filter dashboard_filter = {"orders/+", SB_QOS_NONE};
    sb_message *m[3];
    sb_error err;
    sb_store *s;
    uv_loop_t loop;
    int done = 0, n = 0;

    remove(path);
    o.path = path;
    if (sb_store_open(&s, &o, &err) != 0 || uv_loop_init(&loop) != 0 ||
        sb_store_start(s, &loop, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    memset(ops, 0, sizeof(ops));
    ops[n].type = SB_OP_QUEUE_PUT;
    ops[n].u.queue_put.id = 1;
    ops[n].u.queue_put.name = "audit";
    ops[n].u.queue_put.filters = &audit_filter;
    ops[n++].u.queue_put.filter_count = 1;
    ops[n].type = SB_OP_QUEUE_PUT;
    ops[n].u.queue_put.id = 2;
    ops[n].u.queue_put.name = "dashboard";
    ops[n].u.queue_put.filters = &dashboard_filter;
    ops[n++].u.queue_put.filter_count = 1;
    for (int i = 0; i < 3; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "{\"order\":%d}", i + 1);
        m[i] = sb_message_new("orders/new", payload, strlen(payload));
        m[i]->id = (uint64_t)i + 1;
        m[i]->created_ms = 1767225600000 + i;
        sb_message_add_header(m[i], "content-type", "application/json");
        ops[n].type = SB_OP_PUBLISH;
        ops[n].u.publish.msg = m[i];
        ops[n].u.publish.queue_ids = queues;
        ops[n].u.publish.queue_count = 2;
        ops[n].u.publish.retain = i == 2;
        ops[n].u.publish.dedup_key = i == 0 ? "order-1" : NULL;
        ops[n++].u.publish.dedup_expires_ms = 0;
    }
    ops[n].type = SB_OP_DEADLETTER;
    ops[n].u.deadletter.queue_id = 1;
    ops[n].u.deadletter.msg_id = 1;
    ops[n].u.deadletter.msg = m[0];
    ops[n].u.deadletter.reason = "max attempts";
    ops[n].u.deadletter.source = "orders-in";
    ops[n++].u.deadletter.attempts = 8;
    for (int i = 0; i < n; i++)
        submit(s, &ops[i], &done);
    while (done < n)
        uv_run(&loop, UV_RUN_ONCE);
    sb_store_stop(s);
    sb_store_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    for (int i = 0; i < 3; i++)
        sb_message_unref(m[i]);
}

static unsigned char *read_all(const char *path, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = malloc(1 << 20);
    if (f == NULL || buf == NULL)
        exit(1);
    *out_len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static void write_variant(const char *dir, const char *name, const unsigned char *data, size_t len,
                          size_t from, size_t to)
{
    char path[1024];
    unsigned char *copy = malloc(len);
    uint32_t x = 2463534242u; /* xorshift32: reproducible garbage */
    FILE *f;
    memcpy(copy, data, len);
    for (size_t i = from; i < to && i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        copy[i] = (unsigned char)x;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(copy, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    free(copy);
}

int main(int argc, char **argv)
{
    char path[1024];
    unsigned char *data;
    size_t len;
    if (argc != 2) {
        fprintf(stderr, "usage: store_make_golden <dir>\n");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/valid.db", argv[1]);
    make_valid(path);
    data = read_all(path, &len);
    if (len < 3 * PAGE) {
        fprintf(stderr, "%s: unexpectedly small (%zu bytes)\n", path, len);
        return 1;
    }
    write_variant(argv[1], "corrupt_header.db", data, len, 16, 100);
    write_variant(argv[1], "corrupt_schema.db", data, len, 100, PAGE);
    write_variant(argv[1], "corrupt_pages.db", data, len, PAGE, len);
    free(data);
    printf("wrote %s and 3 corrupt variants (%zu bytes each)\n", path, len);
    return 0;
}
