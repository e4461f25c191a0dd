/*
 * The file-mapping adapter (type filemap) with real processes on both
 * sides: the broker (`switchboard run`), ring_producer and ring_consumer
 * (plain C programs on adapters/filemap/sb_ring.h), this test as jsonl
 * client, mosquitto_sub on Linux, and this test as a hostile writer. The
 * same test runs on Linux (POSIX shared memory) and under Wine (a named
 * file mapping).
 *
 * - in: records of a producer that waits for each commit and of one that
 *   fires and forgets reach a queue in order, with their headers, and an
 *   MQTT subscriber (mosquitto_sub, Linux);
 * - out: jsonl publishes reach a ring consumer in order; with no consumer
 *   attached they wait in their queue; a consumer that stops reading makes
 *   the ring fill and the queue hold the rest; killed in mid-record, the
 *   next consumer reads the record again;
 * - several producer processes at once: every record once, each in order;
 * - a full ring: the broker holds the ring while the queue refuses, the
 *   producer's write times out, nothing is overwritten or lost;
 * - a producer killed in mid-record (reclaimed once its process is gone)
 *   and one stuck in mid-record (reclaimed after reclaim_timeout): the
 *   records behind them go through;
 * - the broker killed (SIGKILL / TerminateProcess) while producers wait for
 *   commits, twice: every record whose commit a producer saw is delivered;
 * - a record the broker refuses: its producer learns it;
 * - a hostile writer: a damaged record, a damaged header, a consumer's
 *   cursor out of bounds: the ring is quarantined, its programs get
 *   SB_RING_ECLOSED, the broker goes on serving, and a restart replaces
 *   the ring;
 * - config/examples/filemap.yaml as shipped, with the names of this run,
 *   through sbring, the installed example program (pub, sub, info).
 *
 * Ring names carry the test's process id; on Linux the shared memory
 * objects are removed at the end. Nothing sleeps a fixed time.
 */
#include "harness.h"

#include "adapters/filemap/sb_ring.h"

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
                             "  - name: mqtt\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: mqtt\n"
                             "  - name: rin\n"
                             "    type: filemap\n"
                             "    ring: '{v0}'\n"
                             "    capacity: {v2}\n"
                             "    reclaim_timeout: 3s\n"
                             "  - name: rout\n"
                             "    type: filemap\n"
                             "    ring: '{v1}'\n"
                             "    direction: out\n"
                             "    capacity: {v3}\n"
                             "routes:\n"
                             "  - name: in-q\n"
                             "    from: ring/#\n"
                             "{v4}"
                             "  - name: to-out\n"
                             "    from: out/#\n"
                             "    to: rout\n"
                             "    retry: { max_attempts: 100, backoff: 20ms, max_backoff: 100ms }\n";

#define MAX_RINGS 8
static char rings[MAX_RINGS][64];
static int nrings;

/* A program's path from the environment, made absolute against the
 * directory ctest started the test in (under Wine "/work/..." means
 * Z:\work\... only from there), once. */
static const char *env_path(const char *var)
{
    static char *cache[3];
    int k = strcmp(var, "SB_RING_PRODUCER") == 0 ? 0 : strcmp(var, "SB_RING_CONSUMER") == 0 ? 1 : 2;
    const char *v = getenv(var);
    uv_fs_t req;
    if (cache[k] != NULL)
        return cache[k];
    if (v == NULL || v[0] == '\0')
        fail_msg("%s is not set (tests/integration/CMakeLists.txt sets it)", var);
    if (uv_fs_realpath(NULL, &req, v, NULL) != 0)
        fail_msg("%s=%s: not found", var, v);
    cache[k] = sbt_strdup(req.ptr);
    uv_fs_req_cleanup(&req);
    return cache[k];
}

/* A ring name of this run, removed at the end (Linux). */
static const char *ring(const char *what)
{
    char *n = rings[nrings++ % MAX_RINGS];
    snprintf(n, 64, "sbt-%u-%s", (unsigned)uv_os_getpid(), what);
    return n;
}

