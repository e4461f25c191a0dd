/*
 * TLS on tcp adapters, with the checked-in certificates of tests/data/tls
 * (make-certs.sh there): raw line producers over TLS driven by
 * `openssl s_client` (TLS 1.2 and 1.3, the minimum version, client
 * certificates required or optional, the CN of a verified certificate as
 * the user), TLS client adapters of the broker talking to its own TLS
 * listeners in both directions (bulk data and backpressure included),
 * client adapters the server refuses (no certificate, wrong name, expired
 * certificate) or that do not verify, unusable certificate/key/CA files
 * refused at startup with the file and OpenSSL's reason, renewed files
 * picked up by a reload (bad ones keeping the certificate in use), and
 * non-TLS or silent clients dropped while the broker keeps serving.
 *
 * The s_client tests need the openssl program ($SB_OPENSSL, set by CMake on
 * Linux builds): without it they are skipped (Windows under Wine); the
 * others run everywhere.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* {v0} is tests/data/tls. */
static const char header[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n";

/* Listeners for s_client: optional and required client certificates, TLS
 * 1.3 only, and a sink. */
static const char listeners[] = "  - name: secure\n"
                                "    type: tcp\n"
                                "    listen: 127.0.0.1:{port1}\n"
                                "    framing: line\n"
                                "    topic: tls/{adapter}\n"
                                "    tls:\n"
                                "      cert: '{v0}/server.pem'\n"
                                "      key: '{v0}/server.key'\n"
                                "      ca: '{v0}/ca.pem'\n"
                                "      client_cert: optional\n"
                                "  - name: strict\n"
                                "    type: tcp\n"
                                "    listen: 127.0.0.1:{port2}\n"
                                "    framing: line\n"
                                "    topic: tls/{adapter}\n"
                                "    tls:\n"
                                "      cert: '{v0}/server.pem'\n"
                                "      key: '{v0}/server.key'\n"
                                "      ca: '{v0}/ca.pem'\n"
                                "      client_cert: require\n"
                                "  - name: modern\n"
                                "    type: tcp\n"
                                "    listen: 127.0.0.1:{port3}\n"
                                "    framing: line\n"
                                "    topic: tls/{adapter}\n"
                                "    tls:\n"
                                "      cert: '{v0}/server.pem'\n"
                                "      key: '{v0}/server.key'\n"
                                "      min_version: '1.3'\n"
                                "  - name: feed\n"
                                "    type: tcp\n"
                                "    listen: 127.0.0.1:{port4}\n"
                                "    framing: line\n"
                                "    tls:\n"
                                "      cert: '{v0}/server.pem'\n"
                                "      key: '{v0}/server.key'\n"
                                "routes:\n"
                                "  - name: tls-in\n"
                                "    from: tls/#\n"
                                "  - name: to-feed\n"
                                "    from: feed/#\n"
                                "    to: feed\n";

/* The broker's TLS clients dialing its own TLS listeners: uplink (a sink,
 * with alice's certificate) -> secure (a source requiring certificates),
 * tlsout (a sink listener) -> downlink (a source client checking the name
 * localhost). The small max_depth of the queues they feed makes the
 * sources pause reading (and resume) while the test consumes. */
static const char loops[] = "  - name: secure\n"
                            "    type: tcp\n"
                            "    listen: 127.0.0.1:{port1}\n"
                            "    framing: line\n"
                            "    topic: tls/{adapter}\n"
                            "    max_message: 65536\n"
                            "    tls:\n"
                            "      cert: '{v0}/server.pem'\n"
                            "      key: '{v0}/server.key'\n"
                            "      ca: '{v0}/ca.pem'\n"
                            "      client_cert: require\n"
                            "  - name: uplink\n"
                            "    type: tcp\n"
                            "    connect: 127.0.0.1:{port1}\n"
                            "    framing: line\n"
                            "    reconnect_backoff: 20ms\n"
                            "    reconnect_max_backoff: 200ms\n"
                            "    tls:\n"
                            "      cert: '{v0}/alice.pem'\n"
                            "      key: '{v0}/alice.key'\n"
                            "      ca: '{v0}/ca.pem'\n"
                            "  - name: tlsout\n"
                            "    type: tcp\n"
                            "    listen: 127.0.0.1:{port2}\n"
                            "    framing: line\n"
                            "    tls:\n"
                            "      cert: '{v0}/server.pem'\n"
                            "      key: '{v0}/server.key'\n"
                            "  - name: downlink\n"
                            "    type: tcp\n"
                            "    connect: 127.0.0.1:{port2}\n"
                            "    framing: line\n"
                            "    topic: down/{adapter}\n"
                            "    max_message: 65536\n"
                            "    reconnect_backoff: 20ms\n"
                            "    reconnect_max_backoff: 200ms\n"
                            "    tls:\n"
                            "      ca: '{v0}/ca.pem'\n"
                            "      server_name: localhost\n"
                            "routes:\n"
                            "  - name: tls-in\n"
                            "    from: tls/#\n"
                            "    durability: batched\n"
                            "    max_depth: 16\n"
                            "  - name: down-in\n"
                            "    from: down/#\n"
                            "    durability: batched\n"
                            "    max_depth: 16\n"
                            "  - name: up\n"
                            "    from: up/#\n"
                            "    to: uplink\n"
                            "    durability: batched\n"
                            "  - name: out\n"
                            "    from: out/#\n"
                            "    to: tlsout\n"
                            "    durability: batched\n";

/* Clients the servers refuse, or that do not check. */
static const char refusals[] = "  - name: strict\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port1}\n"
                               "    framing: line\n"
                               "    topic: tls/{adapter}\n"
                               "    tls:\n"
                               "      cert: '{v0}/server.pem'\n"
                               "      key: '{v0}/server.key'\n"
                               "      ca: '{v0}/ca.pem'\n"
                               "      client_cert: require\n"
                               "  - name: expired\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port2}\n"
                               "    framing: line\n"
                               "    topic: tls/{adapter}\n"
                               "    tls:\n"
                               "      cert: '{v0}/expired.pem'\n"
                               "      key: '{v0}/expired.key'\n"
                               "  - name: nocert\n"
                               "    type: tcp\n"
                               "    connect: 127.0.0.1:{port1}\n"
                               "    framing: line\n"
                               "    reconnect_backoff: 20ms\n"
                               "    reconnect_max_backoff: 100ms\n"
                               "    tls: { ca: '{v0}/ca.pem' }\n"
                               "  - name: badname\n"
                               "    type: tcp\n"
                               "    connect: 127.0.0.1:{port1}\n"
                               "    framing: line\n"
                               "    reconnect_backoff: 20ms\n"
                               "    reconnect_max_backoff: 100ms\n"
                               "    tls:\n"
                               "      cert: '{v0}/alice.pem'\n"
                               "      key: '{v0}/alice.key'\n"
                               "      ca: '{v0}/ca.pem'\n"
                               "      server_name: wrong.example\n"
                               "  - name: stale\n"
                               "    type: tcp\n"
                               "    connect: 127.0.0.1:{port2}\n"
                               "    framing: line\n"
                               "    reconnect_backoff: 20ms\n"
                               "    reconnect_max_backoff: 100ms\n"
                               "    tls: { ca: '{v0}/ca.pem' }\n"
                               "  - name: trusting\n"
                               "    type: tcp\n"
                               "    connect: 127.0.0.1:{port2}\n"
                               "    framing: line\n"
                               "    tls: { verify: false }\n"
                               "routes:\n"
                               "  - name: tls-in\n"
                               "    from: tls/#\n"
                               "  - name: to-nocert\n"
                               "    from: nocert/#\n"
                               "    to: nocert\n"
                               "  - name: to-trusting\n"
                               "    from: trusting/#\n"
                               "    to: trusting\n";

static const char *tls_dir(void)
{
    static char dir[SBT_PATH_MAX];
    if (dir[0] == '\0')
        sbt_path(dir, sizeof(dir), sbt_test_data(), "tls");
    return dir;
}

/* Starts a broker on header + body; returns a jsonl connection. */
static sbt_conn *start(sbt_broker *b, const char *body)
{
    size_t n = strlen(header) + strlen(body) + 1;
    char *tmpl = malloc(n);
    assert_non_null(tmpl);
    snprintf(tmpl, n, "%s%s", header, body);
    sbt_broker_init(b, "tls", 5);
    sbt_broker_set(b, 0, tls_dir());
    sbt_broker_config(b, tmpl);
    free(tmpl);
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* The next delivery must have this topic and payload; acks it. */
static void expect(sbt_conn *c, const char *sub, const char *topic, const char *payload)
{
    json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "sub"), sub);
    assert_string_equal(sbt_str(m, "topic"), topic);
    assert_string_equal(sbt_str(m, "payload"), payload);
    sbt_ack(c, sub, sbt_int(m, "msg_id"));
    json_decref(m);
}

