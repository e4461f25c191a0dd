/*
 * Entries acknowledged before their message's commit, in-process: the
 * broker hands a message to its queues' consumers while the store commits
 * it, and an entry acknowledged before the store began the publish is
 * never written. The store is held (sb_store_test_hold) to stand for a
 * long commit, so what reaches the consumer meanwhile is deterministic.
 * Covers the row never written (the store's count of elided entries, and
 * nothing after a restart), the producer's acknowledgement still after
 * the commit, a message not acknowledged in time surviving a restart,
 * message ids reserved before a consumer sees them early, a
 * message fanned out to two queues acknowledged by one, and a publish the
 * store refuses withdrawn from the queue and from a consumer's retries,
 * and with the parts a script split it into that are not handed out yet,
 * and the protocol state kept for its delivery.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core_harness.h"
#include "storage/store_test.h"

#include <jansson.h>

static fake_adapter *fake(const char *name)
{
    fake_adapter *a = fake_get(name);
    if (a == NULL)
        fail_msg("no running fake adapter %s", name);
    return a;
}

static uint64_t elided(core_fx *f)
{
    sb_store_stats st;
    sb_store_get_stats(f->b->store, &st);
    return st.elided;
}

static const char *const one_cfg = "adapters:\n"
                                   "  - {name: src, type: exec, command: [fake]}\n"
                                   "  - {name: sink, type: exec, command: [fake], inflight: 8}\n"
                                   "routes:\n"
                                   "  - {name: r, from: t/#, to: sink}\n";

/* The first message after a start commits before anyone sees it (its id
 * is not reserved yet): it asks for ids to be reserved, which a later
 * commit writes (its ack's, at the latest). Once that commit is done, the
 * next ids are safe to show early. */
static void warm_up(core_fx *f, fake_adapter *sink)
{
    size_t before = sink->log.count;
    core_publish_ok(f, fake("src"), "t/warm", "warm", NULL);
    CORE_WAIT(f, sink->log.count == before + 1);
    fake_ack(&sink->log.recs[before]);
    CORE_WAIT(f, sb_store_reserve_ids(f->b->store, 0) >= f->b->ids_asked);
}

static void test_acked_before_commit_not_written(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_pub p;

    core_start(f, one_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    warm_up(f, sink);
    assert_int_equal(elided(f), 0);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "a", NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2);
    assert_string_equal(sink->log.recs[1].payload, "a");
    fake_ack(&sink->log.recs[1]);
    assert_int_equal(q->depth, 0);
    core_check_all(f);
    /* delivered and acknowledged, but not committed: the producer waits */
    assert_int_equal(p.done, 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 1);
    assert_int_equal(elided(f), 1);
    core_check_all(f);

    core_stop(f);
    core_start(f, one_cfg);
    assert_int_equal(core_queue(f, "r:sink")->depth, 0);
    assert_int_equal(fake("sink")->log.count, 0);
}

/* broker.store.deliver_before_commit: false: nothing reaches a consumer
 * before its commit, and every entry is written. */
