/*
 * Config: values land in the structs, defaults, every class of error with its
 * exact position and key path, durations and sizes, copy/equal/free, the
 * shipped examples, the golden bad inputs in tests/data/config, and
 * out-of-memory at every allocation.
 *
 * Set SB_UPDATE_GOLDEN=1 to rewrite the .expected files from the current
 * output (then review the diff).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "adapters/builtin.h"
#include "adapters/dde/dde_keys.h"
#include "adapters/exec/exec_keys.h"
#include "adapters/stream_keys.h"

#include <dirent.h>

#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/log.h"

/* ---- helpers ---- */

static char *data_path(const char *rel)
{
    const char *root = getenv("SB_TEST_DATA");
    size_t n;
    char *p;
    if (root == NULL)
        root = "tests/data";
    n = strlen(root) + strlen(rel) + 2;
    p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", root, rel);
    return p;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t cap = 1 << 16, n = 0, got;
    if (f == NULL)
        return NULL;
    buf = malloc(cap + 1);
    assert_non_null(buf);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

/* Drops '\r' so files checked out with CRLF compare equal. */
static void strip_cr(char *s)
{
    char *w = s;
    for (; *s != '\0'; s++)
        if (*s != '\r')
            *w++ = *s;
    *w = '\0';
}

/* What sb_config_errors_print writes, as a string (through a file in the
 * working directory: portable, unlike open_memstream). */
static char *printed(const sb_config_errors *errs)
{
    const char *tmp = "test_config.out";
    FILE *f = fopen(tmp, "wb");
    char *s;
    assert_non_null(f);
    sb_config_errors_print(errs, f);
    fclose(f);
    s = read_file(tmp, NULL);
    assert_non_null(s);
    remove(tmp);
    strip_cr(s);
    return s;
}

static int parse(sb_config **out, const char *yaml, sb_config_errors *errs)
{
    return sb_config_parse(out, "t.yaml", yaml, strlen(yaml), errs);
}

/* Parses yaml, which must fail with exactly `expected` printed. */
static void expect_errors(const char *yaml, const char *expected)
{
    sb_config_errors errs = {0};
    sb_config *cfg = (sb_config *)1;
    char *got;
    assert_int_equal(parse(&cfg, yaml, &errs), SB_ECONFIG);
    assert_null(cfg);
    got = printed(&errs);
    if (strcmp(got, expected) != 0)
        fail_msg("for:\n%s\nexpected:\n%s\ngot:\n%s", yaml, expected, got);
    free(got);
    sb_config_errors_clear(&errs);
}

/* Parses yaml, which must succeed. */
static sb_config *parse_ok(const char *yaml)
{
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    int rc = parse(&cfg, yaml, &errs);
    if (rc != 0) {
        char *got = printed(&errs);
        fail_msg("rc %d for:\n%s\n%s", rc, yaml, got);
    }
    assert_int_equal(errs.count, 0);
    assert_non_null(cfg);
    return cfg;
}

static const char full_config[] =
    "broker:\n"
    "  data_dir: /var/lib/sb\n"
    "  store: { commit_max_batch: 256, commit_max_delay_us: 750, max_db_bytes: 2GiB }\n"
    "  log: { level: debug, file: /var/log/sb.log, stderr: off }\n"
    "  admin: { endpoint: \"off\" }\n"
    "adapters:\n"
    "  - name: in\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:7000\n"
    "    protocol: raw\n"
    "    framing: length\n"
    "    topic: in/{adapter}/{peer}\n"
    "    max_message: 64KiB\n"
    "    max_connections: 100000\n"
    "    idle_timeout: 5m\n"
    "    frame_timeout: 0\n"
    "    inflight: 8\n"
    "  - name: out\n"
    "    type: tcp\n"
    "    connect: \"[::1]:7001\"\n"
    "    reconnect_backoff: 250ms\n"
    "    reconnect_max_backoff: 2m\n"
    "  - name: dgram\n"
    "    type: udp\n"
    "    listen: 0.0.0.0:0\n"
    "    anonymous: true\n"
    "  - name: sock\n"
    "    type: unix\n"
    "    path: /tmp/sb.sock\n"
    "    protocol: jsonl\n"
    "  - name: orders\n"
    "    type: pipe\n"
    "    path: orders\n"
    "    framing: message\n"
    "    security: \"D:P(A;;GA;;;SY)\"\n"
    "  - name: child\n"
    "    type: exec\n"
    "    command: [sh, -c, \"cat > /dev/null\"]\n"
    "    restart: always\n"
    "    restart_backoff: 2s\n"
    "    restart_max_backoff: 1h\n"
    "routes:\n"
    "  - name: r1\n"
    "    from: [in/#, \"+/x\"]\n"
    "    to: [child, out]\n"
    "    durability: batched\n"
    "    retry: { max_attempts: 3, backoff: 1s, max_backoff: 10s }\n"
    "    ttl: 1d\n"
    "    max_depth: 5000\n"
    "    max_bytes: 1MB\n"
    "    overflow: drop-oldest\n"
    "    retain: yes\n"
    "    dedup: { header: x-id, window: 90s }\n"
    "    lease: 45s\n"
    "  - name: queue\n"
    "    from: a\n"
    "    dedup: { header: k }\n";

/* ---- values ---- */

static void test_full_values(void **state)
{
    sb_config *cfg = parse_ok(full_config);
    const sb_adapter_config *a;
    const sb_route_config *r;
    (void)state;

    assert_string_equal(cfg->path, "t.yaml");
    assert_string_equal(cfg->broker.data_dir, "/var/lib/sb");
    assert_int_equal(cfg->broker.commit_max_batch, 256);
    assert_int_equal(cfg->broker.commit_max_delay_us, 750);
    assert_true(cfg->broker.max_db_bytes == (int64_t)2 << 30);
    assert_int_equal(cfg->broker.log_level, SB_LOG_DEBUG);
    assert_string_equal(cfg->broker.log_file, "/var/log/sb.log");
    assert_int_equal(cfg->broker.log_stderr, 0);
    assert_string_equal(cfg->broker.admin_endpoint, "off");
    assert_int_equal(cfg->adapter_count, 6);
    assert_int_equal(cfg->route_count, 2);

    a = sb_config_adapter(cfg, "in");
    assert_non_null(a);
    assert_int_equal(a->pos.line, 7);
    assert_int_equal(a->pos.col, 5);
    assert_string_equal(a->type, "tcp");
    assert_string_equal(SB_STREAM_CFG(a)->listen, "127.0.0.1:7000");
    assert_null(SB_STREAM_CFG(a)->connect);
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "raw");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "length");
    assert_string_equal(SB_STREAM_CFG(a)->topic, "in/{adapter}/{peer}");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 65536);
    assert_int_equal(SB_STREAM_CFG(a)->max_connections, 100000);
    assert_int_equal(SB_STREAM_CFG(a)->idle_timeout_ms, 300000);
    assert_int_equal(sb_stream_idle_timeout(a), 300000);
    assert_int_equal(SB_STREAM_CFG(a)->frame_timeout_ms, 0);
    assert_int_equal(a->inflight, 8);

    a = sb_config_adapter(cfg, "out");
    assert_string_equal(SB_STREAM_CFG(a)->connect, "[::1]:7001");
    assert_int_equal(SB_STREAM_CFG(a)->reconnect_backoff_ms, 250);
    assert_int_equal(SB_STREAM_CFG(a)->reconnect_max_backoff_ms, 120000);
    assert_string_equal(SB_STREAM_CFG(a)->framing, "line");

    a = sb_config_adapter(cfg, "dgram");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "datagram");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 65507);

    a = sb_config_adapter(cfg, "sock");
    assert_string_equal(SB_STREAM_CFG(a)->path, "/tmp/sb.sock");
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "jsonl");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "line");

    a = sb_config_adapter(cfg, "orders");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "message");
    assert_string_equal(SB_STREAM_CFG(a)->security, "D:P(A;;GA;;;SY)");

    a = sb_config_adapter(cfg, "child");
    assert_int_equal(SB_EXEC_CFG(a)->command_count, 3);
    assert_string_equal(SB_EXEC_CFG(a)->command[0], "sh");
    assert_string_equal(SB_EXEC_CFG(a)->command[1], "-c");
    assert_string_equal(SB_EXEC_CFG(a)->command[2], "cat > /dev/null");
    assert_int_equal(SB_EXEC_CFG(a)->restart, SB_RESTART_ALWAYS);
    assert_int_equal(SB_EXEC_CFG(a)->restart_backoff_ms, 2000);
    assert_int_equal(SB_EXEC_CFG(a)->restart_max_backoff_ms, 3600000);

    r = sb_config_route(cfg, "r1");
    assert_non_null(r);
    assert_int_equal(r->pos.line, 43);
    assert_int_equal(r->from_count, 2);
    assert_string_equal(r->from[0], "in/#");
    assert_string_equal(r->from[1], "+/x");
    assert_int_equal(r->to_count, 2);
    assert_string_equal(r->to[0], "child");
    assert_string_equal(r->to[1], "out");
    assert_int_equal(r->durability, SB_DURABILITY_BATCHED);
    assert_int_equal(r->max_attempts, 3);
    assert_int_equal(r->backoff_ms, 1000);
    assert_int_equal(r->max_backoff_ms, 10000);
    assert_int_equal(r->ttl_ms, 86400000);
    assert_int_equal(r->max_depth, 5000);
    assert_int_equal(r->max_bytes, 1000000);
    assert_int_equal(r->overflow, SB_OVERFLOW_DROP_OLDEST);
    assert_int_equal(r->retain, 1);
    assert_string_equal(r->dedup_header, "x-id");
    assert_int_equal(r->dedup_window_ms, 90000);
    assert_int_equal(r->lease_ms, 45000);

    r = sb_config_route(cfg, "queue");
    assert_int_equal(r->to_count, 0);
    assert_string_equal(r->dedup_header, "k");
    assert_int_equal(r->dedup_window_ms, 600000); /* default once a header is set */

    assert_null(sb_config_adapter(cfg, "nope"));
    assert_null(sb_config_route(cfg, "nope"));
    assert_null(sb_config_adapter(NULL, "in"));
    sb_config_free(cfg);
}

static void check_broker_defaults(const sb_broker_config *b)
{
    assert_string_equal(b->data_dir, "./data");
    assert_int_equal(b->commit_max_batch, 1024);
    assert_int_equal(b->commit_max_delay_us, 0);
    assert_int_equal(b->max_db_bytes, 0);
    assert_int_equal(b->queue_window, 4096);
    assert_true(b->queue_memory == (int64_t)64 << 20);
    assert_int_equal(b->log_level, SB_LOG_INFO);
    assert_null(b->log_file);
    assert_int_equal(b->log_stderr, 1);
    assert_string_equal(b->admin_endpoint, "default");
}

