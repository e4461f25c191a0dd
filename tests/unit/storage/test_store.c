/*
 * The SQLite store: every op through a real uv loop and store thread, reload
 * after close, group commit and its synchronous level (checked at the VFS),
 * disk-full and I/O-error behaviour, refusal of foreign, corrupt, newer and
 * busy databases, and out-of-memory paths. Each test has its own directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sqlite3.h>
#include <uv.h>

#include "service/alloc.h"
#include "service/error.h"
#include "service/log.h"
#include "service/message.h"
#include "storage/schema_int.h"
#include "storage/store.h"
#include "storage/store_test.h"
#include "vfs_shim.h"

typedef struct fx {
    char dir[1024];
    char path[1100];
    uv_loop_t loop;
    sb_store *s;
} fx;

/* ---- fixture ------------------------------------------------------------ */

static void rm_rf(const char *dir)
{
    uv_fs_t req;
    uv_dirent_t ent;
    char p[1200];
    if (uv_fs_scandir(NULL, &req, dir, 0, NULL) >= 0) {
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
            uv_fs_t r2;
            snprintf(p, sizeof(p), "%s/%s", dir, ent.name);
            uv_fs_unlink(NULL, &r2, p, NULL);
            uv_fs_req_cleanup(&r2);
        }
    }
    uv_fs_req_cleanup(&req);
    uv_fs_rmdir(NULL, &req, dir, NULL);
    uv_fs_req_cleanup(&req);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    char tmp[900], tmpl[1000];
    size_t len = sizeof(tmp);
    uv_fs_t req;
    assert_non_null(f);
    assert_int_equal(uv_os_tmpdir(tmp, &len), 0);
    snprintf(tmpl, sizeof(tmpl), "%s/sb-store-XXXXXX", tmp);
    assert_int_equal(uv_fs_mkdtemp(NULL, &req, tmpl, NULL), 0);
    snprintf(f->dir, sizeof(f->dir), "%s", req.path);
    uv_fs_req_cleanup(&req);
    snprintf(f->path, sizeof(f->path), "%s/switchboard.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->s != NULL)
        sb_store_close(f->s);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void open_with(fx *f, int max_batch, int delay_us, int64_t max_bytes)
{
    sb_store_options o = {0};
    sb_error err = {0};
    int rc;
    o.path = f->path;
    o.commit_max_batch = max_batch;
    o.commit_max_delay_us = delay_us;
    o.max_db_bytes = max_bytes;
    rc = sb_store_open(&f->s, &o, &err);
    if (rc != 0)
        fail_msg("open: %s (%s)", err.msg, sb_errname(rc));
}

static void start(fx *f)
{
    sb_error err = {0};
    assert_int_equal(sb_store_start(f->s, &f->loop, &err), 0);
}

static void open_start(fx *f)
{
    open_with(f, 0, 0, 0);
    start(f);
}

/* Stops and closes the store and lets the loop close its handle. */
static void shut(fx *f)
{
    sb_store_stop(f->s);
    sb_store_close(f->s);
    f->s = NULL;
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* ---- ops ---------------------------------------------------------------- */

static void count_cb(sb_store_op *op, void *ctx)
{
    (void)op;
    (*(int *)ctx)++;
}

static void run_until(fx *f, const int *counter, int target)
{
    while (*counter < target)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred(f) holds, waking every 5 ms to look (10 s max). */
static void run_until_pred(fx *f, int (*pred)(fx *))
{
    uv_timer_t t;
    uint64_t deadline = uv_hrtime() + 10ull * 1000 * 1000 * 1000;
    uv_timer_init(&f->loop, &t);
    uv_timer_start(&t, tick_cb, 5, 5);
    while (!pred(f)) {
        assert_true(uv_hrtime() < deadline);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Submits one op and waits for its callback; returns its status. */
static int do_op(fx *f, sb_store_op *op)
{
    int n = 0;
    op->cb = count_cb;
    op->ctx = &n;
    assert_int_equal(sb_store_submit(f->s, op), 0);
    run_until(f, &n, 1);
    return op->status;
}

static sb_message *msg(uint64_t id, const char *topic, const char *payload)
{
    sb_message *m = sb_message_new(topic, payload, strlen(payload));
    assert_non_null(m);
    m->id = id;
    return m;
}

static void publish_op(sb_store_op *op, sb_message *m, uint32_t *queues, size_t n)
{
    memset(op, 0, sizeof(*op));
    op->type = SB_OP_PUBLISH;
    op->u.publish.msg = m;
    op->u.publish.queue_ids = queues;
    op->u.publish.queue_count = n;
}

static int publish(fx *f, uint64_t id, const char *payload, uint32_t *queues, size_t n)
{
    sb_store_op op;
    sb_message *m = msg(id, "t/x", payload);
    int rc;
    publish_op(&op, m, queues, n);
    rc = do_op(f, &op);
    sb_message_unref(m);
    return rc;
}

static const sb_sub_filter any_filter = {"#", SB_QOS_NONE};

static int queue_put_def(fx *f, const sb_store_queue *q)
{
    sb_store_op op = {0};
    op.type = SB_OP_QUEUE_PUT;
    op.u.queue_put = *q;
    return do_op(f, &op);
}

/* A queue with one filter (none if filter is NULL). */
static int queue_put(fx *f, uint32_t id, const char *name, const char *filter, const char *settings)
{
    sb_sub_filter one = {filter, SB_QOS_NONE};
    sb_store_queue q = {id,   name, filter != NULL ? &one : NULL, filter != NULL, settings,
                        NULL, NULL};
    return queue_put_def(f, &q);
}

static int ack(fx *f, uint32_t q, uint64_t first, uint64_t last)
{
    sb_store_op op = {0};
    op.type = SB_OP_ACK;
    op.u.ack.queue_id = q;
    op.u.ack.first_id = first;
    op.u.ack.last_id = last;
    return do_op(f, &op);
}

static int retain_put(fx *f, const char *topic, const char *payload)
{
    sb_store_op op = {0};
    sb_message *m = msg(7, topic, payload);
    int rc;
    op.type = SB_OP_RETAIN_PUT;
    op.u.retain_put.msg = m;
    rc = do_op(f, &op);
    sb_message_unref(m);
    return rc;
}

/* ---- loading ------------------------------------------------------------ */

typedef struct entry {
    uint32_t queue_id;
    sb_message *m;
    int attempts;
} entry;

typedef struct loaded {
    entry e[20000];
    size_t n;
} loaded;

static int collect_entry(void *ctx, uint32_t queue_id, sb_message *m, int attempts)
{
    loaded *l = ctx;
    assert_true(l->n < sizeof(l->e) / sizeof(l->e[0]));
    l->e[l->n].queue_id = queue_id;
    l->e[l->n].m = m;
    l->e[l->n].attempts = attempts;
    l->n++;
    return 0;
}

static void loaded_free(loaded *l)
{
    for (size_t i = 0; i < l->n; i++)
        sb_message_unref(l->e[i].m);
    free(l);
}

/* Closes, reopens (not started) and loads the entries. */
static loaded *reload_entries(fx *f)
{
    loaded *l = calloc(1, sizeof(*l));
    sb_error err = {0};
    assert_non_null(l);
    if (f->s != NULL)
        shut(f);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_entries(f->s, collect_entry, l, &err), 0);
    return l;
}

/* Message ids of queue q, in load order, into ids; returns the count. */
static size_t ids_of(const loaded *l, uint32_t q, uint64_t *ids, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->e[i].queue_id == q && n < max)
            ids[n++] = l->e[i].m->id;
    return n;
}

/* A queue as loaded: its filters '\n'-joined (brief to compare), their QoS
 * as digits ('-' for none). */
typedef struct qrow {
    uint32_t id;
    char name[32], filter[64], qos[8], settings[256], protocol[16], owner[16];
} qrow;

typedef struct qlist {
    qrow q[8];
    int n;
} qlist;

static int collect_queue(void *ctx, const sb_store_queue *q)
{
    qlist *l = ctx;
    qrow *r = &l->q[l->n];
    size_t len = 0;
    assert_true(l->n < 8);
    assert_true(q->filter_count < sizeof(r->qos));
    r->id = q->id;
    snprintf(r->name, sizeof(r->name), "%s", q->name);
    for (size_t i = 0; i < q->filter_count; i++) {
        len += (size_t)snprintf(r->filter + len, sizeof(r->filter) - len, "%s%s", i > 0 ? "\n" : "",
                                q->filters[i].filter);
        assert_true(len < sizeof(r->filter));
        r->qos[i] = q->filters[i].qos == SB_QOS_NONE ? '-' : (char)('0' + q->filters[i].qos);
    }
    r->qos[q->filter_count] = '\0';
    snprintf(r->settings, sizeof(r->settings), "%s", q->settings ? q->settings : "(null)");
    snprintf(r->protocol, sizeof(r->protocol), "%s", q->protocol ? q->protocol : "(null)");
    snprintf(r->owner, sizeof(r->owner), "%s", q->owner ? q->owner : "(null)");
    l->n++;
    return 0;
}

typedef struct rlist {
    sb_message *m[8];
    int n;
} rlist;

static int collect_retained(void *ctx, sb_message *m)
{
    rlist *l = ctx;
    assert_true(l->n < 8);
    l->m[l->n++] = m;
    return 0;
}

static void rlist_free(rlist *l)
{
    for (int i = 0; i < l->n; i++)
        sb_message_unref(l->m[i]);
    l->n = 0;
}

typedef struct dlist {
    char key[8][32];
    int64_t exp[8];
    int n;
} dlist;

static int collect_dedup(void *ctx, const char *key, int64_t expires_ms)
{
    dlist *l = ctx;
    assert_true(l->n < 8);
    snprintf(l->key[l->n], sizeof(l->key[0]), "%s", key);
    l->exp[l->n++] = expires_ms;
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_publish_reload(void **state)
{
    fx *f = *state;
    uint32_t queues[3] = {1, 2, 3};
    sb_store_op ops[50];
    sb_message *msgs[50];
    qlist ql = {0};
    loaded *l;
    sb_error err = {0};
    uint64_t max_msg;
    uint32_t max_queue;
    int done = 0;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "one", "t/#", "{\"durability\":\"fsync\"}"), 0);
    assert_int_equal(queue_put(f, 2, "two", "t/+", NULL), 0);
    assert_int_equal(queue_put(f, 3, "three", "#", NULL), 0);
    for (int i = 0; i < 50; i++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "payload %d", i);
        msgs[i] = msg((uint64_t)i + 1, "t/x", payload);
        msgs[i]->created_ms = 1000 + i;
        msgs[i]->expires_ms = i % 2 ? 0 : 99999 + i;
        msgs[i]->priority = i % 10;
        if (i % 3 == 0)
            assert_int_equal(sb_message_add_header(msgs[i], "content-type", "text/plain"), 0);
        publish_op(&ops[i], msgs[i], queues, 3);
        ops[i].sync = i % 2;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    run_until(f, &done, 50);
    for (int i = 0; i < 50; i++)
        assert_int_equal(ops[i].status, 0);

    l = reload_entries(f);
    assert_int_equal(l->n, 150);
    for (size_t i = 0; i < l->n; i++) {
        const sb_message *m = l->e[i].m, *want = msgs[i / 3];
        assert_int_equal(l->e[i].queue_id, queues[i % 3]);
        assert_int_equal(m->id, want->id);
        assert_string_equal(m->topic, "t/x");
        assert_int_equal(m->payload_len, want->payload_len);
        assert_memory_equal(m->payload, want->payload, want->payload_len);
        assert_int_equal(m->created_ms, want->created_ms);
        assert_int_equal(m->expires_ms, want->expires_ms);
        assert_int_equal(m->priority, want->priority);
        assert_int_equal(m->header_count, want->header_count);
        if (want->header_count > 0)
            assert_string_equal(sb_message_header(m, "content-type"), "text/plain");
        assert_int_equal(l->e[i].attempts, 0);
        /* The rows of one fan-out share one message. */
        if (i % 3 > 0)
            assert_ptr_equal(m, l->e[i - 1].m);
    }
    loaded_free(l);
    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 3);
    assert_string_equal(ql.q[0].name, "one");
    assert_string_equal(ql.q[0].filter, "t/#");
    assert_string_equal(ql.q[0].settings, "{\"durability\":\"fsync\"}");
    assert_string_equal(ql.q[1].settings, "(null)");
    assert_int_equal(sb_store_max_ids(f->s, &max_msg, &max_queue, &err), 0);
    assert_int_equal(max_msg, 50);
    assert_int_equal(max_queue, 3);
    for (int i = 0; i < 50; i++)
        sb_message_unref(msgs[i]);
}

/* An entry acknowledged before its publish's group ran is never written:
 * sb_store_cancel before the store thread took the op (here: before start)
 * skips its row, while the message's other entries, its retained value and
 * its dedup key are written and the op completes as usual. No ACK op is
 * submitted, so a missing row can only be one never inserted. */
static void test_cancel_before_group(void **state)
{
    fx *f = *state;
    uint32_t q12[2] = {1, 2}, q1 = 1;
    sb_store_op ops[2];
    sb_message *m1 = msg(1, "t/x", "one"), *m2 = msg(2, "t/x", "two");
    sb_store_stats st;
    uint64_t ids[4];
    rlist rl = {0};
    dlist dl = {0};
    sb_error err = {0};
    loaded *l;
    int done = 0;

    open_with(f, 0, 0, 0);
    publish_op(&ops[0], m1, q12, 2);
    ops[0].u.publish.retain = 1;
    ops[0].u.publish.dedup_key = "k=1";
    publish_op(&ops[1], m2, &q1, 1);
    for (int i = 0; i < 2; i++) {
        ops[i].sync = 1;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    assert_int_equal(sb_store_cancel(f->s, &ops[0], 0), 0); /* (1, m1) */
    assert_int_equal(sb_store_cancel(f->s, &ops[1], 0), 0); /* (1, m2) */
    assert_int_equal(sb_store_cancel(f->s, &ops[1], 1), SB_EINVAL);
    start(f);
    run_until(f, &done, 2);
    assert_int_equal(ops[0].status, 0);
    assert_int_equal(ops[1].status, 0);
    sb_store_get_stats(f->s, &st);
    assert_int_equal(st.elided, 2);
    assert_true(st.fsync_commits >= 1);
    /* once the group ran, the row is written: cancel refuses */
    assert_int_equal(sb_store_cancel(f->s, &ops[0], 1), SB_EBUSY);

    l = reload_entries(f);
    assert_int_equal(ids_of(l, 1, ids, 4), 0);
    assert_int_equal(ids_of(l, 2, ids, 4), 1);
    assert_int_equal(ids[0], 1);
    loaded_free(l);
    assert_int_equal(sb_store_load_retained(f->s, collect_retained, &rl, &err), 0);
    assert_int_equal(rl.n, 1);
    assert_int_equal(rl.m[0]->id, 1);
    rlist_free(&rl);
    assert_int_equal(sb_store_load_dedup(f->s, collect_dedup, &dl, &err), 0);
    assert_int_equal(dl.n, 1);
    assert_string_equal(dl.key[0], "k=1");
    {
        uint64_t max_msg = 0;
        assert_int_equal(sb_store_max_ids(f->s, &max_msg, NULL, NULL), 0);
        assert_int_equal(max_msg, 2); /* ids of elided entries stay taken */
    }
    sb_message_unref(m1);
    sb_message_unref(m2);
}

/* A publish already executed keeps its rows: an ack deletes them. */
static void test_cancel_after_group(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op;
    sb_message *m = msg(1, "t/x", "one");
    uint64_t ids[4];
    loaded *l;

    open_start(f);
    publish_op(&op, m, &q1, 1);
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(sb_store_cancel(f->s, &op, 0), SB_EBUSY);
    assert_int_equal(q1, 1);
    l = reload_entries(f);
    assert_int_equal(ids_of(l, 1, ids, 4), 1);
    loaded_free(l);
    sb_message_unref(m);
}

/* Ids reserved with sb_store_reserve_ids are recorded with the next commit
 * and stay taken after a restart. */
static void test_reserve_ids(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    uint64_t max_msg = 0;

    open_start(f);
    assert_int_equal(sb_store_reserve_ids(f->s, 1000), 0); /* nothing committed yet */
    assert_int_equal(publish(f, 1, "a", &q1, 1), 0);
    assert_int_equal(sb_store_reserve_ids(f->s, 500), 1000);
    shut(f);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_max_ids(f->s, &max_msg, NULL, NULL), 0);
    assert_int_equal(max_msg, 1000);
    start(f);
    assert_int_equal(sb_store_reserve_ids(f->s, 2000), 1000);
    assert_int_equal(ack(f, 1, 1, 1), 0); /* any group records it */
    assert_int_equal(sb_store_reserve_ids(f->s, 0), 2000);
}

static void test_ack_ranges(void **state)
{
    fx *f = *state;
    uint32_t q12[2] = {1, 2};
    uint64_t ids[16];
    loaded *l;
    open_start(f);
    for (uint64_t i = 1; i <= 10; i++)
        assert_int_equal(publish(f, i, "p", q12, 2), 0);
    assert_int_equal(ack(f, 1, 3, 6), 0);
    assert_int_equal(ack(f, 1, 9, 1000), 0);
    assert_int_equal(ack(f, 1, 500, 600), 0); /* nothing there: fine */
    l = reload_entries(f);
    assert_int_equal(ids_of(l, 1, ids, 16), 4);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 7);
    assert_int_equal(ids[3], 8);
    assert_int_equal(ids_of(l, 2, ids, 16), 10);
    loaded_free(l);
    /* Acked ids are not reused: the high-water mark survives. */
    start(f);
    assert_int_equal(ack(f, 1, 1, 100), 0);
    assert_int_equal(ack(f, 2, 1, 100), 0);
    shut(f);
    open_with(f, 0, 0, 0);
    {
        uint64_t max_msg = 0;
        assert_int_equal(sb_store_max_ids(f->s, &max_msg, NULL, NULL), 0);
        assert_int_equal(max_msg, 10);
    }
}