/* ---- openssl s_client ---- */

static const char *openssl_cli(void)
{
    const char *p = getenv("SB_OPENSSL");
    return p != NULL && p[0] != '\0' ? p : NULL;
}

/* Runs `openssl s_client` against 127.0.0.1:port, verifying the server with
 * the test CA, with `input` on its stdin (it ends the session at the end of
 * it), `cert` (NULL: none) as its certificate and up to 4 more arguments.
 * Returns its exit code. */
static int s_client(sbt_broker *b, int port, const char *input, const char *cert, const char *a1,
                    const char *a2)
{
    static int serial;
    char in[SBT_PATH_MAX], name[32], connect[32], ca[SBT_PATH_MAX], crt[SBT_PATH_MAX],
        key[SBT_PATH_MAX], file[64];
    char *argv[24], *out = NULL, *err = NULL;
    int n = 0, rc;

    snprintf(name, sizeof(name), "stdin-%d.txt", ++serial);
    sbt_path(in, sizeof(in), b->dir, name);
    sbt_write_file(in, input, strlen(input));
    snprintf(connect, sizeof(connect), "127.0.0.1:%d", port);
    sbt_path(ca, sizeof(ca), tls_dir(), "ca.pem");
    /* sh only to give it stdin: the harness's runner ignores it */
    argv[n++] = "/bin/sh";
    argv[n++] = "-c";
    argv[n++] = "in=$1; shift; exec \"$@\" <\"$in\"";
    argv[n++] = "sh";
    argv[n++] = in;
    argv[n++] = (char *)openssl_cli();
    argv[n++] = "s_client";
    argv[n++] = "-connect";
    argv[n++] = connect;
    argv[n++] = "-CAfile";
    argv[n++] = ca;
    argv[n++] = "-verify_return_error";
    argv[n++] = "-quiet";
    argv[n++] = "-no_ign_eof";
    if (cert != NULL) {
        snprintf(file, sizeof(file), "%s.pem", cert);
        sbt_path(crt, sizeof(crt), tls_dir(), file);
        snprintf(file, sizeof(file), "%s.key", cert);
        sbt_path(key, sizeof(key), tls_dir(), file);
        argv[n++] = "-cert";
        argv[n++] = crt;
        argv[n++] = "-key";
        argv[n++] = key;
    }
    if (a1 != NULL)
        argv[n++] = (char *)a1;
    if (a2 != NULL)
        argv[n++] = (char *)a2;
    argv[n] = NULL;
    rc = sbt_run(argv, b->dir, 20000, &out, &err);
    if (getenv("SBT_VERBOSE") != NULL)
        fprintf(stderr, "s_client %s -> %d\nstdout: %s\nstderr: %s\n", connect, rc, out, err);
    free(out);
    free(err);
    return rc;
}