static void test_opt_out_waits_for_commit(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    fake_pub p;

    f->broker_extra = "  store: {deliver_before_commit: false}\n";
    core_start(f, one_cfg);
    sink = fake("sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "a", NULL, 0, NULL), 0);
    /* early, it would be delivered in the next loop turns (see above) */
    core_wait_begin(f, 300);
    while (core_turn(f))
        assert_int_equal(sink->log.count, 1);
    assert_int_equal(p.done, 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    CORE_WAIT(f, sink->log.count == 2);
    assert_string_equal(sink->log.recs[1].payload, "a");
    fake_ack(&sink->log.recs[1]);
    CORE_WAIT(f, core_queue(f, "r:sink")->depth == 0);
    assert_int_equal(elided(f), 0);
    core_check_all(f);
}

static void test_unacked_before_commit_survives(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    fake_pub pa, pb;

    core_start(f, one_cfg);
    sink = fake("sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&pa, f->b, fake("src"), "t/1", "a", NULL, 0, NULL), 0);
    assert_int_equal(fake_publish(&pb, f->b, fake("src"), "t/1", "b", NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 3);
    fake_ack(&sink->log.recs[1]); /* a, before its commit; b stays held */
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &pa), 0);
    assert_int_equal(core_pub_wait(f, &pb), 0);
    assert_int_equal(elided(f), 1);
    core_check_all(f);

    /* b is held when the broker stops: it was written, and comes back */
    core_stop(f);
    core_start(f, one_cfg);
    sink = fake("sink");
    CORE_WAIT(f, sink->log.count == 1);
    assert_string_equal(sink->log.recs[0].payload, "b");
    assert_int_equal(sink->log.recs[0].redelivery, 1);
    assert_int_equal(core_queue(f, "r:sink")->depth, 1);
    fake_ack(&sink->log.recs[0]);
    core_check_all(f);
}

/* A consumer sees a message before its commit only when its id is already
 * recorded as taken: the first publish after a start waits for its commit
 * (and records ids far ahead), so an id a consumer saw is never reused
 * after a crash; after a restart, new ids start past the reservation. */
static void test_ids_reserved_before_early(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_pub p;
    uint64_t first;

    core_start(f, one_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "a", NULL, 0, NULL), 0);
    assert_int_equal(q->early, 0); /* not handed to the queue before its commit */
    assert_int_equal(q->depth, 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    first = p.msg_id;
    CORE_WAIT(f, sink->log.count == 1);
    fake_ack(&sink->log.recs[0]);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "b", NULL, 0, NULL), 0);
    assert_int_equal(q->early, 1); /* its id is reserved now */
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    CORE_WAIT(f, sink->log.count == 2);
    fake_ack(&sink->log.recs[1]);

    core_stop(f);
    core_start(f, one_cfg);
    assert_true(f->b->last_msg_id > first + 1000);
}

static const char *const fan_cfg = "adapters:\n"
                                   "  - {name: src, type: exec, command: [fake]}\n"
                                   "  - {name: s1, type: exec, command: [fake], inflight: 8}\n"
                                   "  - {name: s2, type: exec, command: [fake], inflight: 8}\n"
                                   "routes:\n"
                                   "  - {name: r, from: t/#, to: [s1, s2]}\n";

/* One entry of a fanned-out message is withdrawn, the other written. */
static void test_fan_out_acked_by_one(void **state)
{
    core_fx *f = *state;
    fake_adapter *s1, *s2;
    fake_pub p;

    core_start(f, fan_cfg);
    s1 = fake("s1");
    s2 = fake("s2");
    core_publish_ok(f, fake("src"), "t/warm", "warm", NULL);
    CORE_WAIT(f, s1->log.count == 1 && s2->log.count == 1);
    fake_ack(&s1->log.recs[0]);
    fake_ack(&s2->log.recs[0]);
    /* as warm_up: t/1 is shown early only once the reservation is on disk */
    CORE_WAIT(f, sb_store_reserve_ids(f->b->store, 0) >= f->b->ids_asked);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "a", NULL, 0, NULL), 0);
    CORE_WAIT(f, s1->log.count == 2 && s2->log.count == 2);
    fake_ack(&s1->log.recs[1]);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), 0);
    assert_int_equal(p.queues, 2);
    assert_int_equal(elided(f), 1);

    core_stop(f);
    core_start(f, fan_cfg);
    s1 = fake("s1");
    s2 = fake("s2");
    CORE_WAIT(f, s2->log.count == 1);
    assert_string_equal(s2->log.recs[0].payload, "a");
    assert_int_equal(s1->log.count, 0);
    assert_int_equal(core_queue(f, "r:s1")->depth, 0);
    fake_ack(&s2->log.recs[0]);
    core_check_all(f);
}

/* A publish whose group fails (the database size limit) leaves the queue
 * even though a consumer got it: the producer was told it was refused, so
 * neither the entry waiting for a consumer nor the one a consumer returns
 * is delivered again. */
static void test_refused_publish_withdrawn(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: src, type: exec, command: [fake]}\n"
                                   "  - {name: sink, type: exec, command: [fake], inflight: 1}\n"
                                   "routes:\n"
                                   "  - {name: r, from: t/#, to: sink}\n";
    core_fx *f = *state;
    size_t big = 512 * 1024;
    char *payload = malloc(big + 1);
    fake_adapter *sink;
    sb_queue *q;
    fake_pub pa, pb;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&pa, f->b, fake("src"), "t/1", payload, NULL, 0, NULL), 0);
    assert_int_equal(fake_publish(&pb, f->b, fake("src"), "t/1", payload, NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2); /* a leased; b waits for room */
    assert_int_equal(q->depth, 2);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &pa), SB_ENOSPC);
    assert_int_equal(core_pub_wait(f, &pb), SB_ENOSPC);
    assert_int_equal(q->depth, 1); /* b withdrawn; a with the consumer */
    core_check_all(f);
    fake_nack(&sink->log.recs[1], "no");
    assert_int_equal(q->depth, 0);
    assert_int_equal(sink->log.count, 2); /* neither comes back */
    assert_int_equal(q->published, 1);
    core_check_all(f);
    free(payload);
}

