/*
 * Publish/subscribe over jsonl against a real broker: route queues and
 * client subscriptions, ack/nack and retries, dead letters (list, redrive,
 * purge), retained values, dedup, TTL expiry, overflow (reject and
 * drop-oldest), `$` topics, messages surviving a clean restart, and the
 * $SYS values of queues.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: small\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: jsonl\n"
                             "    max_message: 1KiB\n"
                             "routes:\n"
                             "  - name: orders\n"
                             "    from: orders/#\n"
                             "  - name: retry\n"
                             "    from: retry/#\n"
                             "    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 20ms }\n"
                             "  - name: dd\n"
                             "    from: dd/#\n"
                             "    dedup: { header: x-id, window: 1m }\n"
                             "  - name: exp\n"
                             "    from: exp/#\n"
                             "    ttl: 500ms\n"
                             "  - name: plain\n"
                             "    from: plain/#\n"
                             "  - name: bounded\n"
                             "    from: bounded/#\n"
                             "    max_depth: 2\n"
                             "    overflow: reject\n"
                             "  - name: bcopy\n"
                             "    from: bounded/#\n"
                             "  - name: dropper\n"
                             "    from: drop/#\n"
                             "    max_depth: 2\n"
                             "    overflow: drop-oldest\n"
                             "  - name: volatile\n"
                             "    from: vol/#\n"
                             "    durability: memory\n"
                             "  - name: kept\n"
                             "    from: kept/#\n"
                             "    retain: true\n";

static sbt_conn *start(sbt_broker *b, const char *name)
{
    sbt_broker_init(b, name, 2);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* Asserts a delivery's fields. */
static int64_t expect_msg(sbt_conn *c, const char *sub, const char *topic, const char *payload,
                          int attempt)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    int64_t id = sbt_int(m, "msg_id");
    assert_string_equal(sbt_str(m, "sub"), sub);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    assert_int_equal(sbt_int(m, "attempt"), attempt);
    assert_true(sbt_int(m, "created") > 0);
    json_decref(m);
    return id;
}

static void test_route_queue_and_client_subscription(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *pub = start(b, "pubsub"), *sub = sbt_connect(b->port[0]);
    json_t *r, *m, *h;
    int64_t id, id2;
    char source[64];

    r = sbt_call(pub, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "orders/eu", "payload",
                 "hello", "headers", "content-type", "text/plain");
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 1);
    id = sbt_int(r, "msg_id");
    json_decref(r);

    /* The route's queue, attached by name without a filter. */
    sbt_sub(sub, "orders", NULL, 10);
    m = sbt_next_msg(sub, SBT_REPLY_MS);
    assert_int_equal(sbt_int(m, "msg_id"), id);
    assert_string_equal(sbt_str(m, "topic"), "orders/eu");
    assert_string_equal(sbt_str(m, "payload"), "hello");
    assert_int_equal(sbt_int(m, "attempt"), 1);
    h = json_object_get(m, "headers");
    assert_string_equal(sbt_str(h, "content-type"), "text/plain");
    /* The source names the publishing connection. */
    snprintf(source, sizeof(source), "clients 127.0.0.1:");
    assert_memory_equal(sbt_str(h, "source"), source, strlen(source));
    json_decref(m);
    sbt_ack(sub, "orders", id);
    sbt_wait_queue_int(pub, "orders", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(pub, "orders", "acked"), 1);
    assert_int_equal(sbt_queue_int(pub, "orders", "published"), 1);

    /* A client-created subscription with a filter. */
    sbt_sub(sub, "mine", "orders/+/new", 10);
    sbt_pub(pub, "orders/eu/old", "o1", 1);
    id = sbt_pub(pub, "orders/eu/new", "n1", 2);
    id2 = sbt_pub(pub, "orders/us/new", "n2", 2);
    /* Deliveries of both subscriptions share the connection: sort them. */
    {
        int64_t seen_mine[2] = {0, 0}, seen_orders[3] = {0, 0, 0};
        int nm = 0, no = 0;
        for (int i = 0; i < 5; i++) {
            m = sbt_next_msg(sub, SBT_REPLY_MS);
            if (strcmp(sbt_str(m, "sub"), "mine") == 0) {
                assert_true(nm < 2);
                seen_mine[nm++] = sbt_int(m, "msg_id");
            } else {
                assert_string_equal(sbt_str(m, "sub"), "orders");
                assert_true(no < 3);
                seen_orders[no++] = sbt_int(m, "msg_id");
            }
            sbt_ack(sub, sbt_str(m, "sub"), sbt_int(m, "msg_id"));
            json_decref(m);
        }
        assert_int_equal(nm, 2);
        assert_int_equal(seen_mine[0], id);
        assert_int_equal(seen_mine[1], id2);
        assert_int_equal(no, 3);
        assert_true(seen_orders[0] < seen_orders[1] && seen_orders[1] < seen_orders[2]);
    }
    json_t *q = sbt_queue_stats(pub, "mine");
    assert_non_null(q);
    assert_string_equal(sbt_str(q, "filter"), "orders/+/new");
    assert_string_equal(sbt_str(q, "durability"), "fsync");
    assert_int_equal(sbt_int(q, "consumers"), 1);
    json_decref(q);
    sbt_wait_queue_int(pub, "mine", "depth", 0, 5000);

    /* An existing subscription with another filter, and an unknown one. */
    sbt_expect_error(
        sbt_call(pub, "{s:s, s:s, s:s}", "op", "sub", "sub", "mine", "filter", "orders/#"),
        "SB_EEXIST");
    sbt_expect_error(sbt_call(pub, "{s:s, s:s}", "op", "sub", "sub", "nosuch"), "SB_ENOTFOUND");
    /* A malformed line gets SB_EPROTO and the connection stays usable. */
    {
        sb_error err;
        json_t *e;
        assert_int_equal(sb_client_write_line(pub->c, "{not json", 9, &err), 0);
        e = sbt_read(pub, SBT_REPLY_MS);
        assert_non_null(e);
        sbt_expect_error(e, "SB_EPROTO");
        sbt_pub(pub, "orders/eu", "still here", 1);
    }
    sbt_close(sub);
    sbt_close(pub);
    b->passed = 1;
}

