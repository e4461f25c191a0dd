/*
 * A backlog bounded by disk, not memory (the small version of
 * tools/bench/bench-backlog.sh that CI runs): 20 MiB of 1 KiB messages
 * queued for an absent consumer with a 1 MiB budget for the queues'
 * windows (broker.store.queue_memory). The broker's own account of its
 * windows stays within the budget while the backlog builds, after a
 * restart and while it drains; every message comes, in order; once drained,
 * the database gives its pages back (incremental auto-vacuum).
 *
 * The figure checked is the broker's resident_bytes (what its windows
 * hold), not the process's RSS, which the sanitizers' allocator inflates.
 */
#include "harness.h"

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
    sbt_close(c);
    sbt_close(stats);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backlog_bounded_by_disk, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("backlog", tests, NULL, NULL);
}
