/*
 * Allocation failures in the core, as SQLite tests them: an operation is run
 * again and again, each time with the next allocation on the loop thread
 * failing once (sb_alloc_fail_once), until a run meets no failure. Every
 * run must end in an error returned to the caller or in success, leave the
 * queues consistent (core_check_all), and never lose or invent a message:
 * after a restart the store holds exactly what was acknowledged. Leaks are
 * LeakSanitizer's to find (the dev preset builds with ASan), checked at the
 * end of each test.
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
#include "service/alloc.h"
#include "storage/store_test.h"

#if defined(__SANITIZE_ADDRESS__)
#define CORE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CORE_LSAN 1
#endif
#endif
#ifdef CORE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

/* Runs at most this many times; an operation that makes more allocations
 * than this fails the test (raise it if the core legitimately grew). */
#define MAX_RUNS 400

static void check_no_leaks(void)
{
#ifdef CORE_LSAN
    assert_int_equal(__lsan_do_recoverable_leak_check(), 0);
#endif
}

static fake_adapter *fake(const char *name)
{
    fake_adapter *a = fake_get(name);
    if (a == NULL)
        fail_msg("no running fake adapter %s", name);
    return a;
}

static void test_fail_once_hook(void **state)
{
    void *a, *b, *c;
    (void)state;
    sb_alloc_fail_once(1);
    a = sb_malloc(8);
    b = sb_malloc(8);
    c = sb_malloc(8);
    assert_non_null(a);
    assert_null(b);
    assert_non_null(c);
    assert_int_equal(sb_alloc_failures(), 1);
    sb_free(a);
    sb_free(c);
    sb_alloc_fail_once(5);
    a = sb_malloc(8);
    assert_int_equal(sb_alloc_failures(), 0);
    sb_alloc_fail_once(-1);
    sb_free(a);
}

/* ---- publish ---------------------------------------------------------------- */

/* One publish reaches five queues (more than a publish holds inline): a
 * sink with retain and dedup, a drop-oldest queue that drops on every
 * publish, and queues of each durability without consumers. (The sink's
 * route comes last so that the broker, which looks at the newest queue
 * first, handles it first: a failure that changes a queue changes what the
 * following runs allocate, and the sink's queue must not be skipped.) */
static const char *const publish_cfg = "adapters:\n"
                                       "  - {name: src, type: exec, command: [fake]}\n"
                                       "  - {name: sink, type: exec, command: [fake]}\n"
                                       "routes:\n"
                                       "  - {name: small, from: t/#, max_depth: 2, overflow: "
                                       "drop-oldest}\n"
                                       "  - {name: keep, from: t/#}\n"
                                       "  - {name: batched, from: t/#, durability: batched}\n"
                                       "  - {name: mem, from: t/#, durability: memory}\n"
                                       "  - name: main\n"
                                       "    from: t/#\n"
                                       "    to: sink\n"
                                       "    retain: true\n"
                                       "    dedup: {header: id}\n";

enum { REFUSED = 0, ACCEPTED = 1 };

static void ack_all(fake_adapter *a)
{
    for (size_t i = 0; i < a->log.count; i++)
        if (a->log.recs[i].d != NULL)
            fake_ack(&a->log.recs[i]);
}