static void test_nack_retry_and_dead_letters(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-dlq"), *adm;
    json_t *r, *items, *d;
    int64_t id, id2, rid;
    char line[200];

    adm = sbt_connect(b->port[0]);
    id = sbt_pub(adm, "retry/x", "bad", 1);
    sbt_sub(c, "retry", NULL, 1);
    for (int attempt = 1; attempt <= 3; attempt++) {
        assert_int_equal(expect_msg(c, "retry", "retry/x", "bad", attempt), id);
        sbt_nack(c, "retry", id, "cannot parse");
    }
    snprintf(line, sizeof(line),
             "[retry] message %lld (topic retry/x) moved to the dead-letter queue: cannot parse "
             "(after 3 attempts)",
             (long long)id);
    sbt_broker_wait_log(b, line, 1, 5000);
    sbt_wait_queue_int(adm, "retry", "dead", 1, 5000);
    assert_int_equal(sbt_queue_int(adm, "retry", "depth"), 0);

    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.list", "sub", "retry");
    sbt_expect_op(r, "dlq.list");
    items = json_object_get(r, "items");
    assert_int_equal(json_array_size(items), 1);
    d = json_array_get(items, 0);
    assert_string_equal(sbt_str(d, "sub"), "retry");
    assert_int_equal(sbt_int(d, "msg_id"), id);
    assert_string_equal(sbt_str(d, "topic"), "retry/x");
    assert_string_equal(sbt_str(d, "payload"), "bad");
    assert_string_equal(sbt_str(d, "reason"), "cannot parse (after 3 attempts)");
    assert_int_equal(sbt_int(d, "attempts"), 3);
    assert_memory_equal(sbt_str(d, "source"), "clients 127.0.0.1:", 18);
    assert_true(sbt_int(d, "dead_at") > 0);
    assert_true(sbt_int(d, "dlq_id") > 0);
    assert_null(json_object_get(r, "next"));
    json_decref(r);

    /* Redrive: back at the tail with a new id and attempt 1. */
    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.redrive", "sub", "retry");
    sbt_expect_op(r, "dlq.redrive");
    assert_int_equal(sbt_int(r, "count"), 1);
    json_decref(r);
    rid = expect_msg(c, "retry", "retry/x", "bad", 1);
    assert_true(rid > id);
    sbt_ack(c, "retry", rid);
    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.list", "sub", "retry");
    assert_int_equal(json_array_size(json_object_get(r, "items")), 0);
    json_decref(r);
    sbt_wait_queue_int(adm, "retry", "depth", 0, 5000);

    /* Purge counts what it removed. Two messages nacked until dead: a
     * message waiting out its backoff does not hold up the next one, so
     * their deliveries interleave. */
    id = sbt_pub(adm, "retry/y", "bad1", 1);
    id2 = sbt_pub(adm, "retry/y", "bad2", 1);
    {
        int attempts[2] = {0, 0};
        while (attempts[0] < 3 || attempts[1] < 3) {
            json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
            int64_t mid = sbt_int(m, "msg_id");
            int k = mid == id ? 0 : 1;
            assert_true(mid == id || mid == id2);
            assert_string_equal(sbt_str(m, "payload"), k == 0 ? "bad1" : "bad2");
            assert_int_equal(sbt_int(m, "attempt"), ++attempts[k]);
            sbt_nack(c, "retry", mid, "no");
            json_decref(m);
        }
    }
    sbt_wait_queue_int(adm, "retry", "dead", 3, 5000);
    /* The dead letters are written asynchronously: wait until both are listed. */
    for (int64_t deadline = sbt_now_ms() + 5000;;) {
        r = sbt_call(adm, "{s:s}", "op", "dlq.list");
        if (json_array_size(json_object_get(r, "items")) == 2)
            break;
        assert_true(sbt_now_ms() < deadline);
        json_decref(r);
        sbt_poll_pause(10);
    }
    assert_string_equal(sbt_str(json_array_get(json_object_get(r, "items"), 0), "reason"),
                        "no (after 3 attempts)");
    json_decref(r);
    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.purge", "sub", "retry");
    sbt_expect_op(r, "dlq.purge");
    assert_int_equal(sbt_int(r, "count"), 2);
    json_decref(r);
    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.purge", "sub", "retry");
    assert_int_equal(sbt_int(r, "count"), 0);
    json_decref(r);
    r = sbt_call(adm, "{s:s, s:s}", "op", "dlq.list", "sub", "retry");
    assert_int_equal(json_array_size(json_object_get(r, "items")), 0);
    json_decref(r);
    sbt_close(adm);
    sbt_close(c);
    b->passed = 1;
}