static void test_defaults(void **state)
{
    sb_config *cfg;
    const sb_adapter_config *a;
    const sb_route_config *r;
    (void)state;

    cfg = parse_ok("{}");
    check_broker_defaults(&cfg->broker);
    assert_int_equal(cfg->adapter_count, 0);
    assert_int_equal(cfg->route_count, 0);
    sb_config_free(cfg);

    /* Empty values keep the defaults. */
    cfg = parse_ok("broker:\nadapters: ~\nroutes: []\n");
    check_broker_defaults(&cfg->broker);
    sb_config_free(cfg);
    cfg = parse_ok("broker: { data_dir: ~, log: { file: } }\n");
    check_broker_defaults(&cfg->broker);
    sb_config_free(cfg);

    cfg = parse_ok("adapters:\n"
                   "  - { name: t, type: tcp, listen: \"localhost:1\" }\n"
                   "  - { name: e, type: exec, command: [cat] }\n"
                   "routes:\n"
                   "  - { name: r, from: \"#\" }\n");
    check_broker_defaults(&cfg->broker);
    a = sb_config_adapter(cfg, "t");
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "raw");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "line");
    assert_string_equal(SB_STREAM_CFG(a)->topic, "{adapter}");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 1048576);
    assert_int_equal(SB_STREAM_CFG(a)->max_connections, 64);
    assert_int_equal(SB_STREAM_CFG(a)->idle_timeout_ms, -1);
    assert_int_equal(sb_stream_idle_timeout(a), 0); /* raw: off */
    assert_int_equal(SB_STREAM_CFG(a)->frame_timeout_ms, 30000);
    assert_int_equal(a->inflight, 64);
    assert_int_equal(SB_STREAM_CFG(a)->reconnect_backoff_ms, 500);
    assert_int_equal(SB_STREAM_CFG(a)->reconnect_max_backoff_ms, 30000);
    assert_null(SB_STREAM_CFG(a)->security);
    a = sb_config_adapter(cfg, "e");
    assert_int_equal(SB_EXEC_CFG(a)->restart, SB_RESTART_ON_FAILURE);
    assert_int_equal(SB_EXEC_CFG(a)->restart_backoff_ms, 1000);
    assert_int_equal(SB_EXEC_CFG(a)->restart_max_backoff_ms, 60000);
    r = sb_config_route(cfg, "r");
    assert_int_equal(r->from_count, 1);
    assert_int_equal(r->to_count, 0);
    assert_int_equal(r->durability, SB_DURABILITY_FSYNC);
    assert_int_equal(r->max_attempts, 10);
    assert_int_equal(r->backoff_ms, 100);
    assert_int_equal(r->max_backoff_ms, 60000);
    assert_int_equal(r->ttl_ms, 0);
    assert_int_equal(r->max_depth, 0);
    assert_int_equal(r->max_bytes, 0);
    assert_int_equal(r->overflow, SB_OVERFLOW_REJECT);
    assert_int_equal(r->retain, 0);
    assert_null(r->dedup_header);
    assert_int_equal(r->dedup_window_ms, 0);
    assert_int_equal(r->lease_ms, 30000);
    sb_config_free(cfg);
}

static void test_scalars(void **state)
{
    static const struct {
        const char *text;
        int value;
    } bools[] = {{"true", 1},  {"True", 1}, {"yes", 1}, {"on", 1},   {"ON", 1},
                 {"false", 0}, {"no", 0},   {"off", 0}, {"FALSE", 0}};
    char yaml[128];
    sb_config *cfg;
    (void)state;

    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        snprintf(yaml, sizeof yaml, "broker: { log: { stderr: %s } }", bools[i].text);
        cfg = parse_ok(yaml);
        assert_int_equal(cfg->broker.log_stderr, bools[i].value);
        sb_config_free(cfg);
    }
    /* Quoted numbers, anchors and aliases are fine. */
    cfg = parse_ok("broker: { store: { commit_max_batch: \"65536\" } }\n"
                   "routes:\n"
                   "  - { name: a, from: x, retry: &r { max_attempts: 2 } }\n"
                   "  - { name: b, from: y, retry: *r }\n");
    assert_int_equal(cfg->broker.commit_max_batch, 65536);
    assert_int_equal(cfg->routes[1].max_attempts, 2);
    sb_config_free(cfg);
    /* Numbers at the limits. */
    cfg = parse_ok("routes: [{ name: a, from: x, max_depth: 9223372036854775807, "
                   "max_bytes: 8388607TiB }]");
    sb_config_free(cfg);
}

/* ---- errors: one case per class, exact position and key path ---- */

static void test_error_unknown_keys(void **state)
{
    (void)state;
    expect_errors("broker:\n"
                  "  data_dir: x\n"
                  "  stroe: {}\n",
                  "t.yaml:3:3: broker.stroe: unknown key (known: data_dir, store, log, admin, "
                  "auth, sys_interval, desktop, agent, http)\n");
    expect_errors("brokers: {}\n",
                  "t.yaml:1:1: brokers: unknown key (known: broker, adapters, routes)\n");
    /* Only the keys of the adapter's type are suggested. */
    expect_errors("adapters:\n"
                  "  - name: e\n"
                  "    type: exec\n"
                  "    command: [x]\n"
                  "    cmd: [x]\n",
                  "t.yaml:5:5: adapters[0].cmd: unknown key (known: name, type, protocol, "
                  "framing, topic, max_message, command, restart, restart_backoff, "
                  "restart_max_backoff, inflight, read_ahead)\n");
    /* Odd keys are quoted safely; non-string keys are refused. */
    expect_errors("? [a]\n: 1\n\"a\\tb\": 2\n",
                  "t.yaml:1:3: keys must be strings, got a list\n"
                  "t.yaml:3:1: a?b: unknown key (known: broker, adapters, routes)\n");
}

static void test_error_not_allowed(void **state)
{
    (void)state;
    expect_errors("adapters:\n"
                  "  - name: e\n"
                  "    type: exec\n"
                  "    command: [cat]\n"
                  "    listen: 127.0.0.1:1\n"
                  "  - name: u\n"
                  "    type: udp\n"
                  "    listen: 127.0.0.1:1\n"
                  "    max_connections: 3\n"
                  "  - name: t\n"
                  "    type: tcp\n"
                  "    listen: 127.0.0.1:1\n"
                  "    security: x\n",
                  "t.yaml:5:5: adapters[0].listen: not allowed for type exec\n"
                  "t.yaml:9:5: adapters[1].max_connections: not allowed for type udp\n"
                  "t.yaml:13:5: adapters[2].security: not allowed for type tcp\n");
}

static void test_error_type(void **state)
{
    (void)state;
    expect_errors("adapters:\n"
                  "  - name: a\n"
                  "    type: mqtt\n",
                  "t.yaml:3:11: adapters[0].type: must be one of tcp, udp, unix, pipe, exec, "
                  "mailslot, dde, copydata, clipboard, rpc, filemap, com, null (got \"mqtt\")\n");
    expect_errors("adapters:\n"
                  "  - name: a\n",
                  "t.yaml:2:5: adapters[0].type: required\n");
}

static void test_error_syntax(void **state)
{
    (void)state;
    expect_errors("broker:\n"
                  "  data_dir: a\n"
                  "  log: x: y\n",
                  "t.yaml:3:9: syntax: mapping values are not allowed in this context\n");
    expect_errors("broker:\n"
                  "  data_dir: a\n"
                  " x: 1\n",
                  "t.yaml:3:2: syntax: did not find expected key (while parsing a block "
                  "mapping at line 1, column 1)\n");
    expect_errors("routes: [\n", "t.yaml:2:1: syntax: did not find expected node content "
                                 "(while parsing a flow node at line 2, column 1)\n");
    expect_errors("a: \"\xff\"\n", "t.yaml:1:5: syntax: invalid leading UTF-8 octet (#FF)\n");
}

/* Nesting is bounded, so that parsing stays linear: libyaml's scanner
 * spends time proportional to the nesting depth on every token, and 200,000
 * levels used to take minutes. */
static void test_error_depth(void **state)
{
    const size_t levels = 200000;
    const char head[] = "broker:\n  data_dir: ";
    size_t n = sizeof head - 1;
    char *yaml = malloc(n + 2 * levels + 2);
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    char *got;
    clock_t start;
    double secs;
    (void)state;

    assert_non_null(yaml);
    memcpy(yaml, head, n);
    memset(yaml + n, '[', levels);
    memset(yaml + n + levels, ']', levels);
    yaml[n + 2 * levels] = '\n';
    yaml[n + 2 * levels + 1] = '\0';
    start = clock();
    assert_int_equal(parse(&cfg, yaml, &errs), SB_ECONFIG);
    secs = (double)(clock() - start) / CLOCKS_PER_SEC;
    got = printed(&errs);
    assert_string_equal(
        got, "t.yaml:2:75: nested too deeply (more than 64 levels of lists and mappings)\n");
    if (secs > 2.0)
        fail_msg("parsing %zu levels took %.2f s", levels, secs);
    free(got);
    sb_config_errors_clear(&errs);
    /* 64 levels are fine: the value is then only the wrong kind */
    memset(yaml + n, '[', 62);
    memset(yaml + n + 62, ']', 62);
    memcpy(yaml + n + 124, "\n", 2);
    expect_errors(yaml, "t.yaml:2:13: broker.data_dir: expected a string, got a list\n");
    free(yaml);
}

static void test_error_kinds(void **state)
{
    (void)state;
    expect_errors("broker: [a]\n", "t.yaml:1:9: broker: expected a mapping, got a list\n");
    expect_errors("broker: { store: 5 }\n",
                  "t.yaml:1:18: broker.store: expected a mapping, got a scalar\n");
    expect_errors("adapters: { a: 1 }\n",
                  "t.yaml:1:11: adapters: expected a list, got a mapping\n");
    expect_errors("broker: { store: { commit_max_batch: [1] } }\n",
                  "t.yaml:1:38: broker.store.commit_max_batch: expected an integer, got a list\n");
    expect_errors("adapters: [{ name: e, type: exec, command: cat }]\n",
                  "t.yaml:1:44: adapters[0].command: expected a list of strings, got a scalar\n");
    expect_errors("adapters: [{ name: e, type: exec, command: [cat, [x]] }]\n",
                  "t.yaml:1:50: adapters[0].command[1]: expected a string, got a list\n");
    expect_errors("routes: [5]\n", "t.yaml:1:10: routes[0]: expected a mapping, got a scalar\n");
}

static void test_error_document(void **state)
{
    (void)state;
    expect_errors("", "t.yaml:1:1: empty configuration (expected a mapping with broker, "
                      "adapters and routes)\n");
    expect_errors("# only a comment\n", "t.yaml:1:1: empty configuration (expected a mapping "
                                        "with broker, adapters and routes)\n");
    expect_errors("just text\n", "t.yaml:1:1: expected a mapping, got a scalar\n");
    expect_errors("- a\n", "t.yaml:1:1: expected a mapping, got a list\n");
    expect_errors("{}\n---\n{}\n", "t.yaml:2:1: only one YAML document is allowed\n");
}

static void test_error_numbers(void **state)
{
    (void)state;
    expect_errors("broker: { store: { commit_max_batch: 10x } }\n",
                  "t.yaml:1:38: broker.store.commit_max_batch: expected an integer, got \"10x\"\n");
    expect_errors("broker: { store: { commit_max_batch: 99999999999999999999 } }\n",
                  "t.yaml:1:38: broker.store.commit_max_batch: must be between 1 and 65536\n");
    expect_errors("broker: { store: { commit_max_batch: 65537 } }\n",
                  "t.yaml:1:38: broker.store.commit_max_batch: must be between 1 and 65536\n");
    expect_errors("broker: { store: { commit_max_batch: \" 5\" } }\n",
                  "t.yaml:1:38: broker.store.commit_max_batch: expected an integer, got \" 5\"\n");
    expect_errors("routes: [{ name: r, from: x, max_depth: -1 }]\n",
                  "t.yaml:1:41: routes[0].max_depth: must be at least 0\n");
    expect_errors("routes: [{ name: r, from: x, max_bytes: 8EiB }]\n",
                  "t.yaml:1:41: routes[0].max_bytes: expected a size (4096, 64KiB, 1MiB), got "
                  "\"8EiB\"\n");
    expect_errors("routes: [{ name: r, from: x, max_bytes: 9999999TiB }]\n",
                  "t.yaml:1:41: routes[0].max_bytes: too large\n");
    expect_errors("routes: [{ name: r, from: x, lease: 2d }]\n",
                  "t.yaml:1:37: routes[0].lease: must be between 1ms and 1d\n");
    expect_errors("routes: [{ name: r, from: x, retain: 1 }]\n",
                  "t.yaml:1:38: routes[0].retain: expected true or false, got \"1\"\n");
    expect_errors(
        "broker: { store: { commit_max_batch: 0 } }\n"
        "adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", max_connections: 100001 }]\n",
        "t.yaml:1:38: broker.store.commit_max_batch: must be between 1 and 65536\n"
        "t.yaml:2:74: adapters[0].max_connections: must be between 1 and 100000\n");
}

