/*
 * sbctl, the real program ($SB_SBCTL), against a real broker, as an operator
 * or a script would run it:
 * - its exit codes, each listed in `sbctl --help` and each produced by the
 *   case it names (0 to 5);
 * - --json on every command `sbctl --help` lists: stdout is JSON, line by
 *   line;
 * - tls:HOST:PORT endpoints against the broker's TLS listener: verified
 *   with --ca, refused without it or with another CA, a client certificate
 *   (--cert/--key) naming the user, pub, sub and bench over TLS;
 * - tail: a live view through a subscription that is gone when sbctl ends,
 *   or soon after it was killed, and that the ACL restricts as any other;
 * - the progress line of dlq redrive and purge over many dead letters
 *   (--progress), which go in batches.
 */
#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SIGKILL
#define SIGKILL 9
#endif

#define RUN_MS 60000

/* {v0}: tests/data/tls. port0 plain jsonl, port1 TLS jsonl (client
 * certificates optional), port2 nothing listens. */
static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: '{v2}' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: secure\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: jsonl\n"
                             "    tls:\n"
                             "      cert: '{v0}/server.pem'\n"
                             "      key: '{v0}/server.key'\n"
                             "      ca: '{v0}/ca.pem'\n"
                             "      client_cert: optional\n"
                             "routes:\n"
                             "  - name: orders\n"
                             "    from: orders/#\n"
                             "  - name: audit\n"
                             "    from: audit/#\n";

/* The same listeners under an ACL ({v1}): anonymous clients may publish
 * anything and read nothing; alice (her certificate over TLS) reads
 * public/# only. */
static const char acl_config[] = "broker:\n"
                                 "  data_dir: '{data}'\n"
                                 "  admin: { endpoint: 'off' }\n"
                                 "  auth: { acl_file: '{v1}' }\n"
                                 "adapters:\n"
                                 "  - name: clients\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port0}\n"
                                 "    protocol: jsonl\n"
                                 "  - name: secure\n"
                                 "    type: tcp\n"
                                 "    listen: 127.0.0.1:{port1}\n"
                                 "    protocol: jsonl\n"
                                 "    tls:\n"
                                 "      cert: '{v0}/server.pem'\n"
                                 "      key: '{v0}/server.key'\n"
                                 "      ca: '{v0}/ca.pem'\n"
                                 "      client_cert: require\n"
                                 "routes: []\n";

static const char acl_file[] = "topic write #\n"
                               "user alice\n"
                               "topic read public/#\n";

static const char *sbctl_path(void)
{
    const char *p = getenv("SB_SBCTL");
    if (p == NULL || *p == '\0')
        fail_msg("SB_SBCTL is not set (ctest sets it)");
    return p;
}

/* sbctl ... must exit with want; returns its stdout (free()). */
static char *expect(int want, const char *what, char **err_out, const char *first, ...)
{
    char *argv[40], *out = NULL, *err = NULL;
    va_list ap;
    int n = 0, rc;

    argv[n++] = (char *)sbctl_path();
    va_start(ap, first);
    for (const char *a = first; a != NULL && n < 39; a = va_arg(ap, const char *))
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    rc = sbt_run(argv, NULL, RUN_MS, &out, &err);
    if (rc != want)
        fail_msg("%s: sbctl exited %d, expected %d\nstdout:\n%s\nstderr:\n%s", what, rc, want,
                 out, err);
    if (err_out != NULL)
        *err_out = err;
    else
        free(err);
    return out;
}

static void endpoint(char *out, size_t n, const char *scheme, int port)
{
    snprintf(out, n, "%s:127.0.0.1:%d", scheme, port);
}

/* This run's admin endpoint ({v2}): a pipe of its own on Windows, where
 * the default pipe name is one per machine. */
static void admin_endpoint(char *out, size_t n, const sbt_broker *b)
{
#ifdef _WIN32
    snprintf(out, n, "\\\\.\\pipe\\sbt-admin-%s", strrchr(b->dir, '-') + 1);
#else
    sbt_path(out, n, b->dir, "admin.sock");
#endif
}

