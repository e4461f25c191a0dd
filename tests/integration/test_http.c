/*
 * The HTTP listener (broker.http), as Prometheus, a browser and a hostile
 * client meet it, over real sockets:
 *  - /metrics after a producer filled a queue: the route's and the queue's
 *    depth, the store's commit histogram, and promtool's check of the whole
 *    text (Linux: `promtool check metrics`, from Debian's prometheus);
 *  - the status page and its JSON (paged), and on Linux the page rendered
 *    by headless Chromium, whose DOM must show the queue the test filled;
 *    a screenshot is kept under the build dir (the path is printed);
 *  - hostile requests: path tricks, encoded slashes, methods that would
 *    change something, oversized lines and headers, garbage, too many
 *    connections, a client that never finishes its request. Each gets
 *    400/404/405/413/414/431 or is closed; the broker keeps serving and,
 *    under ASan, stops with exit code 0 (no leak);
 *  - an address in use: the broker refuses to start and says why;
 *  - a reload that moves the listener to another port (POSIX: SIGHUP).
 * The same program runs under Wine against switchboard.exe (then promtool
 * and Chromium, Linux programs, are not used).
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config/examples/status-page.yaml runs as shipped, with this run's ports
 * and data dir (test_metrics, test_status_page). */
static void example_config(sbt_broker *b)
{
    char *text = sbt_example("status-page.yaml");
    sbt_example_replace(&text, "status-page.yaml", "  data_dir: ./data\n",
                        "  data_dir: '{data}'\n  admin: { endpoint: 'off' }\n");
    sbt_example_replace(&text, "status-page.yaml", "listen: 127.0.0.1:7878",
                        "listen: 127.0.0.1:{port0}");
    sbt_example_replace(&text, "status-page.yaml", "listen: 127.0.0.1:9180",
                        "listen: 127.0.0.1:{port1}");
    sbt_broker_config(b, text);
    free(text);
}

/* Small limits, for the hostile requests. */
static const char hostile_config[] = "broker:\n"
                                     "  data_dir: '{data}'\n"
                                     "  admin: { endpoint: 'off' }\n"
                                     "  http:\n"
                                     "    listen: 127.0.0.1:{port1}\n"
                                     "    max_connections: 4\n"
                                     "    timeout: 1s\n"
                                     "adapters:\n"
                                     "  - name: clients\n"
                                     "    type: tcp\n"
                                     "    listen: 127.0.0.1:{port0}\n"
                                     "    protocol: jsonl\n"
                                     "routes:\n"
                                     "  - name: orders\n"
                                     "    from: orders/#\n";

typedef struct http_reply {
    int status; /* 0: closed without a status line */
    char *headers;
    char *body;
    size_t body_len;
} http_reply;

static void reply_free(http_reply *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Sends request (raw bytes) on a new connection and reads one response:
 * the status line, the headers, Content-Length bytes of body. */
static void http_raw(int port, const char *request, size_t len, http_reply *out)
{
    sbt_tcp *t = sbt_tcp_connect(port, 5000);
    char line[8192];
    size_t hlen = 0, body_len = 0;
    int n;

    memset(out, 0, sizeof *out);
    assert_non_null(t);
    out->headers = calloc(1, 1);
    assert_non_null(out->headers);
    sbt_waiting_for("an HTTP response on port %d", port);
    if (sbt_tcp_write(t, request, len) != 0)
        goto done; /* closed while we wrote: no answer */
    n = sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS);
    if (n < 0)
        goto done;
    assert_true(n > 12 && strncmp(line, "HTTP/1.", 7) == 0);
    out->status = atoi(line + 9);
    while ((n = sbt_tcp_read_line(t, line, sizeof line, SBT_REPLY_MS)) > 0 && line[0] != '\r') {
        char *more = realloc(out->headers, hlen + (size_t)n + 2);
        assert_non_null(more);
        out->headers = more;
        memcpy(out->headers + hlen, line, (size_t)n);
        hlen += (size_t)n;
        out->headers[hlen++] = '\n';
        out->headers[hlen] = '\0';
        if (strncmp(line, "Content-Length:", 15) == 0)
            body_len = (size_t)strtoul(line + 15, NULL, 10);
    }
    assert_true(n >= 0);
    out->body = malloc(body_len + 1);
    assert_non_null(out->body);
    if (body_len > 0 && strstr(request, "HEAD ") != request)
        assert_int_equal(sbt_tcp_read_exact(t, out->body, body_len, SBT_REPLY_MS), (int)body_len);
    else
        body_len = 0;
    out->body[body_len] = '\0';
    out->body_len = body_len;
done:
    sbt_tcp_close(t);
}