static void test_error_required_and_names(void **state)
{
    (void)state;
    expect_errors("routes:\n"
                  "  - to: x\n",
                  "t.yaml:2:5: routes[0].name: required\n"
                  "t.yaml:2:5: routes[0].from: required\n"
                  "t.yaml:2:9: routes[0].to: unknown adapter \"x\" (not declared under "
                  "adapters)\n");
    expect_errors("adapters:\n"
                  "  - { name: a, type: exec, command: [x] }\n"
                  "  - { name: b, type: exec, command: [x] }\n"
                  "  - { name: a, type: exec, command: [x] }\n"
                  "routes:\n"
                  "  - { name: q, from: x }\n"
                  "  - { name: q, from: y }\n",
                  "t.yaml:4:13: adapters[2].name: duplicate adapter name \"a\" (first declared at "
                  "line 2)\n"
                  "t.yaml:7:13: routes[1].name: duplicate route name \"q\" (first declared at line "
                  "6)\n");
    /* Adapters and routes are separate name spaces. */
    sb_config_free(parse_ok("adapters: [{ name: a, type: exec, command: [x] }]\n"
                            "routes: [{ name: a, from: x, to: a }]\n"));
    expect_errors("routes: [{ name: \"a b\", from: x }]\n",
                  "t.yaml:1:18: routes[0].name: invalid name \"a b\" (use letters, digits, '_', "
                  "'.' and '-')\n");
    expect_errors("routes: [{ name: \"\", from: x }]\n",
                  "t.yaml:1:18: routes[0].name: must not be empty\n");
    expect_errors("broker: { data_dir: \"a\\0b\" }\n",
                  "t.yaml:1:21: broker.data_dir: must not contain a NUL character\n");
    expect_errors("broker:\n  data_dir: a\n  data_dir: b\n",
                  "t.yaml:3:3: broker.data_dir: duplicate key (first at line 2)\n");
}

static void test_error_routes(void **state)
{
    (void)state;
    /* Routes may come before the adapters they name. */
    expect_errors("routes:\n"
                  "  - name: r\n"
                  "    from: [a/#, a/+b]\n"
                  "    to: [sink, gone]\n"
                  "  - name: s\n"
                  "    from: x\n"
                  "    to: gone\n"
                  "adapters:\n"
                  "  - { name: sink, type: exec, command: [cat] }\n",
                  "t.yaml:3:17: routes[0].from[1]: invalid topic filter \"a/+b\": '+' must occupy "
                  "a whole level\n"
                  "t.yaml:4:16: routes[0].to[1]: unknown adapter \"gone\" (not declared under "
                  "adapters)\n"
                  "t.yaml:7:9: routes[1].to: unknown adapter \"gone\" (not declared under "
                  "adapters)\n");
    expect_errors("routes: [{ name: r, from: [] }]\n",
                  "t.yaml:1:27: routes[0].from: must not be empty\n");
    expect_errors("routes: [{ name: r, from: x, retry: { backoff: 10s, max_backoff: 5s } }]\n",
                  "t.yaml:1:66: routes[0].retry.max_backoff: must be at least backoff (10s)\n");
    expect_errors("routes: [{ name: r, from: x, dedup: { window: 1m } }]\n",
                  "t.yaml:1:37: routes[0].dedup.header: required\n");
    expect_errors("routes: [{ name: r, from: x, durability: lazy, overflow: no }]\n",
                  "t.yaml:1:42: routes[0].durability: must be one of fsync, batched, memory (got "
                  "\"lazy\")\n"
                  "t.yaml:1:58: routes[0].overflow: must be one of reject, drop-oldest (got "
                  "\"no\")\n");
}

/* Type null: `type: null` names it (not "not set"); it takes only inflight. */
static void test_null_type(void **state)
{
    sb_config *cfg = parse_ok("adapters:\n"
                              "  - { name: d, type: null, inflight: 2 }\n"
                              "  - { name: e, type: \"null\" }\n"
                              "routes: [{ name: r, from: x, to: [d, e] }]\n");
    (void)state;
    assert_string_equal(cfg->adapters[0].type, "null");
    assert_int_equal(cfg->adapters[0].inflight, 2);
    assert_int_equal(cfg->adapters[1].inflight, 64);
    sb_config_free(cfg);
    expect_errors("adapters: [{ name: d, type: null, path: p, colour: red }]\n",
                  "t.yaml:1:35: adapters[0].path: not allowed for type null\n"
                  "t.yaml:1:44: adapters[0].colour: unknown key (known: name, type, inflight)\n");
    expect_errors("adapters: [{ name: d, type: ~ }]\n",
                  "t.yaml:1:29: adapters[0].type: missing value\n");
}

/* A host name where the socket adapters need a numeric address. */
#define NOT_NUMERIC                                                                                \
    "host \"h\" is not a numeric address (write e.g. 127.0.0.1:7878 or [::1]:7878; names are "  \
    "not resolved)\n"

static void test_error_adapter_rules(void **state)
{
    (void)state;
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", connect: \"h:2\" }]\n",
                  "t.yaml:1:57: adapters[0].connect: cannot be combined with listen\n"
                  "t.yaml:1:66: adapters[0].connect: " NOT_NUMERIC);
    expect_errors("adapters: [{ name: a, type: pipe }]\n",
                  "t.yaml:1:12: adapters[0]: needs path (server) or connect (client)\n");
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", framing: message }]\n",
                  "t.yaml:1:66: adapters[0].framing: message framing is only valid for types "
                  "pipe and mailslot\n");
    expect_errors("adapters: [{ name: a, type: unix, path: p, framing: datagram }]\n",
                  "t.yaml:1:53: adapters[0].framing: datagram framing is only valid for type "
                  "udp\n");
    expect_errors("adapters: [{ name: a, type: udp, listen: \"127.0.0.1:1\", framing: line }]\n",
                  "t.yaml:1:66: adapters[0].framing: must be datagram for type udp\n");
    expect_errors("adapters: [{ name: a, type: udp, listen: \"127.0.0.1:1\", protocol: jsonl }]\n",
                  "t.yaml:1:67: adapters[0].protocol: jsonl needs a stream adapter (tcp, unix, "
                  "pipe or exec), not udp\n");
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", protocol: jsonl, "
                  "framing: line }]\n",
                  "t.yaml:1:74: adapters[0].framing: not allowed with protocol jsonl (one JSON "
                  "object per line)\n");
    expect_errors(
        "adapters: [{ name: a, type: udp, listen: \"127.0.0.1:1\", max_message: 64KiB }]\n",
        "t.yaml:1:70: adapters[0].max_message: must be between 1 and 65507 for type "
        "udp\n");
    expect_errors("adapters: [{ name: a, type: exec }]\n",
                  "t.yaml:1:12: adapters[0].command: required for type exec\n");
    expect_errors("adapters: [{ name: a, type: exec, command: [] }]\n",
                  "t.yaml:1:44: adapters[0].command: must not be empty\n");
    expect_errors("adapters: [{ name: a, type: exec, command: [x],"
                  " restart_backoff: 1m, restart_max_backoff: 30s }]\n",
                  "t.yaml:1:91: adapters[0].restart_max_backoff: must be at least "
                  "restart_backoff (1m)\n");
    /* an empty bracketed host, and one too long to be an address */
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"[]:80\" }]\n",
                  "t.yaml:1:42: adapters[0].listen: host of \"[]:80\" is not a numeric address "
                  "(write e.g. 127.0.0.1:7878 or [::1]:7878; names are not resolved)\n");
    expect_errors("adapters: [{ name: a, type: tcp, connect: \"a-very-long-host-name-that-is-"
                  "certainly-longer-than-any-address.example:80\" }]\n",
                  "t.yaml:1:43: adapters[0].connect: host of \"a-very-long-host-name-that-is-"
                  "certainly-longer-than-any-addr...\" is not a numeric address (write e.g. "
                  "127.0.0.1:7878 or [::1]:7878; names are not resolved)\n");
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"::1:80\" }]\n",
                  "t.yaml:1:42: adapters[0].listen: expected host:port, got \"::1:80\" (write "
                  "IPv6 addresses as [::1]:port)\n");
    expect_errors("adapters: [{ name: a, type: tcp, connect: \"h:0\" }]\n",
                  "t.yaml:1:43: adapters[0].connect: invalid port \"0\" (must be 1..65535)\n");
    expect_errors(
        "adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", topic: \"x/{who}\" }]\n",
        "t.yaml:1:64: adapters[0].topic: unknown placeholder \"{who}\" (known: "
        "{adapter}, {peer})\n");
    expect_errors("adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", topic: \"a/#\" }]\n",
                  "t.yaml:1:64: adapters[0].topic: invalid topic \"a/#\": contains a wildcard "
                  "('+' or '#')\n");
    expect_errors(
        "adapters: [{ name: a, type: tcp, listen: \"127.0.0.1:1\", topic: \"$SYS/x\" }]\n",
        "t.yaml:1:64: adapters[0].topic: must not start with '$' (reserved for the "
        "broker)\n");
    expect_errors("adapters: [{ name: a, type: unix, path: p, reconnect_backoff: 1s }]\n",
                  "t.yaml:1:44: adapters[0].reconnect_backoff: only for clients (connect), not "
                  "with path\n");
    expect_errors("adapters: [{ name: a, type: tcp, connect: \"h:1\", max_connections: 2 }]\n",
                  "t.yaml:1:43: adapters[0].connect: " NOT_NUMERIC
                  "t.yaml:1:50: adapters[0].max_connections: only for servers (listen), not with "
                  "connect\n");
    expect_errors("adapters: [{ name: a, type: unix, connect: p, idle_timeout: 1s }]\n",
                  "t.yaml:1:47: adapters[0].idle_timeout: only for servers (path), not with "
                  "connect\n");
    expect_errors("adapters: [{ name: a, type: tcp, connect: \"h:1\", frame_timeout: 1s }]\n",
                  "t.yaml:1:43: adapters[0].connect: " NOT_NUMERIC
                  "t.yaml:1:50: adapters[0].frame_timeout: only for servers (listen), not with "
                  "connect\n");
    expect_errors("adapters: [{ name: a, type: udp, listen: \"127.0.0.1:1\", idle_timeout: 1s }]\n",
                  "t.yaml:1:57: adapters[0].idle_timeout: not allowed for type udp\n");
    {
        sb_config *cfg =
            parse_ok("adapters: [{ name: a, type: pipe, path: p, protocol: jsonl }]\n");
        assert_int_equal(sb_stream_idle_timeout(&cfg->adapters[0]), 30000); /* jsonl */
        sb_config_free(cfg);
    }
}

/* Mailslots: names and full paths, the message framing and the 64KiB
 * max_message by default, security for servers only, and the path rules. */
/* mqtt, tls and anonymous access: where each may appear and what each needs. */
/* The MQTT client (bridge) keys: only on tcp clients with protocol mqtt,
 * and their cross-key checks. */
