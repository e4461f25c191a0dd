/*
 * The session agent (docs/agent.md) as its own process, connected to a
 * broker (`switchboard run` with `desktop: agent`): the broker starts it,
 * or the test does. Desktop adapters run only on Windows desktops, so the
 * adapters in the agent here are exec adapters (anonymous pipes, a real
 * mechanism), which `broker.agent.types: [exec]` puts there; the DDE
 * tests cover desktop types themselves. The same tests run on Linux
 * (the endpoint is a Unix socket) and under Wine (a named pipe).
 *
 * Shown: deliveries to a sink in the agent are acknowledged back and
 * publishes from it are acknowledged to their producer after the commit
 * (the producer's puback crosses the endpoint); the agent's log lines
 * reach the broker's log; killing the agent is noticed, its deliveries
 * return to their queue, every publish its producer saw acknowledged is
 * stored, and the broker restarts it; an agent started by hand connects,
 * a second one is refused and the broker's stop stops it; the endpoint
 * takes hello first and only what an agent may do; a reload that changes
 * the agent's adapters restarts it (one that moves them into the broker
 * waits for a restart); under `desktop: auto` (the default of
 * `run`) the same adapters run in the broker.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <unistd.h>
#endif

#define AGENT_MS 30000

static const char base[] =
    "broker:\n"
    "  data_dir: '{data}'\n"
    "  admin: { endpoint: 'off' }\n"
    "  desktop: {v1}\n"
    "  agent: { endpoint: '{v0}', types: [exec], start: {v2},\n"
    "           restart_backoff: {v3} }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:{port0}\n"
    "    protocol: jsonl\n"
    "  - name: sink\n"
    "    type: exec\n"
    "    command: ['{helper}', {v4}]\n"
    "    restart: never\n"
    "  - name: src\n"
    "    type: exec\n"
    "    protocol: jsonl\n"
    "    command: ['{helper}', 'pubs', '{dir}/src.out', '{v5}', 'agent/in']\n"
    "    restart: never\n"
    "routes:\n"
    "  - name: to-sink\n"
    "    from: out/#\n"
    "    to: sink\n"
    "  - name: keep\n"
    "    from: agent/#\n";


/* The sink's arguments: `sink FILE` (or `gate GATE FILE` when gate is
 * set), FILE and GATE in the test's directory. */
static void set_sink(sbt_broker *b, const char *file, const char *gate)
{
    char args[3 * SBT_PATH_MAX + 32], path[SBT_PATH_MAX], gate_path[SBT_PATH_MAX];
    sbt_path(path, sizeof(path), b->dir, file);
    if (gate != NULL) {
        sbt_path(gate_path, sizeof(gate_path), b->dir, gate);
        snprintf(args, sizeof(args), "'gate', '%s', '%s'", gate_path, path);
    } else {
        snprintf(args, sizeof(args), "'sink', '%s'", path);
    }
    sbt_broker_set(b, 4, args);
}

/* Starts a broker on `base`: desktop (v1), start agents (v2), restart
 * backoff (v3), the sink (v4, see set_sink), how many messages the
 * producer in the agent sends (v5). */
static void start_with(sbt_broker *b, const char *name, const char *desktop,
                       const char *start_agents, const char *backoff, int pubs, const char *gate)
{
    char endpoint[SBT_PATH_MAX + 32], n[16];
    sbt_broker_init(b, name, 1);
#ifdef _WIN32
    /* tests run in parallel in one Wine prefix: a pipe name of its own */
    static int count;
    snprintf(endpoint, sizeof(endpoint), "sbt-agent-%lu-%d-{session}",
             (unsigned long)GetCurrentProcessId(), ++count);
#else
    snprintf(endpoint, sizeof(endpoint), "%s/agent-{session}.sock", b->data_dir);
#endif
    snprintf(n, sizeof(n), "%d", pubs);
    sbt_broker_set(b, 0, endpoint);
    sbt_broker_set(b, 1, desktop);
    sbt_broker_set(b, 2, start_agents);
    sbt_broker_set(b, 3, backoff);
    set_sink(b, "sink.out", gate);
    sbt_broker_set(b, 5, n);
    sbt_broker_config(b, base);
    sbt_broker_start(b);
}