static void http_get(int port, const char *path, http_reply *out)
{
    char req[1024];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             path);
    http_raw(port, req, strlen(req), out);
}

/* Publishes n messages to orders/<i> (acknowledged once committed). */
static void fill(sbt_broker *b, int n)
{
    sbt_conn *c = sbt_connect(b->port[0]);
    for (int i = 0; i < n; i++) {
        char topic[32];
        snprintf(topic, sizeof topic, "orders/%d", i);
        sbt_pub(c, topic, "{\"qty\":1}", 1);
    }
    sbt_close(c);
}

static int run_shell(const char *cmd, char **out)
{
#ifdef _WIN32
    char *const argv[] = {"cmd", "/c", (char *)cmd, NULL};
#else
    char *const argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
#endif
    return sbt_run(argv, NULL, 60000, out, NULL);
}

/* A Linux program the test needs: its path from the environment (set by
 * CMake), or NULL under Wine/Windows; missing on Linux fails the test. */
static const char *linux_tool(const char *var, const char *package)
{
    const char *p = getenv(var);
#ifdef _WIN32
    (void)package;
    return p;
#else
    if (p == NULL || p[0] == '\0')
        fail_msg("%s is not set: install %s (packaging/deps-debian.sh) and run cmake again", var,
                 package);
    return p;
#endif
}

/* promtool's check of a /metrics reply (Linux only). */
static void promtool_check(sbt_broker *b, const http_reply *r)
{
    const char *promtool = linux_tool("SB_PROMTOOL", "prometheus (promtool)");
    if (promtool != NULL) {
        char path[SBT_PATH_MAX], cmd[3 * SBT_PATH_MAX];
        char *out = NULL;
        int rc;
        sbt_path(path, sizeof path, b->dir, "metrics.txt");
        sbt_write_file(path, r->body, r->body_len);
        snprintf(cmd, sizeof cmd, "'%s' check metrics < '%s' 2>&1", promtool, path);
        rc = run_shell(cmd, &out);
        if (rc != 0)
            fail_msg("promtool check metrics failed (exit %d):\n%s", rc, out);
        free(out);
    }
}

static void test_metrics(void **state)
{
    sbt_broker *b = *state;
    http_reply r;

    sbt_broker_init(b, "http-metrics", 2);
    example_config(b);
    sbt_broker_start(b);
    fill(b, 7);

    http_get(b->port[1], "/metrics", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "Content-Type: text/plain; version=0.0.4"));
    if (strstr(r.body, "switchboard_route_depth{kind=\"route\",route=\"orders\"} 7\n") == NULL ||
        strstr(r.body, "switchboard_queue_depth{kind=\"route\",queue=\"orders\",route=\"orders\"} "
                       "7\n") == NULL ||
        strstr(r.body, "switchboard_route_messages_in_total{kind=\"route\",route=\"orders\"} "
                       "7\n") == NULL ||
        strstr(r.body, "switchboard_adapter_connections{adapter=\"clients\"}") == NULL ||
        strstr(r.body, "switchboard_store_commit_seconds_bucket{le=\"+Inf\"}") == NULL ||
        strstr(r.body, "process_resident_memory_bytes") == NULL)
        fail_msg("/metrics lacks the filled queue or a family:\n%s", r.body);
    /* no password file: no login counts */
    assert_null(strstr(r.body, "switchboard_logins_total"));
    /* every fsync'ed publish was a commit: the histogram counted them */
    {
        const char *c = strstr(r.body, "switchboard_store_commit_seconds_count ");
        assert_non_null(c);
        assert_true(atoll(c + strlen("switchboard_store_commit_seconds_count ")) >= 7);
    }

    promtool_check(b, &r);
    reply_free(&r);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* With a password file, /metrics counts the password checks (stats'
 * broker.logins). No client logs in here: both counts are 0. */
