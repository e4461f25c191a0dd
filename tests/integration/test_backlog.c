/*
 * A backlog bounded by disk, not memory (the small version of
 * tools/bench/bench-backlog.sh that CI runs): 20 MiB of 1 KiB messages
 * queued for an absent consumer with a 1 MiB budget for the queues'
 * windows (broker.store.queue_memory). The broker's own account of its
 * windows stays within the budget while the backlog builds, after a
 * restart and while it drains; every message comes, in order; once drained,
 * the idle database gives its pages back (a VACUUM, as little is in use).
 *
 * The figure checked is the broker's resident_bytes (what its windows
 * hold), not the process's RSS, which the sanitizers' allocator inflates.
 *
 * Then a stored message that does not decode: its headers overwritten
 * (with the sqlite3 API) while the broker was stopped, one in the first
 * window and one read later. Each is named in the log and moved to the
 * dead-letter queue without its headers; the queue goes on, in order.
 */
#include "harness.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT 20000
#define PIPELINE 200
#define BUDGET (1024 * 1024)

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "  store: { queue_memory: 1MiB, commit_max_delay_us: 200 }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - { name: backlog, from: 'backlog/#', durability: batched }\n";

static json_t *stats_part(sbt_conn *c, const char *part)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats"), *p;
    sbt_expect_op(r, "stats");
    p = json_incref(json_object_get(r, part));
    json_decref(r);
    assert_non_null(p);
    return p;
}

static int64_t broker_int(sbt_conn *c, const char *key)
{
    json_t *b = stats_part(c, "broker");
    int64_t v = sbt_int(b, key);
    json_decref(b);
    return v;
}

static int64_t store_int(sbt_conn *c, const char *key)
{
    json_t *s = stats_part(c, "store");
    int64_t v = sbt_int(s, key);
    json_decref(s);
    return v;
}

static void within_budget(sbt_conn *c, const char *when)
{
    int64_t resident = broker_int(c, "resident_bytes");
    if (resident > BUDGET + 2048)
        fail_msg("%s: the windows hold %lld bytes, over the %d budget", when, (long long)resident,
                 BUDGET);
}