static void test_oom_publish(void **state)
{
    core_fx *f = *state;
    int outcome[MAX_RUNS];
    char payload[32], id[32];
    long runs = 0, accepted = 0;
    const char *last_accepted = NULL;
    char last[32];
    fake_adapter *sink;
    fake_consumer *c;
    sb_queue *main_q, *small;
    fake_pub p;

    core_start(f, publish_cfg);
    sink = fake("sink");
    fake_set_mode(sink, FAKE_ACK);
    main_q = core_queue(f, "main:sink");
    small = core_queue(f, "small");
    /* warm up: the drop-oldest queue is full, the maps have their buckets */
    for (int i = 0; i < 3; i++) {
        const char *const h[] = {"id", i == 0 ? "w0" : i == 1 ? "w1" : "w2", NULL};
        core_publish_ok(f, fake("src"), "t/x", "warm", h);
    }

    for (long n = 0;; n++) {
        long failures;
        sb_message *m;
        const char *h[3] = {"id", id, NULL};
        if (n == MAX_RUNS)
            fail_msg("publish still meets injected failures after %d runs", MAX_RUNS);
        snprintf(payload, sizeof(payload), "m%ld", n);
        snprintf(id, sizeof(id), "k%ld", n);
        m = fake_message("t/x", payload, h);

        sb_alloc_fail_once(n);
        fake_publish_msg(&p, f->b, fake("src"), m, 0, NULL);
        if (p.rc == 0)
            CORE_WAIT(f, p.done);
        /* delivered and acknowledged, or not queued (then after a restart) */
        CORE_WAIT(f, main_q->pending == 0 && main_q->depth == 0 && !f->b->flush_armed);
        failures = sb_alloc_failures();
        sb_alloc_fail_once(-1);
        sb_message_unref(m);

        if (p.rc == 0) {
            assert_int_equal(p.calls, 1);
            assert_int_equal(p.status, 0);
            outcome[n] = ACCEPTED;
            accepted++;
            snprintf(last, sizeof(last), "%s", payload);
            last_accepted = last;
        } else {
            if (p.rc != SB_ENOMEM)
                fail_msg("run %ld: publish returned %s (%s)", n, sb_errname(p.rc), p.err.msg);
            assert_int_equal(p.err.code, SB_ENOMEM);
            assert_true(p.err.msg[0] != '\0');
            assert_int_equal(p.done, 0);
            outcome[n] = REFUSED;
        }
        assert_true(small->depth <= 2);
        core_check_all(f);
        runs = n + 1;
        if (failures == 0) {
            assert_int_equal(p.rc, 0); /* nothing failed: it must have worked */
            break;
        }
    }
    print_message("publish: %ld runs, %ld accepted\n", runs, accepted);
    assert_true(runs > 10);
    assert_non_null(last_accepted);
    /* Accepted means queued: delivered without waiting for a restart. */
    for (long n = 0; n < runs; n++) {
        snprintf(payload, sizeof(payload), "m%ld", n);
        if (outcome[n] == ACCEPTED && fake_count(&sink->log, payload) == 0)
            fail_msg("run %ld: accepted message %s was not delivered", n, payload);
        if (outcome[n] == REFUSED && fake_count(&sink->log, payload) != 0)
            fail_msg("run %ld: refused message %s was delivered", n, payload);
    }

    /* After a restart the store holds exactly the accepted messages (an
     * acknowledgement that could not be recorded is delivered again). */
    fake_log log_before = sink->log;
    memset(&sink->log, 0, sizeof(sink->log));
    core_stop(f);
    core_start(f, publish_cfg);
    sink = fake("sink");
    ack_all(sink);
    fake_set_mode(sink, FAKE_ACK);
    CORE_WAIT(f, core_queue(f, "main:sink")->depth == 0);
    for (long n = 0; n < runs; n++) {
        size_t seen;
        snprintf(payload, sizeof(payload), "m%ld", n);
        seen = fake_count(&log_before, payload) + fake_count(&sink->log, payload);
        if (outcome[n] == ACCEPTED && seen == 0)
            fail_msg("run %ld: accepted message %s was never delivered", n, payload);
        if (outcome[n] == REFUSED && seen != 0)
            fail_msg("run %ld: refused message %s was delivered", n, payload);
    }
    fake_log_free(&log_before);

    /* A queue nobody consumed holds each accepted message once, in order. */
    c = core_attach(f, "keep", 1000);
    assert_int_equal(c->log.count, 3 + (size_t)accepted);
    for (long n = 0, i = 3; n < runs; n++)
        if (outcome[n] == ACCEPTED) {
            snprintf(payload, sizeof(payload), "m%ld", n);
            assert_string_equal(c->log.recs[i++].payload, payload);
        }
    assert_int_equal(core_queue(f, "batched")->depth, 3 + accepted);

    /* The retained value is the last accepted one. */
    assert_int_equal(sb_broker_subscribe(f->b, "late", "t/#", NULL, &(sb_error){0}), 0);
    c = core_attach(f, "late", 8);
    CORE_WAIT(f, c->log.count == 1);
    assert_string_equal(c->log.recs[0].payload, last_accepted);

    /* Dedup keys: those of accepted messages were committed, the others not. */
    for (long n = 0; n < runs; n++) {
        const char *h[3] = {"id", id, NULL};
        snprintf(id, sizeof(id), "k%ld", n);
        assert_int_equal(fake_publish(&p, f->b, NULL, "t/x", "again", h, 0, NULL), 0);
        assert_int_equal(core_pub_wait(f, &p), 0);
        assert_int_equal(p.queues, outcome[n] == ACCEPTED ? 0 : 6); /* and "late" */
    }
    core_check_all(f);
    core_stop(f);
    check_no_leaks();
}