/* Messages published over TLS (1.3, 1.2, a 1.3-only listener) reach a
 * plain jsonl subscriber. */
static void test_publish(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char line[200];
    if (openssl_cli() == NULL)
        skip();
    c = start(b, listeners);
    snprintf(line, sizeof(line), "[secure] listening on tcp 127.0.0.1:%d (raw over TLS)",
             b->port[1]);
    sbt_broker_wait_log(b, line, 1, 1000);
    sbt_sub(c, "tls-in", NULL, 100);

    assert_int_equal(s_client(b, b->port[1], "hello\nworld\n", NULL, NULL, NULL), 0);
    expect(c, "tls-in", "tls/secure", "hello");
    expect(c, "tls-in", "tls/secure", "world");
    sbt_broker_wait_log(b, "TLS handshake done (TLSv1.3, ", 1, 5000);

    assert_int_equal(s_client(b, b->port[1], "twelve\n", NULL, "-tls1_2", NULL), 0);
    expect(c, "tls-in", "tls/secure", "twelve");
    sbt_broker_wait_log(b, "TLS handshake done (TLSv1.2, ", 1, 5000);

    assert_int_equal(s_client(b, b->port[3], "thirteen\n", NULL, NULL, NULL), 0);
    expect(c, "tls-in", "tls/modern", "thirteen");
    sbt_wait_queue_int(c, "tls-in", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "tls-in", "published"), 4);
    sbt_close(c);
    b->passed = 1;
}

