/*
 * mqttscale: many MQTT 3.1.1 sessions against one broker, on libmosquitto
 * (Debian's libmosquitto-dev), so the load does not share the broker's
 * codec. tools/bench/bench-scale.sh runs it against Switchboard and
 * Mosquitto side by side.
 *
 * Worker processes each drive a share of the subscribers through one epoll
 * loop (libmosquitto's external-loop interface: mosquitto_socket,
 * mosquitto_loop_read/_write/_misc); the parent publishes and measures.
 * They share counters in anonymous shared memory. A libmosquitto client
 * holds three descriptors (its socket and a socket pair), so --procs
 * defaults to as many workers as RLIMIT_NOFILE (raised to its hard limit)
 * needs, and to at least 2 for 2,000 clients or more, so the generator
 * keeps up. Clients connect with clean session 1, at most --pace per worker
 * waiting for CONNACK/SUBACK at a time, each subscribing to its own topic
 * <prefix>/<i> with --qos; with --bind-base, client i binds to the source
 * address 127.0.0.(2 + i / --per-address), for more than one address's
 * ephemeral ports.
 *
 *   --mode topics  (default) one more client publishes --count messages
 *                  round-robin over the N topics (QoS --qos, at most
 *                  --window unacknowledged); measured from the first
 *                  PUBLISH to the last message received: every message
 *                  must reach its one subscriber exactly once.
 *   --mode idle    the N sessions stay connected, silent but for keep
 *                  alive, for --idle seconds; then --probes publishes, one
 *                  at a time, each to one session's topic, are timed from
 *                  PUBLISH to its delivery.
 *
 * With --broker-pid, the broker's CPU time (utime + stime, /proc/PID/stat)
 * and resident memory (VmRSS, /proc/PID/status) are read: before the
 * clients connect, once they are all subscribed, and around the measured
 * phase, giving memory per session, CPU per message (split into user and
 * system time) and CPU % while idle; and its read and write system calls
 * (syscr + syscw, /proc/PID/io) around the measured phase, per message.
 *
 * Output: a human summary, then one line
 *   RESULT mode=... clients=... msgs_per_s=... cpu_us_per_msg=... ...
 * (topics mode: failures= counts sessions lost, refused or sent what they
 * did not subscribe to; timed_out=1 when --timeout ended the run before
 * every message arrived; complete=1 when every message arrived once).
 * Exit status 0 when every message arrived once (every probe, idle mode),
 * 1 otherwise or on a failure, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <mosquitto.h>

#include <errno.h>
#include <inttypes.h>
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

#define PAYLOAD_HEADER 16 /* sequence, send time */

typedef struct options {
    const char *host;
    int port;
    int clients;
    int qos;
    long count;
    int size;
    int window;
    int pace;
    int keepalive;
    double idle_s;
    int probes;
    double timeout_s;
    const char *prefix;
    const char *id_prefix;
    int bind_base;
    int per_address;
    int broker_pid;
    int idle_mode;
    int procs;
} options;

/* What the workers and the parent share. */
typedef struct shared {
    atomic_long subscribed, failures, received, duplicates;
    atomic_llong last_rx_ns;
    atomic_long probe_seq; /* idle mode: the probe in flight */
    atomic_llong probe_rx_ns;
    atomic_int stop;
} shared;

typedef struct client {
    struct mosquitto *m;
    int idx; /* -1: the publisher */
    int fd;
    int out_armed;
    int connacked, subscribed;
    uint64_t received;
} client;

static options opt = {
    .host = "127.0.0.1",
    .port = 1883,
    .clients = 1000,
    .qos = 1,
    .count = 100000,
    .size = 100,
    .window = 500,
    .pace = 100,
    .keepalive = 60,
    .idle_s = 30,
    .probes = 10,
    .timeout_s = 120,
    .prefix = "scale",
    .id_prefix = "scale",
    .per_address = 10000,
};