/* ---- subscribe ---------------------------------------------------------------- */

static const char *const sub_cfg = "adapters: []\n"
                                   "routes:\n"
                                   "  - {name: keep, from: r/#, retain: true}\n";

/* The subscription holds the three retained values, marked as such. */
static void check_retained_copies(core_fx *f, const char *name)
{
    sb_queue *q = core_queue(f, name);
    const sb_entry *e;
    int i = 1;
    assert_non_null(q);
    assert_int_equal(q->depth, 3);
    for (e = q->fifo.head; e != NULL; e = e->next, i++) {
        char topic[16];
        const char *r = sb_message_header(e->msg, "retained");
        snprintf(topic, sizeof(topic), "r/%d", i);
        assert_string_equal(e->msg->topic, topic);
        if (r == NULL || strcmp(r, "true") != 0)
            fail_msg("%s: the copy of %s lacks its retained header", name, topic);
    }
}

typedef int (*subscribe_fn)(core_fx *f, const char *name, sb_error *err);

static int do_subscribe(core_fx *f, const char *name, sb_error *err)
{
    return sb_broker_subscribe(f->b, name, "r/#", NULL, err);
}

/* A protocol session's definition written as "FILTER:QOS FILTER:QOS". */
typedef struct def_text {
    char buf[256];
    sb_sub_filter f[8];
    sb_sub_def def;
} def_text;

static void def_parse(def_text *d, const char *text, const char *owner)
{
    char *tok = d->buf;
    size_t n = 0;
    snprintf(d->buf, sizeof(d->buf), "%s", text);
    while (*tok != '\0') {
        char *end = strchr(tok, ' '), *colon;
        if (end != NULL)
            *end = '\0';
        colon = strrchr(tok, ':');
        assert_non_null(colon);
        assert_true(n < 8);
        *colon = '\0';
        d->f[n].filter = tok;
        d->f[n++].qos = atoi(colon + 1);
        tok = end != NULL ? end + 1 : tok + strlen(tok);
    }
    d->def.filters = d->f;
    d->def.filter_count = n;
    d->def.protocol = "test";
    d->def.owner = owner;
}

static int define(core_fx *f, const char *name, const char *text, const char *owner,
                  const char *retained_for, sb_error *err)
{
    def_text d;
    sb_sub_filter r = {retained_for, SB_QOS_NONE};
    def_parse(&d, text, owner);
    return sb_broker_sub_define(f->b, name, &d.def, NULL, retained_for != NULL ? &r : NULL,
                                retained_for != NULL, err);
}

/* The definition of `name` is text (as define takes it) and owner. */
static void check_def(core_fx *f, const char *name, const char *text, const char *owner)
{
    sb_sub_def def;
    char have[256];
    size_t len = 0;
    have[0] = '\0';
    assert_int_equal(sb_broker_sub_get(f->b, name, &def), 0);
    for (size_t i = 0; i < def.filter_count; i++)
        len += (size_t)snprintf(have + len, sizeof(have) - len, "%s%s:%d", i > 0 ? " " : "",
                                def.filters[i].filter, def.filters[i].qos);
    assert_string_equal(have, text);
    assert_string_equal(def.protocol, "test");
    if (owner == NULL)
        assert_null(def.owner);
    else
        assert_string_equal(def.owner, owner);
}

static int do_sub_define(core_fx *f, const char *name, sb_error *err)
{
    return define(f, name, "r/#:1 o/#:2", "alice", "r/#", err);
}

