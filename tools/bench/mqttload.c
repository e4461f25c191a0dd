/*
 * mqttload: the MQTT 3.1.1 throughput load of tools/bench/bench-mqtt.sh on
 * libmosquitto (Debian's libmosquitto-dev), so that it shares no code with
 * the broker; mqttbench, on the broker's own codec, is the second opinion.
 * Same run and same RESULT line as mqttbench (its --mode all):
 *
 *  1. C consumers connect (clean session, or --persistent: clean session 0
 *     with fixed client ids) and subscribe to <prefix>/+ with --qos; all
 *     SUBACKs arrive before step 2.
 *  2. P producers connect (clean session) and publish --count messages in
 *     all to <prefix>/<producer>, each keeping at most --window QoS 1/2
 *     publishes unacknowledged.
 *  3. Every consumer must receive every message once; libmosquitto
 *     acknowledges them (PUBACK, or PUBREC/PUBCOMP for QoS 2).
 *
 * The consumers run in a child process and the producers in the parent, each
 * process one epoll loop over libmosquitto's external-loop interface
 * (mosquitto_socket, mosquitto_loop_read/_write/_misc), so the generator can
 * use both cores of a small machine. They share counters and a per-message
 * "seen" table in anonymous shared memory. Payloads start with the run id,
 * the message's index and its send time (CLOCK_MONOTONIC): duplicates,
 * missing messages and leftovers of earlier runs (stale: acknowledged and
 * ignored) are counted, and the end-to-end latency is known. The publish
 * latency is PUBLISH -> PUBACK (QoS 1) or -> PUBCOMP (QoS 2).
 *
 * Output: a human summary, then
 *   RESULT msgs_per_s=... pub_per_s=... p50_us=... p99_us=... e2e_p50_us=...
 *          e2e_p99_us=... lost=... dup=... stale=... gen_cpu_s=...
 * Exit status: 0 when every consumer got every message once, 1 otherwise or
 * on a failure, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <mosquitto.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD_HEADER 20 /* run id, message index, send time */

typedef struct options {
    const char *host;
    int port;
    int qos;
    long count;
    int size;
    int producers, consumers;
    int window;
    int persistent;
    double timeout_s;
    const char *prefix;
    const char *id_prefix;
    uint32_t run_id;
} options;

/* What the two processes share. */
typedef struct shared {
    atomic_long subscribed, failures, received, duplicates, stale;
    atomic_llong last_rx_ns;
    atomic_int stop;
} shared;

typedef struct client {
    struct mosquitto *m;
    int idx;
    int fd;
    int out_armed;
    int connacked, subscribed;
    /* producer */
    long next, end; /* message indexes [next, end) still to publish */
    int inflight;
    int64_t *sent_ns; /* by packet id */
} client;

static options opt = {
    .host = "127.0.0.1",
    .port = 1883,
    .qos = 1,
    .count = 200000,
    .size = 100,
    .producers = 4,
    .consumers = 1,
    .window = 256,
    .timeout_s = 30,
    .prefix = "bench",
    .id_prefix = "load",
};

static int ep = -1;
static shared *sh;
static uint8_t *seen;    /* [consumer][message] (shared) */
static uint32_t *e2e_us; /* consumer 0's latency per message (shared) */
static uint32_t *ack_us; /* per message (the producers' process) */
static long acked;
static int64_t t_first_pub;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mqttload: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (sh != NULL)
        sh->stop = 1;
    exit(1);
}

/* ---- the epoll loop ---- */

static void update_out(client *c)
{
    int want = mosquitto_want_write(c->m);
    if (c->fd >= 0 && want != c->out_armed) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
            die("epoll_ctl MOD: %s", strerror(errno));
        c->out_armed = want;
    }
}

static void lost_conn(client *c, int rc)
{
    if (c->fd < 0)
        return;
    fprintf(stderr, "mqttload: client %d: %s\n", c->idx, mosquitto_strerror(rc));
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->fd = -1;
    sh->failures++;
}

static void pump(int timeout_ms)
{
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        client *c = evs[i].data.ptr;
        if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            /* libmosquitto reads one packet per call; what its callbacks
             * queue (acknowledgements, a producer's next publishes) is
             * written after the batch */
            for (int k = 0; k < 1024; k++) {
                int rc;
                errno = 0;
                rc = mosquitto_loop_read(c->m, 1);
                if (rc != MOSQ_ERR_SUCCESS) {
                    lost_conn(c, rc);
                    break;
                }
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
            }
        }
        if (c->fd >= 0 && mosquitto_want_write(c->m)) {
            int rc = mosquitto_loop_write(c->m, 1);
            if (rc != MOSQ_ERR_SUCCESS)
                lost_conn(c, rc);
        }
        if (c->fd >= 0)
            update_out(c);
    }
}