static int ep = -1;
static client *clients;
static int first, last; /* this process's clients: [first, last) */
static client pub;
static long waiting, acked, inflight;
static shared *sh;
static uint8_t *seen;    /* per sequence number (shared) */
static uint32_t *lat_us; /* end-to-end latency per sequence number (shared) */

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
    fprintf(stderr, "mqttscale: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ---- the broker's CPU and memory ---- */

/* The broker's CPU time so far, in clock ticks: user, system (-1 each if
 * unknown). */
typedef struct cpu_ticks {
    int64_t user, sys;
} cpu_ticks;

static cpu_ticks broker_cpu(void)
{
    char path[64], buf[2048], *p;
    unsigned long utime = 0, stime = 0;
    cpu_ticks t = {-1, -1};
    FILE *f;
    size_t n;
    if (opt.broker_pid <= 0)
        return t;
    snprintf(path, sizeof path, "/proc/%d/stat", opt.broker_pid);
    if ((f = fopen(path, "r")) == NULL)
        return t;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after "pid (comm) ": state is 3rd; utime 14th, stime 15th */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return t;
    t.user = (int64_t)utime;
    t.sys = (int64_t)stime;
    return t;
}

static int64_t broker_cpu_ticks(void)
{
    cpu_ticks t = broker_cpu();
    return t.user < 0 ? -1 : t.user + t.sys;
}

/* The broker's read and write system calls so far (syscr + syscw of
 * /proc/PID/io, all its threads; readv/recvmsg and writev/sendmsg count
 * too), -1 if unknown (another user's process). */
static int64_t broker_rw_syscalls(void)
{
    char path[64], line[128];
    long long v, total = 0;
    int found = 0;
    FILE *f;
    if (opt.broker_pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/io", opt.broker_pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "syscr: %lld", &v) == 1 || sscanf(line, "syscw: %lld", &v) == 1) {
            total += v;
            found++;
        }
    fclose(f);
    return found == 2 ? total : -1;
}

static long broker_rss_kb(void)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;
    if (opt.broker_pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/status", opt.broker_pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* ---- the epoll loop ---- */

static void watch(client *c)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    c->fd = mosquitto_socket(c->m);
    if (c->fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl ADD: %s", strerror(errno));
}

/* Registers for EPOLLOUT while libmosquitto has output queued. */
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

static void lost(client *c, int rc)
{
    if (c->fd < 0)
        return;
    fprintf(stderr, "mqttscale: client %d: %s\n", c->idx, mosquitto_strerror(rc));
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->fd = -1;
    sh->failures++;
}

/* Reads every packet available (libmosquitto reads one per call). */
static void on_readable(client *c)
{
    for (int i = 0; i < 256 && c->fd >= 0; i++) {
        int rc;
        errno = 0;
        rc = mosquitto_loop_read(c->m, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            lost(c, rc);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
    }
    if (c->fd >= 0)
        update_out(c);
}

static void pump(int timeout_ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        client *c = evs[i].data.ptr;
        if (c->fd < 0)
            continue;
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_readable(c);
        if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) {
            int rc = mosquitto_loop_write(c->m, 1);
            if (rc != MOSQ_ERR_SUCCESS)
                lost(c, rc);
            else
                update_out(c);
        }
    }
}

/* Keep alive for every client, about once a second. */
static void misc_all(void)
{
    static int64_t last_misc;
    int64_t t = now_ns();
    if (t - last_misc < 1000000000)
        return;
    last_misc = t;
    for (int i = first; i < last; i++)
        if (clients[i].fd >= 0 && clients[i].m != NULL) {
            mosquitto_loop_misc(clients[i].m);
            update_out(&clients[i]);
        }
    if (pub.m != NULL && pub.fd >= 0) {
        mosquitto_loop_misc(pub.m);
        update_out(&pub);
    }
}

/* ---- callbacks ---- */

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    client *c = obj;
    char topic[128];
    if (rc != 0)
        die("client %d: CONNACK %d (%s)", c->idx, rc, mosquitto_connack_string(rc));
    c->connacked = 1;
    if (c->idx < 0)
        return;
    snprintf(topic, sizeof topic, "%s/%d", opt.prefix, c->idx);
    if ((rc = mosquitto_subscribe(m, NULL, topic, opt.qos)) != MOSQ_ERR_SUCCESS)
        die("client %d: subscribe: %s", c->idx, mosquitto_strerror(rc));
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted)
{
    client *c = obj;
    (void)m;
    (void)mid;
    if (n != 1 || granted[0] != opt.qos)
        die("client %d: SUBACK grants %d, not QoS %d", c->idx, n > 0 ? granted[0] : -1, opt.qos);
    c->subscribed = 1;
    sh->subscribed++;
    waiting--;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    client *c = obj;
    uint64_t seq;
    int64_t sent, t = now_ns();
    (void)m;
    if (msg->payloadlen < PAYLOAD_HEADER)
        return;
    memcpy(&seq, msg->payload, 8);
    memcpy(&sent, (const char *)msg->payload + 8, 8);
    if (opt.idle_mode) {
        if ((long)seq == sh->probe_seq)
            sh->probe_rx_ns = t;
        return;
    }
    if (seq >= (uint64_t)opt.count || (long)(seq % (uint64_t)opt.clients) != c->idx) {
        fprintf(stderr, "mqttscale: client %d got sequence %" PRIu64 " (not its topic)\n", c->idx,
                seq);
        sh->failures++;
        return;
    }
    if (seen[seq]) {
        sh->duplicates++;
        return;
    }
    seen[seq] = 1;
    c->received++;
    lat_us[seq] = (uint32_t)((t - sent) / 1000);
    sh->last_rx_ns = t;
    sh->received++; /* last: the parent reads the others once it counts all */
}

