/*
 * Crash safety: producers publish pipelined over jsonl/TCP while the broker
 * is killed (SIGKILL; TerminateProcess on Windows) at random points and
 * restarted on the same data dir, several times. Each producer is this
 * executable in "producer" mode, which is sbsoak's jsonl producer
 * (tools/soak/soak.h): it numbers its messages, keeps a window of
 * unacknowledged publishes, appends every acknowledged sequence number to
 * its ack file as the pubacks arrive (flushed per batch) and, after a
 * reconnect, publishes again from its oldest unacknowledged number.
 * tools/soak runs the same check as a standalone tool for longer runs.
 *
 * Every other round the restarted broker is killed once more within its
 * first 60 ms (while it opens and loads the store).
 *
 * The paging variant runs the same with a queue window of 64 entries
 * (broker.store.queue_window), so nearly all of the backlog is only in the
 * store, and a consumer takes from both subscriptions during each round,
 * acknowledging most of what it gets: kills land while deliveries are read
 * back from the store and while some are in flight. It checks that the
 * kills came while far more than the window was only in the store.
 *
 * At the end a consumer drains both subscriptions (one fsync, one batched)
 * and the test asserts, per subscription and producer:
 *   - every acknowledged sequence number was delivered at least once
 *     (batched too: a process kill must not lose what was acknowledged; only
 *     an OS crash may);
 *   - first deliveries of distinct sequence numbers arrive in increasing
 *     order (across the whole run for the paging variant).
 * The kill delays come from a seeded PRNG; the seed is printed, and
 * SBT_SEED=<n> repeats a run.
 */
#include "harness.h"

#include "tools/soak/soak.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRODUCERS 2
#define WINDOW 64
#define ROUNDS 6
#define MAX_SEQ 2000000 /* within SOAK_MAX_SEQ */

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "  store: { commit_max_delay_us: 500{v0} }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - name: crash-fsync\n"
                             "    from: crash/+/f\n"
                             "    durability: fsync\n"
                             "  - name: crash-batched\n"
                             "    from: crash/+/b\n"
                             "    durability: batched\n";

/* Producer k's messages: "f" all fsync, "b" all batched, "fb" alternating
 * by sequence number (odd fsync, even batched). */
static const char *const modes[PRODUCERS] = {"fb", "b"};

/* ---- the test ---- */

static uint64_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

typedef struct producer {
    sbt_proc proc;
    char ackpath[SBT_PATH_MAX];
    char logpath[SBT_PATH_MAX];
    unsigned char *acked; /* [seq] */
    unsigned long long max_acked;
} producer;

static producer producers[PRODUCERS];

static void print_file(const char *title, const char *path)
{
    char *s = sbt_read_file(path, NULL);
    fprintf(stderr, "----- %s %s -----\n%s", title, path, s != NULL ? s : "(missing)\n");
    free(s);
}

static void read_acks(producer *p)
{
    size_t n;
    char *s = sbt_read_file(p->ackpath, &n), *line, *nl;
    assert_non_null(s);
    p->acked = calloc(MAX_SEQ + 1, 1);
    assert_non_null(p->acked);
    for (line = s; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        unsigned long long seq = strtoull(line, NULL, 10);
        assert_true(seq >= 1 && seq <= MAX_SEQ);
        p->acked[seq] = 1;
        if (seq > p->max_acked)
            p->max_acked = seq;
    }
    free(s);
}

/* What a subscription delivered so far (across broker restarts). */
typedef struct sub_state {
    const char *sub;
    char cls;
    unsigned char *seen[PRODUCERS];
    unsigned long long last_first[PRODUCERS], firsts, dups;
} sub_state;

static sub_state subs[2] = {{.sub = "crash-fsync", .cls = 'f'},
                            {.sub = "crash-batched", .cls = 'b'}};

static void subs_init(void)
{
    for (int i = 0; i < 2; i++) {
        memset(subs[i].last_first, 0, sizeof(subs[i].last_first));
        subs[i].firsts = subs[i].dups = 0;
        for (int k = 0; k < PRODUCERS; k++) {
            subs[i].seen[k] = calloc(MAX_SEQ + 1, 1);
            assert_non_null(subs[i].seen[k]);
        }
    }
}

static void subs_free(void)
{
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < PRODUCERS; k++) {
            free(subs[i].seen[k]);
            subs[i].seen[k] = NULL;
        }
}

