/*
 * The broker's core in-process: fake adapters as producers and sinks, the
 * real SQLite store in a directory of the test's own, no sockets. Covers
 * leases and redelivery, nack backoff, dead-lettering, the dedup window,
 * overflow (reject, drop-oldest), TTL expiry, retained values, and reloads
 * that keep queues. Durations are configured short and waited for by
 * driving the loop with a deadline.
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
#include "storage/store_test.h"

static fake_adapter *fake(const char *name)
{
    fake_adapter *a = fake_get(name);
    if (a == NULL)
        fail_msg("no running fake adapter %s", name);
    return a;
}

static json_t *dlq_item(json_t *list, size_t i)
{
    json_t *items = json_object_get(list, "items");
    assert_true(json_is_array(items));
    return json_array_get(items, i);
}

static size_t dlq_count(json_t *list)
{
    return json_array_size(json_object_get(list, "items"));
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL)
        fail_msg("no string %s in the dead letter", key);
    return s;
}

/* ---- delivery, leases, redelivery --------------------------------------- */

static const char *const lease_cfg =
    "adapters:\n"
    "  - {name: src, type: exec, command: [fake]}\n"
    "  - {name: sink, type: exec, command: [fake], inflight: 4}\n"
    "routes:\n"
    "  - name: r\n"
    "    from: t/#\n"
    "    to: sink\n"
    "    lease: 50ms\n"
    "    retry: {max_attempts: 3, backoff: 10ms, max_backoff: 1s}\n";

static void test_deliver_and_ack(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_rec *r;
    uint64_t id;

    core_start(f, lease_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    assert_non_null(q);
    id = core_publish_ok(f, fake("src"), "t/1", "hello", NULL);
    CORE_WAIT(f, sink->log.count == 1);
    r = &sink->log.recs[0];
    assert_string_equal(r->topic, "t/1");
    assert_string_equal(r->payload, "hello");
    assert_int_equal(r->msg_id, id);
    assert_int_equal(r->attempt, 1);
    assert_int_equal(r->redelivery, 0);
    assert_int_equal(q->depth, 1);
    core_check_all(f);
    fake_ack(r);
    assert_int_equal(q->depth, 0);
    assert_int_equal(q->acked, 1);
    core_check_all(f);

    /* Acknowledged means deleted: a restart delivers nothing. */
    core_stop(f);
    core_start(f, lease_cfg);
    assert_int_equal(core_queue(f, "r:sink")->depth, 0);
    assert_int_equal(fake("sink")->log.count, 0);
}

/* The structs made per message come back to the broker's free lists and
 * are handed out again; once nothing was published for a housekeeping
 * tick, the lists give them back. */
static void test_free_lists_reused_and_drained(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_broker *b;
    size_t kept;

    core_start(f, lease_cfg);
    b = f->b;
    sink = fake("sink");
    for (int i = 0; i < 3; i++) {
        core_publish_ok(f, fake("src"), "t/1", "x", NULL);
        CORE_WAIT(f, sink->log.count == (size_t)i + 1);
        fake_ack(&sink->log.recs[i]);
    }
    /* one of each is kept after the first message, and serves the next */
    assert_true(b->pending_pool.count >= 1);
    assert_true(b->entry_pool.count >= 1);
    assert_true(b->delivery_pool.count >= 1);
    kept = b->pending_pool.count + b->entry_pool.count + b->delivery_pool.count;
    assert_true(kept <= 9);
    core_check_all(f);
    CORE_WAIT(f, b->pending_pool.count == 0 && b->entry_pool.count == 0 &&
                     b->delivery_pool.count == 0 && b->op_pool.count == 0);
}

static int visible_none(void *ctx, const char *name, const sb_sub_filter *filters, size_t count)
{
    (void)ctx;
    (void)name;
    (void)filters;
    (void)count;
    return 0;
}

/* An adapter type's own counters (its stats hook) are in the full stats,
 * by adapter name, and not in a restricted client's. */
static void test_adapter_stats(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    json_t *st;

    core_start(f, lease_cfg);
    sink = fake("sink");
    core_publish_ok(f, fake("src"), "t/1", "hello", NULL);
    CORE_WAIT(f, sink->log.count == 1);
    st = sb_broker_stats_json(f->b);
    assert_non_null(st);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(st, "adapters"), "sink"), "recorded")),
                     1);
    assert_non_null(json_object_get(json_object_get(st, "adapters"), "src"));
    json_decref(st);
    st = sb_broker_stats_json_visible(f->b, visible_none, NULL);
    assert_non_null(st);
    assert_null(json_object_get(st, "adapters"));
    json_decref(st);
    fake_ack(&sink->log.recs[0]);
}