static void unlink_rings(void)
{
#ifndef _WIN32
    for (int i = 0; i < nrings && i < MAX_RINGS; i++) {
        char p[80];
        snprintf(p, sizeof(p), "/%.63s", rings[i]);
        shm_unlink(p);
    }
#endif
    nrings = 0;
}

/* Starts the broker with the two rings (capacities in bytes) and extra
 * route keys for in-q. */
static void start(sbt_broker *b, const char *name, const char *in_cap, const char *out_cap,
                  const char *in_route)
{
    sbt_broker_init(b, name, 2);
    sbt_broker_set(b, 0, ring("in"));
    sbt_broker_set(b, 1, ring("out"));
    sbt_broker_set(b, 2, in_cap);
    sbt_broker_set(b, 3, out_cap);
    sbt_broker_set(b, 4, in_route);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
}

/* Runs a program of this test (ring_producer / ring_consumer) with its
 * output in dir/<log>.out. */
static void spawn(sbt_proc *p, sbt_broker *b, char **argv, const char *log)
{
    char out[SBT_PATH_MAX];
    sbt_path(out, sizeof(out), b->dir, log);
    if (sbt_spawn(p, argv, b->dir, out) != 0)
        fail_msg("cannot start %s", argv[0]);
}

static void expect_exit(sbt_proc *p, sbt_broker *b, const char *log, int status, int timeout_ms)
{
    char out[SBT_PATH_MAX];
    sbt_waiting_for("%s to exit", log);
    if (!sbt_proc_wait(p, timeout_ms) || p->exit_status != status) {
        char *text;
        sbt_path(out, sizeof(out), b->dir, log);
        text = sbt_read_file(out, NULL);
        fail_msg("%s: %s (exit %lld); its output:\n%s", log,
                 p->running ? "still running" : "exited", (long long)p->exit_status,
                 text != NULL ? text : "(none)");
    }
    sbt_proc_release(p);
}

/* dir/<file> without carriage returns (a Windows program's text output has
 * them), or NULL. free() it. */
static char *read_text(sbt_broker *b, const char *file)
{
    char path[SBT_PATH_MAX];
    char *text, *o;
    sbt_path(path, sizeof(path), b->dir, file);
    text = sbt_read_file(path, NULL);
    if (text == NULL)
        return NULL;
    o = text;
    for (const char *i = text; *i != '\0'; i++)
        if (*i != '\r')
            *o++ = *i;
    *o = '\0';
    return text;
}

/* Lines of dir/<file> that start with prefix. */
static int count_lines(sbt_broker *b, const char *file, const char *prefix)
{
    char *text = read_text(b, file), *line;
    int n = 0;
    if (text == NULL)
        return 0;
    for (line = text; *line != '\0';) {
        char *end = strchr(line, '\n');
        if (end == NULL)
            break; /* a line still being written */
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            n++;
        line = end + 1;
    }
    free(text);
    return n;
}

static void wait_lines(sbt_broker *b, const char *file, const char *prefix, int count,
                       int timeout_ms)
{
    int64_t end = sbt_now_ms() + timeout_ms;
    sbt_waiting_for("%d lines starting with '%s' in %s", count, prefix, file);
    while (count_lines(b, file, prefix) < count) {
        if (sbt_now_ms() > end)
            fail_msg("%s has %d lines starting with '%s', expected %d", file,
                     count_lines(b, file, prefix), prefix, count);
        sbt_poll_pause(20);
    }
}

/* Takes n deliveries of sub (acking each); with `ordered`, payloads "ID-N"
 * must come in order per ID; *ids (may be NULL) collects them, one per
 * line. */