static void test_mqtt_bridge_keys(void **state)
{
    sb_config *cfg;
    const sb_stream_settings *s;
    (void)state;
    cfg = parse_ok("adapters:\n"
                  "  - { name: up, type: tcp, connect: \"127.0.0.1:1883\", protocol: mqtt,\n"
                  "      failover: [\"127.0.0.1:1884\", \"[::1]:1885\"], client_id: site1,\n"
                  "      username: u, password_env: PW, keep_alive: 30s, qos: 2,\n"
                  "      local_prefix: a/, remote_prefix: site1/, subscribe: [\"cmd/#\", x] }\n");
    s = SB_STREAM_CFG(&cfg->adapters[0]);
    assert_int_equal(s->failover_count, 2);
    assert_string_equal(s->failover[1], "[::1]:1885");
    assert_string_equal(s->client_id, "site1");
    assert_int_equal(s->keep_alive_ms, 30000);
    assert_int_equal(s->qos, 2);
    assert_int_equal(s->subscribe_count, 2);
    sb_config_free(cfg);
    expect_errors("adapters: [{ name: m, type: tcp, listen: \"127.0.0.1:1\", protocol: mqtt, "
                  "client_id: x }]\n",
                  "t.yaml:1:73: adapters[0].client_id: only for MQTT clients (connect with protocol "
                  "mqtt), not with listen\n");
    expect_errors("adapters: [{ name: m, type: tcp, connect: \"127.0.0.1:1\", client_id: x }]\n",
                  "t.yaml:1:58: adapters[0].client_id: only for protocol mqtt\n");
    expect_errors("adapters: [{ name: m, type: tcp, connect: \"127.0.0.1:1\", protocol: mqtt, "
                  "client_id: x, failover: [\"127.0.0.1:2\", \"h:3\"], password_file: f, "
                  "password_env: E, keep_alive: 1500ms, qos: 0 }]\n",
                  "t.yaml:1:12: adapters[0].username: required with a password (MQTT 3.1.1 sends "
                  "no password alone)\n"
                  "t.yaml:1:114: adapters[0].failover[1]: " NOT_NUMERIC
                  "t.yaml:1:140: adapters[0].password_env: cannot be combined with password_file\n"
                  "t.yaml:1:169: adapters[0].keep_alive: must be whole seconds\n"
                  "t.yaml:1:182: adapters[0].qos: must be between 1 and 2\n");

    /* connect: a list of upstream nodes is connect + failover */
    cfg = parse_ok("adapters:\n"
                   "  - { name: up, type: tcp, protocol: mqtt, client_id: s,\n"
                   "      connect: [\"127.0.0.1:1883\", \"127.0.0.1:1884\", \"[::1]:1885\"] }\n");
    s = SB_STREAM_CFG(&cfg->adapters[0]);
    assert_string_equal(s->connect, "127.0.0.1:1883");
    assert_int_equal(s->failover_count, 2);
    assert_string_equal(s->failover[0], "127.0.0.1:1884");
    assert_string_equal(s->failover[1], "[::1]:1885");
    sb_config_free(cfg);
    cfg = parse_ok("adapters: [{ name: up, type: tcp, protocol: mqtt, client_id: s, "
                   "connect: [\"127.0.0.1:1883\"] }]\n");
    assert_string_equal(SB_STREAM_CFG(&cfg->adapters[0])->connect, "127.0.0.1:1883");
    assert_int_equal(SB_STREAM_CFG(&cfg->adapters[0])->failover_count, 0);
    sb_config_free(cfg);
    expect_errors("adapters: [{ name: m, type: tcp, protocol: mqtt, client_id: x, "
                  "connect: [\"127.0.0.1:1\", \"h:3\"] }]\n",
                  "t.yaml:1:89: adapters[0].connect[1]: " NOT_NUMERIC);
    expect_errors("adapters: [{ name: m, type: tcp, connect: [\"127.0.0.1:1\", \"127.0.0.1:2\"] }]\n",
                  "t.yaml:1:34: adapters[0].connect: takes several addresses only for an MQTT "
                  "client (protocol mqtt); this client connects to one\n");
    expect_errors("adapters: [{ name: m, type: tcp, protocol: mqtt, client_id: x, "
                  "connect: [\"127.0.0.1:1\", \"127.0.0.1:2\"], failover: [\"127.0.0.1:3\"] }]\n",
                  "t.yaml:1:115: adapters[0].failover: cannot be combined with a list in "
                  "connect\n");
    expect_errors("adapters: [{ name: m, type: tcp, protocol: mqtt, client_id: x, "
                  "failover: [\"127.0.0.1:3\"], connect: [\"127.0.0.1:1\", \"127.0.0.1:2\"] }]\n",
                  "t.yaml:1:74: adapters[0].failover: cannot be combined with a list in "
                  "connect\n");
    expect_errors("adapters: [{ name: m, type: tcp, protocol: mqtt, client_id: x, connect: [] }]\n",
                  "t.yaml:1:73: adapters[0].connect: must not be empty\n");
}

static void test_mqtt_tls_anonymous(void **state)
{
    sb_config *cfg;
    const sb_adapter_config *a;
    (void)state;
    expect_errors("adapters: [{ name: m, type: tcp, listen: \"0.0.0.0:1883\", protocol: mqtt }]\n",
                  "t.yaml:1:12: adapters[0]: 0.0.0.0:1883 is not a loopback address, so anonymous "
                  "clients are refused, and this listener has no way to authenticate them: set "
                  "tls.client_cert or broker.auth.password_file, or anonymous: true to accept "
                  "anyone who can reach it\n");
    /* tcp connect with protocol mqtt is the bridge (an MQTT client) */
    expect_errors("adapters: [{ name: m, type: tcp, connect: \"h:1\", protocol: mqtt }]\n",
                  "t.yaml:1:12: adapters[0].client_id: required for an MQTT client: the name of "
                  "its persistent session upstream (unique in the upstream cluster)\n"
                  "t.yaml:1:43: adapters[0].connect: " NOT_NUMERIC);
    expect_errors("adapters: [{ name: m, type: unix, connect: x, protocol: mqtt }]\n",
                  "t.yaml:1:57: adapters[0].protocol: mqtt is served on listeners (tcp listen, "
                  "unix or pipe path) and spoken as a client over tcp connect (a bridge)\n");
    expect_errors("adapters: [{ name: m, type: unix, path: x, protocol: mqtt, framing: line }]\n",
                  "t.yaml:1:60: adapters[0].framing: not allowed with protocol mqtt\n");
    expect_errors("adapters: [{ name: m, type: tcp, listen: \"127.0.0.1:1\", max_queued: 5 }]\n",
                  "t.yaml:1:57: adapters[0].max_queued: only for protocol mqtt\n");
    expect_errors("adapters: [{ name: m, type: unix, path: x, session_expiry: 1h }]\n",
                  "t.yaml:1:44: adapters[0].session_expiry: only for protocol mqtt\n");
    expect_errors("adapters: [{ name: m, type: unix, path: x, protocol: mqtt, session_expiry: -1s "
                  "}]\n",
                  "t.yaml:1:76: adapters[0].session_expiry: expected a duration (250ms, 10s, "
                  "5m, 2h, 1d), got \"-1s\"\n");
    expect_errors("adapters: [{ name: m, type: udp, listen: \"127.0.0.1:1\", tls: {} }]\n",
                  "t.yaml:1:57: adapters[0].tls: not allowed for type udp\n");
    expect_errors(
        "adapters:\n"
        "  - { name: s, type: tcp, listen: \"127.0.0.1:1\", tls: { client_cert: require } }\n"
        "  - { name: c, type: tcp, connect: \"h:1\", tls: { server_name: h, cert: c } }\n"
        "  - { name: d, type: tcp, listen: \"127.0.0.1:2\", tls: { cert: c, key: k, verify: false "
        "} }\n",
        "t.yaml:2:55: adapters[0].tls: a TLS listener needs cert and key\n"
        "t.yaml:2:55: adapters[0].tls: client_cert require needs ca (the CA that issues "
        "client certificates)\n"
        "t.yaml:3:36: adapters[1].connect: " NOT_NUMERIC
        "t.yaml:3:48: adapters[1].tls: a TLS client needs ca (a PEM file, or system) to "
        "verify the server, or verify: false\n"
        "t.yaml:3:48: adapters[1].tls: a client certificate needs both cert and key\n"
        "t.yaml:4:74: adapters[2].tls.verify: only for clients (connect), not with listen\n");

    cfg = parse_ok("broker: { auth: { password_file: p, acl_file: a } }\n"
                   "adapters:\n"
                   "  - { name: m, type: tcp, listen: \":1883\", protocol: mqtt }\n"
                   "  - { name: e, type: unix, path: e, protocol: mqtt, session_expiry: 2h }\n"
                   "  - { name: t, type: tcp, listen: \"[::1]:8883\", tls: { cert: c, key: k, "
                   "ca: a, client_cert: optional, min_version: \"1.3\" } }\n"
                   "  - { name: o, type: tcp, connect: \"10.0.0.1:1\", tls: { ca: system } }\n"
                   "  - { name: u, type: unix, path: x }\n");
    assert_string_equal(cfg->broker.auth_password_file, "p");
    assert_string_equal(cfg->broker.auth_acl_file, "a");
    a = sb_config_adapter(cfg, "m");
    assert_int_equal(SB_STREAM_CFG(a)->max_queued, 100000);
    assert_int_equal(SB_STREAM_CFG(a)->session_expiry_ms, 0);
    assert_int_equal(SB_STREAM_CFG(sb_config_adapter(cfg, "e"))->session_expiry_ms, 2 * 3600 * 1000);
    assert_false(sb_stream_anonymous(a));
    assert_false(sb_stream_tls(a));
    a = sb_config_adapter(cfg, "t");
    assert_true(sb_stream_anonymous(a));
    assert_true(sb_stream_tls(a));
    assert_int_equal(SB_STREAM_CFG(a)->tls_min_version, SB_TLS_V1_3);
    assert_int_equal(SB_STREAM_CFG(a)->tls_client_cert, SB_CLIENT_CERT_OPTIONAL);
    a = sb_config_adapter(cfg, "o");
    assert_true(sb_stream_tls(a));
    assert_true(sb_stream_anonymous(a));
    assert_true(sb_stream_anonymous(sb_config_adapter(cfg, "u")));
    sb_config_free(cfg);
}