static void test_attempts(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op = {0};
    loaded *l;
    open_start(f);
    assert_int_equal(publish(f, 1, "a", &q1, 1), 0);
    assert_int_equal(publish(f, 2, "b", &q1, 1), 0);
    op.type = SB_OP_ATTEMPTS;
    op.u.attempts.queue_id = 1;
    op.u.attempts.msg_id = 2;
    op.u.attempts.attempts = 3;
    assert_int_equal(do_op(f, &op), 0);
    op.u.attempts.msg_id = 99;
    assert_int_equal(do_op(f, &op), SB_ENOTFOUND);
    l = reload_entries(f);
    assert_int_equal(l->n, 2);
    assert_int_equal(l->e[0].attempts, 0);
    assert_int_equal(l->e[1].attempts, 3);
    loaded_free(l);
}

static void deadletter_op(sb_store_op *op, uint32_t q, uint64_t id, const char *queue_name,
                          sb_message *m)
{
    memset(op, 0, sizeof(*op));
    op->type = SB_OP_DEADLETTER;
    op->u.deadletter.queue_id = q;
    op->u.deadletter.msg_id = id;
    op->u.deadletter.msg = m;
    op->u.deadletter.queue_name = queue_name;
    op->u.deadletter.reason = "max attempts";
    op->u.deadletter.source = "tcp-in";
    op->u.deadletter.attempts = 5;
}

static void dlq_list(fx *f, sb_store_op *op, const char *queue, int64_t after, int limit)
{
    memset(op, 0, sizeof(*op));
    op->type = SB_OP_DLQ_LIST;
    op->u.dlq_list.queue_name = queue;
    op->u.dlq_list.after_dlq_id = after;
    op->u.dlq_list.limit = limit;
    assert_int_equal(do_op(f, op), 0);
}