static void test_retained_value_for_late_subscriber(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-retain"), *late = NULL;
    json_t *r, *m;

    r = sbt_call(c, "{s:s, s:s, s:s, s:b}", "op", "pub", "topic", "state/boiler", "payload", "41",
                 "retain", 1);
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 0);
    json_decref(r);
    r = sbt_call(c, "{s:s, s:s, s:s, s:b}", "op", "pub", "topic", "state/boiler", "payload", "42",
                 "retain", 1);
    assert_int_equal(sbt_int(r, "queues"), 0);
    json_decref(r);

    /* Created after the publish: starts with the current value only. */
    late = sbt_connect(b->port[0]);
    sbt_sub(late, "late", "state/#", 10);
    m = sbt_next_msg(late, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), "state/boiler");
    assert_string_equal(sbt_str(m, "payload"), "42");
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "retained"), "true");
    sbt_ack(late, "late", sbt_int(m, "msg_id"));
    json_decref(m);
    /* Then live messages. */
    sbt_pub(c, "state/marker", "m", 1);
    expect_msg(late, "late", "state/marker", "m", 1);

    /* An empty retained payload clears the value. */
    r = sbt_call(c, "{s:s, s:s, s:s, s:b}", "op", "pub", "topic", "state/boiler", "payload", "",
                 "retain", 1);
    assert_int_equal(sbt_int(r, "queues"), 1);
    json_decref(r);
    sbt_sub(c, "later", "state/#", 10);
    sbt_pub(c, "state/marker", "m2", 2);
    expect_msg(c, "later", "state/marker", "m2", 1);
    sbt_close(late);
    sbt_close(c);
    b->passed = 1;
}

/* A route declared later whose filters overlap gets each retained value
 * once, oldest first; a cleared value is not among them. */
static void test_retained_once_for_overlapping_filters(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-retain-overlap");
    char *both;
    json_t *m;

    sbt_pub(c, "kept/oven", "180", 1);
    sbt_pub(c, "kept/fridge", "4", 1);
    sbt_pub(c, "kept/sink", "x", 1);
    sbt_pub(c, "kept/sink", "", 1); /* clears it */
    sbt_close(c);
    sbt_broker_stop(b);
    /* the same config plus a route matching kept/oven twice */
    both = malloc(sizeof(config) + 100);
    assert_non_null(both);
    snprintf(both, sizeof(config) + 100,
             "%s  - name: both\n    from: [kept/#, kept/oven, +/oven]\n", config);
    sbt_broker_config(b, both);
    free(both);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    /* the copies are committed after the start: wait for them all */
    sbt_wait_queue_int(c, "both", "pending", 0, 10000);
    assert_int_equal(sbt_queue_int(c, "both", "depth"), 2);
    sbt_sub(c, "both", NULL, 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), "kept/oven");
    json_decref(m);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), "kept/fridge");
    json_decref(m);
    sbt_close(c);
    b->passed = 1;
}

static void test_dedup_window(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-dedup");
    json_t *r;

    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "dd/a", "payload", "one",
                 "headers", "x-id", "abc");
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 1);
    json_decref(r);
    /* The same x-id again: acknowledged, not queued. */
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "dd/a", "payload", "two",
                 "headers", "x-id", "abc");
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 0);
    json_decref(r);
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "dd/a", "payload", "three",
                 "headers", "x-id", "def");
    assert_int_equal(sbt_int(r, "queues"), 1);
    json_decref(r);
    assert_int_equal(sbt_queue_int(c, "dd", "depth"), 2);

    /* The window is kept across a restart. */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    r = sbt_call(c, "{s:s, s:s, s:s, s:{s:s}}", "op", "pub", "topic", "dd/a", "payload", "four",
                 "headers", "x-id", "abc");
    sbt_expect_op(r, "puback");
    assert_int_equal(sbt_int(r, "queues"), 0);
    json_decref(r);
    sbt_sub(c, "dd", NULL, 10);
    expect_msg(c, "dd", "dd/a", "one", 1);
    expect_msg(c, "dd", "dd/a", "three", 1);
    assert_int_equal(sbt_queue_int(c, "dd", "depth"), 2);
    sbt_close(c);
    b->passed = 1;
}

/* Polls dlq.list for sub until it has n items; returns the reply. */
static json_t *wait_dead(sbt_conn *c, const char *sub, size_t n, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        json_t *r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", sub);
        size_t have = json_array_size(json_object_get(r, "items"));
        if (have >= n) {
            assert_int_equal(have, n);
            return r;
        }
        json_decref(r);
        if (sbt_now_ms() > deadline)
            fail_msg("%s: %zu dead letters after %d ms, want %zu", sub, have, timeout_ms, n);
        sbt_poll_pause(20);
    }
}

