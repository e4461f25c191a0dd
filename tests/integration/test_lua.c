/*
 * Lua route scripts with a real broker (README "Transforms", "Lua
 * scripts"), their files written beside the config as an administrator
 * would:
 *  - a script splits one meter reading into three messages: a jsonl
 *    consumer gets all three, and the stored message is acknowledged only
 *    once all three were (a nack of one delivers the three again);
 *  - a script that fails dead-letters that message with its file and line
 *    as the reason; the others go through;
 *  - a script that loops forever runs out of its instruction budget: the
 *    message is dead-lettered and the broker keeps serving, the same
 *    script included;
 *  - a changed script is taken by a reload (POSIX: SIGHUP);
 *  - check-config names a broken script's own file and line, and `sbctl
 *    route test` runs scripts (each message a split makes, an error);
 *  - config/examples/lua-scripts.yaml as shipped, its script beside it:
 *    a meter's line in, a JSON message per phase out.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(SIGHUP) && !defined(_WIN32)
#define HAVE_SIGHUP 1
#endif

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - name: split\n"
                             "    from: meters/+\n"
                             "    transform:\n"
                             "      - lua: split.lua\n"
                             "      - header_set: { meter: '{1}' }\n"
                             "  - name: checked\n"
                             "    from: checked/#\n"
                             "    retry: { max_attempts: 3, backoff: 10ms }\n"
                             "    transform: { lua: checked.lua }\n"
                             "  - name: spin\n"
                             "    from: spin/#\n"
                             "    transform: { lua: { script: spin.lua, budget: 200000 } }\n";

/* One reading "a;b;c" becomes a message per value, on TOPIC/1, /2, ... */
static const char split_lua[] = "-- a meter sends its three phases in one line\n"
                                "function transform(msg)\n"
                                "  local out, i = {}, 0\n"
                                "  for v in msg.payload:gmatch('[^;]+') do\n"
                                "    i = i + 1\n"
                                "    out[i] = { topic = msg.topic .. '/' .. i, payload = v }\n"
                                "  end\n"
                                "  return out\n"
                                "end\n";

static const char checked_lua[] = "function transform(msg)\n"
                                  "  local n = tonumber(msg.payload)\n"
                                  "  if n == nil then\n"
                                  "    error('not a number: ' .. msg.payload)\n"
                                  "  end\n"
                                  "  return string.format('%.1f', n)\n"
                                  "end\n";

static const char spin_lua[] = "function transform(msg)\n"
                               "  if msg.payload == 'spin' then\n"
                               "    while true do end\n"
                               "  end\n"
                               "  return msg\n"
                               "end\n";

static void write_script(sbt_broker *b, const char *name, const char *text)
{
    char path[SBT_PATH_MAX];
    sbt_path(path, sizeof path, b->dir, name);
    sbt_write_file(path, text, strlen(text));
}

static sbt_conn *start(sbt_broker *b, const char *name)
{
    sbt_broker_init(b, name, 1);
    write_script(b, "split.lua", split_lua);
    write_script(b, "checked.lua", checked_lua);
    write_script(b, "spin.lua", spin_lua);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* The next delivery: its topic and payload checked, its msg_id returned. */
static int64_t expect_msg(sbt_conn *c, const char *topic, const char *payload, int attempt)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    int64_t id;
    if (strcmp(sbt_str(m, "topic"), topic) != 0 || strcmp(sbt_str(m, "payload"), payload) != 0)
        fail_msg("got %s %s, want %s %s", sbt_str(m, "topic"), sbt_str(m, "payload"), topic,
                 payload);
    assert_int_equal(sbt_int(m, "attempt"), attempt);
    id = sbt_int(m, "msg_id");
    json_decref(m);
    return id;
}