static void oom_subscribe(core_fx *f, subscribe_fn fn, int session)
{
    int outcome[MAX_RUNS];
    char name[32];
    long runs = 0;
    sb_error err;

    core_start(f, sub_cfg);
    core_publish_ok(f, NULL, "r/1", "1", NULL);
    core_publish_ok(f, NULL, "r/2", "2", NULL);
    core_publish_ok(f, NULL, "r/3", "3", NULL);

    for (long n = 0;; n++) {
        long failures;
        int rc;
        sb_queue *q;
        if (n == MAX_RUNS)
            fail_msg("subscribe still meets injected failures after %d runs", MAX_RUNS);
        snprintf(name, sizeof(name), "s%ld", n);
        sb_error_clear(&err);
        sb_alloc_fail_once(n);
        rc = fn(f, name, &err);
        CORE_WAIT(f, (q = core_queue(f, name)) == NULL || q->pending == 0);
        failures = sb_alloc_failures();
        sb_alloc_fail_once(-1);

        if (rc == 0) {
            outcome[n] = ACCEPTED;
            check_retained_copies(f, name);
            if (session)
                check_def(f, name, "r/#:1 o/#:2", "alice");
        } else {
            if (rc != SB_ENOMEM)
                fail_msg("run %ld: returned %s (%s)", n, sb_errname(rc), err.msg);
            assert_int_equal(err.code, SB_ENOMEM);
            /* no half-made subscription is left behind */
            if (core_queue(f, name) != NULL)
                fail_msg("run %ld: refused subscription %s exists", n, name);
            outcome[n] = REFUSED;
            /* and the same call works once memory is back */
            sb_error_clear(&err);
            if (fn(f, name, &err) != 0)
                fail_msg("run %ld: retry after the failure: %s", n, err.msg);
            CORE_WAIT(f, core_queue(f, name)->pending == 0);
            check_retained_copies(f, name);
        }
        core_check_all(f);
        runs = n + 1;
        if (failures == 0) {
            assert_int_equal(rc, 0);
            break;
        }
    }
    print_message("%s: %ld runs\n", session ? "sub_define" : "subscribe", runs);
    assert_true(runs > 5);

    /* Every subscription was saved with its retained copies. */
    core_stop(f);
    core_start(f, sub_cfg);
    for (long n = 0; n < runs; n++) {
        snprintf(name, sizeof(name), "s%ld", n);
        if (core_queue(f, name) == NULL)
            fail_msg("run %ld: subscription %s (%s) lost in a restart", n, name,
                     outcome[n] == ACCEPTED ? "accepted" : "made again");
        check_retained_copies(f, name);
        if (session)
            check_def(f, name, "r/#:1 o/#:2", "alice");
    }
    core_check_all(f);
    core_stop(f);
    check_no_leaks();
}

static void test_oom_subscribe(void **state)
{
    oom_subscribe(*state, do_subscribe, 0);
}

static void test_oom_sub_define(void **state)
{
    oom_subscribe(*state, do_sub_define, 1);
}

/* The payload of e's message is text. */
static int payload_is(const sb_entry *e, const char *text)
{
    return e != NULL && e->msg->payload_len == strlen(text) &&
           memcmp(e->msg->payload, text, e->msg->payload_len) == 0;
}

/* A subscription made while a retained publish commits, failing at each
 * allocation in turn: refused, it leaves nothing behind and the publish
 * goes on alone; made, it holds the older value, then the publish. */
static void test_oom_subscribe_in_flight(void **state)
{
    core_fx *f = *state;
    char name[32], older[32], newer[32];
    long runs = 0;
    sb_error err;
    fake_pub p;

    core_start(f, sub_cfg);
    core_publish_ok(f, NULL, "r/9", "v0", NULL);
    for (long n = 0;; n++) {
        long failures;
        sb_queue *q;
        int rc;
        if (n == MAX_RUNS)
            fail_msg("subscribe still meets injected failures after %d runs", MAX_RUNS);
        snprintf(name, sizeof(name), "s%ld", n);
        snprintf(older, sizeof(older), "v%ld", n);
        snprintf(newer, sizeof(newer), "v%ld", n + 1);
        sb_store_test_hold(f->b->store, 1);
        assert_int_equal(fake_publish(&p, f->b, NULL, "r/9", newer, NULL, 0, NULL), 0);
        sb_error_clear(&err);
        sb_alloc_fail_once(n);
        rc = sb_broker_subscribe(f->b, name, "r/9", NULL, &err);
        failures = sb_alloc_failures();
        sb_alloc_fail_once(-1);
        sb_store_test_hold(f->b->store, 0);
        assert_int_equal(core_pub_wait(f, &p), 0);
        if (rc == 0) {
            CORE_WAIT(f, core_queue(f, name)->pending == 0);
            q = core_queue(f, name);
            assert_int_equal(q->depth, 2);
            if (!payload_is(q->fifo.head, older) || !payload_is(q->fifo.head->next, newer))
                fail_msg("run %ld: %s lacks %s then %s", n, name, older, newer);
        } else {
            if (rc != SB_ENOMEM)
                fail_msg("run %ld: returned %s (%s)", n, sb_errname(rc), err.msg);
            if (core_queue(f, name) != NULL)
                fail_msg("run %ld: refused subscription %s exists", n, name);
        }
        core_check_all(f);
        runs = n + 1;
        if (failures == 0) {
            assert_int_equal(rc, 0);
            break;
        }
    }
    print_message("subscribe in flight: %ld runs\n", runs);
    assert_true(runs > 5);
    core_stop(f);
    check_no_leaks();
}