/* A message a script splits goes to the consumer a part at a time; when
 * the store refuses its publish, the parts not handed out yet are
 * withdrawn with it, and the part in flight ends it. */
static void test_refused_fan_out_withdrawn(void **state)
{
    static const char *const split_lua = "function transform(msg)\n"
                                         "  local out = {}\n"
                                         "  for v in msg.payload:gmatch('[^;]+') do\n"
                                         "    out[#out + 1] = { topic = msg.topic, payload = v }\n"
                                         "  end\n"
                                         "  return out\n"
                                         "end\n";
    core_fx *f = *state;
    size_t part = 150 * 1024;
    char *payload = malloc(3 * (part + 1)), cfg[1600], script[1100];
    FILE *fp;
    fake_adapter *sink;
    sb_queue *q;
    fake_pub p;

    assert_non_null(payload);
    for (int i = 0; i < 3; i++) {
        memset(payload + i * (part + 1), 'a' + i, part);
        payload[i * (part + 1) + part] = i < 2 ? ';' : '\0';
    }
    snprintf(script, sizeof script, "%s/split.lua", f->dir);
    assert_non_null(fp = fopen(script, "w"));
    fputs(split_lua, fp);
    fclose(fp);
    snprintf(cfg, sizeof cfg,
             "adapters:\n"
             "  - {name: src, type: exec, command: [fake]}\n"
             "  - {name: sink, type: exec, command: [fake], inflight: 1}\n"
             "routes:\n"
             "  - {name: r, from: t/#, to: sink, transform: {lua: '%s'}}\n",
             script);
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", payload, NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2); /* the first part; two wait */
    assert_int_equal(sink->log.recs[1].payload[0], 'a');
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    assert_int_equal(q->depth, 1); /* the part in flight */
    core_check_all(f);
    fake_ack(&sink->log.recs[1]);
    assert_int_equal(q->depth, 0);
    assert_null(q->fanning);
    assert_int_equal(sink->log.count, 2); /* no other part went out */
    core_check_all(f);
    free(payload);
}

static void on_key_put(void *ctx, int status)
{
    int *done = ctx;
    assert_int_equal(status, 0);
    *done = 1;
}

/* Protocol state recorded for an early delivery (an MQTT "rel" key at
 * PUBREC) goes with its message when the store refuses it, also when the
 * consumer had left before the refusal (its delivery back in the queue):
 * no acknowledgement would ever delete it. */
/* Starts a broker whose store will refuse the next publish (too big for
 * max_db_bytes), holds the store, publishes it (p), and returns its early
 * delivery to the sink; the store stays held. *payload: free it at the end. */
static sb_delivery *deliver_refused_early(core_fx *f, fake_pub *p, char **payload)
{
    size_t big = 512 * 1024;
    fake_adapter *sink;

    *payload = malloc(big + 1);
    assert_non_null(*payload);
    memset(*payload, 'x', big);
    (*payload)[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, one_cfg);
    sink = fake("sink");
    warm_up(f, sink);
    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(p, f->b, fake("src"), "t/1", *payload, NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2);
    return sink->log.recs[1].d;
}

static void test_refused_publish_drops_keys(void **state)
{
    static const char *const key = "$test\nsub\nrel\n1";
    core_fx *f = *state;
    char *payload;
    fake_pub p;
    sb_delivery *d = deliver_refused_early(f, &p, &payload);
    fake_adapter *sink = fake("sink");
    int put = 0;

    assert_int_equal(sb_delivery_key_put(f->b, d, key, on_key_put, &put), 0);
    sink->log.recs[1].d = NULL;
    fake_set_mode(sink, FAKE_BUSY);           /* gone: takes nothing more */
    sb_delivery_return(d, "the client left"); /* back in the queue */
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    CORE_WAIT(f, put);
    /* the put completed after the refusal deleted the key */
    assert_false(sb_broker_key_exists(f->b, key));
    assert_int_equal(core_queue(f, "r:sink")->depth, 0);
    assert_int_equal(sink->log.count, 2);
    core_check_all(f);

    core_stop(f);
    core_start(f, one_cfg);
    assert_false(sb_broker_key_exists(f->b, key));
    free(payload);
}

