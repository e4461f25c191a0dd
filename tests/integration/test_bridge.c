/*
 * The MQTT bridge (a tcp adapter with connect and protocol: mqtt) against a
 * real upstream: Debian's mosquitto, started by the test on loopback ports,
 * with mosquitto_sub reading there as a consumer at the other site would.
 * Local producers publish with jsonl and get their puback when the message
 * is committed locally: from then on it must reach upstream, whatever the
 * uplink does.
 *
 * Duplicates: QoS 1 is at least once. A publish that upstream received but
 * whose PUBACK was lost with the link is sent again on the next session,
 * so the tests count every message at least once and report duplicates.
 */
#include "mqtt_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MOSQUITTO "SB_MOSQUITTO"
#define MOSQUITTO_SUB "SB_MOSQUITTO_SUB"
#define MOSQUITTO_PUB "SB_MOSQUITTO_PUB"
#define MOSQUITTO_PASSWD "SB_MOSQUITTO_PASSWD"
#define MQTT_CLIENT "SB_MQTT_CLIENT"
#define NATS_SERVER "SB_NATS_SERVER"

/* An upstream broker: a mosquitto process on a loopback port. */
typedef struct upstream {
    sbt_proc p;
    int port;
    char conf[SBT_PATH_MAX + 64];
    char log[SBT_PATH_MAX + 64];
} upstream;

static void upstream_restart(upstream *u);

/* Writes mosquitto's config (persistent sessions kept in dir/NAME/ when it
 * stops) with extra lines, and starts it; returns once its port accepts. */
static void upstream_start(upstream *u, sbt_broker *b, const char *name, int port,
                           const char *extra)
{
    char text[4096], store[SBT_PATH_MAX];
    u->port = port;
    sbt_path(store, sizeof store, b->dir, name);
    assert_int_equal(mkdir(store, 0700), 0);
    snprintf(u->conf, sizeof u->conf, "%s/%s.conf", b->dir, name);
    snprintf(u->log, sizeof u->log, "%s/%s.log", b->dir, name);
    snprintf(text, sizeof text,
             "listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
             "persistence_location %s/\nuser root\nlog_dest stdout\nlog_type all\n%s",
             port, store, extra != NULL ? extra : "");
    sbt_write_file(u->conf, text, strlen(text));
    upstream_restart(u);
}

/* (Re)starts mosquitto with its config; returns once its port accepts. */
static void upstream_restart(upstream *u)
{
    sbt_argv a;
    sbt_tcp *t;
    memset(&u->p, 0, sizeof u->p);
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO));
    sbt_argv_add(&a, "-c");
    sbt_argv_add(&a, "%s", u->conf);
    assert_int_equal(sbt_spawn(&u->p, a.v, NULL, u->log), 0);
    sbt_argv_free(&a);
    sbt_waiting_for("mosquitto on port %d", u->port);
    for (int64_t deadline = sbt_now_ms() + SBT_READY_MS;;) {
        if ((t = sbt_tcp_connect(u->port, 1000)) != NULL)
            break;
        if (sbt_now_ms() > deadline || !u->p.running)
            fail_msg("mosquitto does not listen on port %d (log %s)", u->port, u->log);
        sbt_poll_pause(50);
    }
    sbt_tcp_close(t);
}

/* Stops it (SIGTERM: it saves its persistent sessions) or kills it. */
static void upstream_down(upstream *u, int sig)
{
    sbt_proc_signal(&u->p, sig);
    assert_true(sbt_proc_wait(&u->p, 10000));
    sbt_proc_release(&u->p);
}

/* Spawns mosquitto_sub for consumer_start. */
static void consumer_spawn(sbt_proc *p, int port, const char *id, const char *filter,
                           const char *file)
{
    sbt_argv a;
    memset(p, 0, sizeof *p);
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_SUB));
    sbt_argv_add(&a, "-p");
    sbt_argv_add(&a, "%d", port);
    sbt_argv_add(&a, "-i");
    sbt_argv_add(&a, "%s", id);
    sbt_argv_add(&a, "-c");
    sbt_argv_add(&a, "-q");
    sbt_argv_add(&a, "1");
    sbt_argv_add(&a, "-v");
    sbt_argv_add(&a, "-t");
    sbt_argv_add(&a, "%s", filter);
    sbt_argv_add(&a, "-t");
    sbt_argv_add(&a, "probe/%s", id);
    assert_int_equal(sbt_spawn(p, a.v, NULL, file), 0);
    sbt_argv_free(&a);
}

/* Publishes one message at QoS 1 with mosquitto_pub; returns its exit
 * status (an upstream still starting may refuse it). */
static int try_pub(int port, const char *topic, const char *payload)
{
    char *argv[] = {(char *)sbt_mq_tool(MOSQUITTO_PUB), "-p", NULL, "-q", "1", "-t",
                    (char *)topic, "-m", (char *)payload, NULL};
    char ports[16], *out = NULL, *err = NULL;
    int rc;
    snprintf(ports, sizeof ports, "%d", port);
    argv[2] = ports;
    rc = sbt_run(argv, NULL, 20000, &out, &err);
    free(out);
    free(err);
    return rc;
}

/* A persistent consumer at the upstream: mosquitto_sub (QoS 1, clean
 * session off) printing "topic payload" lines to file; returns once it is
 * subscribed (it printed a probe published with mosquitto_pub). An
 * upstream still starting may refuse it: then it starts again. */
static void consumer_start(sbt_proc *p, int port, const char *id, const char *filter,
                           const char *file)
{
    char probe[64], want[96];
    int64_t deadline = sbt_now_ms() + 30000;
    snprintf(probe, sizeof probe, "probe/%s", id);
    snprintf(want, sizeof want, "%s ready\n", probe);
    consumer_spawn(p, port, id, filter, file);
    for (;;) {
        char *text = sbt_read_file(file, NULL);
        int ok = text != NULL && sbt_count(text, want) > 0;
        free(text);
        if (ok)
            return;
        if (sbt_now_ms() > deadline)
            fail_msg("mosquitto_sub %s did not subscribe", id);
        if (!p->running) {
            sbt_proc_release(p);
            sbt_poll_pause(200);
            consumer_spawn(p, port, id, filter, file);
        }
        (void)try_pub(port, probe, "ready");
        sbt_poll_pause(100);
    }
}

/* The processes of a test live here, not on its stack: a failing
 * assertion leaves the test function while the loop still knows them.
 * The teardown kills what is left. */
static upstream ups[2];
static sbt_proc subs[3];
static sbt_proc nats[3];
static pid_t cutter; /* link_cutter's process, or 0 */

static int bridge_teardown(void **state)
{
    for (int i = 0; i < 3; i++) {
        if (i < 2 && ups[i].p.spawned) {
            if (ups[i].p.running)
                sbt_proc_signal(&ups[i].p, SIGKILL);
            sbt_proc_release(&ups[i].p);
        }
        if (subs[i].spawned) {
            if (subs[i].running)
                sbt_proc_signal(&subs[i], SIGKILL);
            sbt_proc_release(&subs[i]);
        }
    }
    for (int i = 0; i < 3; i++)
        if (nats[i].spawned) {
            if (nats[i].running)
                sbt_proc_signal(&nats[i], SIGKILL);
            sbt_proc_release(&nats[i]);
        }
    if (cutter > 0) {
        kill(cutter, SIGKILL);
        waitpid(cutter, NULL, 0);
        cutter = 0;
    }
    memset(ups, 0, sizeof ups);
    memset(subs, 0, sizeof subs);
    memset(nats, 0, sizeof nats);
    return sbt_teardown(state);
}

static void need_mosquitto(void)
{
    sbt_mq_need(MOSQUITTO, MOSQUITTO_SUB);
    sbt_mq_need(MOSQUITTO_PUB, NULL);
}

/* Publishes "m<i>" for i in [from, to) to topic, each acknowledged locally. */
static void publish_range(sbt_conn *c, const char *topic, int from, int to)
{
    char payload[32];
    for (int i = from; i < to; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        sbt_pub(c, topic, payload, 1);
    }
}

/* How often "<topic> m<i>" appears in the consumer's file, for i in
 * [0, n): waits until each of [from, to) appeared at least once; returns
 * the duplicates seen, and checks that first arrivals come in order. */
static int expect_range(const char *file, const char *topic, int from, int to, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    char line[128];
    for (;;) {
        char *text = sbt_read_file(file, NULL);
        int missing = -1, dups = 0;
        const char *prev = text;
        for (int i = from; text != NULL && i < to; i++) {
            const char *at;
            int k;
            snprintf(line, sizeof line, "%s m%d\n", topic, i);
            k = sbt_count(text, line);
            if (k == 0) {
                missing = i;
                break;
            }
            dups += k - 1;
            /* first arrivals in publish order */
            at = strstr(text, line);
            if (at < prev)
                fail_msg("%s: m%d arrived before an earlier message", file, i);
            prev = at;
        }
        if (text != NULL && missing < 0) {
            free(text);
            return dups;
        }
        if (sbt_now_ms() > deadline)
            fail_msg("%s: m%d never arrived upstream; the file holds:\n%s", file, missing,
                     text != NULL ? text : "(nothing)");
        free(text);
        sbt_poll_pause(50);
    }
}