static void test_ttl_expiry(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-ttl");
    json_t *r, *d;
    int64_t id, id2;

    /* The route's ttl, and a message's own ttl on a queue without one. */
    id = sbt_pub(c, "exp/a", "old", 1);
    r = sbt_call(c, "{s:s, s:s, s:s, s:s}", "op", "pub", "topic", "plain/a", "payload", "short",
                 "ttl", "200ms");
    sbt_expect_op(r, "puback");
    id2 = sbt_int(r, "msg_id");
    json_decref(r);

    r = wait_dead(c, "exp", 1, 10000);
    d = json_array_get(json_object_get(r, "items"), 0);
    assert_int_equal(sbt_int(d, "msg_id"), id);
    assert_string_equal(sbt_str(d, "reason"), "expired (ttl)");
    assert_int_equal(sbt_int(d, "attempts"), 0);
    assert_string_equal(sbt_str(d, "payload"), "old");
    json_decref(r);
    r = wait_dead(c, "plain", 1, 10000);
    d = json_array_get(json_object_get(r, "items"), 0);
    assert_int_equal(sbt_int(d, "msg_id"), id2);
    assert_string_equal(sbt_str(d, "reason"), "expired (ttl)");
    json_decref(r);
    assert_int_equal(sbt_queue_int(c, "exp", "depth"), 0);
    assert_int_equal(sbt_queue_int(c, "plain", "depth"), 0);

    /* A fresh message is delivered first: the expired one is gone. */
    sbt_pub(c, "exp/b", "fresh", 1);
    sbt_sub(c, "exp", NULL, 10);
    expect_msg(c, "exp", "exp/b", "fresh", 1);

    /* A TTL too long to add to the time does not wrap into the past. */
    r = sbt_call(c, "{s:s, s:s, s:s, s:I}", "op", "pub", "topic", "plain/b", "payload", "long",
                 "ttl", (json_int_t)INT64_MAX);
    sbt_expect_op(r, "puback");
    json_decref(r);
    sbt_sub(c, "plain", NULL, 10);
    expect_msg(c, "plain", "plain/b", "long", 1);
    sbt_close(c);
    b->passed = 1;
}

static void test_overflow_reject(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-full");
    json_t *r;

    sbt_pub(c, "bounded/a", "b1", 2);
    sbt_pub(c, "bounded/a", "b2", 2);
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "bounded/a", "payload", "b3");
    sbt_expect_op(r, "error");
    assert_non_null(strstr(sbt_str(r, "message"), "max_depth 2"));
    sbt_expect_error(r, "SB_EFULL");
    /* Refused means not stored anywhere: the unbounded copy did not get it. */
    assert_int_equal(sbt_queue_int(c, "bounded", "depth"), 2);
    assert_int_equal(sbt_queue_int(c, "bcopy", "depth"), 2);
    /* Room again after one is consumed. */
    sbt_sub(c, "bounded", NULL, 1);
    {
        int64_t id = expect_msg(c, "bounded", "bounded/a", "b1", 1);
        sbt_ack(c, "bounded", id);
    }
    expect_msg(c, "bounded", "bounded/a", "b2", 1);
    sbt_wait_queue_int(c, "bounded", "depth", 1, 5000);
    sbt_pub(c, "bounded/a", "b4", 2);
    sbt_close(c);
    b->passed = 1;
}

static void test_overflow_drop_oldest(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-drop");

    sbt_pub(c, "drop/a", "d1", 1);
    sbt_pub(c, "drop/a", "d2", 1);
    sbt_pub(c, "drop/a", "d3", 1);
    assert_int_equal(sbt_queue_int(c, "dropper", "depth"), 2);
    assert_int_equal(sbt_queue_int(c, "dropper", "dropped"), 1);
    sbt_sub(c, "dropper", NULL, 10);
    expect_msg(c, "dropper", "drop/a", "d2", 1);
    expect_msg(c, "dropper", "drop/a", "d3", 1);
    /* Also after a restart: the dropped message was deleted from the store. */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "dropper", NULL, 10);
    /* Delivered before, and the consumer disconnected: one failed attempt. */
    expect_msg(c, "dropper", "drop/a", "d2", 2);
    expect_msg(c, "dropper", "drop/a", "d3", 2);
    assert_int_equal(sbt_queue_int(c, "dropper", "depth"), 2);
    sbt_close(c);
    b->passed = 1;
}

