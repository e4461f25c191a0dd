/*
 * Security of pipe servers with real processes: the broker (switchboard.exe
 * run) and this program as a client, or as a squatter.
 *
 * - `security` denying this program's account ("D:P(A;;GA;;;SY)": SYSTEM
 *   only): opening the pipe fails with ERROR_ACCESS_DENIED. Wine 8 does not
 *   enforce DACLs on pipes (the open succeeds): there the test checks what it
 *   can, that the pipe carries exactly that DACL;
 * - the default DACL: SYSTEM and Administrators all, the interactive user
 *   read/write, the broker's own account all (so the user running
 *   `switchboard run` can always connect); nothing for anyone else;
 * - a bad SDDL stops the start with an error naming the key, its place in
 *   the file and the problem;
 * - squatting: a second broker on the same pipe name is refused with a clear
 *   error (and the first serves on); so is a broker whose pipe name another
 *   program created first.
 */
#include "tests/win/pipe/pipe_util.h"

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
                             "  - name: guarded\n"
                             "    type: pipe\n"
                             "    path: '{v0}'\n"
                             "    framing: message\n"
                             "    topic: sec/{adapter}\n"
                             "{v1}"
                             "routes:\n"
                             "  - name: rx\n"
                             "    from: sec/#\n";

static sbt_conn *start_broker(sbt_broker *b, const char *test, const char *name, const char *extra)
{
    sbt_broker_init(b, test, 1);
    sbt_broker_set(b, 0, name);
    sbt_broker_set(b, 1, extra);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* Starts a broker that must fail; checks its log for `want`. */
static void expect_refused(const char *test, const char *name, const char *extra, const char *want)
{
    sbt_broker b;
    int rc;
    memset(&b, 0, sizeof(b));
    sbt_broker_init(&b, test, 1);
    sbt_broker_set(&b, 0, name);
    sbt_broker_set(&b, 1, extra);
    sbt_broker_config(&b, config);
    rc = sbt_broker_try_start(&b);
    if (rc == -1) {
        sbt_broker_print_log(&b);
        fail_msg("the broker started; it should have refused");
    }
    assert_int_not_equal(rc, 0);
    sbt_broker_wait_log(&b, want, 1, 2000);
    b.passed = 1;
    sbt_broker_cleanup(&b);
}

static void test_hostile_dacl(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128];
    pt_pipe *p;
    DWORD err = 0;

    pt_name(name, sizeof(name), "locked");
    pt_path(path, sizeof(path), name);
    sbt_conn *c = start_broker(b, "pipe-locked", name, "    security: 'D:P(A;;GA;;;SY)'\n");
    p = pt_open(path, 0, 2000, &err);
    if (p == NULL) {
        assert_int_equal(err, ERROR_ACCESS_DENIED);
    } else if (pt_under_wine()) {
        pt_ace aces[8];
        int n = pt_dacl(p->h, aces, 8);
        print_message("note: Wine does not enforce pipe DACLs (the open succeeded); "
                      "checked the pipe's DACL instead\n");
        assert_int_equal(n, 1);
        assert_string_equal(aces[0].sid, "S-1-5-18");
        assert_int_equal(aces[0].mask, FILE_ALL_ACCESS);
        pt_close(p);
    } else {
        fail_msg("%s opened although its DACL grants only SYSTEM", path);
    }
    sbt_close(c);
    b->passed = 1;
}

static void test_default_dacl(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], self[200];
    sbt_conn *c;
    pt_pipe *p;
    pt_ace aces[8];
    int n, found = 0;

    pt_name(name, sizeof(name), "open");
    pt_path(path, sizeof(path), name);
    pt_own_sid(self, sizeof(self));
    c = start_broker(b, "pipe-default-dacl", name, "");
    p = pt_open_ok(path, 1);
    n = pt_dacl(p->h, aces, 8);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) {
        if (strcmp(aces[i].sid, "S-1-5-18") == 0 || strcmp(aces[i].sid, "S-1-5-32-544") == 0 ||
            strcmp(aces[i].sid, self) == 0) {
            assert_int_equal(aces[i].mask, FILE_ALL_ACCESS);
            found++;
        } else if (strcmp(aces[i].sid, "S-1-5-4") == 0) {
            assert_int_equal(aces[i].mask, FILE_GENERIC_READ | FILE_GENERIC_WRITE);
            found++;
        } else {
            fail_msg("unexpected ACE for %s", aces[i].sid);
        }
    }
    assert_int_equal(found, 4);
    /* And this account can use it. */
    pt_write_ok(p, "ok", 2);
    sbt_sub(c, "rx", NULL, 10);
    {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(m, "payload"), "ok");
        json_decref(m);
    }
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

static void test_bad_sddl(void **state)
{
    char name[64];
    (void)state;
    pt_name(name, sizeof(name), "badsddl");
    expect_refused("pipe-bad-sddl", name, "    security: 'D:P(A;;BOGUS;;;SY)'\n",
                   "switchboard.yaml:14:23: adapters[1].security: invalid security descriptor: "
                   "unknown access right \"BO\"");
}

static void test_second_broker(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], want[300];
    sbt_conn *c;
    pt_pipe *p;
    json_t *m;

    pt_name(name, sizeof(name), "dup");
    pt_path(path, sizeof(path), name);
    c = start_broker(b, "pipe-first", name, "");
    snprintf(want, sizeof(want),
             "adapter guarded: %s is already served by another Switchboard (its guard mutex "
             "exists); is another broker running?",
             path);
    expect_refused("pipe-second", name, "", want);
    /* The first one is unaffected. */
    p = pt_open_ok(path, 1);
    pt_write_ok(p, "first", 5);
    sbt_sub(c, "rx", NULL, 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "first");
    json_decref(m);
    pt_close(p);
    sbt_close(c);
    b->passed = 1;
}

static void test_foreign_squatter(void **state)
{
    char name[64], path[128], want[300];
    pt_pipe *squatter;
    (void)state;

    pt_name(name, sizeof(name), "squat");
    pt_path(path, sizeof(path), name);
    squatter = pt_server(path, 1);
    snprintf(want, sizeof(want),
             "adapter guarded: %s already exists: another program created it; refusing to "
             "share the name",
             path);
    expect_refused("pipe-squatted", name, "", want);
    pt_close(squatter);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile_dacl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_default_dacl, sbt_setup, sbt_teardown),
        cmocka_unit_test(test_bad_sddl),
        cmocka_unit_test_setup_teardown(test_second_broker, sbt_setup, sbt_teardown),
        cmocka_unit_test(test_foreign_squatter),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