static const char outage_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: uplink\n"
                                    "    type: tcp\n"
                                    "    connect: 127.0.0.1:{port1}\n"
                                    "    protocol: mqtt\n"
                                    "    client_id: site1-uplink\n"
                                    "    remote_prefix: site1/\n"
                                    "    inflight: 16\n"
                                    "    reconnect_backoff: 100ms\n"
                                    "    reconnect_max_backoff: 1s\n"
                                    "routes:\n"
                                    "  - name: up\n"
                                    "    from: plant/#\n"
                                    "    to: uplink\n";

/* Publish locally -> arrives upstream, under remote_prefix. The upstream
 * is stopped mid-stream; what is published meanwhile waits in the route's
 * durable queue, also across a kill -9 of Switchboard, and flows, in
 * order, once the upstream is back. */
/* The uplink's state as `sbctl stats --json` shows it (adapters.uplink). */
static json_t *uplink_stats(sbt_conn *c)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats");
    json_t *u = json_incref(json_object_get(json_object_get(r, "adapters"), "uplink"));
    json_decref(r);
    if (u == NULL)
        fail_msg("no adapters.uplink in the stats");
    return u;
}

static void expect_link(sbt_conn *c, const char *want_link, int64_t min_lost)
{
    int64_t deadline = sbt_now_ms() + 10000;
    sbt_waiting_for("the uplink's link to be %s", want_link);
    for (;;) {
        json_t *u = uplink_stats(c);
        const char *link = json_string_value(json_object_get(u, "link"));
        int ok = link != NULL && strcmp(link, want_link) == 0 &&
                 json_integer_value(json_object_get(u, "lost")) >= min_lost;
        if (ok) {
            json_decref(u);
            return;
        }
        if (sbt_now_ms() > deadline) {
            char *text = json_dumps(u, 0);
            fail_msg("uplink stats %s, want link %s", text, want_link);
        }
        json_decref(u);
        sbt_poll_pause(50);
    }
}

static void test_outage_loses_nothing(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    upstream *u = &ups[0];
    char file[SBT_PATH_MAX];
    int dups;

    need_mosquitto();
    sbt_broker_init(b, "bridge-outage", 2);
    upstream_start(u, b, "up1", b->port[1], NULL);
    sbt_path(file, sizeof file, b->dir, "site.out");
    consumer_start(&subs[0], b->port[1], "hq", "site1/#", file);
    sbt_broker_config(b, outage_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);

    publish_range(c, "plant/line1", 0, 100);
    dups = expect_range(file, "site1/plant/line1", 0, 100, 20000);
    expect_link(c, "up", 0);

    /* the uplink goes down mid-stream */
    /* (SIGTERM: mosquitto keeps the persistent sessions, the consumer's
     * with what it had not delivered yet, across its restart) */
    publish_range(c, "plant/line1", 100, 150);
    upstream_down(u, SIGTERM);
    sbt_proc_signal(&subs[0], SIGKILL);
    assert_true(sbt_proc_wait(&subs[0], 5000));
    sbt_proc_release(&subs[0]);
    publish_range(c, "plant/line1", 150, 300);
    sbt_broker_wait_log(b, "disconnected from 127.0.0.1:", 1, SBT_READY_MS);
    {
        /* the stats show the link lost, and why the next attempts fail */
        json_t *st = uplink_stats(c);
        const char *link = json_string_value(json_object_get(st, "link"));
        assert_non_null(link);
        assert_true(strcmp(link, "lost") == 0 || strcmp(link, "down") == 0);
        assert_true(json_integer_value(json_object_get(st, "lost")) >= 1);
        json_decref(st);
    }
    /* held durably: Switchboard itself crashes and comes back */
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_true(sbt_queue_int(c, "up:uplink", "depth") > 0);
    publish_range(c, "plant/line1", 300, 400);

    upstream_restart(u);
    consumer_start(&subs[0], b->port[1], "hq", "site1/#", file);
    dups += expect_range(file, "site1/plant/line1", 0, 400, 30000);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);
    expect_link(c, "up", 0);
    print_message("400 messages arrived upstream, %d duplicates (QoS 1)\n", dups);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char failover_config[] = "broker:\n"
                                      "  data_dir: '{data}'\n"
                                      "  admin: { endpoint: 'off' }\n"
                                      "adapters:\n"
                                      "  - name: clients\n"
                                      "    type: tcp\n"
                                      "    listen: 127.0.0.1:{port0}\n"
                                      "    protocol: jsonl\n"
                                      "  - name: uplink\n"
                                      "    type: tcp\n"
                                      "    connect: 127.0.0.1:{port1}\n"
                                      "    failover: [127.0.0.1:{port2}]\n"
                                      "    protocol: mqtt\n"
                                      "    client_id: site1-uplink\n"
                                      "    inflight: 8\n"
                                      "    reconnect_backoff: 100ms\n"
                                      "    reconnect_max_backoff: 500ms\n"
                                      "routes:\n"
                                      "  - name: up\n"
                                      "    from: plant/#\n"
                                      "    to: uplink\n";

/* Two upstream nodes: the first one dies (kill -9) and the bridge goes on
 * with the second, which gets everything published after. */
static void test_failover_to_second_upstream(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    upstream *n1 = &ups[0], *n2 = &ups[1];
    char file1[SBT_PATH_MAX], file2[SBT_PATH_MAX], want[64];
    char *log;

    need_mosquitto();
    sbt_broker_init(b, "bridge-failover", 3);
    upstream_start(n1, b, "node1", b->port[1], NULL);
    upstream_start(n2, b, "node2", b->port[2], NULL);
    sbt_path(file1, sizeof file1, b->dir, "node1.out");
    sbt_path(file2, sizeof file2, b->dir, "node2.out");
    consumer_start(&subs[0], b->port[1], "hq1", "plant/#", file1);
    consumer_start(&subs[1], b->port[2], "hq2", "plant/#", file2);
    sbt_broker_config(b, failover_config);
    sbt_broker_start(b);
    snprintf(want, sizeof want, "connected to 127.0.0.1:%d", b->port[1]);
    sbt_broker_wait_log(b, want, 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);

    publish_range(c, "plant/a", 0, 50);
    (void)expect_range(file1, "plant/a", 0, 50, 20000);

    upstream_down(n1, SIGKILL);
    publish_range(c, "plant/a", 50, 100);
    snprintf(want, sizeof want, "connected to 127.0.0.1:%d", b->port[2]);
    sbt_broker_wait_log(b, want, 1, 20000);
    (void)expect_range(file2, "plant/a", 50, 100, 20000);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    log = sbt_broker_log(b);
    assert_non_null(strstr(log, "disconnected from 127.0.0.1:"));
    free(log);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char auth_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: uplink\n"
                                  "    type: tcp\n"
                                  "    connect: 127.0.0.1:{port1}\n"
                                  "    protocol: mqtt\n"
                                  "    client_id: site1-uplink\n"
                                  "    username: site1\n"
                                  "    password_file: '{dir}/uplink.secret'\n"
                                  "    reconnect_backoff: 100ms\n"
                                  "    reconnect_max_backoff: 400ms\n"
                                  "routes:\n"
                                  "  - name: up\n"
                                  "    from: plant/#\n"
                                  "    to: uplink\n";

/* Upstream refuses the password: one clear log line with the CONNACK
 * reason, then attempts go on with backoff (upstream's log counts them)
 * without logging again; once upstream accepts the password, the link
 * comes up and what waited flows. */
static void test_bad_credentials_retried(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    upstream *u = &ups[0];
    sbt_argv a;
    char path[SBT_PATH_MAX], passwd[SBT_PATH_MAX], extra[SBT_PATH_MAX + 64];
    char *log;

    need_mosquitto();
    sbt_mq_need(MOSQUITTO_PASSWD, NULL);
    sbt_broker_init(b, "bridge-auth", 2);
    /* upstream knows site1 with another password, and a consumer */
    sbt_path(passwd, sizeof passwd, b->dir, "up.passwd");
    sbt_write_file(passwd, "", 0);
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_PASSWD));
    sbt_argv_add(&a, "-b");
    sbt_argv_add(&a, "%s", passwd);
    sbt_argv_add(&a, "site1");
    sbt_argv_add(&a, "other");
    free(sbt_mq_run(&a, 0));
    sbt_argv_free(&a);
    snprintf(extra, sizeof extra, "password_file %s\n", passwd);
    upstream_start(u, b, "up", b->port[1], extra);

    sbt_path(path, sizeof path, b->dir, "uplink.secret");
    sbt_write_file(path, "s3cret\n", 7);
    sbt_broker_config(b, auth_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "cannot connect to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, 10);
    /* upstream sees several attempts; the broker logged the refusal once */
    for (int64_t deadline = sbt_now_ms() + 20000;;) {
        char *ulog = sbt_read_file(u->log, NULL);
        int n = ulog != NULL ? sbt_count(ulog, "disconnected, not authorised") : 0;
        free(ulog);
        if (n >= 3)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("upstream saw %d connection attempts", n);
        sbt_poll_pause(100);
    }
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "upstream refused the connection: CONNACK 5, not authorized"),
                     1);
    free(log);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "depth"), 10);

    /* upstream now accepts s3cret: the next attempt gets through */
    sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_PASSWD));
    sbt_argv_add(&a, "-b");
    sbt_argv_add(&a, "%s", passwd);
    sbt_argv_add(&a, "site1");
    sbt_argv_add(&a, "s3cret");
    free(sbt_mq_run(&a, 0));
    sbt_argv_free(&a);
    sbt_proc_signal(&u->p, SIGHUP);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, 20000);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char import_config[] = "broker:\n"
                                    "  data_dir: '{data}'\n"
                                    "  admin: { endpoint: 'off' }\n"
                                    "adapters:\n"
                                    "  - name: clients\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port0}\n"
                                    "    protocol: jsonl\n"
                                    "  - name: uplink\n"
                                    "    type: tcp\n"
                                    "    connect: 127.0.0.1:{port1}\n"
                                    "    protocol: mqtt\n"
                                    "    client_id: site1-uplink\n"
                                    "    subscribe: [cmd/#]\n"
                                    "    local_prefix: hq/\n"
                                    "    reconnect_backoff: 100ms\n"
                                    "    reconnect_max_backoff: 500ms\n"
                                    "routes:\n"
                                    "  - name: from-hq\n"
                                    "    from: hq/#\n";