static void on_publish(struct mosquitto *m, void *obj, int mid)
{
    (void)m;
    (void)obj;
    (void)mid;
    acked++;
    inflight--;
}

/* ---- setup ---- */

static void new_client(client *c, int idx, const char *id, int keepalive)
{
    char bind[32], *bind_addr = NULL;
    int rc;
    c->idx = idx;
    c->fd = -1;
    c->m = mosquitto_new(id, true, c);
    if (c->m == NULL)
        die("mosquitto_new: out of memory");
    mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_callback_set(c->m, on_connect);
    mosquitto_subscribe_callback_set(c->m, on_subscribe);
    mosquitto_message_callback_set(c->m, on_message);
    mosquitto_publish_callback_set(c->m, on_publish);
    if (opt.bind_base && idx >= 0) {
        snprintf(bind, sizeof bind, "127.0.0.%d", 2 + idx / opt.per_address);
        bind_addr = bind;
    }
    /* a blocking connect: on loopback it returns once the handshake is
     * done, which --pace keeps within the listener's backlog */
    rc = mosquitto_connect_bind(c->m, opt.host, opt.port, keepalive, bind_addr);
    if (rc != MOSQ_ERR_SUCCESS)
        die("client %d: connect to %s:%d%s%s: %s", idx, opt.host, opt.port,
            bind_addr ? " from " : "", bind_addr ? bind_addr : "",
            rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    watch(c);
    update_out(c);
}

/* A worker: connects its clients, then serves them until told to stop. */
static void worker(int64_t deadline)
{
    char id[128];
    int next = first, mine = 0;
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    while (mine < last - first) {
        while (next < last && waiting < opt.pace) {
            snprintf(id, sizeof id, "%s-%d", opt.id_prefix, next);
            waiting++;
            new_client(&clients[next], next, id, opt.keepalive);
            next++;
        }
        pump(10);
        misc_all();
        mine = (next - first) - (int)waiting;
        if (sh->failures > 0 || sh->stop)
            exit(1);
        if (now_ns() > deadline)
            die("only %ld of %d clients subscribed within --timeout", (long)sh->subscribed,
                opt.clients);
    }
    while (!sh->stop) {
        pump(100);
        misc_all();
    }
    /* disconnect politely; the brokers clean the sessions up */
    for (int i = first; i < last; i++) {
        mosquitto_disconnect(clients[i].m);
        mosquitto_loop_write(clients[i].m, 1);
        mosquitto_destroy(clients[i].m);
    }
    exit(0);
}

static void connect_publisher(int64_t deadline)
{
    char id[128];
    snprintf(id, sizeof id, "%s-pub", opt.id_prefix);
    new_client(&pub, -1, id, opt.keepalive);
    mosquitto_max_inflight_messages_set(pub.m, (unsigned)opt.window);
    while (!pub.connacked) {
        pump(10);
        if (sh->failures > 0 || now_ns() > deadline)
            die("the publisher did not connect");
    }
}

static void publish_one(long seq, int to)
{
    char topic[128];
    uint8_t *payload = alloca((size_t)opt.size);
    int64_t t = now_ns();
    int rc;
    memset(payload, 'x', (size_t)opt.size);
    memcpy(payload, &seq, 8);
    memcpy(payload + 8, &t, 8);
    snprintf(topic, sizeof topic, "%s/%d", opt.prefix, to);
    rc = mosquitto_publish(pub.m, NULL, topic, opt.size, payload, opt.qos, false);
    if (rc != MOSQ_ERR_SUCCESS)
        die("publish: %s", mosquitto_strerror(rc));
    if (opt.qos > 0)
        inflight++;
    update_out(&pub);
}

/* A probe's time in ms, -1 if it never arrived. */
static double ms_or_lost(uint32_t us)
{
    return us == UINT32_MAX ? -1.0 : us / 1000.0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: mqttscale [--host H] [--port P] [--clients N] [--mode topics|idle]\n"
            "                 [--qos Q] [--count M] [--size B] [--window W] [--pace K]\n"
            "                 [--keepalive S] [--idle S] [--probes N] [--timeout S]\n"
            "                 [--prefix T] [--id-prefix I] [--bind-base] [--per-address N]\n"
            "                 [--broker-pid PID] [--procs N]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "--bind-base") == 0) {
            opt.bind_base = 1;
            takes = 0;
        } else if (v == NULL) {
            usage();
        } else if (strcmp(a, "--host") == 0) {
            opt.host = v;
        } else if (strcmp(a, "--port") == 0) {
            opt.port = atoi(v);
        } else if (strcmp(a, "--clients") == 0) {
            opt.clients = atoi(v);
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "idle") == 0)
                opt.idle_mode = 1;
            else if (strcmp(v, "topics") != 0)
                usage();
        } else if (strcmp(a, "--qos") == 0) {
            opt.qos = atoi(v);
        } else if (strcmp(a, "--count") == 0) {
            opt.count = atol(v);
        } else if (strcmp(a, "--size") == 0) {
            opt.size = atoi(v);
        } else if (strcmp(a, "--window") == 0) {
            opt.window = atoi(v);
        } else if (strcmp(a, "--pace") == 0) {
            opt.pace = atoi(v);
        } else if (strcmp(a, "--keepalive") == 0) {
            opt.keepalive = atoi(v);
        } else if (strcmp(a, "--idle") == 0) {
            opt.idle_s = atof(v);
        } else if (strcmp(a, "--probes") == 0) {
            opt.probes = atoi(v);
        } else if (strcmp(a, "--timeout") == 0) {
            opt.timeout_s = atof(v);
        } else if (strcmp(a, "--prefix") == 0) {
            opt.prefix = v;
        } else if (strcmp(a, "--id-prefix") == 0) {
            opt.id_prefix = v;
        } else if (strcmp(a, "--per-address") == 0) {
            opt.per_address = atoi(v);
        } else if (strcmp(a, "--broker-pid") == 0) {
            opt.broker_pid = atoi(v);
        } else if (strcmp(a, "--procs") == 0) {
            opt.procs = atoi(v);
        } else {
            usage();
        }
        i += takes;
    }
    if (opt.clients < 1 || opt.qos < 0 || opt.qos > 2 || opt.count < 1 || opt.window < 1 ||
        opt.pace < 1 || opt.size < PAYLOAD_HEADER || opt.per_address < 1 || opt.probes < 1 ||
        opt.procs < 0)
        usage();
}