static void start(sbt_broker *b, const char *name, const char *desktop, const char *start_agents,
                  const char *backoff, int pubs)
{
    start_with(b, name, desktop, start_agents, backoff, pubs, NULL);
}

/* Waits until the producer in the agent (`pubs`) has all its answers:
 * then it has exited, and stopping does not cut its conversation. */
static void wait_producer(sbt_broker *b, int pubs)
{
    char path[SBT_PATH_MAX];
    sbt_path(path, sizeof(path), b->dir, "src.out");
    sbt_wait_file_text(path, "\"op\":\"puback\"", pubs, AGENT_MS);
}

/* stats.broker (new reference). */
static json_t *broker_stats(sbt_conn *c)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats"), *o;
    sbt_expect_op(r, "stats");
    o = json_incref(json_object_get(r, "broker"));
    json_decref(r);
    assert_non_null(o);
    return o;
}

/* stats.broker.agents[0] (new reference), or NULL when there is none. */
static json_t *agent_stats(sbt_conn *c)
{
    json_t *br = broker_stats(c), *a = json_array_get(json_object_get(br, "agents"), 0);
    json_incref(a);
    json_decref(br);
    return a;
}

/* Waits until the agent is connected (or not) with `starts` starts so far
 * (0: any); returns its stats. */
static json_t *wait_agent(sbt_conn *c, int connected, int starts)
{
    int64_t deadline = sbt_now_ms() + AGENT_MS;
    sbt_waiting_for("the agent: connected %d, starts %d", connected, starts);
    for (;;) {
        json_t *a = agent_stats(c);
        if (a != NULL && json_is_true(json_object_get(a, "connected")) == connected &&
            (starts == 0 || sbt_int(a, "starts") == starts))
            return a;
        if (sbt_now_ms() > deadline) {
            char *text = a != NULL ? json_dumps(a, 0) : NULL;
            fail_msg("the agent did not get to connected=%d starts=%d: %s", connected, starts,
                     text != NULL ? text : "(no agent)");
        }
        json_decref(a);
        sbt_poll_pause(20);
    }
}

/* Lines of a file (0 if it does not exist). */
static int file_lines(const char *path)
{
    char *text = sbt_read_file(path, NULL);
    int n = text != NULL ? sbt_count(text, "\n") : 0;
    free(text);
    return n;
}

/* Kills process `pid` (SIGKILL; TerminateProcess on Windows). */
static void kill_pid(int64_t pid)
{
    assert_true(pid > 0);
    assert_int_equal(uv_kill((int)pid, SIGKILL), 0);
}

/* ---- both directions through the agent ---- */

