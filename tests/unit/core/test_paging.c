/*
 * Queues that page from the store, in-process: a window of a few entries
 * (broker.store.queue_window) so that a handful of messages crosses it.
 * Covers delivery order across the window boundary, the first window read
 * at start and the rest as consumers take them, redelivery after a
 * restart, a reload to memory-only deferred while messages are stored
 * (or redriven), a page-in out of memory delaying only its own queue,
 * TTL expiry and drop-oldest of stored entries (acting in the store,
 * without a consumer), dead letters and their redrive, drops while a read
 * is under way, the windows' memory budget (page-ins' reservations counted
 * by live publishes), a stored entry that does not decode, and the
 * read-ahead sized by the consumers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include <sqlite3.h>

#include "core_harness.h"
#include "service/alloc.h"
#include "storage/store_test.h"
#include "storage/schema_int.h"

#define WINDOW "  store: {queue_window: 4}\n"

static const char *const cfg = "routes:\n"
                               "  - {name: q, from: q/#}\n"
                               "  - {name: ttl, from: t/#, ttl: 50ms}\n"
                               "  - name: drop\n"
                               "    from: d/#\n"
                               "    max_depth: 6\n"
                               "    overflow: drop-oldest\n"
                               "  - name: dead\n"
                               "    from: x/#\n"
                               "    retry: {max_attempts: 1, backoff: 10ms}\n";

static int paging_setup(void **state)
{
    int rc = core_setup(state);
    if (rc == 0)
        ((core_fx *)*state)->broker_extra = WINDOW;
    return rc;
}

/* A consumer of `sub` that acknowledges (ack) or holds what it gets. */
static fake_consumer *consumer(core_fx *f, const char *sub, int window, int ack)
{
    fake_consumer *c = malloc(sizeof(*c));
    sb_error err;
    assert_non_null(c);
    assert_true(f->consumer_count < CORE_MAX_CONSUMERS);
    fake_consumer_init(c, sb_broker_loop(f->b), sub, window);
    c->log.mode = ack ? FAKE_ACK : FAKE_HOLD;
    f->consumers[f->consumer_count++] = c;
    if (sb_broker_attach(f->b, sub, &c->c, &err) != 0)
        fail_msg("attach %s: %s", sub, err.msg);
    return c;
}

static void publish_n(core_fx *f, const char *topic, int from, int to)
{
    char payload[32];
    for (int i = from; i <= to; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        core_publish_ok(f, NULL, topic, payload, NULL);
    }
}

/* The same from a producer with a source header. */
static void publish_from(core_fx *f, const char *topic, int from, int to)
{
    const char *const source[] = {"source", "paging", NULL};
    char payload[32];
    for (int i = from; i <= to; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        core_publish_ok(f, NULL, topic, payload, source);
    }
}

/* The log holds m<from>..m<to>, in order, once each. */
static void expect_run(const fake_log *l, size_t at, int from, int to)
{
    char want[32];
    assert_true(l->count >= at + (size_t)(to - from + 1));
    for (int i = from; i <= to; i++) {
        snprintf(want, sizeof want, "m%d", i);
        assert_string_equal(l->recs[at + (size_t)(i - from)].payload, want);
    }
}

/* Stops the broker and checks the counts the store kept per queue
 * (queue_counts) against its entries, counted by SQL. */