static void misc_all(client *cs, int n)
{
    static int64_t last;
    int64_t t = now_ns();
    if (t - last < 1000000000)
        return;
    last = t;
    for (int i = 0; i < n; i++)
        if (cs[i].fd >= 0) {
            mosquitto_loop_misc(cs[i].m);
            update_out(&cs[i]);
        }
}

/* ---- consumers ---- */

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    client *c = obj;
    char topic[128];
    if (rc != 0)
        die("client %d: CONNACK %d (%s)", c->idx, rc, mosquitto_connack_string(rc));
    c->connacked = 1;
    if (c->sent_ns != NULL)
        return; /* a producer */
    snprintf(topic, sizeof topic, "%s/+", opt.prefix);
    if ((rc = mosquitto_subscribe(m, NULL, topic, opt.qos)) != MOSQ_ERR_SUCCESS)
        die("consumer %d: subscribe: %s", c->idx, mosquitto_strerror(rc));
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted)
{
    client *c = obj;
    (void)m;
    (void)mid;
    if (n != 1 || granted[0] != opt.qos)
        die("consumer %d: SUBACK grants %d, not QoS %d", c->idx, n > 0 ? granted[0] : -1, opt.qos);
    c->subscribed = 1;
    sh->subscribed++;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    client *c = obj;
    uint32_t run;
    uint64_t idx;
    int64_t sent, t = now_ns();
    (void)m;
    if (msg->payloadlen < PAYLOAD_HEADER)
        return;
    memcpy(&run, msg->payload, 4);
    memcpy(&idx, (const char *)msg->payload + 4, 8);
    memcpy(&sent, (const char *)msg->payload + 12, 8);
    if (run != opt.run_id || idx >= (uint64_t)opt.count) {
        sh->stale++; /* an earlier run's, left in a persistent session */
        return;
    }
    if (seen[(size_t)c->idx * (size_t)opt.count + idx]) {
        sh->duplicates++;
        return;
    }
    seen[(size_t)c->idx * (size_t)opt.count + idx] = 1;
    if (c->idx == 0)
        e2e_us[idx] = (uint32_t)((t - sent) / 1000);
    sh->last_rx_ns = t;
    sh->received++;
}