static void test_deadletter(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op, list;
    sb_dead_letter redrive[2];
    uint64_t ids[8];
    int64_t t0 = sb_now_ms();
    loaded *l;
    sb_message *ms[6], *mem;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "q-one", "t/#", NULL), 0);
    assert_int_equal(queue_put(f, 2, "q-two", "u/#", NULL), 0);
    for (uint64_t i = 1; i <= 5; i++) {
        ms[i] = msg(i, "t/dead", "body");
        assert_int_equal(sb_message_add_header(ms[i], "source", "tcp-in"), 0);
        ms[i]->expires_ms = 0;
        ms[i]->priority = 4;
        publish_op(&op, ms[i], &q1, 1);
        assert_int_equal(do_op(f, &op), 0);
    }
    deadletter_op(&op, 1, 2, "q-one", ms[2]);
    assert_int_equal(do_op(f, &op), 0);
    deadletter_op(&op, 1, 4, NULL, NULL); /* copied from the entry; name from the queue */
    assert_int_equal(do_op(f, &op), 0);
    deadletter_op(&op, 1, 42, "q-one", NULL); /* no message, no entry */
    assert_int_equal(do_op(f, &op), SB_ENOTFOUND);
    /* A memory-class queue has no entry row: the message is written anyway. */
    mem = msg(42, "u/mem", "volatile");
    deadletter_op(&op, 2, 42, "q-two", mem);
    assert_int_equal(do_op(f, &op), 0);
    sb_message_unref(mem);

    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 3);
    {
        sb_dead_letter *r = list.u.dlq_list.rows;
        assert_string_equal(r[0].queue_name, "q-one");
        assert_string_equal(r[1].queue_name, "q-one");
        assert_string_equal(r[2].queue_name, "q-two");
        assert_true(r[0].dlq_id < r[1].dlq_id);
        assert_int_equal(r[0].msg->id, 2);
        assert_int_equal(r[1].msg->id, 4);
        assert_int_equal(r[1].msg->priority, 4);
        assert_string_equal(sb_message_header(r[1].msg, "source"), "tcp-in");
        assert_int_equal(r[2].msg->id, 42);
        assert_memory_equal(r[2].msg->payload, "volatile", 8);
        assert_string_equal(r[0].msg->topic, "t/dead");
        assert_memory_equal(r[0].msg->payload, "body", 4);
        assert_string_equal(sb_message_header(r[0].msg, "source"), "tcp-in");
        assert_string_equal(r[0].reason, "max attempts");
        assert_string_equal(r[0].source, "tcp-in");
        assert_int_equal(r[0].attempts, 5);
        assert_true(r[0].dead_ms >= t0);
    }
    /* Paging and filtering. */
    {
        sb_store_op page;
        int64_t first = list.u.dlq_list.rows[0].dlq_id;
        dlq_list(f, &page, NULL, 0, 1);
        assert_int_equal(page.u.dlq_list.row_count, 1);
        assert_int_equal(page.u.dlq_list.rows[0].dlq_id, first);
        sb_store_dlq_rows_free(page.u.dlq_list.rows, page.u.dlq_list.row_count);
        dlq_list(f, &page, "q-one", first, 10);
        assert_int_equal(page.u.dlq_list.row_count, 1);
        assert_int_equal(page.u.dlq_list.rows[0].msg->id, 4);
        sb_store_dlq_rows_free(page.u.dlq_list.rows, page.u.dlq_list.row_count);
        dlq_list(f, &page, "other", 0, 10);
        assert_int_equal(page.u.dlq_list.row_count, 0);
        sb_store_dlq_rows_free(page.u.dlq_list.rows, page.u.dlq_list.row_count);
        dlq_list(f, &page, "q-two", 0, 10);
        assert_int_equal(page.u.dlq_list.row_count, 1);
        sb_store_dlq_rows_free(page.u.dlq_list.rows, page.u.dlq_list.row_count);
    }

    /* A redrive with one missing row changes nothing. */
    memset(redrive, 0, sizeof(redrive));
    redrive[0].dlq_id = list.u.dlq_list.rows[0].dlq_id;
    redrive[0].target_queue_id = 2;
    redrive[0].new_msg_id = 100;
    redrive[1].dlq_id = 12345;
    redrive[1].target_queue_id = 2;
    redrive[1].new_msg_id = 101;
    memset(&op, 0, sizeof(op));
    op.type = SB_OP_DLQ_REDRIVE;
    op.u.dlq_redrive.rows = redrive;
    op.u.dlq_redrive.row_count = 2;
    assert_int_equal(do_op(f, &op), SB_ENOTFOUND);
    /* A taken new id is refused too. */
    redrive[1] = redrive[0];
    redrive[1].new_msg_id = 3; /* entry (1, 3) exists: use queue 1 */
    redrive[1].target_queue_id = 1;
    redrive[1].dlq_id = list.u.dlq_list.rows[1].dlq_id;
    op.u.dlq_redrive.row_count = 2;
    redrive[0].target_queue_id = 2;
    assert_int_equal(do_op(f, &op), SB_EEXIST);
    /* Now a good one, and one the caller skips (no target queue). */
    redrive[1].dlq_id = list.u.dlq_list.rows[2].dlq_id;
    redrive[1].target_queue_id = 0;
    assert_int_equal(do_op(f, &op), 0);
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);

    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 2);
    assert_int_equal(list.u.dlq_list.rows[0].msg->id, 4);
    assert_int_equal(list.u.dlq_list.rows[1].msg->id, 42);
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);

    memset(&op, 0, sizeof(op));
    op.type = SB_OP_DLQ_PURGE;
    op.u.dlq_purge.queue_name = "q-two";
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(op.u.dlq_purge.purged, 1);
    op.u.dlq_purge.queue_name = NULL;
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(op.u.dlq_purge.purged, 1);
    for (int i = 1; i <= 5; i++)
        sb_message_unref(ms[i]);

    l = reload_entries(f);
    assert_int_equal(ids_of(l, 1, ids, 8), 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 5);
    assert_int_equal(ids_of(l, 2, ids, 8), 1);
    assert_int_equal(ids[0], 100);
    for (size_t i = 0; i < l->n; i++) {
        if (l->e[i].queue_id == 2) {
            assert_int_equal(l->e[i].attempts, 0);
            assert_string_equal(l->e[i].m->topic, "t/dead");
            assert_string_equal(sb_message_header(l->e[i].m, "source"), "tcp-in");
        }
    }
    loaded_free(l);
    {
        uint64_t max_msg = 0;
        assert_int_equal(sb_store_max_ids(f->s, &max_msg, NULL, NULL), 0);
        assert_int_equal(max_msg, 100);
    }
    start(f);
    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 0);
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);
}

static void test_retained(void **state)
{
    fx *f = *state;
    sb_store_op op;
    sb_message *m;
    rlist rl = {0};
    sb_error err = {0};

    open_start(f);
    m = msg(1, "a/b", "v1");
    publish_op(&op, m, NULL, 0);
    op.u.publish.retain = 1;
    assert_int_equal(do_op(f, &op), 0);
    sb_message_unref(m);
    assert_int_equal(retain_put(f, "c/d", "x"), 0);
    m = msg(2, "a/b", "v2");
    assert_int_equal(sb_message_add_header(m, "k", "v"), 0);
    publish_op(&op, m, NULL, 0);
    op.u.publish.retain = 1;
    assert_int_equal(do_op(f, &op), 0);
    sb_message_unref(m);

    shut(f);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_retained(f->s, collect_retained, &rl, &err), 0);
    assert_int_equal(rl.n, 2);
    assert_string_equal(rl.m[0]->topic, "a/b");
    assert_int_equal(rl.m[0]->id, 2);
    assert_memory_equal(rl.m[0]->payload, "v2", 2);
    assert_string_equal(sb_message_header(rl.m[0], "k"), "v");
    assert_string_equal(rl.m[1]->topic, "c/d");
    rlist_free(&rl);

    start(f);
    assert_int_equal(retain_put(f, "c/d", ""), 0);
    m = msg(3, "a/b", "");
    publish_op(&op, m, NULL, 0);
    op.u.publish.retain = 1;
    assert_int_equal(do_op(f, &op), 0);
    sb_message_unref(m);
    assert_int_equal(retain_put(f, "e/f", "kept"), 0);
    shut(f);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_retained(f->s, collect_retained, &rl, &err), 0);
    assert_int_equal(rl.n, 1);
    assert_string_equal(rl.m[0]->topic, "e/f");
    rlist_free(&rl);
}

static int publish_dedup(fx *f, uint64_t id, const char *key, int64_t expires)
{
    uint32_t q1 = 1;
    sb_store_op op;
    sb_message *m = msg(id, "t", "d");
    int rc;
    publish_op(&op, m, &q1, 1);
    op.u.publish.dedup_key = key;
    op.u.publish.dedup_expires_ms = expires;
    rc = do_op(f, &op);
    sb_message_unref(m);
    return rc;
}

static void test_dedup(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    int64_t now = sb_now_ms();
    sb_store_op ops[2], op = {0};
    sb_message *m1, *m2;
    dlist dl = {0};
    sb_error err = {0};
    loaded *l;
    int done = 0;

    open_start(f);
    assert_int_equal(publish_dedup(f, 1, "k1", now + 3600000), 0);
    assert_int_equal(publish_dedup(f, 2, "k1", now + 3600000), SB_EDUPLICATE);
    assert_int_equal(publish_dedup(f, 3, "k2", now - 1), 0); /* expired at once */
    assert_int_equal(publish_dedup(f, 4, "k2", now - 1), 0);
    assert_int_equal(publish_dedup(f, 5, "k3", 0), 0); /* never expires */
    assert_int_equal(publish_dedup(f, 6, "k3", 0), SB_EDUPLICATE);
    /* Two of a kind in one group: the second is the duplicate. */
    m1 = msg(7, "t", "d");
    m2 = msg(8, "t", "d");
    publish_op(&ops[0], m1, &q1, 1);
    publish_op(&ops[1], m2, &q1, 1);
    for (int i = 0; i < 2; i++) {
        ops[i].u.publish.dedup_key = "k4";
        ops[i].u.publish.dedup_expires_ms = now + 3600000;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    run_until(f, &done, 2);
    assert_int_equal(ops[0].status, 0);
    assert_int_equal(ops[1].status, SB_EDUPLICATE);
    sb_message_unref(m1);
    sb_message_unref(m2);

    op.type = SB_OP_DEDUP_PRUNE;
    op.u.dedup_prune.now_ms = sb_now_ms();
    assert_int_equal(do_op(f, &op), 0);

    l = reload_entries(f);
    {
        uint64_t ids[16];
        assert_int_equal(ids_of(l, 1, ids, 16), 5);
        assert_int_equal(ids[0], 1);
        assert_int_equal(ids[1], 3);
        assert_int_equal(ids[2], 4);
        assert_int_equal(ids[3], 5);
        assert_int_equal(ids[4], 7);
    }
    loaded_free(l);
    assert_int_equal(sb_store_load_dedup(f->s, collect_dedup, &dl, &err), 0);
    assert_int_equal(dl.n, 3); /* k2 was pruned */
    for (int i = 0; i < dl.n; i++)
        assert_string_not_equal(dl.key[i], "k2");
}

static void test_queue_put_delete(void **state)
{
    fx *f = *state;
    uint32_t q12[2] = {1, 2};
    sb_store_op ops[3];
    qlist ql = {0};
    sb_error err = {0};
    loaded *l;
    uint32_t max_queue;
    int done = 0;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "a", "x/#", NULL), 0);
    assert_int_equal(queue_put(f, 2, "b", "y/#", NULL), 0);
    assert_int_equal(queue_put(f, 1, "a2", "x/+", "{\"max_depth\":10}"), 0);
    assert_int_equal(queue_put(f, 1, NULL, "x", NULL), SB_EINVAL);
    /* A name clash fails that op only; the group's other ops commit. */
    memset(ops, 0, sizeof(ops));
    for (int i = 0; i < 3; i++) {
        ops[i].type = SB_OP_QUEUE_PUT;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        ops[i].u.queue_put.filters = &any_filter;
        ops[i].u.queue_put.filter_count = 1;
    }
    ops[0].u.queue_put.id = 4;
    ops[0].u.queue_put.name = "d";
    ops[1].u.queue_put.id = 3;
    ops[1].u.queue_put.name = "b";
    ops[2].u.queue_put.id = 5;
    ops[2].u.queue_put.name = "e";
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    run_until(f, &done, 3);
    assert_int_equal(ops[0].status, 0);
    assert_int_equal(ops[1].status, SB_EEXIST);
    assert_int_equal(ops[2].status, 0);

    for (uint64_t i = 1; i <= 3; i++)
        assert_int_equal(publish(f, i, "p", q12, 2), 0);
    memset(&ops[0], 0, sizeof(ops[0]));
    ops[0].type = SB_OP_QUEUE_DELETE;
    ops[0].u.queue_delete.queue_id = 1;
    assert_int_equal(do_op(f, &ops[0]), 0);
    ops[0].u.queue_delete.queue_id = 5;
    assert_int_equal(do_op(f, &ops[0]), 0);

    l = reload_entries(f);
    assert_int_equal(l->n, 3);
    for (size_t i = 0; i < l->n; i++)
        assert_int_equal(l->e[i].queue_id, 2);
    loaded_free(l);
    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 2);
    assert_int_equal(ql.q[0].id, 2);
    assert_string_equal(ql.q[0].name, "b");
    assert_int_equal(ql.q[1].id, 4);
    assert_int_equal(sb_store_max_ids(f->s, NULL, &max_queue, &err), 0);
    assert_int_equal(max_queue, 5); /* deleted ids are not reused */
}