static void test_lease_expiry_redelivers(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_rec *first, *second;

    core_start(f, lease_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    core_publish_ok(f, fake("src"), "t/1", "m", NULL);
    CORE_WAIT(f, sink->log.count == 1);

    /* Not acknowledged within the lease: offered again after the backoff. */
    CORE_WAIT(f, sink->log.count == 2);
    first = &sink->log.recs[0];
    second = &sink->log.recs[1];
    assert_int_equal(second->attempt, 2);
    assert_int_equal(second->redelivery, 1);
    assert_int_equal(second->msg_id, first->msg_id);
    assert_true(second->at_ms - first->at_ms >= 50 + 10);
    core_check_all(f);

    /* The first delivery's late ack is ignored; the second one counts. */
    fake_ack(first);
    assert_int_equal(q->depth, 1);
    assert_int_equal(q->acked, 0);
    assert_non_null(q->leased.head);
    core_check_all(f);
    fake_ack(second);
    assert_int_equal(q->depth, 0);
    assert_int_equal(q->acked, 1);
    core_check_all(f);
}

static void test_lease_expiry_deadletters(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    json_t *dlq, *d;

    core_start(f, lease_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    core_publish_ok(f, fake("src"), "t/1", "never acked", NULL);
    CORE_WAIT(f, q->dead == 1);
    assert_int_equal(sink->log.count, 3); /* max_attempts */
    for (int i = 0; i < 3; i++)
        assert_int_equal(sink->log.recs[i].attempt, i + 1);
    assert_int_equal(q->depth, 0);
    core_check_all(f);

    dlq = core_dlq(f, "r:sink");
    assert_int_equal(dlq_count(dlq), 1);
    d = dlq_item(dlq, 0);
    assert_string_equal(jstr(d, "reason"), "lease expired (after 3 attempts)");
    assert_string_equal(jstr(d, "source"), "src");
    assert_string_equal(jstr(d, "payload"), "never acked");
    assert_int_equal(json_integer_value(json_object_get(d, "attempts")), 3);
    json_decref(dlq);

    /* The late acks of the expired deliveries change nothing. */
    for (int i = 0; i < 3; i++)
        fake_ack(&sink->log.recs[i]);
    assert_int_equal(q->acked, 0);
    core_check_all(f);
}

static void test_restart_redelivers_unacked(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;

    core_start(f, lease_cfg);
    sink = fake("sink");
    core_publish_ok(f, fake("src"), "t/1", "a", NULL);
    core_publish_ok(f, fake("src"), "t/1", "b", NULL);
    CORE_WAIT(f, sink->log.count == 2);
    fake_ack(&sink->log.recs[0]);
    /* b is held when the broker stops: the stopping sink fails it (an attempt). */
    core_stop(f);

    core_start(f, lease_cfg);
    sink = fake("sink");
    CORE_WAIT(f, sink->log.count == 1);
    assert_string_equal(sink->log.recs[0].payload, "b");
    assert_int_equal(sink->log.recs[0].redelivery, 1);
    assert_int_equal(sink->log.recs[0].attempt, 2);
    assert_int_equal(core_queue(f, "r:sink")->depth, 1);
    core_check_all(f);
}

static const char *const client_cfg = "adapters:\n"
                                      "  - {name: src, type: exec, command: [fake]}\n"
                                      "routes: []\n";

static void test_detach_returns_deliveries(void **state)
{
    core_fx *f = *state;
    sb_sub_settings s;
    fake_consumer *a, *b, *c;
    sb_error err;
    sb_queue *q;
    json_t *dlq;

    core_start(f, client_cfg);
    sb_sub_settings_default(&s);
    s.max_attempts = 2;
    assert_int_equal(sb_broker_subscribe(f->b, "c1", "t/#", &s, &err), 0);
    q = core_queue(f, "c1");
    core_publish_ok(f, NULL, "t/1", "x", NULL);
    core_publish_ok(f, NULL, "t/2", "y", NULL);

    a = core_attach(f, "c1", 8);
    assert_int_equal(a->log.count, 2);
    /* An orderly detach: offered again, no attempt counted. */
    core_detach(f, a, 0);
    b = core_attach(f, "c1", 8);
    assert_int_equal(b->log.count, 2);
    assert_int_equal(b->log.recs[0].attempt, 1);
    assert_int_equal(b->log.recs[0].redelivery, 1);
    assert_string_equal(b->log.recs[0].payload, "x");
    fake_ack(&b->log.recs[1]);
    core_check_all(f);

    /* The consumer went away: a failed attempt; the second one dead-letters. */
    core_detach(f, b, 1);
    c = core_attach(f, "c1", 8);
    CORE_WAIT(f, c->log.count == 1); /* after the retry backoff */
    assert_string_equal(c->log.recs[0].payload, "x");
    assert_int_equal(c->log.recs[0].attempt, 2);
    core_detach(f, c, 1);
    assert_int_equal(q->dead, 1);
    assert_int_equal(q->depth, 0);
    core_check_all(f);
    dlq = core_dlq(f, "c1");
    assert_int_equal(dlq_count(dlq), 1);
    assert_string_equal(jstr(dlq_item(dlq, 0), "reason"),
                        "the consumer disconnected before acknowledging (after 2 attempts)");
    json_decref(dlq);
}

/* ---- nack backoff and dead letters --------------------------------------- */

static void test_nack_backoff_then_deadletter(void **state)
{
    static const char *const cfg =
        "adapters:\n"
        "  - {name: src, type: exec, command: [fake]}\n"
        "  - {name: sink, type: exec, command: [fake], inflight: 1}\n"
        "routes:\n"
        "  - name: r\n"
        "    from: t/#\n"
        "    to: sink\n"
        "    retry: {max_attempts: 5, backoff: 20ms, max_backoff: 50ms}\n";
    const int64_t expect[] = {20, 40, 50, 50}; /* doubling, capped */
    core_fx *f = *state;
    fake_adapter *sink;
    uint64_t nacked_at = 0;
    sb_queue *q;
    json_t *dlq, *d;
    fake_rec *r;
    size_t seen = 0;

    core_start(f, cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    core_publish_ok(f, fake("src"), "t/a", "A", NULL);
    core_publish_ok(f, fake("src"), "t/b", "B", NULL);
    CORE_WAIT(f, sink->log.count == 1); /* inflight 1: B waits */
    fake_nack(&sink->log.recs[0], "cannot parse");
    nacked_at = uv_now(sb_broker_loop(f->b));

    /* While A waits for its retry, the next message is not held up. */
    assert_int_equal(sink->log.count, 2);
    r = &sink->log.recs[1];
    assert_string_equal(r->payload, "B");
    fake_ack(r);
    seen = 2;

    for (int attempt = 2; attempt <= 5; attempt++) {
        CORE_WAIT(f, sink->log.count == seen + 1);
        r = &sink->log.recs[seen++];
        assert_string_equal(r->payload, "A");
        assert_int_equal(r->attempt, attempt);
        assert_int_equal(r->redelivery, 1);
        /* not offered again before its backoff ended */
        if (r->at_ms - nacked_at < (uint64_t)expect[attempt - 2])
            fail_msg("attempt %d came %llu ms after the nack, before its %lld ms backoff", attempt,
                     (unsigned long long)(r->at_ms - nacked_at), (long long)expect[attempt - 2]);
        core_check_all(f);
        fake_nack(r, "cannot parse");
        nacked_at = uv_now(sb_broker_loop(f->b));
    }
    assert_int_equal(q->dead, 1);
    assert_int_equal(q->nacked, 5);
    assert_int_equal(q->depth, 0);
    core_check_all(f);

    dlq = core_dlq(f, NULL);
    assert_int_equal(dlq_count(dlq), 1);
    d = dlq_item(dlq, 0);
    assert_string_equal(jstr(d, "sub"), "r:sink");
    assert_string_equal(jstr(d, "reason"), "cannot parse (after 5 attempts)");
    assert_string_equal(jstr(d, "topic"), "t/a");
    assert_int_equal(json_integer_value(json_object_get(d, "attempts")), 5);
    json_decref(dlq);

    /* Nothing left to deliver after a restart; the dead letter stays. */
    core_stop(f);
    core_start(f, cfg);
    assert_int_equal(core_queue(f, "r:sink")->depth, 0);
    dlq = core_dlq(f, "r:sink");
    assert_int_equal(dlq_count(dlq), 1);
    json_decref(dlq);
}

static void on_admin_done(void *ctx, int status, void *result, const char *why)
{
    int *done = ctx;
    (void)why;
    assert_int_equal(status, 0);
    json_decref(result);
    *done = 1;
}

static void test_deadletter_redrive(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: sink, type: exec, command: [fake]}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    retry: {max_attempts: 1}\n";
    core_fx *f = *state;
    fake_adapter *sink;
    sb_error err;
    json_t *dlq;
    int done = 0;

    core_start(f, cfg);
    sink = fake("sink");
    core_publish_ok(f, NULL, "t/1", "poison", NULL);
    CORE_WAIT(f, sink->log.count == 1);
    fake_nack(&sink->log.recs[0], "rejected");
    assert_int_equal(core_queue(f, "r:sink")->dead, 1);

    /* Repaired: redriven into its queue and delivered as a first attempt. */
    assert_int_equal(sb_broker_dlq_redrive(f->b, "r:sink", on_admin_done, &done, &err), 0);
    CORE_WAIT(f, done && sink->log.count == 2);
    assert_string_equal(sink->log.recs[1].payload, "poison");
    assert_int_equal(sink->log.recs[1].attempt, 1);
    fake_ack(&sink->log.recs[1]);
    core_check_all(f);
    dlq = core_dlq(f, "r:sink");
    assert_int_equal(dlq_count(dlq), 0);
    json_decref(dlq);
}

static void on_admin_status(void *ctx, int status, void *result, const char *why)
{
    (void)why;
    json_decref(result);
    *(int *)ctx = status;
}

/* A stop while a redrive goes on ends it: what the stop's last
 * completions submit is only the protocol state they owe, not the
 * redrive's next step (on a large dead-letter queue, minutes of it on the
 * loop thread while the service manager waits for the stop). The dead
 * letters stay for the next redrive. */
static void test_stop_ends_redrive(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: sink, type: exec, command: [fake]}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    retry: {max_attempts: 1}\n";
    core_fx *f = *state;
    fake_adapter *sink;
    sb_error err;
    json_t *dlq;
    int status = -1;

    core_start(f, cfg);
    sink = fake("sink");
    core_publish_ok(f, NULL, "t/1", "poison", NULL);
    CORE_WAIT(f, sink->log.count == 1);
    fake_nack(&sink->log.recs[0], "rejected");
    assert_int_equal(core_queue(f, "r:sink")->dead, 1);

    sb_store_test_hold(f->b->store, 1); /* its first step is listed in the stop */
    assert_int_equal(sb_broker_dlq_redrive(f->b, "r:sink", on_admin_status, &status, &err), 0);
    core_stop(f);
    assert_int_equal(status, SB_ESHUTDOWN);
    core_start(f, cfg);
    dlq = core_dlq(f, "r:sink");
    assert_int_equal(dlq_count(dlq), 1);
    json_decref(dlq);
}

/* ---- dedup ------------------------------------------------------------------ */

static const char *const dedup_cfg = "adapters:\n"
                                     "  - {name: src, type: exec, command: [fake]}\n"
                                     "  - {name: sink, type: exec, command: [fake]}\n"
                                     "routes:\n"
                                     "  - name: r\n"
                                     "    from: t/#\n"
                                     "    to: sink\n"
                                     "    dedup: {header: id}\n";

static void test_dedup_drops_duplicates(void **state)
{
    const char *const id1[] = {"id", "1", NULL}, *const id2[] = {"id", "2", NULL};
    core_fx *f = *state;
    fake_adapter *sink;
    fake_pub p;

    core_start(f, dedup_cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_ACK);
    core_publish_ok(f, fake("src"), "t/1", "first", id1);
    /* A duplicate is acknowledged (a producer's retry must succeed) and dropped. */
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "again", id1, 0, NULL), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 0);
    core_publish_ok(f, fake("src"), "t/1", "other id", id2);
    core_publish_ok(f, fake("src"), "t/1", "no id", NULL);
    CORE_WAIT(f, sink->log.count == 3);
    assert_string_equal(sink->log.recs[0].payload, "first");
    assert_string_equal(sink->log.recs[1].payload, "other id");
    assert_string_equal(sink->log.recs[2].payload, "no id");

    /* The window survives a restart: the keys are in the store. */
    core_stop(f);
    core_start(f, dedup_cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_ACK);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "after restart", id1, 0, NULL), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 0);
    core_publish_ok(f, fake("src"), "t/1", "marker", NULL);
    CORE_WAIT(f, sink->log.count == 1);
    assert_string_equal(sink->log.recs[0].payload, "marker");

    /* A protocol's own key (MQTT QoS 2): dropped until the key is deleted. */
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2", NULL, 0, "client/7"), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2 again", NULL, 0, "client/7"), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 0);
    assert_true(sb_broker_key_exists(f->b, "client/7"));
    sb_broker_key_delete(f->b, "client/", 1);
    assert_false(sb_broker_key_exists(f->b, "client/7"));
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2 new", NULL, 0, "client/7"), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 1);
    CORE_WAIT(f, sink->log.count == 3);
    assert_string_equal(sink->log.recs[2].payload, "q2 new");
    core_check_all(f);
}