static void test_dollar_topics_not_matched_by_wildcards(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-dollar"), *s = sbt_connect(b->port[0]);

    sbt_sub(s, "every", "#", 10);
    sbt_sub(s, "plus", "+/x", 10);
    sbt_sub(s, "sys", "$app/#", 10);
    /* Only the subscription naming $app matches. */
    sbt_pub(c, "$app/x", "internal", 1);
    sbt_pub(c, "other/x", "public", 2);
    {
        int every = 0, plus = 0, sys = 0;
        for (int i = 0; i < 3; i++) {
            json_t *m = sbt_next_msg(s, SBT_REPLY_MS);
            const char *sub = sbt_str(m, "sub");
            if (strcmp(sub, "sys") == 0) {
                assert_string_equal(sbt_str(m, "topic"), "$app/x");
                sys++;
            } else {
                assert_string_equal(sbt_str(m, "topic"), "other/x");
                every += strcmp(sub, "every") == 0;
                plus += strcmp(sub, "plus") == 0;
            }
            json_decref(m);
        }
        assert_int_equal(every, 1);
        assert_int_equal(plus, 1);
        assert_int_equal(sys, 1);
    }
    assert_int_equal(sbt_queue_int(c, "every", "published"), 1);
    assert_int_equal(sbt_queue_int(c, "plus", "published"), 1);
    sbt_close(s);
    sbt_close(c);
    b->passed = 1;
}

static void test_messages_survive_clean_restart(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-restart");
    int64_t ids[3], kid;
    char payload[16];
    json_t *m;

    for (int i = 0; i < 3; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        ids[i] = sbt_pub(c, "orders/eu", payload, 1);
    }
    sbt_sub(c, "keep", "keep/#", 10);
    kid = sbt_pub(c, "keep/1", "k1", 1);
    /* Delivered to the attached "keep" consumer but not acknowledged. */
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_int_equal(sbt_int(m, "msg_id"), kid);
    json_decref(m);
    sbt_close(c);
    sbt_broker_stop(b);
    {
        char *log = sbt_broker_log_since(b);
        assert_non_null(strstr(log, "[broker] stopped"));
        free(log);
    }

    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "orders", "depth"), 3);
    sbt_sub(c, "orders", NULL, 10);
    for (int i = 0; i < 3; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        assert_int_equal(expect_msg(c, "orders", "orders/eu", payload, 1), ids[i]);
        sbt_ack(c, "orders", ids[i]);
    }
    /* The client subscription and its settings came back too (no filter given). */
    sbt_sub(c, "keep", NULL, 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_int_equal(sbt_int(m, "msg_id"), kid);
    assert_string_equal(sbt_str(m, "payload"), "k1");
    /* Its consumer disconnected without acknowledging: one failed attempt. */
    assert_int_equal(sbt_int(m, "attempt"), 2);
    sbt_ack(c, "keep", kid);
    json_decref(m);
    sbt_wait_queue_int(c, "orders", "depth", 0, 5000);
    sbt_wait_queue_int(c, "keep", "depth", 0, 5000);

    /* Acknowledged messages stay acknowledged after another restart. */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "orders", "depth"), 0);
    assert_int_equal(sbt_queue_int(c, "keep", "depth"), 0);
    sbt_close(c);
    b->passed = 1;
}

/* A delivery not acknowledged within the lease comes again (attempt 2);
 * acknowledging the message then, once, removes it. */
static void test_lease_expiry_and_late_ack(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-lease"), *p = sbt_connect(b->port[0]);
    json_t *r;
    int64_t id, id2;
    char line[200];

    r = sbt_call(c, "{s:s, s:s, s:s, s:s, s:i}", "op", "sub", "sub", "slow", "filter", "slow/#",
                 "lease", "300ms", "window", 10);
    sbt_expect_op(r, "subscribed");
    json_decref(r);
    id = sbt_pub(p, "slow/a", "s1", 1);
    assert_int_equal(expect_msg(c, "slow", "slow/a", "s1", 1), id);
    /* Too slow: the lease expires and the message comes again. */
    assert_int_equal(expect_msg(c, "slow", "slow/a", "s1", 2), id);
    snprintf(line, sizeof(line),
             "[slow] delivery of message %lld to clients 127.0.0.1:", (long long)id);
    sbt_broker_wait_log(b, line, 1, 1000);
    /* One ack of the message settles it. */
    r = sbt_call(c, "{s:s, s:s, s:I}", "op", "ack", "sub", "slow", "msg_id", (json_int_t)id);
    sbt_expect_op(r, "ok");
    json_decref(r);
    sbt_wait_queue_int(p, "slow", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(p, "slow", "acked"), 1);
    /* The next message is the next one, not a third attempt of s1. */
    id2 = sbt_pub(p, "slow/a", "s2", 1);
    assert_int_equal(expect_msg(c, "slow", "slow/a", "s2", 1), id2);
    sbt_close(p);
    sbt_close(c);
    b->passed = 1;
}

/* Two consumers: the lease of A's delivery expires, the message goes to B,
 * B acks it; A's late ack must be harmless (the message is gone). */