static void start(sbt_broker *b, const char *name, const char *tmpl)
{
    char tls[SBT_PATH_MAX], admin[SBT_PATH_MAX];
    sbt_broker_init(b, name, 3);
    sbt_path(tls, sizeof(tls), sbt_test_data(), "tls");
    sbt_broker_set(b, 0, tls);
    admin_endpoint(admin, sizeof(admin), b);
    sbt_broker_set(b, 2, admin);
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);
}

/* Every line of out is a JSON object or array; returns how many. */
static int json_lines(const char *out, const char *what)
{
    int lines = 0;
    for (const char *p = out; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        json_error_t jerr;
        json_t *v = json_loadb(p, len, 0, &jerr);
        if (!json_is_object(v) && !json_is_array(v))
            fail_msg("%s --json: not a JSON line (%s): %.*s", what, jerr.text, (int)len, p);
        json_decref(v);
        lines++;
        p += len + (nl != NULL);
    }
    return lines;
}

/* The one JSON object sbctl printed (new reference). */
static json_t *json_of(const char *out, const char *what)
{
    json_error_t jerr;
    json_t *v = json_loads(out, 0, &jerr);
    if (!json_is_object(v))
        fail_msg("%s --json: expected one JSON object (%s): %s", what, jerr.text, out);
    return v;
}

/* ---- exit codes ---- */

static void test_exit_codes(void **state)
{
    sbt_broker *b = *state;
    char ep[64], closed[64], *out, *help = NULL;
    static const char *const codes[] = {"  0  ", "  1  ", "  2  ", "  3  ", "  4  ", "  5  "};

    /* listed, each of them */
    help = expect(0, "--help", NULL, "--help", NULL);
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strstr(strstr(help, "Exit status:"), codes[i]) == NULL)
            fail_msg("sbctl --help does not list exit status%s:\n%s", codes[i], help);
    free(help);

    start(b, "sbctl-exit", config);
    endpoint(ep, sizeof(ep), "tcp", b->port[0]);
    endpoint(closed, sizeof(closed), "tcp", b->port[2]);

    free(expect(0, "ping", NULL, "-e", ep, "ping", NULL));
    free(expect(1, "redrive of no subscription", NULL, "-e", ep, "dlq", "redrive", "nosuch",
                NULL));
    free(expect(1, "sub of no subscription", NULL, "-e", ep, "sub", "nosuch", NULL));
    free(expect(2, "unknown command", NULL, "nosuch", NULL));
    free(expect(2, "missing argument", NULL, "-e", ep, "pub", NULL));
    free(expect(2, "unknown option", NULL, "-e", ep, "ping", "--bogus", NULL));
    free(expect(2, "--cert without --key", NULL, "-e", ep, "ping", "--cert", "x.pem", NULL));
    free(expect(3, "nobody listening", NULL, "-e", closed, "ping", NULL));
    /* 4: see test_tail_acl; 5: */
    out = expect(5, "sub timing out", NULL, "-e", ep, "sub", "orders", "--count", "1",
                 "--timeout", "200ms", NULL);
    free(out);

    /* with --json, errors are JSON lines on stderr that name their code */
    {
        static const struct {
            int exit;
            const char *what, *endpoint_kind, *code;
        } json_errors[] = {{1, "sub of no subscription", "open", "SB_ENOTFOUND"},
                           {3, "nobody listening", "closed", "SB_ECONNREFUSED"}};
        for (size_t i = 0; i < sizeof json_errors / sizeof json_errors[0]; i++) {
            char *err = NULL;
            json_t *o;
            json_error_t jerr;
            int open = strcmp(json_errors[i].endpoint_kind, "open") == 0;
            free(expect(json_errors[i].exit, json_errors[i].what, &err, "-e", open ? ep : closed,
                        open ? "sub" : "ping", open ? "nosuch" : "--json", open ? "--json" : NULL,
                        NULL));
            o = json_loads(err, JSON_DISABLE_EOF_CHECK, &jerr);
            if (o == NULL || !json_is_string(json_object_get(o, "error")))
                fail_msg("%s --json: stderr is not a JSON error line: %s", json_errors[i].what,
                         err);
            assert_string_equal(sbt_str(o, "code"), json_errors[i].code);
            json_decref(o);
            free(err);
        }
    }
    b->passed = 1;
}

/* ---- --json ---- */

/* One case per command `sbctl --help` lists. */
typedef struct json_case {
    const char *name;
    int lines; /* JSON lines expected at least */
} json_case;