typedef struct keys_seen {
    char keys[16][40];
    size_t n;
} keys_seen;

static void key_seen(const char *key, void *ctx)
{
    keys_seen *k = ctx;
    assert_true(k->n < 16);
    snprintf(k->keys[k->n++], sizeof k->keys[0], "%s", key);
}

static keys_seen keys_of(core_fx *f, const char *prefix)
{
    keys_seen k;
    k.n = 0;
    sb_broker_key_each(f->b, prefix, key_seen, &k);
    return k;
}

static void on_put_counted(void *ctx, int status)
{
    assert_int_equal(status, 0);
    (*(int *)ctx)++;
}

/* sb_broker_key_each finds a client's keys (put, or a protocol's publish
 * key) in byte order, before and after a restart, and no one else's nor
 * a dedup key: an index, not a walk over every key (a resumed MQTT session
 * finds what it is owed, in order, whatever other clients keep). */
static void test_keys_by_prefix(void **state)
{
    static const char *const keys[] = {"c/1/owed/30", "c/2/owed/10", "c/1/owed/10", "c/1/rel/5",
                                       "c/10/owed/1", "c/1/owed/20", "c/1/owed"};
    core_fx *f = *state;
    const char *const id[] = {"id", "1", NULL};
    fake_pub p;
    keys_seen k;
    int done = 0;

    core_start(f, dedup_cfg);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_int_equal(sb_broker_key_put(f->b, keys[i], on_put_counted, &done), 0);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2", NULL, 0, "c/1/in/7"), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    core_publish_ok(f, fake("src"), "t/1", "with a dedup key", id);
    CORE_WAIT(f, done == (int)(sizeof keys / sizeof keys[0]));
    for (int restarted = 0; restarted < 2; restarted++) {
        k = keys_of(f, "c/1/owed/");
        assert_int_equal(k.n, 3);
        assert_string_equal(k.keys[0], "c/1/owed/10");
        assert_string_equal(k.keys[1], "c/1/owed/20");
        assert_string_equal(k.keys[2], "c/1/owed/30");
        k = keys_of(f, "c/1/");
        assert_int_equal(k.n, 6);
        assert_string_equal(k.keys[0], "c/1/in/7");
        assert_string_equal(k.keys[1], "c/1/owed");
        assert_string_equal(k.keys[5], "c/1/rel/5");
        k = keys_of(f, "c/");
        assert_int_equal(k.n, 8);
        k = keys_of(f, "c/3/");
        assert_int_equal(k.n, 0);
        core_stop(f);
        core_start(f, dedup_cfg);
    }
    sb_broker_key_delete(f->b, "c/1/owed/20", 0);
    sb_broker_key_delete(f->b, "c/1/", 1);
    k = keys_of(f, "c/");
    assert_int_equal(k.n, 2);
    assert_string_equal(k.keys[0], "c/10/owed/1");
    assert_string_equal(k.keys[1], "c/2/owed/10");
    core_check_all(f);
}

/* A protocol's publish key (an MQTT client's QoS 2 packet id) whose
 * client's keys are deleted before the publish commits (a clean session
 * ended, or reconnected) is not kept by that commit: not in the map, as
 * not in the store. A key put after the delete is kept. */
