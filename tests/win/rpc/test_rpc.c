/*
 * The MS-RPC adapter with real processes: the broker (switchboard.exe run),
 * rpc_client (a program built from tools/rpc/switchboard.idl, in its own
 * process) and this program as the jsonl client that checks the queues.
 * Under Wine and unchanged on Windows.
 *
 * - ncalrpc: publish, pull and acknowledge; who the broker takes a local
 *   caller for; a TTL too long for the clock;
 * - ncacn_ip_tcp: an unauthenticated caller is refused, unless the adapter
 *   takes anonymous loopback callers (then publish/pull work over TCP); a
 *   caller from another address of this computer is refused (remote:
 *   false); an authenticating caller works where NTLM does (Windows; under
 *   Wine without Samba's ntlm_auth the client cannot authenticate);
 * - a client killed with deliveries leased: the broker runs its handle down
 *   and they come back at once (the lease is 5 minutes), counted as an
 *   attempt;
 * - the broker killed during publishes: every publish that returned success
 *   is delivered after the restart;
 * - the ACL by the caller's account (DOMAIN\name);
 * - bad input: invalid UTF-8, wildcards, oversized payloads and headers,
 *   arguments beyond the IDL's ranges, a missing handle, and a handle the
 *   broker no longer knows (it restarted) get error codes; the broker stays
 *   up;
 * - a subscription handle passed where a session is expected and the
 *   reverse: refused, no dead letters shown or purged, the broker stays up;
 * - a flood of waiting pulls: at most max_pulls wait, the rest are answered
 *   at once or told the broker is busy, and a publish still gets through;
 * - dead letters over RPC (as an administrator: under Wine everybody is);
 * - sbctl over RPC (sbctl -e rpc:ENDPOINT): ping, pub, sub, stats, dlq;
 * - config/examples/windows-rpc.yaml as shipped (this run's names and
 *   ports).
 *
 * ncalrpc endpoints carry this process's id, so parallel runs do not meet.
 * Nothing sleeps a fixed time: every wait polls with a deadline.
 */
#include "tests/integration/harness.h"
#include "tests/win/pipe/pipe_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <winsock2.h>
#include <ws2tcpip.h>

#include <windows.h>

#include <iphlpapi.h>

#define WAIT_MS 20000

/* SB_RPC_CALLER_* of switchboard.idl */
#define CALLER_ADMIN 1
#define CALLER_ANONYMOUS 2
#define CALLER_LOCAL 4

/* An ncalrpc endpoint of this run. */
static void endpoint_name(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "sbt-%lu-%s", (unsigned long)GetCurrentProcessId(), tag);
}

/* Runs rpc_client with the NULL-terminated arguments; returns its exit
 * status, its stdout in *out (free()). */