/* ---- redefining a session ------------------------------------------------- */

/* 1 if a publish to topic reaches the subscription `name`. */
static int reaches(core_fx *f, const char *name, const char *topic)
{
    int64_t before = core_queue(f, name)->depth;
    core_publish_ok(f, NULL, topic, "x", NULL);
    return core_queue(f, name)->depth > before;
}

/* A session that changes its filters (an MQTT SUBSCRIBE appends one, an
 * UNSUBSCRIBE replaces them) and its owner: a refused change leaves its
 * filters with their QoS, its owner and what reaches it (the subscription
 * index) as they were. */
static void oom_redefine(core_fx *f, const char *filters, const char *gained, const char *lost)
{
    const char *const old = "r/#:1 p/#:1";
    long runs = 0, accepted = 0;
    sb_error err;

    for (long n = 0;; n++) {
        long failures;
        int rc;
        sb_queue *q;
        if (n == MAX_RUNS)
            fail_msg("sub_define still meets injected failures after %d runs", MAX_RUNS);
        sb_error_clear(&err);
        sb_alloc_fail_once(n);
        rc = define(f, "s", filters, "bob", NULL, &err);
        failures = sb_alloc_failures();
        sb_alloc_fail_once(-1);

        q = core_queue(f, "s");
        assert_non_null(q);
        if (rc == 0) {
            accepted++;
            check_def(f, "s", filters, "bob");
            assert_true(reaches(f, "s", gained));
            if (lost != NULL)
                assert_false(reaches(f, "s", lost));
        } else {
            if (rc != SB_ENOMEM)
                fail_msg("run %ld: returned %s (%s)", n, sb_errname(rc), err.msg);
            check_def(f, "s", old, "alice");
            assert_false(reaches(f, "s", gained));
            if (lost != NULL)
                assert_true(reaches(f, "s", lost));
        }
        assert_true(reaches(f, "s", "r/x"));
        core_check_all(f);
        /* back to the old definition for the next run */
        assert_int_equal(define(f, "s", old, "alice", NULL, &err), 0);
        assert_false(reaches(f, "s", gained));
        runs = n + 1;
        if (failures == 0) {
            assert_int_equal(rc, 0);
            break;
        }
    }
    print_message("redefine (%s): %ld runs, %ld accepted\n", lost != NULL ? "replaced" : "appended",
                  runs, accepted);
    assert_true(runs > 2);
}

static void test_oom_sub_redefine(void **state)
{
    core_fx *f = *state;
    sb_error err;

    core_start(f, sub_cfg);
    assert_int_equal(define(f, "s", "r/#:1 p/#:1", "alice", NULL, &err), 0);
    oom_redefine(f, "r/#:1 p/#:1 o/#:2", "o/x", NULL); /* appended */
    oom_redefine(f, "r/#:2 o/#:2", "o/x", "p/x");      /* replaced */
    core_check_all(f);
    core_stop(f);
    check_no_leaks();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_once_hook),
        cmocka_unit_test_setup_teardown(test_oom_publish, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_oom_subscribe, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_oom_sub_define, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_oom_subscribe_in_flight, core_setup, core_teardown),
        cmocka_unit_test_setup_teardown(test_oom_sub_redefine, core_setup, core_teardown),
    };
    return cmocka_run_group_tests_name("core_oom", tests, NULL, NULL);
}