static void test_json_everywhere(void **state)
{
    sbt_broker *b = *state;
    static const json_case cases[] = {{"pub", 1},      {"sub", 1},        {"tail", 1},
                                      {"stats", 1},    {"dlq list", 0},   {"dlq redrive", 1},
                                      {"dlq purge", 1}, {"ping", 1},       {"bench", 1},
                                      {"passwd", 1},   {"route test", 1}, {"check", 1},
                                      {"compact", 1}};
    char ep[64], pwfile[SBT_PATH_MAX], *help, *out;
    json_t *o;
    int seen[sizeof(cases) / sizeof(cases[0])] = {0};

    start(b, "sbctl-json", config);
    endpoint(ep, sizeof(ep), "tcp", b->port[0]);
    sbt_path(pwfile, sizeof(pwfile), b->dir, "passwd");

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *n = cases[i].name;
        out = NULL;
        if (strcmp(n, "pub") == 0) {
            out = expect(0, n, NULL, "-e", ep, "pub", "orders/1", "hello", "--json", NULL);
            o = json_of(out, n);
            assert_int_equal(sbt_int(o, "published"), 1);
            assert_int_equal(sbt_int(o, "unrouted"), 0);
            json_decref(o);
        } else if (strcmp(n, "sub") == 0) {
            out = expect(0, n, NULL, "-e", ep, "sub", "orders", "--count", "1", "--timeout", "20s",
                         "--json", NULL);
            o = json_of(out, n);
            assert_string_equal(sbt_str(o, "payload"), "hello");
            json_decref(o);
        } else if (strcmp(n, "tail") == 0) {
            /* a new subscription gets the retained values at once */
            free(expect(0, "pub --retain", NULL, "-e", ep, "pub", "state/x", "on", "--retain",
                        NULL));
            out = expect(0, n, NULL, "-e", ep, "tail", "state/#", "--count", "1", "--timeout",
                         "20s", "--json", NULL);
            o = json_of(out, n);
            assert_string_equal(sbt_str(o, "topic"), "state/x");
            json_decref(o);
        } else if (strcmp(n, "stats") == 0) {
            out = expect(0, n, NULL, "-e", ep, "stats", "--json", NULL);
        } else if (strcmp(n, "dlq list") == 0) {
            out = expect(0, n, NULL, "-e", ep, "dlq", "list", "--json", NULL);
        } else if (strcmp(n, "dlq redrive") == 0) {
            out = expect(0, n, NULL, "-e", ep, "dlq", "redrive", "--json", NULL);
            o = json_of(out, n);
            assert_int_equal(sbt_int(o, "count"), 0);
            json_decref(o);
        } else if (strcmp(n, "dlq purge") == 0) {
            out = expect(0, n, NULL, "-e", ep, "dlq", "purge", "orders", "--yes", "--json", NULL);
            o = json_of(out, n);
            assert_string_equal(sbt_str(o, "sub"), "orders");
            json_decref(o);
        } else if (strcmp(n, "ping") == 0) {
            out = expect(0, n, NULL, "--json", "-e", ep, "ping", NULL);
            o = json_of(out, n);
            assert_string_equal(sbt_str(o, "op"), "pong");
            assert_true(sbt_int(o, "max_message") > 0);
            json_decref(o);
        } else if (strcmp(n, "bench") == 0) {
            out = expect(0, n, NULL, "-e", ep, "bench", "--messages", "50", "-d", "memory",
                         "--json", NULL);
        } else if (strcmp(n, "passwd") == 0) {
            out = expect(0, n, NULL, "passwd", "-c", "-b", "--iterations", "1000", "--json",
                         pwfile, "bob", "secret", NULL);
            o = json_of(out, n);
            assert_string_equal(sbt_str(o, "action"), "added");
            json_decref(o);
        } else if (strcmp(n, "route test") == 0) {
            out = expect(0, n, NULL, "-e", ep, "route", "test", "orders", "--topic", "orders/2",
                         "--json", NULL);
        } else if (strcmp(n, "check") == 0 || strcmp(n, "compact") == 0) {
            char admin[SBT_PATH_MAX];
            /* store maintenance holds every commit: the admin endpoint's only */
            free(expect(4, n, NULL, "-e", ep, n, "--json", NULL));
            admin_endpoint(admin, sizeof(admin), b);
            out = expect(0, n, NULL, "-e", admin, n, "--json", NULL);
            o = json_of(out, n);
            if (strcmp(n, "check") == 0)
                assert_true(json_is_true(json_object_get(o, "ok")));
            else
                assert_true(sbt_int(o, "after_bytes") > 0);
            json_decref(o);
        }
        assert_non_null(out);
        if (json_lines(out, n) < cases[i].lines)
            fail_msg("%s --json: expected JSON on stdout, got: %s", n, out);
        free(out);
    }

    /* every command of `sbctl --help` has its case above */
    help = expect(0, "--help", NULL, "--help", NULL);
    {
        char *p = strstr(help, "Commands:\n"), *end = strstr(help, "\n\n");
        assert_non_null(p);
        end = strstr(p, "\n\n");
        for (p = strchr(p, '\n') + 1; p < end; p = strchr(p, '\n') + 1) {
            char word[2][32] = {"", ""};
            char name[70];
            size_t k;
            if (strncmp(p, "  ", 2) != 0 || p[2] == ' ')
                continue; /* a summary on its own line */
            sscanf(p + 2, "%31s %31s", word[0], word[1]);
            if (strcmp(word[0], "dlq") == 0 || strcmp(word[0], "route") == 0)
                snprintf(name, sizeof(name), "%s %s", word[0], word[1]);
            else
                snprintf(name, sizeof(name), "%s", word[0]);
            for (k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
                if (strcmp(cases[k].name, name) == 0)
                    break;
            if (k == sizeof(cases) / sizeof(cases[0]))
                fail_msg("sbctl %s has no --json case in this test", name);
            seen[k] = 1;
        }
    }
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
        if (!seen[k])
            fail_msg("`sbctl --help` does not list %s", cases[k].name);
    free(help);
    b->passed = 1;
}