static void test_backlog_bounded_by_disk(void **state)
{
    sbt_broker *b = *state;
    char payload[1025];
    sbt_conn *c, *stats;
    int64_t last = 0, full, got = 0;
    int sent = 0, acked = 0;

    sbt_broker_init(b, "backlog", 1);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    stats = sbt_connect(b->port[0]);
    memset(payload, 'x', 1024);
    payload[1024] = '\0';
    /* pipelined: PIPELINE publishes awaiting their puback */
    while (acked < COUNT) {
        while (sent < COUNT && sent - acked < PIPELINE) {
            sbt_send(c, "{s:s, s:s, s:s, s:i}", "op", "pub", "topic", "backlog/x", "payload",
                     payload, "id", sent);
            sent++;
        }
        {
            json_t *r = sbt_read(c, 10000);
            if (r == NULL)
                fail_msg("no puback after %d of %d", acked, COUNT);
            sbt_expect_op(r, "puback");
            json_decref(r);
            acked++;
        }
        if (acked % 5000 == 0)
            within_budget(stats, "building the backlog");
    }
    assert_int_equal(sbt_queue_int(stats, "backlog", "depth"), COUNT);
    assert_true(sbt_queue_int(stats, "backlog", "stored_depth") > COUNT / 2);
    within_budget(stats, "with the backlog");
    sbt_close(c);
    sbt_close(stats);

    /* A restart reads the first window only. */
    sbt_broker_stop(b);
    sbt_broker_start(b);
    stats = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(stats, "backlog", "depth"), COUNT);
    within_budget(stats, "after a restart");
    full = store_int(stats, "db_bytes");
    assert_true(full > COUNT * 1024);

    /* Drained: all of it, in order, the windows within budget throughout. */
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "backlog", NULL, 500);
    while (got < COUNT) {
        json_t *m = sbt_read(c, 10000);
        int64_t id;
        if (m == NULL)
            fail_msg("no delivery after %lld of %d", (long long)got, COUNT);
        sbt_expect_op(m, "msg");
        id = sbt_int(m, "msg_id");
        if (id <= last)
            fail_msg("message %lld delivered after %lld", (long long)id, (long long)last);
        last = id;
        sbt_send(c, "{s:s, s:s, s:I}", "op", "ack", "sub", "backlog", "msg_id", (json_int_t)id);
        json_decref(m);
        if (++got % 5000 == 0)
            within_budget(stats, "draining");
    }
    {
        sb_error err; /* acks are buffered until the next read: send them */
        assert_int_equal(sb_client_flush(c->c, &err), 0);
    }
    sbt_wait_queue_int(stats, "backlog", "depth", 0, 10000);
    assert_int_equal(broker_int(stats, "resident_bytes"), 0);
    /* The idle store gives the pages back. */
    for (int64_t deadline = sbt_now_ms() + 20000; store_int(stats, "db_bytes") > full / 4;) {
        if (sbt_now_ms() > deadline)
            fail_msg("the database stayed at %lld bytes after the drain (%lld full)",
                     (long long)store_int(stats, "db_bytes"), (long long)full);
        sbt_poll_pause(100);
    }
    /* mostly free, little in use: one VACUUM rather than steps */
    sbt_broker_wait_log(b, "MiB while idle (a VACUUM of what was in use)", 1, 20000);
    sbt_close(c);
    sbt_close(stats);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char small_window[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "  store: { queue_window: 8 }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "routes:\n"
                                   "  - { name: backlog, from: 'backlog/#' }\n";

#define CORRUPT_COUNT 30

/* Overwrites the headers of message `id` in every queue with 3 bytes
 * that are not "key NUL value NUL". */
static void corrupt_headers(sbt_broker *b, int64_t id)
{
    char path[SBT_PATH_MAX], sql[160], *msg = NULL;
    sqlite3 *db;
    sbt_path(path, sizeof(path), b->data_dir, "switchboard.db");
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(sql, sizeof(sql), "UPDATE entries SET headers = x'6b6579' WHERE msg_id = %lld",
             (long long)id);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    assert_int_equal(sqlite3_changes(db), 1);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_corrupt_row(void **state)
{
    sbt_broker *b = *state;
    int64_t ids[CORRUPT_COUNT + 1];
    char payload[16], needle[96], n[16];
    sbt_conn *c;
    json_t *r, *items;

    sbt_broker_init(b, "backlog-corrupt", 1);
    sbt_broker_config(b, small_window);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    for (int i = 1; i <= CORRUPT_COUNT; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        snprintf(n, sizeof(n), "%d", i);
        r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "backlog/x", "payload",
                     payload, "headers", "x-n", n);
        sbt_expect_op(r, "puback");
        ids[i] = sbt_int(r, "msg_id");
        json_decref(r);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    corrupt_headers(b, ids[3]);  /* in the first window, read at start */
    corrupt_headers(b, ids[20]); /* read while the consumer drains */

    sbt_broker_mark_log(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "backlog", NULL, 4);
    for (int i = 1; i <= CORRUPT_COUNT; i++) {
        json_t *m;
        if (i == 3 || i == 20)
            continue;
        m = sbt_next_msg(c, SBT_REPLY_MS);
        if (m == NULL)
            fail_msg("no message %d", i);
        snprintf(payload, sizeof(payload), "m%d", i);
        snprintf(n, sizeof(n), "%d", i);
        assert_int_equal(sbt_int(m, "msg_id"), ids[i]);
        assert_string_equal(sbt_str(m, "payload"), payload);
        assert_string_equal(sbt_str(json_object_get(m, "headers"), "x-n"), n);
        sbt_ack(c, "backlog", ids[i]);
        json_decref(m);
    }
    for (int k = 0; k < 2; k++) {
        snprintf(needle, sizeof(needle),
                 "stored message %lld does not decode (its headers (3 bytes) do not decode)",
                 (long long)ids[k == 0 ? 3 : 20]);
        sbt_broker_wait_log(b, needle, 1, SBT_REPLY_MS);
    }
    sbt_wait_queue_int(c, "backlog", "depth", 0, SBT_REPLY_MS);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "backlog");
    items = json_object_get(r, "items");
    assert_int_equal(json_array_size(items), 2);
    for (size_t k = 0; k < 2; k++) {
        json_t *d = json_array_get(items, k);
        assert_int_equal(sbt_int(d, "msg_id"), ids[k == 0 ? 3 : 20]);
        assert_string_equal(sbt_str(d, "payload"), k == 0 ? "m3" : "m20");
        assert_string_equal(sbt_str(d, "topic"), "backlog/x");
        assert_string_equal(sbt_str(d, "reason"), "corrupt in the store: its headers (3 bytes) do "
                                                  "not decode (dead-lettered without them)");
    }
    json_decref(r);
    assert_int_equal(sbt_queue_int(c, "backlog", "dead"), 2);
    sbt_close(c);

    /* Nothing of them is left in the queue after a restart. */
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "backlog", "depth"), 0);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backlog_bounded_by_disk, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_row, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("backlog", tests, NULL, NULL);
}