static void test_login_metrics(void **state)
{
    sbt_broker *b = *state;
    http_reply r;
    char path[SBT_PATH_MAX];
    /* "user" with password "pw", PBKDF2 (sbctl passwd --iterations 1000) */
    static const char passwd[] = "user:$7$1000$WpWO6TMul5BNraLB$zvqy/bvZPsNyqurl4UD3V+1mSs14lH"
                                 "BDEq+r0t6nTL78sLTU1Ee7UCPN84UFr4sz3sT339tqmpMCLM+CEENZIQ==\n";

    sbt_broker_init(b, "http-logins", 2);
    sbt_path(path, sizeof path, b->dir, "passwd");
    sbt_write_file(path, passwd, sizeof passwd - 1);
    sbt_broker_config(b, "broker:\n"
                         "  data_dir: '{data}'\n"
                         "  admin: { endpoint: 'off' }\n"
                         "  auth: { password_file: '{dir}/passwd' }\n"
                         "  http: { listen: '127.0.0.1:{port1}' }\n"
                         "adapters:\n"
                         "  - { name: clients, type: tcp, listen: '127.0.0.1:{port0}', "
                         "protocol: jsonl }\n");
    sbt_broker_start(b);
    http_get(b->port[1], "/metrics", &r);
    assert_int_equal(r.status, 200);
    if (strstr(r.body, "# TYPE switchboard_logins_total counter\n") == NULL ||
        strstr(r.body, "switchboard_logins_total{check=\"hashed\"} 0\n") == NULL ||
        strstr(r.body, "switchboard_logins_total{check=\"cached\"} 0\n") == NULL)
        fail_msg("/metrics lacks the login counts:\n%s", r.body);
    promtool_check(b, &r);
    reply_free(&r);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_status_page(void **state)
{
    sbt_broker *b = *state;
    http_reply r;
    json_t *st, *items;
    json_error_t jerr;
    const char *chromium;

    sbt_broker_init(b, "http-page", 2);
    example_config(b);
    sbt_broker_start(b);
    fill(b, 7);
    {
        /* a client subscription too: a second group, a second queue */
        sbt_conn *c = sbt_connect(b->port[0]);
        sbt_sub(c, "watcher", "alerts/#", 1);
        sbt_close(c);
    }

    http_get(b->port[1], "/", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "Content-Type: text/html"));
    assert_non_null(strstr(r.body, "<title>Switchboard</title>"));
    assert_non_null(strstr(r.body, "src=\"/app.js\""));
    reply_free(&r);
    http_get(b->port[1], "/app.js", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "/api/status"));
    reply_free(&r);

    http_get(b->port[1], "/api/status", &r);
    assert_int_equal(r.status, 200);
    st = json_loads(r.body, 0, &jerr);
    if (st == NULL)
        fail_msg("/api/status is not JSON (%s):\n%s", jerr.text, r.body);
    items = json_object_get(json_object_get(st, "queues"), "items");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "queues"), "total")),
                     2);
    /* routes' queues first */
    assert_string_equal(sbt_str(json_array_get(items, 0), "name"), "orders");
    assert_int_equal(sbt_int(json_array_get(items, 0), "depth"), 7);
    assert_string_equal(sbt_str(json_array_get(items, 1), "name"), "watcher");
    assert_string_equal(sbt_str(json_array_get(json_object_get(st, "adapters"), 0), "state"),
                        "listening");
    assert_true(json_array_size(json_object_get(json_object_get(st, "history"), "samples")) >= 1);
    json_decref(st);
    reply_free(&r);
    /* paged */
    http_get(b->port[1], "/api/status?page=1&per_page=1", &r);
    assert_int_equal(r.status, 200);
    st = json_loads(r.body, 0, NULL);
    assert_non_null(st);
    items = json_object_get(json_object_get(st, "queues"), "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(sbt_str(json_array_get(items, 0), "name"), "watcher");
    json_decref(st);
    reply_free(&r);

    chromium = linux_tool("SB_CHROMIUM", "chromium");
    if (chromium != NULL) {
        char url[64], cmd[4 * SBT_PATH_MAX], shot[SBT_PATH_MAX];
        const char *artifacts = getenv("SB_HTTP_ARTIFACTS");
        char *dom = NULL;
        size_t len = 0;
        int rc;
        snprintf(url, sizeof url, "http://127.0.0.1:%d/", b->port[1]);
        /* virtual time lets the page's fetch finish before the DOM is dumped */
        snprintf(cmd, sizeof cmd,
                 "'%s' --headless --no-sandbox --disable-gpu --user-data-dir='%s/chromium' "
                 "--virtual-time-budget=5000 --dump-dom %s 2>/dev/null",
                 chromium, b->dir, url);
        rc = run_shell(cmd, &dom);
        if (rc != 0 || strstr(dom, "data-queue=\"orders\" data-depth=\"7\"") == NULL ||
            strstr(dom, "data-queue=\"watcher\"") == NULL)
            fail_msg("chromium (exit %d) did not render the queues:\n%s", rc, dom);
        free(dom);
        assert_non_null(artifacts);
        snprintf(shot, sizeof shot, "%s/status-page.png", artifacts);
        remove(shot);
        snprintf(cmd, sizeof cmd,
                 "mkdir -p '%s' && '%s' --headless --no-sandbox --disable-gpu "
                 "--user-data-dir='%s/chromium' --virtual-time-budget=5000 "
                 "--window-size=1200,900 --screenshot='%s' %s >/dev/null 2>&1",
                 artifacts, chromium, b->dir, shot, url);
        rc = run_shell(cmd, NULL);
        free(sbt_read_file(shot, &len));
        if (rc != 0 || len < 1000)
            fail_msg("chromium did not write a screenshot %s (exit %d)", shot, rc);
        printf("status page screenshot: %s\n", shot);
    }
    sbt_broker_stop(b);
    b->passed = 1;
}