/* ---- TLS ---- */

static void test_tls_endpoints(void **state)
{
    sbt_broker *b = *state;
    char tls[64], plain[64], ca[SBT_PATH_MAX], other[SBT_PATH_MAX], cert[SBT_PATH_MAX],
        key[SBT_PATH_MAX], dir[SBT_PATH_MAX], *out, *err;
    json_t *o;

    start(b, "sbctl-tls", config);
    endpoint(plain, sizeof(plain), "tls", b->port[0]);
    snprintf(tls, sizeof(tls), "tls:localhost:%d", b->port[1]);
    sbt_path(dir, sizeof(dir), sbt_test_data(), "tls");
    sbt_path(ca, sizeof(ca), dir, "ca.pem");
    sbt_path(other, sizeof(other), dir, "other-ca.pem");
    sbt_path(cert, sizeof(cert), dir, "alice.pem");
    sbt_path(key, sizeof(key), dir, "alice.key");

    /* verified with --ca; no user without a certificate */
    out = expect(0, "ping over TLS", NULL, "-e", tls, "--ca", ca, "ping", "--json", NULL);
    o = json_of(out, "ping");
    assert_string_equal(sbt_str(o, "endpoint"), tls);
    assert_true(json_is_null(json_object_get(o, "user")));
    json_decref(o);
    free(out);
    /* an IP address is checked against the certificate's IP names */
    {
        char ip[64];
        endpoint(ip, sizeof(ip), "tls", b->port[1]);
        free(expect(0, "ping by IP", NULL, "--ca", ca, "-e", ip, "ping", NULL));
    }
    /* alice's certificate: the broker knows her */
    out = expect(0, "ping with a certificate", NULL, "-e", tls, "--ca", ca, "--cert", cert,
                 "--key", key, "ping", "--json", NULL);
    o = json_of(out, "ping");
    assert_string_equal(sbt_str(o, "user"), "alice");
    json_decref(o);
    free(out);

    /* not trusted: the system's CAs do not know the test CA, nor does
     * another CA */
    free(expect(3, "no --ca", &err, "-e", tls, "ping", NULL));
    assert_non_null(strstr(err, "not trusted"));
    free(err);
    free(expect(3, "another CA", &err, "-e", tls, "--ca", other, "ping", NULL));
    assert_non_null(strstr(err, "not trusted"));
    free(err);
    /* TLS to a listener that does not speak it */
    free(expect(3, "TLS to plain TCP", NULL, "-e", plain, "--ca", ca, "ping", NULL));

    /* messages over TLS both ways, and a bench */
    free(expect(0, "pub over TLS", NULL, "-e", tls, "--ca", ca, "pub", "orders/tls", "secret",
                NULL));
    out = expect(0, "sub over TLS", NULL, "-e", tls, "--ca", ca, "sub", "orders", "--count", "1",
                 "--timeout", "20s", NULL);
    assert_string_equal(out, "orders/tls\tsecret\n");
    free(out);
    free(expect(0, "bench over TLS", NULL, "--ca", ca, "bench", "-e", tls, "--messages", "200",
                "-d", "memory", NULL));
    b->passed = 1;
}