/* Checks one delivery of s and acknowledges it (unless skip_ack). */
static void take(sub_state *s, sbt_conn *c, json_t *m, int skip_ack)
{
    int k;
    unsigned long long seq;
    sbt_expect_op(m, "msg");
    if (sscanf(sbt_str(m, "payload"), "p%d:%llu", &k, &seq) != 2 || k < 0 || k >= PRODUCERS ||
        seq < 1 || seq > MAX_SEQ)
        fail_msg("%s: unexpected payload %s", s->sub, sbt_str(m, "payload"));
    if (soak_class(modes[k], seq) != s->cls)
        fail_msg("%s: p%d:%llu belongs to the other subscription", s->sub, k, seq);
    if (!s->seen[k][seq]) {
        if (seq <= s->last_first[k])
            fail_msg("%s: first delivery of p%d:%llu after that of p%d:%llu", s->sub, k, seq, k,
                     s->last_first[k]);
        s->last_first[k] = seq;
        s->seen[k][seq] = 1;
        s->firsts++;
    } else {
        s->dups++;
    }
    /* Acks are buffered; the next read flushes them. */
    if (!skip_ack)
        sbt_send(c, "{s:s, s:s, s:I}", "op", "ack", "sub", s->sub, "msg_id",
                 (json_int_t)sbt_int(m, "msg_id"));
}

/* Paging variant: consumes from both subscriptions for about ms, leaving
 * one delivery in eight unacknowledged; the broker may be killed under it
 * afterwards (the connection is dropped without a word). */
static void consume_for(sbt_broker *b, int ms)
{
    sbt_conn *c[2];
    int64_t end = sbt_now_ms() + ms;
    unsigned n = 0;
    for (int i = 0; i < 2; i++) {
        c[i] = sbt_connect(b->port[0]);
        sbt_sub(c[i], subs[i].sub, NULL, 50);
    }
    while (sbt_now_ms() < end)
        for (int i = 0; i < 2; i++) {
            json_t *m = sbt_read(c[i], 5);
            if (m != NULL) {
                take(&subs[i], c[i], m, ++n % 8 == 0);
                json_decref(m);
            }
        }
    for (int i = 0; i < 2; i++)
        sbt_close(c[i]);
}

/* Drains s and checks it against the producers' ack files. */
static void drain_and_check(sbt_broker *b, sbt_conn *stats, sub_state *s)
{
    sbt_conn *c = sbt_connect(b->port[0]);
    unsigned long long missing = 0;
    sb_error err;

    sbt_sub(c, s->sub, NULL, 2000);
    for (;;) {
        json_t *m = sbt_read(c, 300);
        if (m == NULL) {
            /* Nothing for a while: done once the queue is empty. */
            if (sbt_queue_int(stats, s->sub, "depth") == 0)
                break;
            continue;
        }
        take(s, c, m, 0);
        json_decref(m);
    }
    assert_int_equal(sb_client_flush(c->c, &err), 0);
    for (int k = 0; k < PRODUCERS; k++) {
        for (unsigned long long seq = 1; seq <= producers[k].max_acked; seq++)
            if (producers[k].acked[seq] && soak_class(modes[k], seq) == s->cls &&
                !s->seen[k][seq]) {
                if (missing < 10)
                    fprintf(stderr, "%s: acknowledged p%d:%llu was never delivered\n", s->sub, k,
                            seq);
                missing++;
            }
    }
    print_message("%s: %llu messages delivered (%llu redelivered), %llu acknowledged ones "
                  "missing\n",
                  s->sub, s->firsts, s->dups, missing);
    assert_int_equal(missing, 0);
    sbt_close(c);
}