/* TLS 1.1 is refused (minimum 1.2), and TLS 1.2 by a min_version 1.3
 * listener, each with a log line; nothing is published. */
static void test_min_version(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    if (openssl_cli() == NULL)
        skip();
    c = start(b, listeners);
    /* SECLEVEL=0: this openssl would not offer TLS 1.1 at all otherwise */
    assert_int_not_equal(
        s_client(b, b->port[1], "old\n", NULL, "-tls1_1", "-cipher=DEFAULT@SECLEVEL=0"), 0);
    sbt_broker_wait_log(b, "TLS handshake failed: SSL routines::unsupported protocol", 1, 5000);
    assert_int_not_equal(s_client(b, b->port[3], "twelve\n", NULL, "-tls1_2", NULL), 0);
    sbt_broker_wait_log(b, "[modern] peer 127.0.0.1:", 1, 5000);
    sbt_broker_wait_log(b, "TLS handshake failed: SSL routines::unsupported protocol", 2, 5000);
    /* the listener still serves TLS 1.3 */
    assert_int_equal(s_client(b, b->port[3], "thirteen\n", NULL, NULL, NULL), 0);
    sbt_sub(c, "tls-in", NULL, 100);
    expect(c, "tls-in", "tls/modern", "thirteen");
    assert_int_equal(sbt_queue_int(c, "tls-in", "published"), 1);
    sbt_close(c);
    b->passed = 1;
}

/* client_cert: require refuses clients without a certificate or with one
 * from another CA; optional accepts the former, not the latter. A verified
 * certificate's CN is the user. */
static void test_client_certs(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char *log;
    if (openssl_cli() == NULL)
        skip();
    c = start(b, listeners);
    sbt_sub(c, "tls-in", NULL, 100);

    assert_int_equal(s_client(b, b->port[2], "from alice\n", "alice", NULL, NULL), 0);
    expect(c, "tls-in", "tls/strict", "from alice");
    sbt_broker_wait_log(b, "[strict] peer 127.0.0.1:", 1, 5000);
    sbt_broker_wait_log(b, "), authenticated as alice", 1, 5000);

    /* TLS 1.3 clients learn of the refusal after their handshake: the exit
     * code of s_client says little; the broker's log and queue tell. */
    s_client(b, b->port[2], "anonymous\n", NULL, NULL, NULL);
    sbt_broker_wait_log(b, "TLS handshake failed: SSL routines::peer did not return a certificate",
                        1, 5000);
    s_client(b, b->port[2], "from mallory\n", "mallory", NULL, NULL);
    sbt_broker_wait_log(b,
                        "TLS handshake failed: SSL routines::certificate verify failed (unable "
                        "to get local issuer certificate)",
                        1, 5000);
    s_client(b, b->port[1], "mallory again\n", "mallory", NULL, NULL);
    sbt_broker_wait_log(b,
                        "TLS handshake failed: SSL routines::certificate verify failed (unable "
                        "to get local issuer certificate)",
                        2, 5000);

    /* optional: no certificate is fine, and then there is no user */
    sbt_broker_mark_log(b);
    assert_int_equal(s_client(b, b->port[1], "no cert\n", NULL, NULL, NULL), 0);
    expect(c, "tls-in", "tls/secure", "no cert");
    assert_int_equal(s_client(b, b->port[1], "alice, optional\n", "alice", "-tls1_2", NULL), 0);
    expect(c, "tls-in", "tls/secure", "alice, optional");
    sbt_broker_wait_log(b, "TLS handshake done (TLSv1.2, ", 1, 5000);
    log = sbt_broker_log_since(b);
    assert_int_equal(sbt_count(log, "authenticated as alice"), 1);
    assert_int_equal(sbt_count(log, "TLS handshake done"), 2);
    free(log);
    assert_int_equal(sbt_queue_int(c, "tls-in", "published"), 3);
    sbt_close(c);
    b->passed = 1;
}

/* A raw sink on a TLS listener writes to an s_client; that client's end
 * without a close_notify (killed) is logged as such. */
