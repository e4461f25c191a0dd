/*
 * `switchboard check-config` (and `run`) on the golden bad configs of
 * tests/data/config: exit code 1, exactly the lines of the matching
 * .expected file (FILE:LINE:COL: key: message) and a count line; on every
 * example config (config/examples): exit code 0 and an OK line.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The names in dir that start with prefix and end with suffix, sorted,
 * NULL-terminated (free with free_names). */
static char **list_files(const char *dir, const char *prefix, const char *suffix)
{
    uv_fs_t req;
    uv_dirent_t ent;
    char **names = NULL;
    size_t n = 0;
    int rc = uv_fs_scandir(NULL, &req, dir, 0, NULL);
    if (rc < 0)
        fail_msg("cannot list %s: %s", dir, uv_strerror(rc));
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        size_t len = strlen(ent.name), sl = strlen(suffix);
        if (strncmp(ent.name, prefix, strlen(prefix)) != 0 || len < sl ||
            strcmp(ent.name + len - sl, suffix) != 0)
            continue;
        names = realloc(names, (n + 2) * sizeof(*names));
        assert_non_null(names);
        names[n++] = sbt_strdup(ent.name);
        names[n] = NULL;
    }
    uv_fs_req_cleanup(&req);
    /* scandir order is the file system's: sort for stable output */
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) < 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    return names;
}

static void free_names(char **names)
{
    for (size_t i = 0; names != NULL && names[i] != NULL; i++)
        free(names[i]);
    free(names);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s != '\0'; s++)
        n += *s == '\n';
    return n;
}

/* Checks every line is "NAME:LINE:COL: ..." with positive numbers. */
static void check_positions(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *s = text; *s != '\0';) {
        const char *end = strchr(s, '\n');
        int line = 0, col = 0;
        char colon = 0;
        assert_non_null(end);
        if (strncmp(s, name, nl) != 0 || s[nl] != ':' ||
            sscanf(s + nl + 1, "%d:%d%c", &line, &col, &colon) != 3 || colon != ':' || line < 1 ||
            col < 1)
            fail_msg("not a FILE:LINE:COL line: %.*s", (int)(end - s), s);
        s = end + 1;
    }
}

static void test_golden_bad_configs(void **state)
{
    sbt_broker *b = *state;
    char dir[SBT_PATH_MAX], path[SBT_PATH_MAX + 300];
    char **names;
    int checked = 0;

    sbt_path(dir, sizeof(dir), sbt_test_data(), "config");
    names = list_files(dir, "bad-", ".yaml");
    assert_non_null(names);
    for (size_t i = 0; names[i] != NULL; i++) {
        char *argv[] = {(char *)sbt_switchboard(), "check-config", names[i], NULL};
        char *out, *err, *expected, *want, stem[256];
        size_t len = strlen(names[i]), want_n;
        int lines;
        snprintf(stem, sizeof(stem), "%.*s", (int)(len - 5), names[i]);
        snprintf(path, sizeof(path), "%s/%s.expected", dir, stem);
        expected = sbt_read_file(path, NULL);
        if (expected == NULL)
            fail_msg("%s has no %s", names[i], path);
        /* Run from the data dir so FILE is the bare name, as in .expected. */
        assert_int_equal(sbt_run(argv, dir, 10000, &out, &err), 1);
        assert_string_equal(out, "");
        lines = count_lines(expected);
        assert_true(lines >= 1);
        want_n = strlen(expected) + len + 32; /* an expected file may be long */
        want = malloc(want_n);
        assert_non_null(want);
        snprintf(want, want_n, "%s%s: %d error%s\n", expected, names[i], lines,
                 lines == 1 ? "" : "s");
        if (strcmp(err, want) != 0)
            fail_msg("check-config %s printed:\n%s\nwant:\n%s", names[i], err, want);
        check_positions(expected, names[i]);
        free(want);
        free(out);
        free(err);
        free(expected);
        checked++;
    }
    free_names(names);
    assert_true(checked >= 1);
    b->passed = 1;
}

/* A destination that can only receive is refused by check-config and run,
 * naming the route's position. */