static void test_agent_carries_both_ways(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], want[32], *text, *log;
    json_t *a, *br, *m;
    sbt_conn *c;

    start(b, "agent-both", "agent", "true", "200ms", 20);
    c = sbt_connect(b->port[0]);
    a = wait_agent(c, 1, 1);
    assert_true(sbt_int(a, "pid") > 0);
    json_decref(a);
    /* the exec adapters run in the agent, not here */
    br = broker_stats(c);
    assert_int_equal(json_array_size(json_object_get(br, "adapters")), 1);
    json_decref(br);

    /* to the sink in the agent: written there, acknowledged back */
    for (int i = 1; i <= 20; i++) {
        snprintf(want, sizeof(want), "m-%d", i);
        sbt_pub(c, "out/x", want, 1);
    }
    sbt_path(path, sizeof(path), b->dir, "sink.out");
    sbt_wait_file_text(path, "\n", 20, AGENT_MS);
    text = sbt_read_file(path, NULL);
    for (int i = 1; i <= 20; i++) {
        snprintf(want, sizeof(want), "m-%d\n", i);
        assert_non_null(strstr(text, want));
    }
    free(text);
    sbt_wait_queue_int(c, "to-sink:sink", "acked", 20, AGENT_MS);
    sbt_wait_queue_int(c, "to-sink:sink", "depth", 0, AGENT_MS);

    /* from the producer in the agent: each puback came after the commit */
    sbt_path(path, sizeof(path), b->dir, "src.out");
    sbt_wait_file_text(path, "\"op\":\"puback\"", 20, AGENT_MS);
    assert_int_equal(sbt_queue_int(c, "keep", "depth"), 20);
    sbt_sub(c, "keep", NULL, 100);
    for (int i = 1; i <= 20; i++) {
        const char *source;
        m = sbt_next_msg(c, SBT_REPLY_MS);
        snprintf(want, sizeof(want), "p-%d", i);
        assert_string_equal(sbt_str(m, "payload"), want);
        /* the adapter in the agent and its peer, as in the broker */
        source = sbt_str(json_object_get(m, "headers"), "source");
        assert_true(strncmp(source, "src ", 4) == 0);
        sbt_ack(c, "keep", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    sbt_wait_queue_int(c, "keep", "depth", 0, AGENT_MS);

    /* the agent's log reaches the broker's */
    log = sbt_broker_log(b);
    assert_non_null(strstr(log, "[sink] (agent of session "));
    assert_non_null(strstr(log, "] the agent of session "));
    free(log);
    sbt_close(c);

    /* the broker's stop stops the agent first, which exits 0 */
    sbt_broker_stop(b);
    sbt_broker_wait_log(b, "exited with code 0", 1, 1000);
    b->passed = 1;
}

/* ---- killing the agent ---- */

/* The payloads of the pubacks in a producer's reply file: p-<id>. */
static int acked_ids(const char *path, char *acked, int n)
{
    char *text = sbt_read_file(path, NULL), *p = text;
    int count = 0;
    memset(acked, 0, (size_t)n + 1);
    while (p != NULL && (p = strstr(p, "\"op\":\"puback\"")) != NULL) {
        char *eol = strchr(p, '\n'), *id = strstr(p, "\"id\":");
        if (id != NULL && (eol == NULL || id < eol)) {
            int i = atoi(id + 5);
            if (i >= 1 && i <= n && !acked[i]) {
                acked[i] = 1;
                count++;
            }
        }
        p = eol;
    }
    free(text);
    return count;
}

static void test_agent_killed(void **state)
{
    enum { SINK_MSGS = 300, PUBS = 1000 };
    sbt_broker *b = *state;
    char sink_path[SBT_PATH_MAX], src_path[SBT_PATH_MAX], payload[1100], acked[PUBS + 1];
    char seen[PUBS + 1];
    int n_acked, lines_before, sink_acked, first;
    int64_t total;
    json_t *a, *m;
    sbt_conn *c;
    char *text;

    /* a long restart delay leaves time to look at the broker in between;
     * the sink holds its deliveries back until the gate opens */
    start_with(b, "agent-killed", "agent", "true", "3s", PUBS, "gate");
    c = sbt_connect(b->port[0]);
    json_decref(wait_agent(c, 1, 1));
    sbt_path(sink_path, sizeof(sink_path), b->dir, "sink.out");
    sbt_path(src_path, sizeof(src_path), b->dir, "src.out");

    /* 300 deliveries of ~1 KiB for a child that does not read yet: once
     * its pipe is full, the agent's window is full of deliveries not yet
     * written */
    for (int i = 1; i <= SINK_MSGS; i++) {
        snprintf(payload, sizeof(payload), "m-%d-%0*d", i, 1000, 0);
        sbt_send(c, "{s:s, s:i, s:s, s:s}", "op", "pub", "id", i, "topic", "out/x", "payload",
                 payload);
    }
    for (int i = 1; i <= SINK_MSGS; i++) {
        json_t *r = sbt_read(c, SBT_REPLY_MS);
        assert_non_null(r);
        sbt_expect_op(r, "puback");
        json_decref(r);
    }
    /* kill it while the producer is in the middle of its publishes */
    sbt_wait_file_text(src_path, "\"op\":\"puback\"", 20, AGENT_MS);

    a = agent_stats(c);
    assert_non_null(a);
    sbt_broker_mark_log(b);
    kill_pid(sbt_int(a, "pid"));
    json_decref(a);

    /* the broker notices: the connection drops, the process ended */
    json_decref(wait_agent(c, 0, 1));
    sbt_broker_wait_log(b, "disconnected; its deliveries return to their queues", 1, AGENT_MS);
    sbt_broker_wait_log(b, "exited with code", 1, AGENT_MS);
    sbt_broker_wait_log(b, "restarting it in 3000 ms", 1, AGENT_MS);
    /* before the restart: nothing is in flight, what was is queued again;
     * deliveries are acknowledged in order, so m-1 .. m-<acked> are the
     * ones the sink took */
    assert_int_equal(sbt_queue_int(c, "to-sink:sink", "inflight"), 0);
    assert_true(sbt_queue_int(c, "to-sink:sink", "depth") > 0);
    sink_acked = (int)sbt_queue_int(c, "to-sink:sink", "acked");
    assert_true(sink_acked < SINK_MSGS);
    {
        char gate[SBT_PATH_MAX];
        sbt_path(gate, sizeof(gate), b->dir, "gate");
        sbt_write_file(gate, "open\n", 5);
    }
    /* every publish its producer saw acknowledged is stored */
    n_acked = acked_ids(src_path, acked, PUBS);
    assert_true(n_acked >= 20);
    assert_true(n_acked < PUBS); /* the kill came in the middle */
    lines_before = file_lines(src_path);

    /* restarted: the sink gets the rest, the producer starts over */
    json_decref(wait_agent(c, 1, 2));
    sbt_wait_queue_int(c, "to-sink:sink", "depth", 0, AGENT_MS);
    /* every delivery not acknowledged when the agent died reached the sink
     * after the restart. What an exec sink acknowledged was written to its
     * child's stdin: on POSIX the orphaned first child still reads it all;
     * on Windows a pipe whose writer died may drop what was not read yet
     * (the exec adapter's documented meaning of "delivered"). */
#ifdef _WIN32
    first = sink_acked + 1;
#else
    first = 1;
#endif
    for (int64_t deadline = sbt_now_ms() + AGENT_MS;;) {
        int missing = 0;
        text = sbt_read_file(sink_path, NULL);
        for (int i = first; i <= SINK_MSGS && !missing; i++) {
            snprintf(payload, sizeof(payload), "m-%d-", i);
            if (text == NULL || strstr(text, payload) == NULL)
                missing = i;
        }
        free(text);
        if (!missing)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("m-%d never reached the sink", missing);
        sbt_poll_pause(20);
    }
    sbt_wait_file_text(src_path, "\n", lines_before + PUBS, AGENT_MS);
    memset(seen, 0, sizeof(seen));
    total = sbt_queue_int(c, "keep", "depth");
    assert_true(total >= PUBS);
    sbt_sub(c, "keep", NULL, 1000);
    for (int64_t k = 0; k < total; k++) {
        int i;
        m = sbt_next_msg(c, SBT_REPLY_MS);
        i = atoi(sbt_str(m, "payload") + 2);
        assert_true(i >= 1 && i <= PUBS);
        seen[i] = 1;
        sbt_ack(c, "keep", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    for (int i = 1; i <= PUBS; i++)
        if (acked[i] && !seen[i])
            fail_msg("p-%d was acknowledged to its producer but is not stored", i);
    for (int i = 1; i <= PUBS; i++)
        assert_true(seen[i]);
    a = agent_stats(c);
    assert_int_equal(sbt_int(a, "restarts"), 1);
    json_decref(a);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- an agent started by hand ---- */

static void agent_argv(char **argv, const char *endpoint)
{
    argv[0] = (char *)sbt_switchboard();
    argv[1] = "agent";
    argv[2] = "--endpoint";
    argv[3] = (char *)endpoint;
    argv[4] = NULL;
}

static void test_agent_by_hand(void **state)
{
    sbt_broker *b = *state;
    char *argv[5], endpoint[SBT_PATH_MAX], out[SBT_PATH_MAX], out2[SBT_PATH_MAX];
    sbt_proc first = {0}, second = {0};
    json_t *a;
    sbt_conn *c;

    start(b, "agent-hand", "agent", "false", "1s", 1);
    c = sbt_connect(b->port[0]);
    a = agent_stats(c);
    assert_non_null(a);
    assert_false(json_is_true(json_object_get(a, "connected")));
    assert_int_equal(sbt_int(a, "starts"), 0);
    snprintf(endpoint, sizeof(endpoint), "%s", sbt_str(a, "endpoint"));
    json_decref(a);

    agent_argv(argv, endpoint);
    sbt_path(out, sizeof(out), b->dir, "agent1.log");
    assert_int_equal(sbt_spawn(&first, argv, NULL, out), 0);
    json_decref(wait_agent(c, 1, 0));
    /* a second agent for the same session is turned away */
    sbt_path(out2, sizeof(out2), b->dir, "agent2.log");
    assert_int_equal(sbt_spawn(&second, argv, NULL, out2), 0);
    assert_true(sbt_proc_wait(&second, AGENT_MS));
    assert_int_equal(second.exit_status, 4);
    sbt_broker_wait_log(b, "has an agent already", 1, 1000);
    sbt_proc_release(&second);
    sbt_pub(c, "out/by-hand", "hello", 1);
    sbt_wait_queue_int(c, "to-sink:sink", "acked", 1, AGENT_MS);
    wait_producer(b, 1);
    sbt_close(c);

    /* the broker's stop asks it to stop: exit code 0 */
    sbt_broker_stop(b);
    assert_true(sbt_proc_wait(&first, AGENT_MS));
    assert_int_equal(first.exit_status, 0);
    sbt_proc_release(&first);
    b->passed = 1;
}

/* ---- the endpoint's rules ---- */

static sb_client *connect_endpoint(const char *endpoint)
{
    char name[SBT_PATH_MAX + 8];
    sb_client *cl;
    sb_error err;
#ifdef _WIN32
    snprintf(name, sizeof(name), "pipe:%s", endpoint);
#else
    snprintf(name, sizeof(name), "unix:%s", endpoint);
#endif
    if (sb_client_connect(&cl, name, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    return cl;
}

/* Sends the object json_pack builds and returns the reply (new reference). */
static json_t *call(sb_client *cl, const char *fmt, ...)
{
    va_list ap;
    json_t *req, *reply = NULL;
    sb_error err;
    va_start(ap, fmt);
    req = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    assert_non_null(req);
    assert_int_equal(sb_client_write_json(cl, req, &err), 0);
    json_decref(req);
    if (sb_client_read_json(cl, &reply, SBT_REPLY_MS, &err) != 0)
        fail_msg("no reply: %s", err.msg);
    return reply;
}

static void expect_error(json_t *r, const char *code)
{
    if (strcmp(sbt_str(r, "op"), "error") != 0 || strcmp(sbt_str(r, "code"), code) != 0) {
        char *text = json_dumps(r, 0);
        fail_msg("expected %s, got %s", code, text);
    }
    json_decref(r);
}

static void test_agent_endpoint_rules(void **state)
{
    sbt_broker *b = *state;
    char endpoint[SBT_PATH_MAX], mine[64];
    int64_t session;
    sb_client *cl, *cl2;
    json_t *a, *r;
    sbt_conn *c;

    start(b, "agent-rules", "agent", "false", "1s", 1);
    c = sbt_connect(b->port[0]);
    a = agent_stats(c);
    snprintf(endpoint, sizeof(endpoint), "%s", sbt_str(a, "endpoint"));
    session = sbt_int(a, "session");
    json_decref(a);
    snprintf(mine, sizeof(mine), "agent/%lld/mine", (long long)session);

    cl = connect_endpoint(endpoint);
    /* hello first */
    expect_error(
        call(cl, "{s:s, s:i, s:s, s:s}", "op", "pub", "id", 1, "topic", "agent/x", "payload", "x"),
        "SB_EPROTO");
    expect_error(call(cl, "{s:s, s:i, s:I, s:s}", "op", "hello", "id", 2, "session",
                      (json_int_t)(session + 7), "version", SB_VERSION_STRING),
                 "SB_EACCES");
    expect_error(call(cl, "{s:s, s:i, s:I, s:s}", "op", "hello", "id", 3, "session",
                      (json_int_t)session, "version", "0.0.0-other"),
                 "SB_EVERSION");
    r = call(cl, "{s:s, s:i, s:I, s:i, s:s}", "op", "hello", "id", 4, "session",
             (json_int_t)session, "pid", 4242, "version", SB_VERSION_STRING);
    sbt_expect_op(r, "welcome");
    /* the YAML of the adapters it hosts, the queues its sinks consume */
    assert_non_null(strstr(sbt_str(r, "config"), "name: sink"));
    assert_non_null(strstr(sbt_str(r, "config"), "name: src"));
    assert_null(strstr(sbt_str(r, "config"), "clients"));
    assert_null(strstr(sbt_str(r, "config"), "to-sink"));
    assert_int_equal(json_array_size(json_object_get(r, "bindings")), 1);
    assert_string_equal(sbt_str(json_array_get(json_object_get(r, "bindings"), 0), "sub"),
                        "to-sink:sink");
    json_decref(r);

    /* one agent per session */
    cl2 = connect_endpoint(endpoint);
    expect_error(call(cl2, "{s:s, s:i, s:I, s:s}", "op", "hello", "id", 1, "session",
                      (json_int_t)session, "version", SB_VERSION_STRING),
                 "SB_EEXIST");
    sb_client_free(cl2);

    /* not an admin: no statistics, no dead letters, no other queues */
    expect_error(call(cl, "{s:s, s:i}", "op", "stats", "id", 5), "SB_EACCES");
    expect_error(call(cl, "{s:s, s:i}", "op", "dlq.list", "id", 6), "SB_EACCES");
    expect_error(call(cl, "{s:s, s:i, s:s}", "op", "sub", "id", 7, "sub", "keep"), "SB_EACCES");
    expect_error(
        call(cl, "{s:s, s:i, s:s, s:b}", "op", "unsub", "id", 8, "sub", "keep", "delete", 1),
        "SB_EACCES");
    /* a subscription of its own, transient: gone when the agent goes */
    r = call(cl, "{s:s, s:i, s:s, s:s, s:b}", "op", "sub", "id", 9, "sub", mine, "filter",
             "agent/#", "transient", 1);
    sbt_expect_op(r, "subscribed");
    json_decref(r);
    assert_int_equal(sbt_queue_int(c, mine, "consumers"), 1);
    /* a publish names the adapter it comes from; its own subscription
     * gets it too (acknowledged, so that the ping below is answered next) */
    r = call(cl, "{s:s, s:i, s:s, s:s, s:s}", "op", "pub", "id", 10, "topic", "agent/own",
             "payload", "x", "source", "dde-in pid 42");
    for (int seen = 0; seen < 2; seen++) {
        if (strcmp(sbt_str(r, "op"), "msg") == 0) {
            json_t *ack = json_pack("{s:s, s:s, s:I}", "op", "ack", "sub", mine, "msg_id",
                                    (json_int_t)sbt_int(r, "msg_id"));
            assert_int_equal(sb_client_write_json(cl, ack, NULL), 0);
            json_decref(ack);
        } else {
            sbt_expect_op(r, "puback");
        }
        json_decref(r);
        r = NULL;
        if (seen == 0) {
            sb_error err;
            if (sb_client_read_json(cl, &r, SBT_REPLY_MS, &err) != 0)
                fail_msg("no second line: %s", err.msg);
        }
    }
    /* its log lines go to the broker's log */
    r = json_pack("{s:s, s:s, s:s, s:s}", "op", "log", "level", "warn", "who", "dde-in", "message",
                  "a line from the agent");
    assert_int_equal(sb_client_write_json(cl, r, NULL), 0);
    json_decref(r);
    r = call(cl, "{s:s, s:i}", "op", "ping", "id", 11);
    sbt_expect_op(r, "pong");
    json_decref(r);
    sbt_broker_wait_log(b, "warn [dde-in] (agent of session", 1, AGENT_MS);
    sbt_broker_wait_log(b, "a line from the agent", 1, AGENT_MS);
    sbt_sub(c, "keep", NULL, 10);
    r = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(json_object_get(r, "headers"), "source"), "dde-in pid 42");
    json_decref(r);

    sb_client_free(cl);
    json_decref(wait_agent(c, 0, 0));
    {
        json_t *q = sbt_queue_stats(c, mine);
        if (q != NULL)
            fail_msg("the agent's transient subscription outlived it");
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a reload that changes the agent's adapters ---- */

static void test_agent_reload(void **state)
{
#ifdef _WIN32
    (void)state;
    skip(); /* a foreground broker reloads on SIGHUP: POSIX only */
#else
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX];
    sbt_conn *c;

    start(b, "agent-reload", "agent", "true", "1s", 1);
    c = sbt_connect(b->port[0]);
    json_decref(wait_agent(c, 1, 1));
    wait_producer(b, 1);
    sbt_pub(c, "out/1", "before", 1);
    sbt_path(path, sizeof(path), b->dir, "sink.out");
    sbt_wait_file_text(path, "before\n", 1, AGENT_MS);
    /* the sink writes elsewhere now: the agent restarts with it */
    set_sink(b, "sink2.out", NULL);
    sbt_broker_mark_log(b);
    sbt_broker_write_config(b, base);
    sbt_broker_signal(b, SIGHUP);
    sbt_broker_wait_log(b, "adapters changed: restarting the agent", 1, AGENT_MS);
    json_decref(wait_agent(c, 1, 2));
    sbt_pub(c, "out/2", "after", 1);
    sbt_path(path, sizeof(path), b->dir, "sink2.out");
    sbt_wait_file_text(path, "after\n", 1, AGENT_MS);
    /* where desktop adapters run changes only with a restart */
    sbt_broker_set(b, 1, "in-process");
    sbt_broker_mark_log(b);
    sbt_broker_write_config(b, base);
    sbt_broker_signal(b, SIGHUP);
    sbt_broker_wait_log(b, "take effect after a restart", 1, AGENT_MS);
    sbt_broker_wait_log(b, "configuration reloaded", 1, AGENT_MS);
    {
        json_t *br = broker_stats(c), *a = json_array_get(json_object_get(br, "agents"), 0);
        assert_int_equal(json_array_size(json_object_get(br, "adapters")), 1);
        assert_true(json_is_true(json_object_get(a, "connected")));
        assert_int_equal(sbt_int(a, "starts"), 2);
        json_decref(br);
    }
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
#endif
}

/* ---- desktop: auto under `run`: in the broker ---- */

static void test_desktop_in_process(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX];
    json_t *br;
    sbt_conn *c;

    start(b, "agent-in-process", "auto", "true", "1s", 3);
    c = sbt_connect(b->port[0]);
    br = broker_stats(c);
    assert_null(json_object_get(br, "agents"));
    assert_int_equal(json_array_size(json_object_get(br, "adapters")), 3);
    json_decref(br);
    sbt_pub(c, "out/1", "here", 1);
    sbt_path(path, sizeof(path), b->dir, "sink.out");
    sbt_wait_file_text(path, "here\n", 1, AGENT_MS);
    wait_producer(b, 3);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_agent_carries_both_ways, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_agent_killed, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_agent_by_hand, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_agent_endpoint_rules, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_agent_reload, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_desktop_in_process, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("agent", tests, NULL, NULL);
}