static void test_sink_to_s_client(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    sbt_proc p;
    char out[SBT_PATH_MAX], connect[32], ca[SBT_PATH_MAX];
    char *argv[] = {
        NULL,     "s_client", "-connect", connect, "-CAfile", ca, "-verify_return_error",
        "-quiet", NULL};
    int64_t deadline;
    char *got = NULL;
    if (openssl_cli() == NULL)
        skip();
    c = start(b, listeners);
    argv[0] = (char *)openssl_cli();
    snprintf(connect, sizeof(connect), "127.0.0.1:%d", b->port[4]);
    sbt_path(ca, sizeof(ca), tls_dir(), "ca.pem");
    sbt_path(out, sizeof(out), b->dir, "s_client.out");
    /* stdin is empty, and -quiet implies -ign_eof: it stays connected */
    memset(&p, 0, sizeof(p));
    assert_int_equal(sbt_spawn(&p, argv, b->dir, out), 0);
    sbt_broker_wait_log(b, "[feed] peer 127.0.0.1:", 1, 5000);
    sbt_broker_wait_log(b, "TLS handshake done (TLSv1.3, ", 1, 5000);

    sbt_pub(c, "feed/a", "alpha", 1);
    sbt_pub(c, "feed/b", "beta", 1);
    deadline = sbt_now_ms() + SBT_REPLY_MS;
    while (got == NULL || strstr(got, "alpha\nbeta\n") == NULL) {
        if (sbt_now_ms() > deadline)
            fail_msg("s_client did not print the deliveries; it wrote:\n%s", got);
        free(got);
        sbt_poll_pause(20);
        got = sbt_read_file(out, NULL);
    }
    free(got);
    sbt_wait_queue_int(c, "to-feed:feed", "acked", 2, 5000);

    sbt_proc_signal(&p, SIGKILL);
    assert_true(sbt_proc_wait(&p, 5000));
    sbt_proc_release(&p);
    sbt_broker_wait_log(b, "closed the connection without a TLS close_notify", 1, 5000);
    sbt_close(c);
    b->passed = 1;
}

/* ---- the broker's own TLS clients ---- */

static void make_payload(char *out, size_t len, int i)
{
    for (size_t k = 0; k < len; k++)
        out[k] = (char)('a' + (int)((k * 7 + (size_t)i) % 26));
    snprintf(out, len, "%06d", i);
    out[6] = '-';
    out[len] = '\0';
}

/* uplink -> secure and tlsout -> downlink: single messages, then a bulk
 * load in both directions at once (records, chunked writes and backed-up
 * readers over TLS), in order and complete. */
static void test_client_adapters(void **state)
{
    enum { BULK = 400, SIZE = 20000 };
    sbt_broker *b = *state;
    sbt_conn *c = start(b, loops), *pub;
    char *payload = malloc(SIZE + 1);
    assert_non_null(payload);

    sbt_broker_wait_log(b, "[secure] peer 127.0.0.1:", 1, 5000);
    sbt_broker_wait_log(b, "), authenticated as alice", 1, 5000);
    sbt_broker_wait_log(b, "[downlink] peer 127.0.0.1:", 1, 5000);
    sbt_sub(c, "tls-in", NULL, 10);
    sbt_sub(c, "down-in", NULL, 10);
    sbt_pub(c, "up/one", "one", 1);
    expect(c, "tls-in", "tls/secure", "one");
    sbt_pub(c, "out/two", "two", 1);
    expect(c, "down-in", "down/downlink", "two");

    pub = sbt_connect(b->port[0]);
    for (int i = 0; i < BULK; i++) {
        make_payload(payload, SIZE, i);
        sbt_pub(pub, "up/bulk", payload, 1);
        sbt_pub(pub, "out/bulk", payload, 1);
    }
    /* the two streams interleave; each is in order */
    for (int up = 0, down = 0; up < BULK || down < BULK;) {
        json_t *m = sbt_next_msg(c, SBT_REPLY_MS);
        const char *sub = sbt_str(m, "sub");
        int is_up = strcmp(sub, "tls-in") == 0;
        make_payload(payload, SIZE, is_up ? up++ : down++);
        assert_string_equal(sbt_str(m, "topic"), is_up ? "tls/secure" : "down/downlink");
        assert_string_equal(sbt_str(m, "payload"), payload);
        sbt_ack(c, sub, sbt_int(m, "msg_id"));
        json_decref(m);
    }
    assert_int_equal(sbt_queue_int(c, "tls-in", "published"), BULK + 1);
    assert_int_equal(sbt_queue_int(c, "down-in", "published"), BULK + 1);
    sbt_close(pub);
    free(payload);
    sbt_close(c);
    b->passed = 1;
}

