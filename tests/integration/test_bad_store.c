/*
 * A broker whose <data_dir>/switchboard.db is not a usable Switchboard
 * database must refuse to start (exit code 1) with a message naming the
 * path, and leave the file exactly as it was: a text file, SQLite databases
 * of another application, one from a newer schema, a truncated one, a store
 * the broker wrote itself then damaged, and the golden corrupt databases of
 * tests/data/storage. The golden valid.db, by contrast, is loaded: its
 * queues, messages, retained value and dead letter come back.
 */
#include "harness.h"

#include <sqlite3.h>
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
                             "routes:\n"
                             "  - name: audit\n"
                             "    from: orders/#\n";

static void db_path(sbt_broker *b, char *out, size_t n)
{
    sbt_path(out, n, b->data_dir, "switchboard.db");
}

static void make_data_dir(sbt_broker *b)
{
    uv_fs_t req;
    int rc = uv_fs_mkdir(NULL, &req, b->data_dir, 0755, NULL);
    uv_fs_req_cleanup(&req);
    assert_true(rc == 0 || rc == UV_EEXIST);
}

static void remove_file(const char *path)
{
    uv_fs_t req;
    uv_fs_unlink(NULL, &req, path, NULL);
    uv_fs_req_cleanup(&req);
}

/* Starts the broker on the file now in place and expects a refusal that
 * names the path and contains `why`; the file must be unchanged. */
static void expect_refused(sbt_broker *b, const char *why)
{
    char path[SBT_PATH_MAX], *before, *after, *log;
    size_t nb, na;
    int rc;

    db_path(b, path, sizeof(path));
    before = sbt_read_file(path, &nb);
    assert_non_null(before);
    sbt_broker_mark_log(b);
    rc = sbt_broker_try_start(b);
    if (rc != 1) {
        sbt_broker_print_log(b);
        fail_msg("broker with a bad %s: exit code %d, want 1 (refused)", path, rc);
    }
    log = sbt_broker_log_since(b);
    if (strstr(log, "cannot start: ") == NULL || strstr(log, path) == NULL ||
        strstr(log, why) == NULL)
        fail_msg("the log does not name %s with \"%s\":\n%s", path, why, log);
    free(log);
    after = sbt_read_file(path, &na);
    assert_non_null(after);
    assert_int_equal(na, nb);
    assert_memory_equal(after, before, nb);
    free(before);
    free(after);
}

/* Creates a SQLite database at path with sql run in it. */
static void make_sqlite(const char *path, const char *sql)
{
    sqlite3 *db;
    char *msg = NULL;
    remove_file(path);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_foreign_files(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX];
    static const char text[] = "This is a text file, not a database.\n";

    sbt_broker_init(b, "bad-store-foreign", 1);
    sbt_broker_config(b, config);
    make_data_dir(b);
    db_path(b, path, sizeof(path));

    sbt_write_file(path, text, sizeof(text) - 1);
    expect_refused(b, "is not a Switchboard database (not a SQLite file)");

    make_sqlite(path, "CREATE TABLE contacts (name TEXT, phone TEXT);"
                      "INSERT INTO contacts VALUES ('ada', '555');");
    expect_refused(b, "is not a Switchboard database (a SQLite database of another application)");

    make_sqlite(path, "PRAGMA application_id = 305419896; CREATE TABLE t (x);");
    expect_refused(b, "is not a Switchboard database (application_id 0x12345678)");

    /* A Switchboard database from the future. */
    make_sqlite(path, "PRAGMA application_id = 1396854616; PRAGMA user_version = 99;"
                      "CREATE TABLE meta (key TEXT PRIMARY KEY, value);");
    expect_refused(b, "has schema version 99, newer than this broker's");
    b->passed = 1;
}