/* Upstream -> local: the bridge subscribes upstream on its persistent
 * session and publishes what arrives under local_prefix; the upstream's
 * PUBACK follows the local commit. Switchboard is killed -9 while the
 * upstream producer is sending: what the upstream had acknowledged to that
 * producer is either committed locally already or still queued upstream
 * for the bridge's session, so every message ends up in the local queue. */
static void test_import_survives_kill(void **state)
{
    enum { N = 1000 };
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_argv a;
    char out[SBT_PATH_MAX], topic[32];
    static unsigned char seen[N];
    int distinct = 0, dups = 0;

    need_mosquitto();
    sbt_mq_need(MQTT_CLIENT, NULL);
    memset(seen, 0, sizeof seen);
    sbt_broker_init(b, "bridge-import", 2);
    upstream_start(&ups[0], b, "up", b->port[1], NULL);
    sbt_broker_config(b, import_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, SBT_READY_MS);
    /* subscribed: a probe comes through */
    c = sbt_connect(b->port[0]);
    for (int64_t deadline = sbt_now_ms() + SBT_READY_MS;
         sbt_queue_int(c, "from-hq", "published") == 0;) {
        sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_PUB));
        sbt_argv_add(&a, "-p");
        sbt_argv_add(&a, "%d", b->port[1]);
        sbt_argv_add(&a, "-q");
        sbt_argv_add(&a, "1");
        sbt_argv_add(&a, "-t");
        sbt_argv_add(&a, "cmd/probe");
        sbt_argv_add(&a, "-m");
        sbt_argv_add(&a, "probe");
        free(sbt_mq_run(&a, 0));
        sbt_argv_free(&a);
        if (sbt_now_ms() > deadline)
            fail_msg("the bridge's subscription upstream never delivered");
        sbt_poll_pause(100);
    }

    /* an upstream producer sends N messages at QoS 1 */
    sbt_path(out, sizeof out, b->dir, "producer.out");
    sbt_argv_init(&a, sbt_mq_tool(MQTT_CLIENT));
    sbt_argv_add(&a, "pub");
    sbt_argv_add(&a, "--port");
    sbt_argv_add(&a, "%d", b->port[1]);
    sbt_argv_add(&a, "--id");
    sbt_argv_add(&a, "hq-producer");
    sbt_argv_add(&a, "--qos");
    sbt_argv_add(&a, "1");
    sbt_argv_add(&a, "--topic");
    sbt_argv_add(&a, "cmd/site1");
    sbt_argv_add(&a, "--count");
    sbt_argv_add(&a, "%d", N);
    sbt_argv_add(&a, "--payload");
    sbt_argv_add(&a, "m%%d");
    sbt_argv_add(&a, "--timeout-ms");
    sbt_argv_add(&a, "60000");
    assert_int_equal(sbt_spawn(&subs[0], a.v, NULL, out), 0);
    sbt_argv_free(&a);

    /* kill -9 in the middle of the stream */
    for (int64_t deadline = sbt_now_ms() + 20000;
         sbt_queue_int(c, "from-hq", "published") < N / 10;) {
        if (sbt_now_ms() > deadline)
            fail_msg("imports do not arrive");
        sbt_poll_pause(5);
    }
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    assert_true(sbt_proc_wait(&subs[0], 60000));
    assert_int_equal(subs[0].exit_status, 0);

    /* every message is in the local queue, under hq/ */
    sbt_sub(c, "from-hq", NULL, 100);
    while (distinct < N) {
        json_t *m = sbt_next_msg(c, 20000);
        const char *p = sbt_str(m, "payload");
        snprintf(topic, sizeof topic, "%s", sbt_str(m, "topic"));
        if (strcmp(topic, "hq/cmd/site1") == 0) {
            int i = atoi(p + 1);
            assert_true(p[0] == 'm' && i >= 0 && i < N);
            if (seen[i]++)
                dups++;
            else
                distinct++;
        } else {
            assert_string_equal(topic, "hq/cmd/probe");
        }
        sbt_ack(c, "from-hq", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    print_message("%d messages imported across a kill -9, %d duplicates (QoS 1)\n", N, dups);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* Publishes one message upstream at QoS 1 (mosquitto_pub). */
static void upstream_pub(int port, const char *topic, const char *payload)
{
    assert_int_equal(try_pub(port, topic, payload), 0);
}

static const char loop_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: uplink\n"
                                  "    type: tcp\n"
                                  "    connect: 127.0.0.1:{port1}\n"
                                  "    protocol: mqtt\n"
                                  "    client_id: site1-uplink\n"
                                  "    subscribe: [plant/#, site1/#]\n"
                                  "    remote_prefix: site1/\n"
                                  "    reconnect_backoff: 100ms\n"
                                  "routes:\n"
                                  "  - name: up\n"
                                  "    from: plant/#\n"
                                  "    to: uplink\n"
                                  "  - name: seen\n"
                                  "    from: plant/#\n"
                                  "  - name: echo\n"
                                  "    from: site1/#\n";

/* Both directions on one bridge, and no loops with MQTT 3.1.1 (no
 * no-local): a local message goes up as site1/plant/x, and its upstream
 * echo (the bridge subscribes to site1/#) is not imported; an upstream
 * plant/cmd is imported, matches the export route, and is not sent back
 * (bridge-origin). */
static void test_no_loops(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char file[SBT_PATH_MAX];
    char *text;

    need_mosquitto();
    sbt_broker_init(b, "bridge-loop", 2);
    upstream_start(&ups[0], b, "up", b->port[1], NULL);
    sbt_path(file, sizeof file, b->dir, "hq.out");
    consumer_start(&subs[0], b->port[1], "hq", "#", file);
    sbt_broker_config(b, loop_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);
    /* the subscription is in place once an upstream plant/ message is in */
    for (int64_t deadline = sbt_now_ms() + SBT_READY_MS;
         sbt_queue_int(c, "seen", "published") == 0;) {
        upstream_pub(b->port[1], "plant/cmd", "from-hq");
        if (sbt_now_ms() > deadline)
            fail_msg("the bridge's subscription upstream never delivered");
        sbt_poll_pause(200);
    }
    sbt_pub(c, "plant/x", "local", 2);
    /* it went up once; mosquitto sent its echo to the bridge in the same
     * turn (the bridge subscribes to site1/#) */
    sbt_wait_file_text(file, "site1/plant/x local\n", 1, 10000);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    /* a later import on the same session: once it is in, the bridge has
     * handled the echo before it */
    upstream_pub(b->port[1], "plant/cmd", "after");
    for (int64_t deadline = sbt_now_ms() + 10000;;) {
        char *got = sbt_read_file(file, NULL);
        int done = sbt_count(got, "plant/cmd after\n") == 1;
        free(got);
        if (done && sbt_queue_int(c, "up:uplink", "depth") == 0 &&
            sbt_queue_int(c, "seen", "published") == sbt_queue_int(c, "up:uplink", "acked"))
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("the import after the echo did not arrive");
        sbt_poll_pause(50);
    }

    text = sbt_read_file(file, NULL);
    assert_int_equal(sbt_count(text, "site1/plant/x local\n"), 1);
    assert_int_equal(sbt_count(text, "site1/plant/cmd"), 0); /* an import never goes back */
    free(text);
    assert_int_equal(sbt_queue_int(c, "echo", "published"), 0); /* the echo was not imported */
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char tls_config[] = "broker:\n"
                                 "  data_dir: '{data}'\n"
                                 "  admin: { endpoint: 'off' }\n"
                                 "adapters:\n"
                                 "  - name: clients\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port0}\n"
                                 "    protocol: jsonl\n"
                                 "  - name: uplink\n"
                                 "    type: tcp\n"
                                 "    connect: 127.0.0.1:{port2}\n"
                                 "    protocol: mqtt\n"
                                 "    client_id: site1-uplink\n"
                                 "    tls: { ca: '{v0}/ca.pem' }\n"
                                 "  - name: wrong-ca\n"
                                 "    type: tcp\n"
                                 "    connect: 127.0.0.1:{port2}\n"
                                 "    protocol: mqtt\n"
                                 "    client_id: site1-other\n"
                                 "    tls: { ca: '{v0}/other-ca.pem' }\n"
                                 "    reconnect_backoff: 100ms\n"
                                 "    reconnect_max_backoff: 200ms\n"
                                 "routes:\n"
                                 "  - name: up\n"
                                 "    from: plant/#\n"
                                 "    to: uplink\n";

/* TLS to the upstream, verified with a CA file: the bridge with the right
 * CA forwards; the one with another CA never connects, and its log says
 * why (the certificate problem), once per change of reason. */
static void test_tls_upstream(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char extra[3 * SBT_PATH_MAX + 200], tls[SBT_PATH_MAX], file[SBT_PATH_MAX];
    char *log;

    need_mosquitto();
    sbt_broker_init(b, "bridge-tls", 3);
    snprintf(tls, sizeof tls, "%s/tls", sbt_test_data());
    snprintf(extra, sizeof extra,
             "listener %d 127.0.0.1\ncertfile %s/server.pem\nkeyfile %s/server.key\n", b->port[2],
             tls, tls);
    upstream_start(&ups[0], b, "up", b->port[1], extra);
    sbt_path(file, sizeof file, b->dir, "hq.out");
    consumer_start(&subs[0], b->port[1], "hq", "plant/#", file);
    sbt_broker_set(b, 0, tls);
    sbt_broker_config(b, tls_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "[uplink] connected to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, 20);
    (void)expect_range(file, "plant/a", 0, 20, 10000);
    sbt_broker_wait_log(b, "[wrong-ca] cannot connect to 127.0.0.1:", 1, SBT_READY_MS);
    sbt_broker_wait_log(b, "certificate verify failed", 3, SBT_READY_MS);
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "[wrong-ca] connected"), 0);
    assert_int_equal(sbt_count(log, "[wrong-ca] cannot connect to 127.0.0.1:"), 1);
    free(log);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a scripted upstream: misbehaviour mosquitto would not show ---- */

/* Reads one MQTT packet from t into buf (decoded into *pk); asserts. */
static void read_packet(sbt_tcp *t, uint8_t *buf, size_t cap, sb_mqtt_packet *pk)
{
    size_t n = 0, used;
    const char *why = NULL;
    for (;;) {
        int rc = n == 0 ? SB_MQTT_NEED_MORE : sb_mqtt_decode(buf, n, cap, pk, &used, &why);
        if (rc == 0)
            return;
        if (rc != SB_MQTT_NEED_MORE)
            fail_msg("bad packet from the bridge: %s", why != NULL ? why : "?");
        assert_true(n < cap);
        if (sbt_tcp_read_exact(t, buf + n, 1, 10000) != 1)
            fail_msg("the bridge sent no complete packet");
        n++;
    }
}

static void send_ack_to(sbt_tcp *t, sb_mqtt_type type, uint16_t pid)
{
    uint8_t b[4];
    size_t n;
    assert_int_equal(sb_mqtt_encode_ack(b, sizeof b, &n, type, pid), 0);
    assert_int_equal(sbt_tcp_write(t, b, n), 0);
}

/* Accepts the bridge's connection and its CONNECT (clean session 0, as
 * client_id, with keep_alive seconds), and answers CONNACK 0. */
static sbt_tcp *accept_session_ka(sbt_listener *l, const char *client_id, int keep_alive,
                                  int session_present)
{
    uint8_t buf[1024], ack[4];
    size_t n;
    sb_mqtt_packet pk;
    sbt_tcp *t = sbt_accept(l, 10000);
    assert_non_null(t);
    read_packet(t, buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_CONNECT);
    assert_int_equal(pk.connect.clean_session, 0);
    assert_int_equal(pk.connect.keep_alive, keep_alive);
    assert_int_equal(pk.connect.client_id.n, strlen(client_id));
    assert_memory_equal(pk.connect.client_id.p, client_id, pk.connect.client_id.n);
    assert_int_equal(sb_mqtt_encode_connack(ack, sizeof ack, &n, session_present, 0), 0);
    assert_int_equal(sbt_tcp_write(t, ack, n), 0);
    return t;
}

static sbt_tcp *accept_session_as(sbt_listener *l, const char *client_id, int session_present)
{
    return accept_session_ka(l, client_id, 60, session_present);
}

static sbt_tcp *accept_session(sbt_listener *l, int session_present)
{
    return accept_session_as(l, "site1-uplink", session_present);
}

/* The next PUBLISH (at qos): returns its packet id, checks its payload
 * "m<i>"; its DUP flag in *dup if not NULL. */
static uint16_t expect_publish_dup(sbt_tcp *t, int i, int qos, int *dup)
{
    uint8_t buf[512];
    char want[16];
    sb_mqtt_packet pk;
    read_packet(t, buf, sizeof buf, &pk);
    if (pk.type != SB_MQTT_PUBLISH)
        fail_msg("expected PUBLISH m%d, got %s (packet id %u)", i, sb_mqtt_type_name(pk.type),
                 (unsigned)pk.packet_id);
    assert_int_equal(pk.publish.qos, qos);
    snprintf(want, sizeof want, "m%d", i);
    if (pk.publish.payload.n != strlen(want) ||
        memcmp(pk.publish.payload.p, want, strlen(want)) != 0)
        fail_msg("expected %s, got %.*s", want, (int)pk.publish.payload.n,
                 (const char *)pk.publish.payload.p);
    if (dup != NULL)
        *dup = pk.publish.dup;
    return pk.packet_id;
}

static uint16_t expect_publish_qos(sbt_tcp *t, int i, int qos)
{
    return expect_publish_dup(t, i, qos, NULL);
}

/* The next packet is a PUBREL for pid. */
static void expect_pubrel(sbt_tcp *t, uint16_t pid)
{
    uint8_t buf[512];
    sb_mqtt_packet pk;
    read_packet(t, buf, sizeof buf, &pk);
    if (pk.type != SB_MQTT_PUBREL || pk.packet_id != pid)
        fail_msg("expected PUBREL %u, got %s (packet id %u)", (unsigned)pid,
                 sb_mqtt_type_name(pk.type), (unsigned)pk.packet_id);
}

static uint16_t expect_publish(sbt_tcp *t, int i)
{
    return expect_publish_qos(t, i, 1);
}

static const char scripted_config[] = "broker:\n"
                                      "  data_dir: '{data}'\n"
                                      "  admin: { endpoint: 'off' }\n"
                                      "adapters:\n"
                                      "  - name: clients\n"
                                      "    type: tcp\n"
                                      "    listen: 127.0.0.1:{port0}\n"
                                      "    protocol: jsonl\n"
                                      "  - name: uplink\n"
                                      "    type: tcp\n"
                                      "    connect: 127.0.0.1:{port1}\n"
                                      "    protocol: mqtt\n"
                                      "    client_id: site1-uplink\n"
                                      "    inflight: 8\n"
                                      "    max_message: 1KiB\n"
                                      "    reconnect_backoff: 100ms\n"
                                      "    reconnect_max_backoff: 200ms\n"
                                      "routes:\n"
                                      "  - name: up\n"
                                      "    from: plant/#\n"
                                      "    to: uplink\n";

/* An upstream that stops acknowledging holds only the window (inflight)
 * and the local queue keeps the rest; a malformed packet and an oversized
 * one each close the link (logged), the broker goes on, and what was not
 * acknowledged is published again, in order, on the next session. */
static void test_bad_upstream(void **state)
{
    enum { N = 30 };
    static const uint8_t malformed[] = {0xF0, 0x00}; /* reserved packet type 15 */
    static const uint8_t oversized[] = {0x30, 0xFF, 0xFF, 0xFF, 0x7F};
    sbt_broker *b = *state;
    sbt_listener *l;
    sbt_tcp *t;
    sbt_conn *c;
    uint16_t pids[N];

    sbt_broker_init(b, "bridge-scripted", 2);
    l = sbt_listen(b->port[1]);
    assert_non_null(l);
    sbt_broker_config(b, scripted_config);
    sbt_broker_start(b);
    t = accept_session(l, 0);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, N);

    /* no acknowledgement: exactly the window is in flight */
    for (int i = 0; i < 8; i++)
        pids[i] = expect_publish(t, i);
    sbt_wait_queue_int(c, "up:uplink", "inflight", 8, 5000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "depth"), N);
    send_ack_to(t, SB_MQTT_PUBACK, pids[0]); /* one acknowledged: one more goes */
    pids[8] = expect_publish(t, 8);
    sbt_wait_queue_int(c, "up:uplink", "depth", N - 1, 5000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "inflight"), 8);

    /* a malformed packet: the link closes, m1.. come again on the next one */
    assert_int_equal(sbt_tcp_write(t, malformed, sizeof malformed), 0);
    assert_true(sbt_tcp_wait_closed(t, 10000));
    sbt_tcp_close(t);
    sbt_broker_wait_log(b, "closing the link: malformed packet", 1, 10000);
    t = accept_session(l, 1);
    for (int i = 1; i < 5; i++)
        send_ack_to(t, SB_MQTT_PUBACK, expect_publish(t, i));

    /* an oversized one (decided from its fixed header) */
    assert_int_equal(sbt_tcp_write(t, oversized, sizeof oversized), 0);
    assert_true(sbt_tcp_wait_closed(t, 10000));
    sbt_tcp_close(t);
    sbt_broker_wait_log(b, "closing the link: packet larger than", 1, 10000);
    t = accept_session(l, 1);
    /* m1..m4 were acknowledged: at least once means m5.. now, in order */
    for (int i = 5; i < N; i++)
        send_ack_to(t, SB_MQTT_PUBACK, expect_publish(t, i));
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);
    sbt_tcp_close(t);
    sbt_listener_close(l);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char slow_reader_config[] = "broker:\n"
                                         "  data_dir: '{data}'\n"
                                         "  admin: { endpoint: 'off' }\n"
                                         "adapters:\n"
                                         "  - name: clients\n"
                                         "    type: tcp\n"
                                         "    listen: 127.0.0.1:{port0}\n"
                                         "    protocol: jsonl\n"
                                         "  - name: uplink\n"
                                         "    type: tcp\n"
                                         "    connect: 127.0.0.1:{port1}\n"
                                         "    protocol: mqtt\n"
                                         "    client_id: site1-uplink\n"
                                         "    keep_alive: 1s\n"
                                         "    inflight: 64\n"
                                         "    reconnect_backoff: 100ms\n"
                                         "routes:\n"
                                         "  - name: up\n"
                                         "    from: plant/#\n"
                                         "    to: uplink\n";