/* Clients the servers refuse retry with backoff and keep their messages
 * queued (a TLS 1.3 server's refusal after the client's handshake included);
 * a client with verify: false talks to a server with an expired
 * certificate. */
static void test_refused_clients(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c = start(b, refusals);
    char line[300];

    sbt_pub(c, "nocert/held", "held", 1);
    snprintf(line, sizeof(line),
             "[nocert] peer 127.0.0.1:%d: TLS handshake failed: SSL routines::tlsv13 alert "
             "certificate required",
             b->port[1]);
    sbt_broker_wait_log(b, line, 3, 10000);
    assert_int_equal(sbt_queue_int(c, "to-nocert:nocert", "depth"), 1);
    assert_int_equal(sbt_queue_int(c, "to-nocert:nocert", "acked"), 0);
    sbt_broker_wait_log(b, "[strict] peer 127.0.0.1:", 1, 5000);
    sbt_broker_wait_log(b, "TLS handshake failed: SSL routines::peer did not return a certificate",
                        3, 5000);

    snprintf(line, sizeof(line),
             "[badname] peer 127.0.0.1:%d: TLS handshake failed: SSL routines::certificate verify "
             "failed (hostname mismatch)",
             b->port[1]);
    sbt_broker_wait_log(b, line, 2, 10000);
    snprintf(line, sizeof(line),
             "[stale] peer 127.0.0.1:%d: TLS handshake failed: SSL routines::certificate verify "
             "failed (certificate has expired)",
             b->port[2]);
    sbt_broker_wait_log(b, line, 2, 10000);

    sbt_sub(c, "tls-in", NULL, 10);
    sbt_pub(c, "trusting/x", "unverified", 1);
    expect(c, "tls-in", "tls/expired", "unverified");
    assert_int_equal(sbt_queue_int(c, "tls-in", "published"), 1);
    sbt_close(c);
    b->passed = 1;
}

/* Unusable files make `switchboard run` exit 1 naming the adapter, the
 * setting, the file and OpenSSL's reason. */
static void test_bad_files(void **state)
{
    static const struct {
        const char *cert, *key, *extra, *why;
    } cases[] = {
        {"missing.pem", "server.key", "", "tls.cert {dir}/missing.pem: cannot open: "},
        {"server.pem", "garbage.key", "", "tls.key {dir}/garbage.key: cannot load private key: "},
        {"server.pem", "ca.pem", "", "tls.key {dir}/ca.pem: cannot load private key: "},
        {"garbage.key", "server.key", "",
         "tls.cert {dir}/garbage.key: cannot load certificate chain: "},
        {"server.pem", "alice.key", "",
         "tls.key {dir}/alice.key does not match tls.cert {dir}/server.pem"},
        {"server.pem", "server.key", "      ca: '{v0}/server.key'\n",
         "tls.ca {dir}/server.key: cannot load CA certificates: "},
        {"server.pem", "server.key", "      ca: '{v0}/nothing-here.pem'\n",
         "tls.ca {dir}/nothing-here.pem: cannot open: "},
        {"server.pem", "server.key", "      ciphers: NO-SUCH-CIPHER\n",
         "tls.ciphers 'NO-SUCH-CIPHER': OpenSSL accepts none of them (SSL routines::no cipher "
         "match)"},
    };
    sbt_broker *b = *state;
    sbt_broker_init(b, "tls-files", 2);
    sbt_broker_set(b, 0, tls_dir());
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char tmpl[2048], why[1024], *log, *p;
        int rc;
        snprintf(tmpl, sizeof(tmpl),
                 "%s  - name: secure\n"
                 "    type: tcp\n"
                 "    listen: 127.0.0.1:{port1}\n"
                 "    tls:\n"
                 "      cert: '{v0}/%s'\n"
                 "      key: '{v0}/%s'\n"
                 "%s",
                 header, cases[i].cert, cases[i].key, cases[i].extra);
        sbt_broker_write_config(b, tmpl);
        /* the expected text, with {dir} for the certificates' directory */
        snprintf(why, sizeof(why), "cannot start: adapter secure: ");
        for (const char *w = cases[i].why; *w != '\0';) {
            size_t len = strlen(why);
            if (strncmp(w, "{dir}", 5) == 0) {
                snprintf(why + len, sizeof(why) - len, "%s", tls_dir());
                w += 5;
            } else {
                why[len] = *w++;
                why[len + 1] = '\0';
            }
        }
        sbt_broker_mark_log(b);
        rc = sbt_broker_try_failing_start(b, tmpl);
        log = sbt_broker_log_since(b);
        if (rc != 1 || (p = strstr(log, why)) == NULL)
            fail_msg("case %zu: exit code %d (want 1), want \"%s\" in the log:\n%s", i, rc, why,
                     log);
        free(log);
    }
    b->passed = 1;
}