/* ---- bench against a scripted broker ---- */

/* Plays the broker for `sbctl bench -p 2 -c 1 -w 100 --messages 200` on a
 * listener of the test's own (the real broker cannot be made to delay its
 * deliveries on purpose): the subscription, then every puback at once
 * (queues 0 for the last `unrouted` publishes of the second producer), and
 * the deliveries only after 1 s, the way a loaded broker or machine may
 * deliver well after it acknowledged. Returns sbctl's exit code with its
 * output in *out (free()); *early is set if sbctl detached before the
 * deliveries came. */
static int scripted_bench(int unrouted, char **out, int *early)
{
    char dir[SBT_PATH_MAX], path[SBT_PATH_MAX], ep[64], line[4096], sub[80];
    char *argv[20], *batch;
    sbt_listener *l = sbt_listen(0);
    sbt_tcp *cons, *prod[2];
    sbt_proc p;
    json_t *req;
    size_t cap = 200 * 200, len;
    int n, rc;

    assert_non_null(l);
    sbt_mkdtemp(dir, sizeof(dir), "sbctl-bench");
    sbt_path(path, sizeof(path), dir, "bench.out");
    endpoint(ep, sizeof(ep), "tcp", sbt_listener_port(l));
    n = 0;
    argv[n++] = (char *)sbctl_path();
    argv[n++] = "-e";
    argv[n++] = ep;
    argv[n++] = "bench";
    argv[n++] = "--messages";
    argv[n++] = "200";
    argv[n++] = "-p";
    argv[n++] = "2";
    argv[n++] = "-c";
    argv[n++] = "1";
    argv[n++] = "-w";
    argv[n++] = "100";
    argv[n++] = "-d";
    argv[n++] = "memory";
    argv[n] = NULL;
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, NULL, path), 0);

    /* the consumer attaches first, then the producers connect */
    cons = sbt_accept(l, 20000);
    assert_non_null(cons);
    assert_true(sbt_tcp_read_line(cons, line, sizeof(line), 20000) > 0);
    req = json_loads(line, 0, NULL);
    assert_non_null(req);
    assert_string_equal(sbt_str(req, "op"), "sub");
    snprintf(sub, sizeof(sub), "%s", sbt_str(req, "sub"));
    n = snprintf(line, sizeof(line), "{\"op\":\"subscribed\",\"id\":%lld,\"sub\":\"%s\"}\n",
                 (long long)sbt_int(req, "id"), sub);
    json_decref(req);
    assert_int_equal(sbt_tcp_write(cons, line, (size_t)n), 0);
    for (int i = 0; i < 2; i++) {
        prod[i] = sbt_accept(l, 20000);
        assert_non_null(prod[i]);
    }

    /* 100 publishes from each (the window), then all 200 pubacks at once */
    batch = malloc(cap);
    assert_non_null(batch);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 100; k++)
            assert_true(sbt_tcp_read_line(prod[i], line, sizeof(line), 20000) > 0);
    for (int i = 0; i < 2; i++) {
        len = 0;
        for (int k = 1; k <= 100; k++)
            len += (size_t)snprintf(batch + len, cap - len,
                                    "{\"op\":\"puback\",\"id\":%d,\"msg_id\":%d,\"queues\":%d}\n",
                                    k, i * 100 + k, i == 1 && k > 100 - unrouted ? 0 : 1);
        assert_int_equal(sbt_tcp_write(prod[i], batch, len), 0);
    }

    /* A bench that gave up on the deliveries detaches now (unsub). */
    *early = sbt_tcp_read_line(cons, line, sizeof(line), 1000) >= 0;
    if (!*early) {
        int routed = 200 - unrouted;
        len = 0;
        for (int k = 0; k < routed; k++)
            len += (size_t)snprintf(batch + len, cap - len,
                                    "{\"op\":\"msg\",\"sub\":\"%s\",\"msg_id\":%d,\"topic\":\"t\","
                                    "\"payload\":\"T1 I%d x\"}\n",
                                    sub, k + 1, k);
        assert_int_equal(sbt_tcp_write(cons, batch, len), 0);
        for (int k = 0; k < routed; k++) {
            assert_true(sbt_tcp_read_line(cons, line, sizeof(line), 20000) > 0);
            assert_non_null(strstr(line, "\"op\":\"ack\""));
        }
        assert_true(sbt_tcp_read_line(cons, line, sizeof(line), 20000) > 0);
    }
    req = json_loads(line, 0, NULL);
    assert_non_null(req);
    assert_string_equal(sbt_str(req, "op"), "unsub");
    n = snprintf(line, sizeof(line), "{\"op\":\"unsubscribed\",\"id\":%lld,\"sub\":\"%s\"}\n",
                 (long long)sbt_int(req, "id"), sub);
    json_decref(req);
    assert_int_equal(sbt_tcp_write(cons, line, (size_t)n), 0);

    assert_true(sbt_proc_wait(&p, 20000));
    rc = (int)p.exit_status;
    sbt_proc_release(&p);
    *out = sbt_read_file(path, NULL);
    assert_non_null(*out);
    free(batch);
    sbt_tcp_close(cons);
    sbt_tcp_close(prod[0]);
    sbt_tcp_close(prod[1]);
    sbt_listener_close(l);
    sbt_rmtree(dir);
    return rc;
}

