/*
 * mqtt_client: a small MQTT 3.1.1 client over libmosquitto that the MQTT
 * integration tests (test_mqtt.c) drive as a child process, so the broker is
 * tested against a real, independent client implementation.
 *
 *   mqtt_client sub OPTIONS   connect, subscribe to every --topic (none: rely
 *                             on the session), print each message, exit 0
 *                             once --count messages arrived (0: right after
 *                             the SUBACK; -1: never, until killed or
 *                             --timeout-ms), then DISCONNECT
 *   mqtt_client pub OPTIONS   connect, publish --count messages (payload
 *                             --payload with "%d" replaced by 0, 1, ...),
 *                             exit 0 once all are acknowledged (QoS 1:
 *                             PUBACK, QoS 2: PUBCOMP; QoS 0: written), then
 *                             DISCONNECT
 *
 * Options: --port P | --unix PATH, --id ID, --clean 0|1 (default 1), --qos Q,
 * --topic T (repeatable for sub), --count N, --payload P, --retain,
 * --null (empty payload), --keepalive S (default 60), --timeout-ms T
 * (default 10000), --session-present 0|1 (sub/pub: exit 4 if the CONNACK's
 * flag differs), --will-topic T, --will-payload P, --will-qos Q,
 * --will-retain, --no-disconnect (end by closing the socket without a
 * DISCONNECT: the will is published).
 *
 * Output, one line each, flushed at once:
 *   connack SESSION_PRESENT RC
 *   suback GRANTED...            (128 for a refused filter)
 *   msg TOPIC QOS RETAIN PAYLOAD (the payload as is; tests use text)
 *   acked N                      (pub: all N acknowledged)
 * Exit codes: 0 done, 1 timeout, 2 usage or connection failure, 3 CONNACK
 * refused, 4 session-present mismatch.
 */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TOPICS 8

typedef struct opts {
    const char *mode;
    const char *unix_path;
    int port;
    const char *id;
    int clean;
    int qos;
    const char *topics[MAX_TOPICS];
    int ntopics;
    int count;
    const char *payload;
    int retain;
    int null_payload;
    int keepalive;
    int timeout_ms;
    int session_present; /* -1: not checked */
    const char *will_topic;
    const char *will_payload;
    int will_qos;
    int will_retain;
    int no_disconnect;
} opts;

typedef struct state {
    const opts *o;
    int connected; /* 1 accepted, -1 refused or bad session-present */
    int exit_code;
    int subscribed;
    int received;
    int published; /* sent so far (pub) */
    int acked;
    int done;
} state;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(void)
{
    fprintf(stderr, "usage: mqtt_client sub|pub (--port P | --unix PATH) --id ID [options]\n"
                    "(see the comment at the top of tests/integration/mqtt_client.c)\n");
    exit(2);
}

static int parse(opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof(*o));
    o->clean = 1;
    o->count = 1;
    o->payload = "";
    o->keepalive = 60;
    o->timeout_ms = 10000;
    o->session_present = -1;
    if (argc < 2)
        return -1;
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--retain") == 0) {
            o->retain = 1;
            continue;
        }
        if (strcmp(a, "--null") == 0) {
            o->null_payload = 1;
            continue;
        }
        if (strcmp(a, "--will-retain") == 0) {
            o->will_retain = 1;
            continue;
        }
        if (strcmp(a, "--no-disconnect") == 0) {
            o->no_disconnect = 1;
            continue;
        }
        if (v == NULL)
            return -1;
        i++;
        if (strcmp(a, "--port") == 0)
            o->port = atoi(v);
        else if (strcmp(a, "--unix") == 0)
            o->unix_path = v;
        else if (strcmp(a, "--id") == 0)
            o->id = v;
        else if (strcmp(a, "--clean") == 0)
            o->clean = atoi(v);
        else if (strcmp(a, "--qos") == 0)
            o->qos = atoi(v);
        else if (strcmp(a, "--topic") == 0 && o->ntopics < MAX_TOPICS)
            o->topics[o->ntopics++] = v;
        else if (strcmp(a, "--count") == 0)
            o->count = atoi(v);
        else if (strcmp(a, "--payload") == 0)
            o->payload = v;
        else if (strcmp(a, "--keepalive") == 0)
            o->keepalive = atoi(v);
        else if (strcmp(a, "--timeout-ms") == 0)
            o->timeout_ms = atoi(v);
        else if (strcmp(a, "--session-present") == 0)
            o->session_present = atoi(v);
        else if (strcmp(a, "--will-topic") == 0)
            o->will_topic = v;
        else if (strcmp(a, "--will-payload") == 0)
            o->will_payload = v;
        else if (strcmp(a, "--will-qos") == 0)
            o->will_qos = atoi(v);
        else
            return -1;
    }
    if (strcmp(o->mode, "sub") != 0 && strcmp(o->mode, "pub") != 0)
        return -1;
    if ((o->port <= 0 && o->unix_path == NULL) || o->id == NULL)
        return -1;
    if (strcmp(o->mode, "pub") == 0 && o->ntopics != 1)
        return -1;
    return 0;
}

/* The payload of message i: o->payload with the first "%d" replaced by i. */
static int payload_of(const opts *o, int i, char *out, size_t cap)
{
    const char *pct = strstr(o->payload, "%d");
    int n;
    if (o->null_payload)
        return 0;
    if (pct == NULL)
        n = snprintf(out, cap, "%s", o->payload);
    else
        n = snprintf(out, cap, "%.*s%d%s", (int)(pct - o->payload), o->payload, i, pct + 2);
    return n < 0 || (size_t)n >= cap ? (int)cap - 1 : n;
}