static void drain_(sbt_conn *c, const char *sub, int n, char **ids, int ordered)
{
    char last[16][32];
    int seen[16] = {0}, nids = 0;
    size_t len = 0, cap = 0;
    if (ids != NULL)
        *ids = NULL;
    for (int i = 0; i < n; i++) {
        json_t *m = sbt_next_msg(c, 20000);
        const char *p = sbt_str(m, "payload");
        const char *dash = strrchr(p, '-');
        int k;
        if (dash != NULL) {
            for (k = 0; k < nids; k++)
                if (strncmp(last[k], p, (size_t)(dash - p)) == 0 && last[k][dash - p] == '-')
                    break;
            if (k == nids && nids < 16) {
                snprintf(last[k], sizeof(last[k]), "%.*s-", (int)(dash - p), p);
                seen[k] = -1;
                nids++;
            }
            if (k < nids) {
                int at = atoi(dash + 1);
                if (ordered && at <= seen[k])
                    fail_msg("%s: %s came after %s%d", sub, p, last[k], seen[k]);
                seen[k] = at;
            }
        }
        if (ids != NULL) {
            size_t pl = strcspn(p, "."); /* the ID-N before the padding */
            if (len + pl + 2 > cap) {
                cap = (len + pl + 2) * 2;
                *ids = realloc(*ids, cap);
                assert_non_null(*ids);
            }
            memcpy(*ids + len, p, pl);
            len += pl;
            (*ids)[len++] = '\n';
            (*ids)[len] = '\0';
        }
        sbt_ack(c, sub, sbt_int(m, "msg_id"));
        json_decref(m);
    }
}

/* Every line of dir/<file> that starts with prefix must be a line of ids. */
static void drain(sbt_conn *c, const char *sub, int n, char **ids)
{
    drain_(c, sub, n, ids, 1);
}

static void expect_all_in(sbt_broker *b, const char *file, const char *prefix, const char *ids)
{
    char want[64];
    char *text = read_text(b, file), *line;
    int n = 0;
    assert_non_null(text);
    for (line = text; *line != '\0';) {
        char *end = strchr(line, '\n');
        if (end == NULL)
            break;
        *end = '\0';
        if (strncmp(line, prefix, strlen(prefix)) == 0 && strchr(line, ' ') == NULL) {
            snprintf(want, sizeof(want), "\n%s\n", line);
            if (strncmp(ids, want + 1, strlen(want + 1)) != 0 && strstr(ids, want) == NULL)
                fail_msg("%s: %s was confirmed to its producer and never delivered", file, line);
            n++;
        }
        line = end + 1;
    }
    free(text);
    assert_true(n > 0);
}

/* ---- in: producers to the store and to MQTT ---- */