/* The raw protocol's read_ahead and acknowledged mode, and the pipe buffer. */
static void test_raw_keys(void **state)
{
    sb_config *cfg;
    const sb_adapter_config *a;
    (void)state;
    cfg = parse_ok("adapters:\n"
                   "  - { name: a, type: tcp, listen: \"127.0.0.1:1\" }\n"
                   "  - { name: b, type: tcp, listen: \"127.0.0.1:2\", read_ahead: 1, reply: OK,\n"
                   "      reply_error: \"ERR\\r\" }\n"
                   "  - { name: c, type: pipe, path: p, framing: message, pipe_buffer: 1KiB,\n"
                   "      reply: \"two\\nlines\" }\n"
                   "  - { name: d, type: pipe, path: q, protocol: jsonl }\n"
                   "  - { name: e, type: exec, command: [x], read_ahead: 65536 }\n");
    a = sb_config_adapter(cfg, "a");
    assert_int_equal(SB_STREAM_CFG(a)->read_ahead, 64);
    assert_null(SB_STREAM_CFG(a)->reply);
    assert_null(SB_STREAM_CFG(a)->reply_error);
    a = sb_config_adapter(cfg, "b");
    assert_int_equal(SB_STREAM_CFG(a)->read_ahead, 1);
    assert_string_equal(SB_STREAM_CFG(a)->reply, "OK");
    assert_string_equal(SB_STREAM_CFG(a)->reply_error, "ERR\r");
    a = sb_config_adapter(cfg, "c");
    assert_int_equal(SB_STREAM_CFG(a)->pipe_buffer, 1024);
    assert_string_equal(SB_STREAM_CFG(a)->reply, "two\nlines");
    assert_int_equal(SB_STREAM_CFG(sb_config_adapter(cfg, "d"))->pipe_buffer, 0); /* by protocol */
    assert_int_equal(SB_STREAM_CFG(sb_config_adapter(cfg, "e"))->read_ahead, 65536);
    sb_config_free(cfg);

    expect_errors("adapters:\n"
                  "  - { name: a, type: tcp, listen: \"127.0.0.1:1\", read_ahead: 0 }\n"
                  "  - { name: b, type: tcp, listen: \"127.0.0.1:2\", read_ahead: 65537 }\n"
                  "  - { name: c, type: pipe, path: p, pipe_buffer: 100 }\n"
                  "  - { name: d, type: pipe, path: q, pipe_buffer: 32MiB }\n"
                  "  - { name: e, type: tcp, listen: \"127.0.0.1:3\", pipe_buffer: 4KiB }\n"
                  "  - { name: f, type: udp, listen: \"127.0.0.1:4\", read_ahead: 4 }\n"
                  "  - { name: g, type: exec, command: [x], reply: OK }\n"
                  "  - { name: h, type: pipe, connect: p, pipe_buffer: 4KiB }\n",
                  "t.yaml:2:62: adapters[0].read_ahead: must be between 1 and 65536\n"
                  "t.yaml:3:62: adapters[1].read_ahead: must be between 1 and 65536\n"
                  "t.yaml:4:50: adapters[2].pipe_buffer: must be between 512 and 16777216\n"
                  "t.yaml:5:50: adapters[3].pipe_buffer: must be between 512 and 16777216\n"
                  "t.yaml:6:50: adapters[4].pipe_buffer: not allowed for type tcp\n"
                  "t.yaml:7:50: adapters[5].read_ahead: not allowed for type udp\n"
                  "t.yaml:8:42: adapters[6].reply: not allowed for type exec\n"
                  "t.yaml:9:40: adapters[7].pipe_buffer: only for servers (path), not with "
                  "connect\n");
    expect_errors("adapters:\n"
                  "  - { name: a, type: unix, path: x, protocol: jsonl, read_ahead: 4 }\n"
                  "  - { name: b, type: tcp, listen: \"127.0.0.1:1\", protocol: mqtt, reply: OK }\n"
                  "  - { name: c, type: tcp, listen: \"127.0.0.1:2\", reply_error: ERR }\n"
                  "  - { name: d, type: tcp, listen: \"127.0.0.1:3\", reply: \"O\\nK\" }\n"
                  "  - { name: e, type: pipe, path: p, reply: OK, reply_error: \"E\\n\" }\n"
                  "routes:\n"
                  "  - { name: r, from: x, to: e }\n",
                  "t.yaml:2:54: adapters[0].read_ahead: only for protocol raw\n"
                  "t.yaml:3:66: adapters[1].reply: only for protocol raw\n"
                  "t.yaml:4:50: adapters[2].reply_error: needs reply (the answer to a committed "
                  "frame)\n"
                  "t.yaml:5:57: adapters[3].reply: must not contain a newline with line framing "
                  "(a reply is one line)\n"
                  "t.yaml:6:61: adapters[4].reply_error: must not contain a newline with line "
                  "framing (a reply is one line)\n"
                  "t.yaml:8:29: routes[0].to: adapter \"e\" answers its producers (reply): it "
                  "cannot also be a destination\n");
}

static void test_mailslot(void **state)
{
    sb_config *cfg;
    const sb_adapter_config *a;
    (void)state;
    cfg = parse_ok("adapters:\n"
                   "  - name: in\n"
                   "    type: mailslot\n"
                   "    path: sb\\in\n"
                   "    topic: slot/{adapter}\n"
                   "  - name: in2\n"
                   "    type: mailslot\n"
                   "    path: '\\\\.\\MailSlot\\in2'\n"
                   "    max_message: 1KiB\n"
                   "    framing: message\n"
                   "    inflight: 4\n"
                   "    security: \"D:P(A;;GA;;;SY)\"\n"
                   "  - name: local\n"
                   "    type: mailslot\n"
                   "    connect: '\\\\.\\mailslot\\out'\n"
                   "  - name: bcast\n"
                   "    type: mailslot\n"
                   "    connect: '\\\\*\\mailslot\\out'\n"
                   "    inflight: 1\n"
                   "  - name: remote\n"
                   "    type: mailslot\n"
                   "    connect: '\\\\host1\\mailslot\\a\\b'\n"
                   "routes:\n"
                   "  - { name: r, from: x, to: [local, bcast, remote] }\n");
    a = sb_config_adapter(cfg, "in");
    assert_string_equal(SB_STREAM_CFG(a)->path, "sb\\in");
    assert_null(SB_STREAM_CFG(a)->connect);
    assert_string_equal(SB_STREAM_CFG(a)->framing, "message");
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "raw");
    assert_string_equal(SB_STREAM_CFG(a)->topic, "slot/{adapter}");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 65536);
    assert_null(SB_STREAM_CFG(a)->security);
    assert_int_equal(a->inflight, 64);
    a = sb_config_adapter(cfg, "in2");
    assert_string_equal(SB_STREAM_CFG(a)->path, "\\\\.\\MailSlot\\in2");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 1024);
    assert_int_equal(a->inflight, 4);
    assert_string_equal(SB_STREAM_CFG(a)->security, "D:P(A;;GA;;;SY)");
    a = sb_config_adapter(cfg, "bcast");
    assert_string_equal(SB_STREAM_CFG(a)->connect, "\\\\*\\mailslot\\out");
    assert_int_equal(SB_STREAM_CFG(a)->max_message, 65536);
    assert_int_equal(a->inflight, 1);
    assert_string_equal(SB_STREAM_CFG(sb_config_adapter(cfg, "remote"))->connect, "\\\\host1\\mailslot\\a\\b");
    sb_config_free(cfg);

    expect_errors("adapters: [{ name: a, type: mailslot }]\n",
                  "t.yaml:1:12: adapters[0]: needs path (server) or connect (client)\n");
    expect_errors("adapters:\n"
                  "  - { name: a, type: mailslot, path: '\\\\host\\mailslot\\x' }\n"
                  "  - { name: b, type: mailslot, path: '\\\\.\\mailslot\\' }\n"
                  "  - { name: c, type: mailslot, path: '\\\\.\\pipe\\x' }\n"
                  "  - { name: d, type: mailslot, connect: '\\\\host\\x' }\n"
                  "  - { name: e, type: mailslot, connect: '\\\\\\mailslot\\x' }\n"
                  "  - { name: f, type: mailslot, connect: x, security: 'D:P' }\n"
                  "  - { name: g, type: mailslot, path: x, framing: line }\n"
                  "  - { name: h, type: mailslot, path: x, protocol: jsonl }\n"
                  "  - { name: i, type: mailslot, path: x, max_connections: 2 }\n"
                  "  - { name: j, type: mailslot, path: x, connect: y }\n",
                  "t.yaml:2:38: adapters[0].path: a mailslot server can only create a local "
                  "mailslot (a name, or \\\\.\\mailslot\\NAME), got \"\\\\host\\mailslot\\x\"\n"
                  "t.yaml:3:38: adapters[1].path: the mailslot name is empty, got "
                  "\"\\\\.\\mailslot\\\"\n"
                  "t.yaml:4:38: adapters[2].path: expected a mailslot name or "
                  "\\\\.\\mailslot\\NAME, got \"\\\\.\\pipe\\x\"\n"
                  "t.yaml:5:41: adapters[3].connect: expected a mailslot name, "
                  "\\\\.\\mailslot\\NAME, \\\\HOST\\mailslot\\NAME, \\\\DOMAIN\\mailslot\\NAME or "
                  "\\\\*\\mailslot\\NAME, got \"\\\\host\\x\"\n"
                  "t.yaml:6:41: adapters[4].connect: expected a mailslot name, "
                  "\\\\.\\mailslot\\NAME, \\\\HOST\\mailslot\\NAME, \\\\DOMAIN\\mailslot\\NAME or "
                  "\\\\*\\mailslot\\NAME, got \"\\\\\\mailslot\\x\"\n"
                  "t.yaml:7:44: adapters[5].security: only for servers (path): a mailslot "
                  "client creates no object\n"
                  "t.yaml:8:50: adapters[6].framing: must be message for type mailslot\n"
                  "t.yaml:9:51: adapters[7].protocol: jsonl needs a stream adapter (tcp, unix, "
                  "pipe or exec), not mailslot\n"
                  "t.yaml:10:41: adapters[8].max_connections: not allowed for type mailslot\n"
                  "t.yaml:11:41: adapters[9].connect: cannot be combined with path\n");
}

/* type dde: the keys of each role, DDE names, the topic template. */
static void test_dde(void **state)
{
    sb_config *cfg;
    const sb_adapter_config *a;
    (void)state;
    cfg = parse_ok("adapters:\n"
                   "  - name: excel\n"
                   "    type: dde\n"
                   "  - name: plc\n"
                   "    type: dde\n"
                   "    role: client\n"
                   "    service: PLCSERVER\n"
                   "    dde_topic: Line 1\n"
                   "    items: [Temp, Speed A]\n"
                   "    topic: plant/{dde_topic}/{item}\n"
                   "    execute_topic: plant/cmd\n"
                   "    codepage: 1252\n"
                   "    reconnect_backoff: 1s\n"
                   "  - name: one\n"
                   "    type: dde\n"
                   "    service: ONE\n"
                   "    dde_topics: [Values]\n"
                   "    topic: v/{adapter}/{item}\n"
                   "routes:\n"
                   "  - { name: r, from: x, to: plc }\n");
    a = sb_config_adapter(cfg, "excel");
    assert_int_equal(SB_DDE_CFG(a)->dde_role, SB_DDE_SERVER);
    assert_string_equal(SB_DDE_CFG(a)->dde_service, "SWITCHBOARD");
    assert_string_equal(SB_DDE_CFG(a)->topic, "{service}/{dde_topic}/{item}");
    assert_int_equal(SB_DDE_CFG(a)->dde_topics_count, 0);
    assert_int_equal(SB_DDE_CFG(a)->dde_items_count, 0);
    assert_null(SB_DDE_CFG(a)->dde_topic);
    assert_null(SB_DDE_CFG(a)->dde_execute_topic);
    assert_int_equal(SB_DDE_CFG(a)->dde_codepage, 0);
    a = sb_config_adapter(cfg, "plc");
    assert_int_equal(SB_DDE_CFG(a)->dde_role, SB_DDE_CLIENT);
    assert_string_equal(SB_DDE_CFG(a)->dde_service, "PLCSERVER");
    assert_string_equal(SB_DDE_CFG(a)->dde_topic, "Line 1");
    assert_int_equal(SB_DDE_CFG(a)->dde_items_count, 2);
    assert_string_equal(SB_DDE_CFG(a)->dde_items[1], "Speed A");
    assert_string_equal(SB_DDE_CFG(a)->dde_execute_topic, "plant/cmd");
    assert_int_equal(SB_DDE_CFG(a)->dde_codepage, 1252);
    assert_int_equal(SB_DDE_CFG(a)->reconnect_backoff_ms, 1000);
    a = sb_config_adapter(cfg, "one");
    assert_string_equal(SB_DDE_CFG(a)->dde_topics[0], "Values");
    assert_string_equal(SB_DDE_CFG(a)->topic, "v/{adapter}/{item}");
    sb_config_free(cfg);

    expect_errors(
        "adapters:\n"
        "  - { name: a, type: dde, dde_topic: x, reconnect_backoff: 1s }\n"
        "  - { name: b, type: dde, role: client, dde_topics: [x] }\n"
        "  - { name: c, type: dde, role: peer }\n"
        "  - { name: d, type: dde, dde_topics: ['*', x], items: [a/b, '#'] }\n"
        "  - { name: e, type: dde, topic: 'p/{dde_topic}_x/{item}' }\n"
        "  - { name: f, type: dde, topic: 'p/{dde_topic}' }\n"
        "  - { name: g, type: dde, topic: 'p/{dde_topic}/{item}/{item}' }\n"
        "  - { name: h, type: dde, topic: 'p/{item}' }\n"
        "  - { name: i, type: dde, topic: 'p/{peer}/{item}' }\n"
        "  - { name: j, type: dde, framing: line, listen: 'x:1', codepage: 70000 }\n"
        "  - { name: k, type: dde, execute_topic: 'a/+', service: 'S/1' }\n",
        "t.yaml:2:27: adapters[0].dde_topic: only for role client (a server serves "
        "dde_topics)\n"
        "t.yaml:3:5: adapters[1].dde_topic: required for role client\n"
        "t.yaml:3:41: adapters[1].dde_topics: only for role server (a client connects to one "
        "dde_topic)\n"
        "t.yaml:4:33: adapters[2].role: must be one of server, client (got \"peer\")\n"
        "t.yaml:5:40: adapters[3].dde_topics[0]: '*' (any topic) cannot be listed with other "
        "topics\n"
        "t.yaml:5:57: adapters[3].items[0]: invalid DDE name \"a/b\": contains '/', '+' or '#' "
        "(DDE names become topic levels)\n"
        "t.yaml:5:62: adapters[3].items[1]: invalid DDE name \"#\": contains '/', '+' or '#' "
        "(DDE names become topic levels)\n"
        "t.yaml:6:34: adapters[4].topic: {dde_topic} must be a whole topic level, as in "
        "plant/{dde_topic}/{item}\n"
        "t.yaml:7:34: adapters[5].topic: needs {item}: every DDE item has a topic of its own\n"
        "t.yaml:8:34: adapters[6].topic: {item} may appear only once\n"
        "t.yaml:9:34: adapters[7].topic: needs {dde_topic}: this server serves more than one "
        "DDE topic (set dde_topics to one topic, or put {dde_topic} in the template)\n"
        "t.yaml:10:34: adapters[8].topic: unknown placeholder \"{peer}\" (known: {adapter}, "
        "{service}, {dde_topic}, {item})\n"
        "t.yaml:11:27: adapters[9].framing: not used by type dde (a DDE transaction is one "
        "message)\n"
        "t.yaml:11:42: adapters[9].listen: not allowed for type dde\n"
        "t.yaml:11:67: adapters[9].codepage: must be between 0 and 65535\n"
        "t.yaml:12:42: adapters[10].execute_topic: invalid topic \"a/+\": contains a wildcard "
        "('+' or '#')\n"
        "t.yaml:12:58: adapters[10].service: invalid DDE name \"S/1\": contains '/', '+' or '#' "
        "(DDE names become topic levels)\n");
}