static int rpcc(char **out, const char *first, ...)
{
    char *argv[16];
    int n = 0, rc;
    va_list ap;
    argv[n++] = (char *)sbt_env("SB_RPC_CLIENT");
    argv[n++] = (char *)first;
    va_start(ap, first);
    while (n < 15 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    rc = sbt_run(argv, NULL, 120000, out, NULL);
    if (*out == NULL)
        *out = sbt_strdup("");
    return rc;
}

/* Starts rpc_client in the background, stdout and stderr to out_path. */
static void rpcc_spawn(sbt_proc *p, const char *out_path, const char *first, ...)
{
    char *argv[16];
    int n = 0;
    va_list ap;
    argv[n++] = (char *)sbt_env("SB_RPC_CLIENT");
    argv[n++] = (char *)first;
    va_start(ap, first);
    while (n < 15 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    memset(p, 0, sizeof(*p));
    assert_int_equal(sbt_spawn(p, argv, NULL, out_path), 0);
}

/* Polls the file until it holds `count` lines starting with prefix. */
static char *wait_file(const char *path, const char *prefix, int count, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        char *text = sbt_read_file(path, NULL), *line;
        int n = 0;
        for (line = text; line != NULL && *line != '\0';) {
            char *nl = strchr(line, '\n');
            if (strncmp(line, prefix, strlen(prefix)) == 0)
                n++;
            line = nl != NULL ? nl + 1 : NULL;
        }
        if (n >= count)
            return text;
        if (sbt_now_ms() > deadline)
            fail_msg("%s: %d lines \"%s...\" of %d within %d ms; it holds:\n%s", path, n, prefix,
                     count, timeout_ms, text != NULL ? text : "(nothing)");
        free(text);
        sbt_waiting_for("%d lines \"%s\" in %s", count, prefix, path);
        sbt_poll_pause(50);
    }
}

static int count_lines(const char *text, const char *prefix)
{
    int n = 0;
    for (const char *line = text; line != NULL && *line != '\0';) {
        const char *nl = strchr(line, '\n');
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            n++;
        line = nl != NULL ? nl + 1 : NULL;
    }
    return n;
}

/* The broker, a jsonl endpoint on {port0}, the rpc adapter on ncalrpc
 * endpoint {v0} (max_message 4096), {v1}: more adapters, {v2}: more broker
 * keys. Routes: audit (orders/#, fsync, lease 5m), fragile (fragile/#,
 * one attempt), fl (flood/#). */
static const char base_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "{v2}"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: rpc\n"
                                  "    type: rpc\n"
                                  "    endpoint: '{v0}'\n"
                                  "    max_message: 4096\n"
                                  "{v1}"
                                  "routes:\n"
                                  "  - name: audit\n"
                                  "    from: orders/#\n"
                                  "    durability: fsync\n"
                                  "    lease: 5m\n"
                                  "  - name: fragile\n"
                                  "    from: fragile/#\n"
                                  "    retry: { max_attempts: 1 }\n"
                                  "  - name: fl\n"
                                  "    from: flood/#\n";

/* Sets {v1} to adapters, with PORT1 there replaced by port[1]. */
static void set_adapters(sbt_broker *b, const char *adapters)
{
    char text[1024], *at;
    snprintf(text, sizeof text, "%s", adapters != NULL ? adapters : "");
    if ((at = strstr(text, "PORT1")) != NULL) {
        char rest[1024];
        snprintf(rest, sizeof rest, "%s", at + 5);
        snprintf(at, sizeof text - (size_t)(at - text), "%d%s", b->port[1], rest);
    }
    sbt_broker_set(b, 1, text);
}

static void start_base(sbt_broker *b, const char *name, int nports, const char *tag,
                       const char *adapters, const char *broker_keys)
{
    char ep[64];
    endpoint_name(ep, sizeof ep, tag);
    sbt_broker_init(b, name, nports);
    sbt_broker_set(b, 0, ep);
    set_adapters(b, adapters);
    sbt_broker_set(b, 2, broker_keys != NULL ? broker_keys : "");
    sbt_broker_config(b, base_config);
    sbt_broker_start(b);
}

/* ---- ncalrpc ---- */

static void test_local(void **state)
{
    sbt_broker *b = *state;
    char *out, buf[64];
    const char *ep;
    sbt_conn *c;
    json_t *m;

    start_base(b, "rpc-local", 1, "local", NULL, NULL);
    ep = b->values[0];
    c = sbt_connect(b->port[0]);

    /* a local caller is identified by its account */
    assert_int_equal(rpcc(&out, ep, "whoami", NULL), 0);
    assert_true(strncmp(out, "user=", 5) == 0 && out[5] != ' ');
    assert_non_null(strstr(out, "flags="));
    assert_true(atoi(strstr(out, "flags=") + 6) & CALLER_LOCAL);
    assert_false(atoi(strstr(out, "flags=") + 6) & CALLER_ANONYMOUS);
    free(out);

    /* publish: each returns after its commit with the id */
    assert_int_equal(rpcc(&out, ep, "pub", "orders/eu", "hello", "5", NULL), 0);
    assert_int_equal(count_lines(out, "ok "), 5);
    free(out);
    assert_int_equal(sbt_queue_int(c, "audit", "depth"), 5);

    /* pull and acknowledge */
    assert_int_equal(rpcc(&out, ep, "pull", "audit", "-", "5", NULL), 0);
    assert_int_equal(count_lines(out, "msg "), 5);
    for (int i = 1; i <= 5; i++) {
        snprintf(buf, sizeof buf, " 1 orders/eu hello %d\n", i);
        assert_non_null(strstr(out, buf));
    }
    assert_non_null(strstr(out, "done\n"));
    free(out);
    sbt_wait_queue_int(c, "audit", "depth", 0, WAIT_MS);
    assert_int_equal(sbt_queue_int(c, "audit", "acked"), 5);

    /* a client subscription, its filter, and deleting it */
    assert_int_equal(rpcc(&out, ep, "pub", "orders/us", "x", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "stats", NULL), 0);
    assert_non_null(strstr(out, "\"name\":\"audit\""));
    free(out);

    /* a TTL past what the clock can count is as long as it can be (it
     * overflowed into the past: expired at once) */
    assert_int_equal(
        rpcc(&out, ep, "pub", "flood/forever", "kept", "1", "9223372036854775807", NULL), 0);
    free(out);
    sbt_sub(c, "fl", NULL, 10);
    m = sbt_next_msg(c, WAIT_MS);
    assert_string_equal(sbt_str(m, "topic"), "flood/forever");
    sbt_ack(c, "fl", sbt_int(m, "msg_id"));
    json_decref(m);
    sbt_close(c);
    b->passed = 1;
}

/* ---- ncacn_ip_tcp ---- */

static const char tcp_anonymous[] = "  - name: rpctcp\n"
                                    "    type: rpc\n"
                                    "    protseq: ncacn_ip_tcp\n"
                                    "    port: PORT1\n"
                                    "    anonymous: true\n";
static const char tcp_default[] = "  - name: rpctcp\n"
                                  "    type: rpc\n"
                                  "    protseq: ncacn_ip_tcp\n"
                                  "    port: PORT1\n";

/* An IPv4 address of this computer that is not loopback, or "". */
static void own_address(char *out, size_t n)
{
    ULONG size = 16384;
    IP_ADAPTER_ADDRESSES *list = malloc(size);
    out[0] = '\0';
    if (list == NULL || GetAdaptersAddresses(AF_INET,
                                             GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST |
                                                 GAA_FLAG_SKIP_DNS_SERVER,
                                             NULL, list, &size) != NO_ERROR) {
        free(list);
        return;
    }
    for (IP_ADAPTER_ADDRESSES *ad = list; ad != NULL && out[0] == '\0'; ad = ad->Next)
        for (IP_ADAPTER_UNICAST_ADDRESS *u = ad->FirstUnicastAddress; u != NULL; u = u->Next) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)u->Address.lpSockaddr;
            const unsigned char *ip = (const unsigned char *)&sin->sin_addr;
            if (sin->sin_family == AF_INET && ip[0] != 127 && ip[0] != 0 && ip[0] != 169) {
                snprintf(out, n, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
                break;
            }
        }
    free(list);
}