/* Reads one packet of any size (a whole PUBLISH at once) into *buf. */
static void read_big_packet(sbt_tcp *t, uint8_t **buf, sb_mqtt_packet *pk)
{
    uint8_t h[5];
    size_t n = 1, rem = 0, used;
    const char *why = NULL;
    assert_int_equal(sbt_tcp_read_exact(t, h, 1, 10000), 1);
    for (int shift = 0;; shift += 7) {
        assert_true(n < sizeof h);
        assert_int_equal(sbt_tcp_read_exact(t, h + n, 1, 10000), 1);
        rem |= (size_t)(h[n] & 0x7f) << shift;
        if ((h[n++] & 0x80) == 0)
            break;
    }
    *buf = realloc(*buf, n + rem);
    assert_non_null(*buf);
    memcpy(*buf, h, n);
    if (rem > 0)
        assert_int_equal(sbt_tcp_read_exact(t, *buf + n, rem, 10000), (int)rem);
    assert_int_equal(sb_mqtt_decode(*buf, n + rem, n + rem, pk, &used, &why), 0);
}

/* Keep-alive while the bridge does not read: an upstream reading slowly
 * (a slow uplink draining a backlog) backs the bridge's output up, which
 * stops its reading; upstream's answers wait unread meanwhile, and that is
 * no silence: the link stays up, longer than 1.5 keep-alive periods. */