static void test_error_many(void **state)
{
    /* Every error is collected, then the list is cut with a final note. */
    size_t n = 300, len = 0, cap = n * 16 + 32;
    char *yaml = malloc(cap);
    sb_config_errors errs = {0};
    sb_config *cfg;
    (void)state;
    assert_non_null(yaml);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(yaml + len, cap - len, "k%zu: 1\n", i);
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", yaml, len, &errs), SB_ECONFIG);
    assert_int_equal(errs.count, 201);
    assert_int_equal(errs.items[0].line, 1);
    assert_int_equal(errs.items[199].line, 200);
    assert_string_equal(errs.items[200].message, "too many errors (more than 200), giving up");
    sb_config_errors_clear(&errs);
    assert_int_equal(errs.count, 0);
    /* Without an error list, the code alone. */
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", yaml, len, NULL), SB_ECONFIG);
    assert_null(cfg);
    free(yaml);
}

static void test_load_missing(void **state)
{
    sb_config_errors errs = {0};
    sb_config *cfg = (sb_config *)1;
    char *got;
    (void)state;
    assert_int_equal(sb_config_load(&cfg, "no/such/file.yaml", &errs), SB_ENOTFOUND);
    assert_null(cfg);
    assert_int_equal(errs.count, 1);
    assert_int_equal(errs.items[0].line, 0);
    got = printed(&errs);
    assert_true(strncmp(got, "no/such/file.yaml: cannot open: ", 32) == 0);
    free(got);
    sb_config_errors_clear(&errs);
}

static void test_print(void **state)
{
    sb_config_error items[3] = {
        {"a.yaml", 3, 7, "broker.x", "bad"},
        {"a.yaml", 0, 0, NULL, "cannot open: nope"},
        {"a.yaml", 2, 1, NULL, "expected a mapping"},
    };
    sb_config_errors errs = {items, 3};
    char *got;
    (void)state;
    got = printed(&errs);
    assert_string_equal(got, "a.yaml:3:7: broker.x: bad\n"
                             "a.yaml: cannot open: nope\n"
                             "a.yaml:2:1: expected a mapping\n");
    free(got);
}

/* ---- durations and sizes ---- */

static void test_durations(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {{"0", 0},
                {"250", 250},
                {"250ms", 250},
                {"10s", 10000},
                {"5m", 300000},
                {"2h", 7200000},
                {"1d", 86400000},
                {"0s", 0},
                {"106751991167d", 106751991167 * 86400000LL},
                {"9223372036854775807", INT64_MAX}};
    static const char *const bad[] = {"",
                                      "ms",
                                      "-1s",
                                      "1.5s",
                                      "10 s",
                                      "10S",
                                      "1w",
                                      "1h30m",
                                      "+1s",
                                      "s1",
                                      "1sec",
                                      "106751991168d",
                                      "99999999999999999999",
                                      " 1s",
                                      "1s "};
    int64_t v;
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        v = -1;
        assert_int_equal(sb_config_parse_duration(good[i].text, &v), 0);
        assert_true(v == good[i].ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 42;
        if (sb_config_parse_duration(bad[i], &v) != SB_EINVAL)
            fail_msg("accepted duration \"%s\"", bad[i]);
        assert_true(v == 42);
    }
    assert_int_equal(sb_config_parse_duration(NULL, &v), SB_EINVAL);
}

static void test_sizes(void **state)
{
    static const struct {
        const char *text;
        int64_t bytes;
    } good[] = {{"0", 0},
                {"4096", 4096},
                {"512B", 512},
                {"64KiB", 65536},
                {"1MiB", 1048576},
                {"2GiB", (int64_t)2 << 30},
                {"1TiB", (int64_t)1 << 40},
                {"1KB", 1000},
                {"1kB", 1000},
                {"3MB", 3000000},
                {"2GB", 2000000000},
                {"1TB", 1000000000000LL},
                {"8388607TiB", (int64_t)8388607 << 40}};
    static const char *const bad[] = {"",
                                      "KiB",
                                      "1K",
                                      "1 MiB",
                                      "-1",
                                      "1.5MiB",
                                      "1MiBs",
                                      "0x10",
                                      "1e6",
                                      "8388608TiB",
                                      "99999999999999999999"};
    int64_t v;
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        v = -1;
        assert_int_equal(sb_config_parse_size(good[i].text, &v), 0);
        assert_true(v == good[i].bytes);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 42;
        if (sb_config_parse_size(bad[i], &v) != SB_EINVAL)
            fail_msg("accepted size \"%s\"", bad[i]);
        assert_true(v == 42);
    }
}

/* ---- copy, equal, free ---- */

static void test_copy_equal(void **state)
{
    sb_config *cfg = parse_ok(full_config), *again = parse_ok(full_config);
    sb_adapter_config ac;
    sb_route_config rc;
    (void)state;

    for (size_t i = 0; i < cfg->adapter_count; i++) {
        assert_int_equal(sb_adapter_config_copy(&ac, &cfg->adapters[i]), 0);
        assert_true(sb_adapter_config_equal(&ac, &cfg->adapters[i]));
        assert_true(sb_adapter_config_equal(&ac, &again->adapters[i]));
        assert_int_equal(ac.pos.line, cfg->adapters[i].pos.line);
        for (size_t j = 0; j < cfg->adapter_count; j++)
            assert_int_equal(sb_adapter_config_equal(&ac, &cfg->adapters[j]), i == j);
        /* The copy owns its strings. */
        assert_ptr_not_equal(ac.name, cfg->adapters[i].name);
        ac.pos.line += 10; /* where it was declared does not matter */
        assert_true(sb_adapter_config_equal(&ac, &cfg->adapters[i]));
        ac.inflight++;
        assert_false(sb_adapter_config_equal(&ac, &cfg->adapters[i]));
        sb_adapter_config_free(&ac);
    }
    assert_int_equal(sb_adapter_config_copy(&ac, sb_config_adapter(cfg, "child")), 0);
    SB_SETTINGS(sb_exec_settings, &ac)->command[2][0] = 'C';
    assert_false(sb_adapter_config_equal(&ac, sb_config_adapter(cfg, "child")));
    SB_SETTINGS(sb_exec_settings, &ac)->command_count--;
    assert_false(sb_adapter_config_equal(&ac, sb_config_adapter(cfg, "child")));
    SB_SETTINGS(sb_exec_settings, &ac)->command_count++;
    sb_adapter_config_free(&ac);
    sb_adapter_config_free(NULL);

    for (size_t i = 0; i < cfg->route_count; i++) {
        assert_int_equal(sb_route_config_copy(&rc, &cfg->routes[i]), 0);
        assert_true(sb_route_config_equal(&rc, &again->routes[i]));
        assert_false(sb_route_config_equal(&rc, &cfg->routes[1 - i]));
        rc.max_backoff_ms++;
        assert_false(sb_route_config_equal(&rc, &cfg->routes[i]));
        sb_route_config_free(&rc);
    }
    assert_int_equal(sb_route_config_copy(&rc, &cfg->routes[0]), 0);
    rc.to_count = 1;
    assert_false(sb_route_config_equal(&rc, &cfg->routes[0]));
    rc.to_count = 2;
    sb_route_config_free(&rc);
    sb_config_free(cfg);
    sb_config_free(again);
    sb_config_free(NULL);
}

static void test_copy_oom(void **state)
{
    sb_config *cfg = parse_ok(full_config);
    (void)state;
    for (size_t i = 0; i < cfg->adapter_count; i++) {
        for (long n = 0;; n++) {
            sb_adapter_config ac;
            int rc;
            sb_alloc_fail_after(n);
            rc = sb_adapter_config_copy(&ac, &cfg->adapters[i]);
            sb_alloc_fail_after(-1);
            sb_adapter_config_free(&ac); /* freeable either way */
            if (rc == 0)
                break;
            assert_int_equal(rc, SB_ENOMEM);
        }
    }
    for (size_t i = 0; i < cfg->route_count; i++) {
        for (long n = 0;; n++) {
            sb_route_config rc;
            int r;
            sb_alloc_fail_after(n);
            r = sb_route_config_copy(&rc, &cfg->routes[i]);
            sb_alloc_fail_after(-1);
            sb_route_config_free(&rc);
            if (r == 0)
                break;
            assert_int_equal(r, SB_ENOMEM);
        }
    }
    sb_config_free(cfg);
}

/* ---- out of memory while parsing ---- */

static void parse_oom(const char *yaml, size_t len, int want)
{
    long n;
    for (n = 0;; n++) {
        sb_config_errors errs = {0};
        sb_config *cfg = (sb_config *)1;
        int rc;
        sb_alloc_fail_after(n);
        rc = sb_config_parse(&cfg, "oom.yaml", yaml, len, &errs);
        sb_alloc_fail_after(-1);
        sb_config_errors_clear(&errs);
        if (rc == want) {
            if (rc == 0)
                sb_config_free(cfg);
            break;
        }
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(cfg);
    }
    assert_true(n > 10); /* the injection did hit allocations */
}

static void test_oom(void **state)
{
    char *path = data_path("../../config/examples/full.yaml");
    size_t len;
    char *text = read_file(path, &len);
    (void)state;
    assert_non_null(text);
    parse_oom(full_config, strlen(full_config), 0);
    parse_oom(text, len, 0);
    free(text);
    free(path);

    path = data_path("config/bad-adapters.yaml");
    text = read_file(path, &len);
    assert_non_null(text);
    parse_oom(text, len, SB_ECONFIG);
    free(text);

    /* sb_config_load's own buffer. */
    for (long n = 0;; n++) {
        sb_config *cfg;
        int rc;
        sb_alloc_fail_after(n);
        rc = sb_config_load(&cfg, path, NULL);
        sb_alloc_fail_after(-1);
        if (rc == SB_ECONFIG)
            break;
        assert_int_equal(rc, SB_ENOMEM);
    }
    free(path);
}

/* ---- the session agent's part of a config ---- */

