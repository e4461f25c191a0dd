/*
 * MQTT authentication and authorization against the real broker with real
 * clients: password logins (a password file written by mosquitto_passwd, so
 * by an independent implementation of the format) and their CONNACK codes,
 * anonymous clients on loopback and other listeners, the ACL file (per user,
 * anonymous and %u/%c pattern rules) applied to SUBSCRIBE (per filter),
 * PUBLISH (acknowledged, not delivered), wills and jsonl clients, to user
 * names without a password file (they prove nothing), to a persistent
 * session taken over by another identity and to subscriptions after the
 * ACL is reloaded, and MQTT over TLS: server-verified round trips with
 * mosquitto_pub/_sub, a client certificate's CN as the user for the ACL,
 * clients without a (trusted) certificate and TLS 1.1 refused at the
 * handshake.
 *
 * The raw client (mqtt_util.h) reads CONNACK and SUBACK codes exactly;
 * mosquitto_pub/_sub show what a stock client sees (its exit code is the
 * CONNACK code). Denied messages are observed by bob, who may read `#`: a
 * message he does not get while a later allowed one arrives was dropped.
 * Each test skips when a client it runs is missing; without mosquitto_passwd
 * the password file is written with the broker's own hasher.
 */
#include "mqtt_util.h"

#include "service/alloc.h"
#include "service/auth.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOSQUITTO_PUB "SB_MOSQUITTO_PUB"
#define MOSQUITTO_SUB "SB_MOSQUITTO_SUB"
#define MOSQUITTO_PASSWD "SB_MOSQUITTO_PASSWD"
/* Logins that hash at the default PBKDF2 count, several at once. */
#define HASH_MS 30000

/* Ports: jsonl; MQTT on loopback (anonymous by default); on 0.0.0.0 (no
 * anonymous by default); on 0.0.0.0 with anonymous: true; on loopback with
 * anonymous: false; MQTT over TLS (no client certificates); MQTT over TLS
 * with client_cert: require. Clients reach all of them at 127.0.0.1. */
enum { P_JSONL, P_MQTT, P_ANY, P_OPEN, P_CLOSED, P_TLS, P_CERT, NPORTS };

/* {v0}: the acl_file line (or nothing). The TLS listeners follow when a
 * test wants them. The admin endpoint is a Unix socket in the test's
 * directory; the routes are queues jsonl clients may subscribe to. */
static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: '{dir}/admin.sock' }\n"
                             "  auth:\n"
                             "    password_file: '{dir}/passwd'\n"
                             "{v0}"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: mqtt\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port1}\n"
                             "    protocol: mqtt\n"
                             "  - name: mqtt-any\n"
                             "    type: tcp\n"
                             "    listen: 0.0.0.0:{port2}\n"
                             "    protocol: mqtt\n"
                             "  - name: mqtt-open\n"
                             "    type: tcp\n"
                             "    listen: 0.0.0.0:{port3}\n"
                             "    protocol: mqtt\n"
                             "    anonymous: true\n"
                             "  - name: mqtt-closed\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port4}\n"
                             "    protocol: mqtt\n"
                             "    anonymous: false\n";

/* After the adapters: queues for jsonl clients. */
static const char routes[] = "routes:\n"
                             "  - name: public-feed\n"
                             "    from: public/#\n"
                             "  - name: secret-feed\n"
                             "    from: secret/#\n";

/* %s (every one): tests/data/tls. */
static const char tls_listeners[] = "  - name: mqtt-tls\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port5}\n"
                                    "    protocol: mqtt\n"
                                    "    tls:\n"
                                    "      cert: '%s/server.pem'\n"
                                    "      key: '%s/server.key'\n"
                                    "  - name: mqtt-cert\n"
                                    "    type: tcp\n"
                                    "    listen: 127.0.0.1:{port6}\n"
                                    "    protocol: mqtt\n"
                                    "    tls:\n"
                                    "      cert: '%s/server.pem'\n"
                                    "      key: '%s/server.key'\n"
                                    "      ca: '%s/ca.pem'\n"
                                    "      client_cert: require\n";

/* alice owns alice/# and reads public/#; bob reads everything but `$`
 * topics, and $SYS/broker/# by name; eve reads everything except
 * private/#; feeder writes everything; anonymous clients read public/#.
 * Everyone owns clients/<client id>/# and reads users/<user name>/#. */
static const char acl[] = "# anonymous clients\n"
                          "topic read public/#\n"
                          "\n"
                          "user alice\n"
                          "topic readwrite alice/#\n"
                          "topic read public/#\n"
                          "\n"
                          "user bob\n"
                          "topic read #\n"
                          "topic read $SYS/broker/#\n"
                          "\n"
                          "user eve\n"
                          "topic read #\n"
                          "topic deny private/#\n"
                          "\n"
                          "user feeder\n"
                          "topic write #\n"
                          "\n"
                          "pattern readwrite clients/%c/#\n"
                          "pattern read users/%u/#\n";

static const struct {
    const char *user, *password;
} users[] = {
    {"alice", "secret-a"}, {"bob", "secret-b"}, {"eve", "secret-e"}, {"feeder", "secret-f"}};

/* ---- setup ---- */

static void path_in(sbt_broker *b, char *out, size_t n, const char *name)
{
    sbt_path(out, n, b->dir, name);
}

/* Writes <dir>/passwd with the users above, with mosquitto_passwd when it is
 * there (then also carol, secret-c, in Mosquitto 1.x's $6$ format) and with
 * the broker's hasher otherwise. Returns 1 if carol is in the file. */
static int write_passwd(sbt_broker *b)
{
    const char *tool = sbt_mq_tool(MOSQUITTO_PASSWD);
    char file[SBT_PATH_MAX], *text = NULL;
    size_t len = 0;

    path_in(b, file, sizeof(file), "passwd");
    if (tool != NULL) {
        for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
            sbt_argv a;
            sbt_argv_init(&a, tool);
            if (i == 0)
                sbt_argv_add(&a, "-c");
            sbt_argv_add(&a, "-b");
            sbt_argv_add(&a, "%s", file);
            sbt_argv_add(&a, "%s", users[i].user);
            sbt_argv_add(&a, "%s", users[i].password);
            free(sbt_mq_run(&a, 0));
            sbt_argv_free(&a);
        }
        {
            sbt_argv a;
            sbt_argv_init(&a, tool);
            sbt_argv_add(&a, "-H");
            sbt_argv_add(&a, "sha512");
            sbt_argv_add(&a, "-b");
            sbt_argv_add(&a, "%s", file);
            sbt_argv_add(&a, "carol");
            sbt_argv_add(&a, "secret-c");
            free(sbt_mq_run(&a, 0));
            sbt_argv_free(&a);
        }
        text = sbt_read_file(file, NULL);
        /* mosquitto_passwd writes $7$ (PBKDF2, 101 iterations) by default. */
        if (text == NULL || sbt_count(text, ":$7$") != 4 || sbt_count(text, "carol:$6$") != 1)
            fail_msg("mosquitto_passwd wrote an unexpected file:\n%s", text ? text : "(none)");
        free(text);
        return 1;
    }
    fprintf(stderr, "note: %s is not set; the password file is written with sb_auth\n",
            MOSQUITTO_PASSWD);
    for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
        char *hash, *grown;
        size_t n;
        assert_int_equal(
            sb_auth_hash_password(&hash, users[i].password, strlen(users[i].password), 101), 0);
        n = strlen(users[i].user) + strlen(hash) + 3;
        grown = realloc(text, len + n);
        assert_non_null(grown);
        text = grown;
        len += (size_t)snprintf(text + len, n, "%s:%s\n", users[i].user, hash);
        sb_free(hash);
    }
    sbt_write_file(file, text, len);
    free(text);
    return 0;
}

/* Writes the files and the config (ACL when with_acl, the TLS listeners
 * when with_tls), starts the broker. *carol (may be NULL) tells whether
 * carol's $6$ line exists. */