static void test_publish_key_deleted_before_commit(void **state)
{
    core_fx *f = *state;
    fake_pub p, p2;
    int done = 0;

    core_start(f, dedup_cfg);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2", NULL, 0, "c/7/a/in/1"), 0);
    assert_int_equal(fake_publish(&p2, f->b, NULL, "t/2", "q2", NULL, 0, "c/8/a/in/1"), 0);
    sb_broker_key_delete(f->b, "c/7/", 1); /* the session ends */
    assert_int_equal(sb_broker_key_put(f->b, "c/7/rel/1", on_put_counted, &done), 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(core_pub_wait(f, &p2), 0);
    CORE_WAIT(f, done == 1);
    for (int restarted = 0; restarted < 2; restarted++) {
        assert_false(sb_broker_key_exists(f->b, "c/7/a/in/1"));
        assert_true(sb_broker_key_exists(f->b, "c/8/a/in/1"));
        assert_true(sb_broker_key_exists(f->b, "c/7/rel/1"));
        core_check_all(f);
        core_stop(f);
        core_start(f, dedup_cfg);
    }
}

/* An MQTT client re-sends a QoS 2 PUBLISH (DUP, after a fast reconnect)
 * before its first copy commits: the resend is submitted too, and the
 * store finds it a duplicate. The key is in the map as in the store, so
 * the PUBREL deletes it and the next PUBLISH with that packet id is a new
 * message, not a duplicate dropped until a restart. */
static void test_publish_key_resent_before_commit(void **state)
{
    core_fx *f = *state;
    fake_pub p, p2;

    core_start(f, dedup_cfg);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2", NULL, 0, "c/7/in/5"), 0);
    assert_int_equal(fake_publish(&p2, f->b, NULL, "t/2", "q2", NULL, 0, "c/7/in/5"), 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(core_pub_wait(f, &p2), 0);
    assert_int_equal(p.queues, 1);
    assert_int_equal(p2.queues, 0);
    assert_true(sb_broker_key_exists(f->b, "c/7/in/5"));
    sb_broker_key_delete(f->b, "c/7/in/5", 0); /* the PUBREL */
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/2", "q2 new", NULL, 0, "c/7/in/5"), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 1);
    core_check_all(f);
}

typedef struct put_check {
    sb_broker *b;
    const char *key;
    int status;
    int exists; /* the key in the map when the put completed */
} put_check;

static void on_put_checked(void *ctx, int status)
{
    put_check *c = ctx;
    c->status = status;
    c->exists = sb_broker_key_exists(c->b, c->key);
}

/* A key put at once (a PUBREL owed) and put again, both failed by the
 * store (a stop gives up on them while the disk is full): the key is not
 * in the map, as not in the store, once the last of them completes. */
static void test_failed_puts_forget_known_key(void **state)
{
    core_fx *f = *state;
    char key[6000];
    put_check c = {NULL, key, 0, -1};

    /* a key too long for a page: its put needs pages the store has not */
    snprintf(key, sizeof key, "c/9/owed/%05990d", 1);
    core_start(f, dedup_cfg);
    core_stop(f);
    f->broker_extra = "  store: {max_db_bytes: 4KiB}\n"; /* no more than it has */
    core_start(f, dedup_cfg);
    c.b = f->b;
    assert_int_equal(sb_broker__key_put_known(f->b, key), 0);
    assert_true(sb_broker_key_exists(f->b, key));
    assert_int_equal(sb_broker_key_put(f->b, key, on_put_checked, &c), 0);
    core_stop(f); /* which gives up on the puts */
    assert_int_equal(c.status, SB_ENOSPC);
    assert_false(c.exists);
    f->broker_extra = NULL;
    core_start(f, dedup_cfg);
    assert_false(sb_broker_key_exists(f->b, key));
}

static void test_dedup_window_ends(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: sink, type: exec, command: [fake]}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    durability: batched\n"
                                   "    dedup: {header: id, window: 300ms}\n";
    const char *const id[] = {"id", "9", NULL};
    core_fx *f = *state;
    fake_adapter *sink;
    int64_t t0;
    fake_pub p;

    core_start(f, cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_ACK);
    t0 = sb_now_ms();
    core_publish_ok(f, NULL, "t/1", "one", id);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/1", "two", id, 0, NULL), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    if (sb_now_ms() - t0 >= 300)
        skip(); /* too slow a machine to see the window from inside */
    assert_int_equal(p.queues, 0);

    /* Once the window is over, the same key is a new message. */
    CORE_WAIT(f, sb_now_ms() > t0 + 300 + 10);
    core_publish_ok(f, NULL, "t/1", "three", id);
    CORE_WAIT(f, sink->log.count == 2);
    assert_string_equal(sink->log.recs[0].payload, "one");
    assert_string_equal(sink->log.recs[1].payload, "three");
}

/* ---- overflow ---------------------------------------------------------------- */

static void test_overflow_reject(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: src, type: exec, command: [fake]}\n"
                                   "  - {name: sink, type: exec, command: [fake]}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    max_depth: 3\n"
                                   "  - name: bytes\n"
                                   "    from: b/#\n"
                                   "    max_bytes: 100\n";
    char big[61];
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_pub p;

    core_start(f, cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_BUSY);
    q = core_queue(f, "r:sink");
    for (int i = 0; i < 3; i++)
        core_publish_ok(f, fake("src"), "t/1", "m", NULL);
    /* Full: refused at once, the callback never runs. */
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "too many", NULL, 0, NULL),
                     SB_EFULL);
    assert_int_equal(p.err.code, SB_EFULL);
    assert_non_null(strstr(p.err.msg, "r:sink is full (max_depth 3)"));
    assert_int_equal(q->depth, 3);
    core_check_all(f);

    /* Drained, it takes messages again. */
    fake_set_mode(sink, FAKE_ACK);
    CORE_WAIT(f, q->depth == 0);
    core_publish_ok(f, fake("src"), "t/1", "fits", NULL);
    CORE_WAIT(f, sink->log.count == 4);
    assert_int_equal(p.done, 0);

    /* The byte limit counts payload, topic and headers. */
    memset(big, 'x', 60);
    big[60] = '\0';
    core_publish_ok(f, NULL, "b/1", big, NULL);
    assert_int_equal(fake_publish(&p, f->b, NULL, "b/1", big, NULL, 0, NULL), SB_EFULL);
    assert_non_null(strstr(p.err.msg, "max_bytes 100"));
    assert_int_equal(core_queue(f, "bytes")->depth, 1);
}

static void test_overflow_drop_oldest(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: sink, type: exec, command: [fake], inflight: 1}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    max_depth: 3\n"
                                   "    overflow: drop-oldest\n"
                                   "  - name: mem\n"
                                   "    from: t/#\n"
                                   "    durability: memory\n"
                                   "    max_depth: 2\n"
                                   "    overflow: drop-oldest\n";
    core_fx *f = *state;
    fake_adapter *sink;
    fake_consumer *c;
    char payload[8];
    sb_queue *q;

    core_start(f, cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    /* m1 is held by the sink: a delivery in flight is never dropped. */
    for (int i = 1; i <= 6; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        core_publish_ok(f, NULL, "t/1", payload, NULL);
        core_check_all(f);
    }
    assert_int_equal(sink->log.count, 1);
    assert_string_equal(sink->log.recs[0].payload, "m1");
    assert_int_equal(q->depth, 3);
    assert_int_equal(q->dropped, 3); /* m2, m3, m4 */
    assert_int_equal(core_queue(f, "mem")->depth, 2);
    assert_int_equal(core_queue(f, "mem")->dropped, 4);
    c = core_attach(f, "mem", 8);
    assert_int_equal(c->log.count, 2);
    assert_string_equal(c->log.recs[0].payload, "m5");
    assert_string_equal(c->log.recs[1].payload, "m6");

    /* The drops were committed with the publishes: a restart agrees. */
    core_stop(f);
    core_start(f, cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_ACK);
    /* m1 came back (the stopping sink failed it): taken at once, the rest follow */
    assert_int_equal(sink->log.count, 1);
    fake_ack(&sink->log.recs[0]);
    CORE_WAIT(f, sink->log.count == 3);
    assert_string_equal(sink->log.recs[0].payload, "m1");
    assert_string_equal(sink->log.recs[1].payload, "m5");
    assert_string_equal(sink->log.recs[2].payload, "m6");
}

/* Publishes in flight together cannot make room for each other (each sees
 * the others as pending, not yet in the queue): once they are committed the
 * queue is trimmed back to its limit, in memory and in the store. Before,
 * a flood left a max_depth 1 queue at the depth of the flood until the next
 * publish. */