static void test_agent_keys(void **state)
{
    sb_config *cfg = parse_ok("broker: { data_dir: d }\n");
    (void)state;
    assert_int_equal(cfg->broker.desktop, SB_DESKTOP_AUTO);
    assert_null(cfg->broker.agent_endpoint);
    assert_int_equal(cfg->broker.agent_start, 1);
    assert_int_equal(cfg->broker.agent_restart_backoff_ms, 1000);
    assert_int_equal(cfg->broker.agent_restart_max_backoff_ms, 60000);
    assert_int_equal(cfg->broker.agent_types_count, 0);
    sb_config_free(cfg);
    cfg = parse_ok("broker:\n  desktop: agent\n  agent: { endpoint: 'sb-{session}', start: no,\n"
                   "           restart_backoff: 100ms, restart_max_backoff: 2s, types: [exec] }\n");
    assert_int_equal(cfg->broker.agent_types_count, 1);
    assert_string_equal(cfg->broker.agent_types[0], "exec");
    assert_int_equal(cfg->broker.desktop, SB_DESKTOP_AGENT);
    assert_string_equal(cfg->broker.agent_endpoint, "sb-{session}");
    assert_int_equal(cfg->broker.agent_start, 0);
    assert_int_equal(cfg->broker.agent_restart_backoff_ms, 100);
    assert_int_equal(cfg->broker.agent_restart_max_backoff_ms, 2000);
    sb_config_free(cfg);
}

static const char agent_source[] =
    "# the administrator's file\n"
    "broker: { data_dir: '/var/lib/sb', log: { level: warn } }\n"
    "adapters:\n"
    "  - name: clients\n"
    "    type: tcp\n"
    "    listen: 127.0.0.1:7000\n"
    "    protocol: jsonl\n"
    "  - name: child   # hosted\n"
    "    type: exec\n"
    "    command: [ \"C:\\\\Program Files\\\\x.exe\", '--x=1', \"caf\\u00e9 ok\", \"a: b\" ]\n"
    "    protocol: jsonl\n"
    "    topic: 'in/{adapter}'\n"
    "    restart: always\n"
    "    max_message: 2KiB\n"
    "  - { name: slot, type: mailslot, path: 'sb-slot', topic: \"a/b: c 'd'\" }\n"
    "routes:\n"
    "  - { name: r, from: 'x/#' }\n";

static void test_agent_doc(void **state)
{
    const char *const names[] = {"slot", "child", "absent"};
    sb_config *src = parse_ok(agent_source), *doc;
    sb_config_errors errs = {0};
    char *text = NULL;
    size_t len = 0;
    int rc;
    (void)state;
    assert_int_equal(sb_config_agent_doc(&text, &len, src, "debug", names, 3), 0);
    assert_int_equal(strlen(text), len);
    /* nothing else of the file */
    assert_null(strstr(text, "clients"));
    assert_null(strstr(text, "routes"));
    assert_null(strstr(text, "/var/lib/sb"));
    rc = sb_config_parse(&doc, "agent", text, len, &errs);
    if (rc != 0) {
        char *got = printed(&errs);
        fail_msg("the agent's document does not parse:\n%s\n%s", text, got);
    }
    /* in the order of the file, each equal to the original */
    assert_int_equal(doc->adapter_count, 2);
    assert_true(sb_adapter_config_equal(&doc->adapters[0], sb_config_adapter(src, "child")));
    assert_true(sb_adapter_config_equal(&doc->adapters[1], sb_config_adapter(src, "slot")));
    assert_string_equal(SB_EXEC_CFG(&doc->adapters[0])->command[0], "C:\\Program Files\\x.exe");
    assert_string_equal(SB_EXEC_CFG(&doc->adapters[0])->command[2], "caf\xc3\xa9 ok");
    assert_string_equal(SB_STREAM_CFG(&doc->adapters[1])->topic, "a/b: c 'd'");
    assert_int_equal(doc->broker.log_level, SB_LOG_DEBUG);
    assert_int_equal(doc->route_count, 0);
    sb_config_free(doc);
    sb_free(text);

    /* none hosted: an empty list */
    assert_int_equal(sb_config_agent_doc(&text, &len, src, "info", names + 2, 1), 0);
    assert_int_equal(sb_config_parse(&doc, "agent", text, len, &errs), 0);
    assert_int_equal(doc->adapter_count, 0);
    sb_config_free(doc);
    sb_free(text);

    for (long n = 0;; n++) {
        sb_alloc_fail_after(n);
        rc = sb_config_agent_doc(&text, &len, src, "info", names, 2);
        sb_alloc_fail_after(-1);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(text);
    }
    sb_free(text);
    sb_config_free(src);
}

/* ---- the shipped examples ---- */

static sb_config *load_example(const char *name)
{
    char rel[128];
    char *path;
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    int rc;
    snprintf(rel, sizeof rel, "../../config/examples/%s", name);
    path = data_path(rel);
    rc = sb_config_load(&cfg, path, &errs);
    if (rc != 0) {
        char *got = printed(&errs);
        fail_msg("%s: rc %d\n%s", path, rc, got);
    }
    assert_string_equal(cfg->path, path);
    free(path);
    return cfg;
}

static void test_example_quickstart(void **state)
{
    sb_config *cfg = load_example("quickstart.yaml");
    const sb_adapter_config *a;
    const sb_route_config *r;
    (void)state;
    assert_string_equal(cfg->broker.data_dir, "./data");
    a = sb_config_adapter(cfg, "clients");
    assert_non_null(a);
    assert_string_equal(a->type, "tcp");
    assert_string_equal(SB_STREAM_CFG(a)->listen, "127.0.0.1:7878");
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "jsonl");
    a = sb_config_adapter(cfg, "lines-in");
    assert_non_null(a);
    assert_string_equal(SB_STREAM_CFG(a)->listen, "127.0.0.1:7879");
    assert_string_equal(SB_STREAM_CFG(a)->protocol, "raw");
    assert_string_equal(SB_STREAM_CFG(a)->framing, "line");
    assert_string_equal(SB_STREAM_CFG(a)->topic, "lines/{adapter}");
    a = sb_config_adapter(cfg, "archive");
    assert_non_null(a);
    assert_string_equal(a->type, "exec");
    assert_true(SB_EXEC_CFG(a)->command_count > 0);
    r = sb_config_route(cfg, "lines-to-audit");
    assert_non_null(r);
    assert_string_equal(r->from[0], "lines/#");
    assert_int_equal(r->to_count, 0);
    r = sb_config_route(cfg, "lines-to-archive");
    assert_non_null(r);
    assert_int_equal(r->to_count, 1);
    assert_string_equal(r->to[0], "archive");
    sb_config_free(cfg);
}

static void test_example_full(void **state)
{
    sb_config *cfg = load_example("full.yaml");
    (void)state;
    /* It shows every adapter type and sets non-default values. */
    for (const char *const *t =
             (const char *const[]){"tcp", "udp", "unix", "pipe", "exec", "mailslot", "dde",
                                   "copydata", "clipboard", "rpc", "com", "null", NULL};
         *t != NULL; t++) {
        int found = 0;
        for (size_t i = 0; i < cfg->adapter_count; i++)
            found |= strcmp(cfg->adapters[i].type, *t) == 0;
        assert_true(found);
    }
    assert_non_null(cfg->broker.log_file);
    assert_string_equal(cfg->broker.http_listen, "127.0.0.1:9180");
    assert_true(cfg->broker.max_db_bytes > 0);
    assert_true(cfg->broker.queue_memory == (int64_t)64 << 20);
    assert_non_null(sb_config_route(cfg, "orders-to-archive")->dedup_header);
    assert_non_null(SB_STREAM_CFG(sb_config_adapter(cfg, "orders-in"))->reply);
    assert_true(SB_STREAM_CFG(sb_config_adapter(cfg, "orders-in"))->pipe_buffer > 0);
    sb_config_free(cfg);
}

/* ---- SDDL syntax ---- */

static void test_sddl_syntax(void **state)
{
    static const char *const good[] = {
        "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;IU)",
        "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;S-1-5-21-1-2-3-1001)",
        "O:SYG:SYD:AI(A;ID;GA;;;SY)",
        "O:BAG:DUD:PAI(D;;GA;;;AN)(A;;0x1f01ff;;;WD)S:(AU;SAFA;GA;;;WD)",
        "D:(OA;;RPWP;bf967a0a-0de6-11d0-a285-00aa003049e2;;AU)",
        "D:(A;;2032127;;;S-1-5-80-0)",
        "D:NO_ACCESS_CONTROL",
        "D:",
        "S:(ML;;NW;;;LW)",
        "D:(XA;;FR;;;WD;(Member_of {SID(BA)}))",
        " D:P (A;;GA;;;SY) (A;;GA;;;BA)",
    };
    static const struct {
        const char *sddl;
        size_t offset;
        const char *why;
    } bad[] = {
        {"", 0, "empty"},
        {"D:P(A;;GA;;;NOPE)(garbage", 12, "invalid SID \"NOPE\""},
        {"D:P(A;;GA;;;SY)(garbage", 15, "unterminated ACE"},
        {"D:P(A;;GA;;;SY)(A;;GA)", 21, "too few fields"},
        {"D:P(A;;GA;;;SY", 3, "unterminated ACE"},
        {"D:P(A;;BOGUS;;;SY)", 7, "unknown access right \"BO\""},
        {"D:P(A;;GAX;;;SY)", 9, "unknown access right \"X\""},
        {"D:(Q;;GA;;;SY)", 3, "unknown ACE type \"Q\""},
        {"D:(;;GA;;;SY)", 3, "missing ACE type"},
        {"D:(A;XY;GA;;;SY)", 5, "unknown ACE flag \"XY\""},
        {"D:(A;;;;;SY)", 6, "missing access rights"},
        {"D:(A;;0x;;;SY)", 6, "invalid access mask"},
        {"D:(A;;0x1G;;;SY)", 9, "invalid hex digit 'G'"},
        {"D:(A;;99999999999;;;SY)", 6, "larger than 32 bits"},
        {"D:(OA;;RP;1234;;AU)", 10, "invalid GUID"},
        {"D:(A;;GA;;;ZZ)", 11, "unknown SID alias \"ZZ\""},
        {"D:(A;;GA;;;)", 11, "missing SID"},
        {"D:(A;;GA;;;S-1-5-)", 17, "empty SID sub-authority"},
        {"D:(A;;GA;;;S-1-5-x)", 17, "invalid character 'x'"},
        {"D:(A;;GA;;;S-1-5-4294967296)", 17, "larger than 4294967295"},
        {"D:(A;;GA;;;SY;(x))", 13, "too many fields"},
        {"D:(A;;GA;;;SY)D:(A;;GA;;;BA)", 14, "D: given twice"},
        {"X:(A;;GA;;;SY)", 0, "expected O:, G:, D: or S:"},
        {"D:P(A;;GA;;;SY)junk", 15, "unexpected \"junk\""},
        {"O:NOPED:(A;;GA;;;SY)", 2, "invalid SID"},
        {"D:(XA;;FR;;;WD;(Member_of {SID(BA)})", 2, "unterminated ACE"},
    };
    char why[200];
    size_t off;
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        why[0] = '\0';
        if (sb_config_sddl_check(good[i], &off, why, sizeof why) != 0)
            fail_msg("\"%s\" refused at %zu: %s", good[i], off, why);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        off = 999;
        why[0] = '\0';
        if (sb_config_sddl_check(bad[i].sddl, &off, why, sizeof why) == 0)
            fail_msg("\"%s\" accepted", bad[i].sddl);
        if (off != bad[i].offset || strstr(why, bad[i].why) == NULL)
            fail_msg("\"%s\": at %zu: %s; want at %zu: ...%s...", bad[i].sddl, off, why,
                     bad[i].offset, bad[i].why);
    }
}

/* A bad security descriptor is reported where it is wrong, for adapters
 * and for the admin endpoint. */