/* Runs a broker to write a real store with some messages, then stops it. */
static void make_store(sbt_broker *b)
{
    sbt_conn *c;
    char payload[200];
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    memset(payload, 'p', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    for (int i = 0; i < 200; i++)
        sbt_pub(c, "orders/x", payload, 1);
    sbt_close(c);
    sbt_broker_stop(b);
}

static void test_damaged_store(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], wal[SBT_PATH_MAX + 8];
    char *db;
    size_t n;
    uint32_t x = 2463534242u;

    sbt_broker_init(b, "bad-store-damaged", 1);
    sbt_broker_config(b, config);
    make_store(b);
    db_path(b, path, sizeof(path));
    snprintf(wal, sizeof(wal), "%s-wal", path);
    remove_file(wal); /* checkpointed at the orderly stop; make sure */
    db = sbt_read_file(path, &n);
    assert_non_null(db);
    assert_true(n >= 4 * 4096);

    /* Cut in half: the pages the schema points to are gone. */
    sbt_write_file(path, db, n / 2);
    expect_refused(b, "is corrupt");

    /* Every page after the first overwritten with garbage. */
    for (size_t i = 4096; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        db[i] = (char)x;
    }
    sbt_write_file(path, db, n);
    expect_refused(b, "is corrupt");
    free(db);
    b->passed = 1;
}

/* Above 64 MiB the full check at start gives way to a bounded one (the
 * schema and the queue definitions, not the messages): a damaged index of
 * the queue definitions, which no loader reads, is still refused. */
static void test_large_store_bounded_check(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], wal[SBT_PATH_MAX + 8], page[4096], *log;
    sbt_conn *c;
    sqlite3 *h;
    sqlite3_stmt *st;
    int64_t root = 0;
    uv_buf_t buf;
    uv_fs_t req;
    int fd;

    sbt_broker_init(b, "bad-store-large", 1);
    sbt_broker_config(b, config);
    make_store(b);
    db_path(b, path, sizeof(path));
    /* 70 MiB of dead letters: past the full check's limit */
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
                                  " WHERE i < 70) INSERT INTO dlq(queue_name, payload)"
                                  " SELECT 'audit', zeroblob(1048576) FROM c",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h,
                                        "SELECT rootpage FROM sqlite_master"
                                        " WHERE name = 'sqlite_autoindex_queues_1'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    root = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(h), SQLITE_OK);
    assert_true(root > 1);

    /* Still a good store: it starts, and says how it was checked. */
    sbt_broker_mark_log(b);
    sbt_broker_start(b);
    log = sbt_broker_log_since(b);
    if (strstr(log, "checked its header, schema and queue definitions") == NULL)
        fail_msg("no bounded check in the log:\n%s", log);
    free(log);
    c = sbt_connect(b->port[0]);
    assert_int_equal(sbt_queue_int(c, "audit", "depth"), 200);
    sbt_close(c);
    sbt_broker_stop(b);

    /* The queue names' index page overwritten: refused. (The file is too
     * big for expect_refused's byte-for-byte comparison under ASan.) */
    snprintf(wal, sizeof(wal), "%s-wal", path);
    remove_file(wal);
    memset(page, 0x5a, sizeof(page));
    buf = uv_buf_init(page, sizeof(page));
    fd = uv_fs_open(NULL, &req, path, UV_FS_O_WRONLY, 0, NULL);
    uv_fs_req_cleanup(&req);
    assert_true(fd >= 0);
    assert_int_equal(uv_fs_write(NULL, &req, fd, &buf, 1, (root - 1) * 4096, NULL), 4096);
    uv_fs_req_cleanup(&req);
    uv_fs_close(NULL, &req, fd, NULL);
    uv_fs_req_cleanup(&req);
    sbt_broker_mark_log(b);
    assert_int_equal(sbt_broker_try_start(b), 1);
    log = sbt_broker_log_since(b);
    if (strstr(log, "cannot start: ") == NULL || strstr(log, path) == NULL ||
        strstr(log, "is corrupt") == NULL)
        fail_msg("the log does not name %s as corrupt:\n%s", path, log);
    free(log);
    b->passed = 1;
}