static void test_tcp(void **state)
{
    sbt_broker *b = *state;
    char ep[64], addr[64], other[96], *out;
    sbt_conn *c;
    int rc;

    /* anonymous loopback callers taken: publish and pull over TCP */
    start_base(b, "rpc-tcp", 2, "tcp", tcp_anonymous, NULL);
    snprintf(ep, sizeof ep, "127.0.0.1:%d", b->port[1]);
    c = sbt_connect(b->port[0]);
    assert_int_equal(rpcc(&out, "-a", ep, "whoami", NULL), 0);
    assert_true(atoi(strstr(out, "flags=") + 6) & CALLER_ANONYMOUS);
    free(out);
    assert_int_equal(rpcc(&out, "-a", ep, "pub", "orders/tcp", "over tcp", "3", NULL), 0);
    assert_int_equal(count_lines(out, "ok "), 3);
    free(out);
    assert_int_equal(rpcc(&out, "-a", ep, "pull", "audit", "-", "3", NULL), 0);
    assert_int_equal(count_lines(out, "msg "), 3);
    assert_non_null(strstr(out, "orders/tcp over tcp 3\n"));
    free(out);
    sbt_wait_queue_int(c, "audit", "depth", 0, WAIT_MS);

    /* MS-RPC listens on every address: a caller from another address of
     * this computer is not loopback, and remote is false */
    own_address(addr, sizeof addr);
    if (addr[0] != '\0') {
        snprintf(other, sizeof other, "%s:%d", addr, b->port[1]);
        rc = rpcc(&out, "-a", other, "pub", "orders/remote", "x", NULL);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(out, "SB_EAUTH"));
        assert_non_null(strstr(out, "other computers"));
        free(out);
    } else {
        print_message("no non-loopback IPv4 address here: the remote case is left out\n");
    }
    sbt_close(c);
    sbt_broker_stop(b);

    /* by default an unauthenticated TCP caller is refused */
    set_adapters(b, tcp_default);
    sbt_broker_config(b, base_config);
    sbt_broker_mark_log(b);
    sbt_broker_start(b);
    snprintf(ep, sizeof ep, "127.0.0.1:%d", b->port[1]);
    rc = rpcc(&out, "-a", ep, "pub", "orders/tcp", "refused", NULL);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "SB_EAUTH"));
    assert_non_null(strstr(out, "unauthenticated callers are refused"));
    free(out);
    sbt_broker_wait_log(b, "refused a call from ncacn_ip_tcp 127.0.0.1", 1, WAIT_MS);
    /* an authenticating caller: NTLM works on Windows; under Wine without
     * Samba's ntlm_auth the client cannot authenticate at all */
    rc = rpcc(&out, ep, "pub", "orders/tcp", "authenticated", NULL);
    if (rc == 0)
        assert_int_equal(count_lines(out, "ok "), 1);
    else
        assert_non_null(strstr(out, "cannot authenticate"));
    free(out);
    b->passed = 1;
}