static void count_key(const char *key, void *ctx)
{
    (void)key;
    (*(int *)ctx)++;
}

/* A key put because the store refused its message (an MQTT PUBREL owed)
 * is there from the refusal on, also for a walk over its prefix (an MQTT
 * session resumed before that put commits, which may take long when the
 * disk is full, gets its PUBREL); deleted before the put commits (the
 * client's PUBCOMP came first), it stays deleted: the put's completion
 * does not bring it back. */
static void test_owed_key_deleted_before_its_put(void **state)
{
    static const char *const owed[1] = {"$test\nsub\nowed\n1"};
    core_fx *f = *state;
    char *payload;
    fake_pub p;
    sb_delivery *d = deliver_refused_early(f, &p, &payload);
    fake_adapter *sink = fake("sink");
    int put = 0, found = 0;

    assert_int_equal(sb_delivery_keys_if_refused(f->b, d, owed, 1), 0);
    sb_store_test_hold_before(f->b->store, SB_OP_KEY_PUT); /* the owed put waits */
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    assert_true(sb_broker_key_exists(f->b, owed[0]));
    sb_broker_key_each(f->b, "$test\nsub\nowed\n", count_key, &found); /* the resume */
    assert_int_equal(found, 1);
    sb_broker_key_delete(f->b, owed[0], 0); /* the PUBCOMP */
    assert_false(sb_broker_key_exists(f->b, owed[0]));
    /* a later put completes after both */
    assert_int_equal(sb_broker_key_put(f->b, "$test\nsub\nlater", on_key_put, &put), 0);
    sb_store_test_hold_before(f->b->store, 0);
    CORE_WAIT(f, put);
    assert_false(sb_broker_key_exists(f->b, owed[0]));
    sink->log.recs[1].d = NULL;
    sb_delivery_done(d, 0, NULL);
    core_check_all(f);

    core_stop(f);
    core_start(f, one_cfg);
    assert_false(sb_broker_key_exists(f->b, owed[0]));
    free(payload);
}

/* Counts the completions of key puts (any status). */
static void on_key_counted(void *ctx, int status)
{
    (void)status;
    (*(int *)ctx)++;
}

/* A key put whose key is deleted (alone, or with a prefix) before the put
 * commits stays deleted, in the map as in the store; a put after the
 * delete wins over both: the map follows the order of the ops, not the
 * order their commits complete in (an MQTT client that completes, or a
 * clean session that ends, while its QoS 2 state is being recorded). */
static void test_key_deleted_before_its_put(void **state)
{
    core_fx *f = *state;
    int done = 0;

    core_start(f, one_cfg);
    sb_store_test_hold_before(f->b->store, SB_OP_KEY_PUT); /* the puts wait */
    assert_int_equal(sb_broker_key_put(f->b, "$test\nc1\nrel\n1", on_key_counted, &done), 0);
    assert_int_equal(sb_broker_key_put(f->b, "$test\nc2\nrel\n1", on_key_counted, &done), 0);
    assert_int_equal(sb_broker_key_put(f->b, "$test\nc2\nrel\n2", on_key_counted, &done), 0);
    assert_int_equal(sb_broker_key_put(f->b, "$test\nc3\nrel\n1", on_key_counted, &done), 0);
    sb_broker_key_delete(f->b, "$test\nc1\nrel\n1", 0); /* the PUBCOMP */
    sb_broker_key_delete(f->b, "$test\nc2\n", 1);       /* the session ends */
    sb_broker_key_delete(f->b, "$test\nc3\nrel\n1", 0);
    assert_int_equal(sb_broker_key_put(f->b, "$test\nc3\nrel\n1", on_key_counted, &done), 0);
    sb_store_test_hold_before(f->b->store, 0);
    CORE_WAIT(f, done == 5);
    assert_false(sb_broker_key_exists(f->b, "$test\nc1\nrel\n1"));
    assert_false(sb_broker_key_exists(f->b, "$test\nc2\nrel\n1"));
    assert_false(sb_broker_key_exists(f->b, "$test\nc2\nrel\n2"));
    assert_true(sb_broker_key_exists(f->b, "$test\nc3\nrel\n1"));
    core_check_all(f);

    core_stop(f);
    core_start(f, one_cfg);
    assert_false(sb_broker_key_exists(f->b, "$test\nc1\nrel\n1"));
    assert_false(sb_broker_key_exists(f->b, "$test\nc2\nrel\n1"));
    assert_true(sb_broker_key_exists(f->b, "$test\nc3\nrel\n1"));
}