typedef struct hostile {
    const char *what;
    const char *request; /* NULL: made by the test (sizes) */
    int allowed[4];      /* statuses accepted (0 ends the list; -1: closed without one) */
} hostile;

static void expect_one_of(const char *what, int status, const int *allowed)
{
    for (int i = 0; i < 4 && allowed[i] != 0; i++)
        if (status == allowed[i] || (status == 0 && allowed[i] == -1))
            return;
    fail_msg("%s: got %s %d", what, status == 0 ? "a close, no status" : "status", status);
}

static char *repeat(const char *head, char c, size_t n, const char *tail)
{
    size_t hl = strlen(head), tl = strlen(tail);
    char *s = malloc(hl + n + tl + 1);
    assert_non_null(s);
    memcpy(s, head, hl);
    memset(s + hl, c, n);
    memcpy(s + hl + n, tail, tl + 1);
    return s;
}

static void test_hostile(void **state)
{
    sbt_broker *b = *state;
    static const hostile cases[] = {
        {"dot-dot", "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"encoded dots", "GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"encoded slash", "GET /api%2fstatus HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"encoded slash (upper)", "GET /api%2Fstatus HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"backslash", "GET /..\\metrics HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"double slash", "GET //metrics HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"trailing slash", "GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", {404}},
        {"unknown path", "GET /admin/stop HTTP/1.1\r\nHost: x\r\n\r\n", {404}},
        {"absolute URI", "GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404, -1}},
        {"POST", "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", {405}},
        {"DELETE", "DELETE /api/status HTTP/1.1\r\nHost: x\r\n\r\n", {405}},
        {"bad page", "GET /api/status?page=-1 HTTP/1.1\r\nHost: x\r\n\r\n", {400}},
        {"huge per_page", "GET /api/status?per_page=99999999999 HTTP/1.1\r\nHost: x\r\n\r\n",
         {400}},
        {"no Host", "GET / HTTP/1.1\r\n\r\n", {400}},
        {"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", {505, 400, -1}},
        {"not HTTP", "HELLO THERE\r\n\r\n", {400, 505, -1}},
        {"binary", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", {400, 505, -1}},
        {"bad header", "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", {400, 200, -1}},
    };
    http_reply r;
    char *big;
    sbt_tcp *held[8];
    int64_t deadline;

    sbt_broker_init(b, "http-hostile", 2);
    sbt_broker_config(b, hostile_config);
    sbt_broker_start(b);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http_raw(b->port[1], cases[i].request, strlen(cases[i].request), &r);
        expect_one_of(cases[i].what, r.status, cases[i].allowed);
        reply_free(&r);
    }
    /* a request line, then a header, longer than a connection may use */
    big = repeat("GET /", 'a', 64 * 1024, " HTTP/1.1\r\nHost: x\r\n\r\n");
    http_raw(b->port[1], big, strlen(big), &r);
    expect_one_of("long URI", r.status, (const int[]){414, 431, 400, -1});
    reply_free(&r);
    free(big);
    big = repeat("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ", 'b', 64 * 1024, "\r\n\r\n");
    http_raw(b->port[1], big, strlen(big), &r);
    expect_one_of("long header", r.status, (const int[]){431, 413, 400, -1});
    reply_free(&r);
    free(big);

    /* Too many connections: the fifth is closed at once, the four held
     * ones (never sending a whole request) after the 1 s timeout. */
    for (int i = 0; i < 4; i++) {
        held[i] = sbt_tcp_connect(b->port[1], 5000);
        assert_non_null(held[i]);
        assert_int_equal(sbt_tcp_write(held[i], "GET / HTTP/1.1\r\n", 16), 0);
    }
    held[4] = sbt_tcp_connect(b->port[1], 5000);
    if (held[4] != NULL) {
        assert_true(sbt_tcp_wait_closed(held[4], 5000));
        sbt_tcp_close(held[4]);
    }
    for (int i = 0; i < 4; i++) {
        sbt_waiting_for("the idle HTTP connection %d to be closed (timeout: 1s)", i);
        assert_true(sbt_tcp_wait_closed(held[i], 10000));
        sbt_tcp_close(held[i]);
    }

    /* still serving */
    deadline = sbt_now_ms() + SBT_REPLY_MS;
    for (;;) {
        http_get(b->port[1], "/metrics", &r);
        if (r.status == 200 || sbt_now_ms() > deadline)
            break;
        reply_free(&r);
        sbt_poll_pause(100);
    }
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "switchboard_route_depth{kind=\"route\",route=\"orders\"} 0"));
    reply_free(&r);
    /* HEAD: headers only */
    http_raw(b->port[1], "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 28, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    /* exit code 0: under ASan also no leak */
    sbt_broker_stop(b);
    b->passed = 1;
}

/* The listener's address is taken: the broker does not start, and says
 * why (and, under ASan, frees what it had opened). */
static void test_address_in_use(void **state)
{
    sbt_broker *b = *state;
    sbt_listener *taken;
    char *log;
    int rc;

    sbt_broker_init(b, "http-in-use", 2);
    taken = sbt_listen(0);
    assert_non_null(taken);
    b->port[1] = sbt_listener_port(taken);
    sbt_broker_config(b, hostile_config);
    rc = sbt_broker_try_start(b);
    sbt_listener_close(taken);
    assert_true(rc > 0);
    log = sbt_broker_log(b);
    if (strstr(log, "broker.http.listen: cannot listen on 127.0.0.1:") == NULL ||
        strstr(log, "LeakSanitizer") != NULL)
        fail_msg("exit %d; log:\n%s", rc, log);
    free(log);
    b->passed = 1;
}

#if defined(SIGHUP) && !defined(_WIN32)
/* A reload that moves the listener: the new address serves, the old one is
 * closed (POSIX: no process sends another SIGHUP on Windows). */
static void test_reload_moves_listener(void **state)
{
    sbt_broker *b = *state;
    char moved[sizeof hostile_config + 16], line[96];
    http_reply r;
    sbt_tcp *t;

    sbt_broker_init(b, "http-reload", 3);
    sbt_broker_config(b, hostile_config);
    sbt_broker_start(b);
    http_get(b->port[1], "/metrics", &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);

    snprintf(moved, sizeof moved, "%s", hostile_config);
    memcpy(strstr(moved, "{port1}"), "{port2}", 7);
    sbt_broker_write_config(b, moved);
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    snprintf(line, sizeof line, "listening on http://127.0.0.1:%d/", b->port[2]);
    sbt_broker_wait_log(b, line, 1, SBT_REPLY_MS);
    http_get(b->port[2], "/metrics", &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    t = sbt_tcp_connect(b->port[1], 2000);
    assert_null(t);
    sbt_broker_stop(b);
    b->passed = 1;
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_login_metrics, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_status_page, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_hostile, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_address_in_use, sbt_setup, sbt_teardown),
#if defined(SIGHUP) && !defined(_WIN32)
        cmocka_unit_test_setup_teardown(test_reload_moves_listener, sbt_setup, sbt_teardown),
#endif
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