/* ---- a client killed with deliveries leased ---- */

static void test_killed_client(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], *out;
    const char *ep;
    sbt_proc holder;
    sbt_conn *c;
    int64_t t0;

    start_base(b, "rpc-killed", 1, "killed", NULL, NULL);
    ep = b->values[0];
    c = sbt_connect(b->port[0]);
    assert_int_equal(rpcc(&out, ep, "pub", "orders/held", "leased", "3", NULL), 0);
    free(out);
    sbt_path(path, sizeof path, b->dir, "holder.out");
    rpcc_spawn(&holder, path, ep, "pull", "audit", "-", "3", "hold", NULL);
    free(wait_file(path, "holding", 1, WAIT_MS));
    assert_int_equal(sbt_queue_int(c, "audit", "inflight"), 3);
    t0 = sbt_now_ms();
    sbt_proc_signal(&holder, SIGKILL);
    assert_true(sbt_proc_wait(&holder, WAIT_MS));
    sbt_proc_release(&holder);

    /* The handle runs down: the leases (5 minutes) end at once. */
    sbt_wait_queue_int(c, "audit", "inflight", 0, WAIT_MS);
    assert_true(sbt_now_ms() - t0 < 60000);
    assert_int_equal(rpcc(&out, ep, "pull", "audit", "-", "3", NULL), 0);
    assert_int_equal(count_lines(out, "msg "), 3);
    /* the crash counted as a failed attempt */
    for (int i = 1; i <= 3; i++) {
        char want[64];
        snprintf(want, sizeof want, " 2 orders/held leased %d\n", i);
        assert_non_null(strstr(out, want));
    }
    free(out);
    sbt_wait_queue_int(c, "audit", "depth", 0, WAIT_MS);
    sbt_close(c);
    b->passed = 1;
}

/* ---- the broker killed during publishes ---- */