static void split_into_three(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "lua-split"), *sub = sbt_connect(b->port[0]);
    int64_t id, ids[3];

    sbt_sub(sub, "split", NULL, 10);
    id = sbt_pub(c, "meters/m7", "230.1;229.8;231.0", 1);
    ids[0] = expect_msg(sub, "meters/m7/1", "230.1", 1);
    ids[1] = expect_msg(sub, "meters/m7/2", "229.8", 1);
    ids[2] = expect_msg(sub, "meters/m7/3", "231.0", 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ids[i], id); /* each is a delivery of the stored message */

    /* Two acknowledged: the message stays until the third is. */
    sbt_ack(sub, "split", id);
    sbt_ack(sub, "split", id);
    sbt_wait_queue_int(c, "split", "inflight", 1, 5000);
    assert_int_equal(sbt_queue_int(c, "split", "depth"), 1);
    assert_int_equal(sbt_queue_int(c, "split", "acked"), 0);
    sbt_ack(sub, "split", id);
    sbt_wait_queue_int(c, "split", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "split", "acked"), 1);

    /* A nack of one part: the message is delivered again, all of it, after
     * the parts handed out with it are answered. */
    id = sbt_pub(c, "meters/m8", "1;2;3", 1);
    expect_msg(sub, "meters/m8/1", "1", 1);
    expect_msg(sub, "meters/m8/2", "2", 1);
    expect_msg(sub, "meters/m8/3", "3", 1);
    sbt_ack(sub, "split", id);
    sbt_nack(sub, "split", id, "the second phase is out of range");
    /* (the third, still out, no longer counts: the ack of its redelivery
     * answers it too) */
    expect_msg(sub, "meters/m8/1", "1", 2);
    expect_msg(sub, "meters/m8/2", "2", 2);
    expect_msg(sub, "meters/m8/3", "3", 2);
    assert_int_equal(sbt_queue_int(c, "split", "depth"), 1);
    for (int i = 0; i < 3; i++)
        sbt_ack(sub, "split", id);
    sbt_wait_queue_int(c, "split", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "split", "acked"), 2);

    /* The steps after the script ran on each: the meter header. */
    id = sbt_pub(c, "meters/m9", "5", 1);
    {
        json_t *m = sbt_next_msg(sub, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "topic"), "meters/m9/1");
        assert_string_equal(sbt_str(json_object_get(m, "headers"), "meter"), "m9");
        json_decref(m);
    }
    sbt_ack(sub, "split", id);
    /* Nothing to split: acknowledged at once, counted as filtered. */
    sbt_pub(c, "meters/m9", ";;", 1);
    sbt_wait_queue_int(c, "split", "filtered", 1, 5000);
    sbt_wait_queue_int(c, "split", "depth", 0, 5000);
    sbt_close(sub);
    sbt_close(c);
    b->passed = 1;
}

/* The dead letters of sub: exactly `count`, the first one's reason
 * containing want. */
static void expect_dead(sbt_conn *c, const char *sub, int count, const char *topic,
                        const char *want)
{
    json_t *r, *items, *d;
    sbt_wait_queue_int(c, sub, "dead", count, 10000);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", sub);
    items = json_object_get(r, "items");
    assert_int_equal(json_array_size(items), count);
    d = json_array_get(items, 0);
    assert_string_equal(sbt_str(d, "topic"), topic);
    if (strstr(sbt_str(d, "reason"), want) == NULL)
        fail_msg("the reason is \"%s\", want \"%s\"", sbt_str(d, "reason"), want);
    json_decref(r);
}

static void script_error_dead_letters(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "lua-error"), *sub = sbt_connect(b->port[0]);
    int64_t id;

    sbt_sub(sub, "checked", NULL, 10);
    sbt_pub(c, "checked/a", "twenty", 1);
    id = sbt_pub(c, "checked/a", "20.25", 1);
    /* the failing one is dead-lettered at once (a retry would fail alike),
     * as published, with the script's file and line */
    expect_dead(c, "checked", 1, "checked/a", "checked.lua:4: not a number: twenty");
    {
        json_t *r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "checked");
        json_t *d = json_array_get(json_object_get(r, "items"), 0);
        assert_string_equal(sbt_str(d, "payload"), "twenty");
        assert_memory_equal(sbt_str(d, "reason"), "transform: step 1 (lua): ", 25);
        assert_int_equal(sbt_int(d, "attempts"), 0);
        json_decref(r);
    }
    expect_msg(sub, "checked/a", "20.2", 1);
    sbt_ack(sub, "checked", id);
    sbt_wait_queue_int(c, "checked", "depth", 0, 5000);
    sbt_close(sub);
    sbt_close(c);
    b->passed = 1;
}