static void test_publish_conflict(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1, q21[2] = {2, 1};
    loaded *l;
    open_start(f);
    assert_int_equal(publish(f, 1, "first", &q1, 1), 0);
    /* (1, 1) exists: the insert into queue 2 is undone as well. */
    assert_int_equal(publish(f, 1, "again", q21, 2), SB_EEXIST);
    assert_int_equal(publish(f, 2, "next", q21, 2), 0);
    l = reload_entries(f);
    assert_int_equal(l->n, 3);
    assert_int_equal(l->e[0].queue_id, 1);
    assert_memory_equal(l->e[0].m->payload, "first", 5);
    assert_int_equal(l->e[1].m->id, 2);
    assert_int_equal(l->e[2].m->id, 2);
    loaded_free(l);
}

static void test_drops(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op;
    sb_store_entry_ref drops[2] = {{1, 1}, {1, 2}};
    sb_message *m;
    uint64_t ids[8];
    loaded *l;
    open_start(f);
    for (uint64_t i = 1; i <= 3; i++)
        assert_int_equal(publish(f, i, "p", &q1, 1), 0);
    m = msg(4, "t", "new");
    publish_op(&op, m, &q1, 1);
    op.u.publish.drops = drops;
    op.u.publish.drop_count = 2;
    assert_int_equal(do_op(f, &op), 0);
    sb_message_unref(m);
    l = reload_entries(f);
    assert_int_equal(ids_of(l, 1, ids, 8), 2);
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 4);
    loaded_free(l);
}

#define MANY 10000