static void test_broker_killed(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], *text, *line;
    const char *ep;
    sbt_proc pub;
    sbt_conn *c;
    size_t nok = 0, cap = 1024, found = 0;
    int64_t *ids = malloc(cap * sizeof(*ids)), deadline;
    char *seen;

    assert_non_null(ids);
    start_base(b, "rpc-crash", 1, "crash", NULL, NULL);
    ep = b->values[0];
    sbt_path(path, sizeof path, b->dir, "pub.out");
    rpcc_spawn(&pub, path, ep, "pub", "orders/crash", "p", "1000000", NULL);
    free(wait_file(path, "ok ", 50, WAIT_MS));
    sbt_broker_kill(b);
    assert_true(sbt_proc_wait(&pub, WAIT_MS));
    assert_int_equal(pub.exit_status, 3); /* stopped at the first transport failure */
    sbt_proc_release(&pub);

    text = sbt_read_file(path, NULL);
    assert_non_null(text);
    for (line = text; *line != '\0';) {
        char *nl = strchr(line, '\n');
        long i;
        long long id;
        if (sscanf(line, "ok %ld %lld", &i, &id) == 2) {
            if (nok == cap) {
                cap *= 2;
                ids = realloc(ids, cap * sizeof(*ids));
                assert_non_null(ids);
            }
            ids[nok++] = id;
        }
        if (nl == NULL)
            break;
        line = nl + 1;
    }
    free(text);
    assert_true(nok >= 50);

    /* After the restart every publish that returned success is there. */
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "audit", NULL, 1000);
    seen = calloc(nok, 1);
    assert_non_null(seen);
    deadline = sbt_now_ms() + 60000;
    while (found < nok) {
        json_t *m = sbt_next_msg(c, (int)(deadline - sbt_now_ms()));
        int64_t id = sbt_int(m, "msg_id");
        for (size_t i = 0; i < nok; i++)
            if (ids[i] == id && !seen[i]) {
                seen[i] = 1;
                found++;
            }
        sbt_ack(c, "audit", id);
        json_decref(m);
    }
    free(seen);
    free(ids);
    sbt_close(c);
    b->passed = 1;
}

/* ---- the ACL by the caller's account ---- */

static void test_acl(void **state)
{
    sbt_broker *b = *state;
    char acl[SBT_PATH_MAX], rules[1200], keys[SBT_PATH_MAX + 80], user[512], *out, *nl;
    const char *ep;

    start_base(b, "rpc-acl", 1, "acl", NULL, NULL);
    ep = b->values[0];
    assert_int_equal(rpcc(&out, ep, "whoami", NULL), 0);
    snprintf(user, sizeof user, "%s", out + 5);
    user[strcspn(user, " ")] = '\0';
    free(out);
    assert_true(user[0] != '\0');
    sbt_broker_stop(b);

    /* this account may write orders/ok/# and read orders/#, nothing else */
    sbt_path(acl, sizeof acl, b->dir, "acl.conf");
    snprintf(rules, sizeof rules,
             "user %s\n"
             "topic write orders/ok/#\n"
             "topic read orders/#\n",
             user);
    sbt_write_file(acl, rules, strlen(rules));
    snprintf(keys, sizeof keys, "  auth: { acl_file: '%s' }\n", acl);
    for (nl = keys; *nl != '\0'; nl++)
        if (*nl == '\\')
            *nl = '/';
    sbt_broker_set(b, 2, keys);
    sbt_broker_config(b, base_config);
    sbt_broker_start(b);

    assert_int_equal(rpcc(&out, ep, "pub", "orders/ok/1", "allowed", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "pub", "orders/no/1", "denied", NULL), 1);
    assert_non_null(strstr(out, "SB_EAUTH"));
    assert_non_null(strstr(out, "not authorized to publish to orders/no/1"));
    free(out);
    /* reading: its own subscription on a filter it may read, not another */
    assert_int_equal(rpcc(&out, ep, "pull", "mine", "other/#", "1", NULL), 1);
    assert_non_null(strstr(out, "SB_EAUTH"));
    free(out);
    assert_int_equal(rpcc(&out, ep, "pull", "audit", "-", "1", NULL), 0);
    assert_non_null(strstr(out, "orders/ok/1 allowed"));
    free(out);
    b->passed = 1;
}