#ifndef _WIN32
/* The first certificate in PEM text (a malloc'ed copy), or NULL. */
static char *first_cert(const char *text)
{
    static const char end[] = "-----END CERTIFICATE-----";
    const char *a = text != NULL ? strstr(text, "-----BEGIN CERTIFICATE-----") : NULL;
    const char *z = a != NULL ? strstr(a, end) : NULL;
    char *out;
    if (z == NULL)
        return NULL;
    z += sizeof(end) - 1;
    out = malloc((size_t)(z - a) + 1);
    assert_non_null(out);
    memcpy(out, a, (size_t)(z - a));
    out[z - a] = '\0';
    return out;
}

/* Asserts that the listener on port serves the first certificate of the
 * PEM file `want` (as `openssl s_client` prints what it got). */
static void expect_served(sbt_broker *b, int port, const char *want)
{
    char connect[32], *out = NULL, *err = NULL, *file, *got, *expected;
    char *argv[] = {"/bin/sh",
                    "-c",
                    "exec \"$@\" </dev/null",
                    "sh",
                    (char *)openssl_cli(),
                    "s_client",
                    "-connect",
                    connect,
                    NULL};
    snprintf(connect, sizeof(connect), "127.0.0.1:%d", port);
    sbt_run(argv, b->dir, 20000, &out, &err);
    file = sbt_read_file(want, NULL);
    assert_non_null(file);
    got = first_cert(out);
    expected = first_cert(file);
    assert_non_null(expected);
    if (got == NULL || strcmp(got, expected) != 0)
        fail_msg("127.0.0.1:%d does not serve %s; s_client said:\n%s\n%s", port, want, out, err);
    free(got);
    free(expected);
    free(file);
    free(out);
    free(err);
}

/* Copies tests/data/tls/<name> to path. */
static void copy_tls_file(const char *name, const char *path)
{
    char src[SBT_PATH_MAX], *text;
    size_t len;
    sbt_path(src, sizeof(src), tls_dir(), name);
    text = sbt_read_file(src, &len);
    assert_non_null(text);
    sbt_write_file(path, text, len);
    free(text);
}

static void reload(sbt_broker *b, const char *outcome)
{
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    sbt_broker_wait_log(b, outcome, 1, 10000);
}
#endif

/* A reload (SIGHUP) with the same file names picks up a renewed
 * certificate and key; files that do not load keep the certificate in
 * use, with an error naming them. */