static void test_group_commit(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op *ops = calloc(MANY, sizeof(*ops));
    sb_message **ms = calloc(MANY, sizeof(*ms));
    sb_store_stats st0, st1, st2;
    long syncs0, syncs1, syncs2;
    int done = 0;

    assert_non_null(ops);
    assert_non_null(ms);
    open_start(f);
    assert_int_equal(queue_put(f, 1, "q", "#", NULL), 0);
    sb_store_get_stats(f->s, &st0);
    syncs0 = vfs_shim_wal_syncs();
    /* Batched durability: no fsync at commit. The ops accumulate while
     * the store is held (as behind a long commit), so how many groups they
     * make does not depend on how the threads are scheduled. */
    sb_store_test_hold(f->s, 1);
    for (int i = 0; i < MANY; i++) {
        ops[i].type = SB_OP_ACK; /* cheap and order-independent */
        ops[i].u.ack.queue_id = 1;
        ops[i].u.ack.first_id = (uint64_t)i;
        ops[i].u.ack.last_id = (uint64_t)i;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    sb_store_test_hold(f->s, 0);
    run_until(f, &done, MANY);
    sb_store_get_stats(f->s, &st1);
    syncs1 = vfs_shim_wal_syncs();
    assert_true(st1.commits - st0.commits >= MANY / 1024);
    assert_true(st1.commits - st0.commits < MANY / 20);
    assert_int_equal(st1.fsync_commits, st0.fsync_commits);
    assert_int_equal(st1.ops - st0.ops, MANY);
    assert_true(st1.max_batch_seen <= 1024 && st1.max_batch_seen > 1);
    assert_int_equal(syncs1, syncs0);

    /* fsync durability: one op with sync makes its group commit with FULL. */
    done = 0;
    for (int i = 0; i < MANY; i++) {
        ms[i] = msg((uint64_t)i + 1, "t", "0123456789");
        publish_op(&ops[i], ms[i], &q1, 1);
        ops[i].sync = i % 100 == 0;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    run_until(f, &done, MANY);
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(ops[i].status, 0);
        sb_message_unref(ms[i]);
    }
    sb_store_get_stats(f->s, &st2);
    syncs2 = vfs_shim_wal_syncs();
    /* Groups are taken as ops arrive, so a small one may miss every sync op. */
    assert_true(st2.fsync_commits - st1.fsync_commits >= 1);
    assert_true(st2.fsync_commits - st1.fsync_commits <= st2.commits - st1.commits);
    assert_true(syncs2 - syncs1 >= (long)(st2.fsync_commits - st1.fsync_commits));
    assert_true(st2.db_bytes > 0);
    assert_int_equal(st2.degraded, 0);
    /* The latency histogram counts every successful commit once. */
    {
        uint64_t in_buckets = 0;
        for (int i = 0; i < SB_STORE_LATENCY_BUCKETS; i++)
            in_buckets += st2.commit_us[i];
        assert_int_equal(in_buckets, st2.commits);
        assert_true(st2.commit_us_sum > 0);
    }
    free(ms);
    free(ops);
}

static void test_commit_delay(void **state)
{
    fx *f = *state;
    sb_store_op ops[3];
    sb_store_stats st0, st1;
    uint64_t t0;
    int done = 0;
    open_with(f, 10, 300 * 1000, 0);
    start(f);
    sb_store_get_stats(f->s, &st0);
    memset(ops, 0, sizeof(ops));
    t0 = uv_hrtime();
    for (int i = 0; i < 3; i++) {
        ops[i].type = SB_OP_DEDUP_PRUNE;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    run_until(f, &done, 3);
    sb_store_get_stats(f->s, &st1);
    /* Fewer than max_batch: the thread waited for more, then committed once. */
    assert_int_equal(st1.commits - st0.commits, 1);
    assert_true(uv_hrtime() - t0 >= 250ull * 1000 * 1000);
}

static int is_degraded(fx *f)
{
    return sb_store_degraded(f->s);
}

static int is_healthy(fx *f)
{
    return !sb_store_degraded(f->s);
}

static void test_disk_full(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    char big[2048];
    sb_store_op pub, ackop;
    sb_store_stats st;
    sb_message *m;
    uint64_t id = 0, half, ids[512];
    loaded *l;
    int rc, done = 0;

    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    open_with(f, 0, 0, 256 * 1024);
    start(f);
    while ((rc = publish(f, id + 1, big, &q1, 1)) == 0)
        id++;
    assert_int_equal(rc, SB_ENOSPC);
    assert_true(id > 20);
    /* (degraded only until the next commit: an idle store probes itself) */
    sb_store_get_stats(f->s, &st);
    assert_true(st.failed_commits >= 1);
    assert_non_null(strstr(st.last_error, f->path));

    /* A publish and an ack in one group: the publish is refused, the ack is
     * retried on its own and frees space. */
    m = msg(id + 1, "t/x", big);
    publish_op(&pub, m, &q1, 1);
    pub.cb = count_cb;
    pub.ctx = &done;
    memset(&ackop, 0, sizeof(ackop));
    ackop.type = SB_OP_ACK;
    ackop.u.ack.queue_id = 1;
    ackop.u.ack.first_id = 1;
    half = id / 2;
    ackop.u.ack.last_id = half;
    ackop.cb = count_cb;
    ackop.ctx = &done;
    assert_int_equal(sb_store_submit(f->s, &pub), 0);
    assert_int_equal(sb_store_submit(f->s, &ackop), 0);
    run_until(f, &done, 2);
    assert_int_equal(pub.status, SB_ENOSPC);
    assert_int_equal(ackop.status, 0);
    assert_false(sb_store_degraded(f->s));
    /* Space is back. */
    assert_int_equal(do_op(f, &pub), 0);
    sb_message_unref(m);
    id++;

    /* Fill up again, then reopen with a larger limit. */
    while ((rc = publish(f, id + 1, big, &q1, 1)) == 0)
        id++;
    assert_int_equal(rc, SB_ENOSPC);
    shut(f);
    open_with(f, 0, 0, 1024 * 1024);
    start(f);
    assert_int_equal(publish(f, id + 1, big, &q1, 1), 0);
    id++;
    l = reload_entries(f);
    /* Every committed publish is there, in order, minus the acked half. */
    {
        size_t n = ids_of(l, 1, ids, 512);
        assert_int_equal(n, id - half);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(ids[i], half + 1 + i);
    }
    loaded_free(l);
}

static void test_io_error(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op pub, ackop;
    sb_message *m;
    loaded *l;
    int done = 0;

    open_start(f);
    for (uint64_t i = 1; i <= 4; i++)
        assert_int_equal(publish(f, i, "p", &q1, 1), 0);
    vfs_shim_fail_syncs(1);
    m = msg(5, "t/x", "lost");
    publish_op(&pub, m, &q1, 1);
    pub.sync = 1;
    pub.cb = count_cb;
    pub.ctx = &done;
    memset(&ackop, 0, sizeof(ackop));
    ackop.type = SB_OP_ACK;
    ackop.sync = 1;
    ackop.u.ack.queue_id = 1;
    ackop.u.ack.first_id = 1;
    ackop.u.ack.last_id = 2;
    ackop.cb = count_cb;
    ackop.ctx = &done;
    assert_int_equal(sb_store_submit(f->s, &pub), 0);
    assert_int_equal(sb_store_submit(f->s, &ackop), 0);
    run_until(f, &done, 1);
    assert_int_equal(pub.status, SB_EIO);
    assert_int_equal(done, 1); /* the ack is kept */
    run_until_pred(f, is_degraded);
    vfs_shim_fail_syncs(0);
    run_until(f, &done, 2);
    assert_int_equal(ackop.status, 0);
    assert_false(sb_store_degraded(f->s));
    assert_int_equal(do_op(f, &pub), 0);
    sb_message_unref(m);

    /* A failing WAL write fails the group the same way. With nothing else
     * to commit (the broker refuses publishes while degraded), the store
     * probes by itself and recovers once writes work again. */
    vfs_shim_fail_wal_writes(1);
    assert_int_equal(publish(f, 6, "nope", &q1, 1), SB_EIO);
    assert_true(sb_store_degraded(f->s));
    vfs_shim_fail_wal_writes(0);
    run_until_pred(f, is_healthy);
    assert_int_equal(publish(f, 7, "yes", &q1, 1), 0);

    l = reload_entries(f);
    {
        uint64_t ids[8];
        assert_int_equal(ids_of(l, 1, ids, 8), 4);
        assert_int_equal(ids[0], 3);
        assert_int_equal(ids[1], 4);
        assert_int_equal(ids[2], 5);
        assert_int_equal(ids[3], 7);
    }
    loaded_free(l);
}

static void test_stop_while_degraded(void **state)
{
    fx *f = *state;
    sb_store_op put = {0};
    int done = 0;
    open_start(f);
    vfs_shim_fail_syncs(1);
    put.type = SB_OP_QUEUE_PUT; /* a change that must be written */
    put.sync = 1;
    put.u.queue_put.id = 1;
    put.u.queue_put.name = "q";
    put.u.queue_put.filters = &any_filter;
    put.u.queue_put.filter_count = 1;
    put.cb = count_cb;
    put.ctx = &done;
    assert_int_equal(sb_store_submit(f->s, &put), 0);
    run_until_pred(f, is_degraded);
    assert_int_equal(done, 0); /* kept for a retry */
    sb_store_stop(f->s);       /* gives up on the retry instead of hanging */
    vfs_shim_fail_syncs(0);
    assert_int_equal(done, 1);
    assert_int_equal(put.status, SB_EIO);
}

static void test_stop_drains(void **state)
{
    fx *f = *state;
    sb_store_op *ops = calloc(1000, sizeof(*ops)), late = {0};
    int done = 0;
    assert_non_null(ops);
    open_start(f);
    for (int i = 0; i < 1000; i++) {
        ops[i].type = SB_OP_ACK;
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    sb_store_stop(f->s);
    assert_int_equal(done, 1000);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(ops[i].status, 0);
    late.type = SB_OP_ACK;
    assert_int_equal(sb_store_submit(f->s, &late), SB_ESHUTDOWN);
    free(ops);
}

static void test_stop_before_start(void **state)
{
    fx *f = *state;
    sb_store_op op = {0};
    int done = 0;
    open_with(f, 0, 0, 0);
    op.type = SB_OP_ACK;
    op.cb = count_cb;
    op.ctx = &done;
    assert_int_equal(sb_store_submit(f->s, &op), 0);
    sb_store_stop(f->s);
    assert_int_equal(done, 1);
    assert_int_equal(op.status, SB_ESHUTDOWN);
}

static void close_cb(sb_store_op *op, void *ctx)
{
    fx *f = ctx;
    (void)op;
    sb_store_close(f->s);
    f->s = NULL;
}

static void test_close_in_callback(void **state)
{
    fx *f = *state;
    sb_store_op ops[3];
    int done = 0;
    memset(ops, 0, sizeof(ops));
    open_start(f);
    for (int i = 0; i < 3; i++) {
        ops[i].type = SB_OP_ACK;
        ops[i].cb = i == 0 ? close_cb : count_cb;
        ops[i].ctx = i == 0 ? (void *)f : (void *)&done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    while (f->s != NULL)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(done, 2); /* the later callbacks ran during close */
}

/* sb_store_close whose stop delivers the last callbacks itself, one of
 * which closes the store too: freed once (ASan sees a second free). */
static void test_close_in_close_drain(void **state)
{
    fx *f = *state;
    sb_store_op op = {0};
    sb_store *s;
    open_start(f);
    s = f->s;
    op.type = SB_OP_ACK;
    op.cb = close_cb;
    op.ctx = f;
    assert_int_equal(sb_store_submit(s, &op), 0);
    sb_store_close(s); /* the op completes in its stop's drain */
    assert_null(f->s);
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* ---- refusals ----------------------------------------------------------- */

static int open_err(fx *f, sb_error *err)
{
    sb_store_options o = {0};
    sb_store *s = NULL;
    int rc;
    o.path = f->path;
    memset(err, 0, sizeof(*err));
    rc = sb_store_open(&s, &o, err);
    if (rc == 0)
        sb_store_close(s);
    else
        assert_null(s);
    return rc;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static void make_db(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_foreign(void **state)
{
    fx *f = *state;
    sb_error err;
    const char *text = "broker:\n  data_dir: ./data\n";

    write_file(f->path, text, strlen(text));
    assert_int_equal(open_err(f, &err), SB_EFOREIGN);
    assert_non_null(strstr(err.msg, f->path));
    remove(f->path);

    write_file(f->path, "SQLite", 6); /* too short to be SQLite */
    assert_int_equal(open_err(f, &err), SB_EFOREIGN);
    remove(f->path);

    make_db(f->path, "PRAGMA application_id = 1234; CREATE TABLE t(a);");
    assert_int_equal(open_err(f, &err), SB_EFOREIGN);
    assert_non_null(strstr(err.msg, f->path));
    remove(f->path);

    make_db(f->path, "CREATE TABLE entries(a);");
    assert_int_equal(open_err(f, &err), SB_EFOREIGN);
    remove(f->path);

    /* An empty file is a new database. */
    write_file(f->path, "", 0);
    assert_int_equal(open_err(f, &err), 0);
    /* So is an empty SQLite database without application_id. */
    remove(f->path);
    make_db(f->path, "PRAGMA user_version = 0;");
    assert_int_equal(open_err(f, &err), 0);
    assert_int_equal(open_err(f, &err), 0); /* and it is ours now */
}

static void test_newer_version(void **state)
{
    fx *f = *state;
    sb_error err;
    char sql[128];
    snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             (int)SB_STORE_APPLICATION_ID, SB_STORE_SCHEMA_VERSION + 1);
    make_db(f->path, sql);
    assert_int_equal(open_err(f, &err), SB_EVERSION);
    assert_non_null(strstr(err.msg, f->path));
}

static void copy_golden(fx *f, const char *name)
{
    const char *data = getenv("SB_TEST_DATA");
    char src[1200];
    FILE *in;
    char buf[65536];
    size_t n;
    assert_non_null(data);
    snprintf(src, sizeof(src), "%s/storage/%s", data, name);
    in = fopen(src, "rb");
    if (in == NULL)
        fail_msg("missing golden file %s", src);
    n = fread(buf, 1, sizeof(buf), in);
    assert_true(n > 0 && n < sizeof(buf)); /* golden files are < 64 KiB */
    fclose(in);
    write_file(f->path, buf, n);
}

static void test_corrupt(void **state)
{
    fx *f = *state;
    static const char *const files[] = {"corrupt_header.db", "corrupt_schema.db",
                                        "corrupt_pages.db"};
    sb_error err;
    loaded *l;
    copy_golden(f, "valid.db");
    l = reload_entries(f); /* 3 messages in 2 queues, one dead-lettered */
    assert_int_equal(l->n, 5);
    assert_string_equal(sb_message_header(l->e[0].m, "content-type"), "application/json");
    loaded_free(l);
    sb_store_close(f->s);
    f->s = NULL;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        int rc;
        copy_golden(f, files[i]);
        rc = open_err(f, &err);
        if (rc != SB_ECORRUPT)
            fail_msg("%s: %s (%s)", files[i], err.msg, sb_errname(rc));
        assert_non_null(strstr(err.msg, f->path));
    }
}

static void test_busy(void **state)
{
    fx *f = *state;
    sb_error err;
    open_start(f);
    assert_int_equal(open_err(f, &err), SB_EBUSY);
    assert_non_null(strstr(err.msg, "in use by another process"));
    assert_non_null(strstr(err.msg, f->path));
    shut(f);
    assert_int_equal(open_err(f, &err), 0);
}

/* ---- subscriptions as data (schema version 2) ---------------------------- */

static void test_queue_filters(void **state)
{
    fx *f = *state;
    const sb_sub_filter three[] = {{"a/+", 0}, {"b/#", 1}, {"c", 2}};
    const sb_sub_filter one[] = {{"z/#", SB_QOS_NONE}};
    sb_store_queue q = {7, "mqtt/x", three, 3, "{\"kind\":\"client\"}", "mqtt", "alice"};
    sb_store_queue route = {8, "r", one, 1, "{\"kind\":\"route\"}", NULL, NULL};
    sb_store_queue empty = {9, "mqtt/y", NULL, 0, NULL, "mqtt", NULL};
    sb_store_op del = {0};
    qlist ql = {0};
    sb_error err = {0};

    open_start(f);
    assert_int_equal(queue_put_def(f, &q), 0);
    assert_int_equal(queue_put_def(f, &route), 0);
    assert_int_equal(queue_put_def(f, &empty), 0);
    shut(f);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 3);
    assert_string_equal(ql.q[0].filter, "a/+\nb/#\nc");
    assert_string_equal(ql.q[0].qos, "012");
    assert_string_equal(ql.q[0].protocol, "mqtt");
    assert_string_equal(ql.q[0].owner, "alice");
    assert_string_equal(ql.q[1].filter, "z/#");
    assert_string_equal(ql.q[1].qos, "-");
    assert_string_equal(ql.q[1].protocol, "(null)");
    assert_string_equal(ql.q[2].filter, "");
    assert_string_equal(ql.q[2].owner, "(null)");
    start(f);

    /* A put replaces every filter; a delete takes them along. */
    q.filters = one;
    q.filter_count = 1;
    q.owner = NULL;
    assert_int_equal(queue_put_def(f, &q), 0);
    del.type = SB_OP_QUEUE_DELETE;
    del.u.queue_delete.queue_id = 8;
    assert_int_equal(do_op(f, &del), 0);
    /* No filter string: nothing written, the old definition stays. */
    route.id = 9;
    route.filters = (const sb_sub_filter[]){{NULL, 0}};
    assert_int_equal(queue_put_def(f, &route), SB_EINVAL);
    shut(f);
    open_with(f, 0, 0, 0);
    memset(&ql, 0, sizeof(ql));
    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 2);
    assert_int_equal(ql.q[0].id, 7);
    assert_string_equal(ql.q[0].filter, "z/#");
    assert_string_equal(ql.q[0].qos, "-");
    assert_string_equal(ql.q[0].owner, "(null)");
    assert_int_equal(ql.q[1].id, 9);
    assert_string_equal(ql.q[1].name, "mqtt/y");
    shut(f);
    {
        sqlite3 *db;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
        assert_int_equal(
            sqlite3_prepare_v2(db, "SELECT count(*) FROM queue_filters", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), 1); /* queue 8's went with it */
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
}

/* The rows of `sql` on the database at path as text: columns '|'-joined,
 * rows '\n'-terminated (NULL as "~"). Caller frees. */
static char *dump(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    size_t len = 0, cap = 4096;
    char *out = malloc(cap);
    int rc;
    assert_non_null(out);
    out[0] = '\0';
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int c = 0; c < sqlite3_column_count(st); c++) {
            const char *t = (const char *)sqlite3_column_text(st, c);
            size_t n = strlen(t != NULL ? t : "~") + 2;
            if (len + n + 1 > cap) {
                cap = (len + n + 1) * 2;
                out = realloc(out, cap);
                assert_non_null(out);
            }
            len += (size_t)snprintf(out + len, cap - len, "%s%s", c > 0 ? "|" : "",
                                    t != NULL ? t : "~");
        }
        out[len++] = '\n';
        out[len] = '\0';
    }
    assert_int_equal(rc, SQLITE_DONE);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return out;
}

/* ---- per-queue counts (schema version 3) --------------------------------- */

/* sb_store_load_counts as dump text: "queue|entries|bytes" lines. */
static int collect_count(void *ctx, uint32_t queue_id, int64_t count, int64_t bytes)
{
    char *out = ctx;
    size_t len = strlen(out);
    snprintf(out + len, 4096 - len, "%u|%lld|%lld\n", (unsigned)queue_id, (long long)count,
             (long long)bytes);
    return 0;
}

/* What the entries table holds, counted by SQL (the store is closed). */
static char *counted_by_sql(const char *path)
{
    return dump(path, "SELECT queue_id, count(*), sum(" SB_STORE__SIZE_SQL ") FROM entries"
                      " GROUP BY queue_id ORDER BY queue_id");
}

/* Publishes of one group insert their entries with multi-row statements.
 * One of them meets an existing entry in a statement that began with
 * another publish's entries: that publish alone fails, its entries
 * inserted by the statement before are deleted, the others and the
 * counts hold. 13 publishes to 3 queues are 39 entries (statements of
 * 32, 4, 2 and 1): publish 10's entries are rows 30..32, across the
 * first two. */
static void test_publish_run_conflict(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1, q3 = 3, q123[13][3];
    sb_store_op ops[13];
    sb_message *ms[13];
    char got[4096] = "", *want;
    sb_error err;
    loaded *l;
    int done = 0;

    open_start(f);
    assert_int_equal(publish(f, 110, "first", &q3, 1), 0);
    assert_int_equal(publish(f, 200, "unrelated", &q1, 1), 0);
    sb_store_test_hold(f->s, 1);
    for (int i = 0; i < 13; i++) {
        for (int k = 0; k < 3; k++)
            q123[i][k] = (uint32_t)k + 1;
        ms[i] = msg(100 + (uint64_t)i, "t/x", i % 2 ? "odd" : "even body");
        publish_op(&ops[i], ms[i], q123[i], 3);
        ops[i].cb = count_cb;
        ops[i].ctx = &done;
        assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
    }
    sb_store_test_hold(f->s, 0);
    run_until(f, &done, 13);
    for (int i = 0; i < 13; i++) {
        assert_int_equal(ops[i].status, i == 10 ? SB_EEXIST : 0);
        sb_message_unref(ms[i]);
    }
    l = reload_entries(f);
    assert_int_equal(l->n, 2 + 12 * 3);
    for (size_t i = 0; i < l->n; i++)
        if (l->e[i].m->id == 110) /* only the one there before */
            assert_int_equal(l->e[i].queue_id, 3);
    loaded_free(l);
    shut(f);
    want = counted_by_sql(f->path);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_counts(f->s, collect_count, got, &err), 0);
    assert_string_equal(got, want);
    assert_non_null(strstr(want, "1|13|"));
    assert_non_null(strstr(want, "3|13|"));
    free(want);
}

/* The counts the store keeps per group commit match the entries through
 * every op that adds or removes them, rolled-back redrives, failed
 * publishes and a queue deleted in the group that filled it. */
static void test_counts(void **state)
{
    fx *f = *state;
    uint32_t both[2] = {1, 2}, q1 = 1, q3 = 3;
    sb_store_op op, list, ops[2];
    sb_dead_letter redrive[2];
    char got[4096] = "";
    char *want;
    sb_error err;
    int n = 0;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "one", "t/#", NULL), 0);
    assert_int_equal(queue_put(f, 2, "two", "t/#", NULL), 0);
    assert_int_equal(queue_put(f, 3, "three", "t/#", NULL), 0);
    for (uint64_t i = 1; i <= 8; i++) {
        sb_message *m = msg(i, i % 2 ? "t/odd" : "t/even-topic", i % 3 ? "short" : "longer body");
        assert_int_equal(sb_message_add_header(m, "source", "counts"), 0);
        publish_op(&op, m, both, 2);
        assert_int_equal(do_op(f, &op), 0);
        sb_message_unref(m);
    }
    assert_int_equal(publish(f, 8, "again", both, 2), SB_EEXIST); /* nothing counted */
    assert_int_equal(ack(f, 1, 1, 2), 0);
    assert_int_equal(ack(f, 1, 2, 3), 0); /* 2 is gone already */
    deadletter_op(&op, 2, 4, NULL, NULL);
    assert_int_equal(do_op(f, &op), 0);
    memset(&op, 0, sizeof(op));
    op.type = SB_OP_TRIM;
    op.u.trim.queue_id = 2;
    op.u.trim.after_id = 4;
    op.u.trim.limit = 2;
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(op.u.trim.removed, 2);

    /* A redrive that fails half-way (its second row is the first, gone by
     * then) counts nothing; then one that holds. */
    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 1);
    memset(redrive, 0, sizeof(redrive));
    redrive[0].dlq_id = list.u.dlq_list.rows[0].dlq_id;
    redrive[0].target_queue_id = 1;
    redrive[0].new_msg_id = 20;
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);
    memset(&op, 0, sizeof(op));
    op.type = SB_OP_DLQ_REDRIVE;
    op.u.dlq_redrive.rows = redrive;
    op.u.dlq_redrive.row_count = 2;
    redrive[1] = redrive[0];
    redrive[1].new_msg_id = 21;
    assert_int_equal(do_op(f, &op), SB_ENOTFOUND);
    op.u.dlq_redrive.row_count = 1;
    assert_int_equal(do_op(f, &op), 0);

    /* Filled and deleted in one group. */
    memset(ops, 0, sizeof(ops));
    {
        sb_message *m = msg(30, "t/x", "gone");
        publish_op(&ops[0], m, &q3, 1);
        ops[1].type = SB_OP_QUEUE_DELETE;
        ops[1].u.queue_delete.queue_id = q3;
        for (int i = 0; i < 2; i++) {
            ops[i].cb = count_cb;
            ops[i].ctx = &n;
            assert_int_equal(sb_store_submit(f->s, &ops[i]), 0);
        }
        run_until(f, &n, 2);
        sb_message_unref(m);
    }
    assert_int_equal(publish(f, 31, "one more", &q1, 1), 0);
    shut(f);

    want = counted_by_sql(f->path);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_counts(f->s, collect_count, got, &err), 0);
    assert_string_equal(got, want);
    /* queue 1: 4..8, 20, 31; queue 2: 1..3, 7, 8 */
    assert_non_null(strstr(want, "1|7|"));
    assert_non_null(strstr(want, "2|5|"));
    assert_null(strstr(want, "3|"));
    free(want);
    shut(f);
    want = dump(f->path, "SELECT count(*) FROM queue_counts WHERE queue_id = 3");
    assert_string_equal(want, "0\n");
    free(want);
}