/* ---- bad input ---- */

static void expect_case(const char *out, const char *name, int code)
{
    char want[96];
    snprintf(want, sizeof want, "case %s %d ", name, code);
    if (strstr(out, want) == NULL)
        fail_msg("expected \"%s\" in:\n%s", want, out);
}

static void test_bad_input(void **state)
{
    sbt_broker *b = *state;
    char path[SBT_PATH_MAX], *out;
    const char *ep;
    sbt_proc stale;
    sbt_conn *c;

    start_base(b, "rpc-bad", 1, "bad", NULL, NULL);
    ep = b->values[0];
    assert_int_equal(rpcc(&out, ep, "bad", NULL), 0);
    expect_case(out, "utf8-topic", -2);
    expect_case(out, "wildcard-topic", -2);
    expect_case(out, "empty-topic", -2);
    expect_case(out, "too-big", -10);   /* over max_message */
    expect_case(out, "beyond-idl", -2); /* RPC_X_INVALID_BOUND */
    expect_case(out, "size-without-payload", -2);
    expect_case(out, "headers-beyond-idl", -2); /* RPC_X_INVALID_BOUND */
    expect_case(out, "utf8-header", -2);
    expect_case(out, "null-header", -2);
    expect_case(out, "null-handle", -2); /* RPC_X_SS_IN_NULL_CONTEXT */
    free(out);
    c = sbt_connect(b->port[0]);
    json_decref(sbt_call(c, "{s:s}", "op", "ping"));
    sbt_close(c);

    /* a subscription handle the broker does not know: it restarted */
    sbt_path(path, sizeof path, b->dir, "stale.out");
    rpcc_spawn(&stale, path, ep, "stale", "gone", "orders/#", NULL);
    free(wait_file(path, "subscribed", 1, WAIT_MS));
    sbt_broker_kill(b);
    sbt_broker_start(b);
    free(wait_file(path, "pull -7 ", 1, WAIT_MS));
    assert_true(sbt_proc_wait(&stale, WAIT_MS));
    assert_int_equal(stale.exit_status, 0);
    sbt_proc_release(&stale);
    assert_int_equal(rpcc(&out, ep, "whoami", NULL), 0);
    free(out);
    b->passed = 1;
}

/* ---- context handles of the wrong type ---- */

/* To the runtime a subscription handle and a session are both context
 * handles of the interface: a client may pass one for the other. The
 * broker refuses it (SB_RPC_EINVAL) without reading the handle as what it
 * is not: a subscription taken for a session would have its user name read
 * as the session's administrator flag, and a session taken for a
 * subscription would be waited on or freed as one. */
static void test_swapped_handles(void **state)
{
    sbt_broker *b = *state;
    static const char *const refused[] = {
        "dlq-list-sub", "dlq-purge-sub", "whoami-sub",  "publish-sub",  "stats-sub",
        "close-sub",    "pull-session",  "ack-session", "nack-session", "unsubscribe-session"};
    char *out;
    const char *ep;
    int admin;

    start_base(b, "rpc-swap", 1, "swap", NULL, NULL);
    ep = b->values[0];
    /* a dead letter that a session taken for an administrator would list */
    assert_int_equal(rpcc(&out, ep, "pub", "fragile/secret", "not for you", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "pull", "fragile", "-", "1", "nack", NULL), 0);
    free(out);

    assert_int_equal(rpcc(&out, ep, "swap", "swapped", "orders/#", NULL), 0);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        expect_case(out, refused[i], -2);
    assert_null(strstr(out, "not for you"));
    assert_non_null(strstr(out, "not a session"));
    assert_non_null(strstr(out, "not a subscription"));
    /* the handles still work as what they are */
    expect_case(out, "whoami", 0);
    expect_case(out, "pull", 0);
    expect_case(out, "unsubscribe", 0);
    expect_case(out, "close", 0);
    free(out);

    /* the broker serves on, and the dead letter was not purged */
    assert_int_equal(rpcc(&out, ep, "whoami", NULL), 0);
    admin = atoi(strstr(out, "flags=") + 6) & CALLER_ADMIN;
    free(out);
    if (admin) {
        assert_int_equal(rpcc(&out, ep, "dlq", "list", "fragile", NULL), 0);
        assert_non_null(strstr(out, "count 1\n"));
        free(out);
    }
    b->passed = 1;
}