static void test_drop_oldest_after_burst(void **state)
{
    static const char *const cfg =
        "adapters: []\n"
        "routes:\n"
        "  - {name: last, from: t/#, max_depth: 1, overflow: drop-oldest}\n"
        "  - {name: mem, from: t/#, durability: memory, max_depth: 2, overflow: drop-oldest}\n";
    core_fx *f = *state;
    fake_pub p[20];
    char payload[8];
    fake_consumer *c;

    core_start(f, cfg);
    for (int i = 0; i < 20; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        assert_int_equal(fake_publish(&p[i], f->b, NULL, "t/1", payload, NULL, 0, NULL), 0);
    }
    for (int i = 0; i < 20; i++)
        assert_int_equal(core_pub_wait(f, &p[i]), 0);
    core_check_all(f);
    assert_int_equal(core_queue(f, "last")->depth, 1);
    assert_int_equal(core_queue(f, "last")->dropped, 19);
    assert_int_equal(core_queue(f, "mem")->depth, 2);

    core_stop(f);
    core_start(f, cfg);
    assert_int_equal(core_queue(f, "last")->depth, 1);
    c = core_attach(f, "last", 8);
    assert_int_equal(c->log.count, 1);
    assert_string_equal(c->log.recs[0].payload, "m19");
}

/* A publish refused by one full queue changes no other queue: the oldest
 * messages of a drop-oldest queue it also matched stay, whichever of the
 * two the broker looks at first. */
static void test_refused_publish_drops_nothing(void **state)
{
    static const char *const cfg =
        "adapters: []\n"
        "routes:\n"
        "  - {name: reject1, from: t/x, max_depth: 1}\n"
        "  - {name: drop, from: t/#, max_depth: 2, overflow: drop-oldest}\n"
        "  - {name: reject2, from: t/z, max_depth: 1}\n";
    core_fx *f = *state;
    sb_queue *drop;
    fake_pub p;

    core_start(f, cfg);
    drop = core_queue(f, "drop");
    core_publish_ok(f, NULL, "t/x", "a", NULL); /* fills reject1 */
    core_publish_ok(f, NULL, "t/z", "b", NULL); /* fills reject2 */
    assert_int_equal(drop->depth, 2);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/x", "c", NULL, 0, NULL), SB_EFULL);
    assert_int_equal(fake_publish(&p, f->b, NULL, "t/z", "d", NULL, 0, NULL), SB_EFULL);
    assert_int_equal(drop->depth, 2);
    assert_int_equal(drop->dropped, 0);
    core_check_all(f);

    /* and the store agrees */
    core_stop(f);
    core_start(f, cfg);
    assert_int_equal(core_queue(f, "drop")->depth, 2);
}

/* ---- TTL ---------------------------------------------------------------------- */

static const char *const ttl_cfg = "adapters:\n"
                                   "  - {name: sink, type: exec, command: [fake]}\n"
                                   "routes:\n"
                                   "  - name: r\n"
                                   "    from: t/#\n"
                                   "    to: sink\n"
                                   "    ttl: 1m\n"
                                   "  - name: q\n"
                                   "    from: q/#\n"
                                   "    ttl: 50ms\n";

static uint64_t publish_made(core_fx *f, const char *topic, const char *payload, int64_t created,
                             int64_t expires)
{
    sb_message *m = fake_message(topic, payload, NULL);
    fake_pub p;
    m->created_ms = created;
    m->expires_ms = expires;
    assert_int_equal(fake_publish_msg(&p, f->b, NULL, m, 0, NULL), 0);
    sb_message_unref(m);
    assert_int_equal(core_pub_wait(f, &p), 0);
    return p.msg_id;
}

static void test_ttl_expires_at_delivery(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    int64_t now = sb_now_ms();
    sb_queue *q;
    json_t *dlq;

    core_start(f, ttl_cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_BUSY);
    q = core_queue(f, "r:sink");
    /* The TTL counts from the producer's creation time; a message's own
     * expiry counts too. */
    publish_made(f, "t/1", "old", now - 61000, 0);
    publish_made(f, "t/1", "fresh", now, 0);
    publish_made(f, "t/1", "own expiry", now, now - 1);
    /* (the first offer may have found "old" expired already) */
    assert_int_equal(q->depth + (int64_t)q->expired, 3);

    fake_set_mode(sink, FAKE_ACK);
    CORE_WAIT(f, q->depth == 0);
    assert_int_equal(sink->log.count, 1);
    assert_string_equal(sink->log.recs[0].payload, "fresh");
    assert_int_equal(q->expired, 2);
    dlq = core_dlq(f, "r:sink");
    assert_int_equal(dlq_count(dlq), 2);
    assert_string_equal(jstr(dlq_item(dlq, 0), "reason"), "expired (ttl)");
    assert_string_equal(jstr(dlq_item(dlq, 0), "payload"), "old");
    assert_string_equal(jstr(dlq_item(dlq, 1), "payload"), "own expiry");
    json_decref(dlq);
    core_check_all(f);
}

static void test_ttl_expires_without_consumer(void **state)
{
    core_fx *f = *state;
    sb_queue *q;
    json_t *dlq;

    core_start(f, ttl_cfg);
    q = core_queue(f, "q");
    core_publish_ok(f, NULL, "q/1", "nobody reads this", NULL);
    assert_int_equal(q->depth, 1);
    /* The housekeeping pass (once a second) finds it. */
    CORE_WAIT(f, q->expired == 1);
    assert_int_equal(q->depth, 0);
    core_check_all(f);
    dlq = core_dlq(f, "q");
    assert_int_equal(dlq_count(dlq), 1);
    assert_string_equal(jstr(dlq_item(dlq, 0), "reason"), "expired (ttl)");
    json_decref(dlq);

    /* Gone from the store too. */
    core_stop(f);
    core_start(f, ttl_cfg);
    assert_int_equal(core_queue(f, "q")->depth, 0);
}

/* ---- retained values ------------------------------------------------------------ */

static const char *const retain_cfg = "adapters: []\n"
                                      "routes:\n"
                                      "  - name: keep\n"
                                      "    from: sensors/#\n"
                                      "    retain: true\n";

/* Subscribes `name` to filter and returns the consumer with what it got. */
static fake_consumer *late_joiner(core_fx *f, const char *name, const char *filter, size_t expect)
{
    sb_error err;
    fake_consumer *c;
    if (sb_broker_subscribe(f->b, name, filter, NULL, &err) != 0)
        fail_msg("subscribe %s: %s", name, err.msg);
    c = core_attach(f, name, 16);
    CORE_WAIT(f, c->log.count >= expect && core_queue(f, name)->pending == 0);
    assert_int_equal(c->log.count, expect);
    return c;
}