/* A page-in stops at a row whose headers do not decode: the rows before
 * it come back, and it is named with what is wrong, for the broker to
 * move aside; a dead letter copied from it without its headers reads. */
static void test_page_in_bad_row(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op, list;
    sqlite3 *db;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "one", "t/#", NULL), 0);
    for (uint64_t i = 1; i <= 5; i++) {
        sb_message *m = msg(i, "t/x", "body");
        assert_int_equal(sb_message_add_header(m, "k", "v"), 0);
        publish_op(&op, m, &q1, 1);
        assert_int_equal(do_op(f, &op), 0);
        sb_message_unref(m);
    }
    shut(f);
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE entries SET headers = x'6b6579' WHERE msg_id = 3",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);

    open_start(f);
    memset(&op, 0, sizeof(op));
    op.type = SB_OP_PAGE_IN;
    op.u.page_in.queue_id = 1;
    op.u.page_in.limit = 10;
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(op.u.page_in.row_count, 2);
    assert_int_equal(op.u.page_in.rows[1].msg->id, 2);
    assert_int_equal(op.u.page_in.exhausted, 0);
    assert_int_equal(op.u.page_in.bad_id, 3);
    assert_int_equal(op.u.page_in.bad_size, 3 + 4 + 3);
    assert_string_equal(op.u.page_in.bad_reason, "its headers (3 bytes) do not decode");
    sb_store_page_rows_free(op.u.page_in.rows, op.u.page_in.row_count);

    deadletter_op(&op, 1, 3, "one", NULL);
    op.u.deadletter.no_headers = 1;
    assert_int_equal(do_op(f, &op), 0);
    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 1);
    assert_int_equal(list.u.dlq_list.rows[0].msg->id, 3);
    assert_int_equal(list.u.dlq_list.rows[0].msg->header_count, 0);
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);

    memset(&op, 0, sizeof(op));
    op.type = SB_OP_PAGE_IN;
    op.u.page_in.queue_id = 1;
    op.u.page_in.after_id = 2;
    op.u.page_in.limit = 10;
    assert_int_equal(do_op(f, &op), 0);
    assert_int_equal(op.u.page_in.row_count, 2); /* 4 and 5 */
    assert_int_equal(op.u.page_in.bad_id, 0);
    assert_int_equal(op.u.page_in.exhausted, 1);
    sb_store_page_rows_free(op.u.page_in.rows, op.u.page_in.row_count);
}

/* The first cell's left child of interior table page `root` in the file:
 * the leftmost leaf below it (SQLite's file format, B-tree pages). */
static uint32_t leftmost_child(FILE *fp, uint32_t root, uint32_t page_size)
{
    unsigned char page[65536];
    unsigned off;
    assert_true(page_size <= sizeof page);
    assert_int_equal(fseek(fp, (long)(root - 1) * (long)page_size, SEEK_SET), 0);
    assert_int_equal(fread(page, 1, page_size, fp), page_size);
    assert_int_equal(page[0], 0x05); /* an interior table page */
    off = (unsigned)page[12] << 8 | page[13];
    return (uint32_t)page[off] << 24 | (uint32_t)page[off + 1] << 16 |
           (uint32_t)page[off + 2] << 8 | page[off + 3];
}

/* A damaged page under a queue's stored entries fails the reads of them
 * (SB_ECORRUPT) and nothing else: the store is not degraded, and a
 * publish to another queue commits. Opened as a large database would be
 * (no full check at open, which would refuse it). */