static void test_lease_expiry_with_two_consumers(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *a = start(b, "pubsub-lease2"), *bb = sbt_connect(b->port[0]),
             *p = sbt_connect(b->port[0]);
    json_t *r;
    int64_t id, id2;

    r = sbt_call(a, "{s:s, s:s, s:s, s:s, s:i}", "op", "sub", "sub", "shared", "filter", "shared/#",
                 "lease", "300ms", "window", 1);
    sbt_expect_op(r, "subscribed");
    json_decref(r);
    id = sbt_pub(p, "shared/a", "x1", 1);
    assert_int_equal(expect_msg(a, "shared", "shared/a", "x1", 1), id);
    /* A holds it past the lease; B, attached now, gets the retry. */
    sbt_sub(bb, "shared", NULL, 1);
    assert_int_equal(expect_msg(bb, "shared", "shared/a", "x1", 2), id);
    r = sbt_call(bb, "{s:s, s:s, s:I}", "op", "ack", "sub", "shared", "msg_id", (json_int_t)id);
    sbt_expect_op(r, "ok");
    json_decref(r);
    sbt_wait_queue_int(p, "shared", "depth", 0, 5000);
    /* A's late ack: the message is settled already. */
    sbt_ack(a, "shared", id);
    id2 = sbt_pub(p, "shared/a", "x2", 1);
    r = sbt_call(a, "{s:s}", "op", "ping");
    sbt_expect_op(r, "pong");
    json_decref(r);
    {
        /* x2 goes to whichever consumer has room. */
        json_t *m = json_array_size(a->stash) > 0 ? sbt_next_msg(a, SBT_REPLY_MS)
                                                  : sbt_next_msg(bb, SBT_REPLY_MS);
        assert_int_equal(sbt_int(m, "msg_id"), id2);
        assert_int_equal(sbt_int(m, "attempt"), 1);
        json_decref(m);
    }
    sbt_close(p);
    sbt_close(bb);
    sbt_close(a);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* Durability classes across a clean restart: memory queues start empty,
 * retained values (route `retain: true`) are kept on disk. */
static void test_memory_queue_and_retained_across_restart(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-classes");
    json_t *r, *m;

    sbt_pub(c, "vol/a", "v1", 1);
    sbt_pub(c, "kept/oven", "180", 1);
    r = sbt_call(c, "{s:s}", "op", "stats");
    assert_int_equal(sbt_int(json_object_get(json_object_get(r, "broker"), "durability"), "memory"),
                     1);
    json_decref(r);
    assert_int_equal(sbt_queue_int(c, "volatile", "depth"), 1);
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "volatile", "depth"), 0);
    assert_int_equal(sbt_queue_int(c, "kept", "depth"), 1);
    sbt_sub(c, "late", "kept/+", 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "topic"), "kept/oven");
    assert_string_equal(sbt_str(m, "payload"), "180");
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "retained"), "true");
    json_decref(m);
    sbt_close(c);
    b->passed = 1;
}

/* Requests the broker refuses, each with its code, on a connection that
 * stays usable; unsubscribing and deleting subscriptions. */
static void test_refusals_and_unsubscribe(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "pubsub-refuse"), *s;
    char big[2048];
    json_t *r;

    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "a/+/b", "payload", "x"),
                     "SB_EINVAL");
    sbt_expect_error(sbt_call(c, "{s:s, s:s}", "op", "pub", "topic", "a/b"), "SB_EINVAL");
    /* Header values are C strings in the store: a NUL in one is refused. */
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s, s:{s:s#}}", "op", "pub", "topic", "orders/x",
                              "payload", "x", "headers", "k", "a\0bcdefgh", 9),
                     "SB_EINVAL");
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s}", "op", "frobnicate", "topic", "a", "x", "y"),
                     "SB_EPROTO");
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:s}", "op", "sub", "sub", "bad", "filter", "a/#/b"),
                     "SB_EINVAL");
    sbt_expect_error(sbt_call(c, "{s:s, s:s, s:b}", "op", "unsub", "sub", "orders", "delete", 1),
                     "SB_EACCES");

    /* The small adapter's max_message is 1 KiB. */
    s = sbt_connect(b->port[1]);
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    sbt_expect_error(
        sbt_call(s, "{s:s, s:s, s:s}", "op", "pub", "topic", "orders/x", "payload", big),
        "SB_ETOOBIG");
    big[1024] = '\0';
    sbt_pub(s, "orders/x", big, 1);
    sbt_close(s);

    /* A client subscription: detach (messages stay), then delete it. */
    sbt_sub(c, "temp", "temp/#", 10);
    sbt_pub(c, "temp/a", "t1", 1);
    r = sbt_next_msg(c, SBT_REPLY_MS);
    json_decref(r);
    r = sbt_call(c, "{s:s, s:s}", "op", "unsub", "sub", "temp");
    sbt_expect_op(r, "unsubscribed");
    json_decref(r);
    /* An orderly unsub returns the delivery without counting an attempt. */
    sbt_wait_queue_int(c, "temp", "depth", 1, 5000);
    sbt_sub(c, "temp", NULL, 10);
    r = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(r, "payload"), "t1");
    assert_int_equal(sbt_int(r, "attempt"), 1);
    json_decref(r);
    r = sbt_call(c, "{s:s, s:s, s:b}", "op", "unsub", "sub", "temp", "delete", 1);
    sbt_expect_op(r, "unsubscribed");
    json_decref(r);
    assert_null(sbt_queue_stats(c, "temp"));
    sbt_pub(c, "temp/a", "t2", 0);
    /* The name is free again, with another filter. */
    sbt_sub(c, "temp", "other/#", 10);
    sbt_pub(c, "other/x", "o1", 1);
    r = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(r, "payload"), "o1");
    json_decref(r);
    /* Another connection cannot delete it while c holds a delivery of it. */
    sbt_pub(c, "other/y", "o2", 1);
    r = sbt_next_msg(c, SBT_REPLY_MS);
    s = sbt_connect(b->port[0]);
    sbt_expect_error(sbt_call(s, "{s:s, s:s, s:b}", "op", "unsub", "sub", "temp", "delete", 1),
                     "SB_EBUSY");
    sbt_ack(c, "temp", sbt_int(r, "msg_id"));
    json_decref(r);
    r = sbt_queue_stats(s, "temp");
    assert_non_null(r);
    json_decref(r);
    sbt_close(s);
    sbt_close(c);
    b->passed = 1;
}