static void test_produce(void **state)
{
    sbt_broker *b = *state;
    const char *sub = getenv("SB_MOSQUITTO_SUB");
    sbt_proc waiter, fire, mq;
    sbt_conn *c;
    char port[16];
    json_t *m;
    memset(&waiter, 0, sizeof(waiter));
    memset(&fire, 0, sizeof(fire));
    memset(&mq, 0, sizeof(mq));

    start(b, "filemap-produce", "1MiB", "1MiB", "");
    c = sbt_connect(b->port[0]);
    if (sub != NULL && sub[0] != '\0') {
        char *argv[] = {(char *)sub, "-h", "127.0.0.1", "-p", port, "-q", "1", "-i", "sbt-ring",
                        "-t", "ring/#", "-t", "ready/ring", "-v", NULL};
        snprintf(port, sizeof(port), "%d", b->port[1]);
        spawn(&mq, b, argv, "mosquitto_sub.out");
        /* subscribed once it prints what is published to ready/ring */
        for (int64_t end = sbt_now_ms() + 10000; count_lines(b, "mosquitto_sub.out", "ready/") == 0;
             sbt_poll_pause(50)) {
            if (sbt_now_ms() > end || !mq.running)
                fail_msg("mosquitto_sub did not subscribe");
            sbt_pub(c, "ready/ring", "r", -1);
        }
    } else {
        print_message("mosquitto_sub not found (or not on this platform): MQTT part skipped\n");
    }
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "100", "--id", "w", "--wait", "--header", "content-type=text/plain",
                        "--header", "trace=t1", NULL};
        spawn(&waiter, b, argv, "waiter.out");
    }
    expect_exit(&waiter, b, "waiter.out", 0, 60000);
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "50", "--id", "f", "--size", "300", NULL};
        spawn(&fire, b, argv, "fire.out");
    }
    expect_exit(&fire, b, "fire.out", 0, 60000);
    assert_int_equal(count_lines(b, "waiter.out", "w-"), 100);

    sbt_sub(c, "in-q", NULL, 100);
    m = sbt_next_msg(c, 10000); /* the first tells its headers */
    {
        json_t *h = json_object_get(m, "headers");
        assert_string_equal(sbt_str(m, "payload"), "w-0");
        assert_non_null(h);
        assert_string_equal(json_string_value(json_object_get(h, "content-type")), "text/plain");
        assert_string_equal(json_string_value(json_object_get(h, "trace")), "t1");
        sbt_ack(c, "in-q", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    drain(c, "in-q", 149, NULL);
    sbt_wait_queue_int(c, "in-q", "depth", 0, 10000);
    if (sub != NULL && sub[0] != '\0') {
        wait_lines(b, "mosquitto_sub.out", "ring/f f-", 50, 30000);
        wait_lines(b, "mosquitto_sub.out", "ring/w w-", 100, 30000);
        sbt_proc_release(&mq);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- out: jsonl to a consumer ---- */

static void test_consume(void **state)
{
    sbt_broker *b = *state;
    sbt_proc cons, stalled;
    sbt_conn *c;
    char payload[400];
    memset(&cons, 0, sizeof(cons));
    memset(&stalled, 0, sizeof(stalled));

    start(b, "filemap-consume", "1MiB", "8KiB", "");
    c = sbt_connect(b->port[0]);
    /* Nobody consumes: the deliveries wait in their queue. */
    for (int i = 0; i < 100; i++) {
        snprintf(payload, sizeof(payload), "m-%d", i);
        sbt_pub(c, "out/x", payload, 1);
    }
    sbt_wait_queue_int(c, "to-out:rout", "depth", 100, 10000);
    assert_int_equal(sbt_queue_int(c, "to-out:rout", "inflight"), 0);
    {
        char *argv[] = {(char *)env_path("SB_RING_CONSUMER"), (char *)b->values[1], "--count",
                        "100", "--log", "consumer.log", NULL};
        spawn(&cons, b, argv, "consumer.out");
    }
    expect_exit(&cons, b, "consumer.out", 0, 60000);
    assert_int_equal(count_lines(b, "consumer.log", "out/x m-"), 100);
    {
        char *log = read_text(b, "consumer.log");
        assert_non_null(strstr(log, "out/x m-0\nout/x m-1\nout/x m-2\n"));
        assert_non_null(strstr(log, "out/x m-98\nout/x m-99\n"));
        free(log);
    }
    sbt_wait_queue_int(c, "to-out:rout", "depth", 0, 10000);

    /* A consumer that stops reading: the ring (8 KiB) fills, the queue
     * holds the rest; killed holding a record, the next consumer reads it
     * again and then everything else. */
    {
        char *argv[] = {(char *)env_path("SB_RING_CONSUMER"), (char *)b->values[1],
                        "--stall-at", "0", "--log", "stalled.log", NULL};
        spawn(&stalled, b, argv, "stalled.out");
    }
    memset(payload, '.', sizeof(payload));
    for (int i = 0; i < 100; i++) {
        int n = snprintf(payload, sizeof(payload), "big-%d", i);
        payload[n] = '.';
        payload[300] = '\0';
        sbt_pub(c, "out/y", payload, 1);
    }
    wait_lines(b, "stalled.log", "stalled", 1, 20000);
    sbt_waiting_for("the queue to hold what the ring cannot");
    for (int64_t end = sbt_now_ms() + 10000;; sbt_poll_pause(20)) {
        int64_t depth = sbt_queue_int(c, "to-out:rout", "depth");
        int64_t inflight = sbt_queue_int(c, "to-out:rout", "inflight");
        /* 8 KiB holds at most 22 records of 364 bytes; the rest wait */
        if (inflight > 0 && inflight <= 22 && depth == 100)
            break;
        if (sbt_now_ms() > end)
            fail_msg("depth %lld, inflight %lld", (long long)depth, (long long)inflight);
    }
    sbt_proc_signal(&stalled, SIGKILL);
    sbt_proc_wait(&stalled, 10000);
    sbt_proc_release(&stalled);
    sbt_broker_wait_log(b, "exited without closing the ring", 1, 10000);
    {
        char *argv[] = {(char *)env_path("SB_RING_CONSUMER"), (char *)b->values[1], "--count",
                        "100", "--log", "second.log", NULL};
        spawn(&cons, b, argv, "second.out");
    }
    expect_exit(&cons, b, "second.out", 0, 60000);
    assert_int_equal(count_lines(b, "second.log", "recovered"), 1);
    assert_int_equal(count_lines(b, "second.log", "out/y big-0."), 1); /* read again */
    assert_int_equal(count_lines(b, "second.log", "out/y big-"), 100);
    sbt_wait_queue_int(c, "to-out:rout", "depth", 0, 10000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- several producers ---- */

static void test_several_producers(void **state)
{
    sbt_broker *b = *state;
    sbt_proc p[4];
    sbt_conn *c;
    char *ids;
    memset(&p, 0, sizeof(p));

    start(b, "filemap-several", "16KiB", "1MiB", "");
    for (int k = 0; k < 4; k++) {
        char id[8], log[32];
        /* two wait for each commit, two fire and forget */
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0],
                        "--count",
                        "300",
                        "--id",
                        id,
                        "--size",
                        "120",
                        k % 2 ? "--wait" : NULL,
                        NULL};
        snprintf(id, sizeof(id), "p%d", k);
        snprintf(log, sizeof(log), "p%d.out", k);
        spawn(&p[k], b, argv, log);
    }
    for (int k = 0; k < 4; k++) {
        char log[32];
        snprintf(log, sizeof(log), "p%d.out", k);
        expect_exit(&p[k], b, log, 0, 120000);
    }
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "in-q", NULL, 200);
    drain(c, "in-q", 1200, &ids); /* in order per producer */
    for (int k = 0; k < 4; k++) {
        char want[32];
        snprintf(want, sizeof(want), "\np%d-299\n", k);
        assert_non_null(strstr(ids, want));
    }
    free(ids);
    sbt_wait_queue_int(c, "in-q", "depth", 0, 10000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a full ring ---- */

static void test_full_ring(void **state)
{
    sbt_broker *b = *state;
    sbt_proc p;
    sbt_conn *c;
    char *ids;
    int written;
    memset(&p, 0, sizeof(p));

    /* The queue takes 10, then refuses: the broker holds the ring, which
     * (4 KiB) fills, and the producer's write (1 s timeout) gives up. */
    start(b, "filemap-full", "4KiB", "1MiB", "    max_depth: 20\n");
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "200", "--id", "f", "--size", "100", "--timeout", "1000", NULL};
        spawn(&p, b, argv, "full.out");
    }
    expect_exit(&p, b, "full.out", 1, 60000);
    assert_int_equal(count_lines(b, "full.out", "ring_producer: record "), 1);
    written = count_lines(b, "full.out", "f-");
    assert_true(written > 20 && written < 200);
    sbt_broker_wait_log(b, "holding the ring", 1, 5000);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "in-q", "depth"), 20);
    /* Taking messages out makes room: the broker publishes the rest. */
    sbt_sub(c, "in-q", NULL, 5);
    drain(c, "in-q", written, &ids);
    expect_all_in(b, "full.out", "f-", ids);
    free(ids);
    sbt_broker_wait_log(b, "publishing again", 1, 5000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- producers dying or stuck in mid-record ---- */

static void test_producer_dies_mid_record(void **state)
{
    sbt_broker *b = *state;
    sbt_proc dying, stuck, behind;
    sbt_conn *c;
    char *ids;
    memset(&dying, 0, sizeof(dying));
    memset(&stuck, 0, sizeof(stuck));
    memset(&behind, 0, sizeof(behind));

    start(b, "filemap-midrecord", "1MiB", "1MiB", "");
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--id", "d",
                        "--stall-at", "0", "--log", "dying.log", NULL};
        spawn(&dying, b, argv, "dying.out");
    }
    wait_lines(b, "dying.log", "stalled", 1, 20000);
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "10", "--id", "a", "--wait", "--timeout", "30000", "--log", "a.log",
                        NULL};
        spawn(&behind, b, argv, "behind.out");
    }
    /* Its records wait behind the unfinished one until that is reclaimed:
     * once the process is gone. */
    sbt_poll_pause(300);
    assert_int_equal(count_lines(b, "a.log", "a-"), 0);
    sbt_proc_signal(&dying, SIGKILL);
    sbt_proc_wait(&dying, 10000);
    sbt_proc_release(&dying);
    expect_exit(&behind, b, "behind.out", 0, 30000);
    sbt_broker_wait_log(b, "exited before finishing it", 1, 5000);
    sbt_broker_wait_log(b, "(1 reclaimed so far)", 1, 5000);

    /* A producer alive but stuck: reclaimed after reclaim_timeout (3 s). */
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--id", "s",
                        "--stall-at", "0", "--log", "stuck.log", NULL};
        spawn(&stuck, b, argv, "stuck.out");
    }
    wait_lines(b, "stuck.log", "stalled", 1, 20000);
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "5", "--id", "b", "--wait", "--timeout", "30000", "--log", "b.log", NULL};
        spawn(&behind, b, argv, "behind2.out");
    }
    expect_exit(&behind, b, "behind2.out", 0, 30000);
    sbt_broker_wait_log(b, "did not finish it within reclaim_timeout", 1, 5000);
    assert_true(stuck.running);
    sbt_proc_release(&stuck);

    c = sbt_connect(b->port[0]);
    sbt_sub(c, "in-q", NULL, 50);
    drain(c, "in-q", 15, &ids);
    assert_null(strstr(ids, "d-"));
    assert_null(strstr(ids, "s-"));
    expect_all_in(b, "a.log", "a-", ids);
    expect_all_in(b, "b.log", "b-", ids);
    free(ids);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- the broker killed while producers wait for commits ---- */