static void start(sbt_broker *b, const char *name, int with_acl, int with_tls, int *carol)
{
    char line[SBT_PATH_MAX + 32], file[SBT_PATH_MAX], tls_dir[SBT_PATH_MAX];
    int c;

    sbt_broker_init(b, name, NPORTS);
    c = write_passwd(b);
    if (carol != NULL)
        *carol = c;
    if (with_acl) {
        path_in(b, file, sizeof(file), "acl");
        sbt_write_file(file, acl, strlen(acl));
        snprintf(line, sizeof(line), "    acl_file: '%s'\n", file);
        sbt_broker_set(b, 0, line);
    } else {
        sbt_broker_set(b, 0, "");
    }
    {
        /* The template is the config, the TLS listeners, the routes. */
        size_t n = sizeof(config) + sizeof(tls_listeners) + sizeof(routes) + 5 * SBT_PATH_MAX;
        char *tmpl = malloc(n);
        int len;
        assert_non_null(tmpl);
        sbt_path(tls_dir, sizeof(tls_dir), sbt_test_data(), "tls");
        len = snprintf(tmpl, n, "%s", config);
        if (with_tls)
            len += snprintf(tmpl + len, n - (size_t)len, tls_listeners, tls_dir, tls_dir, tls_dir,
                            tls_dir, tls_dir);
        assert_true(snprintf(tmpl + len, n - (size_t)len, "%s", routes) < (int)(n - (size_t)len));
        sbt_broker_config(b, tmpl);
        free(tmpl);
    }
    sbt_broker_start(b);
}

/* ---- the raw client ---- */

static void opts_init(sbt_mq_opts *o, const char *id, const char *user, const char *password)
{
    memset(o, 0, sizeof(*o));
    o->id = id;
    o->clean = 1;
    o->username = user;
    o->password = password;
}

/* A connection of user (NULL: anonymous), asserted accepted. */
static sbt_mq *login(int port, const char *id, const char *user, const char *password)
{
    sbt_mq_opts o;
    opts_init(&o, id, user, password);
    return sbt_mq_client(port, &o, NULL);
}

/* Asserts CONNACK code (session present 0) and then the close, with
 * nothing else sent. */
static void expect_refused_opts(int port, const sbt_mq_opts *o, int code, const char *what)
{
    sbt_mq *m = sbt_mq_open(port);
    sb_mqtt_connack ack;
    sb_mqtt_packet p;
    int rc;
    sbt_mq_connect(m, o, &ack);
    if (ack.return_code != code || ack.session_present != 0)
        fail_msg("%s: CONNACK session present %d code 0x%02x, want 0 and 0x%02x", what,
                 ack.session_present, ack.return_code, code);
    rc = sbt_mq_next(m, &p, SBT_REPLY_MS);
    if (rc == 0)
        fail_msg("%s: the broker sent %s after the refusal", what, sb_mqtt_type_name(p.type));
    if (rc == -1)
        fail_msg("%s: the broker did not close the connection after the refusal", what);
    sbt_mq_close(m);
}

static void expect_refused(int port, const char *user, const char *password, int code,
                           const char *what)
{
    sbt_mq_opts o;
    opts_init(&o, "refused", user, password);
    expect_refused_opts(port, &o, code, what);
}