static struct mosquitto *new_mosq(const char *id, int clean, client *c)
{
    struct mosquitto *m = mosquitto_new(id, clean, c);
    int rc;
    if (m == NULL)
        die("mosquitto_new: out of memory");
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    /* the window is ours (--window); libmosquitto's own limit is 20 */
    mosquitto_max_inflight_messages_set(m, 0);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    rc = mosquitto_connect(m, opt.host, opt.port, 60);
    if (rc != MOSQ_ERR_SUCCESS)
        die("%s: connect to %s:%d: %s", id, opt.host, opt.port,
            rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    c->m = m;
    c->fd = mosquitto_socket(m);
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (c->fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            die("epoll_ctl ADD: %s", strerror(errno));
    }
    update_out(c);
    return m;
}

static void consumers_main(void)
{
    client *cs = calloc((size_t)opt.consumers, sizeof(*cs));
    char id[128];
    int64_t deadline = now_ns() + (int64_t)(opt.timeout_s * 1e9);
    if (cs == NULL || (ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("consumers: setup failed");
    for (int i = 0; i < opt.consumers; i++) {
        cs[i].idx = i;
        snprintf(id, sizeof id, "%s-c%d", opt.id_prefix, i);
        new_mosq(id, !opt.persistent, &cs[i]);
    }
    while (!sh->stop) {
        pump(50);
        misc_all(cs, opt.consumers);
        if (sh->subscribed < opt.consumers && now_ns() > deadline)
            die("only %ld of %d consumers subscribed within --timeout", (long)sh->subscribed,
                opt.consumers);
    }
    for (int i = 0; i < opt.consumers; i++) {
        mosquitto_disconnect(cs[i].m);
        mosquitto_loop_write(cs[i].m, 1);
        mosquitto_destroy(cs[i].m);
    }
    exit(0);
}

/* ---- producers ---- */

static void publish_more(client *c)
{
    uint8_t *payload = alloca((size_t)opt.size);
    char topic[128];
    snprintf(topic, sizeof topic, "%s/%d", opt.prefix, c->idx);
    memset(payload, 'x', (size_t)opt.size);
    memcpy(payload, &opt.run_id, 4);
    while (c->next < c->end && (opt.qos == 0 || c->inflight < opt.window)) {
        int64_t t = now_ns();
        uint64_t idx = (uint64_t)c->next;
        int mid = 0, rc;
        memcpy(payload + 4, &idx, 8);
        memcpy(payload + 12, &t, 8);
        if (t_first_pub == 0)
            t_first_pub = t;
        rc = mosquitto_publish(c->m, &mid, topic, opt.size, payload, opt.qos, false);
        if (rc != MOSQ_ERR_SUCCESS)
            die("producer %d: publish: %s", c->idx, mosquitto_strerror(rc));
        c->sent_ns[mid & 0xffff] = t;
        c->next++;
        if (opt.qos > 0)
            c->inflight++;
        else
            acked++;
    }
}

static void on_publish(struct mosquitto *m, void *obj, int mid)
{
    client *c = obj;
    int64_t t = now_ns();
    (void)m;
    if (acked < opt.count)
        ack_us[acked] = (uint32_t)((t - c->sent_ns[mid & 0xffff]) / 1000);
    acked++;
    c->inflight--;
    publish_more(c);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(uint32_t *v, long n, int p)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof(*v), cmp_u32);
    return v[(size_t)((n - 1) * p / 100)];
}

static void usage(void)
{
    fprintf(stderr, "usage: mqttload [--host H] [--port P] [--qos 0|1|2] [--count N] [--size B]\n"
                    "                [--producers P] [--consumers C] [--window W]\n"
                    "                [--persistent | --clean] [--timeout S] [--topic-prefix T]\n"
                    "                [--id-prefix I] [--run-id N]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--persistent") == 0) {
            opt.persistent = 1;
            continue;
        }
        if (strcmp(a, "--clean") == 0) {
            opt.persistent = 0;
            continue;
        }
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--host") == 0)
            opt.host = v;
        else if (strcmp(a, "--port") == 0)
            opt.port = atoi(v);
        else if (strcmp(a, "--qos") == 0)
            opt.qos = atoi(v);
        else if (strcmp(a, "--count") == 0)
            opt.count = atol(v);
        else if (strcmp(a, "--size") == 0)
            opt.size = atoi(v);
        else if (strcmp(a, "--producers") == 0)
            opt.producers = atoi(v);
        else if (strcmp(a, "--consumers") == 0)
            opt.consumers = atoi(v);
        else if (strcmp(a, "--window") == 0)
            opt.window = atoi(v);
        else if (strcmp(a, "--timeout") == 0)
            opt.timeout_s = atof(v);
        else if (strcmp(a, "--topic-prefix") == 0)
            opt.prefix = v;
        else if (strcmp(a, "--id-prefix") == 0)
            opt.id_prefix = v;
        else if (strcmp(a, "--run-id") == 0)
            opt.run_id = (uint32_t)strtoul(v, NULL, 10);
        else
            usage();
    }
    if (opt.qos < 0 || opt.qos > 2 || opt.count < 1 || opt.size < PAYLOAD_HEADER ||
        opt.producers < 1 || opt.consumers < 1 || opt.window < 1 || opt.window > 65535)
        usage();
    if (opt.run_id == 0)
        opt.run_id = (uint32_t)now_ns() | 1;
}