static void test_broker_killed(void **state)
{
    sbt_broker *b = *state;
    sbt_proc p[2];
    sbt_conn *c;
    char *ids = NULL;
    int total = 0;
    memset(&p, 0, sizeof(p));

    start(b, "filemap-kill", "64KiB", "1MiB", "");
    for (int k = 0; k < 2; k++) {
        char id[8], log[32], out[32];
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "400", "--id", id, "--wait", "--timeout", "60000", "--log", log, NULL};
        snprintf(id, sizeof(id), "k%d", k);
        snprintf(log, sizeof(log), "k%d.log", k);
        snprintf(out, sizeof(out), "k%d.out", k);
        spawn(&p[k], b, argv, out);
    }
    for (int round = 1; round <= 2; round++) {
        wait_lines(b, "k0.log", "k0-", 60 * round, 60000);
        sbt_broker_kill(b);
        print_message("round %d: killed with k0 at %d and k1 at %d committed\n", round,
                      count_lines(b, "k0.log", "k0-"), count_lines(b, "k1.log", "k1-"));
        sbt_broker_start(b);
    }
    sbt_broker_wait_log(b, "stopped without closing it", 1, 5000);
    expect_exit(&p[0], b, "k0.out", 0, 120000);
    expect_exit(&p[1], b, "k1.out", 0, 120000);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "in-q", NULL, 200);
    /* Each producer's 400, and again what was published but not yet marked
     * committed when the broker died (at least once). */
    for (;;) {
        json_t *q = sbt_queue_stats(c, "in-q");
        int64_t depth = q != NULL ? json_integer_value(json_object_get(q, "depth")) : 0;
        json_decref(q);
        if (depth == 0 && total >= 800)
            break;
        if (depth == 0)
            fail_msg("only %d delivered", total);
        {
            char *more;
            drain_(c, "in-q", (int)depth, &more, 0); /* duplicates come out of order */
            if (total == 0) {
                ids = more;
            } else {
                ids = realloc(ids, strlen(ids) + strlen(more) + 1);
                strcat(ids, more);
                free(more);
            }
            total += (int)depth;
        }
    }
    expect_all_in(b, "k0.log", "k0-", ids);
    expect_all_in(b, "k1.log", "k1-", ids);
    assert_int_equal(count_lines(b, "k0.log", "k0-"), 400);
    print_message("%d delivered for 800 committed\n", total);
    free(ids);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- refused records ---- */