static void test_retained_values(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    fake_pub p;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    core_publish_ok(f, NULL, "sensors/a", "2", NULL);
    core_publish_ok(f, NULL, "sensors/b", "x", NULL);
    /* retained on request, outside the route's filter */
    assert_int_equal(fake_publish(&p, f->b, NULL, "other/c", "y", NULL, 1, NULL), 0);
    assert_int_equal(core_pub_wait(f, &p), 0);

    /* A late joiner gets the last value of each topic, oldest first. */
    c = late_joiner(f, "late", "sensors/#", 2);
    assert_string_equal(c->log.recs[0].topic, "sensors/a");
    assert_string_equal(c->log.recs[0].payload, "2");
    assert_string_equal(c->log.recs[0].retained, "true");
    assert_string_equal(c->log.recs[1].topic, "sensors/b");
    assert_string_equal(c->log.recs[1].payload, "x");
    assert_true(c->log.recs[0].msg_id < c->log.recs[1].msg_id);
    c = late_joiner(f, "late-other", "other/#", 1);
    assert_string_equal(c->log.recs[0].payload, "y");

    /* An empty payload clears a topic's value. */
    core_publish_ok(f, NULL, "sensors/b", "", NULL);
    c = late_joiner(f, "late2", "sensors/#", 1);
    assert_string_equal(c->log.recs[0].payload, "2");
    core_check_all(f);

    /* The values are kept in the store. */
    core_stop(f);
    core_start(f, retain_cfg);
    c = late_joiner(f, "late3", "#", 2);
    assert_string_equal(c->log.recs[0].topic, "sensors/a");
    assert_string_equal(c->log.recs[0].payload, "2");
    assert_string_equal(c->log.recs[1].topic, "other/c");
    core_check_all(f);
}

/* Settings of an MQTT clean session's subscription: in memory, not saved. */
static const sb_sub_settings *memory_sub(sb_sub_settings *s)
{
    sb_sub_settings_default(s);
    s->durability = SB_DURABILITY_MEMORY;
    s->transient = 1;
    return s;
}

/* Checks that c got exactly the payloads in want (NULL-terminated), in id
 * order, the first as the retained value and the others as messages. */
static void got_in_order(const fake_consumer *c, const char *const *want)
{
    size_t n = 0;
    while (want[n] != NULL)
        n++;
    assert_int_equal(c->log.count, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(c->log.recs[i].payload, want[i]);
        if (i == 0)
            assert_string_equal(c->log.recs[i].retained, "true");
        else
            assert_null(c->log.recs[i].retained);
        if (i > 0)
            assert_true(c->log.recs[i - 1].msg_id < c->log.recs[i].msg_id);
    }
}

/* A retained publish routed before a subscription was made and committed
 * after (a subscribe during the commit) reaches it once, after the older
 * retained value it got at subscribe and before what was routed to it
 * since; into a durable subscription for good (over a restart). */
static void test_retained_in_flight_at_subscribe(void **state)
{
    static const char *const want[] = {"1", "2", "3", NULL};
    core_fx *f = *state;
    fake_consumer *durable, *memory;
    sb_sub_settings mem;
    fake_pub p2, p3;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p2, f->b, NULL, "sensors/a", "2", NULL, 0, NULL), 0);
    assert_int_equal(f->b->retained_inflight, 1); /* what a subscribe looks for */
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0 ||
        sb_broker_subscribe(f->b, "late-mem", "sensors/a", memory_sub(&mem), &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    /* routed to them at once */
    assert_int_equal(fake_publish(&p3, f->b, NULL, "sensors/a", "3", NULL, 0, NULL), 0);
    durable = core_attach(f, "late", 16);
    memory = core_attach(f, "late-mem", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p2), 0);
    assert_int_equal(core_pub_wait(f, &p3), 0);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && core_queue(f, "late-mem")->pending == 0 &&
                     durable->log.count >= 3 && memory->log.count >= 3);
    got_in_order(durable, want);
    got_in_order(memory, want);
    assert_int_equal(f->b->retained_inflight, 0);
    core_check_all(f);

    core_stop(f);
    core_start(f, retain_cfg);
    durable = core_attach(f, "late", 16);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && durable->log.count >= 3);
    assert_int_equal(durable->log.count, 3);
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(durable->log.recs[i].payload, want[i]);
    core_check_all(f);
}

/* The same with the empty payload that clears the value: the subscriber
 * is told of the clear after the value it got at subscribe, and a later
 * subscriber gets nothing. */
static void test_retained_clear_in_flight_at_subscribe(void **state)
{
    static const char *const want[] = {"1", "", NULL};
    core_fx *f = *state;
    fake_consumer *c;
    sb_sub_settings mem;
    fake_pub p;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", "", NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", memory_sub(&mem), &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    c = core_attach(f, "late", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && c->log.count >= 2);
    got_in_order(c, want);
    c = late_joiner(f, "later", "sensors/#", 0);
    core_check_all(f);
}

/* A retained publish the store refuses does not reach a subscription made
 * while it was in flight: that one keeps the older retained value. */
static void test_retained_refused_in_flight_at_subscribe(void **state)
{
    static const char *const want[] = {"1", NULL};
    size_t big = 512 * 1024;
    char *payload = malloc(big + 1);
    core_fx *f = *state;
    fake_consumer *c;
    sb_sub_settings mem;
    fake_pub p;
    sb_error err;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", payload, NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", memory_sub(&mem), &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    c = core_attach(f, "late", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && c->log.count >= 1);
    got_in_order(c, want);
    core_check_all(f);
    free(payload);
}

/* After a stop: the number sql counts in f's store. */
static int64_t db_count(core_fx *f, const char *sql)
{
    char path[1100];
    sqlite3 *db;
    sqlite3_stmt *st;
    int64_t n;
    snprintf(path, sizeof path, "%s/switchboard.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return n;
}

/* The refused publish into a durable subscription made while it was in
 * flight: never delivered, nothing of it in the store after a restart. */
static void test_retained_refused_durable_in_flight(void **state)
{
    size_t big = 512 * 1024;
    char *payload = malloc(big + 1);
    core_fx *f = *state;
    fake_consumer *c;
    fake_pub p;
    sb_error err;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", payload, NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    c = core_attach(f, "late", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    CORE_WAIT(f, f->b->pending_head == NULL && core_queue(f, "late")->pending == 0);
    for (size_t i = 0; i < c->log.count; i++)
        assert_true(strlen(c->log.recs[i].payload) < big);
    core_check_all(f);
    core_stop(f);
    assert_int_equal(db_count(f, "SELECT count(*) FROM entries WHERE length(payload) >= 1000"),
                     0);
    core_start(f, retain_cfg);
    c = core_attach(f, "late", 16);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0);
    for (size_t i = 0; i < c->log.count; i++)
        assert_true(strlen(c->log.recs[i].payload) < big);
    core_check_all(f);
    free(payload);
}

/* A retained publish that turns out a duplicate (a resend of one in
 * flight) is not copied into a durable subscription made meanwhile: it
 * gets the first copy only, and no row of the resend stays. */
static void test_retained_duplicate_durable_in_flight(void **state)
{
    static const char *const want[] = {"1", "2", NULL};
    core_fx *f = *state;
    fake_consumer *c;
    fake_pub p1, p2;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p1, f->b, NULL, "sensors/a", "2", NULL, 0, "k1"), 0);
    assert_int_equal(fake_publish(&p2, f->b, NULL, "sensors/a", "2", NULL, 0, "k1"), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    c = core_attach(f, "late", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p1), 0);
    assert_int_equal(core_pub_wait(f, &p2), 0);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && c->log.count >= 2);
    got_in_order(c, want);
    core_check_all(f);
    core_stop(f);
    assert_int_equal(db_count(f, "SELECT count(*) FROM entries WHERE queue_id ="
                                 " (SELECT id FROM queues WHERE name = 'late')"),
                     2);
    core_start(f, retain_cfg);
    c = core_attach(f, "late", 16);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && c->log.count >= 2);
    assert_int_equal(c->log.count, 2);
    core_check_all(f);
}

/* A durable subscription deleted while a retained publish copied into it
 * is in flight leaves no row behind. */