/* ---- a flood of waiting pulls ---- */

static void test_flood(void **state)
{
    sbt_broker *b = *state;
    static const char limits[] = "    max_calls: 6\n"
                                 "    max_pulls: 2\n"
                                 "    max_wait: 8s\n";
    char path[SBT_PATH_MAX], *out, *text;
    const char *ep;
    sbt_proc flood;
    int busy, empty, slow, failed;
    int64_t deadline;

    start_base(b, "rpc-flood", 1, "flood", limits, NULL);
    ep = b->values[0];
    sbt_path(path, sizeof path, b->dir, "flood.out");
    rpcc_spawn(&flood, path, ep, "flood", "fl", "12", "30000", NULL);
    /* While pulls wait, a publish still gets through (retrying while the
     * flood's own subscribes fill max_calls for a moment). */
    deadline = sbt_now_ms() + WAIT_MS;
    for (;;) {
        int rc = rpcc(&out, ep, "pub", "orders/flood", "through", NULL);
        int busy_now = strstr(out, "SB_EBUSY") != NULL;
        free(out);
        if (rc == 0)
            break;
        assert_true(busy_now);
        assert_true(sbt_now_ms() < deadline);
        sbt_poll_pause(100);
    }
    text = wait_file(path, "flood ", 1, 60000);
    assert_true(sbt_proc_wait(&flood, WAIT_MS));
    sbt_proc_release(&flood);
    assert_int_equal(sscanf(strstr(text, "flood "), "flood busy=%d empty=%d slow=%d failed=%d",
                            &busy, &empty, &slow, &failed),
                     4);
    free(text);
    assert_int_equal(failed, 0);
    assert_true(slow <= 2); /* max_pulls */
    assert_int_equal(busy + empty + slow, 12);
    assert_true(busy + empty >= 10); /* answered at once */
    b->passed = 1;
}

/* ---- dead letters ---- */

static void test_dlq(void **state)
{
    sbt_broker *b = *state;
    char *out;
    const char *ep;

    start_base(b, "rpc-dlq", 1, "dlq", NULL, NULL);
    ep = b->values[0];
    assert_int_equal(rpcc(&out, ep, "pub", "fragile/x", "breaks", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "pull", "fragile", "-", "1", "nack", NULL), 0);
    free(out);
    /* the caller is an administrator under Wine (and an elevated one on
     * Windows, where a test runs as one): dead letters are served */
    assert_int_equal(rpcc(&out, ep, "whoami", NULL), 0);
    if (!(atoi(strstr(out, "flags=") + 6) & CALLER_ADMIN)) {
        free(out);
        assert_int_equal(rpcc(&out, ep, "dlq", "list", "fragile", NULL), 1);
        assert_non_null(strstr(out, "SB_EACCES"));
        free(out);
        b->passed = 1;
        return;
    }
    free(out);
    assert_int_equal(rpcc(&out, ep, "dlq", "list", "fragile", NULL), 0);
    assert_non_null(strstr(out, "count 1\n"));
    assert_non_null(strstr(out, "fragile/x breaks attempts=1 reason=refused by rpc_client"));
    free(out);
    assert_int_equal(rpcc(&out, ep, "dlq", "redrive", "fragile", NULL), 0);
    assert_non_null(strstr(out, "count 1\n"));
    free(out);
    assert_int_equal(rpcc(&out, ep, "pull", "fragile", "-", "1", "nack", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "dlq", "purge", NULL), 0);
    assert_non_null(strstr(out, "count 1\n"));
    free(out);
    assert_int_equal(rpcc(&out, ep, "dlq", "list", NULL), 0);
    assert_non_null(strstr(out, "count 0\n"));
    free(out);
    b->passed = 1;
}