static void test_paused_reading_is_not_silence(void **state)
{
    enum { N = 24, SIZE = 512 * 1024 };
    static const uint8_t pingresp[] = {0xD0, 0x00};
    sbt_broker *b = *state;
    sbt_listener *l;
    sbt_tcp *t;
    sbt_conn *c;
    char *payload = malloc(SIZE + 1);
    uint8_t *buf = NULL;
    sb_mqtt_packet pk;
    json_t *u;

    assert_non_null(payload);
    memset(payload, 'p', SIZE);
    payload[SIZE] = '\0';
    sbt_broker_init(b, "bridge-slow-reader", 2);
    l = sbt_listen(b->port[1]);
    assert_non_null(l);
    sbt_broker_config(b, slow_reader_config);
    sbt_broker_start(b);
    t = accept_session_ka(l, "site1-uplink", 1, 0);
    sbt_tcp_pause(t);
    c = sbt_connect(b->port[0]);
    for (int i = 0; i < N; i++) {
        /* upstream is not silent while the bridge still reads */
        assert_int_equal(sbt_tcp_write(t, pingresp, sizeof pingresp), 0);
        sbt_pub(c, "plant/a", payload, 1);
    }
    /* 3 keep-alive periods of answers the bridge cannot read yet */
    for (int64_t end = sbt_now_ms() + 3000; sbt_now_ms() < end;) {
        assert_int_equal(sbt_tcp_write(t, pingresp, sizeof pingresp), 0);
        u = uplink_stats(c);
        if (json_integer_value(json_object_get(u, "lost")) != 0)
            fail_msg("the link was dropped while the bridge was not reading");
        json_decref(u);
        sbt_poll_pause(100);
    }
    /* upstream reads on: everything, on the same link */
    for (int i = 0; i < N;) {
        read_big_packet(t, &buf, &pk);
        if (pk.type == SB_MQTT_PINGREQ)
            continue;
        assert_int_equal(pk.type, SB_MQTT_PUBLISH);
        assert_int_equal(pk.publish.payload.n, SIZE);
        send_ack_to(t, SB_MQTT_PUBACK, pk.packet_id);
        i++;
    }
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 10000);
    u = uplink_stats(c);
    assert_int_equal(json_integer_value(json_object_get(u, "lost")), 0);
    json_decref(u);
    free(buf);
    free(payload);
    sbt_tcp_close(t);
    sbt_listener_close(l);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char rate_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: uplink\n"
                                  "    type: tcp\n"
                                  "    connect: 127.0.0.1:{port1}\n"
                                  "    protocol: mqtt\n"
                                  "    client_id: site1-uplink\n"
                                  "    rate: 20\n"
                                  "routes:\n"
                                  "  - name: up\n"
                                  "    from: plant/#\n"
                                  "    to: uplink\n";

/* rate paces exports: 60 messages published at once go up at 20 a second
 * (after a burst of at most one second's worth, here what accrued since
 * the start), so they take seconds where unpaced they take milliseconds. */