static void test_retained_in_flight_queue_deleted(void **state)
{
    core_fx *f = *state;
    fake_pub p;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", "2", NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0 ||
        sb_broker_unsubscribe(f->b, "late", &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    CORE_WAIT(f, f->b->pending_head == NULL);
    core_check_all(f);
    core_stop(f);
    /* (those of the route's queue, and no other) */
    assert_int_equal(db_count(f, "SELECT count(*) FROM entries WHERE queue_id NOT IN"
                                 " (SELECT id FROM queues)"),
                     0);
    assert_int_equal(db_count(f, "SELECT count(*) FROM queue_counts WHERE entries != 0 AND"
                                 " queue_id NOT IN (SELECT id FROM queues)"),
                     0);
}

/* A stop while a copy waits for its publish: the durable subscriber has
 * the publish after the restart. */
static void test_retained_in_flight_at_stop(void **state)
{
    static const char *const want[] = {"1", "2", NULL};
    core_fx *f = *state;
    fake_consumer *c;
    fake_pub p;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", "2", NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    core_stop(f); /* which ends the hold: the publish commits */
    core_start(f, retain_cfg);
    c = core_attach(f, "late", 16);
    CORE_WAIT(f, core_queue(f, "late")->pending == 0 && c->log.count >= 2);
    assert_int_equal(c->log.count, 2);
    for (size_t i = 0; i < 2; i++)
        assert_string_equal(c->log.recs[i].payload, want[i]);
    core_check_all(f);
}

/* Subscribing twice while a retained publish is in flight, or adding a
 * retained lookup for a filter the subscription lacks, copies it once and
 * only where a filter of the subscription matches. */
static void test_retained_in_flight_copied_once(void **state)
{
    static const char *const want[] = {"1", "2", NULL};
    core_fx *f = *state;
    fake_consumer *c, *other;
    sb_sub_settings mem;
    fake_pub p;
    sb_error err;

    core_start(f, retain_cfg);
    core_publish_ok(f, NULL, "sensors/a", "1", NULL);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, NULL, "sensors/a", "2", NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", memory_sub(&mem), &err) != 0 ||
        sb_broker_subscribe(f->b, "late", "sensors/#", memory_sub(&mem), &err) != 0 ||
        sb_broker_subscribe(f->b, "other", "other/#", memory_sub(&mem), &err) != 0 ||
        sb_broker_sub_add_retained(f->b, "other", "sensors/#", &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    c = core_attach(f, "late", 16);
    other = core_attach(f, "other", 16);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    CORE_WAIT(f, f->b->pending_head == NULL && core_queue(f, "late")->pending == 0 &&
                     c->log.count >= 2);
    got_in_order(c, want);
    /* the retained value it asked for, not the publish it is not subscribed to */
    assert_int_equal(other->log.count, 1);
    assert_string_equal(other->log.recs[0].payload, "1");
    core_check_all(f);
}

/* The copy of a retained publish in flight keeps its expiry and priority. */
static void test_retained_in_flight_copy_keeps_expiry(void **state)
{
    core_fx *f = *state;
    sb_message *m, *copy;
    sb_sub_settings mem;
    fake_pub p;
    sb_error err;

    core_start(f, retain_cfg);
    sb_store_test_hold(f->b->store, 1);
    m = fake_message("sensors/a", "2", NULL);
    m->expires_ms = sb_now_ms() + 3600 * 1000;
    m->priority = 7;
    assert_int_equal(fake_publish_msg(&p, f->b, NULL, m, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", memory_sub(&mem), &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    copy = sb_message_ref(f->b->pending_tail->msg);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_ptr_not_equal(copy, m);
    assert_int_equal(copy->expires_ms, m->expires_ms);
    assert_int_equal(copy->priority, 7);
    sb_message_unref(copy);
    sb_message_unref(m);
    core_check_all(f);
}

/* A subscription whose retained values overflow its window (the rest
 * stays on disk, paged in) and that is made while a retained publish L is
 * in flight, then gets live messages: it gets the values, L, then the live
 * ones, each once and in order (L's copy is stored in its turn). */
static void test_retained_in_flight_paged(void **state)
{
    core_fx *f = *state;
    fake_consumer *c;
    fake_pub l, live[4];
    char topic[32], payload[32];
    sb_error err;

    f->broker_extra = "  store: {queue_window: 4}\n";
    core_start(f, retain_cfg);
    for (int i = 0; i < 10; i++) {
        snprintf(topic, sizeof topic, "sensors/%d", i);
        snprintf(payload, sizeof payload, "v%d", i);
        core_publish_ok(f, NULL, topic, payload, NULL);
    }
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&l, f->b, NULL, "sensors/a", "L", NULL, 0, NULL), 0);
    if (sb_broker_subscribe(f->b, "late", "sensors/#", NULL, &err) != 0)
        fail_msg("subscribe: %s", err.msg);
    for (int i = 0; i < 4; i++) {
        snprintf(payload, sizeof payload, "p%d", i);
        assert_int_equal(fake_publish(&live[i], f->b, NULL, "sensors/b", payload, NULL, 0, NULL),
                         0);
    }
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &l), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(core_pub_wait(f, &live[i]), 0);
    /* one that acknowledges: the window pages in the rest as it goes */
    c = malloc(sizeof(*c));
    assert_non_null(c);
    fake_consumer_init(c, sb_broker_loop(f->b), "late", 2);
    c->log.mode = FAKE_ACK;
    f->consumers[f->consumer_count++] = c;
    if (sb_broker_attach(f->b, "late", &c->c, &err) != 0)
        fail_msg("attach: %s", err.msg);
    CORE_WAIT(f, c->log.count >= 15 && core_queue(f, "late")->pending == 0);
    CORE_WAIT(f, f->b->pending_head == NULL);
    assert_int_equal(c->log.count, 15);
    for (size_t i = 0; i < 15; i++) {
        if (i < 10)
            snprintf(payload, sizeof payload, "v%zu", i);
        else if (i == 10)
            snprintf(payload, sizeof payload, "L");
        else
            snprintf(payload, sizeof payload, "p%zu", i - 11);
        assert_string_equal(c->log.recs[i].payload, payload);
        if (i > 0)
            assert_true(c->log.recs[i - 1].msg_id < c->log.recs[i].msg_id);
    }
    core_check_all(f);
    core_stop(f); /* all acknowledged: no row of it stays */
    assert_int_equal(db_count(f, "SELECT count(*) FROM entries WHERE queue_id ="
                                 " (SELECT id FROM queues WHERE name = 'late')"),
                     0);
}

/* ---- reload ----------------------------------------------------------------------- */

static const char *const reload_a = "adapters:\n"
                                    "  - {name: src, type: exec, command: [fake]}\n"
                                    "  - {name: sinkA, type: exec, command: [fake], inflight: 1}\n"
                                    "routes:\n"
                                    "  - name: r1\n"
                                    "    from: a/#\n"
                                    "    to: sinkA\n"
                                    "    retry: {backoff: 10ms}\n"
                                    "  - name: r2\n"
                                    "    from: b/#\n"
                                    "    retain: true\n";

/* r1 with other settings, r2 with one more filter, a new sink with a
 * route of its own. */
static const char *const reload_b = "adapters:\n"
                                    "  - {name: src, type: exec, command: [fake]}\n"
                                    "  - {name: sinkA, type: exec, command: [fake], inflight: 1}\n"
                                    "  - {name: sinkB, type: exec, command: [fake]}\n"
                                    "routes:\n"
                                    "  - name: r1\n"
                                    "    from: a/#\n"
                                    "    to: sinkA\n"
                                    "    retry: {max_attempts: 2, backoff: 10ms}\n"
                                    "  - name: r2\n"
                                    "    from: [b/#, c/#]\n"
                                    "    retain: true\n"
                                    "  - name: r3\n"
                                    "    from: b/#\n"
                                    "    to: sinkB\n";

/* sinkA changed (restarted), r2 gone, r3 kept. */
static const char *const reload_c = "adapters:\n"
                                    "  - {name: src, type: exec, command: [fake]}\n"
                                    "  - {name: sinkA, type: exec, command: [fake], inflight: 2}\n"
                                    "  - {name: sinkB, type: exec, command: [fake]}\n"
                                    "routes:\n"
                                    "  - name: r1\n"
                                    "    from: a/#\n"
                                    "    to: sinkA\n"
                                    "    retry: {max_attempts: 2, backoff: 10ms}\n"
                                    "  - name: r3\n"
                                    "    from: b/#\n"
                                    "    to: sinkB\n";

static void test_reload_keeps_queues(void **state)
{
    core_fx *f = *state;
    fake_adapter *a, *b;
    sb_queue *q1, *q2;
    fake_consumer *c;
    fake_rec *held;
    sb_error err;

    core_start(f, reload_a);
    a = fake("sinkA");
    q1 = core_queue(f, "r1:sinkA");
    q2 = core_queue(f, "r2");
    core_publish_ok(f, fake("src"), "a/1", "a1", NULL);
    core_publish_ok(f, fake("src"), "a/2", "a2", NULL);
    core_publish_ok(f, fake("src"), "a/3", "a3", NULL);
    core_publish_ok(f, fake("src"), "b/1", "b1", NULL);
    core_publish_ok(f, fake("src"), "b/2", "b2", NULL);
    assert_int_equal(a->log.count, 1); /* window 1: a1 held */
    held = &a->log.recs[0];

    /* New settings, same queues: their messages and the delivery in flight stay. */
    assert_int_equal(core_reload(f, reload_b, &err), 0);
    assert_ptr_equal(core_queue(f, "r1:sinkA"), q1);
    assert_ptr_equal(core_queue(f, "r2"), q2);
    assert_ptr_equal(fake("sinkA"), a);
    assert_int_equal(fake_generations("sinkA"), 1);
    assert_int_equal(q1->depth, 3);
    assert_int_equal(q1->max_attempts, 2);
    assert_int_equal(q2->depth, 2);
    core_check_all(f);
    core_publish_ok(f, fake("src"), "c/1", "c1", NULL); /* the new filter */
    assert_int_equal(q2->depth, 3);
    fake_ack(held);
    CORE_WAIT(f, a->log.count == 2);
    assert_string_equal(a->log.recs[1].payload, "a2");
    /* The new route's queue starts with the retained values. */
    b = fake("sinkB");
    CORE_WAIT(f, b->log.count == 2);
    assert_string_equal(b->log.recs[0].payload, "b1");
    assert_string_equal(b->log.recs[0].retained, "true");
    assert_string_equal(b->log.recs[1].payload, "b2");
    core_check_all(f);

    /* A changed adapter restarts: what it held comes back to the new one. */
    assert_int_equal(core_reload(f, reload_c, &err), 0);
    CORE_WAIT(f, fake_get("sinkA") != NULL && fake_get("sinkA") != a &&
                     fake_get("sinkA")->log.count == 2);
    a = fake("sinkA");
    assert_int_equal(fake_generations("sinkA"), 2);
    assert_string_equal(a->log.recs[0].payload, "a3");
    assert_string_equal(a->log.recs[1].payload, "a2"); /* after its retry backoff */
    assert_int_equal(a->log.recs[1].attempt, 2);
    assert_ptr_equal(core_queue(f, "r1:sinkA"), q1);
    /* A route gone: its queue stays, with its messages. */
    assert_ptr_equal(core_queue(f, "r2"), q2);
    assert_int_equal(q2->depth, 3);
    assert_null(q2->route);
    core_check_all(f);

    /* A reload that cannot apply keeps the running configuration. */
    assert_int_equal(core_reload(f,
                                 "adapters:\n"
                                 "  - {name: x, type: exec, command: [fake], protocol: jsonl}\n"
                                 "routes:\n"
                                 "  - {name: r1, from: a/#, to: x}\n",
                                 &err),
                     SB_ECONFIG);
    assert_non_null(strstr(err.msg, "cannot be a destination"));
    assert_ptr_equal(fake("sinkA"), a);
    assert_ptr_equal(core_queue(f, "r1:sinkA"), q1);

    /* The orphaned queue survives a restart and drains by name. */
    fake_ack(&a->log.recs[0]);
    fake_ack(&a->log.recs[1]);
    core_stop(f);
    core_start(f, reload_c);
    assert_int_equal(core_queue(f, "r1:sinkA")->depth, 0);
    c = core_attach(f, "r2", 8);
    assert_int_equal(c->log.count, 3);
    assert_string_equal(c->log.recs[0].payload, "b1");
    assert_string_equal(c->log.recs[2].payload, "c1");
    core_check_all(f);
}

/* A route removed while its sink holds a delivery: the delivery stays valid
 * and is acknowledged; nothing new goes to that sink. */
static void test_reload_retires_binding(void **state)
{
    static const char *const before = "adapters:\n"
                                      "  - {name: sink, type: exec, command: [fake]}\n"
                                      "routes:\n"
                                      "  - {name: r, from: t/#, to: sink}\n";
    static const char *const after = "adapters:\n"
                                     "  - {name: sink, type: exec, command: [fake]}\n"
                                     "routes: []\n";
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    sb_error err;

    core_start(f, before);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    core_publish_ok(f, NULL, "t/1", "in flight", NULL);
    assert_int_equal(sink->log.count, 1);
    assert_int_equal(core_reload(f, after, &err), 0);
    assert_ptr_equal(fake("sink"), sink);
    assert_false(sb_broker_is_destination(f->b, &sink->base));
    fake_ack(&sink->log.recs[0]);
    assert_int_equal(q->depth, 0);
    assert_int_equal(q->acked, 1);
    core_check_all(f);

    /* Put back: the sink gets deliveries again. */
    assert_int_equal(core_reload(f, before, &err), 0);
    core_publish_ok(f, NULL, "t/1", "next", NULL);
    CORE_WAIT(f, sink->log.count == 2);
    assert_string_equal(sink->log.recs[1].payload, "next");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deliver_and_ack, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_adapter_stats, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_free_lists_reused_and_drained, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_redelivers, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_deadletters, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_restart_redelivers_unacked, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_detach_returns_deliveries, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_nack_backoff_then_deadletter, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_deadletter_redrive, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_stop_ends_redrive, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_dedup_drops_duplicates, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_keys_by_prefix, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_publish_key_deleted_before_commit, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_publish_key_resent_before_commit, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_failed_puts_forget_known_key, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_dedup_window_ends, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_reject, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_drop_oldest, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest_after_burst, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_publish_drops_nothing, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_expires_at_delivery, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_expires_without_consumer, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_values, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_at_subscribe, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_clear_in_flight_at_subscribe, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_refused_in_flight_at_subscribe, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_refused_durable_in_flight, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_duplicate_durable_in_flight, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_queue_deleted, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_at_stop, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_copied_once, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_copy_keeps_expiry, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_retained_in_flight_paged, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_queues, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_reload_retires_binding, core_setup, core_teardown),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
