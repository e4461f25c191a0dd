/*
 * POSIX: what the broker creates is for its own account only, whatever the
 * umask it was started with and however the data directory was made.
 *
 * - a data directory made beforehand with mode 0755 (umask 022, as `mkdir`
 *   leaves it): the store, its WAL and the log file are created 0600, and
 *   the broker warns, naming the directory and its mode;
 * - a password file readable by everyone: a warning naming it and its mode;
 * - a data directory the broker creates itself is 0700, and nothing is said.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  log: { level: info, file: '{v0}' }\n"
                             "{v1}"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - name: q\n"
                             "    from: modes/#\n";

static unsigned file_mode(const char *dir, const char *name)
{
    char path[SBT_PATH_MAX];
    struct stat st;
    sbt_path(path, sizeof(path), dir, name);
    if (stat(path, &st) != 0)
        fail_msg("%s was not created", path);
    return (unsigned)(st.st_mode & 07777);
}

/* The broker's own umask is what counts: start it from a permissive one. */
static void start_with_umask(sbt_broker *b, mode_t mask)
{
    mode_t old = umask(mask);
    sbt_broker_start(b);
    umask(old);
}

static void test_shared_data_dir(void **state)
{
    sbt_broker *b = *state;
    char log[SBT_PATH_MAX], passwd[SBT_PATH_MAX], auth[SBT_PATH_MAX * 2], want[SBT_PATH_MAX * 2];
    sbt_conn *c;

    sbt_broker_init(b, "modes-shared", 1);
    assert_int_equal(mkdir(b->data_dir, 0755), 0);
    assert_int_equal(chmod(b->data_dir, 0755), 0); /* whatever the test's umask */
    sbt_path(log, sizeof(log), b->data_dir, "switchboard.log");
    sbt_path(passwd, sizeof(passwd), b->dir, "passwd");
    {
        char src[SBT_PATH_MAX], *text;
        size_t len;
        snprintf(src, sizeof(src), "%s/auth/mosquitto.passwd", sbt_test_data());
        text = sbt_read_file(src, &len);
        assert_non_null(text);
        sbt_write_file(passwd, text, len);
        free(text);
    }
    assert_int_equal(chmod(passwd, 0644), 0);
    snprintf(auth, sizeof(auth), "  auth: { password_file: '%s' }\n", passwd);
    sbt_broker_set(b, 0, log);
    sbt_broker_set(b, 1, auth);
    sbt_broker_config(b, config);
    start_with_umask(b, 022);

    c = sbt_connect(b->port[0]);
    sbt_pub(c, "modes/a", "secret payload", 1);
    sbt_close(c);

    assert_int_equal(file_mode(b->data_dir, "switchboard.db"), 0600);
    assert_int_equal(file_mode(b->data_dir, "switchboard.db-wal"), 0600);
    /* (no -shm file: the store's exclusive lock keeps the WAL index in memory) */
    assert_int_equal(file_mode(b->data_dir, "switchboard.log"), 0600);
    /* The directory is the administrator's: named, not changed. */
    assert_int_equal(file_mode(b->dir, "data"), 0755);
    snprintf(want, sizeof(want), "the data directory %s is accessible to other users (mode 0755)",
             b->data_dir);
    sbt_broker_wait_log(b, want, 1, 5000);
    snprintf(want, sizeof(want), "the password file %s is accessible to other users (mode 0644)",
             passwd);
    sbt_broker_wait_log(b, want, 1, 5000);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_private_data_dir(void **state)
{
    sbt_broker *b = *state;
    char log[SBT_PATH_MAX], *text;

    sbt_broker_init(b, "modes-private", 1);
    sbt_path(log, sizeof(log), b->dir, "switchboard.log");
    sbt_broker_set(b, 0, log);
    sbt_broker_set(b, 1, "");
    sbt_broker_config(b, config);
    start_with_umask(b, 0);
    assert_int_equal(file_mode(b->dir, "data"), 0700);
    assert_int_equal(file_mode(b->data_dir, "switchboard.db"), 0600);
    assert_int_equal(file_mode(b->dir, "switchboard.log"), 0600);
    sbt_broker_stop(b);
    text = sbt_broker_log(b);
    assert_int_equal(sbt_count(text, "accessible to other users"), 0);
    free(text);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shared_data_dir, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_private_data_dir, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("file_modes", tests, NULL, NULL);
}