/* Raises RLIMIT_NOFILE to the hard limit; picks the number of workers:
 * each client takes three descriptors. */
static void plan_workers(void)
{
    struct rlimit rl;
    long room = 1L << 20, need;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY)
            room = (long)rl.rlim_cur - 32;
    }
    need = ((long)opt.clients * 3 + room - 1) / room;
    if (opt.procs == 0)
        opt.procs = (int)(need > 1 ? need : opt.clients >= 2000 ? 2 : 1);
    if (opt.procs < need)
        die("%d clients need %ld descriptors; the limit is %ld a process: use --procs %ld",
            opt.clients, (long)opt.clients * 3, room + 32, need);
    if (opt.procs > opt.clients)
        opt.procs = opt.clients;
}

int main(int argc, char **argv)
{
    int64_t start = now_ns(), deadline, t0, t1, cpu0, cpu1, cpu_sub;
    long rss0, rss1;
    double secs, hz = (double)sysconf(_SC_CLK_TCK);
    int status = 0;
    pid_t *workers;
    size_t map_len;
    uint8_t *map;

    parse_args(argc, argv);
    plan_workers();
    mosquitto_lib_init();
    clients = calloc((size_t)opt.clients, sizeof(*clients));
    workers = calloc((size_t)opt.procs, sizeof(*workers));
    /* the counters, then seen[] and lat_us[] by sequence number */
    map_len = sizeof(shared) + (size_t)opt.count * (1 + sizeof(uint32_t)) + 64;
    map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (clients == NULL || workers == NULL || map == MAP_FAILED)
        die("out of memory");
    sh = (shared *)map;
    lat_us = (uint32_t *)(map + ((sizeof(shared) + 7) & ~(size_t)7));
    seen = (uint8_t *)(lat_us + opt.count);
    sh->probe_seq = -1;
    for (int i = 0; i < opt.clients; i++)
        clients[i].fd = -1;
    pub.fd = -1;
    deadline = start + (int64_t)(opt.timeout_s * 1e9);

    rss0 = broker_rss_kb();
    cpu_sub = broker_cpu_ticks();
    fflush(stdout);
    for (int w = 0; w < opt.procs; w++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            first = (int)((long)opt.clients * w / opt.procs);
            last = (int)((long)opt.clients * (w + 1) / opt.procs);
            worker(deadline);
        }
        workers[w] = pid;
    }
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    while (sh->subscribed < opt.clients) {
        int st;
        usleep(10000);
        if (sh->failures > 0 || now_ns() > deadline || waitpid(-1, &st, WNOHANG) > 0) {
            fprintf(stderr, "mqttscale: %ld of %d clients subscribed, %ld lost\n",
                    (long)sh->subscribed, opt.clients, (long)sh->failures);
            status = 1;
            goto out;
        }
    }
    t0 = now_ns();
    printf("%d clients subscribed (QoS %d, %d worker processes) in %.2f s\n", opt.clients, opt.qos,
           opt.procs, (double)(t0 - start) / 1e9);
    rss1 = broker_rss_kb();
    cpu0 = broker_cpu_ticks();

    if (opt.idle_mode) {
        uint32_t *probe_us = calloc((size_t)opt.probes, sizeof(*probe_us));
        int64_t until = t0 + (int64_t)(opt.idle_s * 1e9);
        double cpu_pct;
        long lost_probes = 0;
        while (now_ns() < until && sh->failures == 0)
            usleep(100000);
        t1 = now_ns();
        cpu1 = broker_cpu_ticks();
        secs = (double)(t1 - t0) / 1e9;
        cpu_pct = cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) / hz / secs * 100.0 : -1;
        if (sh->failures > 0) {
            printf("%ld sessions lost while idle\n", (long)sh->failures);
            status = 1;
        }
        /* probes: one publish at a time to sessions spread over them all */
        connect_publisher(now_ns() + (int64_t)(opt.timeout_s * 1e9));
        for (int p = 0; p < opt.probes; p++) {
            int to = (int)(((long)p * 7919 + 13) % opt.clients);
            int64_t sent = now_ns(), wait_until = sent + 10 * (int64_t)1000000000;
            sh->probe_rx_ns = 0;
            sh->probe_seq = p;
            publish_one(p, to);
            while (sh->probe_rx_ns == 0 && now_ns() < wait_until)
                pump(1);
            if (sh->probe_rx_ns == 0) {
                lost_probes++;
                probe_us[p] = UINT32_MAX;
            } else {
                probe_us[p] = (uint32_t)((sh->probe_rx_ns - sent) / 1000);
            }
        }
        qsort(probe_us, (size_t)opt.probes, sizeof(*probe_us), cmp_u32);
        printf("idle %.1f s: broker CPU %.2f %%, RSS %ld -> %ld kB (%.2f kB per session)\n", secs,
               cpu_pct, rss0, rss1,
               rss0 >= 0 && rss1 >= 0 ? (double)(rss1 - rss0) / opt.clients : -1.0);
        printf("probes: %d publishes one at a time, p50 %.2f ms, max %.2f ms, %ld lost (10 s)\n",
               opt.probes, ms_or_lost(probe_us[opt.probes / 2]),
               ms_or_lost(probe_us[opt.probes - 1]), lost_probes);
        printf("RESULT mode=idle clients=%d idle_s=%.1f cpu_pct=%.3f rss_before_kb=%ld "
               "rss_after_kb=%ld kb_per_session=%.3f connect_cpu_s=%.2f probe_p50_ms=%.3f "
               "probe_max_ms=%.3f probes_lost=%ld lost_sessions=%ld\n",
               opt.clients, secs, cpu_pct, rss0, rss1,
               rss0 >= 0 && rss1 >= 0 ? (double)(rss1 - rss0) / opt.clients : -1.0,
               cpu_sub >= 0 && cpu0 >= 0 ? (double)(cpu0 - cpu_sub) / hz : -1.0,
               ms_or_lost(probe_us[opt.probes / 2]), ms_or_lost(probe_us[opt.probes - 1]),
               lost_probes, (long)sh->failures);
        if (lost_probes > 0)
            status = 1;
        free(probe_us);
    } else {
        long sent = 0, received;
        int64_t first_pub, sys0, sys1;
        cpu_ticks split0, split1;
        struct rusage ru, ruc;
        double gen_cpu, cpu_us, user_us = -1.0, sys_us = -1.0, calls = -1.0;
        int timed_out;
        uint32_t *lat;
        connect_publisher(deadline);
        split0 = broker_cpu();
        sys0 = broker_rw_syscalls();
        cpu0 = split0.user < 0 ? -1 : split0.user + split0.sys;
        first_pub = now_ns();
        deadline = first_pub + (int64_t)(opt.timeout_s * 1e9);
        while ((sh->received < opt.count || (opt.qos > 0 && acked < opt.count)) &&
               sh->failures == 0 && now_ns() < deadline) {
            while (sent < opt.count && (opt.qos == 0 || inflight < opt.window)) {
                publish_one(sent, (int)(sent % opt.clients));
                sent++;
                if (sent % 64 == 0)
                    break; /* let acknowledgements in */
            }
            pump(sent < opt.count && (opt.qos == 0 || inflight < opt.window) ? 0 : 1);
            misc_all();
        }
        timed_out = now_ns() >= deadline;
        split1 = broker_cpu();
        sys1 = broker_rw_syscalls();
        cpu1 = split1.user < 0 ? -1 : split1.user + split1.sys;
        received = sh->received;
        t1 = sh->last_rx_ns > first_pub ? sh->last_rx_ns : now_ns();
        secs = (double)(t1 - first_pub) / 1e9;
        sh->stop = 1;
        for (int w = 0; w < opt.procs; w++)
            waitpid(workers[w], NULL, 0);
        workers[0] = 0;
        getrusage(RUSAGE_SELF, &ru);
        getrusage(RUSAGE_CHILDREN, &ruc);
        gen_cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + ruc.ru_utime.tv_sec +
                           ruc.ru_stime.tv_sec) +
                  (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec + ruc.ru_utime.tv_usec +
                   ruc.ru_stime.tv_usec) /
                      1e6;
        cpu_us = cpu0 >= 0 && cpu1 >= 0 && received > 0
                     ? (double)(cpu1 - cpu0) / hz * 1e6 / (double)received
                     : -1.0;
        if (cpu_us >= 0) {
            user_us = (double)(split1.user - split0.user) / hz * 1e6 / (double)received;
            sys_us = (double)(split1.sys - split0.sys) / hz * 1e6 / (double)received;
        }
        if (sys0 >= 0 && sys1 >= 0 && received > 0)
            calls = (double)(sys1 - sys0) / (double)received;
        /* latencies of the messages that arrived */
        lat = malloc(((size_t)received + 1) * sizeof(*lat));
        if (lat == NULL)
            die("out of memory");
        for (long i = 0, k = 0; i < opt.count && k < received; i++)
            if (seen[i])
                lat[k++] = lat_us[i];
        qsort(lat, (size_t)received, sizeof(*lat), cmp_u32);
        printf("%ld of %ld messages received in %.2f s: %.0f msgs/s; %ld duplicates; "
               "end-to-end p50 %.2f ms, p99 %.2f ms\n",
               received, opt.count, secs, received / secs, (long)sh->duplicates,
               received ? lat[received / 2] / 1000.0 : -1.0,
               received ? lat[received * 99 / 100] / 1000.0 : -1.0);
        printf("broker: %.2f us CPU per message (user %.2f, system %.2f), %.2f read/write "
               "system calls per message, RSS %ld kB with the sessions (%ld before); "
               "generator CPU %.2f s\n",
               cpu_us, user_us, sys_us, calls, rss1, rss0, gen_cpu);
        if (timed_out && received < opt.count)
            printf("timed out: %ld of %ld messages arrived within --timeout %.0f s\n", received,
                   opt.count, opt.timeout_s);
        printf("RESULT mode=topics clients=%d qos=%d count=%ld received=%ld dup=%ld "
               "msgs_per_s=%.0f e2e_p50_ms=%.3f e2e_p99_ms=%.3f cpu_us_per_msg=%.2f "
               "user_us_per_msg=%.2f sys_us_per_msg=%.2f rw_calls_per_msg=%.2f "
               "rss_kb=%ld gen_cpu_s=%.2f failures=%ld timed_out=%d complete=%d\n",
               opt.clients, opt.qos, opt.count, received, (long)sh->duplicates, received / secs,
               received ? lat[received / 2] / 1000.0 : -1.0,
               received ? lat[received * 99 / 100] / 1000.0 : -1.0, cpu_us, user_us, sys_us,
               calls, rss1, gen_cpu, (long)sh->failures, timed_out,
               received == opt.count && sh->duplicates == 0 && sh->failures == 0);
        if (received != opt.count || sh->duplicates != 0 || sh->failures != 0)
            status = 1;
        free(lat);
    }
out:
    sh->stop = 1;
    if (workers[0] != 0)
        for (int w = 0; w < opt.procs; w++)
            if (workers[w] > 0)
                waitpid(workers[w], NULL, 0);
    if (pub.m != NULL) {
        mosquitto_disconnect(pub.m);
        mosquitto_loop_write(pub.m, 1);
        mosquitto_destroy(pub.m);
    }
    free(clients);
    free(workers);
    munmap(map, map_len);
    mosquitto_lib_cleanup();
    return status;
}