/* $SYS values every second here (broker.sys_interval). */
static const char sys_config[] = "broker:\n"
                                 "  data_dir: '{data}'\n"
                                 "  admin: { endpoint: 'off' }\n"
                                 "  sys_interval: 1s\n"
                                 "adapters:\n"
                                 "  - name: clients\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port0}\n"
                                 "    protocol: jsonl\n"
                                 "routes:\n"
                                 "  - name: a\n"
                                 "    from: a/#\n"
                                 "  - name: b\n"
                                 "    from: b/#\n";

static int64_t retained_count(sbt_conn *c)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats");
    int64_t n = sbt_int(json_object_get(r, "broker"), "retained");
    json_decref(r);
    return n;
}

/* Reads one delivery of subs "tick" ($SYS/broker/uptime_ms, one a tick) or
 * "watch" and acknowledges it; counts the watch deliveries per queue (a, b)
 * and payload ("0", "1"). Returns 1 for a tick. */
static int read_sys(sbt_conn *c, int counts[2][2])
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    const char *sub = sbt_str(m, "sub"), *topic = sbt_str(m, "topic");
    const char *payload = sbt_str(m, "payload");
    int tick = strcmp(sub, "tick") == 0;
    if (!tick) {
        int q = strcmp(topic, "$SYS/queues/a/depth") == 0   ? 0
                : strcmp(topic, "$SYS/queues/b/depth") == 0 ? 1
                                                            : -1;
        int v = strcmp(payload, "0") == 0 ? 0 : strcmp(payload, "1") == 0 ? 1 : -1;
        assert_string_equal(sub, "watch");
        if (q >= 0) {
            if (v < 0)
                fail_msg("%s: %s", topic, payload);
            counts[q][v]++;
        }
    }
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
    return tick;
}

/* Reads until counts[q][v] reaches want (a deadline of 20 ticks). */
static void wait_sys(sbt_conn *c, int counts[2][2], int q, int v, int want)
{
    int ticks = 0;
    while (counts[q][v] < want) {
        ticks += read_sys(c, counts);
        if (ticks > 20)
            fail_msg("queue %d value %d seen %d times after 20 ticks, want %d", q, v, counts[q][v],
                     want);
    }
}

/* Reads what `ticks` more ticks bring. */
static void skip_ticks(sbt_conn *c, int counts[2][2], int ticks)
{
    while (ticks > 0)
        ticks -= read_sys(c, counts);
}

/* A queue's $SYS values are published only while a subscription can
 * receive them, and then only when they changed; a deleted queue's
 * retained values go with it. (They used to be published for every queue
 * every tick: with 10,000 MQTT sessions the broker never rested.) */