static void test_page_in_corrupt_page(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1, q2 = 2, root, leaf;
    int64_t page_size;
    char payload[1001];
    sb_store_op op;
    sb_store_stats st;
    sqlite3 *db;
    sqlite3_stmt *stmt;
    FILE *fp;
    unsigned char junk[4096];

    open_start(f);
    assert_int_equal(queue_put(f, 1, "one", "t/#", NULL), 0);
    assert_int_equal(queue_put(f, 2, "two", "u/#", NULL), 0);
    memset(payload, 'p', sizeof payload - 1);
    payload[sizeof payload - 1] = '\0';
    for (uint64_t i = 1; i <= 50; i++)
        assert_int_equal(publish(f, i, payload, &q1, 1), 0);
    shut(f);

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT rootpage, (SELECT page_size FROM pragma_page_size)"
                                        " FROM sqlite_master WHERE name = 'entries'",
                                        -1, &stmt, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    root = (uint32_t)sqlite3_column_int64(stmt, 0);
    page_size = sqlite3_column_int64(stmt, 1);
    sqlite3_finalize(stmt);
    assert_int_equal(sqlite3_close(db), SQLITE_OK); /* checkpoints the WAL */
    fp = fopen(f->path, "r+b");
    assert_non_null(fp);
    leaf = leftmost_child(fp, root, (uint32_t)page_size);
    memset(junk, 0xa5, sizeof junk);
    assert_int_equal(fseek(fp, (long)(leaf - 1) * (long)page_size, SEEK_SET), 0);
    assert_int_equal(fwrite(junk, 1, (size_t)page_size, fp), (size_t)page_size);
    assert_int_equal(fclose(fp), 0);

    sb_store_test_quick_check_max(0);
    open_start(f);
    sb_store_test_quick_check_max(64 * 1024 * 1024);
    memset(&op, 0, sizeof(op));
    op.type = SB_OP_PAGE_IN;
    op.u.page_in.queue_id = 1;
    op.u.page_in.limit = 10;
    assert_int_equal(do_op(f, &op), SB_ECORRUPT);
    sb_store_page_rows_free(op.u.page_in.rows, op.u.page_in.row_count);
    sb_store_get_stats(f->s, &st);
    assert_int_equal(st.degraded, 0);
    assert_int_equal(publish(f, 51, "after", &q2, 1), 0);
    sb_store_get_stats(f->s, &st);
    assert_int_equal(st.degraded, 0);
}

/* Everything a version 1 database holds, as dump text. */
static char *dump_v1(const char *path)
{
    static const char *const sql[] = {
        "PRAGMA user_version",
        "SELECT type, name FROM sqlite_master ORDER BY name",
        "SELECT * FROM queues ORDER BY id",
        "SELECT rowid, * FROM entries ORDER BY rowid",
        "SELECT * FROM retained ORDER BY topic",
        "SELECT * FROM dlq ORDER BY id",
        "SELECT * FROM dedup ORDER BY key",
        "SELECT * FROM meta ORDER BY key",
    };
    size_t total = 1;
    char *parts[8], *all;
    for (size_t i = 0; i < 8; i++) {
        parts[i] = dump(path, sql[i]);
        total += strlen(parts[i]) + 2;
    }
    all = malloc(total);
    assert_non_null(all);
    all[0] = '\0';
    for (size_t i = 0; i < 8; i++) {
        strcat(all, parts[i]);
        strcat(all, "-\n");
        free(parts[i]);
    }
    return all;
}

typedef struct log_capture {
    char text[4096];
    size_t len;
} log_capture;

static log_capture captured;

static void capture_line(sb_log_level level, const char *who, const char *text)
{
    (void)level;
    if (captured.len < sizeof(captured.text))
        captured.len +=
            (size_t)snprintf(captured.text + captured.len, sizeof(captured.text) - captured.len,
                             "[%s] %s\n", who != NULL ? who : "-", text);
}

static void capture_start(void)
{
    memset(&captured, 0, sizeof(captured));
    sb_log_configure(SB_LOG_INFO, getenv("SB_TEST_LOG") != NULL, NULL);
    sb_log_set_sink(capture_line, SB_LOG_INFO);
}

static void capture_stop(void)
{
    sb_log_set_sink(NULL, SB_LOG_OFF);
    sb_log_configure(getenv("SB_TEST_LOG") ? SB_LOG_DEBUG : SB_LOG_OFF, 1, NULL);
}

static const char *find_queue(const qlist *ql, const char *name, int *index)
{
    *index = 0;
    for (int i = 0; i < ql->n; i++)
        if (strcmp(ql->q[i].name, name) == 0) {
            *index = i;
            return ql->q[i].name;
        }
    fail_msg("queue %s is missing", name);
    return NULL;
}

/* v1-golden.db (tests/data/storage/README): every queue, filter, granted
 * QoS, owner, message, retained value, dead letter and dedup key of the
 * store broker d105b97 wrote is there after the migration to version 2. */
static void test_migrate_golden(void **state)
{
    static const struct {
        const char *name, *filter, *qos, *protocol, *owner;
    } want[] = {
        {"orders", "orders/#\ninvoices/+/paid", "--", "(null)", "(null)"},
        {"to-plant:plant-out", "plant/#", "-", "(null)", "(null)"},
        {"audit", "audit/#", "-", "(null)", "(null)"},
        {"watch", "sensors/+/temp", "-", "(null)", "(null)"},
        {"mqtt/golden-alice", "sensors/+/temp\norders/#\nalerts/#", "012", "mqtt", "alice"},
        {"mqtt/golden-anon", "plant/#", "1", "mqtt", "(null)"},
    };
    /* queue id, then topic and payload, in insertion order */
    static const struct {
        uint32_t queue;
        uint64_t id;
        const char *topic, *payload;
    } entries[] = {
        {5, 1, "orders/eu", "order 1"},
        {1, 1, "orders/eu", "order 1"},
        {1, 2, "invoices/7/paid", "invoice 7 paid"},
        {5, 3, "sensors/boiler/temp", "81.5"},
        {4, 3, "sensors/boiler/temp", "81.5"},
        {5, 4, "alerts/boiler", "overheat"},
        {6, 5, "plant/line1", "start"},
        {2, 5, "plant/line1", "start"},
    };
    fx *f = *state;
    char *before, *after, *counts_want, counts_got[4096] = "", migrating[96], migrated[96];
    qlist ql = {0};
    rlist rl = {0};
    dlist dl = {0};
    loaded *l = calloc(1, sizeof(*l));
    sb_error err = {0};
    sb_store_op list;
    uint64_t max_msg;
    uint32_t max_queue;

    assert_non_null(l);
    copy_golden(f, "v1-golden.db");
    before = dump_v1(f->path);
    assert_non_null(strstr(before, "\"meta\":\"012\\nowner=alice\"")); /* really version 1 */
    counts_want = counted_by_sql(f->path);

    capture_start();
    open_with(f, 0, 0, 0);
    capture_stop();
    snprintf(migrating, sizeof(migrating), "schema version 1, migrating to version %d",
             SB_STORE_SCHEMA_VERSION);
    snprintf(migrated, sizeof(migrated), "migrated from schema version 1 to %d",
             SB_STORE_SCHEMA_VERSION);
    if (strstr(captured.text, migrating) == NULL ||
        strstr(captured.text, "6 queues, 9 filters as rows, 2 MQTT sessions (1 with an owner)") ==
            NULL ||
        strstr(captured.text, "counting each queue's stored messages once") == NULL ||
        strstr(captured.text, "8 stored messages (480 bytes) in 5 queues counted") == NULL ||
        strstr(captured.text, migrated) == NULL)
        fail_msg("the migration's log:\n%s", captured.text);
    assert_int_equal(sb_store_load_counts(f->s, collect_count, counts_got, &err), 0);
    assert_string_equal(counts_got, counts_want);
    free(counts_want);

    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 6);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int k;
        find_queue(&ql, want[i].name, &k);
        assert_int_equal(ql.q[k].id, i + 1);
        assert_string_equal(ql.q[k].filter, want[i].filter);
        assert_string_equal(ql.q[k].qos, want[i].qos);
        assert_string_equal(ql.q[k].protocol, want[i].protocol);
        assert_string_equal(ql.q[k].owner, want[i].owner);
        assert_null(strstr(ql.q[k].settings, "meta"));
    }
    assert_non_null(strstr(ql.q[3].settings, "\"max_attempts\":5"));
    assert_non_null(strstr(ql.q[4].settings, "\"expire_ms\":2592000000"));

    assert_int_equal(sb_store_load_entries(f->s, collect_entry, l, &err), 0);
    assert_int_equal(l->n, sizeof(entries) / sizeof(entries[0]));
    for (size_t i = 0; i < l->n; i++) {
        assert_int_equal(l->e[i].queue_id, entries[i].queue);
        assert_int_equal(l->e[i].m->id, entries[i].id);
        assert_string_equal(l->e[i].m->topic, entries[i].topic);
        assert_int_equal(l->e[i].m->payload_len, strlen(entries[i].payload));
        assert_memory_equal(l->e[i].m->payload, entries[i].payload, strlen(entries[i].payload));
    }
    assert_string_equal(sb_message_header(l->e[0].m, "order-id"), "1");
    assert_string_equal(sb_message_header(l->e[0].m, "content-type"), "text/plain");
    assert_string_equal(sb_message_header(l->e[5].m, "mqtt-qos"), "2"); /* alerts/boiler */
    loaded_free(l);

    assert_int_equal(sb_store_load_retained(f->s, collect_retained, &rl, &err), 0);
    assert_int_equal(rl.n, 3);
    assert_string_equal(rl.m[0]->topic, "invoices/7/paid");
    assert_string_equal(rl.m[1]->topic, "orders/eu");
    assert_string_equal(rl.m[2]->topic, "status/boiler");
    assert_int_equal(rl.m[2]->payload_len, 2);
    rlist_free(&rl);
    assert_int_equal(sb_store_load_dedup(f->s, collect_dedup, &dl, &err), 0);
    assert_int_equal(dl.n, 1);
    assert_string_equal(dl.key[0], "order-id=1");
    assert_int_equal(sb_store_max_ids(f->s, &max_msg, &max_queue, &err), 0);
    assert_int_equal(max_msg, 7);
    assert_int_equal(max_queue, 6);

    start(f);
    dlq_list(f, &list, NULL, 0, 0);
    assert_int_equal(list.u.dlq_list.row_count, 1);
    assert_string_equal(list.u.dlq_list.rows[0].queue_name, "audit");
    assert_string_equal(list.u.dlq_list.rows[0].msg->topic, "audit/login");
    assert_string_equal(list.u.dlq_list.rows[0].reason, "golden: cannot parse (after 1 attempts)");
    assert_int_equal(list.u.dlq_list.rows[0].attempts, 1);
    sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);
    shut(f);

    /* The current version now, the old column and the meta text gone;
     * opening again migrates nothing and changes nothing. */
    after = dump(f->path, "PRAGMA user_version");
    assert_int_equal(atoi(after), SB_STORE_SCHEMA_VERSION);
    free(after);
    after = dump(f->path, "SELECT group_concat(name) FROM pragma_table_info('queues')");
    assert_string_equal(after, "id,name,settings,protocol,owner\n");
    free(after);
    after = dump(f->path, "SELECT * FROM queue_filters ORDER BY queue_id, pos");
    capture_start();
    open_with(f, 0, 0, 0);
    capture_stop();
    assert_null(strstr(captured.text, "schema version"));
    shut(f);
    {
        char *again = dump(f->path, "SELECT * FROM queue_filters ORDER BY queue_id, pos");
        assert_string_equal(again, after);
        free(again);
    }
    free(after);
    free(before);
}