static void stop_and_check_counts(core_fx *f)
{
    static const char *const sql[2] = {
        "SELECT coalesce(group_concat(x, ';'), '') FROM (SELECT queue_id || ':' || count(*) ||"
        " ':' || sum(" SB_STORE__SIZE_SQL ") AS x FROM entries GROUP BY queue_id ORDER BY"
        " queue_id)",
        "SELECT coalesce(group_concat(x, ';'), '') FROM (SELECT queue_id || ':' || entries ||"
        " ':' || bytes AS x FROM queue_counts WHERE entries != 0 OR bytes != 0 ORDER BY"
        " queue_id)",
    };
    char path[1100], text[2][2048];
    sqlite3 *db;

    core_stop(f);
    snprintf(path, sizeof path, "%s/switchboard.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(db, sql[i], -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        snprintf(text[i], sizeof text[i], "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    assert_string_equal(text[1], text[0]);
}

static int64_t stat_of(core_fx *f, const char *queue, const char *key)
{
    json_t *st = sb_broker_stats_json(f->b), *qs;
    int64_t v = -1;
    size_t i;
    assert_non_null(st);
    qs = json_object_get(st, "queues");
    for (i = 0; i < json_array_size(qs); i++) {
        json_t *o = json_array_get(qs, i);
        if (strcmp(json_string_value(json_object_get(o, "name")), queue) == 0)
            v = json_integer_value(json_object_get(o, key));
    }
    json_decref(st);
    return v;
}

static void on_admin_done(void *ctx, int status, void *result, const char *why)
{
    int *done = ctx;
    (void)why;
    assert_int_equal(status, 0);
    json_decref(result);
    *done = 1;
}

/* Past the window, messages stay in the store only; a consumer gets them
 * all, in order, read in as it goes. */
static void test_order_across_window(void **state)
{
    core_fx *f = *state;
    sb_queue *q;
    fake_consumer *c;

    core_start(f, cfg);
    q = core_queue(f, "q");
    publish_n(f, "q/1", 1, 20);
    assert_int_equal(q->depth, 4);
    assert_int_equal(q->disk_depth, 16);
    assert_int_equal(stat_of(f, "q", "depth"), 20);
    assert_int_equal(stat_of(f, "q", "resident_depth"), 4);
    assert_int_equal(stat_of(f, "q", "stored_depth"), 16);
    core_check_all(f);

    c = consumer(f, "q", 3, 1);
    CORE_WAIT(f, c->log.count == 20);
    expect_run(&c->log, 0, 1, 20);
    for (size_t i = 0; i < c->log.count; i++)
        assert_int_equal(c->log.recs[i].redelivery, 0);
    assert_int_equal(q->depth, 0);
    assert_int_equal(q->disk_depth, 0);
    core_check_all(f);

    /* Drained: the queue takes new messages into memory again. */
    publish_n(f, "q/1", 21, 22);
    CORE_WAIT(f, c->log.count == 22);
    expect_run(&c->log, 20, 21, 22);
    assert_int_equal(q->disk_depth, 0);

    /* Publishes while a consumer reads the stored part keep their place. */
    c->log.mode = FAKE_HOLD;
    publish_n(f, "q/1", 23, 40);
    for (size_t i = 22; i < c->log.count; i++)
        fake_ack(&c->log.recs[i]);
    c->log.mode = FAKE_ACK;
    publish_n(f, "q/1", 41, 45);
    CORE_WAIT(f, q->depth == 0 && q->disk_depth == 0 && c->log.count == 45);
    for (size_t i = 22; i < c->log.count; i++)
        if (c->log.recs[i].d != NULL)
            fake_ack(&c->log.recs[i]);
    expect_run(&c->log, 22, 23, 45);
    core_check_all(f);
    stop_and_check_counts(f);
}

/* A route made memory-only while its backlog is in the store stays durable
 * until that was read: no message waits in the store for a restart. */
static void test_memory_durability_keeps_backlog(void **state)
{
    static const char *const mem_cfg = "routes:\n"
                                       "  - {name: q, from: q/#, durability: memory}\n";
    core_fx *f = *state;
    fake_consumer *c;
    sb_error err;
    sb_queue *q;

    core_start(f, cfg);
    q = core_queue(f, "q");
    publish_n(f, "q/1", 1, 20);
    assert_int_equal(q->disk_depth, 16);
    assert_int_equal(core_reload(f, mem_cfg, &err), 0);
    CORE_WAIT(f, core_queue(f, "q")->route != NULL &&
                     core_queue(f, "q")->route->durability == SB_DURABILITY_MEMORY);
    q = core_queue(f, "q");
    assert_int_not_equal(q->durability, SB_DURABILITY_MEMORY);
    c = consumer(f, "q", 3, 1);
    CORE_WAIT(f, c->log.count == 20);
    expect_run(&c->log, 0, 1, 20);
    assert_int_equal(q->disk_depth, 0);
    core_check_all(f);
}

/* Stops the broker (if it runs); the rows of its entries table. */
static int stop_and_count_rows(core_fx *f)
{
    char path[1100];
    sqlite3 *db;
    sqlite3_stmt *st;
    int n;

    if (f->b != NULL)
        core_stop(f);
    snprintf(path, sizeof path, "%s/switchboard.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM entries", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return n;
}

/* The same with its window in memory: a memory queue deletes no rows, so
 * the window's messages would stay in the store once acknowledged (and
 * come back after a restart). It turns memory-only when reloaded empty. */
static void test_memory_durability_keeps_window(void **state)
{
    static const char *const mem_cfg = "routes:\n"
                                       "  - {name: q, from: q/#, durability: memory}\n";
    core_fx *f = *state;
    fake_consumer *c;
    sb_error err;
    sb_queue *q;

    core_start(f, cfg);
    publish_n(f, "q/1", 1, 3);
    q = core_queue(f, "q");
    assert_int_equal(q->depth, 3);
    assert_int_equal(q->disk_depth, 0);
    assert_int_equal(core_reload(f, mem_cfg, &err), 0);
    CORE_WAIT(f, core_queue(f, "q")->route != NULL &&
                     core_queue(f, "q")->route->durability == SB_DURABILITY_MEMORY);
    q = core_queue(f, "q");
    assert_int_not_equal(q->durability, SB_DURABILITY_MEMORY);
    c = consumer(f, "q", 3, 1);
    CORE_WAIT(f, c->log.count == 3 && q->depth == 0);
    expect_run(&c->log, 0, 1, 3);

    assert_int_equal(core_reload(f, mem_cfg, &err), 0);
    q = core_queue(f, "q");
    assert_int_equal(q->durability, SB_DURABILITY_MEMORY);
    publish_n(f, "q/1", 4, 4);
    CORE_WAIT(f, c->log.count == 4 && q->depth == 0);
    core_check_all(f);
    assert_int_equal(stop_and_count_rows(f), 0);
}

/* A dead letter on its way back into an empty queue is a stored message
 * too: a reload to memory-only meanwhile must wait, or the redriven row,
 * appended to a memory queue, stays after its acknowledgement (and comes
 * back after a restart). */
static void test_memory_durability_waits_for_redrive(void **state)
{
    static const char *const mem_cfg = "routes:\n"
                                       "  - name: dead\n"
                                       "    from: x/#\n"
                                       "    durability: memory\n"
                                       "    retry: {max_attempts: 1, backoff: 10ms}\n";
    core_fx *f = *state;
    fake_consumer *c;
    sb_error err;
    sb_queue *q;
    int done = 0;

    core_start(f, cfg);
    q = core_queue(f, "dead");
    publish_n(f, "x/1", 1, 1);
    c = consumer(f, "dead", 1, 0);
    CORE_WAIT(f, c->log.count == 1);
    fake_nack(&c->log.recs[0], "poison");
    CORE_WAIT(f, q->dead == 1 && q->depth == 0 && q->disk_depth == 0);
    c->log.mode = FAKE_ACK;

    sb_store_test_hold_before(f->b->store, SB_OP_DLQ_REDRIVE);
    assert_int_equal(sb_broker_dlq_redrive(f->b, "dead", on_admin_done, &done, &err), 0);
    CORE_WAIT(f, q->redriving == 1);
    assert_int_equal(core_reload(f, mem_cfg, &err), 0);
    q = core_queue(f, "dead");
    assert_int_not_equal(q->durability, SB_DURABILITY_MEMORY);
    sb_store_test_hold_before(f->b->store, 0);
    CORE_WAIT(f, done && c->log.count == 2 && q->depth == 0 && q->redriving == 0);
    assert_string_equal(c->log.recs[1].payload, "m1");
    core_check_all(f);
    assert_int_equal(stop_and_count_rows(f), 0);
}

/* Page-ins reserve their bytes of the budget until they complete: a live
 * publish committed meanwhile must count them, or the windows reach twice
 * queue_memory once the page-in lands. */
static void test_live_publish_counts_page_in(void **state)
{
    static const char *const two = "routes:\n"
                                   "  - {name: a, from: a/#}\n"
                                   "  - {name: b, from: b/#}\n";
    core_fx *f = *state;
    char payload[4097];
    fake_pub p[16];
    fake_consumer *c;
    sb_queue *a, *b;
    size_t held;

    f->broker_extra = "  store: {queue_window: 1000, queue_memory: 64KiB}\n";
    core_start(f, two);
    a = core_queue(f, "a");
    b = core_queue(f, "b");
    memset(payload, 'x', 4096);
    payload[4096] = '\0';
    for (int i = 0; i < 40; i++)
        core_publish_ok(f, NULL, "a/1", payload, NULL);
    assert_true(a->disk_depth > 0);
    c = consumer(f, "a", 64, 0);
    CORE_WAIT(f, c->log.count == (size_t)a->depth);
    held = c->log.count;

    /* b's publishes wait in the store ahead of the page-in that a's
     * emptied window asks for, so they commit while it is reserved */
    sb_store_test_hold(f->b->store, 1);
    for (int i = 0; i < 16; i++)
        assert_int_equal(fake_publish(&p[i], f->b, NULL, "b/1", payload, NULL, 0, NULL), 0);
    for (size_t i = 0; i < held; i++)
        fake_ack(&c->log.recs[i]);
    assert_non_null(a->page_op);
    assert_true(f->b->page_reserved > 0);
    sb_store_test_hold(f->b->store, 0);
    for (int i = 0; i < 16; i++)
        assert_int_equal(core_pub_wait(f, &p[i]), 0);
    CORE_WAIT(f, a->page_op == NULL && c->log.count > held);
    /* (a page-in reads by the store's sizes, which may pass the budget by
     * less than a message; without the reservation counted, by as much
     * as it reserved) */
    if (f->b->resident_bytes > 64 * 1024 + 4096)
        fail_msg("the windows hold %lld bytes, over queue_memory (65536)",
                 (long long)f->b->resident_bytes);
    assert_int_equal(b->depth + b->disk_depth, 16);
    core_check_all(f);
}

/* Runs sql on the store (the broker stopped); asserts it changed n rows
 * (n < 0: not checked). */
static void store_exec(core_fx *f, const char *sql, int n)
{
    char path[1100];
    sqlite3 *db;

    snprintf(path, sizeof path, "%s/switchboard.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    if (n >= 0)
        assert_int_equal(sqlite3_changes(db), n);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* A stored message that does not decode (its headers overwritten with 3
 * bytes that are not "key NUL value NUL") and cannot be dead-lettered
 * either (a trigger refuses it) is deleted: its own row, in its own queue,
 * so that it is not read again after a restart. */
static void test_undecodable_row_deleted(void **state)
{
    static const char *const one = "routes:\n"
                                   "  - {name: q, from: q/#}\n";
    core_fx *f = *state;
    fake_consumer *c;
    uint64_t bad;
    char sql[160];
    sb_queue *q;

    core_start(f, one);
    publish_n(f, "q/1", 1, 5);
    bad = core_publish_ok(f, NULL, "q/1", "m6", NULL);
    publish_n(f, "q/1", 7, 8);
    core_stop(f);
    snprintf(sql, sizeof sql, "UPDATE entries SET headers = x'6b6579' WHERE msg_id = %llu",
             (unsigned long long)bad);
    store_exec(f, sql, 1);
    store_exec(f,
               "CREATE TRIGGER refuse_dlq BEFORE INSERT ON dlq"
               " BEGIN SELECT RAISE(ABORT, 'no dead letters here'); END",
               -1);

    core_start(f, one);
    q = core_queue(f, "q");
    c = consumer(f, "q", 2, 1);
    CORE_WAIT(f, c->log.count == 7 && q->depth == 0 && q->disk_depth == 0);
    expect_run(&c->log, 0, 1, 5);
    expect_run(&c->log, 5, 7, 8);
    assert_int_equal(q->dead, 0);
    core_check_all(f);
    assert_int_equal(stop_and_count_rows(f), 0);
}

/* One run of test_move_aside_out_of_memory: the k-th allocation on the
 * loop thread after the page-in that meets the bad row was let go fails.
 * Returns how many failed (0: the run made fewer allocations). */
static long move_aside_run(long k)
{
    static const char *const one = "routes:\n"
                                   "  - {name: q, from: q/#}\n";
    void *state;
    core_fx *f;
    fake_consumer *c;
    uint64_t bad;
    char sql[160];
    json_t *dlq;
    sb_queue *q;
    long failures;

    core_setup(&state);
    f = state;
    f->broker_extra = WINDOW;
    core_start(f, one);
    publish_n(f, "q/1", 1, 5);
    bad = core_publish_ok(f, NULL, "q/1", "m6", NULL);
    publish_n(f, "q/1", 7, 8);
    core_stop(f);
    snprintf(sql, sizeof sql, "UPDATE entries SET headers = x'6b6579' WHERE msg_id = %llu",
             (unsigned long long)bad);
    store_exec(f, sql, 1);

    core_start(f, one);
    q = core_queue(f, "q");
    CORE_WAIT(f, q->depth == 4 && q->page_op == NULL); /* m1..m4 */
    sb_store_test_hold_before(f->b->store, SB_OP_PAGE_IN);
    c = consumer(f, "q", 1, 1);
    CORE_WAIT(f, c->log.count == 4 && q->page_op != NULL); /* m5 and the bad m6 */
    sb_alloc_fail_once(k);
    sb_store_test_hold_before(f->b->store, 0);
    CORE_WAIT(f, q->page_op == NULL);
    failures = sb_alloc_failures();
    sb_alloc_fail_once(-1);

    CORE_WAIT(f, c->log.count == 7 && q->depth == 0 && q->disk_depth == 0);
    /* each once (a delivery out of memory is retried after the next) */
    for (int i = 1; i <= 8; i++) {
        char payload[8];
        snprintf(payload, sizeof payload, "m%d", i);
        assert_int_equal(fake_count(&c->log, payload), i == 6 ? 0 : 1);
    }
    CORE_WAIT(f, q->dead == 1);
    dlq = core_dlq(f, "q");
    assert_int_equal(json_array_size(json_object_get(dlq, "items")), 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(dlq, "items"), 0), "msg_id")),
                     (json_int_t)bad);
    json_decref(dlq);
    core_check_all(f);
    core_teardown(&state);
    return failures;
}

/* Out of memory while a stored message that does not decode is moved
 * aside: it must stay in the stored part, to be read (and dead-lettered)
 * again, never skipped so that the ack range around it deletes it
 * unseen. Each allocation after the page-in fails in turn. */
static void test_move_aside_out_of_memory(void **state)
{
    (void)state;
    for (long k = 0; k < 64; k++)
        if (move_aside_run(k) == 0)
            return;
    fail_msg("the page-in made more than 64 allocations");
}

/* One run of test_page_in_out_of_memory_one_queue: the k-th allocation
 * after a's consumer acknowledges what empties its window fails. Returns
 * 1 if that failed a's page-in, 0 if not, -1 if the run made fewer
 * allocations. */
static int one_queue_run(long k)
{
    static const char *const two = "routes:\n"
                                   "  - {name: a, from: a/#}\n"
                                   "  - {name: b, from: b/#}\n";
    void *state;
    core_fx *f;
    fake_consumer *ca, *cb;
    sb_queue *a, *b;
    long failures;
    size_t na, nb;
    int hit;

    core_setup(&state);
    f = state;
    f->broker_extra = WINDOW;
    core_start(f, two);
    publish_n(f, "a/1", 1, 10);
    publish_n(f, "b/1", 1, 10);
    a = core_queue(f, "a");
    b = core_queue(f, "b");
    ca = consumer(f, "a", 2, 0);
    cb = consumer(f, "b", 2, 0);
    CORE_WAIT(f, ca->log.count == 2 && cb->log.count == 2);
    assert_true(a->disk_depth > 0 && b->disk_depth > 0);

    fake_ack(&ca->log.recs[0]);
    sb_alloc_fail_once(k);
    fake_ack(&ca->log.recs[1]); /* a's window falls to half: a page-in */
    failures = sb_alloc_failures();
    sb_alloc_fail_once(-1);
    hit = failures == 1 && a->page_op == NULL && a->disk_depth > 0;
    if (failures == 0) {
        core_teardown(&state);
        return -1;
    }
    if (hit) {
        /* b reads as usual: a's failure is a's */
        fake_ack(&cb->log.recs[0]);
        fake_ack(&cb->log.recs[1]);
        assert_non_null(b->page_op);
    }
    /* the rest as it comes, and what is held now */
    na = ca->log.count;
    nb = cb->log.count;
    ca->log.mode = cb->log.mode = FAKE_ACK;
    for (size_t i = 2; i < na; i++)
        fake_ack(&ca->log.recs[i]);
    for (size_t i = hit ? 2 : 0; i < nb; i++)
        fake_ack(&cb->log.recs[i]);
    /* a's page-in is tried again by the next housekeeping tick */
    CORE_WAIT(f, a->depth == 0 && a->disk_depth == 0 && b->depth == 0 && b->disk_depth == 0);
    for (int i = 1; i <= 10; i++) {
        char payload[8];
        snprintf(payload, sizeof payload, "m%d", i);
        assert_true(fake_count(&ca->log, payload) >= 1);
        assert_true(fake_count(&cb->log, payload) >= 1);
    }
    core_check_all(f);
    core_teardown(&state);
    return hit;
}

/* A page-in that finds no memory delays that queue's reads only (until
 * the next housekeeping tick at most), not every queue's. Each allocation
 * after the acknowledgement fails in turn; one of them is the page-in's. */
static void test_page_in_out_of_memory_one_queue(void **state)
{
    int hits = 0, rc;
    (void)state;
    for (long k = 0; k < 64; k++) {
        if ((rc = one_queue_run(k)) < 0) {
            assert_int_equal(hits, 1);
            return;
        }
        hits += rc;
    }
    fail_msg("the acknowledgement made more than 64 allocations");
}

/* A restart reads only the first window; the rest follows in order, and
 * what was in flight comes back as a redelivery. */
static void test_restart_reads_first_window(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    sb_queue *q;

    core_start(f, cfg);
    publish_n(f, "q/1", 1, 30);
    c = consumer(f, "q", 2, 0);
    CORE_WAIT(f, c->log.count == 2);
    fake_ack(&c->log.recs[0]); /* m1 done; m2 in flight at the stop */
    stop_and_check_counts(f);

    core_start(f, cfg);
    q = core_queue(f, "q");
    /* counted at once; the first window read on the store thread after */
    assert_int_equal(q->depth + q->disk_depth, 29);
    CORE_WAIT(f, q->depth == 4);
    assert_int_equal(q->disk_depth, 25);
    assert_int_equal(stat_of(f, "q", "depth"), 29);
    core_check_all(f);
    c = consumer(f, "q", 4, 1);
    CORE_WAIT(f, c->log.count == 29);
    expect_run(&c->log, 0, 2, 30);
    assert_int_equal(c->log.recs[0].redelivery, 1);
    assert_int_equal(q->disk_depth, 0);
    core_check_all(f);

    core_stop(f);
    core_start(f, cfg);
    assert_int_equal(core_queue(f, "q")->depth, 0);
    assert_int_equal(core_queue(f, "q")->disk_depth, 0);
}

typedef struct purge_res {
    int done;
    int64_t count, floor;
    int more;
} purge_res;

static void on_purge_batch(void *ctx, int status, void *result, const char *why)
{
    purge_res *p = ctx;
    json_t *o = result;
    (void)why;
    assert_int_equal(status, 0);
    p->count = json_integer_value(json_object_get(o, "count"));
    p->floor = json_integer_value(json_object_get(o, "floor"));
    p->more = json_is_true(json_object_get(o, "more"));
    json_decref(o);
    p->done = 1;
}

static void purge_batch(core_fx *f, int64_t limit, uint64_t floor, purge_res *p)
{
    sb_dlq_batch batch = {0, floor, limit};
    sb_error err;
    memset(p, 0, sizeof *p);
    assert_int_equal(sb_broker_dlq_purge_batch(f->b, "ttl", &batch, on_purge_batch, p, &err), 0);
    CORE_WAIT(f, p->done);
}

/* A purge in batches takes the dead letters there when it began, not
 * those that die meanwhile. */
static void test_purge_batches_stop_at_their_start(void **state)
{
    core_fx *f = *state;
    purge_res p;
    json_t *dlq;
    sb_queue *q;

    core_start(f, cfg);
    q = core_queue(f, "ttl");
    publish_n(f, "t/1", 1, 3);
    CORE_WAIT(f, q->dead == 3);
    purge_batch(f, 2, 0, &p);
    assert_int_equal(p.count, 2);
    assert_true(p.more && p.floor > 0);
    publish_n(f, "t/1", 4, 5); /* they die after the purge began */
    CORE_WAIT(f, q->dead == 5);
    purge_batch(f, 2, (uint64_t)p.floor, &p);
    assert_int_equal(p.count, 1);
    dlq = core_dlq(f, "ttl");
    assert_int_equal(json_array_size(json_object_get(dlq, "items")), 2);
    json_decref(dlq);
}

/* Stored entries expire in the store, without a consumer, to the DLQ. */
static void test_ttl_of_stored_entries(void **state)
{
    core_fx *f = *state;
    sb_queue *q;
    json_t *dlq, *items;

    core_start(f, cfg);
    q = core_queue(f, "ttl");
    publish_from(f, "t/1", 1, 12);
    assert_int_equal(q->disk_depth, 8);
    CORE_WAIT(f, q->expired == 12);
    assert_int_equal(q->depth, 0);
    assert_int_equal(q->disk_depth, 0);
    assert_int_equal(q->dead, 12);
    dlq = core_dlq(f, "ttl");
    items = json_object_get(dlq, "items");
    assert_int_equal(json_array_size(items), 12);
    for (size_t i = 0; i < 12; i++) {
        json_t *d = json_array_get(items, i);
        assert_string_equal(json_string_value(json_object_get(d, "reason")), "expired (ttl)");
        /* expired in the window or in the store: the same dead letter */
        assert_string_equal(json_string_value(json_object_get(d, "source")), "paging");
    }
    json_decref(dlq);
    core_check_all(f);

    /* Gone from the store: a restart finds nothing; stored entries that
     * expired while the broker was down go at the first pass too. */
    publish_n(f, "t/1", 13, 20);
    core_stop(f);
    core_start(f, cfg);
    q = core_queue(f, "ttl");
    CORE_WAIT(f, q->depth == 0 && q->disk_depth == 0);
    CORE_WAIT(f, q->expired == 8);
    stop_and_check_counts(f);
}

/* Drop-oldest drops the window's entries first, then stored ones, in the
 * store; a consumer gets the newest max_depth, in order. */
static void test_drop_oldest_of_stored_entries(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    sb_queue *q;

    core_start(f, cfg);
    q = core_queue(f, "drop");
    publish_n(f, "d/1", 1, 20);
    assert_int_equal(q->depth + q->disk_depth, 6);
    assert_int_equal(q->dropped, 14);
    core_check_all(f);
    core_stop(f);

    core_start(f, cfg);
    q = core_queue(f, "drop");
    assert_int_equal(q->depth + q->disk_depth, 6);
    c = consumer(f, "drop", 2, 1);
    CORE_WAIT(f, c->log.count == 6);
    expect_run(&c->log, 0, 15, 20);
    assert_int_equal(q->disk_depth, 0);
    core_check_all(f);
    stop_and_check_counts(f);
}

/* Drops decided while a read of the stored part is under way delete rows
 * that read returns: they are not delivered, the rest keep their order. */
static void test_drop_during_page_in(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    sb_queue *q;
    uint64_t last = 0;

    core_start(f, cfg);
    q = core_queue(f, "drop");
    publish_n(f, "d/1", 1, 6);
    c = consumer(f, "drop", 1, 0);
    CORE_WAIT(f, c->log.count == 1);
    for (int round = 0; round < 40; round++) {
        fake_pub p;
        char payload[32];
        snprintf(payload, sizeof payload, "m%d", 7 + round);
        if (c->log.recs[c->log.count - 1].d != NULL)
            fake_ack(&c->log.recs[c->log.count - 1]); /* a page-in may leave now */
        assert_int_equal(fake_publish(&p, f->b, NULL, "d/1", payload, NULL, 0, NULL), 0);
        assert_int_equal(core_pub_wait(f, &p), 0);
        core_check_all(f);
        assert_true(q->depth + q->disk_depth <= 6);
    }
    c->log.mode = FAKE_ACK;
    if (c->log.recs[c->log.count - 1].d != NULL)
        fake_ack(&c->log.recs[c->log.count - 1]);
    CORE_WAIT(f, q->depth == 0 && q->disk_depth == 0 && q->page_op == NULL);
    for (size_t i = 0; i < c->log.count; i++) {
        assert_true(c->log.recs[i].msg_id > last);
        last = c->log.recs[i].msg_id;
    }
    assert_string_equal(c->log.recs[c->log.count - 1].payload, "m46");
    assert_int_equal(c->log.count + q->dropped, 46);
    core_check_all(f);
    stop_and_check_counts(f);
}

/* Stored entries that fail go to the DLQ like the others; a redrive puts
 * them back (in the store past the window) and they are delivered. */
static void test_deadletter_and_redrive(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    sb_queue *q;
    sb_error err;
    json_t *dlq;
    int done = 0;

    core_start(f, cfg);
    q = core_queue(f, "dead");
    publish_n(f, "x/1", 1, 10);
    c = consumer(f, "dead", 2, 0);
    for (size_t i = 0; i < 10; i++) {
        CORE_WAIT(f, c->log.count > i);
        fake_nack(&c->log.recs[i], "poison");
    }
    CORE_WAIT(f, q->dead == 10 && q->depth == 0 && q->disk_depth == 0);
    dlq = core_dlq(f, "dead");
    assert_int_equal(json_array_size(json_object_get(dlq, "items")), 10);
    json_decref(dlq);
    core_detach(f, c, 0);

    assert_int_equal(sb_broker_dlq_redrive(f->b, "dead", on_admin_done, &done, &err), 0);
    CORE_WAIT(f, done);
    assert_int_equal(q->depth, 4);
    assert_int_equal(q->disk_depth, 6);
    c = consumer(f, "dead", 3, 1);
    CORE_WAIT(f, c->log.count == 10);
    expect_run(&c->log, 0, 1, 10);
    core_check_all(f);
    stop_and_check_counts(f);
}

/* The read-ahead is sized by the consumers: their windows plus what they
 * acknowledge in a second at their rate, at least a floor (16), at most
 * queue_window. */
static void test_read_ahead_sizing(void **state)
{
    (void)state;
    assert_int_equal(sb_paging__target(0, 0.0, 4096), 16);    /* nobody yet */
    assert_int_equal(sb_paging__target(0, 0.0, 4), 4);        /* a tiny window */
    assert_int_equal(sb_paging__target(2, 3.5, 4096), 16);    /* slow */
    assert_int_equal(sb_paging__target(100, 0.0, 4096), 100); /* credit, no rate yet */
    assert_int_equal(sb_paging__target(100, 900.0, 4096), 1000);
    assert_int_equal(sb_paging__target(1000, 20000.0, 4096), 4096); /* fast: all of it */
    assert_int_equal(sb_paging__target(10000, 0.0, 4096), 4096);
}

/* A slow consumer's queue holds a few entries in memory, not its window:
 * after a restart the first read is small, and it is refilled by little
 * as the consumer takes them, in order. */
static void test_slow_consumer_reads_little(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    sb_queue *q;
    int64_t most = 0;

    f->broker_extra = "  store: {queue_window: 1000}\n";
    core_start(f, cfg);
    publish_n(f, "q/1", 1, 300);
    assert_int_equal(core_queue(f, "q")->depth, 300); /* it fits: all in memory */
    core_stop(f);

    core_start(f, cfg);
    q = core_queue(f, "q");
    CORE_WAIT(f, q->depth == 16);
    c = consumer(f, "q", 2, 0);
    for (size_t i = 0; i < 300; i++) {
        CORE_WAIT(f, c->log.count > i);
        if (q->depth > most)
            most = q->depth;
        fake_ack(&c->log.recs[i]);
    }
    expect_run(&c->log, 0, 1, 300);
    assert_true(most <= 16);
    CORE_WAIT(f, q->depth == 0 && q->disk_depth == 0);
    core_check_all(f);
}

/* All windows together stay within broker.store.queue_memory; a queue with
 * a consumer still moves when the budget is spent. */
static void test_memory_budget(void **state)
{
    static const char *const two = "routes:\n"
                                   "  - {name: a, from: a/#}\n"
                                   "  - {name: b, from: b/#}\n";
    core_fx *f = *state;
    char payload[4097];
    fake_consumer *c;
    sb_queue *a, *b;

    f->broker_extra = "  store: {queue_window: 1000, queue_memory: 64KiB}\n";
    core_start(f, two);
    a = core_queue(f, "a");
    b = core_queue(f, "b");
    memset(payload, 'x', 4096);
    payload[4096] = '\0';
    for (int i = 0; i < 40; i++) {
        core_publish_ok(f, NULL, "a/1", payload, NULL);
        core_publish_ok(f, NULL, "b/1", payload, NULL);
    }
    assert_true(f->b->resident_bytes <= 64 * 1024);
    assert_int_equal(a->depth + a->disk_depth, 40);
    assert_int_equal(b->depth + b->disk_depth, 40);
    assert_true(a->disk_depth > 0 && b->disk_depth > 0);
    core_stop(f);

    core_start(f, two);
    assert_true(f->b->resident_bytes <= 64 * 1024);
    b = core_queue(f, "b");
    c = consumer(f, "b", 8, 1);
    CORE_WAIT(f, c->log.count == 40);
    assert_int_equal(b->depth + b->disk_depth, 0);
    assert_int_equal(core_queue(f, "a")->depth + core_queue(f, "a")->disk_depth, 40);
    core_check_all(f);
}

static int64_t store_stat(core_fx *f, const char *key)
{
    json_t *st = sb_broker_stats_json(f->b);
    int64_t v;
    assert_non_null(st);
    v = json_integer_value(json_object_get(json_object_get(st, "store"), key));
    if (strcmp(key, "auto_vacuum") == 0)
        v = json_is_true(json_object_get(json_object_get(st, "store"), key));
    json_decref(st);
    return v;
}

typedef struct maint_result {
    int done, status;
    json_t *res;
} maint_result;

static void on_maint(void *ctx, int status, void *result, const char *why)
{
    maint_result *m = ctx;
    (void)why;
    m->done = 1;
    m->status = status;
    m->res = result;
}

/* A drained backlog gives its pages back to the file system (incremental
 * auto-vacuum while the store is idle); check and compact on demand; a
 * database made before incremental auto-vacuum is converted at start. */
static void test_store_gives_space_back(void **state)
{
    core_fx *f = *state;
    char payload[8193], path[1100];
    fake_consumer *c;
    maint_result m = {0, 0, NULL};
    int64_t full;
    sb_error err;
    sqlite3 *db;

    core_start(f, cfg);
    assert_int_equal(store_stat(f, "auto_vacuum"), 1);
    memset(payload, 'x', 8192);
    payload[8192] = '\0';
    for (int i = 0; i < 1000; i++)
        core_publish_ok(f, NULL, "q/1", payload, NULL);
    full = store_stat(f, "db_bytes");
    assert_true(full > 8 * 1024 * 1024);
    c = consumer(f, "q", 64, 1);
    CORE_WAIT(f, c->log.count == 1000);
    /* the acks are committed, then the idle store returns the pages */
    CORE_WAIT(f, store_stat(f, "db_bytes") < full / 4);
    assert_true(store_stat(f, "free_bytes") < 4 * 1024 * 1024);

    assert_int_equal(sb_broker_store_check(f->b, on_maint, &m, &err), 0);
    CORE_WAIT(f, m.done);
    assert_int_equal(m.status, 0);
    assert_true(json_is_true(json_object_get(m.res, "ok")));
    json_decref(m.res);
    memset(&m, 0, sizeof m);
    assert_int_equal(sb_broker_store_compact(f->b, on_maint, &m, &err), 0);
    CORE_WAIT(f, m.done);
    assert_int_equal(m.status, 0);
    assert_true(json_integer_value(json_object_get(m.res, "after_bytes")) <=
                json_integer_value(json_object_get(m.res, "before_bytes")));
    json_decref(m.res);
    core_stop(f);

    /* As older brokers made it: converted at the next start. */
    snprintf(path, sizeof path, "%s/switchboard.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA auto_vacuum = NONE; VACUUM", NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    core_start(f, cfg);
    assert_int_equal(store_stat(f, "auto_vacuum"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_across_window, paging_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_memory_durability_keeps_backlog, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_memory_durability_keeps_window, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_memory_durability_waits_for_redrive, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_purge_batches_stop_at_their_start, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_restart_reads_first_window, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_of_stored_entries, paging_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest_of_stored_entries, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_drop_during_page_in, paging_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_deadletter_and_redrive, paging_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_memory_budget, paging_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_live_publish_counts_page_in, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_undecodable_row_deleted, paging_setup,
                                        core_teardown),
        cmocka_unit_test(test_move_aside_out_of_memory),
        cmocka_unit_test(test_page_in_out_of_memory_one_queue),
        cmocka_unit_test(test_read_ahead_sizing),
        cmocka_unit_test_setup_teardown(test_slow_consumer_reads_little, paging_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_store_gives_space_back, paging_setup, core_teardown),
    };
    fake_register();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