static void test_sys_values_when_watched_and_changed(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c, *t;
    json_t *r;
    int64_t deadline;
    int counts[2][2] = {{0, 0}, {0, 0}};

    sbt_broker_init(b, "pubsub-sys", 1);
    sbt_broker_config(b, sys_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    /* Nobody watches queues: ticks leave only the broker's values. */
    sbt_sub(c, "tick", "$SYS/broker/uptime_ms", 100);
    skip_ticks(c, counts, 3);
    assert_int_equal(retained_count(c), 3);

    /* Now someone does: every queue's values once, then a's again when
     * it changed, b's never again. */
    sbt_sub(c, "watch", "$SYS/queues/+/depth", 100);
    wait_sys(c, counts, 0, 0, 1);
    wait_sys(c, counts, 1, 0, 1);
    sbt_pub(c, "a/x", "one", 1);
    wait_sys(c, counts, 0, 1, 1);
    skip_ticks(c, counts, 3);
    assert_int_equal(counts[0][0], 1);
    assert_int_equal(counts[0][1], 1);
    assert_int_equal(counts[1][0], 1);
    assert_int_equal(counts[1][1], 0);

    /* depth and dead of a, b, tick, watch and temp are retained; deleting
     * temp drops its two. */
    t = sbt_connect(b->port[0]);
    sbt_sub(t, "temp", "temp/#", 10);
    sbt_close(t);
    deadline = sbt_now_ms() + 20000;
    while (retained_count(c) < 3 + 2 * 5) {
        if (sbt_now_ms() > deadline)
            fail_msg("%lld values retained, want %d", (long long)retained_count(c), 3 + 2 * 5);
        read_sys(c, counts); /* the next delivery, at most a tick away */
    }
    assert_int_equal(retained_count(c), 3 + 2 * 5);
    sbt_wait_queue_int(c, "temp", "consumers", 0, 5000);
    r = sbt_call(c, "{s:s, s:s, s:b}", "op", "unsub", "sub", "temp", "delete", 1);
    sbt_expect_op(r, "unsubscribed");
    json_decref(r);
    assert_int_equal(retained_count(c), 3 + 2 * 4);
    sbt_close(c);
    b->passed = 1;
}

/* Requests as a pipelining client's writes cut them: several lines and the
 * start of the next in one read (the lines are read where they arrived,
 * the unfinished one is kept), its end with more lines in the next, ids
 * given back as sent, and a delivery with characters to escape, whose
 * headers (the publisher's and the source the broker adds) went into the
 * message's own allocation. */
static void test_lines_across_reads(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *sub = start(b, "lines"), *fan = sbt_connect(b->port[0]);
    sbt_tcp *t = sbt_tcp_connect(b->port[0], SBT_REPLY_MS);
    static const char first[] =
        "{\"op\":\"pub\",\"id\":7,\"topic\":\"plain/a\",\"payload\":\"1\"}\n"
        "{\"op\":\"pub\",\"id\":\"s8\",\"topic\":\"plain/a\",\"payload\":\"2\"}\r\n"
        "{\"op\":\"pub\",\"id\":9,\"topic\":\"pla";
    static const char rest[] =
        "in/a\",\"payload\":\"q\\\"\\n\\u0001\",\"headers\":{\"k\":\"v\\t\"}}\n"
        "{\"op\":\"pub\",\"id\":-10,\"topic\":\"plain/a\",\"payload\":\"4\"}\n";
    static const char *const ids[] = {"7", "\"s8\"", "9", "-10"};
    char line[512];
    json_t *m;

    assert_non_null(t);
    sbt_sub(sub, "lines", "plain/#", 10);
    sbt_sub(fan, "fan1", "plain/a", 10);
    sbt_sub(fan, "fan2", "plain/#", 10);
    assert_int_equal(sbt_tcp_write(t, first, sizeof first - 1), 0);
    /* the first two are answered: the broker read the chunk, with the
     * start of the third, which it holds */
    for (int i = 0; i < 2; i++) {
        char want[32];
        assert_true(sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS) > 0);
        snprintf(want, sizeof want, "\"id\":%s}", ids[i]);
        assert_non_null(strstr(line, "\"op\":\"puback\""));
        assert_non_null(strstr(line, want));
    }
    assert_int_equal(sbt_tcp_read_line(t, line, sizeof line, 200), -1);
    assert_int_equal(sbt_tcp_write(t, rest, sizeof rest - 1), 0);
    for (int i = 2; i < 4; i++) {
        char want[32];
        assert_true(sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS) > 0);
        snprintf(want, sizeof want, "\"id\":%s}", ids[i]);
        assert_non_null(strstr(line, want));
    }
    expect_msg(sub, "lines", "plain/a", "1", 1);
    expect_msg(sub, "lines", "plain/a", "2", 1);
    m = sbt_next_msg(sub, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "q\"\n\001");
    assert_string_equal(json_string_value(json_object_get(json_object_get(m, "headers"), "k")),
                        "v\t");
    assert_non_null(strstr(
        json_string_value(json_object_get(json_object_get(m, "headers"), "source")), "clients "));
    json_decref(m);
    expect_msg(sub, "lines", "plain/a", "4", 1);
    /* the same messages to two more subscriptions: the part of the line
     * after "attempt" is kept with the message from the second on */
    for (int i = 0; i < 8; i++) {
        json_t *x = sbt_next_msg(fan, SBT_REPLY_MS), *h = json_object_get(x, "headers");
        const char *name = sbt_str(x, "sub");
        assert_true(strcmp(name, "fan1") == 0 || strcmp(name, "fan2") == 0);
        assert_int_equal(sbt_int(x, "attempt"), 1);
        if (strcmp(sbt_str(x, "payload"), "q\"\n\001") == 0) {
            assert_string_equal(json_string_value(json_object_get(h, "k")), "v\t");
            assert_non_null(strstr(json_string_value(json_object_get(h, "source")), "clients "));
        } else {
            assert_int_equal(json_object_size(h), 1); /* the source only */
        }
        sbt_ack(fan, name, sbt_int(x, "msg_id"));
        json_decref(x);
    }
    sbt_tcp_close(t);
    sbt_close(fan);
    sbt_close(sub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_route_queue_and_client_subscription, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_nack_retry_and_dead_letters, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_retained_value_for_late_subscriber, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_retained_once_for_overlapping_filters, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_dedup_window, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_expiry, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_reject, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_drop_oldest, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_dollar_topics_not_matched_by_wildcards, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_messages_survive_clean_restart, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_and_late_ack, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_with_two_consumers, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_memory_queue_and_retained_across_restart, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_and_unsubscribe, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_lines_across_reads, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sys_values_when_watched_and_changed, sbt_setup,
                                        sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("pubsub", tests, NULL, NULL);
}