static void test_refused(void **state)
{
    sbt_broker *b = *state;
    sbt_proc p;
    memset(&p, 0, sizeof(p));

    start(b, "filemap-refused", "1MiB", "1MiB", "");
    {
        char *argv[] = {(char *)env_path("SB_RING_PRODUCER"), (char *)b->values[0], "--count",
                        "3", "--id", "r", "--wait", "--bad-topic", "--log", "r.log", NULL};
        spawn(&p, b, argv, "r.out");
    }
    expect_exit(&p, b, "r.out", 0, 30000);
    assert_int_equal(count_lines(b, "r.log", "r-0 the broker refused the record"), 1);
    assert_int_equal(count_lines(b, "r.log", "r-1"), 1);
    sbt_broker_wait_log(b, "refused", 1, 5000);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a hostile writer ---- */

static void test_hostile_writer(void **state)
{
    sbt_broker *b = *state;
    sb_ring *r, *o;
    sb_ring_slot slot;
    sbt_conn *c;
    json_t *m;
    int rc;

    start(b, "filemap-hostile", "64KiB", "64KiB", "");
    c = sbt_connect(b->port[0]);
    assert_int_equal(sb_ring_open(&r, b->values[0], SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "ring/ok", "before", 6, 5000, NULL), SB_RING_OK);
    /* A record whose length lies: quarantined. */
    assert_int_equal(sb_ring_reserve(r, &slot, "ring/bad", 0, 10, 5000), SB_RING_OK);
    slot.rec_->len = 3;
    assert_int_equal(sb_ring_commit(r, &slot), SB_RING_OK);
    sbt_broker_wait_log(b, "quarantined: record length out of bounds", 1, 10000);
    rc = sb_ring_write(r, "ring/x", "after", 5, 1000, NULL);
    assert_int_equal(rc, SB_RING_ECLOSED); /* r stays open until the restart */
    /* The broker goes on: the record before was published, and jsonl works. */
    sbt_sub(c, "in-q", NULL, 10);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "payload"), "before");
    sbt_ack(c, "in-q", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_pub(c, "ring/jsonl", "still-here", 1);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "payload"), "still-here");
    sbt_ack(c, "in-q", sbt_int(m, "msg_id"));
    json_decref(m);

    /* A consumer whose cursor jumps past what the broker wrote. */
    assert_int_equal(sb_ring_open(&o, b->values[1], SB_RING_CONSUMER), SB_RING_OK);
    sbt_pub(c, "out/z", "one", 1);
    {
        sb_ring_msg msg;
        assert_int_equal(sb_ring_next(o, &msg, 10000), SB_RING_OK);
        sbr_store64(&o->h->commit, o->h->reserve + 4096);
        sbr_signal(o, SBR_WAKE_RELEASE);
    }
    sbt_broker_wait_log(b, "quarantined: the consumer's cursor is out of bounds", 1, 10000);

    /* A restart replaces both rings with sound ones (the handles kept open
     * keep the Windows mappings alive across it). */
    sbt_close(c);
    sbt_broker_stop(b);
    sbt_broker_mark_log(b);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "was replaced because it was quarantined", 2, 10000);
    sb_ring_close(o);
    sb_ring_close(r);
    assert_int_equal(sb_ring_open(&r, b->values[0], SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "ring/ok", "again", 5, 5000, NULL), SB_RING_OK);
    /* A damaged header while the ring is idle: noticed within a second. */
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "in-q", NULL, 10);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "payload"), "again");
    sbt_ack(c, "in-q", sbt_int(m, "msg_id"));
    json_decref(m);
    r->h->capacity = 12345;
    sbt_broker_wait_log(b, "quarantined", 1, 10000);
    sb_ring_close(r);
    sbt_pub(c, "ring/jsonl", "on", 1);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "payload"), "on");
    json_decref(m);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- the shipped example, and sbring ---- */