static void test_golden_corrupt_databases(void **state)
{
    sbt_broker *b = *state;
    static const char *const golden[] = {"corrupt_header.db", "corrupt_schema.db",
                                         "corrupt_pages.db"};
    char src[SBT_PATH_MAX], path[SBT_PATH_MAX];
    int found = 0;

    sbt_broker_init(b, "bad-store-golden", 1);
    sbt_broker_config(b, config);
    make_data_dir(b);
    db_path(b, path, sizeof(path));
    for (size_t i = 0; i < sizeof(golden) / sizeof(golden[0]); i++) {
        size_t n;
        char *data;
        snprintf(src, sizeof(src), "%s/storage/%s", sbt_test_data(), golden[i]);
        data = sbt_read_file(src, &n);
        if (data == NULL)
            continue;
        found++;
        sbt_write_file(path, data, n);
        free(data);
        expect_refused(b, "is corrupt");
    }
    if (found == 0)
        skip(); /* no golden databases in this tree */
    b->passed = 1;
}

static void test_golden_valid_database(void **state)
{
    sbt_broker *b = *state;
    char src[SBT_PATH_MAX], path[SBT_PATH_MAX];
    sbt_conn *c;
    json_t *r, *d, *m;
    size_t n;
    char *data;

    snprintf(src, sizeof(src), "%s/storage/valid.db", sbt_test_data());
    data = sbt_read_file(src, &n);
    if (data == NULL)
        skip();
    sbt_broker_init(b, "bad-store-valid", 1);
    sbt_broker_config(b, config);
    make_data_dir(b);
    db_path(b, path, sizeof(path));
    sbt_write_file(path, data, n);
    free(data);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* "audit" (now declared by the route) holds orders 2 and 3 (1 is dead);
     * "dashboard" is kept, orphaned, with all three. */
    assert_int_equal(sbt_queue_int(c, "audit", "depth"), 2);
    r = sbt_queue_stats(c, "dashboard");
    assert_non_null(r);
    assert_string_equal(sbt_str(r, "kind"), "orphaned");
    assert_int_equal(sbt_int(r, "depth"), 3);
    json_decref(r);
    r = sbt_call(c, "{s:s, s:s}", "op", "dlq.list", "sub", "audit");
    assert_int_equal(json_array_size(json_object_get(r, "items")), 1);
    d = json_array_get(json_object_get(r, "items"), 0);
    assert_string_equal(sbt_str(d, "payload"), "{\"order\":1}");
    assert_string_equal(sbt_str(d, "reason"), "max attempts");
    assert_string_equal(sbt_str(d, "source"), "orders-in");
    assert_int_equal(sbt_int(d, "attempts"), 8);
    json_decref(r);
    sbt_sub(c, "audit", NULL, 10);
    for (int i = 2; i <= 3; i++) {
        char want[32];
        m = sbt_next_msg(c, SBT_REPLY_MS);
        snprintf(want, sizeof(want), "{\"order\":%d}", i);
        assert_int_equal(sbt_int(m, "msg_id"), i);
        assert_string_equal(sbt_str(m, "topic"), "orders/new");
        assert_string_equal(sbt_str(m, "payload"), want);
        assert_string_equal(sbt_str(json_object_get(m, "headers"), "content-type"),
                            "application/json");
        sbt_ack(c, "audit", i);
        json_decref(m);
    }
    /* New ids continue after the stored ones; the retained value (order 3)
     * goes to a new subscription. */
    assert_true(sbt_pub(c, "orders/new", "{\"order\":4}", 1) > 3);
    sbt_sub(c, "late", "orders/#", 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), "audit");
    assert_string_equal(sbt_str(m, "payload"), "{\"order\":4}");
    json_decref(m);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), "late");
    assert_string_equal(sbt_str(m, "payload"), "{\"order\":3}");
    assert_string_equal(sbt_str(json_object_get(m, "headers"), "retained"), "true");
    json_decref(m);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_foreign_files, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_store, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_large_store_bounded_check, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_golden_corrupt_databases, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_golden_valid_database, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("bad_store", tests, NULL, NULL);
}