static void endless_loop_hits_the_budget(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "lua-budget"), *sub = sbt_connect(b->port[0]);
    int64_t id;

    sbt_sub(sub, "spin", NULL, 10);
    for (int i = 0; i < 3; i++)
        sbt_pub(c, "spin/x", "spin", 1);
    expect_dead(c, "spin", 3, "spin/x", "spin.lua:3: instruction budget of 200000 exceeded");
    /* The broker kept serving, the same script too. */
    id = sbt_pub(c, "spin/x", "fine", 1);
    expect_msg(sub, "spin/x", "fine", 1);
    sbt_ack(sub, "spin", id);
    sbt_wait_queue_int(c, "spin", "depth", 0, 5000);
    sbt_close(sub);
    sbt_close(c);
    b->passed = 1;
}

static void reload_takes_a_changed_script(void **state)
{
#ifdef HAVE_SIGHUP
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "lua-reload"), *sub = sbt_connect(b->port[0]);
    char line[SBT_PATH_MAX + 64];
    int64_t id;

    sbt_sub(sub, "checked", NULL, 10);
    id = sbt_pub(c, "checked/r", "1.25", 1);
    expect_msg(sub, "checked/r", "1.2", 1);
    sbt_ack(sub, "checked", id);

    /* A broken script: the reload is refused, the running one stays. */
    write_script(b, "checked.lua", "function transform(msg)\n  return msg +\nend\n");
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    sbt_broker_wait_log(b, "checked.lua:3: unexpected symbol near 'end'", 1, 10000);
    sbt_broker_wait_log(b, "reload rejected", 1, 10000);
    id = sbt_pub(c, "checked/r", "2.25", 1);
    expect_msg(sub, "checked/r", "2.2", 1);
    sbt_ack(sub, "checked", id);

    /* A fixed one is taken. */
    write_script(b, "checked.lua", "function transform(msg)\n  return 'v2 ' .. msg.payload\nend\n");
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    snprintf(line, sizeof line, "configuration reloaded from %s", b->config_path);
    sbt_broker_wait_log(b, line, 1, 10000);
    id = sbt_pub(c, "checked/r", "3.25", 1);
    expect_msg(sub, "checked/r", "v2 3.25", 1);
    sbt_ack(sub, "checked", id);
    sbt_close(sub);
    sbt_close(c);
    b->passed = 1;
#else
    (void)state;
    skip(); /* no SIGHUP to send; the Windows service reloads on PARAMCHANGE */
#endif
}

static void check_config_names_the_script_line(void **state)
{
    sbt_broker *b = *state;
    char *argv[] = {(char *)sbt_switchboard(), "check-config", NULL, NULL};
    char *out = NULL, *err = NULL;
    int rc;

    sbt_broker_init(b, "lua-check", 1);
    write_script(b, "split.lua", split_lua);
    write_script(b, "checked.lua", "function transform(msg)\n  local x = = 1\nend\n");
    write_script(b, "spin.lua", spin_lua);
    sbt_broker_config(b, config);
    argv[2] = b->config_path;
    rc = sbt_run(argv, NULL, 10000, &out, &err);
    if (rc == 0 || strstr(err, "routes[1].transform.lua: ") == NULL ||
        strstr(err, "checked.lua:2: unexpected symbol near '='") == NULL)
        fail_msg("check-config exited %d:\n%s%s", rc, out, err);
    free(out);
    free(err);
    b->passed = 1;
}

/* config/examples/lua-scripts.yaml and meter-phases.lua as shipped (ports
 * and data dir made this run's): a raw producer's reading, three JSON
 * messages to a subscriber of plant/meters/#, a bad line dead-lettered. */