/* A bench ends when every acknowledged publish was delivered, however late
 * the deliveries come; a run short of messages says where they went. */
static void test_bench_counts(void **state)
{
    char *out;
    int early;

    (void)state;
    if (scripted_bench(0, &out, &early) != 0 || early)
        fail_msg("bench ended %s the deliveries:\n%s", early ? "before" : "after", out);
    assert_null(strstr(out, "FAILED"));
    free(out);

    /* 10 publishes routed nowhere: FAILED, and why */
    assert_int_equal(scripted_bench(10, &out, &early), 1);
    assert_false(early);
    if (strstr(out, "190 of 200 messages delivered: 10 publishes matched no subscription") == NULL)
        fail_msg("no reason for the missing messages:\n%s", out);
    free(out);
}

/* ---- tail ---- */

/* The tail subscriptions stats lists (through plain port0). */
static int tails(sbt_broker *b)
{
    char ep[64], *out;
    int n;
    endpoint(ep, sizeof(ep), "tcp", b->port[0]);
    out = expect(0, "stats", NULL, "-e", ep, "stats", "--json", NULL);
    n = sbt_count(out, "\"sbctl-tail-");
    free(out);
    return n;
}

static void test_tail(void **state)
{
    sbt_broker *b = *state;
    char ep[64], path[SBT_PATH_MAX], *text;
    char *argv[12];
    sbt_proc p;
    int64_t deadline;
    sbt_conn *c;

    start(b, "sbctl-tail", config);
    endpoint(ep, sizeof(ep), "tcp", b->port[0]);
    c = sbt_connect(b->port[0]);

    /* a tail prints what matches from now on, and leaves nothing behind */
    sbt_path(path, sizeof(path), b->dir, "tail.out");
    argv[0] = (char *)sbctl_path();
    argv[1] = "-e";
    argv[2] = ep;
    argv[3] = "tail";
    argv[4] = "orders/#";
    argv[5] = "alerts/+";
    argv[6] = "--count";
    argv[7] = "3";
    argv[8] = NULL;
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, NULL, path), 0);
    sbt_waiting_for("the tail's subscription");
    for (deadline = sbt_now_ms() + 20000; tails(b) == 0; sbt_poll_pause(50))
        if (sbt_now_ms() > deadline)
            fail_msg("no tail subscription appeared");
    sbt_pub(c, "orders/1", "first", 2); /* the route's queue and the tail */
    sbt_pub(c, "audit/1", "not for the tail", 1);
    sbt_pub(c, "alerts/fire", "second", 1);
    sbt_pub(c, "orders/2", "third", 2);
    assert_true(sbt_proc_wait(&p, 20000));
    assert_int_equal(p.exit_status, 0);
    sbt_proc_release(&p);
    text = sbt_read_file(path, NULL);
    assert_string_equal(text, "orders/1\tfirst\nalerts/fire\tsecond\norders/2\tthird\n");
    free(text);
    assert_int_equal(tails(b), 0);
    /* the route's queue still has its messages: the tail took none */
    assert_int_equal(sbt_queue_int(c, "orders", "depth"), 2);