/* Fails the migration at the step whose number is fail_at (counted from
 * 0), counting the steps it passes. */
static int fail_at, steps_seen;

static int fail_step(const char *step)
{
    (void)step;
    return steps_seen++ == fail_at;
}

/* A migration that fails at any of its steps leaves the version 1 database
 * as it was, says which step failed, and succeeds at the next open. */
static void test_migrate_failure(void **state)
{
    fx *f = *state;
    char *before, *after, want[96];
    sb_error err;
    int rc;

    copy_golden(f, "v1-golden.db");
    before = dump_v1(f->path);
    for (fail_at = 0;; fail_at++) {
        steps_seen = 0;
        sb_store_test_migration_hook(fail_step);
        rc = open_err(f, &err);
        sb_store_test_migration_hook(NULL);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_EIO);
        assert_non_null(strstr(err.msg, f->path));
        snprintf(want, sizeof(want), "schema migration from version 1 to %d failed (",
                 SB_STORE_SCHEMA_VERSION);
        if (strstr(err.msg, want) == NULL)
            fail_msg("step %d: %s", fail_at, err.msg);
        after = dump_v1(f->path);
        if (strcmp(before, after) != 0)
            fail_msg("step %d (%s) changed the database:\n%s\nnow:\n%s", fail_at, err.msg, before,
                     after);
        free(after);
    }
    print_message("a failure at each of %d steps left version 1\n", fail_at);
    /* begin, tables, 6 queues, finish, (version 3) table, counts, stamp,
     * commit */
    assert_int_equal(fail_at, 13);
    after = dump(f->path, "PRAGMA user_version");
    assert_int_equal(atoi(after), SB_STORE_SCHEMA_VERSION);
    free(after);
    free(before);
}

/* The child of test_migrate_crash: dies in the middle of the migration,
 * its transaction open (everything converted, the version stamped, no
 * COMMIT), as a power cut or a kill would leave it. */
#define CRASH_EXIT 42

static int die_before_commit(const char *step)
{
    if (strcmp(step, "committing") == 0)
        _Exit(CRASH_EXIT);
    return 0;
}

static int crash_child(const char *path)
{
    sb_store_options o = {0};
    sb_store *s;
    sb_error err;
    o.path = path;
    sb_store_test_migration_hook(die_before_commit);
    if (sb_store_open(&s, &o, &err) != 0)
        fprintf(stderr, "open: %s\n", err.msg);
    return 1; /* not reached when the hook ran */
}

static int64_t child_status;

static void on_child_exit(uv_process_t *p, int64_t status, int signal)
{
    (void)signal;
    child_status = status;
    uv_close((uv_handle_t *)p, NULL);
}

static void test_migrate_crash(void **state)
{
    fx *f = *state;
    char exe[1024], *before, *after;
    size_t n = sizeof(exe);
    char *args[4];
    uv_process_options_t po = {0};
    uv_stdio_container_t stdio[3];
    uv_process_t proc;
    qlist ql = {0};
    sb_error err = {0};

    copy_golden(f, "v1-golden.db");
    before = dump_v1(f->path);
    assert_int_equal(uv_exepath(exe, &n), 0);
    args[0] = exe;
    args[1] = "--migrate-and-crash";
    args[2] = f->path;
    args[3] = NULL;
    for (int i = 0; i < 3; i++) {
        stdio[i].flags = UV_INHERIT_FD;
        stdio[i].data.fd = i;
    }
    po.file = exe;
    po.args = args;
    po.exit_cb = on_child_exit;
    po.stdio = stdio;
    po.stdio_count = 3;
    child_status = -1;
    assert_int_equal(uv_spawn(&f->loop, &proc, &po), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(child_status, CRASH_EXIT);

    after = dump_v1(f->path); /* SQLite rolls the open transaction back */
    assert_string_equal(after, before);
    free(after);
    free(before);
    open_with(f, 0, 0, 0);
    assert_int_equal(sb_store_load_queues(f->s, collect_queue, &ql, &err), 0);
    assert_int_equal(ql.n, 6);
    assert_string_equal(ql.q[4].qos, "012");
    assert_string_equal(ql.q[4].owner, "alice");
}

/* A schema version no broker writes, and a version 1 database without the
 * tables of version 1: refused as corrupt, named, and left alone. */
static void test_bad_schema(void **state)
{
    fx *f = *state;
    char sql[160], *before, *after;
    sb_error err;

    snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = -3;",
             (int)SB_STORE_APPLICATION_ID);
    make_db(f->path, sql);
    assert_int_equal(open_err(f, &err), SB_ECORRUPT);
    assert_non_null(strstr(err.msg, "schema version -3"));
    assert_non_null(strstr(err.msg, f->path));
    remove(f->path);

    snprintf(sql, sizeof(sql),
             "PRAGMA application_id = %d; PRAGMA user_version = 1; CREATE TABLE entries(a);",
             (int)SB_STORE_APPLICATION_ID);
    make_db(f->path, sql);
    before = dump(f->path, "SELECT name FROM sqlite_master UNION ALL SELECT * FROM "
                           "pragma_user_version");
    assert_int_equal(open_err(f, &err), SB_ECORRUPT);
    if (strstr(err.msg, "schema migration from version 1 to ") == NULL ||
        strstr(err.msg, "queues") == NULL)
        fail_msg("%s", err.msg);
    after = dump(f->path, "SELECT name FROM sqlite_master UNION ALL SELECT * FROM "
                          "pragma_user_version");
    assert_string_equal(after, before);
    free(after);
    free(before);
}

/* ---- out of memory ------------------------------------------------------ */

static void test_oom_open_load(void **state)
{
    fx *f = *state;
    uint32_t q12[2] = {1, 2};
    sb_store_op op;
    sb_message *m;
    int succeeded = 0;

    open_start(f);
    assert_int_equal(queue_put(f, 1, "a", "#", "{}"), 0);
    for (uint64_t i = 1; i <= 5; i++) {
        m = msg(i, "t/oom", "payload");
        assert_int_equal(sb_message_add_header(m, "h1", "v1"), 0);
        assert_int_equal(sb_message_add_header(m, "h2", "v2"), 0);
        publish_op(&op, m, q12, 2);
        op.u.publish.retain = 1;
        op.u.publish.dedup_key = i == 1 ? "key" : NULL;
        assert_int_equal(do_op(f, &op), 0);
        sb_message_unref(m);
    }
    shut(f);

    for (long n = 0; n < 200 && !succeeded; n++) {
        sb_store_options o = {0};
        sb_store *s = NULL;
        sb_error err;
        loaded *l = calloc(1, sizeof(*l));
        rlist rl = {0};
        qlist ql = {0};
        dlist dl = {0};
        int rc;
        o.path = f->path;
        sb_alloc_fail_after(n);
        rc = sb_store_open(&s, &o, &err);
        if (rc == 0)
            rc = sb_store_load_queues(s, collect_queue, &ql, &err);
        if (rc == 0)
            rc = sb_store_load_entries(s, collect_entry, l, &err);
        if (rc == 0)
            rc = sb_store_load_retained(s, collect_retained, &rl, &err);
        if (rc == 0)
            rc = sb_store_load_dedup(s, collect_dedup, &dl, &err);
        sb_alloc_fail_after(-1);
        if (rc == 0) {
            succeeded = 1;
            assert_int_equal(l->n, 10);
            assert_int_equal(rl.n, 1);
        } else {
            assert_int_equal(rc, SB_ENOMEM);
        }
        rlist_free(&rl);
        loaded_free(l);
        sb_store_close(s);
    }
    assert_true(succeeded);
}

static void test_oom_store_thread(void **state)
{
    fx *f = *state;
    uint32_t q1 = 1;
    sb_store_op op, list;
    sb_message *m;
    int list_ok = 0, publish_ok = 0;

    open_start(f);
    for (uint64_t i = 1; i <= 3; i++) {
        m = msg(i, "t", "x");
        assert_int_equal(sb_message_add_header(m, "k", "v"), 0);
        publish_op(&op, m, &q1, 1);
        assert_int_equal(do_op(f, &op), 0);
        deadletter_op(&op, 1, i, "q", m);
        assert_int_equal(do_op(f, &op), 0);
        sb_message_unref(m);
    }
    for (long n = 0; n < 60 && !list_ok; n++) {
        sb_store_test_alloc_fail_after(f->s, n);
        memset(&list, 0, sizeof(list));
        list.type = SB_OP_DLQ_LIST;
        int rc = do_op(f, &list);
        sb_store_test_alloc_fail_after(f->s, -1);
        if (rc == 0) {
            list_ok = 1;
            assert_int_equal(list.u.dlq_list.row_count, 3);
        } else {
            assert_int_equal(rc, SB_ENOMEM);
            assert_null(list.u.dlq_list.rows);
        }
        sb_store_dlq_rows_free(list.u.dlq_list.rows, list.u.dlq_list.row_count);
    }
    assert_true(list_ok);
    for (long n = 0; n < 10 && !publish_ok; n++) {
        m = msg(10 + (uint64_t)n, "t", "x");
        assert_int_equal(sb_message_add_header(m, "k", "v"), 0);
        publish_op(&op, m, &q1, 1);
        sb_store_test_alloc_fail_after(f->s, n);
        int rc = do_op(f, &op);
        sb_store_test_alloc_fail_after(f->s, -1);
        sb_message_unref(m);
        if (rc == 0)
            publish_ok = 1;
        else
            assert_int_equal(rc, SB_ENOMEM);
    }
    assert_true(publish_ok);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_before_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_after_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attempts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadletter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_put_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_run_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_degraded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_before_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_close_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page_in_bad_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page_in_corrupt_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_golden, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oom_open_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oom_store_thread, setup, teardown),
    };
    if (argc == 3 && strcmp(argv[1], "--migrate-and-crash") == 0)
        return crash_child(argv[2]);
    if (vfs_shim_install() != SQLITE_OK)
        return 1;
    /* Failures under test are expected; keep the output to cmocka's. */
    sb_log_configure(getenv("SB_TEST_LOG") ? SB_LOG_DEBUG : SB_LOG_OFF, 1, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