static void kill_and_restart(sbt_broker *b, int paging)
{
    char exe[SBT_PATH_MAX], stop[SBT_PATH_MAX], endpoint[64], id[8];
    size_t exelen = sizeof(exe);
    const char *seed_env = getenv("SBT_SEED");
    uint64_t seed = seed_env != NULL ? strtoull(seed_env, NULL, 10) : uv_hrtime();
    sbt_conn *stats;
    int64_t t0 = sbt_now_ms(), most_stored = 0;

    rng = seed != 0 ? seed : 1;
    print_message("crash test seed: %llu (SBT_SEED=%llu repeats it)\n", (unsigned long long)seed,
                  (unsigned long long)seed);
    assert_int_equal(uv_exepath(exe, &exelen), 0);
    sbt_broker_init(b, paging ? "crash-paging" : "crash", 1);
    sbt_broker_set(b, 0, paging ? ", queue_window: 64" : "");
    sbt_broker_config(b, config);
    subs_init();
    sbt_broker_start(b);
    sbt_path(stop, sizeof(stop), b->dir, "stop");
    snprintf(endpoint, sizeof(endpoint), "tcp:127.0.0.1:%d", b->port[0]);

    memset(producers, 0, sizeof(producers));
    for (int k = 0; k < PRODUCERS; k++) {
        producer *p = &producers[k];
        char name[32];
        char *argv[] = {exe,        "producer", id,  endpoint, "crash", (char *)modes[k],
                        p->ackpath, stop,       NULL};
        snprintf(id, sizeof(id), "p%d", k);
        snprintf(name, sizeof(name), "acks-%d.txt", k);
        sbt_path(p->ackpath, sizeof(p->ackpath), b->dir, name);
        snprintf(name, sizeof(name), "producer-%d.log", k);
        sbt_path(p->logpath, sizeof(p->logpath), b->dir, name);
        sbt_write_file(p->ackpath, "", 0);
        assert_int_equal(sbt_spawn(&p->proc, argv, b->dir, p->logpath), 0);
    }

    for (int round = 1; round <= ROUNDS; round++) {
        int delay = 100 + (int)(rnd() % 1400);
        /* The random point: kill whatever the broker is doing then. */
        if (paging) {
            sbt_poll_pause(delay / 2);
            consume_for(b, delay - delay / 2);
        } else {
            sbt_poll_pause(delay);
        }
        for (int k = 0; k < PRODUCERS; k++)
            if (!producers[k].proc.running) {
                print_file("producer log", producers[k].logpath);
                fail_msg("producer %d exited early", k);
            }
        if (paging) {
            /* what is only in the store when the kill comes */
            sbt_conn *c = sbt_connect(b->port[0]);
            for (int i = 0; i < 2; i++) {
                int64_t n = sbt_queue_int(c, subs[i].sub, "stored_depth");
                most_stored = n > most_stored ? n : most_stored;
            }
            sbt_close(c);
        }
        sbt_broker_kill(b);
        print_message("round %d: killed after %d ms\n", round, delay);
        if (round % 2 == 0) {
            /* And once more while it starts: opening and loading the store. */
            int early = (int)(rnd() % 60);
            sbt_broker_spawn(b);
            sbt_poll_pause(early);
            sbt_broker_kill(b);
            print_message("round %d: killed again %d ms after its start\n", round, early);
        }
        sbt_broker_start(b);
    }

    if (paging) {
        /* the kills came while the backlog was larger than the window */
        print_message("at most %lld messages only in the store at a kill\n",
                      (long long)most_stored);
        assert_true(most_stored > 10 * 64);
    }

    /* Let the producers finish what is in flight, then stop them. */
    sbt_write_file(stop, "", 0);
    for (int k = 0; k < PRODUCERS; k++) {
        if (!sbt_proc_wait(&producers[k].proc, 20000)) {
            print_file("producer log", producers[k].logpath);
            fail_msg("producer %d did not stop", k);
        }
        if (producers[k].proc.exit_status != 0 || producers[k].proc.term_signal != 0) {
            print_file("producer log", producers[k].logpath);
            fail_msg("producer %d exited with %lld", k, (long long)producers[k].proc.exit_status);
        }
        sbt_proc_release(&producers[k].proc);
        read_acks(&producers[k]);
        print_message("producer %d (%s): %llu acknowledged\n", k, modes[k], producers[k].max_acked);
        assert_true(producers[k].max_acked > 0);
    }

    stats = sbt_connect(b->port[0]);
    drain_and_check(b, stats, &subs[0]);
    drain_and_check(b, stats, &subs[1]);
    sbt_close(stats);
    subs_free();
    sbt_broker_stop(b);
    for (int k = 0; k < PRODUCERS; k++) {
        free(producers[k].acked);
        producers[k].acked = NULL;
    }
    print_message("crash test took %lld ms\n", (long long)(sbt_now_ms() - t0));
    b->passed = 1;
}

static void test_kill_and_restart(void **state)
{
    kill_and_restart(*state, 0);
}

/* The same with the backlog in the store and a consumer during the kills. */
static void test_kill_while_paging(void **state)
{
    kill_and_restart(*state, 1);
}

static int teardown(void **state)
{
    sbt_broker *b = *state;
    for (int k = 0; k < PRODUCERS; k++) {
        if (producers[k].proc.spawned)
            sbt_proc_release(&producers[k].proc);
        if (!b->passed && producers[k].logpath[0] != '\0')
            print_file("producer log", producers[k].logpath);
        free(producers[k].acked);
        producers[k].acked = NULL;
    }
    subs_free();
    return sbt_teardown(state);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_and_restart, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_while_paging, sbt_setup, teardown),
    };
    if (argc >= 2 && strcmp(argv[1], "producer") == 0)
        return soak_jsonl_producer(argc - 1, argv + 1);
    sbt_apply_filter();
    return cmocka_run_group_tests_name("crash", tests, NULL, NULL);
}