#ifndef _WIN32
    /* Ctrl-C: sbctl detaches and deletes the subscription before it exits
     * (not 10 s later). On Windows a console Ctrl-C reaches only processes
     * sharing the sender's console, which this harness's children do not. */
    argv[5] = NULL;
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, NULL, path), 0);
    for (deadline = sbt_now_ms() + 20000; tails(b) == 0; sbt_poll_pause(50))
        if (sbt_now_ms() > deadline)
            fail_msg("no tail subscription appeared");
    sbt_pub(c, "orders/4", "seen before Ctrl-C", 2);
    for (deadline = sbt_now_ms() + 20000;; sbt_poll_pause(50)) {
        text = sbt_read_file(path, NULL);
        if (text != NULL && strstr(text, "seen before Ctrl-C") != NULL)
            break;
        free(text);
        if (sbt_now_ms() > deadline)
            fail_msg("the tail did not print the message before Ctrl-C");
    }
    free(text);
    sbt_proc_signal(&p, SIGINT);
    assert_true(sbt_proc_wait(&p, 10000));
    assert_int_equal(p.exit_status, 128 + SIGINT);
    sbt_proc_release(&p);
    assert_int_equal(tails(b), 0);
#endif

    /* killed, its subscription goes by itself (10 s without a consumer) */
    argv[5] = NULL;
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, NULL, path), 0);
    for (deadline = sbt_now_ms() + 20000; tails(b) == 0; sbt_poll_pause(50))
        if (sbt_now_ms() > deadline)
            fail_msg("no tail subscription appeared");
    sbt_proc_signal(&p, SIGKILL);
    assert_true(sbt_proc_wait(&p, 10000));
    sbt_proc_release(&p);
    sbt_pub(c, "orders/3", "while nobody tails", 2);
    sbt_waiting_for("the killed tail's subscription to expire");
    for (deadline = sbt_now_ms() + 40000; tails(b) != 0; sbt_poll_pause(200))
        if (sbt_now_ms() > deadline)
            fail_msg("the killed tail's subscription is still there after 40 s");
    sbt_close(c);
    b->passed = 1;
}