/* SUBSCRIBE to n filters at QoS 1 with the SUBACK codes want. */
static void subscribe(sbt_mq *m, uint16_t pid, const char *const *filters, const int *want,
                      size_t n)
{
    int qos[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        qos[i] = 1;
    sbt_mq_subscribe(m, pid, filters, qos, n, want);
}

/* PUBLISH at QoS 1 and wait for its PUBACK. */
static void publish1(sbt_mq *m, const char *topic, const char *payload, int retain, uint16_t pid)
{
    sbt_mq_publish(m, topic, payload, 1, retain, 0, pid);
    sbt_mq_await(m, &(sb_mqtt_packet){0}, SB_MQTT_PUBACK, pid);
}

/* The next PUBLISH is topic/payload (any QoS; acknowledged if 1). */
static void expect_pub(sbt_mq *m, const char *topic, const char *payload)
{
    uint16_t pid = sbt_mq_expect_publish(m, topic, payload, -1, -1, -1);
    if (pid != 0)
        sbt_mq_ack(m, SB_MQTT_PUBACK, pid);
}

/* ---- the external clients ---- */

/* mosquitto_pub / mosquitto_sub -h 127.0.0.1 -p port. */
static void mosq(sbt_argv *a, const char *env, int port)
{
    sbt_argv_init(a, sbt_mq_tool(env));
    sbt_argv_add(a, "-h");
    sbt_argv_add(a, "127.0.0.1");
    sbt_argv_add(a, "-p");
    sbt_argv_add(a, "%d", port);
}

static void add_args(sbt_argv *a, const char *const *args)
{
    for (; *args != NULL; args++)
        sbt_argv_add(a, "%s", *args);
}

/* -u user -P password (either may be NULL). */
static void add_login(sbt_argv *a, const char *user, const char *password)
{
    if (user != NULL)
        add_args(a, (const char *const[]){"-u", user, NULL});
    if (password != NULL)
        add_args(a, (const char *const[]){"-P", password, NULL});
}

/* Runs a, asserts the exit code, returns stdout; frees a. */
static char *run(sbt_argv *a, int want)
{
    char *out = sbt_mq_run(a, want);
    sbt_argv_free(a);
    return out;
}

/* Runs a (frees it); returns its exit code, stdout+stderr in *out. */
static int run_any(sbt_argv *a, char **out)
{
    char *o = NULL, *e = NULL;
    int rc = sbt_run(a->v, NULL, 20000, &o, &e);
    size_t n = strlen(o ? o : "") + strlen(e ? e : "") + 1;
    *out = malloc(n);
    assert_non_null(*out);
    snprintf(*out, n, "%s%s", o ? o : "", e ? e : "");
    free(o);
    free(e);
    sbt_argv_free(a);
    return rc;
}

/* mosquitto_pub -q 1 -t topic -m payload as user on port; asserts exit
 * code want (mosquitto_pub exits with the CONNACK code of a refusal). */
static void mosquitto_pub(int port, const char *user, const char *password, const char *topic,
                          const char *payload, int want)
{
    sbt_argv a;
    mosq(&a, MOSQUITTO_PUB, port);
    add_login(&a, user, password);
    add_args(&a, (const char *const[]){"-q", "1", "-t", topic, "-m", payload, NULL});
    free(run(&a, want));
}

/* Asserts the log since the mark holds needle at least once. */
static void expect_log(sbt_broker *b, const char *needle)
{
    sbt_broker_wait_log(b, needle, 1, 5000);
}

/* Asserts the whole log does not hold needle. */
static void expect_not_logged(sbt_broker *b, const char *needle)
{
    char *log = sbt_broker_log(b);
    if (strstr(log, needle) != NULL)
        fail_msg("the broker log holds \"%s\":\n%s", needle, log);
    free(log);
}

/* ---- tests ---- */

/* Password logins: the right password gets CONNACK 0; a wrong one, an
 * unknown user, an empty password and a user name without a password get
 * 0x04 (bad user name or password) and the close, also on a listener that
 * accepts anonymous clients (a failed login is no anonymous login);
 * Mosquitto 1.x's $6$ hashes are accepted. mosquitto_pub sees the same
 * codes. No password reaches the log. */
static void test_password_login(void **state)
{
    sbt_broker *b = *state;
    sbt_mq *m, *s;
    int carol, port;
    sbt_conn *c;

    start(b, "mqtt-login", 0, 0, &carol);
    port = b->port[P_MQTT];
    c = sbt_connect(b->port[P_JSONL]);

    m = login(port, "alice-1", "alice", "secret-a");
    sbt_mq_ping(m);
    sbt_mq_disconnect(m);
    expect_log(b, "connected (clean session 1, keep alive 0 s, user alice)");
    if (carol) {
        m = login(port, "carol-1", "carol", "secret-c");
        sbt_mq_disconnect(m);
        expect_refused(port, "carol", "secret-a", SB_MQTT_CONNACK_BAD_LOGIN, "carol, $6$, wrong");
    }

    expect_refused(port, "alice", "wrong-pass", SB_MQTT_CONNACK_BAD_LOGIN, "a wrong password");
    expect_refused(port, "alice", "secret-b", SB_MQTT_CONNACK_BAD_LOGIN, "bob's password");
    expect_refused(port, "alice", "", SB_MQTT_CONNACK_BAD_LOGIN, "an empty password");
    expect_refused(port, "alice", NULL, SB_MQTT_CONNACK_BAD_LOGIN, "no password");
    expect_refused(port, "mallory", "secret-a", SB_MQTT_CONNACK_BAD_LOGIN, "an unknown user");
    expect_refused(port, "Alice", "secret-a", SB_MQTT_CONNACK_BAD_LOGIN, "user names are exact");
    expect_refused(port, "", "secret-a", SB_MQTT_CONNACK_BAD_LOGIN, "an empty user name");
    expect_log(b, "bad user name or password for user alice");
    expect_log(b, "a user name without a password");
    /* Anonymous clients are welcome on this loopback listener, but a
     * failed login is not turned into an anonymous one. */
    m = login(port, "anon-1", NULL, NULL);
    sbt_mq_disconnect(m);
    expect_refused(b->port[P_OPEN], "alice", "wrong-pass", SB_MQTT_CONNACK_BAD_LOGIN,
                   "a wrong password where anonymous clients are allowed");

    if (sbt_mq_tool(MOSQUITTO_PUB) != NULL) {
        /* A round trip of two users, then the refusals as a stock client
         * reports them. */
        s = login(port, "bob-sub", "bob", "secret-b");
        sbt_mq_sub1(s, 1, "login/#", 1);
        mosquitto_pub(port, "alice", "secret-a", "login/x", "from-alice", 0);
        expect_pub(s, "login/x", "from-alice");
        sbt_mq_disconnect(s);
        mosquitto_pub(port, "alice", "wrong-pass", "login/x", "no", SB_MQTT_CONNACK_BAD_LOGIN);
        mosquitto_pub(port, "nobody", "secret-a", "login/x", "no", SB_MQTT_CONNACK_BAD_LOGIN);
        mosquitto_pub(port, "alice", NULL, "login/x", "no", SB_MQTT_CONNACK_BAD_LOGIN);
    } else {
        fprintf(stderr, "note: %s is not set; mosquitto_pub logins not checked\n", MOSQUITTO_PUB);
    }
    /* Passwords, right or wrong, are never logged. */
    expect_not_logged(b, "secret-a");
    expect_not_logged(b, "wrong-pass");
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* With a password file, a listener on 0.0.0.0 refuses clients without a
 * user name (CONNACK 0x05, not authorized) unless it says anonymous: true;
 * a loopback listener accepts them unless it says anonymous: false. Users
 * log in everywhere. */
static void test_anonymous(void **state)
{
    sbt_broker *b = *state;
    sbt_mq *m;

    start(b, "mqtt-anon", 0, 0, NULL);
    sbt_broker_mark_log(b);
    expect_refused(b->port[P_ANY], NULL, NULL, SB_MQTT_CONNACK_NOT_AUTHORIZED,
                   "anonymous on 0.0.0.0");
    expect_log(b, "[mqtt-any]");
    expect_log(b, "connection refused (CONNACK 5): no user name given");
    m = login(b->port[P_ANY], "alice-any", "alice", "secret-a");
    sbt_mq_disconnect(m);

    m = login(b->port[P_OPEN], "anon-open", NULL, NULL);
    sbt_mq_disconnect(m);
    m = login(b->port[P_MQTT], "anon-loopback", NULL, NULL);
    sbt_mq_disconnect(m);
    /* An empty client id (the broker names it) changes nothing. */
    m = login(b->port[P_MQTT], "", NULL, NULL);
    sbt_mq_disconnect(m);

    expect_refused(b->port[P_CLOSED], NULL, NULL, SB_MQTT_CONNACK_NOT_AUTHORIZED,
                   "anonymous on loopback with anonymous: false");
    m = login(b->port[P_CLOSED], "alice-closed", "alice", "secret-a");
    sbt_mq_disconnect(m);

    if (sbt_mq_tool(MOSQUITTO_PUB) != NULL) {
        mosquitto_pub(b->port[P_ANY], NULL, NULL, "anon/x", "no", SB_MQTT_CONNACK_NOT_AUTHORIZED);
        mosquitto_pub(b->port[P_OPEN], NULL, NULL, "anon/x", "yes", 0);
        mosquitto_pub(b->port[P_ANY], "bob", "secret-b", "anon/x", "yes", 0);
    }
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* SUBSCRIBE under the ACL: one return code per filter, 0x80 for a filter
 * none of whose topics the client may read (another user's levels, one a
 * deny rule covers, `$SYS/...` for a reader of `#`), granted for filters
 * the client may read wholly or in part (`#`, `+/x`: deliveries are
 * checked one by one); %c and %u stand for the client's own id and user
 * name only, and values that are not a plain level grant nothing. */
static void test_acl_subscribe(void **state)
{
    sbt_broker *b = *state;
    int port;
    sbt_mq *m;
    sb_mqtt_packet p;

    start(b, "mqtt-acl-sub", 1, 0, NULL);
    port = b->port[P_MQTT];

    m = login(port, "c1", "alice", "secret-a");
    /* One allowed and one denied filter in a SUBSCRIBE. */
    subscribe(m, 1, (const char *const[]){"alice/#", "secret/#"}, (const int[]){1, 0x80}, 2);
    subscribe(m, 2,
              (const char *const[]){"#", "+/x", "alice/+/deep", "$SYS/#", "public/#", "public/a/+",
                                    "clients/c1/#", "clients/c2/#", "clients/+/#", "users/alice/#",
                                    "users/bob/#", "users/+/x", "+", "alice", "public/+/#"},
              (const int[]){1, 1, 1, 0x80, 1, 1, 1, 0x80, 1, 1, 0x80, 1, 1, 1, 1}, 15);
    sbt_mq_disconnect(m);
    expect_log(b, "SUBSCRIBE to $SYS/# denied by the ACL");

    /* bob reads `#` but $SYS only where a rule names it. */
    m = login(port, "bob-1", "bob", "secret-b");
    subscribe(m, 1, (const char *const[]){"#", "$SYS/other/#", "$SYS/+/x", "secret/+/y"},
              (const int[]){1, 0x80, 1, 1}, 4);
    sbt_mq_sub1(m, 2, "$SYS/broker/#", 0);
    sbt_mq_expect(m, &p, SB_MQTT_PUBLISH, 0);
    if (p.publish.topic.n < 12 || memcmp(p.publish.topic.p, "$SYS/broker/", 12) != 0)
        fail_msg("$SYS/broker/# got %.*s", (int)p.publish.topic.n, p.publish.topic.p);
    sbt_mq_close(m);

    /* eve: a deny rule inside `#` does not refuse `#` (nor `+/x`). */
    m = login(port, "eve-1", "eve", "secret-e");
    subscribe(m, 1, (const char *const[]){"#", "public/#", "private/x", "+/x", "other/+"},
              (const int[]){1, 1, 0x80, 1, 1}, 5);
    sbt_mq_disconnect(m);

    /* Anonymous: the rules before any `user` line, and %c. */
    m = login(port, "anon1", NULL, NULL);
    subscribe(m, 1,
              (const char *const[]){"public/#", "alice/#", "clients/anon1/#", "users/anon1/#", "#"},
              (const int[]){1, 0x80, 1, 0x80, 1}, 5);
    sbt_mq_disconnect(m);

    /* Client ids that are not a plain level do not widen %c. */
    m = login(port, "a/b", "alice", "secret-a");
    subscribe(m, 1, (const char *const[]){"clients/a/b/#", "clients/a/#", "alice/#"},
              (const int[]){0x80, 0x80, 1}, 3);
    sbt_mq_disconnect(m);
    m = login(port, "+", "alice", "secret-a");
    subscribe(m, 1, (const char *const[]){"clients/+/#", "clients/x/#"}, (const int[]){0x80, 0x80},
              2);
    sbt_mq_disconnect(m);
    m = login(port, "#", "alice", "secret-a");
    subscribe(m, 1, (const char *const[]){"clients/#"}, (const int[]){0x80}, 1);
    sbt_mq_disconnect(m);

    /* A stock client: mosquitto_sub gives up when every filter is denied
     * and reports the per-filter codes in its debug output. */
    if (sbt_mq_tool(MOSQUITTO_SUB) != NULL) {
        sbt_argv a;
        char *out;
        int rc;
        mosq(&a, MOSQUITTO_SUB, port);
        add_login(&a, "alice", "secret-a");
        add_args(&a, (const char *const[]){"-d", "-t", "secret/#", "-C", "1", "-W", "10", NULL});
        rc = run_any(&a, &out);
        if (rc != 0 || strstr(out, "Subscribed (mid: 1): 128") == NULL ||
            strstr(out, "All subscription requests were denied") == NULL)
            fail_msg("mosquitto_sub -u alice -t 'secret/#' exited with %d:\n%s", rc, out);
        free(out);
    }
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* PUBLISH under the ACL: a denied PUBLISH is acknowledged at its QoS
 * (PUBACK, PUBREC/PUBCOMP) and dropped: bob, reading `#`, does not get it,
 * a denied retained message is not retained, and the connection stays up.
 * %c and %u work for writing and reading; jsonl clients are anonymous and
 * under the same rules. */
static void test_acl_publish(void **state)
{
    sbt_broker *b = *state;
    int port;
    sbt_mq *alice, *bob, *anon, *feeder;
    sbt_conn *c;
    json_t *r;

    start(b, "mqtt-acl-pub", 1, 0, NULL);
    port = b->port[P_MQTT];
    c = sbt_connect(b->port[P_JSONL]);

    bob = login(port, "bob-1", "bob", "secret-b");
    sbt_mq_sub1(bob, 1, "#", 1);
    alice = login(port, "c1", "alice", "secret-a");
    sbt_broker_mark_log(b);
    publish1(alice, "secret/x", "denied", 0, 1);
    publish1(alice, "public/x", "read-only", 0, 2);
    publish1(alice, "users/alice/x", "read-only", 0, 3);
    publish1(alice, "clients/c2/x", "not-mine", 0, 4);
    publish1(alice, "secret/r", "denied-retained", 1, 5);
    sbt_mq_publish(alice, "secret/q2", "denied", 2, 0, 0, 6);
    sbt_mq_expect(alice, &(sb_mqtt_packet){0}, SB_MQTT_PUBREC, 6);
    sbt_mq_ack(alice, SB_MQTT_PUBREL, 6);
    sbt_mq_expect(alice, &(sb_mqtt_packet){0}, SB_MQTT_PUBCOMP, 6);
    sbt_mq_publish(alice, "secret/q0", "denied", 0, 0, 0, 0);
    publish1(alice, "clients/c1/x", "mine", 0, 7);
    publish1(alice, "alice/x", "own", 0, 8);
    /* bob gets the two allowed ones, in order, and nothing before them. */
    expect_pub(bob, "clients/c1/x", "mine");
    expect_pub(bob, "alice/x", "own");
    expect_log(b, "PUBLISH to secret/x denied by the ACL");
    expect_log(b, "PUBLISH to clients/c2/x denied by the ACL");

    /* Not retained: a new subscription gets no retained message; the next
     * thing bob sees is alice's marker. */
    sbt_mq_sub1(bob, 2, "secret/#", 1);
    publish1(alice, "alice/marker", "m1", 0, 9);
    expect_pub(bob, "alice/marker", "m1");

    /* Anonymous clients only read public/#. */
    anon = login(port, "anon1", NULL, NULL);
    publish1(anon, "public/anon", "read-only", 0, 1);
    publish1(anon, "clients/anon1/x", "mine", 0, 2);
    expect_pub(bob, "clients/anon1/x", "mine");
    sbt_mq_disconnect(anon);

    /* jsonl: anonymous too. */
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "alice/j", "payload", "x");
    sbt_expect_error(r, "SB_EAUTH");
    r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "public/j", "payload", "x");
    sbt_expect_error(r, "SB_EAUTH");
    r = sbt_call(c, "{s:s, s:s, s:s, s:i}", "op", "sub", "sub", "j-alice", "filter", "alice/#",
                 "window", 10);
    sbt_expect_error(r, "SB_EAUTH");
    sbt_sub(c, "j-public", "public/#", 10);
    publish1(alice, "alice/marker", "m2", 0, 10);
    expect_pub(bob, "alice/marker", "m2");

    /* Reading: feeder writes anywhere; alice reads her own users/ level
     * and public/#, bob everything, the jsonl client public/#. */
    subscribe(alice, 11, (const char *const[]){"users/alice/#", "public/#", "users/bob/#"},
              (const int[]){1, 1, 0x80}, 3);
    feeder = login(port, "feeder-1", "feeder", "secret-f");
    publish1(feeder, "users/bob/x", "for-bob", 0, 1);
    publish1(feeder, "users/alice/x", "for-alice", 0, 2);
    publish1(feeder, "public/news", "for-all", 0, 3);
    expect_pub(alice, "users/alice/x", "for-alice");
    expect_pub(alice, "public/news", "for-all");
    expect_pub(bob, "users/bob/x", "for-bob");
    expect_pub(bob, "users/alice/x", "for-alice");
    expect_pub(bob, "public/news", "for-all");
    {
        json_t *msg = sbt_next_msg(c, SBT_REPLY_MS);
        assert_string_equal(sbt_str(msg, "topic"), "public/news");
        assert_string_equal(sbt_str(msg, "payload"), "for-all");
        sbt_ack(c, "j-public", sbt_int(msg, "msg_id"));
        json_decref(msg);
    }
    /* feeder writes but cannot read. */
    subscribe(feeder, 4, (const char *const[]){"public/#", "users/feeder/#"},
              (const int[]){0x80, 1}, 2);

    /* All connections survived their denied packets. */
    sbt_mq_ping(alice);
    sbt_mq_ping(bob);
    sbt_mq_disconnect(feeder);
    sbt_mq_disconnect(alice);
    sbt_mq_disconnect(bob);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* A will whose topic the client may not write refuses the CONNECT with
 * 0x05 (for users and anonymous clients, and for mosquitto_pub); an
 * allowed will is published when the connection breaks. */
static void test_acl_will(void **state)
{
    sbt_broker *b = *state;
    int port;
    sbt_mq_opts o;
    sbt_mq *bob, *m;

    start(b, "mqtt-acl-will", 1, 0, NULL);
    port = b->port[P_MQTT];
    bob = login(port, "bob-1", "bob", "secret-b");
    sbt_mq_sub1(bob, 1, "#", 1);

    opts_init(&o, "c1", "alice", "secret-a");
    o.will_topic = "secret/will";
    o.will_payload = "gone";
    o.will_qos = 1;
    expect_refused_opts(port, &o, SB_MQTT_CONNACK_NOT_AUTHORIZED, "alice, will to secret/will");
    o.will_topic = "public/will"; /* read-only for alice */
    expect_refused_opts(port, &o, SB_MQTT_CONNACK_NOT_AUTHORIZED, "alice, will to public/will");
    opts_init(&o, "anon1", NULL, NULL);
    o.will_topic = "public/will";
    expect_refused_opts(port, &o, SB_MQTT_CONNACK_NOT_AUTHORIZED, "anonymous, will to public/");
    expect_log(b, "the will's topic is denied by the ACL");

    opts_init(&o, "c1", "alice", "secret-a");
    o.will_topic = "clients/c1/will";
    o.will_payload = "gone-c1";
    o.will_qos = 1;
    m = sbt_mq_client(port, &o, NULL);
    sbt_mq_close(m); /* no DISCONNECT: the will goes out */
    expect_pub(bob, "clients/c1/will", "gone-c1");

    if (sbt_mq_tool(MOSQUITTO_PUB) != NULL) {
        sbt_argv a;
        mosq(&a, MOSQUITTO_PUB, port);
        add_login(&a, "alice", "secret-a");
        add_args(&a, (const char *const[]){"-t", "alice/x", "-m", "x", "--will-topic",
                                           "secret/will", "--will-payload", "w", NULL});
        free(run(&a, SB_MQTT_CONNACK_NOT_AUTHORIZED));
    }
    /* Nothing else reached bob. */
    m = login(port, "c1", "alice", "secret-a");
    publish1(m, "alice/marker", "m", 0, 1);
    expect_pub(bob, "alice/marker", "m");
    sbt_mq_disconnect(m);
    sbt_mq_disconnect(bob);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* An ACL without a password file: a user name proves nothing, so a client
 * that gives one (with any password) is anonymous for the ACL: it gets the
 * anonymous rules, not the user's, and %u stands for nobody. */
static void test_acl_without_password_file(void **state)
{
    sbt_broker *b = *state;
    char file[SBT_PATH_MAX], line[SBT_PATH_MAX + 32];
    sbt_mq *m;
    static const char tmpl[] = "broker:\n"
                               "  data_dir: '{data}'\n"
                               "  admin: { endpoint: 'off' }\n"
                               "  auth:\n"
                               "{v0}"
                               "adapters:\n"
                               "  - name: clients\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port0}\n"
                               "    protocol: jsonl\n"
                               "  - name: mqtt\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port1}\n"
                               "    protocol: mqtt\n";

    sbt_broker_init(b, "mqtt-acl-nopw", 2);
    path_in(b, file, sizeof(file), "acl");
    sbt_write_file(file, acl, strlen(acl));
    snprintf(line, sizeof(line), "    acl_file: '%s'\n", file);
    sbt_broker_set(b, 0, line);
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);

    m = login(b->port[1], "c1", "alice", "anything");
    subscribe(m, 1, (const char *const[]){"alice/#", "users/alice/#", "public/#", "clients/c1/#"},
              (const int[]){0x80, 0x80, 1, 1}, 4);
    sbt_mq_disconnect(m);
    m = login(b->port[1], "c2", "bob", NULL);
    subscribe(m, 1, (const char *const[]){"secret/#", "users/bob/#"}, (const int[]){0x80, 0x80}, 2);
    sbt_mq_disconnect(m);
    expect_log(b, "keep alive 0 s, anonymous)");
    expect_not_logged(b, "user alice");
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* A persistent session's subscriptions were checked against its owner's
 * rules. Another identity connecting with the same client id (clean
 * session 0) must not read through them: the broker may refuse it, drop
 * the subscriptions it may not hold, or filter deliveries, but neither the
 * message queued for alice nor a new one on alice/# reaches it. */
static void test_acl_session_takeover(void **state)
{
    sbt_broker *b = *state;
    int port;
    sbt_mq_opts o;
    sbt_mq *m, *feeder;
    sb_mqtt_connack ack;
    sb_mqtt_packet p;

    start(b, "mqtt-acl-takeover", 1, 0, NULL);
    port = b->port[P_MQTT];
    opts_init(&o, "shared", "alice", "secret-a");
    o.clean = 0;
    m = sbt_mq_client(port, &o, NULL);
    sbt_mq_sub1(m, 1, "alice/#", 1);
    sbt_mq_disconnect(m);
    feeder = login(port, "feeder-1", "feeder", "secret-f");
    publish1(feeder, "alice/queued", "for-alice-only", 0, 1);

    /* The anonymous client (loopback: allowed) takes the id. */
    opts_init(&o, "shared", NULL, NULL);
    o.clean = 0;
    m = sbt_mq_open(port);
    sbt_mq_connect(m, &o, &ack);
    if (ack.return_code == SB_MQTT_CONNACK_ACCEPTED) {
        sbt_mq_sub1(m, 1, "public/#", 1);
        publish1(feeder, "alice/live", "for-alice-only", 0, 2);
        publish1(feeder, "public/marker", "m", 0, 3);
        sbt_mq_expect(m, &p, SB_MQTT_PUBLISH, 0);
        if (!sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, "public/marker"))
            fail_msg("an anonymous client that took over alice's session (client id \"shared\") "
                     "received %.*s \"%.*s\", which only alice may read",
                     (int)p.publish.topic.n, p.publish.topic.p, (int)p.publish.payload.n,
                     (const char *)p.publish.payload.p);
        if (p.packet_id != 0)
            sbt_mq_ack(m, SB_MQTT_PUBACK, p.packet_id);
        sbt_mq_disconnect(m);
    } else {
        sbt_mq_close(m);
    }
    sbt_mq_disconnect(feeder);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Connects to the admin endpoint (a Unix socket in the test's directory):
 * a trusted jsonl client, under no ACL. */
static sbt_conn *connect_admin(sbt_broker *b)
{
    sbt_conn *c = calloc(1, sizeof(*c));
    char endpoint[SBT_PATH_MAX + 32];
    sb_error err;
    assert_non_null(c);
    snprintf(endpoint, sizeof(endpoint), "unix:%s/admin.sock", b->dir);
    snprintf(c->endpoint, sizeof(c->endpoint), "admin endpoint");
    if (sb_client_connect(&c->c, endpoint, NULL, &err) != 0)
        fail_msg("cannot connect to %s: %s", endpoint, err.msg);
    c->stash = json_array();
    assert_non_null(c->stash);
    return c;
}

/* 1 if c's `stats` list queue `name`. */
static int lists_queue(sbt_conn *c, const char *name)
{
    json_t *q = sbt_queue_stats(c, name);
    json_decref(q);
    return q != NULL;
}

/* The client id `id` as user (NULL: anonymous) with clean session `clean`
 * gets CONNACK 5 (not authorized). */
static void expect_not_owner(int port, const char *id, const char *user, const char *password,
                             int clean)
{
    sbt_mq_opts o;
    char what[200];
    opts_init(&o, id, user, password);
    o.clean = clean;
    snprintf(what, sizeof(what), "%s with client id %s, clean session %d",
             user != NULL ? user : "an anonymous client", id, clean);
    expect_refused_opts(port, &o, SB_MQTT_CONNACK_NOT_AUTHORIZED, what);
}

/* A persistent connection of user (NULL: anonymous) with client id id;
 * asserts it is accepted with session present `present`. */
static sbt_mq *resume(int port, const char *id, const char *user, const char *password, int present)
{
    sbt_mq_opts o;
    sbt_mq *m;
    int got;
    opts_init(&o, id, user, password);
    o.clean = 0;
    m = sbt_mq_client(port, &o, &got);
    if (got != present)
        fail_msg("%s resuming %s: session present %d, want %d", user ? user : "anonymous", id, got,
                 present);
    return m;
}

/* A persistent session belongs to the identity that made it (issue 17,
 * item 1): bob, with his own password and alice's client id, gets CONNACK 5
 * with clean session 0 (he would take her session over) and 1 (he would
 * delete it and close her connection), and so does an anonymous client;
 * alice's queued messages and her live connection survive that, and she
 * takes over her own session. A session made by an anonymous client has no
 * owner: the first user who resumes it claims it (logged), and from then
 * on it is his. Owners survive a restart. */
static void test_session_owner(void **state)
{
    sbt_broker *b = *state;
    sbt_mq *alice, *alice2, *feeder, *m;
    char payload[16];
    int port;

    start(b, "mqtt-owner", 1, 0, NULL);
    port = b->port[P_MQTT];
    alice = resume(port, "alice-dur", "alice", "secret-a", 0);
    sbt_mq_sub1(alice, 1, "alice/inbox/#", 1);
    sbt_mq_disconnect(alice);
    feeder = login(port, "feeder-1", "feeder", "secret-f");
    for (int i = 1; i <= 3; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        publish1(feeder, "alice/inbox/x", payload, 0, (uint16_t)i);
    }

    sbt_broker_mark_log(b);
    expect_not_owner(port, "alice-dur", "bob", "secret-b", 0);
    expect_not_owner(port, "alice-dur", "bob", "secret-b", 1);
    expect_not_owner(port, "alice-dur", NULL, NULL, 0);
    expect_not_owner(port, "alice-dur", NULL, NULL, 1);
    expect_log(b, "connection refused (CONNACK 5): client id alice-dur is the session of user "
                  "alice, not of user bob");
    expect_log(b, "not of an anonymous client");

    /* Her session is whole: the three messages, in order. */
    alice = resume(port, "alice-dur", "alice", "secret-a", 1);
    for (int i = 1; i <= 3; i++) {
        snprintf(payload, sizeof(payload), "m%d", i);
        expect_pub(alice, "alice/inbox/x", payload);
    }
    /* Her live connection is not closed by bob's attempt. */
    expect_not_owner(port, "alice-dur", "bob", "secret-b", 1);
    sbt_mq_ping(alice);
    publish1(feeder, "alice/inbox/x", "live", 0, 4);
    expect_pub(alice, "alice/inbox/x", "live");
    /* The owner takes over her own session. */
    alice2 = resume(port, "alice-dur", "alice", "secret-a", 1);
    assert_true(sbt_mq_wait_closed(alice, SBT_REPLY_MS));
    sbt_mq_close(alice);
    publish1(feeder, "alice/inbox/x", "after-takeover", 0, 5);
    expect_pub(alice2, "alice/inbox/x", "after-takeover");
    sbt_mq_disconnect(alice2);

    /* An anonymous client's session: bob claims it; then it is his. */
    m = resume(port, "shared-dur", NULL, NULL, 0);
    sbt_mq_sub1(m, 1, "public/#", 1);
    sbt_mq_disconnect(m);
    sbt_broker_mark_log(b);
    m = resume(port, "shared-dur", "bob", "secret-b", 1);
    expect_log(b, "session mqtt/shared-dur had no owner (made by an anonymous client, or stored "
                  "before owners were recorded): now owned by user bob");
    publish1(feeder, "public/x", "for-bob", 0, 6);
    expect_pub(m, "public/x", "for-bob");
    sbt_mq_disconnect(m);
    expect_not_owner(port, "shared-dur", NULL, NULL, 0);
    expect_not_owner(port, "shared-dur", "alice", "secret-a", 1);
    sbt_mq_disconnect(feeder);

    /* The owners are stored with the sessions. */
    sbt_broker_stop(b);
    sbt_broker_start(b);
    expect_not_owner(port, "alice-dur", "bob", "secret-b", 0);
    expect_not_owner(port, "shared-dur", "alice", "secret-a", 0);
    alice = resume(port, "alice-dur", "alice", "secret-a", 1);
    sbt_mq_disconnect(alice);
    m = resume(port, "shared-dur", "bob", "secret-b", 1);
    sbt_mq_disconnect(m);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Subscriptions as Mosquitto grants them (issue 17, item 6): refused only
 * when the ACL lets the client read nothing the filter matches. eve reads
 * `#` but not private/#: `#` is granted and private/... messages are not
 * delivered, while private/x alone is refused. The same for jsonl: a new
 * subscription to `#` of an anonymous client (who reads public/#) gets
 * public/... only; an existing one it may read only in part is refused
 * (it may be someone else's, whose messages it would drop), one it reads
 * wholly is not. */
static void test_acl_subscribe_partly(void **state)
{
    sbt_broker *b = *state;
    sbt_mq *eve, *feeder;
    sbt_conn *c, *c2;
    json_t *r, *msg;
    int port;

    start(b, "mqtt-acl-partly", 1, 0, NULL);
    port = b->port[P_MQTT];
    eve = login(port, "eve-1", "eve", "secret-e");
    subscribe(eve, 1, (const char *const[]){"#", "private/x"}, (const int[]){1, 0x80}, 2);
    feeder = login(port, "feeder-1", "feeder", "secret-f");
    publish1(feeder, "private/x", "not-for-eve", 0, 1);
    publish1(feeder, "private/y/z", "not-for-eve", 0, 2);
    publish1(feeder, "public/x", "for-eve", 0, 3);
    expect_pub(eve, "public/x", "for-eve");
    publish1(feeder, "other/y", "for-eve-too", 0, 4);
    expect_pub(eve, "other/y", "for-eve-too");
    sbt_mq_disconnect(eve);

    c = sbt_connect(b->port[P_JSONL]);
    sbt_sub(c, "j-all", "#", 10);
    r = sbt_call(c, "{s:s, s:s, s:s, s:i}", "op", "sub", "sub", "j-alice", "filter", "alice/#",
                 "window", 10);
    sbt_expect_error(r, "SB_EAUTH");
    publish1(feeder, "alice/x", "not-for-anonymous", 0, 5);
    publish1(feeder, "public/y", "for-anonymous", 0, 6);
    msg = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(msg, "sub"), "j-all");
    assert_string_equal(sbt_str(msg, "topic"), "public/y");
    sbt_ack(c, "j-all", sbt_int(msg, "msg_id"));
    json_decref(msg);

    c2 = sbt_connect(b->port[P_JSONL]);
    r = sbt_call(c2, "{s:s, s:s}", "op", "sub", "sub", "j-all");
    sbt_expect_error(r, "SB_EAUTH");
    sbt_sub(c2, "public-feed", NULL, 10);
    msg = sbt_next_msg(c2, SBT_REPLY_MS);
    assert_string_equal(sbt_str(msg, "topic"), "public/x");
    json_decref(msg);
    sbt_close(c2);
    sbt_close(c);
    sbt_mq_disconnect(feeder);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* With an ACL, a jsonl client's `stats` show its own subscriptions and the
 * queues it may read wholly (issue 17, item 4): not alice's MQTT session
 * (nor its filter), not secret-feed, not another client's subscription to
 * `#`; the admin endpoint shows every queue. */
static void test_stats_visible(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c, *c2, *admin;
    sbt_mq *alice;
    json_t *r;
    char *text;

    start(b, "mqtt-stats", 1, 0, NULL);
    alice = resume(b->port[P_MQTT], "alice-dur", "alice", "secret-a", 0);
    sbt_mq_sub1(alice, 1, "alice/inbox/#", 1);
    sbt_mq_disconnect(alice);

    c = sbt_connect(b->port[P_JSONL]);
    sbt_sub(c, "j-pub", "public/#", 10);
    assert_true(lists_queue(c, "j-pub"));
    assert_true(lists_queue(c, "public-feed"));
    assert_false(lists_queue(c, "secret-feed"));
    assert_false(lists_queue(c, "mqtt/alice-dur"));
    sbt_sub(c, "j-all", "#", 10); /* its own, though not wholly readable */
    assert_true(lists_queue(c, "j-all"));
    r = sbt_call(c, "{s:s}", "op", "stats");
    text = json_dumps(r, JSON_COMPACT);
    assert_non_null(text);
    if (strstr(text, "alice") != NULL || strstr(text, "secret") != NULL)
        fail_msg("an anonymous client's stats name another user's queue:\n%s", text);
    free(text);
    json_decref(r);

    c2 = sbt_connect(b->port[P_JSONL]);
    assert_true(lists_queue(c2, "j-pub"));
    assert_false(lists_queue(c2, "j-all"));

    admin = connect_admin(b);
    assert_true(lists_queue(admin, "mqtt/alice-dur"));
    assert_true(lists_queue(admin, "secret-feed"));
    assert_true(lists_queue(admin, "j-all"));
    assert_true(lists_queue(admin, "public-feed"));
    sbt_close(admin);
    sbt_close(c2);
    sbt_close(c);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* The broker's counts of password checks (stats broker.logins) through
 * the jsonl port. */
static void login_counts(int port, int64_t *hashed, int64_t *cached)
{
    sbt_conn *c = sbt_connect(port);
    json_t *r = sbt_call(c, "{s:s}", "op", "stats");
    json_t *l = json_object_get(json_object_get(r, "broker"), "logins");
    if (l == NULL)
        fail_msg("the stats have no broker.logins");
    *hashed = sbt_int(l, "hashed");
    *cached = sbt_int(l, "cached");
    json_decref(r);
    sbt_close(c);
}

/* The CONNACK of a login that hashes the password at the default PBKDF2
 * count, within ms: a check costs about 150 ms of CPU on an idle core, and
 * the first ones of a storm share the cores with each other and with
 * whatever else runs, so they get more than SBT_REPLY_MS. */
static void expect_hashed_connack(sbt_mq *m, int code, int ms)
{
    sb_mqtt_packet p;
    int rc = sbt_mq_next(m, &p, ms);
    if (rc == -1)
        fail_msg("no CONNACK from the broker within %d ms", ms);
    if (rc == -2)
        fail_msg("the broker closed the connection; expected CONNACK");
    if (p.type != SB_MQTT_CONNACK)
        fail_msg("expected CONNACK, got %s", sb_mqtt_type_name(p.type));
    assert_int_equal(p.connack.return_code, code);
}

/* A login storm: 100 clients log in at once as one user, with a password
 * file at the default PBKDF2 count (about 150 ms a check on an idle core).
 * Verified logins are cached, so only the checks that started before the
 * first one finished hash the password (at most one per thread of libuv's
 * pool); the rest are answered from the cache. Counted, not timed. */
static void test_login_storm(void **state)
{
    enum { N = 100 };
    sbt_broker *b = *state;
    static const char tmpl[] = "broker:\n"
                               "  data_dir: '{data}'\n"
                               "  admin: { endpoint: 'off' }\n"
                               "  auth:\n"
                               "    password_file: '{dir}/passwd'\n"
                               "adapters:\n"
                               "  - name: clients\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port0}\n"
                               "    protocol: jsonl\n"
                               "  - name: mqtt\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port1}\n"
                               "    protocol: mqtt\n"
                               "    max_connections: 500\n";
    char file[SBT_PATH_MAX], text[1024], id[32];
    char *h1;
    sbt_mq *m[N];
    sbt_mq_opts o;
    int64_t hashed0, cached0, hashed, cached, pool = 4;
    const char *pool_env = getenv("UV_THREADPOOL_SIZE");

    if (pool_env != NULL && atoi(pool_env) > 0)
        pool = atoi(pool_env);
    sbt_broker_init(b, "mqtt-storm", 2);
    assert_int_equal(sb_auth_hash_password(&h1, "storm-pw", 8, SB_AUTH_DEFAULT_ITERATIONS), 0);
    snprintf(text, sizeof(text), "storm:%s\n", h1);
    sb_free(h1);
    path_in(b, file, sizeof(file), "passwd");
    sbt_write_file(file, text, strlen(text));
    sbt_broker_config(b, tmpl);
    sbt_broker_start(b);

    login_counts(b->port[0], &hashed0, &cached0);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "storm-%d", i);
        opts_init(&o, id, "storm", "storm-pw");
        m[i] = sbt_mq_open(b->port[1]);
        sbt_mq_send_connect(m[i], &o);
    }
    for (int i = 0; i < N; i++)
        expect_hashed_connack(m[i], SB_MQTT_CONNACK_ACCEPTED, HASH_MS);
    login_counts(b->port[0], &hashed, &cached);
    fprintf(stderr, "%d logins at once: %lld hashed, %lld from the cache\n", N,
            (long long)(hashed - hashed0), (long long)(cached - cached0));
    assert_int_equal((hashed - hashed0) + (cached - cached0), N);
    if (hashed - hashed0 > pool)
        fail_msg("%d logins at once hashed the password %lld times (at most %lld threads check at "
                 "once): logins are not cached",
                 N, (long long)(hashed - hashed0), (long long)pool);

    /* a wrong password is never answered from the cache */
    opts_init(&o, "storm-wrong", "storm", "not-the-pw");
    for (int i = 0; i < N; i++)
        sbt_mq_disconnect(m[i]);
    {
        sbt_mq *w = sbt_mq_open(b->port[1]);
        sbt_mq_send_connect(w, &o);
        expect_hashed_connack(w, SB_MQTT_CONNACK_BAD_LOGIN, HASH_MS);
        sbt_mq_close(w);
    }
    login_counts(b->port[0], &hashed0, &cached0);
    assert_int_equal(hashed0, hashed + 1);
    assert_int_equal(cached0, cached);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* A reloaded ACL (SIGHUP) applies to what connected clients receive: once
 * alice loses alice/#, her existing subscription delivers nothing more. */
static void test_acl_reload_revokes(void **state)
{
    sbt_broker *b = *state;
    int port;
    sbt_mq *alice, *feeder;
    char file[SBT_PATH_MAX];
    static const char narrower[] = "user alice\n"
                                   "topic read public/#\n"
                                   "\n"
                                   "user feeder\n"
                                   "topic write #\n";

    start(b, "mqtt-acl-reload", 1, 0, NULL);
    port = b->port[P_MQTT];
    alice = login(port, "c1", "alice", "secret-a");
    subscribe(alice, 1, (const char *const[]){"alice/#", "public/#"}, (const int[]){1, 1}, 2);
    feeder = login(port, "feeder-1", "feeder", "secret-f");
    publish1(feeder, "alice/before", "ok", 0, 1);
    expect_pub(alice, "alice/before", "ok");

    path_in(b, file, sizeof(file), "acl");
    sbt_write_file(file, narrower, strlen(narrower));
    sbt_broker_mark_log(b);
    sbt_broker_signal(b, SIGHUP);
    expect_log(b, "configuration reloaded");
    /* New subscriptions follow the new rules... */
    subscribe(alice, 2, (const char *const[]){"alice/new/#"}, (const int[]){0x80}, 1);
    /* ...and so should the old one. */
    publish1(feeder, "alice/after", "revoked", 0, 2);
    publish1(feeder, "public/marker", "m", 0, 3);
    {
        sb_mqtt_packet p;
        sbt_mq_expect(alice, &p, SB_MQTT_PUBLISH, 0);
        if (!sbt_mq_eq(p.publish.topic.p, p.publish.topic.n, "public/marker"))
            fail_msg("after a reload that took alice/# from alice, her subscription still "
                     "delivered %.*s \"%.*s\"",
                     (int)p.publish.topic.n, p.publish.topic.p, (int)p.publish.payload.n,
                     (const char *)p.publish.payload.p);
        if (p.packet_id != 0)
            sbt_mq_ack(alice, SB_MQTT_PUBACK, p.packet_id);
    }
    sbt_mq_disconnect(feeder);
    sbt_mq_disconnect(alice);
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

/* Writes an OpenSSL config that pins clients to one TLS version (and lets
 * TLS 1.1 use its ciphers): OPENSSL_CONF makes mosquitto_pub speak it,
 * since its --tls-version tlsv1.1 only sets a minimum. */
static void write_openssl_conf(const char *path, const char *version)
{
    char text[512];
    int n = snprintf(text, sizeof(text),
                     "openssl_conf = conf\n"
                     "[conf]\n"
                     "ssl_conf = ssl\n"
                     "[ssl]\n"
                     "system_default = sys\n"
                     "[sys]\n"
                     "MinProtocol = %s\n"
                     "MaxProtocol = %s\n"
                     "CipherString = DEFAULT@SECLEVEL=0\n",
                     version, version);
    sbt_write_file(path, text, (size_t)n);
}

/* mosquitto_pub over TLS through `env OPENSSL_CONF=conf` (conf NULL: no
 * env), with --cafile and the extra args; returns the exit code. */
static int tls_pub(int port, const char *conf, const char *const *extra, char **out)
{
    sbt_argv a;
    char ca[SBT_PATH_MAX], tls_dir[SBT_PATH_MAX];
    sbt_path(tls_dir, sizeof(tls_dir), sbt_test_data(), "tls");
    sbt_path(ca, sizeof(ca), tls_dir, "ca.pem");
    if (conf != NULL) {
        sbt_argv_init(&a, "/usr/bin/env");
        sbt_argv_add(&a, "OPENSSL_CONF=%s", conf);
        sbt_argv_add(&a, "%s", sbt_mq_tool(MOSQUITTO_PUB));
    } else {
        sbt_argv_init(&a, sbt_mq_tool(MOSQUITTO_PUB));
    }
    add_args(&a, (const char *const[]){"-h", "127.0.0.1", NULL});
    sbt_argv_add(&a, "-p");
    sbt_argv_add(&a, "%d", port);
    sbt_argv_add(&a, "--cafile");
    sbt_argv_add(&a, "%s", ca);
    add_args(&a, extra);
    return run_any(&a, out);
}

/* tls_pub that must succeed. */
static void tls_pub_ok(int port, const char *const *extra)
{
    char *out;
    int rc = tls_pub(port, NULL, extra, &out);
    if (rc != 0)
        fail_msg("mosquitto_pub over TLS exited with %d:\n%s", rc, out);
    free(out);
}

/* Spawns mosquitto_sub over TLS (--cafile, -d -v -q 1 -C 2 and the extra
 * args) writing to file, and waits until it printed its first message (a
 * retained one the test published before). */
static void tls_sub(sbt_proc *p, int port, const char *file, const char *const *extra)
{
    char ca[SBT_PATH_MAX], tls_dir[SBT_PATH_MAX];
    sbt_argv a;
    sbt_path(tls_dir, sizeof(tls_dir), sbt_test_data(), "tls");
    sbt_path(ca, sizeof(ca), tls_dir, "ca.pem");
    memset(p, 0, sizeof(*p));
    mosq(&a, MOSQUITTO_SUB, port);
    add_args(&a, (const char *const[]){"--cafile", ca, "-d", "-v", "-q", "1", "-C", "2", "-W", "20",
                                       NULL});
    add_args(&a, extra);
    assert_int_equal(sbt_spawn(p, a.v, NULL, file), 0);
    sbt_argv_free(&a);
    sbt_wait_file_text(file, "/ready ready\n", 1, SBT_REPLY_MS);
}

/* Waits for a tls_sub to exit 0 (its second message); returns its
 * output (free()). */
static char *tls_sub_done(sbt_proc *p, const char *file)
{
    char *out;
    int exited = sbt_proc_wait(p, SBT_REPLY_MS);
    out = sbt_read_file(file, NULL);
    if (!exited || p->exit_status != 0)
        fail_msg("mosquitto_sub over TLS %s:\n%s",
                 exited ? "failed" : "did not get its second message", out ? out : "");
    sbt_proc_release(p);
    return out;
}

/* MQTT over TLS: mosquitto_sub/_pub with --cafile make a round trip (users
 * log in with passwords); on a client_cert: require listener, alice's
 * certificate makes the client alice for the ACL without a password, while
 * no certificate, one from another CA and TLS 1.1 fail the handshake. */
static void test_tls(void **state)
{
    sbt_broker *b = *state;
    char tls_dir[SBT_PATH_MAX], cert[SBT_PATH_MAX], key[SBT_PATH_MAX];
    char mcert[SBT_PATH_MAX], mkey[SBT_PATH_MAX], file[SBT_PATH_MAX], conf11[SBT_PATH_MAX];
    char conf12[SBT_PATH_MAX], *out;
    sbt_proc sub;
    int rc;

    sbt_mq_need(MOSQUITTO_PUB, MOSQUITTO_SUB);
    sbt_path(tls_dir, sizeof(tls_dir), sbt_test_data(), "tls");
    sbt_path(cert, sizeof(cert), tls_dir, "alice.pem");
    sbt_path(key, sizeof(key), tls_dir, "alice.key");
    sbt_path(mcert, sizeof(mcert), tls_dir, "mallory.pem");
    sbt_path(mkey, sizeof(mkey), tls_dir, "mallory.key");
    start(b, "mqtt-tls", 1, 1, NULL);

    /* Round trip with passwords over a server-verified TLS connection:
     * mosquitto_sub gets a retained message first (it is subscribed once
     * that is printed), then a live one. */
    tls_pub_ok(b->port[P_TLS],
               (const char *const[]){"-u", "alice", "-P", "secret-a", "-r", "-q", "1", "-t",
                                     "alice/tls/ready", "-m", "ready", NULL});
    sbt_path(file, sizeof(file), b->dir, "sub-tls.out");
    tls_sub(&sub, b->port[P_TLS], file,
            (const char *const[]){"-u", "bob", "-P", "secret-b", "-t", "alice/tls/#", NULL});
    tls_pub_ok(b->port[P_TLS],
               (const char *const[]){"-u", "alice", "-P", "secret-a", "-q", "1", "-t",
                                     "alice/tls/live", "-m", "over-tls", NULL});
    out = tls_sub_done(&sub, file);
    if (sbt_count(out, "Subscribed (mid: 1): 1\n") != 1 ||
        sbt_count(out, "alice/tls/live over-tls\n") != 1)
        fail_msg("mosquitto_sub over TLS printed:\n%s", out);
    free(out);
    expect_log(b, "[mqtt-tls] peer 127.0.0.1:");
    expect_log(b, "TLS handshake done");

    /* alice by certificate (no password): reads alice/..., not secret/#;
     * writes alice/..., and what she writes to secret/... is dropped. */
    sbt_broker_mark_log(b);
    tls_pub_ok(b->port[P_CERT],
               (const char *const[]){"--cert", cert, "--key", key, "-r", "-q", "1", "-t",
                                     "alice/cert/ready", "-m", "ready", NULL});
    /* Since the mark, only the certificate listener had clients. */
    expect_log(b, "authenticated as alice");
    expect_log(b, "connected (clean session 1, keep alive 60 s, user alice)");
    sbt_path(file, sizeof(file), b->dir, "sub-cert.out");
    tls_sub(&sub, b->port[P_CERT], file,
            (const char *const[]){"--cert", cert, "--key", key, "-t", "alice/cert/#", "-t",
                                  "secret/#", NULL});
    tls_pub_ok(b->port[P_CERT], (const char *const[]){"--cert", cert, "--key", key, "-q", "1", "-t",
                                                      "secret/x", "-m", "denied", NULL});
    expect_log(b, "PUBLISH to secret/x denied by the ACL");
    tls_pub_ok(b->port[P_CERT], (const char *const[]){"--cert", cert, "--key", key, "-q", "1", "-t",
                                                      "alice/cert/live", "-m", "by-cert", NULL});
    out = tls_sub_done(&sub, file);
    if (sbt_count(out, "Subscribed (mid: 1): 1, 128\n") != 1 ||
        sbt_count(out, "alice/cert/live by-cert\n") != 1 || strstr(out, "secret/x") != NULL)
        fail_msg("mosquitto_sub with alice's certificate printed:\n%s", out);
    free(out);

    /* No certificate, and one from another CA: refused at the handshake,
     * nothing connected. */
    sbt_broker_mark_log(b);
    rc = tls_pub(b->port[P_CERT], NULL,
                 (const char *const[]){"-q", "1", "-t", "public/x", "-m", "no-cert", NULL}, &out);
    if (rc == 0)
        fail_msg("mosquitto_pub without a certificate was served on client_cert: require:\n%s",
                 out);
    free(out);
    expect_log(b, "peer did not return a certificate");
    rc = tls_pub(b->port[P_CERT], NULL,
                 (const char *const[]){"--cert", mcert, "--key", mkey, "-q", "1", "-t", "public/x",
                                       "-m", "other-ca", NULL},
                 &out);
    if (rc == 0)
        fail_msg("mosquitto_pub with a certificate of another CA was served:\n%s", out);
    free(out);
    expect_log(b, "certificate verify failed");
    {
        char *log = sbt_broker_log_since(b);
        if (strstr(log, "[mqtt-cert]") != NULL && strstr(log, "connected (clean session") != NULL)
            fail_msg("a client without a trusted certificate got an MQTT session:\n%s", log);
        free(log);
    }

    /* TLS 1.1 is refused by the server (minimum 1.2); the same client
     * pinned to TLS 1.2 is served, so the pin itself is not what fails. */
    path_in(b, conf11, sizeof(conf11), "tls11.cnf");
    path_in(b, conf12, sizeof(conf12), "tls12.cnf");
    write_openssl_conf(conf11, "TLSv1.1");
    write_openssl_conf(conf12, "TLSv1.2");
    sbt_broker_mark_log(b);
    rc = tls_pub(b->port[P_TLS], conf11,
                 (const char *const[]){"--tls-version", "tlsv1.1", "-u", "alice", "-P", "secret-a",
                                       "-t", "alice/x", "-m", "tls11", NULL},
                 &out);
    if (rc == 0)
        fail_msg("mosquitto_pub over TLS 1.1 was served:\n%s", out);
    free(out);
    expect_log(b, "[mqtt-tls]");
    expect_log(b, "TLS handshake failed");
    rc = tls_pub(b->port[P_TLS], conf12,
                 (const char *const[]){"-u", "alice", "-P", "secret-a", "-q", "1", "-t", "alice/x",
                                       "-m", "tls12", NULL},
                 &out);
    if (rc != 0)
        fail_msg("mosquitto_pub pinned to TLS 1.2 exited with %d:\n%s", rc, out);
    free(out);
    expect_log(b, "(TLSv1.2,");
    sbt_broker_stop(b); /* exit code 0: no crash or leak at shutdown */
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_password_login, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_anonymous, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_subscribe, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_publish, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_will, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_without_password_file, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_session_takeover, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_reload_revokes, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_session_owner, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_acl_subscribe_partly, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_stats_visible, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_login_storm, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_tls, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("mqtt_auth", tests, NULL, NULL);
}