/* A graceful stop whose final drain completes a refused early publish
 * still records what the refusal leaves: its PUBREL owed is put (the
 * client gets it after the restart) and its rel key deleted (nothing else
 * would delete it). */
static void test_refused_in_stop_drain(void **state)
{
    static const char *const rel = "$test\nsub\nrel\n1";
    static const char *const owed[] = {"$test\nsub\nowed", "$test\nsub\nowed\n1"};
    core_fx *f = *state;
    char *payload;
    fake_pub p;
    sb_delivery *d = deliver_refused_early(f, &p, &payload); /* the store held */
    int put = 0;

    assert_int_equal(sb_delivery_keys_if_refused(f->b, d, owed, 2), 0);
    assert_int_equal(sb_delivery_key_put(f->b, d, rel, on_key_put, &put), 0);
    core_stop(f); /* the publish and the put run in the stop's drain */
    assert_true(put);
    assert_int_equal(p.status, SB_ENOSPC);
    core_start(f, one_cfg);
    assert_false(sb_broker_key_exists(f->b, rel));
    assert_true(sb_broker_key_exists(f->b, owed[0]));
    assert_true(sb_broker_key_exists(f->b, owed[1]));
    free(payload);
}

static const char *const lease_cfg = "adapters:\n"
                                     "  - {name: src, type: exec, command: [fake]}\n"
                                     "  - {name: sink, type: exec, command: [fake], inflight: 8}\n"
                                     "routes:\n"
                                     "  - name: r\n"
                                     "    from: t/#\n"
                                     "    to: sink\n"
                                     "    lease: 50ms\n";

/* A delivery whose lease ends before its message's commit has no entry
 * any more, yet still is the message's: when the store then refuses it,
 * it says so (a late PUBREC records nothing for it), its key goes and the
 * key to put on a refusal (a PUBREL owed) is put. */
static void test_refused_after_lease_ended(void **state)
{
    static const char *const rel = "$test\nsub\nrel\n1";
    static const char *const owed[] = {"$test\nsub\nowed\n1", "$test\nsub\nowed"};
    core_fx *f = *state;
    size_t big = 512 * 1024;
    char *payload = malloc(big + 1);
    fake_adapter *sink;
    sb_delivery *d;
    fake_pub p;
    int put = 0;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, lease_cfg);
    sink = fake("sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", payload, NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2);
    d = sink->log.recs[1].d;
    assert_int_equal(sb_delivery_keys_if_refused(f->b, d, owed, 2), 0);
    fake_set_mode(sink, FAKE_BUSY); /* takes no redelivery */
    CORE_WAIT(f, d->entry == NULL); /* the lease ended */
    assert_false(sb_delivery_withdrawn(d));
    assert_int_equal(sb_delivery_key_put(f->b, d, rel, on_key_put, &put), 0);
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &p), SB_ENOSPC);
    assert_true(sb_delivery_withdrawn(d));
    CORE_WAIT(f, put && sb_broker_key_exists(f->b, owed[0]) && sb_broker_key_exists(f->b, owed[1]));
    assert_false(sb_broker_key_exists(f->b, rel));
    sink->log.recs[1].d = NULL;
    sb_delivery_done(d, 0, NULL);
    CORE_WAIT(f, core_queue(f, "r:sink")->depth == 0);
    core_check_all(f);

    core_stop(f);
    core_start(f, lease_cfg);
    assert_false(sb_broker_key_exists(f->b, rel));
    assert_true(sb_broker_key_exists(f->b, owed[0]));
    free(payload);
}

static void on_redriven(void *ctx, int status, void *result, const char *why)
{
    int *done = ctx;
    (void)why;
    assert_int_equal(status, 0);
    json_decref(result);
    *done = 1;
}