/* tail under an ACL, over TLS with alice's certificate; and exit code 4. */
static void test_tail_acl(void **state)
{
    sbt_broker *b = *state;
    char plain[64], tls[64], dir[SBT_PATH_MAX], ca[SBT_PATH_MAX], cert[SBT_PATH_MAX],
        key[SBT_PATH_MAX], acl[SBT_PATH_MAX], path[SBT_PATH_MAX], *err, *text;
    char *argv[16];
    int64_t deadline;
    sbt_proc p;
    sbt_conn *c;

    sbt_broker_init(b, "sbctl-acl", 3);
    sbt_path(dir, sizeof(dir), sbt_test_data(), "tls");
    sbt_path(acl, sizeof(acl), b->dir, "acl");
    sbt_write_file(acl, acl_file, strlen(acl_file));
    sbt_broker_set(b, 0, dir);
    sbt_broker_set(b, 1, acl);
    sbt_broker_config(b, acl_config);
    sbt_broker_start(b);
    endpoint(plain, sizeof(plain), "tcp", b->port[0]);
    snprintf(tls, sizeof(tls), "tls:localhost:%d", b->port[1]);
    sbt_path(ca, sizeof(ca), dir, "ca.pem");
    sbt_path(cert, sizeof(cert), dir, "alice.pem");
    sbt_path(key, sizeof(key), dir, "alice.key");

    /* 4: refused for lack of rights */
    free(expect(4, "dlq list under an ACL", &err, "-e", plain, "dlq", "list", NULL));
    assert_non_null(strstr(err, "SB_EAUTH"));
    free(err);
    free(expect(4, "tail of what alice may not read", &err, "-e", tls, "--ca", ca, "--cert", cert,
                "--key", key, "tail", "secret/#", "--timeout", "1s", NULL));
    assert_non_null(strstr(err, "SB_EAUTH"));
    free(err);
    /* the client certificate is required here */
    free(expect(3, "no certificate", NULL, "-e", tls, "--ca", ca, "ping", NULL));

    /* '#' is granted in part: alice sees public/ only */
    sbt_path(path, sizeof(path), b->dir, "tail.out");
    {
        char *args[] = {(char *)sbctl_path(), "-e", tls,    "--ca",    ca, "--cert", cert,
                        "--key",              key,  "tail", "#",       "--count", "1", NULL};
        memcpy(argv, args, sizeof(args));
    }
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, NULL, path), 0);
    c = sbt_connect(b->port[0]);
    sbt_waiting_for("alice's tail");
    for (deadline = sbt_now_ms() + 20000;; sbt_poll_pause(50)) {
        /* anonymous clients see no stats here (they may read nothing): a
         * publish that reaches a queue tells that the tail listens, on a
         * topic alice may not read */
        json_t *r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "secret/probe",
                             "payload", "probe");
        int64_t queues = sbt_int(r, "queues");
        json_decref(r);
        if (queues == 1)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("alice's tail did not subscribe");
    }
    sbt_pub(c, "secret/plan", "hidden", 1);
    sbt_pub(c, "public/news", "shown", 1);
    assert_true(sbt_proc_wait(&p, 20000));
    assert_int_equal(p.exit_status, 0);
    sbt_proc_release(&p);
    text = sbt_read_file(path, NULL);
    if (strcmp(text, "public/news\tshown\n") != 0)
        fail_msg("alice's tail printed:\n%s", text);
    free(text);
    sbt_close(c);
    b->passed = 1;
}

/* ---- progress of dlq redrive and purge ---- */

#define DEAD 2500

static void test_dlq_progress(void **state)
{
    sbt_broker *b = *state;
    char ep[64], n[16], *out, *err;
    json_t *o;
    sbt_conn *c;

    start(b, "sbctl-dlq", config);
    endpoint(ep, sizeof(ep), "tcp", b->port[0]);
    c = sbt_connect(b->port[0]);
    snprintf(n, sizeof(n), "%d", DEAD);
    /* messages that expire unread become dead letters */
    free(expect(0, "pub orders", NULL, "-e", ep, "pub", "orders/x", "o", "--count", n, "--ttl",
                "1ms", NULL));
    free(expect(0, "pub audit", NULL, "-e", ep, "pub", "audit/x", "a", "--count", n, "--ttl",
                "1ms", NULL));
    sbt_wait_queue_int(c, "orders", "dead", DEAD, 30000);
    sbt_wait_queue_int(c, "audit", "dead", DEAD, 30000);

    out = expect(0, "redrive", &err, "-e", ep, "dlq", "redrive", "orders", "--progress", NULL);
    assert_string_equal(out, "redrove 2500 dead letters of orders\n");
    if (strstr(err, "sbctl: dlq redrive: redrove 1000 dead letters so far") == NULL)
        fail_msg("no progress line from dlq redrive --progress:\n%s", err);
    free(out);
    free(err);

    out = expect(0, "purge", &err, "-e", ep, "dlq", "purge", "audit", "--yes", "--progress",
                 "--json", NULL);
    o = json_of(out, "purge");
    assert_int_equal(sbt_int(o, "count"), DEAD);
    json_decref(o);
    if (strstr(err, "sbctl: dlq purge: purged 1000 dead letters so far") == NULL)
        fail_msg("no progress line from dlq purge --progress:\n%s", err);
    free(out);
    free(err);
    /* without --progress, and stderr no terminal: quiet */
    out = expect(0, "quiet purge", &err, "-e", ep, "dlq", "purge", "audit", "--yes", NULL);
    assert_string_equal(out, "purged 0 dead letters of audit\n");
    assert_string_equal(err, "");
    free(out);
    free(err);
    /* the list is empty now */
    out = expect(0, "dlq list", NULL, "-e", ep, "dlq", "list", "audit", "--json", NULL);
    assert_string_equal(out, "");
    free(out);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exit_codes, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_json_everywhere, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_tls_endpoints, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_bench_counts, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_tail, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_tail_acl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_dlq_progress, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