static void test_rate_paces_backlog(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char file[SBT_PATH_MAX];
    int64_t t0, ms;

    need_mosquitto();
    sbt_broker_init(b, "bridge-rate", 2);
    upstream_start(&ups[0], b, "up", b->port[1], NULL);
    sbt_path(file, sizeof file, b->dir, "hq.out");
    consumer_start(&subs[0], b->port[1], "hq", "plant/#", file);
    sbt_broker_config(b, rate_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);
    t0 = sbt_now_ms();
    publish_range(c, "plant/a", 0, 60); /* faster than 20 a second */
    (void)expect_range(file, "plant/a", 0, 60, 20000);
    ms = sbt_now_ms() - t0;
    print_message("60 messages at rate 20/s took %lld ms\n", (long long)ms);
    assert_true(ms >= 1500);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char qos2_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: uplink\n"
                                  "    type: tcp\n"
                                  "    connect: 127.0.0.1:{port1}\n"
                                  "    protocol: mqtt\n"
                                  "    client_id: site1-uplink\n"
                                  "    qos: 2\n"
                                  "    inflight: 4\n"
                                  "routes:\n"
                                  "  - name: up\n"
                                  "    from: plant/#\n"
                                  "    to: uplink\n";

/* qos: 2: a delivery stays in its queue through PUBREC (the bridge
 * answers PUBREL) and leaves it at PUBCOMP; a PUBCOMP for an id still
 * waiting for PUBREC is a protocol error that closes the link. */
static void test_qos2_export(void **state)
{
    sbt_broker *b = *state;
    sbt_listener *l;
    sbt_tcp *t;
    sbt_conn *c;
    uint8_t buf[64];
    sb_mqtt_packet pk;
    uint16_t pid, pid2;
    char why[64];

    sbt_broker_init(b, "bridge-qos2", 2);
    l = sbt_listen(b->port[1]);
    assert_non_null(l);
    sbt_broker_config(b, qos2_config);
    sbt_broker_start(b);
    t = accept_session(l, 0);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, 2);
    pid = expect_publish_qos(t, 0, 2);
    pid2 = expect_publish_qos(t, 1, 2);
    send_ack_to(t, SB_MQTT_PUBREC, pid);
    read_packet(t, buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_PUBREL);
    assert_int_equal(pk.packet_id, pid);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "depth"), 2); /* not before PUBCOMP */
    send_ack_to(t, SB_MQTT_PUBCOMP, pid);
    sbt_wait_queue_int(c, "up:uplink", "depth", 1, 5000);
    /* m1 is still waiting for its PUBREC: a PUBCOMP for it is refused */
    send_ack_to(t, SB_MQTT_PUBCOMP, pid2);
    assert_true(sbt_tcp_wait_closed(t, 10000));
    sbt_tcp_close(t);
    snprintf(why, sizeof why, "closing the link: unexpected PUBCOMP for packet id %u",
             (unsigned)pid2);
    sbt_broker_wait_log(b, why, 1, 10000);
    t = accept_session(l, 1);
    pid = expect_publish_qos(t, 1, 2);
    assert_int_equal(pid, pid2); /* sent again with its packet id */
    send_ack_to(t, SB_MQTT_PUBREC, pid);
    read_packet(t, buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_PUBREL);
    send_ack_to(t, SB_MQTT_PUBCOMP, pid);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 5000);
    sbt_tcp_close(t);
    sbt_listener_close(l);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* MQTT 3.1.1 4.3.3 and 4.4, as a strict upstream (EMQX, HiveMQ) applies
 * them: a packet id answered with PUBREC stays taken until PUBREL, and a
 * PUBLISH under it meanwhile is a duplicate (PUBREC, not delivered). So a
 * QoS 2 export must go out again with its packet id: PUBREL if upstream
 * answered PUBREC (on the next link, and after a kill -9 of Switchboard),
 * the message with DUP if not. A new upstream session (session present 0)
 * voids the ids: the message goes again. */
static void test_qos2_resent_with_its_id(void **state)
{
    sbt_broker *b = *state;
    sbt_listener *l;
    sbt_tcp *t;
    sbt_conn *c;
    uint16_t a, p1, p2, p3;
    int dup;

    sbt_broker_init(b, "bridge-qos2-ids", 2);
    l = sbt_listen(b->port[1]);
    assert_non_null(l);
    sbt_broker_config(b, qos2_config);
    sbt_broker_start(b);
    t = accept_session(l, 0);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, 2);
    a = expect_publish_dup(t, 0, 2, &dup);
    assert_int_equal(dup, 0);
    p1 = expect_publish_qos(t, 1, 2);
    send_ack_to(t, SB_MQTT_PUBREC, a);
    expect_pubrel(t, a);
    /* the link goes: a awaits PUBCOMP, p1 its PUBREC */
    sbt_tcp_close(t);
    t = accept_session(l, 1);
    expect_pubrel(t, a); /* not m0 again, under another id */
    assert_int_equal(expect_publish_dup(t, 1, 2, &dup), p1);
    assert_int_equal(dup, 1);
    send_ack_to(t, SB_MQTT_PUBCOMP, a);
    send_ack_to(t, SB_MQTT_PUBREC, p1);
    expect_pubrel(t, p1);
    send_ack_to(t, SB_MQTT_PUBCOMP, p1);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 5000);

    /* PUBREC answered, then Switchboard is killed: PUBREL after the restart */
    publish_range(c, "plant/a", 2, 3);
    p2 = expect_publish_qos(t, 2, 2);
    send_ack_to(t, SB_MQTT_PUBREC, p2);
    expect_pubrel(t, p2);
    sbt_close(c);
    sbt_broker_kill(b);
    sbt_tcp_close(t);
    sbt_broker_start(b);
    t = accept_session(l, 1);
    c = sbt_connect(b->port[0]);
    expect_pubrel(t, p2);
    send_ack_to(t, SB_MQTT_PUBCOMP, p2);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 5000);

    /* a new upstream session forgot p3: m3 goes again, as a message */
    publish_range(c, "plant/a", 3, 4);
    p3 = expect_publish_qos(t, 3, 2);
    send_ack_to(t, SB_MQTT_PUBREC, p3);
    expect_pubrel(t, p3);
    sbt_tcp_close(t);
    t = accept_session(l, 0);
    assert_int_equal(expect_publish_qos(t, 3, 2), p3);
    send_ack_to(t, SB_MQTT_PUBREC, p3);
    expect_pubrel(t, p3);
    send_ack_to(t, SB_MQTT_PUBCOMP, p3);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);
    sbt_tcp_close(t);
    sbt_listener_close(l);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a link cut at chosen packets, with mosquitto upstream ---- */

/* At the nth packet of type (counted over all connections) from
 * upstream: forward it to the bridge or drop it, then close both sides. */
typedef struct cut {
    sb_mqtt_type type;
    int nth;
    int forward;
} cut;

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The length of the whole packet at p[0..n), or 0 if incomplete. */
static size_t packet_len(const uint8_t *p, size_t n)
{
    size_t rem = 0, i = 1;
    for (int shift = 0; i < n && i < 5; shift += 7) {
        rem |= (size_t)(p[i] & 0x7f) << shift;
        if ((p[i++] & 0x80) == 0)
            return n >= i + rem ? i + rem : 0;
    }
    return 0;
}

/* The child: relays each connection accepted on lfd to upstream_port, and
 * cuts the link at each of cuts[0..ncuts) in turn. */
static void cutter_run(int lfd, int upstream_port, const cut *cuts, size_t ncuts)
{
    int counts[16] = {0};
    size_t next = 0;
    static uint8_t ubuf[1 << 20], dbuf[1 << 16];
    for (;;) {
        struct sockaddr_in sa = {0};
        size_t ulen = 0;
        int down = accept(lfd, NULL, NULL), up = socket(AF_INET, SOCK_STREAM, 0), open = 1;
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)upstream_port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (down < 0 || up < 0 || connect(up, (struct sockaddr *)&sa, sizeof sa) != 0)
            open = 0;
        while (open) {
            struct pollfd pf[2] = {{down, POLLIN, 0}, {up, POLLIN, 0}};
            ssize_t k;
            size_t plen;
            if (poll(pf, 2, -1) < 0)
                break;
            if (pf[0].revents != 0) {
                if ((k = recv(down, dbuf, sizeof dbuf, 0)) <= 0 ||
                    send_all(up, dbuf, (size_t)k) != 0)
                    break;
            }
            if (pf[1].revents == 0)
                continue;
            if ((k = recv(up, ubuf + ulen, sizeof ubuf - ulen, 0)) <= 0)
                break;
            ulen += (size_t)k;
            while (open && (plen = packet_len(ubuf, ulen)) > 0) {
                int type = ubuf[0] >> 4, at = ++counts[type];
                int cut_here = next < ncuts && (int)cuts[next].type == type && cuts[next].nth == at;
                if ((!cut_here || cuts[next].forward) && send_all(down, ubuf, plen) != 0)
                    open = 0;
                memmove(ubuf, ubuf + plen, ulen - plen);
                ulen -= plen;
                if (cut_here) {
                    next++;
                    open = 0;
                }
            }
        }
        if (down >= 0)
            close(down);
        if (up >= 0)
            close(up);
    }
}

/* Starts link_cutter on port, relaying to upstream_port. */
static void cutter_start(int port, int upstream_port, const cut *cuts, size_t ncuts)
{
    struct sockaddr_in sa = {0};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 8), 0);
    cutter = fork();
    assert_true(cutter >= 0);
    if (cutter == 0) {
        cutter_run(lfd, upstream_port, cuts, ncuts);
        _exit(0);
    }
    close(lfd);
}

static const char qos2_cut_config[] = "broker:\n"
                                      "  data_dir: '{data}'\n"
                                      "  admin: { endpoint: 'off' }\n"
                                      "adapters:\n"
                                      "  - name: clients\n"
                                      "    type: tcp\n"
                                      "    listen: 127.0.0.1:{port0}\n"
                                      "    protocol: jsonl\n"
                                      "  - name: uplink\n"
                                      "    type: tcp\n"
                                      "    connect: 127.0.0.1:{port2}\n"
                                      "    protocol: mqtt\n"
                                      "    client_id: site1-uplink\n"
                                      "    qos: 2\n"
                                      "    inflight: 4\n"
                                      "    reconnect_backoff: 100ms\n"
                                      "    reconnect_max_backoff: 200ms\n"
                                      "routes:\n"
                                      "  - name: up\n"
                                      "    from: plant/#\n"
                                      "    to: uplink\n";