static void test_reload_certificates(void **state)
{
#ifdef _WIN32
    (void)state;
    skip(); /* no SIGHUP, no s_client */
#else
    sbt_broker *b = *state;
    char cert[SBT_PATH_MAX], key[SBT_PATH_MAX], want[SBT_PATH_MAX], tmpl[2048],
        line[3 * SBT_PATH_MAX];
    if (openssl_cli() == NULL)
        skip();
    sbt_broker_init(b, "tls-reload", 2);
    sbt_broker_set(b, 0, tls_dir());
    sbt_path(cert, sizeof(cert), b->dir, "cert.pem");
    sbt_path(key, sizeof(key), b->dir, "key.pem");
    copy_tls_file("server.pem", cert);
    copy_tls_file("server.key", key);
    snprintf(tmpl, sizeof(tmpl),
             "%s  - name: renewed\n"
             "    type: tcp\n"
             "    listen: 127.0.0.1:{port1}\n"
             "    tls: { cert: '{dir}/cert.pem', key: '{dir}/key.pem' }\n",
             header);
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);
    expect_served(b, b->port[1], cert);

    /* Renewed in place (another certificate, another key). */
    copy_tls_file("alice.pem", cert);
    copy_tls_file("alice.key", key);
    reload(b, "[renewed] reload: new TLS certificate (CN=alice, valid until ");
    expect_served(b, b->port[1], cert);
    sbt_path(want, sizeof(want), tls_dir(), "alice.pem");
    expect_served(b, b->port[1], want);

    /* A key that does not match: the last good certificate stays. */
    copy_tls_file("server.pem", cert);
    snprintf(line, sizeof(line),
             "[renewed] reload: adapter renewed: tls.key %s does not match tls.cert %s; keeping "
             "the TLS certificate in use",
             key, cert);
    reload(b, line);
    expect_served(b, b->port[1], want);
    /* Unreadable: the same. */
    sbt_write_file(key, "not a key\n", 10);
    copy_tls_file("server.key", cert);
    reload(b, "keeping the TLS certificate in use");
    expect_served(b, b->port[1], want);

    /* Fixed: served again. */
    copy_tls_file("server.pem", cert);
    copy_tls_file("server.key", key);
    reload(b, "[renewed] reload: new TLS certificate (CN=localhost, ");
    sbt_path(want, sizeof(want), tls_dir(), "server.pem");
    expect_served(b, b->port[1], want);
    sbt_broker_stop(b);
    b->passed = 1;
#endif
}

/* A client that is not speaking TLS is dropped with a log line, one that
 * says nothing is dropped after the handshake timeout, and the broker keeps
 * serving TLS meanwhile. */
static void test_garbage_clients(void **state)
{
    static const unsigned char bad_hello[] = {0x16, 0x03, 0x01, 0x00, 0x05,
                                              0x01, 0xff, 0xff, 0xff, 0xff};
    sbt_broker *b = *state;
    sbt_conn *c = start(b, loops);
    sbt_tcp *silent, *t;
    char line[300];
    int port;

    silent = sbt_tcp_connect(b->port[1], 5000);
    assert_non_null(silent);

    t = sbt_tcp_connect(b->port[1], 5000);
    assert_non_null(t);
    port = sbt_tcp_local_port(t);
    sbt_tcp_close(t);
    snprintf(line, sizeof(line),
             "[secure] peer 127.0.0.1:%d closed the connection before the TLS handshake", port);
    sbt_broker_wait_log(b, line, 1, 5000);

    t = sbt_tcp_connect(b->port[1], 5000);
    assert_non_null(t);
    port = sbt_tcp_local_port(t);
    assert_int_equal(sbt_tcp_write(t, "GET / HTTP/1.0\r\n\r\n", 18), 0);
    assert_true(sbt_tcp_wait_closed(t, 5000));
    sbt_tcp_close(t);
    snprintf(line, sizeof(line),
             "[secure] peer 127.0.0.1:%d: TLS handshake failed: SSL routines::http request", port);
    sbt_broker_wait_log(b, line, 1, 5000);

    t = sbt_tcp_connect(b->port[2], 5000);
    assert_non_null(t);
    port = sbt_tcp_local_port(t);
    assert_int_equal(sbt_tcp_write(t, bad_hello, sizeof(bad_hello)), 0);
    assert_true(sbt_tcp_wait_closed(t, 5000));
    sbt_tcp_close(t);
    snprintf(line, sizeof(line), "[tlsout] peer 127.0.0.1:%d: TLS handshake failed: ", port);
    sbt_broker_wait_log(b, line, 1, 5000);

    /* still serving */
    sbt_sub(c, "tls-in", NULL, 10);
    sbt_pub(c, "up/after", "after", 1);
    expect(c, "tls-in", "tls/secure", "after");

    assert_true(sbt_tcp_wait_closed(silent, 20000));
    sbt_tcp_close(silent);
    sbt_broker_wait_log(b, "TLS handshake failed: not done within 10 s", 1, 5000);
    sbt_pub(c, "up/later", "later", 1);
    expect(c, "tls-in", "tls/secure", "later");
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_min_version, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_client_certs, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sink_to_s_client, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_client_adapters, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_refused_clients, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_reload_certificates, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_clients, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