static void example_as_shipped(void **state)
{
    sbt_broker *b = *state;
    char *text = sbt_example("meter-phases.lua");
    sbt_conn *c, *dash;
    sbt_tcp *meter;

    sbt_broker_init(b, "lua-example", 3);
    write_script(b, "meter-phases.lua", text);
    free(text);
    text = sbt_example("lua-scripts.yaml");
    sbt_example_replace(&text, "lua-scripts.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&text, "lua-scripts.yaml", "127.0.0.1:7878", "127.0.0.1:{port0}");
    sbt_example_replace(&text, "lua-scripts.yaml", "127.0.0.1:1883", "127.0.0.1:{port1}");
    sbt_example_replace(&text, "lua-scripts.yaml", "127.0.0.1:7000", "127.0.0.1:{port2}");
    sbt_broker_config(b, text);
    free(text);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    dash = sbt_connect(b->port[0]);
    sbt_sub(dash, "dashboard", "plant/meters/#", 10);

    meter = sbt_tcp_connect(b->port[2], 5000);
    assert_non_null(meter);
    assert_int_equal(sbt_tcp_write(meter, "m7;230.1;229.8;231\r\n", 20), 0);
    assert_int_equal(sbt_tcp_write(meter, "m7;230.1;low;231\n", 18), 0);
    sbt_tcp_close(meter);
    for (int phase = 1; phase <= 3; phase++) {
        static const char *const volts[] = {"230.1", "229.8", "231.0"};
        json_t *m = sbt_next_msg(dash, SBT_REPLY_MS);
        char topic[64], want[64];
        snprintf(topic, sizeof topic, "plant/meters/m7/L%d", phase);
        snprintf(want, sizeof want, "{\"volts\":%s,\"ts\":", volts[phase - 1]);
        assert_string_equal(sbt_str(m, "topic"), topic);
        if (strncmp(sbt_str(m, "payload"), want, strlen(want)) != 0)
            fail_msg("%s: %s, want %s...", topic, sbt_str(m, "payload"), want);
        assert_string_equal(sbt_str(json_object_get(m, "headers"), "content-type"),
                            "application/json");
        sbt_ack(dash, "dashboard", sbt_int(m, "msg_id"));
        json_decref(m);
    }
    expect_dead(c, "meters:$republish", 1, "meters/in",
                "meter-phases.lua:22: phase L2 is not a number: low");
    sbt_wait_queue_int(c, "meters:$republish", "depth", 0, 5000);
    sbt_close(dash);
    sbt_close(c);
    b->passed = 1;
}

/* sbctl route test: a script's messages, each, and its error. */
static void route_test_runs_scripts(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, "lua-route-test");
    const char *sbctl = getenv("SB_SBCTL");
    char ep[64], *out = NULL, *err = NULL;
    int rc;

    if (sbctl == NULL || *sbctl == '\0')
        fail_msg("SB_SBCTL is not set (ctest sets it)");
    snprintf(ep, sizeof ep, "tcp:127.0.0.1:%d", b->port[0]);
    {
        char *argv[] = {(char *)sbctl, "-e",        ep,          "route", "test", "split",
                        "--topic",     "meters/m1", "--payload", "4;5",   NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc != 0 || strstr(out, "split: delivered\n"
                                   "  message 1:\n"
                                   "    topic: meters/m1/1\n"
                                   "    header meter: m1\n"
                                   "    payload: 4\n"
                                   "  message 2:\n"
                                   "    topic: meters/m1/2\n") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    {
        char *argv[] = {(char *)sbctl, "-e",        ep,          "route", "test", "checked",
                        "--topic",     "checked/x", "--payload", "many",  NULL};
        rc = sbt_run(argv, NULL, 10000, &out, &err);
        if (rc != 1 ||
            strstr(out, "checked: dead-letter\n  reason: transform: step 1 (lua): ") == NULL ||
            strstr(out, "checked.lua:4: not a number: many\n") == NULL)
            fail_msg("sbctl exited %d:\n%s%s", rc, out, err);
        free(out);
        free(err);
    }
    assert_int_equal(sbt_queue_int(c, "split", "published"), 0);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(split_into_three, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(script_error_dead_letters, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(endless_loop_hits_the_budget, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(reload_takes_a_changed_script, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(check_config_names_the_script_line, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(route_test_runs_scripts, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(example_as_shipped, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