static const char *const once_cfg =
    "adapters:\n"
    "  - {name: src, type: exec, command: [fake]}\n"
    "  - {name: sink, type: exec, command: [fake], inflight: 8}\n"
    "routes:\n"
    "  - {name: r, from: t/#, to: sink, retry: {max_attempts: 1}}\n";

/* A dead letter on its way back has an older id than a publish made
 * meanwhile: the publish must not overtake it by going to the queue before
 * its commit (acks are deleted as id ranges, and paging reads ids upward). */
static void test_redrive_not_overtaken(void **state)
{
    core_fx *f = *state;
    fake_adapter *sink;
    sb_queue *q;
    fake_pub p;
    sb_error err;
    int done = 0;

    core_start(f, once_cfg);
    sink = fake("sink");
    q = core_queue(f, "r:sink");
    warm_up(f, sink);
    core_publish_ok(f, fake("src"), "t/1", "dead", NULL);
    CORE_WAIT(f, sink->log.count == 2);
    fake_nack(&sink->log.recs[1], "no");
    assert_int_equal(q->dead, 1);

    sb_store_test_hold_before(f->b->store, SB_OP_DLQ_REDRIVE);
    assert_int_equal(sb_broker_dlq_redrive(f->b, "r:sink", on_redriven, &done, &err), 0);
    CORE_WAIT(f, q->redriving == 1);
    assert_int_equal(fake_publish(&p, f->b, fake("src"), "t/1", "new", NULL, 0, NULL), 0);
    sb_store_test_hold_before(f->b->store, 0);
    CORE_WAIT(f, done && sink->log.count == 4);
    assert_string_equal(sink->log.recs[2].payload, "dead");
    assert_string_equal(sink->log.recs[3].payload, "new");
    assert_true(sink->log.recs[2].msg_id < sink->log.recs[3].msg_id);
    assert_int_equal(core_pub_wait(f, &p), 0);
    fake_ack(&sink->log.recs[2]);
    fake_ack(&sink->log.recs[3]);
    CORE_WAIT(f, q->depth == 0 && q->redriving == 0);
    core_check_all(f);
}

/* A message dead-lettered while its publish waits for its commit is a dead
 * letter only if the publish commits: refused, its producer sends it
 * again, and a redrive must not deliver it a second time. */
static void test_refused_publish_not_dead_lettered(void **state)
{
    static const char *const cfg = "adapters:\n"
                                   "  - {name: src, type: exec, command: [fake]}\n"
                                   "  - {name: sink, type: exec, command: [fake], inflight: 1}\n"
                                   "routes:\n"
                                   "  - {name: r, from: t/#, to: sink, retry: {max_attempts: 1}}\n";
    core_fx *f = *state;
    size_t big = 512 * 1024;
    char *payload = malloc(big + 1);
    fake_adapter *sink;
    fake_pub pa;
    json_t *dlq;

    assert_non_null(payload);
    memset(payload, 'x', big);
    payload[big] = '\0';
    f->broker_extra = "  store: {max_db_bytes: 256KiB}\n";
    core_start(f, cfg);
    sink = fake("sink");
    warm_up(f, sink);

    sb_store_test_hold(f->b->store, 1);
    assert_int_equal(fake_publish(&pa, f->b, fake("src"), "t/1", payload, NULL, 0, NULL), 0);
    CORE_WAIT(f, sink->log.count == 2);
    fake_nack(&sink->log.recs[1], "no"); /* dead-lettered before the commit */
    sb_store_test_hold(f->b->store, 0);
    assert_int_equal(core_pub_wait(f, &pa), SB_ENOSPC);
    assert_int_equal(core_queue(f, "r:sink")->published, 1); /* the warm-up's only */
    dlq = core_dlq(f, "r:sink");
    assert_int_equal(json_array_size(json_object_get(dlq, "items")), 0);
    json_decref(dlq);
    core_check_all(f);
    free(payload);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_acked_before_commit_not_written, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_opt_out_waits_for_commit, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_unacked_before_commit_survives, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_ids_reserved_before_early, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_fan_out_acked_by_one, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_publish_withdrawn, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_fan_out_withdrawn, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_publish_drops_keys, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_key_deleted_before_its_put, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_owed_key_deleted_before_its_put, core_setup,
                                        core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_after_lease_ended, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_in_stop_drain, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_redrive_not_overtaken, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_refused_publish_not_dead_lettered, core_setup,
                                        core_teardown),
    };
    fake_register();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