static void publish_next(struct mosquitto *m, state *s)
{
    const opts *o = s->o;
    char buf[65536];
    while (s->published < o->count) {
        int n = payload_of(o, s->published, buf, sizeof(buf));
        int rc = mosquitto_publish(m, NULL, o->topics[0], n, buf, o->qos, o->retain != 0);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt_client: publish: %s\n", mosquitto_strerror(rc));
            s->exit_code = 2;
            s->done = 1;
            return;
        }
        s->published++;
    }
}

static void on_connect(struct mosquitto *m, void *ctx, int rc, int flags)
{
    state *s = ctx;
    const opts *o = s->o;
    int sp = flags & 1;
    printf("connack %d %d\n", sp, rc);
    fflush(stdout);
    if (rc != 0) {
        s->connected = -1;
        s->exit_code = 3;
        s->done = 1;
        return;
    }
    if (o->session_present >= 0 && sp != o->session_present) {
        fprintf(stderr, "mqtt_client: session present %d, expected %d\n", sp, o->session_present);
        s->connected = -1;
        s->exit_code = 4;
        s->done = 1;
        return;
    }
    s->connected = 1;
    if (strcmp(o->mode, "sub") == 0) {
        if (o->ntopics == 0) {
            s->subscribed = 1;
            if (o->count == 0)
                s->done = 1;
            return;
        }
        for (int i = 0; i < o->ntopics; i++) {
            int r = mosquitto_subscribe(m, NULL, o->topics[i], o->qos);
            if (r != MOSQ_ERR_SUCCESS) {
                fprintf(stderr, "mqtt_client: subscribe: %s\n", mosquitto_strerror(r));
                s->exit_code = 2;
                s->done = 1;
            }
        }
    } else {
        publish_next(m, s);
        if (o->qos == 0 && !s->done) {
            s->acked = s->published;
        }
    }
}

static void on_subscribe(struct mosquitto *m, void *ctx, int mid, int n, const int *granted)
{
    state *s = ctx;
    (void)m;
    (void)mid;
    printf("suback");
    for (int i = 0; i < n; i++)
        printf(" %d", granted[i]);
    printf("\n");
    fflush(stdout);
    if (++s->subscribed == s->o->ntopics && s->o->count == 0)
        s->done = 1;
}

static void on_message(struct mosquitto *m, void *ctx, const struct mosquitto_message *msg)
{
    state *s = ctx;
    (void)m;
    printf("msg %s %d %d %.*s\n", msg->topic, msg->qos, msg->retain ? 1 : 0, msg->payloadlen,
           msg->payload != NULL ? (const char *)msg->payload : "");
    fflush(stdout);
    if (s->o->count >= 0 && ++s->received >= s->o->count)
        s->done = 1;
}

static void on_publish(struct mosquitto *m, void *ctx, int mid)
{
    state *s = ctx;
    (void)m;
    (void)mid;
    if (s->o->qos > 0 && ++s->acked == s->o->count) {
        printf("acked %d\n", s->acked);
        fflush(stdout);
        s->done = 1;
    }
}

int main(int argc, char **argv)
{
    opts o;
    state s;
    struct mosquitto *m;
    long long deadline;
    int rc;

    if (parse(&o, argc, argv) != 0)
        usage();
    memset(&s, 0, sizeof(s));
    s.o = &o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    mosquitto_lib_init();
    m = mosquitto_new(o.id, o.clean != 0, &s);
    if (m == NULL) {
        fprintf(stderr, "mqtt_client: mosquitto_new failed\n");
        return 2;
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    /* Everything in flight at once: the tests count acknowledgements. */
    mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, 65535);
    mosquitto_max_inflight_messages_set(m, 0);
    if (o.will_topic != NULL) {
        const char *wp = o.will_payload != NULL ? o.will_payload : "";
        rc = mosquitto_will_set(m, o.will_topic, (int)strlen(wp), wp, o.will_qos,
                                o.will_retain != 0);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt_client: will: %s\n", mosquitto_strerror(rc));
            return 2;
        }
    }
    mosquitto_connect_with_flags_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_publish_callback_set(m, on_publish);
    /* Port 0 with a path: a Unix domain socket. */
    rc = mosquitto_connect(m, o.unix_path != NULL ? o.unix_path : "127.0.0.1",
                           o.unix_path != NULL ? 0 : o.port, o.keepalive);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt_client: connect: %s\n", mosquitto_strerror(rc));
        return 2;
    }
    if (strcmp(o.mode, "pub") == 0 && o.count == 0)
        s.done = 1;
    deadline = now_ms() + o.timeout_ms;
    s.exit_code = 0;
    while (!s.done) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr,
                    "mqtt_client: timed out (connected %d, subscribed %d, received %d, acked %d)\n",
                    s.connected, s.subscribed, s.received, s.acked);
            s.exit_code = 1;
            break;
        }
        rc = mosquitto_loop(m, left < 100 ? (int)left : 100, 1);
        if (rc != MOSQ_ERR_SUCCESS && !s.done) {
            fprintf(stderr, "mqtt_client: connection lost: %s\n", mosquitto_strerror(rc));
            s.exit_code = 2;
            break;
        }
        if (strcmp(o.mode, "pub") == 0 && o.qos == 0 && s.connected == 1 &&
            s.published == o.count && mosquitto_want_write(m) == 0) {
            printf("acked %d\n", s.published);
            s.done = 1;
        }
    }
    if (s.connected == 1 && !o.no_disconnect) {
        mosquitto_disconnect(m);
        /* Let the DISCONNECT go out. */
        for (int i = 0; i < 10 && mosquitto_loop(m, 10, 1) == MOSQ_ERR_SUCCESS; i++)
            ;
    }
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return s.exit_code;
}