/* Runs sbring with up to four arguments; returns its exit code, *out its
 * output without carriage returns. */
static int sbring(sbt_broker *b, char **out, const char *a1, const char *a2, const char *a3,
                  const char *a4)
{
    char *argv[] = {(char *)env_path("SB_SBRING"), (char *)a1, (char *)a2, (char *)a3,
                    (char *)a4, NULL};
    char *err = NULL;
    int rc = sbt_run(argv, b->dir, 30000, out, &err);
    if (rc != 0)
        print_message("sbring %s %s: exit %d: %s\n", a1, a2, rc, err);
    free(err);
    {
        char *w = *out;
        for (const char *r = *out; *r != '\0'; r++)
            if (*r != '\r')
                *w++ = *r;
        *w = '\0';
    }
    return rc;
}

static void test_example(void **state)
{
    sbt_broker *b = *state;
    char line[128], *text, *out;
    const char *tel = ring("telemetry"), *alarms = ring("alarms");
    sbt_conn *c;
    json_t *m;

    sbt_broker_init(b, "filemap-example", 1);
    text = sbt_example("filemap.yaml");
    sbt_example_replace(&text, "filemap.yaml", "data_dir: ./data",
                        "data_dir: '{data}'\n  admin: { endpoint: 'off' }");
    snprintf(line, sizeof(line), "ring: %s ", tel);
    sbt_example_replace(&text, "filemap.yaml", "ring: telemetry ", line);
    snprintf(line, sizeof(line), "ring: %s\n", alarms);
    sbt_example_replace(&text, "filemap.yaml", "ring: alarms\n", line);
    sbt_example_replace(&text, "filemap.yaml", "\nadapters:\n",
                        "\nadapters:\n  - name: sbt-clients\n    type: tcp\n"
                        "    listen: 127.0.0.1:{port0}\n    protocol: jsonl\n");
    sbt_broker_config(b, text);
    free(text);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* sbring pub: two records, each committed before the next */
    assert_int_equal(sbring(b, &out, "pub", tel, "plant/l1/alarm", "fire"), 0);
    free(out);
    assert_int_equal(sbring(b, &out, "pub", tel, "plant/l1/temp", "21.5"), 0);
    free(out);
    sbt_sub(c, "telemetry", NULL, 10);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "payload"), "fire");
    json_decref(m);
    m = sbt_next_msg(c, 10000);
    assert_string_equal(sbt_str(m, "topic"), "plant/l1/temp");
    json_decref(m);
    /* the alarm went out through the other ring: sbring sub */
    assert_int_equal(sbring(b, &out, "sub", alarms, "--count", "1"), 0);
    assert_string_equal(out, "plant/l1/alarm fire\n");
    free(out);
    sbt_wait_queue_int(c, "alarms:alarms-out", "depth", 0, 10000);
    /* sbring info */
    assert_int_equal(sbring(b, &out, "info", tel, NULL, NULL), 0);
    assert_non_null(strstr(out, ": in, open\n"));
    assert_non_null(strstr(out, "capacity 4194304 bytes, 0 in use; max payload 65536 bytes"));
    free(out);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static int teardown(void **state)
{
    int rc = sbt_teardown(state);
    unlink_rings();
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_produce, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_consume, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_producers, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_ring, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_producer_dies_mid_record, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_killed, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_writer, sbt_setup, teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("filemap", tests, NULL, NULL);
}