/* QoS 2 exports to mosquitto through a link cut after a PUBCOMP was lost
 * (PUBREL had reached mosquitto: it delivered the message), after a PUBREC
 * reached the bridge (its PUBREL did not reach mosquitto) and after a
 * PUBREC was lost: every message arrives exactly once. */
static void test_qos2_cut_links_exactly_once(void **state)
{
    enum { N = 40 };
    static const cut cuts[] = {
        {SB_MQTT_PUBCOMP, 3, 0}, {SB_MQTT_PUBREC, 10, 1}, {SB_MQTT_PUBREC, 16, 0},
        {SB_MQTT_PUBCOMP, 22, 0}, {SB_MQTT_PUBREC, 30, 1},
    };
    sbt_broker *b = *state;
    sbt_conn *c;
    char file[SBT_PATH_MAX];
    int dups;
    json_t *u;

    need_mosquitto();
    sbt_broker_init(b, "bridge-qos2-cut", 3);
    upstream_start(&ups[0], b, "up", b->port[1], NULL);
    sbt_path(file, sizeof file, b->dir, "hq.out");
    consumer_start(&subs[0], b->port[1], "hq", "plant/#", file);
    cutter_start(b->port[2], b->port[1], cuts, sizeof cuts / sizeof cuts[0]);
    sbt_broker_config(b, qos2_cut_config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    publish_range(c, "plant/a", 0, N);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 30000);
    /* a last one: once it is there, so is anything sent before it */
    publish_range(c, "plant/a", N, N + 1);
    dups = expect_range(file, "plant/a", 0, N + 1, 20000);
    u = uplink_stats(c);
    print_message("%d QoS 2 messages through %lld lost links: %d duplicates\n", N,
                  (long long)json_integer_value(json_object_get(u, "lost")), dups);
    assert_int_equal(json_integer_value(json_object_get(u, "lost")),
                     (json_int_t)(sizeof cuts / sizeof cuts[0]));
    json_decref(u);
    assert_int_equal(dups, 0);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

static const char qos2_import_config[] = "broker:\n"
                                         "  data_dir: '{data}'\n"
                                         "  admin: { endpoint: 'off' }\n"
                                         "adapters:\n"
                                         "  - name: clients\n"
                                         "    type: tcp\n"
                                         "    listen: 127.0.0.1:{port0}\n"
                                         "    protocol: jsonl\n"
                                         "  - name: uplink\n"
                                         "    type: tcp\n"
                                         "    connect: 127.0.0.1:{port1}\n"
                                         "    protocol: mqtt\n"
                                         "    client_id: site1-uplink\n"
                                         "    qos: 2\n"
                                         "    subscribe: [cmd/#]\n"
                                         "routes:\n"
                                         "  - name: from-hq\n"
                                         "    from: cmd/#\n";

/* QoS 2 imports: subscribed at QoS 2, each upstream message is committed
 * once (PUBREC after the commit, PUBCOMP at PUBREL), and a QoS 2 upstream
 * producer completes its flow. */
static void test_qos2_import(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    json_t *m;

    need_mosquitto();
    sbt_broker_init(b, "bridge-qos2-in", 2);
    upstream_start(&ups[0], b, "up", b->port[1], NULL);
    sbt_broker_config(b, qos2_import_config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "connected to 127.0.0.1:", 1, SBT_READY_MS);
    c = sbt_connect(b->port[0]);
    /* until the SUBACK: probes at QoS 2 */
    for (int64_t deadline = sbt_now_ms() + SBT_READY_MS;
         sbt_queue_int(c, "from-hq", "published") == 0;) {
        char *argv[] = {(char *)sbt_mq_tool(MOSQUITTO_PUB), "-p", NULL, "-q", "2", "-t",
                        "cmd/probe", "-m", "p", NULL};
        char port[16];
        snprintf(port, sizeof port, "%d", b->port[1]);
        argv[2] = port;
        assert_int_equal(sbt_run(argv, NULL, 20000, NULL, NULL), 0);
        if (sbt_now_ms() > deadline)
            fail_msg("the bridge's subscription upstream never delivered");
        sbt_poll_pause(100);
    }
    {
        char *argv[] = {(char *)sbt_mq_tool(MOSQUITTO_PUB), "-p", NULL, "-q", "2", "-t",
                        "cmd/x", "-m", "exactly-once", NULL};
        char port[16];
        snprintf(port, sizeof port, "%d", b->port[1]);
        argv[2] = port;
        assert_int_equal(sbt_run(argv, NULL, 20000, NULL, NULL), 0);
    }
    sbt_sub(c, "from-hq", NULL, 100);
    for (;;) {
        m = sbt_next_msg(c, 10000);
        sbt_ack(c, "from-hq", sbt_int(m, "msg_id"));
        if (strcmp(sbt_str(m, "topic"), "cmd/x") == 0)
            break;
        json_decref(m);
    }
    assert_string_equal(sbt_str(m, "payload"), "exactly-once");
    json_decref(m);
    /* mosquitto_pub exited 0: its QoS 2 flow completed; nothing came twice */
    sbt_wait_queue_int(c, "from-hq", "depth", 0, 5000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* Three bridges subscribed at QoS 2 to three scripted upstreams: a and b
 * with one client id (each cluster has its own site1-uplink session), c
 * with a 300-byte one. */
static const char dedup_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "  - name: to-a\n"
                                   "    type: tcp\n"
                                   "    connect: 127.0.0.1:{port1}\n"
                                   "    protocol: mqtt\n"
                                   "    client_id: site1-uplink\n"
                                   "    qos: 2\n"
                                   "    subscribe: [cmd/#]\n"
                                   "  - name: to-b\n"
                                   "    type: tcp\n"
                                   "    connect: 127.0.0.1:{port2}\n"
                                   "    protocol: mqtt\n"
                                   "    client_id: site1-uplink\n"
                                   "    qos: 2\n"
                                   "    subscribe: [cmd/#]\n"
                                   "  - name: to-c\n"
                                   "    type: tcp\n"
                                   "    connect: 127.0.0.1:{port3}\n"
                                   "    protocol: mqtt\n"
                                   "    client_id: '{v0}'\n"
                                   "    qos: 2\n"
                                   "    subscribe: [cmd/#]\n"
                                   "routes:\n"
                                   "  - name: from-hq\n"
                                   "    from: cmd/#\n";

/* Answers the bridge's SUBSCRIBE with QoS 2 granted. */
static void grant_subscribe(sbt_tcp *t)
{
    uint8_t buf[512], ack[8], code = 2;
    size_t n;
    sb_mqtt_packet pk;
    read_packet(t, buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_SUBSCRIBE);
    assert_int_equal(sb_mqtt_encode_suback(ack, sizeof ack, &n, pk.packet_id, &code, 1), 0);
    assert_int_equal(sbt_tcp_write(t, ack, n), 0);
}

/* Upstream sends payload at QoS 2 under pid; returns once the bridge
 * answered PUBREC (the import is committed, or dropped as a duplicate). */
static void upstream_pub_qos2(sbt_tcp *t, uint16_t pid, int dup, const char *payload)
{
    uint8_t buf[128];
    size_t n;
    sb_mqtt_packet pk;
    sb_mqtt_publish p = {(uint8_t)dup, 2, 0, {"cmd/x", 5},
                         {(const uint8_t *)payload, strlen(payload)}};
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof buf, &n, &p, pid), 0);
    assert_int_equal(sbt_tcp_write(t, buf, n), 0);
    read_packet(t, buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_PUBREC);
    assert_int_equal(pk.packet_id, pid);
}

/* QoS 2 import dedup keys are each bridge's own: an import of a, whose
 * PUBREL has not come, does not make b's message under the same packet id
 * a duplicate, nor does b's PUBREL end a's; with a client id too long for
 * the old fixed-size key, packet ids stay apart; a new upstream session
 * (session present 0) voids them. */
static void test_qos2_import_keys_per_bridge(void **state)
{
    sbt_broker *b = *state;
    sbt_listener *l[3];
    sbt_tcp *t[3];
    sbt_conn *c;
    char long_id[301];
    uint8_t buf[64];
    sb_mqtt_packet pk;

    memset(long_id, 'c', 300);
    long_id[300] = '\0';
    sbt_broker_init(b, "bridge-dedup", 4);
    for (int i = 0; i < 3; i++) {
        l[i] = sbt_listen(b->port[i + 1]);
        assert_non_null(l[i]);
    }
    sbt_broker_set(b, 0, long_id);
    sbt_broker_config(b, dedup_config);
    sbt_broker_start(b);
    t[0] = accept_session(l[0], 0);
    t[1] = accept_session(l[1], 0);
    t[2] = accept_session_as(l[2], long_id, 0);
    for (int i = 0; i < 3; i++)
        grant_subscribe(t[i]);
    c = sbt_connect(b->port[0]);

    upstream_pub_qos2(t[0], 5, 0, "a"); /* no PUBREL yet */
    upstream_pub_qos2(t[1], 5, 0, "b");
    assert_int_equal(sbt_queue_int(c, "from-hq", "published"), 2);
    upstream_pub_qos2(t[2], 1, 0, "x");
    upstream_pub_qos2(t[2], 2, 0, "y");
    assert_int_equal(sbt_queue_int(c, "from-hq", "published"), 4);
    /* b completes; a's message sent again is still a duplicate */
    send_ack_to(t[1], SB_MQTT_PUBREL, 5);
    read_packet(t[1], buf, sizeof buf, &pk);
    assert_int_equal(pk.type, SB_MQTT_PUBCOMP);
    upstream_pub_qos2(t[0], 5, 1, "a");
    assert_int_equal(sbt_queue_int(c, "from-hq", "published"), 4);
    /* a's upstream comes back without the session: packet id 5 is new */
    sbt_tcp_close(t[0]);
    t[0] = accept_session(l[0], 0);
    grant_subscribe(t[0]);
    upstream_pub_qos2(t[0], 5, 0, "a2");
    assert_int_equal(sbt_queue_int(c, "from-hq", "published"), 5);
    for (int i = 0; i < 3; i++) {
        sbt_tcp_close(t[i]);
        sbt_listener_close(l[i]);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a NATS cluster (JetStream + MQTT) as the upstream ---- */

static const char nats_config[] = "broker:\n"
                                   "  data_dir: '{data}'\n"
                                   "  admin: { endpoint: 'off' }\n"
                                   "adapters:\n"
                                   "  - name: clients\n"
                                   "    type: tcp\n"
                                   "    listen: 127.0.0.1:{port0}\n"
                                   "    protocol: jsonl\n"
                                   "  - name: uplink\n"
                                   "    type: tcp\n"
                                   "    connect: 127.0.0.1:{port1}\n"
                                   "    failover: [127.0.0.1:{port2}, 127.0.0.1:{port3}]\n"
                                   "    protocol: mqtt\n"
                                   "    client_id: site1-uplink\n"
                                   "    remote_prefix: site1/\n"
                                   "    inflight: 16\n"
                                   "    reconnect_backoff: 100ms\n"
                                   "    reconnect_max_backoff: 1s\n"
                                   "routes:\n"
                                   "  - name: up\n"
                                   "    from: plant/#\n"
                                   "    to: uplink\n";

/* A 3-node nats-server cluster with JetStream and MQTT on loopback
 * (RECIPES.md): node i's MQTT port is port[i], its client port port[3 + i],
 * its cluster port port[6 + i]. */
static void nats_start(sbt_broker *b)
{
    for (int i = 1; i <= 3; i++) {
        char conf[SBT_PATH_MAX + 16], log[SBT_PATH_MAX + 16], text[2 * SBT_PATH_MAX + 600];
        sbt_argv a;
        snprintf(conf, sizeof conf, "%s/n%d.conf", b->dir, i);
        snprintf(log, sizeof log, "%s/n%d.log", b->dir, i);
        snprintf(text, sizeof text,
                 "listen: 127.0.0.1:%d\nserver_name: n%d\njetstream { store_dir: '%s/js%d' }\n"
                 "mqtt { listen: 127.0.0.1:%d }\n"
                 "cluster { name: c1, listen: 127.0.0.1:%d, routes: [nats-route://127.0.0.1:%d, "
                 "nats-route://127.0.0.1:%d, nats-route://127.0.0.1:%d] }\n",
                 b->port[3 + i], i, b->dir, i, b->port[i], b->port[6 + i], b->port[7], b->port[8],
                 b->port[9]);
        sbt_write_file(conf, text, strlen(text));
        sbt_argv_init(&a, sbt_mq_tool(NATS_SERVER));
        sbt_argv_add(&a, "-c");
        sbt_argv_add(&a, "%s", conf);
        memset(&nats[i - 1], 0, sizeof nats[i - 1]);
        assert_int_equal(sbt_spawn(&nats[i - 1], a.v, NULL, log), 0);
        sbt_argv_free(&a);
    }
}

/* The bridge talks to node 1 of a NATS cluster; a consumer with a
 * persistent session reads on node 2. Node 1 is killed -9 mid-stream: the
 * bridge fails over to node 2 and every message arrives. */
static void test_nats_cluster_failover(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char file[SBT_PATH_MAX], want[64];
    int dups;

    need_mosquitto();
    sbt_mq_need(NATS_SERVER, NULL);
    sbt_broker_init(b, "bridge-nats", 10);
    nats_start(b);
    /* ready: a probe published on node 2 reaches the consumer there
     * (JetStream has a leader and the MQTT streams exist) */
    sbt_path(file, sizeof file, b->dir, "hq.out");
    consumer_start(&subs[0], b->port[2], "hq", "site1/#", file);
    sbt_broker_config(b, nats_config);
    sbt_broker_start(b);
    snprintf(want, sizeof want, "connected to 127.0.0.1:%d", b->port[1]);
    sbt_broker_wait_log(b, want, 1, 30000);
    c = sbt_connect(b->port[0]);

    publish_range(c, "plant/line1", 0, 100);
    dups = expect_range(file, "site1/plant/line1", 0, 100, 30000);
    sbt_proc_signal(&nats[0], SIGKILL);
    assert_true(sbt_proc_wait(&nats[0], 10000));
    publish_range(c, "plant/line1", 100, 200);
    sbt_broker_wait_log(b, "disconnected from 127.0.0.1:", 1, 20000);
    dups += expect_range(file, "site1/plant/line1", 0, 200, 60000);
    sbt_wait_queue_int(c, "up:uplink", "depth", 0, 30000);
    assert_int_equal(sbt_queue_int(c, "up:uplink", "dead"), 0);
    print_message("NATS: 200 messages arrived across the death of node 1, %d duplicates\n",
                  dups);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* config/examples/mqtt-bridge.yaml as shipped (its ports made this run's):
 * what its comment promises, a local publish on plant/line1/temp arriving
 * upstream as site1/plant/line1/temp. */
static void test_example(void **state)
{
    sbt_broker *b = *state;
    char file[SBT_PATH_MAX], *text;
    sbt_conn *c;
    int64_t deadline;

    need_mosquitto();
    sbt_broker_init(b, "bridge-example", 3);
    upstream_start(&ups[0], b, "up1", b->port[1], NULL);
    sbt_path(file, sizeof file, b->dir, "site.out");
    consumer_start(&subs[0], b->port[1], "hq", "site1/#", file);
    text = sbt_example("mqtt-bridge.yaml");
    sbt_example_replace(&text, "mqtt-bridge.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&text, "mqtt-bridge.yaml", "listen: 127.0.0.1:7878",
                        "listen: 127.0.0.1:{port0}");
    sbt_example_replace(&text, "mqtt-bridge.yaml", "connect: [127.0.0.1:1883, 127.0.0.1:1884]",
                        "connect: [127.0.0.1:{port1}, 127.0.0.1:{port2}]");
    sbt_broker_config(b, text);
    free(text);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_pub(c, "plant/line1/temp", "21.5", 1);
    sbt_waiting_for("site1/plant/line1/temp upstream");
    for (deadline = sbt_now_ms() + 20000;;) {
        char *got = sbt_read_file(file, NULL);
        int ok = got != NULL && sbt_count(got, "site1/plant/line1/temp 21.5\n") >= 1;
        free(got);
        if (ok)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("site1/plant/line1/temp 21.5 did not arrive upstream");
        sbt_poll_pause(50);
    }
    sbt_wait_queue_int(c, "to-hq:uplink", "depth", 0, 10000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_outage_loses_nothing, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_failover_to_second_upstream, sbt_setup,
                                        bridge_teardown),
        cmocka_unit_test_setup_teardown(test_bad_credentials_retried, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_import_survives_kill, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_no_loops, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_tls_upstream, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_bad_upstream, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_export, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_resent_with_its_id, sbt_setup,
                                        bridge_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_cut_links_exactly_once, sbt_setup,
                                        bridge_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_import, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_qos2_import_keys_per_bridge, sbt_setup,
                                        bridge_teardown),
        cmocka_unit_test_setup_teardown(test_rate_paces_backlog, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_paused_reading_is_not_silence, sbt_setup,
                                        bridge_teardown),
        cmocka_unit_test_setup_teardown(test_nats_cluster_failover, sbt_setup, bridge_teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, bridge_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