/* ---- sbctl over RPC ---- */

/* Runs sbctl -e rpc:ENDPOINT with the NULL-terminated arguments. */
static int sbctl(char **out, const char *ep, const char *first, ...)
{
    char *argv[16], endpoint[96];
    int n = 0, rc;
    va_list ap;
    snprintf(endpoint, sizeof endpoint, "rpc:%s", ep);
    argv[n++] = (char *)sbt_env("SB_SBCTL");
    argv[n++] = "-e";
    argv[n++] = endpoint;
    argv[n++] = (char *)first;
    va_start(ap, first);
    while (n < 15 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    rc = sbt_run(argv, NULL, 120000, out, NULL);
    if (*out == NULL)
        *out = sbt_strdup("");
    return rc;
}

static void test_sbctl(void **state)
{
    sbt_broker *b = *state;
    char *out;
    const char *ep;

    start_base(b, "rpc-sbctl", 1, "sbctl", NULL, NULL);
    ep = b->values[0];
    assert_int_equal(sbctl(&out, ep, "ping", NULL), 0);
    assert_non_null(strstr(out, "pong from rpc:"));
    free(out);
    assert_int_equal(sbctl(&out, ep, "pub", "orders/sbctl", "over rpc", NULL), 0);
    free(out);
    assert_int_equal(sbctl(&out, ep, "sub", "audit", "--count", "1", "--timeout", "20s", NULL), 0);
    assert_string_equal(out, "orders/sbctl\tover rpc\n");
    free(out);
    assert_int_equal(sbctl(&out, ep, "stats", NULL), 0);
    assert_non_null(strstr(out, "audit"));
    free(out);
    assert_int_equal(sbctl(&out, ep, "dlq", "list", NULL), 0);
    free(out);
    /* no broker there */
    assert_int_equal(sbctl(&out, "sbt-nobody", "ping", NULL), 3);
    free(out);
    b->passed = 1;
}

/* ---- config/examples/windows-rpc.yaml ---- */

static void test_example(void **state)
{
    sbt_broker *b = *state;
    const char *repl[] = {"data_dir: ./data",
                          "data_dir: '{data}'",
                          "endpoint: switchboard",
                          "endpoint: '{v0}'",
                          "port: 4750",
                          "port: {port1}",
                          NULL,
                          NULL};
    char ep[64], tcp[64], *out;
    sbt_conn *c;

    endpoint_name(ep, sizeof ep, "example");
    sbt_broker_init(b, "rpc-example", 2);
    sbt_broker_set(b, 0, ep);
    pt_example_config(b, "windows-rpc.yaml", repl);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* an order published with sbctl, pulled and acknowledged by a worker */
    assert_int_equal(sbctl(&out, ep, "pub", "orders/eu", "order 1", NULL), 0);
    free(out);
    assert_int_equal(rpcc(&out, ep, "pull", "orders", "-", "1", NULL), 0);
    assert_non_null(strstr(out, " 1 orders/eu order 1\n"));
    free(out);
    sbt_wait_queue_int(c, "orders", "acked", 1, WAIT_MS);
    /* TCP: only authenticated callers */
    snprintf(tcp, sizeof tcp, "127.0.0.1:%d", b->port[1]);
    assert_int_equal(rpcc(&out, "-a", tcp, "whoami", NULL), 1);
    assert_non_null(strstr(out, "SB_EAUTH"));
    free(out);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_local, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_tcp, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_killed_client, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_broker_killed, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_swapped_handles, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_flood, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_dlq, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_sbctl, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