int main(int argc, char **argv)
{
    size_t seen_len, map_len;
    client *ps;
    char id[128];
    pid_t child;
    int status = 0;
    long base = 0;
    int64_t deadline, t_end;
    struct rusage ru, ruc;
    uint8_t *map;
    long expected, lost;
    double e2e_s, rate, gen_cpu;

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    seen_len = (size_t)opt.count * (size_t)opt.consumers;
    map_len = sizeof(shared) + seen_len + (size_t)opt.count * sizeof(uint32_t) + 64;
    map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    sh = (shared *)map;
    e2e_us = (uint32_t *)(map + ((sizeof(shared) + 7) & ~(size_t)7));
    seen = (uint8_t *)(e2e_us + opt.count);
    ack_us = calloc((size_t)opt.count, sizeof(*ack_us));
    ps = calloc((size_t)opt.producers, sizeof(*ps));
    if (ack_us == NULL || ps == NULL)
        die("out of memory");

    child = fork();
    if (child < 0)
        die("fork: %s", strerror(errno));
    if (child == 0)
        consumers_main();

    deadline = now_ns() + (int64_t)(opt.timeout_s * 1e9);
    while (sh->subscribed < opt.consumers) {
        if (sh->failures > 0 || now_ns() > deadline || waitpid(child, &status, WNOHANG) != 0) {
            sh->stop = 1;
            die("the consumers did not subscribe");
        }
        usleep(1000);
    }
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    for (int i = 0; i < opt.producers; i++) {
        long quota = opt.count / opt.producers + (i < opt.count % opt.producers);
        ps[i].idx = i;
        ps[i].next = base;
        ps[i].end = base + quota;
        base += quota;
        if ((ps[i].sent_ns = calloc(65536, sizeof(int64_t))) == NULL)
            die("out of memory");
        snprintf(id, sizeof id, "%s-p%d", opt.id_prefix, i);
        new_mosq(id, 1, &ps[i]);
        mosquitto_publish_callback_set(ps[i].m, on_publish);
    }
    for (int ready = 0; ready < opt.producers;) {
        pump(10);
        ready = 0;
        for (int i = 0; i < opt.producers; i++)
            ready += ps[i].connacked;
        if (sh->failures > 0 || now_ns() > deadline)
            die("the producers did not connect");
    }
    /* the clock starts with the first PUBLISH */
    deadline = now_ns() + (int64_t)(opt.timeout_s * 1e9);
    for (int i = 0; i < opt.producers; i++) {
        publish_more(&ps[i]);
        mosquitto_loop_write(ps[i].m, 1);
        update_out(&ps[i]);
    }
    expected = opt.count * opt.consumers;
    while ((acked < opt.count || sh->received < expected) && sh->failures == 0) {
        int64_t before = sh->received + acked;
        pump(100);
        misc_all(ps, opt.producers);
        if (sh->received + acked != before)
            deadline = now_ns() + (int64_t)(opt.timeout_s * 1e9);
        else if (now_ns() > deadline)
            break; /* nothing for --timeout: report what arrived */
    }
    t_end = sh->last_rx_ns;
    sh->stop = 1;
    for (int i = 0; i < opt.producers; i++) {
        mosquitto_disconnect(ps[i].m);
        mosquitto_loop_write(ps[i].m, 1);
        mosquitto_destroy(ps[i].m);
    }
    waitpid(child, &status, 0);
    getrusage(RUSAGE_SELF, &ru);
    getrusage(RUSAGE_CHILDREN, &ruc);
    gen_cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + ruc.ru_utime.tv_sec +
                       ruc.ru_stime.tv_sec) +
              (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec + ruc.ru_utime.tv_usec +
                       ruc.ru_stime.tv_usec) /
                  1e6;
    lost = expected - sh->received;
    e2e_s = t_end > t_first_pub ? (double)(t_end - t_first_pub) / 1e9 : 0;
    rate = e2e_s > 0 && lost == 0 ? (double)opt.count / e2e_s : 0;
    {
        long n_e2e = 0;
        for (long i = 0; i < opt.count; i++)
            if (seen[i]) /* consumer 0's */
                e2e_us[n_e2e++] = e2e_us[i];
        double a50 = pct_us(ack_us, acked < opt.count ? acked : opt.count, 50);
        double a99 = pct_us(ack_us, acked < opt.count ? acked : opt.count, 99);
        double e50 = pct_us(e2e_us, n_e2e, 50), e99 = pct_us(e2e_us, n_e2e, 99);
        printf("libmosquitto %d.%d.%d: %d producers (window %d), %d consumers (%s session), "
               "QoS %d, %d B\n",
               LIBMOSQUITTO_MAJOR, LIBMOSQUITTO_MINOR, LIBMOSQUITTO_REVISION, opt.producers,
               opt.window, opt.consumers, opt.persistent ? "persistent" : "clean", opt.qos,
               opt.size);
        printf("delivered %ld of %ld in %.3f s: %.0f msgs/s end to end\n", (long)sh->received,
               expected, e2e_s, rate);
        printf("PUBLISH->ack p50 %.0f us, p99 %.0f us; PUBLISH->delivery p50 %.0f us, p99 %.0f "
               "us\n",
               a50, a99, e50, e99);
        printf("lost %ld, duplicates %ld, stale %ld; generator %.2f s CPU\n", lost,
               (long)sh->duplicates, (long)sh->stale, gen_cpu);
        printf("RESULT msgs_per_s=%.0f pub_per_s=%.0f p50_us=%.1f p99_us=%.1f e2e_p50_us=%.1f "
               "e2e_p99_us=%.1f lost=%ld dup=%ld stale=%ld proto_errors=%ld gen_cpu_s=%.2f\n",
               rate, e2e_s > 0 ? (double)acked / e2e_s : 0, a50, a99, e50, e99, lost,
               (long)sh->duplicates, (long)sh->stale, (long)sh->failures, gen_cpu);
    }
    return lost == 0 && sh->duplicates == 0 && sh->failures == 0 && acked >= opt.count ? 0 : 1;
}