static void test_receive_only_destination(void **state)
{
    sbt_broker *b = *state;
    char dir[SBT_PATH_MAX];
    char *check[] = {(char *)sbt_switchboard(), "check-config", "receive-only-destination.yaml",
                     NULL};
    char *run[] = {(char *)sbt_switchboard(), "run", "--config", "receive-only-destination.yaml",
                   NULL};
    char *out, *err;

    sbt_path(dir, sizeof(dir), sbt_test_data(), "integration");
    assert_int_equal(sbt_run(check, dir, 10000, &out, &err), 1);
    /* found in the config pass, at the destination named (the broker
     * found it at start, at the route) */
    assert_non_null(
        strstr(err, "receive-only-destination.yaml:9:9: routes[0].to: adapter listener"));
    assert_non_null(strstr(err, "cannot be a destination"));
    free(out);
    free(err);
    assert_int_equal(sbt_run(run, dir, 10000, &out, &err), 1);
    assert_non_null(strstr(err, "cannot be a destination"));
    free(out);
    free(err);
    b->passed = 1;
}

/* `run` refuses a bad config with the same report and starts nothing. */
static void test_run_refuses_bad_config(void **state)
{
    sbt_broker *b = *state;
    char dir[SBT_PATH_MAX], path[SBT_PATH_MAX];
    char *argv[] = {(char *)sbt_switchboard(), "run", "--config", "bad-values.yaml", NULL};
    char *out, *err, *expected;

    sbt_path(dir, sizeof(dir), sbt_test_data(), "config");
    sbt_path(path, sizeof(path), dir, "bad-values.expected");
    expected = sbt_read_file(path, NULL);
    assert_non_null(expected);
    assert_int_equal(sbt_run(argv, dir, 10000, &out, &err), 1);
    /* Each error line is there (possibly behind a log prefix). */
    for (char *line = expected, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        if (strstr(err, line) == NULL)
            fail_msg("run printed:\n%s\nwithout the line:\n%s", err, line);
    }
    free(out);
    free(err);
    free(expected);

    /* A missing file is named, with the reason and without a position
     * (there is none) or a key (there is none either). */
    {
        char *argv2[] = {(char *)sbt_switchboard(), "check-config", "no-such-file.yaml", NULL};
        char *argv3[] = {(char *)sbt_switchboard(), "run", "--config", "no-such-file.yaml", NULL};
        char *const *argvs[] = {argv2, argv3};
        for (size_t i = 0; i < 2; i++) {
            assert_int_equal(sbt_run(argvs[i], dir, 10000, &out, &err), 1);
            if (strstr(err, "no-such-file.yaml: cannot open: No such file or directory") == NULL ||
                strstr(err, "(null)") != NULL || strstr(err, ":0:0") != NULL)
                fail_msg("%s printed:\n%s", argvs[i][1], err);
            free(out);
            free(err);
        }
    }
    b->passed = 1;
}

/* `run` with log.file in a directory that does not exist yet creates the
 * directory (as it creates data_dir) and logs there. */
static void test_run_creates_log_directory(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX];
    char *log;

    sbt_broker_init(b, "logdir", 1);
    sbt_broker_config(b, "broker:\n"
                         "  data_dir: '{data}'\n"
                         "  admin: { endpoint: 'off' }\n"
                         "  log: { file: '{dir}/logs/broker/switchboard.log' }\n"
                         "adapters:\n"
                         "  - name: clients\n"
                         "    type: tcp\n"
                         "    listen: 127.0.0.1:{port0}\n"
                         "    protocol: jsonl\n");
    sbt_broker_start(b);
    sbt_path(path, sizeof(path), b->dir, "logs/broker/switchboard.log");
    log = sbt_read_file(path, NULL);
    if (log == NULL || strstr(log, "ready") == NULL)
        fail_msg("%s: %s", path, log != NULL ? log : "missing");
    free(log);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_examples_are_valid(void **state)
{
    sbt_broker *b = *state;
    char dir[SBT_PATH_MAX], want[SBT_PATH_MAX + 64];
    char **names;
    int checked = 0;

    /* SB_TEST_DATA is <source>/tests/data. */
    snprintf(dir, sizeof(dir), "%s/../../config/examples", sbt_test_data());
    names = list_files(dir, "", ".yaml");
    assert_non_null(names);
    for (size_t i = 0; names[i] != NULL; i++) {
        char *argv[] = {(char *)sbt_switchboard(), "check-config", names[i], NULL};
        char *out, *err;
        int rc = sbt_run(argv, dir, 10000, &out, &err);
        if (rc != 0)
            fail_msg("check-config %s exited %d:\n%s", names[i], rc, err);
        snprintf(want, sizeof(want), "%s: OK (", names[i]);
        assert_memory_equal(out, want, strlen(want));
        assert_string_equal(err, "");
        free(out);
        free(err);
        checked++;
    }
    free_names(names);
    assert_true(checked >= 2);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_golden_bad_configs, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_run_refuses_bad_config, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_receive_only_destination, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_run_creates_log_directory, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_examples_are_valid, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("check_config", tests, NULL, NULL);
}