static void test_sddl_in_config(void **state)
{
    static const char text[] = "broker:\n"
                               "  admin: { security: 'D:P(A;;GA;;;SY)(A;;GA;;;XX)' }\n"
                               "adapters:\n"
                               "  - name: p\n"
                               "    type: pipe\n"
                               "    path: p\n"
                               "    security: D:P(A;;GA;;;NOPE)\n"
                               "  - name: ok\n"
                               "    type: pipe\n"
                               "    path: ok\n"
                               "    security: \"D:P(A;;GA;;;SY)(A;;GRGW;;;IU)\"\n";
    static const char good[] =
        "broker:\n"
        "  admin: { security: 'D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;BU)' }\n";
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    char *got;
    (void)state;
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", text, strlen(text), &errs), SB_ECONFIG);
    got = printed(&errs);
    assert_string_equal(got, "t.yaml:2:47: broker.admin.security: invalid security descriptor: "
                             "unknown SID alias \"XX\" (known: SY, BA, IU, AU, BU, WD, ...)\n"
                             "t.yaml:7:27: adapters[0].security: invalid security descriptor: "
                             "invalid SID \"NOPE\" (expected S-1-... or an alias such as SY, BA, "
                             "IU)\n");
    free(got);
    sb_config_errors_clear(&errs);
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", good, strlen(good), &errs), 0);
    assert_string_equal(cfg->broker.admin_security, "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;BU)");
    sb_config_free(cfg);
}

/* ---- the starter config of `service install` ---- */

/* The starter with every example line uncommented: "#" followed by "-", two
 * spaces or a key is an example line; "# " + text is an explanation. */
static char *uncomment_examples(const char *text)
{
    size_t n = strlen(text);
    char *out = malloc(n + 1), *o = out;
    const char *line = text;
    assert_non_null(out);
    while (*line != '\0') {
        const char *nl = strchr(line, '\n'), *p = line;
        size_t len = nl != NULL ? (size_t)(nl - line) + 1 : strlen(line);
        while (*p == ' ')
            p++;
        if (*p == '#' &&
            (p[1] == '-' || (p[1] == ' ' && p[2] == ' ') || (p[1] >= 'a' && p[1] <= 'z'))) {
            memcpy(o, line, (size_t)(p - line));
            o += p - line;
            memcpy(o, p + 1, len - (size_t)(p - line) - 1);
            o += len - (size_t)(p - line) - 1;
        } else {
            memcpy(o, line, len);
            o += len;
        }
        line += len;
    }
    *o = '\0';
    return out;
}

static sb_config *starter_ok(const char *name, const char *text)
{
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    int rc = sb_config_parse(&cfg, name, text, strlen(text), &errs);
    if (rc != 0) {
        char *got = printed(&errs);
        fail_msg("%s: rc %d\n%s\n----\n%s", name, rc, got, text);
    }
    return cfg;
}

static void test_starter(void **state)
{
    /* Paths as Windows has them, with what YAML would misread unquoted:
     * backslashes, a quote, a colon and space, a '#'. */
    static const char *const dirs[] = {
        "C:\\ProgramData\\Switchboard",
        "D:\\Data\\O'Brien's # broker: \"x\"",
        "C:\\Program Files\\Switch board\\",
    };
    (void)state;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char cfg_path[512], log[600], *text, *all;
        sb_config *cfg;
        snprintf(cfg_path, sizeof cfg_path, "%s\\switchboard.yaml", dirs[i]);
        snprintf(log, sizeof log, "%s\\switchboard.log", dirs[i]);
        text = sb_config_starter(dirs[i], cfg_path);
        assert_non_null(text);
        cfg = starter_ok("starter.yaml", text);
        assert_string_equal(cfg->broker.data_dir, dirs[i]);
        assert_string_equal(cfg->broker.log_file, log);
        /* the com endpoint, for Switchboard.Broker (install registers it) */
        assert_int_equal(cfg->adapter_count, 1);
        assert_string_equal(cfg->adapters[0].type, "com");
        assert_int_equal(cfg->route_count, 0);
        assert_null(cfg->broker.admin_security);
        sb_config_free(cfg);

        all = uncomment_examples(text);
        cfg = starter_ok("starter-uncommented.yaml", all);
        assert_string_equal(cfg->broker.data_dir, dirs[i]);
        assert_string_equal(cfg->broker.log_file, log);
        assert_non_null(cfg->broker.admin_security);
        assert_int_equal(cfg->adapter_count, 4);
        assert_string_equal(sb_config_adapter(cfg, "orders-in")->type, "pipe");
        assert_string_equal(sb_config_adapter(cfg, "audit-out")->type, "mailslot");
        assert_string_equal(SB_STREAM_CFG(sb_config_adapter(cfg, "mqtt"))->protocol, "mqtt");
        assert_int_equal(cfg->route_count, 1);
        assert_string_equal(sb_config_route(cfg, "orders-to-audit")->to[0], "audit-out");
        sb_config_free(cfg);
        free(all);
        sb_free(text);
    }
}

/* A path with a control character cannot be single-quoted: double quotes
 * with escapes carry it exactly. */
static void test_starter_control_chars(void **state)
{
    char *text = sb_config_starter("C:\\odd\tdir\\\"q\"", "C:\\x.yaml");
    sb_config *cfg;
    (void)state;
    assert_non_null(text);
    cfg = starter_ok("starter.yaml", text);
    assert_string_equal(cfg->broker.data_dir, "C:\\odd\tdir\\\"q\"");
    assert_string_equal(cfg->broker.log_file, "C:\\odd\tdir\\\"q\"\\switchboard.log");
    sb_config_free(cfg);
    sb_free(text);
}

/* ---- golden bad inputs: tests/data/config/bad-*.yaml + .expected ---- */

static void check_golden(const char *dir, const char *name, int update)
{
    char path[1024], expected_path[1024];
    size_t len;
    char *text, *got, *want;
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    int rc;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(expected_path, sizeof expected_path, "%.*s.expected", (int)(strlen(path) - 5), path);
    text = read_file(path, &len);
    assert_non_null(text);
    rc = sb_config_parse(&cfg, name, text, len, &errs);
    if (rc != SB_ECONFIG)
        fail_msg("%s: expected SB_ECONFIG, got %d", name, rc);
    got = printed(&errs);
    if (update) {
        FILE *f = fopen(expected_path, "wb");
        assert_non_null(f);
        fputs(got, f);
        fclose(f);
    }
    want = read_file(expected_path, NULL);
    if (want == NULL)
        fail_msg("%s: missing %s", name, expected_path);
    strip_cr(want);
    if (strcmp(got, want) != 0)
        fail_msg("%s: expected:\n%s\ngot:\n%s", name, want, got);
    free(want);
    free(got);
    free(text);
    sb_config_errors_clear(&errs);
}

static void test_golden(void **state)
{
    char *dir = data_path("config");
    int update = getenv("SB_UPDATE_GOLDEN") != NULL;
    DIR *d = opendir(dir);
    struct dirent *e;
    int count = 0;
    (void)state;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "bad-", 4) != 0 || n < 5 || strcmp(e->d_name + n - 5, ".yaml"))
            continue;
        check_golden(dir, e->d_name, update);
        count++;
    }
    closedir(d);
    free(dir);
    assert_true(count >= 10);
}

/* broker.http: defaults; loopback (IPv4, IPv6, localhost) without more,
 * other addresses only with anonymous: true; malformed addresses. */
static void test_http_listen(void **state)
{
    sb_config *cfg;
    char host[64], why[300];
    int port = -1, loopback = -1;
    (void)state;
    cfg = parse_ok("broker:\n  data_dir: x\n");
    assert_null(cfg->broker.http_listen);
    sb_config_free(cfg);
    cfg = parse_ok("broker:\n  http: { listen: 127.0.0.1:0 }\n");
    assert_string_equal(cfg->broker.http_listen, "127.0.0.1:0");
    assert_int_equal(cfg->broker.http_anonymous, 0);
    assert_int_equal(cfg->broker.http_per_queue, 0);
    assert_int_equal(cfg->broker.http_max_connections, 32);
    assert_int_equal(cfg->broker.http_timeout_ms, 10000);
    sb_config_free(cfg);
    sb_config_free(parse_ok("broker:\n  http: { listen: '[::1]:9180' }\n"));
    sb_config_free(parse_ok("broker:\n  http: { listen: 'localhost:9180' }\n"));
    sb_config_free(parse_ok("broker:\n  http: { listen: '0.0.0.0:9180', anonymous: true }\n"));
    expect_errors("broker:\n  http: { listen: '[::]:9180' }\n",
                  "t.yaml:2:19: broker.http.listen: [::]:9180 is not a loopback address: the "
                  "status page and the metrics would be open to anyone who can reach it, without "
                  "TLS or a login; set anonymous: true to allow that (and put a TLS reverse proxy "
                  "in front, see README)\n");
    expect_errors("broker:\n  http: { listen: 'example.com:80' }\n",
                  "t.yaml:2:19: broker.http.listen: host \"example.com\" is not a numeric address "
                  "(write e.g. 127.0.0.1:9180 or [::1]:9180; names are not resolved)\n");
    expect_errors("broker:\n  http: { listen: '127.0.0.1:99999' }\n",
                  "t.yaml:2:19: broker.http.listen: invalid port \"99999\" (must be 0..65535; 0: "
                  "any free port)\n");
    expect_errors("broker:\n  http: { anonymous: true }\n",
                  "t.yaml:2:9: broker.http.listen: required\n");
    assert_int_equal(sb_config_http_listen("localhost:80", host, sizeof host, &port, &loopback, why,
                                           sizeof why),
                     0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 80);
    assert_int_equal(loopback, 1);
    assert_int_equal(sb_config_http_listen("[::1]:1", host, sizeof host, &port, &loopback, why,
                                           sizeof why),
                     0);
    assert_string_equal(host, "::1");
    assert_int_equal(loopback, 1);
    assert_int_equal(sb_config_http_listen("10.1.2.3:1", host, sizeof host, &port, &loopback,
                                           why, sizeof why),
                     0);
    assert_int_equal(loopback, 0);
    assert_int_equal(sb_config_http_listen(":80", host, sizeof host, &port, &loopback, why,
                                           sizeof why),
                     SB_EINVAL);
    assert_int_equal(sb_config_http_listen("1.2.3.4", host, sizeof host, &port, &loopback, why,
                                           sizeof why),
                     SB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_values),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_error_unknown_keys),
        cmocka_unit_test(test_error_not_allowed),
        cmocka_unit_test(test_error_type),
        cmocka_unit_test(test_error_syntax),
        cmocka_unit_test(test_error_depth),
        cmocka_unit_test(test_error_kinds),
        cmocka_unit_test(test_error_document),
        cmocka_unit_test(test_error_numbers),
        cmocka_unit_test(test_error_required_and_names),
        cmocka_unit_test(test_error_routes),
        cmocka_unit_test(test_error_adapter_rules),
        cmocka_unit_test(test_mailslot),
        cmocka_unit_test(test_dde),
        cmocka_unit_test(test_mqtt_tls_anonymous),
        cmocka_unit_test(test_mqtt_bridge_keys),
        cmocka_unit_test(test_error_many),
        cmocka_unit_test(test_load_missing),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_agent_keys),
        cmocka_unit_test(test_agent_doc),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_copy_equal),
        cmocka_unit_test(test_copy_oom),
        cmocka_unit_test(test_oom),
        cmocka_unit_test(test_raw_keys),
        cmocka_unit_test(test_example_quickstart),
        cmocka_unit_test(test_example_full),
        cmocka_unit_test(test_sddl_syntax),
        cmocka_unit_test(test_sddl_in_config),
        cmocka_unit_test(test_starter),
        cmocka_unit_test(test_starter_control_chars),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_null_type),
        cmocka_unit_test(test_http_listen),
    };
    if (sb_adapter_keys_register_builtin(NULL) != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
